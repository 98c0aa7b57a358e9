//! `Inner`: the state one open engine shares between the `Engine` handle, its background threads,
//! compaction and recovery, assembled from the keydir, the segment table, the writer and the group
//! commit; plus the paths through it that need more than one of them (the read path, the append that
//! ties a record to its keydir entry, durability waits).
//!
//! Lock order: stripe → writer → keydir → segments. The group commit's lock is never held while
//! taking the writer lock. Recovery builds an `Inner` ([`Inner::new`]); compaction works on one; the
//! `engine` module wraps one in an `Arc` for its handle and threads.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::{Buf, Bytes};
use parking_lot::{Condvar, Mutex, RwLock};

use crate::commit::GroupCommit;
use crate::error::{Error, Result};
use crate::keydir::{Keydir, Loc};
use crate::options::{Options, SyncPolicy};
use crate::record::{self, KEYSPACES, Keyspace, RecordKind};
use crate::segments::Segments;
use crate::writer::Writer;

/// Number of per-key lock stripes for `update`: enough that unrelated keys rarely share a stripe on a
/// machine with tens of cores, small enough (256 x 1 byte + padding) to not matter for memory.
pub const LOCK_STRIPES: usize = 256;

/// Monotonic counters for `stats()` (the group commit counts its own syncs).
#[derive(Default)]
pub(crate) struct Counters {
    pub writes: AtomicU64,
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
    pub keydirs: [RwLock<Keydir>; KEYSPACES],
    /// Handle → mapped segment. `RwLock`: read on every get, written only at roll-over and compaction.
    pub segments: RwLock<Segments>,
    /// The appender. `Mutex`: appends are serialised, held only for the `pwrite` and keydir insert.
    pub writer: Mutex<Writer>,
    /// Group commit (how far the log is durable, who syncs next) and the poison flag. Its lock is never
    /// held while taking `writer`.
    pub commit: GroupCommit,
    /// Per-key-hash mutexes held across read → merge → append in `update`, so one key never loses an
    /// update while different keys proceed in parallel.
    pub stripes: Box<[Mutex<()>]>,
    /// Serialises compactions (background and explicit).
    pub compaction: Mutex<()>,
    pub counters: Counters,
    /// Set to true by `Engine::drop`; background threads wait on `shutdown_cv` with a timeout and exit
    /// when they see it.
    pub shutdown: Mutex<bool>,
    /// Wakes background threads for shutdown.
    pub shutdown_cv: Condvar,
}

/// Decodes the record at `loc` in a segment mapping, checks CRC and key, returns the value window (no
/// copy: a slice of `bytes`).
pub(crate) fn read_value(bytes: Bytes, seg_id: u64, loc: Loc, key: &[u8]) -> Result<Bytes> {
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
    Ok(b)
}

fn missing_segment(loc: Loc) -> Error {
    Error::corrupt("keydir", format!("entry points at unknown segment handle {}", loc.handle))
}

impl Inner {
    /// The state of a freshly opened directory (called by recovery once everything is loaded): not
    /// poisoned, nothing synced yet in this process, no compaction running.
    pub(crate) fn new(
        dir: &Path,
        opts: Options,
        lock: File,
        keydirs: [Keydir; KEYSPACES],
        segments: Segments,
        writer: Writer,
        counters: Counters,
    ) -> Self {
        Inner {
            dir: dir.to_path_buf(),
            opts,
            _lock: lock,
            keydirs: keydirs.map(RwLock::new),
            segments: RwLock::new(segments),
            writer: Mutex::new(writer),
            commit: GroupCommit::default(),
            stripes: (0..LOCK_STRIPES).map(|_| Mutex::new(())).collect(),
            compaction: Mutex::new(()),
            counters,
            shutdown: Mutex::new(false),
            shutdown_cv: Condvar::new(),
        }
    }

    pub(crate) fn is_poisoned(&self) -> bool {
        self.commit.is_poisoned()
    }

