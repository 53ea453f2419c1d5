//! Cache-Control directives (RFC 9111 §5.2), `Pragma` (§5.4) and targeted cache-control fields
//! (RFC 9213: `CDN-Cache-Control` and a configurable field of our own).
//!
//! Contract: parsing never fails. Unknown directives are ignored (§5.2.3); a directive with an
//! invalid argument is treated as absent, except the ones whose failure must err on the side of
//! not caching (`max-age` with a bad value makes the response stale: §5.2.2.1 "a cache ... SHOULD
//! consider the response to be stale"). Duplicate directives: the first wins for arguments, any
//! occurrence counts for flags (a conservative reading of §4.2.1).

use std::time::Duration;

use http::header::{HeaderMap, HeaderName};

/// Longest lifetime honoured (a delta-seconds value past this is clamped, §1.2.2: 2^31).
pub const MAX_DELTA_SECONDS: u64 = 2_147_483_648;

/// Directives of a response's Cache-Control (or of a targeted field that replaces it).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ResponseDirectives {
    /// `max-age`; `Some(0)` also when the argument was invalid (stale).
    pub max_age: Option<u64>,
    /// `s-maxage` (shared caches only).
    pub s_maxage: Option<u64>,
    /// `no-store`.
    pub no_store: bool,
    /// Unqualified `no-cache`: stored, but validated before every reuse (§5.2.2.4).
    pub no_cache: bool,
    /// Fields named by a qualified `no-cache="a, b"`: not reused without validation, so this
    /// cache stores the response without them (§5.2.2.4).
    pub no_cache_fields: Vec<String>,
    /// Unqualified `private`: a shared cache never stores the response (§5.2.2.7).
    pub private: bool,
    /// Fields named by a qualified `private="a"`: a shared cache stores the rest (§5.2.2.7).
    pub private_fields: Vec<String>,
    /// `public`.
    pub public: bool,
    /// `must-revalidate`.
    pub must_revalidate: bool,
    /// `proxy-revalidate`.
    pub proxy_revalidate: bool,
    /// `must-understand`.
    pub must_understand: bool,
    /// `no-transform`.
    pub no_transform: bool,
    /// `immutable` (RFC 8246).
    pub immutable: bool,
    /// RFC 5861 `stale-while-revalidate`.
    pub stale_while_revalidate: Option<u64>,
    /// RFC 5861 `stale-if-error`.
    pub stale_if_error: Option<u64>,
}

/// Directives of a request's Cache-Control (and `Pragma: no-cache`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RequestDirectives {
    /// `max-age`.
    pub max_age: Option<u64>,
    /// `max-stale`; `Some(u64::MAX)` without an argument (any staleness).
    pub max_stale: Option<u64>,
    /// `min-fresh`.
    pub min_fresh: Option<u64>,
    /// `no-cache`, or `Pragma: no-cache` without a Cache-Control field (§5.4).
    pub no_cache: bool,
    /// `no-store`.
    pub no_store: bool,
    /// `only-if-cached`.
    pub only_if_cached: bool,
    /// RFC 5861 `stale-if-error` on the request.
    pub stale_if_error: Option<u64>,
}

/// One `name[=value]` item of a Cache-Control list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Directive<'a> {
    /// Lower-cased name.
    pub name: String,
    /// The argument, unquoted, if any.
    pub value: Option<std::borrow::Cow<'a, str>>,
}

