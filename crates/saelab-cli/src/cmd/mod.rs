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

/// The corpus flags of the commands that read text through the model (`extract`,
/// `features`).
#[derive(clap::Args)]
pub struct CorpusArgs {
    /// Corpus: a folder of .txt files, a text file, or a .jsonl file.
    #[arg(long)]
    pub corpus: std::path::PathBuf,
    /// JSONL field holding the text.
    #[arg(long, default_value = "text")]
    pub jsonl_field: String,
    /// Which documents: train, heldout (every 20th document) or all.
    #[arg(long, default_value = "train")]
    pub part: String,
}
