//! The simulated world: nodes running the real [`NodeCore`], their stores, the network, the
//! failure detector, faults and time, driven by one discrete-event loop.
//!
//! THE WORLD'S RULES
//! =================
//! - **Time** is simulated milliseconds. Events sit in a priority queue ordered by (time,
//!   sequence number); equal times run in the order they were scheduled. Every random choice is
//!   drawn from generators forked from the seed, in event order, so a seed replays exactly.
//! - **Nodes** are executed like `bin/src/node/mod.rs` executes them: an event is stepped into
//!   the core and its actions are performed in order, with reads (and a `WaitDurable` that is
//!   already durable) run inline and their results stepped at once; every other store op runs
//!   0-1 ms later (the blocking pool: ops of one node may run out of order) and completes per
//!   the store's durability rules (`store.rs`), after a simulated fsync (mostly 0-4 ms, some
//!   5-30 ms, a few 50-200 ms). The core's timers are one `Timer` event at its next deadline.
//! - **Node status**: up; *paused* (SIGSTOP: every event for it — messages, replies, store
//!   completions, timers, client requests — waits in a queue and runs, in order, when it
//!   resumes; its peers' requests time out meanwhile); *stopping* (a clean stop: refuses new
//!   clients, keeps serving until nothing is in flight or 3 s passed, then syncs everything and
//!   goes down; restarts keep the actor epoch); *down* (crashed or stopped: a crash is a power
//!   loss — the store's unsynced tail, the core and everything in flight to or from it are gone;
//!   a restart builds a new core from the durable state, its hints from `all_hints()` and its
//!   epoch by `start_epoch(previous, clean, ...)`).
//! - **Network**: every request and response gets its own delay (reordering); during the
//!   chaos phase some take a long one (up to twice the request timeout), some are dropped, and
//!   some requests are delivered twice (a retry) — except `Coordinate`, the one request that is
//!   not idempotent, which the real data plane sends once on one connection and never resends
//!   (at-most-once; `membership/src/wire.rs`) — and some responses are sent twice. A response
//!   whose request already has its reply, like any late one, is still stepped: the core must
//!   ignore it. A partition cuts messages between its two sides (checked at send and at
//!   arrival). **Every `Send` gets exactly one reply at its sender** (like the real transport):
//!   the response; `NotDelivered` when the message certainly never left (peer down at send
//!   time: connection refused; across a partition, sometimes: no route); or `Failed` at the
//!   request timeout (lost request or response, paused or partitioned peer) or earlier when
//!   the connection to a crashing peer resets. After the heal the network is reliable and
//!   prompt, so the read-back measures the cluster, not the network.
//! - **Failure detection**: each node's view of who is up follows reality (up or stopping, not
//!   partitioned from it) with a lag of a few hundred ms: every change of reality schedules a
//!   re-check on every node after its own random lag, which steps `View` and `MemberUp`. A
//!   restarted node sees nobody else up for its first 0.3-2 s (it learns membership from the
//!   first heartbeats), while clients may already use it.
//! - **Clock skew**: each node's wall clock (metadata timestamps, delete times, bucket creation
//!   times) is off by up to ±2 s; the protocol never uses it for causality.
//! - **Faults** (chaos phase only) are scenarios on nodes not already in one, at most
//!   `max_faulty` nodes at a time (mostly a minority; one seed in five up to all but one):
//!   crash and restart, clean stop and restart, pause and resume, a partition and its heal,
//!   isolating a node then crashing it; plus store errors (a write refused before it is
//!   applied) on a small share of mutating store ops.
//! - **Invariants** checked as the world runs: no client or peer request answered twice, and a
//!   dot names one value of its key forever (the world sees every `Coordinate` result).

use std::cmp::Ordering;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap, VecDeque};
use std::sync::Arc;

use cairn_faults::history::Op;
use cairn_replication::node::{
    Action, Answer, ClientId, ClientOp, Config, Coordinated, Event, InboundId, LocalStore, Mutant,
    NodeCore, ObjectKey, ReqId, Request, Response, SendError, Stats as CoreStats, StoreOp,
    StoreResult, execute, start_epoch,
};
use cairn_replication::{Actor, Dot, Error, NodeId, Result};

use crate::client::Client;
use crate::rng::Rng;
use crate::store::{MemStore, SyncPolicy};

/// Partitions of the simulated ring.
pub const PARTITIONS: u32 = 64;
/// Replicas per object (N), read and write quorums (R, W).
pub const N: usize = 3;
/// Default read quorum.
pub const R: usize = 2;
/// Default write quorum.
pub const W: usize = 2;
/// Wall clocks start here (ms since the Unix epoch, 2027-01-15).
const WALL_EPOCH_MS: i64 = 1_800_000_000_000;
/// Longest a clean stop drains before it stops anyway.
const STOP_DRAIN_MS: u64 = 3_000;
/// Most events one run may process (a livelock is a finding, not a hang).
pub const MAX_EVENTS: u64 = 30_000_000;

/// The per-seed shape of the world, drawn from the seed.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Number of nodes.
    pub nodes: usize,
    /// Number of workload clients.
    pub clients: usize,
    /// Length of the chaos phase, ms.
    pub chaos_ms: u64,
    /// The nodes' request timeout, ms.
    pub request_timeout_ms: u64,
    /// Each node's sync policy.
    pub policies: Vec<SyncPolicy>,
    /// Each node's wall-clock offset, ms.
    pub skews: Vec<i64>,
    /// Network delay range, ms.
    pub delay: (u64, u64),
    /// Per mille of messages that take a long delay (up to twice the request timeout).
    pub slow_per_mille: u64,
    /// Per mille of messages dropped (chaos only).
    pub drop_per_mille: u64,
    /// Per mille of requests delivered twice and responses sent twice (chaos only).
    pub dup_per_mille: u64,
    /// Per mille of mutating store ops refused (chaos only).
    pub store_error_per_mille: u64,
    /// Most nodes in a fault scenario at once.
    pub max_faulty: usize,
    /// Gap between fault scenarios, ms.
    pub fault_gap: (u64, u64),
    /// Failure-detector lag range, ms.
    pub view_lag: (u64, u64),
    /// Think time between one client's operations, ms.
    pub think: (u64, u64),
    /// Hot keys at a time.
    pub hot_keys: usize,
    /// The nodes' anti-entropy interval, ms (0: off, in a third of the seeds, so that what
    /// handoff and read repair must do alone stays checked without anti-entropy's safety net).
    pub aae_interval_ms: u64,
    /// The nodes' tombstone grace, ms (1-5 s in every seed; `None` would turn collection off).
    pub tombstone_grace_ms: Option<u64>,
}

