//! A simulated cluster: five replicas as in-memory stores, coordinators driven by the crate's
//! state machines, a seeded scheduler that delays, reorders and drops messages, nodes cut off and
//! healed, and concurrent clients. After healing and hinted handoff, every acknowledged write must
//! be on at least W owners (so every R-quorum of owners sees it, R + W > N), unless a later write's
//! context covered it.
#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, BTreeSet};

use cairn_replication::{
    Actor, Dot, HintBook, NodeId, Outcome, ReadCoordinator, Ring, SiblingSet, VersionVector,
    WriteCoordinator, key_hash, quorum,
};

const NODES: usize = 5;
const N: usize = 3;
const R: usize = 2;
const W: usize = 2;
const KEYS: u8 = 4;
const CLIENTS: usize = 5;
/// Simulated time units.
const CHAOS_UNTIL: u64 = 3_000;
const REQUEST_TIMEOUT: u64 = 60;
const TICK: u64 = 5;
const MAX_DELAY: u64 = 25;
/// Percent of messages dropped during the chaos phase.
const DROP_PERCENT: u64 = 8;
/// Percent of writes a replica refuses (simulated disk error) during the chaos phase.
const NACK_PERCENT: u64 = 3;
/// Upper bound on processed events per run, so a bug cannot hang the test.
const MAX_EVENTS: usize = 2_000_000;

type Key = u8;
type Set = SiblingSet<u32>;

/// Seeded xorshift64* generator: the whole run is a function of the seed.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn percent(&mut self, p: u64) -> bool {
        self.below(100) < p
    }
}

#[derive(Debug, Clone)]
enum Msg {
    Put { req: u64, key: Key, set: Set, hint_for: Option<NodeId> },
    PutAck { req: u64, vv: VersionVector },
    PutNack { req: u64 },
    Get { req: u64, key: Key },
    GetReply { req: u64, set: Option<Set> },
    Repair { key: Key, set: Set, hint_for: Option<NodeId> },
    Handoff { key: Key, set: Set, version: VersionVector },
    HandoffAck { key: Key, version: VersionVector },
}

#[derive(Debug)]
enum Event {
    Deliver { from: usize, to: usize, msg: Msg },
    WriteTimeout { node: usize, req: u64 },
    ReadTimeout { node: usize, req: u64 },
    HandoffRelease { node: usize, key: Key, owner: NodeId },
    ClientStart { client: usize },
    Tick,
}

struct PendingWrite {
    coord: WriteCoordinator,
    client: usize,
    key: Key,
    value: u32,
    dot: Dot,
    ctx_after: VersionVector,
    answered: bool,
}

struct PendingRead {
    coord: ReadCoordinator<u32>,
    client: usize,
    key: Key,
    answered: bool,
    repaired: bool,
}

struct Node {
    id: NodeId,
    actor: Actor,
    store: BTreeMap<Key, Set>,
    hints: BTreeMap<(Key, NodeId), Set>,
    book: HintBook<Key>,
    writes: BTreeMap<u64, PendingWrite>,
    reads: BTreeMap<u64, PendingRead>,
    /// Who this node's failure detector believes reachable (refreshed with lag).
    view: BTreeSet<NodeId>,
    /// Control mode: resolve every set to one value, last writer wins (values grow with time, so
    /// they stand in for timestamps).
    lww: bool,
}

impl Node {
    /// Everything this node holds for `key`: its own replica and any hints.
    fn local_view(&self, key: Key) -> Option<Set> {
        let mut out: Option<Set> = self.store.get(&key).cloned();
        for ((k, _), s) in &self.hints {
            if *k == key {
                out.get_or_insert_with(Set::new).merge(s);
            }
        }
        out
    }

    /// Stores `set` as a replica or as a hint; returns the stored set's version vector.
    fn apply(&mut self, key: Key, set: &Set, hint_for: Option<NodeId>) -> VersionVector {
        match hint_for {
            Some(owner) => {
                let h = self.hints.entry((key, owner.clone())).or_default();
                h.merge(set);
                if self.lww {
                    h.resolve_by(|s| s.value);
                }
                let vv = h.join();
                self.book.record(key, owner, &vv);
                vv
            }
            None => {
                let s = self.store.entry(key).or_default();
                s.merge(set);
                if self.lww {
                    s.resolve_by(|s| s.value);
                }
                s.join()
            }
        }
    }
}

#[derive(Default)]
struct Stats {
    acked: usize,
    failed_writes: usize,
    reads_ok: usize,
    reads_failed: usize,
    hinted_writes: usize,
    handoffs_acked: usize,
    repairs: usize,
    dropped: usize,
    max_siblings: usize,
}

