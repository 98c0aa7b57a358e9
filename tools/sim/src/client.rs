//! The simulated clients and their workload, recorded for the checker.
//!
//! WORKLOAD
//! ========
//! Like `tools/faults/src/workload.rs`: each client runs one operation at a time, each through
//! a random node that is not down (a client does not know about pauses or partitions), with a
//! think time between operations. Every write introduces one element `c<client>.<n>`, unique in
//! the run; an object's content is a JSON array of elements (see `cairn_faults::history`).
//! Each operation is one of:
//! - **read-modify-write** of a hot key (a few keys, renamed every [`HOT_EPOCH_MS`]): a
//!   coordinated `Get` (R = 2, sometimes 1 or 3), then a `Put` of the union of every live
//!   sibling's elements plus a new one, with the read's context;
//! - **blind write** of a hot key: a `Put` *without* context (Dynamo's default), which stays a
//!   sibling of what it did not see — the case that exposes a reused dot;
//! - **unique write**: a `Put` of a key only this client ever writes, without context;
//! - **overwrite**: a `Get` of one of the client's unique keys whose one write was
//!   acknowledged; if the read shows exactly that version, a `Put` with `overwrite: true` (it
//!   supersedes whatever the coordinator holds) of its element plus a new one. Only there: an
//!   overwrite drops versions its client never saw, which the history model cannot describe
//!   (it would report them lost); on such a key the coordinator can hold nothing but the
//!   version the read returned, so the overwrite is a read-modify-write in the model;
//! - **delete / re-create** of one of the client's own keys: a `Get`; if something is live, a
//!   `Delete` with the read's context, else a `Put` of a new element with the (404) context;
//! - **listing** of the bucket (answer not checked: it exercises the scatter-gather path).
//!
//! With `--lww-control` every request asks for last-writer-wins resolution (an `lww` bucket):
//! concurrent writes are then lost by design, and the checker must say so.
//!
//! Writes use W = 2, sometimes 1 (legal, and what exposes a coordinator that counts its own
//! copy before it is durable) or 3. One more client creates and deletes two other buckets now
//! and then (the registry, its hints and anti-entropy; checked only for convergence).
//!
//! OUTCOMES
//! ========
//! A write or delete is recorded when sent, with its outcome: `Ok` for an answer; `Failed` for
//! a certain refusal — connection refused (never sent), `NoSuchKey`, `StaleContext`,
//! `TooManySiblings`, `InvalidQuorum`, a delete whose quorum read failed (nothing was written),
//! a forwarded write the coordinator refused with one of those codes; `Indeterminate` for
//! everything else: `WriteQuorum`, `Unavailable`, storage errors, and no answer within the
//! client's timeout (the node crashed or was paused). A read that fails aborts its operation
//! before anything is written (counted, not recorded).

use std::collections::BTreeSet;

use cairn_faults::history::{Op, OpKind, Outcome};
use cairn_replication::node::buckets::ConflictPolicy;
use cairn_replication::node::{Answer, ClientOp, MAX_GRACE_MS, ObjectKey, ReadOutcome};
use cairn_replication::{Body, Error, Meta, NodeId, VersionVector};

use crate::rng::Rng;
use crate::world::{Ev, Reply, Status, Who, World};

/// Hot keys get new names this often (bounds the size of their content).
pub const HOT_EPOCH_MS: u64 = 5_000;
/// Delete/re-create keys per client.
pub const DR_KEYS: u64 = 3;
/// The bucket every object lives in.
pub const BUCKET: &str = "sim";

/// One simulated client.
pub struct Client {
    rng: Rng,
    /// Elements introduced so far.
    elems: u64,
    busy: Option<Busy>,
    /// Unique keys whose one write was acknowledged, with its element: overwrite candidates.
    overwritable: Vec<(String, String)>,
    /// The bucket churn client (registry ops only).
    registry: bool,
    /// Reads that failed (their operation was not sent).
    pub reads_failed: u64,
}

struct Busy {
    cid: u64,
    node: usize,
    stage: Stage,
}

enum Stage {
    /// A read whose answer decides the write.
    Read(Then),
    /// A recorded write or delete (index into the history).
    Write { op: usize, key: String, elem: Option<String>, delete: bool, unique: bool },
    /// Anything whose answer is not checked.
    Other,
}

enum Then {
    Rmw(String),
    Overwrite(String, String),
    Recreate(String),
}

impl Client {
    fn new(rng: Rng, registry: bool) -> Client {
        Client { rng, elems: 0, busy: None, overwritable: Vec::new(), registry, reads_failed: 0 }
    }

    /// True while an operation waits for its answer.
    pub fn busy(&self) -> bool {
        self.busy.is_some()
    }
}

