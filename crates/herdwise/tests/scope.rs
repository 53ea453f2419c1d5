//! Keys that cannot cross tenants: tenant-scoped handles, and the scope check on read (every
//! entry carries the fingerprint of the key it was written under; bytes found under any other
//! key are a counted miss and are deleted). Bytes are moved between keys in a real Redis, as a
//! key-format regression or a foreign writer would.

mod common;

use std::time::Duration;

use common::counter;
use herdwise::envelope::{self, Compression, Meta};
use herdwise::{metrics as m, Cache, Error, KeyError, WriteOptions};

async fn copy_bytes(raw: &mut redis::aio::MultiplexedConnection, from: &str, to: &str) {
    let bytes: Vec<u8> = redis::cmd("GET").arg(from).query_async(raw).await.unwrap();
    let () = redis::cmd("SET")
        .arg(to)
        .arg(bytes)
        .query_async(raw)
        .await
        .unwrap();
}

async fn exists(raw: &mut redis::aio::MultiplexedConnection, key: &str) -> bool {
    redis::cmd("EXISTS")
        .arg(key)
        .query_async(raw)
        .await
        .unwrap()
}

fn violations(metrics: &common::Metrics, reason: &str) -> u64 {
    counter(metrics, m::SCOPE_VIOLATIONS, &[("reason", reason)])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_tenants_bytes_under_a_key_are_a_counted_miss_and_deleted() {
    let server = common::redis();
    let writer: Cache<u64, String> = Cache::builder("acct")
        .store(common::store(&server).await)
        .require_tenant()
        .build()
        .unwrap();
    writer
        .for_tenant("acme")
        .unwrap()
        .set(&1, "acme's invoice".to_string())
        .await
        .unwrap();
    writer
        .for_tenant("globex")
        .unwrap()
        .set(&1, "globex's invoice".to_string())
        .await
        .unwrap();
    let store = common::store(&server).await;
    let (reader, metrics) = common::with_metrics(|| {
        Cache::<u64, String>::builder("acct")
            .store(store.clone())
            .require_tenant()
    });
    let acme = reader.for_tenant("acme").unwrap();
    let globex = reader.for_tenant("globex").unwrap();
    let acme_key = acme.stored_key(&1).unwrap();
    let globex_key = globex.stored_key(&1).unwrap();
    assert_ne!(acme_key, globex_key);
    // A bug (or a foreign writer) puts acme's bytes under globex's key.
    let mut raw = common::raw(&server).await;
    copy_bytes(&mut raw, &acme_key, &globex_key).await;
    assert_eq!(
        globex.get(&1).await.unwrap(),
        None,
        "globex must never be served acme's bytes"
    );
    assert_eq!(violations(&metrics, "foreign"), 1);
    assert!(
        !exists(&mut raw, &globex_key).await,
        "the foreign bytes are deleted"
    );
    assert_eq!(
        acme.get(&1).await.unwrap().as_deref().map(String::as_str),
        Some("acme's invoice")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bytes_moved_to_another_key_or_without_a_scope_are_misses() {
    let server = common::redis();
    let writer: Cache<u64, String> = Cache::builder("moved")
        .store(common::store(&server).await)
        .build()
        .unwrap();
    writer.set(&1, "one".to_string()).await.unwrap();
    let store = common::store(&server).await;
    let (reader, metrics) =
        common::with_metrics(|| Cache::<u64, String>::builder("moved").store(store.clone()));
    let mut raw = common::raw(&server).await;
    let (one, two) = (
        reader.stored_key(&1).unwrap(),
        reader.stored_key(&2).unwrap(),
    );
    copy_bytes(&mut raw, &one, &two).await;
    assert_eq!(reader.get(&2).await.unwrap(), None);
    assert_eq!(violations(&metrics, "foreign"), 1);
    // A well-formed envelope without a scope (an older version's entry, another writer).
    let meta = Meta {
        created_at_ms: 1,
        fresh_until_ms: u64::MAX / 4,
        stale_until_ms: u64::MAX / 4,
        version: 0,
        load_duration: Duration::ZERO,
        negative: false,
        stale_copy: false,
        codec_id: 1,
    };
    let payload = postcard::to_stdvec(&"three".to_string()).unwrap();
    let bytes = envelope::encode(&meta, &payload, Compression::None);
    let three = reader.stored_key(&3).unwrap();
    let () = redis::cmd("SET")
        .arg(&three)
        .arg(bytes)
        .query_async(&mut raw)
        .await
        .unwrap();
    assert_eq!(reader.get(&3).await.unwrap(), None);
    assert_eq!(violations(&metrics, "unscoped"), 1);
    // Not deleted (an older build's entry during a rolling upgrade): the next fill replaces it.
    assert!(exists(&mut raw, &three).await);
    // Entries in their own place are served.
    assert_eq!(
        reader.get(&1).await.unwrap().as_deref().map(String::as_str),
        Some("one")
    );
    assert_eq!(violations(&metrics, "foreign"), 1);
}

#[tokio::test]
async fn a_tenant_scoped_namespace_rejects_keys_without_a_tenant() {
    let orders: Cache<u64, String> = Cache::builder("orders").require_tenant().build().unwrap();
    fn required<T>(r: Result<T, Error>) -> bool {
        matches!(r, Err(Error::InvalidKey(KeyError::TenantRequired(ref ns))) if ns == "orders")
    }
    assert!(required(orders.get(&1).await));
    assert!(required(orders.set(&1, "x".to_string()).await));
    assert!(required(orders.invalidate(&1).await));
    assert!(required(orders.invalidate_prefix(&1u64).await));
    assert!(required(
        orders
            .get_or_load(&1, |_| async {
                Ok::<_, common::OriginError>(Some("x".to_string()))
            })
            .await
    ));
    assert!(required(orders.invalidate_tenant().await));
    // Tags are the tenants' too: `acme:x` on the root handle would be acme's tag `x`.
    assert!(required(orders.invalidate_tag("acme:x").await));
    orders.clear().await.unwrap();
    // Bad tenant ids are refused up front.
    assert!(matches!(
        orders.for_tenant(""),
        Err(Error::InvalidKey(KeyError::Empty))
    ));
    assert!(matches!(
        orders.for_tenant("a\u{0}b"),
        Err(Error::InvalidKey(KeyError::ControlCharacter(0)))
    ));
    let acme = orders.for_tenant("acme").unwrap();
    acme.set(&1, "mine".to_string()).await.unwrap();
    assert_eq!(
        acme.get(&1).await.unwrap().as_deref().map(String::as_str),
        Some("mine")
    );
    // The registered loader knows no tenant: a tenant handle never calls it.
    let loaded: Cache<u64, String> = Cache::builder("loaded")
        .require_tenant()
        .loader(|k: &u64| {
            let v = format!("tenant-blind {k}");
            async move { Ok::<_, common::OriginError>(Some(v)) }
        })
        .build()
        .unwrap();
    assert!(matches!(
        loaded.for_tenant("acme").unwrap().fetch(&1).await,
        Err(Error::NoLoader)
    ));
    // Hot keys through a tenant handle are that tenant's only.
    let globex = orders.for_tenant("globex").unwrap();
    globex.set(&2, "theirs".to_string()).await.unwrap();
    for _ in 0..2_000 {
        acme.get(&1).await.unwrap();
        globex.get(&2).await.unwrap();
    }
    let (mine, theirs) = (acme.hot_keys(), globex.hot_keys());
    assert!(
        mine.iter().any(|(k, _)| *k == acme.stored_key(&1).unwrap()),
        "{mine:?}"
    );
    assert!(
        !mine
            .iter()
            .any(|(k, _)| *k == globex.stored_key(&2).unwrap()),
        "{mine:?}"
    );
    assert!(
        theirs
            .iter()
            .all(|(k, _)| *k != acme.stored_key(&1).unwrap()),
        "{theirs:?}"
    );
    // A tenant id cannot forge another tenant's key with separators: it is escaped.
    let forged = orders.for_tenant("acme:1").unwrap();
    assert_ne!(forged.stored_key(&1).unwrap(), acme.stored_key(&1).unwrap());
    assert_eq!(forged.get(&1).await.unwrap(), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tags_and_whole_tenant_invalidations_stay_within_the_tenant() {
    let server = common::redis();
    let shop: Cache<u64, String> = Cache::builder("shop")
        .store(common::store(&server).await)
        .require_tenant()
        .build()
        .unwrap();
    let (acme, globex) = (
        shop.for_tenant("acme").unwrap(),
        shop.for_tenant("globex").unwrap(),
    );
    let shoes = WriteOptions::default().tags(["shoes"]);
    for key in 0..5 {
        acme.set_with(&key, format!("a{key}"), &shoes)
            .await
            .unwrap();
        globex
            .set_with(&key, format!("g{key}"), &shoes)
            .await
            .unwrap();
    }
    acme.invalidate_tag("shoes").await.unwrap();
    for key in 0..5 {
        assert_eq!(acme.get(&key).await.unwrap(), None);
        assert!(
            globex.get(&key).await.unwrap().is_some(),
            "acme's tag invalidation reached globex"
        );
    }
    for key in 0..5 {
        acme.set(&key, format!("a{key}")).await.unwrap();
    }
    let removed = acme.invalidate_tenant().await.unwrap();
    assert_eq!(removed, 5);
    for key in 0..5 {
        assert_eq!(acme.get(&key).await.unwrap(), None);
        assert!(globex.get(&key).await.unwrap().is_some());
    }
    // `clear()` through a tenant handle clears that tenant, not the namespace.
    for key in 0..5 {
        acme.set(&key, format!("a{key}")).await.unwrap();
    }
    acme.clear().await.unwrap();
    for key in 0..5 {
        assert_eq!(acme.get(&key).await.unwrap(), None);
        assert!(
            globex.get(&key).await.unwrap().is_some(),
            "acme's clear() reached globex"
        );
    }
}
