//! The node's whole protocol as a deterministic state machine.
//!
//! THE NODE AS A STATE MACHINE
//! ===========================
//! [`NodeCore`] is everything a Cairn node decides: where a write is coordinated (forwarding and
//! its retry rule), the coordinator's local step, the sloppy-quorum fan-out, W plus a short grace,
//! hints for the targets that missed a write and for owners without a fallback; reads (R first,
//! speculation, full reads, read repair); deletes (a quorum read, then the tombstone); the bucket
//! registry (replicated to every member, hints, anti-entropy pulls); listings; answering peers;
//! and hinted handoff. It is plain synchronous code, in the style of toydb's Raft node and
//! TigerBeetle's replica: it takes [`Event`]s — a client request, a peer's request, the answer to
//! a message it sent, the result of a store operation, a change of who is up, time passing — and
//! emits [`Action`]s — send a message, answer a peer, answer a client, run a store operation. It
//! never reads a clock (time comes with every [`NodeCore::step`]), never sleeps, never does I/O,
//! and draws randomness from a seeded generator. So the same code runs:
//! - in the `cairn` binary, where an executor performs the actions over the engine and the data
//!   plane and feeds back the results (`bin/src/node/`);
//! - in the whole-cluster simulator (`tools/sim/`), where many nodes, their stores, the network
//!   and time are simulated from one seed, so that a failing seed replays exactly.
//!
//! Every request the node sends gets exactly one [`Event::Reply`] (the executor's transport bounds
//! it by its timeout), every [`StoreOp`] exactly one [`Event::Stored`], every client request
//! exactly one [`Action::Answer`] and every peer request exactly one [`Action::Respond`].
//! Timers are internal: after each step the executor asks [`NodeCore::next_deadline`] and steps
//! [`Event::Tick`] at that time.
//!
//! # Layout
//! - [`keys`]: engine keys of objects and hints; [`buckets`]: the registry's entries;
//!   [`messages`]: the node-to-node protocol.
//! - [`store`]: [`StoreOp`], the [`LocalStore`] trait and the pure functions applied inside it.
//! - `write`: client writes and deletes — forwarding, coordination, the write's tail.
//! - `read`: coordinated reads and read repair.
//! - `registry`: bucket create/delete, registry anti-entropy, listings.
//! - `inbound`: answering peers' requests.
//! - `handoff`: hinted handoff delivery.
//! - `aae`: active anti-entropy exchanges with the other owners of each partition.
//! - `gc`: tombstone collection at causal stability; reclaiming deleted buckets' objects.
//! - [`cluster`]: the layout the node follows, layout consensus, status polls, partition sync,
//!   hints for removed members ([`crate::layout`], [`crate::paxos`]).
//!
//! INVARIANTS
//! ==========
//! - A write is acknowledged to its client only when W targets stored it durably (the
//!   coordinator's own copy counts only after [`StoreOp::WaitDurable`]).
//! - The dot of a write comes from the coordinator's own stored history (the store applies
//!   [`LocalWrite::apply`] under the key's lock), and the coordinator is a target of the write.
//! - A forwarded write goes to the next candidate coordinator only when it certainly never
//!   reached the previous one ([`SendError::NotDelivered`]); otherwise the client is told the
//!   outcome is unknown. Retrying after a timeout could store one write twice, under two dots.
//! - Every owner that did not store an acknowledged write gets a hint for it somewhere: on a
//!   fallback that stood in for it, or on the coordinator (no fallback left, or the target failed
//!   or timed out).
//! - A hint is removed only after its owner acknowledged a version covering it.

mod aae;
pub mod buckets;
pub mod cluster;
mod gc;
mod handoff;
mod inbound;
pub mod keys;
pub mod messages;
mod read;
mod registry;
pub mod store;
mod write;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::dvv::{Meta, SiblingSet};
use crate::error::{Error, Result};
use crate::hints::HintBook;
use crate::id::{Actor, NodeId};
use crate::layout::{Change, Placement};
use crate::paxos::Ballot;
use crate::quorum::ReadReport;
use crate::vclock::VersionVector;

pub use aae::{AaeStatus, DEFAULT_ANTI_ENTROPY_INTERVAL_MS};
pub use buckets::{BucketEntry, BucketInfo, ConflictPolicy};
pub use cluster::{ClusterState, LayoutOutcome, SavedCursor, SavedSync};
pub use gc::{DEFAULT_TOMBSTONE_GRACE_MS, GcStatus};
pub use keys::{HintKey, ObjectKey};
pub use messages::{
    ListEntry, NodeStatus, Request, Response, SyncProgress, WriteOp, WriteOutcome, WriteRequest,
};
pub use store::{
    BucketChange, Coordinated, HintSet, IncomingManifest, LocalStore, LocalWrite, ScanPage,
    StoreOp, StoreResult, execute, in_partitions,
};

/// Milliseconds of a monotonic clock, from an origin the executor chooses.
pub type Millis = u64;

