//! The route handlers.
//!
//! Every handler is a thin `async fn` returning a [`Response`]: it runs an inner function that
//! returns `Result<Response, ApiError>` and maps an error once, through
//! [`ApiError::to_response`] with this node's id. Handlers read names from the raw request path
//! ([`crate::names::bucket_from_path`]) rather than from axum's `Path` extractor, so that malformed
//! percent-encoding, invalid UTF-8 and NUL are refused with the API's own codes.
//!
//! READS
//! =====
//! A read merges the replicas' sibling sets (the backend does that); the handler shows the set's
//! *live* versions (deletes are add-wins: a delete marker is never shown beside a live version,
//! see `cairn_replication::dvv`):
//! - no live version (empty set or only tombstones): 404 `NoSuchKey`, with the context in the
//!   body and in `X-Cairn-Context` when there are tombstones, so a later write supersedes them;
//! - exactly one live version: the bytes, with `Content-Type`, `ETag`, `Last-Modified`,
//!   `X-Cairn-Context`, `X-Cairn-Node` (the coordinator), `X-Cairn-Version`;
//! - several live versions (concurrent writes): 300 Multiple Choices with the JSON list of them
//!   and the context; `?sibling=ID` serves one of them;
//! - `?meta=true`: the JSON read report (replicas read, their vector clocks, read repair) with
//!   the live versions, whatever their number.
//!
//! The context always covers every version merged, delete markers included, so writing it back
//! supersedes everything the read saw.
//!
//! This is Dynamo's client-side reconciliation (DeCandia et al., SOSP 2007, §4.4 "Data
//! Versioning": a read returns all concurrent versions, the client reconciles them and writes
//! back with the context, which collapses the branches), with the context being the DVV set's
//! version vector (Almeida et al., DAIS 2014) rather than a list of clocks. Invariant: a client is never shown one version as *the* value
//! while a concurrent version exists; it sees 300 and the context that supersedes them all.
//!
//! MULTIPART UPLOADS
//! =================
//! Parts are processed one at a time, in order. Each file part's name is validated from its
//! headers before its body is read; its body is streamed and counted, and handed to the backend
//! only once complete and within the maximum object size. So an over-size or malformed part is
//! never stored, not even partly. Parts before it have been stored (holding every part until the
//! end would hold more than one object in memory): the error answer lists them under `files`,
//! and parts after it are not read.
//!
//! With `X-Cairn-Context` (the context of a read, e.g. to re-upload a file that has siblings)
//! the form must hold exactly one file part: that part is held until the form ends, so a second
//! file part is refused (400) with nothing stored. A part's type is its own `Content-Type`, or
//! the one registered for its file name's extension when it sent none or the generic
//! `application/octet-stream`.

use axum::Json;
use axum::body::Body;
use axum::extract::multipart::{Multipart, MultipartError, MultipartRejection};
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodRouter, get};
use cairn_replication::{Body as SiblingBody, Context, Dotted, Sibling};
use serde_json::{Map, Value, json};

use crate::backend::{
    Backend, DeleteObject, GetObject, ListFiles, PutObject, PutStream, ReadResult,
};
use crate::error::{ApiError, Result};
use crate::names::{ObjectName, bucket_from_path, object_from_raw};
use crate::params::{self, BodyStart, Params, within};
use crate::render;
use crate::{
    App, CONTEXT_HEADER, ConflictPolicy, FILE_FIELDS, MAX_CURSOR_LEN, MAX_LIST_LIMIT, NODE_HEADER,
    VERSION_HEADER,
};

/// The methods of an object path: GET (and HEAD), PUT, DELETE, and POST (refused with 405 once
/// the names are valid: uploads are `POST /buckets/{bucket}/files`).
pub fn object_routes<B: Backend>() -> MethodRouter<App<B>> {
    get(get_object::<B>).put(put_object::<B>).delete(delete_object::<B>).post(post_object::<B>)
}

/// Maps an inner result to the answer.
fn answer(node: &str, r: Result<Response>) -> Response {
    r.unwrap_or_else(|e| e.to_response(node))
}

