//! The Cairn node library: everything `cairn node` runs, as a library so that in-process cluster
//! tests can assemble nodes over an in-memory network.
//!
//! # Layout
//! - [`node`]: the node — coordinator, inbound request handling, hinted handoff, local store,
//!   bucket registry, wire protocol, actor epoch, metrics.
#![allow(clippy::module_name_repetitions)]

pub mod node;
