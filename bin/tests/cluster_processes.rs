//! Issue-level behaviour on a cluster of real `cairn node` processes on 127.0.0.1: the original
//! service's flow, kill -9 with hinted handoff, two owners down, siblings and lww, SIGSTOP, and
//! bad input against a live cluster.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::Duration;

use serde_json::Value;
use support::Cluster;

fn names(v: &Value) -> Vec<String> {
    let mut out: Vec<String> =
        v.as_array().unwrap().iter().map(|x| x.as_str().unwrap().to_owned()).collect();
    out.sort();
    out
}

fn idx(c: &Cluster, id: &str) -> usize {
    c.ids.iter().position(|i| i == id).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_original_services_flow_works_with_curl_like_requests() {
    let c = Cluster::start(4, &[]).await;
    let created = c.create_bucket(1, "photos", "").await;
    assert_eq!(created["success"], true);

    // Multipart upload with the original field name, through another node.
    let content: Vec<u8> = (0..100_000u32).map(|i| (i * 7 % 251) as u8).collect();
    let form = reqwest::multipart::Form::new().part(
        "file_content",
        reqwest::multipart::Part::bytes(content.clone()).file_name("cat.jpg"),
    );
    let r = c.client.post(c.url(2, "/buckets/photos/files")).multipart(form).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["success"], true);
    let file = &v["files"][0];
    assert_eq!(file["name"], "cat.jpg");
    assert_eq!(file["size"], 100_000);
    assert_eq!(file["pref_list"].as_array().unwrap().len(), 3);
    assert!(file["replicas_written"].as_array().unwrap().len() >= 2);
    assert!(file["vector_clocks"].as_object().unwrap().len() >= 2);
    let coordinator = file["node"].as_str().unwrap();
    assert!(file["pref_list"].as_array().unwrap().iter().any(|p| p == coordinator));

    // Read back identical bytes from every node.
    for i in 0..4 {
        let (s, body, ctx) = c.read(i, "/buckets/photos/cat.jpg").await;
        assert_eq!(s, 200);
        assert!(body == content, "node {i} returned different bytes");
        assert!(ctx.is_some());
    }
    // Delete the file: 404 after, from any node.
    let r = c.client.delete(c.url(3, "/buckets/photos/cat.jpg")).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 200);
    for i in 0..4 {
        assert_eq!(c.read(i, "/buckets/photos/cat.jpg").await.0, 404);
    }
    // Delete the bucket: it is gone everywhere, and a re-created one is empty.
    let r = c.client.delete(c.url(0, "/buckets/photos")).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 200);
    for i in 0..4 {
        assert_eq!(c.get(&c.http[i], "/buckets/photos").await.unwrap().0, 404);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_one_node_writes_are_hinted_and_reach_it_when_it_returns() {
    let mut c = Cluster::start(4, &[]).await;
    c.create_bucket(0, "bkt", "").await;
    c.kill9(3);
    c.wait_status(3, "down").await;

    let mut hinted = 0;
    let mut owned_by_n4 = Vec::new();
    for k in 0..24 {
        let (s, v) = c
            .put(k % 3, &format!("/buckets/bkt/k{k}"), format!("value {k}").as_bytes(), None)
            .await;
        assert_eq!(s, 200, "write {k} failed with n4 down: {v}");
        let answered = v["hinted"].as_array().unwrap().iter().any(|h| h["owner"] == "n4");
        let still_writing = v["pending"].as_array().unwrap().iter().any(|p| p["hint_for"] == "n4");
        if answered {
            hinted += 1;
        }
        if names(&v["pref_list"]).contains(&"n4".to_owned()) {
            assert!(answered || still_writing, "no fallback stands in for n4: {v}");
        }
        if names(&v["pref_list"]).contains(&"n4".to_owned()) {
            owned_by_n4.push(k);
        }
        assert!(!names(&v["replicas_written"]).contains(&"n4".to_owned()));
    }
    assert!(!owned_by_n4.is_empty());
    // The answer reports the replicas that acknowledged before it was sent (W plus a short grace);
    // on a loaded machine a fallback can acknowledge just after: it is then listed as `pending`
    // with `hint_for`. That every one of these writes reaches n4 is checked below.
    assert!(hinted <= owned_by_n4.len(), "{hinted} of {}", owned_by_n4.len());
    for k in 0..24 {
        let (s, body, _) = c.read((k + 1) % 3, &format!("/buckets/bkt/k{k}")).await;
        assert_eq!((s, body), (200, format!("value {k}").into_bytes()));
    }

    // Hints survive a restart of their holder: restart every other node (SIGTERM, then start)
    // before n4 comes back.
    for holder in 0..3 {
        assert!(c.stop(holder).success());
        c.restart(holder).await;
    }
    c.restart(3).await;
    c.wait_all_up().await;
    c.wait_no_hints().await;
    for k in &owned_by_n4 {
        let (s, body, _) = c.read(3, &format!("/buckets/bkt/k{k}?local=true")).await;
        assert_eq!((s, body), (200, format!("value {k}").into_bytes()), "n4 missed k{k}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_owners_down_a_fallback_takes_the_write_and_both_converge() {
    let mut c = Cluster::start(4, &[]).await;
    c.create_bucket(0, "bkt", "").await;
    let (s, v) = c.put(0, "/buckets/bkt/key", b"first", None).await;
    assert_eq!(s, 200);
    let pref = v["pref_list"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_str().unwrap().to_owned())
        .collect::<Vec<_>>();
    let (a, b) = (idx(&c, &pref[0]), idx(&c, &pref[1]));
    let alive = idx(&c, &pref[2]);
    let spare = (0..4).find(|i| ![a, b, alive].contains(i)).unwrap();
    c.wait_no_hints().await;
    c.kill9(a);
    c.kill9(b);
    c.wait_status(a, "down").await;
    c.wait_status(b, "down").await;

    let (_, _, ctx) = c.read(spare, "/buckets/bkt/key").await;
    let (s, v) = c.put(spare, "/buckets/bkt/key", b"second", ctx.as_deref()).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(names(&v["replicas_written"]), {
        let mut w = vec![c.ids[alive].clone(), c.ids[spare].clone()];
        w.sort();
        w
    });
    let hinted_owners: Vec<&str> =
        v["hinted"].as_array().unwrap().iter().map(|h| h["owner"].as_str().unwrap()).collect();
    assert!(
        hinted_owners.contains(&c.ids[a].as_str()) && hinted_owners.contains(&c.ids[b].as_str()),
        "{v}"
    );

    c.restart(a).await;
    c.restart(b).await;
    c.wait_all_up().await;
    c.wait_no_hints().await;
    for owner in [a, b] {
        let (s, body, _) = c.read(owner, "/buckets/bkt/key?local=true").await;
        assert_eq!(
            (s, body.as_slice()),
            (200, &b"second"[..]),
            "{} did not converge",
            c.ids[owner]
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_blind_writes_are_siblings_until_a_context_write_and_lww_keeps_one() {
    let c = Cluster::start(4, &[]).await;
    c.create_bucket(0, "sib", "").await;
    c.create_bucket(0, "lww", "?conflict=lww").await;
    for bucket in ["sib", "lww"] {
        let mut tasks = Vec::new();
        for i in 0..4 {
            let client = c.client.clone();
            let url = c.url(i, &format!("/buckets/{bucket}/hot"));
            tasks.push(tokio::spawn(async move {
                client.put(url).body(format!("writer {i}")).send().await.unwrap().status().as_u16()
            }));
        }
        for t in tasks {
            assert_eq!(t.await.unwrap(), 200);
        }
    }
    // siblings bucket: 300 with every value.
    let r = c.client.get(c.url(2, "/buckets/sib/hot")).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 300);
    let ctx = r.headers()["x-cairn-context"].to_str().unwrap().to_owned();
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["siblings"].as_array().unwrap().len(), 4, "{v}");
    // A write with that context leaves one version.
    let (s, _) = c.put(3, "/buckets/sib/hot", b"resolved", Some(&ctx)).await;
    assert_eq!(s, 200);
    let (s, body, _) = c.read(1, "/buckets/sib/hot").await;
    assert_eq!((s, body.as_slice()), (200, &b"resolved"[..]));
    // lww bucket: one value, one of those written.
    let (s, body, _) = c.read(1, "/buckets/lww/hot").await;
    assert_eq!(s, 200);
    assert!(String::from_utf8(body).unwrap().starts_with("writer "));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_node_is_declared_down_and_recovers_without_loss() {
    let c = Cluster::start(4, &[]).await;
    c.create_bucket(0, "bkt", "").await;
    c.pause(1);
    c.wait_status(1, "down").await;
    for k in 0..12 {
        let node = [0, 2, 3][k % 3];
        let (s, v) =
            c.put(node, &format!("/buckets/bkt/p{k}"), format!("p{k}").as_bytes(), None).await;
        assert_eq!(s, 200, "{v}");
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    c.resume(1);
    c.wait_status(1, "up").await;
    c.wait_no_hints().await;
    for k in 0..12 {
        // R=3: every owner must have it.
        let (s, body, _) = c.read(1, &format!("/buckets/bkt/p{k}?r=3")).await;
        assert_eq!((s, body), (200, format!("p{k}").into_bytes()));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_the_right_error_and_stores_nothing() {
    let c = Cluster::start(4, &["--max-object-size", "1000"]).await;
    c.create_bucket(0, "good", "").await;
    let code = |v: &Value| v["error"]["code"].as_str().unwrap_or("").to_owned();
    let cases: Vec<(reqwest::Method, &str, Vec<u8>, u16, &str)> = vec![
        (reqwest::Method::POST, "/buckets/Upper", vec![], 400, "InvalidBucketName"),
        (reqwest::Method::POST, "/buckets/192.168.1.1", vec![], 400, "InvalidBucketName"),
        (
            reqwest::Method::POST,
            "/buckets/aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
            vec![],
            400,
            "InvalidBucketName",
        ),
        (reqwest::Method::POST, "/buckets/%2E%2E%2Fetc", vec![], 400, "InvalidBucketName"),
        (reqwest::Method::POST, "/buckets/good", vec![], 409, "BucketAlreadyExists"),
        (reqwest::Method::PUT, "/buckets/good/a%00b", b"x".to_vec(), 400, "InvalidObjectName"),
        (reqwest::Method::PUT, "/buckets/good/%FF%FE", b"x".to_vec(), 400, "InvalidObjectName"),
        (reqwest::Method::PUT, "/buckets/good/big", vec![7u8; 1001], 413, "EntityTooLarge"),
        (reqwest::Method::PUT, "/buckets/good/x?w=4", b"x".to_vec(), 400, "InvalidArgument"),
        (reqwest::Method::PUT, "/buckets/good/x?w=0", b"x".to_vec(), 400, "InvalidArgument"),
        (reqwest::Method::GET, "/buckets/good/x?r=9", vec![], 400, "InvalidArgument"),
        (reqwest::Method::PUT, "/buckets/nope/x", b"x".to_vec(), 404, "NoSuchBucket"),
        (reqwest::Method::GET, "/buckets/nope", vec![], 404, "NoSuchBucket"),
        (reqwest::Method::POST, "/buckets/good/files", b"not multipart".to_vec(), 400, ""),
    ];
    for (method, path, body, status, want) in cases {
        for node in [0, 3] {
            let r = c
                .client
                .request(method.clone(), c.url(node, path))
                .body(body.clone())
                .send()
                .await
                .unwrap();
            let s = r.status().as_u16();
            let v: Value = r.json().await.unwrap_or(Value::Null);
            assert_eq!(s, status, "{method} {path} on node {node}: {v}");
            assert_eq!(v["success"], false, "{method} {path}: {v}");
            if !want.is_empty() {
                assert_eq!(code(&v), want, "{method} {path}: {v}");
            }
        }
    }
    // Paths a client library would normalise, sent as they are.
    for path in
        ["/buckets/..", "/buckets/../etc", "/buckets/%2E%2E", "/buckets/good/..%2F..%2Fetc%00"]
    {
        for method in ["POST", "PUT", "GET"] {
            let (s, v) = support::raw_request(&c.http[1], method, path);
            assert!(matches!(s, 400 | 405), "{method} {path}: {s} {v}");
            assert_eq!(v["success"], false, "{method} {path}: {v}");
        }
    }
    // An invalid context token.
    let r = c
        .client
        .put(c.url(1, "/buckets/good/ctx"))
        .header("x-cairn-context", "!!!not base64!!!")
        .body("x")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 400);
    assert_eq!(code(&r.json().await.unwrap()), "InvalidContext");
    // An oversized multipart part: 413 and not stored.
    let form = reqwest::multipart::Form::new().part(
        "file_content",
        reqwest::multipart::Part::bytes(vec![1u8; 5000]).file_name("huge.bin"),
    );
    let r = c.client.post(c.url(2, "/buckets/good/files")).multipart(form).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 413);
    // Nothing was stored, and every node still serves.
    let (s, v) = c.get(&c.http[0], "/buckets/good").await.unwrap();
    assert_eq!(s, 200);
    assert_eq!(v["files"].as_array().unwrap().len(), 0, "something was stored: {v}");
    for i in 0..4 {
        assert_eq!(c.get(&c.http[i], "/health").await.unwrap().0, 200);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_stops_a_node_cleanly_and_it_restarts_with_its_data() {
    let mut c = Cluster::start(3, &[]).await;
    c.create_bucket(0, "keep", "").await;
    let (s, _) = c.put(1, "/buckets/keep/x", b"durable", None).await;
    assert_eq!(s, 200);
    let status = c.stop(1);
    assert!(status.success(), "SIGTERM exit: {status}");
    assert!(c.log(1).contains("clean shutdown"));
    assert!(c.data_dir(1).join("clean-shutdown").exists());
    c.restart(1).await;
    c.wait_all_up().await;
    let (s, body, _) = c.read(1, "/buckets/keep/x").await;
    assert_eq!((s, body.as_slice()), (200, &b"durable"[..]));
}

#[test]
fn bad_settings_are_one_clear_line_and_exit_code_2() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    let secret = dir.path().join("s");
    std::fs::write(&secret, "0123456789abcdef0123456789abcdef").unwrap();
    let s = secret.to_str().unwrap();
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec!["--data-dir", d, "--members", "n1", "--secret-file", s], "--id"),
        (vec!["--id", "n1", "--members", "n1", "--secret-file", s], "--data-dir"),
        (vec!["--id", "n1", "--data-dir", d, "--secret-file", s], "--members"),
        (
            vec!["--id", "n9", "--data-dir", d, "--members", "n1,n2,n3", "--secret-file", s],
            "--members",
        ),
        (vec!["--id", "n1", "--data-dir", d, "--members", "n1,n2,n3"], "secret"),
        (
            vec![
                "--id",
                "n1",
                "--data-dir",
                d,
                "--members",
                "n1,n2,n3",
                "--secret-file",
                s,
                "-r",
                "4",
            ],
            "--read-quorum",
        ),
        (
            vec!["--id", "n1", "--data-dir", d, "--members", "n1,n2", "--secret-file", s],
            "--replicas",
        ),
        (
            vec![
                "--id",
                "n1",
                "--data-dir",
                d,
                "--members",
                "n1,n2,n3",
                "--secret-file",
                s,
                "--sync",
                "sometimes",
            ],
            "--sync",
        ),
        (
            vec![
                "--id",
                "n1",
                "--data-dir",
                d,
                "--members",
                "n1,n2,n3",
                "--secret-file",
                s,
                "--p2p",
                "not-a-multiaddr",
            ],
            "--p2p",
        ),
        (vec!["--id", "bad id!", "--data-dir", d, "--members", "n1", "--secret-file", s], "--id"),
    ];
    for (args, names) in cases {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_cairn"))
            .arg("node")
            .args(&args)
            .env_remove("CAIRN_CLUSTER_SECRET")
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert_eq!(err.trim().lines().count(), 1, "{args:?}: not one line: {err}");
        assert!(err.contains(names), "{args:?}: does not name {names}: {err}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_that_cannot_reach_w_is_a_503_with_the_replica_report() {
    let mut c = Cluster::start(3, &[]).await;
    c.create_bucket(0, "quorum", "").await;
    c.kill9(1);
    c.kill9(2);
    c.wait_status(1, "down").await;
    c.wait_status(2, "down").await;
    let (s, v) = c.put(0, "/buckets/quorum/x", b"alone", None).await;
    assert_eq!(s, 503, "{v}");
    assert_eq!(v["success"], false);
    assert_eq!(v["error"]["code"], "WriteQuorumNotReached", "{v}");
    assert_eq!(names(&v["replicas_written"]), vec!["n1".to_owned()], "{v}");
    assert!(v["context"].as_str().is_some_and(|c| !c.is_empty()), "a 503 carries the context: {v}");
    // The local replica kept the write (it may still reach the others by hinted handoff).
    let (s, body, _) = c.read(0, "/buckets/quorum/x?local=true").await;
    assert_eq!((s, body.as_slice()), (200, &b"alone"[..]));
    // R=2 cannot be met either: 503 for reads too.
    let (s, v) = c.get(&c.http[0], "/buckets/quorum/x").await.unwrap();
    assert_eq!(s, 503, "{v}");
    assert_eq!(v["error"]["code"], "ReadQuorumNotReached", "{v}");
}
