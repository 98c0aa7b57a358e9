//! What the node asks of its local store, and the pure functions applied inside it.
//!
//! LOCAL STORE
//! ===========
//! The state machine never touches a disk: it emits a [`StoreOp`] and is told the
//! [`StoreResult`] later (an [`Event::Stored`](super::Event::Stored)). An executor runs the op
//! through [`execute`] on a [`LocalStore`]: the engine-backed store of the `cairn` binary, or the
//! simulator's in-memory store. Both therefore apply exactly the same rules, because the rules
//! live here, as pure functions the store calls under its per-key lock:
//! - [`LocalWrite::apply`]: the coordinator's DVV write (context, overwrite, `lww`, sibling limit);
//! - [`BucketChange::apply`]: creating or deleting a bucket in the registry;
//! - every other mutation is a DVV merge (`SiblingSet::merge`), idempotent and commutative.
//!
//! Durability: every op that changes data returns once it is durable per the sync policy, except
//! [`StoreOp::Coordinate`], which returns as soon as the new set is in the log and visible, with
//! the log sequence number to wait for ([`StoreOp::WaitDurable`]). The coordinator sends the write
//! to the other replicas meanwhile and counts its own acknowledgement only after the wait (a
//! crash in between loses the local copy of a write no client was told this node stored).

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::dvv::{Sibling, SiblingSet};
use crate::error::{Error, Result};
use crate::id::{Actor, NodeId};
use crate::node::buckets::{self, BucketEntry, ConflictPolicy};
use crate::node::cluster::ClusterState;
use crate::node::keys::{HintKey, ObjectKey};
use crate::node::messages::ListEntry;
use crate::vclock::{Dot, VersionVector};

/// The coordinator's step of a client write, applied to the stored set under the key's lock.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalWrite {
    /// The new version (bytes or a tombstone).
    pub value: Sibling,
    /// The causal context the client read (`None`: a blind write).
    pub context: Option<VersionVector>,
    /// Supersede everything the coordinator holds (and what `context` covers).
    pub overwrite: bool,
    /// Resolve by last-writer-wins after the write (`lww` buckets).
    pub lww: bool,
    /// The coordinator's actor: the new dot's.
    pub actor: Actor,
    /// Most siblings the result may hold.
    pub max_siblings: usize,
    /// The new dot's counter is above this: set by the store to the highest counter of any set
    /// it has deleted (collected tombstones, dropped partitions), so that a key whose history is
    /// gone here never gets one of its old dots again. 0 from the protocol.
    pub counter_floor: u64,
}

impl LocalWrite {
    /// Applies the write to `set` (the key's stored set, empty if none) and returns the new dot.
    /// Refused with `TooManySiblings`, `set` unchanged, when the result would hold too many.
    /// Consumes the write: the new version's content moves into the set, never copied.
    pub fn apply(self, set: &mut SiblingSet) -> Result<Dot> {
        // Overwrite: everything this coordinator holds, plus what the request's context covers
        // (a delete without a client context carries its quorum read's).
        let lww = self.lww;
        let ctx = if self.overwrite || self.lww {
            let mut c = set.join();
            if let Some(read) = &self.context {
                c.merge(read);
            }
            c
        } else {
            self.context.unwrap_or_default()
        };
        let dot =
            set.write_above(&ctx, self.value, &self.actor, self.max_siblings, self.counter_floor)?;
        if lww {
            set.resolve_lww();
        }
        Ok(dot)
    }
}

/// A change of the bucket registry coordinated by this node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BucketChange {
    /// Create the bucket (`BucketAlreadyExists` if a live one exists).
    Create {
        /// Random id of the new incarnation (drawn by the executor).
        incarnation: u64,
        /// Conflict policy.
        policy: ConflictPolicy,
        /// Wall-clock creation time, ms since the Unix epoch.
        created_ms: u64,
    },
    /// Delete the bucket (`NoSuchBucket` if none is live).
    Delete {
        /// Wall-clock time of the delete, ms since the Unix epoch.
        at_ms: u64,
    },
}

