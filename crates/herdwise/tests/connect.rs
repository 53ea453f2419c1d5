//! Connecting to the Redis that production runs: TLS (custom CA, client certificates, host
//! name checks, the explicit insecure switch), ACL users and passwords, `REDIS_URL`. Every
//! server is real, started here on free loopback ports; certificates are generated per run.
//! A connection that cannot work fails at `connect`, with an error that says why.

mod common;

use std::time::Duration;

use herdwise::{Cache, RedisStore, RedisStoreBuilder, StoreError};
use herdwise_testkit::{RedisServer, TlsMaterial};

fn tls_server(material: &TlsMaterial, client_certificates: bool) -> (RedisServer, u16) {
    let args = material.server_args(client_certificates);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let server = RedisServer::start_with_args(&args).expect("start a TLS redis-server");
    let port = server
        .arg_after("--tls-port")
        .and_then(|p| p.parse().ok())
        .expect("the TLS port");
    (server, port)
}

fn connect_error(result: Result<RedisStore, StoreError>) -> StoreError {
    match result {
        Ok(_) => panic!("the connection should have been refused"),
        Err(e) => {
            eprintln!("refused: {e}");
            e
        }
    }
}

/// A value written through one cache is read back through another over the same store.
async fn round_trip(store: RedisStore) {
    let writer: Cache<u64, String> = Cache::builder("connect")
        .store(store.clone())
        .build()
        .unwrap();
    let reader: Cache<u64, String> = Cache::builder("connect").store(store).build().unwrap();
    // Retried: the store's call deadline can lapse while the suite's other tests load the
    // two cores (a timed-out write or read is a miss, not an error). A connection that does not
    // work never passes.
    let worked = common::eventually(Duration::from_secs(5), async || {
        writer.set(&7, "seven".to_string()).await.unwrap();
        reader.get(&7).await.unwrap().as_deref().map(String::as_str) == Some("seven")
    })
    .await;
    assert!(
        worked,
        "a value written through one cache is read through another"
    );
}

#[tokio::test]
async fn tls_with_the_servers_ca_connects_and_caches() {
    let material = TlsMaterial::generate().unwrap();
    let (_server, port) = tls_server(&material, false);
    let store = RedisStore::builder(&format!("rediss://localhost:{port}"))
        .tls_root_certificate(material.ca_pem.clone())
        .connect()
        .await
        .expect("TLS with the server's CA");
    round_trip(store).await;
}

#[tokio::test]
async fn tls_refuses_a_certificate_it_cannot_verify() {
    let material = TlsMaterial::generate().unwrap();
    let (_server, port) = tls_server(&material, false);
    let url = format!("rediss://localhost:{port}");
    // The system's roots do not know the test CA.
    let e = connect_error(RedisStore::builder(&url).connect().await);
    assert!(
        matches!(&e, StoreError::Connect { reason, .. } if reason.contains("certificate")),
        "{e}"
    );
    let e = connect_error(
        RedisStore::builder(&url)
            .tls_root_certificate(material.other_ca_pem.clone())
            .connect()
            .await,
    );
    assert!(matches!(e, StoreError::Connect { .. }), "{e}");
}

#[tokio::test]
async fn tls_checks_the_host_name() {
    let material = TlsMaterial::generate().unwrap();
    let (_server, port) = tls_server(&material, false);
    // The certificate names `localhost`, not 127.0.0.1.
    let e = connect_error(
        RedisStore::builder(&format!("rediss://127.0.0.1:{port}"))
            .tls_root_certificate(material.ca_pem.clone())
            .connect()
            .await,
    );
    assert!(
        matches!(&e, StoreError::Connect { reason, .. } if reason.contains("certificate")),
        "{e}"
    );
}

#[tokio::test]
async fn tls_checks_are_turned_off_only_by_the_explicit_option() {
    let material = TlsMaterial::generate().unwrap();
    let (_server, port) = tls_server(&material, false);
    let e = connect_error(
        RedisStore::builder(&format!("rediss://127.0.0.1:{port}/#insecure"))
            .connect()
            .await,
    );
    assert!(matches!(e, StoreError::Config { option: "url", .. }), "{e}");
    let store = RedisStore::builder(&format!("rediss://127.0.0.1:{port}"))
        .danger_accept_invalid_certificates(true)
        .connect()
        .await
        .expect("no checks, by explicit option");
    round_trip(store).await;
}

#[tokio::test]
async fn tls_client_certificates_when_the_server_requires_them() {
    let material = TlsMaterial::generate().unwrap();
    let (_server, port) = tls_server(&material, true);
    let url = format!("rediss://localhost:{port}");
    let e = connect_error(
        RedisStore::builder(&url)
            .tls_root_certificate(material.ca_pem.clone())
            .connect()
            .await,
    );
    assert!(matches!(e, StoreError::Connect { .. }), "{e}");
    let store = RedisStore::builder(&url)
        .tls_root_certificate(material.ca_pem.clone())
        .tls_client_certificate(
            material.client_cert_pem.clone(),
            material.client_key_pem.clone(),
        )
        .connect()
        .await
        .expect("TLS with a client certificate");
    round_trip(store).await;
}