/// The outcome of a write or delete that got an error answer (see OUTCOMES).
pub fn error_outcome(e: &Error, delete: bool) -> Outcome {
    match e {
        Error::NoSuchKey { .. }
        | Error::StaleContext { .. }
        | Error::TooManySiblings { .. }
        | Error::InvalidQuorum(_)
        | Error::InvalidContext(_) => Outcome::Failed,
        // A delete answers its quorum read's failure before writing anything.
        Error::ReadQuorum { .. } if delete => Outcome::Failed,
        Error::Remote { code, .. } if code == "TooManySiblings" || code == "InvalidArgument" => {
            Outcome::Failed
        }
        _ => Outcome::Indeterminate,
    }
}

/// The elements of each live sibling of a read (`Err`: a body that is not a JSON array of
/// strings, which no client writes).
pub fn live_contents(o: &ReadOutcome) -> std::result::Result<Vec<BTreeSet<String>>, String> {
    o.set
        .live()
        .map(|s| match &s.value.body {
            Body::Bytes(b) => serde_json::from_slice::<BTreeSet<String>>(b)
                .map_err(|e| format!("content of {:?} is not a JSON array: {e}", s.dot)),
            Body::Tombstone => Ok(BTreeSet::new()),
            Body::Chunked(_) => Err("the simulator writes no chunked versions".into()),
        })
        .collect()
}

impl World {
    /// The object key of `name`.
    pub fn object(&self, name: &str) -> ObjectKey {
        ObjectKey { bucket: BUCKET.into(), incarnation: self.incarnation, name: name.into() }
    }

    /// How long a client waits for an answer.
    pub fn client_timeout_ms(&self) -> u64 {
        3 * self.settings.request_timeout_ms + 2 * MAX_GRACE_MS + 100
    }

    /// Creates the workload clients and the bucket churn client.
    pub fn add_clients(&mut self) {
        for _ in 0..self.settings.clients {
            let rng = self.rng.fork();
            self.clients.push(Client::new(rng, false));
        }
        let rng = self.rng.fork();
        self.clients.push(Client::new(rng, true));
    }

    /// Clients start their operations.
    pub fn start_clients(&mut self) {
        self.clients_on = true;
        for c in 0..self.clients.len() {
            let at = self.now + self.clients[c].rng.range(0, 50);
            self.push(at, Ev::ClientWake { client: c });
        }
    }

    fn client_request(&mut self, c: usize, node: usize, op: ClientOp, stage: Stage) {
        let cid = self.client_send(Who::Client(c), node, op);
        self.clients[c].busy = Some(Busy { cid, node, stage });
        let at = self.now + self.client_timeout_ms();
        self.push(at, Ev::ClientTimeout { client: c, cid });
    }

    fn client_done(&mut self, c: usize) {
        let (lo, hi) = self.settings.think;
        let think = if self.clients[c].registry {
            self.clients[c].rng.range(500, 2_000)
        } else {
            self.clients[c].rng.range(lo, hi)
        };
        self.push(self.now + think, Ev::ClientWake { client: c });
    }

    fn new_elem(&mut self, c: usize) -> String {
        let cl = &mut self.clients[c];
        cl.elems += 1;
        format!("c{c}.{}", cl.elems)
    }

    fn write_quorum(&mut self, c: usize) -> usize {
        match self.clients[c].rng.below(100) {
            0..=14 => 1,
            15..=19 => 3,
            _ => crate::world::W,
        }
    }

