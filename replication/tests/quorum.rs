//! Quorum tables: every combination of replies, failures and timeouts for N=3, R/W in 1..=3,
//! with and without unreachable owners, checked against the rules a user is promised:
//! success exactly when W (R) replicas answered, failure as soon as that became impossible, the
//! right replica lists and hints, and read repair for exactly the stale replicas.
#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, BTreeSet};

use cairn_replication::{
    Actor, Hint, NodeId, Outcome, ReadCoordinator, SiblingSet, VersionVector, WriteCoordinator,
};

fn node(n: &str) -> NodeId {
    NodeId::new(n).unwrap()
}

fn nodes(list: &[&str]) -> Vec<NodeId> {
    list.iter().map(|n| node(n)).collect()
}

fn extended() -> Vec<NodeId> {
    nodes(&["n1", "n2", "n3", "n4", "n5"])
}

fn hint(owner: &str, holder: &str) -> Hint {
    Hint { owner: node(owner), holder: node(holder) }
}

/// (unreachable nodes, expected targets, expected hints as (holder, owner)).
type Scenario = (Vec<&'static str>, Vec<&'static str>, Vec<(&'static str, &'static str)>);

fn scenarios() -> Vec<Scenario> {
    vec![
        (vec![], vec!["n1", "n2", "n3"], vec![]),
        (vec!["n1"], vec!["n2", "n3", "n4"], vec![("n4", "n1")]),
        (vec!["n2"], vec!["n1", "n3", "n4"], vec![("n4", "n2")]),
        (vec!["n3"], vec!["n1", "n2", "n4"], vec![("n4", "n3")]),
        (vec!["n1", "n2"], vec!["n3", "n4", "n5"], vec![("n4", "n1"), ("n5", "n2")]),
        (vec!["n1", "n3"], vec!["n2", "n4", "n5"], vec![("n4", "n1"), ("n5", "n3")]),
        (vec!["n2", "n3"], vec!["n1", "n4", "n5"], vec![("n4", "n2"), ("n5", "n3")]),
        // Fewer reachable nodes than N: the last owner has no stand-in.
        (vec!["n1", "n2", "n3"], vec!["n4", "n5"], vec![("n4", "n1"), ("n5", "n2")]),
        // An unreachable fallback is skipped too.
        (vec!["n2", "n4"], vec!["n1", "n3", "n5"], vec![("n5", "n2")]),
        (vec!["n1", "n2", "n3", "n4"], vec!["n5"], vec![("n5", "n1")]),
    ]
}

fn reachable(unreachable: &[&str]) -> BTreeSet<NodeId> {
    extended().into_iter().filter(|n| !unreachable.contains(&n.as_str())).collect()
}

/// All orderings of `items`.
fn permutations<T: Clone>(items: &[T]) -> Vec<Vec<T>> {
    if items.len() <= 1 {
        return vec![items.to_vec()];
    }
    let mut out = Vec::new();
    for i in 0..items.len() {
        let mut rest = items.to_vec();
        let head = rest.remove(i);
        for mut p in permutations(&rest) {
            p.insert(0, head.clone());
            out.push(p);
        }
    }
    out
}

/// All assignments of `k` choices to `len` positions.
fn assignments(len: usize, k: usize) -> Vec<Vec<usize>> {
    let mut out = vec![vec![]];
    for _ in 0..len {
        out = out
            .into_iter()
            .flat_map(|a| {
                (0..k).map(move |c| {
                    let mut b = a.clone();
                    b.push(c);
                    b
                })
            })
            .collect();
    }
    out
}

fn vv(i: u64) -> VersionVector {
    [(Actor::new(node("n1"), 1), i)].into_iter().collect()
}

