//! Membership changes inside the node: the layout it follows, layout consensus, status polls,
//! partition sync and the re-addressing of hints for removed members.
//!
//! MEMBERSHIP CHANGES
//! ==================
//! The rules are in [`crate::layout`] (three versions per change, what each allows) and
//! [`crate::paxos`] (how a version is chosen). This module runs them:
//! - **Adoption.** A node follows the newest committed layout it has heard of: from its data
//!   directory at start, from a `Commit` push, from a peer's `Status` answer (every node pulls
//!   from a random peer every few ticks, and from a member as soon as it comes up). A layout is
//!   stored before the node acknowledges it.
//! - **Acknowledgement.** A node's `acked` version is its stored layout version, held back while
//!   a write it planned under an older version is still running.
//! - **Proposals.** An operator's change (any node, member or not) and the automatic steps of a
//!   change run the Paxos proposer; at most one proposal per node at a time.
//! - **The claimant** — the smallest-id voter that is up — polls every voter's status each tick
//!   while a change is in progress, and proposes the next step once every voter acknowledged the
//!   current version (and, when syncing, every voter pulled its partitions).
//! - **Partition sync.** A node that is a new owner of some partitions pulls them, once every
//!   voter acknowledged the `Syncing` version, in two passes: first the object hints every
//!   other voter holds for those partitions (for any owner), then the replicas of every old
//!   owner still a member. Each pass is pages of objects in engine-key order after a cursor
//!   (one scan per source for all the partitions), merged on arrival (DVV merge: a page
//!   delivered twice is harmless). The order matters: an acknowledged write that lived only in
//!   hints (its owners were down) is either still a hint when the first pass reads it, or was
//!   delivered to its owner's replica before the second pass starts. Cursors are stored with
//!   the layout, so a restarted node resumes where it was; a restarted source just answers from
//!   the cursor. `--handoff-rate` spaces the pages.
//! - **Hints for a removed member** are re-addressed: stored again as hints for each current
//!   owner of the key (applied locally when this node is one), then removed.
//!
//! - **Cleanup.** [`CLEANUP_DELAY_MS`] after a node adopted a stable layout that followed a
//!   change, it deletes its replicas of the partitions it does not own in it (every new owner
//!   pulled them before the change could complete, and every voter has left the versions that
//!   read the old owners; the delay covers gateways still catching up). Hints are never dropped.
//!   Done once per stable version (stored), in pages.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::{Answer, ClientId, InboundId, MsgCont, NodeCore, SendError, StoreCont};
use crate::dvv::{Body, SiblingSet};
use crate::error::{Error, Result};
use crate::hints::DEFAULT_HINT_BATCH;
use crate::id::NodeId;
use crate::layout::{Change, Layout, Moves, Phase, Placement};
use crate::node::keys::{HintKey, ObjectKey};
use crate::node::messages::{NodeStatus, Request, Response, SyncProgress};
use crate::node::store::{HintSet, ScanPage, StoreOp, StoreResult};
use crate::paxos::{Acceptor, Ballot, Progress, Proposal, Vote};
use crate::vclock::VersionVector;

/// Objects per sync page.
pub const SYNC_PAGE_ENTRIES: usize = 500;
/// About the most bytes per sync page.
pub const SYNC_PAGE_BYTES: u64 = 4 << 20;
/// How long a node follows a new stable layout before it drops what it no longer owns, ms.
pub const CLEANUP_DELAY_MS: u64 = 30_000;
/// Proposal attempts before an operator's change is answered with an error.
const MAX_PROPOSAL_ATTEMPTS: u32 = 6;

/// What a node stores about the cluster, beside its data: written whole on every change.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterState {
    /// Increases with every save; a store keeps the highest it was given.
    pub generation: u64,
    /// The newest committed layout this node follows (`None`: it has not learnt one yet).
    pub layout: Option<Layout>,
    /// Its Paxos acceptor state for the next version.
    pub acceptor: Acceptor,
    /// The newest change (by start version) whose partitions this node has pulled.
    pub synced: u64,
    /// Sync cursors of the change in progress.
    pub sync: Option<SavedSync>,
    /// The stable layout version whose unowned partitions this node has dropped.
    #[serde(default)]
    pub cleaned: u64,
}

/// Stored progress of a partition sync.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SavedSync {
    /// The change's start version.
    pub started: u64,
    /// Per source and pass (`true`: its hints): the cursor, and whether the scan is complete.
    pub cursors: Vec<SavedCursor>,
    /// Objects received so far.
    pub keys: u64,
    /// Bytes received so far.
    pub bytes: u64,
}

/// One stored sync cursor.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SavedCursor {
    /// The source node.
    pub node: NodeId,
    /// The hints pass (else the replicas pass).
    pub hints: bool,
    /// The engine key the next page starts after.
    pub after: Option<Vec<u8>>,
    /// The scan is complete.
    pub done: bool,
}

/// What a change did, for the operator.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LayoutOutcome {
    /// The committed layout (the change's `Syncing` version).
    pub layout: Layout,
    /// Partitions it moves, and the minimum.
    pub moves: Moves,
}

