//! The boundary between the HTTP layer and the node: the [`Backend`] trait and the request and
//! answer types that cross it.
//!
//! The API validates everything a client sends (names, parameters, context tokens, sizes)
//! before calling the backend, so a backend receives only well-formed requests: valid
//! [`BucketName`]/[`ObjectName`], `r`/`w` within `1..=N`, a decoded [`Context`], a complete body
//! no larger than the maximum object size, and its ETag. The backend decides everything that
//! needs the cluster: whether the bucket exists, coordination, quorum, timestamps, conflict
//! policy. It answers with the replication crate's own reports ([`WriteReport`],
//! [`ReadReport`]) and the merged [`SiblingSet`], which the API renders; the API decides how a
//! sibling set is shown (bytes, 300 Multiple Choices, 404 with context).

use std::future::Future;
use std::pin::Pin;

use bytes::Bytes;
use cairn_replication::{
    Chunked, Context, Dot, Meta, ReadReport, Sibling, SiblingSet, WriteReport,
};
use futures::Stream;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::error::{ApiError, Result};
use crate::names::{BucketName, ObjectName};

/// How a bucket resolves concurrent writes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ConflictPolicy {
    /// Keep every concurrent version; reads show them all and the client resolves by writing
    /// back with the read's context (the default, loses nothing).
    #[default]
    Siblings,
    /// Last writer wins by coordinator timestamp: one version remains, concurrent writes are
    /// silently dropped (documented as lossy).
    Lww,
}

impl ConflictPolicy {
    /// The policy as it appears in URLs and JSON (`siblings`, `lww`).
    pub fn as_str(self) -> &'static str {
        match self {
            ConflictPolicy::Siblings => "siblings",
            ConflictPolicy::Lww => "lww",
        }
    }
}

impl std::str::FromStr for ConflictPolicy {
    type Err = ApiError;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "siblings" => Ok(ConflictPolicy::Siblings),
            "lww" => Ok(ConflictPolicy::Lww),
            other => Err(ApiError::InvalidArgument(format!(
                "conflict must be 'siblings' or 'lww', not {:?}",
                other.chars().take(40).collect::<String>()
            ))),
        }
    }
}

/// A membership change requested through the admin API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MemberChange {
    /// Add a connected node.
    Add(String),
    /// Decommission a member: its data moves to the new owners, then it leaves.
    Decommission(String),
    /// Remove a member that is gone for good: its partitions are rebuilt from the survivors.
    ForceRemove(String),
}

/// A bucket as listed by `GET /buckets`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BucketInfo {
    /// The bucket's name.
    pub name: BucketName,
    /// Its conflict policy.
    pub conflict: ConflictPolicy,
}

/// The answer to creating or deleting a bucket.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct BucketReport {
    /// Anything the backend wants to report (e.g. which nodes have acknowledged the registry
    /// change); merged into the top level of the JSON answer.
    pub details: Map<String, Value>,
}

/// `GET /buckets/{bucket}`: one page of a bucket's files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListFiles {
    /// The bucket.
    pub bucket: BucketName,
    /// Only names starting with this (may be empty).
    pub prefix: String,
    /// Only names strictly after this one (the `next_cursor` of the previous page).
    pub cursor: Option<String>,
    /// At most this many entries (1..=[`crate::MAX_LIST_LIMIT`]).
    pub limit: usize,
}

/// One file in a listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileEntry {
    /// The object name.
    pub name: ObjectName,
    /// Metadata of the newest live version (by timestamp).
    pub meta: Meta,
    /// Number of live concurrent versions (more than 1: a read answers 300).
    pub versions: usize,
}

/// A page of a listing.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FileList {
    /// The files, in name order. Deleted files (tombstones only) are not listed.
    pub files: Vec<FileEntry>,
    /// Where the next page starts, when there may be more.
    pub next_cursor: Option<String>,
    /// Members that did not answer (down, or failed): files only they hold may be missing from
    /// the page. Empty: every member answered.
    pub missing: Vec<String>,
}

