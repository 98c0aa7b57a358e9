//! One seed, start to verdict: setup, chaos, heal, quiescence, read-back, checks.
//!
//! PHASES
//! ======
//! 1. **Setup** (no faults): every node starts; after the failure detector's first round a
//!    probe creates the bucket through `n1`.
//! 2. **Chaos** (`Settings::chaos_ms`, 10-30 s): clients, fault scenarios, message drops and
//!    duplicates, store errors.
//! 3. **Heal**: faults stop; paused nodes resume, down nodes restart, the partition heals; the
//!    network stops dropping and duplicating; clients finish their operation in flight.
//! 4. **Quiescence** (at most [`HEAL_BOUND_MS`]): every node up and seeing every member up, no
//!    client or peer request unanswered, no work in flight in any core (`in_flight() == 0`), no
//!    store op waiting for an fsync, the bucket registries equal — and **no hint anywhere**:
//!    every core's book and every store's hint keyspace (`all_hints()`) empty. With all nodes up,
//!    a hint left in a store is a write its owner will never get by handoff.
//! 5. **Anti-entropy** (seeds with it on): with no client traffic and before any read, every
//!    key's owners must hold equal sets within two intervals; then one node's store is wiped with
//!    the cluster idle and its keys must be back within two intervals, by anti-entropy alone;
//!    every node's trees must equal a rebuild from its replicas.
//! 6. **Read-back**, like the fault harness's: every key is read through every node (coordinated
//!    `Get`, default R; the reads repair), the cluster runs to quiescence again, and each key's
//!    owners' local sets (what `Get local=true` reads) must be equal — whole DVV sets, history
//!    included — within [`ROUNDS`] rounds. Then one more pass of coordinated reads gives the
//!    final views.
//! 7. **Checks**: `cairn_faults::history::check` over the recorded operations and the final
//!    views (every acknowledged write present or superseded by an operation that saw it, no
//!    phantom, no certainly-failed write visible, no resurrection after an acknowledged delete,
//!    sibling counts within the causal bound, no duplicate version, no unreadable view); plus the
//!    executor contract (no request answered twice) and the event bound.
//! 8. **Collection**: with every node up and the owners agreeing, every tombstone-only replica
//!    must be collected within the grace and a few scans; then every key is read again and
//!    checked: nothing deleted may come back, nothing acknowledged may be lost.
//!
//! UNSYNCED LOSS
//! =============
//! Under `interval` and `never` sync policies an acknowledged write can legitimately be lost:
//! every node holding it crashed before syncing. The world records, for every crash of such a
//! node, the objects whose records the crash dropped after they had been reported stored
//! (`World::excused`); a legitimate loss (of a write, a delete, or the write that superseded
//! others) can only happen on those keys. The checker runs twice: over every key for the rules
//! a lost record cannot break (phantoms, certainly-failed writes visible, delete markers shown,
//! duplicate versions, unreadable views), and over the other keys for all of them, including
//! missing acknowledged writes, resurrections and the sibling bound. Runs of an all-`always`
//! cluster excuse nothing: a crash there only drops records nobody was told are stored.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

use cairn_faults::history::{self, Op, Outcome, Verdict, View};
use cairn_replication::node::buckets::ConflictPolicy;
use cairn_replication::node::{Answer, ClientOp, Mutant};
use cairn_replication::{NodeId, Result};

use crate::client::{BUCKET, live_contents};
use crate::world::{Reply, Status, Who, World};

/// Longest wait for quiescence after the heal, ms.
pub const HEAL_BOUND_MS: u64 = 60_000;
/// Read-back rounds before replicas must agree.
pub const ROUNDS: usize = 4;
/// Longest one read-back pass may take to settle, ms.
const ROUND_BOUND_MS: u64 = 30_000;
/// Anti-entropy must converge within two intervals plus this, ms.
const AAE_SLACK_MS: u64 = 2_000;
/// Every tombstone must be collected within the grace, four scan periods and this, ms.
const COLLECT_SLACK_MS: u64 = 5_000;
/// Findings quoted per failure.
const QUOTED: usize = 6;

