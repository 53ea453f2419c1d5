//! Tags: invalidate every entry carrying a label (`"category:shoes"`) in one round trip, whatever
//! the number of entries.
//!
//! How: each namespace has a *tag clock*, a counter in the store. Invalidating a tag is one Lua
//! script: advance the clock to `c`, record `c` as the tag's *mark* (the clock value of its last
//! invalidation), and announce `(tag, c)` on the backplane. Every entry carrying tags is stamped
//! with a clock value known *before* its value was read from the origin (or written). An entry
//! is valid while every one of its tags has a mark ≤ its stamp: a tag invalidated after the
//! entry's value was read has a higher mark. So nothing is deleted or enumerated — entries of an
//! invalidated tag are unreadable at once and die by their TTL — and the decision compares
//! counters, never wall clocks, so clock skew between pods cannot make an invalidation miss.
//!
//! The price is on reads: a tagged entry must be checked against its tags' marks. Each instance
//! keeps a [`TagLedger`]: the marks it has learned, kept exact by the backplane (every
//! invalidation is announced in the same script that makes it). While it listens, the ledger is
//! *complete* from the clock value it read when its subscription started: an entry stamped at or
//! after that value is judged locally, with no round trip. Anything else (an older stamp, a tag
//! not in the ledger, no subscription) is checked against the store with one `MGET` of the marks,
//! whose answers then stay in the ledger. Whenever events may have been missed, the ledger starts
//! over, exactly like L1.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::RwLock;

use crate::envelope::{TagStamp, MAX_STORED_TAGS, MAX_TAG_BYTES};
use crate::error::{Error, Result};
use crate::store::TagTable;

/// Derives an entry's tags from its value (`CacheBuilder::tags_from`).
pub(crate) type TagsFrom<V> = Arc<dyn Fn(&V) -> Vec<String> + Send + Sync>;

/// Default cap on the tags of one entry.
pub const DEFAULT_MAX_TAGS_PER_ENTRY: usize = 16;
/// Most marks an instance remembers; past it, it forgets them and checks older entries against
/// the store again (bounded memory whatever the number of tags).
const MAX_MARKS: usize = 100_000;
/// Most tags with a local invalidation the store has not confirmed yet.
const MAX_PENDING: usize = 10_000;
/// How often pending invalidations past their life are pruned (on the next invalidation).
const PRUNE_EVERY: Duration = Duration::from_secs(1);

/// Default longest tag, in bytes (as for keys: `DEFAULT_MAX_KEY_BYTES`).
pub const DEFAULT_MAX_TAG_BYTES: usize = 512;

/// Prefix of a tag stored by its digest.
const DIGEST_PREFIX: &str = "sha256:";

/// Checks a tag (1..=`max_bytes` bytes, no control characters) and gives it as it is stored
/// and announced: itself up to the envelope's [`MAX_TAG_BYTES`], or `sha256:` and the first 32
/// hex digits of its SHA-256 past that — the same for every writer (a non-Rust one included)
/// and for `invalidate_tag`, so a long tag works like any other. (Two long tags sharing a
/// 128-bit digest would invalidate each other's entries: the safe side.)
pub(crate) fn tag_as_stored(tag: &str, max_bytes: usize) -> Result<Cow<'_, str>> {
    if tag.is_empty() || tag.len() > max_bytes || tag.chars().any(char::is_control) {
        return Err(Error::InvalidTag(tag.chars().take(160).collect()));
    }
    if tag.len() <= MAX_TAG_BYTES && !tag.starts_with(DIGEST_PREFIX) {
        return Ok(Cow::Borrowed(tag));
    }
    // (A short tag that looks like a digest is digested too: it cannot meet a long tag's.)
    let digest = ring::digest::digest(&ring::digest::SHA256, tag.as_bytes());
    let mut out = String::with_capacity(DIGEST_PREFIX.len() + 32);
    out.push_str(DIGEST_PREFIX);
    for byte in &digest.as_ref()[..16] {
        out.push_str(&format!("{byte:02x}"));
    }
    Ok(Cow::Owned(out))
}