    pub(crate) fn client_wake(&mut self, c: usize) {
        if !self.clients_on || self.clients[c].busy.is_some() {
            return;
        }
        let live: Vec<usize> =
            (0..self.nodes.len()).filter(|n| self.nodes[*n].status != Status::Down).collect();
        if live.is_empty() {
            return self.client_done(c);
        }
        let node = live[self.clients[c].rng.index(live.len())];
        if self.clients[c].registry {
            let name = format!("x{}", self.clients[c].rng.below(2));
            let op = if self.clients[c].rng.chance(500) {
                let incarnation = self.clients[c].rng.next_u64();
                ClientOp::CreateBucket {
                    name,
                    policy: ConflictPolicy::Siblings,
                    incarnation,
                    created_ms: self.wall(node),
                }
            } else {
                ClientOp::DeleteBucket { name, at_ms: self.wall(node) }
            };
            return self.client_request(c, node, op, Stage::Other);
        }
        let roll = self.clients[c].rng.below(100);
        let r = match self.clients[c].rng.below(100) {
            0..=9 => 1,
            10..=14 => 3,
            _ => crate::world::R,
        };
        let hot = format!(
            "hot-{}-{}",
            self.now / HOT_EPOCH_MS,
            self.clients[c].rng.below(self.settings.hot_keys as u64)
        );
        let lww = self.lww;
        let read = |key: &ObjectKey, r| ClientOp::Get { key: key.clone(), r, lww, local: false };
        match roll {
            0..=34 => {
                let op = read(&self.object(&hot), r);
                self.client_request(c, node, op, Stage::Read(Then::Rmw(hot)));
            }
            35..=49 => self.blind_write(c, node, hot, false),
            50..=56 if !self.clients[c].overwritable.is_empty() => {
                let cl = &mut self.clients[c];
                let i = cl.rng.index(cl.overwritable.len());
                let (key, elem) = cl.overwritable.swap_remove(i);
                let op = read(&self.object(&key), crate::world::R);
                self.client_request(c, node, op, Stage::Read(Then::Overwrite(key, elem)));
            }
            50..=74 => {
                let key = format!("u-c{c}-{}", self.clients[c].elems + 1);
                self.blind_write(c, node, key, true);
            }
            75..=94 => {
                let key = format!("dr-c{c}-{}", self.clients[c].rng.below(DR_KEYS));
                let op = read(&self.object(&key), crate::world::R);
                self.client_request(c, node, op, Stage::Read(Then::Recreate(key)));
            }
            _ => {
                let op = ClientOp::List {
                    bucket: BUCKET.into(),
                    incarnation: self.incarnation,
                    prefix: String::new(),
                    start_after: None,
                    limit: 50,
                };
                self.client_request(c, node, op, Stage::Other);
            }
        }
    }

    /// A `Put` without context of `[elem]` (`unique`: the key's only write).
    fn blind_write(&mut self, c: usize, node: usize, key: String, unique: bool) {
        let elem = self.new_elem(c);
        let content = BTreeSet::from([elem.clone()]);
        self.write(c, node, key, elem, content, BTreeSet::new(), None, false, unique);
    }

    /// Sends a `Put` of `content` and records it.
    #[allow(clippy::too_many_arguments)]
    fn write(
        &mut self,
        c: usize,
        node: usize,
        key: String,
        elem: String,
        content: BTreeSet<String>,
        saw: BTreeSet<String>,
        context: Option<VersionVector>,
        overwrite: bool,
        unique: bool,
    ) {
        let body = serde_json::to_vec(&content).unwrap_or_default();
        let meta = Meta {
            size: body.len() as u64,
            content_type: "application/json".into(),
            etag: format!("{:016x}", fnv(&body)),
            timestamp_ms: self.wall(node),
            file_name: None,
        };
        let w = self.write_quorum(c);
        let op = ClientOp::Put {
            key: self.object(&key),
            meta,
            body: Body::Bytes(body),
            context,
            overwrite,
            w,
            lww: self.lww,
        };
        let idx = self.record(c, &key, OpKind::Write { elem: elem.clone() }, saw);
        let stage = Stage::Write { op: idx, key, elem: Some(elem), delete: false, unique };
        self.client_request(c, node, op, stage);
    }

    fn record(&mut self, c: usize, key: &str, kind: OpKind, saw: BTreeSet<String>) -> usize {
        self.history.push(Op {
            client: c,
            key: key.to_owned(),
            kind,
            saw,
            outcome: Outcome::Indeterminate,
            at_ms: self.now,
        });
        self.history.len() - 1
    }

    fn after_read(&mut self, c: usize, node: usize, then: Then, read: ReadOutcome) {
        let live = match live_contents(&read) {
            Ok(l) => l,
            Err(e) => {
                self.breaches.push(format!("client {c} read: {e}"));
                return self.client_done(c);
            }
        };
        let saw: BTreeSet<String> = live.iter().flatten().cloned().collect();
        let context = Some(read.set.join());
        match then {
            Then::Rmw(key) => {
                let elem = self.new_elem(c);
                let mut content = saw.clone();
                content.insert(elem.clone());
                self.write(c, node, key, elem, content, saw, context, false, false);
            }
            Then::Overwrite(key, first) => {
                if live.len() != 1 || saw != BTreeSet::from([first]) {
                    // Not exactly the one version: an overwrite could drop one it did not see.
                    return self.client_done(c);
                }
                let elem = self.new_elem(c);
                let mut content = saw.clone();
                content.insert(elem.clone());
                self.write(c, node, key, elem, content, saw, context, true, false);
            }
            Then::Recreate(key) if live.is_empty() => {
                let elem = self.new_elem(c);
                let content = BTreeSet::from([elem.clone()]);
                self.write(c, node, key, elem, content, saw, context, false, false);
            }
            Then::Recreate(key) => {
                let w = self.write_quorum(c);
                let op = ClientOp::Delete {
                    key: self.object(&key),
                    context,
                    w,
                    lww: self.lww,
                    at_ms: self.wall(node),
                };
                let idx = self.record(c, &key, OpKind::Delete, saw);
                let stage = Stage::Write { op: idx, key, elem: None, delete: true, unique: false };
                self.client_request(c, node, op, stage);
            }
        }
    }

