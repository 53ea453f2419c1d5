//! Micro-benchmarks of the hot paths: envelope encode/decode, key encoding, the L1 hit.
//!
//! `cargo bench -p herdwise-lab --bench hot_paths`

use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use futures::FutureExt as _;
use herdwise::envelope::{self, Compression, Meta};
use herdwise::{Cache, MemoryStore};

fn meta() -> Meta {
    Meta {
        created_at_ms: 1,
        fresh_until_ms: 2,
        stale_until_ms: 3,
        version: 4,
        load_duration: Duration::from_micros(5),
        negative: false,
        stale_copy: false,
        codec_id: 1,
    }
}

fn envelope_benches(c: &mut Criterion) {
    let mut group = c.benchmark_group("envelope");
    for size in [100usize, 1024, 16 * 1024] {
        // Half-repetitive payload: compressible, like typical JSON-ish data.
        let payload: Vec<u8> = (0..size)
            .map(|i| if i % 2 == 0 { b'a' } else { (i % 251) as u8 })
            .collect();
        group.throughput(Throughput::Bytes(size as u64));
        group.bench_function(format!("encode/{size}B"), |b| {
            b.iter(|| envelope::encode(black_box(&meta()), black_box(&payload), Compression::None))
        });
        let plain = envelope::encode(&meta(), &payload, Compression::None);
        group.bench_function(format!("decode/{size}B"), |b| {
            b.iter(|| {
                envelope::decode(black_box(&plain), 1 << 20)
                    .map(|d| (d.meta.version, d.payload.len()))
            })
        });
        let lz4 = Compression::Lz4 { min_bytes: 1 };
        group.bench_function(format!("encode_lz4/{size}B"), |b| {
            b.iter(|| envelope::encode(black_box(&meta()), black_box(&payload), lz4))
        });
        let compressed = envelope::encode(&meta(), &payload, lz4);
        group.bench_function(format!("decode_lz4/{size}B"), |b| {
            b.iter(|| {
                envelope::decode(black_box(&compressed), 1 << 20)
                    .map(|d| (d.meta.version, d.payload.len()))
            })
        });
    }
    group.finish();
}

fn key_benches(c: &mut Criterion) {
    let mut group = c.benchmark_group("key");
    group.bench_function("u64", |b| {
        b.iter(|| herdwise::encode_key(black_box(&123_456_789u64)))
    });
    group.bench_function("tuple(u64,str)", |b| {
        b.iter(|| herdwise::encode_key(black_box(&(42u64, "en:GB"))))
    });
    group.finish();
}

fn l1_benches(c: &mut Criterion) {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => panic!("tokio runtime: {e}"),
    };
    let cache: Cache<u64, Vec<u8>> = match Cache::builder("bench").store(MemoryStore::new()).build()
    {
        Ok(cache) => cache,
        Err(e) => panic!("cache: {e}"),
    };
    runtime.block_on(async {
        for k in 0..1000u64 {
            let _ = cache.set(&k, vec![1u8; 100]).await;
        }
    });
    let raw = quick_cache::sync::Cache::<u64, std::sync::Arc<Vec<u8>>>::new(2000);
    for k in 0..1000u64 {
        raw.insert(k, std::sync::Arc::new(vec![1u8; 100]));
    }
    // Inside the runtime, as in a service (the cache starts its background listeners once).
    let _entered = runtime.enter();
    let mut group = c.benchmark_group("l1_hit");
    let mut k = 0u64;
    group.bench_function("herdwise Cache::get", |b| {
        b.iter(|| {
            k = (k + 1) % 1000;
            cache.get(black_box(&k)).now_or_never()
        })
    });
    group.bench_function("quick_cache get (baseline)", |b| {
        b.iter(|| {
            k = (k + 1) % 1000;
            raw.get(black_box(&k))
        })
    });
    group.finish();
}

/// What metrics and tracing cost on an L1 hit, same run: a cache built with no recorder (its
/// handles are no-ops) against one built with a Prometheus recorder, on one thread and on two
/// threads reading one hot key (a counter shared between cores would bounce); then the
/// exported one again with a `tracing` subscriber installed that logs at info (as a service
/// would) and so is not interested in Herdwise's debug spans.
fn observed_benches(c: &mut Criterion) {
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => panic!("tokio runtime: {e}"),
    };
    let build = || match Cache::<u64, Vec<u8>>::builder("bench-observed")
        .store(MemoryStore::new())
        .build()
    {
        Ok(cache) => cache,
        Err(e) => panic!("cache: {e}"),
    };
    let _entered = runtime.enter();
    let bare = build();
    let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
    let exported = metrics::with_local_recorder(&recorder, build);
    for cache in [&bare, &exported] {
        runtime.block_on(async {
            for k in 0..1000u64 {
                let _ = cache.set(&k, vec![1u8; 100]).await;
            }
        });
    }
    type Group<'a> = criterion::BenchmarkGroup<'a, criterion::measurement::WallTime>;
    let one_thread = |group: &mut Group<'_>, name: &str, cache: &Cache<u64, Vec<u8>>| {
        let mut k = 0u64;
        group.bench_function(name, |b| {
            b.iter(|| {
                k = (k + 1) % 1000;
                cache.get(black_box(&k)).now_or_never()
            })
        });
    };
    let two_threads = |group: &mut Group<'_>, name: &str, cache: &Cache<u64, Vec<u8>>| {
        group.bench_function(name, |b| {
            b.iter_custom(|iters| {
                let started = std::time::Instant::now();
                std::thread::scope(|s| {
                    for _ in 0..2 {
                        let handle = runtime.handle().clone();
                        s.spawn(move || {
                            let _entered = handle.enter();
                            for _ in 0..iters {
                                // One hot key: both threads hit the same entry.
                                let _ = black_box(cache.get(black_box(&7)).now_or_never());
                            }
                        });
                    }
                });
                // The time of `iters` hits on each thread at once.
                started.elapsed()
            })
        });
    };
    let mut group = c.benchmark_group("l1_hit_observed");
    one_thread(&mut group, "no recorder", &bare);
    one_thread(&mut group, "prometheus recorder", &exported);
    two_threads(&mut group, "2 threads, no recorder", &bare);
    two_threads(&mut group, "2 threads, prometheus recorder", &exported);
    let shared = std::sync::atomic::AtomicU64::new(0);
    group.bench_function("2 threads, one shared atomic", |b| {
        b.iter_custom(|iters| {
            let started = std::time::Instant::now();
            std::thread::scope(|s| {
                for _ in 0..2 {
                    s.spawn(|| {
                        for _ in 0..iters {
                            shared.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        }
                    });
                }
            });
            started.elapsed()
        })
    });
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::INFO)
        .with_writer(std::io::sink)
        .finish();
    if tracing::subscriber::set_global_default(subscriber).is_ok() {
        one_thread(
            &mut group,
            "prometheus recorder, info subscriber",
            &exported,
        );
        two_threads(
            &mut group,
            "2 threads, prometheus recorder, info subscriber",
            &exported,
        );
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().measurement_time(Duration::from_secs(2)).warm_up_time(Duration::from_millis(500));
    targets = envelope_benches, key_benches, l1_benches, observed_benches
}
criterion_main!(benches);
