//! Conditional requests (RFC 9110 §13, RFC 9111 §4.3): answering a client's conditional request
//! from a stored response, building the validation request to the origin, and updating a
//! stored response from a `304 Not Modified` (§4.3.4, §3.2).
//!
//! Contract: pure functions over header maps. Entity tags are compared weakly for
//! `If-None-Match` (§13.1.2) and strongly for `If-Range`/`If-Match`.

use http::{HeaderMap, HeaderName, HeaderValue, Method};

use super::freshness::http_date;

/// One entity tag: `W/"x"` or `"x"`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ETag<'a> {
    /// Weak (`W/`).
    pub weak: bool,
    /// The opaque tag, quotes included.
    pub opaque: &'a str,
}

/// Parses one entity tag (`None` if malformed).
pub fn parse_etag(value: &str) -> Option<ETag<'_>> {
    let v = value.trim();
    let (weak, rest) = match v.strip_prefix("W/") {
        Some(rest) => (true, rest),
        None => (false, v),
    };
    (rest.len() >= 2 && rest.starts_with('"') && rest.ends_with('"'))
        .then_some(ETag { weak, opaque: rest })
}

/// A list of entity tags, or `*`.
fn etag_list(value: &str) -> (bool, Vec<ETag<'_>>) {
    if value.trim() == "*" {
        return (true, Vec::new());
    }
    let mut out = Vec::new();
    // Entity tags may contain commas inside quotes.
    let mut rest = value;
    while let Some(start) = rest.find('"') {
        let before = &rest[..start];
        let weak = before.trim_end().ends_with("W/");
        let after = &rest[start + 1..];
        let Some(end) = after.find('"') else { break };
        let opaque = &rest[start..start + end + 2];
        out.push(ETag { weak, opaque });
        rest = &after[end + 1..];
    }
    (false, out)
}

/// Whether the stored response matches a client's `If-None-Match` (weak comparison).
fn none_match(stored: &HeaderMap, value: &str) -> bool {
    let (any, tags) = etag_list(value);
    let Some(etag) = stored
        .get(http::header::ETAG)
        .and_then(|v| v.to_str().ok())
        .and_then(parse_etag)
    else {
        // `*` matches any current representation; a tag list cannot match one without a tag.
        return any;
    };
    any || tags.iter().any(|t| t.opaque == etag.opaque)
}

/// What a client's conditional request gets from a stored response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Precondition {
    /// Serve the response normally.
    Serve,
    /// `304 Not Modified`.
    NotModified,
}

/// Evaluates `If-None-Match` and (without it) `If-Modified-Since` of a GET/HEAD request against
/// a stored response (RFC 9110 §13.2.2, steps 3-4; a shared cache evaluates them for
/// responses it serves, RFC 9111 §4.3.2).
pub fn evaluate(method: &Method, request: &HeaderMap, stored: &HeaderMap) -> Precondition {
    if method != Method::GET && method != Method::HEAD {
        return Precondition::Serve;
    }
    if let Some(inm) = joined(request, &http::header::IF_NONE_MATCH) {
        return if none_match(stored, &inm) {
            Precondition::NotModified
        } else {
            Precondition::Serve
        };
    }
    if let Some(since) = http_date(request, http::header::IF_MODIFIED_SINCE) {
        // The stored Last-Modified, else its Date (§4.3.2: "... or the Date").
        let modified = http_date(stored, http::header::LAST_MODIFIED)
            .or_else(|| http_date(stored, http::header::DATE));
        if modified.is_some_and(|m| m <= since) {
            return Precondition::NotModified;
        }
    }
    Precondition::Serve
}

fn joined(headers: &HeaderMap, name: &HeaderName) -> Option<String> {
    super::directives::joined(headers, name)
}

/// The validators to send to the origin for a stored response (§4.3.1): its ETag as
/// `If-None-Match`, its Last-Modified as `If-Modified-Since`.
pub fn validators(stored: &HeaderMap) -> Vec<(HeaderName, HeaderValue)> {
    let mut out = Vec::new();
    if let Some(etag) = stored.get(http::header::ETAG) {
        out.push((http::header::IF_NONE_MATCH, etag.clone()));
    }
    if let Some(lm) = stored.get(http::header::LAST_MODIFIED) {
        out.push((http::header::IF_MODIFIED_SINCE, lm.clone()));
    }
    out
}

/// Whether a 304 to this cache's conditional request selects the stored response whose
/// validators it sent (§4.3.3, §4.3.4): its ETag matches, or (without one in the 304) its
/// Last-Modified does; a 304 with no validator at all is about the one response validated
/// (this cache sends one stored response's validators per request).
pub fn selects(stored: &HeaderMap, not_modified: &HeaderMap) -> bool {
    let tag = |h: &HeaderMap| {
        h.get(http::header::ETAG)
            .and_then(|v| v.to_str().ok())
            .map(|s| s.trim().to_string())
    };
    match (tag(not_modified), tag(stored)) {
        (Some(new), Some(old)) => {
            // Weak comparison suffices to select (§4.3.4 uses the strong validator when
            // present; a weak match still selects the one stored response we have).
            new.trim_start_matches("W/") == old.trim_start_matches("W/")
        }
        (Some(_), None) => false,
        // No ETag in the 304: Last-Modified must match if it has one; with neither, it is
        // about the response validated.
        (None, _) => match (
            not_modified.get(http::header::LAST_MODIFIED),
            stored.get(http::header::LAST_MODIFIED),
        ) {
            (Some(a), Some(b)) => a == b,
            (Some(_), None) => false,
            (None, _) => true,
        },
    }
}