#[test]
fn targets_and_hints_table() {
    for (down, targets, hints) in scenarios() {
        let local = node(targets[0]);
        let w = WriteCoordinator::new(&extended(), &reachable(&down), 3, 1, &local).unwrap();
        let got: Vec<&str> = w.targets().iter().map(|t| t.node.as_str()).collect();
        assert_eq!(got, targets, "targets with {down:?} down");
        let got_hints: Vec<(&str, &str)> = w
            .targets()
            .iter()
            .filter_map(|t| t.hint_for.as_ref().map(|o| (t.node.as_str(), o.as_str())))
            .collect();
        assert_eq!(got_hints, hints, "hints with {down:?} down");
        assert_eq!(w.pref_list(), &nodes(&["n1", "n2", "n3"])[..]);
    }
}

#[test]
fn a_non_target_cannot_coordinate_a_write_and_quorums_are_validated() {
    let all = reachable(&[]);
    assert!(WriteCoordinator::new(&extended(), &all, 3, 2, &node("n5")).is_err());
    assert!(WriteCoordinator::new(&extended(), &all, 3, 0, &node("n1")).is_err());
    assert!(WriteCoordinator::new(&extended(), &all, 3, 4, &node("n1")).is_err());
    assert!(ReadCoordinator::<u32>::new(&extended(), &all, 3, 4, &node("n5")).is_err());
    // Any node can coordinate a read.
    assert!(ReadCoordinator::<u32>::new(&extended(), &all, 3, 2, &node("n5")).is_ok());
    // The local node counts as reachable even if the detector's set omits it.
    let w = WriteCoordinator::new(&extended(), &reachable(&["n1"]), 3, 2, &node("n1")).unwrap();
    assert_eq!(w.targets()[0].node, node("n1"));
}

const ACK: usize = 0;
const FAIL: usize = 1;
const SILENT: usize = 2;

#[test]
fn every_write_reply_combination() {
    let mut runs = 0;
    for (down, targets, hints) in scenarios() {
        let reach = reachable(&down);
        let local = node(targets[0]);
        for w in 1..=3usize {
            for replies in assignments(targets.len(), 3) {
                let speaking: Vec<usize> =
                    (0..targets.len()).filter(|&i| replies[i] != SILENT).collect();
                for order in permutations(&speaking) {
                    runs += 1;
                    let mut c = WriteCoordinator::new(&extended(), &reach, 3, w, &local).unwrap();
                    let ctx = format!("down={down:?} w={w} replies={replies:?} order={order:?}");
                    let (mut acks, mut pending) = (0, targets.len());
                    let mut decided: Option<bool> = None;
                    let check = |c: &WriteCoordinator,
                                 acks: usize,
                                 pending: usize,
                                 decided: &mut Option<bool>| {
                        let expect = if acks >= w {
                            Some(true)
                        } else if acks + pending < w {
                            Some(false)
                        } else {
                            None
                        };
                        let got = match c.outcome() {
                            Outcome::Pending => None,
                            Outcome::Succeeded(r) => {
                                assert!(r.quorum_reached);
                                Some(true)
                            }
                            Outcome::Failed(r) => {
                                assert!(!r.quorum_reached);
                                Some(false)
                            }
                        };
                        assert_eq!(got, expect, "{ctx}: acks={acks} pending={pending}");
                        if let Some(d) = *decided {
                            assert_eq!(got, Some(d), "{ctx}: decision flipped");
                        }
                        *decided = got;
                    };
                    check(&c, acks, pending, &mut decided);
                    let mut acked = Vec::new();
                    for &i in &order {
                        let n = node(targets[i]);
                        if replies[i] == ACK {
                            assert!(c.on_ack(&n, vv(7)));
                            assert!(!c.on_ack(&n, vv(7)), "duplicate ack accepted");
                            acks += 1;
                            acked.push(n);
                        } else {
                            assert!(c.on_failure(&n));
                        }
                        pending -= 1;
                        check(&c, acks, pending, &mut decided);
                    }
                    c.on_timeout();
                    check(&c, acks, 0, &mut decided);
                    // Late replies after the timeout are ignored.
                    for (i, &r) in replies.iter().enumerate() {
                        if r == SILENT {
                            assert!(!c.on_ack(&node(targets[i]), vv(7)));
                        }
                    }
                    let report = c.report();
                    assert_eq!(report.replicas_written, acked, "{ctx}");
                    let exp_failed: Vec<NodeId> = (0..targets.len())
                        .filter(|&i| replies[i] == FAIL)
                        .map(|i| node(targets[i]))
                        .collect();
                    let exp_silent: Vec<NodeId> = (0..targets.len())
                        .filter(|&i| replies[i] == SILENT)
                        .map(|i| node(targets[i]))
                        .collect();
                    assert_eq!(report.failed, exp_failed, "{ctx}");
                    assert_eq!(report.timed_out, exp_silent, "{ctx}");
                    let exp_hints: Vec<Hint> = hints
                        .iter()
                        .filter(|(holder, _)| acked.contains(&node(holder)))
                        .map(|(holder, owner)| hint(owner, holder))
                        .collect();
                    assert_eq!(report.hinted, exp_hints, "{ctx}");
                    let clock_nodes: Vec<NodeId> = report.vector_clocks.keys().cloned().collect();
                    let mut sorted = acked.clone();
                    sorted.sort();
                    assert_eq!(clock_nodes, sorted, "{ctx}");
                }
            }
        }
    }
    println!("write runs: {runs}");
    assert!(runs > 1000, "only {runs} runs");
}

