//! [`SentenceEncoder`]: a sentence-transformers BERT folder, loaded once, turning texts
//! into embeddings.

use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::models::bert::{BertModel, Config};
use tokenizers::{Tokenizer, TruncationDirection, TruncationParams, TruncationStrategy};

use crate::error::{one_line, Error, Result};
use crate::pipeline::{self, Pipeline};

/// At most this many token positions (texts × the longest text of the forward) go
/// through one BERT forward, and at most [`MAX_TEXTS_PER_FORWARD`] texts: a forward of
/// 256-token texts holds 8 of them, its attention scores 8 × 12 × 256² f32 = 25 MB.
const TOKENS_PER_FORWARD: usize = 2048;
const MAX_TEXTS_PER_FORWARD: usize = 64;

/// A sentence encoder: BERT (candle-transformers' `bert`, f32 on the CPU), then mean
/// pooling over the real tokens, then L2 normalisation when `modules.json` lists a
/// Normalize module — sentence-transformers' `encode` for all-MiniLM-L6-v2.
///
/// For a text of tokens `t₁ … t_L` (`[CLS]` … `[SEP]`, `L ≤ max_seq_length`) with final
/// hidden states `h₁ … h_L` (`[L, d]`): `e = (Σᵢ hᵢ) / L`, then `e / max(‖e‖₂, 1e-12)`.
/// Texts are trimmed (and lower-cased when `sentence_bert_config.json` says
/// `do_lower_case`) before tokenising, as sentence-transformers does.
///
/// The model's CPU kernels run on rayon's global pool (`RAYON_NUM_THREADS`), as candle
/// does; the weights (≈ 90 MB for all-MiniLM-L6-v2) are the only large allocation
/// besides one forward's activations, bounded by [`SentenceEncoder::embed`]'s batching.
pub struct SentenceEncoder {
    model: BertModel,
    tokenizer: Tokenizer,
    tokenizer_path: PathBuf,
    pipeline: Pipeline,
    heads: usize,
    pad_id: u32,
}

impl std::fmt::Debug for SentenceEncoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SentenceEncoder")
            .field("tokenizer", &self.tokenizer_path)
            .field("dim", &self.pipeline.dim)
            .field("max_seq_length", &self.pipeline.max_seq_length)
            .field("normalize", &self.pipeline.normalize)
            .field("heads", &self.heads)
            .finish()
    }
}

impl SentenceEncoder {
    /// Loads the sentence-transformers model folder `dir`: `config.json` (a BERT:
    /// `model_type` `bert`, absolute positions, `gelu` or `relu`), `model.safetensors`,
    /// `tokenizer.json`, `modules.json` with the pooling module's `config.json` (mean
    /// pooling only) and `sentence_bert_config.json` (`max_seq_length`). Texts are
    /// truncated at `max_seq_length` tokens, whatever truncation or padding
    /// `tokenizer.json` itself sets (all-MiniLM-L6-v2's says 128, fixed padding).
    ///
    /// Errors: one line naming the file — missing, unreadable, bad JSON, an unsupported
    /// architecture, module or pooling mode, weights that do not fit the config.
    pub fn load(dir: impl AsRef<Path>) -> Result<Self> {
        let dir = dir.as_ref();
        let pipeline = pipeline::read(dir)?;

        let config_path = dir.join("config.json");
        let config = read_bert_config(&config_path)?;
        if config.hidden_size != pipeline.dim {
            return Err(Error::Unsupported {
                path: config_path,
                message: format!(
                    "hidden_size {} differs from the pooling's word_embedding_dimension {}",
                    config.hidden_size, pipeline.dim
                ),
            });
        }
        if pipeline.max_seq_length < 2 || pipeline.max_seq_length > config.max_position_embeddings {
            return Err(Error::Unsupported {
                path: dir.join("sentence_bert_config.json"),
                message: format!(
                    "max_seq_length {} is outside 2..={} (max_position_embeddings of config.json)",
                    pipeline.max_seq_length, config.max_position_embeddings
                ),
            });
        }

        let weights_path = pipeline::existing(dir.join("model.safetensors"))?;
        let weights_error = |e: candle_core::Error| Error::Weights {
            path: weights_path.clone(),
            message: one_line(e),
        };
        let bytes = std::fs::read(&weights_path).map_err(|e| Error::Read {
            path: weights_path.clone(),
            message: one_line(e),
        })?;
        // The buffer lives in the builder only while the model is built: each tensor is
        // copied out as f32, then the file's bytes are dropped.
        let vb = VarBuilder::from_buffered_safetensors(bytes, DType::F32, &Device::Cpu)
            .map_err(weights_error)?;
        let model = BertModel::load(vb, &config).map_err(weights_error)?;

        let tokenizer_path = pipeline::existing(dir.join("tokenizer.json"))?;
        let tokenizer_error = |message: String| Error::Tokenizer {
            path: tokenizer_path.clone(),
            message,
        };
        let mut tokenizer =
            Tokenizer::from_file(&tokenizer_path).map_err(|e| tokenizer_error(one_line(e)))?;
        tokenizer
            .with_truncation(Some(TruncationParams {
                direction: TruncationDirection::Right,
                max_length: pipeline.max_seq_length,
                strategy: TruncationStrategy::LongestFirst,
                stride: 0,
            }))
            .map_err(|e| tokenizer_error(one_line(e)))?;
        tokenizer.with_padding(None);
        let vocab = tokenizer.get_vocab_size(true);
        if vocab > config.vocab_size {
            return Err(tokenizer_error(format!(
                "{vocab} tokens, more than the model's vocab_size {} (config.json)",
                config.vocab_size
            )));
        }

        Ok(Self {
            model,
            tokenizer,
            tokenizer_path,
            pipeline,
            heads: config.num_attention_heads,
            pad_id: config.pad_token_id as u32,
        })
    }

