//! Test rig: a scripted origin (an in-process HTTP server whose answers each test sets per
//! path, counting and recording the requests it gets), a proxy in front of it, and a client.
#![allow(dead_code)]

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use parking_lot::Mutex;
use tokio::net::TcpListener;

/// What the origin answers.
#[derive(Clone, Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Bytes,
    pub delay: Duration,
}

impl Reply {
    pub fn ok(body: &str) -> Self {
        Reply {
            status: 200,
            headers: vec![("content-type".into(), "text/plain".into())],
            body: Bytes::from(body.to_string()),
            delay: Duration::ZERO,
        }
    }
    pub fn status(mut self, status: u16) -> Self {
        self.status = status;
        self
    }
    pub fn header(mut self, name: &str, value: &str) -> Self {
        self.headers
            .push((name.to_ascii_lowercase(), value.to_string()));
        self
    }
    /// Replaces a header.
    pub fn set(mut self, name: &str, value: &str) -> Self {
        let name = name.to_ascii_lowercase();
        self.headers.retain(|(n, _)| *n != name);
        self.headers.push((name, value.to_string()));
        self
    }
    pub fn delay(mut self, delay: Duration) -> Self {
        self.delay = delay;
        self
    }
}

/// A request the origin received.
#[derive(Clone, Debug)]
pub struct Seen {
    pub method: Method,
    pub path: String,
    pub headers: HeaderMap,
}

type Script = Arc<dyn Fn(&Seen, usize) -> Reply + Send + Sync>;

/// The scripted origin.
#[derive(Clone, Default)]
pub struct Origin {
    routes: Arc<Mutex<HashMap<String, Script>>>,
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl Origin {
    /// Starts it on a free loopback port.
    pub async fn start() -> (Origin, SocketAddr) {
        let origin = Origin::default();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let served = origin.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let origin = served.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |req: Request<Incoming>| {
                        let origin = origin.clone();
                        async move { Ok::<_, Infallible>(origin.answer(req).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        (origin, addr)
    }

    async fn answer(&self, req: Request<Incoming>) -> Response<Full<Bytes>> {
        let seen = Seen {
            method: req.method().clone(),
            path: req
                .uri()
                .path_and_query()
                .map(|p| p.as_str().to_string())
                .unwrap_or_default(),
            headers: req.headers().clone(),
        };
        let _ = req.into_body().collect().await;
        let (script, n) = {
            let mut all = self.seen.lock();
            all.push(seen.clone());
            let n = all.iter().filter(|s| s.path == seen.path).count();
            let routes = self.routes.lock();
            let path_only = seen.path.split('?').next().unwrap_or("").to_string();
            (
                routes
                    .get(&seen.path)
                    .or_else(|| routes.get(&path_only))
                    .cloned(),
                n,
            )
        };
        let reply = match script {
            Some(script) => script(&seen, n),
            None => Reply::ok("no route").status(404),
        };
        if !reply.delay.is_zero() {
            tokio::time::sleep(reply.delay).await;
        }
        let mut response = Response::new(Full::new(reply.body.clone()));
        *response.status_mut() = StatusCode::from_u16(reply.status).unwrap();
        for (name, value) in &reply.headers {
            response.headers_mut().append(
                HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_str(value).unwrap(),
            );
        }
        response
    }

    /// Answers `path` with `reply` every time.
    pub fn route(&self, path: &str, reply: Reply) {
        self.routes
            .lock()
            .insert(path.to_string(), Arc::new(move |_, _| reply.clone()));
    }

    /// Answers `path` by a function of the request and its number (1-based) for the path.
    pub fn script(&self, path: &str, f: impl Fn(&Seen, usize) -> Reply + Send + Sync + 'static) {
        self.routes.lock().insert(path.to_string(), Arc::new(f));
    }

    /// Requests seen for `path` (query included if given).
    pub fn hits(&self, path: &str) -> usize {
        self.seen.lock().iter().filter(|s| s.path == path).count()
    }

    /// The last request seen for `path`.
    pub fn last(&self, path: &str) -> Option<Seen> {
        self.seen
            .lock()
            .iter()
            .rev()
            .find(|s| s.path == path)
            .cloned()
    }
}

/// A proxy in front of a fresh origin, with the embedded store.
pub struct Rig {
    pub origin: Origin,
    pub running: herdwise_proxy::Running,
    pub client: Client,
}

pub const TOKEN: &str = "a-test-token-of-some-length";

/// The configuration for an origin at `upstream`, serving host `example.test`.
pub fn config(upstream: SocketAddr) -> herdwise_proxy::Config {
    let mut config = herdwise_proxy::Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        admin_listen: "127.0.0.1:0".parse().unwrap(),
        admin_token: Some(TOKEN.into()),
        purge_method: true,
        ..Default::default()
    };
    config
        .add_origin_flag(&format!("example.test=http://{upstream}"))
        .unwrap();
    config
}

impl Rig {
    pub async fn start() -> Rig {
        Rig::with(|_| {}).await
    }

    pub async fn with(tune: impl FnOnce(&mut herdwise_proxy::Config)) -> Rig {
        let (origin, upstream) = Origin::start().await;
        let mut config = config(upstream);
        tune(&mut config);
        let running = herdwise_proxy::start(config, None).await.unwrap();
        let client = Client::new(running.addr);
        Rig {
            origin,
            running,
            client,
        }
    }

    /// GET `path` with extra headers.
    pub async fn get(&self, path: &str, headers: &[(&str, &str)]) -> Answer {
        self.client
            .send(Method::GET, path, headers, Bytes::new())
            .await
    }
}

/// A response, read whole.
#[derive(Debug, Clone)]
pub struct Answer {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: String,
}

impl Answer {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
    pub fn cache_status(&self) -> &str {
        self.header("cache-status").unwrap_or("")
    }
    pub fn hit(&self) -> bool {
        self.cache_status().contains("; hit")
    }
}

/// An HTTP/1.1 client.
#[derive(Clone)]
pub struct Client {
    addr: SocketAddr,
    inner: hyper_util::client::legacy::Client<
        hyper_util::client::legacy::connect::HttpConnector,
        Full<Bytes>,
    >,
}

impl Client {
    pub fn new(addr: SocketAddr) -> Self {
        Client {
            addr,
            inner:
                hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                    .build_http(),
        }
    }

    /// Sends a request for host `example.test` unless a `host` header is given.
    pub async fn send(
        &self,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
        body: Bytes,
    ) -> Answer {
        let mut req = Request::new(Full::new(body));
        *req.method_mut() = method;
        *req.uri_mut() = format!("http://{}{}", self.addr, path).parse().unwrap();
        let mut has_host = false;
        for (name, value) in headers {
            has_host |= name.eq_ignore_ascii_case("host");
            req.headers_mut().append(
                HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_str(value).unwrap(),
            );
        }
        if !has_host {
            req.headers_mut()
                .insert(http::header::HOST, HeaderValue::from_static("example.test"));
        }
        let response = self.inner.request(req).await.unwrap();
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let body = response.into_body().collect().await.unwrap().to_bytes();
        Answer {
            status,
            headers,
            body: String::from_utf8_lossy(&body).into_owned(),
        }
    }
}

/// An HTTP date `secs` from now (negative: in the past).
pub fn date(secs: i64) -> String {
    let now = std::time::SystemTime::now();
    let t = if secs >= 0 {
        now + Duration::from_secs(secs as u64)
    } else {
        now - Duration::from_secs((-secs) as u64)
    };
    httpdate::fmt_http_date(t)
}
