//! The local replica: sibling sets, hints and the bucket registry in the engine.
//!
//! Every function here is synchronous and may block on disk (with `SyncPolicy::Always` a write
//! waits for the group commit): async callers run them through `spawn_blocking`
//! ([`Store::blocking`]). Each read-merge-write goes through [`Engine::update`], which is atomic
//! per key, so concurrent writers of one key never lose each other's siblings.

use std::sync::Arc;

use cairn_engine::{Engine, Keyspace, Pending, Update, UpdateOutcome};
use cairn_replication::{SetSummary, SiblingSet, VersionVector};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::node::buckets::BucketEntry;
use crate::node::error::NodeError;
use crate::node::keys::{HintKey, ObjectKey};
use crate::node::messages::ListEntry;

/// Most hints read for one owner in one delivery round.
pub const HINT_SCAN_BATCH: usize = 256;

/// The node's local data.
#[derive(Clone)]
pub struct Store {
    /// The engine, shared with the HTTP handlers (reads) and the background tasks (handoff,
    /// registry sync). Dropped last when the node stops, which syncs and releases the lock.
    engine: Arc<Engine>,
}

fn decode_set<V: DeserializeOwned + Clone>(bytes: &[u8]) -> Result<SiblingSet<V>, NodeError> {
    rmp_serde::from_slice(bytes).map_err(|e| NodeError::Corrupt(format!("stored sibling set: {e}")))
}

fn encode_set<V: Serialize + Clone>(set: &SiblingSet<V>) -> Result<Vec<u8>, NodeError> {
    rmp_serde::to_vec(set).map_err(|e| NodeError::Internal(format!("encoding sibling set: {e}")))
}

/// Merges `incoming` into the set stored under (`ks`, `key`) and returns the merged set, once
/// durable. Writes nothing when the merge changes nothing.
fn merge_into<V>(
    engine: &Engine,
    ks: Keyspace,
    key: &[u8],
    incoming: &SiblingSet<V>,
) -> Result<SiblingSet<V>, NodeError>
where
    V: Serialize + DeserializeOwned + Clone + PartialEq,
{
    let (set, pending) = merge_into_deferred(engine, ks, key, incoming)?;
    engine.wait_durable(pending)?;
    Ok(set)
}

/// [`merge_into`] without the durability wait (see [`Engine::update_deferred`]).
fn merge_into_deferred<V>(
    engine: &Engine,
    ks: Keyspace,
    key: &[u8],
    incoming: &SiblingSet<V>,
) -> Result<(SiblingSet<V>, Pending), NodeError>
where
    V: Serialize + DeserializeOwned + Clone + PartialEq,
{
    rewrite_set_deferred(engine, ks, key, |set, existed| {
        let before = set.clone();
        set.merge(incoming);
        Ok(!existed || *set != before)
    })
}

/// Applies `f` to the set stored under (`ks`, `key`) and stores the result; returns it once
/// durable.
fn update_set<V>(
    engine: &Engine,
    ks: Keyspace,
    key: &[u8],
    f: impl FnOnce(&mut SiblingSet<V>) -> Result<(), NodeError>,
) -> Result<SiblingSet<V>, NodeError>
where
    V: Serialize + DeserializeOwned + Clone,
{
    let (set, pending) = rewrite_set_deferred(engine, ks, key, |set, _| f(set).map(|()| true))?;
    engine.wait_durable(pending)?;
    Ok(set)
}

/// The atomic read-modify-write under both: `f` gets the stored set (empty if none) and whether
/// one existed, changes it, and says whether to store it. Returns the resulting set and what to
/// wait for before it may be called durable.
fn rewrite_set_deferred<V>(
    engine: &Engine,
    ks: Keyspace,
    key: &[u8],
    f: impl FnOnce(&mut SiblingSet<V>, bool) -> Result<bool, NodeError>,
) -> Result<(SiblingSet<V>, Pending), NodeError>
where
    V: Serialize + DeserializeOwned + Clone,
{
    let mut result = None;
    let (outcome, pending) = engine.update_deferred(ks, key, |old| {
        let mut set = match old {
            Some(bytes) => decode_set(bytes)?,
            None => SiblingSet::new(),
        };
        let store = f(&mut set, old.is_some())?;
        let update = if store { Update::Put(encode_set(&set)?) } else { Update::Keep };
        result = Some(set);
        Ok::<_, NodeError>(update)
    })?;
    if let UpdateOutcome::Aborted(e) = outcome {
        return Err(e);
    }
    let set = result.ok_or_else(|| NodeError::Internal("update closure did not run".into()))?;
    Ok((set, pending))
}

/// The set stored under (`ks`, `key`), if any.
fn get_set<V>(engine: &Engine, ks: Keyspace, key: &[u8]) -> Result<Option<SiblingSet<V>>, NodeError>
where
    V: DeserializeOwned + Clone,
{
    match engine.get(ks, key)? {
        Some(v) => Ok(Some(decode_set(&v)?)),
        None => Ok(None),
    }
}

