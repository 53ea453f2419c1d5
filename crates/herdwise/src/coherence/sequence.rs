//! Tells a lost backplane message from one that is only late.
//!
//! Contract: the listener hands every message's `(sender, sequence)` to [`Sequences::arrived`]
//! and calls [`Sequences::overdue`] whenever [`Sequences::next_deadline`] passes. Events were
//! missed — the caller demotes L1 — when `arrived` or `overdue` says so: a sequence number
//! skipped and not seen within [`GRACE`], one from before a sender's tracking started again, or
//! more missing numbers than are tracked. A sender's messages may overtake each other on the
//! way (its tasks take numbers and hand messages to the connection in slightly different
//! orders: 93 of 2,000 writes from 16 tasks of one instance, measured against one Redis), so an
//! out-of-order arrival that fills its hole in time is no loss. The state is bounded: at most
//! [`MAX_SENDERS`] senders and [`MAX_MISSING`] missing numbers (past either, tracking starts
//! over, and a missing number counts as lost).

use std::collections::{HashMap, HashSet, VecDeque};
use std::time::Duration;

use tokio::time::Instant;

/// How long a skipped sequence number may take to arrive before it counts as lost. Messages of
/// one sender overtake each other by the time between taking a number and handing the message
/// to the connection: microseconds, or a scheduler's delay on a busy host.
pub(crate) const GRACE: Duration = Duration::from_millis(50);

/// Most senders whose sequence is tracked; past it, tracking restarts (pods come and go).
pub(crate) const MAX_SENDERS: usize = 10_000;

/// Most skipped numbers waiting to arrive (all senders); past it, they count as lost.
pub(crate) const MAX_MISSING: usize = 4_096;

/// One sender's place.
#[derive(Debug)]
struct Sender {
    /// One past the highest number seen.
    next: u64,
    /// Numbers below `next` not seen yet.
    missing: HashSet<u64>,
}

/// Every sender's place, and the skipped numbers waiting for their grace to end.
#[derive(Debug, Default)]
pub(crate) struct Sequences {
    senders: HashMap<u64, Sender>,
    /// Skipped numbers in the order they were noticed: (noticed at, sender, number). Numbers
    /// that arrived meanwhile are skipped when they reach the front.
    waiting: VecDeque<(Instant, u64, u64)>,
}

impl Sequences {
    /// Records a message; `true` if it shows that events were missed (at once: it comes from
    /// before this sender's tracked range, or leaves too many numbers to wait for).
    pub(crate) fn arrived(&mut self, sender: u64, sequence: u64, now: Instant) -> bool {
        if !self.senders.contains_key(&sender) && self.senders.len() >= MAX_SENDERS {
            // Whatever was waiting is given up on with them: counted as lost.
            let lost = !self.waiting.is_empty();
            self.senders.clear();
            self.waiting.clear();
            self.senders.insert(sender, first(sequence));
            return lost;
        }
        let place = self.senders.entry(sender).or_insert_with(|| Sender {
            next: sequence,
            missing: HashSet::new(),
        });
        if sequence == place.next {
            place.next += 1;
            return false;
        }
        if sequence < place.next {
            // Late, and in time; or older than anything awaited (a duplicate, a restarted
            // sender, a forged number): the safe side is to count it as a loss.
            return !place.missing.remove(&sequence);
        }
        let skipped = sequence - place.next;
        if skipped as usize > MAX_MISSING - self.waiting.len().min(MAX_MISSING) {
            // Too many to wait for: lost.
            place.missing.clear();
            place.next = sequence + 1;
            self.waiting.retain(|&(_, s, _)| s != sender);
            return true;
        }
        for missing in place.next..sequence {
            place.missing.insert(missing);
            self.waiting.push_back((now, sender, missing));
        }
        place.next = sequence + 1;
        false
    }

    /// When the oldest skipped number's grace ends, if one is waiting.
    pub(crate) fn next_deadline(&mut self) -> Option<Instant> {
        self.drop_arrived();
        self.waiting.front().map(|&(noticed, _, _)| noticed + GRACE)
    }

    /// `true` if a skipped number's grace has ended without it arriving: it is lost (and no
    /// longer waited for, nor the others skipped before `now - GRACE`).
    pub(crate) fn overdue(&mut self, now: Instant) -> bool {
        let mut lost = false;
        while let Some(&(noticed, sender, sequence)) = self.waiting.front() {
            if noticed + GRACE > now {
                break;
            }
            self.waiting.pop_front();
            if let Some(place) = self.senders.get_mut(&sender) {
                lost |= place.missing.remove(&sequence);
            }
        }
        lost
    }

