//! Active anti-entropy: per-partition hash trees over what a node stores, and their comparison.
//!
//! HASH TREES
//! ==========
//! Every node keeps, for each ring partition it holds replicas of, a two-level tree of XOR hashes
//! (Riak's Tictac trees, `kv_index_tictactree`): [`BRANCHES`] branches of [`SEGMENTS_PER_BRANCH`]
//! segments each. A key belongs to the segment given by the low bits of its ring hash; its entry
//! is `xxh3(engine key ‖ clock digest)`, where the clock digest ([`SiblingSet::clock_digest`])
//! covers the set's version vector and the dot of every sibling — never the content, which a dot
//! identifies. A segment's hash is the XOR of its entries, a branch's the XOR of its segments.
//! XOR makes maintenance incremental and order-free: when a write changes a key's set from `old`
//! to `new`, the store XORs `entry(old) ^ entry(new)` into the segment and its branch (O(1), under
//! the key's lock, so the deltas of one key are applied in the order its versions were stored).
//! Two replicas holding exactly the same sets for a partition have identical trees; a differing
//! key shows as a differing segment and branch (unless 64-bit hashes collide).
//!
//! SIZE
//! ====
//! 64 × 64 = 4,096 segments, 33 KiB per partition held. Q (256 by default) already splits the
//! keyspace: a 4-node cluster with N = 3 holds 192 partitions per node, 6.3 MiB of trees, and a
//! million keys per node fill about one key per segment. Riak's 1,048,576-segment trees and the
//! 128 × 128 trees of the design note were sized for whole-vnode keyspaces; ours are per
//! partition, so a smaller tree gives the same resolution at a quarter of the memory.
//!
//! Trees live in memory only: the store rebuilds them from its keys when it opens (a scan that
//! decodes only each set's clock), so a crash can never leave a tree that disagrees with the data.
//!
//! EXCHANGE
//! ========
//! The node protocol compares trees of one partition with another owner (`node::aae`): the 64
//! branch hashes first, then the segments of differing branches, then the (key, digest) lists of
//! differing segments; differing keys are merged both ways.

use std::sync::Mutex;

use xxhash_rust::xxh3::Xxh3;

use crate::dvv::SiblingSet;
use crate::node::keys::ObjectKey;

/// Branches of a partition's tree.
pub const BRANCHES: usize = 64;
/// Segments of one branch.
pub const SEGMENTS_PER_BRANCH: usize = 64;
/// Segments of a partition's tree.
pub const SEGMENTS: usize = BRANCHES * SEGMENTS_PER_BRANCH;

/// The segment (0..[`SEGMENTS`]) of a key with ring hash `hash`: its low bits (the partition
/// is the high bits, so the two are independent).
pub fn segment_of(hash: u64) -> u16 {
    (hash % SEGMENTS as u64) as u16
}

/// The partition (out of `partitions_total`, a power of two) of a key with ring hash `hash`.
pub fn partition_of(hash: u64, partitions_total: u32) -> u32 {
    let bits = partitions_total.trailing_zeros();
    if bits == 0 { 0 } else { u32::try_from(hash >> (64 - bits)).unwrap_or(0) }
}

/// A key's entry in its segment: the hash of its engine key and its set's clock digest.
pub fn entry_hash(key: &ObjectKey, clock_digest: u64) -> u64 {
    let mut h = Xxh3::new();
    h.update(&key.encode());
    h.update(&clock_digest.to_le_bytes());
    h.digest()
}

/// One partition's tree.
#[derive(Clone)]
struct Tree {
    segments: Box<[u64; SEGMENTS]>,
    branches: [u64; BRANCHES],
    /// Keys accounted for (a gauge for metrics; exact while every update names its old set).
    keys: u64,
}

impl Tree {
    fn new() -> Tree {
        Tree { segments: Box::new([0; SEGMENTS]), branches: [0; BRANCHES], keys: 0 }
    }

    fn toggle(&mut self, segment: u16, entry: u64) {
        let s = usize::from(segment) % SEGMENTS;
        self.segments[s] ^= entry;
        self.branches[s / SEGMENTS_PER_BRANCH] ^= entry;
    }
}

/// The hash trees of every partition a node stores replicas of. Shared by the store's writers:
/// each partition has its own lock, held for a few XORs.
pub struct Trees {
    partitions_total: u32,
    parts: Vec<Mutex<Option<Tree>>>,
}

impl std::fmt::Debug for Trees {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Trees")
            .field("partitions_total", &self.partitions_total)
            .field("allocated", &self.allocated())
            .finish()
    }
}

/// How a stored key changed, for [`Trees::update`]: the clock digests before and after (`None`:
/// absent).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Change {
    /// Digest of the set before the write.
    pub old: Option<u64>,
    /// Digest of the set after it.
    pub new: Option<u64>,
}

impl Trees {
    /// Empty trees for a ring of `partitions_total` partitions.
    pub fn new(partitions_total: u32) -> Trees {
        let parts = (0..partitions_total.max(1)).map(|_| Mutex::new(None)).collect();
        Trees { partitions_total: partitions_total.max(1), parts }
    }