/// What runs after a cluster-state save is durable.
#[derive(Debug, Clone)]
pub(super) enum AfterSave {
    Nothing,
    Respond(InboundId, Response),
    /// This node's own vote in its proposal.
    OwnVote(Ballot, Vote),
}

/// One source of a running sync.
#[derive(Debug, Clone)]
struct Source {
    partitions: Vec<u32>,
    after: Option<Vec<u8>>,
    done: bool,
    busy: bool,
    next_at: u64,
}

/// The partition sync this node runs for the change in progress.
#[derive(Debug, Clone)]
pub(super) struct SyncRun {
    started: u64,
    /// By (source, hints pass).
    sources: BTreeMap<(NodeId, bool), Source>,
    /// Every voter acknowledged the change: pulling may begin.
    gate_open: bool,
    keys: u64,
    bytes: u64,
}

impl SyncRun {
    fn progress(&self) -> SyncProgress {
        let mut parts: BTreeMap<u32, bool> = BTreeMap::new();
        for s in self.sources.values() {
            // A partition is done once every pass covering it is (hint passes cover them all).
            for p in &s.partitions {
                let e = parts.entry(*p).or_insert(true);
                *e &= s.done;
            }
        }
        SyncProgress {
            started: self.started,
            partitions: parts.len(),
            partitions_done: parts.values().filter(|d| **d).count(),
            keys: self.keys,
            bytes: self.bytes,
            started_pulling: self.gate_open,
        }
    }
}

/// An operator's or the claimant's proposal in progress.
pub(super) struct ProposalFlow {
    proposal: Proposal,
    client: Option<ClientId>,
    attempts: u32,
    /// Retry (with a higher ballot) at this time.
    retry_at: Option<u64>,
}

/// Cluster bookkeeping of a node.
#[derive(Default)]
pub(super) struct ClusterCore {
    pub(super) placement: Option<Placement>,
    pub(super) state: ClusterState,
    /// The highest layout version stored durably.
    durable_version: u64,
    pub(super) sync: Option<SyncRun>,
    /// Progress of the last sync that ran (for status after it finished).
    last_sync: Option<SyncProgress>,
    proposal: Option<ProposalFlow>,
    /// The latest status heard from each peer.
    pub(super) peers: BTreeMap<NodeId, NodeStatus>,
    max_round: u64,
    layout_pull: bool,
    /// When the current layout was adopted (the cleanup waits [`CLEANUP_DELAY_MS`]).
    adopted_at: u64,
    /// A cleanup page is running.
    cleaning: bool,
    /// Keys dropped by cleanups since start.
    pub(super) dropped: u64,
    /// Hints being re-addressed: open store operations and whether one failed.
    readdressing: BTreeMap<(NodeId, HintKey), (usize, bool, VersionVector)>,
}

pub(super) fn set_bytes(key: &ObjectKey, set: &SiblingSet) -> u64 {
    let body: usize = set
        .siblings()
        .iter()
        .map(|d| match &d.value.body {
            Body::Bytes(b) => b.len() + 64,
            Body::Tombstone => 64,
            // The chunks move separately (fetched by the receiver before it merges).
            Body::Chunked(_) => 96,
        })
        .sum();
    (body + key.bucket.len() + key.name.len() + 16) as u64
}

impl NodeCore {
    /// Sets the layout at start: the stored state, else version 1 from `--members`, else none.
    pub(super) fn init_cluster(&mut self, restored: Option<ClusterState>) -> Result<()> {
        let restored_version =
            restored.as_ref().and_then(|s| s.layout.as_ref()).map_or(0, |l| l.version);
        let mut state = restored.unwrap_or_default();
        if state.layout.is_none() && !self.config.members.is_empty() {
            if !self.config.members.contains(&self.config.id) {
                return Err(Error::InvalidRing(format!("{} is not a ring member", self.config.id)));
            }
            state.layout =
                Some(Layout::initial(&self.config.members, self.config.partitions, self.config.n)?);
        }
        let stored_version = restored_version;
        self.cluster.state = state;
        if let Some(l) = self.cluster.state.layout.clone() {
            self.install(l)?;
        }
        self.cluster.durable_version = stored_version;
        self.save_cluster(AfterSave::Nothing);
        Ok(())
    }

    /// The layout this node follows.
    pub fn layout(&self) -> Option<&Layout> {
        self.cluster.placement.as_ref().map(Placement::layout)
    }

    /// The layout with its rings.
    pub fn placement(&self) -> Option<&Placement> {
        self.cluster.placement.as_ref()
    }

    /// What this node tells its peers about itself.
    pub fn status(&self) -> NodeStatus {
        let version = self.layout().map_or(0, |l| l.version);
        let oldest_write = self.writes.values().map(|w| w.layout).min().unwrap_or(u64::MAX);
        NodeStatus {
            version,
            acked: self.cluster.durable_version.min(version).min(oldest_write),
            synced: self.cluster.state.synced,
            layout: None,
            sync: self
                .cluster
                .sync
                .as_ref()
                .map(SyncRun::progress)
                .or_else(|| self.cluster.last_sync.clone()),
        }
    }

