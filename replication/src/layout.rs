//! The cluster layout: who the members are, and the membership change in progress.
//!
//! LAYOUT
//! ======
//! The ring is a pure function of the member set, Q and N ([`crate::ring`]), so the layout only
//! has to say *which* nodes are members, at which version, and whether a change is under way. It
//! is cluster state: every node stores the newest layout it knows in its data directory, a new
//! version is committed by single-decree Paxos among the current voters ([`crate::paxos`]), and
//! committed versions spread by pull and push over the data plane. Versions are totally ordered;
//! two different layouts never carry the same version (Paxos decides each version once).
//!
//! CHANGES
//! =======
//! One change at a time: add a node, decommission one (its data streams to the new owners before
//! it leaves), or force-remove one that is gone for good (its partitions are rebuilt from the
//! surviving replicas). A change is three committed versions, after Garage's multi-version
//! layouts (R + W > N must hold across the old and the new owners of every partition):
//!
//! | version | phase      | writes need                  | reads from | then                      |
//! |---------|------------|------------------------------|------------|---------------------------|
//! | v       | stable     | W of the old owners          | old        |                           |
//! | v+1     | `Syncing`  | W of the old **and** W of the new | old   | new owners pull the data  |
//! | v+2     | `ReadNew`  | W of the old **and** W of the new | new   | every voter adopts it     |
//! | v+3     | stable     | W of the new owners          | new        | old copies may be dropped |
//!
//! Each step is committed only after every voter *acknowledged* the previous version (stored it,
//! and finished every write it had planned under an older one) and, for v+2, after every owner
//! new to a partition pulled it from the partition's old owners. So at any instant the versions
//! in use are at most two adjacent ones, and for any two adjacent versions every write quorum of
//! one intersects every read quorum of the other:
//! - v and v+1: writes under either reach W old owners, reads under either read R old owners;
//! - v+1 and v+2: writes under both reach W of the old and W of the new owners, whichever set
//!   the read uses;
//! - v+2 and v+3: reads under both use the new owners, and writes under both reach W of them.
//!
//! And a write acknowledged before v+1 was stored by W old owners; the new owners pulled from
//! every old owner that is still a member, after every voter had stopped writing under v, so they
//! hold it before anyone reads from them.
//!
//! A force-removed node is treated as down for good from v+1 on: it is never a target, its hints
//! are re-addressed to the key's current owners, and the new owners pull from the survivors.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::id::NodeId;
use crate::ring::Ring;

/// What one membership change does.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(tag = "kind", content = "node", rename_all = "snake_case")]
pub enum Change {
    /// A connected node becomes a member.
    Add(NodeId),
    /// A member's partitions move to new owners (it serves until they have them), then it leaves.
    Decommission(NodeId),
    /// A member that is gone for good leaves at once; the new owners pull from the survivors.
    ForceRemove(NodeId),
}

impl Change {
    /// The node the change is about.
    pub fn node(&self) -> &NodeId {
        match self {
            Change::Add(n) | Change::Decommission(n) | Change::ForceRemove(n) => n,
        }
    }
}

impl std::fmt::Display for Change {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Change::Add(n) => write!(f, "add {n}"),
            Change::Decommission(n) => write!(f, "decommission {n}"),
            Change::ForceRemove(n) => write!(f, "force-remove {n}"),
        }
    }
}

/// Where a change stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// Writes go to W old and W new owners, reads to the old; new owners pull their partitions.
    Syncing,
    /// Every new owner has its data: reads use the new owners; writes still reach both.
    ReadNew,
}

/// A change in progress.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Transition {
    /// The change.
    pub change: Change,
    /// The members before it.
    pub from: BTreeSet<NodeId>,
    /// Its phase.
    pub phase: Phase,
    /// The version at which it started (the `Syncing` version): sync progress is counted
    /// against it.
    pub started: u64,
}

/// A committed cluster layout (see the module documentation).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Layout {
    /// Totally ordered; 1 is the layout `--members` seeded.
    pub version: u64,
    /// Q, fixed for the life of the cluster.
    pub partitions: u32,
    /// N, fixed for the life of the cluster.
    pub n: usize,
    /// The members (after the change in progress, if any).
    pub members: BTreeSet<NodeId>,
    /// The change in progress.
    pub transition: Option<Transition>,
}

impl Layout {
    /// Version 1 of a new cluster.
    pub fn initial(members: &[NodeId], partitions: u32, n: usize) -> Result<Layout> {
        let members: BTreeSet<NodeId> = members.iter().cloned().collect();
        // Validates Q, N and the member count.
        Ring::new(&members.iter().cloned().collect::<Vec<_>>(), partitions, n)?;
        Ok(Layout { version: 1, partitions, n, members, transition: None })
    }