/// A server whose default user needs a password, with ACL users for the cases below.
fn acl_server() -> RedisServer {
    let server = common::redis();
    let setup = [
        "ACL SETUSER app on >app-secret ~* &* +@all",
        // Every command but scripts.
        "ACL SETUSER noscripts on >pw ~* &* +@all -eval -evalsha -script",
        // Scripts may run, but one command the tag scripts use inside them is refused.
        "ACL SETUSER nohincr on >pw ~* &* +@all -hincrby",
        // No pub/sub channels (Redis 7 gives new users none unless `&*` or allchannels).
        "ACL SETUSER nochannels on >pw ~* +@all",
        "CONFIG SET requirepass default-secret",
    ];
    // The rule the README gives, word for word.
    let documented = format!("ACL SETUSER documented on >pw {}", common::DOCUMENTED_ACL);
    // (Before `requirepass`, which the raw connection does not answer.)
    for command in [documented.as_str()].into_iter().chain(setup) {
        assert_eq!(server.raw_command(command).unwrap(), "+OK", "{command}");
    }
    server
}

fn acl_url(server: &RedisServer, userinfo: &str) -> String {
    format!("redis://{userinfo}@127.0.0.1:{}/", server.port())
}

#[tokio::test]
async fn a_missing_password_is_an_error_at_connect() {
    let server = acl_server();
    let e = connect_error(RedisStore::connect(&server.url()).await);
    assert!(
        matches!(&e, StoreError::Connect { reason, .. } if reason.contains("requires a password")),
        "{e}"
    );
}

#[tokio::test]
async fn a_wrong_password_is_an_error_at_connect_and_never_printed() {
    let server = acl_server();
    let e = connect_error(RedisStore::connect(&acl_url(&server, "app:wrong-secret")).await);
    assert!(matches!(e, StoreError::Connect { .. }), "{e}");
    assert!(!e.to_string().contains("wrong-secret"), "{e}");
}

#[test]
fn the_readme_gives_the_acl_rule_the_tests_use() {
    let readme = include_str!("../../../README.md");
    let rule = format!("ACL SETUSER app on >secret {}", common::DOCUMENTED_ACL);
    assert!(readme.contains(&rule), "README lacks `{rule}`");
}

#[tokio::test]
async fn an_acl_user_with_the_needed_permissions_connects() {
    let server = acl_server();
    let store = RedisStore::connect(&acl_url(&server, "app:app-secret"))
        .await
        .expect("a permitted ACL user");
    round_trip(store).await;
    // The README's example rule is enough.
    let store = RedisStore::connect(&acl_url(&server, "documented:pw"))
        .await
        .expect("the ACL rule the README documents");
    round_trip(store).await;
    // The default user, by password only (`redis://:password@host`).
    RedisStore::connect(&acl_url(&server, ":default-secret"))
        .await
        .expect("the default user with its password");
}

#[tokio::test]
async fn a_missing_permission_is_named_at_connect() {
    let server = acl_server();
    let refused = |e: StoreError| match e {
        StoreError::NotPermitted { command, .. } => command,
        other => panic!("expected NotPermitted, got {other}"),
    };
    let command = refused(connect_error(
        RedisStore::connect(&acl_url(&server, "noscripts:pw")).await,
    ));
    assert!(command.contains("EVAL"), "{command}");
    let command = refused(connect_error(
        RedisStore::connect(&acl_url(&server, "nohincr:pw")).await,
    ));
    assert_eq!(command, "HINCRBY (inside a script)");
    let command = refused(connect_error(
        RedisStore::connect(&acl_url(&server, "nochannels:pw")).await,
    ));
    assert_eq!(command, "PUBLISH");
}

#[tokio::test]
async fn the_url_can_come_from_the_environment() {
    let server = acl_server();
    std::env::remove_var(herdwise::REDIS_URL_ENV);
    assert!(matches!(
        RedisStoreBuilder::from_env(),
        Err(StoreError::Config {
            option: "REDIS_URL",
            ..
        })
    ));
    std::env::set_var(herdwise::REDIS_URL_ENV, acl_url(&server, "app:app-secret"));
    let store = RedisStoreBuilder::from_env()
        .unwrap()
        .connection_timeout(Duration::from_millis(500))
        .connect()
        .await
        .expect("REDIS_URL");
    std::env::remove_var(herdwise::REDIS_URL_ENV);
    round_trip(store).await;
}

#[tokio::test]
async fn nothing_listening_is_an_error_at_connect() {
    let port = herdwise_testkit::free_port().unwrap();
    let e = connect_error(
        RedisStore::builder(&format!("redis://127.0.0.1:{port}"))
            .connection_timeout(Duration::from_millis(200))
            .reconnect_retries(0)
            .connect()
            .await,
    );
    assert!(matches!(e, StoreError::Connect { .. }), "{e}");
}
