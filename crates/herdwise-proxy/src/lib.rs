//! # herdwise-proxy
//!
//! An RFC 9111 caching reverse proxy on Herdwise: put it in front of an HTTP origin (as a
//! sidecar, or as a shared caching tier) and every response the origin marks cacheable for a
//! shared cache is kept in the library's tiers — a bounded L1 in the process, Redis (or an
//! embedded store) shared by every proxy instance — with the library's defenses: one origin
//! request per URL across instances (single-flight and leases), stale-while-revalidate and
//! stale-if-error (RFC 5861), invalidation on every instance by unsafe methods and by
//! surrogate-key, URL, prefix or full purges, and the breaker when Redis fails.
//!
//! The proxy only translates HTTP into calls on [`herdwise::Cache`]; the parts:
//! - [`semantics`]: RFC 9111 and friends as pure functions (directives, freshness,
//!   storability, Vary, conditional requests, hop-by-hop fields);
//! - [`object`]: what is stored for a URL, and its byte layout;
//! - [`key`]: cache keys and tags; [`status`]: `Cache-Status`; [`range`]: byte ranges;
//! - [`origin`]: the origins, with limits and timeouts;
//! - [`handler`]: one request, end to end; [`server`]: listeners, admin API, shutdown;
//!   [`invalidate`]: the admin API's invalidations of any namespace on the proxy's Redis (the
//!   CLI's, over HTTP);
//! - [`warm`]: the warm-up at start that `/readyz` waits for; [`stall`]: clients that stop
//!   reading are cut off;
//! - [`config`]: TOML + environment + flags.
//!
//! ```no_run
//! # #[tokio::main]
//! # async fn main() -> Result<(), herdwise_proxy::Error> {
//! let mut config = herdwise_proxy::Config::default();
//! config.add_origin_flag("www.example.com=http://127.0.0.1:8081")?;
//! let running = herdwise_proxy::start(config, None).await?;
//! println!("serving on {}", running.addr);
//! running.shutdown().await;
//! # Ok(()) }
//! ```

#![deny(missing_docs)]
#![deny(clippy::unwrap_used, clippy::expect_used)]
#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used))]

pub mod config;
mod error;
pub mod handler;
pub mod invalidate;
pub mod key;
pub mod object;
pub mod origin;
pub mod range;
pub mod semantics;
pub mod server;
pub mod stall;
pub mod status;
pub mod warm;

pub use config::{Config, OriginConfig};
pub use error::{Error, Result};
pub use server::{start, Running};
