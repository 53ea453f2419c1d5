//! Whether a response may be stored (RFC 9111 §3, §3.5, §5.2.2) and the proxy's stricter
//! defaults against cache poisoning and web cache deception (seed 004).
//!
//! Contract: a pure decision over the request and the response; [`Verdict::Store`] only when
//! every RFC condition holds *and* every configured safety check passes. Each refusal names its
//! reason (it goes into `Cache-Status`'s `detail` and the metrics).

use http::{HeaderMap, Method, StatusCode};

use super::directives::{RequestDirectives, ResponseDirectives};
use super::freshness::heuristically_cacheable;

/// The proxy's storage policy beyond the RFC's musts.
#[derive(Debug, Clone)]
pub struct StorePolicy {
    /// Store responses that set cookies (default no: a `Set-Cookie` is one client's).
    pub store_set_cookie: bool,
    /// Check that a URL whose extension names a static type (`.css`, `.js`, `.png`, ...) got a
    /// response of that type (web cache deception: `/account/profile.css` answered with the
    /// account page in HTML must not be stored).
    pub check_extension: bool,
    /// Path prefixes where the extension check does not apply (routes known to be static).
    pub static_routes: Vec<String>,
    /// Largest body stored, in bytes.
    pub max_object_bytes: usize,
}

impl Default for StorePolicy {
    fn default() -> Self {
        StorePolicy {
            store_set_cookie: false,
            check_extension: true,
            static_routes: Vec::new(),
            max_object_bytes: 8 << 20,
        }
    }
}

/// The decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Store it.
    Store,
    /// Do not store it, for this reason.
    Refuse(&'static str),
}

/// The extension classes a path's last segment claims: of the segment before any `;`
/// parameters (`/a.css;jsessionid=…`) and of the whole segment (`/profile;.css`), both being
/// tricks in use. Give it the normalised path (`%2E` decoded).
pub fn extension_classes(path: &str) -> Vec<&'static str> {
    let last = path.rsplit('/').next().unwrap_or("");
    let before = last.split(';').next().unwrap_or("");
    let mut out = Vec::new();
    for segment in [before, last] {
        if let Some(class) = extension_class(segment) {
            if !out.contains(&class) {
                out.push(class);
            }
        }
    }
    out
}

/// The extension class of a path's last segment (`None`: no extension, or one not in the
/// list).
pub fn extension_class(path: &str) -> Option<&'static str> {
    let last = path.rsplit('/').next()?;
    let ext = last.rsplit_once('.')?.1.to_ascii_lowercase();
    Some(match ext.as_str() {
        "css" => "css",
        "js" | "mjs" => "javascript",
        "png" | "jpg" | "jpeg" | "gif" | "webp" | "avif" | "ico" | "svg" | "bmp" => "image",
        "woff" | "woff2" | "ttf" | "otf" | "eot" => "font",
        "mp4" | "webm" | "mp3" | "ogg" | "wav" => "media",
        "json" => "json",
        "txt" => "text",
        "pdf" => "pdf",
        _ => return None,
    })
}

/// Whether a `Content-Type` fits an extension class.
pub fn type_matches(class: &str, content_type: Option<&str>) -> bool {
    let Some(ct) = content_type else {
        return false;
    };
    let ct = ct
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    match class {
        "css" => ct == "text/css",
        "javascript" => matches!(
            ct.as_str(),
            "application/javascript"
                | "text/javascript"
                | "application/x-javascript"
                | "application/ecmascript"
                | "text/ecmascript"
        ),
        "image" => ct.starts_with("image/"),
        "font" => {
            ct.starts_with("font/")
                || ct.starts_with("application/font")
                || ct == "application/vnd.ms-fontobject"
        }
        "media" => ct.starts_with("video/") || ct.starts_with("audio/"),
        "json" => ct == "application/json" || ct.ends_with("+json"),
        "text" => ct == "text/plain",
        "pdf" => ct == "application/pdf",
        _ => false,
    }
}

/// Everything the decision looks at.
pub struct Exchange<'a> {
    /// The request method.
    pub method: &'a Method,
    /// The request path.
    pub path: &'a str,
    /// The request's header fields.
    pub request: &'a HeaderMap,
    /// Its directives.
    pub request_cc: &'a RequestDirectives,
    /// The response status.
    pub status: StatusCode,
    /// The response's header fields.
    pub response: &'a HeaderMap,
    /// Its directives (targeted field or Cache-Control).
    pub response_cc: &'a ResponseDirectives,
    /// The body length, if known.
    pub body_len: Option<usize>,
    /// Whether a heuristic lifetime would be used (no explicit freshness).
    pub heuristic_allowed: bool,
}

