//! The example service: a product catalog in PostgreSQL (sqlx), served over HTTP (axum), read
//! through a Herdwise cache whose L2 is Redis, shared by every instance of the service.
//!
//! What it shows, route by route:
//!
//! | route | pattern |
//! |---|---|
//! | `GET /products/{id}` | read-through (`Cache::fetch` with a registered loader): one query per key however many readers, a remembered 404, stale-if-error when PostgreSQL fails |
//! | `PUT /products/{id}` | write-around (`Cache::write_around`): the row is updated, then the key is invalidated on L2 and on every instance's L1 |
//! | `POST /categories/{category}/discount` | tag invalidation: one `UPDATE` of many rows, then `Cache::invalidate_tag("category:<name>")` (each product carries its category's tag, `CacheBuilder::tags_from`) |
//! | `GET /healthz` | liveness: the process answers (never Redis or PostgreSQL: a restart would not fix them) |
//! | `GET /readyz` | readiness: warmed and PostgreSQL answers (`ReadinessProbe::require_warm()`); whether Redis answers is reported, not required (a Redis outage must not take every instance out at once: they serve from L1 and PostgreSQL) |
//! | `GET /metrics` | the Prometheus scrape (`herdwise::prometheus`) |
//!
//! Values come back from the cache as `Arc<Product>`; a handler returns `Json(&*product)`
//! (serde serializes through the reference), no clone.
//!
//! Contract: [`App`] owns the pool and the cache; the router holds clones of it and nothing
//! else. Invalid input is a 4xx with a one-line reason, a failing dependency a 503 (its
//! details logged, not sent); nothing here panics on a request. A write, once started, runs
//! to its invalidation even if the client goes away (the handler's future may be dropped; the
//! write's task is not).
//!
//! ```no_run
//! # async fn run() -> Result<(), herdwise_example_service::Error> {
//! use herdwise_example_service::App;
//! let app = App::connect("postgres://postgres@127.0.0.1:5432/postgres", "redis://127.0.0.1:6379", None).await?;
//! app.migrate_and_seed(1_000).await?;
//! app.warm(100).await?;
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:8080").await?;
//! herdwise_example_service::serve(listener, app, std::future::pending()).await?;
//! # Ok(()) }
//! ```

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use herdwise::prometheus::Prometheus;
use herdwise::{Cache, ReadinessProbe, RedisStore};
use serde::{Deserialize, Serialize};
use sqlx::postgres::{PgPool, PgPoolOptions, PgRow};
use sqlx::Row;

pub mod client;

/// The cache's namespace: `herdwise invalidate --namespace catalog --key 42` reaches it.
pub const NAMESPACE: &str = "catalog";

/// The highest price accepted (a billion dollars): far from `bigint`'s range, so that no
/// discount arithmetic overflows in PostgreSQL.
pub const MAX_PRICE_CENTS: i64 = 100_000_000_000;

/// The categories the seed data uses.
pub const CATEGORIES: [&str; 4] = ["shoes", "hats", "bags", "books"];

/// What can fail while starting the service.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// PostgreSQL refused or failed.
    #[error("postgres: {0}")]
    Database(#[from] sqlx::Error),
    /// Redis refused the connection, or the cache's configuration is wrong.
    #[error("cache: {0}")]
    Cache(#[from] herdwise::Error),
    /// A listener or a server process.
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
}

/// A product as the database stores it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Product {
    /// The primary key.
    pub id: i64,
    /// Display name.
    pub name: String,
    /// One of [`CATEGORIES`] (or any other): the cache tags the entry `category:<category>`.
    pub category: String,
    /// Price in cents.
    pub price_cents: i64,
    /// When the row last changed, as PostgreSQL prints it.
    pub updated_at: String,
}

impl Product {
    fn from_row(row: &PgRow) -> Result<Self, sqlx::Error> {
        Ok(Product {
            id: row.try_get("id")?,
            name: row.try_get("name")?,
            category: row.try_get("category")?,
            price_cents: row.try_get("price_cents")?,
            updated_at: row.try_get("updated_at")?,
        })
    }
}

