//! Client writes and deletes: forwarding to the coordinator, the coordinator's step, the fan-out,
//! the answer at W plus a grace, and the write's tail (hints for targets that missed it).
//!
//! COORDINATION
//! ============
//! A write is coordinated by the first reachable node of the key's extended preference list (an
//! owner whenever one is reachable). Any other node forwards the write there, naming the nodes it
//! skipped as unreachable, so the receiver coordinates even if its own view of those nodes differs
//! (no forwarding loops). A forward goes to the next candidate only when it certainly never
//! reached the first ([`SendError::NotDelivered`]); after a timeout the client is told the
//! outcome is unknown (503), because the first coordinator may have applied it.
//!
//! The coordinator applies the DVV write to its own replica under the store's per-key lock (the
//! new dot comes from its own stored history, so a dot is never reused) and keeps hints for the
//! owners no target stands in for; then it sends the new set to the other targets while its own
//! copy becomes durable, and counts its own acknowledgement only after that. It answers once the
//! outcome is decided plus a short grace ([`super::grace`]) or when every target answered.
//! Targets that answer later are still awaited until the request timeout; every target that
//! failed or timed out gets a hint stored on the coordinator for its owner, so it converges by
//! hinted handoff although it was believed reachable when the write started.
//!
//! DELETES
//! =======
//! A delete first reads a quorum (add-wins, see `crate::dvv`): nothing live answers `NoSuchKey`
//! and stores nothing; a client context covering none of the live versions answers
//! `StaleContext`; otherwise the tombstone is written under the client's context, or under the
//! read's history merged with the coordinator's own.

use std::collections::BTreeSet;
use std::sync::Arc;

use super::{
    Answer, ClientId, MsgCont, Mutant, NodeCore, ReplyTo, SendError, StoreCont, Timer, describe,
    grace,
};
use crate::dvv::{Sibling, SiblingSet};
use crate::error::{Error, Result};
use crate::id::NodeId;
use crate::node::keys::{HintKey, ObjectKey};
use crate::node::messages::{Request, Response, WriteOp, WriteOutcome, WriteRequest};
use crate::node::store::{HintSet, LocalWrite, StoreOp, StoreResult};
use crate::quorum::{Hint, Target, WriteCoordinator, coordinator_for};
use crate::vclock::{Dot, VersionVector};

/// A client write on its way to its coordinator.
pub(super) struct ForwardFlow {
    reply: ReplyTo,
    req: WriteRequest,
    /// The list coordinators are chosen from (the old owners' while a change is in progress),
    /// with its effective N.
    ext: Vec<NodeId>,
    n: usize,
    reachable: BTreeSet<NodeId>,
    coordinator: NodeId,
    attempts: usize,
}

/// A delete waiting for its quorum read.
pub(super) struct DeleteFlow {
    client: ClientId,
    key: ObjectKey,
    context: Option<VersionVector>,
    w: usize,
    lww: bool,
    at_ms: u64,
}

/// One write coordinated by this node.
pub(super) struct WriteFlow {
    /// The layout version the write was planned under.
    pub(super) layout: u64,
    reply: ReplyTo,
    key: ObjectKey,
    wc: WriteCoordinator,
    targets: Vec<Target>,
    /// Owners with neither a target nor a fallback standing in for them.
    uncovered: Vec<NodeId>,
    /// The owner this node stands in for, when it is a fallback.
    local_hint: Option<NodeId>,
    /// After the local step: the new set, its dot, the context.
    written: Option<(Arc<SiblingSet>, Dot, VersionVector)>,
    started: u64,
    /// The request timeout's timer, once armed.
    deadline: Option<u64>,
    answer_at: Option<u64>,
    /// The client (or forwarding peer) has its answer.
    pub(super) answered: bool,
    /// Every target answered or the timeout fired.
    settled: bool,
    /// Hints for missed targets still being stored.
    hint_stores: usize,
}

impl NodeCore {
    /// A client write received by this node: coordinated here, or forwarded to the key's
    /// coordinator.
    pub(super) fn start_forward(&mut self, reply: ReplyTo, req: WriteRequest) {
        let (ext, n) = self.write_lists(&req.key).into_iter().next().unwrap_or_default();
        let reachable = self.up.clone();
        let flow = self.fresh_id();
        let f = ForwardFlow {
            reply,
            req,
            ext,
            n,
            reachable,
            coordinator: self.config.id.clone(),
            attempts: 0,
        };
        self.forwards.insert(flow, f);
        self.forward_next(flow);
    }