    /// The latest status heard from each peer.
    pub fn peer_statuses(&self) -> &BTreeMap<NodeId, NodeStatus> {
        &self.cluster.peers
    }

    fn placement_or_err(&self) -> Result<&Placement> {
        self.cluster.placement.as_ref().ok_or_else(|| {
            Error::Unavailable("this node has not learnt the cluster layout yet".into())
        })
    }

    /// Computes the rings of `layout` and makes it current (no checks, no save).
    fn install(&mut self, layout: Layout) -> Result<()> {
        let placement = Placement::new(layout)?;
        let mut owners: Vec<NodeId> = placement.layout().voters().into_iter().collect();
        if let Some(b) = placement.banned() {
            owners.push(b.clone());
            self.up.remove(b);
        }
        self.members = Arc::new(owners);
        self.cluster.state.acceptor.align(placement.version());
        self.cluster.placement = Some(placement);
        self.cluster.adopted_at = self.now;
        self.reconcile_sync();
        Ok(())
    }

    /// Adopts `layout` if it is newer than the current one; stores it. Returns whether it did.
    pub(super) fn adopt(&mut self, layout: Layout) -> bool {
        let current = self.layout().map_or(0, |l| l.version);
        if layout.version <= current {
            return false;
        }
        if let Some(cur) = self.layout()
            && (cur.partitions != layout.partitions || cur.n != layout.n)
        {
            tracing::error!(
                version = layout.version,
                "refusing a layout with a different Q or N: is this node from another cluster?"
            );
            return false;
        }
        let version = layout.version;
        let describe = match &layout.transition {
            Some(t) => format!("{} ({:?})", t.change, t.phase),
            None => "stable".into(),
        };
        let members: Vec<String> = layout.members.iter().map(NodeId::to_string).collect();
        if let Err(e) = self.install(layout) {
            tracing::error!(error = %e, "cannot use the layout");
            return false;
        }
        tracing::info!(version, change = %describe, ?members, "layout adopted");
        self.save_cluster(AfterSave::Nothing);
        // A new member learns the registry now rather than at the next anti-entropy tick.
        self.pull_registry();
        true
    }

    pub(super) fn save_cluster(&mut self, then: AfterSave) {
        // The stored layout is the one followed (`state.layout` is only read at start).
        self.cluster.state.layout = self.layout().cloned();
        self.cluster.state.generation += 1;
        let state = Box::new(self.cluster.state.clone());
        let version = state.layout.as_ref().map_or(0, |l| l.version);
        self.store(StoreOp::SaveCluster(state), StoreCont::ClusterSaved { version, then });
    }

    pub(super) fn cluster_saved(
        &mut self,
        version: u64,
        then: AfterSave,
        result: Result<StoreResult>,
    ) {
        if let Err(e) = result {
            tracing::error!(error = %e, "storing the cluster state failed");
            match then {
                AfterSave::Respond(id, _) => self.respond(
                    id,
                    Response::Error { code: e.code().to_owned(), message: e.to_string() },
                ),
                AfterSave::OwnVote(ballot, _) => self.proposal_vote(&ballot, None, None),
                AfterSave::Nothing => {}
            }
            return;
        }
        self.cluster.durable_version = self.cluster.durable_version.max(version);
        match then {
            AfterSave::Nothing => {}
            AfterSave::Respond(id, response) => self.respond(id, response),
            AfterSave::OwnVote(ballot, vote) => {
                let me = self.config.id.clone();
                self.proposal_vote(&ballot, Some(me), Some(vote));
            }
        }
    }

    // ---- inbound ----

    pub(super) fn on_cluster_inbound(&mut self, id: InboundId, request: Request) {
        match request {
            Request::Status { version } => {
                let mut status = self.status();
                if status.version > version {
                    status.layout = self.layout().cloned();
                }
                self.respond(id, Response::Status(Box::new(status)));
            }
            Request::Prepare { version, ballot } => {
                let Some(committed) = self.layout().cloned() else {
                    let vote = Vote::Behind { version: 0 };
                    return self.respond(id, Response::Vote(Box::new(vote)));
                };
                self.cluster.max_round = self.cluster.max_round.max(ballot.round);
                let (vote, changed) =
                    self.cluster.state.acceptor.prepare(&committed, version, &ballot);
                self.vote_answer(id, vote, changed);
            }
            Request::Accept { version, ballot, layout } => {
                let Some(committed) = self.layout().cloned() else {
                    let vote = Vote::Behind { version: 0 };
                    return self.respond(id, Response::Vote(Box::new(vote)));
                };
                self.cluster.max_round = self.cluster.max_round.max(ballot.round);
                let (vote, changed) =
                    self.cluster.state.acceptor.accept(&committed, version, &ballot, &layout);
                self.vote_answer(id, vote, changed);
            }
            Request::Commit { layout } => {
                self.adopt(layout);
                self.respond(id, Response::Ack { vv: VersionVector::new() });
            }
            Request::SyncPage {
                partitions_total,
                mut partitions,
                hints,
                after,
                max_entries,
                max_bytes,
            } => {
                partitions.sort_unstable();
                partitions.dedup();
                let op = StoreOp::Scan {
                    partitions_total,
                    partitions,
                    hints,
                    after,
                    max_entries: (max_entries as usize).clamp(1, SYNC_PAGE_ENTRIES * 4),
                    max_bytes: max_bytes.clamp(1, SYNC_PAGE_BYTES * 4),
                };
                self.store(op, StoreCont::Inbound { id, hint: None });
            }
            _ => {}
        }
    }

