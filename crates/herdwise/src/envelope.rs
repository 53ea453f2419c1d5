//! The stored bytes: a fixed binary header, then the (optionally compressed) payload.
//!
//! Layout (all integers big-endian), `HEADER_LEN` = 52 bytes:
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 2 | magic `HW` |
//! | 2 | 1 | format version (1) |
//! | 3 | 1 | flags: bit 0 negative entry, bit 1 compressed (lz4), bit 2 stale copy (re-stored by fail-safe while the origin fails), bit 3 tagged, bit 4 scoped |
//! | 4 | 1 | codec id |
//! | 5 | 3 | reserved, zero |
//! | 8 | 8 | created at, unix ms |
//! | 16 | 8 | fresh until, unix ms |
//! | 24 | 8 | stale until, unix ms (≥ fresh until) |
//! | 32 | 8 | value version (0 = unversioned) — read by the store's versioned-set script |
//! | 40 | 4 | load duration, µs (the Δ of XFetch) |
//! | 44 | 4 | payload length |
//! | 48 | 4 | CRC-32 of bytes 0..48 and the payload |
//!
//! The body follows the header. A scoped entry's body starts with the *scope*: the
//! [`key_fingerprint`] (`u64`) of the stored key it was written under, so that bytes read back
//! under any other key (a key-format regression, a copy made by hand, a foreign writer) are
//! recognised as out of place. A tagged entry's body goes on with its tag block: the tag clock it
//! was stamped with (`u64`), the number of tags (`u8`), then each tag as `u8 length` + UTF-8
//! bytes. The value payload comes next; the payload length field counts the whole body.
//!
//! A compressed payload is `u32 uncompressed length` + an lz4 block. Decoding never trusts the
//! bytes: every length is checked against the input and the configured value limit before
//! anything is allocated, and the CRC catches flipped bits that a codec might otherwise accept.

use std::borrow::Cow;
use std::time::Duration;

/// Length of the fixed header.
pub const HEADER_LEN: usize = 52;
/// Offset of the big-endian `u64` value version inside the header.
pub const VERSION_OFFSET: usize = 32;
const MAGIC: [u8; 2] = *b"HW";
const FORMAT_VERSION: u8 = 1;
const FLAG_NEGATIVE: u8 = 1;
const FLAG_COMPRESSED: u8 = 2;
const FLAG_STALE_COPY: u8 = 4;
const FLAG_TAGGED: u8 = 8;
const FLAG_SCOPED: u8 = 16;
/// Most tags one stored entry can carry (the format's limit; caches enforce a lower one).
pub const MAX_STORED_TAGS: usize = 64;
/// Longest tag, in bytes.
pub const MAX_TAG_BYTES: usize = 128;

/// The tags an entry carries, and the namespace's tag clock when the entry's value was read from
/// the origin (or written). The entry is valid while none of its tags was invalidated at a
/// later clock value (see the cache's `invalidate_tag`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TagStamp {
    /// The tag clock the entry was stamped with.
    pub clock: u64,
    /// The tags, each 1..=`MAX_TAG_BYTES` bytes, at most `MAX_STORED_TAGS` of them.
    pub tags: Box<[Box<str>]>,
}

/// The fingerprint of a stored key that scoped entries carry: 64-bit FNV-1a of its bytes.
/// Not a secret and not a MAC (anyone who can write to the store can forge it): it catches
/// bytes in the wrong place, not an attacker.
///
/// ```
/// use herdwise::envelope::key_fingerprint;
/// assert_eq!(key_fingerprint(""), 0xcbf2_9ce4_8422_2325);
/// assert_ne!(key_fingerprint("users:v1:1"), key_fingerprint("users:v1:2"));
/// ```
pub fn key_fingerprint(stored_key: &str) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in stored_key.as_bytes() {
        hash ^= u64::from(b);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash
}

/// A decoded entry: header fields, tags (if any) and the value payload.
#[derive(Debug)]
pub struct Decoded<'a> {
    /// The header fields.
    pub meta: Meta,
    /// The [`key_fingerprint`] of the key the entry was written under, if it carries one.
    pub scope: Option<u64>,
    /// The entry's tags, if it was stored with any.
    pub tags: Option<TagStamp>,
    /// The (decompressed) value payload; empty for a negative entry.
    pub payload: Cow<'a, [u8]>,
}

