//! `saelab steer`: a prompt continued without and with interventions on SAE latents,
//! from the same seed (`saelab_jobs::steer`), optionally measured.
//!
//! One SAE and its latents on the command line (`--sae`, `--latent` repeated, one
//! `--mode` and `--strength` for all of them), or any number of SAEs and edits in a
//! TOML plan (`--plan`, see docs/steering.md).

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use saelab_jobs::steer::{
    EditSpec, InterventionSpec, PromptRequest, SteerOutput, SteerSae, Steerer,
};
use saelab_steer::{Mode, Positions, Strength};
use serde::Deserialize;

use super::GenArgs;

#[derive(clap::Args)]
pub struct Args {
    /// Model: a GGUF file, or a Hugging Face LLaMA directory.
    #[arg(long)]
    model: PathBuf,
    /// The prompt.
    #[arg(long)]
    prompt: String,
    /// SAE directory or `saelab train` run directory.
    #[arg(long, required_unless_present = "plan")]
    sae: Option<PathBuf>,
    /// Hook point (default: the SAE's hook from its cfg.json).
    #[arg(long)]
    hook: Option<String>,
    /// Features folder for the latents' maxima (default: the run's `features/`).
    #[arg(long)]
    features: Option<PathBuf>,
    /// Latent to edit (repeat for several).
    #[arg(long = "latent", required_unless_present = "plan")]
    latents: Vec<usize>,
    /// add, clamp, clamp-min, scale, ablate or neg-clamp.
    #[arg(long, default_value = "add")]
    mode: String,
    /// 4x (times the latent's largest activation in the features pass), raw:30 or 30;
    /// a plain factor for scale; none for ablate.
    #[arg(long)]
    strength: Option<String>,
    /// Positions to edit: all (prompt and generated), prompt, last (the prompt's last),
    /// or a list such as 1,4,7.
    #[arg(long, default_value = "all")]
    positions: String,
    /// A TOML plan of several SAEs and edits instead of --sae/--latent.
    #[arg(long, conflicts_with_all = ["sae", "latents"])]
    plan: Option<PathBuf>,
    #[command(flatten)]
    gen: GenArgs,
    /// Also measure both continuations for every edited latent (concept share, the
    /// latent re-encoded, perplexity under the unsteered model).
    #[arg(long)]
    measure: bool,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

/// `--plan`: `[[sae]]` tables (path, hook, features) and `[[intervention]]` tables
/// (sae index, positions, `[[intervention.edits]]` latent/mode/strength).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Plan {
    sae: Vec<PlanSae>,
    intervention: Vec<InterventionSpec>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PlanSae {
    path: PathBuf,
    hook: Option<String>,
    features: Option<PathBuf>,
}

pub fn run(a: Args) -> Result<()> {
    let steerer = Steerer::load(&a.model, &mut |_| {})?;
    let (saes, specs) = match &a.plan {
        Some(p) => {
            let text = std::fs::read_to_string(p).with_context(|| p.display().to_string())?;
            let plan: Plan = toml::from_str(&text)
                .map_err(|e| anyhow::anyhow!("{}: {}", p.display(), e.message()))?;
            let mut saes = Vec::new();
            for s in &plan.sae {
                saes.push(SteerSae::load(
                    &s.path,
                    s.hook.as_deref(),
                    s.features.as_deref(),
                    &steerer,
                )?);
            }
            (saes, plan.intervention)
        }
        None => {
            let sae = a.sae.as_ref().expect("clap requires --sae without --plan");
            if a.latents.is_empty() {
                bail!("give at least one --latent");
            }
            // Parsed here, not by clap, so that a bad value is a one-line error.
            let mode: Mode = a.mode.parse()?;
            let strength: Option<Strength> = a.strength.as_deref().map(str::parse).transpose()?;
            let positions: Positions = a.positions.parse()?;
            let s = SteerSae::load(sae, a.hook.as_deref(), a.features.as_deref(), &steerer)?;
            let edits = a
                .latents
                .iter()
                .map(|&latent| EditSpec {
                    latent,
                    mode,
                    strength,
                })
                .collect();
            let spec = InterventionSpec {
                sae: 0,
                positions,
                edits,
            };
            (vec![s], vec![spec])
        }
    };
    let req = PromptRequest {
        text: a.prompt.clone(),
        chat: a.gen.chat,
        gen: a.gen.options(0.5, 16)?,
    };
    let out = steerer.steer(&saes, &specs, &req, a.measure)?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        print_text(&out);
    }
    Ok(())
}

fn print_text(out: &SteerOutput) {
    for e in &out.edits {
        println!(
            "edit   SAE {} at {} ({} positions): latent {} {:?}",
            e.sae, e.hook, e.positions, e.latent, e.op
        );
    }
    println!(
        "\n--- unsteered ({})\n{}",
        out.unsteered.finish, out.unsteered.text
    );
    println!(
        "\n--- steered ({})\n{}",
        out.steered.finish, out.steered.text
    );
    if !out.effects.is_empty() {
        println!(
            "\n{:>6} {:>7}  {:>15} {:>15} {:>15}",
            "latent", "concept", "concept share", "mean activation", "perplexity"
        );
        for f in &out.effects {
            println!(
                "{:>6} {:>7}  {:>6.3} → {:<6.3} {:>6.2} → {:<6.2} {:>6.2} → {:<6.2}",
                f.latent,
                f.concept_tokens,
                f.unsteered.concept_share,
                f.steered.concept_share,
                f.unsteered.mean_activation,
                f.steered.mean_activation,
                f.unsteered.perplexity,
                f.steered.perplexity
            );
        }
    }
}