/// A JSON 200 answer `{"success": true, "node": <node>, ...fields}`.
fn ok_json(node: &str, fields: Map<String, Value>) -> Response {
    let mut body = Map::new();
    body.insert("success".into(), Value::Bool(true));
    body.insert("node".into(), Value::String(node.to_string()));
    body.extend(fields);
    (StatusCode::OK, Json(Value::Object(body))).into_response()
}

/// `GET /buckets`.
pub async fn list_buckets<B: Backend>(State(app): State<App<B>>) -> Response {
    let inner = async {
        let buckets = app.backend.list_buckets().await?;
        let mut f = Map::new();
        f.insert(
            "buckets".into(),
            Value::Array(
                buckets
                    .iter()
                    .map(|b| json!({"name": b.name.as_str(), "conflict": b.conflict.as_str()}))
                    .collect(),
            ),
        );
        Ok(ok_json(&app.node, f))
    };
    answer(&app.node, inner.await)
}

/// `POST /buckets/{bucket}?conflict=siblings|lww`.
pub async fn create_bucket<B: Backend>(State(app): State<App<B>>, uri: Uri) -> Response {
    let inner = async {
        let (bucket, _) = bucket_from_path(uri.path())?;
        let params = Params::parse(&uri)?;
        let policy: ConflictPolicy = match params.get("conflict")? {
            Some(p) => p.parse()?,
            None => ConflictPolicy::default(),
        };
        let report = app.backend.create_bucket(bucket.clone(), policy).await?;
        let mut f = Map::new();
        f.insert("bucket".into(), Value::String(bucket.to_string()));
        f.insert("conflict".into(), Value::String(policy.as_str().into()));
        f.extend(report.details);
        Ok(ok_json(&app.node, f))
    };
    answer(&app.node, inner.await)
}

/// `DELETE /buckets/{bucket}`: the bucket and its files.
pub async fn delete_bucket<B: Backend>(State(app): State<App<B>>, uri: Uri) -> Response {
    let inner = async {
        let (bucket, _) = bucket_from_path(uri.path())?;
        let report = app.backend.delete_bucket(bucket.clone()).await?;
        let mut f = Map::new();
        f.insert("bucket".into(), Value::String(bucket.to_string()));
        f.insert("deleted".into(), Value::Bool(true));
        f.extend(report.details);
        Ok(ok_json(&app.node, f))
    };
    answer(&app.node, inner.await)
}

/// `GET /buckets/{bucket}?prefix=&cursor=&limit=`.
pub async fn list_files<B: Backend>(State(app): State<App<B>>, uri: Uri) -> Response {
    let inner = async {
        let (bucket, _) = bucket_from_path(uri.path())?;
        let params = Params::parse(&uri)?;
        let prefix = params.get("prefix")?.unwrap_or_default().to_string();
        if prefix.len() > crate::names::MAX_OBJECT_NAME_LEN || prefix.contains('\0') {
            return Err(ApiError::InvalidArgument(
                "prefix must be at most 1024 bytes without NUL".into(),
            ));
        }
        let cursor = params.get("cursor")?.filter(|c| !c.is_empty()).map(str::to_string);
        if cursor.as_ref().is_some_and(|c| c.len() > MAX_CURSOR_LEN) {
            return Err(ApiError::InvalidArgument("cursor is too long".into()));
        }
        let limit = params.bounded("limit", crate::DEFAULT_LIST_LIMIT, MAX_LIST_LIMIT)?;
        let list = app
            .backend
            .list_files(ListFiles { bucket: bucket.clone(), prefix, cursor, limit })
            .await?;
        let mut f = Map::new();
        f.insert("bucket".into(), Value::String(bucket.to_string()));
        f.insert(
            "files".into(),
            Value::Array(
                list.files
                    .iter()
                    .map(|e| render::file_entry_json(e.name.as_str(), &e.meta, e.versions))
                    .collect(),
            ),
        );
        f.insert("truncated".into(), Value::Bool(list.next_cursor.is_some()));
        f.insert("complete".into(), Value::Bool(list.missing.is_empty()));
        f.insert("missing".into(), json!(list.missing));
        f.insert("next_cursor".into(), list.next_cursor.map(Value::String).unwrap_or(Value::Null));
        Ok(ok_json(&app.node, f))
    };
    answer(&app.node, inner.await)
}

