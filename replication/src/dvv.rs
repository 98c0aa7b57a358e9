//! Dotted version vector sets: the value stored for one key.
//!
//! DVV SETS
//! ========
//! After Almeida, Baquero, Gonçalves, Preguiça, Fonte, "Scalable and Accurate Causality Tracking
//! for Eventually Consistent Stores" (DAIS 2014) and Riak's `dvvset` module. A [`SiblingSet`] is
//! a causal history `vv` (a downward-closed [`VersionVector`]) plus the concurrent values still
//! alive, each tagged with the [`Dot`] of the write that created it.
//!
//! - `update(context, value, actor)` is a write coordinated by `actor` whose client had read
//!   `context`. It creates the dot `(actor, max(vv[actor], context[actor]) + 1)`, drops exactly the
//!   siblings whose dot the context covers (the client saw them, so the new value supersedes
//!   them), keeps everything else as a concurrent sibling, and merges `context` into `vv`.
//!   A write with an empty context therefore never removes anything.
//! - `sync(a, b)` merges two replicas' sets: a sibling survives if the other side also holds it or
//!   has never seen its dot (`!other.vv.contains(dot)`); `vv` is the pointwise max. Because a
//!   dot names one value forever, this is the join of a semilattice: commutative, associative and
//!   idempotent, so replicas converge whatever order merges happen in (tested by proptest).
//! - `join()` is `vv`: the causal context handed to clients (as a token, [`crate::context`]).
//!
//! ADD-WINS DELETES
//! ================
//! A delete is a write of a tombstone sibling under the client's context: it removes exactly the
//! siblings that context covers, like any write. What the node *shows* and *keeps* follows the
//! observed-remove set (Shapiro et al., "A comprehensive study of Convergent and Commutative
//! Replicated Data Types", 2011, §3.3.5; the Dynamo paper's shopping cart, where "an add to cart
//! operation can never be lost"):
//! - a read shows only live siblings ([`SiblingSet::live`]); tombstones are shown only when
//!   nothing is live, as "not found" with a context;
//! - a client write ([`SiblingSet::write`]) also removes every tombstone the coordinator holds and,
//!   when live siblings remain, its own tombstone: after a write a set is either all live or one
//!   tombstone.
//!
//! So a delete concurrent with a write loses to the write, and a delete removes only what its
//! client saw. Removing tombstones in `write` is an update with a larger context (the tombstones'
//! dots are already in `vv`; a set with the same history and fewer siblings is above the original
//! in the merge order), so `merge` stays the plain DVV join and convergence is untouched; and it
//! never changes which *live* siblings survive any later merge, because a live sibling's survival
//! depends only on histories and on who holds it. Replicas may still hold a tombstone beside a
//! live sibling (a delete and a write that met only in a merge); reads hide it and the next write
//! removes it.
//!
//! Why dots and not plain per-node version vectors: with one vector per sibling, writes through
//! one coordinator without a fresh context create "false concurrency" and siblings grow without
//! bound (Riak issues riak_kv#1648, riak_cs#882). With DVV sets the number of siblings is bounded
//! by the number of truly concurrent writers (each write removes what its context covered).
//!
//! INVARIANTS (checked on decode, kept by every operation)
//! - every sibling's dot is contained in `vv` (`dot.counter <= vv[dot.actor]`);
//! - dots are distinct and siblings are sorted by dot, so equal sets are equal values and have
//!   equal encodings;
//! - a replica applying a coordinator's new set (the "discard" step of the paper) is just `sync`:
//!   it keeps its own siblings the incoming history has not seen and drops those it has.

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::id::Actor;
use crate::vclock::{Dot, VersionVector};

/// Longest encoded sibling set [`SiblingSet::from_bytes`] accepts (64 MiB): a guard against a
/// corrupt length making the decoder allocate without bound. Object size limits are enforced by
/// the node well below this.
pub const MAX_ENCODED_SET_LEN: usize = 64 << 20;

/// A value tagged with the dot of the write that created it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Dotted<V> {
    /// The write event that created this sibling.
    pub dot: Dot,
    /// The stored value.
    pub value: V,
}

/// What a file sibling stores: its metadata and either bytes or a tombstone.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sibling {
    /// Metadata shown in listings and conflict answers.
    pub meta: Meta,
    /// The content, or the marker of a delete.
    pub body: Body,
}

/// Metadata of one file version.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Meta {
    /// Content length in bytes (0 for a tombstone).
    pub size: u64,
    /// MIME type given at upload (`application/octet-stream` when unknown).
    pub content_type: String,
    /// Checksum of the content, rendered as the HTTP ETag.
    pub etag: String,
    /// Wall-clock time of the write at the coordinator, milliseconds since the Unix epoch.
    /// Used only by `lww` resolution and for display, never for causality.
    pub timestamp_ms: u64,
    /// The original file name of a multipart upload, when there was one.
    pub file_name: Option<String>,
}

