//! The scenarios. Each runs every strategy in turn, each on a fresh `redis-server` and a fresh
//! origin, so strategies never share state, and returns them side by side.

pub mod hit_path;
pub mod hot_key_expiry;
pub mod l2_throughput;
pub mod redis_outage;
pub mod zipf;

use crate::report::ScenarioResult;
use crate::{LabError, Settings};

/// Every scenario, in the order `all` runs them.
pub const ALL: [&str; 5] = [
    "hit-path",
    "l2-throughput",
    "zipf",
    "hot-key-expiry",
    "redis-outage",
];

/// Runs the scenario called `name`.
pub async fn run(name: &str, settings: &Settings) -> Result<ScenarioResult, LabError> {
    match name {
        "hit-path" => hit_path::run(settings).await,
        "l2-throughput" => l2_throughput::run(settings).await,
        "zipf" => zipf::run(settings).await,
        "hot-key-expiry" => hot_key_expiry::run(settings).await,
        "redis-outage" => redis_outage::run(settings).await,
        other => Err(LabError::Usage(format!(
            "unknown scenario {other:?}; one of {} or all",
            ALL.join(", ")
        ))),
    }
}

/// `a / b`, or 0 when `b` is 0.
pub(crate) fn ratio(a: f64, b: f64) -> f64 {
    if b == 0.0 {
        0.0
    } else {
        a / b
    }
}
