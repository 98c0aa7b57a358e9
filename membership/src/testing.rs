//! An in-process network implementing [`Transport`], for tests of the crates above this one.
//!
//! [`InMemoryNetwork`] connects any number of named nodes inside one process. Each node gets an
//! [`InMemoryTransport`] (send) and a receiver of [`InboundRequest`]s (serve), exactly like
//! [`crate::Membership::start`] gives a real node, so code under test cannot tell the
//! difference. The network can:
//!
//! - **partition** sets of nodes from each other, **isolate** one node, and **heal** everything;
//! - **crash** a node (requests to it fail at once, like a refused connection) and bring it back
//!   by registering it again;
//! - **drop** requests and replies with a probability drawn from a seeded RNG (a lost request is
//!   never processed; a lost reply was processed but the sender never learns it), both seen by
//!   the sender as [`Error::Timeout`] after the timeout;
//! - **delay** every message by a fixed one-way latency.
//!
//! A request over a cut link also ends in [`Error::Timeout`] (a partition looks like silence,
//! not like a refusal). All waiting uses `tokio::time`, so tests running with a paused clock
//! (`#[tokio::test(start_paused = true)]`) never really wait.
//!
//! Every node also has a [`MemberView`] and [`MemberEvent`]s, computed from the topology
//! instead of heartbeats: from node `a`, node `b` is Up when both are running and their link is
//! not cut, otherwise Down. Views change immediately with the topology.
//!
//! Determinism: with the same seed and the same order of calls, the same messages are dropped.
//! Message *interleaving* still depends on the tokio scheduler.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use parking_lot::Mutex;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::sync::{broadcast, mpsc, watch};

use crate::error::{Error, Result};
use crate::table::{Announcement, MemberEvent, MemberInfo, MemberStatus, MemberView};
use crate::transport::{
    DROPPED_REPLY, INBOUND_QUEUE_CAPACITY, InboundRequest, ReplyHandle, Transport,
};

/// Default bound on one request over the in-memory network.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(1);
/// Capacity of each node's event broadcast.
const EVENTS_CAPACITY: usize = 256;

/// Counters of what the network did, for assertions in tests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NetStats {
    /// Requests handed to the target's inbound queue.
    pub delivered: u64,
    /// Requests lost by the drop probability.
    pub dropped_requests: u64,
    /// Replies lost by the drop probability.
    pub dropped_replies: u64,
    /// Requests or replies lost because the link was cut.
    pub cut: u64,
}

/// A simulated network of named nodes. Cheap to clone (all clones are the same network).
#[derive(Clone)]
pub struct InMemoryNetwork {
    /// Shared topology and RNG. A `parking_lot::Mutex` because every critical section is short
    /// and synchronous (never held across an await); every transport and the test hold clones.
    state: Arc<Mutex<NetState>>,
}

impl std::fmt::Debug for InMemoryNetwork {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = self.state.lock();
        f.debug_struct("InMemoryNetwork")
            .field("nodes", &s.nodes.keys().collect::<Vec<_>>())
            .field("cuts", &s.cuts)
            .finish()
    }
}

struct NodeEntry {
    /// Sender into the node's inbound queue; the receiver was returned by `register`.
    inbound: mpsc::Sender<InboundRequest>,
    running: bool,
    /// The node's view; receivers are handed out by [`InMemoryNetwork::view`]. Kept across
    /// crash and re-register so receivers survive restarts.
    view_tx: watch::Sender<MemberView>,
    /// The node's transitions; receivers come from [`InMemoryNetwork::events`].
    events_tx: broadcast::Sender<MemberEvent>,
}

struct NetState {
    nodes: BTreeMap<String, NodeEntry>,
    /// Cut links as ordered pairs `(min, max)`.
    cuts: BTreeSet<(String, String)>,
    drop_probability: f64,
    delay: Duration,
    timeout: Duration,
    rng: StdRng,
    stats: NetStats,
}

fn pair(a: &str, b: &str) -> (String, String) {
    if a <= b { (a.to_owned(), b.to_owned()) } else { (b.to_owned(), a.to_owned()) }
}

