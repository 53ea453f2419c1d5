//! The proxy's defenses (seed 004): only what the origin marks cacheable is stored, never
//! `Set-Cookie` or a personalised response, web cache deception and unkeyed-header poisoning
//! fail, unknown hosts are refused, purges need the token, and the limits hold (URL, header,
//! body sizes; a slow client).

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::{Reply, Rig, TOKEN};
use http::Method;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[tokio::test]
async fn a_set_cookie_response_is_never_stored() {
    let rig = Rig::start().await;
    rig.origin.route(
        "/login",
        Reply::ok("hi")
            .header("cache-control", "public, max-age=60")
            .header("set-cookie", "sid=1"),
    );
    for _ in 0..2 {
        rig.get("/login", &[]).await;
    }
    assert_eq!(rig.origin.hits("/login"), 2);
}

#[tokio::test]
async fn a_request_with_cookies_is_stored_only_if_the_response_says_public() {
    let rig = Rig::start().await;
    rig.origin.route(
        "/me",
        Reply::ok("yours").header("cache-control", "max-age=60"),
    );
    rig.origin.route(
        "/pub",
        Reply::ok("all").header("cache-control", "public, max-age=60"),
    );
    for _ in 0..2 {
        rig.get("/me", &[("cookie", "sid=alice")]).await;
        rig.get("/pub", &[("cookie", "sid=alice")]).await;
    }
    assert_eq!(rig.origin.hits("/me"), 2);
    assert_eq!(rig.origin.hits("/pub"), 1);
    // Alice's page never reaches Bob.
    let bob = rig.get("/me", &[]).await;
    assert!(!bob.hit());
}

#[tokio::test]
async fn web_cache_deception_account_profile_css_is_not_stored() {
    let rig = Rig::start().await;
    // The classic: the app ignores the suffix and serves the account page, with the
    // `public` a "cache all static files" rule put on it (so only the extension check stands
    // between Alice's page and the attacker).
    rig.origin.route(
        "/account/profile.css",
        Reply::ok("<html>alice's account</html>")
            .set("content-type", "text/html")
            .header("cache-control", "public, max-age=600"),
    );
    let alice = rig
        .get("/account/profile.css", &[("cookie", "sid=alice")])
        .await;
    assert!(
        alice.cache_status().contains("content_type_mismatch"),
        "{}",
        alice.cache_status()
    );
    let attacker = rig.get("/account/profile.css", &[]).await;
    assert!(!attacker.hit());
    assert_eq!(rig.origin.hits("/account/profile.css"), 2, "never stored");
    // A real stylesheet is.
    rig.origin.route(
        "/site.css",
        Reply::ok("body{}")
            .set("content-type", "text/css")
            .header("cache-control", "max-age=600"),
    );
    rig.get("/site.css", &[]).await;
    assert!(rig.get("/site.css", &[]).await.hit());
}

#[tokio::test]
async fn the_extension_check_can_exempt_static_routes() {
    let rig = Rig::with(|c| c.static_routes = vec!["/assets/".into()]).await;
    rig.origin.route(
        "/assets/x.js",
        Reply::ok("built")
            .set("content-type", "application/octet-stream")
            .header("cache-control", "max-age=600"),
    );
    rig.get("/assets/x.js", &[]).await;
    assert!(rig.get("/assets/x.js", &[]).await.hit());
    // A path that only looks like it is under the route (an origin may decode %2F or
    // resolve ..) is checked as any other.
    for path in [
        "/assets/..%2Faccount/profile.css",
        "/assets/%2e%2e/account/profile.css",
    ] {
        rig.origin.route(
            path,
            Reply::ok("<html>account</html>")
                .set("content-type", "text/html")
                .header("cache-control", "public, max-age=600"),
        );
        rig.get(path, &[]).await;
        let second = rig.get(path, &[]).await;
        assert!(!second.hit(), "{path}: {}", second.cache_status());
    }
}

