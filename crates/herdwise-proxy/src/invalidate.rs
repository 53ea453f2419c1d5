//! The admin API's namespace invalidations: `POST /invalidate/<namespace>?key=42&tag=t&...`
//! invalidates keys, tags, key prefixes or a whole namespace of *any* Herdwise cache on the
//! proxy's Redis — the services' caches as much as the proxy's own — with the effect of
//! `Cache::invalidate*` and of the `herdwise invalidate` CLI (both use `herdwise::Invalidator`):
//! the L2 entries go and every instance's L1 hears it on the namespace's backplane. A writer in
//! any language that can send an HTTP request can keep every Rust instance's L1 true.
//!
//! Query parameters (repeatable ones may be given many times, 1 000 items at most in all):
//! `key` (parts separated by `:`, as the CLI), `tag`, `prefix` (by whole parts), `clear=true`,
//! `schema_version` (default 1), `transport=pubsub|streams`, `stream_max_len` (default 10 000),
//! `timeout_ms` (how long to wait for retries to confirm; default 2 000, at most 30 000),
//! `hot_key_replicas` (the services' copy count, so that keys' copies are deleted too).
//!
//! Values are %-decoded once by the query (`+` is a space); a key's parts are then split at
//! `:` and %-decoded again as [`KeyParts::parse`] does, so `key=7:en%253AGB` names the stored
//! key `7:en%3AGB`, the service's `(7, "en:GB")`.
//!
//! Answers (JSON): 200 when the store confirmed everything; 503 with `"sent": true` when some
//! invalidations are still being retried here (`unconfirmed` counts the namespace's retries
//! still queued, this request's and earlier ones'; the proxy keeps retrying them) or failed
//! without a retry (`"resend": true`, e.g. a `clear` the store refused: send it again), 503 with
//! `"sent": false` when nothing was sent (the store does not answer, or too many namespaces are
//! being retried); 400 for a bad key, tag, parameter or a %-escape that is not UTF-8 (nothing
//! was sent); 409 when the proxy has no shared store (an embedded one has no other instances
//! to tell).
//!
//! Contract: one `Invalidator` per (namespace, schema version, transport, copy count), at most
//! [`MAX_NAMESPACES`] held (idle ones are dropped to make room); owns nothing else.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use herdwise::{BackplaneTransport, Invalidator, KeyParts, Store};
use http::StatusCode;
use parking_lot::Mutex;
use serde_json::json;

/// Invalidators held at once.
pub const MAX_NAMESPACES: usize = 64;
/// Longest tag (as `herdwise::Invalidator` takes them).
const MAX_TAG_BYTES: usize = 1 << 20;
/// Keys, tags and prefixes in one request.
const MAX_ITEMS: usize = 1_000;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Transport {
    PubSub,
    Streams(usize),
}

/// What an invalidator is made for: namespace, schema version, transport, copy count.
type Id = (String, u32, Transport, Option<u8>);

/// The namespace invalidations of the admin API.
pub struct Invalidators {
    store: Option<Arc<dyn Store>>,
    held: Mutex<HashMap<Id, Invalidator>>,
}

/// A parsed request.
struct Request {
    keys: Vec<KeyParts>,
    tags: Vec<String>,
    prefixes: Vec<KeyParts>,
    clear: bool,
    schema_version: u32,
    transport: Transport,
    replicas: Option<u8>,
    timeout: Duration,
}

pub(crate) fn bad(why: impl Into<String>) -> (StatusCode, String) {
    (
        StatusCode::BAD_REQUEST,
        json!({ "error": why.into() }).to_string(),
    )
}

impl Invalidators {
    /// Invalidations through `store` (none: every request answers 409).
    pub fn new(store: Option<Arc<dyn Store>>) -> Self {
        Invalidators {
            store,
            held: Mutex::new(HashMap::new()),
        }
    }

    fn parse(params: &[(String, String)]) -> Result<Request, (StatusCode, String)> {
        let mut request = Request {
            keys: Vec::new(),
            tags: Vec::new(),
            prefixes: Vec::new(),
            clear: false,
            schema_version: 1,
            transport: Transport::PubSub,
            replicas: None,
            timeout: Duration::from_millis(2_000),
        };
        let mut streams = false;
        let mut max_len = 10_000usize;
        for (name, value) in params {
            let number = |max: u64| {
                value
                    .parse::<u64>()
                    .ok()
                    .filter(|n| *n <= max)
                    .ok_or_else(|| bad(format!("{name}: a number up to {max} expected")))
            };
            match name.as_str() {
                "key" => request
                    .keys
                    .push(KeyParts::parse(value).map_err(|e| bad(e.to_string()))?),
                "prefix" => request
                    .prefixes
                    .push(KeyParts::parse(value).map_err(|e| bad(e.to_string()))?),
                "hot_key_replicas" => {
                    request.replicas = Some(number(u8::MAX as u64)? as u8);
                }
                "tag" => {
                    // The invalidator's own rules (it takes tags up to 1 MiB): checked here so
                    // that nothing is sent for a request with a bad tag.
                    if value.is_empty()
                        || value.len() > MAX_TAG_BYTES
                        || value.chars().any(char::is_control)
                    {
                        return Err(bad(format!(
                            "tag {:?}: 1 to {MAX_TAG_BYTES} bytes, no control characters",
                            value.chars().take(64).collect::<String>()
                        )));
                    }
                    request.tags.push(value.clone());
                }
                "clear" => {
                    request.clear = match value.as_str() {
                        "true" | "1" => true,
                        "false" | "0" => false,
                        _ => return Err(bad("clear: true or false expected")),
                    }
                }
                "schema_version" => request.schema_version = number(u32::MAX as u64)? as u32,
                "transport" => {
                    streams = match value.as_str() {
                        "pubsub" => false,
                        "streams" => true,
                        _ => return Err(bad("transport: pubsub or streams expected")),
                    }
                }
                "stream_max_len" => max_len = number(100_000_000)? as usize,
                "timeout_ms" => request.timeout = Duration::from_millis(number(30_000)?),
                other => return Err(bad(format!("unknown parameter {other:?}"))),
            }
        }
        if streams {
            request.transport = Transport::Streams(max_len);
        }
        let items = request.keys.len() + request.tags.len() + request.prefixes.len();
        if items == 0 && !request.clear {
            return Err(bad("nothing to invalidate: key, tag, prefix or clear=true"));
        }
        if items > MAX_ITEMS {
            return Err(bad(format!("at most {MAX_ITEMS} keys, tags and prefixes")));
        }
        Ok(request)
    }

