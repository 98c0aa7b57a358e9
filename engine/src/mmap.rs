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

/// Drops this process's page-table entries for the whole pages inside `bytes`, a window of a
/// mapping made by [`map`]: the pages stay in the page cache (and are faulted back in if read
/// again), but stop counting in the process's resident set. Used after copying a large value out
/// so that streaming big objects does not grow the node's RSS by the mapped file. Best effort: an
/// error is ignored (the pages just stay mapped).
pub(crate) fn release(bytes: &[u8]) {
    // SAFETY: `sysconf` only reads a system constant.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    let Ok(page) = usize::try_from(page) else { return };
    if page == 0 {
        return;
    }
    let start = bytes.as_ptr() as usize;
    let first = start.div_ceil(page) * page;
    let last = (start + bytes.len()) / page * page;
    if last <= first {
        return;
    }
    // SAFETY: [first, last) lies inside `bytes`, which is a window of a live read-only file
    // mapping (`map`): MAP_SHARED, PROT_READ, never written through. MADV_DONTNEED on such a
    // mapping only discards the page-table entries; a later read faults the same file contents
    // back in from the page cache, so every `Bytes` that shares these pages (other readers of
    // the same records) still reads exactly what it read before. No memory is freed that Rust
    // code owns, and nothing is written.
    unsafe {
        libc::madvise(first as *mut libc::c_void, last - first, libc::MADV_DONTNEED);
    }
}
