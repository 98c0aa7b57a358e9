//! `cairn node`: run one node.
//!
//! Settings come from three layers, each overriding the one before: the TOML file given with
//! `--config`, `CAIRN_*` environment variables, and command-line flags (clap reads flags and
//! environment together; the file fills what neither gave). A bad or missing setting is one line
//! naming it, and exit code 2.
//!
//! Start-up: data directory and actor epoch, engine (recovery), membership (libp2p), the node
//! (hint book from the engine), the inbound request server, hinted handoff, then the HTTP API.
//! SIGTERM or Ctrl-C: stop accepting HTTP requests and finish those in flight; wait (at most
//! `--shutdown-timeout`) for the work they left running — hints for replicas that missed a write,
//! read repairs — while the data plane still runs; stop handoff and membership, sync the engine,
//! mark the shutdown clean, exit 0.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, Result};
use cairn_api::ApiConfig;
use cairn_engine::{CompactionOptions, Engine, SyncPolicy};
use cairn_membership::{ClusterSecret, Membership, MembershipConfig};
use cairn_node::node::backend::NodeBackend;
use cairn_node::node::store::Store;
use cairn_node::node::{Node, Parts, identity};
use cairn_replication::{Actor, NodeId};
use libp2p::Multiaddr;
use serde::Deserialize;

