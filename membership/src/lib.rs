//! Cairn membership: libp2p discovery, gossipsub heartbeats, phi-accrual failure detection, and
//! the data plane that carries replication messages between nodes.
//!
//! A node calls [`Membership::start`] with a [`MembershipConfig`] and gets a
//! [`MembershipHandle`] (member view, status events, failure reports, and the [`Transport`]
//! used to send opaque requests to other nodes by node id) plus a receiver of
//! [`InboundRequest`]s from other nodes. Tests of other crates use
//! [`testing::InMemoryNetwork`] instead, which implements the same [`Transport`] with
//! partitions, drops and delays. The algorithms are explained in [`node`] (GOSSIP),
//! [`phi`] (FAILURE DETECTION) and [`table`] (MEMBER STATES); measured figures are in
//! `docs/membership.md`.
//!
//! GOSSIP
//! ======
//!
//! Every node publishes a signed heartbeat `{node_id, incarnation, seq, http_addr, version,
//! addresses}` on one gossipsub topic every interval (1 s), flood-published to every connected
//! subscriber and relayed through the mesh, so a member is heard even over an indirect path.
//! Heartbeats double as announcements (node id ↔ peer id, HTTP address, addresses), and every
//! node dials members it hears of but is not connected to, so one bootstrap address suffices.
//! Details in [`node`].
//!
//! FAILURE DETECTION
//! =================
//!
//! A phi-accrual detector (Hayashibara et al., SRDS 2004) per member turns heartbeat arrivals
//! into a suspicion level; the [`MemberTable`] maps it to Up / Suspect (phi ≥ threshold/2, or a
//! failed request or lost connection) / Down (phi ≥ threshold, default 8). Invariant: a member is
//! Down only after a silence of at least `mean + 1 s + 5.2 × max(stddev, 200 ms)` (≈ 3 s at
//! 1 s heartbeats), and only a newer heartbeat (by `(incarnation, seq)`) brings it back Up.
//! Details in [`phi`] and [`table`].
//!
//! # Layout
//! - [`error`]: the crate's error enum and `Result` alias.
//! - [`config`]: [`MembershipConfig`], cluster secret parsing, the persistent node keypair.
//! - [`phi`]: the phi-accrual failure detector (pure, injected time).
//! - [`table`]: the member table state machine Up/Suspect/Down and the published view (pure).
//! - [`transport`]: the [`Transport`] trait, inbound requests and reply handles.
//! - [`node`]: the libp2p swarm task, gossip heartbeats, discovery, and [`MembershipHandle`].
//! - [`wire`]: the data plane that carries requests: one Noise-encrypted TCP connection per
//!   pair of nodes, frames with request ids, the cluster secret in the handshake.
//! - [`testing`]: [`testing::InMemoryNetwork`], an in-process transport for other crates' tests.

pub mod config;
pub mod error;
pub mod node;
pub mod phi;
pub mod table;
pub mod testing;
pub mod transport;
pub mod wire;

pub use config::{ClusterSecret, MembershipConfig};
pub use error::{Error, Result};
pub use node::{Membership, MembershipHandle};
pub use phi::{PhiAccrual, PhiConfig};
pub use table::{MemberEvent, MemberInfo, MemberStatus, MemberTable, MemberView};
pub use transport::{InboundRequest, ReplyHandle, Transport};
