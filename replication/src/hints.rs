//! Bookkeeping of hinted handoff.
//!
//! HINTED HANDOFF
//! ==============
//! Dynamo §4.6: a fallback that accepted a write for an unreachable owner keeps it, with a hint
//! naming the owner, and hands it over when the failure detector sees the owner again. The data
//! itself (a sibling set per (key, owner)) is stored durably by the engine in a hint keyspace;
//! [`HintBook`] is the in-memory index the node rebuilds from it at start-up: which hints exist,
//! for which owner, and at which version.
//!
//! Invariants:
//! - at most one hint per (key, owner): a second write for the same owner merges into the stored
//!   set (`sync`) and raises the hint's version, so hints never multiply per key;
//! - a hint is removed only by [`HintBook::acknowledge`] with a version that descends from the
//!   hint's current version. If a newer write arrived for the same (key, owner) while a delivery was
//!   in flight, the acknowledgement of the older version leaves the hint in place, and the newer data
//!   is delivered next time — an acknowledgement can never make a newer write disappear;
//! - delivery is idempotent: the owner merges (`sync`) what it receives, so delivering the same
//!   hint twice, or a hint the owner already got by read repair, changes nothing.
//!
//! Time is not read here. A delivery that got no answer is released with
//! [`HintBook::release`] (the node does this on its request timeout) and is offered again by the
//! next [`HintBook::take_batch`].

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::id::NodeId;
use crate::vclock::VersionVector;

/// Default number of hints the node delivers per batch to one owner.
pub const DEFAULT_HINT_BATCH: usize = 64;

/// One hint: what the holder must deliver to `owner`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HintEntry<K> {
    /// The object key.
    pub key: K,
    /// The owner the data belongs to.
    pub owner: NodeId,
    /// Version vector of the hinted set as last recorded (joins of every write recorded).
    pub version: VersionVector,
    /// True while a delivery of this hint is in flight.
    pub in_flight: bool,
}

/// One delivery to perform: send the holder's hinted set for `key` to `owner`, then call
/// [`HintBook::acknowledge`] with `version` when the owner confirms.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Delivery<K> {
    /// The object key (read the hinted set for (key, owner) from the engine).
    pub key: K,
    /// Where to send it.
    pub owner: NodeId,
    /// The version being delivered.
    pub version: VersionVector,
}

/// The hints a node holds, per owner and key.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HintBook<K: Ord> {
    by_owner: BTreeMap<NodeId, BTreeMap<K, HintEntry<K>>>,
}

impl<K: Ord> Default for HintBook<K> {
    fn default() -> Self {
        HintBook { by_owner: BTreeMap::new() }
    }
}

impl<K: Ord + Clone> HintBook<K> {
    /// An empty book.
    pub fn new() -> Self {
        Self::default()
    }

    /// Records that this node now holds data for (`key`, `owner`) whose hinted set has version
    /// `version` (after merging the new write into the stored hint set). Merges with an existing
    /// hint's version.
    pub fn record(&mut self, key: K, owner: NodeId, version: &VersionVector) {
        let per_owner = self.by_owner.entry(owner.clone()).or_default();
        per_owner.entry(key.clone()).and_modify(|e| e.version.merge(version)).or_insert_with(
            || HintEntry { key, owner, version: version.clone(), in_flight: false },
        );
    }

    /// Up to `limit` hints for `owner` that are not in flight, marked in flight. Call when the
    /// owner is reachable; send each, then `acknowledge` or `release` it.
    pub fn take_batch(&mut self, owner: &NodeId, limit: usize) -> Vec<Delivery<K>> {
        let Some(per_owner) = self.by_owner.get_mut(owner) else {
            return Vec::new();
        };
        per_owner
            .values_mut()
            .filter(|e| !e.in_flight)
            .take(limit)
            .map(|e| {
                e.in_flight = true;
                Delivery { key: e.key.clone(), owner: e.owner.clone(), version: e.version.clone() }
            })
            .collect()
    }

    /// The owner acknowledged a delivery of `delivered` for `key`. Removes the hint only if
    /// `delivered` covers everything recorded for it; otherwise (a newer write came in meanwhile)
    /// keeps it and makes it deliverable again. Returns true when the hint was removed: the node
    /// may then delete the hinted set from the engine (if that set's version is still covered by
    /// `delivered`, checked under the engine's per-key lock).
    pub fn acknowledge(&mut self, key: &K, owner: &NodeId, delivered: &VersionVector) -> bool {
        let Some(per_owner) = self.by_owner.get_mut(owner) else {
            return false;
        };
        let Some(entry) = per_owner.get_mut(key) else {
            return false;
        };
        if delivered.descends(&entry.version) {
            per_owner.remove(key);
            if per_owner.is_empty() {
                self.by_owner.remove(owner);
            }
            true
        } else {
            entry.in_flight = false;
            false
        }
    }

