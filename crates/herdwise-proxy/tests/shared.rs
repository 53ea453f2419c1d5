//! Four proxies sharing one real Redis (started by the test, killed by PID): one origin
//! request per expiry across all of them, and invalidations (unsafe methods, purges) that
//! reach every instance through the library's backplane; with Redis killed, they keep serving.

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::{Client, Origin, Reply, TOKEN};
use http::Method;

struct Fleet {
    origin: Origin,
    proxies: Vec<herdwise_proxy::Running>,
    clients: Vec<Client>,
}

async fn fleet(redis: &herdwise_testkit::RedisServer, n: usize) -> Fleet {
    let (origin, upstream) = Origin::start().await;
    let mut proxies = Vec::new();
    let mut clients = Vec::new();
    for _ in 0..n {
        let mut config = common::config(upstream);
        config.redis_url = Some(redis.url());
        config.namespace = "shared-http".into();
        let running = herdwise_proxy::start(config, None).await.unwrap();
        clients.push(Client::new(running.addr));
        proxies.push(running);
    }
    Fleet {
        origin,
        proxies,
        clients,
    }
}

async fn burst(fleet: &Fleet, path: &'static str, per_proxy: usize) -> Vec<common::Answer> {
    let mut tasks = Vec::new();
    for client in &fleet.clients {
        for _ in 0..per_proxy {
            let client = client.clone();
            tasks.push(tokio::spawn(async move {
                client.send(Method::GET, path, &[], Bytes::new()).await
            }));
        }
    }
    let mut out = Vec::new();
    for t in tasks {
        out.push(t.await.unwrap());
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_origin_request_per_expiry_across_four_proxies() {
    let redis = herdwise_testkit::RedisServer::start().unwrap();
    let fleet = fleet(&redis, 4).await;
    fleet.origin.script("/hot", |_, n| {
        Reply::ok(&format!("v{n}"))
            .header("cache-control", "max-age=1")
            .delay(Duration::from_millis(150))
    });
    for r in burst(&fleet, "/hot", 25).await {
        assert_eq!((r.status, r.body.as_str()), (200, "v1"));
    }
    assert_eq!(
        fleet.origin.hits("/hot"),
        1,
        "cold: one request for 100 across 4 proxies"
    );
    tokio::time::sleep(Duration::from_millis(2_100)).await;
    for r in burst(&fleet, "/hot", 25).await {
        assert_eq!((r.status, r.body.as_str()), (200, "v2"));
    }
    assert_eq!(fleet.origin.hits("/hot"), 2, "expired: one more");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalidations_reach_every_proxy() {
    let redis = herdwise_testkit::RedisServer::start().unwrap();
    let fleet = fleet(&redis, 3).await;
    fleet.origin.script("/item", |seen, n| {
        if seen.method == Method::GET {
            Reply::ok(&format!("v{n}"))
                .header("cache-control", "max-age=600")
                .header("surrogate-key", "items")
        } else {
            Reply::ok("saved")
        }
    });
    for c in &fleet.clients {
        c.send(Method::GET, "/item", &[], Bytes::new()).await;
        assert!(c.send(Method::GET, "/item", &[], Bytes::new()).await.hit());
    }
    assert_eq!(
        fleet.origin.hits("/item"),
        1,
        "filled once, shared through Redis"
    );
    // A write through proxy 0: every proxy's copy goes.
    fleet.clients[0]
        .send(Method::PUT, "/item", &[], Bytes::from("new"))
        .await;
    for (i, c) in fleet.clients.iter().enumerate() {
        let fresh = common_eventually(|| async {
            !c.send(
                Method::GET,
                "/item",
                &[("cache-control", "only-if-cached")],
                Bytes::new(),
            )
            .await
            .body
            .starts_with("v1")
        })
        .await;
        assert!(fresh, "proxy {i} still served the old response");
    }
    // A purge by surrogate key on proxy 2's admin API: every proxy misses.
    for c in &fleet.clients {
        c.send(Method::GET, "/item", &[], Bytes::new()).await;
    }
    let admin = Client::new(fleet.proxies[2].admin_addr);
    let bearer = format!("Bearer {TOKEN}");
    let r = admin
        .send(
            Method::POST,
            "/purge/tag/items",
            &[("authorization", &bearer)],
            Bytes::new(),
        )
        .await;
    assert_eq!(r.status, 200);
    for (i, c) in fleet.clients.iter().enumerate() {
        let gone = common_eventually(|| async {
            c.send(
                Method::GET,
                "/item",
                &[("cache-control", "only-if-cached")],
                Bytes::new(),
            )
            .await
            .status
                == 504
        })
        .await;
        assert!(gone, "proxy {i} kept a purged response");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_redis_dead_the_proxies_keep_serving() {
    let mut redis = herdwise_testkit::RedisServer::start().unwrap();
    let fleet = fleet(&redis, 2).await;
    fleet.origin.script("/r", |_, n| {
        Reply::ok(&format!("v{n}")).header("cache-control", "max-age=600")
    });
    fleet.origin.script("/cold", |_, n| {
        Reply::ok(&format!("c{n}")).header("cache-control", "max-age=600")
    });
    fleet.clients[0]
        .send(Method::GET, "/r", &[], Bytes::new())
        .await;
    redis.kill();
    for c in &fleet.clients {
        for _ in 0..20 {
            let r = c.send(Method::GET, "/r", &[], Bytes::new()).await;
            assert_eq!(r.status, 200);
            let r = c.send(Method::GET, "/cold", &[], Bytes::new()).await;
            assert_eq!(r.status, 200);
        }
    }
    // Each proxy loaded what it could not share once (its L1 holds it, tags and all: before
    // the library kept tagged L1 entries as fallbacks, each of these 80 reads went to the
    // origin).
    for path in ["/r", "/cold"] {
        assert!(
            fleet.origin.hits(path) <= 2,
            "{path}: {}",
            fleet.origin.hits(path)
        );
    }
}

async fn common_eventually<F, Fut>(check: F) -> bool
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = std::time::Instant::now() + Duration::from_secs(3);
    while std::time::Instant::now() < deadline {
        if check().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    false
}
