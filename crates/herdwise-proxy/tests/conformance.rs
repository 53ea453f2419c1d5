//! RFC 9111 (and RFC 5861, 9110, 9211, 9213) conformance, one test per requirement, named
//! after its section: a proxy with the embedded store in front of a scripted origin. The
//! README's conformance table lists these names.

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::{date, Reply, Rig};
use http::Method;

async fn twice(rig: &Rig, path: &str) -> (common::Answer, common::Answer) {
    let a = rig.get(path, &[]).await;
    let b = rig.get(path, &[]).await;
    (a, b)
}

// ---- §3 Storing responses ----------------------------------------------------------------

#[tokio::test]
async fn s3_a_fresh_response_is_stored_and_reused() {
    let rig = Rig::start().await;
    rig.origin
        .route("/a", Reply::ok("A").header("cache-control", "max-age=60"));
    let (a, b) = twice(&rig, "/a").await;
    assert_eq!((a.status, b.status), (200, 200));
    assert_eq!(b.body, "A");
    assert!(
        !a.hit() && b.hit(),
        "{} / {}",
        a.cache_status(),
        b.cache_status()
    );
    assert_eq!(rig.origin.hits("/a"), 1);
}

#[tokio::test]
async fn s3_a_response_without_freshness_or_validators_is_not_stored() {
    let rig = Rig::with(|c| c.heuristic_fraction = 0.0).await;
    rig.origin.route("/plain", Reply::ok("x"));
    twice(&rig, "/plain").await;
    assert_eq!(rig.origin.hits("/plain"), 2);
}

#[tokio::test]
async fn s3_post_responses_are_not_stored() {
    let rig = Rig::start().await;
    rig.origin
        .route("/p", Reply::ok("p").header("cache-control", "max-age=60"));
    for _ in 0..2 {
        rig.client
            .send(Method::POST, "/p", &[], Bytes::from("x"))
            .await;
    }
    assert_eq!(rig.origin.hits("/p"), 2);
}

#[tokio::test]
async fn s3_partial_content_is_not_stored() {
    let rig = Rig::start().await;
    rig.origin.route(
        "/pc",
        Reply::ok("p")
            .status(206)
            .header("cache-control", "max-age=60"),
    );
    twice(&rig, "/pc").await;
    assert_eq!(rig.origin.hits("/pc"), 2);
}

#[tokio::test]
async fn s3_1_hop_by_hop_fields_are_not_stored_or_forwarded() {
    let rig = Rig::start().await;
    rig.origin.route(
        "/h",
        Reply::ok("h")
            .header("cache-control", "max-age=60")
            .header("connection", "x-private")
            .header("x-private", "secret")
            .header("keep-alive", "timeout=5"),
    );
    let (a, b) = twice(&rig, "/h").await;
    for r in [&a, &b] {
        assert!(r.header("x-private").is_none(), "{:?}", r.headers);
        assert!(r.header("keep-alive").is_none());
    }
    // And the client's own hop-by-hop fields do not reach the origin.
    rig.origin.route("/h2", Reply::ok("h"));
    rig.get(
        "/h2",
        &[
            ("connection", "x-mine"),
            ("x-mine", "1"),
            ("te", "trailers"),
        ],
    )
    .await;
    let seen = rig.origin.last("/h2").unwrap();
    assert!(seen.headers.get("x-mine").is_none() && seen.headers.get("te").is_none());
}

#[tokio::test]
async fn s3_5_a_response_to_an_authorized_request_is_not_stored() {
    let rig = Rig::start().await;
    rig.origin.route(
        "/auth",
        Reply::ok("me").header("cache-control", "max-age=60"),
    );
    for _ in 0..2 {
        rig.get("/auth", &[("authorization", "Bearer u1")]).await;
    }
    assert_eq!(rig.origin.hits("/auth"), 2);
}

#[tokio::test]
async fn s3_5_an_authorized_request_is_stored_with_s_maxage_or_public() {
    let rig = Rig::start().await;
    rig.origin.route(
        "/shared",
        Reply::ok("all").header("cache-control", "s-maxage=60"),
    );
    rig.origin.route(
        "/pub",
        Reply::ok("all").header("cache-control", "public, max-age=60"),
    );
    for path in ["/shared", "/pub"] {
        for _ in 0..2 {
            rig.get(path, &[("authorization", "Bearer u1")]).await;
        }
        assert_eq!(rig.origin.hits(path), 1, "{path}");
    }
}

// ---- §4 Constructing responses from caches -------------------------------------------------

#[tokio::test]
async fn s4_the_key_is_the_normalised_uri_and_unkeyed_fields_do_not_split_it() {
    let rig = Rig::start().await;
    rig.origin
        .route("/k~1", Reply::ok("k").header("cache-control", "max-age=60"));
    rig.get("/k~1", &[]).await;
    let b = rig
        .get(
            "/k%7E1",
            &[("x-forwarded-host", "evil.test"), ("x-random", "1")],
        )
        .await;
    assert!(b.hit(), "{}", b.cache_status());
    assert_eq!(rig.origin.hits("/k~1"), 1);
}

