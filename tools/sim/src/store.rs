//! The simulated node's local store: an in-memory [`LocalStore`] with the engine's durability
//! rules.
//!
//! DURABILITY
//! ==========
//! The store mirrors `bin/src/node/store.rs` over the engine (objects, hints, the bucket
//! registry; the same pure rules from `cairn_replication::node::store` applied under the key's
//! "lock", which here is simply the single-threaded call). What the engine does with its log
//! is modelled with log sequence numbers:
//! - every write appends one record with the next lsn to a *volatile tail* and is visible to
//!   readers at once (the engine's memory-mapped log: readers see unsynced data);
//! - an fsync ([`MemStore::synced`]) makes every record up to its target lsn durable; a crash
//!   ([`MemStore::crash`]) drops the tail, and what is visible again is exactly what was durable
//!   (a power loss: the page cache is gone too);
//! - under [`SyncPolicy::Always`], an op that "returns once durable" completes only after an
//!   fsync covering the log's end at the time it ran — also when it wrote nothing (the engine's
//!   `Update::Keep` waits for the log end, because the value it saw may itself be unsynced);
//!   [`StoreOp::Coordinate`](cairn_replication::node::StoreOp::Coordinate) completes at once
//!   with its lsn, and `WaitDurable` waits for that lsn. Concurrent waiters share one fsync
//!   (group commit): one runs at a time, targeting the log's end when it starts; waiters it did
//!   not cover start the next one when it finishes;
//! - under [`SyncPolicy::Interval`] and [`SyncPolicy::Never`] every op completes at once (the
//!   engine's `is_durable` is true for them) and a background fsync runs every interval (for
//!   `never`: the OS's writeback, every few seconds), so a crash can lose acknowledged data;
//!   [`MemStore::crash`] says which objects' records it dropped.
//!
//! How long an fsync takes and when ops run is the world's business (`world.rs`); this module
//! only keeps the books, so its rules are unit-tested here.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet, VecDeque};

use cairn_replication::aae::{self, Trees};
use cairn_replication::node::buckets::BucketEntry;
use cairn_replication::node::store::{
    ReclaimSpec, SCAN_MAX_KEYS, ScanSpec, incarnation_ended, max_counter, still_collectable,
};
use cairn_replication::node::{
    BucketChange, ClusterState, Coordinated, HintKey, HintSet, ListEntry, LocalStore, LocalWrite,
    ObjectKey, ReqId, ScanPage, StoreResult, in_partitions,
};
use cairn_replication::{Actor, Error, NodeId, Result, SiblingSet, VersionVector};

/// When the store's log is made durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyncPolicy {
    /// Every op that returns "once durable" waits for a group-commit fsync (the default).
    Always,
    /// A background fsync every this many ms; ops never wait.
    Interval(u64),
    /// No fsync from the write path; the OS writes dirty pages back every this many ms.
    Never(u64),
}

impl SyncPolicy {
    /// The period of the background sync, if any.
    pub fn background_period(self) -> Option<u64> {
        match self {
            SyncPolicy::Always => None,
            SyncPolicy::Interval(ms) | SyncPolicy::Never(ms) => Some(ms),
        }
    }
}

impl std::fmt::Display for SyncPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SyncPolicy::Always => f.write_str("always"),
            SyncPolicy::Interval(ms) => write!(f, "interval:{ms}"),
            SyncPolicy::Never(ms) => write!(f, "never(writeback {ms} ms)"),
        }
    }
}

/// Everything a node stores, as the engine's three keyspaces.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Data {
    objects: BTreeMap<ObjectKey, SiblingSet>,
    hints: BTreeMap<(NodeId, HintKey), HintSet>,
    buckets: BTreeMap<String, SiblingSet<BucketEntry>>,
    /// The counter floor (the engine-backed store's `counter-floor` file).
    floor: u64,
}

/// One log record.
#[derive(Debug, Clone)]
enum Record {
    Object(ObjectKey, SiblingSet),
    /// The replica was deleted (a partition this node no longer owns).
    DropObject(ObjectKey),
    /// `None`: the hint was removed (the engine's tombstone record).
    Hint(NodeId, HintKey, Option<HintSet>),
    Bucket(String, SiblingSet<BucketEntry>),
    /// The counter floor was raised (appended before the deletes it protects, so a crash that
    /// keeps a delete keeps the floor too).
    Floor(u64),
}

