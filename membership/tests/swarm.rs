//! Several real libp2p members in one process, on 127.0.0.1 with OS-assigned ports.
//!
//! Bounds on "eventually" are generous (CI runs on two loaded cores); nothing asserts timing
//! beyond such upper bounds.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use bytes::Bytes;
use cairn_membership::{
    ClusterSecret, Error, InboundRequest, MemberEvent, MemberStatus, MemberView, Membership,
    MembershipConfig, MembershipHandle, Transport,
};
use tokio::sync::{mpsc, watch};

const EVENTUALLY: Duration = Duration::from_secs(30);

fn secret(s: &str) -> ClusterSecret {
    ClusterSecret::parse(s).unwrap()
}

fn config(node: &str, dir: &std::path::Path, secret: ClusterSecret) -> MembershipConfig {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    let mut c = MembershipConfig::new(node, dir, "/ip4/127.0.0.1/tcp/0".parse().unwrap(), secret);
    c.http_addr = format!("127.0.0.1:80{}", &node[1..]);
    c.request_timeout = Duration::from_secs(15);
    c
}

async fn start(
    node: &str,
    dir: &std::path::Path,
    bootstrap: Option<&MembershipHandle>,
    secret: ClusterSecret,
) -> (MembershipHandle, mpsc::Receiver<InboundRequest>) {
    start_with(node, dir, bootstrap, secret, Duration::from_secs(15)).await
}

async fn start_with(
    node: &str,
    dir: &std::path::Path,
    bootstrap: Option<&MembershipHandle>,
    secret: ClusterSecret,
    request_timeout: Duration,
) -> (MembershipHandle, mpsc::Receiver<InboundRequest>) {
    let mut c = config(node, dir, secret);
    c.request_timeout = request_timeout;
    if let Some(b) = bootstrap {
        c.bootstrap = b.listen_addrs().to_vec();
    }
    Membership::start(c).await.unwrap()
}

/// Answers every request with "<node>:<payload>".
fn echo(node: &str, mut rx: mpsc::Receiver<InboundRequest>) {
    let node = node.to_owned();
    tokio::spawn(async move {
        while let Some(req) = rx.recv().await {
            let mut out = format!("{node}<-{}:", req.from).into_bytes();
            out.extend_from_slice(&req.payload);
            req.reply.reply(Bytes::from(out));
        }
    });
}

async fn wait_view(
    view: &mut watch::Receiver<MemberView>,
    what: &str,
    pred: impl Fn(&MemberView) -> bool,
) -> MemberView {
    let r = tokio::time::timeout(EVENTUALLY, async {
        loop {
            {
                let v = view.borrow_and_update();
                if pred(&v) {
                    return v.clone();
                }
            }
            view.changed().await.unwrap();
        }
    })
    .await;
    match r {
        Ok(v) => v,
        Err(_) => panic!("timed out waiting for {what}; view: {:#?}", view.borrow()),
    }
}

