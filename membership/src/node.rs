//! The libp2p side: builds the swarm, runs it on a tokio task, and exposes a cloneable handle.
//!
//! GOSSIP
//! ======
//!
//! Every node publishes a small heartbeat `{node_id, incarnation, seq, http_addr, version,
//! addresses}` (rmp-serde) on the gossipsub topic [`HEARTBEAT_TOPIC`] every
//! `heartbeat_interval`, plus one extra heartbeat whenever a peer subscribes to the topic (so a
//! node that (re)joins is seen within one round trip instead of one interval). Gossipsub is
//! configured for clusters as small as 3 nodes: mesh degree 3 (low 2, high 4), flood publishing
//! (a publish goes directly to *every* connected subscriber, so mesh size never blocks
//! heartbeats), and a 100 ms initial mesh heartbeat. Messages are signed by the sender's
//! keypair (gossipsub's strict validation), so the sender's peer id in a heartbeat is
//! authenticated; a heartbeat relayed through a third node counts as a heartbeat of its origin.
//! That relay is what makes detection gossip-based rather than pairwise: a node whose direct
//! link to `n3` is broken still hears `n3` through `n2`.
//!
//! Discovery: bootstrap multiaddrs from the configuration are dialled at start and redialled
//! with exponential backoff ([`REDIAL_INITIAL`] to [`REDIAL_MAX`]) while no connection to them
//! exists. Every heartbeat carries its sender's listen addresses, so a node that learns of a
//! member through gossip dials it directly (same backoff) and the cluster converges to a full
//! mesh of connections. identify runs on every connection (protocol `/cairn/id/1.0.0`) and
//! feeds the peers' listen addresses to the dialer. mDNS is optional and off by default.
//!
//! Every connection is TCP → pnet (the cluster secret, XSalsa20) → multistream-select → Noise
//! → Yamux. A peer with another secret decrypts garbage during protocol negotiation, so the
//! upgrade fails and no libp2p protocol ever runs with it: it is never admitted. The failure
//! is logged at WARN with the likely cause. Replication requests do not use libp2p: they go over
//! the data plane ([`crate::wire`]), which runs on the caller's runtime; the swarm task only
//! tells it at which IP address each peer was reached.
//!
//! The task is the only owner of the swarm and the [`MemberTable`]; everything else talks to
//! it through channels (see [`MembershipHandle`]). It never blocks on a consumer: the inbound
//! request queue is bounded and a full queue is answered with an error.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use futures::StreamExt;
use libp2p::core::transport::Transport as _;
use libp2p::core::upgrade::Version;
use libp2p::swarm::behaviour::toggle::Toggle;
use libp2p::swarm::dial_opts::{DialOpts, PeerCondition};
use libp2p::swarm::{NetworkBehaviour, SwarmEvent};
use libp2p::{Multiaddr, PeerId, Swarm, gossipsub, identify, mdns, noise, pnet, tcp, yamux};
use serde::{Deserialize, Serialize};
use tokio::sync::{broadcast, mpsc, oneshot, watch};

use crate::config::{MembershipConfig, load_or_create_keypair};
use crate::error::{Error, Result};
use crate::table::{
    Announcement, Heartbeat, MemberEvent, MemberStatus, MemberTable, MemberView, TableConfig,
};
use crate::transport::{
    DROPPED_REPLY, INBOUND_QUEUE_CAPACITY, InboundRequest, ReplyHandle, Transport,
};
use crate::wire::{DataPlane, DataPlaneConfig, Routes};

/// Gossipsub topic carrying heartbeats.
pub const HEARTBEAT_TOPIC: &str = "cairn/heartbeat/1";
/// identify protocol version; peers announcing another one are logged.
pub const IDENTIFY_PROTOCOL: &str = "/cairn/id/1.0.0";
/// How often the task re-evaluates phi for every member and republishes the view.
pub const DETECTOR_TICK: Duration = Duration::from_millis(100);
/// A gap this long between two detector ticks means the local process itself was not running
/// (starved of CPU, paused, swapped): heartbeats that arrived meanwhile still sit unread in
/// socket buffers, so that tick judges nobody and the next one, after the backlog is read,
/// does. Without this a stalled observer declares every member down and up again in the same
/// millisecond when it resumes.
pub const LOCAL_STALL: Duration = Duration::from_millis(500);
/// How often the task looks for unconnected bootstrap addresses and members to redial.
pub const REDIAL_TICK: Duration = Duration::from_millis(250);
/// First redial delay after a failed dial.
pub const REDIAL_INITIAL: Duration = Duration::from_millis(250);
/// Longest redial delay (the backoff doubles up to this).
pub const REDIAL_MAX: Duration = Duration::from_secs(4);
/// Connections without active streams stay open this long (the libp2p default of 10 s would
/// drop peers outside the gossipsub mesh and make them look failed).
pub const CONNECTION_IDLE_TIMEOUT: Duration = Duration::from_secs(3600);
/// Bound on TCP connect plus the pnet/noise/yamux upgrade of one connection.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Capacity of the command channel from handles to the task.
pub const COMMAND_QUEUE_CAPACITY: usize = 1024;
/// Capacity of the member-event broadcast; a receiver more than this many events behind gets
/// `RecvError::Lagged` and should re-read the view.
pub const EVENTS_CAPACITY: usize = 256;
/// How long [`Membership::start`] waits for the listener to report its address.
pub const LISTEN_TIMEOUT: Duration = Duration::from_secs(10);

