//! Property tests: any valid object name round-trips through a percent-encoded URL to the same
//! key; no path or query a client can send makes the router answer 5xx or panic.
#![allow(clippy::unwrap_used)]

mod common;

use axum::http::{Method, StatusCode};
use common::*;
use proptest::prelude::*;

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
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, failure_persistence: None, ..ProptestConfig::default() })]

    /// A name of arbitrary Unicode (no NUL) is stored under exactly that name, read back, and
    /// listed verbatim.
    #[test]
    fn any_valid_name_round_trips(name in "[^\u{0}]{1,40}", body in proptest::collection::vec(any::<u8>(), 0..64)) {
        prop_assume!(name.len() <= 1024);
        runtime().block_on(async {
            let (app, backend) = app();
            create_bucket(&app, "props").await;
            let uri = format!("/buckets/props/{}", encode(&name));
            let a = send(&app, req_body(Method::PUT, &uri, body.clone())).await;
            assert_eq!(a.status, StatusCode::OK, "{uri}: {}", String::from_utf8_lossy(&a.body));
            assert_eq!(a.json()["name"], name.as_str());
            assert!(backend.stored("props", &name).is_some());
            let a = call(&app, Method::GET, &uri).await;
            assert_eq!(a.status, StatusCode::OK);
            assert_eq!(&a.body[..], &body[..]);
            let j = call(&app, Method::GET, "/buckets/props").await.json();
            assert_eq!(j["files"][0]["name"], name.as_str());
        });
    }

    /// Arbitrary printable paths and queries under `/buckets` never give a 5xx, and every answer
    /// that is not an object's bytes is the JSON shape with a code.
    #[test]
    fn no_path_or_query_gives_a_server_error(
        path in "[ -~]{0,60}",
        query in "[ -~&=%]{0,40}",
        method in prop_oneof![Just(Method::GET), Just(Method::PUT), Just(Method::POST), Just(Method::DELETE), Just(Method::HEAD)],
    ) {
        // Characters that cannot appear raw in a request target are percent-encoded first.
        let clean = |s: &str| s.replace('%', "%25").replace(' ', "%20").replace('"', "%22")
            .replace('#', "%23").replace('<', "%3C").replace('>', "%3E").replace('\\', "%5C")
            .replace('^', "%5E").replace('`', "%60").replace('{', "%7B").replace('|', "%7C")
            .replace('}', "%7D").replace('?', "%3F");
        let uri = format!("/buckets/{}?{}", clean(&path), clean(&query).replace("%25", "%"));
        prop_assume!(uri.parse::<axum::http::Uri>().is_ok());
        runtime().block_on(async {
            let (app, _) = app();
            create_bucket(&app, "abc").await;
            let a = send(&app, req_body(method.clone(), &uri, "x")).await;
            assert!(!a.status.is_server_error(), "{method} {uri} -> {}", a.status);
            if method != Method::HEAD && a.status.is_client_error() {
                a.code();
            }
        });
    }
}
