//! Cross-instance load leases, as the cache uses them.
//!
//! On an L2 miss, the in-process leader tries to take the key's lease in L2. Whoever holds it
//! loads from the origin and fills through the *fenced* fill, which succeeds only while the
//! lease is still theirs: any write or invalidation of the key meanwhile voids the lease, so a
//! slow load can never put an older value over a newer origin state (the cache-aside race).
//! Instances that find the lease taken wait for the fill: woken by the fill's announcement on
//! the namespace's channel, re-checking at a poll interval in case a message is lost, and giving
//! up after a deadline to load themselves (counted). So a stuck or dead holder costs extra origin
//! load, never an outage; a dead holder's lease expires after its TTL anyway, and a live holder
//! extends its lease while its load runs for at most the maximum hold.

use std::collections::HashMap;
use std::sync::{Arc, Weak};
use std::time::Duration;

use parking_lot::Mutex;
use tokio::sync::{broadcast, Notify};

use crate::store::{Store, StoreEvent};
use crate::tiers::remote::Remote;

/// Lease settings of a cache.
#[derive(Debug, Clone, Copy)]
pub(crate) struct LeaseConfig {
    /// How long a lease lives unless released or extended: bounds how long a dead holder
    /// blocks others.
    pub ttl: Duration,
    /// How long a waiter waits for another instance's fill before loading itself.
    pub wait: Duration,
    /// Re-check interval while waiting (the fallback when a fill announcement is lost).
    pub poll: Duration,
    /// Longest time a holder extends its lease while its load runs.
    pub max_hold: Duration,
}

/// The wake-up of one key's waiters, and how many are registered.
type Waiting = (Arc<Notify>, usize);

/// Instances waiting for fills, by stored key, woken by the store's fill announcements.
pub(crate) struct FillWaiters {
    store: Arc<dyn Store>,
    channel: String,
    waiting: Mutex<HashMap<Box<str>, Waiting>>,
    subscribed: Mutex<bool>,
}

impl FillWaiters {
    pub fn new(store: Arc<dyn Store>, namespace: &str) -> Arc<Self> {
        Arc::new(FillWaiters {
            store,
            channel: fill_channel(namespace),
            waiting: Mutex::new(HashMap::new()),
            subscribed: Mutex::new(false),
        })
    }

    /// The channel fills of this namespace are announced on.
    pub fn channel(&self) -> &str {
        &self.channel
    }

    /// Registers interest in `key`'s fill. Subscribes on first use (inside the runtime).
    pub fn register(self: &Arc<Self>, key: &str) -> Registration {
        self.ensure_subscribed();
        let notify = {
            let mut waiting = self.waiting.lock();
            let entry = waiting
                .entry(key.into())
                .or_insert_with(|| (Arc::new(Notify::new()), 0));
            entry.1 += 1;
            entry.0.clone()
        };
        Registration {
            waiters: self.clone(),
            key: key.into(),
            notify,
        }
    }

    fn ensure_subscribed(self: &Arc<Self>) {
        let mut subscribed = self.subscribed.lock();
        if *subscribed {
            return;
        }
        if let Some(events) = self.store.subscribe(&self.channel) {
            *subscribed = true;
            tokio::spawn(listen(Arc::downgrade(self), events));
        }
    }

    fn wake(&self, key: &str) {
        if let Some((notify, _)) = self.waiting.lock().get(key) {
            notify.notify_waiters();
        }
    }
}

/// Forwards fill announcements to the waiters, until the cache is gone.
async fn listen(waiters: Weak<FillWaiters>, mut events: broadcast::Receiver<StoreEvent>) {
    loop {
        let event = tokio::select! {
            event = events.recv() => event,
            _ = tokio::time::sleep(Duration::from_secs(1)) => {
                if waiters.strong_count() == 0 {
                    return;
                }
                continue;
            }
        };
        let Some(waiters) = waiters.upgrade() else {
            return;
        };
        match event {
            Ok(StoreEvent::Message(key)) => {
                if let Ok(key) = std::str::from_utf8(&key) {
                    waiters.wake(key);
                }
            }
            // Missed announcements only delay waiters until their next poll.
            Ok(StoreEvent::Subscribed | StoreEvent::Lost)
            | Err(broadcast::error::RecvError::Lagged(_)) => {}
            Err(broadcast::error::RecvError::Closed) => return,
        }
    }
}

/// One caller's interest in one key's fill; unregisters on drop.
pub(crate) struct Registration {
    waiters: Arc<FillWaiters>,
    key: Box<str>,
    pub notify: Arc<Notify>,
}

impl Drop for Registration {
    fn drop(&mut self) {
        let mut waiting = self.waiters.waiting.lock();
        if let Some(entry) = waiting.get_mut(&*self.key) {
            entry.1 -= 1;
            if entry.1 == 0 {
                waiting.remove(&*self.key);
            }
        }
    }
}