impl Data {
    fn apply(&mut self, record: Record) {
        match record {
            Record::Object(k, s) => {
                self.objects.insert(k, s);
            }
            Record::DropObject(k) => {
                self.objects.remove(&k);
            }
            Record::Hint(o, k, Some(s)) => {
                self.hints.insert((o, k), s);
            }
            Record::Hint(o, k, None) => {
                self.hints.remove(&(o, k));
            }
            Record::Bucket(n, s) => {
                self.buckets.insert(n, s);
            }
            Record::Floor(f) => self.floor = self.floor.max(f),
        }
    }
}

#[derive(Debug)]
struct Log {
    /// What readers see: `durable` plus the tail.
    current: Data,
    /// What survives a crash.
    durable: Data,
    /// Records not yet durable, in lsn order.
    tail: VecDeque<(u64, Record)>,
    /// The last lsn appended.
    lsn: u64,
    /// Every record up to here is durable.
    durable_lsn: u64,
    /// Anti-entropy trees of `current`'s replicas: updated as records are appended, rebuilt
    /// after a crash (the engine-backed store rebuilds them when it opens).
    trees: Trees,
}

impl Log {
    fn new(partitions: u32) -> Log {
        Log {
            current: Data::default(),
            durable: Data::default(),
            tail: VecDeque::new(),
            lsn: 0,
            durable_lsn: 0,
            trees: Trees::new(partitions),
        }
    }

    fn append(&mut self, record: Record) {
        self.lsn += 1;
        match &record {
            Record::Object(k, s) => self.trees.replace(k, self.current.objects.get(k), Some(s)),
            Record::DropObject(k) => self.trees.replace(k, self.current.objects.get(k), None),
            _ => {}
        }
        self.current.apply(record.clone());
        self.tail.push_back((self.lsn, record));
    }

    /// Raises the counter floor (a log record, before the deletes that need it).
    fn raise_floor(&mut self, to: u64) {
        if to > self.current.floor {
            self.append(Record::Floor(to));
        }
    }

    /// Rebuilds the trees from the replicas held now.
    fn rebuild_trees(&mut self) {
        self.trees.clear();
        for (k, s) in &self.current.objects {
            self.trees.replace(k, None, Some(s));
        }
    }

    fn merge_hint(&mut self, owner: &NodeId, key: &HintKey, set: &HintSet) -> Result<HintSet> {
        let slot = (owner.clone(), key.clone());
        let existing = self.current.hints.get(&slot);
        let merged = match (existing, set) {
            (None, s) => s.clone(),
            (Some(HintSet::Object(a)), HintSet::Object(b)) => {
                let mut m = a.clone();
                m.merge(b);
                HintSet::Object(m)
            }
            (Some(HintSet::Bucket(a)), HintSet::Bucket(b)) => {
                let mut m = a.clone();
                m.merge(b);
                HintSet::Bucket(m)
            }
            _ => return Err(Error::Corrupt("hint kind does not match its key".into())),
        };
        if existing != Some(&merged) {
            self.append(Record::Hint(owner.clone(), key.clone(), Some(merged.clone())));
        }
        Ok(merged)
    }
}

/// A completed store op waiting for its fsync: (lsn it needs durable, op id, result).
type Waiter = (u64, ReqId, Result<StoreResult>);

/// One node's store (see the module documentation).
#[derive(Debug)]
pub struct MemStore {
    log: RefCell<Log>,
    /// The cluster state file: written durably on every save (write, fsync, rename), so a crash
    /// never loses it.
    cluster: RefCell<Option<ClusterState>>,
    policy: SyncPolicy,
    /// The node's wall clock, ms since the Unix epoch, as the world last set it.
    wall: std::cell::Cell<u64>,
    waiters: Vec<Waiter>,
    /// The target lsn of the fsync running, if one is.
    syncing: Option<u64>,
}

/// What happens to an op that finished executing ([`MemStore::finish`]).
#[derive(Debug)]
pub struct Finish {
    /// The op completes now with this result.
    pub done: Option<(ReqId, Result<StoreResult>)>,
    /// Start an fsync to this lsn (call [`MemStore::synced`] when it is done).
    pub start_sync: Option<u64>,
}

