//! One module per `saelab` subcommand.

pub mod bench;
pub mod bench_model;
pub mod convert;
pub mod eval;
pub mod extract;
pub mod inspect;
pub mod report;
pub mod sweep;
pub mod synth;
pub mod train;
