//! The scenarios. Each runs every strategy in turn, each on a fresh Redis (a `redis-server`, or
//! a cluster with `--topology cluster`) and a fresh origin, so strategies never share state, and returns them side by side.

pub mod batch;
pub mod drift;
pub mod failover;
pub mod hit_path;
pub mod hot_key_expiry;
pub mod http;
pub mod invalidation_fanout;
pub mod invalidation_race;
pub mod l2_throughput;
pub mod prefix_invalidation;
pub mod redis_outage;
pub mod slow_origin;
pub mod tag_invalidation;
pub mod writes;
pub mod zipf;

use std::collections::BTreeMap;

use crate::deploy::Topology;
use crate::report::{ScenarioResult, StrategyResult};
use crate::{LabError, Settings};

/// Every scenario, in the order `all` runs them.
pub const ALL: [&str; 15] = [
    "hit-path",
    "l2-throughput",
    "writes",
    "batch",
    "zipf",
    "hot-key-expiry",
    "invalidation-race",
    "invalidation-fanout",
    "prefix-invalidation",
    "tag-invalidation",
    "redis-outage",
    "slow-origin",
    "cluster-failover",
    "sentinel-failover",
    "drift",
];

/// Scenarios `all` does not run: they need more than Redis (`http`: Debian's nginx, varnish and
/// wrk, and the release `herdwise-proxy` binary).
pub const EXTRA: [&str; 1] = ["http"];

/// The scenarios that run on a Redis Cluster (`--topology cluster`); the others measure one
/// server's behaviour (bystanders on the same server, its keyspace) and run standalone only.
pub const ON_CLUSTER: [&str; 5] = [
    "l2-throughput",
    "batch",
    "zipf",
    "hot-key-expiry",
    "redis-outage",
];

/// The failovers, which start the topology they fail over whatever `--topology` says.
pub const FAILOVERS: [&str; 2] = ["cluster-failover", "sentinel-failover"];

/// Whether `name` runs on `topology`.
pub fn runs_on(name: &str, topology: Topology) -> bool {
    topology == Topology::Standalone || ON_CLUSTER.contains(&name) || FAILOVERS.contains(&name)
}

/// Runs the scenario called `name`.
pub async fn run(name: &str, settings: &Settings) -> Result<ScenarioResult, LabError> {
    if ALL.contains(&name) && !runs_on(name, settings.topology) {
        return Err(LabError::Usage(format!(
            "{name} runs on a standalone Redis only; on a cluster: {}",
            ON_CLUSTER.join(", ")
        )));
    }
    match name {
        "hit-path" => hit_path::run(settings).await,
        "l2-throughput" => l2_throughput::run(settings).await,
        "batch" => batch::run(settings).await,
        "writes" => writes::run(settings).await,
        "zipf" => zipf::run(settings).await,
        "hot-key-expiry" => hot_key_expiry::run(settings).await,
        "invalidation-race" => invalidation_race::run(settings).await,
        "invalidation-fanout" => invalidation_fanout::run(settings).await,
        "prefix-invalidation" => prefix_invalidation::run(settings).await,
        "tag-invalidation" => tag_invalidation::run(settings).await,
        "redis-outage" => redis_outage::run(settings).await,
        "slow-origin" => slow_origin::run(settings).await,
        "cluster-failover" => failover::run(settings, failover::Kind::Cluster).await,
        "sentinel-failover" => failover::run(settings, failover::Kind::Sentinel).await,
        "drift" => drift::run(settings).await,
        "http" => http::run(settings).await,
        other => Err(LabError::Usage(format!(
            "unknown scenario {other:?}; one of {}, {} or all",
            ALL.join(", "),
            EXTRA.join(", ")
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

/// Records `"{a}/{b} {what}"` = `figure(a) / figure(b)` for the strategies named `a` and `b`
/// (nothing if either did not run).
pub(crate) fn compare(
    ratios: &mut BTreeMap<String, f64>,
    strategies: &[StrategyResult],
    (a, b): (&str, &str),
    what: &str,
    figure: impl Fn(&StrategyResult) -> f64,
) {
    let find = |name: &str| strategies.iter().find(|s| s.name == name);
    if let (Some(x), Some(y)) = (find(a), find(b)) {
        ratios.insert(format!("{a}/{b} {what}"), ratio(figure(x), figure(y)));
    }
}

/// Origin queries of a result, as a figure.
pub(crate) fn origin_queries(r: &StrategyResult) -> f64 {
    r.origin_queries.unwrap_or(0) as f64
}
