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

fn config_file(port: u16, admin: u16, upstream: std::net::SocketAddr, token: &str) -> String {
    format!(
        r#"
        listen = "127.0.0.1:{port}"
        admin_listen = "127.0.0.1:{admin}"
        admin_token = "{token}"
        [[origin]]
        hosts = ["example.test"]
        upstream = "http://{upstream}"
        "#
    )
}

/// The binary, as operators run it: `SIGHUP` reads the file again and applies it to new
/// requests (here: another upstream, another purge token); a broken file is refused and the
/// running configuration kept; `SIGTERM` stops it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_the_config_file_and_keeps_the_running_one_if_it_is_bad() {
    let (a, upstream_a) = Origin::start().await;
    let (b, upstream_b) = Origin::start().await;
    for (origin, name) in [(&a, "from-a"), (&b, "from-b")] {
        for path in ["/1", "/3"] {
            origin.route(path, Reply::ok(name).header("cache-control", "max-age=600"));
        }
        // Never stored: every probe asks the origin in force.
        origin.route(
            "/probe",
            Reply::ok(name).header("cache-control", "no-store"),
        );
    }
    let dir = herdwise_testkit::scratch_dir("proxy-reload").unwrap();
    let file = dir.join("proxy.toml");
    let (port, admin) = (
        herdwise_testkit::free_port().unwrap(),
        herdwise_testkit::free_port().unwrap(),
    );
    let (old_token, new_token) = (
        "the-old-token-of-some-length",
        "the-new-token-of-some-length",
    );
    std::fs::write(&file, config_file(port, admin, upstream_a, old_token)).unwrap();
    /// Kills the proxy if the test ends early (a failed assertion).
    struct Reaped(std::process::Child);
    impl Drop for Reaped {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let mut child = Reaped(
        std::process::Command::new(env!("CARGO_BIN_EXE_herdwise-proxy"))
            .arg("--config")
            .arg(&file)
            .env_remove("REDIS_URL")
            .env("RUST_LOG", "warn")
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    let pid = child.0.id().to_string();
    let client = common::Client::new(([127, 0, 0, 1], port).into());
    let admin_client = common::Client::new(([127, 0, 0, 1], admin).into());
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while tokio::net::TcpStream::connect(("127.0.0.1", admin))
        .await
        .is_err()
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the proxy did not start"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let body = |path: &'static str| {
        let client = client.clone();
        async move { client.send(Method::GET, path, &[], Bytes::new()).await.body }
    };
    let purge_with = |token: &'static str| {
        let admin_client = admin_client.clone();
        async move {
            let bearer = format!("Bearer {token}");
            admin_client
                .send(
                    Method::POST,
                    "/purge/all",
                    &[("authorization", bearer.as_str())],
                    Bytes::new(),
                )
                .await
                .status
        }
    };
    assert_eq!(body("/1").await, "from-a");
    assert_eq!(purge_with(old_token).await, 200);

    std::fs::write(&file, config_file(port, admin, upstream_b, new_token)).unwrap();
    let hup = |pid: &str| {
        std::process::Command::new("kill")
            .args(["-HUP", pid])
            .status()
            .unwrap()
    };
    assert!(hup(&pid).success());
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while body("/probe").await != "from-b" {
        assert!(
            std::time::Instant::now() < deadline,
            "the reload did not apply"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(purge_with(old_token).await, 403);
    assert_eq!(purge_with(new_token).await, 200);

    // A broken file: refused, the running configuration (B, the new token) kept.
    std::fs::write(&file, "listen = 12").unwrap();
    assert!(hup(&pid).success());
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert_eq!(body("/3").await, "from-b");
    assert_eq!(purge_with(new_token).await, 200);

    std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap();
    let status = child.0.wait().unwrap();
    assert!(status.success(), "{status}");
    let _ = std::fs::remove_dir_all(&dir);
}