#[tokio::test]
async fn an_unkeyed_header_cannot_poison_an_entry() {
    let rig = Rig::start().await;
    // An origin that reflects X-Forwarded-Host into a cacheable page.
    rig.origin.script("/home", |seen, _| {
        let host = seen
            .headers
            .get("x-forwarded-host")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("example.test")
            .to_string();
        Reply::ok(&format!("<script src=//{host}/app.js>")).header("cache-control", "max-age=600")
    });
    let attack = rig.get("/home", &[("x-forwarded-host", "evil.test")]).await;
    assert!(!attack.body.contains("evil"), "{}", attack.body);
    let victim = rig.get("/home", &[]).await;
    assert!(victim.hit());
    assert!(!victim.body.contains("evil"), "{}", victim.body);
}

#[tokio::test]
async fn an_unknown_host_is_refused_and_never_reaches_an_origin() {
    let rig = Rig::start().await;
    rig.origin
        .route("/x", Reply::ok("x").header("cache-control", "max-age=60"));
    let r = rig.get("/x", &[("host", "attacker.test")]).await;
    assert_eq!(r.status, 421);
    assert_eq!(rig.origin.hits("/x"), 0);
    // The configured host, with its default port, is the same host.
    let r = rig.get("/x", &[("host", "EXAMPLE.test:80")]).await;
    assert_eq!(r.status, 200);
}

#[tokio::test]
async fn purge_needs_the_token() {
    let rig = Rig::start().await;
    rig.origin
        .route("/p", Reply::ok("x").header("cache-control", "max-age=600"));
    rig.get("/p", &[]).await;
    let refused = rig
        .client
        .send(
            Method::from_bytes(b"PURGE").unwrap(),
            "/p",
            &[],
            Bytes::new(),
        )
        .await;
    assert_eq!(refused.status, 403);
    let wrong = rig
        .client
        .send(
            Method::from_bytes(b"PURGE").unwrap(),
            "/p",
            &[("authorization", "Bearer wrong-token-wrong-token")],
            Bytes::new(),
        )
        .await;
    assert_eq!(wrong.status, 403);
    assert!(rig.get("/p", &[]).await.hit(), "still cached");
    let bearer = format!("Bearer {TOKEN}");
    let done = rig
        .client
        .send(
            Method::from_bytes(b"PURGE").unwrap(),
            "/p",
            &[("authorization", &bearer)],
            Bytes::new(),
        )
        .await;
    assert_eq!(done.status, 200);
    assert!(!rig.get("/p", &[]).await.hit());
}

#[tokio::test]
async fn without_a_token_configured_nothing_can_purge() {
    let rig = Rig::with(|c| c.admin_token = None).await;
    rig.origin
        .route("/p", Reply::ok("x").header("cache-control", "max-age=600"));
    rig.get("/p", &[]).await;
    let r = rig
        .client
        .send(
            Method::from_bytes(b"PURGE").unwrap(),
            "/p",
            &[("authorization", "Bearer ")],
            Bytes::new(),
        )
        .await;
    assert_eq!(r.status, 403);
}

/// With `purge_method` off (the default), a PURGE on the client listener is refused and never
/// forwarded: its token would reach the origin, and a 2xx from the origin would invalidate
/// the URL as an unsafe method does.
#[tokio::test]
async fn a_purge_on_the_client_listener_is_refused_when_not_enabled() {
    let rig = Rig::with(|c| c.purge_method = false).await;
    rig.origin
        .route("/p", Reply::ok("x").header("cache-control", "max-age=600"));
    rig.get("/p", &[]).await;
    let bearer = format!("Bearer {TOKEN}");
    let r = rig
        .client
        .send(
            Method::from_bytes(b"PURGE").unwrap(),
            "/p",
            &[("authorization", &bearer)],
            Bytes::new(),
        )
        .await;
    assert_eq!(r.status, 405, "{}", r.body);
    assert_eq!(rig.origin.hits("/p"), 1, "the PURGE reached the origin");
    assert!(rig.get("/p", &[]).await.hit(), "still cached");
}

#[test]
fn the_admin_api_listens_on_loopback_by_default() {
    let c = herdwise_proxy::Config::default();
    assert!(c.admin_listen.ip().is_loopback());
    assert!(c.admin_token.is_none(), "no token, no purges");
}

