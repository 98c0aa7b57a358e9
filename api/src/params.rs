//! Query parameters, headers and bodies, read strictly: anything malformed is a 400 with a
//! code, never a silent default.
//!
//! - Query strings are parsed once ([`Params::parse`]); a known parameter given twice is refused
//!   (which one would win is not obvious to the user); unknown parameters are ignored, so cache
//!   busters and future clients keep working.
//! - Flags (`meta`, `local`, `overwrite`) accept `true`/`false`/`1`/`0` and a bare `?meta`.
//! - `r`/`w` must be integers within `1..=N` ([`crate::ApiConfig::replicas`]).
//! - `X-Cairn-Context` is decoded with [`Context::from_token`]; a bad token is 400
//!   `InvalidContext`.
//! - Bodies are streamed and counted ([`read_body_start`]); one byte over the limit stops the
//!   read with 413, before anything is handed to the backend; a client that sends nothing for
//!   the idle timeout gets 408 ([`within`]). A body larger than an inline object is handed on
//!   as a stream with the same limits ([`limited_stream`]).
//! - `Range` is one `bytes=` range (`a-b`, `a-`, `-n`) with `If-Range` ([`parse_range`]);
//!   anything else is ignored and the whole object served, as RFC 9110 §14.2 allows.

use std::future::Future;
use std::time::Duration;

use axum::extract::Query;
use axum::http::{HeaderMap, Uri, header};
use bytes::{Bytes, BytesMut};
use cairn_replication::Context;
use futures::StreamExt;
use sha2::{Digest, Sha256};

use crate::CONTEXT_HEADER;
use crate::backend::BodyStream;
use crate::error::{ApiError, Result};
use crate::render::{etag_from_hasher, http_date};

/// The parsed query string of a request.
#[derive(Debug, Default)]
pub struct Params(Vec<(String, String)>);

impl Params {
    /// Parses the query string of `uri` (percent- and `+`-decoded).
    pub fn parse(uri: &Uri) -> Result<Self> {
        let Query(pairs) = Query::<Vec<(String, String)>>::try_from_uri(uri)
            .map_err(|e| ApiError::InvalidArgument(format!("bad query string: {e}")))?;
        Ok(Params(pairs))
    }

    /// The value of `key`, if given once; 400 if given more than once.
    pub fn get(&self, key: &str) -> Result<Option<&str>> {
        let mut found = self.0.iter().filter(|(k, _)| k == key).map(|(_, v)| v.as_str());
        let first = found.next();
        if found.next().is_some() {
            return Err(ApiError::InvalidArgument(format!("query parameter {key:?} given twice")));
        }
        Ok(first)
    }

    /// A boolean flag: absent is false; `true`, `1` or a bare `?key` is true; `false`, `0` false.
    pub fn flag(&self, key: &str) -> Result<bool> {
        match self.get(key)? {
            None | Some("false") | Some("0") => Ok(false),
            Some("true") | Some("1") | Some("") => Ok(true),
            Some(other) => Err(ApiError::InvalidArgument(format!(
                "{key} must be true or false, not {:?}",
                other.chars().take(40).collect::<String>()
            ))),
        }
    }

    /// A per-request quorum (`r` or `w`) within `1..=n`.
    pub fn quorum(&self, key: &str, n: usize) -> Result<Option<usize>> {
        let Some(v) = self.get(key)? else { return Ok(None) };
        match v.parse::<usize>() {
            Ok(q) if (1..=n).contains(&q) => Ok(Some(q)),
            _ => Err(ApiError::InvalidArgument(format!(
                "{key} must be an integer from 1 to {n} (the replication factor N), not {:?}",
                v.chars().take(40).collect::<String>()
            ))),
        }
    }

    /// A positive integer no larger than `max`, or `default` when absent.
    pub fn bounded(&self, key: &str, default: usize, max: usize) -> Result<usize> {
        let Some(v) = self.get(key)? else { return Ok(default) };
        match v.parse::<usize>() {
            Ok(x) if (1..=max).contains(&x) => Ok(x),
            _ => Err(ApiError::InvalidArgument(format!(
                "{key} must be an integer from 1 to {max}, not {:?}",
                v.chars().take(40).collect::<String>()
            ))),
        }
    }
}

/// The causal context sent in `X-Cairn-Context`, if any.
pub fn context_from_headers(headers: &HeaderMap) -> Result<Option<Context>> {
    let mut values = headers.get_all(CONTEXT_HEADER).iter();
    let Some(value) = values.next() else { return Ok(None) };
    if values.next().is_some() {
        return Err(ApiError::InvalidContext("X-Cairn-Context given twice".into()));
    }
    let token =
        value.to_str().map_err(|_| ApiError::InvalidContext("the header is not ASCII".into()))?;
    Ok(Some(Context::from_token(token.trim())?))
}

