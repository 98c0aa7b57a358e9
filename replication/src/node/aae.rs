//! Active anti-entropy: exchanging hash trees with the other owners of each partition.
//!
//! EXCHANGE
//! ========
//! Hinted handoff and read repair only carry the writes that someone missed *and* someone
//! remembers or reads; a replica that lost its disk, or a hint lost with a fallback, leaves cold
//! keys under-replicated for ever. So every node, every `--anti-entropy-interval` (spread over
//! the pairs of a partition it owns and another owner of it, one exchange at a time, with ±25%
//! jitter), compares each partition it owns with each of its other owners — so any two owners
//! compare every partition they share at least once per interval:
//! 1. both sides' branch hashes ([`crate::aae::BRANCHES`] of them; equal: done, in sync);
//! 2. the segment hashes of the differing branches;
//! 3. the (key, clock digest) lists of the differing segments, [`SEGMENTS_PER_ROUND`] at a time;
//! 4. each differing key is repaired both ways in batches of [`REPAIR_BATCH_KEYS`]: the node
//!    reads its own sets of the keys it holds and sends them in a `Repair`, whose receiver
//!    merges them and answers with its (merged) sets of the keys it holds, which the node merges
//!    in turn. Merges are DVV joins, never overwrites: a repair racing a write loses nothing, and
//!    repeating one changes nothing.
//!
//! An exchange that repaired [`CATCH_UP_KEYS`] keys or more starts the next one at once instead
//! of after the spacing, so a node catching up (a replaced disk) is limited by the transfer
//! budget, not by the interval.
//!
//! Repairs are paced by `--handoff-rate`, the same node-wide budget partition sync uses, so
//! anti-entropy never takes more disk and network than a membership change would. Exchanges pause
//! while a membership change is in progress (partition sync moves the data then, and the owner
//! sets are in flux); the partitions a node gains are exchanged once the change completes.
//! An exchange that fails (a peer down, a timeout, a store error) is dropped and retried in a
//! later pass; a write in flight during an exchange may show as a difference and be "repaired"
//! early, which is harmless (the merge is idempotent).
//!
//! Each partition's last completed exchange is kept for `/cluster`; counters go to [`Stats`].

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;

use super::{Millis, MsgCont, NodeCore, SendError, StoreCont, Timer};
use crate::aae::{differing, differing_keys, differing_segments};
use crate::dvv::SiblingSet;
use crate::error::Result;
use crate::id::NodeId;
use crate::node::keys::ObjectKey;
use crate::node::messages::{Request, Response};
use crate::node::store::{StoreOp, StoreResult};

/// Default interval in which every owned partition is exchanged once, in ms.
pub const DEFAULT_ANTI_ENTROPY_INTERVAL_MS: Millis = 60_000;
/// Most segments whose key lists one round asks for.
pub const SEGMENTS_PER_ROUND: usize = 512;
/// An exchange that repaired at least this many keys starts the next one at once (a node
/// catching up); fewer are writes in flight or a stray miss, and the spacing holds.
pub const CATCH_UP_KEYS: u64 = 16;
/// Most keys one repair batch carries each way.
pub const REPAIR_BATCH_KEYS: usize = 256;

/// What the node reports about its anti-entropy (`/cluster`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AaeStatus {
    /// The interval, in ms (0: anti-entropy is off).
    pub interval_ms: Millis,
    /// Partitions this node owns (the ones it exchanges).
    pub partitions_owned: usize,
    /// Of those, the ones exchanged within the last two intervals.
    pub partitions_recent: usize,
    /// For each owned partition exchanged since start: how long ago its last exchange completed,
    /// in ms.
    pub last_exchange_age_ms: BTreeMap<u32, Millis>,
    /// The exchange running: (partition, peer).
    pub running: Option<(u32, String)>,
}

/// Which answers an exchange step waits for.
#[derive(Debug, Default)]
struct Pair<T> {
    ours: Option<T>,
    theirs: Option<T>,
}

impl<T> Pair<T> {
    fn both(&mut self) -> Option<(T, T)> {
        if self.ours.is_some() && self.theirs.is_some() {
            Some((self.ours.take()?, self.theirs.take()?))
        } else {
            None
        }
    }
}

