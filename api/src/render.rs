//! How reports, siblings and times are shown to clients (JSON fields, version ids, HTTP dates).
//!
//! Field names are part of the API (see `docs/api.md`); they are produced here and nowhere else.

use cairn_replication::{Dot, Dotted, Meta, ReadReport, Sibling, SiblingSet, WriteReport};
use serde::Serialize;
use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256};

use crate::backend::WriteResult;

/// Serialises a value that cannot fail to serialise (maps with string keys, vectors of
/// strings); renders `null` rather than panicking if that ever changed.
fn to_value<T: Serialize>(v: &T) -> Value {
    serde_json::to_value(v).unwrap_or(Value::Null)
}

/// The id of a version as used in `?sibling=ID`: `<node>.<epoch hex>.<counter>`, e.g.
/// `n3.7c1.15`. Built from the dot; URL-safe without escaping (node ids are `[A-Za-z0-9_-]`).
pub fn version_id(dot: &Dot) -> String {
    format!("{}.{:x}.{}", dot.actor.node(), dot.actor.epoch(), dot.counter)
}

/// The fields of a write report, in the order the answer shows them.
pub fn write_report_fields(r: &WriteReport) -> Vec<(String, Value)> {
    // Targets still writing when the answer was sent (it goes out at W plus a short grace): the
    // write continues there in the background; `hint_for` names the owner a fallback stands in for.
    let pending: Vec<Value> = r
        .targets
        .iter()
        .filter(|t| {
            !r.replicas_written.contains(&t.node)
                && !r.failed.contains(&t.node)
                && !r.timed_out.contains(&t.node)
        })
        .map(|t| serde_json::json!({ "node": t.node, "hint_for": t.hint_for }))
        .collect();
    vec![
        ("pref_list".into(), to_value(&r.pref_list)),
        ("replicas_written".into(), to_value(&r.replicas_written)),
        ("hinted".into(), to_value(&r.hinted)),
        ("pending".into(), Value::Array(pending)),
        ("vector_clocks".into(), to_value(&r.vector_clocks)),
        ("failed".into(), to_value(&r.failed)),
        ("timed_out".into(), to_value(&r.timed_out)),
        ("w".into(), Value::from(r.required)),
    ]
}

/// The fields of a read report. `read_repair` is whether repair was sent; the nodes it was sent
/// to are `read_repair_targets`.
pub fn read_report_fields(r: &ReadReport) -> Vec<(String, Value)> {
    vec![
        ("pref_list".into(), to_value(&r.pref_list)),
        ("replicas_read".into(), to_value(&r.replicas_read)),
        ("not_found".into(), to_value(&r.not_found)),
        ("hinted".into(), to_value(&r.hinted)),
        ("vector_clocks".into(), to_value(&r.vector_clocks)),
        ("read_repair".into(), Value::Bool(!r.read_repair.is_empty())),
        ("read_repair_targets".into(), to_value(&r.read_repair)),
        ("failed".into(), to_value(&r.failed)),
        ("timed_out".into(), to_value(&r.timed_out)),
        ("r".into(), Value::from(r.required)),
    ]
}

/// The per-file answer of a write or delete: name, coordinator, version, size, ETag, the
/// replica report and the new context.
pub fn write_result_json(name: &str, w: &WriteResult) -> Map<String, Value> {
    let mut m = Map::new();
    m.insert("success".into(), Value::Bool(true));
    m.insert("name".into(), Value::String(name.to_string()));
    m.insert("node".into(), Value::String(w.node.clone()));
    m.insert("version".into(), Value::String(version_id(&w.dot)));
    m.insert("size".into(), Value::from(w.meta.size));
    m.insert("etag".into(), Value::String(w.meta.etag.clone()));
    m.insert("content_type".into(), Value::String(w.meta.content_type.clone()));
    for (k, v) in write_report_fields(&w.report) {
        m.insert(k, v);
    }
    m.insert("context".into(), Value::String(w.context.to_token()));
    m
}

