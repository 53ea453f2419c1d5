//! One request through the proxy: HTTP semantics (`crate::semantics`) turned into calls on a
//! `herdwise::Cache<str, Entry>`.
//!
//! Contract: [`Proxy::handle`] answers every request with a response, never an error, and adds
//! `Cache-Status` (RFC 9211) and `Via`. GET and HEAD go through the cache: a stored response
//! is judged by RFC 9111 freshness for *this* request, and one that must be fetched or
//! validated is loaded through `Cache::get_or_load_checked` — the library's single-flight and
//! cross-instance lease, so many requests for one URL, on one proxy or on many sharing Redis,
//! cause one origin request. Other methods are forwarded; a successful unsafe one invalidates
//! the target URI and its `Location` / `Content-Location` on every instance (RFC 9111 §4.4).
//! Every response the origin did not mark storable for a shared cache is passed through,
//! never stored (see `semantics::storable`).

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::StreamExt;
use herdwise::{Cache, Fetched, LoadOptions, Source};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body_util::{combinators::BoxBody, BodyExt, BodyStream, Empty, Full, Limited, StreamBody};
use hyper::body::{Frame, Incoming};
use parking_lot::Mutex;

use crate::config::Config;
use crate::key;
use crate::object::{Entry, Judgement, Memo, StoredResponse};
use crate::origin::{Origin, OriginError, Origins, OutBody};
use crate::semantics::conditional::{self, Precondition};
use crate::semantics::directives::{RequestDirectives, ResponseDirectives};
use crate::semantics::freshness::{self, Facts, Heuristic, Standing};
use crate::semantics::storable::{self, Exchange, StorePolicy, Verdict};
use crate::semantics::{hop, vary};
use crate::status::{CacheStatus, Forward};

/// Any body error.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A response body to a client.
pub type Body = BoxBody<Bytes, BoxError>;

/// Most background revalidations tracked at once (one per URL).
const MAX_REVALIDATIONS: usize = 10_000;
/// Most surrogate keys taken from one response.
const MAX_SURROGATE_KEYS: usize = 24;
/// Most surrogate keys one purge request names.
const MAX_PURGE_KEYS: usize = 64;
/// Directory depth of the prefix tags (`/a/b/c/d/` at most).
const PREFIX_DEPTH: usize = 4;
/// Largest error body kept to be served to collapsed requests.
const MAX_ERROR_BODY: usize = 64 << 10;

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// A body of bytes.
pub fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed()
}

/// An empty body.
pub fn empty() -> Body {
    Empty::new().map_err(|never| match never {}).boxed()
}

/// A plain-text response of the proxy's own.
pub fn text(status: StatusCode, body: &str) -> Response<Body> {
    let mut r = Response::new(full(body.to_string()));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

/// An origin's error response, kept whole so that collapsed requests can be given it too.
#[derive(Debug, Clone)]
pub struct Buffered {
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
}

/// Why a fill did not produce an entry.
#[derive(Debug, Clone, thiserror::Error)]
enum Failure {
    #[error("{0}")]
    Origin(OriginError),
    #[error("origin answered {0}")]
    Status(StatusCode),
    #[error("reading the origin's body: {0}")]
    Body(String),
}

/// What the request that led a fill got, for itself (others get the stored entry, or forward).
enum Led {
    /// Stored (or validated and stored): serve the entry — or, when the URL turned out to
    /// vary, this variant (stored under its own key; the URL's entry is the Vary marker).
    Stored {
        fwd_status: u16,
        validated: bool,
        variant: Option<Arc<StoredResponse>>,
        /// The fields a qualified `private` / `no-cache` kept out of storage: this request's
        /// own response still carries them (only storing is restricted, §5.2.2.4, §5.2.2.7).
        withheld: HeaderMap,
    },
    /// Not stored: serve this response, as it came.
    Passthrough {
        response: Response<Body>,
        detail: &'static str,
    },
    /// The origin failed with this error response (for this request only).
    Failed(Arc<Buffered>),
}

/// The request, as the fill and the judges need it.
struct Ctx {
    /// The settings this request runs under, from start to end (a reload meanwhile applies to
    /// later requests).
    live: Arc<Live>,
    method: Method,
    uri: http::Uri,
    headers: HeaderMap,
    req_cc: RequestDirectives,
    started_ms: u64,
    host: String,
    primary: String,
    https: bool,
}

/// The proxy: the cache, the origins, the policy.
pub struct Proxy {
    cache: Cache<str, Entry>,
    settings: Arc<Settings>,
    revalidating: Mutex<HashSet<String>>,
    started: Instant,
    /// The request series by outcome, registered on the first request (with the recorder the
    /// process installed by then), not looked up on every one.
    outcomes: std::sync::OnceLock<Vec<Outcome>>,
}

/// Every outcome [`outcome_label`] gives.
const OUTCOMES: [&str; 8] = [
    "hit",
    "miss",
    "stale",
    "revalidated",
    "collapsed",
    "uncached",
    "bypass",
    "error",
];

/// One outcome's series.
struct Outcome {
    label: &'static str,
    requests: metrics::Counter,
    duration: metrics::Histogram,
}

/// What a request reads of the configuration: replaced whole by a reload.
pub struct Live {
    /// The configuration in force (options that need a restart as they were at start).
    pub config: Arc<Config>,
    /// Request fields a fill forwards (see `Config::fill_headers`).
    fill_headers: Vec<HeaderName>,
    origins: Origins,
    policy: StorePolicy,
    rules: Rules,
}

impl Live {
    /// From a validated configuration; origins whose configuration `previous` shares are kept.
    fn new(config: Config, previous: Option<&Live>) -> Self {
        let policy = StorePolicy {
            store_set_cookie: config.store_set_cookie,
            check_extension: config.check_extension,
            static_routes: config.static_routes.clone(),
            max_object_bytes: config.max_object_bytes,
        };
        Live {
            fill_headers: config
                .fill_headers
                .iter()
                .filter_map(|f| HeaderName::from_bytes(f.as_bytes()).ok())
                .collect(),
            origins: Origins::reusing(&config.origins, previous.map(|p| &p.origins)),
            policy,
            rules: Rules::new(&config),
            config: Arc::new(config),
        }
    }
}

/// The settings in force, shared by the proxy and the cache's TTL hook; a reload swaps them.
pub struct Settings(parking_lot::RwLock<Arc<Live>>);

impl Settings {
    /// Settings from a validated configuration.
    pub fn new(config: Config) -> Self {
        Settings(parking_lot::RwLock::new(Arc::new(Live::new(config, None))))
    }

    /// The settings in force now.
    pub fn current(&self) -> Arc<Live> {
        self.0.read().clone()
    }

    /// How long the cache keeps `entry`, by the rules in force (see [`Rules::storage_ttl`]).
    pub fn storage_ttl(&self, entry: &Entry) -> Option<Duration> {
        self.0.read().rules.storage_ttl(entry)
    }
}

/// Options a running proxy cannot change: a reload that changes them keeps their old values
/// (and says which), the rest applies.
pub const RESTART_OPTIONS: [&str; 14] = [
    "listen",
    "admin_listen",
    "namespace",
    "redis_url",
    "l1_max_bytes",
    "max_object_bytes",
    "max_url_bytes",
    "max_header_bytes",
    "header_read_timeout_ms",
    "write_timeout_ms",
    "max_ttl_secs",
    "shutdown_grace_secs",
    "warm_urls",
    "warm_timeout_secs",
];

/// `next` with the options of [`RESTART_OPTIONS`] as in `running`, and the names of those
/// that differed.
fn keep_restart_options(running: &Config, mut next: Config) -> (Config, Vec<&'static str>) {
    let mut differed = Vec::new();
    macro_rules! keep {
        ($($field:ident),*) => {$(
            if next.$field != running.$field {
                differed.push(stringify!($field));
                next.$field = running.$field.clone();
            }
        )*};
    }
    keep!(
        listen,
        admin_listen,
        namespace,
        redis_url,
        l1_max_bytes,
        max_object_bytes,
        max_url_bytes,
        max_header_bytes,
        header_read_timeout_ms,
        write_timeout_ms,
        max_ttl_secs,
        shutdown_grace_secs,
        warm_urls,
        warm_timeout_secs
    );
    (next, differed)
}

/// What decides freshness, shared with the cache's TTL hook.
pub struct Rules {
    targeted: Vec<HeaderName>,
    heuristic: Option<Heuristic>,
    keep: Duration,
    pass_ttl: Duration,
}

impl Rules {
    /// From a (validated) configuration.
    pub fn new(config: &Config) -> Self {
        Rules {
            targeted: config
                .targeted_fields
                .iter()
                .filter_map(|f| HeaderName::from_bytes(f.as_bytes()).ok())
                .collect(),
            heuristic: (config.heuristic_fraction > 0.0).then_some(Heuristic {
                fraction: config.heuristic_fraction,
                max_secs: config.heuristic_max_secs,
            }),
            keep: Duration::from_secs(config.keep_secs),
            pass_ttl: Duration::from_secs(config.pass_ttl_secs),
        }
    }

    fn directives(&self, headers: &HeaderMap) -> ResponseDirectives {
        ResponseDirectives::from_headers(headers, &self.targeted).0
    }

    /// What judging `r` needs, derived once per stored response (not on every hit).
    fn judgement<'r>(&self, r: &'r StoredResponse) -> &'r Judgement {
        r.judged(|r| {
            let cc = self.directives(&r.headers);
            let lifetime = freshness::lifetime(
                r.status,
                &r.headers,
                &cc,
                r.response_time_ms,
                self.heuristic,
            )
            .unwrap_or(0);
            let mut served = r.headers.clone();
            for f in OWN_FIELDS {
                served.remove(f);
            }
            Judgement {
                cc,
                lifetime,
                initial_age: freshness::initial_age(
                    &r.headers,
                    r.request_time_ms,
                    r.response_time_ms,
                ),
                served,
            }
        })
    }

    /// `r`'s directives and its freshness facts at `now`.
    fn judge<'r>(&self, r: &'r StoredResponse, now: u64) -> (&'r ResponseDirectives, Facts) {
        let j = self.judgement(r);
        let age_ms = freshness::current_age_ms(j.initial_age, r.response_time_ms, now);
        let facts = Facts {
            lifetime: j.lifetime,
            age: age_ms / 1000,
            age_ms,
        };
        (&j.cc, facts)
    }

    /// How long the library keeps an entry: its freshness left, plus the longest it may be
    /// served stale or validated.
    pub fn storage_ttl(&self, entry: &Entry) -> Option<Duration> {
        Some(match entry {
            Entry::Pass => self.pass_ttl,
            Entry::Vary(_) => self.keep,
            Entry::Response(r) => {
                let (cc, facts) = self.judge(r, r.response_time_ms);
                let fresh = Duration::from_secs(facts.lifetime.saturating_sub(facts.age));
                let stale = cc
                    .stale_while_revalidate
                    .unwrap_or(0)
                    .max(cc.stale_if_error.unwrap_or(0));
                fresh + self.keep.max(Duration::from_secs(stale))
            }
        })
    }

    /// The tags of an entry (the library calls it for every value it stores).
    pub fn tags(entry: &Entry) -> Vec<String> {
        match entry {
            Entry::Response(r) => r.tags.clone(),
            _ => Vec::new(),
        }
    }
}