/// The content of a sibling.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Body {
    /// Inline file content.
    Bytes(#[serde(with = "serde_bytes")] Vec<u8>),
    /// A delete: kept as a sibling so the delete replicates and wins over what it saw.
    Tombstone,
    /// A large object's manifest: its content is in chunks stored beside the set on the same
    /// replicas (`crate::node::chunks`), named by the object key, the blob id and the index.
    Chunked(Chunked),
}

/// The manifest of a chunked version: which blob holds its content and how it is cut.
///
/// A replica that holds a set with this sibling holds every chunk of the blob: a node merges a
/// manifest only after fetching the chunks it lacks (the executor's job, before the merge).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Chunked {
    /// Random id of the upload, unique per object key: names the chunks.
    pub blob: u64,
    /// Content length in bytes.
    pub size: u64,
    /// Length of every chunk but the last (1 B..=8 MiB).
    pub chunk_size: u32,
}

impl Chunked {
    /// Longest chunk a manifest may declare.
    pub const MAX_CHUNK_SIZE: u32 = 8 << 20;

    /// Number of chunks (0 for an empty blob).
    pub fn chunks(&self) -> u32 {
        if self.chunk_size == 0 {
            return 0;
        }
        u32::try_from(self.size.div_ceil(u64::from(self.chunk_size))).unwrap_or(u32::MAX)
    }

    /// Length of chunk `index` (0 past the end).
    pub fn chunk_len(&self, index: u32) -> u64 {
        let start = u64::from(index) * u64::from(self.chunk_size);
        self.size.saturating_sub(start).min(u64::from(self.chunk_size))
    }

    /// The chunks covering bytes `start..end` (end exclusive), as a range of indexes.
    pub fn chunks_for(&self, start: u64, end: u64) -> std::ops::Range<u32> {
        if self.chunk_size == 0 || start >= end {
            return 0..0;
        }
        let cs = u64::from(self.chunk_size);
        let first = u32::try_from(start / cs).unwrap_or(u32::MAX);
        let last = u32::try_from(end.div_ceil(cs)).unwrap_or(u32::MAX);
        first..last.min(self.chunks())
    }

    /// Whether the manifest is well formed (a chunk size within bounds, a countable number of
    /// chunks).
    pub fn is_valid(&self) -> bool {
        self.chunk_size > 0
            && self.chunk_size <= Self::MAX_CHUNK_SIZE
            && self.size.div_ceil(u64::from(self.chunk_size)) <= u64::from(u32::MAX)
    }
}

impl Sibling {
    /// A file version with inline content.
    pub fn bytes(meta: Meta, content: Vec<u8>) -> Sibling {
        Sibling { meta, body: Body::Bytes(content) }
    }

    /// A delete written at `timestamp_ms` (size 0, no content).
    pub fn tombstone(timestamp_ms: u64) -> Sibling {
        Sibling { meta: Meta { timestamp_ms, ..Meta::default() }, body: Body::Tombstone }
    }

    /// True when this sibling records a delete.
    pub fn is_tombstone(&self) -> bool {
        matches!(self.body, Body::Tombstone)
    }

    /// The manifest, when the content is chunked.
    pub fn chunked(&self) -> Option<&Chunked> {
        match &self.body {
            Body::Chunked(c) => Some(c),
            _ => None,
        }
    }
}

/// A dotted version vector set: causal history plus the live concurrent values.
///
/// See the module documentation for the algorithm and invariants. `V` is the stored value; the
/// node uses the default [`Sibling`], tests use small integers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(
    try_from = "RawSet<V>",
    into = "RawSet<V>",
    bound(serialize = "V: Serialize + Clone", deserialize = "V: Deserialize<'de>")
)]
pub struct SiblingSet<V = Sibling> {
    vv: VersionVector,
    siblings: Vec<Dotted<V>>,
}

/// Unvalidated wire form of a [`SiblingSet`].
#[derive(Serialize, Deserialize)]
struct RawSet<V> {
    vv: VersionVector,
    siblings: Vec<Dotted<V>>,
}

impl<V> TryFrom<RawSet<V>> for SiblingSet<V> {
    type Error = Error;
    fn try_from(raw: RawSet<V>) -> Result<Self> {
        for s in &raw.siblings {
            if !raw.vv.contains(&s.dot) {
                return Err(Error::CorruptSiblingSet(format!(
                    "sibling dot {} is not covered by the set's history",
                    s.dot
                )));
            }
        }
        if raw.siblings.windows(2).any(|w| w[0].dot >= w[1].dot) {
            return Err(Error::CorruptSiblingSet("sibling dots not strictly sorted".into()));
        }
        Ok(SiblingSet { vv: raw.vv, siblings: raw.siblings })
    }
}

