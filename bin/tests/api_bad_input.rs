//! Every bad input gets the right status and error code, changes nothing on the real nodes (see
//! `inproc`), and the API keeps serving afterwards.
#![allow(clippy::unwrap_used)]

mod inproc;

use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use bytes::Bytes;
use inproc::http::*;
use inproc::{MAX, MAX_REQUEST, TestCluster};
use serde_json::json;

/// Bad bucket names: `..`, `../etc` (raw and encoded), upper case, too long, an IP address,
/// too short, bad characters — on create, listing, object writes and uploads.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_bucket_names_are_400_and_create_nothing() {
    let c = TestCluster::start().await;
    let app = c.app.clone();
    let long = "a".repeat(64);
    let bad = [
        "..",
        "..%2Fetc",
        "%2E%2E",
        "Photos",
        long.as_str(),
        "192.168.1.1",
        "ab",
        "a_b",
        "-abc",
        "abc-",
        "a..b",
        "%FF%FEabc",
        "abc%00",
    ];
    for b in bad {
        for (method, uri) in [
            (Method::POST, format!("/buckets/{b}")),
            (Method::DELETE, format!("/buckets/{b}")),
            (Method::GET, format!("/buckets/{b}")),
            (Method::PUT, format!("/buckets/{b}/obj")),
            (Method::GET, format!("/buckets/{b}/obj")),
            (Method::DELETE, format!("/buckets/{b}/obj")),
        ] {
            let a = send(&app, req_body(method.clone(), &uri, "data")).await;
            assert_eq!(a.status, StatusCode::BAD_REQUEST, "{method} {uri}");
            assert_eq!(a.code(), "InvalidBucketName", "{method} {uri}");
        }
        let body = multipart_body(&[("file_content", Some("x"), None, b"x")]);
        let a = send(&app, multipart_req(&format!("/buckets/{b}/files"), body)).await;
        assert_eq!((a.status, a.code().as_str()), (StatusCode::BAD_REQUEST, "InvalidBucketName"));
    }
    // The unnormalised traversal path reaches the object route with bucket `..`.
    let a = call(&app, Method::POST, "/buckets/../etc").await;
    assert_eq!((a.status, a.code().as_str()), (StatusCode::BAD_REQUEST, "InvalidBucketName"));
    let a = send(&app, req_body(Method::PUT, "/buckets/../etc/passwd", "x")).await;
    assert_eq!((a.status, a.code().as_str()), (StatusCode::BAD_REQUEST, "InvalidBucketName"));
    let j = call(&app, Method::GET, "/buckets").await.json();
    assert_eq!(j["buckets"], json!([]));
    assert_eq!(c.all_keys(), 0, "no node stored anything");
    create_bucket(&app, "still-serving").await;
}

/// Bad object names: empty, over 1024 bytes, NUL, invalid UTF-8 (percent-encoded), a broken
/// escape — on PUT, GET, DELETE and as a multipart filename.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_object_names_are_400_and_store_nothing() {
    let c = TestCluster::start().await;
    let app = c.app.clone();
    create_bucket(&app, "objs").await;
    let long = "a".repeat(1025);
    for name in ["", long.as_str(), "a%00b", "%FF%FE", "ok%C3", "bad%2", "bad%zz"] {
        for method in [Method::PUT, Method::GET, Method::DELETE, Method::POST] {
            let uri = format!("/buckets/objs/{name}");
            let a = send(&app, req_body(method.clone(), &uri, "data")).await;
            assert_eq!(a.status, StatusCode::BAD_REQUEST, "{method} {uri:.60}");
            assert_eq!(a.code(), "InvalidObjectName", "{method} {uri:.60}");
        }
    }
    assert_eq!(c.object_keys("n1"), 0);
    // Exactly 1024 bytes is fine.
    let ok = "b".repeat(1024);
    put(&app, &format!("/buckets/objs/{ok}"), b"x", None).await;
    c.settled().await;
    assert_eq!(c.object_keys("n1"), 1);
    assert!(c.stored("n1", "objs", &ok).await.is_some());

    for filename in [Some(""), None, Some(long.as_str())] {
        let body = multipart_body(&[("file_content", filename, None, b"x")]);
        let a = send(&app, multipart_req("/buckets/objs/files", body)).await;
        assert_eq!((a.status, a.code().as_str()), (StatusCode::BAD_REQUEST, "InvalidObjectName"));
    }
    assert_eq!(c.object_keys("n1"), 1);
}

