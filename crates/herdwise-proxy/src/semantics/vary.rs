//! Secondary keys (RFC 9111 §4.1): the request fields a response varies on, normalised so that
//! semantically equal requests select the same variant.
//!
//! Contract: [`fields`] lists the field names of a response's `Vary` (lower-case, first
//! occurrence order, `None` for `Vary: *`); [`selector`] turns a request's values of those fields
//! into one string. Normalisation (§4.1 allows it): values of a field joined with `, `,
//! whitespace around list commas removed, case folded for fields whose values are
//! case-insensitive tokens (`Accept-Encoding`, `Accept-Language`, `Accept`), list members of
//! `Accept-Encoding` sorted; an absent field differs from an empty one.

use http::HeaderMap;

/// The fields named by `Vary` (`None`: `*`, which never matches).
pub fn fields(response: &HeaderMap) -> Option<Vec<String>> {
    let mut out: Vec<String> = Vec::new();
    for value in response.get_all(http::header::VARY) {
        let Ok(value) = value.to_str() else { continue };
        for name in value.split(',') {
            let name = name.trim().to_ascii_lowercase();
            if name.is_empty() {
                continue;
            }
            if name == "*" {
                return None;
            }
            if !out.contains(&name) {
                out.push(name);
            }
        }
    }
    Some(out)
}

/// The normalised value of one field in `request` (`None` when absent).
fn normalised(request: &HeaderMap, name: &str) -> Option<String> {
    let mut values = request.get_all(name).iter().peekable();
    values.peek()?;
    let joined: Vec<String> = values
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
        .collect();
    let joined = joined.join(",");
    let mut members: Vec<String> = joined
        .split(',')
        .map(|m| m.split_whitespace().collect::<Vec<_>>().join(" "))
        .filter(|m| !m.is_empty())
        .collect();
    match name {
        "accept-encoding" => {
            for m in members.iter_mut() {
                *m = m.to_ascii_lowercase().replace(' ', "");
            }
            members.sort();
            members.dedup();
        }
        "accept-language" | "accept" => {
            for m in members.iter_mut() {
                *m = m.to_ascii_lowercase().replace(' ', "");
            }
        }
        _ => {}
    }
    Some(members.join(", "))
}

/// The selecting values of `request` for `fields`, as one string (field order as given).
pub fn selector(request: &HeaderMap, fields: &[String]) -> String {
    let mut out = String::new();
    for name in fields {
        out.push_str(name);
        match normalised(request, name) {
            Some(v) => {
                out.push('=');
                out.push_str(&v);
            }
            None => out.push('!'),
        }
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut m = HeaderMap::new();
        for (k, v) in pairs {
            m.append(
                http::header::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        m
    }

    #[test]
    fn normalised_selectors() {
        let f = fields(&h(&[("vary", "Accept-Encoding, X-A"), ("vary", "x-a")])).unwrap();
        assert_eq!(f, ["accept-encoding", "x-a"]);
        assert!(fields(&h(&[("vary", "a, *")])).is_none());
        let a = selector(&h(&[("accept-encoding", "gzip,  br")]), &f);
        let b = selector(
            &h(&[("accept-encoding", "BR"), ("accept-encoding", "gzip")]),
            &f,
        );
        assert_eq!(a, b);
        let absent = selector(&h(&[]), &f);
        let empty = selector(&h(&[("x-a", "")]), &f);
        assert_ne!(absent, empty);
        assert_ne!(
            selector(&h(&[("x-a", "1")]), &f),
            selector(&h(&[("x-a", "2")]), &f)
        );
    }
}
