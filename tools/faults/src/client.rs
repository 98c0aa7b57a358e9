//! The harness's HTTP client: the object operations the workloads and the final reads need, each
//! classified into an [`Outcome`] the checker understands.
//!
//! Every request has its own timeout (the reqwest client's), so no operation outlives it. A read
//! resolves siblings the way an application must: on 300 it fetches every live sibling with
//! `?sibling=ID` and returns all their contents with the context of the 300 answer. Under the
//! node's add-wins deletes a read never lists a delete marker (markers alone are a 404 whose
//! context covers them); a marker a node lists anyway is counted, for the checker to flag.
//!
//! Every object body is read as it streams through a [`BodyCheck`]: a small object's JSON array
//! is collected, a large object's bytes (`large.rs`) are compared with what its writer stored
//! without holding them. A wrong, missing or extra byte is an [`Error::Corrupt`], a body a
//! transport error stopped early an [`Error::CutShort`]; both are counted for the whole run
//! ([`Client::body_counters`], shared by every clone), the first corruptions with their text.

use std::collections::BTreeSet;
use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use reqwest::StatusCode;
use serde::Serialize;
use serde_json::Value;

use crate::history::{Outcome, View};
use crate::large::{BodyCheck, Content, Expected};
use crate::{Error, Result};

/// Header carrying the causal context.
pub const CONTEXT: &str = "X-Cairn-Context";
/// Header naming the version a 200 answer served.
pub const VERSION: &str = "X-Cairn-Version";
/// Distinct corruption messages kept (the count is always complete).
pub const MAX_CORRUPT_EXAMPLES: usize = 10;

/// A client of one cluster.
#[derive(Clone)]
pub struct Client {
    /// The reqwest client (a connection pool; cheap to clone, shared by every task).
    http: reqwest::Client,
    /// Bucket the workloads use.
    pub bucket: String,
    /// What the body checks found, over every clone.
    bodies: Arc<BodyStats>,
}

/// The body checks' counters (shared by the clones of one [`Client`]).
#[derive(Default)]
struct BodyStats {
    corrupt: AtomicU64,
    cut_short: AtomicU64,
    large_bodies: AtomicU64,
    large_bytes: AtomicU64,
    examples: Mutex<Vec<String>>,
}

/// A snapshot of what the body checks found so far.
#[derive(Clone, Debug, Default, Serialize)]
pub struct BodyCounters {
    /// Bodies and ranges with wrong, missing or extra bytes.
    pub corrupt: u64,
    /// Large bodies a transport error stopped early.
    pub cut_short: u64,
    /// Large bodies read whole and checked.
    pub large_bodies: u64,
    /// Their bytes.
    pub large_bytes: u64,
    /// The first [`MAX_CORRUPT_EXAMPLES`] distinct corruption messages.
    pub corrupt_examples: Vec<String>,
}

/// How a `Range` read of a large version went.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum RangeCheck {
    /// 206 with exactly the bytes the writer stored there.
    Verified,
    /// Not checked: the version is gone (404), or the read failed under the faults.
    Skipped,
    /// Wrong status, `Content-Range` or bytes (counted as corrupt, with its text).
    Corrupt,
}

/// What a read found.
#[derive(Debug, Default)]
pub struct Read {
    /// The context to write back (None when the answer carried none: a never-written key).
    pub context: Option<String>,
    /// The elements of every live sibling.
    pub live: Vec<BTreeSet<String>>,
    /// Delete markers listed among the siblings (add-wins: a conforming node lists none).
    pub delete_markers: usize,
    /// Length in bytes of each live sibling's body (as `live`).
    pub sizes: Vec<u64>,
    /// The version a 200 served (`X-Cairn-Version`; None for 300 and 404).
    pub version: Option<String>,
}

impl Read {
    /// Union of the live siblings' elements.
    pub fn union(&self) -> BTreeSet<String> {
        self.live.iter().flatten().cloned().collect()
    }
}

/// Classifies a transport error: never sent (connection refused) is a certain failure; anything
/// after the request may have left is indeterminate.
fn transport_outcome(e: &reqwest::Error) -> Outcome {
    if e.is_connect() && !e.is_timeout() { Outcome::Failed } else { Outcome::Indeterminate }
}

/// Classifies the status of a write or delete: 2xx acknowledged; 4xx refused before anything was
/// stored (a 404 to a DELETE: the key had no live version, and the node stored nothing); 5xx
/// (503 included) may or may not have been applied.
fn status_outcome(s: StatusCode) -> Outcome {
    if s.is_success() {
        Outcome::Ok
    } else if s.is_client_error() {
        Outcome::Failed
    } else {
        Outcome::Indeterminate
    }
}

