//! The disk wipe's restore check: after the heal, before the read-back repairs anything, wait
//! until the wiped node's keys are back on every owner.
//!
//! RESTORE CHECK
//! =============
//! A wiped node restarts on an empty disk with its old id; only the other owners still hold its
//! keys, and the nodes' active anti-entropy (every `--anti-entropy-interval`, which the harness
//! sets short) must copy them back: no client traffic does that for a key nobody writes again.
//! The read-back would hide a failure, since every coordinated read repairs the replicas it
//! reads (and so does the `?meta=true` read that fetches preference lists). So once the heal is
//! done and no hint is pending, the harness reads every key that must be live from every node's
//! own replica (`?local=true`: no coordination, no repair), over and over, until each is held
//! by [`REPLICAS`] nodes, or the bound (two anti-entropy intervals plus 20 s) has passed: then
//! the run fails. A key *must be live* when it has an acknowledged element no delete saw
//! ([`crate::history::required`]: the checker's rule for a lost write), and a node *holds* it
//! when its replica's live versions contain every such element. A (key, node) pair once held
//! is not read again: replicas only gain those elements (a delete that could drop one excludes
//! it). With hints drained only owners hold data, so N holders are the N owners; once the
//! preference lists are known (after the wait) the check confirms it for the wiped node: every
//! must-live key whose preference list names it must have been seen on it.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::client::Client;
use crate::schedule::Action;
use crate::workload::{Executed, READBACK_PARALLELISM};

/// Replicas per key (N) in every cluster the harness starts: the nodes' default, and
/// `CAIRN_REPLICAS` in the compose files.
pub const REPLICAS: usize = 3;
/// Pause between two polls of the restore check.
pub const POLL_PAUSE: Duration = Duration::from_millis(500);
/// The restore check's bound beyond two anti-entropy intervals.
pub const RESTORE_SLACK: Duration = Duration::from_secs(20);
/// Keys held by too few nodes kept in the report (the count is always complete).
const SHORT_KEPT: usize = 20;
/// Most polls of one restore check (the bound in time ends it long before).
const MAX_POLLS: usize = 100_000;

/// The restore check's bound for an anti-entropy interval.
pub fn restore_limit(interval: Duration) -> Duration {
    interval * 2 + RESTORE_SLACK
}

/// What became of the wipe: when it happened, and whether and when the node's keys came back.
#[derive(Clone, Debug, Default, Serialize)]
pub struct WipeReport {
    /// The wiped node.
    pub node: String,
    /// Planned time of the wipe, ms after the workload started.
    pub planned_ms: u64,
    /// When it was done (None: the executor never reached it).
    pub wiped_at_ms: Option<u64>,
    /// When the node was started again on its empty disk (None: by the heal, or not at all).
    pub restarted_at_ms: Option<u64>,
    /// Errors of the wipe and of its restart (the run fails on any).
    pub errors: Vec<String>,
    /// Keys that must be live ([`crate::history::required`]).
    pub live_keys: usize,
    /// Every one of them held by [`REPLICAS`] nodes within the bound.
    pub restored: bool,
    /// From the end of the heal to the end of the poll that found every live key on N nodes
    /// (an upper bound: the first poll starts once every node is up and no hint is pending).
    pub restored_after_heal_ms: Option<u64>,
    /// From the end of the heal to the first poll.
    pub check_started_after_heal_ms: u64,
    /// How long the check polled.
    pub waited_ms: u64,
    /// Its bound.
    pub limit_ms: u64,
    /// Polls done.
    pub polls: usize,
    /// Live keys on fewer than N nodes when the check gave up.
    pub short_count: usize,
    /// Some of them, with the nodes that held them.
    pub short: BTreeMap<String, Vec<String>>,
    /// Live keys whose preference list names the wiped node.
    pub owned: usize,
    /// Of those, keys the check never saw on the wiped node (another node's copy made up N).
    pub owned_missing: usize,
    /// Anti-entropy's `keys_repaired`, summed over the nodes when the check ended.
    pub aae_keys_repaired: u64,
    /// Anti-entropy's `exchanges`, summed likewise.
    pub aae_exchanges: u64,
}

