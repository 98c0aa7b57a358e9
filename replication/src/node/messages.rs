//! The node-to-node protocol carried by the membership transport's request/response channel.
//!
//! PROTOCOL
//! ========
//! Every message is one rmp-serde encoded [`Request`] answered by one [`Response`]. Sibling sets
//! travel whole (values are inline, bounded by the maximum object size, and the transport enforces
//! its own message size limit). Every request but `Coordinate` is idempotent, so a retry after a
//! timeout is safe; a `Coordinate` that timed out may have been applied, and is never sent to
//! another coordinator (that would store the write twice, under two dots):
//! - `Replicate` merges a set into the receiver's replica (write fan-out, read repair, hint
//!   delivery); with `hint_for` the receiver stores it as a hint for that owner instead.
//!   Answer: `Ack` with the receiver's version vector for the key after the merge.
//! - `Read` asks for the receiver's set of a key (its replica merged with hints it holds).
//! - `Coordinate` hands a client write to the first reachable owner, which coordinates it.
//! - `BucketReplicate` / `BucketRegistry` replicate the bucket registry to every node.
//! - `List` asks for the receiver's live objects of one bucket incarnation (name, newest
//!   metadata, number of live versions).
//! - `Status` asks for the receiver's layout version, acknowledged version and sync progress,
//!   and its layout when newer than the sender's (layout pull, [`crate::layout`]).
//! - `Prepare` / `Accept` are Paxos phases 1a and 2a for one layout version, answered by a
//!   `Vote`; `Commit` pushes a chosen layout ([`crate::paxos`]).
//! - `SyncPage` asks an old owner for its objects of some partitions after a cursor (partition
//!   sync while a membership change is in progress); answered by a `Page`.
//! - `TombstoneCheck` / `CollectTombstones`: a partition's primary asks every node to vote on
//!   collecting tombstones (`TombstoneVotes`), then tells the owners to delete them
//!   (`Collected`); `node::gc`.
//! - `Tree`, `SegmentKeys` and `Repair` are an anti-entropy exchange between two owners of a
//!   partition ([`crate::aae`], `node::aae`): the receiver's branch or segment hashes (`Hashes`),
//!   its (key, clock digest) lists of some segments (`Digests`), and a merge of the sender's sets
//!   answered with the receiver's sets of the keys wanted (`Page`).
//!
//! - `PutChunk` / `GetChunk` store and fetch one chunk of a large object's content
//!   (`node::chunks`); they never reach the protocol's state machine: the executor serves them
//!   from its store (`Stored`, `Chunk`).
//!
//! Errors come back as `Response::Error` with a stable code; transport failures (timeout,
//! unreachable) are the transport's errors.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::dvv::{Body, Meta, SiblingSet};
use crate::layout::Layout;
use crate::node::buckets::BucketEntry;
use crate::node::keys::{ChunkKey, ObjectKey};
use crate::paxos::{Ballot, Vote};
use crate::quorum::WriteReport;
use crate::vclock::{Dot, VersionVector};