/// What to run.
#[derive(Debug, Clone)]
pub struct Params {
    /// The seed.
    pub seed: u64,
    /// Number of nodes.
    pub nodes: usize,
    /// The planted bug, if any.
    pub mutant: Option<Mutant>,
    /// Every request asks for last-writer-wins resolution: the control run, which must lose
    /// acknowledged writes (proof that the checker sees a loss).
    pub lww: bool,
    /// Run the membership nemesis ([`crate::admin`]): the last node is added, then another is
    /// decommissioned or force-removed.
    pub membership: bool,
}

/// What one seed did and found.
#[derive(Debug, Clone, Default)]
pub struct Report {
    /// The seed.
    pub seed: u64,
    /// What failed (empty: passed).
    pub failures: Vec<String>,
    /// One line of counters.
    pub line: String,
    /// Operations acknowledged, certainly failed, indeterminate.
    pub ops: (usize, usize, usize),
    /// Events processed.
    pub events: u64,
    /// Simulated time, ms.
    pub sim_ms: u64,
}

/// Runs one seed.
pub fn run(p: &Params) -> Report {
    match run_seed(p) {
        Ok(r) => r,
        Err(e) => Report {
            seed: p.seed,
            failures: vec![format!("the simulation could not run: {e}")],
            ..Report::default()
        },
    }
}

