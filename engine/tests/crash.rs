//! Crash and corruption: cut logs at every byte, flipped bytes in segments and hint files, and a crash
//! injected at every step of a compaction.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use cairn_engine::{CompactionStep, Engine, Error, Keyspace, ManualClock, Options, SyncPolicy};

type Model = BTreeMap<Vec<u8>, Vec<u8>>;

fn opts() -> Options {
    Options { sync: SyncPolicy::Never, ..Options::default() }
}

fn seg(dir: &Path, id: u64) -> std::path::PathBuf {
    dir.join(format!("{id:010}.seg"))
}
fn hint(dir: &Path, id: u64) -> std::path::PathBuf {
    dir.join(format!("{id:010}.hint"))
}

fn contents(e: &Engine) -> Model {
    e.scan_prefix(Keyspace::Object, b"", None, usize::MAX)
        .unwrap()
        .into_iter()
        .map(|(k, v)| (k, v.to_vec()))
        .collect()
}

/// Writes a sequence of puts/deletes into one segment, then for every byte offset reopens a copy cut
/// there: exactly the records that end at or before the cut survive, and the engine takes new writes.
#[test]
fn cut_at_every_byte_keeps_exactly_a_prefix() {
    let src = tempfile::tempdir().unwrap();
    let mut states: Vec<(u64, Model)> = vec![(0, Model::new())];
    {
        let e = Engine::open(src.path(), opts()).unwrap();
        let mut model = Model::new();
        let ops: [(&[u8], Option<&[u8]>); 9] = [
            (b"a", Some(b"1")),
            (b"b", Some(b"two")),
            (b"a", Some(b"three")),
            (b"c", Some(&[0xC4, 0x12, 0x01, 0x01])), // a value that looks like a record header
            (b"b", None),
            (b"d", Some(b"")),
            (b"c", Some(b"cc")),
            (b"a", None),
            (b"e", Some(b"last")),
        ];
        for (k, v) in ops {
            match v {
                Some(v) => {
                    e.put(Keyspace::Object, k, v).unwrap();
                    model.insert(k.to_vec(), v.to_vec());
                }
                None => {
                    e.delete(Keyspace::Object, k).unwrap();
                    model.remove(k);
                }
            }
            let len = std::fs::metadata(seg(src.path(), 1)).unwrap().len();
            states.push((len, model.clone()));
        }
    }
    let full = std::fs::read(seg(src.path(), 1)).unwrap();
    assert_eq!(full.len() as u64, states.last().unwrap().0);
    for cut in 0..=full.len() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(seg(dir.path(), 1), &full[..cut]).unwrap();
        let expect = &states.iter().rev().find(|(end, _)| *end <= cut as u64).unwrap().1;
        let e = Engine::open(dir.path(), opts()).unwrap();
        assert_eq!(&contents(&e), expect, "cut at {cut}");
        e.put(Keyspace::Object, b"new", b"write").unwrap();
        drop(e);
        let e = Engine::open(dir.path(), opts()).unwrap();
        let mut with_new = expect.clone();
        with_new.insert(b"new".to_vec(), b"write".to_vec());
        assert_eq!(contents(&e), with_new, "cut at {cut}, after a new write and reopen");
    }
}

/// A torn tail followed by zeros (a crash while the file system extended the file).
#[test]
fn zeros_after_the_last_record_are_truncated() {
    let dir = tempfile::tempdir().unwrap();
    {
        let e = Engine::open(dir.path(), opts()).unwrap();
        e.put(Keyspace::Object, b"k", b"v").unwrap();
    }
    let mut bytes = std::fs::read(seg(dir.path(), 1)).unwrap();
    let good = bytes.len();
    bytes.extend_from_slice(&[0; 4096]);
    std::fs::write(seg(dir.path(), 1), &bytes).unwrap();
    let e = Engine::open(dir.path(), opts()).unwrap();
    assert_eq!(&*e.get(Keyspace::Object, b"k").unwrap().unwrap(), b"v");
    assert_eq!(std::fs::metadata(seg(dir.path(), 1)).unwrap().len(), good as u64);
}

