//! The Cairn node: the protocol's state machine executed over the engine and the data plane.
//!
//! EXECUTOR
//! ========
//! Every protocol decision is [`NodeCore`]'s (`cairn_replication::node`), plain synchronous code
//! that takes events and emits actions. [`Node`] is its executor and nothing more: it feeds the
//! core what happens (client requests from the API, peers' requests from the data plane, the
//! answers to what it sent, the results of store operations, membership changes, time) and
//! carries out what the core asks:
//! - `Send`: encode once per fan-out, send over the transport in a task, step the reply (the
//!   transport bounds it by the request timeout; an outer bound guards against one that does not);
//! - `Store`: reads inline (they never wait for an fdatasync), an already-durable `WaitDurable`
//!   inline, every other op on the blocking pool; step the result;
//! - `Respond` / `Answer`: complete the peer's or the client's request.
//!
//! The core sits behind one mutex, held only for a step (microseconds: bookkeeping, no I/O, no
//! encoding). A timer task sleeps until the core's next deadline and steps `Tick`. The same core
//! runs in the whole-cluster simulator, so what the simulator proves is what this node does.
//!
//! # Layout
//! - this module: [`Node`] (the executor), [`Node::start`], the timer and membership tasks, the
//!   client operations the API calls.
//! - [`server`]: peers' requests from the data plane into the core.
//! - [`store`]: [`Store`], the engine-backed [`cairn_replication::node::LocalStore`].
//! - [`backend`]: the node as the API's `Backend`.
//! - [`chunks`]: large objects' chunks: upload, download, fetching before a merge, collection.
//! - [`identity`]: the actor epoch kept in the data directory.
//! - [`metrics`]: the core's counters in the Prometheus text format.

pub mod backend;
pub mod chunks;
pub mod identity;
pub mod metrics;
pub mod server;
pub mod store;

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use cairn_membership::{
    InboundRequest, MemberEvent, MemberStatus, MemberView, ReplyHandle, Transport,
};
pub use cairn_replication::Error as NodeError;
use cairn_replication::layout::{Change, Placement};
use cairn_replication::node::{
    Action, Answer, BucketOutcome, ClientId, ClientOp, Config, Event, InboundId, LayoutOutcome,
    Listing, LocalStore, NodeCore, NodeStatus, ReadOutcome, SendError, Stats, StoreOp, StoreResult,
    execute,
};
pub use cairn_replication::node::{buckets, keys, messages};
use cairn_replication::{Actor, NodeId, VersionVector};
use parking_lot::Mutex;
use tokio::sync::{Notify, broadcast, mpsc, oneshot, watch};
use tokio::time::Instant;

use buckets::{BucketInfo, ConflictPolicy};
use keys::ObjectKey;
use messages::{Request, Response, WriteOp, WriteOutcome, WriteRequest};
use store::Store;

/// Default bound on one coordinated request (all replicas' answers).
pub const DEFAULT_REQUEST_TIMEOUT: Duration =
    Duration::from_millis(cairn_replication::node::DEFAULT_REQUEST_TIMEOUT_MS);
/// Default longest wait, on a graceful stop, for the background work requests started (hints
/// for replicas that missed a write, read repairs).
pub const DEFAULT_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(10);
/// How much later than the request timeout [`Node`] stops waiting for the transport.
const RPC_TIMEOUT_MARGIN: Duration = Duration::from_millis(500);

/// What a node is assembled from.
pub struct Parts<T> {
    /// The protocol settings.
    pub config: Config,
    /// The actor (node id + epoch) whose dots this node's writes carry.
    pub actor: Actor,
    /// Local data.
    pub store: Store,
    /// Sends requests to other nodes.
    pub transport: T,
    /// The membership view (who is up), published by the membership layer.
    pub view: watch::Receiver<MemberView>,
    /// Membership events (a member came up: deliver its hints now).
    pub events: broadcast::Receiver<MemberEvent>,
    /// Requests from other nodes.
    pub inbound: mpsc::Receiver<InboundRequest>,
    /// Large objects: memory budget and collection grace.
    pub chunks: chunks::ChunkSettings,
}

