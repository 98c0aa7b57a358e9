//! The concurrent clients, the fault executor and the settle-and-read-back phase.
//!
//! WORKLOADS
//! =========
//! Client `i` runs workload `i mod 3` until the deadline, each operation through a random node:
//! - **hot** (read-modify-write): read a hot key (resolving siblings), write back the union of
//!   what it read plus one new element, with the read's context. Hot keys rotate every
//!   [`HOT_KEY_EPOCH`] so values stay small on long runs.
//! - **unique**: write a key nobody else ever writes, without context.
//! - **delete/re-create**: on one of the client's own few keys, read; if something is live,
//!   delete it with the read's context, otherwise write a new element with the context of the
//!   404 (which covers the delete markers: reads never list them under add-wins deletes). A
//!   delete always carries a context (a context-less delete removes what the node's own quorum
//!   read shows, which the history could not describe): a read showing live versions without a
//!   context is counted as a failed read. A delete answered 404 (the node found nothing live)
//!   stored nothing and is recorded as `Failed`.
//!
//! A read that fails aborts the operation before anything is sent (it is counted, not recorded);
//! every write or delete that was sent is recorded with its outcome. Loops are bounded by the
//! deadline and by [`MAX_OPS_PER_CLIENT`].
//!
//! The large-object clients (`large.rs`) run beside these, numbered after them, and record into
//! the same history; the read-back below reads their keys like any other (every body checked
//! byte for byte as it streams, so a read-back holds no object in memory).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;

use crate::client::{Client, Read};
use crate::cluster::Cluster;
use crate::history::{Op, OpKind, Outcome, View};
use crate::schedule::Action;

/// Hot keys get a new name this often (bounds the size of a hot key's value).
pub const HOT_KEY_EPOCH: Duration = Duration::from_secs(20);
/// Keys per delete/re-create client.
pub const DR_KEYS: usize = 3;
/// Upper bound on the operations of one client (the deadline normally ends it first).
pub const MAX_OPS_PER_CLIENT: u64 = 1_000_000;
/// Parallel requests of the read-back phase.
pub const READBACK_PARALLELISM: usize = 8;

/// What the clients do.
#[derive(Clone, Debug, Serialize)]
pub struct WorkloadSettings {
    /// Number of clients.
    pub clients: usize,
    /// Hot keys per epoch.
    pub hot_keys: usize,
    /// Pause between one client's operations, in milliseconds.
    pub think_ms: u64,
    /// Seed of the clients' choices.
    pub seed: u64,
}

/// Per-client counters that are not operations.
#[derive(Clone, Debug, Default, Serialize)]
pub struct ClientStats {
    /// Reads that failed (the operation was then not sent).
    pub reads_failed: u64,
    /// Largest number of live versions one read returned.
    pub max_versions_read: usize,
    /// Reads that listed a delete marker (add-wins: a conforming node never does; the final
    /// views are checked for it, this counts what the run's reads met).
    pub markers_read: u64,
}

impl ClientStats {
    /// Notes what one read returned.
    fn saw(&mut self, r: &Read) {
        self.max_versions_read = self.max_versions_read.max(r.live.len());
        if r.delete_markers > 0 {
            self.markers_read += 1;
        }
    }
}

/// Runs one client until `deadline`; returns its operations and counters.
pub async fn client_loop(
    id: usize,
    client: Client,
    nodes: Arc<Vec<String>>,
    settings: WorkloadSettings,
    started: Instant,
    deadline: Instant,
) -> (Vec<Op>, ClientStats) {
    let mut rng = StdRng::seed_from_u64(settings.seed ^ (id as u64).wrapping_mul(0x9e37_79b9));
    let mut ops = Vec::new();
    let mut stats = ClientStats::default();
    let think = Duration::from_millis(settings.think_ms);
    for seq in 0..MAX_OPS_PER_CLIENT {
        if Instant::now() >= deadline {
            break;
        }
        let node = &nodes[rng.random_range(0..nodes.len())];
        let elem = format!("c{id}.{seq}");
        let at_ms = started.elapsed().as_millis() as u64;
        let op = match id % 3 {
            0 => {
                let epoch = started.elapsed().as_secs() / HOT_KEY_EPOCH.as_secs();
                let key = format!("hot-{epoch}-{}", rng.random_range(0..settings.hot_keys.max(1)));
                match client.read(node, &key, false).await {
                    Err(_) => {
                        stats.reads_failed += 1;
                        None
                    }
                    Ok(r) => {
                        stats.saw(&r);
                        let saw = r.union();
                        let mut content = saw.clone();
                        content.insert(elem.clone());
                        let outcome =
                            client.write(node, &key, r.context.as_deref(), &content).await;
                        Some(Op {
                            client: id,
                            key,
                            kind: OpKind::Write { elem },
                            saw,
                            outcome,
                            at_ms,
                        })
                    }
                }
            }
            1 => {
                let key = format!("u-c{id}-{seq}");
                let content = BTreeSet::from([elem.clone()]);
                let outcome = client.write(node, &key, None, &content).await;
                Some(Op {
                    client: id,
                    key,
                    kind: OpKind::Write { elem },
                    saw: BTreeSet::new(),
                    outcome,
                    at_ms,
                })
            }
            _ => {
                let key = format!("dr-c{id}-{}", rng.random_range(0..DR_KEYS));
                match client.read(node, &key, false).await {
                    Err(_) => {
                        stats.reads_failed += 1;
                        None
                    }
                    Ok(r) => {
                        stats.saw(&r);
                        let saw = r.union();
                        if r.live.is_empty() {
                            let content = BTreeSet::from([elem.clone()]);
                            let outcome =
                                client.write(node, &key, r.context.as_deref(), &content).await;
                            Some(Op {
                                client: id,
                                key,
                                kind: OpKind::Write { elem },
                                saw,
                                outcome,
                                at_ms,
                            })
                        } else if let Some(context) = r.context.as_deref() {
                            let outcome = client.delete(node, &key, Some(context)).await;
                            Some(Op { client: id, key, kind: OpKind::Delete, saw, outcome, at_ms })
                        } else {
                            // Live versions without a context: a protocol breach; never send a
                            // context-less delete (see the module doc).
                            stats.reads_failed += 1;
                            None
                        }
                    }
                }
            }
        };
        if let Some(op) = op {
            ops.push(op);
        }
        tokio::time::sleep(think).await;
    }
    (ops, stats)
}

