//! The engine: keydir, read path, write path with group commit, background threads.
//!
//! KEYDIR
//! ======
//!
//! Bitcask's central idea (Sheehy & Smith, "Bitcask: A Log-Structured Hash Table for Fast Key/Value
//! Data", Basho 2010): keep *every* key in memory with the location of its latest record, so a read is
//! one index lookup plus one read of the log. Cairn uses an ordered map (`BTreeMap`) instead of
//! Bitcask's hash table, one per keyspace, because listing a bucket is a prefix range and must not
//! scan other buckets. Invariant: the keydir points at the newest record of each key (tombstones
//! included), and keydir order per key equals log order, because the keydir is updated under the same
//! writer lock as the append.
//!
//! GROUP COMMIT
//! ============
//!
//! An fdatasync costs the same for one record as for a hundred, so concurrent writers share it (group
//! commit, DeWitt et al., "Implementation Techniques for Main Memory Database Systems", SIGMOD 1984).
//! Every append advances a byte counter, the lsn. A writer that needs durability waits until the
//! durable lsn reaches its record's end; the first waiter with no sync in flight becomes the leader,
//! samples the current end of the log, syncs, publishes, and wakes the others; anyone not covered
//! waits for the next round. Invariant: `synced_lsn` only ever names bytes that an fdatasync that
//! started after their `pwrite` has made durable.
//!
//! POISONING
//! =========
//!
//! When fdatasync fails, Linux may already have dropped the dirty pages and will not report the error
//! again ("fsyncgate", PostgreSQL 2018): retrying would falsely succeed. So the first failure poisons
//! the engine: every later write fails with `Error::Poisoned` until the directory is reopened and
//! recovered from what is actually on disk.

use std::collections::BTreeMap;
use std::fs::File;
use std::ops::{Bound, Deref};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use bytes::{Buf, Bytes};
use parking_lot::{Condvar, Mutex, MutexGuard, RwLock};

use crate::error::{Error, IoContext, Result};
use crate::hint::{self, HintEntry};
use crate::options::{Options, SyncPolicy};
use crate::record::{self, Keyspace, MAX_KEY_LEN, RecordKind};
use crate::{compaction, mmap};

/// Number of per-key lock stripes for `update`: enough that unrelated keys rarely share a stripe on a
/// machine with tens of cores, small enough (256 x 1 byte + padding) to not matter for memory.
pub const LOCK_STRIPES: usize = 256;
/// Estimated keydir cost of an entry inserted one by one, besides the key's own heap block: a
/// `BTreeMap` leaf holds up to 11 (16-byte boxed key, 12-byte location) pairs in a 320-byte node, and
/// one-by-one inserts leave leaves 55-70% full, plus internal nodes. Measured with a counting
/// allocator (see docs/decisions.md, storage engine): 52-57 bytes for sequential or clustered keys.
pub const KEYDIR_ENTRY_ESTIMATE: u64 = 56;
/// Estimated cost of an entry from the bulk build at open (nodes packed full): measured 27-30 bytes.
pub const KEYDIR_BULK_ENTRY_ESTIMATE: u64 = 30;

/// Name of a segment file.
pub(crate) fn segment_path(dir: &Path, id: u64) -> PathBuf {
    dir.join(format!("{id:010}.seg"))
}
/// Name of a segment's hint file.
pub(crate) fn hint_path(dir: &Path, id: u64) -> PathBuf {
    dir.join(format!("{id:010}.hint"))
}

/// A value read from the engine: a zero-copy window into the memory-mapped segment (a
/// [`bytes::Bytes`] that keeps the mapping alive). Cheap to clone, `Send + Sync`, derefs to `[u8]`.
#[derive(Clone, PartialEq, Eq)]
pub struct Value(Bytes);

impl Value {
    /// The value as `Bytes` (no copy).
    pub fn into_bytes(self) -> Bytes {
        self.0
    }
}

impl Deref for Value {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.0
    }
}

impl AsRef<[u8]> for Value {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

impl std::fmt::Debug for Value {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Value({} bytes)", self.0.len())
    }
}

/// What an `update` closure wants stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Update {
    /// Store this value.
    Put(Vec<u8>),
    /// Delete the key (appends a tombstone if it exists).
    Delete,
    /// Leave the key as it is; nothing is written.
    Keep,
}

/// A point in the log a write needs durable before it may be acknowledged: the end of its own
/// record, or for an update that wrote nothing the end of the log (0 = nothing to wait for).
/// Pass it to [`Engine::wait_durable`]. Several can be combined with [`Pending::max`]: the log is
/// one sequence, so waiting for the latest covers the earlier ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct Pending(u64);

/// What `update` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UpdateOutcome<E> {
    /// A new value was stored (and is durable per the sync policy).
    Stored,
    /// The key existed and is now deleted.
    Deleted,
    /// Nothing was written (`Update::Keep`, or `Update::Delete` of an absent key).
    Unchanged,
    /// The closure returned an error; nothing was written.
    Aborted(E),
}

/// Where a key's latest record is. 12 bytes: keydir memory is per key, so it is packed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Loc {
    /// Segment handle (in-process number, never reused; see `Segments`).
    pub handle: u32,
    /// Record offset in the segment (segments are at most 4 GiB).
    pub off: u32,
    /// Record length; the top bit marks a tombstone.
    len_flags: u32,
}

