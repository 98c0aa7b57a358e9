//! Coordinator state machines for one write and one read.
//!
//! SLOPPY QUORUM
//! =============
//! Dynamo §4.6: a request goes to the first N *reachable* nodes of the key's extended preference
//! list ([`plan`]), not to the N owners. When an owner is believed down, the next reachable
//! non-owner stands in for it and stores the data with a *hint* naming that owner; unreachable
//! owners are given to fallbacks in preference-list order (first missing owner to first
//! fallback). Failures never change the ring, only who is reachable.
//!
//! A write succeeds once W targets acknowledged (any targets: owners or fallbacks, the
//! coordinator's own local write included), and fails as soon as W acknowledgements have become
//! impossible (`acks + still_pending < W`), or at the timeout. A read is the same with R and
//! replies; "not found" is a reply. Both decisions are monotonic: once decided the outcome never
//! flips, and late replies only enrich the report (more replicas, more version vectors).
//! If fewer than W (R) targets exist at all, the outcome is `Failed` before any reply: the node
//! answers 503 at once (it may still send the write to the targets it has, best effort).
//!
//! The machines do no I/O: the node sends to [`WriteCoordinator::targets`], feeds replies and
//! failures in with `on_*`, calls `on_timeout` when its timer fires, and renders
//! [`Outcome`]. With W + R > N, a read quorum intersects every successful write quorum *after*
//! hinted handoff has delivered the fallbacks' copies to their owners (the whole-cluster simulator,
//! `tools/sim`, checks it).
//!
//! READ REPAIR
//! ===========
//! A read merges the replies (`sync`); every replica that answered with a set that does not
//! already [`cover`](crate::dvv::SiblingSet::covers) the merge, or answered "not found" while the
//! merge is not empty, is listed by [`ReadCoordinator::repairs`]; the node sends it the merged set
//! (a fallback keeps it under its hint).

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::dvv::{Sibling, SiblingSet};
use crate::error::{Error, Result};
use crate::id::NodeId;
use crate::vclock::VersionVector;

/// A fallback standing in for an unreachable owner.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Hint {
    /// The owner the data belongs to.
    pub owner: NodeId,
    /// The fallback that holds it until the owner is back.
    pub holder: NodeId,
}

/// One node a request is sent to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Target {
    /// The node.
    pub node: NodeId,
    /// For a fallback: the owner it stands in for (store the data as a hint for this owner).
    pub hint_for: Option<NodeId>,
}

/// The targets of one request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Plan {
    /// The N owners (the first N of the extended list).
    pub pref_list: Vec<NodeId>,
    /// The first N reachable nodes of the extended list, in list order, with their hints.
    pub targets: Vec<Target>,
}

/// Chooses the targets of a request: the first `n` reachable nodes of `extended` (the key's
/// extended preference list); each fallback gets a hint for the next unreachable owner, in order.
/// `local` is always reachable to itself. `extended` is expected to hold distinct nodes, as
/// [`Ring::extended_preference_list`](crate::ring::Ring::extended_preference_list) does.
pub fn plan(extended: &[NodeId], n: usize, reachable: &BTreeSet<NodeId>, local: &NodeId) -> Plan {
    let n = n.min(extended.len());
    let pref_list: Vec<NodeId> = extended[..n].to_vec();
    let is_up = |id: &NodeId| id == local || reachable.contains(id);
    let mut missing_owners = pref_list.iter().filter(|o| !is_up(o)).cloned();
    let targets = extended
        .iter()
        .filter(|id| is_up(id))
        .take(n)
        .map(|id| {
            let hint_for = if pref_list.contains(id) { None } else { missing_owners.next() };
            Target { node: id.clone(), hint_for }
        })
        .collect();
    Plan { pref_list, targets }
}

/// Which node should coordinate a write: the first reachable owner, or when no owner is reachable
/// the first reachable fallback. `None` when nothing is reachable (cannot happen when `local` is
/// in `extended`, since a node always reaches itself).
pub fn coordinator_for(
    extended: &[NodeId],
    n: usize,
    reachable: &BTreeSet<NodeId>,
    local: &NodeId,
) -> Option<NodeId> {
    plan(extended, n, reachable, local).targets.into_iter().next().map(|t| t.node)
}

/// The state of a coordinated request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "status", content = "report", rename_all = "snake_case")]
pub enum Outcome<R> {
    /// Not decided yet: keep feeding replies.
    Pending,
    /// The quorum was reached.
    Succeeded(R),
    /// The quorum can no longer be reached (failures, timeout, too few targets).
    Failed(R),
}

