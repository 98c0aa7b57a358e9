//! Crash durability: `kill -9` one node at random moments under load and check its replica.
//!
//! CRASH DURABILITY
//! ================
//! With `--sync always` a replica acknowledges a write only after `fdatasync` (group commit), so
//! whatever a node acknowledged must be in its own replica after any crash. The mode starts a
//! 4-node local cluster with `--sync always`, and for each of `kills` rounds: writers put unique
//! keys through random nodes; after a random delay the victim (`n1`) is killed with SIGKILL in
//! the middle of that traffic; the writers stop; the victim is restarted on its data and must
//! answer `/health` within [`RESTART_LIMIT`]; then every key whose write report lists the victim
//! in `replicas_written` as an owner (not as a hint holder: hints are handed off and deleted) is
//! read from the victim with `?local=true` — its own replica, no coordination, no read repair.
//! A key missing there is a lost acknowledged write. At the end every such key of every round is
//! checked again.
//!
//! The writes' reports also count when their status is 503: a replica listed in
//! `replicas_written` of a failed quorum acknowledged too, and the same promise holds.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;

use crate::client::Client;
use crate::cluster::Cluster;
use crate::history::View;

/// Longest wait for the victim to answer `/health` after a restart.
pub const RESTART_LIMIT: Duration = Duration::from_secs(60);
/// Concurrent writers.
pub const WRITERS: usize = 4;

/// Result of the crash mode.
#[derive(Clone, Debug, Default, Serialize)]
pub struct CrashReport {
    /// Kills done.
    pub kills: usize,
    /// Restarts that answered `/health` in time.
    pub restarts_ok: usize,
    /// Writes sent.
    pub writes: usize,
    /// Writes acknowledged (200).
    pub writes_ok: usize,
    /// Writes the victim acknowledged as an owner replica.
    pub victim_acked: usize,
    /// Of those, missing from the victim's replica right after its restart (or at the end).
    pub lost: Vec<String>,
    /// Keys that could not be read from the victim (no verdict for them).
    pub unreadable: Vec<String>,
    /// Longest time from restart to a 200 on `/health`, in milliseconds.
    pub max_restart_ms: u64,
}

impl CrashReport {
    /// True when every kill was followed by a restart and nothing the victim acknowledged is lost.
    pub fn passed(&self) -> bool {
        self.lost.is_empty() && self.unreadable.is_empty() && self.restarts_ok == self.kills
    }
}

/// Whether a write's JSON report says `victim` stored it as an owner.
fn acked_as_owner(report: &serde_json::Value, victim: &str) -> bool {
    let written = report["replicas_written"]
        .as_array()
        .is_some_and(|a| a.iter().any(|x| x.as_str() == Some(victim)));
    let holder = report["hinted"]
        .as_array()
        .is_some_and(|a| a.iter().any(|h| h["holder"].as_str() == Some(victim)));
    written && !holder
}

/// One writer: unique keys `crash-r<round>-w<writer>-<seq>` through random nodes until `until`.
/// Returns (keys the victim acknowledged as owner, writes sent, writes acknowledged).
async fn writer(
    client: Client,
    nodes: Arc<Vec<String>>,
    victim: String,
    round: usize,
    w: usize,
    seed: u64,
    until: Instant,
) -> (Vec<String>, usize, usize) {
    let mut rng = StdRng::seed_from_u64(seed);
    let (mut acked, mut sent, mut ok) = (Vec::new(), 0, 0);
    for seq in 0..100_000u64 {
        if Instant::now() >= until {
            break;
        }
        let key = format!("crash-r{round}-w{w}-{seq}");
        let node = &nodes[rng.random_range(0..nodes.len())];
        let body = BTreeSet::from([key.clone()]);
        sent += 1;
        if let Ok((status, report)) = client.put_report(node, &key, &body).await {
            if status == 200 {
                ok += 1;
            }
            if acked_as_owner(&report, &victim) {
                acked.push(key);
            }
        }
    }
    (acked, sent, ok)
}