    /// The invalidator for a namespace, made (and held) on first use.
    fn invalidator(
        &self,
        store: &Arc<dyn Store>,
        namespace: &str,
        request: &Request,
    ) -> Result<Invalidator, (StatusCode, String)> {
        let id = (
            namespace.to_string(),
            request.schema_version,
            request.transport,
            request.replicas,
        );
        if let Some(found) = self.held.lock().get(&id) {
            return Ok(found.clone());
        }
        // Built (the namespace checked) before anything held is dropped for it.
        let mut builder = Invalidator::builder(namespace)
            .shared_store(store.clone())
            .schema_version(request.schema_version);
        if let Transport::Streams(max_len) = request.transport {
            builder = builder.backplane_transport(BackplaneTransport::Streams { max_len });
        }
        if let Some(copies) = request.replicas {
            builder = builder.hot_key_replicas(copies);
        }
        let invalidator = builder.build().map_err(|e| bad(e.to_string()))?;
        let mut held = self.held.lock();
        if let Some(found) = held.get(&id) {
            return Ok(found.clone()); // another request made it meanwhile
        }
        if held.len() >= MAX_NAMESPACES {
            // Idle ones go (nothing left to retry); busy ones stay.
            held.retain(|_, i| i.unconfirmed() > 0);
        }
        if held.len() >= MAX_NAMESPACES {
            return Err((
                StatusCode::SERVICE_UNAVAILABLE,
                json!({ "error": format!("{MAX_NAMESPACES} namespaces are being retried; try again"), "sent": false })
                    .to_string(),
            ));
        }
        held.insert(id, invalidator.clone());
        Ok(invalidator)
    }

    /// Serves `POST /invalidate/<namespace>` with the query's `params` (decoded): the status
    /// and a JSON body.
    pub async fn handle(
        &self,
        namespace: &str,
        params: &[(String, String)],
    ) -> (StatusCode, String) {
        let Some(store) = &self.store else {
            return (
                StatusCode::CONFLICT,
                json!({ "error": "the proxy runs on an embedded store (no redis_url): no other instance to tell" })
                    .to_string(),
            );
        };
        if namespace.is_empty() || namespace.contains('/') {
            return bad("/invalidate/<namespace> expected");
        }
        let request = match Self::parse(params) {
            Ok(r) => r,
            Err(e) => return e,
        };
        let invalidator = match self.invalidator(store, namespace, &request) {
            Ok(i) => i,
            Err(e) => return e,
        };
        // Every key is checked before anything is sent.
        for k in request.keys.iter().chain(&request.prefixes) {
            if let Err(e) = invalidator.stored_key(k) {
                return bad(e.to_string());
            }
        }
        if !invalidator.remote_healthy().await {
            return (
                StatusCode::SERVICE_UNAVAILABLE,
                json!({ "error": "the store does not answer", "sent": false }).to_string(),
            );
        }
        let mut failures = Vec::new();
        let mut cleared = false;
        if request.clear {
            match invalidator.clear().await {
                Ok(()) => cleared = true,
                Err(e) => failures.push(format!("clear: {e}")),
            }
        }
        let mut keys = Vec::new();
        for k in &request.keys {
            match invalidator.key(k).await {
                Ok(stored) => keys.push(stored),
                Err(e) => failures.push(e.to_string()),
            }
        }
        let mut tags = Vec::new();
        for t in &request.tags {
            match invalidator.tag(t).await {
                Ok(()) => tags.push(t.clone()),
                Err(e) => failures.push(format!("tag {t}: {e}")),
            }
        }
        let mut prefixes = Vec::new();
        for p in &request.prefixes {
            let stored = invalidator.stored_key(p).unwrap_or_default();
            match invalidator.prefix(p).await {
                Ok(removed) => prefixes.push(json!({ "prefix": stored, "removed": removed })),
                // Queued for retry here: waited for below.
                Err(e) => failures.push(format!("prefix {stored}: {e} (retrying)")),
            }
        }
        let unconfirmed = invalidator.wait_confirmed(request.timeout).await;
        // A failure not queued for retry here (a failed `clear`): the client must send again.
        let resend = failures.iter().any(|f| !f.ends_with("(retrying)"));
        let status = if unconfirmed == 0 && !resend {
            StatusCode::OK
        } else {
            StatusCode::SERVICE_UNAVAILABLE
        };
        let body = json!({
            "namespace": namespace,
            "keys": keys,
            "tags": tags,
            "prefixes": prefixes,
            "cleared": cleared,
            "sent": true,
            "resend": resend,
            "unconfirmed": unconfirmed,
            "failures": failures,
        });
        (status, body.to_string())
    }
}
