//! Single-decree Paxos that commits each layout version once.
//!
//! LAYOUT CONSENSUS
//! ================
//! Gossiping layouts last-writer-wins lets two operators (or one operator and a node that
//! retried) commit two different layouts under one version number and split the cluster (Garage's
//! manual warns of exactly that). So version v+1 is decided by classic single-decree Paxos
//! (Lamport, "Paxos Made Simple", 2001) among the *voters* of version v (its members before and
//! after the change in progress, a force-removed node excepted):
//! 1. a proposer picks a ballot `(round, node id)` above every ballot it has seen and sends
//!    `Prepare(v+1, ballot)` to every voter;
//! 2. an acceptor whose committed layout is v promises never to accept a lower ballot for v+1 and
//!    answers with the value it already accepted for v+1, if any (an acceptor past v answers
//!    with its newer layout instead, which the proposer adopts);
//! 3. with promises from a majority, the proposer asks them to accept the value of the highest
//!    ballot among the promises, or its own candidate when there is none;
//! 4. with acceptances from a majority, the value is chosen: the proposer adopts and stores it
//!    and pushes it to every node (`Commit`); pulls spread it to anyone it missed.
//!
//! Acceptor state is stored before any answer (the executor persists it with the layout), so a
//! restarted acceptor keeps its promises. Proposals are rare (an operator's command, and the two
//! automatic steps of each change), so duelling proposers are resolved by the proposer retrying
//! with a higher round after a random pause, bounded by a few attempts.
//!
//! The data path never waits for consensus: only layout changes do, and a change needs a
//! majority of voters up.

use serde::{Deserialize, Serialize};

use crate::id::NodeId;
use crate::layout::Layout;

/// A proposal number: rounds first, node ids break ties.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Ballot {
    /// Increases with every attempt.
    pub round: u64,
    /// The proposer.
    pub node: NodeId,
}

/// One acceptor's state for the version after its committed layout.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Acceptor {
    /// The version being decided (committed version + 1); 0 before any.
    pub version: u64,
    /// The highest ballot promised for `version`.
    pub promised: Option<Ballot>,
    /// The value accepted for `version`, with its ballot.
    pub accepted: Option<(Ballot, Layout)>,
}

/// An acceptor's answer to a prepare or accept.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Vote {
    /// Promised (prepare) or accepted (accept); for a prepare, what was accepted before.
    Yes {
        /// The value already accepted for the version, if any.
        accepted: Option<(Ballot, Layout)>,
    },
    /// A higher ballot was promised.
    No {
        /// It.
        promised: Ballot,
    },
    /// The acceptor has committed the version (or a later one) already: here is its layout.
    Committed(Layout),
    /// The acceptor has not committed the version before the one asked about: it must catch up
    /// first (it pulls the layout).
    Behind {
        /// Its committed version.
        version: u64,
    },
}

impl Acceptor {
    /// The state for deciding the version after `committed`, keeping what was promised or
    /// accepted for it already.
    pub fn align(&mut self, committed: u64) {
        if self.version != committed + 1 {
            *self = Acceptor { version: committed + 1, promised: None, accepted: None };
        }
    }

    /// Phase 1b. `committed` is the acceptor's committed layout. Returns the vote and whether the
    /// state changed (and must be stored before answering).
    pub fn prepare(&mut self, committed: &Layout, version: u64, ballot: &Ballot) -> (Vote, bool) {
        if let Some(v) = self.past(committed, version) {
            return (v, false);
        }
        self.align(committed.version);
        match &self.promised {
            Some(p) if p > ballot => (Vote::No { promised: p.clone() }, false),
            Some(p) if p == ballot => (Vote::Yes { accepted: self.accepted.clone() }, false),
            _ => {
                self.promised = Some(ballot.clone());
                (Vote::Yes { accepted: self.accepted.clone() }, true)
            }
        }
    }

