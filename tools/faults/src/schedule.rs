//! The seeded fault schedule.
//!
//! SCHEDULE
//! ========
//! A schedule is a list of faults, each `(start, duration, kind, targets)`, drawn from a seeded
//! generator (`rand`'s `StdRng`), so the same seed, duration, node count and kinds give the same
//! schedule: a failing run is replayed with its `--seed` (the run's JSON record holds the
//! schedule as well). Faults start after a warm-up, end before a cool-down, and overlap freely
//! with one rule: no node is the target of two faults at once and at most
//! [`MAX_NODES_FAULTED`] nodes are faulted at any moment, so a W=2 write always has somewhere
//! to go (a sloppy quorum over the remaining nodes). A partition isolates one node, or two nodes
//! *together* (a minority side of two against two), from the rest.
//!
//! DISK WIPE
//! =========
//! With [`Settings::wipe`] the schedule holds exactly one [`FaultKind::Wipe`] (when the fault
//! window has room for one): `kill -9` a node, delete its whole data directory, start it again
//! with the same id and flags after the fault's duration. It is placed before the other faults,
//! from a generator of its own (seeded from the run's seed), at a random time in the first half
//! of the fault window, on a random node; the other faults are then drawn exactly as without it
//! (the same random stream), and one that would overlap it on the same node or take a third
//! node is left out or narrowed, like any other overlap. Never more than one: two wipes could
//! destroy both copies of a write acknowledged at W=2, a loss no store could prevent. The
//! wiped node's keys come back through anti-entropy (the run checks it, `wipe.rs`).
//!
//! Each fault becomes two timed actions (kill -> restart, pause -> resume, disconnect ->
//! connect, wipe -> restart); [`Schedule::actions`] lists them in time order for the executor.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

/// Most nodes faulted at the same moment.
pub const MAX_NODES_FAULTED: usize = 2;
/// Most faults in one schedule (bounds generation on absurd durations).
pub const MAX_FAULTS: usize = 10_000;
/// Mixed into the seed for the wipe's own generator, so placing the wipe leaves the stream of
/// the other faults as it is without one.
const WIPE_SALT: u64 = 0x5769_7065_4469_736b;

/// The kind of a fault.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum FaultKind {
    /// `kill -9` the node(s), restart after the duration.
    Kill,
    /// SIGSTOP / `docker pause`, resume after the duration.
    Pause,
    /// Cut the node(s) from the others' network, reconnect after the duration (Docker only).
    Partition,
    /// `kill -9` one node and delete its whole data directory, restart it (same id, same flags,
    /// an empty disk) after the duration. At most one per schedule, never drawn at random (see
    /// DISK WIPE above).
    Wipe,
}

/// One fault.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fault {
    /// Milliseconds after the workload started.
    pub start_ms: u64,
    /// How long the fault lasts, in milliseconds.
    pub duration_ms: u64,
    /// What happens.
    pub kind: FaultKind,
    /// Node indices (0-based).
    pub targets: Vec<usize>,
}

/// One timed action of the executor.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Action {
    /// `kill -9` (the node stays down until `Restart`).
    Kill(usize),
    /// Start the node again on its data.
    Restart(usize),
    /// SIGSTOP / docker pause.
    Pause(usize),
    /// SIGCONT / docker unpause.
    Resume(usize),
    /// Disconnect from the cluster network.
    Disconnect(usize),
    /// Reconnect to the cluster network (with its fixed address).
    Connect(usize),
    /// `kill -9` and delete the node's data (the node stays down until `Restart`, which starts
    /// it on an empty disk).
    Wipe(usize),
}