/// Missing or malformed multipart bodies are 400 `MalformedMultipart` and store nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_multipart_is_400() {
    let c = TestCluster::start().await;
    let app = c.app.clone();
    create_bucket(&app, "mp1").await;
    let uri = "/buckets/mp1/files";
    let good = multipart_body(&[("file_content", Some("f"), None, b"content")]);
    let cut = good[..good.len() - 20].to_vec();
    let cases: Vec<(Option<String>, Vec<u8>)> = vec![
        (None, good.clone()),                               // no content type
        (Some("application/json".into()), b"{}".to_vec()),  // not multipart
        (Some("multipart/form-data".into()), good.clone()), // no boundary
        (Some(format!("multipart/form-data; boundary={BOUNDARY}")), Vec::new()), // empty body
        (Some(format!("multipart/form-data; boundary={BOUNDARY}")), b"garbage".to_vec()),
        (Some(format!("multipart/form-data; boundary={BOUNDARY}")), cut), // truncated
        (Some("multipart/form-data; boundary=other".into()), good.clone()), // wrong boundary
        // Only a non-file field: no file part.
        (
            Some(format!("multipart/form-data; boundary={BOUNDARY}")),
            multipart_body(&[("comment", None, None, b"hi")]),
        ),
    ];
    for (i, (ctype, body)) in cases.into_iter().enumerate() {
        let mut r = Request::builder().method(Method::POST).uri(uri);
        if let Some(c) = ctype {
            r = r.header("content-type", c);
        }
        let a = send(&app, r.body(Body::from(body)).unwrap()).await;
        assert_eq!(a.status, StatusCode::BAD_REQUEST, "case {i}");
        assert_eq!(a.code(), "MalformedMultipart", "case {i}");
    }
    assert_eq!(c.object_keys("n1"), 0);
    assert!(c.stored_nowhere("mp1", "f").await);
    let a = send(&app, multipart_req(uri, good)).await;
    assert_eq!(a.status, StatusCode::OK);
}