/// Checks `keys` in the victim's own replica; pushes missing/unreadable ones into the report.
async fn verify(client: &Client, victim_http: &str, keys: &[String], report: &mut CrashReport) {
    for key in keys {
        match client.view(victim_http, key, true).await {
            View::Found { live, .. } if live.iter().any(|c| c.contains(key)) => {}
            View::Found { .. } | View::NotFound => {
                if !report.lost.contains(key) {
                    report.lost.push(key.clone());
                }
            }
            View::Unreadable(e) => report.unreadable.push(format!("{key}: {e}")),
        }
    }
}

/// Runs `kills` kill/restart rounds against node 0 of a started, healthy `cluster`.
pub async fn run(
    cluster: &mut Cluster,
    client: &Client,
    kills: usize,
    seed: u64,
    progress: bool,
) -> CrashReport {
    let mut rng = StdRng::seed_from_u64(seed);
    let nodes = Arc::new(cluster.http().to_vec());
    let victim = "n1".to_string();
    let victim_http = nodes[0].clone();
    let mut report = CrashReport::default();
    let mut all_acked: Vec<String> = Vec::new();
    for round in 0..kills {
        // Writers run 0.3-2.3 s; the kill lands 0.2-2 s in, usually mid-traffic.
        let kill_after = Duration::from_millis(rng.random_range(200..2_000));
        let until = Instant::now() + kill_after + Duration::from_millis(300);
        let mut tasks = tokio::task::JoinSet::new();
        for w in 0..WRITERS {
            tasks.spawn(writer(
                client.clone(),
                nodes.clone(),
                victim.clone(),
                round,
                w,
                seed ^ ((round * WRITERS + w) as u64 + 1),
                until,
            ));
        }
        tokio::time::sleep(kill_after).await;
        let killed = cluster.kill9(0);
        report.kills += usize::from(killed.is_ok());
        let mut acked = Vec::new();
        while let Some(r) = tasks.join_next().await {
            if let Ok((a, sent, ok)) = r {
                acked.extend(a);
                report.writes += sent;
                report.writes_ok += ok;
            }
        }
        if let Err(e) = killed {
            report.unreadable.push(format!("round {round}: kill failed: {e}"));
            break;
        }
        let restarted = Instant::now();
        if cluster.restart(0).is_err() {
            break;
        }
        let up = crate::workload::eventually(RESTART_LIMIT, Duration::from_millis(50), || {
            client.healthy(&victim_http)
        })
        .await;
        if !up {
            break;
        }
        report.restarts_ok += 1;
        report.max_restart_ms = report.max_restart_ms.max(restarted.elapsed().as_millis() as u64);
        verify(client, &victim_http, &acked, &mut report).await;
        report.victim_acked += acked.len();
        if progress {
            eprintln!(
                "round {round}: killed after {} ms, victim acknowledged {} keys, lost so far {}",
                kill_after.as_millis(),
                acked.len(),
                report.lost.len()
            );
        }
        all_acked.extend(acked);
    }
    // Final pass over every round (a key could only vanish later through a bug in recovery of
    // a later crash).
    let before = report.lost.len();
    verify(client, &victim_http, &all_acked, &mut report).await;
    if progress && report.lost.len() > before {
        eprintln!("final pass found {} more lost keys", report.lost.len() - before);
    }
    report
}

#[cfg(test)]
mod tests {
    use super::acked_as_owner;
    use serde_json::json;

    #[test]
    fn only_owner_acknowledgements_count() {
        let owner = json!({"replicas_written": ["n1", "n2"], "hinted": []});
        assert!(acked_as_owner(&owner, "n1"));
        let holder =
            json!({"replicas_written": ["n2", "n1"], "hinted": [{"owner": "n3", "holder": "n1"}]});
        assert!(!acked_as_owner(&holder, "n1"));
        assert!(!acked_as_owner(&json!({"replicas_written": ["n2"]}), "n1"));
        assert!(!acked_as_owner(&json!({"error": {}}), "n1"));
    }
}
