//! One module per `saelab` subcommand.

pub mod bench;
pub mod convert;
pub mod eval;
pub mod extract;
pub mod inspect;
pub mod report;
pub mod sweep;
pub mod synth;
pub mod train;