    fn vote_answer(&mut self, id: InboundId, vote: Vote, changed: bool) {
        let response = Response::Vote(Box::new(vote));
        if changed {
            self.save_cluster(AfterSave::Respond(id, response));
        } else {
            self.respond(id, response);
        }
    }

    // ---- the operator's changes and the proposer ----

    /// An operator's change, received by this node.
    pub(super) fn start_change(&mut self, client: ClientId, change: Change) {
        let candidate = match self.placement_or_err().and_then(|p| p.layout().start(change.clone()))
        {
            Ok(c) => c,
            Err(e) => return self.answer(client, Err(e)),
        };
        match &change {
            Change::Add(n) | Change::Decommission(n) if !self.is_up(n) => {
                let what = if matches!(change, Change::Add(_)) {
                    "connected to this node"
                } else {
                    "up: decommissioning streams its data, so it must run (remove it with force if it is gone for good)"
                };
                return self.answer(client, Err(Error::NoSuchNode(format!("{n} is not {what}"))));
            }
            _ => {}
        }
        if self.cluster.proposal.is_some() {
            return self.answer(
                client,
                Err(Error::ChangeInProgress("a layout change is being decided".into())),
            );
        }
        self.start_proposal(Some(client), candidate);
    }

    fn is_up(&self, node: &NodeId) -> bool {
        *node == self.config.id || self.up.contains(node)
    }

    fn start_proposal(&mut self, client: Option<ClientId>, candidate: Layout) {
        let Some(committed) = self.layout() else { return };
        let voters: Vec<NodeId> = committed.voters().into_iter().collect();
        let promised = self.cluster.state.acceptor.promised.as_ref().map_or(0, |b| b.round);
        let round = self.cluster.max_round.max(promised) + 1;
        self.cluster.max_round = round;
        let ballot = Ballot { round, node: self.config.id.clone() };
        tracing::info!(version = candidate.version, round, "proposing a layout");
        let proposal = Proposal::new(candidate, ballot, voters);
        self.cluster.proposal =
            Some(ProposalFlow { proposal, client, attempts: 1, retry_at: None });
        self.send_phase(None);
    }

    /// Sends phase 1 (`value` = None) or phase 2 of the current proposal to every voter.
    fn send_phase(&mut self, value: Option<Layout>) {
        let Some(f) = &self.cluster.proposal else { return };
        let ballot = f.proposal.ballot.clone();
        let version = f.proposal.version;
        let voters = f.proposal.voters.clone();
        let request = Arc::new(match &value {
            None => Request::Prepare { version, ballot: ballot.clone() },
            Some(l) => Request::Accept { version, ballot: ballot.clone(), layout: l.clone() },
        });
        let me = self.config.id.clone();
        for v in voters.iter().cloned() {
            if v == me {
                continue;
            }
            let cont = MsgCont::Vote { ballot: ballot.clone(), node: v.clone() };
            self.send(v, Arc::clone(&request), cont);
        }
        if voters.contains(&me) {
            let Some(committed) = self.layout().cloned() else { return };
            let acceptor = &mut self.cluster.state.acceptor;
            let (vote, changed) = match &value {
                None => acceptor.prepare(&committed, version, &ballot),
                Some(l) => acceptor.accept(&committed, version, &ballot, l),
            };
            if changed {
                self.save_cluster(AfterSave::OwnVote(ballot, vote));
            } else {
                self.proposal_vote(&ballot, Some(me), Some(vote));
            }
        }
    }

    pub(super) fn vote_reply(
        &mut self,
        ballot: Ballot,
        node: NodeId,
        result: std::result::Result<Response, SendError>,
    ) {
        let vote = match result {
            Ok(Response::Vote(v)) => Some(*v),
            _ => None,
        };
        self.proposal_vote(&ballot, Some(node), vote);
    }

