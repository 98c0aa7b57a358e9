//! Helpers shared by the router tests: a router over a `MemoryBackend`, one-shot requests,
//! hand-built multipart bodies.
#![allow(clippy::unwrap_used, dead_code)]

use std::sync::Arc;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, Method, Request, StatusCode};
use cairn_api::testing::MemoryBackend;
use cairn_api::{ApiConfig, router};
use cairn_replication::NodeId;
use serde_json::Value;
use tower::ServiceExt;

/// The maximum object size used by the tests (small, so 413 is cheap to provoke).
pub const MAX: u64 = 1024;
/// The maximum multipart request size used by the tests.
pub const MAX_REQUEST: u64 = 8 * 1024;
/// Boundary of the multipart bodies built here.
pub const BOUNDARY: &str = "cairn-test-boundary-7MA4YWxkTrZu0gW";

/// A router over a fresh in-memory backend named `n1` with N = 3.
pub fn app() -> (Router, Arc<MemoryBackend>) {
    let backend = Arc::new(MemoryBackend::new(NodeId::new("n1").unwrap(), 3));
    let config =
        ApiConfig { max_object_size: MAX, max_request_size: MAX_REQUEST, ..ApiConfig::new(MAX, 3) };
    (router(Arc::clone(&backend), config), backend)
}

/// An answer, fully read.
#[derive(Debug)]
pub struct Answer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Answer {
    /// The body as JSON (panics with the body text if it is not JSON).
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", String::from_utf8_lossy(&self.body)))
    }

    /// The error code of a JSON error answer, after checking the error shape.
    pub fn code(&self) -> String {
        let j = self.json();
        assert_eq!(j["success"], false, "{j}");
        assert_eq!(j["node"], "n1", "{j}");
        assert!(j["error"]["message"].is_string(), "{j}");
        j["error"]["code"].as_str().unwrap().to_string()
    }

    /// A header as text.
    pub fn header(&self, name: &str) -> Option<String> {
        self.headers.get(name).map(|v| v.to_str().unwrap().to_string())
    }
}

/// Sends one request through the router.
pub async fn send(app: &Router, req: Request<Body>) -> Answer {
    let resp = app.clone().oneshot(req).await.unwrap();
    let status = resp.status();
    let headers = resp.headers().clone();
    let body = axum::body::to_bytes(resp.into_body(), usize::MAX).await.unwrap();
    Answer { status, headers, body }
}

/// A request without body.
pub fn req(method: Method, uri: &str) -> Request<Body> {
    Request::builder().method(method).uri(uri).body(Body::empty()).unwrap()
}

/// A request with a body and its Content-Length.
pub fn req_body(method: Method, uri: &str, body: impl Into<Vec<u8>>) -> Request<Body> {
    let body = body.into();
    Request::builder()
        .method(method)
        .uri(uri)
        .header("content-length", body.len())
        .body(Body::from(body))
        .unwrap()
}

/// Shorthand for a request with no body.
pub async fn call(app: &Router, method: Method, uri: &str) -> Answer {
    send(app, req(method, uri)).await
}

/// One part of a multipart body: (field name, filename, content type, content).
pub type Part<'a> = (&'a str, Option<&'a str>, Option<&'a str>, &'a [u8]);

/// A `multipart/form-data` body with the given parts.
pub fn multipart_body(parts: &[Part<'_>]) -> Vec<u8> {
    let mut out = Vec::new();
    for (field, file, ctype, content) in parts {
        out.extend_from_slice(format!("--{BOUNDARY}\r\n").as_bytes());
        let mut disp = format!("Content-Disposition: form-data; name=\"{field}\"");
        if let Some(f) = file {
            disp.push_str(&format!("; filename=\"{f}\""));
        }
        out.extend_from_slice(disp.as_bytes());
        out.extend_from_slice(b"\r\n");
        if let Some(c) = ctype {
            out.extend_from_slice(format!("Content-Type: {c}\r\n").as_bytes());
        }
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(content);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(format!("--{BOUNDARY}--\r\n").as_bytes());
    out
}

/// A multipart upload request to `uri` with `body` (see [`multipart_body`]).
pub fn multipart_req(uri: &str, body: Vec<u8>) -> Request<Body> {
    Request::builder()
        .method(Method::POST)
        .uri(uri)
        .header("content-type", format!("multipart/form-data; boundary={BOUNDARY}"))
        .header("content-length", body.len())
        .body(Body::from(body))
        .unwrap()
}

/// Creates a bucket and asserts success.
pub async fn create_bucket(app: &Router, name: &str) {
    let a = call(app, Method::POST, &format!("/buckets/{name}")).await;
    assert_eq!(a.status, StatusCode::OK, "{:?}", a.body);
}

/// PUTs an object (optionally with a context) and returns the JSON answer after asserting 200.
pub async fn put(app: &Router, uri: &str, body: &[u8], context: Option<&str>) -> Value {
    let mut r =
        Request::builder().method(Method::PUT).uri(uri).header("content-type", "text/plain");
    if let Some(c) = context {
        r = r.header("x-cairn-context", c);
    }
    let a = send(app, r.body(Body::from(body.to_vec())).unwrap()).await;
    assert_eq!(a.status, StatusCode::OK, "{}", String::from_utf8_lossy(&a.body));
    a.json()
}
