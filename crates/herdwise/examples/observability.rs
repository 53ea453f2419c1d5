//! Observability: a cache under a small read workload, its metrics served for Prometheus, and
//! the span tree of one miss printed.
//!
//! Run: `cargo run --release --example observability --features prometheus`
//! (then scrape `http://127.0.0.1:9184/metrics`, or point the Grafana dashboard of
//! `dashboards/herdwise.json` at a Prometheus that does). Arguments: `[address] [seconds]`,
//! default `127.0.0.1:9184 30`.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use herdwise::prometheus::MetricsServer;
use herdwise::{Cache, MemoryStore};
use tracing::span::{Attributes, Id, Record};
use tracing::Instrument;
use tracing_subscriber::layer::{Context, Layer, SubscriberExt};
use tracing_subscriber::registry::LookupSpan;

#[derive(Debug, thiserror::Error)]
#[error("database unavailable")]
pub struct DbError;

/// A stand-in for a database: 2 ms a query, keys above 900 absent, key 13 failing.
pub async fn query(id: u64, queries: &AtomicU64) -> Result<Option<String>, DbError> {
    queries.fetch_add(1, Ordering::Relaxed);
    tokio::time::sleep(Duration::from_millis(2)).await;
    match id {
        13 => Err(DbError),
        0..=900 => Ok(Some(format!("row {id}"))),
        _ => Ok(None),
    }
}

/// What [`start`] runs: the metrics server and the workload, until dropped.
pub struct Demo {
    pub server: MetricsServer,
    pub cache: Cache<u64, String>,
    workload: tokio::task::JoinHandle<()>,
}

impl Drop for Demo {
    fn drop(&mut self) {
        self.workload.abort();
    }
}

/// Serves metrics on `addr` and starts two instances reading a skewed key space (1 000
/// keys, 10 % of them hot) through one shared L2, 2 000 reads a second, entries living 2 s.
pub async fn start(addr: SocketAddr) -> Result<Demo, Box<dyn std::error::Error>> {
    // First: caches take their metric handles when built.
    let server = herdwise::prometheus::serve(addr).await?;
    let l2 = MemoryStore::new();
    let build = || {
        Cache::<u64, String>::builder("catalog")
            .store(l2.clone())
            .ttl(Duration::from_secs(2))
            .hot_keys(5)
            .build()
    };
    let (cache, other) = (build()?, build()?);
    let queries = Arc::new(AtomicU64::new(0));
    let workload = {
        let (cache, other) = (cache.clone(), other.clone());
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(1));
            let mut n: u64 = 0;
            loop {
                tick.tick().await;
                for _ in 0..2 {
                    n = n.wrapping_add(0x9e37_79b9_7f4a_7c15);
                    let key = if n % 10 < 7 { n % 100 } else { n % 1_000 };
                    let instance = if n % 3 == 0 { &other } else { &cache };
                    let queries = queries.clone();
                    let _ = instance
                        .get_or_load(&key, |id| async move { query(*id, &queries).await })
                        .await;
                }
                if n % 997 == 0 {
                    let _ = cache.invalidate(&(n % 100)).await;
                }
            }
        })
    };
    Ok(Demo {
        server,
        cache,
        workload,
    })
}

/// Reads one cold key inside a `demo.request` span: with [`TreePrinter`] installed, its span
/// tree is printed.
pub async fn show_a_miss(cache: &Cache<u64, String>) {
    let queries = AtomicU64::new(0);
    let read = cache.get_or_load(&5_000_000, |_| async { query(42, &queries).await });
    let _ = read.instrument(tracing::info_span!("demo.request")).await;
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let addr: SocketAddr = args.next().as_deref().unwrap_or("127.0.0.1:9184").parse()?;
    let seconds: u64 = args.next().as_deref().unwrap_or("30").parse()?;
    // Global: a scoped subscriber misses spans whose callsite another thread reached first.
    let filter = tracing_subscriber::filter::Targets::new()
        .with_target("herdwise", tracing::Level::DEBUG)
        .with_target("observability", tracing::Level::INFO);
    tracing::subscriber::set_global_default(
        tracing_subscriber::registry().with(TreePrinter.with_filter(filter)),
    )?;
    let demo = start(addr).await?;
    println!("metrics: http://{}/metrics", demo.server.local_addr());
    println!("the span tree of one miss:");
    show_a_miss(&demo.cache).await;
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    Ok(())
}

/// Prints the tree of each `demo.request` span when it closes: names, fields, durations.
#[derive(Default)]
pub struct TreePrinter;

struct Node {
    line: String,
    opened: Instant,
    children: Vec<String>,
}

#[derive(Default)]
struct Fields(Vec<(String, String)>);

impl tracing::field::Visit for Fields {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        self.0
            .push((field.name().to_string(), format!("{value:?}")));
    }
    fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
        self.0.push((field.name().to_string(), value.to_string()));
    }
}

impl<S: tracing::Subscriber + for<'a> LookupSpan<'a>> Layer<S> for TreePrinter {
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        let mut fields = Fields::default();
        attrs.record(&mut fields);
        if let Some(span) = ctx.span(id) {
            span.extensions_mut().insert(fields);
            span.extensions_mut().insert(Node {
                line: span.name().to_string(),
                opened: Instant::now(),
                children: Vec::new(),
            });
        }
    }

    fn on_record(&self, id: &Id, values: &Record<'_>, ctx: Context<'_, S>) {
        if let Some(span) = ctx.span(id) {
            if let Some(fields) = span.extensions_mut().get_mut::<Fields>() {
                values.record(fields);
            }
        }
    }

    fn on_close(&self, id: Id, ctx: Context<'_, S>) {
        let Some(span) = ctx.span(&id) else {
            return;
        };
        let (node, fields) = {
            let mut ext = span.extensions_mut();
            (ext.remove::<Node>(), ext.remove::<Fields>())
        };
        let (Some(node), Some(fields)) = (node, fields) else {
            return;
        };
        let fields: HashMap<_, _> = fields.0.into_iter().collect();
        let mut shown: Vec<_> = fields.iter().map(|(k, v)| format!("{k}={v}")).collect();
        shown.sort();
        let mut text = format!(
            "{} {:?} [{}]",
            node.line,
            node.opened.elapsed(),
            shown.join(" ")
        );
        for child in &node.children {
            for line in child.lines() {
                text.push_str("\n  ");
                text.push_str(line);
            }
        }
        match span.parent() {
            Some(parent) => {
                if let Some(parent_node) = parent.extensions_mut().get_mut::<Node>() {
                    parent_node.children.push(text);
                }
            }
            None if span.name() == "demo.request" => println!("{text}"),
            None => {}
        }
    }
}
