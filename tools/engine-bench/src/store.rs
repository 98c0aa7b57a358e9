//! The stores under test behind one small trait, and the startup measurement.

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result};
use cairn_engine::{Engine, Keyspace, Options, SyncPolicy};

/// Which store a measurement runs on.
#[derive(Copy, Clone, Debug)]
pub enum StoreKind {
    /// Cairn's log engine.
    Cairn,
    /// fjall, a mature Rust LSM engine (the baseline).
    Fjall,
}

impl StoreKind {
    /// Name in the report.
    pub fn name(self) -> &'static str {
        match self {
            StoreKind::Cairn => "cairn",
            StoreKind::Fjall => "fjall",
        }
    }
}

/// When a put is durable.
#[derive(Copy, Clone, Debug)]
pub enum Durability {
    /// The put returns after its data is on stable storage (fdatasync).
    Always,
    /// The put returns once the data is in the OS page cache.
    Never,
}

/// The operations the benchmark needs.
pub trait Store: Send + Sync {
    /// Stores `value` under `key` with the store's configured durability.
    fn put(&self, key: &[u8], value: &[u8]) -> Result<()>;
    /// Reads `key`; returns the value's length (the bytes are touched, not copied out).
    fn get(&self, key: &[u8]) -> Result<Option<usize>>;
    /// Makes everything written so far readable and durable.
    fn flush(&self) -> Result<()>;
}

/// Opens a store of `kind` in a fresh directory.
pub fn open(kind: StoreKind, dir: &Path, durability: Durability) -> Result<Arc<dyn Store>> {
    match kind {
        StoreKind::Cairn => Ok(Arc::new(CairnStore::open(dir, durability, 128 << 20)?)),
        StoreKind::Fjall => open_fjall(dir, durability),
    }
}

struct CairnStore(Engine);

impl CairnStore {
    fn open(dir: &Path, durability: Durability, segment_size: u64) -> Result<Self> {
        let sync = match durability {
            Durability::Always => SyncPolicy::Always,
            Durability::Never => SyncPolicy::Never,
        };
        let opts = Options { sync, segment_size, ..Options::default() };
        Ok(Self(Engine::open(dir, opts).context("opening the cairn engine")?))
    }
}

impl Store for CairnStore {
    fn put(&self, key: &[u8], value: &[u8]) -> Result<()> {
        Ok(self.0.put(Keyspace::Object, key, value)?)
    }
    fn get(&self, key: &[u8]) -> Result<Option<usize>> {
        Ok(self.0.get(Keyspace::Object, key)?.map(|v| std::hint::black_box(v.len())))
    }
    fn flush(&self) -> Result<()> {
        Ok(self.0.sync()?)
    }
}

#[cfg(feature = "fjall")]
fn open_fjall(dir: &Path, durability: Durability) -> Result<Arc<dyn Store>> {
    let db = fjall::Database::builder(dir).open()?;
    let ks = db.keyspace("objects", fjall::KeyspaceCreateOptions::default)?;
    Ok(Arc::new(FjallStore { db, ks, durability }))
}

#[cfg(not(feature = "fjall"))]
fn open_fjall(_dir: &Path, _durability: Durability) -> Result<Arc<dyn Store>> {
    anyhow::bail!("built without the `fjall` feature")
}

#[cfg(feature = "fjall")]
struct FjallStore {
    db: fjall::Database,
    ks: fjall::Keyspace,
    durability: Durability,
}

#[cfg(feature = "fjall")]
impl Store for FjallStore {
    fn put(&self, key: &[u8], value: &[u8]) -> Result<()> {
        self.ks.insert(key, value)?;
        if let Durability::Always = self.durability {
            self.db.persist(fjall::PersistMode::SyncData)?;
        }
        Ok(())
    }
    fn get(&self, key: &[u8]) -> Result<Option<usize>> {
        Ok(self.ks.get(key)?.map(|v| std::hint::black_box(v.len())))
    }
    fn flush(&self) -> Result<()> {
        self.db.persist(fjall::PersistMode::SyncData)?;
        Ok(())
    }
}

/// Startup (recovery) time of the Cairn engine for a data directory of many small keys.
pub struct StartupReport {
    /// Keys written.
    pub keys: usize,
    /// Bytes of the data directory.
    pub disk_bytes: u64,
    /// Open time with hint files present.
    pub with_hints_ms: f64,
    /// Open time after deleting the hint files (segments scanned).
    pub without_hints_ms: f64,
    /// Keydir bytes per key, key bytes included.
    pub keydir_bytes_per_key: f64,
    /// Keydir bytes per key beyond the key bytes.
    pub keydir_overhead_per_key: f64,
}

impl StartupReport {
    /// The data directory size, human readable.
    pub fn disk_bytes_human(&self) -> String {
        format!("{:.0} MiB", self.disk_bytes as f64 / (1 << 20) as f64)
    }
}

/// Writes `keys` keys of 32-byte names with 100-byte values, closes, and times reopening with and
/// without hint files.
pub fn startup(root: &Path, keys: usize) -> Result<StartupReport> {
    const SEGMENT: u64 = 16 << 20;
    let dir = tempfile::tempdir_in(root)?;
    let value = [7u8; 100];
    let mut key_bytes = 0usize;
    {
        let store = CairnStore::open(dir.path(), Durability::Never, SEGMENT)?;
        for i in 0..keys {
            let key = format!("bucket-{:04}/object-{i:016}", i % 1000);
            key_bytes += key.len();
            store.put(key.as_bytes(), &value)?;
        }
        store.flush()?;
    }
    let disk_bytes = dir_bytes(dir.path())?;
    let t = Instant::now();
    let engine = CairnStore::open(dir.path(), Durability::Never, SEGMENT)?;
    let with_hints_ms = t.elapsed().as_secs_f64() * 1e3;
    let stats = engine.0.stats();
    drop(engine);
    for entry in std::fs::read_dir(dir.path())? {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "hint") {
            std::fs::remove_file(&path)?;
        }
    }
    let t = Instant::now();
    let engine = CairnStore::open(dir.path(), Durability::Never, SEGMENT)?;
    let without_hints_ms = t.elapsed().as_secs_f64() * 1e3;
    drop(engine);
    let per_key = stats.keydir_bytes as f64 / keys.max(1) as f64;
    Ok(StartupReport {
        keys,
        disk_bytes,
        with_hints_ms,
        without_hints_ms,
        keydir_bytes_per_key: per_key,
        keydir_overhead_per_key: per_key - key_bytes as f64 / keys.max(1) as f64,
    })
}

fn dir_bytes(dir: &Path) -> Result<u64> {
    let mut total = 0;
    for entry in std::fs::read_dir(dir)? {
        total += entry?.metadata()?.len();
    }
    Ok(total)
}