/// A write of one object (raw `PUT` or one part of a multipart upload).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PutObject {
    /// The bucket.
    pub bucket: BucketName,
    /// The object name.
    pub name: ObjectName,
    /// The complete content (at most the configured maximum object size).
    pub body: Bytes,
    /// MIME type from the request (`application/octet-stream` when none was given).
    pub content_type: String,
    /// The original file name of a multipart part.
    pub file_name: Option<String>,
    /// The content's ETag, computed by the API while streaming (see [`crate::etag_of`]).
    pub etag: String,
    /// The causal context from `X-Cairn-Context`: the write supersedes exactly the versions it
    /// covers. `None` (and `overwrite` false): the write becomes a new sibling.
    pub context: Option<Context>,
    /// `?overwrite=true`: use the coordinator's current version vector as the context, replacing
    /// everything it holds. Never set together with `context` (the API refuses that).
    pub overwrite: bool,
    /// `?w=`: the write quorum for this request, already checked to be within `1..=N`.
    pub w: Option<usize>,
}

/// A body streamed piece by piece: the next bytes as they arrive, an error ending it early
/// (the client went away, stalled past the idle limit, or sent more than the limit).
pub type BodyStream<'a> = Pin<Box<dyn Stream<Item = Result<Bytes>> + Send + 'a>>;

/// A write of one object whose content is larger than an inline object
/// ([`crate::ApiConfig::inline_max`]): the backend stores it in chunks as it arrives, and makes
/// it visible only once every chunk is durable (an error from `body` leaves nothing visible).
pub struct PutStream<'a> {
    /// The bucket.
    pub bucket: BucketName,
    /// The object name.
    pub name: ObjectName,
    /// The content, already limited to the maximum object size by the API.
    pub body: BodyStream<'a>,
    /// MIME type from the request.
    pub content_type: String,
    /// The original file name of a multipart part.
    pub file_name: Option<String>,
    /// As [`PutObject::context`].
    pub context: Option<Context>,
    /// As [`PutObject::overwrite`].
    pub overwrite: bool,
    /// As [`PutObject::w`].
    pub w: Option<usize>,
}

/// The content of a chunked version, or part of it, to stream to a client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpenContent {
    /// The bucket.
    pub bucket: BucketName,
    /// The bucket incarnation the read found ([`ReadResult::incarnation`]).
    pub incarnation: u64,
    /// The object name.
    pub name: ObjectName,
    /// The version's manifest.
    pub manifest: Chunked,
    /// The bytes wanted: `start..end`, within the content.
    pub range: std::ops::Range<u64>,
    /// Nodes that answered the read with this version (they hold its chunks).
    pub holders: Vec<String>,
}

/// A delete of one object: a tombstone written under a context.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeleteObject {
    /// The bucket.
    pub bucket: BucketName,
    /// The object name.
    pub name: ObjectName,
    /// The causal context: the delete supersedes exactly the versions it covers. `None` means
    /// "delete what the coordinator currently holds" (the original service's clients send no
    /// context, and a delete with an empty context would remove nothing).
    pub context: Option<Context>,
    /// `?w=`, already checked to be within `1..=N`.
    pub w: Option<usize>,
}

/// A read of one object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GetObject {
    /// The bucket.
    pub bucket: BucketName,
    /// The object name.
    pub name: ObjectName,
    /// `?r=`, already checked to be within `1..=N`.
    pub r: Option<usize>,
    /// `?local=true`: answer from this node's own replica (hinted data included), without
    /// coordination.
    pub local: bool,
}

/// What a successful write or delete did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WriteResult {
    /// The coordinator: the node where the write took place.
    pub node: String,
    /// The dot of the new version (or tombstone).
    pub dot: Dot,
    /// Metadata of the new version (size 0 for a tombstone).
    pub meta: Meta,
    /// The key's causal context after the write (hand it back to supersede this version).
    pub context: Context,
    /// The replica report: owners, replicas written, hints, vector clocks.
    pub report: WriteReport,
}

/// What a read found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadResult {
    /// The coordinator of the read (this node for `?local=true`).
    pub node: String,
    /// The merge of the replies: the live versions, tombstones included, and the causal history
    /// (`set.join()` is the context returned to the client). Empty: the key does not exist.
    pub set: SiblingSet<Sibling>,
    /// The replica report: replicas read, their vector clocks, read repair.
    pub report: ReadReport,
    /// The bucket incarnation read (the backend's own number, handed back in
    /// [`OpenContent::incarnation`] to stream a chunked version).
    pub incarnation: u64,
}