/// A heartbeat on the wire.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct WireHeartbeat {
    node_id: String,
    incarnation: u64,
    seq: u64,
    http_addr: String,
    version: String,
    addresses: Vec<String>,
    /// Out-of-rhythm heartbeat (see [`Heartbeat::extra`]).
    #[serde(default)]
    extra: bool,
    /// The sender's data plane port ([`crate::wire`]).
    #[serde(default)]
    data_port: u16,
}

#[derive(NetworkBehaviour)]
struct Behaviour {
    gossipsub: gossipsub::Behaviour,
    identify: identify::Behaviour,
    mdns: Toggle<mdns::tokio::Behaviour>,
}

/// Gossipsub settings for clusters of 3 to a few dozen nodes.
pub fn gossipsub_config() -> std::result::Result<gossipsub::Config, String> {
    let (outbound_min, low, n, high) = (1, 2, 3, 4);
    // ConfigBuilder::build() does not validate these; the order must hold or meshes misbehave.
    if !(outbound_min <= low && low <= n && n <= high && 2 * outbound_min <= n) {
        return Err("inconsistent gossipsub mesh parameters".into());
    }
    gossipsub::ConfigBuilder::default()
        .heartbeat_interval(Duration::from_millis(500))
        .heartbeat_initial_delay(Duration::from_millis(100))
        .mesh_n(n)
        .mesh_n_low(low)
        .mesh_n_high(high)
        .mesh_outbound_min(outbound_min)
        .gossip_lazy(3)
        .flood_publish(true)
        .validation_mode(gossipsub::ValidationMode::Strict)
        .build()
        .map_err(|e| e.to_string())
}

/// Entry point: starts a member.
#[derive(Debug)]
pub struct Membership;

