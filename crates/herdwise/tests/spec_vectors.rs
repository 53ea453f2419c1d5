//! The formats other languages write and read (docs/spec/README.md), pinned by test vectors
//! (docs/spec/vectors.json): the stored envelope, stored keys, and backplane messages. This
//! test checks that the Rust implementation produces and accepts exactly the vectors, and that
//! a message written by hand as the spec says does what it says. Regenerate the file (after a
//! deliberate format change, which needs a new format version) with
//! `HERDWISE_WRITE_VECTORS=1 cargo test -p herdwise --test spec_vectors`.

use std::time::Duration;

use bytes::Bytes;
use herdwise::envelope::{self, key_fingerprint, Compression, Meta, TagStamp};
use herdwise::{Cache, MemoryStore, Store, WriteOptions};
use serde_json::{json, Value};

const VECTORS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/spec/vectors.json");

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(text: &str) -> Vec<u8> {
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).unwrap())
        .collect()
}

fn meta(version: u64, negative: bool) -> Meta {
    Meta {
        created_at_ms: 1_764_000_000_000,
        fresh_until_ms: 1_764_000_300_000,
        stale_until_ms: 1_764_000_330_000,
        version,
        load_duration: Duration::from_micros(1_500),
        negative,
        stale_copy: false,
        codec_id: 2, // JSON
    }
}

