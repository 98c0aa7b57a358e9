//! The API over real nodes (see `inproc`): the original service's flow, reads and writes with
//! siblings, deletes, names, listings, quorum failures under crashes and partitions, metrics,
//! cluster and health, panic containment, and a real HTTP server in front of the router.
#![allow(clippy::unwrap_used)]

mod inproc;

use std::sync::Arc;

use axum::http::{Method, StatusCode};
use cairn_replication::{Actor, NodeId};
use inproc::http::*;
use inproc::{IDS, Setup, TestCluster, eventually};
use serde_json::{Value, json};

/// The actor whose dots the writes coordinated by `node` carry (epoch 1), as JSON shows it.
fn actor(node: &Value) -> String {
    Actor::new(NodeId::new(node.as_str().unwrap()).unwrap(), 1).to_string()
}

/// The original service's flow: create a bucket, upload with the field `file_content`, read the
/// identical bytes back (from any node), delete the file (404 after, with the context), upload
/// it again without context (the delete is not in the way), delete the bucket.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn original_service_flow() {
    let c = TestCluster::start().await;
    let app = c.app.clone();
    let a = call(&app, Method::POST, "/buckets/photos").await;
    assert_eq!(a.status, StatusCode::OK);
    let j = a.json();
    assert_eq!(j["success"], true);
    assert_eq!(j["node"], "n1");
    assert_eq!(j["bucket"], "photos");
    assert_eq!(j["conflict"], "siblings");

    let content: Vec<u8> = (0..=255u8).cycle().take(700).collect();
    let body = multipart_body(&[("file_content", Some("cat.jpg"), Some("image/jpeg"), &content)]);
    let a = send(&app, multipart_req("/buckets/photos/files", body)).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text());
    let j = a.json();
    assert_eq!(j["success"], true);
    assert_eq!(j["node"], "n1");
    let f = &j["files"][0];
    assert_eq!(j["files"].as_array().unwrap().len(), 1);
    assert_eq!(f["success"], true);
    assert_eq!(f["name"], "cat.jpg");
    assert_eq!(f["size"], 700);
    assert_eq!(f["etag"], cairn_api::etag_of(&content));
    // N = 3 of 3 members: every node owns every key (in ring order), and the first owner
    // coordinates the write (n1 forwards it there when that is another node).
    assert_eq!(sorted_strings(&f["pref_list"]), IDS);
    assert_eq!(f["node"], f["pref_list"][0], "{f}");
    // Answered at W = 2 (plus a short grace): n1 and at least one other.
    let written = sorted_strings(&f["replicas_written"]);
    assert!(written.len() >= 2 && written.contains(&f["node"].as_str().unwrap().into()), "{f}");
    assert!(written.iter().all(|w| IDS.contains(&w.as_str())), "{f}");
    assert_eq!(f["hinted"], json!([]));
    let clocks = f["vector_clocks"].as_object().unwrap();
    assert_eq!(clocks.len(), written.len(), "{f}");
    for w in &written {
        assert_eq!(clocks[w.as_str()], json!({ actor(&f["node"]): 1 }), "{f}");
    }
    assert!(!f["context"].as_str().unwrap().is_empty());

    let a = call(&app, Method::GET, "/buckets/photos/cat.jpg").await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(&a.body[..], &content[..]);
    assert_eq!(a.header("content-type").unwrap(), "image/jpeg");
    assert_eq!(a.header("etag").unwrap(), format!("\"{}\"", cairn_api::etag_of(&content)));
    assert_eq!(a.header("x-cairn-node").unwrap(), "n1");
    assert_eq!(a.header("x-cairn-context").unwrap(), f["context"].as_str().unwrap());
    assert!(a.header("last-modified").unwrap().ends_with(" GMT"));
    // Any node serves it.
    let a = call(&c.router("n3"), Method::GET, "/buckets/photos/cat.jpg").await;
    assert_eq!((a.status, &a.body[..]), (StatusCode::OK, &content[..]));
    assert_eq!(a.header("x-cairn-node").unwrap(), "n3");

    let a = call(&app, Method::DELETE, "/buckets/photos/cat.jpg").await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text());
    assert_eq!(a.json()["deleted"], true);
    assert!(a.json().get("etag").is_none(), "a delete has no ETag");
    assert_eq!(a.json()["node"], f["pref_list"][0], "the first owner coordinates the delete");
    assert_eq!(a.json()["received_by"], "n1");

    let a = call(&app, Method::GET, "/buckets/photos/cat.jpg").await;
    assert_eq!(a.status, StatusCode::NOT_FOUND);
    assert_eq!(a.code(), "NoSuchKey");
    // A deleted key still gives its context, in the body and the header.
    let ctx = a.json()["context"].as_str().unwrap().to_string();
    assert_eq!(a.header("x-cairn-context").unwrap(), ctx);

    // Uploaded again without a context: the delete marker is not shown, the new bytes are.
    let again = b"a new cat".to_vec();
    let body = multipart_body(&[("file_content", Some("cat.jpg"), Some("image/jpeg"), &again)]);
    let a = send(&app, multipart_req("/buckets/photos/files", body)).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text());
    let a = call(&app, Method::GET, "/buckets/photos/cat.jpg").await;
    assert_eq!((a.status, &a.body[..]), (StatusCode::OK, &again[..]), "{}", a.text());

    let a = call(&app, Method::DELETE, "/buckets/photos").await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text());
    let j = a.json();
    assert_eq!(j["deleted"], true);
    assert_eq!(j["bucket"], "photos");
    // The node drops a bucket's files with the bucket (its incarnation is retired, in O(1)) and
    // does not count them: no `files_deleted` as the in-memory fake reported. What a user sees:
    // the bucket and its files are gone, and a new bucket of that name starts empty.
    let j = call(&app, Method::GET, "/buckets").await.json();
    assert_eq!(j["buckets"], json!([]));
    let a = call(&app, Method::GET, "/buckets/photos").await;
    assert_eq!((a.status, a.code().as_str()), (StatusCode::NOT_FOUND, "NoSuchBucket"));
    let a = call(&app, Method::GET, "/buckets/photos/cat.jpg").await;
    assert_eq!((a.status, a.code().as_str()), (StatusCode::NOT_FOUND, "NoSuchBucket"));
    create_bucket(&app, "photos").await;
    let j = call(&app, Method::GET, "/buckets/photos").await.json();
    assert_eq!(j["files"], json!([]));
    let a = call(&app, Method::GET, "/buckets/photos/cat.jpg").await;
    assert_eq!((a.status, a.code().as_str()), (StatusCode::NOT_FOUND, "NoSuchKey"));
}

