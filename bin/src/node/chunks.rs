//! Large objects in chunks: the executor's side.
//!
//! An object larger than an inline object is a *manifest* in its sibling set
//! ([`cairn_replication::Chunked`]: blob id, size, chunk size) and its bytes are *chunks* of
//! [`CHUNK_SIZE`] in the engine's chunk keyspace, keyed `object key 0x00 blob index`
//! ([`ChunkKey`]), on the same replicas as the set. The protocol's state machine never sees a
//! chunk: it replicates, hints, repairs and hands off manifests exactly like inline versions, and
//! this module moves the bytes so that one rule holds everywhere:
//!
//! **A node stores a manifest only once it holds every chunk of it.** Before the executor runs a
//! store operation that merges sets ([`StoreOp::incoming_manifests`]: a coordinator's write, a
//! replicated set, a hint, a partition-sync page, an anti-entropy repair), it fetches the chunks
//! the store lacks ([`Node::ensure_chunks`]) from the key's owners first, then any other node up;
//! if it cannot, the operation fails and the sender retries later (a hint stays, a sync page is
//! asked again, the next exchange repairs). So read repair, hinted handoff, partition sync and
//! anti-entropy carry chunks without knowing about them, and a replica that acknowledges a
//! manifest holds its content durably.
//!
//! UPLOAD ([`Node::upload`])
//! ======
//! The node that receives the body cuts it into chunks as it arrives and sends each to the key's
//! first N reachable nodes of the extended preference list (the replicas the write will go to),
//! at most [`UPLOAD_WINDOW`] chunks in flight; a chunk stored on fewer than W of them fails the
//! upload. When the body ends, the manifest is written like any version, through the key's
//! coordinator: it becomes visible only then, with every chunk already durable on the replicas
//! that acknowledge it. A client that goes away, a body error or a crash before that leaves
//! chunks no manifest names: orphans, collected after the grace.
//!
//! DOWNLOAD ([`Node::open_content`])
//! ========
//! The chunks a range covers, read [`READ_AHEAD`] ahead: from the local store when held
//! (zero-copy from the mapped segment), else from the nodes that answered the read with this
//! version, then the other owners.
//!
//! MEMORY
//! ======
//! A node-wide budget of chunk buffers (`--max-inflight-bytes`): an upload takes
//! `UPLOAD_WINDOW + 1` chunks of it for its life, a download `READ_AHEAD + 1`; when the budget is
//! spent a new large request is refused with 503 `SlowDown` instead of growing the node's memory.
//!
//! COLLECTION ([`OrphanTracker`], [`Node::collect_chunks`])
//! ==========
//! Each node scans its own chunks every `grace / 4` and deletes a blob that no set of its key
//! here (replica or hint) references, once it has been unreferenced at every scan for the whole
//! grace and untouched (written or read) for as long. This one rule collects superseded and
//! deleted versions, orphans of failed uploads, and copies left after a partition moved away,
//! and never a chunk a manifest here references: the reference check and the merge that adds a
//! reference are separated by at most the fetch, and a fetched chunk counts as touched. A node
//! that deletes chunks another node's manifest still names (that node holds them, or fetches
//! them again when it merges the manifest) loses nothing.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use cairn_api::{ApiError, BodyStream, EtagHasher};
use cairn_membership::{ReplyHandle, Transport};
use cairn_replication::node::keys::{ChunkKey, ObjectKey};
use cairn_replication::node::{IncomingManifest, StoreOp};
use cairn_replication::{Body, Chunked, Meta, NodeId, VersionVector};
use futures::StreamExt;
use parking_lot::Mutex;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::node::messages::{self, Request, Response, WriteOp, WriteOutcome, WriteRequest};
use crate::node::{Node, NodeError};

