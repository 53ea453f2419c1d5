//! Gathering the loads of one batch read into as few batch-loader calls as possible.
//!
//! A batch read runs one ordinary read pipeline per key, concurrently (single-flight, lease,
//! fenced fill, stale-if-error: every per-key guarantee holds as it does for one key). When a
//! pipeline reaches its loader, it does not call the origin: it *queues* its key here and waits
//! for its share of a batch call. The batch's driver calls the batch loader once no pipeline is
//! still *running* — each one has queued, finished, or *parked* (waiting on someone else: another
//! caller's load of the same key in this process, or another instance's lease) — with every
//! key queued by then. A parked pipeline that ends up loading after all (the other load was
//! cancelled, the lease wait timed out) queues again and goes into a later, smaller call. So a
//! batch whose keys all miss costs one loader call, and a key another read is loading is never
//! loaded twice.
//!
//! Contract: [`Gather::new`] with the number of pipelines; each pipeline reports through its
//! [`Member`] (parked / running again / queued / done; dropping the member counts as done, so
//! a cancelled or panicked pipeline never blocks a dispatch); [`Gather::next_call`] waits until
//! a call is due and hands the driver the queued keys with their reply slots, or `None` when
//! every pipeline is done. A reply slot whose pipeline stopped waiting (its hard timeout) is
//! simply dropped. Nothing here knows the cache.

use std::sync::Arc;

use parking_lot::Mutex;
use tokio::sync::{oneshot, Notify};

/// What a read pipeline tells its batch while it waits on someone else (see [`Member`]).
pub(crate) trait Park: Send + Sync {
    /// Waiting for another caller's load or another instance's fill.
    fn park(&self);
    /// Back at work.
    fn resume(&self);
}

/// Where a pipeline is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Running,
    /// Waiting for another caller's load or another instance's fill.
    Parked,
    /// Waiting for the next batch call.
    Queued,
    /// Its key is in a batch call under way.
    Loading,
    Done,
}

struct State<Q, R> {
    phases: Vec<Phase>,
    running: usize,
    queued: Vec<(usize, Q, oneshot::Sender<R>)>,
    open: usize,
}

/// The pipelines of one batch read, and the calls they are waiting for.
pub(crate) struct Gather<Q, R> {
    state: Mutex<State<Q, R>>,
    wake: Notify,
}

/// One pipeline's handle on its batch.
pub(crate) struct Member<Q, R> {
    gather: Arc<Gather<Q, R>>,
    index: usize,
}

impl<Q, R> Gather<Q, R> {
    /// A batch of `n` pipelines, all running.
    pub fn new(n: usize) -> Arc<Self> {
        Arc::new(Gather {
            state: Mutex::new(State {
                phases: vec![Phase::Running; n],
                running: n,
                queued: Vec::new(),
                open: n,
            }),
            wake: Notify::new(),
        })
    }

    /// Pipeline `index`'s handle (one per index).
    pub fn member(self: &Arc<Self>, index: usize) -> Member<Q, R> {
        Member {
            gather: self.clone(),
            index,
        }
    }

    /// Moves pipeline `index` to `phase`, waking the driver when a call may be due.
    fn set(&self, index: usize, phase: Phase) {
        let mut state = self.state.lock();
        let Some(&was) = state.phases.get(index) else {
            return;
        };
        if was == phase || was == Phase::Done {
            return;
        }
        state.phases[index] = phase;
        if was == Phase::Running {
            state.running -= 1;
        }
        if phase == Phase::Running {
            state.running += 1;
        }
        if phase == Phase::Done {
            state.open -= 1;
        }
        if was == Phase::Queued && phase != Phase::Loading {
            // A queued pipeline that gave up waiting (its hard timeout, or it ended) takes its
            // key out of the next call.
            state.queued.retain(|(i, _, _)| *i != index);
        }
        let due = (state.running == 0 && !state.queued.is_empty()) || state.open == 0;
        drop(state);
        if due {
            self.wake.notify_one();
        }
    }

    /// Waits until a call is due: the queued keys and their reply slots (their pipelines now
    /// count as loading), or `None` once every pipeline is done.
    pub async fn next_call(&self) -> Option<Vec<(Q, oneshot::Sender<R>)>> {
        loop {
            let woken = self.wake.notified();
            tokio::pin!(woken);
            woken.as_mut().enable();
            {
                let mut state = self.state.lock();
                if state.open == 0 {
                    return None;
                }
                if state.running == 0 && !state.queued.is_empty() {
                    let queued = std::mem::take(&mut state.queued);
                    let mut call = Vec::with_capacity(queued.len());
                    for (index, query, reply) in queued {
                        state.phases[index] = Phase::Loading;
                        call.push((query, reply));
                    }
                    return Some(call);
                }
            }
            woken.await;
        }
    }