const TOMBSTONE_BIT: u32 = 1 << 31;

impl Loc {
    pub(crate) fn new(handle: u32, off: u32, len: u32, tombstone: bool) -> Self {
        Self { handle, off, len_flags: len | if tombstone { TOMBSTONE_BIT } else { 0 } }
    }
    pub(crate) fn len(self) -> u32 {
        self.len_flags & !TOMBSTONE_BIT
    }
    pub(crate) fn is_tombstone(self) -> bool {
        self.len_flags & TOMBSTONE_BIT != 0
    }
}

/// One keyspace's index: key → location of its latest record (tombstones included, so compaction can
/// tell whether a tombstone is the latest record of its key), plus counters for `stats()`.
#[derive(Default)]
pub(crate) struct Keydir {
    pub map: BTreeMap<Box<[u8]>, Loc>,
    /// Entries that are not tombstones.
    pub live: u64,
    /// Entries that are tombstones.
    pub tombstones: u64,
    /// Estimated heap bytes of the keys (allocator block sizes).
    pub key_heap: u64,
    /// Sum of the key lengths.
    pub key_bytes: u64,
    /// Entries loaded by the bulk build at open (for the memory estimate; an upper bound on how many
    /// are still in packed nodes).
    pub bulk: u64,
}

/// Size of the allocator block holding `n` key bytes (glibc malloc: 8-byte header, 16-byte rounding,
/// 32-byte minimum).
fn malloc_block(n: usize) -> u64 {
    ((n as u64 + 8 + 15) & !15).max(32)
}

impl Keydir {
    /// A keydir around a bulk-built map (call `recount` next).
    pub(crate) fn from_bulk(map: BTreeMap<Box<[u8]>, Loc>) -> Self {
        let bulk = map.len() as u64;
        Self { map, bulk, ..Self::default() }
    }

    /// Recomputes the counters from the map; returns the record bytes it points at.
    pub(crate) fn recount(&mut self) -> u64 {
        let (mut live, mut tombstones, mut key_heap, mut key_bytes, mut bytes) = (0, 0, 0, 0, 0);
        for (k, loc) in &self.map {
            if loc.is_tombstone() {
                tombstones += 1;
            } else {
                live += 1;
            }
            key_heap += malloc_block(k.len());
            key_bytes += k.len() as u64;
            bytes += u64::from(loc.len());
        }
        (self.live, self.tombstones, self.key_heap, self.key_bytes) =
            (live, tombstones, key_heap, key_bytes);
        bytes
    }

    /// Estimated heap bytes of the keydir, keys included.
    pub(crate) fn estimated_bytes(&self) -> u64 {
        let entries = self.map.len() as u64;
        let bulk = self.bulk.min(entries);
        bulk * KEYDIR_BULK_ENTRY_ESTIMATE + (entries - bulk) * KEYDIR_ENTRY_ESTIMATE + self.key_heap
    }

    /// Points `key` at `loc`; returns the location it replaced.
    pub(crate) fn insert(&mut self, key: &[u8], loc: Loc) -> Option<Loc> {
        let new_tomb = loc.is_tombstone();
        match self.map.get_mut(key) {
            Some(old) => {
                let replaced = *old;
                match (old.is_tombstone(), new_tomb) {
                    (false, true) => {
                        self.live -= 1;
                        self.tombstones += 1;
                    }
                    (true, false) => {
                        self.tombstones -= 1;
                        self.live += 1;
                    }
                    _ => {}
                }
                *old = loc;
                Some(replaced)
            }
            None => {
                self.key_heap += malloc_block(key.len());
                self.key_bytes += key.len() as u64;
                if new_tomb {
                    self.tombstones += 1;
                } else {
                    self.live += 1;
                }
                self.map.insert(Box::from(key), loc);
                None
            }
        }
    }

    /// Removes `key` if it still points at `expect`; returns whether it did.
    pub(crate) fn remove_if(&mut self, key: &[u8], expect: Loc) -> bool {
        if self.map.get(key) != Some(&expect) {
            return false;
        }
        self.map.remove(key);
        self.key_heap -= malloc_block(key.len());
        self.key_bytes -= key.len() as u64;
        if expect.is_tombstone() {
            self.tombstones -= 1;
        } else {
            self.live -= 1;
        }
        true
    }
}

/// A mapped segment.
pub(crate) struct Seg {
    /// File number (`NNNNNNNNNN.seg`).
    pub id: u64,
    /// The mapping (the active segment is mapped at its capacity, beyond EOF).
    pub bytes: Bytes,
    /// File length once sealed; 0 while active (the writer knows the active length).
    pub len: u64,
    /// Sealed segments are immutable and may be compacted.
    pub sealed: bool,
    /// Bytes of this segment's records that the keydir points at, so the background compactor can tell
    /// how much of the *sealed* data is dead. Atomic: appends update it under the segments read lock.
    pub live: AtomicU64,
}

impl Seg {
    pub(crate) fn new(id: u64, bytes: Bytes, len: u64, sealed: bool) -> Self {
        Self { id, bytes, len, sealed, live: AtomicU64::new(0) }
    }

