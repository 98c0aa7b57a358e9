//! Runs one cairn member from flags and prints every status change it observes as a JSON line
//! on stdout (`{"t_ms":…,"node":"n1","member":"n3","status":"down"}`), for
//! `scripts/measure-membership.sh`.
//!
//! ```text
//! cargo run -p cairn-membership --example member -- --node-id n1 --data-dir /tmp/n1 \
//!     --listen /ip4/127.0.0.1/tcp/47101 --bootstrap /ip4/127.0.0.1/tcp/47102 \
//!     --secret 'a long cluster passphrase'
//! ```
//! Logs (tracing) go to stderr; `RUST_LOG` controls them (default `warn`).

use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use cairn_membership::{ClusterSecret, MemberEvent, MemberStatus, Membership, MembershipConfig};
use clap::Parser;
use libp2p::Multiaddr;
use tokio::sync::broadcast::error::RecvError;

#[derive(Parser, Debug)]
struct Args {
    /// Node id of this member.
    #[arg(long)]
    node_id: String,
    /// Data directory (keypair, incarnation counter).
    #[arg(long)]
    data_dir: PathBuf,
    /// Listen multiaddr.
    #[arg(long, default_value = "/ip4/127.0.0.1/tcp/0")]
    listen: Multiaddr,
    /// Bootstrap multiaddrs (repeat the flag).
    #[arg(long)]
    bootstrap: Vec<Multiaddr>,
    /// Cluster secret: 64 hex characters or a passphrase of 16+ characters.
    #[arg(long, env = "CAIRN_CLUSTER_SECRET")]
    secret: String,
    /// HTTP address to announce.
    #[arg(long, default_value = "")]
    http_addr: String,
    /// Heartbeat interval in milliseconds.
    #[arg(long, default_value_t = 1000)]
    heartbeat_ms: u64,
    /// Phi threshold for Down.
    #[arg(long, default_value_t = 8.0)]
    phi_threshold: f64,
    /// Enable mDNS discovery (only inside a network namespace or a private network: it
    /// multicasts on every interface).
    #[arg(long)]
    mdns: bool,
}

fn now_ms() -> u128 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis()).unwrap_or(0)
}

fn line(node: &str, member: &str, status: &str) {
    let v = serde_json::json!({ "t_ms": now_ms() as u64, "node": node, "member": member, "status": status });
    println!("{v}");
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    let mut config = MembershipConfig::new(
        args.node_id.clone(),
        args.data_dir,
        args.listen,
        ClusterSecret::parse(&args.secret)?,
    );
    config.bootstrap = args.bootstrap;
    config.http_addr = args.http_addr;
    config.heartbeat_interval = Duration::from_millis(args.heartbeat_ms);
    config.phi_threshold = args.phi_threshold;
    config.mdns = args.mdns;
    let (handle, mut inbound) = Membership::start(config).await?;
    let mut events = handle.events();
    line(&args.node_id, &args.node_id, "started");
    // Answer requests with an empty reply so peers can probe us.
    tokio::spawn(async move {
        while let Some(req) = inbound.recv().await {
            req.reply.reply(bytes::Bytes::new());
        }
    });
    loop {
        tokio::select! {
            ev = events.recv() => match ev {
                Ok(MemberEvent::Up(m)) => line(&args.node_id, &m, "up"),
                Ok(MemberEvent::Suspect(m)) => line(&args.node_id, &m, "suspect"),
                Ok(MemberEvent::Down(m)) => line(&args.node_id, &m, "down"),
                Err(RecvError::Lagged(n)) => {
                    eprintln!("lagged {n} events; current view follows");
                    for (m, info) in handle.view().borrow().members.iter() {
                        let s = match info.status {
                            MemberStatus::Up => "up",
                            MemberStatus::Suspect => "suspect",
                            MemberStatus::Down => "down",
                        };
                        line(&args.node_id, m, s);
                    }
                }
                Err(RecvError::Closed) => break,
            },
            _ = tokio::signal::ctrl_c() => break,
        }
    }
    handle.shutdown().await;
    Ok(())
}
