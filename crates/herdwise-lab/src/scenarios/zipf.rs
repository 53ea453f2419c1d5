//! `zipf`: Zipf(0.99) reads over 1M keys, 4 instances with a ~100k-entry L1 each: hit ratio per
//! tier, origin load and latency percentiles for naive, Herdwise, and Herdwise without L1.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde_json::json;

use super::{compare, origin_queries};
use crate::deploy::Deployment;
use crate::drive::{Keys, Pace};
use crate::origin::{Origin, OriginConfig, Overload};
use crate::report::ScenarioResult;
use crate::{measure, strategy, LabError, Load, Settings};

/// Approximate L1 weight of one 100-byte entry: key + 52-byte header + payload + overhead.
const L1_ENTRY_BYTES: u64 = 270;

/// Runs the scenario.
pub async fn run(settings: &Settings) -> Result<ScenarioResult, LabError> {
    let instances = settings.instances_or(4);
    // Enough workers that a miss never puts one behind its schedule: latency then measures the
    // cache, not client-side queueing (at 32 workers the run sat at the edge of saturation).
    let concurrency = settings.concurrency_or(128);
    let duration = settings.duration_or(Duration::from_secs(20), Duration::from_secs(6));
    let keys = Keys::Zipf {
        n: 1_000_000,
        s: 0.99,
    };
    let l1_entries: u64 = 100_000;
    // Open loop: the same offered load for every strategy, so origin QPS and latency compare.
    let rate = 20_000.0;
    let ttl = Duration::from_secs(300);
    let origin_config = OriginConfig {
        base_latency: Duration::from_millis(1),
        jitter: Duration::from_millis(1),
        max_concurrency: 64,
        overload: Overload::Queue,
        value_size: 100,
    };
    let mut strategies = Vec::new();
    for name in ["naive", "herdwise", "herdwise-no-l1"] {
        let server = Deployment::start(settings.topology)?;
        let origin = Origin::new(origin_config.clone(), duration.as_secs() as usize + 2);
        let url = server.url();
        let fleet = match name {
            "naive" => strategy::naive(&server, instances, &origin, ttl).await?,
            "herdwise" => {
                strategy::herdwise(name, &url, instances, &origin, |b| {
                    b.ttl(ttl).l1_max_bytes(l1_entries * L1_ENTRY_BYTES)
                })
                .await?
            }
            _ => {
                strategy::herdwise(name, &url, instances, &origin, |b| {
                    b.ttl(ttl).l1_max_bytes(0)
                })
                .await?
            }
        };
        let bar = settings.progress_bar(&format!("zipf {name}"), duration);
        let started = Instant::now();
        let load = Load {
            concurrency,
            duration,
            keys,
            pace: Pace::Rate {
                reads_per_sec: rate,
            },
        };
        let result = measure(&fleet, &origin, load, started, &bar).await;
        strategies.push(result);
    }
    let mut ratios = BTreeMap::new();
    let pair = ("herdwise", "naive");
    compare(&mut ratios, &strategies, pair, "reads per second", |r| {
        r.reads_per_sec
    });
    compare(&mut ratios, &strategies, pair, "p99 latency", |r| {
        r.latency_us.map_or(0.0, |l| l.p99 as f64)
    });
    compare(
        &mut ratios,
        &strategies,
        pair,
        "origin queries",
        origin_queries,
    );
    Ok(ScenarioResult {
        name: "zipf".into(),
        description: format!(
            "Zipf(0.99) over 1M keys (cold start), {rate} reads/s offered by {concurrency} readers over {instances} instances, L1 ≈ {l1_entries} entries, Redis {}",
            settings.topology
        ),
        params: BTreeMap::from([
            ("instances".into(), json!(instances)),
            ("topology".into(), json!(settings.topology)),
            ("concurrency".into(), json!(concurrency)),
            ("reads_per_sec".into(), json!(rate)),
            ("duration_s".into(), json!(duration.as_secs_f64())),
            ("keys".into(), json!(keys)),
            ("l1_entries".into(), json!(l1_entries)),
            ("origin".into(), json!(origin_config)),
        ]),
        strategies,
        ratios,
        events: Vec::new(),
    })
}
