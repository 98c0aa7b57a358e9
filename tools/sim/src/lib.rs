//! Cairn's whole-cluster simulator: the nodes' real protocol code in a simulated world.
//!
//! Every node runs [`cairn_replication::node::NodeCore`] — the same state machine the `cairn`
//! binary executes over the engine and the data plane — over an in-memory store with the
//! engine's durability rules, a simulated network, simulated time and simulated faults, all
//! drawn from one seed (the approach of FoundationDB's simulation and TigerBeetle's VOPR). A
//! seed runs a chaos phase of concurrent clients and faults, heals, runs to quiescence, reads
//! every key back, and checks the history with the fault harness's checker
//! (`cairn_faults::history`). A failing seed replays exactly: `--seed S`.
//!
//! Planted bugs ([`cairn_replication::node::Mutant`], cargo feature `mutants`) prove the
//! simulator sees what it is meant to: each must make some seed fail.
//!
//! How to run it, what it checks and the recorded runs: `docs/testing.md`, "Whole-cluster
//! simulation".
//!
//! # Layout
//! - [`rng`]: the seeded generator every random choice comes from.
//! - [`store`]: the in-memory `LocalStore`: volatile tail, fsync, crash, group commit.
//! - [`world`]: the event loop, the executor of each node's actions, the network, the failure
//!   detector, node lifecycle (crash, clean stop, pause, restart) and fault scenarios.
//! - [`client`]: the workload clients and how their outcomes are recorded.
//! - [`run`]: one seed's phases (setup, chaos, heal, quiescence, read-back) and checks.
//! - [`admin`]: the membership nemesis (`--membership`): add a node, then decommission or
//!   force-remove one, while faults run.
//! - `main.rs`: the command line (seeds in parallel, summary, replay commands).

pub mod admin;
pub mod client;
pub mod rng;
pub mod run;
pub mod store;
pub mod world;

pub use run::{Params, Report, run};