impl<V> From<SiblingSet<V>> for RawSet<V> {
    fn from(s: SiblingSet<V>) -> Self {
        RawSet { vv: s.vv, siblings: s.siblings }
    }
}

impl<V> Default for SiblingSet<V> {
    fn default() -> Self {
        SiblingSet { vv: VersionVector::new(), siblings: Vec::new() }
    }
}

impl<V: Clone> SiblingSet<V> {
    /// The empty set (a key never written).
    pub fn new() -> Self {
        Self::default()
    }

    /// The causal context of this set: the version vector to hand to a client.
    pub fn join(&self) -> VersionVector {
        self.vv.clone()
    }

    /// The causal history, borrowed.
    pub fn version_vector(&self) -> &VersionVector {
        &self.vv
    }

    /// A 64-bit digest of the set's clock: its version vector and the dot of every sibling, not
    /// the content (a dot names one value forever). Equal sets have equal digests on every
    /// replica; anti-entropy trees are built from it ([`crate::aae`]).
    pub fn clock_digest(&self) -> u64 {
        clock_digest(self.vv.iter(), self.siblings.iter().map(|s| &s.dot))
    }

    /// The live siblings, sorted by dot.
    pub fn siblings(&self) -> &[Dotted<V>] {
        &self.siblings
    }

    /// The live values, sorted by dot.
    pub fn values(&self) -> impl Iterator<Item = &V> {
        self.siblings.iter().map(|s| &s.value)
    }

    /// Number of live siblings.
    pub fn len(&self) -> usize {
        self.siblings.len()
    }

    /// True when no sibling is live (a key never written; deletes are tombstone siblings).
    pub fn is_empty(&self) -> bool {
        self.siblings.is_empty()
    }

    /// The sibling with this dot, if live.
    pub fn get(&self, dot: &Dot) -> Option<&V> {
        self.siblings.binary_search_by(|s| s.dot.cmp(dot)).ok().map(|i| &self.siblings[i].value)
    }

    /// Keeps only the sibling with the greatest `rank` (the last one among equals, in dot order),
    /// keeping the history: the building block of server-side resolution such as
    /// [`resolve_lww`](SiblingSet::resolve_lww). Lossy by design: the other siblings are dropped
    /// although no client saw them.
    pub fn resolve_by<K: Ord>(&mut self, rank: impl Fn(&Dotted<V>) -> K) {
        let best = self
            .siblings
            .iter()
            .enumerate()
            .max_by(|(_, a), (_, b)| rank(a).cmp(&rank(b)))
            .map(|(i, _)| i);
        if let Some(i) = best {
            let winner = self.siblings.swap_remove(i);
            self.siblings = vec![winner];
        }
    }

    /// How many siblings `update(context, ..)` would leave, without changing anything.
    pub fn count_after_update(&self, context: &VersionVector) -> usize {
        self.siblings.iter().filter(|s| !context.contains(&s.dot)).count() + 1
    }

    /// A write of `value` coordinated by `actor`, whose client last read `context`.
    ///
    /// Removes the siblings `context` covers, adds `value` under a new dot and returns that dot.
    /// The counter saturates at `u64::MAX` (unreachable in practice: one write per nanosecond for
    /// 584 years).
    pub fn update(&mut self, context: &VersionVector, value: V, actor: &Actor) -> Dot {
        self.update_above(context, value, actor, 0)
    }

    /// [`update`](Self::update) whose new counter is also above `floor`: a store that deleted
    /// sets (collected tombstones, dropped partitions) passes the highest counter they held, so
    /// a coordinator that no longer holds a key's history never issues one of its old dots
    /// again (Riak's KV679 in another guise). The counters skipped were part of that history.
    pub fn update_above(
        &mut self,
        context: &VersionVector,
        value: V,
        actor: &Actor,
        floor: u64,
    ) -> Dot {
        let counter = self.vv.get(actor).max(context.get(actor)).max(floor).saturating_add(1);
        let dot = Dot { actor: actor.clone(), counter };
        self.siblings.retain(|s| !context.contains(&s.dot));
        self.vv.merge(context);
        self.vv.witness(actor, counter);
        match self.siblings.binary_search_by(|s| s.dot.cmp(&dot)) {
            Ok(i) => self.siblings[i].value = value,
            Err(i) => self.siblings.insert(i, Dotted { dot: dot.clone(), value }),
        }
        dot
    }

    /// [`update`](Self::update), refused with [`Error::TooManySiblings`] (and nothing changed)
    /// when the result would hold more than `limit` siblings.
    pub fn update_limited(
        &mut self,
        context: &VersionVector,
        value: V,
        actor: &Actor,
        limit: usize,
    ) -> Result<Dot> {
        let count = self.count_after_update(context);
        if count > limit {
            return Err(Error::TooManySiblings { count, limit });
        }
        Ok(self.update(context, value, actor))
    }