/// Splits a Cache-Control field value into directives (RFC 9110 §5.6.1 lists, §5.6.4 quoted
/// strings). Commas inside quoted strings do not split.
pub fn parse_list(value: &str) -> Vec<Directive<'_>> {
    let mut out = Vec::new();
    let bytes = value.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        // Skip separators and whitespace.
        while i < bytes.len() && (bytes[i] == b',' || bytes[i] == b' ' || bytes[i] == b'\t') {
            i += 1;
        }
        if i >= bytes.len() {
            break;
        }
        let start = i;
        while i < bytes.len() && bytes[i] != b'=' && bytes[i] != b',' {
            i += 1;
        }
        let name = value[start..i].trim().to_ascii_lowercase();
        let mut arg = None;
        if i < bytes.len() && bytes[i] == b'=' {
            i += 1;
            while i < bytes.len() && (bytes[i] == b' ' || bytes[i] == b'\t') {
                i += 1;
            }
            if i < bytes.len() && bytes[i] == b'"' {
                i += 1;
                let mut s = String::new();
                while i < bytes.len() && bytes[i] != b'"' {
                    if bytes[i] == b'\\' && i + 1 < bytes.len() {
                        i += 1;
                    }
                    // Push whole UTF-8 characters.
                    let ch_len = utf8_len(bytes[i]);
                    let end = (i + ch_len).min(bytes.len());
                    s.push_str(value.get(i..end).unwrap_or(""));
                    i = end;
                }
                i += 1; // closing quote
                while i < bytes.len() && bytes[i] != b',' {
                    i += 1;
                }
                arg = Some(std::borrow::Cow::Owned(s));
            } else {
                let vstart = i;
                while i < bytes.len() && bytes[i] != b',' {
                    i += 1;
                }
                arg = Some(std::borrow::Cow::Borrowed(value[vstart..i].trim()));
            }
        }
        if !name.is_empty() {
            out.push(Directive { name, value: arg });
        }
    }
    out
}

fn field_names(list: &str) -> impl Iterator<Item = String> + '_ {
    list.split(',')
        .map(|f| f.trim().to_ascii_lowercase())
        .filter(|f| !f.is_empty())
}

fn utf8_len(first: u8) -> usize {
    match first {
        0x00..=0x7f => 1,
        0xc0..=0xdf => 2,
        0xe0..=0xef => 3,
        _ => 4,
    }
}

/// A delta-seconds argument (RFC 9111 §1.2.2): digits only; values past 2^31 are clamped.
pub fn delta_seconds(arg: Option<&str>) -> Option<u64> {
    let arg = arg?;
    if arg.is_empty() || !arg.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some(
        arg.parse::<u64>()
            .unwrap_or(MAX_DELTA_SECONDS)
            .min(MAX_DELTA_SECONDS),
    )
}

pub(crate) fn joined(headers: &HeaderMap, name: &HeaderName) -> Option<String> {
    let mut out: Option<String> = None;
    for v in headers.get_all(name) {
        let s = String::from_utf8_lossy(v.as_bytes());
        match out.as_mut() {
            Some(acc) => {
                acc.push(',');
                acc.push_str(&s);
            }
            None => out = Some(s.into_owned()),
        }
    }
    out
}

impl ResponseDirectives {
    /// Parses the directives of one field value (possibly several lines joined with commas).
    pub fn parse(value: &str) -> Self {
        let mut d = ResponseDirectives::default();
        for item in parse_list(value) {
            let arg = item.value.as_deref();
            match item.name.as_str() {
                "max-age" if d.max_age.is_none() => {
                    d.max_age = Some(delta_seconds(arg).unwrap_or(0));
                }
                "s-maxage" if d.s_maxage.is_none() => {
                    d.s_maxage = Some(delta_seconds(arg).unwrap_or(0));
                }
                "no-store" => d.no_store = true,
                "no-cache" => match arg {
                    Some(fields) if !fields.trim().is_empty() => {
                        d.no_cache_fields.extend(field_names(fields));
                    }
                    _ => d.no_cache = true,
                },
                "private" => match arg {
                    Some(fields) if !fields.trim().is_empty() => {
                        d.private_fields.extend(field_names(fields));
                    }
                    _ => d.private = true,
                },
                "public" => d.public = true,
                "must-revalidate" => d.must_revalidate = true,
                "proxy-revalidate" => d.proxy_revalidate = true,
                "must-understand" => d.must_understand = true,
                "no-transform" => d.no_transform = true,
                "immutable" => d.immutable = true,
                "stale-while-revalidate" if d.stale_while_revalidate.is_none() => {
                    d.stale_while_revalidate = delta_seconds(arg);
                }
                "stale-if-error" if d.stale_if_error.is_none() => {
                    d.stale_if_error = delta_seconds(arg);
                }
                _ => {}
            }
        }
        d
    }

    /// The directives that govern this cache: the first targeted field present in `targeted`
    /// order that parses to at least one directive (RFC 9213 §2.1: a cache that understands a
    /// targeted field uses it *instead of* Cache-Control), else Cache-Control.
    pub fn from_headers(headers: &HeaderMap, targeted: &[HeaderName]) -> (Self, bool) {
        for name in targeted {
            if let Some(v) = joined(headers, name) {
                // RFC 9213 §2.1: a targeted field is a Structured Fields Dictionary; one that
                // fails to parse, or is empty, is ignored (as if absent).
                if let Some(normalised) = targeted_directives(&v) {
                    return (Self::parse(&normalised), true);
                }
            }
        }
        let value = joined(headers, &http::header::CACHE_CONTROL).unwrap_or_default();
        (Self::parse(&value), false)
    }

