//! `cluster-failover` and `sentinel-failover`: a primary is killed (SIGKILL) under a steady Zipf
//! load over 4 instances, and its replica takes over — promoted by the cluster itself, or by
//! the sentinels. The load is `redis-outage`'s (100k preloaded keys, TTLs spread over 5 s, so the
//! steady state has misses; 20k reads/s). Meanwhile:
//!
//! - a *probe* reads 200 long-lived keys, spread over every slot, straight from L2 (L1 off)
//!   every 20 ms from the kill on, until all 200 are hits again: the time until L2 hits return
//!   (the probe is a cache of its own: its breaker's re-probe cycle is part of the figure);
//! - a *version check* runs the torture tests' contract on 100 more keys: one writer updates a
//!   key at a versioned origin, then invalidates it through the cache (`write_around`; naive:
//!   `DEL`), every 10 ms; 8 readers over the 4 instances read them through the cache. A read that
//!   returns a version superseded more than 500 ms before the read began is stale.
//!
//! Figures: failed reads (before/after the kill), slowest read after it, origin load after it
//! against the steady rate, time until L2 hits return, stale reads. Naive cache-aside runs too on
//! the cluster (redis-rs' cluster client); on Sentinel only Herdwise (naive code would need a
//! sentinel-aware client).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use herdwise::{Cache, LoadOptions, RedisStore};
use parking_lot::Mutex as Lock;
use serde_json::json;

use super::redis_outage::{preload_herdwise, preload_naive, KEYS, TTL};
use super::{compare, ratio};
use crate::deploy::{Conn, Deployment};
use crate::drive::{Keys, Pace};
use crate::origin::{Origin, OriginConfig, Overload};
use crate::report::{ScenarioResult, StrategyResult};
use crate::{measure, strategy, LabError, Load, Settings};

/// Which failover.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A Redis Cluster primary; the cluster promotes its replica.
    Cluster,
    /// The Sentinel-managed primary; the sentinels promote the replica.
    Sentinel,
}

/// Keys the probe reads (above the load's key range, written to live for the whole run).
const PROBES: u64 = 200;
/// Keys the version check writes and reads.
const VERSIONED: u64 = 100;
/// How stale a read may be: the backplane's delivery time with room to spare (as in
/// `tests/torture.rs`).
const STALE_BOUND: Duration = Duration::from_millis(500);
/// How long after the kill the probe waits for L2 hits to return.
const PROBE_LIMIT: Duration = Duration::from_secs(30);
/// Version-check readers, over the instances.
const VERSION_READERS: usize = 8;

