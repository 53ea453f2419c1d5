//! The `herdwise` command against a real Redis, with running caches listening: what it
//! invalidates leaves L2 and every instance's L1, and failures are exit codes, not silence.

use std::process::Command;
use std::time::Duration;

use herdwise::{Cache, RedisStore, WriteOptions};
use herdwise_testkit::RedisServer;

fn k(a: &str, b: &str) -> (String, String) {
    (a.to_string(), b.to_string())
}

fn herdwise(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_herdwise"))
        .args(args)
        .output()
        .expect("run the herdwise binary")
}

async fn eventually(mut check: impl AsyncFnMut() -> bool) -> bool {
    for _ in 0..150 {
        if check().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    false
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalidations_from_the_command_line_reach_every_instances_l1() {
    let server = RedisServer::start().unwrap();
    let url = server.url();
    let users: Cache<u64, String> = Cache::builder("users")
        .store(RedisStore::connect(&url).await.unwrap())
        .build()
        .unwrap();
    let docs: Cache<(String, String), String> = Cache::builder("docs")
        .store(RedisStore::connect(&url).await.unwrap())
        .build()
        .unwrap();
    users.get(&0).await.unwrap(); // listening
    docs.get(&k("x", "y")).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    users.set(&42, "ada".to_string()).await.unwrap();
    users.set(&43, "bob".to_string()).await.unwrap();
    let tagged = WriteOptions::default().tags(["team:x"]);
    users
        .set_with(&44, "eve".to_string(), &tagged)
        .await
        .unwrap();
    for (a, b, value) in [
        ("guide", "intro", "1"),
        ("guide", "setup", "2"),
        ("api", "get", "3"),
    ] {
        docs.set(&k(a, b), value.to_string()).await.unwrap();
    }
    // In L1 (and L2) now.
    assert!(users.get(&42).await.unwrap().is_some());

    let out = herdwise(&[
        "invalidate",
        "--redis",
        &url,
        "--namespace",
        "users",
        "--key",
        "42",
        "--tag",
        "team:x",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("invalidated key users:v1:42"), "{stdout}");
    let dropped = eventually(async || {
        users.get(&42).await.unwrap().is_none() && users.get(&44).await.unwrap().is_none()
    })
    .await;
    assert!(
        dropped,
        "the key and the tag's entries left the running instance's L1 and L2"
    );
    assert_eq!(
        users.get(&43).await.unwrap().as_deref().map(String::as_str),
        Some("bob"),
        "nothing else"
    );

    let out = herdwise(&[
        "invalidate",
        "--redis",
        &url,
        "--namespace",
        "docs",
        "--prefix",
        "guide",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let dropped = eventually(async || {
        docs.get(&k("guide", "intro")).await.unwrap().is_none()
            && docs.get(&k("guide", "setup")).await.unwrap().is_none()
    })
    .await;
    assert!(
        dropped,
        "every key under the prefix: {} / {}",
        String::from_utf8_lossy(&out.stdout),
        docs.stored_key(&k("guide", "intro")).unwrap()
    );
    assert!(docs.get(&k("api", "get")).await.unwrap().is_some());

    let out = herdwise(&[
        "invalidate",
        "--redis",
        &url,
        "--namespace",
        "docs",
        "--clear",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let cleared = eventually(async || docs.get(&k("api", "get")).await.unwrap().is_none()).await;
    assert!(cleared, "the whole namespace");
}

#[test]
fn failures_are_exit_codes() {
    // Nothing listens there: a connection error.
    let port = herdwise_testkit::free_port().unwrap();
    let url = format!("redis://127.0.0.1:{port}");
    let out = herdwise(&[
        "invalidate",
        "--redis",
        &url,
        "--namespace",
        "users",
        "--key",
        "1",
    ]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Nothing to invalidate named: a usage error.
    let out = herdwise(&["invalidate", "--namespace", "users"]);
    assert_eq!(out.status.code(), Some(2));
    // An invalid tag: refused before anything is sent.
    let server = RedisServer::start().unwrap();
    let out = herdwise(&[
        "invalidate",
        "--redis",
        &server.url(),
        "--namespace",
        "users",
        "--tag",
        "",
    ]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // A `%` that starts no escape in a key's stored form.
    let out = herdwise(&[
        "invalidate",
        "--redis",
        &server.url(),
        "--namespace",
        "users",
        "--key",
        "50%",
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("escape"));
}

/// A writer in another language following docs/spec (here `redis-cli`): `DEL` plus a `k`
/// message on the namespace's channel, in one `MULTI`/`EXEC`, reaches a running instance's L1.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_non_rust_writer_following_the_spec_reaches_l1() {
    let server = RedisServer::start().unwrap();
    let users: Cache<u64, String> = Cache::builder("users")
        .store(RedisStore::connect(&server.url()).await.unwrap())
        .build()
        .unwrap();
    users.get(&0).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    users.set(&7, "old".to_string()).await.unwrap();
    let key = users.stored_key(&7).unwrap();
    let script =
        format!("MULTI\nDEL {key}\nPUBLISH herdwise:{{ns:users}}:inv \"5eed|1|k|{key}\"\nEXEC\n");
    let mut cli = Command::new("redis-cli")
        .args(["-p", &server.port().to_string()])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("redis-cli (scripts/test installs redis-tools)");
    use std::io::Write as _;
    cli.stdin
        .take()
        .unwrap()
        .write_all(script.as_bytes())
        .unwrap();
    let out = cli.wait_with_output().unwrap();
    assert!(out.status.success());
    let dropped = eventually(async || users.get(&7).await.unwrap().is_none()).await;
    assert!(
        dropped,
        "L1 kept the value a foreign writer deleted and announced: {}",
        String::from_utf8_lossy(&out.stdout)
    );
}

/// Instances on the Streams transport hear the command when it is told their transport; a key
/// of several parts is named with `:` between them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_instances_and_tuple_keys() {
    let server = RedisServer::start().unwrap();
    let url = server.url();
    let recs: Cache<(u64, String), String> = Cache::builder("recs")
        .store(RedisStore::connect(&url).await.unwrap())
        .backplane_transport(herdwise::BackplaneTransport::Streams { max_len: 10_000 })
        .build()
        .unwrap();
    recs.get(&(0, String::new())).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let key = (17u64, "a:b".to_string());
    recs.set(&key, "x".to_string()).await.unwrap();
    recs.set(&(17, "c".to_string()), "y".to_string())
        .await
        .unwrap();
    let last = (17u64, "d".to_string());
    recs.set(&last, "z".to_string()).await.unwrap();
    let out = herdwise(&[
        "invalidate",
        "--redis",
        &url,
        "--namespace",
        "recs",
        "--transport",
        "streams",
        "--key",
        "17:c",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("invalidated key recs:v1:17:c"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let dropped =
        eventually(async || recs.get(&(17, "c".to_string())).await.unwrap().is_none()).await;
    assert!(dropped, "a Streams instance heard the command");
    assert!(recs.get(&key).await.unwrap().is_some());
    // A part holding `:` is named in its stored form, escaped.
    let out = herdwise(&[
        "invalidate",
        "--redis",
        &url,
        "--namespace",
        "recs",
        "--transport",
        "streams",
        "--key",
        "17:a%3Ab",
    ]);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("invalidated key recs:v1:17:a%3Ab"),
        "{} {}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let dropped = eventually(async || recs.get(&key).await.unwrap().is_none()).await;
    assert!(dropped, "the escaped key named (17, \"a:b\")");
    assert!(recs.get(&last).await.unwrap().is_some());
    let out = herdwise(&[
        "invalidate",
        "--redis",
        &url,
        "--namespace",
        "recs",
        "--transport",
        "streams",
        "--prefix",
        "17",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let dropped = eventually(async || recs.get(&last).await.unwrap().is_none()).await;
    assert!(dropped, "every key of user 17");
}