impl NetState {
    fn running(&self, node: &str) -> bool {
        self.nodes.get(node).is_some_and(|n| n.running)
    }

    fn linked(&self, a: &str, b: &str) -> bool {
        a == b || !self.cuts.contains(&pair(a, b))
    }

    fn status(&self, from: &str, of: &str) -> MemberStatus {
        if from == of || (self.running(from) && self.running(of) && self.linked(from, of)) {
            MemberStatus::Up
        } else {
            MemberStatus::Down
        }
    }

    /// Recomputes every node's view and emits the transitions.
    fn refresh_views(&self) {
        for (me, entry) in &self.nodes {
            let mut members = BTreeMap::new();
            for other in self.nodes.keys() {
                let status = self.status(me, other);
                members.insert(
                    other.clone(),
                    MemberInfo {
                        node_id: other.clone(),
                        announced: Announcement {
                            peer_id: format!("mem-{other}"),
                            addresses: vec![format!("/memory/{other}")],
                            http_addr: String::new(),
                            version: env!("CARGO_PKG_VERSION").to_owned(),
                            data_port: 0,
                        },
                        status,
                        phi: if status == MemberStatus::Up { 0.0 } else { crate::phi::PHI_MAX },
                        last_heartbeat_age: None,
                        heartbeats: 0,
                    },
                );
            }
            let view = MemberView { local: me.clone(), members };
            let old = entry.view_tx.borrow().clone();
            for (node, info) in &view.members {
                if old.status(node) != Some(info.status) {
                    let event = match info.status {
                        MemberStatus::Up => MemberEvent::Up(node.clone()),
                        MemberStatus::Suspect => MemberEvent::Suspect(node.clone()),
                        MemberStatus::Down => MemberEvent::Down(node.clone()),
                    };
                    let _ = entry.events_tx.send(event);
                }
            }
            entry.view_tx.send_replace(view);
        }
    }
}

impl InMemoryNetwork {
    /// An empty network whose drop decisions come from `seed`.
    pub fn new(seed: u64) -> Self {
        InMemoryNetwork {
            state: Arc::new(Mutex::new(NetState {
                nodes: BTreeMap::new(),
                cuts: BTreeSet::new(),
                drop_probability: 0.0,
                delay: Duration::ZERO,
                timeout: DEFAULT_TIMEOUT,
                rng: StdRng::seed_from_u64(seed),
                stats: NetStats::default(),
            })),
        }
    }

    /// Adds `node` (or restarts it after [`crash`](Self::crash)): returns its transport and
    /// the receiver of requests addressed to it (capacity [`INBOUND_QUEUE_CAPACITY`]).
    pub fn register(&self, node: &str) -> (InMemoryTransport, mpsc::Receiver<InboundRequest>) {
        let (tx, rx) = mpsc::channel(INBOUND_QUEUE_CAPACITY);
        let mut s = self.state.lock();
        match s.nodes.get_mut(node) {
            Some(entry) => {
                entry.inbound = tx;
                entry.running = true;
            }
            None => {
                let (view_tx, _) = watch::channel(MemberView::default());
                let (events_tx, _) = broadcast::channel(EVENTS_CAPACITY);
                s.nodes.insert(
                    node.to_owned(),
                    NodeEntry { inbound: tx, running: true, view_tx, events_tx },
                );
            }
        }
        s.refresh_views();
        (InMemoryTransport { node: node.to_owned(), net: self.clone() }, rx)
    }

    /// Stops `node`: requests to it fail at once with [`Error::NotDelivered`], its own requests
    /// fail with [`Error::Shutdown`], and its inbound receiver sees the channel close.
    pub fn crash(&self, node: &str) {
        let mut s = self.state.lock();
        if let Some(entry) = s.nodes.get_mut(node) {
            entry.running = false;
            // Replace the sender so the old receiver observes the close.
            let (tx, _) = mpsc::channel(1);
            entry.inbound = tx;
        }
        s.refresh_views();
    }

    /// Cuts every link between a node of `a` and a node of `b`.
    pub fn partition(&self, a: &[&str], b: &[&str]) {
        let mut s = self.state.lock();
        for x in a {
            for y in b {
                if x != y {
                    s.cuts.insert(pair(x, y));
                }
            }
        }
        s.refresh_views();
    }

