//! The segment table: every mapped segment file of the open directory, by handle, and the names of
//! segment and hint files.
//!
//! A segment is one append-only file `NNNNNNNNNN.seg` (id order is log order). The last one is the
//! *active* segment, written by the `writer` and mapped once at its full capacity beyond EOF; the others
//! are *sealed*: immutable, mapped at their length, and the only ones compaction takes as input.
//! Keydir entries (`keydir::Loc`) name segments by handle, never by file id (see [`Segments`]).

use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;

use crate::error::{IoContext, Result};
use crate::options::FileSync;

/// Name of a segment file.
pub(crate) fn segment_path(dir: &Path, id: u64) -> PathBuf {
    dir.join(format!("{id:010}.seg"))
}
/// Name of a segment's hint file.
pub(crate) fn hint_path(dir: &Path, id: u64) -> PathBuf {
    dir.join(format!("{id:010}.hint"))
}

/// Segment ids present in `dir`, ascending.
pub(crate) fn list_segments(dir: &Path) -> Result<Vec<u64>> {
    let mut ids = Vec::new();
    for entry in fs::read_dir(dir).ctx(|| format!("listing {}", dir.display()))? {
        let entry = entry.ctx(|| format!("listing {}", dir.display()))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if let Some(stem) = name.strip_suffix(".seg")
            && !stem.is_empty()
            && stem.bytes().all(|b| b.is_ascii_digit())
            && let Ok(id) = stem.parse::<u64>()
        {
            ids.push(id);
        }
    }
    ids.sort_unstable();
    Ok(ids)
}

/// Syncs a directory (after creating, renaming or deleting files in it).
pub(crate) fn sync_dir(sync: &dyn FileSync, dir: &Path) -> Result<()> {
    let d = File::open(dir).ctx(|| format!("opening {}", dir.display()))?;
    sync.sync_dir(&d).ctx(|| format!("syncing directory {}", dir.display()))
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

    /// Dead bytes of sealed segments: their length minus the bytes the keydir points at.
    pub(crate) fn reclaimable_bytes(&self) -> u64 {
        self.iter()
            .filter(|(_, s)| s.sealed)
            .map(|(_, s)| s.len.saturating_sub(s.live.load(Ordering::Relaxed)))
            .sum()
    }
}
