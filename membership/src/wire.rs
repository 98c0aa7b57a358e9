//! The data plane: replication requests between nodes over one long-lived, Noise-encrypted TCP
//! connection per ordered pair of nodes, on the node's own tokio runtime.
//!
//! Membership (discovery, gossip heartbeats, failure detection) stays on libp2p; this module
//! carries the requests of the [`crate::Transport`] trait. It exists because the libp2p
//! request/response path cost more CPU than the storage work it carried: every request opened a
//! yamux stream, negotiated its protocol with multistream-select, crossed from the node's
//! runtime to the swarm thread and back, and every yamux frame was flushed through Noise and
//! pnet into its own `send` syscall (about six per message; `docs/benchmarks.md`). Here a request
//! is one frame on a connection that stays open, frames queued while the connection was busy
//! are encrypted and written together, and nothing crosses a thread.
//!
//! # Connection
//!
//! Every node listens on a TCP port of its own (the *data port*, `MembershipConfig::data_listen`,
//! by default a free port on the libp2p listen address) and announces the port in its gossip
//! heartbeats. A node that sends requests to a peer dials the IP address at which it reached the
//! peer over libp2p (or, if the peer dialled it, the first non-loopback address the peer
//! announced), at the announced port, and keeps the
//! connection for its own requests; the peer answers on the same connection, and uses a
//! connection of its own for its requests. On a new connection:
//!
//! 1. both sides write the 8-byte magic [`MAGIC`] (`CAIRNW01`) and check the other's: something
//!    else on the port (or another protocol version) is refused at once, with a clear log line;
//! 2. a Noise XX handshake (`libp2p-noise`: X25519, ChaChaPoly, SHA-256) with each node's libp2p
//!    identity key, and the **prologue** `SHA-256("cairn-wire/1" ‖ cluster secret)`: a process
//!    without the cluster secret computes another handshake hash and the handshake fails, so the
//!    secret admits a node here exactly as pnet does on the libp2p side (without a second
//!    cipher layer);
//! 3. the dialer checks that the peer id proven by the handshake is the one the target node
//!    announced; the acceptor maps it to the node id of a member in its view (waiting up to
//!    [`ADMISSION_WAIT`] for the first heartbeat of a node that has just started) and refuses
//!    peers that are not members. The sender of every request is therefore authenticated.
//!
//! # Frames
//!
//! After the handshake both directions carry frames, inside Noise's own encrypted frames:
//!
//! ```text
//! +-------------------+----------+-----------------+---------------------+
//! | length: u32, BE   | kind: u8 | request id: u64 | payload             |
//! | (kind+id+payload) |          | BE              | (length - 9 bytes)  |
//! +-------------------+----------+-----------------+---------------------+
//! ```
//!
//! Kinds: 1 = request (dialer → acceptor), 2 = reply with a payload, 3 = error reply whose
//! payload is a UTF-8 message (acceptor → dialer). Replies carry their request's id and may come
//! in any order. A length above the configured maximum message size (plus the 9 header bytes)
//! or an unknown kind is a protocol error that closes the connection before anything is
//! allocated.
//!
//! # Failure semantics
//!
//! These decide whether a coordinator may retry a write elsewhere (see
//! [`crate::Error::certainly_not_delivered`]):
//! - a failed dial or handshake, or a connection found closed before the request was queued on
//!   it, is [`Error::NotDelivered`]: not one byte of the request left this node;
//! - a connection that closes while the request is queued or sent is [`Error::Unreachable`]: the
//!   peer may have applied it;
//! - no reply within the request timeout is [`Error::Timeout`]; the connection stays open (a slow
//!   peer is not a dead one; a dead one closes or resets the connection, and a new one is dialled
//!   on the next request).
//!
//! A dial that failed is not retried by the requests that were waiting for it: they fail at once
//! with the same reason, so a stopped peer costs one refused connect per wave of requests.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use futures::io::{ReadHalf, WriteHalf};
use futures::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use libp2p::core::upgrade::{InboundConnectionUpgrade, OutboundConnectionUpgrade};
use libp2p::{PeerId, identity, noise};
use parking_lot::{Mutex, RwLock};
use sha2::{Digest, Sha256};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;

use crate::error::{Error, Result};
use crate::table::MemberView;
use crate::transport::{DROPPED_REPLY, InboundRequest, ReplyHandle};