/// A partial update (`PUT /products/{id}`): absent fields keep their value.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct ProductUpdate {
    /// New name (1 to 200 bytes).
    pub name: Option<String>,
    /// New category (see [`valid_category`]).
    pub category: Option<String>,
    /// New price (0 to [`MAX_PRICE_CENTS`]).
    pub price_cents: Option<i64>,
}

/// `POST /categories/{category}/discount`.
#[derive(Debug, Serialize, Deserialize)]
pub struct Discount {
    /// 1 to 90.
    pub percent: i64,
}

/// A category is 1 to 64 of `a-z`, `0-9`, `-`: it becomes a cache tag and a URL segment.
pub fn valid_category(category: &str) -> bool {
    (1..=64).contains(&category.len())
        && category
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

/// The service: a PostgreSQL pool and the product cache. Cheap to clone.
#[derive(Clone)]
pub struct App {
    inner: Arc<Inner>,
}

struct Inner {
    pool: PgPool,
    products: Cache<i64, Product>,
    prometheus: Option<Prometheus>,
    /// `SELECT`s of one product the cache let through to PostgreSQL.
    origin_reads: Arc<AtomicU64>,
}

const SELECT_PRODUCT: &str =
    "SELECT id, name, category, price_cents, updated_at::text AS updated_at FROM products WHERE id = $1";

impl App {
    /// Connects to PostgreSQL and Redis (an error if either refuses: wrong URL, credentials)
    /// and builds the cache. `prometheus`: the installed exporter, served on `/metrics`.
    pub async fn connect(
        database_url: &str,
        redis_url: &str,
        prometheus: Option<Prometheus>,
    ) -> Result<Self, Error> {
        let pool = PgPoolOptions::new()
            .max_connections(16)
            .acquire_timeout(Duration::from_secs(2))
            .connect(database_url)
            .await?;
        let store = RedisStore::connect(redis_url)
            .await
            .map_err(herdwise::Error::from)?;
        let origin_reads = Arc::new(AtomicU64::new(0));
        let loader = {
            let (pool, origin_reads) = (pool.clone(), origin_reads.clone());
            move |id: &i64| {
                let (pool, origin_reads, id) = (pool.clone(), origin_reads.clone(), *id);
                async move {
                    origin_reads.fetch_add(1, Ordering::Relaxed);
                    let row = sqlx::query(SELECT_PRODUCT)
                        .bind(id)
                        .fetch_optional(&pool)
                        .await?;
                    row.as_ref().map(Product::from_row).transpose()
                }
            }
        };
        let products = Cache::builder(NAMESPACE)
            .store(store)
            .ttl(Duration::from_secs(300))
            // PostgreSQL down: serve what we had for up to 10 minutes past its freshness.
            .stale_if_error(Duration::from_secs(600))
            .l1_max_bytes(32 << 20)
            .tags_from(|p: &Product| vec![format!("category:{}", p.category)])
            .loader(loader)
            .build()?;
        Ok(App {
            inner: Arc::new(Inner {
                pool,
                products,
                prometheus,
                origin_reads,
            }),
        })
    }

    /// Creates the table if it is missing and inserts products `1..=count` that are missing.
    pub async fn migrate_and_seed(&self, count: i64) -> Result<(), Error> {
        sqlx::query(
            "CREATE TABLE IF NOT EXISTS products (
                id BIGINT PRIMARY KEY,
                name TEXT NOT NULL,
                category TEXT NOT NULL,
                price_cents BIGINT NOT NULL CHECK (price_cents >= 0),
                updated_at TIMESTAMPTZ NOT NULL DEFAULT now())",
        )
        .execute(&self.inner.pool)
        .await?;
        sqlx::query(
            "INSERT INTO products (id, name, category, price_cents)
             SELECT i, 'product ' || i, ($2::text[])[1 + i % array_length($2::text[], 1)], i * 100
             FROM generate_series(1, $1) AS i
             ON CONFLICT (id) DO NOTHING",
        )
        .bind(count)
        .bind(CATEGORIES.map(String::from).to_vec())
        .execute(&self.inner.pool)
        .await?;
        Ok(())
    }

    /// Loads the `count` lowest ids into the cache (the readiness probe waits for it).
    pub async fn warm(&self, count: i64) -> Result<usize, Error> {
        let ids: Vec<i64> = sqlx::query_scalar("SELECT id FROM products ORDER BY id LIMIT $1")
            .bind(count)
            .fetch_all(&self.inner.pool)
            .await?;
        let report = self.inner.products.warm(ids).await?;
        Ok(report.loaded)
    }

    /// How many single-product `SELECT`s reached PostgreSQL (the cache's misses that loaded).
    pub fn origin_reads(&self) -> u64 {
        self.inner.origin_reads.load(Ordering::Relaxed)
    }

    /// The product cache (for operations: `hot_keys`, `breaker_state`, ...).
    pub fn products(&self) -> &Cache<i64, Product> {
        &self.inner.products
    }

    /// The HTTP routes.
    pub fn router(&self) -> Router {
        Router::new()
            .route("/products/{id}", get(get_product).put(put_product))
            .route("/categories/{category}/discount", post(discount))
            .route("/healthz", get(|| async { "ok\n" }))
            .route("/readyz", get(readyz))
            .route("/metrics", get(metrics))
            .with_state(self.clone())
    }
}

