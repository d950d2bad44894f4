//! `saelab export-neuronpedia`: a features folder for Neuronpedia
//! (`saelab_neuronpedia`): SAEDashboard's `batch-{n}.json` files in `--out`, and
//! Neuronpedia's bulk-import layout in `--out/{model id}/{source id}/`
//! (`docs/neuronpedia.md`).

use std::path::PathBuf;

use anyhow::{Context, Result};
use saelab_core::format::load_sae;
use saelab_eval::report::sae_dir;
use saelab_neuronpedia::{export, ExportRequest, DEFAULT_CREATOR_ID};

#[derive(clap::Args)]
pub struct Args {
    /// The features folder (`saelab features --out`).
    #[arg(long)]
    features: PathBuf,
    /// The SAE the folder was made from (SAE directory or `saelab train` run); a folder
    /// of another SAE is refused. Its decoder gives the neuron alignment table.
    #[arg(long)]
    sae: PathBuf,
    /// The output folder (created; an earlier export there is replaced).
    #[arg(long)]
    out: PathBuf,
    /// Neuronpedia's model id, e.g. smollm2-135m-instruct.
    #[arg(long)]
    model_id: String,
    /// Source set name [default: saelab-{hook kind}-{width}, e.g. saelab-res-9k].
    #[arg(long)]
    source_set: Option<String>,
    /// Layer [default: the N of the hook's blocks.N.].
    #[arg(long)]
    layer: Option<u32>,
    /// Creator name of the release and source set.
    #[arg(long, default_value = "saelab")]
    creator: String,
    /// Neuronpedia user id written as creatorId (SAEDashboard's fallback by default).
    #[arg(long, default_value = DEFAULT_CREATOR_ID)]
    creator_id: String,
    /// Release name [default: the source set name].
    #[arg(long)]
    release: Option<String>,
    /// Model whose tokenizer gives the token strings [default: the model in the
    /// folder's features.json].
    #[arg(long)]
    model: Option<PathBuf>,
    /// Latents per batch file (SAEDashboard's n_features_at_a_time).
    #[arg(long, default_value_t = 128)]
    batch_size: usize,
}

pub fn run(a: Args) -> Result<()> {
    let dir = sae_dir(&a.sae);
    let sae = load_sae(&dir).with_context(|| format!("loading the SAE {}", a.sae.display()))?;
    let mut req = ExportRequest::new(a.features, a.out.clone(), a.model_id);
    req.source_set = a.source_set;
    req.layer = a.layer;
    req.creator_name = a.creator;
    req.creator_id = a.creator_id;
    req.release = a.release;
    req.model = a.model;
    req.batch_size = a.batch_size;
    let s = export(&req, &sae)?;
    println!(
        "{}: {} latents in {} batches ({} example contexts, {} explanations), {} dead \
         latents skipped",
        a.out.display(),
        s.latents,
        s.batches,
        s.activations,
        s.explanations,
        s.skipped
    );
    if s.explanations_left_out > 0 {
        println!(
            "{} explanations left out (of a dead latent, or without text)",
            s.explanations_left_out
        );
    }
    println!("bulk-import folder: {}", s.bulk_dir.display());
    Ok(())
}