struct Sim {
    ring: Ring,
    ids: Vec<NodeId>,
    nodes: Vec<Node>,
    /// Nodes currently cut off from everyone (partitioned alone).
    isolated: BTreeSet<usize>,
    chaos: bool,
    queue: BTreeMap<(u64, u64), Event>,
    seq: u64,
    now: u64,
    rng: Rng,
    next_req: u64,
    next_value: u32,
    client_ctx: Vec<BTreeMap<Key, VersionVector>>,
    /// Every acknowledged write: (key, value, dot).
    acked: Vec<(Key, u32, Dot)>,
    /// Every context a coordinator applied: (key, context).
    contexts: Vec<(Key, VersionVector)>,
    stats: Stats,
}

impl Sim {
    fn new(seed: u64, lww: bool) -> Sim {
        let ids: Vec<NodeId> = (1..=NODES).map(|i| NodeId::new(format!("n{i}")).unwrap()).collect();
        let ring = Ring::new(&ids, 16, N).unwrap();
        let nodes = ids
            .iter()
            .map(|id| Node {
                id: id.clone(),
                actor: Actor::new(id.clone(), 0x7c1),
                store: BTreeMap::new(),
                hints: BTreeMap::new(),
                book: HintBook::new(),
                writes: BTreeMap::new(),
                reads: BTreeMap::new(),
                view: ids.iter().cloned().collect(),
                lww,
            })
            .collect();
        let mut sim = Sim {
            ring,
            ids,
            nodes,
            isolated: BTreeSet::new(),
            chaos: true,
            queue: BTreeMap::new(),
            seq: 0,
            now: 0,
            rng: Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1),
            next_req: 0,
            next_value: 0,
            client_ctx: vec![BTreeMap::new(); CLIENTS],
            acked: Vec::new(),
            contexts: Vec::new(),
            stats: Stats::default(),
        };
        for client in 0..CLIENTS {
            sim.schedule(1 + client as u64, Event::ClientStart { client });
        }
        sim.schedule(TICK, Event::Tick);
        sim
    }

    fn schedule(&mut self, after: u64, ev: Event) {
        self.seq += 1;
        self.queue.insert((self.now + after, self.seq), ev);
    }

    fn connected(&self, a: usize, b: usize) -> bool {
        a == b || (!self.isolated.contains(&a) && !self.isolated.contains(&b))
    }

    fn send(&mut self, from: usize, to: usize, msg: Msg) {
        if from == to {
            self.schedule(0, Event::Deliver { from, to, msg });
            return;
        }
        if self.chaos && (!self.connected(from, to) || self.rng.percent(DROP_PERCENT)) {
            self.stats.dropped += 1;
            return;
        }
        let delay = 1 + self.rng.below(MAX_DELAY);
        self.schedule(delay, Event::Deliver { from, to, msg });
    }

    fn idx(&self, id: &NodeId) -> usize {
        self.ids.iter().position(|x| x == id).unwrap()
    }

    fn extended(&self, key: Key) -> Vec<NodeId> {
        let p = self.ring.partition_of(key_hash("b", 1, &format!("k{key}")));
        self.ring.extended_preference_list(p)
    }

    fn refresh_views(&mut self) {
        for i in 0..NODES {
            let view: BTreeSet<NodeId> =
                (0..NODES).filter(|&j| self.connected(i, j)).map(|j| self.ids[j].clone()).collect();
            self.nodes[i].view = view;
        }
    }

    fn run(&mut self) {
        let mut events = 0;
        while let Some(((t, _), ev)) = self.queue.pop_first() {
            events += 1;
            assert!(events < MAX_EVENTS, "simulation did not settle");
            self.now = t;
            if self.chaos && self.now >= CHAOS_UNTIL {
                self.chaos = false;
                self.isolated.clear();
                self.refresh_views();
            }
            self.handle(ev);
        }
    }

    fn handle(&mut self, ev: Event) {
        match ev {
            Event::Tick => self.tick(),
            Event::ClientStart { client } => self.client_op(client),
            Event::Deliver { from, to, msg } => {
                if self.chaos && !self.connected(from, to) {
                    self.stats.dropped += 1;
                    return;
                }
                self.deliver(from, to, msg);
            }
            Event::WriteTimeout { node, req } => {
                if let Some(w) = self.nodes[node].writes.get_mut(&req) {
                    w.coord.on_timeout();
                }
                self.check_write(node, req);
                self.nodes[node].writes.remove(&req);
            }
            Event::ReadTimeout { node, req } => {
                if let Some(r) = self.nodes[node].reads.get_mut(&req) {
                    r.coord.on_timeout();
                }
                self.check_read(node, req);
                self.nodes[node].reads.remove(&req);
            }
            Event::HandoffRelease { node, key, owner } => {
                self.nodes[node].book.release(&key, &owner)
            }
        }
    }

    fn tick(&mut self) {
        if self.chaos {
            // Faults: cut a node off or heal one, at most two cut off at a time.
            if self.rng.percent(4) {
                let n = self.rng.below(NODES as u64) as usize;
                if self.isolated.contains(&n) {
                    self.isolated.remove(&n);
                } else if self.isolated.len() < 2 {
                    self.isolated.insert(n);
                }
            }
            // The failure detector catches up with a lag.
            if self.rng.percent(40) {
                self.refresh_views();
            }
        }
        // Hinted handoff: every node offers hints to owners it believes reachable.
        for i in 0..NODES {
            let owners = self.nodes[i].book.deliverable_owners(&self.nodes[i].view);
            for owner in owners {
                let batch = self.nodes[i].book.take_batch(&owner, 8);
                let to = self.idx(&owner);
                for d in batch {
                    let set = self.nodes[i].hints[&(d.key, owner.clone())].clone();
                    assert_eq!(set.join(), d.version, "book and hint store disagree");
                    self.send(i, to, Msg::Handoff { key: d.key, set, version: d.version });
                    self.schedule(
                        REQUEST_TIMEOUT,
                        Event::HandoffRelease { node: i, key: d.key, owner: owner.clone() },
                    );
                }
            }
        }
        let hints_left = self.nodes.iter().any(|n| !n.book.is_empty());
        // Keep ticking while anything can still create or deliver a hint.
        if self.chaos || hints_left || !self.queue.is_empty() {
            self.schedule(TICK, Event::Tick);
        }
    }

    fn client_op(&mut self, client: usize) {
        if !self.chaos {
            return; // clients stop when the faults stop; what remains is delivery.
        }
        let key = self.rng.below(u64::from(KEYS)) as Key;
        let entry = self.rng.below(NODES as u64) as usize;
        if self.rng.percent(60) {
            self.start_write(client, key, entry);
        } else {
            self.start_read(client, key, entry);
        }
    }

    fn client_done(&mut self, client: usize) {
        let think = 1 + self.rng.below(30);
        self.schedule(think, Event::ClientStart { client });
    }

    fn start_write(&mut self, client: usize, key: Key, entry: usize) {
        let ext = self.extended(key);
        let view = self.nodes[entry].view.clone();
        // A non-target entry node forwards to the coordinator (modelled as instantaneous).
        let coord_id = quorum::coordinator_for(&ext, N, &view, &self.ids[entry])
            .expect("entry reaches itself");
        let c = self.idx(&coord_id);
        let view = self.nodes[c].view.clone();
        let Ok(mut wc) = WriteCoordinator::new(&ext, &view, N, W, &coord_id) else {
            self.stats.failed_writes += 1;
            return self.client_done(client);
        };
        let ctx = self.client_ctx[client].get(&key).cloned().unwrap_or_default();
        self.next_value += 1;
        let value = self.next_value;
        // The dot comes from everything this node holds for the key (replica and hints), so it can
        // never reuse a counter it issued under a hint.
        let mut set = self.nodes[c].local_view(key).unwrap_or_default();
        let dot = set.update(&ctx, value, &self.nodes[c].actor);
        if self.nodes[c].lww {
            set.resolve_by(|s| s.value);
        }
        self.contexts.push((key, ctx));
        self.stats.max_siblings = self.stats.max_siblings.max(set.len());
        let targets = wc.targets().to_vec();
        if targets.iter().any(|t| t.hint_for.is_some()) {
            self.stats.hinted_writes += 1;
        }
        self.next_req += 1;
        let req = self.next_req;
        for t in &targets {
            let to = self.idx(&t.node);
            if to == c {
                let vv = self.nodes[c].apply(key, &set, t.hint_for.clone());
                wc.on_ack(&coord_id, vv);
            } else {
                self.send(
                    c,
                    to,
                    Msg::Put { req, key, set: set.clone(), hint_for: t.hint_for.clone() },
                );
            }
        }
        let ctx_after = set.join();
        self.nodes[c].writes.insert(
            req,
            PendingWrite { coord: wc, client, key, value, dot, ctx_after, answered: false },
        );
        self.schedule(REQUEST_TIMEOUT, Event::WriteTimeout { node: c, req });
        self.check_write(c, req);
    }

    fn check_write(&mut self, node: usize, req: u64) {
        let Some(w) = self.nodes[node].writes.get_mut(&req) else { return };
        if w.answered {
            return;
        }
        let outcome = w.coord.outcome();
        if !outcome.is_decided() {
            return;
        }
        w.answered = true;
        let (client, key, value, dot, ctx) =
            (w.client, w.key, w.value, w.dot.clone(), w.ctx_after.clone());
        match outcome {
            Outcome::Succeeded(report) => {
                assert!(report.replicas_written.len() >= W);
                self.stats.acked += 1;
                self.acked.push((key, value, dot));
            }
            _ => self.stats.failed_writes += 1,
        }
        // Both answers carry the new context (a 503 too: the value may survive as a sibling, and
        // the client's next write should supersede it). Clients accumulate what they saw.
        self.client_ctx[client].entry(key).or_default().merge(&ctx);
        self.client_done(client);
    }

    fn start_read(&mut self, client: usize, key: Key, entry: usize) {
        let ext = self.extended(key);
        let view = self.nodes[entry].view.clone();
        let id = self.ids[entry].clone();
        let mut rc = ReadCoordinator::new(&ext, &view, N, R, &id).unwrap();
        self.next_req += 1;
        let req = self.next_req;
        for t in rc.targets().to_vec() {
            let to = self.idx(&t.node);
            if to == entry {
                let local = self.nodes[entry].local_view(key);
                rc.on_reply(&id, local);
            } else {
                self.send(entry, to, Msg::Get { req, key });
            }
        }
        self.nodes[entry]
            .reads
            .insert(req, PendingRead { coord: rc, client, key, answered: false, repaired: false });
        self.schedule(REQUEST_TIMEOUT, Event::ReadTimeout { node: entry, req });
        self.check_read(entry, req);
    }

    fn check_read(&mut self, node: usize, req: u64) {
        let Some(r) = self.nodes[node].reads.get_mut(&req) else { return };
        let outcome = r.coord.outcome();
        let mut answer = None;
        if !r.answered && outcome.is_decided() {
            r.answered = true;
            answer = Some((r.client, r.key, matches!(outcome, Outcome::Succeeded(_))));
        }
        // Repair once every target answered or the timeout fired.
        let mut repairs = Vec::new();
        if !r.repaired && r.coord.pending().is_empty() {
            r.repaired = true;
            let merged = r.coord.merged().clone();
            repairs = r.coord.repairs().into_iter().map(|t| (t, merged.clone(), r.key)).collect();
        }
        if let Some((client, key, ok)) = answer {
            if ok {
                self.stats.reads_ok += 1;
                let merged = self.nodes[node].reads[&req].coord.merged().join();
                self.client_ctx[client].entry(key).or_default().merge(&merged);
            } else {
                self.stats.reads_failed += 1;
            }
            self.client_done(client);
        }
        for (t, set, key) in repairs {
            self.stats.repairs += 1;
            let to = self.idx(&t.node);
            self.send(node, to, Msg::Repair { key, set, hint_for: t.hint_for });
        }
    }

    fn deliver(&mut self, from: usize, to: usize, msg: Msg) {
        match msg {
            Msg::Put { req, key, set, hint_for } => {
                if self.chaos && self.rng.percent(NACK_PERCENT) {
                    return self.send(to, from, Msg::PutNack { req });
                }
                let vv = self.nodes[to].apply(key, &set, hint_for);
                self.send(to, from, Msg::PutAck { req, vv });
            }
            Msg::PutAck { req, vv } => {
                let id = self.ids[from].clone();
                if let Some(w) = self.nodes[to].writes.get_mut(&req) {
                    w.coord.on_ack(&id, vv);
                }
                self.check_write(to, req);
            }
            Msg::PutNack { req } => {
                let id = self.ids[from].clone();
                if let Some(w) = self.nodes[to].writes.get_mut(&req) {
                    w.coord.on_failure(&id);
                }
                self.check_write(to, req);
            }
            Msg::Get { req, key } => {
                let set = self.nodes[to].local_view(key);
                self.send(to, from, Msg::GetReply { req, set });
            }
            Msg::GetReply { req, set } => {
                let id = self.ids[from].clone();
                if let Some(r) = self.nodes[to].reads.get_mut(&req) {
                    if let Some(s) = &set {
                        self.stats.max_siblings = self.stats.max_siblings.max(s.len());
                    }
                    r.coord.on_reply(&id, set);
                }
                self.check_read(to, req);
            }
            Msg::Repair { key, set, hint_for } => {
                self.nodes[to].apply(key, &set, hint_for);
            }
            Msg::Handoff { key, set, version } => {
                self.nodes[to].apply(key, &set, None);
                self.send(to, from, Msg::HandoffAck { key, version });
            }
            Msg::HandoffAck { key, version } => {
                let owner = self.ids[from].clone();
                let holder = &mut self.nodes[to];
                if holder.book.acknowledge(&key, &owner, &version) {
                    self.stats.handoffs_acked += 1;
                    let hk = (key, owner);
                    if holder.hints.get(&hk).is_some_and(|h| version.descends(&h.join())) {
                        holder.hints.remove(&hk);
                    }
                }
            }
        }
    }

    /// The invariant: no acknowledged write is lost.
    fn check(&self) {
        for n in &self.nodes {
            assert!(n.book.is_empty(), "{}: hints left after healing", n.id);
            assert!(n.hints.is_empty(), "{}: hint data left after healing", n.id);
        }
        let lost = self.lost_writes();
        assert!(lost.is_empty(), "acknowledged writes lost: {lost:#?}");
    }

    /// Acknowledged writes that no later context covered and that are on fewer than W owners,
    /// or missing from some R-quorum read of the owners (R + W > N makes these the same).
    fn lost_writes(&self) -> Vec<String> {
        let mut lost = Vec::new();
        for (key, value, dot) in &self.acked {
            let superseded = self.contexts.iter().any(|(k, c)| k == key && c.contains(dot));
            if superseded {
                continue;
            }
            let ext = self.extended(*key);
            let owners = &ext[..N];
            let holds = |o: &NodeId| {
                self.nodes[self.idx(o)].store.get(key).is_some_and(|s| s.get(dot) == Some(value))
            };
            let holding: Vec<&NodeId> = owners.iter().filter(|o| holds(o)).collect();
            if holding.len() < W {
                lost.push(format!(
                    "write {value} ({dot}) of key {key} is on only {holding:?} of owners {owners:?}"
                ));
                continue;
            }
            for a in 0..N {
                for b in (a + 1)..N {
                    let mut m = Set::new();
                    for o in [&owners[a], &owners[b]] {
                        if let Some(s) = self.nodes[self.idx(o)].store.get(key) {
                            m.merge(s);
                        }
                    }
                    if m.get(dot) != Some(value) {
                        lost.push(format!("quorum read of {a},{b} misses write {value}"));
                    }
                }
            }
        }
        lost
    }
}

