//! Configuration of a member: identity, addresses, cluster secret, timing and limits.

use std::path::{Path, PathBuf};
use std::time::Duration;

use libp2p::Multiaddr;
use libp2p::identity::Keypair;
use sha2::Digest;

use crate::error::{Error, Result};

/// Default interval between two heartbeats of a node.
pub const DEFAULT_HEARTBEAT_INTERVAL: Duration = Duration::from_secs(1);
/// Default phi at which a member is declared down (Cassandra's and Akka's default).
pub const DEFAULT_PHI_THRESHOLD: f64 = 8.0;
/// Default bound on one request/response exchange, connection set-up included.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Default maximum size of one request or response payload: big enough for an inline object of
/// the engine's default maximum size plus its metadata.
pub const DEFAULT_MAX_MESSAGE_SIZE: usize = 64 * 1024 * 1024;
/// File in the data directory that holds the node's libp2p keypair (protobuf encoding, mode 0600).
pub const KEYPAIR_FILE: &str = "node.key";
/// Shortest accepted passphrase for the cluster secret.
pub const MIN_PASSPHRASE_LEN: usize = 16;

/// The 32-byte cluster pre-shared key (libp2p `pnet`). Nodes with different keys cannot even
/// complete a handshake.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct ClusterSecret([u8; 32]);

impl std::fmt::Debug for ClusterSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the key; the pnet fingerprint identifies it without revealing it.
        write!(f, "ClusterSecret(fingerprint {})", self.fingerprint())
    }
}

impl ClusterSecret {
    /// Wraps raw key bytes.
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        ClusterSecret(bytes)
    }

    /// Parses the cluster secret as given by an operator (config file or environment):
    ///
    /// 1. exactly 64 hexadecimal characters: the key bytes themselves;
    /// 2. a libp2p/IPFS `swarm.key` file body (`/key/swarm/psk/1.0.0/`, `/base16/`, 64 hex);
    /// 3. anything else of at least [`MIN_PASSPHRASE_LEN`] characters: a passphrase, turned into
    ///    the key by SHA-256 over `"cairn-cluster-secret-v1\0" || passphrase`.
    ///
    /// Leading and trailing whitespace is ignored in all three forms.
    pub fn parse(text: &str) -> Result<Self> {
        let text = text.trim();
        if text.len() == 64 && text.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Ok(ClusterSecret(decode_hex(text)?));
        }
        if text.starts_with("/key/swarm/psk/") {
            let key: libp2p::pnet::PreSharedKey = text
                .parse()
                .map_err(|e| Error::Config(format!("bad swarm.key cluster secret: {e}")))?;
            // Round-trip through the documented key-file format to reach the bytes.
            let hex = key.to_key_file();
            let last = hex.lines().last().unwrap_or_default();
            return Ok(ClusterSecret(decode_hex(last.trim())?));
        }
        if text.chars().count() < MIN_PASSPHRASE_LEN {
            return Err(Error::Config(format!(
                "cluster secret must be 64 hex characters or a passphrase of at least \
                 {MIN_PASSPHRASE_LEN} characters"
            )));
        }
        let mut h = sha2::Sha256::new();
        h.update(b"cairn-cluster-secret-v1\0");
        h.update(text.as_bytes());
        Ok(ClusterSecret(h.finalize().into()))
    }

    /// The libp2p pre-shared key.
    pub fn psk(&self) -> libp2p::pnet::PreSharedKey {
        libp2p::pnet::PreSharedKey::new(self.0)
    }

    /// Public fingerprint of the key (safe to log: operators compare it between nodes).
    pub fn fingerprint(&self) -> String {
        self.psk().fingerprint().to_string()
    }

    /// The key bytes (for the data plane's Noise prologue; never logged or sent).
    pub(crate) fn key_bytes(&self) -> [u8; 32] {
        self.0
    }
}

fn decode_hex(text: &str) -> Result<[u8; 32]> {
    let bytes = text.as_bytes();
    if bytes.len() != 64 {
        return Err(Error::Config("hex cluster secret must be 64 characters".into()));
    }
    let mut out = [0u8; 32];
    for (i, pair) in bytes.chunks_exact(2).enumerate() {
        let s = std::str::from_utf8(pair).map_err(|e| Error::Config(e.to_string()))?;
        out[i] = u8::from_str_radix(s, 16)
            .map_err(|_| Error::Config("cluster secret has a non-hex character".into()))?;
    }
    Ok(out)
}

