//! Does a busy but healthy Redis trip the circuit breaker? Two instances (separate `Cache`s)
//! read absent keys (one L2 `GET` each) from `C` tasks each for `S` seconds, with `B` extra
//! threads spinning to load the host, under one breaker setting per run; prints JSON per run:
//! reads per second, client-side latency percentiles of those reads, store calls that failed
//! (timeouts included), and how often each instance's breaker opened.
//!
//! `cargo run --release -p herdwise-lab --example breaker_load [S] [C] [B] [runs]`
//!
//! Settings compared (interleaved, `runs` rounds): `default` (the store deadline and the
//! breaker as `CacheBuilder` sets them: 100 ms, 50 ms slow) and the ones named in the output.
//! (The recorded `docs/lab/breaker-load-*.json` predate the 100 ms default: their `default`
//! is the old 50 ms deadline, their `slow_call 50ms of a 100ms deadline` today's default.)

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use herdwise::{BreakerConfig, BreakerState, Cache, RedisStore};
use herdwise_testkit::RedisServer;

struct Setting {
    name: &'static str,
    deadline: Option<Duration>,
    breaker: Option<BreakerConfig>,
}

async fn run(
    server: &RedisServer,
    setting: &Setting,
    seconds: f64,
    concurrency: usize,
) -> Result<serde_json::Value, Box<dyn std::error::Error>> {
    let mut caches = Vec::new();
    for _ in 0..2 {
        let mut builder =
            Cache::<u64, String>::builder("load").store(RedisStore::connect(&server.url()).await?);
        if let Some(deadline) = setting.deadline {
            builder = builder.store_timeout(deadline);
        }
        if let Some(breaker) = setting.breaker {
            builder = builder.circuit_breaker(breaker);
        }
        let cache = builder.build()?;
        cache.get(&0).await?;
        caches.push(cache);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let deadline = Instant::now() + Duration::from_secs_f64(seconds);
    let failed = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for (i, cache) in caches.iter().enumerate() {
        for t in 0..concurrency {
            let cache = cache.clone();
            let failed = failed.clone();
            tasks.push(tokio::spawn(async move {
                let mut latencies = Histogram::<u64>::new(3).expect("histogram");
                let mut key = ((i * concurrency + t) as u64) << 40;
                while Instant::now() < deadline {
                    key += 1;
                    let start = Instant::now();
                    if cache.get(&key).await.is_err() {
                        failed.fetch_add(1, Ordering::Relaxed);
                    }
                    let _ = latencies.record(start.elapsed().as_micros() as u64);
                }
                latencies
            }));
        }
    }
    // Breaker openings, per instance, watched every 2 ms.
    let watching = Arc::new(AtomicBool::new(true));
    let watcher = {
        let caches = caches.clone();
        let watching = watching.clone();
        tokio::spawn(async move {
            let mut opened = vec![0u64; caches.len()];
            let mut was_open = vec![false; caches.len()];
            while watching.load(Ordering::Relaxed) {
                for (i, cache) in caches.iter().enumerate() {
                    let open = cache.breaker_state() != BreakerState::Closed;
                    if open && !was_open[i] {
                        opened[i] += 1;
                    }
                    was_open[i] = open;
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            opened
        })
    };
    let mut all = Histogram::<u64>::new(3)?;
    for task in tasks {
        all.add(task.await?)?;
    }
    watching.store(false, Ordering::Relaxed);
    let opened = watcher.await?;
    let ms = |q: f64| all.value_at_quantile(q) as f64 / 1000.0;
    Ok(serde_json::json!({
        "setting": setting.name,
        "reads_per_second": (all.len() as f64 / seconds).round(),
        "latency_ms": {
            "p50": ms(0.5), "p99": ms(0.99), "p999": ms(0.999), "max": all.max() as f64 / 1000.0
        },
        "failed_reads": failed.load(Ordering::Relaxed),
        "breaker_opened": opened,
    }))
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let seconds: f64 = args.next().map_or(Ok(5.0), |s| s.parse())?;
    let concurrency: usize = args.next().map_or(Ok(64), |s| s.parse())?;
    let burners: usize = args.next().map_or(Ok(1), |s| s.parse())?;
    let rounds: usize = args.next().map_or(Ok(3), |s| s.parse())?;
    let server = RedisServer::start()?;
    let spinning = Arc::new(AtomicBool::new(true));
    let threads: Vec<_> = (0..burners)
        .map(|_| {
            let spinning = spinning.clone();
            std::thread::spawn(move || {
                let mut x = 1u64;
                while spinning.load(Ordering::Relaxed) {
                    x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
                }
            })
        })
        .collect();
    let settings = [
        Setting {
            name: "slow_call 25ms of a 50ms deadline",
            deadline: Some(Duration::from_millis(50)),
            breaker: None,
        },
        Setting {
            name: "default",
            deadline: None,
            breaker: None,
        },
        Setting {
            name: "slow_call 100ms of a 200ms deadline",
            deadline: Some(Duration::from_millis(200)),
            breaker: None,
        },
    ];
    let mut runs = Vec::new();
    for _ in 0..rounds {
        for setting in &settings {
            runs.push(run(&server, setting, seconds, concurrency).await?);
        }
    }
    spinning.store(false, Ordering::Relaxed);
    for t in threads {
        let _ = t.join();
    }
    println!(
        "{}",
        serde_json::to_string_pretty(&serde_json::json!({
            "seconds_per_run": seconds,
            "tasks_per_instance": concurrency,
            "spinning_threads": burners,
            "runs": runs,
        }))?
    );
    Ok(())
}
