//! Extraction throughput of the hooked forward (`docs/bench.md`, "Activation extraction"):
//! SmolLM2-135M, f32 weights, batches of 8 × 128 tokens of real corpus text.
//!
//! Reports tokens/s (median over batches) for three workloads:
//! capture `blocks.15.hook_resid_post` (stops after block 15), capture the residual after
//! the last block, and all-position logits.
//!
//! With `--baseline`, the same batches also run through candle-transformers' f32 LLaMA
//! (`models::llama`, plain candle ops, all 30 blocks + last-position logits) on the model
//! exported to the Hugging Face layout, for a same-run ratio on a noisy machine.
//!
//! ```text
//! RAYON_NUM_THREADS=2 cargo run --release -p saelab-lm --example extract_speed -- \
//!     [--model data/models/SmolLM2-135M-Instruct.Q4_1.gguf] [--batches 6] [--baseline]
//!     [--only 0|1|2]   (run one workload: 0 = to block 15, 1 = to last block, 2 = logits)
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
    let mut baseline = false;
    let mut only: Option<usize> = None;
    let (batch, seq) = (8usize, 128usize);
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--model" => model_path = PathBuf::from(args.next().ok_or("--model needs a path")?),
            "--batches" => n_batches = args.next().ok_or("--batches needs a number")?.parse()?,
            "--baseline" => baseline = true,
            "--only" => only = Some(args.next().ok_or("--only needs 0, 1 or 2")?.parse()?),
            other => return Err(format!("unknown argument {other}").into()),
        }
    }
    let t0 = Instant::now();
    let model = HookedModel::from_gguf(&model_path)?;
    println!(
        "loaded {} in {:.2}s: {:?}",
        model_path.display(),
        t0.elapsed().as_secs_f64(),
        model.info()
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

    let cpu0 = cpu_seconds();
    let wall0 = Instant::now();
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
    for (i, (name, opts)) in workloads.iter().enumerate() {
        if only.is_some_and(|o| o != i) {
            continue;
        }
        let times = time_batches(&batches, |b| {
            std::hint::black_box(model.forward(b, opts)?);
            Ok(())
        })?;
        report(name, &times, batch * seq);
    }
    // The dense products alone (same shapes as the 16 blocks up to block 15), interleaved
    // with the forward, to show how much of the forward is matrix product time.
    if only.is_none() {
        use saelab_lm::model::kernels::linear;
        let c = model.hf_config();
        let dim = |k: &str| c[k].as_u64().map(|v| v as usize).ok_or(format!("no {k}"));
        let n = batch * seq;
        let (d, f) = (dim("hidden_size")?, dim("intermediate_size")?);
        let (hq, hkv, hd) = (
            dim("num_attention_heads")?,
            dim("num_key_value_heads")?,
            dim("head_dim")?,
        );
        let q = (hq + 2 * hkv) * hd;
        let shapes = [(d, q), (hq * hd, d), (d, 2 * f), (f, d)];
        let ws: Vec<Vec<f32>> = shapes.iter().map(|&(i, o)| vec![0.01; i * o]).collect();
        let x = vec![0.5f32; n * 2 * f];
        let mut y = vec![0f32; n * 2 * f];
        let opts = ForwardOptions::new().capture("blocks.15.hook_resid_post");
        let (mut tf, mut tg) = (Vec::new(), Vec::new());
        for b in &batches {
            let t = Instant::now();
            std::hint::black_box(model.forward(b, &opts)?);
            tf.push(t.elapsed().as_secs_f64());
            let t = Instant::now();
            for _ in 0..16 {
                for (&(i, o), w) in shapes.iter().zip(&ws) {
                    linear(&x[..n * i], n, w, i, o, &mut y[..n * o]);
                }
            }
            tg.push(t.elapsed().as_secs_f64());
        }
        let flops: f64 = 16.0
            * shapes
                .iter()
                .map(|&(i, o)| 2.0 * (n * i * o) as f64)
                .sum::<f64>();
        let mf = report(
            "to block 15 (again, interleaved with products)",
            &tf[1..],
            n,
        );
        let mut g = tg[1..].to_vec();
        g.sort_by(f64::total_cmp);
        let mg = g[g.len() / 2];
        println!(
            "linear-layer products alone for 16 blocks: median {mg:.3}s ({:.0} GFLOP/s); \
             they are {:.0}% of the forward's time",
            flops / mg / 1e9,
            100.0 * mg / mf
        );
    }
    println!(
        "process CPU time / wall time over the saelab workloads: {:.2} (2.00 = both cores busy)",
        (cpu_seconds() - cpu0) / wall0.elapsed().as_secs_f64()
    );

    if baseline {
        use candle_core::{DType, Device, Tensor};
        use candle_transformers::models::llama;
        let dir = tempfile::tempdir()?;
        model.save_hf_dir(dir.path())?;
        let cfg: llama::LlamaConfig =
            serde_json::from_str(&std::fs::read_to_string(dir.path().join("config.json"))?)?;
        let cfg = cfg.into_config(false);
        let files = vec![dir.path().join("model.safetensors")];
        // SAFETY: the file was just written and is not modified while mapped.
        let vb = unsafe {
            candle_nn::VarBuilder::from_mmaped_safetensors(&files, DType::F32, &Device::Cpu)?
        };
        let reference = llama::Llama::load(vb, &cfg)?;
        let ours_opts = ForwardOptions::new().logits(Logits::Last);
        let mut ours = Vec::new();
        let mut theirs = Vec::new();
        // Interleave the two so that both see the same machine load.
        for b in &batches {
            let t = Instant::now();
            std::hint::black_box(model.forward(b, &ours_opts)?);
            ours.push(t.elapsed().as_secs_f64());
            let ids = Tensor::new(b.to_vec(), &Device::Cpu)?;
            let mut cache = llama::Cache::new(false, DType::F32, &cfg, &Device::Cpu)?;
            let t = Instant::now();
            std::hint::black_box(reference.forward(&ids, 0, &mut cache)?);
            theirs.push(t.elapsed().as_secs_f64());
        }
        let (ours, theirs) = (&ours[1..], &theirs[1..]);
        let mo = report("saelab, all blocks + last logits", ours, batch * seq);
        let mt = report(
            "candle-transformers llama f32, same work",
            theirs,
            batch * seq,
        );
        println!(
            "speed-up over candle ops (same run, interleaved): {:.2}x",
            mt / mo
        );
    }
    Ok(())
}