/// Metadata stored with every entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Meta {
    /// When the entry was written (unix ms).
    pub created_at_ms: u64,
    /// Until when the entry is fresh (unix ms).
    pub fresh_until_ms: u64,
    /// Until when the entry may be served stale (unix ms, ≥ `fresh_until_ms`).
    pub stale_until_ms: u64,
    /// The value's version (0 = unversioned). A fill with a lower version never replaces it.
    pub version: u64,
    /// How long the load that produced the value took.
    pub load_duration: Duration,
    /// `true` for a negative entry ("does not exist at the origin").
    pub negative: bool,
    /// `true` for a stale value re-stored because the origin failed (served flagged as stale).
    pub stale_copy: bool,
    /// The id of the codec that wrote the payload.
    pub codec_id: u8,
}

/// Whether and when payloads are compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    /// Never compress.
    None,
    /// lz4-compress payloads of at least `min_bytes`, kept only when it saves space.
    Lz4 {
        /// Smallest payload worth compressing.
        min_bytes: usize,
    },
}

impl Default for Compression {
    fn default() -> Self {
        Compression::Lz4 { min_bytes: 4096 }
    }
}

/// Why stored bytes were rejected. Every variant is treated as a miss by the cache.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EnvelopeError {
    /// Shorter than the header or than the payload length it declares.
    #[error("truncated: {0} bytes")]
    Truncated(usize),
    /// Not an envelope at all.
    #[error("bad magic")]
    BadMagic,
    /// Written by an unknown format version.
    #[error("unsupported format version {0}")]
    UnsupportedFormat(u8),
    /// Trailing bytes after the declared payload.
    #[error("length mismatch")]
    LengthMismatch,
    /// Payload bytes do not match the checksum.
    #[error("checksum mismatch")]
    Checksum,
    /// Timestamps or flags make no sense.
    #[error("inconsistent header")]
    Inconsistent,
    /// Written by another codec.
    #[error("written by codec {found}, expected {expected}")]
    CodecMismatch {
        /// Codec id in the entry.
        found: u8,
        /// Codec id of this cache.
        expected: u8,
    },
    /// The (decompressed) payload would exceed the value limit.
    #[error("payload of {0} bytes exceeds the value limit")]
    TooLarge(usize),
    /// The lz4 block is corrupt.
    #[error("decompression failed")]
    Decompress,
}

/// Encodes `meta` + `payload` into stored bytes, compressing if `compression` says so.
pub fn encode(meta: &Meta, payload: &[u8], compression: Compression) -> Vec<u8> {
    encode_tagged(meta, None, payload, compression)
}

/// [`encode`] with a tag block. Tags past the format's limits (`MAX_STORED_TAGS`,
/// `MAX_TAG_BYTES`) must be rejected by the caller before; here they are cut off.
pub fn encode_tagged(
    meta: &Meta,
    tags: Option<&TagStamp>,
    payload: &[u8],
    compression: Compression,
) -> Vec<u8> {
    encode_scoped(meta, None, tags, payload, compression)
}