/// The bucket and object named by an object path.
fn object_path(uri: &Uri) -> Result<(crate::BucketName, ObjectName)> {
    let (bucket, raw) = bucket_from_path(uri.path())?;
    let name = object_from_raw(raw.unwrap_or_default())?;
    Ok((bucket, name))
}

/// `GET`/`HEAD /buckets/{bucket}/{*file}?r=&local=&meta=&sibling=` (see READS above).
pub async fn get_object<B: Backend>(
    State(app): State<App<B>>,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    answer(&app.node, get_object_inner(&app, &uri, &headers).await)
}

async fn get_object_inner<B: Backend>(
    app: &App<B>,
    uri: &Uri,
    headers: &HeaderMap,
) -> Result<Response> {
    let (bucket, name) = object_path(uri)?;
    let params = Params::parse(uri)?;
    let r = params.quorum("r", app.config.replicas)?;
    let local = params.flag("local")?;
    let meta = params.flag("meta")?;
    let sibling = params.get("sibling")?.map(str::to_string);
    if sibling.as_ref().is_some_and(|s| s.is_empty() || s.len() > 200) {
        return Err(ApiError::InvalidArgument("sibling must be a version id".into()));
    }
    let read = app
        .backend
        .get_object(GetObject { bucket: bucket.clone(), name: name.clone(), r, local })
        .await?;
    let context = Context(read.set.join());
    let live: Vec<&Dotted<Sibling>> = read.set.live().collect();
    if live.is_empty() {
        let err = ApiError::NoSuchKey {
            name: name.to_string(),
            context: if context.0.is_empty() { None } else { Some(context) },
        };
        let extra = if meta { read_fields(&read) } else { Map::new() };
        return Ok(err.to_response_with(&app.node, extra));
    }
    if meta {
        let mut f = read_fields(&read);
        f.insert("name".into(), Value::String(name.to_string()));
        return Ok(ok_json(&app.node, f));
    }
    if let Some(id) = sibling {
        let found = read.set.siblings().iter().find(|s| render::version_id(&s.dot) == id);
        return match found {
            Some(s) if !s.value.is_tombstone() => {
                content_response(app, (&bucket, &name), &read, s, &context, headers)
            }
            Some(_) => Err(ApiError::NoSuchVersion(format!("{id} is a delete marker"))),
            None => Err(ApiError::NoSuchVersion(id)),
        };
    }
    match live.as_slice() {
        [only] => content_response(app, (&bucket, &name), &read, only, &context, headers),
        _ => {
            let mut f = read_fields(&read);
            f.insert("name".into(), Value::String(name.to_string()));
            let mut resp = ok_json(&app.node, f);
            *resp.status_mut() = StatusCode::MULTIPLE_CHOICES;
            set_header(&mut resp, CONTEXT_HEADER, &context.to_token());
            set_header(&mut resp, NODE_HEADER, &read.node);
            Ok(resp)
        }
    }
}

/// The JSON fields of a read: coordinator, context, siblings, conflict flag and read report.
fn read_fields(read: &ReadResult) -> Map<String, Value> {
    let mut f = Map::new();
    f.insert("coordinator".into(), Value::String(read.node.clone()));
    f.insert("context".into(), Value::String(Context(read.set.join()).to_token()));
    f.insert("conflict".into(), Value::Bool(read.set.live_count() > 1));
    f.insert("siblings".into(), render::siblings_json(&read.set));
    for (k, v) in render::read_report_fields(&read.report) {
        f.insert(k, v);
    }
    f
}

/// Sets a header if the value is a valid header value (all values set here are ASCII by
/// construction: tokens, node ids, hex, dates).
fn set_header(resp: &mut Response, name: &'static str, value: &str) {
    if let Ok(v) = HeaderValue::from_str(value) {
        resp.headers_mut().insert(name, v);
    }
}

/// True when `If-None-Match` lists this ETag (quoted, possibly weak `W/`) or is `*`.
fn etag_matches(headers: &HeaderMap, etag: &str) -> bool {
    headers.get_all(header::IF_NONE_MATCH).iter().filter_map(|v| v.to_str().ok()).any(|v| {
        v.split(',').map(str::trim).any(|t| {
            t == "*" || t.trim_start_matches("W/").trim_matches('"') == etag && !etag.is_empty()
        })
    })
}

