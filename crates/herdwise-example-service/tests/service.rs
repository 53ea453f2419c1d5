//! The example service end to end: two instances over one real PostgreSQL and one real Redis
//! (both started here on free loopback ports), driven over HTTP as a client would.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use herdwise_example_service::{client, App, Product, CATEGORIES};
use herdwise_testkit::{PostgresServer, RedisServer};

async fn get(addr: SocketAddr, path: &str) -> (u16, String) {
    client::request(addr, "GET", path, None)
        .await
        .unwrap_or_else(|e| panic!("GET {path}: {e}"))
}

async fn send(addr: SocketAddr, method: &str, path: &str, json: &str) -> (u16, String) {
    client::request(addr, method, path, Some(json))
        .await
        .unwrap_or_else(|e| panic!("{method} {path}: {e}"))
}

async fn product(addr: SocketAddr, id: i64) -> Product {
    let (status, body) = get(addr, &format!("/products/{id}")).await;
    assert_eq!(status, 200, "GET /products/{id}: {body}");
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("{body}: {e}"))
}

/// Polls `addr` until product `id` satisfies `done` (the backplane is asynchronous).
async fn eventually(addr: SocketAddr, id: i64, done: impl Fn(&Product) -> bool) -> Product {
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let p = product(addr, id).await;
        if done(&p) || Instant::now() >= deadline {
            return p;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_read_through_write_around_and_invalidate_by_tag() {
    let postgres = PostgresServer::start().expect("postgres");
    let mut redis = RedisServer::start().expect("redis-server");
    let prometheus = herdwise::prometheus::install().expect("the test's one recorder");
    let a = App::connect(&postgres.url(), &redis.url(), Some(prometheus))
        .await
        .expect("instance a");
    let b = App::connect(&postgres.url(), &redis.url(), None)
        .await
        .expect("instance b");
    a.migrate_and_seed(200).await.expect("seed");
    assert_eq!(a.warm(50).await.expect("warm a"), 50);
    // B finds A's warm entries in Redis: nothing loaded from PostgreSQL.
    b.warm(50).await.expect("warm b");
    assert_eq!(b.origin_reads(), 0, "b warmed from L2");
    let (a_addr, _a_task) = herdwise_example_service::spawn(([127, 0, 0, 1], 0).into(), a.clone())
        .await
        .expect("serve a");
    let (b_addr, _b_task) = herdwise_example_service::spawn(([127, 0, 0, 1], 0).into(), b.clone())
        .await
        .expect("serve b");

    // Liveness and readiness.
    assert_eq!(get(a_addr, "/healthz").await.0, 200);
    let (status, body) = get(a_addr, "/readyz").await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("\"cache_ready\":true"), "{body}");
    assert!(body.contains("\"redis\":true"), "{body}");

    // Read-through: the seed row as PostgreSQL has it.
    let p7 = product(a_addr, 7).await;
    assert_eq!(
        (p7.id, p7.price_cents, p7.category.as_str()),
        (7, 700, CATEGORIES[7 % 4])
    );
    assert!(!p7.updated_at.is_empty());

    // A cold key read by 32 concurrent clients: one SELECT; B then reads it from Redis.
    let before = a.origin_reads();
    let readers: Vec<_> = (0..32)
        .map(|_| tokio::spawn(async move { product(a_addr, 150).await }))
        .collect();
    for r in readers {
        assert_eq!(r.await.expect("reader").price_cents, 15_000);
    }
    assert_eq!(a.origin_reads() - before, 1, "one SELECT for 32 readers");
    assert_eq!(product(b_addr, 150).await.price_cents, 15_000);
    assert_eq!(b.origin_reads(), 0, "b served product 150 from L2");

    // An absent product is a 404, remembered: the second read does not query.
    let before = a.origin_reads();
    assert_eq!(get(a_addr, "/products/100000").await.0, 404);
    assert_eq!(get(a_addr, "/products/100000").await.0, 404);
    assert_eq!(
        a.origin_reads() - before,
        1,
        "the absent product was remembered"
    );

    // Write-around on A reaches B's L1 (B holds product 150 from the read above).
    let (status, body) = send(a_addr, "PUT", "/products/150", r#"{"price_cents": 12345}"#).await;
    assert_eq!(status, 204, "{body}");
    let on_b = eventually(b_addr, 150, |p| p.price_cents == 12_345).await;
    assert_eq!(on_b.price_cents, 12_345, "b still serves the old price");
    assert_ne!(
        on_b.updated_at, p7.updated_at,
        "updated_at is the database's new one"
    );
    assert_eq!(product(a_addr, 150).await.price_cents, 12_345);
    assert_eq!(
        send(a_addr, "PUT", "/products/100001", r#"{"price_cents": 1}"#)
            .await
            .0,
        404
    );

    // Tag invalidation: B holds shoes 4 and 8 (warmed); one discount on A reaches both.
    let shoes = CATEGORIES[0];
    assert_eq!(product(b_addr, 4).await.category, shoes);
    assert_eq!(product(b_addr, 8).await.price_cents, 800);
    let (status, body) = send(
        a_addr,
        "POST",
        &format!("/categories/{shoes}/discount"),
        r#"{"percent": 10}"#,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("\"updated\":50"), "{body}");
    assert_eq!(
        eventually(b_addr, 4, |p| p.price_cents == 360)
            .await
            .price_cents,
        360
    );
    assert_eq!(
        eventually(b_addr, 8, |p| p.price_cents == 720)
            .await
            .price_cents,
        720
    );
    // Other categories keep their cached entries: served without a SELECT.
    let before = b.origin_reads();
    assert_eq!(product(b_addr, 7).await.price_cents, 700);
    assert_eq!(
        b.origin_reads(),
        before,
        "product 7 was dropped with the shoes"
    );

    // Bad input: a clear 4xx, nothing written.
    for (method, path, json, expected) in [
        ("PUT", "/products/7", r#"{"price_cents": -1}"#, 422),
        (
            "PUT",
            "/products/7",
            r#"{"price_cents": 9223372036854775807}"#,
            422,
        ),
        ("PUT", "/products/7", r#"{"category": "Shoes!"}"#, 422),
        ("PUT", "/products/7", r#"{"name": ""}"#, 422),
        ("PUT", "/products/7", r#"not json"#, 400),
        (
            "POST",
            "/categories/shoes/discount",
            r#"{"percent": 0}"#,
            422,
        ),
        (
            "POST",
            "/categories/SHOES/discount",
            r#"{"percent": 5}"#,
            422,
        ),
    ] {
        let (status, body) = send(a_addr, method, path, json).await;
        assert_eq!(status, expected, "{method} {path} {json}: {body}");
    }
    assert_eq!(get(a_addr, "/products/seven").await.0, 400);
    assert_eq!(product(a_addr, 7).await, p7, "nothing was written");

    // Metrics: the reads above, counted.
    let (status, scrape) = get(a_addr, "/metrics").await;
    assert_eq!(status, 200);
    let reads = |result: &str| -> f64 {
        scrape
            .lines()
            .filter(|l| l.starts_with("herdwise_cache_gets_total{"))
            .filter(|l| l.contains(&format!("result=\"{result}\"")))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    };
    let all: f64 = [
        "l1_hit",
        "l2_hit",
        "miss",
        "negative",
        "stale",
        "error",
        "cancelled",
    ]
    .iter()
    .map(|r| reads(r))
    .sum();
    assert!(all >= 40.0, "{all} reads counted\n{scrape}");
    assert!(reads("l1_hit") >= 1.0, "no L1 hit counted\n{scrape}");
    assert!(reads("negative") >= 1.0, "the 404 not counted\n{scrape}");

    // Redis gone: still ready (L1 and PostgreSQL serve; an outage of the shared tier must not
    // take every instance out at once), Redis reported down, still serving from L1.
    redis.kill();
    let deadline = Instant::now() + Duration::from_secs(5);
    let (status, body) = loop {
        let (status, body) = get(a_addr, "/readyz").await;
        if body.contains("\"redis\":false") || Instant::now() >= deadline {
            break (status, body);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(body.contains("\"redis\":false"), "{body}");
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("\"cache_ready\":true"), "{body}");
    assert_eq!(get(a_addr, "/healthz").await.0, 200);
    let before = a.origin_reads();
    assert_eq!(
        product(a_addr, 7).await.price_cents,
        700,
        "served through the outage"
    );
    assert_eq!(a.origin_reads(), before, "from L1, not PostgreSQL");
    drop(postgres);
}
