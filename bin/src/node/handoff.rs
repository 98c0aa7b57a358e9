//! Hinted handoff delivery and registry anti-entropy: the node's background work.
//!
//! HANDOFF
//! =======
//! When the failure detector reports an owner up (a membership event), and on a short periodic
//! tick for owners that are up with hints pending (an event can be missed, a delivery can fail),
//! the node delivers that owner's hints in batches: it reads each hinted set from the engine,
//! sends it to the owner as a plain `Replicate` (the owner merges it, so a duplicate delivery is
//! harmless), and on the owner's acknowledgement removes the hint — only if the stored hint is
//! still covered by what was delivered, so a write merged into the hint meanwhile is not lost
//! (it goes in the next round). A failed delivery releases the batch and stops this owner's
//! round; the next tick retries.

use std::sync::Arc;
use std::time::Duration;

use cairn_membership::{MemberEvent, Transport};
use cairn_replication::hints::DEFAULT_HINT_BATCH;
use cairn_replication::{NodeId, VersionVector};
use tokio::sync::{broadcast, watch};

use crate::node::keys::HintKey;
use crate::node::messages::{Request, Response};
use crate::node::metrics::Metrics;
use crate::node::{Node, NodeError};

/// How often owners with pending hints are retried, and the registry is pulled from a peer.
pub const HANDOFF_TICK: Duration = Duration::from_secs(1);
/// Registry anti-entropy runs every this many ticks.
pub const REGISTRY_SYNC_EVERY: u32 = 5;

/// Runs until `shutdown` turns true.
pub async fn run<T: Transport>(
    node: Arc<Node<T>>,
    mut events: broadcast::Receiver<MemberEvent>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut tick = tokio::time::interval(HANDOFF_TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut ticks = 0u32;
    loop {
        tokio::select! {
            _ = shutdown.changed() => {
                if *shutdown.borrow() { break; }
            }
            ev = events.recv() => match ev {
                Ok(MemberEvent::Up(owner)) => {
                    if let Ok(owner) = NodeId::new(owner) {
                        tracing::info!(%owner, "member up; delivering its hints");
                        node.deliver_hints(&owner).await;
                    }
                    if let Err(e) = node.sync_registry_once().await {
                        tracing::debug!(error = %e, "registry sync failed");
                    }
                }
                Ok(_) => {}
                Err(broadcast::error::RecvError::Lagged(n)) => {
                    tracing::debug!(missed = n, "membership events lagged; the tick catches up");
                }
                Err(broadcast::error::RecvError::Closed) => break,
            },
            _ = tick.tick() => {
                ticks = ticks.wrapping_add(1);
                let owners = node.hints.lock().deliverable_owners(&node.reachable());
                for owner in owners {
                    if &owner != node.id() {
                        node.deliver_hints(&owner).await;
                    }
                }
                if ticks % REGISTRY_SYNC_EVERY == 1 {
                    match node.sync_registry_once().await {
                        Ok(0) => {}
                        Ok(n) => tracing::info!(entries = n, "bucket registry caught up from a peer"),
                        Err(e) => tracing::debug!(error = %e, "registry sync failed"),
                    }
                }
            }
        }
    }
}

impl<T: Transport> Node<T> {
    /// Delivers every hint held for `owner`, batch by batch, until none is left or one fails.
    pub async fn deliver_hints(self: &Arc<Self>, owner: &NodeId) {
        loop {
            let batch = self.hints.lock().take_batch(owner, DEFAULT_HINT_BATCH);
            if batch.is_empty() {
                return;
            }
            let mut delivered = 0usize;
            for (i, d) in batch.iter().enumerate() {
                match self.deliver_one(owner, &d.key).await {
                    Ok(vv) => {
                        let vv = vv.unwrap_or_else(|| d.version.clone());
                        self.hints.lock().acknowledge(&d.key, owner, &vv);
                        delivered += 1;
                        Metrics::inc(&self.metrics.hints_delivered);
                    }
                    Err(e) => {
                        tracing::info!(%owner, error = %e, "hint delivery failed; retrying later");
                        Metrics::inc(&self.metrics.hint_delivery_failures);
                        let mut book = self.hints.lock();
                        for rest in &batch[i..] {
                            book.release(&rest.key, owner);
                        }
                        return;
                    }
                }
            }
            tracing::info!(%owner, delivered, "hints delivered");
        }
    }

    /// Sends one hinted set to its owner and removes it once acknowledged. Returns the version
    /// delivered (`None` if the hint was already gone).
    async fn deliver_one(
        self: &Arc<Self>,
        owner: &NodeId,
        key: &HintKey,
    ) -> Result<Option<VersionVector>, NodeError> {
        let (o, k) = (owner.to_string(), key.clone());
        let msg_and_vv = self
            .store
            .blocking(move |s| {
                Ok(match &k {
                    HintKey::Object(ok) => s.hinted_object(&o, ok)?.map(|set| {
                        let vv = set.join();
                        (Request::Replicate { key: ok.clone(), set, hint_for: None }, vv)
                    }),
                    HintKey::Bucket(name) => s.hinted_bucket(&o, name)?.map(|set| {
                        let vv = set.join();
                        (Request::BucketReplicate { name: name.clone(), set, hint_for: None }, vv)
                    }),
                })
            })
            .await?;
        let Some((msg, vv)) = msg_and_vv else { return Ok(None) };
        match self.rpc(owner, &msg).await? {
            Response::Ack { .. } => {}
            other => {
                return Err(NodeError::Internal(format!("unexpected answer to a hint: {other:?}")));
            }
        }
        let (o, k, v) = (owner.to_string(), key.clone(), vv.clone());
        self.store.blocking(move |s| s.remove_hint_if_delivered(&o, &k, &v)).await?;
        Ok(Some(vv))
    }

    /// Hints pending per owner (for `/cluster`).
    pub fn hints_pending(&self) -> std::collections::BTreeMap<NodeId, usize> {
        self.hints.lock().counts()
    }
}