    /// The embedding width `d` (384 for all-MiniLM-L6-v2).
    pub fn dim(&self) -> usize {
        self.pipeline.dim
    }

    /// Tokens kept per text, `[CLS]` and `[SEP]` included (256 for all-MiniLM-L6-v2).
    pub fn max_seq_length(&self) -> usize {
        self.pipeline.max_seq_length
    }

    /// Whether embeddings are L2-normalised (a Normalize module in `modules.json`).
    pub fn normalizes(&self) -> bool {
        self.pipeline.normalize
    }

    /// The token ids each text is embedded from: `[CLS] … [SEP]`, at most
    /// [`max_seq_length`](Self::max_seq_length) of them, one `Vec` per text.
    pub fn tokenize(&self, texts: &[&str]) -> Result<Vec<Vec<u32>>> {
        let inputs: Vec<String> = texts
            .iter()
            .map(|t| {
                let t = t.trim();
                if self.pipeline.do_lower_case {
                    t.to_lowercase()
                } else {
                    t.to_string()
                }
            })
            .collect();
        let encodings =
            self.tokenizer
                .encode_batch(inputs, true)
                .map_err(|e| Error::Tokenizer {
                    path: self.tokenizer_path.clone(),
                    message: one_line(e),
                })?;
        Ok(encodings.iter().map(|e| e.get_ids().to_vec()).collect())
    }

