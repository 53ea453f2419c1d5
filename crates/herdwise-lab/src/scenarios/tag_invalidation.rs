//! `tag-invalidation`: make 10k entries carrying one tag unreadable, while other clients read the
//! same Redis.
//!
//! - `naive`: the seeds' tagged cache. Each write also `SADD`s the key to a per-tag set; the
//!   invalidation reads the set and `DEL`s the keys one by one (a round trip each).
//! - `tag-index-lua`: the same index, removed by one Lua script (one round trip, but Redis runs
//!   the whole deletion while every other client waits).
//! - `herdwise`: `invalidate_tag`, one script that bumps the tag clock; nothing is deleted, and
//!   entries stamped before the mark are unreadable on every instance. Instance A invalidates;
//!   instance B had every entry in its L1 and must stop serving them.
//!
//! Reported: how long the invalidation took, its round trips, the other clients' worst read
//! meanwhile, and how many entries were still served afterwards. For Herdwise also the price on
//! the read side: an L2 read of a tagged entry against an untagged one (L1 off).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use herdwise::{Cache, RedisStore, WriteOptions};
use herdwise_testkit::RedisServer;
use redis::aio::ConnectionManager;
use serde_json::json;

use super::compare;
use crate::bystanders::Bystanders;
use crate::record::Recorder;
use crate::report::{ScenarioResult, StrategyResult};
use crate::{LabError, Settings};

const TAG: &str = "category:shoes";
const BYSTANDERS: usize = 8;
/// A value of about 100 bytes.
const VALUE: &str =
    "a product of about one hundred bytes, as a catalogue would cache it: name, price, stock, etc";

/// What one strategy's invalidation did.
struct Outcome {
    took: Duration,
    round_trips: u64,
    /// Entries still readable afterwards (by every reader the strategy has).
    still_served: u64,
    /// The bystanders' reads during the invalidation.
    bystanders: Recorder,
    extra: BTreeMap<String, f64>,
}

/// Runs the scenario.
pub async fn run(settings: &Settings) -> Result<ScenarioResult, LabError> {
    let entries: u64 = if settings.quick { 2_000 } else { 10_000 };
    let mut strategies = Vec::new();
    for name in ["naive", "tag-index-lua", "herdwise"] {
        let server = RedisServer::start()?;
        let url = server.url();
        let mut admin = ConnectionManager::new(redis::Client::open(url.as_str())?).await?;
        Bystanders::seed(&mut admin).await?;
        let bar =
            settings.progress_bar(&format!("tag-invalidation {name}"), Duration::from_secs(5));
        let outcome = match name {
            "herdwise" => herdwise(&url, &mut admin, entries).await?,
            lua => index(&url, &mut admin, entries, lua == "tag-index-lua").await?,
        };
        bar.finish_and_clear();
        // The bystanders' reads are the latency columns.
        let mut result = StrategyResult {
            name: name.into(),
            reads: outcome.bystanders.reads(),
            reads_per_sec: outcome.bystanders.reads() as f64 / (outcome.took.as_secs_f64() + 0.6),
            errors: outcome.bystanders.errors(),
            latency_us: Some(outcome.bystanders.latency()),
            extra: outcome.extra,
            ..Default::default()
        };
        result.extra.insert(
            "bystander_max_read_ms".into(),
            outcome.bystanders.latency().max as f64 / 1000.0,
        );
        result.extra.insert(
            "invalidation_ms".into(),
            outcome.took.as_secs_f64() * 1000.0,
        );
        result
            .extra
            .insert("round_trips".into(), outcome.round_trips as f64);
        result
            .extra
            .insert("entries_still_served".into(), outcome.still_served as f64);
        strategies.push(result);
    }
    let mut ratios = BTreeMap::new();
    compare(
        &mut ratios,
        &strategies,
        ("herdwise", "naive"),
        "invalidation time",
        |r| r.extra.get("invalidation_ms").copied().unwrap_or(0.0),
    );
    compare(
        &mut ratios,
        &strategies,
        ("herdwise", "tag-index-lua"),
        "bystander worst read",
        |r| r.extra.get("bystander_max_read_ms").copied().unwrap_or(0.0),
    );
    Ok(ScenarioResult {
        name: "tag-invalidation".into(),
        description: format!(
            "make {entries} entries tagged {TAG:?} unreadable while {BYSTANDERS} other clients read the same Redis"
        ),
        params: BTreeMap::from([
            ("entries".into(), json!(entries)),
            ("bystanders".into(), json!(BYSTANDERS)),
        ]),
        strategies,
        ratios,
        events: Vec::new(),
    })
}

/// Runs `invalidate` while the bystanders read: how long it took, and their reads.
async fn with_bystanders<F: std::future::Future<Output = Result<(), LabError>>>(
    url: &str,
    invalidate: F,
) -> Result<(Duration, Recorder), LabError> {
    let bystanders = Bystanders::start(url, BYSTANDERS).await?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let t = Instant::now();
    invalidate.await?;
    let took = t.elapsed();
    tokio::time::sleep(Duration::from_millis(300)).await;
    Ok((took, bystanders.finish().await))
}

