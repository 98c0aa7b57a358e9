//! `cairn compact` and `cairn inspect` run as real processes against a real data directory.
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::process::{Command, Output};

use cairn_engine::{Engine, Keyspace, Options, SyncPolicy};

/// The tests of this file run one at a time. A child spawned by one test holds copies of every
/// open descriptor between its fork and its exec, the data directory lock of an engine another test
/// is closing included, so that test's next open could find its own directory still locked.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|p| p.into_inner())
}

fn cairn(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_cairn")).args(args).output().unwrap()
}

fn text(out: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

/// Writes three generations of 200 keys (so most records are superseded) and deletes 50 keys,
/// across several small segments.
fn populate(dir: &Path) {
    let opts = Options { segment_size: 64 << 10, sync: SyncPolicy::Never, ..Options::default() };
    let engine = Engine::open(dir, opts).unwrap();
    for generation in 0..3u8 {
        for i in 0..200 {
            let value = vec![generation; 300];
            engine.put(Keyspace::Object, format!("photos/{i:04}").as_bytes(), &value).unwrap();
        }
    }
    for i in 0..50 {
        engine.delete(Keyspace::Object, format!("photos/{i:04}").as_bytes()).unwrap();
    }
    engine.put(Keyspace::Bucket, b"photos", b"registry entry").unwrap();
    engine.sync().unwrap();
}

#[test]
fn inspect_lists_records_and_verify_passes_on_a_clean_directory() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    populate(dir.path());
    let d = dir.path().to_str().unwrap();

    let out = cairn(&["inspect", "--data-dir", d]);
    assert!(out.status.success(), "{}", text(&out));
    let listing = String::from_utf8_lossy(&out.stdout);
    // 600 puts + 50 deletes + 1 bucket entry, one line each, plus the header.
    assert_eq!(listing.lines().count(), 652, "{listing}");
    assert!(listing.contains("photos/0199"));

    let out = cairn(&["inspect", "--data-dir", d, "--json", "--limit", "3"]);
    assert!(out.status.success(), "{}", text(&out));
    let lines: Vec<_> = String::from_utf8_lossy(&out.stdout).lines().map(String::from).collect();
    assert_eq!(lines.len(), 3);
    for l in &lines {
        assert!(l.starts_with('{') && l.contains("\"crc_ok\":true"), "{l}");
    }

    let out = cairn(&["inspect", "--data-dir", d, "--verify"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("CLEAN"), "{}", text(&out));
}

#[test]
fn verify_fails_on_a_flipped_byte() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    populate(dir.path());
    let mut segs: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "seg"))
        .collect();
    segs.sort();
    let first = &segs[0];
    let mut bytes = std::fs::read(first).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    std::fs::write(first, bytes).unwrap();

    let out = cairn(&["inspect", "--data-dir", dir.path().to_str().unwrap(), "--verify"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("CORRUPT"), "{}", text(&out));
}

#[test]
fn compact_reclaims_space_and_keeps_every_live_key() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    populate(dir.path());
    let d = dir.path().to_str().unwrap();

    let out = cairn(&["compact", "--data-dir", d, "--tombstone-grace-secs", "0"]);
    assert!(out.status.success(), "{}", text(&out));
    let summary = text(&out);
    assert!(summary.contains("reclaimed"), "{summary}");

    let engine = Engine::open(dir.path(), Options::default()).unwrap();
    for i in 0..200 {
        let got = engine.get(Keyspace::Object, format!("photos/{i:04}").as_bytes()).unwrap();
        if i < 50 {
            assert!(got.is_none(), "deleted key {i} came back");
        } else {
            assert_eq!(&got.unwrap()[..], &[2u8; 300][..], "key {i}");
        }
    }
    assert_eq!(&engine.get(Keyspace::Bucket, b"photos").unwrap().unwrap()[..], b"registry entry");
    let stats = engine.stats();
    assert!(stats.total_bytes < 200 * 330 + 64 * 1024, "not reclaimed: {stats:?}");
}

#[test]
fn compact_refuses_a_directory_held_by_another_process_and_names_it() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    populate(dir.path());
    let _engine = Engine::open(dir.path(), Options::default()).unwrap();
    let out = cairn(&["compact", "--data-dir", dir.path().to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let msg = text(&out);
    assert!(msg.contains(&std::process::id().to_string()), "holder not named: {msg}");
}

#[test]
fn missing_directory_and_bad_flags_are_clear_errors() {
    let _serial = serial();
    let out = cairn(&["compact", "--data-dir", "/nonexistent/cairn"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out).contains("does not exist"), "{}", text(&out));
    let out = cairn(&["compact"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let out = cairn(&["--help"]);
    assert!(out.status.success());
    assert!(text(&out).contains("compact") && text(&out).contains("inspect"));
}