/// Runs the scenario.
pub async fn run(settings: &Settings, kind: Kind) -> Result<ScenarioResult, LabError> {
    let instances = settings.instances_or(4);
    let concurrency = settings.concurrency_or(128);
    let duration = settings.duration_or(Duration::from_secs(30), Duration::from_secs(12));
    let kill_at = duration / 3;
    let rate = settings.rate_or(20_000.0);
    let keys = Keys::Zipf { n: KEYS, s: 0.99 };
    let origin_config = OriginConfig {
        base_latency: Duration::from_millis(2),
        jitter: Duration::from_millis(1),
        max_concurrency: 32,
        overload: Overload::Reject,
        value_size: 100,
    };
    let names: &[&str] = match kind {
        Kind::Cluster => &["naive", "herdwise"],
        Kind::Sentinel => &["herdwise"],
    };
    let mut strategies = Vec::new();
    let mut events = Vec::new();
    for &name in names {
        let deploy = match kind {
            Kind::Cluster => Deployment::start(crate::deploy::Topology::Cluster)?,
            Kind::Sentinel => Deployment::start_sentinel()?,
        };
        let url = deploy.url();
        let origin = Origin::new(origin_config.clone(), duration.as_secs() as usize + 2);
        let naive = name == "naive";
        let fleet = if naive {
            preload_naive(&deploy, &origin).await?;
            strategy::naive(&deploy, instances, &origin, TTL).await?
        } else {
            preload_herdwise(&url, &origin).await?;
            strategy::herdwise_with(name, &url, instances, &origin, false, |b| b.ttl(TTL)).await?
        };
        let side = if naive {
            Side::naive(&deploy, instances).await?
        } else {
            Side::herdwise(&url, instances).await?
        };
        side.write_probes(&origin).await?;
        if side.probe_pass().await != PROBES {
            return Err(LabError::Measure(
                "the probe keys did not read back before the failover".into(),
            ));
        }
        let deploy = Arc::new(Mutex::new(deploy));
        let bar = settings.progress_bar(&format!("{} {name}", kind.name()), duration);
        let started = Instant::now();
        let side = Arc::new(side);
        let versions = Arc::new(Versions::new());
        let checks =
            spawn_version_check(side.clone(), versions.clone(), started, duration, kill_at);
        let fault = tokio::spawn(fail_over(deploy.clone(), side.clone(), started, kill_at));
        let load = Load {
            concurrency,
            duration,
            keys,
            pace: Pace::Rate {
                reads_per_sec: rate,
            },
        };
        let mut result = measure(&fleet, &origin, load, started, &bar).await;
        let outcome = fault
            .await
            .map_err(|e| LabError::Measure(format!("the failover task failed: {e}")))??;
        let stale = checks.await;
        summarize(&mut result, kill_at, &outcome, &stale);
        if events.is_empty() {
            events.push((
                kill_at.as_secs_f64(),
                format!("primary killed (SIGKILL, port {})", outcome.killed_port),
            ));
        }
        strategies.push(result);
        drop(deploy);
    }
    let mut ratios = BTreeMap::new();
    compare(
        &mut ratios,
        &strategies,
        ("herdwise", "naive"),
        "failed reads",
        |r| r.errors as f64,
    );
    compare(
        &mut ratios,
        &strategies,
        ("herdwise", "naive"),
        "stale reads",
        |r| r.extra.get("stale_reads").copied().unwrap_or(0.0),
    );
    Ok(ScenarioResult {
        name: kind.name().into(),
        description: format!(
            "{}: Zipf(0.99) over {KEYS} preloaded keys (TTLs spread over {}s), {rate} reads/s by {concurrency} readers over {instances} instances; a primary killed at {}s; probe of {PROBES} keys every 20 ms for L2 hits; version check on {VERSIONED} keys (1 write/10 ms, {VERSION_READERS} readers, stale beyond {STALE_BOUND:?}); herdwise: default configuration (adaptive origin limit)",
            match kind {
                Kind::Cluster => "Redis Cluster 3 primaries + 3 replicas",
                Kind::Sentinel => "Sentinel: primary + replica, 3 sentinels",
            },
            TTL.as_secs(),
            kill_at.as_secs()
        ),
        params: BTreeMap::from([
            ("instances".into(), json!(instances)),
            ("concurrency".into(), json!(concurrency)),
            ("reads_per_sec".into(), json!(rate)),
            ("duration_s".into(), json!(duration.as_secs_f64())),
            ("kill_at_s".into(), json!(kill_at.as_secs_f64())),
            ("keys".into(), json!(keys)),
            ("ttl_s".into(), json!(TTL.as_secs())),
            ("origin".into(), json!(origin_config)),
            ("stale_bound_ms".into(), json!(STALE_BOUND.as_millis() as u64)),
        ]),
        strategies,
        ratios,
        events,
    })
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Cluster => "cluster-failover",
            Kind::Sentinel => "sentinel-failover",
        }
    }
}

/// What the failover task saw.
struct FailoverOutcome {
    killed_port: u16,
    /// From the kill until every probe key was an L2 hit again (`None`: not within the run).
    l2_back: Option<Duration>,
}