/// Several file parts, under either field name; other form fields are ignored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multipart_with_several_parts_and_field_file() {
    let c = TestCluster::start().await;
    let app = c.app.clone();
    create_bucket(&app, "docs").await;
    let before = c.object_keys("n1");
    // `dir/b` has no extension, so no type can be guessed from its name either.
    let body = multipart_body(&[
        ("file", Some("a.txt"), Some("text/plain"), b"alpha"),
        ("comment", None, None, b"not a file"),
        ("file_content", Some("dir/b"), None, b"beta"),
    ]);
    let a = send(&app, multipart_req("/buckets/docs/files", body)).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text());
    let files = a.json()["files"].as_array().unwrap().clone();
    assert_eq!(files.len(), 2);
    assert_eq!(files[0]["name"], "a.txt");
    assert_eq!(files[1]["name"], "dir/b");
    c.settled().await;
    assert_eq!(c.object_keys("n1"), before + 2, "two objects, the comment is not one");
    let a = call(&app, Method::GET, "/buckets/docs/dir/b").await;
    assert_eq!(&a.body[..], b"beta");
    assert_eq!(a.header("content-type").unwrap(), "application/octet-stream");
    let j = call(&app, Method::GET, "/buckets/docs/a.txt?meta=true").await.json();
    assert_eq!(j["siblings"][0]["file_name"], "a.txt");
}

/// Concurrent writes without context become siblings: 300 with the list and the context,
/// `?sibling=ID` serves each, a write with the read's context leaves one value.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn siblings_300_then_resolved_with_context() {
    let c = TestCluster::start().await;
    let app = c.app.clone();
    create_bucket(&app, "b1x").await;
    let first = put(&app, "/buckets/b1x/k", b"one", None).await;
    put(&app, "/buckets/b1x/k", b"two", None).await;

    let a = call(&app, Method::GET, "/buckets/b1x/k").await;
    assert_eq!(a.status, StatusCode::MULTIPLE_CHOICES);
    let j = a.json();
    assert_eq!(j["success"], true);
    assert_eq!(j["conflict"], true);
    let sibs = j["siblings"].as_array().unwrap().clone();
    assert_eq!(sibs.len(), 2);
    assert_eq!(sibs[0]["id"], first["version"]);
    for s in &sibs {
        for field in ["id", "size", "etag", "timestamp", "clock", "content_type", "deleted"] {
            assert!(!s[field].is_null(), "sibling lacks {field}: {s}");
        }
    }
    let ctx = j["context"].as_str().unwrap().to_string();
    assert_eq!(a.header("x-cairn-context").unwrap(), ctx);

    // HEAD gives the same status and headers, no body.
    let a = call(&app, Method::HEAD, "/buckets/b1x/k").await;
    assert_eq!(a.status, StatusCode::MULTIPLE_CHOICES);
    assert!(a.body.is_empty());

    let mut bodies = Vec::new();
    for s in &sibs {
        let id = s["id"].as_str().unwrap();
        let a = call(&app, Method::GET, &format!("/buckets/b1x/k?sibling={id}")).await;
        assert_eq!(a.status, StatusCode::OK);
        assert_eq!(a.header("x-cairn-version").unwrap(), id);
        bodies.push(String::from_utf8(a.body.to_vec()).unwrap());
    }
    assert_eq!(bodies, ["one", "two"]);
    let a = call(&app, Method::GET, "/buckets/b1x/k?sibling=n1.1.99").await;
    assert_eq!((a.status, a.code().as_str()), (StatusCode::NOT_FOUND, "NoSuchVersion"));

    // A write with the context supersedes both.
    put(&app, "/buckets/b1x/k", b"merged", Some(&ctx)).await;
    let a = call(&app, Method::GET, "/buckets/b1x/k").await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(&a.body[..], b"merged");

    // A write with a stale context (the first write's) keeps the value it did not see.
    put(&app, "/buckets/b1x/k", b"late", Some(first["context"].as_str().unwrap())).await;
    let a = call(&app, Method::GET, "/buckets/b1x/k").await;
    assert_eq!(a.status, StatusCode::MULTIPLE_CHOICES);
    assert_eq!(a.json()["siblings"].as_array().unwrap().len(), 2);
}

/// `?overwrite=true` replaces whatever is there; an `lww` bucket keeps one value.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overwrite_and_lww() {
    let c = TestCluster::start().await;
    let app = c.app.clone();
    create_bucket(&app, "ow1").await;
    put(&app, "/buckets/ow1/k", b"a", None).await;
    put(&app, "/buckets/ow1/k", b"b", None).await;
    put(&app, "/buckets/ow1/k?overwrite=true", b"c", None).await;
    let a = call(&app, Method::GET, "/buckets/ow1/k").await;
    assert_eq!((a.status, &a.body[..]), (StatusCode::OK, &b"c"[..]));

    let a = call(&app, Method::POST, "/buckets/last?conflict=lww").await;
    assert_eq!(a.json()["conflict"], "lww");
    put(&app, "/buckets/last/k", b"first", None).await;
    put(&app, "/buckets/last/k", b"second", None).await;
    let a = call(&app, Method::GET, "/buckets/last/k").await;
    assert_eq!((a.status, &a.body[..]), (StatusCode::OK, &b"second"[..]));
    let j = call(&app, Method::GET, "/buckets").await.json();
    assert_eq!(
        j["buckets"],
        json!([{"name": "last", "conflict": "lww"}, {"name": "ow1", "conflict": "siblings"}])
    );
}