/// [`encode_tagged`] with a scope: the [`key_fingerprint`] of the key the bytes are for.
pub fn encode_scoped(
    meta: &Meta,
    scope: Option<u64>,
    tags: Option<&TagStamp>,
    payload: &[u8],
    compression: Compression,
) -> Vec<u8> {
    let mut tag_block = Vec::new();
    if let Some(scope) = scope {
        tag_block.extend_from_slice(&scope.to_be_bytes());
    }
    if let Some(stamp) = tags {
        tag_block.extend_from_slice(&stamp.clock.to_be_bytes());
        let kept: Vec<&str> = stamp
            .tags
            .iter()
            .map(|t| &**t)
            .filter(|t| !t.is_empty() && t.len() <= MAX_TAG_BYTES)
            .take(MAX_STORED_TAGS)
            .collect();
        tag_block.push(kept.len() as u8);
        for tag in kept {
            tag_block.push(tag.len() as u8);
            tag_block.extend_from_slice(tag.as_bytes());
        }
    }
    let compressed = match compression {
        Compression::Lz4 { min_bytes } if payload.len() >= min_bytes && !payload.is_empty() => {
            let block = lz4_flex::block::compress(payload);
            (block.len() + 4 < payload.len()).then_some(block)
        }
        _ => None,
    };
    let body_len = tag_block.len() + compressed.as_ref().map_or(payload.len(), |b| b.len() + 4);
    let mut out = Vec::with_capacity(HEADER_LEN + body_len);
    out.extend_from_slice(&MAGIC);
    out.push(FORMAT_VERSION);
    let mut flags = 0;
    if meta.negative {
        flags |= FLAG_NEGATIVE;
    }
    if compressed.is_some() {
        flags |= FLAG_COMPRESSED;
    }
    if meta.stale_copy {
        flags |= FLAG_STALE_COPY;
    }
    if tags.is_some() {
        flags |= FLAG_TAGGED;
    }
    if scope.is_some() {
        flags |= FLAG_SCOPED;
    }
    out.push(flags);
    out.push(meta.codec_id);
    out.extend_from_slice(&[0, 0, 0]);
    out.extend_from_slice(&meta.created_at_ms.to_be_bytes());
    out.extend_from_slice(&meta.fresh_until_ms.to_be_bytes());
    out.extend_from_slice(&meta.stale_until_ms.to_be_bytes());
    out.extend_from_slice(&meta.version.to_be_bytes());
    let load_us = u32::try_from(meta.load_duration.as_micros()).unwrap_or(u32::MAX);
    out.extend_from_slice(&load_us.to_be_bytes());
    out.extend_from_slice(&(body_len as u32).to_be_bytes());
    let crc_at = out.len();
    out.extend_from_slice(&[0, 0, 0, 0]);
    out.extend_from_slice(&tag_block);
    match &compressed {
        Some(block) => {
            out.extend_from_slice(&(payload.len() as u32).to_be_bytes());
            out.extend_from_slice(block);
        }
        None => out.extend_from_slice(payload),
    }
    let crc = checksum(&out);
    out[crc_at..crc_at + 4].copy_from_slice(&crc.to_be_bytes());
    out
}

/// Reads only the header fields (no checksum, no payload work).
pub fn decode_meta(bytes: &[u8]) -> Result<Meta, EnvelopeError> {
    if bytes.len() < HEADER_LEN {
        return Err(EnvelopeError::Truncated(bytes.len()));
    }
    if bytes[0..2] != MAGIC {
        return Err(EnvelopeError::BadMagic);
    }
    if bytes[2] != FORMAT_VERSION {
        return Err(EnvelopeError::UnsupportedFormat(bytes[2]));
    }
    let flags = bytes[3];
    if flags & !(FLAG_NEGATIVE | FLAG_COMPRESSED | FLAG_STALE_COPY | FLAG_TAGGED | FLAG_SCOPED) != 0
        || bytes[5..8] != [0, 0, 0]
    {
        return Err(EnvelopeError::Inconsistent);
    }
    let meta = Meta {
        created_at_ms: be_u64(bytes, 8),
        fresh_until_ms: be_u64(bytes, 16),
        stale_until_ms: be_u64(bytes, 24),
        version: be_u64(bytes, VERSION_OFFSET),
        load_duration: Duration::from_micros(u64::from(be_u32(bytes, 40))),
        negative: flags & FLAG_NEGATIVE != 0,
        stale_copy: flags & FLAG_STALE_COPY != 0,
        codec_id: bytes[4],
    };
    if meta.stale_until_ms < meta.fresh_until_ms || meta.fresh_until_ms < meta.created_at_ms {
        return Err(EnvelopeError::Inconsistent);
    }
    Ok(meta)
}

