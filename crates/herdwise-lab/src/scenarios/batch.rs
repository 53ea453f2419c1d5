//! `batch`: 100-key batch reads over a Zipf key space, 16 tasks, entries living 2 s (so misses
//! keep coming): Herdwise's `get_or_load_many` against the same keys read with single
//! `get_or_load` calls (all 100 at once) and against naive code (one `MGET`, one batch query
//! for the misses, one pipeline of `SET`s). Per batch: latency (p50/p99), origin calls and keys,
//! Redis commands (from `INFO commandstats`, summed over every node; commands run inside
//! scripts count too) and `MGET`s.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use herdwise::{Cache, RedisStore};
use rand::rngs::SmallRng;
use rand::SeedableRng;
use rand_distr::{Distribution, Zipf};
use serde_json::json;

use super::ratio;
use crate::deploy::{Conn, Deployment};
use crate::record::Recorder;
use crate::report::{ScenarioResult, StrategyResult};
use crate::{LabError, Settings};

const KEYS: u64 = 10_000;
const BATCH: usize = 100;
const TTL: Duration = Duration::from_secs(2);

/// The simulated database: one query answers any number of ids (1 ms + 10 µs per id).
#[derive(Default)]
struct Database {
    queries: AtomicU64,
    rows: AtomicU64,
}

impl Database {
    async fn query(&self, ids: &[u64]) -> HashMap<u64, String> {
        self.queries.fetch_add(1, Ordering::Relaxed);
        self.rows.fetch_add(ids.len() as u64, Ordering::Relaxed);
        tokio::time::sleep(Duration::from_millis(1) + Duration::from_micros(10 * ids.len() as u64))
            .await;
        ids.iter()
            .map(|id| (*id, format!("row-{id:08}-{}", "x".repeat(80))))
            .collect()
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Batch,
    Singles,
    Naive,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Batch => "herdwise get_or_load_many",
            Kind::Singles => "herdwise get_or_load x100",
            Kind::Naive => "naive MGET + query + SET pipeline",
        }
    }
}

/// One batch read; `Ok(())` if every key got its row.
async fn read_batch(
    kind: Kind,
    cache: &Cache<u64, String>,
    conn: &mut Conn,
    db: &Database,
    ids: &[u64],
) -> Result<(), String> {
    match kind {
        Kind::Batch => {
            let got = cache
                .get_or_load_many(ids.iter(), |missing: Vec<u64>| async move {
                    Ok::<_, std::io::Error>(db.query(&missing).await)
                })
                .await;
            got.into_iter()
                .all(|r| matches!(r, Ok(Some(_))))
                .then_some(())
                .ok_or_else(|| "a key failed".to_string())
        }
        Kind::Singles => {
            let reads = ids.iter().map(|id| {
                cache.get_or_load(id, |id| {
                    let id = *id;
                    async move { Ok::<_, std::io::Error>(db.query(&[id]).await.remove(&id)) }
                })
            });
            futures::future::join_all(reads)
                .await
                .into_iter()
                .all(|r| matches!(r, Ok(Some(_))))
                .then_some(())
                .ok_or_else(|| "a key failed".to_string())
        }
        Kind::Naive => {
            let keys: Vec<String> = ids.iter().map(|id| format!("naive:{id}")).collect();
            let found: Vec<Option<String>> = redis::cmd("MGET")
                .arg(&keys)
                .query_async(conn)
                .await
                .map_err(|e| e.to_string())?;
            let mut missing: Vec<u64> = ids
                .iter()
                .zip(&found)
                .filter(|(_, v)| v.is_none())
                .map(|(id, _)| *id)
                .collect();
            missing.sort_unstable();
            missing.dedup();
            if missing.is_empty() {
                return Ok(());
            }
            let rows = db.query(&missing).await;
            let mut pipe = redis::pipe();
            for (id, row) in &rows {
                pipe.cmd("SET")
                    .arg(format!("naive:{id}"))
                    .arg(row)
                    .arg("PX")
                    .arg(TTL.as_millis() as u64)
                    .ignore();
            }
            let () = pipe.query_async(conn).await.map_err(|e| e.to_string())?;
            (rows.len() == missing.len())
                .then_some(())
                .ok_or_else(|| "a row is missing".to_string())
        }
    }
}