fn run_seed(p: &Params) -> Result<Report> {
    let mut w = World::new(p.seed, p.nodes, p.mutant, p.membership)?;
    w.lww = p.lww;
    let mut failures = Vec::new();

    // 1. Setup.
    w.run_until(1_000, |_| false);
    let op = ClientOp::CreateBucket {
        name: BUCKET.into(),
        policy: if p.lww { ConflictPolicy::Lww } else { ConflictPolicy::Siblings },
        incarnation: w.rng.next_u64(),
        created_ms: w.wall(0),
    };
    let cid = w.client_send(Who::Probe, 0, op);
    w.probes.insert(cid, None);
    w.run_until(w.now + 5_000, |w| w.probes.get(&cid).is_some_and(Option::is_some));
    match w.probes.remove(&cid).flatten().and_then(Reply::into_answer) {
        Some(Ok(Answer::Bucket(o))) if o.bucket.is_some() => {
            w.incarnation = o.bucket.map(|b| b.incarnation).unwrap_or_default();
        }
        other => {
            return Ok(Report {
                seed: p.seed,
                failures: vec![format!("setup: creating the bucket answered {other:?}")],
                ..Report::default()
            });
        }
    }

    // 2. Chaos.
    w.add_clients();
    w.chaos = true;
    w.start_clients();
    w.start_faults();
    if p.membership {
        w.start_membership();
    }
    let chaos_end = w.now + w.settings.chaos_ms;
    w.run_until(chaos_end, |_| false);

    // 3, 4. Heal, quiescence.
    w.heal();
    if !w.run_until(w.now + HEAL_BOUND_MS, World::quiescent) {
        failures.push(format!(
            "no quiescence {} s after the heal: {}",
            HEAL_BOUND_MS / 1000,
            w.unquiet()
        ));
    }

    let keys: BTreeSet<String> = w.history.iter().map(|o| o.key.clone()).collect();
    // After membership changes, before any read repair: every acknowledged write (and delete)
    // must be in the own replicas of all but at most N - W owners of the final layout, so that
    // every read quorum of the final owners sees it (pulled, written during the change, or
    // delivered by handoff). All N is too strict even without changes: a coordinator that
    // crashes after its answer takes the hint for its slowest target with it, and only read
    // repair (and later anti-entropy) heals that replica. A disk replaced during the chaos
    // destroyed copies: the operations it held are skipped here (`reduced`) and checked after
    // anti-entropy (5).
    {
        let local = w.owner_views(&keys);
        let mut short = Vec::new();
        for (key, views) in local {
            if w.excused.contains(&key) || w.reduced.contains(&key) {
                continue;
            }
            let ops: Vec<Op> = w.history.iter().filter(|o| o.key == key).cloned().collect();
            let v = history::check(&ops, &BTreeMap::from([(key.clone(), views)]));
            let mut lacking: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
            for f in &v.findings {
                if f.what.starts_with("acknowledged write missing")
                    || f.what.starts_with("version visible after")
                {
                    lacking.entry(f.elem.as_str()).or_default().push(f.node.as_str());
                }
            }
            for (elem, nodes) in lacking {
                if nodes.len() > crate::world::N - crate::world::W {
                    short.push(format!("{key} {elem} missing on {}", nodes.join("+")));
                }
            }
        }
        if !short.is_empty() {
            failures.push(format!(
                "{} acknowledged operations are missing on more than N - W owners of the final \
                 layout before read repair: {}",
                short.len(),
                short.iter().take(QUOTED).cloned().collect::<Vec<_>>().join("; ")
            ));
        }
    }

    if let Some(k) = std::env::var_os("CAIRN_SIM_TRACE_KEY").and_then(|k| k.into_string().ok()) {
        let key = w.object(&k);
        for (i, n) in w.nodes.iter().enumerate() {
            let set = cairn_replication::node::LocalStore::read(&n.store, &key, &w.members);
            let l = n.core.as_ref().and_then(|c| c.layout()).map(|l| l.version);
            let owners = n
                .core
                .as_ref()
                .and_then(|c| c.placement())
                .map(|p| p.ring().preference_list(p.partition_of(key.hash())).to_vec());
            eprintln!(
                "DBG end {}: layout {l:?} owners {owners:?} gone {} set {:?}",
                w.members[i],
                w.gone.contains(&i),
                set.map(|s| s.map(|s| s.join()))
            );
        }
    }

    if p.membership {
        let findings = w.sync_findings();
        if !findings.is_empty() {
            failures.push(format!(
                "partition sync missed {} acknowledged operations: {}",
                findings.len(),
                findings.iter().take(QUOTED).cloned().collect::<Vec<_>>().join("; ")
            ));
        }
    }

    // 5. Anti-entropy, with no client traffic and before any read repair: within two
    // intervals every key's owners hold equal sets. Then a disk replacement with the cluster
    // idle — one node restarts on an empty store — and again within two intervals its keys are
    // back on it, by anti-entropy alone (no client, no read, no hint is left to do it).
    let interval = w.settings.aae_interval_ms;
    if interval > 0 {
        if let Err(f) = aae_converges(&mut w, &keys, "after quiescence") {
            failures.push(f);
        } else if let Some(x) = (0..w.nodes.len()).rev().find(|i| !w.gone.contains(i)) {
            // Every owner holds every key now: nothing is excused.
            w.wipe(x, false);
            w.restart(x);
            let when = format!("after replacing {}'s disk", w.members[x]);
            match aae_converges(&mut w, &keys, &when) {
                Ok(took) => w.stats.aae_restored_ms = Some(took),
                Err(f) => failures.push(f),
            }
        }
    }
    let stale_trees: Vec<String> = w
        .nodes
        .iter()
        .filter(|n| !n.store.trees_match_replicas())
        .map(|n| n.id.to_string())
        .collect();
    if !stale_trees.is_empty() {
        failures.push(format!(
            "anti-entropy trees differ from a rebuild on {}",
            stale_trees.join(", ")
        ));
    }

    // 6. Read-back.
    let mut disagree = Vec::new();
    let mut rounds = 0;
    for _ in 0..ROUNDS {
        rounds += 1;
        w.read_all(&keys);
        w.run_until(w.now + ROUND_BOUND_MS, World::quiescent);
        disagree = w.disagreements(&keys);
        if disagree.is_empty() {
            break;
        }
    }
    if !disagree.is_empty() {
        let quoted: Vec<&str> = disagree.iter().take(3).map(String::as_str).collect();
        failures.push(format!(
            "replicas disagree on {} keys after {rounds} read-back rounds: {}",
            disagree.len(),
            quoted.join("; ")
        ));
    }
    let views = w.read_all(&keys);

    // With membership changes: the cleanup drops what each node no longer owns, and nothing
    // acknowledged goes with it.
    let views = if p.membership {
        let bound = w.now + cairn_replication::node::cluster::CLEANUP_DELAY_MS + 5_000;
        w.run_until(bound, |_| false);
        w.run_until(w.now + ROUND_BOUND_MS, World::quiescent);
        let left = w.unowned_replicas();
        if !left.is_empty() {
            failures.push(format!(
                "{} replicas left on nodes that no longer own them after the cleanup: {}",
                left.len(),
                left.iter().take(QUOTED).cloned().collect::<Vec<_>>().join("; ")
            ));
        }
        w.read_all(&keys)
    } else {
        views
    };

    // 7. Checks.
    let verdict = history::check(&w.history, &views);
    let duplicates = duplicate_views(&views);
    if verdict.phantom
        + verdict.failed_visible
        + verdict.markers_shown
        + verdict.unreadable
        + duplicates
        > 0
    {
        failures.push(describe_verdict(&verdict, duplicates));
    }
    let strict = if w.excused.is_empty() {
        verdict.clone()
    } else {
        let ops: Vec<Op> =
            w.history.iter().filter(|o| !w.excused.contains(&o.key)).cloned().collect();
        let views: BTreeMap<String, BTreeMap<String, View>> =
            views.into_iter().filter(|(k, _)| !w.excused.contains(k)).collect();
        history::check(&ops, &views)
    };
    if strict.lost + strict.resurrected + strict.sibling_excess > 0 {
        failures.push(describe_verdict(&strict, duplicates));
    }
    // 8. Collection (seeds with a tombstone grace): with every node up and the owners agreeing,
    // every tombstone is collected within the grace and a few scans; then everything is read
    // again and checked: nothing deleted may come back once its tombstones are gone.
    if let Some(grace) = w.settings.tombstone_grace_ms {
        let started = w.now;
        let bound = started + grace + 4 * (grace / 4).max(1_000) + COLLECT_SLACK_MS;
        let mut left = w.tombstone_only();
        while left > 0 && w.now < bound {
            w.run_until(w.now + 250, |_| false);
            left = w.tombstone_only();
        }
        if left > 0 {
            if std::env::var_os("CAIRN_SIM_DEBUG_GC").is_some() {
                for (i, n) in w.nodes.iter().enumerate() {
                    for (k, s) in n.store.objects() {
                        if s.live_count() == 0 {
                            let owners = n.core.as_ref().and_then(|c| c.placement()).map(|p| {
                                p.ring().preference_list(p.partition_of(k.hash())).to_vec()
                            });
                            eprintln!(
                                "DBG gc left on {}: {} owners {owners:?} vv {:?} stats {:?}",
                                w.members[i],
                                k.name,
                                s.join(),
                                n.core.as_ref().map(|c| c.tombstones())
                            );
                        }
                    }
                }
            }
            failures.push(format!(
                "{left} tombstone-only replicas left {} ms after the read-back (grace {grace} ms, \
                 every node up, owners agreeing)",
                w.now - started
            ));
        }
        w.run_until(w.now + ROUND_BOUND_MS, World::quiescent);
        let views = w.read_all(&keys);
        let ops: Vec<Op> =
            w.history.iter().filter(|o| !w.excused.contains(&o.key)).cloned().collect();
        let views: BTreeMap<String, BTreeMap<String, View>> =
            views.into_iter().filter(|(k, _)| !w.excused.contains(k)).collect();
        let after = history::check(&ops, &views);
        if after.lost + after.resurrected + after.phantom + after.markers_shown > 0 {
            failures.push(format!(
                "after tombstone collection: {}",
                describe_verdict(&after, duplicate_views(&views))
            ));
        }
    }
    for b in &w.breaches {
        failures.push(format!("invariant: {b}"));
    }
    if w.overrun {
        failures.push(format!("event bound of {} hit at {} ms", crate::world::MAX_EVENTS, w.now));
    }
    let ops = counts(&w);
    let mut line = summary_line(&w, &verdict, rounds, ops);
    if p.membership {
        let _ = write!(line, "; membership: {}", w.admin.log.join(", "));
    }
    Ok(Report { seed: p.seed, failures, line, ops, events: w.stats.events, sim_ms: w.now })
}

