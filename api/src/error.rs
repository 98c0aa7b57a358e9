//! The API's single error type and its one mapping to an HTTP answer.
//!
//! ERROR ANSWERS
//! =============
//! Every failure a client can see is an [`ApiError`]. [`ApiError::to_response`] is the only place
//! that turns one into HTTP: the status from [`ApiError::status`], and the body
//!
//! ```json
//! {"success": false, "error": {"code": "NoSuchBucket", "message": "..."}, "node": "n2"}
//! ```
//!
//! plus, for quorum failures, the partial replica report flattened into the top level (who was
//! asked, who answered, their vector clocks), and for a 404 on a key that holds only tombstones,
//! the causal `context` (also in the `X-Cairn-Context` header) so that a later write can
//! supersede the deletes. Internal errors never put their detail in the answer: it is logged,
//! the client gets a fixed message. No handler answers 2xx with an error, and a panic inside a
//! handler or backend becomes a 500 `Internal` (see [`crate::metrics`]).

use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use cairn_replication::{Context, ReadReport, WriteReport};
use serde_json::{Map, Value, json};

use crate::CONTEXT_HEADER;

/// Everything that can go wrong in an API request.
///
/// Classification: [`ApiError::status`] (the HTTP status), [`ApiError::code`] (the stable
/// machine-readable code in the answer), [`ApiError::is_client_error`] (the request itself was
/// wrong: retrying it unchanged fails again) and [`ApiError::is_retryable`] (the same request may
/// succeed later: quorum not reached, node unavailable).
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum ApiError {
    /// The bucket name breaks the naming rules (400 `InvalidBucketName`).
    #[error("invalid bucket name: {0}")]
    InvalidBucketName(String),
    /// The object name is empty, too long, has a NUL or is not UTF-8 (400 `InvalidObjectName`).
    #[error("invalid object name: {0}")]
    InvalidObjectName(String),
    /// A query parameter or header is malformed or out of range, e.g. `r`/`w` outside 1..=N
    /// (400 `InvalidArgument`).
    #[error("{0}")]
    InvalidArgument(String),
    /// The `X-Cairn-Context` token does not decode (400 `InvalidContext`).
    #[error("invalid context token: {0}")]
    InvalidContext(String),
    /// The upload is not a readable `multipart/form-data` body, or has no file part
    /// (400 `MalformedMultipart`).
    #[error("malformed multipart body: {0}")]
    MalformedMultipart(String),
    /// The bucket does not exist (404 `NoSuchBucket`).
    #[error("bucket {0:?} does not exist")]
    NoSuchBucket(String),
    /// The object does not exist or is deleted (404 `NoSuchKey`). When the key holds tombstones,
    /// `context` is their causal context, returned to the client.
    #[error("object {name:?} does not exist")]
    NoSuchKey {
        /// The object name that was asked for.
        name: String,
        /// The causal context of the tombstones, when the key has been deleted.
        context: Option<Context>,
    },
    /// `?sibling=ID` names no live version of the object (404 `NoSuchVersion`).
    #[error("no live version {0:?} of this object")]
    NoSuchVersion(String),
    /// No route matches the path (404 `NoSuchRoute`).
    #[error("no route for {0}")]
    NoSuchRoute(String),
    /// The route exists but not for this method (405 `MethodNotAllowed`).
    #[error("method {0} is not allowed here")]
    MethodNotAllowed(String),
    /// The client stopped sending the body for longer than the idle limit
    /// ([`crate::ApiConfig::body_idle_timeout`]) (408 `RequestTimeout`); nothing was stored.
    #[error("no body data received for {0:?}")]
    RequestTimeout(std::time::Duration),
    /// Creating a bucket that exists (409 `BucketAlreadyExists`).
    #[error("bucket {0:?} already exists")]
    BucketAlreadyExists(String),
    /// A delete whose context covers none of the object's live versions: it changed since the
    /// client read it (409 `StaleContext`). Nothing is stored.
    #[error("{0}")]
    StaleContext(String),
    /// A membership change is already in progress or being decided (409 `ChangeInProgress`).
    #[error("{0}")]
    ChangeInProgress(String),
    /// The membership change does not apply to the layout, e.g. adding a member (409
    /// `InvalidChange`).
    #[error("{0}")]
    InvalidChange(String),
    /// The node a membership change names is not connected (404 `NoSuchNode`).
    #[error("{0}")]
    NoSuchNode(String),
    /// The write would leave more concurrent versions than allowed (409 `TooManySiblings`):
    /// read the object and write back with its context to resolve them.
    #[error("{0}")]
    TooManySiblings(String),
    /// The body is larger than the maximum object (or request) size (413 `EntityTooLarge`).
    #[error("the body is larger than the limit of {limit} bytes")]
    EntityTooLarge {
        /// The limit that was exceeded, in bytes.
        limit: u64,
    },
    /// The `Range` asked for starts beyond the end of the object (416 `InvalidRange`, with
    /// `Content-Range: bytes */size`).
    #[error("the range starts beyond the object's {size} bytes")]
    RangeNotSatisfiable {
        /// The object's size.
        size: u64,
    },
    /// The node holds as many bytes of request bodies in flight as it allows (503 `SlowDown`
    /// with `Retry-After`): retry later, or against another node.
    #[error("{0}")]
    SlowDown(String),
    /// Fewer than W replicas acknowledged (503 `WriteQuorumNotReached`); the report says which
    /// did. The write may still be present on the replicas that acknowledged.
    #[error("{message}")]
    WriteQuorumNotReached {
        /// Human-readable summary, e.g. "1 of 2 required replicas acknowledged".
        message: String,
        /// The coordinator that ran the write.
        node: String,
        /// The key's causal context after the partial write, when the backend knows it: a client
        /// that retries with it supersedes the partial write instead of adding a sibling beside it.
        context: Option<Context>,
        /// The partial replica report.
        report: Box<WriteReport>,
    },
    /// Fewer than R replicas replied (503 `ReadQuorumNotReached`); the report says which did.
    #[error("{message}")]
    ReadQuorumNotReached {
        /// Human-readable summary.
        message: String,
        /// The coordinator that ran the read.
        node: String,
        /// The partial replica report.
        report: Box<ReadReport>,
    },
    /// The node cannot serve the request now (503 `Unavailable`): shutting down, storage
    /// refusing writes, no coordinator reachable.
    #[error("unavailable: {0}")]
    Unavailable(String),
    /// A bug or an unexpected failure (500 `Internal`). The detail is logged, never sent.
    #[error("internal error: {0}")]
    Internal(String),
}