impl Store {
    /// Wraps an open engine.
    pub fn new(engine: Arc<Engine>) -> Self {
        Store { engine }
    }

    /// The engine (stats, health).
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// Runs `f` on the blocking pool (engine calls may wait for an fdatasync).
    pub async fn blocking<R, F>(&self, f: F) -> Result<R, NodeError>
    where
        F: FnOnce(&Store) -> Result<R, NodeError> + Send + 'static,
        R: Send + 'static,
    {
        let store = self.clone();
        tokio::task::spawn_blocking(move || f(&store))
            .await
            .map_err(|e| NodeError::Internal(format!("storage task failed: {e}")))?
    }

    /// The coordinator's step of a write: applies `f` (a DVV update by this node's actor) to the
    /// stored set atomically and returns the new set.
    ///
    /// The new set is in the engine and visible to readers when this returns, but not yet
    /// durable: the coordinator sends it to the other replicas while [`Store::durable`]
    /// runs, and counts its own acknowledgement only after that. A crash in between loses the
    /// write here before any client saw it acknowledged by this node; the dot it used is never
    /// reused, because every unclean stop starts a new actor epoch.
    pub fn coordinate(
        &self,
        key: &ObjectKey,
        f: impl FnOnce(&mut SiblingSet) -> Result<(), NodeError>,
    ) -> Result<(SiblingSet, Pending), NodeError> {
        rewrite_set_deferred(&self.engine, Keyspace::Object, &key.encode(), |set, _| {
            f(set).map(|()| true)
        })
    }

    /// Waits until a deferred write is durable per the sync policy: on the blocking pool when an
    /// fdatasync must be waited for, at once when none is needed (`--sync never`/`interval`, or a group commit
    /// already covered the write).
    pub async fn durable(&self, pending: Pending) -> Result<(), NodeError> {
        if self.engine.is_durable(pending) {
            return Ok(());
        }
        self.blocking(move |s| Ok(s.engine.wait_durable(pending)?)).await
    }

    /// [`Store::store_hint`] without the durability wait.
    pub fn store_hint_deferred(
        &self,
        owner: &str,
        key: &ObjectKey,
        set: &SiblingSet,
    ) -> Result<(VersionVector, Pending), NodeError> {
        let hk = HintKey::Object(key.clone()).encode(owner);
        let (set, pending) = merge_into_deferred(&self.engine, Keyspace::Hint, &hk, set)?;
        Ok((set.join(), pending))
    }

    /// Merges a set into this node's replica of `key`; returns the replica's version vector.
    pub fn apply(&self, key: &ObjectKey, set: &SiblingSet) -> Result<VersionVector, NodeError> {
        Ok(merge_into(&self.engine, Keyspace::Object, &key.encode(), set)?.join())
    }

    /// Merges a set into the hint held for `owner`; returns the hint's version vector.
    pub fn store_hint(
        &self,
        owner: &str,
        key: &ObjectKey,
        set: &SiblingSet,
    ) -> Result<VersionVector, NodeError> {
        let hk = HintKey::Object(key.clone()).encode(owner);
        Ok(merge_into(&self.engine, Keyspace::Hint, &hk, set)?.join())
    }

    /// This node's own replica of `key`, without hints.
    pub fn replica(&self, key: &ObjectKey) -> Result<Option<SiblingSet>, NodeError> {
        get_set(&self.engine, Keyspace::Object, &key.encode())
    }

    /// What this node holds for `key`: its replica merged with every hint it holds for the key
    /// (a read during an outage sees data held by fallbacks). `owners` are the ring members.
    ///
    /// Callers on the async runtime call this directly rather than through [`Store::blocking`]:
    /// a read is keydir lookups under a read lock and copies out of the mapped segments, and
    /// never waits for an fdatasync (the group-commit leader syncs outside every lock readers
    /// take). The hand-off to the blocking pool and back cost more than the read (issue 7,
    /// `docs/benchmarks.md`); what remains is a page fault on data not in the page cache.
    pub fn read(
        &self,
        key: &ObjectKey,
        owners: &[String],
    ) -> Result<Option<SiblingSet>, NodeError> {
        let mut out = self.replica(key)?;
        let hint = HintKey::Object(key.clone());
        for owner in owners {
            if let Some(v) = self.engine.get(Keyspace::Hint, &hint.encode(owner))? {
                let set: SiblingSet = decode_set(&v)?;
                match &mut out {
                    Some(s) => s.merge(&set),
                    None => out = Some(set),
                }
            }
        }
        Ok(out)
    }