    /// A vote (or a failure: `vote` None) for the proposal with `ballot`.
    fn proposal_vote(&mut self, ballot: &Ballot, node: Option<NodeId>, vote: Option<Vote>) {
        if let Some(Vote::Committed(l)) = &vote {
            let l = l.clone();
            self.adopt(l);
        }
        let Some(f) = self.cluster.proposal.as_mut() else { return };
        if f.proposal.ballot != *ballot || f.retry_at.is_some() {
            return;
        }
        let current = self.cluster.placement.as_ref().map_or(0, |p| p.version());
        if current >= f.proposal.version {
            // The version was decided (by another proposer, or by this one before a retry).
            let chosen = self.layout().cloned();
            return self.finish_proposal(chosen);
        }
        let Some(node) = node else { return };
        let vote = match vote {
            Some(Vote::Behind { .. }) | Some(Vote::Committed(_)) => None,
            v => v,
        };
        match f.proposal.on_vote(&node, vote) {
            Progress::Waiting => {}
            Progress::Accept(value) => self.send_phase(Some(value)),
            Progress::Chosen(value) => {
                self.broadcast_commit(&value);
                self.adopt(value.clone());
                self.finish_proposal(Some(value));
            }
            Progress::Failed { seen } => {
                self.cluster.max_round = self.cluster.max_round.max(seen);
                let Some(f) = self.cluster.proposal.as_mut() else { return };
                if f.attempts >= MAX_PROPOSAL_ATTEMPTS {
                    let f = self.cluster.proposal.take();
                    if let Some(ProposalFlow { client: Some(c), .. }) = f {
                        self.answer(
                            c,
                            Err(Error::Unavailable(
                                "no majority of the voters accepted the layout change; check \
                                 that most members are up, then retry"
                                    .into(),
                            )),
                        );
                    }
                    return;
                }
                let pause = 50 + self.rng.below(400) as u64;
                f.retry_at = Some(self.now + pause);
            }
        }
    }

    fn finish_proposal(&mut self, chosen: Option<Layout>) {
        let Some(f) = self.cluster.proposal.take() else { return };
        let Some(client) = f.client else { return };
        let version = f.proposal.version;
        // The layout at the proposal's version decides: it may already be past it.
        let ours = chosen.filter(|l| l.version == version && *l == f.proposal.candidate);
        let result = match (ours, &self.cluster.placement) {
            (Some(layout), Some(p)) if p.version() == layout.version => {
                Ok(Answer::Layout(LayoutOutcome { layout, moves: p.moves() }))
            }
            (Some(layout), _) => {
                let moves = Placement::new(layout.clone())
                    .map(|p| p.moves())
                    .unwrap_or(Moves { partitions_to_move: 0, minimum: 0 });
                Ok(Answer::Layout(LayoutOutcome { layout, moves }))
            }
            (None, _) => Err(Error::ChangeInProgress(format!(
                "another layout was chosen for version {version}; read GET /cluster and retry"
            ))),
        };
        self.answer(client, result);
    }

    fn broadcast_commit(&mut self, layout: &Layout) {
        let mut to: BTreeSet<NodeId> = layout.voters();
        to.extend(self.up.iter().cloned());
        to.remove(&self.config.id);
        let request = Arc::new(Request::Commit { layout: layout.clone() });
        for n in to {
            self.send(n, Arc::clone(&request), MsgCont::Committed);
        }
    }

    // ---- periodic work ----

    /// Runs on every handoff tick.
    pub(super) fn cluster_tick(&mut self) {
        // Retry a proposal whose ballot lost.
        if let Some(f) = self.cluster.proposal.as_mut()
            && f.retry_at.is_some_and(|t| t <= self.now)
        {
            f.retry_at = None;
            f.attempts += 1;
            let candidate = f.proposal.candidate.clone();
            let voters = f.proposal.voters.clone();
            let round = self.cluster.max_round + 1;
            self.cluster.max_round = round;
            let ballot = Ballot { round, node: self.config.id.clone() };
            f.proposal = Proposal::new(candidate, ballot, voters);
            self.send_phase(None);
        }
        let changing = self.layout().is_some_and(Layout::changing);
        let no_layout = self.layout().is_none();
        if no_layout || changing || self.ticks.is_multiple_of(super::REGISTRY_SYNC_EVERY) {
            self.poll_statuses(!changing);
        }
        // Also from the tick, not only on status answers: a lone voter has no one to ask.
        self.check_gate();
        self.claim();
        self.readdress_hints();
        self.pump_sync();
        self.cleanup_step(None);
    }

    // ---- cleanup ----

    /// Starts (`cursor` None) or continues the cleanup of the current stable layout when due.
    fn cleanup_step(&mut self, cursor: Option<Vec<u8>>) {
        let Some(p) = &self.cluster.placement else { return };
        let l = p.layout();
        let due = l.transition.is_none()
            && l.version > 1
            && l.version > self.cluster.state.cleaned
            && self.now >= self.cluster.adopted_at + CLEANUP_DELAY_MS;
        if !due || (cursor.is_none() && self.cluster.cleaning) {
            return;
        }
        let q = p.ring().partitions();
        let me = &self.config.id;
        let partitions: Vec<u32> = (0..q).filter(|x| !p.owns(me, *x)).collect();
        let version = l.version;
        if partitions.is_empty() {
            self.cluster.state.cleaned = version;
            self.save_cluster(AfterSave::Nothing);
            return;
        }
        self.cluster.cleaning = true;
        let op = StoreOp::DropPartitions { partitions_total: q, partitions, after: cursor };
        self.store(op, StoreCont::Cleaned { version });
    }