// Read replies.
const FRESH: usize = 0;
const STALE: usize = 1;
const CONCURRENT: usize = 2;
const NOT_FOUND: usize = 3;
const RFAIL: usize = 4;
const RSILENT: usize = 5;

#[test]
fn every_read_reply_combination() {
    let a1 = Actor::new(node("n1"), 1);
    let a2 = Actor::new(node("n2"), 1);
    let mut stale = SiblingSet::<u32>::new();
    stale.update(&VersionVector::new(), 1, &a1);
    let mut fresh = stale.clone();
    fresh.update(&stale.join(), 2, &a1);
    let mut concurrent = stale.clone();
    concurrent.update(&stale.join(), 3, &a2);
    let set_for = |r: usize| match r {
        FRESH => Some(fresh.clone()),
        STALE => Some(stale.clone()),
        CONCURRENT => Some(concurrent.clone()),
        _ => None,
    };
    let mut runs = 0;
    for (down, targets, hints) in scenarios() {
        let reach = reachable(&down);
        for r in 1..=3usize {
            for replies in assignments(targets.len(), 6) {
                let speaking: Vec<usize> =
                    (0..targets.len()).filter(|&i| replies[i] != RSILENT).collect();
                for order in permutations(&speaking) {
                    runs += 1;
                    let ctx = format!("down={down:?} r={r} replies={replies:?} order={order:?}");
                    let mut c = ReadCoordinator::<u32>::new(&extended(), &reach, 3, r, &node("n5"))
                        .unwrap();
                    let (mut got_replies, mut pending) = (0, targets.len());
                    let mut decided: Option<bool> = None;
                    let mut read = Vec::new();
                    for &i in &order {
                        let n = node(targets[i]);
                        if replies[i] == RFAIL {
                            assert!(c.on_failure(&n));
                        } else {
                            assert!(c.on_reply(&n, set_for(replies[i])));
                            got_replies += 1;
                            read.push(n);
                        }
                        pending -= 1;
                        let expect = if got_replies >= r {
                            Some(true)
                        } else if got_replies + pending < r {
                            Some(false)
                        } else {
                            None
                        };
                        let got = match c.outcome() {
                            Outcome::Pending => None,
                            Outcome::Succeeded(_) => Some(true),
                            Outcome::Failed(_) => Some(false),
                        };
                        assert_eq!(got, expect, "{ctx}");
                        if let Some(d) = decided {
                            assert_eq!(got, Some(d), "{ctx}: decision flipped");
                        }
                        decided = got;
                    }
                    c.on_timeout();
                    let final_ok = got_replies >= r;
                    assert_eq!(matches!(c.outcome(), Outcome::Succeeded(_)), final_ok, "{ctx}");
                    assert_eq!(matches!(c.outcome(), Outcome::Failed(_)), !final_ok, "{ctx}");

                    // The merge and the repairs.
                    let answered: Vec<usize> =
                        order.iter().map(|&i| replies[i]).filter(|&x| x < RFAIL).collect();
                    let has = |k: usize| answered.contains(&k);
                    let mut values: Vec<u32> = c.merged().values().copied().collect();
                    values.sort();
                    let exp_values: Vec<u32> = match (has(FRESH), has(CONCURRENT), has(STALE)) {
                        (true, true, _) => vec![2, 3],
                        (true, false, _) => vec![2],
                        (false, true, _) => vec![3],
                        (false, false, true) => vec![1],
                        _ => vec![],
                    };
                    assert_eq!(values, exp_values, "{ctx}");
                    let any_found = has(FRESH) || has(CONCURRENT) || has(STALE);
                    let exp_repairs: Vec<NodeId> = (0..targets.len())
                        .filter(|&i| match replies[i] {
                            FRESH => has(CONCURRENT),
                            CONCURRENT => has(FRESH),
                            STALE => has(FRESH) || has(CONCURRENT),
                            NOT_FOUND => any_found,
                            _ => false,
                        })
                        .map(|i| node(targets[i]))
                        .collect();
                    let repairs = c.repairs();
                    let got_repairs: Vec<NodeId> = repairs.iter().map(|t| t.node.clone()).collect();
                    assert_eq!(got_repairs, exp_repairs, "{ctx}");
                    // A repaired fallback keeps the data under its hint.
                    for t in &repairs {
                        let exp_owner =
                            hints.iter().find(|(h, _)| *h == t.node.as_str()).map(|(_, o)| node(o));
                        assert_eq!(t.hint_for, exp_owner, "{ctx}");
                    }
                    let report = c.report();
                    assert_eq!(report.replicas_read, read, "{ctx}");
                    assert_eq!(report.read_repair, got_repairs, "{ctx}");
                    let exp_nf: Vec<NodeId> = read
                        .iter()
                        .filter(|n| {
                            replies[targets.iter().position(|t| *t == n.as_str()).unwrap()]
                                == NOT_FOUND
                        })
                        .cloned()
                        .collect();
                    assert_eq!(report.not_found, exp_nf, "{ctx}");
                    // Repairing makes every repaired replica cover the merge.
                    for t in &repairs {
                        let i = targets.iter().position(|x| *x == t.node.as_str()).unwrap();
                        let mut s = set_for(replies[i]).unwrap_or_default();
                        s.merge(c.merged());
                        assert!(s.covers(c.merged()));
                    }
                }
            }
        }
    }
    println!("read runs: {runs}");
    assert!(runs > 10_000, "only {runs} runs");
}