fn all_up(nodes: &[&str]) -> impl Fn(&MemberView) -> bool {
    let nodes: Vec<String> = nodes.iter().map(|s| s.to_string()).collect();
    move |v| nodes.iter().all(|n| v.status(n) == Some(MemberStatus::Up))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discover_from_one_bootstrap_and_request_both_ways() {
    let s = secret("test cluster secret number one");
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let (h1, rx1) = start("n1", dirs[0].path(), None, s).await;
    let (h2, rx2) = start("n2", dirs[1].path(), Some(&h1), s).await;
    let (h3, rx3) = start("n3", dirs[2].path(), Some(&h1), s).await;
    echo("n1", rx1);
    echo("n2", rx2);
    echo("n3", rx3);

    for h in [&h1, &h2, &h3] {
        let v = wait_view(&mut h.view(), "all three up", all_up(&["n1", "n2", "n3"])).await;
        // Announcements travel with the heartbeats.
        let n2 = &v.members["n2"];
        assert_eq!(n2.announced.peer_id, h2.peer_id().to_string());
        assert_eq!(n2.announced.http_addr, "127.0.0.1:802");
        assert!(!n2.announced.addresses.is_empty());
        assert_eq!(n2.announced.version, env!("CARGO_PKG_VERSION"));
    }
    // n2 and n3 only knew n1, yet talk to each other directly, both ways.
    let r = h2.request("n3", Bytes::from_static(b"ping")).await.unwrap();
    assert_eq!(&r[..], b"n3<-n2:ping");
    let r = h3.request("n2", Bytes::from_static(b"pong")).await.unwrap();
    assert_eq!(&r[..], b"n2<-n3:pong");
    // To itself, through its own inbound queue.
    let r = h1.request("n1", Bytes::from_static(b"self")).await.unwrap();
    assert_eq!(&r[..], b"n1<-n1:self");
    // A large payload within the limit crosses intact; an oversize one is refused locally.
    // (1 MiB: the pnet cipher is unoptimised in debug builds, about 2.5 MB/s; see the docs.)
    let big = Bytes::from(vec![42u8; 1024 * 1024]);
    let r = h1.request("n3", big.clone()).await.unwrap();
    assert_eq!(r.len(), big.len() + "n3<-n1:".len());
    let huge = Bytes::from(vec![0u8; cairn_membership::config::DEFAULT_MAX_MESSAGE_SIZE + 1]);
    assert!(matches!(h1.request("n2", huge).await, Err(Error::MessageTooLarge { .. })));
    assert!(matches!(h1.request("n9", Bytes::new()).await, Err(Error::UnknownNode(_))));

    for h in [h1, h2, h3] {
        h.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_node_goes_down_everywhere_and_returns_up() {
    let s = secret("test cluster secret number two");
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let (h1, rx1) = start("n1", dirs[0].path(), None, s).await;
    let (h2, rx2) = start("n2", dirs[1].path(), Some(&h1), s).await;
    let (h3, rx3) = start("n3", dirs[2].path(), Some(&h1), s).await;
    echo("n1", rx1);
    echo("n2", rx2);
    echo("n3", rx3);
    for h in [&h1, &h2, &h3] {
        wait_view(&mut h.view(), "all three up", all_up(&["n1", "n2", "n3"])).await;
    }
    let old_peer = h3.peer_id();
    let mut events1 = h1.events();
    let mut events2 = h2.events();

    h3.shutdown().await;
    for h in [&h1, &h2] {
        let v = wait_view(&mut h.view(), "n3 down", |v| v.status("n3") == Some(MemberStatus::Down))
            .await;
        assert!(v.members["n3"].phi >= 8.0);
        assert_eq!(v.status("n1"), Some(MemberStatus::Up), "bystanders stay up");
        assert_eq!(v.status("n2"), Some(MemberStatus::Up), "bystanders stay up");
    }
    for events in [&mut events1, &mut events2] {
        let mut seen = Vec::new();
        while let Ok(e) = events.try_recv() {
            seen.push(e);
        }
        assert!(seen.contains(&MemberEvent::Down("n3".into())), "{seen:?}");
        assert!(seen.iter().all(|e| e.node() == "n3"), "{seen:?}");
    }
    // Requests to the dead node fail cleanly within the timeout.
    let err = tokio::time::timeout(Duration::from_secs(20), h1.request("n3", Bytes::new()))
        .await
        .expect("request to a dead node must end within its timeout")
        .unwrap_err();
    assert!(err.is_retryable(), "{err}");

    // Same data directory: same keypair and peer id; a new incarnation.
    let (h3, rx3) = start("n3", dirs[2].path(), Some(&h1), s).await;
    echo("n3", rx3);
    assert_eq!(h3.peer_id(), old_peer);
    for h in [&h1, &h2] {
        wait_view(&mut h.view(), "n3 up again", |v| v.status("n3") == Some(MemberStatus::Up)).await;
    }
    let e = tokio::time::timeout(EVENTUALLY, async {
        loop {
            if let MemberEvent::Up(n) = events2.recv().await.unwrap() {
                return n;
            }
        }
    })
    .await
    .unwrap();
    assert_eq!(e, "n3");
    let r = h2.request("n3", Bytes::from_static(b"welcome back")).await.unwrap();
    assert_eq!(&r[..], b"n3<-n2:welcome back");
    for h in [h1, h2, h3] {
        h.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_secret_is_never_admitted() {
    let good = secret("the right cluster secret 1234");
    let bad = secret("the wrong cluster secret 1234");
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let (h1, rx1) = start("n1", dirs[0].path(), None, good).await;
    let (h2, rx2) = start("n2", dirs[1].path(), Some(&h1), good).await;
    // The intruder knows n1's address and dials it over and over.
    let (h3, rx3) = start("n3", dirs[2].path(), Some(&h1), bad).await;
    echo("n1", rx1);
    echo("n2", rx2);
    echo("n3", rx3);
    // Make n1 dial the intruder too: it is on n1's bootstrap list as well.
    let mut c = config("n4", dirs[2].path().join("n4").as_path(), good);
    c.bootstrap = vec![h1.listen_addrs()[0].clone(), h3.listen_addrs()[0].clone()];
    c.dedicated_thread = false; // also exercise the swarm running on the caller's runtime
    let (h4, rx4) = Membership::start(c).await.unwrap();
    echo("n4", rx4);

    for h in [&h1, &h2, &h4] {
        wait_view(&mut h.view(), "good nodes up", all_up(&["n1", "n2", "n4"])).await;
    }
    // Give the intruder ample time (several heartbeats and redials).
    tokio::time::sleep(Duration::from_secs(4)).await;
    for h in [&h1, &h2, &h4] {
        assert!(h.view().borrow().status("n3").is_none(), "intruder admitted by {}", h.node_id());
        assert!(matches!(h.request("n3", Bytes::new()).await, Err(Error::UnknownNode(_))));
    }
    let v3 = h3.view().borrow().clone();
    assert_eq!(v3.members.len(), 1, "intruder learned members: {:?}", v3.members.keys());
    assert!(matches!(h3.request("n1", Bytes::new()).await, Err(Error::UnknownNode(_))));
    for h in [h1, h2, h3, h4] {
        h.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_peer_times_out_and_becomes_suspect() {
    let s = secret("test cluster secret number four");
    let dirs: Vec<_> = (0..2).map(|_| tempfile::tempdir().unwrap()).collect();
    let timeout = Duration::from_secs(2);
    let (h1, rx1) = start_with("n1", dirs[0].path(), None, s, timeout).await;
    let (h2, mut rx2) = start_with("n2", dirs[1].path(), Some(&h1), s, timeout).await;
    echo("n1", rx1);
    // n2 accepts requests but never answers them (its handler is stuck).
    let (held_tx, mut held_rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Some(req) = rx2.recv().await {
            let _ = held_tx.send(req);
        }
    });
    for h in [&h1, &h2] {
        wait_view(&mut h.view(), "both up", all_up(&["n1", "n2"])).await;
    }
    let mut events = h1.events();
    let started = std::time::Instant::now();
    let err = h1.request("n2", Bytes::from_static(b"anyone?")).await.unwrap_err();
    assert!(matches!(err, Error::Timeout { .. }), "{err}");
    assert!(started.elapsed() >= timeout, "gave up before the timeout");
    assert!(started.elapsed() < Duration::from_secs(10), "timeout not enforced");
    let held = held_rx.recv().await.unwrap();
    assert_eq!(held.from, "n1");
    assert_eq!(&held.payload[..], b"anyone?");
    // The failed request made n2 suspect at once (before phi would have)...
    assert_eq!(events.recv().await.unwrap(), MemberEvent::Suspect("n2".into()));
    // ...and its next heartbeat clears the suspicion.
    let up = tokio::time::timeout(EVENTUALLY, events.recv()).await.unwrap().unwrap();
    assert_eq!(up, MemberEvent::Up("n2".into()));
    // The reverse direction still works.
    let r = h2.request("n1", Bytes::from_static(b"x")).await.unwrap();
    assert_eq!(&r[..], b"n1<-n2:x");
    for h in [h1, h2] {
        h.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn port_in_use_and_bad_config_fail_at_start() {
    let s = secret("test cluster secret number five");
    let d1 = tempfile::tempdir().unwrap();
    let d2 = tempfile::tempdir().unwrap();
    let (h1, _rx1) = start("n1", d1.path(), None, s).await;
    let mut c = config("n2", d2.path(), s);
    c.listen = h1.listen_addrs()[0].clone();
    let err = Membership::start(c.clone()).await.unwrap_err();
    assert!(matches!(err, Error::Setup(_)), "{err}");
    c.node_id = String::new();
    assert!(matches!(Membership::start(c).await.unwrap_err(), Error::Config(_)));
    h1.shutdown().await;
    // After shutdown the handle refuses work instead of hanging.
    assert!(matches!(h1.request("n2", Bytes::new()).await, Err(Error::Shutdown)));
}

/// The swarm runs on its own thread: a node whose main runtime is starved (here: a blocking
/// call on the only runtime thread, for longer than the ~3 s detection time) keeps
/// heartbeating and detecting, so nobody is declared down.
#[tokio::test(flavor = "current_thread")]
async fn starved_main_runtime_causes_no_false_down() {
    let s = secret("test cluster secret number six");
    let dirs: Vec<_> = (0..2).map(|_| tempfile::tempdir().unwrap()).collect();
    let (h1, _rx1) = start("n1", dirs[0].path(), None, s).await;
    let (h2, _rx2) = start("n2", dirs[1].path(), Some(&h1), s).await;
    for h in [&h1, &h2] {
        wait_view(&mut h.view(), "both up", all_up(&["n1", "n2"])).await;
    }
    let mut events = h1.events();
    let before = h1.view().borrow().members["n2"].heartbeats;
    // Deliberately block this runtime's only thread (the scenario under test, not a wait).
    std::thread::sleep(Duration::from_secs(5));
    let v = h1.view().borrow().clone();
    assert_eq!(v.status("n2"), Some(MemberStatus::Up));
    assert!(v.members["n2"].heartbeats >= before + 3, "heartbeats stopped while starved");
    while let Ok(e) = events.try_recv() {
        assert!(!matches!(e, MemberEvent::Down(_)), "false down: {e:?}");
    }
    for h in [h1, h2] {
        h.shutdown().await;
    }
}