impl Membership {
    /// Loads (or creates) the keypair, builds the swarm, starts listening, dials the bootstrap
    /// peers and starts the swarm task: on a dedicated OS thread with its own single-threaded
    /// tokio runtime when [`MembershipConfig::dedicated_thread`] is set (the default: heartbeats
    /// and the detector keep their rhythm however busy the node's main runtime is), otherwise
    /// as a task on the current runtime.
    ///
    /// Returns once the listener is bound (so [`MembershipHandle::listen_addrs`] is usable as a
    /// bootstrap address for other nodes), with the handle and the receiver of inbound requests
    /// (capacity [`INBOUND_QUEUE_CAPACITY`]; dropping it makes every inbound request fail).
    pub async fn start(
        config: MembershipConfig,
    ) -> Result<(MembershipHandle, mpsc::Receiver<InboundRequest>)> {
        config.validate()?;
        ensure_port_free(&config.listen)?;
        let keypair = load_or_create_keypair(&config.data_dir)?;
        // The data plane lives on the caller's runtime, next to the code that sends and serves
        // requests; only the swarm goes to its own thread.
        let listener = DataPlane::bind(config.data_listen_addr()).await?;
        let (view_tx, view_rx) = watch::channel(MemberView::default());
        let (inbound_tx, inbound_rx) = mpsc::channel(INBOUND_QUEUE_CAPACITY);
        let routes = Arc::new(Routes::default());
        let data = DataPlane::start(
            listener,
            DataPlaneConfig {
                keypair: keypair.clone(),
                secret: config.secret.key_bytes(),
                max_message: config.max_message_size,
                view: view_rx.clone(),
                routes: routes.clone(),
                inbound_tx: inbound_tx.clone(),
            },
        )?;
        let setup = Setup { keypair, data, view_tx, view_rx, inbound_tx, inbound_rx, routes };
        if !config.dedicated_thread {
            let (handle, inbound, task) = Self::prepare(config, setup).await?;
            tokio::spawn(task.run());
            return Ok((handle, inbound));
        }
        let (tx, rx) = oneshot::channel();
        let name = format!("membership-{}", config.node_id);
        std::thread::Builder::new()
            .name(name)
            .spawn(move || {
                let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                    Ok(rt) => rt,
                    Err(e) => {
                        let _ = tx.send(Err(Error::Setup(format!("membership runtime: {e}"))));
                        return;
                    }
                };
                rt.block_on(async move {
                    match Self::prepare(config, setup).await {
                        Ok((handle, inbound, task)) => {
                            // If the caller went away, the handle is dropped and nothing runs.
                            if tx.send(Ok((handle, inbound))).is_ok() {
                                task.run().await;
                            }
                        }
                        Err(e) => {
                            let _ = tx.send(Err(e));
                        }
                    }
                });
            })
            .map_err(|e| Error::Setup(format!("spawning the membership thread: {e}")))?;
        rx.await.map_err(|_| Error::Setup("membership thread exited during start".into()))?
    }

    /// Builds everything and binds the listener, on the runtime that will run the task (the
    /// sockets are registered with the current runtime's reactor).
    async fn prepare(
        config: MembershipConfig,
        setup: Setup,
    ) -> Result<(MembershipHandle, mpsc::Receiver<InboundRequest>, Task)> {
        let Setup { keypair, data, view_tx, view_rx, inbound_tx, inbound_rx, routes } = setup;
        let incarnation = next_incarnation(&config.data_dir)?;
        let local_peer = keypair.public().to_peer_id();
        let psk = config.secret.psk();
        let request_timeout = config.request_timeout;
        let max_message_size = config.max_message_size;
        let node_id = config.node_id.clone();
        let version = config.version.clone();
        let mdns_on = config.mdns;

        let mut swarm = libp2p::SwarmBuilder::with_existing_identity(keypair)
            .with_tokio()
            .with_other_transport(|key| {
                let noise = noise::Config::new(key)?;
                let tcp = tcp::tokio::Transport::new(tcp::Config::new().nodelay(true));
                Ok::<_, Box<dyn std::error::Error + Send + Sync>>(
                    tcp.and_then(move |socket, _| pnet::PnetConfig::new(psk).handshake(socket))
                        .upgrade(Version::V1)
                        .authenticate(noise)
                        .multiplex(yamux::Config::default())
                        .timeout(HANDSHAKE_TIMEOUT),
                )
            })
            .map_err(|e| Error::Setup(format!("transport: {e}")))?
            .with_behaviour(|key| {
                let gossipsub = gossipsub::Behaviour::new(
                    gossipsub::MessageAuthenticity::Signed(key.clone()),
                    gossipsub_config()?,
                )?;
                let identify = identify::Behaviour::new(
                    identify::Config::new(IDENTIFY_PROTOCOL.to_owned(), key.public())
                        .with_agent_version(format!("cairn/{version} node={node_id}")),
                );
                let mdns = if mdns_on {
                    Some(mdns::tokio::Behaviour::new(mdns::Config::default(), local_peer)?)
                } else {
                    None
                };
                Ok(Behaviour { gossipsub, identify, mdns: Toggle::from(mdns) })
            })
            .map_err(|e| Error::Setup(format!("behaviour: {e}")))?
            .with_swarm_config(|c| c.with_idle_connection_timeout(CONNECTION_IDLE_TIMEOUT))
            .build();

        let topic = gossipsub::IdentTopic::new(HEARTBEAT_TOPIC);
        swarm
            .behaviour_mut()
            .gossipsub
            .subscribe(&topic)
            .map_err(|e| Error::Setup(format!("subscribe: {e}")))?;
        swarm
            .listen_on(config.listen.clone())
            .map_err(|e| Error::Setup(format!("listen on {}: {e}", config.listen)))?;

        // Wait for the first bound address so callers can hand it to other nodes.
        let mut listen_addrs = Vec::new();
        // Other events seen meanwhile (an mDNS discovery, an inbound connection) are replayed
        // by the task, not lost.
        let mut early_events = Vec::new();
        let deadline = tokio::time::Instant::now() + LISTEN_TIMEOUT;
        while listen_addrs.is_empty() {
            let ev = tokio::time::timeout_at(deadline, swarm.select_next_some())
                .await
                .map_err(|_| Error::Setup(format!("no listen address for {}", config.listen)))?;
            match ev {
                SwarmEvent::NewListenAddr { address, .. } => listen_addrs.push(address),
                SwarmEvent::ListenerError { error, .. } => {
                    return Err(Error::Setup(format!("listen on {}: {error}", config.listen)));
                }
                SwarmEvent::ListenerClosed { reason, .. } => {
                    return Err(Error::Setup(format!("listener closed: {reason:?}")));
                }
                other => early_events.push(other),
            }
        }

        let announced = Announcement {
            peer_id: local_peer.to_string(),
            addresses: listen_addrs.iter().map(|a| a.to_string()).collect(),
            http_addr: config.http_addr.clone(),
            version: config.version.clone(),
            data_port: data.port(),
        };
        let table = MemberTable::new(
            config.node_id.clone(),
            announced,
            TableConfig::new(config.heartbeat_interval, config.phi_threshold),
        );
        view_tx.send_replace(table.view(Instant::now()));
        let (events_tx, _) = broadcast::channel(EVENTS_CAPACITY);
        let (cmd_tx, cmd_rx) = mpsc::channel(COMMAND_QUEUE_CAPACITY);

        tracing::info!(
            node = %config.node_id, peer = %local_peer, incarnation,
            addrs = ?listen_addrs, data_port = data.port(), secret = %config.secret.fingerprint(),
            "membership started"
        );
        let bootstrap = config
            .bootstrap
            .iter()
            .filter(|a| !listen_addrs.contains(a))
            .map(|a| (a.clone(), Backoff::default()))
            .collect();
        let task = Task {
            swarm,
            table,
            topic,
            incarnation,
            seq: 0,
            config,
            listen_addrs: listen_addrs.clone(),
            cmd_rx,
            view_tx,
            events_tx: events_tx.clone(),
            routes,
            bootstrap,
            bootstrap_peers: HashMap::new(),
            peer_backoff: HashMap::new(),
            early_events,
            stall_guard: StallGuard::new(Instant::now()),
        };
        let handle = MembershipHandle {
            inner: Arc::new(HandleInner {
                node_id: node_id_of(&view_rx),
                peer_id: local_peer,
                listen_addrs,
                request_timeout,
                max_message_size,
                cmd_tx,
                view_rx,
                events_tx,
                inbound_tx,
                data,
            }),
        };
        Ok((handle, inbound_rx, task))
    }
}