    /// Subtracts without wrapping (a bookkeeping slip must not turn into a huge number).
    pub(crate) fn sub_live(&self, n: u64) {
        let _ = self
            .live
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| Some(v.saturating_sub(n)));
    }
}

/// The segment table. Keydir entries name segments by *handle*, not by file id, because compaction
/// gives its outputs the ids of its inputs: a handle is never reused within a process, so a reader
/// holding an old location can never reach a different file's bytes.
#[derive(Default)]
pub(crate) struct Segments {
    /// Indexed by handle; `None` once a segment is compacted away. Handles are allocated in sequence
    /// and a process creates few segments, so a vector beats a hash map on every get.
    slots: Vec<Option<Seg>>,
}

impl Segments {
    pub(crate) fn add(&mut self, seg: Seg) -> u32 {
        let h = u32::try_from(self.slots.len()).expect("fewer than 2^32 segments per process");
        self.slots.push(Some(seg));
        h
    }
    pub(crate) fn get(&self, handle: u32) -> Option<&Seg> {
        self.slots.get(handle as usize).and_then(Option::as_ref)
    }
    pub(crate) fn get_mut(&mut self, handle: u32) -> Option<&mut Seg> {
        self.slots.get_mut(handle as usize).and_then(Option::as_mut)
    }
    pub(crate) fn remove(&mut self, handle: u32) {
        if let Some(slot) = self.slots.get_mut(handle as usize) {
            *slot = None;
        }
    }
    /// Live segments with their handles.
    pub(crate) fn iter(&self) -> impl Iterator<Item = (u32, &Seg)> {
        self.slots.iter().enumerate().filter_map(|(h, s)| Some((h as u32, s.as_ref()?)))
    }
}

/// The appender's state, behind `Inner::writer`.
pub(crate) struct Writer {
    /// The active segment file. An `Arc` because the group-commit leader clones it and runs fdatasync
    /// outside the writer lock, so appends continue while a sync is in flight; dropping the last clone
    /// closes the file (after a roll-over the leader may hold the old file a moment longer).
    pub file: Arc<File>,
    pub id: u64,
    pub handle: u32,
    /// Bytes written to the active segment (its length).
    pub len: u64,
    /// Length of the active segment's mapping.
    pub cap: u64,
    /// Bytes appended since open, over all segments: the group-commit sequence number.
    pub lsn: u64,
}

/// Group-commit state, behind `Inner::sync_state`.
#[derive(Default)]
pub(crate) struct SyncState {
    /// Every byte up to this lsn is durable.
    pub synced_lsn: u64,
    /// A thread is running fdatasync right now; others wait on `Inner::sync_cv` instead of syncing too.
    pub leader: bool,
}

/// Monotonic counters for `stats()`.
#[derive(Default)]
pub(crate) struct Counters {
    pub writes: AtomicU64,
    pub syncs: AtomicU64,
    pub corrupt_skipped: AtomicU64,
    pub compactions: AtomicU64,
    /// Bytes of records the keydir points at (tombstones included).
    pub live_bytes: AtomicU64,
    /// Bytes of all segment files.
    pub total_bytes: AtomicU64,
}

/// State shared by the `Engine` handle and its background threads (each thread holds an `Arc`).
pub(crate) struct Inner {
    pub dir: PathBuf,
    pub opts: Options,
    /// The open `LOCK` file; holding it keeps the flock. Closed (unlocked) when `Inner` drops.
    pub _lock: File,
    /// One ordered index per keyspace. `RwLock`: reads (gets, scans) vastly outnumber writes and must
    /// run in parallel. Lock order: stripe → writer → keydir → segments.
    pub keydirs: [RwLock<Keydir>; 3],
    /// Handle → mapped segment. `RwLock`: read on every get, written only at roll-over and compaction.
    pub segments: RwLock<Segments>,
    /// The appender. `Mutex`: appends are serialised, held only for the `pwrite` and keydir insert.
    pub writer: Mutex<Writer>,
    /// Group commit: who is syncing and how far the log is durable. Waiters sleep on `sync_cv`; the
    /// leader notifies all after each fdatasync. Never held while taking `writer`.
    pub sync_state: Mutex<SyncState>,
    /// Signalled after every group-commit fdatasync (success or failure).
    pub sync_cv: Condvar,
    /// Per-key-hash mutexes held across read → merge → append in `update`, so one key never loses an
    /// update while different keys proceed in parallel.
    pub stripes: Box<[Mutex<()>]>,
    /// Set after a failed sync (or an injected crash): every write is then refused.
    pub poisoned: AtomicBool,
    /// Serialises compactions (background and explicit).
    pub compaction: Mutex<()>,
    pub counters: Counters,
    /// Set to true by `Engine::drop`; background threads wait on `shutdown_cv` with a timeout and exit
    /// when they see it.
    pub shutdown: Mutex<bool>,
    /// Wakes background threads for shutdown.
    pub shutdown_cv: Condvar,
}

