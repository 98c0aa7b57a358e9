//! The request middleware (metrics, logging, panic containment) and the Prometheus text output.
//!
//! REQUEST METRICS
//! ===============
//! Every request passes through [`observe`], the outermost layer of the router. It
//! - runs the request and catches a panic from any handler or backend future, answering 500
//!   `Internal` instead (the panic message goes to the log, not to the client; the connection
//!   and the node keep serving);
//! - counts the request and its latency in a histogram keyed by (method, route template,
//!   status): the route is axum's matched path, e.g. `/buckets/{bucket}/{*file}`, so the number
//!   of series is bounded by the route table, never by user input (unknown methods become
//!   `OTHER`, unmatched paths `unmatched`);
//! - logs one `tracing` event per request (method, path, route, status, latency);
//! - adds `X-Cairn-Node` (this node) when the handler did not set it (reads set the
//!   coordinator).
//!
//! Latency is measured with `Instant` here, at the I/O edge; no protocol logic reads the clock.
//! `GET /metrics` renders the series ([`Metrics::render`]) followed by the backend's own text.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderValue, Method};
use axum::middleware::Next;
use axum::response::Response;
use futures::FutureExt;

use crate::error::{ApiError, ErrorCode};

/// Requests slower than this are logged at info level (the others at debug).
pub const SLOW_REQUEST: Duration = Duration::from_secs(1);
/// Upper bounds (seconds) of the latency histogram buckets; `+Inf` is implied. From 1 ms (a
/// local read) to 10 s (a quorum timeout).
pub const LATENCY_BUCKETS: [f64; 12] =
    [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0];

/// One series: count, total and bucket counts of a (method, route, status).
#[derive(Debug, Default, Clone)]
struct Series {
    count: u64,
    sum_secs: f64,
    buckets: [u64; LATENCY_BUCKETS.len()],
}

/// (method, route template, status code).
type SeriesKey = (&'static str, String, u16);

/// Request counters and latency histograms of this node's API.
#[derive(Debug, Default)]
pub struct Metrics {
    /// All series. A std `Mutex` because it is held for a map update or a render, never across
    /// an `.await`; contention is one short critical section per request. Shared by the
    /// middleware (writer) and the `/metrics` handler (reader) through `Arc<Metrics>`; it lives
    /// as long as the router.
    series: Mutex<BTreeMap<SeriesKey, Series>>,
    /// Error answers by code (bounded: the codes are the `ApiError` variants). Same locking
    /// rules as `series`.
    errors: Mutex<BTreeMap<&'static str, u64>>,
    /// Requests being handled now (incremented and decremented by the middleware).
    in_flight: AtomicI64,
}

impl Metrics {
    /// Records one answered request.
    pub fn record(&self, method: &Method, route: &str, status: u16, latency: Duration) {
        let secs = latency.as_secs_f64();
        // A poisoned lock only means another thread panicked mid-update of a counter; the
        // counters are still usable, so keep counting.
        let mut series = self.series.lock().unwrap_or_else(|p| p.into_inner());
        let s = series.entry((method_label(method), route.to_string(), status)).or_default();
        s.count += 1;
        s.sum_secs += secs;
        for (i, le) in LATENCY_BUCKETS.iter().enumerate() {
            if secs <= *le {
                s.buckets[i] += 1;
            }
        }
    }

    /// Counts one error answer with this code.
    pub fn record_error(&self, code: &'static str) {
        let mut errors = self.errors.lock().unwrap_or_else(|p| p.into_inner());
        *errors.entry(code).or_default() += 1;
    }

    /// Number of error answers recorded with this code.
    pub fn errors(&self, code: &str) -> u64 {
        let errors = self.errors.lock().unwrap_or_else(|p| p.into_inner());
        errors.get(code).copied().unwrap_or(0)
    }

    /// Number of requests recorded for a route and status (any method); for tests and health.
    pub fn count(&self, route: &str, status: u16) -> u64 {
        let series = self.series.lock().unwrap_or_else(|p| p.into_inner());
        series
            .iter()
            .filter(|((_, r, st), _)| r == route && *st == status)
            .map(|(_, s)| s.count)
            .sum()
    }

    /// The series in the Prometheus text exposition format (version 0.0.4).
    pub fn render(&self) -> String {
        let series = self.series.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let mut out = String::new();
        out.push_str(
            "# HELP cairn_http_requests_total HTTP requests answered, by method, route and status.\n\
             # TYPE cairn_http_requests_total counter\n",
        );
        for ((method, route, status), s) in &series {
            let _ = writeln!(
                out,
                "cairn_http_requests_total{{method=\"{method}\",route=\"{}\",status=\"{status}\"}} {}",
                escape(route),
                s.count
            );
        }
        out.push_str(
            "# HELP cairn_http_request_duration_seconds Time from request to answer headers.\n\
             # TYPE cairn_http_request_duration_seconds histogram\n",
        );
        for ((method, route, status), s) in &series {
            let labels =
                format!("method=\"{method}\",route=\"{}\",status=\"{status}\"", escape(route));
            for (le, n) in LATENCY_BUCKETS.iter().zip(s.buckets.iter()) {
                let _ = writeln!(
                    out,
                    "cairn_http_request_duration_seconds_bucket{{{labels},le=\"{le}\"}} {n}"
                );
            }
            let _ = writeln!(
                out,
                "cairn_http_request_duration_seconds_bucket{{{labels},le=\"+Inf\"}} {}",
                s.count
            );
            let _ =
                writeln!(out, "cairn_http_request_duration_seconds_sum{{{labels}}} {}", s.sum_secs);
            let _ =
                writeln!(out, "cairn_http_request_duration_seconds_count{{{labels}}} {}", s.count);
        }
        let errors = self.errors.lock().unwrap_or_else(|p| p.into_inner()).clone();
        out.push_str(
            "# HELP cairn_http_errors_total Error answers, by error code.\n\
             # TYPE cairn_http_errors_total counter\n",
        );
        for (code, n) in &errors {
            let _ = writeln!(out, "cairn_http_errors_total{{code=\"{code}\"}} {n}");
        }
        out.push_str(
            "# HELP cairn_http_requests_in_flight Requests being handled.\n\
             # TYPE cairn_http_requests_in_flight gauge\n",
        );
        let _ = writeln!(
            out,
            "cairn_http_requests_in_flight {}",
            self.in_flight.load(Ordering::Relaxed)
        );
        out
    }
}

/// Escapes a label value (backslash, double quote, newline).
fn escape(v: &str) -> String {
    v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

/// A bounded set of method labels.
fn method_label(m: &Method) -> &'static str {
    match *m {
        Method::GET => "GET",
        Method::HEAD => "HEAD",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::OPTIONS => "OPTIONS",
        Method::PATCH => "PATCH",
        _ => "OTHER",
    }
}

/// Counts a request as in flight until dropped (also when the client goes away and the request
/// future is dropped mid-way).
struct InFlight<'a>(&'a Metrics);

