//! Coordinating client requests: writes (with forwarding and the sloppy-quorum fan-out), reads
//! (with read repair), bucket operations and listings.
//!
//! COORDINATION
//! ============
//! A write is coordinated by the first reachable node of the key's extended preference list (an
//! owner whenever one is reachable). Any other node forwards the write there, naming the nodes it
//! skipped as unreachable, so the receiver coordinates even if its own view of those nodes differs
//! (no forwarding loops). The coordinator applies the DVV update to its own replica under the
//! engine's per-key lock (this is where the new dot is created: from the coordinator's own stored
//! history, so a dot is never reused), sends the new set to the other targets, and answers as soon
//! as W acknowledgements are in or W can no longer be reached. Targets that answer later are still
//! awaited in the background until the request timeout; every target that failed or timed out
//! gets a hint stored on the coordinator for its owner, so it converges by hinted handoff even
//! though it was believed reachable when the write started.
//!
//! Reads are coordinated by the node that receives them: the first N reachable nodes are asked,
//! the answer is the merge of the first R replies, and after all replies (or the timeout) every
//! replica whose set does not cover the merge is sent the merge (read repair).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use bytes::Bytes;
use cairn_membership::Transport;
use cairn_replication::quorum::{ReadReport, Target, WriteReport, coordinator_for};
use cairn_replication::{
    Actor, Dot, NodeId, ReadCoordinator, Sibling, SiblingSet, VersionVector, WriteCoordinator,
};
use rand::seq::IndexedRandom;
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use crate::node::buckets::{self, BucketEntry, BucketInfo, ConflictPolicy};
use crate::node::keys::{HintKey, ObjectKey};
use crate::node::messages::{self, ListEntry, Request, Response, WriteOp, WriteRequest};
use crate::node::metrics::Metrics;
use crate::node::{Node, NodeError, now_ms};

/// Most names one listing page returns.
pub const MAX_LIST_LIMIT: usize = 1000;

/// What a coordinated write did (also sent back to a forwarding node).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WriteOutcome {
    /// The coordinator: where the write took place.
    pub node: String,
    /// Per-replica report.
    pub report: WriteReport,
    /// The causal context after the write (the coordinator's version vector for the key).
    pub context: VersionVector,
    /// The dot of the new version.
    pub dot: Dot,
}

/// What a coordinated read found.
#[derive(Debug, Clone)]
pub struct ReadOutcome {
    /// The node that coordinated the read.
    pub node: String,
    /// The merged sibling set (resolved to one sibling on `lww` buckets).
    pub set: SiblingSet,
    /// Per-replica report (`None` for a `?local=true` read).
    pub report: Option<ReadReport>,
}

/// One page of a bucket listing.
#[derive(Debug, Clone)]
pub struct Listing {
    /// Live objects, in name order.
    pub entries: Vec<ListEntry>,
    /// Whether more may follow (some member had a full page).
    pub more: bool,
    /// Members that did not answer (unreachable or failed): objects only they hold may be
    /// missing from the page.
    pub missing: Vec<String>,
}

/// What a bucket create or delete did.
#[derive(Debug, Clone, Serialize)]
pub struct BucketOutcome {
    /// The node that coordinated it.
    pub node: String,
    /// The bucket as it now is (for a create).
    pub bucket: Option<BucketInfo>,
    /// Members that stored the registry change.
    pub replicas_written: Vec<String>,
    /// Members that were unreachable or failed: they get the change by hinted handoff.
    pub hinted: Vec<String>,
}

/// How much later than the request timeout [`Node::rpc`] stops waiting for the transport.
const RPC_TIMEOUT_MARGIN: std::time::Duration = std::time::Duration::from_millis(500);

impl<T: Transport> Node<T> {
    /// Sends one request to another node, bounded by the request timeout.
    pub async fn rpc(&self, to: &NodeId, req: &Request) -> Result<Response, NodeError> {
        let payload =
            messages::encode(req).map_err(|e| NodeError::Internal(format!("encoding: {e}")))?;
        self.rpc_encoded(to, payload).await
    }

