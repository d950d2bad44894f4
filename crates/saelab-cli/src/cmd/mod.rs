//! One module per `saelab` subcommand: its flags, the job it starts
//! (`saelab_jobs`), and what it prints.

pub mod bench;
pub mod bench_model;
pub mod convert;
pub mod encode;
pub mod eval;
pub mod export_html;
pub mod export_neuronpedia;
pub mod extract;
pub mod features;
pub mod inspect;
pub mod report;
pub mod run;
pub mod serve;
pub mod sweep;
pub mod synth;
pub mod train;