impl MemStore {
    /// An empty store with `policy`, for a ring of `partitions` partitions.
    pub fn new(policy: SyncPolicy, partitions: u32) -> MemStore {
        MemStore {
            log: RefCell::new(Log::new(partitions)),
            cluster: RefCell::new(None),
            policy,
            wall: std::cell::Cell::new(0),
            waiters: Vec::new(),
            syncing: None,
        }
    }

    /// Sets the node's wall clock (before each op the world runs).
    pub fn set_wall(&self, ms: u64) {
        self.wall.set(ms);
    }

    /// Tombstone-only replicas held now.
    pub fn tombstone_only(&self) -> usize {
        self.log.borrow().current.objects.values().filter(|s| s.live_count() == 0).count()
    }

    /// Its sync policy.
    pub fn policy(&self) -> SyncPolicy {
        self.policy
    }

    /// The last lsn appended (the log's end).
    pub fn last_lsn(&self) -> u64 {
        self.log.borrow().lsn
    }

    /// Everything up to this lsn is durable.
    pub fn durable_lsn(&self) -> u64 {
        self.log.borrow().durable_lsn
    }

    /// Records a crash would lose now.
    pub fn unsynced(&self) -> usize {
        self.log.borrow().tail.len()
    }

    /// The engine's `is_durable`: no wait needed for `lsn` (always true unless `Always`).
    pub fn is_durable(&self, lsn: u64) -> bool {
        self.policy != SyncPolicy::Always || lsn <= self.durable_lsn()
    }

    /// Ops waiting for an fsync.
    pub fn waiting(&self) -> usize {
        self.waiters.len()
    }

    /// An op ran; `needed` is the lsn it must see durable before it may complete (0: none).
    /// Either it completes now, or it waits for an fsync (possibly one to start now).
    pub fn finish(&mut self, needed: u64, id: ReqId, result: Result<StoreResult>) -> Finish {
        if needed == 0 || self.is_durable(needed) {
            return Finish { done: Some((id, result)), start_sync: None };
        }
        self.waiters.push((needed, id, result));
        Finish { done: None, start_sync: self.start_sync() }
    }

    /// Starts an fsync of the log's end unless one runs or nothing is unsynced (group commit:
    /// one at a time; writes that arrive meanwhile wait for the next).
    pub fn start_sync(&mut self) -> Option<u64> {
        let (lsn, durable) = (self.last_lsn(), self.durable_lsn());
        if self.syncing.is_some() || lsn <= durable {
            return None;
        }
        self.syncing = Some(lsn);
        Some(lsn)
    }

    /// The fsync to `lsn` finished: records up to it are durable. Returns the waiters it
    /// completed (in the order they started waiting) and the next fsync to start, if waiters
    /// remain.
    pub fn synced(&mut self, lsn: u64) -> (Vec<(ReqId, Result<StoreResult>)>, Option<u64>) {
        {
            let mut log = self.log.borrow_mut();
            while log.tail.front().is_some_and(|(l, _)| *l <= lsn) {
                if let Some((_, record)) = log.tail.pop_front() {
                    log.durable.apply(record);
                }
            }
            log.durable_lsn = log.durable_lsn.max(lsn);
        }
        self.syncing = None;
        let durable = self.durable_lsn();
        let (done, waiting): (Vec<Waiter>, Vec<Waiter>) =
            std::mem::take(&mut self.waiters).into_iter().partition(|(l, _, _)| *l <= durable);
        self.waiters = waiting;
        let next = if self.waiters.is_empty() { None } else { self.start_sync() };
        (done.into_iter().map(|(_, id, r)| (id, r)).collect(), next)
    }

    /// Makes everything durable at once (a clean stop's final sync).
    pub fn sync_all(&mut self) {
        let lsn = self.last_lsn();
        let _ = self.synced(lsn);
    }

    /// A crash (power loss): the volatile tail is gone, and so are the ops waiting for an
    /// fsync and the fsync running. Returns how many records were lost and the objects they
    /// were for (replica or hint records).
    pub fn crash(&mut self) -> (usize, BTreeSet<ObjectKey>) {
        self.waiters.clear();
        self.syncing = None;
        let mut log = self.log.borrow_mut();
        let lost = log.tail.len();
        let keys = std::mem::take(&mut log.tail)
            .into_iter()
            .filter_map(|(_, r)| match r {
                Record::Object(k, _) | Record::Hint(_, HintKey::Object(k), _) => Some(k),
                _ => None,
            })
            .collect();
        log.current = log.durable.clone();
        log.lsn = log.durable_lsn;
        log.rebuild_trees();
        (lost, keys)
    }