    /// [`Node::rpc`] with the request already encoded.
    pub async fn rpc_encoded(&self, to: &NodeId, payload: Bytes) -> Result<Response, NodeError> {
        let call = self.transport.request(to.as_str(), payload);
        // The transport bounds the request by the same timeout and reports how it failed (not
        // delivered, or possibly delivered); this outer bound only guards against a transport
        // that does not, so it fires later.
        let bound = self.settings.request_timeout + RPC_TIMEOUT_MARGIN;
        let bytes = match tokio::time::timeout(bound, call).await {
            Ok(Ok(b)) => b,
            Ok(Err(e)) if e.certainly_not_delivered() => {
                return Err(NodeError::NotDelivered(format!("{to}: {e}")));
            }
            Ok(Err(e)) => return Err(NodeError::Unavailable(format!("{to}: {e}"))),
            Err(_) => return Err(NodeError::Unavailable(format!("{to}: timed out"))),
        };
        match messages::decode::<Response>(&bytes) {
            Ok(Response::Error { code, message }) => {
                Err(NodeError::Remote { node: to.to_string(), code, message })
            }
            Ok(r) => Ok(r),
            Err(e) => Err(NodeError::Corrupt(format!("answer from {to}: {e}"))),
        }
    }

    /// The live bucket `name`, or `NoSuchBucket`.
    pub async fn bucket(&self, name: &str) -> Result<BucketInfo, NodeError> {
        let n = name.to_owned();
        let set = self.store.blocking(move |s| s.bucket(&n)).await?;
        set.as_ref()
            .and_then(|s| buckets::resolve(name, s))
            .ok_or_else(|| NodeError::NoSuchBucket(name.to_owned()))
    }

    /// Every live bucket, by name.
    pub async fn list_buckets(&self) -> Result<Vec<BucketInfo>, NodeError> {
        let reg = self.store.blocking(|s| s.registry()).await?;
        Ok(reg.iter().filter_map(|(name, set)| buckets::resolve(name, set)).collect())
    }

    /// Creates a bucket (error if a live one of that name exists).
    pub async fn create_bucket(
        self: &Arc<Self>,
        name: &str,
        policy: ConflictPolicy,
    ) -> Result<BucketOutcome, NodeError> {
        let set = self
            .change_bucket(name, move |n, set| {
                if buckets::resolve(n, set).is_some() {
                    return Err(NodeError::BucketAlreadyExists(n.to_owned()));
                }
                Ok(BucketEntry {
                    incarnation: rand::random::<u64>(),
                    policy,
                    created_ms: now_ms(),
                    deleted: false,
                })
            })
            .await?;
        let mut outcome = self.replicate_bucket(name, set.clone()).await?;
        outcome.bucket = buckets::resolve(name, &set);
        Ok(outcome)
    }

    /// Deletes a bucket (and with it, in O(1), every file of its incarnation).
    pub async fn delete_bucket(self: &Arc<Self>, name: &str) -> Result<BucketOutcome, NodeError> {
        let set = self
            .change_bucket(name, |n, set| {
                if buckets::resolve(n, set).is_none() {
                    return Err(NodeError::NoSuchBucket(n.to_owned()));
                }
                Ok(BucketEntry {
                    incarnation: 0,
                    policy: ConflictPolicy::default(),
                    created_ms: now_ms(),
                    deleted: true,
                })
            })
            .await?;
        self.replicate_bucket(name, set).await
    }

    /// Writes a new registry entry for `name`, made by `entry` from the current set, superseding
    /// everything this node holds for the name (its whole version vector is the context).
    async fn change_bucket(
        &self,
        name: &str,
        entry: impl FnOnce(&str, &SiblingSet<BucketEntry>) -> Result<BucketEntry, NodeError>
        + Send
        + 'static,
    ) -> Result<SiblingSet<BucketEntry>, NodeError> {
        let n = name.to_owned();
        let actor = self.actor.clone();
        self.store
            .blocking(move |s| {
                s.coordinate_bucket(&n, |set| {
                    let new = entry(&n, set)?;
                    let ctx = set.join();
                    set.update(&ctx, new, &actor);
                    Ok(())
                })
            })
            .await
    }