/// HEAD of a single version: status, length and ETag without the body; `If-None-Match`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn head_gives_headers_only() {
    let c = TestCluster::start().await;
    let app = c.app.clone();
    create_bucket(&app, "hd1").await;
    put(&app, "/buckets/hd1/x.txt", b"hello", None).await;
    let a = call(&app, Method::HEAD, "/buckets/hd1/x.txt").await;
    assert_eq!(a.status, StatusCode::OK);
    assert!(a.body.is_empty());
    assert_eq!(a.header("content-length").unwrap(), "5");
    assert_eq!(a.header("etag").unwrap(), format!("\"{}\"", cairn_api::etag_of(b"hello")));
    // A conditional GET with the current ETag is 304 without the bytes; another ETag gets them.
    let etag = a.header("etag").unwrap();
    let cond = |tag: String| {
        axum::http::Request::builder()
            .uri("/buckets/hd1/x.txt")
            .header("if-none-match", tag)
            .body(axum::body::Body::empty())
            .unwrap()
    };
    let a = send(&app, cond(etag.clone())).await;
    assert_eq!(a.status, StatusCode::NOT_MODIFIED);
    assert!(a.body.is_empty());
    assert_eq!(a.header("etag").unwrap(), etag);
    let a = send(&app, cond(format!("\"other\", W/{etag}"))).await;
    assert_eq!(a.status, StatusCode::NOT_MODIFIED);
    let a = send(&app, cond("\"other\"".into())).await;
    assert_eq!((a.status, &a.body[..]), (StatusCode::OK, &b"hello"[..]));
    let a = call(&app, Method::HEAD, "/buckets/hd1/missing").await;
    assert_eq!(a.status, StatusCode::NOT_FOUND);
}

/// Names with `/` are keys (encoded or not), listed by prefix; an object literally named
/// `files` can be written, read and deleted (only POST of that path is the upload).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slashes_and_an_object_named_files() {
    let c = TestCluster::start().await;
    let app = c.app.clone();
    create_bucket(&app, "nm1").await;
    put(&app, "/buckets/nm1/dir/sub/file.txt", b"deep", None).await;
    let a = call(&app, Method::GET, "/buckets/nm1/dir%2Fsub%2Ffile.txt").await;
    assert_eq!((a.status, &a.body[..]), (StatusCode::OK, &b"deep"[..]));
    put(&app, "/buckets/nm1/a/../b", b"dots", None).await;
    let a = call(&app, Method::GET, "/buckets/nm1/a/../b").await;
    assert_eq!(&a.body[..], b"dots");
    assert!(!c.stored_nowhere("nm1", "a/../b").await, "stored under the name as written");
    put(&app, "/buckets/nm1/sp%20ace%C3%A9", b"utf8", None).await;
    let a = call(&app, Method::GET, "/buckets/nm1/sp%20ace%C3%A9").await;
    assert_eq!(&a.body[..], b"utf8");
    assert!(!c.stored_nowhere("nm1", "sp aceé").await);

    let j = call(&app, Method::GET, "/buckets/nm1?prefix=dir/").await.json();
    assert_eq!(names(&j), ["dir/sub/file.txt"]);

    put(&app, "/buckets/nm1/files", b"not an upload", None).await;
    let a = call(&app, Method::GET, "/buckets/nm1/files").await;
    assert_eq!((a.status, &a.body[..]), (StatusCode::OK, &b"not an upload"[..]));
    let a = call(&app, Method::HEAD, "/buckets/nm1/files").await;
    assert_eq!(a.status, StatusCode::OK);
    let a = call(&app, Method::DELETE, "/buckets/nm1/files").await;
    assert_eq!(a.status, StatusCode::OK);
    let a = call(&app, Method::GET, "/buckets/nm1/files").await;
    assert_eq!(a.status, StatusCode::NOT_FOUND);
    // A nested path ending in `files` is an ordinary object, POST to it is not an upload.
    put(&app, "/buckets/nm1/x/files", b"nested", None).await;
    let a = call(&app, Method::POST, "/buckets/nm1/x/files").await;
    assert_eq!((a.status, a.code().as_str()), (StatusCode::METHOD_NOT_ALLOWED, "MethodNotAllowed"));
}

/// Listing pages through names in order with a cursor, merged from every member; the limit is
/// bounded; deleted files are not listed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listing_paginates() {
    let c = TestCluster::start().await;
    let app = c.app.clone();
    create_bucket(&app, "ls1").await;
    for i in 0..5 {
        put(&app, &format!("/buckets/ls1/f{i}"), b"x", None).await;
    }
    let a = call(&app, Method::DELETE, "/buckets/ls1/f4").await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text());
    // Every member lists its own replica: wait until the third one has the delete too.
    c.replicated("ls1", "f4").await;
    let j = call(&app, Method::GET, "/buckets/ls1?limit=2").await.json();
    assert_eq!(j["files"].as_array().unwrap().len(), 2);
    assert_eq!(j["truncated"], true);
    assert_eq!(j["complete"], true, "{j}");
    assert_eq!(j["missing"], json!([]), "{j}");
    let cursor = j["next_cursor"].as_str().unwrap().to_string();
    assert_eq!(cursor, "f1");
    let j = call(&app, Method::GET, &format!("/buckets/ls1?limit=2&cursor={cursor}")).await.json();
    assert_eq!(names(&j), ["f2", "f3"]);
    let j = call(&app, Method::GET, "/buckets/ls1?limit=2&cursor=f3").await.json();
    assert_eq!(j["files"].as_array().unwrap().len(), 0, "deleted f4 is not listed: {j}");
    assert_eq!(j["next_cursor"], Value::Null);
    for bad in ["limit=0", "limit=1001", "limit=x", "limit=1&limit=2"] {
        let a = call(&app, Method::GET, &format!("/buckets/ls1?{bad}")).await;
        assert_eq!((a.status, a.code().as_str()), (StatusCode::BAD_REQUEST, "InvalidArgument"));
    }
}

/// A listing while a member is down is answered from the others and says it may be
/// incomplete, naming the member that did not answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listing_with_a_member_down_says_it_is_incomplete() {
    let c = TestCluster::start().await;
    let app = c.app.clone();
    create_bucket(&app, "ls2").await;
    put(&app, "/buckets/ls2/a", b"x", None).await;
    c.crash("n3");
    let a = call(&app, Method::GET, "/buckets/ls2").await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text());
    let j = a.json();
    assert_eq!(names(&j), ["a"]);
    assert_eq!(j["complete"], false, "{j}");
    assert_eq!(j["missing"], json!(["n3"]), "{j}");
    c.restart("n3");
    let j = call(&app, Method::GET, "/buckets/ls2").await.json();
    assert_eq!((&j["complete"], &j["missing"]), (&json!(true), &json!([])), "{j}");
}