impl<R> Outcome<R> {
    /// True once the request is decided.
    pub fn is_decided(&self) -> bool {
        !matches!(self, Outcome::Pending)
    }
}

/// How a target has answered so far.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Reply {
    Pending,
    Ok,
    Failed,
    TimedOut,
    /// A read target held back (see [`ReadCoordinator::start`]): not asked yet.
    Unasked,
}

/// Bookkeeping shared by reads and writes.
#[derive(Debug, Clone)]
struct Tally {
    plan: Plan,
    required: usize,
    replies: Vec<Reply>,
    /// Nodes in the order their positive replies arrived.
    order: Vec<NodeId>,
    /// The timer fired: nothing more will be asked or counted.
    expired: bool,
}

impl Tally {
    fn new(plan: Plan, required: usize, n: usize, what: &str) -> Result<Tally> {
        if n == 0 || required == 0 || required > n {
            return Err(Error::InvalidQuorum(format!(
                "{what}={required} must be in 1..=N (N={n})"
            )));
        }
        let replies = vec![Reply::Pending; plan.targets.len()];
        Ok(Tally { plan, required, replies, order: Vec::new(), expired: false })
    }

    /// Records a reply from `node` if it is a pending target. Returns whether it was accepted
    /// (false for strangers, duplicates, and replies after a failure or the timeout).
    fn record(&mut self, node: &NodeId, reply: Reply) -> bool {
        match self.plan.targets.iter().position(|t| &t.node == node) {
            Some(i) if self.replies[i] == Reply::Pending => {
                self.replies[i] = reply;
                if reply == Reply::Ok {
                    self.order.push(node.clone());
                }
                true
            }
            _ => false,
        }
    }

    fn timeout(&mut self) {
        self.expired = true;
        for r in &mut self.replies {
            if *r == Reply::Pending {
                *r = Reply::TimedOut;
            }
        }
    }

    /// Marks unasked targets as asked and returns them, at most `limit`, in plan order.
    fn ask(&mut self, limit: usize) -> Vec<Target> {
        if self.expired {
            return Vec::new();
        }
        let mut out = Vec::new();
        for (t, r) in self.plan.targets.iter().zip(self.replies.iter_mut()) {
            if out.len() >= limit {
                break;
            }
            if *r == Reply::Unasked {
                *r = Reply::Pending;
                out.push(t.clone());
            }
        }
        out
    }

    fn count(&self, want: Reply) -> usize {
        self.replies.iter().filter(|r| **r == want).count()
    }

    fn nodes(&self, want: Reply) -> Vec<NodeId> {
        self.plan
            .targets
            .iter()
            .zip(&self.replies)
            .filter(|(_, r)| **r == want)
            .map(|(t, _)| t.node.clone())
            .collect()
    }

    fn reached(&self) -> bool {
        self.count(Reply::Ok) >= self.required
    }

    fn impossible(&self) -> bool {
        let open =
            if self.expired { 0 } else { self.count(Reply::Pending) + self.count(Reply::Unasked) };
        self.count(Reply::Ok) + open < self.required
    }

    fn hinted_ok(&self) -> Vec<Hint> {
        self.plan
            .targets
            .iter()
            .zip(&self.replies)
            .filter(|(_, r)| **r == Reply::Ok)
            .filter_map(|(t, _)| {
                t.hint_for.as_ref().map(|o| Hint { owner: o.clone(), holder: t.node.clone() })
            })
            .collect()
    }

    fn decide<R>(&self, report: impl FnOnce() -> R) -> Outcome<R> {
        if self.reached() {
            Outcome::Succeeded(report())
        } else if self.impossible() {
            Outcome::Failed(report())
        } else {
            Outcome::Pending
        }
    }
}

/// What a write did, for the API answer (success or 503).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WriteReport {
    /// The key's N owners.
    pub pref_list: Vec<NodeId>,
    /// Every node the write was sent to.
    pub targets: Vec<Target>,
    /// Targets that acknowledged, in the order their acknowledgements arrived.
    pub replicas_written: Vec<NodeId>,
    /// Fallbacks that acknowledged, with the owner each stands in for.
    pub hinted: Vec<Hint>,
    /// Each acknowledging replica's version vector for the key after the write.
    pub vector_clocks: BTreeMap<NodeId, VersionVector>,
    /// Targets that answered with an error.
    pub failed: Vec<NodeId>,
    /// Targets that had not answered when the timeout fired.
    pub timed_out: Vec<NodeId>,
    /// W.
    pub required: usize,
    /// Whether W acknowledgements were reached.
    pub quorum_reached: bool,
}

