//! What the proxy stores for a URL: a response (status, the stored header fields, the body,
//! and the times the age calculation needs), a note that the URL's responses vary (and on
//! which request fields), or a "pass" note (the origin's last answer was not storable).
//!
//! Contract: [`EntryCodec`] is the only way these bytes are made and read. Its layout is
//! versioned (first byte); any other first byte, a truncated buffer or an invalid header name or
//! value is a decode error, which the cache counts as a miss (never a panic). A stored response
//! is shared (`Arc`) and never changed once it is an entry: what judging it needs is derived
//! from its fields once ([`StoredResponse::judged`]), not on every hit; a clone (made to be
//! changed, e.g. freshened by a 304) starts without it.

use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use herdwise::{Codec, CodecError};
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};

use crate::semantics::directives::ResponseDirectives;

/// What judging and serving a stored response needs, derived once from its fields by the
/// proxy's rules (`handler::Rules`).
#[derive(Debug)]
pub struct Judgement {
    /// Its Cache-Control (the targeted field first, RFC 9213).
    pub cc: ResponseDirectives,
    /// Freshness lifetime, seconds (0: none).
    pub lifetime: u64,
    /// Corrected initial age, seconds (RFC 9111 §4.2.3).
    pub initial_age: u64,
    /// The header fields a client is given (this cache's own controls removed), before `Age`.
    pub served: HeaderMap,
}

/// A [`Judgement`], computed on first use. Equal to any other (it is derived, not data); a clone
/// starts empty, so a changed clone is judged again.
#[derive(Default)]
pub struct Memo(OnceLock<Judgement>);

impl Clone for Memo {
    fn clone(&self) -> Self {
        Memo::default()
    }
}

impl PartialEq for Memo {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl std::fmt::Debug for Memo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.get().is_some() {
            "Memo(judged)"
        } else {
            "Memo(empty)"
        })
    }
}

/// A stored response.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredResponse {
    /// Status code.
    pub status: StatusCode,
    /// Stored header fields (hop-by-hop fields and those the origin kept from shared caches
    /// removed).
    pub headers: HeaderMap,
    /// The whole body.
    pub body: Bytes,
    /// When the request that produced it was sent (unix ms), RFC 9111 §4.2.3 `request_time`.
    pub request_time_ms: u64,
    /// When the response was received (unix ms), `response_time`.
    pub response_time_ms: u64,
    /// For a variant: the normalised values of the Vary-selected request fields it was stored
    /// for (checked again on reuse, so a hash collision of variant keys cannot serve it).
    pub variant: Option<String>,
    /// Surrogate keys (tags) the entry carries, already normalised.
    pub tags: Vec<String>,
    /// Its [`Judgement`] once made (`Memo::default()` when building one).
    pub memo: Memo,
}

impl StoredResponse {
    /// Its judgement: made by `judge` on first use, then kept. Change a response only before
    /// it is first judged (or change a clone).
    pub fn judged(&self, judge: impl FnOnce(&StoredResponse) -> Judgement) -> &Judgement {
        self.memo.0.get_or_init(|| judge(self))
    }
}

/// One stored entry.
#[derive(Debug, Clone, PartialEq)]
pub enum Entry {
    /// A response (shared: hits take a reference, not a copy).
    Response(Arc<StoredResponse>),
    /// Responses for this URL vary on these request fields (lower-case, in the order the
    /// origin listed them); each variant is stored under its own key.
    Vary(Vec<String>),
    /// The origin's last answer could not be stored: requests go straight to the origin for a
    /// while, without waiting on each other (Varnish's "hit-for-miss").
    Pass,
}

/// Layout version of [`EntryCodec`].
const FORMAT: u8 = 1;

/// The binary codec of [`Entry`] (codec id 32): `format, kind, ...` with length-prefixed
/// fields (u32 big-endian lengths).
#[derive(Debug, Clone, Copy, Default)]
pub struct EntryCodec;

fn put_bytes(out: &mut Vec<u8>, b: &[u8]) {
    out.extend_from_slice(&(b.len() as u32).to_be_bytes());
    out.extend_from_slice(b);
}

struct Reader<'a> {
    buf: &'a [u8],
}