    /// Forgets every sender (after a resubscription: numbers may have been missed anyway, and
    /// the caller starts over).
    pub(crate) fn clear(&mut self) {
        self.senders.clear();
        self.waiting.clear();
    }

    /// Pops the front entries whose numbers arrived.
    fn drop_arrived(&mut self) {
        while let Some(&(_, sender, sequence)) = self.waiting.front() {
            let awaited = self
                .senders
                .get(&sender)
                .is_some_and(|place| place.missing.contains(&sequence));
            if awaited {
                break;
            }
            self.waiting.pop_front();
        }
    }
}

fn first(sequence: u64) -> Sender {
    Sender {
        next: sequence.saturating_add(1),
        missing: HashSet::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn in_order_messages_are_no_loss() {
        let mut s = Sequences::default();
        let t = Instant::now();
        for n in 5..100 {
            assert!(!s.arrived(1, n, t));
        }
        assert_eq!(s.next_deadline(), None);
        assert!(!s.overdue(t + GRACE * 10));
    }

    #[test]
    fn a_message_that_overtakes_another_is_no_loss_if_the_other_arrives_in_time() {
        let mut s = Sequences::default();
        let t = Instant::now();
        assert!(!s.arrived(1, 1, t));
        assert!(!s.arrived(1, 3, t));
        assert!(!s.arrived(1, 4, t));
        assert_eq!(s.next_deadline(), Some(t + GRACE));
        assert!(!s.arrived(1, 2, t + GRACE / 2));
        assert_eq!(s.next_deadline(), None);
        assert!(!s.overdue(t + GRACE * 2));
    }

    #[test]
    fn a_number_not_seen_within_the_grace_is_lost_once() {
        let mut s = Sequences::default();
        let t = Instant::now();
        s.arrived(1, 1, t);
        s.arrived(1, 3, t);
        assert!(!s.overdue(t + GRACE / 2));
        assert!(s.overdue(t + GRACE));
        assert!(!s.overdue(t + GRACE * 2), "counted once");
        assert!(
            s.arrived(1, 2, t + GRACE * 3),
            "too late: older than awaited"
        );
        assert!(!s.arrived(1, 4, t + GRACE * 3));
    }

    #[test]
    fn senders_are_tracked_apart() {
        let mut s = Sequences::default();
        let t = Instant::now();
        s.arrived(1, 1, t);
        s.arrived(2, 1, t);
        s.arrived(1, 3, t);
        assert!(!s.arrived(2, 2, t));
        assert!(!s.arrived(1, 2, t));
        assert!(!s.overdue(t + GRACE));
    }

    #[test]
    fn a_repeated_or_old_number_counts_as_a_loss() {
        let mut s = Sequences::default();
        let t = Instant::now();
        s.arrived(1, 10, t);
        assert!(s.arrived(1, 10, t));
        assert!(s.arrived(1, 3, t));
    }

    #[test]
    fn too_many_skipped_numbers_are_lost_at_once_and_not_waited_for() {
        let mut s = Sequences::default();
        let t = Instant::now();
        s.arrived(1, 1, t);
        assert!(s.arrived(1, 2 + MAX_MISSING as u64 + 1, t));
        assert_eq!(s.next_deadline(), None);
        // Below the bound, they are waited for; the bound counts every sender's.
        s.arrived(2, 1, t);
        assert!(!s.arrived(2, 2 + MAX_MISSING as u64, t));
        s.arrived(3, 1, t);
        assert!(s.arrived(3, 3, t), "no room left to wait");
    }

    #[test]
    fn too_many_senders_start_tracking_over() {
        let mut s = Sequences::default();
        let t = Instant::now();
        for sender in 0..MAX_SENDERS as u64 {
            assert!(!s.arrived(sender, 1, t));
        }
        assert!(!s.arrived(u64::MAX, 1, t), "nothing was waited for");
        assert!(!s.arrived(0, 7, t), "sender 0 starts over");
        s.arrived(0, 9, t);
        for sender in 1..MAX_SENDERS as u64 - 1 {
            assert!(!s.arrived(sender + 100_000, 1, t));
        }
        assert!(
            s.arrived(u64::MAX - 1, 1, t),
            "the awaited 8 is given up on"
        );
    }
}
