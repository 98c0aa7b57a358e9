//! The disk's own ceilings, measured with plain file I/O: no store can beat these on this machine.

use std::fs::OpenOptions;
use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Result;

use crate::stats::{Hist, Point};

/// Appends `size`-byte records to one file, calling `fdatasync` after each, for `dur`.
pub fn fdatasync_rate(root: &Path, size: usize, dur: Duration) -> Result<Point> {
    let dir = tempfile::tempdir_in(root)?;
    let mut file =
        OpenOptions::new().create(true).append(true).open(dir.path().join("sync.bin"))?;
    let buf = vec![0xA5u8; size];
    let mut hist = Hist::new();
    let started = Instant::now();
    while started.elapsed() < dur {
        let t = Instant::now();
        file.write_all(&buf)?;
        file.sync_data()?;
        hist.record(t.elapsed());
    }
    Ok(Point::from_hist(&hist, started.elapsed().as_secs_f64(), size))
}

/// Writes `total` bytes sequentially in 1 MiB chunks, then `fdatasync`s: the bandwidth ceiling.
pub fn sequential_write(root: &Path, total: usize) -> Result<Point> {
    const CHUNK: usize = 1 << 20;
    let dir = tempfile::tempdir_in(root)?;
    let mut file = OpenOptions::new().create(true).append(true).open(dir.path().join("seq.bin"))?;
    let buf = vec![0x5Au8; CHUNK];
    let mut hist = Hist::new();
    let started = Instant::now();
    let mut written = 0;
    while written < total {
        let t = Instant::now();
        file.write_all(&buf)?;
        hist.record(t.elapsed());
        written += CHUNK;
    }
    file.sync_data()?;
    Ok(Point::from_hist(&hist, started.elapsed().as_secs_f64(), CHUNK))
}
