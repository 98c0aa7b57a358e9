//! Read-only memory maps of segment files: the only module allowed to use `unsafe`.
//!
//! A map is wrapped in [`bytes::Bytes`] (`Bytes::from_owner`), so a [`crate::Value`] handed to a caller
//! is a cheap, reference-counted window into the mapped file that stays valid after the segment is
//! sealed, compacted away or deleted (the mapping keeps the inode alive).
//!
//! Assumption (documented in `docs/engine-format.md`): no other process writes to or truncates segment
//! files while they are mapped. The directory lock keeps other Cairn processes out; `cairn inspect` only
//! reads with `read(2)`, never maps.
#![allow(unsafe_code)]

use std::fs::File;

use bytes::Bytes;
use memmap2::{Mmap, MmapOptions};

/// Maps `len` bytes of `file` read-only. `len` may exceed the file's current size (the active segment
/// is mapped at its full capacity up front); callers then only read ranges below the size the file had
/// when they looked (records whose `write` completed). Pages wholly beyond the end of the file must
/// never be touched (they would raise SIGBUS).
pub(crate) fn map(file: &File, len: u64) -> std::io::Result<Bytes> {
    if len == 0 {
        return Ok(Bytes::new());
    }
    let len =
        usize::try_from(len).map_err(|_| std::io::Error::other("segment too large to map"))?;
    // SAFETY: memmap2 requires that the mapped file is not modified or truncated behind the map's back
    // in a way that invalidates bytes we read. Segment files are append-only: the engine never rewrites
    // bytes that a keydir entry points at, truncates only at open (before mapping), and replaces files
    // only by rename (an existing map keeps the old inode). Other processes are kept out by the
    // directory lock. Reads stay below the written length, so pages beyond EOF are never accessed.
    let map: Mmap = unsafe { MmapOptions::new().len(len).map(file)? };
    Ok(Bytes::from_owner(map))
}