    /// Phase 2b.
    pub fn accept(
        &mut self,
        committed: &Layout,
        version: u64,
        ballot: &Ballot,
        value: &Layout,
    ) -> (Vote, bool) {
        if let Some(v) = self.past(committed, version) {
            return (v, false);
        }
        self.align(committed.version);
        if let Some(p) = &self.promised
            && p > ballot
        {
            return (Vote::No { promised: p.clone() }, false);
        }
        let same = self.accepted.as_ref().is_some_and(|(b, l)| b == ballot && l == value);
        self.promised = Some(ballot.clone());
        self.accepted = Some((ballot.clone(), value.clone()));
        (Vote::Yes { accepted: None }, !same)
    }

    fn past(&self, committed: &Layout, version: u64) -> Option<Vote> {
        if version <= committed.version {
            Some(Vote::Committed(committed.clone()))
        } else if version > committed.version + 1 {
            Some(Vote::Behind { version: committed.version })
        } else {
            None
        }
    }
}

/// A proposer's bookkeeping for one attempt.
#[derive(Debug, Clone)]
pub struct Proposal {
    /// The version being decided.
    pub version: u64,
    /// This attempt's ballot.
    pub ballot: Ballot,
    /// What this proposer wants chosen.
    pub candidate: Layout,
    /// The voters (of the committed version before `version`).
    pub voters: Vec<NodeId>,
    /// Promises so far, with what each had accepted.
    promises: Vec<(NodeId, Option<(Ballot, Layout)>)>,
    /// Acceptances so far.
    accepts: Vec<NodeId>,
    /// Voters that refused or failed.
    refused: Vec<NodeId>,
    /// The highest round seen in a refusal.
    seen: u64,
    /// The value sent in phase 2 (once phase 2 started).
    pub value: Option<Layout>,
}

/// Where a proposal stands after a vote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Progress {
    /// Waiting for more votes.
    Waiting,
    /// A majority promised: send `Accept(value)` to every voter.
    Accept(Layout),
    /// A majority accepted: the value is chosen.
    Chosen(Layout),
    /// A majority can no longer be reached with this ballot (refusals or failures); retry with a
    /// round above `seen`.
    Failed {
        /// The highest round seen in a refusal.
        seen: u64,
    },
}

impl Proposal {
    /// A proposal of `candidate` (whose version is decided) by `ballot` among `voters`.
    pub fn new(candidate: Layout, ballot: Ballot, voters: Vec<NodeId>) -> Proposal {
        Proposal {
            version: candidate.version,
            ballot,
            candidate,
            voters,
            promises: Vec::new(),
            accepts: Vec::new(),
            refused: Vec::new(),
            seen: 0,
            value: None,
        }
    }

    fn majority(&self) -> usize {
        self.voters.len() / 2 + 1
    }

    fn counted(&self, node: &NodeId) -> bool {
        self.refused.contains(node)
            || if self.value.is_some() {
                self.accepts.contains(node)
            } else {
                self.promises.iter().any(|(n, _)| n == node)
            }
    }