/// The prefix tag of a directory (`https://host/a/b/`).
pub fn prefix_tag(dir: &str) -> String {
    format!("p:{:016x}", key::fnv64(dir.as_bytes()))
}

/// The directory prefixes of a primary key, `scheme://host/` down to [`PREFIX_DEPTH`] levels.
fn prefixes(primary: &str) -> Vec<String> {
    let path_start = primary
        .find("://")
        .and_then(|i| primary[i + 3..].find('/').map(|j| i + 3 + j))
        .unwrap_or(primary.len());
    let path = primary[path_start..].split('?').next().unwrap_or("/");
    let mut out = vec![format!("{}/", &primary[..path_start])];
    let mut acc = primary[..path_start].to_string();
    let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    // The last segment is the resource itself unless the path ends with '/'.
    let dirs = if path.ends_with('/') {
        segments.len()
    } else {
        segments.len().saturating_sub(1)
    };
    for seg in segments.iter().take(dirs.min(PREFIX_DEPTH)) {
        acc.push('/');
        acc.push_str(seg);
        out.push(format!("{acc}/"));
    }
    out
}

/// Surrogate keys of a response: `Surrogate-Key` (space-separated) and `Cache-Tag`
/// (comma-separated), as tags.
fn surrogate_keys(headers: &HeaderMap) -> Vec<String> {
    let mut out = Vec::new();
    for v in headers.get_all("surrogate-key") {
        if let Ok(v) = v.to_str() {
            out.extend(v.split_whitespace().map(key::surrogate_tag));
        }
    }
    for v in headers.get_all("cache-tag") {
        if let Ok(v) = v.to_str() {
            out.extend(
                v.split(',')
                    .filter(|t| !t.trim().is_empty())
                    .map(key::surrogate_tag),
            );
        }
    }
    out.sort();
    out.dedup();
    out
}

/// Fields removed from what clients get (this cache's own controls).
const OWN_FIELDS: [&str; 3] = [
    "surrogate-key",
    "surrogate-control",
    "herdwise-cache-control",
];

/// Fields a qualified `private` / `no-cache` cannot withhold for the leading request: framing
/// and what this cache writes itself (the response is built around them), and its own controls
/// (never sent to clients).
const NEVER_RESTORED: [&str; 10] = [
    "content-length",
    "content-range",
    "transfer-encoding",
    "age",
    "via",
    "date",
    "cache-status",
    "surrogate-key",
    "surrogate-control",
    "herdwise-cache-control",
];

/// Fields that describe the stored body: a qualified `private` / `no-cache` naming one of them
/// makes the response unstorable (a copy without them would misdescribe its body).
const DESCRIBES_BODY: [&str; 4] = ["vary", "content-type", "content-encoding", "content-range"];

/// Reads a body up to `limit` bytes: `Ok` with all of it, or `Err` with what was read and the
/// rest of the stream.
async fn read_limited(
    mut body: Incoming,
    limit: usize,
    idle: Duration,
) -> Result<Result<Bytes, (Bytes, Incoming)>, String> {
    let mut buf = bytes::BytesMut::new();
    loop {
        // A slow origin is fine while it sends; one that stops for `idle` is a failed fill.
        let Ok(next) = tokio::time::timeout(idle, body.frame()).await else {
            return Err(format!("no data from the origin for {idle:?}"));
        };
        let Some(frame) = next else {
            break;
        };
        let frame = frame.map_err(|e| e.to_string())?;
        if let Ok(data) = frame.into_data() {
            buf.extend_from_slice(&data);
            if buf.len() > limit {
                return Ok(Err((buf.freeze(), body)));
            }
        }
    }
    Ok(Ok(buf.freeze()))
}

/// A body of `prefix` followed by the rest of `body`.
fn chained(prefix: Bytes, body: Incoming) -> Body {
    let head = futures::stream::once(async move { Ok::<_, BoxError>(Frame::data(prefix)) });
    let rest = BodyStream::new(body).map(|frame| frame.map_err(BoxError::from));
    BodyExt::boxed(StreamBody::new(head.chain(rest)))
}

