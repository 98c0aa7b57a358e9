//! `cairn bench-target`: a trivial HTTP server that measures the load generator's own ceiling.
//!
//! Every GET (and HEAD) answers 200 with `--body-size` bytes of `x`; every other method reads and
//! discards the request body and answers 200 `{"success":true}`. No storage, no routing: what
//! `cairn bench` reaches against it is the most it can drive on this machine. Stops on SIGTERM or
//! Ctrl-C.

use std::net::SocketAddr;
use std::process::ExitCode;

use anyhow::{Context, Result};
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use http_body_util::BodyExt;

/// Arguments of `cairn bench-target`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:9000")]
    listen: SocketAddr,
    /// Size of the body answered to every GET, in bytes.
    #[arg(long, default_value_t = 4096)]
    body_size: usize,
    /// Worker threads of the async runtime (default: the number of CPUs).
    #[arg(long)]
    threads: Option<usize>,
}

/// Runs the command.
pub fn run(args: Args) -> Result<ExitCode> {
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if let Some(n) = args.threads.filter(|n| *n > 0) {
        builder.worker_threads(n);
    }
    let runtime = builder.enable_all().build().context("starting the async runtime")?;
    runtime.block_on(serve(args))?;
    Ok(ExitCode::SUCCESS)
}

async fn serve(args: Args) -> Result<()> {
    let body = Bytes::from(vec![b'x'; args.body_size]);
    let app = axum::Router::new().fallback(answer).with_state(body);
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("listening on {}", args.listen))?;
    let addr = listener.local_addr().context("reading the listening address")?;
    tracing::info!(%addr, "bench-target listening");
    axum::serve(listener, app)
        .with_graceful_shutdown(super::node::shutdown_signal())
        .await
        .context("serving")?;
    Ok(())
}

async fn answer(State(body): State<Bytes>, req: Request) -> Response {
    if req.method() == Method::GET || req.method() == Method::HEAD {
        return ([(header::CONTENT_TYPE, "application/octet-stream")], body).into_response();
    }
    // Read the whole body (any size) and drop it.
    let mut incoming: Body = req.into_body();
    while let Some(frame) = incoming.frame().await {
        if frame.is_err() {
            return StatusCode::BAD_REQUEST.into_response();
        }
    }
    ([(header::CONTENT_TYPE, "application/json")], r#"{"success":true}"#).into_response()
}