/// A running node (see the module documentation). Cheap to share through `Arc`.
pub struct Node<T: Transport> {
    /// The protocol settings (immutable; the core has its own copy).
    config: Config,
    /// The actor whose dots this node's writes carry.
    pub actor: Actor,
    /// Local data.
    pub store: Store,
    /// Sends requests to other nodes.
    transport: T,
    /// The protocol. Locked for one step at a time by whoever feeds an event: request handlers,
    /// reply and store tasks, the timer and membership tasks.
    core: Mutex<NodeCore>,
    /// Origin of the core's clock.
    origin: Instant,
    /// Clients waiting for their answer, by `ClientId`. The sender is removed when the core
    /// answers; a dropped receiver (the HTTP client went away) makes the send a no-op.
    clients: Mutex<HashMap<u64, oneshot::Sender<Result<Answer, NodeError>>>>,
    /// Peers waiting for a response, by `InboundId`.
    inbound: Mutex<HashMap<u64, ReplyHandle>>,
    /// Ids for clients and peer requests.
    next_id: AtomicU64,
    /// Woken when the core's earliest timer moved earlier; the timer task re-arms.
    rearm: Notify,
    /// Woken after every step; [`Node::drain`] waits on it.
    stepped: Notify,
    /// The membership view, published by the membership task (the sender). Read to know who is
    /// reachable; closed only when membership stops.
    view: watch::Receiver<MemberView>,
    /// A second receiver of the view, only to tell cheaply (no allocation) whether it changed
    /// since the core was last told, before stepping a request (see [`Node::step_into`]).
    view_seen: Mutex<watch::Receiver<MemberView>>,
    /// Large objects' chunks: budget, collector, counters.
    chunks: chunks::Chunks,
}

impl<T: Transport> Node<T> {
    /// Assembles a node (its hint book rebuilt from the store) and starts its tasks: peers'
    /// requests, membership changes, timers. They stop when `shutdown` turns true (the inbound
    /// task when the transport closes its queue).
    pub fn start(parts: Parts<T>, shutdown: watch::Receiver<bool>) -> Result<Arc<Self>, NodeError> {
        let hints = parts.store.all_hints()?;
        if !hints.is_empty() {
            tracing::info!(hints = hints.len(), "hints loaded from the data directory");
        }
        let restored = parts.store.load_cluster()?;
        if let Some(l) = restored.as_ref().and_then(|s| s.layout.as_ref()) {
            let given: BTreeSet<&NodeId> = parts.config.members.iter().collect();
            let stored: BTreeSet<&NodeId> = l.members.iter().collect();
            if !given.is_empty() && given != stored {
                tracing::warn!(
                    stored = ?stored.iter().map(|m| m.as_str()).collect::<Vec<_>>(),
                    version = l.version,
                    "--members differs from the layout stored in the data directory; --members \
                     only seeds a new cluster: using the stored layout (change members with \
                     `cairn cluster add/remove`)"
                );
            }
        }
        let core = NodeCore::new(
            parts.config.clone(),
            parts.actor.clone(),
            hints,
            restored,
            rand::random(),
            0,
        )?;
        let node = Arc::new(Node {
            config: parts.config,
            actor: parts.actor,
            store: parts.store,
            transport: parts.transport,
            core: Mutex::new(core),
            origin: Instant::now(),
            clients: Mutex::new(HashMap::new()),
            inbound: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(1),
            rearm: Notify::new(),
            stepped: Notify::new(),
            view_seen: Mutex::new(parts.view.clone()),
            view: parts.view,
            chunks: chunks::Chunks::new(parts.chunks),
        });
        node.step(Event::View { up: node.reachable() });
        tokio::spawn(server::serve(Arc::clone(&node), parts.inbound));
        tokio::spawn(watch_membership(Arc::clone(&node), parts.events, shutdown.clone()));
        tokio::spawn(chunks::run_collector(Arc::clone(&node), shutdown.clone()));
        tokio::spawn(run_timers(Arc::clone(&node), shutdown));
        Ok(node)
    }