    pub(crate) fn poison(&self) {
        self.commit.poison();
    }

    pub(crate) fn check_value(&self, value: &[u8]) -> Result<()> {
        if value.len() as u64 > self.opts.max_value_size {
            return Err(Error::ValueTooLarge {
                size: value.len() as u64,
                max: self.opts.max_value_size,
            });
        }
        Ok(())
    }

    /// The lock stripe of a key.
    pub(crate) fn stripe(&self, ks: Keyspace, key: &[u8]) -> &Mutex<()> {
        // FNV-1a over the keyspace tag and key: stable, cheap, well spread for short keys.
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for &b in std::iter::once(&ks.tag()).chain(key) {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
        &self.stripes[(h % LOCK_STRIPES as u64) as usize]
    }

    /// A key's value (CRC checked), `None` if absent or deleted. The locks are released before the
    /// record is decoded.
    pub(crate) fn get(&self, ks: Keyspace, key: &[u8]) -> Result<Option<Bytes>> {
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

    /// Keys with `prefix` after `start_after`, at most `limit`, with their values (CRC checked; the
    /// first failure fails the call). The locks are held only to collect the locations.
    pub(crate) fn scan_prefix(
        &self,
        ks: Keyspace,
        prefix: &[u8],
        start_after: Option<&[u8]>,
        limit: usize,
    ) -> Result<Vec<(Vec<u8>, Bytes)>> {
        let hits = {
            let kd = self.keydirs[ks.index()].read();
            let segs = self.segments.read();
            let mut hits = Vec::new();
            for (k, loc) in kd.prefix_range(prefix, start_after) {
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

    /// Appends one record and points the keydir at it; returns the lsn that must be durable before the
    /// write is acknowledged. The caller holds the key's stripe.
    pub(crate) fn append(
        &self,
        ks: Keyspace,
        key: &[u8],
        kind: RecordKind,
        value: &[u8],
    ) -> Result<u64> {
        // A large value is written from the caller's buffer after its head, not copied into one
        // record buffer first (`record::encode_head`).
        let split = kind == RecordKind::Put && value.len() >= record::SPLIT_VALUE_LEN;
        let now = self.opts.clock.now_ms();
        let (rec, tail) = if split {
            (record::encode_head(ks, key, value, now)?, value)
        } else {
            (record::encode(kind, ks, key, value, now)?, &[][..])
        };
        let rec_len = (rec.len() + tail.len()) as u64;
        let mut w = self.writer.lock();
        if self.is_poisoned() {
            return Err(Error::Poisoned);
        }
        if w.len > 0 && w.len + rec_len > w.cap {
            self.roll(&mut w)?;
        }
        if w.len + rec_len > w.cap {
            let need = w.len + rec_len;
            w.grow(need, self.opts.segment_size, &self.segments)?;
        }
        let loc = w.write_parts(&rec, tail, kind == RecordKind::Tombstone)?;
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

    /// Seals the active segment and starts the next one (see `Writer::roll`). Under the writer lock.
    pub(crate) fn roll(&self, w: &mut Writer) -> Result<()> {
        w.roll(&self.dir, &self.opts, &self.commit, &self.segments)
    }

    /// Waits until `lsn` is durable if the policy is `Always`.
    pub(crate) fn durable(&self, lsn: u64) -> Result<()> {
        match self.opts.sync {
            SyncPolicy::Always => self.wait_synced(lsn),
            _ => Ok(()),
        }
    }

    /// Waits until `lsn` is durable, whatever the policy: one group-commit fdatasync of the active
    /// file, shared with concurrent waiters (see `GroupCommit::wait`).
    pub(crate) fn wait_synced(&self, lsn: u64) -> Result<()> {
        self.commit.wait(lsn, &*self.opts.file_sync, || {
            let w = self.writer.lock();
            (Arc::clone(&w.file), w.lsn)
        })
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
        self.segments.read().reclaimable_bytes()
    }
}