/// Length of every chunk but an object's last (1 MiB).
pub const CHUNK_SIZE: u32 = 1 << 20;
/// Chunks one upload has in flight to the replicas.
pub const UPLOAD_WINDOW: usize = 4;
/// Chunks one download reads ahead of what the client has taken.
pub const READ_AHEAD: usize = 4;
/// Default node-wide budget of chunk buffers held by large requests (256 MiB).
pub const DEFAULT_MAX_INFLIGHT_BYTES: u64 = 256 << 20;
/// Default time a blob must stay unreferenced and untouched before it is deleted (10 minutes).
pub const DEFAULT_CHUNK_GRACE: Duration = Duration::from_secs(600);
/// Blobs examined per collection page.
const COLLECT_PAGE: usize = 4096;

/// The executor's chunk settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkSettings {
    /// Node-wide budget of chunk buffers, bytes.
    pub max_inflight_bytes: u64,
    /// How long a blob stays unreferenced and untouched before it is deleted.
    pub grace: Duration,
}

impl Default for ChunkSettings {
    fn default() -> Self {
        ChunkSettings { max_inflight_bytes: DEFAULT_MAX_INFLIGHT_BYTES, grace: DEFAULT_CHUNK_GRACE }
    }
}

/// The chunk counters (`/metrics`, `/cluster`).
#[derive(Debug, Default)]
pub struct ChunkStats {
    /// Chunks stored for uploads and for peers' `PutChunk`.
    pub stored: AtomicU64,
    /// Chunks fetched from peers before a merge (repair, handoff, hints).
    pub fetched: AtomicU64,
    /// Chunks served to clients and to peers.
    pub served: AtomicU64,
    /// Blobs deleted by collection.
    pub blobs_collected: AtomicU64,
    /// Chunks deleted by collection.
    pub chunks_collected: AtomicU64,
    /// Large requests refused with `SlowDown`.
    pub slow_downs: AtomicU64,
    /// Collection scans completed.
    pub scans: AtomicU64,
    /// Blobs unreferenced at the last scan, waiting for the grace.
    pub awaiting: AtomicU64,
}

/// The executor's chunk state: the memory budget, the collector's tracker, counters.
pub struct Chunks {
    settings: ChunkSettings,
    budget: Arc<Semaphore>,
    tracker: Mutex<OrphanTracker>,
    /// The counters.
    pub stats: ChunkStats,
}

impl Chunks {
    /// The state for these settings.
    pub fn new(settings: ChunkSettings) -> Self {
        let permits = (settings.max_inflight_bytes / u64::from(CHUNK_SIZE)).max(1) as usize;
        Chunks {
            settings,
            budget: Arc::new(Semaphore::new(permits.min(Semaphore::MAX_PERMITS))),
            tracker: Mutex::new(OrphanTracker::new(settings.grace.as_millis() as u64)),
            stats: ChunkStats::default(),
        }
    }

    /// The settings.
    pub fn settings(&self) -> ChunkSettings {
        self.settings
    }

    /// Takes `chunks` buffers of the budget, or `SlowDown`.
    fn reserve(&self, chunks: usize) -> Result<OwnedSemaphorePermit, ApiError> {
        Arc::clone(&self.budget).try_acquire_many_owned(chunks as u32).map_err(|_| {
            self.stats.slow_downs.fetch_add(1, Ordering::Relaxed);
            ApiError::SlowDown(format!(
                "this node holds its limit of {} MiB of large-object buffers; retry shortly or \
                 use another node",
                self.settings.max_inflight_bytes >> 20
            ))
        })
    }

    fn touch(&self, key: &ObjectKey, blob: u64) {
        self.tracker.lock().touch(key, blob, crate::node::now_ms());
    }
}

/// Which blobs to delete: the collector's rule as plain code (time is a parameter).
///
/// A blob is deleted at a scan when it is unreferenced then, was unreferenced at every scan for
/// at least `grace_ms` (since it was first seen so), and was not touched for `grace_ms`.
#[derive(Debug, Default)]
pub struct OrphanTracker {
    grace_ms: u64,
    /// Blobs seen unreferenced, since when (continuously).
    unreferenced_since: HashMap<(ObjectKey, u64), u64>,
    /// Blobs written or read recently, when last.
    touched: HashMap<(ObjectKey, u64), u64>,
}