#[tokio::test]
async fn the_admin_api_purges_by_url_tag_prefix_and_everything() {
    let rig = Rig::start().await;
    for (path, tags) in [
        ("/shop/a", "product-1 catalog"),
        ("/shop/b", "product-2 catalog"),
        ("/news/c", "news"),
        ("/d", "misc"),
    ] {
        rig.origin.route(
            path,
            Reply::ok(path)
                .header("cache-control", "max-age=600")
                .header("surrogate-key", tags),
        );
        rig.get(path, &[]).await;
        assert!(rig.get(path, &[]).await.hit());
    }
    let admin = common::Client::new(rig.running.admin_addr);
    let bearer = format!("Bearer {TOKEN}");
    let post = |path: String, auth: bool| {
        let admin = admin.clone();
        let bearer = bearer.clone();
        async move {
            let headers: Vec<(&str, &str)> = if auth {
                vec![("authorization", bearer.as_str())]
            } else {
                vec![]
            };
            admin
                .send(Method::POST, &path, &headers, Bytes::new())
                .await
        }
    };
    assert_eq!(post("/purge/tag/product-1".into(), false).await.status, 403);
    assert_eq!(post("/purge/tag/product-1".into(), true).await.status, 200);
    assert!(!rig.get("/shop/a", &[]).await.hit());
    assert!(rig.get("/shop/b", &[]).await.hit());
    // Surrogate-Key purges are one round trip for any number of entries (the tag clock).
    assert_eq!(post("/purge/tag/catalog".into(), true).await.status, 200);
    assert!(!rig.get("/shop/b", &[]).await.hit());
    let r = post("/purge/url?url=http%3A%2F%2Fexample.test%2Fd".into(), true).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(!rig.get("/d", &[]).await.hit());
    for p in ["/shop/a", "/shop/b", "/news/c"] {
        rig.get(p, &[]).await;
    }
    assert_eq!(
        post(
            "/purge/prefix?prefix=http://example.test/shop/".into(),
            true
        )
        .await
        .status,
        200
    );
    assert!(!rig.get("/shop/a", &[]).await.hit());
    assert!(rig.get("/news/c", &[]).await.hit());
    assert_eq!(
        post("/purge/prefix?prefix=http://example.test/sh".into(), true)
            .await
            .status,
        400
    );
    assert_eq!(post("/purge/all".into(), true).await.status, 200);
    assert!(!rig.get("/news/c", &[]).await.hit());
    // Health and readiness need no token.
    assert_eq!(
        admin
            .send(Method::GET, "/healthz", &[], Bytes::new())
            .await
            .status,
        200
    );
    assert_eq!(
        admin
            .send(Method::GET, "/readyz", &[], Bytes::new())
            .await
            .status,
        200
    );
}

#[tokio::test]
async fn a_purge_by_surrogate_key_on_the_client_listener() {
    let rig = Rig::start().await;
    rig.origin.route(
        "/t",
        Reply::ok("x")
            .header("cache-control", "max-age=600")
            .header("cache-tag", "a, b"),
    );
    rig.get("/t", &[]).await;
    let bearer = format!("Bearer {TOKEN}");
    let r = rig
        .client
        .send(
            Method::from_bytes(b"PURGE").unwrap(),
            "/anything",
            &[("authorization", &bearer), ("surrogate-key", "b")],
            Bytes::new(),
        )
        .await;
    assert_eq!(r.status, 200);
    assert!(!rig.get("/t", &[]).await.hit());
}

#[tokio::test]
async fn a_too_long_url_is_414_and_a_too_large_body_413() {
    let rig = Rig::with(|c| {
        c.max_url_bytes = 100;
        c.max_request_body_bytes = 10;
    })
    .await;
    rig.origin.route("/up", Reply::ok("ok"));
    let long = format!("/{}", "a".repeat(200));
    assert_eq!(rig.get(&long, &[]).await.status, 414);
    let r = rig
        .client
        .send(Method::POST, "/up", &[], Bytes::from(vec![b'x'; 100]))
        .await;
    assert_eq!(r.status, 413);
    assert_eq!(rig.origin.hits("/up"), 0);
}