/// A streamed origin body as a client body.
fn streamed(body: Incoming) -> Body {
    body.map_err(BoxError::from).boxed()
}

/// A variant being looked up: the URL's Vary fields and this request's selector.
#[derive(Debug, Clone)]
struct Variant {
    fields: Vec<String>,
    selector: String,
}

/// What a refused fill leaves for the URL: nothing when this request was the reason (its
/// credentials, cookies, no-store: others may still store the URL), else a pass marker.
fn refusal_entry(reason: &str) -> Option<Entry> {
    match reason {
        "request_no_store" | "authorization" | "cookie" => None,
        _ => Some(Entry::Pass),
    }
}

/// What a lookup found.
enum Looked {
    /// A stored response, from the cache (or collapsed onto another request's fill);
    /// `fallback`: the library answered with it because the load failed.
    Found {
        response: Arc<StoredResponse>,
        source: Source,
        fallback: bool,
    },
    /// This request led the fill.
    Led(Led, Option<Arc<StoredResponse>>),
    /// The URL's responses vary: look up the variant.
    Vary(Vec<String>),
    /// Forward without the cache (a pass marker, or another request's fill that could not
    /// be shared).
    Forward(&'static str),
    /// The origin failed; the stale response the judge saw, if any, and the origin's error
    /// response if this request led the fill.
    Failed(Failure, Option<Arc<StoredResponse>>, Option<Arc<Buffered>>),
}

impl Proxy {
    /// A proxy over `cache` (built by `crate::server::build_cache` with the same `settings`).
    pub fn new(cache: Cache<str, Entry>, settings: Arc<Settings>) -> Self {
        Proxy {
            cache,
            settings,
            revalidating: Mutex::new(HashSet::new()),
            started: Instant::now(),
            outcomes: std::sync::OnceLock::new(),
        }
    }

    /// The cache underneath.
    pub fn cache(&self) -> &Cache<str, Entry> {
        &self.cache
    }

    /// The settings in force.
    pub fn live(&self) -> Arc<Live> {
        self.settings.current()
    }

    /// Applies `config` (validated here) to requests from now on: origins, policy, freshness
    /// rules, fill fields, the admin token and the rest. Options that need a restart
    /// ([`RESTART_OPTIONS`]) keep their running values; their names are returned. Requests in
    /// flight finish under the settings they started with; an origin whose configuration did
    /// not change keeps its connections and its concurrency limit. Entries already stored
    /// keep the freshness they were judged with when stored (as Varnish keeps a TTL).
    pub fn reload(&self, config: Config) -> Result<Vec<&'static str>, crate::Error> {
        config.validate()?;
        let mut slot = self.settings.0.write();
        let (config, differed) = keep_restart_options(&slot.config, config);
        config.validate()?;
        *slot = Arc::new(Live::new(config, Some(&slot)));
        Ok(differed)
    }

    /// Answers one request.
    pub async fn handle(self: &Arc<Self>, req: Request<Incoming>) -> Response<Body> {
        let started = Instant::now();
        let live = self.live();
        let (mut response, status) = self.route(req, &live).await;
        let label = outcome_label(&status);
        let outcomes = self.outcomes.get_or_init(|| {
            OUTCOMES
                .iter()
                .map(|&label| Outcome {
                    label,
                    requests: metrics::counter!(
                        "herdwise_proxy_requests_total",
                        "cache_status" => label
                    ),
                    duration: metrics::histogram!(
                        "herdwise_proxy_request_duration_seconds",
                        "cache_status" => label
                    ),
                })
                .collect()
        });
        if let Some(o) = outcomes.iter().find(|o| o.label == label) {
            o.requests.increment(1);
            o.duration.record(started.elapsed().as_secs_f64());
        }
        let headers = response.headers_mut();
        if let Ok(v) = HeaderValue::from_str(&status.render(&live.config.cache_name)) {
            headers.append(HeaderName::from_static("cache-status"), v);
        }
        headers.append(header::VIA, HeaderValue::from_static("1.1 herdwise"));
        response
    }

    async fn route(
        self: &Arc<Self>,
        req: Request<Incoming>,
        live: &Arc<Live>,
    ) -> (Response<Body>, CacheStatus) {
        let bypass = |detail| CacheStatus {
            fwd: Some(Forward::Bypass),
            detail: Some(detail),
            ..Default::default()
        };
        let target_len = req.uri().path_and_query().map_or(0, |p| p.as_str().len());
        if target_len > live.config.max_url_bytes {
            return (
                text(StatusCode::URI_TOO_LONG, "URI too long\n"),
                bypass("uri-too-long"),
            );
        }
        if req.headers().get_all(header::HOST).iter().count() > 1 {
            // RFC 9112 §3.2: a request with more than one Host is a 400 (and a poisoning
            // attempt: routing and the origin could read different ones).
            return (
                text(StatusCode::BAD_REQUEST, "more than one Host\n"),
                bypass("bad-host"),
            );
        }
        let host = req
            .headers()
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .map(str::to_string)
            .or_else(|| req.uri().authority().map(|a| a.to_string()));
        let Some(host) = host else {
            return (
                text(StatusCode::BAD_REQUEST, "no Host\n"),
                bypass("no-host"),
            );
        };
        // Only configured hosts: anything else would let a client key entries (or reach
        // origins) by a Host of its choosing.
        let Some((host, origin)) = live.origins.route(&host) else {
            return (
                text(StatusCode::MISDIRECTED_REQUEST, "unknown host\n"),
                bypass("unknown-host"),
            );
        };
        let (host, origin) = (host.to_string(), origin.clone());
        match *req.method() {
            Method::GET | Method::HEAD => self.cached(req, host, &origin, live).await,
            ref m if m.as_str() == "PURGE" => {
                if live.config.purge_method {
                    self.purge_request(req, &host, &origin).await
                } else {
                    // Never forwarded: its token would go to the origin, and a 2xx from the
                    // origin would invalidate the URL as an unsafe method's does (§4.4).
                    (
                        text(
                            StatusCode::METHOD_NOT_ALLOWED,
                            "PURGE is not enabled on this listener (purge_method)\n",
                        ),
                        bypass("purge-disabled"),
                    )
                }
            }
            _ => self.forward_other(req, &host, &origin, live).await,
        }
    }

    /// The context of a GET/HEAD (its body dropped: a GET's body means nothing, RFC 9110
    /// §9.3.1).
    fn ctx(&self, req: Request<Incoming>, host: &str, origin: &Origin, live: &Arc<Live>) -> Ctx {
        let (parts, _body) = req.into_parts();
        let pq = parts
            .uri
            .path_and_query()
            .map(|p| p.as_str())
            .unwrap_or("/");
        let primary = key::primary(origin.https, host, pq);
        Ctx {
            live: live.clone(),
            req_cc: RequestDirectives::from_headers(&parts.headers),
            method: parts.method,
            uri: parts.uri,
            headers: parts.headers,
            started_ms: now_ms(),
            host: host.to_string(),
            primary,
            https: origin.https,
        }
    }

    async fn cached(
        self: &Arc<Self>,
        req: Request<Incoming>,
        host: String,
        origin: &Arc<Origin>,
        live: &Arc<Live>,
    ) -> (Response<Body>, CacheStatus) {
        let ctx = Arc::new(self.ctx(req, &host, origin, live));
        let mut key = ctx.primary.clone();
        let mut variant: Option<Variant> = None;
        for _ in 0..2 {
            let looked = if ctx.req_cc.only_if_cached {
                self.only_if_cached(&key, &ctx).await
            } else {
                self.lookup(&key, &ctx, origin, variant.as_ref()).await
            };
            match looked {
                Looked::Vary(fields) if variant.is_none() => {
                    let sel = vary::selector(&ctx.headers, &fields);
                    key = key::variant(&ctx.primary, &sel);
                    variant = Some(Variant {
                        fields,
                        selector: sel,
                    });
                }
                looked => return self.answer(looked, &ctx, &key, origin, variant).await,
            }
        }
        // A variant key holding a Vary marker: only a corrupted store does that.
        self.pass(&ctx, origin, "vary-loop").await
    }