    pub(super) fn cleaned(&mut self, version: u64, result: Result<StoreResult>) {
        self.cluster.cleaning = false;
        match result {
            Ok(StoreResult::Dropped(n, next)) => {
                self.cluster.dropped += n;
                if self.layout().is_some_and(|l| l.version != version) {
                    return; // a newer layout: its own cleanup will run
                }
                match next {
                    Some(c) => self.cleanup_step(Some(c)),
                    None => {
                        tracing::info!(
                            version,
                            dropped = self.cluster.dropped,
                            "dropped the replicas of partitions this node no longer owns"
                        );
                        self.cluster.state.cleaned = version;
                        self.save_cluster(AfterSave::Nothing);
                    }
                }
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "dropping unowned partitions failed; retrying"),
        }
    }

    /// Asks peers for their status: every voter while a change is in progress (`one` false),
    /// else one random peer (layout pull).
    fn poll_statuses(&mut self, one: bool) {
        let me = self.config.id.clone();
        let version = self.layout().map_or(0, |l| l.version);
        let mut peers: Vec<NodeId> = if one {
            self.up.iter().filter(|n| **n != me).cloned().collect()
        } else {
            let voters = self.layout().map(Layout::voters).unwrap_or_default();
            voters.into_iter().filter(|n| *n != me && self.up.contains(n)).collect()
        };
        if one && !peers.is_empty() {
            if self.cluster.layout_pull {
                return;
            }
            let pick = self.rng.below(peers.len());
            peers = vec![peers.swap_remove(pick)];
            self.cluster.layout_pull = true;
        }
        let request = Arc::new(Request::Status { version });
        for p in peers {
            self.send(p.clone(), Arc::clone(&request), MsgCont::Status { node: p, pull: one });
        }
    }

    /// Pulls the layout from `node` (a member that just came up).
    pub(super) fn pull_layout_from(&mut self, node: &NodeId) {
        let version = self.layout().map_or(0, |l| l.version);
        let request = Arc::new(Request::Status { version });
        self.send(node.clone(), request, MsgCont::Status { node: node.clone(), pull: false });
    }

    pub(super) fn status_reply(
        &mut self,
        node: NodeId,
        pull: bool,
        result: std::result::Result<Response, SendError>,
    ) {
        if pull {
            self.cluster.layout_pull = false;
        }
        let Ok(Response::Status(mut status)) = result else { return };
        if let Some(l) = status.layout.take() {
            self.adopt(l);
        }
        self.cluster.peers.insert(node, *status);
        self.check_gate();
        self.claim();
    }

    /// The smallest-id voter that is up is the claimant.
    fn is_claimant(&self) -> bool {
        let Some(l) = self.layout() else { return false };
        l.voters().into_iter().find(|v| self.is_up(v)) == Some(self.config.id.clone())
    }

    /// Every voter's status satisfies `ok` (this node's own status included).
    fn all_voters(&self, ok: impl Fn(&NodeStatus) -> bool) -> bool {
        let Some(l) = self.layout() else { return false };
        let me = self.status();
        l.voters().iter().all(|v| {
            if *v == self.config.id { ok(&me) } else { self.cluster.peers.get(v).is_some_and(&ok) }
        })
    }

    /// The claimant proposes the next step of the change once its conditions hold.
    fn claim(&mut self) {
        if self.cluster.proposal.is_some() || !self.is_claimant() {
            return;
        }
        let Some(l) = self.layout().cloned() else { return };
        let Some(t) = &l.transition else { return };
        let v = l.version;
        let started = t.started;
        let ready = match t.phase {
            Phase::Syncing => self.all_voters(|s| s.acked >= v && s.synced >= started),
            Phase::ReadNew => self.all_voters(|s| s.acked >= v),
        };
        if ready && let Some(next) = l.advance() {
            tracing::info!(
                version = next.version,
                "the change's step is complete; proposing the next"
            );
            self.start_proposal(None, next);
        }
    }

    // ---- partition sync ----