/// A request from one node to another.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Request {
    /// Merge `set` into the replica of `key` (or into a hint for `hint_for`).
    Replicate {
        /// The object.
        key: ObjectKey,
        /// The sibling set to merge (shared by the targets of one fan-out; encoded as the set).
        set: Arc<SiblingSet>,
        /// When the receiver stands in for an unreachable owner: that owner.
        hint_for: Option<String>,
    },
    /// Send back the receiver's sibling set of `key`.
    Read {
        /// The object.
        key: ObjectKey,
    },
    /// Coordinate this client write.
    Coordinate(WriteRequest),
    /// Merge `set` into the registry entry of bucket `name` (or a hint for `hint_for`).
    BucketReplicate {
        /// Bucket name.
        name: String,
        /// The registry entry's sibling set.
        set: SiblingSet<BucketEntry>,
        /// When the receiver stands in for an unreachable node: that node.
        hint_for: Option<String>,
    },
    /// Send back the whole bucket registry (registry anti-entropy).
    BucketRegistry,
    /// Send back live object names of one bucket incarnation, in order.
    List {
        /// Bucket name.
        bucket: String,
        /// Bucket incarnation.
        incarnation: u64,
        /// Only names starting with this.
        prefix: String,
        /// Only names after this one.
        start_after: Option<String>,
        /// At most this many names.
        limit: u32,
    },
    /// Send back the receiver's [`NodeStatus`], with its layout if newer than `version`.
    Status {
        /// The sender's layout version.
        version: u64,
    },
    /// Paxos phase 1a for layout `version`.
    Prepare {
        /// The version being decided.
        version: u64,
        /// The proposer's ballot.
        ballot: Ballot,
    },
    /// Paxos phase 2a for layout `version`.
    Accept {
        /// The version being decided.
        version: u64,
        /// The proposer's ballot.
        ballot: Ballot,
        /// The value.
        layout: Layout,
    },
    /// A layout was chosen: adopt it if newer.
    Commit {
        /// The layout.
        layout: Layout,
    },
    /// Send back objects of `partitions` in key order after `after` (partition sync): the
    /// receiver's replicas, or with `hints` the object hints it holds (for any owner).
    SyncPage {
        /// Q of the sender's layout (the receiver's is the same: Q never changes).
        partitions_total: u32,
        /// The partitions wanted, sorted.
        partitions: Vec<u32>,
        /// Scan the hints instead of the replicas.
        hints: bool,
        /// Cursor: only engine keys after this one (from the previous page's `next`).
        #[serde(with = "serde_bytes")]
        after: Option<Vec<u8>>,
        /// At most this many objects.
        max_entries: u32,
        /// Stop after about this many bytes of sets.
        max_bytes: u64,
    },
    /// Send back hashes of the receiver's tree of `partition`: the branches when `branches` is
    /// empty, else the segments of each listed branch.
    Tree {
        /// Q of the sender's layout.
        partitions_total: u32,
        /// The partition.
        partition: u32,
        /// Branches whose segments are wanted (empty: the branch hashes).
        branches: Vec<u16>,
    },
    /// Send back (key, clock digest) of every object the receiver stores in these segments of
    /// `partition` (in any order: the sender sorts).
    SegmentKeys {
        /// Q of the sender's layout.
        partitions_total: u32,
        /// The partition.
        partition: u32,
        /// The segments.
        segments: Vec<u16>,
    },
    /// Vote on collecting these tombstones (key, exact version vector): yes for a key when the
    /// receiver holds no hint for it and no replica of it that does not descend the version
    /// vector. All no when the receiver's layout version is not `version`.
    TombstoneCheck {
        /// The sender's layout version.
        version: u64,
        /// Keys and the tombstone-only sets' version vectors.
        keys: Vec<(ObjectKey, VersionVector)>,
    },
    /// Every node voted yes: delete these replicas if they are still exactly these
    /// tombstone-only sets (nothing when the receiver's layout version is not `version`).
    CollectTombstones {
        /// The sender's layout version.
        version: u64,
        /// Keys and version vectors.
        keys: Vec<(ObjectKey, VersionVector)>,
    },
    /// Store one chunk of a large object's content durably (idempotent: a chunk's bytes never
    /// change).
    PutChunk {
        /// Which chunk.
        chunk: ChunkKey,
        /// Its bytes.
        #[serde(with = "serde_bytes")]
        data: Vec<u8>,
    },
    /// Send back one chunk (`Chunk { data: None }` when the receiver does not hold it).
    GetChunk {
        /// Which chunk.
        chunk: ChunkKey,
    },
    /// Merge `entries` into the receiver's replicas, then send back its sets of `want`.
    Repair {
        /// Keys with the sender's sets.
        entries: Vec<(ObjectKey, SiblingSet)>,
        /// Keys whose sets the sender wants.
        want: Vec<ObjectKey>,
    },
}

/// What a node reports about itself to its peers (`Status`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeStatus {
    /// Its layout version (0: none yet).
    pub version: u64,
    /// The newest version it acknowledged: stored, and no write planned under an older one
    /// still running.
    pub acked: u64,
    /// The newest change (by its start version) whose partitions it has pulled entirely; its
    /// current version when it had nothing to pull.
    pub synced: u64,
    /// Its layout, when newer than the asker's.
    pub layout: Option<Layout>,
    /// Its partition sync, while one runs.
    pub sync: Option<SyncProgress>,
}