impl<'a> InFlight<'a> {
    fn enter(m: &'a Metrics) -> Self {
        m.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(m)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// State of the [`observe`] middleware.
#[derive(Debug, Clone)]
pub struct Observe {
    /// This node's id, for `X-Cairn-Node` and the 500 answer of a caught panic.
    pub node: Arc<str>,
    /// The series, shared with the `/metrics` handler (see [`Metrics`]).
    pub metrics: Arc<Metrics>,
}

/// The outermost middleware: panic containment, metrics, logging, `X-Cairn-Node`.
pub async fn observe(State(obs): State<Observe>, req: Request, next: Next) -> Response {
    let start = Instant::now();
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "unmatched".to_string());
    let in_flight = InFlight::enter(&obs.metrics);
    let result = AssertUnwindSafe(next.run(req)).catch_unwind().await;
    drop(in_flight);
    let mut resp = match result {
        Ok(resp) => resp,
        Err(panic) => {
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "non-string panic payload".into());
            tracing::error!(%method, %path, panic = %what, "handler panicked");
            ApiError::Internal(format!("handler panicked: {what}")).to_response(&obs.node)
        }
    };
    if !resp.headers().contains_key(crate::NODE_HEADER)
        && let Ok(v) = HeaderValue::from_str(&obs.node)
    {
        resp.headers_mut().insert(crate::NODE_HEADER, v);
    }
    let latency = start.elapsed();
    let status = resp.status().as_u16();
    obs.metrics.record(&method, &route, status, latency);
    let code = resp.extensions().get::<ErrorCode>().map(|c| c.0);
    if let Some(code) = code {
        obs.metrics.record_error(code);
    }
    let code = code.unwrap_or("");
    let latency_ms = latency.as_secs_f64() * 1000.0;
    // One line per failed or slow request at the default level; every request at debug
    // (`CAIRN_LOG=cairn_api=debug`). Logging each request at info cost a formatted line and a
    // write to stderr per request on the hot path; the counters above keep every request.
    if resp.status().is_server_error() {
        tracing::warn!(%method, %path, %route, status, code, latency_ms, "request failed");
    } else if latency >= SLOW_REQUEST {
        tracing::info!(%method, %path, %route, status, code, latency_ms, "slow request");
    } else {
        tracing::debug!(%method, %path, %route, status, code, latency_ms, "request");
    }
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative() {
        let m = Metrics::default();
        m.record(&Method::GET, "/health", 200, Duration::from_millis(3));
        m.record(&Method::GET, "/health", 200, Duration::from_secs(20));
        let text = m.render();
        assert!(text.contains(
            "cairn_http_requests_total{method=\"GET\",route=\"/health\",status=\"200\"} 2"
        ));
        assert!(text.contains("le=\"0.0025\"} 0"));
        assert!(text.contains("le=\"0.005\"} 1"));
        assert!(text.contains("le=\"10\"} 1"));
        assert!(text.contains("le=\"+Inf\"} 2"));
        assert_eq!(m.count("/health", 200), 2);
        assert_eq!(method_label(&Method::from_bytes(b"BREW").unwrap()), "OTHER");
    }
}