    /// The cluster state stored (what a restart reads).
    pub fn cluster_state(&self) -> Option<ClusterState> {
        self.cluster.borrow().clone()
    }

    /// Every replica (no hints) this store holds now.
    pub fn objects(&self) -> BTreeMap<ObjectKey, SiblingSet> {
        self.log.borrow().current.objects.clone()
    }

    /// This node's own replica of `key` (no hints).
    pub fn replica(&self, key: &ObjectKey) -> Option<SiblingSet> {
        self.log.borrow().current.objects.get(key).cloned()
    }

    /// Hints held (what `all_hints()` would list).
    pub fn all_hint_count(&self) -> usize {
        self.log.borrow().current.hints.len()
    }

    /// Whether the anti-entropy trees, as maintained write by write, equal trees rebuilt from
    /// the replicas held now (the engine-backed store rebuilds them at every start).
    pub fn trees_match_replicas(&self) -> bool {
        let log = self.log.borrow();
        let fresh = Trees::new(log.trees.partitions_total());
        for (k, s) in &log.current.objects {
            fresh.replace(k, None, Some(s));
        }
        let all: Vec<u16> = (0..aae::BRANCHES as u16).collect();
        (0..log.trees.partitions_total()).all(|p| {
            log.trees.hashes(p, &all) == fresh.hashes(p, &all) && log.trees.keys(p) == fresh.keys(p)
        })
    }

    /// The bucket registry as it is now.
    pub fn registry_snapshot(&self) -> BTreeMap<String, SiblingSet<BucketEntry>> {
        self.log.borrow().current.buckets.clone()
    }
}

impl LocalStore for MemStore {
    fn coordinate(
        &self,
        key: &ObjectKey,
        write: LocalWrite,
        hint_owners: &[NodeId],
    ) -> Result<Coordinated> {
        let mut log = self.log.borrow_mut();
        let mut set = log.current.objects.get(key).cloned().unwrap_or_default();
        let mut write = write;
        write.counter_floor = write.counter_floor.max(log.current.floor);
        let dot = write.apply(&mut set)?;
        log.append(Record::Object(key.clone(), set.clone()));
        let mut hint_versions = Vec::with_capacity(hint_owners.len());
        let hint = HintSet::Object(set.clone());
        for owner in hint_owners {
            let merged = log.merge_hint(owner, &HintKey::Object(key.clone()), &hint)?;
            hint_versions.push(merged.join());
        }
        Ok(Coordinated { set, dot, hint_versions, lsn: log.lsn })
    }

    fn wait_durable(&self, _lsn: u64) -> Result<()> {
        // The wait itself is the world's: `MemStore::finish` holds the op's completion.
        Ok(())
    }

    fn apply(&self, key: &ObjectKey, set: &SiblingSet) -> Result<VersionVector> {
        let mut log = self.log.borrow_mut();
        let existing = log.current.objects.get(key);
        let mut merged = existing.cloned().unwrap_or_default();
        merged.merge(set);
        if existing != Some(&merged) {
            log.append(Record::Object(key.clone(), merged.clone()));
        }
        Ok(merged.join())
    }

    fn store_hint(&self, owner: &NodeId, key: &HintKey, set: &HintSet) -> Result<VersionVector> {
        Ok(self.log.borrow_mut().merge_hint(owner, key, set)?.join())
    }

    fn read(&self, key: &ObjectKey, owners: &[NodeId]) -> Result<Option<SiblingSet>> {
        let log = self.log.borrow();
        let mut out = log.current.objects.get(key).cloned();
        let hk = HintKey::Object(key.clone());
        for owner in owners {
            if let Some(HintSet::Object(s)) = log.current.hints.get(&(owner.clone(), hk.clone())) {
                match &mut out {
                    Some(o) => o.merge(s),
                    None => out = Some(s.clone()),
                }
            }
        }
        Ok(out)
    }

    fn hinted(&self, owner: &NodeId, key: &HintKey) -> Result<Option<HintSet>> {
        Ok(self.log.borrow().current.hints.get(&(owner.clone(), key.clone())).cloned())
    }