/// Settings of a schedule.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Settings {
    /// Seed of the generator.
    pub seed: u64,
    /// Length of the workload, in milliseconds.
    pub duration_ms: u64,
    /// Number of nodes.
    pub nodes: usize,
    /// Kinds to draw from (at least one). [`FaultKind::Wipe`] is never drawn from here: see
    /// `wipe`.
    pub kinds: Vec<FaultKind>,
    /// Place one disk wipe (see DISK WIPE above). Absent from records written before the wipe
    /// existed: false.
    #[serde(default)]
    pub wipe: bool,
    /// No fault starts before this.
    pub warmup_ms: u64,
    /// Every fault ends this long before the end of the workload.
    pub cooldown_ms: u64,
    /// Shortest and longest gap between fault starts.
    pub gap_ms: (u64, u64),
    /// Shortest and longest fault.
    pub length_ms: (u64, u64),
}

/// A generated schedule.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Schedule {
    /// The settings it was generated from.
    pub settings: Settings,
    /// The faults in start order.
    pub faults: Vec<Fault>,
}

impl Schedule {
    /// Draws the schedule for `settings`.
    pub fn generate(settings: Settings) -> Schedule {
        let mut rng = StdRng::seed_from_u64(settings.seed);
        let end = settings.duration_ms.saturating_sub(settings.cooldown_ms);
        let (gap_lo, gap_hi) =
            (settings.gap_ms.0.max(1), settings.gap_ms.1.max(settings.gap_ms.0.max(1)));
        let (len_lo, len_hi) =
            (settings.length_ms.0.max(1), settings.length_ms.1.max(settings.length_ms.0.max(1)));
        let mut faults: Vec<Fault> = Vec::new();
        if settings.wipe
            && let Some(wipe) = Schedule::place_wipe(&settings, end, (len_lo, len_hi))
        {
            faults.push(wipe);
        }
        let kinds: Vec<FaultKind> =
            settings.kinds.iter().copied().filter(|k| *k != FaultKind::Wipe).collect();
        let mut t = settings.warmup_ms;
        while faults.len() < MAX_FAULTS && !kinds.is_empty() && settings.nodes > 0 {
            t += rng.random_range(gap_lo..=gap_hi);
            let duration = rng.random_range(len_lo..=len_hi);
            if t + duration > end {
                break;
            }
            // Every fault that overlaps [t, t + duration): the earlier ones started at or
            // before t, so for them this is "still in force at t"; the wipe may start later.
            let busy: Vec<usize> = faults
                .iter()
                .filter(|f| f.start_ms < t + duration && f.start_ms + f.duration_ms > t)
                .flat_map(|f| f.targets.iter().copied())
                .collect();
            let free: Vec<usize> = (0..settings.nodes).filter(|n| !busy.contains(n)).collect();
            let room = MAX_NODES_FAULTED.saturating_sub(busy.len()).min(free.len());
            // Draw the kind and count before checking for room, so the random stream (and so
            // the schedule) does not depend on how the previous faults happened to overlap.
            let kind = kinds[rng.random_range(0..kinds.len())];
            let want = if rng.random_bool(0.3) { 2 } else { 1 };
            let pick = rng.random_range(0..settings.nodes.max(1) * 2);
            if room == 0 {
                continue;
            }
            let count = want.min(room);
            let mut targets: Vec<usize> =
                (0..count).map(|i| free[(pick + i * 3) % free.len()]).collect();
            targets.sort_unstable();
            targets.dedup();
            faults.push(Fault { start_ms: t, duration_ms: duration, kind, targets });
        }
        // Stable: faults starting together keep the order they were drawn in.
        faults.sort_by_key(|f| f.start_ms);
        Schedule { settings, faults }
    }

    /// The one disk wipe: a random node, a start in the first half of the fault window
    /// `[warmup, end)`, a duration from `length` that ends by `end`. None when the window is
    /// shorter than the shortest fault.
    fn place_wipe(settings: &Settings, end: u64, length: (u64, u64)) -> Option<Fault> {
        let (len_lo, len_hi) = length;
        let start_lo = settings.warmup_ms;
        if settings.nodes == 0 || end < start_lo + len_lo {
            return None;
        }
        let mut rng = StdRng::seed_from_u64(settings.seed ^ WIPE_SALT);
        let start_hi = (start_lo + (end - start_lo) / 2).min(end - len_lo);
        let start = rng.random_range(start_lo..=start_hi);
        let duration = rng.random_range(len_lo..=len_hi.min(end - start).max(len_lo));
        let node = rng.random_range(0..settings.nodes);
        Some(Fault {
            start_ms: start,
            duration_ms: duration,
            kind: FaultKind::Wipe,
            targets: vec![node],
        })
    }