impl Settings {
    /// Draws the world's shape for a seed.
    pub fn draw(rng: &mut Rng, nodes: usize) -> Settings {
        let policies = if rng.chance(750) {
            vec![SyncPolicy::Always; nodes]
        } else {
            (0..nodes)
                .map(|_| match rng.below(3) {
                    0 => SyncPolicy::Always,
                    1 => SyncPolicy::Interval(rng.range(20, 500)),
                    _ => SyncPolicy::Never(rng.range(1_000, 5_000)),
                })
                .collect()
        };
        let lo = rng.range(0, 2);
        Settings {
            nodes,
            clients: rng.range(5, 8) as usize,
            chaos_ms: rng.range(10_000, 30_000),
            request_timeout_ms: rng.range(300, 800),
            policies,
            skews: (0..nodes).map(|_| rng.range(0, 4_000) as i64 - 2_000).collect(),
            delay: (lo, lo + rng.range(1, 8)),
            slow_per_mille: rng.range(0, 10),
            drop_per_mille: rng.range(0, 30),
            dup_per_mille: rng.range(0, 30),
            store_error_per_mille: rng.range(0, 10),
            // Mostly a minority at a time (quorums stay possible); one seed in five up to all
            // but one node (requests fail, hints pile up).
            max_faulty: if rng.chance(200) {
                rng.range(1, nodes.saturating_sub(1).max(1) as u64) as usize
            } else {
                rng.range(1, (nodes.saturating_sub(1) / 2).max(1) as u64) as usize
            },
            fault_gap: (200, rng.range(1_000, 3_000)),
            view_lag: (50, rng.range(200, 700)),
            think: (rng.range(5, 20), rng.range(40, 120)),
            hot_keys: rng.range(2, 4) as usize,
            aae_interval_ms: if rng.below(3) == 0 { 0 } else { rng.range(1_000, 5_000) },
            tombstone_grace_ms: Some(rng.range(1_000, 5_000)),
        }
    }
}

/// A node's state in the world.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// Running.
    Up,
    /// SIGSTOPped: its events wait.
    Paused,
    /// A clean stop is draining it.
    Stopping,
    /// Crashed or stopped.
    Down,
}

/// An acknowledged write or delete, as its answer reported it.
#[derive(Debug, Clone)]
pub struct Acked {
    /// When the client got the answer.
    pub at: u64,
    /// The dot of the version (or tombstone) it wrote.
    pub dot: cairn_replication::Dot,
    /// The nodes that stored it (owners or fallbacks).
    pub on: BTreeSet<NodeId>,
}

/// One simulated node.
pub struct Node {
    /// Its id.
    pub id: NodeId,
    /// Its status.
    pub status: Status,
    /// Incarnation: bumped when the node goes down; events of an older one are dropped.
    pub inc: u64,
    /// The protocol (None while down).
    pub core: Option<NodeCore>,
    /// Its store (survives crashes, minus the unsynced tail).
    pub store: MemStore,
    /// Its actor epoch.
    pub epoch: u32,
    /// The last stop was clean.
    clean_stop: bool,
    /// When the clean stop started.
    stop_started: u64,
    /// Before this time a (re)started node still sees nobody else up.
    joined_at: u64,
    /// The time of the `Timer` event armed, if any.
    timer_at: Option<u64>,
    /// Events that arrived while paused.
    deferred: Vec<Ev>,
    /// The view last stepped into the core.
    pub view: BTreeSet<NodeId>,
    next_inbound: u64,
    /// Peer requests being served: inbound id -> (sender, its incarnation, its request id).
    pub inbound: BTreeMap<u64, (usize, u64, ReqId)>,
    /// Requests sent and not answered yet: request id -> receiver.
    rpcs: BTreeMap<ReqId, usize>,
    /// Client requests being served: client request id -> who asked.
    pub client_reqs: BTreeMap<u64, Who>,
    /// Its disk was replaced while it was down: it restarts on an empty store, new epoch.
    wiped: bool,
}

/// Who sent a client request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Who {
    /// A workload client.
    Client(usize),
    /// The harness itself (setup, read-back).
    Probe,
}

/// What a client got back.
#[derive(Debug, Clone)]
pub enum Reply {
    /// The node's answer.
    Answer(Box<Result<Answer>>),
    /// The connection was refused: the request was never sent.
    Refused,
}

impl Reply {
    /// The answer, `None` when the connection was refused.
    pub fn into_answer(self) -> Option<Result<Answer>> {
        match self {
            Reply::Answer(a) => Some(*a),
            Reply::Refused => None,
        }
    }
}

/// A fault action.
#[derive(Debug, Clone)]
pub enum Fault {
    /// Start the next scenario.
    Next,
    /// Power loss.
    Crash(usize),
    /// Power loss, and the disk is replaced: the node restarts on an empty data directory
    /// with the same id (only with anti-entropy on, once per seed, never with membership
    /// changes: see `Fault::Wipe` in `next_scenario`).
    Wipe(usize),
    /// Clean stop.
    Stop(usize),
    /// Start again.
    Restart(usize),
    /// SIGSTOP.
    Pause(usize),
    /// SIGCONT.
    Resume(usize),
    /// Cut these nodes from the others.
    Partition(BTreeSet<usize>),
    /// End the partition.
    Heal,
    /// The scenario on these nodes is over.
    Release(Vec<usize>),
}

