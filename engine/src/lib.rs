//! Cairn's storage engine: an append-only, memory-mapped, Bitcask-style log.
//!
//! Every write appends a checksummed record to the active segment file; an in-memory, ordered keydir
//! per keyspace maps each key to its latest record; reads are one keydir lookup plus a CRC check over
//! the memory-mapped record, returning a zero-copy [`Value`]. Writes are durable before they return
//! (group commit shares one fdatasync among concurrent writers), a failed sync poisons the engine,
//! recovery truncates torn tails and skips corrupt records, hint files make startup fast, and
//! compaction reclaims space online or offline without ever resurrecting a deleted key. The engine
//! holds no causality logic: values are opaque bytes, and `update` applies a caller's merge closure
//! atomically per key. The byte format is in `docs/engine-format.md` and on [`Engine`].
//!
//! # Layout
//! - `engine`: [`Engine`], keydir, read path, write path, group commit, background threads.
//! - `record`: the record format (const offset chain), encoder, decoder and resyncing scanner.
//! - `recovery`: opening a directory (lock, interrupted compaction, hints, torn-tail truncation).
//! - `compaction`: rewriting sealed segments and the crash-safe switch-over.
//! - `hint`: hint files and the compaction commit file (checksummed rmp-serde containers).
//! - `inspect`: read-only listing, verification and hex dump of a directory.
//! - `lockfile`: the exclusive directory lock naming its holder.
//! - `mmap`: the only `unsafe` code, read-only maps wrapped in `bytes::Bytes`.
//! - `options`: `Options`, `SyncPolicy`, the injected `Clock` and `FileSync`.
//! - `error`: the crate's `Error` and `Result`.
//!
//! # Example
//!
//! ```
//! use cairn_engine::{Engine, Keyspace, Options, Update};
//!
//! # fn main() -> cairn_engine::Result<()> {
//! # let tmp = std::env::temp_dir().join(format!("cairn-doc-{}", std::process::id()));
//! # std::fs::remove_dir_all(&tmp).ok();
//! let engine = Engine::open(&tmp, Options::default())?;
//! engine.put(Keyspace::Bucket, b"photos", b"{}")?;
//! // Atomic read-merge-write: concurrent updates of one key never lose each other.
//! engine.update(Keyspace::Object, b"photos/cat.jpg", |old| {
//!     let mut v = old.map(<[u8]>::to_vec).unwrap_or_default();
//!     v.extend_from_slice(b"+sibling");
//!     Ok::<_, std::convert::Infallible>(Update::Put(v))
//! })?;
//! let value = engine.get(Keyspace::Object, b"photos/cat.jpg")?;
//! assert_eq!(value.as_deref(), Some(&b"+sibling"[..]));
//! let page = engine.scan_prefix(Keyspace::Object, b"photos/", None, 100)?;
//! assert_eq!(page.len(), 1);
//! # drop(engine);
//! # std::fs::remove_dir_all(&tmp).ok();
//! # Ok(())
//! # }
//! ```

mod compaction;
mod engine;
mod error;
mod hint;
mod inspect;
mod lockfile;
mod mmap;
mod options;
pub mod record;
mod recovery;

pub use compaction::{
    COMMIT_FILE, COMPACT_TMP_DIR, CompactionProgress, CompactionReport, MAX_THROTTLE_SLEEP,
    PROGRESS_EVERY, SWITCH_BATCH,
};
pub use engine::{
    Engine, KEYDIR_BULK_ENTRY_ESTIMATE, KEYDIR_ENTRY_ESTIMATE, LOCK_STRIPES, Pending, Stats,
    Update, UpdateOutcome, Value,
};
pub use error::{Error, Result};
pub use hint::{COMMIT_MAGIC, CONTAINER_HEADER_LEN, CONTAINER_VERSION, HINT_MAGIC, HintEntry};
pub use inspect::{RecordInfo, VerifyReport, dump, inspect, verify};
pub use lockfile::LOCK_FILE;
pub use options::{
    Clock, CompactionOptions, CompactionStep, DEFAULT_MAX_VALUE_SIZE, DEFAULT_SEGMENT_SIZE,
    DEFAULT_TOMBSTONE_GRACE, FileSync, MAX_VALUE_SIZE_LIMIT, ManualClock, Options, OsFileSync,
    SyncPolicy, SystemClock,
};
pub use record::{FORMAT_VERSION, Keyspace, RecordKind};

#[cfg(test)]
mod tests {
    fn assert_send_sync<T: Send + Sync>() {}

    #[test]
    fn shared_types_are_send_and_sync() {
        assert_send_sync::<crate::Engine>();
        assert_send_sync::<crate::Value>();
        assert_send_sync::<crate::Options>();
    }
}