impl OrphanTracker {
    /// A tracker with this grace.
    pub fn new(grace_ms: u64) -> Self {
        OrphanTracker { grace_ms, ..OrphanTracker::default() }
    }

    /// A chunk of the blob was written or read at `now`.
    pub fn touch(&mut self, key: &ObjectKey, blob: u64, now: u64) {
        self.touched.insert((key.clone(), blob), now);
    }

    /// A scan at `now` found the blob referenced or not: whether to delete it now.
    pub fn observe(&mut self, key: &ObjectKey, blob: u64, referenced: bool, now: u64) -> bool {
        let id = (key.clone(), blob);
        if referenced {
            self.unreferenced_since.remove(&id);
            return false;
        }
        let since = *self.unreferenced_since.entry(id.clone()).or_insert(now);
        let last_touch = self.touched.get(&id).copied().unwrap_or(0);
        let quiet = now.saturating_sub(since.max(last_touch)) >= self.grace_ms;
        if quiet {
            self.unreferenced_since.remove(&id);
            self.touched.remove(&id);
        }
        quiet
    }

    /// After a complete scan at `now`: forgets blobs the scan did not see (deleted) and touches
    /// older than the grace (they no longer delay anything).
    pub fn end_scan(&mut self, seen: &BTreeSet<(ObjectKey, u64)>, now: u64) {
        self.unreferenced_since.retain(|id, _| seen.contains(id));
        let grace = self.grace_ms;
        self.touched.retain(|_, t| now.saturating_sub(*t) < grace);
    }

    /// Whether the blob was touched within the grace before `now` (checked again just before a
    /// delete: a merge about to reference it touches it first).
    pub fn touched_recently(&self, key: &ObjectKey, blob: u64, now: u64) -> bool {
        self.touched
            .get(&(key.clone(), blob))
            .is_some_and(|t| now.saturating_sub(*t) < self.grace_ms)
    }

    /// Blobs currently seen unreferenced.
    pub fn awaiting(&self) -> usize {
        self.unreferenced_since.len()
    }
}

/// What an upload is: the object, its metadata and the write's options.
pub struct Upload {
    /// The object.
    pub key: ObjectKey,
    /// Its metadata (size and ETag are set from the body).
    pub meta: Meta,
    /// As [`WriteRequest::context`].
    pub context: Option<VersionVector>,
    /// As [`WriteRequest::overwrite`].
    pub overwrite: bool,
    /// Write quorum.
    pub w: usize,
    /// `lww` bucket.
    pub lww: bool,
}

/// The content a download streams.
pub struct Download {
    /// The object.
    pub key: ObjectKey,
    /// The version's manifest.
    pub manifest: Chunked,
    /// Bytes `start..end` of the content.
    pub range: std::ops::Range<u64>,
    /// Nodes known to hold the version (asked first when the chunk is not local).
    pub holders: Vec<NodeId>,
}

impl<T: Transport> Node<T> {
    /// The chunk state.
    pub fn chunks(&self) -> &Chunks {
        &self.chunks
    }

    /// The nodes an upload's chunks go to: the first N reachable nodes of the key's extended
    /// preference list (where the coordinator will write the manifest).
    fn chunk_targets(&self, key: &ObjectKey) -> Vec<NodeId> {
        let up = self.reachable();
        self.extended(key).into_iter().filter(|n| up.contains(n)).take(self.config.n).collect()
    }

    /// Where to look for a chunk this node lacks: `first`, then the key's owners and fallbacks
    /// that are up, then every other node up; never this node.
    fn chunk_sources(&self, key: &ObjectKey, first: &[NodeId]) -> Vec<NodeId> {
        let up = self.reachable();
        let mut out: Vec<NodeId> = Vec::new();
        let candidates = first.iter().cloned().chain(self.extended(key)).chain(up.iter().cloned());
        for n in candidates {
            if &n != self.id() && up.contains(&n) && !out.contains(&n) {
                out.push(n);
            }
        }
        out
    }