/// The request's `Content-Type`; without one, the type guessed from the object name's extension
/// ([`guess_content_type`]), e.g. for `curl -T notes.txt`.
pub fn content_type(headers: &HeaderMap, name: &str) -> String {
    let given = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok());
    match given.map(str::trim).filter(|v| !v.is_empty()) {
        Some(t) => t.to_string(),
        None => guess_content_type(name),
    }
}

/// The content type of a multipart file part: the part's own type, unless it is missing or the
/// generic `application/octet-stream` (what curl and browsers send for an extension they do not
/// know), in which case the one guessed from the file name.
pub fn part_content_type(given: Option<&str>, file_name: &str) -> String {
    match given.map(str::trim).filter(|v| !v.is_empty() && *v != crate::DEFAULT_CONTENT_TYPE) {
        Some(t) => t.to_string(),
        None => guess_content_type(file_name),
    }
}

/// The MIME type registered for the extension of `name` (the last `.`-suffix of its last `/`
/// segment), or `application/octet-stream`. From `mime_guess`'s table, which follows the IANA
/// and Apache registries.
pub fn guess_content_type(name: &str) -> String {
    let base = name.rsplit('/').next().unwrap_or(name);
    match base.rsplit_once('.') {
        Some((stem, ext)) if !stem.is_empty() && !ext.is_empty() => {
            mime_guess::from_ext(ext).first_raw().unwrap_or(crate::DEFAULT_CONTENT_TYPE).to_string()
        }
        _ => crate::DEFAULT_CONTENT_TYPE.to_string(),
    }
}

/// Refuses at once a body whose declared `Content-Length` is over `limit` (413 without reading).
pub fn check_content_length(headers: &HeaderMap, limit: u64) -> Result<()> {
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    match declared {
        Some(len) if len > limit => Err(ApiError::EntityTooLarge { limit }),
        _ => Ok(()),
    }
}

/// Counts bytes and computes the ETag of a body arriving in chunks, refusing it past `limit`.
#[derive(Debug)]
pub struct LimitedBuffer {
    buf: BytesMut,
    hasher: Sha256,
    limit: u64,
}

impl LimitedBuffer {
    /// An empty buffer that accepts at most `limit` bytes.
    pub fn new(limit: u64) -> Self {
        LimitedBuffer { buf: BytesMut::new(), hasher: Sha256::new(), limit }
    }

    /// Appends a chunk; 413 `EntityTooLarge` (and the buffer is to be dropped) past the limit.
    pub fn push(&mut self, chunk: &[u8]) -> Result<()> {
        let total = self.buf.len() as u64 + chunk.len() as u64;
        if total > self.limit {
            return Err(ApiError::EntityTooLarge { limit: self.limit });
        }
        self.hasher.update(chunk);
        self.buf.extend_from_slice(chunk);
        Ok(())
    }

    /// Bytes held so far.
    pub fn len(&self) -> u64 {
        self.buf.len() as u64
    }

    /// Whether nothing is held.
    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    /// The bytes held, without the ETag (the backend hashes a streamed body itself).
    pub fn into_bytes(self) -> Bytes {
        self.buf.freeze()
    }

    /// The complete body and its ETag.
    pub fn finish(self) -> (Bytes, String) {
        (self.buf.freeze(), etag_from_hasher(self.hasher))
    }
}

/// Awaits the next piece of a body for at most `idle`: 408 `RequestTimeout` after it.
pub async fn within<T>(idle: Duration, next: impl Future<Output = T>) -> Result<T> {
    tokio::time::timeout(idle, next).await.map_err(|_| ApiError::RequestTimeout(idle))
}

/// What reading the start of a body found.
pub enum BodyStart<S> {
    /// The whole body fits inline: the bytes and their ETag.
    Whole(Bytes, String),
    /// More than `inline_max`: the bytes read so far and the rest of the stream.
    Larger(Bytes, S),
}

/// Reads a body up to `inline_max` bytes: the whole body when it fits, else what was read and
/// the rest of the stream (see [`limited_stream`]). Each piece is awaited at most `idle`; more
/// than `limit` bytes is 413.
pub async fn read_body_start<S, E>(
    mut stream: S,
    inline_max: u64,
    limit: u64,
    idle: Duration,
    map_err: fn(E) -> ApiError,
) -> Result<BodyStart<S>>
where
    S: futures::Stream<Item = std::result::Result<Bytes, E>> + Unpin,
{
    let mut buf = LimitedBuffer::new(limit);
    while let Some(chunk) = within(idle, stream.next()).await? {
        let chunk = chunk.map_err(map_err)?;
        buf.push(&chunk)?;
        if buf.len() > inline_max {
            return Ok(BodyStart::Larger(buf.into_bytes(), stream));
        }
    }
    let (bytes, etag) = buf.finish();
    Ok(BodyStart::Whole(bytes, etag))
}

