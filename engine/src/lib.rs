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
//!
//! One line per module, top-down: a module uses only modules on the lines below it (the
//! `modules_use_only_modules_below_them` test checks this), so there is no import circle. "Uses"
//! names the engine modules a line depends on, leaving out the leaves (`hint` and everything after).
//!
//! - `engine`: the public façade: [`Engine`], [`Value`], [`Update`], [`UpdateOutcome`], [`Pending`],
//!   [`Stats`], key checks, background threads. Uses `recovery`, `compaction`, `state`.
//! - `recovery`: opening a directory (lock, interrupted compaction, hints, torn-tail truncation);
//!   builds the `Inner`. Uses `compaction`, `state`, `writer`, `segments`, `keydir`, `lockfile`.
//! - `compaction`: rewriting sealed segments and the crash-safe switch-over, replaying it at open.
//!   Uses `state`, `segments`, `keydir`.
//! - `inspect`: read-only listing, verification and hex dump of a directory. Uses `segments`.
//! - `state`: `Inner`, the shared state assembled from the four below; read path, append (record →
//!   keydir), durability waits, lock order. Uses `writer`, `commit`, `segments`, `keydir`.
//! - `writer`: the active segment's writer: append at the end, lsn, grow, roll-over with its hint.
//!   Uses `commit`, `segments`, `keydir`.
//! - `commit`: group commit (durable lsn, leader protocol) and poisoning.
//! - `segments`: `Seg`, the segment table by handle, segment and hint file names, directory sync.
//! - `keydir`: `Loc` and the per-keyspace ordered index, prefix ranges, memory estimates.
//! - `hint`: hint files and the compaction commit file (checksummed rmp-serde containers).
//! - `lockfile`: the exclusive directory lock naming its holder.
//! - `mmap`: the only `unsafe` code, read-only maps wrapped in `bytes::Bytes`.
//! - `record`: the record format (const offset chain), encoder, decoder and resyncing scanner.
//! - `options`: `Options`, `SyncPolicy`, the injected `Clock` and `FileSync`.
//! - `error`: the crate's `Error` and `Result`, and the `CompactionStep` an injected crash names.
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

mod commit;
mod compaction;
mod engine;
mod error;
mod hint;
mod inspect;
mod keydir;
mod lockfile;
mod mmap;
mod options;
pub mod record;
mod recovery;
mod segments;
mod state;
mod writer;

pub use compaction::{
    COMMIT_FILE, COMPACT_TMP_DIR, CompactionProgress, CompactionReport, MAX_THROTTLE_SLEEP,
    PROGRESS_EVERY, SWITCH_BATCH,
};
pub use engine::{Engine, Pending, Stats, Update, UpdateOutcome, Value};
pub use error::{CompactionStep, Error, Result};
pub use hint::{COMMIT_MAGIC, CONTAINER_HEADER_LEN, CONTAINER_VERSION, HINT_MAGIC, HintEntry};
pub use inspect::{RecordInfo, VerifyReport, dump, inspect, verify};
pub use keydir::{KEYDIR_BULK_ENTRY_ESTIMATE, KEYDIR_ENTRY_ESTIMATE};
pub use lockfile::LOCK_FILE;
pub use options::{
    Clock, CompactionOptions, DEFAULT_MAX_VALUE_SIZE, DEFAULT_SEGMENT_SIZE,
    DEFAULT_TOMBSTONE_GRACE, FileSync, MAX_VALUE_SIZE_LIMIT, ManualClock, Options, OsFileSync,
    SyncPolicy, SystemClock,
};
pub use record::{FORMAT_VERSION, Keyspace, RecordKind};
pub use state::LOCK_STRIPES;

#[cfg(test)]
mod tests {
    fn assert_send_sync<T: Send + Sync>() {}

    #[test]
    fn shared_types_are_send_and_sync() {
        assert_send_sync::<crate::Engine>();
        assert_send_sync::<crate::Value>();
        assert_send_sync::<crate::Options>();
    }

    /// Module names used by a source file through `crate::` paths (`use` lines and inline paths),
    /// comments skipped.
    fn used_modules(src: &str) -> Vec<String> {
        let code: String = src
            .lines()
            .filter(|l| !l.trim_start().starts_with("//"))
            .collect::<Vec<_>>()
            .join("\n");
        let ident = |s: &str| -> String {
            s.trim_start().chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect()
        };
        let mut used = Vec::new();
        for (at, _) in code.match_indices("crate::") {
            let rest = &code[at + "crate::".len()..];
            if let Some(group) = rest.strip_prefix('{') {
                // `crate::{a, b::{c, d}}`: the first name of each top-level item.
                let (mut depth, mut item_start) = (0usize, 0usize);
                for (i, ch) in group.char_indices() {
                    match ch {
                        '{' => depth += 1,
                        '}' if depth == 0 => {
                            used.push(ident(&group[item_start..i]));
                            break;
                        }
                        '}' => depth -= 1,
                        ',' if depth == 0 => {
                            used.push(ident(&group[item_start..i]));
                            item_start = i + 1;
                        }
                        _ => {}
                    }
                }
            } else {
                used.push(ident(rest));
            }
        }
        used
    }

    /// The `# Layout` list is the dependency order: every module uses only modules listed below it,
    /// and every source file is listed.
    #[test]
    fn modules_use_only_modules_below_them() {
        let src_dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let lib = std::fs::read_to_string(src_dir.join("lib.rs")).expect("reading lib.rs");
        let order: Vec<&str> = lib
            .lines()
            .skip_while(|l| *l != "//! # Layout")
            .take_while(|l| l.starts_with("//!"))
            .filter_map(|l| l.strip_prefix("//! - `")?.split('`').next())
            .collect();
        let mut files: Vec<String> = std::fs::read_dir(&src_dir)
            .expect("listing src")
            .map(|e| e.expect("listing src").file_name().to_string_lossy().into_owned())
            .filter_map(|n| Some(n.strip_suffix(".rs")?.to_owned()))
            .filter(|n| n != "lib")
            .collect();
        files.sort();
        let mut listed: Vec<String> = order.iter().map(|m| (*m).to_owned()).collect();
        listed.sort();
        assert_eq!(files, listed, "every module is listed once in # Layout");
        for (pos, module) in order.iter().enumerate() {
            let src = std::fs::read_to_string(src_dir.join(format!("{module}.rs")))
                .expect("reading a module");
            for used in used_modules(&src) {
                if let Some(at) = order.iter().position(|m| *m == used) {
                    assert!(at > pos, "`{module}` uses `{used}`, which is listed above it");
                }
            }
        }
    }
}