    /// Sends the write to the first reachable candidate, or coordinates it here.
    fn forward_next(&mut self, flow: u64) {
        let Some(f) = self.forwards.get_mut(&flow) else { return };
        f.attempts += 1;
        let next = if f.attempts > f.ext.len() {
            None
        } else {
            coordinator_for(&f.ext, f.n, &f.reachable, &self.config.id)
        };
        let Some(coordinator) = next else {
            let f = self.forwards.remove(&flow);
            if let Some(f) = f {
                self.finish_forward(
                    f.reply,
                    Err(Error::Unavailable("every candidate coordinator failed".into())),
                );
            }
            return;
        };
        if coordinator == self.config.id {
            let Some(f) = self.forwards.remove(&flow) else { return };
            self.start_write(f.reply, f.req, &f.reachable);
            return;
        }
        let mut fwd = f.req.clone();
        fwd.excluded =
            f.ext.iter().take_while(|m| **m != coordinator).map(|m| m.to_string()).collect();
        f.coordinator = coordinator.clone();
        self.send(coordinator, Arc::new(Request::Coordinate(fwd)), MsgCont::Forward { flow });
    }

    pub(super) fn forward_reply(
        &mut self,
        flow: u64,
        result: std::result::Result<Response, SendError>,
    ) {
        let retry_after_timeout = self.mutated(Mutant::ForwardRetryAfterTimeout);
        let Some(f) = self.forwards.get_mut(&flow) else { return };
        let coordinator = f.coordinator.clone();
        let outcome = match result {
            Ok(Response::Written(outcome)) => {
                self.stats.forwarded += 1;
                finish_write(*outcome)
            }
            Ok(Response::Error { code, message }) => {
                Err(Error::Remote { node: coordinator.to_string(), code, message })
            }
            Ok(other) => Err(Error::Internal(format!(
                "unexpected answer to Coordinate: {}",
                describe(&other)
            ))),
            // Only a request that never reached the coordinator may go to the next one: a
            // coordinator that timed out or dropped the connection may have applied it, and a
            // second coordinator would store the same write again under another dot (a duplicate
            // version that a later delete seeing only one copy would not remove).
            Err(SendError::NotDelivered(why)) => {
                tracing::warn!(%coordinator, why, "coordinator unreachable; trying the next");
                f.reachable.remove(&coordinator);
                self.forward_next(flow);
                return;
            }
            Err(SendError::Failed(why)) => {
                if retry_after_timeout {
                    f.reachable.remove(&coordinator);
                    self.forward_next(flow);
                    return;
                }
                Err(Error::Unavailable(format!(
                    "the coordinator {coordinator} did not answer ({why}); the write may or may \
                     not have been applied: read the object before writing it again"
                )))
            }
        };
        if let Some(f) = self.forwards.remove(&flow) {
            self.finish_forward(f.reply, outcome);
        }
    }

    fn finish_forward(&mut self, reply: ReplyTo, outcome: Result<WriteOutcome>) {
        match reply {
            ReplyTo::Client(id) => self.answer(id, outcome.map(Answer::Written)),
            // A forwarded write is coordinated where it arrives (the forwarder excluded the
            // nodes before it), so this is only reached for a client.
            ReplyTo::Peer(id) => {
                let response = match outcome {
                    Ok(o) => Response::Written(Box::new(o)),
                    Err(e) => Response::Error { code: e.code().to_owned(), message: e.to_string() },
                };
                self.respond(id, response);
            }
        }
    }

    /// A write forwarded by a peer, which skipped `req.excluded` as unreachable.
    pub(super) fn coordinate_forwarded(&mut self, id: super::InboundId, req: WriteRequest) {
        let mut reachable = self.up.clone();
        for ex in &req.excluded {
            if ex != self.config.id.as_str()
                && let Ok(node) = NodeId::new(ex.clone())
            {
                reachable.remove(&node);
            }
        }
        self.start_write(ReplyTo::Peer(id), req, &reachable);
    }

