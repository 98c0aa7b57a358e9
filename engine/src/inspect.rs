//! Read-only tools over a data directory: record listing, checksum verification and a hex dump.
//!
//! These read files with `read(2)` and never map or lock them, so they are safe to run against the
//! directory of a live node (records appended meanwhile may or may not appear).

use std::collections::VecDeque;
use std::fmt::{self, Write as _};
use std::fs;
use std::path::{Path, PathBuf};

use crate::error::{IoContext, Result};
use crate::hint;
use crate::record::{self, CRC_AT, HEADER_LEN, ScanItem, Scanner};
use crate::segments::{hint_path, list_segments, segment_path};

/// One record (or one corrupt region) of a segment, for `cairn inspect`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordInfo {
    /// Segment file id.
    pub segment: u64,
    /// Byte offset in the segment.
    pub offset: u64,
    /// `put`, `tombstone`, or `corrupt` for a region that is not a valid record.
    pub kind: &'static str,
    /// `object`, `bucket`, `hint`, or `-` for a corrupt region.
    pub keyspace: &'static str,
    /// The key (empty for a corrupt region).
    pub key: Vec<u8>,
    /// Length of the value (0 for tombstones and corrupt regions).
    pub value_len: u64,
    /// Length of the body as stored.
    pub body_len: u64,
    /// Bytes of the whole record, or of the corrupt region.
    pub total_len: u64,
    /// Whether the record passed its checks (false for corrupt regions).
    pub crc_ok: bool,
    /// The record timestamp in ms since the epoch (0 for corrupt regions).
    pub timestamp_ms: u64,
    /// For corrupt regions: why the first record failed.
    pub problem: Option<String>,
}

impl RecordInfo {
    /// One JSON object (keys as UTF-8 with escapes, bytes that are not UTF-8 as `\u00XX`).
    pub fn to_json(&self) -> String {
        let mut s = String::new();
        let _ = write!(
            s,
            "{{\"segment\":{},\"offset\":{},\"kind\":\"{}\",\"keyspace\":\"{}\",\"key\":\"{}\",\
             \"value_len\":{},\"body_len\":{},\"total_len\":{},\"crc_ok\":{},\"timestamp_ms\":{}",
            self.segment,
            self.offset,
            self.kind,
            self.keyspace,
            json_escape(&self.key),
            self.value_len,
            self.body_len,
            self.total_len,
            self.crc_ok,
            self.timestamp_ms
        );
        if let Some(p) = &self.problem {
            let _ = write!(s, ",\"problem\":\"{}\"", json_escape(p.as_bytes()));
        }
        s.push('}');
        s
    }
}

fn json_escape(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out
}

fn infos_of(segment: u64, bytes: &[u8]) -> Vec<RecordInfo> {
    Scanner::new(bytes)
        .map(|item| match item {
            ScanItem::Record { offset, record } => RecordInfo {
                segment,
                offset,
                kind: match record.kind {
                    record::RecordKind::Put => "put",
                    record::RecordKind::Tombstone => "tombstone",
                },
                keyspace: match record.keyspace {
                    record::Keyspace::Object => "object",
                    record::Keyspace::Bucket => "bucket",
                    record::Keyspace::Hint => "hint",
                    record::Keyspace::Chunk => "chunk",
                },
                key: record.key.to_vec(),
                value_len: record.value.len() as u64,
                body_len: record.body.len() as u64,
                total_len: record.total_len as u64,
                crc_ok: true,
                timestamp_ms: record.timestamp_ms,
                problem: None,
            },
            ScanItem::Corrupt { offset, len, reason } => RecordInfo {
                segment,
                offset,
                kind: "corrupt",
                keyspace: "-",
                key: Vec::new(),
                value_len: 0,
                body_len: 0,
                total_len: len,
                crc_ok: false,
                timestamp_ms: 0,
                problem: Some(reason.to_string()),
            },
        })
        .collect()
}

