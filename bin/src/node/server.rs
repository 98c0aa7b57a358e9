//! Peers' requests from the data plane into the core (the receiving side of
//! [`cairn_replication::node::messages`]).

use std::sync::Arc;

use cairn_membership::{InboundRequest, Transport};
use cairn_replication::NodeId;
use cairn_replication::node::Event;
use tokio::sync::mpsc;

use crate::node::messages::{self, Request};
use crate::node::{Node, inbound_id};

/// Feeds inbound requests to the core until the transport closes the queue. Each request is
/// stepped in its own task, so that a request whose step reads the disk inline never holds up
/// the next one.
pub async fn serve<T: Transport>(node: Arc<Node<T>>, mut inbound: mpsc::Receiver<InboundRequest>) {
    while let Some(req) = inbound.recv().await {
        let from = match NodeId::new(req.from.clone()) {
            Ok(f) => f,
            Err(e) => {
                req.reply.reply_error(format!("unknown sender: {e}"));
                continue;
            }
        };
        if let Some((chunk, data)) = messages::decode_put_chunk(&req.payload) {
            let node = Arc::clone(&node);
            tokio::spawn(async move { node.serve_put_chunk(chunk, data, req.reply).await });
            continue;
        }
        let request = match messages::decode::<Request>(&req.payload) {
            Ok(r) => r,
            Err(e) => {
                tracing::debug!(%from, error = %e, "undecodable request");
                req.reply.reply_error(format!("undecodable request: {e}"));
                continue;
            }
        };
        let node = Arc::clone(&node);
        if let Request::GetChunk { chunk } = request {
            tokio::spawn(async move { node.serve_get_chunk(chunk, req.reply) });
            continue;
        }
        tokio::spawn(async move {
            let id = node.fresh_id();
            node.inbound.lock().insert(id, req.reply);
            node.step(Event::Inbound { id: inbound_id(id), from, request });
        });
    }
    tracing::info!("inbound request queue closed");
}