    /// Stores a large object's body in chunks, then writes its manifest (see UPLOAD).
    pub async fn upload(
        self: &Arc<Self>,
        up: Upload,
        mut body: BodyStream<'_>,
    ) -> Result<(WriteOutcome, Meta), ApiError> {
        let _budget = self.chunks.reserve(UPLOAD_WINDOW + 1)?;
        let targets = self.chunk_targets(&up.key);
        if targets.len() < up.w {
            return Err(ApiError::Unavailable(format!(
                "only {} of the key's nodes are reachable, the write needs {}",
                targets.len(),
                up.w
            )));
        }
        let blob: u64 = rand::random();
        let chunk = CHUNK_SIZE as usize;
        let mut hasher = EtagHasher::new();
        let mut buf = BytesMut::with_capacity(chunk);
        let mut size: u64 = 0;
        let mut index: u32 = 0;
        let mut in_flight: VecDeque<tokio::task::JoinHandle<Result<(), ApiError>>> =
            VecDeque::new();
        let targets = Arc::new(targets);
        let result: Result<(), ApiError> = async {
            while let Some(piece) = body.next().await {
                let piece = piece?;
                hasher.update(&piece);
                size += piece.len() as u64;
                let mut rest = &piece[..];
                while !rest.is_empty() {
                    let take = (chunk - buf.len()).min(rest.len());
                    buf.extend_from_slice(&rest[..take]);
                    rest = &rest[take..];
                    if buf.len() == chunk {
                        let data = buf.split().freeze();
                        buf.reserve(chunk);
                        self.dispatch(&mut in_flight, &up, blob, index, data, &targets).await?;
                        index += 1;
                    }
                }
            }
            if !buf.is_empty() {
                let data = buf.split().freeze();
                self.dispatch(&mut in_flight, &up, blob, index, data, &targets).await?;
            }
            while let Some(h) = in_flight.pop_front() {
                join_chunk(h).await?;
            }
            Ok(())
        }
        .await;
        if let Err(e) = result {
            for h in in_flight {
                h.abort();
            }
            tracing::debug!(key = %up.key.name, blob, error = %e, "upload failed; its chunks are orphans");
            return Err(e);
        }
        let manifest = Chunked { blob, size, chunk_size: CHUNK_SIZE };
        let meta = Meta { size, etag: hasher.finish(), ..up.meta };
        let req = WriteRequest {
            key: up.key,
            op: WriteOp::Put { meta: meta.clone(), body: Body::Chunked(manifest) },
            context: up.context,
            overwrite: up.overwrite,
            w: up.w,
            lww: up.lww,
            excluded: Vec::new(),
        };
        Ok((self.write(req).await?, meta))
    }

    /// Sends one chunk to the targets in a task, first waiting for the oldest in flight when
    /// the window is full.
    async fn dispatch(
        self: &Arc<Self>,
        in_flight: &mut VecDeque<tokio::task::JoinHandle<Result<(), ApiError>>>,
        up: &Upload,
        blob: u64,
        index: u32,
        data: Bytes,
        targets: &Arc<Vec<NodeId>>,
    ) -> Result<(), ApiError> {
        if in_flight.len() >= UPLOAD_WINDOW
            && let Some(h) = in_flight.pop_front()
        {
            join_chunk(h).await?;
        }
        let node = Arc::clone(self);
        let chunk = ChunkKey { key: up.key.clone(), blob, index };
        let targets = Arc::clone(targets);
        let w = up.w;
        in_flight.push_back(tokio::spawn(async move {
            node.replicate_chunk(chunk, data, &targets, w).await
        }));
        Ok(())
    }