    /// Whether a change is in progress.
    pub fn changing(&self) -> bool {
        self.transition.is_some()
    }

    /// The nodes whose acknowledgement and votes count for the next version: the members before
    /// and after the change in progress, except a force-removed node.
    pub fn voters(&self) -> BTreeSet<NodeId> {
        let mut v = self.members.clone();
        if let Some(t) = &self.transition {
            v.extend(t.from.iter().cloned());
            if let Change::ForceRemove(gone) = &t.change {
                v.remove(gone);
            }
        }
        v
    }

    /// A node that must never be a target (force-removed, still named by the old owners).
    pub fn banned(&self) -> Option<&NodeId> {
        match &self.transition {
            Some(Transition { change: Change::ForceRemove(n), .. }) => Some(n),
            _ => None,
        }
    }

    /// The next version starting `change`.
    ///
    /// Errors: [`Error::ChangeInProgress`] while another change runs; [`Error::InvalidChange`]
    /// for adding a member, removing a non-member, or removing the last member.
    pub fn start(&self, change: Change) -> Result<Layout> {
        if let Some(t) = &self.transition {
            return Err(Error::ChangeInProgress(format!(
                "{} is still in progress (layout version {})",
                t.change, self.version
            )));
        }
        let node = change.node().clone();
        let mut members = self.members.clone();
        match &change {
            Change::Add(_) => {
                if !members.insert(node.clone()) {
                    return Err(Error::InvalidChange(format!("{node} is already a member")));
                }
            }
            Change::Decommission(_) | Change::ForceRemove(_) => {
                if !members.remove(&node) {
                    return Err(Error::InvalidChange(format!("{node} is not a member")));
                }
                if members.is_empty() {
                    return Err(Error::InvalidChange(format!(
                        "{node} is the last member: a cluster needs at least one"
                    )));
                }
            }
        }
        if members.len() > crate::ring::MAX_MEMBERS {
            return Err(Error::InvalidChange("too many members".into()));
        }
        Ok(Layout {
            version: self.version + 1,
            partitions: self.partitions,
            n: self.n,
            members,
            transition: Some(Transition {
                change,
                from: self.members.clone(),
                phase: Phase::Syncing,
                started: self.version + 1,
            }),
        })
    }

    /// The next step of the change in progress (`Syncing` → `ReadNew` → stable), or `None`.
    pub fn advance(&self) -> Option<Layout> {
        let t = self.transition.as_ref()?;
        let transition = match t.phase {
            Phase::Syncing => Some(Transition { phase: Phase::ReadNew, ..t.clone() }),
            Phase::ReadNew => None,
        };
        Some(Layout {
            version: self.version + 1,
            partitions: self.partitions,
            n: self.n,
            members: self.members.clone(),
            transition,
        })
    }
}

/// Counts that describe a change to an operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Moves {
    /// (partition, node) replicas that are new in the target layout: the partitions to move.
    pub partitions_to_move: usize,
    /// The fewest any balanced assignment could move: what the added node must hold, or what the
    /// removed node held.
    pub minimum: usize,
}

/// A layout with its rings computed: what the node's protocol asks of it per request.
#[derive(Debug, Clone)]
pub struct Placement {
    layout: Arc<Layout>,
    ring: Ring,
    old: Option<Ring>,
}

impl Placement {
    /// Computes the rings of `layout`.
    pub fn new(layout: Layout) -> Result<Placement> {
        let members: Vec<NodeId> = layout.members.iter().cloned().collect();
        let ring = Ring::new(&members, layout.partitions, layout.n)?;
        let old = match &layout.transition {
            Some(t) => {
                let from: Vec<NodeId> = t.from.iter().cloned().collect();
                Some(Ring::new(&from, layout.partitions, layout.n)?)
            }
            None => None,
        };
        Ok(Placement { layout: Arc::new(layout), ring, old })
    }

    /// The layout.
    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    /// Its version.
    pub fn version(&self) -> u64 {
        self.layout.version
    }

    /// The ring of the members (the new owners while a change is in progress).
    pub fn ring(&self) -> &Ring {
        &self.ring
    }

    /// The ring of the members before the change in progress.
    pub fn old_ring(&self) -> Option<&Ring> {
        self.old.as_ref()
    }

    /// Whether `node` is a member (before or after the change in progress; a force-removed node
    /// is not).
    pub fn is_member(&self, node: &NodeId) -> bool {
        self.layout.voters().contains(node)
    }

    /// The node that must never be a target.
    pub fn banned(&self) -> Option<&NodeId> {
        self.layout.banned()
    }

    /// The partition of a key hash (the same in every version: Q never changes).
    pub fn partition_of(&self, key_hash: u64) -> u32 {
        self.ring.partition_of(key_hash)
    }