    /// Whether this response must be revalidated once stale (`must-revalidate`, and for a
    /// shared cache `proxy-revalidate` and `s-maxage`, §5.2.2.2, §5.2.2.8, §5.2.2.10).
    pub fn revalidate_when_stale(&self) -> bool {
        self.must_revalidate || self.proxy_revalidate || self.s_maxage.is_some()
    }
}

/// A Structured Fields bare item or inner list (RFC 8941 §3), as far as cache directives
/// need them.
#[derive(Debug, Clone, PartialEq)]
enum SfValue {
    Integer(i64),
    Decimal,
    String(String),
    Token,
    Bytes,
    Boolean(bool),
    InnerList(Vec<SfValue>),
}

/// A strict RFC 8941 §4.2.2 Dictionary parser: members and their values, parameters dropped;
/// `None` on any parse error.
fn sf_dictionary(input: &str) -> Option<Vec<(String, SfValue)>> {
    struct P<'a> {
        b: &'a [u8],
        i: usize,
    }
    impl P<'_> {
        fn peek(&self) -> Option<u8> {
            self.b.get(self.i).copied()
        }
        fn sp(&mut self) {
            while self.peek() == Some(b' ') {
                self.i += 1;
            }
        }
        fn ows(&mut self) {
            while matches!(self.peek(), Some(b' ' | b'\t')) {
                self.i += 1;
            }
        }
        fn key(&mut self) -> Option<String> {
            let start = self.i;
            match self.peek()? {
                b'a'..=b'z' | b'*' => self.i += 1,
                _ => return None,
            }
            while let Some(c) = self.peek() {
                match c {
                    b'a'..=b'z' | b'0'..=b'9' | b'_' | b'-' | b'.' | b'*' => self.i += 1,
                    _ => break,
                }
            }
            std::str::from_utf8(&self.b[start..self.i])
                .ok()
                .map(str::to_string)
        }
        fn bare(&mut self) -> Option<SfValue> {
            match self.peek()? {
                b'-' | b'0'..=b'9' => {
                    let start = self.i;
                    if self.peek() == Some(b'-') {
                        self.i += 1;
                    }
                    let digits = self.i;
                    while self.peek().is_some_and(|c| c.is_ascii_digit()) {
                        self.i += 1;
                    }
                    let int_len = self.i - digits;
                    if int_len == 0 {
                        return None;
                    }
                    if self.peek() == Some(b'.') {
                        self.i += 1;
                        let frac = self.i;
                        while self.peek().is_some_and(|c| c.is_ascii_digit()) {
                            self.i += 1;
                        }
                        let frac_len = self.i - frac;
                        return (int_len <= 12 && (1..=3).contains(&frac_len))
                            .then_some(SfValue::Decimal);
                    }
                    if int_len > 15 {
                        return None;
                    }
                    std::str::from_utf8(&self.b[start..self.i])
                        .ok()?
                        .parse()
                        .ok()
                        .map(SfValue::Integer)
                }
                b'"' => {
                    self.i += 1;
                    let mut out = String::new();
                    loop {
                        let c = self.peek()?;
                        self.i += 1;
                        match c {
                            b'\\' => {
                                let e = self.peek()?;
                                if e != b'"' && e != b'\\' {
                                    return None;
                                }
                                out.push(e as char);
                                self.i += 1;
                            }
                            b'"' => return Some(SfValue::String(out)),
                            0x20..=0x7e => out.push(c as char),
                            _ => return None,
                        }
                    }
                }
                b'*' | b'a'..=b'z' | b'A'..=b'Z' => {
                    self.i += 1;
                    while self.peek().is_some_and(|c| {
                        c.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~:/".contains(&c)
                    }) {
                        self.i += 1;
                    }
                    Some(SfValue::Token)
                }
                b':' => {
                    self.i += 1;
                    while self
                        .peek()
                        .is_some_and(|c| c.is_ascii_alphanumeric() || b"+/=".contains(&c))
                    {
                        self.i += 1;
                    }
                    (self.peek() == Some(b':')).then(|| {
                        self.i += 1;
                        SfValue::Bytes
                    })
                }
                b'?' => {
                    self.i += 1;
                    let v = match self.peek()? {
                        b'0' => false,
                        b'1' => true,
                        _ => return None,
                    };
                    self.i += 1;
                    Some(SfValue::Boolean(v))
                }
                _ => None,
            }
        }
        fn params(&mut self) -> Option<()> {
            while self.peek() == Some(b';') {
                self.i += 1;
                self.sp();
                self.key()?;
                if self.peek() == Some(b'=') {
                    self.i += 1;
                    self.bare()?;
                }
            }
            Some(())
        }
        fn item_or_list(&mut self) -> Option<SfValue> {
            if self.peek() != Some(b'(') {
                let v = self.bare()?;
                self.params()?;
                return Some(v);
            }
            self.i += 1;
            let mut items = Vec::new();
            loop {
                self.sp();
                if self.peek()? == b')' {
                    self.i += 1;
                    self.params()?;
                    return Some(SfValue::InnerList(items));
                }
                items.push(self.bare()?);
                self.params()?;
                if !matches!(self.peek()?, b' ' | b')') {
                    return None;
                }
            }
        }
    }
    let mut p = P {
        b: input.as_bytes(),
        i: 0,
    };
    let mut out = Vec::new();
    p.sp();
    if p.peek().is_none() {
        return Some(out);
    }
    loop {
        let key = p.key()?;
        let value = if p.peek() == Some(b'=') {
            p.i += 1;
            p.item_or_list()?
        } else {
            p.params()?;
            SfValue::Boolean(true)
        };
        out.retain(|(k, _)| *k != key);
        out.push((key, value));
        p.ows();
        match p.peek() {
            None => return Some(out),
            Some(b',') => {
                p.i += 1;
                p.ows();
                p.peek()?; // a trailing comma is an error
            }
            Some(_) => return None,
        }
    }
}