/// Builds a directory of several sealed segments holding keys k000..k059 with values v<i>.
fn sealed_dir() -> (tempfile::TempDir, Model) {
    let dir = tempfile::tempdir().unwrap();
    let mut model = Model::new();
    let e = Engine::open(dir.path(), Options { segment_size: 1024, ..opts() }).unwrap();
    for i in 0..60u32 {
        let (k, v) = (format!("k{i:03}"), format!("value-{i}-{}", "x".repeat(20)));
        e.put(Keyspace::Object, k.as_bytes(), v.as_bytes()).unwrap();
        model.insert(k.into_bytes(), v.into_bytes());
    }
    drop(e);
    (dir, model)
}

/// Offset of the record of `key` in segment `id`, from `inspect`.
fn offset_of(dir: &Path, id: u64, key: &[u8]) -> u64 {
    cairn_engine::inspect(dir)
        .unwrap()
        .find(|r| r.segment == id && r.key == key)
        .map(|r| r.offset)
        .unwrap()
}

#[test]
fn flipped_byte_in_a_sealed_segment_skips_only_that_record() {
    let (dir, model) = sealed_dir();
    let first_in_2 = cairn_engine::inspect(dir.path()).unwrap().find(|r| r.segment == 2).unwrap();
    let victim =
        cairn_engine::inspect(dir.path()).unwrap().filter(|r| r.segment == 2).nth(1).unwrap().key;
    assert_ne!(first_in_2.key, victim);
    let off = offset_of(dir.path(), 2, &victim);
    let mut bytes = std::fs::read(seg(dir.path(), 2)).unwrap();
    bytes[off as usize + 30] ^= 0x40; // inside the key
    std::fs::write(seg(dir.path(), 2), &bytes).unwrap();
    assert!(!cairn_engine::verify(dir.path()).unwrap().is_clean());

    // With the hint file intact the keydir still points at the record: the read reports corruption.
    {
        let e = Engine::open(dir.path(), opts()).unwrap();
        assert!(matches!(e.get(Keyspace::Object, &victim), Err(Error::Corrupt { .. })));
        for (k, v) in model.iter().filter(|(k, _)| **k != victim) {
            assert_eq!(&*e.get(Keyspace::Object, k).unwrap().unwrap(), &v[..]);
        }
    }
    // Without it the segment is scanned: the record is counted, logged and skipped.
    std::fs::remove_file(hint(dir.path(), 2)).unwrap();
    let e = Engine::open(dir.path(), opts()).unwrap();
    assert_eq!(e.stats().corrupt_records_skipped, 1);
    assert_eq!(e.get(Keyspace::Object, &victim).unwrap(), None);
    let mut expect = model.clone();
    expect.remove(&victim);
    assert_eq!(contents(&e), expect, "every other key, including later ones in the segment");
}

#[test]
fn corrupt_or_missing_hint_files_fall_back_to_scanning() {
    let (dir, model) = sealed_dir();
    let mut h = std::fs::read(hint(dir.path(), 1)).unwrap();
    let mid = h.len() / 2;
    h[mid] ^= 0x01;
    std::fs::write(hint(dir.path(), 1), &h).unwrap();
    std::fs::remove_file(hint(dir.path(), 2)).unwrap();
    std::fs::write(hint(dir.path(), 3), b"garbage").unwrap();
    let report = cairn_engine::verify(dir.path()).unwrap();
    assert_eq!((report.hints_bad, report.hints_missing), (2, 1), "{report}");
    let e = Engine::open(dir.path(), opts()).unwrap();
    assert_eq!(contents(&e), model);
    assert_eq!(e.stats().corrupt_records_skipped, 0);
    drop(e);
    assert!(cairn_engine::verify(dir.path()).unwrap().is_clean(), "open rewrote the hints");
}

/// A hint that is valid but describes an older, shorter version of the segment is not trusted.
#[test]
fn a_hint_for_a_different_segment_length_is_ignored() {
    let (dir, model) = sealed_dir();
    std::fs::copy(hint(dir.path(), 1), hint(dir.path(), 2)).unwrap();
    let e = Engine::open(dir.path(), opts()).unwrap();
    assert_eq!(contents(&e), model);
}

fn grace_opts(clock: &Arc<ManualClock>) -> Options {
    Options {
        segment_size: 1024,
        tombstone_grace: Duration::from_secs(60),
        clock: clock.clone(),
        ..opts()
    }
}

