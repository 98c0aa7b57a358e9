//! Elastic membership on real `cairn node` processes: a node added while clients write, a member
//! decommissioned, a dead member force-removed; after each change every key is where the new
//! layout says (checked in each node's own replica, `?local=true`), and nothing acknowledged is
//! lost.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::{Duration, Instant};

use serde_json::Value;
use support::Cluster;

/// Longest wait for one change to complete.
const CHANGE_BOUND: Duration = Duration::from_secs(90);

async fn cluster_view(c: &Cluster, node: usize) -> Value {
    c.get(&c.http[node], "/cluster").await.map(|(_, v)| v).unwrap_or(Value::Null)
}

/// Sends a change to `node`'s admin API; returns the committed layout version.
async fn change(c: &Cluster, node: usize, method: reqwest::Method, path: &str) -> u64 {
    let r = c.client.request(method, c.url(node, path)).send().await.unwrap();
    let status = r.status().as_u16();
    let v: Value = r.json().await.unwrap();
    assert_eq!(status, 202, "{path}: {v}");
    assert_eq!(v["success"], true);
    assert!(v["partitions_to_move"].as_u64().unwrap() >= v["minimum_moves"].as_u64().unwrap());
    v["layout_version"].as_u64().unwrap()
}

/// Waits until every node in `nodes` follows version `version + 2` with no change in progress.
async fn wait_complete(c: &Cluster, nodes: &[usize], version: u64) {
    let start = Instant::now();
    loop {
        let mut done = true;
        for &i in nodes {
            let v = cluster_view(c, i).await;
            let l = &v["layout"];
            if l["version"].as_u64().unwrap_or(0) < version + 2 || !l["transition"].is_null() {
                done = false;
            }
        }
        if done {
            return;
        }
        assert!(
            start.elapsed() < CHANGE_BOUND,
            "the change committed at v{version} did not complete: {}",
            cluster_view(c, nodes[0]).await
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Which of `nodes` hold `key` in their own replica.
async fn holders(c: &Cluster, nodes: &[usize], key: &str) -> Vec<usize> {
    let mut out = Vec::new();
    for &i in nodes {
        let r =
            c.client.get(c.url(i, &format!("/buckets/bkt/{key}?local=true"))).send().await.unwrap();
        if r.status().as_u16() == 200 {
            out.push(i);
        }
    }
    out
}

/// Runs the `cairn` binary with `args` (the operator's CLI).
async fn cli(args: &[&str]) -> std::process::Output {
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    tokio::task::spawn_blocking(move || {
        std::process::Command::new(env!("CARGO_BIN_EXE_cairn")).args(&args).output().unwrap()
    })
    .await
    .unwrap()
}

async fn put(c: &Cluster, node: usize, key: &str, body: &str) -> u16 {
    c.client
        .put(c.url(node, &format!("/buckets/bkt/{key}")))
        .body(body.to_owned())
        .send()
        .await
        .map(|r| r.status().as_u16())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn add_decommission_and_force_remove_move_every_key_to_its_new_owners() {
    // n1..n4 found the cluster; n5 starts without --members and joins as a gateway.
    let mut c = Cluster::start_with_spares(4, 1, &[]).await;
    let v = cluster_view(&c, 4).await;
    assert_eq!(v["layout"]["version"], 1, "the spare learnt the layout: {v}");
    assert_eq!(
        v["members"].as_array().unwrap().iter().find(|m| m["id"] == "n5").unwrap()["role"],
        "gateway"
    );
    c.create_bucket(0, "bkt", "").await;
    let mut acked: Vec<String> = Vec::new();
    for k in 0..120 {
        let key = format!("k{k}");
        if put(&c, k % 5, &key, &format!("v-{key}")).await == 200 {
            acked.push(key);
        }
    }
    assert_eq!(acked.len(), 120, "every write through any node (the gateway too) succeeds");

    // Adding a node that is not connected is refused.
    let r = c.client.post(c.url(0, "/cluster/members/n9")).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 404);

    // Add n5 while writing.
    let v2 = change(&c, 1, reqwest::Method::POST, "/cluster/members/n5").await;
    // Asked of the node that took the first change (it has adopted the new layout before it
    // answered): another node may still be a moment behind, and there the same request is
    // decided again by Paxos and answered 202 with the layout already chosen (idempotent).
    let r = c.client.post(c.url(1, "/cluster/members/n5")).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 409, "a second change waits for the first");
    for k in 120..180 {
        let key = format!("k{k}");
        if put(&c, k % 5, &key, &format!("v-{key}")).await == 200 {
            acked.push(key);
        }
    }
    wait_complete(&c, &[0, 1, 2, 3, 4], v2).await;
    let mut on_n5 = 0;
    for key in &acked {
        let h = holders(&c, &[0, 1, 2, 3, 4], key).await;
        assert!(h.len() >= 3, "{key} is on {h:?} after adding n5");
        on_n5 += usize::from(h.contains(&4));
    }
    // n5 owns about 3/5 of the partitions: it must hold about that share of the keys.
    assert!(on_n5 * 5 >= acked.len() * 2, "n5 holds only {on_n5} of {} keys", acked.len());

    // Decommission n2 with the CLI, as an operator would: afterwards the remaining four hold
    // every key three times.
    let out =
        cli(&["cluster", "remove", "n2", "--url", &c.url(3, ""), "--wait", "--timeout", "90s"])
            .await;
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(said.contains("decommission n2: committed") && said.contains("complete"), "{said}");
    let out = cli(&["cluster", "status", "--url", &c.url(0, "")]).await;
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        said.contains("members n1, n3, n4, n5") && said.contains("no change in progress"),
        "{said}"
    );
    let out = cli(&["cluster", "remove", "n9", "--url", &c.url(0, "")]).await;
    assert!(!out.status.success(), "removing a stranger fails");
    assert!(String::from_utf8_lossy(&out.stderr).contains("InvalidChange"));
    let v = cluster_view(&c, 0).await;
    let members: Vec<&str> =
        v["layout"]["members"].as_array().unwrap().iter().map(|m| m.as_str().unwrap()).collect();
    assert_eq!(members, ["n1", "n3", "n4", "n5"]);
    for key in &acked {
        let h = holders(&c, &[0, 2, 3, 4], key).await;
        assert!(h.len() >= 3, "{key} is on {h:?} among the members after decommissioning n2");
    }
    // n2 can go now: nothing is lost.
    let _ = c.stop(1);
    for key in acked.iter().step_by(7) {
        let (s, body, _) = c.read(0, &format!("/buckets/bkt/{key}")).await;
        assert_eq!((s, body), (200, format!("v-{key}").into_bytes()), "{key} after n2 left");
    }

    // n3 dies for good: force-remove it. The three left each hold every key (N = 3).
    c.kill9(2);
    let v4 = change(&c, 0, reqwest::Method::DELETE, "/cluster/members/n3?force=true").await;
    wait_complete(&c, &[0, 3, 4], v4).await;
    for key in &acked {
        let h = holders(&c, &[0, 3, 4], key).await;
        assert_eq!(h, [0, 3, 4], "{key} after force-removing n3");
    }
    let v = cluster_view(&c, 4).await;
    assert_eq!(v["handoff"]["partitions_pending"], 0, "{v}");
    assert!(c.log(0).contains("layout adopted"), "the log tells about layout changes");

    // A restart with the founding --members keeps the stored layout, and says so.
    let _ = c.stop(0);
    c.restart(0).await;
    let v = cluster_view(&c, 0).await;
    assert_eq!(v["layout"]["version"], v4 + 2, "{v}");
    assert!(c.log(0).contains("--members differs from the layout stored"), "{}", c.log(0));
    let (s, body, _) = c.read(0, &format!("/buckets/bkt/{}", acked[0])).await;
    assert_eq!((s, body), (200, format!("v-{}", acked[0]).into_bytes()));
}
