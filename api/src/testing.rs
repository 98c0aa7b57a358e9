//! [`MemoryBackend`]: an in-memory [`Backend`] for tests of the API (and of anything that wants
//! the router without a cluster).
//!
//! It keeps one real [`SiblingSet`] per key, updated with the replication crate's DVV rules, so
//! contexts, siblings, tombstones and `lww` behave as on a node; it simulates replication only
//! in its reports: the preference list is this node plus `r2..rN`, and
//! [`MemoryBackend::set_replicas_up`] decides how many of them "acknowledge". A write or read
//! needing more acknowledgements than are up fails with the 503 quorum error and its partial
//! report, and (unlike a real node, where the replicas that acknowledged keep it) stores
//! nothing. Time is a fake clock that advances one second per write, so tests are
//! deterministic. Knobs: [`MemoryBackend::set_healthy`], [`MemoryBackend::set_panic_on_read`].

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use cairn_replication::{
    Actor, Body, Context, Dot, Hint, Meta, NodeId, ReadReport, Sibling, SiblingSet, Target,
    VersionVector, WriteReport,
};
use serde_json::{Map, Value, json};

use crate::backend::{
    Backend, BucketInfo, BucketReport, ConflictPolicy, DeleteObject, FileEntry, FileList,
    GetObject, Health, ListFiles, PutObject, ReadResult, WriteResult,
};
use crate::error::{ApiError, Result};
use crate::names::{BucketName, ObjectName};

/// Siblings allowed per key before a write is refused with `TooManySiblings`.
pub const SIBLING_LIMIT: usize = 16;
/// Start of the fake clock (2026-11-25T00:00:00Z), in milliseconds since the Unix epoch.
pub const CLOCK_START_MS: u64 = 1_795_564_800_000;

/// Everything the fake stores.
#[derive(Debug, Default)]
struct State {
    buckets: BTreeMap<BucketName, ConflictPolicy>,
    objects: BTreeMap<(BucketName, ObjectName), SiblingSet<Sibling>>,
    replicas_up: usize,
    healthy: bool,
    panic_on_read: bool,
}

/// An in-memory backend; see the module documentation.
#[derive(Debug)]
pub struct MemoryBackend {
    node: NodeId,
    actor: Actor,
    /// The simulated preference list: this node, then `r2..rN`.
    replicas: Vec<NodeId>,
    default_w: usize,
    default_r: usize,
    /// All state. A std `Mutex`: held for a map operation, never across an `.await`; only this
    /// struct touches it.
    state: Mutex<State>,
    /// The fake clock (milliseconds); advanced by one second per write.
    clock_ms: AtomicU64,
}