#[test]
fn no_acknowledged_write_is_lost_under_drops_delays_and_partitions() {
    let mut totals = Stats::default();
    for seed in 1..=12u64 {
        let mut sim = Sim::new(seed, false);
        sim.run();
        sim.check();
        let s = &sim.stats;
        println!(
            "seed {seed:>2}: acked {:>4} failed {:>3} reads ok/failed {:>4}/{:>3} hinted {:>3} \
             handoffs {:>3} repairs {:>4} dropped {:>4} max siblings {}",
            s.acked,
            s.failed_writes,
            s.reads_ok,
            s.reads_failed,
            s.hinted_writes,
            s.handoffs_acked,
            s.repairs,
            s.dropped,
            s.max_siblings
        );
        assert!(s.max_siblings <= CLIENTS, "more siblings than concurrent clients");
        totals.acked += s.acked;
        totals.failed_writes += s.failed_writes;
        totals.hinted_writes += s.hinted_writes;
        totals.handoffs_acked += s.handoffs_acked;
        totals.repairs += s.repairs;
        totals.max_siblings = totals.max_siblings.max(s.max_siblings);
    }
    // The runs exercised what they claim to (otherwise the invariant above proves little).
    assert!(totals.acked > 500, "too few acknowledged writes: {}", totals.acked);
    assert!(totals.failed_writes > 0, "no write ever failed: faults too mild");
    assert!(totals.hinted_writes > 10, "sloppy quorum never used");
    assert!(totals.handoffs_acked > 10, "hinted handoff never happened");
    assert!(totals.repairs > 10, "read repair never happened");
    assert!(totals.max_siblings >= 2, "no concurrent siblings ever");
}

/// The control: the same runs with last-writer-wins resolution must lose acknowledged writes,
/// which shows the checker above is able to see a loss (Jepsen's finding about LWW stores).
#[test]
fn lww_control_loses_acknowledged_writes() {
    let mut lost = 0;
    let mut acked = 0;
    for seed in 1..=4u64 {
        let mut sim = Sim::new(seed, true);
        sim.run();
        lost += sim.lost_writes().len();
        acked += sim.stats.acked;
    }
    println!("lww control: {lost} of {acked} acknowledged writes lost");
    assert!(lost > 0, "lww lost nothing: the checker cannot see losses");
}