/// A targeted field's value (RFC 9213 §2.1) as Cache-Control text, or `None` when the field
/// must be ignored: it is not a valid Dictionary, or nothing is left of it once directives of
/// the wrong type (e.g. `max-age="10"`) are dropped.
pub fn targeted_directives(value: &str) -> Option<String> {
    let members = sf_dictionary(value)?;
    let mut kept = 0;
    let mut out = String::new();
    let mut push = |text: &str| {
        if !out.is_empty() {
            out.push_str(", ");
        }
        out.push_str(text);
    };
    for (name, value) in &members {
        match (name.as_str(), value) {
            ("max-age" | "s-maxage" | "stale-while-revalidate" | "stale-if-error", v) => {
                if let SfValue::Integer(n) = v {
                    if *n >= 0 {
                        push(&format!("{name}={n}"));
                        kept += 1;
                    }
                }
            }
            ("no-cache" | "private", SfValue::InnerList(fields)) => {
                // Field names only (tokens): anything else could smuggle directives into the
                // text parsed next.
                let names: Vec<&str> = fields
                    .iter()
                    .filter_map(|f| match f {
                        SfValue::String(s)
                            if http::HeaderName::from_bytes(s.as_bytes()).is_ok() =>
                        {
                            Some(s.as_str())
                        }
                        _ => None,
                    })
                    .collect();
                if names.len() == fields.len() {
                    push(&format!("{name}=\"{}\"", names.join(", ")));
                    kept += 1;
                }
            }
            (
                "no-store" | "no-cache" | "private" | "public" | "must-revalidate"
                | "proxy-revalidate" | "must-understand" | "no-transform" | "immutable",
                v,
            ) => match v {
                SfValue::Boolean(true) => {
                    push(name);
                    kept += 1;
                }
                // `?0`: the directive is off, but it was well-formed.
                SfValue::Boolean(false) => kept += 1,
                _ => {}
            },
            // Extensions: part of the field, meaning nothing here.
            _ => kept += 1,
        }
    }
    (kept > 0).then_some(out)
}