/// Serves `app` on `listener` until `shutdown` completes, then lets requests in flight finish.
pub async fn serve(
    listener: tokio::net::TcpListener,
    app: App,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), Error> {
    axum::serve(listener, app.router())
        .with_graceful_shutdown(shutdown)
        .await?;
    Ok(())
}

/// Binds `addr` and serves `app` in a task; the address it listens on, and the task.
pub async fn spawn(
    addr: SocketAddr,
    app: App,
) -> Result<(SocketAddr, tokio::task::JoinHandle<Result<(), Error>>), Error> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    let task = tokio::spawn(serve(listener, app, std::future::pending()));
    Ok((local, task))
}

fn reply(status: StatusCode, text: impl Into<String>) -> Response {
    let mut text = text.into();
    text.push('\n');
    (status, text).into_response()
}

/// A cache error: the origin failed with nothing stale to serve. The details (a database
/// error, a host name) are logged, not sent to the client.
fn cache_error(e: herdwise::Error) -> Response {
    match e {
        herdwise::Error::InvalidKey(why) => reply(StatusCode::BAD_REQUEST, why.to_string()),
        e => {
            tracing::warn!(error = %e, "request failed");
            reply(
                StatusCode::SERVICE_UNAVAILABLE,
                "the catalog is unavailable; retry",
            )
        }
    }
}

async fn get_product(State(app): State<App>, Path(id): Path<i64>) -> Response {
    match app.inner.products.fetch(&id).await {
        // `Arc<Product>` out of the cache, serialized through the reference: no clone.
        Ok(Some(product)) => Json(&*product).into_response(),
        Ok(None) => reply(StatusCode::NOT_FOUND, format!("no product {id}")),
        Err(e) => cache_error(e),
    }
}

async fn put_product(
    State(app): State<App>,
    Path(id): Path<i64>,
    Json(update): Json<ProductUpdate>,
) -> Response {
    if let Some(name) = &update.name {
        if name.is_empty() || name.len() > 200 {
            return reply(StatusCode::UNPROCESSABLE_ENTITY, "name: 1 to 200 bytes");
        }
    }
    if let Some(category) = &update.category {
        if !valid_category(category) {
            return reply(
                StatusCode::UNPROCESSABLE_ENTITY,
                "category: 1 to 64 of a-z, 0-9, -",
            );
        }
    }
    if update
        .price_cents
        .is_some_and(|p| !(0..=MAX_PRICE_CENTS).contains(&p))
    {
        return reply(
            StatusCode::UNPROCESSABLE_ENTITY,
            format!("price_cents: 0 to {MAX_PRICE_CENTS}"),
        );
    }
    let pool = app.inner.pool.clone();
    let products = app.inner.products.clone();
    // Write-around: the row first, then the key goes from L2 and every instance's L1 (the
    // next read loads the row as PostgreSQL has it, `updated_at` included). In a task of its
    // own: a client that hangs up must not leave a committed row with its old value cached.
    let written = tokio::spawn(async move {
        products
            .write_around(&id, || async move {
                sqlx::query(
                    "UPDATE products SET name = COALESCE($2, name),
                    category = COALESCE($3, category),
                    price_cents = COALESCE($4, price_cents),
                    updated_at = now()
                 WHERE id = $1",
                )
                .bind(id)
                .bind(update.name)
                .bind(update.category)
                .bind(update.price_cents)
                .execute(&pool)
                .await
                .map(|done| done.rows_affected())
            })
            .await
    })
    .await;
    match written {
        Ok(Ok(0)) => reply(StatusCode::NOT_FOUND, format!("no product {id}")),
        Ok(Ok(_)) => StatusCode::NO_CONTENT.into_response(),
        Ok(Err(e)) => cache_error(e),
        Err(_) => reply(StatusCode::INTERNAL_SERVER_ERROR, "the write's task failed"),
    }
}

