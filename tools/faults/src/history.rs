//! The operation history the clients record, the final views read after healing, and the checker.
//!
//! MODEL
//! =====
//! Every write introduces exactly one new *element*, a string unique in the whole run
//! (`c<client>.<seq>`). An object's bytes are a JSON array of elements: every write stores what
//! its read saw plus its own `e` — for a read-modify-write of a hot key, the union of every
//! sibling it read (set union is the merge, as in the Dynamo paper's shopping cart, DeCandia et
//! al. 2007, section 4.4); for a unique key or a re-create after a delete, nothing was live, so
//! `[e]`. Each operation records what its read *saw* (the union of the live siblings' elements,
//! whose versions its causal context covers), the element it wrote (none, for a delete) and its
//! outcome: `Ok` (acknowledged), `Failed` (certainly not applied:
//! refused before anything was stored, or never sent) or `Indeterminate` (timed out, 503, 5xx,
//! connection lost mid-request: may or may not be applied, may surface later).
//!
//! CHECKS
//! ======
//! After healing, every key is read from every node; each view is the list of sibling contents.
//! For each key and view:
//! - **lost**: an acknowledged element is absent, and no operation that may have been applied
//!   (`Ok` or `Indeterminate`) saw it and dropped it: a delete whose context covered it (writes
//!   carry forward everything they saw). Such a drop is legitimate supersession; any other
//!   absence is a lost write. This is what the `lww` control must trip: last-writer-wins
//!   drops concurrent writes that nobody saw.
//! - **phantom**: a visible element that no operation ever wrote; **failed visible**: a visible
//!   element whose write was reported as certainly not applied.
//! - **resurrected**: a visible element that an *acknowledged* delete saw (its tombstone's context
//!   covered the element's version, so no merge may bring it back).
//! - **siblings**: versions in one view (live and delete markers) must not exceed the number of
//!   truly concurrent operations: writes that may have been applied and whose element no
//!   acknowledged operation saw (the maximal writes of the causal order; an indeterminate
//!   operation may not have been applied, so what it saw may stay maximal), plus the deletes that
//!   may have been applied (each can leave one marker). This is the DVV bound: a version can only
//!   survive if no context covered it. It is not the number of clients: under a sloppy quorum a
//!   client's read can miss its own acknowledged write (the read and write sets need not overlap),
//!   so one client's two writes can be concurrent. Two live versions with the same content (one
//!   write stored twice, under two dots) are flagged as well.
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
    /// Versions found: the content of each live sibling, and the number of delete markers among
    /// the siblings (a delete concurrent with a write).
    Found {
        /// Elements of each live version.
        live: Vec<BTreeSet<String>>,
        /// Delete markers listed as siblings.
        delete_markers: usize,
    },
    /// 404: never written, or deleted.
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
    /// The element concerned (empty for sibling counts and unreadable views).
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
    /// Elements visible that were never written.
    pub phantom: usize,
    /// Elements visible whose write was reported as certainly not applied.
    pub failed_visible: usize,
    /// Elements visible after an acknowledged delete that saw them.
    pub resurrected: usize,
    /// Views with more versions than the bound allows.
    pub sibling_excess: usize,
    /// Largest number of versions in one view.
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
    /// True when nothing was lost, nothing unexpected appeared, no view held more versions than
    /// its bound and every view was readable.
    pub fn passed(&self) -> bool {
        self.lost == 0
            && self.phantom == 0
            && self.failed_visible == 0
            && self.resurrected == 0
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
    /// Elements an acknowledged delete saw.
    deleted_acked: BTreeSet<String>,
    /// Elements of writes that may have been applied (acknowledged or indeterminate).
    maybe_applied: BTreeSet<String>,
    /// Elements some possibly-applied operation saw (so they are not maximal).
    seen_later: BTreeSet<String>,
    /// Deletes that may have been applied.
    deletes: usize,
}

impl KeyFacts {
    /// The most versions DVV sets may keep for this key: maximal writes plus delete markers.
    fn sibling_bound(&self) -> usize {
        self.maybe_applied.difference(&self.seen_later).count() + self.deletes
    }
}

/// Checks the final `views` (key -> node -> view) against the history `ops`.
///
/// Keys that appear in `ops` but not in `views` are reported as unreadable on every node (the
/// caller must read every key it wrote).
pub fn check(ops: &[Op], views: &BTreeMap<String, BTreeMap<String, View>>) -> Verdict {
    let mut facts: BTreeMap<&str, KeyFacts> = BTreeMap::new();
    for op in ops {
        let f = facts.entry(op.key.as_str()).or_default();
        // Only an acknowledged operation surely covered what it saw: an indeterminate one may
        // never have been applied, and then the writes it saw stay maximal (docker seed 3102:
        // two concurrent writes, the one write that saw both indeterminate and absent).
        if op.outcome == Outcome::Ok {
            f.seen_later.extend(op.saw.iter().cloned());
        }
        if op.outcome != Outcome::Failed {
            match &op.kind {
                OpKind::Write { elem } => {
                    f.maybe_applied.insert(elem.clone());
                }
                OpKind::Delete => f.deletes += 1,
            }
        }
        match &op.kind {
            // A write carries forward everything it saw: it drops nothing.
            OpKind::Write { elem } => {
                f.written.insert(elem.clone(), op.outcome);
            }
            OpKind::Delete => {
                if op.outcome == Outcome::Ok {
                    f.deleted_acked.extend(op.saw.iter().cloned());
                }
                if op.outcome != Outcome::Failed {
                    f.dropped.extend(op.saw.iter().cloned());
                }
            }
        }
    }

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
            let versions = live.len() + markers;
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
                if f.deleted_acked.contains(*e) {
                    v.resurrected += 1;
                    v.note(key, node, e, "visible after an acknowledged delete that saw it");
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
        let ops = vec![
            write(0, "dr", "a", &[], Outcome::Ok),
            delete(0, "dr", &["a"], Outcome::Ok),
            write(0, "dr", "b", &[], Outcome::Ok),
        ];
        assert!(check(&ops, &views("dr", &[found(&[&["b"]])])).passed());
        let back = check(&ops, &views("dr", &[found(&[&["a"], &["b"]])]));
        assert_eq!(back.resurrected, 1, "{back:?}");
        assert!(!back.passed());
        let gone = check(&ops, &views("dr", &[View::NotFound]));
        assert_eq!(gone.lost, 1, "b was acknowledged after the delete: {gone:?}");
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
