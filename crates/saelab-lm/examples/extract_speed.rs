//! Extraction throughput of the hooked forward (BENCH.md "Activation extraction"):
//! SmolLM2-135M, f32 weights, batches of 8 × 128 tokens of real corpus text.
//!
//! Reports tokens/s (median over batches) for three workloads:
//! capture `blocks.15.hook_resid_post` (stops after block 15), capture the residual after
//! the last block, and all-position logits.
//!
//! ```text
//! RAYON_NUM_THREADS=2 cargo run --release -p saelab-lm --example extract_speed -- \
//!     [--model data/models/SmolLM2-135M-Instruct.Q4_1.gguf] [--batches 6]
//! ```

#[path = "../tests/common/gguf_bpe.rs"]
mod gguf_bpe;

use std::path::PathBuf;
use std::time::Instant;

use saelab_lm::model::{ForwardOptions, HookedModel, Logits};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    let mut model_path = root.join("data/models/SmolLM2-135M-Instruct.Q4_1.gguf");
    let mut n_batches = 6usize;
    let (batch, seq) = (8usize, 128usize);
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--model" => model_path = PathBuf::from(args.next().ok_or("--model needs a path")?),
            "--batches" => n_batches = args.next().ok_or("--batches needs a number")?.parse()?,
            other => return Err(format!("unknown argument {other}").into()),
        }
    }
    let t0 = Instant::now();
    let model = HookedModel::from_gguf(&model_path)?;
    println!(
        "loaded {} in {:.2}s: {:?}",
        model_path.display(),
        t0.elapsed().as_secs_f64(),
        model.config()
    );

    // Real text: State of the Union addresses, BOS + 127 tokens per context.
    let tk = gguf_bpe::gguf_tokenizer(&model_path);
    let bos = model.bos_token_id().unwrap_or(0);
    let mut contexts: Vec<Vec<u32>> = Vec::new();
    let mut files: Vec<PathBuf> = std::fs::read_dir(root.join("data/corpus/sotu"))?
        .map(|e| e.map(|e| e.path()))
        .collect::<Result<_, _>>()?;
    files.sort();
    'outer: for f in files {
        let ids = gguf_bpe::encode(&tk, &std::fs::read_to_string(f)?);
        for chunk in ids.chunks_exact(seq - 1) {
            let mut c = vec![bos];
            c.extend_from_slice(chunk);
            contexts.push(c);
            if contexts.len() == batch * (n_batches + 1) {
                break 'outer;
            }
        }
    }
    let batches: Vec<&[Vec<u32>]> = contexts.chunks_exact(batch).collect();
    println!(
        "{} batches of {batch} x {seq} tokens, rayon threads {}",
        batches.len() - 1,
        rayon::current_num_threads()
    );

    let last = format!("blocks.{}.hook_resid_post", model.n_layers() - 1);
    let workloads: Vec<(String, ForwardOptions)> = vec![
        (
            "to block 15 (capture blocks.15.hook_resid_post)".into(),
            ForwardOptions::new().capture("blocks.15.hook_resid_post"),
        ),
        (
            format!("to last block (capture {last})"),
            ForwardOptions::new().capture(last.clone()),
        ),
        (
            "all-position logits".into(),
            ForwardOptions::new().logits(Logits::All),
        ),
    ];
    for (name, opts) in &workloads {
        // first batch is warm-up
        model.forward(batches[0], opts)?;
        let mut times = Vec::new();
        for b in &batches[1..] {
            let t = Instant::now();
            let out = model.forward(b, opts)?;
            times.push(t.elapsed().as_secs_f64());
            std::hint::black_box(out);
        }
        times.sort_by(f64::total_cmp);
        let med = times[times.len() / 2];
        println!(
            "{name}: median {:.3}s per batch, {:.0} tokens/s (best {:.0})",
            med,
            (batch * seq) as f64 / med,
            (batch * seq) as f64 / times[0]
        );
    }
    Ok(())
}
