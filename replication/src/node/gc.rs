//! Tombstone collection at causal stability, and reclaiming deleted buckets' objects.
//!
//! COLLECTION
//! ==========
//! A delete leaves a tombstone on every replica so that it replicates and wins over what it saw;
//! removing it too early lets an old copy that missed the delete come back (the resurrection of
//! Cassandra's zombies and Riak's reaped keys). So a tombstone is collected only when it is
//! *causally stable* — nobody anywhere can still deliver anything it supersedes — never on a
//! timer alone:
//! 1. the primary owner of each partition (first in its preference list, stable layout only)
//!    finds tombstone-only sets whose newest delete is older than `--tombstone-grace` (default
//!    1 h: the cheap insurance against delayed messages and writes in flight);
//! 2. it asks **every** node it knows — each member of the layout (all must be up and answer) and
//!    every other node up — about each candidate (key, version vector C): a node votes no while it
//!    holds a hint for the key, or a replica of it that does not descend C (an owner that missed
//!    the delete, a stale copy on a former owner); yes otherwise. A node holding nothing for the
//!    key votes yes: it has nothing the tombstone must still supersede (an owner that deleted it
//!    in an earlier round, or never got the key at all);
//! 3. only if every vote is yes does it tell each owner to delete its replica **if it is still
//!    exactly C** (atomically per key: a write or merge since keeps it), after the store durably
//!    raised its counter floor above every counter in C (`LocalWrite::counter_floor`): a
//!    coordinator that no longer holds the key's history never reissues one of its dots.
//!
//! A layout change in progress, a member down, or a peer that does not answer stops a round (the
//! tombstones wait: "awaiting stability"); both messages carry the layout version and a node on
//! another version votes no. What is left when one owner deleted and another did not (a message
//! lost, a crash that lost the delete, a read repair that copied the tombstone back while the
//! owners were deleting) is a tombstone on some owners and nothing on the others: the next round
//! collects it. What cannot happen is an old value reaching an owner after its tombstone went:
//! every copy that could carry one (replicas, hints, stale former-owner copies) was seen to be at
//! or past C by its holder, and such states only grow.
//!
//! RECLAIMING
//! ==========
//! Objects of a bucket incarnation that was deleted (or replaced by a new one) stay in the engine
//! until reclaimed: every node walks its keys, a page per tick, a pass every
//! [`RECLAIM_PASS_MS`] or every grace, whichever is shorter, and deletes an object when its
//! bucket's registry entry here ended that incarnation at least a grace ago and after the
//! object's newest version (`store::incarnation_ended`) — so an object of an incarnation this
//! node has not heard of yet is never touched.

use std::collections::{BTreeSet, VecDeque};
use std::sync::Arc;

use super::{InboundId, Millis, MsgCont, NodeCore, SendError, StoreCont};
use crate::error::Result;
use crate::id::NodeId;
use crate::node::keys::{HintKey, ObjectKey};
use crate::node::messages::{Request, Response};
use crate::node::store::{StoreOp, StoreResult};
use crate::vclock::VersionVector;

/// Default minimum age of a delete before its tombstone may be collected, ms.
pub const DEFAULT_TOMBSTONE_GRACE_MS: Millis = 3_600_000;
/// Most candidates one scan returns.
pub const CANDIDATES_PER_SCAN: usize = 10_000;
/// Most tombstones one collection round asks about.
pub const ROUND_KEYS: usize = 256;
/// Longest time between two reclaim passes, ms.
pub const RECLAIM_PASS_MS: Millis = 600_000;

/// What the node reports about collection (`/cluster`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GcStatus {
    /// The grace, ms (`None`: collection is off).
    pub grace_ms: Option<Millis>,
    /// Tombstones found old enough and waiting for a round (their partitions' primary is this
    /// node).
    pub awaiting: usize,
    /// Tombstones the last round could not collect (a vote was no, or a node did not answer).
    pub blocked_last_round: usize,
}