#[tokio::test]
async fn s4_1_vary_keeps_a_response_per_selecting_value() {
    let rig = Rig::start().await;
    rig.origin.script("/v", |seen, _| {
        let lang = seen
            .headers
            .get("accept-language")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("none")
            .to_string();
        Reply::ok(&lang)
            .header("cache-control", "max-age=60")
            .header("vary", "Accept-Language")
    });
    let en = rig.get("/v", &[("accept-language", "en")]).await;
    let fr = rig.get("/v", &[("accept-language", "fr")]).await;
    let en2 = rig.get("/v", &[("accept-language", "en")]).await;
    assert_eq!(
        (en.body.as_str(), fr.body.as_str(), en2.body.as_str()),
        ("en", "fr", "en")
    );
    assert!(en2.hit(), "{}", en2.cache_status());
    assert_eq!(rig.origin.hits("/v"), 2);
}

#[tokio::test]
async fn s4_1_vary_values_are_normalised() {
    let rig = Rig::start().await;
    rig.origin.route(
        "/vn",
        Reply::ok("z")
            .header("cache-control", "max-age=60")
            .header("vary", "accept-encoding"),
    );
    rig.get("/vn", &[("accept-encoding", "gzip, br")]).await;
    let b = rig.get("/vn", &[("accept-encoding", "br,gzip")]).await;
    assert!(b.hit(), "{}", b.cache_status());
}

#[tokio::test]
async fn s4_1_vary_star_never_matches() {
    let rig = Rig::start().await;
    rig.origin.route(
        "/vs",
        Reply::ok("z")
            .header("cache-control", "max-age=60")
            .header("vary", "*"),
    );
    twice(&rig, "/vs").await;
    assert_eq!(rig.origin.hits("/vs"), 2);
}

#[tokio::test]
async fn s4_2_1_s_maxage_overrides_max_age_for_a_shared_cache() {
    let rig = Rig::start().await;
    // Fresh for a shared cache by s-maxage, stale by max-age (Age 10 > 5).
    rig.origin.route(
        "/sm",
        Reply::ok("s")
            .header("cache-control", "max-age=5, s-maxage=60")
            .header("age", "10"),
    );
    let (_, b) = twice(&rig, "/sm").await;
    assert!(b.hit(), "{}", b.cache_status());
}

#[tokio::test]
async fn s4_2_1_expires_minus_date_is_the_lifetime() {
    let rig = Rig::start().await;
    rig.origin.script("/ex", |_, _| {
        Reply::ok("e")
            .header("date", &date(0))
            .header("expires", &date(120))
    });
    let (_, b) = twice(&rig, "/ex").await;
    assert!(b.hit(), "{}", b.cache_status());
    assert_eq!(rig.origin.hits("/ex"), 1);
}

#[tokio::test]
async fn s4_2_1_an_invalid_expires_means_stale() {
    let rig = Rig::start().await;
    rig.origin
        .route("/bad-exp", Reply::ok("e").header("expires", "0"));
    twice(&rig, "/bad-exp").await;
    assert_eq!(rig.origin.hits("/bad-exp"), 2);
}

#[tokio::test]
async fn s4_2_1_max_age_wins_over_expires() {
    let rig = Rig::start().await;
    rig.origin.script("/mx", |_, _| {
        Reply::ok("e")
            .header("cache-control", "max-age=60")
            .header("expires", &date(-100))
    });
    let (_, b) = twice(&rig, "/mx").await;
    assert!(b.hit(), "{}", b.cache_status());
}

#[tokio::test]
async fn s4_2_2_heuristic_freshness_from_last_modified() {
    let rig = Rig::start().await;
    rig.origin.script("/heur", |_, _| {
        Reply::ok("h").header("last-modified", &date(-10 * 86_400))
    });
    let (_, b) = twice(&rig, "/heur").await;
    assert!(b.hit(), "{}", b.cache_status());
    // Not for a status that is not heuristically cacheable.
    rig.origin.script("/heur302", |_, _| {
        Reply::ok("h")
            .status(302)
            .header("last-modified", &date(-10 * 86_400))
    });
    twice(&rig, "/heur302").await;
    assert_eq!(rig.origin.hits("/heur302"), 2);
}

#[tokio::test]
async fn s4_2_3_the_age_header_counts_against_the_lifetime() {
    let rig = Rig::start().await;
    rig.origin.route(
        "/aged",
        Reply::ok("a")
            .header("cache-control", "max-age=60")
            .header("age", "100"),
    );
    twice(&rig, "/aged").await;
    assert_eq!(rig.origin.hits("/aged"), 2, "already stale when received");
}

#[tokio::test]
async fn s4_2_3_a_hit_carries_its_age() {
    let rig = Rig::start().await;
    rig.origin.route(
        "/age",
        Reply::ok("a")
            .header("cache-control", "max-age=600")
            .header("age", "30"),
    );
    let (_, b) = twice(&rig, "/age").await;
    let age: u64 = b.header("age").unwrap().parse().unwrap();
    assert!((30..40).contains(&age), "age {age}");
}

