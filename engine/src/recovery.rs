//! Opening a data directory: lock, interrupted compaction, segment loading, torn-tail truncation.
//!
//! RECOVERY
//! ========
//!
//! The rules, applied in this order by [`open`]:
//!
//! 1. Take the directory lock (`LOCK`); a second process gets `Error::Locked` naming the holder.
//! 2. If a compaction commit file (`COMPACTION`) exists, the compaction committed: finish its renames
//!    and deletions (idempotent). Then delete `compact.tmp/` and `*.tmp` files: leftovers of a
//!    compaction or hint write that never committed, so they hold nothing that is not also elsewhere.
//! 3. Segments are loaded in id order (id order is log order). Every segment but the last is sealed:
//!    its hint file is used if its checksum matches and it describes a segment of exactly the file's
//!    length; otherwise the segment is scanned and a fresh hint written. A corrupt record in a sealed
//!    segment is logged, counted (`Stats::corrupt_records_skipped`) and skipped; the scan resynchronises
//!    at the next valid record, so the rest of the segment is still read.
//! 4. The last segment becomes the active one. It is scanned; a region that fails its checks in the
//!    middle (valid records follow) is skipped like in a sealed segment; bytes after the last valid
//!    record (a torn write, or zeros from a crash during file extension) are truncated away, and the
//!    truncation is synced before any new write. Every synced record precedes the torn tail, so no
//!    synced record is lost.
//! 5. Later records override earlier ones for the same key; tombstones stay in the keydir (so that
//!    compaction can decide whether they may be dropped) but read as absent.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::path::Path;
use std::sync::atomic::Ordering;

use crate::error::{Error, IoContext, Result};
use crate::hint::{self, HintEntry};
use crate::keydir::{Keydir, Loc};
use crate::options::Options;
use crate::record::{KEYSPACES, RecordKind, ScanItem, Scanner};
use crate::segments::{Seg, Segments, hint_path, list_segments, segment_path};
use crate::state::{Counters, Inner};
use crate::writer::Writer;
use crate::{compaction, lockfile, mmap};

/// Result of scanning one segment's bytes.
pub(crate) struct ScanResult {
    pub entries: Vec<HintEntry>,
    /// End of the last valid record.
    pub valid_end: u64,
    /// Corrupt regions followed by a valid record (not the tail).
    pub corrupt_inside: u64,
    /// Whether the segment ends in an invalid region.
    pub bad_tail: bool,
}

/// Scans a segment's bytes, logging corrupt regions.
pub(crate) fn scan_segment(id: u64, bytes: &[u8]) -> ScanResult {
    let mut r =
        ScanResult { entries: Vec::new(), valid_end: 0, corrupt_inside: 0, bad_tail: false };
    let mut pending_corrupt = None;
    for item in Scanner::new(bytes) {
        match item {
            ScanItem::Record { offset, record } => {
                if let Some((off, len, reason)) = pending_corrupt.take() {
                    r.corrupt_inside += 1;
                    tracing::warn!(segment = id, offset = off, len, %reason, "skipping corrupt region in segment");
                }
                r.entries.push(HintEntry {
                    keyspace: record.keyspace.tag(),
                    kind: record.kind.tag(),
                    offset,
                    // total_len < 2^32 because the record header's lengths are u16 + u32 and it fit
                    len: u32::try_from(record.total_len).unwrap_or(u32::MAX),
                    key: record.key.to_vec(),
                });
                r.valid_end = offset + record.total_len as u64;
            }
            ScanItem::Corrupt { offset, len, reason } => {
                pending_corrupt = Some((offset, len, reason))
            }
        }
    }
    r.bad_tail = pending_corrupt.is_some();
    r
}

/// Keydir entries of every segment in log order, per keyspace; turned into the keydir at the end of
/// the open by a bulk build (`BTreeMap::from_iter` sorts stably and keeps the *last* entry of equal
/// keys, i.e. the newest record, and packs nodes full: about half the memory of one-by-one inserts).
type Pending = [Vec<(Box<[u8]>, Loc)>; KEYSPACES];

/// Appends a segment's entries to the pending keydir, in order.
fn apply_entries(pending: &mut Pending, handle: u32, entries: Vec<HintEntry>) -> Result<()> {
    for e in entries {
        let Some((ks, kind)) = e.decoded() else { continue };
        let off = u32::try_from(e.offset)
            .map_err(|_| Error::corrupt("segment", "record offset beyond 4 GiB"))?;
        if e.len & (1 << 31) != 0 {
            continue;
        }
        let loc = Loc::new(handle, off, e.len, kind == RecordKind::Tombstone);
        pending[ks.index()].push((e.key.into_boxed_slice(), loc));
    }
    Ok(())
}

/// Builds the keydirs from the pending entries and sets each segment's live bytes; returns the
/// keydirs and the total live bytes.
fn build_keydirs(pending: Pending, segments: &Segments) -> ([Keydir; KEYSPACES], u64) {
    let mut live_bytes = 0;
    let keydirs = pending.map(|entries| {
        let map: BTreeMap<Box<[u8]>, Loc> = entries.into_iter().collect();
        let mut kd = Keydir::from_bulk(map);
        live_bytes += kd.recount();
        for loc in kd.map.values() {
            if let Some(seg) = segments.get(loc.handle) {
                seg.live.fetch_add(u64::from(loc.len()), Ordering::Relaxed);
            }
        }
        kd
    });
    (keydirs, live_bytes)
}

