//! The large-object workload: objects of several 1 MiB chunks written, overwritten and deleted
//! under the faults, recorded in the same history as the small objects, and their bytes checked
//! on every read.
//!
//! The node stores an object above 1 MiB in chunks of 1 MiB (a manifest in the key's sibling
//! set, the chunks beside it on the same replicas; hints, read repair, anti-entropy and
//! partition handoff fetch missing chunks before they merge a manifest). This workload makes
//! every faults run (local and Docker) move such objects through all of those paths.
//!
//! CONTENT
//! =======
//! A large object's bytes are one header line and a filler, both derived from what the history
//! knows of the write:
//!
//! ```text
//! cairn-faults-large/1 <length> <key> <JSON array of elements>\n<filler up to length bytes>
//! ```
//!
//! The elements are those of the history's model (`history.rs`): the write's own element plus
//! everything its read saw, so a large version is checked for lost, phantom, resurrected and
//! sibling findings exactly like a small one. Byte `p` of the filler is byte `p mod 8` (little
//! endian) of a splitmix64 word of `(seed, p / 8)`, the seed a hash of the header line: any byte
//! of any version can be recomputed from its header alone, so a reader checks a whole body (or a
//! `Range` of it) as it streams, holding nothing but the header. The lengths are drawn in
//! `--large-size` (2.5-4.5 MiB by default: three to five chunks, the last one partial) and never
//! a multiple of 1 MiB.
//!
//! A body that starts like a large object but whose header is not the canonical one for its
//! key, whose length differs from the header's (or from its `Content-Length`), or one byte of
//! which differs from what the writer stored, is **corrupt**: the client counts it (with the
//! first differing offset, and the chunk it falls in) and answers an error, so a corrupt version
//! in a final view makes that view unreadable and fails the run; a corrupt read during the run
//! fails it too. A body cut short by a transport error (a node that could not fetch a chunk
//! ends the response early) is **cut short**: tolerated during the faults (the read failed and
//! nothing was written after it), an unreadable view in the read-back.
//!
//! WORKLOAD
//! ========
//! [`LARGE_CLIENTS`] clients share `--large-objects` operations (0: none), spread evenly over
//! the workload window (each waits for its next slot, so the count and the deadline both bound
//! the loop), on `--large-keys` keys `large-<k>`, each operation through a random node:
//! - read-modify-write (most): read the key (fetching every sibling of a 300 and checking every
//!   body), write back the union of what it read plus a new element with the read's context, so
//!   versions supersede each other (and their chunks become garbage for the node to collect);
//!   after a read that found one version, a `Range` read of that version (`?sibling=ID`) across
//!   a chunk boundary is checked byte for byte;
//! - blind write (one in five): no read, no context: a new sibling beside whatever is there;
//! - delete/re-create (one in ten): read; delete what it saw with its context, or, if nothing is
//!   live, write with the context of the 404.
//!
//! A write answered 503 `SlowDown` (the node's large-object buffers are spent; nothing was
//! stored) is retried up to [`SLOWDOWN_RETRIES`] times after a pause, and recorded as `Failed`
//! if every attempt was refused. Each client holds at most one object in memory (the body it is
//! sending); reads are checked as they stream.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;

use crate::client::{Client, RangeCheck, Read};
use crate::history::{Op, OpKind, Outcome, View};

/// First token of a large object's header line.
pub const MAGIC: &str = "cairn-faults-large/1";
/// One MiB, the node's chunk size.
pub const MIB: u64 = 1 << 20;
/// Clients of the large-object workload (two, so that their writes are concurrent).
pub const LARGE_CLIENTS: usize = 2;
/// Longest header line a reader accepts (the elements of one key: at most
/// [`MAX_LARGE_OBJECTS`] short strings).
pub const MAX_HEADER: usize = 256 * 1024;
/// Smallest object length `--large-size` accepts (the header must fit well inside).
pub const MIN_LARGE_SIZE: u64 = 2 * MAX_HEADER as u64;
/// Largest object length `--large-size` accepts (a client holds one object in memory).
pub const MAX_LARGE_SIZE: u64 = 64 * MIB;
/// Most operations `--large-objects` accepts.
pub const MAX_LARGE_OBJECTS: usize = 10_000;
/// Retries of a write answered 503 `SlowDown`.
pub const SLOWDOWN_RETRIES: u32 = 3;
/// Pause before the first `SlowDown` retry (doubled at each).
pub const SLOWDOWN_PAUSE: Duration = Duration::from_millis(250);
/// Names of the large keys: `large-<k>`.
pub const KEY_PREFIX: &str = "large-";