/// Everything [`crate::Membership::start`] needs.
#[derive(Debug, Clone)]
pub struct MembershipConfig {
    /// Operator-chosen node id (e.g. `n1`), unique in the cluster.
    pub node_id: String,
    /// Data directory; the keypair lives in `data_dir/node.key` (created with mode 0600).
    pub data_dir: PathBuf,
    /// Address to listen on, e.g. `/ip4/127.0.0.1/tcp/7000` (port 0 picks a free port).
    pub listen: Multiaddr,
    /// Where the data plane (replication requests, [`crate::wire`]) listens. `None`: the IP
    /// address of `listen` (127.0.0.1 if it has none) and a free port, which is announced in
    /// heartbeats. Set a fixed port where a firewall must let it through.
    pub data_listen: Option<std::net::SocketAddr>,
    /// Addresses of other members to dial at start and to redial, with backoff, while they are
    /// not connected.
    pub bootstrap: Vec<Multiaddr>,
    /// The cluster secret (see [`ClusterSecret::parse`]).
    pub secret: ClusterSecret,
    /// The HTTP address this node announces to the others.
    pub http_addr: String,
    /// Software version announced to the others.
    pub version: String,
    /// Interval between heartbeats.
    pub heartbeat_interval: Duration,
    /// Phi at which a member is declared down.
    pub phi_threshold: f64,
    /// Enable mDNS discovery (LAN only; off by default, never on the host's interfaces in tests).
    pub mdns: bool,
    /// Bound on one request/response exchange.
    pub request_timeout: Duration,
    /// Maximum size of one request or response payload.
    pub max_message_size: usize,
    /// Run the swarm on its own OS thread and single-threaded tokio runtime (default true), so
    /// heartbeats and failure detection are off the data path: a node whose main runtime is
    /// saturated by requests still heartbeats on time and is not declared down.
    pub dedicated_thread: bool,
}

impl MembershipConfig {
    /// A configuration with the documented defaults for everything but identity, addresses and
    /// secret.
    pub fn new(
        node_id: impl Into<String>,
        data_dir: impl Into<PathBuf>,
        listen: Multiaddr,
        secret: ClusterSecret,
    ) -> Self {
        MembershipConfig {
            node_id: node_id.into(),
            data_dir: data_dir.into(),
            listen,
            data_listen: None,
            bootstrap: Vec::new(),
            secret,
            http_addr: String::new(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            heartbeat_interval: DEFAULT_HEARTBEAT_INTERVAL,
            phi_threshold: DEFAULT_PHI_THRESHOLD,
            mdns: false,
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
            max_message_size: DEFAULT_MAX_MESSAGE_SIZE,
            dedicated_thread: true,
        }
    }

    /// Checks the values that would otherwise fail deep inside the swarm.
    pub fn validate(&self) -> Result<()> {
        if self.node_id.is_empty() || self.node_id.len() > 64 {
            return Err(Error::Config("node id must be 1 to 64 characters".into()));
        }
        if self.heartbeat_interval < Duration::from_millis(10) {
            return Err(Error::Config("heartbeat interval must be at least 10 ms".into()));
        }
        if !(self.phi_threshold.is_finite() && self.phi_threshold > 0.0) {
            return Err(Error::Config("phi threshold must be a positive number".into()));
        }
        if self.request_timeout.is_zero() {
            return Err(Error::Config("request timeout must be positive".into()));
        }
        if self.max_message_size == 0 || self.max_message_size > u32::MAX as usize - 1024 {
            return Err(Error::Config("max message size must be between 1 and 4 GiB".into()));
        }
        Ok(())
    }

    /// The data plane's listen address: [`Self::data_listen`], or the IP of [`Self::listen`]
    /// with port 0.
    pub fn data_listen_addr(&self) -> std::net::SocketAddr {
        if let Some(addr) = self.data_listen {
            return addr;
        }
        let ip = ip_of(&self.listen).unwrap_or(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST));
        std::net::SocketAddr::new(ip, 0)
    }
}