/// Default bound on one coordinated request (all replicas' answers), in ms.
pub const DEFAULT_REQUEST_TIMEOUT_MS: Millis = 3000;
/// Default most concurrent versions of one object.
pub const DEFAULT_MAX_SIBLINGS: usize = 64;
/// Default wait for R answers before a read also asks the replicas it held back, in ms.
pub const DEFAULT_READ_SPECULATE_MS: Millis = 50;
/// Default share of reads that ask all N replicas at once: one in this many.
pub const DEFAULT_FULL_READ_EVERY: u32 = 10;
/// How often owners with pending hints are retried, in ms.
pub const HANDOFF_TICK_MS: Millis = 1000;
/// The registry is pulled from a random peer every this many handoff ticks.
pub const REGISTRY_SYNC_EVERY: u64 = 5;
/// Default pace of partition sync, bytes per second (0: unlimited).
pub const DEFAULT_HANDOFF_RATE_BYTES: u64 = 64 << 20;
/// Most names one listing page returns.
pub const MAX_LIST_LIMIT: usize = 1000;
/// Shortest wait for replicas answering after a write's quorum decision, in ms.
pub const MIN_GRACE_MS: Millis = 5;
/// Longest wait for replicas answering after a write's quorum decision, in ms.
pub const MAX_GRACE_MS: Millis = 100;

/// The settings of a node's protocol.
#[derive(Debug, Clone)]
pub struct Config {
    /// This node's id.
    pub id: NodeId,
    /// The members of version 1 of a new cluster's layout (`--members`); ignored once a layout
    /// is stored, empty for a node that learns the layout from its peers.
    pub members: Vec<NodeId>,
    /// Number of ring partitions (power of two).
    pub partitions: u32,
    /// Replicas per object (N).
    pub n: usize,
    /// Default read quorum (R).
    pub r: usize,
    /// Default write quorum (W).
    pub w: usize,
    /// Bound on one coordinated request, in ms.
    pub request_timeout_ms: Millis,
    /// Most concurrent versions of one object; a write that would exceed it is refused.
    pub max_siblings: usize,
    /// A read asks R replicas first (this node first when it holds one) and the others only
    /// when one of those fails, or after this long without R answers (a speculative retry).
    pub read_speculate_ms: Millis,
    /// One read in this many asks all N replicas at once, so that replicas a quorum-first read
    /// skips are still read-repaired; 1 asks all N on every read (Dynamo's read), 0 never.
    pub full_read_every: u32,
    /// Pace of background transfers (partition sync while a membership change runs,
    /// anti-entropy repairs), bytes per second for the whole node (0: unlimited).
    pub handoff_rate_bytes: u64,
    /// Every owned partition is compared with another owner once per this many ms (0: off).
    pub anti_entropy_interval_ms: Millis,
    /// A delete's tombstone may be collected once this old and causally stable; deleted
    /// buckets' objects are reclaimed this long after the delete (`None`: never).
    pub tombstone_grace_ms: Option<Millis>,
    /// The planted bug this node runs with (simulator only).
    #[cfg(feature = "mutants")]
    pub mutant: Option<Mutant>,
}

impl Config {
    /// Settings with the defaults for everything but the ring.
    pub fn new(
        id: NodeId,
        members: Vec<NodeId>,
        partitions: u32,
        n: usize,
        r: usize,
        w: usize,
    ) -> Self {
        Config {
            id,
            members,
            partitions,
            n,
            r,
            w,
            request_timeout_ms: DEFAULT_REQUEST_TIMEOUT_MS,
            max_siblings: DEFAULT_MAX_SIBLINGS,
            read_speculate_ms: DEFAULT_READ_SPECULATE_MS,
            full_read_every: DEFAULT_FULL_READ_EVERY,
            handoff_rate_bytes: DEFAULT_HANDOFF_RATE_BYTES,
            anti_entropy_interval_ms: aae::DEFAULT_ANTI_ENTROPY_INTERVAL_MS,
            tombstone_grace_ms: Some(gc::DEFAULT_TOMBSTONE_GRACE_MS),
            #[cfg(feature = "mutants")]
            mutant: None,
        }
    }
}

/// Bugs this project had or could plausibly have, planted to prove the simulator sees them
/// (`scripts/simulate.sh --mutant NAME`). Compiled in only with the `mutants` feature, which no
/// release build enables.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Mutant {
    /// A forwarded write whose coordinator timed out is sent to the next candidate (the
    /// duplicate the fault harness once found).
    ForwardRetryAfterTimeout,
    /// The hint book is not rebuilt from the store at start: hints held before a restart are
    /// never delivered.
    HintDroppedOnRestart,
    /// The coordinator counts its own acknowledgement before its copy is durable.
    QuorumBeforeLocalSync,
    /// A node keeps its actor epoch after an unclean stop, so it can reuse a dot it issued
    /// before the crash (Riak's KV679).
    DotReusedAfterCrash,
    /// Read repair replaces the replica's set with the (possibly stale) merge instead of merging.
    StaleReadRepair,
    /// A new owner reports its partitions synced without pulling them (caught only with
    /// membership changes: `--membership`).
    SkipPartitionSync,
    /// An anti-entropy exchange maps differing segment hashes to segment numbers without their
    /// branch's offset, so it compares and repairs the wrong segments' keys (caught only with
    /// anti-entropy on: a replaced disk never gets those keys back).
    AaeSegmentOffset,
    /// Tombstones are collected once the grace has passed, without asking the other nodes
    /// (Cassandra's `gc_grace_seconds`): an owner that missed the delete brings the value back.
    CollectWithoutVotes,
}

impl Mutant {
    /// Every mutant.
    pub const ALL: [Mutant; 8] = [
        Mutant::ForwardRetryAfterTimeout,
        Mutant::HintDroppedOnRestart,
        Mutant::QuorumBeforeLocalSync,
        Mutant::DotReusedAfterCrash,
        Mutant::StaleReadRepair,
        Mutant::SkipPartitionSync,
        Mutant::AaeSegmentOffset,
        Mutant::CollectWithoutVotes,
    ];

