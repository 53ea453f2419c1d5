//! `cargo run -p herdwise-example-service`: the catalog service on `127.0.0.1:8080`.
//!
//! - `DATABASE_URL` (e.g. `postgres://postgres@127.0.0.1:5432/postgres`) and `REDIS_URL`
//!   (e.g. `redis://127.0.0.1:6379`): the servers to use. Either one unset: the service starts
//!   its own on a free loopback port (PostgreSQL from Debian's `postgresql` package, Redis from
//!   `redis-server`) and stops it on exit.
//! - `LISTEN`: the address to serve on (default `127.0.0.1:8080`).
//! - `--demo`: serve on a free port, make the requests a user would (read twice, update,
//!   discount a category, readiness, metrics), print what happened, and exit.

use std::net::SocketAddr;
use std::process::ExitCode;

use herdwise_example_service::{client, App, Error};
use herdwise_testkit::{PostgresServer, RedisServer};

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let demo = std::env::args().any(|a| a == "--demo");
    match run(demo).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("herdwise-example-service: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(demo: bool) -> Result<(), Error> {
    // Servers found (the environment) or started (kept alive until the end of `run`).
    let mut _postgres = None;
    let database_url = match std::env::var("DATABASE_URL") {
        Ok(url) => url,
        Err(_) => {
            let server = PostgresServer::start()?;
            println!(
                "started PostgreSQL on {} (DATABASE_URL unset)",
                server.url()
            );
            let url = server.url();
            _postgres = Some(server);
            url
        }
    };
    let mut _redis = None;
    let redis_url = match std::env::var("REDIS_URL") {
        Ok(url) => url,
        Err(_) => {
            let server = RedisServer::start()?;
            println!("started Redis on {} (REDIS_URL unset)", server.url());
            let url = server.url();
            _redis = Some(server);
            url
        }
    };
    let prometheus = herdwise::prometheus::install()?;
    let app = App::connect(&database_url, &redis_url, Some(prometheus)).await?;
    app.migrate_and_seed(1_000).await?;
    let warmed = app.warm(100).await?;
    println!("warmed {warmed} products");

    if demo {
        return run_demo(app).await;
    }
    let listen: SocketAddr = std::env::var("LISTEN")
        .unwrap_or_else(|_| "127.0.0.1:8080".into())
        .parse()
        .map_err(|e| Error::Io(std::io::Error::other(format!("LISTEN: {e}"))))?;
    let listener = tokio::net::TcpListener::bind(listen).await?;
    println!(
        "serving on http://{listen}: try `curl {listen}/products/1`, `curl {listen}/readyz`, \
         `curl {listen}/metrics`; Ctrl-C or SIGTERM stops"
    );
    herdwise_example_service::serve(listener, app, shutdown()).await
}

/// Ctrl-C, or SIGTERM (what Kubernetes and systemd send): stop accepting, finish requests.
async fn shutdown() {
    use tokio::signal::unix::{signal, SignalKind};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

async fn run_demo(app: App) -> Result<(), Error> {
    let (addr, server) =
        herdwise_example_service::spawn(([127, 0, 0, 1], 0).into(), app.clone()).await?;
    let step = |what: &str, (status, body): (u16, String)| {
        println!("{what}: {status} {}", body.trim());
        (status, body)
    };
    let before = app.origin_reads();
    step(
        "GET /products/500 (cold)",
        client::request(addr, "GET", "/products/500", None).await?,
    );
    step(
        "GET /products/500 (cached)",
        client::request(addr, "GET", "/products/500", None).await?,
    );
    println!(
        "  -> {} SELECT for two reads",
        app.origin_reads().saturating_sub(before)
    );
    step(
        "PUT /products/500 {\"price_cents\": 999}",
        client::request(
            addr,
            "PUT",
            "/products/500",
            Some(r#"{"price_cents": 999}"#),
        )
        .await?,
    );
    step(
        "GET /products/500 (after write-around)",
        client::request(addr, "GET", "/products/500", None).await?,
    );
    step(
        "POST /categories/shoes/discount {\"percent\": 10}",
        client::request(
            addr,
            "POST",
            "/categories/shoes/discount",
            Some(r#"{"percent": 10}"#),
        )
        .await?,
    );
    step(
        "GET /products/4 (a shoe, after the tag invalidation)",
        client::request(addr, "GET", "/products/4", None).await?,
    );
    step(
        "GET /products/100000",
        client::request(addr, "GET", "/products/100000", None).await?,
    );
    step(
        "GET /readyz",
        client::request(addr, "GET", "/readyz", None).await?,
    );
    let (status, scrape) = client::request(addr, "GET", "/metrics", None).await?;
    let reads: Vec<&str> = scrape
        .lines()
        .filter(|l| l.starts_with("herdwise_cache_gets_total{"))
        .collect();
    println!("GET /metrics: {status}, reads by result:");
    for line in reads {
        println!("  {line}");
    }
    // The server and the cache go before the servers this process started.
    server.abort();
    let _ = server.await;
    drop(app);
    Ok(())
}