/// A lease this instance holds, or is asking for. Dropped without [`HeldLease::disarm`] (the
/// holder was cancelled or panicked, or the request's outcome is unknown), it releases the lease
/// in the background — compare-and-delete, so a release of a lease never taken is harmless — and
/// waiters need not sit out its TTL. Every release goes through the remote door.
pub(crate) struct HeldLease {
    remote: Arc<Remote>,
    key: String,
    pub token: u64,
    /// The lease's lifetime, renewed by [`HeldLease::keeping`] for at most `max_hold` after
    /// `taken_at`.
    ttl: Duration,
    max_hold: Duration,
    /// When it was asked for (an upper bound of when it was taken).
    taken_at: tokio::time::Instant,
    armed: bool,
    /// The `SET NX` may still be on the wire: release right behind it, whatever the breaker.
    unknown: bool,
}

impl HeldLease {
    /// Armed before the lease request is sent, so that dropping the request (a cancelled
    /// caller, a timeout) still releases what it may have taken.
    pub fn requesting(remote: Arc<Remote>, key: &str, token: u64, config: &LeaseConfig) -> Self {
        HeldLease {
            remote,
            key: key.to_string(),
            token,
            ttl: config.ttl,
            max_hold: config.max_hold,
            taken_at: tokio::time::Instant::now(),
            armed: true,
            unknown: true,
        }
    }

    /// The store answered: the lease is ours.
    pub fn taken(mut self) -> Self {
        self.unknown = false;
        self
    }

    /// The fill (or an explicit release) took care of the lease, or it was never taken.
    pub fn disarm(mut self) {
        self.armed = false;
    }

    /// Gives the lease back now; if the breaker rejects the call, the guard keeps trying in
    /// the background (see the drop).
    pub async fn release(self) {
        match self.remote.release_lease(&self.key, self.token).await {
            Err(crate::store::StoreError::CircuitOpen) => {} // dropped armed: retried
            _ => self.disarm(),
        }
    }

    /// Runs `load` while keeping this lease: extended to a full TTL every third of it (counted
    /// from when the lease was asked for, so a wait before the load — an origin-limit slot —
    /// counts), so a load slower than the TTL still holds the lease when it fills, and other
    /// instances keep waiting for that fill instead of loading too. The load is polled
    /// throughout (an extension in flight never delays it). Extending stops when the store
    /// says the lease is gone (voided by a write or an invalidation: the fill will be refused,
    /// as it must be), and after `max_hold` (a stuck load must not hold the key for good); a
    /// failed extension (Redis slow or unreachable) is tried again at the next period.
    pub async fn keeping<F: std::future::Future>(&self, load: F) -> F::Output {
        tokio::pin!(load);
        let period = self.ttl / 3;
        if period.is_zero() {
            return load.await;
        }
        let give_up = self.taken_at + self.max_hold;
        let mut next = self.taken_at + period;
        loop {
            if next >= give_up {
                return load.await;
            }
            tokio::select! {
                biased;
                out = &mut load => return out,
                _ = tokio::time::sleep_until(next) => {}
            }
            next = tokio::time::Instant::now() + period;
            let extend = self.remote.extend_lease(&self.key, self.token, self.ttl);
            tokio::pin!(extend);
            let held = tokio::select! {
                biased;
                out = &mut load => return out,
                held = &mut extend => held,
            };
            if let Ok(false) = held {
                tracing::debug!(key = %self.key, "lease lost during a load; its fill will be refused");
                return load.await;
            }
        }
    }
}

impl Drop for HeldLease {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return; // the lease's TTL frees it
        };
        let (remote, key, token, unknown) = (
            self.remote.clone(),
            std::mem::take(&mut self.key),
            self.token,
            self.unknown,
        );
        let ttl = self.ttl;
        runtime.spawn(async move {
            if unknown {
                remote.release_after_unknown(&key, token).await;
                return;
            }
            // Through the breaker; while it is open, again every 50 ms, until it lets the
            // call through (its half-open probe, say) or the lease would have expired anyway:
            // a lease is never left to its whole TTL because the breaker was open when its
            // holder gave it up (a fill that failed may be what opened it).
            let started = tokio::time::Instant::now();
            loop {
                match remote.release_lease(&key, token).await {
                    Err(crate::store::StoreError::CircuitOpen) if started.elapsed() < ttl => {
                        tokio::time::sleep(RELEASE_RETRY).await;
                    }
                    _ => return,
                }
            }
        });
    }
}

/// How often a release the breaker rejected is tried again.
const RELEASE_RETRY: Duration = Duration::from_millis(50);

/// The channel a namespace's fills are announced on.
pub(crate) fn fill_channel(namespace: &str) -> String {
    format!("herdwise:fills:{namespace}")
}