/// Fields a 304 never replaces in the stored response (§3.2: Content-Length and the fields
/// the stored body depends on; hop-by-hop fields are never stored at all).
const KEEP: [HeaderName; 4] = [
    http::header::CONTENT_LENGTH,
    http::header::CONTENT_ENCODING,
    http::header::CONTENT_RANGE,
    http::header::TRANSFER_ENCODING,
];

/// Fields of a 304 never merged into a shared entry: one client's cookie, and `Age` (the
/// stored response's times are reset by the validation; an `Age` the 304 carries is added
/// back explicitly).
const NEVER_MERGED: [HeaderName; 2] = [http::header::SET_COOKIE, http::header::AGE];

/// Updates stored header fields from a 304's (§3.2, §4.3.4): each field in the 304 replaces the
/// stored field of that name — except those the body depends on, hop-by-hop ones, `Set-Cookie`
/// and `except` (fields a qualified `private`/`no-cache` names). The stored `Age` is replaced
/// by the 304's (or dropped): the validation is the response's new receipt.
pub fn freshen(stored: &mut HeaderMap, not_modified: &HeaderMap, except: &[String]) {
    stored.remove(http::header::AGE);
    if let Some(age) = not_modified.get(http::header::AGE) {
        stored.insert(http::header::AGE, age.clone());
    }
    let mut names: Vec<&HeaderName> = not_modified.keys().collect();
    names.dedup();
    for name in names {
        if KEEP.contains(name)
            || NEVER_MERGED.contains(name)
            || except.iter().any(|f| f == name.as_str())
            || super::hop::is_hop_by_hop(name, not_modified)
        {
            continue;
        }
        stored.remove(name);
        for v in not_modified.get_all(name) {
            stored.append(name.clone(), v.clone());
        }
    }
}

/// Whether `If-Range` allows a range to be served from `stored` (RFC 9110 §13.1.5): a strong
/// ETag equal to the stored one, or a date equal to its Last-Modified.
pub fn if_range_holds(request: &HeaderMap, stored: &HeaderMap) -> bool {
    let Some(value) = request
        .get(http::header::IF_RANGE)
        .and_then(|v| v.to_str().ok())
    else {
        return true;
    };
    if let Some(tag) = parse_etag(value) {
        let stored_tag = stored
            .get(http::header::ETAG)
            .and_then(|v| v.to_str().ok())
            .and_then(parse_etag);
        return !tag.weak && stored_tag.is_some_and(|s| !s.weak && s.opaque == tag.opaque);
    }
    match (
        httpdate::parse_http_date(value.trim()).ok(),
        stored
            .get(http::header::LAST_MODIFIED)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| httpdate::parse_http_date(v.trim()).ok()),
    ) {
        (Some(a), Some(b)) => a == b,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut m = HeaderMap::new();
        for (k, v) in pairs {
            m.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        m
    }

    #[test]
    fn if_none_match_is_weak_and_takes_lists() {
        let stored = h(&[("etag", "W/\"a,b\"")]);
        let get = Method::GET;
        assert_eq!(
            evaluate(&get, &h(&[("if-none-match", "\"x\", \"a,b\"")]), &stored),
            Precondition::NotModified
        );
        assert_eq!(
            evaluate(&get, &h(&[("if-none-match", "*")]), &stored),
            Precondition::NotModified
        );
        assert_eq!(
            evaluate(&get, &h(&[("if-none-match", "\"z\"")]), &stored),
            Precondition::Serve
        );
        assert_eq!(
            evaluate(&Method::POST, &h(&[("if-none-match", "*")]), &stored),
            Precondition::Serve
        );
    }

    #[test]
    fn if_modified_since_only_without_if_none_match() {
        let stored = h(&[
            ("last-modified", "Mon, 01 Jan 2024 00:00:00 GMT"),
            ("etag", "\"v1\""),
        ]);
        let later = h(&[("if-modified-since", "Tue, 02 Jan 2024 00:00:00 GMT")]);
        assert_eq!(
            evaluate(&Method::GET, &later, &stored),
            Precondition::NotModified
        );
        let both = h(&[
            ("if-modified-since", "Tue, 02 Jan 2024 00:00:00 GMT"),
            ("if-none-match", "\"v2\""),
        ]);
        assert_eq!(evaluate(&Method::GET, &both, &stored), Precondition::Serve);
    }

    #[test]
    fn a_304_freshens_all_but_what_the_body_depends_on() {
        let mut stored = h(&[
            ("content-length", "5"),
            ("x-a", "1"),
            ("cache-control", "max-age=1"),
        ]);
        freshen(
            &mut stored,
            &h(&[
                ("content-length", "0"),
                ("x-a", "2"),
                ("cache-control", "max-age=9"),
                ("set-cookie", "sid=1"),
                ("x-private", "p"),
                ("age", "7"),
            ]),
            &["x-private".to_string()],
        );
        assert!(stored.get("set-cookie").is_none() && stored.get("x-private").is_none());
        assert_eq!(stored.get("age").unwrap(), "7");
        assert_eq!(stored.get("content-length").unwrap(), "5");
        assert_eq!(stored.get("x-a").unwrap(), "2");
        assert_eq!(stored.get("cache-control").unwrap(), "max-age=9");
    }
}