/// One collection round in flight.
#[derive(Debug)]
struct Round {
    id: u64,
    version: u64,
    keys: Vec<(ObjectKey, VersionVector)>,
    ok: Vec<bool>,
    /// Nodes whose votes (or collect answers) are still awaited.
    waiting: BTreeSet<NodeId>,
    /// Votes are in; the deletes were sent.
    collecting: bool,
}

/// The node's collection bookkeeping.
#[derive(Debug, Default)]
pub(super) struct GcCore {
    /// The next scan for candidates is due at this time.
    next_scan: Millis,
    scanning: bool,
    candidates: VecDeque<(ObjectKey, VersionVector)>,
    round: Option<Round>,
    blocked: usize,
    /// The reclaim pass in progress: its cursor (`Some(None)`: at the start), or none.
    reclaim: Option<Option<Vec<u8>>>,
    reclaiming: bool,
    next_reclaim: Millis,
    /// A peer's registry was merged since start: reclaiming judges incarnations by a registry
    /// at least that fresh.
    pub(super) registry_pulled: bool,
}

impl NodeCore {
    /// The node's collection, for `/cluster`.
    pub fn tombstones(&self) -> GcStatus {
        GcStatus {
            grace_ms: self.config.tombstone_grace_ms,
            awaiting: self.gc.candidates.len() + self.gc.round.as_ref().map_or(0, |r| r.keys.len()),
            blocked_last_round: self.gc.blocked,
        }
    }

    /// Runs on every handoff tick: the next scan, round or reclaim page, when due.
    pub(super) fn gc_tick(&mut self) {
        let Some(grace) = self.config.tombstone_grace_ms else { return };
        self.reclaim_tick(grace);
        if self.gc.round.is_some() || self.gc.scanning || !self.gc_may_run() {
            return;
        }
        if !self.gc.candidates.is_empty() {
            return self.start_round();
        }
        if self.now < self.gc.next_scan {
            return;
        }
        self.gc.next_scan = self.now + (grace / 4).clamp(1_000, RECLAIM_PASS_MS);
        let primaries = self.primary_partitions();
        if primaries.is_empty() {
            return;
        }
        self.gc.scanning = true;
        let op = StoreOp::TombstoneCandidates {
            partitions: primaries,
            grace_ms: grace,
            limit: CANDIDATES_PER_SCAN,
        };
        self.store(op, StoreCont::GcScan);
    }

    /// Whether collection may run now: a stable layout, no partition sync, every member up.
    fn gc_may_run(&self) -> bool {
        let Some(p) = &self.cluster.placement else { return false };
        p.layout().transition.is_none()
            && self.cluster.sync.is_none()
            && p.layout().voters().iter().all(|v| self.up.contains(v))
    }

    /// The partitions whose first owner is this node.
    fn primary_partitions(&self) -> Vec<u32> {
        let Some(p) = &self.cluster.placement else { return Vec::new() };
        let ring = p.ring();
        (0..ring.partitions())
            .filter(|&q| ring.preference_list(q).first() == Some(&self.config.id))
            .collect()
    }

    pub(super) fn gc_scanned(&mut self, result: Result<StoreResult>) {
        self.gc.scanning = false;
        match result {
            Ok(StoreResult::Tombstones(found)) => {
                self.gc.candidates = found.into();
                if !self.gc.candidates.is_empty() && self.gc_may_run() {
                    self.start_round();
                }
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "tombstone collection: scanning failed"),
        }
    }

    fn start_round(&mut self) {
        let version = self.layout_version();
        let mut keys = Vec::with_capacity(ROUND_KEYS);
        while keys.len() < ROUND_KEYS {
            let Some((k, vv)) = self.gc.candidates.pop_front() else { break };
            // A hint held here for the key may carry something the tombstone supersedes.
            if !self.hints.has_pending_for_key(&HintKey::Object(k.clone())) {
                keys.push((k, vv));
            }
        }
        if keys.is_empty() {
            return;
        }
        let Some(p) = &self.cluster.placement else { return };
        let mut ask: BTreeSet<NodeId> = p.layout().voters();
        ask.extend(self.up.iter().cloned());
        ask.remove(&self.config.id);
        if self.mutated(super::Mutant::CollectWithoutVotes) {
            ask.clear();
        }
        let id = self.fresh_id();
        let n = keys.len();
        self.gc.round = Some(Round {
            id,
            version,
            keys: keys.clone(),
            ok: vec![true; n],
            waiting: ask.clone(),
            collecting: false,
        });
        let request = Arc::new(Request::TombstoneCheck { version, keys });
        for node in ask {
            self.send(node.clone(), Arc::clone(&request), MsgCont::GcVote { id, node });
        }
        self.gc_progress();
    }