impl WipeReport {
    /// Notes when the wipe and the wiped node's restart happened, and their errors, from the
    /// executor's log (`ids`: node ids by index).
    pub fn note_actions(&mut self, executed: &[Executed], ids: &[String]) {
        let index = ids.iter().position(|id| *id == self.node);
        let wiped =
            executed.iter().position(|e| matches!(e.action, Action::Wipe(n) if Some(n) == index));
        let Some(at) = wiped else {
            self.errors.push(format!("the wipe of {} was never executed", self.node));
            return;
        };
        let wipe = &executed[at];
        self.wiped_at_ms = Some(wipe.at_ms);
        if let Some(e) = &wipe.error {
            self.errors.push(format!("wipe: {e}"));
        }
        let restart = executed[at..]
            .iter()
            .find(|e| matches!(e.action, Action::Restart(n) if Some(n) == index));
        if let Some(r) = restart {
            self.restarted_at_ms = Some(r.at_ms);
            if let Some(e) = &r.error {
                self.errors.push(format!("restart after the wipe: {e}"));
            }
        }
    }

    /// Notes what the restore check saw: `live_keys` keys to restore, its bound, and the end
    /// of the heal (`healed`) to time the restore from.
    pub fn note_restore(
        &mut self,
        r: &Restore,
        live_keys: usize,
        limit: Duration,
        healed: Instant,
    ) {
        self.live_keys = live_keys;
        self.limit_ms = limit.as_millis() as u64;
        self.waited_ms = r.waited.as_millis() as u64;
        self.polls = r.polls;
        self.restored = r.done_at.is_some();
        self.restored_after_heal_ms =
            r.done_at.map(|t| t.saturating_duration_since(healed).as_millis() as u64);
        self.check_started_after_heal_ms =
            r.started.map_or(0, |t| t.saturating_duration_since(healed).as_millis() as u64);
        let short: Vec<(&String, &BTreeSet<String>)> =
            r.holders.iter().filter(|(_, h)| h.len() < REPLICAS).collect();
        self.short_count = short.len();
        self.short = short
            .into_iter()
            .take(SHORT_KEPT)
            .map(|(k, h)| (k.clone(), h.iter().cloned().collect()))
            .collect();
    }

    /// True when the wipe happened without error and the node's keys came back in time, all
    /// of those it owns on it.
    pub fn passed(&self) -> bool {
        self.errors.is_empty()
            && self.wiped_at_ms.is_some()
            && self.restored
            && self.owned_missing == 0
    }

    /// One line for the summary.
    pub fn describe(&self) -> String {
        let secs = |ms: u64| ms as f64 / 1000.0;
        let Some(at) = self.wiped_at_ms else {
            return format!("{} NOT wiped: {}", self.node, self.errors.join("; "));
        };
        let up = match self.restarted_at_ms {
            Some(r) => format!("up again at {:.1} s", secs(r)),
            None => "restarted by the heal".to_string(),
        };
        let mut s = format!("{} wiped at {:.1} s, {up}", self.node, secs(at));
        if !self.errors.is_empty() {
            s.push_str(&format!("; ERRORS: {}", self.errors.join("; ")));
        }
        match self.restored_after_heal_ms {
            Some(ms) if self.restored => s.push_str(&format!(
                "; its keys restored {:.1} s after the heal ({} live keys on {REPLICAS} nodes \
                 each by local reads, {} poll(s) from {:.1} s; {} owns {} of them, {})",
                secs(ms),
                self.live_keys,
                self.polls,
                secs(self.check_started_after_heal_ms),
                self.node,
                self.owned,
                if self.owned_missing == 0 {
                    "held every one".to_string()
                } else {
                    format!(
                        "did NOT hold {} (another node's copy made up the count)",
                        self.owned_missing
                    )
                }
            )),
            _ => {
                let example: Vec<String> = self
                    .short
                    .iter()
                    .take(3)
                    .map(|(k, h)| format!("{k} on [{}]", h.join(",")))
                    .collect();
                s.push_str(&format!(
                    "; its keys NOT restored within {:.0} s: {} of {} live keys on fewer than \
                     {REPLICAS} nodes, e.g. {}",
                    secs(self.limit_ms),
                    self.short_count,
                    self.live_keys,
                    example.join("; ")
                ));
            }
        }
        s.push_str(&format!(
            "; anti-entropy since each node's last start: {} keys repaired, {} exchanges",
            self.aae_keys_repaired, self.aae_exchanges
        ));
        s
    }
}