/// One executed fault action.
#[derive(Clone, Debug, Serialize)]
pub struct Executed {
    /// Planned time, ms after the workload started.
    pub planned_ms: u64,
    /// Actual time.
    pub at_ms: u64,
    /// The action.
    pub action: Action,
    /// Error text if it failed.
    pub error: Option<String>,
}

/// Executes `actions` against `cluster` on the calling thread, each at its planned time after
/// `started`, stopping early when `stop` is set (the caller's abort). Returns the log.
pub fn execute(
    cluster: &mut Cluster,
    actions: &[(u64, Action)],
    started: Instant,
    stop: &AtomicBool,
) -> Vec<Executed> {
    let mut log = Vec::new();
    for (planned, action) in actions {
        let due = started + Duration::from_millis(*planned);
        while Instant::now() < due {
            if stop.load(Ordering::Relaxed) {
                return log;
            }
            std::thread::sleep((due - Instant::now()).min(Duration::from_millis(100)));
        }
        let r = match action {
            Action::Kill(n) => cluster.kill9(*n),
            Action::Restart(n) => cluster.restart(*n),
            Action::Pause(n) => cluster.pause(*n),
            Action::Resume(n) => cluster.resume(*n),
            Action::Disconnect(n) => cluster.disconnect(*n),
            Action::Connect(n) => cluster.connect(*n),
            Action::Wipe(n) => cluster.wipe(*n),
        };
        log.push(Executed {
            planned_ms: *planned,
            at_ms: started.elapsed().as_millis() as u64,
            action: action.clone(),
            error: r.err().map(|e| e.to_string()),
        });
    }
    log
}

/// Polls `f` every `every` until it is true or `limit` passed; true if it became true.
pub async fn eventually<F, Fut>(limit: Duration, every: Duration, mut f: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    loop {
        if f().await {
            return true;
        }
        if start.elapsed() >= limit {
            return false;
        }
        tokio::time::sleep(every).await;
    }
}

/// True when every node answers `/health` and sees every member up.
pub async fn all_up(client: &Client, nodes: &[String], ids: &[String]) -> bool {
    for n in nodes {
        let seen = client.members(n).await;
        if !ids.iter().all(|id| seen.iter().any(|(m, s)| m == id && s == "up")) {
            return false;
        }
    }
    true
}

/// True when every node reports no pending hint.
pub async fn no_hints(client: &Client, nodes: &[String]) -> bool {
    for n in nodes {
        if client.hints_pending(n).await != Some(0) {
            return false;
        }
    }
    true
}

/// Reads every key through every node (`local`: each node's own replica), at most
/// [`READBACK_PARALLELISM`] requests at once. Result: key -> node id -> view.
pub async fn read_all(
    client: &Client,
    nodes: &[String],
    ids: &[String],
    keys: &BTreeSet<String>,
    local: bool,
) -> BTreeMap<String, BTreeMap<String, View>> {
    let mut out: BTreeMap<String, BTreeMap<String, View>> = BTreeMap::new();
    let mut tasks = tokio::task::JoinSet::new();
    let jobs: Vec<(String, usize)> =
        keys.iter().flat_map(|k| (0..nodes.len()).map(move |i| (k.clone(), i))).collect();
    let mut jobs = jobs.into_iter();
    loop {
        while tasks.len() < READBACK_PARALLELISM {
            let Some((key, i)) = jobs.next() else { break };
            let (c, node) = (client.clone(), nodes[i].clone());
            tasks.spawn(async move {
                let v = c.view(&node, &key, local).await;
                (key, i, v)
            });
        }
        match tasks.join_next().await {
            Some(Ok((key, i, v))) => {
                out.entry(key).or_default().insert(ids[i].clone(), v);
            }
            Some(Err(_)) => {} // a panicked read task leaves its view missing: unreadable
            None => break,
        }
    }
    out
}