/// The node's health, for `GET /health`.
#[derive(Debug, Clone, PartialEq)]
pub struct Health {
    /// Whether the node can serve requests (200) or not (503).
    pub healthy: bool,
    /// Details merged into the JSON answer (storage state, members up, ...).
    pub details: Map<String, Value>,
}

/// What the API needs from a node. The node (coordinator, replication, membership) implements
/// it (`cairn_node::node::backend::NodeBackend`), and the API's tests run over real nodes
/// (`bin/tests/api_*.rs`), so the routes are tested on the semantics users get.
///
/// Implementations can write the methods as `async fn`; every future must be `Send` (the router
/// runs on a multi-threaded runtime). Methods take owned requests so the futures borrow only
/// `self`. Errors are [`ApiError`]s: `NoSuchBucket`, `NoSuchKey`, `BucketAlreadyExists`,
/// `TooManySiblings`, `StaleContext`, `WriteQuorumNotReached`/`ReadQuorumNotReached` (with the partial report),
/// `Unavailable` and `Internal` are the ones a backend is expected to produce.
pub trait Backend: Send + Sync + 'static {
    /// This node's id, reported as `node` in every answer.
    fn node_id(&self) -> &str;

    /// Creates a bucket (`BucketAlreadyExists` if it exists).
    fn create_bucket(
        &self,
        bucket: BucketName,
        policy: ConflictPolicy,
    ) -> impl Future<Output = Result<BucketReport>> + Send;

    /// Deletes a bucket and its files (`NoSuchBucket` if it does not exist).
    fn delete_bucket(
        &self,
        bucket: BucketName,
    ) -> impl Future<Output = Result<BucketReport>> + Send;

    /// Lists the buckets.
    fn list_buckets(&self) -> impl Future<Output = Result<Vec<BucketInfo>>> + Send;

    /// Lists one page of a bucket's files (`NoSuchBucket` if it does not exist).
    fn list_files(&self, req: ListFiles) -> impl Future<Output = Result<FileList>> + Send;

    /// Writes an object (`NoSuchBucket`, `WriteQuorumNotReached`, `TooManySiblings`, ...).
    fn put_object(&self, req: PutObject) -> impl Future<Output = Result<WriteResult>> + Send;

    /// Writes an object whose content is streamed ([`PutStream`]): stored in chunks, visible
    /// once all are durable on W replicas. Errors as [`Backend::put_object`], plus `SlowDown`
    /// when the node holds too many bytes in flight, and the body's own error.
    fn put_object_stream<'a>(
        &'a self,
        req: PutStream<'a>,
    ) -> impl Future<Output = Result<WriteResult>> + Send + 'a;

    /// Streams (part of) a chunked version's content, reading only the chunks the range needs.
    /// `SlowDown` when the node holds too many bytes in flight. An error after the stream has
    /// started ends the response early (the client sees a short body).
    fn open_content(&self, req: OpenContent) -> Result<BodyStream<'static>>;

    /// Deletes an object by writing a tombstone (add-wins: it removes the versions the context
    /// covers, or without one every version a quorum read shows). `NoSuchKey` when no live
    /// version exists (nothing is stored); `StaleContext` when the context covers none of them.
    fn delete_object(&self, req: DeleteObject) -> impl Future<Output = Result<WriteResult>> + Send;

    /// Reads an object. A missing key is an `Ok` with an empty set (the API answers 404), so
    /// that the read report is still available; `NoSuchBucket` is an error.
    fn get_object(&self, req: GetObject) -> impl Future<Output = Result<ReadResult>> + Send;

    /// The cluster view for `GET /cluster` (members, ring ownership, hints pending); a JSON
    /// object is merged into the answer's top level.
    fn cluster(&self) -> impl Future<Output = Result<Value>> + Send;

    /// A membership change (`POST` / `DELETE /cluster/members/{id}`): once the cluster has
    /// committed it, a JSON object describing it (layout version, partitions to move), merged
    /// into the answer's top level. The data moves in the background (`GET /cluster`).
    fn change_members(&self, change: MemberChange) -> impl Future<Output = Result<Value>> + Send;

    /// The node's health for `GET /health`.
    fn health(&self) -> impl Future<Output = Health> + Send;

    /// The node's own metrics (engine, replication, failure detector) in the Prometheus text
    /// format; the API appends them to its request metrics in `GET /metrics`.
    fn metrics_text(&self) -> String;
}