#[tokio::test]
async fn s4_2_4_a_stale_response_is_not_served_without_validation() {
    let rig = Rig::start().await;
    rig.origin.script("/st", |_, n| {
        Reply::ok(&format!("v{n}")).header("cache-control", "max-age=0")
    });
    let (a, b) = twice(&rig, "/st").await;
    assert_eq!((a.body.as_str(), b.body.as_str()), ("v1", "v2"));
}

#[tokio::test]
async fn s4_3_1_validation_sends_the_stored_validators() {
    let rig = Rig::start().await;
    rig.origin.script("/val", |_, _| {
        Reply::ok("body")
            .header("cache-control", "max-age=0")
            .header("etag", "\"v1\"")
            .header("last-modified", "Mon, 01 Jan 2024 00:00:00 GMT")
    });
    twice(&rig, "/val").await;
    let seen = rig.origin.last("/val").unwrap();
    assert_eq!(seen.headers.get("if-none-match").unwrap(), "\"v1\"");
    assert_eq!(
        seen.headers.get("if-modified-since").unwrap(),
        "Mon, 01 Jan 2024 00:00:00 GMT"
    );
}

#[tokio::test]
async fn s4_3_4_a_304_freshens_the_stored_response() {
    let rig = Rig::start().await;
    rig.origin.script("/fr", |seen, _| {
        if seen.headers.contains_key("if-none-match") {
            Reply::ok("")
                .status(304)
                .set("cache-control", "max-age=60")
                .header("etag", "\"v1\"")
                .header("x-updated", "yes")
        } else {
            Reply::ok("full body")
                .header("cache-control", "max-age=0")
                .header("etag", "\"v1\"")
        }
    });
    let a = rig.get("/fr", &[]).await;
    let b = rig.get("/fr", &[]).await;
    assert_eq!(b.status, 200);
    assert_eq!(b.body, "full body");
    assert_eq!(b.header("x-updated"), Some("yes"));
    assert!(
        b.cache_status().contains("fwd=stale") && b.cache_status().contains("fwd-status=304"),
        "{}",
        b.cache_status()
    );
    // Fresh again now (max-age=60 from the 304).
    let c = rig.get("/fr", &[]).await;
    assert!(c.hit(), "{}", c.cache_status());
    assert_eq!(rig.origin.hits("/fr"), 2);
    assert_eq!(a.body, "full body");
}

#[tokio::test]
async fn s4_3_2_a_clients_if_none_match_is_answered_from_cache() {
    let rig = Rig::start().await;
    rig.origin.route(
        "/inm",
        Reply::ok("x")
            .header("cache-control", "max-age=60")
            .header("etag", "W/\"e1\""),
    );
    rig.get("/inm", &[]).await;
    let r = rig.get("/inm", &[("if-none-match", "\"e1\"")]).await;
    assert_eq!(r.status, 304);
    assert_eq!(r.header("etag"), Some("W/\"e1\""));
    assert_eq!(rig.origin.hits("/inm"), 1);
    let r = rig.get("/inm", &[("if-none-match", "\"other\"")]).await;
    assert_eq!(r.status, 200);
}

#[tokio::test]
async fn s4_3_2_a_clients_if_modified_since_is_answered_from_cache() {
    let rig = Rig::start().await;
    rig.origin.route(
        "/ims",
        Reply::ok("x")
            .header("cache-control", "max-age=60")
            .header("last-modified", "Mon, 01 Jan 2024 00:00:00 GMT"),
    );
    rig.get("/ims", &[]).await;
    let r = rig
        .get(
            "/ims",
            &[("if-modified-since", "Tue, 02 Jan 2024 00:00:00 GMT")],
        )
        .await;
    assert_eq!(r.status, 304);
    let r = rig
        .get(
            "/ims",
            &[("if-modified-since", "Sun, 31 Dec 2023 00:00:00 GMT")],
        )
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(rig.origin.hits("/ims"), 1);
}

#[tokio::test]
async fn s4_3_2_client_preconditions_are_not_sent_on_a_fill() {
    let rig = Rig::start().await;
    rig.origin
        .route("/cp", Reply::ok("x").header("cache-control", "max-age=60"));
    let r = rig.get("/cp", &[("if-none-match", "\"mine\"")]).await;
    assert_eq!(r.status, 200);
    assert!(rig
        .origin
        .last("/cp")
        .unwrap()
        .headers
        .get("if-none-match")
        .is_none());
}

#[tokio::test]
async fn s4_4_an_unsafe_method_invalidates_the_target() {
    let rig = Rig::start().await;
    rig.origin.script("/item", |seen, n| {
        if seen.method == Method::GET {
            Reply::ok(&format!("v{n}")).header("cache-control", "max-age=600")
        } else {
            Reply::ok("done")
        }
    });
    rig.get("/item", &[]).await;
    rig.client
        .send(Method::PUT, "/item", &[], Bytes::from("new"))
        .await;
    let after = rig.get("/item", &[]).await;
    assert!(!after.hit(), "{}", after.cache_status());
    assert_eq!(after.body, "v3");
}