    /// The mutant's name on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Mutant::ForwardRetryAfterTimeout => "forward-retry-after-timeout",
            Mutant::HintDroppedOnRestart => "hint-dropped-on-restart",
            Mutant::QuorumBeforeLocalSync => "quorum-before-local-sync",
            Mutant::DotReusedAfterCrash => "dot-reused-after-crash",
            Mutant::StaleReadRepair => "stale-read-repair",
            Mutant::SkipPartitionSync => "skip-partition-sync",
            Mutant::AaeSegmentOffset => "aae-segment-offset",
            Mutant::CollectWithoutVotes => "collect-without-votes",
        }
    }

    /// The mutant named `name`.
    pub fn from_name(name: &str) -> Option<Mutant> {
        Mutant::ALL.into_iter().find(|m| m.name() == name)
    }
}

/// The actor epoch for a start of a node whose data directory last had `previous` (`None`: a
/// new directory) and stopped cleanly or not. A new epoch after an unclean stop: with a sync
/// policy other than `always` the tail of the log, and with it the latest counters, may be gone,
/// and a reused counter would make a new write look already seen (Riak's KV679). `draw` gives
/// random candidates; the result is never `previous` unless kept on purpose.
pub fn start_epoch(
    previous: Option<u32>,
    clean: bool,
    mut draw: impl FnMut() -> u32,
    #[allow(unused_variables)] mutant: Option<Mutant>,
) -> u32 {
    #[cfg(feature = "mutants")]
    if mutant == Some(Mutant::DotReusedAfterCrash)
        && let Some(p) = previous
    {
        return p;
    }
    match previous {
        Some(e) if clean => e,
        previous => loop {
            let e = draw();
            if e != 0 && Some(e) != previous {
                break e;
            }
        },
    }
}

/// A client request's id, chosen by the executor; echoed in its [`Action::Answer`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ClientId(pub u64);

/// A peer request's id, chosen by the executor; echoed in its [`Action::Respond`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct InboundId(pub u64);

/// The id of an [`Action::Send`] or [`Action::Store`], chosen by the node; echoed in the
/// [`Event::Reply`] or [`Event::Stored`] that completes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ReqId(pub u64);

/// What a client asks of the node that received its request.
#[derive(Debug, Clone)]
pub enum ClientOp {
    /// Write a new version of an object.
    Put {
        /// The object.
        key: ObjectKey,
        /// Its metadata (the executor sets the wall-clock timestamp).
        meta: Meta,
        /// Its content: inline bytes, or the manifest of chunks already stored on the replicas.
        body: crate::dvv::Body,
        /// The causal context the client read (`None`: a blind write).
        context: Option<VersionVector>,
        /// Supersede everything the coordinator holds.
        overwrite: bool,
        /// Write quorum.
        w: usize,
        /// `lww` bucket.
        lww: bool,
    },
    /// Delete an object (a quorum read, then a tombstone; add-wins).
    Delete {
        /// The object.
        key: ObjectKey,
        /// The causal context the client read (`None`: delete what a quorum read shows).
        context: Option<VersionVector>,
        /// Write quorum.
        w: usize,
        /// `lww` bucket.
        lww: bool,
        /// Wall-clock time of the delete, ms since the Unix epoch.
        at_ms: u64,
    },
    /// Read an object.
    Get {
        /// The object.
        key: ObjectKey,
        /// Read quorum.
        r: usize,
        /// `lww` bucket: resolve to one version.
        lww: bool,
        /// Answer from this node's own data only.
        local: bool,
    },
    /// Create a bucket.
    CreateBucket {
        /// Its name.
        name: String,
        /// Its conflict policy.
        policy: ConflictPolicy,
        /// Random id of the incarnation.
        incarnation: u64,
        /// Wall-clock creation time, ms since the Unix epoch.
        created_ms: u64,
    },
    /// Delete a bucket.
    DeleteBucket {
        /// Its name.
        name: String,
        /// Wall-clock time, ms since the Unix epoch.
        at_ms: u64,
    },
    /// A membership change (the operator's admin API).
    ChangeMembers {
        /// The change.
        change: Change,
    },
    /// One page of a bucket's listing.
    List {
        /// Bucket name.
        bucket: String,
        /// Bucket incarnation.
        incarnation: u64,
        /// Name prefix.
        prefix: String,
        /// Only names after this one.
        start_after: Option<String>,
        /// Page size.
        limit: usize,
    },
}

/// What a coordinated read found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadOutcome {
    /// The node that coordinated the read.
    pub node: String,
    /// The merged sibling set (resolved to one sibling on `lww` buckets).
    pub set: SiblingSet,
    /// Per-replica report (`None` for a local read).
    pub report: Option<ReadReport>,
}

/// What a bucket create or delete did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
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

/// One page of a bucket listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listing {
    /// Live objects, in name order.
    pub entries: Vec<ListEntry>,
    /// Whether more may follow (some member had a full page).
    pub more: bool,
    /// Members that did not answer (unreachable or failed): objects only they hold may be
    /// missing from the page.
    pub missing: Vec<String>,
}

/// The answer to a client request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// A write or delete reached W.
    Written(WriteOutcome),
    /// A read.
    Read(ReadOutcome),
    /// A bucket create or delete.
    Bucket(BucketOutcome),
    /// A listing page.
    Listing(Listing),
    /// A membership change was committed.
    Layout(LayoutOutcome),
}

