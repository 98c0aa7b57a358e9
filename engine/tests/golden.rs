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

const GOLDEN_HINT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/golden/hint.golden");

/// Pins the hint file format: small segments roll over, so sealed segments get hint files.
#[test]
fn hint_format_golden() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(1_764_028_800_000));
    let opts = Options {
        sync: SyncPolicy::Never,
        segment_size: 1024,
        clock: clock.clone(),
        ..Options::default()
    };
    {
        let e = Engine::open(dir.path(), opts).unwrap();
        e.put(Keyspace::Object, b"a", &[1; 600]).unwrap();
        e.put(Keyspace::Bucket, b"b", &[2; 300]).unwrap();
        e.delete(Keyspace::Object, b"a").unwrap();
        e.put(Keyspace::Hint, b"node-1/x", &[3; 700]).unwrap(); // rolls over: segment 1 gets a hint
    }
    let dump = cairn_engine::dump(dir.path()).unwrap();
    let hint_part: String = dump
        .lines()
        .skip_while(|l| !l.starts_with("hint "))
        .take_while(|l| !l.starts_with("segment "))
        .map(|l| format!("{l}\n"))
        .collect();
    assert!(!hint_part.is_empty(), "a hint file was written:\n{dump}");
    if std::env::var_os("UPDATE_GOLDENFILES").is_some() {
        std::fs::write(GOLDEN_HINT, &hint_part).unwrap();
    }
    let want = std::fs::read_to_string(GOLDEN_HINT)
        .expect("golden file missing: run with UPDATE_GOLDENFILES=1 to create it");
    assert_eq!(hint_part, want, "hint file format changed; see the header of tests/golden.rs");
}