/// Flags of `cairn node`. Every flag can also be set by its `CAIRN_*` variable or in the file.
#[derive(clap::Args, Debug, Default)]
pub struct Args {
    /// TOML file with any of the settings below (keys as the long flag names, with `_` for `-`).
    #[arg(long, env = "CAIRN_CONFIG")]
    pub config: Option<PathBuf>,
    /// This node's id, e.g. `n1` (1-64 of A-Z a-z 0-9 _ -). Unique in the cluster.
    #[arg(long, env = "CAIRN_ID")]
    pub id: Option<String>,
    /// Data directory (engine segments, node key, actor epoch). Created if missing.
    #[arg(long, env = "CAIRN_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Listen address of the REST API [default: 127.0.0.1:8080].
    #[arg(long, env = "CAIRN_HTTP")]
    pub http: Option<SocketAddr>,
    /// libp2p listen multiaddr for node-to-node traffic [default: /ip4/127.0.0.1/tcp/7000].
    #[arg(long, env = "CAIRN_P2P")]
    pub p2p: Option<String>,
    /// Listen address of the data plane (replication requests between nodes: TCP, Noise-encrypted,
    /// the cluster secret required) [default: the --p2p IP and a free port, announced by gossip;
    /// set a fixed port where a firewall must let it through].
    #[arg(long, env = "CAIRN_DATA")]
    pub data: Option<SocketAddr>,
    /// Multiaddr of another node to dial (repeatable; comma-separated in the environment).
    #[arg(long, env = "CAIRN_BOOTSTRAP", value_delimiter = ',')]
    pub bootstrap: Vec<String>,
    /// The members of a brand-new cluster: comma-separated node ids, the same list on every
    /// founding node (it seeds version 1 of the layout; once a layout is stored in the data
    /// directory, it is ignored). Leave it out on a node that joins an existing cluster: it
    /// learns the layout from its peers, serves the API as a gateway, and becomes a member
    /// when an operator adds it (`cairn cluster add ID`).
    #[arg(long, env = "CAIRN_MEMBERS", value_delimiter = ',')]
    pub members: Vec<String>,
    /// Pace of background transfers for the whole node, in MB/s (0: unlimited): partition
    /// handoff while members are added or removed, and anti-entropy repairs [default: 64].
    #[arg(long, env = "CAIRN_HANDOFF_RATE")]
    pub handoff_rate: Option<f64>,
    /// Active anti-entropy: every partition this node owns is compared with another owner's
    /// copy once per this interval, and differing keys are merged both ways, e.g. `60s`, `5m`;
    /// `0` turns it off [default: 60s].
    #[arg(long, env = "CAIRN_ANTI_ENTROPY_INTERVAL")]
    pub anti_entropy_interval: Option<String>,
    /// How old a delete must be before its tombstone may be collected (once every node has
    /// confirmed it holds the delete and no hint for the key), and a deleted bucket's objects
    /// reclaimed, e.g. `1h`, `10m`, `5s`; `off` never collects [default: 1h].
    #[arg(long, env = "CAIRN_TOMBSTONE_GRACE")]
    pub tombstone_grace: Option<String>,
    /// Memory this node may hold in large-object buffers (uploads and downloads of objects
    /// above --inline-max, a few 1 MiB chunks each), in MiB; past it new large requests get 503
    /// `SlowDown` [default: 256].
    #[arg(long, env = "CAIRN_MAX_INFLIGHT_MIB")]
    pub max_inflight_mib: Option<u64>,
    /// How long a large object's chunks must stay unreferenced (superseded, deleted, or left by
    /// an upload that never finished) and unused before they are deleted, e.g. `10m`, `30s`
    /// [default: 10m].
    #[arg(long, env = "CAIRN_CHUNK_GRACE")]
    pub chunk_grace: Option<String>,
    /// Largest object stored inline in its version, in bytes (at most 1048576); larger ones are
    /// streamed and stored in 1 MiB chunks [default: 262144].
    #[arg(long, env = "CAIRN_INLINE_MAX")]
    pub inline_max: Option<u64>,
    /// File holding the cluster secret (64 hex chars, a swarm.key, or a passphrase of 16+ chars).
    #[arg(long, env = "CAIRN_SECRET_FILE")]
    pub secret_file: Option<PathBuf>,
    /// The cluster secret itself (prefer --secret-file; visible in the process environment).
    #[arg(long = "cluster-secret", env = "CAIRN_CLUSTER_SECRET", hide_env_values = true)]
    pub cluster_secret: Option<String>,
    /// Replicas per object, N [default: 3].
    #[arg(short = 'n', long, env = "CAIRN_REPLICAS")]
    pub replicas: Option<usize>,
    /// Read quorum, R [default: 2].
    #[arg(short = 'r', long, env = "CAIRN_READ_QUORUM")]
    pub read_quorum: Option<usize>,
    /// Write quorum, W [default: 2].
    #[arg(short = 'w', long, env = "CAIRN_WRITE_QUORUM")]
    pub write_quorum: Option<usize>,
    /// When writes reach the disk: always (fdatasync before acknowledging, group commit),
    /// interval:MS, or never [default: always].
    #[arg(long, env = "CAIRN_SYNC")]
    pub sync: Option<String>,
    /// Largest object accepted, in bytes [default: 5368709120 (5 GiB)]. Objects above --inline-max are
    /// streamed and stored in chunks, so a large limit costs no memory.
    #[arg(long, env = "CAIRN_MAX_OBJECT_SIZE")]
    pub max_object_size: Option<u64>,
    /// Ring partitions, a power of two, the same on every node [default: 256].
    #[arg(long, env = "CAIRN_PARTITIONS")]
    pub partitions: Option<u32>,
    /// Bound on one replicated request, in milliseconds [default: 3000].
    #[arg(long, env = "CAIRN_REQUEST_TIMEOUT_MS")]
    pub request_timeout_ms: Option<u64>,
    /// Heartbeat interval of the failure detector, in milliseconds [default: 1000].
    #[arg(long, env = "CAIRN_HEARTBEAT_MS")]
    pub heartbeat_ms: Option<u64>,
    /// Phi at which a member is declared down [default: 8].
    #[arg(long, env = "CAIRN_PHI_THRESHOLD")]
    pub phi_threshold: Option<f64>,
    /// Discover peers by mDNS on the LAN (multicast on every interface) [default: false].
    #[arg(long, env = "CAIRN_MDNS")]
    pub mdns: Option<bool>,
    /// On SIGTERM or Ctrl-C, the longest wait for work requests left running (hints for replicas
    /// that missed a write, read repairs) before the final sync, e.g. `10s`, `500ms`
    /// [default: 10s].
    #[arg(long, env = "CAIRN_SHUTDOWN_TIMEOUT")]
    pub shutdown_timeout: Option<String>,
}