async fn discount(
    State(app): State<App>,
    Path(category): Path<String>,
    Json(discount): Json<Discount>,
) -> Response {
    if !valid_category(&category) {
        return reply(
            StatusCode::UNPROCESSABLE_ENTITY,
            "category: 1 to 64 of a-z, 0-9, -",
        );
    }
    if !(1..=90).contains(&discount.percent) {
        return reply(StatusCode::UNPROCESSABLE_ENTITY, "percent: 1 to 90");
    }
    // The UPDATE and the invalidation in a task of their own: a client that hangs up after
    // the commit must not leave the category's old prices cached.
    let (pool, products, tag) = (
        app.inner.pool.clone(),
        app.inner.products.clone(),
        format!("category:{category}"),
    );
    let percent = discount.percent;
    let done = tokio::spawn(async move {
        let rows = sqlx::query(
            "UPDATE products SET price_cents = price_cents * (100 - $2) / 100, updated_at = now()
             WHERE category = $1",
        )
        .bind(&category)
        .bind(percent)
        .execute(&pool)
        .await?
        .rows_affected();
        // Every cached product of the category, on every instance, in one call. A failure
        // here is queued for retry by the cache; the rows are updated either way.
        if let Err(e) = products.invalidate_tag(&tag).await {
            tracing::warn!(error = %e, %category, "tag invalidation queued for retry");
        }
        Ok::<_, sqlx::Error>((category, rows))
    })
    .await;
    match done {
        Ok(Ok((category, rows))) => {
            Json(serde_json::json!({ "category": category, "updated": rows })).into_response()
        }
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "discount failed");
            reply(
                StatusCode::SERVICE_UNAVAILABLE,
                "the catalog is unavailable; retry",
            )
        }
        Err(_) => reply(
            StatusCode::INTERNAL_SERVER_ERROR,
            "the discount's task failed",
        ),
    }
}

async fn readyz(State(app): State<App>) -> Response {
    // Kubernetes readiness (not liveness): out of the load balancer while not warmed, or while
    // PostgreSQL does not answer. Redis is reported, not required: requiring it
    // (`.require_remote()`) would take every instance out at once when Redis fails, while
    // they can serve from L1 and PostgreSQL (the breaker and the origin limit protect it).
    let probe = ReadinessProbe::new().require_warm();
    let cache_ready = app.inner.products.is_ready(&probe).await;
    let redis = app.inner.products.remote_healthy().await;
    let database = tokio::time::timeout(
        Duration::from_secs(1),
        sqlx::query("SELECT 1").execute(&app.inner.pool),
    )
    .await
    .is_ok_and(|r| r.is_ok());
    let body = serde_json::json!({
        "cache_ready": cache_ready,
        "database": database,
        "redis": redis,
        "warm": app.inner.products.is_warm(),
    });
    let status = match cache_ready && database {
        true => StatusCode::OK,
        false => StatusCode::SERVICE_UNAVAILABLE,
    };
    (status, Json(body)).into_response()
}

async fn metrics(State(app): State<App>) -> Response {
    match &app.inner.prometheus {
        Some(prometheus) => (
            [("content-type", "text/plain; version=0.0.4")],
            prometheus.render(),
        )
            .into_response(),
        None => reply(StatusCode::NOT_FOUND, "metrics are not installed"),
    }
}
