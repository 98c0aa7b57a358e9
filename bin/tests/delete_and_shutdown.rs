//! Deletes, re-creates, content types and listings as a user meets them, and a graceful stop
//! that finishes the hints it started, on clusters of real `cairn node` processes.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use serde_json::Value;
use support::Cluster;

/// Sum of `cairn_engine_keys` (live keys in every keyspace) over the running nodes `nodes`.
async fn engine_keys(c: &Cluster, nodes: &[usize]) -> u64 {
    let mut total = 0;
    for &i in nodes {
        let text = c.client.get(c.url(i, "/metrics")).send().await.unwrap().text().await.unwrap();
        let line = text.lines().find(|l| l.starts_with("cairn_engine_keys ")).unwrap();
        total += line.split_whitespace().nth(1).unwrap().parse::<f64>().unwrap() as u64;
    }
    total
}

/// A multipart upload of one file (the original service's form), optionally with a context.
async fn upload(
    c: &Cluster,
    node: usize,
    bucket: &str,
    name: &str,
    content: &[u8],
    context: Option<&str>,
) -> (u16, Value) {
    let form = reqwest::multipart::Form::new().part(
        "file_content",
        reqwest::multipart::Part::bytes(content.to_vec()).file_name(name.to_owned()),
    );
    let mut req = c.client.post(c.url(node, &format!("/buckets/{bucket}/files"))).multipart(form);
    if let Some(ctx) = context {
        req = req.header("x-cairn-context", ctx);
    }
    let r = req.send().await.unwrap();
    let s = r.status().as_u16();
    (s, r.json().await.unwrap_or(Value::Null))
}