/// Statistics of an engine (cheap: counters, no scans).
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct Stats {
    /// Live keys (not deleted) per keyspace, in `Keyspace::ALL` order (object, bucket, hint).
    pub keys: [u64; 3],
    /// Keydir entries that are tombstones awaiting compaction.
    pub tombstones: u64,
    /// Bytes of records the keydir points at.
    pub live_bytes: u64,
    /// Bytes of all segment files.
    pub total_bytes: u64,
    /// Dead bytes in sealed segments: what a compaction would reclaim now (the background compactor's
    /// trigger; dead bytes in the active segment need a roll-over first).
    pub reclaimable_bytes: u64,
    /// Number of segment files (sealed + active).
    pub segments: u64,
    /// Estimated keydir memory, key bytes included.
    pub keydir_bytes: u64,
    /// Estimated keydir memory per entry beyond the key bytes.
    pub keydir_bytes_per_key: f64,
    /// Corrupt regions skipped while opening or compacting.
    pub corrupt_records_skipped: u64,
    /// fdatasync calls that completed.
    pub syncs: u64,
    /// Records appended since open.
    pub writes: u64,
    /// False once poisoned.
    pub healthy: bool,
    /// Compactions completed since open.
    pub compactions: u64,
}

impl Stats {
    /// Live keys in one keyspace.
    pub fn keys_in(&self, ks: Keyspace) -> u64 {
        self.keys[ks.index()]
    }
}

/// A Bitcask-style log-structured store: append-only segment files, an in-memory ordered keydir,
/// zero-copy reads from memory-mapped segments.
///
/// # Design
///
/// Every write appends one record to the *active segment*; the keydir (one `BTreeMap` per keyspace)
/// maps each key to the location of its latest record. Reads do one keydir lookup and verify the
/// record's CRC in place in the mapping. When the active segment reaches `Options::segment_size` it is
/// synced, gets a hint file and is *sealed* (immutable); a new active segment starts. Compaction
/// rewrites the live records of sealed segments.
///
/// Simplifications, and why: the whole keydir lives in memory (Bitcask's bet: RAM per key is cheap
/// next to the values); values are stored inline (large objects are chunked above the engine); the
/// active segment is mapped once at its full capacity beyond EOF instead of remapped as it grows, so a
/// get never copies and never takes the writer lock.
///
/// # Entry format (little endian; details in `docs/engine-format.md`)
///
/// 1. magic `C4 12` (2 bytes)
/// 2. format version `01` (1)
/// 3. kind: 1 put, 2 tombstone (1)
/// 4. keyspace: 0 object, 1 bucket, 2 hint (1)
/// 5. reserved `00` (1)
/// 6. key length, u16 (2)
/// 7. body length, u32 (4)
/// 8. timestamp, ms since epoch, u64 (8)
/// 9. CRC32C of fields 1-8 (first 20 bytes), key and body, u32 (4)
/// 10. key (key length)
/// 11. body (body length): put = value as a MessagePack bin; tombstone = empty
///
/// # Invariants
///
/// - A keydir entry points only at a record whose `pwrite` completed, in a segment present in the
///   segment table under that handle.
/// - Within a key, keydir order equals log order (the keydir is updated under the writer lock).
/// - Sealed segments and all segments with a lower id than the active one are never written again;
///   compaction outputs take the ids of their inputs, so file-id order stays log order.
/// - With `SyncPolicy::Always`, a write returns `Ok` only after an fdatasync that covers it.
/// - After a failed sync no write returns `Ok` again (poisoned).
pub struct Engine {
    /// Everything shared with the background threads (each holds a clone of the `Arc`). They exit when
    /// `Engine::drop` sets `Inner::shutdown`, so the last clone goes away with the engine.
    pub(crate) inner: Arc<Inner>,
    /// Background threads (interval syncer, compactor); joined in `drop` after setting `shutdown`.
    threads: Vec<JoinHandle<()>>,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine").field("dir", &self.inner.dir).finish_non_exhaustive()
    }
}

fn check_key(key: &[u8]) -> Result<()> {
    if key.len() > MAX_KEY_LEN {
        return Err(Error::KeyTooLarge { size: key.len(), max: MAX_KEY_LEN });
    }
    Ok(())
}

impl Engine {
    /// Opens (creating if needed) the data directory: takes its exclusive lock, finishes or discards an
    /// interrupted compaction, loads sealed segments from hint files (scanning those without a valid
    /// hint), and scans the last segment, truncating a torn tail. See `recovery.rs` for the rules.
    pub fn open(dir: &Path, opts: Options) -> Result<Engine> {
        let inner = Arc::new(crate::recovery::open(dir, opts)?);
        let mut threads = Vec::new();
        if let SyncPolicy::Interval(every) = inner.opts.sync {
            let i = Arc::clone(&inner);
            threads.push(spawn("cairn-sync", move || i.interval_sync_loop(every))?);
        }
        if let Some(c) = inner.opts.background_compaction.clone() {
            let i = Arc::clone(&inner);
            threads.push(spawn("cairn-compact", move || compaction::background_loop(&i, &c))?);
        }
        Ok(Engine { inner, threads })
    }

    /// The data directory.
    pub fn dir(&self) -> &Path {
        &self.inner.dir
    }

    /// Reads a key's value, verifying the record's CRC. `Ok(None)` if absent or deleted.
    pub fn get(&self, ks: Keyspace, key: &[u8]) -> Result<Option<Value>> {
        self.inner.get(ks, key)
    }

    /// Stores a value. Returns once durable per the sync policy.
    pub fn put(&self, ks: Keyspace, key: &[u8], value: &[u8]) -> Result<()> {
        check_key(key)?;
        self.inner.check_value(value)?;
        let lsn = {
            let _stripe = self.inner.stripe(ks, key).lock();
            self.inner.append(ks, key, RecordKind::Put, value)?
        };
        self.inner.durable(lsn)
    }