/// Marks an error answer with its code (a response extension), so the metrics middleware can
/// count errors by code without parsing bodies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ErrorCode(pub &'static str);

/// Result alias for this crate.
pub type Result<T> = std::result::Result<T, ApiError>;

/// `Retry-After` of every 503 answer, in seconds: quorum failures and unavailability are
/// usually over within the failure detector's few seconds, so a short, fixed hint.
const RETRY_AFTER_SECS: &str = "1";

/// The message sent for [`ApiError::Internal`]; the real detail only goes to the log.
const INTERNAL_MESSAGE: &str = "internal error; the detail is in the node's log";

impl ApiError {
    /// A write that reached fewer than W replicas, with the message derived from the report
    /// (`"1 of 2 required replicas acknowledged"`). `node` is the coordinator.
    pub fn write_quorum(node: impl Into<String>, report: WriteReport) -> Self {
        ApiError::WriteQuorumNotReached {
            message: format!(
                "{} of {} required replicas acknowledged",
                report.replicas_written.len(),
                report.required
            ),
            node: node.into(),
            context: None,
            report: Box::new(report),
        }
    }

    /// A read that got fewer than R replies, with the message derived from the report.
    pub fn read_quorum(node: impl Into<String>, report: ReadReport) -> Self {
        ApiError::ReadQuorumNotReached {
            message: format!(
                "{} of {} required replicas replied",
                report.replicas_read.len(),
                report.required
            ),
            node: node.into(),
            report: Box::new(report),
        }
    }

