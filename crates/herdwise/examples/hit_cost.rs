//! Instructions per L1 hit, for callgrind: `hit_cost <bare|exported|traced> <hits>` reads one
//! cached key `hits` times through a cache built with no metrics recorder (`bare`), with a
//! Prometheus recorder (`exported`), or with that recorder and an info-level `tracing`
//! subscriber installed (`traced`). Run it twice with different counts under
//! `valgrind --tool=callgrind` and divide the difference in instructions by the difference in
//! hits (the README's "What it costs on an L1 hit" gives the figures and the commands).

use futures::FutureExt as _;
use herdwise::{Cache, MemoryStore};

fn main() {
    let mut args = std::env::args().skip(1);
    let mode = args.next().unwrap_or_else(|| "bare".into());
    let hits: u64 = args.next().and_then(|n| n.parse().ok()).unwrap_or(100_000);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    let _entered = runtime.enter();
    let build = || {
        Cache::<u64, Vec<u8>>::builder("hit-cost")
            .store(MemoryStore::new())
            .build()
            .expect("a cache")
    };
    let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
    let cache = match mode.as_str() {
        "bare" => build(),
        "exported" | "traced" => metrics::with_local_recorder(&recorder, build),
        other => panic!("unknown mode {other}: bare, exported or traced"),
    };
    if mode == "traced" {
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::INFO)
            .with_writer(std::io::sink)
            .finish();
        tracing::subscriber::set_global_default(subscriber).expect("one subscriber");
    }
    runtime.block_on(async {
        cache.set(&7, vec![1u8; 100]).await.expect("set");
    });
    let mut found = 0u64;
    for _ in 0..hits {
        if let Some(Ok(Some(_))) = cache.get(std::hint::black_box(&7)).now_or_never() {
            found += 1;
        }
    }
    assert_eq!(found, hits);
}
