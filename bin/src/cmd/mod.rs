//! One module per subcommand.

pub mod bench;
pub mod bench_target;
pub mod cluster;
pub mod compact;
pub mod dev_cluster;
pub mod healthcheck;
pub mod http;
pub mod inspect;
pub mod node;