/// Decodes stored bytes, verifying the checksum and decompressing (bounded by `max_payload`).
pub fn decode(bytes: &[u8], max_payload: usize) -> Result<Decoded<'_>, EnvelopeError> {
    let meta = decode_meta(bytes)?;
    let body_len = be_u32(bytes, 44) as usize;
    let body = &bytes[HEADER_LEN..];
    if body.len() < body_len {
        return Err(EnvelopeError::Truncated(bytes.len()));
    }
    if body.len() > body_len {
        return Err(EnvelopeError::LengthMismatch);
    }
    if checksum(bytes) != be_u32(bytes, 48) {
        return Err(EnvelopeError::Checksum);
    }
    let (scope, body) = if bytes[3] & FLAG_SCOPED != 0 {
        if body.len() < 8 {
            return Err(EnvelopeError::Truncated(bytes.len()));
        }
        (Some(be_u64(body, 0)), &body[8..])
    } else {
        (None, body)
    };
    let (tags, body) = if bytes[3] & FLAG_TAGGED != 0 {
        let (tags, rest) = decode_tags(body)?;
        (Some(tags), rest)
    } else {
        (None, body)
    };
    if meta.negative && !body.is_empty() {
        return Err(EnvelopeError::Inconsistent);
    }
    let payload = if bytes[3] & FLAG_COMPRESSED == 0 {
        if body.len() > max_payload {
            return Err(EnvelopeError::TooLarge(body.len()));
        }
        Cow::Borrowed(body)
    } else {
        if body.len() < 4 {
            return Err(EnvelopeError::Truncated(bytes.len()));
        }
        let raw_len = be_u32(body, 0) as usize;
        if raw_len > max_payload {
            return Err(EnvelopeError::TooLarge(raw_len));
        }
        let mut raw = vec![0u8; raw_len];
        match lz4_flex::block::decompress_into(&body[4..], &mut raw) {
            Ok(n) if n == raw_len => Cow::Owned(raw),
            _ => return Err(EnvelopeError::Decompress),
        }
    };
    Ok(Decoded {
        meta,
        scope,
        tags,
        payload,
    })
}

/// The tag block at the start of `body`, and what follows it.
fn decode_tags(body: &[u8]) -> Result<(TagStamp, &[u8]), EnvelopeError> {
    let truncated = || EnvelopeError::Truncated(body.len());
    if body.len() < 9 {
        return Err(truncated());
    }
    let clock = be_u64(body, 0);
    let count = body[8] as usize;
    if count == 0 || count > MAX_STORED_TAGS {
        return Err(EnvelopeError::Inconsistent);
    }
    let mut at = 9;
    let mut tags = Vec::with_capacity(count);
    for _ in 0..count {
        let len = *body.get(at).ok_or_else(truncated)? as usize;
        let raw = body.get(at + 1..at + 1 + len).ok_or_else(truncated)?;
        if len == 0 || len > MAX_TAG_BYTES {
            return Err(EnvelopeError::Inconsistent);
        }
        let tag = std::str::from_utf8(raw).map_err(|_| EnvelopeError::Inconsistent)?;
        tags.push(Box::from(tag));
        at += 1 + len;
    }
    let stamp = TagStamp {
        clock,
        tags: tags.into_boxed_slice(),
    };
    Ok((stamp, &body[at..]))
}

/// CRC-32 over everything but the checksum field itself.
fn checksum(bytes: &[u8]) -> u32 {
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&bytes[..48]);
    hasher.update(&bytes[HEADER_LEN..]);
    hasher.finalize()
}

fn be_u64(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_be_bytes(a)
}

