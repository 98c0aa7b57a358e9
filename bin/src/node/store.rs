//! The local replica in the engine: the node protocol's [`LocalStore`].
//!
//! Sibling sets, hints and the bucket registry live in the engine's three keyspaces (key layout:
//! [`cairn_replication::node::keys`]). Every function here is synchronous and may block on disk
//! (with `SyncPolicy::Always` a write waits for the group commit): the executor runs writes on
//! the blocking pool and reads inline. Each read-merge-write goes through [`Engine::update`],
//! which is atomic per key, so concurrent writers of one key never lose each other's siblings;
//! the rules applied inside (the coordinator's DVV write, bucket changes, merges) are the
//! protocol's own pure functions, shared with the simulator's in-memory store.
//!
//! The node's cluster state (layout, Paxos acceptor, sync cursors) is one JSON file in the
//! engine directory, [`CLUSTER_STATE_FILE`], replaced atomically (write, fsync, rename, fsync the
//! directory) on every change; saves that finish out of order never replace a newer state.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::Arc;

use cairn_engine::{Engine, Keyspace, Pending, Update, UpdateOutcome, Value};
use cairn_replication::aae::{self, Trees};
use cairn_replication::node::buckets::BucketEntry;
use cairn_replication::node::keys::{ChunkKey, HintKey, ObjectKey, blob_prefix, bucket_prefix};
use cairn_replication::node::{
    BucketChange, ClusterState, Coordinated, HintSet, ListEntry, LocalStore, LocalWrite, ScanPage,
    in_partitions,
    store::{
        ReclaimSpec, SCAN_MAX_KEYS, ScanSpec, incarnation_ended, incarnation_live, max_counter,
        still_collectable,
    },
};
use cairn_replication::{
    Actor, Error, NodeId, Result, SetSummary, Sibling, SiblingSet, VersionVector,
};
use serde::Serialize;
use serde::de::DeserializeOwned;

/// Most hints read per page when the hint book is rebuilt at start.
pub const HINT_SCAN_BATCH: usize = 256;

/// The cluster state's file name, in the engine directory.
pub const CLUSTER_STATE_FILE: &str = "cluster-state.json";

/// The counter floor's file name, in the engine directory: the highest dot counter of any set
/// this store deleted (one decimal number, replaced durably before the deletes).
pub const COUNTER_FLOOR_FILE: &str = "counter-floor";

/// The node's local data.
#[derive(Clone)]
pub struct Store {
    /// The engine, shared with the HTTP handlers (stats, health) and the executor's tasks.
    /// Dropped last when the node stops, which syncs and releases the directory lock.
    engine: Arc<Engine>,
    /// The directory of the cluster state file.
    dir: PathBuf,
    /// The generation of the cluster state last written.
    saved_generation: Arc<parking_lot::Mutex<u64>>,
    /// Anti-entropy hash trees of the replicas, updated under each key's lock as it changes.
    trees: Arc<Trees>,
    /// How the trees were built at open: (replicas, milliseconds).
    built: (u64, u64),
    /// The counter floor ([`LocalWrite::counter_floor`]), as last stored durably; the lock
    /// serialises raising it.
    floor: Arc<parking_lot::Mutex<u64>>,
}

/// The anti-entropy trees' figures (`/cluster`, `/metrics`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TreeStats {
    /// Partitions with a tree.
    pub partitions: usize,
    /// Memory the trees take, bytes.
    pub memory_bytes: u64,
    /// Replicas the trees hold now.
    pub keys: u64,
    /// Replicas the trees were built from at open.
    pub built_keys: u64,
    /// How long the build at open took, ms.
    pub build_ms: u64,
}

/// An engine error as the protocol sees it (poisoning and size limits keep their meaning).
fn storage(e: cairn_engine::Error) -> Error {
    match e {
        cairn_engine::Error::Poisoned => Error::StoragePoisoned,
        cairn_engine::Error::ValueTooLarge { size, max } => Error::ValueTooLarge { size, max },
        other => Error::Storage(other.to_string()),
    }
}

/// A stored set that does not decode.
fn corrupt(e: Error) -> Error {
    Error::Corrupt(format!("stored sibling set: {e}"))
}

fn decode_set<V: DeserializeOwned + Clone>(bytes: &[u8]) -> Result<SiblingSet<V>> {
    rmp_serde::from_slice(bytes).map_err(|e| Error::Corrupt(format!("stored sibling set: {e}")))
}