/// libp2p-tcp sets SO_REUSEPORT on listening sockets, so a second process can bind a port that
/// a running node already uses and the kernel would then split incoming connections between
/// them. Binding the port once with a plain socket first turns that misconfiguration into an
/// error at start. (A tiny race remains between this probe and libp2p's bind.)
fn ensure_port_free(listen: &Multiaddr) -> Result<()> {
    use libp2p::multiaddr::Protocol;
    let mut ip = None;
    let mut port = None;
    for p in listen.iter() {
        match p {
            Protocol::Ip4(a) => ip = Some(std::net::IpAddr::V4(a)),
            Protocol::Ip6(a) => ip = Some(std::net::IpAddr::V6(a)),
            Protocol::Tcp(p) => port = Some(p),
            _ => {}
        }
    }
    match (ip, port) {
        (Some(ip), Some(port)) if port != 0 => std::net::TcpListener::bind((ip, port))
            .map(drop)
            .map_err(|e| Error::Setup(format!("cannot listen on {listen}: {e}"))),
        _ => Ok(()),
    }
}

fn node_id_of(view: &watch::Receiver<MemberView>) -> String {
    view.borrow().local.clone()
}

/// Picks this process's incarnation: larger than any earlier one from the same data directory
/// (persisted in `data_dir/incarnation`), and at least the wall clock in milliseconds.
fn next_incarnation(data_dir: &std::path::Path) -> Result<u64> {
    let path = data_dir.join("incarnation");
    let previous = match std::fs::read_to_string(&path) {
        Ok(s) => s.trim().parse::<u64>().unwrap_or(0),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => 0,
        Err(e) => return Err(Error::io(format!("reading {}", path.display()), e)),
    };
    let wall = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64);
    let next = previous.saturating_add(1).max(wall.unwrap_or(0));
    std::fs::write(&path, next.to_string())
        .map_err(|e| Error::io(format!("writing {}", path.display()), e))?;
    Ok(next)
}

/// What [`Membership::start`] makes on the caller's runtime for [`Membership::prepare`].
struct Setup {
    keypair: libp2p::identity::Keypair,
    data: DataPlane,
    view_tx: watch::Sender<MemberView>,
    view_rx: watch::Receiver<MemberView>,
    inbound_tx: mpsc::Sender<InboundRequest>,
    inbound_rx: mpsc::Receiver<InboundRequest>,
    routes: Arc<Routes>,
}

/// Commands from handles to the swarm task.
enum Command {
    ReportFailure(String),
    Shutdown(oneshot::Sender<()>),
}

/// Cloneable handle to a running member. Implements [`Transport`].
///
/// When the last handle is dropped the swarm task stops (its command channel closes).
#[derive(Clone)]
pub struct MembershipHandle {
    /// Shared, immutable-after-start state; `Arc` because handles are cloned into every
    /// component that sends requests or watches the view.
    inner: Arc<HandleInner>,
}

impl std::fmt::Debug for MembershipHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MembershipHandle")
            .field("node_id", &self.inner.node_id)
            .field("peer_id", &self.inner.peer_id)
            .finish()
    }
}

struct HandleInner {
    node_id: String,
    peer_id: PeerId,
    listen_addrs: Vec<Multiaddr>,
    request_timeout: Duration,
    max_message_size: usize,
    /// To the swarm task (which holds the receiver). Bounded so a flood of requests waits
    /// instead of growing memory; closed when the task exits (after it dropped the swarm), after
    /// which requests fail with [`Error::Shutdown`].
    cmd_tx: mpsc::Sender<Command>,
    /// Latest member view; the task holds the sender and replaces the value every
    /// [`DETECTOR_TICK`]. `changed()` errors once the task has exited.
    view_rx: watch::Receiver<MemberView>,
    /// Sender side kept only to create new receivers (`subscribe`); the task sends.
    events_tx: broadcast::Sender<MemberEvent>,
    /// Clone of the inbound queue sender, for requests a node sends to itself.
    inbound_tx: mpsc::Sender<InboundRequest>,
    /// Connections to the other nodes' data ports, for requests to them.
    data: DataPlane,
}

