//! The on-disk record: framing, checksum, encoding and decoding, and the forward scan with resync.
//!
//! RECORD FORMAT
//! =============
//!
//! A segment file is nothing but records back to back, no file header. Every record is a fixed
//! 24-byte little-endian header, the key, and the body (the layout is also drawn in
//! `docs/engine-format.md`):
//!
//! ```text
//! offset size field
//!  0     2    magic        0xC4 0x12 (0 is never valid, so a zeroed region never parses)
//!  2     1    version      FORMAT_VERSION (1)
//!  3     1    kind         1 = put, 2 = tombstone
//!  4     1    keyspace     0 = object, 1 = bucket, 2 = hint
//!  5     1    reserved     0
//!  6     2    key_len      u16 LE
//!  8     4    body_len     u32 LE
//! 12     8    timestamp    u64 LE, ms since the Unix epoch (Options::clock)
//! 20     4    crc          u32 LE, CRC32C of bytes 0..20, then the key, then the body
//! 24     key_len          key bytes
//! 24+k   body_len         body: put = the value as a MessagePack bin (rmp-serde of serde_bytes),
//!                               tombstone = empty
//! ```
//!
//! The checksum covers everything except itself, so a flipped bit anywhere in a record (header, key or
//! body) is detected. A decoder validates lengths against the bytes actually present *before* touching
//! them and never allocates by a length field: decoding borrows from the mapped file.
//!
//! RESYNC
//! ======
//!
//! After a bad record the scanner looks for the next offset where a complete, checksummed record
//! starts ([`Scanner`]). A region that fails is reported as [`ScanItem::Corrupt`] with its extent. A
//! false resync needs a 3-byte magic/version match, valid kind/keyspace/reserved bytes, in-bounds
//! lengths and a matching CRC32C: about 2^-56 per candidate for random bytes. A *value* that itself
//! contains a well-formed record (someone stores a segment file as an object) can be mistaken for a
//! record when the record around it is damaged; this is documented as a known limitation.

use std::fmt;

use crate::error::{Error, Result};

/// First two bytes of every record.
pub const MAGIC: [u8; 2] = [0xC4, 0x12];
/// Version of the record format written by this code (see the version log in `docs/engine-format.md`).
pub const FORMAT_VERSION: u8 = 1;

// Field offsets as a const chain: each field starts where the previous one ends.
/// Offset of the magic bytes.
pub const MAGIC_AT: usize = 0;
/// Offset of the format version byte.
pub const VERSION_AT: usize = MAGIC_AT + 2;
/// Offset of the record kind byte.
pub const KIND_AT: usize = VERSION_AT + 1;
/// Offset of the keyspace byte.
pub const KEYSPACE_AT: usize = KIND_AT + 1;
/// Offset of the reserved byte (must be 0).
pub const RESERVED_AT: usize = KEYSPACE_AT + 1;
/// Offset of the key length (u16 LE).
pub const KEY_LEN_AT: usize = RESERVED_AT + 1;
/// Offset of the body length (u32 LE).
pub const BODY_LEN_AT: usize = KEY_LEN_AT + 2;
/// Offset of the timestamp (u64 LE, ms).
pub const TIMESTAMP_AT: usize = BODY_LEN_AT + 4;
/// Offset of the CRC32C (u32 LE).
pub const CRC_AT: usize = TIMESTAMP_AT + 8;
/// Size of the fixed header; the key starts here.
pub const HEADER_LEN: usize = CRC_AT + 4;

/// Longest key the format can hold.
pub const MAX_KEY_LEN: usize = u16::MAX as usize;

/// How many keyspaces there are.
pub const KEYSPACES: usize = 4;

/// The separate key spaces of one engine. Each has its own ordered keydir; the same key bytes in two
/// keyspaces are two unrelated keys.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Keyspace {
    /// Objects (sibling sets), keyed by bucket/incarnation/name.
    Object,
    /// The bucket registry.
    Bucket,
    /// Hints held for other nodes, keyed with the target node first so they list by target.
    Hint,
    /// Chunks of large objects' contents, keyed by object key, blob id and chunk index.
    Chunk,
}

impl Keyspace {
    /// Every keyspace, in tag order.
    pub const ALL: [Keyspace; KEYSPACES] =
        [Keyspace::Object, Keyspace::Bucket, Keyspace::Hint, Keyspace::Chunk];

