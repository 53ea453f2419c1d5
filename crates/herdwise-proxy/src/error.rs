//! The proxy's errors (startup and configuration; request-time failures become HTTP
//! responses, never errors).

/// What can stop the proxy from starting.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A configuration option is wrong.
    #[error("configuration: {option}: {reason}")]
    Config {
        /// The option.
        option: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The cache could not be built or its store reached.
    #[error("cache: {0}")]
    Cache(#[from] herdwise::Error),
    /// The Redis store could not be connected.
    #[error("redis: {0}")]
    Store(#[from] herdwise::StoreError),
    /// A listener could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        /// The address.
        addr: std::net::SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// Reading the config file failed.
    #[error("reading {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
}

/// `Result` with the proxy's [`Error`].
pub type Result<T> = std::result::Result<T, Error>;