    /// The embeddings of `texts`, `[texts.len()][dim]`, in the order given.
    ///
    /// Texts are grouped by token count (longest first) into forwards of at most 2 048
    /// token positions and 64 texts, each padded to its longest text and masked, so a
    /// text's embedding does not depend on the others beside it (up to float rounding
    /// of differently shaped products, ≈ 1e-7). A text with no tokens (only possible
    /// with a tokenizer that adds no special tokens) embeds as zeros.
    pub fn embed(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>> {
        let ids = self.tokenize(texts)?;
        let mut order: Vec<usize> = (0..ids.len()).collect();
        order.sort_by_key(|&i| std::cmp::Reverse(ids[i].len()));
        let mut out = vec![Vec::new(); ids.len()];
        let mut start = 0;
        while start < order.len() {
            let longest = ids[order[start]].len().max(1);
            let rows = (TOKENS_PER_FORWARD / longest).clamp(1, MAX_TEXTS_PER_FORWARD);
            let chunk = &order[start..(start + rows).min(order.len())];
            let seqs: Vec<&[u32]> = chunk.iter().map(|&i| ids[i].as_slice()).collect();
            for (&i, e) in chunk.iter().zip(self.forward(&seqs)?) {
                out[i] = e;
            }
            start += chunk.len();
        }
        Ok(out)
    }

    /// One padded forward of `seqs` (`[B][≤ T]` ids) and the pooling: `[B][d]`.
    fn forward(&self, seqs: &[&[u32]]) -> Result<Vec<Vec<f32>>> {
        let (b, d) = (seqs.len(), self.pipeline.dim);
        let t = seqs.iter().map(|s| s.len()).max().unwrap_or(0);
        if t == 0 {
            return Ok(vec![vec![0.0; d]; b]);
        }
        let mut ids = vec![self.pad_id; b * t];
        let mut mask = vec![0u32; b * t];
        for (r, s) in seqs.iter().enumerate() {
            ids[r * t..r * t + s.len()].copy_from_slice(s);
            mask[r * t..r * t + s.len()].fill(1);
        }
        let forward_error = |e: candle_core::Error| Error::Forward(one_line(e));
        let ids = Tensor::from_vec(ids, (b, t), &Device::Cpu).map_err(forward_error)?;
        let types = ids.zeros_like().map_err(forward_error)?;
        let mask = Tensor::from_vec(mask, (b, t), &Device::Cpu).map_err(forward_error)?;
        let hidden = self
            .model
            .forward(&ids, &types, Some(&mask))
            .and_then(|h| h.flatten_all()?.to_vec1::<f32>())
            .map_err(forward_error)?;
        if hidden.len() != b * t * d {
            return Err(Error::Forward(format!(
                "{} hidden values, expected {b} × {t} × {d}",
                hidden.len()
            )));
        }
        Ok(seqs
            .iter()
            .enumerate()
            .map(|(r, s)| self.pool(&hidden[r * t * d..(r * t + s.len()) * d]))
            .collect())
    }

    /// Mean of the rows of `states` (`[L, d]`, the real tokens of one text), then the
    /// L2 normalisation when the pipeline has one. Sums in f64.
    fn pool(&self, states: &[f32]) -> Vec<f32> {
        let d = self.pipeline.dim;
        let rows = states.len() / d;
        if rows == 0 {
            return vec![0.0; d];
        }
        let mut sum = vec![0f64; d];
        for row in states.chunks_exact(d) {
            for (s, &x) in sum.iter_mut().zip(row) {
                *s += x as f64;
            }
        }
        let mut scale = 1.0 / rows as f64;
        if self.pipeline.normalize {
            let norm = sum.iter().map(|s| s * s).sum::<f64>().sqrt() * scale;
            scale /= norm.max(1e-12);
        }
        sum.iter().map(|s| (s * scale) as f32).collect()
    }
}

/// `config.json` as candle's BERT config, after the checks that give one-line errors
/// for what candle would not run or would misread.
fn read_bert_config(path: &Path) -> Result<Config> {
    let value: serde_json::Value = pipeline::read_json(path)?;
    let unsupported = |message: String| Error::Unsupported {
        path: path.to_path_buf(),
        message,
    };
    let field = |k: &str| value.get(k).and_then(|v| v.as_str());
    let shown = |v: Option<&str>| v.map_or("absent".to_string(), |v| format!("{v:?}"));
    match field("model_type") {
        Some("bert") => {}
        other => {
            return Err(unsupported(format!(
                "unsupported architecture: model_type {} (saelab-embed runs BERT only)",
                shown(other)
            )))
        }
    }
    if let Some(archs) = value.get("architectures").and_then(|v| v.as_array()) {
        let names: Vec<&str> = archs.iter().filter_map(|a| a.as_str()).collect();
        if !names.iter().any(|n| n.starts_with("Bert")) {
            return Err(unsupported(format!(
                "unsupported architecture {names:?} (saelab-embed runs BERT only)"
            )));
        }
    }
    match field("hidden_act") {
        Some("gelu" | "relu") => {}
        other => {
            return Err(unsupported(format!(
                "hidden_act {} is not supported (gelu or relu)",
                shown(other)
            )))
        }
    }
    if let Some(kind) = field("position_embedding_type").filter(|k| *k != "absolute") {
        return Err(unsupported(format!(
            "position_embedding_type {kind:?} is not supported (absolute only)"
        )));
    }
    serde_json::from_value(value).map_err(|e| Error::Json {
        path: path.to_path_buf(),
        message: one_line(e),
    })
}
