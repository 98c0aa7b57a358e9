//! A minimal blocking HTTP/1.1 client for the operator commands (loopback and cluster-local
//! addresses only; no TLS), so the binary needs no HTTP client library.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use anyhow::{Context, Result};

/// Timeout of one request.
const TIMEOUT: Duration = Duration::from_secs(3);
/// Largest answer read.
const MAX_ANSWER: u64 = 16 << 20;

/// `GET http://{addr}{path}`: the status code and body.
pub fn get(addr: &str, path: &str) -> Result<(u16, Vec<u8>)> {
    request("GET", addr, path, TIMEOUT)
}

/// `{method} http://{addr}{path}` with no body, waiting at most `timeout` for the answer: the
/// status code and body.
pub fn request(method: &str, addr: &str, path: &str, timeout: Duration) -> Result<(u16, Vec<u8>)> {
    let sock: std::net::SocketAddr = addr.parse().with_context(|| format!("address {addr}"))?;
    let mut s = TcpStream::connect_timeout(&sock, TIMEOUT)
        .with_context(|| format!("connecting to {addr}"))?;
    s.set_read_timeout(Some(timeout))?;
    s.set_write_timeout(Some(TIMEOUT))?;
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nAccept: application/json\r\nContent-Length: 0\r\n\r\n"
    )?;
    let mut raw = Vec::new();
    s.take(MAX_ANSWER).read_to_end(&mut raw)?;
    let head_end =
        raw.windows(4).position(|w| w == b"\r\n\r\n").context("no end of headers in the answer")?;
    let head = String::from_utf8_lossy(&raw[..head_end]).to_string();
    let status: u16 = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .context("no status code in the answer")?;
    let mut body = raw[head_end + 4..].to_vec();
    if head.to_ascii_lowercase().contains("transfer-encoding: chunked") {
        body = dechunk(&body).context("malformed chunked answer")?;
    }
    Ok((status, body))
}

/// `GET` and parse the body as JSON (any status).
pub fn get_json(addr: &str, path: &str) -> Result<serde_json::Value> {
    let (_, body) = get(addr, path)?;
    serde_json::from_slice(&body).context("answer is not JSON")
}

fn dechunk(mut b: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let line_end = b.windows(2).position(|w| w == b"\r\n")?;
        let size =
            usize::from_str_radix(std::str::from_utf8(&b[..line_end]).ok()?.trim(), 16).ok()?;
        b = &b[line_end + 2..];
        if size == 0 {
            return Some(out);
        }
        out.extend_from_slice(b.get(..size)?);
        b = b.get(size + 2..)?;
    }
}