    /// A node's votes on the round's tombstones.
    pub(super) fn gc_vote(
        &mut self,
        id: u64,
        node: NodeId,
        result: std::result::Result<Response, SendError>,
    ) {
        let Some(round) = self.gc.round.as_mut().filter(|r| r.id == id && !r.collecting) else {
            return;
        };
        round.waiting.remove(&node);
        match result {
            Ok(Response::TombstoneVotes { ok }) if ok.len() == round.ok.len() => {
                for (mine, theirs) in round.ok.iter_mut().zip(ok) {
                    *mine &= theirs;
                }
            }
            other => {
                let why = match other {
                    Ok(r) => super::describe(&r),
                    Err(e) => e.to_string(),
                };
                tracing::debug!(%node, why, "tombstone collection: no votes; the round waits");
                round.ok.iter_mut().for_each(|o| *o = false);
            }
        }
        self.gc_progress();
    }

    /// Every vote is in: delete what every node agreed on, on every owner.
    fn gc_progress(&mut self) {
        let version = self.layout_version();
        let Some(round) = self.gc.round.as_mut() else { return };
        if !round.waiting.is_empty() || round.collecting {
            return;
        }
        let blocked = round.ok.iter().filter(|o| !**o).count();
        let stable = round.version == version && self.cluster.placement.is_some();
        let agreed: Vec<(ObjectKey, VersionVector)> = round
            .keys
            .iter()
            .zip(&round.ok)
            .filter(|(_, ok)| **ok && stable)
            .map(|(k, _)| k.clone())
            .collect();
        self.gc.blocked = blocked;
        if agreed.is_empty() {
            self.gc.round = None;
            return;
        }
        let id = round.id;
        round.collecting = true;
        // Each owner gets its own keys (this node is the primary of all of them).
        let Some(p) = &self.cluster.placement else { return };
        let mut per_owner: std::collections::BTreeMap<NodeId, Vec<(ObjectKey, VersionVector)>> =
            Default::default();
        for (k, vv) in &agreed {
            for o in p.ring().preference_list(p.partition_of(k.hash())) {
                per_owner.entry(o.clone()).or_default().push((k.clone(), vv.clone()));
            }
        }
        let me = self.config.id.clone();
        if let Some(round) = self.gc.round.as_mut() {
            round.waiting = per_owner.keys().filter(|o| **o != me).cloned().collect();
            round.waiting.insert(me.clone());
        }
        for (owner, keys) in per_owner {
            if owner == me {
                self.store(StoreOp::CollectTombstones { keys }, StoreCont::GcCollected { id });
            } else {
                let request = Request::CollectTombstones { version, keys };
                self.send(owner.clone(), Arc::new(request), MsgCont::GcCollect { id, node: owner });
            }
        }
    }

