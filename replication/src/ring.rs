//! The ring: Q equal partitions assigned to the member nodes.
//!
//! RING
//! ====
//! Dynamo's "strategy 3" (DeCandia et al., SOSP 2007, §6.2): the 64-bit key space is cut into
//! Q equal partitions (Q a power of two, default [`DEFAULT_PARTITIONS`]); a key's partition is the
//! top log2(Q) bits of its hash ([`key_hash`] of bucket, bucket incarnation and object name,
//! xxh3-64, pinned by a test so it never changes under stored data). Partitions, not nodes, are
//! the unit of placement and of handoff.
//!
//! ASSIGNMENT
//! ==========
//! The ring is a pure function of the member *set*, Q and N: every node that knows the same
//! members computes the same ring, whatever order it learnt them in (members are sorted and
//! deduplicated first). For each (partition, node) pair a rendezvous score
//! (Thaler & Ravishankar's highest-random-weight hashing) ranks the nodes per partition. Without
//! capacities, taking the top N per partition would move only the replicas the changed node
//! gains or loses, but the counts per node would be binomially unbalanced. So the assignment is
//! two capacity-constrained greedy passes over all (partition, node) pairs in descending score
//! order:
//! 1. replica sets: a pair is taken while the partition has fewer than N nodes, the node is not
//!    already in it and the node is under its cap, floor(Q·N/m), of which `Q·N mod m` nodes may
//!    exceed by one (whichever reach it first in score order, so a membership change does not
//!    reshuffle which nodes are "big");
//! 2. primaries: among each partition's set, the same greedy with caps floor/ceil of Q/m.
//!
//! The list is the primary, then the rest of the set by descending score. If a greedy pass strands
//! a partition (every node with room already holds it), an augmenting-path search moves one
//! assignment along a chain of nodes to make room, as in bipartite b-matching; the caps sum to
//! the demand. Because only `Q·N mod m` nodes may exceed the floor, the greedy order can still
//! reach a dead end (CI's property test found one: 24 members, Q=32, N=2, a node left with no
//! primary); a final rebalancing step then moves single slots along alternating chains until
//! every node is within its floor and ceiling, which Hall's condition guarantees is possible. It
//! changes nothing in a ring that was already balanced. Only pass 1 decides data movement; pass 2
//! only reorders within a set.
//!
//! Invariants (tested):
//! - every preference list has min(N, members) distinct nodes;
//! - every node's primary count is floor or ceil of Q/m, its replica count floor or ceil of Q·N/m;
//! - adding or removing one member moves close to the minimum Q·N/m replicas (see the movement
//!   table in `tests/ring.rs` and `docs/replication.md`).
//!
//! PREFERENCE LISTS
//! ================
//! `preference_list(p)` is the N owners of partition p in position order; the first reachable one
//! coordinates writes. `extended_preference_list(p)` continues with every other member in
//! descending rendezvous score for p: the order in which sloppy quorum picks fallbacks. Using the
//! per-partition score (rather than the next partitions on the circle) spreads the fallback load
//! of a failed node evenly over all the others.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use serde::{Deserialize, Serialize};
use xxhash_rust::xxh3::{xxh3_64, xxh3_64_with_seed};

use crate::error::{Error, Result};
use crate::id::NodeId;

/// Default number of partitions.
pub const DEFAULT_PARTITIONS: u32 = 256;

/// Largest accepted number of partitions.
pub const MAX_PARTITIONS: u32 = 1 << 16;

/// Largest accepted number of members (node indexes are `u16` internally).
pub const MAX_MEMBERS: usize = 4096;

/// Seed of the rendezvous score hash. Changing it reshuffles every ring: never change it.
const SCORE_SEED: u64 = 0x6361_6972_6e2d_7231; // "cairn-r1"

/// The stable 64-bit hash of an object key: xxh3-64 over
/// `len(bucket) as u32 LE ‖ bucket ‖ incarnation as u64 LE ‖ name`.
///
/// The length prefix makes the encoding unambiguous (no two (bucket, name) pairs share bytes).
/// Stored data depends on this function: its values are pinned by a test.
pub fn key_hash(bucket: &str, incarnation: u64, name: &str) -> u64 {
    let mut buf = Vec::with_capacity(4 + bucket.len() + 8 + name.len());
    // Bucket names are at most 63 bytes; saturate rather than panic on a hypothetical longer one.
    let blen = u32::try_from(bucket.len()).unwrap_or(u32::MAX);
    buf.extend_from_slice(&blen.to_le_bytes());
    buf.extend_from_slice(bucket.as_bytes());
    buf.extend_from_slice(&incarnation.to_le_bytes());
    buf.extend_from_slice(name.as_bytes());
    xxh3_64(&buf)
}