/// Something scheduled.
#[derive(Debug)]
pub enum Ev {
    /// A request arrives at `to`.
    Request {
        /// Sender.
        from: usize,
        /// Sender incarnation.
        from_inc: u64,
        /// Receiver.
        to: usize,
        /// Receiver incarnation at send time.
        to_inc: u64,
        /// The sender's request id.
        id: ReqId,
        /// The request.
        request: Arc<Request>,
    },
    /// A response arrives at the sender of its request.
    Response {
        /// The sender of the request.
        to: usize,
        /// Its incarnation.
        inc: u64,
        /// Its request id.
        id: ReqId,
        /// The response.
        response: Response,
    },
    /// A request failed (timeout, refused, reset).
    RpcFailed {
        /// Sender.
        node: usize,
        /// Sender incarnation.
        inc: u64,
        /// Request id.
        id: ReqId,
        /// How.
        error: SendError,
    },
    /// A store op runs.
    Apply {
        /// Node.
        node: usize,
        /// Incarnation.
        inc: u64,
        /// Op id.
        id: ReqId,
        /// The op.
        op: StoreOp,
    },
    /// A store op's result is stepped.
    Stored {
        /// Node.
        node: usize,
        /// Incarnation.
        inc: u64,
        /// Op id.
        id: ReqId,
        /// Result.
        result: Result<StoreResult>,
    },
    /// An fsync finished.
    Synced {
        /// Node.
        node: usize,
        /// Incarnation.
        inc: u64,
        /// Durable up to here.
        lsn: u64,
    },
    /// The background sync of `interval`/`never` stores.
    Writeback {
        /// Node.
        node: usize,
        /// Incarnation.
        inc: u64,
    },
    /// The core's next deadline.
    Timer {
        /// Node.
        node: usize,
        /// Incarnation.
        inc: u64,
        /// When it was armed for.
        at: u64,
    },
    /// The failure detector re-checks a node's view.
    ViewCheck {
        /// Node.
        node: usize,
        /// Incarnation.
        inc: u64,
    },
    /// A clean stop checks whether it drained.
    StopCheck {
        /// Node.
        node: usize,
        /// Incarnation.
        inc: u64,
    },
    /// A client request arrives at a node.
    ClientRequest {
        /// Node.
        node: usize,
        /// Incarnation at send time.
        inc: u64,
        /// Client request id.
        cid: u64,
        /// Who sent it.
        who: Who,
        /// The operation.
        op: ClientOp,
    },
    /// A client gets its answer.
    ClientAnswer {
        /// Who.
        who: Who,
        /// Client request id.
        cid: u64,
        /// The answer.
        reply: Reply,
    },
    /// A client stops waiting.
    ClientTimeout {
        /// Client.
        client: usize,
        /// Client request id.
        cid: u64,
    },
    /// A client starts its next operation.
    ClientWake {
        /// Client.
        client: usize,
    },
    /// A fault action.
    Fault(Fault),
    /// The membership nemesis looks at its change.
    Admin,
}

struct Queued {
    at: u64,
    seq: u64,
    ev: Ev,
}

impl PartialEq for Queued {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.seq) == (other.at, other.seq)
    }
}
impl Eq for Queued {}
impl PartialOrd for Queued {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Queued {
    /// Reversed: the heap pops the earliest.
    fn cmp(&self, other: &Self) -> Ordering {
        (other.at, other.seq).cmp(&(self.at, self.seq))
    }
}

/// Counters of the world (not the protocol's).
#[derive(Debug, Clone, Default)]
pub struct WorldStats {
    /// Events processed.
    pub events: u64,
    /// Requests sent between nodes.
    pub sent: u64,
    /// Messages dropped by the network.
    pub dropped: u64,
    /// Messages delivered twice.
    pub duplicated: u64,
    /// Replies stepped after their request already had one.
    pub late_replies: u64,
    /// Crashes, clean stops, pauses, partitions.
    pub crashes: u64,
    /// Clean stops.
    pub stops: u64,
    /// Pauses.
    pub pauses: u64,
    /// Partitions.
    pub partitions: u64,
    /// Disk replacements (also counted as crashes).
    pub wipes: u64,
    /// How long anti-entropy took to restore the disk replaced after quiescence, ms.
    pub aae_restored_ms: Option<u64>,
    /// Unsynced store records lost by crashes.
    pub records_lost: u64,
    /// Store ops refused by injected errors.
    pub store_errors: u64,
    /// Dots issued twice.
    pub dots_reused: u64,
    /// The protocol's counters, summed over every core that ran.
    pub core: CoreStats,
}

/// The whole simulated cluster.
pub struct World {
    /// Simulated time, ms.
    pub now: u64,
    seq: u64,
    queue: BinaryHeap<Queued>,
    /// The nodes.
    pub nodes: Vec<Node>,
    /// Ring members (node ids), in index order.
    pub members: Vec<NodeId>,
    /// The world's shape.
    pub settings: Settings,
    /// The planted bug, if any.
    pub mutant: Option<Mutant>,
    net: Rng,
    pub(crate) faults: Rng,
    disk: Rng,
    lag: Rng,
    /// Random choices of the harness (seeds of cores, epochs, clients).
    pub rng: Rng,
    /// The workload clients.
    pub clients: Vec<Client>,
    /// Every write and delete the clients sent.
    pub history: Vec<Op>,
    /// Answers to the harness's own requests, by client request id (`None` until answered).
    pub probes: BTreeMap<u64, Option<Reply>>,
    next_cid: u64,
    partition: Option<BTreeSet<usize>>,
    reserved: BTreeSet<usize>,
    /// Faults, lossy network and store errors are on.
    pub chaos: bool,
    /// Clients start new operations.
    pub clients_on: bool,
    /// Object names whose records a crash of an `interval`/`never` node dropped after reporting
    /// them stored: acknowledged writes of these keys may legitimately be gone.
    pub excused: BTreeSet<String>,
    /// Invariants broken while running: a request answered twice, a dot issued twice, content
    /// no client wrote.
    pub breaches: Vec<String>,
    /// The event bound was hit.
    pub overrun: bool,
    /// Counters.
    pub stats: WorldStats,
    /// The object bucket's incarnation.
    pub incarnation: u64,
    /// Clients ask for last-writer-wins resolution (the control run).
    pub lww: bool,
    dots: BTreeMap<(ObjectKey, Dot), String>,
    /// Membership changes run: the last node starts outside the layout.
    pub membership: bool,
    /// The membership nemesis.
    pub admin: crate::admin::Admin,
    /// Force-removed nodes: down for good.
    pub gone: BTreeSet<usize>,
    /// Nodes whose disk was replaced (every copy they held is gone; anti-entropy restores it).
    pub wiped: BTreeSet<usize>,
    /// Per object name, when a node last ran a tombstone collection covering it.
    pub collected_at: BTreeMap<String, u64>,
    /// Per key, for each acknowledged write or delete, the nodes that stored it (owners or
    /// fallbacks): a force-removal destroys those copies.
    pub acked_on: BTreeMap<String, Vec<Acked>>,
    /// Keys with an acknowledged operation one of whose copies a force-removal destroyed: fewer
    /// than W copies are guaranteed, so the owner check before read repair skips them.
    pub reduced: BTreeSet<String>,
}

impl World {
    /// A world of `nodes` nodes for `seed`, all up at time 0 (views still empty).
    pub fn new(seed: u64, nodes: usize, mutant: Option<Mutant>, membership: bool) -> Result<World> {
        let mut root = Rng::new(seed);
        let settings = Settings::draw(&mut root, nodes);
        let members: Vec<NodeId> =
            (1..=nodes).map(|i| NodeId::new(format!("n{i}"))).collect::<Result<_>>()?;
        let mut w = World {
            now: 0,
            seq: 0,
            queue: BinaryHeap::new(),
            nodes: Vec::new(),
            members: members.clone(),
            settings,
            mutant,
            net: root.fork(),
            faults: root.fork(),
            disk: root.fork(),
            lag: root.fork(),
            rng: root.fork(),
            clients: Vec::new(),
            history: Vec::new(),
            probes: BTreeMap::new(),
            next_cid: 1,
            partition: None,
            reserved: BTreeSet::new(),
            chaos: false,
            clients_on: false,
            excused: BTreeSet::new(),
            breaches: Vec::new(),
            overrun: false,
            stats: WorldStats::default(),
            incarnation: 0,
            lww: false,
            dots: BTreeMap::new(),
            membership,
            admin: crate::admin::Admin::default(),
            gone: BTreeSet::new(),
            wiped: BTreeSet::new(),
            collected_at: BTreeMap::new(),
            acked_on: BTreeMap::new(),
            reduced: BTreeSet::new(),
        };
        for (i, id) in members.into_iter().enumerate() {
            w.nodes.push(Node {
                id,
                status: Status::Down,
                inc: 0,
                core: None,
                store: MemStore::new(w.settings.policies[i], PARTITIONS),
                epoch: 0,
                clean_stop: false,
                stop_started: 0,
                joined_at: 0,
                timer_at: None,
                deferred: Vec::new(),
                view: BTreeSet::new(),
                next_inbound: 1,
                inbound: BTreeMap::new(),
                rpcs: BTreeMap::new(),
                client_reqs: BTreeMap::new(),
                wiped: false,
            });
        }
        for i in 0..nodes {
            w.start_node(i, None)?;
        }
        Ok(w)
    }