/// Runs the idle cluster until every key's owners hold equal sets, for at most two
/// anti-entropy intervals plus [`AAE_SLACK_MS`]; returns how long it took.
fn aae_converges(
    w: &mut World,
    keys: &BTreeSet<String>,
    when: &str,
) -> std::result::Result<u64, String> {
    let interval = w.settings.aae_interval_ms;
    let started = w.now;
    let bound = started + 2 * interval + AAE_SLACK_MS;
    let mut left = w.disagreements(keys);
    while !left.is_empty() && w.now < bound {
        w.run_until(w.now + 250, |_| false);
        left = w.disagreements(keys);
    }
    if left.is_empty() {
        return Ok(w.now - started);
    }
    Err(format!(
        "anti-entropy left {} keys differing between owners {} ms {when} (interval {interval} \
         ms): {}",
        left.len(),
        w.now - started,
        left.iter().take(3).cloned().collect::<Vec<_>>().join("; ")
    ))
}

fn counts(w: &World) -> (usize, usize, usize) {
    let mut c = (0, 0, 0);
    for op in &w.history {
        match op.outcome {
            Outcome::Ok => c.0 += 1,
            Outcome::Failed => c.1 += 1,
            Outcome::Indeterminate => c.2 += 1,
        }
    }
    c
}