/// `?meta=true` reports the read: replicas, clocks, read repair, siblings. With both other
/// replicas down a read is 503 `ReadQuorumNotReached`, while `?local=true` (this node's own
/// replica) and `?r=1` still answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn meta_report_and_local_read() {
    let c = TestCluster::start().await;
    let app = c.app.clone();
    create_bucket(&app, "mt1").await;
    let w = put(&app, "/buckets/mt1/k", b"v", None).await;
    c.replicated("mt1", "k").await;
    let a = call(&app, Method::GET, "/buckets/mt1/k?meta=true").await;
    assert_eq!(a.status, StatusCode::OK);
    let j = a.json();
    assert_eq!(j["coordinator"], "n1");
    // Answered at R = 2: two or three replicas, all with the write.
    let read = sorted_strings(&j["replicas_read"]);
    assert!(read.len() >= 2 && read.iter().all(|r| IDS.contains(&r.as_str())), "{j}");
    for r in &read {
        assert_eq!(j["vector_clocks"][r.as_str()][actor(&w["node"])], 1, "{j}");
    }
    assert_eq!(j["read_repair"], false, "every replica had the write: {j}");
    assert_eq!(j["siblings"].as_array().unwrap().len(), 1);
    assert_eq!(j["r"], 2);

    c.crash("n2");
    c.crash("n3");
    let a = call(&app, Method::GET, "/buckets/mt1/k").await;
    assert_eq!(a.status, StatusCode::SERVICE_UNAVAILABLE, "{}", a.text());
    assert_eq!(a.code(), "ReadQuorumNotReached");
    assert_eq!(a.header("retry-after").unwrap(), "1");
    let j = a.json();
    assert_eq!(j["r"], 2, "{j}");
    // Only n1 is reachable: fewer targets than R, so the read fails at once, before even n1's
    // own reply is counted (the in-memory fake reported n1 as read).
    assert_eq!(j["replicas_read"], json!([]), "{j}");
    assert_eq!(j["error"]["message"], "0 of 2 required replicas answered", "{j}");
    let a = call(&app, Method::GET, "/buckets/mt1/k?local=true").await;
    assert_eq!((a.status, &a.body[..]), (StatusCode::OK, &b"v"[..]));
    let a = call(&app, Method::GET, "/buckets/mt1/k?r=1").await;
    assert_eq!((a.status, &a.body[..]), (StatusCode::OK, &b"v"[..]));
}

/// A write that does not reach W is a 503 with the partial replica report, never a 200. The
/// replica that acknowledged keeps it (n1 here, with hints for the owners it could not reach),
/// so it becomes visible everywhere once the partition heals.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn write_quorum_failure_is_503_with_report() {
    let c = TestCluster::start().await;
    let app = c.app.clone();
    create_bucket(&app, "wq1").await;
    c.net.partition(&["n1"], &["n2", "n3"]);
    let a = send(&app, req_body(Method::PUT, "/buckets/wq1/k", "x")).await;
    assert_eq!(a.status, StatusCode::SERVICE_UNAVAILABLE, "{}", a.text());
    assert_eq!(a.code(), "WriteQuorumNotReached");
    assert_eq!(a.header("retry-after").unwrap(), "1");
    let j = a.json();
    assert_eq!(sorted_strings(&j["pref_list"]), IDS);
    assert_eq!(j["w"], 2);
    assert_eq!(j["coordinator"], "n1", "n1 is the only owner it reaches: it coordinates");
    assert!(j["context"].is_string(), "the context of what n1 stored: {j}");
    // Only n1 was reachable: it is the only replica that can have acknowledged (the answer is
    // due as soon as W became impossible, plus a short grace, so n1's own acknowledgement is
    // almost always in it). The unreachable owners were not tried, so none is `failed` or
    // `timed_out` (the in-memory fake listed them as failed).
    let written = sorted_strings(&j["replicas_written"]);
    assert!(written.is_empty() || written == ["n1"], "{j}");
    assert_eq!(
        j["error"]["message"],
        format!("{} of 2 required replicas acknowledged", written.len()),
        "{j}"
    );
    assert_eq!((&j["failed"], &j["timed_out"]), (&json!([]), &json!([])), "{j}");
    // The unreachable owners get hints, held by the coordinator.
    let mut hinted: Vec<(String, String)> = j["hinted"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| (h["owner"].as_str().unwrap().into(), h["holder"].as_str().unwrap().into()))
        .collect();
    hinted.sort();
    assert_eq!(hinted, [("n2".into(), "n1".into()), ("n3".into(), "n1".into())], "{j}");
    // Unlike the in-memory fake (which stored nothing), the node keeps what n1 stored.
    assert_eq!(c.live_bodies("n1", "wq1", "k").await, [b"x".to_vec()]);
    let a = call(&app, Method::GET, "/buckets/wq1/k?local=true").await;
    assert_eq!((a.status, &a.body[..]), (StatusCode::OK, &b"x"[..]));

    // With w=1 the same situation is a success.
    let a = send(&app, req_body(Method::PUT, "/buckets/wq1/k?w=1", "y")).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text());
    assert_eq!(a.json()["w"], 1);

    // After the partition: both writes (concurrent, without context) reach the other owners by
    // hinted handoff, and a read shows both.
    c.net.heal();
    for id in ["n2", "n3"] {
        eventually(&format!("{id} has both writes"), async || {
            c.live_bodies(id, "wq1", "k").await == [b"x".to_vec(), b"y".to_vec()]
        })
        .await;
    }
    let a = call(&app, Method::GET, "/buckets/wq1/k").await;
    assert_eq!(a.status, StatusCode::MULTIPLE_CHOICES, "{}", a.text());
}

