//! What `keyspace_notifications(true)` costs: two instances (separate `Cache`s, like two pods)
//! on one Redis it starts, 8 tasks each, a uniform mix of reads and writes over 1 000 keys, the
//! same run with the option off and on (interleaved, three rounds), printing JSON: operations
//! per second, Redis commands per operation, and L1 hits per read.
//!
//! `cargo run --release -p herdwise-lab --example keyspace_cost [seconds per run] [write %]`

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use herdwise::{Cache, RedisStore};
use herdwise_testkit::RedisServer;

const KEYS: u64 = 1_000;
const TASKS: usize = 8;

#[derive(Default)]
struct Counts {
    ops: AtomicU64,
    reads: AtomicU64,
    loads: AtomicU64,
}

fn commands(server: &RedisServer) -> Result<u64, Box<dyn std::error::Error>> {
    let out = std::process::Command::new("redis-cli")
        .args(["-p", &server.port().to_string(), "INFO", "stats"])
        .output()?;
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("total_commands_processed:"))
        .and_then(|n| n.trim().parse().ok())
        .ok_or_else(|| "no total_commands_processed in INFO".into())
}

async fn run(
    server: &RedisServer,
    keyspace: bool,
    seconds: f64,
    write_share: f64,
) -> Result<serde_json::Value, Box<dyn std::error::Error>> {
    let mut caches = Vec::new();
    for _ in 0..2 {
        let cache: Cache<u64, String> = Cache::builder("cost")
            .store(RedisStore::connect(&server.url()).await?)
            .keyspace_notifications(keyspace)
            .build()?;
        cache.clear().await?;
        cache.get(&0).await?;
        caches.push(cache);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let counts = Arc::new(Counts::default());
    let before = commands(server)?;
    let deadline = Instant::now() + Duration::from_secs_f64(seconds);
    let mut tasks = Vec::new();
    for (i, cache) in caches.iter().enumerate() {
        for t in 0..TASKS {
            let cache = cache.clone();
            let counts = counts.clone();
            let mut seed = (i * TASKS + t) as u64 * 0x9E37_79B9_7F4A_7C15 + 1;
            tasks.push(tokio::spawn(async move {
                while Instant::now() < deadline {
                    seed ^= seed << 13;
                    seed ^= seed >> 7;
                    seed ^= seed << 17;
                    let key = seed % KEYS;
                    let roll = (seed >> 32) as f64 / u32::MAX as f64;
                    if roll < write_share {
                        let _ = cache.set(&key, format!("value {seed}")).await;
                    } else {
                        counts.reads.fetch_add(1, Ordering::Relaxed);
                        let loads = &counts.loads;
                        let _ = cache
                            .get_or_load(&key, |k| {
                                loads.fetch_add(1, Ordering::Relaxed);
                                let v = format!("loaded {k}");
                                async move { Ok::<_, std::io::Error>(Some(v)) }
                            })
                            .await;
                    }
                    counts.ops.fetch_add(1, Ordering::Relaxed);
                }
            }));
        }
    }
    for task in tasks {
        task.await?;
    }
    let after = commands(server)?;
    let ops = counts.ops.load(Ordering::Relaxed) as f64;
    Ok(serde_json::json!({
        "keyspace_notifications": keyspace,
        "ops_per_second": (ops / seconds).round(),
        "redis_commands_per_op": ((after - before) as f64 / ops * 1000.0).round() / 1000.0,
        "loads": counts.loads.load(Ordering::Relaxed),
        "reads": counts.reads.load(Ordering::Relaxed),
    }))
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let seconds: f64 = args.next().map_or(Ok(3.0), |s| s.parse())?;
    let write_percent: f64 = args.next().map_or(Ok(10.0), |s| s.parse())?;
    let server = RedisServer::start()?;
    let mut runs = Vec::new();
    let mut ratios = Vec::new();
    for _ in 0..3 {
        let off = run(&server, false, seconds, write_percent / 100.0).await?;
        let on = run(&server, true, seconds, write_percent / 100.0).await?;
        let rate = |r: &serde_json::Value| r["ops_per_second"].as_f64().unwrap_or(0.0);
        ratios.push((rate(&on) / rate(&off).max(1.0) * 1000.0).round() / 1000.0);
        runs.push(off);
        runs.push(on);
    }
    println!(
        "{}",
        serde_json::to_string_pretty(&serde_json::json!({
            "write_percent": write_percent,
            "seconds_per_run": seconds,
            "throughput_on_over_off": ratios,
            "runs": runs,
        }))?
    );
    Ok(())
}