    /// Deletes a key by appending a tombstone. Returns whether the key existed (nothing is written if
    /// it did not).
    pub fn delete(&self, ks: Keyspace, key: &[u8]) -> Result<bool> {
        check_key(key)?;
        let lsn = {
            let _stripe = self.inner.stripe(ks, key).lock();
            let exists = self.inner.keydirs[ks.index()]
                .read()
                .map
                .get(key)
                .is_some_and(|l| !l.is_tombstone());
            if !exists {
                return Ok(false);
            }
            self.inner.append(ks, key, RecordKind::Tombstone, &[])?
        };
        self.inner.durable(lsn).map(|()| true)
    }

    /// Atomic read-merge-write of one key: `f` sees the current value and returns what to store. The
    /// key's stripe lock is held from the read until the new record is in the keydir, so concurrent
    /// updates of one key serialise (no lost update); the durability wait happens after the lock is
    /// released, so many keys (and the group commit) proceed in parallel.
    pub fn update<F, E>(&self, ks: Keyspace, key: &[u8], f: F) -> Result<UpdateOutcome<E>>
    where
        F: FnOnce(Option<&[u8]>) -> std::result::Result<Update, E>,
    {
        let (outcome, pending) = self.update_deferred(ks, key, f)?;
        self.wait_durable(pending)?;
        Ok(outcome)
    }

    /// [`Engine::update`] without the durability wait: the record is appended and visible to
    /// readers, and the returned [`Pending`] is waited on with [`Engine::wait_durable`] before the
    /// write may be acknowledged as durable. Lets a caller overlap the fdatasync with other work
    /// (the node sends the write to the other replicas meanwhile). If the process dies before
    /// the wait, the write may be lost, exactly as if it had never been acknowledged.
    pub fn update_deferred<F, E>(
        &self,
        ks: Keyspace,
        key: &[u8],
        f: F,
    ) -> Result<(UpdateOutcome<E>, Pending)>
    where
        F: FnOnce(Option<&[u8]>) -> std::result::Result<Update, E>,
    {
        check_key(key)?;
        let _stripe = self.inner.stripe(ks, key).lock();
        let current = self.inner.get(ks, key)?;
        // Nothing appended: the value the caller saw may itself still wait for its fdatasync
        // (appended by a writer that has not synced yet); waiting for the log's end covers it,
        // so "unchanged" is never acknowledged as durable too early.
        let log_end = || Pending(self.inner.writer.lock().lsn);
        Ok(match f(current.as_deref()) {
            Err(e) => (UpdateOutcome::Aborted(e), Pending(0)),
            Ok(Update::Keep) => (UpdateOutcome::Unchanged, log_end()),
            Ok(Update::Delete) if current.is_none() => (UpdateOutcome::Unchanged, log_end()),
            Ok(Update::Delete) => (
                UpdateOutcome::Deleted,
                Pending(self.inner.append(ks, key, RecordKind::Tombstone, &[])?),
            ),
            Ok(Update::Put(v)) => {
                self.inner.check_value(&v)?;
                (UpdateOutcome::Stored, Pending(self.inner.append(ks, key, RecordKind::Put, &v)?))
            }
        })
    }

    /// Whether the write behind `pending` needs no wait: nothing to wait for, the sync policy
    /// does not wait for fdatasync, or a group commit already covered it.
    pub fn is_durable(&self, pending: Pending) -> bool {
        pending.0 == 0
            || !matches!(self.inner.opts.sync, SyncPolicy::Always)
            || self.inner.sync_state.lock().synced_lsn >= pending.0
    }

    /// Waits until the write behind `pending` (and every earlier one) is durable per the sync
    /// policy: one group-commit fdatasync under `SyncPolicy::Always`, nothing otherwise.
    pub fn wait_durable(&self, pending: Pending) -> Result<()> {
        if pending.0 == 0 {
            return Ok(());
        }
        self.inner.durable(pending.0)
    }

    /// Keys with `prefix` in order, with their values, starting after `start_after` (a cursor from a
    /// previous page), at most `limit`. Walks only the keydir range of the prefix. A value that fails
    /// its CRC fails the whole call with `Error::Corrupt` naming its segment and offset; callers that
    /// must get past a damaged key page with [`Engine::keys_with_prefix`] and `get` each key.
    pub fn scan_prefix(
        &self,
        ks: Keyspace,
        prefix: &[u8],
        start_after: Option<&[u8]>,
        limit: usize,
    ) -> Result<Vec<(Vec<u8>, Value)>> {
        let hits = {
            let kd = self.inner.keydirs[ks.index()].read();
            let segs = self.inner.segments.read();
            let mut hits = Vec::new();
            for (k, loc) in prefix_range(&kd, prefix, start_after) {
                if hits.len() >= limit {
                    break;
                }
                let seg = segs.get(loc.handle).ok_or_else(|| missing_segment(*loc))?;
                hits.push((k.to_vec(), *loc, seg.id, seg.bytes.clone()));
            }
            hits
        };
        hits.into_iter()
            .map(|(k, loc, id, bytes)| {
                let v = read_value(bytes, id, loc, &k)?;
                Ok((k, v))
            })
            .collect()
    }

