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
