//! The verifier: drift between the cache and the origin (a lost invalidation) is found,
//! reported, and repaired on request, within the configured origin load; a change whose
//! invalidation is merely on its way is not drift.

mod common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{counter, OriginError};
use herdwise::{metrics as m, Cache, Error, MemoryStore, VerifyOptions};
use parking_lot::RwLock;

/// An origin whose rows the test changes behind the cache's back.
#[derive(Clone, Default)]
struct Origin {
    rows: Arc<RwLock<HashMap<u64, String>>>,
    loads: Arc<AtomicU64>,
}

impl Origin {
    fn with_rows(n: u64) -> Self {
        let origin = Origin::default();
        for k in 0..n {
            origin.rows.write().insert(k, format!("v{k}"));
        }
        origin
    }
    fn set(&self, k: u64, v: &str) {
        self.rows.write().insert(k, v.to_string());
    }
    fn loads(&self) -> u64 {
        self.loads.load(Ordering::SeqCst)
    }
}

fn cache(
    namespace: &str,
    origin: &Origin,
    options: VerifyOptions,
) -> (Cache<u64, String>, common::Metrics) {
    let origin = origin.clone();
    common::with_metrics(move || {
        Cache::<u64, String>::builder(namespace)
            .store(MemoryStore::new())
            .ttl(Duration::from_secs(3600))
            .loader(move |k: &u64| {
                origin.loads.fetch_add(1, Ordering::SeqCst);
                let v = origin.rows.read().get(k).cloned();
                async move { Ok::<_, OriginError>(v) }
            })
            .verify(options)
    })
}