fn encode_set<V: Serialize + Clone>(set: &SiblingSet<V>) -> Result<Vec<u8>> {
    rmp_serde::to_vec(set).map_err(|e| Error::Internal(format!("encoding sibling set: {e}")))
}

/// The atomic read-modify-write of one key: `f` gets the stored set (empty if none) and whether
/// one existed, changes it, and says whether to store it. Returns the resulting set and what to
/// wait for before it may be called durable.
fn rewrite_set_deferred<V>(
    engine: &Engine,
    ks: Keyspace,
    key: &[u8],
    f: impl FnOnce(&mut SiblingSet<V>, bool) -> Result<bool>,
) -> Result<(SiblingSet<V>, Pending)>
where
    V: Serialize + DeserializeOwned + Clone,
{
    let mut result = None;
    let (outcome, pending) = engine
        .update_deferred(ks, key, |old| {
            let mut set = match old {
                Some(bytes) => decode_set(bytes)?,
                None => SiblingSet::new(),
            };
            let store = f(&mut set, old.is_some())?;
            let update = if store { Update::Put(encode_set(&set)?) } else { Update::Keep };
            result = Some(set);
            Ok::<_, Error>(update)
        })
        .map_err(storage)?;
    if let UpdateOutcome::Aborted(e) = outcome {
        return Err(e);
    }
    let set = result.ok_or_else(|| Error::Internal("update closure did not run".into()))?;
    Ok((set, pending))
}

/// Merges `incoming` into the set stored under (`ks`, `key`) and returns the merged set, once
/// durable. Writes nothing when the merge changes nothing.
fn merge_into<V>(
    engine: &Engine,
    ks: Keyspace,
    key: &[u8],
    incoming: &SiblingSet<V>,
) -> Result<SiblingSet<V>>
where
    V: Serialize + DeserializeOwned + Clone + PartialEq,
{
    let (set, pending) = merge_into_deferred(engine, ks, key, incoming)?;
    engine.wait_durable(pending).map_err(storage)?;
    Ok(set)
}

/// [`merge_into`] without the durability wait.
fn merge_into_deferred<V>(
    engine: &Engine,
    ks: Keyspace,
    key: &[u8],
    incoming: &SiblingSet<V>,
) -> Result<(SiblingSet<V>, Pending)>
where
    V: Serialize + DeserializeOwned + Clone + PartialEq,
{
    rewrite_set_deferred(engine, ks, key, |set, existed| {
        let before = set.clone();
        set.merge(incoming);
        Ok(!existed || *set != before)
    })
}

/// The set stored under (`ks`, `key`), if any.
fn get_set<V: DeserializeOwned + Clone>(
    engine: &Engine,
    ks: Keyspace,
    key: &[u8],
) -> Result<Option<SiblingSet<V>>> {
    match engine.get(ks, key).map_err(storage)? {
        Some(v) => Ok(Some(decode_set(&v)?)),
        None => Ok(None),
    }
}

impl Store {
    /// Wraps an open engine, for a ring of `partitions` partitions, and builds the anti-entropy
    /// trees from the replicas it holds (decoding only each set's clock, never the content).
    pub fn new(engine: Arc<Engine>, partitions: u32) -> Result<Self> {
        let dir = engine.dir().to_path_buf();
        let mut store = Store {
            engine,
            dir,
            saved_generation: Arc::new(parking_lot::Mutex::new(0)),
            trees: Arc::new(Trees::new(partitions)),
            built: (0, 0),
            floor: Arc::new(parking_lot::Mutex::new(0)),
        };
        let floor_path = store.dir.join(COUNTER_FLOOR_FILE);
        match std::fs::read_to_string(&floor_path) {
            Ok(text) => {
                let f = text
                    .trim()
                    .parse::<u64>()
                    .map_err(|e| Error::Corrupt(format!("{}: {e}", floor_path.display())))?;
                *store.floor.lock() = f;
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(Error::Storage(format!("reading {}: {e}", floor_path.display())));
            }
        }
        let started = std::time::Instant::now();
        let keys = store.build_trees()?;
        store.built = (keys, started.elapsed().as_millis() as u64);
        Ok(store)
    }