impl BucketChange {
    /// Applies the change to the registry set of `name`, superseding everything this node holds
    /// for the name (its whole version vector is the context).
    pub fn apply(
        &self,
        name: &str,
        set: &mut SiblingSet<BucketEntry>,
        actor: &Actor,
    ) -> Result<()> {
        let live = buckets::resolve(name, set).is_some();
        let entry = match *self {
            BucketChange::Create { .. } if live => {
                return Err(Error::BucketAlreadyExists(name.to_owned()));
            }
            BucketChange::Delete { .. } if !live => {
                return Err(Error::NoSuchBucket(name.to_owned()));
            }
            BucketChange::Create { incarnation, policy, created_ms } => {
                BucketEntry { incarnation, policy, created_ms, deleted: false }
            }
            BucketChange::Delete { at_ms } => BucketEntry {
                incarnation: 0,
                policy: ConflictPolicy::default(),
                created_ms: at_ms,
                deleted: true,
            },
        };
        let ctx = set.join();
        set.update(&ctx, entry, actor);
        Ok(())
    }
}

/// The data a hint holds: an object's set or a registry entry's set.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum HintSet {
    /// An object's sibling set.
    Object(SiblingSet),
    /// A bucket registry entry's set.
    Bucket(SiblingSet<BucketEntry>),
}

impl HintSet {
    /// The set's version vector.
    pub fn join(&self) -> VersionVector {
        match self {
            HintSet::Object(s) => s.join(),
            HintSet::Bucket(s) => s.join(),
        }
    }
}

/// The local store, as the node's protocol needs it. Every method is synchronous and may block
/// on the disk; every mutation is atomic per key.
pub trait LocalStore {
    /// Applies `write` to the key's set and merges the result into the hint held for each of
    /// `hint_owners`; visible at once, durable only after [`LocalStore::wait_durable`] of the
    /// returned sequence number. Returns the new set, its dot and each hint's version vector.
    fn coordinate(
        &self,
        key: &ObjectKey,
        write: LocalWrite,
        hint_owners: &[NodeId],
    ) -> Result<Coordinated>;

    /// Waits until everything up to `lsn` is durable per the sync policy.
    fn wait_durable(&self, lsn: u64) -> Result<()>;

    /// Merges `set` into the replica of `key`; returns its version vector (durable).
    fn apply(&self, key: &ObjectKey, set: &SiblingSet) -> Result<VersionVector>;

    /// Merges `set` into the hint held for (`owner`, `key`); returns its version vector (durable).
    fn store_hint(&self, owner: &NodeId, key: &HintKey, set: &HintSet) -> Result<VersionVector>;

    /// The replica of `key` merged with every hint held for it for one of `owners`.
    fn read(&self, key: &ObjectKey, owners: &[NodeId]) -> Result<Option<SiblingSet>>;

    /// The hint held for (`owner`, `key`).
    fn hinted(&self, owner: &NodeId, key: &HintKey) -> Result<Option<HintSet>>;

    /// Removes the hint for (`owner`, `key`) if its stored version is covered by `delivered`;
    /// returns whether it was removed.
    fn remove_hint_if_delivered(
        &self,
        owner: &NodeId,
        key: &HintKey,
        delivered: &VersionVector,
    ) -> Result<bool>;

    /// The registry entry of bucket `name`.
    fn bucket(&self, name: &str) -> Result<Option<SiblingSet<BucketEntry>>>;

    /// Applies `change` (by `actor`) to the registry entry of `name`; returns the new set
    /// (durable).
    fn change_bucket(
        &self,
        name: &str,
        change: &BucketChange,
        actor: &Actor,
    ) -> Result<SiblingSet<BucketEntry>>;

    /// Merges `set` into the registry entry of `name`; returns the merged set (durable; writes
    /// nothing when the merge changes nothing).
    fn apply_bucket(
        &self,
        name: &str,
        set: &SiblingSet<BucketEntry>,
    ) -> Result<SiblingSet<BucketEntry>>;

    /// The whole registry.
    fn registry(&self) -> Result<Vec<(String, SiblingSet<BucketEntry>)>>;