/// Lazily lists the records of every segment in `dir`, in log order, one segment in memory at a time.
/// Does not take the directory lock. Corrupt regions appear as records with `crc_ok == false`.
pub fn inspect(dir: &Path) -> Result<impl Iterator<Item = RecordInfo>> {
    let ids: VecDeque<u64> = list_segments(dir)?.into();
    Ok(Inspect { dir: dir.to_path_buf(), ids, current: Vec::new().into_iter() })
}

struct Inspect {
    dir: PathBuf,
    ids: VecDeque<u64>,
    current: std::vec::IntoIter<RecordInfo>,
}

impl Iterator for Inspect {
    type Item = RecordInfo;
    fn next(&mut self) -> Option<RecordInfo> {
        loop {
            if let Some(r) = self.current.next() {
                return Some(r);
            }
            let id = self.ids.pop_front()?;
            match fs::read(segment_path(&self.dir, id)) {
                Ok(bytes) => self.current = infos_of(id, &bytes).into_iter(),
                Err(e) => {
                    // The file vanished (a compaction on a live node replaced it) or is unreadable.
                    return Some(RecordInfo {
                        segment: id,
                        offset: 0,
                        kind: "corrupt",
                        keyspace: "-",
                        key: Vec::new(),
                        value_len: 0,
                        body_len: 0,
                        total_len: 0,
                        crc_ok: false,
                        timestamp_ms: 0,
                        problem: Some(format!("cannot read segment: {e}")),
                    });
                }
            }
        }
    }
}

/// Result of [`verify`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct VerifyReport {
    /// Segment files checked.
    pub segments: u64,
    /// Records whose checksum and structure are valid.
    pub records_ok: u64,
    /// Regions that are not valid records.
    pub corrupt_regions: u64,
    /// Bytes in those regions.
    pub corrupt_bytes: u64,
    /// Hint files that are valid and agree with their segment.
    pub hints_ok: u64,
    /// Hint files that fail their checksum or disagree with their segment.
    pub hints_bad: u64,
    /// Sealed segments without a hint file (not an error: the segment is scanned at open).
    pub hints_missing: u64,
    /// One line per problem found.
    pub problems: Vec<String>,
}

impl VerifyReport {
    /// True if no record or hint file is corrupt.
    pub fn is_clean(&self) -> bool {
        self.corrupt_regions == 0 && self.hints_bad == 0
    }
}

impl fmt::Display for VerifyReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for p in &self.problems {
            writeln!(f, "problem: {p}")?;
        }
        write!(
            f,
            "{} segments, {} records ok, {} corrupt regions ({} bytes), hint files: {} ok, {} bad, \
             {} missing: {}",
            self.segments,
            self.records_ok,
            self.corrupt_regions,
            self.corrupt_bytes,
            self.hints_ok,
            self.hints_bad,
            self.hints_missing,
            if self.is_clean() { "CLEAN" } else { "CORRUPT" }
        )
    }
}

/// Checks every record checksum of every segment, and every hint file against its segment.
/// Does not take the directory lock.
pub fn verify(dir: &Path) -> Result<VerifyReport> {
    let ids = list_segments(dir)?;
    let mut r = VerifyReport::default();
    for (i, &id) in ids.iter().enumerate() {
        let path = segment_path(dir, id);
        let bytes = fs::read(&path).ctx(|| format!("reading {}", path.display()))?;
        r.segments += 1;
        let mut scanned = Vec::new();
        for item in Scanner::new(&bytes) {
            match item {
                ScanItem::Record { offset, record } => {
                    r.records_ok += 1;
                    scanned.push((offset, record.total_len as u64, record.key.to_vec()));
                }
                ScanItem::Corrupt { offset, len, reason } => {
                    r.corrupt_regions += 1;
                    r.corrupt_bytes += len;
                    r.problems
                        .push(format!("segment {id:010} offset {offset}: {reason} ({len} bytes)"));
                }
            }
        }
        let hpath = hint_path(dir, id);
        let is_last = i + 1 == ids.len();
        if !hpath.exists() {
            if !is_last {
                r.hints_missing += 1;
            }
            continue;
        }
        match hint::read_hint(&hpath, bytes.len() as u64) {
            Ok(entries) => {
                let agrees = entries.len() == scanned.len()
                    && entries.iter().zip(&scanned).all(|(e, (off, len, key))| {
                        e.offset == *off && u64::from(e.len) == *len && e.key == *key
                    });
                if agrees {
                    r.hints_ok += 1;
                } else {
                    r.hints_bad += 1;
                    r.problems.push(format!("hint {id:010}: entries disagree with the segment"));
                }
            }
            Err(why) => {
                r.hints_bad += 1;
                r.problems.push(format!("hint {id:010}: {why}"));
            }
        }
    }
    Ok(r)
}