    /// Like [`Engine::scan_prefix`] but only the keys (no value reads, no I/O).
    pub fn keys_with_prefix(
        &self,
        ks: Keyspace,
        prefix: &[u8],
        start_after: Option<&[u8]>,
        limit: usize,
    ) -> Vec<Vec<u8>> {
        let kd = self.inner.keydirs[ks.index()].read();
        prefix_range(&kd, prefix, start_after).take(limit).map(|(k, _)| k.to_vec()).collect()
    }

    /// Makes every write so far durable (one fdatasync, shared with concurrent writers).
    pub fn sync(&self) -> Result<()> {
        let lsn = self.inner.writer.lock().lsn;
        self.inner.wait_synced(lsn)
    }

    /// Counters and sizes.
    pub fn stats(&self) -> Stats {
        self.inner.stats()
    }

    /// False after a failed sync: the engine refuses writes until reopened.
    pub fn is_healthy(&self) -> bool {
        !self.inner.is_poisoned()
    }

    /// Compacts every sealed segment now (sealing the active segment first if it holds data), without
    /// a rate limit. Safe while reads and writes continue. `progress` is called as input bytes are
    /// processed. See the `compaction` module for the algorithm and its crash safety.
    pub fn compact(
        &self,
        progress: &mut dyn FnMut(&crate::CompactionProgress),
    ) -> Result<crate::CompactionReport> {
        compaction::compact(&self.inner, true, 0, progress)
    }
}

fn spawn(name: &str, f: impl FnOnce() + Send + 'static) -> Result<JoinHandle<()>> {
    std::thread::Builder::new().name(name.into()).spawn(f).ctx(|| format!("spawning thread {name}"))
}

fn missing_segment(loc: Loc) -> Error {
    Error::corrupt("keydir", format!("entry points at unknown segment handle {}", loc.handle))
}

/// The keydir entries (tombstones skipped) with `prefix`, after `start_after`, in key order.
fn prefix_range<'a>(
    kd: &'a Keydir,
    prefix: &'a [u8],
    start_after: Option<&'a [u8]>,
) -> impl Iterator<Item = (&'a Box<[u8]>, &'a Loc)> + 'a {
    let lower = match start_after {
        Some(s) if s >= prefix => Bound::Excluded(s),
        _ => Bound::Included(prefix),
    };
    kd.map
        .range::<[u8], _>((lower, Bound::Unbounded))
        .take_while(move |(k, _)| k.starts_with(prefix))
        .filter(|(_, l)| !l.is_tombstone())
}

/// Hint entries of a segment this process wrote, by walking its record headers (no CRC pass: the
/// bytes were just written by us and are still in the page cache; every record will still be
/// CRC-checked when read).
fn hint_entries(bytes: &[u8]) -> Vec<HintEntry> {
    let mut entries = Vec::new();
    let mut off = 0usize;
    while let Some((kind, ks, key, len)) = record::peek(&bytes[off..]) {
        entries.push(HintEntry {
            keyspace: ks.tag(),
            kind: kind.tag(),
            offset: off as u64,
            len: u32::try_from(len).unwrap_or(u32::MAX),
            key: key.to_vec(),
        });
        off += len;
    }
    entries
}

/// Decodes the record at `loc` in a segment mapping, checks CRC and key, returns the value window.
pub(crate) fn read_value(bytes: Bytes, seg_id: u64, loc: Loc, key: &[u8]) -> Result<Value> {
    let start = loc.off as usize;
    let end = start + loc.len() as usize;
    let what = || format!("segment {seg_id:010} offset {start}");
    if end > bytes.len() {
        return Err(Error::corrupt(what(), "record extends past the mapping"));
    }
    let rec =
        record::decode(&bytes[start..end]).map_err(|e| Error::corrupt(what(), e.to_string()))?;
    if rec.key != key || rec.total_len != end - start || rec.kind != RecordKind::Put {
        return Err(Error::corrupt(what(), "record does not match the keydir entry"));
    }
    let value_start = start + rec.value_offset;
    let mut b = bytes;
    b.truncate(end);
    b.advance(value_start);
    Ok(Value(b))
}

impl Inner {
    pub(crate) fn is_poisoned(&self) -> bool {
        self.poisoned.load(Ordering::SeqCst)
    }

    pub(crate) fn poison(&self) {
        self.poisoned.store(true, Ordering::SeqCst);
    }

    fn check_value(&self, value: &[u8]) -> Result<()> {
        if value.len() as u64 > self.opts.max_value_size {
            return Err(Error::ValueTooLarge {
                size: value.len() as u64,
                max: self.opts.max_value_size,
            });
        }
        Ok(())
    }