    /// A delivery failed or timed out: make the hint deliverable again.
    pub fn release(&mut self, key: &K, owner: &NodeId) {
        if let Some(e) = self.by_owner.get_mut(owner).and_then(|m| m.get_mut(key)) {
            e.in_flight = false;
        }
    }

    /// The owner became unreachable: release all of its in-flight deliveries.
    pub fn release_all(&mut self, owner: &NodeId) {
        if let Some(m) = self.by_owner.get_mut(owner) {
            for e in m.values_mut() {
                e.in_flight = false;
            }
        }
    }

    /// Owners with at least one hint that are in `reachable`: where to deliver now.
    pub fn deliverable_owners(&self, reachable: &BTreeSet<NodeId>) -> Vec<NodeId> {
        self.by_owner.keys().filter(|o| reachable.contains(*o)).cloned().collect()
    }

    /// Number of hints held for `owner` (shown by `GET /cluster`).
    pub fn count_for(&self, owner: &NodeId) -> usize {
        self.by_owner.get(owner).map_or(0, BTreeMap::len)
    }

    /// Hints held per owner.
    pub fn counts(&self) -> BTreeMap<NodeId, usize> {
        self.by_owner.iter().map(|(o, m)| (o.clone(), m.len())).collect()
    }

    /// Total number of hints held.
    pub fn len(&self) -> usize {
        self.by_owner.values().map(BTreeMap::len).sum()
    }

    /// True when no hint is held.
    pub fn is_empty(&self) -> bool {
        self.by_owner.is_empty()
    }

    /// True when some hint for `key` is pending (for any owner): compaction must not drop the
    /// key's tombstones while this holds.
    pub fn has_pending_for_key(&self, key: &K) -> bool {
        self.by_owner.values().any(|m| m.contains_key(key))
    }

    /// The hint for (`key`, `owner`), if held.
    pub fn get(&self, key: &K, owner: &NodeId) -> Option<&HintEntry<K>> {
        self.by_owner.get(owner).and_then(|m| m.get(key))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::id::Actor;

    fn node(n: &str) -> NodeId {
        NodeId::new(n).unwrap()
    }

    fn vv(c: u64) -> VersionVector {
        [(Actor::new(node("a"), 1), c)].into_iter().collect()
    }

    #[test]
    fn newer_write_during_delivery_is_not_lost() {
        let mut book = HintBook::new();
        let owner = node("n2");
        book.record("k".to_string(), owner.clone(), &vv(1));
        let batch = book.take_batch(&owner, 10);
        assert_eq!(batch.len(), 1);
        assert!(book.take_batch(&owner, 10).is_empty(), "in-flight hint offered twice");
        // A newer write is hinted while version 1 is in flight.
        book.record("k".to_string(), owner.clone(), &vv(2));
        assert!(!book.acknowledge(&"k".to_string(), &owner, &batch[0].version));
        assert_eq!(book.count_for(&owner), 1);
        let again = book.take_batch(&owner, 10);
        assert_eq!(again[0].version, vv(2));
        assert!(book.acknowledge(&"k".to_string(), &owner, &again[0].version));
        assert!(book.is_empty());
        // Acknowledging again (duplicate reply) is harmless.
        assert!(!book.acknowledge(&"k".to_string(), &owner, &again[0].version));
    }

    #[test]
    fn release_and_reachability() {
        let mut book = HintBook::new();
        let (o1, o2) = (node("n1"), node("n2"));
        for k in 0..5u32 {
            book.record(k, o1.clone(), &vv(1));
        }
        book.record(9, o2.clone(), &vv(1));
        assert_eq!(book.len(), 6);
        assert!(book.has_pending_for_key(&9) && !book.has_pending_for_key(&7));
        let reachable: BTreeSet<NodeId> = [o2.clone()].into_iter().collect();
        assert_eq!(book.deliverable_owners(&reachable), vec![o2.clone()]);
        assert_eq!(book.take_batch(&o1, 3).len(), 3);
        assert_eq!(book.take_batch(&o1, 3).len(), 2);
        book.release(&0, &o1);
        assert_eq!(book.take_batch(&o1, 3).len(), 1);
        book.release_all(&o1);
        assert_eq!(book.take_batch(&o1, 10).len(), 5);
        assert_eq!(book.counts().get(&o1), Some(&5));
    }
}