/// True for the keys of this workload.
pub fn is_large_key(key: &str) -> bool {
    key.starts_with(KEY_PREFIX)
}

/// Parses `--large-size`: `MIN-MAX` (or one length) in MiB, decimals allowed, e.g. `2.5-4.5`.
pub fn parse_size_range(s: &str) -> Result<(u64, u64), String> {
    let mib = |t: &str| -> Result<u64, String> {
        let v: f64 = t.trim().parse().map_err(|_| format!("{t:?} is not a number of MiB"))?;
        if !v.is_finite() || v <= 0.0 {
            return Err(format!("{t:?}: a size must be positive"));
        }
        Ok((v * MIB as f64).round() as u64)
    };
    let (lo, hi) = match s.split_once('-') {
        Some((a, b)) => (mib(a)?, mib(b)?),
        None => {
            let v = mib(s)?;
            (v, v)
        }
    };
    if lo > hi {
        return Err(format!("{s:?}: the smaller size comes first"));
    }
    if lo < MIN_LARGE_SIZE || hi > MAX_LARGE_SIZE {
        return Err(format!(
            "{s:?}: sizes must be between {} KiB and {} MiB",
            MIN_LARGE_SIZE >> 10,
            MAX_LARGE_SIZE >> 20
        ));
    }
    Ok((lo, hi))
}

/// A length in `[lo, hi]` that is not a multiple of 1 MiB (the last chunk is partial).
pub fn pick_size(rng: &mut impl Rng, (lo, hi): (u64, u64)) -> u64 {
    let n = rng.random_range(lo..=hi);
    if n % MIB != 0 {
        n
    } else if n > lo {
        n - 1
    } else {
        n + 1
    }
}

fn splitmix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// FNV-1a, 64 bits.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes
        .iter()
        .fold(0xcbf2_9ce4_8422_2325, |h, b| (h ^ u64::from(*b)).wrapping_mul(0x100_0000_01b3))
}

/// The bytes one large version must hold: its header line, then the filler the header's seed
/// gives, up to its length.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Expected {
    header: Vec<u8>,
    seed: u64,
    len: u64,
}

impl Expected {
    /// The content of `key` holding `elems`, `len` bytes long (at least the header's length).
    pub fn new(key: &str, elems: &BTreeSet<String>, len: u64) -> Expected {
        let json = serde_json::to_string(elems).unwrap_or_else(|_| "[]".into());
        let header = format!("{MAGIC} {len} {key} {json}\n").into_bytes();
        let len = len.max(header.len() as u64);
        Expected { seed: fnv1a(&header), header, len }
    }

    /// Length in bytes.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// True for an empty object (never: the header is in every one).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Length of the header line.
    pub fn header_len(&self) -> u64 {
        self.header.len() as u64
    }

    fn word(&self, index: u64) -> [u8; 8] {
        splitmix64(self.seed ^ index.wrapping_mul(0xd1b5_4a32_d192_ed03)).to_le_bytes()
    }

    /// The byte at offset `p` (< `len`).
    pub fn byte_at(&self, p: u64) -> u8 {
        match self.header.get(p as usize) {
            Some(b) => *b,
            None => self.word(p / 8)[(p % 8) as usize],
        }
    }

