//! Freshness (RFC 9111 §4.2): the freshness lifetime of a stored response, its current age,
//! and whether it may answer a given request (with the request's `max-age`, `min-fresh`,
//! `max-stale`, and RFC 5861's `stale-while-revalidate` / `stale-if-error`).
//!
//! Contract: pure functions over header fields and unix-millisecond times; no clock is read
//! here (callers pass `now_ms`), so every rule is testable at any instant.

use http::{HeaderMap, StatusCode};

use super::directives::{RequestDirectives, ResponseDirectives};

/// Status codes heuristically cacheable by default (RFC 9110 §15.1).
pub fn heuristically_cacheable(status: StatusCode) -> bool {
    matches!(
        status.as_u16(),
        200 | 203 | 204 | 206 | 300 | 301 | 308 | 404 | 405 | 410 | 414 | 501
    )
}

/// An HTTP-date header field as unix seconds (RFC 9110 §5.6.7: IMF-fixdate, and the obsolete
/// RFC 850 and asctime forms; an invalid date is `None`).
pub fn http_date(headers: &HeaderMap, name: http::header::HeaderName) -> Option<u64> {
    let value = headers.get(name)?.to_str().ok()?;
    let t = httpdate::parse_http_date(value.trim()).ok()?;
    t.duration_since(std::time::UNIX_EPOCH)
        .ok()
        .map(|d| d.as_secs())
}

/// Heuristic freshness settings (§4.2.2).
#[derive(Debug, Clone, Copy)]
pub struct Heuristic {
    /// Fraction of the time since Last-Modified (typically 0.1).
    pub fraction: f64,
    /// Upper bound, in seconds.
    pub max_secs: u64,
}

/// The freshness lifetime in seconds for a shared cache (§4.2.1): `s-maxage`, else `max-age`,
/// else `Expires − Date`, else a heuristic where allowed. `None`: no lifetime at all (not even
/// a heuristic one).
pub fn lifetime(
    status: StatusCode,
    headers: &HeaderMap,
    cc: &ResponseDirectives,
    response_time_ms: u64,
    heuristic: Option<Heuristic>,
) -> Option<u64> {
    if let Some(s) = cc.s_maxage {
        return Some(s);
    }
    if let Some(m) = cc.max_age {
        return Some(m);
    }
    if headers.contains_key(http::header::EXPIRES) {
        // An invalid Expires (e.g. "0") means "already expired" (§5.3).
        let expires = match http_date(headers, http::header::EXPIRES) {
            Some(e) => e,
            None => return Some(0),
        };
        let date = http_date(headers, http::header::DATE).unwrap_or(response_time_ms / 1000);
        return Some(expires.saturating_sub(date));
    }
    // Heuristics only where allowed (§4.2.2): no explicit expiration, and a status that is
    // heuristically cacheable or marked public.
    let h = heuristic?;
    if !(heuristically_cacheable(status) || cc.public) {
        return None;
    }
    let last_modified = http_date(headers, http::header::LAST_MODIFIED)?;
    let date = http_date(headers, http::header::DATE).unwrap_or(response_time_ms / 1000);
    let since = date.saturating_sub(last_modified) as f64;
    Some(((since * h.fraction) as u64).min(h.max_secs))
}

/// The age header's value (§5.1): a non-negative integer; a list (one line `7200, 0`, or
/// several lines) counts by its first member; anything else is ignored.
pub fn age_header(headers: &HeaderMap) -> u64 {
    headers
        .get(http::header::AGE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            let first = v.split(',').next().unwrap_or("").trim();
            super::directives::delta_seconds(Some(first))
        })
        .unwrap_or(0)
}

/// The corrected initial age in seconds (§4.2.3) of a response with these `headers`, whose
/// request was sent at `request_time_ms` and which was received at `response_time_ms`.
pub fn initial_age(headers: &HeaderMap, request_time_ms: u64, response_time_ms: u64) -> u64 {
    let date_ms = http_date(headers, http::header::DATE)
        .map(|d| d * 1000)
        .unwrap_or(response_time_ms);
    let apparent = response_time_ms.saturating_sub(date_ms) / 1000;
    let delay = response_time_ms.saturating_sub(request_time_ms);
    let corrected = age_header(headers) * 1000 + delay;
    apparent.max(corrected / 1000)
}

/// The current age at `now_ms`, in milliseconds, of a response received at `response_time_ms`
/// with `initial_age` (seconds, from [`initial_age`]); milliseconds for request `max-age`,
/// where a response received half a second ago is older than `max-age=0` allows.
pub fn current_age_ms(initial_age: u64, response_time_ms: u64, now_ms: u64) -> u64 {
    initial_age * 1000 + now_ms.saturating_sub(response_time_ms)
}

