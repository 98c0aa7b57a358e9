//! Answering other nodes' requests (the receiving side of [`crate::node::messages`]).

use std::sync::Arc;

use cairn_membership::{InboundRequest, Transport};
use cairn_replication::NodeId;
use tokio::sync::mpsc;

use crate::node::keys::HintKey;
use crate::node::messages::{self, Request, Response};
use crate::node::metrics::Metrics;
use crate::node::{Node, NodeError};

/// Answers inbound requests until the membership layer closes the queue. Each request runs in its
/// own task, so a slow disk write never holds up a read.
pub async fn serve<T: Transport>(node: Arc<Node<T>>, mut inbound: mpsc::Receiver<InboundRequest>) {
    while let Some(req) = inbound.recv().await {
        let node = Arc::clone(&node);
        tokio::spawn(async move {
            let answer = match messages::decode::<Request>(&req.payload) {
                Ok(r) => node.handle(&req.from, r).await,
                Err(e) => {
                    Err(NodeError::Corrupt(format!("undecodable request from {}: {e}", req.from)))
                }
            };
            let resp = match answer {
                Ok(r) => r,
                Err(e) => {
                    tracing::debug!(from = %req.from, error = %e, "request failed");
                    Response::Error { code: e.code().to_owned(), message: e.to_string() }
                }
            };
            match messages::encode(&resp) {
                Ok(bytes) => {
                    req.reply.reply(bytes);
                }
                Err(e) => {
                    req.reply.reply_error(format!("encoding the answer: {e}"));
                }
            }
        });
    }
    tracing::info!("inbound request queue closed");
}

impl<T: Transport> Node<T> {
    /// Handles one request from `from`.
    pub async fn handle(self: &Arc<Self>, from: &str, req: Request) -> Result<Response, NodeError> {
        match req {
            Request::Replicate { key, set, hint_for } => {
                let owner = hint_for.filter(|o| o != self.id().as_str());
                let k = key.clone();
                match owner {
                    Some(owner) => {
                        let o = owner.clone();
                        let vv = self.store.blocking(move |s| s.store_hint(&o, &k, &set)).await?;
                        let owner = NodeId::new(owner).map_err(NodeError::from)?;
                        self.hints.lock().record(HintKey::Object(key), owner, &vv);
                        Metrics::inc(&self.metrics.hints_stored);
                        Ok(Response::Ack { vv })
                    }
                    None => {
                        let vv = self.store.blocking(move |s| s.apply(&k, &set)).await?;
                        Ok(Response::Ack { vv })
                    }
                }
            }
            Request::Read { key } => {
                // Inline, not on the blocking pool: see `Store::read`.
                let set = self.store.read(&key, &self.member_names())?;
                Ok(Response::Set { set })
            }
            Request::Coordinate(w) => {
                tracing::debug!(from, key = %w.key.name, "coordinating a forwarded write");
                let outcome = self.coordinate_forwarded(w).await?;
                Ok(Response::Written(Box::new(outcome)))
            }
            Request::BucketReplicate { name, set, hint_for } => {
                let owner = hint_for.filter(|o| o != self.id().as_str());
                let n = name.clone();
                match owner {
                    Some(owner) => {
                        let o = owner.clone();
                        let vv =
                            self.store.blocking(move |s| s.store_bucket_hint(&o, &n, &set)).await?;
                        let owner = NodeId::new(owner).map_err(NodeError::from)?;
                        self.hints.lock().record(HintKey::Bucket(name), owner, &vv);
                        Ok(Response::Ack { vv })
                    }
                    None => {
                        let merged = self.store.blocking(move |s| s.apply_bucket(&n, &set)).await?;
                        Ok(Response::Ack { vv: merged.join() })
                    }
                }
            }
            Request::BucketRegistry => {
                let entries = self.store.blocking(|s| s.registry()).await?;
                Ok(Response::Registry { entries })
            }
            list @ Request::List { .. } => {
                Ok(Response::Listing { entries: self.serve_list(list).await? })
            }
        }
    }
}
