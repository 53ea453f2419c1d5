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

/// Most numbers given up on (their grace over) that are still recognised if they arrive
/// after all: a late message is counted as a loss once, not twice.
const MAX_GIVEN_UP: usize = 1_024;

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
    /// Numbers still awaited, over every sender (`waiting` also holds arrived ones).
    awaited: usize,
    /// Numbers given up on lately: (sender, number).
    given_up: VecDeque<(u64, u64)>,
}

impl Sequences {
    /// Records a message; `true` if it shows that events were missed (at once: it comes from
    /// before this sender's tracked range, or leaves too many numbers to wait for).
    pub(crate) fn arrived(&mut self, sender: u64, sequence: u64, now: Instant) -> bool {
        // No message carries the last number (a sender would need 2^64 of them): a forged or
        // broken one, and nothing to track past it.
        let Some(after) = sequence.checked_add(1) else {
            return true;
        };
        if !self.senders.contains_key(&sender) && self.senders.len() >= MAX_SENDERS {
            // Whatever was waiting is given up on with them: counted as lost.
            let lost = self.awaited > 0;
            self.clear();
            self.senders.insert(sender, first(after));
            return lost;
        }
        let place = self
            .senders
            .entry(sender)
            .or_insert_with(|| first(sequence));
        if sequence == place.next {
            place.next = after;
            return false;
        }
        if sequence < place.next {
            if place.missing.remove(&sequence) {
                self.awaited -= 1;
                return false; // late, and in time
            }
            if let Some(i) = self.given_up.iter().position(|&g| g == (sender, sequence)) {
                // Later than its grace: counted as lost when the grace ended, not again.
                self.given_up.remove(i);
                return false;
            }
            // A duplicate, a restarted sender, a forged number: the safe side is a loss. One
            // far below the tracked range moves the range there (a forged high number must
            // not make every later message of the sender look old).
            if place.next - sequence > MAX_MISSING as u64 {
                self.awaited -= place.missing.len();
                place.missing.clear();
                place.next = after;
            }
            return true;
        }
        let room = MAX_MISSING - self.awaited.min(MAX_MISSING);
        let fits = usize::try_from(sequence - place.next).is_ok_and(|skipped| skipped <= room);
        if !fits {
            // Too many to wait for: lost.
            self.awaited -= place.missing.len();
            place.missing.clear();
            place.next = after;
            return true;
        }
        for missing in place.next..sequence {
            place.missing.insert(missing);
            self.waiting.push_back((now, sender, missing));
            self.awaited += 1;
        }
        place.next = after;
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
            let removed = self
                .senders
                .get_mut(&sender)
                .is_some_and(|place| place.missing.remove(&sequence));
            if removed {
                self.awaited -= 1;
                lost = true;
                if self.given_up.len() >= MAX_GIVEN_UP {
                    self.given_up.pop_front();
                }
                self.given_up.push_back((sender, sequence));
            }
        }
        lost
    }

    /// Forgets every sender (after a resubscription or a listener that fell behind: numbers
    /// were missed anyway, and the caller starts over).
    pub(crate) fn clear(&mut self) {
        self.senders.clear();
        self.waiting.clear();
        self.given_up.clear();
        self.awaited = 0;
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

/// A sender's place before any message from it: `next` is the first number it will send.
fn first(next: u64) -> Sender {
    Sender {
        next,
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
            !s.arrived(1, 2, t + GRACE * 3),
            "too late, and already counted: not again"
        );
        assert!(s.arrived(1, 2, t + GRACE * 3), "a second copy is a loss");
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
        assert!(!s.arrived(1, 11, t), "the range stays where it was");
    }

    #[test]
    fn a_forged_high_number_does_not_make_every_later_message_look_old() {
        let mut s = Sequences::default();
        let t = Instant::now();
        s.arrived(1, 1, t);
        assert!(s.arrived(1, 1 << 40, t), "too many to wait for");
        assert!(
            s.arrived(1, 2, t),
            "far below: a loss, and the range moves back"
        );
        assert!(!s.arrived(1, 3, t));
        assert!(!s.arrived(1, 4, t));
    }

    #[test]
    fn the_last_number_is_a_loss_and_does_not_overflow() {
        let mut s = Sequences::default();
        let t = Instant::now();
        assert!(s.arrived(1, u64::MAX, t));
        assert!(!s.arrived(2, u64::MAX - 1, t));
        assert!(s.arrived(2, u64::MAX, t));
        assert!(!s.arrived(3, 0, t));
        assert!(!s.arrived(3, 1, t));
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