/// One sibling in a 300 answer, a `?meta=true` report or a listing.
pub fn sibling_json(s: &Dotted<Sibling>) -> Value {
    let meta = &s.value.meta;
    json!({
        "id": version_id(&s.dot),
        "clock": { "actor": s.dot.actor.to_string(), "counter": s.dot.counter },
        "deleted": s.value.is_tombstone(),
        "size": meta.size,
        "etag": meta.etag,
        "content_type": meta.content_type,
        "timestamp": meta.timestamp_ms,
        "last_modified": http_date(meta.timestamp_ms),
        "file_name": meta.file_name,
    })
}

/// The live siblings of a set, in dot order (delete markers are not shown: deletes are
/// add-wins).
pub fn siblings_json(set: &SiblingSet<Sibling>) -> Value {
    Value::Array(set.live().map(sibling_json).collect())
}

/// A listing entry.
pub fn file_entry_json(name: &str, meta: &Meta, versions: usize) -> Value {
    json!({
        "name": name,
        "size": meta.size,
        "etag": meta.etag,
        "content_type": meta.content_type,
        "timestamp": meta.timestamp_ms,
        "last_modified": http_date(meta.timestamp_ms),
        "versions": versions,
    })
}

/// The ETag of a body: the first 16 bytes of its SHA-256, in lowercase hex (32 characters).
pub fn etag_of(body: &[u8]) -> String {
    let mut h = Sha256::new();
    h.update(body);
    etag_from_hasher(h)
}

/// The ETag of a body computed as it streams, chunk by chunk (the same value as [`etag_of`]).
#[derive(Debug, Clone, Default)]
pub struct EtagHasher(Sha256);

impl EtagHasher {
    /// A hasher that has seen nothing.
    pub fn new() -> Self {
        EtagHasher(Sha256::new())
    }

    /// Feeds the next bytes.
    pub fn update(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }

    /// The ETag of everything fed.
    pub fn finish(self) -> String {
        etag_from_hasher(self.0)
    }
}

/// Finishes an incremental ETag computation (the streaming upload paths feed chunks to a
/// `Sha256` as they arrive).
pub fn etag_from_hasher(h: Sha256) -> String {
    let digest = h.finalize();
    let mut out = String::with_capacity(32);
    for b in digest.iter().take(16) {
        out.push_str(&format!("{b:02x}"));
    }
    out
}

/// Formats milliseconds since the Unix epoch as an HTTP date (IMF-fixdate, RFC 9110 §5.6.7),
/// e.g. `Sun, 06 Nov 1994 08:49:37 GMT`.
pub fn http_date(ms: u64) -> String {
    const DAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
    const MONTHS: [&str; 12] =
        ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"];
    let secs = ms / 1000;
    let days = secs / 86_400;
    let rem = secs % 86_400;
    let (y, m, d) = civil_from_days(days);
    format!(
        "{}, {:02} {} {} {:02}:{:02}:{:02} GMT",
        DAYS[(days % 7) as usize],
        d,
        MONTHS[(m - 1) as usize],
        y,
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Days since 1970-01-01 to (year, month 1..=12, day 1..=31) in the proleptic Gregorian
/// calendar (H. Hinnant's `civil_from_days`, for non-negative day counts).
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + u64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;
    use cairn_replication::{Actor, NodeId};

    #[test]
    fn http_dates() {
        assert_eq!(http_date(0), "Thu, 01 Jan 1970 00:00:00 GMT");
        assert_eq!(http_date(784_111_777_000), "Sun, 06 Nov 1994 08:49:37 GMT");
        assert_eq!(http_date(951_782_400_000), "Tue, 29 Feb 2000 00:00:00 GMT");
        assert_eq!(http_date(1_795_651_199_999), "Wed, 25 Nov 2026 23:59:59 GMT");
    }

    #[test]
    fn version_ids_are_url_safe() {
        let dot = Dot { actor: Actor::new(NodeId::new("n-3_a").unwrap(), 0x7c1), counter: 15 };
        let id = version_id(&dot);
        assert_eq!(id, "n-3_a.7c1.15");
        assert!(id.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b)));
    }

    #[test]
    fn etag_is_stable() {
        // SHA-256("") starts with e3b0c442 98fc1c14 9afbf4c8 996fb924.
        assert_eq!(etag_of(b""), "e3b0c44298fc1c149afbf4c8996fb924");
    }
}