/// Written by both sides first on every data connection.
pub const MAGIC: &[u8; 8] = b"CAIRNW01";
/// Bytes of a frame header after the length prefix: kind and request id.
pub const HEADER_AFTER_LENGTH: usize = 1 + 8;
/// Frame kind: a request.
pub const KIND_REQUEST: u8 = 1;
/// Frame kind: a reply carrying the receiver's payload.
pub const KIND_REPLY: u8 = 2;
/// Frame kind: an error reply carrying a UTF-8 message.
pub const KIND_ERROR: u8 = 3;
/// Bound on TCP connect, magic exchange and Noise handshake of one connection. Short, and shorter
/// than the request timeout: a dial that fails is `NotDelivered`, which lets the caller try
/// another node with the time that is left.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(2);
/// TCP keepalive on data connections: probes after this much idleness, then every
/// [`KEEPALIVE_INTERVAL`], [`KEEPALIVE_RETRIES`] times, before the kernel declares the peer gone
/// (a peer host that vanished without a reset is noticed within ~25 s even when idle).
pub const KEEPALIVE_IDLE: Duration = Duration::from_secs(10);
/// See [`KEEPALIVE_IDLE`].
pub const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(5);
/// See [`KEEPALIVE_IDLE`].
pub const KEEPALIVE_RETRIES: u32 = 3;
/// Data written but unacknowledged by the peer's TCP for this long closes the connection
/// (`TCP_USER_TIMEOUT`): a connection to a partitioned or stopped host fails instead of queueing.
pub const TCP_USER_TIMEOUT: Duration = Duration::from_secs(20);
/// How long an accepted connection from a peer id not (yet) in the view waits for its first
/// heartbeat before it is refused.
pub const ADMISSION_WAIT: Duration = Duration::from_secs(2);
/// Frames waiting for a connection's writer; a full queue makes requesters wait.
pub const WRITER_QUEUE: usize = 1024;
/// The writer flushes after this many bytes even if more frames are queued.
pub const MAX_BATCH_BYTES: usize = 256 * 1024;

/// IP address at which each peer was last reached over libp2p; filled by the swarm task.
pub(crate) type Routes = RwLock<HashMap<PeerId, IpAddr>>;

/// The Noise prologue binding every handshake to the cluster secret.
pub(crate) fn prologue(secret: &[u8; 32]) -> Vec<u8> {
    let mut h = Sha256::new();
    h.update(b"cairn-wire/1");
    h.update(secret);
    h.finalize().to_vec()
}

/// One frame.
#[derive(Debug)]
struct Frame {
    kind: u8,
    id: u64,
    payload: Bytes,
}

impl Frame {
    fn header(&self) -> [u8; 4 + HEADER_AFTER_LENGTH] {
        let len = (HEADER_AFTER_LENGTH + self.payload.len()) as u32;
        let mut h = [0u8; 4 + HEADER_AFTER_LENGTH];
        h[..4].copy_from_slice(&len.to_be_bytes());
        h[4] = self.kind;
        h[5..].copy_from_slice(&self.id.to_be_bytes());
        h
    }
}

/// Reads one frame; `Ok(None)` at a clean end of stream between frames.
async fn read_frame<R: AsyncRead + Unpin>(
    r: &mut R,
    max_payload: usize,
) -> io::Result<Option<Frame>> {
    let mut len = [0u8; 4];
    // A clean close arrives as EOF before the first byte of a frame.
    let mut got = 0;
    while got < 4 {
        let n = r.read(&mut len[got..]).await?;
        if n == 0 {
            return if got == 0 {
                Ok(None)
            } else {
                Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "connection closed inside a frame",
                ))
            };
        }
        got += n;
    }
    let len = u32::from_be_bytes(len) as usize;
    if len < HEADER_AFTER_LENGTH || len - HEADER_AFTER_LENGTH > max_payload {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("frame of {len} bytes outside 9..={}", max_payload + HEADER_AFTER_LENGTH),
        ));
    }
    let mut head = [0u8; HEADER_AFTER_LENGTH];
    r.read_exact(&mut head).await?;
    let kind = head[0];
    if !matches!(kind, KIND_REQUEST | KIND_REPLY | KIND_ERROR) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("unknown frame kind {kind}"),
        ));
    }
    let mut id = [0u8; 8];
    id.copy_from_slice(&head[1..]);
    let mut payload = vec![0u8; len - HEADER_AFTER_LENGTH];
    r.read_exact(&mut payload).await?;
    Ok(Some(Frame { kind, id: u64::from_be_bytes(id), payload: Bytes::from(payload) }))
}

type NoiseIo = noise::Output<libp2p::tcp::tokio::TcpStream>;

/// Writes queued frames, coalescing whatever is queued into one flush (Noise then encrypts and
/// sends up to 64 KiB per TCP write). Ends on a write error, when every sender is gone, or at
/// shutdown.
///
/// `wanted` filters frames at the moment they would be written: a request whose requester has
/// given up (timed out) is dropped rather than sent late, so a queue that built up behind a
/// stalled peer is not replayed to it when it resumes.
async fn write_loop(
    mut w: WriteHalf<NoiseIo>,
    mut rx: mpsc::Receiver<Frame>,
    mut shutdown: watch::Receiver<bool>,
    mut stop: watch::Receiver<bool>,
    wanted: impl Fn(&Frame) -> bool,
) -> io::Result<()> {
    loop {
        let first = tokio::select! {
            f = rx.recv() => f,
            _ = shutdown.wait_for(|stop| *stop) => None,
            _ = stop.wait_for(|stop| *stop) => None,
        };
        let Some(mut frame) = first else { break };
        let mut batch = 0;
        loop {
            if wanted(&frame) {
                w.write_all(&frame.header()).await?;
                w.write_all(&frame.payload).await?;
                batch += frame.payload.len() + 4 + HEADER_AFTER_LENGTH;
            }
            if batch >= MAX_BATCH_BYTES {
                break;
            }
            match rx.try_recv() {
                Ok(f) => frame = f,
                Err(_) => break,
            }
        }
        w.flush().await?;
    }
    let _ = w.close().await;
    Ok(())
}

/// Requesters waiting for replies, by request id.
type Waiters = HashMap<u64, oneshot::Sender<Result<Bytes>>>;

