//! The engine's one error type, and the compaction steps a test can inject a crash at (the payload
//! of `Error::InjectedCrash`; `Options::crash_at` names one).

use std::path::PathBuf;

/// The steps of a compaction at which a crash can be injected (see `Options::crash_at`). Each names the
/// last thing done before the simulated crash.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum CompactionStep {
    /// New segments and hint files written and synced in the temporary directory; no commit file.
    OutputsWritten,
    /// The commit file (`COMPACTION`) is durable; nothing renamed yet.
    Committed,
    /// The first new segment has replaced its input file.
    FirstRenamed,
    /// All renames and deletions are done; the commit file is still present.
    Switched,
}

impl CompactionStep {
    /// Every step, in order.
    pub const ALL: [CompactionStep; 4] = [
        CompactionStep::OutputsWritten,
        CompactionStep::Committed,
        CompactionStep::FirstRenamed,
        CompactionStep::Switched,
    ];
}

/// Everything that can go wrong in the engine.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// An operating-system I/O call failed.
    #[error("I/O error while {context}: {source}")]
    Io {
        /// What the engine was doing.
        context: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// Another process holds the data directory's exclusive lock.
    #[error("data directory {dir} is locked by another process ({holder})")]
    Locked {
        /// The directory.
        dir: PathBuf,
        /// What the holder wrote into the lock file: pid, hostname and command.
        holder: String,
    },
    /// An earlier fsync/fdatasync failed: the engine cannot know what reached the disk, so it refuses
    /// every further write. Reopen the directory (after fixing the disk) to recover.
    #[error("the engine is poisoned by an earlier failed sync and refuses writes; reopen it")]
    Poisoned,
    /// A stored record or file failed its checksum or is malformed.
    #[error("corrupt data in {what}: {detail}")]
    Corrupt {
        /// Which file/record.
        what: String,
        /// What is wrong.
        detail: String,
    },
    /// A value is bigger than `Options::max_value_size`.
    #[error("value of {size} bytes exceeds the maximum of {max} bytes")]
    ValueTooLarge {
        /// The value's size.
        size: u64,
        /// The configured maximum.
        max: u64,
    },
    /// A key is longer than the format allows (65535 bytes).
    #[error("key of {size} bytes exceeds the maximum of {max} bytes")]
    KeyTooLarge {
        /// The key's size.
        size: usize,
        /// The format's maximum.
        max: usize,
    },
    /// The options are inconsistent.
    #[error("invalid options: {0}")]
    InvalidOptions(String),
    /// The engine is closing; a background compaction stopped early (nothing was changed).
    #[error("the engine is shutting down")]
    ShuttingDown,
    /// A test-injected crash point was reached; the engine stops as if the process died there.
    #[error("injected crash at compaction step {0:?}")]
    InjectedCrash(CompactionStep),
}

impl Error {
    /// True if the same call may succeed later without operator action (a transient I/O failure such as
    /// a full disk or an interrupted call). Poisoning, corruption, locks and bad input are not retryable.
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::Io { source, .. } => matches!(
                source.kind(),
                std::io::ErrorKind::Interrupted
                    | std::io::ErrorKind::WouldBlock
                    | std::io::ErrorKind::TimedOut
                    | std::io::ErrorKind::StorageFull
            ),
            _ => false,
        }
    }

    /// True if the caller sent something the engine will never accept (too-large key or value).
    pub fn is_invalid_input(&self) -> bool {
        matches!(self, Error::ValueTooLarge { .. } | Error::KeyTooLarge { .. })
    }

    pub(crate) fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Error::Io { context: context.into(), source }
    }

    pub(crate) fn corrupt(what: impl Into<String>, detail: impl Into<String>) -> Self {
        Error::Corrupt { what: what.into(), detail: detail.into() }
    }
}

/// The engine's result type.
pub type Result<T> = std::result::Result<T, Error>;

/// Adds a context string to an `io::Result`.
pub(crate) trait IoContext<T> {
    /// Maps the error into [`Error::Io`] with `ctx` (evaluated only on error).
    fn ctx<S: Into<String>>(self, ctx: impl FnOnce() -> S) -> Result<T>;
}

impl<T> IoContext<T> for std::io::Result<T> {
    fn ctx<S: Into<String>>(self, ctx: impl FnOnce() -> S) -> Result<T> {
        self.map_err(|e| Error::io(ctx(), e))
    }
}