/// Where a stored response stands for one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Standing {
    /// Serve it (the request's limits included).
    Fresh,
    /// Stale, but within the response's `stale-while-revalidate`: serve it and revalidate in
    /// the background.
    StaleWhileRevalidate,
    /// Stale, and the request allows it (`max-stale`), and the response permits it.
    StaleAllowed,
    /// Must be validated (or replaced) before use.
    Stale,
}

/// A stored response's freshness facts, computed once per lookup.
#[derive(Debug, Clone, Copy)]
pub struct Facts {
    /// Freshness lifetime, seconds.
    pub lifetime: u64,
    /// Current age, seconds.
    pub age: u64,
    /// Current age, milliseconds.
    pub age_ms: u64,
}

impl Facts {
    /// Seconds of freshness left (0 when stale).
    pub fn ttl(&self) -> i64 {
        self.lifetime as i64 - self.age as i64
    }
}

/// Evaluates a stored response against a request (§4.2, §5.2.1, RFC 5861).
pub fn standing(cc: &ResponseDirectives, facts: Facts, req: &RequestDirectives) -> Standing {
    let Facts {
        lifetime,
        age,
        age_ms,
    } = facts;
    // Request max-age: the client accepts nothing older than this (§5.2.1.1), to the ms;
    // `max-age=0` (a reload) is always a validation, even of a response received this
    // very millisecond.
    let age_ok = req
        .max_age
        .is_none_or(|m| m > 0 && age_ms <= m.saturating_mul(1000));
    let fresh = age < lifetime;
    let min_fresh_ok = req
        .min_fresh
        .is_none_or(|m| lifetime.saturating_sub(age) >= m);
    if fresh && age_ok && min_fresh_ok && !cc.no_cache && !req.no_cache {
        return Standing::Fresh;
    }
    if cc.no_cache || req.no_cache || !age_ok || !min_fresh_ok {
        return Standing::Stale;
    }
    // Stale from here on.
    let staleness = age - lifetime;
    if cc.revalidate_when_stale() {
        return Standing::Stale;
    }
    if req.max_stale.is_some_and(|m| staleness <= m) {
        return Standing::StaleAllowed;
    }
    if cc.stale_while_revalidate.is_some_and(|w| staleness <= w) {
        return Standing::StaleWhileRevalidate;
    }
    Standing::Stale
}

/// Whether a stale response may answer when the origin failed: the response's or the request's
/// `stale-if-error` (RFC 5861 §4), never past `must-revalidate` and friends.
pub fn usable_on_error(cc: &ResponseDirectives, facts: Facts, req: &RequestDirectives) -> bool {
    if cc.revalidate_when_stale() || cc.no_cache {
        return false;
    }
    let staleness = facts.age.saturating_sub(facts.lifetime);
    let window = match (cc.stale_if_error, req.stale_if_error) {
        (None, None) => return false,
        (a, b) => a.unwrap_or(0).max(b.unwrap_or(0)),
    };
    staleness <= window
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts(lifetime: u64, age: u64) -> Facts {
        Facts {
            lifetime,
            age,
            age_ms: age * 1000,
        }
    }

    #[test]
    fn request_limits() {
        let cc = ResponseDirectives::parse("max-age=100");
        let none = RequestDirectives::default();
        assert_eq!(standing(&cc, facts(100, 50), &none), Standing::Fresh);
        assert_eq!(standing(&cc, facts(100, 100), &none), Standing::Stale);
        let req = RequestDirectives {
            max_age: Some(10),
            ..Default::default()
        };
        assert_eq!(standing(&cc, facts(100, 50), &req), Standing::Stale);
        let req = RequestDirectives {
            min_fresh: Some(60),
            ..Default::default()
        };
        assert_eq!(standing(&cc, facts(100, 50), &req), Standing::Stale);
        let req = RequestDirectives {
            max_stale: Some(10),
            ..Default::default()
        };
        assert_eq!(standing(&cc, facts(100, 105), &req), Standing::StaleAllowed);
        assert_eq!(standing(&cc, facts(100, 111), &req), Standing::Stale);
        let mr = ResponseDirectives::parse("max-age=100, must-revalidate");
        assert_eq!(standing(&mr, facts(100, 105), &req), Standing::Stale);
    }

    #[test]
    fn rfc5861_windows() {
        let cc =
            ResponseDirectives::parse("max-age=10, stale-while-revalidate=5, stale-if-error=60");
        let none = RequestDirectives::default();
        assert_eq!(
            standing(&cc, facts(10, 14), &none),
            Standing::StaleWhileRevalidate
        );
        assert_eq!(standing(&cc, facts(10, 16), &none), Standing::Stale);
        assert!(usable_on_error(&cc, facts(10, 60), &none));
        assert!(!usable_on_error(&cc, facts(10, 80), &none));
    }
}
