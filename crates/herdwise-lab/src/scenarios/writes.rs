//! `writes`: what a write costs. One task writes keys one after another (a round trip's latency,
//! not throughput) through Herdwise's `set` and `invalidate` — with the backplane on and a
//! second instance listening, so every write announces itself — against plain `SET … PX` and
//! `DEL` on the same server; the plain `SET` is measured before and after Herdwise, and the
//! ratios are taken against the mean of the two. Redis commands per write come from
//! `INFO commandstats` (commands inside `MULTI` or a script count one each).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use herdwise::{Cache, RedisStore};
use serde_json::json;

use super::ratio;
use crate::deploy::{Conn, Deployment};
use crate::record::Recorder;
use crate::report::{ScenarioResult, StrategyResult};
use crate::{LabError, Settings};

const KEYS: u64 = 1_000;
const VALUE_BYTES: usize = 100;

/// What one strategy does per write.
enum Op<'a> {
    RawSet(&'a Conn),
    RawDel(&'a Conn),
    /// What Herdwise's `set` sends, from plain redis-rs: the server's share of its cost.
    RawTransaction(&'a Conn),
    Set(&'a Cache<u64, Vec<u8>>),
    Invalidate(&'a Cache<u64, Vec<u8>>),
}

/// Runs `op` on keys 0, 1, 2, … for `duration`, `tasks` at a time; the recorder and the Redis
/// commands it took.
async fn drive(
    server: &Deployment,
    op: Op<'_>,
    tasks: usize,
    duration: Duration,
) -> Result<(Recorder, u64), LabError> {
    let value = Arc::new(vec![7u8; VALUE_BYTES]);
    let before = server.command_calls(None).await?;
    let started = Instant::now();
    let seconds = duration.as_secs() as usize + 2;
    let op = &op;
    let runs = (0..tasks).map(|t| {
        let value = value.clone();
        async move {
            let mut recorder = Recorder::new(started, seconds);
            let mut k = t as u64;
            while started.elapsed() < duration {
                let key = k % KEYS;
                k += tasks as u64;
                let began = Instant::now();
                let ok = match op {
                    Op::RawSet(conn) => {
                        let mut conn = (*conn).clone();
                        redis::cmd("SET")
                            .arg(format!("raw:{key}"))
                            .arg(value.as_slice())
                            .arg("PX")
                            .arg(3_600_000)
                            .query_async::<()>(&mut conn)
                            .await
                            .is_ok()
                    }
                    Op::RawDel(conn) => {
                        let mut conn = (*conn).clone();
                        redis::cmd("DEL")
                            .arg(format!("raw:{key}"))
                            .query_async::<i64>(&mut conn)
                            .await
                            .is_ok()
                    }
                    Op::RawTransaction(conn) => {
                        let mut conn = (*conn).clone();
                        let name = format!("raw:{key}");
                        redis::pipe()
                            .atomic()
                            .cmd("SET")
                            .arg(&name)
                            .arg(value.as_slice())
                            .arg("PX")
                            .arg(3_600_000)
                            .ignore()
                            .cmd("UNLINK")
                            .arg(format!("{{{name}}}:lease"))
                            .arg(format!("{{{name}}}:fence"))
                            .ignore()
                            .cmd("PUBLISH")
                            .arg("raw:events")
                            .arg(format!("0|1@0|k|{name}"))
                            .ignore()
                            .query_async::<()>(&mut conn)
                            .await
                            .is_ok()
                    }
                    Op::Set(cache) => cache.set(&key, value.clone()).await.is_ok(),
                    Op::Invalidate(cache) => cache.invalidate(&key).await.is_ok(),
                };
                recorder.record(began.elapsed(), ok);
            }
            recorder
        }
    });
    let recorders = futures::future::join_all(runs).await;
    let mut total = Recorder::new(started, seconds);
    for r in &recorders {
        total.merge(r);
    }
    let after = server.command_calls(None).await?;
    Ok((total, after.saturating_sub(before)))
}

/// Runs the scenario.
pub async fn run(settings: &Settings) -> Result<ScenarioResult, LabError> {
    let tasks = settings.concurrency_or(1);
    let duration = settings.duration_or(Duration::from_secs(3), Duration::from_secs(1));
    let server = Deployment::start(settings.topology)?;
    let url = server.url();
    let raw = server.connection().await?;
    let writer: Cache<u64, Vec<u8>> = Cache::builder("writes")
        .store(RedisStore::connect(&url).await?)
        .ttl(Duration::from_secs(3600))
        .build()?;
    // Another instance of the namespace, listening: every write's event has a receiver.
    let listener: Cache<u64, Vec<u8>> = Cache::builder("writes")
        .store(RedisStore::connect(&url).await?)
        .ttl(Duration::from_secs(3600))
        .build()?;
    // First uses: generation read, listeners subscribed, scripts loaded.
    let _ = listener.get(&0).await;
    writer.set(&0, vec![0u8; VALUE_BYTES]).await?;
    writer.invalidate(&0).await?;
    tokio::time::sleep(Duration::from_millis(300)).await;

    let bar = settings.progress_bar("writes", duration * 6);
    let mut strategies = Vec::new();
    let plan: [(&str, Op<'_>); 6] = [
        ("SET (before)", Op::RawSet(&raw)),
        ("MULTI SET UNLINK PUBLISH EXEC", Op::RawTransaction(&raw)),
        ("herdwise set", Op::Set(&writer)),
        ("DEL", Op::RawDel(&raw)),
        ("herdwise invalidate", Op::Invalidate(&writer)),
        ("SET (after)", Op::RawSet(&raw)),
    ];
    for (name, op) in plan {
        let (recorder, commands) = drive(&server, op, tasks, duration).await?;
        let writes = recorder.reads();
        let mut result = StrategyResult {
            name: name.into(),
            reads: writes,
            errors: recorder.errors(),
            reads_per_sec: writes as f64 / duration.as_secs_f64(),
            latency_us: Some(recorder.latency()),
            ..Default::default()
        };
        result.extra.insert(
            "redis_commands_per_write".into(),
            commands as f64 / writes.max(1) as f64,
        );
        strategies.push(result);
    }
    bar.finish_and_clear();

    let p50 = |name: &str| {
        strategies
            .iter()
            .find(|s| s.name == name)
            .and_then(|s| s.latency_us)
            .map_or(0.0, |l| l.p50 as f64)
    };
    let set_baseline = (p50("SET (before)") + p50("SET (after)")) / 2.0;
    let ratios = BTreeMap::from([
        (
            "herdwise set / SET p50".to_string(),
            ratio(p50("herdwise set"), set_baseline),
        ),
        (
            "MULTI SET UNLINK PUBLISH EXEC / SET p50".to_string(),
            ratio(p50("MULTI SET UNLINK PUBLISH EXEC"), set_baseline),
        ),
        (
            "herdwise invalidate / DEL p50".to_string(),
            ratio(p50("herdwise invalidate"), p50("DEL")),
        ),
        (
            "herdwise invalidate / SET p50".to_string(),
            ratio(p50("herdwise invalidate"), set_baseline),
        ),
    ]);
    Ok(ScenarioResult {
        name: "writes".into(),
        description: format!(
            "{tasks} task(s) writing {VALUE_BYTES} B values one after another, backplane on, a \
             second instance listening"
        ),
        params: BTreeMap::from([
            ("tasks".into(), json!(tasks)),
            ("duration_s".into(), json!(duration.as_secs_f64())),
            ("keys".into(), json!(KEYS)),
        ]),
        strategies,
        ratios,
        events: Vec::new(),
    })
}