    /// Merges `other` into `self` (what a replica does with a set it receives from a coordinator,
    /// a read repair or a hint delivery).
    pub fn merge(&mut self, other: &SiblingSet<V>) {
        let mut out = Vec::with_capacity(self.siblings.len() + other.siblings.len());
        let (mut i, mut j) = (0, 0);
        let (a, b) = (&self.siblings, &other.siblings);
        while i < a.len() || j < b.len() {
            let order = match (a.get(i), b.get(j)) {
                (Some(x), Some(y)) => x.dot.cmp(&y.dot),
                (Some(_), None) => std::cmp::Ordering::Less,
                _ => std::cmp::Ordering::Greater,
            };
            match order {
                std::cmp::Ordering::Equal => {
                    out.push(a[i].clone());
                    i += 1;
                    j += 1;
                }
                std::cmp::Ordering::Less => {
                    if !other.vv.contains(&a[i].dot) {
                        out.push(a[i].clone());
                    }
                    i += 1;
                }
                std::cmp::Ordering::Greater => {
                    if !self.vv.contains(&b[j].dot) {
                        out.push(b[j].clone());
                    }
                    j += 1;
                }
            }
        }
        self.siblings = out;
        self.vv.merge(&other.vv);
    }

    /// The merge of two replicas' sets (commutative, associative, idempotent).
    pub fn sync(a: &SiblingSet<V>, b: &SiblingSet<V>) -> SiblingSet<V> {
        let mut out = a.clone();
        out.merge(b);
        out
    }

    /// True when `self` already contains everything `other` would add: `sync(self, other) ==
    /// self`. A replica for which this is false needs read repair.
    pub fn covers(&self, other: &SiblingSet<V>) -> bool
    where
        V: PartialEq,
    {
        if !self.vv.descends(&other.vv) {
            return false;
        }
        // vv unchanged by the merge; every sibling of `self` survives (other holds it too, or has
        // never seen its dot). Nothing of `other` can be added: its dots are all in other.vv,
        // hence in self.vv.
        self.siblings.iter().all(|s| {
            !other.vv.contains(&s.dot)
                || other.siblings.binary_search_by(|o| o.dot.cmp(&s.dot)).is_ok()
        })
    }
}

impl<V: Clone + Serialize + for<'de> Deserialize<'de>> SiblingSet<V> {
    /// Encodes the set for the engine or the wire (rmp-serde, field names kept so the format can
    /// grow).
    pub fn to_bytes(&self) -> Result<Vec<u8>> {
        rmp_serde::to_vec_named(self).map_err(|e| Error::Encode(e.to_string()))
    }

    /// Decodes bytes from the engine or a peer, checking the invariants. Never panics.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self> {
        if bytes.len() > MAX_ENCODED_SET_LEN {
            return Err(Error::CorruptSiblingSet(format!(
                "{} bytes is over the limit",
                bytes.len()
            )));
        }
        rmp_serde::from_slice(bytes).map_err(|e| Error::CorruptSiblingSet(e.to_string()))
    }
}

impl SiblingSet<Sibling> {
    /// The live siblings (not delete markers), in dot order: what a read shows. A tombstone
    /// concurrent with a live sibling is never shown (see ADD-WINS DELETES).
    pub fn live(&self) -> impl Iterator<Item = &Dotted<Sibling>> {
        self.siblings.iter().filter(|s| !s.value.is_tombstone())
    }

    /// Number of live siblings.
    pub fn live_count(&self) -> usize {
        self.live().count()
    }

    /// True when a read should answer "not found": no siblings, or only tombstones.
    pub fn is_deleted(&self) -> bool {
        self.siblings.iter().all(|s| s.value.is_tombstone())
    }

    /// True when `context` covers at least one live sibling (a delete with it removes something
    /// a reader can see).
    pub fn context_covers_live(&self, context: &VersionVector) -> bool {
        self.live().any(|s| context.contains(&s.dot))
    }

    /// A client write coordinated by `actor` under add-wins deletes: [`update`](Self::update) that
    /// also removes every tombstone held, and the new tombstone itself when live siblings remain
    /// (so afterwards the set is all live, or exactly one tombstone). Refused with
    /// [`Error::TooManySiblings`], nothing changed, when more than `limit` siblings would remain.
    /// Returns the new dot (also when a delete left no tombstone: its dot is in the history).
    pub fn write(
        &mut self,
        context: &VersionVector,
        value: Sibling,
        actor: &Actor,
        limit: usize,
    ) -> Result<Dot> {
        self.write_above(context, value, actor, limit, 0)
    }