/// Reads every key once, in a random order (as traffic would: the checks' budget goes to
/// whichever sample comes first), and returns the values in key order.
async fn read_all(cache: &Cache<u64, String>, keys: std::ops::Range<u64>) -> Vec<String> {
    use rand::seq::SliceRandom;
    let mut order: Vec<u64> = keys.collect();
    order.shuffle(&mut rand::rng());
    let mut values = vec![String::new(); order.len()];
    let first = order.iter().copied().min().unwrap_or(0);
    for k in order {
        let v = cache.fetch(&k).await.unwrap();
        values[(k - first) as usize] = v.map(|v| (*v).clone()).unwrap_or_default();
    }
    values
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lost_invalidations_are_found_reported_and_not_repaired_unless_asked() {
    let origin = Origin::with_rows(20);
    let options = VerifyOptions::new(1.0)
        .max_checks_per_second(1_000.0)
        .confirm_after(Duration::from_millis(100));
    let (cache, metrics) = cache("verify-find", &origin, options);
    read_all(&cache, 0..20).await;
    // Writers change five rows and their invalidations are lost.
    for k in 0..5 {
        origin.set(k, "changed");
    }
    let found = common::eventually(Duration::from_secs(5), async || {
        read_all(&cache, 0..20).await;
        cache.verify_report().unwrap().mismatched >= 5
    })
    .await;
    let report = cache.verify_report().unwrap();
    assert!(found, "{report:?}");
    assert!(report.matched > 0, "{report:?}");
    assert!(
        report.drift_ratio > 0.0 && report.drift_ratio < 1.0,
        "{report:?}"
    );
    let changed: Vec<String> = (0..5).map(|k| cache.stored_key(&k).unwrap()).collect();
    assert!(
        report
            .last_mismatches
            .iter()
            .all(|m| changed.contains(&m.key)),
        "only changed rows mismatch: {report:?}"
    );
    assert!(report.last_mismatches.iter().all(|m| !m.repaired));
    assert_eq!(
        counter(&metrics, m::VERIFY_CHECKS, &[("outcome", "mismatch")]),
        report.mismatched
    );
    // Not repaired: the cache still serves what it had.
    assert_eq!(read_all(&cache, 0..1).await, vec!["v0".to_string()]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_repair_the_drift_goes_away() {
    let origin = Origin::with_rows(20);
    let options = VerifyOptions::new(1.0)
        .max_checks_per_second(1_000.0)
        .confirm_after(Duration::from_millis(100))
        .repair(true);
    let (cache, metrics) = cache("verify-repair", &origin, options);
    read_all(&cache, 0..20).await;
    for k in 0..5 {
        origin.set(k, "changed");
    }
    let repaired = common::eventually(Duration::from_secs(5), async || {
        read_all(&cache, 0..5).await.iter().all(|v| v == "changed")
    })
    .await;
    let report = cache.verify_report().unwrap();
    assert!(repaired, "{report:?}");
    assert!(report.last_mismatches.iter().any(|m| m.repaired));
    assert!(counter(&metrics, m::VERIFY_REPAIRS, &[]) >= 1);
    // Once repaired, checks match again.
    let matched = report.matched;
    common::eventually(Duration::from_secs(2), async || {
        read_all(&cache, 0..20).await;
        cache.verify_report().unwrap().matched > matched + 20
    })
    .await;
    assert!(read_all(&cache, 0..5).await.iter().all(|v| v == "changed"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_checks_never_load_the_origin_more_than_configured() {
    let origin = Origin::with_rows(50);
    let options = VerifyOptions::new(1.0).max_checks_per_second(20.0);
    let (cache, _metrics) = cache("verify-budget", &origin, options);
    read_all(&cache, 0..50).await;
    let before = origin.loads();
    let started = std::time::Instant::now();
    while started.elapsed() < Duration::from_secs(1) {
        read_all(&cache, 0..50).await;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let loads = origin.loads() - before;
    let report = cache.verify_report().unwrap();
    eprintln!("{loads} check loads in {elapsed:.2} s; {report:?}");
    assert!(
        loads as f64 <= 20.0 * elapsed + 2.0,
        "{loads} loads in {elapsed:.2} s"
    );
    assert!(loads >= 5, "the checks ran: {report:?}");
    assert!(report.skipped > 0, "the rest was dropped, not queued");
    assert_eq!(report.mismatched, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_whose_invalidation_arrives_is_not_drift() {
    let origin = Origin::with_rows(10);
    let options = VerifyOptions::new(1.0)
        .max_checks_per_second(1_000.0)
        .confirm_after(Duration::from_millis(300));
    let (cache, _metrics) = cache("verify-race", &origin, options);
    read_all(&cache, 0..10).await;
    // The writer updates the row; its invalidation lands 50 ms later.
    origin.set(7, "new");
    read_all(&cache, 7..8).await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    cache.invalidate(&7).await.unwrap();
    tokio::time::sleep(Duration::from_millis(600)).await;
    let report = cache.verify_report().unwrap();
    assert!(report.resolved >= 1, "{report:?}");
    assert_eq!(report.mismatched, 0, "{report:?}");
}

#[test]
fn verification_needs_a_loader_and_sane_options() {
    let without_loader = Cache::<u64, String>::builder("verify-config")
        .verify(VerifyOptions::new(0.1))
        .build();
    assert!(matches!(without_loader, Err(Error::Config(ref m)) if m.contains("loader")));
    let loader = |_: &u64| async { Ok::<_, OriginError>(None::<String>) };
    let bad = Cache::<u64, String>::builder("verify-config")
        .loader(loader)
        .verify(VerifyOptions::new(2.0))
        .build();
    assert!(matches!(bad, Err(Error::Config(ref m)) if m.contains("sample")));
    let plain: Cache<u64, String> = Cache::builder("verify-config").build().unwrap();
    assert!(plain.verify_report().is_none());
}

/// A loader that panics while checking fails that check only: the checking task goes on (it
/// held the pending confirmations), and a tiny rate is refused instead of panicking later.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_loader_fails_one_check_not_the_verifier() {
    let checks = Arc::new(AtomicU64::new(0));
    let seen = checks.clone();
    let cache = Cache::<u64, String>::builder("verify-panic")
        .store(MemoryStore::new())
        .loader(move |k: &u64| {
            let k = *k;
            // The first load of each key (the read) succeeds; checks of key 13 panic.
            let n = seen.fetch_add(1, Ordering::SeqCst);
            async move {
                if k == 13 && n >= 2 {
                    panic!("loader bug");
                }
                Ok::<_, OriginError>(Some(format!("v{k}")))
            }
        })
        .verify(VerifyOptions::new(1.0).max_checks_per_second(1_000.0))
        .build()
        .unwrap();
    cache.fetch(&13).await.unwrap();
    cache.fetch(&14).await.unwrap();
    for _ in 0..3 {
        cache.fetch(&13).await.unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let errors = common::eventually(Duration::from_secs(2), async || {
        cache.verify_report().unwrap().errors >= 1
    })
    .await;
    assert!(errors, "{:?}", cache.verify_report());
    // Still checking after the panics.
    let matched_before = cache.verify_report().unwrap().matched;
    for _ in 0..5 {
        cache.fetch(&14).await.unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let checking = common::eventually(Duration::from_secs(2), async || {
        cache.verify_report().unwrap().matched > matched_before
    })
    .await;
    assert!(checking, "{:?}", cache.verify_report());

    let loader = |_: &u64| async { Ok::<_, OriginError>(None::<String>) };
    let tiny = Cache::<u64, String>::builder("verify-config")
        .loader(loader)
        .verify(VerifyOptions::new(0.5).max_checks_per_second(1e-30))
        .build();
    assert!(matches!(tiny, Err(Error::Config(ref m)) if m.contains("max_checks_per_second")));
}
