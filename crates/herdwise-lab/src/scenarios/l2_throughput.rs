//! `l2-throughput`: L2 hits through Herdwise's `get` and `get_or_load` (L1 off) against raw redis-rs GET on the same
//! server (standalone or a cluster: `--topology`), 64 tasks, 100 B and 10 KB values; counts Redis
//! commands per read from `INFO commandstats` (summed over every node), so "one round trip per hit" is checked, not assumed.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use herdwise::{Cache, Compression, RedisStore};
use rand::rngs::SmallRng;
use rand::{RngCore, SeedableRng};
use serde_json::json;

use super::ratio;
use crate::deploy::{Conn, Deployment};
use crate::drive::{Keys, Pace};
use crate::origin::{Origin, OriginConfig, Overload};
use crate::report::ScenarioResult;
use crate::strategy::{Fleet, Reader};
use crate::{measure, LabError, Load, Settings};

const KEYS: u64 = 1_000;

struct RawGet(Conn);

#[async_trait]
impl Reader for RawGet {
    async fn read(&self, key: u64) -> Result<usize, String> {
        let mut conn = self.0.clone();
        let v: Option<Vec<u8>> = redis::cmd("GET")
            .arg(format!("raw:{key}"))
            .query_async(&mut conn)
            .await
            .map_err(|e| e.to_string())?;
        v.map(|v| v.len()).ok_or_else(|| "miss".to_string())
    }
}

struct HerdwiseGet(Cache<u64, Vec<u8>>);

#[async_trait]
impl Reader for HerdwiseGet {
    async fn read(&self, key: u64) -> Result<usize, String> {
        match self.0.get(&key).await {
            Ok(Some(v)) => Ok(v.len()),
            Ok(None) => Err("miss".into()),
            Err(e) => Err(e.to_string()),
        }
    }
}

/// `get_or_load` on keys that are all in Redis: the loader is never called.
struct HerdwiseGetOrLoad(Cache<u64, Vec<u8>>);

#[async_trait]
impl Reader for HerdwiseGetOrLoad {
    async fn read(&self, key: u64) -> Result<usize, String> {
        let loaded = self
            .0
            .get_or_load(&key, |_| async {
                Err(std::io::Error::other("loader called"))
            })
            .await;
        match loaded {
            Ok(Some(v)) => Ok(v.len()),
            Ok(None) => Err("miss".into()),
            Err(e) => Err(e.to_string()),
        }
    }
}

/// A Herdwise cache that reads Redis on every call (L1 off, no compression).
async fn l2_only_cache(url: &str, label: &str) -> Result<Cache<u64, Vec<u8>>, LabError> {
    Ok(Cache::builder(&format!("l2-{label}"))
        .store(RedisStore::connect(url).await?)
        .l1_max_bytes(0)
        .no_hot_key_shield()
        .compression(Compression::None)
        .ttl(Duration::from_secs(3600))
        .build()?)
}

