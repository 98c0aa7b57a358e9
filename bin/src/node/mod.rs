//! The Cairn node: the replication core driven over the engine and the membership transport.
//!
//! NODE
//! ====
//! One [`Node`] per process. It owns the local [`Store`] (the engine), the [`Ring`] computed from
//! the configured members, the membership view (who is up), the [`Transport`] to the other nodes
//! and the [`HintBook`]. The protocol decisions (targets, quorums, read repair, hints) come from
//! `cairn_replication`'s sans-IO state machines; this module only moves data between them, the
//! disk and the network:
//! - [`coordinator`]: client writes and reads (forwarding to the first reachable owner, the sloppy
//!   quorum fan-out, read repair), bucket operations and listings.
//! - [`server`]: answering other nodes' requests.
//! - [`handoff`]: delivering hints when their owner is back, and the registry anti-entropy.
//! - [`store`], [`keys`], [`buckets`], [`messages`]: the local data and the wire protocol.

pub mod backend;
pub mod buckets;
pub mod coordinator;
pub mod error;
pub mod handoff;
pub mod identity;
pub mod keys;
pub mod messages;
pub mod metrics;
pub mod server;
pub mod store;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use cairn_membership::{MemberStatus, MemberView, Transport};
use cairn_replication::{Actor, HintBook, NodeId, Ring};
use parking_lot::Mutex;
use tokio::sync::watch;

pub use error::NodeError;
use keys::{HintKey, ObjectKey};
use store::Store;

/// Default bound on one coordinated request (all replicas' answers).
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(3);
/// Default longest wait, on a graceful stop, for the background work requests started (hints
/// for replicas that missed a write, read repairs).
pub const DEFAULT_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(10);
/// Default most concurrent versions of one object.
pub const DEFAULT_MAX_SIBLINGS: usize = 64;
/// Default wait for R answers before a read also asks the replicas it held back.
pub const DEFAULT_READ_SPECULATE: Duration = Duration::from_millis(50);
/// Default share of reads that ask all N replicas at once: one in this many.
pub const DEFAULT_FULL_READ_EVERY: u32 = 10;

/// The replication settings of a node.
#[derive(Debug, Clone)]
pub struct Settings {
    /// This node's id.
    pub id: NodeId,
    /// The ring members (the same list on every node).
    pub members: Vec<NodeId>,
    /// Number of ring partitions (power of two).
    pub partitions: u32,
    /// Replicas per object (N).
    pub n: usize,
    /// Default read quorum (R).
    pub r: usize,
    /// Default write quorum (W).
    pub w: usize,
    /// Bound on one coordinated request.
    pub request_timeout: Duration,
    /// Most concurrent versions of one object; a write that would exceed it is refused.
    pub max_siblings: usize,
    /// A read asks R replicas first (this node first when it holds one) and the others only
    /// when one of those fails, or after this long without R answers (a speculative retry).
    pub read_speculate: Duration,
    /// One read in this many asks all N replicas at once, so that replicas a quorum-first read
    /// skips are still read-repaired; 1 asks all N on every read (Dynamo's read), 0 never.
    pub full_read_every: u32,
}

/// A running node's shared state. Cheap to clone through `Arc`.
pub struct Node<T: Transport> {
    /// Settings.
    pub settings: Settings,
    /// The actor (node id + epoch) whose dots this node's writes carry.
    pub actor: Actor,
    /// The ring, fixed for the life of the process.
    pub ring: Ring,
    /// Local data.
    pub store: Store,
    /// Sends requests to other nodes.
    pub transport: T,
    /// The membership view, published by the membership task (the sender). Read for every
    /// request to know who is reachable; closed only when membership stops.
    view: watch::Receiver<MemberView>,
    /// Index of the hints held, rebuilt from the engine at start; shared by the write path
    /// (records), the handoff task (takes and acknowledges) and `/cluster` (counts). A mutex,
    /// because every access is a short in-memory update.
    pub hints: Mutex<HintBook<HintKey>>,
    /// Counters for `/metrics`.
    pub metrics: metrics::Metrics,
    /// Reads coordinated so far (picks the reads that ask all N, see [`Settings`]).
    read_seq: std::sync::atomic::AtomicU64,
    /// The work requests leave running after their answer (a write's tail that stores hints for
    /// the replicas that missed it, a read's repairs): a graceful stop waits for it.
    pub background: Arc<Background>,
}