/// The content of one live version with its headers: 304 Not Modified without the bytes when
/// the request's `If-None-Match` already names this version's ETag; 206 with `Content-Range`
/// for a satisfiable `Range` (416 for one past the end); else 200 with the whole content. A
/// chunked version streams from the backend, reading only the chunks the range covers.
fn content_response<B: Backend>(
    app: &App<B>,
    (bucket, name): (&crate::BucketName, &ObjectName),
    read: &ReadResult,
    s: &Dotted<Sibling>,
    context: &Context,
    request: &HeaderMap,
) -> Result<Response> {
    let meta = &s.value.meta;
    let size = match &s.value.body {
        SiblingBody::Bytes(b) => b.len() as u64,
        SiblingBody::Chunked(c) => c.size,
        SiblingBody::Tombstone => 0,
    };
    let mut resp = if etag_matches(request, &meta.etag) {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        let range = params::parse_range(request, size, &meta.etag, meta.timestamp_ms)?;
        let (start, end) = range.clone().map_or((0, size), |r| (r.start, r.end));
        let body = match &s.value.body {
            SiblingBody::Bytes(b) => {
                let (a, z) = (start as usize, end as usize);
                Body::from(b.get(a..z).unwrap_or_default().to_vec())
            }
            SiblingBody::Chunked(c) => {
                let holders = read
                    .report
                    .vector_clocks
                    .iter()
                    .filter(|(_, vv)| vv.contains(&s.dot))
                    .map(|(n, _)| n.to_string())
                    .collect();
                Body::from_stream(app.backend.open_content(crate::OpenContent {
                    bucket: bucket.clone(),
                    incarnation: read.incarnation,
                    name: name.clone(),
                    manifest: *c,
                    range: start..end,
                    holders,
                })?)
            }
            SiblingBody::Tombstone => Body::empty(),
        };
        let status = if range.is_some() { StatusCode::PARTIAL_CONTENT } else { StatusCode::OK };
        let mut resp = (status, body).into_response();
        resp.headers_mut().insert(header::CONTENT_LENGTH, HeaderValue::from(end - start));
        if range.is_some() {
            set_header(&mut resp, "content-range", &format!("bytes {start}-{}/{size}", end - 1));
        }
        resp
    };
    resp.headers_mut().insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    let ctype = HeaderValue::from_str(&meta.content_type)
        .unwrap_or(HeaderValue::from_static(crate::DEFAULT_CONTENT_TYPE));
    resp.headers_mut().insert(header::CONTENT_TYPE, ctype);
    set_header(&mut resp, "etag", &format!("\"{}\"", meta.etag));
    set_header(&mut resp, "last-modified", &render::http_date(meta.timestamp_ms));
    set_header(&mut resp, CONTEXT_HEADER, &context.to_token());
    set_header(&mut resp, NODE_HEADER, &read.node);
    set_header(&mut resp, VERSION_HEADER, &render::version_id(&s.dot));
    Ok(resp)
}

/// Reads `?w=`, `?overwrite=` and `X-Cairn-Context`, refusing both a context and overwrite.
fn write_options(
    uri: &Uri,
    headers: &HeaderMap,
    n: usize,
) -> Result<(Option<usize>, Option<Context>, bool)> {
    let params = Params::parse(uri)?;
    let w = params.quorum("w", n)?;
    let overwrite = params.flag("overwrite")?;
    let context = params::context_from_headers(headers)?;
    if overwrite && context.is_some() {
        return Err(ApiError::InvalidArgument(
            "give either X-Cairn-Context or overwrite=true, not both".into(),
        ));
    }
    Ok((w, context, overwrite))
}

