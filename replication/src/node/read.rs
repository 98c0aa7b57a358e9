//! Coordinated reads and read repair.
//!
//! READS
//! =====
//! A read is coordinated by the node that receives it (no dot is needed, so no forwarding). It
//! asks R of the first N reachable nodes of the key's extended preference list — this node first
//! when it is one — and holds the others back: they are asked when one of the first fails, or
//! after `read_speculate_ms` without R answers (a speculative retry); one read in
//! `full_read_every` asks all N at once, so replicas a quorum-first read skips are still
//! repaired. The answer is the merge of the replies once R arrived. After every asked replica
//! answered (or the timeout), each one whose set does not cover the merge is sent the merge
//! (read repair; a fallback keeps it under its hint).

use std::sync::Arc;

use super::{Answer, ClientId, MsgCont, Mutant, NodeCore, ReadOutcome, StoreCont, Timer};
use crate::dvv::SiblingSet;
use crate::error::Error;
use crate::id::NodeId;
use crate::node::keys::{HintKey, ObjectKey};
use crate::node::messages::Request;
use crate::node::store::{HintSet, StoreOp};
use crate::quorum::{ReadCoordinator, Target};

/// Who gets a read's outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum ReadFor {
    /// A client's GET.
    Client(ClientId),
    /// A delete's quorum read (the flow id of the delete).
    Delete(u64),
}

/// One read coordinated by this node.
pub(super) struct ReadFlow {
    reply: ReadFor,
    key: ObjectKey,
    rc: ReadCoordinator,
    lww: bool,
    speculated: bool,
    /// The client has its answer.
    pub(super) answered: bool,
}

impl NodeCore {
    /// Starts a coordinated read of `key` with quorum `r`.
    pub(super) fn start_read(&mut self, reply: ReadFor, key: ObjectKey, r: usize, lww: bool) {
        let (ext, n) = self.read_list(&key);
        let mut rc = match ReadCoordinator::new(&ext, &self.up, n, r, &self.config.id) {
            Ok(rc) => rc,
            Err(e) => return self.finish_read_error(reply, e),
        };
        // Ask R replicas first (this one first); every `full_read_every`-th read asks all N.
        let seq = self.read_seq;
        self.read_seq += 1;
        let every = u64::from(self.config.full_read_every);
        let fanout = if every > 0 && seq.is_multiple_of(every) { usize::MAX } else { r };
        let first = rc.start(fanout, &self.config.id);
        let flow = self.fresh_id();
        self.reads
            .insert(flow, ReadFlow { reply, key, rc, lww, speculated: false, answered: false });
        self.ask(flow, first);
        let (speculate, deadline) =
            (self.now + self.config.read_speculate_ms, self.now + self.config.request_timeout_ms);
        self.timer(speculate, Timer::ReadSpeculate(flow));
        self.timer(deadline, Timer::ReadDeadline(flow));
        self.advance_read(flow);
    }

    fn ask(&mut self, flow: u64, targets: Vec<Target>) {
        let Some(r) = self.reads.get(&flow) else { return };
        let key = r.key.clone();
        let mut msg: Option<Arc<Request>> = None;
        for t in targets {
            if t.node == self.config.id {
                let op = StoreOp::Read { key: key.clone(), owners: Arc::clone(&self.members) };
                self.store(op, StoreCont::LocalRead { flow });
            } else {
                let m = msg.get_or_insert_with(|| Arc::new(Request::Read { key: key.clone() }));
                let m = Arc::clone(m);
                self.send(t.node.clone(), m, MsgCont::ReadTarget { flow, node: t.node });
            }
        }
    }

    /// A replica's answer (or failure) to a read.
    pub(super) fn read_reply(
        &mut self,
        flow: u64,
        node: NodeId,
        set: std::result::Result<Option<SiblingSet>, String>,
    ) {
        let Some(r) = self.reads.get_mut(&flow) else { return };
        match set {
            Ok(s) => {
                r.rc.on_reply(&node, s);
            }
            Err(_) => {
                r.rc.on_failure(&node);
                let more = r.rc.replacements();
                self.ask(flow, more);
            }
        }
        self.advance_read(flow);
    }