#[tokio::test]
async fn s4_4_location_and_content_location_are_invalidated_too() {
    let rig = Rig::start().await;
    for p in ["/list", "/other"] {
        rig.origin
            .route(p, Reply::ok(p).header("cache-control", "max-age=600"));
        rig.get(p, &[]).await;
    }
    rig.origin.route(
        "/create",
        Reply::ok("created")
            .status(201)
            .header("location", "/list")
            .header("content-location", "http://example.test/other"),
    );
    rig.client
        .send(Method::POST, "/create", &[], Bytes::new())
        .await;
    for p in ["/list", "/other"] {
        let r = rig.get(p, &[]).await;
        assert!(!r.hit(), "{p}: {}", r.cache_status());
    }
}

#[tokio::test]
async fn s4_4_an_error_response_invalidates_nothing() {
    let rig = Rig::start().await;
    rig.origin.script("/keep", |seen, _| {
        if seen.method == Method::GET {
            Reply::ok("k").header("cache-control", "max-age=600")
        } else {
            Reply::ok("no").status(409)
        }
    });
    rig.get("/keep", &[]).await;
    rig.client
        .send(Method::DELETE, "/keep", &[], Bytes::new())
        .await;
    assert!(rig.get("/keep", &[]).await.hit());
}

#[tokio::test]
async fn s4_4_invalidation_covers_every_variant() {
    let rig = Rig::start().await;
    rig.origin.script("/vv", |seen, n| {
        if seen.method == Method::GET {
            Reply::ok(&format!("v{n}"))
                .header("cache-control", "max-age=600")
                .header("vary", "accept-language")
        } else {
            Reply::ok("ok")
        }
    });
    for lang in ["en", "fr"] {
        rig.get("/vv", &[("accept-language", lang)]).await;
    }
    rig.client
        .send(Method::PATCH, "/vv", &[], Bytes::new())
        .await;
    for lang in ["en", "fr"] {
        let r = rig.get("/vv", &[("accept-language", lang)]).await;
        assert!(!r.hit(), "{lang}: {}", r.cache_status());
    }
}

// ---- §5.2.1 Request directives ---------------------------------------------------------------

#[tokio::test]
async fn s5_2_1_1_request_max_age_zero_goes_to_the_origin() {
    let rig = Rig::start().await;
    rig.origin.route(
        "/rma",
        Reply::ok("x").header("cache-control", "max-age=600"),
    );
    rig.get("/rma", &[]).await;
    let r = rig.get("/rma", &[("cache-control", "max-age=0")]).await;
    assert!(!r.hit(), "{}", r.cache_status());
    assert_eq!(rig.origin.hits("/rma"), 2);
}

#[tokio::test]
async fn s5_2_1_2_max_stale_accepts_a_stale_response() {
    let rig = Rig::start().await;
    rig.origin.route(
        "/ms",
        Reply::ok("x")
            .header("cache-control", "max-age=10")
            .header("age", "20"),
    );
    rig.get("/ms", &[]).await;
    let r = rig.get("/ms", &[("cache-control", "max-stale=60")]).await;
    assert!(r.hit(), "{}", r.cache_status());
    let r = rig.get("/ms", &[("cache-control", "max-stale=5")]).await;
    assert!(!r.hit(), "{}", r.cache_status());
}

#[tokio::test]
async fn s5_2_1_3_min_fresh_wants_freshness_left() {
    let rig = Rig::start().await;
    rig.origin
        .route("/mf", Reply::ok("x").header("cache-control", "max-age=100"));
    rig.get("/mf", &[]).await;
    assert!(rig
        .get("/mf", &[("cache-control", "min-fresh=10")])
        .await
        .hit());
    assert!(!rig
        .get("/mf", &[("cache-control", "min-fresh=500")])
        .await
        .hit());
}

#[tokio::test]
async fn s5_2_1_4_request_no_cache_validates() {
    let rig = Rig::start().await;
    rig.origin.route(
        "/rnc",
        Reply::ok("x").header("cache-control", "max-age=600"),
    );
    rig.get("/rnc", &[]).await;
    let r = rig.get("/rnc", &[("cache-control", "no-cache")]).await;
    assert!(!r.hit(), "{}", r.cache_status());
    assert_eq!(rig.origin.hits("/rnc"), 2);
}

#[tokio::test]
async fn s5_2_1_5_request_no_store_is_not_stored() {
    let rig = Rig::start().await;
    rig.origin.route(
        "/rns",
        Reply::ok("x").header("cache-control", "max-age=600"),
    );
    rig.get("/rns", &[("cache-control", "no-store")]).await;
    let r = rig.get("/rns", &[]).await;
    assert!(!r.hit(), "{}", r.cache_status());
}

#[tokio::test]
async fn s5_2_1_7_only_if_cached_is_504_on_a_miss_and_a_hit_otherwise() {
    let rig = Rig::start().await;
    rig.origin.route(
        "/oic",
        Reply::ok("x").header("cache-control", "max-age=600"),
    );
    let r = rig
        .get("/oic", &[("cache-control", "only-if-cached")])
        .await;
    assert_eq!(r.status, 504);
    assert_eq!(rig.origin.hits("/oic"), 0);
    rig.get("/oic", &[]).await;
    let r = rig
        .get("/oic", &[("cache-control", "only-if-cached")])
        .await;
    assert_eq!(r.status, 200);
}

// ---- §5.2.2 Response directives --------------------------------------------------------------

