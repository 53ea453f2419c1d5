//! The `Store` contract, shared by the tests of every implementation and topology.

use std::time::Duration;

use bytes::Bytes;
use herdwise::envelope::{self, Compression, Meta};
use herdwise::store::{FillOutcome, StoreEvent};
use herdwise::{SetOutcome, Store};

pub fn envelope_with_version(version: u64, payload: &[u8]) -> Bytes {
    let meta = Meta {
        created_at_ms: 1,
        fresh_until_ms: u64::MAX / 2,
        stale_until_ms: u64::MAX / 2,
        version,
        load_duration: Duration::ZERO,
        negative: false,
        stale_copy: false,
        codec_id: 1,
    };
    Bytes::from(envelope::encode(&meta, payload, Compression::None))
}

pub async fn contract(store: &dyn Store) {
    let ttl = Duration::from_secs(30);
    // get / set / delete
    assert_eq!(store.get("c:a").await.unwrap(), None);
    store
        .set("c:a", Bytes::from_static(b"1"), ttl)
        .await
        .unwrap();
    assert_eq!(store.get("c:a").await.unwrap().as_deref(), Some(&b"1"[..]));
    assert!(store.delete("c:a").await.unwrap());
    assert!(!store.delete("c:a").await.unwrap());
    assert_eq!(store.get("c:a").await.unwrap(), None);

    // multi-get keeps order and reports misses
    store
        .set("c:x", Bytes::from_static(b"x"), ttl)
        .await
        .unwrap();
    store
        .set("c:z", Bytes::from_static(b"z"), ttl)
        .await
        .unwrap();
    let got = store
        .get_many(&["c:x".into(), "c:y".into(), "c:z".into()])
        .await
        .unwrap();
    assert_eq!(
        got,
        vec![
            Some(Bytes::from_static(b"x")),
            None,
            Some(Bytes::from_static(b"z"))
        ]
    );
    assert!(store.get_many(&[]).await.unwrap().is_empty());

    // TTLs are honoured
    store
        .set(
            "c:short",
            Bytes::from_static(b"s"),
            Duration::from_millis(80),
        )
        .await
        .unwrap();
    assert!(store.get("c:short").await.unwrap().is_some());
    tokio::time::sleep(Duration::from_millis(150)).await;
    assert_eq!(store.get("c:short").await.unwrap(), None);

    // versioned sets: newer and equal replace, older is refused; versions above 2^32 and 2^53
    // compare exactly
    for (base, label) in [
        (5u64, "small"),
        ((1 << 40) + 5, "above 2^32"),
        ((1 << 60) + 5, "above 2^53"),
    ] {
        let key = format!("c:v:{label}");
        let put = |v: u64| {
            store.set_if_not_older(&key, envelope_with_version(v, label.as_bytes()), ttl, v)
        };
        assert_eq!(put(base).await.unwrap(), SetOutcome::Stored, "{label}");
        assert_eq!(
            put(base - 1).await.unwrap(),
            SetOutcome::RefusedOlder,
            "{label}"
        );
        assert_eq!(
            put(base).await.unwrap(),
            SetOutcome::Stored,
            "{label}: equal version refreshes"
        );
        assert_eq!(put(base + 1).await.unwrap(), SetOutcome::Stored, "{label}");
        assert_eq!(
            put(base).await.unwrap(),
            SetOutcome::RefusedOlder,
            "{label}"
        );
        let stored = store.get(&key).await.unwrap().unwrap();
        assert_eq!(envelope::decode_meta(&stored).unwrap().version, base + 1);
    }
    // prefix deletion: literal prefixes (glob characters are not patterns), leases voided
    for key in ["c:p*x:1", "c:p*x:2", "c:pyx:1", "c:p*x"] {
        store.set(key, Bytes::from_static(b"v"), ttl).await.unwrap();
    }
    assert!(store.try_lease("c:p*x:3", 77, ttl).await.unwrap());
    assert_eq!(store.delete_prefix("c:p*x:").await.unwrap(), 2);
    assert!(
        store.get("c:pyx:1").await.unwrap().is_some(),
        "`*` matched literally"
    );
    assert!(
        store.get("c:p*x").await.unwrap().is_some(),
        "only keys below the prefix"
    );
    assert!(store.get("c:p*x:1").await.unwrap().is_none());
    assert!(
        store.try_lease("c:p*x:3", 78, ttl).await.unwrap(),
        "a lease under the prefix (for a key not stored) was voided"
    );

    // a non-envelope value does not block a versioned set
    store
        .set("c:junk", Bytes::from_static(b"junk"), ttl)
        .await
        .unwrap();
    assert_eq!(
        store
            .set_if_not_older("c:junk", envelope_with_version(1, b"p"), ttl, 1)
            .await
            .unwrap(),
        SetOutcome::Stored
    );
}

