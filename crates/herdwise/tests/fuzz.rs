//! Fuzz targets for what reads untrusted bytes or builds stored keys: envelope decoding (header,
//! tag block, compression), and key encoding. Each target is a proptest strategy run by
//! [`fuzz`]: a short run from a fixed seed in the test command, or, with
//! `HERDWISE_FUZZ_SECS=<n>`, fresh seeds for `n` seconds (the long runs the README lists:
//! `HERDWISE_FUZZ_SECS=600 cargo test --release -p herdwise --test fuzz -- --test-threads 1`).
//! Bytes that look like an envelope get a correct length and checksum, so the decoder's inner
//! layers (tag block, decompression) are reached rather than stopped at the checksum.

use std::time::{Duration, Instant};

use herdwise::envelope::{self, Compression, Meta, TagStamp, HEADER_LEN};
use proptest::prelude::*;
use proptest::test_runner::{Config, RngAlgorithm, TestRng, TestRunner};

/// Runs `check` over `strategy`: 2 000 cases from a fixed seed, or fresh seeds for
/// `HERDWISE_FUZZ_SECS` seconds. Returns the cases run.
fn fuzz<S: Strategy>(name: &str, strategy: S, check: impl Fn(S::Value) + Clone) -> u64
where
    S::Value: std::fmt::Debug,
{
    let seconds: u64 = std::env::var("HERDWISE_FUZZ_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let config = Config {
        cases: 2_000,
        failure_persistence: None,
        ..Config::default()
    };
    let mut cases = 0;
    let run = |runner: &mut TestRunner| {
        let check = check.clone();
        runner
            .run(&strategy, move |value| {
                check(value);
                Ok(())
            })
            .unwrap_or_else(|e| panic!("{name}: {e}"));
    };
    if seconds == 0 {
        let seed = [7u8; 32];
        let rng = TestRng::from_seed(RngAlgorithm::ChaCha, &seed);
        run(&mut TestRunner::new_with_rng(config.clone(), rng));
        cases += u64::from(config.cases);
    } else {
        let deadline = Instant::now() + Duration::from_secs(seconds);
        while Instant::now() < deadline {
            run(&mut TestRunner::new(config.clone()));
            cases += u64::from(config.cases);
        }
        eprintln!("{name}: {cases} cases in {seconds} s, clean");
    }
    cases
}

fn meta() -> impl Strategy<Value = Meta> {
    (
        any::<u64>(),
        any::<u64>(),
        any::<u64>(),
        any::<u64>(),
        0u64..1_000_000,
        any::<bool>(),
        any::<bool>(),
        any::<u8>(),
    )
        .prop_map(|(c, f, s, v, d, n, sc, codec)| {
            let mut times = [c, f, s];
            times.sort_unstable();
            (times, v, d, n, sc, codec)
        })
        .prop_map(|([c, f, s], v, d, n, sc, codec)| Meta {
            created_at_ms: c,
            fresh_until_ms: f,
            stale_until_ms: s,
            version: v,
            load_duration: Duration::from_micros(d),
            negative: n,
            stale_copy: sc,
            codec_id: codec,
        })
}

fn tags() -> impl Strategy<Value = Option<TagStamp>> {
    proptest::option::of(
        (
            any::<u64>(),
            proptest::collection::vec("[a-z:0-9]{1,20}", 1..8),
        )
            .prop_map(|(clock, tags)| TagStamp {
                clock,
                tags: tags.into_iter().map(Box::from).collect(),
            }),
    )
}

/// A valid envelope (meta, tags, payload, compressed or not).
fn valid_envelope() -> impl Strategy<Value = (Meta, Option<TagStamp>, Vec<u8>, Vec<u8>)> {
    (
        meta(),
        tags(),
        proptest::collection::vec(any::<u8>(), 0..600),
        any::<bool>(),
    )
        .prop_map(|(mut meta, tags, payload, compress)| {
            let payload = if meta.negative { Vec::new() } else { payload };
            if payload.is_empty() {
                meta.negative = meta.negative || payload.is_empty();
            }
            let compression = if compress {
                Compression::Lz4 { min_bytes: 1 }
            } else {
                Compression::None
            };
            let bytes = envelope::encode_tagged(&meta, tags.as_ref(), &payload, compression);
            (meta, tags, payload, bytes)
        })
}