/// The envelope vectors: (name, what it shows, stored bytes).
fn envelopes() -> Vec<(&'static str, &'static str, Vec<u8>)> {
    let json = br#"{"id":42,"name":"lamp"}"#;
    let tags = TagStamp {
        clock: 7,
        tags: vec!["category:lamps".into(), "brand:acme".into()].into_boxed_slice(),
    };
    let big: Vec<u8> = br#"{"text":""#
        .iter()
        .chain(b"ab".repeat(2_500).iter())
        .chain(br#""}"#.iter())
        .copied()
        .collect();
    vec![
        (
            "plain",
            "a JSON value, unversioned, uncompressed",
            envelope::encode(&meta(0, false), json, Compression::None),
        ),
        (
            "versioned_tagged_scoped",
            "version 5, scope = fnv1a64(\"catalog:v1:42\"), tag clock 7, tags category:lamps and brand:acme",
            envelope::encode_scoped(
                &meta(5, false),
                Some(key_fingerprint("catalog:v1:42")),
                Some(&tags),
                json,
                Compression::None,
            ),
        ),
        (
            "negative",
            "a negative entry (the origin said: no such value); empty payload",
            envelope::encode(&meta(0, true), b"", Compression::None),
        ),
        (
            "compressed",
            "a 5,011-byte JSON payload, lz4 block compressed (u32 length + block)",
            envelope::encode(&meta(0, false), &big, Compression::Lz4 { min_bytes: 4_096 }),
        ),
    ]
}

fn expected_json() -> Value {
    let envelopes: Vec<Value> = envelopes()
        .into_iter()
        .map(|(name, what, bytes)| {
            let decoded = envelope::decode(&bytes, 1 << 20).unwrap();
            json!({
                "name": name,
                "what": what,
                "hex": hex(&bytes),
                "decoded": {
                    "created_at_ms": decoded.meta.created_at_ms,
                    "fresh_until_ms": decoded.meta.fresh_until_ms,
                    "stale_until_ms": decoded.meta.stale_until_ms,
                    "version": decoded.meta.version,
                    "load_duration_us": decoded.meta.load_duration.as_micros() as u64,
                    "negative": decoded.meta.negative,
                    "codec_id": decoded.meta.codec_id,
                    "scope": decoded.scope,
                    "tag_clock": decoded.tags.as_ref().map(|t| t.clock),
                    "tags": decoded.tags.as_ref().map(|t| t.tags.iter().map(|t| t.to_string()).collect::<Vec<_>>()),
                    "payload_utf8": String::from_utf8(decoded.payload.to_vec()).unwrap(),
                }
            })
        })
        .collect();
    let users: Cache<u64, String> = Cache::builder("users").build().unwrap();
    let docs: Cache<str, String> = Cache::builder("docs").build().unwrap();
    json!({
        "format_version": 1,
        "envelopes": envelopes,
        "key_fingerprints": [
            {"key": "", "fnv1a64": format!("{:016x}", key_fingerprint(""))},
            {"key": "catalog:v1:42", "fnv1a64": format!("{:016x}", key_fingerprint("catalog:v1:42"))},
        ],
        "stored_keys": [
            {"namespace": "users", "key": "u64 7", "stored": users.stored_key(&7).unwrap()},
            {"namespace": "docs", "key": "str \"guide/intro\"", "stored": docs.stored_key("guide/intro").unwrap()},
        ],
        "backplane": {
            "channel": "herdwise:{ns:<namespace>}:inv",
            "messages": [
                {"text": "1f2e3d4c|1@1764000000000|k|users:v1:7", "means": "sender 0x1f2e3d4c, its 1st message, sent at that unix ms: drop key users:v1:7 from L1"},
                {"text": "1f2e3d4c|2|p|users:v1:", "means": "(sent time optional) drop every key starting with users:v1: from L1"},
                {"text": "1f2e3d4c|3|u|users:v1:7", "means": "the delete of users:v1:7 is pending: drop it, and do not take its L2 value until a k message for it"},
                {"text": "1f2e3d4c|4|c|1764000000000", "means": "the namespace moved to this generation (a clear)"},
                {"text": "1f2e3d4c|5|t|12|category:lamps", "means": "tag category:lamps invalidated at tag clock 12 (sent by the invalidating script)"}
            ]
        },
        "tags": [
            {"tag": "category:lamps", "stored": "category:lamps"},
            {"tag": "a × 129", "stored": "sha256:c12cb024a2e5551cca0e08fce8f1c5e3"}
        ]
    })
}

#[test]
fn the_implementation_matches_the_vectors() {
    let expected = expected_json();
    if std::env::var_os("HERDWISE_WRITE_VECTORS").is_some() {
        let text = serde_json::to_string_pretty(&expected).unwrap() + "\n";
        std::fs::write(VECTORS, text).unwrap();
    }
    let file: Value = serde_json::from_str(&std::fs::read_to_string(VECTORS).unwrap()).unwrap();
    assert_eq!(
        file, expected,
        "docs/spec/vectors.json and the implementation disagree"
    );
    // Every vector decodes from its hex, as another language's writer would hand it over.
    for vector in file["envelopes"].as_array().unwrap() {
        let bytes = unhex(vector["hex"].as_str().unwrap());
        let decoded = envelope::decode(&bytes, 1 << 20).unwrap();
        assert_eq!(
            decoded.meta.version,
            vector["decoded"]["version"].as_u64().unwrap()
        );
        // One flipped payload bit is caught.
        let mut flipped = bytes.clone();
        let last = flipped.len() - 1;
        flipped[last] ^= 1;
        assert!(envelope::decode(&flipped, 1 << 20).is_err());
    }
}

/// Entries written by hand as the spec says (a JSON payload in the envelope, under the stored
/// key) are read by a cache with the JSON codec; messages written by hand as the spec says do
/// what they say to its L1.
#[tokio::test]
async fn a_writer_following_the_spec_is_understood() {
    let store = MemoryStore::new();
    let cache: Cache<u64, serde_json::Value> = Cache::builder("users")
        .store(store.clone())
        .codec(herdwise::Json)
        .build()
        .unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    let by_hand = Meta {
        created_at_ms: now,
        fresh_until_ms: now + 60_000,
        stale_until_ms: now + 60_000,
        ..meta(0, false)
    };
    let key = cache.stored_key(&7).unwrap();
    // The scope (the stored key's FNV-1a) is required: an entry without one is a miss.
    let bytes = envelope::encode_scoped(
        &by_hand,
        Some(key_fingerprint(&key)),
        None,
        br#"{"name":"ada"}"#,
        Compression::None,
    );
    store
        .set(&key, Bytes::from(bytes), Duration::from_secs(60))
        .await
        .unwrap();
    let got = cache.get(&7).await.unwrap().expect("read");
    assert_eq!(got["name"], "ada");
    // In L1 now; a `k` message from another sender drops it.
    cache
        .set_with(
            &8,
            json!({"name": "bob"}),
            &WriteOptions::default().tags(["team:x"]),
        )
        .await
        .unwrap();
    let channel = "herdwise:{ns:users}:inv";
    let send = |text: String| {
        let store = store.clone();
        async move { store.publish(channel, Bytes::from(text)).await.unwrap() }
    };
    store.delete(&key).await.unwrap(); // as the foreign writer's DEL would
    assert!(cache.get(&7).await.unwrap().is_some(), "L1 still has it");
    send(format!("1f2e3d4c|1@{now}|k|{key}")).await;
    let dropped = eventually(async || cache.get(&7).await.unwrap().is_none()).await;
    assert!(dropped, "a k message drops the key from L1");
}

async fn eventually(mut check: impl AsyncFnMut() -> bool) -> bool {
    for _ in 0..100 {
        if check().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    false
}