    pub(super) fn read_speculate(&mut self, flow: u64) {
        let Some(r) = self.reads.get_mut(&flow) else { return };
        if r.speculated || r.answered {
            return;
        }
        r.speculated = true;
        let rest = r.rc.ask_rest();
        self.ask(flow, rest);
        self.advance_read(flow);
    }

    pub(super) fn read_deadline(&mut self, flow: u64) {
        let Some(r) = self.reads.get_mut(&flow) else { return };
        r.rc.on_timeout();
        self.advance_read(flow);
    }

    fn advance_read(&mut self, flow: u64) {
        let Some(r) = self.reads.get_mut(&flow) else { return };
        let finished = r.rc.pending().is_empty();
        if !r.answered && (r.rc.outcome().is_decided() || finished) {
            r.answered = true;
            let (reply, lww) = (r.reply, r.lww);
            let (set, report) = (r.rc.merged().clone(), r.rc.report());
            let result = if report.quorum_reached {
                self.stats.reads_ok += 1;
                let mut set = set;
                if lww {
                    set.resolve_lww();
                }
                Ok(ReadOutcome { node: self.config.id.to_string(), set, report: Some(report) })
            } else {
                self.stats.read_quorum_failures += 1;
                Err(Error::ReadQuorum {
                    answered: report.replicas_read.len(),
                    required: report.required,
                    report: Box::new(report),
                })
            };
            match reply {
                ReadFor::Client(id) => self.answer(id, result.map(Answer::Read)),
                ReadFor::Delete(d) => self.delete_read(d, result.map(|o| o.set)),
            }
        }
        if finished && let Some(r) = self.reads.remove(&flow) {
            self.read_repair(&r.key, r.rc.merged(), &r.rc.repairs());
        }
    }

    fn finish_read_error(&mut self, reply: ReadFor, e: Error) {
        match reply {
            ReadFor::Client(id) => self.answer(id, Err(e)),
            ReadFor::Delete(d) => self.delete_read(d, Err(e)),
        }
    }

    /// Sends the merged set to the replicas that were missing some of it.
    fn read_repair(&mut self, key: &ObjectKey, merged: &SiblingSet, repairs: &[Target]) {
        if repairs.is_empty() {
            return;
        }
        let merged = Arc::new(merged.clone());
        let stale = self.mutated(Mutant::StaleReadRepair);
        for t in repairs {
            self.background_ops += 1;
            if t.node == self.config.id {
                // This node is a fallback for `hint_for`: the repair is a hint, recorded in the
                // book when stored (or it would never be delivered; found by the simulator).
                let hint = t.hint_for.clone().map(|owner| (owner, HintKey::Object(key.clone())));
                let op = match &hint {
                    Some((owner, hk)) => StoreOp::StoreHint {
                        owner: owner.clone(),
                        key: hk.clone(),
                        set: HintSet::Object((*merged).clone()),
                    },
                    None if stale => stale_repair_op(key, &merged),
                    None => StoreOp::Apply { key: key.clone(), set: Arc::clone(&merged) },
                };
                self.store(op, StoreCont::LocalRepair { hint });
            } else {
                let msg = Arc::new(Request::Replicate {
                    key: key.clone(),
                    set: Arc::clone(&merged),
                    hint_for: t.hint_for.as_ref().map(|o| o.to_string()),
                });
                self.send(t.node.clone(), msg, MsgCont::Repair { node: t.node.clone() });
            }
        }
    }
}

/// Mutant `stale-read-repair`: the local repair replaces the replica instead of merging.
#[cfg(feature = "mutants")]
fn stale_repair_op(key: &ObjectKey, merged: &Arc<SiblingSet>) -> StoreOp {
    StoreOp::Overwrite { key: key.clone(), set: Arc::clone(merged) }
}

#[cfg(not(feature = "mutants"))]
fn stale_repair_op(key: &ObjectKey, merged: &Arc<SiblingSet>) -> StoreOp {
    StoreOp::Apply { key: key.clone(), set: Arc::clone(merged) }
}