    /// The whole content (what the writer sends).
    pub fn body(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.len as usize);
        out.extend_from_slice(&self.header);
        let mut p = out.len() as u64;
        while p < self.len {
            let word = self.word(p / 8);
            let from = (p % 8) as usize;
            let take = ((self.len - p) as usize).min(8 - from);
            out.extend_from_slice(&word[from..from + take]);
            p += take as u64;
        }
        out
    }

    /// Checks `bytes` received at offset `at`: the first differing offset, as an error text.
    pub fn compare(&self, at: u64, bytes: &[u8]) -> Result<(), String> {
        let mut cache: Option<(u64, [u8; 8])> = None;
        for (i, got) in bytes.iter().enumerate() {
            let p = at + i as u64;
            if p >= self.len {
                return Err(format!("longer than the {} bytes written", self.len));
            }
            let want = if p < self.header_len() {
                self.header[p as usize]
            } else {
                let w = match cache {
                    Some((idx, w)) if idx == p / 8 => w,
                    _ => {
                        let w = self.word(p / 8);
                        cache = Some((p / 8, w));
                        w
                    }
                };
                w[(p % 8) as usize]
            };
            if *got != want {
                return Err(format!(
                    "byte {p} (chunk {}, offset {} in it) is {got:#04x}, the writer stored \
                     {want:#04x}",
                    p / MIB,
                    p % MIB
                ));
            }
        }
        Ok(())
    }
}

/// What a checked body turned out to be.
#[derive(Debug, PartialEq, Eq)]
pub enum Content {
    /// Not a large object: the whole body (a small object's JSON array).
    Small(Vec<u8>),
    /// A large object whose every byte matched: its elements and length.
    Large {
        /// The elements of its header.
        elems: BTreeSet<String>,
        /// Its length.
        len: u64,
    },
}

enum State {
    /// Not yet known: the bytes so far.
    Head(Vec<u8>),
    /// A small object: the bytes so far.
    Small(Vec<u8>),
    /// A large object: what it must be, its elements, and the bytes checked so far.
    Large { expected: Expected, elems: BTreeSet<String>, pos: u64 },
}

/// Checks one object body as it streams: a small body is collected whole; a large one is
/// compared with what its header says the writer stored, holding only the header. Errors are the
/// corruption found, as text.
pub struct BodyCheck {
    key: String,
    declared: Option<u64>,
    state: State,
}

impl BodyCheck {
    /// A check of a body of `key` whose answer declared `declared` bytes (`Content-Length`).
    pub fn new(key: &str, declared: Option<u64>) -> BodyCheck {
        BodyCheck { key: key.to_string(), declared, state: State::Head(Vec::new()) }
    }

    /// True once the body is known to be a large object.
    pub fn is_large(&self) -> bool {
        matches!(self.state, State::Large { .. })
    }

    /// Bytes received so far.
    pub fn received(&self) -> u64 {
        match &self.state {
            State::Head(b) | State::Small(b) => b.len() as u64,
            State::Large { pos, .. } => *pos,
        }
    }

    /// The length a large body must have (None until its header is read).
    pub fn expected_len(&self) -> Option<u64> {
        match &self.state {
            State::Large { expected, .. } => Some(expected.len()),
            _ => None,
        }
    }

    /// Feeds the next bytes.
    pub fn push(&mut self, bytes: &[u8]) -> Result<(), String> {
        match &mut self.state {
            State::Small(buf) => {
                buf.extend_from_slice(bytes);
                Ok(())
            }
            State::Large { expected, pos, .. } => {
                expected.compare(*pos, bytes)?;
                *pos += bytes.len() as u64;
                Ok(())
            }
            State::Head(buf) => {
                buf.extend_from_slice(bytes);
                let buf = std::mem::take(buf);
                self.head(buf)
            }
        }
    }

    /// Decides what the body is once enough of it is there (leaves `Head` otherwise).
    fn head(&mut self, buf: Vec<u8>) -> Result<(), String> {
        let prefix = format!("{MAGIC} ");
        if buf.len() < prefix.len() && prefix.as_bytes().starts_with(&buf) {
            self.state = State::Head(buf);
            return Ok(());
        }
        if !buf.starts_with(prefix.as_bytes()) {
            self.state = State::Small(buf);
            return Ok(());
        }
        let Some(nl) = buf.iter().position(|b| *b == b'\n') else {
            if buf.len() > MAX_HEADER {
                return Err(format!("no end of the header line in the first {MAX_HEADER} bytes"));
            }
            self.state = State::Head(buf);
            return Ok(());
        };
        let (expected, elems) = self.parse_header(&buf[..nl])?;
        expected.compare(0, &buf)?;
        let pos = buf.len() as u64;
        self.state = State::Large { expected, elems, pos };
        Ok(())
    }