/// `PUT /buckets/{bucket}/{*file}?w=&overwrite=`: the raw body is the object.
pub async fn put_object<B: Backend>(
    State(app): State<App<B>>,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let inner = async {
        let (bucket, name) = object_path(&uri)?;
        let (w, context, overwrite) = write_options(&uri, &headers, app.config.replicas)?;
        let limit = app.config.max_object_size;
        params::check_content_length(&headers, limit)?;
        let idle = app.config.body_idle_timeout;
        let content_type = params::content_type(&headers, name.as_str());
        let stream = body.into_data_stream();
        let start =
            params::read_body_start(stream, app.config.inline_max, limit, idle, params::body_error)
                .await?;
        let res = match start {
            BodyStart::Whole(body, etag) => {
                let req = PutObject {
                    bucket,
                    name: name.clone(),
                    body,
                    content_type,
                    file_name: None,
                    etag,
                    context,
                    overwrite,
                    w,
                };
                app.backend.put_object(req).await?
            }
            BodyStart::Larger(first, rest) => {
                let body = params::limited_stream(first, rest, limit, idle, params::body_error);
                let req = PutStream {
                    bucket,
                    name: name.clone(),
                    body,
                    content_type,
                    file_name: None,
                    context,
                    overwrite,
                    w,
                };
                app.backend.put_object_stream(req).await?
            }
        };
        let mut f = render::write_result_json(name.as_str(), &res);
        f.insert("received_by".into(), Value::String(app.node.to_string()));
        Ok((StatusCode::OK, Json(Value::Object(f))).into_response())
    };
    answer(&app.node, inner.await)
}

/// `DELETE /buckets/{bucket}/{*file}?w=`, with an optional `X-Cairn-Context` (without one, the
/// delete supersedes what the coordinator holds).
pub async fn delete_object<B: Backend>(
    State(app): State<App<B>>,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    let inner = async {
        let (bucket, name) = object_path(&uri)?;
        let (w, context, _overwrite) = write_options(&uri, &headers, app.config.replicas)?;
        let res = app
            .backend
            .delete_object(DeleteObject { bucket, name: name.clone(), context, w })
            .await?;
        let mut f = render::write_result_json(name.as_str(), &res);
        // A tombstone has no content: its size, ETag and type would only mislead.
        for k in ["size", "etag", "content_type"] {
            f.remove(k);
        }
        f.insert("deleted".into(), Value::Bool(true));
        f.insert("received_by".into(), Value::String(app.node.to_string()));
        Ok((StatusCode::OK, Json(Value::Object(f))).into_response())
    };
    answer(&app.node, inner.await)
}

/// `POST /buckets/{bucket}/{*file}` (any name but `files`): names are checked, then 405.
pub async fn post_object<B: Backend>(State(app): State<App<B>>, uri: Uri) -> Response {
    let inner = async {
        object_path(&uri)?;
        Err(ApiError::MethodNotAllowed(
            "POST (uploads go to POST /buckets/{bucket}/files; use PUT for one object)".into(),
        ))
    };
    let mut resp = answer(&app.node, inner.await);
    if resp.status() == StatusCode::METHOD_NOT_ALLOWED {
        set_header(&mut resp, "allow", allowed_methods(uri.path()));
    }
    resp
}

/// Maps a multipart stream error: 413 when the body limit fired, else 400.
fn multipart_error(e: MultipartError, limit: u64) -> ApiError {
    if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
        ApiError::EntityTooLarge { limit }
    } else {
        ApiError::MalformedMultipart(e.body_text())
    }
}

/// A read error of a multipart part (the size limits are the handler's, so any error here is a
/// malformed or broken body).
fn part_error(e: MultipartError) -> ApiError {
    ApiError::MalformedMultipart(e.body_text())
}

/// `POST /buckets/{bucket}/files?w=&overwrite=`, optional `X-Cairn-Context` for a one-file form:
/// multipart upload (see MULTIPART UPLOADS).
pub async fn upload_multipart<B: Backend>(
    State(app): State<App<B>>,
    uri: Uri,
    headers: HeaderMap,
    multipart: std::result::Result<Multipart, MultipartRejection>,
) -> Response {
    let mut stored: Vec<Value> = Vec::new();
    let result = upload_inner(&app, &uri, &headers, multipart, &mut stored).await;
    match result {
        Ok(()) => {
            let mut f = Map::new();
            f.insert("files".into(), Value::Array(stored));
            ok_json(&app.node, f)
        }
        Err(e) => {
            let mut extra = Map::new();
            extra.insert("files".into(), Value::Array(stored));
            e.to_response_with(&app.node, extra)
        }
    }
}

