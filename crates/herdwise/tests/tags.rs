//! Tag invalidation against real Redis: every tagged entry unreadable on every instance after one
//! round trip, loads that read the origin before the invalidation not served after it, lost
//! events, outages, bad tags.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{calls_of, counter, OriginError};
use herdwise::{metrics as m, Cache, Error, LoadOptions, WriteOptions};
use tokio::sync::Notify;

const SHOES: &str = "category:shoes";

async fn instance(server: &herdwise_testkit::RedisServer) -> Cache<u64, String> {
    Cache::builder("tags")
        .store(common::store(server).await)
        .build()
        .unwrap()
}

async fn value(cache: &Cache<u64, String>, key: u64) -> Option<String> {
    cache.get(&key).await.unwrap().map(|v| v.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_round_trip_makes_every_tagged_entry_unreadable_on_every_instance() {
    let server = common::redis();
    let (a, b, c) = (
        instance(&server).await,
        instance(&server).await,
        instance(&server).await,
    );
    let shoes = WriteOptions::default().tags([SHOES, "brand:acme"]);
    for key in 0..1_000u64 {
        a.set_with(&key, format!("shoe-{key}"), &shoes)
            .await
            .unwrap();
    }
    for key in 1_000..1_100u64 {
        a.set(&key, format!("lamp-{key}")).await.unwrap();
    }
    // B and C read everything (into their L1) once their subscriptions are up.
    tokio::time::sleep(Duration::from_millis(300)).await;
    for cache in [&b, &c] {
        for key in 0..1_100u64 {
            assert!(value(cache, key).await.is_some());
        }
    }

    // The script's first use on a server costs a NOSCRIPT answer and a SCRIPT LOAD: not counted.
    a.invalidate_tag("warm-up").await.unwrap();
    let mut raw = common::raw(&server).await;
    let (evals, dels, unlinks) = (
        calls_of(&mut raw, "evalsha").await,
        calls_of(&mut raw, "del").await,
        calls_of(&mut raw, "unlink").await,
    );
    let started = Instant::now();
    a.invalidate_tag(SHOES).await.unwrap();
    let took = started.elapsed();
    assert_eq!(
        calls_of(&mut raw, "evalsha").await,
        evals + 1,
        "one script call"
    );
    assert_eq!(
        calls_of(&mut raw, "del").await,
        dels,
        "nothing deleted one by one"
    );
    assert_eq!(calls_of(&mut raw, "unlink").await, unlinks);
    eprintln!("invalidate_tag of 1000 entries took {took:?}");

    for key in 0..1_000u64 {
        assert_eq!(
            value(&a, key).await,
            None,
            "the invalidating instance, key {key}"
        );
    }
    for cache in [&b, &c] {
        let stopped = common::eventually(Duration::from_secs(2), async || {
            value(cache, 0).await.is_none() && value(cache, 999).await.is_none()
        })
        .await;
        assert!(stopped, "another instance kept serving tagged entries");
        for key in 0..1_000u64 {
            assert_eq!(value(cache, key).await, None, "key {key}");
        }
        for key in 1_000..1_100u64 {
            assert!(value(cache, key).await.is_some(), "untagged entries stay");
        }
        assert_eq!(
            cache.l1_len(),
            100,
            "dead entries are dropped from L1, not kept"
        );
    }
    // Entries written after the invalidation carry the new stamp and are served.
    a.set_with(&5, "new".to_string(), &shoes).await.unwrap();
    assert_eq!(value(&b, 5).await.as_deref(), Some("new"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_load_that_read_the_origin_before_the_invalidation_is_not_cached_after_it() {
    let server = common::redis();
    let cache = instance(&server).await;
    let tagged = LoadOptions::default().tags([SHOES]);
    let (loading, release) = (Arc::new(Notify::new()), Arc::new(Notify::new()));
    let load = {
        let (cache, tagged, loading, release) = (
            cache.clone(),
            tagged.clone(),
            loading.clone(),
            release.clone(),
        );
        tokio::spawn(async move {
            cache
                .get_or_load_with(&1, &tagged, |_| async move {
                    loading.notify_one();
                    release.notified().await;
                    Ok::<_, OriginError>(Some("read before".to_string()))
                })
                .await
                .unwrap()
        })
    };
    loading.notified().await;
    cache.invalidate_tag(SHOES).await.unwrap();
    release.notify_one();
    let fetched = load.await.unwrap();
    assert_eq!(
        fetched.value.as_deref().map(String::as_str),
        Some("read before")
    );
    // Its caller got it, but no tier serves it now.
    assert_eq!(value(&cache, 1).await, None);
    let other = instance(&server).await;
    assert_eq!(value(&other, 1).await, None);
    let reloaded = cache
        .get_or_load_with(&1, &tagged, |_| async {
            Ok::<_, OriginError>(Some("read after".to_string()))
        })
        .await
        .unwrap();
    assert_eq!(
        reloaded.value.as_deref().map(String::as_str),
        Some("read after")
    );
    assert_eq!(value(&other, 1).await.as_deref(), Some("read after"));
}

#[derive(serde::Serialize, serde::Deserialize, Debug, PartialEq)]
struct Product {
    id: u64,
    category: String,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tags_derived_from_values_and_versioned_entries_are_invalidated_too() {
    let server = common::redis();
    let cache: Cache<u64, Product> = Cache::builder("derived")
        .store(common::store(&server).await)
        .tags_from(|p: &Product| vec![format!("category:{}", p.category)])
        .build()
        .unwrap();
    let boot = |id| Product {
        id,
        category: "shoes".into(),
    };
    cache.set_versioned(&1, boot(1), 7).await.unwrap();
    cache
        .get_or_load(
            &2,
            |id| async move { Ok::<_, OriginError>(Some(boot(*id))) },
        )
        .await
        .unwrap();
    cache
        .set(
            &3,
            Product {
                id: 3,
                category: "lamps".into(),
            },
        )
        .await
        .unwrap();
    cache.invalidate_tag(SHOES).await.unwrap();
    assert!(cache.get(&1).await.unwrap().is_none());
    assert!(cache.get(&2).await.unwrap().is_none());
    assert!(cache.get(&3).await.unwrap().is_some());
    // The versioned entry would have refused an unversioned fill; it is gone instead.
    let fresh = cache
        .get_or_load(
            &1,
            |id| async move { Ok::<_, OriginError>(Some(boot(*id))) },
        )
        .await
        .unwrap();
    assert!(fresh.is_some());
    let other: Cache<u64, Product> = Cache::builder("derived")
        .store(common::store(&server).await)
        .build()
        .unwrap();
    assert_eq!(other.get(&1).await.unwrap().as_deref(), Some(&boot(1)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_tags_are_clear_errors_and_nothing_stale_is_left() {
    let server = common::redis();
    let cache: Cache<u64, String> = Cache::builder("badtags")
        .store(common::store(&server).await)
        .max_tags_per_entry(2)
        .build()
        .unwrap();
    cache.set(&1, "old".to_string()).await.unwrap();
    let too_many = WriteOptions::default().tags(["a", "b", "c"]);
    let err = cache
        .set_with(&1, "new".to_string(), &too_many)
        .await
        .unwrap_err();
    assert!(
        matches!(err, Error::TooManyTags { count: 3, limit: 2 }),
        "{err}"
    );
    assert_eq!(
        value(&cache, 1).await,
        None,
        "the old value is not left in place"
    );

    let calls = common::Calls::default();
    let bad = LoadOptions::default().tags(["ok", "bad\ttag"]);
    let err = cache
        .get_or_load_with(&2, &bad, |_| {
            calls.hit();
            async { Ok::<_, OriginError>(Some("x".to_string())) }
        })
        .await
        .unwrap_err();
    assert!(matches!(err, Error::InvalidTag(_)), "{err}");
    assert_eq!(calls.get(), 0, "rejected before the origin is asked");
    assert!(matches!(
        cache.invalidate_tag("").await,
        Err(Error::InvalidTag(_))
    ));
    assert!(matches!(
        cache.invalidate_tag(&"x".repeat(513)).await,
        Err(Error::InvalidTag(_))
    ));
}

/// Tags as long as keys (a path, a tenant and a collection): accepted up to `max_tag_bytes`
/// (default 512), stored by digest past the envelope's 128 bytes, invalidated from another
/// instance like any other tag. Before, a tag of 129 bytes failed the whole call.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_tag_works_like_any_other_and_past_the_limit_is_refused() {
    let server = common::redis();
    let (a, b) = (instance(&server).await, instance(&server).await);
    let long = format!("tenant:acme:folder:{}", "projects/2026/".repeat(30)); // 439 bytes
    let other = format!("{long}x");
    let tagged = WriteOptions::default().tags([&long]);
    a.set_with(&1, "one".to_string(), &tagged).await.unwrap();
    a.set_with(
        &2,
        "two".to_string(),
        &WriteOptions::default().tags([&other]),
    )
    .await
    .unwrap();
    let loaded = b
        .get_or_load_with(&3, &LoadOptions::default().tags([&long]), |_| async {
            Ok::<_, OriginError>(Some("three".to_string()))
        })
        .await
        .unwrap();
    assert!(loaded.value.is_some());
    for key in [1, 2, 3] {
        assert!(value(&b, key).await.is_some());
    }
    // The stored entry carries the digest, not the long tag.
    let mut raw = common::raw(&server).await;
    let bytes: Vec<u8> = redis::cmd("GET")
        .arg(a.stored_key(&1).unwrap())
        .query_async(&mut raw)
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&bytes);
    assert!(text.contains("sha256:"), "stored by digest");
    assert!(!text.contains("projects/2026/"), "not in full");
    b.invalidate_tag(&long).await.unwrap();
    for cache in [&a, &b] {
        let gone = common::eventually(Duration::from_secs(3), async || {
            value(cache, 1).await.is_none() && value(cache, 3).await.is_none()
        })
        .await;
        assert!(gone, "the long tag's entries are invalidated everywhere");
        assert_eq!(
            value(cache, 2).await.as_deref(),
            Some("two"),
            "a tag one byte longer is another tag"
        );
    }
    // Past the limit: the write fails (and the key is invalidated), nothing is loaded.
    let too_long = "t".repeat(513);
    let err = a
        .set_with(
            &2,
            "new".to_string(),
            &WriteOptions::default().tags([&too_long]),
        )
        .await
        .unwrap_err();
    assert!(matches!(err, Error::InvalidTag(_)), "{err}");
    assert_eq!(
        value(&a, 2).await,
        None,
        "the old value is not left in place"
    );
    // The limit is the builder's.
    let wide: Cache<u64, String> = Cache::builder("tags")
        .store(common::store(&server).await)
        .max_tag_bytes(1_024)
        .build()
        .unwrap();
    wide.invalidate_tag(&too_long).await.unwrap();
    assert!(matches!(
        Cache::<u64, String>::builder("tags").max_tag_bytes(0).build(),
        Err(Error::Config(option)) if option.contains("max_tag_bytes")
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_that_lost_the_event_stops_serving_once_it_resubscribes() {
    let server = common::redis();
    let a = instance(&server).await;
    let store = common::store(&server).await;
    let (b, metrics) =
        common::with_metrics(|| Cache::<u64, String>::builder("tags").store(store.clone()));
    let shoes = WriteOptions::default().tags([SHOES]);
    for key in 0..50u64 {
        a.set_with(&key, "old".to_string(), &shoes).await.unwrap();
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    for key in 0..50u64 {
        assert!(value(&b, key).await.is_some());
    }
    let mut raw = common::raw(&server).await;
    common::kill_pubsub_clients(&mut raw).await;
    a.invalidate_tag(SHOES).await.unwrap();
    let stopped = common::eventually(Duration::from_secs(5), async || {
        value(&b, 0).await.is_none()
    })
    .await;
    assert!(
        stopped,
        "B must stop serving once it notices it may have missed events"
    );
    for key in 0..50u64 {
        assert_eq!(value(&b, key).await, None);
    }
    // Demoted when the subscription was lost, and again once it is back.
    assert!(
        counter(
            &metrics,
            m::BACKPLANE_RESETS,
            &[("reason", "subscription_lost")]
        ) >= 1
    );
    let resubscribed = common::eventually(Duration::from_secs(3), async || {
        counter(&metrics, m::BACKPLANE_RESETS, &[("reason", "resubscribed")]) >= 1
    })
    .await;
    assert!(resubscribed);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_complete_ledger_checks_tags_without_round_trips() {
    let server = common::redis();
    let a = instance(&server).await;
    let store = common::store(&server).await;
    let (b, metrics) =
        common::with_metrics(|| Cache::<u64, String>::builder("tags").store(store.clone()));
    b.get(&0).await.unwrap(); // first use: subscribes
    tokio::time::sleep(Duration::from_millis(300)).await;
    let shoes = WriteOptions::default().tags([SHOES]);
    for key in 0..100u64 {
        a.set_with(&key, "v".to_string(), &shoes).await.unwrap();
    }
    for key in 0..100u64 {
        assert!(value(&b, key).await.is_some());
    }
    assert_eq!(
        counter(&metrics, m::TAG_STORE_CHECKS, &[]),
        0,
        "entries stamped after B started listening are judged locally"
    );
    a.invalidate_tag(SHOES).await.unwrap();
    assert!(
        common::eventually(Duration::from_secs(2), async || value(&b, 0)
            .await
            .is_none())
        .await
    );
    assert_eq!(counter(&metrics, m::TAG_STORE_CHECKS, &[]), 0);
    assert!(counter(&metrics, m::TAG_INVALIDATED_READS, &[]) >= 1);
}

/// While Redis is dead, a tagged entry in L1 is served like an untagged one (a stale-if-error
/// fallback: the tags cannot be judged, the store is not there to be asked) instead of sending
/// every tagged read to the origin; a tag invalidated meanwhile is still never served. Before,
/// the lost subscription left the ledger incomplete and every tagged L1 entry was dropped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tagged_entry_keeps_being_served_from_l1_while_redis_is_dead() {
    let mut server = common::redis();
    let cache = instance(&server).await;
    let shoes = WriteOptions::default().tags([SHOES]);
    cache
        .set_with(&1, "boot".to_string(), &shoes)
        .await
        .unwrap();
    cache
        .set_with(
            &2,
            "sandal".to_string(),
            &WriteOptions::default().tags(["summer"]),
        )
        .await
        .unwrap();
    assert!(value(&cache, 1).await.is_some());
    // Invalidated before the outage, its L1 copy not read since: the mark must outlive the
    // ledger's restart when the subscription is lost (a review finding on the first version).
    let winter = WriteOptions::default().tags(["winter"]);
    cache
        .set_with(&3, "coat".to_string(), &winter)
        .await
        .unwrap();
    assert!(value(&cache, 3).await.is_some());
    cache.invalidate_tag("winter").await.unwrap();
    server.kill();
    // Long enough for the subscription to be reported lost (the ledger then starts over).
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    let calls = common::Calls::default();
    for _ in 0..20 {
        let got = cache
            .get_or_load(&1, |_| {
                calls.hit();
                async { Ok::<_, OriginError>(Some("from the origin".to_string())) }
            })
            .await
            .unwrap();
        assert_eq!(got.as_deref().map(String::as_str), Some("boot"));
    }
    assert_eq!(calls.get(), 0, "the origin was not asked");
    cache.invalidate_tag("summer").await.unwrap();
    assert_eq!(
        value(&cache, 2).await,
        None,
        "invalidated during the outage: never served"
    );
    assert_eq!(
        value(&cache, 3).await,
        None,
        "invalidated before it: never served either"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalidation_during_an_outage_holds_locally_and_reaches_redis_later() {
    let server = common::redis();
    let cache = instance(&server).await;
    let shoes = WriteOptions::default().tags([SHOES]);
    cache.set_with(&1, "old".to_string(), &shoes).await.unwrap();
    assert!(value(&cache, 1).await.is_some());
    server.pause().unwrap();
    let started = Instant::now();
    cache.invalidate_tag(SHOES).await.unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "bounded by the store deadline"
    );
    assert_eq!(
        value(&cache, 1).await,
        None,
        "this instance stops serving at once"
    );
    server.resume().unwrap();
    let other = instance(&server).await;
    let reached = common::eventually(Duration::from_secs(5), async || {
        value(&other, 1).await.is_none()
    })
    .await;
    assert!(reached, "the retried invalidation must reach Redis");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_tag_clock_restarts_above_its_old_values_after_redis_loses_its_data() {
    let mut server = common::redis();
    let cache = instance(&server).await;
    cache.invalidate_tag(SHOES).await.unwrap();
    let read_clock = |url: String| async move {
        let mut conn = redis::Client::open(url)
            .unwrap()
            .get_multiplexed_async_connection()
            .await
            .unwrap();
        let clock: u64 = redis::cmd("HGET")
            .arg("herdwise:{ns:tags}:tags")
            .arg("clock")
            .query_async(&mut conn)
            .await
            .unwrap();
        clock
    };
    let before = read_clock(server.url()).await;
    server.restart().unwrap();
    let restarted = instance(&server).await;
    restarted.invalidate_tag(SHOES).await.unwrap();
    let after = read_clock(server.url()).await;
    assert!(
        after > before,
        "a clock lost with Redis' data must restart above the old one ({before} → {after})"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fetch_checks_the_calls_tags_before_asking_the_origin() {
    let calls = common::Calls::default();
    let counted = calls.clone();
    let cache: Cache<u64, String> = Cache::builder("fetchtags")
        .loader(move |_: &u64| {
            counted.hit();
            async { Ok::<_, OriginError>(Some("x".to_string())) }
        })
        .build()
        .unwrap();
    let bad = LoadOptions::default().tags(["fine", ""]);
    let err = cache.fetch_with(&1, &bad).await.unwrap_err();
    assert!(matches!(err, Error::InvalidTag(_)), "{err}");
    assert_eq!(calls.get(), 0);
}

/// On the embedded store every invalidation is heard (its messaging is in-process, up from the
/// start): a tagged entry in L1 is a plain L1 hit, not an unverified copy checked against L2 on
/// every read (which cost the HTTP proxy a decode of the whole response per hit).
#[tokio::test]
async fn tagged_entries_on_the_embedded_store_are_l1_hits_and_still_invalidated() {
    let store = herdwise::MemoryStore::new();
    let a: Cache<u64, String> = Cache::builder("tags-embedded")
        .store(store.clone())
        .build()
        .unwrap();
    let b: Cache<u64, String> = Cache::builder("tags-embedded")
        .store(store)
        .build()
        .unwrap();
    let never = |_: &u64| async { Ok::<Option<String>, OriginError>(None) };
    let fresh = |_: &String| false;
    let opts = LoadOptions::default();
    a.set_with(
        &1,
        "shoe".to_string(),
        &WriteOptions::default().tags([SHOES]),
    )
    .await
    .unwrap();
    // B reads it into its L1 (from L2), then again: from L1.
    assert_eq!(value(&b, 1).await.as_deref(), Some("shoe"));
    tokio::time::sleep(Duration::from_millis(50)).await;
    for cache in [&a, &b] {
        let read = cache
            .get_or_load_checked(&1, &opts, &fresh, never)
            .await
            .unwrap();
        assert_eq!(read.value.as_deref().map(String::as_str), Some("shoe"));
        assert_eq!(
            read.source,
            herdwise::Source::L1,
            "a tagged L1 entry went to L2"
        );
    }
    a.invalidate_tag(SHOES).await.unwrap();
    // The instance that invalidated: at once.
    assert_eq!(value(&a, 1).await, None);
    // The other: once its listener has taken the event (in-process, a task switch away).
    let deadline = Instant::now() + Duration::from_secs(2);
    while value(&b, 1).await.is_some() {
        assert!(Instant::now() < deadline, "B kept the invalidated entry");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// A load's tags are checked as they will be stored — with the tenant's prefix — before the
/// origin is asked: one that fits alone but not with the prefix is refused up front, not
/// loaded and then left uncached on every read.
#[tokio::test]
async fn a_loads_tags_are_checked_with_the_tenant_prefix_before_the_origin_is_asked() {
    let cache: Cache<u64, String> = Cache::builder("tags-tenant")
        .require_tenant()
        .build()
        .unwrap();
    let acme = cache.for_tenant("acme").unwrap();
    let calls = common::Calls::default();
    let almost = "t".repeat(510); // 515 bytes as "acme:" + tag
    let err = acme
        .get_or_load_with(&1, &LoadOptions::default().tags([&almost]), |_| {
            calls.hit();
            async { Ok::<_, OriginError>(Some("x".to_string())) }
        })
        .await
        .unwrap_err();
    assert!(matches!(err, Error::InvalidTag(_)), "{err}");
    assert_eq!(calls.get(), 0, "refused before the origin is asked");
}