/// The state machine of one coordinated write.
///
/// While a membership change is in progress a write has two owner sets (the old and the new
/// ring's, [`crate::layout`]) and must reach W in each: [`WriteCoordinator::new_multi`] plans
/// each list on its own, sends to the union of the targets, counts every acknowledgement in
/// every plan naming the node, and succeeds only once every plan reached W.
#[derive(Debug, Clone)]
pub struct WriteCoordinator {
    /// The union of the plans (reports, replica order, hints).
    tally: Tally,
    /// One tally per owner set, when there are several.
    sets: Vec<Tally>,
    clocks: BTreeMap<NodeId, VersionVector>,
}

impl WriteCoordinator {
    /// Plans a write of a key with extended preference list `extended`. `local` (the coordinator)
    /// must be one of the targets: it stores the new version first, as one of the W.
    pub fn new(
        extended: &[NodeId],
        reachable: &BTreeSet<NodeId>,
        n: usize,
        w: usize,
        local: &NodeId,
    ) -> Result<Self> {
        let p = plan(extended, n, reachable, local);
        if !p.targets.iter().any(|t| &t.node == local) {
            return Err(Error::InvalidQuorum(format!(
                "{local} is not among the write targets; forward to {:?}",
                p.targets.first().map(|t| t.node.as_str())
            )));
        }
        let tally = Tally::new(p, w, n.min(extended.len()), "W")?;
        Ok(WriteCoordinator { tally, sets: Vec::new(), clocks: BTreeMap::new() })
    }

    /// Plans a write that must reach W in each of `lists` (extended preference lists, each with
    /// its effective N). Targets are the union of each list's plan; a node that is an owner in
    /// one list and a fallback in another is sent the data as an owner (no hint), so the owner
    /// it stood in for is left uncovered (the coordinator keeps a hint for it). `local` must be a
    /// target of at least one plan.
    pub fn new_multi(
        lists: &[(Vec<NodeId>, usize)],
        reachable: &BTreeSet<NodeId>,
        w: usize,
        local: &NodeId,
    ) -> Result<Self> {
        match lists {
            [] => return Err(Error::InvalidQuorum("no owner set".into())),
            [(ext, n)] => return WriteCoordinator::new(ext, reachable, *n, w, local),
            _ => {}
        }
        let mut pref_list: Vec<NodeId> = Vec::new();
        let mut targets: Vec<Target> = Vec::new();
        let mut sets = Vec::with_capacity(lists.len());
        let mut max_n = 0;
        for (ext, n) in lists {
            let p = plan(ext, *n, reachable, local);
            for o in &p.pref_list {
                if !pref_list.contains(o) {
                    pref_list.push(o.clone());
                }
            }
            for t in &p.targets {
                match targets.iter_mut().find(|u| u.node == t.node) {
                    Some(u) if t.hint_for.is_none() => u.hint_for = None,
                    Some(_) => {}
                    None => targets.push(t.clone()),
                }
            }
            max_n = max_n.max((*n).min(ext.len()));
            sets.push(Tally::new(p, w, (*n).min(ext.len()), "W")?);
        }
        if !targets.iter().any(|t| &t.node == local) {
            return Err(Error::InvalidQuorum(format!(
                "{local} is not among the write targets; forward to {:?}",
                targets.first().map(|t| t.node.as_str())
            )));
        }
        let tally = Tally::new(Plan { pref_list, targets }, w, max_n, "W")?;
        Ok(WriteCoordinator { tally, sets, clocks: BTreeMap::new() })
    }

    /// The nodes to send the write to (the local node included: apply it locally, then feed its
    /// acknowledgement like any other).
    pub fn targets(&self) -> &[Target] {
        &self.tally.plan.targets
    }

    /// The key's owners.
    pub fn pref_list(&self) -> &[NodeId] {
        &self.tally.plan.pref_list
    }

    /// `node` stored the write; `vv` is its version vector for the key afterwards. Returns false
    /// (and changes nothing) if `node` is not a target still awaited.
    pub fn on_ack(&mut self, node: &NodeId, vv: VersionVector) -> bool {
        for t in &mut self.sets {
            t.record(node, Reply::Ok);
        }
        let accepted = self.tally.record(node, Reply::Ok);
        if accepted {
            self.clocks.insert(node.clone(), vv);
        }
        accepted
    }