    /// The on-disk tag.
    pub fn tag(self) -> u8 {
        match self {
            Keyspace::Object => 0,
            Keyspace::Bucket => 1,
            Keyspace::Hint => 2,
            Keyspace::Chunk => 3,
        }
    }

    /// The keyspace of an on-disk tag.
    pub fn from_tag(tag: u8) -> Option<Self> {
        match tag {
            0 => Some(Keyspace::Object),
            1 => Some(Keyspace::Bucket),
            2 => Some(Keyspace::Hint),
            3 => Some(Keyspace::Chunk),
            _ => None,
        }
    }

    pub(crate) fn index(self) -> usize {
        usize::from(self.tag())
    }
}

impl fmt::Display for Keyspace {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(match self {
            Keyspace::Object => "object",
            Keyspace::Bucket => "bucket",
            Keyspace::Hint => "hint",
            Keyspace::Chunk => "chunk",
        })
    }
}

/// What a record says about its key.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RecordKind {
    /// The key now has the record's value.
    Put,
    /// The key is deleted (engine-level tombstone).
    Tombstone,
}

impl RecordKind {
    /// The on-disk tag.
    pub fn tag(self) -> u8 {
        match self {
            RecordKind::Put => 1,
            RecordKind::Tombstone => 2,
        }
    }
    /// The kind of an on-disk tag.
    pub fn from_tag(tag: u8) -> Option<Self> {
        match tag {
            1 => Some(RecordKind::Put),
            2 => Some(RecordKind::Tombstone),
            _ => None,
        }
    }
}

impl fmt::Display for RecordKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(match self {
            RecordKind::Put => "put",
            RecordKind::Tombstone => "tombstone",
        })
    }
}

/// Encodes one record into a fresh buffer (header, key, body), fields in the order of the module doc.
/// The caller has checked `key.len() <= MAX_KEY_LEN` and the value size.
pub(crate) fn encode(
    kind: RecordKind,
    ks: Keyspace,
    key: &[u8],
    value: &[u8],
    timestamp_ms: u64,
) -> Result<Vec<u8>> {
    encode_parts(kind, ks, key, value, timestamp_ms, true)
}

/// Values at least this long are not copied into the record buffer: [`encode_head`] builds
/// everything before the value and the writer writes the value from the caller's buffer.
pub(crate) const SPLIT_VALUE_LEN: usize = 64 << 10;

/// The bytes of a put record *before* its value: header, key and the MessagePack bin header;
/// the value follows them on disk unchanged. The CRC covers the value (computed here, without
/// copying it). `encode_head(..) ++ value` is byte for byte what [`encode`] produces.
pub(crate) fn encode_head(
    ks: Keyspace,
    key: &[u8],
    value: &[u8],
    timestamp_ms: u64,
) -> Result<Vec<u8>> {
    encode_parts(RecordKind::Put, ks, key, value, timestamp_ms, false)
}

/// A record, with the value appended (`with_value`) or left for the writer to write after it.
fn encode_parts(
    kind: RecordKind,
    ks: Keyspace,
    key: &[u8],
    value: &[u8],
    timestamp_ms: u64,
    with_value: bool,
) -> Result<Vec<u8>> {
    let key_len = u16::try_from(key.len())
        .map_err(|_| Error::KeyTooLarge { size: key.len(), max: MAX_KEY_LEN })?;
    let too_large = || Error::ValueTooLarge { size: value.len() as u64, max: u64::from(u32::MAX) };
    let inline = if with_value { value.len() } else { 0 };
    let mut buf = Vec::with_capacity(HEADER_LEN + key.len() + 5 + inline);
    buf.extend_from_slice(&[0u8; HEADER_LEN]);
    buf.extend_from_slice(key);
    let mut body_len = 0;
    if kind == RecordKind::Put {
        // The body: the value as a MessagePack bin (the shortest header for its length, as
        // rmp-serde writes it), the value appended in place (one copy) or written after.
        let vlen = value.len();
        if vlen < 1 << 8 {
            buf.extend_from_slice(&[0xc4, vlen as u8]);
        } else if vlen < 1 << 16 {
            buf.push(0xc5);
            buf.extend_from_slice(&(vlen as u16).to_be_bytes());
        } else {
            buf.push(0xc6);
            buf.extend_from_slice(&u32::try_from(vlen).map_err(|_| too_large())?.to_be_bytes());
        }
        body_len = buf.len() - HEADER_LEN - key.len() + vlen;
        if with_value {
            buf.extend_from_slice(value);
        }
    }
    let body_len = u32::try_from(body_len).map_err(|_| too_large())?;
    // magic (2), version (1), kind (1), keyspace (1), reserved (1)
    buf[MAGIC_AT..VERSION_AT].copy_from_slice(&MAGIC);
    buf[VERSION_AT] = FORMAT_VERSION;
    buf[KIND_AT] = kind.tag();
    buf[KEYSPACE_AT] = ks.tag();
    buf[RESERVED_AT] = 0;
    // key_len u16 LE, body_len u32 LE, timestamp u64 LE
    buf[KEY_LEN_AT..BODY_LEN_AT].copy_from_slice(&key_len.to_le_bytes());
    buf[BODY_LEN_AT..TIMESTAMP_AT].copy_from_slice(&body_len.to_le_bytes());
    buf[TIMESTAMP_AT..CRC_AT].copy_from_slice(&timestamp_ms.to_le_bytes());
    // crc over header-before-crc, key, body (the value included, wherever it is)
    let mut crc = record_crc(&buf[..CRC_AT], &buf[HEADER_LEN..]);
    if kind == RecordKind::Put && !with_value {
        crc = crc32c::crc32c_append(crc, value);
    }
    buf[CRC_AT..HEADER_LEN].copy_from_slice(&crc.to_le_bytes());
    Ok(buf)
}