/// The same settings as read from the TOML file.
#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields)]
struct FileSettings {
    id: Option<String>,
    data_dir: Option<PathBuf>,
    http: Option<SocketAddr>,
    p2p: Option<String>,
    data: Option<SocketAddr>,
    bootstrap: Option<Vec<String>>,
    members: Option<Vec<String>>,
    secret_file: Option<PathBuf>,
    cluster_secret: Option<String>,
    replicas: Option<usize>,
    read_quorum: Option<usize>,
    write_quorum: Option<usize>,
    sync: Option<String>,
    max_object_size: Option<u64>,
    partitions: Option<u32>,
    request_timeout_ms: Option<u64>,
    heartbeat_ms: Option<u64>,
    phi_threshold: Option<f64>,
    mdns: Option<bool>,
    shutdown_timeout: Option<String>,
    handoff_rate: Option<f64>,
    anti_entropy_interval: Option<String>,
    tombstone_grace: Option<String>,
    max_inflight_mib: Option<u64>,
    chunk_grace: Option<String>,
    inline_max: Option<u64>,
}

/// A setting that is missing or wrong: printed as one line, exit code 2.
#[derive(Debug)]
pub struct ConfigError(pub String);

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ConfigError {}

fn bad(msg: impl Into<String>) -> anyhow::Error {
    ConfigError(msg.into()).into()
}

/// The validated configuration of a node.
#[derive(Debug)]
pub struct NodeConfig {
    id: NodeId,
    data_dir: PathBuf,
    http: SocketAddr,
    p2p: Multiaddr,
    data: Option<SocketAddr>,
    bootstrap: Vec<Multiaddr>,
    members: Vec<NodeId>,
    secret: ClusterSecret,
    n: usize,
    r: usize,
    w: usize,
    sync: SyncPolicy,
    max_object_size: u64,
    partitions: u32,
    request_timeout: Duration,
    heartbeat: Duration,
    phi_threshold: f64,
    mdns: bool,
    shutdown_timeout: Duration,
    /// Partition handoff pace, bytes per second (0: unlimited).
    handoff_rate_bytes: u64,
    /// Anti-entropy interval (zero: off).
    anti_entropy_interval: Duration,
    /// Tombstone grace (`None`: collection off).
    tombstone_grace: Option<Duration>,
    /// Large objects: memory budget and chunk grace.
    chunks: cairn_node::node::chunks::ChunkSettings,
    /// Largest object stored inline.
    inline_max: u64,
}

/// The engine's directory inside the data directory (it also holds the cluster state file).
const ENGINE_DIR: &str = "engine";

