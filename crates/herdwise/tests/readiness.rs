//! Readiness that can include the remote tier's health: a Redis that is frozen, or that
//! answers every call with `NOAUTH` (its password changed under a running service), is not
//! reported healthy — before, such a cache reported itself warm and ready.

mod common;

use std::time::Duration;

use herdwise::{Cache, ReadinessProbe};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_can_require_a_remote_tier_that_answers() {
    let server = common::redis();
    let store = herdwise::RedisStore::builder(&server.url())
        .call_timeout(Duration::from_millis(200))
        .connect()
        .await
        .unwrap();
    let cache: Cache<u64, u64> = Cache::builder("ready")
        .store(store)
        .store_timeout(Duration::from_millis(200))
        .no_circuit_breaker()
        .build()
        .unwrap();
    cache
        .warm_with([1, 2, 3], |id: &u64| {
            let id = *id;
            async move { Ok::<_, std::io::Error>(Some(id)) }
        })
        .await
        .unwrap();
    let both = ReadinessProbe::new().require_warm().require_remote();
    assert!(cache.is_ready(&both).await);

    // Frozen: no answer within the deadline.
    server.pause().unwrap();
    assert!(
        !cache.remote_healthy().await,
        "a frozen Redis is not healthy"
    );
    assert!(!cache.is_ready(&both).await);
    assert!(
        cache.is_ready(&ReadinessProbe::new().require_warm()).await,
        "warm-only readiness does not depend on Redis"
    );
    server.resume().unwrap();
    let back = common::eventually(Duration::from_secs(5), async || {
        cache.remote_healthy().await
    })
    .await;
    assert!(back, "healthy again once Redis answers");

    // The password changes under the running service: every reconnected call gets NOAUTH.
    let mut raw = common::raw(&server).await;
    let () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("requirepass")
        .arg("rotated-secret")
        .query_async(&mut raw)
        .await
        .unwrap();
    let _: redis::RedisResult<u64> = redis::cmd("CLIENT")
        .arg("KILL")
        .arg("TYPE")
        .arg("normal")
        .arg("SKIPME")
        .arg("yes")
        .query_async(&mut raw)
        .await;
    let refused = common::eventually(Duration::from_secs(5), async || {
        !cache.remote_healthy().await
    })
    .await;
    assert!(refused, "a Redis answering NOAUTH is not healthy");
    assert!(!cache.is_ready(&both).await);
    // Reads still work (from the origin): only the probe that asks for Redis says no.
    let got = cache
        .get_or_load(&9, |_| async { Ok::<_, std::io::Error>(Some(9)) })
        .await
        .unwrap();
    assert_eq!(got.as_deref(), Some(&9));
}
