//! The public façade: [`Engine`] and the types of its API ([`Value`], [`Update`], [`UpdateOutcome`],
//! [`Pending`], [`Stats`]), key and value checks, and the background threads (interval syncer,
//! compactor).
//!
//! Everything underneath is shared state this module only drives: the keydir (`keydir`), the
//! segment table (`segments`), the writer (`writer`), the group commit and poisoning (`commit`),
//! assembled into `state::Inner`, which `recovery` builds at open and `compaction` rewrites. The
//! module-level notes on the keydir, group commit and poisoning live with that code.

use std::ops::Deref;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::thread::JoinHandle;
use std::time::Duration;

use bytes::Bytes;

use crate::error::{Error, IoContext, Result};
use crate::options::{Options, SyncPolicy};
use crate::record::{Keyspace, MAX_KEY_LEN, RecordKind};
use crate::state::Inner;
use crate::{compaction, recovery};

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

impl Pending {
    /// The log position (0: nothing to wait for). Lets a caller carry a `Pending` through code
    /// that does not know the engine (the node's protocol state machine) and back.
    pub fn lsn(self) -> u64 {
        self.0
    }

    /// The `Pending` of log position `lsn`, as returned by [`Pending::lsn`].
    pub fn from_lsn(lsn: u64) -> Pending {
        Pending(lsn)
    }
}

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

/// Statistics of an engine (cheap: counters, no scans).
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct Stats {
    /// Live keys (not deleted) per keyspace, in `Keyspace::ALL` order (object, bucket, hint, chunk).
    pub keys: [u64; 4],
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
    inner: Arc<Inner>,
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
        let inner = Arc::new(recovery::open(dir, opts)?);
        let mut threads = Vec::new();
        if let SyncPolicy::Interval(every) = inner.opts.sync {
            let i = Arc::clone(&inner);
            threads.push(spawn("cairn-sync", move || interval_sync_loop(&i, every))?);
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
        Ok(self.inner.get(ks, key)?.map(Value))
    }

    /// Like [`Engine::get`], but the value is copied out of the mapping and the mapped pages it
    /// covered are released from this process's resident set (they stay in the page cache). For
    /// large values streamed once (object chunks): reading gigabytes through `get` would leave
    /// them all counted in the process's RSS until the kernel reclaims them.
    pub fn get_owned(&self, ks: Keyspace, key: &[u8]) -> Result<Option<Bytes>> {
        let Some(v) = self.inner.get(ks, key)? else { return Ok(None) };
        let owned = Bytes::copy_from_slice(&v);
        crate::mmap::release(&v);
        Ok(Some(owned))
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
            let exists = self.inner.keydirs[ks.index()].read().contains_live(key);
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
            || self.inner.commit.synced_lsn() >= pending.0
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
        let hits = self.inner.scan_prefix(ks, prefix, start_after, limit)?;
        Ok(hits.into_iter().map(|(k, v)| (k, Value(v))).collect())
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
        kd.prefix_range(prefix, start_after).take(limit).map(|(k, _)| k.to_vec()).collect()
    }

    /// Makes every write so far durable (one fdatasync, shared with concurrent writers).
    pub fn sync(&self) -> Result<()> {
        let lsn = self.inner.writer.lock().lsn;
        self.inner.wait_synced(lsn)
    }

    /// Counters and sizes.
    pub fn stats(&self) -> Stats {
        let inner = &*self.inner;
        let mut keys = [0u64; Keyspace::ALL.len()];
        let (mut tombstones, mut entries, mut keydir_bytes, mut key_bytes) = (0, 0, 0, 0);
        for ks in Keyspace::ALL {
            let kd = inner.keydirs[ks.index()].read();
            keys[ks.index()] = kd.live;
            tombstones += kd.tombstones;
            entries += kd.live + kd.tombstones;
            keydir_bytes += kd.estimated_bytes();
            key_bytes += kd.key_bytes;
        }
        let c = &inner.counters;
        Stats {
            keys,
            tombstones,
            live_bytes: c.live_bytes.load(Ordering::Relaxed),
            total_bytes: c.total_bytes.load(Ordering::Relaxed),
            segments: inner.segments.read().iter().count() as u64,
            reclaimable_bytes: inner.reclaimable_bytes(),
            keydir_bytes,
            keydir_bytes_per_key: if entries == 0 {
                0.0
            } else {
                (keydir_bytes - key_bytes) as f64 / entries as f64
            },
            corrupt_records_skipped: c.corrupt_skipped.load(Ordering::Relaxed),
            syncs: inner.commit.syncs(),
            writes: c.writes.load(Ordering::Relaxed),
            healthy: !inner.is_poisoned(),
            compactions: c.compactions.load(Ordering::Relaxed),
        }
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

/// Body of the `SyncPolicy::Interval` thread.
fn interval_sync_loop(inner: &Inner, every: Duration) {
    while !inner.wait_shutdown(every) {
        let lsn = inner.writer.lock().lsn;
        if inner.commit.synced_lsn() < lsn
            && let Err(e) = inner.wait_synced(lsn)
        {
            tracing::error!(error = %e, "interval sync failed");
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