impl RequestDirectives {
    /// The request's directives (Cache-Control, else `Pragma: no-cache`, §5.4).
    pub fn from_headers(headers: &HeaderMap) -> Self {
        let mut d = RequestDirectives::default();
        let cc = joined(headers, &http::header::CACHE_CONTROL);
        match cc.as_deref() {
            Some(value) => {
                for item in parse_list(value) {
                    let arg = item.value.as_deref();
                    match item.name.as_str() {
                        "max-age" if d.max_age.is_none() => d.max_age = delta_seconds(arg),
                        "max-stale" if d.max_stale.is_none() => {
                            d.max_stale = match arg {
                                None => Some(u64::MAX),
                                Some(a) => delta_seconds(Some(a)),
                            };
                        }
                        "min-fresh" if d.min_fresh.is_none() => d.min_fresh = delta_seconds(arg),
                        "no-cache" => d.no_cache = true,
                        "no-store" => d.no_store = true,
                        "only-if-cached" => d.only_if_cached = true,
                        "stale-if-error" if d.stale_if_error.is_none() => {
                            d.stale_if_error = delta_seconds(arg);
                        }
                        _ => {}
                    }
                }
            }
            None => {
                if let Some(p) = joined(headers, &http::header::PRAGMA) {
                    if parse_list(&p).iter().any(|i| i.name == "no-cache") {
                        d.no_cache = true;
                    }
                }
            }
        }
        d
    }
}

/// `Duration` from seconds, saturating.
pub fn secs(s: u64) -> Duration {
    Duration::from_secs(s.min(MAX_DELTA_SECONDS))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targeted_fields_are_strict_structured_dictionaries() {
        let t = targeted_directives;
        assert_eq!(t("max-age=60").as_deref(), Some("max-age=60"));
        assert_eq!(
            t("max-age=60, no-store;x=1, foo=bar").as_deref(),
            Some("max-age=60, no-store")
        );
        assert_eq!(
            t("no-cache=(\"a\" \"b\")").as_deref(),
            Some("no-cache=\"a, b\"")
        );
        assert_eq!(
            t("ext").as_deref(),
            Some(""),
            "an extension keeps the field"
        );
        for bad in [
            "max-age=10000, &&&&&",
            "max-age=\"10000\"",
            "max-age = 60",
            "Max-Age=60",
            "max-age=60,",
            "",
            "max-age=-1",
            "max-age=1.5",
            "no-cache=(\"a\\\", s-maxage=99999, x=\\\"\")",
        ] {
            assert_eq!(t(bad), None, "{bad}");
        }
    }

    #[test]
    fn lists_quotes_and_bad_arguments() {
        let d = ResponseDirectives::parse(
            r#"public, max-age="60", no-cache="set-cookie, x", s-maxage=abc"#,
        );
        assert!(d.public && !d.no_cache);
        assert_eq!(d.no_cache_fields, ["set-cookie", "x"]);
        assert_eq!(d.max_age, Some(60));
        assert_eq!(d.s_maxage, Some(0));
        let d = ResponseDirectives::parse("MAX-AGE=10, max-age=99");
        assert_eq!(d.max_age, Some(10));
        let d = ResponseDirectives::parse("max-age=99999999999999999999");
        assert_eq!(d.max_age, Some(MAX_DELTA_SECONDS));
        assert_eq!(
            ResponseDirectives::parse(",,, ,"),
            ResponseDirectives::default()
        );
        let d = ResponseDirectives::parse("max-age=-1");
        assert_eq!(d.max_age, Some(0));
    }

    #[test]
    fn pragma_only_without_cache_control() {
        let mut h = HeaderMap::new();
        h.insert(http::header::PRAGMA, "no-cache".parse().unwrap());
        assert!(RequestDirectives::from_headers(&h).no_cache);
        h.insert(http::header::CACHE_CONTROL, "max-age=5".parse().unwrap());
        let d = RequestDirectives::from_headers(&h);
        assert!(!d.no_cache);
        assert_eq!(d.max_age, Some(5));
    }

    #[test]
    fn targeted_field_replaces_cache_control() {
        let mut h = HeaderMap::new();
        h.insert(http::header::CACHE_CONTROL, "no-store".parse().unwrap());
        h.insert("cdn-cache-control", "max-age=30".parse().unwrap());
        let names = [HeaderName::from_static("cdn-cache-control")];
        let (d, targeted) = ResponseDirectives::from_headers(&h, &names);
        assert!(targeted && !d.no_store);
        assert_eq!(d.max_age, Some(30));
    }
}