/// The state of one outbound connection shared by its requesters, reader and writer.
struct Conn {
    writer: mpsc::Sender<Frame>,
    next_id: AtomicU64,
    /// Requests sent and not answered while open; once closed, why.
    pending: Mutex<std::result::Result<Waiters, String>>,
    /// Set when the connection closes, so that its writer and reader end too.
    stop: watch::Sender<bool>,
    node: String,
}

impl Conn {
    /// Marks the connection closed and fails every pending request as possibly delivered.
    fn close(&self, reason: &str) {
        let pending = {
            let mut state = self.pending.lock();
            if state.is_err() {
                return; // already closed: the first reason stays
            }
            match std::mem::replace(&mut *state, Err(reason.to_owned())) {
                Ok(p) => p,
                Err(_) => return,
            }
        };
        self.stop.send_replace(true);
        if !pending.is_empty() {
            tracing::debug!(node = %self.node, reason, n = pending.len(),
                "data connection closed with requests in flight");
        }
        for (_, tx) in pending {
            let _ = tx.send(Err(Error::Unreachable {
                node: self.node.clone(),
                reason: format!("connection closed: {reason}"),
            }));
        }
    }

    fn is_open(&self) -> bool {
        self.pending.lock().is_ok()
    }

    /// Whether a requester still waits for the reply to request `id`.
    fn is_waiting(&self, id: u64) -> bool {
        self.pending.lock().as_ref().is_ok_and(|p| p.contains_key(&id))
    }
}

/// Per-peer outbound state: the current connection, and a lock serialising dials.
#[derive(Default)]
struct Slot {
    conn: RwLock<Option<Arc<Conn>>>,
    /// Held while dialling; remembers the last failed dial and when it ended.
    dial: tokio::sync::Mutex<Option<(Instant, String)>>,
}

/// State shared by the data plane's tasks.
struct Shared {
    keypair: identity::Keypair,
    prologue: Vec<u8>,
    max_message: usize,
    view: watch::Receiver<MemberView>,
    routes: Arc<Routes>,
    inbound_tx: mpsc::Sender<InboundRequest>,
    shutdown: watch::Receiver<bool>,
}

impl Shared {
    fn noise(&self) -> std::result::Result<noise::Config, noise::Error> {
        Ok(noise::Config::new(&self.keypair)?.with_prologue(self.prologue.clone()))
    }

    /// The node id whose announced peer id is `peer`, if any.
    fn node_of_peer(&self, peer: &PeerId) -> Option<String> {
        let peer = peer.to_string();
        let view = self.view.borrow();
        view.members.iter().find(|(_, m)| m.announced.peer_id == peer).map(|(id, _)| id.clone())
    }
}

/// The data plane of one node: its listener, its outbound connections, and their tasks.
pub(crate) struct DataPlane {
    shared: Arc<Shared>,
    slots: Mutex<HashMap<String, Arc<Slot>>>,
    shutdown_tx: watch::Sender<bool>,
    port: u16,
}

/// What [`DataPlane::start`] needs.
pub(crate) struct DataPlaneConfig {
    pub keypair: identity::Keypair,
    pub secret: [u8; 32],
    pub max_message: usize,
    pub view: watch::Receiver<MemberView>,
    pub routes: Arc<Routes>,
    pub inbound_tx: mpsc::Sender<InboundRequest>,
}

impl DataPlane {
    /// Binds the data listener (on the current runtime) without accepting yet.
    pub(crate) async fn bind(addr: SocketAddr) -> Result<TcpListener> {
        TcpListener::bind(addr)
            .await
            .map_err(|e| Error::Setup(format!("cannot listen for data on {addr}: {e}")))
    }

    /// Starts accepting on `listener` (on the current runtime).
    pub(crate) fn start(listener: TcpListener, config: DataPlaneConfig) -> Result<DataPlane> {
        let port = listener
            .local_addr()
            .map_err(|e| Error::Setup(format!("data listener address: {e}")))?
            .port();
        let (shutdown_tx, shutdown) = watch::channel(false);
        let shared = Arc::new(Shared {
            keypair: config.keypair,
            prologue: prologue(&config.secret),
            max_message: config.max_message,
            view: config.view,
            routes: config.routes,
            inbound_tx: config.inbound_tx,
            shutdown,
        });
        tokio::spawn(accept_loop(listener, shared.clone()));
        Ok(DataPlane { shared, slots: Mutex::new(HashMap::new()), shutdown_tx, port })
    }

    /// The bound data port.
    pub(crate) fn port(&self) -> u16 {
        self.port
    }

    /// Stops the listener and closes every connection; in-flight requests fail.
    pub(crate) fn shutdown(&self) {
        self.shutdown_tx.send_replace(true);
        for slot in self.slots.lock().values() {
            if let Some(c) = slot.conn.read().as_ref() {
                c.close("local node shut down");
            }
        }
    }

    fn slot(&self, node: &str) -> Arc<Slot> {
        self.slots.lock().entry(node.to_owned()).or_default().clone()
    }