/// The seeds' tag index: a set per tag, removed key by key (`naive`) or by one script.
async fn index(
    url: &str,
    admin: &mut ConnectionManager,
    entries: u64,
    scripted: bool,
) -> Result<Outcome, LabError> {
    let set = format!("tag:{TAG}");
    for chunk in (0..entries).collect::<Vec<_>>().chunks(1_000) {
        let mut pipe = redis::pipe();
        for i in chunk {
            let key = format!("naive:product:{i}");
            pipe.cmd("SET")
                .arg(&key)
                .arg(VALUE)
                .arg("EX")
                .arg(300)
                .ignore();
            pipe.cmd("SADD").arg(&set).arg(&key).ignore();
        }
        pipe.cmd("EXPIRE").arg(&set).arg(600).ignore();
        let () = pipe.query_async(admin).await?;
    }
    let mut conn = admin.clone();
    let (took, bystanders) = with_bystanders(url, async {
        if scripted {
            let script = redis::Script::new(
                r"local keys = redis.call('SMEMBERS', KEYS[1])
                  for _, k in ipairs(keys) do redis.call('UNLINK', k) end
                  redis.call('DEL', KEYS[1])
                  return #keys",
            );
            let _: u64 = script.key(&set).invoke_async(&mut conn).await?;
        } else {
            let keys: Vec<String> = redis::cmd("SMEMBERS")
                .arg(&set)
                .query_async(&mut conn)
                .await?;
            for key in &keys {
                let _: u64 = redis::cmd("DEL").arg(key).query_async(&mut conn).await?;
            }
            let _: u64 = redis::cmd("DEL").arg(&set).query_async(&mut conn).await?;
        }
        Ok(())
    })
    .await?;
    let mut still_served = 0;
    for i in 0..entries {
        let exists: bool = redis::cmd("EXISTS")
            .arg(format!("naive:product:{i}"))
            .query_async(admin)
            .await?;
        still_served += u64::from(exists);
    }
    Ok(Outcome {
        took,
        round_trips: if scripted { 1 } else { entries + 2 },
        still_served,
        bystanders,
        extra: BTreeMap::new(),
    })
}

async fn herdwise(
    url: &str,
    admin: &mut ConnectionManager,
    entries: u64,
) -> Result<Outcome, LabError> {
    let build = |l1: bool| async move {
        let builder =
            Cache::<u64, String>::builder("products").store(RedisStore::connect(url).await?);
        let builder = if l1 {
            builder
        } else {
            builder.l1_max_bytes(0).no_hot_key_shield()
        };
        Ok::<_, LabError>(builder.build()?)
    };
    let (a, b, no_l1) = (build(true).await?, build(true).await?, build(false).await?);
    // Every instance listening before anything is written.
    for cache in [&a, &b, &no_l1] {
        cache.get(&u64::MAX).await?;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let tagged = WriteOptions::default().tags([TAG]);
    for i in 0..entries {
        a.set_with(&i, VALUE.to_string(), &tagged).await?;
        a.set(&(entries + i), VALUE.to_string()).await?;
    }
    let mut extra = BTreeMap::new();
    // The read-side price of tags: L2 reads of tagged entries against untagged ones.
    for (label, range) in [
        ("l2_read_tagged_us", 0..entries),
        ("l2_read_untagged_us", entries..2 * entries),
    ] {
        let t = Instant::now();
        for i in range {
            no_l1.get(&i).await?;
        }
        extra.insert(
            label.into(),
            t.elapsed().as_secs_f64() * 1e6 / entries as f64,
        );
    }
    for i in 0..entries {
        b.get(&i).await?;
    }
    a.invalidate_tag("warm-up").await?; // loads the script: not part of the measure
    let (took, bystanders) = with_bystanders(url, async {
        a.invalidate_tag(TAG).await?;
        Ok(())
    })
    .await?;
    // How long until B, which held every entry in L1, stops serving them.
    let t = Instant::now();
    while b.get(&0).await?.is_some() && t.elapsed() < Duration::from_secs(5) {
        tokio::time::sleep(Duration::from_micros(200)).await;
    }
    extra.insert(
        "other_instance_stops_ms".into(),
        t.elapsed().as_secs_f64() * 1000.0,
    );
    let mut still_served = 0;
    for cache in [&a, &b, &no_l1] {
        for i in 0..entries {
            still_served += u64::from(cache.get(&i).await?.is_some());
        }
    }
    // The round trips, counted apart (`MONITOR` would slow the bystanders above): the same
    // invalidation again, every command naming the tag.
    let ((), round_trips) = crate::round_trips_naming(url, admin, TAG, async {
        a.invalidate_tag(TAG).await?;
        Ok(())
    })
    .await?;
    Ok(Outcome {
        took,
        round_trips,
        still_served,
        bystanders,
        extra,
    })
}