    /// The protocol settings of node `i`.
    fn config(&self, i: usize) -> Config {
        #[allow(unused_mut)]
        // With membership changes the last node starts outside the layout (no `--members`).
        let founders = if self.membership { self.members.len() - 1 } else { self.members.len() };
        let seed_members =
            if i < founders { self.members[..founders].to_vec() } else { Vec::new() };
        let mut c = Config::new(self.members[i].clone(), seed_members, PARTITIONS, N, R, W);
        c.request_timeout_ms = self.settings.request_timeout_ms;
        c.anti_entropy_interval_ms = self.settings.aae_interval_ms;
        c.tombstone_grace_ms = self.settings.tombstone_grace_ms;
        #[cfg(feature = "mutants")]
        {
            c.mutant = self.mutant;
        }
        c
    }

    /// Node `i`'s wall clock (ms since the Unix epoch).
    pub fn wall(&self, i: usize) -> u64 {
        (WALL_EPOCH_MS + self.now as i64 + self.settings.skews[i]).max(0) as u64
    }

    /// Schedules `ev` at `at` (never earlier than now).
    pub fn push(&mut self, at: u64, ev: Ev) {
        self.seq += 1;
        self.queue.push(Queued { at: at.max(self.now), seq: self.seq, ev });
    }

    /// A fresh client request id.
    pub fn cid(&mut self) -> u64 {
        self.next_cid += 1;
        self.next_cid
    }

    /// Processes events until `done` holds (checked every 10 simulated ms) or `deadline`
    /// passes; returns whether `done` held.
    pub fn run_until(&mut self, deadline: u64, done: impl Fn(&World) -> bool) -> bool {
        let mut next_check = self.now;
        loop {
            if self.now >= next_check {
                if done(self) {
                    return true;
                }
                next_check = self.now + 10;
            }
            let at = match self.queue.peek() {
                Some(q) if q.at <= deadline => q.at,
                _ => {
                    self.now = self.now.max(deadline);
                    return done(self);
                }
            };
            if self.stats.events >= MAX_EVENTS {
                self.overrun = true;
                return false;
            }
            let Some(q) = self.queue.pop() else { return done(self) };
            self.now = at;
            self.stats.events += 1;
            self.dispatch(q.ev);
        }
    }

    fn dispatch(&mut self, ev: Ev) {
        let target = match &ev {
            Ev::Request { to, to_inc, .. } => Some((*to, *to_inc)),
            Ev::Response { to, inc, .. } => Some((*to, *inc)),
            Ev::RpcFailed { node, inc, .. }
            | Ev::Apply { node, inc, .. }
            | Ev::Stored { node, inc, .. }
            | Ev::Timer { node, inc, .. }
            | Ev::ViewCheck { node, inc }
            | Ev::ClientRequest { node, inc, .. } => Some((*node, *inc)),
            Ev::Synced { node, inc, .. }
            | Ev::Writeback { node, inc }
            | Ev::StopCheck { node, inc } => {
                if self.nodes[*node].inc != *inc || self.nodes[*node].core.is_none() {
                    return;
                }
                None
            }
            _ => None,
        };
        if let Some((n, inc)) = target {
            let node = &mut self.nodes[n];
            if node.inc != inc || node.core.is_none() {
                // Sent to an incarnation that is gone: lost (its sender times out).
                return;
            }
            if node.status == Status::Paused {
                node.deferred.push(ev);
                return;
            }
        }
        match ev {
            Ev::Request { from, from_inc, to, id, request, .. } => {
                if self.cut(from, to) {
                    return;
                }
                let node = &mut self.nodes[to];
                let iid = node.next_inbound;
                node.next_inbound += 1;
                node.inbound.insert(iid, (from, from_inc, id));
                let from = self.members[from].clone();
                let request = Arc::unwrap_or_clone(request);
                self.step(to, Event::Inbound { id: InboundId(iid), from, request });
            }
            Ev::Response { to, id, response, .. } => {
                if self.nodes[to].rpcs.remove(&id).is_none() {
                    self.stats.late_replies += 1;
                }
                self.step(to, Event::Reply { id, result: Ok(response) });
            }
            Ev::RpcFailed { node, id, error, .. } => {
                if self.nodes[node].rpcs.remove(&id).is_some() {
                    self.step(node, Event::Reply { id, result: Err(error) });
                }
            }
            Ev::Apply { node, id, op, .. } => self.apply_op(node, id, op),
            Ev::Stored { node, id, result, .. } => self.step(node, Event::Stored { id, result }),
            Ev::Synced { node, lsn, .. } => {
                let (done, next) = self.nodes[node].store.synced(lsn);
                let inc = self.nodes[node].inc;
                for (id, result) in done {
                    self.push(self.now, Ev::Stored { node, inc, id, result });
                }
                if let Some(lsn) = next {
                    let at = self.now + self.fsync_latency();
                    self.push(at, Ev::Synced { node, inc, lsn });
                }
            }
            Ev::Writeback { node, inc } => {
                if let Some(lsn) = self.nodes[node].store.start_sync() {
                    let at = self.now + self.fsync_latency();
                    self.push(at, Ev::Synced { node, inc, lsn });
                }
                if let Some(p) = self.nodes[node].store.policy().background_period() {
                    self.push(self.now + p, Ev::Writeback { node, inc });
                }
            }
            Ev::Timer { node, at, .. } => {
                if self.nodes[node].timer_at == Some(at) {
                    self.nodes[node].timer_at = None;
                    self.step(node, Event::Tick);
                }
            }
            Ev::ViewCheck { node, .. } => self.refresh_view(node),
            Ev::StopCheck { node, inc } => self.stop_check(node, inc),
            Ev::ClientRequest { node, cid, who, op, .. } => {
                if self.nodes[node].status == Status::Stopping {
                    let at = self.now + self.client_link();
                    self.push(at, Ev::ClientAnswer { who, cid, reply: Reply::Refused });
                    return;
                }
                self.nodes[node].client_reqs.insert(cid, who);
                self.step(node, Event::Client { id: ClientId(cid), op });
            }
            Ev::ClientAnswer { who, cid, reply } => match who {
                Who::Client(c) => self.client_answer(c, cid, reply),
                Who::Probe => {
                    if let Some(slot) = self.probes.get_mut(&cid) {
                        *slot = Some(reply);
                    }
                }
            },
            Ev::ClientTimeout { client, cid } => self.client_timeout(client, cid),
            Ev::ClientWake { client } => self.client_wake(client),
            Ev::Fault(f) => self.fault(f),
            Ev::Admin => self.admin_step(),
        }
    }

