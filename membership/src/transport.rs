//! The request/response abstraction the replication layer programs against.
//!
//! Payloads are opaque bytes: this crate knows nothing of replication messages. A request goes
//! to a node id and resolves to the peer's reply, or to an error within the request timeout.
//! The receiving node gets an [`InboundRequest`] on a bounded channel and answers through its
//! [`ReplyHandle`]. Two implementations exist: the libp2p [`crate::MembershipHandle`] and the
//! in-memory [`crate::testing::InMemoryTransport`].

use std::future::Future;

use bytes::Bytes;
use tokio::sync::oneshot;

use crate::error::Result;

/// Capacity of the inbound request queue between the network task and the node. When it is
/// full the network task answers the request with an error at once ("overloaded") instead of
/// blocking: the sender sees a retryable [`crate::Error::Remote`].
pub const INBOUND_QUEUE_CAPACITY: usize = 1024;

/// Sends opaque requests to other nodes by node id.
pub trait Transport: Send + Sync + 'static {
    /// Sends `payload` to node `to` and awaits its reply, bounded by the request timeout.
    ///
    /// A request to the local node id is delivered to the local inbound queue, like any other.
    /// Failures that implicate the peer (timeout, unreachable) also make the failure detector
    /// suspect it.
    fn request(&self, to: &str, payload: Bytes) -> impl Future<Output = Result<Bytes>> + Send;
}

/// A request received from another node (or from this node to itself).
#[derive(Debug)]
pub struct InboundRequest {
    /// Node id of the sender.
    pub from: String,
    /// The opaque request payload.
    pub payload: Bytes,
    /// Where the reply goes. Dropping it without replying answers the sender with an error.
    pub reply: ReplyHandle,
}

/// One-shot reply path of an [`InboundRequest`].
#[derive(Debug)]
pub struct ReplyHandle {
    /// Sending half of a oneshot; the network task (or in-memory network) awaits the receiver
    /// and forwards the outcome to the requester. `Err(message)` is delivered as
    /// [`crate::Error::Remote`]. If the receiver is gone (requester timed out, connection
    /// closed) the reply is silently discarded.
    tx: oneshot::Sender<std::result::Result<Bytes, String>>,
}

impl ReplyHandle {
    /// A handle and the receiver its reply arrives on.
    pub fn new() -> (Self, oneshot::Receiver<std::result::Result<Bytes, String>>) {
        let (tx, rx) = oneshot::channel();
        (ReplyHandle { tx }, rx)
    }

    /// Sends the reply payload. Returns false if the requester no longer waits for it.
    pub fn reply(self, payload: Bytes) -> bool {
        self.tx.send(Ok(payload)).is_ok()
    }

    /// Answers with an error message (the requester gets [`crate::Error::Remote`]).
    pub fn reply_error(self, message: impl Into<String>) -> bool {
        self.tx.send(Err(message.into())).is_ok()
    }
}

/// Outcome of an inbound request whose reply handle was dropped.
pub(crate) const DROPPED_REPLY: &str = "request dropped by the receiving node without a reply";