    /// `only-if-cached` (RFC 9111 §5.2.1.7): a stored response that may be used, or 504.
    async fn only_if_cached(&self, key: &str, ctx: &Ctx) -> Looked {
        match self.cache.get(key).await {
            Ok(Some(entry)) => match &*entry {
                Entry::Response(r) => {
                    let (cc, facts) = ctx.live.rules.judge(r, now_ms());
                    match freshness::standing(cc, facts, &ctx.req_cc) {
                        Standing::Stale => Looked::Forward("only-if-cached"),
                        _ => Looked::Found {
                            response: r.clone(),
                            source: Source::L1,
                            fallback: false,
                        },
                    }
                }
                Entry::Vary(fields) => Looked::Vary(fields.clone()),
                Entry::Pass => Looked::Forward("only-if-cached"),
            },
            _ => Looked::Forward("only-if-cached"),
        }
    }

    /// Whether a stored response must be fetched again before it answers this request: stale
    /// for it, and not received after the request began (one received since is good enough, or
    /// requests that waited for another instance's fill would never be answered by it).
    fn must_fetch(&self, r: &StoredResponse, ctx: &Ctx) -> bool {
        // Strictly later: within the millisecond the request began, it may be older.
        if r.response_time_ms > ctx.started_ms {
            return false;
        }
        let (cc, facts) = ctx.live.rules.judge(r, now_ms());
        freshness::standing(cc, facts, &ctx.req_cc) == Standing::Stale
    }

    async fn lookup(
        self: &Arc<Self>,
        key: &str,
        ctx: &Arc<Ctx>,
        origin: &Arc<Origin>,
        variant: Option<&Variant>,
    ) -> Looked {
        let stale_seen: Mutex<Option<Arc<StoredResponse>>> = Mutex::new(None);
        let led: Mutex<Option<Led>> = Mutex::new(None);
        let judge = |e: &Entry| match e {
            Entry::Response(r) => {
                let stale = self.must_fetch(r, ctx);
                if stale {
                    *stale_seen.lock() = Some(r.clone());
                }
                stale
            }
            Entry::Vary(_) | Entry::Pass => false,
        };
        let fill = |_: &str| self.fill(ctx, origin, variant, &stale_seen, &led);
        let fetched = self
            .cache
            .get_or_load_checked(key, &LoadOptions::default(), &judge, fill)
            .await;
        let led = led.into_inner();
        let stale = stale_seen.into_inner();
        let (led, own_error) = match led {
            Some(Led::Failed(b)) => (None, Some(b)),
            other => (other, None),
        };
        match fetched {
            Ok(Fetched {
                value,
                source,
                stale: fallback,
                ..
            }) => match (led, value) {
                (Some(led), value) => {
                    let stored = value.and_then(|v| match &*v {
                        Entry::Response(r) => Some(r.clone()),
                        _ => None,
                    });
                    Looked::Led(led, stored)
                }
                (None, Some(entry)) => match &*entry {
                    Entry::Response(r) => Looked::Found {
                        response: r.clone(),
                        source,
                        fallback,
                    },
                    Entry::Vary(fields) => Looked::Vary(fields.clone()),
                    Entry::Pass => Looked::Forward("pass"),
                },
                // Another request's fill that was not stored (its request could not share it).
                (None, None) => Looked::Forward("not-shared"),
            },
            Err(herdwise::Error::Loader(e)) => {
                let failure = e
                    .downcast_ref::<Failure>()
                    .cloned()
                    .unwrap_or_else(|| Failure::Body(e.to_string()));
                Looked::Failed(failure, stale, own_error)
            }
            Err(herdwise::Error::LoaderTimeout(t)) => {
                Looked::Failed(Failure::Origin(OriginError::Timeout(t)), stale, own_error)
            }
            Err(e) => Looked::Failed(Failure::Body(e.to_string()), stale, own_error),
        }
    }

    /// The request to the origin for a fill: the client's fields minus hop-by-hop ones and its
    /// own preconditions and ranges (a fill fetches the whole, storable response), plus our
    /// validators for `stale`.
    fn fill_request(
        &self,
        ctx: &Ctx,
        stale: Option<&StoredResponse>,
        vary_fields: &[String],
    ) -> Request<OutBody> {
        // Only the allowed fields and those the URL's responses vary on (never the client's
        // preconditions or ranges: a fill fetches the whole, storable response).
        let mut headers = HeaderMap::new();
        let varied = vary_fields
            .iter()
            .filter_map(|f| HeaderName::from_bytes(f.as_bytes()).ok());
        let names: Vec<HeaderName> = ctx
            .live
            .fill_headers
            .iter()
            .cloned()
            .chain([header::HOST])
            .chain(varied)
            .collect();
        for name in &names {
            if headers.contains_key(name) {
                continue;
            }
            for v in ctx.headers.get_all(name) {
                headers.append(name.clone(), v.clone());
            }
        }
        if let Some(s) = stale {
            for (name, value) in conditional::validators(&s.headers) {
                headers.insert(name, value);
            }
        }
        headers.append(header::VIA, HeaderValue::from_static("1.1 herdwise"));
        let mut request = Request::new(empty());
        *request.method_mut() = Method::GET; // HEAD fills as GET (the entry serves both)
        *request.uri_mut() = ctx.uri.clone();
        *request.headers_mut() = headers;
        request
    }

    /// Loads `ctx`'s URL from the origin: the entry to store (`Ok(None)`: nothing to store or
    /// share), telling the leading request what it got through `led`.
    async fn fill(
        &self,
        ctx: &Ctx,
        origin: &Origin,
        variant: Option<&Variant>,
        stale_seen: &Mutex<Option<Arc<StoredResponse>>>,
        led: &Mutex<Option<Led>>,
    ) -> Result<Option<Entry>, Failure> {
        self.fill_from(ctx, origin, variant, stale_seen, led, true)
            .await
    }

