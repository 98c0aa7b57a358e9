//! Cairn's fault-injection harness, in the manner of Jepsen: start a 4-node cluster (local
//! `cairn node` processes, or the Docker Compose cluster of `deploy/`), run concurrent clients
//! while a seeded schedule kills, pauses and partitions nodes and wipes one node's disk, heal,
//! wait until no hint is pending and the wiped node's keys are back, read every key from every
//! node, check that the replicas agree and that no acknowledged write was lost. Besides the small
//! (inline) objects, every faults run writes a few dozen large objects of several 1 MiB chunks
//! (`--large-objects`, `--large-size`), recorded in the same history, whose every byte is
//! checked whenever one is read. A second mode kills one node with `kill -9` over and over
//! under `--sync always` and checks that every write it acknowledged as a replica survived
//! (crash durability).
//!
//! How to run it and the recorded runs: `docs/testing.md`.
//!
//! # Layout
//! - `history.rs`: operations, final views, and the checker (lost, phantom, resurrected, delete
//!   markers shown, siblings) under the node's add-wins deletes.
//! - `schedule.rs`: the seeded fault schedule and its timed actions.
//! - `cluster.rs`: local processes and Docker Compose containers, with
//!   kill/pause/partition/wipe/heal.
//! - `client.rs`: the HTTP operations (reads resolving siblings, every body checked as it
//!   streams) classified into outcomes.
//! - `workload.rs`: the small-object client loops, the fault executor, the read-back and
//!   agreement checks.
//! - `large.rs`: the large-object workload (chunked objects overwritten with the read's context,
//!   written blind as siblings, deleted), their self-describing content, the streaming byte
//!   check (whole bodies and `Range` reads) and the large-object counts of the summary.
//! - `crash.rs`: the crash-durability mode.
//! - `membership.rs`: `--membership`, an operator adding a node and decommissioning another
//!   during the run.
//! - `wipe.rs`: after a disk wipe, the check that anti-entropy brought the node's keys back.
//!
//! Everything but `history` needs the default feature `harness`; without it the crate is only
//! the checker, which the whole-cluster simulator (`tools/sim`) reuses.

#[cfg(feature = "harness")]
pub mod client;
#[cfg(feature = "harness")]
pub mod cluster;
#[cfg(feature = "harness")]
pub mod crash;
pub mod history;
#[cfg(feature = "harness")]
pub mod large;
#[cfg(feature = "harness")]
pub mod membership;
#[cfg(feature = "harness")]
pub mod schedule;
#[cfg(feature = "harness")]
pub mod wipe;
#[cfg(feature = "harness")]
pub mod workload;

/// Errors of the harness itself (not findings of the checker, which are data).
#[cfg(feature = "harness")]
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The harness could not set something up (ports, files, processes, containers).
    #[error("setup: {0}")]
    Setup(String),
    /// A fault could not be injected or undone.
    #[error("fault injection: {0}")]
    Fault(String),
    /// An HTTP request failed in transport.
    #[error("http: {0}")]
    Http(#[from] reqwest::Error),
    /// A node answered an unexpected status.
    #[error("unexpected status {0}")]
    Status(u16),
    /// A node answered something the harness cannot interpret.
    #[error("protocol: {0}")]
    Protocol(String),
    /// A large object's body was not the bytes its writer stored (wrong, missing or extra
    /// bytes, another key's header): see `large.rs`.
    #[error("corrupt: {0}")]
    Corrupt(String),
    /// A large object's body was stopped early by a transport error.
    #[error("cut short: {0}")]
    CutShort(String),
}

#[cfg(feature = "harness")]
impl Error {
    /// True for errors a later attempt may not meet (transport errors, 5xx answers): the cluster
    /// may be faulted or still recovering.
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::Http(_) | Error::CutShort(_) => true,
            Error::Status(s) => *s >= 500,
            Error::Setup(_) | Error::Fault(_) | Error::Protocol(_) | Error::Corrupt(_) => false,
        }
    }
}

/// Result of the harness's fallible steps.
#[cfg(feature = "harness")]
pub type Result<T> = std::result::Result<T, Error>;