/// The engine directory an operator command works on, given `--data-dir`: the node's data
/// directory (its `engine/` inside), or an engine directory itself. Errors when `dir` is neither
/// (so a mistyped path never gets an empty engine created in it).
pub fn engine_dir_of(dir: &std::path::Path) -> Result<PathBuf> {
    if !dir.is_dir() {
        anyhow::bail!("data directory {} does not exist", dir.display());
    }
    let inner = dir.join(ENGINE_DIR);
    if inner.is_dir() {
        return Ok(inner);
    }
    let has_segments = std::fs::read_dir(dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .flatten()
        .any(|e| e.path().extension().is_some_and(|x| x == "seg"));
    if has_segments {
        return Ok(dir.to_path_buf());
    }
    anyhow::bail!(
        "{} holds no Cairn data (neither a node's data directory with engine/ inside nor an \
         engine directory)",
        dir.display()
    )
}

fn pick<T>(flag: Option<T>, file: Option<T>) -> Option<T> {
    flag.or(file)
}

impl NodeConfig {
    /// Layers file, environment and flags, and validates every setting.
    pub fn resolve(args: Args) -> Result<NodeConfig> {
        let file = match &args.config {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .map_err(|e| bad(format!("--config {}: {e}", path.display())))?;
                toml::from_str::<FileSettings>(&text)
                    .map_err(|e| bad(format!("--config {}: {}", path.display(), e.message())))?
            }
            None => FileSettings::default(),
        };
        let id = pick(args.id, file.id).ok_or_else(|| bad("--id is required (e.g. --id n1)"))?;
        let id = NodeId::new(id).map_err(|e| bad(format!("--id: {e}")))?;
        let data_dir =
            pick(args.data_dir, file.data_dir).ok_or_else(|| bad("--data-dir is required"))?;
        let http =
            pick(args.http, file.http).unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 8080)));
        let p2p = pick(args.p2p, file.p2p).unwrap_or_else(|| "/ip4/127.0.0.1/tcp/7000".into());
        let p2p: Multiaddr = p2p.parse().map_err(|e| bad(format!("--p2p {p2p:?}: {e}")))?;
        let data = pick(args.data, file.data);
        let bootstrap_raw = if args.bootstrap.is_empty() {
            file.bootstrap.unwrap_or_default()
        } else {
            args.bootstrap
        };
        let mut bootstrap = Vec::new();
        for b in bootstrap_raw.iter().map(|s| s.trim()).filter(|s| !s.is_empty()) {
            bootstrap
                .push(b.parse::<Multiaddr>().map_err(|e| bad(format!("--bootstrap {b:?}: {e}")))?);
        }
        let members_raw =
            if args.members.is_empty() { file.members.unwrap_or_default() } else { args.members };
        let mut members = Vec::new();
        for m in members_raw.iter().map(|s| s.trim()).filter(|s| !s.is_empty()) {
            let m = NodeId::new(m).map_err(|e| bad(format!("--members: {e}")))?;
            if members.contains(&m) {
                return Err(bad(format!("--members lists {m} twice")));
            }
            members.push(m);
        }
        if !members.is_empty() && !members.contains(&id) {
            return Err(bad(format!(
                "--members must include this node's --id {id} (leave --members out on a node \
                 that joins an existing cluster)"
            )));
        }
        let secret_text = match (
            pick(args.cluster_secret, file.cluster_secret),
            pick(args.secret_file, file.secret_file),
        ) {
            (Some(s), _) => s,
            (None, Some(path)) => std::fs::read_to_string(&path)
                .map_err(|e| bad(format!("--secret-file {}: {e}", path.display())))?,
            (None, None) => {
                return Err(bad(
                    "a cluster secret is required: --secret-file FILE or CAIRN_CLUSTER_SECRET",
                ));
            }
        };
        let secret =
            ClusterSecret::parse(&secret_text).map_err(|e| bad(format!("cluster secret: {e}")))?;
        let n = pick(args.replicas, file.replicas).unwrap_or(3);
        let r = pick(args.read_quorum, file.read_quorum).unwrap_or(2);
        let w = pick(args.write_quorum, file.write_quorum).unwrap_or(2);
        if n == 0 || (!members.is_empty() && n > members.len()) {
            return Err(bad(format!(
                "--replicas {n}: must be between 1 and the number of members ({})",
                members.len()
            )));
        }
        if r == 0 || r > n {
            return Err(bad(format!("--read-quorum {r}: must be between 1 and --replicas ({n})")));
        }
        if w == 0 || w > n {
            return Err(bad(format!("--write-quorum {w}: must be between 1 and --replicas ({n})")));
        }
        let sync_raw = pick(args.sync, file.sync).unwrap_or_else(|| "always".into());
        let sync: SyncPolicy = sync_raw
            .parse()
            .map_err(|e| bad(format!("--sync {sync_raw:?}: {e} (always | interval:MS | never)")))?;
        let max_object_size = pick(args.max_object_size, file.max_object_size)
            .unwrap_or(cairn_api::DEFAULT_MAX_OBJECT_SIZE);
        if max_object_size == 0 || max_object_size > MAX_OBJECT_SIZE_LIMIT {
            return Err(bad(format!(
                "--max-object-size {max_object_size}: must be between 1 and {MAX_OBJECT_SIZE_LIMIT}"
            )));
        }
        let partitions = pick(args.partitions, file.partitions).unwrap_or(256);
        if !partitions.is_power_of_two() || partitions < (n as u32) {
            return Err(bad(format!(
                "--partitions {partitions}: must be a power of two of at least --replicas"
            )));
        }
        let request_timeout = Duration::from_millis(
            pick(args.request_timeout_ms, file.request_timeout_ms)
                .unwrap_or(cairn_node::node::DEFAULT_REQUEST_TIMEOUT.as_millis() as u64),
        );
        if request_timeout < Duration::from_millis(10) {
            return Err(bad("--request-timeout-ms must be at least 10"));
        }
        let heartbeat =
            Duration::from_millis(pick(args.heartbeat_ms, file.heartbeat_ms).unwrap_or(1000));
        if heartbeat < Duration::from_millis(10) {
            return Err(bad("--heartbeat-ms must be at least 10"));
        }
        let phi_threshold = pick(args.phi_threshold, file.phi_threshold).unwrap_or(8.0);
        if !(phi_threshold.is_finite() && phi_threshold > 0.0) {
            return Err(bad("--phi-threshold must be a positive number"));
        }
        let mdns = pick(args.mdns, file.mdns).unwrap_or(false);
        let stored = data_dir.join(ENGINE_DIR).join(cairn_node::node::store::CLUSTER_STATE_FILE);
        if members.is_empty() && bootstrap.is_empty() && !mdns && !stored.exists() {
            return Err(bad(
                "--members is required to found a new cluster (the members' node ids, e.g. \
                 --members n1,n2,n3,n4); a node joining an existing cluster needs --bootstrap \
                 (an existing node's address) instead",
            ));
        }
        let shutdown_timeout = match pick(args.shutdown_timeout, file.shutdown_timeout) {
            Some(raw) => crate::cmd::bench::parse_duration(&raw)
                .map_err(|e| bad(format!("--shutdown-timeout: {e}")))?,
            None => cairn_node::node::DEFAULT_SHUTDOWN_TIMEOUT,
        };
        let handoff_rate = pick(args.handoff_rate, file.handoff_rate).unwrap_or(64.0);
        if !(handoff_rate.is_finite() && handoff_rate >= 0.0) {
            return Err(bad("--handoff-rate must be a number of MB/s, 0 for unlimited"));
        }
        let anti_entropy_interval =
            match pick(args.anti_entropy_interval, file.anti_entropy_interval) {
                Some(raw) => crate::cmd::bench::parse_duration(&raw)
                    .map_err(|e| bad(format!("--anti-entropy-interval: {e}")))?,
                None => {
                    Duration::from_millis(cairn_replication::node::DEFAULT_ANTI_ENTROPY_INTERVAL_MS)
                }
            };
        let tombstone_grace = match pick(args.tombstone_grace, file.tombstone_grace) {
            Some(raw) if raw.trim() == "off" => None,
            Some(raw) => Some(
                crate::cmd::bench::parse_duration(&raw)
                    .map_err(|e| bad(format!("--tombstone-grace: {e}, or off")))?,
            ),
            None => {
                Some(Duration::from_millis(cairn_replication::node::DEFAULT_TOMBSTONE_GRACE_MS))
            }
        };
        let max_inflight_mib = pick(args.max_inflight_mib, file.max_inflight_mib)
            .unwrap_or(cairn_node::node::chunks::DEFAULT_MAX_INFLIGHT_BYTES >> 20);
        if !(8..=1 << 20).contains(&max_inflight_mib) {
            return Err(bad("--max-inflight-mib must be between 8 and 1048576"));
        }
        let chunk_grace = match pick(args.chunk_grace, file.chunk_grace) {
            Some(raw) => crate::cmd::bench::parse_duration(&raw)
                .map_err(|e| bad(format!("--chunk-grace: {e}")))?,
            None => cairn_node::node::chunks::DEFAULT_CHUNK_GRACE,
        };
        if chunk_grace < Duration::from_secs(1) {
            return Err(bad("--chunk-grace must be at least 1s"));
        }
        let chunks = cairn_node::node::chunks::ChunkSettings {
            max_inflight_bytes: max_inflight_mib << 20,
            grace: chunk_grace,
        };
        let inline_max =
            pick(args.inline_max, file.inline_max).unwrap_or(cairn_api::DEFAULT_INLINE_MAX);
        if inline_max > cairn_api::MAX_INLINE_MAX {
            return Err(bad(format!(
                "--inline-max {inline_max}: must be at most {}",
                cairn_api::MAX_INLINE_MAX
            )));
        }
        Ok(NodeConfig {
            inline_max,
            chunks,
            handoff_rate_bytes: (handoff_rate * 1e6) as u64,
            anti_entropy_interval,
            tombstone_grace,
            id,
            data_dir,
            http,
            p2p,
            data,
            bootstrap,
            members,
            secret,
            n,
            r,
            w,
            sync,
            max_object_size,
            partitions,
            request_timeout,
            heartbeat,
            phi_threshold,
            mdns,
            shutdown_timeout,
        })
    }
}

