//! One subscription made of several (one per node): used where each node delivers only its
//! own messages (a sharded store's nodes, a cluster's keyspace notifications).
//!
//! Contract: [`merge`] turns one receiver per node into one receiver. It announces
//! `Subscribed` whenever a node (re)subscribes and every node is then subscribed (a gap on any
//! node is a gap, and one node back while another is lost is not hearing); every `Lost` and
//! message passes through, and a node whose
//! receiver lagged counts as lost and at once re-subscribed. The tasks end when nobody listens.

use std::time::Duration;

use tokio::sync::broadcast;

use super::StoreEvent;

/// One receiver for the events of all `sources` (see the module contract); `None` outside a
/// Tokio runtime.
pub(crate) fn merge(
    sources: Vec<broadcast::Receiver<StoreEvent>>,
) -> Option<broadcast::Receiver<StoreEvent>> {
    let runtime = tokio::runtime::Handle::try_current().ok()?;
    let (tx, rx) = broadcast::channel(4096);
    let (merged_tx, merged_rx) = tokio::sync::mpsc::channel(4096);
    let nodes = sources.len();
    for (node, source) in sources.into_iter().enumerate() {
        runtime.spawn(forward(source, node, merged_tx.clone()));
    }
    runtime.spawn(merge_into(merged_rx, tx, nodes));
    Some(rx)
}

/// Forwards one node's events to the merger for as long as anyone listens.
async fn forward(
    mut source: broadcast::Receiver<StoreEvent>,
    node: usize,
    merged: tokio::sync::mpsc::Sender<(usize, StoreEvent)>,
) {
    loop {
        // Ends when the merger does (nobody listens), not at the node's next message: a held
        // receiver keeps the node's subscription open.
        let received = tokio::select! {
            received = source.recv() => received,
            () = merged.closed() => return,
        };
        let event = match received {
            Ok(event) => event,
            // Messages were dropped here: as good as a lost subscription, at once re-made.
            Err(broadcast::error::RecvError::Lagged(_)) => {
                if merged.send((node, StoreEvent::Lost)).await.is_err() {
                    return;
                }
                StoreEvent::Subscribed
            }
            Err(broadcast::error::RecvError::Closed) => {
                let _ = merged.send((node, StoreEvent::Lost)).await;
                return;
            }
        };
        if merged.send((node, event)).await.is_err() {
            return;
        }
    }
}

/// One subscription out of one per node: `Subscribed` whenever a node (re)subscribes with
/// every node up; every `Lost` and message passes through. Ends when nobody listens.
async fn merge_into(
    mut merged: tokio::sync::mpsc::Receiver<(usize, StoreEvent)>,
    tx: broadcast::Sender<StoreEvent>,
    nodes: usize,
) {
    let mut up = vec![false; nodes];
    let mut check = tokio::time::interval(Duration::from_secs(1));
    check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let (node, event) = tokio::select! {
            next = merged.recv() => match next {
                Some(next) => next,
                None => return,
            },
            _ = check.tick() => {
                if tx.receiver_count() == 0 {
                    return;
                }
                continue;
            }
        };
        let out = match event {
            // Only with every node up: one node's (re)subscription while another is still
            // lost is not hearing everything.
            StoreEvent::Subscribed => {
                up[node] = true;
                up.iter().all(|u| *u).then_some(StoreEvent::Subscribed)
            }
            StoreEvent::Lost => {
                up[node] = false;
                Some(StoreEvent::Lost)
            }
            message => Some(message),
        };
        if let Some(out) = out {
            if tx.send(out).is_err() {
                return;
            }
        }
    }
}
