//! Property test over builder inputs: whatever the numbers, `build()` either returns a cache or
//! an `Error::Config` naming an option — never a panic, neither at build time nor later, when
//! the cache does its time arithmetic on reads, writes and invalidations.

use std::time::Duration;

use herdwise::{BreakerConfig, Cache, Error, LoadOptions, RewarmPolicy, WriteOptions};
use proptest::prelude::*;

fn duration() -> impl Strategy<Value = Duration> {
    // Mostly sensible values, so that many configurations build and get exercised.
    prop_oneof![
        1 => Just(Duration::ZERO),
        60 => (1u64..5_000).prop_map(Duration::from_millis),
        2 => (1u64..400_000_000).prop_map(Duration::from_secs),
        1 => (0u64..=u64::MAX).prop_map(Duration::from_secs),
        1 => Just(Duration::MAX),
    ]
}

fn count() -> impl Strategy<Value = usize> {
    prop_oneof![
        1 => Just(0usize),
        40 => 1usize..64,
        4 => 64usize..100_000,
        1 => Just(usize::MAX >> 3),
        1 => Just((usize::MAX >> 3) + 1),
        1 => Just(usize::MAX),
    ]
}

fn ratio() -> impl Strategy<Value = f64> {
    prop_oneof![
        60 => 0.0f64..=1.0,
        1 => Just(f64::NAN),
        1 => Just(f64::INFINITY),
        1 => Just(-1.0),
        1 => Just(1e300),
    ]
}

#[derive(Debug, Clone)]
struct Knobs {
    ttl: Duration,
    negative_ttl: Option<Duration>,
    jitter: f64,
    l1_cap: Duration,
    stale_while_revalidate: Duration,
    stale_if_error: Duration,
    throttle: Duration,
    hard: Option<Duration>,
    soft: Option<Duration>,
    lease: Option<(Duration, Duration, Duration)>,
    origin: Option<(usize, Duration)>,
    recovery: Duration,
    store_timeout: Option<Duration>,
    hot_keys: usize,
    in_flight: usize,
    max_key_bytes: usize,
    beta: f64,
    breaker: Option<(Duration, Duration, f64)>,
    rewarm: Option<(usize, Duration)>,
    replicas: Option<(u8, Duration)>,
    shield: Option<(u64, Duration)>,
}

fn knobs() -> impl Strategy<Value = Knobs> {
    let a = (
        duration(),
        proptest::option::of(duration()),
        ratio(),
        duration(),
        duration(),
        duration(),
        duration(),
        proptest::option::of(duration()),
        proptest::option::of(duration()),
        proptest::option::of((duration(), duration(), duration())),
    );
    let b = (
        proptest::option::of((count(), duration())),
        duration(),
        proptest::option::of(duration()),
        count(),
        count(),
        count(),
        ratio().prop_map(|r| r * 10.0),
        proptest::option::of((duration(), duration(), ratio())),
        proptest::option::of((count(), duration())),
        proptest::option::of((any::<u8>(), duration())),
        proptest::option::of((any::<u64>(), duration())),
    );
    (a, b).prop_map(|(a, b)| Knobs {
        ttl: a.0,
        negative_ttl: a.1,
        jitter: a.2,
        l1_cap: a.3,
        stale_while_revalidate: a.4,
        stale_if_error: a.5,
        throttle: a.6,
        hard: a.7,
        soft: a.8,
        lease: a.9,
        origin: b.0,
        recovery: b.1,
        store_timeout: b.2,
        hot_keys: b.3,
        in_flight: b.4,
        max_key_bytes: b.5,
        beta: b.6,
        breaker: b.7,
        rewarm: b.8,
        replicas: b.9,
        shield: b.10,
    })
}

