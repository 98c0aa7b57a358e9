//! The router, driven through `oneshot` against the in-memory backend: the original service's
//! flow, reads and writes with siblings, names, metrics, cluster and health.
#![allow(clippy::unwrap_used)]

mod common;

use axum::http::{Method, StatusCode};
use common::*;

/// The original service's flow: create a bucket, upload with the field `file_content`, read the
/// identical bytes back, delete the file (404 after), delete the bucket.
#[tokio::test]
async fn original_service_flow() {
    let (app, backend) = app();
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
    assert_eq!(a.status, StatusCode::OK, "{}", String::from_utf8_lossy(&a.body));
    let j = a.json();
    assert_eq!(j["success"], true);
    assert_eq!(j["node"], "n1");
    let f = &j["files"][0];
    assert_eq!(j["files"].as_array().unwrap().len(), 1);
    assert_eq!(f["success"], true);
    assert_eq!(f["name"], "cat.jpg");
    assert_eq!(f["size"], 700);
    assert_eq!(f["node"], "n1");
    assert_eq!(f["etag"], cairn_api::etag_of(&content));
    assert_eq!(f["pref_list"], serde_json::json!(["n1", "r2", "r3"]));
    assert_eq!(f["replicas_written"], serde_json::json!(["n1", "r2", "r3"]));
    assert_eq!(f["hinted"], serde_json::json!([]));
    let clocks = f["vector_clocks"].as_object().unwrap();
    assert_eq!(clocks.len(), 3);
    assert_eq!(clocks["n1"]["n1#1"], 1);
    assert!(!f["context"].as_str().unwrap().is_empty());

    let a = call(&app, Method::GET, "/buckets/photos/cat.jpg").await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(&a.body[..], &content[..]);
    assert_eq!(a.header("content-type").unwrap(), "image/jpeg");
    assert_eq!(a.header("etag").unwrap(), format!("\"{}\"", cairn_api::etag_of(&content)));
    assert_eq!(a.header("x-cairn-node").unwrap(), "n1");
    assert_eq!(a.header("x-cairn-context").unwrap(), f["context"].as_str().unwrap());
    assert!(a.header("last-modified").unwrap().ends_with(" GMT"));

    let a = call(&app, Method::DELETE, "/buckets/photos/cat.jpg").await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(a.json()["deleted"], true);
    assert!(a.json().get("etag").is_none(), "a delete has no ETag");
    assert_eq!(a.json()["node"], "n1");

    let a = call(&app, Method::GET, "/buckets/photos/cat.jpg").await;
    assert_eq!(a.status, StatusCode::NOT_FOUND);
    assert_eq!(a.code(), "NoSuchKey");
    // A deleted key still gives its context, in the body and the header.
    let ctx = a.json()["context"].as_str().unwrap().to_string();
    assert_eq!(a.header("x-cairn-context").unwrap(), ctx);

    let a = call(&app, Method::DELETE, "/buckets/photos").await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(a.json()["files_deleted"], 1);
    assert!(backend.bucket_names().is_empty());
    assert_eq!(backend.object_count(), 0);
    let a = call(&app, Method::GET, "/buckets/photos").await;
    assert_eq!((a.status, a.code().as_str()), (StatusCode::NOT_FOUND, "NoSuchBucket"));
}

/// Several file parts, under either field name; other form fields are ignored.
#[tokio::test]
async fn multipart_with_several_parts_and_field_file() {
    let (app, backend) = app();
    create_bucket(&app, "docs").await;
    let body = multipart_body(&[
        ("file", Some("a.txt"), Some("text/plain"), b"alpha"),
        ("comment", None, None, b"not a file"),
        ("file_content", Some("dir/b.bin"), None, b"beta"),
    ]);
    let a = send(&app, multipart_req("/buckets/docs/files", body)).await;
    assert_eq!(a.status, StatusCode::OK, "{}", String::from_utf8_lossy(&a.body));
    let files = a.json()["files"].as_array().unwrap().clone();
    assert_eq!(files.len(), 2);
    assert_eq!(files[0]["name"], "a.txt");
    assert_eq!(files[1]["name"], "dir/b.bin");
    assert_eq!(backend.object_count(), 2);
    let a = call(&app, Method::GET, "/buckets/docs/dir/b.bin").await;
    assert_eq!(&a.body[..], b"beta");
    assert_eq!(a.header("content-type").unwrap(), "application/octet-stream");
    let j = call(&app, Method::GET, "/buckets/docs/a.txt?meta=true").await.json();
    assert_eq!(j["siblings"][0]["file_name"], "a.txt");
}

/// Concurrent writes without context become siblings: 300 with the list and the context,
/// `?sibling=ID` serves each, a write with the read's context leaves one value.
#[tokio::test]
async fn siblings_300_then_resolved_with_context() {
    let (app, _) = app();
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
#[tokio::test]
async fn overwrite_and_lww() {
    let (app, _) = app();
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
        serde_json::json!([{"name": "last", "conflict": "lww"}, {"name": "ow1", "conflict": "siblings"}])
    );
}

