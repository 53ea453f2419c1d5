//! Redis Sentinel: the store finds the primary through real sentinels (with passwords on the
//! data nodes and on the sentinels), and follows it when the sentinels fail it over, while
//! instances keep answering and their L1s stay coherent.

mod common;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::OriginError;
use herdwise::{Cache, RedisStore, StoreError, WriteOutcome};
use herdwise_testkit::SentinelSet;

const DATA_PW: &str = "data-secret";
const SENTINEL_PW: &str = "sentinel-secret";

async fn store(set: &SentinelSet) -> RedisStore {
    RedisStore::builder(&set.url(&format!(":{DATA_PW}")))
        .sentinel_credentials(None, SENTINEL_PW)
        .call_timeout(Duration::from_millis(200))
        .connect()
        .await
        .expect("connect through the sentinels")
}

async fn cache(set: &SentinelSet) -> Cache<u64, String> {
    Cache::builder("sen")
        .store(store(set).await)
        .build()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_and_the_service_name_are_checked_at_connect() {
    let set = SentinelSet::start_with(Some(DATA_PW), Some(SENTINEL_PW)).unwrap();
    let connect = |url: String, sentinel_pw: Option<&'static str>| async move {
        let mut builder = RedisStore::builder(&url);
        if let Some(pw) = sentinel_pw {
            builder = builder.sentinel_credentials(None, pw);
        }
        builder.connect().await
    };
    let good = set.url(&format!(":{DATA_PW}"));
    assert!(connect(good.clone(), Some(SENTINEL_PW)).await.is_ok());
    // The sentinels refuse a client without their password: no primary is named.
    let e = connect(good.clone(), None).await.unwrap_err();
    assert!(
        matches!(&e, StoreError::Connect { reason, .. } if reason.contains("no sentinel answered")),
        "{e}"
    );
    // The data node refuses a wrong password.
    let e = connect(set.url(":wrong"), Some(SENTINEL_PW))
        .await
        .unwrap_err();
    assert!(matches!(e, StoreError::Connect { .. }), "{e}");
    // No password for the data node at all.
    let e = connect(set.url(""), Some(SENTINEL_PW)).await.unwrap_err();
    assert!(
        matches!(&e, StoreError::Connect { reason, .. } if reason.contains("requires a password")),
        "{e}"
    );
    let e = connect(
        good.replace("/herdwise", "/no-such-service"),
        Some(SENTINEL_PW),
    )
    .await
    .unwrap_err();
    assert!(matches!(e, StoreError::Connect { .. }), "{e}");
    // The README's ACL rule, on both data nodes (ACLs are not replicated), is enough.
    for port in set.data_ports() {
        let rule = format!("documented on >pw {}", common::DOCUMENTED_ACL);
        let mut args = vec!["acl", "setuser"];
        args.extend(rule.split(' '));
        assert_eq!(set.data_cli(port, &args).unwrap().trim(), "OK");
    }
    let store = connect(set.url("documented:pw"), Some(SENTINEL_PW))
        .await
        .expect("the documented ACL rule connects behind Sentinel");
    let cache: Cache<u64, String> = Cache::builder("sen-acl").store(store).build().unwrap();
    cache.set(&1, "one".to_string()).await.unwrap();
    cache.invalidate_tag("t").await.unwrap();
    cache.clear().await.unwrap();
    assert_eq!(cache.get(&1).await.unwrap(), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failover_is_followed_and_reads_never_fail() {
    let mut set = SentinelSet::start_with(Some(DATA_PW), Some(SENTINEL_PW)).unwrap();
    let mut fleet = Vec::new();
    for _ in 0..4 {
        fleet.push(Arc::new(cache(&set).await));
    }
    for key in 0..50u64 {
        fleet[0].set(&key, format!("v{key}")).await.unwrap();
    }
    let failed = Arc::new(AtomicU64::new(0));
    let reads = Arc::new(AtomicU64::new(0));
    let loads = Arc::new(AtomicU64::new(0));
    let stop = Instant::now() + Duration::from_secs(12);
    let mut readers = Vec::new();
    for (i, cache) in fleet.iter().enumerate() {
        let (cache, failed, reads, loads) =
            (cache.clone(), failed.clone(), reads.clone(), loads.clone());
        readers.push(tokio::spawn(async move {
            let mut n = i as u64;
            while Instant::now() < stop {
                n = n
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                let key = (n >> 33) % 50;
                let loads = loads.clone();
                let got = cache
                    .get_or_load(&key, move |k| {
                        loads.fetch_add(1, Ordering::Relaxed);
                        let v = format!("v{k}");
                        async move { Ok::<_, OriginError>(Some(v)) }
                    })
                    .await;
                reads.fetch_add(1, Ordering::Relaxed);
                if got.is_err() {
                    failed.fetch_add(1, Ordering::Relaxed);
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        }));
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let old = set.primary_port().unwrap();
    let killed_at = Instant::now();
    let new = tokio::task::spawn_blocking(move || {
        let new = set.fail_over();
        (set, new)
    })
    .await
    .unwrap();
    let (set, new) = new;
    let new = new.expect("the sentinels promote the replica");
    assert_ne!(old, new);
    // Writes land on the new primary once the store has followed it.
    let mut followed = None;
    while killed_at.elapsed() < Duration::from_secs(15) {
        if matches!(
            fleet[1].set(&999, "after".to_string()).await,
            Ok(WriteOutcome::Stored)
        ) {
            followed = Some(killed_at.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let followed = followed.expect("a write succeeded after the failover");
    // The writes that failed during the failover left deletes to retry; one already on the
    // wire when the newer write landed may still remove it from L2 (a miss, which the origin
    // would answer; these reads have no loader). Once they have landed, the write is made once
    // more: that is the one every instance must then read through L2 and the backplane.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        fleet[1].set(&999, "after".to_string()).await.unwrap(),
        WriteOutcome::Stored
    );
    let keys = set.data_cli(new, &["dbsize"]).unwrap();
    assert!(
        keys.trim().parse::<u64>().unwrap_or(0) > 0,
        "the new primary holds data: {keys}"
    );
    // Every instance sees the write (L2 on the new primary, the backplane there too).
    for (i, cache) in fleet.iter().enumerate() {
        let t = Instant::now();
        let seen = common::eventually(Duration::from_secs(20), async || {
            cache
                .get(&999)
                .await
                .unwrap()
                .as_deref()
                .map(String::as_str)
                == Some("after")
        })
        .await;
        eprintln!(
            "instance {i}: seen={seen} after {:?} (breaker {:?})",
            t.elapsed(),
            cache.breaker_state()
        );
        assert!(
            seen,
            "an instance did not read the write made after the failover"
        );
    }
    fleet[2].set(&7, "changed".to_string()).await.unwrap();
    for cache in &fleet {
        assert!(
            common::eventually(Duration::from_secs(3), async || {
                cache.get(&7).await.unwrap().as_deref().map(String::as_str) == Some("changed")
            })
            .await,
            "an instance kept an old value in L1 after the failover"
        );
    }
    for reader in readers {
        reader.await.unwrap();
    }
    eprintln!(
        "sentinel failover: {} reads, {} failed, {} origin loads, writes resumed {followed:?} \
         after the kill",
        reads.load(Ordering::Relaxed),
        failed.load(Ordering::Relaxed),
        loads.load(Ordering::Relaxed)
    );
    assert_eq!(
        failed.load(Ordering::Relaxed),
        0,
        "reads failed during the failover"
    );
}

/// TLS to the sentinels and to the data nodes, with the CA given to the store (no system
/// trust, no insecure switch): discovery, caching, and following a failover.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_reaches_both_the_sentinels_and_the_data_nodes() {
    let material =
        herdwise_testkit::TlsMaterial::generate_for(&["localhost", "127.0.0.1"]).unwrap();
    let mut set = SentinelSet::start_tls(&material).unwrap();
    let url = set.url("");
    assert!(url.starts_with("rediss+sentinel://"), "{url}");
    let connect = || async {
        RedisStore::builder(&url)
            .tls_root_certificate(material.ca_pem.clone())
            .call_timeout(Duration::from_millis(200))
            .connect()
            .await
    };
    let store = connect()
        .await
        .expect("connect over TLS through the sentinels");
    let cache: Cache<u64, String> = Cache::builder("sen-tls").store(store).build().unwrap();
    cache.set(&1, "one".to_string()).await.unwrap();
    let reader: Cache<u64, String> = Cache::builder("sen-tls")
        .store(connect().await.unwrap())
        .build()
        .unwrap();
    assert_eq!(
        reader.get(&1).await.unwrap().as_deref().map(String::as_str),
        Some("one")
    );
    // Without the CA, the sentinels' certificates are not trusted: a clear error at connect.
    let refused = RedisStore::builder(&url).connect().await;
    assert!(
        matches!(&refused, Err(StoreError::Connect { reason, .. }) if reason.contains("certificate")),
        "the error names the certificate: {refused:?}"
    );
    // After a failover the store follows the new primary, over TLS.
    set.fail_over().unwrap();
    let followed = common::eventually(Duration::from_secs(15), async || {
        matches!(
            cache.set(&2, "two".to_string()).await,
            Ok(WriteOutcome::Stored)
        )
    })
    .await;
    assert!(followed, "writes reach the promoted primary over TLS");
}
