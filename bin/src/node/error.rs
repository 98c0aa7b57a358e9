//! The node's error type.

use cairn_replication::quorum::{ReadReport, WriteReport};

/// Why a node operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NodeError {
    /// The bucket does not exist (or was deleted).
    #[error("bucket {0} does not exist")]
    NoSuchBucket(String),
    /// The object has no live version (never written, or deleted); `context` covers its
    /// delete markers, if any.
    #[error("object {name} does not exist")]
    NoSuchKey {
        /// The object name.
        name: String,
        /// The history of the key as read (empty when it was never written).
        context: cairn_replication::VersionVector,
    },
    /// A delete's context covers none of the object's live versions.
    #[error(
        "none of the object's {live} live version(s) is covered by the context: it changed since it was read; read it again and delete with the new context"
    )]
    StaleContext {
        /// Live versions the read found.
        live: usize,
    },
    /// The bucket exists already.
    #[error("bucket {0} already exists")]
    BucketAlreadyExists(String),
    /// The write would leave more concurrent versions than allowed.
    #[error(
        "{count} concurrent versions would exceed the limit of {limit}; read the object and write back with its context to resolve them"
    )]
    TooManySiblings {
        /// Siblings after the write.
        count: usize,
        /// The limit.
        limit: usize,
    },
    /// A quorum or target setting is impossible.
    #[error("invalid quorum: {0}")]
    InvalidQuorum(String),
    /// Fewer than W replicas acknowledged the write.
    #[error("{acked} of {required} required replicas acknowledged the write")]
    WriteQuorum {
        /// Replicas that acknowledged.
        acked: usize,
        /// W.
        required: usize,
        /// The coordinator.
        node: String,
        /// The causal context after the partial write (a client may retry with it).
        context: cairn_replication::VersionVector,
        /// What happened per replica.
        report: Box<WriteReport>,
    },
    /// Fewer than R replicas answered the read.
    #[error("{answered} of {required} required replicas answered the read")]
    ReadQuorum {
        /// Replicas that answered.
        answered: usize,
        /// R.
        required: usize,
        /// What happened per replica.
        report: Box<ReadReport>,
    },
    /// No node could coordinate the request, or a node did not answer (the request may or may
    /// not have taken effect there).
    #[error("unavailable: {0}")]
    Unavailable(String),
    /// A request certainly never reached the node (failed dial, node known to be stopped):
    /// sending it elsewhere cannot apply it twice.
    #[error("not delivered: {0}")]
    NotDelivered(String),
    /// Another node answered with an error.
    #[error("{node} answered {code}: {message}")]
    Remote {
        /// The node.
        node: String,
        /// Its error code.
        code: String,
        /// Its message.
        message: String,
    },
    /// The storage engine failed.
    #[error("storage: {0}")]
    Storage(#[from] cairn_engine::Error),
    /// Stored or received data could not be decoded.
    #[error("corrupt data: {0}")]
    Corrupt(String),
    /// A bug or an unexpected internal condition.
    #[error("internal error: {0}")]
    Internal(String),
}

impl NodeError {
    /// A stable code for the wire protocol and the API.
    pub fn code(&self) -> &'static str {
        match self {
            NodeError::NoSuchBucket(_) => "NoSuchBucket",
            NodeError::NoSuchKey { .. } => "NoSuchKey",
            NodeError::StaleContext { .. } => "StaleContext",
            NodeError::BucketAlreadyExists(_) => "BucketAlreadyExists",
            NodeError::TooManySiblings { .. } => "TooManySiblings",
            NodeError::InvalidQuorum(_) => "InvalidArgument",
            NodeError::WriteQuorum { .. } => "WriteQuorumNotReached",
            NodeError::ReadQuorum { .. } => "ReadQuorumNotReached",
            NodeError::Unavailable(_) | NodeError::NotDelivered(_) | NodeError::Remote { .. } => {
                "Unavailable"
            }
            NodeError::Storage(_) => "StorageError",
            NodeError::Corrupt(_) => "CorruptData",
            NodeError::Internal(_) => "InternalError",
        }
    }
}

impl From<cairn_replication::Error> for NodeError {
    fn from(e: cairn_replication::Error) -> Self {
        match e {
            cairn_replication::Error::TooManySiblings { count, limit } => {
                NodeError::TooManySiblings { count, limit }
            }
            cairn_replication::Error::InvalidQuorum(m) => NodeError::InvalidQuorum(m),
            other => NodeError::Internal(other.to_string()),
        }
    }
}