    fn parse_header(&self, line: &[u8]) -> Result<(Expected, BTreeSet<String>), String> {
        let text = std::str::from_utf8(line).map_err(|_| "the header line is not UTF-8")?;
        let mut parts = text.splitn(4, ' ');
        let (_, len, key, json) = (parts.next(), parts.next(), parts.next(), parts.next());
        let (Some(len), Some(key), Some(json)) = (len, key, json) else {
            return Err(format!("malformed header line {text:?}"));
        };
        let len: u64 = len.parse().map_err(|_| format!("malformed length in header {text:?}"))?;
        if key != self.key {
            return Err(format!("the body is the one written for key {key:?}"));
        }
        let elems: BTreeSet<String> =
            serde_json::from_str(json).map_err(|e| format!("malformed elements in header: {e}"))?;
        let expected = Expected::new(key, &elems, len);
        if expected.header[..expected.header.len() - 1] != *line {
            return Err(format!("header line {text:?} is not the one its writer sends"));
        }
        if let Some(d) = self.declared
            && d != expected.len()
        {
            return Err(format!(
                "the answer declares {d} bytes (Content-Length), the object written has {}",
                expected.len()
            ));
        }
        Ok((expected, elems))
    }

    /// The body ended cleanly: what it was, or the corruption (a large body shorter than
    /// written).
    pub fn finish(self) -> Result<Content, String> {
        match self.state {
            State::Head(buf) if buf.starts_with(MAGIC.as_bytes()) && !buf.is_empty() => {
                Err(format!("the body ends inside its header, after {} bytes", buf.len()))
            }
            State::Head(buf) | State::Small(buf) => Ok(Content::Small(buf)),
            State::Large { expected, elems, pos } => {
                if pos != expected.len() {
                    return Err(format!(
                        "truncated: {pos} of {} bytes (the body stops in chunk {} of {})",
                        expected.len(),
                        pos / MIB,
                        expected.len().div_ceil(MIB)
                    ));
                }
                Ok(Content::Large { elems, len: pos })
            }
        }
    }
}

/// What the large workload is asked to do.
#[derive(Clone, Debug, Serialize)]
pub struct LargeSettings {
    /// Operations in all (shared by the [`LARGE_CLIENTS`] clients).
    pub operations: usize,
    /// Keys (`large-0` ..).
    pub keys: usize,
    /// Object lengths, bytes: smallest and largest.
    pub size: (u64, u64),
    /// Seed of the clients' choices.
    pub seed: u64,
    /// Client number of the first large client in the history (after the small clients).
    pub first_client: usize,
}

/// Counters of one large client.
#[derive(Clone, Debug, Default, Serialize)]
pub struct LargeStats {
    /// Writes sent (attempts refused with `SlowDown` and retried count once).
    pub writes: u64,
    /// Deletes sent.
    pub deletes: u64,
    /// Bytes of the writes sent (each write counted once).
    pub bytes_written: u64,
    /// Reads that failed, cut short included (the operation was then not sent).
    pub reads_failed: u64,
    /// `Range` reads whose bytes were checked.
    pub ranges_checked: u64,
    /// `Range` reads not checked: the version was gone, or the read failed under the faults.
    pub ranges_skipped: u64,
    /// 503 `SlowDown` answers to writes.
    pub slow_downs: u64,
    /// Largest number of live versions one read returned.
    pub max_versions_read: usize,
}

impl LargeStats {
    fn add(&mut self, o: &LargeStats) {
        self.writes += o.writes;
        self.deletes += o.deletes;
        self.bytes_written += o.bytes_written;
        self.reads_failed += o.reads_failed;
        self.ranges_checked += o.ranges_checked;
        self.ranges_skipped += o.ranges_skipped;
        self.slow_downs += o.slow_downs;
        self.max_versions_read = self.max_versions_read.max(o.max_versions_read);
    }
}

/// Operations of client `j` of `total` spread over the clients.
fn share(total: usize, j: usize) -> usize {
    total / LARGE_CLIENTS + usize::from(j < total % LARGE_CLIENTS)
}

