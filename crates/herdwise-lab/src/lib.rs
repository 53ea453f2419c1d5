//! # herdwise-lab
//!
//! The benchmark and chaos harness: every scenario runs Herdwise and naive caching side by side
//! in the same run, against a real `redis-server` the lab starts (and kills, restarts) itself and
//! a simulated origin whose counters are exact.
//!
//! Modules: [`deploy`] (the Redis a scenario runs against: standalone or a cluster), [`origin`] (the simulated database), [`bystanders`] (other clients of the same Redis), [`strategy`] (naive and Herdwise fleets),
//! [`drive`] (the load driver), [`record`] (latency/timeline recording), [`report`] (table, JSON,
//! plots), [`scenarios`] (what is measured).

pub mod bystanders;
pub mod deploy;
pub mod drive;
pub mod origin;
pub mod record;
pub mod report;
pub mod scenarios;
pub mod strategy;

use std::sync::Arc;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};

use crate::drive::{Keys, Pace};
use crate::origin::Origin;
use crate::report::{Point, StrategyResult};
use crate::strategy::Fleet;

/// Total `calls` in `INFO commandstats`: of `command` only, or of every command but `INFO`
/// itself. Commands run inside Lua scripts are counted too.
pub async fn command_calls(
    conn: &mut redis::aio::ConnectionManager,
    command: Option<&str>,
) -> Result<u64, LabError> {
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(conn)
        .await?;
    let wanted = command.map(|c| format!("cmdstat_{c}:"));
    Ok(info
        .lines()
        .filter(|l| match &wanted {
            Some(prefix) => l.starts_with(prefix.as_str()),
            None => l.starts_with("cmdstat_") && !l.starts_with("cmdstat_info:"),
        })
        .filter_map(|l| l.split("calls=").nth(1))
        .filter_map(|rest| rest.split(',').next())
        .filter_map(|n| n.parse::<u64>().ok())
        .sum())
}

/// Runs `during` and counts the round trips it sent that name `needle`: commands clients sent
/// (not those run inside scripts) with `needle` in an argument, as `MONITOR` saw them. Exact
/// where `INFO commandstats` is not: other clients' background commands (another instance's
/// periodic resync, say) do not name the needle.
pub async fn round_trips_naming<T>(
    url: &str,
    admin: &mut redis::aio::ConnectionManager,
    needle: &str,
    during: impl std::future::Future<Output = Result<T, LabError>>,
) -> Result<(T, u64), LabError> {
    use futures::StreamExt;
    let monitor = redis::Client::open(url)?.get_async_monitor().await?;
    let end = format!("herdwise-lab-monitor-end-{}", std::process::id());
    let lines = monitor.into_on_message::<String>();
    let counter = {
        let (end, needle) = (end.clone(), needle.to_string());
        tokio::spawn(async move {
            let mut lines = std::pin::pin!(lines);
            let mut count = 0u64;
            while let Some(line) = lines.next().await {
                if line.contains(&end) {
                    return Some(count);
                }
                // `<time> [<db> <client>] "<command>" "<arg>" ...`; scripts' commands show `lua`.
                let from_script = line.split(']').next().is_some_and(|c| c.ends_with(" lua"));
                count += u64::from(!from_script && line.contains(&needle));
            }
            None
        })
    };
    let outcome = match during.await {
        Ok(outcome) => outcome,
        Err(e) => {
            counter.abort();
            return Err(e);
        }
    };
    let _: String = redis::cmd("ECHO").arg(&end).query_async(admin).await?;
    let count = tokio::time::timeout(Duration::from_secs(10), counter)
        .await
        .ok()
        .and_then(Result::ok)
        .flatten()
        .ok_or_else(|| LabError::Measure("MONITOR stopped before the end marker".into()))?;
    Ok((outcome, count))
}