/// Tracks the tasks a request leaves running after it answered, so that a graceful stop can
/// wait for them instead of dropping the hints and repairs they were about to store.
///
/// A counter and a [`tokio::sync::Notify`] rather than a `JoinSet`: tasks are spawned from any
/// request handler through `&self`, and nothing needs their results, only their end.
#[derive(Debug, Default)]
pub struct Background {
    /// Tasks spawned and not finished.
    running: std::sync::atomic::AtomicUsize,
    /// Woken each time a task finishes; waited on by [`Background::drain`].
    finished: tokio::sync::Notify,
}

/// Decrements the count when the task ends, also if it panics or is cancelled.
struct RunningGuard<'a>(&'a Background);

impl Drop for RunningGuard<'_> {
    fn drop(&mut self) {
        self.0.running.fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
        self.0.finished.notify_waiters();
    }
}

impl Background {
    /// Spawns `fut` on the runtime, counted until it ends.
    pub fn spawn<F>(self: &Arc<Self>, fut: F)
    where
        F: std::future::Future<Output = ()> + Send + 'static,
    {
        self.running.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        let me = Arc::clone(self);
        tokio::spawn(async move {
            let _guard = RunningGuard(&me);
            fut.await;
        });
    }

    /// Tasks still running.
    pub fn running(&self) -> usize {
        self.running.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Waits until no task runs, at most `timeout`; returns how many were still running.
    pub async fn drain(&self, timeout: Duration) -> usize {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let notified = self.finished.notified();
            let running = self.running();
            if running == 0 {
                return 0;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return self.running();
            }
        }
    }
}

impl<T: Transport> Node<T> {
    /// Assembles a node and rebuilds its hint book from the engine.
    pub fn new(
        settings: Settings,
        actor: Actor,
        store: Store,
        transport: T,
        view: watch::Receiver<MemberView>,
    ) -> Result<Arc<Self>, NodeError> {
        let ring = Ring::new(&settings.members, settings.partitions, settings.n)?;
        let mut book = HintBook::new();
        for (owner, key, vv) in store.all_hints()? {
            match NodeId::new(owner.clone()) {
                Ok(owner) => book.record(key, owner, &vv),
                Err(_) => tracing::warn!(owner, "ignoring hints for an invalid node id"),
            }
        }
        if !book.is_empty() {
            tracing::info!(hints = book.len(), "hints loaded from the data directory");
        }
        Ok(Arc::new(Node {
            settings,
            actor,
            ring,
            store,
            transport,
            view,
            hints: Mutex::new(book),
            metrics: metrics::Metrics::default(),
            read_seq: std::sync::atomic::AtomicU64::new(0),
            background: Arc::new(Background::default()),
        }))
    }

    /// This node's id.
    pub fn id(&self) -> &NodeId {
        &self.settings.id
    }

    /// The current membership view.
    pub fn view(&self) -> MemberView {
        self.view.borrow().clone()
    }

    /// Ring members believed reachable now (status up), this node included.
    pub fn reachable(&self) -> BTreeSet<NodeId> {
        let view = self.view.borrow();
        let mut out: BTreeSet<NodeId> = self
            .settings
            .members
            .iter()
            .filter(|m| view.status(m.as_str()) == Some(MemberStatus::Up))
            .cloned()
            .collect();
        out.insert(self.settings.id.clone());
        out
    }

    /// The extended preference list of an object.
    pub fn extended(&self, key: &ObjectKey) -> Vec<NodeId> {
        self.ring.extended_preference_list(self.ring.partition_of(key.hash()))
    }

    /// Ring member ids as strings.
    pub fn member_names(&self) -> Vec<String> {
        self.settings.members.iter().map(|m| m.as_str().to_owned()).collect()
    }
}

/// Wall-clock milliseconds since the Unix epoch (metadata and `lww` only; never causality).
pub fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}
