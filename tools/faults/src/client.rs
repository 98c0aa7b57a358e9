//! The harness's HTTP client: the object operations the workloads and the final reads need, each
//! classified into an [`Outcome`] the checker understands.
//!
//! Every request has its own timeout (the reqwest client's), so no operation outlives it. A read
//! resolves siblings the way an application must: on 300 it fetches every live sibling with
//! `?sibling=ID` and returns all their contents with the context of the 300 answer. Under the
//! node's add-wins deletes a read never lists a delete marker (markers alone are a 404 whose
//! context covers them); a marker a node lists anyway is counted, for the checker to flag.

use std::collections::BTreeSet;
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::Value;

use crate::history::{Outcome, View};
use crate::{Error, Result};

/// Header carrying the causal context.
pub const CONTEXT: &str = "X-Cairn-Context";

/// A client of one cluster.
#[derive(Clone)]
pub struct Client {
    /// The reqwest client (a connection pool; cheap to clone, shared by every task).
    http: reqwest::Client,
    /// Bucket the workloads use.
    pub bucket: String,
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
        Ok(Client { http, bucket: bucket.to_string() })
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
                let body = r.bytes().await?;
                Ok(Read { context, live: vec![parse_content(&body)?], delete_markers: 0 })
            }
            404 => {
                let v: Value = r.json().await.unwrap_or(Value::Null);
                let code = v["error"]["code"].as_str().unwrap_or("");
                if code != "NoSuchKey" {
                    return Err(Error::Protocol(format!("read {key}: 404 {code}")));
                }
                Ok(Read { context, live: Vec::new(), delete_markers: 0 })
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
                    out.live.push(parse_content(&sr.bytes().await?)?);
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
