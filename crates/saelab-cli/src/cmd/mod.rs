//! One module per `saelab` subcommand.

pub mod convert;
pub mod eval;
pub mod inspect;
pub mod report;
pub mod sweep;
pub mod synth;
pub mod train;