/// Opens the directory and rebuilds the in-memory state (see the module doc for the rules).
pub(crate) fn open(dir: &Path, opts: Options) -> Result<Inner> {
    opts.validate()?;
    fs::create_dir_all(dir).ctx(|| format!("creating {}", dir.display()))?;
    let lock = lockfile::acquire(dir)?;
    compaction::recover_pending(dir, &*opts.file_sync)?;
    remove_tmp_files(dir)?;

    let mut ids = list_segments(dir)?;
    let mut pending: Pending = Default::default();
    let mut segments = Segments::default();
    let mut total_bytes = 0u64;
    let mut corrupt = 0u64;

    let dir_sync = |opts: &Options| -> Result<()> {
        let d = File::open(dir).ctx(|| format!("opening {}", dir.display()))?;
        opts.file_sync.sync_dir(&d).ctx(|| format!("syncing {}", dir.display()))
    };
    if ids.is_empty() {
        let path = segment_path(dir, 1);
        File::create_new(&path).ctx(|| format!("creating {}", path.display()))?;
        dir_sync(&opts)?;
        ids.push(1);
    }
    let (&active_id, sealed) =
        ids.split_last().ok_or_else(|| Error::corrupt("dir", "no segment"))?;

    for &id in sealed {
        let path = segment_path(dir, id);
        let file = File::open(&path).ctx(|| format!("opening {}", path.display()))?;
        let len = file.metadata().ctx(|| format!("stat {}", path.display()))?.len();
        let bytes = mmap::map(&file, len).ctx(|| format!("mapping {}", path.display()))?;
        let hpath = hint_path(dir, id);
        let entries = match hint::read_hint(&hpath, len) {
            Ok(entries) => entries,
            Err(why) => {
                if hpath.exists() {
                    tracing::warn!(segment = id, %why, "hint file unusable; scanning the segment");
                }
                let scan = scan_segment(id, &bytes);
                mmap::release(&bytes);
                corrupt += scan.corrupt_inside + u64::from(scan.bad_tail);
                if let Some(h) = hint::encode_hint(len, &scan.entries)
                    && let Err(e) = hint::write_atomic(&hpath, &h, None)
                {
                    tracing::warn!(segment = id, error = %e, "could not rewrite hint file");
                }
                scan.entries
            }
        };
        let handle = segments.add(Seg::new(id, bytes, len, true));
        apply_entries(&mut pending, handle, entries)?;
        total_bytes += len;
    }

    // The active segment: scan, truncate the torn tail, map at capacity.
    let path = segment_path(dir, active_id);
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(&path)
        .ctx(|| format!("opening {}", path.display()))?;
    let file_len = file.metadata().ctx(|| format!("stat {}", path.display()))?.len();
    let scan = {
        let bytes = mmap::map(&file, file_len).ctx(|| format!("mapping {}", path.display()))?;
        let scan = scan_segment(active_id, &bytes);
        mmap::release(&bytes);
        scan
    };
    corrupt += scan.corrupt_inside;
    if scan.valid_end < file_len {
        tracing::warn!(
            segment = active_id,
            from = file_len,
            to = scan.valid_end,
            "truncating torn or corrupt tail of the active segment"
        );
        file.set_len(scan.valid_end).ctx(|| format!("truncating {}", path.display()))?;
        opts.file_sync.sync_data(&file).ctx(|| format!("syncing {}", path.display()))?;
    }
    let _ = fs::remove_file(hint_path(dir, active_id));
    let len = scan.valid_end;
    let cap = len.max(opts.segment_size);
    let bytes = mmap::map(&file, cap).ctx(|| format!("mapping {}", path.display()))?;
    let handle = segments.add(Seg::new(active_id, bytes, 0, false));
    apply_entries(&mut pending, handle, scan.entries)?;
    let (keydirs, live_bytes) = build_keydirs(pending, &segments);
    total_bytes += len;

    let counters = Counters::default();
    counters.live_bytes.store(live_bytes, Ordering::Relaxed);
    counters.total_bytes.store(total_bytes, Ordering::Relaxed);
    counters.corrupt_skipped.store(corrupt, Ordering::Relaxed);
    if corrupt > 0 {
        tracing::warn!(regions = corrupt, "opened with corrupt records skipped");
    }
    let writer = Writer::new(file, active_id, handle, len, cap);
    Ok(Inner::new(dir, opts, lock, keydirs, segments, writer, counters))
}

/// Deletes `*.tmp` files (half-written hint or commit files that were never renamed into place).
fn remove_tmp_files(dir: &Path) -> Result<()> {
    for entry in fs::read_dir(dir).ctx(|| format!("listing {}", dir.display()))? {
        let entry = entry.ctx(|| format!("listing {}", dir.display()))?;
        let path = entry.path();
        if path.extension().is_some_and(|e| e == "tmp") && path.is_file() {
            fs::remove_file(&path).ctx(|| format!("removing {}", path.display()))?;
        }
    }
    Ok(())
}
