//! One module per subcommand.

pub mod compact;
pub mod inspect;