/// Run `f` on every batch (the first is a warm-up); seconds per timed batch.
fn time_batches(
    batches: &[&[Vec<u32>]],
    mut f: impl FnMut(&[Vec<u32>]) -> Result<(), Box<dyn std::error::Error>>,
) -> Result<Vec<f64>, Box<dyn std::error::Error>> {
    f(batches[0])?;
    let mut times = Vec::new();
    for b in &batches[1..] {
        let t = Instant::now();
        f(b)?;
        times.push(t.elapsed().as_secs_f64());
    }
    Ok(times)
}

/// Print median and best tokens/s; returns the median seconds per batch.
fn report(name: &str, times: &[f64], tokens: usize) -> f64 {
    let mut t = times.to_vec();
    t.sort_by(f64::total_cmp);
    let med = t[t.len() / 2];
    println!(
        "{name}: median {med:.3}s per batch, {:.0} tokens/s (best {:.0})",
        tokens as f64 / med,
        tokens as f64 / t[0]
    );
    med
}

/// User + system CPU seconds of this process so far (Linux `/proc/self/stat`).
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let after = stat.rsplit_once(')').map(|x| x.1).unwrap_or("");
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // fields 14 and 15 of stat (utime, stime) are at 11 and 12 after the ')'
    (ticks(11) + ticks(12)) / 100.0
}
