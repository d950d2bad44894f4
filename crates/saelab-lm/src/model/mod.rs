//! Hooked LLaMA-family transformer forward on the CPU, in f32.
//!
//! [`HookedModel`] loads SmolLM2 (or any `llama` GGUF) with every weight dequantised to
//! f32, or a Hugging Face LLaMA checkpoint (`config.json` + safetensors), and runs a
//! batched causal forward (RMSNorm, grouped-query attention with RoPE, SwiGLU MLP) with
//! TransformerLens hook points:
//!
//! | hook | value |
//! |---|---|
//! | `blocks.{L}.hook_resid_pre` | residual stream entering block L |
//! | `blocks.{L}.hook_attn_out` | attention output of block L |
//! | `blocks.{L}.hook_resid_mid` | `resid_pre + attn_out` |
//! | `blocks.{L}.hook_mlp_out` | MLP output of block L |
//! | `blocks.{L}.hook_resid_post` | `resid_mid + mlp_out` = `resid_pre` of block L+1 |
//!
//! A forward ([`HookedModel::forward`]) captures any set of hooks, patches hooks with
//! functions of their activation, and stops after the last block it needs unless
//! logits or the loss are asked for.
//!
//! ```no_run
//! use saelab_lm::model::{ForwardOptions, HookedModel, Logits};
//! let model = HookedModel::load("data/models/SmolLM2-135M-Instruct.Q4_1.gguf")?;
//! let tokens = vec![vec![1u32, 504, 3458, 282], vec![1, 504, 1745, 28]];
//! let out = model.forward(&tokens, &ForwardOptions::new().capture("blocks.15.hook_resid_post"))?;
//! let acts = out.capture("blocks.15.hook_resid_post")?; // [2, 4, 576]
//! # Ok::<(), saelab_core::Error>(())
//! ```

mod config;
mod hooks;
pub mod kernels;
mod weights;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use rayon::prelude::*;
use saelab_core::{Error, Result};

pub use config::LlamaConfig;
pub use hooks::{
    valid_hooks_message, ForwardOptions, ForwardOutput, HookKind, HookPoint, Logits, PatchFn,
};
pub use weights::{hf_rows_to_interleaved, interleaved_rows_to_hf};

use kernels::{AttnShape, RopeTable};
use weights::Weights;

/// Rows of logits computed at a time when only the loss is asked for.
const LOSS_CHUNK_ROWS: usize = 256;

/// A candle error as a saelab error (for use inside patch functions). Keeps the first
/// line of candle's message (candle appends a backtrace when `RUST_BACKTRACE` is set).
pub fn candle_err(e: candle_core::Error) -> Error {
    Error::backend(candle_msg(&e))
}

/// First line of a candle error message.
pub(crate) fn candle_msg(e: &candle_core::Error) -> String {
    let s = e.to_string();
    s.lines().next().unwrap_or("").to_string()
}

/// The hooks of one forward, resolved: what to capture, what to patch (in order), and
/// how many blocks to run.
struct Plan<'o, 'a> {
    captures: BTreeSet<HookPoint>,
    patches: BTreeMap<HookPoint, Vec<&'o PatchFn<'a>>>,
    n_blocks: usize,
}

/// A LLaMA-family decoder with f32 weights and hook points.
pub struct HookedModel {
    config: LlamaConfig,
    weights: Weights,
    rope: RopeTable,
    source: PathBuf,
}