    /// Live objects of one bucket incarnation, in name order, after `start_after`, at most
    /// `limit` (names and metadata only).
    fn list(
        &self,
        bucket: &str,
        incarnation: u64,
        prefix: &str,
        start_after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<ListEntry>>;

    /// Every hint held, as (owner, key, version): the hint book is rebuilt from it at start.
    fn all_hints(&self) -> Result<Vec<(NodeId, HintKey, VersionVector)>>;

    /// Stores the node's cluster state (layout, Paxos acceptor, sync cursors) durably, unless a
    /// state with a higher `generation` was stored already (saves may finish out of order).
    fn save_cluster(&self, state: &ClusterState) -> Result<()>;

    /// The replicas of keys in `partitions` (sorted; out of `partitions_total`) — or with
    /// `hints`, the object hints held for them, for any owner — in engine-key order after
    /// `after` (an engine key: [`ObjectKey::encode`], or [`HintKey::encode`] for hints): at most
    /// `max_entries`, stopping after about `max_bytes` of sets, and after looking at
    /// [`SCAN_MAX_KEYS`] keys. Returns them and the cursor of the next page (`None` when the
    /// keyspace is exhausted).
    fn scan_partitions(&self, spec: &ScanSpec<'_>, after: Option<&[u8]>) -> Result<ScanPage>;

    /// Deletes the replicas (not hints) of keys in `partitions` (sorted, out of
    /// `partitions_total`) in engine-key order after `after`, looking at most at
    /// [`SCAN_MAX_KEYS`] keys; returns how many it deleted and the cursor of the next call
    /// (`None` when the keyspace is exhausted).
    fn drop_partitions(
        &self,
        partitions_total: u32,
        partitions: &[u32],
        after: Option<&[u8]>,
    ) -> Result<(u64, Option<Vec<u8>>)>;

    /// [`crate::aae::Trees::hashes`] of the anti-entropy trees of the replicas this store holds
    /// ([`crate::aae`]), which it keeps in step with every change of a replica.
    fn tree_hashes(&self, partition: u32, branches: &[u16]) -> Vec<u64>;

    /// (key, clock digest) of every replica in `segments` of `partition` (out of the trees'
    /// Q), in any order (the exchange sorts both sides' lists before comparing them).
    fn segment_keys(&self, partition: u32, segments: &[u16]) -> Result<Vec<(ObjectKey, u64)>>;

    /// Tombstone-only replicas of keys in `partitions` (sorted; out of the trees' Q) whose newest
    /// delete is older than `grace_ms` by the store's wall clock: (key, the set's version
    /// vector), at most `limit`. One walk over the keys; content is never decoded.
    fn tombstone_candidates(
        &self,
        partitions: &[u32],
        grace_ms: u64,
        limit: usize,
    ) -> Result<Vec<(ObjectKey, VersionVector)>>;

    /// Deletes the replica of each key whose set is still exactly the tombstone-only set with
    /// the given version vector (atomically per key: a write or merge since leaves it), after
    /// durably raising the store's counter floor to the highest counter those sets hold
    /// ([`LocalWrite::counter_floor`]). Returns how many it deleted.
    fn collect_tombstones(&self, keys: &[(ObjectKey, VersionVector)]) -> Result<u64>;

    /// Deletes replicas nobody needs: of bucket incarnations that are no longer live (a key whose
    /// bucket's registry entry here ended its incarnation: [`incarnation_ended`] with
    /// `spec.grace_ms` by the store's wall clock), and — with `spec.owned` — replicas of keys in
    /// partitions this node does not own for which it holds no hint for any of
    /// `spec.hint_owners` (a fallback coordinator's own copy, once its hints are delivered).
    /// Looks at most at [`SCAN_MAX_KEYS`] keys after `after`; returns how many it deleted and
    /// the next cursor (`None`: the keyspace is done). Raises the counter floor like
    /// [`LocalStore::collect_tombstones`].
    fn reclaim(
        &self,
        spec: &ReclaimSpec<'_>,
        after: Option<&[u8]>,
    ) -> Result<(u64, Option<Vec<u8>>)>;

    /// Merges every set into its key's replica; durable when it returns.
    fn apply_batch(&self, entries: &[(ObjectKey, SiblingSet)]) -> Result<()> {
        for (key, set) in entries {
            self.apply(key, set)?;
        }
        Ok(())
    }

    /// Mutant `stale-read-repair` only: replaces the replica of `key` with `set` (no merge).
    /// Only the simulator's store implements it.
    #[cfg(feature = "mutants")]
    fn overwrite(&self, key: &ObjectKey, set: &SiblingSet) -> Result<VersionVector> {
        let _ = (key, set);
        Err(Error::Internal("this store does not run mutants".into()))
    }
}

/// What [`LocalStore::reclaim`] deletes.
#[derive(Debug, Clone, Copy)]
pub struct ReclaimSpec<'a> {
    /// Minimum age of the registry change that ended an incarnation, ms.
    pub grace_ms: u64,
    /// Q.
    pub partitions_total: u32,
    /// The partitions this node owns (sorted), when the layout is stable: replicas of other
    /// partitions without a hint here are deleted. `None`: leave them.
    pub owned: Option<&'a [u32]>,
    /// Every owner a hint may be held for.
    pub hint_owners: &'a [NodeId],
}

impl ReclaimSpec<'_> {
    /// Whether a replica of `key` is a copy this node need not keep because of where it is:
    /// not owned here, and no hint for it held here (`hinted` tells for one owner).
    pub fn unowned_copy(
        &self,
        key: &ObjectKey,
        mut hinted: impl FnMut(&NodeId) -> Result<bool>,
    ) -> Result<bool> {
        let Some(owned) = self.owned else { return Ok(false) };
        if in_partitions(key.hash(), self.partitions_total, owned) {
            return Ok(false);
        }
        for o in self.hint_owners {
            if hinted(o)? {
                return Ok(false);
            }
        }
        Ok(true)
    }
}