    /// This node's id.
    pub fn id(&self) -> &NodeId {
        &self.config.id
    }

    /// The protocol settings.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The current membership view.
    pub fn view(&self) -> MemberView {
        self.view.borrow().clone()
    }

    /// Nodes believed reachable now (status up; members or not), this node included.
    pub fn reachable(&self) -> BTreeSet<NodeId> {
        let view = self.view.borrow();
        let mut out: BTreeSet<NodeId> = view
            .members
            .iter()
            .filter(|(_, i)| i.status == MemberStatus::Up)
            .filter_map(|(id, _)| NodeId::new(id.clone()).ok())
            .collect();
        out.insert(self.config.id.clone());
        out
    }

    /// The extended preference list of an object in the current layout's ring (empty before
    /// a layout is known).
    pub fn extended(&self, key: &ObjectKey) -> Vec<NodeId> {
        let core = self.core.lock();
        core.ring()
            .map(|r| r.extended_preference_list(r.partition_of(key.hash())))
            .unwrap_or_default()
    }

    /// The layout this node follows, with its rings (`None` until it learnt one).
    pub fn placement(&self) -> Option<Placement> {
        self.core.lock().placement().cloned()
    }

    /// The layout this node follows (`None` until it learnt one); cheaper than
    /// [`Node::placement`] when the rings are not needed.
    pub fn layout(&self) -> Option<cairn_replication::layout::Layout> {
        self.core.lock().layout().cloned()
    }

    /// This node's status as its peers see it, and the latest status heard from each peer.
    pub fn statuses(&self) -> (NodeStatus, BTreeMap<NodeId, NodeStatus>) {
        let core = self.core.lock();
        (core.status(), core.peer_statuses().clone())
    }

    /// A membership change (the admin API): committed by the voters, then run in the background.
    pub async fn change_members(
        self: &Arc<Self>,
        change: Change,
    ) -> Result<LayoutOutcome, NodeError> {
        match self.client(ClientOp::ChangeMembers { change }).await? {
            Answer::Layout(o) => Ok(o),
            other => Err(unexpected(&other)),
        }
    }

    /// Tombstone collection: grace, tombstones awaiting stability.
    pub fn tombstones(&self) -> cairn_replication::node::GcStatus {
        self.core.lock().tombstones()
    }

    /// Anti-entropy: the partitions owned and when each was last exchanged.
    pub fn anti_entropy(&self) -> cairn_replication::node::AaeStatus {
        self.core.lock().anti_entropy()
    }

    /// Hints held, per owner.
    pub fn hints_pending(&self) -> BTreeMap<NodeId, usize> {
        self.core.lock().hints_pending()
    }

    /// Number of hints held.
    pub fn hint_count(&self) -> usize {
        self.core.lock().hint_count()
    }

    /// The protocol's counters.
    pub fn stats(&self) -> Stats {
        self.core.lock().stats.clone()
    }

    /// Work still running for requests already answered (a write's tail, read repairs).
    pub fn background(&self) -> usize {
        self.core.lock().background()
    }

    /// Waits until no background work runs, at most `timeout`; returns how much still ran.
    pub async fn drain(&self, timeout: Duration) -> usize {
        let deadline = Instant::now() + timeout;
        loop {
            let stepped = self.stepped.notified();
            let running = self.background();
            if running == 0 {
                return 0;
            }
            if tokio::time::timeout_at(deadline, stepped).await.is_err() {
                return self.background();
            }
        }
    }

    fn now_ms(&self) -> u64 {
        self.origin.elapsed().as_millis() as u64
    }

    fn fresh_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    /// Feeds one event to the core and carries out what it asks.
    fn step(self: &Arc<Self>, event: Event) {
        let mut queue = VecDeque::new();
        self.step_into(event, &mut queue);
        self.perform(queue);
    }