/// What the restore check saw.
#[derive(Debug, Default)]
pub struct Restore {
    /// When the first poll started.
    pub started: Option<Instant>,
    /// When every live key was found on N nodes (None: not within the bound).
    pub done_at: Option<Instant>,
    /// Polls done.
    pub polls: usize,
    /// How long it polled.
    pub waited: Duration,
    /// Key -> ids of the nodes seen holding it.
    pub holders: BTreeMap<String, BTreeSet<String>>,
}

/// Polls the nodes' own replicas until every key of `required` (key -> elements it must hold)
/// is held by [`REPLICAS`] nodes (fewer if the cluster has fewer), or `limit` has passed. Each
/// poll reads only the (key, node) pairs not yet seen holding, at most
/// [`READBACK_PARALLELISM`] at once, and starts no read after the limit.
pub async fn wait_restored(
    client: &Client,
    nodes: &[String],
    ids: &[String],
    required: &BTreeMap<String, BTreeSet<String>>,
    limit: Duration,
) -> Restore {
    let need = REPLICAS.min(nodes.len());
    let start = Instant::now();
    let deadline = start + limit;
    let mut held: BTreeMap<&str, BTreeSet<usize>> =
        required.keys().map(|k| (k.as_str(), BTreeSet::new())).collect();
    let mut out = Restore { started: Some(start), ..Restore::default() };
    loop {
        let pending: Vec<(String, usize)> = held
            .iter()
            .filter(|(_, h)| h.len() < need)
            .flat_map(|(k, h)| {
                (0..nodes.len()).filter(|i| !h.contains(i)).map(|i| (k.to_string(), i))
            })
            .collect();
        if pending.is_empty() {
            out.done_at = Some(Instant::now());
            break;
        }
        if Instant::now() >= deadline || out.polls >= MAX_POLLS {
            break;
        }
        out.polls += 1;
        for (key, i) in holding(client, nodes, required, pending, deadline).await {
            if let Some(h) = held.get_mut(key.as_str()) {
                h.insert(i);
            }
        }
        if held.values().any(|h| h.len() < need) {
            tokio::time::sleep(POLL_PAUSE).await;
        }
    }
    out.waited = start.elapsed();
    out.holders = held
        .into_iter()
        .map(|(k, h)| (k.to_string(), h.into_iter().filter_map(|i| ids.get(i).cloned()).collect()))
        .collect();
    out
}

/// Reads each (key, node index) of `pairs` from that node's own replica; answers the pairs
/// whose live versions hold every element `required` lists for the key. No read starts after
/// `deadline`.
async fn holding(
    client: &Client,
    nodes: &[String],
    required: &BTreeMap<String, BTreeSet<String>>,
    pairs: Vec<(String, usize)>,
    deadline: Instant,
) -> Vec<(String, usize)> {
    let mut out = Vec::new();
    let mut tasks = tokio::task::JoinSet::new();
    let mut pairs = pairs.into_iter();
    loop {
        while tasks.len() < READBACK_PARALLELISM && Instant::now() < deadline {
            let Some((key, i)) = pairs.next() else { break };
            let Some(must) = required.get(&key).cloned() else { continue };
            let (c, node) = (client.clone(), nodes[i].clone());
            tasks.spawn(async move {
                let holds = match c.read(&node, &key, true).await {
                    Ok(r) => must.is_subset(&r.union()),
                    Err(_) => false,
                };
                (key, i, holds)
            });
        }
        match tasks.join_next().await {
            Some(Ok((key, i, true))) => out.push((key, i)),
            Some(_) => {}
            None => break,
        }
    }
    out
}