/// How a message failed to get an answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SendError {
    /// It certainly never reached the peer (failed dial, peer known stopped): sending it
    /// elsewhere cannot make it take effect twice.
    NotDelivered(String),
    /// It may have reached the peer (timeout, connection lost, a transport error there).
    Failed(String),
}

impl std::fmt::Display for SendError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SendError::NotDelivered(m) => write!(f, "not delivered: {m}"),
            SendError::Failed(m) => f.write_str(m),
        }
    }
}

/// Something that happened to the node.
#[derive(Debug, Clone)]
pub enum Event {
    /// A client request received by this node.
    Client {
        /// Its id (echoed in the answer).
        id: ClientId,
        /// What it asks.
        op: ClientOp,
    },
    /// A request from a peer.
    Inbound {
        /// Its id (echoed in the response).
        id: InboundId,
        /// The sender (authenticated by the transport).
        from: NodeId,
        /// The request.
        request: Request,
    },
    /// The outcome of an [`Action::Send`].
    Reply {
        /// The send's id.
        id: ReqId,
        /// The peer's response, or why there is none.
        result: std::result::Result<Response, SendError>,
    },
    /// The outcome of an [`Action::Store`].
    Stored {
        /// The op's id.
        id: ReqId,
        /// Its result.
        result: Result<StoreResult>,
    },
    /// The members believed up changed (this node need not be listed).
    View {
        /// Members up.
        up: BTreeSet<NodeId>,
    },
    /// A member came back up: deliver its hints now rather than at the next tick.
    MemberUp {
        /// The member.
        node: NodeId,
    },
    /// Time passed (fires the timers that are due).
    Tick,
}

/// Something the node asks its executor to do.
#[derive(Debug, Clone)]
pub enum Action {
    /// Send a request to a peer; answer with [`Event::Reply`].
    Send {
        /// Echo in the reply.
        id: ReqId,
        /// The peer.
        to: NodeId,
        /// The request (shared by the targets of one fan-out: encode it once).
        request: Arc<Request>,
    },
    /// Answer a peer's request.
    Respond {
        /// The request's id.
        id: InboundId,
        /// The response.
        response: Response,
    },
    /// Answer a client's request.
    Answer {
        /// The request's id.
        id: ClientId,
        /// The answer.
        result: Result<Answer>,
    },
    /// Run a store operation; answer with [`Event::Stored`].
    Store {
        /// Echo in the result.
        id: ReqId,
        /// The operation.
        op: StoreOp,
    },
}

/// Counters of protocol events (rendered by the executor as metrics).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stats {
    /// Writes coordinated here that reached W.
    pub writes_ok: u64,
    /// Writes coordinated here that did not reach W.
    pub write_quorum_failures: u64,
    /// Reads coordinated here that reached R.
    pub reads_ok: u64,
    /// Reads coordinated here that did not reach R.
    pub read_quorum_failures: u64,
    /// Writes forwarded to another coordinator.
    pub forwarded: u64,
    /// Read repairs sent.
    pub read_repairs: u64,
    /// Hints stored (as fallback or for a failed replica).
    pub hints_stored: u64,
    /// Hints delivered to their owner and removed.
    pub hints_delivered: u64,
    /// Hint deliveries that failed and will be retried.
    pub hint_delivery_failures: u64,
    /// Registry entries that changed here by anti-entropy.
    pub registry_synced: u64,
    /// Anti-entropy exchanges completed (every difference found repaired).
    pub aae_exchanges: u64,
    /// Of those, the ones that found the trees equal.
    pub aae_in_sync: u64,
    /// Keys found differing and merged both ways by anti-entropy.
    pub aae_keys_repaired: u64,
    /// Anti-entropy exchanges abandoned (a peer or the store failed, the layout changed).
    pub aae_failures: u64,
    /// Tombstones deleted here at causal stability.
    pub tombstones_collected: u64,
    /// Collection rounds this node led to the end.
    pub tombstone_rounds: u64,
    /// Objects of deleted bucket incarnations deleted here.
    pub objects_reclaimed: u64,
}

/// What a timer does when it fires.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Timer {
    /// A write's request timeout.
    WriteDeadline(u64),
    /// A decided write's grace is over: answer.
    WriteAnswer(u64),
    /// A read's speculative retry.
    ReadSpeculate(u64),
    /// A read's request timeout.
    ReadDeadline(u64),
    /// Hinted handoff and registry anti-entropy.
    HandoffTick,
    /// Partition sync may ask for its next page (`--handoff-rate`).
    SyncPump,
    /// Start the next anti-entropy exchange (the schedule's generation).
    AntiEntropy(u64),
    /// An anti-entropy exchange may send its next repair batch (`--handoff-rate`).
    AaePump,
}

/// Where the continuation of a sent message goes.
#[derive(Debug, Clone)]
enum MsgCont {
    Forward { flow: u64 },
    WriteTarget { flow: u64, node: NodeId },
    ReadTarget { flow: u64, node: NodeId },
    Repair { node: NodeId },
    HintDelivery { owner: NodeId, key: HintKey, version: VersionVector },
    BucketTarget { flow: u64, node: NodeId },
    RegistryPull,
    ListTarget { flow: u64, node: NodeId },
    Vote { ballot: Ballot, node: NodeId },
    Committed,
    Status { node: NodeId, pull: bool },
    SyncPage { source: NodeId, hints: bool, started: u64 },
    Aae { id: u64 },
    GcVote { id: u64, node: NodeId },
    GcCollect { id: u64, node: NodeId },
}