    /// Rebuilds the trees from the keydir and the stored sets' clocks.
    fn build_trees(&self) -> Result<u64> {
        self.trees.clear();
        let mut count = 0;
        self.walk_objects(|key, _, v| {
            let digest = cairn_replication::dvv::clock_digest_of_bytes(v).map_err(corrupt)?;
            self.trees.update(key, aae::Change { old: None, new: Some(digest) });
            count += 1;
            Ok(true)
        })?;
        Ok(count)
    }

    /// Calls `f` with every replica (key, engine key, stored bytes), in engine-key order, in
    /// pages of [`SCAN_MAX_KEYS`] keys, until it returns false; `wanted` filters keys before
    /// their value is read (so a walk over one partition reads only that partition's values).
    fn walk_objects_where(
        &self,
        wanted: impl Fn(&ObjectKey) -> bool,
        mut f: impl FnMut(&ObjectKey, &[u8], &[u8]) -> Result<bool>,
    ) -> Result<()> {
        let mut cursor: Option<Vec<u8>> = None;
        loop {
            let keys = self.engine.keys_with_prefix(
                Keyspace::Object,
                b"",
                cursor.as_deref(),
                SCAN_MAX_KEYS,
            );
            let full = keys.len() == SCAN_MAX_KEYS;
            for k in &keys {
                let Some(key) = ObjectKey::decode(k) else { continue };
                if !wanted(&key) {
                    continue;
                }
                if let Some(v) = self.engine.get(Keyspace::Object, k).map_err(storage)?
                    && !f(&key, k, &v)?
                {
                    return Ok(());
                }
            }
            match keys.into_iter().last() {
                Some(last) if full => cursor = Some(last),
                _ => return Ok(()),
            }
        }
    }

    /// [`Store::walk_objects_where`] over every replica.
    fn walk_objects(&self, f: impl FnMut(&ObjectKey, &[u8], &[u8]) -> Result<bool>) -> Result<()> {
        self.walk_objects_where(|_| true, f)
    }

    /// The atomic read-modify-write of one replica (see [`rewrite_set_deferred`]), keeping the
    /// anti-entropy trees in step under the key's lock.
    fn rewrite_object(
        &self,
        key: &ObjectKey,
        f: impl FnOnce(&mut SiblingSet, bool) -> Result<bool>,
    ) -> Result<(SiblingSet, Pending)> {
        let trees = &self.trees;
        rewrite_set_deferred(&self.engine, Keyspace::Object, &key.encode(), |set, existed| {
            let old = existed.then(|| set.clock_digest());
            let store = f(set, existed)?;
            if store {
                trees.update(key, aae::Change { old, new: Some(set.clock_digest()) });
            }
            Ok(store)
        })
    }

    /// Merges `incoming` into the replica of `key` (writes nothing when nothing changes),
    /// without the durability wait.
    fn merge_object_deferred(
        &self,
        key: &ObjectKey,
        incoming: &SiblingSet,
    ) -> Result<(SiblingSet, Pending)> {
        self.rewrite_object(key, |set, existed| {
            let before = set.clone();
            set.merge(incoming);
            Ok(!existed || *set != before)
        })
    }

    /// Raises the counter floor to `to` (durably, before the caller deletes anything).
    fn raise_floor(&self, to: u64) -> Result<()> {
        let mut floor = self.floor.lock();
        if to <= *floor {
            return Ok(());
        }
        crate::node::identity::write_durably(
            &self.dir,
            COUNTER_FLOOR_FILE,
            to.to_string().as_bytes(),
        )
        .map_err(|e| Error::Storage(e.to_string()))?;
        *floor = to;
        Ok(())
    }

    /// The counter floor now.
    pub fn counter_floor(&self) -> u64 {
        *self.floor.lock()
    }

    /// Deletes the replica of `k` (an engine key) if `keep` (given its stored bytes) says not
    /// to keep it, keeping the trees in step; returns whether it deleted it.
    fn delete_object_unless(
        &self,
        key: &ObjectKey,
        k: &[u8],
        keep: impl FnOnce(&[u8]) -> Result<bool>,
    ) -> Result<bool> {
        let mut old = None;
        let outcome = self
            .engine
            .update(Keyspace::Object, k, |v| {
                let Some(bytes) = v else { return Ok::<_, Error>(Update::Keep) };
                if keep(bytes)? {
                    return Ok(Update::Keep);
                }
                old = Some(cairn_replication::dvv::clock_digest_of_bytes(bytes)?);
                Ok(Update::Delete)
            })
            .map_err(storage)?;
        match outcome {
            UpdateOutcome::Deleted => {
                self.trees.update(key, aae::Change { old, new: None });
                Ok(true)
            }
            UpdateOutcome::Aborted(e) => Err(e),
            _ => Ok(false),
        }
    }