/// Bodies over the maximum object size are 413 and not stored, whether the length is declared
/// or the body is streamed without one; exactly the maximum is accepted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversize_bodies_are_413_and_not_stored() {
    let c = TestCluster::start().await;
    let app = c.app.clone();
    create_bucket(&app, "big").await;
    let over = vec![7u8; MAX as usize + 1];

    let a = send(&app, req_body(Method::PUT, "/buckets/big/declared", over.clone())).await;
    assert_eq!((a.status, a.code().as_str()), (StatusCode::PAYLOAD_TOO_LARGE, "EntityTooLarge"));
    assert_eq!(a.json()["limit"], MAX);

    // Chunked, no Content-Length: the count stops it mid-stream.
    let chunks: Vec<Result<Bytes, std::io::Error>> =
        over.chunks(100).map(|c| Ok(Bytes::copy_from_slice(c))).collect();
    let r = Request::builder()
        .method(Method::PUT)
        .uri("/buckets/big/streamed")
        .body(Body::from_stream(futures::stream::iter(chunks)))
        .unwrap();
    let a = send(&app, r).await;
    assert_eq!((a.status, a.code().as_str()), (StatusCode::PAYLOAD_TOO_LARGE, "EntityTooLarge"));

    // A lying Content-Length (smaller than the body) does not bypass the count.
    let r = Request::builder()
        .method(Method::PUT)
        .uri("/buckets/big/lying")
        .header("content-length", "10")
        .body(Body::from(over.clone()))
        .unwrap();
    let a = send(&app, r).await;
    assert_eq!(a.status, StatusCode::PAYLOAD_TOO_LARGE);

    // Multipart: the over-size part is not stored; the part before it was, and is reported.
    let body = multipart_body(&[
        ("file_content", Some("small"), None, b"ok"),
        ("file_content", Some("huge"), None, &over),
        ("file_content", Some("after"), None, b"never read"),
    ]);
    let a = send(&app, multipart_req("/buckets/big/files", body)).await;
    assert_eq!((a.status, a.code().as_str()), (StatusCode::PAYLOAD_TOO_LARGE, "EntityTooLarge"));
    let files = a.json()["files"].as_array().unwrap().clone();
    assert_eq!(files.len(), 1);
    assert_eq!(files[0]["name"], "small");
    for name in ["huge", "after", "declared", "streamed", "lying"] {
        assert!(c.stored_nowhere("big", name).await, "{name} was stored");
    }
    c.settled().await;
    assert_eq!(c.object_keys("n1"), 1);
    assert_eq!(c.live_bodies("n1", "big", "small").await, [b"ok".to_vec()]);

    // A whole multipart request over the request limit is refused from its declared length.
    let parts: Vec<Vec<u8>> = (0..10).map(|_| vec![1u8; MAX as usize]).collect();
    let names: Vec<String> = (0..10).map(|i| format!("p{i}")).collect();
    let spec: Vec<Part<'_>> = parts
        .iter()
        .zip(&names)
        .map(|(p, n)| ("file", Some(n.as_str()), None, p.as_slice()))
        .collect();
    let a = send(&app, multipart_req("/buckets/big/files", multipart_body(&spec))).await;
    assert_eq!(a.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(c.object_keys("n1"), 1);

    // The same without a declared length: the running count stops it; parts before the limit
    // were stored and are reported, the part that crossed it was not.
    let body = multipart_body(&spec);
    let chunks: Vec<Result<Bytes, std::io::Error>> =
        body.chunks(512).map(|c| Ok(Bytes::copy_from_slice(c))).collect();
    let r = Request::builder()
        .method(Method::POST)
        .uri("/buckets/big/files")
        .header("content-type", format!("multipart/form-data; boundary={BOUNDARY}"))
        .body(Body::from_stream(futures::stream::iter(chunks)))
        .unwrap();
    let a = send(&app, r).await;
    assert_eq!((a.status, a.code().as_str()), (StatusCode::PAYLOAD_TOO_LARGE, "EntityTooLarge"));
    let stored = a.json()["files"].as_array().unwrap().len();
    // The running count is of part contents (8 x 1 KiB = the 8 KiB limit exactly); the 9th
    // part crosses it.
    assert_eq!(stored as u64, MAX_REQUEST / MAX, "parts wholly inside the limit");
    c.settled().await;
    assert_eq!(c.object_keys("n1"), 1 + stored as u64);
    assert!(c.stored_nowhere("big", &format!("p{stored}")).await);

    let exact = vec![1u8; MAX as usize];
    put(&app, "/buckets/big/exact", &exact, None).await;
    let a = call(&app, Method::GET, "/buckets/big/exact").await;
    assert_eq!((a.status, &a.body[..]), (StatusCode::OK, &exact[..]));
}

/// An invalid context token is 400 `InvalidContext` on PUT and DELETE; the object is unchanged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_context_is_400_and_changes_nothing() {
    let c = TestCluster::start().await;
    let app = c.app.clone();
    create_bucket(&app, "ctx").await;
    put(&app, "/buckets/ctx/k", b"v1", None).await;
    c.replicated("ctx", "k").await;
    let before = c.stored("n1", "ctx", "k").await.unwrap();
    let huge = "A".repeat(5000);
    for token in ["!!!", "AAAA", "gaNuIDEjMQE", huge.as_str(), "é"] {
        for method in [Method::PUT, Method::DELETE] {
            let r = Request::builder()
                .method(method.clone())
                .uri("/buckets/ctx/k")
                .header(
                    "x-cairn-context",
                    axum::http::HeaderValue::from_bytes(token.as_bytes()).unwrap(),
                )
                .body(Body::from("v2"))
                .unwrap();
            let a = send(&app, r).await;
            assert_eq!(a.status, StatusCode::BAD_REQUEST, "{method} {token:.20}");
            assert_eq!(a.code(), "InvalidContext", "{method} {token:.20}");
        }
    }
    assert_eq!(c.stored("n1", "ctx", "k").await.unwrap(), before);
    // A context together with overwrite=true is contradictory.
    let ctx = call(&app, Method::GET, "/buckets/ctx/k").await.header("x-cairn-context").unwrap();
    let r = Request::builder()
        .method(Method::PUT)
        .uri("/buckets/ctx/k?overwrite=true")
        .header("x-cairn-context", ctx)
        .body(Body::from("v2"))
        .unwrap();
    let a = send(&app, r).await;
    assert_eq!((a.status, a.code().as_str()), (StatusCode::BAD_REQUEST, "InvalidArgument"));
    assert_eq!(c.stored("n1", "ctx", "k").await.unwrap(), before);
}