/// Where the continuation of a store operation goes.
#[derive(Debug, Clone)]
enum StoreCont {
    Coordinated {
        flow: u64,
    },
    LocalDurable {
        flow: u64,
    },
    LocalRead {
        flow: u64,
    },
    LocalGet {
        client: ClientId,
        lww: bool,
    },
    LocalRepair {
        hint: Option<(NodeId, HintKey)>,
    },
    MissedHint {
        flow: u64,
        owner: NodeId,
    },
    Inbound {
        id: InboundId,
        hint: Option<(NodeId, HintKey)>,
    },
    HintRead {
        owner: NodeId,
        key: HintKey,
        version: VersionVector,
    },
    HintRemoved {
        owner: NodeId,
        key: HintKey,
        version: VersionVector,
    },
    BucketChanged {
        flow: u64,
    },
    BucketHint {
        flow: u64,
        owner: NodeId,
    },
    RegistryApplied,
    LocalList {
        flow: u64,
    },
    ClusterSaved {
        version: u64,
        then: cluster::AfterSave,
    },
    SyncApplied {
        source: NodeId,
        hints: bool,
        started: u64,
        next: Option<Vec<u8>>,
        count: u64,
        bytes: u64,
    },
    Readdress {
        owner: NodeId,
        key: HintKey,
        target: Option<NodeId>,
    },
    Cleaned {
        version: u64,
    },
    Aae {
        id: u64,
    },
    GcScan,
    GcCollected {
        id: u64,
    },
    GcVersions {
        id: InboundId,
        keys: Vec<(ObjectKey, VersionVector)>,
    },
    GcInbound {
        id: InboundId,
    },
    Reclaimed,
}

/// Who gets the outcome of a write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ReplyTo {
    /// A client of this node.
    Client(ClientId),
    /// A peer that forwarded the write here.
    Peer(InboundId),
}

/// One node's protocol state (see the module documentation).
pub struct NodeCore {
    config: Config,
    actor: Actor,
    /// The layout, its consensus and sync.
    cluster: cluster::ClusterCore,
    /// The layout's voters (and a force-removed node): whose hints a local read merges.
    members: Arc<Vec<NodeId>>,
    /// Members believed up, this node included.
    up: BTreeSet<NodeId>,
    /// The hints this node holds (rebuilt from the store at start).
    hints: HintBook<HintKey>,
    rng: Rng,
    now: Millis,
    next_id: u64,
    out: Vec<Action>,
    timers: BTreeSet<(Millis, Timer)>,
    msgs: HashMap<ReqId, MsgCont>,
    stores: HashMap<ReqId, StoreCont>,
    writes: HashMap<u64, write::WriteFlow>,
    forwards: HashMap<u64, write::ForwardFlow>,
    deletes: HashMap<u64, write::DeleteFlow>,
    reads: HashMap<u64, read::ReadFlow>,
    buckets: HashMap<u64, registry::BucketFlow>,
    lists: HashMap<u64, registry::ListFlow>,
    /// Owners whose hints are being delivered, with the deliveries of the batch still open and
    /// whether one failed.
    deliveries: BTreeMap<NodeId, handoff::Round>,
    /// A registry pull is in flight.
    registry_pull: bool,
    /// Read repairs and hint stores still running after their request answered.
    background_ops: usize,
    read_seq: u64,
    ticks: u64,
    /// `--handoff-rate`, for the whole node: no background transfer starts before this time.
    paced_until: Millis,
    /// Active anti-entropy.
    aae: aae::AaeCore,
    /// Tombstone collection and reclaiming.
    gc: gc::GcCore,
    /// Counters.
    pub stats: Stats,
}

impl NodeCore {
    /// A node starting at `now`, holding the hints `hints` (from [`LocalStore::all_hints`])
    /// and the cluster state `restored` (as last given to [`LocalStore::save_cluster`]; `None`
    /// for a new data directory). `seed` drives every random choice it makes.
    pub fn new(
        config: Config,
        actor: Actor,
        hints: Vec<(NodeId, HintKey, VersionVector)>,
        restored: Option<ClusterState>,
        seed: u64,
        now: Millis,
    ) -> Result<Self> {
        let mut book = HintBook::new();
        #[cfg(feature = "mutants")]
        let hints =
            if config.mutant == Some(Mutant::HintDroppedOnRestart) { Vec::new() } else { hints };
        for (owner, key, vv) in hints {
            book.record(key, owner, &vv);
        }
        let up = BTreeSet::from([config.id.clone()]);
        let mut core = NodeCore {
            config,
            actor,
            cluster: cluster::ClusterCore::default(),
            members: Arc::new(Vec::new()),
            up,
            hints: book,
            rng: Rng::new(seed),
            now,
            next_id: 1,
            out: Vec::new(),
            timers: BTreeSet::new(),
            msgs: HashMap::new(),
            stores: HashMap::new(),
            writes: HashMap::new(),
            forwards: HashMap::new(),
            deletes: HashMap::new(),
            reads: HashMap::new(),
            buckets: HashMap::new(),
            lists: HashMap::new(),
            deliveries: BTreeMap::new(),
            registry_pull: false,
            background_ops: 0,
            read_seq: 0,
            ticks: 0,
            paced_until: 0,
            aae: aae::AaeCore::default(),
            gc: gc::GcCore::default(),
            stats: Stats::default(),
        };
        core.init_cluster(restored)?;
        core.timers.insert((now + HANDOFF_TICK_MS, Timer::HandoffTick));
        core.arm_anti_entropy();
        Ok(core)
    }