impl MembershipHandle {
    /// The local node id.
    pub fn node_id(&self) -> &str {
        &self.inner.node_id
    }

    /// The local libp2p peer id.
    pub fn peer_id(&self) -> PeerId {
        self.inner.peer_id
    }

    /// Addresses the node listens on (usable as bootstrap addresses for other nodes).
    pub fn listen_addrs(&self) -> &[Multiaddr] {
        &self.inner.listen_addrs
    }

    /// The TCP port of this node's data plane ([`crate::wire`]).
    pub fn data_port(&self) -> u16 {
        self.inner.data.port()
    }

    /// A receiver of the member view, refreshed every [`DETECTOR_TICK`].
    pub fn view(&self) -> watch::Receiver<MemberView> {
        self.inner.view_rx.clone()
    }

    /// A receiver of status transitions from now on.
    pub fn events(&self) -> broadcast::Receiver<MemberEvent> {
        self.inner.events_tx.subscribe()
    }

    /// Tells the failure detector that talking to `node` failed (it becomes Suspect at once).
    pub fn report_failure(&self, node: &str) {
        if self.inner.cmd_tx.try_send(Command::ReportFailure(node.to_owned())).is_err() {
            tracing::debug!(node, "failure report dropped: command queue full or closed");
        }
    }

    /// Stops the swarm task and waits for it to end (connections are closed). Idempotent;
    /// afterwards requests fail with [`Error::Shutdown`].
    pub async fn shutdown(&self) {
        self.inner.data.shutdown();
        let (tx, rx) = oneshot::channel();
        if self.inner.cmd_tx.send(Command::Shutdown(tx)).await.is_ok() {
            let _ = rx.await;
        }
        // The task drops its command receiver on exit (after the swarm): wait for that too, in
        // case another clone's shutdown was the one that stopped it.
        self.inner.cmd_tx.closed().await;
    }

    async fn request_inner(&self, to: &str, payload: Bytes) -> Result<Bytes> {
        let max = self.inner.max_message_size;
        if payload.len() > max {
            return Err(Error::MessageTooLarge { size: payload.len(), max });
        }
        let timeout = self.inner.request_timeout;
        if to == self.inner.node_id {
            let (reply, rx) = ReplyHandle::new();
            let req = InboundRequest { from: to.to_owned(), payload, reply };
            self.inner.inbound_tx.try_send(req).map_err(|_| Error::Remote {
                node: to.to_owned(),
                message: "inbound queue full or closed".into(),
            })?;
            return match tokio::time::timeout(timeout, rx).await {
                Err(_) => Err(Error::Timeout { node: to.to_owned() }),
                Ok(Err(_)) => {
                    Err(Error::Remote { node: to.to_owned(), message: DROPPED_REPLY.into() })
                }
                Ok(Ok(Ok(b))) => Ok(b),
                Ok(Ok(Err(message))) => Err(Error::Remote { node: to.to_owned(), message }),
            };
        }
        let deadline = tokio::time::Instant::now() + timeout;
        let result = self.inner.data.request(to, payload, deadline).await;
        if let Err(e) = &result
            && e.implicates_peer()
        {
            self.report_failure(to);
        }
        result
    }
}

impl Transport for MembershipHandle {
    fn request(
        &self,
        to: &str,
        payload: Bytes,
    ) -> impl std::future::Future<Output = Result<Bytes>> + Send {
        let this = self.clone();
        let to = to.to_owned();
        async move { this.request_inner(&to, payload).await }
    }
}

/// Exponential redial backoff for one address or peer.
#[derive(Debug, Clone)]
struct Backoff {
    next_at: Option<Instant>,
    delay: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff { next_at: None, delay: REDIAL_INITIAL }
    }
}

impl Backoff {
    /// Whether a dial is due at `now`; if so, schedules the next one.
    fn due(&mut self, now: Instant) -> bool {
        if self.next_at.is_some_and(|t| now < t) {
            return false;
        }
        self.next_at = Some(now + self.delay);
        self.delay = (self.delay * 2).min(REDIAL_MAX);
        true
    }

    fn reset(&mut self) {
        *self = Backoff::default();
    }
}

/// The swarm task's state. Owned by one tokio task; nothing here is shared.
struct Task {
    swarm: Swarm<Behaviour>,
    table: MemberTable,
    topic: gossipsub::IdentTopic,
    incarnation: u64,
    seq: u64,
    config: MembershipConfig,
    listen_addrs: Vec<Multiaddr>,
    /// Commands from every [`MembershipHandle`] clone; `None` from `recv` means all handles
    /// are gone and the task ends.
    cmd_rx: mpsc::Receiver<Command>,
    /// View publication; receivers are in handles.
    view_tx: watch::Sender<MemberView>,
    /// Transition publication; `send` errors (no receivers) are ignored.
    events_tx: broadcast::Sender<MemberEvent>,
    /// The IP address each peer was last reached at, for the data plane's dials.
    routes: Arc<Routes>,
    /// Bootstrap addresses and their redial backoff.
    bootstrap: HashMap<Multiaddr, Backoff>,
    /// Peer reached at each bootstrap address (learned when a dial to it succeeds).
    bootstrap_peers: HashMap<Multiaddr, PeerId>,
    /// Redial backoff per known member peer.
    peer_backoff: HashMap<PeerId, Backoff>,
    /// Swarm events that arrived while `start` waited for the listener; handled first.
    early_events: Vec<SwarmEvent<BehaviourEvent>>,
    /// Skips failure detection right after a local stall.
    stall_guard: StallGuard,
}