/// The IP address in a multiaddr, if it has one.
pub(crate) fn ip_of(addr: &Multiaddr) -> Option<std::net::IpAddr> {
    use libp2p::multiaddr::Protocol;
    addr.iter().find_map(|p| match p {
        Protocol::Ip4(a) => Some(std::net::IpAddr::V4(a)),
        Protocol::Ip6(a) => Some(std::net::IpAddr::V6(a)),
        _ => None,
    })
}

/// Loads the node keypair from `data_dir/node.key`, or creates it (mode 0600, written to a
/// temporary file and renamed so a crash never leaves a half-written key).
pub fn load_or_create_keypair(data_dir: &Path) -> Result<Keypair> {
    let path = data_dir.join(KEYPAIR_FILE);
    match std::fs::read(&path) {
        Ok(bytes) => {
            warn_if_world_readable(&path);
            Keypair::from_protobuf_encoding(&bytes).map_err(|e| Error::Keypair {
                path: path.display().to_string(),
                reason: e.to_string(),
            })
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            std::fs::create_dir_all(data_dir)
                .map_err(|e| Error::io(format!("creating {}", data_dir.display()), e))?;
            let kp = Keypair::generate_ed25519();
            let bytes = kp.to_protobuf_encoding().map_err(|e| Error::Keypair {
                path: path.display().to_string(),
                reason: e.to_string(),
            })?;
            let tmp = data_dir.join(format!("{KEYPAIR_FILE}.tmp"));
            write_private(&tmp, &bytes)?;
            std::fs::rename(&tmp, &path)
                .map_err(|e| Error::io(format!("renaming {}", tmp.display()), e))?;
            tracing::info!(path = %path.display(), "created node keypair");
            Ok(kp)
        }
        Err(e) => Err(Error::io(format!("reading {}", path.display()), e)),
    }
}

fn write_private(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let ctx = || format!("writing {}", path.display());
    let mut f = opts.open(path).map_err(|e| Error::io(ctx(), e))?;
    f.write_all(bytes).map_err(|e| Error::io(ctx(), e))?;
    f.sync_all().map_err(|e| Error::io(ctx(), e))
}

fn warn_if_world_readable(path: &Path) {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        if let Ok(meta) = std::fs::metadata(path)
            && meta.permissions().mode() & 0o077 != 0
        {
            tracing::warn!(path = %path.display(), "node keypair is readable by other users");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_forms() {
        let hex = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";
        let a = ClusterSecret::parse(hex).unwrap();
        assert_eq!(a.0[1], 0x11);
        let file = format!("/key/swarm/psk/1.0.0/\n/base16/\n{hex}\n");
        assert_eq!(ClusterSecret::parse(&file).unwrap(), a);
        let p1 = ClusterSecret::parse("correct horse battery staple").unwrap();
        let p2 = ClusterSecret::parse("  correct horse battery staple\n").unwrap();
        let p3 = ClusterSecret::parse("correct horse battery stapler").unwrap();
        assert_eq!(p1, p2);
        assert_ne!(p1, p3);
        assert!(ClusterSecret::parse("short").is_err());
        assert!(ClusterSecret::parse("").is_err());
        // Debug never shows the key bytes.
        assert!(!format!("{a:?}").contains("00112233"));
    }

    #[test]
    fn keypair_is_created_private_and_stable() {
        let dir = tempfile::tempdir().unwrap();
        let a = load_or_create_keypair(dir.path()).unwrap();
        let b = load_or_create_keypair(dir.path()).unwrap();
        assert_eq!(a.public().to_peer_id(), b.public().to_peer_id());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode =
                std::fs::metadata(dir.path().join(KEYPAIR_FILE)).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        std::fs::write(dir.path().join(KEYPAIR_FILE), b"garbage").unwrap();
        assert!(matches!(load_or_create_keypair(dir.path()), Err(Error::Keypair { .. })));
    }

    #[test]
    fn validate_rejects_nonsense() {
        let s = ClusterSecret::from_bytes([7; 32]);
        let ok = MembershipConfig::new("n1", "/tmp/x", "/ip4/127.0.0.1/tcp/0".parse().unwrap(), s);
        assert!(ok.validate().is_ok());
        assert!(MembershipConfig { node_id: String::new(), ..ok.clone() }.validate().is_err());
        assert!(MembershipConfig { phi_threshold: f64::NAN, ..ok.clone() }.validate().is_err());
        assert!(MembershipConfig { max_message_size: 0, ..ok }.validate().is_err());
    }
}
