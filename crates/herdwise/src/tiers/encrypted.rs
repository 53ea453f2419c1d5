//! Encryption at rest: a codec wrapper that seals each encoded value with an AEAD
//! (XChaCha20-Poly1305) before it leaves the process, so Redis (its memory, its backups, anyone
//! who can read it) holds ciphertext only.
//!
//! Contract: [`Encrypted`] wraps any [`Codec`]. It writes with the current key of its
//! [`EncryptionKeys`] and reads with any key the ring holds, found by the key id written in
//! the clear in front of each ciphertext — so keys rotate without a cold cache: deploy the new
//! key as current with the old one as previous, and entries written under the old key stay
//! readable until they expire. A ciphertext that does not authenticate (a wrong or unknown
//! key, tampered bytes) is a decode error, which the cache counts as a corrupt entry: a miss,
//! never a panic. The envelope header (timestamps, version) stays in the clear: the store's
//! scripts read the version.
//!
//! Each ciphertext is bound to the stored key it was written under (the key is part of the
//! authenticated data): bytes copied or moved under another key — even with the envelope's
//! scope forged to match — do not authenticate there.
//!
//! Layout of the payload: `2` (format), inner codec id (`u8`), key id (`u32` BE), 24-byte
//! random nonce, ciphertext with its 16-byte tag. The authenticated data is the first six
//! bytes followed by the stored key.

use std::sync::Arc;

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};

use super::codec::{Codec, CodecError};

/// Format 2 binds the ciphertext to its stored key (format 1, which did not, is refused).
const FORMAT: u8 = 2;
const NONCE_LEN: usize = 24;
const HEAD_LEN: usize = 6;
/// The codec id of encrypted payloads (in Herdwise's reserved range).
pub const ENCRYPTED_CODEC_ID: u8 = 3;

/// The keys an [`Encrypted`] codec uses: one current key (for writing and reading) and any
/// number of previous keys (for reading only), each with an id.
///
/// ```
/// use herdwise::EncryptionKeys;
/// let keys = EncryptionKeys::new(2, [7u8; 32]).with_previous(1, [9u8; 32]);
/// assert_eq!(keys.current_id(), 2);
/// ```
#[derive(Clone)]
pub struct EncryptionKeys {
    current: (u32, Arc<XChaCha20Poly1305>),
    previous: Vec<(u32, Arc<XChaCha20Poly1305>)>,
}

impl std::fmt::Debug for EncryptionKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let previous: Vec<u32> = self.previous.iter().map(|(id, _)| *id).collect();
        f.debug_struct("EncryptionKeys")
            .field("current", &self.current.0)
            .field("previous", &previous)
            .finish_non_exhaustive()
    }
}

impl EncryptionKeys {
    /// A ring whose current key is `key` (32 random bytes, e.g. from a secret manager) with id
    /// `id`.
    pub fn new(id: u32, key: [u8; 32]) -> Self {
        EncryptionKeys {
            current: (id, Arc::new(XChaCha20Poly1305::new(&key.into()))),
            previous: Vec::new(),
        }
    }

    /// Adds a key that entries may still be encrypted with (read only). An id already in the
    /// ring is ignored: ids name keys.
    pub fn with_previous(mut self, id: u32, key: [u8; 32]) -> Self {
        if id != self.current.0 && self.previous.iter().all(|(known, _)| *known != id) {
            self.previous
                .push((id, Arc::new(XChaCha20Poly1305::new(&key.into()))));
        }
        self
    }

    /// The id new entries are written with.
    pub fn current_id(&self) -> u32 {
        self.current.0
    }

    fn find(&self, id: u32) -> Option<&XChaCha20Poly1305> {
        if self.current.0 == id {
            return Some(&self.current.1);
        }
        self.previous
            .iter()
            .find(|(known, _)| *known == id)
            .map(|(_, cipher)| &**cipher)
    }
}

