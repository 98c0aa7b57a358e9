//! Property tests of DVV sets (the laws replicas rely on to converge without losing writes) and of
//! the context token.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeSet;

use cairn_replication::{Actor, Context, Dot, Meta, NodeId, Sibling, SiblingSet, VersionVector};
use proptest::prelude::*;

const REPLICAS: usize = 3;

fn actor(i: usize) -> Actor {
    Actor::new(NodeId::new(format!("n{i}")).unwrap(), 7)
}

/// One step of a random history over `REPLICAS` replicas of one key.
#[derive(Debug, Clone)]
enum Op {
    /// Replica `at` coordinates a write whose client read replica `ctx_from` (or nothing).
    Write { at: usize, ctx_from: Option<usize> },
    /// Replica `to` merges replica `from`'s set.
    Sync { from: usize, to: usize },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (0..REPLICAS, proptest::option::of(0..REPLICAS))
            .prop_map(|(at, ctx_from)| Op::Write { at, ctx_from }),
        (0..REPLICAS, 0..REPLICAS).prop_map(|(from, to)| Op::Sync { from, to }),
    ]
}

/// Result of running a history: the replicas' sets, every write's dot, and every context used.
struct Run {
    sets: Vec<SiblingSet<u32>>,
    dots: Vec<Dot>,
    contexts: Vec<VersionVector>,
}

fn run(ops: &[Op]) -> Run {
    let mut sets = vec![SiblingSet::<u32>::new(); REPLICAS];
    let mut dots = Vec::new();
    let mut contexts = Vec::new();
    for (v, op) in ops.iter().enumerate() {
        match *op {
            Op::Write { at, ctx_from } => {
                let ctx = ctx_from.map(|r| sets[r].join()).unwrap_or_default();
                let dot = sets[at].update(&ctx, v as u32, &actor(at));
                dots.push(dot);
                contexts.push(ctx);
            }
            Op::Sync { from, to } => {
                let src = sets[from].clone();
                sets[to].merge(&src);
            }
        }
    }
    Run { sets, dots, contexts }
}