/// Decides whether `x` may be stored (RFC 9111 §3 and `policy`).
pub fn verdict(x: &Exchange<'_>, policy: &StorePolicy) -> Verdict {
    use Verdict::Refuse;
    // §3: a method this cache understands and whose responses are cacheable: GET (HEAD is
    // answered from GET's entries, never stored on its own).
    if x.method != Method::GET {
        return Refuse("method");
    }
    // §3: a final status code; we do not store 206 (ranges pass through) or 304.
    if x.status.is_informational()
        || x.status == StatusCode::PARTIAL_CONTENT
        || x.status == StatusCode::NOT_MODIFIED
    {
        return Refuse("status");
    }
    // §5.2.2.3: must-understand with a status we do not understand. All statuses we would
    // store are understood; nothing to do beyond the status check above.
    // §5.2.1.5 / §5.2.2.5: no-store.
    if x.request_cc.no_store {
        return Refuse("request_no_store");
    }
    if x.response_cc.no_store && !(x.response_cc.must_understand && understood(x.status)) {
        return Refuse("no_store");
    }
    // §5.2.2.7: a shared cache never stores `private`.
    if x.response_cc.private {
        return Refuse("private");
    }
    // §3.5: a request with Authorization only if the response says so.
    let explicit_shared =
        x.response_cc.public || x.response_cc.s_maxage.is_some() || x.response_cc.must_revalidate;
    if x.request.contains_key(http::header::AUTHORIZATION) && !explicit_shared {
        return Refuse("authorization");
    }
    // Cookies identify a user: only what the origin marks public or shared-cacheable.
    if x.request.contains_key(http::header::COOKIE)
        && !(x.response_cc.public || x.response_cc.s_maxage.is_some())
    {
        return Refuse("cookie");
    }
    if !policy.store_set_cookie && x.response.contains_key(http::header::SET_COOKIE) {
        return Refuse("set_cookie");
    }
    // §4.1: `Vary: *` never matches a later request.
    if x.response.get_all(http::header::VARY).iter().any(|v| {
        v.to_str()
            .is_ok_and(|v| v.split(',').any(|f| f.trim() == "*"))
    }) {
        return Refuse("vary_star");
    }
    // §3: at least one of: public, max-age, s-maxage, Expires, or a heuristically cacheable
    // status (with a heuristic lifetime the cache can use), or no-cache (stored, always
    // validated).
    let explicit = x.response_cc.public
        || x.response_cc.max_age.is_some()
        || x.response_cc.s_maxage.is_some()
        || x.response.contains_key(http::header::EXPIRES);
    let validated_only = x.response_cc.no_cache
        && (x.response.contains_key(http::header::ETAG)
            || x.response.contains_key(http::header::LAST_MODIFIED));
    let heuristic = heuristically_cacheable(x.status) && x.heuristic_allowed;
    if !(explicit || validated_only || heuristic) {
        return Refuse("not_cacheable");
    }
    if x.body_len.is_some_and(|n| n > policy.max_object_bytes) {
        return Refuse("too_large");
    }
    if policy.check_extension && !exempt_route(x.path, &policy.static_routes) {
        let ct = x
            .response
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok());
        if extension_classes(x.path)
            .iter()
            .any(|class| !type_matches(class, ct))
        {
            return Refuse("content_type_mismatch");
        }
    }
    Verdict::Store
}

fn understood(status: StatusCode) -> bool {
    matches!(
        status.as_u16(),
        200 | 203 | 204 | 300 | 301 | 302 | 303 | 307 | 308 | 404 | 405 | 410 | 414 | 501
    )
}

/// Whether `path` is under one of the exempt `routes` — never a path that could leave its
/// route at the origin (`..`, or an encoded `/`, `\` or `.` the origin may decode).
fn exempt_route(path: &str, routes: &[String]) -> bool {
    let lower = path.to_ascii_lowercase();
    let escapes = path.contains("..") || ["%2f", "%5c", "%2e"].iter().any(|e| lower.contains(e));
    !escapes && routes.iter().any(|r| path.starts_with(r.as_str()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extensions_and_types() {
        assert_eq!(extension_class("/account/profile.css"), Some("css"));
        assert_eq!(extension_classes("/a/b.JS;x=1"), ["javascript"]);
        assert_eq!(extension_classes("/account/profile;.css"), ["css"]);
        assert_eq!(extension_class("/a/b"), None);
        assert_eq!(extension_class("/a.b/c"), None);
        assert!(type_matches("css", Some("text/css; charset=utf-8")));
        assert!(!type_matches("css", Some("text/html")));
        assert!(!type_matches("image", None));
    }
}
