//! `herdwise`: invalidations from outside a Rust service — a shell, a cron job, a deploy
//! script, a service in another language — with the same effect as `Cache::invalidate*`: the
//! L2 entries go, and every running instance's L1 hears it on the backplane.
//!
//! ```text
//! herdwise invalidate --redis redis://127.0.0.1:6379 --namespace catalog --key 42
//! herdwise invalidate --namespace catalog --tag category:shoes
//! herdwise invalidate --namespace recs --prefix 17      # every (17, ..) key
//! herdwise invalidate --namespace catalog --clear
//! ```
//!
//! Exit status: 0 when every invalidation was confirmed by the store; 1 on a key, tag or
//! connection error (wrong URL, credentials); 2 on a usage error; 3 when the store did not
//! confirm within `--timeout` (nothing is retried after the process exits: run it again).

use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::{ArgGroup, Parser, Subcommand};
use herdwise::{Cache, RedisStore};

#[derive(Parser, Debug)]
#[command(
    name = "herdwise",
    version,
    about = "Herdwise cache operations from the command line"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Invalidate keys, tags, key prefixes or a whole namespace, on L2 and every instance's L1.
    #[command(group(ArgGroup::new("what").required(true).multiple(true).args(["key", "tag", "prefix", "clear"])))]
    Invalidate {
        /// Redis URL (redis://, rediss://, redis+sentinel://, or a Cluster seed).
        #[arg(
            long,
            env = "HERDWISE_REDIS_URL",
            default_value = "redis://127.0.0.1:6379"
        )]
        redis: String,
        /// The cache's namespace (`Cache::builder(namespace)`).
        #[arg(long)]
        namespace: String,
        /// The cache's schema version (`CacheBuilder::schema_version`).
        #[arg(long, default_value_t = 1)]
        schema_version: u32,
        /// A key, as the service's key encodes (an integer `42`, a string `guide/intro`).
        /// Repeatable.
        #[arg(long)]
        key: Vec<String>,
        /// A tag (`WriteOptions::tags`, `LoadOptions::tags`). Repeatable.
        #[arg(long)]
        tag: Vec<String>,
        /// A key prefix, by whole components (as `Cache::invalidate_prefix`): `--prefix 17` for a
        /// cache keyed by `(user_id, item)` removes every key of user 17 — not user 170.
        /// Repeatable.
        #[arg(long)]
        prefix: Vec<String>,
        /// The whole namespace (`Cache::clear`).
        #[arg(long)]
        clear: bool,
        /// How long to wait for the store to confirm every invalidation.
        #[arg(long, default_value = "5s", value_parser = parse_duration)]
        timeout: Duration,
    },
}

fn parse_duration(text: &str) -> Result<Duration, String> {
    let (number, unit) = text
        .find(|c: char| !c.is_ascii_digit())
        .map_or((text, "s"), |at| text.split_at(at));
    let n: u64 = number
        .parse()
        .map_err(|_| format!("not a duration: {text:?} (e.g. 5s, 500ms)"))?;
    match unit {
        "ms" => Ok(Duration::from_millis(n)),
        "s" => Ok(Duration::from_secs(n)),
        "m" => Ok(Duration::from_secs(n * 60)),
        _ => Err(format!("unknown unit in {text:?}: use ms, s or m")),
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let Command::Invalidate {
        redis,
        namespace,
        schema_version,
        key,
        tag,
        prefix,
        clear,
        timeout,
    } = Cli::parse().command;
    match invalidate(
        &redis,
        &namespace,
        schema_version,
        &key,
        &tag,
        &prefix,
        clear,
        timeout,
    )
    .await
    {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => {
            eprintln!(
                "herdwise: the store did not confirm every invalidation within {timeout:?}; \
                 run the command again"
            );
            ExitCode::from(3)
        }
        Err(err) => {
            eprintln!("herdwise: {err}");
            ExitCode::from(1)
        }
    }
}

/// Runs the invalidations; `Ok(false)` if the store did not confirm them all in time.
#[allow(clippy::too_many_arguments)]
async fn invalidate(
    url: &str,
    namespace: &str,
    schema_version: u32,
    keys: &[String],
    tags: &[String],
    prefixes: &[String],
    clear: bool,
    timeout: Duration,
) -> Result<bool, herdwise::Error> {
    let store = RedisStore::connect(url).await?;
    let cache: Cache<str, serde_json::Value> = Cache::builder(namespace)
        .store(store)
        .schema_version(schema_version)
        .l1_max_bytes(0)
        .no_hot_key_shield()
        .build()?;
    if clear {
        cache.clear().await?;
        println!("cleared namespace {namespace}");
    }
    for key in keys {
        cache.invalidate(key.as_str()).await?;
        println!("invalidated key {}", cache.stored_key(key.as_str())?);
    }
    for tag in tags {
        cache.invalidate_tag(tag).await?;
        println!("invalidated tag {tag}");
    }
    for prefix in prefixes {
        let removed = cache.invalidate_prefix(prefix.as_str()).await?;
        println!(
            "invalidated prefix {} ({removed} keys)",
            cache.stored_key(prefix.as_str())?
        );
    }
    let deadline = Instant::now() + timeout;
    while cache.unconfirmed_invalidations() > 0 {
        if Instant::now() >= deadline {
            return Ok(false);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(true)
}