/// The value sits in an older sealed segment than its tombstone: after the grace period compaction
/// drops both, and the key stays deleted, in memory and after reopening.
#[test]
fn compaction_never_resurrects_a_deleted_key() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(1_000_000));
    let e = Engine::open(dir.path(), grace_opts(&clock)).unwrap();
    e.put(Keyspace::Object, b"doomed", b"old value").unwrap();
    for i in 0..40u32 {
        e.put(Keyspace::Object, format!("fill{i}").as_bytes(), &[1; 40]).unwrap();
    }
    assert!(e.delete(Keyspace::Object, b"doomed").unwrap());
    for i in 0..40u32 {
        e.put(Keyspace::Object, format!("more{i}").as_bytes(), &[2; 40]).unwrap();
    }
    let segs: Vec<u64> = cairn_engine::inspect(dir.path())
        .unwrap()
        .filter(|r| r.key == b"doomed")
        .map(|r| r.segment)
        .collect();
    assert!(segs.len() == 2 && segs[0] < segs[1], "value and tombstone in different segments");

    // Within the grace period the tombstone is kept (the value is dropped as superseded).
    let r = e.compact(&mut |_| {}).unwrap();
    assert_eq!(r.tombstones_dropped, 0);
    assert_eq!(e.get(Keyspace::Object, b"doomed").unwrap(), None);
    let kinds: Vec<&str> = cairn_engine::inspect(dir.path())
        .unwrap()
        .filter(|r| r.key == b"doomed")
        .map(|r| r.kind)
        .collect();
    assert_eq!(kinds, vec!["tombstone"]);

    // After it, the tombstone goes too, and nothing of the key is left to come back.
    clock.advance(Duration::from_secs(61));
    let r = e.compact(&mut |_| {}).unwrap();
    assert_eq!(r.tombstones_dropped, 1);
    assert_eq!(e.get(Keyspace::Object, b"doomed").unwrap(), None);
    assert_eq!(e.stats().tombstones, 0);
    drop(e);
    assert!(cairn_engine::inspect(dir.path()).unwrap().all(|r| r.key != b"doomed"));
    let e = Engine::open(dir.path(), grace_opts(&clock)).unwrap();
    assert_eq!(e.get(Keyspace::Object, b"doomed").unwrap(), None);
    assert_eq!(e.stats().keys_in(Keyspace::Object), 80);
}

/// A key deleted and then written again keeps its new value through compactions.
#[test]
fn a_rewritten_key_survives_its_old_tombstone_being_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(1_000_000));
    let e = Engine::open(dir.path(), grace_opts(&clock)).unwrap();
    e.put(Keyspace::Object, b"k", b"v1").unwrap();
    e.delete(Keyspace::Object, b"k").unwrap();
    e.compact(&mut |_| {}).unwrap();
    e.put(Keyspace::Object, b"k", b"v2").unwrap();
    clock.advance(Duration::from_secs(3600));
    e.compact(&mut |_| {}).unwrap();
    assert_eq!(&*e.get(Keyspace::Object, b"k").unwrap().unwrap(), b"v2");
    drop(e);
    let e = Engine::open(dir.path(), grace_opts(&clock)).unwrap();
    assert_eq!(&*e.get(Keyspace::Object, b"k").unwrap().unwrap(), b"v2");
}

