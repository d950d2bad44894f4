//! Hooked transformer forwards on the CPU, in f32, behind one family-neutral model.
//!
//! [`HookedModel`] loads a checkpoint — a GGUF file with every weight dequantised to
//! f32, or a Hugging Face directory (`config.json` + safetensors) — of a family in the
//! registry (`FAMILIES`: LLaMA, including SmolLM2, Qwen2 and Gemma 3) and runs a
//! batched causal forward with TransformerLens hook points. Callers see a [`ModelInfo`] (dimensions,
//! special tokens, the hook points of the family); what a block computes stays in the
//! family's file.
//!
//! | hook | value |
//! |---|---|
//! | `blocks.{L}.hook_resid_pre` | residual stream entering block L |
//! | `blocks.{L}.hook_attn_out` | attention output of block L |
//! | `blocks.{L}.hook_resid_mid` | `resid_pre + attn_out` |
//! | `blocks.{L}.ln2.hook_normalized` | the MLP input after the second norm, before its gain |
//! | `blocks.{L}.hook_mlp_out` | MLP output of block L |
//! | `blocks.{L}.hook_resid_post` | `resid_mid + mlp_out` = `resid_pre` of block L+1 |
//!
//! A forward ([`HookedModel::forward`]) captures any set of hooks, patches hooks in
//! place, and stops after the last block it needs unless logits or the loss are asked
//! for. Everything at the boundary is saelab's own: captures and logits are
//! [`Activation`]s `[B, T, width]` (a `saelab_core::Matrix` without a copy), patches
//! edit the forward's buffer through an [`ActivationMut`], the loss is a `Matrix`.
//!
//! ```no_run
//! use saelab_lm::model::{ForwardOptions, HookedModel};
//! let model = HookedModel::load("data/models/SmolLM2-135M-Instruct.Q4_1.gguf")?;
//! let tokens = vec![vec![1u32, 504, 3458, 282], vec![1, 504, 1745, 28]];
//! let out = model.forward(&tokens, &ForwardOptions::new().capture("blocks.15.hook_resid_post"))?;
//! let acts = out.capture("blocks.15.hook_resid_post")?; // [2, 4, 576]
//! # Ok::<(), saelab_core::Error>(())
//! ```
//!
//! # Incremental forwards
//!
//! [`HookedModel::forward_cached`] runs only the new tokens of the streams of a
//! [`KvCache`] (made by [`HookedModel::kv_cache`]): RoPE at their absolute positions,
//! attention over the cached keys and values plus their own (causal among the new
//! ones), their keys and values appended. Its output is the same [`ForwardOutput`] as
//! a full forward's over the new positions; its activations say each row's stream and
//! absolute position ([`Activation::position`]). Generation (`crate::generate`) is a
//! loop over it. The full forward does not go through the cache: its kernels are
//! unchanged.
//!
//! # Adding a family
//!
//! One file beside `llama.rs` that reads its hyperparameters and tensors through
//! `checkpoint.rs`, implements the `Family` trait (embedding, the blocks with a
//! `Hooks::visit` at each hook point, the final norm, the unembedding, the Hugging
//! Face export), lists its hook kinds, and one `Loader` line in `FAMILIES`. Token
//! checks, hook planning, capture and patch, stopping early, logits and the loss are
//! written once, here and in `hooks.rs`; the KV cache and its commit / rollback in
//! `kv_cache.rs` (the family appends to it and attends over it). A family whose block
//! is LLaMA's up to what `llama::Variant` says (Q/K/V biases, the GGUF's RoPE row
//! order) is smaller still: its `Variant` and `Loader`, as `qwen2.rs`. A family with
//! a block of its own (`gemma3.rs`) still shares the kernels (sliding-window attention
//! is `AttnShape::window`) and `llama::attend_cached`, the incremental attention over
//! the cache.

mod activation;
mod checkpoint;
mod gemma3;
mod hooks;
mod info;
pub mod kernels;
mod kv_cache;
mod llama;
mod qwen2;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rayon::prelude::*;
use saelab_core::{Error, Matrix, Result};

pub use activation::{Activation, ActivationMut, Placement};
pub use hooks::{ForwardOptions, ForwardOutput, HookKind, HookPoint, Logits, PatchFn};
pub use info::ModelInfo;
pub use kv_cache::KvCache;

use checkpoint::{GgufFile, HfConfig};
use hooks::{Hooks, Plan};
use kv_cache::Past;

/// Rows of logits computed at a time when only the loss is asked for.
const LOSS_CHUNK_ROWS: usize = 256;