#[tokio::test]
async fn s5_2_2_2_must_revalidate_is_never_served_stale_even_on_error() {
    let rig = Rig::start().await;
    rig.origin.script("/mr", |_, n| {
        if n == 1 {
            Reply::ok("x")
                .header(
                    "cache-control",
                    "max-age=1, must-revalidate, stale-if-error=600",
                )
                .header("age", "5")
        } else {
            Reply::ok("down").status(503)
        }
    });
    rig.get("/mr", &[]).await;
    let r = rig.get("/mr", &[]).await;
    assert_eq!(r.status, 503);
}

#[tokio::test]
async fn s5_2_2_4_no_cache_is_stored_but_validated_every_time() {
    let rig = Rig::start().await;
    rig.origin.script("/nc", |seen, _| {
        if seen.headers.contains_key("if-none-match") {
            Reply::ok("").status(304).header("etag", "\"n\"")
        } else {
            Reply::ok("payload")
                .header("cache-control", "no-cache")
                .header("etag", "\"n\"")
        }
    });
    rig.get("/nc", &[]).await;
    let r = rig.get("/nc", &[]).await;
    assert_eq!(r.body, "payload");
    assert!(
        r.cache_status().contains("fwd-status=304"),
        "{}",
        r.cache_status()
    );
    assert_eq!(rig.origin.hits("/nc"), 2);
}

#[tokio::test]
async fn s5_2_2_4_qualified_no_cache_strips_the_named_fields() {
    let rig = Rig::start().await;
    rig.origin.route(
        "/qnc",
        Reply::ok("x")
            .header("cache-control", "max-age=60, no-cache=\"x-session\"")
            .header("x-session", "abc"),
    );
    let (a, b) = twice(&rig, "/qnc").await;
    // Only storing is restricted: the response that came from the origin keeps the field.
    assert_eq!(a.header("x-session"), Some("abc"));
    assert!(b.hit());
    assert!(b.header("x-session").is_none());
}

#[tokio::test]
async fn s5_2_2_4_qualified_no_cache_naming_framing_or_own_fields_keeps_the_response_whole() {
    let rig = Rig::start().await;
    rig.origin.route(
        "/qf",
        Reply::ok("0123456789")
            .header(
                "cache-control",
                "max-age=60, no-cache=\"content-length, age, surrogate-key, x-a\"",
            )
            .header("surrogate-key", "k1")
            .header("x-a", "1"),
    );
    // The leading request asks for a range: one Content-Length, the slice's, and no
    // Surrogate-Key (this cache's own field) even though the directive names them.
    let a = rig.get("/qf", &[("range", "bytes=2-4")]).await;
    assert_eq!(a.status, 206, "{:?}", a.headers);
    assert_eq!(a.body, "234");
    let lengths: Vec<_> = a.headers.get_all("content-length").iter().collect();
    assert_eq!(lengths, ["3"], "{:?}", a.headers);
    assert_eq!(
        a.headers.get_all("age").iter().count(),
        1,
        "{:?}",
        a.headers
    );
    assert!(a.header("surrogate-key").is_none());
    assert_eq!(a.header("x-a"), Some("1"));
    let b = rig.get("/qf", &[]).await;
    assert!(b.hit(), "{}", b.cache_status());
    assert_eq!(b.body, "0123456789");
    assert!(b.header("x-a").is_none());
}

#[tokio::test]
async fn s5_2_2_4_qualified_no_cache_naming_vary_or_the_body_type_is_not_stored() {
    let rig = Rig::start().await;
    for (path, field) in [
        ("/qv", "vary"),
        ("/qct", "content-type"),
        ("/qce", "content-encoding"),
    ] {
        rig.origin.route(
            path,
            Reply::ok("body")
                .header(
                    "cache-control",
                    &format!("max-age=60, no-cache=\"{field}\""),
                )
                .header("vary", "accept-language")
                .set("content-type", "text/plain")
                .header("content-encoding", "identity"),
        );
        let a = rig.get(path, &[("accept-language", "fr")]).await;
        assert_eq!(a.body, "body");
        assert!(
            a.header(field).is_some(),
            "{path}: the response keeps {field}"
        );
        let b = rig.get(path, &[("accept-language", "de")]).await;
        assert!(!b.hit(), "{path}: {}", b.cache_status());
        assert_eq!(rig.origin.hits(path), 2, "{path}");
    }
}

#[tokio::test]
async fn s5_2_2_5_no_store_is_not_stored() {
    let rig = Rig::start().await;
    rig.origin.route(
        "/ns",
        Reply::ok("x").header("cache-control", "max-age=60, no-store"),
    );
    twice(&rig, "/ns").await;
    assert_eq!(rig.origin.hits("/ns"), 2);
}

#[tokio::test]
async fn s5_2_2_7_private_is_not_stored_by_a_shared_cache() {
    let rig = Rig::start().await;
    rig.origin.route(
        "/priv",
        Reply::ok("x").header("cache-control", "private, max-age=60"),
    );
    twice(&rig, "/priv").await;
    assert_eq!(rig.origin.hits("/priv"), 2);
}