/// Validates, de-duplicates and stores `tags` (see [`tag_as_stored`]), enforcing the per-entry
/// cap.
pub(crate) fn collect_tags<'a>(
    tags: impl IntoIterator<Item = &'a str>,
    cap: usize,
    max_bytes: usize,
) -> Result<Box<[Box<str>]>> {
    let mut out: Vec<Box<str>> = Vec::new();
    for tag in tags {
        let tag = tag_as_stored(tag, max_bytes)?;
        if !out.iter().any(|t| **t == *tag) {
            out.push(tag.into());
        }
    }
    let limit = cap.min(MAX_STORED_TAGS);
    if out.len() > limit {
        return Err(Error::TooManyTags {
            count: out.len(),
            limit,
        });
    }
    Ok(out.into_boxed_slice())
}

/// The store key of a namespace's tag table: its clock, floor and every mark in one structure
/// (a Redis hash with no TTL), so that an eviction takes all of them or none, and the loss is
/// seen (a missing table is re-created with a floor: nothing stamped before is vouched for).
/// It shares a hash tag with the event stream, so in Redis Cluster both live in one slot: one
/// script can bump the clock, write the mark and append the event.
pub(crate) fn table_key(namespace: &str) -> String {
    format!("herdwise:{{ns:{namespace}}}:tags")
}

/// What local knowledge says about an entry's tags.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// No tag of the entry was invalidated after its stamp.
    Valid,
    /// A tag was.
    Invalid,
    /// Not known here: ask the store.
    Unknown,
    /// A tag has a local invalidation the store has not confirmed yet: not served here, but
    /// nothing is known against the entry elsewhere (it is not deleted from L2).
    Pending,
}

#[derive(Debug, Default)]
struct State {
    /// The highest tag clock value known (the stamp for new entries).
    clock: u64,
    /// The highest clock value accounted for by events (own invalidations, the backplane, or a
    /// completion): the periodic check compares it with the store's clock to notice lost events.
    event_clock: u64,
    /// `Some(f)`: every invalidation with a clock value above `f` is in `marks` (the backplane
    /// delivers them). `None`: nothing can be judged valid locally.
    complete_from: Option<u64>,
    /// Tag → the clock value of its last invalidation, exact while the ledger is complete.
    marks: HashMap<Box<str>, u64>,
    /// Marks from before the ledger last started over: no longer exact (later invalidations
    /// may have been missed), but true lower bounds — an entry stamped below one is invalid.
    /// They never make an entry valid.
    lower: HashMap<Box<str>, u64>,
    /// Marks were forgotten (too many to keep) up to this clock value: an entry stamped below
    /// it cannot be judged here even as a fallback (a forgotten mark may be against it).
    forgot_below: u64,
    /// Bumped whenever the ledger starts over; answers to store reads started in an older era
    /// are not remembered.
    era: u64,
    /// Tags this instance invalidated without the store's confirmation yet, and until when that
    /// holds: the longest life of an entry the invalidation could reach (past it, every such
    /// entry has expired). Kept across resets (the store does not know them).
    pending: HashMap<Box<str>, Pending>,
    /// The sequence number of the last pending invalidation.
    pending_seq: u64,
    /// When expired pending invalidations are next pruned.
    next_prune: Option<Instant>,
}

/// An unconfirmed local invalidation of a tag.
#[derive(Debug, Clone, Copy)]
struct Pending {
    /// Only a store write sent after this invalidation was made confirms it.
    seq: u64,
    until: Instant,
}

/// One instance's knowledge of tag invalidations.
#[derive(Debug)]
pub(crate) struct TagLedger {
    state: RwLock<State>,
    /// How long an unconfirmed local invalidation holds.
    pending_life: Duration,
}

impl Default for TagLedger {
    fn default() -> Self {
        TagLedger::new(Duration::from_secs(3600))
    }
}