    /// `node` answered with an error, or the transport gave up on it.
    pub fn on_failure(&mut self, node: &NodeId) -> bool {
        for t in &mut self.sets {
            t.record(node, Reply::Failed);
        }
        self.tally.record(node, Reply::Failed)
    }

    /// The request timer fired: every target still awaited counts as timed out.
    pub fn on_timeout(&mut self) {
        for t in &mut self.sets {
            t.timeout();
        }
        self.tally.timeout();
    }

    /// Targets that have not answered yet.
    pub fn pending(&self) -> Vec<NodeId> {
        self.tally.nodes(Reply::Pending)
    }

    /// The current decision, with the report when decided.
    pub fn outcome(&self) -> Outcome<WriteReport> {
        if self.sets.is_empty() {
            return self.tally.decide(|| self.report());
        }
        if self.sets.iter().all(Tally::reached) {
            Outcome::Succeeded(self.report())
        } else if self.sets.iter().any(Tally::impossible) {
            Outcome::Failed(self.report())
        } else {
            Outcome::Pending
        }
    }

    /// The report as of now (also when still pending).
    pub fn report(&self) -> WriteReport {
        let t = &self.tally;
        WriteReport {
            pref_list: t.plan.pref_list.clone(),
            targets: t.plan.targets.clone(),
            replicas_written: t.order.clone(),
            hinted: t.hinted_ok(),
            vector_clocks: self.clocks.clone(),
            failed: t.nodes(Reply::Failed),
            timed_out: t.nodes(Reply::TimedOut),
            required: t.required,
            quorum_reached: if self.sets.is_empty() {
                t.reached()
            } else {
                self.sets.iter().all(Tally::reached)
            },
        }
    }
}

/// What a read did, for the API answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReadReport {
    /// The key's N owners.
    pub pref_list: Vec<NodeId>,
    /// Every node the read was sent to.
    pub targets: Vec<Target>,
    /// Targets that replied (found or not found), in reply order.
    pub replicas_read: Vec<NodeId>,
    /// Those of `replicas_read` that had nothing for the key.
    pub not_found: Vec<NodeId>,
    /// Fallbacks that replied, with the owner each stands in for.
    pub hinted: Vec<Hint>,
    /// Each replying replica's version vector (empty for "not found").
    pub vector_clocks: BTreeMap<NodeId, VersionVector>,
    /// Replicas that need read repair (see [`ReadCoordinator::repairs`]).
    pub read_repair: Vec<NodeId>,
    /// Targets that answered with an error.
    pub failed: Vec<NodeId>,
    /// Targets that had not answered when the timeout fired.
    pub timed_out: Vec<NodeId>,
    /// R.
    pub required: usize,
    /// Whether R replies were reached.
    pub quorum_reached: bool,
}

/// The state machine of one coordinated read, generic over the sibling value type.
#[derive(Debug, Clone)]
pub struct ReadCoordinator<V = Sibling> {
    tally: Tally,
    /// Each replier's set (`None` = not found).
    sets: BTreeMap<NodeId, Option<SiblingSet<V>>>,
    merged: SiblingSet<V>,
}

impl<V: Clone + PartialEq> ReadCoordinator<V> {
    /// Plans a read. Any node may coordinate a read; `local` only counts as reachable.
    pub fn new(
        extended: &[NodeId],
        reachable: &BTreeSet<NodeId>,
        n: usize,
        r: usize,
        local: &NodeId,
    ) -> Result<Self> {
        let p = plan(extended, n, reachable, local);
        let tally = Tally::new(p, r, n.min(extended.len()), "R")?;
        Ok(ReadCoordinator { tally, sets: BTreeMap::new(), merged: SiblingSet::new() })
    }

    /// Every planned target (after [`ReadCoordinator::start`], the report's `targets` lists
    /// the ones actually asked).
    pub fn targets(&self) -> &[Target] {
        &self.tally.plan.targets
    }