#[tokio::test]
async fn s5_2_2_7_qualified_private_strips_the_named_fields() {
    let rig = Rig::start().await;
    rig.origin.route(
        "/qp",
        Reply::ok("x")
            .header("cache-control", "max-age=60, private=\"x-user\"")
            .header("x-user", "alice"),
    );
    let (a, b) = twice(&rig, "/qp").await;
    // The user the response was for gets it whole; the stored copy lacks the field.
    assert_eq!(a.header("x-user"), Some("alice"));
    assert!(b.hit());
    assert!(b.header("x-user").is_none());
}

#[tokio::test]
async fn s5_2_2_8_proxy_revalidate_forbids_stale_serving() {
    let rig = Rig::start().await;
    rig.origin.script("/pr", |_, n| {
        if n == 1 {
            Reply::ok("x")
                .header("cache-control", "max-age=1, proxy-revalidate")
                .header("age", "5")
        } else {
            Reply::ok("y").header("cache-control", "max-age=60")
        }
    });
    rig.get("/pr", &[]).await;
    let r = rig.get("/pr", &[("cache-control", "max-stale=600")]).await;
    assert_eq!(r.body, "y");
}

#[tokio::test]
async fn s5_2_2_10_s_maxage_forbids_stale_serving_too() {
    let rig = Rig::start().await;
    rig.origin.script("/sms", |_, n| {
        if n == 1 {
            Reply::ok("x")
                .header("cache-control", "s-maxage=1")
                .header("age", "5")
        } else {
            Reply::ok("y").header("cache-control", "s-maxage=60")
        }
    });
    rig.get("/sms", &[]).await;
    let r = rig.get("/sms", &[("cache-control", "max-stale=600")]).await;
    assert_eq!(r.body, "y");
}

#[tokio::test]
async fn s5_4_pragma_no_cache_without_cache_control_validates() {
    let rig = Rig::start().await;
    rig.origin
        .route("/pg", Reply::ok("x").header("cache-control", "max-age=600"));
    rig.get("/pg", &[]).await;
    assert!(!rig.get("/pg", &[("pragma", "no-cache")]).await.hit());
    // With Cache-Control present, Pragma is ignored.
    assert!(rig
        .get(
            "/pg",
            &[("pragma", "no-cache"), ("cache-control", "max-stale=1")]
        )
        .await
        .hit());
}

// ---- RFC 5861 ---------------------------------------------------------------------------------

#[tokio::test]
async fn rfc5861_3_stale_while_revalidate_serves_stale_and_refreshes_behind() {
    let rig = Rig::start().await;
    rig.origin.script("/swr", |_, n| {
        Reply::ok(&format!("v{n}"))
            .header("cache-control", "max-age=1, stale-while-revalidate=600")
            .header("age", if n == 1 { "5" } else { "0" })
    });
    rig.get("/swr", &[]).await;
    let stale = rig.get("/swr", &[]).await;
    assert_eq!(stale.body, "v1");
    assert!(
        stale.hit() && stale.cache_status().contains("stale-while-revalidate"),
        "{}",
        stale.cache_status()
    );
    let mut refreshed = false;
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(20)).await;
        if rig.get("/swr", &[]).await.body == "v2" {
            refreshed = true;
            break;
        }
    }
    assert!(refreshed, "the background revalidation replaced it");
    assert_eq!(rig.origin.hits("/swr"), 2);
}

#[tokio::test]
async fn rfc5861_4_stale_if_error_serves_stale_on_a_5xx() {
    let rig = Rig::start().await;
    rig.origin.script("/sie", |_, n| {
        if n == 1 {
            Reply::ok("good")
                .header("cache-control", "max-age=1, stale-if-error=600")
                .header("age", "5")
        } else {
            Reply::ok("broken").status(503)
        }
    });
    rig.get("/sie", &[]).await;
    let r = rig.get("/sie", &[]).await;
    assert_eq!((r.status, r.body.as_str()), (200, "good"));
    assert!(
        r.cache_status().contains("stale-if-error"),
        "{}",
        r.cache_status()
    );
}

#[tokio::test]
async fn rfc5861_4_without_stale_if_error_the_error_is_passed_on() {
    let rig = Rig::start().await;
    rig.origin.script("/nosie", |_, n| {
        if n == 1 {
            Reply::ok("good")
                .header("cache-control", "max-age=1")
                .header("age", "5")
        } else {
            Reply::ok("broken").status(500)
        }
    });
    rig.get("/nosie", &[]).await;
    let r = rig.get("/nosie", &[]).await;
    assert_eq!((r.status, r.body.as_str()), (500, "broken"));
}

#[tokio::test]
async fn rfc5861_4_a_request_may_ask_for_stale_if_error() {
    let rig = Rig::start().await;
    rig.origin.script("/rsie", |_, n| {
        if n == 1 {
            Reply::ok("good")
                .header("cache-control", "max-age=1")
                .header("age", "5")
        } else {
            Reply::ok("broken").status(502)
        }
    });
    rig.get("/rsie", &[]).await;
    let r = rig
        .get("/rsie", &[("cache-control", "stale-if-error=600")])
        .await;
    assert_eq!((r.status, r.body.as_str()), (200, "good"));
}

// ---- RFC 9213 targeted fields, RFC 9211 Cache-Status ----------------------------------------