    /// This node's id.
    pub fn id(&self) -> &NodeId {
        &self.config.id
    }

    /// The settings.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The actor whose dots this node's writes carry.
    pub fn actor(&self) -> &Actor {
        &self.actor
    }

    /// The ring of the current layout (the new owners' while a change is in progress).
    pub fn ring(&self) -> Option<&crate::ring::Ring> {
        self.cluster.placement.as_ref().map(Placement::ring)
    }

    /// Members believed up, this node included.
    pub fn up(&self) -> &BTreeSet<NodeId> {
        &self.up
    }

    /// Hints held, per owner.
    pub fn hints_pending(&self) -> BTreeMap<NodeId, usize> {
        self.hints.counts()
    }

    /// Number of hints held.
    pub fn hint_count(&self) -> usize {
        self.hints.len()
    }

    /// Work still running for requests that were already answered: a write's tail (waiting for
    /// the last targets, storing hints for those that missed it), read repairs. A graceful stop
    /// waits for it.
    pub fn background(&self) -> usize {
        self.writes.values().filter(|w| w.answered).count()
            + self.reads.values().filter(|r| r.answered).count()
            + self.background_ops
    }

    /// Client and peer requests not answered yet, and background work.
    pub fn in_flight(&self) -> usize {
        self.writes.len()
            + self.forwards.len()
            + self.deletes.len()
            + self.reads.len()
            + self.buckets.len()
            + self.lists.len()
            + self.background_ops
    }

    /// When the next timer is due ([`Event::Tick`] then).
    pub fn next_deadline(&self) -> Option<Millis> {
        self.timers.first().map(|(at, _)| *at)
    }

    /// The actions emitted since the last call.
    pub fn take_actions(&mut self) -> Vec<Action> {
        std::mem::take(&mut self.out)
    }