    /// Cuts every link of `node` to every other registered node.
    pub fn isolate(&self, node: &str) {
        let others: Vec<String> = self.state.lock().nodes.keys().cloned().collect();
        let others: Vec<&str> = others.iter().map(String::as_str).collect();
        self.partition(&[node], &others);
    }

    /// Restores every cut link.
    pub fn heal(&self) {
        let mut s = self.state.lock();
        s.cuts.clear();
        s.refresh_views();
    }

    /// Probability in `[0, 1]` that a request, and independently its reply, is lost.
    pub fn set_drop_probability(&self, p: f64) {
        self.state.lock().drop_probability = if p.is_finite() { p.clamp(0.0, 1.0) } else { 0.0 };
    }

    /// One-way latency added to every request and every reply.
    pub fn set_delay(&self, delay: Duration) {
        self.state.lock().delay = delay;
    }

    /// Bound on one request (default [`DEFAULT_TIMEOUT`]).
    pub fn set_timeout(&self, timeout: Duration) {
        self.state.lock().timeout = timeout;
    }

    /// Whether `a` and `b` can currently exchange messages.
    pub fn reachable(&self, a: &str, b: &str) -> bool {
        let s = self.state.lock();
        s.running(a) && s.running(b) && s.linked(a, b)
    }

    /// What the network has done so far.
    pub fn stats(&self) -> NetStats {
        self.state.lock().stats
    }

    /// The member view of `node` (every registered node, Up or Down as `node` sees it), or
    /// `None` if `node` was never registered.
    pub fn view(&self, node: &str) -> Option<watch::Receiver<MemberView>> {
        self.state.lock().nodes.get(node).map(|n| n.view_tx.subscribe())
    }

    /// Status transitions as seen by `node`, from now on.
    pub fn events(&self, node: &str) -> Option<broadcast::Receiver<MemberEvent>> {
        self.state.lock().nodes.get(node).map(|n| n.events_tx.subscribe())
    }