    // ---- the executor ----

    /// Steps `event` into node `n`'s core and performs what it asks (see `bin/src/node/mod.rs`:
    /// the same order, reads inline).
    pub fn step(&mut self, n: usize, event: Event) {
        let mut queue = VecDeque::new();
        self.step_into(n, event, &mut queue);
        while let Some(action) = queue.pop_front() {
            self.perform(n, action, &mut queue);
        }
        self.arm_timer(n);
    }

    fn step_into(&mut self, n: usize, event: Event, queue: &mut VecDeque<Action>) {
        let now = self.now;
        let Some(core) = self.nodes[n].core.as_mut() else { return };
        core.step(now, event);
        queue.extend(core.take_actions());
    }

    fn perform(&mut self, n: usize, action: Action, queue: &mut VecDeque<Action>) {
        match action {
            Action::Send { id, to, request } => self.send(n, id, &to, request),
            Action::Respond { id, response } => self.respond(n, id, response),
            Action::Answer { id, result } => {
                let Some(who) = self.nodes[n].client_reqs.remove(&id.0) else {
                    self.breach(n, format!("answered client request {} twice", id.0));
                    return;
                };
                let at = self.now + self.client_link();
                self.push(
                    at,
                    Ev::ClientAnswer { who, cid: id.0, reply: Reply::Answer(Box::new(result)) },
                );
            }
            Action::Store { id, op } => {
                let store = &self.nodes[n].store;
                let durable = matches!(op, StoreOp::WaitDurable { lsn } if store.is_durable(lsn));
                if durable {
                    let result = Ok(StoreResult::Durable);
                    self.step_into(n, Event::Stored { id, result }, queue);
                } else if op.is_read() {
                    let result = execute(store, op);
                    self.step_into(n, Event::Stored { id, result }, queue);
                } else {
                    let (inc, at) = (self.nodes[n].inc, self.now + self.disk.below(2));
                    self.push(at, Ev::Apply { node: n, inc, id, op });
                }
            }
        }
    }

    /// Runs a store op that is not a read, then completes it per the durability rules.
    fn apply_op(&mut self, n: usize, id: ReqId, op: StoreOp) {
        let injectable = matches!(
            op,
            StoreOp::Coordinate { .. }
                | StoreOp::Apply { .. }
                | StoreOp::StoreHint { .. }
                | StoreOp::ApplyBucket { .. }
                | StoreOp::ChangeBucket { .. }
        );
        let inc = self.nodes[n].inc;
        let (needed, result) =
            if self.chaos && injectable && self.disk.chance(self.settings.store_error_per_mille) {
                // Refused before anything is written (a full disk, an I/O error on append).
                self.stats.store_errors += 1;
                (0, Err(Error::Storage("simulated disk error".into())))
            } else {
                // What it must see durable before completing: the lsn it waits for, none for
                // `Coordinate`, the log's end for everything else (see `store.rs`).
                let wait = match &op {
                    StoreOp::WaitDurable { lsn } => Some(*lsn),
                    StoreOp::Coordinate { .. } | StoreOp::SaveCluster(_) => None,
                    _ => Some(u64::MAX),
                };
                let coordinated = match &op {
                    StoreOp::Coordinate { key, .. } => Some(key.clone()),
                    _ => None,
                };
                if let StoreOp::CollectTombstones { keys } = &op {
                    let trace = std::env::var("CAIRN_SIM_TRACE_KEY").ok();
                    for (k, vv) in keys {
                        self.collected_at.insert(k.name.clone(), self.now);
                        if trace.as_deref() == Some(k.name.as_str()) {
                            let held = self.nodes[n].store.replica(k).map(|s| s.join());
                            eprintln!(
                                "DBG {} ms: {} collects {} at {vv:?}; holds {held:?}",
                                self.now, self.members[n], k.name
                            );
                        }
                    }
                }
                let wall = self.wall(n);
                let store = &self.nodes[n].store;
                store.set_wall(wall);
                let result = execute(store, op);
                let needed = match wait {
                    _ if result.is_err() => 0,
                    Some(u64::MAX) => store.last_lsn(),
                    Some(lsn) => lsn,
                    None => 0,
                };
                if let (Ok(StoreResult::Coordinated(c)), Some(key)) = (&result, coordinated) {
                    self.dot_issued(n, key, c);
                }
                (needed, result)
            };
        let f = self.nodes[n].store.finish(needed, id, result);
        if let Some((id, result)) = f.done {
            self.push(self.now, Ev::Stored { node: n, inc, id, result });
        }
        if let Some(lsn) = f.start_sync {
            let at = self.now + self.fsync_latency();
            self.push(at, Ev::Synced { node: n, inc, lsn });
        }
    }