    /// The actions emitted since the last call, drained (the buffer keeps its capacity: an
    /// executor stepping thousands of events a second allocates no new one per step).
    pub fn drain_actions(&mut self) -> std::vec::Drain<'_, Action> {
        self.out.drain(..)
    }

    /// Processes one event at time `now` (never earlier than a previous step's), then fires the
    /// timers due by `now`.
    pub fn step(&mut self, now: Millis, event: Event) {
        self.now = self.now.max(now);
        match event {
            Event::Client { id, op } => self.on_client(id, op),
            Event::Inbound { id, from, request } => self.on_inbound(id, from, request),
            Event::Reply { id, result } => self.on_reply(id, result),
            Event::Stored { id, result } => self.on_stored(id, result),
            Event::View { up } => {
                self.up = up;
                self.up.insert(self.config.id.clone());
                if let Some(b) = self.cluster.placement.as_ref().and_then(Placement::banned) {
                    self.up.remove(b);
                }
            }
            Event::MemberUp { node } => {
                let banned = self.cluster.placement.as_ref().and_then(Placement::banned);
                if node != self.config.id && banned != Some(&node) {
                    self.up.insert(node.clone());
                    self.start_delivery(&node);
                    self.pull_registry();
                    self.pull_layout_from(&node);
                }
            }
            Event::Tick => {}
        }
        self.fire_timers();
    }

    fn on_client(&mut self, id: ClientId, op: ClientOp) {
        let needs_layout = !matches!(op, ClientOp::ChangeMembers { .. });
        if needs_layout && self.cluster.placement.is_none() {
            let e = Error::Unavailable("this node has not learnt the cluster layout yet".into());
            return self.answer(id, Err(e));
        }
        match op {
            ClientOp::Put { key, meta, body, context, overwrite, w, lww } => {
                let req = WriteRequest {
                    key,
                    op: WriteOp::Put { meta, body },
                    context,
                    overwrite,
                    w,
                    lww,
                    excluded: Vec::new(),
                };
                self.start_forward(ReplyTo::Client(id), req);
            }
            ClientOp::Delete { key, context, w, lww, at_ms } => {
                self.start_delete(id, key, context, w, lww, at_ms);
            }
            ClientOp::Get { key, r, lww, local } => {
                if local {
                    let op = StoreOp::Read { key, owners: Arc::clone(&self.members) };
                    self.store(op, StoreCont::LocalGet { client: id, lww });
                } else {
                    self.start_read(read::ReadFor::Client(id), key, r, lww);
                }
            }
            ClientOp::CreateBucket { name, policy, incarnation, created_ms } => {
                let change = BucketChange::Create { incarnation, policy, created_ms };
                self.start_bucket_change(id, name, change);
            }
            ClientOp::DeleteBucket { name, at_ms } => {
                self.start_bucket_change(id, name, BucketChange::Delete { at_ms });
            }
            ClientOp::List { bucket, incarnation, prefix, start_after, limit } => {
                self.start_list(id, bucket, incarnation, prefix, start_after, limit);
            }
            ClientOp::ChangeMembers { change } => self.start_change(id, change),
        }
    }

    fn on_reply(&mut self, id: ReqId, result: std::result::Result<Response, SendError>) {
        let Some(cont) = self.msgs.remove(&id) else { return };
        match cont {
            MsgCont::Forward { flow } => self.forward_reply(flow, result),
            MsgCont::WriteTarget { flow, node } => self.write_target_reply(flow, node, result),
            MsgCont::ReadTarget { flow, node } => {
                let set = match result {
                    Ok(Response::Set { set }) => Ok(set),
                    Ok(other) => Err(describe(&other)),
                    Err(e) => Err(e.to_string()),
                };
                self.read_reply(flow, node, set);
            }
            MsgCont::Repair { node } => {
                self.background_ops = self.background_ops.saturating_sub(1);
                match result {
                    Ok(Response::Ack { .. }) => self.stats.read_repairs += 1,
                    other => {
                        let _ = (node, other);
                    }
                }
            }
            MsgCont::HintDelivery { owner, key, version } => {
                self.hint_delivered(owner, key, version, result)
            }
            MsgCont::BucketTarget { flow, node } => self.bucket_target_reply(flow, node, result),
            MsgCont::RegistryPull => self.registry_pulled(result),
            MsgCont::ListTarget { flow, node } => {
                let entries = match result {
                    Ok(Response::Listing { entries }) => Some(entries),
                    _ => None,
                };
                self.list_reply(flow, node, entries);
            }
            MsgCont::Vote { ballot, node } => self.vote_reply(ballot, node, result),
            MsgCont::Committed => {}
            MsgCont::Status { node, pull } => self.status_reply(node, pull, result),
            MsgCont::SyncPage { source, hints, started } => {
                self.sync_page(source, hints, started, result)
            }
            MsgCont::Aae { id } => self.aae_reply(id, result),
            MsgCont::GcVote { id, node } => self.gc_vote(id, node, result),
            MsgCont::GcCollect { id, node } => self.gc_collected(id, node, None),
        }
    }

    fn on_stored(&mut self, id: ReqId, result: Result<StoreResult>) {
        let Some(cont) = self.stores.remove(&id) else { return };
        match cont {
            StoreCont::Coordinated { flow } => self.coordinated(flow, result),
            StoreCont::LocalDurable { flow } => self.local_durable(flow, result),
            StoreCont::LocalRead { flow } => {
                let me = self.config.id.clone();
                let set = match result {
                    Ok(StoreResult::Set(s)) => Ok(s),
                    Ok(_) => Err("unexpected store result".to_owned()),
                    Err(e) => Err(e.to_string()),
                };
                self.read_reply(flow, me, set);
            }
            StoreCont::LocalGet { client, lww } => {
                let result = match result {
                    Ok(StoreResult::Set(s)) => {
                        let mut set = s.unwrap_or_default();
                        if lww {
                            set.resolve_lww();
                        }
                        Ok(Answer::Read(ReadOutcome {
                            node: self.config.id.to_string(),
                            set,
                            report: None,
                        }))
                    }
                    Ok(_) => Err(Error::Internal("unexpected store result".into())),
                    Err(e) => Err(e),
                };
                self.out.push(Action::Answer { id: client, result });
            }
            StoreCont::LocalRepair { hint } => {
                self.background_ops = self.background_ops.saturating_sub(1);
                if let Ok(stored) = result {
                    self.stats.read_repairs += 1;
                    if let (Some((owner, key)), StoreResult::Merged(vv)) = (hint, stored) {
                        self.hints.record(key, owner, &vv);
                        self.stats.hints_stored += 1;
                    }
                }
            }
            StoreCont::MissedHint { flow, owner } => self.missed_hint_stored(flow, owner, result),
            StoreCont::Inbound { id, hint } => self.inbound_stored(id, hint, result),
            StoreCont::HintRead { owner, key, version } => {
                self.hint_read(owner, key, version, result)
            }
            StoreCont::HintRemoved { owner, key, version } => {
                self.hint_removed(owner, key, version, result)
            }
            StoreCont::BucketChanged { flow } => self.bucket_changed(flow, result),
            StoreCont::BucketHint { flow, owner } => self.bucket_hint_stored(flow, owner, result),
            StoreCont::RegistryApplied => {
                self.registry_pull = false;
                if let Ok(StoreResult::Changed(n)) = result {
                    self.stats.registry_synced += n as u64;
                    self.gc.registry_pulled = true;
                }
            }
            StoreCont::LocalList { flow } => {
                let me = self.config.id.clone();
                let entries = match result {
                    Ok(StoreResult::Listing(e)) => Some(e),
                    _ => None,
                };
                self.list_reply(flow, me, entries);
            }
            StoreCont::ClusterSaved { version, then } => self.cluster_saved(version, then, result),
            cont @ StoreCont::SyncApplied { .. } => self.on_stored_sync(cont, result),
            StoreCont::Readdress { owner, key, target } => {
                self.readdress_stored(owner, key, target, result)
            }
            StoreCont::Cleaned { version } => self.cleaned(version, result),
            StoreCont::Aae { id } => self.aae_stored(id, result),
            StoreCont::GcScan => self.gc_scanned(result),
            StoreCont::GcCollected { id } => {
                let me = self.config.id.clone();
                self.gc_collected(id, me, Some(result))
            }
            StoreCont::GcVersions { id, keys } => self.gc_versions(id, keys, result),
            StoreCont::GcInbound { id } => self.gc_inbound_collected(id, result),
            StoreCont::Reclaimed => self.reclaimed(result),
        }
    }

    fn fire_timers(&mut self) {
        while let Some(&(at, timer)) = self.timers.first() {
            if at > self.now {
                break;
            }
            self.timers.pop_first();
            match timer {
                Timer::WriteDeadline(flow) => self.write_deadline(flow),
                Timer::WriteAnswer(flow) => self.write_answer_due(flow),
                Timer::ReadSpeculate(flow) => self.read_speculate(flow),
                Timer::ReadDeadline(flow) => self.read_deadline(flow),
                Timer::HandoffTick => {
                    self.timers.insert((self.now + HANDOFF_TICK_MS, Timer::HandoffTick));
                    self.handoff_tick();
                }
                Timer::SyncPump => self.pump_sync(),
                Timer::AntiEntropy(generation) => self.aae_tick(generation),
                Timer::AaePump => self.aae_pump(),
            }
        }
    }

    // ---- helpers shared by the protocol modules ----

    fn fresh_id(&mut self) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        id
    }

    fn send(&mut self, to: NodeId, request: Arc<Request>, cont: MsgCont) {
        let id = ReqId(self.fresh_id());
        self.msgs.insert(id, cont);
        self.out.push(Action::Send { id, to, request });
    }

    fn store(&mut self, op: StoreOp, cont: StoreCont) {
        let id = ReqId(self.fresh_id());
        self.stores.insert(id, cont);
        self.out.push(Action::Store { id, op });
    }

    /// Accounts `bytes` of background transfer (partition sync, anti-entropy repair) against
    /// `--handoff-rate`, one budget for the whole node; returns the time before which the next
    /// transfer must wait, if it must.
    fn pace_transfer(&mut self, bytes: u64) -> Option<Millis> {
        let wait = bytes.saturating_mul(1000).checked_div(self.config.handoff_rate_bytes);
        self.paced_until = self.paced_until.max(self.now) + wait.unwrap_or(0);
        (self.paced_until > self.now).then_some(self.paced_until)
    }

    fn timer(&mut self, at: Millis, timer: Timer) {
        self.timers.insert((at, timer));
    }

    fn answer(&mut self, id: ClientId, result: Result<Answer>) {
        self.out.push(Action::Answer { id, result });
    }

    fn respond(&mut self, id: InboundId, response: Response) {
        self.out.push(Action::Respond { id, response });
    }

    /// The extended preference lists a write of `key` must reach W in (old owners first while a
    /// change is in progress), each with its effective N.
    fn write_lists(&self, key: &ObjectKey) -> Vec<(Vec<NodeId>, usize)> {
        let Some(p) = &self.cluster.placement else { return Vec::new() };
        let part = p.partition_of(key.hash());
        let mut ns = Vec::with_capacity(2);
        if let Some(old) = p.old_ring() {
            ns.push(old.n());
        }
        ns.push(p.ring().n());
        p.write_lists(part).into_iter().zip(ns).collect()
    }

    /// The extended preference list a read of `key` uses, with its effective N.
    fn read_list(&self, key: &ObjectKey) -> (Vec<NodeId>, usize) {
        let Some(p) = &self.cluster.placement else { return (Vec::new(), 0) };
        let part = p.partition_of(key.hash());
        let reads_old =
            p.layout().transition.as_ref().map(|t| t.phase) == Some(crate::layout::Phase::Syncing);
        let n = match p.old_ring() {
            Some(old) if reads_old => old.n(),
            _ => p.ring().n(),
        };
        (p.read_list(part), n)
    }

    /// The extended preference list coordinators of `key` are chosen from.
    #[cfg(test)]
    fn extended(&self, key: &ObjectKey) -> Vec<NodeId> {
        self.write_lists(key).into_iter().next().map(|(l, _)| l).unwrap_or_default()
    }

    /// The layout version requests are planned under now.
    fn layout_version(&self) -> u64 {
        self.cluster.placement.as_ref().map_or(0, Placement::version)
    }

    #[allow(unused_variables)]
    fn mutated(&self, m: Mutant) -> bool {
        #[cfg(feature = "mutants")]
        {
            self.config.mutant == Some(m)
        }
        #[cfg(not(feature = "mutants"))]
        {
            false
        }
    }
}

