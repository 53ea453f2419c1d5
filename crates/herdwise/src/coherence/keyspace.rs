//! Keyspace notifications: changes made to the namespace's stored keys by anyone — a service
//! in another language that `DEL`s or `SET`s a key, an expiry, an eviction — reach this
//! instance's L1.
//!
//! Contract: [`listen`] consumes the store's keyspace subscription (see
//! [`Store::subscribe_keyspace`](crate::Store::subscribe_keyspace)) until the cache is gone:
//! every key named is dropped from L1 (not released from a pending delete's hold: only the
//! deleting instance's announcement does that). Whenever changes may have been missed — before
//! the first subscription, after a loss, a resubscription or a listener that fell behind — L1
//! is demoted (each entry re-checked against L2 before it is served), and while the
//! subscription is down, again every second; what is stored meanwhile (reads in flight
//! included) is stored unverified — the subscription counts as one of the instance's ears
//! (`Recovery::set_deaf_to`, beside the backplane's). The instance's own writes are heard too (Redis
//! does not say who wrote): each costs the writer one L2 read afterwards, the price of hearing
//! every writer.

use std::sync::Weak;
use std::time::Duration;

use tokio::sync::broadcast;

use crate::coherence::backplane::Subscriber;
use crate::store::StoreEvent;
use crate::tiers::recovery::KEYSPACE;

/// While the subscription is lost, how often L1 is demoted again.
const DEAF_DEMOTE: Duration = Duration::from_secs(1);
/// While hearing, how often the listener checks that its cache still exists (on a quiet
/// namespace no event would wake it, and it holds the subscription open).
const ALIVE_CHECK: Duration = Duration::from_secs(5);

/// The key pattern of a namespace's stored keys (`<namespace>:v<schema>…:<key>`, every schema
/// and generation), as a Redis glob.
pub(crate) fn pattern(namespace: &str) -> String {
    format!("{}:*", crate::store::glob_escape(namespace))
}

/// Applies keyspace notifications to L1 until the cache is gone (see the module contract).
pub(crate) async fn listen(
    inner: Weak<dyn Subscriber>,
    mut events: broadcast::Receiver<StoreEvent>,
) {
    let _ended = Ended(inner.clone());
    let mut deaf = true;
    let mut subscribed_before = false;
    let mut deaf_tick = tokio::time::interval(DEAF_DEMOTE);
    deaf_tick.reset();
    let mut alive_tick = tokio::time::interval(ALIVE_CHECK);
    alive_tick.reset();
    loop {
        let event = tokio::select! {
            event = events.recv() => event,
            _ = deaf_tick.tick(), if deaf && subscribed_before => {
                let Some(inner) = inner.upgrade() else {
                    return;
                };
                inner.recovery().demote();
                continue;
            }
            _ = alive_tick.tick() => {
                if inner.strong_count() == 0 {
                    return;
                }
                continue;
            }
        };
        let Some(inner) = inner.upgrade() else {
            return;
        };
        match event {
            Ok(StoreEvent::Message(key)) => {
                let Ok(key) = std::str::from_utf8(&key) else {
                    continue;
                };
                inner.metrics().keyspace_events.increment(1);
                inner.key_changed(key);
            }
            Ok(StoreEvent::Subscribed) => {
                deaf = false;
                // Whatever L1 took before now was not covered: checked against L2 again; and
                // what reads in flight bring back was read deaf: stored unverified.
                inner.recovery().demote();
                inner.recovery().set_deaf_to(KEYSPACE, false);
                if subscribed_before {
                    inner.metrics().backplane_reset("resubscribed");
                }
                subscribed_before = true;
            }
            Ok(StoreEvent::Lost) => {
                deaf = true;
                deaf_tick.reset();
                inner.recovery().set_deaf_to(KEYSPACE, true);
                inner.recovery().demote();
                inner.metrics().backplane_reset("subscription_lost");
                tracing::info!(
                    namespace = inner.namespace(),
                    "L1 demoted: the keyspace-notification subscription was lost"
                );
            }
            Err(broadcast::error::RecvError::Lagged(_)) => {
                inner.recovery().restart_hearing();
                inner.recovery().demote();
                inner.metrics().backplane_reset("lagged");
            }
            Err(broadcast::error::RecvError::Closed) => return,
        }
    }
}

/// Dropped with the listener, however it ends: from then on external changes are not heard,
/// so nothing in L1 is vouched for.
struct Ended(Weak<dyn Subscriber>);

impl Drop for Ended {
    fn drop(&mut self) {
        if let Some(inner) = self.0.upgrade() {
            inner.recovery().demote();
        }
    }
}