    /// Stores one chunk on every target; fails unless at least `w` stored it.
    async fn replicate_chunk(
        self: &Arc<Self>,
        chunk: ChunkKey,
        data: Bytes,
        targets: &[NodeId],
        w: usize,
    ) -> Result<(), ApiError> {
        self.chunks.touch(&chunk.key, chunk.blob);
        let mut payload: Option<Bytes> = None;
        let mut calls = Vec::with_capacity(targets.len());
        for t in targets {
            if t == self.id() {
                let node = Arc::clone(self);
                let (c, d) = (chunk.clone(), data.clone());
                calls.push(futures::future::Either::Left(async move {
                    node.store_chunk(c, d).await.map_err(|e| e.to_string())
                }));
            } else {
                let p = match &payload {
                    Some(p) => p.clone(),
                    None => {
                        let p =
                            Bytes::from(messages::encode_put_chunk(&chunk, &data).map_err(
                                |e| ApiError::Internal(format!("encoding a chunk: {e}")),
                            )?);
                        payload = Some(p.clone());
                        p
                    }
                };
                let node = Arc::clone(self);
                let to = t.clone();
                calls.push(futures::future::Either::Right(async move {
                    match node.rpc(&to, p).await {
                        Ok(Response::Stored) => Ok(()),
                        Ok(Response::Error { message, .. }) => Err(format!("{to}: {message}")),
                        Ok(_) => Err(format!("{to}: unexpected answer")),
                        Err(e) => Err(e.to_string()),
                    }
                }));
            }
        }
        let results = futures::future::join_all(calls).await;
        let stored = results.iter().filter(|r| r.is_ok()).count();
        if stored >= w {
            return Ok(());
        }
        let why: Vec<String> = results.into_iter().filter_map(Result::err).collect();
        Err(ApiError::Unavailable(format!(
            "chunk {} stored on {stored} of the {w} replicas required ({})",
            chunk.index,
            why.join("; ")
        )))
    }

    /// Stores a chunk in the local store, on the blocking pool.
    async fn store_chunk(self: &Arc<Self>, chunk: ChunkKey, data: Bytes) -> Result<(), NodeError> {
        self.chunks.touch(&chunk.key, chunk.blob);
        let node = Arc::clone(self);
        tokio::task::spawn_blocking(move || node.store.put_chunk(&chunk, &data))
            .await
            .map_err(|e| NodeError::Internal(format!("chunk store task: {e}")))??;
        self.chunks.stats.stored.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// One chunk: local when held, else from `sources` in order. Checked against the manifest's
    /// chunk length.
    async fn read_chunk(
        self: &Arc<Self>,
        chunk: &ChunkKey,
        manifest: &Chunked,
        sources: &[NodeId],
    ) -> Result<Bytes, NodeError> {
        let want = manifest.chunk_len(chunk.index);
        self.chunks.touch(&chunk.key, chunk.blob);
        if let Some(b) = self.store.get_chunk(chunk)? {
            if b.len() as u64 == want {
                return Ok(b);
            }
            tracing::warn!(key = %chunk.key.name, blob = chunk.blob, index = chunk.index,
                "stored chunk has the wrong length; fetching it from a peer");
        }
        let req = Request::GetChunk { chunk: chunk.clone() };
        let payload = Bytes::from(
            messages::encode(&req).map_err(|e| NodeError::Internal(format!("encoding: {e}")))?,
        );
        let mut tried = Vec::new();
        for from in sources {
            match self.rpc(from, payload.clone()).await {
                Ok(Response::Chunk { data: Some(d) }) if d.len() as u64 == want => {
                    return Ok(Bytes::from(d));
                }
                Ok(Response::Chunk { data: Some(_) }) => {
                    tried.push(format!("{from}: wrong length"))
                }
                Ok(Response::Chunk { data: None }) => tried.push(format!("{from}: not held")),
                Ok(other) => tried.push(format!("{from}: unexpected {other:?}")),
                Err(e) => tried.push(e.to_string()),
            }
        }
        Err(NodeError::Unavailable(format!(
            "chunk {} of {:?} is on no reachable node ({})",
            chunk.index,
            chunk.key.name,
            if tried.is_empty() { "no node to ask".to_string() } else { tried.join("; ") }
        )))
    }

    /// Streams bytes `range` of a chunked version (see DOWNLOAD).
    pub fn open_content(self: &Arc<Self>, d: Download) -> Result<BodyStream<'static>, ApiError> {
        let budget = self.chunks.reserve(READ_AHEAD + 1)?;
        let sources = Arc::new(self.chunk_sources(&d.key, &d.holders));
        let (start, end) = (d.range.start, d.range.end.min(d.manifest.size));
        let indexes = d.manifest.chunks_for(start, end);
        let node = Arc::clone(self);
        let key = Arc::new(d.key);
        let m = d.manifest;
        let stream = futures::stream::iter(indexes)
            .map(move |index| {
                let (node, key, sources) =
                    (Arc::clone(&node), Arc::clone(&key), Arc::clone(&sources));
                async move {
                    let chunk = ChunkKey { key: (*key).clone(), blob: m.blob, index };
                    let bytes = node.read_chunk(&chunk, &m, &sources).await.map_err(|e| {
                        tracing::warn!(key = %key.name, index, error = %e, "download failed");
                        ApiError::from(e)
                    })?;
                    node.chunks.stats.served.fetch_add(1, Ordering::Relaxed);
                    let at = u64::from(index) * u64::from(m.chunk_size);
                    let lo = start.saturating_sub(at) as usize;
                    let hi = (end - at).min(bytes.len() as u64) as usize;
                    Ok(bytes.slice(lo..hi))
                }
            })
            .buffered(READ_AHEAD)
            .map(move |r| {
                let _held = &budget;
                r
            });
        Ok(Box::pin(stream))
    }