/// `r` and `w` outside 1..=N (N = 3) are 400 `InvalidArgument`; nothing is written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quorum_out_of_range_is_400() {
    let c = TestCluster::start().await;
    let app = c.app.clone();
    create_bucket(&app, "qq1").await;
    for q in ["0", "4", "-1", "x", "", "1.5", "18446744073709551616"] {
        let a = send(&app, req_body(Method::PUT, &format!("/buckets/qq1/k?w={q}"), "v")).await;
        assert_eq!((a.status, a.code().as_str()), (StatusCode::BAD_REQUEST, "InvalidArgument"));
        let a = call(&app, Method::DELETE, &format!("/buckets/qq1/k?w={q}")).await;
        assert_eq!((a.status, a.code().as_str()), (StatusCode::BAD_REQUEST, "InvalidArgument"));
        let a = call(&app, Method::GET, &format!("/buckets/qq1/k?r={q}")).await;
        assert_eq!((a.status, a.code().as_str()), (StatusCode::BAD_REQUEST, "InvalidArgument"));
        let body = multipart_body(&[("file", Some("m"), None, b"x")]);
        let a = send(&app, multipart_req(&format!("/buckets/qq1/files?w={q}"), body)).await;
        assert_eq!((a.status, a.code().as_str()), (StatusCode::BAD_REQUEST, "InvalidArgument"));
    }
    for bad in ["meta=maybe", "local=2", "r=1&r=2", "sibling="] {
        let a = call(&app, Method::GET, &format!("/buckets/qq1/k?{bad}")).await;
        assert_eq!(a.status, StatusCode::BAD_REQUEST, "{bad}");
    }
    let a = send(&app, req_body(Method::PUT, "/buckets/qq1/k?overwrite=yes", "v")).await;
    assert_eq!((a.status, a.code().as_str()), (StatusCode::BAD_REQUEST, "InvalidArgument"));
    assert_eq!(c.object_keys("n1"), 0);
    assert!(c.stored_nowhere("qq1", "k").await && c.stored_nowhere("qq1", "m").await);
    // w=3: all three replicas stored it before the answer; r=3 reads all three.
    let j = put(&app, "/buckets/qq1/k?w=3", b"v", None).await;
    assert_eq!(sorted_strings(&j["replicas_written"]), inproc::IDS);
    let a = call(&app, Method::GET, "/buckets/qq1/k?r=3").await;
    assert_eq!((a.status, &a.body[..]), (StatusCode::OK, &b"v"[..]));
}

/// Requests on a bucket that does not exist are 404 `NoSuchBucket`; creating an existing one is
/// 409; an unknown conflict policy is 400.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_bucket_is_404_and_duplicates_409() {
    let c = TestCluster::start().await;
    let app = c.app.clone();
    let body = || multipart_body(&[("file_content", Some("f"), None, b"x")]);
    let answers = [
        send(&app, req_body(Method::PUT, "/buckets/nobucket/k", "v")).await,
        call(&app, Method::GET, "/buckets/nobucket/k").await,
        call(&app, Method::DELETE, "/buckets/nobucket/k").await,
        call(&app, Method::GET, "/buckets/nobucket").await,
        call(&app, Method::DELETE, "/buckets/nobucket").await,
        send(&app, multipart_req("/buckets/nobucket/files", body())).await,
    ];
    for a in answers {
        assert_eq!((a.status, a.code().as_str()), (StatusCode::NOT_FOUND, "NoSuchBucket"));
    }
    assert_eq!(c.all_keys(), 0, "no node stored anything");
    create_bucket(&app, "dup").await;
    let a = call(&app, Method::POST, "/buckets/dup").await;
    assert_eq!((a.status, a.code().as_str()), (StatusCode::CONFLICT, "BucketAlreadyExists"));
    // Through another node too: the registry is replicated.
    let a = call(&c.router("n2"), Method::POST, "/buckets/dup").await;
    assert_eq!((a.status, a.code().as_str()), (StatusCode::CONFLICT, "BucketAlreadyExists"));
    let a = call(&app, Method::POST, "/buckets/other?conflict=newest").await;
    assert_eq!((a.status, a.code().as_str()), (StatusCode::BAD_REQUEST, "InvalidArgument"));
    let j = call(&app, Method::GET, "/buckets").await.json();
    assert_eq!(j["buckets"], json!([{"name": "dup", "conflict": "siblings"}]));
    // Deleting a missing object in an existing bucket is 404 NoSuchKey.
    let a = call(&app, Method::DELETE, "/buckets/dup/missing").await;
    assert_eq!((a.status, a.code().as_str()), (StatusCode::NOT_FOUND, "NoSuchKey"));
    assert_eq!(c.object_keys("n1"), 0);
}