    /// Every hint held, as (owner, key, version) — to rebuild the hint book at start-up.
    pub fn all_hints(&self) -> Result<Vec<(String, HintKey, VersionVector)>, NodeError> {
        let mut out = Vec::new();
        let mut cursor: Option<Vec<u8>> = None;
        loop {
            let page =
                self.engine.scan_prefix(Keyspace::Hint, b"", cursor.as_deref(), HINT_SCAN_BATCH)?;
            let Some((last, _)) = page.last() else { break };
            cursor = Some(last.clone());
            for (k, v) in &page {
                let Some((owner, hk)) = HintKey::decode(k) else {
                    tracing::warn!(key = ?k, "skipping an unreadable hint key");
                    continue;
                };
                let vv = match &hk {
                    HintKey::Object(_) => decode_set::<cairn_replication::Sibling>(v)?.join(),
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

    /// The hinted object set held for (`owner`, `key`).
    pub fn hinted_object(
        &self,
        owner: &str,
        key: &ObjectKey,
    ) -> Result<Option<SiblingSet>, NodeError> {
        get_set(&self.engine, Keyspace::Hint, &HintKey::Object(key.clone()).encode(owner))
    }

    /// The hinted registry set held for (`owner`, bucket `name`).
    pub fn hinted_bucket(
        &self,
        owner: &str,
        name: &str,
    ) -> Result<Option<SiblingSet<BucketEntry>>, NodeError> {
        get_set(&self.engine, Keyspace::Hint, &HintKey::Bucket(name.to_owned()).encode(owner))
    }

    /// Removes the hint for (`owner`, `key`) if its stored version is covered by `delivered`
    /// (the owner acknowledged at least that much). A newer write merged into the hint while the
    /// delivery was in flight keeps it. Returns whether it was removed.
    pub fn remove_hint_if_delivered(
        &self,
        owner: &str,
        key: &HintKey,
        delivered: &VersionVector,
    ) -> Result<bool, NodeError> {
        let hk = key.encode(owner);
        let outcome = self.engine.update(Keyspace::Hint, &hk, |old| {
            let Some(bytes) = old else { return Ok::<_, NodeError>(Update::Keep) };
            let stored = match key {
                HintKey::Object(_) => decode_set::<cairn_replication::Sibling>(bytes)?.join(),
                HintKey::Bucket(_) => decode_set::<BucketEntry>(bytes)?.join(),
            };
            Ok(if delivered.descends(&stored) { Update::Delete } else { Update::Keep })
        })?;
        match outcome {
            UpdateOutcome::Deleted => Ok(true),
            UpdateOutcome::Aborted(e) => Err(e),
            _ => Ok(false),
        }
    }

    /// The registry entry of bucket `name`.
    pub fn bucket(&self, name: &str) -> Result<Option<SiblingSet<BucketEntry>>, NodeError> {
        get_set(&self.engine, Keyspace::Bucket, name.as_bytes())
    }

    /// Applies a coordinator step to the registry entry of `name`; returns the new set.
    pub fn coordinate_bucket(
        &self,
        name: &str,
        f: impl FnOnce(&mut SiblingSet<BucketEntry>) -> Result<(), NodeError>,
    ) -> Result<SiblingSet<BucketEntry>, NodeError> {
        update_set(&self.engine, Keyspace::Bucket, name.as_bytes(), f)
    }

    /// Merges a registry set into the entry of `name`; returns the merged set.
    pub fn apply_bucket(
        &self,
        name: &str,
        set: &SiblingSet<BucketEntry>,
    ) -> Result<SiblingSet<BucketEntry>, NodeError> {
        merge_into(&self.engine, Keyspace::Bucket, name.as_bytes(), set)
    }

    /// Merges a registry set into the hint held for `owner`.
    pub fn store_bucket_hint(
        &self,
        owner: &str,
        name: &str,
        set: &SiblingSet<BucketEntry>,
    ) -> Result<VersionVector, NodeError> {
        let hk = HintKey::Bucket(name.to_owned()).encode(owner);
        Ok(merge_into(&self.engine, Keyspace::Hint, &hk, set)?.join())
    }

    /// The whole registry.
    pub fn registry(&self) -> Result<Vec<(String, SiblingSet<BucketEntry>)>, NodeError> {
        let mut out = Vec::new();
        let mut cursor: Option<Vec<u8>> = None;
        loop {
            let page = self.engine.scan_prefix(Keyspace::Bucket, b"", cursor.as_deref(), 1024)?;
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

    /// Live objects of one bucket incarnation in this replica, in name order.
    pub fn list(
        &self,
        bucket: &str,
        incarnation: u64,
        prefix: &str,
        start_after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<ListEntry>, NodeError> {
        let base = crate::node::keys::bucket_prefix(bucket, incarnation);
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
            let page =
                self.engine.scan_prefix(Keyspace::Object, &full_prefix, cursor.as_deref(), want)?;
            let Some((last, _)) = page.last() else { break };
            cursor = Some(last.clone());
            let exhausted = page.len() < want;
            for (k, v) in page {
                // Metadata only: the content stays in the mapping, never decoded or copied.
                let summary = SetSummary::from_bytes(&v)
                    .map_err(|e| NodeError::Corrupt(format!("stored sibling set: {e}")))?;
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

    /// Makes every write so far durable.
    pub fn sync(&self) -> Result<(), NodeError> {
        Ok(self.engine.sync()?)
    }
}