/// A readable golden table of typical cases (the exhaustive tests above cover the rest).
#[test]
fn golden_write_cases() {
    struct Case {
        down: &'static [&'static str],
        w: usize,
        /// (node, true = ack / false = failure), in arrival order; then the timeout fires.
        events: &'static [(&'static str, bool)],
        ok: bool,
        written: &'static [&'static str],
        hinted: &'static [(&'static str, &'static str)],
    }
    let cases = [
        // All up, W=2: succeeds at the second ack; the third is reported too.
        Case {
            down: &[],
            w: 2,
            events: &[("n1", true), ("n2", true), ("n3", true)],
            ok: true,
            written: &["n1", "n2", "n3"],
            hinted: &[],
        },
        // n2 down: n4 stands in for it and its ack counts towards W.
        Case {
            down: &["n2"],
            w: 2,
            events: &[("n1", true), ("n4", true)],
            ok: true,
            written: &["n1", "n4"],
            hinted: &[("n2", "n4")],
        },
        // n2 down, W=3, n3 times out: 2 of 3, failure, reported with what was written.
        Case {
            down: &["n2"],
            w: 3,
            events: &[("n1", true), ("n4", true)],
            ok: false,
            written: &["n1", "n4"],
            hinted: &[("n2", "n4")],
        },
        // Two failures with W=2: failed as soon as the second failure arrives.
        Case {
            down: &[],
            w: 2,
            events: &[("n2", false), ("n1", true), ("n3", false)],
            ok: false,
            written: &["n1"],
            hinted: &[],
        },
        // Only the coordinator left among owners, W=1: success with two hints.
        Case {
            down: &["n2", "n3"],
            w: 1,
            events: &[("n1", true), ("n5", true)],
            ok: true,
            written: &["n1", "n5"],
            hinted: &[("n3", "n5")],
        },
    ];
    for (k, case) in cases.iter().enumerate() {
        let reach = reachable(case.down);
        let local = node(case.events[0].0);
        let mut c = WriteCoordinator::new(&extended(), &reach, 3, case.w, &local).unwrap();
        for (n, ack) in case.events {
            if *ack {
                c.on_ack(&node(n), vv(1));
            } else {
                c.on_failure(&node(n));
            }
        }
        c.on_timeout();
        let (ok, report) = match c.outcome() {
            Outcome::Succeeded(r) => (true, r),
            Outcome::Failed(r) => (false, r),
            Outcome::Pending => panic!("case {k}: still pending after the timeout"),
        };
        assert_eq!(ok, case.ok, "case {k}");
        assert_eq!(report.replicas_written, nodes(case.written), "case {k}");
        let hinted: Vec<Hint> = case.hinted.iter().map(|(o, h)| hint(o, h)).collect();
        assert_eq!(report.hinted, hinted, "case {k}");
        // The report serialises to the JSON shape the API returns.
        let json = serde_json_string(&report);
        assert!(json.contains("\"replicas_written\""), "case {k}: {json}");
    }
}