/// A codec that encrypts what `C` encodes (see the module contract).
///
/// ```
/// use herdwise::{Cache, Encrypted, EncryptionKeys, Postcard};
/// let keys = EncryptionKeys::new(1, [42u8; 32]);
/// let cache: Cache<u64, String> = Cache::builder("secrets")
///     .codec(Encrypted::new(Postcard, keys))
///     .build()
///     .unwrap();
/// # let _ = cache;
/// ```
#[derive(Debug, Clone)]
pub struct Encrypted<C> {
    inner: C,
    keys: EncryptionKeys,
}

impl<C> Encrypted<C> {
    /// Wraps `inner`, encrypting with `keys`.
    pub fn new(inner: C, keys: EncryptionKeys) -> Self {
        Encrypted { inner, keys }
    }
}

impl<V, C: Codec<V>> Codec<V> for Encrypted<C> {
    fn id(&self) -> u8 {
        ENCRYPTED_CODEC_ID
    }

    fn encode(&self, value: &V) -> Result<Vec<u8>, CodecError> {
        self.encode_for_key(value, "")
    }

    fn decode(&self, bytes: &[u8]) -> Result<V, CodecError> {
        self.decode_for_key(bytes, "")
    }

    fn encode_for_key(&self, value: &V, stored_key: &str) -> Result<Vec<u8>, CodecError> {
        let plain = self.inner.encode(value)?;
        let (id, cipher) = &self.keys.current;
        let mut out = Vec::with_capacity(HEAD_LEN + NONCE_LEN + plain.len() + 16);
        out.push(FORMAT);
        out.push(self.inner.id());
        out.extend_from_slice(&id.to_be_bytes());
        let nonce: [u8; NONCE_LEN] = rand::random();
        out.extend_from_slice(&nonce);
        let aad = associated_data(&out[..HEAD_LEN], stored_key);
        let sealed = cipher
            .encrypt(
                XNonce::from_slice(&nonce),
                Payload {
                    msg: &plain,
                    aad: &aad,
                },
            )
            .map_err(|_| CodecError::new("encrypted", "encryption failed"))?;
        out.extend_from_slice(&sealed);
        Ok(out)
    }

    fn decode_for_key(&self, bytes: &[u8], stored_key: &str) -> Result<V, CodecError> {
        if bytes.len() < HEAD_LEN + NONCE_LEN + 16 {
            return Err(CodecError::new("encrypted", "too short"));
        }
        if bytes[0] != FORMAT {
            return Err(CodecError::new(
                "encrypted",
                format!("unknown format {} (expected {FORMAT})", bytes[0]),
            ));
        }
        if bytes[1] != self.inner.id() {
            return Err(CodecError::new(
                "encrypted",
                format!(
                    "written by codec {}, expected {}",
                    bytes[1],
                    self.inner.id()
                ),
            ));
        }
        let id = u32::from_be_bytes([bytes[2], bytes[3], bytes[4], bytes[5]]);
        let cipher = self
            .keys
            .find(id)
            .ok_or_else(|| CodecError::new("encrypted", format!("unknown key id {id}")))?;
        let nonce = XNonce::from_slice(&bytes[HEAD_LEN..HEAD_LEN + NONCE_LEN]);
        let aad = associated_data(&bytes[..HEAD_LEN], stored_key);
        let plain = cipher
            .decrypt(
                nonce,
                Payload {
                    msg: &bytes[HEAD_LEN + NONCE_LEN..],
                    aad: &aad,
                },
            )
            .map_err(|_| {
                CodecError::new("encrypted", format!("key {id}: authentication failed"))
            })?;
        self.inner.decode(&plain)
    }
}

