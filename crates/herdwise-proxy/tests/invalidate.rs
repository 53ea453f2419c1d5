//! The admin API's namespace invalidations (`POST /invalidate/<namespace>`): a writer in any
//! language (here Python's standard library, and a plain HTTP client) invalidates keys, tags,
//! prefixes and whole namespaces of *services'* caches on the proxy's Redis, and every running
//! instance's L1 hears it. One real Redis, started here.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{Client, Origin, TOKEN};
use herdwise::{Cache, RedisStore, WriteOptions};
use http::Method;

async fn instance(redis: &herdwise_testkit::RedisServer) -> Cache<u64, String> {
    Cache::builder("catalog")
        .store(RedisStore::connect(&redis.url()).await.unwrap())
        .build()
        .unwrap()
}

async fn post(admin: SocketAddr, path: &str, token: Option<&str>) -> common::Answer {
    let bearer = token.map(|t| format!("Bearer {t}"));
    let headers: Vec<(&str, &str)> = bearer
        .as_deref()
        .map(|b| vec![("authorization", b)])
        .unwrap_or_default();
    Client::new(admin)
        .send(Method::POST, path, &headers, Bytes::new())
        .await
}

/// Waits until `cache` no longer has `key` (the backplane is asynchronous). The L2 copy is
/// gone (or rejected by its tag) either way: an instance that missed the event would keep
/// serving its L1 copy, so this fails.
async fn gone(cache: &Cache<u64, String>, key: u64) -> bool {
    let deadline = Instant::now() + Duration::from_secs(3);
    while Instant::now() < deadline {
        if cache.get(&key).await.unwrap().is_none() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    false
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn services_caches_are_invalidated_through_the_admin_api() {
    let redis = herdwise_testkit::RedisServer::start().unwrap();
    let (_origin, upstream) = Origin::start().await;
    let mut config = common::config(upstream);
    config.redis_url = Some(redis.url());
    let proxy = herdwise_proxy::start(config, None).await.unwrap();
    let admin = proxy.admin_addr;

    // Two instances of a service, both holding the entries in L1 — read after both hear the
    // backplane, so their copies are trusted without asking L2 and only the backplane's
    // event can drop them (a copy read while deaf is checked against L2 once, and would make
    // `gone` below pass without any event).
    let (a, b) = (instance(&redis).await, instance(&redis).await);
    a.get(&0).await.unwrap();
    b.get(&0).await.unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    for key in [42u64, 43, 7] {
        let opts =
            WriteOptions::default().tags(["category:shoes"].into_iter().filter(|_| key == 7));
        a.set_with(&key, format!("v{key}"), &opts).await.unwrap();
        assert_eq!(
            b.get(&key).await.unwrap().as_deref().map(String::as_str),
            Some(&*format!("v{key}"))
        );
    }

    // A key, from Python's standard library (no Herdwise client at all).
    let script = format!(
        "import urllib.request as u\n\
         r = u.Request('http://{admin}/invalidate/catalog?key=42', method='POST',\n\
             headers={{'Authorization': 'Bearer {TOKEN}'}})\n\
         print(u.urlopen(r).read().decode())"
    );
    let out = tokio::process::Command::new("python3")
        .args(["-c", &script])
        .output()
        .await
        .expect("python3 (scripts/test installs it)");
    let printed = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{printed} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(printed.contains("\"keys\":[\"catalog:"), "{printed}");
    assert!(printed.contains("\"unconfirmed\":0"), "{printed}");
    assert!(
        gone(&a, 42).await && gone(&b, 42).await,
        "key 42 still cached"
    );
    assert_eq!(
        b.get(&43).await.unwrap().as_deref().map(String::as_str),
        Some("v43")
    );

    // A tag.
    let r = post(
        admin,
        "/invalidate/catalog?tag=category%3Ashoes",
        Some(TOKEN),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(
        gone(&a, 7).await && gone(&b, 7).await,
        "tagged key 7 still cached"
    );
    assert!(b.get(&43).await.unwrap().is_some());

    // A prefix of a tuple-keyed cache, by whole parts: user 17, not user 170.
    let recs: Cache<(u64, String), String> = Cache::builder("recs")
        .store(RedisStore::connect(&redis.url()).await.unwrap())
        .build()
        .unwrap();
    for (user, item) in [(17u64, "a"), (17, "b"), (170, "a")] {
        recs.set(&(user, item.to_string()), "r".to_string())
            .await
            .unwrap();
    }
    let r = post(admin, "/invalidate/recs?prefix=17", Some(TOKEN)).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(r.body.contains("\"removed\":2"), "{}", r.body);
    // The L2 keys are gone now; the L1 copy when the backplane delivers.
    let deadline = Instant::now() + Duration::from_secs(3);
    while recs.get(&(17, "a".to_string())).await.unwrap().is_some() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(recs.get(&(17, "a".to_string())).await.unwrap().is_none());
    assert!(recs.get(&(170, "a".to_string())).await.unwrap().is_some());

    // The whole namespace.
    let r = post(admin, "/invalidate/catalog?clear=true", Some(TOKEN)).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(
        gone(&a, 43).await && gone(&b, 43).await,
        "clear left key 43"
    );

    // Refused: no token, a wrong token, bad input; nothing sent.
    b.set(&1, "kept".to_string()).await.unwrap();
    assert_eq!(
        post(admin, "/invalidate/catalog?key=1", None).await.status,
        403
    );
    assert_eq!(
        post(admin, "/invalidate/catalog?key=1", Some("not-the-token"))
            .await
            .status,
        403
    );
    for bad in [
        "/invalidate/catalog?key=a%01b",
        "/invalidate/catalog?tag=",
        "/invalidate/catalog?frobnicate=1",
        "/invalidate/catalog",
        "/invalidate/?key=1",
        "/invalidate/catalog?clear=maybe",
        "/invalidate/catalog?key=1&transport=carrier-pigeon",
        "/invalidate/catalog?key=1&timeout_ms=99999999",
        "/invalidate/catalog?key=1%FF",
        "/invalidate/catalog?key=50%25",
        "/invalidate/catalog?key=1&hot_key_replicas=300",
        "/invalidate/bad%20namespace?key=1",
    ] {
        let r = post(admin, bad, Some(TOKEN)).await;
        assert_eq!(r.status, 400, "{bad}: {}", r.body);
        assert!(r.body.contains("\"error\""), "{bad}: {}", r.body);
    }
    assert_eq!(
        b.get(&1).await.unwrap().as_deref().map(String::as_str),
        Some("kept")
    );

    // A proxy on an embedded store has nobody to tell.
    let (_origin2, upstream2) = Origin::start().await;
    let lonely = herdwise_proxy::start(common::config(upstream2), None)
        .await
        .unwrap();
    let r = post(lonely.admin_addr, "/invalidate/catalog?key=1", Some(TOKEN)).await;
    assert_eq!(r.status, 409, "{}", r.body);
}
