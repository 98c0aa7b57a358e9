//! Hint files and the compaction commit file: small checksummed containers of rmp-serde bodies.
//!
//! HINT FILES
//! ==========
//!
//! A hint file `NNNNNNNNNN.hint` is a compact keydir snapshot of the sealed segment with the same
//! number (the idea is Bitcask's): one entry per record, in file order, holding what the keydir needs
//! (keyspace, kind, offset, length, key) but no value. Opening a directory reads hints instead of
//! scanning whole segments. A hint is trusted only if its checksum matches *and* the segment length
//! it records equals the segment file's length; otherwise the segment is scanned and the hint rewritten.
//! Hints are an optimisation only: losing or corrupting one never loses data.
//!
//! CONTAINER
//! =========
//!
//! ```text
//! offset size field
//!  0     4    magic      "CRNH" (hint) or "CRNC" (compaction commit)
//!  4     1    version    1
//!  5     3    reserved   0
//!  8     8    aux        u64 LE: hint = length of the segment it describes; commit = 0
//! 16     4    body_len   u32 LE
//! 20     4    crc        u32 LE, CRC32C of bytes 0..20 then the body
//! 24     body_len        rmp-serde body
//! ```

use std::fs::{self, File};
use std::io::Write;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::options::FileSync;
use crate::record::{Keyspace, RecordKind};

/// Magic of hint files.
pub const HINT_MAGIC: [u8; 4] = *b"CRNH";
/// Magic of the compaction commit file.
pub const COMMIT_MAGIC: [u8; 4] = *b"CRNC";
/// Version of both containers.
pub const CONTAINER_VERSION: u8 = 1;

const C_MAGIC_AT: usize = 0;
const C_VERSION_AT: usize = C_MAGIC_AT + 4;
const C_RESERVED_AT: usize = C_VERSION_AT + 1;
const C_AUX_AT: usize = C_RESERVED_AT + 3;
const C_BODY_LEN_AT: usize = C_AUX_AT + 8;
const C_CRC_AT: usize = C_BODY_LEN_AT + 4;
/// Size of the container header.
pub const CONTAINER_HEADER_LEN: usize = C_CRC_AT + 4;

/// One record of a sealed segment as remembered by its hint file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HintEntry {
    /// Keyspace tag.
    pub keyspace: u8,
    /// Record kind tag.
    pub kind: u8,
    /// Offset of the record in the segment.
    pub offset: u64,
    /// Length of the whole record.
    pub len: u32,
    /// The key.
    #[serde(with = "serde_bytes")]
    pub key: Vec<u8>,
}

impl HintEntry {
    /// The entry's keyspace and kind, if the tags are valid.
    pub fn decoded(&self) -> Option<(Keyspace, RecordKind)> {
        Some((Keyspace::from_tag(self.keyspace)?, RecordKind::from_tag(self.kind)?))
    }
}

/// Frames `body` in a container with `magic` and `aux`.
pub(crate) fn encode_container(magic: [u8; 4], aux: u64, body: &[u8]) -> Option<Vec<u8>> {
    let body_len = u32::try_from(body.len()).ok()?;
    let mut out = Vec::with_capacity(CONTAINER_HEADER_LEN + body.len());
    out.extend_from_slice(&magic); // magic
    out.push(CONTAINER_VERSION); // version
    out.extend_from_slice(&[0, 0, 0]); // reserved
    out.extend_from_slice(&aux.to_le_bytes()); // aux
    out.extend_from_slice(&body_len.to_le_bytes()); // body_len
    let crc = crc32c::crc32c_append(crc32c::crc32c(&out[..C_CRC_AT]), body);
    out.extend_from_slice(&crc.to_le_bytes()); // crc
    out.extend_from_slice(body);
    Some(out)
}

/// Unframes a container, checking magic, version, lengths and checksum. Returns `(aux, body)`.
pub(crate) fn decode_container(bytes: &[u8], magic: [u8; 4]) -> Result<(u64, &[u8]), String> {
    if bytes.len() < CONTAINER_HEADER_LEN {
        return Err(format!("{} bytes is shorter than the header", bytes.len()));
    }
    if bytes[C_MAGIC_AT..C_VERSION_AT] != magic {
        return Err("bad magic".into());
    }
    if bytes[C_VERSION_AT] != CONTAINER_VERSION {
        return Err(format!("unknown version {}", bytes[C_VERSION_AT]));
    }
    let mut aux = [0u8; 8];
    aux.copy_from_slice(&bytes[C_AUX_AT..C_BODY_LEN_AT]);
    let mut len = [0u8; 4];
    len.copy_from_slice(&bytes[C_BODY_LEN_AT..C_CRC_AT]);
    let body_len = u64::from(u32::from_le_bytes(len));
    if body_len != (bytes.len() - CONTAINER_HEADER_LEN) as u64 {
        return Err(format!(
            "body length {body_len} does not match the file ({} bytes after the header)",
            bytes.len() - CONTAINER_HEADER_LEN
        ));
    }
    let mut crc = [0u8; 4];
    crc.copy_from_slice(&bytes[C_CRC_AT..CONTAINER_HEADER_LEN]);
    let body = &bytes[CONTAINER_HEADER_LEN..];
    if crc32c::crc32c_append(crc32c::crc32c(&bytes[..C_CRC_AT]), body) != u32::from_le_bytes(crc) {
        return Err("checksum mismatch".into());
    }
    Ok((u64::from_le_bytes(aux), body))
}

/// Writes `bytes` to `path` atomically: a `.tmp` sibling, optionally synced, renamed into place.
pub(crate) fn write_atomic(
    path: &Path,
    bytes: &[u8],
    sync: Option<&dyn FileSync>,
) -> std::io::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = std::path::PathBuf::from(tmp);
    {
        let mut f = File::create(&tmp)?;
        f.write_all(bytes)?;
        if let Some(s) = sync {
            s.sync_data(&f)?;
        }
    }
    fs::rename(&tmp, path)
}

/// Encodes a hint file for a segment of `segment_len` bytes.
pub(crate) fn encode_hint(segment_len: u64, entries: &[HintEntry]) -> Option<Vec<u8>> {
    let body = rmp_serde::to_vec(entries).ok()?;
    encode_container(HINT_MAGIC, segment_len, &body)
}

/// Reads and checks a hint file; `Err` says why it cannot be trusted.
pub(crate) fn read_hint(path: &Path, segment_len: u64) -> Result<Vec<HintEntry>, String> {
    let bytes = fs::read(path).map_err(|e| e.to_string())?;
    let (aux, body) = decode_container(&bytes, HINT_MAGIC)?;
    if aux != segment_len {
        return Err(format!("describes a segment of {aux} bytes, the file has {segment_len}"));
    }
    let entries: Vec<HintEntry> = rmp_serde::from_slice(body).map_err(|e| e.to_string())?;
    let mut end = 0u64;
    for e in &entries {
        if e.decoded().is_none()
            || e.offset < end
            || e.offset.saturating_add(u64::from(e.len)) > segment_len
        {
            return Err(format!("entry at offset {} is out of order or out of bounds", e.offset));
        }
        end = e.offset + u64::from(e.len);
    }
    Ok(entries)
}

/// The compaction commit record: which segment files the compaction replaces and by what.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct CommitRecord {
    /// Ids of the input segments (all are removed or replaced).
    pub inputs: Vec<u64>,
    /// Final ids of the outputs; output `i` is `compact.tmp/i.seg` (+ `i.hint`) until renamed.
    pub outputs: Vec<u64>,
}
