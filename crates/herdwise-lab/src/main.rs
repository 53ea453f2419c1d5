//! `herdwise-lab <scenario> [--instances N] [--concurrency C] [--rate R] [--duration S] [--json out.json]
//! [--plot out.svg] [--quick] [--topology standalone|cluster]`

use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use herdwise_lab::report::{self, Machine, Report};
use herdwise_lab::{scenarios, Settings};

/// Measures Herdwise against naive caching, side by side, on a real redis-server it starts itself.
#[derive(Debug, Parser)]
#[command(name = "herdwise-lab", version)]
struct Cli {
    /// hit-path | l2-throughput | writes | batch | zipf | hot-key-expiry | invalidation-race | invalidation-fanout | prefix-invalidation | tag-invalidation | redis-outage | slow-origin | cluster-failover | sentinel-failover | drift | http | all (every one but http)
    scenario: String,
    /// Cache instances per strategy (separate `Cache` objects with their own L1, like pods).
    #[arg(long)]
    instances: Option<usize>,
    /// Concurrent readers.
    #[arg(long)]
    concurrency: Option<usize>,
    /// Reads offered per second (the open-loop scenarios that take it: redis-outage,
    /// cluster-failover, sentinel-failover).
    #[arg(long)]
    rate: Option<f64>,
    /// Seconds each strategy runs.
    #[arg(long)]
    duration: Option<f64>,
    /// Short runs: `all --quick` finishes in well under 3 minutes.
    #[arg(long)]
    quick: bool,
    /// The Redis to run against: standalone (default) or cluster (3 primaries + 3 replicas;
    /// l2-throughput, batch, zipf, hot-key-expiry and redis-outage).
    #[arg(long, default_value = "standalone")]
    topology: herdwise_lab::deploy::Topology,
    /// Write the full report (with per-second timelines) as JSON.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Write an SVG plot over time (one file per scenario: `<stem>-<scenario>.svg` for `all`).
    #[arg(long)]
    plot: Option<PathBuf>,
}

#[tokio::main]
async fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "error,redis::cluster_handling=off".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    if let Err(err) = run(cli).await {
        eprintln!("herdwise-lab: {err}");
        std::process::exit(1);
    }
}

async fn run(cli: Cli) -> Result<(), herdwise_lab::LabError> {
    let settings = Settings {
        instances: cli.instances,
        concurrency: cli.concurrency,
        rate: cli.rate,
        duration: cli.duration.map(Duration::from_secs_f64),
        quick: cli.quick,
        progress: true,
        topology: cli.topology,
    };
    let names: Vec<&str> = if cli.scenario == "all" {
        scenarios::ALL
            .into_iter()
            .filter(|name| scenarios::runs_on(name, settings.topology))
            .collect()
    } else {
        vec![cli.scenario.as_str()]
    };
    let mut results = Vec::new();
    for name in names {
        let result = scenarios::run(name, &settings).await?;
        print!("{}", report::table(&result));
        if let Some(plot) = &cli.plot {
            let path = if cli.scenario == "all" {
                let stem = plot.file_stem().and_then(|s| s.to_str()).unwrap_or("lab");
                plot.with_file_name(format!("{stem}-{name}.svg"))
            } else {
                plot.clone()
            };
            if result.strategies.iter().any(|s| !s.timeline.is_empty()) {
                report::plot(&result, &path)?;
                println!("plot: {}", path.display());
            }
        }
        results.push(result);
    }
    let report = Report {
        date: report::utc_now(),
        command: std::env::args().collect::<Vec<_>>().join(" "),
        machine: Machine {
            cores: std::thread::available_parallelism().map_or(0, |n| n.get()),
            os: format!("{}/{}", std::env::consts::OS, std::env::consts::ARCH),
            redis: herdwise_lab::redis_version(),
        },
        scenarios: results,
    };
    if let Some(path) = &cli.json {
        let json = serde_json::to_string_pretty(&report)
            .map_err(|e| herdwise_lab::LabError::Usage(e.to_string()))?;
        std::fs::write(path, json)?;
        println!("report: {}", path.display());
    }
    Ok(())
}