    /// Q.
    pub fn partitions_total(&self) -> u32 {
        self.partitions_total
    }

    fn slot(&self, partition: u32) -> Option<&Mutex<Option<Tree>>> {
        self.parts.get(partition as usize)
    }

    /// Accounts for a change of `key`'s stored set.
    pub fn update(&self, key: &ObjectKey, change: Change) {
        if change.old == change.new {
            return;
        }
        let hash = key.hash();
        let Some(slot) = self.slot(partition_of(hash, self.partitions_total)) else { return };
        let segment = segment_of(hash);
        let mut guard = slot.lock().unwrap_or_else(|p| p.into_inner());
        let tree = guard.get_or_insert_with(Tree::new);
        if let Some(d) = change.old {
            tree.toggle(segment, entry_hash(key, d));
            tree.keys = tree.keys.saturating_sub(1);
        }
        if let Some(d) = change.new {
            tree.toggle(segment, entry_hash(key, d));
            tree.keys += 1;
        }
    }

    /// Accounts for a set replacing another (either may be absent).
    pub fn replace(&self, key: &ObjectKey, old: Option<&SiblingSet>, new: Option<&SiblingSet>) {
        self.update(
            key,
            Change {
                old: old.map(SiblingSet::clock_digest),
                new: new.map(SiblingSet::clock_digest),
            },
        );
    }

    /// Forgets everything (before a rebuild).
    pub fn clear(&self) {
        for slot in &self.parts {
            *slot.lock().unwrap_or_else(|p| p.into_inner()) = None;
        }
    }

    /// The branch hashes of `partition` ([`BRANCHES`] values) when `branches` is empty;
    /// otherwise the segment hashes of each listed branch ([`SEGMENTS_PER_BRANCH`] values per
    /// branch, in the order listed). A partition with no keys is all zeros; an index out of
    /// range reads as zeros.
    pub fn hashes(&self, partition: u32, branches: &[u16]) -> Vec<u64> {
        let guard = self.slot(partition).map(|s| s.lock().unwrap_or_else(|p| p.into_inner()));
        let tree = guard.as_ref().and_then(|g| g.as_ref());
        if branches.is_empty() {
            return tree.map_or_else(|| vec![0; BRANCHES], |t| t.branches.to_vec());
        }
        let mut out = Vec::with_capacity(branches.len() * SEGMENTS_PER_BRANCH);
        for &b in branches {
            let b = usize::from(b);
            let start = b * SEGMENTS_PER_BRANCH;
            match tree {
                Some(t) if b < BRANCHES => {
                    out.extend_from_slice(&t.segments[start..start + SEGMENTS_PER_BRANCH])
                }
                _ => out.extend(std::iter::repeat_n(0, SEGMENTS_PER_BRANCH)),
            }
        }
        out
    }

    /// Keys accounted for in `partition`.
    pub fn keys(&self, partition: u32) -> u64 {
        self.slot(partition)
            .map(|s| s.lock().unwrap_or_else(|p| p.into_inner()).as_ref().map_or(0, |t| t.keys))
            .unwrap_or(0)
    }

    /// Keys accounted for in every partition.
    pub fn total_keys(&self) -> u64 {
        (0..self.partitions_total).map(|p| self.keys(p)).sum()
    }

    /// Partitions with a tree allocated.
    pub fn allocated(&self) -> usize {
        self.parts.iter().filter(|s| s.lock().unwrap_or_else(|p| p.into_inner()).is_some()).count()
    }

    /// Bytes of memory the allocated trees take.
    pub fn memory_bytes(&self) -> u64 {
        (self.allocated() * std::mem::size_of::<u64>() * (SEGMENTS + BRANCHES)) as u64
    }
}

/// The indices at which two hash lists differ (a shorter list reads as zeros past its end).
pub fn differing(a: &[u64], b: &[u64]) -> Vec<u16> {
    let n = a.len().max(b.len());
    (0..n)
        .filter(|&i| a.get(i).copied().unwrap_or(0) != b.get(i).copied().unwrap_or(0))
        .filter_map(|i| u16::try_from(i).ok())
        .collect()
}

/// The segments (0..[`SEGMENTS`]) of branches `branches` whose hashes differ, given both sides'
/// answers to [`Trees::hashes`] for those branches.
pub fn differing_segments(branches: &[u16], ours: &[u64], theirs: &[u64]) -> Vec<u16> {
    differing(ours, theirs)
        .into_iter()
        .filter_map(|i| {
            let b = branches.get(usize::from(i) / SEGMENTS_PER_BRANCH)?;
            let s = usize::from(*b) * SEGMENTS_PER_BRANCH + usize::from(i) % SEGMENTS_PER_BRANCH;
            u16::try_from(s).ok()
        })
        .collect()
}