    /// Deletes these replicas (key, engine key, the stored set as read), after raising the
    /// counter floor above every counter they hold (their histories are about to go); returns
    /// how many it deleted.
    fn delete_replicas(&self, doomed: Vec<(ObjectKey, Vec<u8>, Value)>) -> Result<u64> {
        let mut floor = 0;
        for (_, _, v) in &doomed {
            let vv = cairn_replication::dvv::version_vector_of_bytes(v).map_err(corrupt)?;
            floor = floor.max(max_counter(&vv));
        }
        self.raise_floor(floor)?;
        let mut dropped = 0;
        for (key, k, _) in doomed {
            dropped += u64::from(self.delete_object_unless(&key, &k, |_| Ok(false))?);
        }
        Ok(dropped)
    }

    /// The anti-entropy trees' figures.
    pub fn tree_stats(&self) -> TreeStats {
        TreeStats {
            partitions: self.trees.allocated(),
            memory_bytes: self.trees.memory_bytes(),
            keys: self.trees.total_keys(),
            built_keys: self.built.0,
            build_ms: self.built.1,
        }
    }

    /// The cluster state stored in the data directory (`None` for a new directory).
    pub fn load_cluster(&self) -> Result<Option<ClusterState>> {
        let path = self.dir.join(CLUSTER_STATE_FILE);
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map(Some).map_err(|e| {
                Error::Corrupt(format!(
                    "{}: {e}; move it away to rejoin as a new node",
                    path.display()
                ))
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Error::Storage(format!("reading {}: {e}", path.display()))),
        }
    }

    /// The engine (stats, health).
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// Whether everything up to `lsn` is already durable (no wait needed).
    pub fn is_durable(&self, lsn: u64) -> bool {
        self.engine.is_durable(Pending::from_lsn(lsn))
    }

    /// This node's own replica of `key`, without hints.
    pub fn replica(&self, key: &ObjectKey) -> Result<Option<SiblingSet>> {
        get_set(&self.engine, Keyspace::Object, &key.encode())
    }

    /// Makes every write so far durable.
    pub fn sync(&self) -> Result<()> {
        self.engine.sync().map_err(storage)
    }

    /// Stores one chunk durably (a chunk's bytes never change, so storing it twice is harmless).
    pub fn put_chunk(&self, chunk: &ChunkKey, data: &[u8]) -> Result<()> {
        self.engine.put(Keyspace::Chunk, &chunk.encode(), data).map_err(storage)
    }

    /// One chunk's bytes, if held: copied out of the mapped segment, whose pages are then
    /// released from the node's resident set (streaming a large object must not grow the RSS by
    /// the file's size; `Engine::get_owned`).
    pub fn get_chunk(&self, chunk: &ChunkKey) -> Result<Option<bytes::Bytes>> {
        self.engine.get_owned(Keyspace::Chunk, &chunk.encode()).map_err(storage)
    }

    /// The indexes of a blob's chunks this store holds (keydir only, no I/O).
    pub fn chunks_held(&self, key: &ObjectKey, blob: u64) -> BTreeSet<u32> {
        let prefix = blob_prefix(key, blob);
        let mut out = BTreeSet::new();
        let mut after: Option<Vec<u8>> = None;
        loop {
            let page =
                self.engine.keys_with_prefix(Keyspace::Chunk, &prefix, after.as_deref(), 4096);
            let Some(last) = page.last().cloned() else { break };
            out.extend(page.iter().filter_map(|k| ChunkKey::decode(k)).map(|c| c.index));
            after = Some(last);
        }
        out
    }

    /// One page of the distinct blobs stored, in key order, after `after` (a chunk engine key):
    /// `(object, blob)` and the cursor for the next page (`None`: the scan is complete).
    pub fn chunk_blobs(
        &self,
        after: Option<&[u8]>,
        limit: usize,
    ) -> (Vec<(ObjectKey, u64)>, Option<Vec<u8>>) {
        let keys = self.engine.keys_with_prefix(Keyspace::Chunk, &[], after, limit);
        let next = (keys.len() == limit).then(|| keys.last().cloned()).flatten();
        let mut out: Vec<(ObjectKey, u64)> = Vec::new();
        for k in &keys {
            if let Some(c) = ChunkKey::decode(k)
                && out.last().is_none_or(|(key, blob)| *key != c.key || *blob != c.blob)
            {
                out.push((c.key, c.blob));
            }
        }
        (out, next)
    }