    /// [`Self::fill`], validating the stale response the judge saw if `validate`.
    async fn fill_from(
        &self,
        ctx: &Ctx,
        origin: &Origin,
        variant: Option<&Variant>,
        stale_seen: &Mutex<Option<Arc<StoredResponse>>>,
        led: &Mutex<Option<Led>>,
        validate: bool,
    ) -> Result<Option<Entry>, Failure> {
        let stale = if validate {
            stale_seen.lock().clone()
        } else {
            None
        };
        let request_time_ms = now_ms();
        let vary_fields = variant.map(|v| v.fields.as_slice()).unwrap_or(&[]);
        let request = self.fill_request(ctx, stale.as_deref(), vary_fields);
        let response = origin.send(request).await.map_err(Failure::Origin)?;
        let response_time_ms = now_ms();
        origin_metric(response.status());
        let (mut parts, body) = response.into_parts();
        hop::strip(&mut parts.headers);
        if !parts.headers.contains_key(header::DATE) {
            if let Ok(v) =
                HeaderValue::from_str(&httpdate::fmt_http_date(std::time::SystemTime::now()))
            {
                parts.headers.insert(header::DATE, v);
            }
        }
        let status = parts.status;
        if status == StatusCode::NOT_MODIFIED {
            let validated = stale.is_some();
            if let Some(stale) = stale.filter(|s| conditional::selects(&s.headers, &parts.headers))
            {
                // A copy to freshen (the stored one is shared, and judged as it was).
                let mut s = StoredResponse::clone(&stale);
                let cc304 = ctx.live.rules.directives(&parts.headers);
                let except: Vec<String> = cc304
                    .private_fields
                    .iter()
                    .chain(cc304.no_cache_fields.iter())
                    .cloned()
                    .collect();
                conditional::freshen(&mut s.headers, &parts.headers, &except);
                s.request_time_ms = request_time_ms;
                s.response_time_ms = response_time_ms;
                let tags = self.tags_for(&ctx.primary, &s.headers);
                s.tags = tags.clone().unwrap_or_default();
                // The merged response is judged again: the 304 may have made it unstorable.
                let cc = ctx.live.rules.directives(&s.headers);
                let path = key::normalise_path(ctx.uri.path());
                let exchange = Exchange {
                    method: &Method::GET,
                    path: &path,
                    request: &ctx.headers,
                    request_cc: &ctx.req_cc,
                    status: s.status,
                    response: &s.headers,
                    response_cc: &cc,
                    body_len: Some(s.body.len()),
                    heuristic_allowed: ctx.live.rules.heuristic.is_some(),
                };
                let verdict = match tags {
                    Err(reason) => Verdict::Refuse(reason),
                    Ok(_) => storable::verdict(&exchange, &ctx.live.policy),
                };
                if let Verdict::Refuse(reason) = verdict {
                    let mut response = Response::new(full(s.body.clone()));
                    *response.status_mut() = s.status;
                    *response.headers_mut() = s.headers.clone();
                    *led.lock() = Some(Led::Passthrough {
                        response,
                        detail: reason,
                    });
                    return Ok(refusal_entry(reason));
                }
                *led.lock() = Some(Led::Stored {
                    fwd_status: 304,
                    validated: true,
                    variant: None,
                    withheld: HeaderMap::new(),
                });
                return Ok(Some(Entry::Response(Arc::new(s))));
            }
            if validated {
                // A 304 to this cache's own conditional that selects nothing stored (it names
                // another representation): fetch the whole response, never hand a 304 to a
                // client that asked for none (§4.3.4).
                drop((parts, body));
                return Box::pin(self.fill_from(ctx, origin, variant, stale_seen, led, false))
                    .await;
            }
            // A 304 to an unconditional request (a broken origin): pass it on as it is.
            let response = Response::from_parts(parts, streamed(body));
            *led.lock() = Some(Led::Passthrough {
                response,
                detail: "unselected-304",
            });
            return Ok(None);
        }
        if matches!(status.as_u16(), 500 | 502 | 503 | 504) {
            let body = match tokio::time::timeout(
                Duration::from_secs(5),
                read_limited(body, MAX_ERROR_BODY, Duration::from_secs(5)),
            )
            .await
            {
                Ok(Ok(Ok(bytes))) => bytes,
                Ok(Ok(Err((prefix, _)))) => prefix,
                _ => Bytes::new(),
            };
            // The origin's own error page goes to this request only (it may be one user's);
            // the requests that waited for it get the status alone.
            let buffered = Arc::new(Buffered {
                status,
                headers: parts.headers,
                body,
            });
            *led.lock() = Some(Led::Failed(buffered));
            return Err(Failure::Status(status));
        }
        let cc = ctx.live.rules.directives(&parts.headers);
        let fill_path = key::normalise_path(ctx.uri.path());
        let body_len = parts
            .headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<usize>().ok());
        let exchange = Exchange {
            method: &Method::GET,
            path: &fill_path,
            request: &ctx.headers,
            request_cc: &ctx.req_cc,
            status,
            response: &parts.headers,
            response_cc: &cc,
            body_len,
            heuristic_allowed: ctx.live.rules.heuristic.is_some()
                && parts.headers.contains_key(header::LAST_MODIFIED),
        };
        if let Verdict::Refuse(reason) = storable::verdict(&exchange, &ctx.live.policy) {
            let response = Response::from_parts(parts, streamed(body));
            *led.lock() = Some(Led::Passthrough {
                response,
                detail: reason,
            });
            return Ok(refusal_entry(reason));
        }
        let read = read_limited(body, ctx.live.policy.max_object_bytes, origin.timeout())
            .await
            .map_err(Failure::Body)?;
        let body = match read {
            Ok(body) => body,
            Err((prefix, rest)) => {
                let response = Response::from_parts(parts, chained(prefix, rest));
                *led.lock() = Some(Led::Passthrough {
                    response,
                    detail: "too-large",
                });
                return Ok(Some(Entry::Pass));
            }
        };
        let mut headers = parts.headers;
        // A field that says what the body is cannot be left out of the stored copy: without
        // it the copy would misdescribe its body (without `Vary`, one client's variant would
        // answer everyone). Such a response is not stored.
        let describes_body = cc
            .private_fields
            .iter()
            .chain(cc.no_cache_fields.iter())
            .any(|f| {
                DESCRIBES_BODY.iter().any(|d| f.eq_ignore_ascii_case(d))
                    && headers.contains_key(f.as_str())
            });
        if describes_body {
            let mut response = Response::new(full(body));
            *response.status_mut() = status;
            *response.headers_mut() = headers;
            *led.lock() = Some(Led::Passthrough {
                response,
                detail: "withheld-representation-field",
            });
            return Ok(Some(Entry::Pass));
        }
        // Qualified private / no-cache: stored without the named fields (§5.2.2.4, §5.2.2.7).
        let mut withheld = HeaderMap::new();
        for f in cc.private_fields.iter().chain(cc.no_cache_fields.iter()) {
            let Ok(name) = HeaderName::from_bytes(f.as_bytes()) else {
                continue;
            };
            if NEVER_RESTORED.contains(&name.as_str()) {
                // Framing is rebuilt for the stored copy anyway; the rest is this cache's.
                if name != header::CONTENT_LENGTH {
                    headers.remove(&name);
                }
                continue;
            }
            if let http::header::Entry::Occupied(e) = headers.entry(&name) {
                let (name, values) = e.remove_entry_mult();
                for v in values {
                    withheld.append(name.clone(), v);
                }
            }
        }
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from(body.len()));
        let tags = match self.tags_for(&ctx.primary, &headers) {
            Ok(tags) => tags,
            Err(reason) => {
                // Not stored after all: this response goes out whole.
                let mut response = Response::new(full(body));
                *response.status_mut() = status;
                for (name, value) in &withheld {
                    headers.append(name.clone(), value.clone());
                }
                *response.headers_mut() = headers;
                *led.lock() = Some(Led::Passthrough {
                    response,
                    detail: reason,
                });
                return Ok(Some(Entry::Pass));
            }
        };
        let mut stored = StoredResponse {
            status,
            headers,
            body,
            request_time_ms,
            response_time_ms,
            variant: variant.map(|v| v.selector.clone()),
            tags,
            memo: Memo::default(),
        };
        if let Some(v) = variant {
            // A variant's fill: if the origin now varies on other fields, the response goes
            // under the key those fields select, and the URL's marker says so (§4.1).
            let now_fields = vary::fields(&stored.headers).unwrap_or_default();
            if now_fields != v.fields {
                let entry_key = if now_fields.is_empty() {
                    stored.variant = None;
                    ctx.primary.clone()
                } else {
                    let sel = vary::selector(&ctx.headers, &now_fields);
                    stored.variant = Some(sel.clone());
                    key::variant(&ctx.primary, &sel)
                };
                let stored = Arc::new(stored);
                let _ = self
                    .cache
                    .set(&entry_key, Entry::Response(stored.clone()))
                    .await;
                if !now_fields.is_empty() {
                    let _ = self.cache.set(&ctx.primary, Entry::Vary(now_fields)).await;
                }
                *led.lock() = Some(Led::Stored {
                    fwd_status: status.as_u16(),
                    validated: false,
                    variant: Some(stored),
                    withheld,
                });
                return Ok(None);
            }
        }
        if variant.is_none() {
            if let Some(fields) = vary::fields(&stored.headers).filter(|f| !f.is_empty()) {
                // The URL varies: the response goes under its variant's key, the URL's key
                // says so.
                let sel = vary::selector(&ctx.headers, &fields);
                stored.variant = Some(sel.clone());
                let variant_key = key::variant(&ctx.primary, &sel);
                let stored = Arc::new(stored);
                let _ = self
                    .cache
                    .set(&variant_key, Entry::Response(stored.clone()))
                    .await;
                *led.lock() = Some(Led::Stored {
                    fwd_status: status.as_u16(),
                    validated: false,
                    variant: Some(stored),
                    withheld,
                });
                return Ok(Some(Entry::Vary(fields)));
            }
        }
        *led.lock() = Some(Led::Stored {
            fwd_status: status.as_u16(),
            validated: false,
            variant: None,
            withheld,
        });
        Ok(Some(Entry::Response(Arc::new(stored))))
    }

    /// The tags of a response stored for `primary`: its URL, its directories, its surrogate
    /// keys.
    /// `Err` when it has more surrogate keys than an entry can carry: such a response is not
    /// stored (dropping some keys would make their purges miss it).
    fn tags_for(&self, primary: &str, headers: &HeaderMap) -> Result<Vec<String>, &'static str> {
        let keys = surrogate_keys(headers);
        if keys.len() > MAX_SURROGATE_KEYS {
            return Err("too-many-surrogate-keys");
        }
        let mut tags = vec![key::url_tag(primary)];
        tags.extend(prefixes(primary).iter().map(|p| prefix_tag(p)));
        tags.extend(keys);
        Ok(tags)
    }

    /// Turns what the lookup found into the client's response.
    async fn answer(
        self: &Arc<Self>,
        looked: Looked,
        ctx: &Arc<Ctx>,
        key: &str,
        origin: &Arc<Origin>,
        variant: Option<Variant>,
    ) -> (Response<Body>, CacheStatus) {
        let now = now_ms();
        let selector = variant.as_ref().map(|v| v.selector.clone());
        match looked {
            Looked::Found {
                response,
                source,
                fallback,
            } => {
                if selector.is_some() && response.variant != selector {
                    return self.pass(ctx, origin, "variant-collision").await;
                }
                let (cc, facts) = ctx.live.rules.judge(&response, now);
                let standing = freshness::standing(cc, facts, &ctx.req_cc);
                // The library's own fallback after a failed load: HTTP decides whether it may
                // be used (stale-if-error), never the library.
                if fallback && standing == Standing::Stale {
                    let failure = Failure::Body("the origin failed".into());
                    return self.failed(failure, Some(response), None, ctx, now);
                }
                let mut status = CacheStatus {
                    hit: source != Source::Origin,
                    ttl: Some(facts.ttl()),
                    ..Default::default()
                };
                if source == Source::Origin {
                    // Waited for another request's fill in this process.
                    status.fwd = Some(Forward::UriMiss);
                    status.collapsed = true;
                    status.fwd_status = Some(response.status.as_u16());
                }
                if standing == Standing::StaleWhileRevalidate {
                    status.detail = Some("stale-while-revalidate");
                    self.revalidate_behind(key, ctx, origin, variant.clone());
                }
                (self.serve(&response, ctx, now), status)
            }
            Looked::Led(
                Led::Stored {
                    fwd_status,
                    validated,
                    variant,
                    withheld,
                },
                stored,
            ) => {
                let Some(response) = variant.or(stored) else {
                    return self.pass(ctx, origin, "store-failed").await;
                };
                let (_, facts) = ctx.live.rules.judge(&response, now);
                let status = CacheStatus {
                    fwd: Some(if validated {
                        Forward::Stale
                    } else if selector.is_some() {
                        Forward::VaryMiss
                    } else {
                        Forward::UriMiss
                    }),
                    fwd_status: Some(fwd_status),
                    ttl: Some(facts.ttl()),
                    stored: true,
                    ..Default::default()
                };
                let mut served = self.serve(&response, ctx, now);
                if !withheld.is_empty() && served.status() != StatusCode::NOT_MODIFIED {
                    for (name, value) in &withheld {
                        served.headers_mut().append(name.clone(), value.clone());
                    }
                }
                (served, status)
            }
            Looked::Led(Led::Passthrough { response, detail }, _) => {
                let fwd_status = response.status().as_u16();
                let response = self.finish_passthrough(response, ctx);
                let status = CacheStatus {
                    fwd: Some(Forward::UriMiss),
                    fwd_status: Some(fwd_status),
                    detail: Some(detail),
                    ..Default::default()
                };
                (response, status)
            }
            Looked::Vary(_) => self.pass(ctx, origin, "vary").await,
            Looked::Forward("only-if-cached") => (
                text(StatusCode::GATEWAY_TIMEOUT, "not cached (only-if-cached)\n"),
                CacheStatus {
                    detail: Some("only-if-cached"),
                    ..Default::default()
                },
            ),
            Looked::Forward(detail) => self.pass(ctx, origin, detail).await,
            Looked::Failed(failure, stale, own) => self.failed(failure, stale, own, ctx, now),
            Looked::Led(Led::Failed(own), _) => {
                let failure = Failure::Status(own.status);
                self.failed(failure, None, Some(own), ctx, now)
            }
        }
    }

    /// The origin failed: a stale response within stale-if-error, else the failure.
    fn failed(
        &self,
        failure: Failure,
        stale: Option<Arc<StoredResponse>>,
        own: Option<Arc<Buffered>>,
        ctx: &Ctx,
        now: u64,
    ) -> (Response<Body>, CacheStatus) {
        let fwd_status = match &failure {
            Failure::Status(code) => Some(code.as_u16()),
            _ => None,
        };
        if let Some(s) = stale {
            let (cc, facts) = ctx.live.rules.judge(&s, now);
            if freshness::usable_on_error(cc, facts, &ctx.req_cc) {
                let status = CacheStatus {
                    hit: true,
                    fwd: Some(Forward::Stale),
                    fwd_status,
                    ttl: Some(facts.ttl()),
                    detail: Some("stale-if-error"),
                    ..Default::default()
                };
                return (self.serve(&s, ctx, now), status);
            }
        }
        let status = CacheStatus {
            fwd: Some(Forward::UriMiss),
            fwd_status,
            detail: Some("origin-error"),
            ..Default::default()
        };
        let response = match (failure, own) {
            // This request led the fill: the origin's own error response.
            (Failure::Status(_), Some(b)) => {
                let mut r = Response::new(if ctx.method == Method::HEAD {
                    empty()
                } else {
                    full(b.body.clone())
                });
                *r.status_mut() = b.status;
                *r.headers_mut() = b.headers.clone();
                for f in OWN_FIELDS {
                    r.headers_mut().remove(f);
                }
                r.headers_mut()
                    .insert(header::CONTENT_LENGTH, HeaderValue::from(b.body.len()));
                r
            }
            // It waited for another request's fill: the status, not that request's page.
            (Failure::Status(code), None) => text(code, "the origin answered with an error\n"),
            (Failure::Origin(OriginError::Timeout(_)), _) => {
                text(StatusCode::GATEWAY_TIMEOUT, "origin timed out\n")
            }
            (Failure::Origin(OriginError::Overloaded(_)), _) => {
                text(StatusCode::SERVICE_UNAVAILABLE, "origin overloaded\n")
            }
            (Failure::Origin(OriginError::Unreachable(_)) | Failure::Body(_), _) => {
                text(StatusCode::BAD_GATEWAY, "origin unreachable\n")
            }
        };
        (response, status)
    }

    /// A stale-while-revalidate answer was given: refresh the entry in the background, once
    /// per URL in this process (and, through the lease, once across instances).
    fn revalidate_behind(
        self: &Arc<Self>,
        key: &str,
        ctx: &Arc<Ctx>,
        origin: &Arc<Origin>,
        variant: Option<Variant>,
    ) {
        {
            let mut running = self.revalidating.lock();
            if running.len() >= MAX_REVALIDATIONS || !running.insert(key.to_string()) {
                return;
            }
        }
        struct Done(Arc<Proxy>, String);
        impl Drop for Done {
            fn drop(&mut self) {
                self.0.revalidating.lock().remove(&self.1);
            }
        }
        let done = Done(self.clone(), key.to_string());
        let (proxy, key, origin) = (self.clone(), key.to_string(), origin.clone());
        // The background request has no client: its own context, no client directives.
        let bg = Arc::new(Ctx {
            live: ctx.live.clone(),
            method: Method::GET,
            uri: ctx.uri.clone(),
            headers: ctx.headers.clone(),
            req_cc: RequestDirectives {
                max_age: Some(0),
                ..Default::default()
            },
            started_ms: now_ms(),
            host: ctx.host.clone(),
            primary: ctx.primary.clone(),
            https: ctx.https,
        });
        tokio::spawn(async move {
            let _done = done;
            let _ = proxy.lookup(&key, &bg, &origin, variant.as_ref()).await;
        });
    }

    /// Serves a stored response to the client: its conditionals, a range, HEAD, `Age`.
    fn serve(&self, r: &StoredResponse, ctx: &Ctx, now: u64) -> Response<Body> {
        let (_, facts) = ctx.live.rules.judge(r, now);
        let mut headers = ctx.live.rules.judgement(r).served.clone();
        headers.insert(header::AGE, HeaderValue::from(facts.age));
        // Preconditions apply to a 2xx representation only (RFC 9110 §13.2.1).
        if r.status.is_success()
            && conditional::evaluate(&ctx.method, &ctx.headers, &r.headers)
                == Precondition::NotModified
        {
            let mut not_modified = HeaderMap::new();
            for name in [
                header::CACHE_CONTROL,
                header::CONTENT_LOCATION,
                header::DATE,
                header::ETAG,
                header::EXPIRES,
                header::VARY,
                header::LAST_MODIFIED,
                header::AGE,
            ] {
                for v in headers.get_all(&name) {
                    not_modified.append(name.clone(), v.clone());
                }
            }
            let mut response = Response::new(empty());
            *response.status_mut() = StatusCode::NOT_MODIFIED;
            *response.headers_mut() = not_modified;
            return response;
        }
        let head = ctx.method == Method::HEAD;
        if r.status == StatusCode::OK && conditional::if_range_holds(&ctx.headers, &r.headers) {
            if let Some(range) = ctx.headers.get(header::RANGE).and_then(|v| v.to_str().ok()) {
                match crate::range::parse(range, r.body.len()) {
                    crate::range::Ranged::One(start, end) => {
                        headers.insert(
                            header::CONTENT_RANGE,
                            HeaderValue::from_str(&format!("bytes {start}-{end}/{}", r.body.len()))
                                .unwrap_or(HeaderValue::from_static("bytes */0")),
                        );
                        headers.insert(header::CONTENT_LENGTH, HeaderValue::from(end - start + 1));
                        let body = if head {
                            empty()
                        } else {
                            full(r.body.slice(start..=end))
                        };
                        let mut response = Response::new(body);
                        *response.status_mut() = StatusCode::PARTIAL_CONTENT;
                        *response.headers_mut() = headers;
                        return response;
                    }
                    crate::range::Ranged::Unsatisfiable => {
                        let mut response = Response::new(empty());
                        *response.status_mut() = StatusCode::RANGE_NOT_SATISFIABLE;
                        if let Ok(v) = HeaderValue::from_str(&format!("bytes */{}", r.body.len())) {
                            response.headers_mut().insert(header::CONTENT_RANGE, v);
                        }
                        return response;
                    }
                    crate::range::Ranged::Whole => {}
                }
            }
        }
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from(r.body.len()));
        let mut response = Response::new(if head { empty() } else { full(r.body.clone()) });
        *response.status_mut() = r.status;
        *response.headers_mut() = headers;
        response
    }

    /// A response passed through from the origin: our fields out, HEAD without a body.
    fn finish_passthrough(&self, mut response: Response<Body>, ctx: &Ctx) -> Response<Body> {
        for f in OWN_FIELDS {
            response.headers_mut().remove(f);
        }
        if ctx.method == Method::HEAD {
            let (parts, _) = response.into_parts();
            return Response::from_parts(parts, empty());
        }
        response
    }

    /// Forwards a GET/HEAD without the cache (not coalesced, never stored).
    async fn pass(
        &self,
        ctx: &Ctx,
        origin: &Origin,
        detail: &'static str,
    ) -> (Response<Body>, CacheStatus) {
        // Passed through as the client sent it (never stored, so no field can poison an
        // entry): its preconditions and ranges included.
        let mut headers = ctx.headers.clone();
        hop::strip(&mut headers);
        headers.append(header::VIA, HeaderValue::from_static("1.1 herdwise"));
        let mut request = Request::new(empty());
        *request.method_mut() = ctx.method.clone();
        *request.uri_mut() = ctx.uri.clone();
        *request.headers_mut() = headers;
        let status = CacheStatus {
            fwd: Some(Forward::Bypass),
            detail: Some(detail),
            ..Default::default()
        };
        match origin.send(request).await {
            Ok(response) => {
                origin_metric(response.status());
                let fwd = response.status().as_u16();
                let (mut parts, body) = response.into_parts();
                hop::strip(&mut parts.headers);
                let response =
                    self.finish_passthrough(Response::from_parts(parts, streamed(body)), ctx);
                (
                    response,
                    CacheStatus {
                        fwd_status: Some(fwd),
                        ..status
                    },
                )
            }
            Err(e) => {
                origin_metric_failed();
                (error_response(&e), status)
            }
        }
    }

    /// Any other method: forwarded with its body (bounded); a successful unsafe one
    /// invalidates the target URI and its Location / Content-Location of the same host, on
    /// every instance (RFC 9111 §4.4).
    async fn forward_other(
        &self,
        req: Request<Incoming>,
        host: &str,
        origin: &Origin,
        live: &Live,
    ) -> (Response<Body>, CacheStatus) {
        let unsafe_method = !matches!(
            *req.method(),
            Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE
        );
        let pq = req
            .uri()
            .path_and_query()
            .map(|p| p.as_str().to_string())
            .unwrap_or_else(|| "/".into());
        let (mut parts, body) = req.into_parts();
        hop::strip(&mut parts.headers);
        parts
            .headers
            .append(header::VIA, HeaderValue::from_static("1.1 herdwise"));
        let too_large = parts
            .headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<usize>().ok())
            .is_some_and(|n| n > live.config.max_request_body_bytes);
        let status = CacheStatus {
            fwd: Some(Forward::Bypass),
            detail: Some("method"),
            ..Default::default()
        };
        if too_large {
            return (
                text(StatusCode::PAYLOAD_TOO_LARGE, "request body too large\n"),
                status,
            );
        }
        // A body past the limit ends the request to the origin with an error.
        let body: OutBody = Limited::new(body, live.config.max_request_body_bytes).boxed();
        let request = Request::from_parts(parts, body);
        match origin.send(request).await {
            Ok(response) => {
                origin_metric(response.status());
                let code = response.status();
                if unsafe_method && (code.is_success() || code.is_redirection()) {
                    let primary = key::primary(origin.https, host, &pq);
                    self.invalidate_url(&primary).await;
                    for name in [header::LOCATION, header::CONTENT_LOCATION] {
                        if let Some(target) = response
                            .headers()
                            .get(&name)
                            .and_then(|v| v.to_str().ok())
                            .and_then(|v| same_host_primary(v, host, origin.https))
                        {
                            self.invalidate_url(&target).await;
                        }
                    }
                }
                let fwd = code.as_u16();
                let (mut parts, body) = response.into_parts();
                hop::strip(&mut parts.headers);
                for f in OWN_FIELDS {
                    parts.headers.remove(f);
                }
                (
                    Response::from_parts(parts, streamed(body)),
                    CacheStatus {
                        fwd_status: Some(fwd),
                        ..status
                    },
                )
            }
            Err(e) => {
                origin_metric_failed();
                (error_response(&e), status)
            }
        }
    }

    /// Invalidates a URL and its variants, on every instance.
    pub async fn invalidate_url(&self, primary: &str) {
        let _ = self.cache.invalidate(primary).await;
        let _ = self.cache.invalidate_tag(&key::url_tag(primary)).await;
    }

    /// Whether `req` carries the admin token.
    pub fn authorized(&self, headers: &HeaderMap) -> bool {
        let live = self.live();
        let Some(token) = live.config.admin_token.as_deref() else {
            return false;
        };
        let given = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or("");
        constant_time_eq(given.as_bytes(), token.as_bytes())
    }

    /// `PURGE <url>` on the client listener (with the token): the URL and its variants, or
    /// with `Surrogate-Key: a b` those keys.
    async fn purge_request(
        &self,
        req: Request<Incoming>,
        host: &str,
        origin: &Origin,
    ) -> (Response<Body>, CacheStatus) {
        let status = CacheStatus {
            fwd: Some(Forward::Bypass),
            detail: Some("purge"),
            ..Default::default()
        };
        if !self.authorized(req.headers()) {
            return (
                text(StatusCode::FORBIDDEN, "purge needs the admin token\n"),
                status,
            );
        }
        if let Some(keys) = req
            .headers()
            .get("surrogate-key")
            .and_then(|v| v.to_str().ok())
        {
            let keys: Vec<&str> = keys.split_whitespace().collect();
            if keys.len() > MAX_PURGE_KEYS {
                return (
                    text(StatusCode::BAD_REQUEST, "too many keys in one purge\n"),
                    status,
                );
            }
            for k in keys {
                let _ = self.cache.invalidate_tag(&key::surrogate_tag(k)).await;
            }
            purge_metric("tag");
            return (text(StatusCode::OK, "purged keys\n"), status);
        }
        let pq = req
            .uri()
            .path_and_query()
            .map(|p| p.as_str())
            .unwrap_or("/");
        self.invalidate_url(&key::primary(origin.https, host, pq))
            .await;
        purge_metric("url");
        (text(StatusCode::OK, "purged\n"), status)
    }

    /// Uptime, for `/healthz`.
    pub fn uptime(&self) -> Duration {
        self.started.elapsed()
    }
}