/// Whether a sibling of the registry entry `set` is incarnation `incarnation`, alive.
pub fn incarnation_live(set: &SiblingSet<BucketEntry>, incarnation: u64) -> bool {
    set.values().any(|e| !e.deleted && e.incarnation == incarnation)
}

/// Whether the bucket registry entry `entry` (of the object's bucket name, as held here) has
/// ended incarnation `incarnation`: no sibling of it is that incarnation alive, its newest
/// change (a delete or another incarnation's creation) is at least `grace_ms` old at `now_ms`,
/// and the object's newest version (`newest_ms`) is older than that change — so the object
/// cannot belong to an incarnation created after what this registry knows. The rule
/// [`LocalStore::reclaim`] deletes by. No entry: never.
pub fn incarnation_ended(
    entry: Option<&SiblingSet<BucketEntry>>,
    incarnation: u64,
    newest_ms: u64,
    now_ms: u64,
    grace_ms: u64,
) -> bool {
    let Some(set) = entry else { return false };
    if incarnation_live(set, incarnation) {
        return false;
    }
    let Some(changed) = set.values().map(|e| e.created_ms).max() else { return false };
    changed.saturating_add(grace_ms) <= now_ms && newest_ms < changed
}

/// Whether a stored set is still exactly the tombstone-only set with version vector `vv` that
/// every node voted to collect (a write or merge since makes it something else: kept).
pub fn still_collectable(set: &SiblingSet, vv: &VersionVector) -> bool {
    set.join() == *vv && set.live_count() == 0
}

/// The highest counter in a version vector (what a store raises its counter floor to before it
/// deletes a set).
pub fn max_counter(vv: &VersionVector) -> u64 {
    vv.iter().map(|(_, c)| c).max().unwrap_or(0)
}

/// Most keys one [`LocalStore::scan_partitions`] call looks at.
pub const SCAN_MAX_KEYS: usize = 20_000;

/// One page of [`LocalStore::scan_partitions`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ScanPage {
    /// Keys with their replicas' sets.
    pub entries: Vec<(ObjectKey, SiblingSet)>,
    /// The engine key the next page starts after; `None` when the scan is complete.
    pub next: Option<Vec<u8>>,
}

/// What one [`LocalStore::scan_partitions`] call looks for.
#[derive(Debug, Clone, Copy)]
pub struct ScanSpec<'a> {
    /// Q.
    pub partitions_total: u32,
    /// The partitions, sorted.
    pub partitions: &'a [u32],
    /// The object hints (for any owner) instead of the replicas.
    pub hints: bool,
    /// Most objects in the page.
    pub max_entries: usize,
    /// The page ends once about this many bytes of sets are in it.
    pub max_bytes: u64,
}