fn serde_json_string<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_string(v).unwrap()
}

#[test]
fn vector_clocks_render_per_replica() {
    let reach = reachable(&[]);
    let mut c = WriteCoordinator::new(&extended(), &reach, 3, 2, &node("n1")).unwrap();
    c.on_ack(&node("n1"), vv(15));
    c.on_ack(&node("n3"), vv(14));
    let Outcome::Succeeded(r) = c.outcome() else { panic!("not succeeded") };
    let expected: BTreeMap<NodeId, VersionVector> =
        [(node("n1"), vv(15)), (node("n3"), vv(14))].into_iter().collect();
    assert_eq!(r.vector_clocks, expected);
    assert_eq!(c.pending(), vec![node("n2")]);
    // The JSON shape of the API answer: clocks keyed by replica, then by actor.
    let json = serde_json::to_value(&r).unwrap();
    assert_eq!(json["vector_clocks"], serde_json::json!({"n1": {"n1#1": 15}, "n3": {"n1#1": 14}}));
    assert_eq!(json["replicas_written"], serde_json::json!(["n1", "n3"]));
    let outcome = serde_json::to_value(c.outcome()).unwrap();
    assert_eq!(outcome["status"], "succeeded");
}

/// A read that asks R targets first (`start`), with replacements after failures and the rest
/// on the caller's speculative timer: the coordinator asks the local replica first, never counts
/// a reply from a target it did not ask, asks exactly enough replacements, and reports only the
/// targets it asked.
#[test]
fn held_back_read_targets() {
    let a1 = Actor::new(node("n1"), 1);
    let mut set = SiblingSet::<u32>::new();
    set.update(&VersionVector::new(), 7, &a1);
    let all = reachable(&[]);
    let names = |ts: &[cairn_replication::quorum::Target]| {
        ts.iter().map(|t| t.node.to_string()).collect::<Vec<_>>()
    };

    // Coordinator n2 holds a replica: it asks itself, then the first other owner.
    let mut c = ReadCoordinator::<u32>::new(&extended(), &all, 3, 2, &node("n2")).unwrap();
    assert_eq!(names(&c.start(2, &node("n2"))), ["n2", "n1"]);
    assert!(!c.on_reply(&node("n3"), Some(set.clone())), "n3 was not asked");
    assert!(c.on_reply(&node("n2"), Some(set.clone())));
    assert!(c.on_reply(&node("n1"), None));
    let report = match c.outcome() {
        Outcome::Succeeded(r) => r,
        other => panic!("expected success, got {other:?}"),
    };
    assert_eq!(names(&report.targets), ["n1", "n2"], "only asked targets are reported");
    assert_eq!(report.read_repair, nodes(&["n1"]));

    // A failure brings in exactly one replacement; a second failure makes R impossible.
    let mut c = ReadCoordinator::<u32>::new(&extended(), &all, 3, 2, &node("n5")).unwrap();
    assert_eq!(names(&c.start(2, &node("n5"))), ["n1", "n2"], "n5 is no target: plan order");
    assert!(c.on_failure(&node("n1")));
    assert!(matches!(c.outcome(), Outcome::Pending), "n3 can still be asked");
    assert_eq!(names(&c.replacements()), ["n3"]);
    assert!(c.replacements().is_empty(), "enough targets are asked again");
    assert!(c.on_failure(&node("n3")));
    assert!(matches!(c.outcome(), Outcome::Failed(_)));

    // The speculative timer: the rest is asked, and the first R replies decide.
    let mut c = ReadCoordinator::<u32>::new(&extended(), &all, 3, 2, &node("n1")).unwrap();
    assert_eq!(c.start(2, &node("n1")).len(), 2);
    assert_eq!(names(&c.ask_rest()), ["n3"]);
    assert!(c.ask_rest().is_empty());
    assert!(c.on_reply(&node("n3"), Some(set.clone())));
    assert!(c.on_reply(&node("n1"), Some(set.clone())));
    assert!(matches!(c.outcome(), Outcome::Succeeded(_)));

    // The timer of the whole read: held-back targets are neither timed out nor awaited.
    let mut c = ReadCoordinator::<u32>::new(&extended(), &all, 3, 2, &node("n1")).unwrap();
    c.start(2, &node("n1"));
    assert!(c.on_reply(&node("n1"), Some(set.clone())));
    c.on_timeout();
    match c.outcome() {
        Outcome::Failed(r) => {
            assert_eq!(r.timed_out, nodes(&["n2"]));
            assert_eq!(names(&r.targets), ["n1", "n2"]);
        }
        other => panic!("expected failure, got {other:?}"),
    }
    assert!(c.ask_rest().is_empty(), "nothing is asked after the timeout");

    // Fewer reachable targets than R: everyone reachable is asked, and the read fails cleanly.
    let lonely = reachable(&["n2", "n3", "n4", "n5"]);
    let mut c = ReadCoordinator::<u32>::new(&extended(), &lonely, 3, 2, &node("n1")).unwrap();
    assert_eq!(names(&c.start(2, &node("n1"))), ["n1"]);
    assert!(c.on_reply(&node("n1"), Some(set.clone())));
    assert!(matches!(c.outcome(), Outcome::Failed(_)));

    // A fan-out of N (or more) asks everyone, as Dynamo does.
    let mut c = ReadCoordinator::<u32>::new(&extended(), &all, 3, 2, &node("n3")).unwrap();
    assert_eq!(names(&c.start(5, &node("n3"))), ["n3", "n1", "n2"]);
}
