//! Hop-by-hop fields (RFC 9110 §7.6.1) and fields a cache never stores (RFC 9111 §3.1).
//!
//! Contract: [`is_hop_by_hop`] names the fields that apply to one connection only (the fixed
//! set and those listed in `Connection`); [`strip`] removes them from a map.

use http::{HeaderMap, HeaderName};

const FIXED: [&str; 9] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "transfer-encoding",
    "upgrade",
    "trailer",
    "proxy-authenticate",
    "proxy-authorization",
];

/// Whether `name` is hop-by-hop in a message with these `headers`.
pub fn is_hop_by_hop(name: &HeaderName, headers: &HeaderMap) -> bool {
    if FIXED.contains(&name.as_str()) {
        return true;
    }
    headers
        .get_all(http::header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|token| token.trim().eq_ignore_ascii_case(name.as_str()))
}

/// Removes every hop-by-hop field.
pub fn strip(headers: &mut HeaderMap) {
    let listed: Vec<String> = headers
        .get_all(http::header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|t| t.trim().to_ascii_lowercase())
        .filter(|t| !t.is_empty())
        .collect();
    for name in FIXED.iter().map(|s| s.to_string()).chain(listed) {
        headers.remove(name.as_str());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connection_listed_fields_go_too() {
        let mut h = HeaderMap::new();
        h.insert("connection", "close, X-Secret".parse().unwrap());
        h.insert("x-secret", "1".parse().unwrap());
        h.insert("keep-alive", "timeout=5".parse().unwrap());
        h.insert("x-keep", "1".parse().unwrap());
        assert!(is_hop_by_hop(&HeaderName::from_static("x-secret"), &h));
        strip(&mut h);
        assert_eq!(h.len(), 1);
        assert!(h.contains_key("x-keep"));
    }
}