/// Tells whether a detector tick may judge members: not when the previous tick was
/// [`LOCAL_STALL`] or more ago (the local process was not running, so unread heartbeats may be
/// waiting). Pure; `now` is passed in.
#[derive(Debug, Clone, Copy)]
pub struct StallGuard {
    last: Instant,
}

impl StallGuard {
    /// A guard whose previous tick was at `now`.
    pub fn new(now: Instant) -> Self {
        StallGuard { last: now }
    }

    /// Records a tick at `now`; returns the stall length if the gap since the previous tick
    /// was [`LOCAL_STALL`] or more (detection should be deferred), `None` otherwise.
    pub fn tick(&mut self, now: Instant) -> Option<Duration> {
        let gap = now.saturating_duration_since(self.last);
        self.last = now;
        (gap >= LOCAL_STALL).then_some(gap)
    }
}

impl Task {
    async fn run(mut self) {
        for ev in std::mem::take(&mut self.early_events) {
            self.on_swarm_event(ev);
        }
        let mut heartbeat = tokio::time::interval(self.config.heartbeat_interval);
        heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut detector = tokio::time::interval(DETECTOR_TICK);
        detector.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut redial = tokio::time::interval(REDIAL_TICK);
        redial.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut shutdown_ack = None;
        loop {
            tokio::select! {
                cmd = self.cmd_rx.recv() => match cmd {
                    None => break,
                    Some(Command::Shutdown(ack)) => { shutdown_ack = Some(ack); break; }
                    Some(cmd) => self.on_command(cmd),
                },
                ev = self.swarm.select_next_some() => self.on_swarm_event(ev),
                _ = heartbeat.tick() => self.publish_heartbeat(false),
                _ = detector.tick() => self.on_detector_tick(),
                _ = redial.tick() => self.redial(),
            }
        }
        tracing::info!(node = %self.config.node_id, "membership stopped");
        drop(self.swarm);
        if let Some(ack) = shutdown_ack {
            let _ = ack.send(());
        }
    }

    fn emit(&mut self, event: MemberEvent) {
        match &event {
            MemberEvent::Up(n) => tracing::info!(node = %n, "member up"),
            MemberEvent::Suspect(n) => tracing::info!(node = %n, "member suspect"),
            MemberEvent::Down(n) => tracing::warn!(node = %n, "member down"),
        }
        let _ = self.events_tx.send(event);
    }

    fn publish_view(&mut self) {
        self.view_tx.send_replace(self.table.view(Instant::now()));
    }

    fn on_detector_tick(&mut self) {
        let now = Instant::now();
        if let Some(gap) = self.stall_guard.tick(now) {
            tracing::warn!(?gap, "local process stalled; failure detection deferred one tick");
        } else {
            for event in self.table.tick(now) {
                self.emit(event);
            }
        }
        self.publish_view();
    }

    fn publish_heartbeat(&mut self, extra: bool) {
        let hb = WireHeartbeat {
            node_id: self.config.node_id.clone(),
            incarnation: self.incarnation,
            seq: self.seq,
            http_addr: self.config.http_addr.clone(),
            version: self.config.version.clone(),
            addresses: self.listen_addrs.iter().map(|a| a.to_string()).collect(),
            extra,
            data_port: self.table.local_announcement().data_port,
        };
        self.seq += 1;
        let bytes = match rmp_serde::to_vec(&hb) {
            Ok(b) => b,
            Err(e) => {
                tracing::error!(error = %e, "cannot encode heartbeat");
                return;
            }
        };
        match self.swarm.behaviour_mut().gossipsub.publish(self.topic.clone(), bytes) {
            Ok(_) => {}
            Err(gossipsub::PublishError::NoPeersSubscribedToTopic) => {
                tracing::debug!("heartbeat not sent: no subscribed peer connected yet");
            }
            Err(e) => tracing::warn!(error = %e, "heartbeat publish failed"),
        }
    }

    fn on_command(&mut self, cmd: Command) {
        match cmd {
            Command::ReportFailure(node) => {
                if let Some(e) = self.table.request_failed(&node, Instant::now()) {
                    self.emit(e);
                }
            }
            Command::Shutdown(_) => {}
        }
    }