fn be_u32(b: &[u8], at: usize) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[at..at + 4]);
    u32::from_be_bytes(a)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta() -> Meta {
        Meta {
            created_at_ms: 1_000,
            fresh_until_ms: 2_000,
            stale_until_ms: 3_000,
            version: 0x0102_0304_0506_0708,
            load_duration: Duration::from_micros(1234),
            negative: false,
            stale_copy: false,
            codec_id: 1,
        }
    }

    #[test]
    fn round_trips_plain_and_compressed() {
        let small = b"hello".to_vec();
        let bytes = encode(&meta(), &small, Compression::default());
        assert_eq!(bytes.len(), HEADER_LEN + 5);
        let d = decode(&bytes, 1 << 20).unwrap();
        assert_eq!(d.meta, meta());
        assert_eq!(d.tags, None);
        assert_eq!(&*d.payload, b"hello");

        let big = vec![b'a'; 100_000];
        let bytes = encode(&meta(), &big, Compression::Lz4 { min_bytes: 1024 });
        assert!(bytes.len() < 2_000, "repetitive payload must compress");
        let d = decode(&bytes, 1 << 20).unwrap();
        assert_eq!(&*d.payload, &big[..]);
    }

    #[test]
    fn scoped_entries_carry_their_keys_fingerprint() {
        let scope = key_fingerprint("users:v1:7");
        for tags in [None, Some(stamp())] {
            for payload in [b"hello".to_vec(), vec![b'a'; 10_000]] {
                let bytes = encode_scoped(
                    &meta(),
                    Some(scope),
                    tags.as_ref(),
                    &payload,
                    Compression::Lz4 { min_bytes: 1024 },
                );
                let d = decode(&bytes, 1 << 20).unwrap();
                assert_eq!(d.scope, Some(scope));
                assert_eq!(d.tags, tags);
                assert_eq!(&*d.payload, &payload[..]);
                assert_every_damage_rejected(&bytes);
            }
        }
        let plain = encode(&meta(), b"x", Compression::None);
        assert_eq!(decode(&plain, 1 << 20).unwrap().scope, None);
    }

    fn stamp() -> TagStamp {
        TagStamp {
            clock: 0x00AA_BBCC_DDEE_FF11,
            tags: vec![Box::from("category:shoes"), Box::from("brand:ü")].into_boxed_slice(),
        }
    }

    #[test]
    fn tags_round_trip_with_plain_compressed_and_negative_entries() {
        let big = vec![b'z'; 50_000];
        let lz4 = Compression::Lz4 { min_bytes: 1024 };
        for (payload, compression) in [(&b"v"[..], Compression::None), (&big[..], lz4)] {
            let bytes = encode_tagged(&meta(), Some(&stamp()), payload, compression);
            let d = decode(&bytes, 1 << 20).unwrap();
            assert_eq!(d.tags, Some(stamp()));
            assert_eq!(&*d.payload, payload);
            assert_eq!(be_u64(&bytes, VERSION_OFFSET), meta().version);
        }
        let negative = Meta {
            negative: true,
            ..meta()
        };
        let bytes = encode_tagged(&negative, Some(&stamp()), b"", Compression::None);
        let d = decode(&bytes, 1 << 20).unwrap();
        assert!(d.meta.negative);
        assert_eq!(d.tags, Some(stamp()));
        assert!(d.payload.is_empty());
    }

    /// Every truncation and every single-bit flip of `bytes` is an error, never a panic.
    fn assert_every_damage_rejected(bytes: &[u8]) {
        for len in 0..bytes.len() {
            assert!(
                decode(&bytes[..len], 1 << 20).is_err(),
                "truncated to {len}"
            );
        }
        for i in 0..bytes.len() {
            for bit in 0..8 {
                let mut bad = bytes.to_vec();
                bad[i] ^= 1 << bit;
                assert!(decode(&bad, 1 << 20).is_err(), "flip byte {i} bit {bit}");
            }
        }
    }

    #[test]
    fn damaged_tag_blocks_are_rejected_without_panicking() {
        assert_every_damage_rejected(&encode_tagged(
            &meta(),
            Some(&stamp()),
            b"payload",
            Compression::None,
        ));
    }

    #[test]
    fn version_sits_at_the_documented_offset() {
        let bytes = encode(&meta(), b"x", Compression::None);
        assert_eq!(be_u64(&bytes, VERSION_OFFSET), meta().version);
    }

    #[test]
    fn every_truncation_and_bit_flip_is_rejected_without_panicking() {
        let payload: Vec<u8> = (0..200u32).map(|i| (i * 7) as u8).collect();
        for compression in [Compression::None, Compression::Lz4 { min_bytes: 1 }] {
            assert_every_damage_rejected(&encode(&meta(), &payload, compression));
        }
    }

    #[test]
    fn lying_lengths_are_bounded_by_the_value_limit() {
        let big = vec![0u8; 10_000];
        let bytes = encode(&meta(), &big, Compression::Lz4 { min_bytes: 1 });
        assert_eq!(
            decode(&bytes, 1_000).map(|d| d.payload.len()),
            Err(EnvelopeError::TooLarge(10_000))
        );
    }
}
