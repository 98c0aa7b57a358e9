//! The membership nemesis: an operator changing the member set while the cluster serves.
//!
//! MEMBERSHIP CHANGES
//! ==================
//! With `--membership`, the last node starts outside the layout (no `--members`: it learns the
//! layout and serves as a gateway). Early in the chaos phase the operator adds it, then, once
//! that change is complete, either decommissions a founding member or crashes one for good and
//! force-removes it (a seeded coin). Each change goes to a random running node as the admin
//! API's request (`ClientOp::ChangeMembers`); a refusal (a change still in progress, no
//! majority, the layout not learnt yet) is retried every half second. Faults keep running
//! throughout: nodes crash, pause and get cut off in the middle of a change, including the node
//! being added or removed.
//!
//! Quiescence then also requires every running node to follow the same layout, with no change
//! in progress, and the nemesis to be done; the read-back checks the owners of the final layout.
//! A force-removed node never comes back.

use std::collections::VecDeque;

use cairn_replication::layout::Change;
use cairn_replication::node::{Answer, ClientOp};

use crate::world::{Ev, Reply, Status, Who, World};

/// How often the nemesis looks at its change, ms.
const STEP_MS: u64 = 500;

/// The nemesis's state.
#[derive(Debug, Default)]
pub struct Admin {
    /// Changes still to make, in order.
    pub plan: VecDeque<Change>,
    /// The request in flight: its client id, target node and when it was sent.
    in_flight: Option<(u64, usize, u64)>,
    /// The change was committed at this version; it is complete at version + 2.
    waiting_for: Option<u64>,
    /// What happened, for the report.
    pub log: Vec<String>,
    /// The last refusal, for the report.
    pub last_error: Option<String>,
    /// Each committed change: when it was committed, and its layout (old and new rings).
    pub committed: Vec<(u64, cairn_replication::layout::Layout)>,
    /// A second operator sends a competing change once (see `admin_step`).
    pub duel: bool,
}

impl Admin {
    /// Whether every planned change is complete.
    pub fn done(&self) -> bool {
        self.plan.is_empty() && self.in_flight.is_none() && self.waiting_for.is_none()
    }
}

impl World {
    /// Partition sync's own check, after quiescence: for each change the nemesis saw
    /// committed, every node new to a partition (and still running) holds, in its own replica,
    /// every operation on the partition's keys that was acknowledged before the commit and
    /// stored by a node that still exists — it pulled every hint holder and every surviving old
    /// owner. Keys a crash may have emptied (`excused`) are skipped. Returns the findings.
    pub fn sync_findings(&self) -> Vec<String> {
        let mut out = Vec::new();
        for (at, layout) in &self.admin.committed {
            let Ok(p) = cairn_replication::layout::Placement::new(layout.clone()) else {
                continue;
            };
            let Some(old) = p.old_ring() else { continue };
            for (key, ops) in &self.acked_on {
                if self.excused.contains(key) {
                    continue;
                }
                let k = self.object(key);
                let part = p.partition_of(k.hash());
                // Nodes that gained the partition and still own it at the end (a later change may
                // have moved it on, and the cleanup dropped their copy).
                let last = self.final_placement();
                let gainers: Vec<&cairn_replication::NodeId> = p
                    .ring()
                    .preference_list(part)
                    .iter()
                    .filter(|n| !old.preference_list(part).contains(n))
                    .filter(|n| last.as_ref().is_none_or(|f| f.owns(n, part)))
                    .collect();
                for g in gainers {
                    let Some(i) = self.members.iter().position(|m| m == g) else { continue };
                    if self.gone.contains(&i) {
                        continue;
                    }
                    let held = cairn_replication::node::LocalStore::read(
                        &self.nodes[i].store,
                        &k,
                        &self.members,
                    )
                    .ok()
                    .flatten()
                    .map(|s| s.join())
                    .unwrap_or_default();
                    // Operations before a collection of the key's tombstones left no trace to pull
                    // (a later re-creation starts a new history).
                    let collected = self.collected_at.get(key).copied().unwrap_or(0);
                    for op in ops.iter().filter(|op| op.at >= collected) {
                        let survives = op.on.iter().any(|n| {
                            self.members
                                .iter()
                                .position(|m| m == n)
                                .is_some_and(|j| !self.gone.contains(&j))
                        });
                        if op.at < *at && survives && !held.contains(&op.dot) {
                            out.push(format!(
                                "{key}: {g} (new owner at v{}) lacks {:?}",
                                layout.version, op.dot
                            ));
                        }
                    }
                }
            }
        }
        out
    }

    /// The newest layout any node follows, with its rings.
    pub fn final_placement(&self) -> Option<cairn_replication::layout::Placement> {
        self.nodes
            .iter()
            .filter_map(|n| n.core.as_ref().and_then(|c| c.placement()))
            .max_by_key(|p| p.version())
            .cloned()
    }

    /// Replicas held by running nodes that do not own their key in the final layout (what the
    /// cleanup must have dropped).
    pub fn unowned_replicas(&self) -> Vec<String> {
        let Some(p) = self.final_placement() else { return Vec::new() };
        let mut out = Vec::new();
        for (i, n) in self.nodes.iter().enumerate() {
            if self.gone.contains(&i) || n.core.is_none() {
                continue;
            }
            for k in n.store.objects().keys() {
                if !p.owns(&self.members[i], p.partition_of(k.hash())) {
                    out.push(format!("{} holds {}", self.members[i], k.name));
                }
            }
        }
        out
    }