/// `Location` / `Content-Location` as a primary key, if on the same host.
fn same_host_primary(value: &str, host: &str, https: bool) -> Option<String> {
    if value.starts_with('/') && !value.starts_with("//") {
        return Some(key::primary(https, host, value));
    }
    let uri: http::Uri = value.parse().ok()?;
    let authority = uri.authority()?;
    let same = key::normalise_host(authority.as_str(), https) == key::normalise_host(host, https);
    same.then(|| {
        key::primary(
            https,
            host,
            uri.path_and_query().map(|p| p.as_str()).unwrap_or("/"),
        )
    })
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn error_response(e: &OriginError) -> Response<Body> {
    match e {
        OriginError::Overloaded(_) => text(StatusCode::SERVICE_UNAVAILABLE, "origin overloaded\n"),
        OriginError::Timeout(_) => text(StatusCode::GATEWAY_TIMEOUT, "origin timed out\n"),
        OriginError::Unreachable(_) => text(StatusCode::BAD_GATEWAY, "origin unreachable\n"),
    }
}

fn outcome_label(status: &CacheStatus) -> &'static str {
    if status.collapsed {
        return "collapsed";
    }
    match (status.hit, status.fwd) {
        (true, Some(Forward::Stale)) => "stale",
        (true, _) if status.detail == Some("stale-while-revalidate") => "stale",
        (true, _) => "hit",
        (false, Some(Forward::Stale)) => "revalidated",
        (false, Some(Forward::Bypass)) => "bypass",
        (false, Some(_)) if status.stored => "miss",
        (false, Some(_)) => "uncached",
        (false, None) => "error",
    }
}