    /// Asks only `fanout` of the targets at first (at least R, at most all): `local` first when
    /// it is a target, then the others in plan order. The rest are held back, to be asked when
    /// one of the first fails ([`ReadCoordinator::replacements`]) or when the caller stops
    /// waiting for a slow one ([`ReadCoordinator::ask_rest`]). Returns the targets to ask now.
    ///
    /// Without this call every target counts as asked (Dynamo's read: ask all N, wait for R).
    /// Asking R instead of N halves the replica reads of a quorum read with N=3, R=2 and a
    /// coordinator that holds a replica; the price is that a replica not asked is not
    /// read-repaired by this read.
    pub fn start(&mut self, fanout: usize, local: &NodeId) -> Vec<Target> {
        // Not `clamp`: with fewer reachable targets than R, the lower bound exceeds the upper.
        let fanout = fanout.max(self.tally.required).min(self.tally.plan.targets.len());
        let t = &mut self.tally;
        let local_at = t.plan.targets.iter().position(|x| &x.node == local);
        for (i, r) in t.replies.iter_mut().enumerate() {
            if *r == Reply::Pending {
                *r = Reply::Unasked;
            }
            if Some(i) == local_at && fanout > 0 && *r == Reply::Unasked {
                *r = Reply::Pending;
            }
        }
        let mut first: Vec<Target> =
            local_at.map(|i| t.plan.targets[i].clone()).into_iter().collect();
        first.extend(t.ask(fanout.saturating_sub(first.len())));
        first
    }

    /// After a failure: the held-back targets to ask now so that R replies are possible again.
    pub fn replacements(&mut self) -> Vec<Target> {
        let t = &self.tally;
        let possible = t.count(Reply::Ok) + t.count(Reply::Pending);
        let missing = t.required.saturating_sub(possible);
        self.tally.ask(missing)
    }

    /// Every held-back target (the caller's speculative timer fired while a reply was late).
    pub fn ask_rest(&mut self) -> Vec<Target> {
        self.tally.ask(usize::MAX)
    }

    /// The key's owners.
    pub fn pref_list(&self) -> &[NodeId] {
        &self.tally.plan.pref_list
    }

    /// `node` replied with its set for the key (`None`: it has nothing). Returns false if `node`
    /// is not a target still awaited.
    pub fn on_reply(&mut self, node: &NodeId, set: Option<SiblingSet<V>>) -> bool {
        let accepted = self.tally.record(node, Reply::Ok);
        if accepted {
            if let Some(s) = &set {
                self.merged.merge(s);
            }
            self.sets.insert(node.clone(), set);
        }
        accepted
    }

    /// `node` answered with an error, or the transport gave up on it.
    pub fn on_failure(&mut self, node: &NodeId) -> bool {
        self.tally.record(node, Reply::Failed)
    }

    /// The request timer fired.
    pub fn on_timeout(&mut self) {
        self.tally.timeout();
    }

    /// Targets that have not answered yet.
    pub fn pending(&self) -> Vec<NodeId> {
        self.tally.nodes(Reply::Pending)
    }

    /// The merge of every reply so far.
    pub fn merged(&self) -> &SiblingSet<V> {
        &self.merged
    }

    /// Replicas to send the merged set to: those whose reply does not cover the merge, and those
    /// that had nothing while the merge has something. Each with the owner it holds data for,
    /// when it is a fallback.
    pub fn repairs(&self) -> Vec<Target> {
        let merged_empty = self.merged.is_empty() && self.merged.version_vector().is_empty();
        self.tally
            .plan
            .targets
            .iter()
            .filter(|t| match self.sets.get(&t.node) {
                Some(Some(s)) => !s.covers(&self.merged),
                Some(None) => !merged_empty,
                None => false,
            })
            .cloned()
            .collect()
    }

    /// The current decision, with the report when decided.
    pub fn outcome(&self) -> Outcome<ReadReport> {
        self.tally.decide(|| self.report())
    }

    /// The report as of now.
    pub fn report(&self) -> ReadReport {
        let t = &self.tally;
        ReadReport {
            pref_list: t.plan.pref_list.clone(),
            targets: t
                .plan
                .targets
                .iter()
                .zip(&t.replies)
                .filter(|(_, r)| **r != Reply::Unasked)
                .map(|(x, _)| x.clone())
                .collect(),
            replicas_read: t.order.clone(),
            not_found: t
                .order
                .iter()
                .filter(|n| matches!(self.sets.get(*n), Some(None)))
                .cloned()
                .collect(),
            hinted: t.hinted_ok(),
            vector_clocks: self
                .sets
                .iter()
                .map(|(n, s)| (n.clone(), s.as_ref().map(|s| s.join()).unwrap_or_default()))
                .collect(),
            read_repair: self.repairs().into_iter().map(|t| t.node).collect(),
            failed: t.nodes(Reply::Failed),
            timed_out: t.nodes(Reply::TimedOut),
            required: t.required,
            quorum_reached: t.reached(),
        }
    }
}