/// A human-readable dump of every segment (per record its offset, decoded fields and the bytes in hex)
/// and of every hint file (header, entries). The golden tests pin the on-disk formats with it.
pub fn dump(dir: &Path) -> Result<String> {
    let mut out = String::new();
    for id in list_segments(dir)? {
        let path = segment_path(dir, id);
        let bytes = fs::read(&path).ctx(|| format!("reading {}", path.display()))?;
        let _ = writeln!(out, "segment {id:010} ({} bytes)", bytes.len());
        for item in Scanner::new(&bytes) {
            match item {
                ScanItem::Record { offset, record } => {
                    let start = offset as usize;
                    let raw = &bytes[start..start + record.total_len];
                    let _ = writeln!(
                        out,
                        "@{offset} {} {} ts={} key={:?} key_len={} body_len={} value_len={} crc={:08x}",
                        record.kind,
                        record.keyspace,
                        record.timestamp_ms,
                        String::from_utf8_lossy(record.key),
                        record.key.len(),
                        record.body.len(),
                        record.value.len(),
                        record.crc
                    );
                    let _ = writeln!(out, "  header {}", hex(&raw[..CRC_AT]));
                    let _ = writeln!(out, "  crc    {}", hex(&raw[CRC_AT..HEADER_LEN]));
                    let key_end = HEADER_LEN + record.key.len();
                    let _ = writeln!(out, "  key    {}", hex(&raw[HEADER_LEN..key_end]));
                    let _ = writeln!(out, "  body   {}", hex(&raw[key_end..]));
                }
                ScanItem::Corrupt { offset, len, reason } => {
                    let _ = writeln!(out, "@{offset} CORRUPT {len} bytes: {reason}");
                }
            }
        }
        let hpath = hint_path(dir, id);
        if let Ok(h) = fs::read(&hpath) {
            dump_hint(&mut out, id, &h);
        }
    }
    Ok(out)
}

/// Appends a hint file's header fields, entries and header hex to `out`.
fn dump_hint(out: &mut String, id: u64, h: &[u8]) {
    let _ = writeln!(out, "hint {id:010} ({} bytes)", h.len());
    let header_len = hint::CONTAINER_HEADER_LEN.min(h.len());
    let _ = writeln!(out, "  header {}", hex(&h[..header_len]));
    match hint::decode_container(h, hint::HINT_MAGIC) {
        Ok((segment_len, body)) => {
            let _ = writeln!(out, "  segment_len={segment_len} body_len={}", body.len());
            let _ = writeln!(out, "  body   {}", hex(body));
            match rmp_serde::from_slice::<Vec<hint::HintEntry>>(body) {
                Ok(entries) => {
                    for e in entries {
                        let _ = writeln!(
                            out,
                            "  entry keyspace={} kind={} offset={} len={} key={:?}",
                            e.keyspace,
                            e.kind,
                            e.offset,
                            e.len,
                            String::from_utf8_lossy(&e.key)
                        );
                    }
                }
                Err(e) => {
                    let _ = writeln!(out, "  undecodable body: {e}");
                }
            }
        }
        Err(why) => {
            let _ = writeln!(out, "  invalid: {why}");
        }
    }
}

fn hex(b: &[u8]) -> String {
    let mut s = String::with_capacity(b.len() * 3);
    for (i, x) in b.iter().enumerate() {
        if i > 0 {
            s.push(' ');
        }
        let _ = write!(s, "{x:02x}");
    }
    s
}
