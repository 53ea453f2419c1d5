#!/usr/bin/env python3
"""A second, independent reader of docs/spec/vectors.json (standard library only): decodes
every envelope as docs/spec/README.md describes it, checks its CRC-32, scope, tags and
payload against the vector's decoded fields, and recomputes the key fingerprints and the
long-tag digest. Run by scripts/test; the Rust side is crates/herdwise/tests/spec_vectors.rs."""
import hashlib
import json
import struct
import sys
import zlib
from pathlib import Path

FLAG_NEGATIVE, FLAG_COMPRESSED, FLAG_STALE_COPY, FLAG_TAGGED, FLAG_SCOPED = 1, 2, 4, 8, 16


def fnv1a64(text: str) -> int:
    h = 0xCBF29CE484222325
    for byte in text.encode():
        h = ((h ^ byte) * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return h


def stored_tag(tag: str) -> str:
    raw = tag.encode()
    if len(raw) <= 128 and not tag.startswith("sha256:"):
        return tag
    return "sha256:" + hashlib.sha256(raw).hexdigest()[:32]


def decode(blob: bytes) -> dict:
    if len(blob) < 52 or blob[:2] != b"HW" or blob[2] != 1:
        raise ValueError("not a format-1 envelope")
    flags, codec = blob[3], blob[4]
    created, fresh, stale, version = struct.unpack(">QQQQ", blob[8:40])
    load_us, body_len, crc = struct.unpack(">III", blob[40:52])
    body = blob[52:]
    if len(body) != body_len or zlib.crc32(blob[:48] + body) != crc:
        raise ValueError("length or checksum mismatch")
    at, scope, clock, tags = 0, None, None, None
    if flags & FLAG_SCOPED:
        (scope,) = struct.unpack(">Q", body[:8])
        at = 8
    if flags & FLAG_TAGGED:
        (clock,) = struct.unpack(">Q", body[at : at + 8])
        count, at, tags = body[at + 8], at + 9, []
        for _ in range(count):
            length = body[at]
            tags.append(body[at + 1 : at + 1 + length].decode())
            at += 1 + length
    payload = body[at:]
    if flags & FLAG_COMPRESSED:
        (raw_len,) = struct.unpack(">I", payload[:4])
        payload = None  # an lz4 block of raw_len bytes (decoding needs an lz4 library)
    return {
        "created_at_ms": created,
        "fresh_until_ms": fresh,
        "stale_until_ms": stale,
        "version": version,
        "load_duration_us": load_us,
        "negative": bool(flags & FLAG_NEGATIVE),
        "codec_id": codec,
        "scope": scope,
        "tag_clock": clock,
        "tags": tags,
        "payload_utf8": None if payload is None else payload.decode(),
    }


def main() -> int:
    path = Path(__file__).with_name("vectors.json")
    vectors = json.loads(path.read_text())
    for envelope in vectors["envelopes"]:
        got = decode(bytes.fromhex(envelope["hex"]))
        want = dict(envelope["decoded"])
        if got["payload_utf8"] is None:
            want["payload_utf8"] = None
        if got != want:
            print(f"{envelope['name']}: decoded {got}, vector says {want}")
            return 1
    for case in vectors["key_fingerprints"]:
        if f"{fnv1a64(case['key']):016x}" != case["fnv1a64"]:
            print(f"fingerprint of {case['key']!r} differs")
            return 1
    if stored_tag("a" * 129) != vectors["tags"][1]["stored"]:
        print("long-tag digest differs")
        return 1
    print(f"docs/spec/vectors.json: {len(vectors['envelopes'])} envelopes decoded by Python")
    return 0


if __name__ == "__main__":
    sys.exit(main())