    async fn send(&self, from: &str, to: &str, payload: Bytes) -> Result<Bytes> {
        let (target, drop_req, drop_reply, delay, timeout) = {
            let mut s = self.state.lock();
            if !s.running(from) {
                return Err(Error::Shutdown);
            }
            let Some(entry) = s.nodes.get(to) else {
                return Err(Error::UnknownNode(to.to_owned()));
            };
            if !entry.running {
                return Err(Error::NotDelivered {
                    node: to.to_owned(),
                    reason: "node crashed".into(),
                });
            }
            let target = entry.inbound.clone();
            let local = from == to;
            let p = s.drop_probability;
            let drop_req = !local && p > 0.0 && s.rng.random::<f64>() < p;
            let drop_reply = !local && p > 0.0 && s.rng.random::<f64>() < p;
            let delay = if local { Duration::ZERO } else { s.delay };
            (target, drop_req, drop_reply, delay, s.timeout)
        };
        let deadline = tokio::time::Instant::now() + timeout;
        let timed_out = || Error::Timeout { node: to.to_owned() };
        let lost = |why: fn(&mut NetStats)| {
            why(&mut self.state.lock().stats);
            async move {
                tokio::time::sleep_until(deadline).await;
                Err(timed_out())
            }
        };
        if !self.state.lock().linked(from, to) {
            return lost(|s| s.cut += 1).await;
        }
        if drop_req {
            return lost(|s| s.dropped_requests += 1).await;
        }
        if !delay.is_zero() {
            tokio::time::sleep(delay.min(timeout)).await;
        }
        let (reply, rx) = ReplyHandle::new();
        let request = InboundRequest { from: from.to_owned(), payload, reply };
        match target.try_send(request) {
            Ok(()) => self.state.lock().stats.delivered += 1,
            Err(mpsc::error::TrySendError::Full(_)) => {
                return Err(Error::Remote {
                    node: to.to_owned(),
                    message: "receiver overloaded".into(),
                });
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {
                return Err(Error::NotDelivered {
                    node: to.to_owned(),
                    reason: "not serving".into(),
                });
            }
        }
        let outcome = match tokio::time::timeout_at(deadline, rx).await {
            Err(_) => return Err(timed_out()),
            Ok(outcome) => outcome,
        };
        if !self.state.lock().linked(from, to) {
            return lost(|s| s.cut += 1).await;
        }
        if drop_reply {
            return lost(|s| s.dropped_replies += 1).await;
        }
        if !delay.is_zero() {
            tokio::time::sleep_until(deadline.min(tokio::time::Instant::now() + delay)).await;
        }
        match outcome {
            Ok(Ok(bytes)) => Ok(bytes),
            Ok(Err(message)) => Err(Error::Remote { node: to.to_owned(), message }),
            Err(_) => Err(Error::Remote { node: to.to_owned(), message: DROPPED_REPLY.into() }),
        }
    }
}

/// One node's sending side on an [`InMemoryNetwork`].
#[derive(Clone, Debug)]
pub struct InMemoryTransport {
    node: String,
    net: InMemoryNetwork,
}

impl InMemoryTransport {
    /// The node id this transport sends as.
    pub fn node_id(&self) -> &str {
        &self.node
    }
}

impl Transport for InMemoryTransport {
    fn request(
        &self,
        to: &str,
        payload: Bytes,
    ) -> impl std::future::Future<Output = Result<Bytes>> + Send {
        let net = self.net.clone();
        let from = self.node.clone();
        let to = to.to_owned();
        async move { net.send(&from, &to, payload).await }
    }
}

/// Serves `rx` until it closes, answering every request with `handler(from, payload)`.
/// Convenience for tests: `tokio::spawn(serve(rx, |_, p| Ok(p)))` is an echo node.
pub async fn serve<F>(mut rx: mpsc::Receiver<InboundRequest>, mut handler: F)
where
    F: FnMut(&str, Bytes) -> std::result::Result<Bytes, String>,
{
    while let Some(req) = rx.recv().await {
        match handler(&req.from, req.payload) {
            Ok(b) => req.reply.reply(b),
            Err(e) => req.reply.reply_error(e),
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn echo_net(nodes: &[&str]) -> (InMemoryNetwork, BTreeMap<String, InMemoryTransport>) {
        let net = InMemoryNetwork::new(7);
        let mut ts = BTreeMap::new();
        for n in nodes {
            let (t, rx) = net.register(n);
            let me = n.to_string();
            tokio::spawn(serve(rx, move |from, p| {
                Ok(Bytes::from(format!("{me} got {} from {from}", String::from_utf8_lossy(&p))))
            }));
            ts.insert(n.to_string(), t);
        }
        (net, ts)
    }

    #[tokio::test(start_paused = true)]
    async fn request_reply_and_self_delivery() {
        let (_, ts) = echo_net(&["a", "b"]);
        let r = ts["a"].request("b", Bytes::from_static(b"hi")).await.unwrap();
        assert_eq!(&r[..], b"b got hi from a");
        let r = ts["a"].request("a", Bytes::from_static(b"me")).await.unwrap();
        assert_eq!(&r[..], b"a got me from a");
        assert!(matches!(ts["a"].request("zz", Bytes::new()).await, Err(Error::UnknownNode(_))));
    }

    #[tokio::test(start_paused = true)]
    async fn partition_times_out_and_heal_restores() {
        let (net, ts) = echo_net(&["a", "b", "c"]);
        let mut view_a = net.view("a").unwrap();
        let mut events_a = net.events("a").unwrap();
        net.partition(&["a"], &["b", "c"]);
        let start = tokio::time::Instant::now();
        let err = ts["a"].request("b", Bytes::new()).await.unwrap_err();
        assert!(matches!(err, Error::Timeout { .. }), "{err}");
        assert_eq!(start.elapsed(), DEFAULT_TIMEOUT, "a cut link looks like silence");
        // b and c are on the same side and still talk.
        assert!(ts["b"].request("c", Bytes::new()).await.is_ok());
        assert_eq!(view_a.borrow_and_update().status("b"), Some(MemberStatus::Down));
        assert_eq!(events_a.recv().await.unwrap(), MemberEvent::Down("b".into()));
        assert_eq!(events_a.recv().await.unwrap(), MemberEvent::Down("c".into()));
        net.heal();
        assert!(ts["a"].request("b", Bytes::new()).await.is_ok());
        assert_eq!(events_a.recv().await.unwrap(), MemberEvent::Up("b".into()));
        assert_eq!(net.stats().cut, 1);
    }

    #[tokio::test(start_paused = true)]
    async fn crash_refuses_at_once_and_restart_serves_again() {
        let (net, ts) = echo_net(&["a", "b"]);
        net.crash("b");
        let start = tokio::time::Instant::now();
        assert!(matches!(
            ts["a"].request("b", Bytes::new()).await,
            Err(Error::NotDelivered { .. })
        ));
        assert_eq!(start.elapsed(), Duration::ZERO);
        assert!(matches!(ts["b"].request("a", Bytes::new()).await, Err(Error::Shutdown)));
        let (_, rx) = net.register("b");
        tokio::spawn(serve(rx, |_, _| Ok(Bytes::from_static(b"back"))));
        assert_eq!(&ts["a"].request("b", Bytes::new()).await.unwrap()[..], b"back");
    }

    #[tokio::test(start_paused = true)]
    async fn drops_are_seeded_and_counted() {
        let run = || async {
            let (net, ts) = echo_net(&["a", "b"]);
            net.set_drop_probability(0.3);
            let mut outcomes = Vec::new();
            for _ in 0..50 {
                outcomes.push(ts["a"].request("b", Bytes::new()).await.is_ok());
            }
            (outcomes, net.stats())
        };
        let (o1, s1) = run().await;
        let (o2, s2) = run().await;
        assert_eq!(o1, o2, "same seed, same losses");
        assert_eq!(s1, s2);
        let ok = o1.iter().filter(|x| **x).count() as u64;
        // P(ok) = 0.7 × 0.7 = 0.49: far from 0 and from 50.
        assert!((10..=40).contains(&ok), "{ok} of 50 succeeded");
        assert!(s1.dropped_requests > 0 && s1.dropped_replies > 0);
        // A lost reply means the request *was* delivered: the receiver saw more than succeeded.
        assert_eq!(s1.delivered, 50 - s1.dropped_requests);
    }

    #[tokio::test(start_paused = true)]
    async fn delay_applies_both_ways() {
        let (net, ts) = echo_net(&["a", "b"]);
        net.set_delay(Duration::from_millis(30));
        let start = tokio::time::Instant::now();
        ts["a"].request("b", Bytes::new()).await.unwrap();
        assert_eq!(start.elapsed(), Duration::from_millis(60));
    }

    #[tokio::test(start_paused = true)]
    async fn full_inbound_queue_refuses_instead_of_blocking() {
        let net = InMemoryNetwork::new(1);
        let (a, _rx_a) = net.register("a");
        let (_b, rx_b) = net.register("b"); // b never reads its queue
        let mut pending = Vec::new();
        for _ in 0..INBOUND_QUEUE_CAPACITY {
            let a = a.clone();
            pending.push(tokio::spawn(async move { a.request("b", Bytes::new()).await }));
        }
        for _ in 0..100_000 {
            if net.stats().delivered == INBOUND_QUEUE_CAPACITY as u64 {
                break;
            }
            tokio::task::yield_now().await;
        }
        assert_eq!(net.stats().delivered, INBOUND_QUEUE_CAPACITY as u64);
        let err = a.request("b", Bytes::new()).await.unwrap_err();
        assert!(matches!(err, Error::Remote { .. }) && err.is_retryable(), "{err}");
        drop(rx_b);
        for p in pending {
            // The queued requests end when the receiver goes away (dropped reply handles).
            assert!(p.await.unwrap().is_err());
        }
    }

    #[tokio::test(start_paused = true)]
    async fn dropped_reply_handle_is_a_remote_error() {
        let net = InMemoryNetwork::new(1);
        let (a, _rx_a) = net.register("a");
        let (_b, mut rx_b) = net.register("b");
        tokio::spawn(async move {
            while let Some(req) = rx_b.recv().await {
                drop(req.reply);
            }
        });
        assert!(matches!(a.request("b", Bytes::new()).await, Err(Error::Remote { .. })));
    }
}
