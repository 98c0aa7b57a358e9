//! Ring tests: balance, determinism, distinct preference lists, minimal movement, pinned hashes.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeSet;

use cairn_replication::{NodeId, Ring, key_hash};

fn ids(n: usize) -> Vec<NodeId> {
    (1..=n).map(|i| NodeId::new(format!("n{i}")).unwrap()).collect()
}

/// Checks every invariant a user relies on; returns nothing, panics with the case on failure.
fn check_invariants(ring: &Ring, q: u32, m: usize, n: usize) {
    let n_eff = n.min(m);
    for p in 0..q {
        let list = ring.preference_list(p);
        assert_eq!(list.len(), n_eff, "m={m} q={q} p={p}");
        let distinct: BTreeSet<_> = list.iter().collect();
        assert_eq!(distinct.len(), n_eff, "duplicate owner: m={m} q={q} p={p} {list:?}");
        let ext = ring.extended_preference_list(p);
        assert_eq!(&ext[..n_eff], list);
        let all: BTreeSet<_> = ext.iter().collect();
        assert_eq!(all.len(), m, "extended list must hold every member once");
    }
    let qn = q as usize;
    let (plo, phi) = (qn / m, qn.div_ceil(m));
    for (node, c) in ring.primary_counts() {
        assert!(
            c >= plo && c <= phi,
            "primary count {c} of {node} not in [{plo},{phi}] m={m} q={q}"
        );
    }
    let (rlo, rhi) = (qn * n_eff / m, (qn * n_eff).div_ceil(m));
    for (node, c) in ring.replica_counts() {
        assert!(
            c >= rlo && c <= rhi,
            "replica count {c} of {node} not in [{rlo},{rhi}] m={m} q={q}"
        );
        let owned = ring.owned_by(&node);
        assert_eq!(owned.len(), c);
        assert_eq!(owned.iter().filter(|o| o.position == 0).count(), ring.primary_counts()[&node]);
    }
}

#[test]
fn balanced_and_distinct_for_3_to_64_nodes() {
    for q in [64u32, 256, 1024] {
        for m in 3..=64 {
            let ring = Ring::new(&ids(m), q, 3).unwrap();
            check_invariants(&ring, q, m, 3);
        }
    }
}

#[test]
fn other_replication_factors() {
    for (m, n) in [(1, 1), (2, 3), (4, 1), (5, 5), (7, 2), (10, 5)] {
        let ring = Ring::new(&ids(m), 256, n).unwrap();
        check_invariants(&ring, 256, m, n);
    }
}

#[test]
fn same_ring_from_any_member_order() {
    let members = ids(7);
    let a = Ring::new(&members, 256, 3).unwrap();
    let mut rev = members.clone();
    rev.reverse();
    let mut shuffled = members.clone();
    shuffled.rotate_left(3);
    shuffled.swap(0, 5);
    let mut dup = members.clone();
    dup.extend(members.iter().take(2).cloned());
    for other in [rev, shuffled, dup] {
        assert_eq!(Ring::new(&other, 256, 3).unwrap(), a);
    }
}

#[test]
fn key_hash_is_pinned() {
    // Stored data is placed by these values: they must never change.
    let cases = [
        (("photos", 1u64, "cat.jpg"), key_hash("photos", 1, "cat.jpg")),
        (("photos", 2u64, "cat.jpg"), key_hash("photos", 2, "cat.jpg")),
    ];
    assert_ne!(cases[0].1, cases[1].1, "incarnation must change the hash");
    // Unambiguous encoding: moving bytes between bucket and name changes the hash.
    assert_ne!(key_hash("ab", 0, "c"), key_hash("a", 0, "bc"));
    assert_eq!(key_hash("photos", 1, "cat.jpg"), PINNED[0]);
    assert_eq!(key_hash("photos", 2, "cat.jpg"), PINNED[1]);
    assert_eq!(key_hash("b", 0, ""), PINNED[2]);
    let ring = Ring::new(&ids(4), 256, 3).unwrap();
    assert_eq!(ring.partition_of_key("photos", 1, "cat.jpg"), (PINNED[0] >> 56) as u32);
}

const PINNED: [u64; 3] = [0x92d6_896f_8af0_c572, 0x826a_3cef_0e31_8afd, 0xcb93_7f7d_3b01_9f85];

#[test]
fn assignment_is_pinned() {
    // Every node of a cluster, and every version of Cairn, must compute the same ring: a change
    // of the assignment moves stored data. Pin a few lists of a 5-node ring.
    let ring = Ring::new(&ids(5), 256, 3).unwrap();
    let show =
        |p: u32| ring.preference_list(p).iter().map(|n| n.as_str()).collect::<Vec<_>>().join(",");
    let got: Vec<String> = [0, 1, 128, 255].into_iter().map(show).collect();
    assert_eq!(got, PINNED_LISTS);
}