    /// The wipe of this schedule, if it has one.
    pub fn wipe(&self) -> Option<&Fault> {
        self.faults.iter().find(|f| f.kind == FaultKind::Wipe)
    }

    /// The faults as timed actions, in time order (ties: the order of the faults).
    pub fn actions(&self) -> Vec<(u64, Action)> {
        let mut out: Vec<(u64, Action)> = Vec::new();
        for f in &self.faults {
            let end = f.start_ms + f.duration_ms;
            for &n in &f.targets {
                let (begin, finish) = match f.kind {
                    FaultKind::Kill => (Action::Kill(n), Action::Restart(n)),
                    FaultKind::Pause => (Action::Pause(n), Action::Resume(n)),
                    FaultKind::Partition => (Action::Disconnect(n), Action::Connect(n)),
                    FaultKind::Wipe => (Action::Wipe(n), Action::Restart(n)),
                };
                out.push((f.start_ms, begin));
                out.push((end, finish));
            }
        }
        out.sort_by_key(|(t, _)| *t);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(seed: u64) -> Settings {
        Settings {
            seed,
            duration_ms: 120_000,
            nodes: 4,
            kinds: vec![FaultKind::Kill, FaultKind::Pause, FaultKind::Partition],
            warmup_ms: 3_000,
            cooldown_ms: 5_000,
            gap_ms: (500, 3_000),
            length_ms: (1_000, 8_000),
            wipe: false,
        }
    }

    /// The settings of a 45 s faults run of the harness, with the wipe.
    fn run_settings(seed: u64) -> Settings {
        Settings {
            seed,
            duration_ms: 45_000,
            nodes: 4,
            kinds: vec![FaultKind::Kill, FaultKind::Pause],
            warmup_ms: 3_000,
            cooldown_ms: 5_000,
            gap_ms: (1_000, 4_000),
            length_ms: (1_500, 8_000),
            wipe: true,
        }
    }

    /// Panics if a node is under two faults at once or more than [`MAX_NODES_FAULTED`] nodes
    /// are faulted at some moment (the count is highest at some fault's start).
    fn assert_overlaps_allowed(s: &Schedule, what: &str) {
        for probe in s.faults.iter().map(|f| f.start_ms) {
            let mut down: Vec<usize> = s
                .faults
                .iter()
                .filter(|f| f.start_ms <= probe && probe < f.start_ms + f.duration_ms)
                .flat_map(|f| f.targets.clone())
                .collect();
            let n = down.len();
            down.sort_unstable();
            down.dedup();
            assert_eq!(down.len(), n, "{what}: a node under two faults at {probe}");
            assert!(n <= MAX_NODES_FAULTED, "{what}: {n} nodes faulted at {probe}");
        }
    }

    #[test]
    fn same_seed_same_schedule_other_seed_other_schedule() {
        let a = Schedule::generate(settings(7));
        assert_eq!(a.faults, Schedule::generate(settings(7)).faults);
        assert_ne!(a.faults, Schedule::generate(settings(8)).faults);
        assert!(a.faults.len() > 10, "a two-minute run gets many faults: {}", a.faults.len());
    }

    #[test]
    fn faults_respect_the_window_and_never_take_more_than_two_nodes() {
        for seed in 0..50 {
            let s = Schedule::generate(settings(seed));
            let mut kinds = std::collections::BTreeSet::new();
            for f in &s.faults {
                assert!(f.start_ms >= 3_000 && f.start_ms + f.duration_ms <= 115_000);
                assert!(!f.targets.is_empty() && f.targets.iter().all(|n| *n < 4));
                kinds.insert(format!("{:?}", f.kind));
            }
            assert_eq!(kinds.len(), 3, "seed {seed} draws every kind");
            assert!(s.wipe().is_none(), "seed {seed}: no wipe unless asked for");
            assert_overlaps_allowed(&s, &format!("seed {seed}"));
        }
    }

    #[test]
    fn a_run_with_the_wipe_gets_exactly_one_early_in_the_window() {
        for seed in 0..200 {
            let s = Schedule::generate(run_settings(seed));
            let wipes: Vec<&Fault> =
                s.faults.iter().filter(|f| f.kind == FaultKind::Wipe).collect();
            assert_eq!(wipes.len(), 1, "seed {seed}: one wipe");
            let w = wipes[0];
            assert_eq!(w.targets.len(), 1, "seed {seed}: one node wiped");
            // Fault window [3 s, 40 s): the wipe starts in its first half and ends in it.
            assert!(w.start_ms >= 3_000 && w.start_ms <= 21_500, "seed {seed}: {w:?}");
            assert!(w.start_ms + w.duration_ms <= 40_000, "seed {seed}: {w:?}");
            assert!(s.faults.windows(2).all(|p| p[0].start_ms <= p[1].start_ms), "start order");
            assert!(s.faults.len() > 3, "seed {seed}: the other faults are still drawn");
            assert_overlaps_allowed(&s, &format!("seed {seed}"));
        }
        assert_ne!(
            Schedule::generate(run_settings(1)).wipe(),
            Schedule::generate(run_settings(2)).wipe()
        );
        assert_eq!(
            Schedule::generate(run_settings(9)).faults,
            Schedule::generate(run_settings(9)).faults
        );
    }

    #[test]
    fn the_wipe_is_never_drawn_at_random_and_needs_room() {
        let mut s = run_settings(4);
        s.wipe = false;
        s.kinds.push(FaultKind::Wipe);
        assert!(Schedule::generate(s).wipe().is_none(), "a kind to draw from is not a wipe");
        let mut short = run_settings(4);
        short.duration_ms = 9_000; // window [3 s, 4 s): shorter than the shortest fault
        assert!(Schedule::generate(short).faults.is_empty());
    }

    #[test]
    fn records_from_before_the_wipe_replay_without_one() {
        let mut v = serde_json::to_value(Schedule::generate(settings(6))).unwrap();
        v["settings"].as_object_mut().unwrap().remove("wipe");
        let back: Schedule = serde_json::from_value(v).unwrap();
        assert!(!back.settings.wipe);
        assert_eq!(back.faults, Schedule::generate(settings(6)).faults);
    }

    #[test]
    fn a_recorded_schedule_replays_identically() {
        let s = Schedule::generate(settings(5));
        let record = serde_json::json!({ "seed": 5, "schedule": s });
        let text = serde_json::to_string(&record).unwrap();
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        let back: Schedule = serde_json::from_value(v["schedule"].clone()).unwrap();
        assert_eq!(back.faults, s.faults);
        assert_eq!(back.actions(), s.actions());
    }

    #[test]
    fn every_fault_is_undone_by_a_later_action() {
        let s = Schedule::generate(Settings { wipe: true, ..settings(3) });
        assert!(s.wipe().is_some());
        let acts = s.actions();
        assert_eq!(acts.len(), 2 * s.faults.iter().map(|f| f.targets.len()).sum::<usize>());
        assert!(acts.windows(2).all(|w| w[0].0 <= w[1].0), "time order");
        for (i, (t, a)) in acts.iter().enumerate() {
            let undo = match a {
                Action::Kill(n) => Action::Restart(*n),
                Action::Pause(n) => Action::Resume(*n),
                Action::Disconnect(n) => Action::Connect(*n),
                Action::Wipe(n) => Action::Restart(*n),
                _ => continue,
            };
            assert!(acts[i..].iter().any(|(u, b)| *b == undo && u >= t), "{a:?} at {t} undone");
        }
    }
}