pub async fn lease_contract(store: &dyn Store) {
    let ttl = Duration::from_secs(30);
    let lease_ttl = Duration::from_millis(300);
    let mut events = store
        .subscribe("fills")
        .expect("both stores support messaging");
    // wait until the subscription is live (Redis subscribes asynchronously)
    if let Ok(Ok(first)) = tokio::time::timeout(Duration::from_secs(5), events.recv()).await {
        assert_eq!(first, StoreEvent::Subscribed);
    }

    // one holder at a time
    assert!(store.try_lease("l:a", 1, lease_ttl).await.unwrap());
    assert!(!store.try_lease("l:a", 2, lease_ttl).await.unwrap());
    // the holder fills: stored, lease released, fill announced
    let out = store
        .fill_leased("l:a", envelope_with_version(0, b"a"), ttl, 0, 1, "fills")
        .await
        .unwrap();
    assert_eq!(out, FillOutcome::Stored);
    let announced = tokio::time::timeout(Duration::from_secs(2), events.recv()).await;
    assert_eq!(
        announced.unwrap().unwrap(),
        StoreEvent::Message(Bytes::from_static(b"l:a"))
    );
    assert!(
        store.try_lease("l:a", 3, lease_ttl).await.unwrap(),
        "the fill released the lease"
    );
    store.release_lease("l:a", 3).await.unwrap();

    // lease and read together: the read comes after the lease, and sees what is stored
    let (taken, value) = store.try_lease_and_get("l:a", 9, lease_ttl).await.unwrap();
    assert!(taken);
    assert_eq!(value, Some(envelope_with_version(0, b"a")));
    let (taken, value) = store.try_lease_and_get("l:a", 10, lease_ttl).await.unwrap();
    assert!(!taken, "held by 9");
    assert!(value.is_some());
    store.release_lease("l:a", 9).await.unwrap();
    assert_eq!(
        store
            .try_lease_and_get("l:none", 11, lease_ttl)
            .await
            .unwrap(),
        (true, None)
    );
    store.release_lease("l:none", 11).await.unwrap();

    // a write voids the lease: the slow fill that started before it is refused
    assert!(store.try_lease("l:b", 4, lease_ttl).await.unwrap());
    store
        .set("l:b", Bytes::from_static(b"written"), ttl)
        .await
        .unwrap();
    let out = store
        .fill_leased("l:b", envelope_with_version(0, b"old"), ttl, 0, 4, "fills")
        .await
        .unwrap();
    assert_eq!(out, FillOutcome::LeaseLost);
    assert_eq!(
        store.get("l:b").await.unwrap().as_deref(),
        Some(&b"written"[..])
    );

    // so does an invalidation
    assert!(store.try_lease("l:c", 5, lease_ttl).await.unwrap());
    store.delete("l:c").await.unwrap();
    let out = store
        .fill_leased("l:c", envelope_with_version(0, b"old"), ttl, 0, 5, "fills")
        .await
        .unwrap();
    assert_eq!(out, FillOutcome::LeaseLost);
    assert_eq!(store.get("l:c").await.unwrap(), None);

    // release is compare-and-delete: a stranger's token releases nothing
    assert!(store.try_lease("l:d", 6, lease_ttl).await.unwrap());
    store.release_lease("l:d", 999).await.unwrap();
    assert!(!store.try_lease("l:d", 7, lease_ttl).await.unwrap());
    // and a lease expires by itself
    tokio::time::sleep(lease_ttl + Duration::from_millis(100)).await;
    assert!(store.try_lease("l:d", 8, lease_ttl).await.unwrap());
    assert_eq!(
        store
            .fill_leased("l:d", envelope_with_version(0, b"x"), ttl, 0, 6, "fills")
            .await
            .unwrap(),
        FillOutcome::LeaseLost,
        "an expired holder cannot fill over the new holder"
    );

    // a holder extends its lease (a load slower than the TTL); nobody else can
    assert!(store.try_lease("l:x", 21, lease_ttl).await.unwrap());
    assert!(!store.extend_lease("l:x", 999, lease_ttl).await.unwrap());
    tokio::time::sleep(lease_ttl / 2).await;
    assert!(store.extend_lease("l:x", 21, lease_ttl).await.unwrap());
    tokio::time::sleep(lease_ttl * 3 / 4).await;
    assert!(
        !store.try_lease("l:x", 22, lease_ttl).await.unwrap(),
        "the extended lease is still held past its first TTL"
    );
    assert_eq!(
        store
            .fill_leased(
                "l:x",
                envelope_with_version(0, b"slow"),
                ttl,
                0,
                21,
                "fills"
            )
            .await
            .unwrap(),
        FillOutcome::Stored,
        "the holder of an extended lease fills"
    );
    // a voided lease cannot be extended back to life
    assert!(store.try_lease("l:y", 23, lease_ttl).await.unwrap());
    store.delete("l:y").await.unwrap();
    assert!(!store.extend_lease("l:y", 23, lease_ttl).await.unwrap());
    assert!(!store.extend_lease("l:never", 24, lease_ttl).await.unwrap());

    // the version rule holds for fenced fills too
    store
        .set_if_not_older("l:e", envelope_with_version(9, b"new"), ttl, 9)
        .await
        .unwrap();
    assert!(store.try_lease("l:e", 10, lease_ttl).await.unwrap());
    assert_eq!(
        store
            .fill_leased("l:e", envelope_with_version(3, b"old"), ttl, 3, 10, "fills")
            .await
            .unwrap(),
        FillOutcome::RefusedOlder
    );
    assert!(
        store.try_lease("l:e", 11, lease_ttl).await.unwrap(),
        "refusal released the lease"
    );
    fence_contract(store).await;
}

