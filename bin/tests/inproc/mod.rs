//! The API over real nodes, in one process: a 3-node cluster (N=3, R=2, W=2; members n1, n2,
//! n3) over `cairn_membership::testing::InMemoryNetwork`, each node with a real engine in a
//! temporary directory, its inbound server and its handoff task, and the router of
//! `cairn_api::router(NodeBackend { node })` for each node. Tests send requests to a router with
//! `tower::ServiceExt::oneshot` (see [`http`]), break the cluster through the network (crash,
//! isolate, partition, heal) and look at what the nodes stored through their engines.
#![allow(clippy::unwrap_used, clippy::expect_used, dead_code)]

pub mod http;

use std::fs::File;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::Router;
use cairn_api::ApiConfig;
use cairn_engine::{Engine, FileSync, Keyspace, Options, SyncPolicy};
use cairn_membership::testing::{InMemoryNetwork, InMemoryTransport};
use cairn_node::node::backend::NodeBackend;
use cairn_node::node::keys::ObjectKey;
use cairn_node::node::store::Store;
use cairn_node::node::{Node, Parts, server};
use cairn_replication::{Actor, Body, NodeId, SiblingSet};
use tokio::sync::watch;

/// A node of the test cluster.
pub type TestNode = Arc<Node<InMemoryTransport>>;

/// The members, in order.
pub const IDS: [&str; 3] = ["n1", "n2", "n3"];
/// The maximum object size of the test API (small, so 413 is cheap to provoke).
pub const MAX: u64 = 1024;
/// The maximum multipart request size of the test API.
pub const MAX_REQUEST: u64 = 8 * 1024;
/// Bound on one coordinated request and on one in-memory network request: small, so quorum
/// failures that wait for a timeout stay fast.
pub const REQUEST_TIMEOUT: Duration = Duration::from_millis(800);

/// The API settings the tests use unless they say otherwise: N = 3, [`MAX`], [`MAX_REQUEST`].
pub fn api_config() -> ApiConfig {
    ApiConfig { max_object_size: MAX, max_request_size: MAX_REQUEST, ..ApiConfig::new(MAX, 3) }
}

/// How to build the cluster.
#[derive(Debug, Clone)]
pub struct Setup {
    /// The API settings of every node's router.
    pub api: ApiConfig,
    /// Engines sync every write (`SyncPolicy::Always`) through a [`Disk`] that does nothing
    /// until [`TestCluster::fail_disk`], after which every sync fails (and the engine poisons
    /// itself, as it does on a real fdatasync error). Otherwise `SyncPolicy::Never`.
    pub disk_faults: bool,
}

impl Default for Setup {
    fn default() -> Self {
        Setup { api: api_config(), disk_faults: false }
    }
}

/// A disk whose syncs succeed (without touching the device: tests need no durability) until
/// told to fail.
#[derive(Debug, Default)]
pub struct Disk {
    fail: AtomicBool,
}

impl FileSync for Disk {
    fn sync_data(&self, _file: &File) -> std::io::Result<()> {
        self.result()
    }
    fn sync_dir(&self, _dir: &File) -> std::io::Result<()> {
        self.result()
    }
}

impl Disk {
    fn result(&self) -> std::io::Result<()> {
        if self.fail.load(Ordering::SeqCst) {
            Err(std::io::Error::other("injected fdatasync failure"))
        } else {
            Ok(())
        }
    }
}

/// Three real nodes over an in-memory network, and n1's API.
pub struct TestCluster {
    /// The network: crash, isolate, partition, heal.
    pub net: InMemoryNetwork,
    /// n1, n2, n3 (see [`IDS`]).
    pub nodes: Vec<TestNode>,
    /// n1's API router (clone it freely: every clone serves the same node).
    pub app: Router,
    /// The API settings of the routers.
    pub api: ApiConfig,
    disks: Vec<Arc<Disk>>,
    _dirs: Vec<tempfile::TempDir>,
    _shutdown: watch::Sender<bool>,
}

impl TestCluster {
    /// The default cluster (see [`Setup::default`]).
    pub async fn start() -> TestCluster {
        TestCluster::with(Setup::default()).await
    }

    /// A cluster whose routers use `api`.
    pub async fn with_api(api: ApiConfig) -> TestCluster {
        TestCluster::with(Setup { api, ..Setup::default() }).await
    }

    /// Starts the three nodes: engines, servers of the in-memory network, handoff tasks.
    pub async fn with(setup: Setup) -> TestCluster {
        let net = InMemoryNetwork::new(7);
        net.set_timeout(REQUEST_TIMEOUT);
        let members: Vec<NodeId> = IDS.iter().map(|i| NodeId::new(*i).unwrap()).collect();
        // Everyone is registered before any node is built, so every view starts with all up.
        let registered: Vec<_> = IDS.iter().map(|id| net.register(id)).collect();
        let (shutdown_tx, shutdown_rx) = watch::channel(false);
        let (mut nodes, mut dirs, mut disks) = (Vec::new(), Vec::new(), Vec::new());
        for (id, (transport, inbound)) in IDS.iter().zip(registered) {
            let dir = tempfile::tempdir().unwrap();
            let disk = Arc::new(Disk::default());
            let sync = if setup.disk_faults { SyncPolicy::Always } else { SyncPolicy::Never };
            let options = Options { sync, file_sync: disk.clone(), ..Options::default() };
            let engine = Engine::open(dir.path(), options).unwrap();
            let mut config = cairn_replication::node::Config::new(
                NodeId::new(*id).unwrap(),
                members.clone(),
                64,
                3,
                2,
                2,
            );
            config.request_timeout_ms = REQUEST_TIMEOUT.as_millis() as u64;
            let parts = Parts {
                config,
                actor: Actor::new(NodeId::new(*id).unwrap(), 1),
                store: Store::new(Arc::new(engine), 64).unwrap(),
                transport,
                view: net.view(id).unwrap(),
                events: net.events(id).unwrap(),
                inbound,
                chunks: Default::default(),
            };
            let node = Node::start(parts, shutdown_rx.clone()).unwrap();
            nodes.push(node);
            dirs.push(dir);
            disks.push(disk);
        }
        let app = cairn_api::router(
            Arc::new(NodeBackend { node: Arc::clone(&nodes[0]) }),
            setup.api.clone(),
        );
        TestCluster { net, nodes, app, api: setup.api, disks, _dirs: dirs, _shutdown: shutdown_tx }
    }

