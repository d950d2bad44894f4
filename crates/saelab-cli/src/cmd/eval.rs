//! `saelab eval`: reconstruction and sparsity metrics of an SAE on activation files, or,
//! with `--model` and `--corpus`, the SAE spliced into the model on held-out text:
//! CE loss score, ΔCE, KL and the reconstruction metrics on the same tokens.

use std::path::{Path, PathBuf};

use std::sync::atomic::Ordering;

use anyhow::{Context, Result};
use saelab_core::evaluate::evaluate_store;
use saelab_core::format::load_sae;
use saelab_core::metrics::{dictionary_recovery, ReconMetrics, RecoveryMetrics};
use saelab_core::store::ActivationStore;
use saelab_core::{Matrix, Sae};
use saelab_eval::contexts::corpus_contexts;
use saelab_eval::{evaluate_in_model_with, InModelMetrics, InModelOptions};
use saelab_lm::model::HookedModel;
use saelab_lm::text::Part;
use saelab_lm::tokenizer::Tokenizer;

use crate::progress;
use crate::STOP;

#[derive(clap::Args)]
pub struct Args {
    /// SAE directory (any supported format), or a `saelab train` run directory.
    #[arg(long)]
    sae: PathBuf,
    /// Activation files (.npy, .safetensors) or directories of them.
    #[arg(long, num_args = 1.., required_unless_present = "model", conflicts_with = "model")]
    acts: Vec<PathBuf>,
    /// Language model (.gguf file or Hugging Face directory): evaluate the SAE spliced
    /// into it on held-out text from --corpus.
    #[arg(long, requires = "corpus")]
    model: Option<PathBuf>,
    /// Text corpus (file, folder of *.txt, JSONL); its held-out documents (every 20th)
    /// are evaluated on.
    #[arg(long, requires = "model")]
    corpus: Option<PathBuf>,
    /// Hook point to splice at (default: the SAE's metadata.hook_name).
    #[arg(long)]
    hook: Option<String>,
    /// Tokens to evaluate on (rounded up to whole contexts).
    #[arg(long, default_value_t = 16_384)]
    tokens: usize,
    /// Tokens per context (default: the SAE's metadata.context_size if at most 1024,
    /// else 128).
    #[arg(long)]
    ctx_len: Option<usize>,
    /// Contexts per forward (default: about 1024 tokens per batch).
    #[arg(long)]
    batch_size: Option<usize>,
    /// Splice at BOS positions too (they stay excluded from every metric).
    #[arg(long)]
    splice_bos: bool,
    /// With --model: also write the JSON result to this file (e.g. RUN_DIR/eval.json,
    /// which `saelab report` reads).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Tensor name inside safetensors files.
    #[arg(long)]
    tensor: Option<String>,
    /// Evaluate only the first N rows.
    #[arg(long)]
    rows: Option<usize>,
    /// True dictionary `[F, d]` (synthetic data): also report mmcs and recovered@0.9.
    #[arg(long)]
    dictionary: Option<PathBuf>,
    /// Also report `fvu_refit`: the FVU with each token's active latents refit by least
    /// squares (same support and decoder), i.e. what is left once the encoder's values
    /// are replaced by the best ones.
    #[arg(long, conflicts_with = "model")]
    refit: bool,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

pub fn run(a: Args) -> Result<()> {
    if a.out.is_some() && a.model.is_none() {
        anyhow::bail!(
            "--out saves the in-model evaluation (the eval.json that `saelab report` reads) \
             and needs --model and --corpus; use --json to print the metrics"
        );
    }
    let sae_dir = saelab_eval::report::sae_dir(&a.sae);
    let sae = load_sae(&sae_dir)?;
    if let (Some(model), Some(corpus)) = (&a.model, &a.corpus) {
        return run_in_model(&a, &sae, &sae_dir, model, corpus);
    }
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
    if a.refit {
        sae.check_refit()
            .with_context(|| format!("{}: --refit", sae_dir.display()))?;
    }
    let rows = a.rows.unwrap_or(store.rows()).min(store.rows());
    let pb = progress::bar(rows as u64, "tokens");
    let (metrics, _) = evaluate_store(&sae, &store, 0..rows, a.refit, |done| {
        pb.set_position(done as u64)
    })?;
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

/// The in-model evaluation of `--model` / `--corpus`.
fn run_in_model(a: &Args, sae: &Sae, sae_dir: &Path, model: &Path, corpus: &Path) -> Result<()> {
    let hook = super::splice_hook(
        a.hook.as_deref(),
        sae.cfg.metadata.hook_name.as_deref(),
        sae_dir,
    )?;
    let ctx_len = match (a.ctx_len, sae.cfg.metadata.context_size) {
        (Some(l), _) => l,
        (None, Some(l)) if (2..=1024).contains(&l) => l,
        _ => DEFAULT_CTX_LEN,
    };
    let n_contexts = a.tokens.div_ceil(ctx_len.max(1)).max(1);
    let lm = load_model(model)?;
    let m = in_model_metrics(
        &lm,
        sae,
        &hook,
        corpus,
        ctx_len,
        n_contexts,
        a.batch_size,
        a.splice_bos,
    )?;
    let json = serde_json::to_string_pretty(&m)?;
    if let Some(p) = &a.out {
        saelab_core::io::write_file_atomic(p, format!("{json}\n").as_bytes())?;
    }
    if a.json {
        println!("{json}");
    } else {
        println!("{}", in_model_table(&m));
    }
    Ok(())
}

/// Default context length of in-model evaluations.
pub const DEFAULT_CTX_LEN: usize = 128;

/// Loads a model with a one-line error naming the file.
pub fn load_model(path: &Path) -> Result<HookedModel> {
    let pb = progress::spinner(&format!("loading {}", path.display()));
    let m = HookedModel::load(path)?;
    pb.finish_and_clear();
    Ok(m)
}

/// Evaluates `sae` in `lm` at `hook` on the first `n_contexts` held-out contexts of
/// `corpus`, with a progress bar; Ctrl-C stops it.
#[allow(clippy::too_many_arguments)]
pub fn in_model_metrics(
    lm: &HookedModel,
    sae: &Sae,
    hook: &str,
    corpus: &Path,
    ctx_len: usize,
    n_contexts: usize,
    batch_size: Option<usize>,
    splice_bos: bool,
) -> Result<InModelMetrics> {
    let tok = Tokenizer::from_path(lm.source())
        .with_context(|| format!("tokenizer of {}", lm.source().display()))?;
    let contexts = corpus_contexts(&tok, corpus, Part::HeldOut, ctx_len, n_contexts)?;
    let opts = InModelOptions {
        batch_size: batch_size.unwrap_or((1024 / ctx_len).max(1)),
        bos_id: tok.bos_id(),
        splice_bos,
        ..Default::default()
    };
    let pb = progress::bar(2 * contexts.len() as u64, "contexts");
    let m = evaluate_in_model_with(lm, sae, hook, &contexts, &opts, |p| {
        let base = if p.pass == "mean" { contexts.len() } else { 0 };
        pb.set_position((base + p.done) as u64);
        pb.set_message(p.pass);
        if STOP.load(Ordering::SeqCst) {
            return Err(saelab_core::Error::Interrupted);
        }
        Ok(())
    })?;
    pb.finish_and_clear();
    Ok(m)
}

/// The in-model metrics as an aligned table: CE block, then reconstruction.
pub fn in_model_table(m: &InModelMetrics) -> String {
    let rows: Vec<(&str, String)> = vec![
        ("hook", m.hook.clone()),
        ("contexts", format!("{} x {}", m.contexts, m.ctx_len)),
        ("scored_tokens", m.scored_tokens.to_string()),
        ("ce_clean", format!("{:.4}", m.ce_clean)),
        ("ce_sae", format!("{:.4}", m.ce_sae)),
        ("ce_zero", format!("{:.4}", m.ce_zero)),
        ("ce_mean", format!("{:.4}", m.ce_mean)),
        ("ce_loss_score", format!("{:.4}", m.ce_loss_score)),
        ("delta_ce", format!("{:.4}", m.delta_ce)),
        ("kl_sae", format!("{:.4}", m.kl_sae)),
        (
            "splice_cost_ratio",
            format!("{:.3}", m.timing.splice_cost_ratio),
        ),
    ];
    let w = rows.iter().map(|(k, _)| k.len()).max().unwrap_or(0).max(18);
    let mut s: Vec<String> = rows
        .iter()
        .map(|(k, v)| format!("{k:<w$}  {v:>12}"))
        .collect();
    s.push(table(&m.recon, None));
    s.join("\n")
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
    if let Some(f) = m.fvu_refit {
        rows.push(("fvu_refit", format!("{f:.4}")));
    }
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