impl ScanSpec<'_> {
    /// One page from `keys`, engine keys in order after the cursor, at most [`SCAN_MAX_KEYS`]
    /// of them (`exhausted`: they run to the keyspace's end). Keeps the ones whose object is in
    /// the partitions, loading each with `load` (its set and stored size; `None` if it vanished
    /// meanwhile). Every store's scan is this, over its own key order.
    pub fn page(
        &self,
        keys: impl IntoIterator<Item = Vec<u8>>,
        exhausted: bool,
        mut load: impl FnMut(&[u8]) -> Result<Option<(SiblingSet, u64)>>,
    ) -> Result<ScanPage> {
        let mut page = ScanPage::default();
        let mut bytes = 0u64;
        let mut last = None;
        for raw in keys {
            let key = if self.hints {
                match HintKey::decode(&raw) {
                    Some((_, HintKey::Object(o))) => Some(o),
                    _ => None,
                }
            } else {
                ObjectKey::decode(&raw)
            };
            if let Some(key) = key
                && in_partitions(key.hash(), self.partitions_total, self.partitions)
                && let Some((set, size)) = load(&raw)?
            {
                bytes += size;
                page.entries.push((key, set));
            }
            last = Some(raw);
            if page.entries.len() >= self.max_entries || bytes >= self.max_bytes {
                page.next = last;
                return Ok(page);
            }
        }
        page.next = if exhausted { None } else { last };
        Ok(page)
    }
}

/// Whether the key with ring hash `hash` falls in one of `partitions` (sorted) out of
/// `partitions_total` (a power of two).
pub fn in_partitions(hash: u64, partitions_total: u32, partitions: &[u32]) -> bool {
    let bits = partitions_total.trailing_zeros();
    let p = if bits == 0 { 0 } else { u32::try_from(hash >> (64 - bits)).unwrap_or(0) };
    partitions.binary_search(&p).is_ok()
}

/// What [`LocalStore::coordinate`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Coordinated {
    /// The key's set after the write.
    pub set: SiblingSet,
    /// The new version's dot.
    pub dot: Dot,
    /// Each hint owner's hint version vector after the merge, in the order given.
    pub hint_versions: Vec<VersionVector>,
    /// The log position to wait for before the write is durable here.
    pub lsn: u64,
}