/// The step of an exchange in progress.
#[derive(Debug)]
enum Step {
    /// Comparing branch hashes.
    Branches(Pair<Vec<u64>>),
    /// Comparing the segments of these branches.
    Segments(Vec<u16>, Pair<Vec<u64>>),
    /// Comparing the key lists of some segments.
    Keys(Pair<Vec<(ObjectKey, u64)>>),
    /// A repair batch: reading our sets of the keys we hold.
    Reading,
    /// A repair batch: waiting for the peer's merge and its sets.
    Sending,
    /// A repair batch: merging the peer's sets here.
    Merging,
    /// Waiting for the transfer budget.
    Paced,
}

/// One exchange in progress.
#[derive(Debug)]
struct Exchange {
    id: u64,
    partition: u32,
    peer: NodeId,
    version: u64,
    step: Step,
    /// Differing segments whose keys are still to compare.
    segments: VecDeque<u16>,
    /// Differing keys still to repair: (key, we hold it, the peer holds it).
    keys: VecDeque<(ObjectKey, bool, bool)>,
    /// Keys the peer must send back in the batch in flight.
    want: Vec<ObjectKey>,
    /// Bytes sent in the batch in flight.
    sent_bytes: u64,
    /// Keys repaired so far.
    repaired: u64,
    in_sync: bool,
}

/// The node's anti-entropy bookkeeping.
#[derive(Debug, Default)]
pub(super) struct AaeCore {
    /// The generation of the timer armed last (0: never armed): a timer of an older generation
    /// is stale and ignored, so that scheduling an early exchange never doubles the chain.
    generation: u64,
    /// Rotates through the owned partitions.
    cursor: u64,
    /// The (partition, other owner) pairs of the current partition still to exchange.
    queue: VecDeque<(u32, NodeId)>,
    exchange: Option<Exchange>,
    /// The owned partitions, for a layout version.
    owned: Option<(u64, Arc<Vec<u32>>)>,
    /// When each partition's last exchange completed.
    last: BTreeMap<u32, Millis>,
}

impl NodeCore {
    /// Arms the anti-entropy timer (at start, and whenever it may have lapsed).
    pub(super) fn arm_anti_entropy(&mut self) {
        let interval = self.config.anti_entropy_interval_ms;
        if interval == 0 || self.aae.generation > 0 {
            return;
        }
        // The first exchange comes after a random part of one spacing, so nodes started together
        // do not exchange in lockstep.
        let spacing = self.aae_spacing();
        let at = self.now + 1 + self.rng.below(spacing as usize) as u64;
        self.aae_schedule(at);
    }

    /// Schedules the next exchange start at `at`, superseding the one scheduled before.
    fn aae_schedule(&mut self, at: Millis) {
        self.aae.generation += 1;
        self.timer(at.max(self.now + 1), Timer::AntiEntropy(self.aae.generation));
    }

    /// Time between exchange starts: the interval spread over the (owned partition, other
    /// owner) pairs.
    fn aae_spacing(&mut self) -> Millis {
        let owned = self.owned_partitions().len().max(1) as u64;
        let others = self.cluster.placement.as_ref().map_or(1, |p| p.ring().n().saturating_sub(1));
        (self.config.anti_entropy_interval_ms / (owned * others.max(1) as u64)).max(1)
    }

    /// The partitions this node owns in the current layout (none while a change runs).
    pub(super) fn owned_partitions(&mut self) -> Arc<Vec<u32>> {
        let Some(p) = &self.cluster.placement else { return Arc::new(Vec::new()) };
        if p.layout().transition.is_some() {
            return Arc::new(Vec::new());
        }
        if let Some((v, owned)) = &self.aae.owned
            && *v == p.version()
        {
            return Arc::clone(owned);
        }
        let me = &self.config.id;
        let owned: Vec<u32> = (0..p.ring().partitions()).filter(|&q| p.owns(me, q)).collect();
        let owned = Arc::new(owned);
        self.aae.owned = Some((p.version(), Arc::clone(&owned)));
        owned
    }