    /// Whether every pipeline is done.
    pub async fn all_done(&self) {
        loop {
            let woken = self.wake.notified();
            tokio::pin!(woken);
            woken.as_mut().enable();
            if self.state.lock().open == 0 {
                return;
            }
            woken.await;
        }
    }
}

impl<Q: Send, R: Send> Park for Member<Q, R> {
    fn park(&self) {
        self.gather.set(self.index, Phase::Parked);
    }

    fn resume(&self) {
        self.gather.set(self.index, Phase::Running);
    }
}

impl<Q, R> Member<Q, R> {
    /// Back at work after its batch call answered — or after it stopped waiting for it (its
    /// key leaves the queue then).
    pub fn answered(&self) {
        self.gather.set(self.index, Phase::Running);
    }

    /// A guard that marks the member back at work when dropped: held while it waits for its
    /// call, so a wait that is given up (a timeout drops it) never leaves its key queued.
    pub fn waiting(&self) -> Waiting<'_, Q, R> {
        Waiting(self)
    }

    /// Queues `query` for the next batch call; the receiver gets its reply (an error if the
    /// driver went away without one).
    pub fn queue(&self, query: Q) -> oneshot::Receiver<R> {
        let (reply, receiver) = oneshot::channel();
        {
            let mut state = self.gather.state.lock();
            if state.phases.get(self.index) == Some(&Phase::Done) {
                return receiver; // (reply dropped: the receiver errs at once)
            }
            state.queued.push((self.index, query, reply));
        }
        self.gather.set(self.index, Phase::Queued);
        receiver
    }
}

/// See [`Member::waiting`].
pub(crate) struct Waiting<'m, Q, R>(&'m Member<Q, R>);

impl<Q, R> Drop for Waiting<'_, Q, R> {
    fn drop(&mut self) {
        self.0.answered();
    }
}

impl<Q, R> Drop for Member<Q, R> {
    fn drop(&mut self) {
        self.gather.set(self.index, Phase::Done);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn one_call_once_no_pipeline_runs() {
        let gather: Arc<Gather<u32, u32>> = Gather::new(3);
        let (a, b, c) = (gather.member(0), gather.member(1), gather.member(2));
        let ra = a.queue(10);
        b.park();
        // c still runs: no call yet
        let early = tokio::time::timeout(std::time::Duration::from_millis(20), gather.next_call());
        assert!(early.await.is_err());
        let rc = c.queue(30);
        let call = gather.next_call().await.unwrap();
        let keys: Vec<u32> = call.iter().map(|(q, _)| *q).collect();
        assert_eq!(keys, vec![10, 30]);
        for (q, reply) in call {
            let _ = reply.send(q + 1);
        }
        assert_eq!(ra.await.unwrap(), 11);
        assert_eq!(rc.await.unwrap(), 31);
        // the parked one comes back and needs a load of its own: a second, smaller call
        b.resume();
        let rb = b.queue(20);
        let call = gather.next_call().await.unwrap();
        assert_eq!(call.len(), 1);
        for (q, reply) in call {
            let _ = reply.send(q + 1);
        }
        assert_eq!(rb.await.unwrap(), 21);
        drop((a, b, c));
        assert!(gather.next_call().await.is_none());
    }

    #[tokio::test]
    async fn a_dropped_member_never_blocks_the_call() {
        let gather: Arc<Gather<u32, u32>> = Gather::new(2);
        let a = gather.member(0);
        let b = gather.member(1);
        let _ra = a.queue(1);
        drop(b); // cancelled while running
        let call = gather.next_call().await.unwrap();
        assert_eq!(call.len(), 1);
        // a queued member dropped before its call: its key leaves the queue
        let gather: Arc<Gather<u32, u32>> = Gather::new(2);
        let (a, b) = (gather.member(0), gather.member(1));
        let _ra = a.queue(1);
        drop(a);
        let _rb = b.queue(2);
        let call = gather.next_call().await.unwrap();
        assert_eq!(call.iter().map(|(q, _)| *q).collect::<Vec<_>>(), vec![2]);
    }

    #[tokio::test]
    async fn a_member_that_stops_waiting_leaves_the_queue() {
        let gather: Arc<Gather<u32, u32>> = Gather::new(2);
        let (a, b) = (gather.member(0), gather.member(1));
        {
            let _waiting = a.waiting();
            let _ra = a.queue(1); // then a's timeout drops the wait
        }
        // a runs again (its fallback, say): no call is due, and none will carry its key
        let early = tokio::time::timeout(std::time::Duration::from_millis(20), gather.next_call());
        assert!(early.await.is_err());
        let _rb = b.queue(2);
        drop(a);
        let call = gather.next_call().await.unwrap();
        assert_eq!(call.iter().map(|(q, _)| *q).collect::<Vec<_>>(), vec![2]);
    }
}
