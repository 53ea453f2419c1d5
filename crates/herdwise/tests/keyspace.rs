//! Keyspace notifications (`keyspace_notifications(true)`): a program in another language that
//! writes the namespace's keys in Redis directly (here `redis-cli`: `DEL`, `SET`, `PEXPIRE`)
//! reaches every listening instance's L1; an instance without the option keeps serving its L1
//! copy until the L1 TTL cap (the control that shows the L1 copies were there).

mod common;

use std::process::Command;
use std::time::Duration;

use herdwise::{Cache, Error, RedisStore, ShardedStore};
use herdwise_testkit::RedisServer;

fn cli(port: u16, args: &[&str]) -> String {
    let out = Command::new("redis-cli")
        .args(["-p", &port.to_string()])
        .args(args)
        .output()
        .expect("redis-cli (scripts/test installs redis-tools)");
    assert!(out.status.success(), "redis-cli {args:?} failed");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
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

async fn cache(store: impl herdwise::Store, listen: bool) -> Cache<u64, String> {
    let cache = Cache::builder("catalog")
        .store(store)
        .keyspace_notifications(listen)
        .build()
        .unwrap();
    // First use starts the listeners; give the subscriptions a moment to come up.
    cache.get(&0).await.unwrap();
    cache
}

async fn value(cache: &Cache<u64, String>, key: u64) -> Option<String> {
    cache.get(&key).await.unwrap().map(|v| v.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn external_del_set_and_expire_reach_every_listening_l1() {
    let server = RedisServer::start().unwrap();
    let connect = || async { RedisStore::connect(&server.url()).await.unwrap() };
    let a = cache(connect().await, true).await;
    let b = cache(connect().await, true).await;
    let control = cache(connect().await, false).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    // The cache put the flags it needs into the server's settings.
    let flags = cli(server.port(), &["CONFIG", "GET", "notify-keyspace-events"]);
    for flag in ['K', 'g', '$', 'x', 'e'] {
        assert!(flags.contains(flag), "notify-keyspace-events is {flags:?}");
    }

    let key = a.stored_key(&42).unwrap();
    let cases: [(&str, &[&str]); 3] = [
        ("DEL", &["DEL", &key]),
        ("SET", &["SET", &key, "written by another service"]),
        ("PEXPIRE", &["PEXPIRE", &key, "1"]),
    ];
    for (what, command) in cases {
        let old = format!("before {what}");
        a.set(&42, old.clone()).await.unwrap();
        for cache in [&a, &b, &control] {
            // Each instance holds the value in its L1 (the control from L2 now).
            assert!(
                eventually(async || value(cache, 42).await.as_deref() == Some(old.as_str())).await
            );
        }
        cli(server.port(), command);
        for (name, cache) in [("a", &a), ("b", &b)] {
            let dropped =
                eventually(async || value(cache, 42).await.as_deref() != Some(old.as_str())).await;
            assert!(
                dropped,
                "instance {name} kept serving its L1 copy after an external {what}"
            );
        }
        // Without the option the L1 copy stays: the change was not heard.
        assert_eq!(
            value(&control, 42).await.as_deref(),
            Some(old.as_str()),
            "the control instance should not have heard the external {what}"
        );
        control.invalidate(&42).await.unwrap();
    }
    // A key of another namespace is not one of ours, nor one like it (`catalogue:`).
    a.set(&7, "kept".to_string()).await.unwrap();
    cli(server.port(), &["DEL", "catalogue:v1:7", "other:v1:7"]);
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(value(&a, 7).await.as_deref(), Some("kept"));
}

/// A server whose `CONFIG` is disabled (as on managed services), configured by hand.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_configured_by_hand_without_config_works() {
    let server = RedisServer::start_with_args(&[
        "--notify-keyspace-events",
        "KEA",
        "--rename-command",
        "CONFIG",
        "",
    ])
    .unwrap();
    let a = cache(RedisStore::connect(&server.url()).await.unwrap(), true).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    a.set(&1, "old".to_string()).await.unwrap();
    let key = a.stored_key(&1).unwrap();
    cli(server.port(), &["DEL", &key]);
    assert!(eventually(async || value(&a, 1).await.is_none()).await);
}

/// Each node of a sharded store notifies of its own keys: every node is listened to.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sharded_store_hears_every_node() {
    let servers = [RedisServer::start().unwrap(), RedisServer::start().unwrap()];
    let mut nodes = Vec::new();
    for (i, server) in servers.iter().enumerate() {
        nodes.push((
            format!("node-{i}"),
            RedisStore::connect(&server.url()).await.unwrap(),
        ));
    }
    let a = cache(ShardedStore::new(nodes).unwrap(), true).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut heard_on = std::collections::HashSet::new();
    for key in 1..40u64 {
        a.set(&key, "old".to_string()).await.unwrap();
        let stored = a.stored_key(&key).unwrap();
        // The node that holds it.
        let Some(server) = servers
            .iter()
            .find(|s| cli(s.port(), &["EXISTS", &stored]) == "1")
        else {
            panic!("{stored} is on no node");
        };
        cli(server.port(), &["DEL", &stored]);
        assert!(
            eventually(async || value(&a, key).await.is_none()).await,
            "a DEL on port {} was not heard",
            server.port()
        );
        heard_on.insert(server.port());
        if heard_on.len() == servers.len() {
            return;
        }
    }
    panic!("the keys did not spread over both nodes");
}

#[tokio::test]
async fn keyspace_notifications_need_the_backplane() {
    let built = Cache::<u64, String>::builder("catalog")
        .no_backplane()
        .keyspace_notifications(true)
        .build();
    match built {
        Err(Error::Config(message)) => assert!(message.contains("keyspace_notifications")),
        other => panic!("expected a config error, got {:?}", other.err()),
    }
}