    fn step_into(&self, event: Event, queue: &mut VecDeque<Action>) {
        // A request is planned with the freshest view (the membership task's `View` event may
        // not have been stepped yet). Checking costs a lock and a version compare; the set is
        // built only when the view changed.
        let fresh_view = match &event {
            Event::Client { .. } | Event::Inbound { .. } => {
                let mut seen = self.view_seen.lock();
                if seen.has_changed().unwrap_or(false) {
                    seen.borrow_and_update();
                    drop(seen);
                    Some(self.reachable())
                } else {
                    None
                }
            }
            _ => None,
        };
        let rearm = {
            let mut core = self.core.lock();
            let before = core.next_deadline();
            let now = self.now_ms();
            if let Some(up) = fresh_view
                && &up != core.up()
            {
                core.step(now, Event::View { up });
            }
            core.step(now, event);
            let after = core.next_deadline();
            let earlier = match (before, after) {
                (_, None) => false,
                (None, Some(_)) => true,
                (Some(b), Some(a)) => a < b,
            };
            queue.extend(core.drain_actions());
            earlier
        };
        if rearm {
            self.rearm.notify_one();
        }
        self.stepped.notify_waiters();
    }

    fn perform(self: &Arc<Self>, mut queue: VecDeque<Action>) {
        // A fan-out shares one request: encode it once (keyed by the `Arc`'s address, valid while
        // the actions holding it are alive, i.e. within this call).
        let mut encoded: Vec<(usize, Bytes)> = Vec::new();
        while let Some(action) = queue.pop_front() {
            match action {
                Action::Send { id, to, request } => {
                    let addr = Arc::as_ptr(&request) as usize;
                    let payload = match encoded.iter().find(|(a, _)| *a == addr) {
                        Some((_, b)) => b.clone(),
                        None => match messages::encode(&*request) {
                            Ok(v) => {
                                let b = Bytes::from(v);
                                encoded.push((addr, b.clone()));
                                b
                            }
                            Err(e) => {
                                let result = Err(SendError::NotDelivered(format!("encoding: {e}")));
                                self.step_into(Event::Reply { id, result }, &mut queue);
                                continue;
                            }
                        },
                    };
                    let node = Arc::clone(self);
                    tokio::spawn(async move {
                        let result = node.rpc(&to, payload).await;
                        node.step(Event::Reply { id, result });
                    });
                }
                Action::Respond { id, response } => {
                    let Some(handle) = self.inbound.lock().remove(&id.0) else { continue };
                    match messages::encode(&response) {
                        Ok(b) => {
                            handle.reply(Bytes::from(b));
                        }
                        Err(e) => {
                            handle.reply_error(format!("encoding the answer: {e}"));
                        }
                    }
                }
                Action::Answer { id, result } => {
                    if let Some(tx) = self.clients.lock().remove(&id.0) {
                        let _ = tx.send(result);
                    }
                }
                Action::Store { id, op } => {
                    let durable =
                        matches!(op, StoreOp::WaitDurable { lsn } if self.store.is_durable(lsn));
                    let incoming = op.incoming_manifests();
                    if durable {
                        let result = Ok(StoreResult::Durable);
                        self.step_into(Event::Stored { id, result }, &mut queue);
                    } else if !incoming.is_empty() {
                        // Chunks first (fetched from peers when missing), then the merge.
                        let node = Arc::clone(self);
                        tokio::spawn(async move {
                            if let Err(e) = node.ensure_chunks(&op, incoming).await {
                                node.step(Event::Stored { id, result: Err(e) });
                                return;
                            }
                            let n = Arc::clone(&node);
                            let result = tokio::task::spawn_blocking(move || execute(&n.store, op))
                                .await
                                .unwrap_or_else(|e| {
                                    Err(NodeError::Internal(format!("store task: {e}")))
                                });
                            node.step(Event::Stored { id, result });
                        });
                    } else if op.is_read() {
                        let result = execute(&self.store, op);
                        self.step_into(Event::Stored { id, result }, &mut queue);
                    } else {
                        let node = Arc::clone(self);
                        tokio::task::spawn_blocking(move || {
                            let result = execute(&node.store, op);
                            node.step(Event::Stored { id, result });
                        });
                    }
                }
            }
        }
    }

