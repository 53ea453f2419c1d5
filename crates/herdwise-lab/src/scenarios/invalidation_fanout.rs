//! `invalidation-fanout`: how long until an invalidation on one instance stops the *other*
//! instances from serving the old value out of their L1. With the backplane: the time of one
//! pub/sub hop. Without it (`herdwise-no-backplane`, or any local cache without events): not
//! until the L1 TTL cap (60 s) — counted here as "still stale after 250 ms".

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use herdwise::{Cache, RedisStore};
use herdwise_testkit::RedisServer;
use serde_json::json;

use crate::record::Latency;
use crate::report::{ScenarioResult, StrategyResult};
use crate::{LabError, Settings};

/// How long to watch for an instance to stop serving the old value (100 ms is the goal).
const GIVE_UP: Duration = Duration::from_millis(250);
/// Rounds for the strategy without a backplane: each one waits out the give-up time.
const ROUNDS_WITHOUT_EVENTS: u64 = 10;

#[derive(Debug, thiserror::Error)]
#[error("unreachable")]
struct Never;

/// Runs the scenario.
pub async fn run(settings: &Settings) -> Result<ScenarioResult, LabError> {
    let instances = settings.instances_or(3).max(2);
    let rounds: u64 = if settings.quick { 50 } else { 200 };
    let mut strategies = Vec::new();
    for name in ["herdwise", "herdwise-no-backplane"] {
        let server = RedisServer::start()?;
        let mut caches: Vec<Cache<u64, u64>> = Vec::new();
        for _ in 0..instances {
            let builder = Cache::builder("fanout").store(RedisStore::connect(&server.url()).await?);
            let builder = if name.ends_with("no-backplane") {
                builder.no_backplane()
            } else {
                builder
            };
            caches.push(builder.build()?);
        }
        let bar = settings.progress_bar(
            &format!("invalidation-fanout {name}"),
            Duration::from_secs(3),
        );
        let mut took = Histogram::<u64>::new_with_bounds(1, 10_000_000, 3)
            .map_err(|e| LabError::Usage(e.to_string()))?;
        let mut still_stale = 0u64;
        let rounds = if name.ends_with("no-backplane") {
            rounds.min(ROUNDS_WITHOUT_EVENTS)
        } else {
            rounds
        };
        for round in 0..rounds {
            for cache in &caches {
                cache
                    .get_or_load(&round, |k| async move { Ok::<_, Never>(Some(*k)) })
                    .await?;
            }
            if round == 0 {
                // let every instance's subscription come up
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
            let t = Instant::now();
            caches[0].invalidate(&round).await?;
            for cache in &caches[1..] {
                loop {
                    if cache.get(&round).await?.is_none() {
                        let _ = took.record((t.elapsed().as_micros() as u64).max(1));
                        break;
                    }
                    if t.elapsed() > GIVE_UP {
                        still_stale += 1;
                        break;
                    }
                    tokio::time::sleep(Duration::from_micros(200)).await;
                }
            }
        }
        bar.finish_and_clear();
        let observed = took.len();
        let mut result = StrategyResult {
            name: name.into(),
            reads: observed,
            latency_us: (observed > 0).then(|| Latency {
                p50: took.value_at_quantile(0.5),
                p99: took.value_at_quantile(0.99),
                p999: took.value_at_quantile(0.999),
                max: took.max(),
            }),
            ..Default::default()
        };
        result
            .extra
            .insert("invalidations_seen".into(), observed as f64);
        result
            .extra
            .insert("still_stale_after_250ms".into(), still_stale as f64);
        strategies.push(result);
    }
    Ok(ScenarioResult {
        name: "invalidation-fanout".into(),
        description: format!(
            "{rounds} invalidations on instance 1 of {instances}; p50/p99 columns: time until each other instance stopped serving the old value from L1"
        ),
        params: BTreeMap::from([
            ("instances".into(), json!(instances)),
            ("rounds".into(), json!(rounds)),
        ]),
        strategies,
        ratios: BTreeMap::new(),
        events: Vec::new(),
    })
}
