//! Behaviour of the public API: reads and writes, scans, update atomicity, the lock, sync failures,
//! limits and hostile files.
#![allow(clippy::unwrap_used)]

use std::fs::File;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use cairn_engine::{
    CompactionOptions, Engine, Error, FileSync, Keyspace, ManualClock, Options, SyncPolicy, Update,
    UpdateOutcome,
};

fn opts() -> Options {
    Options { sync: SyncPolicy::Never, ..Options::default() }
}

fn small_segments() -> Options {
    Options { segment_size: 4096, ..opts() }
}

#[test]
fn put_get_delete_and_reopen() {
    let dir = tempfile::tempdir().unwrap();
    {
        let e = Engine::open(dir.path(), opts()).unwrap();
        e.put(Keyspace::Object, b"a", b"1").unwrap();
        e.put(Keyspace::Object, b"b", b"2").unwrap();
        e.put(Keyspace::Object, b"a", b"3").unwrap();
        e.put(Keyspace::Bucket, b"a", b"bucket-a").unwrap();
        assert!(e.delete(Keyspace::Object, b"b").unwrap());
        assert!(!e.delete(Keyspace::Object, b"b").unwrap(), "second delete finds nothing");
        assert_eq!(&*e.get(Keyspace::Object, b"a").unwrap().unwrap(), b"3");
        assert_eq!(e.get(Keyspace::Object, b"b").unwrap(), None);
        assert_eq!(&*e.get(Keyspace::Bucket, b"a").unwrap().unwrap(), b"bucket-a");
        assert_eq!(e.get(Keyspace::Hint, b"a").unwrap(), None, "keyspaces are separate");
    }
    let e = Engine::open(dir.path(), opts()).unwrap();
    assert_eq!(&*e.get(Keyspace::Object, b"a").unwrap().unwrap(), b"3");
    assert_eq!(e.get(Keyspace::Object, b"b").unwrap(), None, "tombstone survives reopen");
    let s = e.stats();
    assert_eq!(s.keys_in(Keyspace::Object), 1);
    assert_eq!(s.keys_in(Keyspace::Bucket), 1);
    assert_eq!(s.tombstones, 1);
    assert!(s.healthy);
}

#[test]
fn values_survive_roll_over_and_stay_valid_after_compaction() {
    let dir = tempfile::tempdir().unwrap();
    let e = Engine::open(dir.path(), small_segments()).unwrap();
    for i in 0..200u32 {
        e.put(Keyspace::Object, format!("k{i:03}").as_bytes(), &[i as u8; 100]).unwrap();
    }
    let held = e.get(Keyspace::Object, b"k000").unwrap().unwrap();
    assert!(e.stats().segments > 3, "4 KiB segments rolled over");
    for i in 0..100u32 {
        e.put(Keyspace::Object, format!("k{i:03}").as_bytes(), &[1; 50]).unwrap();
    }
    let report = e.compact(&mut |_| {}).unwrap();
    assert!(report.superseded_dropped >= 100);
    assert!(report.bytes_after < report.bytes_before);
    assert_eq!(&*held, &[0u8; 100][..], "a value read before compaction stays readable");
    for i in 0..200u32 {
        let v = e.get(Keyspace::Object, format!("k{i:03}").as_bytes()).unwrap().unwrap();
        if i < 100 {
            assert_eq!(&*v, &[1; 50][..]);
        } else {
            assert_eq!(&*v, &[i as u8; 100][..]);
        }
    }
    drop(e);
    let e = Engine::open(dir.path(), small_segments()).unwrap();
    assert_eq!(e.stats().keys_in(Keyspace::Object), 200);
    assert_eq!(&*e.get(Keyspace::Object, b"k150").unwrap().unwrap(), &[150u8; 100][..]);
    assert!(cairn_engine::verify(dir.path()).unwrap().is_clean());
}

#[test]
fn a_value_bigger_than_a_segment_gets_its_own() {
    let dir = tempfile::tempdir().unwrap();
    let e = Engine::open(dir.path(), small_segments()).unwrap();
    e.put(Keyspace::Object, b"small", b"x").unwrap();
    let big = vec![9u8; 20_000];
    e.put(Keyspace::Object, b"big", &big).unwrap();
    e.put(Keyspace::Object, b"after", b"y").unwrap();
    assert_eq!(&*e.get(Keyspace::Object, b"big").unwrap().unwrap(), &big[..]);
    drop(e);
    let e = Engine::open(dir.path(), small_segments()).unwrap();
    assert_eq!(&*e.get(Keyspace::Object, b"big").unwrap().unwrap(), &big[..]);
    assert_eq!(&*e.get(Keyspace::Object, b"after").unwrap().unwrap(), b"y");
}