    /// The blobs the sets of `key` here reference: its replica and its hints for `owners`.
    pub fn blobs_referenced(&self, key: &ObjectKey, owners: &[NodeId]) -> Result<BTreeSet<u64>> {
        let mut out = BTreeSet::new();
        let mut add = |set: &SiblingSet| {
            out.extend(set.siblings().iter().filter_map(|s| s.value.chunked()).map(|c| c.blob));
        };
        if let Some(set) = self.replica(key)? {
            add(&set);
        }
        let hint = HintKey::Object(key.clone());
        for owner in owners {
            if let Some(set) =
                get_set::<Sibling>(&self.engine, Keyspace::Hint, &hint.encode(owner.as_str()))?
            {
                add(&set);
            }
        }
        Ok(out)
    }

    /// Deletes every chunk of a blob; returns how many.
    pub fn delete_blob(&self, key: &ObjectKey, blob: u64) -> Result<u64> {
        let mut n = 0;
        for index in self.chunks_held(key, blob) {
            let ck = ChunkKey { key: key.clone(), blob, index };
            if self.engine.delete(Keyspace::Chunk, &ck.encode()).map_err(storage)? {
                n += 1;
            }
        }
        Ok(n)
    }
}

impl LocalStore for Store {
    /// The new set is in the engine and visible to readers when this returns, but not yet
    /// durable: the coordinator sends it to the other replicas while it waits, and counts its
    /// own acknowledgement only after that. A crash in between loses the write here before any
    /// client saw it acknowledged by this node; the dot it used is never reused, because every
    /// unclean stop starts a new actor epoch.
    fn coordinate(
        &self,
        key: &ObjectKey,
        write: LocalWrite,
        hint_owners: &[NodeId],
    ) -> Result<Coordinated> {
        let mut dot = None;
        let max_siblings = write.max_siblings;
        let mut write = write;
        write.counter_floor = write.counter_floor.max(self.counter_floor());
        let (set, mut pending) = self.rewrite_object(key, |set, _| {
            dot = Some(write.apply(set)?);
            if set.len() > max_siblings / 2 {
                tracing::warn!(
                    key = %key.name, siblings = set.len(), limit = max_siblings,
                    "many concurrent versions: clients should write back with the read's context"
                );
            }
            Ok(true)
        })?;
        let mut hint_versions = Vec::with_capacity(hint_owners.len());
        for owner in hint_owners {
            let hk = HintKey::Object(key.clone()).encode(owner.as_str());
            let (hinted, p) = merge_into_deferred(&self.engine, Keyspace::Hint, &hk, &set)?;
            pending = pending.max(p);
            hint_versions.push(hinted.join());
        }
        let dot = dot.ok_or_else(|| Error::Internal("no dot created".into()))?;
        Ok(Coordinated { set, dot, hint_versions, lsn: pending.lsn() })
    }

    fn wait_durable(&self, lsn: u64) -> Result<()> {
        self.engine.wait_durable(Pending::from_lsn(lsn)).map_err(storage)
    }

    fn apply(&self, key: &ObjectKey, set: &SiblingSet) -> Result<VersionVector> {
        let (merged, pending) = self.merge_object_deferred(key, set)?;
        self.engine.wait_durable(pending).map_err(storage)?;
        Ok(merged.join())
    }

    fn store_hint(&self, owner: &NodeId, key: &HintKey, set: &HintSet) -> Result<VersionVector> {
        let hk = key.encode(owner.as_str());
        Ok(match set {
            HintSet::Object(s) => merge_into(&self.engine, Keyspace::Hint, &hk, s)?.join(),
            HintSet::Bucket(s) => merge_into(&self.engine, Keyspace::Hint, &hk, s)?.join(),
        })
    }

    /// Callers on the async runtime call this directly: a read is keydir lookups under a read
    /// lock and copies out of the mapped segments, and never waits for an fdatasync (the
    /// group-commit leader syncs outside every lock readers take). The hand-off to the blocking
    /// pool and back cost more than the read (issue 7, `docs/benchmarks.md`); what remains is a
    /// page fault on data not in the page cache.
    fn read(&self, key: &ObjectKey, owners: &[NodeId]) -> Result<Option<SiblingSet>> {
        let mut out = self.replica(key)?;
        let hint = HintKey::Object(key.clone());
        for owner in owners {
            if let Some(v) =
                self.engine.get(Keyspace::Hint, &hint.encode(owner.as_str())).map_err(storage)?
            {
                let set: SiblingSet = decode_set(&v)?;
                match &mut out {
                    Some(s) => s.merge(&set),
                    None => out = Some(set),
                }
            }
        }
        Ok(out)
    }

