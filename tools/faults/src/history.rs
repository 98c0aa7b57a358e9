//! The operation history the clients record, the final views read after healing, and the checker.
//!
//! MODEL
//! =====
//! Every write introduces exactly one new *element*, a string unique in the whole run
//! (`c<client>.<seq>`, `L<client>.<seq>` for the large-object workload). An object's bytes are a
//! JSON array of elements (a large object's, several 1 MiB chunks long, carry that array in a
//! header line followed by a filler derived from it: see the harness's `large.rs`; the checker
//! sees only the elements): every write stores what its read saw plus its own `e` — for a
//! read-modify-write of a hot key, the union of every sibling it read (set union is the merge,
//! as in the Dynamo paper's shopping cart, DeCandia et al. 2007, section 4.4); for a unique key
//! or a re-create after a delete, nothing was live, so `[e]`. Each operation records what its
//! read *saw* (the union of the live siblings' elements, whose versions its causal context
//! covers), the element it wrote (none, for a delete) and its
//! outcome: `Ok` (acknowledged), `Failed` (certainly not applied: refused before anything was
//! stored, such as a 404 to a DELETE of a key with nothing live, or never sent) or
//! `Indeterminate` (timed out, 503, 5xx, connection lost mid-request: may or may not be applied,
//! may surface later).
//!
//! DELETES (add-wins)
//! ==================
//! The node resolves a delete against concurrent writes with the add-wins rule of the OR-set
//! (the shopping cart): a delete carrying a context removes exactly the versions that context
//! covers; a write whose version the context does not cover (concurrent with the delete, or
//! later) survives it. A read never lists a delete marker: a key whose siblings are live versions
//! and markers shows only the live versions (200, or 300 with live siblings only); markers alone
//! (or nothing) are a 404 NoSuchKey, whose context still covers the markers (the re-create
//! writes with it). A DELETE of a key with no live version answers 404 and stores nothing: the
//! client records it as `Failed`. The harness always deletes with the context of its read, so
//! what a delete removes is what its `saw` describes (a delete without context removes what the
//! node's own quorum read shows, which no `saw` records: the workload never sends one).
//!
//! Two facts carry the checks below. (1) Elements are unique per write and a version's content
//! always contains its writer's element. (2) Contents only grow along descent: a write stores
//! everything its read saw, so a version written by a write that read version `V` (or a
//! descendant of it) contains all of `V`'s content, and the only versions holding an element are
//! its writer's and their descendants. Hence a delete `D` whose `saw` holds `V`'s writer's
//! element read `V` or a version descending from it, and `D`'s context covers `V`'s dot.
//!
//! CHECKS
//! ======
//! After healing, every key is read from every node; each view is the list of live sibling
//! contents (plus any delete markers the node listed, which it must not).
//! For each key and view:
//! - **lost**: an acknowledged element is absent, and no operation that may have been applied
//!   (`Ok` or `Indeterminate`) saw it and dropped it: a delete whose context covered it (writes
//!   carry forward everything they saw). Such a drop is legitimate supersession; any other
//!   absence is a lost write. This is what the `lww` control must trip: last-writer-wins
//!   drops concurrent writes that nobody saw (and lets a later delete drop a concurrent write).
//!   Add-wins changes nothing here: a delete still removes only versions its context covers,
//!   and the elements a delete saw are excused only as elements; a write concurrent with the
//!   delete that carried them forward is checked through its own element, which the delete did
//!   not see, so if that write's version vanished its element is reported lost.
//! - **phantom**: a visible element that no operation ever wrote, or a live version with no
//!   element at all (every write stores its own element); **failed visible**: a visible
//!   element whose write was reported as certainly not applied.
//! - **resurrected**: a visible version (one live sibling, content `C`) such that some
//!   *acknowledged* delete `D` has `C ⊆ D.saw`. By (1) and (2) `D` then read that version or one
//!   descending from it, so `D`'s context covered the version's dot and no merge may bring it
//!   back. A visible version holding an element `x ∉ D.saw` is not covered by what `D` read: had
//!   `D` read the version or a descendant, `D.saw` would contain all of `C` by (2). Its writer
//!   (the writer of `x`, or a write that carried `x` forward) is concurrent with `D` or later,
//!   and its version survives by add-wins, even when it carries elements `D` saw and deleted.
//!   (A version `D`'s context covered only through a marker `D` read is not recognised: the
//!   rule can miss a resurrection, never invent one.)
//! - **markers shown**: a view listing a delete marker. Under add-wins no read shows one.
//! - **siblings**: live versions in one view must not exceed the number of truly concurrent
//!   operations: writes that may have been applied and whose element no acknowledged operation
//!   saw (the maximal writes of the causal order; an indeterminate operation may not have been
//!   applied, so what it saw may stay maximal). Deletes add nothing: their markers are never
//!   shown, and the versions that survive a delete are writes no context covered, which the
//!   bound counts already. This is the DVV bound: a version can only survive if no context
//!   covered it. It is not the number of clients: under a sloppy quorum a client's read can
//!   miss its own acknowledged write (the read and write sets need not overlap), so one
//!   client's two writes can be concurrent. Two live versions with the same content (one write
//!   stored twice, under two dots) are flagged as well.
//! - Indeterminate elements are counted as present (in any view) or absent; both are allowed.
//!
//! A view that could not be read at all is counted as *unreadable*: the run then cannot prove
//! anything about that key on that node and fails.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

