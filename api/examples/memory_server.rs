//! Serves the API over the in-memory backend on 127.0.0.1, to try the routes with curl without a
//! cluster (nothing is persisted; replication is only simulated in the reports).
//!
//! ```console
//! $ cargo run -p cairn-api --example memory_server -- 127.0.0.1:8090
//! $ curl -X POST http://127.0.0.1:8090/buckets/photos
//! ```
//!
//! Stops on Ctrl-C.

use std::sync::Arc;

use cairn_api::testing::MemoryBackend;
use cairn_api::{ApiConfig, router};
use cairn_replication::NodeId;

/// Where it listens when no address is given.
const DEFAULT_ADDR: &str = "127.0.0.1:8090";

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let addr = std::env::args().nth(1).unwrap_or_else(|| DEFAULT_ADDR.to_string());
    let backend = Arc::new(MemoryBackend::new(NodeId::new("n1")?, 3));
    let app = router(backend, ApiConfig::default());
    let listener = tokio::net::TcpListener::bind(&addr).await?;
    eprintln!("cairn-api memory server on http://{}", listener.local_addr()?);
    axum::serve(listener, app)
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    Ok(())
}