    fn index(id: &str) -> usize {
        IDS.iter().position(|i| *i == id).unwrap_or_else(|| panic!("no node {id}"))
    }

    /// The node `id`.
    pub fn node(&self, id: &str) -> &TestNode {
        &self.nodes[Self::index(id)]
    }

    /// The API router of node `id` (n1's is [`TestCluster::app`]).
    pub fn router(&self, id: &str) -> Router {
        cairn_api::router(
            Arc::new(NodeBackend { node: Arc::clone(self.node(id)) }),
            self.api.clone(),
        )
    }

    /// Crashes `id`: messages to it fail at once and every other node sees it down.
    pub fn crash(&self, id: &str) {
        self.net.crash(id);
    }

    /// Brings a crashed node back with its data: serves the network again.
    pub fn restart(&self, id: &str) {
        let (_transport, inbound) = self.net.register(id);
        tokio::spawn(server::serve(Arc::clone(self.node(id)), inbound));
    }

    /// From now on every sync of `id`'s engine fails (needs [`Setup::disk_faults`]).
    pub fn fail_disk(&self, id: &str) {
        self.disks[Self::index(id)].fail.store(true, Ordering::SeqCst);
    }

    /// Keys in `id`'s object keyspace (live and deleted objects alike: a delete is a stored
    /// tombstone).
    pub fn object_keys(&self, id: &str) -> u64 {
        self.node(id).store.engine().stats().keys_in(Keyspace::Object)
    }

    /// Keys of every keyspace (objects, buckets, hints) of every node.
    pub fn all_keys(&self) -> u64 {
        self.nodes.iter().map(|n| n.store.engine().stats().keys.iter().sum::<u64>()).sum()
    }

    /// The storage key of `name` in the live bucket `bucket` (as n1 knows it).
    pub async fn key(&self, bucket: &str, name: &str) -> ObjectKey {
        let info = self.node("n1").bucket(bucket).unwrap();
        ObjectKey { bucket: bucket.into(), incarnation: info.incarnation, name: name.into() }
    }

    /// What `id` stores for `name` in `bucket` (its own replica, hints not included); `None`
    /// when it stores nothing.
    pub async fn stored(&self, id: &str, bucket: &str, name: &str) -> Option<SiblingSet> {
        let key = self.key(bucket, name).await;
        self.node(id).store.replica(&key).unwrap()
    }

    /// True when no node stores anything for `name` in `bucket`.
    pub async fn stored_nowhere(&self, bucket: &str, name: &str) -> bool {
        for id in IDS {
            if self.stored(id, bucket, name).await.is_some() {
                return false;
            }
        }
        true
    }

    /// The live bodies `id` stores for `name` (tombstones left out), sorted.
    pub async fn live_bodies(&self, id: &str, bucket: &str, name: &str) -> Vec<Vec<u8>> {
        let set = self.stored(id, bucket, name).await.unwrap_or_default();
        let mut out: Vec<Vec<u8>> = set
            .values()
            .filter_map(|s| match &s.body {
                Body::Bytes(b) => Some(b.clone()),
                Body::Tombstone | Body::Chunked(_) => None,
            })
            .collect();
        out.sort();
        out
    }

    /// Waits until every running node's replica of `name` is the same (a write is answered at
    /// W = 2 and a short grace: the third replica may still be storing it).
    pub async fn replicated(&self, bucket: &str, name: &str) {
        eventually(&format!("the replicas of {bucket}/{name} agree"), async || {
            let mut first = None;
            for id in IDS.iter().filter(|id| self.running(id)) {
                let set = self.stored(id, bucket, name).await;
                match &first {
                    None => first = Some(set),
                    Some(f) if *f != set => return false,
                    Some(_) => {}
                }
            }
            true
        })
        .await;
    }

    /// Waits until every running node holds as many objects as the others (with N = 3 of 3
    /// members every object is on every node, so the writes answered so far have reached every
    /// running replica).
    pub async fn settled(&self) {
        eventually("every running node holds the same number of objects", async || {
            let counts: Vec<u64> =
                IDS.iter().filter(|id| self.running(id)).map(|id| self.object_keys(id)).collect();
            counts.windows(2).all(|w| w[0] == w[1])
        })
        .await;
    }

    /// Whether `id` runs and n1 reaches it (n1 itself always runs).
    fn running(&self, id: &str) -> bool {
        id == "n1" || self.net.reachable("n1", id)
    }
}

/// Polls `f` every 20 ms for at most 20 s (a bound for loaded machines, not a timing
/// assertion).
pub async fn eventually(what: &str, mut f: impl AsyncFnMut() -> bool) {
    for _ in 0..1000 {
        if f().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("timed out waiting until {what}");
}