fn merged(sets: &[SiblingSet<u32>]) -> SiblingSet<u32> {
    sets.iter().fold(SiblingSet::new(), |acc, s| SiblingSet::sync(&acc, s))
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn sync_is_commutative_associative_idempotent(ops in prop::collection::vec(op(), 0..40)) {
        let Run { sets, .. } = run(&ops);
        let (a, b, c) = (&sets[0], &sets[1], &sets[2]);
        prop_assert_eq!(SiblingSet::sync(a, b), SiblingSet::sync(b, a));
        prop_assert_eq!(
            SiblingSet::sync(&SiblingSet::sync(a, b), c),
            SiblingSet::sync(a, &SiblingSet::sync(b, c))
        );
        prop_assert_eq!(SiblingSet::sync(a, a), a.clone());
        let ab = SiblingSet::sync(a, b);
        prop_assert!(ab.covers(a) && ab.covers(b));
        // Encoding round-trips every reachable state.
        prop_assert_eq!(SiblingSet::<u32>::from_bytes(&ab.to_bytes().unwrap()).unwrap(), ab);
    }

    #[test]
    fn a_covering_context_leaves_exactly_one_sibling(ops in prop::collection::vec(op(), 0..40), at in 0..REPLICAS) {
        let Run { mut sets, .. } = run(&ops);
        let all = merged(&sets);
        // The client read the merge of every replica; the coordinator may be any replica.
        sets[at].update(&all.join(), 999, &actor(at));
        prop_assert_eq!(sets[at].values().copied().collect::<Vec<_>>(), vec![999]);
        // And once the others learn it, every replica converges to that one value.
        let m = merged(&sets);
        prop_assert_eq!(m.values().copied().collect::<Vec<_>>(), vec![999]);
    }

    #[test]
    fn no_value_is_lost_unless_a_later_context_covered_it(ops in prop::collection::vec(op(), 0..60)) {
        let Run { sets, dots, contexts } = run(&ops);
        let m = merged(&sets);
        let live: BTreeSet<Dot> = m.siblings().iter().map(|s| s.dot.clone()).collect();
        for (i, dot) in dots.iter().enumerate() {
            let covered = contexts.iter().any(|c| c.contains(dot));
            prop_assert!(
                live.contains(dot) || covered,
                "write {i} ({dot}) vanished though no context covered it"
            );
            // Conversely a value some context covered is gone from the full merge.
            if covered {
                prop_assert!(!live.contains(dot), "covered write {dot} still live");
            }
        }
    }

    #[test]
    fn concurrent_writes_without_context_are_all_kept(
        ops in prop::collection::vec(op(), 0..30),
        writers in prop::collection::vec(0..REPLICAS, 1..8),
    ) {
        let Run { mut sets, .. } = run(&ops);
        let before: BTreeSet<Dot> = merged(&sets).siblings().iter().map(|s| s.dot.clone()).collect();
        let mut new = BTreeSet::new();
        for (k, &at) in writers.iter().enumerate() {
            new.insert(sets[at].update(&VersionVector::new(), 1000 + k as u32, &actor(at)));
        }
        let m = merged(&sets);
        let live: BTreeSet<Dot> = m.siblings().iter().map(|s| s.dot.clone()).collect();
        prop_assert!(new.is_subset(&live), "a blind write was dropped");
        prop_assert!(before.is_subset(&live), "a blind write removed an existing value");
        prop_assert_eq!(live.len(), before.len() + writers.len());
    }

    /// Clients that always write with the context their previous write returned (plus whatever
    /// they read): siblings on any replica never exceed the number of clients.
    #[test]
    fn siblings_never_exceed_concurrent_writers(
        clients in 1usize..6,
        steps in prop::collection::vec((0usize..6, 0..REPLICAS, 0..REPLICAS, any::<bool>()), 1..80),
    ) {
        let mut sets = vec![SiblingSet::<u32>::new(); REPLICAS];
        let mut ctx = vec![VersionVector::new(); clients];
        for (v, (c, at, other, read_first)) in steps.into_iter().enumerate() {
            let c = c % clients;
            if read_first {
                ctx[c].merge(&sets[other].join());
            }
            sets[at].update(&ctx[c], v as u32, &actor(at));
            ctx[c] = sets[at].join();
            // Background replication.
            let src = sets[at].clone();
            sets[other].merge(&src);
            for s in &sets {
                prop_assert!(s.len() <= clients, "{} siblings with {clients} clients", s.len());
            }
        }
        prop_assert!(merged(&sets).len() <= clients);
    }

    #[test]
    fn context_tokens_round_trip(entries in prop::collection::btree_map(("[a-z0-9_-]{1,12}", any::<u32>()), 1u64.., 0..20)) {
        let vv: VersionVector = entries
            .into_iter()
            .map(|((n, e), c)| (Actor::new(NodeId::new(n).unwrap(), e), c))
            .collect();
        let token = Context(vv.clone()).to_token();
        prop_assert_eq!(Context::from_token(&token).unwrap().0, vv);
    }

    #[test]
    fn random_tokens_and_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..300), text in ".{0,200}") {
        use base64::Engine as _;
        let token = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&bytes);
        // A clean result either way (no panic); anything not starting as a msgpack map is an error.
        let parsed = Context::from_token(&token);
        let map_marker = matches!(bytes.first(), Some(0x80..=0x8f | 0xde | 0xdf));
        if !bytes.is_empty() && !map_marker {
            prop_assert!(parsed.is_err());
        }
        let _ = Context::from_token(&text);
        // Random bytes as a stored sibling set: an error (a valid encoding needs a 2-field
        // struct whose dots lie in its history; random bytes of that shape are vanishingly rare).
        if !matches!(bytes.first(), Some(0x82 | 0x92 | 0xdc | 0xde)) {
            prop_assert!(SiblingSet::<u32>::from_bytes(&bytes).is_err());
        }
        let _ = SiblingSet::<cairn_replication::Sibling>::from_bytes(&bytes);
    }
}

