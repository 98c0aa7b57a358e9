//! Engine configuration: sizes, the sync policy, injected time and injected faults.

use std::fmt;
use std::fs::File;
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::error::{CompactionStep, Error, Result};

/// Default roll-over size of the active segment: 128 MiB.
pub const DEFAULT_SEGMENT_SIZE: u64 = 128 << 20;
/// Default largest value accepted: 64 MiB (the API answers 413 above its own limit first).
pub const DEFAULT_MAX_VALUE_SIZE: u64 = 64 << 20;
/// Hard ceiling for `max_value_size`: 1 GiB, so that a record length always fits the keydir's 31 bits.
pub const MAX_VALUE_SIZE_LIMIT: u64 = 1 << 30;
/// Default tombstone grace period: 7 days, longer than any expected node outage plus repair.
pub const DEFAULT_TOMBSTONE_GRACE: Duration = Duration::from_secs(7 * 24 * 3600);

/// When a write is made durable.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum SyncPolicy {
    /// Every write returns only after an fdatasync covers it; concurrent writers share one fdatasync
    /// (group commit). The default.
    #[default]
    Always,
    /// A background thread syncs at this interval; a crash can lose up to one interval of
    /// acknowledged writes.
    Interval(Duration),
    /// Never sync from the write path (only on `sync()`, roll-over is not synced either); for tests
    /// and benchmarks.
    Never,
}

impl FromStr for SyncPolicy {
    type Err = Error;

    /// Parses `always`, `never` or `interval:MS` (milliseconds, > 0).
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "always" => Ok(SyncPolicy::Always),
            "never" => Ok(SyncPolicy::Never),
            other => {
                let ms = other
                    .strip_prefix("interval:")
                    .and_then(|ms| ms.parse::<u64>().ok())
                    .filter(|ms| *ms > 0)
                    .ok_or_else(|| {
                        Error::InvalidOptions(format!(
                            "sync policy {other:?}: expected always, never or interval:MS (MS > 0)"
                        ))
                    })?;
                Ok(SyncPolicy::Interval(Duration::from_millis(ms)))
            }
        }
    }
}

impl fmt::Display for SyncPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SyncPolicy::Always => write!(f, "always"),
            SyncPolicy::Interval(d) => write!(f, "interval:{}", d.as_millis()),
            SyncPolicy::Never => write!(f, "never"),
        }
    }
}

/// Source of wall-clock time in milliseconds since the Unix epoch. Record timestamps and the tombstone
/// grace period use it, so tests can move time without sleeping.
pub trait Clock: Send + Sync {
    /// Milliseconds since the Unix epoch.
    fn now_ms(&self) -> u64;
}

/// The operating system's clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
            .unwrap_or(0)
    }
}

/// A clock that only moves when told to (tests, simulations).
#[derive(Debug, Default)]
pub struct ManualClock {
    /// Current time in ms; an atomic so a shared `Arc<ManualClock>` can be advanced from the test while
    /// the engine reads it.
    now: AtomicU64,
}