impl TagLedger {
    /// A ledger whose unconfirmed local invalidations hold for `pending_life`.
    pub fn new(pending_life: Duration) -> Self {
        TagLedger {
            state: RwLock::new(State::default()),
            pending_life,
        }
    }

    /// The clock value to stamp an entry with, taken before its value is read from the origin.
    pub fn stamp(&self) -> u64 {
        self.state.read().clock
    }

    /// The current era (take it before a store read whose answer goes to [`Self::learn`]).
    pub fn era(&self) -> u64 {
        self.state.read().era
    }

    /// The clock value accounted for by events.
    pub fn event_clock(&self) -> u64 {
        self.state.read().event_clock
    }

    pub fn is_complete(&self) -> bool {
        self.state.read().complete_from.is_some()
    }

    /// Judges `stamp` with local knowledge only.
    pub fn verdict(&self, stamp: &TagStamp) -> Verdict {
        let state = self.state.read();
        if !state.pending.is_empty() {
            let now = Instant::now();
            let pending = |tag: &str| state.pending.get(tag).is_some_and(|p| p.until > now);
            if stamp.tags.iter().any(|t| pending(t)) {
                return Verdict::Pending;
            }
        }
        let mut all_known = true;
        for tag in stamp.tags.iter() {
            if state.lower.get(tag).is_some_and(|&m| m > stamp.clock) {
                return Verdict::Invalid;
            }
            match state.marks.get(tag) {
                Some(&mark) if mark > stamp.clock => return Verdict::Invalid,
                Some(_) => {}
                None => all_known = false,
            }
        }
        match state.complete_from {
            Some(_) if all_known => Verdict::Valid,
            Some(from) if stamp.clock >= from => Verdict::Valid,
            _ => Verdict::Unknown,
        }
    }

    /// Judges `stamp` with the store's tag table just read (`table.marks[i]` for
    /// `stamp.tags[i]`, 0 if absent): valid if stamped at or above the table's floor (below it,
    /// the table was lost and re-created: nothing is vouched for) and above every mark. The
    /// marks are remembered if the ledger is complete and still in `era`.
    pub fn learn(&self, era: u64, stamp: &TagStamp, table: &TagTable) -> bool {
        let marks = &table.marks;
        let mut state = self.state.write();
        state.clock = state.clock.max(table.clock);
        let valid = stamp.clock >= table.floor
            && stamp.tags.iter().zip(marks).all(|(tag, &mark)| {
                mark <= stamp.clock
                    && state.marks.get(tag).is_none_or(|&m| m <= stamp.clock)
                    && state.lower.get(tag).is_none_or(|&m| m <= stamp.clock)
            });
        if state.era == era && state.complete_from.is_some() {
            // A table's floor is an implicit mark on every tag: it knows nothing of what came
            // before it (it was lost and re-created then), so no entry stamped below it may be
            // judged valid locally either — an absent mark read from it means "none since the
            // floor", not "never".
            for (tag, &mark) in stamp.tags.iter().zip(marks) {
                Self::record(&mut state, tag, mark.max(table.floor));
            }
        }
        valid
    }

    /// Another instance (or this one) invalidated `tag` at clock value `mark`.
    pub fn invalidated(&self, tag: &str, mark: u64) {
        let mut state = self.state.write();
        state.clock = state.clock.max(mark);
        state.event_clock = state.event_clock.max(mark);
        Self::record(&mut state, tag, mark);
    }

    /// The sequence number to pass to [`Self::confirmed`], taken before the store write is sent.
    pub fn pending_seq(&self) -> u64 {
        self.state.read().pending_seq
    }

    /// This instance's own invalidation of `tag` was written to the store at clock value `mark`,
    /// by a write sent when [`Self::pending_seq`] was `seq`: the pending local invalidations made
    /// before it give way to the real mark (a newer one waits for its own write).
    pub fn confirmed(&self, tag: &str, mark: u64, seq: u64) {
        let mut state = self.state.write();
        if state.pending.get(tag).is_some_and(|p| p.seq <= seq) {
            state.pending.remove(tag);
        }
        state.clock = state.clock.max(mark);
        state.event_clock = state.event_clock.max(mark);
        Self::record(&mut state, tag, mark);
    }

