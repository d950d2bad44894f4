//! One module per `saelab` subcommand: its flags, the job it starts
//! (`saelab_jobs`), and what it prints.

pub mod autointerp;
pub mod bench;
pub mod bench_generate;
pub mod bench_model;
pub mod convert;
pub mod encode;
pub mod eval;
pub mod export_html;
pub mod export_neuronpedia;
pub mod extract;
pub mod features;
pub mod generate;
pub mod inspect;
pub mod report;
pub mod run;
pub mod serve;
pub mod steer;
pub mod steer_eval;
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

/// The generation flags of `generate` and `steer`.
#[derive(clap::Args)]
pub struct GenArgs {
    /// Put the prompt in the model's chat template as a user message (instruct models).
    #[arg(long)]
    pub chat: bool,
    /// Tokens to generate at most.
    #[arg(long, default_value_t = 64)]
    pub max_new_tokens: usize,
    /// Softmax temperature; 0 is greedy (default: 0 for generate, 0.5 for steer).
    #[arg(long)]
    pub temperature: Option<f32>,
    /// Nucleus sampling mass, in (0, 1].
    #[arg(long, default_value_t = 1.0)]
    pub top_p: f32,
    /// Seed of the sampler (default: 0 for generate, 16 for steer, as Neuronpedia).
    #[arg(long)]
    pub seed: Option<u64>,
}

impl GenArgs {
    /// The options, with this command's default temperature and seed.
    pub fn options(
        &self,
        temperature: f32,
        seed: u64,
    ) -> anyhow::Result<saelab_lm::generate::GenerateOptions> {
        let t = self.temperature.unwrap_or(temperature);
        // The sampler's own checks, before any model is run.
        saelab_lm::generate::Sampler::new(t, self.top_p)?;
        Ok(saelab_lm::generate::GenerateOptions {
            max_new_tokens: self.max_new_tokens,
            temperature: t,
            top_p: self.top_p,
            seed: self.seed.unwrap_or(seed),
            stop_tokens: None,
        })
    }
}