    /// Sends a registry entry to every other member (hints for the unreachable and the failed);
    /// succeeds once W members (this one included, at most all members) stored it.
    async fn replicate_bucket(
        self: &Arc<Self>,
        name: &str,
        set: SiblingSet<BucketEntry>,
    ) -> Result<BucketOutcome, NodeError> {
        let reachable = self.reachable();
        let mut written = vec![self.id().to_string()];
        let mut hinted = Vec::new();
        let mut calls = tokio::task::JoinSet::new();
        for m in self.settings.members.iter().filter(|m| *m != self.id()) {
            if reachable.contains(m) {
                let node = Arc::clone(self);
                let m = m.clone();
                let req = Request::BucketReplicate {
                    name: name.to_owned(),
                    set: set.clone(),
                    hint_for: None,
                };
                calls.spawn(async move {
                    let r = node.rpc(&m, &req).await;
                    (m, r)
                });
            } else {
                hinted.push(m.clone());
            }
        }
        while let Some(joined) = calls.join_next().await {
            match joined {
                Ok((m, Ok(Response::Ack { .. }))) => written.push(m.to_string()),
                Ok((m, _)) => hinted.push(m),
                Err(e) => return Err(NodeError::Internal(format!("replication task: {e}"))),
            }
        }
        for m in &hinted {
            let (owner, n, s) = (m.to_string(), name.to_owned(), set.clone());
            let vv = self.store.blocking(move |st| st.store_bucket_hint(&owner, &n, &s)).await?;
            self.hints.lock().record(HintKey::Bucket(name.to_owned()), m.clone(), &vv);
            Metrics::inc(&self.metrics.hints_stored);
        }
        let required = self.settings.w.min(self.settings.members.len());
        let outcome = BucketOutcome {
            node: self.id().to_string(),
            bucket: None,
            replicas_written: written,
            hinted: hinted.iter().map(|m| m.to_string()).collect(),
        };
        if outcome.replicas_written.len() < required {
            return Err(NodeError::Unavailable(format!(
                "{} of {required} required members stored the bucket change; the others get it \
                 when they return",
                outcome.replicas_written.len()
            )));
        }
        Ok(outcome)
    }

    /// Live objects of a bucket, merged from every reachable member, in name order.
    pub async fn list_files(
        self: &Arc<Self>,
        bucket: &BucketInfo,
        prefix: &str,
        start_after: Option<&str>,
        limit: usize,
    ) -> Result<Listing, NodeError> {
        let limit = limit.clamp(1, MAX_LIST_LIMIT);
        let mut calls = tokio::task::JoinSet::new();
        let mut missing: BTreeSet<NodeId> = self.settings.members.iter().cloned().collect();
        for m in self.reachable() {
            let node = Arc::clone(self);
            let req = Request::List {
                bucket: bucket.name.clone(),
                incarnation: bucket.incarnation,
                prefix: prefix.to_owned(),
                start_after: start_after.map(str::to_owned),
                limit: limit as u32,
            };
            calls.spawn(async move {
                let r = node.list_at(&m, req).await;
                (m, r)
            });
        }
        let mut merged: BTreeMap<String, ListEntry> = BTreeMap::new();
        let mut answered = 0;
        let mut full_page = false;
        while let Some(joined) = calls.join_next().await {
            let part = match joined {
                Ok((m, Ok(part))) => {
                    missing.remove(&m);
                    part
                }
                Ok((m, Err(e))) => {
                    tracing::debug!(member = %m, error = %e, "a member did not answer a listing");
                    continue;
                }
                Err(e) => return Err(NodeError::Internal(format!("listing task: {e}"))),
            };
            answered += 1;
            full_page |= part.len() >= limit;
            for e in part {
                match merged.get_mut(&e.name) {
                    Some(have) => {
                        have.versions = have.versions.max(e.versions);
                        if e.meta.timestamp_ms > have.meta.timestamp_ms {
                            have.meta = e.meta;
                        }
                    }
                    None => {
                        merged.insert(e.name.clone(), e);
                    }
                }
            }
        }
        if answered == 0 {
            return Err(NodeError::Unavailable("no member answered the listing".into()));
        }
        let more = full_page || merged.len() > limit;
        Ok(Listing {
            entries: merged.into_values().take(limit).collect(),
            more,
            missing: missing.into_iter().map(|m| m.to_string()).collect(),
        })
    }

    async fn list_at(
        self: &Arc<Self>,
        m: &NodeId,
        req: Request,
    ) -> Result<Vec<ListEntry>, NodeError> {
        if m == self.id() {
            return self.serve_list(req).await;
        }
        match self.rpc(m, &req).await? {
            Response::Listing { entries } => Ok(entries),
            other => Err(NodeError::Internal(format!("unexpected answer to List: {other:?}"))),
        }
    }