    /// The invariant the actor epoch exists for (Riak's KV679): a dot names one value of its
    /// key, forever. A coordinator that issued a dot again for another value (its counter went
    /// back) makes replicas that saw the first one drop the second as already seen.
    fn dot_issued(&mut self, n: usize, key: ObjectKey, c: &Coordinated) {
        let value = c.set.get(&c.dot).map(|s| format!("{s:?}")).unwrap_or_default();
        let what = format!("issued dot {} of {} a second time, for another value", c.dot, key.name);
        if let Some(old) = self.dots.insert((key, c.dot.clone()), value.clone())
            && old != value
        {
            self.stats.dots_reused += 1;
            self.breach(n, what);
        }
    }

    fn fsync_latency(&mut self) -> u64 {
        match self.disk.below(100) {
            0 => self.disk.range(50, 200),
            1..=9 => self.disk.range(5, 30),
            _ => self.disk.range(0, 4),
        }
    }

    fn arm_timer(&mut self, n: usize) {
        let now = self.now;
        let node = &mut self.nodes[n];
        let Some(deadline) = node.core.as_ref().and_then(NodeCore::next_deadline) else { return };
        let at = deadline.max(now);
        if node.timer_at.is_none_or(|t| at < t) {
            node.timer_at = Some(at);
            let inc = node.inc;
            self.push(at, Ev::Timer { node: n, inc, at });
        }
    }

    fn breach(&mut self, n: usize, what: String) {
        if self.breaches.len() < 20 {
            self.breaches.push(format!("{} at {} ms: {what}", self.members[n], self.now));
        }
    }

    // ---- the network ----

    /// True when a partition separates `a` and `b`.
    pub fn cut(&self, a: usize, b: usize) -> bool {
        self.partition.as_ref().is_some_and(|s| s.contains(&a) != s.contains(&b))
    }

    fn delay(&mut self) -> u64 {
        if self.lossy(self.settings.slow_per_mille) {
            self.net.range(self.settings.delay.1, 2 * self.settings.request_timeout_ms)
        } else {
            self.net.range(self.settings.delay.0, self.settings.delay.1)
        }
    }

    fn client_link(&mut self) -> u64 {
        self.net.range(0, 2)
    }

    fn lossy(&mut self, per_mille: u64) -> bool {
        self.chaos && self.net.chance(per_mille)
    }

    fn send(&mut self, from: usize, id: ReqId, to: &NodeId, request: Arc<Request>) {
        self.stats.sent += 1;
        let from_inc = self.nodes[from].inc;
        let Some(to) = self.members.iter().position(|m| m == to) else {
            let error = SendError::NotDelivered(format!("{to} is not a member"));
            self.push(self.now, Ev::RpcFailed { node: from, inc: from_inc, id, error });
            return;
        };
        self.nodes[from].rpcs.insert(id, to);
        let timeout = self.now + self.settings.request_timeout_ms;
        let error = SendError::Failed(format!("{}: timed out", self.members[to]));
        self.push(timeout, Ev::RpcFailed { node: from, inc: from_inc, id, error });
        if self.nodes[to].status == Status::Down {
            let at = self.now + self.net.range(0, 2);
            let error =
                SendError::NotDelivered(format!("{}: connection refused", self.members[to]));
            self.push(at, Ev::RpcFailed { node: from, inc: from_inc, id, error });
            return;
        }
        if self.cut(from, to) {
            if self.net.chance(300) {
                let at = self.now + self.net.range(1, 5);
                let error = SendError::NotDelivered(format!("{}: no route", self.members[to]));
                self.push(at, Ev::RpcFailed { node: from, inc: from_inc, id, error });
            }
            return;
        }
        if self.lossy(self.settings.drop_per_mille) {
            self.stats.dropped += 1;
            return;
        }
        let to_inc = self.nodes[to].inc;
        // A request may be delivered twice (a retry), except a `Coordinate`: the data plane
        // sends each request once on one connection and never resends it, and the protocol
        // relies on that for its one non-idempotent request (`messages.rs`).
        let idempotent = !matches!(*request, Request::Coordinate(_));
        let twice = idempotent && self.lossy(self.settings.dup_per_mille);
        let at = self.now + self.delay();
        let ev = |request| Ev::Request { from, from_inc, to, to_inc, id, request };
        self.push(at, ev(Arc::clone(&request)));
        if twice {
            self.stats.duplicated += 1;
            let at = at + self.delay();
            self.push(at, ev(request));
        }
    }

    fn respond(&mut self, n: usize, iid: InboundId, response: Response) {
        let Some((to, inc, id)) = self.nodes[n].inbound.remove(&iid.0) else {
            self.breach(n, format!("responded to peer request {} twice", iid.0));
            return;
        };
        if self.cut(n, to) {
            return;
        }
        if self.lossy(self.settings.drop_per_mille) {
            self.stats.dropped += 1;
            return;
        }
        let twice = self.lossy(self.settings.dup_per_mille);
        let at = self.now + self.delay();
        if twice {
            self.stats.duplicated += 1;
            let again = at + self.delay();
            self.push(again, Ev::Response { to, inc, id, response: response.clone() });
        }
        self.push(at, Ev::Response { to, inc, id, response });
    }

    // ---- the failure detector ----

    /// Every node re-checks who is up after its own lag.
    fn reality_changed(&mut self) {
        for i in 0..self.nodes.len() {
            if self.nodes[i].core.is_some() {
                let at =
                    self.now + self.lag.range(self.settings.view_lag.0, self.settings.view_lag.1);
                let inc = self.nodes[i].inc;
                self.push(at, Ev::ViewCheck { node: i, inc });
            }
        }
    }

    /// The members node `i` can reach now, itself included.
    pub fn reachable(&self, i: usize) -> BTreeSet<NodeId> {
        (0..self.nodes.len())
            .filter(|&j| {
                j == i
                    || (matches!(self.nodes[j].status, Status::Up | Status::Stopping)
                        && !self.cut(i, j))
            })
            .map(|j| self.members[j].clone())
            .collect()
    }

    fn refresh_view(&mut self, i: usize) {
        if self.now < self.nodes[i].joined_at {
            // Just started: it learns who is up from the first heartbeats.
            let (at, inc) = (self.nodes[i].joined_at, self.nodes[i].inc);
            self.push(at, Ev::ViewCheck { node: i, inc });
            return;
        }
        let up = self.reachable(i);
        let old = std::mem::replace(&mut self.nodes[i].view, up.clone());
        if up == old {
            return;
        }
        self.step(i, Event::View { up: up.clone() });
        for m in up.difference(&old) {
            if *m != self.members[i] {
                self.step(i, Event::MemberUp { node: m.clone() });
            }
        }
    }

    // ---- node lifecycle ----