    fn on_swarm_event(&mut self, ev: SwarmEvent<BehaviourEvent>) {
        match ev {
            SwarmEvent::Behaviour(BehaviourEvent::Gossipsub(ev)) => self.on_gossip(ev),
            SwarmEvent::Behaviour(BehaviourEvent::Identify(identify::Event::Received {
                peer_id,
                info,
                ..
            })) => {
                if info.protocol_version != IDENTIFY_PROTOCOL {
                    tracing::warn!(peer = %peer_id, protocol = %info.protocol_version,
                        "peer speaks another cairn identify protocol version");
                }
                for addr in info.listen_addrs {
                    self.swarm.add_peer_address(peer_id, addr);
                }
            }
            SwarmEvent::Behaviour(BehaviourEvent::Identify(_)) => {}
            SwarmEvent::Behaviour(BehaviourEvent::Mdns(mdns::Event::Discovered(found))) => {
                for (peer, addr) in found {
                    let opts = DialOpts::peer_id(peer)
                        .addresses(vec![addr])
                        .condition(PeerCondition::DisconnectedAndNotDialing)
                        .build();
                    let _ = self.swarm.dial(opts);
                }
            }
            SwarmEvent::Behaviour(BehaviourEvent::Mdns(_)) => {}
            SwarmEvent::NewListenAddr { address, .. } if !self.listen_addrs.contains(&address) => {
                self.listen_addrs.push(address);
                let mut ann = self.table.local_announcement().clone();
                ann.addresses = self.listen_addrs.iter().map(|a| a.to_string()).collect();
                self.table.set_local_announcement(ann);
            }
            SwarmEvent::ConnectionEstablished { peer_id, endpoint, .. } => {
                tracing::debug!(peer = %peer_id, addr = %endpoint.get_remote_address(), "connected");
                // A connection this node dialled reached the peer at a listen address of its:
                // the data plane dials the same IP. (The source IP of a connection the peer
                // dialled may be another interface of a multi-homed host: not used.)
                if endpoint.is_dialer()
                    && let Some(ip) = crate::config::ip_of(endpoint.get_remote_address())
                {
                    self.routes.write().insert(peer_id, ip);
                }
                if endpoint.is_dialer() {
                    let addr = endpoint.get_remote_address().clone();
                    if let Some(b) = self.bootstrap.get_mut(&addr) {
                        b.reset();
                        self.bootstrap_peers.insert(addr, peer_id);
                    }
                }
                if let Some(b) = self.peer_backoff.get_mut(&peer_id) {
                    b.reset();
                }
            }
            SwarmEvent::ConnectionClosed { peer_id, num_established, cause, .. } => {
                tracing::debug!(peer = %peer_id, ?cause, "connection closed");
                // An I/O error (peer process died, connection reset) is evidence; a close for
                // idleness (KeepAliveTimeout) or a local close (cause None) is not.
                let failed = matches!(cause, Some(libp2p::swarm::ConnectionError::IO(_)));
                if failed
                    && num_established == 0
                    && let Some(node) = self.table.node_of_peer(&peer_id.to_string())
                {
                    let node = node.to_owned();
                    if let Some(e) = self.table.request_failed(&node, Instant::now()) {
                        self.emit(e);
                    }
                }
            }
            SwarmEvent::OutgoingConnectionError { peer_id, error, .. } => {
                let peer = peer_id.map_or_else(|| "unknown peer".to_owned(), |p| p.to_string());
                log_connection_error("outgoing", &peer, &error);
            }
            SwarmEvent::IncomingConnectionError { send_back_addr, error, .. } => {
                log_connection_error("incoming", &send_back_addr.to_string(), &error);
            }
            _ => {}
        }
    }

    fn on_gossip(&mut self, ev: gossipsub::Event) {
        match ev {
            gossipsub::Event::Message { message, .. } => {
                let Some(source) = message.source else { return };
                let hb: WireHeartbeat = match rmp_serde::from_slice(&message.data) {
                    Ok(hb) => hb,
                    Err(e) => {
                        tracing::warn!(peer = %source, error = %e, "undecodable heartbeat");
                        return;
                    }
                };
                let peer = source.to_string();
                if let Some(known) = self.table.node_of_peer(&peer)
                    && known != hb.node_id
                {
                    tracing::warn!(peer, claimed = %hb.node_id, known,
                        "peer changed its node id; using the new one");
                }
                if let Some(ann) = self.table.announcement(&hb.node_id)
                    && !ann.peer_id.is_empty()
                    && ann.peer_id != peer
                {
                    tracing::warn!(node = %hb.node_id, old = %ann.peer_id, new = %peer,
                        "node id now announced by another peer id (new keypair?)");
                }
                let new_addrs = self
                    .table
                    .announcement(&hb.node_id)
                    .is_none_or(|a| a.addresses != hb.addresses);
                if new_addrs {
                    for a in hb.addresses.iter().filter_map(|a| a.parse::<Multiaddr>().ok()) {
                        self.swarm.add_peer_address(source, a);
                    }
                }
                let beat = Heartbeat {
                    node_id: hb.node_id,
                    incarnation: hb.incarnation,
                    seq: hb.seq,
                    extra: hb.extra,
                    announced: Announcement {
                        peer_id: peer,
                        addresses: hb.addresses,
                        http_addr: hb.http_addr,
                        version: hb.version,
                        data_port: hb.data_port,
                    },
                };
                if let Some(e) = self.table.heartbeat(beat, Instant::now()) {
                    self.emit(e);
                    self.publish_view();
                }
            }
            gossipsub::Event::Subscribed { peer_id, topic } if topic == self.topic.hash() => {
                tracing::debug!(peer = %peer_id, "peer subscribed to heartbeats");
                // Announce ourselves at once rather than up to one interval later.
                self.publish_heartbeat(true);
            }
            _ => {}
        }
    }