/// Runs large client `j` until its operations are done or `deadline`; returns its operations
/// (for the history) and counters.
pub async fn client_loop(
    j: usize,
    client: Client,
    nodes: Arc<Vec<String>>,
    s: LargeSettings,
    started: Instant,
    deadline: Instant,
) -> (Vec<Op>, LargeStats) {
    let mut rng = StdRng::seed_from_u64(
        s.seed ^ 0x6c61_7267_6500_0000 ^ (j as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15),
    );
    let mut ops = Vec::new();
    let mut stats = LargeStats::default();
    let count = share(s.operations, j);
    if count == 0 || nodes.is_empty() {
        return (ops, stats);
    }
    let slot = deadline.saturating_duration_since(started) / count as u32;
    let id = s.first_client + j;
    for i in 0..count {
        // Slot i, at a random point of its first half (the clients do not move in step).
        let due = started + slot * i as u32 + slot.mul_f64(rng.random_range(0.0..0.5));
        if due >= deadline {
            break;
        }
        tokio::time::sleep(due.saturating_duration_since(Instant::now())).await;
        if Instant::now() >= deadline {
            break;
        }
        let node = nodes[rng.random_range(0..nodes.len())].as_str();
        let key = format!("{KEY_PREFIX}{}", rng.random_range(0..s.keys.max(1)));
        let elem = format!("L{j}.{i}");
        let size = pick_size(&mut rng, s.size);
        let at_ms = started.elapsed().as_millis() as u64;
        let roll = rng.random_range(0..100);
        let op = if roll < 20 {
            // Blind: a new sibling beside whatever is there.
            let outcome = write(&client, node, &key, None, &[&elem], size, &mut stats).await;
            let kind = OpKind::Write { elem };
            Some(Op { client: id, key, kind, saw: BTreeSet::new(), outcome, at_ms })
        } else {
            match client.read(node, &key, false).await {
                Err(_) => {
                    stats.reads_failed += 1;
                    None
                }
                Ok(r) => {
                    stats.max_versions_read = stats.max_versions_read.max(r.live.len());
                    let saw = r.union();
                    if roll < 30 && !r.live.is_empty() {
                        match r.context.as_deref() {
                            Some(c) => {
                                stats.deletes += 1;
                                let outcome = client.delete(node, &key, Some(c)).await;
                                let kind = OpKind::Delete;
                                Some(Op { client: id, key, kind, saw, outcome, at_ms })
                            }
                            None => {
                                // Live versions without a context: never delete without one.
                                stats.reads_failed += 1;
                                None
                            }
                        }
                    } else {
                        if roll >= 30 {
                            range_check(&client, node, &key, &r, &mut rng, &mut stats).await;
                        }
                        let mut content: Vec<&str> = saw.iter().map(String::as_str).collect();
                        content.push(&elem);
                        let ctx = r.context.as_deref();
                        let outcome =
                            write(&client, node, &key, ctx, &content, size, &mut stats).await;
                        let kind = OpKind::Write { elem };
                        Some(Op { client: id, key, kind, saw, outcome, at_ms })
                    }
                }
            }
        };
        ops.extend(op);
    }
    (ops, stats)
}

/// Writes the large content of `elems` (`size` bytes) to `key`, retrying `SlowDown`.
async fn write(
    client: &Client,
    node: &str,
    key: &str,
    context: Option<&str>,
    elems: &[&str],
    size: u64,
    stats: &mut LargeStats,
) -> Outcome {
    let elems: BTreeSet<String> = elems.iter().map(|e| e.to_string()).collect();
    let expected = Expected::new(key, &elems, size);
    stats.writes += 1;
    stats.bytes_written += expected.len();
    let mut pause = SLOWDOWN_PAUSE;
    for attempt in 0..=SLOWDOWN_RETRIES {
        match client.write_bytes(node, key, context, expected.body()).await {
            Ok(outcome) => return outcome,
            Err(slow) => {
                stats.slow_downs += 1;
                if attempt == SLOWDOWN_RETRIES {
                    return slow;
                }
                tokio::time::sleep(pause).await;
                pause *= 2;
            }
        }
    }
    Outcome::Failed
}