    /// The coordinator's side of a write.
    fn start_write(&mut self, reply: ReplyTo, req: WriteRequest, reachable: &BTreeSet<NodeId>) {
        let lists = self.write_lists(&req.key);
        let wc = match WriteCoordinator::new_multi(&lists, reachable, req.w, &self.config.id) {
            Ok(wc) => wc,
            Err(e) => return self.finish_forward(reply, Err(e)),
        };
        let targets = wc.targets().to_vec();
        let local_hint =
            targets.iter().find(|t| t.node == self.config.id).and_then(|t| t.hint_for.clone());
        let uncovered: Vec<NodeId> = wc
            .pref_list()
            .iter()
            .filter(|o| !targets.iter().any(|t| &t.node == *o || t.hint_for.as_ref() == Some(*o)))
            .cloned()
            .collect();
        let value = match req.op {
            WriteOp::Put { meta, body } => Sibling { meta, body },
            WriteOp::Delete { timestamp_ms } => Sibling::tombstone(timestamp_ms),
        };
        let write = LocalWrite {
            value,
            context: req.context,
            overwrite: req.overwrite,
            lww: req.lww,
            actor: self.actor.clone(),
            max_siblings: self.config.max_siblings,
            counter_floor: 0,
        };
        let hint_owners: Vec<NodeId> = local_hint.iter().chain(&uncovered).cloned().collect();
        let flow = self.fresh_id();
        self.writes.insert(
            flow,
            WriteFlow {
                layout: self.layout_version(),
                reply,
                key: req.key.clone(),
                wc,
                targets,
                uncovered,
                local_hint,
                written: None,
                started: self.now,
                deadline: None,
                answer_at: None,
                answered: false,
                settled: false,
                hint_stores: 0,
            },
        );
        self.store(
            StoreOp::Coordinate { key: req.key, write, hint_owners },
            StoreCont::Coordinated { flow },
        );
    }

    /// The local step is done: fan out while the local copy becomes durable.
    pub(super) fn coordinated(&mut self, flow: u64, result: Result<StoreResult>) {
        let coordinated = match result {
            Ok(StoreResult::Coordinated(c)) => c,
            Ok(_) => {
                return self.fail_write(flow, Error::Internal("unexpected store result".into()));
            }
            Err(e) => return self.fail_write(flow, e),
        };
        let Some(w) = self.writes.get_mut(&flow) else { return };
        let set = Arc::new(coordinated.set);
        let context = set.join();
        w.written = Some((Arc::clone(&set), coordinated.dot, context.clone()));
        w.started = self.now;
        let hint_owners: Vec<NodeId> = w.local_hint.iter().chain(&w.uncovered).cloned().collect();
        let others: Vec<Target> =
            w.targets.iter().filter(|t| t.node != self.config.id).cloned().collect();
        let key = w.key.clone();
        for (owner, vv) in hint_owners.into_iter().zip(coordinated.hint_versions) {
            self.hints.record(HintKey::Object(key.clone()), owner, &vv);
            self.stats.hints_stored += 1;
        }
        // Targets with the same `hint_for` (usually all: none) share one message.
        let mut shared: Vec<(Option<NodeId>, Arc<Request>)> = Vec::new();
        for t in others {
            let msg = match shared.iter().find(|(h, _)| *h == t.hint_for) {
                Some((_, m)) => Arc::clone(m),
                None => {
                    let m = Arc::new(Request::Replicate {
                        key: key.clone(),
                        set: Arc::clone(&set),
                        hint_for: t.hint_for.as_ref().map(|o| o.to_string()),
                    });
                    shared.push((t.hint_for.clone(), Arc::clone(&m)));
                    m
                }
            };
            self.send(t.node.clone(), msg, MsgCont::WriteTarget { flow, node: t.node });
        }
        let deadline = self.now + self.config.request_timeout_ms;
        self.timer(deadline, Timer::WriteDeadline(flow));
        if let Some(w) = self.writes.get_mut(&flow) {
            w.deadline = Some(deadline);
        }
        if self.mutated(Mutant::QuorumBeforeLocalSync) {
            let me = self.config.id.clone();
            if let Some(w) = self.writes.get_mut(&flow) {
                w.wc.on_ack(&me, context);
            }
        } else {
            self.store(
                StoreOp::WaitDurable { lsn: coordinated.lsn },
                StoreCont::LocalDurable { flow },
            );
        }
        self.advance_write(flow);
    }