/// Kills the primary at `kill_at`, then probes until every probe key reads from L2 again.
async fn fail_over(
    deploy: Arc<Mutex<Deployment>>,
    side: Arc<Side>,
    started: Instant,
    kill_at: Duration,
) -> Result<FailoverOutcome, LabError> {
    tokio::time::sleep_until((started + kill_at).into()).await;
    let killed_port = tokio::task::spawn_blocking(move || {
        let mut deploy = deploy
            .lock()
            .map_err(|_| LabError::Measure("deployment lock poisoned".into()))?;
        deploy.kill_primary()
    })
    .await
    .map_err(|e| LabError::Measure(format!("kill: {e}")))??;
    // Timed from the SIGKILL (after finding the primary, which takes a redis-cli call); probed
    // past the end of the load if need be, up to PROBE_LIMIT.
    let killed = Instant::now();
    let mut l2_back = None;
    while killed.elapsed() < PROBE_LIMIT {
        if side.probe_pass().await == PROBES {
            l2_back = Some(killed.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(FailoverOutcome {
        killed_port,
        l2_back,
    })
}

/// The probe and version-check clients of one strategy.
enum Side {
    Naive(Vec<Conn>),
    Herdwise {
        /// L1 off: every read is an L2 read.
        probe: Cache<u64, Vec<u8>>,
        /// With L1 (the defaults), one per instance.
        versioned: Vec<Cache<u64, u64>>,
    },
}

impl Side {
    async fn naive(deploy: &Deployment, instances: usize) -> Result<Self, LabError> {
        let mut conns = Vec::new();
        for _ in 0..instances {
            conns.push(deploy.connection().await?);
        }
        Ok(Side::Naive(conns))
    }

    async fn herdwise(url: &str, instances: usize) -> Result<Self, LabError> {
        let probe = Cache::builder("lab")
            .store(RedisStore::connect(url).await?)
            .ttl(Duration::from_secs(600))
            .l1_max_bytes(0)
            .no_hot_key_shield()
            .build()?;
        let mut versioned = Vec::new();
        for _ in 0..instances {
            versioned.push(
                Cache::builder("lab-versions")
                    .store(RedisStore::connect(url).await?)
                    .ttl(Duration::from_secs(600))
                    .build()?,
            );
        }
        Ok(Side::Herdwise { probe, versioned })
    }

    fn probe_key(i: u64) -> u64 {
        KEYS + 1 + i
    }

    async fn write_probes(&self, origin: &Origin) -> Result<(), LabError> {
        for i in 0..PROBES {
            let key = Self::probe_key(i);
            let value = origin.value_of(key);
            match self {
                Side::Naive(conns) => {
                    let mut conn = conns[0].clone();
                    let () = redis::cmd("SET")
                        .arg(format!("naive:{key}"))
                        .arg(value)
                        .arg("EX")
                        .arg(600)
                        .query_async(&mut conn)
                        .await?;
                }
                Side::Herdwise { probe, .. } => {
                    probe.set(&key, value).await?;
                }
            }
        }
        Ok(())
    }

    /// How many probe keys read from L2 in one pass.
    async fn probe_pass(&self) -> u64 {
        let mut hits = 0;
        for i in 0..PROBES {
            let key = Self::probe_key(i);
            let hit = match self {
                Side::Naive(conns) => {
                    let mut conn = conns[0].clone();
                    let got: Result<Option<Vec<u8>>, _> = redis::cmd("GET")
                        .arg(format!("naive:{key}"))
                        .query_async(&mut conn)
                        .await;
                    matches!(got, Ok(Some(_)))
                }
                Side::Herdwise { probe, .. } => matches!(probe.get(&key).await, Ok(Some(_))),
            };
            hits += u64::from(hit);
        }
        hits
    }

    /// Reads versioned key `key` through instance `instance` (cache-aside on a miss): the
    /// version, and whether the cache flagged it stale.
    async fn read_version(
        &self,
        instance: usize,
        key: u64,
        versions: &Versions,
    ) -> Result<(u64, bool), String> {
        match self {
            Side::Naive(conns) => {
                let mut conn = conns[instance % conns.len()].clone();
                let redis_key = format!("naive-v:{key}");
                let cached: Result<Option<u64>, _> = redis::cmd("GET")
                    .arg(&redis_key)
                    .query_async(&mut conn)
                    .await;
                let version = match cached {
                    Ok(Some(v)) => v,
                    Ok(None) => {
                        let v = versions.read(key).await;
                        let _: Result<(), _> = redis::cmd("SET")
                            .arg(&redis_key)
                            .arg(v)
                            .arg("EX")
                            .arg(600)
                            .query_async(&mut conn)
                            .await;
                        v
                    }
                    Err(_) => versions.read(key).await,
                };
                Ok((version, false))
            }
            Side::Herdwise { versioned, .. } => {
                let cache = &versioned[instance % versioned.len()];
                let got = cache
                    .get_or_load_with(&key, &LoadOptions::default(), |k| async move {
                        Ok::<_, std::io::Error>(Some(versions.read(*k).await))
                    })
                    .await
                    .map_err(|e| e.to_string())?;
                let value = got.value.ok_or_else(|| "no value".to_string())?;
                Ok((*value, got.stale))
            }
        }
    }

    /// After the origin write of `key`: makes the cache consistent with it.
    async fn invalidate(&self, instance: usize, key: u64) {
        match self {
            Side::Naive(conns) => {
                let mut conn = conns[instance % conns.len()].clone();
                let _: Result<i64, _> = redis::cmd("DEL")
                    .arg(format!("naive-v:{key}"))
                    .query_async(&mut conn)
                    .await;
            }
            Side::Herdwise { versioned, .. } => {
                let cache = &versioned[instance % versioned.len()];
                let _ = cache
                    .write_around(&key, || async { Ok::<_, std::io::Error>(()) })
                    .await;
            }
        }
    }
}

/// The versioned origin of the version check: a version per key, and when each version was
/// superseded by a completed write (origin and invalidation).
struct Versions {
    current: Vec<AtomicU64>,
    superseded: Vec<Lock<Vec<Instant>>>,
    committed: Vec<AtomicU64>,
}

impl Versions {
    fn new() -> Self {
        Versions {
            current: (0..VERSIONED).map(|_| AtomicU64::new(0)).collect(),
            superseded: (0..VERSIONED).map(|_| Lock::new(Vec::new())).collect(),
            committed: (0..VERSIONED).map(|_| AtomicU64::new(0)).collect(),
        }
    }

    async fn read(&self, key: u64) -> u64 {
        let v = self.current[key as usize].load(Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(1)).await;
        v
    }

    fn write(&self, key: u64) -> u64 {
        self.current[key as usize].fetch_add(1, Ordering::SeqCst) + 1
    }

    fn completed(&self, key: u64, version: u64) {
        let mut superseded = self.superseded[key as usize].lock();
        while superseded.len() < version as usize {
            superseded.push(Instant::now());
        }
        self.committed[key as usize].fetch_max(version, Ordering::SeqCst);
    }

    /// How long `got` had been superseded when a read that began at `started`, with `floor`
    /// committed, returned it: `Some` only beyond the bound.
    fn stale(&self, key: u64, got: u64, floor: u64, started: Instant) -> Option<Duration> {
        if got >= floor {
            return None;
        }
        self.superseded[key as usize]
            .lock()
            .get(got as usize)
            .map(|at| started.saturating_duration_since(*at))
            .filter(|age| *age > STALE_BOUND)
    }
}

/// The version check's counts.
#[derive(Default)]
struct StaleCounts {
    reads: u64,
    stale: u64,
    stale_after_kill: u64,
    /// Stale reads the cache flagged stale (`Fetched::stale`: served from L1 while L2 could
    /// not be asked, say).
    stale_flagged: u64,
    /// The stalest read: how long its value had been superseded.
    stalest: Duration,
    /// The last stale read, from the start of the run.
    last_stale: Duration,
    failed: u64,
}

/// Runs the version check's writer and readers until the run ends; their counts.
fn spawn_version_check(
    side: Arc<Side>,
    versions: Arc<Versions>,
    started: Instant,
    duration: Duration,
    kill_at: Duration,
) -> impl std::future::Future<Output = StaleCounts> {
    let deadline = started + duration;
    let counts = Arc::new(Lock::new(StaleCounts::default()));
    let mut tasks = Vec::new();
    {
        let (side, versions) = (side.clone(), versions.clone());
        tasks.push(tokio::spawn(async move {
            let mut n = 0u64;
            while Instant::now() < deadline {
                let key = n.wrapping_mul(0x9e37_79b9_7f4a_7c15) % VERSIONED;
                let version = versions.write(key);
                side.invalidate(n as usize, key).await;
                versions.completed(key, version);
                n += 1;
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }));
    }
    for reader in 0..VERSION_READERS {
        let (side, versions, counts) = (side.clone(), versions.clone(), counts.clone());
        tasks.push(tokio::spawn(async move {
            let mut n = reader as u64;
            while Instant::now() < deadline {
                let key = n.wrapping_mul(0x2545_f491_4f6c_dd1d) % VERSIONED;
                n += 1;
                let floor = versions.committed[key as usize].load(Ordering::SeqCst);
                let at = Instant::now();
                let got = side.read_version(reader, key, &versions).await;
                {
                    let mut c = counts.lock();
                    match got {
                        Ok((v, flagged)) => {
                            c.reads += 1;
                            if let Some(age) = versions.stale(key, v, floor, at) {
                                c.stale += 1;
                                c.stale_flagged += u64::from(flagged);
                                c.stale_after_kill += u64::from(at >= started + kill_at);
                                c.stalest = c.stalest.max(age);
                                c.last_stale = c.last_stale.max(at - started);
                            }
                        }
                        Err(_) => c.failed += 1,
                    }
                }
                // About 2k checked reads a second in all: the check must not become the load.
                tokio::time::sleep(Duration::from_millis(4)).await;
            }
        }));
    }
    async move {
        for task in tasks {
            let _ = task.await;
        }
        std::mem::take(&mut *counts.lock())
    }
}

/// Adds the failover figures to a strategy's result.
fn summarize(
    r: &mut StrategyResult,
    kill_at: Duration,
    outcome: &FailoverOutcome,
    stale: &StaleCounts,
) {
    let kill = kill_at.as_secs();
    let before: Vec<_> = r.timeline.iter().filter(|p| p.second < kill).collect();
    let after: Vec<_> = r.timeline.iter().filter(|p| p.second >= kill).collect();
    // The first second warms up the instances' L1: the steady rate is taken after it.
    let steady: Vec<_> = before.iter().filter(|p| p.second >= 1).collect();
    let steady_origin =
        steady.iter().map(|p| p.origin_queries).sum::<u64>() as f64 / steady.len().max(1) as f64;
    let first_after: Vec<_> = after.iter().take(5).collect();
    let origin_after = first_after.iter().map(|p| p.origin_queries).sum::<u64>() as f64
        / first_after.len().max(1) as f64;
    let peak_after = after.iter().map(|p| p.origin_queries).max().unwrap_or(0) as f64;
    let extra = &mut r.extra;
    extra.insert(
        "failed_reads_before_kill".into(),
        before.iter().map(|p| p.errors).sum::<u64>() as f64,
    );
    extra.insert(
        "failed_reads_after_kill".into(),
        after.iter().map(|p| p.errors).sum::<u64>() as f64,
    );
    extra.insert(
        "slowest_read_after_kill_ms".into(),
        after.iter().map(|p| p.max_us).max().unwrap_or(0) as f64 / 1000.0,
    );
    extra.insert("origin_qps_steady".into(), steady_origin);
    extra.insert("origin_qps_5s_after_kill".into(), origin_after);
    extra.insert(
        "origin_vs_steady_5s_after_kill".into(),
        ratio(origin_after, steady_origin),
    );
    extra.insert(
        "origin_peak_second_vs_steady_after_kill".into(),
        ratio(peak_after, steady_origin),
    );
    extra.insert(
        "l2_hits_back_after_kill_s".into(),
        outcome.l2_back.map_or(-1.0, |d| d.as_secs_f64()),
    );
    extra.insert("versioned_reads".into(), stale.reads as f64);
    extra.insert("versioned_reads_failed".into(), stale.failed as f64);
    extra.insert("stale_reads".into(), stale.stale as f64);
    extra.insert(
        "stale_reads_after_kill".into(),
        stale.stale_after_kill as f64,
    );
    extra.insert(
        "stale_reads_flagged_stale".into(),
        stale.stale_flagged as f64,
    );
    extra.insert(
        "stalest_read_age_ms".into(),
        stale.stalest.as_secs_f64() * 1000.0,
    );
    extra.insert(
        "last_stale_read_after_kill_s".into(),
        if stale.stale_after_kill > 0 {
            stale.last_stale.as_secs_f64() - kill_at.as_secs_f64()
        } else {
            0.0
        },
    );
}