/// One request to the local store (see [`LocalStore`] for each one's meaning).
#[derive(Debug, Clone)]
pub enum StoreOp {
    /// [`LocalStore::coordinate`].
    Coordinate {
        /// The object.
        key: ObjectKey,
        /// The write.
        write: LocalWrite,
        /// Owners to keep a hint for.
        hint_owners: Vec<NodeId>,
    },
    /// [`LocalStore::wait_durable`].
    WaitDurable {
        /// Log position.
        lsn: u64,
    },
    /// [`LocalStore::apply`].
    Apply {
        /// The object.
        key: ObjectKey,
        /// The set to merge.
        set: Arc<SiblingSet>,
    },
    /// [`LocalStore::store_hint`].
    StoreHint {
        /// The owner the hint is for.
        owner: NodeId,
        /// What it is for.
        key: HintKey,
        /// The data.
        set: HintSet,
    },
    /// [`LocalStore::read`].
    Read {
        /// The object.
        key: ObjectKey,
        /// Ring members whose hints count.
        owners: Arc<Vec<NodeId>>,
    },
    /// [`LocalStore::hinted`].
    ReadHint {
        /// The owner.
        owner: NodeId,
        /// What the hint is for.
        key: HintKey,
    },
    /// [`LocalStore::remove_hint_if_delivered`].
    RemoveHint {
        /// The owner.
        owner: NodeId,
        /// What the hint is for.
        key: HintKey,
        /// What the owner acknowledged.
        delivered: VersionVector,
    },
    /// [`LocalStore::change_bucket`].
    ChangeBucket {
        /// Bucket name.
        name: String,
        /// The change.
        change: BucketChange,
        /// This node's actor.
        actor: Actor,
    },
    /// [`LocalStore::apply_bucket`].
    ApplyBucket {
        /// Bucket name.
        name: String,
        /// The registry set to merge.
        set: SiblingSet<BucketEntry>,
    },
    /// Merges every entry of a peer's registry (registry anti-entropy); counts those that
    /// changed something here.
    ApplyRegistry {
        /// The peer's registry.
        entries: Vec<(String, SiblingSet<BucketEntry>)>,
    },
    /// [`LocalStore::registry`].
    Registry,
    /// [`LocalStore::list`].
    List {
        /// Bucket name.
        bucket: String,
        /// Bucket incarnation.
        incarnation: u64,
        /// Name prefix.
        prefix: String,
        /// Cursor.
        start_after: Option<String>,
        /// Page size.
        limit: usize,
    },
    /// [`LocalStore::save_cluster`].
    SaveCluster(Box<ClusterState>),
    /// [`LocalStore::scan_partitions`].
    Scan {
        /// Q.
        partitions_total: u32,
        /// The partitions, sorted.
        partitions: Vec<u32>,
        /// Hints instead of replicas.
        hints: bool,
        /// Cursor (an engine key).
        after: Option<Vec<u8>>,
        /// Most objects.
        max_entries: usize,
        /// About the most bytes.
        max_bytes: u64,
    },
    /// [`LocalStore::drop_partitions`].
    DropPartitions {
        /// Q.
        partitions_total: u32,
        /// The partitions, sorted.
        partitions: Vec<u32>,
        /// Cursor (an engine key).
        after: Option<Vec<u8>>,
    },
    /// [`LocalStore::apply_batch`].
    ApplyBatch {
        /// Keys and the sets to merge.
        entries: Vec<(ObjectKey, SiblingSet)>,
    },
    /// [`crate::aae::Trees::hashes`] of the store's trees.
    TreeHashes {
        /// The partition.
        partition: u32,
        /// Branches whose segments are wanted (empty: the branch hashes).
        branches: Vec<u16>,
    },
    /// [`LocalStore::segment_keys`].
    SegmentKeys {
        /// The partition.
        partition: u32,
        /// The segments.
        segments: Vec<u16>,
    },
    /// An anti-entropy repair: merges `entries` (durable), then reads the replicas of `want`
    /// (without hints).
    Repair {
        /// Keys and the sets to merge.
        entries: Vec<(ObjectKey, SiblingSet)>,
        /// Keys to read afterwards.
        want: Vec<ObjectKey>,
    },
    /// The version vectors of the replicas of `keys` (without hints; `None`: none held).
    Versions {
        /// The keys.
        keys: Vec<ObjectKey>,
    },
    /// [`LocalStore::tombstone_candidates`].
    TombstoneCandidates {
        /// The partitions, sorted.
        partitions: Vec<u32>,
        /// Minimum age of the newest delete, ms.
        grace_ms: u64,
        /// Most candidates.
        limit: usize,
    },
    /// [`LocalStore::collect_tombstones`].
    CollectTombstones {
        /// Keys and the exact version vectors of the tombstone-only sets to delete.
        keys: Vec<(ObjectKey, VersionVector)>,
    },
    /// [`LocalStore::reclaim`].
    Reclaim {
        /// Minimum age of the registry entry that ended an incarnation, ms.
        grace_ms: u64,
        /// Q.
        partitions_total: u32,
        /// Owned partitions (sorted), when the layout is stable.
        owned: Option<Vec<u32>>,
        /// Every owner a hint may be held for.
        hint_owners: Vec<NodeId>,
        /// Cursor (an engine key).
        after: Option<Vec<u8>>,
    },
    /// [`LocalStore::overwrite`] (mutant `stale-read-repair` only).
    #[cfg(feature = "mutants")]
    Overwrite {
        /// The object.
        key: ObjectKey,
        /// The set that replaces the replica.
        set: Arc<SiblingSet>,
    },
}

