//! Cache keys (the primary key of RFC 9111 §2 and the secondary keys of §4.1).
//!
//! Contract: [`primary`] is the only way a request becomes a key: `scheme://host/path?query`
//! with the host lower-cased and its default port dropped, the path's percent-encoding
//! normalised (hex upper-cased, unreserved characters decoded: RFC 3986 §6.2.2), and the query
//! kept as sent (its order can matter to the origin). The method is not part of it: GET and
//! HEAD share the entry, other methods are not cached. A variant's key is the primary key,
//! `#v=`, and a 64-bit hash of its selector (the selector is stored in the entry and compared
//! on reuse, so a hash collision is a miss, never the wrong variant). Request header fields
//! other than Host and those a response's Vary names never reach a key (unkeyed-header
//! poisoning needs them to).

/// FNV-1a, 64-bit: stable across processes and machines (keys are shared through Redis).
pub fn fnv64(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

fn unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

/// The path with percent-encoding normalised (RFC 3986 §6.2.2.1-2).
pub fn normalise_path(path: &str) -> String {
    let mut out = String::with_capacity(path.len());
    push_path(&mut out, path);
    out
}

/// Appends `path`, normalised as [`normalise_path`] does.
fn push_path(out: &mut String, path: &str) {
    if path.is_empty() {
        out.push('/');
        return;
    }
    if !path.contains('%') {
        // Nothing to normalise (the common case): copied as is.
        out.push_str(path);
        return;
    }
    let bytes = path.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            let hex = path.get(i + 1..i + 3).unwrap_or("");
            if let Ok(v) = u8::from_str_radix(hex, 16) {
                if unreserved(v) {
                    out.push(v as char);
                } else {
                    out.push('%');
                    out.push_str(&hex.to_ascii_uppercase());
                }
                i += 3;
                continue;
            }
        }
        // (`http::Uri` paths are ASCII; anything else is copied as is.)
        let ch_end = (i + 1..=bytes.len())
            .find(|&e| path.is_char_boundary(e))
            .unwrap_or(bytes.len());
        out.push_str(&path[i..ch_end]);
        i = ch_end;
    }
}

/// The host as keyed: lower-case, without the scheme's default port.
pub fn normalise_host(host: &str, https: bool) -> String {
    let mut out = String::with_capacity(host.len());
    push_host(&mut out, host, https);
    out
}

/// Appends `host`, normalised as [`normalise_host`] does.
fn push_host(out: &mut String, host: &str, https: bool) {
    let host = host.trim();
    let default = if https { ":443" } else { ":80" };
    let host = match host.len().checked_sub(default.len()) {
        Some(cut) if host.is_char_boundary(cut) && host[cut..].eq_ignore_ascii_case(default) => {
            &host[..cut]
        }
        _ => host,
    };
    let start = out.len();
    out.push_str(host);
    out[start..].make_ascii_lowercase();
}

/// The primary key of a request for `host` (already checked against the configured origins).
pub fn primary(https: bool, host: &str, path_and_query: &str) -> String {
    let (path, query) = match path_and_query.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (path_and_query, None),
    };
    let scheme = if https { "https://" } else { "http://" };
    let mut key = String::with_capacity(scheme.len() + host.len() + path_and_query.len() + 1);
    key.push_str(scheme);
    push_host(&mut key, host, https);
    push_path(&mut key, path);
    if let Some(q) = query {
        key.push('?');
        key.push_str(q);
    }
    key
}

/// A variant's key.
pub fn variant(primary: &str, selector: &str) -> String {
    format!("{primary}#v={:016x}", fnv64(selector.as_bytes()))
}

/// The tag every entry of a URL (its variants included) carries, for purging the URL.
pub fn url_tag(primary: &str) -> String {
    format!("url:{:016x}", fnv64(primary.as_bytes()))
}

/// A surrogate key as a tag: as given if it fits the library's tag rules (1-128 bytes, no
/// control characters), else `sk:` and a hash (the same mapping is used to purge it).
pub fn surrogate_tag(key: &str) -> String {
    let key = key.trim();
    if !key.is_empty() && key.len() <= 120 && !key.chars().any(char::is_control) {
        format!("s:{key}")
    } else {
        format!("sk:{:016x}", fnv64(key.as_bytes()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equivalent_requests_share_a_key() {
        assert_eq!(
            primary(false, "Example.COM:80", "/a%7eb%2f?x=1"),
            "http://example.com/a~b%2F?x=1"
        );
        assert_eq!(primary(true, "h:443", ""), "https://h/");
        assert_ne!(
            primary(false, "h", "/a?x=1&y=2"),
            primary(false, "h", "/a?y=2&x=1")
        );
        assert_eq!(normalise_path("/%zz%4"), "/%zz%4");
        assert_eq!(
            primary(false, " H.Test:8080 ", "/Plain/path"),
            "http://h.test:8080/Plain/path"
        );
        assert_eq!(normalise_host("h:80", true), "h:80");
        assert_ne!(variant("k", "a"), variant("k", "b"));
        assert!(surrogate_tag(&"x".repeat(500)).starts_with("sk:"));
        assert_eq!(surrogate_tag(" product-1 "), "s:product-1");
    }
}
