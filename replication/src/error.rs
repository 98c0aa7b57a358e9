//! The crate's single error type.

use crate::quorum::{ReadReport, WriteReport};
use crate::vclock::VersionVector;

/// Everything that can go wrong in the replication core.
///
/// The first group of variants is deterministic (this crate does no I/O: the same call with the
/// same input gives the same error). The second group is what the node's protocol
/// ([`crate::node`]) answers: quorum failures with their reports, unavailable peers, and store
/// failures the executor reports back. [`Error::is_client_error`] tells the API layer whether the
/// input came from a user (answer 400) or from a peer or disk; [`Error::code`] is the stable code.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A node id is empty, too long, or uses characters outside `[A-Za-z0-9_-]`.
    #[error("invalid node id {id:?}: {reason}")]
    InvalidNodeId {
        /// The rejected text (truncated to 80 characters).
        id: String,
        /// Why it was rejected.
        reason: &'static str,
    },
    /// An actor string is not `<node id>#<epoch in hex>`.
    #[error("invalid actor {0:?}: expected <node id>#<hex epoch>")]
    InvalidActor(String),
    /// The ring parameters are unusable (no members, Q not a power of two, N = 0, ...).
    #[error("invalid ring configuration: {0}")]
    InvalidRing(String),
    /// N, R or W out of range, or a coordinator built for a node that is not one of its targets.
    #[error("invalid quorum request: {0}")]
    InvalidQuorum(String),
    /// A causal-context token from a client is malformed, oversized or inconsistent.
    #[error("invalid context token: {0}")]
    InvalidContext(String),
    /// Encoded sibling-set bytes (from disk or from a peer) do not decode or break an invariant.
    #[error("corrupt sibling set: {0}")]
    CorruptSiblingSet(String),
    /// A write would leave more siblings than the configured limit.
    #[error("too many siblings: the write would leave {count}, the limit is {limit}")]
    TooManySiblings {
        /// Number of siblings the write would have produced.
        count: usize,
        /// The configured limit.
        limit: usize,
    },
    /// Serialising a value failed (not expected for the types of this crate).
    #[error("encoding failed: {0}")]
    Encode(String),

    // ---- The node's protocol ([`crate::node`]): answers to client and peer requests. ----
    /// The bucket does not exist (or was deleted).
    #[error("bucket {0} does not exist")]
    NoSuchBucket(String),
    /// The bucket exists already.
    #[error("bucket {0} already exists")]
    BucketAlreadyExists(String),
    /// The object has no live version (never written, or deleted); `context` covers its delete
    /// markers, if any.
    #[error("object {name} does not exist")]
    NoSuchKey {
        /// The object name.
        name: String,
        /// The history of the key as read (empty when it was never written).
        context: VersionVector,
    },
    /// A delete's context covers none of the object's live versions.
    #[error(
        "none of the object's {live} live version(s) is covered by the context: it changed since it was read; read it again and delete with the new context"
    )]
    StaleContext {
        /// Live versions the read found.
        live: usize,
    },
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
        context: VersionVector,
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
    /// The local store failed (I/O, or a record that fails its checksum).
    #[error("storage: {0}")]
    Storage(String),
    /// A sync failed earlier: the store refuses writes until the node restarts.
    #[error("this node's storage failed a sync and refuses writes; restart the node")]
    StoragePoisoned,
    /// A value is larger than the store accepts.
    #[error("a value of {size} bytes is over the storage limit of {max}")]
    ValueTooLarge {
        /// Its size.
        size: u64,
        /// The limit.
        max: u64,
    },
    /// Stored or received data could not be decoded.
    #[error("corrupt data: {0}")]
    Corrupt(String),
    /// A bug or an unexpected internal condition.
    #[error("internal error: {0}")]
    Internal(String),

    // ---- Membership changes ([`crate::layout`]). ----
    /// A membership change is still in progress (or being decided): one at a time.
    #[error("a membership change is in progress: {0}")]
    ChangeInProgress(String),
    /// The change makes no sense for the current layout (adding a member, removing a stranger).
    #[error("invalid membership change: {0}")]
    InvalidChange(String),
    /// The node a change names is not connected (or not up).
    #[error("no such node: {0}")]
    NoSuchNode(String),
}

impl Error {
    /// True when the error was caused by what a client sent (a bad token, a bad node id in a
    /// request, too many siblings): the API answers 400/409 rather than 500.
    pub fn is_client_error(&self) -> bool {
        matches!(
            self,
            Error::InvalidContext(_)
                | Error::TooManySiblings { .. }
                | Error::InvalidNodeId { .. }
                | Error::InvalidChange(_)
                | Error::ChangeInProgress(_)
                | Error::NoSuchNode(_)
        )
    }

    /// True when retrying the same operation later could succeed: a sibling-limit refusal (a
    /// concurrent resolving write can clear it), a missed quorum or an unavailable node.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            Error::TooManySiblings { .. }
                | Error::WriteQuorum { .. }
                | Error::ReadQuorum { .. }
                | Error::Unavailable(_)
                | Error::NotDelivered(_)
        )
    }

    /// A stable code for the wire protocol and the API.
    pub fn code(&self) -> &'static str {
        match self {
            Error::NoSuchBucket(_) => "NoSuchBucket",
            Error::BucketAlreadyExists(_) => "BucketAlreadyExists",
            Error::NoSuchKey { .. } => "NoSuchKey",
            Error::StaleContext { .. } => "StaleContext",
            Error::ChangeInProgress(_) => "ChangeInProgress",
            Error::InvalidChange(_) => "InvalidChange",
            Error::NoSuchNode(_) => "NoSuchNode",
            Error::TooManySiblings { .. } => "TooManySiblings",
            Error::InvalidQuorum(_) => "InvalidArgument",
            Error::InvalidContext(_) => "InvalidContext",
            Error::WriteQuorum { .. } => "WriteQuorumNotReached",
            Error::ReadQuorum { .. } => "ReadQuorumNotReached",
            Error::Unavailable(_) | Error::NotDelivered(_) | Error::Remote { .. } => "Unavailable",
            Error::Storage(_) => "StorageError",
            Error::StoragePoisoned => "StoragePoisoned",
            Error::ValueTooLarge { .. } => "ValueTooLarge",
            Error::Corrupt(_) | Error::CorruptSiblingSet(_) => "CorruptData",
            Error::InvalidNodeId { .. }
            | Error::InvalidActor(_)
            | Error::InvalidRing(_)
            | Error::Encode(_)
            | Error::Internal(_) => "InternalError",
        }
    }
}

/// Result alias for this crate.
pub type Result<T> = std::result::Result<T, Error>;
