//! One benchmark client's HTTP/1.1 keep-alive connection (hyper 1, no pooling layer) and the
//! requests of both protocols.
//!
//! Each client owns one [`Conn`]: a `SendRequest` half whose connection task runs on the runtime.
//! Any transport error or timeout drops the connection; the next request reconnects.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use http_body_util::BodyExt;
use hyper::client::conn::http1::{SendRequest, handshake};
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use super::body::Payload;
use super::s3::{self, Credentials};

/// An `http://host:port` endpoint.
#[derive(Clone, Debug)]
pub struct Endpoint {
    /// The endpoint as given, for messages and the report.
    pub url: String,
    /// `host:port` to connect to and to send as `Host`.
    pub authority: String,
}

impl Endpoint {
    /// Parses `http://host[:port][/]` (port 80 by default). HTTPS is not supported.
    pub fn parse(s: &str) -> Result<Self, String> {
        let rest = s
            .strip_prefix("http://")
            .ok_or_else(|| format!("endpoint {s:?}: only http:// URLs are supported"))?;
        let authority = rest.trim_end_matches('/');
        if authority.is_empty() || authority.contains('/') {
            return Err(format!("endpoint {s:?}: expected http://host:port (no path)"));
        }
        let authority =
            if authority.contains(':') { authority.to_owned() } else { format!("{authority}:80") };
        Ok(Self { url: s.trim_end_matches('/').to_owned(), authority })
    }
}

/// The wire protocol spoken to the store.
#[derive(Copy, Clone, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// Cairn's REST API: `/buckets/{bucket}/{key}`.
    Cairn,
    /// Path-style S3 with AWS Signature Version 4.
    S3,
}

/// One operation on one object.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum OpKind {
    /// Write an object.
    Put,
    /// Read an object.
    Get,
    /// Delete an object.
    Delete,
    /// Create the bucket.
    CreateBucket,
}

impl OpKind {
    /// The name used in the report.
    pub fn name(self) -> &'static str {
        match self {
            Self::Put => "put",
            Self::Get => "get",
            Self::Delete => "delete",
            Self::CreateBucket => "create_bucket",
        }
    }
}

/// What the store answered, classified.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// 2xx.
    Ok,
    /// 300 Multiple Choices: a Cairn read found concurrent versions.
    Siblings,
    /// 404 (a read or delete of a key that is not there).
    NotFound,
    /// Any other 4xx.
    Http4xx,
    /// 5xx, including Cairn's 503s (quorum failures, `Unavailable`, and `SlowDown` when a node's
    /// large-object buffer budget is spent): the request may be retried.
    Http5xx,
    /// Any other status (1xx, other 3xx).
    HttpOther,
    /// No answer within `--timeout`.
    Timeout,
    /// The TCP connection or HTTP handshake failed.
    Connect,
    /// The connection failed mid-request.
    Io,
}

impl Outcome {
    /// The name used in the report.
    pub fn name(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::Siblings => "siblings",
            Self::NotFound => "not_found",
            Self::Http4xx => "http_4xx",
            Self::Http5xx => "http_5xx",
            Self::HttpOther => "http_other",
            Self::Timeout => "timeout",
            Self::Connect => "connect",
            Self::Io => "io",
        }
    }

    /// Whether the operation succeeded (its latency is recorded).
    pub fn is_success(self) -> bool {
        matches!(self, Self::Ok | Self::Siblings)
    }

    /// Classifies a status code.
    pub fn from_status(status: StatusCode) -> Self {
        match status.as_u16() {
            200..=299 => Self::Ok,
            300 => Self::Siblings,
            404 => Self::NotFound,
            400..=499 => Self::Http4xx,
            500..=599 => Self::Http5xx,
            _ => Self::HttpOther,
        }
    }
}

/// How requests are addressed and authenticated.
#[derive(Clone, Debug)]
pub struct Target {
    /// Wire protocol.
    pub protocol: Protocol,
    /// Bucket name.
    pub bucket: String,
    /// S3 credentials (S3 only).
    pub creds: Option<Credentials>,
}