    /// Answers a `List` request from the local replica.
    pub(crate) async fn serve_list(&self, req: Request) -> Result<Vec<ListEntry>, NodeError> {
        let Request::List { bucket, incarnation, prefix, start_after, limit } = req else {
            return Err(NodeError::Internal("not a List request".into()));
        };
        let limit = (limit as usize).min(MAX_LIST_LIMIT);
        self.store
            .blocking(move |s| s.list(&bucket, incarnation, &prefix, start_after.as_deref(), limit))
            .await
    }

    /// A client write received by this node: forwarded to the key's coordinator, or coordinated
    /// here. Fails with `WriteQuorum` (and the replica report) when fewer than W stored it.
    pub async fn write(self: &Arc<Self>, req: WriteRequest) -> Result<WriteOutcome, NodeError> {
        let ext = self.extended(&req.key);
        let mut reachable = self.reachable();
        let n = self.ring.n();
        for _ in 0..ext.len() {
            let coordinator = coordinator_for(&ext, n, &reachable, self.id())
                .ok_or_else(|| NodeError::Unavailable("no reachable coordinator".into()))?;
            if &coordinator == self.id() {
                let outcome = self.coordinate_write(req, &ext, &reachable).await?;
                return finish_write(outcome);
            }
            let mut fwd = req.clone();
            fwd.excluded =
                ext.iter().take_while(|m| **m != coordinator).map(|m| m.to_string()).collect();
            match self.rpc(&coordinator, &Request::Coordinate(fwd)).await {
                Ok(Response::Written(outcome)) => {
                    Metrics::inc(&self.metrics.forwarded);
                    return finish_write(*outcome);
                }
                Ok(other) => {
                    return Err(NodeError::Internal(format!(
                        "unexpected answer to Coordinate: {other:?}"
                    )));
                }
                // Only a request that never reached the coordinator may go to the next one: a
                // coordinator that timed out or dropped the connection may have applied it, and a
                // second coordinator would store the same write again under another dot (a
                // duplicate version that a later delete seeing only one copy would not remove).
                Err(NodeError::NotDelivered(why)) => {
                    tracing::warn!(%coordinator, why, "coordinator unreachable; trying the next");
                    reachable.remove(&coordinator);
                }
                Err(NodeError::Unavailable(why)) => {
                    return Err(NodeError::Unavailable(format!(
                        "the coordinator {coordinator} did not answer ({why}); the write may or may \
                         not have been applied: read the object before writing it again"
                    )));
                }
                Err(e) => return Err(e),
            }
        }
        Err(NodeError::Unavailable("every candidate coordinator failed".into()))
    }

    /// A client delete of `key`, received by this node (add-wins: it removes what it saw).
    ///
    /// A quorum read comes first: a key with no live version answers `NoSuchKey` and stores
    /// nothing (a delete of a missing key must not grow every replica's keydir), and a client
    /// `context` that covers none of the live versions answers `StaleContext` (the object changed
    /// since it was read; deleting would remove nothing a reader sees). Otherwise the tombstone is
    /// written like any write: under the client's context, or, without one, under the read's
    /// history merged with everything the coordinator holds, so it removes every version the
    /// read showed. A write concurrent with the delete survives it.
    pub async fn delete(
        self: &Arc<Self>,
        key: ObjectKey,
        context: Option<VersionVector>,
        w: usize,
        lww: bool,
        timestamp_ms: u64,
    ) -> Result<WriteOutcome, NodeError> {
        let read = self.read(key.clone(), self.settings.r, lww, false).await?;
        if read.set.is_deleted() {
            return Err(NodeError::NoSuchKey { name: key.name, context: read.set.join() });
        }
        if let Some(ctx) = &context
            && !lww
            && !read.set.context_covers_live(ctx)
        {
            return Err(NodeError::StaleContext { live: read.set.live_count() });
        }
        let overwrite = context.is_none();
        let req = WriteRequest {
            key,
            op: WriteOp::Delete { timestamp_ms },
            context: Some(context.unwrap_or_else(|| read.set.join())),
            overwrite,
            w,
            lww,
            excluded: Vec::new(),
        };
        self.write(req).await
    }