/// A short description of an unexpected response, for logs and errors.
fn describe(r: &Response) -> String {
    match r {
        Response::Error { code, message } => format!("{code}: {message}"),
        Response::Ack { .. } => "an unexpected Ack".into(),
        Response::Set { .. } => "an unexpected Set".into(),
        Response::Written(_) => "an unexpected Written".into(),
        Response::Registry { .. } => "an unexpected Registry".into(),
        Response::Listing { .. } => "an unexpected Listing".into(),
        Response::Status(_) => "an unexpected Status".into(),
        Response::Vote(_) => "an unexpected Vote".into(),
        Response::Page { .. } => "an unexpected Page".into(),
        Response::Hashes { .. } => "an unexpected Hashes".into(),
        Response::Digests { .. } => "an unexpected Digests".into(),
        Response::TombstoneVotes { .. } => "an unexpected TombstoneVotes".into(),
        Response::Collected { .. } => "an unexpected Collected".into(),
        Response::Stored => "an unexpected Stored".into(),
        Response::Chunk { .. } => "an unexpected Chunk".into(),
    }
}

/// How long a decided write waits for the remaining targets before answering: twice as long as
/// the decision took, between [`MIN_GRACE_MS`] and [`MAX_GRACE_MS`]. In a healthy cluster the
/// last replica answers within that window and the answer reports every replica; a slow or dead
/// replica delays the answer by at most the grace, never by the request timeout.
pub fn grace(decision_took: Millis) -> Millis {
    (decision_took * 2).clamp(MIN_GRACE_MS, MAX_GRACE_MS)
}

/// A small seeded generator (xorshift64*): every random choice of a node is a function of its
/// seed, so a simulated run replays exactly.
#[derive(Debug, Clone)]
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        // Never zero (xorshift's fixed point); spread small seeds.
        Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1)
    }

    fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) % n.max(1) as u64) as usize
    }
}

#[cfg(test)]
mod tests;