    /// Starts, resumes or drops this node's sync to match the layout.
    fn reconcile_sync(&mut self) {
        let Some(p) = &self.cluster.placement else { return };
        let syncing = p.layout().transition.as_ref().filter(|t| t.phase == Phase::Syncing);
        let Some(t) = syncing else {
            if let Some(run) = self.cluster.sync.take() {
                self.cluster.last_sync = Some(run.progress());
            }
            self.cluster.state.sync = None;
            return;
        };
        let started = t.started;
        if self.cluster.state.synced >= started
            || self.cluster.sync.as_ref().is_some_and(|s| s.started == started)
        {
            return;
        }
        let mut tasks = p.sync_tasks(&self.config.id);
        if self.mutated(super::Mutant::SkipPartitionSync) {
            tasks.clear();
        }
        if tasks.is_empty() {
            self.cluster.state.synced = started;
            self.cluster.sync = None;
            return;
        }
        let saved = self.cluster.state.sync.clone().filter(|s| s.started == started);
        let cursor = |node: &NodeId, hints: bool| {
            saved
                .as_ref()
                .and_then(|s| s.cursors.iter().find(|c| c.node == *node && c.hints == hints))
                .map_or((None, false), |c| (c.after.clone(), c.done))
        };
        let all: BTreeSet<u32> = tasks.values().flatten().copied().collect();
        let mut sources = BTreeMap::new();
        for v in p.layout().voters() {
            if v == self.config.id {
                continue;
            }
            let (after, done) = cursor(&v, true);
            let partitions = all.iter().copied().collect();
            sources.insert((v, true), Source { partitions, after, done, busy: false, next_at: 0 });
        }
        for (src, parts) in tasks {
            let (after, done) = cursor(&src, false);
            let partitions = parts.into_iter().collect();
            sources
                .insert((src, false), Source { partitions, after, done, busy: false, next_at: 0 });
        }
        let (keys, bytes) = saved.as_ref().map_or((0, 0), |s| (s.keys, s.bytes));
        let run = SyncRun { started, sources, gate_open: false, keys, bytes };
        tracing::info!(
            started,
            partitions = run.progress().partitions,
            sources = run.sources.len(),
            "partition sync: waiting for every voter to acknowledge the change"
        );
        self.cluster.sync = Some(run);
        self.save_sync_cursors();
    }

    fn save_sync_cursors(&mut self) {
        let Some(run) = &self.cluster.sync else { return };
        self.cluster.state.sync = Some(SavedSync {
            started: run.started,
            cursors: run
                .sources
                .iter()
                .map(|((node, hints), s)| SavedCursor {
                    node: node.clone(),
                    hints: *hints,
                    after: s.after.clone(),
                    done: s.done,
                })
                .collect(),
            keys: run.keys,
            bytes: run.bytes,
        });
    }

    /// Opens the sync gate once every voter acknowledged the change.
    fn check_gate(&mut self) {
        let Some(run) = &self.cluster.sync else { return };
        if run.gate_open {
            return;
        }
        let started = run.started;
        if self.all_voters(|s| s.acked >= started) {
            if let Some(run) = self.cluster.sync.as_mut() {
                run.gate_open = true;
            }
            tracing::info!(started, "partition sync: every voter acknowledged; pulling");
            self.pump_sync();
        }
    }

    /// Sends the next page request to every source that is idle, up and due.
    pub(super) fn pump_sync(&mut self) {
        let Some(q) = self.cluster.placement.as_ref().map(|p| p.ring().partitions()) else {
            return;
        };
        let now = self.now;
        let paced = self.paced_until > now;
        let mut sends = Vec::new();
        {
            let up = &self.up;
            let Some(run) = self.cluster.sync.as_mut() else { return };
            if !run.gate_open || paced {
                return;
            }
            // Replicas only once every hint pass is complete (see the module documentation).
            let hints_done = run.sources.iter().all(|((_, h), s)| !*h || s.done);
            for ((src, hints), s) in run.sources.iter_mut() {
                if s.done || s.busy || s.next_at > now || !up.contains(src) {
                    continue;
                }
                if !*hints && !hints_done {
                    continue;
                }
                s.busy = true;
                sends.push((
                    src.clone(),
                    *hints,
                    s.partitions.clone(),
                    s.after.clone(),
                    run.started,
                ));
            }
        }
        for (src, hints, partitions, after, started) in sends {
            let request = Request::SyncPage {
                partitions_total: q,
                partitions,
                hints,
                after,
                max_entries: SYNC_PAGE_ENTRIES as u32,
                max_bytes: SYNC_PAGE_BYTES,
            };
            let cont = MsgCont::SyncPage { source: src.clone(), hints, started };
            self.send(src, Arc::new(request), cont);
        }
    }

    pub(super) fn sync_page(
        &mut self,
        source: NodeId,
        hints: bool,
        started: u64,
        result: std::result::Result<Response, SendError>,
    ) {
        let page = match result {
            Ok(Response::Page { entries, next }) => ScanPage { entries, next },
            other => {
                let why = match other {
                    Ok(r) => super::describe(&r),
                    Err(e) => e.to_string(),
                };
                tracing::info!(%source, why, "partition sync page failed; retrying");
                let retry_at = self.now + super::HANDOFF_TICK_MS;
                if let Some(s) = self.sync_source(&source, hints, started) {
                    s.busy = false;
                    s.next_at = retry_at;
                }
                return;
            }
        };
        let bytes: u64 = page.entries.iter().map(|(k, s)| set_bytes(k, s)).sum();
        let count = page.entries.len() as u64;
        let cont = StoreCont::SyncApplied { source, hints, started, next: page.next, count, bytes };
        if page.entries.is_empty() {
            self.on_stored_sync(cont, Ok(StoreResult::Done));
        } else {
            self.store(StoreOp::ApplyBatch { entries: page.entries }, cont);
        }
    }

    fn sync_source(&mut self, source: &NodeId, hints: bool, started: u64) -> Option<&mut Source> {
        let run = self.cluster.sync.as_mut().filter(|r| r.started == started)?;
        run.sources.get_mut(&(source.clone(), hints))
    }

