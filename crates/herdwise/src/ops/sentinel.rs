//! The recovery sentinel: after an outage, whether Redis came back *empty* is checked, not
//! assumed (see `crate::tiers::recovery`). Each instance remembers a random token it found (or
//! wrote) under a sentinel key, and the server's identity; after a recovery, a different token
//! on a restarted server means the data was lost. A sentinel merely evicted from the same server
//! is no loss.

use std::time::Duration;

use bytes::Bytes;

use crate::tiers::recovery::{sentinel_key, Recovery, INTACT, LOST, UNKNOWN};
use crate::tiers::remote::Remote;

/// How long the sentinel is kept: far longer than any entry, refreshed at every loss.
const SENTINEL_TTL: Duration = Duration::from_secs(30 * 24 * 3600);

/// The sentinel token now in the store, writing one if there is none. `None` if the store
/// does not answer.
async fn sentinel(remote: &Remote, namespace: &str) -> Option<u64> {
    let key = sentinel_key(namespace);
    let parse = |bytes: Bytes| std::str::from_utf8(&bytes).ok()?.parse::<u64>().ok();
    if let Some(token) = remote.get(&key).await.ok()?.and_then(parse) {
        return Some(token);
    }
    let token = rand::random::<u64>() | 1;
    remote
        .set(&key, Bytes::from(token.to_string()), SENTINEL_TTL)
        .await
        .ok()?;
    // Another instance may have written its own meanwhile: the one that stayed counts.
    remote.get(&key).await.ok()?.and_then(parse)
}

/// Learns the sentinel token at the first contact with the store.
pub(crate) async fn learn_sentinel(recovery: &Recovery, remote: &Remote, namespace: &str) {
    let server = remote.server_id().await.ok().flatten();
    if let Some(token) = sentinel(remote, namespace).await {
        recovery.saw_token(token, server);
    }
}

/// What is left of the recovery window, if a recovery is recent *and* the store came back
/// without its data (checked once per recovery, against the sentinel).
pub(crate) async fn lost_window(
    recovery: &Recovery,
    remote: &Remote,
    namespace: &str,
) -> Option<Duration> {
    let left = recovery.window_left()?;
    if recovery.loss() == UNKNOWN {
        let known = recovery.token();
        let known_server = recovery.server();
        // A store that cannot answer who it is now (a timeout under load) gives no evidence
        // either way: no verdict yet (a later read asks again), never "restarted" by default.
        let server = remote.server_id().await.ok()?;
        let now = sentinel(remote, namespace).await?;
        // Never learned a token: no evidence of a loss. A missing sentinel on the same
        // server (evicted, deleted) is no loss either: only a server that restarted (or
        // was replaced) without the sentinel lost its data. Stores that cannot tell who
        // they are fall back on the sentinel alone.
        // An identity known on one side only (a read of it failed once) is no evidence of a
        // restart: the safe verdict is "intact" (no old L1 value answers for a lost key).
        let restarted = match (&known_server, &server) {
            (Some(before), Some(now)) => before != now,
            (None, None) => true,
            _ => false,
        };
        let verdict = if known != 0 && now != known && restarted {
            LOST
        } else {
            INTACT
        };
        // The first verdict of this recovery stands (a later reader may already see the
        // token the first one wrote).
        recovery.judge_once(verdict);
        recovery.saw_token(now, server);
        if verdict == LOST {
            tracing::warn!(
                namespace,
                "the remote tier came back without its data: L1 answers for lost keys during the recovery window"
            );
        }
    }
    (recovery.loss() == LOST).then_some(left)
}