    /// Coordinates a write forwarded by another node (which skipped `req.excluded`).
    pub async fn coordinate_forwarded(
        self: &Arc<Self>,
        req: WriteRequest,
    ) -> Result<WriteOutcome, NodeError> {
        let ext = self.extended(&req.key);
        let mut reachable = self.reachable();
        for ex in &req.excluded {
            if ex != self.id().as_str()
                && let Ok(id) = NodeId::new(ex.clone())
            {
                reachable.remove(&id);
            }
        }
        self.coordinate_write(req, &ext, &reachable).await
    }

    /// The coordinator's side of a write. `Ok` also when the quorum was not reached (the report
    /// says so): the caller decides how to answer.
    async fn coordinate_write(
        self: &Arc<Self>,
        req: WriteRequest,
        ext: &[NodeId],
        reachable: &BTreeSet<NodeId>,
    ) -> Result<WriteOutcome, NodeError> {
        let n = self.ring.n();
        let mut wc = WriteCoordinator::new(ext, reachable, n, req.w, self.id())?;
        let targets: Vec<Target> = wc.targets().to_vec();
        let local_hint =
            targets.iter().find(|t| &t.node == self.id()).and_then(|t| t.hint_for.clone());

        // 1. The local step: the new dot comes from this node's own stored history of the key.
        let value = match req.op {
            WriteOp::Put { meta, body } => Sibling::bytes(meta, body),
            WriteOp::Delete { timestamp_ms } => Sibling::tombstone(timestamp_ms),
        };
        let (actor, max): (Actor, usize) = (self.actor.clone(), self.settings.max_siblings);
        let (key, context, overwrite, lww) = (req.key.clone(), req.context, req.overwrite, req.lww);
        let hint_owner = local_hint.as_ref().map(|o| o.to_string());
        // Owners with neither a target nor a fallback standing in for them (more owners down
        // than fallbacks available): this coordinator keeps a hint for each.
        let uncovered: Vec<NodeId> = wc
            .pref_list()
            .iter()
            .filter(|o| !targets.iter().any(|t| &t.node == *o || t.hint_for.as_ref() == Some(*o)))
            .cloned()
            .collect();
        let uncovered_names: Vec<String> = uncovered.iter().map(|o| o.to_string()).collect();
        // On the blocking pool (an append can roll the segment: an fdatasync and a hint file),
        // but without waiting for this write's own fdatasync: that is waited for below, while
        // the other replicas are asked.
        let (set, dot, hint_vv, uncovered_vv, pending) = self
            .store
            .blocking(move |s| {
                let mut dot = None;
                let (set, mut pending) = s.coordinate(&key, |set| {
                    // Overwrite: everything this coordinator holds, plus what the request's
                    // context covers (a delete without a client context carries its quorum
                    // read's).
                    let ctx = if overwrite || lww {
                        let mut c = set.join();
                        if let Some(read) = &context {
                            c.merge(read);
                        }
                        c
                    } else {
                        context.unwrap_or_default()
                    };
                    dot = Some(set.write(&ctx, value, &actor, max)?);
                    if lww {
                        set.resolve_lww();
                    } else if set.len() > max / 2 {
                        tracing::warn!(
                            key = %key.name, siblings = set.len(), limit = max,
                            "many concurrent versions: clients should write back with the read's context"
                        );
                    }
                    Ok(())
                })?;
                let hint_vv = match &hint_owner {
                    Some(owner) => {
                        let (vv, p) = s.store_hint_deferred(owner, &key, &set)?;
                        pending = pending.max(p);
                        Some(vv)
                    }
                    None => None,
                };
                let mut uncovered_vv = Vec::new();
                for owner in &uncovered_names {
                    let (vv, p) = s.store_hint_deferred(owner, &key, &set)?;
                    pending = pending.max(p);
                    uncovered_vv.push(vv);
                }
                let dot = dot.ok_or_else(|| NodeError::Internal("no dot created".into()))?;
                Ok((set, dot, hint_vv, uncovered_vv, pending))
            })
            .await?;
        if let (Some(owner), Some(vv)) = (local_hint, hint_vv) {
            self.hints.lock().record(HintKey::Object(req.key.clone()), owner, &vv);
            Metrics::inc(&self.metrics.hints_stored);
        }
        for (owner, vv) in uncovered.iter().zip(&uncovered_vv) {
            self.hints.lock().record(HintKey::Object(req.key.clone()), owner.clone(), vv);
            Metrics::inc(&self.metrics.hints_stored);
        }
        let context = set.join();

        // 2. Fan out to the other targets while the local write becomes durable: the local
        //    acknowledgement joins the others only after the fdatasync (group commit), so a
        //    write is acknowledged to the client only once W copies are durable, but the client
        //    no longer waits for the local sync and the remote ones one after the other.
        //    Targets with the same `hint_for` (usually all: none) share one encoded message.
        let (tx, mut rx) = mpsc::channel(targets.len().max(1));
        {
            let store = self.store.clone();
            let tx = tx.clone();
            let me = self.id().clone();
            let vv = context.clone();
            tokio::spawn(async move {
                let r = store.durable(pending).await.map(|()| Response::Ack { vv });
                let _ = tx.send((me, r)).await;
            });
        }
        let mut encoded: Vec<(Option<String>, Bytes)> = Vec::new();
        for t in targets.iter().filter(|t| &t.node != self.id()) {
            let hint_for = t.hint_for.as_ref().map(|o| o.to_string());
            let payload = match encoded.iter().find(|(h, _)| *h == hint_for) {
                Some((_, b)) => b.clone(),
                None => {
                    let msg = Request::Replicate {
                        key: req.key.clone(),
                        set: set.clone(),
                        hint_for: hint_for.clone(),
                    };
                    let b = messages::encode(&msg)
                        .map_err(|e| NodeError::Internal(format!("encoding: {e}")))?;
                    encoded.push((hint_for, b.clone()));
                    b
                }
            };
            let node = Arc::clone(self);
            let tx = tx.clone();
            let t = t.clone();
            tokio::spawn(async move {
                let r = node.rpc_encoded(&t.node, payload).await;
                let _ = tx.send((t.node, r)).await;
            });
        }
        drop(tx);

        // 3. Absorb answers; answer at the decision, keep listening until every target answered
        //    or the timeout, then leave hints for the targets that did not store the write.
        let started = Instant::now();
        let deadline = started + self.settings.request_timeout;
        let (done_tx, done_rx) = oneshot::channel::<WriteReport>();
        let node = Arc::clone(self);
        let key = req.key.clone();
        self.background.spawn(async move {
            let mut done_tx = Some(done_tx);
            // Once decided, the answer waits a short grace for the remaining targets, so that
            // in the common case (all replicas answer within moments) it reports every replica.
            let mut answer_at: Option<Instant> = None;
            loop {
                let now = Instant::now();
                if answer_at.is_none() && wc.outcome().is_decided() {
                    answer_at = Some(now + grace(now - started));
                }
                if answer_at.is_some_and(|t| now >= t)
                    && let Some(d) = done_tx.take()
                {
                    let _ = d.send(wc.report());
                }
                let wake = match (answer_at, done_tx.is_some()) {
                    (Some(t), true) => t.min(deadline),
                    _ => deadline,
                };
                match tokio::time::timeout_at(wake, rx.recv()).await {
                    Err(_) if wake < deadline => continue,
                    Ok(Some((from, Ok(Response::Ack { vv })))) => {
                        wc.on_ack(&from, vv);
                    }
                    Ok(Some((from, other))) => {
                        if let Err(e) = other {
                            tracing::debug!(%from, error = %e, "replica did not store a write");
                        }
                        wc.on_failure(&from);
                    }
                    Ok(None) => break,
                    Err(_) => {
                        wc.on_timeout();
                        break;
                    }
                }
            }
            let report = wc.report();
            if let Some(d) = done_tx.take() {
                let _ = d.send(report.clone());
            }
            node.hint_missed_targets(&key, &set, &targets, &report).await;
        });
        let report =
            done_rx.await.map_err(|_| NodeError::Internal("write coordinator stopped".into()))?;
        let mut report = report;
        for owner in uncovered {
            report
                .hinted
                .push(cairn_replication::quorum::Hint { owner, holder: self.id().clone() });
        }
        let m = &self.metrics;
        Metrics::inc(if report.quorum_reached { &m.writes_ok } else { &m.write_quorum_failures });
        Ok(WriteOutcome { node: self.id().to_string(), report, context, dot })
    }

