//! Requests to a router through `tower::ServiceExt::oneshot`: answers read whole, hand-built
//! multipart bodies, small shorthands.

use axum::Router;
use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, Method, Request, StatusCode};
use serde_json::Value;
use tower::ServiceExt;

/// Boundary of the multipart bodies built here.
pub const BOUNDARY: &str = "cairn-test-boundary-7MA4YWxkTrZu0gW";

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

    /// The error code of a JSON error answer, after checking the error shape (and that the
    /// answer names the node that gave it, in the body and the header).
    pub fn code(&self) -> String {
        let j = self.json();
        assert_eq!(j["success"], false, "{j}");
        assert!(super::IDS.contains(&j["node"].as_str().unwrap_or_default()), "{j}");
        assert_eq!(self.header("x-cairn-node").as_deref(), j["node"].as_str(), "{j}");
        assert!(j["error"]["message"].is_string(), "{j}");
        j["error"]["code"].as_str().unwrap().to_string()
    }

    /// A header as text.
    pub fn header(&self, name: &str) -> Option<String> {
        self.headers.get(name).map(|v| v.to_str().unwrap().to_string())
    }

    /// The body as text (for assertion messages).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
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

/// A request with a body and its Content-Length (no Content-Type).
pub fn req_body(method: Method, uri: &str, body: impl Into<Vec<u8>>) -> Request<Body> {
    let body = body.into();
    Request::builder()
        .method(method)
        .uri(uri)
        .header("content-length", body.len())
        .body(Body::from(body))
        .unwrap()
}

/// A request without body carrying `X-Cairn-Context: context`.
pub fn req_ctx(method: Method, uri: &str, context: &str) -> Request<Body> {
    Request::builder()
        .method(method)
        .uri(uri)
        .header("x-cairn-context", context)
        .body(Body::empty())
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
    multipart_req_ctx(uri, body, None)
}

/// A multipart upload request, with `X-Cairn-Context` when `context` is given.
pub fn multipart_req_ctx(uri: &str, body: Vec<u8>, context: Option<&str>) -> Request<Body> {
    let mut r = Request::builder()
        .method(Method::POST)
        .uri(uri)
        .header("content-type", format!("multipart/form-data; boundary={BOUNDARY}"))
        .header("content-length", body.len());
    if let Some(c) = context {
        r = r.header("x-cairn-context", c);
    }
    r.body(Body::from(body)).unwrap()
}

/// Creates a bucket and asserts success.
pub async fn create_bucket(app: &Router, name: &str) {
    let a = call(app, Method::POST, &format!("/buckets/{name}")).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text());
}

/// PUTs an object as `text/plain` (optionally with a context) and returns the JSON answer
/// after asserting 200.
pub async fn put(app: &Router, uri: &str, body: &[u8], context: Option<&str>) -> Value {
    let mut r =
        Request::builder().method(Method::PUT).uri(uri).header("content-type", "text/plain");
    if let Some(c) = context {
        r = r.header("x-cairn-context", c);
    }
    let a = send(app, r.body(Body::from(body.to_vec())).unwrap()).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text());
    a.json()
}

/// The names of a listing answer, in order.
pub fn names(listing: &Value) -> Vec<String> {
    listing["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["name"].as_str().unwrap().to_string())
        .collect()
}

/// A JSON array of strings as a sorted vector.
pub fn sorted_strings(v: &Value) -> Vec<String> {
    let mut out: Vec<String> = v
        .as_array()
        .unwrap_or_else(|| panic!("not an array: {v}"))
        .iter()
        .map(|s| s.as_str().unwrap().to_string())
        .collect();
    out.sort();
    out
}
