//! The `Store` contract, checked on both implementations: Redis (real server) and the embedded
//! memory store.

mod common;

use std::time::Duration;

use bytes::Bytes;
use herdwise::store::StoreEvent;
use herdwise::{MemoryStore, SetOutcome, Store};

use common::contract::{contract, envelope_with_version, lease_contract, publish_contract};

#[tokio::test]
async fn redis_store_meets_the_contract() {
    let server = common::redis();
    let store = common::store(&server).await;
    contract(&store).await;
    lease_contract(&store).await;
    publish_contract(&store).await;
}

#[tokio::test]
async fn memory_store_meets_the_contract() {
    let store = MemoryStore::new();
    contract(&store).await;
    lease_contract(&store).await;
    publish_contract(&store).await;
}

async fn next(events: &mut tokio::sync::broadcast::Receiver<StoreEvent>) -> StoreEvent {
    tokio::time::timeout(Duration::from_secs(10), events.recv())
        .await
        .expect("an event within 10 s")
        .expect("the channel is open")
}

#[tokio::test]
async fn redis_subscription_resubscribes_after_a_restart() {
    let mut server = common::redis();
    let store = common::store(&server).await;
    let mut events = store.subscribe("ch").unwrap();
    assert_eq!(next(&mut events).await, StoreEvent::Subscribed);
    server.kill();
    assert_eq!(
        next(&mut events).await,
        StoreEvent::Lost,
        "announces the loss"
    );
    server.restart().unwrap();
    assert_eq!(
        next(&mut events).await,
        StoreEvent::Subscribed,
        "announces the resubscription"
    );
    let mut raw = common::raw(&server).await;
    let _: i64 = redis::cmd("PUBLISH")
        .arg("ch")
        .arg("hello")
        .query_async(&mut raw)
        .await
        .unwrap();
    assert_eq!(
        next(&mut events).await,
        StoreEvent::Message(Bytes::from_static(b"hello"))
    );
}

#[tokio::test]
async fn redis_versioned_set_survives_script_flush() {
    let server = common::redis();
    let store = common::store(&server).await;
    let ttl = Duration::from_secs(30);
    store
        .set_if_not_older("k", envelope_with_version(2, b"a"), ttl, 2)
        .await
        .unwrap();
    // The server forgets the script (as after a restart); EVALSHA gets NOSCRIPT and reloads.
    let mut raw = common::raw(&server).await;
    let () = redis::cmd("SCRIPT")
        .arg("FLUSH")
        .query_async(&mut raw)
        .await
        .unwrap();
    assert_eq!(
        store
            .set_if_not_older("k", envelope_with_version(1, b"b"), ttl, 1)
            .await
            .unwrap(),
        SetOutcome::RefusedOlder
    );
    let sets: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(&mut raw)
        .await
        .unwrap();
    assert!(
        sets.contains("cmdstat_evalsha"),
        "the script must be run by EVALSHA: {sets}"
    );
}

#[tokio::test]
async fn memory_store_stays_within_its_byte_bound() {
    let store = MemoryStore::with_max_bytes(1 << 20);
    for i in 0..500 {
        store
            .set(
                &format!("k{i}"),
                Bytes::from(vec![0u8; 20_000]),
                Duration::from_secs(60),
            )
            .await
            .unwrap();
        assert!(store.used_bytes() <= 1 << 20);
    }
}
