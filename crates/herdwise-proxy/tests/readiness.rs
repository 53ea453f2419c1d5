//! Readiness: `/readyz` waits for the warm-up at start (`warm_urls`).

mod common;

use bytes::Bytes;
use common::{Origin, Reply};
use http::Method;

/// `/readyz` waits for the warm-up: 503 while the `warm_urls` are fetched (through the cache,
/// so they are stored), 200 once all were tried; the first client request is then a hit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_waits_for_the_warm_up_and_the_warmed_urls_are_hits() {
    let (origin, upstream) = Origin::start().await;
    // (long enough that the first `/readyz` below comes in before it on a loaded host)
    let slow = std::time::Duration::from_secs(2);
    origin.route(
        "/home",
        Reply::ok("home")
            .header("cache-control", "max-age=600")
            .delay(slow),
    );
    origin.route(
        "/api/top?n=10",
        Reply::ok("top").header("cache-control", "max-age=600"),
    );
    origin.route("/broken", Reply::ok("no").status(500));
    let mut config = common::config(upstream);
    config.warm_urls = vec![
        "http://example.test/home".into(),
        "http://example.test/api/top?n=10".into(),
        "http://example.test/broken".into(),
    ];
    let running = herdwise_proxy::start(config, None).await.unwrap();
    let admin = common::Client::new(running.admin_addr);
    let ready = || async { admin.send(Method::GET, "/readyz", &[], Bytes::new()).await };
    let early = ready().await;
    assert_eq!(early.status, 503, "{}", early.body);
    assert!(early.body.contains("warming"), "{}", early.body);
    let started = std::time::Instant::now();
    while ready().await.status != 200 {
        assert!(
            started.elapsed() < std::time::Duration::from_secs(10),
            "never ready"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let progress = running.warmth.progress();
    assert_eq!((progress.total, progress.tried, progress.failed), (3, 3, 1));
    let client = common::Client::new(running.addr);
    for path in ["/home", "/api/top?n=10"] {
        let answer = client.send(Method::GET, path, &[], Bytes::new()).await;
        assert!(answer.hit(), "{path}: {}", answer.cache_status());
    }
    assert_eq!(origin.hits("/home"), 1);

    // A bad warm-up URL is refused at start, naming the option.
    let mut bad = common::config(upstream);
    bad.warm_urls = vec!["/relative".into()];
    let err = herdwise_proxy::start(bad, None).await.err().unwrap();
    assert!(err.to_string().contains("warm_urls"), "{err}");
}
