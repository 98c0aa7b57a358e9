//! Property tests over real nodes (see `inproc`): any valid object name round-trips through a
//! percent-encoded URL to the same key; no path or query a client can send makes the API answer
//! 5xx or panic. One cluster serves every case of a property (cases share it, as clients share
//! a cluster), so the runner is driven by hand rather than through `proptest!`.
#![allow(clippy::unwrap_used)]

mod inproc;

use axum::http::{Method, StatusCode};
use inproc::TestCluster;
use inproc::http::*;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};

/// Percent-encodes every byte outside the unreserved set and `/` (what a careful client does).
fn encode(name: &str) -> String {
    let mut out = String::new();
    for b in name.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~/".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap()
}

/// 96 cases; `PROPTEST_RNG_SEED` and the other `PROPTEST_*` variables apply.
fn runner() -> TestRunner {
    TestRunner::new(Config { cases: 96, failure_persistence: None, ..Config::default() })
}

/// A name of arbitrary Unicode (no NUL) is stored under exactly that name, read back, and
/// listed verbatim.
#[test]
fn any_valid_name_round_trips() {
    let rt = runtime();
    let c = rt.block_on(TestCluster::start());
    let case = std::sync::atomic::AtomicU32::new(0);
    let strategy = ("[^\u{0}]{1,40}", proptest::collection::vec(any::<u8>(), 0..64));
    runner()
        .run(&strategy, |(name, body)| {
            prop_assume!(name.len() <= 1024);
            // A bucket per case, so the listing holds this name alone.
            let n = case.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let bucket = format!("props-{n}");
            rt.block_on(async {
                create_bucket(&c.app, &bucket).await;
                let uri = format!("/buckets/{bucket}/{}", encode(&name));
                let a = send(&c.app, req_body(Method::PUT, &uri, body.clone())).await;
                assert_eq!(a.status, StatusCode::OK, "{uri}: {}", a.text());
                assert_eq!(a.json()["name"], name.as_str());
                assert!(!c.stored_nowhere(&bucket, &name).await, "stored under another key");
                let a = call(&c.app, Method::GET, &uri).await;
                assert_eq!(a.status, StatusCode::OK);
                assert_eq!(&a.body[..], &body[..]);
                let j = call(&c.app, Method::GET, &format!("/buckets/{bucket}")).await.json();
                assert_eq!(names(&j), [name.as_str()]);
            });
            Ok(())
        })
        .unwrap();
}

/// Arbitrary printable paths and queries under `/buckets` never give a 5xx, and every answer
/// that is not an object's bytes is the JSON shape with a code.
#[test]
fn no_path_or_query_gives_a_server_error() {
    let rt = runtime();
    let c = rt.block_on(async {
        let c = TestCluster::start().await;
        create_bucket(&c.app, "abc").await;
        c
    });
    let strategy = (
        "[ -~]{0,60}",
        "[ -~&=%]{0,40}",
        prop_oneof![
            Just(Method::GET),
            Just(Method::PUT),
            Just(Method::POST),
            Just(Method::DELETE),
            Just(Method::HEAD)
        ],
    );
    // Characters that cannot appear raw in a request target are percent-encoded first.
    let clean = |s: &str| {
        s.replace('%', "%25")
            .replace(' ', "%20")
            .replace('"', "%22")
            .replace('#', "%23")
            .replace('<', "%3C")
            .replace('>', "%3E")
            .replace('\\', "%5C")
            .replace('^', "%5E")
            .replace('`', "%60")
            .replace('{', "%7B")
            .replace('|', "%7C")
            .replace('}', "%7D")
            .replace('?', "%3F")
    };
    runner()
        .run(&strategy, |(path, query, method)| {
            let uri = format!("/buckets/{}?{}", clean(&path), clean(&query).replace("%25", "%"));
            prop_assume!(uri.parse::<axum::http::Uri>().is_ok());
            rt.block_on(async {
                let a = send(&c.app, req_body(method.clone(), &uri, "x")).await;
                assert!(
                    !a.status.is_server_error(),
                    "{method} {uri} -> {}: {}",
                    a.status,
                    a.text()
                );
                if method != Method::HEAD && a.status.is_client_error() {
                    a.code();
                }
            });
            Ok(())
        })
        .unwrap();
}

/// A case proptest once shrank a failure to (from the former `api/tests/properties.rs`
/// regressions file): a one-letter name with an empty body.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_object_with_a_one_letter_name_round_trips() {
    let c = TestCluster::start().await;
    create_bucket(&c.app, "props").await;
    let a = send(&c.app, req_body(Method::PUT, "/buckets/props/a", Vec::new())).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text());
    assert_eq!(a.json()["size"], 0);
    let a = call(&c.app, Method::GET, "/buckets/props/a").await;
    assert_eq!((a.status, &a.body[..]), (StatusCode::OK, &b""[..]));
    let j = call(&c.app, Method::GET, "/buckets/props").await.json();
    assert_eq!(names(&j), ["a"]);
}
