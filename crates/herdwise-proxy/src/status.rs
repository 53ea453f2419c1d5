//! The `Cache-Status` response field (RFC 9211) this proxy adds to every response.
//!
//! Contract: one entry, named by the configured cache name (default `herdwise`), with the
//! parameters RFC 9211 §2 defines: `hit`, `fwd` (`uri-miss`, `vary-miss`, `miss`, `request`,
//! `stale`, `bypass`), `fwd-status`, `ttl`, `stored`, `collapsed`, `detail`.

/// Why a request went forward (RFC 9211 §2.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Forward {
    /// Nothing stored for the URL.
    UriMiss,
    /// Something stored for the URL, not for this variant.
    VaryMiss,
    /// The request asked to go forward (`no-cache`, `max-age=0`, ...).
    Request,
    /// A stored response needed validation.
    Stale,
    /// The cache was not used (uncacheable method, pass marker, no-store request).
    Bypass,
}

impl Forward {
    fn as_str(self) -> &'static str {
        match self {
            Forward::UriMiss => "uri-miss",
            Forward::VaryMiss => "vary-miss",
            Forward::Request => "request",
            Forward::Stale => "stale",
            Forward::Bypass => "bypass",
        }
    }
}

/// One `Cache-Status` entry being built.
#[derive(Debug, Clone, Default)]
pub struct CacheStatus {
    /// Served from the cache.
    pub hit: bool,
    /// Went forward, and why.
    pub fwd: Option<Forward>,
    /// The origin's status, when forwarded.
    pub fwd_status: Option<u16>,
    /// Freshness left (negative: stale by that much), when a stored response was involved.
    pub ttl: Option<i64>,
    /// The origin's response was stored.
    pub stored: bool,
    /// This request waited for another's origin request.
    pub collapsed: bool,
    /// Free-form detail (a refusal reason, `stale-while-revalidate`, ...).
    pub detail: Option<&'static str>,
}

impl CacheStatus {
    /// The field value, for a cache named `name`.
    pub fn render(&self, name: &str) -> String {
        let mut out = String::with_capacity(name.len() + 64);
        out.push_str(name);
        if self.hit {
            out.push_str("; hit");
        }
        if let Some(fwd) = self.fwd {
            out.push_str("; fwd=");
            out.push_str(fwd.as_str());
        }
        let mut digits = itoa::Buffer::new();
        if let Some(status) = self.fwd_status {
            out.push_str("; fwd-status=");
            out.push_str(digits.format(status));
        }
        if let Some(ttl) = self.ttl {
            out.push_str("; ttl=");
            out.push_str(digits.format(ttl));
        }
        if self.stored {
            out.push_str("; stored");
        }
        if self.collapsed {
            out.push_str("; collapsed");
        }
        if let Some(detail) = self.detail {
            out.push_str("; detail=");
            out.push_str(detail);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_rfc9211_parameters() {
        let s = CacheStatus {
            fwd: Some(Forward::Stale),
            fwd_status: Some(304),
            ttl: Some(60),
            stored: true,
            ..Default::default()
        };
        assert_eq!(
            s.render("herdwise"),
            "herdwise; fwd=stale; fwd-status=304; ttl=60; stored"
        );
        let hit = CacheStatus {
            hit: true,
            ttl: Some(-3),
            detail: Some("stale-while-revalidate"),
            ..Default::default()
        };
        assert_eq!(
            hit.render("h"),
            "h; hit; ttl=-3; detail=stale-while-revalidate"
        );
    }
}
