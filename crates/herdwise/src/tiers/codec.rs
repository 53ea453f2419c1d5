//! Payload codecs: how a value becomes the bytes after the envelope header.
//!
//! The codec's id is written into every envelope, so switching codecs without bumping the schema
//! version reads old entries as misses instead of misreading them.

use serde::{de::DeserializeOwned, Serialize};

/// Why a payload could not be encoded or decoded.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{codec} codec: {message}")]
pub struct CodecError {
    codec: &'static str,
    message: String,
}

impl CodecError {
    /// A codec error with a message.
    pub fn new(codec: &'static str, message: impl std::fmt::Display) -> Self {
        CodecError {
            codec,
            message: message.to_string(),
        }
    }
}

/// Turns values into payload bytes and back. Implement it to plug in another format.
///
/// ```
/// use herdwise::{Codec, Json, Postcard};
/// let bytes = Codec::<Vec<u32>>::encode(&Postcard, &vec![1, 2, 3]).unwrap();
/// assert_eq!(Codec::<Vec<u32>>::decode(&Postcard, &bytes).unwrap(), vec![1, 2, 3]);
/// let json = Codec::<Vec<u32>>::encode(&Json, &vec![1]).unwrap();
/// assert_eq!(json, b"[1]");
/// ```
pub trait Codec<V>: Send + Sync + 'static {
    /// A byte identifying the format (0-15 are reserved for Herdwise's own codecs).
    fn id(&self) -> u8;
    /// Encodes a value.
    fn encode(&self, value: &V) -> Result<Vec<u8>, CodecError>;
    /// Decodes a value; any error makes the entry a (counted) miss.
    fn decode(&self, bytes: &[u8]) -> Result<V, CodecError>;
    /// Encodes a value to be stored under `stored_key`. The cache always calls this one; the
    /// default ignores the key. A codec that authenticates its bytes (as
    /// [`Encrypted`](crate::Encrypted) does) binds them to the key, so that bytes moved under
    /// another key fail [`decode_for_key`](Codec::decode_for_key) there.
    fn encode_for_key(&self, value: &V, stored_key: &str) -> Result<Vec<u8>, CodecError> {
        let _ = stored_key;
        self.encode(value)
    }
    /// Decodes bytes read under `stored_key` (the counterpart of
    /// [`encode_for_key`](Codec::encode_for_key)); the default ignores the key.
    fn decode_for_key(&self, bytes: &[u8], stored_key: &str) -> Result<V, CodecError> {
        let _ = stored_key;
        self.decode(bytes)
    }
}

/// The default codec: compact binary via `postcard` (serde). Not self-describing: bump the
/// cache's schema version whenever the value type changes shape.
#[derive(Debug, Clone, Copy, Default)]
pub struct Postcard;

impl<V: Serialize + DeserializeOwned> Codec<V> for Postcard {
    fn id(&self) -> u8 {
        1
    }
    fn encode(&self, value: &V) -> Result<Vec<u8>, CodecError> {
        postcard::to_stdvec(value).map_err(|e| CodecError::new("postcard", e))
    }
    fn decode(&self, bytes: &[u8]) -> Result<V, CodecError> {
        postcard::from_bytes(bytes).map_err(|e| CodecError::new("postcard", e))
    }
}

/// [`Postcard`]'s format for byte buffers (`Vec<u8>` values), without serde: a varint length,
/// then the bytes, copied in one go instead of visited one element at a time (10 KB values
/// decoded 10,000 calls apart). The bytes are exactly postcard's, under postcard's codec id,
/// so entries written either way read either way. The default codec for `Vec<u8>` values.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct PostcardBytes;

impl Codec<Vec<u8>> for PostcardBytes {
    fn id(&self) -> u8 {
        1
    }
    fn encode(&self, value: &Vec<u8>) -> Result<Vec<u8>, CodecError> {
        let mut out = Vec::with_capacity(value.len() + 10);
        let mut n = value.len() as u64;
        loop {
            let byte = (n & 0x7f) as u8;
            n >>= 7;
            if n == 0 {
                out.push(byte);
                break;
            }
            out.push(byte | 0x80);
        }
        out.extend_from_slice(value);
        Ok(out)
    }
    fn decode(&self, bytes: &[u8]) -> Result<Vec<u8>, CodecError> {
        let mut len: u64 = 0;
        for (i, &byte) in bytes.iter().enumerate().take(10) {
            len |= u64::from(byte & 0x7f) << (7 * i);
            if byte & 0x80 == 0 {
                let body = &bytes[i + 1..];
                let len = usize::try_from(len)
                    .ok()
                    .filter(|&n| n <= body.len())
                    .ok_or_else(|| {
                        CodecError::new("postcard", "byte buffer shorter than its length")
                    })?;
                return Ok(body[..len].to_vec());
            }
        }
        Err(CodecError::new("postcard", "bad length varint"))
    }
}

/// JSON via `serde_json`: larger and slower, but readable with `redis-cli` and shareable with
/// services in other languages.
#[derive(Debug, Clone, Copy, Default)]
pub struct Json;

impl<V: Serialize + DeserializeOwned> Codec<V> for Json {
    fn id(&self) -> u8 {
        2
    }
    fn encode(&self, value: &V) -> Result<Vec<u8>, CodecError> {
        serde_json::to_vec(value).map_err(|e| CodecError::new("json", e))
    }
    fn decode(&self, bytes: &[u8]) -> Result<V, CodecError> {
        serde_json::from_slice(bytes).map_err(|e| CodecError::new("json", e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_buffers_are_postcards_bytes_both_ways() {
        for n in [0usize, 1, 127, 128, 300, 16_383, 16_384, 70_000] {
            let v: Vec<u8> = (0..n).map(|i| (i * 7) as u8).collect();
            let ours = PostcardBytes.encode(&v).unwrap();
            assert_eq!(ours, postcard::to_stdvec(&v).unwrap(), "length {n}");
            assert_eq!(PostcardBytes.decode(&ours).unwrap(), v);
            let theirs: Vec<u8> = postcard::from_bytes(&ours).unwrap();
            assert_eq!(theirs, v);
        }
        // truncated, a length past the end, a varint that never ends: errors, never panics
        let ok = PostcardBytes.encode(&vec![1u8; 300]).unwrap();
        assert!(PostcardBytes.decode(&ok[..100]).is_err());
        assert!(PostcardBytes.decode(&[]).is_err());
        assert!(PostcardBytes.decode(&[0xff; 12]).is_err());
        assert!(PostcardBytes
            .decode(&[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01])
            .is_err());
    }
}
