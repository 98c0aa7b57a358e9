//! Node counters, rendered in the Prometheus text format for `/metrics`.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};

/// Counters of replication events. Relaxed atomics: each is an independent count.
#[derive(Debug, Default)]
pub struct Metrics {
    /// Writes coordinated here that reached W.
    pub writes_ok: AtomicU64,
    /// Writes coordinated here that did not reach W.
    pub write_quorum_failures: AtomicU64,
    /// Reads coordinated here that reached R.
    pub reads_ok: AtomicU64,
    /// Reads coordinated here that did not reach R.
    pub read_quorum_failures: AtomicU64,
    /// Writes forwarded to another coordinator.
    pub forwarded: AtomicU64,
    /// Read repairs sent.
    pub read_repairs: AtomicU64,
    /// Hints stored (as fallback or for a failed replica).
    pub hints_stored: AtomicU64,
    /// Hints delivered to their owner and removed.
    pub hints_delivered: AtomicU64,
    /// Hint deliveries that failed and will be retried.
    pub hint_delivery_failures: AtomicU64,
}

impl Metrics {
    /// Adds one to a counter.
    pub fn inc(c: &AtomicU64) {
        c.fetch_add(1, Ordering::Relaxed);
    }

    /// Appends these counters to `out` in the Prometheus text format.
    pub fn render(&self, out: &mut String) {
        let rows: [(&str, &str, &AtomicU64); 9] = [
            ("cairn_writes_ok_total", "Writes coordinated here that reached W.", &self.writes_ok),
            (
                "cairn_write_quorum_failures_total",
                "Writes coordinated here that did not reach W.",
                &self.write_quorum_failures,
            ),
            ("cairn_reads_ok_total", "Reads coordinated here that reached R.", &self.reads_ok),
            (
                "cairn_read_quorum_failures_total",
                "Reads coordinated here that did not reach R.",
                &self.read_quorum_failures,
            ),
            (
                "cairn_writes_forwarded_total",
                "Writes forwarded to their coordinator.",
                &self.forwarded,
            ),
            ("cairn_read_repairs_total", "Read repairs sent.", &self.read_repairs),
            (
                "cairn_hints_stored_total",
                "Hints stored for unreachable owners.",
                &self.hints_stored,
            ),
            ("cairn_hints_delivered_total", "Hints delivered and removed.", &self.hints_delivered),
            (
                "cairn_hint_delivery_failures_total",
                "Hint deliveries that failed (retried later).",
                &self.hint_delivery_failures,
            ),
        ];
        for (name, help, c) in rows {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
            let _ = writeln!(out, "{name} {}", c.load(Ordering::Relaxed));
        }
    }
}