/// Views holding two versions with the same content (one write stored under two dots).
fn duplicate_views(views: &BTreeMap<String, BTreeMap<String, View>>) -> usize {
    views
        .values()
        .flat_map(BTreeMap::values)
        .filter(|v| match v {
            View::Found { live, .. } => live.iter().collect::<BTreeSet<_>>().len() < live.len(),
            _ => false,
        })
        .count()
}

fn describe_verdict(v: &Verdict, duplicates: usize) -> String {
    let mut s = format!(
        "checker: {} lost, {} phantom, {} failed-visible, {} resurrected, {} markers shown, \
         {} over the sibling bound ({} duplicate versions), {} unreadable",
        v.lost,
        v.phantom,
        v.failed_visible,
        v.resurrected,
        v.markers_shown,
        v.sibling_excess,
        duplicates,
        v.unreadable
    );
    for f in v.findings.iter().take(QUOTED) {
        let _ = write!(s, "; {} @{} {}: {}", f.key, f.node, f.elem, f.what);
    }
    s
}

fn summary_line(w: &World, v: &Verdict, rounds: usize, ops: (usize, usize, usize)) -> String {
    let s = &w.settings;
    let c = w.core_stats();
    let st = &w.stats;
    let policies: BTreeSet<String> = s.policies.iter().map(ToString::to_string).collect();
    let reads_failed: u64 = w.clients.iter().map(|c| c.reads_failed).sum();
    format!(
        "{} nodes, {} clients, chaos {} s, timeout {} ms, sync {}; ops {}/{}/{} ok/failed/indet, \
         {} reads failed; faults: {} crashes, {} stops, {} pauses, {} partitions; net: {} sent, \
         {} dropped, {} duplicated, {} late replies; {} records lost in crashes{}, {} store \
         errors, {} dots reused; core: {} forwarded, {} hints stored, {} delivered, {} repairs; \
         anti-entropy {}: {} disks replaced, {} exchanges ({} in sync, {} failed), {} keys \
         repaired{}; collection {}: {} tombstones collected in {} rounds, {} objects reclaimed; \
         {} keys, max {} \
         versions, indeterminate {}/{} present/absent, {} read-back rounds; {} events, {} ms",
        s.nodes,
        s.clients,
        s.chaos_ms / 1000,
        s.request_timeout_ms,
        policies.into_iter().collect::<Vec<_>>().join("+"),
        ops.0,
        ops.1,
        ops.2,
        reads_failed,
        st.crashes,
        st.stops,
        st.pauses,
        st.partitions,
        st.sent,
        st.dropped,
        st.duplicated,
        st.late_replies,
        st.records_lost,
        if w.excused.is_empty() {
            String::new()
        } else {
            format!(" ({} keys excused from the loss checks)", w.excused.len())
        },
        st.store_errors,
        st.dots_reused,
        c.forwarded,
        c.hints_stored,
        c.hints_delivered,
        c.read_repairs,
        if s.aae_interval_ms == 0 {
            "off".to_string()
        } else {
            format!("every {} ms", s.aae_interval_ms)
        },
        st.wipes,
        c.aae_exchanges,
        c.aae_in_sync,
        c.aae_failures,
        c.aae_keys_repaired,
        st.aae_restored_ms
            .map(|t| format!(", a replaced disk restored in {t} ms"))
            .unwrap_or_default(),
        s.tombstone_grace_ms.map_or("off".to_string(), |g| format!("grace {g} ms")),
        c.tombstones_collected,
        c.tombstone_rounds,
        c.objects_reclaimed,
        v.keys,
        v.max_versions,
        v.indeterminate_present,
        v.indeterminate_absent,
        rounds,
        st.events,
        w.now
    )
}

