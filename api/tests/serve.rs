//! The router behind a real HTTP/1.1 server on 127.0.0.1, spoken to with raw TCP: what curl
//! sees when it declares a body over the limit (413 at once, without sending the body), and a
//! PUT/GET/HEAD round trip.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Generous upper bound for one exchange on a loaded machine (not a timing assertion).
const EXCHANGE_TIMEOUT: Duration = Duration::from_secs(30);

/// Sends `request` on a fresh connection and reads until the server closes it (every request
/// here says `Connection: close`).
async fn exchange(addr: std::net::SocketAddr, request: &[u8]) -> String {
    let run = async {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(request).await.unwrap();
        let mut out = Vec::new();
        // A reset after the answer is fine: the server may close without reading the body.
        let _ = s.read_to_end(&mut out).await;
        String::from_utf8_lossy(&out).into_owned()
    };
    tokio::time::timeout(EXCHANGE_TIMEOUT, run).await.unwrap()
}

#[tokio::test]
async fn real_server_round_trip_and_early_413() {
    let (app, backend) = common::app();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move { axum::serve(listener, app).await });

    let a =
        exchange(addr, b"POST /buckets/web HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await;
    assert!(a.starts_with("HTTP/1.1 200"), "{a}");

    // Declares 10 MB (the limit is 1 KiB) and sends nothing: the answer comes without the body.
    let a = exchange(
        addr,
        b"PUT /buckets/web/big HTTP/1.1\r\nHost: x\r\nContent-Length: 10000000\r\n\
          Expect: 100-continue\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(a.starts_with("HTTP/1.1 413"), "{a}");
    assert!(a.contains("\"EntityTooLarge\""), "{a}");
    assert!(backend.stored("web", "big").is_none());

    let a = exchange(
        addr,
        b"PUT /buckets/web/hello.txt HTTP/1.1\r\nHost: x\r\nContent-Type: text/plain\r\n\
          Content-Length: 5\r\nConnection: close\r\n\r\nhello",
    )
    .await;
    assert!(a.starts_with("HTTP/1.1 200"), "{a}");
    let a = exchange(
        addr,
        b"GET /buckets/web/hello.txt HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(a.starts_with("HTTP/1.1 200"), "{a}");
    assert!(a.ends_with("\r\n\r\nhello"), "{a}");
    assert!(a.to_ascii_lowercase().contains("x-cairn-context: "), "{a}");
    let a = exchange(
        addr,
        b"HEAD /buckets/web/hello.txt HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(a.starts_with("HTTP/1.1 200"), "{a}");
    assert!(a.to_ascii_lowercase().contains("content-length: 5"), "{a}");
    assert!(a.ends_with("\r\n\r\n"), "HEAD has no body: {a}");
    server.abort();
}