    pub(super) fn local_durable(&mut self, flow: u64, result: Result<StoreResult>) {
        let me = self.config.id.clone();
        let Some(w) = self.writes.get_mut(&flow) else { return };
        match (result, &w.written) {
            (Ok(_), Some((_, _, context))) => {
                let vv = context.clone();
                w.wc.on_ack(&me, vv);
            }
            _ => {
                w.wc.on_failure(&me);
            }
        }
        self.advance_write(flow);
    }

    pub(super) fn write_target_reply(
        &mut self,
        flow: u64,
        node: NodeId,
        result: std::result::Result<Response, SendError>,
    ) {
        let Some(w) = self.writes.get_mut(&flow) else { return };
        match result {
            Ok(Response::Ack { vv }) => {
                w.wc.on_ack(&node, vv);
            }
            _ => {
                w.wc.on_failure(&node);
            }
        }
        self.advance_write(flow);
    }

    pub(super) fn write_deadline(&mut self, flow: u64) {
        let Some(w) = self.writes.get_mut(&flow) else { return };
        if w.written.is_none() {
            return;
        }
        w.wc.on_timeout();
        self.advance_write(flow);
    }

    pub(super) fn write_answer_due(&mut self, flow: u64) {
        self.advance_write(flow);
    }

    /// Answers when due, and starts the tail once every target answered (or timed out).
    fn advance_write(&mut self, flow: u64) {
        let now = self.now;
        let Some(w) = self.writes.get_mut(&flow) else { return };
        if w.written.is_none() {
            return;
        }
        let all_in = w.wc.pending().is_empty();
        if !w.answered && w.answer_at.is_none() && w.wc.outcome().is_decided() {
            let at = now + grace(now.saturating_sub(w.started));
            w.answer_at = Some(at);
            self.timers.insert((at, Timer::WriteAnswer(flow)));
        }
        let Some(w) = self.writes.get_mut(&flow) else { return };
        if !w.answered && (all_in || w.answer_at.is_some_and(|t| now >= t)) {
            w.answered = true;
            self.answer_write(flow);
        }
        let Some(w) = self.writes.get_mut(&flow) else { return };
        if all_in && !w.settled {
            w.settled = true;
            self.hint_missed_targets(flow);
        }
        self.maybe_finish_write(flow);
    }

    fn answer_write(&mut self, flow: u64) {
        let me = self.config.id.clone();
        let Some(w) = self.writes.get(&flow) else { return };
        let Some((_, dot, context)) = &w.written else { return };
        let mut report = w.wc.report();
        for owner in &w.uncovered {
            report.hinted.push(Hint { owner: owner.clone(), holder: me.clone() });
        }
        if report.quorum_reached {
            self.stats.writes_ok += 1;
        } else {
            self.stats.write_quorum_failures += 1;
        }
        let outcome = WriteOutcome {
            node: me.to_string(),
            report,
            context: context.clone(),
            dot: dot.clone(),
        };
        let reply = w.reply;
        match reply {
            ReplyTo::Client(id) => self.answer(id, finish_write(outcome).map(Answer::Written)),
            ReplyTo::Peer(id) => self.respond(id, Response::Written(Box::new(outcome))),
        }
    }

    /// Stores, on this coordinator, hints for the owners of targets that failed or timed out.
    fn hint_missed_targets(&mut self, flow: u64) {
        let me = self.config.id.clone();
        let Some(w) = self.writes.get_mut(&flow) else { return };
        let Some((set, _, _)) = &w.written else { return };
        let report = w.wc.report();
        let mut owners = Vec::new();
        for node in report.failed.iter().chain(&report.timed_out) {
            let Some(t) = w.targets.iter().find(|t| &t.node == node) else { continue };
            let owner = t.hint_for.clone().unwrap_or_else(|| t.node.clone());
            if owner != me && !owners.contains(&owner) {
                owners.push(owner);
            }
        }
        w.hint_stores = owners.len();
        let (key, set) = (w.key.clone(), Arc::clone(set));
        for owner in owners {
            let op = StoreOp::StoreHint {
                owner: owner.clone(),
                key: HintKey::Object(key.clone()),
                set: HintSet::Object((*set).clone()),
            };
            self.store(op, StoreCont::MissedHint { flow, owner });
        }
    }