/// Parses stored bytes: a JSON array of element strings.
fn parse_content(bytes: &[u8]) -> Result<BTreeSet<String>> {
    serde_json::from_slice::<BTreeSet<String>>(bytes)
        .map_err(|e| Error::Protocol(format!("object content is not a JSON array of strings: {e}")))
}

impl Client {
    /// A client whose every request times out after `timeout`.
    pub fn new(bucket: &str, timeout: Duration) -> Result<Client> {
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout)
            .pool_max_idle_per_host(8)
            .build()
            .map_err(|e| Error::Setup(format!("http client: {e}")))?;
        Ok(Client { http, bucket: bucket.to_string(), bodies: Arc::default() })
    }

    /// What the body checks found so far, over every clone of this client.
    pub fn body_counters(&self) -> BodyCounters {
        let b = &self.bodies;
        BodyCounters {
            corrupt: b.corrupt.load(Ordering::Relaxed),
            cut_short: b.cut_short.load(Ordering::Relaxed),
            large_bodies: b.large_bodies.load(Ordering::Relaxed),
            large_bytes: b.large_bytes.load(Ordering::Relaxed),
            corrupt_examples: b.examples.lock().map(|e| e.clone()).unwrap_or_default(),
        }
    }

    /// Counts a corruption, keeps its text (the first [`MAX_CORRUPT_EXAMPLES`] distinct ones,
    /// printed when first seen), and answers it as an error.
    fn corrupt(&self, what: String) -> Error {
        self.bodies.corrupt.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut e) = self.bodies.examples.lock()
            && e.len() < MAX_CORRUPT_EXAMPLES
            && !e.contains(&what)
        {
            eprintln!("CORRUPT: {what}");
            e.push(what.clone());
        }
        Error::Corrupt(what)
    }

    /// Reads and checks one object body as it streams (see [`BodyCheck`]): its elements and
    /// length. `sibling` names the version in messages.
    async fn content(
        &self,
        key: &str,
        sibling: Option<&str>,
        mut r: reqwest::Response,
    ) -> Result<(BTreeSet<String>, u64)> {
        let what = || match sibling {
            Some(id) => format!("large object {key} (sibling {id})"),
            None => format!("large object {key}"),
        };
        let mut check = BodyCheck::new(key, r.content_length());
        loop {
            match r.chunk().await {
                Ok(Some(bytes)) => {
                    if let Err(e) = check.push(&bytes) {
                        return Err(self.corrupt(format!("{}: {e}", what())));
                    }
                }
                Ok(None) => break,
                Err(e) if check.is_large() => {
                    self.bodies.cut_short.fetch_add(1, Ordering::Relaxed);
                    return Err(Error::CutShort(format!(
                        "{}: the body stopped after {} of {} bytes: {e}",
                        what(),
                        check.received(),
                        check.expected_len().unwrap_or(0)
                    )));
                }
                Err(e) => return Err(e.into()),
            }
        }
        match check.finish() {
            Ok(Content::Small(bytes)) => Ok((parse_content(&bytes)?, bytes.len() as u64)),
            Ok(Content::Large { elems, len }) => {
                self.bodies.large_bodies.fetch_add(1, Ordering::Relaxed);
                self.bodies.large_bytes.fetch_add(len, Ordering::Relaxed);
                Ok((elems, len))
            }
            Err(e) => Err(self.corrupt(format!("{}: {e}", what()))),
        }
    }

    fn object_url(&self, node: &str, key: &str, query: &str) -> String {
        format!("http://{node}/buckets/{}/{key}{query}", self.bucket)
    }

    /// GET a path, answer (status, JSON or Null).
    pub async fn get_json(&self, node: &str, path: &str) -> Result<(u16, Value)> {
        let r = self.http.get(format!("http://{node}{path}")).send().await?;
        let s = r.status().as_u16();
        Ok((s, r.json::<Value>().await.unwrap_or(Value::Null)))
    }

    /// POST a path, answer (status, JSON or Null).
    pub async fn post_json(&self, node: &str, path: &str) -> Result<(u16, Value)> {
        let r = self.http.post(format!("http://{node}{path}")).send().await?;
        let s = r.status().as_u16();
        Ok((s, r.json::<Value>().await.unwrap_or(Value::Null)))
    }

    /// DELETE a path, answer (status, JSON or Null).
    pub async fn delete_json(&self, node: &str, path: &str) -> Result<(u16, Value)> {
        let r = self.http.delete(format!("http://{node}{path}")).send().await?;
        let s = r.status().as_u16();
        Ok((s, r.json::<Value>().await.unwrap_or(Value::Null)))
    }

    /// Reads `key` through `node` (a coordinated read, or `?local=true` for the node's replica),
    /// resolving siblings. `Ok(None)`-like answers are an empty [`Read`].
    pub async fn read(&self, node: &str, key: &str, local: bool) -> Result<Read> {
        let q = if local { "?local=true" } else { "" };
        let r = self.http.get(self.object_url(node, key, q)).send().await?;
        let status = r.status();
        let context = r.headers().get(CONTEXT).and_then(|h| h.to_str().ok()).map(str::to_owned);
        match status.as_u16() {
            200 => {
                let version =
                    r.headers().get(VERSION).and_then(|h| h.to_str().ok()).map(str::to_owned);
                let (elems, size) = self.content(key, None, r).await?;
                Ok(Read {
                    context,
                    live: vec![elems],
                    sizes: vec![size],
                    version,
                    ..Read::default()
                })
            }
            404 => {
                let v: Value = r.json().await.unwrap_or(Value::Null);
                let code = v["error"]["code"].as_str().unwrap_or("");
                if code != "NoSuchKey" {
                    return Err(Error::Protocol(format!("read {key}: 404 {code}")));
                }
                Ok(Read { context, ..Read::default() })
            }
            300 => {
                let v: Value = r.json().await?;
                let context = v["context"].as_str().map(str::to_owned).or(context);
                let mut out = Read { context, ..Read::default() };
                let siblings = v["siblings"].as_array().cloned().unwrap_or_default();
                for s in siblings {
                    if s["deleted"].as_bool() == Some(true) {
                        out.delete_markers += 1;
                        continue;
                    }
                    let id = s["id"].as_str().ok_or_else(|| {
                        Error::Protocol(format!("read {key}: sibling without id"))
                    })?;
                    let sq = if local {
                        format!("?local=true&sibling={id}")
                    } else {
                        format!("?sibling={id}")
                    };
                    let sr = self.http.get(self.object_url(node, key, &sq)).send().await?;
                    if sr.status() != StatusCode::OK {
                        return Err(Error::Protocol(format!(
                            "read {key}: sibling {id} answered {}",
                            sr.status()
                        )));
                    }
                    let (elems, size) = self.content(key, Some(id), sr).await?;
                    out.live.push(elems);
                    out.sizes.push(size);
                }
                Ok(out)
            }
            other => Err(Error::Status(other)),
        }
    }

    /// Reads `key` for the final check; every error becomes [`View::Unreadable`].
    pub async fn view(&self, node: &str, key: &str, local: bool) -> View {
        match self.read(node, key, local).await {
            Ok(r) if r.live.is_empty() && r.delete_markers == 0 => View::NotFound,
            Ok(r) => View::Found { live: r.live, delete_markers: r.delete_markers },
            Err(e) => View::Unreadable(e.to_string()),
        }
    }

    /// PUT `content` (as a JSON array) with the context; classifies the result.
    pub async fn write(
        &self,
        node: &str,
        key: &str,
        context: Option<&str>,
        content: &BTreeSet<String>,
    ) -> Outcome {
        let body = match serde_json::to_vec(content) {
            Ok(b) => b,
            Err(_) => return Outcome::Failed,
        };
        let mut req = self.http.put(self.object_url(node, key, "")).body(body);
        if let Some(c) = context {
            req = req.header(CONTEXT, c);
        }
        match req.send().await {
            Ok(r) => status_outcome(r.status()),
            Err(e) => transport_outcome(&e),
        }
    }

    /// PUT raw `body` (a large object's bytes) with the context; classifies the result. A 503
    /// `SlowDown` (the node's large-object buffers are spent: nothing was stored) is
    /// `Err(Outcome::Failed)`, for the caller to retry.
    pub async fn write_bytes(
        &self,
        node: &str,
        key: &str,
        context: Option<&str>,
        body: Vec<u8>,
    ) -> std::result::Result<Outcome, Outcome> {
        let mut req = self.http.put(self.object_url(node, key, "")).body(body);
        if let Some(c) = context {
            req = req.header(CONTEXT, c);
        }
        match req.send().await {
            Ok(r) if r.status() == StatusCode::SERVICE_UNAVAILABLE => {
                let v: Value = r.json().await.unwrap_or(Value::Null);
                if v["error"]["code"].as_str() == Some("SlowDown") {
                    Err(Outcome::Failed)
                } else {
                    Ok(Outcome::Indeterminate)
                }
            }
            Ok(r) => Ok(status_outcome(r.status())),
            Err(e) => Ok(transport_outcome(&e)),
        }
    }

    /// Reads `range` of the version `version` of `key` (`?sibling=ID`, `Range: bytes=`) and
    /// checks status, `Content-Range` and bytes against `expected`.
    pub async fn range_check(
        &self,
        node: &str,
        key: &str,
        version: &str,
        expected: &Expected,
        range: Range<u64>,
    ) -> RangeCheck {
        let (start, last) = (range.start, range.end.saturating_sub(1));
        let what = format!("large object {key} (version {version}), bytes {start}-{last}");
        let url = self.object_url(node, key, &format!("?sibling={version}"));
        let sent = self.http.get(url).header("Range", format!("bytes={start}-{last}")).send().await;
        let Ok(mut r) = sent else { return RangeCheck::Skipped };
        let status = r.status();
        if status == StatusCode::NOT_FOUND || status.is_server_error() {
            return RangeCheck::Skipped;
        }
        if status != StatusCode::PARTIAL_CONTENT {
            self.corrupt(format!("{what}: answered {status}, not 206"));
            return RangeCheck::Corrupt;
        }
        let want = format!("bytes {start}-{last}/{}", expected.len());
        let got = r.headers().get("content-range").and_then(|h| h.to_str().ok()).unwrap_or("");
        if got != want {
            self.corrupt(format!("{what}: Content-Range {got:?}, expected {want:?}"));
            return RangeCheck::Corrupt;
        }
        let mut pos = start;
        loop {
            match r.chunk().await {
                Ok(Some(bytes)) => {
                    if let Err(e) = expected.compare(pos, &bytes) {
                        self.corrupt(format!("{what}: {e}"));
                        return RangeCheck::Corrupt;
                    }
                    pos += bytes.len() as u64;
                }
                Ok(None) => break,
                Err(_) => {
                    self.bodies.cut_short.fetch_add(1, Ordering::Relaxed);
                    return RangeCheck::Skipped;
                }
            }
        }
        if pos != range.end {
            self.corrupt(format!("{what}: the body ended at byte {pos}"));
            return RangeCheck::Corrupt;
        }
        RangeCheck::Verified
    }

    /// PUT `content` without context and return the status and the JSON write report (also
    /// present on a 503: who acknowledged).
    pub async fn put_report(
        &self,
        node: &str,
        key: &str,
        content: &BTreeSet<String>,
    ) -> Result<(u16, Value)> {
        let body = serde_json::to_vec(content)
            .map_err(|e| Error::Protocol(format!("encoding content: {e}")))?;
        let r = self.http.put(self.object_url(node, key, "")).body(body).send().await?;
        let s = r.status().as_u16();
        Ok((s, r.json::<Value>().await.unwrap_or(Value::Null)))
    }

    /// DELETE with the context; classifies the result (404 NoSuchKey, nothing live to delete:
    /// `Failed`, nothing was stored).
    pub async fn delete(&self, node: &str, key: &str, context: Option<&str>) -> Outcome {
        let mut req = self.http.delete(self.object_url(node, key, ""));
        if let Some(c) = context {
            req = req.header(CONTEXT, c);
        }
        match req.send().await {
            Ok(r) => status_outcome(r.status()),
            Err(e) => transport_outcome(&e),
        }
    }

    /// True if `node` answers `/health` with 200.
    pub async fn healthy(&self, node: &str) -> bool {
        matches!(self.get_json(node, "/health").await, Ok((200, _)))
    }

    /// Statuses `node` sees for each member (id, status), empty on error.
    pub async fn members(&self, node: &str) -> Vec<(String, String)> {
        let Ok((200, v)) = self.get_json(node, "/cluster").await else { return Vec::new() };
        v["members"]
            .as_array()
            .map(|ms| {
                ms.iter()
                    .map(|m| {
                        (
                            m["id"].as_str().unwrap_or("").to_string(),
                            m["status"].as_str().unwrap_or("").to_string(),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Hints `node` holds (sum over owners), None if it cannot say.
    pub async fn hints_pending(&self, node: &str) -> Option<u64> {
        let Ok((200, v)) = self.get_json(node, "/cluster").await else { return None };
        let h = v["hints_pending"].as_object()?;
        Some(h.values().map(|x| x.as_u64().unwrap_or(1)).sum())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_classify_into_outcomes() {
        assert_eq!(status_outcome(StatusCode::OK), Outcome::Ok);
        assert_eq!(status_outcome(StatusCode::CONFLICT), Outcome::Failed);
        assert_eq!(status_outcome(StatusCode::SERVICE_UNAVAILABLE), Outcome::Indeterminate);
        assert_eq!(status_outcome(StatusCode::INTERNAL_SERVER_ERROR), Outcome::Indeterminate);
    }

    #[test]
    fn a_404_to_a_delete_is_certainly_not_applied() {
        // Add-wins: a DELETE of a key with no live version answers 404 and stores nothing.
        assert_eq!(status_outcome(StatusCode::NOT_FOUND), Outcome::Failed);
        assert_eq!(status_outcome(StatusCode::NO_CONTENT), Outcome::Ok);
    }

    #[test]
    fn content_is_a_json_array_of_strings() {
        assert_eq!(parse_content(br#"["b","a"]"#).unwrap().len(), 2);
        assert!(parse_content(b"hello").is_err());
    }
}
