//! Cairn's REST/JSON API: the axum router, request validation, the one error mapping, request
//! metrics and logging, and the [`Backend`] trait the node implements.
//!
//! The router is built by [`router`] from a [`Backend`] and an [`ApiConfig`]. It validates every
//! input (bucket and object names, query parameters, context tokens, body sizes) before the
//! backend sees it, streams uploads with a byte count, and renders the backend's replica reports
//! as JSON. Its tests live with the node (`bin/tests/api_*.rs`): they drive this router through
//! `tower::ServiceExt::oneshot` over the node's real backend, a 3-node cluster in one process,
//! so they check what users see. The route reference with examples is `docs/api.md`.
//!
//! # Layout
//! - [`backend`]: the [`Backend`] trait and the request/answer types crossing it.
//! - [`names`]: [`BucketName`], [`ObjectName`] and the path decoding (names are keys, never paths).
//! - [`error`]: [`ApiError`], its status/code classification and its one JSON mapping.
//! - [`params`]: strict query, header and streamed-body reading (r/w bounds, context, 413).
//! - [`handlers`]: the route handlers (buckets, objects, multipart upload, cluster, health).
//! - [`render`]: JSON shapes of reports and siblings, version ids, ETags, HTTP dates.
//! - [`metrics`]: the outermost middleware (panic containment, metrics, logging) and the
//!   Prometheus text.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::middleware::from_fn_with_state;
use axum::routing::get;

pub mod backend;
pub mod error;
pub mod handlers;
pub mod metrics;
pub mod names;
pub mod params;
pub mod render;

pub use backend::{
    Backend, BodyStream, BucketInfo, BucketReport, ConflictPolicy, DeleteObject, FileEntry,
    FileList, GetObject, Health, ListFiles, MemberChange, OpenContent, PutObject, PutStream,
    ReadResult, WriteResult,
};
pub use error::{ApiError, Result};
pub use metrics::Metrics;
pub use names::{BucketName, ObjectName};
pub use render::{EtagHasher, etag_of, version_id};

/// Request header carrying the causal context token (reads answer with it; writes and deletes
/// send it back).
pub const CONTEXT_HEADER: &str = "x-cairn-context";
/// Answer header naming the node: the coordinator for reads, otherwise the answering node.
pub const NODE_HEADER: &str = "x-cairn-node";
/// Answer header with the version id of the bytes served (usable as `?sibling=`).
pub const VERSION_HEADER: &str = "x-cairn-version";
/// Content type stored when a write gives none.
pub const DEFAULT_CONTENT_TYPE: &str = "application/octet-stream";
/// Default maximum object size: 5 GiB (S3's single-PUT limit). Objects above
/// [`DEFAULT_INLINE_MAX`] are streamed and stored in chunks, so the size costs no memory.
pub const DEFAULT_MAX_OBJECT_SIZE: u64 = 5 << 30;
/// Default largest object stored inline in its sibling set (256 KiB); larger bodies are streamed
/// to the backend ([`Backend::put_object_stream`]) and stored in chunks. Measured
/// (docs/bench-large.md): 1 MiB objects are faster chunked than inline — puts 1.3x, gets 3.7x —
/// because a read then moves a small manifest from R replicas and the bytes once.
pub const DEFAULT_INLINE_MAX: u64 = 256 << 10;
/// Largest `inline_max` a node accepts (1 MiB): the engine's value limit leaves room for a few
/// inline siblings of this size.
pub const MAX_INLINE_MAX: u64 = 1 << 20;
/// Default page size of `GET /buckets/{bucket}`.
pub const DEFAULT_LIST_LIMIT: usize = 1000;
/// Largest accepted `limit` of `GET /buckets/{bucket}`.
pub const MAX_LIST_LIMIT: usize = 1000;
/// Longest accepted listing `cursor` (an object name, so 1024 bytes, plus slack for a backend's
/// own encoding).
pub const MAX_CURSOR_LEN: usize = 2048;
/// Default longest wait for the next piece of a request body (30 s): a client that stalls
/// longer gets 408 `RequestTimeout` and its upload is dropped, so a stalled upload cannot hold
/// a buffer forever.
pub const DEFAULT_BODY_IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// Field names of a multipart upload that carry files (the original service used
/// `file_content`); other fields are read and ignored.
pub const FILE_FIELDS: [&str; 2] = ["file_content", "file"];