/// Runs the command.
pub fn run(args: Args) -> Result<ExitCode> {
    let config = match NodeConfig::resolve(args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e:#}");
            return Ok(ExitCode::from(2));
        }
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("cairn")
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(serve(config))?;
    Ok(ExitCode::SUCCESS)
}

async fn serve(cfg: NodeConfig) -> Result<()> {
    std::fs::create_dir_all(&cfg.data_dir)
        .with_context(|| format!("creating data directory {}", cfg.data_dir.display()))?;
    let epoch = identity::start_epoch(&cfg.data_dir)?;
    let actor = Actor::new(cfg.id.clone(), epoch);

    let engine_dir = cfg.data_dir.join(ENGINE_DIR);
    let engine = open_engine(&engine_dir, &cfg).await?;
    let stats = engine.stats();
    tracing::info!(
        keys = stats.keys.iter().sum::<u64>(),
        bytes = stats.total_bytes,
        corrupt_skipped = stats.corrupt_records_skipped,
        "storage opened"
    );

    let listener = tokio::net::TcpListener::bind(cfg.http)
        .await
        .with_context(|| format!("binding the HTTP address {}", cfg.http))?;

    let mut mcfg =
        MembershipConfig::new(cfg.id.to_string(), &cfg.data_dir, cfg.p2p.clone(), cfg.secret);
    mcfg.bootstrap = cfg.bootstrap.clone();
    mcfg.data_listen = cfg.data;
    mcfg.http_addr = cfg.http.to_string();
    mcfg.heartbeat_interval = cfg.heartbeat;
    mcfg.phi_threshold = cfg.phi_threshold;
    mcfg.mdns = cfg.mdns;
    mcfg.request_timeout = cfg.request_timeout;
    // Sibling sets travel whole (their inline values are at most 1 MiB; larger objects are
    // chunks of 1 MiB): the largest message is the largest stored set plus framing.
    mcfg.max_message_size = engine_max_value(cfg.max_object_size) as usize + (1 << 20);
    let (membership, inbound) = Membership::start(mcfg).await.context("starting membership")?;

    let mut config = cairn_replication::node::Config::new(
        cfg.id.clone(),
        cfg.members.clone(),
        cfg.partitions,
        cfg.n,
        cfg.r,
        cfg.w,
    );
    config.request_timeout_ms = cfg.request_timeout.as_millis() as u64;
    config.handoff_rate_bytes = cfg.handoff_rate_bytes;
    config.anti_entropy_interval_ms = cfg.anti_entropy_interval.as_millis() as u64;
    config.tombstone_grace_ms = cfg.tombstone_grace.map(|d| d.as_millis() as u64);
    let engine_for_trees = Arc::clone(&engine);
    let partitions = cfg.partitions;
    let store = tokio::task::spawn_blocking(move || Store::new(engine_for_trees, partitions))
        .await
        .context("building the anti-entropy trees")??;
    let t = store.tree_stats();
    tracing::info!(
        keys = t.built_keys,
        partitions = t.partitions,
        memory_bytes = t.memory_bytes,
        took_ms = t.build_ms,
        "anti-entropy trees built"
    );
    let (shutdown_tx, shutdown_rx) = tokio::sync::watch::channel(false);
    let parts = Parts {
        config,
        actor,
        store,
        transport: membership.clone(),
        view: membership.view(),
        events: membership.events(),
        inbound,
        chunks: cfg.chunks,
    };
    let node = Node::start(parts, shutdown_rx).context("assembling the node")?;

    let api = cairn_api::router(
        Arc::new(NodeBackend { node: Arc::clone(&node) }),
        ApiConfig {
            inline_max: cfg.inline_max.min(cfg.max_object_size),
            ..ApiConfig::new(cfg.max_object_size, cfg.n)
        },
    );
    let p2p_addrs: Vec<String> = membership
        .listen_addrs()
        .iter()
        .map(|a| format!("{a}/p2p/{}", membership.peer_id()))
        .collect();
    tracing::info!(
        node = %cfg.id,
        actor = %node.actor,
        http = %cfg.http,
        p2p = ?p2p_addrs,
        data_port = membership.data_port(),
        members = ?cfg.members.iter().map(|m| m.as_str()).collect::<Vec<_>>(),
        n = cfg.n, r = cfg.r, w = cfg.w,
        sync = ?cfg.sync,
        "cairn node ready"
    );
    axum::serve(listener, api)
        .with_graceful_shutdown(shutdown_signal())
        .await
        .context("serving HTTP")?;

    // Work that answered requests left running (hints for replicas that missed a write, read
    // repairs) still needs the data plane: it finishes before membership stops.
    let running = node.background();
    if running > 0 {
        tracing::info!(
            tasks = running,
            timeout = ?cfg.shutdown_timeout,
            "shutting down: HTTP closed, finishing hints and read repairs in flight"
        );
    }
    let abandoned = node.drain(cfg.shutdown_timeout).await;
    if abandoned > 0 {
        tracing::warn!(
            tasks = abandoned,
            "shutdown timeout: abandoning background work (replicas catch up by read repair)"
        );
    }
    tracing::info!("shutting down: stopping background work");
    let _ = shutdown_tx.send(true);
    membership.shutdown().await;
    let engine2 = Arc::clone(&engine);
    tokio::task::spawn_blocking(move || engine2.sync()).await.context("final sync task")??;
    drop(node);
    identity::mark_clean(&cfg.data_dir)?;
    tracing::info!("clean shutdown");
    Ok(())
}