    /// The HTTP status of this error.
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::InvalidBucketName(_)
            | ApiError::InvalidObjectName(_)
            | ApiError::InvalidArgument(_)
            | ApiError::InvalidContext(_)
            | ApiError::MalformedMultipart(_) => StatusCode::BAD_REQUEST,
            ApiError::NoSuchBucket(_)
            | ApiError::NoSuchKey { .. }
            | ApiError::NoSuchVersion(_)
            | ApiError::NoSuchNode(_)
            | ApiError::NoSuchRoute(_) => StatusCode::NOT_FOUND,
            ApiError::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::RequestTimeout(_) => StatusCode::REQUEST_TIMEOUT,
            ApiError::BucketAlreadyExists(_)
            | ApiError::StaleContext(_)
            | ApiError::ChangeInProgress(_)
            | ApiError::InvalidChange(_)
            | ApiError::TooManySiblings(_) => StatusCode::CONFLICT,
            ApiError::EntityTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::RangeNotSatisfiable { .. } => StatusCode::RANGE_NOT_SATISFIABLE,
            ApiError::SlowDown(_)
            | ApiError::WriteQuorumNotReached { .. }
            | ApiError::ReadQuorumNotReached { .. }
            | ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The stable error code put in the answer (`error.code`).
    pub fn code(&self) -> &'static str {
        match self {
            ApiError::InvalidBucketName(_) => "InvalidBucketName",
            ApiError::InvalidObjectName(_) => "InvalidObjectName",
            ApiError::InvalidArgument(_) => "InvalidArgument",
            ApiError::InvalidContext(_) => "InvalidContext",
            ApiError::MalformedMultipart(_) => "MalformedMultipart",
            ApiError::NoSuchBucket(_) => "NoSuchBucket",
            ApiError::NoSuchKey { .. } => "NoSuchKey",
            ApiError::NoSuchVersion(_) => "NoSuchVersion",
            ApiError::NoSuchRoute(_) => "NoSuchRoute",
            ApiError::MethodNotAllowed(_) => "MethodNotAllowed",
            ApiError::RequestTimeout(_) => "RequestTimeout",
            ApiError::BucketAlreadyExists(_) => "BucketAlreadyExists",
            ApiError::StaleContext(_) => "StaleContext",
            ApiError::ChangeInProgress(_) => "ChangeInProgress",
            ApiError::InvalidChange(_) => "InvalidChange",
            ApiError::NoSuchNode(_) => "NoSuchNode",
            ApiError::TooManySiblings(_) => "TooManySiblings",
            ApiError::EntityTooLarge { .. } => "EntityTooLarge",
            ApiError::RangeNotSatisfiable { .. } => "InvalidRange",
            ApiError::SlowDown(_) => "SlowDown",
            ApiError::WriteQuorumNotReached { .. } => "WriteQuorumNotReached",
            ApiError::ReadQuorumNotReached { .. } => "ReadQuorumNotReached",
            ApiError::Unavailable(_) => "Unavailable",
            ApiError::Internal(_) => "Internal",
        }
    }

    /// True when the request itself is wrong (a 4xx): sending it again unchanged fails again.
    pub fn is_client_error(&self) -> bool {
        self.status().is_client_error()
    }

    /// True when the same request may succeed later without change (quorum not reached, node
    /// unavailable, a stalled upload, or a sibling limit another client's resolving write can
    /// clear).
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            ApiError::WriteQuorumNotReached { .. }
                | ApiError::RequestTimeout(_)
                | ApiError::ReadQuorumNotReached { .. }
                | ApiError::Unavailable(_)
                | ApiError::SlowDown(_)
                | ApiError::TooManySiblings(_)
        )
    }

    /// The message for the client (internal details replaced by a fixed text).
    pub fn public_message(&self) -> String {
        match self {
            ApiError::Internal(_) => INTERNAL_MESSAGE.to_string(),
            other => other.to_string(),
        }
    }

    /// The JSON body of the answer, `node` being the node that answers the request.
    pub fn to_json(&self, node: &str) -> Map<String, Value> {
        let mut body = Map::new();
        body.insert("success".into(), Value::Bool(false));
        body.insert(
            "error".into(),
            json!({ "code": self.code(), "message": self.public_message() }),
        );
        body.insert("node".into(), Value::String(node.to_string()));
        match self {
            ApiError::NoSuchKey { context: Some(ctx), .. } => {
                body.insert("context".into(), Value::String(ctx.to_token()));
            }
            ApiError::WriteQuorumNotReached { node: coordinator, report, context, .. } => {
                body.insert("coordinator".into(), Value::String(coordinator.clone()));
                if let Some(ctx) = context {
                    body.insert("context".into(), Value::String(ctx.to_token()));
                }
                for (k, v) in crate::render::write_report_fields(report) {
                    body.insert(k, v);
                }
            }
            ApiError::ReadQuorumNotReached { node: coordinator, report, .. } => {
                body.insert("coordinator".into(), Value::String(coordinator.clone()));
                for (k, v) in crate::render::read_report_fields(report) {
                    body.insert(k, v);
                }
            }
            ApiError::EntityTooLarge { limit } => {
                body.insert("limit".into(), Value::from(*limit));
            }
            ApiError::RangeNotSatisfiable { size } => {
                body.insert("size".into(), Value::from(*size));
            }
            _ => {}
        }
        body
    }

    /// The complete HTTP answer: status, JSON body (see [`ApiError::to_json`]), `X-Cairn-Node`,
    /// and `X-Cairn-Context` for a deleted key. `extra` fields are added to the body (the
    /// multipart upload uses it to report the files stored before the failure).
    pub fn to_response_with(&self, node: &str, extra: Map<String, Value>) -> Response {
        if let ApiError::Internal(detail) = self {
            tracing::error!(node, detail = %detail, "internal error answered with 500");
        }
        let mut body = self.to_json(node);
        body.extend(extra);
        let mut resp = (self.status(), axum::Json(Value::Object(body))).into_response();
        if let Ok(v) = HeaderValue::from_str(node) {
            resp.headers_mut().insert(crate::NODE_HEADER, v);
        }
        if let ApiError::NoSuchKey { context: Some(ctx), .. } = self
            && let Ok(v) = HeaderValue::from_str(&ctx.to_token())
        {
            resp.headers_mut().insert(CONTEXT_HEADER, v);
        }
        if self.status() == StatusCode::SERVICE_UNAVAILABLE {
            resp.headers_mut().insert(
                axum::http::header::RETRY_AFTER,
                HeaderValue::from_static(RETRY_AFTER_SECS),
            );
        }
        if let ApiError::RangeNotSatisfiable { size } = self
            && let Ok(v) = HeaderValue::from_str(&format!("bytes */{size}"))
        {
            resp.headers_mut().insert(axum::http::header::CONTENT_RANGE, v);
        }
        resp.extensions_mut().insert(ErrorCode(self.code()));
        resp
    }

    /// [`to_response_with`](Self::to_response_with) without extra fields.
    pub fn to_response(&self, node: &str) -> Response {
        self.to_response_with(node, Map::new())
    }
}