/// `first` and then the rest of a body as a [`BodyStream`]: each piece awaited at most `idle`
/// (408 after it), the whole body at most `limit` bytes (413 past it), a read error mapped by
/// `map_err`. The stream ends after its first error. Bounded in count by `limit` and in time by
/// `idle` per piece.
pub fn limited_stream<'a, S, E>(
    first: Bytes,
    rest: S,
    limit: u64,
    idle: Duration,
    map_err: fn(E) -> ApiError,
) -> BodyStream<'a>
where
    S: futures::Stream<Item = std::result::Result<Bytes, E>> + Send + Unpin + 'a,
    E: 'a,
{
    let counted = first.len() as u64;
    let head = futures::stream::once(std::future::ready(Ok(first)));
    let tail = futures::stream::unfold(
        (rest, counted, false),
        move |(mut rest, mut counted, done)| async move {
            if done {
                return None;
            }
            let item = match within(idle, rest.next()).await {
                Err(e) => Err(e),
                Ok(None) => return None,
                Ok(Some(Err(e))) => Err(map_err(e)),
                Ok(Some(Ok(b))) => {
                    counted += b.len() as u64;
                    if counted > limit { Err(ApiError::EntityTooLarge { limit }) } else { Ok(b) }
                }
            };
            let done = item.is_err();
            Some((item, (rest, counted, done)))
        },
    );
    Box::pin(head.chain(tail))
}

/// The body read error of a raw request.
pub fn body_error(e: axum::Error) -> ApiError {
    ApiError::InvalidArgument(format!("the request body could not be read: {e}"))
}

