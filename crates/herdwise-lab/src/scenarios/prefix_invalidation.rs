//! `prefix-invalidation`: remove 200k keys under one prefix while other clients keep reading the
//! same Redis. Naive: `KEYS prefix*` then `DEL` (what the seeds warn against: KEYS blocks the
//! server). Herdwise: `invalidate_prefix`, `SCAN MATCH` in batches + `UNLINK`. Reports how long
//! each took and the other clients' read latency meanwhile.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use herdwise::{Cache, RedisStore};
use herdwise_testkit::RedisServer;
use redis::aio::ConnectionManager;
use serde_json::json;

use super::compare;
use crate::bystanders::Bystanders;
use crate::report::{ScenarioResult, StrategyResult};
use crate::{LabError, Settings};

/// Readers of other keys, running while the invalidation runs.
const BYSTANDERS: usize = 8;

/// Runs the scenario.
pub async fn run(settings: &Settings) -> Result<ScenarioResult, LabError> {
    let keys: u64 = if settings.quick { 50_000 } else { 200_000 };
    let mut strategies = Vec::new();
    for name in ["naive", "herdwise"] {
        let server = RedisServer::start()?;
        let url = server.url();
        let mut admin = ConnectionManager::new(redis::Client::open(url.as_str())?).await?;
        // The keys to remove, as Herdwise stores them (namespace "scan", key (42, i), in the
        // namespace's generation, which the first call learns), plus keys the bystanders read.
        let cache: Cache<(u64, u64), String> = Cache::builder("scan")
            .store(RedisStore::connect(&url).await?)
            .build()?;
        let _ = cache.get(&(0, 0)).await?;
        let prefix = cache
            .stored_key(&(42, 0))?
            .trim_end_matches('0')
            .to_string();
        for chunk in (0..keys).collect::<Vec<_>>().chunks(5_000) {
            let mut pipe = redis::pipe();
            for i in chunk {
                pipe.cmd("SET")
                    .arg(format!("{prefix}{i}"))
                    .arg("x")
                    .ignore();
            }
            let () = pipe.query_async(&mut admin).await?;
        }
        Bystanders::seed(&mut admin).await?;

        let bar = settings.progress_bar(
            &format!("prefix-invalidation {name}"),
            Duration::from_secs(5),
        );
        let bystanders = Bystanders::start(&url, BYSTANDERS).await?;
        let started = bystanders.started();
        // A quiet baseline, then the invalidation.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let t = Instant::now();
        let removed = match name {
            "naive" => {
                let found: Vec<String> = redis::cmd("KEYS")
                    .arg(format!("{}*", redis_glob_escape(&prefix)))
                    .query_async(&mut admin)
                    .await?;
                let mut removed = 0u64;
                for chunk in found.chunks(10_000) {
                    let n: u64 = redis::cmd("DEL").arg(chunk).query_async(&mut admin).await?;
                    removed += n;
                }
                removed
            }
            _ => cache.invalidate_prefix(&42u64).await?,
        };
        let took = t.elapsed();
        tokio::time::sleep(Duration::from_millis(300)).await;
        let merged = bystanders.finish().await;
        bar.finish_and_clear();
        let mut result = StrategyResult {
            name: name.into(),
            reads: merged.reads(),
            reads_per_sec: merged.reads() as f64 / started.elapsed().as_secs_f64().max(1e-9),
            errors: merged.errors(),
            latency_us: Some(merged.latency()),
            ..Default::default()
        };
        result.extra.insert("keys_removed".into(), removed as f64);
        result
            .extra
            .insert("invalidation_ms".into(), took.as_secs_f64() * 1000.0);
        result.extra.insert(
            "bystander_max_read_ms".into(),
            merged.latency().max as f64 / 1000.0,
        );
        strategies.push(result);
    }
    let mut ratios = BTreeMap::new();
    compare(
        &mut ratios,
        &strategies,
        ("herdwise", "naive"),
        "bystander p99",
        |r| r.latency_us.map_or(0.0, |l| l.p99 as f64),
    );
    Ok(ScenarioResult {
        name: "prefix-invalidation".into(),
        description: format!(
            "remove {keys} keys under one prefix while {BYSTANDERS} other clients read the same Redis (p50/p99 columns: their reads)"
        ),
        params: BTreeMap::from([
            ("keys".into(), json!(keys)),
            ("bystanders".into(), json!(BYSTANDERS)),
        ]),
        strategies,
        ratios,
        events: Vec::new(),
    })
}

/// `text` as a literal in a Redis glob pattern.
fn redis_glob_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}