async fn delete(c: &Cluster, node: usize, path: &str, context: Option<&str>) -> (u16, Value) {
    let mut req = c.client.delete(c.url(node, path));
    if let Some(ctx) = context {
        req = req.header("x-cairn-context", ctx);
    }
    let r = req.send().await.unwrap();
    let s = r.status().as_u16();
    (s, r.json().await.unwrap_or(Value::Null))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_and_re_create_list_and_content_types_behave_as_a_user_expects() {
    let mut c = Cluster::start(4, &[]).await;
    let all = [0, 1, 2, 3];
    c.create_bucket(0, "docs", "").await;

    // The seed's flow: upload, delete, upload again with the multipart form (no context).
    let (s, v) = upload(&c, 0, "docs", "notes.txt", b"first draft", None).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["files"][0]["content_type"], "text/plain", "guessed from the name: {v}");
    let (s, v) = delete(&c, 1, "/buckets/docs/notes.txt", None).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["deleted"], true);
    for i in all {
        let (s, _, ctx) = c.read(i, "/buckets/docs/notes.txt").await;
        assert_eq!(s, 404, "node {i} after the delete");
        assert!(ctx.is_some(), "a deleted key's 404 carries the context");
    }
    let (s, v) = upload(&c, 2, "docs", "notes.txt", b"second draft", None).await;
    assert_eq!(s, 200, "{v}");
    for i in all {
        let (s, body, _) = c.read(i, "/buckets/docs/notes.txt").await;
        assert_eq!((s, body.as_slice()), (200, &b"second draft"[..]), "node {i} after re-upload");
    }

    // A multipart upload carries a context like PUT: it supersedes the version it read.
    let (_, _, ctx) = c.read(3, "/buckets/docs/notes.txt").await;
    let (s, v) = upload(&c, 3, "docs", "notes.txt", b"third draft", ctx.as_deref()).await;
    assert_eq!(s, 200, "{v}");
    let (s, body, _) = c.read(0, "/buckets/docs/notes.txt").await;
    assert_eq!((s, body.as_slice()), (200, &b"third draft"[..]), "no sibling left");

    // A delete of a key never written is a 404 and stores nothing anywhere.
    let before = engine_keys(&c, &all).await;
    for i in all {
        let (s, v) = delete(&c, i, "/buckets/docs/never-written.txt", None).await;
        assert_eq!(s, 404, "{v}");
        assert_eq!(v["error"]["code"], "NoSuchKey", "{v}");
    }
    assert_eq!(engine_keys(&c, &all).await, before, "a 404 delete stored nothing");
    let (s, _) = delete(&c, 0, "/buckets/docs/notes.txt", None).await;
    assert_eq!(s, 200);
    let before = engine_keys(&c, &all).await;
    for i in all {
        let (s, v) = delete(&c, i, "/buckets/docs/notes.txt", None).await;
        assert_eq!(s, 404, "deleting a deleted key: {v}");
    }
    assert_eq!(engine_keys(&c, &all).await, before, "a second delete stored nothing");

    // `curl -T notes.md URL`: a PUT without Content-Type stores the type of the extension.
    let types = [
        ("todo.txt", "text/plain"),
        ("cat.png", "image/png"),
        ("blob", "application/octet-stream"),
    ];
    for (name, ctype) in types {
        let r = c
            .client
            .put(c.url(1, &format!("/buckets/docs/{name}")))
            .body(b"content".to_vec())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 200);
        let r = c.client.get(c.url(2, &format!("/buckets/docs/{name}"))).send().await.unwrap();
        assert_eq!(r.headers()["content-type"], ctype, "{name}");
    }

    // A listing says whether every member answered.
    let (s, v) = c.get(&c.http[0], "/buckets/docs").await.unwrap();
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["complete"], true, "{v}");
    assert_eq!(v["missing"], serde_json::json!([]), "{v}");
    let listed: Vec<&str> =
        v["files"].as_array().unwrap().iter().map(|f| f["name"].as_str().unwrap()).collect();
    assert_eq!(listed, ["blob", "cat.png", "todo.txt"], "the deleted file is not listed");
    c.kill9(3);
    c.wait_status(3, "down").await;
    let (s, v) = c.get(&c.http[0], "/buckets/docs").await.unwrap();
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["complete"], false, "{v}");
    assert_eq!(v["missing"], serde_json::json!(["n4"]), "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_finishes_storing_the_hints_its_writes_started() {
    // Three nodes, N=3: every node owns every key, so a write coordinated by n1 goes to n1, n2
    // and n3. With n3 paused but not yet declared down, such a write is acknowledged by n1 and
    // n2 and n1 stores a hint for n3 only once n3's request times out (2 s here): that is the
    // work a SIGTERM in between must not drop.
    let mut c = Cluster::start(3, &[]).await;
    c.create_bucket(0, "drain", "").await;
    // Keys whose first owner is n1 (then n1 coordinates writes to them even when sent to n1).
    let mut mine = Vec::new();
    for k in 0..60 {
        let (s, v) = c.put(0, &format!("/buckets/drain/k{k}"), b"v1", None).await;
        assert_eq!(s, 200, "{v}");
        if v["pref_list"][0] == "n1" {
            mine.push(format!("/buckets/drain/k{k}"));
        }
        if mine.len() == 8 {
            break;
        }
    }
    assert!(mine.len() >= 4, "too few keys owned first by n1: {}", mine.len());
    c.wait_no_hints().await;

    c.pause(2);
    let paths: Vec<String> = mine.iter().map(|p| format!("{p}?overwrite=true")).collect();
    let writes = paths.iter().map(|p| c.put(0, p, b"v2", None)).collect::<Vec<_>>();
    let answers = futures::future::join_all(writes).await;
    let mut hinted_later = 0;
    for (s, v) in &answers {
        assert_eq!(*s, 200, "{v}");
        assert_eq!(v["node"], "n1", "{v}");
        if !v["replicas_written"].as_array().unwrap().iter().any(|r| r == "n3") {
            hinted_later += 1;
        }
    }
    assert!(hinted_later > 0, "n3 acknowledged every write before the pause took: {answers:?}");
    let status = c.stop(0);
    assert!(status.success(), "SIGTERM exit: {status}");
    let log = c.log(0);
    assert!(log.contains("finishing hints and read repairs in flight"), "{log}");
    assert!(!log.contains("abandoning background work"), "{log}");
    // The hints were stored while the node still ran its data plane, not by a race with exit.
    let drained = log.split("shutting down: stopping background work").next().unwrap();
    let stored = drained.matches("stored a hint for a replica that missed a write").count();
    assert_eq!(stored, hinted_later, "hints stored before background work stopped:\n{log}");

    c.restart(0).await;
    let (_, v) = c.get(&c.http[0], "/cluster").await.unwrap();
    assert_eq!(v["hints_pending"]["n3"], hinted_later, "one hint per key for n3 survived: {v}");

    c.resume(2);
    c.wait_no_hints().await;
    for p in &mine {
        let (s, body, _) = c.read(2, &format!("{p}?local=true")).await;
        assert_eq!((s, body.as_slice()), (200, &b"v2"[..]), "{p} on n3 after handoff");
    }
}