    /// Plans the changes (the last node is the spare) and schedules the first.
    pub fn start_membership(&mut self) {
        let spare = self.nodes.len() - 1;
        let founders = self.nodes.len() - 1;
        let victim = self.faults.index(founders);
        let victim_id = self.members[victim].clone();
        self.admin.plan.push_back(Change::Add(self.members[spare].clone()));
        if self.faults.chance(500) {
            self.admin.plan.push_back(Change::Decommission(victim_id));
        } else {
            self.admin.plan.push_back(Change::ForceRemove(victim_id));
        }
        self.admin.duel = self.faults.chance(500);
        let at = self.now + self.faults.range(500, 4_000);
        self.push(at, Ev::Admin);
    }

    /// One look at the change in progress.
    pub fn admin_step(&mut self) {
        if let Some((cid, _, sent)) = self.admin.in_flight {
            match self.probes.get(&cid) {
                // The node may have crashed with the request (its connection reset): give up
                // after a client's timeout; the layouts tell whether it was committed.
                Some(None) if self.now > sent + self.client_timeout_ms() => {
                    self.probes.remove(&cid);
                    self.admin.in_flight = None;
                }
                Some(None) => return self.push(self.now + STEP_MS, Ev::Admin),
                _ => {
                    self.admin.in_flight = None;
                    match self.probes.remove(&cid).flatten().and_then(Reply::into_answer) {
                        Some(Ok(Answer::Layout(o))) => {
                            let change = self.admin.plan.pop_front();
                            self.admin.log.push(format!(
                                "{} committed at v{} ({} moves) at {} ms",
                                change.map(|c| c.to_string()).unwrap_or_default(),
                                o.layout.version,
                                o.moves.partitions_to_move,
                                self.now
                            ));
                            self.admin.waiting_for = Some(o.layout.version + 2);
                            self.admin.committed.push((self.now, o.layout.clone()));
                        }
                        // Refused or unanswered: try again.
                        other => {
                            self.admin.last_error = Some(format!("{other:?}"));
                        }
                    }
                }
            }
        }
        if let Some(v) = self.admin.waiting_for {
            let complete = self.nodes.iter().enumerate().all(|(i, n)| {
                self.gone.contains(&i)
                    || n.status != Status::Up
                    || n.core.as_ref().and_then(|c| c.layout()).is_some_and(|l| l.version >= v)
            });
            let any = self
                .nodes
                .iter()
                .any(|n| n.core.as_ref().and_then(|c| c.layout()).is_some_and(|l| l.version >= v));
            if complete && any {
                self.admin.log.push(format!("v{v} reached at {} ms", self.now));
                self.admin.waiting_for = None;
            } else {
                return self.push(self.now + STEP_MS, Ev::Admin);
            }
        }
        let Some(change) = self.admin.plan.front().cloned() else { return };
        // Committed already (an answer lost with a crash)?
        if let Some(l) = self
            .nodes
            .iter()
            .filter_map(|n| n.core.as_ref().and_then(|c| c.layout()))
            .max_by_key(|l| l.version)
            .cloned()
        {
            let applied = match &change {
                Change::Add(n) => l.members.contains(n),
                Change::Decommission(n) | Change::ForceRemove(n) => !l.members.contains(n),
            };
            if applied {
                self.admin.plan.pop_front();
                let complete_at = match &l.transition {
                    Some(t) if t.change == change => t.started + 2,
                    _ => l.version,
                };
                // When it was committed is unknown (the answer was lost): the sync check skips
                // it rather than guess.
                self.admin
                    .log
                    .push(format!("{change} seen committed in v{} at {} ms", l.version, self.now));
                self.admin.waiting_for = Some(complete_at);
                return self.push(self.now + STEP_MS, Ev::Admin);
            }
        }
        if let Change::ForceRemove(gone) = &change
            && let Some(i) = self.members.iter().position(|m| m == gone)
            && !self.gone.contains(&i)
        {
            // Gone for good: a crash it never comes back from, declared by the operator. Its
            // copies (replicas, and hints it held for others) are destroyed: an operation it
            // alone stored may be lost (excused from the loss checks), and one it stored with
            // others has fewer than W copies left (excused from the owner check).
            self.gone.insert(i);
            for (key, ops) in &self.acked_on {
                for op in ops {
                    if op.on.contains(gone) {
                        self.reduced.insert(key.clone());
                        if op.on.len() == 1 {
                            self.excused.insert(key.clone());
                        }
                    }
                }
            }
            if self.nodes[i].status != Status::Down {
                self.take_down(i, false);
            }
        }
        let candidates: Vec<usize> = (0..self.nodes.len())
            .filter(|i| !self.gone.contains(i) && self.nodes[*i].status == Status::Up)
            .collect();
        if candidates.is_empty() {
            return self.push(self.now + STEP_MS, Ev::Admin);
        }
        let to = candidates[self.faults.index(candidates.len())];
        // A second operator, once: the next planned decommission sent to another node at the
        // same moment, so two proposers duel for one layout version (Paxos picks one; the other
        // is refused or learns the chosen value). Its answer is not waited for: the layouts
        // tell the nemesis which change went first.
        if self.admin.duel
            && let Some(Change::Decommission(n)) = self.admin.plan.get(1).cloned()
        {
            self.admin.duel = false;
            let other = candidates[self.faults.index(candidates.len())];
            let op = ClientOp::ChangeMembers { change: Change::Decommission(n) };
            self.client_send(Who::Probe, other, op);
            self.admin
                .log
                .push(format!("a second operator's decommission sent at {} ms", self.now));
        }
        let cid = self.client_send(Who::Probe, to, ClientOp::ChangeMembers { change });
        self.probes.insert(cid, None);
        self.admin.in_flight = Some((cid, to, self.now));
        self.push(self.now + STEP_MS, Ev::Admin);
    }
}