impl Target {
    /// Builds the request for `op` on `key` (ignored for bucket creation) with `body` for puts.
    /// `overwrite` asks Cairn to replace whatever the key holds (`?overwrite=true`).
    pub fn request(
        &self,
        endpoint: &Endpoint,
        op: OpKind,
        key: &str,
        body: Payload,
        overwrite: bool,
        unix_secs: u64,
    ) -> Result<Request<Payload>> {
        let (method, path, query) = match (self.protocol, op) {
            (Protocol::Cairn, OpKind::CreateBucket) => {
                (Method::POST, format!("/buckets/{}", self.bucket), "")
            }
            (Protocol::Cairn, _) => {
                let q = if op == OpKind::Put && overwrite { "?overwrite=true" } else { "" };
                (method_of(op), format!("/buckets/{}/{}", self.bucket, key), q)
            }
            (Protocol::S3, OpKind::CreateBucket) => (Method::PUT, format!("/{}", self.bucket), ""),
            (Protocol::S3, _) => (method_of(op), format!("/{}/{}", self.bucket, key), ""),
        };
        let uri = format!("{}{query}", s3::uri_encode_path(&path));
        let mut req = Request::builder()
            .method(method.clone())
            .uri(uri)
            .header(hyper::header::HOST, &endpoint.authority);
        if op == OpKind::Put {
            req = req.header(hyper::header::CONTENT_TYPE, "application/octet-stream");
        }
        if let Some(creds) = &self.creds {
            let date = s3::amz_date(unix_secs);
            let (date, payload, auth) =
                s3::sign_request(creds, method.as_str(), &endpoint.authority, &path, &date);
            req = req
                .header("x-amz-date", date)
                .header("x-amz-content-sha256", payload)
                .header(hyper::header::AUTHORIZATION, auth);
        }
        req.body(body).context("building a request")
    }
}

fn method_of(op: OpKind) -> Method {
    match op {
        OpKind::Put => Method::PUT,
        OpKind::Get => Method::GET,
        OpKind::Delete => Method::DELETE,
        OpKind::CreateBucket => Method::POST,
    }
}

/// The result of one request: its outcome and the response body bytes received.
#[derive(Copy, Clone, Debug)]
pub struct Answer {
    /// Classification.
    pub outcome: Outcome,
    /// HTTP status, when one arrived.
    pub status: Option<StatusCode>,
    /// Response body bytes read.
    pub body_bytes: u64,
    /// `Retry-After` of the answer, in whole seconds (Cairn sends it with every 503).
    pub retry_after: Option<Duration>,
}

impl Answer {
    fn failed(outcome: Outcome) -> Self {
        Self { outcome, status: None, body_bytes: 0, retry_after: None }
    }

    /// Whether the store asked to retry later: a 503 (Cairn's `SlowDown`, quorum failures,
    /// `Unavailable`; S3's `SlowDown`).
    pub fn is_retryable(&self) -> bool {
        self.status == Some(StatusCode::SERVICE_UNAVAILABLE)
    }
}

/// `Retry-After` as a number of seconds (the HTTP-date form is not used by Cairn or S3 stores).
fn retry_after(headers: &hyper::HeaderMap) -> Option<Duration> {
    let v = headers.get(hyper::header::RETRY_AFTER)?.to_str().ok()?;
    v.trim().parse::<u64>().ok().map(Duration::from_secs)
}

/// One keep-alive connection to one endpoint, reconnected on demand.
pub struct Conn {
    endpoint: Endpoint,
    sender: Option<SendRequest<Payload>>,
    /// Counts body bytes as they move, both ways (the progress line).
    meter: Option<Arc<AtomicU64>>,
}

impl Conn {
    /// A connection to `endpoint`, opened at the first request.
    pub fn new(endpoint: Endpoint) -> Self {
        Self { endpoint, sender: None, meter: None }
    }

    /// Counts request and response body bytes into `meter` as they move (`None`: stop).
    pub fn set_meter(&mut self, meter: Option<Arc<AtomicU64>>) {
        self.meter = meter;
    }