    /// Sends one encoded request, bounded by the request timeout.
    async fn rpc(&self, to: &NodeId, payload: Bytes) -> Result<Response, SendError> {
        let call = self.transport.request(to.as_str(), payload);
        // The transport bounds the request by the same timeout and reports how it failed (not
        // delivered, or possibly delivered); this outer bound only guards against a transport
        // that does not, so it fires later.
        let bound = Duration::from_millis(self.config.request_timeout_ms) + RPC_TIMEOUT_MARGIN;
        let bytes = match tokio::time::timeout(bound, call).await {
            Ok(Ok(b)) => b,
            Ok(Err(e)) if e.certainly_not_delivered() => {
                return Err(SendError::NotDelivered(format!("{to}: {e}")));
            }
            Ok(Err(e)) => return Err(SendError::Failed(format!("{to}: {e}"))),
            Err(_) => return Err(SendError::Failed(format!("{to}: timed out"))),
        };
        messages::decode::<Response>(&bytes)
            .map_err(|e| SendError::Failed(format!("undecodable answer from {to}: {e}")))
    }

    /// Runs one client operation to its answer.
    pub async fn client(self: &Arc<Self>, op: ClientOp) -> Result<Answer, NodeError> {
        let id = self.fresh_id();
        let (tx, rx) = oneshot::channel();
        self.clients.lock().insert(id, tx);
        self.step(Event::Client { id: ClientId(id), op });
        rx.await.map_err(|_| NodeError::Internal("the node dropped a request".into()))?
    }

    /// A client write (a `Put` is forwarded to or coordinated by the key's coordinator; a
    /// `Delete` reads a quorum first, see [`Node::delete`]).
    pub async fn write(self: &Arc<Self>, req: WriteRequest) -> Result<WriteOutcome, NodeError> {
        match req.op {
            WriteOp::Put { meta, body } => {
                let op = ClientOp::Put {
                    key: req.key,
                    meta,
                    body,
                    context: req.context,
                    overwrite: req.overwrite,
                    w: req.w,
                    lww: req.lww,
                };
                written(self.client(op).await?)
            }
            WriteOp::Delete { timestamp_ms } => {
                self.delete(req.key, req.context, req.w, req.lww, timestamp_ms).await
            }
        }
    }

    /// A client delete (add-wins): a quorum read, then a tombstone under the client's context or
    /// the read's. `NoSuchKey` when nothing is live, `StaleContext` when the context covers none
    /// of the live versions; nothing is stored in either case.
    pub async fn delete(
        self: &Arc<Self>,
        key: ObjectKey,
        context: Option<VersionVector>,
        w: usize,
        lww: bool,
        at_ms: u64,
    ) -> Result<WriteOutcome, NodeError> {
        written(self.client(ClientOp::Delete { key, context, w, lww, at_ms }).await?)
    }

    /// A client read coordinated by this node; `local` answers from this node's own data only.
    pub async fn read(
        self: &Arc<Self>,
        key: ObjectKey,
        r: usize,
        lww: bool,
        local: bool,
    ) -> Result<ReadOutcome, NodeError> {
        match self.client(ClientOp::Get { key, r, lww, local }).await? {
            Answer::Read(o) => Ok(o),
            other => Err(unexpected(&other)),
        }
    }

    /// Creates a bucket (error if a live one of that name exists).
    pub async fn create_bucket(
        self: &Arc<Self>,
        name: &str,
        policy: ConflictPolicy,
    ) -> Result<BucketOutcome, NodeError> {
        let op = ClientOp::CreateBucket {
            name: name.to_owned(),
            policy,
            incarnation: rand::random::<u64>(),
            created_ms: now_ms(),
        };
        match self.client(op).await? {
            Answer::Bucket(o) => Ok(o),
            other => Err(unexpected(&other)),
        }
    }

    /// Deletes a bucket (and with it, in O(1), every file of its incarnation).
    pub async fn delete_bucket(self: &Arc<Self>, name: &str) -> Result<BucketOutcome, NodeError> {
        match self.client(ClientOp::DeleteBucket { name: name.to_owned(), at_ms: now_ms() }).await?
        {
            Answer::Bucket(o) => Ok(o),
            other => Err(unexpected(&other)),
        }
    }