/// HEAD of a single version: status, length and ETag without the body; `If-None-Match`.
#[tokio::test]
async fn head_gives_headers_only() {
    let (app, _) = app();
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
#[tokio::test]
async fn slashes_and_an_object_named_files() {
    let (app, _) = app();
    create_bucket(&app, "nm1").await;
    put(&app, "/buckets/nm1/dir/sub/file.txt", b"deep", None).await;
    let a = call(&app, Method::GET, "/buckets/nm1/dir%2Fsub%2Ffile.txt").await;
    assert_eq!((a.status, &a.body[..]), (StatusCode::OK, &b"deep"[..]));
    put(&app, "/buckets/nm1/a/../b", b"dots", None).await;
    let a = call(&app, Method::GET, "/buckets/nm1/a/../b").await;
    assert_eq!(&a.body[..], b"dots");
    put(&app, "/buckets/nm1/sp%20ace%C3%A9", b"utf8", None).await;
    let a = call(&app, Method::GET, "/buckets/nm1/sp%20ace%C3%A9").await;
    assert_eq!(&a.body[..], b"utf8");

    let j = call(&app, Method::GET, "/buckets/nm1?prefix=dir/").await.json();
    let names: Vec<&str> =
        j["files"].as_array().unwrap().iter().map(|f| f["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["dir/sub/file.txt"]);

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

/// Listing pages through names in order with a cursor; the limit is bounded.
#[tokio::test]
async fn listing_paginates() {
    let (app, _) = app();
    create_bucket(&app, "ls1").await;
    for i in 0..5 {
        put(&app, &format!("/buckets/ls1/f{i}"), b"x", None).await;
    }
    call(&app, Method::DELETE, "/buckets/ls1/f4").await;
    let j = call(&app, Method::GET, "/buckets/ls1?limit=2").await.json();
    assert_eq!(j["files"].as_array().unwrap().len(), 2);
    assert_eq!(j["truncated"], true);
    let cursor = j["next_cursor"].as_str().unwrap().to_string();
    assert_eq!(cursor, "f1");
    let j = call(&app, Method::GET, &format!("/buckets/ls1?limit=2&cursor={cursor}")).await.json();
    let names: Vec<&str> =
        j["files"].as_array().unwrap().iter().map(|f| f["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["f2", "f3"]);
    let j = call(&app, Method::GET, "/buckets/ls1?limit=2&cursor=f3").await.json();
    assert_eq!(j["files"].as_array().unwrap().len(), 0, "deleted f4 is not listed");
    assert_eq!(j["next_cursor"], serde_json::Value::Null);
    for bad in ["limit=0", "limit=1001", "limit=x", "limit=1&limit=2"] {
        let a = call(&app, Method::GET, &format!("/buckets/ls1?{bad}")).await;
        assert_eq!((a.status, a.code().as_str()), (StatusCode::BAD_REQUEST, "InvalidArgument"));
    }
}

/// `?meta=true` reports the read: replicas, clocks, read repair, siblings; `?local=true`
/// passes through.
#[tokio::test]
async fn meta_report_and_local_read() {
    let (app, backend) = app();
    create_bucket(&app, "mt1").await;
    put(&app, "/buckets/mt1/k", b"v", None).await;
    let a = call(&app, Method::GET, "/buckets/mt1/k?meta=true").await;
    assert_eq!(a.status, StatusCode::OK);
    let j = a.json();
    assert_eq!(j["coordinator"], "n1");
    assert_eq!(j["replicas_read"], serde_json::json!(["n1", "r2", "r3"]));
    assert_eq!(j["read_repair"], false);
    assert_eq!(j["vector_clocks"]["r2"]["n1#1"], 1);
    assert_eq!(j["siblings"].as_array().unwrap().len(), 1);
    assert_eq!(j["r"], 2);

    backend.set_replicas_up(1);
    let a = call(&app, Method::GET, "/buckets/mt1/k").await;
    assert_eq!(a.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(a.code(), "ReadQuorumNotReached");
    assert_eq!(a.json()["replicas_read"], serde_json::json!(["n1"]));
    let a = call(&app, Method::GET, "/buckets/mt1/k?local=true").await;
    assert_eq!((a.status, &a.body[..]), (StatusCode::OK, &b"v"[..]));
    let a = call(&app, Method::GET, "/buckets/mt1/k?r=1").await;
    assert_eq!(a.status, StatusCode::OK);
}

/// A write that does not reach W is a 503 with the partial replica report, never a 200.
#[tokio::test]
async fn write_quorum_failure_is_503_with_report() {
    let (app, backend) = app();
    create_bucket(&app, "wq1").await;
    backend.set_replicas_up(1);
    let a = send(&app, req_body(Method::PUT, "/buckets/wq1/k", "x")).await;
    assert_eq!(a.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(a.code(), "WriteQuorumNotReached");
    let j = a.json();
    assert_eq!(j["error"]["message"], "1 of 2 required replicas acknowledged");
    assert_eq!(j["replicas_written"], serde_json::json!(["n1"]));
    assert_eq!(j["failed"], serde_json::json!(["r2", "r3"]));
    assert_eq!(j["vector_clocks"]["n1"]["n1#1"], 1);
    assert!(backend.stored("wq1", "k").is_none());
    assert_eq!(j["pref_list"], serde_json::json!(["n1", "r2", "r3"]));
    assert_eq!(j["w"], 2);
    assert_eq!(a.header("retry-after").unwrap(), "1");
    let a = send(&app, req_body(Method::PUT, "/buckets/wq1/k?w=1", "x")).await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(a.json()["w"], 1);
}

/// `/metrics` exposes request counters and latency histograms per route and status, then the
/// backend's own metrics.
#[tokio::test]
async fn metrics_expose_request_counters() {
    let (app, _) = app();
    create_bucket(&app, "mx1").await;
    put(&app, "/buckets/mx1/a", b"1", None).await;
    put(&app, "/buckets/mx1/b", b"2", None).await;
    call(&app, Method::GET, "/buckets/mx1/nope").await;
    call(&app, Method::GET, "/no/such/route").await;
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
        "cairn_memory_objects 2",
    ] {
        assert!(text.lines().any(|l| l == line), "missing {line:?} in:\n{text}");
    }
}

/// `/health` is 200 or 503 with JSON; `/cluster` merges the backend's view; every answer names
/// the node.
#[tokio::test]
async fn health_and_cluster() {
    let (app, backend) = app();
    let a = call(&app, Method::GET, "/health").await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(a.json()["status"], "ok");
    assert_eq!(a.header("x-cairn-node").unwrap(), "n1");
    backend.set_healthy(false);
    let a = call(&app, Method::GET, "/health").await;
    assert_eq!(a.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(a.json()["success"], false);
    let a = call(&app, Method::GET, "/cluster").await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(a.json()["members"].as_array().unwrap().len(), 3);
    assert_eq!(a.json()["node"], "n1");
}

/// A panic inside the backend becomes a 500 `Internal` that does not leak the panic text, and
/// the router keeps serving.
#[tokio::test]
async fn a_panic_is_a_500_and_the_router_survives() {
    let (app, backend) = app();
    create_bucket(&app, "pn1").await;
    put(&app, "/buckets/pn1/k", b"v", None).await;
    backend.set_panic_on_read(true);
    let a = call(&app, Method::GET, "/buckets/pn1/k").await;
    assert_eq!(a.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(a.code(), "Internal");
    assert!(!String::from_utf8_lossy(&a.body).contains("panic_on_read"));
    backend.set_panic_on_read(false);
    let a = call(&app, Method::GET, "/buckets/pn1/k").await;
    assert_eq!((a.status, &a.body[..]), (StatusCode::OK, &b"v"[..]));
}

/// A delete with a stale context removes only what it saw: the concurrent write survives, the
/// read shows both (the delete marked `deleted`), and the delete marker cannot be fetched.
#[tokio::test]
async fn delete_concurrent_with_a_write_is_shown_as_a_conflict() {
    let (app, _) = app();
    create_bucket(&app, "dc1").await;
    let first = put(&app, "/buckets/dc1/k", b"one", None).await;
    let second = put(&app, "/buckets/dc1/k", b"two", None).await;
    let r = axum::http::Request::builder()
        .method(Method::DELETE)
        .uri("/buckets/dc1/k")
        .header("x-cairn-context", first["context"].as_str().unwrap())
        .body(axum::body::Body::empty())
        .unwrap();
    let del = send(&app, r).await;
    assert_eq!(del.status, StatusCode::OK);
    let a = call(&app, Method::GET, "/buckets/dc1/k").await;
    assert_eq!(a.status, StatusCode::MULTIPLE_CHOICES);
    let sibs = a.json()["siblings"].as_array().unwrap().clone();
    assert_eq!(sibs.len(), 2);
    let live: Vec<_> = sibs.iter().filter(|s| s["deleted"] == false).collect();
    assert_eq!(live.len(), 1);
    assert_eq!(live[0]["id"], second["version"]);
    let marker = sibs.iter().find(|s| s["deleted"] == true).unwrap();
    assert_eq!(marker["id"], del.json()["version"]);
    let uri = format!("/buckets/dc1/k?sibling={}", marker["id"].as_str().unwrap());
    let a = call(&app, Method::GET, &uri).await;
    assert_eq!((a.status, a.code().as_str()), (StatusCode::NOT_FOUND, "NoSuchVersion"));
    // Deleting with the read's context settles it: 404 with a context.
    let ctx = call(&app, Method::GET, "/buckets/dc1/k").await.header("x-cairn-context").unwrap();
    let r = axum::http::Request::builder()
        .method(Method::DELETE)
        .uri("/buckets/dc1/k")
        .header("x-cairn-context", ctx)
        .body(axum::body::Body::empty())
        .unwrap();
    assert_eq!(send(&app, r).await.status, StatusCode::OK);
    let a = call(&app, Method::GET, "/buckets/dc1/k").await;
    assert_eq!((a.status, a.code().as_str()), (StatusCode::NOT_FOUND, "NoSuchKey"));
}