    /// The endpoint this connection talks to.
    pub fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    async fn connect(&mut self) -> std::io::Result<&mut SendRequest<Payload>> {
        if self.sender.as_ref().is_some_and(|s| s.is_closed()) {
            self.sender = None;
        }
        if self.sender.is_none() {
            let stream = TcpStream::connect(&self.endpoint.authority).await?;
            stream.set_nodelay(true)?;
            let (sender, conn) =
                handshake(TokioIo::new(stream)).await.map_err(std::io::Error::other)?;
            // The connection task ends when the sender is dropped or the peer closes.
            tokio::spawn(async move {
                let _ = conn.await;
            });
            self.sender = Some(sender);
        }
        self.sender.as_mut().ok_or_else(|| std::io::Error::other("no connection"))
    }

    /// Sends `req` and reads the whole response body, all within `timeout`. The body is read
    /// frame by frame and only counted, never collected, so a GET of any size costs no memory.
    pub async fn send(&mut self, req: Request<Payload>, timeout: Duration) -> Answer {
        match tokio::time::timeout(timeout, self.exchange(req)).await {
            Ok(answer) => {
                if !answer.outcome.is_success() && answer.status.is_none() {
                    self.sender = None;
                }
                answer
            }
            Err(_) => {
                // The request may still be in flight on this connection: drop it.
                self.sender = None;
                Answer::failed(Outcome::Timeout)
            }
        }
    }

    async fn exchange(&mut self, req: Request<Payload>) -> Answer {
        let req = match &self.meter {
            Some(m) => req.map(|b| b.metered(m.clone())),
            None => req,
        };
        let failed = Answer::failed;
        let reused = self.sender.is_some();
        let sender = match self.connect().await {
            Ok(s) => s,
            Err(_) => return failed(Outcome::Connect),
        };
        if sender.ready().await.is_err() {
            // A kept-alive connection the server closed while idle: nothing was sent on it yet,
            // so reconnecting once is safe even for writes.
            self.sender = None;
            if !reused {
                return failed(Outcome::Io);
            }
            match self.connect().await {
                Ok(s) => {
                    if s.ready().await.is_err() {
                        return failed(Outcome::Io);
                    }
                }
                Err(_) => return failed(Outcome::Connect),
            }
        }
        let Some(sender) = self.sender.as_mut() else {
            return failed(Outcome::Io);
        };
        let resp = match sender.send_request(req).await {
            Ok(r) => r,
            Err(_) => return failed(Outcome::Io),
        };
        let status = resp.status();
        let retry_after = retry_after(resp.headers());
        let mut body = resp.into_body();
        let mut body_bytes = 0u64;
        while let Some(frame) = body.frame().await {
            match frame {
                Ok(f) => {
                    let n = f.data_ref().map_or(0, |d| d.len() as u64);
                    body_bytes += n;
                    if let Some(m) = &self.meter {
                        m.fetch_add(n, Ordering::Relaxed);
                    }
                }
                Err(_) => return failed(Outcome::Io),
            }
        }
        Answer {
            outcome: Outcome::from_status(status),
            status: Some(status),
            body_bytes,
            retry_after,
        }
    }
}

