//! `--membership`: an operator changing the member set during the fault run.
//!
//! The cluster has a 5th node started without `--members` (a gateway). A few seconds into the
//! workload the driver adds it (`POST /cluster/members/n5` through any node that answers), waits
//! until every node it can reach follows the change's final version, then decommissions `n4`
//! (`DELETE /cluster/members/n4`) and waits again. Faults keep running throughout, on every node:
//! a refusal (a change still in progress, no majority, the node to decommission down) is retried
//! every second; an answer lost with a killed node is recovered from the layouts (`GET
//! /cluster`): the change is then seen committed.

use std::time::{Duration, Instant};

use serde_json::Value;

use crate::client::Client;

/// What the driver did, in order, with times since the workload started.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Log {
    /// One line per event.
    pub events: Vec<String>,
    /// Every change completed.
    pub completed: bool,
}

/// The change and where it stands in the cluster's layouts.
enum Seen {
    /// Not committed (as far as any node tells).
    No,
    /// Committed at this version (its `syncing` version).
    At(u64),
}

/// Whether `node`'s layout shows `change` (e.g. `add n5`) committed, and at which version.
fn seen(view: &Value, change: &str, node: &str, adding: bool) -> Seen {
    let l = &view["layout"];
    let t = &l["transition"];
    if t["change"].as_str() == Some(change) {
        return Seen::At(t["started"].as_u64().unwrap_or(0));
    }
    let member = l["members"].as_array().is_some_and(|m| m.iter().any(|x| x == node));
    if member == adding && !l.is_null() {
        // Complete already: any version at or below the current one will do for waiting.
        return Seen::At(l["version"].as_u64().unwrap_or(0).saturating_sub(2));
    }
    Seen::No
}

/// Runs the changes until `deadline`.
pub async fn drive(client: Client, nodes: Vec<String>, started: Instant, deadline: Instant) -> Log {
    let mut log = Log::default();
    let note = |log: &mut Log, what: String| {
        let line = format!("{:>6} ms  {what}", started.elapsed().as_millis());
        eprintln!("membership: {what}");
        log.events.push(line);
    };
    tokio::time::sleep(Duration::from_secs(5)).await;
    let changes = [("POST", "n5", true), ("DELETE", "n4", false)];
    for (method, node, adding) in changes {
        let change = if adding { format!("add {node}") } else { format!("decommission {node}") };
        let path = format!("/cluster/members/{node}");
        let mut version = None;
        let mut turn = 0;
        while version.is_none() && Instant::now() < deadline {
            let at = &nodes[turn % nodes.len()];
            turn += 1;
            let answer = if method == "POST" {
                client.post_json(at, &path).await
            } else {
                client.delete_json(at, &path).await
            };
            match answer {
                Ok((202, v)) => {
                    let ver = v["layout_version"].as_u64().unwrap_or(0);
                    note(&mut log, format!("{change} committed at v{ver} (asked {at})"));
                    version = Some(ver);
                }
                other => {
                    // The answer may have been lost with a killed node: ask the layouts.
                    for n in &nodes {
                        if let Ok((200, view)) = client.get_json(n, "/cluster").await
                            && let Seen::At(v) = seen(&view, &change, node, adding)
                        {
                            note(&mut log, format!("{change} seen committed at v{v}"));
                            version = Some(v);
                            break;
                        }
                    }
                    if version.is_none() {
                        let why = match other {
                            Ok((s, v)) => format!("{s} {}", v["error"]["code"]),
                            Err(e) => e.to_string(),
                        };
                        note(&mut log, format!("{change} refused ({why}); retrying"));
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                }
            }
        }
        let Some(v) = version else {
            note(&mut log, format!("{change}: not committed before the deadline"));
            return log;
        };
        if !wait_complete(&client, &nodes, v + 2, deadline).await {
            note(&mut log, format!("{change}: not complete before the deadline"));
            return log;
        }
        note(&mut log, format!("{change} complete (v{})", v + 2));
    }
    log.completed = true;
    log
}

/// Waits until every node that answers follows version `target` or later with no change in
/// progress (and at least one answers).
async fn wait_complete(client: &Client, nodes: &[String], target: u64, deadline: Instant) -> bool {
    while Instant::now() < deadline {
        let mut answered = 0;
        let mut done = true;
        for n in nodes {
            if let Ok((200, v)) = client.get_json(n, "/cluster").await {
                answered += 1;
                let l = &v["layout"];
                if l["version"].as_u64().unwrap_or(0) < target || !l["transition"].is_null() {
                    done = false;
                }
            }
        }
        if answered > 0 && done {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    false
}
