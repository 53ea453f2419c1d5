//! `hot-key-expiry`: one hot key with a short TTL under C concurrent readers across N instances.
//! Every expiry is a stampede for naive caching (≈ C origin calls); Herdwise's lease makes it one
//! call across all instances, and reading through a registered loader (`herdwise-fetch`) lets
//! XFetch refresh before the expiry, so that (almost) nobody waits at all.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde_json::json;

use super::{compare, origin_queries};
use crate::deploy::Deployment;
use crate::drive::{Keys, Pace};
use crate::origin::{Origin, OriginConfig, Overload};
use crate::report::ScenarioResult;
use crate::{measure, strategy, LabError, Load, Settings};

/// Offered reads per second (each of the C readers reads every C/RATE seconds, so all of them
/// arrive within one 50 ms load).
const RATE: f64 = 20_000.0;

/// Runs the scenario.
pub async fn run(settings: &Settings) -> Result<ScenarioResult, LabError> {
    let instances = settings.instances_or(4);
    let concurrency = settings.concurrency_or(64);
    let duration = settings.duration_or(Duration::from_secs(10), Duration::from_secs(4));
    let ttl = Duration::from_secs(1);
    let origin_config = OriginConfig {
        base_latency: Duration::from_millis(50),
        jitter: Duration::ZERO,
        max_concurrency: 100_000,
        overload: Overload::Queue,
        value_size: 1024,
    };
    let mut strategies = Vec::new();
    for name in ["naive", "herdwise", "herdwise-fetch"] {
        let server = Deployment::start(settings.topology)?;
        let origin = Origin::new(origin_config.clone(), duration.as_secs() as usize + 2);
        let fleet = match name {
            "naive" => strategy::naive(&server, instances, &origin, ttl).await?,
            _ => {
                strategy::herdwise(name, &server.url(), instances, &origin, |b| b.ttl(ttl)).await?
            }
        };
        // Prime the key, so that what is measured is the expiries, not the cold start.
        if let Some(first) = fleet.instances.first() {
            let _ = first.read(1).await;
        }
        let bar = settings.progress_bar(&format!("hot-key-expiry {name}"), duration);
        let started = Instant::now();
        let mut result = measure(
            &fleet,
            &origin,
            Load {
                concurrency,
                duration,
                keys: Keys::Single { key: 1 },
                // Open loop: closed-loop L1 hits would saturate both cores and turn every
                // wake-up into a scheduling delay, measuring the machine instead of the cache.
                pace: Pace::Rate {
                    reads_per_sec: RATE,
                },
            },
            started,
            &bar,
        )
        .await;
        // The key was primed just before the clock started: a run of D holds ceil(D/TTL) - 1
        // expiries (jitter only lengthens the TTL by up to 10 %).
        let periods = ((duration.as_secs_f64() / ttl.as_secs_f64()).ceil() - 1.0).max(1.0);
        let queries = result.origin_queries.unwrap_or(0) as f64;
        result
            .extra
            .insert("origin_calls_per_expiry".into(), queries / periods);
        // Readers that waited for a load: the slowest of them is the waiter latency bound.
        let max_us = result.latency_us.map_or(0, |l| l.max);
        result
            .extra
            .insert("slowest_read_ms".into(), max_us as f64 / 1000.0);
        strategies.push(result);
    }
    let mut ratios = BTreeMap::new();
    let pair = ("herdwise", "naive");
    compare(
        &mut ratios,
        &strategies,
        pair,
        "origin queries",
        origin_queries,
    );
    compare(
        &mut ratios,
        &strategies,
        pair,
        "peak origin concurrency",
        |r| r.origin_peak_in_flight.unwrap_or(0) as f64,
    );
    Ok(ScenarioResult {
        name: "hot-key-expiry".into(),
        description: format!(
            "1 hot key, TTL {ttl:?}, {RATE} reads/s offered by {concurrency} readers over {instances} instances, origin 50 ms, Redis {}",
            settings.topology
        ),
        params: BTreeMap::from([
            ("instances".into(), json!(instances)),
            ("topology".into(), json!(settings.topology)),
            ("concurrency".into(), json!(concurrency)),
            ("duration_s".into(), json!(duration.as_secs_f64())),
            ("ttl_ms".into(), json!(ttl.as_millis() as u64)),
            ("origin".into(), json!(origin_config)),
        ]),
        strategies,
        ratios,
        events: Vec::new(),
    })
}