    fn stripe(&self, ks: Keyspace, key: &[u8]) -> &Mutex<()> {
        // FNV-1a over the keyspace tag and key: stable, cheap, well spread for short keys.
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for &b in std::iter::once(&ks.tag()).chain(key) {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
        &self.stripes[(h % LOCK_STRIPES as u64) as usize]
    }

    pub(crate) fn get(&self, ks: Keyspace, key: &[u8]) -> Result<Option<Value>> {
        let (loc, id, bytes) = {
            let kd = self.keydirs[ks.index()].read();
            let Some(loc) = kd.map.get(key).copied() else { return Ok(None) };
            if loc.is_tombstone() {
                return Ok(None);
            }
            let segs = self.segments.read();
            let seg = segs.get(loc.handle).ok_or_else(|| missing_segment(loc))?;
            (loc, seg.id, seg.bytes.clone())
        };
        read_value(bytes, id, loc, key).map(Some)
    }

    /// Appends one record and points the keydir at it; returns the lsn that must be durable before the
    /// write is acknowledged. The caller holds the key's stripe.
    pub(crate) fn append(
        &self,
        ks: Keyspace,
        key: &[u8],
        kind: RecordKind,
        value: &[u8],
    ) -> Result<u64> {
        let rec = record::encode(kind, ks, key, value, self.opts.clock.now_ms())?;
        let rec_len = rec.len() as u64;
        let mut w = self.writer.lock();
        if self.is_poisoned() {
            return Err(Error::Poisoned);
        }
        if w.len > 0 && w.len + rec_len > w.cap {
            self.roll(&mut w)?;
        }
        if w.len + rec_len > w.cap {
            let need = w.len + rec_len;
            self.grow_active(&mut w, need)?;
        }
        let off = w.len;
        // Both fit by construction (segments <= 4 GiB, records < 2 GiB); checked before writing so a
        // violation can never leave a record on disk that the keydir does not know.
        let off32 =
            u32::try_from(off).map_err(|_| Error::corrupt("segment", "offset over 4 GiB"))?;
        let len32 = u32::try_from(rec_len)
            .ok()
            .filter(|l| l & (1 << 31) == 0)
            .ok_or_else(|| Error::corrupt("record", "2 GiB or larger"))?;
        w.file.write_all_at(&rec, off).ctx(|| format!("appending to segment {:010}", w.id))?;
        w.len += rec_len;
        w.lsn += rec_len;
        let loc = Loc::new(w.handle, off32, len32, kind == RecordKind::Tombstone);
        let replaced = self.keydirs[ks.index()].write().insert(key, loc);
        self.counters.live_bytes.fetch_add(rec_len, Ordering::Relaxed);
        {
            let segs = self.segments.read();
            if let Some(seg) = segs.get(w.handle) {
                seg.live.fetch_add(rec_len, Ordering::Relaxed);
            }
            if let Some(old) = replaced {
                self.counters.live_bytes.fetch_sub(u64::from(old.len()), Ordering::Relaxed);
                if let Some(seg) = segs.get(old.handle) {
                    seg.sub_live(u64::from(old.len()));
                }
            }
        }
        self.counters.total_bytes.fetch_add(rec_len, Ordering::Relaxed);
        self.counters.writes.fetch_add(1, Ordering::Relaxed);
        Ok(w.lsn)
    }

    /// Seals the active segment and starts the next one. Under the writer lock. Order: sync the old
    /// file (unless `Never`), write its hint, create the new file, sync the directory, swap mappings.
    pub(crate) fn roll(&self, w: &mut MutexGuard<'_, Writer>) -> Result<()> {
        if self.opts.sync != SyncPolicy::Never {
            if let Err(e) = self.opts.file_sync.sync_data(&w.file) {
                self.poison();
                tracing::error!(error = %e, segment = w.id, "fdatasync at roll-over failed; engine poisoned");
                return Err(Error::io(format!("syncing segment {:010}", w.id), e));
            }
            let mut st = self.sync_state.lock();
            st.synced_lsn = st.synced_lsn.max(w.lsn);
            drop(st);
            self.sync_cv.notify_all();
        }
        let sealed_bytes =
            mmap::map(&w.file, w.len).ctx(|| format!("mapping segment {:010}", w.id))?;
        let entries = hint_entries(&sealed_bytes);
        match hint::encode_hint(w.len, &entries) {
            Some(h) => {
                if let Err(e) = hint::write_atomic(&hint_path(&self.dir, w.id), &h, None) {
                    tracing::warn!(error = %e, segment = w.id, "could not write hint file; the segment will be scanned at open");
                }
            }
            None => tracing::warn!(segment = w.id, "hint file too large; not written"),
        }
        let new_id = w.id + 1;
        let path = segment_path(&self.dir, new_id);
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)
            .ctx(|| format!("creating {}", path.display()))?;
        if self.opts.sync != SyncPolicy::Never {
            self.sync_dir()?;
        }
        let cap = self.opts.segment_size;
        let bytes = mmap::map(&file, cap).ctx(|| format!("mapping {}", path.display()))?;
        let mut segs = self.segments.write();
        if let Some(old) = segs.get_mut(w.handle) {
            old.bytes = sealed_bytes;
            old.len = w.len;
            old.sealed = true;
        }
        let handle = segs.add(Seg::new(new_id, bytes, 0, false));
        drop(segs);
        w.file = Arc::new(file);
        w.id = new_id;
        w.handle = handle;
        w.len = 0;
        w.cap = cap;
        Ok(())
    }

    /// Remaps the active segment with a larger capacity (a record bigger than `segment_size`).
    fn grow_active(&self, w: &mut MutexGuard<'_, Writer>, need: u64) -> Result<()> {
        let cap = need.max(self.opts.segment_size);
        let bytes = mmap::map(&w.file, cap).ctx(|| format!("mapping segment {:010}", w.id))?;
        if let Some(seg) = self.segments.write().get_mut(w.handle) {
            seg.bytes = bytes;
        }
        w.cap = cap;
        Ok(())
    }

