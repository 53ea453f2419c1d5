//! Operating the proxy: its Prometheus metrics on the admin listener (requests by cache
//! outcome, latency, origin load, purges, the library's own series). Its own test binary: the
//! exporter is the process's one recorder.

mod common;

use bytes::Bytes;
use common::{Origin, Reply, TOKEN};
use http::Method;

/// The value of the series `name{labels}` in a Prometheus text rendering.
fn series(text: &str, name: &str, labels: &str) -> Option<f64> {
    let wanted = format!("{name}{{{labels}}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&wanted))
        .and_then(|v| v.trim().parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_outcomes_latency_origin_load_and_purges() {
    let prometheus = herdwise::prometheus::install().unwrap();
    let (origin, upstream) = Origin::start().await;
    origin.route(
        "/a",
        Reply::ok("a")
            .header("cache-control", "max-age=600")
            .header("surrogate-key", "k"),
    );
    origin.route(
        "/nostore",
        Reply::ok("n").header("cache-control", "no-store"),
    );
    let running = herdwise_proxy::start(common::config(upstream), Some(prometheus))
        .await
        .unwrap();
    let client = common::Client::new(running.addr);
    let get = |path: &'static str| {
        let client = client.clone();
        async move { client.send(Method::GET, path, &[], Bytes::new()).await }
    };
    assert!(!get("/a").await.hit());
    for _ in 0..3 {
        assert!(get("/a").await.hit());
    }
    get("/nostore").await;
    let admin = common::Client::new(running.admin_addr);
    let bearer = format!("Bearer {TOKEN}");
    let purged = admin
        .send(
            Method::POST,
            "/purge/tag/k",
            &[("authorization", bearer.as_str())],
            Bytes::new(),
        )
        .await;
    assert_eq!(purged.status, 200, "{}", purged.body);
    assert!(!get("/a").await.hit());

    let rendered = admin.send(Method::GET, "/metrics", &[], Bytes::new()).await;
    assert_eq!(rendered.status, 200);
    let text = rendered.body;
    let requests = |outcome: &str| {
        series(
            &text,
            "herdwise_proxy_requests_total",
            &format!("cache_status=\"{outcome}\""),
        )
    };
    assert_eq!(requests("hit"), Some(3.0), "{text}");
    assert_eq!(requests("miss"), Some(2.0), "{text}");
    assert_eq!(requests("uncached"), Some(1.0), "{text}");
    assert_eq!(
        series(
            &text,
            "herdwise_proxy_request_duration_seconds_count",
            "cache_status=\"hit\""
        ),
        Some(3.0),
        "{text}"
    );
    assert_eq!(
        series(
            &text,
            "herdwise_proxy_origin_requests_total",
            "status=\"2xx\""
        ),
        Some(3.0),
        "{text}"
    );
    assert_eq!(
        series(&text, "herdwise_proxy_purges_total", "kind=\"tag\""),
        Some(1.0),
        "{text}"
    );
    // The library's own series, for the same cache.
    assert!(text.contains("herdwise_cache_gets_total{"), "{text}");
    running.shutdown().await;
}