    /// Sends `payload` to `node` and waits for its reply until `deadline`.
    pub(crate) async fn request(
        &self,
        node: &str,
        payload: Bytes,
        deadline: Instant,
    ) -> Result<Bytes> {
        if *self.shared.shutdown.borrow() {
            return Err(Error::Shutdown);
        }
        let conn = self.connection(node, deadline).await?;
        let (tx, rx) = oneshot::channel();
        let id = conn.next_id.fetch_add(1, Ordering::Relaxed);
        match conn.pending.lock().as_mut() {
            Ok(p) => p.insert(id, tx),
            Err(reason) => {
                return Err(Error::NotDelivered {
                    node: node.to_owned(),
                    reason: format!("connection closed: {reason}"),
                });
            }
        };
        let frame = Frame { kind: KIND_REQUEST, id, payload };
        match tokio::time::timeout_at(deadline, conn.writer.send(frame)).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) => {
                // The writer is gone: the frame never entered its queue.
                forget(&conn, id);
                return Err(Error::NotDelivered {
                    node: node.to_owned(),
                    reason: "connection closed before the request was queued".into(),
                });
            }
            Err(_) => {
                forget(&conn, id);
                return Err(Error::Timeout { node: node.to_owned() });
            }
        }
        match tokio::time::timeout_at(deadline, rx).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(Error::Unreachable {
                node: node.to_owned(),
                reason: "connection closed without a reply".into(),
            }),
            Err(_) => {
                forget(&conn, id);
                Err(Error::Timeout { node: node.to_owned() })
            }
        }
    }

    /// The open connection to `node`, dialling one if needed.
    async fn connection(&self, node: &str, deadline: Instant) -> Result<Arc<Conn>> {
        let slot = self.slot(node);
        if let Some(c) = slot.conn.read().as_ref().filter(|c| c.is_open()) {
            return Ok(c.clone());
        }
        let asked = Instant::now();
        let mut last_failure = tokio::time::timeout_at(deadline, slot.dial.lock())
            .await
            .map_err(|_| Error::Timeout { node: node.to_owned() })?;
        if let Some(c) = slot.conn.read().as_ref().filter(|c| c.is_open()) {
            return Ok(c.clone());
        }
        if let Some((at, reason)) = last_failure.as_ref()
            && *at >= asked
        {
            // The dial this request waited for failed: do not dial again for it.
            return Err(Error::NotDelivered { node: node.to_owned(), reason: reason.clone() });
        }
        let (addr, peer) = self.route(node)?;
        let dial_deadline = deadline.min(Instant::now() + HANDSHAKE_TIMEOUT);
        let outcome =
            match tokio::time::timeout_at(dial_deadline, self.dial(node, addr, peer)).await {
                Ok(r) => r,
                Err(_) => Err(format!("connecting to {addr} timed out")),
            };
        match outcome {
            Ok(conn) => {
                *last_failure = None;
                *slot.conn.write() = Some(conn.clone());
                Ok(conn)
            }
            Err(reason) => {
                tracing::debug!(node, %addr, reason, "data connection failed");
                *last_failure = Some((Instant::now(), reason.clone()));
                Err(Error::NotDelivered { node: node.to_owned(), reason })
            }
        }
    }

    /// Where `node`'s data port is, and the peer id it must prove.
    fn route(&self, node: &str) -> Result<(SocketAddr, PeerId)> {
        let (peer, port, addresses) = {
            let view = self.shared.view.borrow();
            let Some(m) = view.members.get(node) else {
                return Err(Error::UnknownNode(node.to_owned()));
            };
            (m.announced.peer_id.clone(), m.announced.data_port, m.announced.addresses.clone())
        };
        let not_delivered =
            |reason: &str| Error::NotDelivered { node: node.to_owned(), reason: reason.into() };
        let peer: PeerId = peer.parse().map_err(|_| not_delivered("announced no valid peer id"))?;
        if port == 0 {
            return Err(not_delivered("announced no data port"));
        }
        let ip = self
            .shared
            .routes
            .read()
            .get(&peer)
            .copied()
            .or_else(|| {
                // Not dialled over libp2p yet (the peer dialled this node): an announced address,
                // a non-loopback one first (in a container, 127.0.0.1 is the container itself).
                let ips: Vec<IpAddr> = addresses.iter().filter_map(|a| ip_of(a)).collect();
                ips.iter().find(|ip| !ip.is_loopback()).or(ips.first()).copied()
            })
            .ok_or_else(|| not_delivered("no address known"))?;
        Ok((SocketAddr::new(ip, port), peer))
    }

    async fn dial(
        &self,
        node: &str,
        addr: SocketAddr,
        expected: PeerId,
    ) -> std::result::Result<Arc<Conn>, String> {
        let tcp = TcpStream::connect(addr).await.map_err(|e| format!("connect {addr}: {e}"))?;
        configure(&tcp);
        let mut io = libp2p::tcp::tokio::TcpStream(tcp);
        exchange_magic(&mut io).await.map_err(|e| format!("{addr}: {e}"))?;
        let noise = self.shared.noise().map_err(|e| format!("noise setup: {e}"))?;
        let (peer, io) = noise.upgrade_outbound(io, "/noise").await.map_err(|e| {
            format!("handshake with {addr} failed (a different cluster secret?): {e}")
        })?;
        if peer != expected {
            return Err(format!("{addr} is peer {peer}, not the announced {expected}"));
        }
        let (r, w) = io.split();
        let (tx, rx) = mpsc::channel(WRITER_QUEUE);
        let (stop, stopped) = watch::channel(false);
        let conn = Arc::new(Conn {
            writer: tx,
            next_id: AtomicU64::new(0),
            pending: Mutex::new(Ok(HashMap::new())),
            stop,
            node: node.to_owned(),
        });
        tracing::debug!(node, %addr, "data connection open");
        let shutdown = self.shared.shutdown.clone();
        let c = conn.clone();
        let writer_stop = stopped.clone();
        tokio::spawn(async move {
            let live = c.clone();
            let wanted = move |f: &Frame| live.is_waiting(f.id);
            let reason = match write_loop(w, rx, shutdown, writer_stop, wanted).await {
                Ok(()) => "closed".to_owned(),
                Err(e) => format!("write failed: {e}"),
            };
            c.close(&reason);
        });
        tokio::spawn(reply_loop(
            r,
            conn.clone(),
            self.shared.max_message,
            stopped,
            self.shared.shutdown.clone(),
        ));
        Ok(conn)
    }
}