/// Unknown routes and methods answer JSON errors too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_routes_and_methods_are_json() {
    let c = TestCluster::start().await;
    let app = c.app.clone();
    let a = call(&app, Method::GET, "/nothing/here").await;
    assert_eq!((a.status, a.code().as_str()), (StatusCode::NOT_FOUND, "NoSuchRoute"));
    let a = call(&app, Method::GET, "/buckets/").await;
    assert_eq!(a.status, StatusCode::NOT_FOUND);
    let a = call(&app, Method::PATCH, "/buckets").await;
    assert_eq!((a.status, a.code().as_str()), (StatusCode::METHOD_NOT_ALLOWED, "MethodNotAllowed"));
    assert_eq!(a.header("allow").unwrap(), "GET, HEAD");
    let a = call(&app, Method::PUT, "/buckets/abc").await;
    assert_eq!((a.status, a.code().as_str()), (StatusCode::METHOD_NOT_ALLOWED, "MethodNotAllowed"));
    assert_eq!(a.header("allow").unwrap(), "GET, HEAD, POST, DELETE");
    let a = call(&app, Method::PATCH, "/buckets/abc/files").await;
    assert_eq!(a.header("allow").unwrap(), "GET, HEAD, PUT, DELETE, POST");
    let a = call(&app, Method::POST, "/buckets/abc/some/object").await;
    assert_eq!((a.status, a.code().as_str()), (StatusCode::METHOD_NOT_ALLOWED, "MethodNotAllowed"));
    assert_eq!(a.header("allow").unwrap(), "GET, HEAD, PUT, DELETE");
}

/// A client that stops sending mid-body gets 408 `RequestTimeout` after the idle limit and
/// nothing is stored (raw PUT and multipart). The stalled stream never yields again, so the
/// outcome does not depend on timing; the short limit only keeps the test fast.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_uploads_are_408_and_not_stored() {
    use futures::StreamExt;

    let api = cairn_api::ApiConfig {
        body_idle_timeout: std::time::Duration::from_millis(100),
        ..inproc::api_config()
    };
    let c = TestCluster::with_api(api).await;
    let app = c.app.clone();
    create_bucket(&app, "slow").await;
    let stalled = |first: Vec<u8>| {
        let s = futures::stream::iter(vec![Ok::<Bytes, std::io::Error>(Bytes::from(first))])
            .chain(futures::stream::pending());
        Body::from_stream(s)
    };

    let r = Request::builder()
        .method(Method::PUT)
        .uri("/buckets/slow/k")
        .body(stalled(b"partial".to_vec()))
        .unwrap();
    let a = send(&app, r).await;
    assert_eq!((a.status, a.code().as_str()), (StatusCode::REQUEST_TIMEOUT, "RequestTimeout"));

    // One complete part, then the start of a second one, then silence.
    let mut body = multipart_body(&[("file_content", Some("done"), None, b"complete")]);
    body.truncate(body.len() - format!("--{BOUNDARY}--\r\n").len());
    let second = format!(
        "--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"cut\"\r\n\r\nhalf"
    );
    body.extend_from_slice(second.as_bytes());
    let r = Request::builder()
        .method(Method::POST)
        .uri("/buckets/slow/files")
        .header("content-type", format!("multipart/form-data; boundary={BOUNDARY}"))
        .body(stalled(body))
        .unwrap();
    let a = send(&app, r).await;
    assert_eq!((a.status, a.code().as_str()), (StatusCode::REQUEST_TIMEOUT, "RequestTimeout"));
    // The complete part was stored and is reported; the stalled one was not.
    assert_eq!(a.json()["files"][0]["name"], "done");
    let a = call(&app, Method::GET, "/buckets/slow/done").await;
    assert_eq!((a.status, &a.body[..]), (StatusCode::OK, &b"complete"[..]));
    assert!(c.stored_nowhere("slow", "k").await);
    assert!(c.stored_nowhere("slow", "cut").await);
    create_bucket(&app, "still-serving").await;
}