    /// Stores, on this coordinator, hints for the owners of targets that failed or timed out.
    async fn hint_missed_targets(
        &self,
        key: &ObjectKey,
        set: &SiblingSet,
        targets: &[Target],
        report: &WriteReport,
    ) {
        let missed = report.failed.iter().chain(&report.timed_out);
        for node in missed {
            let Some(t) = targets.iter().find(|t| &t.node == node) else { continue };
            let owner = t.hint_for.clone().unwrap_or_else(|| t.node.clone());
            if &owner == self.id() {
                continue;
            }
            let (o, k, s) = (owner.to_string(), key.clone(), set.clone());
            match self.store.blocking(move |st| st.store_hint(&o, &k, &s)).await {
                Ok(vv) => {
                    self.hints.lock().record(HintKey::Object(key.clone()), owner.clone(), &vv);
                    Metrics::inc(&self.metrics.hints_stored);
                    tracing::info!(%owner, key = %key.name, "stored a hint for a replica that missed a write");
                }
                Err(e) => tracing::error!(%owner, error = %e, "could not store a hint"),
            }
        }
    }

    /// A client read coordinated by this node. `local` answers from this node's own data only.
    pub async fn read(
        self: &Arc<Self>,
        key: ObjectKey,
        r: usize,
        lww: bool,
        local: bool,
    ) -> Result<ReadOutcome, NodeError> {
        if local {
            let mut set = self.store.read(&key, &self.member_names())?.unwrap_or_default();
            if lww {
                set.resolve_lww();
            }
            return Ok(ReadOutcome { node: self.id().to_string(), set, report: None });
        }
        let ext = self.extended(&key);
        let reachable = self.reachable();
        let mut rc: ReadCoordinator =
            ReadCoordinator::new(&ext, &reachable, self.ring.n(), r, self.id())?;
        // Ask R replicas first (this one first); every `full_read_every`-th read asks all N.
        let seq = self.read_seq.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let every = u64::from(self.settings.full_read_every);
        let fanout = if every > 0 && seq.is_multiple_of(every) { usize::MAX } else { r };
        let first = rc.start(fanout, self.id());
        let (tx, mut rx) = mpsc::channel(rc.targets().len().max(1));
        let ask = {
            let node = Arc::clone(self);
            let key = key.clone();
            move |targets: Vec<cairn_replication::quorum::Target>,
                  tx: &mpsc::Sender<(NodeId, Result<Option<SiblingSet>, NodeError>)>| {
                for t in targets {
                    let node = Arc::clone(&node);
                    let tx = tx.clone();
                    let key = key.clone();
                    tokio::spawn(async move {
                        let r = node.read_at(&t.node, key).await;
                        let _ = tx.send((t.node, r)).await;
                    });
                }
            }
        };
        ask(first, &tx);
        let deadline = Instant::now() + self.settings.request_timeout;
        let speculate_at = Instant::now() + self.settings.read_speculate;
        let (done_tx, done_rx) = oneshot::channel::<(SiblingSet, ReadReport)>();
        let node = Arc::clone(self);
        self.background.spawn(async move {
            let mut done_tx = Some(done_tx);
            let mut speculated = false;
            loop {
                if rc.outcome().is_decided()
                    && let Some(d) = done_tx.take()
                {
                    let _ = d.send((rc.merged().clone(), rc.report()));
                }
                if rc.pending().is_empty() {
                    break;
                }
                let wake = if speculated || done_tx.is_none() { deadline } else { speculate_at };
                match tokio::time::timeout_at(wake, rx.recv()).await {
                    Ok(Some((from, Ok(set)))) => {
                        rc.on_reply(&from, set);
                    }
                    Ok(Some((from, Err(e)))) => {
                        tracing::debug!(%from, error = %e, "replica did not answer a read");
                        rc.on_failure(&from);
                        ask(rc.replacements(), &tx);
                    }
                    Ok(None) => break,
                    Err(_) if wake == speculate_at && !speculated => {
                        speculated = true;
                        ask(rc.ask_rest(), &tx);
                    }
                    Err(_) => {
                        rc.on_timeout();
                        break;
                    }
                }
            }
            drop(tx);
            if let Some(d) = done_tx.take() {
                let _ = d.send((rc.merged().clone(), rc.report()));
            }
            node.read_repair(&key, rc.merged(), &rc.repairs()).await;
        });
        let (mut set, report) =
            done_rx.await.map_err(|_| NodeError::Internal("read coordinator stopped".into()))?;
        if !report.quorum_reached {
            Metrics::inc(&self.metrics.read_quorum_failures);
            return Err(NodeError::ReadQuorum {
                answered: report.replicas_read.len(),
                required: report.required,
                report: Box::new(report),
            });
        }
        Metrics::inc(&self.metrics.reads_ok);
        if lww {
            set.resolve_lww();
        }
        Ok(ReadOutcome { node: self.id().to_string(), set, report: Some(report) })
    }