impl Drop for DataPlane {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// Removes a request that will not wait for its reply any more.
fn forget(conn: &Conn, id: u64) {
    if let Ok(p) = conn.pending.lock().as_mut() {
        p.remove(&id);
    }
}

/// The IP address of an announced multiaddr, unless it is unspecified.
fn ip_of(addr: &str) -> Option<IpAddr> {
    crate::config::ip_of(&addr.parse().ok()?).filter(|ip| !ip.is_unspecified())
}

/// Socket options of every data connection: no Nagle delay, keepalive, and a bound on how long
/// written data may stay unacknowledged. Failures to set them are logged, not fatal.
fn configure(tcp: &TcpStream) {
    let _ = tcp.set_nodelay(true);
    let sock = socket2::SockRef::from(tcp);
    let keepalive = socket2::TcpKeepalive::new()
        .with_time(KEEPALIVE_IDLE)
        .with_interval(KEEPALIVE_INTERVAL)
        .with_retries(KEEPALIVE_RETRIES);
    if let Err(e) = sock
        .set_tcp_keepalive(&keepalive)
        .and_then(|()| sock.set_tcp_user_timeout(Some(TCP_USER_TIMEOUT)))
    {
        tracing::debug!(error = %e, "data connection socket options not set");
    }
}

/// Both sides write [`MAGIC`] and check the other's.
async fn exchange_magic<T: AsyncRead + AsyncWrite + Unpin>(io: &mut T) -> io::Result<()> {
    io.write_all(MAGIC).await?;
    io.flush().await?;
    let mut theirs = [0u8; 8];
    io.read_exact(&mut theirs).await?;
    if &theirs != MAGIC {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("not a cairn data port (it said {:?})", String::from_utf8_lossy(&theirs)),
        ));
    }
    Ok(())
}

/// Reads replies on an outbound connection and hands them to their requesters.
async fn reply_loop(
    mut r: ReadHalf<NoiseIo>,
    conn: Arc<Conn>,
    max_message: usize,
    mut stop: watch::Receiver<bool>,
    mut shutdown: watch::Receiver<bool>,
) {
    let reason = loop {
        let frame = tokio::select! {
            f = read_frame(&mut r, max_message) => f,
            _ = shutdown.wait_for(|stop| *stop) => break "local node shut down".to_owned(),
            _ = stop.wait_for(|stop| *stop) => break "closed".to_owned(),
        };
        let frame = match frame {
            Ok(Some(f)) => f,
            Ok(None) => break "closed by the peer".to_owned(),
            Err(e) => break format!("read failed: {e}"),
        };
        let result = match frame.kind {
            KIND_REPLY => Ok(frame.payload),
            KIND_ERROR => Err(Error::Remote {
                node: conn.node.clone(),
                message: String::from_utf8_lossy(&frame.payload).into_owned(),
            }),
            _ => break "protocol error: a request on an outbound connection".to_owned(),
        };
        let waiter = conn.pending.lock().as_mut().ok().and_then(|p| p.remove(&frame.id));
        if let Some(tx) = waiter {
            let _ = tx.send(result);
        }
    };
    conn.close(&reason);
}

