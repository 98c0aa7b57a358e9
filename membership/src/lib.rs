//! Cairn membership: libp2p discovery, gossipsub heartbeats, phi-accrual failure detection, and
//! the request/response channel that carries replication messages between nodes.
//!
//! # Layout
//! (filled in by the membership work)