/// How an operation ended, as far as its client can know.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Outcome {
    /// Acknowledged: 200.
    Ok,
    /// Certainly not applied: a 4xx refusal, or the request was never sent (connection refused).
    Failed,
    /// May or may not be applied: timeout, 503, 5xx, connection lost after sending.
    Indeterminate,
}

/// What an operation did to its key.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum OpKind {
    /// A write of the op's `saw` plus the element it introduced (`elem`).
    Write {
        /// The new element.
        elem: String,
    },
    /// A delete with the context of the read.
    Delete,
}

/// One recorded operation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Op {
    /// Client index.
    pub client: usize,
    /// Object name.
    pub key: String,
    /// Write or delete.
    pub kind: OpKind,
    /// Elements of the live siblings the operation's read returned (its context covers them).
    pub saw: BTreeSet<String>,
    /// How it ended.
    pub outcome: Outcome,
    /// Milliseconds since the run started, when the operation was sent.
    pub at_ms: u64,
}

/// One node's final view of one key.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum View {
    /// Versions found: the content of each live sibling, and the number of delete markers the
    /// node listed among the siblings (add-wins: none; a listed marker is a finding).
    Found {
        /// Elements of each live version.
        live: Vec<BTreeSet<String>>,
        /// Delete markers listed as siblings.
        delete_markers: usize,
    },
    /// 404: never written, or only delete markers left.
    NotFound,
    /// The key could not be read (error text).
    Unreadable(String),
}

/// One finding of the checker.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Finding {
    /// Object name.
    pub key: String,
    /// Node whose view showed it.
    pub node: String,
    /// The element concerned (for a resurrected version, its elements comma-separated; empty
    /// for sibling counts, markers shown and unreadable views).
    pub elem: String,
    /// What is wrong.
    pub what: String,
}

/// The checker's result.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Verdict {
    /// Keys checked.
    pub keys: usize,
    /// Acknowledged elements (each counted once).
    pub acknowledged: usize,
    /// (key, element) pairs lost, counted once even when several views miss them.
    pub lost: usize,
    /// Elements visible that were never written, and live versions with no element.
    pub phantom: usize,
    /// Elements visible whose write was reported as certainly not applied.
    pub failed_visible: usize,
    /// Visible versions (counted per view) whose whole content an acknowledged delete saw.
    pub resurrected: usize,
    /// Views listing a delete marker (add-wins reads never show one).
    pub markers_shown: usize,
    /// Views with more versions than the bound allows.
    pub sibling_excess: usize,
    /// Largest number of live versions in one view.
    pub max_versions: usize,
    /// Views that could not be read.
    pub unreadable: usize,
    /// Indeterminate writes whose element is visible in some view.
    pub indeterminate_present: usize,
    /// Indeterminate writes whose element is in no view.
    pub indeterminate_absent: usize,
    /// The findings (at most [`MAX_FINDINGS`] kept).
    pub findings: Vec<Finding>,
}

/// Findings kept in the verdict (the counts are always complete).
pub const MAX_FINDINGS: usize = 200;