    fn hinted(&self, owner: &NodeId, key: &HintKey) -> Result<Option<HintSet>> {
        let hk = key.encode(owner.as_str());
        Ok(match key {
            HintKey::Object(_) => {
                get_set::<Sibling>(&self.engine, Keyspace::Hint, &hk)?.map(HintSet::Object)
            }
            HintKey::Bucket(_) => {
                get_set::<BucketEntry>(&self.engine, Keyspace::Hint, &hk)?.map(HintSet::Bucket)
            }
        })
    }

    /// A newer write merged into the hint while the delivery was in flight keeps it.
    fn remove_hint_if_delivered(
        &self,
        owner: &NodeId,
        key: &HintKey,
        delivered: &VersionVector,
    ) -> Result<bool> {
        let hk = key.encode(owner.as_str());
        let outcome = self
            .engine
            .update(Keyspace::Hint, &hk, |old| {
                let Some(bytes) = old else { return Ok::<_, Error>(Update::Keep) };
                let stored = match key {
                    HintKey::Object(_) => decode_set::<Sibling>(bytes)?.join(),
                    HintKey::Bucket(_) => decode_set::<BucketEntry>(bytes)?.join(),
                };
                Ok(if delivered.descends(&stored) { Update::Delete } else { Update::Keep })
            })
            .map_err(storage)?;
        match outcome {
            UpdateOutcome::Deleted => Ok(true),
            UpdateOutcome::Aborted(e) => Err(e),
            _ => Ok(false),
        }
    }

    fn bucket(&self, name: &str) -> Result<Option<SiblingSet<BucketEntry>>> {
        get_set(&self.engine, Keyspace::Bucket, name.as_bytes())
    }

    fn change_bucket(
        &self,
        name: &str,
        change: &BucketChange,
        actor: &Actor,
    ) -> Result<SiblingSet<BucketEntry>> {
        let (set, pending) =
            rewrite_set_deferred(&self.engine, Keyspace::Bucket, name.as_bytes(), |set, _| {
                change.apply(name, set, actor)?;
                Ok(true)
            })?;
        self.engine.wait_durable(pending).map_err(storage)?;
        Ok(set)
    }

    fn apply_bucket(
        &self,
        name: &str,
        set: &SiblingSet<BucketEntry>,
    ) -> Result<SiblingSet<BucketEntry>> {
        merge_into(&self.engine, Keyspace::Bucket, name.as_bytes(), set)
    }

    fn registry(&self) -> Result<Vec<(String, SiblingSet<BucketEntry>)>> {
        let mut out = Vec::new();
        let mut cursor: Option<Vec<u8>> = None;
        loop {
            let page = self
                .engine
                .scan_prefix(Keyspace::Bucket, b"", cursor.as_deref(), 1024)
                .map_err(storage)?;
            let Some((last, _)) = page.last() else { break };
            cursor = Some(last.clone());
            let full = page.len() == 1024;
            for (k, v) in page {
                match String::from_utf8(k) {
                    Ok(name) => out.push((name, decode_set(&v)?)),
                    Err(_) => tracing::warn!("skipping a registry entry with a non-UTF-8 name"),
                }
            }
            if !full {
                break;
            }
        }
        Ok(out)
    }