    /// This instance invalidates `tag` but the store has not confirmed it: until then (or until
    /// the pending life has passed), every entry with the tag is invalid here. `false` if too
    /// many invalidations are pending already (the caller dead-letters it).
    pub fn invalidate_pending(&self, tag: &str) -> bool {
        let mut state = self.state.write();
        let now = Instant::now();
        if state.next_prune.is_none_or(|at| now >= at) {
            // Those past their life hold nothing any more.
            state.pending.retain(|_, p| p.until > now);
            state.next_prune = Some(now + PRUNE_EVERY);
        }
        if state.pending.len() >= MAX_PENDING && !state.pending.contains_key(tag) {
            state.pending.retain(|_, p| p.until > now);
            if state.pending.len() >= MAX_PENDING {
                return false;
            }
        }
        state.pending_seq += 1;
        let pending = Pending {
            seq: state.pending_seq,
            until: now + self.pending_life,
        };
        state.pending.insert(tag.into(), pending);
        true
    }

    /// Pending local invalidations held now (expired ones may be counted until pruned).
    #[cfg(test)]
    fn pending_len(&self) -> usize {
        self.state.read().pending.len()
    }

    /// The clock as read from the store (startup, periodic checks): stamps move forward.
    pub fn saw_clock(&self, clock: u64) {
        let mut state = self.state.write();
        state.clock = state.clock.max(clock);
    }

    /// Events may have been missed: no mark is exact any more, so nothing is judged valid
    /// locally until [`Self::complete`]; the marks are kept as lower bounds (what was known
    /// invalid stays invalid). Pending local invalidations are kept (the store does not know
    /// them).
    pub fn reset(&self) {
        let mut state = self.state.write();
        state.complete_from = None;
        Self::demote_marks(&mut state);
        state.era += 1;
    }

    /// Whether an entry this ledger cannot judge (`Verdict::Unknown`) may still serve as a
    /// fallback while the store cannot be asked: no forgotten mark can be against it (every
    /// mark this instance learned is still known, exactly or as a lower bound).
    pub fn may_fall_back(&self, stamp: &TagStamp) -> bool {
        stamp.clock >= self.state.read().forgot_below
    }

    /// An invalidation could not be held locally: entries stamped before now can no longer be
    /// vouched for even as fallbacks ([`Self::may_fall_back`]).
    pub fn forget_before_now(&self) {
        let mut state = self.state.write();
        // Past every stamp given out so far.
        state.forgot_below = state.forgot_below.max(state.clock.saturating_add(1));
    }

    /// Moves the exact marks to the lower bounds (bounded like the marks).
    fn demote_marks(state: &mut State) {
        let marks = std::mem::take(&mut state.marks);
        for (tag, mark) in marks {
            if state.lower.len() >= MAX_MARKS && !state.lower.contains_key(&tag) {
                state.lower.clear();
                state.forgot_below = state.forgot_below.max(state.clock);
            }
            let slot = state.lower.entry(tag).or_insert(0);
            *slot = (*slot).max(mark);
        }
    }

    /// Listening again, and the store's clock read after the subscription started is `clock`:
    /// every later invalidation will arrive as an event.
    pub fn complete(&self, clock: u64) {
        let mut state = self.state.write();
        // Marks above `clock` were learned after the store was read (an invalidation made or
        // received meanwhile): exact, and needed — the store's answer predates them. The
        // others are lower bounds from here on (an older entry is judged by the store).
        let (exact, older): (HashMap<Box<str>, u64>, HashMap<Box<str>, u64>) =
            std::mem::take(&mut state.marks)
                .into_iter()
                .partition(|(_, m)| *m > clock);
        state.marks = older;
        Self::demote_marks(&mut state);
        state.marks = exact;
        state.era += 1;
        state.clock = state.clock.max(clock);
        state.event_clock = state.event_clock.max(clock);
        state.complete_from = Some(clock);
    }

