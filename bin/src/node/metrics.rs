//! The protocol's counters in the Prometheus text format for `/metrics`.

use std::fmt::Write as _;

use cairn_replication::node::Stats;

/// Appends the counters to `out` in the Prometheus text format.
pub fn render(stats: &Stats, out: &mut String) {
    let rows: [(&str, &str, u64); 16] = [
        ("cairn_writes_ok_total", "Writes coordinated here that reached W.", stats.writes_ok),
        (
            "cairn_write_quorum_failures_total",
            "Writes coordinated here that did not reach W.",
            stats.write_quorum_failures,
        ),
        ("cairn_reads_ok_total", "Reads coordinated here that reached R.", stats.reads_ok),
        (
            "cairn_read_quorum_failures_total",
            "Reads coordinated here that did not reach R.",
            stats.read_quorum_failures,
        ),
        ("cairn_writes_forwarded_total", "Writes forwarded to their coordinator.", stats.forwarded),
        ("cairn_read_repairs_total", "Read repairs sent.", stats.read_repairs),
        ("cairn_hints_stored_total", "Hints stored for unreachable owners.", stats.hints_stored),
        ("cairn_hints_delivered_total", "Hints delivered and removed.", stats.hints_delivered),
        (
            "cairn_hint_delivery_failures_total",
            "Hint deliveries that failed (retried later).",
            stats.hint_delivery_failures,
        ),
        (
            "cairn_registry_entries_synced_total",
            "Bucket registry entries changed here by anti-entropy.",
            stats.registry_synced,
        ),
        (
            "cairn_aae_exchanges_total",
            "Anti-entropy exchanges completed (every difference found repaired).",
            stats.aae_exchanges,
        ),
        (
            "cairn_aae_exchanges_in_sync_total",
            "Anti-entropy exchanges that found both owners' trees equal.",
            stats.aae_in_sync,
        ),
        (
            "cairn_aae_exchange_failures_total",
            "Anti-entropy exchanges abandoned (peer down, timeout, layout change).",
            stats.aae_failures,
        ),
        (
            "cairn_aae_keys_repaired_total",
            "Keys found differing by anti-entropy and merged both ways.",
            stats.aae_keys_repaired,
        ),
        (
            "cairn_tombstones_collected_total",
            "Tombstones deleted here at causal stability.",
            stats.tombstones_collected,
        ),
        (
            "cairn_objects_reclaimed_total",
            "Replicas deleted here because nobody needs them (deleted buckets, fallback copies).",
            stats.objects_reclaimed,
        ),
    ];
    for (name, help, v) in rows {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
        let _ = writeln!(out, "{name} {v}");
    }
}