    /// A vote (or `None`: the voter failed to answer) from `node` in the current phase.
    pub fn on_vote(&mut self, node: &NodeId, vote: Option<Vote>) -> Progress {
        if !self.voters.contains(node) || self.counted(node) {
            return Progress::Waiting;
        }
        match (vote, self.value.is_some()) {
            (Some(Vote::Yes { accepted }), false) => self.promises.push((node.clone(), accepted)),
            (Some(Vote::Yes { .. }), true) => self.accepts.push(node.clone()),
            (Some(Vote::No { promised }), _) => {
                self.seen = self.seen.max(promised.round);
                self.refused.push(node.clone());
            }
            _ => self.refused.push(node.clone()),
        }
        let majority = self.majority();
        if self.voters.len() - self.refused.len() < majority {
            return Progress::Failed { seen: self.seen.max(self.ballot.round) };
        }
        match &self.value {
            None if self.promises.len() >= majority => {
                let value = self
                    .promises
                    .iter()
                    .filter_map(|(_, a)| a.as_ref())
                    .max_by(|a, b| a.0.cmp(&b.0))
                    .map(|(_, l)| l.clone())
                    .unwrap_or_else(|| self.candidate.clone());
                self.value = Some(value.clone());
                self.refused.clear();
                Progress::Accept(value)
            }
            Some(v) if self.accepts.len() >= majority => Progress::Chosen(v.clone()),
            _ => Progress::Waiting,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layout::Change;

    fn id(n: &str) -> NodeId {
        NodeId::new(n).unwrap()
    }

    fn base() -> Layout {
        Layout::initial(&[id("a"), id("b"), id("c")], 16, 3).unwrap()
    }

    fn ballot(round: u64, node: &str) -> Ballot {
        Ballot { round, node: id(node) }
    }

    /// Runs phase 1 and 2 of `p` against `acceptors` (index-aligned with p.voters), only with the
    /// voters in `reach`.
    fn run(
        p: &mut Proposal,
        acceptors: &mut [Acceptor],
        committed: &Layout,
        reach: &[usize],
    ) -> Progress {
        let mut last = Progress::Waiting;
        for &i in reach {
            let node = p.voters[i].clone();
            let (vote, _) = acceptors[i].prepare(committed, p.version, &p.ballot);
            last = p.on_vote(&node, Some(vote));
            if !matches!(last, Progress::Waiting) {
                break;
            }
        }
        let Progress::Accept(value) = last.clone() else { return last };
        for &i in reach {
            let node = p.voters[i].clone();
            let (vote, _) = acceptors[i].accept(committed, p.version, &p.ballot, &value);
            last = p.on_vote(&node, Some(vote));
            if !matches!(last, Progress::Waiting) {
                break;
            }
        }
        last
    }

    #[test]
    fn a_majority_chooses_and_a_later_proposer_learns_the_chosen_value() {
        let l = base();
        let voters = vec![id("a"), id("b"), id("c")];
        let mut acc = vec![Acceptor::default(), Acceptor::default(), Acceptor::default()];
        let add_d = l.start(Change::Add(id("d"))).unwrap();
        let add_e = l.start(Change::Add(id("e"))).unwrap();
        let mut p1 = Proposal::new(add_d.clone(), ballot(1, "a"), voters.clone());
        assert_eq!(run(&mut p1, &mut acc, &l, &[0, 1]), Progress::Chosen(add_d.clone()));
        // A competing proposer with a higher ballot that reaches b and c must choose add_d too.
        let mut p2 = Proposal::new(add_e, ballot(2, "c"), voters);
        assert_eq!(run(&mut p2, &mut acc, &l, &[1, 2]), Progress::Chosen(add_d));
    }

    #[test]
    fn a_lower_ballot_is_refused_and_a_minority_cannot_choose() {
        let l = base();
        let voters = vec![id("a"), id("b"), id("c")];
        let mut acc = vec![Acceptor::default(), Acceptor::default(), Acceptor::default()];
        let cand = l.start(Change::Add(id("d"))).unwrap();
        let mut high = Proposal::new(cand.clone(), ballot(5, "b"), voters.clone());
        let (v, changed) = acc[1].prepare(&l, 2, &high.ballot);
        assert!(changed);
        assert_eq!(high.on_vote(&id("b"), Some(v)), Progress::Waiting);
        let mut low = Proposal::new(cand.clone(), ballot(1, "a"), voters.clone());
        let (v, _) = acc[1].prepare(&l, 2, &low.ballot);
        assert_eq!(v, Vote::No { promised: ballot(5, "b") });
        assert_eq!(low.on_vote(&id("b"), Some(v)), Progress::Waiting);
        assert_eq!(low.on_vote(&id("c"), None), Progress::Failed { seen: 5 });
        // One voter of three is not a majority.
        let mut lone = Proposal::new(cand, ballot(9, "a"), voters);
        assert_eq!(run(&mut lone, &mut acc, &l, &[0]), Progress::Waiting);
    }

    #[test]
    fn acceptors_past_or_behind_the_version_say_so() {
        let l = base();
        let next = l.start(Change::Add(id("d"))).unwrap();
        let mut a = Acceptor::default();
        assert_eq!(a.prepare(&next, 2, &ballot(1, "a")).0, Vote::Committed(next.clone()));
        assert_eq!(a.prepare(&l, 3, &ballot(1, "a")).0, Vote::Behind { version: 1 });
        // Promises survive a repeated prepare and reset once the version is committed.
        assert!(a.prepare(&l, 2, &ballot(1, "a")).1);
        assert!(!a.prepare(&l, 2, &ballot(1, "a")).1);
        a.align(next.version);
        assert_eq!(a.promised, None);
    }
}
