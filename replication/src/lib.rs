//! Cairn's replication core: the ring, preference lists, dotted version vectors, quorum and hint
//! bookkeeping, as plain synchronous code with no I/O.
//!
//! This is the logic of Dynamo (DeCandia et al., SOSP 2007) with Riak's refinements (dotted
//! version vector sets, epoch-qualified actors). Nothing here opens a socket, reads a clock or
//! sleeps: the node feeds in what happened (replies, failures, timeouts, membership) and sends
//! what these state machines choose, so every rule can be tested exhaustively and
//! deterministically. The algorithm note with invariants is `docs/replication.md`.
//!
//! # Layout
//! - [`aae`]: per-partition XOR hash trees for active anti-entropy, and their comparison.
//! - [`id`]: `NodeId` (validated member name) and `Actor` (node id + data-dir epoch).
//! - [`vclock`]: `Dot` and `VersionVector` (downward-closed, JSON-renderable).
//! - [`dvv`]: `SiblingSet`, the DVV set stored per key: update, sync, join, lww, add-wins deletes;
//!   `SetSummary` (live metadata decoded without the content).
//! - [`context`]: the causal context as an opaque, validated client token.
//! - [`ring`]: partitions, `key_hash`, balanced assignment, (extended) preference lists.
//! - [`layout`]: the cluster layout (members, the change in progress, its three versions) and
//!   `Placement`, its rings and the lists a request uses.
//! - [`paxos`]: single-decree Paxos that commits each layout version once.
//! - [`quorum`]: sloppy-quorum target planning, `WriteCoordinator`, `ReadCoordinator`, read repair.
//! - [`hints`]: `HintBook`, the index of hinted-handoff data held for other owners.
//! - [`node`]: the node's whole protocol as a state machine (`NodeCore`: events in, actions out),
//!   built from the pieces above; its keys, wire messages, store operations and bucket registry.
//! - [`error`]: the crate's `Error` and `Result`.
//!
//! # Who runs it
//! [`node::NodeCore`] is driven by an executor that performs its actions: the `cairn` binary's
//! (`bin/src/node/`, over the storage engine and the libp2p data plane) and the whole-cluster
//! simulator's (`tools/sim/`, over in-memory stores and a simulated network and clock). Both run
//! the same rules; the simulator checks them under crashes, partitions, pauses, drops, duplicates
//! and clock skew, from one seed.
//!
//! RING
//! ====
//! Q equal partitions of the 64-bit hash space (Dynamo's strategy 3, SOSP 2007 §6.2); a key's
//! partition is the top log2(Q) bits of [`key_hash`] (xxh3 of bucket, incarnation, name; pinned).
//! Partitions are assigned to members by rendezvous scores with capacity-constrained greedy passes:
//! the ring is a pure function of the member set; every node's primary and replica counts are
//! within one of the mean; a membership change moves close to the minimum Q·N/m replicas.
//! Details and the movement table: [`ring`], `docs/replication.md`.
//!
//! PREFERENCE LISTS
//! ================
//! The N distinct owners of a partition, primary first; the extended list continues with every
//! other member in descending rendezvous score, the order in which fallbacks are taken.
//!
//! SLOPPY QUORUM
//! =============
//! Requests go to the first N *reachable* nodes of the extended list; a fallback carries a hint
//! naming the unreachable owner it stands in for. Success once W (R) targets answered, failure as
//! soon as that is impossible; the decision never flips ([`quorum`]).
//!
//! HINTED HANDOFF
//! ==============
//! Fallbacks keep hinted data per (key, owner) and deliver it when the owner is reachable again; a
//! hint is removed only by an acknowledgement covering everything recorded for it, and delivery is a
//! merge, so it is idempotent ([`hints`]).
//!
//! VERSION VECTORS
//! ===============
//! Causality is tracked with dotted version vector sets (Almeida et al., DAIS 2014; Riak's
//! `dvvset`): each sibling carries the dot of the write that made it, a write removes exactly the
//! siblings its client's context covers, and merging replicas is commutative, associative and
//! idempotent. Actors are node id + data-directory epoch, so a node that lost its disk never
//! reuses a dot ([`vclock`], [`dvv`], [`context`]).

pub mod aae;
pub mod context;
pub mod dvv;
pub mod error;
pub mod hints;
pub mod id;
pub mod layout;
pub mod node;
pub mod paxos;
pub mod quorum;
pub mod ring;
pub mod vclock;

pub use context::Context;
pub use dvv::{Body, Chunked, Dotted, Meta, SetSummary, Sibling, SiblingSet};
pub use error::{Error, Result};
pub use hints::{Delivery, HintBook, HintEntry};
pub use id::{Actor, NodeId};
pub use quorum::{
    Hint, Outcome, Plan, ReadCoordinator, ReadReport, Target, WriteCoordinator, WriteReport,
};
pub use ring::{Ring, key_hash};
pub use vclock::{Dot, VersionVector};