/// `/metrics` exposes request counters and latency histograms per route and status, then the
/// node's own metrics (replication counters, engine, members).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_expose_request_counters() {
    let c = TestCluster::start().await;
    let app = c.app.clone();
    create_bucket(&app, "mx1").await;
    put(&app, "/buckets/mx1/a", b"1", None).await;
    put(&app, "/buckets/mx1/b", b"2", None).await;
    call(&app, Method::GET, "/buckets/mx1/nope").await;
    call(&app, Method::GET, "/no/such/route").await;
    c.settled().await;
    let a = call(&app, Method::GET, "/metrics").await;
    assert_eq!(a.status, StatusCode::OK);
    assert!(a.header("content-type").unwrap().starts_with("text/plain"));
    let text = String::from_utf8(a.body.to_vec()).unwrap();
    for line in [
        "cairn_http_requests_total{method=\"PUT\",route=\"/buckets/{bucket}/{*file}\",status=\"200\"} 2",
        "cairn_http_requests_total{method=\"GET\",route=\"/buckets/{bucket}/{*file}\",status=\"404\"} 1",
        "cairn_http_requests_total{method=\"POST\",route=\"/buckets/{bucket}\",status=\"200\"} 1",
        "cairn_http_requests_total{method=\"GET\",route=\"unmatched\",status=\"404\"} 1",
        "cairn_http_request_duration_seconds_count{method=\"PUT\",route=\"/buckets/{bucket}/{*file}\",status=\"200\"} 2",
        "cairn_http_request_duration_seconds_bucket{method=\"PUT\",route=\"/buckets/{bucket}/{*file}\",status=\"200\",le=\"+Inf\"} 2",
        "# TYPE cairn_http_request_duration_seconds histogram",
        "cairn_http_errors_total{code=\"NoSuchKey\"} 1",
        "cairn_http_errors_total{code=\"NoSuchRoute\"} 1",
        // The /metrics request itself is the one in flight.
        "cairn_http_requests_in_flight 1",
        // The node's own figures (the in-memory fake had `cairn_memory_objects` instead).
        "cairn_write_quorum_failures_total 0",
        // Two objects and the bucket's registry entry.
        "cairn_engine_keys 3",
        "cairn_engine_healthy 1",
        "cairn_member_up{member=\"n2\"} 1",
    ] {
        assert!(text.lines().any(|l| l == line), "missing {line:?} in:\n{text}");
    }
    // n1 coordinated each write or forwarded it to the key's first owner.
    let counter = |name: &str| -> u64 {
        let line = text.lines().find(|l| l.starts_with(&format!("{name} "))).unwrap();
        line.rsplit(' ').next().unwrap().parse().unwrap()
    };
    assert_eq!(counter("cairn_writes_ok_total") + counter("cairn_writes_forwarded_total"), 2);
}

/// `/health` is 200 with JSON while the node's storage works, and 503 once a failed sync has
/// poisoned it (a real disk fault, injected under the engine); `/cluster` merges the node's
/// view; every answer names the node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_and_cluster() {
    let c = TestCluster::with(Setup { disk_faults: true, ..Setup::default() }).await;
    let app = c.app.clone();
    let a = call(&app, Method::GET, "/health").await;
    assert_eq!(a.status, StatusCode::OK);
    let j = a.json();
    assert_eq!(j["status"], "ok");
    assert_eq!(j["storage"], "ok");
    assert_eq!(j["members_reachable"], 3);
    assert_eq!(a.header("x-cairn-node").unwrap(), "n1");

    let a = call(&app, Method::GET, "/cluster").await;
    assert_eq!(a.status, StatusCode::OK);
    let j = a.json();
    assert_eq!(j["node"], "n1");
    let members = j["members"].as_array().unwrap();
    assert_eq!(members.len(), 3);
    assert!(members.iter().all(|m| m["status"] == "up"), "{j}");
    assert_eq!(j["ring"]["n"], 3);
    c.crash("n3");
    let j = call(&app, Method::GET, "/cluster").await.json();
    let n3 = j["members"].as_array().unwrap().iter().find(|m| m["id"] == "n3").unwrap().clone();
    assert_eq!(n3["status"], "down", "{j}");

    create_bucket(&app, "hl1").await;
    c.fail_disk("n1");
    // n1 stores its replica of the write (as coordinator or replica), its fdatasync fails and
    // poisons its engine. The write itself may still reach W elsewhere: not asserted here. n1
    // may store its copy after the answer, hence the wait.
    send(&app, req_body(Method::PUT, "/buckets/hl1/k", "v")).await;
    eventually("n1's engine is poisoned", async || !c.node("n1").store.engine().is_healthy()).await;
    let a = call(&app, Method::GET, "/health").await;
    assert_eq!(a.status, StatusCode::SERVICE_UNAVAILABLE, "{}", a.text());
    let j = a.json();
    assert_eq!(j["success"], false);
    assert_eq!(j["status"], "unhealthy");
    assert_eq!(j["storage"], "poisoned");
}

/// A backend that panics on reads and knows nothing else: the panic containment of the API's
/// middleware is tested with it (no real node panics on demand). It stores nothing.
struct PanickingBackend;