    fn remove_hint_if_delivered(
        &self,
        owner: &NodeId,
        key: &HintKey,
        delivered: &VersionVector,
    ) -> Result<bool> {
        let mut log = self.log.borrow_mut();
        let slot = (owner.clone(), key.clone());
        let covered = log.current.hints.get(&slot).is_some_and(|h| delivered.descends(&h.join()));
        if covered {
            log.append(Record::Hint(owner.clone(), key.clone(), None));
        }
        Ok(covered)
    }

    fn bucket(&self, name: &str) -> Result<Option<SiblingSet<BucketEntry>>> {
        Ok(self.log.borrow().current.buckets.get(name).cloned())
    }

    fn change_bucket(
        &self,
        name: &str,
        change: &BucketChange,
        actor: &Actor,
    ) -> Result<SiblingSet<BucketEntry>> {
        let mut log = self.log.borrow_mut();
        let mut set = log.current.buckets.get(name).cloned().unwrap_or_default();
        change.apply(name, &mut set, actor)?;
        log.append(Record::Bucket(name.to_owned(), set.clone()));
        Ok(set)
    }

    fn apply_bucket(
        &self,
        name: &str,
        set: &SiblingSet<BucketEntry>,
    ) -> Result<SiblingSet<BucketEntry>> {
        let mut log = self.log.borrow_mut();
        let existing = log.current.buckets.get(name);
        let mut merged = existing.cloned().unwrap_or_default();
        merged.merge(set);
        if existing != Some(&merged) {
            log.append(Record::Bucket(name.to_owned(), merged.clone()));
        }
        Ok(merged)
    }

    fn registry(&self) -> Result<Vec<(String, SiblingSet<BucketEntry>)>> {
        Ok(self.log.borrow().current.buckets.iter().map(|(n, s)| (n.clone(), s.clone())).collect())
    }

