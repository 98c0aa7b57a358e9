//! Cairn membership: libp2p discovery, gossipsub heartbeats, phi-accrual failure detection, and
//! the request/response channel that carries replication messages between nodes.
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
//! # Layout
//! - [`error`]: the crate's error enum and `Result` alias.
//! - [`config`]: [`MembershipConfig`], cluster secret parsing, the persistent node keypair.
//! - [`phi`]: the phi-accrual failure detector (pure, injected time).
//! - [`table`]: the member table state machine Up/Suspect/Down and the published view (pure).
//! - [`transport`]: the [`Transport`] trait, inbound requests and reply handles.
//! - [`codec`]: the length-prefixed rmp-serde wire codec of `/cairn/rpc/1.0.0`.
//! - [`node`]: the libp2p swarm task, gossip heartbeats, discovery, and [`MembershipHandle`].
//! - [`testing`]: [`testing::InMemoryNetwork`], an in-process transport for other crates' tests.

pub mod codec;
pub mod config;
pub mod error;
pub mod node;
pub mod phi;
pub mod table;
pub mod testing;
pub mod transport;

pub use config::{ClusterSecret, MembershipConfig};
pub use error::{Error, Result};
pub use node::{Membership, MembershipHandle};
pub use phi::{PhiAccrual, PhiConfig};
pub use table::{MemberEvent, MemberInfo, MemberStatus, MemberTable, MemberView};
pub use transport::{InboundRequest, ReplyHandle, Transport};