    /// A peer's `PutChunk`, its bytes a window of the received frame (decoded without a copy,
    /// `messages::decode_put_chunk`, which is how every `PutChunk` arrives here).
    pub(crate) async fn serve_put_chunk(
        self: &Arc<Self>,
        chunk: ChunkKey,
        data: Bytes,
        reply: ReplyHandle,
    ) {
        let encoded = match self.store_chunk(chunk, data).await {
            Ok(()) => messages::encode(&Response::Stored),
            Err(e) => messages::encode(&error_response(e)),
        };
        send_reply(reply, encoded);
    }

    /// A peer's `GetChunk`, answered from the store.
    pub(crate) fn serve_get_chunk(&self, chunk: ChunkKey, reply: ReplyHandle) {
        self.chunks.touch(&chunk.key, chunk.blob);
        let encoded = match self.store.get_chunk(&chunk) {
            Ok(data) => {
                if data.is_some() {
                    self.chunks.stats.served.fetch_add(1, Ordering::Relaxed);
                }
                messages::encode_chunk(data.as_deref())
            }
            Err(e) => messages::encode(&error_response(e)),
        };
        send_reply(reply, encoded);
    }

    /// Fetches the chunks this node lacks for the manifests an operation would merge (see the
    /// module documentation). `op` decides whether a version the local replica's history
    /// already covers can be skipped (it will not be kept).
    pub(crate) async fn ensure_chunks(
        self: &Arc<Self>,
        op: &StoreOp,
        incoming: Vec<IncomingManifest>,
    ) -> Result<(), NodeError> {
        let into_replica = !matches!(op, StoreOp::StoreHint { .. });
        let mut done: BTreeSet<(ObjectKey, u64)> = BTreeSet::new();
        for m in incoming {
            if !m.manifest.is_valid() {
                return Err(NodeError::Corrupt(format!(
                    "invalid manifest for {:?}: {:?}",
                    m.key.name, m.manifest
                )));
            }
            if !done.insert((m.key.clone(), m.manifest.blob)) {
                continue;
            }
            // Marks the blob in use before checking what is held: the collector checks the
            // mark again just before it deletes, so it leaves alone a blob a merge is about to
            // reference.
            self.chunks.touch(&m.key, m.manifest.blob);
            if into_replica
                && let Some(dot) = &m.dot
                && self.store.replica(&m.key)?.is_some_and(|s| s.join().contains(dot))
            {
                continue;
            }
            let held = self.store.chunks_held(&m.key, m.manifest.blob);
            let missing: Vec<u32> =
                (0..m.manifest.chunks()).filter(|i| !held.contains(i)).collect();
            if missing.is_empty() {
                continue;
            }
            let sources = self.chunk_sources(&m.key, &[]);
            tracing::debug!(key = %m.key.name, blob = m.manifest.blob, missing = missing.len(),
                "fetching chunks before merging a manifest");
            for index in missing {
                let chunk = ChunkKey { key: m.key.clone(), blob: m.manifest.blob, index };
                let data = self.read_chunk(&chunk, &m.manifest, &sources).await?;
                self.store_chunk(chunk, data).await?;
                self.chunks.stats.fetched.fetch_add(1, Ordering::Relaxed);
            }
        }
        Ok(())
    }