    pub(super) fn missed_hint_stored(
        &mut self,
        flow: u64,
        owner: NodeId,
        result: Result<StoreResult>,
    ) {
        let Some(w) = self.writes.get_mut(&flow) else { return };
        w.hint_stores = w.hint_stores.saturating_sub(1);
        let key = w.key.clone();
        match result {
            Ok(StoreResult::Merged(vv)) => {
                tracing::info!(%owner, key = %key.name, "stored a hint for a replica that missed a write");
                self.hints.record(HintKey::Object(key), owner, &vv);
                self.stats.hints_stored += 1;
            }
            Ok(_) => tracing::error!(%owner, "unexpected store result for a hint"),
            Err(e) => tracing::error!(%owner, error = %e, "could not store a hint"),
        }
        self.maybe_finish_write(flow);
    }

    fn maybe_finish_write(&mut self, flow: u64) {
        if let Some(w) = self.writes.get(&flow)
            && w.answered
            && w.settled
            && w.hint_stores == 0
            && let Some(w) = self.writes.remove(&flow)
        {
            self.forget_write_timers(flow, &w);
        }
    }

    /// The local step failed: answer the error, nothing was sent.
    fn fail_write(&mut self, flow: u64, e: Error) {
        if let Some(w) = self.writes.remove(&flow) {
            self.forget_write_timers(flow, &w);
            match w.reply {
                ReplyTo::Client(id) => self.answer(id, Err(e)),
                ReplyTo::Peer(id) => self.respond(
                    id,
                    Response::Error { code: e.code().to_owned(), message: e.to_string() },
                ),
            }
        }
    }

    /// Removes a finished write's timers (a stale timer would still wake the executor).
    fn forget_write_timers(&mut self, flow: u64, w: &WriteFlow) {
        if let Some(at) = w.deadline {
            self.timers.remove(&(at, Timer::WriteDeadline(flow)));
        }
        if let Some(at) = w.answer_at {
            self.timers.remove(&(at, Timer::WriteAnswer(flow)));
        }
    }

    /// A client delete: a quorum read first (see DELETES).
    pub(super) fn start_delete(
        &mut self,
        client: ClientId,
        key: ObjectKey,
        context: Option<VersionVector>,
        w: usize,
        lww: bool,
        at_ms: u64,
    ) {
        let flow = self.fresh_id();
        let r = self.config.r;
        self.deletes.insert(flow, DeleteFlow { client, key: key.clone(), context, w, lww, at_ms });
        self.start_read(super::read::ReadFor::Delete(flow), key, r, lww);
    }

    /// The delete's read is done.
    pub(super) fn delete_read(&mut self, flow: u64, read: Result<SiblingSet>) {
        let Some(d) = self.deletes.remove(&flow) else { return };
        let set = match read {
            Ok(s) => s,
            Err(e) => return self.answer(d.client, Err(e)),
        };
        if set.is_deleted() {
            let e = Error::NoSuchKey { name: d.key.name.clone(), context: set.join() };
            return self.answer(d.client, Err(e));
        }
        if let Some(ctx) = &d.context
            && !d.lww
            && !set.context_covers_live(ctx)
        {
            return self.answer(d.client, Err(Error::StaleContext { live: set.live_count() }));
        }
        let overwrite = d.context.is_none();
        let req = WriteRequest {
            key: d.key,
            op: WriteOp::Delete { timestamp_ms: d.at_ms },
            context: Some(d.context.unwrap_or_else(|| set.join())),
            overwrite,
            w: d.w,
            lww: d.lww,
            excluded: Vec::new(),
        };
        self.start_forward(ReplyTo::Client(d.client), req);
    }
}

/// A write outcome as the client sees it: `Ok` at W, otherwise `WriteQuorum` with the report.
pub fn finish_write(outcome: WriteOutcome) -> Result<WriteOutcome> {
    if outcome.report.quorum_reached {
        Ok(outcome)
    } else {
        Err(Error::WriteQuorum {
            acked: outcome.report.replicas_written.len(),
            required: outcome.report.required,
            node: outcome.node.clone(),
            context: outcome.context,
            report: Box::new(outcome.report),
        })
    }
}