fn record_crc(header_before_crc: &[u8], key_and_body: &[u8]) -> u32 {
    crc32c::crc32c_append(crc32c::crc32c(header_before_crc), key_and_body)
}

/// Why bytes at an offset are not a record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DecodeError {
    /// Fewer bytes remain than the header or the lengths claim.
    Truncated,
    /// Magic, version, kind, keyspace or reserved byte is wrong.
    BadHeader,
    /// The lengths fit but the checksum does not match.
    BadCrc,
    /// The checksum matches but the body is not what the kind requires.
    BadBody,
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            DecodeError::Truncated => "truncated record",
            DecodeError::BadHeader => "bad record header",
            DecodeError::BadCrc => "checksum mismatch",
            DecodeError::BadBody => "malformed record body",
        })
    }
}

/// A record decoded in place; every slice borrows from the segment bytes.
#[derive(Debug, Clone, Copy)]
pub struct RecordRef<'a> {
    /// Put or tombstone.
    pub kind: RecordKind,
    /// Its keyspace.
    pub keyspace: Keyspace,
    /// Record timestamp, ms since the epoch.
    pub timestamp_ms: u64,
    /// The key.
    pub key: &'a [u8],
    /// The body bytes as stored.
    pub body: &'a [u8],
    /// The value (inside the body) for puts, empty for tombstones.
    pub value: &'a [u8],
    /// Where the value starts, relative to the record start.
    pub value_offset: usize,
    /// Bytes of the whole record (header + key + body).
    pub total_len: usize,
    /// The stored checksum.
    pub crc: u32,
}

fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}
fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}
fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}

/// Checks the header bytes that do not depend on lengths (magic, version, kind, keyspace, reserved).
fn header_plausible(h: &[u8]) -> bool {
    h[MAGIC_AT..VERSION_AT] == MAGIC
        && h[VERSION_AT] == FORMAT_VERSION
        && RecordKind::from_tag(h[KIND_AT]).is_some()
        && Keyspace::from_tag(h[KEYSPACE_AT]).is_some()
        && h[RESERVED_AT] == 0
}

