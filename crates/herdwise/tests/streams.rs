//! The Redis Streams backplane: events are stored, so an instance that loses its connection for
//! a moment resumes where it stopped and keeps its L1; if the events it missed are gone (trimmed,
//! or lost with Redis' data), it notices and clears its L1.

mod common;

use std::time::Duration;

use common::{counter, OriginError};
use herdwise::{metrics as m, BackplaneTransport, Cache, CacheBuilder, WriteOptions};

const STREAM: &str = "herdwise:{ns:st}:events";

fn builder(store: herdwise::RedisStore) -> CacheBuilder<u64, String> {
    Cache::builder("st")
        .store(store)
        .backplane_transport(BackplaneTransport::Streams { max_len: 1_000 })
}

async fn load(cache: &Cache<u64, String>, key: u64) {
    cache
        .get_or_load(&key, |k| {
            let v = format!("v{k}");
            async move { Ok::<_, OriginError>(Some(v)) }
        })
        .await
        .unwrap();
}

async fn served(cache: &Cache<u64, String>, key: u64) -> bool {
    cache.get(&key).await.unwrap().is_some()
}

/// Kills the connections that read the event stream (and nothing else).
async fn kill_stream_readers(raw: &mut redis::aio::MultiplexedConnection) -> usize {
    let list: String = redis::cmd("CLIENT")
        .arg("LIST")
        .query_async(raw)
        .await
        .unwrap();
    let ids: Vec<String> = list
        .lines()
        .filter(|l| l.contains("name=herdwise-events"))
        .filter_map(|l| l.split_whitespace().next())
        .filter_map(|f| f.strip_prefix("id="))
        .map(str::to_string)
        .collect();
    for id in &ids {
        let _: i64 = redis::cmd("CLIENT")
            .arg("KILL")
            .arg("ID")
            .arg(id)
            .query_async(raw)
            .await
            .unwrap();
    }
    ids.len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalidations_and_tags_travel_on_the_stream() {
    let server = common::redis();
    let a = builder(common::store(&server).await).build().unwrap();
    let b = builder(common::store(&server).await).build().unwrap();
    load(&a, 1).await;
    load(&b, 1).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    a.invalidate(&1).await.unwrap();
    assert!(
        common::eventually(Duration::from_secs(2), async || !served(&b, 1).await).await,
        "B must drop the key the stream told it about"
    );
    let shoes = WriteOptions::default().tags(["shoes"]);
    a.set_with(&2, "boot".to_string(), &shoes).await.unwrap();
    assert!(served(&b, 2).await);
    a.invalidate_tag("shoes").await.unwrap();
    assert!(common::eventually(Duration::from_secs(2), async || !served(&b, 2).await).await);
    let mut raw = common::raw(&server).await;
    let len: u64 = redis::cmd("XLEN")
        .arg(STREAM)
        .query_async(&mut raw)
        .await
        .unwrap();
    assert!(
        len >= 3,
        "write, invalidation and tag events are stored ({len})"
    );
}

/// Instances A and B (with metrics), both with keys 1..=20 in L1 and listening.
async fn two_loaded(
    server: &herdwise_testkit::RedisServer,
) -> (Cache<u64, String>, Cache<u64, String>, common::Metrics) {
    let a = builder(common::store(server).await).build().unwrap();
    let store = common::store(server).await;
    let (b, metrics) = common::with_metrics(|| builder(store.clone()));
    for key in 1..=20 {
        load(&a, key).await;
        load(&b, key).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(b.l1_len(), 20);
    (a, b, metrics)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_brief_disconnect_resumes_from_the_stream_and_keeps_l1() {
    let server = common::redis();
    let (a, b, metrics) = two_loaded(&server).await;
    let mut raw = common::raw(&server).await;
    assert_eq!(kill_stream_readers(&mut raw).await, 2);
    // Published while B's reader is disconnected (it reconnects after 50 ms).
    a.invalidate(&1).await.unwrap();
    assert!(
        common::eventually(Duration::from_secs(3), async || !served(&b, 1).await).await,
        "B must read the event it missed once it reconnects"
    );
    assert_eq!(b.l1_len(), 19, "the rest of B's L1 is kept");
    assert_eq!(counter(&metrics, m::BACKPLANE_RESETS, &[]), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_trimmed_while_disconnected_make_l1_recheck() {
    let server = common::redis();
    let (a, b, metrics) = two_loaded(&server).await;
    let mut raw = common::raw(&server).await;
    kill_stream_readers(&mut raw).await;
    a.invalidate(&1).await.unwrap();
    // Everything B has not read is gone before it is back.
    let _: u64 = redis::cmd("XTRIM")
        .arg(STREAM)
        .arg("MAXLEN")
        .arg(0)
        .query_async(&mut raw)
        .await
        .unwrap();
    assert!(
        common::eventually(Duration::from_secs(3), async || {
            counter(&metrics, m::BACKPLANE_RESETS, &[("reason", "resubscribed")]) >= 1
        })
        .await,
        "B cannot know what it missed: it must notice"
    );
    assert!(
        !served(&b, 1).await,
        "and check its L1 against L2 before serving from it"
    );
    assert!(served(&b, 2).await, "keys L2 still has keep being served");
}