impl MemoryBackend {
    /// A backend named `node` simulating `n` replicas with default R = W = majority of `n`.
    pub fn new(node: NodeId, n: usize) -> Self {
        let n = n.max(1);
        let mut replicas = vec![node.clone()];
        replicas.extend((2..=n).filter_map(|i| NodeId::new(format!("r{i}")).ok()));
        let majority = n / 2 + 1;
        MemoryBackend {
            actor: Actor::new(node.clone(), 1),
            node,
            replicas,
            default_w: majority,
            default_r: majority,
            state: Mutex::new(State { replicas_up: n, healthy: true, ..State::default() }),
            clock_ms: AtomicU64::new(CLOCK_START_MS),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A panicking test thread may poison the lock; the maps are still consistent (every
        // update is a single insert or remove), so keep going.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// How many replicas of the preference list answer (the rest "fail").
    pub fn set_replicas_up(&self, up: usize) {
        self.lock().replicas_up = up;
    }

    /// What `GET /health` reports.
    pub fn set_healthy(&self, healthy: bool) {
        self.lock().healthy = healthy;
    }

    /// Makes every read panic (to test that a panic becomes a 500 and the router survives).
    pub fn set_panic_on_read(&self, panic: bool) {
        self.lock().panic_on_read = panic;
    }

    /// The stored sibling set of a key, if any (tests check that refused writes stored nothing).
    pub fn stored(&self, bucket: &str, name: &str) -> Option<SiblingSet<Sibling>> {
        let key = (BucketName::new(bucket).ok()?, ObjectName::new(name).ok()?);
        self.lock().objects.get(&key).cloned()
    }

    /// Number of keys stored, in every bucket.
    pub fn object_count(&self) -> usize {
        self.lock().objects.len()
    }

    /// Names of the existing buckets.
    pub fn bucket_names(&self) -> Vec<String> {
        self.lock().buckets.keys().map(|b| b.to_string()).collect()
    }

    fn tick(&self) -> u64 {
        self.clock_ms.fetch_add(1000, Ordering::Relaxed) + 1000
    }

    fn written(&self, up: usize) -> Vec<NodeId> {
        self.replicas.iter().take(up).cloned().collect()
    }

    fn targets(&self) -> Vec<Target> {
        self.replicas.iter().map(|n| Target { node: n.clone(), hint_for: None }).collect()
    }

    /// The write report for `vv` on the `up` first replicas.
    fn write_report(&self, up: usize, w: usize, vv: &VersionVector) -> WriteReport {
        let written = self.written(up);
        WriteReport {
            pref_list: self.replicas.clone(),
            targets: self.targets(),
            vector_clocks: written.iter().map(|n| (n.clone(), vv.clone())).collect(),
            failed: self.replicas.iter().skip(up).cloned().collect(),
            replicas_written: written,
            hinted: Vec::<Hint>::new(),
            timed_out: Vec::new(),
            required: w,
            quorum_reached: up >= w,
        }
    }

    /// Applies a write of `value` under `context` (None = the current history) to a key.
    fn write(
        &self,
        bucket: BucketName,
        name: ObjectName,
        value: Sibling,
        context: Option<Context>,
        w: Option<usize>,
        must_exist: bool,
    ) -> Result<WriteResult> {
        let mut st = self.lock();
        let policy =
            *st.buckets.get(&bucket).ok_or_else(|| ApiError::NoSuchBucket(bucket.to_string()))?;
        let w = w.unwrap_or(self.default_w);
        let up = st.replicas_up.min(self.replicas.len());
        let key = (bucket, name);
        let mut set = st.objects.get(&key).cloned().unwrap_or_default();
        if must_exist && set.is_deleted() {
            let context = (!set.join().is_empty()).then(|| Context(set.join()));
            return Err(ApiError::NoSuchKey { name: key.1.to_string(), context });
        }
        let ctx = context.map(|c| c.0).unwrap_or_else(|| set.join());
        let meta = value.meta.clone();
        let dot: Dot = set.update_limited(&ctx, value, &self.actor, SIBLING_LIMIT)?;
        if policy == ConflictPolicy::Lww {
            set.resolve_lww();
        }
        let vv = set.join();
        if up < w {
            // Report the clocks the acknowledging replicas would hold, but store nothing.
            let report = self.write_report(up, w, &vv);
            return Err(ApiError::write_quorum(self.node.as_str(), report));
        }
        st.objects.insert(key, set);
        Ok(WriteResult {
            node: self.node.to_string(),
            dot,
            meta,
            context: Context(vv.clone()),
            report: self.write_report(up, w, &vv),
        })
    }
}

impl Backend for MemoryBackend {
    fn node_id(&self) -> &str {
        self.node.as_str()
    }

    async fn create_bucket(
        &self,
        bucket: BucketName,
        policy: ConflictPolicy,
    ) -> Result<BucketReport> {
        let mut st = self.lock();
        if st.buckets.contains_key(&bucket) {
            return Err(ApiError::BucketAlreadyExists(bucket.to_string()));
        }
        st.buckets.insert(bucket, policy);
        Ok(BucketReport::default())
    }

    async fn delete_bucket(&self, bucket: BucketName) -> Result<BucketReport> {
        let mut st = self.lock();
        if st.buckets.remove(&bucket).is_none() {
            return Err(ApiError::NoSuchBucket(bucket.to_string()));
        }
        let before = st.objects.len();
        st.objects.retain(|(b, _), _| *b != bucket);
        let mut details = Map::new();
        details.insert("files_deleted".into(), Value::from(before - st.objects.len()));
        Ok(BucketReport { details })
    }

    async fn list_buckets(&self) -> Result<Vec<BucketInfo>> {
        let st = self.lock();
        Ok(st
            .buckets
            .iter()
            .map(|(name, conflict)| BucketInfo { name: name.clone(), conflict: *conflict })
            .collect())
    }

    async fn list_files(&self, req: ListFiles) -> Result<FileList> {
        let st = self.lock();
        if !st.buckets.contains_key(&req.bucket) {
            return Err(ApiError::NoSuchBucket(req.bucket.to_string()));
        }
        let mut files = Vec::new();
        let mut next_cursor = None;
        let live = st.objects.iter().filter(|((b, n), set)| {
            *b == req.bucket
                && n.as_str().starts_with(&req.prefix)
                && req.cursor.as_deref().is_none_or(|c| n.as_str() > c)
                && !set.is_deleted()
        });
        for ((_, name), set) in live {
            if files.len() == req.limit {
                next_cursor = files.last().map(|e: &FileEntry| e.name.to_string());
                break;
            }
            let newest = set
                .siblings()
                .iter()
                .filter(|s| !s.value.is_tombstone())
                .max_by_key(|s| (s.value.meta.timestamp_ms, s.dot.clone()));
            let meta = newest.map(|s| s.value.meta.clone()).unwrap_or_default();
            files.push(FileEntry { name: name.clone(), meta, versions: set.len() });
        }
        Ok(FileList { files, next_cursor })
    }

    async fn put_object(&self, req: PutObject) -> Result<WriteResult> {
        let context = if req.overwrite { None } else { Some(req.context.unwrap_or_default()) };
        let value = Sibling {
            meta: Meta {
                size: req.body.len() as u64,
                content_type: req.content_type,
                etag: req.etag,
                timestamp_ms: self.tick(),
                file_name: req.file_name,
            },
            body: Body::Bytes(req.body.to_vec()),
        };
        self.write(req.bucket, req.name, value, context, req.w, false)
    }

    async fn delete_object(&self, req: DeleteObject) -> Result<WriteResult> {
        let value = Sibling {
            meta: Meta { timestamp_ms: self.tick(), ..Meta::default() },
            body: Body::Tombstone,
        };
        self.write(req.bucket, req.name, value, req.context, req.w, true)
    }

    async fn get_object(&self, req: GetObject) -> Result<ReadResult> {
        let st = self.lock();
        if st.panic_on_read {
            drop(st);
            panic!("MemoryBackend: panic_on_read is set");
        }
        if !st.buckets.contains_key(&req.bucket) {
            return Err(ApiError::NoSuchBucket(req.bucket.to_string()));
        }
        let set = st.objects.get(&(req.bucket, req.name)).cloned().unwrap_or_default();
        let (up, r) = if req.local {
            (1, 1)
        } else {
            (st.replicas_up.min(self.replicas.len()), req.r.unwrap_or(self.default_r))
        };
        let read = self.written(up);
        let report = ReadReport {
            pref_list: self.replicas.clone(),
            targets: self.targets(),
            not_found: if set.is_empty() { read.clone() } else { Vec::new() },
            vector_clocks: read.iter().map(|n| (n.clone(), set.join())).collect(),
            replicas_read: read,
            hinted: Vec::new(),
            read_repair: Vec::new(),
            failed: self.replicas.iter().skip(up).cloned().collect(),
            timed_out: Vec::new(),
            required: r,
            quorum_reached: up >= r,
        };
        if up < r {
            return Err(ApiError::read_quorum(self.node.as_str(), report));
        }
        Ok(ReadResult { node: self.node.to_string(), set, report })
    }

    async fn cluster(&self) -> Result<Value> {
        let up = self.lock().replicas_up;
        let members: Vec<Value> = self
            .replicas
            .iter()
            .enumerate()
            .map(|(i, n)| json!({"id": n.as_str(), "status": if i < up { "up" } else { "down" }}))
            .collect();
        Ok(json!({ "members": members }))
    }

    async fn health(&self) -> Health {
        let healthy = self.lock().healthy;
        let mut details = Map::new();
        details.insert("backend".into(), Value::String("memory".into()));
        Health { healthy, details }
    }

    fn metrics_text(&self) -> String {
        format!(
            "# HELP cairn_memory_objects Keys held by the in-memory test backend.\n\
             # TYPE cairn_memory_objects gauge\ncairn_memory_objects {}\n",
            self.object_count()
        )
    }
}