fn build(k: &Knobs) -> Result<Cache<u64, String>, Error> {
    let mut b = Cache::<u64, String>::builder("props")
        .ttl(k.ttl)
        .negative_ttl(k.negative_ttl)
        .ttl_jitter(k.jitter)
        .l1_ttl_cap(k.l1_cap)
        .stale_while_revalidate(k.stale_while_revalidate)
        .stale_if_error(k.stale_if_error)
        .fail_safe_throttle(k.throttle)
        .recovery_window(k.recovery)
        .hot_keys(k.hot_keys)
        .max_in_flight(k.in_flight)
        .max_key_bytes(k.max_key_bytes)
        .xfetch_beta(k.beta)
        .loader(|id: &u64| {
            let id = *id;
            async move { Ok::<_, std::io::Error>(Some(format!("v{id}"))) }
        });
    if let Some(t) = k.hard {
        b = b.loader_timeout(t);
    }
    if let Some(t) = k.soft {
        b = b.loader_soft_timeout(t);
    }
    match k.lease {
        Some((ttl, wait, poll)) => b = b.lease_ttl(ttl).lease_wait(wait, poll),
        None => b = b.no_leases(),
    }
    if let Some((n, wait)) = k.origin {
        b = b.origin_concurrency_limit(n, wait);
    }
    if let Some(t) = k.store_timeout {
        b = b.store_timeout(t);
    }
    if let Some((window, open_for, ratio)) = k.breaker {
        b = b.circuit_breaker(
            BreakerConfig::default()
                .window(window)
                .open_for(open_for)
                .failure_ratio(ratio)
                .slow_call(window / 3, ratio),
        );
    }
    if let Some((keys, stage)) = k.rewarm {
        let policy = RewarmPolicy::default()
            .max_keys(keys)
            .stages([(0.5, stage), (1.0, stage)]);
        b = b.rewarm_after_recovery(policy);
    }
    if let Some((copies, life)) = k.replicas {
        b = b.hot_key_replicas(copies, life);
    }
    if let Some((bytes, life)) = k.shield {
        b = b.l1_max_bytes(0).hot_key_shield(bytes, life);
    }
    b.build()
}

/// The operations whose arithmetic uses the configured values.
async fn exercise(cache: &Cache<u64, String>) {
    let tagged = WriteOptions::default().tags(["t"]);
    let _ = cache.set_with(&1, "a".to_string(), &tagged).await;
    let _ = cache.get(&1).await;
    let _ = cache
        .get_or_load(&2, |_| async { Ok::<_, std::io::Error>(None) })
        .await;
    let _ = cache.get(&2).await;
    let opts = LoadOptions::default().stale_if_error(Duration::from_secs(1));
    let _ = cache.fetch_with(&3, &opts).await;
    let _ = cache.fetch(&3).await;
    let _ = cache.invalidate(&1).await;
    let _ = cache.invalidate_tag("t").await;
    let _ = cache.invalidate_prefix(&3u64).await;
    let _ = cache.set_versioned(&4, "b".to_string(), 7).await;
    let _ = cache.clear().await;
    let _ = cache.warm([5u64, 6]).await;
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, .. ProptestConfig::default() })]

    #[test]
    fn any_builder_input_builds_or_is_a_config_error_and_never_panics(k in knobs()) {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .start_paused(true)
            .build()
            .unwrap();
        runtime.block_on(async {
            match build(&k) {
                Ok(cache) => exercise(&cache).await,
                Err(Error::Config(message)) => assert!(!message.is_empty()),
                Err(other) => panic!("not a configuration error: {other:?}"),
            }
        });
    }
}

#[test]
fn the_property_exercises_caches_that_build() {
    // The property above means little if nearly every generated configuration is refused.
    let runner_cases = 64;
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig {
        cases: runner_cases,
        ..ProptestConfig::default()
    });
    let built = std::sync::atomic::AtomicUsize::new(0);
    runner
        .run(&knobs(), |k| {
            if build(&k).is_ok() {
                built.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
            Ok(())
        })
        .unwrap();
    let built = built.into_inner();
    assert!(
        built >= 3,
        "only {built} of {runner_cases} generated configurations build"
    );
}

// Review findings: a store whose own default deadline is zero is refused (every call would time
// out and the breaker would never close) — by the Redis store's builder, naming the option.
#[tokio::test]
async fn a_zero_store_timeout_is_a_config_error_naming_the_option() {
    for (option, builder) in [
        (
            "call_timeout",
            herdwise::RedisStore::builder("redis://127.0.0.1:1").call_timeout(Duration::ZERO),
        ),
        (
            "connection_timeout",
            herdwise::RedisStore::builder("redis://127.0.0.1:1").connection_timeout(Duration::ZERO),
        ),
    ] {
        match builder.connect_lazy() {
            Err(herdwise::StoreError::Config { option: named, .. }) => assert_eq!(named, option),
            Err(other) => panic!("expected a configuration error, got {other:?}"),
            Ok(_) => panic!("expected a configuration error for {option}"),
        }
    }
    // TLS options on a plain URL name the option given.
    let e = herdwise::RedisStore::builder("redis://127.0.0.1:1")
        .danger_accept_invalid_certificates(true)
        .connect_lazy()
        .err();
    assert!(
        matches!(
            e,
            Some(herdwise::StoreError::Config {
                option: "danger_accept_invalid_certificates",
                ..
            })
        ),
        "{e:?}"
    );
}