    async fn read_at(
        &self,
        node: &NodeId,
        key: ObjectKey,
    ) -> Result<Option<SiblingSet>, NodeError> {
        if node == self.id() {
            // Inline, not on the blocking pool: see `Store::read`.
            return self.store.read(&key, &self.member_names());
        }
        match self.rpc(node, &Request::Read { key }).await? {
            Response::Set { set } => Ok(set),
            other => Err(NodeError::Internal(format!("unexpected answer to Read: {other:?}"))),
        }
    }

    /// Sends the merged set to replicas that were missing some of it.
    async fn read_repair(&self, key: &ObjectKey, merged: &SiblingSet, repairs: &[Target]) {
        for t in repairs {
            let hint_for = t.hint_for.as_ref().map(|o| o.to_string());
            let result = if &t.node == self.id() {
                let (k, s) = (key.clone(), merged.clone());
                match hint_for {
                    Some(owner) => {
                        self.store.blocking(move |st| st.store_hint(&owner, &k, &s)).await
                    }
                    None => self.store.blocking(move |st| st.apply(&k, &s)).await,
                }
                .map(|_| ())
            } else {
                let msg = Request::Replicate { key: key.clone(), set: merged.clone(), hint_for };
                self.rpc(&t.node, &msg).await.map(|_| ())
            };
            match result {
                Ok(()) => Metrics::inc(&self.metrics.read_repairs),
                Err(e) => tracing::debug!(node = %t.node, error = %e, "read repair failed"),
            }
        }
    }