#[test]
fn scan_prefix_stays_in_its_prefix_and_pages_with_a_cursor() {
    let dir = tempfile::tempdir().unwrap();
    let e = Engine::open(dir.path(), opts()).unwrap();
    for k in ["a/1", "a/2", "a/3", "a/4", "ab", "b/1", "a"] {
        e.put(Keyspace::Object, k.as_bytes(), k.as_bytes()).unwrap();
    }
    e.delete(Keyspace::Object, b"a/3").unwrap();
    let page = e.scan_prefix(Keyspace::Object, b"a/", None, 2).unwrap();
    let keys: Vec<_> = page.iter().map(|(k, _)| k.clone()).collect();
    assert_eq!(keys, vec![b"a/1".to_vec(), b"a/2".to_vec()]);
    assert_eq!(&*page[1].1, b"a/2");
    let rest = e.keys_with_prefix(Keyspace::Object, b"a/", Some(b"a/2"), 10);
    assert_eq!(rest, vec![b"a/4".to_vec()], "deleted a/3 skipped, ab and b/1 outside the prefix");
    assert!(e.keys_with_prefix(Keyspace::Object, b"a/", Some(b"zzz"), 10).is_empty());
    assert_eq!(e.keys_with_prefix(Keyspace::Object, b"", None, 100).len(), 6);
    assert!(e.keys_with_prefix(Keyspace::Bucket, b"a", None, 10).is_empty());
}

#[test]
fn update_applies_merge_and_reports_outcome() {
    let dir = tempfile::tempdir().unwrap();
    let e = Engine::open(dir.path(), opts()).unwrap();
    let append = |old: Option<&[u8]>| -> Result<Update, String> {
        let mut v = old.map(<[u8]>::to_vec).unwrap_or_default();
        v.push(b'x');
        Ok(Update::Put(v))
    };
    assert_eq!(e.update(Keyspace::Object, b"k", append).unwrap(), UpdateOutcome::Stored);
    assert_eq!(e.update(Keyspace::Object, b"k", append).unwrap(), UpdateOutcome::Stored);
    assert_eq!(&*e.get(Keyspace::Object, b"k").unwrap().unwrap(), b"xx");
    let keep = |_: Option<&[u8]>| -> Result<Update, String> { Ok(Update::Keep) };
    assert_eq!(e.update(Keyspace::Object, b"k", keep).unwrap(), UpdateOutcome::Unchanged);
    let refuse = |_: Option<&[u8]>| -> Result<Update, String> { Err("too many siblings".into()) };
    assert_eq!(
        e.update(Keyspace::Object, b"k", refuse).unwrap(),
        UpdateOutcome::Aborted("too many siblings".to_string())
    );
    let del = |_: Option<&[u8]>| -> Result<Update, String> { Ok(Update::Delete) };
    assert_eq!(e.update(Keyspace::Object, b"k", del).unwrap(), UpdateOutcome::Deleted);
    assert_eq!(e.update(Keyspace::Object, b"k", del).unwrap(), UpdateOutcome::Unchanged);
    assert_eq!(e.get(Keyspace::Object, b"k").unwrap(), None);
}