/// Of the keys of `required` whose preference list (`pref`) names `node`: how many, and how
/// many of them the restore check never saw `node` hold. Keys without a known preference list
/// are left out (the read-back's agreement check fails on them anyway).
pub fn owned_by(
    node: &str,
    required: &BTreeMap<String, BTreeSet<String>>,
    holders: &BTreeMap<String, BTreeSet<String>>,
    pref: &BTreeMap<String, Vec<String>>,
) -> (usize, usize) {
    let mut owned = 0;
    let mut missing = 0;
    for key in required.keys() {
        if pref.get(key).is_some_and(|p| p.iter().any(|o| o == node)) {
            owned += 1;
            if !holders.get(key).is_some_and(|h| h.contains(node)) {
                missing += 1;
            }
        }
    }
    (owned, missing)
}

/// `GET /cluster` numbers summed over `nodes`, one per path (e.g. `["anti_entropy",
/// "keys_repaired"]`); a node that does not answer counts nothing.
pub async fn cluster_sums<const K: usize>(
    client: &Client,
    nodes: &[String],
    paths: [&[&str]; K],
) -> [u64; K] {
    let mut out = [0; K];
    for n in nodes {
        if let Ok((200, v)) = client.get_json(n, "/cluster").await {
            for (sum, path) in out.iter_mut().zip(paths) {
                *sum += path.iter().fold(&v, |x, p| &x[*p]).as_u64().unwrap_or(0);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(xs: &[&str]) -> BTreeSet<String> {
        xs.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn the_wiped_node_must_hold_the_live_keys_it_owns() {
        let required = BTreeMap::from([("a".to_string(), set(&["x"])), ("b".into(), set(&["y"]))]);
        let pref = BTreeMap::from([
            ("a".to_string(), vec!["n1".to_string(), "n2".into(), "n3".into()]),
            ("b".to_string(), vec!["n1".to_string(), "n2".into(), "n4".into()]),
        ]);
        let all = BTreeMap::from([
            ("a".to_string(), set(&["n1", "n2", "n3"])),
            ("b".to_string(), set(&["n1", "n2", "n4"])),
        ]);
        assert_eq!(owned_by("n3", &required, &all, &pref), (1, 0));
        // N holders, but one of them not an owner: the wiped owner n3 did not have it.
        let stray = BTreeMap::from([
            ("a".to_string(), set(&["n1", "n2", "n4"])),
            ("b".to_string(), set(&["n1", "n2", "n4"])),
        ]);
        assert_eq!(owned_by("n3", &required, &stray, &pref), (1, 1));
        assert_eq!(owned_by("n4", &required, &stray, &pref), (1, 0));
    }

    #[test]
    fn the_report_passes_only_when_restored_without_errors() {
        let ok = WipeReport {
            node: "n3".into(),
            wiped_at_ms: Some(12_300),
            restarted_at_ms: Some(16_000),
            live_keys: 10,
            restored: true,
            restored_after_heal_ms: Some(4_100),
            owned: 7,
            ..WipeReport::default()
        };
        assert!(ok.passed());
        assert!(ok.describe().contains("n3 wiped at 12.3 s"), "{}", ok.describe());
        assert!(ok.describe().contains("restored 4.1 s after the heal"), "{}", ok.describe());
        let late = WipeReport { restored: false, short_count: 2, ..ok.clone() };
        assert!(!late.passed());
        assert!(late.describe().contains("NOT restored"), "{}", late.describe());
        assert!(!WipeReport { errors: vec!["x".into()], ..ok.clone() }.passed());
        assert!(!WipeReport { owned_missing: 1, ..ok.clone() }.passed());
        assert!(!WipeReport { wiped_at_ms: None, ..ok }.passed());
        assert_eq!(restore_limit(Duration::from_secs(2)), Duration::from_secs(24));
    }
}
