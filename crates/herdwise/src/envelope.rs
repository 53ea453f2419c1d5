//! The stored bytes: a fixed binary header, then the (optionally compressed) payload.
//!
//! Layout (all integers big-endian), `HEADER_LEN` = 52 bytes:
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 2 | magic `HW` |
//! | 2 | 1 | format version (1) |
//! | 3 | 1 | flags: bit 0 negative entry, bit 1 compressed (lz4), bit 2 stale copy (re-stored by fail-safe while the origin fails) |
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
    let compressed = match compression {
        Compression::Lz4 { min_bytes } if payload.len() >= min_bytes && !payload.is_empty() => {
            let block = lz4_flex::block::compress(payload);
            (block.len() + 4 < payload.len()).then_some(block)
        }
        _ => None,
    };
    let body_len = compressed.as_ref().map_or(payload.len(), |b| b.len() + 4);
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
    if flags & !(FLAG_NEGATIVE | FLAG_COMPRESSED | FLAG_STALE_COPY) != 0 || bytes[5..8] != [0, 0, 0]
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
pub fn decode(bytes: &[u8], max_payload: usize) -> Result<(Meta, Cow<'_, [u8]>), EnvelopeError> {
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
    if meta.negative && !body.is_empty() {
        return Err(EnvelopeError::Inconsistent);
    }
    if bytes[3] & FLAG_COMPRESSED == 0 {
        if body.len() > max_payload {
            return Err(EnvelopeError::TooLarge(body.len()));
        }
        return Ok((meta, Cow::Borrowed(body)));
    }
    if body.len() < 4 {
        return Err(EnvelopeError::Truncated(bytes.len()));
    }
    let raw_len = be_u32(body, 0) as usize;
    if raw_len > max_payload {
        return Err(EnvelopeError::TooLarge(raw_len));
    }
    let mut raw = vec![0u8; raw_len];
    match lz4_flex::block::decompress_into(&body[4..], &mut raw) {
        Ok(n) if n == raw_len => Ok((meta, Cow::Owned(raw))),
        _ => Err(EnvelopeError::Decompress),
    }
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
        let (m, p) = decode(&bytes, 1 << 20).unwrap();
        assert_eq!(m, meta());
        assert_eq!(&*p, b"hello");

        let big = vec![b'a'; 100_000];
        let bytes = encode(&meta(), &big, Compression::Lz4 { min_bytes: 1024 });
        assert!(bytes.len() < 2_000, "repetitive payload must compress");
        let (_, p) = decode(&bytes, 1 << 20).unwrap();
        assert_eq!(&*p, &big[..]);
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
            let bytes = encode(&meta(), &payload, compression);
            for len in 0..bytes.len() {
                assert!(
                    decode(&bytes[..len], 1 << 20).is_err(),
                    "truncated to {len}"
                );
            }
            for i in 0..bytes.len() {
                for bit in 0..8 {
                    let mut bad = bytes.clone();
                    bad[i] ^= 1 << bit;
                    assert!(decode(&bad, 1 << 20).is_err(), "flip byte {i} bit {bit}");
                }
            }
        }
    }

    #[test]
    fn lying_lengths_are_bounded_by_the_value_limit() {
        let big = vec![0u8; 10_000];
        let bytes = encode(&meta(), &big, Compression::Lz4 { min_bytes: 1 });
        assert_eq!(decode(&bytes, 1_000), Err(EnvelopeError::TooLarge(10_000)));
    }
}