impl cairn_api::Backend for PanickingBackend {
    fn node_id(&self) -> &str {
        "n1"
    }
    async fn create_bucket(
        &self,
        _: cairn_api::BucketName,
        _: cairn_api::ConflictPolicy,
    ) -> cairn_api::Result<cairn_api::BucketReport> {
        Err(cairn_api::ApiError::Unavailable("no storage".into()))
    }
    async fn delete_bucket(
        &self,
        _: cairn_api::BucketName,
    ) -> cairn_api::Result<cairn_api::BucketReport> {
        Err(cairn_api::ApiError::Unavailable("no storage".into()))
    }
    async fn list_buckets(&self) -> cairn_api::Result<Vec<cairn_api::BucketInfo>> {
        Err(cairn_api::ApiError::Unavailable("no storage".into()))
    }
    async fn list_files(&self, _: cairn_api::ListFiles) -> cairn_api::Result<cairn_api::FileList> {
        Err(cairn_api::ApiError::Unavailable("no storage".into()))
    }
    async fn put_object(
        &self,
        _: cairn_api::PutObject,
    ) -> cairn_api::Result<cairn_api::WriteResult> {
        Err(cairn_api::ApiError::Unavailable("no storage".into()))
    }
    async fn put_object_stream<'a>(
        &'a self,
        _: cairn_api::PutStream<'a>,
    ) -> cairn_api::Result<cairn_api::WriteResult> {
        Err(cairn_api::ApiError::Unavailable("no storage".into()))
    }
    fn open_content(
        &self,
        _: cairn_api::OpenContent,
    ) -> cairn_api::Result<cairn_api::BodyStream<'static>> {
        Err(cairn_api::ApiError::Unavailable("no storage".into()))
    }
    async fn delete_object(
        &self,
        _: cairn_api::DeleteObject,
    ) -> cairn_api::Result<cairn_api::WriteResult> {
        Err(cairn_api::ApiError::Unavailable("no storage".into()))
    }
    async fn get_object(
        &self,
        _: cairn_api::GetObject,
    ) -> cairn_api::Result<cairn_api::ReadResult> {
        panic!("secret panic detail");
    }
    async fn cluster(&self) -> cairn_api::Result<Value> {
        Ok(json!({}))
    }
    async fn change_members(&self, _: cairn_api::MemberChange) -> cairn_api::Result<Value> {
        Err(cairn_api::ApiError::Unavailable("no cluster".into()))
    }
    async fn health(&self) -> cairn_api::Health {
        cairn_api::Health { healthy: true, details: serde_json::Map::new() }
    }
    fn metrics_text(&self) -> String {
        String::new()
    }
}

/// A panic inside the backend becomes a 500 `Internal` that does not leak the panic text, is
/// counted, and the router keeps serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panic_is_a_500_and_the_router_survives() {
    let app = cairn_api::router(Arc::new(PanickingBackend), inproc::api_config());
    for _ in 0..2 {
        let a = call(&app, Method::GET, "/buckets/pn1/k").await;
        assert_eq!(a.status, StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(a.code(), "Internal");
        assert!(!a.text().contains("secret"), "{}", a.text());
    }
    let a = call(&app, Method::GET, "/health").await;
    assert_eq!(a.status, StatusCode::OK);
    let text = call(&app, Method::GET, "/metrics").await.text();
    let line = "cairn_http_requests_total{method=\"GET\",route=\"/buckets/{bucket}/{*file}\",status=\"500\"} 2";
    assert!(text.lines().any(|l| l == line), "missing {line:?} in:\n{text}");
}

/// A delete that saw one version, concurrent with a write it did not see, removes what it saw
/// and loses to the write: the read shows the write's bytes (add-wins), not a conflict with a
/// delete marker, and the delete marker cannot be fetched. (The in-memory fake showed a 300
/// with the marker among the siblings.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_concurrent_with_a_write_loses_to_the_write() {
    let c = TestCluster::start().await;
    let app = c.app.clone();
    create_bucket(&app, "dc1").await;
    let first = put(&app, "/buckets/dc1/k", b"one", None).await;
    let second = put(&app, "/buckets/dc1/k", b"two", None).await;
    let del =
        send(&app, req_ctx(Method::DELETE, "/buckets/dc1/k", first["context"].as_str().unwrap()))
            .await;
    assert_eq!(del.status, StatusCode::OK, "{}", del.text());
    assert_eq!(del.json()["deleted"], true);
    let a = call(&app, Method::GET, "/buckets/dc1/k").await;
    assert_eq!((a.status, &a.body[..]), (StatusCode::OK, &b"two"[..]), "{}", a.text());
    assert_eq!(a.header("x-cairn-version").unwrap(), second["version"].as_str().unwrap());
    let j = call(&app, Method::GET, "/buckets/dc1/k?meta=true").await.json();
    let sibs = j["siblings"].as_array().unwrap();
    assert_eq!(sibs.len(), 1, "{j}");
    assert_eq!(sibs[0]["id"], second["version"]);
    assert_eq!(sibs[0]["deleted"], false);
    let uri = format!("/buckets/dc1/k?sibling={}", del.json()["version"].as_str().unwrap());
    let a = call(&app, Method::GET, &uri).await;
    assert_eq!((a.status, a.code().as_str()), (StatusCode::NOT_FOUND, "NoSuchVersion"));
    // Deleting with the read's context settles it: 404 with a context.
    let ctx = call(&app, Method::GET, "/buckets/dc1/k").await.header("x-cairn-context").unwrap();
    let a = send(&app, req_ctx(Method::DELETE, "/buckets/dc1/k", &ctx)).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text());
    let a = call(&app, Method::GET, "/buckets/dc1/k").await;
    assert_eq!((a.status, a.code().as_str()), (StatusCode::NOT_FOUND, "NoSuchKey"));
    assert!(a.json()["context"].is_string());
}

/// A delete whose context covers none of the live versions (the object was rewritten since the
/// client read it) is 409 `StaleContext` and stores nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delete_that_saw_none_of_the_live_versions_is_409() {
    let c = TestCluster::start().await;
    let app = c.app.clone();
    create_bucket(&app, "st1").await;
    let first = put(&app, "/buckets/st1/k", b"one", None).await;
    let ctx1 = first["context"].as_str().unwrap().to_string();
    // Someone else read "one" too and replaced it.
    put(&app, "/buckets/st1/k", b"two", Some(&ctx1)).await;
    c.replicated("st1", "k").await;
    let before = c.stored("n1", "st1", "k").await;
    let a = send(&app, req_ctx(Method::DELETE, "/buckets/st1/k", &ctx1)).await;
    assert_eq!(
        (a.status, a.code().as_str()),
        (StatusCode::CONFLICT, "StaleContext"),
        "{}",
        a.text()
    );
    assert_eq!(c.stored("n1", "st1", "k").await, before, "nothing stored");
    let a = call(&app, Method::GET, "/buckets/st1/k").await;
    assert_eq!((a.status, &a.body[..]), (StatusCode::OK, &b"two"[..]));
}

