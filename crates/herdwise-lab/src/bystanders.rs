//! Other clients of the same Redis, reading unrelated keys while a scenario does something
//! heavy (a bulk invalidation): their latency shows whether that work blocked the server.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use redis::aio::ConnectionManager;

use crate::record::Recorder;
use crate::LabError;

/// Keys the bystanders read (`other:0` .. `other:999`); [`Bystanders::seed`] writes them.
const KEYS: u64 = 1_000;

/// A group of reader tasks, each on its own connection, one `GET` every 2 ms.
pub struct Bystanders {
    started: Instant,
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<Recorder>>,
}

impl Bystanders {
    /// Writes the keys the bystanders read.
    pub async fn seed(admin: &mut ConnectionManager) -> Result<(), LabError> {
        let mut pipe = redis::pipe();
        for i in 0..KEYS {
            pipe.cmd("SET").arg(format!("other:{i}")).arg("y").ignore();
        }
        let () = pipe.query_async(admin).await?;
        Ok(())
    }

    /// Starts `count` readers against `url`.
    pub async fn start(url: &str, count: usize) -> Result<Self, LabError> {
        let started = Instant::now();
        let stop = Arc::new(AtomicBool::new(false));
        let mut tasks = Vec::new();
        for b in 0..count {
            let mut conn = ConnectionManager::new(redis::Client::open(url)?).await?;
            let stop = stop.clone();
            tasks.push(tokio::spawn(async move {
                let mut recorder = Recorder::new(started, 120);
                let mut i = b as u64;
                while !stop.load(Ordering::Relaxed) {
                    let t = Instant::now();
                    let r: Result<Option<String>, _> = redis::cmd("GET")
                        .arg(format!("other:{}", i % KEYS))
                        .query_async(&mut conn)
                        .await;
                    recorder.record(t.elapsed(), r.is_ok());
                    i += 7;
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
                recorder
            }));
        }
        Ok(Bystanders {
            started,
            stop,
            tasks,
        })
    }

    /// When they started.
    pub fn started(&self) -> Instant {
        self.started
    }

    /// Stops them; every read they made.
    pub async fn finish(self) -> Recorder {
        self.stop.store(true, Ordering::Relaxed);
        let mut merged = Recorder::new(self.started, 120);
        for task in self.tasks {
            if let Ok(r) = task.await {
                merged.merge(&r);
            }
        }
        merged
    }
}