    /// One collection scan over every blob stored here (see COLLECTION); blocking.
    pub(crate) fn collect_chunks(&self, owners: &[NodeId]) -> Result<u64, NodeError> {
        let mut after: Option<Vec<u8>> = None;
        let mut seen = BTreeSet::new();
        let mut deleted = 0;
        loop {
            let (blobs, next) = self.store.chunk_blobs(after.as_deref(), COLLECT_PAGE);
            for (key, blob) in blobs {
                let referenced = self.store.blobs_referenced(&key, owners)?.contains(&blob);
                let now = crate::node::now_ms();
                if self.chunks.tracker.lock().observe(&key, blob, referenced, now) {
                    // Re-checked just before deleting: a merge may have added a reference, or
                    // be about to (it touches the blob first).
                    let still_unreferenced =
                        !self.store.blobs_referenced(&key, owners)?.contains(&blob);
                    let touched = self.chunks.tracker.lock().touched_recently(
                        &key,
                        blob,
                        crate::node::now_ms(),
                    );
                    if still_unreferenced && !touched {
                        let n = self.store.delete_blob(&key, blob)?;
                        deleted += n;
                        self.chunks.stats.chunks_collected.fetch_add(n, Ordering::Relaxed);
                        self.chunks.stats.blobs_collected.fetch_add(1, Ordering::Relaxed);
                        continue;
                    }
                }
                seen.insert((key, blob));
            }
            match next {
                Some(n) => after = Some(n),
                None => break,
            }
        }
        let mut t = self.chunks.tracker.lock();
        t.end_scan(&seen, crate::node::now_ms());
        self.chunks.stats.awaiting.store(t.awaiting() as u64, Ordering::Relaxed);
        self.chunks.stats.scans.fetch_add(1, Ordering::Relaxed);
        Ok(deleted)
    }
}

/// A node error as a peer sees it.
fn error_response(e: NodeError) -> Response {
    Response::Error { code: e.code().into(), message: e.to_string() }
}

/// Completes a peer's chunk request with an encoded answer.
fn send_reply(reply: ReplyHandle, encoded: Result<Vec<u8>, rmp_serde::encode::Error>) {
    let _ = match encoded {
        Ok(b) => reply.reply(Bytes::from(b)),
        Err(e) => reply.reply_error(format!("encoding the answer: {e}")),
    };
}

/// Waits for one chunk's replication task.
async fn join_chunk(h: tokio::task::JoinHandle<Result<(), ApiError>>) -> Result<(), ApiError> {
    h.await.map_err(|e| ApiError::Internal(format!("chunk task: {e}")))?
}