fn score(partition: u32, node: &NodeId) -> u64 {
    let mut buf = Vec::with_capacity(4 + node.as_str().len());
    buf.extend_from_slice(&partition.to_le_bytes());
    buf.extend_from_slice(node.as_str().as_bytes());
    xxh3_64_with_seed(&buf, SCORE_SEED)
}

/// One partition a node holds, and at which position of the preference list.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Owned {
    /// The partition.
    pub partition: u32,
    /// 0 for the primary, 1..N for the other replicas.
    pub position: usize,
}

/// A computed ring: partition -> preference list.
///
/// Invariants: see the module documentation. Immutable; a membership change builds a new ring.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ring {
    members: Vec<NodeId>,
    partitions: u32,
    n: usize,
    /// `prefs[p]` = member indexes in position order, length `n`.
    prefs: Vec<Vec<u16>>,
    /// Same lists as node ids, to lend `&[NodeId]` out.
    pref_ids: Vec<Vec<NodeId>>,
}

impl Ring {
    /// Computes the ring for `members` (order and duplicates do not matter), `partitions` (a power
    /// of two, 1..=65536) and replication factor `n`. With fewer members than `n`, each partition
    /// gets every member (`n()` reports the effective factor).
    pub fn new(members: &[NodeId], partitions: u32, n: usize) -> Result<Ring> {
        let set: BTreeSet<NodeId> = members.iter().cloned().collect();
        let members: Vec<NodeId> = set.into_iter().collect();
        if members.is_empty() {
            return Err(Error::InvalidRing("no members".into()));
        }
        if members.len() > MAX_MEMBERS {
            return Err(Error::InvalidRing(format!("more than {MAX_MEMBERS} members")));
        }
        if !partitions.is_power_of_two() || partitions > MAX_PARTITIONS {
            return Err(Error::InvalidRing(format!(
                "partitions must be a power of two up to {MAX_PARTITIONS}, got {partitions}"
            )));
        }
        if n == 0 {
            return Err(Error::InvalidRing("replication factor must be at least 1".into()));
        }
        let n = n.min(members.len());
        let prefs = assign(&members, partitions, n);
        let pref_ids = prefs
            .iter()
            .map(|l| l.iter().map(|&i| members[usize::from(i)].clone()).collect())
            .collect();
        Ok(Ring { members, partitions, n, prefs, pref_ids })
    }

    /// The members, sorted.
    pub fn members(&self) -> &[NodeId] {
        &self.members
    }

    /// Q, the number of partitions.
    pub fn partitions(&self) -> u32 {
        self.partitions
    }

    /// The effective replication factor: min(N, members).
    pub fn n(&self) -> usize {
        self.n
    }

    /// The partition of a key hash: its top log2(Q) bits.
    pub fn partition_of(&self, key_hash: u64) -> u32 {
        let bits = self.partitions.trailing_zeros();
        if bits == 0 {
            return 0;
        }
        // bits <= 16, so the shifted value fits in u32.
        u32::try_from(key_hash >> (64 - bits)).unwrap_or(0)
    }

    /// The partition of an object key.
    pub fn partition_of_key(&self, bucket: &str, incarnation: u64, name: &str) -> u32 {
        self.partition_of(key_hash(bucket, incarnation, name))
    }

    /// The N owners of `partition` (taken modulo Q), primary first.
    pub fn preference_list(&self, partition: u32) -> &[NodeId] {
        &self.pref_ids[self.index(partition)]
    }