/// After a read that found exactly one version: reads a range of it across a chunk boundary
/// (`?sibling=ID`, so a later version cannot answer instead) and checks the bytes.
async fn range_check(
    client: &Client,
    node: &str,
    key: &str,
    r: &Read,
    rng: &mut StdRng,
    stats: &mut LargeStats,
) {
    let ([elems], [len], Some(version)) = (r.live.as_slice(), r.sizes.as_slice(), &r.version)
    else {
        return;
    };
    let expected = Expected::new(key, elems, *len);
    if expected.len() != *len || *len <= MIB {
        return;
    }
    // Around a chunk boundary, or the object's tail.
    let (start, end) = if rng.random_bool(0.75) {
        let boundary = MIB * rng.random_range(1..=(len - 1) / MIB);
        let start = boundary - rng.random_range(1..=64 * 1024);
        (start, (boundary + rng.random_range(1..=64 * 1024)).min(*len))
    } else {
        (len - rng.random_range(1..=(len % MIB).clamp(1, 256 * 1024)), *len)
    };
    match client.range_check(node, key, version, &expected, start..end).await {
        RangeCheck::Verified => stats.ranges_checked += 1,
        RangeCheck::Skipped => stats.ranges_skipped += 1,
        // Counted (with its text) by the client as corrupt.
        RangeCheck::Corrupt => {}
    }
}

/// The large workload's results, for the summary and the run record.
#[derive(Clone, Debug, Default, Serialize)]
pub struct LargeReport {
    /// Keys written.
    pub keys: usize,
    /// Writes sent, and by outcome.
    pub writes: usize,
    /// Acknowledged writes.
    pub acknowledged: usize,
    /// Writes certainly not applied (4xx, `SlowDown` on every attempt, never sent).
    pub failed: usize,
    /// Writes that may or may not have been applied.
    pub indeterminate: usize,
    /// Deletes sent, and acknowledged.
    pub deletes: usize,
    /// Acknowledged deletes.
    pub deletes_acknowledged: usize,
    /// Acknowledged writes whose element is in every node's final view, every version of which
    /// was read and checked byte for byte.
    pub verified: usize,
    /// Acknowledged writes absent from the final views, a delete having seen them.
    pub deleted: usize,
    /// Acknowledged writes lost (the checker's rule, on the large keys alone).
    pub lost: usize,
    /// Final views of large keys that could not be read (corrupt or cut short included).
    pub unreadable: usize,
    /// Versions in the final views (each checked byte for byte).
    pub versions_checked: usize,
    /// Bodies and ranges with wrong, missing or extra bytes, over the whole run.
    pub corrupt: u64,
    /// Bodies cut short by a transport error, over the whole run (tolerated under the faults).
    pub cut_short: u64,
    /// Large bodies read and checked whole, over the whole run, and their bytes.
    pub bodies_checked: u64,
    /// Bytes of the bodies checked.
    pub bytes_checked: u64,
    /// The first corruption messages.
    pub corrupt_examples: Vec<String>,
    /// The clients' counters, summed.
    pub stats: LargeStats,
    /// The nodes' chunk counters at the end (`GET /cluster` `chunks`, summed; each node's count
    /// since its last start): chunks fetched from peers before a merge (repair, hints,
    /// handoff), blobs collected, large requests refused with `SlowDown`.
    pub node_chunks: NodeChunks,
}

/// The nodes' chunk counters (`GET /cluster` `chunks`), summed over the nodes.
#[derive(Clone, Debug, Default, Serialize)]
pub struct NodeChunks {
    /// Chunks fetched from peers before a merge.
    pub fetched: u64,
    /// Blobs deleted by collection (superseded, deleted, orphaned).
    pub blobs_collected: u64,
    /// Large requests refused with `SlowDown`.
    pub slow_downs: u64,
}