/// Accepts data connections until shutdown.
async fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    let mut shutdown = shared.shutdown.clone();
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = shutdown.wait_for(|stop| *stop) => break,
        };
        match accepted {
            Ok((tcp, from)) => {
                let shared = shared.clone();
                tokio::spawn(async move {
                    if let Err(reason) = serve_connection(tcp, from, shared).await {
                        tracing::warn!(%from, reason, "data connection refused");
                    }
                });
            }
            Err(e) => {
                // Out of file descriptors and the like: back off instead of spinning.
                tracing::warn!(error = %e, "accepting a data connection failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// Handshakes with a connecting peer, admits it, and serves its requests until it closes.
async fn serve_connection(
    tcp: TcpStream,
    from: SocketAddr,
    shared: Arc<Shared>,
) -> std::result::Result<(), String> {
    configure(&tcp);
    let mut io = libp2p::tcp::tokio::TcpStream(tcp);
    let handshake = async {
        exchange_magic(&mut io).await.map_err(|e| e.to_string())?;
        let noise = shared.noise().map_err(|e| format!("noise setup: {e}"))?;
        noise
            .upgrade_inbound(io, "/noise")
            .await
            .map_err(|e| format!("handshake failed (most likely a different cluster secret): {e}"))
    };
    let (peer, io) = tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake)
        .await
        .map_err(|_| "handshake timed out".to_owned())??;
    let node = admit(&shared, &peer).await.ok_or_else(|| {
        format!("peer {peer} is no member of this cluster (no heartbeat from it)")
    })?;
    tracing::debug!(%from, node, "data connection accepted");
    let (mut r, w) = io.split();
    let (tx, rx) = mpsc::channel(WRITER_QUEUE);
    let writer = tokio::spawn(write_loop(
        w,
        rx,
        shared.shutdown.clone(),
        shared.shutdown.clone(),
        |_: &Frame| true,
    ));
    let mut shutdown = shared.shutdown.clone();
    let outcome = loop {
        let frame = tokio::select! {
            f = read_frame(&mut r, shared.max_message) => f,
            _ = shutdown.wait_for(|stop| *stop) => break Ok(()),
        };
        let frame = match frame {
            Ok(Some(f)) if f.kind == KIND_REQUEST => f,
            Ok(Some(f)) => {
                break Err(format!(
                    "protocol error from {node}: frame kind {} on an inbound connection",
                    f.kind
                ));
            }
            Ok(None) => break Ok(()),
            Err(e) => {
                tracing::debug!(node, error = %e, "data connection read failed");
                break Ok(());
            }
        };
        dispatch(&shared, &node, frame, &tx);
    };
    drop(tx);
    // The writer ends once the replies still being computed are sent (their tasks hold clones
    // of the sender), or at shutdown.
    let _ = writer.await;
    outcome
}

/// Hands one request to the node and arranges for its reply to be written back.
fn dispatch(shared: &Shared, node: &str, frame: Frame, tx: &mpsc::Sender<Frame>) {
    let id = frame.id;
    let (reply, rx) = ReplyHandle::new();
    let req = InboundRequest { from: node.to_owned(), payload: frame.payload, reply };
    let refusal = match shared.inbound_tx.try_send(req) {
        Ok(()) => None,
        Err(mpsc::error::TrySendError::Full(_)) => {
            tracing::warn!(from = node, "inbound request queue full; refusing request");
            Some("receiver overloaded")
        }
        Err(mpsc::error::TrySendError::Closed(_)) => Some("node not serving"),
    };
    let tx = tx.clone();
    if let Some(message) = refusal {
        let frame = Frame { kind: KIND_ERROR, id, payload: Bytes::from(message) };
        if tx.try_send(frame).is_err() {
            tracing::debug!(from = node, "reply queue full; refusal not sent");
        }
        return;
    }
    let max = shared.max_message;
    tokio::spawn(async move {
        let (kind, payload) = match rx.await {
            Ok(Ok(b)) if b.len() > max => {
                (KIND_ERROR, Bytes::from(format!("reply of {} bytes exceeds {max}", b.len())))
            }
            Ok(Ok(b)) => (KIND_REPLY, b),
            Ok(Err(message)) => (KIND_ERROR, Bytes::from(message)),
            Err(_) => (KIND_ERROR, Bytes::from_static(DROPPED_REPLY.as_bytes())),
        };
        let _ = tx.send(Frame { kind, id, payload }).await;
    });
}

/// The member node id of `peer`, waiting up to [`ADMISSION_WAIT`] for its first heartbeat.
async fn admit(shared: &Shared, peer: &PeerId) -> Option<String> {
    if let Some(node) = shared.node_of_peer(peer) {
        return Some(node);
    }
    let mut view = shared.view.clone();
    let deadline = Instant::now() + ADMISSION_WAIT;
    loop {
        match tokio::time::timeout_at(deadline, view.changed()).await {
            Ok(Ok(())) => {
                if let Some(node) = shared.node_of_peer(peer) {
                    return Some(node);
                }
            }
            _ => return None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn block<F: std::future::Future>(f: F) -> F::Output {
        futures::executor::block_on(f)
    }

    fn encode(frames: &[Frame]) -> Vec<u8> {
        let mut out = Vec::new();
        for f in frames {
            out.extend_from_slice(&f.header());
            out.extend_from_slice(&f.payload);
        }
        out
    }

    #[test]
    fn frames_round_trip_and_end_cleanly() {
        let frames = [
            Frame { kind: KIND_REQUEST, id: 7, payload: Bytes::from_static(b"hello") },
            Frame { kind: KIND_REPLY, id: u64::MAX, payload: Bytes::new() },
            Frame { kind: KIND_ERROR, id: 0, payload: Bytes::from_static(b"overloaded") },
        ];
        let bytes = encode(&frames);
        let mut r = futures::io::Cursor::new(bytes);
        for want in &frames {
            let got = block(read_frame(&mut r, 100)).unwrap().unwrap();
            assert_eq!((got.kind, got.id, &got.payload), (want.kind, want.id, &want.payload));
        }
        assert!(block(read_frame(&mut r, 100)).unwrap().is_none(), "EOF between frames is clean");
    }

    #[test]
    fn oversize_unknown_and_truncated_frames_are_errors() {
        let big = Frame { kind: KIND_REQUEST, id: 1, payload: Bytes::from(vec![0u8; 101]) };
        let mut r = futures::io::Cursor::new(encode(&[big]));
        let err = block(read_frame(&mut r, 100)).err().unwrap();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData, "rejected before reading the body");

        let odd = Frame { kind: 9, id: 1, payload: Bytes::new() };
        let mut r = futures::io::Cursor::new(encode(&[odd]));
        assert!(block(read_frame(&mut r, 100)).is_err());

        let ok = Frame { kind: KIND_REPLY, id: 1, payload: Bytes::from_static(b"abcdef") };
        let mut bytes = encode(&[ok]);
        bytes.truncate(bytes.len() - 2);
        let mut r = futures::io::Cursor::new(bytes);
        assert!(block(read_frame(&mut r, 100)).is_err(), "EOF inside a frame is an error");

        let mut r = futures::io::Cursor::new(vec![0u8, 0, 0, 3]);
        assert!(block(read_frame(&mut r, 100)).is_err(), "length shorter than the header");
    }

    #[test]
    fn prologue_depends_on_the_secret() {
        assert_eq!(prologue(&[1; 32]), prologue(&[1; 32]));
        assert_ne!(prologue(&[1; 32]), prologue(&[2; 32]));
    }

    #[test]
    fn ip_of_skips_unspecified_and_non_ip_addresses() {
        assert_eq!(ip_of("/ip4/10.0.0.5/tcp/7000"), Some("10.0.0.5".parse().unwrap()));
        assert_eq!(ip_of("/ip4/0.0.0.0/tcp/7000"), None);
        assert_eq!(ip_of("/memory/4"), None);
        assert_eq!(ip_of("garbage"), None);
    }

    /// Two or more data planes on loopback with views the test controls.
    mod sockets {
        use super::super::*;
        use crate::table::{Announcement, MemberInfo, MemberStatus};
        use std::collections::BTreeMap;

        struct TestNode {
            id: String,
            peer: PeerId,
            plane: DataPlane,
            view_tx: watch::Sender<MemberView>,
            inbound: Option<mpsc::Receiver<InboundRequest>>,
        }

        async fn node(id: &str, secret: [u8; 32]) -> TestNode {
            node_with_queue(id, secret, 1024).await
        }

        async fn node_with_queue(id: &str, secret: [u8; 32], queue: usize) -> TestNode {
            let keypair = identity::Keypair::generate_ed25519();
            let peer = keypair.public().to_peer_id();
            let listener = DataPlane::bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
            let (view_tx, view) = watch::channel(MemberView::default());
            let (inbound_tx, inbound) = mpsc::channel(queue);
            let plane = DataPlane::start(
                listener,
                DataPlaneConfig {
                    keypair,
                    secret,
                    max_message: 1 << 20,
                    view,
                    routes: Arc::new(Routes::default()),
                    inbound_tx,
                },
            )
            .unwrap();
            TestNode { id: id.into(), peer, plane, view_tx, inbound: Some(inbound) }
        }

        /// Publishes a view in which every node of `nodes` is a member, to each of `nodes`.
        fn know_each_other(nodes: &[&TestNode]) {
            let mut members = BTreeMap::new();
            for n in nodes {
                members.insert(
                    n.id.clone(),
                    MemberInfo {
                        node_id: n.id.clone(),
                        announced: Announcement {
                            peer_id: n.peer.to_string(),
                            addresses: vec!["/ip4/127.0.0.1/tcp/1".into()],
                            data_port: n.plane.port(),
                            ..Default::default()
                        },
                        status: MemberStatus::Up,
                        phi: 0.0,
                        last_heartbeat_age: None,
                        heartbeats: 1,
                    },
                );
            }
            for n in nodes {
                n.view_tx
                    .send_replace(MemberView { local: n.id.clone(), members: members.clone() });
            }
        }

        /// Answers every request with `from:payload`, or an error for payload `fail`.
        fn serve(n: &mut TestNode) {
            let mut rx = n.inbound.take().unwrap();
            tokio::spawn(async move {
                while let Some(req) = rx.recv().await {
                    if &req.payload[..] == b"fail" {
                        req.reply.reply_error("no such thing");
                    } else if &req.payload[..] == b"hang" {
                        std::mem::forget(req.reply);
                    } else {
                        let mut out = format!("{}:", req.from).into_bytes();
                        out.extend_from_slice(&req.payload);
                        req.reply.reply(Bytes::from(out));
                    }
                }
            });
        }

        fn soon() -> Instant {
            Instant::now() + Duration::from_secs(5)
        }

        /// A request from `from` to `to` left running in the background.
        fn spawn_request(
            from: &Arc<TestNode>,
            to: &'static str,
            body: &'static [u8],
        ) -> tokio::task::JoinHandle<Result<Bytes>> {
            let from = from.clone();
            tokio::spawn(
                async move { from.plane.request(to, Bytes::from_static(body), soon()).await },
            )
        }

        #[tokio::test]
        async fn requests_and_replies_with_the_authenticated_sender() {
            let a = node("a", [7; 32]).await;
            let mut b = node("b", [7; 32]).await;
            know_each_other(&[&a, &b]);
            serve(&mut b);
            let got = a.plane.request("b", Bytes::from_static(b"hi"), soon()).await.unwrap();
            assert_eq!(&got[..], b"a:hi", "the receiver knows who sent it");
            // Many concurrent requests share the connection and get their own replies.
            let mut joins = Vec::new();
            let a = Arc::new(a);
            for i in 0..200u32 {
                let a = a.clone();
                joins.push(tokio::spawn(async move {
                    let body = Bytes::from(i.to_string());
                    let r = a.plane.request("b", body, soon()).await.unwrap();
                    assert_eq!(r, Bytes::from(format!("a:{i}")));
                }));
            }
            for j in joins {
                j.await.unwrap();
            }
            let big = Bytes::from(vec![5u8; 900_000]);
            let r = a.plane.request("b", big.clone(), soon()).await.unwrap();
            assert_eq!(&r[2..], &big[..]);
            let err = a.plane.request("b", Bytes::from_static(b"fail"), soon()).await.unwrap_err();
            assert!(matches!(err, Error::Remote { ref message, .. } if message == "no such thing"));
            assert!(matches!(
                a.plane.request("zz", Bytes::new(), soon()).await,
                Err(Error::UnknownNode(_))
            ));
        }

        #[tokio::test]
        async fn a_stopped_peer_is_not_delivered_and_a_closed_one_is_unreachable() {
            let a = node("a", [7; 32]).await;
            let mut b = node("b", [7; 32]).await;
            know_each_other(&[&a, &b]);
            serve(&mut b);
            let r = a.plane.request("b", Bytes::from_static(b"x"), soon()).await;
            assert!(r.is_ok());
            // A request in flight when the peer goes away may have been applied.
            let a = Arc::new(a);
            let pending = spawn_request(&a, "b", b"hang");
            tokio::time::sleep(Duration::from_millis(200)).await;
            b.plane.shutdown();
            let err = pending.await.unwrap().unwrap_err();
            assert!(matches!(err, Error::Unreachable { .. }), "{err:?}");
            assert!(!err.certainly_not_delivered());
            // Nobody listens any more: the dial fails, nothing was sent.
            tokio::time::sleep(Duration::from_millis(100)).await;
            let err = a.plane.request("b", Bytes::from_static(b"x"), soon()).await.unwrap_err();
            assert!(err.certainly_not_delivered(), "{err:?}");
        }

        #[tokio::test]
        async fn a_full_inbound_queue_is_refused_at_once() {
            let a = node("a", [7; 32]).await;
            let b = node_with_queue("b", [7; 32], 1).await;
            know_each_other(&[&a, &b]);
            // b's node never takes requests off its queue: the first fills it, the second is
            // answered "overloaded" without waiting for the timeout.
            let a = Arc::new(a);
            let first = spawn_request(&a, "b", b"1");
            tokio::time::sleep(Duration::from_millis(200)).await;
            let err = a.plane.request("b", Bytes::from_static(b"2"), soon()).await.unwrap_err();
            assert!(
                matches!(err, Error::Remote { ref message, .. } if message.contains("overloaded"))
            );
            first.abort();
            drop(b);
        }

        #[tokio::test]
        async fn a_reply_that_never_comes_times_out_and_the_connection_stays() {
            let a = node("a", [7; 32]).await;
            let mut b = node("b", [7; 32]).await;
            know_each_other(&[&a, &b]);
            serve(&mut b);
            let deadline = Instant::now() + Duration::from_millis(300);
            let err = a.plane.request("b", Bytes::from_static(b"hang"), deadline).await;
            assert!(matches!(err, Err(Error::Timeout { .. })), "{err:?}");
            let ok = a.plane.request("b", Bytes::from_static(b"again"), soon()).await.unwrap();
            assert_eq!(&ok[..], b"a:again");
        }

        #[tokio::test]
        async fn another_cluster_secret_or_a_stranger_is_refused() {
            let a = node("a", [7; 32]).await;
            let mut b = node("b", [8; 32]).await;
            know_each_other(&[&a, &b]);
            serve(&mut b);
            let err = a.plane.request("b", Bytes::from_static(b"x"), soon()).await.unwrap_err();
            assert!(err.certainly_not_delivered(), "{err:?}");
            assert!(err.to_string().contains("handshake"), "{err}");

            // Same secret, but `b` does not count `c` as a member.
            let c = node("c", [8; 32]).await;
            know_each_other(&[&c]);
            let mut view = c.view_tx.borrow().clone();
            let bv = b.view_tx.borrow().clone();
            view.members.insert("b".into(), bv.members["b"].clone());
            c.view_tx.send_replace(view);
            let started = std::time::Instant::now();
            let err = c.plane.request("b", Bytes::from_static(b"x"), soon()).await.unwrap_err();
            assert!(!matches!(err, Error::Remote { .. }), "never served: {err:?}");
            assert!(
                started.elapsed() >= ADMISSION_WAIT,
                "refused only after waiting for a heartbeat"
            );

            // Something that is not cairn on the port gets the connection closed.
            let mut raw = TcpStream::connect(("127.0.0.1", b.plane.port())).await.unwrap();
            use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
            raw.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
            let mut buf = Vec::new();
            let n = tokio::time::timeout(Duration::from_secs(5), raw.read_to_end(&mut buf)).await;
            assert!(matches!(n, Ok(Ok(_)) | Ok(Err(_))), "closed, not left hanging");
            assert!(!buf.windows(4).any(|w| w == b"HTTP"));
        }
    }
}
