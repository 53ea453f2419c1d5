//! Metric handles are taken when a cache is built: a cache built with no recorder installed
//! records nothing, even after one is. `build()` says so, once per process.

mod common;

use herdwise::Cache;
use metrics_util::debugging::DebuggingRecorder;

// Defect 10: a cache built before the recorder is installed must not stay silent about it.
#[test]
fn building_without_a_recorder_warns_once_and_with_one_not_at_all() {
    let captured = common::Captured::default();
    let writer = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .finish();
    tracing::subscriber::with_default(subscriber, || {
        let recorder = DebuggingRecorder::new();
        metrics::with_local_recorder(&recorder, || {
            let _c: Cache<u64, String> = Cache::builder("with-recorder").build().unwrap();
        });
        assert_eq!(
            captured.count("no metrics recorder is installed"),
            0,
            "a recorder was installed"
        );
        let _a: Cache<u64, String> = Cache::builder("no-recorder").build().unwrap();
        assert_eq!(
            captured.count("no metrics recorder is installed"),
            1,
            "built with no recorder: warned"
        );
        let _b: Cache<u64, String> = Cache::builder("no-recorder-2").build().unwrap();
        assert_eq!(
            captured.count("no metrics recorder is installed"),
            1,
            "once per process"
        );
    });
}