/// A context that covers some of several live versions removes those; the others stay, and
/// the 300 lists only live versions.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delete_removes_only_the_versions_its_context_covers() {
    let c = TestCluster::start().await;
    let app = c.app.clone();
    create_bucket(&app, "pc1").await;
    let a = put(&app, "/buckets/pc1/k", b"a", None).await;
    let b = put(&app, "/buckets/pc1/k", b"b", None).await;
    let cc = put(&app, "/buckets/pc1/k", b"c", None).await;
    let del =
        send(&app, req_ctx(Method::DELETE, "/buckets/pc1/k", a["context"].as_str().unwrap())).await;
    assert_eq!(del.status, StatusCode::OK, "{}", del.text());
    let r = call(&app, Method::GET, "/buckets/pc1/k").await;
    assert_eq!(r.status, StatusCode::MULTIPLE_CHOICES, "{}", r.text());
    let j = r.json();
    let ids: Vec<&Value> = j["siblings"].as_array().unwrap().iter().map(|s| &s["id"]).collect();
    assert_eq!(ids, [&b["version"], &cc["version"]], "{j}");
    assert!(j["siblings"].as_array().unwrap().iter().all(|s| s["deleted"] == false), "{j}");
}

/// Deleting a key that was never written, or is already deleted, is 404 `NoSuchKey` and stores
/// nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_a_missing_key_is_404_and_stores_nothing() {
    let c = TestCluster::start().await;
    let app = c.app.clone();
    create_bucket(&app, "dm1").await;
    let keys = c.all_keys();
    let a = call(&app, Method::DELETE, "/buckets/dm1/never").await;
    assert_eq!((a.status, a.code().as_str()), (StatusCode::NOT_FOUND, "NoSuchKey"), "{}", a.text());
    assert_eq!(c.all_keys(), keys, "a delete of nothing stores nothing");
    assert!(c.stored_nowhere("dm1", "never").await);

    put(&app, "/buckets/dm1/gone", b"v", None).await;
    let a = call(&app, Method::DELETE, "/buckets/dm1/gone").await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text());
    c.replicated("dm1", "gone").await;
    let before = c.stored("n1", "dm1", "gone").await;
    let a = call(&app, Method::DELETE, "/buckets/dm1/gone").await;
    assert_eq!((a.status, a.code().as_str()), (StatusCode::NOT_FOUND, "NoSuchKey"), "{}", a.text());
    assert_eq!(c.stored("n1", "dm1", "gone").await, before, "no second tombstone");
}

/// A delete without context removes every live version, concurrent ones included; one that
/// only the other replicas hold (written while the coordinator was cut off) too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delete_without_context_removes_every_live_version() {
    let c = TestCluster::start().await;
    let app = c.app.clone();
    create_bucket(&app, "da1").await;
    put(&app, "/buckets/da1/k", b"one", None).await;
    put(&app, "/buckets/da1/k", b"two", None).await;
    let a = call(&app, Method::DELETE, "/buckets/da1/k").await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text());
    assert_eq!(a.json()["deleted"], true);
    let a = call(&app, Method::GET, "/buckets/da1/k").await;
    assert_eq!((a.status, a.code().as_str()), (StatusCode::NOT_FOUND, "NoSuchKey"), "{}", a.text());

    // A version the delete's coordinator does not hold. The key's first owner X coordinates
    // writes and deletes; a write made while X was cut off went to the other two owners, and the
    // one that coordinated it (C, holding X's hint) is down when X comes back, so X does not get
    // it by handoff. The delete, sent through the third owner T, reaches X, which must find the
    // version by its quorum read (from T) to delete it.
    let key = c.key("da1", "far").await;
    let owners: Vec<String> =
        c.node("n1").extended(&key).iter().take(3).map(|n| n.to_string()).collect();
    let x = owners[0].as_str();
    c.net.isolate(x);
    let via = owners[1].as_str();
    let a = send(&c.router(via), req_body(Method::PUT, "/buckets/da1/far", "far")).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text());
    let coordinator = a.json()["node"].as_str().unwrap().to_string();
    let t = owners.iter().find(|o| **o != x && **o != coordinator).unwrap().clone();
    c.crash(&coordinator);
    c.net.heal();
    assert!(c.stored(x, "da1", "far").await.is_none(), "{x} never got the write");
    let a = call(&c.router(&t), Method::DELETE, "/buckets/da1/far").await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text());
    assert_eq!(a.json()["node"], x, "the first owner coordinates the delete");
    let a = call(&c.router(&t), Method::GET, "/buckets/da1/far").await;
    assert_eq!((a.status, a.code().as_str()), (StatusCode::NOT_FOUND, "NoSuchKey"), "{}", a.text());
    c.restart(&coordinator);
    let a = call(&app, Method::GET, "/buckets/da1/far").await;
    assert_eq!((a.status, a.code().as_str()), (StatusCode::NOT_FOUND, "NoSuchKey"), "{}", a.text());
}

/// A write after a delete, with or without the delete's context, shows only the new bytes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_after_a_delete_shows_no_delete_marker() {
    let c = TestCluster::start().await;
    let app = c.app.clone();
    create_bucket(&app, "wd1").await;
    put(&app, "/buckets/wd1/k", b"v1", None).await;
    assert_eq!(call(&app, Method::DELETE, "/buckets/wd1/k").await.status, StatusCode::OK);
    put(&app, "/buckets/wd1/k", b"v2", None).await;
    let a = call(&app, Method::GET, "/buckets/wd1/k").await;
    assert_eq!((a.status, &a.body[..]), (StatusCode::OK, &b"v2"[..]), "{}", a.text());

    let del = call(&app, Method::DELETE, "/buckets/wd1/k").await;
    assert_eq!(del.status, StatusCode::OK);
    let ctx = call(&app, Method::GET, "/buckets/wd1/k").await.header("x-cairn-context").unwrap();
    put(&app, "/buckets/wd1/k", b"v3", Some(&ctx)).await;
    let a = call(&app, Method::GET, "/buckets/wd1/k").await;
    assert_eq!((a.status, &a.body[..]), (StatusCode::OK, &b"v3"[..]), "{}", a.text());
}

