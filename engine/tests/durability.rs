//! "Never lose an acknowledged write", tested against a simulated power loss: a `FileSync` wrapper
//! records, for every file, how many bytes an fdatasync has made durable. While many writers put
//! with `SyncPolicy::Always` (group commit), the test snapshots the set of acknowledged keys, then
//! builds the directory a power loss would leave (every segment cut at its durable length, unsynced
//! bytes gone), and reopens it: every acknowledged write must be there.
#![allow(clippy::unwrap_used)]

use std::collections::{BTreeSet, HashMap};
use std::fs::File;
use std::os::unix::fs::MetadataExt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use cairn_engine::{Engine, FileSync, Keyspace, Options, SyncPolicy};
use parking_lot::Mutex;

/// Durable length per inode: the file's length *before* a successful fdatasync (bytes appended
/// while the sync runs are not covered by it).
#[derive(Default)]
struct Recording {
    durable: Mutex<HashMap<u64, u64>>,
}

impl FileSync for Recording {
    fn sync_data(&self, file: &File) -> std::io::Result<()> {
        let meta = file.metadata()?;
        file.sync_data()?;
        let mut d = self.durable.lock();
        let e = d.entry(meta.ino()).or_insert(0);
        *e = (*e).max(meta.len());
        Ok(())
    }
    fn sync_dir(&self, dir: &File) -> std::io::Result<()> {
        dir.sync_all()
    }
}

#[test]
fn every_acknowledged_write_survives_a_simulated_power_loss() {
    let dir = tempfile::tempdir().unwrap();
    let rec = Arc::new(Recording::default());
    let opts = || Options {
        sync: SyncPolicy::Always,
        segment_size: 8 << 10,
        file_sync: rec.clone(),
        ..Options::default()
    };
    let e = Arc::new(Engine::open(dir.path(), opts()).unwrap());
    let acked = Arc::new(Mutex::new(BTreeSet::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let writers: Vec<_> = (0..8)
        .map(|t| {
            let (e, acked, stop) = (Arc::clone(&e), Arc::clone(&acked), Arc::clone(&stop));
            std::thread::spawn(move || {
                let mut i = 0u32;
                while !stop.load(Ordering::SeqCst) && i < 2000 {
                    let key = format!("t{t}-{i:05}");
                    e.put(Keyspace::Object, key.as_bytes(), &[t as u8; 200]).unwrap();
                    acked.lock().insert(key);
                    i += 1;
                }
            })
        })
        .collect();
    // Let some writes through, then "lose power" while the writers are still running.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while acked.lock().len() < 400 && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    let acked_at_crash: BTreeSet<String> = acked.lock().clone();
    let durable: HashMap<u64, u64> = rec.durable.lock().clone();
    let crashed = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(dir.path()).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|x| x == "seg") {
            let ino = std::fs::metadata(&path).unwrap().ino();
            let keep = durable.get(&ino).copied().unwrap_or(0) as usize;
            let bytes = std::fs::read(&path).unwrap();
            let mut image = bytes[..keep.min(bytes.len())].to_vec();
            // Whatever was not synced may be torn: leave a little garbage after the durable part.
            if bytes.len() > keep {
                image.extend_from_slice(&bytes[keep..(keep + 7).min(bytes.len())]);
            }
            std::fs::write(crashed.path().join(path.file_name().unwrap()), image).unwrap();
        }
    }
    stop.store(true, Ordering::SeqCst);
    for w in writers {
        w.join().unwrap();
    }
    assert!(acked_at_crash.len() >= 400, "writers made progress");
    let recovered =
        Engine::open(crashed.path(), Options { sync: SyncPolicy::Never, ..opts() }).unwrap();
    let missing: Vec<&String> = acked_at_crash
        .iter()
        .filter(|k| recovered.get(Keyspace::Object, k.as_bytes()).unwrap().is_none())
        .collect();
    assert!(
        missing.is_empty(),
        "{} acknowledged writes lost, e.g. {:?}",
        missing.len(),
        &missing[..missing.len().min(5)]
    );
    assert!(e.stats().segments > 2, "the run crossed roll-overs");
}
