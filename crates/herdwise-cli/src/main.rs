//! `herdwise`: invalidations from outside a Rust service — a shell, a cron job, a deploy
//! script, a service in another language — with the same effect as `Cache::invalidate*`: the
//! L2 entries go, and every running instance's L1 hears it on the backplane.
//!
//! ```text
//! herdwise invalidate --redis redis://127.0.0.1:6379 --namespace catalog --key 42
//! herdwise invalidate --namespace catalog --tag category:shoes
//! herdwise invalidate --namespace recs --prefix 17      # every (17, ..) key
//! herdwise invalidate --namespace catalog --clear
//! herdwise invalidate --namespace events --transport streams --key 7
//! ```
//!
//! Exit status: 0 when every invalidation was confirmed by the store; 1 on a key, tag or
//! connection error (wrong URL, credentials); 2 on a usage error; 3 when the store did not
//! confirm within `--timeout` (nothing is retried after the process exits: run it again).

use std::process::ExitCode;
use std::time::Duration;

use clap::{ArgGroup, Parser, Subcommand, ValueEnum};
use herdwise::{BackplaneTransport, Invalidator, KeyParts, RedisStore};

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

#[derive(Clone, Copy, Debug, ValueEnum)]
enum Transport {
    /// Redis pub/sub (the library's default).
    Pubsub,
    /// A Redis Stream (`BackplaneTransport::Streams`).
    Streams,
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
        /// The namespace's backplane transport (`CacheBuilder::backplane_transport`): the
        /// running instances hear only their own.
        #[arg(long, value_enum, default_value = "pubsub")]
        transport: Transport,
        /// With `--transport streams`: the Stream's `max_len`, as the instances use it.
        #[arg(long, default_value_t = 10_000)]
        stream_max_len: usize,
        /// With `CacheBuilder::hot_key_replicas(copies, _)` on the instances: their copy
        /// count, so that a key's copies are deleted with it.
        #[arg(long)]
        hot_key_replicas: Option<u8>,
        /// A key in its stored form after the namespace prefix: its parts separated by `:`
        /// (`42`, `guide/intro`, `17:a` for the tuple key `(17, "a")`), escapes in a part
        /// decoded (`7:en%3AGB` for `(7, "en:GB")`). Repeatable.
        #[arg(long)]
        key: Vec<String>,
        /// A tag (`WriteOptions::tags`, `LoadOptions::tags`). Repeatable.
        #[arg(long)]
        tag: Vec<String>,
        /// A key prefix, by whole parts (as `Cache::invalidate_prefix`): `--prefix 17` for a
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
    let duration = match unit {
        "ms" => Some(Duration::from_millis(n)),
        "s" => Some(Duration::from_secs(n)),
        "m" => n.checked_mul(60).map(Duration::from_secs),
        _ => return Err(format!("unknown unit in {text:?}: use ms, s or m")),
    };
    duration
        .filter(|d| *d <= Duration::from_secs(24 * 3600))
        .ok_or_else(|| format!("{text:?} is longer than a day"))
}

/// What went wrong, by exit code.
enum Failure {
    /// Connection, key or tag errors (exit 1).
    Refused(String),
    /// Some invalidations were not confirmed in time (exit 3).
    Unconfirmed(String),
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    match run(Cli::parse().command).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::Refused(why)) => {
            eprintln!("herdwise: {why}");
            ExitCode::from(1)
        }
        Err(Failure::Unconfirmed(why)) => {
            eprintln!("herdwise: {why}; run the command again");
            ExitCode::from(3)
        }
    }
}

async fn run(command: Command) -> Result<(), Failure> {
    let Command::Invalidate {
        redis,
        namespace,
        schema_version,
        transport,
        stream_max_len,
        hot_key_replicas,
        key,
        tag,
        prefix,
        clear,
        timeout,
    } = command;
    let refused = |e: herdwise::Error| Failure::Refused(e.to_string());
    let store = RedisStore::connect(&redis)
        .await
        .map_err(|e| refused(e.into()))?;
    let mut builder = Invalidator::builder(&namespace)
        .store(store)
        .schema_version(schema_version);
    if let Some(copies) = hot_key_replicas {
        builder = builder.hot_key_replicas(copies);
    }
    if let Transport::Streams = transport {
        builder = builder.backplane_transport(BackplaneTransport::Streams {
            max_len: stream_max_len,
        });
    }
    let invalidator = builder.build().map_err(refused)?;
    // The namespace's generation read first: keys are named in the current one.
    if !invalidator.remote_healthy().await {
        return Err(Failure::Refused(format!(
            "{redis} does not answer (down, wrong credentials, or too slow)"
        )));
    }
    let parse = |k: &String| KeyParts::parse(k).map_err(|e| refused(e.into()));
    let keys = key.iter().map(parse).collect::<Result<Vec<_>, _>>()?;
    let prefixes = prefix.iter().map(parse).collect::<Result<Vec<_>, _>>()?;
    for k in keys.iter().chain(&prefixes) {
        invalidator.stored_key(k).map_err(refused)?; // bad keys refused before anything is sent
    }
    let mut failed = Vec::new();
    if clear {
        match invalidator.clear().await {
            Ok(()) => println!("cleared namespace {namespace}"),
            Err(e) => failed.push(format!("clear: {e}")),
        }
    }
    for k in &keys {
        let stored = invalidator.key(k).await.map_err(refused)?;
        println!("invalidated key {stored}");
    }
    for t in &tag {
        invalidator.tag(t).await.map_err(refused)?;
        println!("invalidated tag {t}");
    }
    for p in &prefixes {
        let stored = invalidator.stored_key(p).map_err(refused)?;
        match invalidator.prefix(p).await {
            Ok(removed) => println!("invalidated prefix {stored} ({removed} keys)"),
            // Queued for retry in this process: waited for below.
            Err(e) => eprintln!("herdwise: prefix {stored}: {e} (retrying)"),
        }
    }
    // Every invalidation queued for retry is waited for (nothing retries after the exit).
    let left = invalidator.wait_confirmed(timeout).await;
    if left > 0 {
        failed.push(format!(
            "{left} invalidations not confirmed by the store within {timeout:?}"
        ));
    }
    match failed.is_empty() {
        true => Ok(()),
        false => Err(Failure::Unconfirmed(failed.join("; "))),
    }
}
