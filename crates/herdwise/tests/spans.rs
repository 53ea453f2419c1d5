//! Traces: a read's span tree, as a subscriber sees it.

mod common;

use common::OriginError;
use herdwise::Cache;

mod spans {
    use std::sync::{Arc, Mutex};

    use tracing::span::{Attributes, Id, Record};
    use tracing_subscriber::layer::{Context, Layer};
    use tracing_subscriber::registry::LookupSpan;

    /// A span as seen: name, parent's name, fields.
    #[derive(Debug, Clone)]
    pub struct Seen {
        pub name: String,
        pub parent: Option<String>,
        pub fields: Vec<(String, String)>,
    }

    impl Seen {
        pub fn field(&self, name: &str) -> Option<&str> {
            self.fields
                .iter()
                .rev()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.as_str())
        }
    }

    #[derive(Clone, Default)]
    pub struct Collect(pub Arc<Mutex<Vec<Seen>>>);

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

    impl<S: tracing::Subscriber + for<'a> LookupSpan<'a>> Layer<S> for Collect {
        fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
            let mut fields = Fields(Vec::new());
            attrs.record(&mut fields);
            if let Some(span) = ctx.span(id) {
                span.extensions_mut().insert(fields);
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
            let Some(span) = ctx.span(&id) else { return };
            let fields = span
                .extensions_mut()
                .remove::<Fields>()
                .map_or_else(Vec::new, |f| f.0);
            self.0.lock().unwrap().push(Seen {
                name: span.name().to_string(),
                parent: span.parent().map(|p| p.name().to_string()),
                fields,
            });
        }
    }
}

/// A miss's span tree: `herdwise.get` (result, tier) over the L2 calls (OpenTelemetry's
/// database fields) and the load. (The subscriber is global: a scoped one misses the spans
/// whose callsite a background task reached first, on another thread.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_miss_has_a_span_tree() {
    use tracing_subscriber::layer::SubscriberExt;
    let collect = spans::Collect::default();
    tracing::subscriber::set_global_default(tracing_subscriber::registry().with(collect.clone()))
        .unwrap();
    let server = common::redis();
    let cache: Cache<u64, String> = Cache::builder("obs-spans")
        .store(common::store(&server).await)
        .build()
        .unwrap();
    cache
        .get_or_load(&1, |_| async {
            Ok::<_, OriginError>(Some("v".to_string()))
        })
        .await
        .unwrap();
    let seen = collect.0.lock().unwrap().clone();
    let get = seen
        .iter()
        .find(|s| s.name == "herdwise.get")
        .expect("a read span");
    assert_eq!(get.parent, None);
    assert_eq!(get.field("result"), Some("miss"));
    assert_eq!(get.field("tier"), Some("origin"));
    assert_eq!(get.field("method"), Some("get_or_load"));
    let load = seen
        .iter()
        .find(|s| s.name == "herdwise.load")
        .expect("a load span");
    assert_eq!(load.parent.as_deref(), Some("herdwise.get"));
    assert_eq!(load.field("result"), Some("success"));
    let l2: Vec<_> = seen
        .iter()
        .filter(|s| s.name == "herdwise.l2" && s.parent.is_some())
        .collect();
    let ops: Vec<_> = l2
        .iter()
        .filter_map(|s| s.field("db.operation.name"))
        .collect();
    assert!(ops.contains(&"lease") && ops.contains(&"set"), "{ops:?}");
    assert!(
        l2.len() >= 2,
        "the read of L2 (with the lease) and the fill: {l2:?}"
    );
    for call in &l2 {
        // (Background calls, e.g. the backplane's, are roots of their own.)
        assert_eq!(call.parent.as_deref(), Some("herdwise.get"));
        assert_eq!(call.field("db.system.name"), Some("redis"));
        assert!(call.field("db.operation.name").is_some());
        assert_eq!(
            call.field("server.address"),
            Some(format!("127.0.0.1:{}", server.port()).as_str())
        );
    }
}