    pub(super) fn on_stored_sync(&mut self, cont: StoreCont, result: Result<StoreResult>) {
        let StoreCont::SyncApplied { source, hints, started, next, count, bytes } = cont else {
            return;
        };
        let now = self.now;
        let Some(s) = self.sync_source(&source, hints, started) else { return };
        s.busy = false;
        if let Err(e) = result {
            tracing::warn!(%source, error = %e, "storing a partition sync page failed; retrying");
            s.next_at = now + super::HANDOFF_TICK_MS;
            return;
        }
        s.done = next.is_none();
        s.after = next;
        s.next_at = now;
        // The rate is the node's, over every source: space the next page by this one's size.
        if let Some(run) = self.cluster.sync.as_mut() {
            run.keys += count;
            run.bytes += bytes;
        }
        if let Some(at) = self.pace_transfer(bytes) {
            self.timer(at, super::Timer::SyncPump);
        }
        let finished =
            self.cluster.sync.as_ref().is_some_and(|r| r.sources.values().all(|s| s.done));
        if finished {
            if let Some(run) = self.cluster.sync.take() {
                let p = run.progress();
                tracing::info!(started, keys = p.keys, bytes = p.bytes, "partition sync complete");
                self.cluster.last_sync = Some(p);
            }
            self.cluster.state.synced = started;
            self.cluster.state.sync = None;
        } else {
            self.save_sync_cursors();
        }
        self.save_cluster(AfterSave::Nothing);
        self.pump_sync();
    }

    // ---- hints for removed members ----

    /// Re-addresses hints held for nodes that are no longer members.
    fn readdress_hints(&mut self) {
        let Some(p) = &self.cluster.placement else { return };
        let voters = p.layout().voters();
        let owners: Vec<NodeId> =
            self.hints.counts().into_keys().filter(|o| !voters.contains(o)).collect();
        for owner in owners {
            if self.cluster.readdressing.keys().any(|(o, _)| *o == owner) {
                continue;
            }
            for d in self.hints.take_batch(&owner, DEFAULT_HINT_BATCH) {
                self.cluster
                    .readdressing
                    .insert((owner.clone(), d.key.clone()), (1, false, d.version.clone()));
                let op = StoreOp::ReadHint { owner: owner.clone(), key: d.key.clone() };
                self.store(
                    op,
                    StoreCont::Readdress { owner: owner.clone(), key: d.key, target: None },
                );
            }
        }
    }

    pub(super) fn readdress_stored(
        &mut self,
        owner: NodeId,
        key: HintKey,
        target: Option<NodeId>,
        result: Result<StoreResult>,
    ) {
        let slot = (owner.clone(), key.clone());
        let Some(entry) = self.cluster.readdressing.get_mut(&slot) else { return };
        entry.0 = entry.0.saturating_sub(1);
        match (target, result) {
            // The hint as read: store it for each current owner.
            (None, Ok(StoreResult::Hinted(Some(set)))) => {
                let targets: Vec<NodeId> = match (&key, &self.cluster.placement) {
                    (HintKey::Object(k), Some(p)) => p.all_owners(p.partition_of(k.hash())),
                    (HintKey::Bucket(_), Some(p)) => p.layout().voters().into_iter().collect(),
                    _ => Vec::new(),
                };
                entry.0 += targets.len();
                if targets.is_empty() {
                    entry.1 = true;
                }
                for t in targets {
                    let op = match (&set, t == self.config.id) {
                        (HintSet::Object(s), true) => {
                            let HintKey::Object(k) = &key else { continue };
                            StoreOp::Apply { key: k.clone(), set: Arc::new(s.clone()) }
                        }
                        (HintSet::Bucket(s), true) => {
                            let HintKey::Bucket(name) = &key else { continue };
                            StoreOp::ApplyBucket { name: name.clone(), set: s.clone() }
                        }
                        (s, false) => StoreOp::StoreHint {
                            owner: t.clone(),
                            key: key.clone(),
                            set: s.clone(),
                        },
                    };
                    let cont = StoreCont::Readdress {
                        owner: owner.clone(),
                        key: key.clone(),
                        target: Some(t),
                    };
                    self.store(op, cont);
                }
            }
            (None, Ok(_)) => {}
            (Some(t), Ok(StoreResult::Merged(vv))) => {
                if t != self.config.id {
                    self.hints.record(key.clone(), t, &vv);
                    self.stats.hints_stored += 1;
                }
            }
            (Some(_), Ok(_)) => {}
            (_, Err(_)) => entry.1 = true,
        }
        let Some(&(open, failed, ref version)) = self.cluster.readdressing.get(&slot) else {
            return;
        };
        if open > 0 {
            return;
        }
        let version = version.clone();
        self.cluster.readdressing.remove(&slot);
        if failed {
            self.hints.release(&key, &owner);
            return;
        }
        let op = StoreOp::RemoveHint {
            owner: owner.clone(),
            key: key.clone(),
            delivered: version.clone(),
        };
        self.store(op, StoreCont::HintRemoved { owner, key, version });
    }
}