#[tokio::test]
async fn a_too_large_header_section_is_refused() {
    let rig = Rig::with(|c| c.max_header_bytes = 8192).await;
    rig.origin.route("/h", Reply::ok("ok"));
    let mut stream = tokio::net::TcpStream::connect(rig.running.addr)
        .await
        .unwrap();
    let big = "x".repeat(20_000);
    let request = format!("GET /h HTTP/1.1\r\nhost: example.test\r\nx-big: {big}\r\n\r\n");
    let _ = stream.write_all(request.as_bytes()).await;
    let mut response = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut response)).await;
    let text = String::from_utf8_lossy(&response);
    assert!(text.starts_with("HTTP/1.1 431"), "{text}");
    assert_eq!(rig.origin.hits("/h"), 0);
}

#[tokio::test]
async fn a_slow_client_is_cut_off_after_the_header_timeout() {
    let rig = Rig::with(|c| c.header_read_timeout_ms = 300).await;
    let mut stream = tokio::net::TcpStream::connect(rig.running.addr)
        .await
        .unwrap();
    stream
        .write_all(b"GET / HTTP/1.1\r\nhost: exa")
        .await
        .unwrap();
    let started = std::time::Instant::now();
    let mut buf = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut buf)).await;
    assert!(read.is_ok(), "the connection was never closed");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_is_cut_off_after_the_write_timeout() {
    let rig = Rig::with(|c| c.write_timeout_ms = 300).await;
    // A large, uncached body streamed through (more than the kernel buffers between them).
    const BIG: usize = 48 << 20;
    rig.origin.route(
        "/big",
        Reply::ok(&"x".repeat(BIG)).header("cache-control", "no-store"),
    );
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut stream = socket.connect(rig.running.addr).await.unwrap();
    stream
        .write_all(b"GET /big HTTP/1.1\r\nhost: example.test\r\n\r\n")
        .await
        .unwrap();
    // The client reads nothing for a while...
    tokio::time::sleep(Duration::from_millis(1500)).await;
    // ...and then finds the connection ended early: what was buffered, then EOF or a reset.
    let mut total = 0usize;
    let mut buf = vec![0u8; 1 << 16];
    let ended = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => total += n,
            }
        }
    })
    .await;
    assert!(ended.is_ok(), "the connection was never closed");
    assert!(
        total < BIG,
        "the whole body arrived ({total} bytes): never cut off"
    );
}

#[tokio::test]
async fn bad_configuration_is_an_error_naming_the_option() {
    let (_, upstream) = common::Origin::start().await;
    let mut c = common::config(upstream);
    c.heuristic_fraction = 2.0;
    match herdwise_proxy::start(c, None).await {
        Err(herdwise_proxy::Error::Config { option, .. }) => {
            assert_eq!(option, "heuristic_fraction")
        }
        other => panic!("{:?}", other.err()),
    }
    type Edit = fn(&mut herdwise_proxy::Config);
    let cases: [(&str, Edit); 6] = [
        ("max_object_bytes", |c| c.max_object_bytes = usize::MAX),
        ("max_url_bytes", |c| c.max_url_bytes = usize::MAX),
        ("max_header_bytes", |c| c.max_header_bytes = usize::MAX),
        ("write_timeout_ms", |c| c.write_timeout_ms = 1),
        ("warm_urls", |c| {
            c.warm_urls = vec!["http://not-served.test/".into()]
        }),
        ("warm_urls", |c| {
            c.warm_urls = vec![format!("http://example.test/{}", "a".repeat(9000))]
        }),
    ];
    for (name, edit) in cases {
        let mut c = common::config(upstream);
        edit(&mut c);
        match herdwise_proxy::start(c, None).await {
            Err(herdwise_proxy::Error::Config { option, .. }) => assert_eq!(option, name),
            other => panic!("{name}: {:?}", other.err()),
        }
    }
}

// ---- Review findings (each failed on the first version) --------------------------------------