    fn list(
        &self,
        bucket: &str,
        incarnation: u64,
        prefix: &str,
        start_after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<ListEntry>> {
        let base = bucket_prefix(bucket, incarnation);
        let mut full_prefix = base.clone();
        full_prefix.extend_from_slice(prefix.as_bytes());
        let mut cursor = start_after.map(|s| {
            let mut c = base.clone();
            c.extend_from_slice(s.as_bytes());
            c
        });
        let mut entries = Vec::new();
        // Pages, because names whose every sibling is a tombstone are skipped.
        while entries.len() < limit {
            let want = (limit - entries.len()).max(16);
            let page = self
                .engine
                .scan_prefix(Keyspace::Object, &full_prefix, cursor.as_deref(), want)
                .map_err(storage)?;
            let Some((last, _)) = page.last() else { break };
            cursor = Some(last.clone());
            let exhausted = page.len() < want;
            for (k, v) in page {
                // Metadata only: the content stays in the mapping, never decoded or copied.
                let summary = SetSummary::from_bytes(&v).map_err(corrupt)?;
                let versions = summary.live.len();
                let Some(newest) = summary.live.into_iter().max_by_key(|m| m.timestamp_ms) else {
                    continue;
                };
                if let Some(key) = ObjectKey::decode(&k) {
                    entries.push(ListEntry { name: key.name, meta: newest, versions });
                    if entries.len() == limit {
                        break;
                    }
                }
            }
            if exhausted {
                break;
            }
        }
        Ok(entries)
    }

    fn save_cluster(&self, state: &ClusterState) -> Result<()> {
        let mut saved = self.saved_generation.lock();
        if state.generation <= *saved {
            return Ok(());
        }
        let bytes = serde_json::to_vec_pretty(state)
            .map_err(|e| Error::Encode(format!("cluster state: {e}")))?;
        crate::node::identity::write_durably(&self.dir, CLUSTER_STATE_FILE, &bytes)
            .map_err(|e| Error::Storage(e.to_string()))?;
        *saved = state.generation;
        Ok(())
    }

    fn scan_partitions(&self, spec: &ScanSpec<'_>, after: Option<&[u8]>) -> Result<ScanPage> {
        let ks = if spec.hints { Keyspace::Hint } else { Keyspace::Object };
        let keys = self.engine.keys_with_prefix(ks, b"", after, SCAN_MAX_KEYS);
        let exhausted = keys.len() < SCAN_MAX_KEYS;
        spec.page(keys, exhausted, |k| match self.engine.get(ks, k).map_err(storage)? {
            Some(v) => Ok(Some((decode_set(&v)?, v.len() as u64))),
            None => Ok(None),
        })
    }

    fn drop_partitions(
        &self,
        partitions_total: u32,
        partitions: &[u32],
        after: Option<&[u8]>,
    ) -> Result<(u64, Option<Vec<u8>>)> {
        let keys = self.engine.keys_with_prefix(Keyspace::Object, b"", after, SCAN_MAX_KEYS);
        let next = if keys.len() < SCAN_MAX_KEYS { None } else { keys.last().cloned() };
        let mut doomed = Vec::new();
        for k in keys {
            let Some(key) = ObjectKey::decode(&k) else { continue };
            if !in_partitions(key.hash(), partitions_total, partitions) {
                continue;
            }
            if let Some(v) = self.engine.get(Keyspace::Object, &k).map_err(storage)? {
                doomed.push((key, k, v));
            }
        }
        Ok((self.delete_replicas(doomed)?, next))
    }

    /// One durability wait for the whole batch (a group commit), not one per key.
    fn apply_batch(&self, entries: &[(ObjectKey, SiblingSet)]) -> Result<()> {
        let mut last = 0;
        for (key, set) in entries {
            let (_, p) = self.merge_object_deferred(key, set)?;
            last = last.max(p.lsn());
        }
        self.engine.wait_durable(Pending::from_lsn(last)).map_err(storage)?;
        Ok(())
    }

    fn tombstone_candidates(
        &self,
        partitions: &[u32],
        grace_ms: u64,
        limit: usize,
    ) -> Result<Vec<(ObjectKey, VersionVector)>> {
        let q = self.trees.partitions_total();
        let now = crate::node::now_ms();
        let mut out = Vec::new();
        let wanted = |key: &ObjectKey| in_partitions(key.hash(), q, partitions);
        self.walk_objects_where(wanted, |key, _, v| {
            let summary = SetSummary::from_bytes(v).map_err(corrupt)?;
            let old_enough =
                summary.newest_tombstone_ms.is_some_and(|t| t.saturating_add(grace_ms) <= now);
            if summary.live.is_empty() && old_enough {
                let vv = cairn_replication::dvv::version_vector_of_bytes(v).map_err(corrupt)?;
                out.push((key.clone(), vv));
            }
            Ok(out.len() < limit)
        })?;
        Ok(out)
    }

    fn collect_tombstones(&self, keys: &[(ObjectKey, VersionVector)]) -> Result<u64> {
        self.raise_floor(keys.iter().map(|(_, vv)| max_counter(vv)).max().unwrap_or(0))?;
        let mut collected = 0;
        for (key, vv) in keys {
            let gone = self.delete_object_unless(key, &key.encode(), |bytes| {
                Ok(!still_collectable(&decode_set(bytes)?, vv))
            })?;
            collected += u64::from(gone);
        }
        Ok(collected)
    }

    fn reclaim(
        &self,
        spec: &ReclaimSpec<'_>,
        after: Option<&[u8]>,
    ) -> Result<(u64, Option<Vec<u8>>)> {
        let now = crate::node::now_ms();
        let registry: std::collections::HashMap<String, SiblingSet<BucketEntry>> =
            self.registry()?.into_iter().collect();
        let keys = self.engine.keys_with_prefix(Keyspace::Object, b"", after, SCAN_MAX_KEYS);
        let next = if keys.len() < SCAN_MAX_KEYS { None } else { keys.last().cloned() };
        let mut doomed = Vec::new();
        for k in keys {
            let Some(key) = ObjectKey::decode(&k) else { continue };
            let entry = registry.get(&key.bucket);
            let live = entry.is_none_or(|s| incarnation_live(s, key.incarnation));
            let unowned = spec.unowned_copy(&key, |owner| {
                let hk = HintKey::Object(key.clone()).encode(owner.as_str());
                self.engine.get(Keyspace::Hint, &hk).map(|v| v.is_some()).map_err(storage)
            })?;
            // Cheap first: an owned object of a live incarnation is never read.
            if live && !unowned {
                continue;
            }
            let Some(v) = self.engine.get(Keyspace::Object, &k).map_err(storage)? else {
                continue;
            };
            let summary = SetSummary::from_bytes(&v).map_err(corrupt)?;
            let newest = summary
                .live
                .iter()
                .map(|m| m.timestamp_ms)
                .chain(summary.newest_tombstone_ms)
                .max()
                .unwrap_or(0);
            if unowned || incarnation_ended(entry, key.incarnation, newest, now, spec.grace_ms) {
                doomed.push((key, k, v));
            }
        }
        Ok((self.delete_replicas(doomed)?, next))
    }

    fn tree_hashes(&self, partition: u32, branches: &[u16]) -> Vec<u64> {
        self.trees.hashes(partition, branches)
    }

    /// A walk over the keydir (keys only, no values) that reads the sets of the keys in the
    /// segments, decoding only their clocks.
    fn segment_keys(&self, partition: u32, segments: &[u16]) -> Result<Vec<(ObjectKey, u64)>> {
        let q = self.trees.partitions_total();
        let mut wanted = vec![false; aae::SEGMENTS];
        for s in segments {
            if let Some(w) = wanted.get_mut(usize::from(*s)) {
                *w = true;
            }
        }
        let mut out = Vec::new();
        let in_segments = |key: &ObjectKey| {
            let h = key.hash();
            aae::partition_of(h, q) == partition
                && wanted[usize::from(aae::segment_of(h)) % aae::SEGMENTS]
        };
        self.walk_objects_where(in_segments, |key, _, v| {
            out.push((
                key.clone(),
                cairn_replication::dvv::clock_digest_of_bytes(v).map_err(corrupt)?,
            ));
            Ok(true)
        })?;
        Ok(out)
    }

    fn all_hints(&self) -> Result<Vec<(NodeId, HintKey, VersionVector)>> {
        let mut out = Vec::new();
        let mut cursor: Option<Vec<u8>> = None;
        loop {
            let page = self
                .engine
                .scan_prefix(Keyspace::Hint, b"", cursor.as_deref(), HINT_SCAN_BATCH)
                .map_err(storage)?;
            let Some((last, _)) = page.last() else { break };
            cursor = Some(last.clone());
            for (k, v) in &page {
                let Some((owner, hk)) = HintKey::decode(k) else {
                    tracing::warn!(key = ?k, "skipping an unreadable hint key");
                    continue;
                };
                let Ok(owner) = NodeId::new(owner.clone()) else {
                    tracing::warn!(owner, "ignoring hints for an invalid node id");
                    continue;
                };
                let vv = match &hk {
                    HintKey::Object(_) => decode_set::<Sibling>(v)?.join(),
                    HintKey::Bucket(_) => decode_set::<BucketEntry>(v)?.join(),
                };
                out.push((owner, hk, vv));
            }
            if page.len() < HINT_SCAN_BATCH {
                break;
            }
        }
        Ok(out)
    }
}
