//! `saelab eval`: reconstruction and sparsity metrics of an SAE on activation files.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use saelab_core::evaluate::evaluate_store;
use saelab_core::format::load_sae;
use saelab_core::metrics::{dictionary_recovery, ReconMetrics, RecoveryMetrics};
use saelab_core::store::ActivationStore;
use saelab_core::Matrix;

use crate::progress;

#[derive(clap::Args)]
pub struct Args {
    /// SAE directory (any supported format), or a `saelab train` run directory.
    #[arg(long)]
    sae: PathBuf,
    /// Activation files (.npy, .safetensors) or directories of them.
    #[arg(long, num_args = 1.., required = true)]
    acts: Vec<PathBuf>,
    /// Tensor name inside safetensors files.
    #[arg(long)]
    tensor: Option<String>,
    /// Evaluate only the first N rows.
    #[arg(long)]
    rows: Option<usize>,
    /// True dictionary `[F, d]` (synthetic data): also report mmcs and recovered@0.9.
    #[arg(long)]
    dictionary: Option<PathBuf>,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

pub fn run(a: Args) -> Result<()> {
    let sae_dir = resolve_sae_dir(&a.sae);
    let sae = load_sae(&sae_dir)?;
    let store = ActivationStore::open(&a.acts, a.tensor.as_deref())?;
    if store.d() != sae.cfg.d_in {
        anyhow::bail!(
            "{}: activations have d = {}, the SAE at {} expects d_in = {}",
            a.acts[0].display(),
            store.d(),
            sae_dir.display(),
            sae.cfg.d_in
        );
    }
    let rows = a.rows.unwrap_or(store.rows()).min(store.rows());
    let pb = progress::bar(rows as u64, "tokens");
    let (metrics, _) = evaluate_store(&sae, &store, 0..rows, |done| pb.set_position(done as u64))?;
    pb.finish_and_clear();
    let recovery = match &a.dictionary {
        Some(p) => {
            let dict = read_matrix(p)?;
            let w_dec = sae.param("W_dec")?;
            let w = Matrix::from_vec(w_dec.shape[0], w_dec.shape[1], w_dec.data.clone())?;
            if dict.cols != w.cols {
                anyhow::bail!(
                    "{}: dictionary has width {}, the SAE decoder {}",
                    p.display(),
                    dict.cols,
                    w.cols
                );
            }
            Some(dictionary_recovery(&dict, &w))
        }
        None => None,
    };
    if a.json {
        let mut v = serde_json::to_value(&metrics)?;
        if let Some(r) = &recovery {
            v["mmcs"] = serde_json::json!(r.mmcs);
            v["recovered@0.9"] = serde_json::json!(r.recovered_at_0_9);
        }
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        println!("{}", table(&metrics, recovery.as_ref()));
    }
    Ok(())
}

/// A run directory's `sae/` if present, else the path itself.
pub fn resolve_sae_dir(p: &Path) -> PathBuf {
    if p.join("sae").join("cfg.json").exists() {
        p.join("sae")
    } else {
        p.to_path_buf()
    }
}

fn read_matrix(p: &Path) -> Result<Matrix> {
    let store = ActivationStore::open(&[p.to_path_buf()], None)?;
    store
        .read_range(0, store.rows())
        .with_context(|| format!("{}", p.display()))
}

/// The metrics as an aligned two-column table.
pub fn table(m: &ReconMetrics, r: Option<&RecoveryMetrics>) -> String {
    let mut rows: Vec<(&str, String)> = vec![
        ("tokens", m.tokens.to_string()),
        ("fvu", format!("{:.4}", m.fvu)),
        ("explained_variance", format!("{:.4}", m.explained_variance)),
        ("nmse", format!("{:.4}", m.nmse)),
        ("mse", format!("{:.6}", m.mse)),
        ("cos_sim", format!("{:.4}", m.cos_sim)),
        ("l2_ratio", format!("{:.4}", m.l2_ratio)),
        ("rel_recon_bias", format!("{:.4}", m.rel_recon_bias)),
        ("l0", format!("{:.2}", m.l0)),
        ("dead_frac", format!("{:.4}", m.dead_frac)),
        ("dense_frac", format!("{:.4}", m.dense_frac)),
    ];
    if let Some(r) = r {
        rows.push(("mmcs", format!("{:.4}", r.mmcs)));
        rows.push(("recovered@0.9", format!("{:.4}", r.recovered_at_0_9)));
    }
    let w = rows.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    rows.iter()
        .map(|(k, v)| format!("{k:<w$}  {v:>12}"))
        .collect::<Vec<_>>()
        .join("\n")
}