#[tokio::test]
async fn rfc9213_cdn_cache_control_is_used_instead_of_cache_control() {
    let rig = Rig::start().await;
    rig.origin.route(
        "/cdn",
        Reply::ok("x")
            .header("cache-control", "no-store")
            .header("cdn-cache-control", "max-age=60"),
    );
    let (_, b) = twice(&rig, "/cdn").await;
    assert!(b.hit(), "{}", b.cache_status());
    assert_eq!(
        b.header("cdn-cache-control"),
        Some("max-age=60"),
        "forwarded downstream"
    );
}

#[tokio::test]
async fn rfc9213_the_proxys_own_field_comes_first_and_is_not_forwarded() {
    let rig = Rig::start().await;
    rig.origin.route(
        "/own",
        Reply::ok("x")
            .header("cdn-cache-control", "no-store")
            .header("herdwise-cache-control", "max-age=60"),
    );
    let (_, b) = twice(&rig, "/own").await;
    assert!(b.hit(), "{}", b.cache_status());
    assert!(b.header("herdwise-cache-control").is_none());
}

#[tokio::test]
async fn rfc9211_cache_status_on_every_response() {
    let rig = Rig::start().await;
    rig.origin
        .route("/cs", Reply::ok("x").header("cache-control", "max-age=60"));
    let (a, b) = twice(&rig, "/cs").await;
    assert!(
        a.cache_status()
            .starts_with("herdwise; fwd=uri-miss; fwd-status=200"),
        "{}",
        a.cache_status()
    );
    assert!(a.cache_status().contains("; stored"));
    assert!(
        b.cache_status().starts_with("herdwise; hit; ttl="),
        "{}",
        b.cache_status()
    );
    let unknown = rig.get("/cs", &[("host", "nope.test")]).await;
    assert!(unknown.cache_status().contains("detail=unknown-host"));
}

// ---- RFC 9110: HEAD, ranges, Via -----------------------------------------------------------

#[tokio::test]
async fn rfc9110_9_3_2_head_is_answered_from_a_stored_get() {
    let rig = Rig::start().await;
    rig.origin.route(
        "/hd",
        Reply::ok("twelve bytes").header("cache-control", "max-age=60"),
    );
    rig.get("/hd", &[]).await;
    let r = rig
        .client
        .send(Method::HEAD, "/hd", &[], Bytes::new())
        .await;
    assert!(r.hit(), "{}", r.cache_status());
    assert_eq!(r.header("content-length"), Some("12"));
    assert!(r.body.is_empty());
    // A HEAD miss fills the entry with a GET.
    rig.origin.route(
        "/hd2",
        Reply::ok("abc").header("cache-control", "max-age=60"),
    );
    rig.client
        .send(Method::HEAD, "/hd2", &[], Bytes::new())
        .await;
    assert_eq!(rig.origin.last("/hd2").unwrap().method, Method::GET);
    assert_eq!(rig.get("/hd2", &[]).await.body, "abc");
}

#[tokio::test]
async fn rfc9110_14_a_range_is_served_from_the_whole_stored_object() {
    let rig = Rig::start().await;
    rig.origin.route(
        "/rg",
        Reply::ok("0123456789").header("cache-control", "max-age=60"),
    );
    let r = rig.get("/rg", &[("range", "bytes=2-5")]).await;
    assert_eq!((r.status, r.body.as_str()), (206, "2345"));
    assert_eq!(r.header("content-range"), Some("bytes 2-5/10"));
    assert!(
        rig.origin
            .last("/rg")
            .unwrap()
            .headers
            .get("range")
            .is_none(),
        "filled whole"
    );
    let r = rig.get("/rg", &[("range", "bytes=-3")]).await;
    assert_eq!((r.status, r.body.as_str()), (206, "789"));
    let r = rig.get("/rg", &[("range", "bytes=50-")]).await;
    assert_eq!(r.status, 416);
    let r = rig.get("/rg", &[("range", "bytes=0-1,3-4")]).await;
    assert_eq!((r.status, r.body.len()), (200, 10));
    assert_eq!(rig.origin.hits("/rg"), 1);
}

#[tokio::test]
async fn rfc9110_13_1_5_if_range_that_does_not_match_gets_the_whole() {
    let rig = Rig::start().await;
    rig.origin.route(
        "/ir",
        Reply::ok("0123456789")
            .header("cache-control", "max-age=60")
            .header("etag", "\"a\""),
    );
    rig.get("/ir", &[]).await;
    let r = rig
        .get("/ir", &[("range", "bytes=0-1"), ("if-range", "\"a\"")])
        .await;
    assert_eq!(r.status, 206);
    let r = rig
        .get("/ir", &[("range", "bytes=0-1"), ("if-range", "\"b\"")])
        .await;
    assert_eq!(r.status, 200);
}

#[tokio::test]
async fn rfc9110_7_6_3_via_is_added() {
    let rig = Rig::start().await;
    rig.origin.route("/via", Reply::ok("x"));
    let r = rig.get("/via", &[]).await;
    assert_eq!(r.header("via"), Some("1.1 herdwise"));
    assert!(rig
        .origin
        .last("/via")
        .unwrap()
        .headers
        .get("via")
        .is_some());
}

