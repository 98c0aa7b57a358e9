//! A small progress line for long operator commands (`cairn compact`, `cairn cluster --wait`).
//!
//! On a terminal it redraws one line in place (`\r`); otherwise (logs, CI) it prints a new line at most
//! every [`PLAIN_INTERVAL`], so piped output stays readable.

use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

/// How often a non-terminal progress line is printed.
const PLAIN_INTERVAL: Duration = Duration::from_secs(2);
/// How often the terminal line is redrawn.
const TTY_INTERVAL: Duration = Duration::from_millis(100);

/// Progress of a byte-counted job, drawn on stderr.
pub struct Progress {
    label: &'static str,
    started: Instant,
    last_draw: Option<Instant>,
    tty: bool,
}

impl Progress {
    /// Starts a progress line for a job called `label`.
    pub fn new(label: &'static str) -> Self {
        Self {
            label,
            started: Instant::now(),
            last_draw: None,
            tty: std::io::stderr().is_terminal(),
        }
    }

    /// Reports `done` of `total` bytes; draws if enough time has passed since the last draw.
    pub fn update(&mut self, done: u64, total: u64) {
        let now = Instant::now();
        let interval = if self.tty { TTY_INTERVAL } else { PLAIN_INTERVAL };
        if self.last_draw.is_some_and(|t| now.duration_since(t) < interval) && done < total {
            return;
        }
        self.last_draw = Some(now);
        let pct = if total == 0 { 100.0 } else { done as f64 * 100.0 / total as f64 };
        let secs = now.duration_since(self.started).as_secs_f64().max(1e-6);
        let rate = done as f64 / secs;
        let line = format!(
            "{}: {:5.1}%  {} / {}  {}/s",
            self.label,
            pct,
            human_bytes(done),
            human_bytes(total),
            human_bytes(rate as u64)
        );
        let mut err = std::io::stderr().lock();
        // Progress output is best effort: a closed stderr must not fail the job.
        let _ = if self.tty { write!(err, "\r{line}\x1b[K") } else { writeln!(err, "{line}") };
        let _ = err.flush();
    }

    /// Reports `done` of `total` items with `bytes` moved so far (`cairn cluster --wait`).
    pub fn update_count(&mut self, done: u64, total: u64, bytes: u64) {
        let now = Instant::now();
        let interval = if self.tty { TTY_INTERVAL } else { PLAIN_INTERVAL };
        if self.last_draw.is_some_and(|t| now.duration_since(t) < interval) {
            return;
        }
        self.last_draw = Some(now);
        let pct = if total == 0 { 100.0 } else { done as f64 * 100.0 / total as f64 };
        let secs = now.duration_since(self.started).as_secs_f64().max(1e-6);
        let line = format!(
            "{}: {:5.1}%  {done} / {total} partitions  {} moved  {}/s",
            self.label,
            pct,
            human_bytes(bytes),
            human_bytes((bytes as f64 / secs) as u64)
        );
        let mut err = std::io::stderr().lock();
        let _ = if self.tty { write!(err, "\r{line}\x1b[K") } else { writeln!(err, "{line}") };
        let _ = err.flush();
    }

    /// Ends the line (on a terminal) so the summary starts on a fresh line.
    pub fn finish(&mut self) {
        if self.tty && self.last_draw.is_some() {
            let _ = writeln!(std::io::stderr());
        }
    }
}

/// Formats a byte count with a binary unit, e.g. `12.3 MiB`.
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 { format!("{n} B") } else { format!("{v:.1} {}", UNITS[unit]) }
}

#[cfg(test)]
mod tests {
    use super::human_bytes;

    #[test]
    fn human_bytes_picks_binary_units() {
        assert_eq!(human_bytes(0), "0 B");
        assert_eq!(human_bytes(1023), "1023 B");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_bytes(5 * 1024 * 1024 * 1024), "5.0 GiB");
    }
}