impl NodeChunks {
    /// Sums the counters of `nodes`.
    pub async fn of(client: &Client, nodes: &[String]) -> NodeChunks {
        let [fetched, blobs_collected, slow_downs] = crate::wipe::cluster_sums(
            client,
            nodes,
            [&["chunks", "fetched"], &["chunks", "blobs_collected"], &["chunks", "slow_downs"]],
        )
        .await;
        NodeChunks { fetched, blobs_collected, slow_downs }
    }
}

impl LargeReport {
    /// The report of the large keys of `ops` against the final `views`.
    pub fn of(
        ops: &[Op],
        views: &BTreeMap<String, BTreeMap<String, View>>,
        stats: &[LargeStats],
        client: &Client,
    ) -> LargeReport {
        let large: Vec<Op> = ops.iter().filter(|o| is_large_key(&o.key)).cloned().collect();
        let verdict = crate::history::check(&large, views);
        let required = crate::history::required(&large);
        let mut r = LargeReport {
            keys: verdict.keys,
            lost: verdict.lost,
            unreadable: verdict.unreadable,
            ..LargeReport::default()
        };
        for s in stats {
            r.stats.add(s);
        }
        for op in &large {
            match (&op.kind, op.outcome) {
                (OpKind::Write { .. }, o) => {
                    r.writes += 1;
                    match o {
                        Outcome::Ok => r.acknowledged += 1,
                        Outcome::Failed => r.failed += 1,
                        Outcome::Indeterminate => r.indeterminate += 1,
                    }
                }
                (OpKind::Delete, o) => {
                    r.deletes += 1;
                    r.deletes_acknowledged += usize::from(o == Outcome::Ok);
                }
            }
        }
        for op in &large {
            let (OpKind::Write { elem }, Outcome::Ok) = (&op.kind, op.outcome) else { continue };
            let Some(node_views) = views.get(&op.key) else { continue };
            let everywhere = !node_views.is_empty()
                && node_views.values().all(|v| match v {
                    View::Found { live, .. } => live.iter().any(|c| c.contains(elem)),
                    _ => false,
                });
            let must = required.get(&op.key).is_some_and(|m| m.contains(elem));
            if everywhere {
                r.verified += 1;
            } else if !must {
                r.deleted += 1;
            }
        }
        for node_views in views.iter().filter(|(k, _)| is_large_key(k)).map(|(_, v)| v) {
            for v in node_views.values() {
                if let View::Found { live, .. } = v {
                    r.versions_checked += live.len();
                }
            }
        }
        let c = client.body_counters();
        (r.corrupt, r.cut_short, r.bodies_checked, r.bytes_checked) =
            (c.corrupt, c.cut_short, c.large_bodies, c.large_bytes);
        r.corrupt_examples = c.corrupt_examples;
        r
    }