fn bad(what: &str) -> CodecError {
    CodecError::new("herdwise-proxy entry", what)
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], CodecError> {
        if self.buf.len() < n {
            return Err(bad("truncated"));
        }
        let (head, rest) = self.buf.split_at(n);
        self.buf = rest;
        Ok(head)
    }
    fn u8(&mut self) -> Result<u8, CodecError> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16, CodecError> {
        let b = self.take(2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }
    fn u32(&mut self) -> Result<u32, CodecError> {
        let b = self.take(4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn u64(&mut self) -> Result<u64, CodecError> {
        let b = self.take(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_be_bytes(a))
    }
    fn bytes(&mut self) -> Result<&'a [u8], CodecError> {
        let n = self.u32()? as usize;
        self.take(n)
    }
    fn string(&mut self) -> Result<String, CodecError> {
        String::from_utf8(self.bytes()?.to_vec()).map_err(|_| bad("invalid utf-8"))
    }
}

impl Codec<Entry> for EntryCodec {
    fn id(&self) -> u8 {
        32
    }

    fn encode(&self, value: &Entry) -> Result<Vec<u8>, CodecError> {
        let mut out = Vec::new();
        out.push(FORMAT);
        match value {
            Entry::Pass => out.push(0),
            Entry::Vary(fields) => {
                out.push(1);
                out.extend_from_slice(&(fields.len() as u32).to_be_bytes());
                for f in fields {
                    put_bytes(&mut out, f.as_bytes());
                }
            }
            Entry::Response(r) => {
                out.reserve(r.body.len() + 64 + r.headers.len() * 32);
                out.push(2);
                out.extend_from_slice(&r.status.as_u16().to_be_bytes());
                out.extend_from_slice(&r.request_time_ms.to_be_bytes());
                out.extend_from_slice(&r.response_time_ms.to_be_bytes());
                match &r.variant {
                    Some(v) => {
                        out.push(1);
                        put_bytes(&mut out, v.as_bytes());
                    }
                    None => out.push(0),
                }
                out.extend_from_slice(&(r.tags.len() as u32).to_be_bytes());
                for t in &r.tags {
                    put_bytes(&mut out, t.as_bytes());
                }
                out.extend_from_slice(&(r.headers.len() as u32).to_be_bytes());
                for (name, value) in &r.headers {
                    put_bytes(&mut out, name.as_str().as_bytes());
                    put_bytes(&mut out, value.as_bytes());
                }
                put_bytes(&mut out, &r.body);
            }
        }
        Ok(out)
    }

    fn decode(&self, bytes: &[u8]) -> Result<Entry, CodecError> {
        let mut r = Reader { buf: bytes };
        if r.u8()? != FORMAT {
            return Err(bad("unknown format"));
        }
        let entry = match r.u8()? {
            0 => Entry::Pass,
            1 => {
                let n = r.u32()? as usize;
                let mut fields = Vec::with_capacity(n.min(64));
                for _ in 0..n {
                    fields.push(r.string()?);
                }
                Entry::Vary(fields)
            }
            2 => {
                let status = StatusCode::from_u16(r.u16()?).map_err(|_| bad("status"))?;
                let request_time_ms = r.u64()?;
                let response_time_ms = r.u64()?;
                let variant = match r.u8()? {
                    0 => None,
                    _ => Some(r.string()?),
                };
                let n = r.u32()? as usize;
                let mut tags = Vec::with_capacity(n.min(64));
                for _ in 0..n {
                    tags.push(r.string()?);
                }
                let n = r.u32()? as usize;
                let mut headers = HeaderMap::with_capacity(n.min(256));
                for _ in 0..n {
                    let name =
                        HeaderName::from_bytes(r.bytes()?).map_err(|_| bad("header name"))?;
                    let value =
                        HeaderValue::from_bytes(r.bytes()?).map_err(|_| bad("header value"))?;
                    headers.append(name, value);
                }
                let body = Bytes::copy_from_slice(r.bytes()?);
                Entry::Response(Arc::new(StoredResponse {
                    status,
                    headers,
                    body,
                    request_time_ms,
                    response_time_ms,
                    variant,
                    tags,
                    memo: Memo::default(),
                }))
            }
            _ => return Err(bad("unknown kind")),
        };
        if !r.buf.is_empty() {
            return Err(bad("trailing bytes"));
        }
        Ok(entry)
    }
}

/// Rough in-memory size of an entry (for the L1 weigher).
pub fn weight(entry: &Entry) -> usize {
    match entry {
        Entry::Pass => 16,
        Entry::Vary(f) => 16 + f.iter().map(|s| s.len() + 24).sum::<usize>(),
        Entry::Response(r) => {
            // The header fields twice: stored, and the served copy its judgement keeps.
            256 + r.body.len()
                + 2 * r
                    .headers
                    .iter()
                    .map(|(n, v)| n.as_str().len() + v.len() + 48)
                    .sum::<usize>()
                + r.tags.iter().map(|t| t.len() + 24).sum::<usize>()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_refuses_garbage() {
        let mut headers = HeaderMap::new();
        headers.insert("content-type", HeaderValue::from_static("text/plain"));
        headers.append("x-a", HeaderValue::from_static("1"));
        headers.append("x-a", HeaderValue::from_static("2"));
        let e = Entry::Response(Arc::new(StoredResponse {
            status: StatusCode::OK,
            headers,
            body: Bytes::from_static(b"hello"),
            request_time_ms: 1,
            response_time_ms: 2,
            variant: Some("gzip".into()),
            tags: vec!["t1".into()],
            memo: Memo::default(),
        }));
        let bytes = EntryCodec.encode(&e).unwrap();
        assert_eq!(EntryCodec.decode(&bytes).unwrap(), e);
        for cut in 0..bytes.len() {
            assert!(EntryCodec.decode(&bytes[..cut]).is_err(), "cut at {cut}");
        }
        let v = Entry::Vary(vec!["accept-encoding".into()]);
        assert_eq!(
            EntryCodec.decode(&EntryCodec.encode(&v).unwrap()).unwrap(),
            v
        );
        assert!(EntryCodec.decode(&[9, 9, 9]).is_err());
        assert!(EntryCodec.decode(&[FORMAT, 2, 0, 1]).is_err());
    }
}
