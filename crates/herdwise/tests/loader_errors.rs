//! Loader errors as services write them: their own error types, `anyhow::Error`,
//! `Box<dyn Error + Send + Sync>` — on per-call loaders, registered loaders, write paths and
//! batch loaders, with the error (and its source chain) delivered as returned.

use std::collections::HashMap;
use std::error::Error as _;

use herdwise::{BatchLoaded, Cache, Error};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

fn cache() -> Cache<u64, String> {
    Cache::builder("loader-errors").build().unwrap()
}

#[tokio::test]
async fn anyhow_errors_keep_their_context_and_cause() {
    let cache = cache();
    let got = cache
        .get_or_load(&1, |_| async {
            let cause = std::io::Error::other("connection reset");
            Err::<Option<String>, _>(anyhow::Error::new(cause).context("query users"))
        })
        .await;
    let Err(Error::Loader(err)) = got else {
        panic!("expected a loader error, got {got:?}");
    };
    assert_eq!(err.to_string(), "query users");
    let cause = err.source().expect("source chain kept");
    assert_eq!(cause.to_string(), "connection reset");
    assert!(cause.downcast_ref::<std::io::Error>().is_some());
    // The cache's error names the loader's.
    let display = Error::Loader(err.clone()).to_string();
    assert!(display.contains("query users"), "{display}");
}

#[tokio::test]
async fn boxed_errors_and_question_marks_work() {
    let cache = cache();
    let got = cache
        .get_or_load(&2, |_| async {
            let n: u64 = "not a number".parse()?; // ParseIntError -> Box<dyn Error>
            Ok::<_, BoxError>(Some(n.to_string()))
        })
        .await;
    let Err(Error::Loader(err)) = got else {
        panic!("expected a loader error, got {got:?}");
    };
    assert!(err.downcast_ref::<std::num::ParseIntError>().is_some());
    // A success through the same kind of closure is cached.
    let ok = cache
        .get_or_load(&3, |_| async {
            Ok::<_, BoxError>(Some("three".to_string()))
        })
        .await
        .unwrap();
    assert_eq!(ok.as_deref().map(String::as_str), Some("three"));
}

#[tokio::test]
async fn a_registered_loader_and_the_write_paths_take_anyhow_too() {
    let cache: Cache<u64, String> = Cache::builder("loader-errors-reg")
        .loader(|k: &u64| {
            let k = *k;
            async move {
                anyhow::ensure!(k != 0, "no user 0");
                Ok(Some(format!("user-{k}")))
            }
        })
        .build()
        .unwrap();
    assert_eq!(
        cache
            .fetch(&5)
            .await
            .unwrap()
            .as_deref()
            .map(String::as_str),
        Some("user-5")
    );
    let Err(Error::Loader(err)) = cache.fetch(&0).await else {
        panic!("expected a loader error");
    };
    assert_eq!(err.to_string(), "no user 0");
    let Err(Error::OriginWrite(err)) = cache
        .write_around(&5, || async {
            Err::<(), _>(anyhow::anyhow!("constraint violated"))
        })
        .await
    else {
        panic!("expected an origin-write error");
    };
    assert_eq!(err.to_string(), "constraint violated");
}

#[tokio::test]
async fn batch_loaders_take_anyhow_too() {
    let cache = cache();
    let got = cache
        .get_or_load_many(&[1, 2], |keys: Vec<u64>| async move {
            anyhow::ensure!(!keys.is_empty(), "empty batch");
            let mut found = HashMap::new();
            found.insert(1u64, "one".to_string());
            Ok::<_, anyhow::Error>(BatchLoaded::from(found))
        })
        .await;
    assert_eq!(got.len(), 2);
    assert_eq!(
        got[0].as_ref().unwrap().as_deref().map(String::as_str),
        Some("one")
    );
    assert_eq!(got[1].as_ref().unwrap(), &None, "not returned: absent");
    let failed = cache
        .get_or_load_many(&[3], |_keys: Vec<u64>| async move {
            Err::<BatchLoaded<u64, String>, _>(anyhow::anyhow!("batch query failed"))
        })
        .await;
    assert!(
        matches!(&failed[0], Err(Error::Loader(e)) if e.to_string().contains("batch query failed")),
        "{failed:?}"
    );
}

#[tokio::test]
async fn a_registered_loaders_error_is_the_loaders_own() {
    let cache: Cache<u64, String> = Cache::builder("loader-errors-own")
        .loader(|_: &u64| async {
            Err::<Option<String>, _>(std::io::Error::new(
                std::io::ErrorKind::ConnectionRefused,
                "db refused",
            ))
        })
        .build()
        .unwrap();
    let Err(Error::Loader(err)) = cache.fetch(&1).await else {
        panic!("expected a loader error");
    };
    let io = err
        .downcast_ref::<std::io::Error>()
        .expect("the loader's own error, not a wrapper");
    assert_eq!(io.kind(), std::io::ErrorKind::ConnectionRefused);
}