async fn upload_inner<B: Backend>(
    app: &App<B>,
    uri: &Uri,
    headers: &HeaderMap,
    multipart: std::result::Result<Multipart, MultipartRejection>,
    stored: &mut Vec<Value>,
) -> Result<()> {
    let (bucket, _) = bucket_from_path(uri.path())?;
    let (w, context, overwrite) = write_options(uri, headers, app.config.replicas)?;
    // With a context the form must hold one file: it is held until the end of the form, so a
    // second file part is refused before anything is stored.
    let mut held: Option<PutObject> = None;
    let request_limit = app.config.max_request_size;
    params::check_content_length(headers, request_limit)?;
    let mut multipart = multipart.map_err(|e| ApiError::MalformedMultipart(e.body_text()))?;
    let mut request_bytes: u64 = 0;
    let mut streamed_with_context = false;
    let idle = app.config.body_idle_timeout;
    while let Some(mut field) = within(idle, multipart.next_field())
        .await?
        .map_err(|e| multipart_error(e, request_limit))?
    {
        let is_file = field.name().is_some_and(|n| FILE_FIELDS.contains(&n));
        if !is_file {
            // Other form fields are drained (they still count against the request limit).
            while let Some(chunk) =
                within(idle, field.chunk()).await?.map_err(|e| multipart_error(e, request_limit))?
            {
                request_bytes += chunk.len() as u64;
                if request_bytes > request_limit {
                    return Err(ApiError::EntityTooLarge { limit: request_limit });
                }
            }
            continue;
        }
        if held.is_some() || streamed_with_context {
            return Err(ApiError::InvalidArgument(
                "X-Cairn-Context applies to one object, and this form holds several files: \
                 upload them without a context, or one per request; nothing was stored"
                    .into(),
            ));
        }
        let file_name = field.file_name().map(str::to_string).ok_or_else(|| {
            ApiError::InvalidObjectName("a file part has no filename (the object name)".into())
        })?;
        let name = ObjectName::new(file_name.clone())?;
        let content_type = params::part_content_type(field.content_type(), &file_name);
        let object_limit = app.config.max_object_size;
        let start = params::read_body_start(
            &mut field,
            app.config.inline_max,
            object_limit,
            idle,
            part_error,
        )
        .await?;
        let (body, etag) = match start {
            BodyStart::Whole(body, etag) => (body, etag),
            BodyStart::Larger(first, rest) => {
                // Too large to hold: stored as it streams, even with a context (the form's
                // other file parts are then refused, after it).
                let body = params::limited_stream(first, rest, object_limit, idle, part_error);
                let req = PutStream {
                    bucket: bucket.clone(),
                    name: name.clone(),
                    body,
                    content_type,
                    file_name: Some(file_name),
                    context: context.clone(),
                    overwrite,
                    w,
                };
                let res = app.backend.put_object_stream(req).await?;
                request_bytes += res.meta.size;
                if request_bytes > request_limit {
                    return Err(ApiError::EntityTooLarge { limit: request_limit });
                }
                stored.push(Value::Object(render::write_result_json(name.as_str(), &res)));
                streamed_with_context |= context.is_some();
                continue;
            }
        };
        request_bytes += body.len() as u64;
        if request_bytes > request_limit {
            return Err(ApiError::EntityTooLarge { limit: request_limit });
        }
        let req = PutObject {
            bucket: bucket.clone(),
            name: name.clone(),
            body,
            content_type,
            file_name: Some(file_name),
            etag,
            context: context.clone(),
            overwrite,
            w,
        };
        if context.is_some() {
            held = Some(req);
            continue;
        }
        let res = app.backend.put_object(req).await?;
        stored.push(Value::Object(render::write_result_json(name.as_str(), &res)));
    }
    if let Some(req) = held {
        let name = req.name.clone();
        let res = app.backend.put_object(req).await?;
        stored.push(Value::Object(render::write_result_json(name.as_str(), &res)));
    }
    if stored.is_empty() {
        return Err(ApiError::MalformedMultipart(format!(
            "no file part: send the file in a field named {}",
            FILE_FIELDS.join(" or ")
        )));
    }
    Ok(())
}

/// `GET /cluster`: the backend's cluster view.
pub async fn cluster<B: Backend>(State(app): State<App<B>>) -> Response {
    let inner = async {
        let view = app.backend.cluster().await?;
        let fields = match view {
            Value::Object(m) => m,
            other => {
                let mut m = Map::new();
                m.insert("cluster".into(), other);
                m
            }
        };
        Ok(ok_json(&app.node, fields))
    };
    answer(&app.node, inner.await)
}