/// Runs [`Node::collect_chunks`] every quarter of the grace (1 s to 60 s apart) until shutdown.
pub async fn run_collector<T: Transport>(
    node: Arc<Node<T>>,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    let every =
        (node.chunks.settings.grace / 4).clamp(Duration::from_secs(1), Duration::from_secs(60));
    loop {
        tokio::select! {
            () = tokio::time::sleep(every) => {}
            r = shutdown.changed() => {
                if r.is_err() || *shutdown.borrow() { break; }
            }
        }
        let mut owners: Vec<NodeId> = node.hints_pending().into_keys().collect();
        if let Some(l) = node.layout() {
            owners.extend(l.voters());
        }
        owners.extend(node.reachable());
        owners.sort();
        owners.dedup();
        let n = Arc::clone(&node);
        match tokio::task::spawn_blocking(move || n.collect_chunks(&owners)).await {
            Ok(Ok(0)) => {}
            Ok(Ok(deleted)) => tracing::info!(chunks = deleted, "collected unreferenced chunks"),
            Ok(Err(e)) => tracing::warn!(error = %e, "chunk collection failed; retrying next scan"),
            Err(e) => tracing::warn!(error = %e, "chunk collection task failed"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(name: &str) -> ObjectKey {
        ObjectKey { bucket: "b".into(), incarnation: 1, name: name.into() }
    }

    #[test]
    fn a_blob_is_deleted_only_after_a_grace_unreferenced_and_untouched() {
        let mut t = OrphanTracker::new(1_000);
        let k = key("a");
        assert!(!t.observe(&k, 1, false, 10_000), "first seen unreferenced: wait");
        assert!(!t.observe(&k, 1, false, 10_999), "not yet a full grace");
        assert!(t.observe(&k, 1, false, 11_000), "a grace unreferenced: delete");
    }

    #[test]
    fn a_reference_seen_restarts_the_grace() {
        let mut t = OrphanTracker::new(1_000);
        let k = key("a");
        assert!(!t.observe(&k, 1, false, 0));
        assert!(!t.observe(&k, 1, true, 900), "referenced (a manifest arrived)");
        assert!(!t.observe(&k, 1, false, 1_500), "unreferenced again: the grace starts again");
        assert!(!t.observe(&k, 1, false, 2_400));
        assert!(t.observe(&k, 1, false, 2_500));
    }

    #[test]
    fn a_touch_holds_a_blob_being_written_or_read() {
        let mut t = OrphanTracker::new(1_000);
        let k = key("a");
        assert!(!t.observe(&k, 7, false, 0));
        t.touch(&k, 7, 1_800);
        assert!(!t.observe(&k, 7, false, 2_000), "touched 200 ms ago (an upload in progress)");
        assert!(!t.observe(&k, 7, false, 2_799));
        assert!(!t.touched_recently(&k, 7, 2_800));
        assert!(t.observe(&k, 7, false, 2_800));
        t.touch(&k, 7, 2_900);
        assert!(t.touched_recently(&k, 7, 3_000), "a merge about to reference it touched it");
        assert!(!t.observe(&k, 7, false, 3_900), "seen unreferenced again: a new grace");
        assert!(t.observe(&k, 7, false, 4_900));
        // Blobs are told apart by object and id.
        assert!(!t.observe(&key("b"), 7, false, 2_800));
        assert!(!t.observe(&k, 8, false, 2_800));
    }

    #[test]
    fn a_scan_forgets_blobs_that_are_gone_and_old_touches() {
        let mut t = OrphanTracker::new(1_000);
        let (a, b) = (key("a"), key("b"));
        t.observe(&a, 1, false, 0);
        t.observe(&b, 1, false, 0);
        t.touch(&a, 2, 0);
        t.end_scan(&BTreeSet::from([(a.clone(), 1)]), 5_000);
        assert_eq!(t.awaiting(), 1);
        assert!(t.touched.is_empty());
        // b was deleted by someone else; seen again later it starts a new grace.
        assert!(!t.observe(&b, 1, false, 5_000));
    }
}