async fn open_engine(dir: &Path, cfg: &NodeConfig) -> Result<Arc<Engine>> {
    let opts = cairn_engine::Options {
        sync: cfg.sync,
        max_value_size: engine_max_value(cfg.max_object_size),
        background_compaction: Some(CompactionOptions::default()),
        ..cairn_engine::Options::default()
    };
    let dir = dir.to_owned();
    let engine = tokio::task::spawn_blocking(move || Engine::open(&dir, opts))
        .await
        .context("engine open task")?
        .context("opening the storage engine")?;
    Ok(Arc::new(engine))
}

/// Largest object `--max-object-size` accepts (5 TiB, S3's limit).
const MAX_OBJECT_SIZE_LIMIT: u64 = 5 << 40;

/// Largest stored sibling set: room for four concurrent versions of the largest inline object
/// plus metadata (larger objects are manifests of a few dozen bytes; their chunks are 1 MiB). A
/// write that would store more is refused (409) and the client resolves the siblings.
fn engine_max_value(max_object_size: u64) -> u64 {
    max_object_size
        .min(cairn_api::MAX_INLINE_MAX)
        .max(u64::from(cairn_node::node::chunks::CHUNK_SIZE))
        .saturating_mul(4)
        .saturating_add(1 << 20)
        .min(cairn_engine::MAX_VALUE_SIZE_LIMIT)
}