impl Verdict {
    /// True when nothing was lost, nothing unexpected appeared, no view showed a delete marker
    /// or held more versions than its bound, and every view was readable.
    pub fn passed(&self) -> bool {
        self.lost == 0
            && self.phantom == 0
            && self.failed_visible == 0
            && self.resurrected == 0
            && self.markers_shown == 0
            && self.sibling_excess == 0
            && self.unreadable == 0
    }

    fn note(&mut self, key: &str, node: &str, elem: &str, what: &str) {
        if self.findings.len() < MAX_FINDINGS {
            self.findings.push(Finding {
                key: key.to_string(),
                node: node.to_string(),
                elem: elem.to_string(),
                what: what.to_string(),
            });
        }
    }
}

/// What the history says about one key.
#[derive(Default)]
struct KeyFacts {
    /// Element -> outcome of the write that introduced it.
    written: BTreeMap<String, Outcome>,
    /// Elements some possibly-applied operation saw and did not carry forward.
    dropped: BTreeSet<String>,
    /// What each acknowledged delete saw.
    acked_deletes: Vec<BTreeSet<String>>,
    /// Elements of writes that may have been applied (acknowledged or indeterminate).
    maybe_applied: BTreeSet<String>,
    /// Elements some acknowledged operation saw (so they are not maximal).
    seen_later: BTreeSet<String>,
}

impl KeyFacts {
    /// The most live versions DVV sets may keep for this key: the maximal writes (delete markers
    /// are never shown under add-wins).
    fn sibling_bound(&self) -> usize {
        self.maybe_applied.difference(&self.seen_later).count()
    }

    /// True when an acknowledged delete saw all of `version` (its context covered the version:
    /// see the module doc), so the version must not be visible.
    fn deleted_by_an_acked_delete(&self, version: &BTreeSet<String>) -> bool {
        !version.is_empty() && self.acked_deletes.iter().any(|saw| version.is_subset(saw))
    }
}

/// What the history says about each key.
fn facts(ops: &[Op]) -> BTreeMap<&str, KeyFacts> {
    let mut facts: BTreeMap<&str, KeyFacts> = BTreeMap::new();
    for op in ops {
        let f = facts.entry(op.key.as_str()).or_default();
        // Only an acknowledged operation surely covered what it saw: an indeterminate one may
        // never have been applied, and then the writes it saw stay maximal (docker seed 3102:
        // two concurrent writes, the one write that saw both indeterminate and absent).
        if op.outcome == Outcome::Ok {
            f.seen_later.extend(op.saw.iter().cloned());
        }
        match &op.kind {
            // A write carries forward everything it saw: it drops nothing.
            OpKind::Write { elem } => {
                f.written.insert(elem.clone(), op.outcome);
                if op.outcome != Outcome::Failed {
                    f.maybe_applied.insert(elem.clone());
                }
            }
            // A delete with a context removes exactly the versions it covers (add-wins); a
            // failed one (a 404 to a key with nothing live, say) stored nothing.
            OpKind::Delete => {
                if op.outcome == Outcome::Ok {
                    f.acked_deletes.push(op.saw.clone());
                }
                if op.outcome != Outcome::Failed {
                    f.dropped.extend(op.saw.iter().cloned());
                }
            }
        }
    }
    facts
}

/// The acknowledged elements each key must still hold, by the rule of **lost** below: those no
/// operation that may have been applied dropped (a delete whose read saw them). A key with such
/// an element must be live in every final view; keys without one (never acknowledged, or every
/// acknowledged element seen by a delete) are left out: they may end deleted. The disk-wipe
/// check (`wipe.rs`) waits until every owner holds these before the read-back repairs anything.
pub fn required(ops: &[Op]) -> BTreeMap<String, BTreeSet<String>> {
    facts(ops)
        .into_iter()
        .filter_map(|(key, f)| {
            let must: BTreeSet<String> = f
                .written
                .iter()
                .filter(|(e, o)| **o == Outcome::Ok && !f.dropped.contains(*e))
                .map(|(e, _)| e.clone())
                .collect();
            (!must.is_empty()).then(|| (key.to_string(), must))
        })
        .collect()
}