    fn list(
        &self,
        bucket: &str,
        incarnation: u64,
        prefix: &str,
        start_after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<ListEntry>> {
        let log = self.log.borrow();
        let mut out = Vec::new();
        for (key, set) in &log.current.objects {
            if out.len() >= limit {
                break;
            }
            if key.bucket != bucket
                || key.incarnation != incarnation
                || !key.name.starts_with(prefix)
                || start_after.is_some_and(|s| key.name.as_str() <= s)
            {
                continue;
            }
            let versions = set.live_count();
            // Like the engine's: the newest live version by timestamp (the last of equals).
            let Some(newest) =
                set.live().map(|s| s.value.meta.clone()).max_by_key(|m| m.timestamp_ms)
            else {
                continue;
            };
            out.push(ListEntry { name: key.name.clone(), meta: newest, versions });
        }
        Ok(out)
    }

    fn all_hints(&self) -> Result<Vec<(NodeId, HintKey, VersionVector)>> {
        Ok(self
            .log
            .borrow()
            .current
            .hints
            .iter()
            .map(|((o, k), s)| (o.clone(), k.clone(), s.join()))
            .collect())
    }

    fn save_cluster(&self, state: &ClusterState) -> Result<()> {
        let mut c = self.cluster.borrow_mut();
        if c.as_ref().is_none_or(|old| old.generation < state.generation) {
            *c = Some(state.clone());
        }
        Ok(())
    }

    fn scan_partitions(&self, spec: &ScanSpec<'_>, after: Option<&[u8]>) -> Result<ScanPage> {
        let log = self.log.borrow();
        // The engine's order: by encoded key.
        let all: BTreeMap<Vec<u8>, &SiblingSet> = if spec.hints {
            log.current
                .hints
                .iter()
                .filter_map(|((owner, k), set)| match set {
                    HintSet::Object(s) => Some((k.encode(owner.as_str()), s)),
                    HintSet::Bucket(_) => None,
                })
                .collect()
        } else {
            log.current.objects.iter().map(|(k, s)| (k.encode(), s)).collect()
        };
        let keys: Vec<Vec<u8>> = all
            .keys()
            .filter(|raw| after.is_none_or(|a| raw.as_slice() > a))
            .take(SCAN_MAX_KEYS)
            .cloned()
            .collect();
        let exhausted = keys.len() < SCAN_MAX_KEYS;
        spec.page(keys, exhausted, |raw| {
            Ok(all.get(raw).map(|s| ((*s).clone(), s.to_bytes().map_or(0, |b| b.len() as u64))))
        })
    }

    fn drop_partitions(
        &self,
        partitions_total: u32,
        partitions: &[u32],
        after: Option<&[u8]>,
    ) -> Result<(u64, Option<Vec<u8>>)> {
        // One call does the whole keyspace (the simulated stores are small).
        let _ = after;
        let mut log = self.log.borrow_mut();
        let doomed: Vec<ObjectKey> = log
            .current
            .objects
            .keys()
            .filter(|k| in_partitions(k.hash(), partitions_total, partitions))
            .cloned()
            .collect();
        let floor = doomed
            .iter()
            .filter_map(|k| log.current.objects.get(k))
            .map(|s| max_counter(&s.join()))
            .max()
            .unwrap_or(0);
        log.raise_floor(floor);
        for k in &doomed {
            log.append(Record::DropObject(k.clone()));
        }
        Ok((doomed.len() as u64, None))
    }

    fn tombstone_candidates(
        &self,
        partitions: &[u32],
        grace_ms: u64,
        limit: usize,
    ) -> Result<Vec<(ObjectKey, VersionVector)>> {
        let log = self.log.borrow();
        let q = log.trees.partitions_total();
        let now = self.wall.get();
        Ok(log
            .current
            .objects
            .iter()
            .filter(|(k, s)| {
                let newest = s
                    .siblings()
                    .iter()
                    .filter(|d| d.value.is_tombstone())
                    .map(|d| d.value.meta.timestamp_ms)
                    .max();
                in_partitions(k.hash(), q, partitions)
                    && s.live_count() == 0
                    && newest.is_some_and(|t| t.saturating_add(grace_ms) <= now)
            })
            .take(limit)
            .map(|(k, s)| (k.clone(), s.join()))
            .collect())
    }

    fn collect_tombstones(&self, keys: &[(ObjectKey, VersionVector)]) -> Result<u64> {
        let mut log = self.log.borrow_mut();
        log.raise_floor(keys.iter().map(|(_, vv)| max_counter(vv)).max().unwrap_or(0));
        let mut n = 0;
        for (key, vv) in keys {
            let exact = log.current.objects.get(key).is_some_and(|s| still_collectable(s, vv));
            if exact {
                log.append(Record::DropObject(key.clone()));
                n += 1;
            }
        }
        Ok(n)
    }

    fn reclaim(
        &self,
        spec: &ReclaimSpec<'_>,
        after: Option<&[u8]>,
    ) -> Result<(u64, Option<Vec<u8>>)> {
        // One call does the whole keyspace (the simulated stores are small).
        let _ = after;
        let now = self.wall.get();
        let mut log = self.log.borrow_mut();
        let mut doomed: Vec<(ObjectKey, u64)> = Vec::new();
        for (k, s) in &log.current.objects {
            let newest = s.values().map(|v| v.meta.timestamp_ms).max().unwrap_or(0);
            let buckets = &log.current.buckets;
            let hints = &log.current.hints;
            let unowned = spec.unowned_copy(k, |owner| {
                Ok(hints.contains_key(&(owner.clone(), HintKey::Object(k.clone()))))
            })?;
            if unowned
                || incarnation_ended(
                    buckets.get(&k.bucket),
                    k.incarnation,
                    newest,
                    now,
                    spec.grace_ms,
                )
            {
                doomed.push((k.clone(), max_counter(&s.join())));
            }
        }
        log.raise_floor(doomed.iter().map(|(_, c)| *c).max().unwrap_or(0));
        for (k, _) in &doomed {
            log.append(Record::DropObject(k.clone()));
        }
        Ok((doomed.len() as u64, None))
    }

    fn tree_hashes(&self, partition: u32, branches: &[u16]) -> Vec<u64> {
        self.log.borrow().trees.hashes(partition, branches)
    }

    fn segment_keys(&self, partition: u32, segments: &[u16]) -> Result<Vec<(ObjectKey, u64)>> {
        let log = self.log.borrow();
        let q = log.trees.partitions_total();
        let wanted: BTreeSet<u16> = segments.iter().copied().collect();
        Ok(log
            .current
            .objects
            .iter()
            .filter(|(k, _)| {
                let h = k.hash();
                aae::partition_of(h, q) == partition && wanted.contains(&aae::segment_of(h))
            })
            .map(|(k, s)| (k.clone(), s.clock_digest()))
            .collect())
    }

    #[cfg(feature = "mutants")]
    fn overwrite(&self, key: &ObjectKey, set: &SiblingSet) -> Result<VersionVector> {
        // Mutant `stale-read-repair`: a plain replace.
        self.log.borrow_mut().append(Record::Object(key.clone(), set.clone()));
        Ok(set.join())
    }
}

#[cfg(test)]
mod tests {
    use cairn_replication::node::StoreOp;
    use cairn_replication::node::execute;
    use cairn_replication::{Meta, Sibling};