/// The batch of one forward: `batch` sequences of `seq_len` tokens, `batch · seq_len`
/// rows in every activation buffer.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Shape {
    /// Sequences `B`.
    pub batch: usize,
    /// Positions per sequence `T`.
    pub seq_len: usize,
}

/// What a model family implements: how its embedding, blocks and final norm compute,
/// and where its hooks sit. [`HookedModel`] drives it (token checks, hook planning,
/// stopping early, logits and loss) and is all that callers see.
///
/// A trait object rather than an enum of families: a new family is one file plus one
/// [`Loader`] line, with its weights and scratch buffers private to its file, and no
/// caller ever needs to match on the family (they read [`ModelInfo`]). The dynamic call
/// happens three times per forward, next to products of millions of flops.
pub(crate) trait Family: Send + Sync {
    /// What callers see of the model.
    fn info(&self) -> &ModelInfo;

    /// Writes the residual stream entering block 0 for `tokens` (`N = B·T` ids, all
    /// below the vocabulary size) into `x [N, d_model]`.
    fn embed(&self, tokens: &[u32], x: &mut [f32]);

    /// Values per position of one block's keys (and of its values) in a [`KvCache`].
    fn kv_width(&self) -> usize;

    /// The sliding window of block `layer`'s attention, `None` (the default) when it
    /// attends to every earlier position. A [`KvCache`] keeps only a window's positions.
    fn kv_window(&self, _layer: usize) -> Option<usize> {
        None
    }

    /// Runs blocks `0..n_blocks` on the residual stream `x [B·T, d_model]` in place,
    /// calling [`Hooks::visit`] with each hook point's activation as it is computed.
    /// With [`Past::Cached`] the rows are new positions of cache streams (`n_blocks` is
    /// then every block): RoPE at their absolute positions, their keys and values
    /// appended to the cache at each block, attention over each stream's every position.
    fn blocks(
        &self,
        x: &mut [f32],
        shape: Shape,
        n_blocks: usize,
        past: Past<'_>,
        hooks: &mut Hooks<'_, '_, '_>,
    ) -> Result<()>;

    /// Applies the final norm to the residual stream after the last block, in place:
    /// the unembedding's input.
    fn final_norm(&self, x: &mut [f32]);

    /// The token embedding `[V, d_model]`.
    fn embedding(&self) -> &[f32];

    /// The unembedding `[V, d_model]`: logits = `final_norm(x) · Wᵀ`.
    fn unembedding(&self) -> &[f32];

    /// The hyperparameters as a Hugging Face `config.json` object.
    fn hf_config(&self) -> serde_json::Value;

    /// Writes the model as a Hugging Face checkpoint into `dir`.
    fn save_hf(&self, dir: &Path) -> Result<()>;
}

/// A family in the registry: the names its checkpoints carry and its loaders.
pub(crate) struct Loader {
    /// GGUF `general.architecture`.
    pub gguf_architecture: &'static str,
    /// Hugging Face `model_type`s.
    pub hf_model_types: &'static [&'static str],
    /// Builds the model from an open GGUF file.
    pub from_gguf: fn(GgufFile) -> Result<Box<dyn Family>>,
    /// Builds the model from a checkpoint directory and its `config.json`.
    pub from_hf: fn(&HfConfig, &Path) -> Result<Box<dyn Family>>,
}

/// The families saelab runs.
pub(crate) const FAMILIES: &[Loader] = &[llama::LOADER, qwen2::LOADER, gemma3::LOADER];

/// The families, as `'llama', …`, for error messages.
fn supported() -> String {
    let names: Vec<String> = FAMILIES
        .iter()
        .map(|l| format!("'{}'", l.gguf_architecture))
        .collect();
    names.join(", ")
}

/// A transformer language model with f32 weights and hook points.
pub struct HookedModel {
    family: Box<dyn Family>,
    source: PathBuf,
}

