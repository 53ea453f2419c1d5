//! Metric handles are taken when a cache is built: a cache built with no recorder installed
//! records nothing, even after one is. `build()` says so, once per process.

use std::sync::{Arc, Mutex};

use herdwise::Cache;
use metrics_util::debugging::DebuggingRecorder;

#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Captured {
    fn warnings(&self) -> usize {
        String::from_utf8_lossy(&self.0.lock().unwrap())
            .matches("no metrics recorder is installed")
            .count()
    }
}

// Defect 10: a cache built before the recorder is installed must not stay silent about it.
#[test]
fn building_without_a_recorder_warns_once_and_with_one_not_at_all() {
    let captured = Captured::default();
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
        assert_eq!(captured.warnings(), 0, "a recorder was installed");
        let _a: Cache<u64, String> = Cache::builder("no-recorder").build().unwrap();
        assert_eq!(captured.warnings(), 1, "built with no recorder: warned");
        let _b: Cache<u64, String> = Cache::builder("no-recorder-2").build().unwrap();
        assert_eq!(captured.warnings(), 1, "once per process");
    });
}