/// Decodes the record starting at `buf[0]`, verifying its checksum. Reads fields in the order of the
/// module doc; validates every length against `buf.len()` before slicing.
pub fn decode(buf: &[u8]) -> std::result::Result<RecordRef<'_>, DecodeError> {
    if buf.len() < HEADER_LEN {
        // A short tail that is not even a plausible header start is still a truncated record.
        return Err(DecodeError::Truncated);
    }
    let h = &buf[..HEADER_LEN];
    if !header_plausible(h) {
        return Err(DecodeError::BadHeader);
    }
    // magic, version checked above; kind, keyspace
    let kind = RecordKind::from_tag(h[KIND_AT]).ok_or(DecodeError::BadHeader)?;
    let keyspace = Keyspace::from_tag(h[KEYSPACE_AT]).ok_or(DecodeError::BadHeader)?;
    // key_len, body_len: widened to u64 so the sum cannot overflow, then checked against what exists
    let key_len = usize::from(u16_at(h, KEY_LEN_AT));
    let body_len = u64::from(u32_at(h, BODY_LEN_AT));
    let total = HEADER_LEN as u64 + key_len as u64 + body_len;
    if total > buf.len() as u64 {
        return Err(DecodeError::Truncated);
    }
    let total = usize::try_from(total).map_err(|_| DecodeError::Truncated)?;
    // timestamp, crc
    let timestamp_ms = u64_at(h, TIMESTAMP_AT);
    let crc = u32_at(h, CRC_AT);
    if record_crc(&h[..CRC_AT], &buf[HEADER_LEN..total]) != crc {
        return Err(DecodeError::BadCrc);
    }
    let key = &buf[HEADER_LEN..HEADER_LEN + key_len];
    let body = &buf[HEADER_LEN + key_len..total];
    let (value, value_offset) = match kind {
        RecordKind::Tombstone if body.is_empty() => (&body[..0], total),
        RecordKind::Tombstone => return Err(DecodeError::BadBody),
        RecordKind::Put => {
            let start = body_value_start(body).ok_or(DecodeError::BadBody)?;
            (&body[start..], HEADER_LEN + key_len + start)
        }
    };
    Ok(RecordRef {
        kind,
        keyspace,
        timestamp_ms,
        key,
        body,
        value,
        value_offset,
        total_len: total,
        crc,
    })
}

/// Reads a record's header fields and key at `buf[0]` *without* checking the CRC: for walking a
/// segment this process wrote itself (hint files at roll-over). `None` if the header is implausible or
/// the record extends past `buf`.
pub(crate) fn peek(buf: &[u8]) -> Option<(RecordKind, Keyspace, &[u8], usize)> {
    if buf.len() < HEADER_LEN || !header_plausible(&buf[..HEADER_LEN]) {
        return None;
    }
    let kind = RecordKind::from_tag(buf[KIND_AT])?;
    let ks = Keyspace::from_tag(buf[KEYSPACE_AT])?;
    let key_len = usize::from(u16_at(buf, KEY_LEN_AT));
    let total = HEADER_LEN as u64 + key_len as u64 + u64::from(u32_at(buf, BODY_LEN_AT));
    if total > buf.len() as u64 {
        return None;
    }
    Some((kind, ks, &buf[HEADER_LEN..HEADER_LEN + key_len], total as usize))
}

/// Where the value starts inside a put body (a MessagePack bin that spans the whole body), or `None`.
/// Parsed by hand on the read path (three fixed header forms, lengths big endian as MessagePack
/// specifies); `bin_header_matches_rmp_serde` checks it against rmp-serde's encoder.
fn body_value_start(body: &[u8]) -> Option<usize> {
    let (header, len) = match *body.first()? {
        0xc4 => (2, u64::from(*body.get(1)?)),
        0xc5 => (3, u64::from(u16::from_be_bytes([*body.get(1)?, *body.get(2)?]))),
        0xc6 => {
            let b = body.get(1..5)?;
            (5, u64::from(u32::from_be_bytes([b[0], b[1], b[2], b[3]])))
        }
        _ => return None,
    };
    (header as u64 + len == body.len() as u64).then_some(header)
}

/// One step of a forward scan.
#[derive(Debug, Clone, Copy)]
pub enum ScanItem<'a> {
    /// A valid record at `offset`.
    Record {
        /// Byte offset in the segment.
        offset: u64,
        /// The record.
        record: RecordRef<'a>,
    },
    /// `len` bytes at `offset` that are not valid records; the scan resumes after them.
    Corrupt {
        /// Byte offset in the segment.
        offset: u64,
        /// Length of the bad region (up to the next valid record or the end).
        len: u64,
        /// Why the first record of the region failed.
        reason: DecodeError,
    },
}

/// Walks a segment's bytes record by record; after a bad record it resynchronises at the next offset
/// where a valid record starts. Never panics and never allocates by a length field.
#[derive(Debug)]
pub struct Scanner<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Scanner<'a> {
    /// Scans `buf` from its start.
    pub fn new(buf: &'a [u8]) -> Self {
        Self { buf, pos: 0 }
    }

    fn next_valid_after(&self, from: usize) -> usize {
        let mut p = from;
        while p + HEADER_LEN <= self.buf.len() {
            if self.buf[p] == MAGIC[0]
                && self.buf[p + 1] == MAGIC[1]
                && decode(&self.buf[p..]).is_ok()
            {
                return p;
            }
            p += 1;
        }
        self.buf.len()
    }
}

