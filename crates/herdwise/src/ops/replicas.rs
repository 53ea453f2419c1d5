//! Hot-key splitting: N copies of a hot key in L2, so its reads spread over N + 1 keys — and, on
//! Redis Cluster, over the shards those keys hash to — instead of melting one shard.
//!
//! A copy is `<stored key>%r<i>-<n>` (`%` is always followed by two hex digits in a stored key,
//! so no real key looks like that), `n` chosen so that the copies sit on Redis Cluster slots
//! spread evenly around the slot ring from the key's own slot: with the usual contiguous slot
//! ranges per primary, the N + 1 keys land on the primaries about evenly, instead of wherever
//! their hashes fall (a few copies sharing the key's primary would leave it the busiest). Copies
//! are made lazily: a reader of a hot key picks one of the N + 1 at random; a copy that is
//! missing is read from the primary and written back, for a short life. Writes and
//! invalidations delete every copy along with the primary (whether or not the key is hot here:
//! it may be hot elsewhere). The one race left — a reader writing back a copy it read just
//! before an invalidation deleted them — serves the old value for at most the copy's life,
//! which is why that life is short.

use std::time::Duration;

use crate::tiers::remote::Remote;

/// Most copies of one key.
pub(crate) const MAX_REPLICAS: u8 = 16;

/// How many copies of a hot key L2 holds, and for how long each.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Replicas {
    pub count: u8,
    pub life: Duration,
}

/// Redis Cluster's slot count.
const SLOTS: u16 = 16384;

/// CRC16-XMODEM, Redis Cluster's key hash.
fn crc16(bytes: &[u8]) -> u16 {
    let mut crc: u16 = 0;
    for &b in bytes {
        crc ^= u16::from(b) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
        }
    }
    crc
}

/// The cluster slot of `key` (its hash tag's, if it has one).
pub(crate) fn slot(key: &str) -> u16 {
    let bytes = key.as_bytes();
    let hashed = match bytes.iter().position(|&b| b == b'{') {
        Some(open) => match bytes[open + 1..].iter().position(|&b| b == b'}') {
            Some(len) if len > 0 => &bytes[open + 1..open + 1 + len],
            _ => bytes,
        },
        None => bytes,
    };
    crc16(hashed) % SLOTS
}

/// Attempts at finding a copy's suffix before settling for any slot (never reached in
/// practice: each attempt succeeds with probability 1/(N + 1)).
const MAX_ATTEMPTS: u32 = 4096;

/// The store key of copy `i` (1-based) of `stored_key`, one of `count` copies:
/// `<stored key>%r<i>-<n>`, `n` the smallest whose slot falls within half a step of the
/// copy's place on the slot ring (the key's own slot plus `i` steps of 16384 / (count + 1)).
/// No hash tag: the copy's lease and fence keys (`{<copy>}:lease`) share its slot, as every
/// key's do. About N + 1 CRC16s of 30 bytes per copy read of a hot key.
pub(crate) fn replica_key(stored_key: &str, i: u8, count: u8) -> String {
    let own = u32::from(slot(stored_key));
    let ring = u32::from(SLOTS);
    let step = ring / (u32::from(count) + 1);
    let place = (own + u32::from(i) * step) % ring;
    let mut key = String::with_capacity(stored_key.len() + 12);
    for n in 0..MAX_ATTEMPTS {
        key.clear();
        key.push_str(stored_key);
        key.push_str("%r");
        key.push_str(itoa::Buffer::new().format(i));
        key.push('-');
        key.push_str(itoa::Buffer::new().format(n));
        let at = u32::from(slot(&key));
        let distance = at.abs_diff(place).min(ring - at.abs_diff(place));
        if distance <= step / 2 {
            break;
        }
    }
    key
}

impl Replicas {
    /// The copy a reader of a hot key reads: `None` for the primary (one chance in N + 1), else
    /// the copy's key and the life to write it back with if it is missing.
    pub fn pick(&self, stored_key: &str) -> Option<(String, Duration)> {
        let pick = rand::random_range(0..=self.count);
        (pick > 0).then(|| (replica_key(stored_key, pick, self.count), self.life))
    }

    /// Deletes every copy of `stored_key`. Failures are counted by the remote tier; a copy that
    /// survives lives out its short life.
    pub async fn delete_all(&self, remote: &Remote, stored_key: &str) {
        let deletes = (1..=self.count).map(|i| {
            let key = replica_key(stored_key, i, self.count);
            async move {
                let _ = remote.delete(&key).await;
            }
        });
        futures::future::join_all(deletes).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_match_redis_cluster() {
        // Values from `CLUSTER KEYSLOT` on Redis 7.
        assert_eq!(slot("foo"), 12182);
        assert_eq!(slot("bar"), 5061);
        assert_eq!(slot("{user1000}.following"), slot("user1000"));
        assert_eq!(slot("a{}b"), slot("a{}b"));
        assert_eq!(slot("{}x"), crc16(b"{}x") % SLOTS);
    }

    #[test]
    fn copies_sit_evenly_around_the_slot_ring() {
        for key in ["users:v1:7", "orders:v3:42", "x"] {
            let count = 8u8;
            let mut windows: Vec<usize> = (0..=count)
                .map(|i| {
                    let k = if i == 0 {
                        key.to_string()
                    } else {
                        replica_key(key, i, count)
                    };
                    assert!(!k.contains('{'), "{k}");
                    usize::from(slot(&k)) * 3 / usize::from(SLOTS)
                })
                .collect();
            windows.sort_unstable();
            // 9 keys over three equal slot ranges: 3 each (give or take one at the edges).
            for third in 0..3 {
                let n = windows.iter().filter(|w| **w == third).count();
                assert!((2..=4).contains(&n), "{key}: {windows:?}");
            }
            assert_eq!(replica_key(key, 3, count), replica_key(key, 3, count));
        }
    }
}