/// Fences (loads without the lease): shared, taken down by writes, deletes and prefix deletes.
pub async fn fence_contract(store: &dyn Store) {
    let ttl = Duration::from_secs(30);
    let fence_ttl = Duration::from_millis(300);
    let fill = |key: &'static str, fence: u64| {
        store.fill_fenced(key, envelope_with_version(0, b"f"), ttl, 0, fence, "fills")
    };
    let f = store.open_fence("f:a", 21, fence_ttl).await.unwrap();
    assert_eq!(f, 21);
    assert_eq!(
        store.open_fence("f:a", 22, fence_ttl).await.unwrap(),
        21,
        "shared"
    );
    assert_eq!(fill("f:a", 21).await.unwrap(), FillOutcome::Stored);
    assert_eq!(
        fill("f:a", 21).await.unwrap(),
        FillOutcome::Stored,
        "it stays up"
    );
    assert_eq!(
        fill("f:a", 22).await.unwrap(),
        FillOutcome::LeaseLost,
        "not ours"
    );
    store.delete("f:a").await.unwrap();
    assert_eq!(
        fill("f:a", 21).await.unwrap(),
        FillOutcome::LeaseLost,
        "deleted"
    );
    assert_eq!(store.get("f:a").await.unwrap(), None);

    let f = store.open_fence("f:b", 23, fence_ttl).await.unwrap();
    store
        .set("f:b", Bytes::from_static(b"written"), ttl)
        .await
        .unwrap();
    assert_eq!(
        fill("f:b", f).await.unwrap(),
        FillOutcome::LeaseLost,
        "written"
    );
    assert_eq!(
        store.get("f:b").await.unwrap().as_deref(),
        Some(&b"written"[..])
    );

    let f = store.open_fence("f:c:1", 24, fence_ttl).await.unwrap();
    store.delete_prefix("f:c:").await.unwrap();
    assert_eq!(
        fill("f:c:1", f).await.unwrap(),
        FillOutcome::LeaseLost,
        "prefix"
    );

    let f = store.open_fence("f:d", 25, fence_ttl).await.unwrap();
    tokio::time::sleep(fence_ttl + Duration::from_millis(100)).await;
    assert_eq!(
        fill("f:d", f).await.unwrap(),
        FillOutcome::LeaseLost,
        "expired"
    );
    assert!(
        store.try_lease("f:d", 26, fence_ttl).await.unwrap(),
        "a fence is no lease"
    );
}

