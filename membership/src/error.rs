//! The crate's single error type and its classification.

/// Result alias used throughout `cairn-membership`.
pub type Result<T> = std::result::Result<T, Error>;

/// Everything that can go wrong in membership, discovery and the request/response channel.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The configuration is unusable (bad cluster secret, bad address, bad limits).
    #[error("invalid membership configuration: {0}")]
    Config(String),
    /// A file-system operation on the data directory failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done, with the path.
        context: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The node keypair file exists but cannot be decoded.
    #[error("keypair file {path} is unreadable: {reason}")]
    Keypair {
        /// Path of the keypair file.
        path: String,
        /// Why decoding failed.
        reason: String,
    },
    /// Building the libp2p swarm or listening failed.
    #[error("network setup failed: {0}")]
    Setup(String),
    /// No member with this node id is known (no heartbeat seen from it yet).
    #[error("unknown node {0:?}: no heartbeat seen from it")]
    UnknownNode(String),
    /// The node could not be reached (dial failed, partitioned, not registered).
    #[error("node {node:?} unreachable: {reason}")]
    Unreachable {
        /// Target node id.
        node: String,
        /// Why.
        reason: String,
    },
    /// The request certainly never reached the node (the dial failed, the node is known to be
    /// stopped): retrying it elsewhere cannot apply it twice.
    #[error("request to node {node:?} not delivered: {reason}")]
    NotDelivered {
        /// Target node id.
        node: String,
        /// Why.
        reason: String,
    },
    /// No reply arrived within the request timeout. The request may or may not have been
    /// processed by the peer.
    #[error("request to node {node:?} timed out")]
    Timeout {
        /// Target node id.
        node: String,
    },
    /// The peer received the request but answered with an error (for example its inbound
    /// queue was full or it dropped the reply handle).
    #[error("node {node:?} refused the request: {message}")]
    Remote {
        /// Target node id.
        node: String,
        /// The peer's explanation.
        message: String,
    },
    /// A request or response exceeds the configured maximum message size.
    #[error("message of {size} bytes exceeds the maximum of {max} bytes")]
    MessageTooLarge {
        /// Size of the message.
        size: usize,
        /// Configured maximum.
        max: usize,
    },
    /// The membership task has stopped; the handle is no longer usable.
    #[error("membership service is shut down")]
    Shutdown,
}

impl Error {
    /// Whether retrying the same operation later (or against another replica) may succeed.
    ///
    /// Network failures and remote overload are retryable; configuration errors, oversize
    /// messages, unknown nodes and a stopped service are not.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            Error::Unreachable { .. }
                | Error::NotDelivered { .. }
                | Error::Timeout { .. }
                | Error::Remote { .. }
        )
    }

    /// Whether the request certainly never reached the target, so that sending it to another
    /// node cannot make it take effect twice. Timeouts, closed connections and remote errors may
    /// follow delivery; a failed dial, an unknown node or an oversize message may not.
    pub fn certainly_not_delivered(&self) -> bool {
        matches!(
            self,
            Error::NotDelivered { .. } | Error::UnknownNode(_) | Error::MessageTooLarge { .. }
        )
    }

    /// Whether this error says something about the health of the target node, so the failure
    /// detector should suspect it (a timeout or failed dial does; an oversize message does not).
    pub fn implicates_peer(&self) -> bool {
        matches!(
            self,
            Error::Unreachable { .. } | Error::NotDelivered { .. } | Error::Timeout { .. }
        )
    }

    pub(crate) fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Error::Io { context: context.into(), source }
    }
}