    /// The owners, then every other member in descending rendezvous score for `partition`: the
    /// order in which sloppy quorum takes fallbacks.
    pub fn extended_preference_list(&self, partition: u32) -> Vec<NodeId> {
        let p = self.index(partition);
        let mut out = self.pref_ids[p].clone();
        let mut rest: Vec<(u64, &NodeId)> = self
            .members
            .iter()
            .enumerate()
            .filter(|(i, _)| !self.prefs[p].iter().any(|&j| usize::from(j) == *i))
            .map(|(_, id)| (score(p as u32, id), id))
            .collect();
        rest.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| a.1.cmp(b.1)));
        out.extend(rest.into_iter().map(|(_, id)| id.clone()));
        out
    }

    /// Every partition `node` holds, with its position, in partition order.
    pub fn owned_by(&self, node: &NodeId) -> Vec<Owned> {
        self.pref_ids
            .iter()
            .enumerate()
            .filter_map(|(p, list)| {
                list.iter()
                    .position(|id| id == node)
                    .map(|position| Owned { partition: p as u32, position })
            })
            .collect()
    }

    /// Number of partitions each member is primary for.
    pub fn primary_counts(&self) -> BTreeMap<NodeId, usize> {
        let mut out: BTreeMap<NodeId, usize> =
            self.members.iter().map(|m| (m.clone(), 0)).collect();
        for list in &self.pref_ids {
            *out.entry(list[0].clone()).or_default() += 1;
        }
        out
    }

    /// Number of partitions each member holds a replica of (any position).
    pub fn replica_counts(&self) -> BTreeMap<NodeId, usize> {
        let mut out: BTreeMap<NodeId, usize> =
            self.members.iter().map(|m| (m.clone(), 0)).collect();
        for id in self.pref_ids.iter().flatten() {
            *out.entry(id.clone()).or_default() += 1;
        }
        out
    }

    /// Number of (partition, node) replicas in `self` that `before` did not have: the replicas
    /// that must be handed over when moving from `before` to `self`. `None` if Q differs.
    pub fn moved_from(&self, before: &Ring) -> Option<usize> {
        if before.partitions != self.partitions {
            return None;
        }
        let moved = self
            .pref_ids
            .iter()
            .zip(&before.pref_ids)
            .map(|(new, old)| new.iter().filter(|id| !old.contains(id)).count())
            .sum();
        Some(moved)
    }

    fn index(&self, partition: u32) -> usize {
        (partition & (self.partitions - 1)) as usize
    }
}

/// Per-node capacity for one pass: every node may take `floor`, and at most `extra` of them may
/// take one more (`floor + 1`); the caps then sum exactly to the demand. Which nodes get the extra
/// slot is decided by the greedy order itself (the nodes the scores favour), not by node index, so
/// that a membership change does not reshuffle the extra slots.
struct Caps {
    floor: usize,
    extra: usize,
    used_extra: usize,
    count: Vec<usize>,
}

impl Caps {
    fn new(demand: usize, m: usize) -> Caps {
        Caps { floor: demand / m, extra: demand % m, used_extra: 0, count: vec![0; m] }
    }

    fn has_room(&self, i: usize) -> bool {
        self.count[i] < self.floor || (self.count[i] == self.floor && self.used_extra < self.extra)
    }

    fn take(&mut self, i: usize) {
        if self.count[i] == self.floor {
            self.used_extra += 1;
        }
        self.count[i] += 1;
    }
}

/// The assignment described in the module documentation. `members` is sorted and deduplicated,
/// `1 <= n <= members.len()`. Returns, per partition, member indexes in position order.
fn assign(members: &[NodeId], q: u32, n: usize) -> Vec<Vec<u16>> {
    let m = members.len();
    let qn = q as usize;
    // All pairs, best score first; ties (astronomically rare) broken by partition then node.
    let mut pairs: Vec<(u64, u32, u16)> = Vec::with_capacity(qn * m);
    for p in 0..q {
        for (i, id) in members.iter().enumerate() {
            // i < MAX_MEMBERS <= u16::MAX, checked in Ring::new.
            pairs.push((score(p, id), p, i as u16));
        }
    }
    pairs.sort_unstable_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)).then(a.2.cmp(&b.2)));

    // Pass 1: the replica *set* of each partition (N distinct nodes), node totals balanced.
    let mut sets: Vec<Vec<u16>> = vec![Vec::with_capacity(n); qn];
    let mut caps = Caps::new(qn * n, m);
    for &(_, p, i) in &pairs {
        let (pu, iu) = (p as usize, usize::from(i));
        if sets[pu].len() < n && !sets[pu].contains(&i) && caps.has_room(iu) {
            sets[pu].push(i);
            caps.take(iu);
        }
    }
    for p in 0..qn {
        while sets[p].len() < n {
            let before = sets[p].len();
            let order = order_for(members, p as u32);
            let eligible = |sets: &[Vec<u16>], part: usize, i: u16| !sets[part].contains(&i);
            augment(p, &order, &mut sets, &mut caps, &eligible);
            if sets[p].len() == before {
                // augment places p whenever an eligible node exists, and n <= m guarantees one;
                // stop rather than loop if that ever failed.
                break;
            }
        }
    }
    rebalance(&mut sets, &mut caps, &|sets: &[Vec<u16>], part: usize, i: u16| {
        !sets[part].contains(&i)
    });

    // Pass 2: one primary per partition among its set, primary counts balanced.
    let mut prim: Vec<Vec<u16>> = vec![Vec::with_capacity(1); qn];
    let mut pcaps = Caps::new(qn, m);
    for &(_, p, i) in &pairs {
        let (pu, iu) = (p as usize, usize::from(i));
        if prim[pu].is_empty() && sets[pu].contains(&i) && pcaps.has_room(iu) {
            prim[pu].push(i);
            pcaps.take(iu);
        }
    }
    for p in 0..qn {
        if prim[p].is_empty() {
            let order = order_for(members, p as u32);
            let eligible = |prim: &[Vec<u16>], part: usize, i: u16| {
                prim[part].is_empty() || prim[part][0] != i
            };
            // Eligibility for the primary also requires membership of the set.
            let in_set = |prim: &[Vec<u16>], part: usize, i: u16| {
                sets[part].contains(&i) && eligible(prim, part, i)
            };
            augment(p, &order, &mut prim, &mut pcaps, &in_set);
        }
    }
    rebalance(&mut prim, &mut pcaps, &|prim: &[Vec<u16>], part: usize, i: u16| {
        sets[part].contains(&i) && prim[part].first() != Some(&i)
    });

    // Final lists: primary first, then the rest of the set by descending score.
    (0..qn)
        .map(|p| {
            let order = order_for(members, p as u32);
            let primary = prim[p].first().copied().unwrap_or(sets[p][0]);
            let mut list = vec![primary];
            list.extend(order.iter().copied().filter(|i| *i != primary && sets[p].contains(i)));
            list
        })
        .collect()
}