#[tokio::test]
async fn rfc9110_6_6_1_a_missing_date_is_added() {
    let rig = Rig::start().await;
    rig.origin.route(
        "/nodate",
        Reply::ok("x").header("cache-control", "max-age=60"),
    );
    let (_, b) = twice(&rig, "/nodate").await;
    assert!(b.header("date").is_some());
}

// ---- Request collapsing ----------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_misses_collapse_into_one_origin_request() {
    let rig = Rig::start().await;
    rig.origin.route(
        "/hot",
        Reply::ok("hot")
            .header("cache-control", "max-age=60")
            .delay(Duration::from_millis(200)),
    );
    let mut tasks = Vec::new();
    for _ in 0..50 {
        let client = rig.client.clone();
        tasks.push(tokio::spawn(async move {
            client.send(Method::GET, "/hot", &[], Bytes::new()).await
        }));
    }
    let mut collapsed = 0;
    for t in tasks {
        let r = t.await.unwrap();
        assert_eq!(r.body, "hot");
        collapsed += r.cache_status().contains("collapsed") as usize;
    }
    assert_eq!(rig.origin.hits("/hot"), 1);
    assert!(
        collapsed > 0,
        "some requests waited for the first one's fill"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_uncacheable_answer_does_not_make_requests_wait_on_each_other() {
    let rig = Rig::start().await;
    rig.origin.route(
        "/private",
        Reply::ok("mine")
            .header("cache-control", "private")
            .delay(Duration::from_millis(50)),
    );
    rig.get("/private", &[]).await;
    // The pass marker: the next requests go straight to the origin, each with its own answer.
    let started = std::time::Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..10 {
        let client = rig.client.clone();
        tasks.push(tokio::spawn(async move {
            client
                .send(Method::GET, "/private", &[], Bytes::new())
                .await
        }));
    }
    for t in tasks {
        assert!(t.await.unwrap().cache_status().contains("fwd=bypass"));
    }
    assert_eq!(rig.origin.hits("/private"), 11);
    assert!(
        started.elapsed() < Duration::from_millis(400),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn s5_1_a_list_valued_age_uses_its_first_member() {
    let rig = Rig::start().await;
    rig.origin.route(
        "/age-list",
        Reply::ok("a")
            .header("cache-control", "max-age=3600")
            .header("age", "7200, 0"),
    );
    twice(&rig, "/age-list").await;
    assert_eq!(rig.origin.hits("/age-list"), 2, "7200 s old: stale at once");
}

#[tokio::test]
async fn s4_3_4_a_304_without_validators_freshens_the_response_it_validated() {
    // The origin answers the cache's own conditional with a bare 304 (no ETag, no
    // Last-Modified): it is about the one response whose validators were sent.
    let rig = Rig::start().await;
    rig.origin.script("/bare304", |seen, _| {
        if seen.headers.contains_key("if-none-match") {
            Reply::ok("").status(304).set("cache-control", "max-age=60")
        } else {
            Reply::ok("full")
                .header("cache-control", "max-age=0, must-revalidate")
                .header("etag", "\"abcd\"")
        }
    });
    rig.get("/bare304", &[]).await;
    let b = rig.get("/bare304", &[]).await;
    assert_eq!(
        (b.status, b.body.as_str()),
        (200, "full"),
        "{}",
        b.cache_status()
    );
    let c = rig.get("/bare304", &[]).await;
    assert!(c.hit(), "{}", c.cache_status());
}

#[tokio::test]
async fn s4_3_4_a_304_that_selects_nothing_is_not_given_to_an_unconditional_request() {
    // The 304 names another representation: the cache fetches the whole response again
    // rather than hand a 304 to a client that asked for none.
    let rig = Rig::start().await;
    rig.origin.script("/other304", |seen, n| {
        if seen.headers.contains_key("if-none-match") {
            Reply::ok("")
                .status(304)
                .set("cache-control", "max-age=60")
                .header("etag", "\"someone-else\"")
        } else {
            Reply::ok(&format!("full-{n}"))
                .header("cache-control", "max-age=0, must-revalidate")
                .header("etag", "\"abcd\"")
        }
    });
    rig.get("/other304", &[]).await;
    let b = rig.get("/other304", &[]).await;
    assert_eq!(b.status, 200, "{}", b.cache_status());
    assert!(b.body.starts_with("full-"), "{}", b.body);
}

#[tokio::test]
async fn rfc9213_2_1_an_invalid_targeted_field_is_ignored() {
    let rig = Rig::start().await;
    for (path, cdn) in [
        ("/cdn-bad-type", "max-age=10000, &&&&&"),
        ("/cdn-wrong-type", "max-age=\"10000\""),
    ] {
        rig.origin.route(
            path,
            Reply::ok("x")
                .header("cache-control", "no-store")
                .header("cdn-cache-control", cdn),
        );
        let (_, b) = twice(&rig, path).await;
        assert!(!b.hit(), "{path}: {}", b.cache_status());
        assert_eq!(
            rig.origin.hits(path),
            2,
            "{path}: Cache-Control's no-store applies"
        );
    }
}