/// Settings of the API layer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiConfig {
    /// Largest object accepted, in bytes (413 `EntityTooLarge` above it, nothing stored).
    pub max_object_size: u64,
    /// Largest multipart request, in bytes (413 above it): checked against the declared
    /// `Content-Length` of the whole body before reading, and against the running sum of the
    /// parts' contents while streaming (framing not counted).
    pub max_request_size: u64,
    /// The replication factor N: per-request `r` and `w` must be within `1..=replicas`.
    pub replicas: usize,
    /// Longest wait for the next chunk of a request body (408 `RequestTimeout` after it).
    pub body_idle_timeout: Duration,
    /// Largest body stored inline; a larger one is streamed to
    /// [`Backend::put_object_stream`].
    pub inline_max: u64,
}

impl ApiConfig {
    /// Settings for a cluster with replication factor `replicas` and the given maximum object
    /// size; a multipart request may carry up to 16 maximum-size objects.
    pub fn new(max_object_size: u64, replicas: usize) -> Self {
        ApiConfig {
            max_object_size,
            max_request_size: max_object_size.saturating_mul(16),
            replicas: replicas.max(1),
            body_idle_timeout: DEFAULT_BODY_IDLE_TIMEOUT,
            inline_max: DEFAULT_INLINE_MAX.min(max_object_size),
        }
    }
}

impl Default for ApiConfig {
    /// 5 GiB objects, N = 3.
    fn default() -> Self {
        ApiConfig::new(DEFAULT_MAX_OBJECT_SIZE, 3)
    }
}

/// Shared state of every handler.
pub struct App<B> {
    /// The node, shared with whoever built the router (the node keeps its own `Arc` to run
    /// background work); lives as long as the longest holder.
    pub backend: Arc<B>,
    /// The settings, immutable after [`router`]; every clone of `App` (one per request) reads
    /// the same copy.
    pub config: Arc<ApiConfig>,
    /// The request metrics, written by the middleware and read by `GET /metrics`.
    pub metrics: Arc<Metrics>,
    /// This node's id (copied from [`Backend::node_id`] once).
    pub node: Arc<str>,
}

impl<B> Clone for App<B> {
    fn clone(&self) -> Self {
        App {
            backend: Arc::clone(&self.backend),
            config: Arc::clone(&self.config),
            metrics: Arc::clone(&self.metrics),
            node: Arc::clone(&self.node),
        }
    }
}

/// Builds the API router over `backend` (routes in `docs/api.md`).
///
/// It must be served on a Tokio runtime with the time driver enabled (`enable_all()` or
/// `#[tokio::main]`): body reads are bounded by [`ApiConfig::body_idle_timeout`].
///
/// Layers, outermost first: [`metrics::observe`] (panic containment, metrics, logging), then
/// `DefaultBodyLimit::disable()`: the handlers enforce [`ApiConfig::max_object_size`] and
/// [`ApiConfig::max_request_size`] themselves while streaming, so a too-large body always gets
/// the JSON 413 answer and is never stored.
pub fn router<B: Backend>(backend: Arc<B>, config: ApiConfig) -> Router {
    use handlers as h;
    let node: Arc<str> = Arc::from(backend.node_id());
    let metrics = Arc::new(Metrics::default());
    let app = App { backend, config: Arc::new(config), metrics: Arc::clone(&metrics), node };
    let observe = metrics::Observe { node: Arc::clone(&app.node), metrics };
    Router::new()
        .route("/buckets", get(h::list_buckets::<B>))
        .route(
            "/buckets/{bucket}",
            get(h::list_files::<B>).post(h::create_bucket::<B>).delete(h::delete_bucket::<B>),
        )
        // POST goes to the multipart upload; the other methods treat `files` as an object name.
        .route(
            "/buckets/{bucket}/files",
            get(h::get_object::<B>)
                .post(h::upload_multipart::<B>)
                .put(h::put_object::<B>)
                .delete(h::delete_object::<B>),
        )
        // `/buckets/b/` (empty object name) reaches the object handlers so it is refused as an
        // invalid object name rather than as an unknown route.
        .route("/buckets/{bucket}/", h::object_routes::<B>())
        .route("/buckets/{bucket}/{*file}", h::object_routes::<B>())
        .route("/cluster", get(h::cluster::<B>))
        .route(
            "/cluster/members/{id}",
            axum::routing::post(h::add_member::<B>).delete(h::remove_member::<B>),
        )
        .route("/health", get(h::health::<B>))
        .route("/metrics", get(h::metrics::<B>))
        .fallback(h::no_route::<B>)
        .method_not_allowed_fallback(h::method_not_allowed::<B>)
        .layer(DefaultBodyLimit::disable())
        .layer(from_fn_with_state(observe, metrics::observe))
        .with_state(app)
}
