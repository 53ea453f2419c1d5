//! Encryption at rest against a real Redis: what Redis holds is ciphertext; keys rotate
//! without a cold cache; a wrong key or tampered bytes is a counted miss.
#![cfg(feature = "encryption")]

mod common;

use common::counter;
use herdwise::{metrics as m, Cache, Encrypted, EncryptionKeys, Postcard};

const SECRET: &str = "ssn 078-05-1120";

fn keys(current: (u32, u8), previous: &[(u32, u8)]) -> EncryptionKeys {
    let mut ring = EncryptionKeys::new(current.0, [current.1; 32]);
    for (id, byte) in previous {
        ring = ring.with_previous(*id, [*byte; 32]);
    }
    ring
}

async fn raw_get(server: &herdwise_testkit::RedisServer, key: &str) -> Option<Vec<u8>> {
    let mut raw = common::raw(server).await;
    redis::cmd("GET")
        .arg(key)
        .query_async(&mut raw)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_holds_ciphertext_and_keys_rotate_without_a_cold_cache() {
    let server = common::redis();
    let build = |ring: EncryptionKeys, store: herdwise::RedisStore| {
        common::with_metrics(move || {
            Cache::<u64, String>::builder("vault")
                .store(store.clone())
                .codec(Encrypted::new(Postcard, ring.clone()))
        })
    };
    let (old, _) = build(keys((1, 1), &[]), common::store(&server).await);
    old.set(&1, SECRET.to_string()).await.unwrap();
    let stored = raw_get(&server, &old.stored_key(&1).unwrap())
        .await
        .unwrap();
    assert!(
        !stored.windows(8).any(|w| w == &SECRET.as_bytes()[..8]),
        "Redis must not hold the plaintext"
    );

    // Rotation: the new key is current, the old one still reads what it wrote.
    let (rotated, rotated_metrics) = build(keys((2, 2), &[(1, 1)]), common::store(&server).await);
    assert_eq!(
        rotated
            .get(&1)
            .await
            .unwrap()
            .as_deref()
            .map(String::as_str),
        Some(SECRET)
    );
    rotated
        .set(&2, "written with key 2".to_string())
        .await
        .unwrap();
    assert_eq!(counter(&rotated_metrics, m::CORRUPT_ENTRIES, &[]), 0);
    let stored = raw_get(&server, &rotated.stored_key(&2).unwrap())
        .await
        .unwrap();
    // (Envelope header and scope, then: format, inner codec id, key id.)
    assert!(
        stored.windows(6).any(|w| w == [2, 1, 0, 0, 0, 2]),
        "new entries carry key id 2"
    );

    // An instance without key 2 cannot read it: a counted miss, never a panic.
    let (stale, stale_metrics) = build(keys((1, 1), &[]), common::store(&server).await);
    assert_eq!(stale.get(&2).await.unwrap(), None);
    assert_eq!(counter(&stale_metrics, m::CORRUPT_ENTRIES, &[]), 1);

    // A wrong key under a known id is a counted miss too.
    let (impostor, impostor_metrics) = build(keys((1, 9), &[]), common::store(&server).await);
    assert_eq!(impostor.get(&1).await.unwrap(), None);
    assert_eq!(counter(&impostor_metrics, m::CORRUPT_ENTRIES, &[]), 1);
}

/// Someone who can write to Redis moves one key's ciphertext under another key and forges the
/// envelope's scope to match (the fingerprint is not a secret): the ciphertext is bound to the
/// key it was written under, so it does not authenticate there — a counted miss.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ciphertext_moved_under_another_key_does_not_decrypt_even_with_a_forged_scope() {
    use herdwise::envelope::{self, Compression};
    let server = common::redis();
    let build = |store: herdwise::RedisStore| {
        common::with_metrics(move || {
            Cache::<u64, String>::builder("vault-moved")
                .store(store.clone())
                .codec(Encrypted::new(Postcard, keys((1, 1), &[])))
        })
    };
    let (writer, _) = build(common::store(&server).await);
    writer.set(&1, SECRET.to_string()).await.unwrap();
    let (cache, metrics) = build(common::store(&server).await);
    let (one, two) = (cache.stored_key(&1).unwrap(), cache.stored_key(&2).unwrap());
    let stored = raw_get(&server, &one).await.unwrap();
    let decoded = envelope::decode(&stored, 1 << 20).unwrap();
    let forged = envelope::encode_scoped(
        &decoded.meta,
        Some(envelope::key_fingerprint(&two)),
        None,
        &decoded.payload,
        Compression::None,
    );
    let mut raw = common::raw(&server).await;
    let () = redis::cmd("SET")
        .arg(&two)
        .arg(forged)
        .query_async(&mut raw)
        .await
        .unwrap();
    assert_eq!(cache.get(&2).await.unwrap(), None);
    assert_eq!(counter(&metrics, m::CORRUPT_ENTRIES, &[]), 1);
    // The original, in its own place, still decrypts.
    assert_eq!(
        cache.get(&1).await.unwrap().as_deref().map(String::as_str),
        Some(SECRET)
    );
}