impl World {
    /// Tombstone-only replicas on the running nodes.
    fn tombstone_only(&self) -> usize {
        (0..self.nodes.len())
            .filter(|i| !self.gone.contains(i))
            .map(|i| self.nodes[i].store.tombstone_only())
            .sum()
    }

    /// The ids of the nodes that should be running (all but force-removed ones).
    fn running_ids(&self) -> BTreeSet<NodeId> {
        (0..self.nodes.len())
            .filter(|i| !self.gone.contains(i))
            .map(|i| self.members[i].clone())
            .collect()
    }

    /// Phase 4's condition (see PHASES).
    pub fn quiescent(&self) -> bool {
        let all = self.running_ids();
        let registry = |i: usize| self.nodes[i].store.registry_snapshot();
        let Some(first_i) = (0..self.nodes.len()).find(|i| !self.gone.contains(i)) else {
            return false;
        };
        let first = registry(first_i);
        let layout = |i: usize| self.nodes[i].core.as_ref().and_then(|c| c.layout().cloned());
        let first_layout = layout(first_i);
        self.clients.iter().all(|c| !c.busy())
            && self.probes.values().all(Option::is_some)
            && self.admin.done()
            && first_layout.as_ref().is_some_and(|l| l.transition.is_none())
            && self.nodes.iter().enumerate().filter(|(i, _)| !self.gone.contains(i)).all(
                |(i, n)| {
                    layout(i) == first_layout
                        && n.status == Status::Up
                        && n.view == all
                        && n.inbound.is_empty()
                        && n.client_reqs.is_empty()
                        && n.store.waiting() == 0
                        && n.core
                            .as_ref()
                            .is_some_and(|c| c.in_flight() == 0 && c.hint_count() == 0)
                        && n.store.all_hint_count() == 0
                        && registry(i) == first
                },
            )
    }