#[tokio::test]
async fn a_304_never_merges_one_users_cookie_into_the_shared_entry() {
    let rig = Rig::start().await;
    rig.origin.script("/rv", |seen, _| {
        if seen.headers.contains_key("if-none-match") {
            Reply::ok("")
                .status(304)
                .header("etag", "\"r\"")
                .header("set-cookie", "sid=alice")
        } else {
            Reply::ok("page")
                .header("cache-control", "max-age=0")
                .header("etag", "\"r\"")
        }
    });
    rig.get("/rv", &[]).await;
    let alice = rig.get("/rv", &[("cookie", "sid=alice")]).await;
    assert_eq!(alice.body, "page");
    let bob = rig.get("/rv", &[]).await;
    assert!(bob.header("set-cookie").is_none(), "{:?}", bob.headers);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_origin_error_page_goes_only_to_the_request_that_asked_for_it() {
    let rig = Rig::start().await;
    rig.origin.route(
        "/err",
        Reply::ok("error page for alice")
            .status(503)
            .header("surrogate-key", "x")
            .delay(Duration::from_millis(200)),
    );
    let mut tasks = Vec::new();
    for _ in 0..10 {
        let client = rig.client.clone();
        tasks.push(tokio::spawn(async move {
            client.send(Method::GET, "/err", &[], Bytes::new()).await
        }));
    }
    let mut pages = 0;
    for t in tasks {
        let r = t.await.unwrap();
        assert_eq!(r.status, 503);
        assert!(r.header("surrogate-key").is_none());
        pages += r.body.contains("alice") as usize;
    }
    let origin_requests = rig.origin.hits("/err");
    assert_eq!(
        pages, origin_requests,
        "each origin answer reached its own request only"
    );
}

#[tokio::test]
async fn more_than_one_host_is_a_400() {
    let rig = Rig::start().await;
    rig.origin.route("/x", Reply::ok("x"));
    let r = rig
        .get("/x", &[("host", "example.test"), ("host", "evil.test")])
        .await;
    assert_eq!(r.status, 400);
    assert_eq!(rig.origin.hits("/x"), 0);
}

#[tokio::test]
async fn fields_a_response_varies_on_reach_the_origin_on_fills() {
    let rig = Rig::start().await;
    rig.origin.script("/tenant", |seen, _| {
        let t = seen
            .headers
            .get("x-tenant")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("none")
            .to_string();
        Reply::ok(&t)
            .header("cache-control", "max-age=600")
            .header("vary", "x-tenant")
    });
    rig.get("/tenant", &[("x-tenant", "a")]).await;
    let b = rig.get("/tenant", &[("x-tenant", "b")]).await;
    assert_eq!(
        b.body, "b",
        "the variant fill sent the field its response varies on"
    );
    let a = rig.get("/tenant", &[("x-tenant", "a")]).await;
    assert!(a.hit());
}

#[tokio::test]
async fn deception_with_encoded_dots_and_parameters_is_caught() {
    let rig = Rig::start().await;
    for path in ["/account/profile%2Ecss", "/account/profile;.css"] {
        rig.origin.route(
            path,
            Reply::ok("<html>account</html>")
                .set("content-type", "text/html")
                .header("cache-control", "max-age=600"),
        );
        rig.get(path, &[]).await;
        rig.get(path, &[]).await;
        assert_eq!(rig.origin.hits(path), 2, "{path} was stored");
    }
}

#[tokio::test]
async fn preconditions_are_not_answered_from_a_stored_error() {
    let rig = Rig::start().await;
    rig.origin.route(
        "/gone",
        Reply::ok("no such page")
            .status(404)
            .header("cache-control", "max-age=600")
            .header("last-modified", "Mon, 01 Jan 2024 00:00:00 GMT"),
    );
    rig.get("/gone", &[]).await;
    let r = rig
        .get(
            "/gone",
            &[("if-modified-since", "Tue, 02 Jan 2024 00:00:00 GMT")],
        )
        .await;
    assert_eq!(r.status, 404);
    assert!(r.hit());
}

#[tokio::test]
async fn a_response_with_more_surrogate_keys_than_an_entry_carries_is_not_stored() {
    let rig = Rig::start().await;
    let keys: Vec<String> = (0..40).map(|i| format!("k{i}")).collect();
    rig.origin.route(
        "/many",
        Reply::ok("x")
            .header("cache-control", "max-age=600")
            .header("surrogate-key", &keys.join(" ")),
    );
    rig.get("/many", &[]).await;
    rig.get("/many", &[]).await;
    assert_eq!(rig.origin.hits("/many"), 2);
}