/// Writes that publish: each message goes out once its write is done (in one round trip where
/// the store can), the write keeps its own contract (leases voided, older versions refused),
/// and a refused or missing write still publishes.
#[allow(dead_code)]
pub async fn publish_contract(store: &dyn Store) {
    use herdwise::store::Publication;
    let ttl = Duration::from_secs(30);
    let mut events = store
        .subscribe("writes")
        .expect("every store supports messaging");
    if store.confirms_subscriptions() {
        let first = tokio::time::timeout(Duration::from_secs(5), events.recv()).await;
        assert_eq!(first.unwrap().unwrap(), StoreEvent::Subscribed);
    }
    let then = |message: &'static str| Publication {
        channel: "writes",
        message: Bytes::from_static(message.as_bytes()),
    };

    // set: written, lease voided, published
    assert!(store.try_lease("p:a", 1, ttl).await.unwrap());
    assert!(store
        .set_and_publish("p:a", Bytes::from_static(b"1"), ttl, then("set a"))
        .await
        .unwrap());
    assert_eq!(heard(&mut events).await, Bytes::from_static(b"set a"));
    assert_eq!(store.get("p:a").await.unwrap().as_deref(), Some(&b"1"[..]));
    assert!(
        store.try_lease("p:a", 2, ttl).await.unwrap(),
        "the write voided the lease"
    );
    store.release_lease("p:a", 2).await.unwrap();

    // versioned: stored, then refused (still published)
    let (outcome, published) = store
        .set_if_not_older_and_publish("p:v", envelope_with_version(5, b"5"), ttl, 5, then("v5"))
        .await
        .unwrap();
    assert_eq!((outcome, published), (SetOutcome::Stored, true));
    assert_eq!(heard(&mut events).await, Bytes::from_static(b"v5"));
    let (outcome, published) = store
        .set_if_not_older_and_publish("p:v", envelope_with_version(4, b"4"), ttl, 4, then("v4"))
        .await
        .unwrap();
    assert_eq!((outcome, published), (SetOutcome::RefusedOlder, true));
    assert_eq!(heard(&mut events).await, Bytes::from_static(b"v4"));
    assert_eq!(
        store.get("p:v").await.unwrap(),
        Some(envelope_with_version(5, b"5"))
    );

    // delete: removed (or not there), published either way
    assert!(store.try_lease("p:a", 3, ttl).await.unwrap());
    assert_eq!(
        store
            .delete_and_publish("p:a", then("del a"))
            .await
            .unwrap(),
        (true, true)
    );
    assert_eq!(heard(&mut events).await, Bytes::from_static(b"del a"));
    assert_eq!(store.get("p:a").await.unwrap(), None);
    assert!(
        store.try_lease("p:a", 4, ttl).await.unwrap(),
        "the delete voided the lease"
    );
    assert_eq!(
        store
            .delete_and_publish("p:a", then("del again"))
            .await
            .unwrap(),
        (false, true)
    );
    assert_eq!(heard(&mut events).await, Bytes::from_static(b"del again"));
}

async fn heard(events: &mut tokio::sync::broadcast::Receiver<StoreEvent>) -> Bytes {
    match tokio::time::timeout(Duration::from_secs(2), events.recv()).await {
        Ok(Ok(StoreEvent::Message(m))) => m,
        other => panic!("expected a message, got {other:?}"),
    }
}