/// A multipart upload of one file takes `X-Cairn-Context` like PUT (it supersedes what the
/// context covers); with several file parts a context is refused and nothing is stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multipart_upload_takes_a_context_for_one_file() {
    let c = TestCluster::start().await;
    let app = c.app.clone();
    create_bucket(&app, "mc1").await;
    put(&app, "/buckets/mc1/k.txt", b"one", None).await;
    put(&app, "/buckets/mc1/k.txt", b"two", None).await;
    let ctx =
        call(&app, Method::GET, "/buckets/mc1/k.txt").await.header("x-cairn-context").unwrap();
    let body = multipart_body(&[("file_content", Some("k.txt"), Some("text/plain"), b"merged")]);
    let a = send(&app, multipart_req_ctx("/buckets/mc1/files", body, Some(&ctx))).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text());
    let a = call(&app, Method::GET, "/buckets/mc1/k.txt").await;
    assert_eq!((a.status, &a.body[..]), (StatusCode::OK, &b"merged"[..]), "{}", a.text());

    let ctx = a.header("x-cairn-context").unwrap();
    c.settled().await;
    c.replicated("mc1", "k.txt").await;
    let keys = c.object_keys("n1");
    let before = c.stored("n1", "mc1", "k.txt").await;
    let body = multipart_body(&[
        ("file_content", Some("k.txt"), None, b"first part"),
        ("file_content", Some("other.txt"), None, b"second part"),
    ]);
    let a = send(&app, multipart_req_ctx("/buckets/mc1/files", body, Some(&ctx))).await;
    assert_eq!((a.status, a.code().as_str()), (StatusCode::BAD_REQUEST, "InvalidArgument"));
    let message = a.json()["error"]["message"].as_str().unwrap().to_string();
    assert!(message.contains("X-Cairn-Context"), "{message}");
    assert_eq!(c.object_keys("n1"), keys, "nothing stored");
    assert_eq!(c.stored("n1", "mc1", "k.txt").await, before, "not even the first part");
    assert!(c.stored_nowhere("mc1", "other.txt").await);
}

/// Without a given type, a PUT or an upload stores the type guessed from the name's extension
/// (else `application/octet-stream`); a type that is given is kept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn content_types_are_guessed_from_the_name() {
    let c = TestCluster::start().await;
    let app = c.app.clone();
    create_bucket(&app, "ct1").await;
    let media = |a: &Answer| {
        a.header("content-type").unwrap().split(';').next().unwrap().trim().to_string()
    };
    for (name, want) in
        [("notes.txt", "text/plain"), ("a.png", "image/png"), ("noext", "application/octet-stream")]
    {
        let uri = format!("/buckets/ct1/{name}");
        let a = send(&app, req_body(Method::PUT, &uri, "x")).await;
        assert_eq!(a.status, StatusCode::OK, "{}", a.text());
        assert_eq!(media(&call(&app, Method::GET, &uri).await), want, "{name}");
    }
    put(&app, "/buckets/ct1/given.png", b"x", None).await; // sent as text/plain
    assert_eq!(media(&call(&app, Method::GET, "/buckets/ct1/given.png").await), "text/plain");

    let body = multipart_body(&[
        ("file", Some("p.png"), None, b"x"),
        ("file", Some("q.txt"), Some("application/octet-stream"), b"x"),
        ("file", Some("r"), Some("application/octet-stream"), b"x"),
        ("file", Some("s.txt"), Some("text/markdown"), b"x"),
    ]);
    let a = send(&app, multipart_req("/buckets/ct1/files", body)).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text());
    for (name, want) in [
        ("p.png", "image/png"),
        ("q.txt", "text/plain"),
        ("r", "application/octet-stream"),
        ("s.txt", "text/markdown"),
    ] {
        let a = call(&app, Method::GET, &format!("/buckets/ct1/{name}")).await;
        assert_eq!(media(&a), want, "{name}");
    }
}

/// The router behind a real HTTP/1.1 server on 127.0.0.1, spoken to with raw TCP: what curl
/// sees when it declares a body over the limit (413 at once, without sending the body), and a
/// PUT/GET/HEAD round trip.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_server_round_trip_and_early_413() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};

    /// Sends `request` on a fresh connection and reads until the server closes it (every
    /// request here says `Connection: close`). 30 s bounds a hung exchange on a loaded machine.
    async fn exchange(addr: std::net::SocketAddr, request: &[u8]) -> String {
        let run = async {
            let mut s = TcpStream::connect(addr).await.unwrap();
            s.write_all(request).await.unwrap();
            let mut out = Vec::new();
            // A reset after the answer is fine: the server may close without reading the body.
            let _ = s.read_to_end(&mut out).await;
            String::from_utf8_lossy(&out).into_owned()
        };
        tokio::time::timeout(std::time::Duration::from_secs(30), run).await.unwrap()
    }

    let c = TestCluster::start().await;
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = c.app.clone();
    let server = tokio::spawn(async move { axum::serve(listener, app).await });

    let a =
        exchange(addr, b"POST /buckets/web HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await;
    assert!(a.starts_with("HTTP/1.1 200"), "{a}");

    // Declares 10 MB (the limit is 1 KiB) and sends nothing: the answer comes without the body.
    let a = exchange(
        addr,
        b"PUT /buckets/web/big HTTP/1.1\r\nHost: x\r\nContent-Length: 10000000\r\n\
          Expect: 100-continue\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(a.starts_with("HTTP/1.1 413"), "{a}");
    assert!(a.contains("\"EntityTooLarge\""), "{a}");
    assert!(c.stored_nowhere("web", "big").await);

    let a = exchange(
        addr,
        b"PUT /buckets/web/hello.txt HTTP/1.1\r\nHost: x\r\nContent-Type: text/plain\r\n\
          Content-Length: 5\r\nConnection: close\r\n\r\nhello",
    )
    .await;
    assert!(a.starts_with("HTTP/1.1 200"), "{a}");
    let a = exchange(
        addr,
        b"GET /buckets/web/hello.txt HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(a.starts_with("HTTP/1.1 200"), "{a}");
    assert!(a.ends_with("\r\n\r\nhello"), "{a}");
    assert!(a.to_ascii_lowercase().contains("x-cairn-context: "), "{a}");
    let a = exchange(
        addr,
        b"HEAD /buckets/web/hello.txt HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(a.starts_with("HTTP/1.1 200"), "{a}");
    assert!(a.to_ascii_lowercase().contains("content-length: 5"), "{a}");
    assert!(a.ends_with("\r\n\r\n"), "HEAD has no body: {a}");
    server.abort();
}