impl ManualClock {
    /// A clock showing `now_ms`.
    pub fn new(now_ms: u64) -> Self {
        Self { now: AtomicU64::new(now_ms) }
    }
    /// Moves the clock forward by `d`.
    pub fn advance(&self, d: Duration) {
        let ms = u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        self.now.fetch_add(ms, Ordering::SeqCst);
    }
    /// Sets the clock.
    pub fn set(&self, now_ms: u64) {
        self.now.store(now_ms, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now_ms(&self) -> u64 {
        self.now.load(Ordering::SeqCst)
    }
}

/// How the engine makes file data durable. The default calls `fdatasync`/`fsync`; tests substitute an
/// implementation that fails, to check that a failed sync poisons the engine.
pub trait FileSync: Send + Sync {
    /// Makes the file's data durable (fdatasync).
    fn sync_data(&self, file: &File) -> std::io::Result<()>;
    /// Makes a directory's entries durable (fsync on the directory).
    fn sync_dir(&self, dir: &File) -> std::io::Result<()>;
}

/// The real thing: `File::sync_data` and `File::sync_all`.
#[derive(Debug, Default, Clone, Copy)]
pub struct OsFileSync;

impl FileSync for OsFileSync {
    fn sync_data(&self, file: &File) -> std::io::Result<()> {
        file.sync_data()
    }
    fn sync_dir(&self, dir: &File) -> std::io::Result<()> {
        dir.sync_all()
    }
}

/// Settings of the online (background) compaction thread.
#[derive(Clone, Debug)]
pub struct CompactionOptions {
    /// How often the thread checks whether compaction is worth it.
    pub interval: Duration,
    /// A random extra delay in `[0, jitter)` added to each interval, so nodes started together do not
    /// compact at the same moment (Riak's synchronized merges caused latency spikes).
    pub jitter: Duration,
    /// Throughput limit of the rewrite in bytes per second (0 = unlimited).
    pub max_bytes_per_sec: u64,
    /// Compact only when dead bytes / total bytes of sealed segments reaches this ratio...
    pub min_dead_ratio: f64,
    /// ...and dead bytes reach at least this many bytes.
    pub min_dead_bytes: u64,
}

impl Default for CompactionOptions {
    fn default() -> Self {
        Self {
            interval: Duration::from_secs(600),
            jitter: Duration::from_secs(120),
            max_bytes_per_sec: 64 << 20,
            min_dead_ratio: 0.4,
            min_dead_bytes: 64 << 20,
        }
    }
}

/// Engine configuration. `Options::default()` is what a node uses.
#[derive(Clone)]
pub struct Options {
    /// Roll-over size of the active segment (default 128 MiB). A single record bigger than this gets a
    /// segment of its own.
    pub segment_size: u64,
    /// When writes become durable (default `Always`).
    pub sync: SyncPolicy,
    /// Engine-level delete records (tombstones) older than this may be dropped by compaction.
    pub tombstone_grace: Duration,
    /// `None`: no background compaction (tests, `cairn compact`); `Some`: an online thread.
    pub background_compaction: Option<CompactionOptions>,
    /// Time source for record timestamps and the grace period.
    pub clock: Arc<dyn Clock>,
    /// Values bigger than this are refused with `Error::ValueTooLarge` (at most 1 GiB).
    pub max_value_size: u64,
    /// How files are synced; replace to inject sync failures in tests.
    pub file_sync: Arc<dyn FileSync>,
    /// Crash-testing hook: compaction stops at this step as if the process died there, returns
    /// `Error::InjectedCrash` and leaves the engine poisoned. Always `None` outside tests.
    pub crash_at: Option<CompactionStep>,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            segment_size: DEFAULT_SEGMENT_SIZE,
            sync: SyncPolicy::Always,
            tombstone_grace: DEFAULT_TOMBSTONE_GRACE,
            background_compaction: None,
            clock: Arc::new(SystemClock),
            max_value_size: DEFAULT_MAX_VALUE_SIZE,
            file_sync: Arc::new(OsFileSync),
            crash_at: None,
        }
    }
}

impl fmt::Debug for Options {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Options")
            .field("segment_size", &self.segment_size)
            .field("sync", &self.sync)
            .field("tombstone_grace", &self.tombstone_grace)
            .field("background_compaction", &self.background_compaction)
            .field("max_value_size", &self.max_value_size)
            .field("crash_at", &self.crash_at)
            .finish_non_exhaustive()
    }
}

impl Options {
    /// Checks the options for consistency.
    pub fn validate(&self) -> Result<()> {
        if self.segment_size < 1024 || self.segment_size > (1 << 32) {
            return Err(Error::InvalidOptions(format!(
                "segment_size {} must be between 1 KiB and 4 GiB",
                self.segment_size
            )));
        }
        if self.max_value_size > MAX_VALUE_SIZE_LIMIT {
            return Err(Error::InvalidOptions(format!(
                "max_value_size {} exceeds the limit of {MAX_VALUE_SIZE_LIMIT}",
                self.max_value_size
            )));
        }
        if let SyncPolicy::Interval(d) = self.sync
            && d.is_zero()
        {
            return Err(Error::InvalidOptions("sync interval must be > 0".into()));
        }
        Ok(())
    }
}