/// What the AEAD authenticates besides the ciphertext: the payload's head (format, inner
/// codec, key id) and the stored key the bytes belong to.
fn associated_data(head: &[u8], stored_key: &str) -> Vec<u8> {
    let mut aad = Vec::with_capacity(head.len() + stored_key.len());
    aad.extend_from_slice(head);
    aad.extend_from_slice(stored_key.as_bytes());
    aad
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tiers::codec::{Json, Postcard};

    fn codec(keys: EncryptionKeys) -> Encrypted<Postcard> {
        Encrypted::new(Postcard, keys)
    }

    #[test]
    fn round_trips_and_hides_the_plaintext() {
        let c = codec(EncryptionKeys::new(1, [1; 32]));
        let secret = "card 4111-1111-1111-1111".to_string();
        let bytes = Codec::<String>::encode(&c, &secret).unwrap();
        assert!(!bytes.windows(4).any(|w| w == b"4111"));
        assert_eq!(Codec::<String>::decode(&c, &bytes).unwrap(), secret);
        // Two encryptions of one value differ (random nonces).
        assert_ne!(bytes, Codec::<String>::encode(&c, &secret).unwrap());
    }

    #[test]
    fn rotated_keys_read_old_entries_and_write_new_ones() {
        let old = codec(EncryptionKeys::new(1, [1; 32]));
        let written_before = Codec::<u64>::encode(&old, &7).unwrap();
        let rotated = codec(EncryptionKeys::new(2, [2; 32]).with_previous(1, [1; 32]));
        assert_eq!(Codec::<u64>::decode(&rotated, &written_before).unwrap(), 7);
        let written_after = Codec::<u64>::encode(&rotated, &8).unwrap();
        assert_eq!(&written_after[2..6], &2u32.to_be_bytes());
        // The old key alone cannot read what the new key wrote.
        assert!(Codec::<u64>::decode(&old, &written_after).is_err());
    }

    #[test]
    fn wrong_keys_tampering_and_garbage_are_errors_not_panics() {
        let c = codec(EncryptionKeys::new(1, [1; 32]));
        let bytes = Codec::<String>::encode(&c, &"x".to_string()).unwrap();
        let impostor = codec(EncryptionKeys::new(1, [9; 32]));
        assert!(Codec::<String>::decode(&impostor, &bytes).is_err());
        for i in 0..bytes.len() {
            let mut bad = bytes.clone();
            bad[i] ^= 0x40;
            assert!(Codec::<String>::decode(&c, &bad).is_err(), "byte {i}");
        }
        for len in 0..bytes.len() {
            assert!(Codec::<String>::decode(&c, &bytes[..len]).is_err());
        }
        let json = Encrypted::new(Json, EncryptionKeys::new(1, [1; 32]));
        assert!(
            Codec::<String>::decode(&json, &bytes).is_err(),
            "inner codec checked"
        );
        assert_eq!(Codec::<String>::id(&c), ENCRYPTED_CODEC_ID);
    }

    #[test]
    fn ciphertext_is_bound_to_its_stored_key() {
        let c = codec(EncryptionKeys::new(1, [1; 32]));
        let bytes = Codec::<u64>::encode_for_key(&c, &7, "users:v1:1").unwrap();
        assert_eq!(
            Codec::<u64>::decode_for_key(&c, &bytes, "users:v1:1").unwrap(),
            7
        );
        for other in ["users:v1:2", "users:v1:1 ", "", "tenant-b:users:v1:1"] {
            assert!(
                Codec::<u64>::decode_for_key(&c, &bytes, other).is_err(),
                "{other:?}"
            );
        }
        // The previous, unbound format is refused, not read without the binding.
        let mut old_format = bytes.clone();
        old_format[0] = 1;
        assert!(Codec::<u64>::decode_for_key(&c, &old_format, "users:v1:1").is_err());
    }

    #[test]
    fn key_ids_name_keys_and_debug_hides_them() {
        let keys = EncryptionKeys::new(1, [1; 32])
            .with_previous(1, [5; 32])
            .with_previous(2, [2; 32])
            .with_previous(2, [6; 32]);
        let debug = format!("{keys:?}");
        assert!(debug.contains("previous: [2]"), "{debug}");
        assert!(!debug.contains("[1, 1"), "{debug}");
    }
}