fn origin_metric(status: StatusCode) {
    let class = match status.as_u16() {
        100..=199 => "1xx",
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        _ => "5xx",
    };
    metrics::counter!("herdwise_proxy_origin_requests_total", "status" => class).increment(1);
}

fn origin_metric_failed() {
    metrics::counter!("herdwise_proxy_origin_requests_total", "status" => "failed").increment(1);
}

/// Counts a purge.
pub fn purge_metric(kind: &'static str) {
    metrics::counter!("herdwise_proxy_purges_total", "kind" => kind).increment(1);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reload_keeps_exactly_the_restart_options() {
        let running = Config::default();
        let mut next = Config {
            listen: "127.0.0.1:1".parse().unwrap(),
            admin_listen: "127.0.0.1:2".parse().unwrap(),
            namespace: "other".into(),
            redis_url: Some("redis://127.0.0.1:1".into()),
            ..Default::default()
        };
        next.l1_max_bytes += 1;
        next.max_object_bytes += 1;
        next.max_url_bytes += 1;
        next.max_header_bytes += 1;
        next.header_read_timeout_ms += 1;
        next.write_timeout_ms += 1;
        next.max_ttl_secs += 1;
        next.shutdown_grace_secs += 1;
        next.warm_urls.push("http://www.example.com/".into());
        next.warm_timeout_secs += 1;
        next.keep_secs += 1;
        next.admin_token = Some("new".into());
        let (kept, differed) = keep_restart_options(&running, next);
        assert_eq!(differed, RESTART_OPTIONS);
        let mut expected = running.clone();
        expected.keep_secs += 1;
        expected.admin_token = Some("new".into());
        assert_eq!(kept, expected);
    }

    #[test]
    fn every_outcome_has_its_series() {
        let fwds = [
            None,
            Some(Forward::UriMiss),
            Some(Forward::VaryMiss),
            Some(Forward::Request),
            Some(Forward::Stale),
            Some(Forward::Bypass),
        ];
        for hit in [false, true] {
            for fwd in fwds {
                for stored in [false, true] {
                    for collapsed in [false, true] {
                        for detail in [None, Some("stale-while-revalidate")] {
                            let status = CacheStatus {
                                hit,
                                fwd,
                                stored,
                                collapsed,
                                detail,
                                ..Default::default()
                            };
                            assert!(OUTCOMES.contains(&outcome_label(&status)), "{status:?}");
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn directory_prefixes() {
        assert_eq!(
            prefixes("https://h/a/b/c.css?x=1"),
            ["https://h/", "https://h/a/", "https://h/a/b/"]
        );
        assert_eq!(prefixes("http://h/"), ["http://h/"]);
        assert_eq!(prefixes("http://h/a/b/c/d/e/f/").len(), 1 + PREFIX_DEPTH);
        assert_eq!(
            same_host_primary("/x", "h", false).as_deref(),
            Some("http://h/x")
        );
        assert_eq!(
            same_host_primary("http://H/y", "h", false).as_deref(),
            Some("http://h/y")
        );
        assert_eq!(same_host_primary("http://other/y", "h", false), None);
        assert!(constant_time_eq(b"abc", b"abc") && !constant_time_eq(b"abc", b"abd"));
    }
}