    /// An owner (or this node's store) deleted its copies.
    pub(super) fn gc_collected(
        &mut self,
        id: u64,
        node: NodeId,
        local: Option<Result<StoreResult>>,
    ) {
        if let Some(result) = local {
            match result {
                Ok(StoreResult::Collected(n)) => self.stats.tombstones_collected += n,
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "tombstone collection: deleting failed"),
            }
        }
        let Some(round) = self.gc.round.as_mut().filter(|r| r.id == id && r.collecting) else {
            return;
        };
        round.waiting.remove(&node);
        if round.waiting.is_empty() {
            self.gc.round = None;
            self.stats.tombstone_rounds += 1;
        }
    }

    // ---- the other nodes' side ----

    /// A primary asks about tombstones: vote after reading the replicas.
    pub(super) fn on_tombstone_check(
        &mut self,
        id: InboundId,
        version: u64,
        keys: Vec<(ObjectKey, VersionVector)>,
    ) {
        if version != self.layout_version() || !self.gc_may_run() {
            let ok = vec![false; keys.len()];
            return self.respond(id, Response::TombstoneVotes { ok });
        }
        let op = StoreOp::Versions { keys: keys.iter().map(|(k, _)| k.clone()).collect() };
        self.store(op, StoreCont::GcVersions { id, keys });
    }

    pub(super) fn gc_versions(
        &mut self,
        id: InboundId,
        keys: Vec<(ObjectKey, VersionVector)>,
        result: Result<StoreResult>,
    ) {
        let Ok(StoreResult::Versions(held)) = result else {
            let ok = vec![false; keys.len()];
            return self.respond(id, Response::TombstoneVotes { ok });
        };
        let ok = keys
            .iter()
            .zip(held)
            .map(|((k, c), vv)| {
                let hinted = self.hints.has_pending_for_key(&HintKey::Object(k.clone()));
                vv.is_none_or(|v| v.descends(c)) && !hinted
            })
            .collect();
        self.respond(id, Response::TombstoneVotes { ok });
    }

    /// A primary says every node agreed: delete these tombstones if still exactly so.
    pub(super) fn on_collect(
        &mut self,
        id: InboundId,
        version: u64,
        keys: Vec<(ObjectKey, VersionVector)>,
    ) {
        if version != self.layout_version() {
            return self.respond(id, Response::Collected { count: 0 });
        }
        self.store(StoreOp::CollectTombstones { keys }, StoreCont::GcInbound { id });
    }

    pub(super) fn gc_inbound_collected(&mut self, id: InboundId, result: Result<StoreResult>) {
        let count = match result {
            Ok(StoreResult::Collected(n)) => n,
            _ => 0,
        };
        self.stats.tombstones_collected += count;
        self.respond(id, Response::Collected { count });
    }

    // ---- reclaiming deleted buckets ----

    fn reclaim_tick(&mut self, grace: Millis) {
        let alone = self
            .cluster
            .placement
            .as_ref()
            .is_some_and(|p| p.layout().voters().iter().all(|v| *v == self.config.id));
        if self.gc.reclaiming || !(self.gc.registry_pulled || alone) {
            return;
        }
        let cursor = match self.gc.reclaim.take() {
            Some(c) => c,
            None if self.now >= self.gc.next_reclaim => {
                self.gc.next_reclaim = self.now + grace.clamp(1_000, RECLAIM_PASS_MS);
                None
            }
            None => return,
        };
        // The owned partitions as anti-entropy keeps them (none while a change runs).
        let stable = self.cluster.sync.is_none()
            && self.cluster.placement.as_ref().is_some_and(|p| p.layout().transition.is_none());
        let owned = stable.then(|| self.owned_partitions().to_vec());
        let Some(p) = &self.cluster.placement else { return };
        self.gc.reclaiming = true;
        let mut hint_owners: BTreeSet<NodeId> = p.layout().voters();
        hint_owners.extend(self.hints.counts().into_keys());
        let op = StoreOp::Reclaim {
            grace_ms: grace,
            partitions_total: p.ring().partitions(),
            owned,
            hint_owners: hint_owners.into_iter().collect(),
            after: cursor,
        };
        self.store(op, StoreCont::Reclaimed);
    }

    pub(super) fn reclaimed(&mut self, result: Result<StoreResult>) {
        self.gc.reclaiming = false;
        match result {
            Ok(StoreResult::Dropped(n, next)) => {
                self.stats.objects_reclaimed += n;
                if n > 0 {
                    tracing::info!(
                        replicas = n,
                        "reclaimed replicas nobody needs (deleted buckets, fallback copies)"
                    );
                }
                self.gc.reclaim = next.map(Some);
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "reclaiming deleted buckets failed"),
        }
    }
}