    pub(crate) fn sync_dir(&self) -> Result<()> {
        let d = File::open(&self.dir).ctx(|| format!("opening {}", self.dir.display()))?;
        self.opts.file_sync.sync_dir(&d).ctx(|| format!("syncing directory {}", self.dir.display()))
    }

    /// Waits until `lsn` is durable if the policy is `Always`.
    fn durable(&self, lsn: u64) -> Result<()> {
        match self.opts.sync {
            SyncPolicy::Always => self.wait_synced(lsn),
            _ => Ok(()),
        }
    }

    /// Group commit. The first waiter that finds no sync in flight becomes the leader: it reads the
    /// current end of the log, fdatasyncs the active file outside every lock, publishes the new durable
    /// lsn and wakes everyone. Writers that appended meanwhile are covered by the next round, so one
    /// fdatasync serves every writer that arrived during the previous one.
    pub(crate) fn wait_synced(&self, lsn: u64) -> Result<()> {
        let mut st = self.sync_state.lock();
        loop {
            if st.synced_lsn >= lsn {
                return Ok(());
            }
            if self.is_poisoned() {
                return Err(Error::Poisoned);
            }
            if st.leader {
                self.sync_cv.wait(&mut st);
                continue;
            }
            st.leader = true;
            let (result, target) = MutexGuard::unlocked(&mut st, || {
                // Let writers that are runnable right now append first, so this fdatasync covers them
                // too. Costs nothing when no other thread is runnable (a lone writer).
                std::thread::yield_now();
                let (file, target) = {
                    let w = self.writer.lock();
                    (Arc::clone(&w.file), w.lsn)
                };
                (self.opts.file_sync.sync_data(&file), target)
            });
            st.leader = false;
            match result {
                Ok(()) => {
                    st.synced_lsn = st.synced_lsn.max(target);
                    self.counters.syncs.fetch_add(1, Ordering::Relaxed);
                    self.sync_cv.notify_all();
                }
                Err(e) => {
                    self.poison();
                    self.sync_cv.notify_all();
                    tracing::error!(error = %e, "fdatasync failed; engine poisoned, refusing writes");
                    return Err(Error::io(
                        "fdatasync of the active segment (engine now poisoned)",
                        e,
                    ));
                }
            }
        }
    }

    /// Body of the `SyncPolicy::Interval` thread.
    fn interval_sync_loop(&self, every: Duration) {
        while !self.wait_shutdown(every) {
            let lsn = self.writer.lock().lsn;
            if self.sync_state.lock().synced_lsn < lsn
                && let Err(e) = self.wait_synced(lsn)
            {
                tracing::error!(error = %e, "interval sync failed");
            }
        }
    }

    /// Sleeps up to `d` or until shutdown; returns true if shutting down.
    pub(crate) fn wait_shutdown(&self, d: Duration) -> bool {
        let mut down = self.shutdown.lock();
        if !*down {
            let _ = self.shutdown_cv.wait_for(&mut down, d);
        }
        *down
    }

    /// Dead bytes of sealed segments.
    pub(crate) fn reclaimable_bytes(&self) -> u64 {
        self.segments
            .read()
            .iter()
            .filter(|(_, s)| s.sealed)
            .map(|(_, s)| s.len.saturating_sub(s.live.load(Ordering::Relaxed)))
            .sum()
    }

    pub(crate) fn stats(&self) -> Stats {
        let mut keys = [0u64; 3];
        let (mut tombstones, mut entries, mut keydir_bytes, mut key_bytes) = (0, 0, 0, 0);
        for ks in Keyspace::ALL {
            let kd = self.keydirs[ks.index()].read();
            keys[ks.index()] = kd.live;
            tombstones += kd.tombstones;
            entries += kd.live + kd.tombstones;
            keydir_bytes += kd.estimated_bytes();
            key_bytes += kd.key_bytes;
        }
        let c = &self.counters;
        Stats {
            keys,
            tombstones,
            live_bytes: c.live_bytes.load(Ordering::Relaxed),
            total_bytes: c.total_bytes.load(Ordering::Relaxed),
            segments: self.segments.read().iter().count() as u64,
            reclaimable_bytes: self.reclaimable_bytes(),
            keydir_bytes,
            keydir_bytes_per_key: if entries == 0 {
                0.0
            } else {
                (keydir_bytes - key_bytes) as f64 / entries as f64
            },
            corrupt_records_skipped: c.corrupt_skipped.load(Ordering::Relaxed),
            syncs: c.syncs.load(Ordering::Relaxed),
            writes: c.writes.load(Ordering::Relaxed),
            healthy: !self.is_poisoned(),
            compactions: c.compactions.load(Ordering::Relaxed),
        }
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        *self.inner.shutdown.lock() = true;
        self.inner.shutdown_cv.notify_all();
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
        if !self.inner.is_poisoned() && self.inner.opts.sync != SyncPolicy::Always {
            let lsn = self.inner.writer.lock().lsn;
            if let Err(e) = self.inner.wait_synced(lsn) {
                tracing::error!(error = %e, "final sync at close failed");
            }
        }
    }
}