/// Member indexes in descending score order for partition `p`.
fn order_for(members: &[NodeId], p: u32) -> Vec<u16> {
    let mut v: Vec<(u64, u16)> =
        members.iter().enumerate().map(|(i, id)| (score(p, id), i as u16)).collect();
    v.sort_unstable_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
    v.into_iter().map(|(_, i)| i).collect()
}

/// `eligible(slots, partition, node)`: may `node` take a slot of `partition` in this pass?
type Eligible<'a> = dyn Fn(&[Vec<u16>], usize, u16) -> bool + 'a;

/// Gives stranded partition `p` one more node in `slots[p]` by an augmenting path: p takes an
/// eligible node x1 that has no room, x1 gives up one of its partitions p1 to an eligible node x2,
/// and so on until a node with room is reached (breadth-first, so the shortest chain), as in
/// bipartite b-matching. If no chain exists, p takes its best eligible node over capacity and
/// [`rebalance`] restores the balance afterwards.
fn augment(
    p: usize,
    order_for_p: &[u16],
    slots: &mut [Vec<u16>],
    caps: &mut Caps,
    eligible: &Eligible<'_>,
) {
    let m = caps.count.len();
    // parent[x] = (previous node, partition x takes over from it); None for the chain's first node.
    let mut parent: Vec<Option<(u16, usize)>> = vec![None; m];
    let mut seen = vec![false; m];
    let mut queue = VecDeque::new();
    for &i in order_for_p {
        if eligible(slots, p, i) {
            seen[usize::from(i)] = true;
            queue.push_back(i);
        }
    }
    while let Some(x) = queue.pop_front() {
        let xu = usize::from(x);
        if caps.has_room(xu) {
            // Walk back: each node takes the partition its predecessor gives up.
            caps.take(xu);
            let mut cur = x;
            loop {
                match parent[usize::from(cur)] {
                    Some((prev, part)) => {
                        for s in slots[part].iter_mut() {
                            if *s == prev {
                                *s = cur;
                            }
                        }
                        cur = prev;
                    }
                    None => {
                        slots[p].push(cur);
                        return;
                    }
                }
            }
        }
        let held: Vec<usize> = (0..slots.len()).filter(|&part| slots[part].contains(&x)).collect();
        for part in held {
            for y in 0..m {
                let yi = y as u16;
                if !seen[y] && eligible(slots, part, yi) {
                    seen[y] = true;
                    parent[y] = Some((x, part));
                    queue.push_back(yi);
                }
            }
        }
    }
    if let Some(&best) = order_for_p.iter().find(|&&i| eligible(slots, p, i)) {
        slots[p].push(best);
        caps.take(usize::from(best));
    }
}