/// A node's partition sync for the change in progress.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SyncProgress {
    /// The version the change started at.
    pub started: u64,
    /// Partitions it must pull.
    pub partitions: usize,
    /// Of those, the ones pulled from every source.
    pub partitions_done: usize,
    /// Objects received.
    pub keys: u64,
    /// Bytes of sibling sets received.
    pub bytes: u64,
    /// Whether every voter acknowledged the change, so pulling has begun.
    pub started_pulling: bool,
}

/// What a client write does to an object.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum WriteOp {
    /// Store a new version.
    Put {
        /// Its metadata.
        meta: Meta,
        /// Its content: inline bytes, or a manifest whose chunks the writer has stored on the
        /// replicas (a coordinator lacking some fetches them before it writes).
        body: Body,
    },
    /// Delete (write a tombstone).
    Delete {
        /// Time of the delete at the node that received it, ms since the epoch.
        timestamp_ms: u64,
    },
}

/// A client write, as forwarded to its coordinator.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WriteRequest {
    /// The object.
    pub key: ObjectKey,
    /// What to write.
    pub op: WriteOp,
    /// The causal context the client read (`None`: a blind write, kept beside what exists).
    pub context: Option<VersionVector>,
    /// Use the coordinator's current version vector as the context.
    pub overwrite: bool,
    /// Write quorum for this request.
    pub w: usize,
    /// Resolve siblings by last-write-wins after the write (`lww` buckets).
    pub lww: bool,
    /// Nodes the forwarding node skipped as unreachable before choosing this coordinator; the
    /// coordinator treats them as unreachable too, so it is the first target of its own plan.
    pub excluded: Vec<String>,
}

/// One live object in a listing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListEntry {
    /// Object name.
    pub name: String,
    /// Metadata of its newest live version (by timestamp).
    pub meta: Meta,
    /// Number of live concurrent versions.
    pub versions: usize,
}

/// An answer from one node to another.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Response {
    /// The set was merged; the replica's version vector for the key is now `vv`.
    Ack {
        /// The replica's version vector after the merge.
        vv: VersionVector,
    },
    /// The receiver's set for a key (`None` if it has nothing).
    Set {
        /// The set.
        set: Option<SiblingSet>,
    },
    /// The outcome of a coordinated write.
    Written(Box<WriteOutcome>),
    /// The whole bucket registry.
    Registry {
        /// Every bucket name with its registry entry's set.
        entries: Vec<(String, SiblingSet<BucketEntry>)>,
    },
    /// Live objects of a listing.
    Listing {
        /// Entries in name order.
        entries: Vec<ListEntry>,
    },
    /// The receiver's status.
    Status(Box<NodeStatus>),
    /// An acceptor's answer to `Prepare` or `Accept`.
    Vote(Box<Vote>),
    /// Objects for partition sync.
    Page {
        /// Keys with their sets, in key order.
        entries: Vec<(ObjectKey, SiblingSet)>,
        /// Where the next page starts (`None`: the scan is complete).
        #[serde(with = "serde_bytes")]
        next: Option<Vec<u8>>,
    },
    /// Tree hashes (`Tree`).
    Hashes {
        /// Branch or segment hashes.
        hashes: Vec<u64>,
    },
    /// One vote per key asked (`TombstoneCheck`).
    TombstoneVotes {
        /// Yes or no, in the order asked.
        ok: Vec<bool>,
    },
    /// Replicas deleted (`CollectTombstones`).
    Collected {
        /// How many.
        count: u64,
    },
    /// (key, clock digest) pairs (`SegmentKeys`).
    Digests {
        /// The pairs.
        entries: Vec<(ObjectKey, u64)>,
    },
    /// A chunk is durable (`PutChunk`).
    Stored,
    /// A chunk's bytes (`GetChunk`); `None` when not held.
    Chunk {
        /// The bytes.
        #[serde(with = "serde_bytes")]
        data: Option<Vec<u8>>,
    },
    /// The request failed at the receiver.
    Error {
        /// Stable error code.
        code: String,
        /// Human-readable detail.
        message: String,
    },
}