impl StoreOp {
    /// True for short ops that only read: an executor may run them inline (they never wait for
    /// a sync). A partition-sync `Scan` reads too, but up to [`SCAN_MAX_KEYS`] keys and megabytes
    /// of values: it goes where the writes go (the node's blocking pool), off the request path.
    pub fn is_read(&self) -> bool {
        matches!(
            self,
            StoreOp::Read { .. }
                | StoreOp::ReadHint { .. }
                | StoreOp::Registry
                | StoreOp::List { .. }
                | StoreOp::TreeHashes { .. }
        )
    }
}

/// The result of a [`StoreOp`].
#[derive(Debug, Clone)]
pub enum StoreResult {
    /// Of `Coordinate`.
    Coordinated(Coordinated),
    /// Of `WaitDurable`.
    Durable,
    /// Of `Apply`, `StoreHint` (and `Overwrite`): the version vector stored.
    Merged(VersionVector),
    /// Of `Read`.
    Set(Option<SiblingSet>),
    /// Of `ReadHint`.
    Hinted(Option<HintSet>),
    /// Of `RemoveHint`: whether it was removed.
    Removed(bool),
    /// Of `ChangeBucket` and `ApplyBucket`: the registry entry's set.
    Bucket(SiblingSet<BucketEntry>),
    /// Of `ApplyRegistry`: entries that changed.
    Changed(usize),
    /// Of `Registry`.
    Registry(Vec<(String, SiblingSet<BucketEntry>)>),
    /// Of `List`.
    Listing(Vec<ListEntry>),
    /// Of `SaveCluster` and `ApplyBatch`.
    Done,
    /// Of `Scan` and `Repair`.
    Page(ScanPage),
    /// Of `TreeHashes`.
    Hashes(Vec<u64>),
    /// Of `Versions`.
    Versions(Vec<Option<VersionVector>>),
    /// Of `TombstoneCandidates`.
    Tombstones(Vec<(ObjectKey, VersionVector)>),
    /// Of `CollectTombstones`: replicas deleted.
    Collected(u64),
    /// Of `SegmentKeys`.
    Digests(Vec<(ObjectKey, u64)>),
    /// Of `DropPartitions` and `Reclaim`: keys deleted, and the next cursor.
    Dropped(u64, Option<Vec<u8>>),
}

/// A chunked version an operation would merge into the local store: the executor fetches the
/// chunks the store lacks before it runs the operation, so a replica never holds a manifest
/// without its content (`node::chunks`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IncomingManifest {
    /// The object.
    pub key: ObjectKey,
    /// The version's dot (`None` for a coordinator's new write: it has none yet). A replica whose
    /// history already covers the dot will not keep the version, and needs no chunks for it.
    pub dot: Option<crate::vclock::Dot>,
    /// The manifest.
    pub manifest: crate::dvv::Chunked,
}

impl StoreOp {
    /// The chunked versions this operation would merge (see [`IncomingManifest`]).
    pub fn incoming_manifests(&self) -> Vec<IncomingManifest> {
        fn of_set(key: &ObjectKey, set: &SiblingSet, out: &mut Vec<IncomingManifest>) {
            for s in set.siblings() {
                if let Some(m) = s.value.chunked() {
                    out.push(IncomingManifest {
                        key: key.clone(),
                        dot: Some(s.dot.clone()),
                        manifest: *m,
                    });
                }
            }
        }
        let mut out = Vec::new();
        match self {
            StoreOp::Coordinate { key, write, .. } => {
                if let Some(m) = write.value.chunked() {
                    out.push(IncomingManifest { key: key.clone(), dot: None, manifest: *m });
                }
            }
            StoreOp::Apply { key, set } => of_set(key, set, &mut out),
            StoreOp::StoreHint { key: HintKey::Object(key), set: HintSet::Object(set), .. } => {
                of_set(key, set, &mut out)
            }
            StoreOp::ApplyBatch { entries } | StoreOp::Repair { entries, .. } => {
                for (key, set) in entries {
                    of_set(key, set, &mut out);
                }
            }
            _ => {}
        }
        out
    }
}