    /// The extended preference lists a write of `partition` must reach W in: the new owners', and
    /// while a change is in progress the old owners' first.
    pub fn write_lists(&self, partition: u32) -> Vec<Vec<NodeId>> {
        let mut lists = Vec::with_capacity(2);
        if let Some(old) = &self.old {
            lists.push(old.extended_preference_list(partition));
        }
        lists.push(self.ring.extended_preference_list(partition));
        lists
    }

    /// The extended preference list reads of `partition` use: the old owners' while syncing.
    pub fn read_list(&self, partition: u32) -> Vec<NodeId> {
        match (&self.old, self.layout.transition.as_ref().map(|t| t.phase)) {
            (Some(old), Some(Phase::Syncing)) => old.extended_preference_list(partition),
            _ => self.ring.extended_preference_list(partition),
        }
    }

    /// The owners of `partition` that writes reach: the new owners, plus the old ones while a
    /// change is in progress (without a force-removed node).
    pub fn all_owners(&self, partition: u32) -> Vec<NodeId> {
        let mut out: Vec<NodeId> = Vec::new();
        if let Some(old) = &self.old {
            out.extend(old.preference_list(partition).iter().cloned());
        }
        for n in self.ring.preference_list(partition) {
            if !out.contains(n) {
                out.push(n.clone());
            }
        }
        if let Some(b) = self.banned() {
            out.retain(|n| n != b);
        }
        out
    }

    /// What `node` must pull while syncing: per source node, the partitions that `node` owns in
    /// the new ring but did not own in the old one and that the source owned. Empty when no change
    /// is in progress.
    pub fn sync_tasks(&self, node: &NodeId) -> BTreeMap<NodeId, BTreeSet<u32>> {
        let mut tasks: BTreeMap<NodeId, BTreeSet<u32>> = BTreeMap::new();
        let Some(old) = &self.old else { return tasks };
        let banned = self.banned();
        for p in 0..self.ring.partitions() {
            let new_owners = self.ring.preference_list(p);
            let old_owners = old.preference_list(p);
            if !new_owners.contains(node) || old_owners.contains(node) {
                continue;
            }
            for src in old_owners {
                if Some(src) != banned && src != node {
                    tasks.entry(src.clone()).or_default().insert(p);
                }
            }
        }
        tasks
    }

    /// Whether `node` owns `partition` in the new ring.
    pub fn owns(&self, node: &NodeId, partition: u32) -> bool {
        self.ring.preference_list(partition).contains(node)
    }