    /// The anti-entropy timer fired: start the next exchange (unless one still runs).
    pub(super) fn aae_tick(&mut self, generation: u64) {
        if generation != self.aae.generation || self.config.anti_entropy_interval_ms == 0 {
            return;
        }
        let spacing = self.aae_spacing();
        // ±25% jitter.
        let jitter = self.rng.below((spacing / 2).max(1) as usize) as u64;
        let next = self.now + (spacing - spacing / 4) + jitter;
        self.aae_schedule(next);
        if self.aae.exchange.is_none() {
            self.start_exchange();
        }
    }

    fn start_exchange(&mut self) {
        let owned = self.owned_partitions();
        if owned.is_empty() || self.cluster.sync.is_some() {
            return;
        }
        let Some(p) = &self.cluster.placement else { return };
        // The next (partition, other owner) pair: every owned partition with each of its other
        // owners once per pass, so any two owners compare every partition within an interval.
        if self.aae.queue.is_empty() {
            let i = self.aae.cursor;
            self.aae.cursor += 1;
            let partition = owned[(i % owned.len() as u64) as usize];
            let me = &self.config.id;
            let peers = p.ring().preference_list(partition).iter().filter(|n| *n != me);
            self.aae.queue.extend(peers.map(|n| (partition, n.clone())));
        }
        let Some((partition, peer)) = self.aae.queue.pop_front() else { return };
        if !self.up.contains(&peer) {
            return;
        }
        let version = p.version();
        let q = p.ring().partitions();
        let id = self.fresh_id();
        self.aae.exchange = Some(Exchange {
            id,
            partition,
            peer: peer.clone(),
            version,
            step: Step::Branches(Pair::default()),
            segments: VecDeque::new(),
            keys: VecDeque::new(),
            want: Vec::new(),
            sent_bytes: 0,
            repaired: 0,
            in_sync: false,
        });
        self.store(StoreOp::TreeHashes { partition, branches: Vec::new() }, StoreCont::Aae { id });
        let request = Request::Tree { partitions_total: q, partition, branches: Vec::new() };
        self.send(peer, Arc::new(request), MsgCont::Aae { id });
    }

    /// The running exchange if `id` is still it and the layout has not changed under it.
    fn current_exchange(&mut self, id: u64) -> Option<&mut Exchange> {
        let version = self.layout_version();
        let changing = self.cluster.placement.as_ref().is_some_and(|p| p.layout().changing());
        match &self.aae.exchange {
            Some(e) if e.id == id && (e.version != version || changing) => {
                self.finish_exchange(false);
                None
            }
            _ => self.aae.exchange.as_mut().filter(|e| e.id == id),
        }
    }

    /// A peer's answer in an exchange.
    pub(super) fn aae_reply(&mut self, id: u64, result: std::result::Result<Response, SendError>) {
        let Some(ex) = self.current_exchange(id) else { return };
        let ok = match (&mut ex.step, result) {
            (Step::Branches(pair), Ok(Response::Hashes { hashes }))
            | (Step::Segments(_, pair), Ok(Response::Hashes { hashes })) => {
                pair.theirs = Some(hashes);
                true
            }
            (Step::Keys(pair), Ok(Response::Digests { entries })) => {
                pair.theirs = Some(entries);
                true
            }
            (Step::Sending, Ok(Response::Page { entries, .. })) => {
                return self.aae_pulled(id, entries);
            }
            (_, other) => {
                let why = match other {
                    Ok(r) => super::describe(&r),
                    Err(e) => e.to_string(),
                };
                tracing::debug!(partition = ex.partition, peer = %ex.peer, why, "anti-entropy exchange failed");
                false
            }
        };
        if ok { self.aae_advance(id) } else { self.finish_exchange(false) }
    }