#[test]
fn oversized_and_garbage_tokens_are_clean_errors() {
    let huge: VersionVector = (0..400).map(|i| (actor(i), u64::MAX)).collect();
    let token = Context(huge).to_token();
    assert!(token.len() > cairn_replication::context::MAX_TOKEN_LEN);
    assert!(Context::from_token(&token).unwrap_err().is_client_error());
    for bad in ["%%%", "g", "gaJuMSM3/w", "wA", "kZA"] {
        assert!(Context::from_token(bad).is_err(), "{bad} accepted");
    }
}

/// One step of a random history of file writes and deletes (see `add_wins_*` below).
#[derive(Debug, Clone)]
enum FileOp {
    /// Replica `at` coordinates a write (`delete`: a tombstone) whose client read `ctx_from`.
    Write { at: usize, ctx_from: Option<usize>, delete: bool },
    /// Replica `to` merges replica `from`'s set.
    Sync { from: usize, to: usize },
}

fn file_op() -> impl Strategy<Value = FileOp> {
    prop_oneof![
        (0..REPLICAS, proptest::option::of(0..REPLICAS), any::<bool>())
            .prop_map(|(at, ctx_from, delete)| FileOp::Write { at, ctx_from, delete }),
        (0..REPLICAS, 0..REPLICAS).prop_map(|(from, to)| FileOp::Sync { from, to }),
    ]
}

/// Runs a history with the add-wins client write (`SiblingSet::write`) or with the plain DVV
/// update; then every replica merges every other.
fn run_files(ops: &[FileOp], add_wins: bool) -> Vec<SiblingSet<Sibling>> {
    let mut sets = vec![SiblingSet::<Sibling>::new(); REPLICAS];
    for (v, op) in ops.iter().enumerate() {
        match *op {
            FileOp::Write { at, ctx_from, delete } => {
                let ctx = ctx_from.map(|r| sets[r].join()).unwrap_or_default();
                let value = if delete {
                    Sibling::tombstone(v as u64)
                } else {
                    Sibling::bytes(Meta { timestamp_ms: v as u64, ..Meta::default() }, vec![])
                };
                if add_wins {
                    sets[at].write(&ctx, value, &actor(at), usize::MAX).unwrap();
                } else {
                    sets[at].update(&ctx, value, &actor(at));
                }
            }
            FileOp::Sync { from, to } => {
                let src = sets[from].clone();
                sets[to].merge(&src);
            }
        }
    }
    sets
}

fn live_dots(s: &SiblingSet<Sibling>) -> Vec<Dot> {
    s.live().map(|d| d.dot.clone()).collect()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    /// Removing tombstones at write time never changes what a read shows: after any history the
    /// live siblings of every replica and of the full merge are those of plain DVV updates, and
    /// replicas still converge.
    #[test]
    fn add_wins_writes_show_what_plain_updates_show(ops in prop::collection::vec(file_op(), 0..40)) {
        let pruned = run_files(&ops, true);
        let plain = run_files(&ops, false);
        for (p, q) in pruned.iter().zip(&plain) {
            prop_assert_eq!(live_dots(p), live_dots(q));
            prop_assert_eq!(p.join(), q.join());
        }
        let (mp, mq) = (
            pruned.iter().fold(SiblingSet::new(), |a, s| SiblingSet::sync(&a, s)),
            plain.iter().fold(SiblingSet::new(), |a, s| SiblingSet::sync(&a, s)),
        );
        prop_assert_eq!(live_dots(&mp), live_dots(&mq));
        prop_assert_eq!(mp.is_deleted(), mq.is_deleted());
        for s in &pruned {
            prop_assert_eq!(SiblingSet::sync(s, &mp), mp.clone(), "a replica's set is below the merge");
        }
    }
}