    fn record(state: &mut State, tag: &str, mark: u64) {
        if state.marks.len() >= MAX_MARKS && !state.marks.contains_key(tag) {
            // Forget, but stay correct: what was known up to now is no longer known, so only
            // entries stamped from now on can be judged locally (or fall back on).
            state.marks.clear();
            state.lower.clear();
            state.forgot_below = state.forgot_below.max(state.clock);
            state.complete_from = state.complete_from.map(|_| state.clock);
            state.era += 1;
        }
        let slot = state.marks.entry(tag.into()).or_insert(0);
        *slot = (*slot).max(mark);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_tags_are_stored_by_a_digest_any_language_can_compute() {
        assert_eq!(tag_as_stored("shoes", 512).unwrap(), "shoes");
        let exactly = "a".repeat(MAX_TAG_BYTES);
        assert_eq!(tag_as_stored(&exactly, 512).unwrap(), exactly);
        // python3 -c "import hashlib; print(hashlib.sha256(b'a'*129).hexdigest()[:32])"
        assert_eq!(
            tag_as_stored(&"a".repeat(129), 512).unwrap(),
            "sha256:c12cb024a2e5551cca0e08fce8f1c5e3"
        );
        // A short tag that looks like a digest is digested too.
        assert_eq!(
            tag_as_stored("sha256:x", 512).unwrap(),
            "sha256:fe8eb9ab9836bcf963c044b6f84eb71c"
        );
        for bad in ["", "a\tb", &"a".repeat(513)] {
            assert!(matches!(tag_as_stored(bad, 512), Err(Error::InvalidTag(_))));
        }
        assert!(tag_as_stored(&"a".repeat(513), 1_024).is_ok());
    }

    fn table(clock: u64, floor: u64, marks: &[u64]) -> TagTable {
        TagTable {
            clock,
            floor,
            marks: marks.to_vec(),
            generation: 0,
        }
    }

    #[test]
    fn a_stamp_below_the_tables_floor_is_not_vouched_for() {
        let ledger = TagLedger::default();
        let s = stamp(50, &["a"]);
        assert!(
            !ledger.learn(ledger.era(), &s, &table(200, 100, &[0])),
            "re-created table"
        );
        assert!(ledger.learn(ledger.era(), &stamp(100, &["a"]), &table(200, 100, &[0])));
    }

    fn stamp(clock: u64, tags: &[&str]) -> TagStamp {
        TagStamp {
            clock,
            tags: tags.iter().map(|t| Box::from(*t)).collect(),
        }
    }

    #[test]
    fn tags_are_validated_deduplicated_and_capped() {
        assert!(collect_tags(["a", "b", "a"], 16, 512).unwrap().len() == 2);
        assert!(matches!(
            collect_tags([""], 16, 512),
            Err(Error::InvalidTag(_))
        ));
        assert!(matches!(
            collect_tags(["a\nb"], 16, 512),
            Err(Error::InvalidTag(_))
        ));
        let long = "x".repeat(513);
        assert!(matches!(
            collect_tags([long.as_str()], 16, 512),
            Err(Error::InvalidTag(_))
        ));
        assert!(matches!(
            collect_tags(["a", "b", "c"], 2, 512),
            Err(Error::TooManyTags { count: 3, limit: 2 })
        ));
    }

    #[test]
    fn nothing_is_valid_locally_before_the_ledger_is_complete() {
        let ledger = TagLedger::default();
        assert_eq!(ledger.verdict(&stamp(5, &["t"])), Verdict::Unknown);
        ledger.invalidated("t", 7);
        assert_eq!(ledger.verdict(&stamp(5, &["t"])), Verdict::Invalid);
        assert_eq!(ledger.verdict(&stamp(7, &["t"])), Verdict::Unknown);
    }

    #[test]
    fn a_complete_ledger_judges_later_stamps_locally() {
        let ledger = TagLedger::default();
        ledger.complete(100);
        assert_eq!(ledger.stamp(), 100);
        assert_eq!(ledger.verdict(&stamp(100, &["t", "u"])), Verdict::Valid);
        assert_eq!(
            ledger.verdict(&stamp(99, &["t"])),
            Verdict::Unknown,
            "older stamp"
        );
        ledger.invalidated("t", 101);
        assert_eq!(ledger.verdict(&stamp(100, &["u", "t"])), Verdict::Invalid);
        assert_eq!(ledger.verdict(&stamp(101, &["t"])), Verdict::Valid);
        assert_eq!(
            ledger.stamp(),
            101,
            "new entries are stamped after the invalidation"
        );
        // An old stamp whose tags were all learned from the store is judged exactly.
        let old = stamp(50, &["u"]);
        assert!(ledger.learn(ledger.era(), &old, &table(101, 0, &[0])));
        assert_eq!(ledger.verdict(&old), Verdict::Valid);
        ledger.reset();
        assert_eq!(ledger.verdict(&stamp(101, &["t"])), Verdict::Unknown);
    }

    #[test]
    fn what_was_known_invalid_stays_invalid_across_a_reset() {
        let ledger = TagLedger::default();
        ledger.complete(1);
        ledger.invalidated("t", 10);
        let old = stamp(5, &["t"]);
        assert_eq!(ledger.verdict(&old), Verdict::Invalid);
        // Events may have been missed: nothing is valid locally, but the known mark holds.
        ledger.reset();
        assert_eq!(ledger.verdict(&old), Verdict::Invalid);
        assert_eq!(ledger.verdict(&stamp(20, &["t"])), Verdict::Unknown);
        assert!(ledger.may_fall_back(&stamp(20, &["t"])));
        // Complete again from a clock above the mark: still invalid (a lower bound now).
        ledger.complete(30);
        assert_eq!(ledger.verdict(&old), Verdict::Invalid);
        assert_eq!(ledger.verdict(&stamp(40, &["t"])), Verdict::Valid);
        // Forgotten marks (too many): older entries are not even fallbacks.
        for i in 0..=MAX_MARKS {
            ledger.invalidated(&format!("tag-{i}"), 50);
        }
        assert!(!ledger.may_fall_back(&stamp(45, &["u"])));
        // An invalidation that could not be held: nothing stamped until now falls back.
        let ledger = TagLedger::default();
        ledger.invalidated("x", 7);
        assert!(ledger.may_fall_back(&stamp(7, &["y"])));
        ledger.forget_before_now();
        assert!(!ledger.may_fall_back(&stamp(7, &["y"])));
    }

    #[test]
    fn learned_marks_decide_and_an_era_change_discards_them() {
        let ledger = TagLedger::default();
        ledger.complete(10);
        let s = stamp(5, &["a", "b"]);
        let era = ledger.era();
        assert!(
            !ledger.learn(era, &s, &table(12, 0, &[3, 8])),
            "b was invalidated at 8 > 5"
        );
        assert_eq!(ledger.verdict(&s), Verdict::Invalid);
        assert_eq!(ledger.stamp(), 12);
        let t = stamp(5, &["c"]);
        ledger.reset();
        ledger.complete(12);
        assert!(
            ledger.learn(era, &t, &table(12, 0, &[0])),
            "valid by the store's answer"
        );
        assert_eq!(
            ledger.verdict(&t),
            Verdict::Unknown,
            "a stale era is not remembered"
        );
    }

    #[test]
    fn a_pending_local_invalidation_holds_until_confirmed_and_survives_resets() {
        let ledger = TagLedger::default();
        ledger.complete(10);
        assert!(ledger.invalidate_pending("t"));
        assert_eq!(ledger.verdict(&stamp(1_000, &["t"])), Verdict::Pending);
        ledger.reset();
        ledger.complete(20);
        assert_eq!(ledger.verdict(&stamp(1_000, &["t"])), Verdict::Pending);
        ledger.invalidated("t", 19);
        assert_eq!(
            ledger.verdict(&stamp(1_000, &["t"])),
            Verdict::Pending,
            "another instance's mark does not confirm ours"
        );
        ledger.confirmed("t", 21, ledger.pending_seq());
        assert_eq!(ledger.verdict(&stamp(21, &["t"])), Verdict::Valid);
        assert_eq!(ledger.verdict(&stamp(20, &["t"])), Verdict::Invalid);
    }

    #[test]
    fn marks_learned_from_a_re_created_table_do_not_vouch_for_stamps_below_its_floor() {
        // Listening again after a reset, completed from the re-created table's clock.
        let ledger = TagLedger::default();
        ledger.complete(120);
        let era = ledger.era();
        let old = stamp(50, &["t"]);
        // The table was lost and re-created at 100: no mark for `t` since then.
        assert!(!ledger.learn(era, &old, &table(120, 100, &[0])));
        assert_ne!(
            ledger.verdict(&old),
            Verdict::Valid,
            "an entry from before the loss was vouched for locally"
        );
        assert_eq!(ledger.verdict(&stamp(110, &["t"])), Verdict::Valid);
    }

    #[test]
    fn completing_from_an_older_read_keeps_the_marks_learned_since() {
        // The listener read the store's clock (10), then this instance invalidated `t` (11),
        // then the listener completes the ledger from its read.
        let ledger = TagLedger::default();
        ledger.confirmed("t", 11, 0);
        ledger.complete(10);
        assert_eq!(ledger.verdict(&stamp(10, &["t"])), Verdict::Invalid);
        assert_eq!(ledger.verdict(&stamp(11, &["t"])), Verdict::Valid);
    }

    #[test]
    fn a_pending_invalidation_ends_past_its_life_and_is_pruned() {
        let ledger = TagLedger::new(Duration::from_millis(30));
        ledger.complete(10);
        assert!(ledger.invalidate_pending("t"));
        assert!(ledger.invalidate_pending("u"));
        assert_eq!(ledger.verdict(&stamp(10, &["t"])), Verdict::Pending);
        std::thread::sleep(Duration::from_millis(40));
        assert_eq!(ledger.verdict(&stamp(10, &["u"])), Verdict::Valid);
        std::thread::sleep(PRUNE_EVERY);
        assert!(ledger.invalidate_pending("v"));
        assert_eq!(ledger.pending_len(), 1, "t and u are past their life");
    }

    #[test]
    fn a_store_write_sent_before_a_newer_invalidation_does_not_confirm_it() {
        let ledger = TagLedger::default();
        ledger.complete(10);
        assert!(ledger.invalidate_pending("t"));
        // An older invalidation's retry is sent now...
        let seq = ledger.pending_seq();
        // ...the tag is invalidated again meanwhile (its own write fails)...
        assert!(ledger.invalidate_pending("t"));
        // ...and the older write's answer arrives.
        ledger.confirmed("t", 11, seq);
        assert_eq!(
            ledger.verdict(&stamp(11, &["t"])),
            Verdict::Pending,
            "the newer invalidation is not confirmed by a write sent before it"
        );
        ledger.confirmed("t", 12, ledger.pending_seq());
        assert_eq!(ledger.verdict(&stamp(12, &["t"])), Verdict::Valid);
    }

    #[test]
    fn forgetting_marks_at_the_bound_stays_correct() {
        let ledger = TagLedger::default();
        ledger.complete(0);
        ledger.invalidated("old", 5);
        for i in 0..MAX_MARKS as u64 {
            ledger.invalidated(&format!("t{i}"), 10 + i);
        }
        let clock = ledger.stamp();
        // "old" was forgotten: an entry stamped before the forgetting must be checked again.
        assert_eq!(ledger.verdict(&stamp(3, &["old"])), Verdict::Unknown);
        assert_eq!(ledger.verdict(&stamp(clock, &["old"])), Verdict::Valid);
        assert!(ledger.state.read().marks.len() <= MAX_MARKS);
    }
}