/// The replication crate's errors — the DVV layer's and the node protocol's answers — as the
/// API shows them. The one mapping from a node's outcome to a status and a code.
impl From<cairn_replication::Error> for ApiError {
    fn from(e: cairn_replication::Error) -> Self {
        use cairn_replication::Error as E;
        match e {
            E::InvalidContext(m) => ApiError::InvalidContext(m),
            e @ E::TooManySiblings { .. } => ApiError::TooManySiblings(e.to_string()),
            e @ E::InvalidNodeId { .. } => ApiError::InvalidArgument(e.to_string()),
            E::InvalidQuorum(m) => ApiError::InvalidArgument(m),
            E::NoSuchBucket(b) => ApiError::NoSuchBucket(b),
            E::BucketAlreadyExists(b) => ApiError::BucketAlreadyExists(b),
            E::NoSuchKey { name, context } => ApiError::NoSuchKey {
                name,
                context: (!context.is_empty()).then_some(Context(context)),
            },
            e @ E::StaleContext { .. } => ApiError::StaleContext(e.to_string()),
            e @ E::ChangeInProgress(_) => ApiError::ChangeInProgress(e.to_string()),
            e @ E::InvalidChange(_) => ApiError::InvalidChange(e.to_string()),
            e @ E::NoSuchNode(_) => ApiError::NoSuchNode(e.to_string()),
            E::WriteQuorum { acked, required, node, context, report } => {
                ApiError::WriteQuorumNotReached {
                    message: format!("{acked} of {required} required replicas acknowledged"),
                    node,
                    context: Some(Context(context)),
                    report,
                }
            }
            E::ReadQuorum { answered, required, report } => ApiError::ReadQuorumNotReached {
                message: format!("{answered} of {required} required replicas answered"),
                // The coordinator of a read is the node that answers; the handler names it.
                node: String::new(),
                report,
            },
            E::Remote { code, message, .. } if code == "TooManySiblings" => {
                ApiError::TooManySiblings(message)
            }
            E::Remote { code, message, .. } if code == "StaleContext" => {
                ApiError::StaleContext(message)
            }
            e @ (E::Unavailable(_) | E::NotDelivered(_) | E::Remote { .. }) => {
                ApiError::Unavailable(e.to_string())
            }
            E::ValueTooLarge { size, max } => ApiError::TooManySiblings(format!(
                "the object's concurrent versions together take {size} bytes, over the storage \
                 limit of {max}; read it and write back with its context to resolve them"
            )),
            e @ E::StoragePoisoned => ApiError::Unavailable(e.to_string()),
            other => ApiError::Internal(other.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_status_matches_its_class() {
        let all = [
            ApiError::InvalidBucketName("x".into()),
            ApiError::InvalidObjectName("x".into()),
            ApiError::InvalidArgument("x".into()),
            ApiError::InvalidContext("x".into()),
            ApiError::MalformedMultipart("x".into()),
            ApiError::NoSuchBucket("x".into()),
            ApiError::NoSuchKey { name: "x".into(), context: None },
            ApiError::NoSuchVersion("x".into()),
            ApiError::NoSuchRoute("x".into()),
            ApiError::MethodNotAllowed("x".into()),
            ApiError::RequestTimeout(std::time::Duration::from_secs(1)),
            ApiError::BucketAlreadyExists("x".into()),
            ApiError::StaleContext("x".into()),
            ApiError::ChangeInProgress("x".into()),
            ApiError::InvalidChange("x".into()),
            ApiError::NoSuchNode("x".into()),
            ApiError::TooManySiblings("x".into()),
            ApiError::EntityTooLarge { limit: 1 },
            ApiError::Unavailable("x".into()),
            ApiError::Internal("secret detail".into()),
        ];
        let mut codes = std::collections::BTreeSet::new();
        for e in &all {
            assert!(codes.insert(e.code()), "duplicate code {}", e.code());
            assert!(e.status().is_client_error() || e.status().is_server_error(), "{e:?}");
            assert!(
                !(e.is_client_error() && e.is_retryable())
                    || ["TooManySiblings", "RequestTimeout"].contains(&e.code())
            );
            let json = e.to_json("n1");
            assert_eq!(json["success"], false);
            assert_eq!(json["node"], "n1");
            assert_eq!(json["error"]["code"], e.code());
        }
        let internal = ApiError::Internal("secret detail".into()).to_json("n1");
        assert!(!internal["error"]["message"].as_str().unwrap_or("").contains("secret"));
    }

    #[test]
    fn replication_errors_map_to_client_or_internal() {
        let e: ApiError = cairn_replication::Context::from_token("!!!").unwrap_err().into();
        assert_eq!(e.code(), "InvalidContext");
        let e: ApiError = cairn_replication::Error::Encode("x".into()).into();
        assert_eq!(e.status(), StatusCode::INTERNAL_SERVER_ERROR);
    }
}
