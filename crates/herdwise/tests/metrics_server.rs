//! The `/metrics` server of `herdwise::prometheus::serve` under abuse: idle connections cannot
//! queue scrapes behind them (past 16, a connection is refused at once; an idle one is closed
//! after 1 s), `HEAD` tells the length a `GET` would have, and bare `\n` line ends are read.
#![cfg(feature = "prometheus")]

use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

async fn request(addr: std::net::SocketAddr, raw: &str) -> String {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(raw.as_bytes()).await.unwrap();
    let mut response = String::new();
    let _ = stream.read_to_string(&mut response).await;
    response
}

fn content_length(response: &str) -> usize {
    response
        .lines()
        .find_map(|l| l.strip_prefix("content-length: "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_do_not_starve_scrapes() {
    let server = herdwise::prometheus::serve("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let addr = server.local_addr();
    let _cache: herdwise::Cache<u64, String> = herdwise::Cache::builder("srv").build().unwrap();

    // HEAD: a GET's length, no body.
    let got = request(addr, "GET /metrics HTTP/1.1\r\n\r\n").await;
    let head = request(addr, "HEAD /metrics HTTP/1.1\r\n\r\n").await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let (_, head_body) = head.split_once("\r\n\r\n").unwrap();
    assert!(head_body.is_empty());
    assert!(content_length(&head) > 0);
    assert!(got.starts_with("HTTP/1.1 200"));
    // Bare `\n` line ends.
    let t = Instant::now();
    let bare = request(addr, "GET /metrics HTTP/1.0\n\n").await;
    assert!(bare.starts_with("HTTP/1.1 200"), "{bare}");
    assert!(
        t.elapsed() < Duration::from_millis(900),
        "{:?}",
        t.elapsed()
    );

    // 16 idle connections take every slot: the next is refused at once, not queued.
    let mut idle = Vec::new();
    for _ in 0..16 {
        idle.push(TcpStream::connect(addr).await.unwrap());
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let t = Instant::now();
    let refused = request(addr, "GET /metrics HTTP/1.1\r\n\r\n").await;
    assert!(refused.starts_with("HTTP/1.1 503"), "{refused}");
    assert!(
        t.elapsed() < Duration::from_millis(500),
        "{:?}",
        t.elapsed()
    );
    // The idle ones are closed after 1 s: scrapes go through again.
    tokio::time::sleep(Duration::from_millis(1_300)).await;
    let after = request(addr, "GET /metrics HTTP/1.1\r\n\r\n").await;
    assert!(after.starts_with("HTTP/1.1 200"), "{after}");
    for mut stream in idle {
        let mut rest = String::new();
        let _ = stream.read_to_string(&mut rest).await;
        assert!(rest.starts_with("HTTP/1.1 408"), "{rest}");
    }
}