impl<'a> Iterator for Scanner<'a> {
    type Item = ScanItem<'a>;

    fn next(&mut self) -> Option<ScanItem<'a>> {
        if self.pos >= self.buf.len() {
            return None;
        }
        let at = self.pos;
        match decode(&self.buf[at..]) {
            Ok(record) => {
                self.pos = at + record.total_len;
                Some(ScanItem::Record { offset: at as u64, record })
            }
            Err(reason) => {
                let next = self.next_valid_after(at + 1);
                self.pos = next;
                Some(ScanItem::Corrupt { offset: at as u64, len: (next - at) as u64, reason })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_split_head_plus_the_value_is_the_whole_record() {
        for len in [0usize, 1, 255, 256, 65_535, 65_536, 70_000, 1 << 20] {
            let value: Vec<u8> = (0..len).map(|i| (i * 7 + len) as u8).collect();
            let whole = encode(RecordKind::Put, Keyspace::Chunk, b"k\0x", &value, 99).unwrap();
            let mut split = encode_head(Keyspace::Chunk, b"k\0x", &value, 99).unwrap();
            split.extend_from_slice(&value);
            assert_eq!(split, whole, "value of {len} bytes");
        }
    }

    #[test]
    fn put_and_tombstone_roundtrip() {
        let rec = encode(RecordKind::Put, Keyspace::Bucket, b"k", b"hello", 42).unwrap();
        let r = decode(&rec).unwrap();
        assert_eq!(
            (r.kind, r.keyspace, r.key, r.value, r.timestamp_ms),
            (RecordKind::Put, Keyspace::Bucket, &b"k"[..], &b"hello"[..], 42)
        );
        assert_eq!(&rec[r.value_offset..], b"hello");
        let t = encode(RecordKind::Tombstone, Keyspace::Object, b"k", b"", 1).unwrap();
        assert_eq!(t.len(), HEADER_LEN + 1);
        assert_eq!(decode(&t).unwrap().kind, RecordKind::Tombstone);
    }

    #[test]
    fn bin_header_matches_rmp_serde() {
        for n in [0usize, 1, 255, 256, 65_535, 65_536, 70_000] {
            let value = vec![0x5a; n];
            let body = rmp_serde::to_vec(serde_bytes::Bytes::new(&value)).unwrap();
            let start = body_value_start(&body).unwrap();
            assert_eq!(&body[start..], &value[..], "{n} bytes");
            assert_eq!(body_value_start(&body[..body.len() - 1]), None, "{n} bytes, one short");
        }
        assert_eq!(body_value_start(&[0xc0]), None, "nil is not a bin");
        assert_eq!(body_value_start(&[]), None);
    }

    #[test]
    fn every_single_bit_flip_is_detected() {
        let rec = encode(RecordKind::Put, Keyspace::Object, b"key", b"value", 7).unwrap();
        for i in 0..rec.len() {
            for bit in 0..8 {
                let mut bad = rec.clone();
                bad[i] ^= 1 << bit;
                assert!(decode(&bad).is_err(), "flip of bit {bit} in byte {i} went unnoticed");
            }
        }
    }

    #[test]
    fn huge_length_field_is_truncated_not_allocated() {
        let mut rec = encode(RecordKind::Put, Keyspace::Object, b"key", b"value", 7).unwrap();
        rec[BODY_LEN_AT..TIMESTAMP_AT].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(decode(&rec).unwrap_err(), DecodeError::Truncated);
    }

    #[test]
    fn scanner_skips_a_damaged_record_and_finds_the_next() {
        let a = encode(RecordKind::Put, Keyspace::Object, b"a", b"1", 1).unwrap();
        let b = encode(RecordKind::Put, Keyspace::Object, b"b", b"2", 2).unwrap();
        let c = encode(RecordKind::Put, Keyspace::Object, b"c", b"3", 3).unwrap();
        let mut seg = [a.clone(), b.clone(), c].concat();
        seg[a.len() + HEADER_LEN] ^= 0xff; // b's key
        let items: Vec<_> = Scanner::new(&seg).collect();
        assert_eq!(items.len(), 3);
        assert!(matches!(items[1], ScanItem::Corrupt { offset, len, .. }
            if offset == a.len() as u64 && len == b.len() as u64));
        assert!(matches!(items[2], ScanItem::Record { record, .. } if record.key == b"c"));
    }
}