/// For every step of the switch-over, a crash there loses nothing and leaves nothing behind that
/// breaks the next open; the next compaction then succeeds.
#[test]
fn a_crash_at_any_compaction_step_loses_nothing() {
    for step in CompactionStep::ALL {
        let dir = tempfile::tempdir().unwrap();
        let clock = Arc::new(ManualClock::new(1_000_000));
        let mut model = Model::new();
        {
            let e = Engine::open(dir.path(), grace_opts(&clock)).unwrap();
            for round in 0..3u32 {
                for i in 0..30u32 {
                    let k = format!("k{i:02}");
                    if (i + round) % 7 == 0 {
                        e.delete(Keyspace::Object, k.as_bytes()).unwrap();
                        model.remove(k.as_bytes());
                    } else {
                        let v = format!("r{round}-{i}-{}", "y".repeat(30));
                        e.put(Keyspace::Object, k.as_bytes(), v.as_bytes()).unwrap();
                        model.insert(k.into_bytes(), v.into_bytes());
                    }
                }
            }
        }
        clock.advance(Duration::from_secs(120)); // tombstones are droppable
        {
            let e =
                Engine::open(dir.path(), Options { crash_at: Some(step), ..grace_opts(&clock) })
                    .unwrap();
            let err = e.compact(&mut |_| {}).unwrap_err();
            assert!(matches!(err, Error::InjectedCrash(s) if s == step), "{err:?}");
            assert!(!e.is_healthy(), "a crashed engine refuses further work");
        }
        let e = Engine::open(dir.path(), grace_opts(&clock)).unwrap();
        assert_eq!(contents(&e), model, "after a crash at {step:?}");
        assert!(!dir.path().join("compact.tmp").exists(), "{step:?}");
        assert!(!dir.path().join("COMPACTION").exists(), "{step:?}");
        let report = cairn_engine::verify(dir.path()).unwrap();
        assert!(report.is_clean(), "{step:?}: {report}");
        e.put(Keyspace::Object, b"after", b"crash").unwrap();
        e.compact(&mut |_| {}).unwrap();
        model.insert(b"after".to_vec(), b"crash".to_vec());
        assert_eq!(contents(&e), model, "compaction after recovering from {step:?}");
        drop(e);
        let e = Engine::open(dir.path(), grace_opts(&clock)).unwrap();
        assert_eq!(contents(&e), model, "reopen after recovering from {step:?}");
    }
}

/// Writers keep going while a compaction runs; nothing they wrote is lost or overwritten by the
/// compaction's copies of older records.
#[test]
fn writes_during_compaction_win_over_compacted_copies() {
    let dir = tempfile::tempdir().unwrap();
    let e = Arc::new(Engine::open(dir.path(), Options { segment_size: 2048, ..opts() }).unwrap());
    for i in 0..300u32 {
        e.put(Keyspace::Object, format!("k{i:03}").as_bytes(), b"old").unwrap();
    }
    let writer = {
        let e = Arc::clone(&e);
        std::thread::spawn(move || {
            for i in 0..300u32 {
                e.put(Keyspace::Object, format!("k{i:03}").as_bytes(), b"new").unwrap();
            }
        })
    };
    for _ in 0..3 {
        e.compact(&mut |_| {}).unwrap();
    }
    writer.join().unwrap();
    for i in 0..300u32 {
        assert_eq!(
            &*e.get(Keyspace::Object, format!("k{i:03}").as_bytes()).unwrap().unwrap(),
            b"new"
        );
    }
    let e = Arc::into_inner(e).unwrap();
    drop(e);
    let e = Engine::open(dir.path(), opts()).unwrap();
    for i in 0..300u32 {
        assert_eq!(
            &*e.get(Keyspace::Object, format!("k{i:03}").as_bytes()).unwrap().unwrap(),
            b"new"
        );
    }
}

/// A flipped byte in the middle of the active segment is skipped, not treated as a torn tail: the
/// records after it (acknowledged writes) survive.
#[test]
fn corruption_inside_the_active_segment_does_not_truncate_later_records() {
    let dir = tempfile::tempdir().unwrap();
    {
        let e = Engine::open(dir.path(), opts()).unwrap();
        for k in [&b"first"[..], b"second", b"third"] {
            e.put(Keyspace::Object, k, b"value").unwrap();
        }
    }
    let off = offset_of(dir.path(), 1, b"second") as usize;
    let mut bytes = std::fs::read(seg(dir.path(), 1)).unwrap();
    let len = bytes.len();
    bytes[off + 26] ^= 0x01; // inside the key "second"
    std::fs::write(seg(dir.path(), 1), &bytes).unwrap();
    let e = Engine::open(dir.path(), opts()).unwrap();
    assert_eq!(e.get(Keyspace::Object, b"second").unwrap(), None);
    assert_eq!(&*e.get(Keyspace::Object, b"third").unwrap().unwrap(), b"value");
    assert_eq!(e.stats().corrupt_records_skipped, 1);
    assert_eq!(std::fs::metadata(seg(dir.path(), 1)).unwrap().len(), len as u64, "not truncated");
}