/// Opens and closes one TCP connection to `endpoint`: the start-up reachability check.
pub async fn probe(endpoint: &Endpoint, timeout: Duration) -> Result<()> {
    match tokio::time::timeout(timeout, TcpStream::connect(&endpoint.authority)).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => bail!("endpoint {} is unreachable: {e}", endpoint.url),
        Err(_) => {
            bail!("endpoint {} is unreachable: no connection within {timeout:?}", endpoint.url)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use hyper::body::Body;

    #[test]
    fn endpoints_parse() {
        let e = Endpoint::parse("http://127.0.0.1:8081/").unwrap();
        assert_eq!(e.authority, "127.0.0.1:8081");
        assert_eq!(e.url, "http://127.0.0.1:8081");
        assert_eq!(Endpoint::parse("http://localhost").unwrap().authority, "localhost:80");
        assert!(Endpoint::parse("https://x:1").is_err());
        assert!(Endpoint::parse("http://x:1/path").is_err());
        assert!(Endpoint::parse("127.0.0.1:1").is_err());
    }

    #[test]
    fn statuses_are_classified() {
        let c = |s: u16| Outcome::from_status(StatusCode::from_u16(s).unwrap());
        assert_eq!(c(200), Outcome::Ok);
        assert_eq!(c(204), Outcome::Ok);
        assert_eq!(c(300), Outcome::Siblings);
        assert_eq!(c(404), Outcome::NotFound);
        assert_eq!(c(409), Outcome::Http4xx);
        assert_eq!(c(503), Outcome::Http5xx);
        assert_eq!(c(304), Outcome::HttpOther);
        assert!(Outcome::Siblings.is_success() && !Outcome::NotFound.is_success());
    }

    #[test]
    fn slow_down_is_a_retryable_5xx_with_its_retry_after() {
        // Cairn's answer when a node's large-object buffer budget is spent.
        let mut headers = hyper::HeaderMap::new();
        headers.insert(hyper::header::RETRY_AFTER, "1".parse().unwrap());
        let status = StatusCode::SERVICE_UNAVAILABLE;
        let a = Answer {
            outcome: Outcome::from_status(status),
            status: Some(status),
            body_bytes: 120,
            retry_after: retry_after(&headers),
        };
        assert_eq!(a.outcome, Outcome::Http5xx);
        assert!(a.is_retryable() && !a.outcome.is_success());
        assert_eq!(a.retry_after, Some(Duration::from_secs(1)));
        headers
            .insert(hyper::header::RETRY_AFTER, "Wed, 21 Oct 2015 07:28:00 GMT".parse().unwrap());
        assert_eq!(retry_after(&headers), None);
        assert!(!Answer::failed(Outcome::Timeout).is_retryable());
        let e500 = Answer { status: Some(StatusCode::INTERNAL_SERVER_ERROR), ..a };
        assert!(!e500.is_retryable());
    }

    #[test]
    fn requests_follow_each_protocol() {
        let ep = Endpoint::parse("http://127.0.0.1:9000").unwrap();
        let cairn = Target { protocol: Protocol::Cairn, bucket: "bench".into(), creds: None };
        let r = cairn
            .request(
                &ep,
                OpKind::Put,
                "k 1",
                Payload::new([Bytes::from_static(b"x"), Bytes::new()]),
                true,
                0,
            )
            .unwrap();
        assert_eq!(r.method(), Method::PUT);
        assert_eq!(r.uri(), "/buckets/bench/k%201?overwrite=true");
        assert_eq!(r.body().size_hint().exact(), Some(1));
        let r = cairn.request(&ep, OpKind::CreateBucket, "", Payload::empty(), false, 0).unwrap();
        assert_eq!((r.method(), r.uri().path()), (&Method::POST, "/buckets/bench"));
        let s3 = Target {
            protocol: Protocol::S3,
            bucket: "bench".into(),
            creds: Some(Credentials {
                access_key: "AK".into(),
                secret_key: "SK".into(),
                region: "us-east-1".into(),
            }),
        };
        let r = s3.request(&ep, OpKind::Get, "k1", Payload::empty(), true, 0).unwrap();
        assert_eq!((r.method(), r.uri().path()), (&Method::GET, "/bench/k1"));
        assert_eq!(r.headers()["x-amz-content-sha256"], "UNSIGNED-PAYLOAD");
        assert_eq!(r.headers()["x-amz-date"], "19700101T000000Z");
        assert!(r.headers()["authorization"].to_str().unwrap().starts_with("AWS4-HMAC-SHA256 "));
        let r = s3.request(&ep, OpKind::CreateBucket, "", Payload::empty(), false, 0).unwrap();
        assert_eq!((r.method(), r.uri().path()), (&Method::PUT, "/bench"));
    }
}
