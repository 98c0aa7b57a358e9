//! The crate's single error type.

/// Everything that can go wrong in the replication core.
///
/// Every variant is deterministic: this crate does no I/O, so retrying the same call with the same
/// input gives the same error. [`Error::is_client_error`] tells the API layer whether the input came
/// from a user (answer 400) or from a peer or disk (log it, treat the data as corrupt).
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
}

impl Error {
    /// True when the error was caused by what a client sent (a bad token, a bad node id in a
    /// request, too many siblings): the API answers 400/409 rather than 500.
    pub fn is_client_error(&self) -> bool {
        matches!(
            self,
            Error::InvalidContext(_) | Error::TooManySiblings { .. } | Error::InvalidNodeId { .. }
        )
    }

    /// True when retrying the same operation later could succeed. Nothing in this crate depends
    /// on time or I/O, so only a sibling-limit refusal (which a concurrent resolving write can
    /// clear) is retryable.
    pub fn is_retryable(&self) -> bool {
        matches!(self, Error::TooManySiblings { .. })
    }
}

/// Result alias for this crate.
pub type Result<T> = std::result::Result<T, Error>;