/// Many threads increment counters stored under a few keys through `update`: a lost update would
/// show as a total below the number of increments.
#[test]
fn concurrent_updates_lose_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let e = Arc::new(Engine::open(dir.path(), small_segments()).unwrap());
    const THREADS: usize = 8;
    const PER_THREAD: u64 = 300;
    const KEYS: usize = 3;
    let handles: Vec<_> = (0..THREADS)
        .map(|t| {
            let e = Arc::clone(&e);
            std::thread::spawn(move || {
                for i in 0..PER_THREAD {
                    let key = format!("counter-{}", (t + i as usize) % KEYS);
                    e.update(Keyspace::Object, key.as_bytes(), |old| {
                        let n = old.map_or(0, |b| u64::from_le_bytes(b.try_into().unwrap()));
                        Ok::<_, ()>(Update::Put((n + 1).to_le_bytes().to_vec()))
                    })
                    .unwrap();
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    let total: u64 = (0..KEYS)
        .map(|k| {
            let v = e.get(Keyspace::Object, format!("counter-{k}").as_bytes()).unwrap().unwrap();
            u64::from_le_bytes((&*v).try_into().unwrap())
        })
        .sum();
    assert_eq!(total, THREADS as u64 * PER_THREAD);
}

/// With `Always`, concurrent writers all get durable acknowledgements, and no write needs its own
/// fdatasync more than once (syncs never exceed writes).
#[test]
fn a_deferred_update_is_visible_at_once_and_durable_after_the_wait() {
    let dir = tempfile::tempdir().unwrap();
    let e = Engine::open(dir.path(), Options::default()).unwrap();
    assert_eq!(Options::default().sync, SyncPolicy::Always);
    let before = e.stats().syncs;
    let (outcome, pending) = e
        .update_deferred(Keyspace::Object, b"k", |_| Ok::<_, ()>(Update::Put(b"v1".to_vec())))
        .unwrap();
    assert_eq!(outcome, UpdateOutcome::Stored);
    assert_eq!(e.get(Keyspace::Object, b"k").unwrap().unwrap().as_ref(), b"v1", "readable");
    assert_eq!(e.stats().syncs, before, "no fdatasync before the wait");
    let (_, second) = e
        .update_deferred(Keyspace::Object, b"j", |_| Ok::<_, ()>(Update::Put(b"v2".to_vec())))
        .unwrap();
    e.wait_durable(pending.max(second)).unwrap();
    assert_eq!(e.stats().syncs, before + 1, "one fdatasync covers both");
    e.wait_durable(pending).unwrap();
    assert_eq!(e.stats().syncs, before + 1, "an earlier write is already covered");
    let (outcome, nothing) =
        e.update_deferred(Keyspace::Object, b"k", |_| Ok::<_, ()>(Update::Keep)).unwrap();
    assert_eq!(outcome, UpdateOutcome::Unchanged);
    e.wait_durable(nothing).unwrap();
    assert_eq!(e.stats().syncs, before + 1, "nothing written and all synced: nothing to sync");
    // An unchanged key whose last record is not synced yet waits for that record.
    let (_, unsynced) = e
        .update_deferred(Keyspace::Object, b"u", |_| Ok::<_, ()>(Update::Put(b"v3".to_vec())))
        .unwrap();
    let (outcome, keep) =
        e.update_deferred(Keyspace::Object, b"u", |_| Ok::<_, ()>(Update::Keep)).unwrap();
    assert_eq!(outcome, UpdateOutcome::Unchanged);
    assert!(!e.is_durable(keep) && keep >= unsynced, "an unchanged key still waits");
    e.wait_durable(keep).unwrap();
    assert!(e.is_durable(unsynced));
}

#[test]
fn group_commit_acknowledges_every_writer() {
    let dir = tempfile::tempdir().unwrap();
    let e = Arc::new(Engine::open(dir.path(), Options::default()).unwrap());
    let handles: Vec<_> = (0..16)
        .map(|t| {
            let e = Arc::clone(&e);
            std::thread::spawn(move || {
                for i in 0..20 {
                    e.put(Keyspace::Object, format!("t{t}-{i}").as_bytes(), &[7; 64]).unwrap();
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    let s = e.stats();
    assert_eq!(s.writes, 320);
    assert!(s.syncs >= 1 && s.syncs <= s.writes, "syncs {} writes {}", s.syncs, s.writes);
    drop(e);
    let e = Engine::open(dir.path(), opts()).unwrap();
    assert_eq!(e.stats().keys_in(Keyspace::Object), 320);
}

#[test]
fn second_open_is_refused_naming_the_holder() {
    let dir = tempfile::tempdir().unwrap();
    let first = Engine::open(dir.path(), opts()).unwrap();
    let err = Engine::open(dir.path(), opts()).unwrap_err();
    match &err {
        Error::Locked { holder, .. } => {
            assert!(holder.contains(&format!("pid={}", std::process::id())), "holder: {holder}");
        }
        other => panic!("expected Locked, got {other:?}"),
    }
    assert!(err.to_string().contains("locked by another process"));
    drop(first);
    Engine::open(dir.path(), opts()).unwrap();
}

/// A `FileSync` whose data syncs start failing when told to.
struct FlakySync {
    fail: AtomicBool,
    calls: AtomicU64,
}

impl FileSync for FlakySync {
    fn sync_data(&self, file: &File) -> std::io::Result<()> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        if self.fail.load(Ordering::SeqCst) {
            return Err(std::io::Error::other("simulated EIO from fdatasync"));
        }
        file.sync_data()
    }
    fn sync_dir(&self, dir: &File) -> std::io::Result<()> {
        dir.sync_all()
    }
}

#[test]
fn a_failed_sync_poisons_the_engine() {
    let dir = tempfile::tempdir().unwrap();
    let flaky = Arc::new(FlakySync { fail: AtomicBool::new(false), calls: AtomicU64::new(0) });
    let e = Engine::open(
        dir.path(),
        Options { sync: SyncPolicy::Always, file_sync: flaky.clone(), ..Options::default() },
    )
    .unwrap();
    e.put(Keyspace::Object, b"before", b"1").unwrap();
    assert!(e.is_healthy());
    flaky.fail.store(true, Ordering::SeqCst);
    let err = e.put(Keyspace::Object, b"during", b"2").unwrap_err();
    assert!(matches!(err, Error::Io { .. }), "{err:?}");
    assert!(!e.is_healthy());
    assert!(!e.stats().healthy);
    flaky.fail.store(false, Ordering::SeqCst);
    assert!(matches!(e.put(Keyspace::Object, b"after", b"3"), Err(Error::Poisoned)));
    assert!(matches!(e.delete(Keyspace::Object, b"before"), Err(Error::Poisoned)));
    assert!(matches!(e.sync(), Err(Error::Poisoned)));
    assert!(matches!(e.compact(&mut |_| {}), Err(Error::Poisoned)));
    assert_eq!(&*e.get(Keyspace::Object, b"before").unwrap().unwrap(), b"1", "reads still work");
    drop(e);
    let e = Engine::open(dir.path(), opts()).unwrap();
    assert!(e.is_healthy(), "reopening recovers");
    assert_eq!(&*e.get(Keyspace::Object, b"before").unwrap().unwrap(), b"1");
}

#[test]
fn limits_are_enforced_with_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let e = Engine::open(dir.path(), Options { max_value_size: 1000, ..opts() }).unwrap();
    let err = e.put(Keyspace::Object, b"k", &[0; 1001]).unwrap_err();
    assert!(matches!(err, Error::ValueTooLarge { size: 1001, max: 1000 }));
    assert!(err.is_invalid_input() && !err.is_retryable());
    let err = e.put(Keyspace::Object, &vec![b'k'; 70_000], b"v").unwrap_err();
    assert!(matches!(err, Error::KeyTooLarge { .. }));
    e.put(Keyspace::Object, b"k", &[0; 1000]).unwrap();
    assert!(Engine::open(dir.path(), Options { segment_size: 10, ..opts() }).is_err());
}

#[test]
fn sync_policy_parses() {
    assert_eq!("always".parse::<SyncPolicy>().unwrap(), SyncPolicy::Always);
    assert_eq!("never".parse::<SyncPolicy>().unwrap(), SyncPolicy::Never);
    assert_eq!(
        "interval:250".parse::<SyncPolicy>().unwrap(),
        SyncPolicy::Interval(std::time::Duration::from_millis(250))
    );
    for bad in ["", "sometimes", "interval:", "interval:0", "interval:-1"] {
        assert!(bad.parse::<SyncPolicy>().is_err(), "{bad:?}");
    }
    assert_eq!(SyncPolicy::Interval(std::time::Duration::from_millis(5)).to_string(), "interval:5");
}

#[test]
fn interval_policy_syncs_in_the_background() {
    let dir = tempfile::tempdir().unwrap();
    let e = Engine::open(
        dir.path(),
        Options {
            sync: SyncPolicy::Interval(std::time::Duration::from_millis(10)),
            ..Options::default()
        },
    )
    .unwrap();
    e.put(Keyspace::Object, b"k", b"v").unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while e.stats().syncs == 0 && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    assert!(e.stats().syncs >= 1, "the interval thread synced the write");
}

fn write_segment(dir: &Path, id: u64, bytes: &[u8]) {
    std::fs::write(dir.join(format!("{id:010}.seg")), bytes).unwrap();
}

/// Hostile files never panic the engine or make it allocate what a length field claims.
#[test]
fn hostile_segments_open_cleanly() {
    let rec = {
        // a valid record from a scratch engine, to embed in the garbage
        let d = tempfile::tempdir().unwrap();
        let e = Engine::open(d.path(), opts()).unwrap();
        e.put(Keyspace::Object, b"survivor", b"yes").unwrap();
        drop(e);
        std::fs::read(d.path().join("0000000001.seg")).unwrap()
    };
    let mut huge_len = rec.clone();
    huge_len[8..12].copy_from_slice(&u32::MAX.to_le_bytes());
    let mut rng = 0x9e37_79b9_7f4a_7c15u64;
    let random: Vec<u8> = (0..8192)
        .map(|_| {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng as u8
        })
        .collect();
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("zeros", vec![0; 8192]),
        ("random", random.clone()),
        ("huge length", huge_len.clone()),
        ("random then record", [random.clone(), rec.clone()].concat()),
        ("truncated header", rec[..10].to_vec()),
    ];
    for (name, bytes) in cases {
        // As a sealed segment (followed by an empty active one) and as the active segment.
        for sealed in [true, false] {
            let dir = tempfile::tempdir().unwrap();
            write_segment(dir.path(), 1, &bytes);
            if sealed {
                write_segment(dir.path(), 2, b"");
            }
            let report = cairn_engine::verify(dir.path()).unwrap();
            assert!(!report.is_clean() || name == "random then record", "{name}: {report}");
            let n = cairn_engine::inspect(dir.path()).unwrap().count();
            assert!(n >= 1, "{name}");
            let e = Engine::open(dir.path(), opts()).unwrap();
            let survivor = e.get(Keyspace::Object, b"survivor").unwrap();
            if name == "random then record" {
                assert_eq!(survivor.as_deref(), Some(&b"yes"[..]), "{name} sealed={sealed}");
            }
            e.put(Keyspace::Object, b"new", b"write").unwrap();
            drop(e);
            let e = Engine::open(dir.path(), opts()).unwrap();
            assert_eq!(&*e.get(Keyspace::Object, b"new").unwrap().unwrap(), b"write", "{name}");
        }
    }
}

#[test]
fn record_timestamps_come_from_the_injected_clock() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(1_700_000_000_000));
    let e = Engine::open(dir.path(), Options { clock: clock.clone(), ..opts() }).unwrap();
    e.put(Keyspace::Object, b"k", b"v").unwrap();
    clock.advance(std::time::Duration::from_secs(1));
    e.delete(Keyspace::Object, b"k").unwrap();
    drop(e);
    let ts: Vec<u64> = cairn_engine::inspect(dir.path()).unwrap().map(|r| r.timestamp_ms).collect();
    assert_eq!(ts, vec![1_700_000_000_000, 1_700_000_001_000]);
}

#[test]
fn background_compaction_reclaims_space_while_serving() {
    let dir = tempfile::tempdir().unwrap();
    let e = Engine::open(
        dir.path(),
        Options {
            segment_size: 1024,
            background_compaction: Some(CompactionOptions {
                interval: std::time::Duration::from_millis(10),
                jitter: std::time::Duration::from_millis(5),
                max_bytes_per_sec: 10 << 20,
                min_dead_ratio: 0.5,
                min_dead_bytes: 0,
            }),
            ..opts()
        },
    )
    .unwrap();
    for round in 0..20u8 {
        for k in 0..10u8 {
            e.put(Keyspace::Object, &[b'k', k], &[round; 60]).unwrap();
        }
    }
    let before = e.stats().total_bytes;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while e.stats().compactions == 0 && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    let s = e.stats();
    assert!(s.compactions >= 1, "the background thread compacted");
    assert!(s.total_bytes < before / 2, "{} -> {}", before, s.total_bytes);
    for k in 0..10u8 {
        assert_eq!(&*e.get(Keyspace::Object, &[b'k', k]).unwrap().unwrap(), &[19u8; 60][..]);
    }
    drop(e); // joins the thread
    let e = Engine::open(dir.path(), opts()).unwrap();
    assert_eq!(e.stats().keys_in(Keyspace::Object), 10);
}

#[test]
fn compaction_reports_progress_and_totals() {
    let dir = tempfile::tempdir().unwrap();
    let e = Engine::open(dir.path(), small_segments()).unwrap();
    for i in 0..100u32 {
        e.put(Keyspace::Object, format!("k{}", i % 20).as_bytes(), &[1; 100]).unwrap();
    }
    e.delete(Keyspace::Object, b"k0").unwrap();
    let mut seen = Vec::new();
    let r = e.compact(&mut |p| seen.push((p.bytes_done, p.bytes_total))).unwrap();
    let last = *seen.last().unwrap();
    assert_eq!(last.0, last.1, "progress ends at the total");
    assert_eq!(last.1, r.bytes_before);
    assert!(seen.windows(2).all(|w| w[0].0 <= w[1].0), "progress never goes back");
    assert_eq!(r.records_before, 101);
    assert_eq!(r.records_after, 20, "19 live values and 1 tombstone within its grace period");
    assert_eq!(r.superseded_dropped, 81);
    assert_eq!(r.tombstones_dropped, 0);
    assert_eq!(e.stats().compactions, 1);
}

#[test]
fn inspect_lists_records_and_json_escapes_keys() {
    let dir = tempfile::tempdir().unwrap();
    let e = Engine::open(dir.path(), opts()).unwrap();
    e.put(Keyspace::Object, b"a\"b\n\xff", b"value").unwrap();
    e.delete(Keyspace::Object, b"a\"b\n\xff").unwrap();
    drop(e);
    let recs: Vec<_> = cairn_engine::inspect(dir.path()).unwrap().collect();
    assert_eq!(recs.len(), 2);
    assert_eq!((recs[0].kind, recs[0].keyspace, recs[0].value_len), ("put", "object", 5));
    assert_eq!(recs[1].kind, "tombstone");
    assert!(recs.iter().all(|r| r.crc_ok));
    let json = recs[0].to_json();
    assert!(json.contains("\"key\":\"a\\\"b\\u000a\u{fffd}\""), "{json}");
    assert!(json.starts_with('{') && json.ends_with('}'));
    let report = cairn_engine::verify(dir.path()).unwrap();
    assert!(report.is_clean());
    assert_eq!(report.records_ok, 2);
    assert!(report.to_string().ends_with("CLEAN"), "{report}");
}

/// A compaction that fails before its commit point (here: its output cannot be synced) changes
/// nothing: the engine stays healthy, the partial outputs are removed, and a later compaction works.
#[test]
fn a_compaction_failing_before_its_commit_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let flaky = Arc::new(FlakySync { fail: AtomicBool::new(false), calls: AtomicU64::new(0) });
    let e =
        Engine::open(dir.path(), Options { file_sync: flaky.clone(), ..small_segments() }).unwrap();
    for i in 0..100u32 {
        e.put(Keyspace::Object, format!("k{}", i % 10).as_bytes(), &i.to_le_bytes()).unwrap();
    }
    flaky.fail.store(true, Ordering::SeqCst);
    assert!(matches!(e.compact(&mut |_| {}), Err(Error::Io { .. })));
    assert!(flaky.calls.load(Ordering::SeqCst) > 0);
    assert!(e.is_healthy());
    assert!(!dir.path().join("compact.tmp").exists());
    flaky.fail.store(false, Ordering::SeqCst);
    e.compact(&mut |_| {}).unwrap();
    for k in 0..10u32 {
        let v = e.get(Keyspace::Object, format!("k{k}").as_bytes()).unwrap().unwrap();
        assert_eq!(&*v, &(90 + k).to_le_bytes());
    }
}

/// The per-segment live-byte bookkeeping behind `reclaimable_bytes` agrees with what a reopen
/// recomputes from disk, and a compaction brings it to zero.
#[test]
fn reclaimable_bytes_are_tracked_and_reclaimed() {
    let dir = tempfile::tempdir().unwrap();
    let e = Engine::open(dir.path(), small_segments()).unwrap();
    for round in 0..5u8 {
        for k in 0..30u8 {
            e.put(Keyspace::Object, &[b'k', k], &[round; 50]).unwrap();
        }
        e.delete(Keyspace::Object, &[b'k', round]).unwrap();
    }
    let live = e.stats();
    assert!(live.reclaimable_bytes > 0);
    drop(e);
    let e = Engine::open(dir.path(), small_segments()).unwrap();
    let reopened = e.stats();
    assert_eq!(reopened.reclaimable_bytes, live.reclaimable_bytes);
    assert_eq!(reopened.live_bytes, live.live_bytes);
    assert_eq!(reopened.total_bytes, live.total_bytes);
    e.compact(&mut |_| {}).unwrap();
    let after = e.stats();
    assert_eq!(after.reclaimable_bytes, 0);
    assert_eq!(after.total_bytes, after.live_bytes, "only live records remain");
}