    /// The moves of the change in progress (zeros when none).
    pub fn moves(&self) -> Moves {
        let (Some(old), Some(t)) = (&self.old, &self.layout.transition) else {
            return Moves { partitions_to_move: 0, minimum: 0 };
        };
        let partitions_to_move = self.ring.moved_from(old).unwrap_or(0);
        let minimum = match &t.change {
            // The added node must end up with at least floor(Q·N/m) replicas, all of them new.
            Change::Add(_) => {
                self.ring.partitions() as usize * self.ring.n() / self.layout.members.len()
            }
            Change::Decommission(n) | Change::ForceRemove(n) => {
                let shrunk = (old.n() - self.ring.n()) * self.ring.partitions() as usize;
                old.replica_counts().get(n).copied().unwrap_or(0).saturating_sub(shrunk)
            }
        };
        Moves { partitions_to_move, minimum }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(names: &[&str]) -> Vec<NodeId> {
        names.iter().map(|n| NodeId::new(*n).unwrap()).collect()
    }

    fn id(n: &str) -> NodeId {
        NodeId::new(n).unwrap()
    }

    #[test]
    fn a_change_takes_three_versions_and_one_change_runs_at_a_time() {
        let l1 = Layout::initial(&ids(&["n1", "n2", "n3", "n4"]), 64, 3).unwrap();
        let l2 = l1.start(Change::Add(id("n5"))).unwrap();
        assert_eq!(l2.version, 2);
        assert_eq!(l2.members.len(), 5);
        assert_eq!(l2.transition.as_ref().unwrap().phase, Phase::Syncing);
        assert!(matches!(l2.start(Change::Add(id("n6"))), Err(Error::ChangeInProgress(_))));
        let l3 = l2.advance().unwrap();
        assert_eq!(l3.transition.as_ref().unwrap().phase, Phase::ReadNew);
        let l4 = l3.advance().unwrap();
        assert_eq!(l4.version, 4);
        assert!(l4.transition.is_none());
        assert!(l4.advance().is_none());
        assert!(matches!(l4.start(Change::Add(id("n5"))), Err(Error::InvalidChange(_))));
        assert!(matches!(l4.start(Change::Decommission(id("n9"))), Err(Error::InvalidChange(_))));
    }

    #[test]
    fn writes_reach_both_owner_sets_and_reads_switch_after_syncing() {
        let l1 = Layout::initial(&ids(&["n1", "n2", "n3", "n4"]), 64, 3).unwrap();
        let l2 = Placement::new(l1.start(Change::Add(id("n5"))).unwrap()).unwrap();
        let before = Placement::new(l1.clone()).unwrap();
        let mut moved = 0;
        for p in 0..64 {
            let lists = l2.write_lists(p);
            assert_eq!(lists.len(), 2);
            assert_eq!(&lists[0][..3], before.ring().preference_list(p));
            assert_eq!(l2.read_list(p)[..3], lists[0][..3]);
            if l2.ring().preference_list(p).contains(&id("n5")) {
                moved += 1;
            }
        }
        assert!(moved > 0);
        let l3 = Placement::new(l2.layout().advance().unwrap()).unwrap();
        for p in 0..64 {
            assert_eq!(&l3.read_list(p)[..3], l3.ring().preference_list(p));
            assert_eq!(l3.write_lists(p).len(), 2);
        }
        let l4 = Placement::new(l3.layout().advance().unwrap()).unwrap();
        assert_eq!(l4.write_lists(0).len(), 1);
    }

    #[test]
    fn the_added_node_pulls_exactly_the_partitions_it_gains_from_their_old_owners() {
        let l1 = Layout::initial(&ids(&["n1", "n2", "n3", "n4"]), 64, 3).unwrap();
        let p = Placement::new(l1.start(Change::Add(id("n5"))).unwrap()).unwrap();
        let tasks = p.sync_tasks(&id("n5"));
        let gained: BTreeSet<u32> =
            (0..64).filter(|&q| p.ring().preference_list(q).contains(&id("n5"))).collect();
        for (src, parts) in &tasks {
            for q in parts {
                assert!(gained.contains(q));
                assert!(p.old_ring().unwrap().preference_list(*q).contains(src));
            }
        }
        let covered: BTreeSet<u32> = tasks.values().flatten().copied().collect();
        assert_eq!(covered, gained);
        let m = p.moves();
        // Every new (partition, node) replica is pulled by its node, and nothing else is.
        let pulled: usize = ["n1", "n2", "n3", "n4", "n5"]
            .iter()
            .map(|n| p.sync_tasks(&id(n)).values().flatten().collect::<BTreeSet<_>>().len())
            .sum();
        assert_eq!(m.partitions_to_move, pulled);
        assert!(gained.len() >= m.minimum);
        assert!(m.partitions_to_move >= m.minimum, "{m:?}");
        assert!(m.partitions_to_move <= m.minimum + 64 * 3 / 10, "{m:?}");
        // Old owners that stay have nothing to pull.
        for n in ["n1", "n2", "n3", "n4"] {
            let t = p.sync_tasks(&id(n));
            for parts in t.values() {
                for q in parts {
                    assert!(!p.old_ring().unwrap().preference_list(*q).contains(&id(n)));
                }
            }
        }
    }

    #[test]
    fn a_force_removed_node_is_never_a_source_nor_a_voter() {
        let l1 = Layout::initial(&ids(&["n1", "n2", "n3", "n4"]), 64, 3).unwrap();
        let l2 = l1.start(Change::ForceRemove(id("n2"))).unwrap();
        assert!(!l2.voters().contains(&id("n2")));
        let p = Placement::new(l2).unwrap();
        assert_eq!(p.banned(), Some(&id("n2")));
        for n in ["n1", "n3", "n4"] {
            assert!(!p.sync_tasks(&id(n)).contains_key(&id("n2")));
        }
        for q in 0..64 {
            assert!(!p.all_owners(q).contains(&id("n2")));
        }
        let m = p.moves();
        assert_eq!(m.minimum, 48);
        assert!(m.partitions_to_move >= 48);
        let d = Placement::new(l1.start(Change::Decommission(id("n2"))).unwrap()).unwrap();
        assert!(d.layout().voters().contains(&id("n2")));
        let sources: BTreeSet<NodeId> =
            ["n1", "n3", "n4"].iter().flat_map(|n| d.sync_tasks(&id(n)).into_keys()).collect();
        assert!(sources.contains(&id("n2")));
    }

    #[test]
    fn growing_from_fewer_members_than_n_counts_the_new_replicas() {
        let l1 = Layout::initial(&ids(&["n1", "n2"]), 16, 3).unwrap();
        let p = Placement::new(l1.start(Change::Add(id("n3"))).unwrap()).unwrap();
        let m = p.moves();
        assert_eq!(m.partitions_to_move, 16);
        assert_eq!(m.minimum, 16);
    }
}