/// Runs the scenario.
pub async fn run(settings: &Settings) -> Result<ScenarioResult, LabError> {
    let concurrency = settings.concurrency_or(64);
    let instances = settings.instances_or(1);
    let duration = settings.duration_or(Duration::from_secs(5), Duration::from_millis(1500));
    let server = Deployment::start(settings.topology)?;
    let url = server.url();
    let mut admin = server.connection().await?;
    // The origin is never called here (everything is preloaded); it only satisfies `measure`.
    let origin = Origin::new(
        OriginConfig {
            base_latency: Duration::ZERO,
            jitter: Duration::ZERO,
            max_concurrency: 1,
            overload: Overload::Reject,
            value_size: 0,
        },
        duration.as_secs() as usize + 2,
    );
    let mut rng = SmallRng::seed_from_u64(11);
    let mut strategies = Vec::new();
    let mut ratios = BTreeMap::new();
    for size in [100usize, 10 * 1024] {
        let label = if size < 1024 {
            "100B".to_string()
        } else {
            format!("{}KB", size / 1024)
        };
        // Random (incompressible) payloads: neither side may win by compressing.
        let mut herdwise_readers: Vec<Arc<dyn Reader>> = Vec::new();
        let mut load_readers: Vec<Arc<dyn Reader>> = Vec::new();
        let mut raw_readers: Vec<Arc<dyn Reader>> = Vec::new();
        let mut raw_after: Vec<Arc<dyn Reader>> = Vec::new();
        for _ in 0..instances {
            herdwise_readers.push(Arc::new(HerdwiseGet(l2_only_cache(&url, &label).await?)));
            load_readers.push(Arc::new(HerdwiseGetOrLoad(
                l2_only_cache(&url, &label).await?,
            )));
            raw_readers.push(Arc::new(RawGet(server.connection().await?)));
            raw_after.push(Arc::new(RawGet(server.connection().await?)));
        }
        let preload = l2_only_cache(&url, &label).await?;
        for k in 0..KEYS {
            let mut value = vec![0u8; size];
            rng.fill_bytes(&mut value);
            let () = redis::cmd("SET")
                .arg(format!("raw:{k}"))
                .arg(&value)
                .query_async(&mut admin)
                .await?;
            preload.set(&k, value).await?;
        }
        let mut pair = Vec::new();
        // The baseline before and after the contender: the machine's drift shows as their range.
        for (name, readers) in [
            ("redis-rs GET", raw_readers),
            ("herdwise get (L1 off)", herdwise_readers),
            ("herdwise get_or_load (L1 off)", load_readers),
            ("redis-rs GET (after)", raw_after),
        ] {
            let fleet = Fleet::new(format!("{name} {label}"), readers);
            let calls_before = server.command_calls(None).await?;
            let bar = settings.progress_bar(&format!("l2-throughput {name} {label}"), duration);
            let started = Instant::now();
            let mut result = measure(
                &fleet,
                &origin,
                Load {
                    concurrency,
                    duration,
                    keys: Keys::Uniform { n: KEYS },
                    pace: Pace::AsFastAsPossible,
                },
                started,
                &bar,
            )
            .await;
            let calls = server
                .command_calls(None)
                .await?
                .saturating_sub(calls_before);
            result.extra.insert(
                "redis_commands_per_read".into(),
                ratio(calls as f64, result.reads as f64),
            );
            result.origin_queries = None;
            result.origin_rejected = None;
            result.origin_peak_in_flight = None;
            result.tiers = None;
            result.timeline.clear();
            pair.push(result.reads_per_sec);
            strategies.push(result);
        }
        let (low, high) = (pair[0].min(pair[3]), pair[0].max(pair[3]));
        let mean = (pair[0] + pair[3]) / 2.0;
        for (what, rps) in [("get", pair[1]), ("get_or_load", pair[2])] {
            ratios.insert(
                format!("herdwise {what}/raw reads per second {label}"),
                ratio(rps, mean),
            );
            ratios.insert(
                format!(
                    "herdwise {what}/raw reads per second {label} (against the faster baseline)"
                ),
                ratio(rps, high),
            );
            ratios.insert(
                format!(
                    "herdwise {what}/raw reads per second {label} (against the slower baseline)"
                ),
                ratio(rps, low),
            );
        }
        ratios.insert(
            format!("herdwise get_or_load/get reads per second {label}"),
            ratio(pair[2], pair[1]),
        );
    }
    Ok(ScenarioResult {
        name: "l2-throughput".into(),
        description: format!(
            "Redis hits: Herdwise (L1 off) vs raw redis-rs GET, {concurrency} tasks, {instances} connection(s) each, Redis {}",
            settings.topology
        ),
        params: BTreeMap::from([
            ("concurrency".into(), json!(concurrency)),
            ("topology".into(), json!(settings.topology)),
            ("instances".into(), json!(instances)),
            ("duration_s".into(), json!(duration.as_secs_f64())),
            ("keys".into(), json!(KEYS)),
        ]),
        strategies,
        ratios,
        events: Vec::new(),
    })
}