    use super::*;

    fn node(n: &str) -> NodeId {
        NodeId::new(n).unwrap()
    }

    fn key(name: &str) -> ObjectKey {
        ObjectKey { bucket: "b".into(), incarnation: 1, name: name.into() }
    }

    fn write(v: &str) -> LocalWrite {
        LocalWrite {
            value: Sibling::bytes(Meta::default(), v.as_bytes().to_vec()),
            context: None,
            overwrite: false,
            lww: false,
            actor: Actor::new(node("n1"), 1),
            max_siblings: 64,
            counter_floor: 0,
        }
    }

    fn coordinated(s: &MemStore, k: &str, v: &str, hint_owners: &[NodeId]) -> Coordinated {
        s.coordinate(&key(k), write(v), hint_owners).unwrap()
    }

    #[test]
    fn writes_are_visible_at_once_and_lost_by_a_crash_before_their_fsync() {
        let mut s = MemStore::new(SyncPolicy::Always, 16);
        let c = coordinated(&s, "a", "1", &[]);
        assert_eq!(c.lsn, 1);
        assert_eq!(s.replica(&key("a")).unwrap().len(), 1, "visible before the fsync");
        assert_eq!(s.unsynced(), 1);
        assert_eq!(s.crash(), (1, BTreeSet::from([key("a")])));
        assert_eq!(s.replica(&key("a")), None, "the unsynced tail is gone");
        // After an fsync it survives.
        let c = coordinated(&s, "a", "2", &[]);
        let (done, next) = s.synced(c.lsn);
        assert!(done.is_empty() && next.is_none());
        assert_eq!(s.crash().0, 0);
        assert_eq!(s.replica(&key("a")).unwrap().len(), 1);
    }

    #[test]
    fn an_fsync_covers_exactly_the_records_up_to_its_lsn() {
        let mut s = MemStore::new(SyncPolicy::Always, 16);
        let a = coordinated(&s, "a", "1", &[]);
        let b = coordinated(&s, "b", "1", &[]);
        assert_eq!((a.lsn, b.lsn), (1, 2));
        s.synced(a.lsn);
        assert_eq!(s.durable_lsn(), 1);
        s.crash();
        assert!(s.replica(&key("a")).is_some());
        assert!(s.replica(&key("b")).is_none());
        // The log continues from the durable end.
        assert_eq!(coordinated(&s, "c", "1", &[]).lsn, 2);
    }

    #[test]
    fn under_always_an_op_completes_only_after_an_fsync_covering_the_log_end() {
        let mut s = MemStore::new(SyncPolicy::Always, 16);
        let c = coordinated(&s, "a", "1", &[]);
        // A replica merge that changes nothing still waits: what it saw is unsynced.
        let set = s.replica(&key("a")).unwrap();
        let before = s.last_lsn();
        let r = execute(&s, StoreOp::Apply { key: key("a"), set: set.into() });
        assert_eq!(s.last_lsn(), before, "nothing appended");
        let f = s.finish(s.last_lsn(), ReqId(7), r);
        assert!(f.done.is_none(), "an unchanged merge must not complete before the fsync");
        assert_eq!(f.start_sync, Some(c.lsn), "group commit starts an fsync of the log end");
        // A second waiter joins the running fsync's group only if covered; a later write waits
        // for the next one.
        let w = s.finish(c.lsn, ReqId(8), Ok(StoreResult::Durable));
        assert!(w.done.is_none() && w.start_sync.is_none(), "one fsync at a time");
        let later = coordinated(&s, "b", "1", &[]);
        let l = s.finish(later.lsn, ReqId(9), Ok(StoreResult::Durable));
        assert!(l.done.is_none() && l.start_sync.is_none());
        let (done, next) = s.synced(c.lsn);
        let ids: Vec<ReqId> = done.iter().map(|(id, _)| *id).collect();
        assert_eq!(ids, vec![ReqId(7), ReqId(8)]);
        assert_eq!(next, Some(later.lsn), "the waiter left starts the next fsync");
        let (done, next) = s.synced(later.lsn);
        assert_eq!(done.len(), 1);
        assert_eq!(next, None);
        assert_eq!(s.waiting(), 0);
        // Already durable: completes at once.
        assert!(s.finish(later.lsn, ReqId(10), Ok(StoreResult::Durable)).done.is_some());
    }