impl std::fmt::Debug for HookedModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HookedModel")
            .field("source", &self.source)
            .field("info", self.info())
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

    /// Load a GGUF file of a supported architecture, dequantising every weight to f32.
    pub fn from_gguf(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let file = GgufFile::open(path)?;
        let arch = file.architecture()?;
        let Some(loader) = FAMILIES.iter().find(|l| l.gguf_architecture == arch) else {
            return Err(Error::bad_file(
                path,
                format!(
                    "unsupported architecture '{arch}' (saelab-lm runs {} models)",
                    supported()
                ),
            ));
        };
        Ok(HookedModel {
            family: (loader.from_gguf)(file)?,
            source: path.to_path_buf(),
        })
    }

    /// Load a Hugging Face checkpoint directory of a supported `model_type`:
    /// `config.json` and the `*.safetensors` shards (f32, f16 or bf16).
    pub fn from_hf_dir(dir: impl AsRef<Path>) -> Result<Self> {
        let dir = dir.as_ref();
        let cfg = HfConfig::read(dir)?;
        let model_type = cfg.string("model_type").unwrap_or("");
        let Some(loader) = FAMILIES
            .iter()
            .find(|l| l.hf_model_types.contains(&model_type))
        else {
            return Err(Error::bad_file(
                cfg.path(),
                format!(
                    "unsupported model_type '{model_type}' (saelab-lm runs {} models)",
                    supported()
                ),
            ));
        };
        Ok(HookedModel {
            family: (loader.from_hf)(&cfg, dir)?,
            source: dir.to_path_buf(),
        })
    }

    /// Write this model as a Hugging Face checkpoint (`config.json` + one f32
    /// `model.safetensors`) into `dir`, in the layout Hugging Face loaders expect.
    pub fn save_hf_dir(&self, dir: impl AsRef<Path>) -> Result<()> {
        self.family.save_hf(dir.as_ref())
    }

    /// What the model is: family, name, dimensions, special tokens, hook kinds.
    pub fn info(&self) -> &ModelInfo {
        self.family.info()
    }

    /// The hyperparameters as a Hugging Face `config.json` object (what
    /// [`HookedModel::save_hf_dir`] writes).
    pub fn hf_config(&self) -> serde_json::Value {
        self.family.hf_config()
    }

    /// The file or directory the model was loaded from.
    pub fn source(&self) -> &Path {
        &self.source
    }

    /// Width of the residual stream.
    pub fn d_model(&self) -> usize {
        self.info().d_model
    }

    /// Number of blocks.
    pub fn n_layers(&self) -> usize {
        self.info().n_layers
    }

    /// Vocabulary size.
    pub fn vocab_size(&self) -> usize {
        self.info().vocab_size
    }

    /// Longest sequence the forward accepts.
    pub fn context_length(&self) -> usize {
        self.info().context_length
    }

    /// Beginning-of-sequence token id, when the checkpoint names one.
    pub fn bos_token_id(&self) -> Option<u32> {
        self.info().bos_token_id
    }

    /// End-of-sequence token id, when the checkpoint names one.
    pub fn eos_token_id(&self) -> Option<u32> {
        self.info().eos_token_id
    }

    /// Every valid hook name, layer by layer.
    pub fn hook_names(&self) -> Vec<String> {
        self.info().hook_names()
    }

    /// Parse and check a hook name against this model.
    pub fn hook(&self, name: &str) -> Result<HookPoint> {
        self.info().hook(name)
    }

    /// The token-embedding matrix `[V, d_model]`, row-major.
    pub fn embedding(&self) -> &[f32] {
        self.family.embedding()
    }

    /// The unembedding matrix `[V, d_model]`, row-major (logits = `norm(x) · Wᵀ`); the
    /// embedding when the checkpoint ties them.
    pub fn unembedding(&self) -> &[f32] {
        self.family.unembedding()
    }

    /// The logit lens: `final_norm(x) · W_Uᵀ` for `rows` vectors `x` (`[rows, d_model]`,
    /// row-major), i.e. the logits the model would give if `x` were its last residual
    /// stream. Returns `[rows, V]`. Errors if `x` is not `rows × d_model` values.
    pub fn logit_lens(&self, x: &[f32], rows: usize) -> Result<Vec<f32>> {
        let (d, v) = (self.d_model(), self.vocab_size());
        if x.len() != rows * d {
            return Err(Error::Shape(format!(
                "{} values are not {rows} rows of d_model = {d}",
                x.len()
            )));
        }
        let mut h = x.to_vec();
        self.family.final_norm(&mut h);
        let mut logits = vec![0f32; rows * v];
        kernels::linear_few_rows(&h, rows, self.family.unembedding(), d, v, &mut logits);
        Ok(logits)
    }

    /// An empty [`KvCache`] of `batch` streams for [`HookedModel::forward_cached`].
    pub fn kv_cache(&self, batch: usize) -> KvCache {
        let windows = (0..self.n_layers())
            .map(|l| self.family.kv_window(l))
            .collect();
        KvCache::new(windows, self.family.kv_width(), batch)
    }

    /// Run new tokens of some streams of `cache`: `tokens[i]` (all of one length `T ≥ 1`)
    /// continues stream `streams[i]`, at positions `len..len + T` with `len` the
    /// stream's [`KvCache::stream_len`]. Every block runs; RoPE is applied at the
    /// absolute positions and attention covers the stream's cached positions and the
    /// new ones (causal among them); the new keys and values are appended and the
    /// streams' lengths grow by `T`. Streams not named are untouched.
    ///
    /// Returns what [`HookedModel::forward`] returns, over the new positions only:
    /// captures `[B, T, d_model]` (`B = streams.len()`), logits `[B, T, V]` or those
    /// of the last new position `[B, 1, V]`, the loss `[B, T−1]` within the new tokens.
    /// Captures and the activations lent to patches say where each row sits
    /// ([`Activation::stream`], [`Activation::position`]). On any error — the checks
    /// below, or a patch's — the cache is left as it was.
    ///
    /// Errors (one line each): a cache made for another model, `streams` and `tokens`
    /// of different lengths, a stream out of range or named twice, ragged or empty
    /// input, a token id `≥ vocab_size`, a stream whose `len + T` exceeds the context
    /// length, unknown hook names.
    pub fn forward_cached<S: AsRef<[u32]>>(
        &self,
        tokens: &[S],
        cache: &mut KvCache,
        streams: &[usize],
        opts: &ForwardOptions<'_>,
    ) -> Result<ForwardOutput> {
        let info = self.info();
        if cache.n_layers() != info.n_layers || cache.width() != self.family.kv_width() {
            return Err(Error::config(format!(
                "the KV cache was made for another model ({} blocks of width {}; {} has \
                 {} blocks of width {})",
                cache.n_layers(),
                cache.width(),
                info.name,
                info.n_layers,
                self.family.kv_width()
            )));
        }
        if streams.len() != tokens.len() {
            return Err(Error::Shape(format!(
                "{} token sequences for {} streams",
                tokens.len(),
                streams.len()
            )));
        }
        for (i, &s) in streams.iter().enumerate() {
            if s >= cache.batch() {
                return Err(Error::Shape(format!(
                    "stream {s} is out of range: the KV cache has {} streams",
                    cache.batch()
                )));
            }
            if streams[..i].contains(&s) {
                return Err(Error::Shape(format!("stream {s} is named twice")));
            }
        }
        let (flat, shape) = flatten(tokens)?;
        let Shape { batch, seq_len } = shape;
        let _span = tracing::debug_span!("forward_cached", batch, seq_len).entered();
        if batch == 0 || seq_len == 0 {
            return Err(Error::Shape(format!(
                "empty token batch ({batch} sequences of {seq_len} tokens)"
            )));
        }
        for &s in streams {
            let len = cache.stream_len(s);
            if len + seq_len > info.context_length {
                return Err(Error::Shape(format!(
                    "stream {s}: {len} cached + {seq_len} new tokens exceed the model's \
                     context length {}",
                    info.context_length
                )));
            }
        }
        self.check_tokens(&flat, shape, opts)?;
        let plan = Plan::new(info, opts)?;
        let places: Arc<[Placement]> = streams
            .iter()
            .map(|&s| Placement {
                stream: s,
                start: cache.stream_len(s),
            })
            .collect();
        let mut out = ForwardOutput {
            blocks_run: info.n_layers,
            ..Default::default()
        };
        let mut x = vec![0f32; batch * seq_len * info.d_model];
        self.family.embed(&flat, &mut x);
        let mut hooks = Hooks::new(&plan, batch, seq_len, Some(places.clone()), &mut out);
        let past = Past::Cached {
            places: &places,
            cache,
        };
        if let Err(e) = self
            .family
            .blocks(&mut x, shape, info.n_layers, past, &mut hooks)
        {
            cache.rollback();
            return Err(e);
        }
        cache.commit(streams, seq_len);
        if opts.needs_head() {
            let product = kernels::Product::for_forward(true, shape.seq_len);
            self.head(&mut x, &flat, shape, product, opts, &mut out)?;
        }
        Ok(out)
    }

    /// Run the model on a batch of token sequences of equal length `T`.
    ///
    /// Returns the captures (`[B, T, d_model]` each), logits (`[B, T, V]` or
    /// `[B, 1, V]`) and loss (`[B, T−1]`) that `opts` asks for. Errors on ragged or
    /// empty input, token ids `≥ vocab_size`, `T` above the context length and unknown
    /// hook names.
    pub fn forward<S: AsRef<[u32]>>(
        &self,
        tokens: &[S],
        opts: &ForwardOptions<'_>,
    ) -> Result<ForwardOutput> {
        let (flat, shape) = flatten(tokens)?;
        let _span =
            tracing::debug_span!("forward", batch = shape.batch, seq_len = shape.seq_len).entered();
        self.forward_flat(&flat, shape, opts)
    }

    /// Checks the tokens, resolves the hooks, runs the blocks needed, then the head.
    fn forward_flat(
        &self,
        tokens: &[u32],
        shape: Shape,
        opts: &ForwardOptions<'_>,
    ) -> Result<ForwardOutput> {
        let info = self.info();
        let Shape { batch, seq_len } = shape;
        if batch == 0 || seq_len == 0 {
            return Err(Error::Shape(format!(
                "empty token batch ({batch} sequences of {seq_len} tokens)"
            )));
        }
        if seq_len > info.context_length {
            return Err(Error::Shape(format!(
                "sequences of {seq_len} tokens exceed the model's context length {}",
                info.context_length
            )));
        }
        self.check_tokens(tokens, shape, opts)?;
        let plan = Plan::new(info, opts)?;
        let mut out = ForwardOutput {
            blocks_run: plan.n_blocks,
            ..Default::default()
        };

        // Residual stream [N, d].
        let mut x = vec![0f32; batch * seq_len * info.d_model];
        self.family.embed(tokens, &mut x);
        if plan.n_blocks == 0 {
            return Ok(out);
        }
        let mut hooks = Hooks::new(&plan, batch, seq_len, None, &mut out);
        self.family
            .blocks(&mut x, shape, plan.n_blocks, Past::None, &mut hooks)?;
        if opts.needs_head() {
            self.head(
                &mut x,
                tokens,
                shape,
                kernels::Product::Gemm,
                opts,
                &mut out,
            )?;
        }
        Ok(out)
    }

    /// Errors on a token id `≥ vocab_size` (naming its sequence and position in the
    /// batch), or on the loss asked for sequences shorter than 2.
    fn check_tokens(&self, tokens: &[u32], shape: Shape, opts: &ForwardOptions<'_>) -> Result<()> {
        let vocab_size = self.vocab_size();
        if let Some(i) = tokens.iter().position(|&t| t as usize >= vocab_size) {
            return Err(Error::Shape(format!(
                "token id {} at sequence {}, position {} is not below the vocabulary size {}",
                tokens[i],
                i / shape.seq_len,
                i % shape.seq_len,
                vocab_size
            )));
        }
        if opts.loss && shape.seq_len < 2 {
            return Err(Error::Shape(
                "the next-token loss needs sequences of at least 2 tokens".into(),
            ));
        }
        Ok(())
    }

    /// Final norm (in place on `x`) and unembedding (by `product`'s kernel): the logits
    /// and the loss asked for.
    fn head(
        &self,
        x: &mut [f32],
        tokens: &[u32],
        shape: Shape,
        product: kernels::Product,
        opts: &ForwardOptions<'_>,
        out: &mut ForwardOutput,
    ) -> Result<()> {
        let Shape { batch, seq_len } = shape;
        let (d, v) = (self.d_model(), self.vocab_size());
        let n = batch * seq_len;
        let w_u = self.family.unembedding();
        self.family.final_norm(x);
        let h: &[f32] = x;
        let all_logits = opts.logits == Logits::All;
        let mut logits_all = if all_logits {
            vec![0f32; n * v]
        } else {
            Vec::new()
        };
        if all_logits {
            product.linear(h, n, w_u, d, v, &mut logits_all);
        }
        if opts.logits == Logits::Last {
            let mut last = vec![0f32; batch * d];
            for b in 0..batch {
                let r = b * seq_len + seq_len - 1;
                last[b * d..(b + 1) * d].copy_from_slice(&h[r * d..(r + 1) * d]);
            }
            let mut logits = vec![0f32; batch * v];
            product.linear(&last, batch, w_u, d, v, &mut logits);
            out.logits = Some(Activation::new(batch, 1, v, logits)?);
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
                    product.linear(&h[r0 * d..(r0 + rows) * d], rows, w_u, d, v, c);
                    score(c, r0, &mut loss);
                    r0 += rows;
                }
            }
            out.loss = Some(Matrix::from_vec(batch, t1, loss)?);
        }
        if all_logits {
            out.logits = Some(Activation::new(batch, seq_len, v, logits_all)?);
        }
        Ok(())
    }
}

/// The token sequences of a batch, concatenated, and their shape; errors on ragged
/// input.
fn flatten<S: AsRef<[u32]>>(tokens: &[S]) -> Result<(Vec<u32>, Shape)> {
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
    Ok((flat, Shape { batch, seq_len }))
}