/// The byte range a `GET` serves: `Ok(None)` for the whole object (no `Range`, one the server
/// ignores, or an `If-Range` that does not match this version), `Ok(Some(start..end))` for a
/// satisfiable single range, 416 `InvalidRange` for one that starts past the end.
///
/// Ignored, as RFC 9110 §14.2 allows: units other than `bytes`, several ranges, malformed
/// specs. `If-Range` matches a strong ETag equal to `etag`, or the exact `Last-Modified` date.
pub fn parse_range(
    headers: &HeaderMap,
    size: u64,
    etag: &str,
    modified_ms: u64,
) -> Result<Option<std::ops::Range<u64>>> {
    let Some(raw) = headers.get(header::RANGE).and_then(|v| v.to_str().ok()) else {
        return Ok(None);
    };
    if let Some(cond) = headers.get(header::IF_RANGE) {
        let cond = cond.to_str().unwrap_or("").trim();
        let matches = if cond.starts_with('"') {
            cond.trim_matches('"') == etag && !etag.is_empty()
        } else {
            cond == http_date(modified_ms)
        };
        if !matches {
            return Ok(None);
        }
    }
    let raw = raw.trim();
    let Some(spec) = raw.get(..6).filter(|u| u.eq_ignore_ascii_case("bytes=")).map(|_| &raw[6..])
    else {
        return Ok(None);
    };
    if spec.contains(',') {
        return Ok(None);
    }
    let Some((a, b)) = spec.trim().split_once('-') else { return Ok(None) };
    let (a, b) = (a.trim(), b.trim());
    let num = |s: &str| -> Option<u64> {
        if s.is_empty() || !s.bytes().all(|c| c.is_ascii_digit()) {
            return None;
        }
        s.parse().ok()
    };
    let unsatisfiable = ApiError::RangeNotSatisfiable { size };
    if a.is_empty() {
        let Some(n) = num(b) else { return Ok(None) };
        if n == 0 || size == 0 {
            return Err(unsatisfiable);
        }
        return Ok(Some(size.saturating_sub(n)..size));
    }
    let Some(start) = num(a) else { return Ok(None) };
    let end = if b.is_empty() {
        size
    } else {
        let Some(last) = num(b) else { return Ok(None) };
        if last < start {
            return Ok(None);
        }
        last.saturating_add(1).min(size)
    };
    if start >= size {
        return Err(unsatisfiable);
    }
    Ok(Some(start..end))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn range(value: &str, size: u64) -> Result<Option<std::ops::Range<u64>>> {
        let mut h = HeaderMap::new();
        h.insert(header::RANGE, value.parse().unwrap());
        parse_range(&h, size, "abc", 1_000)
    }

    #[test]
    fn ranges_follow_rfc_9110() {
        assert_eq!(range("bytes=0-0", 10).unwrap(), Some(0..1));
        assert_eq!(range("bytes=2-5", 10).unwrap(), Some(2..6));
        assert_eq!(range("bytes=2-", 10).unwrap(), Some(2..10));
        assert_eq!(range("bytes=5-100", 10).unwrap(), Some(5..10), "end clipped to the size");
        assert_eq!(range("bytes=-3", 10).unwrap(), Some(7..10), "suffix");
        assert_eq!(range("bytes=-30", 10).unwrap(), Some(0..10), "suffix longer than the object");
        assert_eq!(range("BYTES=1-1", 10).unwrap(), Some(1..2), "unit is case-insensitive");
        for ignored in ["bytes=5-2", "bytes=0-1,4-5", "items=0-1", "bytes=x-", "bytes=-", "bytes"] {
            assert_eq!(range(ignored, 10).unwrap(), None, "{ignored}");
        }
        for bad in ["bytes=10-", "bytes=10-20", "bytes=-0"] {
            assert!(
                matches!(range(bad, 10), Err(ApiError::RangeNotSatisfiable { size: 10 })),
                "{bad}"
            );
        }
        assert!(range("bytes=0-", 0).is_err(), "nothing of an empty object is satisfiable");
    }

    #[test]
    fn if_range_serves_the_range_only_for_the_same_version() {
        let mut h = HeaderMap::new();
        h.insert(header::RANGE, "bytes=1-2".parse().unwrap());
        h.insert(header::IF_RANGE, "\"abc\"".parse().unwrap());
        assert_eq!(parse_range(&h, 10, "abc", 1_000).unwrap(), Some(1..3));
        assert_eq!(parse_range(&h, 10, "other", 1_000).unwrap(), None);
        h.insert(header::IF_RANGE, http_date(1_000).parse().unwrap());
        assert_eq!(parse_range(&h, 10, "abc", 1_000).unwrap(), Some(1..3));
        assert_eq!(parse_range(&h, 10, "abc", 9_000_000).unwrap(), None);
    }

    #[test]
    fn content_types_are_guessed_from_the_name_when_not_given() {
        assert_eq!(guess_content_type("notes.txt"), "text/plain");
        assert_eq!(guess_content_type("2024/cat.JPG"), "image/jpeg");
        assert_eq!(guess_content_type("backup.tar.gz"), "application/gzip");
        for none in ["README", ".bashrc", "dir.d/file", "trailing."] {
            assert_eq!(guess_content_type(none), "application/octet-stream", "{none}");
        }
        let mut h = HeaderMap::new();
        assert_eq!(content_type(&h, "a.png"), "image/png");
        h.insert(header::CONTENT_TYPE, "text/x-custom".parse().unwrap());
        assert_eq!(content_type(&h, "a.png"), "text/x-custom", "a given type is kept");
        assert_eq!(part_content_type(Some("application/octet-stream"), "a.pdf"), "application/pdf");
        assert_eq!(part_content_type(None, "a.json"), "application/json");
        assert_eq!(part_content_type(Some("image/webp"), "a.bin"), "image/webp");
    }

    fn params(q: &str) -> Params {
        Params::parse(&format!("/x?{q}").parse::<Uri>().unwrap()).unwrap()
    }

    #[test]
    fn quorum_bounds() {
        assert_eq!(params("r=1").quorum("r", 3).unwrap(), Some(1));
        assert_eq!(params("r=3").quorum("r", 3).unwrap(), Some(3));
        assert_eq!(params("").quorum("r", 3).unwrap(), None);
        for bad in ["r=0", "r=4", "r=-1", "r=x", "r=", "r=1&r=2", "r=99999999999999999999999"] {
            let e = params(bad).quorum("r", 3).unwrap_err();
            assert_eq!(e.code(), "InvalidArgument", "{bad}");
        }
    }

    #[test]
    fn flags() {
        assert!(params("meta").flag("meta").unwrap());
        assert!(params("meta=true").flag("meta").unwrap());
        assert!(!params("meta=0").flag("meta").unwrap());
        assert!(!params("other=1").flag("meta").unwrap());
        assert!(params("meta=yes").flag("meta").is_err());
    }

    #[test]
    fn limited_buffer_refuses_one_byte_over() {
        let mut b = LimitedBuffer::new(4);
        b.push(b"ab").unwrap();
        b.push(b"cd").unwrap();
        assert_eq!(b.push(b"e").unwrap_err().code(), "EntityTooLarge");
        let mut b = LimitedBuffer::new(4);
        b.push(b"abcd").unwrap();
        let (bytes, etag) = b.finish();
        assert_eq!(&bytes[..], b"abcd");
        assert_eq!(etag, crate::render::etag_of(b"abcd"));
    }
}