/// What a coordinated write did (also sent back to a forwarding node).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WriteOutcome {
    /// The coordinator: where the write took place.
    pub node: String,
    /// Per-replica report.
    pub report: WriteReport,
    /// The causal context after the write (the coordinator's version vector for the key).
    pub context: VersionVector,
    /// The dot of the new version.
    pub dot: Dot,
}

/// Encodes a message for the transport.
pub fn encode<T: Serialize>(msg: &T) -> Result<Vec<u8>, rmp_serde::encode::Error> {
    rmp_serde::to_vec_named(msg)
}

/// `Request::PutChunk` and `Response::Chunk` encoded from borrowed bytes: the same encoding as
/// the owned messages, without first copying a chunk into a `Vec` of its own.
#[derive(Serialize)]
enum ChunkRef<'a> {
    PutChunk {
        chunk: &'a ChunkKey,
        #[serde(with = "serde_bytes")]
        data: &'a [u8],
    },
    Chunk {
        #[serde(with = "serde_bytes")]
        data: Option<&'a [u8]>,
    },
}

/// Encodes `Request::PutChunk { chunk, data }` without copying `data` first.
pub fn encode_put_chunk(
    chunk: &ChunkKey,
    data: &[u8],
) -> Result<Vec<u8>, rmp_serde::encode::Error> {
    encode(&ChunkRef::PutChunk { chunk, data })
}

/// Encodes `Response::Chunk { data }` without copying `data` first.
pub fn encode_chunk(data: Option<&[u8]>) -> Result<Vec<u8>, rmp_serde::encode::Error> {
    encode(&ChunkRef::Chunk { data })
}

/// `Request::PutChunk`, its bytes borrowed from the payload.
#[derive(Deserialize)]
enum ChunkIn<'a> {
    PutChunk {
        chunk: ChunkKey,
        #[serde(borrow)]
        data: &'a [u8],
    },
}

/// If `payload` is a `Request::PutChunk`, its chunk and its bytes as a window of `payload` (no
/// copy); `None` for any other request.
pub fn decode_put_chunk(payload: &bytes::Bytes) -> Option<(ChunkKey, bytes::Bytes)> {
    match rmp_serde::from_slice::<ChunkIn<'_>>(payload) {
        Ok(ChunkIn::PutChunk { chunk, data }) => Some((chunk, payload.slice_ref(data))),
        Err(_) => None,
    }
}

/// Decodes a message from the transport; malformed bytes are an error, never a panic.
pub fn decode<T: for<'de> Deserialize<'de>>(bytes: &[u8]) -> Result<T, rmp_serde::decode::Error> {
    rmp_serde::from_slice(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn borrowed_chunk_messages_encode_like_the_owned_ones() {
        let chunk = ChunkKey {
            key: ObjectKey { bucket: "b".into(), incarnation: 3, name: "n".into() },
            blob: 9,
            index: 2,
        };
        let data = vec![7u8; 70_000];
        let owned =
            encode(&Request::PutChunk { chunk: chunk.clone(), data: data.clone() }).unwrap();
        assert_eq!(encode_put_chunk(&chunk, &data).unwrap(), owned);
        assert!(
            matches!(decode::<Request>(&owned).unwrap(), Request::PutChunk { data: d, .. } if d == data)
        );
        let payload = bytes::Bytes::from(owned);
        let (c, d) = decode_put_chunk(&payload).unwrap();
        assert_eq!((c, &d[..]), (chunk.clone(), &data[..]));
        assert_eq!(d.as_ptr(), payload[payload.len() - data.len()..].as_ptr(), "no copy");
        let other =
            bytes::Bytes::from(encode(&Request::GetChunk { chunk: chunk.clone() }).unwrap());
        assert!(decode_put_chunk(&other).is_none());
        for d in [Some(data.clone()), None] {
            let owned = encode(&Response::Chunk { data: d.clone() }).unwrap();
            assert_eq!(encode_chunk(d.as_deref()).unwrap(), owned);
        }
    }
}
