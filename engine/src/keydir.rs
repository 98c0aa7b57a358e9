//! The keydir: one ordered, in-memory index per keyspace from each key to its latest record.
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
//! writer lock as the append (see `state::Inner::append`).
//!
//! This module is plain data: it knows nothing of segments, files or locks. A [`Loc`] names its
//! segment by handle; the segment table (`segments`) turns the handle into a mapping.

use std::collections::BTreeMap;
use std::ops::Bound;

/// Estimated keydir cost of an entry inserted one by one, besides the key's own heap block: a
/// `BTreeMap` leaf holds up to 11 (16-byte boxed key, 12-byte location) pairs in a 320-byte node, and
/// one-by-one inserts leave leaves 55-70% full, plus internal nodes. Measured with a counting
/// allocator (see docs/decisions.md, storage engine): 52-57 bytes for sequential or clustered keys.
pub const KEYDIR_ENTRY_ESTIMATE: u64 = 56;
/// Estimated cost of an entry from the bulk build at open (nodes packed full): measured 27-30 bytes.
pub const KEYDIR_BULK_ENTRY_ESTIMATE: u64 = 30;

/// Where a key's latest record is. 12 bytes: keydir memory is per key, so it is packed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Loc {
    /// Segment handle (in-process number, never reused; see `segments::Segments`).
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

    /// Whether `key` has a live (not deleted) entry.
    pub(crate) fn contains_live(&self, key: &[u8]) -> bool {
        self.map.get(key).is_some_and(|l| !l.is_tombstone())
    }

    /// The entries (tombstones skipped) with `prefix`, after `start_after`, in key order. Walks only
    /// the range of the prefix.
    pub(crate) fn prefix_range<'a>(
        &'a self,
        prefix: &'a [u8],
        start_after: Option<&'a [u8]>,
    ) -> impl Iterator<Item = (&'a Box<[u8]>, &'a Loc)> + 'a {
        let lower = match start_after {
            Some(s) if s >= prefix => Bound::Excluded(s),
            _ => Bound::Included(prefix),
        };
        self.map
            .range::<[u8], _>((lower, Bound::Unbounded))
            .take_while(move |(k, _)| k.starts_with(prefix))
            .filter(|(_, l)| !l.is_tombstone())
    }
}

#[cfg(test)]
mod tests {
    use super::{Keydir, Loc};

    #[test]
    fn counters_follow_inserts_replacements_and_removals() {
        let mut kd = Keydir::default();
        let put = Loc::new(0, 0, 40, false);
        let tomb = Loc::new(0, 40, 30, true);
        assert_eq!(kd.insert(b"a", put), None);
        assert_eq!(kd.insert(b"b", put), None);
        assert_eq!((kd.live, kd.tombstones, kd.key_bytes), (2, 0, 2));
        assert_eq!(kd.insert(b"a", tomb), Some(put));
        assert_eq!((kd.live, kd.tombstones), (1, 1));
        assert_eq!((tomb.len(), tomb.is_tombstone()), (30, true));
        assert!(!kd.contains_live(b"a") && kd.contains_live(b"b"));
        assert!(!kd.remove_if(b"a", put), "not the current location");
        assert!(kd.remove_if(b"a", tomb));
        assert_eq!((kd.live, kd.tombstones, kd.key_bytes, kd.map.len()), (1, 0, 1, 1));
        let counted = (kd.live, kd.tombstones, kd.key_heap, kd.key_bytes);
        assert_eq!(kd.recount(), 40);
        assert_eq!((kd.live, kd.tombstones, kd.key_heap, kd.key_bytes), counted);
    }

    #[test]
    fn prefix_range_skips_tombstones_and_resumes_after_the_cursor() {
        let mut kd = Keydir::default();
        for (k, tomb) in [(&b"a/1"[..], false), (b"a/2", true), (b"a/3", false), (b"b/1", false)] {
            kd.insert(k, Loc::new(0, 0, 1, tomb));
        }
        let keys = |after: Option<&[u8]>| -> Vec<Vec<u8>> {
            kd.prefix_range(b"a/", after).map(|(k, _)| k.to_vec()).collect()
        };
        assert_eq!(keys(None), [b"a/1".to_vec(), b"a/3".to_vec()]);
        assert_eq!(keys(Some(b"a/1")), [b"a/3".to_vec()]);
        assert_eq!(
            keys(Some(b"0")),
            [b"a/1".to_vec(), b"a/3".to_vec()],
            "a cursor before the prefix"
        );
        assert!(keys(Some(b"a/3")).is_empty());
    }
}
