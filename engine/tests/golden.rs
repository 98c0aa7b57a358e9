//! Pins the on-disk format: a small log is written with a fixed clock and dumped (offset, decoded
//! fields, hex) into `tests/golden/format.golden`. Any change to the bytes on disk fails this test.
//! After an intended format change, regenerate with `UPDATE_GOLDENFILES=1 cargo test -p cairn-engine
//! --test golden`, review the diff, and add an entry to the version log in `docs/engine-format.md`.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;

use cairn_engine::{Engine, Keyspace, ManualClock, Options, SyncPolicy};

const GOLDEN: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/golden/format.golden");

#[test]
fn format_golden() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(1_764_028_800_000)); // 2025-11-25T00:00:00Z
    let opts = Options { sync: SyncPolicy::Never, clock: clock.clone(), ..Options::default() };
    {
        let e = Engine::open(dir.path(), opts).unwrap();
        e.put(Keyspace::Bucket, b"photos", b"{}").unwrap();
        clock.advance(std::time::Duration::from_millis(1));
        e.put(Keyspace::Object, b"photos/cat.jpg", b"meow").unwrap();
        clock.advance(std::time::Duration::from_millis(1));
        e.put(Keyspace::Object, b"photos/empty", b"").unwrap();
        clock.advance(std::time::Duration::from_millis(1));
        e.put(Keyspace::Hint, b"node-2/\x00\x01", &[0xAB; 300]).unwrap(); // bin16 body, binary key
        clock.advance(std::time::Duration::from_millis(1));
        e.delete(Keyspace::Object, b"photos/cat.jpg").unwrap();
    }
    let dump = cairn_engine::dump(dir.path()).unwrap();
    if std::env::var_os("UPDATE_GOLDENFILES").is_some() {
        std::fs::write(GOLDEN, &dump).unwrap();
    }
    let want = std::fs::read_to_string(GOLDEN)
        .expect("golden file missing: run with UPDATE_GOLDENFILES=1 to create it");
    assert_eq!(dump, want, "on-disk format changed; see the header of tests/golden.rs");
}