/// Restores the floor/ceil balance when the greedy pass and [`augment`] left a node outside it.
///
/// The caps bound each node from above only, and only `extra` nodes may go over the floor; the
/// greedy order can spend those extra slots so that the last stranded partition finds no chain
/// to a node with room, and `augment` then overfills one node while another stays under the
/// floor (seen for 24 members, Q=32, N=2: a node with no primary). A balanced assignment always
/// exists (Hall's condition holds for the floors and the ceilings, see below), so this moves one
/// slot at a time along an alternating chain: the node under its bound takes a partition from
/// a node that holds it, that node takes one from another, and so on until a node with a slot to
/// spare gives one up (breadth-first from the needy node, so the shortest chain). Nothing moves
/// when the assignment is already balanced, so rings that were balanced keep their placement.
///
/// Why a balanced assignment exists, for the primary pass: every node holds at least
/// floor(QN/m) >= N·floor(Q/m) partitions and each partition has N holders, so any k nodes
/// together hold at least k·floor(Q/m) distinct partitions (Hall for the floors); the same count
/// with ceilings bounds any group of partitions by its holders' capacity.
fn rebalance(slots: &mut [Vec<u16>], caps: &mut Caps, eligible: &Eligible<'_>) {
    let m = caps.count.len();
    let lo = caps.floor;
    let hi = caps.floor + usize::from(caps.extra > 0);
    // Every round moves one slot towards balance; bound the rounds anyway.
    for _ in 0..slots.len().saturating_mul(m) {
        let under = (0..m).find(|&i| caps.count[i] < lo);
        let over = (0..m).any(|i| caps.count[i] > hi);
        // The receiver and the least count a node must have to give a slot up.
        let (receiver, spare_from) = match (under, over) {
            (Some(r), _) => (r, lo + 1),
            (None, true) => match (0..m).find(|&i| caps.count[i] == lo) {
                Some(r) => (r, hi + 1),
                None => return,
            },
            (None, false) => return,
        };
        // parent[y] = (x, part): y gives `part` to x in the chain.
        let mut parent: Vec<Option<(usize, usize)>> = vec![None; m];
        let mut seen = vec![false; m];
        seen[receiver] = true;
        let mut queue = VecDeque::from([receiver]);
        let mut source = None;
        'search: while let Some(x) = queue.pop_front() {
            // x < m <= MAX_MEMBERS, so it fits in u16.
            let xi = x as u16;
            for part in 0..slots.len() {
                if !eligible(slots, part, xi) {
                    continue;
                }
                for &y in &slots[part] {
                    let yu = usize::from(y);
                    if seen[yu] {
                        continue;
                    }
                    seen[yu] = true;
                    parent[yu] = Some((x, part));
                    if caps.count[yu] >= spare_from {
                        source = Some(yu);
                        break 'search;
                    }
                    queue.push_back(yu);
                }
            }
        }
        let Some(source) = source else { return };
        // Walk back from the source: each node hands its partition to its predecessor.
        let mut cur = source;
        while let Some((x, part)) = parent[cur] {
            for s in slots[part].iter_mut() {
                if usize::from(*s) == cur {
                    *s = x as u16;
                }
            }
            cur = x;
        }
        caps.count[source] -= 1;
        caps.count[receiver] += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(n: usize) -> Vec<NodeId> {
        (1..=n).map(|i| NodeId::new(format!("n{i}")).unwrap()).collect()
    }

    #[test]
    fn rejects_bad_parameters() {
        assert!(Ring::new(&[], 256, 3).is_err());
        assert!(Ring::new(&ids(3), 100, 3).is_err());
        assert!(Ring::new(&ids(3), 0, 3).is_err());
        assert!(Ring::new(&ids(3), 256, 0).is_err());
        assert!(Ring::new(&ids(3), MAX_PARTITIONS * 2, 3).is_err());
    }

    #[test]
    fn fewer_members_than_n_gives_every_member() {
        let r = Ring::new(&ids(2), 64, 3).unwrap();
        assert_eq!(r.n(), 2);
        for p in 0..64 {
            let mut l = r.preference_list(p).to_vec();
            l.sort();
            assert_eq!(l, ids(2));
        }
        let single = Ring::new(&ids(1), 1, 3).unwrap();
        assert_eq!(single.partition_of(u64::MAX), 0);
        assert_eq!(single.preference_list(0), &ids(1)[..]);
    }

    #[test]
    fn partition_of_uses_top_bits() {
        let r = Ring::new(&ids(3), 256, 3).unwrap();
        assert_eq!(r.partition_of(0), 0);
        assert_eq!(r.partition_of(u64::MAX), 255);
        assert_eq!(r.partition_of(1 << 56), 1);
    }
}