/// `POST /cluster/members/{id}`: add a connected node (202 once the change is committed).
pub async fn add_member<B: Backend>(State(app): State<App<B>>, Path(id): Path<String>) -> Response {
    let inner = async {
        let view = app.backend.change_members(crate::MemberChange::Add(id)).await?;
        Ok(accepted_json(&app.node, view))
    };
    answer(&app.node, inner.await)
}

/// `DELETE /cluster/members/{id}[?force=true]`: decommission (or force-remove) a member (202
/// once the change is committed).
pub async fn remove_member<B: Backend>(
    State(app): State<App<B>>,
    Path(id): Path<String>,
    RawQuery(query): RawQuery,
) -> Response {
    let inner = async {
        let force_param = query
            .as_deref()
            .unwrap_or("")
            .split('&')
            .find_map(|kv| kv.strip_prefix("force=").or((kv == "force").then_some("")));
        let force = match force_param {
            None | Some("false") | Some("0") => false,
            Some("true") | Some("1") | Some("") => true,
            Some(other) => {
                return Err(ApiError::InvalidArgument(format!(
                    "force must be true or false, not {:?}",
                    other.chars().take(40).collect::<String>()
                )));
            }
        };
        let change = if force {
            crate::MemberChange::ForceRemove(id)
        } else {
            crate::MemberChange::Decommission(id)
        };
        let view = app.backend.change_members(change).await?;
        Ok(accepted_json(&app.node, view))
    };
    answer(&app.node, inner.await)
}

/// A JSON 202 answer `{"success": true, "node": <node>, ...fields}`.
fn accepted_json(node: &str, view: Value) -> Response {
    let mut body = Map::new();
    body.insert("success".into(), Value::Bool(true));
    body.insert("node".into(), Value::String(node.to_string()));
    if let Value::Object(m) = view {
        body.extend(m);
    }
    (StatusCode::ACCEPTED, Json(Value::Object(body))).into_response()
}

/// `GET /health`: 200 when healthy, 503 otherwise, JSON either way.
pub async fn health<B: Backend>(State(app): State<App<B>>) -> Response {
    let h = app.backend.health().await;
    let mut body = Map::new();
    body.insert("success".into(), Value::Bool(h.healthy));
    body.insert("node".into(), Value::String(app.node.to_string()));
    body.insert("status".into(), Value::String(if h.healthy { "ok" } else { "unhealthy" }.into()));
    body.extend(h.details);
    let status = if h.healthy { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (status, Json(Value::Object(body))).into_response()
}

/// `GET /metrics`: request metrics, then the backend's own, in Prometheus text.
pub async fn metrics<B: Backend>(State(app): State<App<B>>) -> Response {
    let mut text = app.metrics.render();
    let backend = app.backend.metrics_text();
    if !backend.is_empty() {
        text.push_str(&backend);
        if !text.ends_with('\n') {
            text.push('\n');
        }
    }
    let mut resp = (StatusCode::OK, text).into_response();
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; version=0.0.4"));
    resp
}

/// Any path without a route: 404 `NoSuchRoute`.
pub async fn no_route<B: Backend>(State(app): State<App<B>>, method: Method, uri: Uri) -> Response {
    let shown: String = uri.path().chars().take(200).collect();
    ApiError::NoSuchRoute(format!("{method} {shown}")).to_response(&app.node)
}

/// A known path with a method it does not support: 405 `MethodNotAllowed`.
pub async fn method_not_allowed<B: Backend>(
    State(app): State<App<B>>,
    method: Method,
    uri: Uri,
) -> Response {
    let mut resp = ApiError::MethodNotAllowed(method.to_string()).to_response(&app.node);
    set_header(&mut resp, "allow", allowed_methods(uri.path()));
    resp
}

/// The methods a path supports, for the `Allow` header of a 405 (RFC 9110 §15.5.6), following
/// the route table in [`crate::router`].
pub fn allowed_methods(path: &str) -> &'static str {
    match path.strip_prefix("/buckets/") {
        None => "GET, HEAD",
        Some(rest) => match rest.split_once('/') {
            None => "GET, HEAD, POST, DELETE",
            Some((_, "files")) => "GET, HEAD, PUT, DELETE, POST",
            Some(_) => "GET, HEAD, PUT, DELETE",
        },
    }
}