    /// [`write`](Self::write) with the new counter above `floor` (see
    /// [`update_above`](Self::update_above)).
    pub fn write_above(
        &mut self,
        context: &VersionVector,
        value: Sibling,
        actor: &Actor,
        limit: usize,
        floor: u64,
    ) -> Result<Dot> {
        let kept_live = self.live().filter(|s| !context.contains(&s.dot)).count();
        let count = kept_live + usize::from(!value.is_tombstone() || kept_live == 0);
        if count > limit {
            return Err(Error::TooManySiblings { count, limit });
        }
        let deleting = value.is_tombstone();
        self.siblings.retain(|s| !s.value.is_tombstone());
        let dot = self.update_above(context, value, actor, floor);
        if deleting && self.siblings.len() > 1 {
            self.siblings.retain(|s| !s.value.is_tombstone());
        }
        Ok(dot)
    }

    /// Last-writer-wins resolution: the sibling with the greatest `timestamp_ms`, ties broken by
    /// the greater dot (actor, then counter). Deterministic on every replica; lossy under
    /// concurrency by design (the `lww` bucket policy).
    pub fn lww(&self) -> Option<&Dotted<Sibling>> {
        self.siblings.iter().max_by(|a, b| {
            (a.value.meta.timestamp_ms, &a.dot).cmp(&(b.value.meta.timestamp_ms, &b.dot))
        })
    }

    /// Collapses the set to its [`lww`](Self::lww) winner, keeping the history. An `lww` bucket
    /// applies this after every update and merge.
    pub fn resolve_lww(&mut self) {
        self.resolve_by(|s| (s.value.meta.timestamp_ms, s.dot.clone()));
    }
}

/// What a listing needs of a stored [`SiblingSet<Sibling>`]: the metadata of its live siblings,
/// decoded from the stored bytes without copying or decoding any content.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SetSummary {
    /// Metadata of each live sibling, in dot order.
    pub live: Vec<Meta>,
    /// Number of tombstones.
    pub tombstones: usize,
    /// The newest tombstone's `timestamp_ms` (the time of its delete), if any.
    pub newest_tombstone_ms: Option<u64>,
}

/// The digest behind [`SiblingSet::clock_digest`], from the history's entries (in actor order)
/// and the siblings' dots (in dot order).
fn clock_digest<'a>(
    vv: impl Iterator<Item = (&'a Actor, u64)>,
    dots: impl Iterator<Item = &'a Dot>,
) -> u64 {
    fn actor(h: &mut xxhash_rust::xxh3::Xxh3, a: &Actor, counter: u64) {
        h.update(a.node().as_str().as_bytes());
        h.update(&[0]);
        h.update(&a.epoch().to_le_bytes());
        h.update(&counter.to_le_bytes());
    }
    let mut h = xxhash_rust::xxh3::Xxh3::new();
    for (a, c) in vv {
        actor(&mut h, a, c);
    }
    h.update(&[0xff]);
    for d in dots {
        actor(&mut h, &d.actor, d.counter);
    }
    h.digest()
}

/// [`SiblingSet::clock_digest`] of an encoded set, decoding only its clock (the content is
/// skipped, never copied). Never panics.
pub fn clock_digest_of_bytes(bytes: &[u8]) -> Result<u64> {
    if bytes.len() > MAX_ENCODED_SET_LEN {
        return Err(Error::CorruptSiblingSet(format!("{} bytes is over the limit", bytes.len())));
    }
    let raw: summary::RawClock =
        rmp_serde::from_slice(bytes).map_err(|e| Error::CorruptSiblingSet(e.to_string()))?;
    Ok(clock_digest(raw.vv.iter(), raw.siblings.iter().map(|s| &s.dot)))
}

/// The version vector of an encoded set, decoding only its clock (the content is skipped).
pub fn version_vector_of_bytes(bytes: &[u8]) -> Result<VersionVector> {
    if bytes.len() > MAX_ENCODED_SET_LEN {
        return Err(Error::CorruptSiblingSet(format!("{} bytes is over the limit", bytes.len())));
    }
    let raw: summary::RawClock =
        rmp_serde::from_slice(bytes).map_err(|e| Error::CorruptSiblingSet(e.to_string()))?;
    Ok(raw.vv)
}

/// Borrowing mirrors of the stored types: the same serde shape, with the content and the
/// histories skipped (`IgnoredAny` walks over a msgpack `bin` without allocating).
mod summary {
    use serde::Deserialize;
    use serde::de::IgnoredAny;

    use super::Meta;

    #[derive(Deserialize)]
    pub(super) struct RawSummary {
        #[serde(rename = "vv")]
        _vv: IgnoredAny,
        pub(super) siblings: Vec<DottedView>,
    }