    /// A local store result in an exchange.
    pub(super) fn aae_stored(&mut self, id: u64, result: Result<StoreResult>) {
        let Some(ex) = self.current_exchange(id) else { return };
        match (&mut ex.step, result) {
            (Step::Branches(pair), Ok(StoreResult::Hashes(h)))
            | (Step::Segments(_, pair), Ok(StoreResult::Hashes(h))) => pair.ours = Some(h),
            (Step::Keys(pair), Ok(StoreResult::Digests(d))) => pair.ours = Some(d),
            // Our sets for the batch, read: send them, asking for the peer's.
            (Step::Reading, Ok(StoreResult::Page(page))) => {
                let entries: Vec<(ObjectKey, SiblingSet)> = page.entries;
                ex.sent_bytes = entries.iter().map(|(k, s)| super::cluster::set_bytes(k, s)).sum();
                ex.step = Step::Sending;
                let want = std::mem::take(&mut ex.want);
                let peer = ex.peer.clone();
                let request = Request::Repair { entries, want };
                self.send(peer, Arc::new(request), MsgCont::Aae { id });
                return;
            }
            // The peer's sets, merged here: the batch is done.
            (Step::Merging, Ok(StoreResult::Done)) => return self.aae_batch_done(id),
            (_, Ok(_)) => return self.finish_exchange(false),
            (_, Err(e)) => {
                tracing::warn!(error = %e, "anti-entropy: a local store operation failed");
                return self.finish_exchange(false);
            }
        }
        self.aae_advance(id);
    }

    /// Moves an exchange on once both sides of its step answered.
    fn aae_advance(&mut self, id: u64) {
        let offset_bug = self.mutated(super::Mutant::AaeSegmentOffset);
        let Some(ex) = self.current_exchange(id) else { return };
        let partition = ex.partition;
        match &mut ex.step {
            Step::Branches(pair) => {
                let Some((ours, theirs)) = pair.both() else { return };
                let diff = differing(&ours, &theirs);
                if diff.is_empty() {
                    ex.in_sync = true;
                    return self.finish_exchange(true);
                }
                ex.step = Step::Segments(diff.clone(), Pair::default());
                self.ask_both(id, partition, AskFor::Segments(diff));
            }
            Step::Segments(branches, pair) => {
                let Some((ours, theirs)) = pair.both() else { return };
                ex.segments = if offset_bug {
                    differing(&ours, &theirs).into()
                } else {
                    differing_segments(branches, &ours, &theirs).into()
                };
                self.next_keys_round(id);
            }
            Step::Keys(pair) => {
                let Some((mut ours, mut theirs)) = pair.both() else { return };
                ours.sort_unstable_by(|a, b| a.0.cmp(&b.0));
                theirs.sort_unstable_by(|a, b| a.0.cmp(&b.0));
                ex.keys.extend(differing_keys(&ours, &theirs));
                self.next_repair_batch(id);
            }
            Step::Reading | Step::Sending | Step::Merging | Step::Paced => {}
        }
    }

    fn next_keys_round(&mut self, id: u64) {
        let Some(ex) = self.current_exchange(id) else { return };
        if ex.segments.is_empty() {
            return self.finish_exchange(true);
        }
        let n = ex.segments.len().min(SEGMENTS_PER_ROUND);
        let segments: Vec<u16> = ex.segments.drain(..n).collect();
        ex.step = Step::Keys(Pair::default());
        let partition = ex.partition;
        self.ask_both(id, partition, AskFor::Keys(segments));
    }

    fn ask_both(&mut self, id: u64, partition: u32, what: AskFor) {
        let Some(ex) = self.aae.exchange.as_ref() else { return };
        let peer = ex.peer.clone();
        let q = self.cluster.placement.as_ref().map_or(0, |p| p.ring().partitions());
        let (op, request) = match what {
            AskFor::Segments(branches) => (
                StoreOp::TreeHashes { partition, branches: branches.clone() },
                Request::Tree { partitions_total: q, partition, branches },
            ),
            AskFor::Keys(segments) => (
                StoreOp::SegmentKeys { partition, segments: segments.clone() },
                Request::SegmentKeys { partitions_total: q, partition, segments },
            ),
        };
        self.store(op, StoreCont::Aae { id });
        self.send(peer, Arc::new(request), MsgCont::Aae { id });
    }

