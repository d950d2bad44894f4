//! `saelab eval`: reconstruction and sparsity metrics of an SAE on activation files, or,
//! with `--model` and `--corpus`, the SAE spliced into the model on held-out text:
//! CE loss score, ΔCE, KL and the reconstruction metrics on the same tokens
//! (`saelab_jobs::eval`).

use std::path::PathBuf;

use anyhow::Result;
use saelab_core::metrics::{ReconMetrics, RecoveryMetrics};
use saelab_eval::InModelMetrics;
use saelab_jobs::eval::{
    self, FileEval, FileEvalRequest, InModelRequest, DEFAULT_CTX_LEN, DEFAULT_INMODEL_TOKENS,
};

use crate::progress::Reporter;
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
    /// Hook point to splice at [default: the SAE's metadata.hook_name].
    #[arg(long)]
    hook: Option<String>,
    /// Tokens to evaluate on (rounded up to whole contexts).
    #[arg(long, default_value_t = DEFAULT_INMODEL_TOKENS)]
    tokens: usize,
    #[arg(long, help = format!("Tokens per context [default: the SAE's metadata.context_size if at most 1024, else {DEFAULT_CTX_LEN}]"))]
    ctx_len: Option<usize>,
    /// Contexts per forward [default: about 1024 tokens per batch].
    #[arg(long)]
    batch_size: Option<usize>,
    /// Splice at BOS positions too (they stay excluded from every metric).
    #[arg(long)]
    splice_bos: bool,
    /// With --model: also write the JSON result to this file (e.g. RUN_DIR/eval.json,
    /// which `saelab report` reads).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Tensor name inside safetensors files [default: `activations` or a file's only 2-D tensor].
    #[arg(long)]
    tensor: Option<String>,
    /// Evaluate only the first N rows [default: all].
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
    let mut rep = Reporter::new();
    if let (Some(model), Some(corpus)) = (&a.model, &a.corpus) {
        let req = InModelRequest {
            sae: a.sae.clone(),
            model: model.clone(),
            corpus: corpus.clone(),
            hook: a.hook.clone(),
            tokens: a.tokens,
            ctx_len: a.ctx_len,
            batch_size: a.batch_size,
            splice_bos: a.splice_bos,
            out: a.out.clone(),
        };
        let m = eval::evaluate_in_model(&req, &STOP, &mut |e| rep.handle(e))?;
        if a.json {
            println!("{}", serde_json::to_string_pretty(&m)?);
        } else {
            println!("{}", in_model_table(&m));
        }
        return Ok(());
    }
    let req = FileEvalRequest {
        sae: a.sae.clone(),
        acts: a.acts.clone(),
        tensor: a.tensor.clone(),
        rows: a.rows,
        refit: a.refit,
        dictionary: a.dictionary.clone(),
    };
    let e = eval::evaluate_files(&req, &mut |e| rep.handle(e))?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&file_json(&e))?);
    } else {
        println!("{}", table(&e.metrics, e.recovery.as_ref()));
    }
    Ok(())
}

/// The JSON of `saelab eval --json` on files: the metrics, plus dictionary recovery.
fn file_json(e: &FileEval) -> serde_json::Value {
    let mut v = serde_json::to_value(&e.metrics).expect("serialisable");
    if let Some(r) = &e.recovery {
        v["mmcs"] = serde_json::json!(r.mmcs);
        v["recovered@0.9"] = serde_json::json!(r.recovered_at_0_9);
    }
    v
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