    /// Live objects of a bucket, merged from every reachable member, in name order.
    pub async fn list_files(
        self: &Arc<Self>,
        bucket: &BucketInfo,
        prefix: &str,
        start_after: Option<&str>,
        limit: usize,
    ) -> Result<Listing, NodeError> {
        let op = ClientOp::List {
            bucket: bucket.name.clone(),
            incarnation: bucket.incarnation,
            prefix: prefix.to_owned(),
            start_after: start_after.map(str::to_owned),
            limit,
        };
        match self.client(op).await? {
            Answer::Listing(l) => Ok(l),
            other => Err(unexpected(&other)),
        }
    }

    /// The live bucket `name` as this node knows it, or `NoSuchBucket`.
    pub fn bucket(&self, name: &str) -> Result<BucketInfo, NodeError> {
        let set = self.store.bucket(name)?;
        set.as_ref()
            .and_then(|s| buckets::resolve(name, s))
            .ok_or_else(|| NodeError::NoSuchBucket(name.to_owned()))
    }

    /// Every live bucket, by name.
    pub fn list_buckets(&self) -> Result<Vec<BucketInfo>, NodeError> {
        let reg = self.store.registry()?;
        Ok(reg.iter().filter_map(|(name, set)| buckets::resolve(name, set)).collect())
    }

    /// Sends a raw request to a peer and returns its response (operator tools and tests).
    pub async fn request(&self, to: &NodeId, req: &Request) -> Result<Response, NodeError> {
        let payload =
            messages::encode(req).map_err(|e| NodeError::Internal(format!("encoding: {e}")))?;
        self.rpc(to, Bytes::from(payload)).await.map_err(|e| match e {
            SendError::NotDelivered(m) => NodeError::NotDelivered(m),
            SendError::Failed(m) => NodeError::Unavailable(m),
        })
    }
}

fn written(answer: Answer) -> Result<WriteOutcome, NodeError> {
    match answer {
        Answer::Written(o) => Ok(o),
        other => Err(unexpected(&other)),
    }
}

fn unexpected(a: &Answer) -> NodeError {
    NodeError::Internal(format!("unexpected answer: {a:?}"))
}

/// Feeds membership changes to the core: the set of members up, and members coming back.
async fn watch_membership<T: Transport>(
    node: Arc<Node<T>>,
    mut events: broadcast::Receiver<MemberEvent>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut view = node.view.clone();
    loop {
        tokio::select! {
            r = shutdown.changed() => {
                if r.is_err() || *shutdown.borrow() { break; }
            }
            r = view.changed() => {
                if r.is_err() { break; }
                node.step(Event::View { up: node.reachable() });
            }
            ev = events.recv() => match ev {
                Ok(MemberEvent::Up(owner)) => {
                    if let Ok(owner) = NodeId::new(owner) {
                        tracing::info!(%owner, "member up; delivering its hints");
                        node.step(Event::MemberUp { node: owner });
                    }
                }
                Ok(_) => {}
                Err(broadcast::error::RecvError::Lagged(n)) => {
                    tracing::debug!(missed = n, "membership events lagged; the handoff tick catches up");
                }
                Err(broadcast::error::RecvError::Closed) => break,
            }
        }
    }
}

/// Steps `Tick` at the core's next deadline.
async fn run_timers<T: Transport>(node: Arc<Node<T>>, mut shutdown: watch::Receiver<bool>) {
    loop {
        let next = node.core.lock().next_deadline();
        let sleep = async {
            match next {
                Some(at) => tokio::time::sleep_until(node.origin + Duration::from_millis(at)).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            () = sleep => node.step(Event::Tick),
            () = node.rearm.notified() => {}
            r = shutdown.changed() => {
                if r.is_err() || *shutdown.borrow() { break; }
            }
        }
    }
}

/// Wall-clock milliseconds since the Unix epoch (metadata and `lww` only; never causality).
pub fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

/// A peer request's id for the core.
fn inbound_id(n: u64) -> InboundId {
    InboundId(n)
}