    /// True when nothing acknowledged is missing and no byte read was wrong.
    pub fn passed(&self) -> bool {
        self.lost == 0 && self.corrupt == 0 && self.unreadable == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(xs: &[&str]) -> BTreeSet<String> {
        xs.iter().map(|s| s.to_string()).collect()
    }

    fn check_all(key: &str, body: &[u8], piece: usize) -> Result<Content, String> {
        let mut c = BodyCheck::new(key, Some(body.len() as u64));
        for p in body.chunks(piece) {
            c.push(p)?;
        }
        c.finish()
    }

    #[test]
    fn a_large_body_checks_whole_in_any_pieces() {
        let e = Expected::new("large-1", &set(&["L0.1", "L1.3"]), 3 * MIB + 12_345);
        let body = e.body();
        assert_eq!(body.len() as u64, 3 * MIB + 12_345);
        for piece in [1, 7, 100, 64 * 1024, body.len()] {
            assert_eq!(
                check_all("large-1", &body, piece),
                Ok(Content::Large { elems: set(&["L0.1", "L1.3"]), len: body.len() as u64 }),
                "pieces of {piece}"
            );
        }
        for (p, b) in body.iter().enumerate().step_by(9973) {
            assert_eq!(e.byte_at(p as u64), *b);
        }
    }

    #[test]
    fn wrong_truncated_or_foreign_bytes_are_corrupt() {
        let e = Expected::new("large-0", &set(&["L0.0"]), 2 * MIB + 77);
        let body = e.body();
        // One byte flipped in the third chunk.
        let mut flipped = body.clone();
        flipped[2 * MIB as usize + 5] ^= 1;
        let err = check_all("large-0", &flipped, 4096).unwrap_err();
        assert!(err.contains(&format!("byte {}", 2 * MIB + 5)) && err.contains("chunk 2"), "{err}");
        // A chunk of zeros (a chunk never written).
        let mut zeros = body.clone();
        zeros[MIB as usize..2 * MIB as usize].fill(0);
        assert!(check_all("large-0", &zeros, 65536).unwrap_err().contains("chunk 1"));
        // Truncated, with an honest Content-Length of what was sent.
        let short = &body[..2 * MIB as usize];
        let mut c = BodyCheck::new("large-0", None);
        c.push(short).unwrap();
        assert!(c.finish().unwrap_err().contains("truncated"));
        // Declared shorter than written.
        let mut c = BodyCheck::new("large-0", Some(2 * MIB));
        assert!(c.push(&body[..4096]).unwrap_err().contains("Content-Length"));
        // Too long: with the declared length, or without one.
        let mut long = body.clone();
        long.push(0);
        assert!(check_all("large-0", &long, 1 << 16).unwrap_err().contains("Content-Length"));
        let mut c = BodyCheck::new("large-0", None);
        assert!(c.push(&long).unwrap_err().contains("longer"));
        // Another key's body.
        assert!(check_all("large-9", &body, 1 << 16).unwrap_err().contains("large-0"));
        // A body whose header claims other elements than its filler was made for.
        let other = Expected::new("large-0", &set(&["L0.0", "L1.1"]), 2 * MIB + 77);
        let mut mixed = other.body()[..other.header_len() as usize].to_vec();
        mixed.extend_from_slice(&body[e.header_len() as usize..]);
        mixed.resize(other.len() as usize, 0);
        assert!(check_all("large-0", &mixed, 1 << 16).is_err());
        // Ends inside the header.
        let mut c = BodyCheck::new("large-0", None);
        c.push(&body[..40]).unwrap();
        assert!(c.finish().unwrap_err().contains("header"));
    }

    #[test]
    fn small_bodies_pass_through() {
        assert_eq!(check_all("k", br#"["c1.2"]"#, 3), Ok(Content::Small(br#"["c1.2"]"#.to_vec())));
        assert_eq!(check_all("k", b"", 1), Ok(Content::Small(Vec::new())));
        assert_eq!(check_all("k", b"cairn", 2), Ok(Content::Small(b"cairn".to_vec())));
    }

    #[test]
    fn ranges_compare_at_their_offset() {
        let e = Expected::new("large-2", &set(&["L1.0"]), 4 * MIB + 3);
        let body = e.body();
        let (a, z) = (MIB as usize - 100, MIB as usize + 100);
        assert!(e.compare(a as u64, &body[a..z]).is_ok());
        assert!(e.compare(a as u64 + 1, &body[a..z]).is_err());
        assert!(e.compare(0, &body).is_ok());
    }

    #[test]
    fn sizes_stay_in_range_and_off_chunk_multiples() {
        assert_eq!(parse_size_range("2.5-4.5"), Ok((5 * MIB / 2, 9 * MIB / 2)));
        assert_eq!(parse_size_range("3"), Ok((3 * MIB, 3 * MIB)));
        assert!(parse_size_range("4-2").is_err());
        assert!(parse_size_range("0.1").is_err());
        assert!(parse_size_range("x").is_err());
        let mut rng = StdRng::seed_from_u64(7);
        for _ in 0..1000 {
            let n = pick_size(&mut rng, (2 * MIB, 3 * MIB));
            assert!((2 * MIB..=3 * MIB + 1).contains(&n) && n % MIB != 0, "{n}");
        }
        assert_eq!(pick_size(&mut rng, (3 * MIB, 3 * MIB)) % MIB, 1);
    }

    #[test]
    fn operations_are_shared_between_the_clients() {
        assert_eq!((0..LARGE_CLIENTS).map(|j| share(31, j)).sum::<usize>(), 31);
        assert_eq!((0..LARGE_CLIENTS).map(|j| share(0, j)).sum::<usize>(), 0);
    }
}