impl std::fmt::Debug for HookedModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HookedModel")
            .field("source", &self.source)
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl HookedModel {
    /// Load a model: a `.gguf` file, or a Hugging Face checkpoint directory.
    pub fn load(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        if path.is_dir() {
            Self::from_hf_dir(path)
        } else {
            Self::from_gguf(path)
        }
    }

    /// Load a GGUF file of architecture `llama`, dequantising every weight to f32.
    pub fn from_gguf(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let (config, weights) = weights::load_gguf(path)?;
        Ok(Self::assemble(config, weights, path))
    }

    /// Load a Hugging Face LLaMA checkpoint directory: `config.json` and the
    /// `*.safetensors` shards (f32, f16 or bf16), standard LLaMA tensor names.
    pub fn from_hf_dir(dir: impl AsRef<Path>) -> Result<Self> {
        let dir = dir.as_ref();
        let (config, weights) = weights::load_hf(dir)?;
        Ok(Self::assemble(config, weights, dir))
    }

    fn assemble(config: LlamaConfig, weights: Weights, source: &Path) -> Self {
        let rope = RopeTable::new(config.head_dim, config.rope_base, config.context_length);
        HookedModel {
            config,
            weights,
            rope,
            source: source.to_path_buf(),
        }
    }

    /// Write this model as a Hugging Face checkpoint (`config.json` + one f32
    /// `model.safetensors`) into `dir`, with query/key rows in the HF order.
    pub fn save_hf_dir(&self, dir: impl AsRef<Path>) -> Result<()> {
        weights::save_hf(&self.config, &self.weights, dir.as_ref())
    }

    /// The hyperparameters.
    pub fn config(&self) -> &LlamaConfig {
        &self.config
    }

    /// The file or directory the model was loaded from.
    pub fn source(&self) -> &Path {
        &self.source
    }

    /// Width of the residual stream.
    pub fn d_model(&self) -> usize {
        self.config.d_model
    }

    /// Number of blocks.
    pub fn n_layers(&self) -> usize {
        self.config.n_layers
    }

    /// Vocabulary size.
    pub fn vocab_size(&self) -> usize {
        self.config.vocab_size
    }

    /// Longest sequence the forward accepts.
    pub fn context_length(&self) -> usize {
        self.config.context_length
    }

    /// Beginning-of-sequence token id, when the checkpoint names one.
    pub fn bos_token_id(&self) -> Option<u32> {
        self.config.bos_token_id
    }

    /// End-of-sequence token id, when the checkpoint names one.
    pub fn eos_token_id(&self) -> Option<u32> {
        self.config.eos_token_id
    }

    /// Every valid hook name, layer by layer.
    pub fn hook_names(&self) -> Vec<String> {
        (0..self.config.n_layers)
            .flat_map(|layer| {
                HookKind::ALL
                    .into_iter()
                    .map(move |kind| HookPoint { layer, kind }.name())
            })
            .collect()
    }

    /// Parse and check a hook name against this model.
    pub fn hook(&self, name: &str) -> Result<HookPoint> {
        HookPoint::parse(name, self.config.n_layers)
    }

    /// The token-embedding matrix `[V, d_model]`.
    pub fn embedding(&self) -> Result<Tensor> {
        self.tensor(
            &self.weights.embed,
            (self.config.vocab_size, self.config.d_model),
        )
    }

    /// The unembedding matrix `[V, d_model]` (logits = `norm(x) · Wᵀ`); equal to the
    /// embedding when the checkpoint ties them.
    pub fn unembedding(&self) -> Result<Tensor> {
        self.tensor(
            self.weights.unembed(),
            (self.config.vocab_size, self.config.d_model),
        )
    }

    /// The final RMSNorm gain `[d_model]`.
    pub fn final_norm_weight(&self) -> Result<Tensor> {
        self.tensor(&self.weights.final_norm, self.config.d_model)
    }

    fn tensor<S: Into<candle_core::Shape>>(&self, data: &[f32], shape: S) -> Result<Tensor> {
        Tensor::from_slice(data, shape, &Device::Cpu).map_err(candle_err)
    }

    /// Run the model on a batch of token sequences of equal length `T`.
    ///
    /// Returns the captures (`[B, T, d_model]` each), logits (`[B, V]` or `[B, T, V]`) and
    /// loss (`[B, T−1]`) that `opts` asks for. Errors on ragged or empty input, token ids
    /// `≥ vocab_size`, `T` above the context length and unknown hook names.
    pub fn forward<S: AsRef<[u32]>>(
        &self,
        tokens: &[S],
        opts: &ForwardOptions<'_>,
    ) -> Result<ForwardOutput> {
        let batch = tokens.len();
        let seq_len = tokens.first().map_or(0, |s| s.as_ref().len());
        let mut flat = Vec::with_capacity(batch * seq_len);
        for (b, s) in tokens.iter().enumerate() {
            let s = s.as_ref();
            if s.len() != seq_len {
                return Err(Error::Shape(format!(
                    "token sequences must have equal length: sequence 0 has {seq_len}, \
                     sequence {b} has {}",
                    s.len()
                )));
            }
            flat.extend_from_slice(s);
        }
        self.forward_flat(&flat, batch, seq_len, opts)
    }

    /// [`HookedModel::forward`] on a `[B, T]` tensor of token ids (any integer dtype).
    pub fn forward_tensor(
        &self,
        tokens: &Tensor,
        opts: &ForwardOptions<'_>,
    ) -> Result<ForwardOutput> {
        let (batch, seq_len) = tokens.dims2().map_err(|_| {
            Error::Shape(format!("token ids must be [B, T], got {:?}", tokens.dims()))
        })?;
        let flat: Vec<u32> = tokens
            .to_dtype(DType::U32)
            .and_then(|t| t.flatten_all())
            .and_then(|t| t.to_vec1::<u32>())
            .map_err(candle_err)?;
        self.forward_flat(&flat, batch, seq_len, opts)
    }

    /// Resolve the hook names of `opts` against this model.
    fn plan<'o, 'a>(&self, opts: &'o ForwardOptions<'a>) -> Result<Plan<'o, 'a>> {
        let mut plan = Plan {
            captures: BTreeSet::new(),
            patches: BTreeMap::new(),
            n_blocks: 0,
        };
        for name in &opts.captures {
            let hp = self.hook(name)?;
            plan.n_blocks = plan.n_blocks.max(hp.layer + 1);
            plan.captures.insert(hp);
        }
        for (name, f) in &opts.patches {
            let hp = self.hook(name)?;
            plan.n_blocks = plan.n_blocks.max(hp.layer + 1);
            plan.patches.entry(hp).or_default().push(f);
        }
        if opts.needs_head() {
            plan.n_blocks = self.config.n_layers;
        }
        Ok(plan)
    }

    fn forward_flat(
        &self,
        tokens: &[u32],
        batch: usize,
        seq_len: usize,
        opts: &ForwardOptions<'_>,
    ) -> Result<ForwardOutput> {
        let cfg = &self.config;
        if batch == 0 || seq_len == 0 {
            return Err(Error::Shape(format!(
                "empty token batch ({batch} sequences of {seq_len} tokens)"
            )));
        }
        if seq_len > self.rope.max_len() {
            return Err(Error::Shape(format!(
                "sequences of {seq_len} tokens exceed the model's context length {}",
                self.rope.max_len()
            )));
        }
        if let Some(i) = tokens.iter().position(|&t| t as usize >= cfg.vocab_size) {
            return Err(Error::Shape(format!(
                "token id {} at sequence {}, position {} is not below the vocabulary size {}",
                tokens[i],
                i / seq_len,
                i % seq_len,
                cfg.vocab_size
            )));
        }
        if opts.loss && seq_len < 2 {
            return Err(Error::Shape(
                "the next-token loss needs sequences of at least 2 tokens".into(),
            ));
        }
        let Plan {
            captures,
            patches,
            n_blocks,
        } = self.plan(opts)?;

        let (d, n) = (cfg.d_model, batch * seq_len);
        let (hq, hkv, hd, f) = (cfg.n_heads, cfg.n_kv_heads, cfg.head_dim, cfg.d_ffn);
        let qkv_dim = cfg.qkv_dim();
        let mut out = ForwardOutput {
            blocks_run: n_blocks,
            ..Default::default()
        };

        // Residual stream [N, d].
        let mut x = vec![0f32; n * d];
        x.par_chunks_mut(d)
            .zip(tokens.par_iter())
            .for_each(|(row, &t)| {
                let t = t as usize;
                row.copy_from_slice(&self.weights.embed[t * d..(t + 1) * d]);
            });
        if n_blocks == 0 {
            return Ok(out);
        }
        let mut h = vec![0f32; n * d];
        let mut qkv = vec![0f32; n * qkv_dim];
        let mut attn = vec![0f32; n * hq * hd];
        let mut branch = vec![0f32; n * d];
        let mut gu = vec![0f32; n * 2 * f];
        let mut act = vec![0f32; n * f];
        let shape3 = (batch, seq_len, d);

        // Apply patches, then record a capture, at one hook point.
        let visit = |hp: HookPoint, buf: &mut Vec<f32>, out: &mut ForwardOutput| -> Result<()> {
            if let Some(fs) = patches.get(&hp) {
                for pf in fs {
                    let t = Tensor::from_slice(buf.as_slice(), shape3, &Device::Cpu)
                        .map_err(candle_err)?;
                    let new = pf(&t)?;
                    if new.dims() != [batch, seq_len, d] {
                        return Err(Error::Shape(format!(
                            "patch at {hp} returned shape {:?}, expected [{batch}, {seq_len}, {d}]",
                            new.dims()
                        )));
                    }
                    let v = new
                        .to_dtype(DType::F32)
                        .and_then(|t| t.flatten_all())
                        .and_then(|t| t.to_vec1::<f32>())
                        .map_err(|e| {
                            Error::backend(format!("patch at {hp}: {}", candle_msg(&e)))
                        })?;
                    *buf = v;
                }
            }
            if captures.contains(&hp) {
                let t =
                    Tensor::from_slice(buf.as_slice(), shape3, &Device::Cpu).map_err(candle_err)?;
                out.captures.insert(hp.name(), t);
            }
            Ok(())
        };
        let wants = |hp: &HookPoint| captures.contains(hp) || patches.contains_key(hp);

        for (layer, bw) in self.weights.blocks.iter().enumerate().take(n_blocks) {
            let hook = |kind| HookPoint { layer, kind };
            if wants(&hook(HookKind::ResidPre)) {
                visit(hook(HookKind::ResidPre), &mut x, &mut out)?;
            }
            // Attention.
            kernels::rms_norm(&x, &bw.attn_norm, cfg.rms_eps, &mut h);
            kernels::linear(&h, n, &bw.wqkv, d, qkv_dim, &mut qkv);
            self.rope
                .apply_interleaved(&mut qkv, qkv_dim, hq + hkv, seq_len);
            kernels::causal_attention(
                &qkv,
                AttnShape {
                    batch,
                    seq_len,
                    n_heads: hq,
                    n_kv_heads: hkv,
                    head_dim: hd,
                },
                &mut attn,
            );
            kernels::linear(&attn, n, &bw.wo, hq * hd, d, &mut branch);
            if wants(&hook(HookKind::AttnOut)) {
                visit(hook(HookKind::AttnOut), &mut branch, &mut out)?;
            }
            kernels::add_assign(&mut x, &branch);
            if wants(&hook(HookKind::ResidMid)) {
                visit(hook(HookKind::ResidMid), &mut x, &mut out)?;
            }
            // MLP.
            kernels::rms_norm(&x, &bw.mlp_norm, cfg.rms_eps, &mut h);
            kernels::linear(&h, n, &bw.w_gate_up, d, 2 * f, &mut gu);
            kernels::swiglu(&gu, f, &mut act);
            kernels::linear(&act, n, &bw.w_down, f, d, &mut branch);
            if wants(&hook(HookKind::MlpOut)) {
                visit(hook(HookKind::MlpOut), &mut branch, &mut out)?;
            }
            kernels::add_assign(&mut x, &branch);
            if wants(&hook(HookKind::ResidPost)) {
                visit(hook(HookKind::ResidPost), &mut x, &mut out)?;
            }
        }
        drop((qkv, attn, gu, act, branch));

        if opts.needs_head() {
            self.head(&x, &mut h, tokens, batch, seq_len, opts, &mut out)?;
        }
        Ok(out)
    }

    /// Final norm and unembedding: the logits and the loss asked for.
    #[allow(clippy::too_many_arguments)]
    fn head(
        &self,
        x: &[f32],
        h: &mut [f32],
        tokens: &[u32],
        batch: usize,
        seq_len: usize,
        opts: &ForwardOptions<'_>,
        out: &mut ForwardOutput,
    ) -> Result<()> {
        let (d, v) = (self.config.d_model, self.config.vocab_size);
        let n = batch * seq_len;
        let w_u = self.weights.unembed();
        kernels::rms_norm(x, &self.weights.final_norm, self.config.rms_eps, h);
        let all_logits = opts.logits == Logits::All;
        let mut logits_all = if all_logits {
            vec![0f32; n * v]
        } else {
            Vec::new()
        };
        if all_logits {
            kernels::linear(h, n, w_u, d, v, &mut logits_all);
        }
        if opts.logits == Logits::Last {
            let mut last = vec![0f32; batch * d];
            for b in 0..batch {
                let r = b * seq_len + seq_len - 1;
                last[b * d..(b + 1) * d].copy_from_slice(&h[r * d..(r + 1) * d]);
            }
            let mut logits = vec![0f32; batch * v];
            kernels::linear(&last, batch, w_u, d, v, &mut logits);
            out.logits =
                Some(Tensor::from_vec(logits, (batch, v), &Device::Cpu).map_err(candle_err)?);
        }
        if opts.loss {
            let t1 = seq_len - 1;
            let mut loss = vec![0f32; batch * t1];
            let score = |logit_rows: &[f32], first_row: usize, loss: &mut [f32]| {
                let per: Vec<(usize, f32)> = logit_rows
                    .par_chunks(v)
                    .enumerate()
                    .filter_map(|(j, row)| {
                        let r = first_row + j;
                        let (b, t) = (r / seq_len, r % seq_len);
                        (t + 1 < seq_len).then(|| {
                            let target = tokens[r + 1] as usize;
                            (b * t1 + t, kernels::cross_entropy_row(row, target) as f32)
                        })
                    })
                    .collect();
                for (i, l) in per {
                    loss[i] = l;
                }
            };
            if all_logits {
                score(&logits_all, 0, &mut loss);
            } else {
                let mut chunk = vec![0f32; LOSS_CHUNK_ROWS.min(n) * v];
                let mut r0 = 0;
                while r0 < n {
                    let rows = LOSS_CHUNK_ROWS.min(n - r0);
                    let c = &mut chunk[..rows * v];
                    kernels::linear(&h[r0 * d..(r0 + rows) * d], rows, w_u, d, v, c);
                    score(c, r0, &mut loss);
                    r0 += rows;
                }
            }
            out.loss = Some(Tensor::from_vec(loss, (batch, t1), &Device::Cpu).map_err(candle_err)?);
        }
        if all_logits {
            out.logits = Some(
                Tensor::from_vec(logits_all, (batch, seq_len, v), &Device::Cpu)
                    .map_err(candle_err)?,
            );
        }
        Ok(())
    }
}