    /// Repairs the next batch of differing keys, or compares the next segments.
    fn next_repair_batch(&mut self, id: u64) {
        if self.paced_until > self.now {
            let at = self.paced_until;
            if let Some(ex) = self.current_exchange(id) {
                ex.step = Step::Paced;
            }
            return self.timer(at, Timer::AaePump);
        }
        let Some(ex) = self.current_exchange(id) else { return };
        if ex.keys.is_empty() {
            return self.next_keys_round(id);
        }
        let n = ex.keys.len().min(REPAIR_BATCH_KEYS);
        let mut push = Vec::with_capacity(n);
        let mut want = Vec::with_capacity(n);
        for (key, ours, theirs) in ex.keys.drain(..n) {
            if theirs {
                want.push(key.clone());
            }
            if ours {
                push.push(key);
            }
        }
        ex.repaired += n as u64;
        ex.step = Step::Reading;
        ex.want = want;
        ex.sent_bytes = 0;
        // Read our sets of the keys we hold (nothing merged here yet).
        self.store(StoreOp::Repair { entries: Vec::new(), want: push }, StoreCont::Aae { id });
    }

    /// The transfer budget allows the next batch.
    pub(super) fn aae_pump(&mut self) {
        let Some(ex) = &self.aae.exchange else { return };
        if matches!(ex.step, Step::Paced) {
            let id = ex.id;
            self.next_repair_batch(id);
        }
    }

    /// The peer merged our sets and sent its own: merge them here.
    fn aae_pulled(&mut self, id: u64, entries: Vec<(ObjectKey, SiblingSet)>) {
        let bytes: u64 = entries.iter().map(|(k, s)| super::cluster::set_bytes(k, s)).sum();
        let Some(ex) = self.current_exchange(id) else { return };
        ex.sent_bytes += bytes;
        if entries.is_empty() {
            return self.aae_batch_done(id);
        }
        ex.step = Step::Merging;
        self.store(StoreOp::ApplyBatch { entries }, StoreCont::Aae { id });
    }

    fn aae_batch_done(&mut self, id: u64) {
        let Some(ex) = self.current_exchange(id) else { return };
        let bytes = std::mem::take(&mut ex.sent_bytes);
        let _ = self.pace_transfer(bytes);
        self.next_repair_batch(id);
    }

    /// Ends the running exchange; `completed`: every difference found was repaired.
    fn finish_exchange(&mut self, completed: bool) {
        let Some(ex) = self.aae.exchange.take() else { return };
        self.stats.aae_keys_repaired += ex.repaired;
        if completed {
            self.stats.aae_exchanges += 1;
            if ex.in_sync {
                self.stats.aae_in_sync += 1;
            }
            self.aae.last.insert(ex.partition, self.now);
            if ex.repaired > 0 {
                tracing::info!(
                    partition = ex.partition, peer = %ex.peer, keys = ex.repaired,
                    "anti-entropy repaired differing keys"
                );
            }
            // Catching up (a replaced disk, a long outage): the next exchange starts at once,
            // paced only by the transfer budget, instead of after the spacing.
            if ex.repaired >= CATCH_UP_KEYS {
                let now = self.now;
                self.aae_schedule(now + 1);
            }
        } else {
            self.stats.aae_failures += 1;
        }
    }

    /// The node's anti-entropy, for `/cluster`.
    pub fn anti_entropy(&mut self) -> AaeStatus {
        let owned = self.owned_partitions();
        let interval = self.config.anti_entropy_interval_ms;
        let now = self.now;
        let last_exchange_age_ms: BTreeMap<u32, Millis> = owned
            .iter()
            .filter_map(|p| self.aae.last.get(p).map(|t| (*p, now.saturating_sub(*t))))
            .collect();
        AaeStatus {
            interval_ms: interval,
            partitions_owned: owned.len(),
            partitions_recent: last_exchange_age_ms
                .values()
                .filter(|age| **age <= interval.saturating_mul(2))
                .count(),
            last_exchange_age_ms,
            running: self.aae.exchange.as_ref().map(|e| (e.partition, e.peer.to_string())),
        }
    }
}

/// What [`NodeCore::ask_both`] asks both sides for.
enum AskFor {
    Segments(Vec<u16>),
    Keys(Vec<u16>),
}