/// Resolves on SIGTERM or Ctrl-C (SIGINT). Shared with `cairn bench-target`.
pub(crate) async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::error!(error = %e, "cannot listen for Ctrl-C");
            std::future::pending::<()>().await;
        }
    };
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    tokio::select! {
        () = ctrl_c => tracing::info!("Ctrl-C received"),
        () = term => tracing::info!("SIGTERM received"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args() -> Args {
        Args::default()
    }

    #[test]
    fn the_file_fills_what_flags_do_not_give_and_flags_win() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("node.toml");
        std::fs::write(
            &file,
            r#"
id = "n2"
data_dir = "/var/lib/cairn"
members = ["n1", "n2", "n3", "n4"]
cluster_secret = "a passphrase that is long enough"
http = "0.0.0.0:9000"
sync = "interval:50"
write_quorum = 3
"#,
        )
        .unwrap();
        let mut a = args();
        a.config = Some(file);
        a.write_quorum = Some(1);
        let c = NodeConfig::resolve(a).unwrap();
        assert_eq!(c.id.as_str(), "n2");
        assert_eq!(c.members.len(), 4);
        assert_eq!(c.http.to_string(), "0.0.0.0:9000");
        assert_eq!(c.sync, SyncPolicy::Interval(Duration::from_millis(50)));
        assert_eq!(c.w, 1, "the flag wins over the file");
        assert_eq!((c.n, c.r), (3, 2), "defaults");
    }

    #[test]
    fn an_unknown_key_in_the_file_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("node.toml");
        std::fs::write(&file, "id = \"n1\"\nreplicaz = 3\n").unwrap();
        let mut a = args();
        a.config = Some(file);
        let err = NodeConfig::resolve(a).unwrap_err().to_string();
        assert!(err.contains("replicaz"), "{err}");
    }
}