/// Which keys the replicas disagree on: for each key, the views of the nodes in its preference
/// list (`pref` key -> node ids) must be equal (compared as sets of versions).
pub fn disagreements(
    local_views: &BTreeMap<String, BTreeMap<String, View>>,
    pref: &BTreeMap<String, Vec<String>>,
) -> Vec<String> {
    let norm = |v: &View| -> Option<(BTreeSet<BTreeSet<String>>, usize)> {
        match v {
            View::Found { live, delete_markers } => {
                Some((live.iter().cloned().collect(), *delete_markers))
            }
            View::NotFound => Some((BTreeSet::new(), 0)),
            View::Unreadable(_) => None,
        }
    };
    let mut out = Vec::new();
    for (key, views) in local_views {
        let Some(owners) = pref.get(key) else {
            out.push(key.clone());
            continue;
        };
        let seen: Vec<Option<(BTreeSet<BTreeSet<String>>, usize)>> =
            owners.iter().map(|o| views.get(o).and_then(norm)).collect();
        if seen.iter().any(Option::is_none) || seen.windows(2).any(|w| w[0] != w[1]) {
            out.push(key.clone());
        }
    }
    out
}

/// Preference lists of `keys` (from a `?meta=true` read through `node`); keys whose read fails
/// are left out.
pub async fn pref_lists(
    client: &Client,
    node: &str,
    keys: &BTreeSet<String>,
) -> BTreeMap<String, Vec<String>> {
    let mut out = BTreeMap::new();
    for key in keys {
        let path = format!("/buckets/{}/{key}?meta=true", client.bucket);
        if let Ok((_, v)) = client.get_json(node, &path).await
            && let Some(p) = v["pref_list"].as_array()
        {
            out.insert(
                key.clone(),
                p.iter().filter_map(|x| x.as_str().map(str::to_owned)).collect(),
            );
        }
    }
    out
}

/// Counts of operations by outcome.
#[derive(Clone, Debug, Default, Serialize)]
pub struct OpCounts {
    /// Acknowledged.
    pub ok: usize,
    /// Certainly failed.
    pub failed: usize,
    /// Indeterminate.
    pub indeterminate: usize,
}

impl OpCounts {
    /// Counts `ops`.
    pub fn of(ops: &[Op]) -> OpCounts {
        let mut c = OpCounts::default();
        for op in ops {
            match op.outcome {
                Outcome::Ok => c.ok += 1,
                Outcome::Failed => c.failed += 1,
                Outcome::Indeterminate => c.indeterminate += 1,
            }
        }
        c
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn found(elems: &[&str]) -> View {
        View::Found {
            live: elems.iter().map(|e| BTreeSet::from([e.to_string()])).collect(),
            delete_markers: 0,
        }
    }

    #[test]
    fn replicas_must_agree_on_the_preference_list_only() {
        let pref = BTreeMap::from([("k".to_string(), vec!["n1".to_string(), "n2".to_string()])]);
        let agree = BTreeMap::from([(
            "k".to_string(),
            BTreeMap::from([
                ("n1".to_string(), found(&["a", "b"])),
                ("n2".to_string(), found(&["b", "a"])),
                // n3 is not an owner: a fallback's stale copy does not count.
                ("n3".to_string(), View::NotFound),
            ]),
        )]);
        assert!(disagreements(&agree, &pref).is_empty());
        let mut stale = agree.clone();
        stale.get_mut("k").unwrap().insert("n2".to_string(), found(&["a"]));
        assert_eq!(disagreements(&stale, &pref), vec!["k".to_string()]);
        let mut unreadable = agree;
        unreadable.get_mut("k").unwrap().insert("n1".to_string(), View::Unreadable("x".into()));
        assert_eq!(disagreements(&unreadable, &pref).len(), 1);
        assert_eq!(disagreements(&stale, &BTreeMap::new()).len(), 1, "no preference list known");
    }

    #[test]
    fn outcomes_are_counted() {
        let op = |outcome| Op {
            client: 0,
            key: "k".into(),
            kind: OpKind::Delete,
            saw: BTreeSet::new(),
            outcome,
            at_ms: 0,
        };
        let c = OpCounts::of(&[op(Outcome::Ok), op(Outcome::Ok), op(Outcome::Indeterminate)]);
        assert_eq!((c.ok, c.failed, c.indeterminate), (2, 0, 1));
    }
}