/// Checks the final `views` (key -> node -> view) against the history `ops`.
///
/// Keys that appear in `ops` but not in `views` are reported as unreadable on every node (the
/// caller must read every key it wrote).
pub fn check(ops: &[Op], views: &BTreeMap<String, BTreeMap<String, View>>) -> Verdict {
    let facts = facts(ops);
    let mut v = Verdict { keys: facts.len(), ..Verdict::default() };
    for (key, f) in &facts {
        v.acknowledged += f.written.values().filter(|o| **o == Outcome::Ok).count();
        let Some(node_views) = views.get(*key) else {
            v.unreadable += 1;
            v.note(key, "*", "", "key was never read back");
            continue;
        };
        let mut lost_here: BTreeSet<&str> = BTreeSet::new();
        let mut visible_anywhere: BTreeSet<&str> = BTreeSet::new();
        let bound = f.sibling_bound().max(1);
        for (node, view) in node_views {
            let (live, markers) = match view {
                View::Found { live, delete_markers } => (live.as_slice(), *delete_markers),
                View::NotFound => (&[][..], 0),
                View::Unreadable(err) => {
                    v.unreadable += 1;
                    v.note(key, node, "", &format!("unreadable: {err}"));
                    continue;
                }
            };
            if markers > 0 {
                v.markers_shown += 1;
                v.note(key, node, "", &format!("{markers} delete markers shown (add-wins: none)"));
            }
            let versions = live.len();
            v.max_versions = v.max_versions.max(versions);
            if versions > bound {
                v.sibling_excess += 1;
                v.note(key, node, "", &format!("{versions} versions, bound {bound}"));
            }
            let distinct: BTreeSet<&BTreeSet<String>> = live.iter().collect();
            if distinct.len() < live.len() {
                v.sibling_excess += 1;
                v.note(key, node, "", "two versions with the same content (a write stored twice)");
            }
            for version in live {
                if version.is_empty() {
                    v.phantom += 1;
                    v.note(key, node, "", "a live version with no element (no write stores one)");
                } else if f.deleted_by_an_acked_delete(version) {
                    v.resurrected += 1;
                    let elems: Vec<&str> = version.iter().map(String::as_str).collect();
                    v.note(
                        key,
                        node,
                        &elems.join(","),
                        "version visible after an acknowledged delete that saw all of it",
                    );
                }
            }
            let visible: BTreeSet<&str> = live.iter().flatten().map(String::as_str).collect();
            for e in &visible {
                visible_anywhere.insert(e);
                match f.written.get(*e) {
                    None => {
                        v.phantom += 1;
                        v.note(key, node, e, "visible but never written");
                    }
                    Some(Outcome::Failed) => {
                        v.failed_visible += 1;
                        v.note(key, node, e, "visible but its write certainly failed");
                    }
                    Some(_) => {}
                }
            }
            for (e, outcome) in &f.written {
                if *outcome == Outcome::Ok
                    && !visible.contains(e.as_str())
                    && !f.dropped.contains(e)
                    && lost_here.insert(e)
                {
                    v.note(key, node, e, "acknowledged write missing");
                }
            }
        }
        v.lost += lost_here.len();
        for (e, outcome) in &f.written {
            if *outcome == Outcome::Indeterminate {
                if visible_anywhere.contains(e.as_str()) {
                    v.indeterminate_present += 1;
                } else {
                    v.indeterminate_absent += 1;
                }
            }
        }
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(xs: &[&str]) -> BTreeSet<String> {
        xs.iter().map(|s| s.to_string()).collect()
    }

    fn write(client: usize, key: &str, elem: &str, saw: &[&str], outcome: Outcome) -> Op {
        Op {
            client,
            key: key.into(),
            kind: OpKind::Write { elem: elem.into() },
            saw: set(saw),
            outcome,
            at_ms: 0,
        }
    }

    fn delete(client: usize, key: &str, saw: &[&str], outcome: Outcome) -> Op {
        Op { client, key: key.into(), kind: OpKind::Delete, saw: set(saw), outcome, at_ms: 0 }
    }

    fn views(key: &str, per_node: &[View]) -> BTreeMap<String, BTreeMap<String, View>> {
        let nodes = per_node.iter().enumerate().map(|(i, v)| (format!("n{}", i + 1), v.clone()));
        BTreeMap::from([(key.to_string(), nodes.collect())])
    }

    fn found(versions: &[&[&str]]) -> View {
        View::Found { live: versions.iter().map(|v| set(v)).collect(), delete_markers: 0 }
    }

    #[test]
    fn merged_siblings_keep_every_acknowledged_element() {
        // Two clients read the same state and write concurrently: siblings, then a merge.
        let ops = vec![
            write(0, "hot", "a", &[], Outcome::Ok),
            write(1, "hot", "b", &["a"], Outcome::Ok),
            write(2, "hot", "c", &["a"], Outcome::Ok),
            write(1, "hot", "d", &["a", "b", "c"], Outcome::Ok),
        ];
        let v = check(&ops, &views("hot", &vec![found(&[&["a", "b", "c", "d"]]); 4]));
        assert!(v.passed(), "{v:?}");
        assert_eq!(v.acknowledged, 4);
        let siblings = check(&ops[..3], &views("hot", &[found(&[&["a", "b"], &["a", "c"]])]));
        assert!(siblings.passed(), "{siblings:?}");
        assert_eq!(siblings.max_versions, 2);
    }

    #[test]
    fn last_writer_wins_is_reported_as_a_loss() {
        // Concurrent read-modify-writes; lww keeps only one of them.
        let ops = vec![
            write(0, "hot", "a", &[], Outcome::Ok),
            write(1, "hot", "b", &["a"], Outcome::Ok),
            write(2, "hot", "c", &["a"], Outcome::Ok),
        ];
        let v = check(&ops, &views("hot", &[found(&[&["a", "c"]]), found(&[&["a", "c"]])]));
        assert!(!v.passed());
        assert_eq!(v.lost, 1, "b lost, counted once over both views: {v:?}");
        assert_eq!(v.findings[0].elem, "b");
    }

    #[test]
    fn deletes_that_saw_a_value_may_drop_it_but_it_must_not_come_back() {
        // Delete, then re-create (the re-create's read saw nothing live).
        let ops = vec![
            write(0, "dr", "a", &[], Outcome::Ok),
            delete(0, "dr", &["a"], Outcome::Ok),
            write(0, "dr", "b", &[], Outcome::Ok),
        ];
        assert!(check(&ops, &views("dr", &[found(&[&["b"]])])).passed());
        let back = check(&ops, &views("dr", &[found(&[&["a"], &["b"]])]));
        assert_eq!(back.resurrected, 1, "{back:?}");
        assert_eq!(back.findings.iter().filter(|f| f.elem == "a").count(), 1, "{back:?}");
        assert!(!back.passed());
        let gone = check(&ops, &views("dr", &[View::NotFound]));
        assert_eq!(gone.lost, 1, "b was acknowledged after the delete: {gone:?}");
        // A delete that may not have been applied drops nothing for sure: `a` may stay.
        let mut maybe = ops.clone();
        maybe[1].outcome = Outcome::Indeterminate;
        let kept = check(&maybe, &views("dr", &[found(&[&["a"], &["b"]])]));
        assert_eq!(kept.resurrected, 0, "{kept:?}");
    }

    #[test]
    fn a_write_concurrent_with_a_delete_survives_with_what_it_carried_forward() {
        // c0 and c1 both read {a}; c0 deletes it, c1 writes {a, w}: the delete's context does not
        // cover c1's version, so add-wins keeps it, `a` included.
        let ops = vec![
            write(0, "k", "a", &[], Outcome::Ok),
            delete(0, "k", &["a"], Outcome::Ok),
            write(1, "k", "w", &["a"], Outcome::Ok),
        ];
        let v = check(&ops, &views("k", &[found(&[&["a", "w"]]), found(&[&["a", "w"]])]));
        assert_eq!(v.resurrected, 0, "{v:?}");
        assert!(v.passed(), "{v:?}");
        // The surviving write must not vanish with the delete: `w` was not seen by it.
        let dropped = check(&ops, &views("k", &[View::NotFound]));
        assert_eq!(dropped.lost, 1, "{dropped:?}");
        assert_eq!(dropped.findings[0].elem, "w");
        // `a`'s own version must not come back beside it (and it is one version too many).
        let both = check(&ops, &views("k", &[found(&[&["a"], &["a", "w"]])]));
        assert_eq!((both.resurrected, both.sibling_excess), (1, 1), "{both:?}");
    }

    #[test]
    fn a_version_a_delete_saw_whole_is_resurrected_when_visible() {
        // b carried a forward; the delete read {a, b} and no later write exists.
        let ops = vec![
            write(0, "k", "a", &[], Outcome::Ok),
            write(1, "k", "b", &["a"], Outcome::Ok),
            delete(2, "k", &["a", "b"], Outcome::Ok),
        ];
        assert!(check(&ops, &views("k", &[View::NotFound])).passed());
        let back = check(&ops, &views("k", &[found(&[&["a", "b"]]), View::NotFound]));
        assert_eq!(back.resurrected, 1, "{back:?}");
        assert!(!back.passed());
        // An older version (a's, which b's version superseded) is covered too.
        let older = check(&ops, &views("k", &[found(&[&["a"]])]));
        assert_eq!(older.resurrected, 1, "{older:?}");
    }

    #[test]
    fn required_elements_are_the_acknowledged_ones_no_delete_saw() {
        let ops = vec![
            write(0, "dr", "a", &[], Outcome::Ok),
            delete(0, "dr", &["a"], Outcome::Indeterminate),
            write(0, "dr", "b", &[], Outcome::Ok),
            write(0, "dr", "c", &["b"], Outcome::Indeterminate),
            write(1, "gone", "x", &[], Outcome::Ok),
            delete(1, "gone", &["x"], Outcome::Ok),
            write(2, "never", "y", &[], Outcome::Failed),
            write(2, "maybe", "z", &[], Outcome::Indeterminate),
        ];
        let r = required(&ops);
        assert_eq!(r, BTreeMap::from([("dr".to_string(), set(&["b"]))]));
        // Consistent with the checker: a view holding them passes, one without them loses them.
        let dr: Vec<Op> = ops.iter().filter(|o| o.key == "dr").cloned().collect();
        assert!(check(&dr, &views("dr", &[found(&[&["b", "c"]])])).passed());
        assert_eq!(check(&dr, &views("dr", &[found(&[&["a"]])])).lost, 1);
    }

    #[test]
    fn a_view_showing_a_delete_marker_is_flagged() {
        let ops = vec![
            write(0, "k", "a", &[], Outcome::Ok),
            delete(0, "k", &["a"], Outcome::Ok),
            write(1, "k", "w", &[], Outcome::Ok),
        ];
        let beside = View::Found { live: vec![set(&["w"])], delete_markers: 1 };
        let v = check(&ops, &views("k", &[beside, found(&[&["w"]])]));
        assert_eq!((v.markers_shown, v.sibling_excess, v.lost), (1, 0, 0), "{v:?}");
        assert!(!v.passed());
        let alone = View::Found { live: Vec::new(), delete_markers: 2 };
        let ops = &ops[..2];
        let v = check(ops, &views("k", &[alone]));
        assert_eq!(v.markers_shown, 1, "{v:?}");
        assert!(!v.passed());
        assert!(check(ops, &views("k", &[View::NotFound])).passed());
    }

    #[test]
    fn deletes_do_not_raise_the_sibling_bound() {
        // One maximal write (w); the delete leaves no visible marker, so one version at most.
        let ops = vec![
            write(0, "k", "a", &[], Outcome::Ok),
            delete(0, "k", &["a"], Outcome::Indeterminate),
            write(1, "k", "w", &["a"], Outcome::Ok),
        ];
        let v = check(&ops, &views("k", &[found(&[&["a", "w"]])]));
        assert!(v.passed(), "{v:?}");
        let v = check(&ops, &views("k", &[found(&[&["a", "w"], &["a", "w"]])]));
        assert_eq!(v.sibling_excess, 2, "over the bound of 1, and a duplicate: {v:?}");
    }

    #[test]
    fn last_writer_wins_letting_a_delete_drop_a_concurrent_write_is_a_loss() {
        // The write is concurrent with the delete; lww lets the later-stamped delete win.
        let ops = vec![
            write(0, "k", "a", &[], Outcome::Ok),
            write(1, "k", "w", &["a"], Outcome::Ok),
            delete(0, "k", &["a"], Outcome::Ok),
        ];
        let v = check(&ops, &views("k", &[View::NotFound, View::NotFound]));
        assert_eq!(v.lost, 1, "{v:?}");
        assert_eq!(v.findings[0].elem, "w");
        assert!(!v.passed());
    }

    #[test]
    fn a_failed_delete_drops_nothing() {
        // A 404 to a DELETE stored nothing: what it saw must still be there.
        let ops =
            vec![write(0, "k", "a", &[], Outcome::Ok), delete(0, "k", &["a"], Outcome::Failed)];
        let v = check(&ops, &views("k", &[View::NotFound]));
        assert_eq!(v.lost, 1, "{v:?}");
        assert!(check(&ops, &views("k", &[found(&[&["a"]])])).passed());
    }

    #[test]
    fn a_live_version_without_elements_is_a_phantom() {
        let ops = vec![write(0, "k", "a", &[], Outcome::Ok), delete(0, "k", &["a"], Outcome::Ok)];
        let v = check(&ops, &views("k", &[found(&[&[]])]));
        assert_eq!((v.phantom, v.resurrected), (1, 0), "{v:?}");
    }

    #[test]
    fn indeterminate_writes_may_or_may_not_be_there() {
        let ops = vec![
            write(0, "u1", "a", &[], Outcome::Indeterminate),
            write(0, "u2", "b", &[], Outcome::Indeterminate),
        ];
        let mut vs = views("u1", &[found(&[&["a"]])]);
        vs.extend(views("u2", &[View::NotFound]));
        let v = check(&ops, &vs);
        assert!(v.passed(), "{v:?}");
        assert_eq!((v.indeterminate_present, v.indeterminate_absent), (1, 1));
    }

    #[test]
    fn unknown_or_failed_elements_and_unreadable_views_fail_the_run() {
        let ops = vec![write(0, "k", "a", &[], Outcome::Failed)];
        let v = check(&ops, &views("k", &[found(&[&["a"]]), found(&[&["zz"]])]));
        assert_eq!((v.failed_visible, v.phantom), (1, 1), "{v:?}");
        let u = check(&ops, &views("k", &[View::Unreadable("timeout".into())]));
        assert_eq!(u.unreadable, 1);
        assert!(!u.passed());
        let missing = check(&ops, &BTreeMap::new());
        assert_eq!(missing.unreadable, 1);
    }

    #[test]
    fn a_write_that_missed_its_own_clients_earlier_write_may_leave_two_versions() {
        // Under a sloppy quorum a client's read may not see its own acknowledged write: b did not
        // see a, so a and b are concurrent although one client wrote both.
        let ops = vec![write(0, "k", "a", &[], Outcome::Ok), write(0, "k", "b", &[], Outcome::Ok)];
        let v = check(&ops, &views("k", &[found(&[&["a"], &["b"]])]));
        assert_eq!(v.sibling_excess, 0, "{v:?}");
        assert!(v.passed(), "{v:?}");
    }

    #[test]
    fn one_write_stored_twice_is_flagged() {
        let ops = vec![write(0, "k", "a", &[], Outcome::Ok), write(1, "k", "b", &[], Outcome::Ok)];
        let v = check(&ops, &views("k", &[found(&[&["a"], &["a"]])]));
        assert_eq!(v.sibling_excess, 1, "{v:?}");
    }

    #[test]
    fn an_indeterminate_write_does_not_shrink_the_bound() {
        // a and b are concurrent; c saw both but timed out and was never applied: a and b both
        // stay (the Docker run of seed 3102 showed exactly this on `hot-20-0`).
        let ops = vec![
            write(0, "k", "a", &["x"], Outcome::Ok),
            write(1, "k", "b", &["x"], Outcome::Ok),
            write(1, "k", "c", &["a", "b", "x"], Outcome::Indeterminate),
            write(0, "k", "x", &[], Outcome::Ok),
        ];
        let v = check(&ops, &views("k", &[found(&[&["a", "x"], &["b", "x"]])]));
        assert_eq!(v.sibling_excess, 0, "{v:?}");
        assert!(v.passed(), "{v:?}");
        // Had c been acknowledged, it would have superseded both: c's version and a stale one
        // side by side are one version too many (nothing is lost: every element is present).
        let mut acked = ops.clone();
        acked[2].outcome = Outcome::Ok;
        let v = check(&acked, &views("k", &[found(&[&["a", "x"], &["a", "b", "c", "x"]])]));
        assert_eq!((v.sibling_excess, v.lost), (1, 0), "{v:?}");
    }

    #[test]
    fn more_versions_than_writers_is_flagged() {
        let ops =
            vec![write(0, "k", "a", &[], Outcome::Ok), write(0, "k", "b", &["a"], Outcome::Ok)];
        let v = check(&ops, &views("k", &[found(&[&["a"], &["a", "b"]])]));
        assert_eq!(v.sibling_excess, 1, "one writer, all acknowledged: one version: {v:?}");
    }
}