    fn start_node(&mut self, i: usize, previous: Option<u32>) -> Result<()> {
        let clean = self.nodes[i].clean_stop;
        let rng = &mut self.rng;
        let epoch = start_epoch(previous, clean, || rng.next_u64() as u32, self.mutant);
        let hints = self.nodes[i].store.all_hints()?;
        let actor = Actor::new(self.members[i].clone(), epoch);
        let seed = self.rng.next_u64();
        let restored = self.nodes[i].store.cluster_state();
        let core = NodeCore::new(self.config(i), actor, hints, restored, seed, self.now)?;
        let node = &mut self.nodes[i];
        node.core = Some(core);
        node.epoch = epoch;
        node.status = Status::Up;
        node.clean_stop = false;
        node.view = BTreeSet::from([self.members[i].clone()]);
        node.joined_at = if previous.is_some() { self.now + self.lag.range(300, 2_000) } else { 0 };
        let inc = node.inc;
        if let Some(p) = node.store.policy().background_period() {
            self.push(self.now + p, Ev::Writeback { node: i, inc });
        }
        self.arm_timer(i);
        self.reality_changed();
        Ok(())
    }

    /// Takes node `i` down (crash, or the end of a clean stop).
    pub(crate) fn take_down(&mut self, i: usize, clean: bool) {
        let node = &mut self.nodes[i];
        if let Some(core) = node.core.take() {
            add_stats(&mut self.stats.core, &core.stats);
        }
        if clean {
            node.store.sync_all();
        } else {
            let (lost, keys) = node.store.crash();
            self.stats.records_lost += lost as u64;
            if node.store.policy() != SyncPolicy::Always {
                // Everything in the tail had been reported stored (ops do not wait there).
                self.excused.extend(keys.into_iter().map(|k| k.name));
            }
        }
        node.inc += 1;
        node.status = Status::Down;
        node.clean_stop = clean;
        node.timer_at = None;
        node.deferred.clear();
        node.inbound.clear();
        node.rpcs.clear();
        node.client_reqs.clear();
        // Peers' requests in flight to it: their connection resets, noticed at once or not.
        for m in 0..self.nodes.len() {
            let inc = self.nodes[m].inc;
            let ids: Vec<ReqId> =
                self.nodes[m].rpcs.iter().filter(|(_, to)| **to == i).map(|(id, _)| *id).collect();
            for id in ids {
                if self.net.chance(500) {
                    let at = self.now + self.net.range(1, 10);
                    let error = SendError::Failed(format!("{}: connection reset", self.members[i]));
                    self.push(at, Ev::RpcFailed { node: m, inc, id, error });
                }
            }
        }
        self.reality_changed();
    }

    fn stop_check(&mut self, i: usize, inc: u64) {
        if self.nodes[i].status != Status::Stopping {
            return;
        }
        let drained = self.nodes[i].core.as_ref().is_none_or(|c| c.in_flight() == 0);
        if drained || self.now >= self.nodes[i].stop_started + STOP_DRAIN_MS {
            self.take_down(i, true);
            if !self.chaos {
                // Stopped after the heal began: back at once.
                self.restart(i);
            }
        } else {
            self.push(self.now + 20, Ev::StopCheck { node: i, inc });
        }
    }

    /// Restarts node `i` if it is down.
    pub fn restart(&mut self, i: usize) {
        if self.nodes[i].status != Status::Down || self.gone.contains(&i) {
            return;
        }
        // A replaced disk is a new data directory: no previous epoch.
        let previous = (!std::mem::take(&mut self.nodes[i].wiped)).then_some(self.nodes[i].epoch);
        if let Err(e) = self.start_node(i, previous) {
            self.breach(i, format!("could not restart: {e}"));
        }
    }

    /// Powers node `i` off (if it runs) and replaces its disk: it restarts (at its next
    /// `restart`) on an empty store, with a new epoch. With `excuse`, the operations whose
    /// copies it destroyed are excused like a force-removal's: one it alone stored (`w=1`) from
    /// the loss checks, one it stored with others from the owner check.
    pub fn wipe(&mut self, i: usize, excuse: bool) {
        if self.nodes[i].status != Status::Down {
            self.take_down(i, false);
        }
        if excuse {
            let id = &self.members[i];
            for (key, ops) in &self.acked_on {
                for op in ops.iter().filter(|op| op.on.contains(id)) {
                    self.reduced.insert(key.clone());
                    if op.on.len() == 1 {
                        self.excused.insert(key.clone());
                    }
                }
            }
        }
        self.stats.wipes += 1;
        let policy = self.nodes[i].store.policy();
        self.nodes[i].store = MemStore::new(policy, PARTITIONS);
        self.nodes[i].wiped = true;
        self.wiped.insert(i);
    }

    /// Resumes node `i` if it is paused: what waited runs now, in order.
    pub fn resume(&mut self, i: usize) {
        if self.nodes[i].status != Status::Paused {
            return;
        }
        self.nodes[i].status = Status::Up;
        for ev in std::mem::take(&mut self.nodes[i].deferred) {
            self.push(self.now, ev);
        }
        self.reality_changed();
    }

    /// Ends the partition, if any.
    pub fn heal_partition(&mut self) {
        if self.partition.take().is_some() {
            self.reality_changed();
        }
    }

    // ---- faults ----

    /// Schedules the first fault scenario.
    pub fn start_faults(&mut self) {
        let at = self.now + self.faults.range(self.settings.fault_gap.0, self.settings.fault_gap.1);
        self.push(at, Ev::Fault(Fault::Next));
    }

    fn fault(&mut self, f: Fault) {
        if !self.chaos {
            return;
        }
        match f {
            Fault::Next => {
                self.next_scenario();
                let gap = self.faults.range(self.settings.fault_gap.0, self.settings.fault_gap.1);
                self.push(self.now + gap, Ev::Fault(Fault::Next));
            }
            Fault::Crash(i) => {
                if self.nodes[i].status != Status::Down {
                    self.stats.crashes += 1;
                    self.take_down(i, false);
                }
            }
            Fault::Wipe(i) => {
                if self.nodes[i].status != Status::Down {
                    self.stats.crashes += 1;
                }
                self.wipe(i, true);
            }
            Fault::Stop(i) => {
                if self.nodes[i].status == Status::Up {
                    self.stats.stops += 1;
                    let inc = self.nodes[i].inc;
                    self.nodes[i].status = Status::Stopping;
                    self.nodes[i].stop_started = self.now;
                    self.push(self.now, Ev::StopCheck { node: i, inc });
                }
            }
            Fault::Restart(i) => {
                if self.nodes[i].status == Status::Stopping {
                    self.push(self.now + 100, Ev::Fault(Fault::Restart(i)));
                } else {
                    self.restart(i);
                }
            }
            Fault::Pause(i) => {
                if self.nodes[i].status == Status::Up {
                    self.stats.pauses += 1;
                    self.nodes[i].status = Status::Paused;
                    self.reality_changed();
                }
            }
            Fault::Resume(i) => self.resume(i),
            Fault::Partition(side) => {
                self.stats.partitions += 1;
                self.partition = Some(side);
                self.reality_changed();
            }
            Fault::Heal => self.heal_partition(),
            Fault::Release(nodes) => {
                for n in nodes {
                    self.reserved.remove(&n);
                }
            }
        }
    }

