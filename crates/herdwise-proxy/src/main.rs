//! `herdwise-proxy`: the caching reverse proxy, from a config file, the environment and flags.

use std::path::PathBuf;

use clap::Parser;

/// An RFC 9111 caching reverse proxy on Herdwise.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// TOML configuration file.
    #[arg(long, short)]
    config: Option<PathBuf>,
    /// Client listener (overrides the file and HERDWISE_PROXY_LISTEN).
    #[arg(long)]
    listen: Option<std::net::SocketAddr>,
    /// Admin listener: /healthz, /readyz, /metrics, /purge/* (default 127.0.0.1:9090).
    #[arg(long)]
    admin_listen: Option<std::net::SocketAddr>,
    /// Redis URL (else REDIS_URL, else the file; none: an embedded store).
    #[arg(long)]
    redis_url: Option<String>,
    /// An origin, `host[,host…]=http://upstream:port` (repeatable; adds to the file's).
    #[arg(long = "origin")]
    origins: Vec<String>,
    /// Check the configuration and exit.
    #[arg(long)]
    check: bool,
}

fn load(args: &Args) -> Result<herdwise_proxy::Config, herdwise_proxy::Error> {
    let mut config = match &args.config {
        Some(path) => {
            let text =
                std::fs::read_to_string(path).map_err(|source| herdwise_proxy::Error::Read {
                    path: path.display().to_string(),
                    source,
                })?;
            herdwise_proxy::Config::from_toml(&text)?
        }
        None => herdwise_proxy::Config::default(),
    };
    config.apply_env(|k| std::env::var(k).ok())?;
    if let Some(listen) = args.listen {
        config.listen = listen;
    }
    if let Some(admin) = args.admin_listen {
        config.admin_listen = admin;
    }
    if let Some(url) = &args.redis_url {
        config.redis_url = Some(url.clone());
    }
    for origin in &args.origins {
        config.add_origin_flag(origin)?;
    }
    config.validate()?;
    Ok(config)
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let args = Args::parse();
    let signals = Signals::install();
    let config = match load(&args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("herdwise-proxy: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    if args.check {
        println!("configuration ok");
        return std::process::ExitCode::SUCCESS;
    }
    let metrics = match herdwise::prometheus::install() {
        Ok(m) => Some(m),
        Err(e) => {
            eprintln!("herdwise-proxy: metrics not installed: {e}");
            None
        }
    };
    let running = match herdwise_proxy::start(config, metrics).await {
        Ok(r) => r,
        Err(e) => {
            eprintln!("herdwise-proxy: {e}");
            return std::process::ExitCode::from(1);
        }
    };
    println!(
        "herdwise-proxy on {} (admin {})",
        running.addr, running.admin_addr
    );
    signals.wait(|| reload(&args, &running)).await;
    eprintln!("herdwise-proxy: shutting down");
    running.shutdown().await;
    std::process::ExitCode::SUCCESS
}

/// `SIGHUP`: the configuration is read again (file, environment, flags) and applied; a bad one
/// is logged and the running one kept.
fn reload(args: &Args, running: &herdwise_proxy::Running) {
    match load(args).and_then(|config| running.reload(config)) {
        Ok(kept) if kept.is_empty() => tracing::info!("configuration reloaded"),
        Ok(kept) => tracing::warn!(
            needs_restart = ?kept,
            "configuration reloaded; these options only change at a restart"
        ),
        Err(e) => tracing::error!(error = %e, "reload refused: the running configuration is kept"),
    }
}

/// The signals the proxy answers, registered before it starts (a `SIGHUP` during start-up is
/// then a reload once running, not the end of the process).
struct Signals {
    #[cfg(unix)]
    streams: Option<[tokio::signal::unix::Signal; 3]>,
}

impl Signals {
    fn install() -> Self {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            let streams = match (
                signal(SignalKind::interrupt()),
                signal(SignalKind::terminate()),
                signal(SignalKind::hangup()),
            ) {
                (Ok(i), Ok(t), Ok(h)) => Some([i, t, h]),
                _ => None,
            };
            Signals { streams }
        }
        #[cfg(not(unix))]
        Signals {}
    }

    /// Waits for `SIGINT` or `SIGTERM`, calling `on_hup` at each `SIGHUP` meanwhile.
    async fn wait(self, on_hup: impl Fn()) {
        #[cfg(unix)]
        {
            let Some([mut int, mut term, mut hup]) = self.streams else {
                let _ = tokio::signal::ctrl_c().await;
                return;
            };
            loop {
                tokio::select! {
                    _ = int.recv() => return,
                    _ = term.recv() => return,
                    _ = hup.recv() => on_hup(),
                }
            }
        }
        #[cfg(not(unix))]
        {
            let _ = on_hup;
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