/// Runs `op` on `store`.
pub fn execute<S: LocalStore + ?Sized>(store: &S, op: StoreOp) -> Result<StoreResult> {
    Ok(match op {
        StoreOp::Coordinate { key, write, hint_owners } => {
            StoreResult::Coordinated(store.coordinate(&key, write, &hint_owners)?)
        }
        StoreOp::WaitDurable { lsn } => {
            store.wait_durable(lsn)?;
            StoreResult::Durable
        }
        StoreOp::Apply { key, set } => StoreResult::Merged(store.apply(&key, &set)?),
        StoreOp::StoreHint { owner, key, set } => {
            StoreResult::Merged(store.store_hint(&owner, &key, &set)?)
        }
        StoreOp::Read { key, owners } => StoreResult::Set(store.read(&key, &owners)?),
        StoreOp::ReadHint { owner, key } => StoreResult::Hinted(store.hinted(&owner, &key)?),
        StoreOp::RemoveHint { owner, key, delivered } => {
            StoreResult::Removed(store.remove_hint_if_delivered(&owner, &key, &delivered)?)
        }
        StoreOp::ChangeBucket { name, change, actor } => {
            StoreResult::Bucket(store.change_bucket(&name, &change, &actor)?)
        }
        StoreOp::ApplyBucket { name, set } => StoreResult::Bucket(store.apply_bucket(&name, &set)?),
        StoreOp::ApplyRegistry { entries } => {
            let mut changed = 0;
            for (name, set) in entries {
                let before = store.bucket(&name)?;
                if before.as_ref().is_none_or(|b| !b.covers(&set)) {
                    store.apply_bucket(&name, &set)?;
                    changed += 1;
                }
            }
            StoreResult::Changed(changed)
        }
        StoreOp::Registry => StoreResult::Registry(store.registry()?),
        StoreOp::List { bucket, incarnation, prefix, start_after, limit } => StoreResult::Listing(
            store.list(&bucket, incarnation, &prefix, start_after.as_deref(), limit)?,
        ),
        StoreOp::SaveCluster(state) => {
            store.save_cluster(&state)?;
            StoreResult::Done
        }
        StoreOp::Scan { partitions_total, partitions, hints, after, max_entries, max_bytes } => {
            let spec = ScanSpec {
                partitions_total,
                partitions: &partitions,
                hints,
                max_entries,
                max_bytes,
            };
            StoreResult::Page(store.scan_partitions(&spec, after.as_deref())?)
        }
        StoreOp::DropPartitions { partitions_total, partitions, after } => {
            let (n, next) =
                store.drop_partitions(partitions_total, &partitions, after.as_deref())?;
            StoreResult::Dropped(n, next)
        }
        StoreOp::ApplyBatch { entries } => {
            store.apply_batch(&entries)?;
            StoreResult::Done
        }
        StoreOp::TreeHashes { partition, branches } => {
            StoreResult::Hashes(store.tree_hashes(partition, &branches))
        }
        StoreOp::SegmentKeys { partition, segments } => {
            StoreResult::Digests(store.segment_keys(partition, &segments)?)
        }
        StoreOp::Versions { keys } => {
            let mut out = Vec::with_capacity(keys.len());
            for key in keys {
                out.push(store.read(&key, &[])?.map(|s| s.join()));
            }
            StoreResult::Versions(out)
        }
        StoreOp::TombstoneCandidates { partitions, grace_ms, limit } => {
            StoreResult::Tombstones(store.tombstone_candidates(&partitions, grace_ms, limit)?)
        }
        StoreOp::CollectTombstones { keys } => {
            StoreResult::Collected(store.collect_tombstones(&keys)?)
        }
        StoreOp::Reclaim { grace_ms, partitions_total, owned, hint_owners, after } => {
            let spec = ReclaimSpec {
                grace_ms,
                partitions_total,
                owned: owned.as_deref(),
                hint_owners: &hint_owners,
            };
            let (n, next) = store.reclaim(&spec, after.as_deref())?;
            StoreResult::Dropped(n, next)
        }
        StoreOp::Repair { entries, want } => {
            if !entries.is_empty() {
                store.apply_batch(&entries)?;
            }
            let mut page = ScanPage::default();
            for key in want {
                if let Some(set) = store.read(&key, &[])? {
                    page.entries.push((key, set));
                }
            }
            StoreResult::Page(page)
        }
        #[cfg(feature = "mutants")]
        StoreOp::Overwrite { key, set } => StoreResult::Merged(store.overwrite(&key, &set)?),
    })
}
