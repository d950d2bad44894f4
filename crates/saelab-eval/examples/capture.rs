//! Capture a hook's activations on corpus text into a `.npy` file (BOS positions
//! dropped), for training a quick SAE without the activation cache:
//!
//! ```text
//! cargo run --release -p saelab-eval --example capture -- \
//!     --model data/models/SmolLM2-135M-Instruct.Q4_1.gguf --corpus data/corpus/sotu \
//!     --hook blocks.15.hook_resid_post --tokens 100000 --out runs/acts_block15.npy
//! ```
//!
//! Contexts of `--ctx-len` (default 128) tokens come from the corpus's training
//! documents (the held-out ones, every 20th, are left for evaluation).

use std::path::PathBuf;
use std::time::Instant;

use saelab_core::store::write_npy_f32;
use saelab_core::Matrix;
use saelab_lm::model::{ForwardOptions, HookedModel};
use saelab_lm::text::{ContextStream, Corpus, HeldOut, LoadOptions, PackConfig, Part};
use saelab_lm::tokenizer::Tokenizer;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut model = PathBuf::from("data/models/SmolLM2-135M-Instruct.Q4_1.gguf");
    let mut corpus = PathBuf::from("data/corpus/sotu");
    let mut hook = "blocks.15.hook_resid_post".to_string();
    let (mut tokens, mut ctx_len, mut batch) = (100_000usize, 128usize, 8usize);
    let mut out = PathBuf::from("acts.npy");
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut val = || args.next().ok_or(format!("{a} needs a value"));
        match a.as_str() {
            "--model" => model = val()?.into(),
            "--corpus" => corpus = val()?.into(),
            "--hook" => hook = val()?,
            "--tokens" => tokens = val()?.parse()?,
            "--ctx-len" => ctx_len = val()?.parse()?,
            "--batch" => batch = val()?.parse()?,
            "--out" => out = val()?.into(),
            other => return Err(format!("unknown argument {other}").into()),
        }
    }
    let lm = HookedModel::load(&model)?;
    let tok = Tokenizer::from_path(&model)?;
    let bos = tok.bos_id().ok_or("the tokenizer names no BOS")?;
    let c = Corpus::load(&corpus, &LoadOptions::default())?;
    let docs = c.part(Part::Train, HeldOut::default());
    let mut stream = ContextStream::new(&tok, docs, PackConfig::new(ctx_len, bos))?;
    let d = lm.d_model();
    let mut rows: Vec<f32> = Vec::with_capacity(tokens * d);
    let t0 = Instant::now();
    let mut seen = 0usize;
    while rows.len() < tokens * d {
        let ctxs: Vec<Vec<u32>> = stream
            .by_ref()
            .take(batch)
            .map(|c| c.map(|c| c.tokens))
            .collect::<Result<_, _>>()?;
        if ctxs.is_empty() {
            eprintln!("corpus exhausted");
            break;
        }
        let o = lm.forward(&ctxs, &ForwardOptions::new().capture(hook.clone()))?;
        let acts = o.capture(&hook)?.as_slice();
        for (row, &t) in acts.chunks(d).zip(ctxs.iter().flatten()) {
            if t != bos && rows.len() < tokens * d {
                rows.extend_from_slice(row);
            }
        }
        seen += ctxs.len() * ctx_len;
        eprint!(
            "\r{} rows, {:.0} tokens/s",
            rows.len() / d,
            seen as f64 / t0.elapsed().as_secs_f64()
        );
    }
    eprintln!();
    let m = Matrix::from_vec(rows.len() / d, d, rows)?;
    write_npy_f32(&out, &m)?;
    println!("wrote {} rows of {hook} to {}", m.rows, out.display());
    Ok(())
}