/// Runs the scenario.
pub async fn run(settings: &Settings) -> Result<ScenarioResult, LabError> {
    let concurrency = settings.concurrency_or(16);
    let duration = settings.duration_or(Duration::from_secs(10), Duration::from_secs(3));
    let server = Deployment::start(settings.topology)?;
    let url = server.url();
    let zipf = Zipf::new(KEYS as f64, 0.99).map_err(|e| LabError::Measure(format!("zipf: {e}")))?;
    let mut strategies = Vec::new();
    for (n, kind) in [Kind::Batch, Kind::Singles, Kind::Naive]
        .into_iter()
        .enumerate()
    {
        let db = Arc::new(Database::default());
        let cache: Cache<u64, String> = Cache::builder(&format!("batch{n}"))
            .store(RedisStore::connect(&url).await?)
            .ttl(TTL)
            .no_ttl_jitter()
            .build()?;
        let commands_before = server.command_calls(None).await?;
        let mgets_before = server.command_calls(Some("mget")).await?;
        let started = Instant::now();
        let deadline = started + duration;
        let seconds = duration.as_secs() as usize + 2;
        let mut tasks = Vec::new();
        for task in 0..concurrency {
            let (cache, db) = (cache.clone(), db.clone());
            let mut conn = server.connection().await?;
            tasks.push(tokio::spawn(async move {
                let mut rng = SmallRng::seed_from_u64(task as u64 + 1);
                let mut recorder = Recorder::new(started, seconds);
                while Instant::now() < deadline {
                    let ids: Vec<u64> = (0..BATCH).map(|_| zipf.sample(&mut rng) as u64).collect();
                    let t = Instant::now();
                    let ok = read_batch(kind, &cache, &mut conn, &db, &ids).await.is_ok();
                    recorder.record(t.elapsed(), ok);
                }
                recorder
            }));
        }
        // The breaker's openings during the run (a batch must not trip it by itself).
        let openings = {
            let cache = cache.clone();
            tokio::spawn(async move {
                let (mut opened, mut was_open) = (0u64, false);
                while Instant::now() < deadline {
                    let open = cache.breaker_state() == herdwise::BreakerState::Open;
                    if open && !was_open {
                        opened += 1;
                    }
                    was_open = open;
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                opened
            })
        };
        let mut all = Recorder::new(started, seconds);
        for t in tasks {
            if let Ok(r) = t.await {
                all.merge(&r);
            }
        }
        let elapsed = started.elapsed().as_secs_f64();
        let breaker_openings = openings.await.unwrap_or(0);
        let commands = server
            .command_calls(None)
            .await?
            .saturating_sub(commands_before);
        let mgets = server
            .command_calls(Some("mget"))
            .await?
            .saturating_sub(mgets_before);
        let batches = all.reads().max(1) as f64;
        let queries = db.queries.load(Ordering::Relaxed);
        let mut extra = BTreeMap::new();
        extra.insert("redis_commands_per_batch".into(), commands as f64 / batches);
        extra.insert("breaker_openings".into(), breaker_openings as f64);
        extra.insert("mgets_per_batch".into(), mgets as f64 / batches);
        extra.insert("origin_calls_per_batch".into(), queries as f64 / batches);
        extra.insert(
            "origin_keys_per_batch".into(),
            db.rows.load(Ordering::Relaxed) as f64 / batches,
        );
        strategies.push(StrategyResult {
            name: kind.name().into(),
            reads: all.reads(),
            errors: all.errors(),
            reads_per_sec: all.reads() as f64 / elapsed,
            latency_us: Some(all.latency()),
            origin_queries: Some(queries),
            origin_rejected: None,
            origin_peak_in_flight: None,
            tiers: None,
            extra,
            timeline: Vec::new(),
        });
    }
    let mut ratios = BTreeMap::new();
    let p = |i: usize, f: fn(&crate::record::Latency) -> u64| {
        strategies[i]
            .latency_us
            .as_ref()
            .map_or(0.0, |l| f(l) as f64)
    };
    let per_batch = |i: usize, what: &str| strategies[i].extra.get(what).copied().unwrap_or(0.0);
    for (i, other) in [(1usize, "singles"), (2, "naive")] {
        ratios.insert(
            format!("batch/{other} p50"),
            ratio(p(0, |l| l.p50), p(i, |l| l.p50)),
        );
        ratios.insert(
            format!("batch/{other} p99"),
            ratio(p(0, |l| l.p99), p(i, |l| l.p99)),
        );
        ratios.insert(
            format!("batch/{other} origin calls per batch"),
            ratio(
                per_batch(0, "origin_calls_per_batch"),
                per_batch(i, "origin_calls_per_batch"),
            ),
        );
        ratios.insert(
            format!("batch/{other} redis commands per batch"),
            ratio(
                per_batch(0, "redis_commands_per_batch"),
                per_batch(i, "redis_commands_per_batch"),
            ),
        );
    }
    Ok(ScenarioResult {
        name: "batch".into(),
        description: format!(
            "{BATCH}-key batches over Zipf(0.99) on {KEYS} keys, entries live {TTL:?}, {concurrency} tasks, Redis {}",
            settings.topology
        ),
        params: BTreeMap::from([
            ("concurrency".into(), json!(concurrency)),
            ("topology".into(), json!(settings.topology)),
            ("duration_s".into(), json!(duration.as_secs_f64())),
            ("keys".into(), json!(KEYS)),
            ("batch".into(), json!(BATCH)),
        ]),
        strategies,
        ratios,
        events: Vec::new(),
    })
}