    /// Picks a scenario on nodes not already in one.
    fn next_scenario(&mut self) {
        let free: Vec<usize> = (0..self.nodes.len())
            .filter(|n| !self.reserved.contains(n) && self.nodes[*n].status == Status::Up)
            .collect();
        let room = self.settings.max_faulty.saturating_sub(self.reserved.len());
        if free.is_empty() || room == 0 {
            return;
        }
        let x = free[self.faults.index(free.len())];
        let now = self.now;
        let mut plan: Vec<(u64, Fault)> = Vec::new();
        let kind = self.faults.below(100);
        let end = match kind {
            0..=29 => {
                let back = now + self.faults.range(200, 4_000);
                // With anti-entropy on, one crash in three of a seed's first is a disk
                // replacement: at most one per seed (two could take both copies of a write
                // acknowledged at W = 2), and not with membership changes (a replaced node
                // restarts on its founding --members; see docs/operations.md).
                let wipe = self.settings.aae_interval_ms > 0
                    && !self.membership
                    && self.wiped.is_empty()
                    && self.faults.below(3) == 0;
                plan.push((now, if wipe { Fault::Wipe(x) } else { Fault::Crash(x) }));
                plan.push((back, Fault::Restart(x)));
                back
            }
            30..=39 => {
                let back = now + self.faults.range(500, 4_000);
                plan.push((now, Fault::Stop(x)));
                plan.push((back, Fault::Restart(x)));
                back
            }
            40..=64 => {
                let back = now + self.faults.range(50, 3_000);
                plan.push((now, Fault::Pause(x)));
                plan.push((back, Fault::Resume(x)));
                back
            }
            65..=84 if self.partition.is_none() => {
                let size =
                    self.faults.range(1, room.min(free.len()).min(self.nodes.len() / 2) as u64);
                let mut side = BTreeSet::from([x]);
                while side.len() < size as usize {
                    side.insert(free[self.faults.index(free.len())]);
                }
                // One partition in five outlasts the tombstone grace (5-15 s): deletes on the
                // majority side must not be collected while the cut-off owners may still hold
                // what they supersede (and nothing may come back at the heal).
                let heal = now
                    + if self.faults.below(5) == 0 {
                        self.faults.range(5_000, 15_000)
                    } else {
                        self.faults.range(200, 5_000)
                    };
                for n in &side {
                    self.reserved.insert(*n);
                }
                let nodes: Vec<usize> = side.iter().copied().collect();
                plan.push((now, Fault::Partition(side)));
                plan.push((heal, Fault::Heal));
                plan.push((heal, Fault::Release(nodes)));
                for (at, f) in plan {
                    self.push(at, Ev::Fault(f));
                }
                return;
            }
            85..=99 if self.partition.is_none() => {
                // A node cut off, then a power loss while it is cut off.
                let crash = now + self.faults.range(0, 800);
                let back = crash + self.faults.range(200, 3_000);
                let heal = crash + self.faults.range(0, 3_000);
                plan.push((now, Fault::Partition(BTreeSet::from([x]))));
                plan.push((crash, Fault::Crash(x)));
                plan.push((heal, Fault::Heal));
                plan.push((back, Fault::Restart(x)));
                back.max(heal)
            }
            _ => return,
        };
        self.reserved.insert(x);
        plan.push((end, Fault::Release(vec![x])));
        for (at, f) in plan {
            self.push(at, Ev::Fault(f));
        }
    }

    /// The end of the chaos phase: no more faults, a reliable network, no store errors; every
    /// node restarted or resumed, the partition healed. Clients finish what they are doing.
    pub fn heal(&mut self) {
        self.chaos = false;
        self.clients_on = false;
        self.reserved.clear();
        self.heal_partition();
        for i in 0..self.nodes.len() {
            match self.nodes[i].status {
                Status::Paused => self.resume(i),
                Status::Down => self.restart(i),
                // Let a stop that has started finish, then restart it.
                Status::Stopping => {
                    self.nodes[i].stop_started = 0;
                    let inc = self.nodes[i].inc;
                    self.push(self.now, Ev::StopCheck { node: i, inc });
                }
                Status::Up => {}
            }
        }
    }

    /// The protocol counters of every core, the running ones included.
    pub fn core_stats(&self) -> CoreStats {
        let mut total = self.stats.core.clone();
        for n in &self.nodes {
            if let Some(c) = &n.core {
                add_stats(&mut total, &c.stats);
            }
        }
        total
    }

    /// Sends a client request from `who` to node `node`; returns its id. Refused at once when
    /// the node is down or stopping.
    pub fn client_send(&mut self, who: Who, node: usize, op: ClientOp) -> u64 {
        let cid = self.cid();
        if matches!(self.nodes[node].status, Status::Down | Status::Stopping) {
            self.push(self.now, Ev::ClientAnswer { who, cid, reply: Reply::Refused });
        } else {
            let inc = self.nodes[node].inc;
            let at = self.now + self.client_link();
            self.push(at, Ev::ClientRequest { node, inc, cid, who, op });
        }
        cid
    }
}

fn add_stats(total: &mut CoreStats, s: &CoreStats) {
    total.writes_ok += s.writes_ok;
    total.write_quorum_failures += s.write_quorum_failures;
    total.reads_ok += s.reads_ok;
    total.read_quorum_failures += s.read_quorum_failures;
    total.forwarded += s.forwarded;
    total.read_repairs += s.read_repairs;
    total.hints_stored += s.hints_stored;
    total.hints_delivered += s.hints_delivered;
    total.hint_delivery_failures += s.hint_delivery_failures;
    total.registry_synced += s.registry_synced;
    total.aae_exchanges += s.aae_exchanges;
    total.aae_in_sync += s.aae_in_sync;
    total.aae_keys_repaired += s.aae_keys_repaired;
    total.aae_failures += s.aae_failures;
    total.tombstones_collected += s.tombstones_collected;
    total.tombstone_rounds += s.tombstone_rounds;
    total.objects_reclaimed += s.objects_reclaimed;
}