    /// Dials unconnected bootstrap addresses and unconnected known members, each with backoff.
    fn redial(&mut self) {
        let now = Instant::now();
        // Peers connected at an address some member announced count as reached at it.
        let mut connected_addrs: HashSet<String> = HashSet::new();
        let members: Vec<(PeerId, Vec<Multiaddr>)> = self
            .table
            .with_status(MemberStatus::Up)
            .chain(self.table.with_status(MemberStatus::Suspect))
            .chain(self.table.with_status(MemberStatus::Down))
            .filter_map(|n| self.table.announcement(n))
            .filter_map(|a| {
                let peer = a.peer_id.parse::<PeerId>().ok()?;
                Some((peer, a.addresses.iter().filter_map(|s| s.parse().ok()).collect()))
            })
            .collect();
        for (peer, addrs) in &members {
            if self.swarm.is_connected(peer) {
                connected_addrs.extend(addrs.iter().map(|a: &Multiaddr| a.to_string()));
                continue;
            }
            let backoff = self.peer_backoff.entry(*peer).or_default();
            if backoff.due(now) {
                let opts = DialOpts::peer_id(*peer)
                    .addresses(addrs.clone())
                    .condition(PeerCondition::DisconnectedAndNotDialing)
                    .build();
                let _ = self.swarm.dial(opts);
            }
        }
        for (addr, backoff) in &mut self.bootstrap {
            let reached =
                self.bootstrap_peers.get(addr).is_some_and(|p| self.swarm.is_connected(p))
                    || connected_addrs.contains(&addr.to_string());
            if reached {
                backoff.reset();
                continue;
            }
            if backoff.due(now) {
                tracing::debug!(%addr, "dialling bootstrap address");
                if let Err(e) =
                    self.swarm.dial(DialOpts::unknown_peer_id().address(addr.clone()).build())
                {
                    tracing::debug!(%addr, error = %e, "bootstrap dial not started");
                }
            }
        }
    }
}

/// Logs a failed connection. Plain refusals (nobody listening: a node that is down) are
/// routine and logged at DEBUG; anything failing *after* TCP connected is a handshake failure,
/// whose usual cause in a cairn cluster is a different cluster secret, logged at WARN.
fn log_connection_error(direction: &str, peer: &str, error: &dyn std::error::Error) {
    let mut chain = error.to_string();
    let mut refused = false;
    let mut source = error.source();
    while let Some(e) = source {
        if let Some(io) = e.downcast_ref::<std::io::Error>()
            && matches!(
                io.kind(),
                std::io::ErrorKind::ConnectionRefused | std::io::ErrorKind::AddrNotAvailable
            )
        {
            refused = true;
        }
        chain.push_str(": ");
        chain.push_str(&e.to_string());
        source = e.source();
    }
    if refused || chain.contains("Connection refused") || chain.contains("Dial error: no addresses")
    {
        tracing::debug!(direction, peer, error = %chain, "connection failed");
    } else if chain.contains("Failed to negotiate")
        || chain.contains("Handshake")
        || chain.contains("handshake")
        || chain.contains("Multistream")
        || chain.contains("noise")
    {
        tracing::warn!(direction, peer, error = %chain,
            "connection refused during handshake: the peer most likely uses a different \
             cluster secret (compare the secret fingerprints logged at start)");
    } else {
        tracing::info!(direction, peer, error = %chain, "connection failed");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stall_guard_defers_only_after_a_gap() {
        let t0 = Instant::now();
        let mut g = StallGuard::new(t0);
        let mut t = t0;
        for _ in 0..10 {
            t += DETECTOR_TICK;
            assert_eq!(g.tick(t), None, "regular ticks judge");
        }
        t += Duration::from_secs(4);
        assert_eq!(g.tick(t), Some(Duration::from_secs(4)), "first tick after a stall defers");
        t += DETECTOR_TICK;
        assert_eq!(g.tick(t), None, "the following tick judges again");
        assert_eq!(g.tick(t - Duration::from_secs(1)), None, "a clock going back is no stall");
    }

    #[test]
    fn gossipsub_config_is_consistent() {
        assert!(gossipsub_config().is_ok());
    }
}