    pub(crate) fn client_answer(&mut self, c: usize, cid: u64, reply: Reply) {
        if self.clients[c].busy.as_ref().is_none_or(|b| b.cid != cid) {
            return;
        }
        let Some(busy) = self.clients[c].busy.take() else { return };
        match busy.stage {
            Stage::Read(then) => match reply.into_answer() {
                Some(Ok(Answer::Read(o))) => self.after_read(c, busy.node, then, o),
                _ => {
                    self.clients[c].reads_failed += 1;
                    self.client_done(c);
                }
            },
            Stage::Write { op, key, elem, delete, unique } => {
                let answer = reply.into_answer();
                if let (Some(dbg), Some(Ok(Answer::Written(w)))) =
                    (std::env::var_os("CAIRN_SIM_TRACE_KEY"), &answer)
                    && dbg.to_str() == Some(key.as_str())
                {
                    eprintln!(
                        "DBG {} ms: {key} {:?} w {} acked by {} written {:?} hinted {:?} pref {:?} ctx {:?}",
                        self.now,
                        elem,
                        w.report.required,
                        w.node,
                        w.report.replicas_written,
                        w.report.hinted,
                        w.report.pref_list,
                        w.context
                    );
                }
                let outcome = match &answer {
                    None => Outcome::Failed,
                    Some(Ok(Answer::Written(_))) => Outcome::Ok,
                    Some(Ok(other)) => {
                        self.breaches.push(format!("a write answered {other:?}"));
                        Outcome::Indeterminate
                    }
                    Some(Err(e)) => error_outcome(e, delete),
                };
                self.history[op].outcome = outcome;
                if let Some(Ok(Answer::Written(o))) = &answer {
                    // Which nodes hold it (owners or fallbacks): what a force-removal takes.
                    let on: BTreeSet<NodeId> = o.report.replicas_written.iter().cloned().collect();
                    // A node force-removed before this answer reached the client took its copy
                    // with it: excused as the removal excuses what was acknowledged before it.
                    let gone_copy = on.iter().any(|n| {
                        self.members
                            .iter()
                            .position(|m| m == n)
                            .is_some_and(|i| self.gone.contains(&i))
                    });
                    if gone_copy {
                        self.reduced.insert(key.clone());
                        if on.len() == 1 {
                            self.excused.insert(key.clone());
                        }
                    }
                    let acked = crate::world::Acked { at: self.now, dot: o.dot.clone(), on };
                    self.acked_on.entry(key.clone()).or_default().push(acked);
                }
                if unique
                    && outcome == Outcome::Ok
                    && let Some(elem) = elem
                {
                    self.clients[c].overwritable.push((key, elem));
                }
                self.client_done(c);
            }
            Stage::Other => self.client_done(c),
        }
    }

    pub(crate) fn client_timeout(&mut self, c: usize, cid: u64) {
        if self.clients[c].busy.as_ref().is_some_and(|b| b.cid == cid) {
            // A write stays indeterminate; a read's operation is abandoned.
            if let Some(Busy { stage: Stage::Read(_), .. }) = self.clients[c].busy.take() {
                self.clients[c].reads_failed += 1;
            }
            self.client_done(c);
        }
    }
}

/// FNV-1a, for etags.
fn fnv(bytes: &[u8]) -> u64 {
    bytes
        .iter()
        .fold(0xcbf2_9ce4_8422_2325, |h, b| (h ^ u64::from(*b)).wrapping_mul(0x100_0000_01b3))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn certain_refusals_fail_and_the_rest_is_indeterminate() {
        let name = "k".to_owned();
        let no_key = Error::NoSuchKey { name, context: VersionVector::new() };
        assert_eq!(error_outcome(&no_key, true), Outcome::Failed);
        assert_eq!(error_outcome(&Error::StaleContext { live: 1 }, true), Outcome::Failed);
        let limit = Error::TooManySiblings { count: 65, limit: 64 };
        assert_eq!(error_outcome(&limit, false), Outcome::Failed);
        let remote = |code: &str| Error::Remote {
            node: "n1".into(),
            code: code.into(),
            message: String::new(),
        };
        assert_eq!(error_outcome(&remote("TooManySiblings"), false), Outcome::Failed);
        assert_eq!(error_outcome(&remote("StorageError"), false), Outcome::Indeterminate);
        assert_eq!(error_outcome(&Error::Unavailable("x".into()), false), Outcome::Indeterminate);
        assert_eq!(error_outcome(&Error::Storage("x".into()), false), Outcome::Indeterminate);
    }
}
