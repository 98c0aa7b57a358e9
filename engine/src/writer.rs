//! The active segment's writer: appending encoded records at the end of the log, the lsn, growing
//! the active mapping, and rolling over to a new segment (sealing the old one and writing its hint).
//!
//! The writer owns the active file and its length; it lives behind `state::Inner::writer`, a mutex,
//! so appends are serialised. It does not touch the keydir: `state::Inner::append` points the keydir
//! at the [`Loc`] a write returns while still holding the writer lock, which is what keeps keydir
//! order equal to log order. Durability is not the writer's business either: the lsn it advances is
//! what the group commit (`commit`) waits on.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;

use parking_lot::RwLock;

use crate::commit::GroupCommit;
use crate::error::{Error, IoContext, Result};
use crate::hint::{self, HintEntry};
use crate::keydir::Loc;
use crate::mmap;
use crate::options::{Options, SyncPolicy};
use crate::record;
use crate::segments::{Seg, Segments, hint_path, segment_path, sync_dir};

/// The appender's state, behind `Inner::writer`.
pub(crate) struct Writer {
    /// The active segment file. An `Arc` because the group-commit leader clones it and runs fdatasync
    /// outside the writer lock, so appends continue while a sync is in flight; dropping the last clone
    /// closes the file (after a roll-over the leader may hold the old file a moment longer).
    pub file: Arc<File>,
    /// The active segment's file id.
    pub id: u64,
    /// The active segment's handle in the segment table.
    pub handle: u32,
    /// Bytes written to the active segment (its length).
    pub len: u64,
    /// Length of the active segment's mapping.
    pub cap: u64,
    /// Bytes appended since open, over all segments: the group-commit sequence number.
    pub lsn: u64,
}

impl Writer {
    /// The writer of an opened active segment `len` bytes long, mapped `cap` bytes (lsn 0).
    pub(crate) fn new(file: File, id: u64, handle: u32, len: u64, cap: u64) -> Self {
        Self { file: Arc::new(file), id, handle, len, cap, lsn: 0 }
    }

    /// Writes one encoded record at the end of the active segment and advances the length and the
    /// lsn; returns the record's location. The caller has made room (`roll`, `grow`). The record
    /// may come in two consecutive parts (head, then a large value, or an empty tail), written
    /// without joining them: two positioned writes. A crash between them leaves a torn record,
    /// which recovery truncates exactly like a torn single write.
    pub(crate) fn write_parts(&mut self, head: &[u8], tail: &[u8], tombstone: bool) -> Result<Loc> {
        let rec_len = (head.len() + tail.len()) as u64;
        let off = self.len;
        // Both fit by construction (segments <= 4 GiB, records < 2 GiB); checked before writing so a
        // violation can never leave a record on disk that the keydir does not know.
        let off32 =
            u32::try_from(off).map_err(|_| Error::corrupt("segment", "offset over 4 GiB"))?;
        let len32 = u32::try_from(rec_len)
            .ok()
            .filter(|l| l & (1 << 31) == 0)
            .ok_or_else(|| Error::corrupt("record", "2 GiB or larger"))?;
        self.file
            .write_all_at(head, off)
            .ctx(|| format!("appending to segment {:010}", self.id))?;
        if !tail.is_empty() {
            self.file
                .write_all_at(tail, off + head.len() as u64)
                .ctx(|| format!("appending to segment {:010}", self.id))?;
        }
        self.len += rec_len;
        self.lsn += rec_len;
        Ok(Loc::new(self.handle, off32, len32, tombstone))
    }

    /// Seals the active segment and starts the next one. Order: sync the old file (unless `Never`;
    /// a failure poisons), write its hint, create the new file, sync the directory, swap mappings.
    pub(crate) fn roll(
        &mut self,
        dir: &Path,
        opts: &Options,
        commit: &GroupCommit,
        segments: &RwLock<Segments>,
    ) -> Result<()> {
        if opts.sync != SyncPolicy::Never {
            if let Err(e) = opts.file_sync.sync_data(&self.file) {
                commit.poison();
                tracing::error!(error = %e, segment = self.id, "fdatasync at roll-over failed; engine poisoned");
                return Err(Error::io(format!("syncing segment {:010}", self.id), e));
            }
            commit.publish(self.lsn);
        }
        let sealed_bytes =
            mmap::map(&self.file, self.len).ctx(|| format!("mapping segment {:010}", self.id))?;
        let entries = hint_entries(&sealed_bytes);
        // Reading the headers faulted pages (and their neighbours) into this mapping; they stay
        // in the page cache, but need not count in the process's resident set.
        mmap::release(&sealed_bytes);
        match hint::encode_hint(self.len, &entries) {
            Some(h) => {
                if let Err(e) = hint::write_atomic(&hint_path(dir, self.id), &h, None) {
                    tracing::warn!(error = %e, segment = self.id, "could not write hint file; the segment will be scanned at open");
                }
            }
            None => tracing::warn!(segment = self.id, "hint file too large; not written"),
        }
        let new_id = self.id + 1;
        let path = segment_path(dir, new_id);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)
            .ctx(|| format!("creating {}", path.display()))?;
        if opts.sync != SyncPolicy::Never {
            sync_dir(&*opts.file_sync, dir)?;
        }
        let cap = opts.segment_size;
        let bytes = mmap::map(&file, cap).ctx(|| format!("mapping {}", path.display()))?;
        let mut segs = segments.write();
        if let Some(old) = segs.get_mut(self.handle) {
            old.bytes = sealed_bytes;
            old.len = self.len;
            old.sealed = true;
        }
        let handle = segs.add(Seg::new(new_id, bytes, 0, false));
        drop(segs);
        self.file = Arc::new(file);
        self.id = new_id;
        self.handle = handle;
        self.len = 0;
        self.cap = cap;
        Ok(())
    }

    /// Remaps the active segment with a larger capacity (a record bigger than `segment_size`).
    pub(crate) fn grow(
        &mut self,
        need: u64,
        segment_size: u64,
        segments: &RwLock<Segments>,
    ) -> Result<()> {
        let cap = need.max(segment_size);
        let bytes =
            mmap::map(&self.file, cap).ctx(|| format!("mapping segment {:010}", self.id))?;
        if let Some(seg) = segments.write().get_mut(self.handle) {
            seg.bytes = bytes;
        }
        self.cap = cap;
        Ok(())
    }
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