    #[test]
    fn without_always_ops_complete_at_once_and_a_crash_can_lose_them() {
        for policy in [SyncPolicy::Interval(100), SyncPolicy::Never(5000)] {
            let mut s = MemStore::new(policy, 16);
            let c = coordinated(&s, "a", "1", &[]);
            assert!(s.is_durable(c.lsn));
            assert!(s.finish(c.lsn, ReqId(1), Ok(StoreResult::Durable)).done.is_some());
            assert_eq!(s.start_sync(), Some(c.lsn), "the background sync has work");
            s.crash();
            assert_eq!(s.replica(&key("a")), None, "{policy}: acknowledged but unsynced");
            assert_eq!(s.start_sync(), None, "nothing unsynced");
        }
    }

    #[test]
    fn a_crash_drops_waiters_and_the_running_fsync() {
        let mut s = MemStore::new(SyncPolicy::Always, 16);
        let c = coordinated(&s, "a", "1", &[]);
        assert!(s.finish(c.lsn, ReqId(1), Ok(StoreResult::Durable)).start_sync.is_some());
        s.crash();
        assert_eq!(s.waiting(), 0);
        let c = coordinated(&s, "a", "2", &[]);
        assert_eq!(s.finish(c.lsn, ReqId(2), Ok(StoreResult::Durable)).start_sync, Some(c.lsn));
    }

    #[test]
    fn hints_merge_are_read_with_the_replica_and_are_removed_only_when_covered() {
        let mut s = MemStore::new(SyncPolicy::Always, 16);
        let n2 = node("n2");
        let c = coordinated(&s, "a", "1", std::slice::from_ref(&n2));
        assert_eq!(c.hint_versions, vec![c.set.join()]);
        let hk = HintKey::Object(key("a"));
        let hints = s.all_hints().unwrap();
        assert_eq!(hints, vec![(n2.clone(), hk.clone(), c.set.join())]);
        // A newer write merged into the hint: delivering the old version does not remove it.
        let newer = coordinated(&s, "a", "2", std::slice::from_ref(&n2));
        assert!(!s.remove_hint_if_delivered(&n2, &hk, &c.set.join()).unwrap());
        assert!(s.remove_hint_if_delivered(&n2, &hk, &newer.set.join()).unwrap());
        assert!(s.all_hints().unwrap().is_empty());
        // A hint alone (no replica) is read for its owner; a crash before the fsync drops it.
        let other = key("z");
        let mut set = SiblingSet::new();
        set.write(&VersionVector::new(), Sibling::tombstone(1), &Actor::new(node("n3"), 1), 64)
            .unwrap();
        s.synced(s.last_lsn());
        s.store_hint(&n2, &HintKey::Object(other.clone()), &HintSet::Object(set.clone())).unwrap();
        assert_eq!(s.read(&other, std::slice::from_ref(&n2)).unwrap(), Some(set));
        assert_eq!(s.read(&other, &[]).unwrap(), None, "not for other owners");
        s.crash();
        assert!(s.all_hints().unwrap().is_empty());
    }

    #[test]
    fn listings_show_live_objects_of_one_incarnation_in_name_order() {
        let s = MemStore::new(SyncPolicy::Always, 16);
        for name in ["b", "a", "c"] {
            coordinated(&s, name, name, &[]);
        }
        let mut dead = SiblingSet::new();
        dead.write(&VersionVector::new(), Sibling::tombstone(1), &Actor::new(node("n1"), 2), 64)
            .unwrap();
        s.apply(&key("d"), &dead).unwrap();
        let page = s.list("b", 1, "", Some("a"), 10).unwrap();
        let names: Vec<&str> = page.iter().map(|e| e.name.as_str()).collect();
        assert_eq!(names, vec!["b", "c"], "after the cursor, tombstones skipped");
        assert!(s.list("b", 2, "", None, 10).unwrap().is_empty(), "another incarnation");
        assert_eq!(s.list("b", 1, "", None, 1).unwrap().len(), 1);
    }
}