    /// Pulls the bucket registry from one random reachable member and merges it (registry
    /// anti-entropy). Returns the number of entries that changed here.
    pub async fn sync_registry_once(self: &Arc<Self>) -> Result<usize, NodeError> {
        let peers: Vec<NodeId> = self.reachable().into_iter().filter(|m| m != self.id()).collect();
        let Some(peer) = peers.choose(&mut rand::rng()).cloned() else { return Ok(0) };
        let Response::Registry { entries } = self.rpc(&peer, &Request::BucketRegistry).await?
        else {
            return Err(NodeError::Internal("unexpected answer to BucketRegistry".into()));
        };
        self.store
            .blocking(move |s| {
                let mut changed = 0;
                let mine: BTreeMap<String, SiblingSet<BucketEntry>> =
                    s.registry()?.into_iter().collect();
                for (name, set) in entries {
                    if mine.get(&name).is_none_or(|m| !m.covers(&set)) {
                        s.apply_bucket(&name, &set)?;
                        changed += 1;
                    }
                }
                Ok(changed)
            })
            .await
    }
}

/// How long a decided write waits for the remaining targets before answering: twice as long as
/// the decision took, between [`MIN_GRACE`] and [`MAX_GRACE`]. In a healthy cluster the last
/// replica answers within that window and the answer reports every replica; a slow or dead
/// replica delays the answer by at most the grace, never by the request timeout.
fn grace(decision_took: std::time::Duration) -> std::time::Duration {
    (decision_took * 2).clamp(MIN_GRACE, MAX_GRACE)
}

/// Shortest wait for replicas answering after the quorum.
pub const MIN_GRACE: std::time::Duration = std::time::Duration::from_millis(5);
/// Longest wait for replicas answering after the quorum.
pub const MAX_GRACE: std::time::Duration = std::time::Duration::from_millis(100);

fn finish_write(outcome: WriteOutcome) -> Result<WriteOutcome, NodeError> {
    if outcome.report.quorum_reached {
        Ok(outcome)
    } else {
        Err(NodeError::WriteQuorum {
            acked: outcome.report.replicas_written.len(),
            required: outcome.report.required,
            node: outcome.node.clone(),
            context: outcome.context,
            report: Box::new(outcome.report),
        })
    }
}
