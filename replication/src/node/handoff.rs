//! Hinted handoff delivery and registry anti-entropy: the node's periodic work.
//!
//! HANDOFF
//! =======
//! On every handoff tick, and at once when the failure detector reports an owner up, the node
//! delivers that owner's hints in rounds of [`DEFAULT_HINT_BATCH`]: it reads each hinted set from
//! the store, sends it to the owner as a plain `Replicate` (the owner merges it, so a duplicate
//! delivery is harmless), and on the owner's acknowledgement removes the stored hint — only if it
//! is still covered by what was delivered, so a write merged into the hint meanwhile is not lost
//! (the book keeps it and the next round delivers it). A failed delivery releases that hint and
//! ends the owner's rounds until the next tick. Every fifth tick, and when a member comes up, the
//! node pulls the bucket registry from a random peer and merges it.

use std::sync::Arc;

use super::{MsgCont, NodeCore, REGISTRY_SYNC_EVERY, SendError, StoreCont};
use crate::error::Result;
use crate::hints::DEFAULT_HINT_BATCH;
use crate::id::NodeId;
use crate::node::keys::HintKey;
use crate::node::messages::{Request, Response};
use crate::node::store::{HintSet, StoreOp, StoreResult};
use crate::vclock::VersionVector;

/// One owner's delivery round in progress.
#[derive(Debug, Default)]
pub(super) struct Round {
    /// Deliveries of the current batch not finished.
    open: usize,
    /// One of them failed: no next batch until the next tick.
    failed: bool,
}

impl NodeCore {
    pub(super) fn handoff_tick(&mut self) {
        self.ticks += 1;
        let owners = self.hints.deliverable_owners(&self.up);
        for owner in owners {
            if owner != self.config.id {
                self.start_delivery(&owner);
            }
        }
        if self.ticks % REGISTRY_SYNC_EVERY == 1 {
            self.pull_registry();
        }
        self.cluster_tick();
        self.gc_tick();
    }

    /// Starts delivering `owner`'s hints, unless a round is already running.
    pub(super) fn start_delivery(&mut self, owner: &NodeId) {
        if self.deliveries.contains_key(owner) || !self.up.contains(owner) {
            return;
        }
        // Hints for a node that left are re-addressed to the current owners instead.
        if self.placement().is_some_and(|p| !p.is_member(owner)) {
            return;
        }
        self.next_batch(owner);
    }

    fn next_batch(&mut self, owner: &NodeId) {
        let batch = self.hints.take_batch(owner, DEFAULT_HINT_BATCH);
        if batch.is_empty() {
            if self.deliveries.remove(owner).is_some() {
                tracing::info!(%owner, "hints delivered");
            }
            return;
        }
        self.deliveries.insert(owner.clone(), Round { open: batch.len(), failed: false });
        for d in batch {
            let op = StoreOp::ReadHint { owner: owner.clone(), key: d.key.clone() };
            let cont = StoreCont::HintRead { owner: owner.clone(), key: d.key, version: d.version };
            self.store(op, cont);
        }
    }

    pub(super) fn hint_read(
        &mut self,
        owner: NodeId,
        key: HintKey,
        version: VersionVector,
        result: Result<StoreResult>,
    ) {
        match result {
            Ok(StoreResult::Hinted(Some(set))) => {
                let vv = set.join();
                let msg = match (set, &key) {
                    (HintSet::Object(set), HintKey::Object(k)) => {
                        Request::Replicate { key: k.clone(), set: Arc::new(set), hint_for: None }
                    }
                    (HintSet::Bucket(set), HintKey::Bucket(name)) => {
                        Request::BucketReplicate { name: name.clone(), set, hint_for: None }
                    }
                    _ => {
                        self.hints.release(&key, &owner);
                        return self.round_done(&owner, true);
                    }
                };
                let cont = MsgCont::HintDelivery { owner: owner.clone(), key, version: vv };
                self.send(owner, Arc::new(msg), cont);
            }
            Ok(StoreResult::Hinted(None)) => {
                // Already gone from the store (delivered by an earlier round).
                self.hints.acknowledge(&key, &owner, &version);
                self.round_done(&owner, false);
            }
            _ => {
                self.hints.release(&key, &owner);
                self.round_done(&owner, true);
            }
        }
    }

    pub(super) fn hint_delivered(
        &mut self,
        owner: NodeId,
        key: HintKey,
        version: VersionVector,
        result: std::result::Result<Response, SendError>,
    ) {
        match result {
            Ok(Response::Ack { .. }) => {
                let op = StoreOp::RemoveHint {
                    owner: owner.clone(),
                    key: key.clone(),
                    delivered: version.clone(),
                };
                self.store(op, StoreCont::HintRemoved { owner, key, version });
            }
            other => {
                let why = match other {
                    Ok(r) => super::describe(&r),
                    Err(e) => e.to_string(),
                };
                tracing::info!(%owner, why, "hint delivery failed; retrying later");
                self.stats.hint_delivery_failures += 1;
                self.hints.release(&key, &owner);
                self.round_done(&owner, true);
            }
        }
    }

    pub(super) fn hint_removed(
        &mut self,
        owner: NodeId,
        key: HintKey,
        version: VersionVector,
        result: Result<StoreResult>,
    ) {
        match result {
            Ok(_) => {
                self.hints.acknowledge(&key, &owner, &version);
                self.stats.hints_delivered += 1;
                self.round_done(&owner, false);
            }
            Err(_) => {
                self.stats.hint_delivery_failures += 1;
                self.hints.release(&key, &owner);
                self.round_done(&owner, true);
            }
        }
    }

    fn round_done(&mut self, owner: &NodeId, failed: bool) {
        let Some(r) = self.deliveries.get_mut(owner) else { return };
        r.open = r.open.saturating_sub(1);
        r.failed |= failed;
        if r.open == 0 {
            if r.failed || !self.up.contains(owner) {
                self.deliveries.remove(owner);
            } else {
                self.next_batch(owner);
            }
        }
    }

    /// Pulls the registry from one random peer that is up (registry anti-entropy).
    pub(super) fn pull_registry(&mut self) {
        if self.registry_pull {
            return;
        }
        let peers: Vec<NodeId> =
            self.up.iter().filter(|m| **m != self.config.id).cloned().collect();
        if peers.is_empty() {
            return;
        }
        let peer = peers[self.rng.below(peers.len())].clone();
        self.registry_pull = true;
        self.send(peer, Arc::new(Request::BucketRegistry), MsgCont::RegistryPull);
    }

    pub(super) fn registry_pulled(&mut self, result: std::result::Result<Response, SendError>) {
        match result {
            Ok(Response::Registry { entries }) => {
                self.store(StoreOp::ApplyRegistry { entries }, StoreCont::RegistryApplied);
            }
            _ => self.registry_pull = false,
        }
    }
}