    /// What keeps the world from quiescence.
    pub fn unquiet(&self) -> String {
        let all = self.running_ids();
        let mut out = Vec::new();
        if !self.admin.done() {
            out.push(format!(
                "membership changes not done ({}; last refusal: {})",
                self.admin.log.join(", "),
                self.admin.last_error.as_deref().unwrap_or("none")
            ));
        }
        let busy = self.clients.iter().filter(|c| c.busy()).count();
        if busy > 0 {
            out.push(format!("{busy} clients waiting"));
        }
        let first = self.nodes[0].store.registry_snapshot();
        for (i, n) in self.nodes.iter().enumerate() {
            if self.gone.contains(&i) {
                continue;
            }
            let mut what = Vec::new();
            if let Some(l) = n.core.as_ref().and_then(|c| c.layout()) {
                if let Some(t) = &l.transition {
                    what.push(format!("layout v{} {} {:?}", l.version, t.change, t.phase));
                }
            } else if n.core.is_some() {
                what.push("no layout".into());
            }
            if n.status != Status::Up {
                what.push(format!("{:?}", n.status));
            }
            if n.view != all {
                what.push(format!("sees {} of {} up", n.view.len(), all.len()));
            }
            if let Some(c) = &n.core {
                if c.in_flight() > 0 {
                    what.push(format!("{} in flight", c.in_flight()));
                }
                if c.hint_count() > 0 {
                    what.push(format!("{} hints in its book", c.hint_count()));
                }
            }
            let stored = n.store.all_hint_count();
            if stored > 0 {
                let book = n.core.as_ref().map(|c| c.hint_count()).unwrap_or(0);
                let first = cairn_replication::node::LocalStore::all_hints(&n.store)
                    .ok()
                    .and_then(|h| h.into_iter().next())
                    .map(|(owner, key, _)| format!("; first: {key:?} for {owner}"))
                    .unwrap_or_default();
                what.push(format!("{stored} hints in its store ({book} in its book{first})"));
            }
            if !n.inbound.is_empty() {
                what.push(format!("{} peer requests unanswered", n.inbound.len()));
            }
            if !n.client_reqs.is_empty() {
                what.push(format!("{} client requests unanswered", n.client_reqs.len()));
            }
            if n.store.waiting() > 0 {
                what.push(format!("{} store ops waiting", n.store.waiting()));
            }
            if n.store.registry_snapshot() != first {
                what.push("registry differs from n1's".into());
            }
            if !what.is_empty() {
                out.push(format!("{}: {}", n.id, what.join(", ")));
            }
        }
        out.join("; ")
    }

    /// Reads every key through every node (coordinated, default R) and waits for the answers.
    /// Returns key -> node -> view.
    pub fn read_all(
        &mut self,
        keys: &BTreeSet<String>,
    ) -> BTreeMap<String, BTreeMap<String, View>> {
        let mut asked = Vec::new();
        for key in keys {
            let running: Vec<usize> =
                (0..self.nodes.len()).filter(|n| !self.gone.contains(n)).collect();
            for n in running {
                let op = ClientOp::Get {
                    key: self.object(key),
                    r: crate::world::R,
                    lww: false,
                    local: false,
                };
                let cid = self.client_send(Who::Probe, n, op);
                self.probes.insert(cid, None);
                asked.push((key.clone(), n, cid));
            }
        }
        let bound = self.now + self.client_timeout_ms();
        self.run_until(bound, |w| w.probes.values().all(Option::is_some));
        let mut views: BTreeMap<String, BTreeMap<String, View>> = BTreeMap::new();
        for (key, n, cid) in asked {
            let view = match self.probes.remove(&cid).flatten().map(Reply::into_answer) {
                Some(Some(Ok(Answer::Read(o)))) => match live_contents(&o) {
                    Ok(live) if live.is_empty() => View::NotFound,
                    Ok(live) => View::Found { live, delete_markers: 0 },
                    Err(e) => View::Unreadable(e),
                },
                Some(Some(Ok(other))) => View::Unreadable(format!("answered {other:?}")),
                Some(Some(Err(e))) => View::Unreadable(e.to_string()),
                Some(None) => View::Unreadable("connection refused".into()),
                None => View::Unreadable("no answer".into()),
            };
            views.entry(key).or_default().insert(self.members[n].to_string(), view);
        }
        views
    }