/// Anything that stops a lab run.
#[derive(Debug, thiserror::Error)]
pub enum LabError {
    /// Starting or controlling redis-server failed.
    #[error("redis-server: {0}")]
    Process(#[from] std::io::Error),
    /// A Redis command failed where the lab needed it to work (setup, not the measured path).
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    /// Building a cache or a store failed.
    #[error("herdwise: {0}")]
    Herdwise(#[from] herdwise::Error),
    /// Connecting a store failed.
    #[error("store: {0}")]
    Store(#[from] herdwise::StoreError),
    /// Writing the plot failed.
    #[error("plot: {0}")]
    Plot(String),
    /// Unknown scenario or bad arguments.
    #[error("{0}")]
    Usage(String),
    /// A measurement could not be taken (its instrument failed).
    #[error("measurement: {0}")]
    Measure(String),
}

/// Overrides from the command line; each scenario has its own defaults.
#[derive(Debug, Clone, Default)]
pub struct Settings {
    /// Cache instances per strategy (as separate pods would be).
    pub instances: Option<usize>,
    /// Concurrent readers.
    pub concurrency: Option<usize>,
    /// Reads offered per second (open-loop scenarios that take it).
    pub rate: Option<f64>,
    /// Duration of each strategy's run.
    pub duration: Option<Duration>,
    /// Short runs (for `all --quick` and tests).
    pub quick: bool,
    /// Show progress bars.
    pub progress: bool,
    /// The Redis to run against (`l2-throughput`, `batch`, `zipf`, `hot-key-expiry`,
    /// `redis-outage`; the other scenarios refuse a cluster).
    pub topology: deploy::Topology,
}

impl Settings {
    /// `instances` or the scenario's default.
    pub fn instances_or(&self, default: usize) -> usize {
        self.instances.unwrap_or(default).max(1)
    }
    /// `concurrency` or the scenario's default.
    pub fn concurrency_or(&self, default: usize) -> usize {
        self.concurrency.unwrap_or(default).max(1)
    }
    /// `rate` or the scenario's default (at least 1 read/s).
    pub fn rate_or(&self, default: f64) -> f64 {
        self.rate
            .filter(|r| r.is_finite())
            .unwrap_or(default)
            .max(1.0)
    }
    /// `duration`, else `quick` or `full` depending on `--quick`.
    pub fn duration_or(&self, full: Duration, quick: Duration) -> Duration {
        self.duration
            .unwrap_or(if self.quick { quick } else { full })
    }

    /// A progress bar over `duration` (hidden unless asked for and on a terminal).
    pub fn progress_bar(&self, label: &str, duration: Duration) -> ProgressBar {
        if !self.progress {
            return ProgressBar::hidden();
        }
        let bar = ProgressBar::new(duration.as_millis() as u64);
        if let Ok(style) = ProgressStyle::with_template("{msg:<32} [{bar:40}] {elapsed_precise}") {
            bar.set_style(style.progress_chars("=> "));
        }
        bar.set_message(label.to_string());
        bar
    }
}

/// The load one strategy runs under.
#[derive(Debug, Clone, Copy)]
pub struct Load {
    /// Concurrent workers.
    pub concurrency: usize,
    /// How long.
    pub duration: Duration,
    /// Which keys.
    pub keys: Keys,
    /// How fast.
    pub pace: Pace,
}

/// Runs one fleet under load and turns the recording and the origin's counters into a result.
pub async fn measure(
    fleet: &Fleet,
    origin: &Arc<Origin>,
    load: Load,
    started: Instant,
    progress: &ProgressBar,
) -> StrategyResult {
    let Load {
        concurrency,
        duration,
        keys,
        pace,
    } = load;
    origin.begin_run(started);
    let queries_before = origin.queries();
    let rejected_before = origin.rejected();
    let recording = drive::drive(
        &fleet.instances,
        concurrency,
        duration,
        keys,
        pace,
        started,
        progress,
    )
    .await;
    progress.finish_and_clear();
    let elapsed = started.elapsed().as_secs_f64().max(1e-9);
    let (origin_per_second, rejected_per_second) = origin.timeline();
    let timeline = recording
        .per_second()
        .into_iter()
        .enumerate()
        .take(duration.as_secs().max(1) as usize)
        .map(|(second, (reads, errors, p99_us, max_us))| Point {
            second: second as u64,
            reads,
            errors,
            origin_queries: origin_per_second.get(second).copied().unwrap_or(0),
            origin_rejected: rejected_per_second.get(second).copied().unwrap_or(0),
            p99_us,
            max_us,
        })
        .collect();
    let mut extra = std::collections::BTreeMap::new();
    // Reads of a millisecond or more waited for a load (L1/L2 hits take microseconds).
    if let (Some(p99), slow) = recording.quantile_of_slow(1_000, 0.99) {
        extra.insert("waiting_reads".into(), slow as f64);
        extra.insert("waiting_reads_p99_ms".into(), p99 as f64 / 1000.0);
    }
    StrategyResult {
        name: fleet.name.clone(),
        reads: recording.reads(),
        errors: recording.errors(),
        reads_per_sec: recording.reads() as f64 / elapsed,
        latency_us: Some(recording.latency()),
        origin_queries: Some(origin.queries() - queries_before),
        origin_rejected: Some(origin.rejected() - rejected_before),
        origin_peak_in_flight: Some(origin.peak_in_flight()),
        tiers: Some(fleet.counts()),
        extra,
        timeline,
    }
}

/// `redis-server --version`, for the report.
pub fn redis_version() -> String {
    std::process::Command::new("redis-server")
        .arg("--version")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|| "unknown".into())
}
