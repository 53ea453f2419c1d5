//! A loaded value too large to cache is returned to its callers, counted, and logged — at
//! most once a second with the count of repeats it stands for, not once per read (one test of
//! a service logged 1,533 such warnings among 1,547 lines).

mod common;

use herdwise::{metrics as m, Cache};
use metrics_util::debugging::{DebugValue, DebuggingRecorder};

#[test]
fn an_oversized_value_is_served_counted_and_its_warning_throttled() {
    let captured = common::Captured::default();
    let writer = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .finish();
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    tracing::subscriber::with_default(subscriber, || {
        let cache: Cache<u64, String> = metrics::with_local_recorder(&recorder, || {
            Cache::builder("oversized")
                .max_value_bytes(1_024)
                .build()
                .unwrap()
        });
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            for _ in 0..200 {
                let got = cache
                    .get_or_load(&1, |_| async {
                        Ok::<_, std::io::Error>(Some("x".repeat(100_000)))
                    })
                    .await
                    .unwrap();
                assert_eq!(got.map(|v| v.len()), Some(100_000), "still served");
            }
        });
    });
    let warned = captured.count("loaded value not cached");
    assert!(
        (1..=2).contains(&warned),
        "200 reads of an oversized value logged {warned} warnings"
    );
    let too_large: u64 = snapshotter
        .snapshot()
        .into_vec()
        .into_iter()
        .filter(|(key, _, _, _)| key.key().name() == m::UNCACHEABLE_VALUES)
        .map(|(_, _, _, value)| match value {
            DebugValue::Counter(n) => n,
            _ => 0,
        })
        .sum();
    assert_eq!(too_large, 200, "every one counted");
}
