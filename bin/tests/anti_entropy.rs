//! Active anti-entropy on real `cairn node` processes: a node whose disk is replaced (stopped,
//! its data directory deleted, started again with the same id) gets every key it owns back from
//! its peers with no client traffic at all — only the nodes' own exchanges; and `/cluster` and
//! `/metrics` report them.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::{Duration, Instant};

use serde_json::Value;
use support::Cluster;

/// Keys written before the disk is replaced.
const KEYS: usize = 150;
/// The interval the test cluster runs anti-entropy at.
const INTERVAL_S: u64 = 2;

/// Which of the four nodes hold `key` in their own replica (`?local=true`: no coordination, no
/// read repair).
async fn holders(c: &Cluster, key: &str) -> Vec<usize> {
    let mut out = Vec::new();
    for i in 0..c.ids.len() {
        let r =
            c.client.get(c.url(i, &format!("/buckets/bkt/{key}?local=true"))).send().await.unwrap();
        if r.status().as_u16() == 200 {
            out.push(i);
        }
    }
    out
}

/// Keys held by fewer than three nodes.
async fn under_replicated(c: &Cluster) -> Vec<String> {
    let mut out = Vec::new();
    for k in 0..KEYS {
        let key = format!("k{k}");
        if holders(c, &key).await.len() < 3 {
            out.push(key);
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replaced_disk_gets_every_key_back_without_client_traffic() {
    let interval = format!("{INTERVAL_S}s");
    let mut c = Cluster::start(4, &["--anti-entropy-interval", &interval]).await;
    c.create_bucket(0, "bkt", "").await;
    for k in 0..KEYS {
        let key = format!("k{k}");
        let (s, _) =
            c.put(k % 4, &format!("/buckets/bkt/{key}"), format!("v-{key}").as_bytes(), None).await;
        assert_eq!(s, 200, "{key}");
    }
    // W = 2 of N = 3: a write may miss its slowest replica; anti-entropy fills it in.
    c.eventually("every key on three nodes", async |c| under_replicated(c).await.is_empty()).await;

    // Replace n4's disk: stop it, delete its data directory, start it with the same id.
    let held_before: usize = {
        let mut n = 0;
        for k in 0..KEYS {
            n += usize::from(holders(&c, &format!("k{k}")).await.contains(&3));
        }
        n
    };
    assert!(held_before > KEYS / 2, "n4 owns about 3/4 of the keys; it held {held_before}");
    assert!(c.stop(3).success());
    std::fs::remove_dir_all(c.data_dir(3)).unwrap();
    c.restart(3).await;
    let restarted = Instant::now();
    let log = c.log(3);
    let built = log.lines().rfind(|l| l.contains("anti-entropy trees built")).unwrap();
    assert!(built.contains("keys=0"), "n4 came back empty: {built}");

    // No client traffic from here on: only the nodes' exchanges move data.
    let bound = Duration::from_secs(2 * INTERVAL_S + 30);
    loop {
        let left = under_replicated(&c).await;
        if left.is_empty() {
            break;
        }
        assert!(
            restarted.elapsed() < bound,
            "{} keys still on fewer than 3 nodes {:?} after n4's disk was replaced: {:?}",
            left.len(),
            restarted.elapsed(),
            &left[..left.len().min(5)]
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    eprintln!("n4's {held_before} keys restored in {:?}", restarted.elapsed());
    // Exactly the keys it held before, with their content.
    let mut back = 0;
    for k in 0..KEYS {
        let key = format!("k{k}");
        let (s, body, _) = c.read(3, &format!("/buckets/bkt/{key}?local=true")).await;
        if s == 200 {
            assert_eq!(body, format!("v-{key}").into_bytes(), "{key} on n4");
            back += 1;
        }
    }
    assert_eq!(back, held_before, "n4 holds the keys it owns again");

    // What the operator sees.
    let mut repaired = 0;
    for i in 0..4 {
        let (s, v) = c.get(&c.http[i], "/cluster").await.unwrap();
        assert_eq!(s, 200);
        let a = &v["anti_entropy"];
        assert_eq!(a["enabled"], true, "{a}");
        assert_eq!(a["interval_s"].as_f64(), Some(INTERVAL_S as f64));
        assert!(a["partitions_owned"].as_u64().unwrap() > 0, "{a}");
        assert!(a["exchanges"].as_u64().unwrap() > 0, "{a}");
        assert!(a["tree"]["memory_bytes"].as_u64().unwrap() > 0, "{a}");
        repaired += a["keys_repaired"].as_u64().unwrap();
    }
    assert!(repaired >= held_before as u64, "keys repaired: {repaired}");
    let (_, v) = c.get(&c.http[3], "/cluster").await.unwrap();
    let owned = v["anti_entropy"]["partitions_owned"].as_u64().unwrap();
    let last: &serde_json::Map<String, Value> =
        v["anti_entropy"]["last_exchange_age_s"].as_object().unwrap();
    assert!(!last.is_empty() && last.len() as u64 <= owned, "{v}");
    let metrics = c.client.get(c.url(0, "/metrics")).send().await.unwrap().text().await.unwrap();
    for name in [
        "cairn_aae_exchanges_total",
        "cairn_aae_keys_repaired_total",
        "cairn_aae_tree_memory_bytes",
    ] {
        assert!(metrics.contains(name), "{name} missing from /metrics");
    }
}

/// Sum of one `/cluster` number over the nodes.
async fn cluster_sum(c: &Cluster, path: &[&str]) -> u64 {
    let mut total = 0;
    for i in 0..c.ids.len() {
        if let Ok((_, v)) = c.get(&c.http[i], "/cluster").await {
            let mut x = &v;
            for p in path {
                x = &x[*p];
            }
            total += x.as_u64().unwrap_or(0);
        }
    }
    total
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tombstones_are_collected_after_the_grace_and_deleted_buckets_are_reclaimed() {
    let mut c =
        Cluster::start(4, &["--tombstone-grace", "2s", "--anti-entropy-interval", "2s"]).await;
    c.create_bucket(0, "bkt", "").await;
    for k in 0..40 {
        let key = format!("k{k}");
        let (s, _) = c.put(k % 4, &format!("/buckets/bkt/{key}"), key.as_bytes(), None).await;
        assert_eq!(s, 200, "{key}");
    }
    c.eventually("every object on three nodes", async |c| {
        cluster_sum(c, &["anti_entropy", "tree", "keys"]).await == 120
    })
    .await;
    for k in 0..20 {
        let r = c.client.delete(c.url(k % 4, &format!("/buckets/bkt/k{k}"))).send().await.unwrap();
        assert_eq!(r.status().as_u16(), 200, "delete k{k}");
    }
    // Right after the deletes every owner keeps a tombstone...
    assert!(cluster_sum(&c, &["anti_entropy", "tree", "keys"]).await >= 110);
    // ...and once the grace has passed and every node confirmed, they are gone: 20 live
    // objects × 3 replicas remain.
    c.eventually("tombstones collected", async |c| {
        cluster_sum(c, &["anti_entropy", "tree", "keys"]).await == 60
    })
    .await;
    assert!(cluster_sum(&c, &["tombstones", "collected"]).await >= 60);
    for k in 0..20 {
        let (s, _, _) = c.read((k + 1) % 4, &format!("/buckets/bkt/k{k}")).await;
        assert_eq!(s, 404, "k{k} stays deleted");
    }
    // A collected key written again is an ordinary new object, on every replica.
    let (s, _) = c.put(1, "/buckets/bkt/k3", b"again", None).await;
    assert_eq!(s, 200);
    let (s, body, _) = c.read(2, "/buckets/bkt/k3").await;
    assert_eq!((s, body), (200, b"again".to_vec()));
    c.eventually("the new k3 on three nodes", async |c| {
        cluster_sum(c, &["anti_entropy", "tree", "keys"]).await == 63
    })
    .await;

    // A deleted bucket's objects leave every node; a new bucket of the same name keeps its own.
    c.create_bucket(0, "gone", "").await;
    for k in 0..15 {
        let (s, _) = c.put(k % 4, &format!("/buckets/gone/g{k}"), &[7u8; 32 << 10], None).await;
        assert_eq!(s, 200);
    }
    c.eventually("the bucket's objects on three nodes", async |c| {
        cluster_sum(c, &["anti_entropy", "tree", "keys"]).await == 63 + 45
    })
    .await;
    let r = c.client.delete(c.url(1, "/buckets/gone")).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 200);
    tokio::time::sleep(Duration::from_millis(100)).await;
    c.create_bucket(2, "gone", "").await;
    let (s, _) = c.put(3, "/buckets/gone/fresh", b"new", None).await;
    assert_eq!(s, 200);
    c.eventually("the deleted incarnation reclaimed", async |c| {
        cluster_sum(c, &["anti_entropy", "tree", "keys"]).await == 63 + 3
    })
    .await;
    assert!(cluster_sum(&c, &["tombstones", "objects_reclaimed"]).await >= 45);
    let (s, body, _) = c.read(0, "/buckets/gone/fresh").await;
    assert_eq!((s, body), (200, b"new".to_vec()));

    // The space comes back at compaction: stop a node, compact its directory offline.
    let before = dir_bytes(&c.data_dir(0));
    assert!(c.stop(0).success());
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_cairn"))
        .args(["compact", "--data-dir"])
        .arg(c.data_dir(0))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let after = dir_bytes(&c.data_dir(0));
    eprintln!("n1's data directory: {before} bytes before compaction, {after} after");
    assert!(after < before, "compaction returned no space: {before} -> {after}");
}

fn dir_bytes(path: &std::path::Path) -> u64 {
    let mut total = 0;
    for e in std::fs::read_dir(path).unwrap().flatten() {
        let m = e.metadata().unwrap();
        total += if m.is_dir() { dir_bytes(&e.path()) } else { m.len() };
    }
    total
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_added_later_gets_its_disk_back_when_restarted_without_members() {
    // n1..n3 found the cluster; n4 joins later, so --members never named it.
    let interval = format!("{INTERVAL_S}s");
    let mut c = Cluster::start_with_spares(3, 1, &["--anti-entropy-interval", &interval]).await;
    c.create_bucket(0, "bkt", "").await;
    for k in 0..60 {
        let key = format!("k{k}");
        let (s, _) = c.put(k % 3, &format!("/buckets/bkt/{key}"), key.as_bytes(), None).await;
        assert_eq!(s, 200);
    }
    let r = c.client.post(c.url(0, "/cluster/members/n4")).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 202);
    c.eventually("n4 a member, the change complete", async |c| {
        let Ok((_, v)) = c.get(&c.http[3], "/cluster").await else { return false };
        v["layout"]["transition"].is_null()
            && v["layout"]["members"].as_array().is_some_and(|m| m.len() == 4)
            && v["anti_entropy"]["tree"]["keys"].as_u64().unwrap_or(0) > 0
    })
    .await;
    // The change completes only once n4 pulled its partitions: it holds every key it owns.
    let (_, v) = c.get(&c.http[3], "/cluster").await.unwrap();
    let version = v["layout"]["version"].as_u64().unwrap();
    let held = v["anti_entropy"]["tree"]["keys"].as_u64().unwrap();
    assert!(held > 20, "n4 owns about 3/4 of the keys; it holds {held}");

    // n4's disk is replaced; it starts as it did when it joined (no --members), learns the
    // current layout from its peers, and gets its keys back.
    assert!(c.stop(3).success());
    std::fs::remove_dir_all(c.data_dir(3)).unwrap();
    c.restart(3).await;
    c.eventually("n4 follows the current layout and holds its keys again", async |c| {
        let Ok((_, v)) = c.get(&c.http[3], "/cluster").await else { return false };
        v["layout"]["version"].as_u64() == Some(version)
            && v["anti_entropy"]["tree"]["keys"].as_u64() == Some(held)
    })
    .await;
    let (_, v) = c.get(&c.http[3], "/cluster").await.unwrap();
    assert_eq!(v["anti_entropy"]["tree"]["build_keys"], 0, "n4 restarted empty: {v}");
    let (s, body, _) = c.read(3, "/buckets/bkt/k7").await;
    assert_eq!((s, body), (200, b"k7".to_vec()));
}