/// Keys whose digests differ between two (key, digest) lists sorted by key — including keys
/// only one side has: what an exchange must repair.
pub fn differing_keys(
    ours: &[(ObjectKey, u64)],
    theirs: &[(ObjectKey, u64)],
) -> Vec<(ObjectKey, bool, bool)> {
    let (mut i, mut j) = (0, 0);
    let mut out = Vec::new();
    while i < ours.len() || j < theirs.len() {
        match (ours.get(i), theirs.get(j)) {
            (Some((a, da)), Some((b, db))) if a == b => {
                if da != db {
                    out.push((a.clone(), true, true));
                }
                i += 1;
                j += 1;
            }
            (Some((a, _)), Some((b, _))) if a < b => {
                out.push((a.clone(), true, false));
                i += 1;
            }
            (Some(_), Some((b, _))) => {
                out.push((b.clone(), false, true));
                j += 1;
            }
            (Some((a, _)), None) => {
                out.push((a.clone(), true, false));
                i += 1;
            }
            (None, Some((b, _))) => {
                out.push((b.clone(), false, true));
                j += 1;
            }
            (None, None) => break,
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dvv::{Meta, Sibling};
    use crate::id::{Actor, NodeId};
    use crate::vclock::VersionVector;

    fn key(name: &str) -> ObjectKey {
        ObjectKey { bucket: "b".into(), incarnation: 7, name: name.into() }
    }

    fn actor(n: &str) -> Actor {
        Actor::new(NodeId::new(n).unwrap(), 3)
    }

    fn set_with(values: &[(&str, &str)]) -> SiblingSet {
        let mut s = SiblingSet::new();
        for (a, v) in values {
            s.update(
                &VersionVector::new(),
                Sibling::bytes(Meta::default(), v.as_bytes().to_vec()),
                &actor(a),
            );
        }
        s
    }

    #[test]
    fn incremental_updates_equal_a_rebuild_in_any_order() {
        let a = Trees::new(16);
        let b = Trees::new(16);
        let s1 = set_with(&[("n1", "x")]);
        let s2 = set_with(&[("n1", "x"), ("n2", "y")]);
        // a: k1 written twice, k2 once, k3 written then dropped.
        a.replace(&key("k1"), None, Some(&s1));
        a.replace(&key("k2"), None, Some(&s1));
        a.replace(&key("k3"), None, Some(&s2));
        a.replace(&key("k1"), Some(&s1), Some(&s2));
        a.replace(&key("k3"), Some(&s2), None);
        // b: the final state in another order.
        b.replace(&key("k2"), None, Some(&s1));
        b.replace(&key("k1"), None, Some(&s2));
        for p in 0..16 {
            assert_eq!(a.hashes(p, &[]), b.hashes(p, &[]), "partition {p}");
            let all: Vec<u16> = (0..BRANCHES as u16).collect();
            assert_eq!(a.hashes(p, &all), b.hashes(p, &all));
            assert_eq!(a.keys(p), b.keys(p));
        }
        assert_eq!((0..16).map(|p| a.keys(p)).sum::<u64>(), 2);
    }

    #[test]
    fn a_differing_key_shows_in_its_branch_segment_and_key_list() {
        let a = Trees::new(4);
        let b = Trees::new(4);
        let s1 = set_with(&[("n1", "x")]);
        let s2 = set_with(&[("n1", "x"), ("n2", "y")]);
        for i in 0..200 {
            a.replace(&key(&format!("k{i}")), None, Some(&s1));
            b.replace(&key(&format!("k{i}")), None, Some(&s1));
        }
        let odd = key("k77");
        b.replace(&odd, Some(&s1), Some(&s2));
        let p = partition_of(odd.hash(), 4);
        let diff = differing(&a.hashes(p, &[]), &b.hashes(p, &[]));
        let seg = segment_of(odd.hash());
        assert_eq!(diff, vec![seg / SEGMENTS_PER_BRANCH as u16]);
        let segs = differing_segments(&diff, &a.hashes(p, &diff), &b.hashes(p, &diff));
        assert_eq!(segs, vec![seg]);
        for other in (0..4).filter(|&q| q != p) {
            assert_eq!(a.hashes(other, &[]), b.hashes(other, &[]));
        }
    }

    #[test]
    fn key_lists_diff_both_ways() {
        let l = |v: &[(&str, u64)]| -> Vec<(ObjectKey, u64)> {
            v.iter().map(|(k, d)| (key(k), *d)).collect()
        };
        let ours = l(&[("a", 1), ("b", 2), ("d", 4)]);
        let theirs = l(&[("b", 3), ("c", 1), ("d", 4), ("e", 9)]);
        let d = differing_keys(&ours, &theirs);
        let names: Vec<(String, bool, bool)> =
            d.into_iter().map(|(k, o, t)| (k.name, o, t)).collect();
        assert_eq!(
            names,
            vec![
                ("a".into(), true, false),
                ("b".into(), true, true),
                ("c".into(), false, true),
                ("e".into(), false, true)
            ]
        );
    }

    #[test]
    fn partitions_match_the_ring() {
        for name in ["a", "b", "zz", "hello"] {
            let k = key(name);
            let p = partition_of(k.hash(), 256);
            assert!(crate::node::in_partitions(k.hash(), 256, &[p]));
        }
    }
}
