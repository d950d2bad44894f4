//! `saelab synth`: synthetic activations with a known dictionary (ground truth for
//! SAE training). Writes `train.npy`, `heldout.npy` (independent samples),
//! `dictionary.npy` `[F, d]` and `synth.json` (the parameters).

use std::path::PathBuf;

use anyhow::Result;
use saelab_core::io::write_file_atomic;
use saelab_core::store::write_npy_f32;
use saelab_core::synth::{generate, SynthConfig};

#[derive(clap::Args)]
pub struct Args {
    /// Output directory.
    #[arg(long)]
    out: PathBuf,
    /// Training rows.
    #[arg(long, default_value_t = 1_000_000)]
    rows: usize,
    /// Held-out rows (generated with an independent seed, same dictionary).
    #[arg(long, default_value_t = 65_536)]
    heldout_rows: usize,
    /// Activation width d.
    #[arg(long, default_value_t = 128)]
    d: usize,
    /// Number of true features.
    #[arg(long, default_value_t = 2048)]
    features: usize,
    /// Mean active features per sample.
    #[arg(long, default_value_t = 10.0)]
    avg_active: f64,
    /// Power-law exponent of feature frequencies.
    #[arg(long, default_value_t = 0.5)]
    freq_exponent: f64,
    /// Gaussian noise standard deviation per dimension.
    #[arg(long, default_value_t = 0.01)]
    noise: f32,
    /// Seed.
    #[arg(long, default_value_t = 0)]
    seed: u64,
}

pub fn run(a: Args) -> Result<()> {
    let cfg = SynthConfig {
        d: a.d,
        n_features: a.features,
        avg_active: a.avg_active,
        freq_exponent: a.freq_exponent,
        noise_std: a.noise,
        seed: a.seed,
        ..SynthConfig::default()
    };
    saelab_core::io::check_writable(&a.out)?;
    let train = generate(&cfg, a.rows)?;
    let heldout = saelab_core::synth::generate_samples(&cfg, &train.dictionary, a.heldout_rows, a.seed ^ 0x5EED)?;
    std::fs::create_dir_all(&a.out)?;
    write_npy_f32(&a.out.join("train.npy"), &train.x)?;
    write_npy_f32(&a.out.join("heldout.npy"), &heldout)?;
    write_npy_f32(&a.out.join("dictionary.npy"), &train.dictionary)?;
    write_file_atomic(&a.out.join("synth.json"), &serde_json::to_vec_pretty(&cfg)?)?;
    println!(
        "wrote {} train and {} held-out rows (d = {}, {} features, {:.1} active on average) to {}",
        a.rows,
        a.heldout_rows,
        a.d,
        a.features,
        a.avg_active,
        a.out.display()
    );
    Ok(())
}