/// Rewrites the body length and checksum of `bytes` (if it has a header) so they are right.
fn reseal(bytes: &mut [u8]) {
    if bytes.len() < HEADER_LEN {
        return;
    }
    let body_len = (bytes.len() - HEADER_LEN) as u32;
    bytes[44..48].copy_from_slice(&body_len.to_be_bytes());
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&bytes[..48]);
    hasher.update(&bytes[HEADER_LEN..]);
    let crc = hasher.finalize();
    bytes[48..52].copy_from_slice(&crc.to_be_bytes());
}

#[test]
fn fuzz_envelope_decoding_never_panics_on_arbitrary_bytes() {
    fuzz(
        "envelope/arbitrary",
        proptest::collection::vec(any::<u8>(), 0..700),
        |bytes| {
            let _ = envelope::decode(&bytes, 4 << 20);
            let _ = envelope::decode_meta(&bytes);
        },
    );
}

#[test]
fn fuzz_envelope_decoding_never_panics_on_mutated_envelopes_and_round_trips_valid_ones() {
    let mutations = proptest::collection::vec((any::<usize>(), any::<u8>()), 0..8);
    let cut = proptest::option::of(any::<usize>());
    fuzz(
        "envelope/mutated",
        (valid_envelope(), mutations, cut, any::<bool>()),
        |((meta, tags, payload, bytes), mutations, cut, reseal_it)| {
            let decoded = envelope::decode(&bytes, 4 << 20).expect("a valid envelope decodes");
            assert_eq!(decoded.meta, meta);
            assert_eq!(decoded.tags.as_ref(), tags.as_ref());
            assert_eq!(&*decoded.payload, &payload[..]);
            let mut bad = bytes.clone();
            for (at, byte) in &mutations {
                let i = at % bad.len();
                // Keep the magic most of the time, so that the rest gets looked at.
                if i >= 2 {
                    bad[i] = *byte;
                }
            }
            if let Some(cut) = cut {
                bad.truncate(cut % (bad.len() + 1));
            }
            if reseal_it {
                reseal(&mut bad);
            }
            let _ = envelope::decode(&bad, 4 << 20);
            // A small payload limit must be an error, never a panic or a huge allocation.
            let _ = envelope::decode(&bad, 16);
        },
    );
}

#[test]
fn fuzz_tag_blocks_behind_a_correct_checksum_never_panic() {
    // A real header with the tagged and compressed flags set at random, then any body.
    let body = proptest::collection::vec(any::<u8>(), 0..400);
    fuzz(
        "envelope/tag-block",
        (meta(), body, 0u8..16),
        |(meta, body, flags)| {
            let mut bytes = envelope::encode(&meta, &[], Compression::None);
            bytes.truncate(HEADER_LEN);
            bytes[3] = flags;
            bytes.extend_from_slice(&body);
            reseal(&mut bytes);
            let _ = envelope::decode(&bytes, 4 << 20);
        },
    );
}

#[test]
fn fuzz_composite_keys_are_injective() {
    let part = || "[a-z:%{}|\\\\ 0-9\u{e9}]{0,6}";
    fuzz(
        "keys/injective",
        ((part(), part()), (part(), part()), (any::<u64>(), part())),
        |(a, b, (n, s))| {
            let (ea, eb) = (herdwise::encode_key(&a), herdwise::encode_key(&b));
            if let (Ok(ea), Ok(eb)) = (&ea, &eb) {
                assert_eq!(a == b, ea == eb, "{a:?} / {b:?} encode to {ea:?} / {eb:?}");
                assert!(
                    !ea.contains('{') && !ea.contains('}'),
                    "no hash tag in {ea:?}"
                );
            }
            // One component vs two never collide either.
            let joined = format!("{}:{}", a.0, a.1);
            if let (Ok(one), Ok(two)) = (herdwise::encode_key(joined.as_str()), &ea) {
                assert_ne!(&one, two, "{joined:?} collides with {a:?}");
            }
            let _ = herdwise::encode_key(&(n, s.as_str()));
        },
    );
}