    #[derive(Deserialize)]
    pub(super) struct DottedView {
        #[serde(rename = "dot")]
        _dot: IgnoredAny,
        pub(super) value: SiblingView,
    }

    #[derive(Deserialize)]
    pub(super) struct SiblingView {
        pub(super) meta: Meta,
        pub(super) body: BodyView,
    }

    /// A stored set's clock: its history and its dots, the values skipped.
    #[derive(Deserialize)]
    pub(super) struct RawClock {
        pub(super) vv: crate::vclock::VersionVector,
        pub(super) siblings: Vec<DotView>,
    }

    #[derive(Deserialize)]
    pub(super) struct DotView {
        pub(super) dot: crate::vclock::Dot,
        #[serde(rename = "value")]
        _value: IgnoredAny,
    }

    /// Same variants, same order as [`super::Body`].
    #[derive(Deserialize)]
    pub(super) enum BodyView {
        Bytes(IgnoredAny),
        Tombstone,
    }
}

impl SetSummary {
    /// Decodes the summary of an encoded `SiblingSet<Sibling>` (named or compact rmp-serde
    /// encoding). Never panics; the set's invariants are not checked (nothing here relies on them).
    pub fn from_bytes(bytes: &[u8]) -> Result<SetSummary> {
        if bytes.len() > MAX_ENCODED_SET_LEN {
            return Err(Error::CorruptSiblingSet(format!(
                "{} bytes is over the limit",
                bytes.len()
            )));
        }
        let raw: summary::RawSummary =
            rmp_serde::from_slice(bytes).map_err(|e| Error::CorruptSiblingSet(e.to_string()))?;
        let mut out = SetSummary::default();
        for s in raw.siblings {
            match s.value.body {
                summary::BodyView::Bytes(_) => out.live.push(s.value.meta),
                summary::BodyView::Tombstone => {
                    out.tombstones += 1;
                    let t = s.value.meta.timestamp_ms;
                    out.newest_tombstone_ms = Some(out.newest_tombstone_ms.map_or(t, |n| n.max(t)));
                }
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::id::NodeId;

    fn actor(n: &str) -> Actor {
        Actor::new(NodeId::new(n).unwrap(), 1)
    }

    fn file(ts: u64, body: &[u8]) -> Sibling {
        Sibling {
            meta: Meta { size: body.len() as u64, timestamp_ms: ts, ..Meta::default() },
            body: Body::Bytes(body.to_vec()),
        }
    }

    #[test]
    fn context_decides_what_a_write_replaces() {
        let (a, b) = (actor("a"), actor("b"));
        let mut s = SiblingSet::new();
        s.update(&VersionVector::new(), 1, &a);
        let ctx1 = s.join();
        // Two clients write without seeing each other: both kept.
        s.update(&VersionVector::new(), 2, &b);
        assert_eq!(s.values().copied().collect::<Vec<_>>(), vec![1, 2]);
        // A write with the first context replaces only value 1.
        s.update(&ctx1, 3, &a);
        let mut vals: Vec<i32> = s.values().copied().collect();
        vals.sort();
        assert_eq!(vals, vec![2, 3]);
        // A write with the full context leaves one value.
        let all = s.join();
        s.update(&all, 4, &b);
        assert_eq!(s.values().copied().collect::<Vec<_>>(), vec![4]);
    }

    #[test]
    fn replica_keeps_its_own_unseen_sibling_on_sync() {
        let (a, b) = (actor("a"), actor("b"));
        let mut base = SiblingSet::new();
        base.update(&VersionVector::new(), 1, &a);
        let mut r1 = base.clone();
        let mut r2 = base.clone();
        r1.update(&base.join(), 2, &a); // supersedes 1
        r2.update(&VersionVector::new(), 3, &b); // concurrent with everything
        let m = SiblingSet::sync(&r1, &r2);
        assert_eq!(m.values().copied().collect::<Vec<_>>(), vec![2, 3]);
        assert!(m.covers(&r1) && m.covers(&r2));
        assert!(!r1.covers(&m));
    }

    #[test]
    fn a_coordinator_that_lost_its_set_never_reuses_a_dot() {
        // Replica r2 holds a's write (a,1..=3). a lost the key (same epoch, e.g. a restored
        // backup) and coordinates a write whose client read r2: the new dot must be above 3, or
        // r2 would treat the new write as already seen and drop it (Riak KV679).
        let a = actor("a");
        let mut r2 = SiblingSet::new();
        for v in 0..3 {
            r2.update(&r2.join(), v, &a);
        }
        let mut a_local = SiblingSet::new();
        let dot = a_local.update(&r2.join(), 42, &a);
        assert_eq!(dot.counter, 4);
        r2.merge(&a_local);
        assert_eq!(r2.values().copied().collect::<Vec<_>>(), vec![42]);
    }

    #[test]
    fn lww_picks_timestamp_then_dot() {
        let (a, b) = (actor("a"), actor("b"));
        let mut s = SiblingSet::new();
        s.update(&VersionVector::new(), file(10, b"x"), &b);
        s.update(&VersionVector::new(), file(10, b"y"), &a);
        s.update(&VersionVector::new(), file(5, b"z"), &b);
        // Timestamps tie at 10: the greater dot (actor b > a) wins.
        assert_eq!(s.lww().unwrap().value.body, Body::Bytes(b"x".to_vec()));
        s.resolve_lww();
        assert_eq!(s.len(), 1);
    }

    fn contents(s: &SiblingSet<Sibling>) -> Vec<Vec<u8>> {
        s.live()
            .map(|d| match &d.value.body {
                Body::Bytes(b) => b.clone(),
                Body::Tombstone | Body::Chunked(_) => Vec::new(),
            })
            .collect()
    }

    #[test]
    fn tombstones() {
        let a = actor("a");
        let mut s: SiblingSet<Sibling> = SiblingSet::new();
        assert!(s.is_deleted());
        s.write(&VersionVector::new(), file(1, b"x"), &a, 8).unwrap();
        assert!(!s.is_deleted());
        s.write(&s.join(), Sibling::tombstone(2), &a, 8).unwrap();
        assert!(s.is_deleted() && s.len() == 1 && s.live_count() == 0);
    }

    #[test]
    fn a_write_after_a_delete_leaves_no_marker() {
        let a = actor("a");
        let mut s: SiblingSet<Sibling> = SiblingSet::new();
        s.write(&VersionVector::new(), file(1, b"x"), &a, 8).unwrap();
        s.write(&s.join(), Sibling::tombstone(2), &a, 8).unwrap();
        // Re-created without a context (a multipart upload cannot carry one): one live version.
        s.write(&VersionVector::new(), file(3, b"y"), &a, 8).unwrap();
        assert_eq!(s.len(), 1);
        assert_eq!(contents(&s), vec![b"y".to_vec()]);
    }

    #[test]
    fn a_delete_concurrent_with_a_write_loses_to_it() {
        // Replica 1 deletes what it read (x); replica 2 concurrently writes y over x. After the
        // merge, y is the only thing a read shows; the context still covers the tombstone, and
        // the next write removes it from the set.
        let (a, b) = (actor("a"), actor("b"));
        let mut base: SiblingSet<Sibling> = SiblingSet::new();
        base.write(&VersionVector::new(), file(1, b"x"), &a, 8).unwrap();
        let ctx = base.join();
        let (mut r1, mut r2) = (base.clone(), base.clone());
        r1.write(&ctx, Sibling::tombstone(2), &a, 8).unwrap();
        r2.write(&ctx, file(3, b"y"), &b, 8).unwrap();
        let mut m = SiblingSet::sync(&r1, &r2);
        assert_eq!(m.len(), 2, "the merge keeps both: merge is the plain DVV join");
        assert_eq!(contents(&m), vec![b"y".to_vec()]);
        assert!(!m.is_deleted());
        m.write(&VersionVector::new(), file(4, b"z"), &a, 8).unwrap();
        assert_eq!(m.len(), 2);
        assert_eq!(m.live_count(), 2, "the tombstone is gone, y and z are concurrent");
    }

    #[test]
    fn a_delete_removes_only_what_its_context_covers() {
        let (a, b) = (actor("a"), actor("b"));
        let mut s: SiblingSet<Sibling> = SiblingSet::new();
        s.write(&VersionVector::new(), file(1, b"x"), &a, 8).unwrap();
        let saw_x = s.join();
        s.write(&VersionVector::new(), file(2, b"y"), &b, 8).unwrap();
        assert!(s.context_covers_live(&saw_x));
        s.write(&saw_x, Sibling::tombstone(3), &a, 8).unwrap();
        assert_eq!(s.len(), 1, "y stays; no marker beside it");
        assert_eq!(contents(&s), vec![b"y".to_vec()]);
        assert!(!s.context_covers_live(&saw_x));
    }

    #[test]
    fn tombstones_do_not_count_against_the_sibling_limit() {
        let (a, b) = (actor("a"), actor("b"));
        let mut r1: SiblingSet<Sibling> = SiblingSet::new();
        r1.write(&VersionVector::new(), file(1, b"x"), &a, 1).unwrap();
        let mut r2 = r1.clone();
        r1.write(&r1.join(), Sibling::tombstone(2), &a, 1).unwrap();
        r2.write(&VersionVector::new(), file(3, b"y"), &b, 2).unwrap();
        let mut m = SiblingSet::sync(&r1, &r2);
        assert_eq!((m.len(), m.live_count()), (2, 1));
        // One live version, one tombstone: a blind write makes two live versions, within 2.
        m.write(&VersionVector::new(), file(4, b"z"), &a, 2).unwrap();
        assert_eq!((m.len(), m.live_count()), (2, 2));
        let err = m.write(&VersionVector::new(), file(5, b"w"), &a, 2).unwrap_err();
        assert_eq!(err, Error::TooManySiblings { count: 3, limit: 2 });
    }

    #[test]
    fn summaries_skip_content_in_both_encodings() {
        let (a, b) = (actor("a"), actor("b"));
        let mut r1: SiblingSet<Sibling> = SiblingSet::new();
        r1.write(&VersionVector::new(), file(7, &[9; 4096]), &a, 8).unwrap();
        let mut r2 = r1.clone();
        r1.write(&r1.join(), Sibling::tombstone(8), &a, 8).unwrap();
        r2.write(&VersionVector::new(), file(9, b"hello"), &b, 8).unwrap();
        let mut r3: SiblingSet<Sibling> = SiblingSet::new();
        r3.write(&VersionVector::new(), file(10, &[1; 8192]), &actor("c"), 8).unwrap();
        let mut m = SiblingSet::sync(&r1, &r2);
        m.merge(&r3);
        for bytes in [rmp_serde::to_vec(&m).unwrap(), m.to_bytes().unwrap()] {
            let sum = SetSummary::from_bytes(&bytes).unwrap();
            assert_eq!(sum.tombstones, 1);
            let sizes: Vec<u64> = sum.live.iter().map(|m| m.size).collect();
            assert_eq!(sizes, vec![5, 8192]);
            assert_eq!(sum.live[0].timestamp_ms, 9);
            for cut in 0..bytes.len() {
                assert!(
                    SetSummary::from_bytes(&bytes[..cut]).is_err(),
                    "cut {cut} of {}",
                    bytes.len()
                );
            }
        }
    }

    #[test]
    fn clock_digests_match_from_bytes_and_tell_sets_apart() {
        let (a, b) = (actor("a"), actor("b"));
        let mut r1: SiblingSet<Sibling> = SiblingSet::new();
        r1.write(&VersionVector::new(), file(7, &[9; 4096]), &a, 8).unwrap();
        let mut r2 = r1.clone();
        r2.write(&VersionVector::new(), file(9, b"hello"), &b, 8).unwrap();
        let mut r3 = r1.clone();
        r3.write(&r1.join(), Sibling::tombstone(8), &a, 8).unwrap();
        let m = SiblingSet::sync(&r2, &r3);
        let sets = [SiblingSet::new(), r1, r2, r3, m];
        for (i, s) in sets.iter().enumerate() {
            for bytes in [rmp_serde::to_vec(s).unwrap(), s.to_bytes().unwrap()] {
                assert_eq!(clock_digest_of_bytes(&bytes).unwrap(), s.clock_digest(), "set {i}");
                for cut in 0..bytes.len() {
                    assert!(clock_digest_of_bytes(&bytes[..cut]).is_err());
                }
            }
            for (j, t) in sets.iter().enumerate() {
                assert_eq!(s.clock_digest() == t.clock_digest(), i == j, "sets {i} and {j}");
            }
        }
    }

    #[test]
    fn sibling_limit_refuses_without_changing() {
        let a = actor("a");
        let mut s = SiblingSet::new();
        for v in 0..3 {
            s.update_limited(&VersionVector::new(), v, &a, 3).unwrap();
        }
        let before = s.clone();
        let err = s.update_limited(&VersionVector::new(), 9, &a, 3).unwrap_err();
        assert_eq!(err, Error::TooManySiblings { count: 4, limit: 3 });
        assert_eq!(s, before);
        // A resolving write is still accepted.
        s.update_limited(&s.join(), 9, &a, 3).unwrap();
        assert_eq!(s.len(), 1);
    }

    #[test]
    fn decode_checks_invariants() {
        let a = actor("a");
        let mut s = SiblingSet::new();
        s.update(&VersionVector::new(), file(1, b"hello"), &a);
        let bytes = s.to_bytes().unwrap();
        assert_eq!(SiblingSet::<Sibling>::from_bytes(&bytes).unwrap(), s);
        // A sibling whose dot is outside the history is rejected.
        let raw = RawSet { vv: VersionVector::new(), siblings: s.siblings().to_vec() };
        let bad = rmp_serde::to_vec_named(&raw).unwrap();
        assert!(matches!(
            SiblingSet::<Sibling>::from_bytes(&bad),
            Err(Error::CorruptSiblingSet(_))
        ));
        for cut in 0..bytes.len() {
            assert!(SiblingSet::<Sibling>::from_bytes(&bytes[..cut]).is_err());
        }
    }
}