const PINNED_LISTS: [&str; 4] = ["n3,n2,n5", "n4,n1,n3", "n2,n5,n1", "n1,n4,n2"];

/// Moves one membership change and returns (moved, ideal = Q·N/m_after or Q·N/m_before).
fn movement(m_before: usize, m_after: usize, q: u32) -> (usize, usize) {
    let before = Ring::new(&ids(m_before), q, 3).unwrap();
    let after = Ring::new(&ids(m_after), q, 3).unwrap();
    let moved = after.moved_from(&before).unwrap();
    let big = m_before.max(m_after);
    (moved, (q as usize * 3).div_ceil(big))
}

#[test]
fn movement_table_on_add_and_remove() {
    let mut table = String::from("  Q  m->m'  moved  ideal  ratio\n");
    let mut worst: f64 = 0.0;
    for q in [256u32, 1024] {
        for m in [3usize, 4, 5, 6, 8, 12, 16, 24, 32, 48, 63] {
            for (from, to) in [(m, m + 1), (m + 1, m)] {
                let (moved, ideal) = movement(from, to, q);
                let ratio = moved as f64 / ideal as f64;
                worst = worst.max(ratio);
                table.push_str(&format!(
                    "{q:>4} {from:>2}->{to:<2} {moved:>6} {ideal:>6}  {ratio:.2}\n"
                ));
                assert!(moved >= ideal.saturating_sub(1), "fewer moves than possible?");
                // Regression guards on the measured figures (docs/replication.md has the table).
                let bound = if m <= 16 { 1.3 } else { MAX_MOVE_RATIO };
                assert!(ratio <= bound, "too much movement {from}->{to} Q={q}: {moved} vs {ideal}");
            }
        }
    }
    println!("{table}worst ratio {worst:.2}");
}

const MAX_MOVE_RATIO: f64 = 3.5;

/// The case CI's property test found (2026-11-25): with 24 members, Q=32 and N=2 the greedy
/// primary pass spent its extra slots so that one node was left with no primary at all.
#[test]
fn greedy_dead_end_is_rebalanced() {
    let members: Vec<NodeId> =
        (0..24).map(|i| NodeId::new(format!("k387_{i}_31")).unwrap()).collect();
    let ring = Ring::new(&members, 32, 2).unwrap();
    check_invariants(&ring, 32, 24, 2);
}

/// A deterministic sweep over many member sets, Q and N (the property test below draws only a
/// few cases per run; this one is the same every run).
#[test]
fn seeded_sweep_of_member_sets_stays_balanced() {
    let mut x: u64 = 0x1234_5678;
    for case in 0..1500u32 {
        x = x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
        let m = 1 + (x >> 33) as usize % 24;
        let q = 1u32 << ((x >> 20) as u32 % 9);
        let n = 1 + (x >> 10) as usize % 4;
        let members: Vec<NodeId> =
            (0..m).map(|i| NodeId::new(format!("s{case}_{i}")).unwrap()).collect();
        let ring = Ring::new(&members, q, n).unwrap();
        check_invariants(&ring, q, m, n);
    }
}

mod random_members {
    use super::*;
    use proptest::prelude::*;

    fn member_set() -> impl Strategy<Value = Vec<NodeId>> {
        prop::collection::btree_set("[A-Za-z0-9_-]{1,16}", 1..24)
            .prop_map(|s| s.into_iter().map(|n| NodeId::new(n).unwrap()).collect())
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

        /// Arbitrary member names, Q and N: the invariants hold and one more member moves a
        /// bounded number of replicas.
        #[test]
        fn invariants_hold_for_arbitrary_members(
            members in member_set(),
            q_bits in 0u32..9,
            n in 1usize..5,
            extra in "[a-z]{1,8}x",
        ) {
            let q = 1u32 << q_bits;
            let ring = Ring::new(&members, q, n).unwrap();
            check_invariants(&ring, q, members.len(), n);
            let mut bigger = members.clone();
            let newcomer = NodeId::new(extra).unwrap();
            prop_assume!(!bigger.contains(&newcomer));
            bigger.push(newcomer.clone());
            let after = Ring::new(&bigger, q, n).unwrap();
            check_invariants(&after, q, bigger.len(), n);
            let moved = after.moved_from(&ring).unwrap();
            // The newcomer's share must move; the rest is churn, bounded by the whole ring.
            let newcomer_share = after.replica_counts()[&newcomer];
            prop_assert!(moved >= newcomer_share);
            prop_assert!(moved <= q as usize * after.n());
        }
    }
}
