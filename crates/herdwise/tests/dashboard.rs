//! The Grafana dashboard queries only what a running cache exports: the `observability`
//! example runs (its own code, included here), `/metrics` is scraped over HTTP, and every
//! metric a panel queries — and every metric of the table — is in the scrape.
#![cfg(feature = "prometheus")]

#[allow(dead_code)]
#[path = "../examples/observability.rs"]
mod example;

use std::collections::BTreeSet;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

async fn http_get(addr: std::net::SocketAddr, path: &str) -> (String, String) {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nhost: localhost\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    let (head, body) = response.split_once("\r\n\r\n").unwrap();
    (head.to_string(), body.to_string())
}

/// Metric names in a Prometheus text scrape, histogram suffixes folded.
fn scraped_names(scrape: &str) -> BTreeSet<String> {
    scrape
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|l| l.split(['{', ' ']).next())
        .map(|name| {
            let name = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|suffix| {
                    name.strip_suffix(suffix)
                        .filter(|n| n.ends_with("_seconds"))
                })
                .unwrap_or(name);
            name.to_string()
        })
        .collect()
}

/// `herdwise_*` identifiers in a PromQL expression, histogram suffixes folded.
fn queried_names(expr: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut rest = expr;
    while let Some(at) = rest.find("herdwise_") {
        let tail = &rest[at..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        let name = &tail[..end];
        names.push(name.strip_suffix("_bucket").unwrap_or(name).to_string());
        rest = &tail[end..];
    }
    names
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_metric_the_dashboard_queries_is_in_a_real_scrape() {
    let demo = example::start("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let addr = demo.server.local_addr();
    // Let the workload run: misses, hits, loads, an absent key, a failing key.
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    let (head, scrape) = http_get(addr, "/metrics").await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(head.contains("text/plain; version=0.0.4"), "{head}");
    let scraped = scraped_names(&scrape);
    for name in herdwise::metrics::ALL {
        assert!(scraped.contains(*name), "{name} is not in the scrape");
    }
    // Values, not only names: the workload's reads are counted, hits included.
    let l1_hits: f64 = scrape
        .lines()
        .find(|l| l.starts_with("herdwise_cache_gets_total{") && l.contains("result=\"l1_hit\""))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .expect("an l1_hit series");
    assert!(l1_hits > 100.0, "{l1_hits} L1 hits after 1.5 s of reads");
    assert!(scrape.contains("herdwise_cache_get_duration_seconds_bucket{"));
    assert!(scrape.contains("# HELP herdwise_cache_gets_total"));

    let dashboard: serde_json::Value =
        serde_json::from_str(include_str!("../../../dashboards/herdwise.json")).unwrap();
    let panels = dashboard["panels"].as_array().unwrap();
    let mut queried = BTreeSet::new();
    for panel in panels.iter().filter(|p| p["type"] != "row") {
        let title = panel["title"].as_str().unwrap();
        let targets = panel["targets"].as_array().unwrap();
        assert!(!targets.is_empty(), "panel {title} queries nothing");
        for target in targets {
            let expr = target["expr"].as_str().unwrap();
            let names = queried_names(expr);
            assert!(!names.is_empty(), "panel {title}: {expr}");
            for name in names {
                assert!(
                    scraped.contains(&name),
                    "panel {title} queries {name}, which is not in the scrape"
                );
                queried.insert(name);
            }
        }
    }
    // And the dashboard shows every metric there is.
    let all: BTreeSet<String> = herdwise::metrics::ALL
        .iter()
        .map(|s| s.to_string())
        .collect();
    assert_eq!(
        queried, all,
        "metrics without a panel, or panels on unknown metrics"
    );

    let (head, _) = http_get(addr, "/other").await;
    assert!(head.starts_with("HTTP/1.1 404"), "{head}");
}