    /// Each key's final owners' own replicas (merged with any hints), as views.
    pub fn owner_views(&self, keys: &BTreeSet<String>) -> BTreeMap<String, BTreeMap<String, View>> {
        let newest = self
            .nodes
            .iter()
            .filter_map(|n| n.core.as_ref().and_then(|c| c.placement()))
            .max_by_key(|p| p.version());
        let Some(ring) = newest.map(|p| p.ring().clone()) else { return BTreeMap::new() };
        let mut out: BTreeMap<String, BTreeMap<String, View>> = BTreeMap::new();
        for name in keys {
            let key = self.object(name);
            for o in ring.preference_list(ring.partition_of(key.hash())) {
                let Some(i) = self.members.iter().position(|m| m == o) else { continue };
                let read = cairn_replication::node::LocalStore::read(
                    &self.nodes[i].store,
                    &key,
                    &self.members,
                );
                let view = match read {
                    Ok(Some(set)) => {
                        let outcome = cairn_replication::node::ReadOutcome {
                            node: o.to_string(),
                            set,
                            report: None,
                        };
                        match live_contents(&outcome) {
                            Ok(live) if live.is_empty() => View::NotFound,
                            Ok(live) => View::Found { live, delete_markers: 0 },
                            Err(e) => View::Unreadable(e),
                        }
                    }
                    Ok(None) => View::NotFound,
                    Err(e) => View::Unreadable(e.to_string()),
                };
                out.entry(name.clone()).or_default().insert(o.to_string(), view);
            }
        }
        out
    }

    /// Keys whose owners' local sets (replica merged with any hints, as `Get local=true`
    /// reads) differ, each with a short description.
    pub fn disagreements(&self, keys: &BTreeSet<String>) -> Vec<String> {
        let newest = self
            .nodes
            .iter()
            .filter_map(|n| n.core.as_ref().and_then(|c| c.placement()))
            .max_by_key(|p| p.version());
        let Some(ring) = newest.map(|p| p.ring().clone()) else {
            return vec!["no node is running".into()];
        };
        let mut out = Vec::new();
        for name in keys {
            let key = self.object(name);
            let owners = ring.preference_list(ring.partition_of(key.hash()));
            let sets: Vec<_> = owners
                .iter()
                .filter_map(|o| self.members.iter().position(|m| m == o))
                .map(|i| {
                    (
                        i,
                        cairn_replication::node::LocalStore::read(
                            &self.nodes[i].store,
                            &key,
                            &self.members,
                        ),
                    )
                })
                .collect();
            let differ = sets.windows(2).any(|p| p[0].1 != p[1].1);
            if differ {
                let mut d = format!("{name}:");
                for (i, s) in &sets {
                    let s = match s {
                        Ok(Some(s)) => format!(
                            "{} siblings {:?} vv {:?}",
                            s.len(),
                            s.siblings()
                                .iter()
                                .map(|x| format!("{}={}", x.dot, x.value.meta.etag))
                                .collect::<Vec<_>>(),
                            s.join().iter().map(|(a, n)| format!("{a}:{n}")).collect::<Vec<_>>()
                        ),
                        Ok(None) => "none".into(),
                        Err(e) => format!("error {e}"),
                    };
                    let _ = write!(d, " {}={s}", self.members[*i]);
                }
                out.push(d);
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(seed: u64) -> Params {
        Params { seed, nodes: 5, mutant: None, lww: false, membership: false }
    }

    #[test]
    fn a_seed_replays_exactly_and_the_correct_code_passes_it() {
        let (a, b) = (run(&params(3)), run(&params(3)));
        assert!(a.failures.is_empty(), "{:?}", a.failures);
        assert_eq!(a.line, b.line);
        assert_eq!((a.ops, a.events, a.sim_ms), (b.ops, b.events, b.sim_ms));
        assert!(a.ops.0 > 100, "the workload acknowledged writes: {}", a.line);
        assert_ne!(run(&params(4)).line, a.line, "another seed, another run");
    }

    #[test]
    fn the_lww_control_loses_acknowledged_writes() {
        let r = run(&Params { lww: true, ..params(1) });
        assert!(r.failures.iter().any(|f| f.contains("acknowledged write missing")), "{r:?}");
    }
}
