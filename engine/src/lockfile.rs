//! The data directory's exclusive lock: one process per directory (a node or `cairn compact`).
//!
//! The lock is an advisory `flock` on `LOCK` taken with `File::try_lock`; the kernel drops it when the
//! process dies, so a crash never leaves a stale lock. The holder writes its pid, hostname and command
//! into the file so the loser's error can say who holds it.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::Path;

use crate::error::{Error, IoContext, Result};

/// Name of the lock file inside the data directory.
pub const LOCK_FILE: &str = "LOCK";

/// Takes the lock or fails with [`Error::Locked`] naming the holder.
pub(crate) fn acquire(dir: &Path) -> Result<File> {
    let path = dir.join(LOCK_FILE);
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .ctx(|| format!("opening {}", path.display()))?;
    match file.try_lock() {
        Ok(()) => {}
        Err(std::fs::TryLockError::WouldBlock) => {
            let mut holder = String::new();
            // The holder may be rewriting the file right now; an empty read just says "unknown".
            let _ = file.read_to_string(&mut holder);
            let holder = holder.trim();
            return Err(Error::Locked {
                dir: dir.to_path_buf(),
                holder: if holder.is_empty() { "unknown holder".into() } else { holder.into() },
            });
        }
        Err(std::fs::TryLockError::Error(e)) => {
            return Err(Error::io(format!("locking {}", path.display()), e));
        }
    }
    let hostname = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| std::fs::read_to_string("/etc/hostname"))
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "unknown-host".into());
    let command: Vec<String> = std::env::args().collect();
    let line =
        format!("pid={} host={} command={}\n", std::process::id(), hostname, command.join(" "));
    file.set_len(0).ctx(|| format!("truncating {}", path.display()))?;
    file.write_all(line.as_bytes()).ctx(|| format!("writing {}", path.display()))?;
    Ok(file)
}
