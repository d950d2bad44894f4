//! Weights of a LLaMA-family model as f32 buffers, loaded from GGUF (dequantised) or
//! from a Hugging Face safetensors checkpoint, and written back in the HF layout.
//!
//! Internal layout (all row-major, PyTorch `[out, in]` orientation):
//! - query/key/value projections fused into one `[(H + 2·KV)·hd, d]` matrix whose query
//!   and key rows use the *interleaved* RoPE order of GGUF/llama.cpp (pairs `2i, 2i+1`);
//! - gate and up projections fused into one `[2·F, d]` matrix (gate rows first).
//!
//! Hugging Face checkpoints order each query/key head for the "rotate half" RoPE (pairs
//! `i, i + hd/2`); llama.cpp's converter permutes those rows when writing GGUF. Loading
//! HF weights applies the same permutation ([`hf_rows_to_interleaved`]) and exporting
//! undoes it ([`interleaved_rows_to_hf`]), so both sources give the same attention.

use std::collections::{BTreeSet, HashMap};
use std::fs::File;
use std::io::BufReader;
use std::path::{Path, PathBuf};

use candle_core::quantized::gguf_file;
use candle_core::Device;
use saelab_core::{Error, Result};
use safetensors::{Dtype, SafeTensors};

use super::candle_msg;
use super::config::LlamaConfig;

/// Weights of one transformer block.
#[derive(Clone, Debug)]
pub(crate) struct BlockWeights {
    /// RMSNorm gain before attention, `[d]`.
    pub attn_norm: Vec<f32>,
    /// Fused Q/K/V projection, `[(H + 2·KV)·hd, d]`, Q/K rows in interleaved-RoPE order.
    pub wqkv: Vec<f32>,
    /// Attention output projection, `[d, H·hd]`.
    pub wo: Vec<f32>,
    /// RMSNorm gain before the MLP, `[d]`.
    pub mlp_norm: Vec<f32>,
    /// Fused gate (rows `0..F`) and up (rows `F..2F`) projections, `[2F, d]`.
    pub w_gate_up: Vec<f32>,
    /// MLP down projection, `[d, F]`.
    pub w_down: Vec<f32>,
}

/// All weights of the model.
#[derive(Clone, Debug)]
pub(crate) struct Weights {
    /// Token embedding, `[V, d]`.
    pub embed: Vec<f32>,
    /// The blocks, in order.
    pub blocks: Vec<BlockWeights>,
    /// Final RMSNorm gain, `[d]`.
    pub final_norm: Vec<f32>,
    /// Unembedding `[V, d]`; `None` when tied to `embed`.
    pub unembed: Option<Vec<f32>>,
}

impl Weights {
    /// The unembedding matrix `[V, d]` (the embedding when tied).
    pub fn unembed(&self) -> &[f32] {
        self.unembed.as_deref().unwrap_or(&self.embed)
    }
}

/// Reorder the rows of a query or key projection `[n_heads·hd, d]` from the Hugging Face
/// "rotate half" order to the interleaved order: within each head, new row `2i + j` is
/// old row `j·hd/2 + i` (`j ∈ {0, 1}`).
pub fn hf_rows_to_interleaved(w: &[f32], n_heads: usize, head_dim: usize, d: usize) -> Vec<f32> {
    let half = head_dim / 2;
    let mut out = vec![0f32; w.len()];
    for h in 0..n_heads {
        for i in 0..half {
            for j in 0..2 {
                let dst = h * head_dim + 2 * i + j;
                let src = h * head_dim + j * half + i;
                out[dst * d..(dst + 1) * d].copy_from_slice(&w[src * d..(src + 1) * d]);
            }
        }
    }
    out
}

/// Inverse of [`hf_rows_to_interleaved`].
pub fn interleaved_rows_to_hf(w: &[f32], n_heads: usize, head_dim: usize, d: usize) -> Vec<f32> {
    let half = head_dim / 2;
    let mut out = vec![0f32; w.len()];
    for h in 0..n_heads {
        for i in 0..half {
            for j in 0..2 {
                let src = h * head_dim + 2 * i + j;
                let dst = h * head_dim + j * half + i;
                out[dst * d..(dst + 1) * d].copy_from_slice(&w[src * d..(src + 1) * d]);
            }
        }
    }
    out
}

/// A source of named f32 tensors with their shapes.
trait TensorSource {
    /// The tensor `name` as f32 values, checked to have `shape`.
    fn get(&mut self, name: &str, shape: &[usize]) -> Result<Vec<f32>>;
    /// Whether the source holds `name`.
    fn has(&self, name: &str) -> bool;
}

/// Assemble the model's weights from a source using `name(kind, layer)` for tensor names.
fn assemble(
    src: &mut dyn TensorSource,
    cfg: &LlamaConfig,
    names: &dyn Fn(&str, Option<usize>) -> String,
    permute_qk_from_hf: bool,
) -> Result<Weights> {
    let (d, v, f) = (cfg.d_model, cfg.vocab_size, cfg.d_ffn);
    let (hq, hkv, hd) = (cfg.n_heads, cfg.n_kv_heads, cfg.head_dim);
    let embed = src.get(&names("embed", None), &[v, d])?;
    let final_norm = src.get(&names("final_norm", None), &[d])?;
    let unembed_name = names("unembed", None);
    let unembed = if !cfg.tie_embeddings && src.has(&unembed_name) {
        Some(src.get(&unembed_name, &[v, d])?)
    } else {
        None
    };
    let mut blocks = Vec::with_capacity(cfg.n_layers);
    for l in 0..cfg.n_layers {
        let n = |k: &str| names(k, Some(l));
        let mut q = src.get(&n("q"), &[hq * hd, d])?;
        let mut k = src.get(&n("k"), &[hkv * hd, d])?;
        let vw = src.get(&n("v"), &[hkv * hd, d])?;
        if permute_qk_from_hf {
            q = hf_rows_to_interleaved(&q, hq, hd, d);
            k = hf_rows_to_interleaved(&k, hkv, hd, d);
        }
        let mut wqkv = q;
        wqkv.extend_from_slice(&k);
        wqkv.extend_from_slice(&vw);
        let mut w_gate_up = src.get(&n("gate"), &[f, d])?;
        w_gate_up.extend_from_slice(&src.get(&n("up"), &[f, d])?);
        blocks.push(BlockWeights {
            attn_norm: src.get(&n("attn_norm"), &[d])?,
            wqkv,
            wo: src.get(&n("o"), &[d, hq * hd])?,
            mlp_norm: src.get(&n("mlp_norm"), &[d])?,
            w_gate_up,
            w_down: src.get(&n("down"), &[d, f])?,
        });
    }
    Ok(Weights {
        embed,
        blocks,
        final_norm,
        unembed,
    })
}

fn gguf_name(kind: &str, layer: Option<usize>) -> String {
    let l = layer.unwrap_or(0);
    match kind {
        "embed" => "token_embd.weight".into(),
        "final_norm" => "output_norm.weight".into(),
        "unembed" => "output.weight".into(),
        "q" => format!("blk.{l}.attn_q.weight"),
        "k" => format!("blk.{l}.attn_k.weight"),
        "v" => format!("blk.{l}.attn_v.weight"),
        "o" => format!("blk.{l}.attn_output.weight"),
        "gate" => format!("blk.{l}.ffn_gate.weight"),
        "up" => format!("blk.{l}.ffn_up.weight"),
        "down" => format!("blk.{l}.ffn_down.weight"),
        "attn_norm" => format!("blk.{l}.attn_norm.weight"),
        "mlp_norm" => format!("blk.{l}.ffn_norm.weight"),
        _ => unreachable!("unknown tensor kind {kind}"),
    }
}

fn hf_name(kind: &str, layer: Option<usize>) -> String {
    let l = layer.unwrap_or(0);
    match kind {
        "embed" => "model.embed_tokens.weight".into(),
        "final_norm" => "model.norm.weight".into(),
        "unembed" => "lm_head.weight".into(),
        "q" => format!("model.layers.{l}.self_attn.q_proj.weight"),
        "k" => format!("model.layers.{l}.self_attn.k_proj.weight"),
        "v" => format!("model.layers.{l}.self_attn.v_proj.weight"),
        "o" => format!("model.layers.{l}.self_attn.o_proj.weight"),
        "gate" => format!("model.layers.{l}.mlp.gate_proj.weight"),
        "up" => format!("model.layers.{l}.mlp.up_proj.weight"),
        "down" => format!("model.layers.{l}.mlp.down_proj.weight"),
        "attn_norm" => format!("model.layers.{l}.input_layernorm.weight"),
        "mlp_norm" => format!("model.layers.{l}.post_attention_layernorm.weight"),
        _ => unreachable!("unknown tensor kind {kind}"),
    }
}

fn shape_error(path: &Path, name: &str, got: &[usize], want: &[usize]) -> Error {
    Error::bad_file(
        path,
        format!("tensor {name} has shape {got:?}, the config implies {want:?}"),
    )
}

struct GgufSource<'a> {
    path: &'a Path,
    content: &'a gguf_file::Content,
    reader: BufReader<File>,
}

impl TensorSource for GgufSource<'_> {
    fn get(&mut self, name: &str, shape: &[usize]) -> Result<Vec<f32>> {
        let path = self.path;
        if !self.has(name) {
            return Err(Error::bad_file(path, format!("tensor {name} is missing")));
        }
        let q = self
            .content
            .tensor(&mut self.reader, name, &Device::Cpu)
            .map_err(|e| {
                Error::bad_file(path, format!("reading tensor {name}: {}", candle_msg(&e)))
            })?;
        if q.shape().dims() != shape {
            return Err(shape_error(path, name, q.shape().dims(), shape));
        }
        let t = q
            .dequantize(&Device::Cpu)
            .and_then(|t| t.flatten_all())
            .and_then(|t| t.to_vec1::<f32>())
            .map_err(|e| {
                Error::bad_file(
                    path,
                    format!("dequantising tensor {name}: {}", candle_msg(&e)),
                )
            })?;
        if let Some(i) = t.iter().position(|v| !v.is_finite()) {
            return Err(Error::bad_file(
                path,
                format!("tensor {name} holds a non-finite value at index {i}"),
            ));
        }
        Ok(t)
    }

    fn has(&self, name: &str) -> bool {
        self.content.tensor_infos.contains_key(name)
    }
}

/// Load a GGUF `llama` model: hyperparameters from the metadata, every weight
/// dequantised to f32.
pub(crate) fn load_gguf(path: &Path) -> Result<(LlamaConfig, Weights)> {
    let file = File::open(path).map_err(|e| Error::io(path, e))?;
    let mut reader = BufReader::new(file);
    let content = gguf_file::Content::read(&mut reader).map_err(|e| {
        Error::bad_file(
            path,
            format!("not a readable GGUF file: {}", candle_msg(&e)),
        )
    })?;
    let vocab_rows = content
        .tensor_infos
        .get("token_embd.weight")
        .map(|t| t.shape.dims()[0])
        .ok_or_else(|| Error::bad_file(path, "tensor token_embd.weight is missing"))?;
    let mut cfg = LlamaConfig::from_gguf_metadata(&content.metadata, vocab_rows, path)?;
    cfg.tie_embeddings = !content.tensor_infos.contains_key("output.weight");
    cfg.validate(path)?;
    let mut src = GgufSource {
        path,
        content: &content,
        reader,
    };
    let w = assemble(&mut src, &cfg, &gguf_name, false)?;
    Ok((cfg, w))
}

/// The safetensors files of a Hugging Face checkpoint directory: those named by
/// `model.safetensors.index.json` when present, else every `*.safetensors` file.
fn hf_shards(dir: &Path) -> Result<Vec<PathBuf>> {
    let index = dir.join("model.safetensors.index.json");
    if index.exists() {
        let text = std::fs::read_to_string(&index).map_err(|e| Error::io(&index, e))?;
        let v: serde_json::Value = serde_json::from_str(&text)
            .map_err(|e| Error::bad_file(&index, format!("not valid JSON: {e}")))?;
        let map = v
            .get("weight_map")
            .and_then(|m| m.as_object())
            .ok_or_else(|| Error::bad_file(&index, "no weight_map object"))?;
        let files: BTreeSet<&str> = map.values().filter_map(|f| f.as_str()).collect();
        return Ok(files.into_iter().map(|f| dir.join(f)).collect());
    }
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))? {
        let p = entry.map_err(|e| Error::io(dir, e))?.path();
        if p.extension().and_then(|e| e.to_str()) == Some("safetensors") {
            files.push(p);
        }
    }
    files.sort();
    if files.is_empty() {
        return Err(Error::bad_file(
            dir,
            "no *.safetensors files in the directory",
        ));
    }
    Ok(files)
}

struct HfSource {
    maps: Vec<(PathBuf, memmap2::Mmap)>,
    /// tensor name → index into `maps`
    index: HashMap<String, usize>,
}

impl HfSource {
    fn open(dir: &Path) -> Result<Self> {
        let mut maps = Vec::new();
        let mut index = HashMap::new();
        for (i, p) in hf_shards(dir)?.into_iter().enumerate() {
            let f = File::open(&p).map_err(|e| Error::io(&p, e))?;
            // SAFETY: the file is only read; concurrent modification by another process
            // is the user's responsibility, as with any memory-mapped checkpoint.
            let m = unsafe { memmap2::Mmap::map(&f) }.map_err(|e| Error::io(&p, e))?;
            let st = SafeTensors::deserialize(&m)
                .map_err(|e| Error::bad_file(&p, format!("not a safetensors file: {e}")))?;
            for name in st.names() {
                index.insert(name.to_string(), i);
            }
            drop(st);
            maps.push((p, m));
        }
        Ok(HfSource { maps, index })
    }
}

impl TensorSource for HfSource {
    fn get(&mut self, name: &str, shape: &[usize]) -> Result<Vec<f32>> {
        let Some(&i) = self.index.get(name) else {
            let path = &self.maps[0].0;
            let dir = path.parent().unwrap_or(path);
            return Err(Error::bad_file(dir, format!("tensor {name} is missing")));
        };
        let (path, map) = &self.maps[i];
        let st = SafeTensors::deserialize(map)
            .map_err(|e| Error::bad_file(path, format!("not a safetensors file: {e}")))?;
        let view = st
            .tensor(name)
            .map_err(|e| Error::bad_file(path, format!("tensor {name}: {e}")))?;
        if view.shape() != shape {
            return Err(shape_error(path, name, view.shape(), shape));
        }
        let bytes = view.data();
        let out: Vec<f32> = match view.dtype() {
            Dtype::F32 => bytes
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect(),
            Dtype::F16 => bytes
                .chunks_exact(2)
                .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32())
                .collect(),
            Dtype::BF16 => bytes
                .chunks_exact(2)
                .map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32())
                .collect(),
            other => {
                return Err(Error::bad_file(
                    path,
                    format!("tensor {name} has dtype {other:?}; expected F32, F16 or BF16"),
                ))
            }
        };
        if let Some(j) = out.iter().position(|v| !v.is_finite()) {
            return Err(Error::bad_file(
                path,
                format!("tensor {name} holds a non-finite value at index {j}"),
            ));
        }
        Ok(out)
    }

    fn has(&self, name: &str) -> bool {
        self.index.contains_key(name)
    }
}

/// Load a Hugging Face LLaMA checkpoint directory (`config.json` + safetensors).
pub(crate) fn load_hf(dir: &Path) -> Result<(LlamaConfig, Weights)> {
    let cfg_path = dir.join("config.json");
    let text = std::fs::read_to_string(&cfg_path).map_err(|e| Error::io(&cfg_path, e))?;
    let mut cfg = LlamaConfig::from_hf_json(&text, &cfg_path)?;
    cfg.validate(&cfg_path)?;
    let mut src = HfSource::open(dir)?;
    if !cfg.tie_embeddings && !src.has("lm_head.weight") {
        // Some checkpoints omit lm_head without saying tie_word_embeddings.
        cfg.tie_embeddings = true;
    }
    let w = assemble(&mut src, &cfg, &hf_name, true)?;
    Ok((cfg, w))
}

/// Write the model as a Hugging Face checkpoint: `config.json` and `model.safetensors`
/// (f32), query/key rows permuted back to the "rotate half" order.
pub(crate) fn save_hf(cfg: &LlamaConfig, w: &Weights, dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let (d, hq, hkv, hd, f) = (
        cfg.d_model,
        cfg.n_heads,
        cfg.n_kv_heads,
        cfg.head_dim,
        cfg.d_ffn,
    );
    let mut tensors: Vec<(String, Vec<usize>, Vec<f32>)> = vec![
        (
            hf_name("embed", None),
            vec![cfg.vocab_size, d],
            w.embed.clone(),
        ),
        (hf_name("final_norm", None), vec![d], w.final_norm.clone()),
    ];
    if let Some(u) = &w.unembed {
        tensors.push((hf_name("unembed", None), vec![cfg.vocab_size, d], u.clone()));
    }
    for (l, b) in w.blocks.iter().enumerate() {
        let n = |k: &str| hf_name(k, Some(l));
        let (q, rest) = b.wqkv.split_at(hq * hd * d);
        let (k, v) = rest.split_at(hkv * hd * d);
        let (gate, up) = b.w_gate_up.split_at(f * d);
        tensors.push((
            n("q"),
            vec![hq * hd, d],
            interleaved_rows_to_hf(q, hq, hd, d),
        ));
        tensors.push((
            n("k"),
            vec![hkv * hd, d],
            interleaved_rows_to_hf(k, hkv, hd, d),
        ));
        tensors.push((n("v"), vec![hkv * hd, d], v.to_vec()));
        tensors.push((n("o"), vec![d, hq * hd], b.wo.clone()));
        tensors.push((n("gate"), vec![f, d], gate.to_vec()));
        tensors.push((n("up"), vec![f, d], up.to_vec()));
        tensors.push((n("down"), vec![d, f], b.w_down.clone()));
        tensors.push((n("attn_norm"), vec![d], b.attn_norm.clone()));
        tensors.push((n("mlp_norm"), vec![d], b.mlp_norm.clone()));
    }
    let bytes: Vec<(String, Vec<usize>, Vec<u8>)> = tensors
        .into_iter()
        .map(|(name, shape, data)| {
            let b = data.iter().flat_map(|v| v.to_le_bytes()).collect();
            (name, shape, b)
        })
        .collect();
    let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = bytes
        .iter()
        .map(|(name, shape, b)| {
            let view = safetensors::tensor::TensorView::new(Dtype::F32, shape.clone(), b)
                .expect("sizes match by construction");
            (name.clone(), view)
        })
        .collect();
    let st_path = dir.join("model.safetensors");
    safetensors::serialize_to_file(views, None, &st_path)
        .map_err(|e| Error::bad_file(&st_path, format!("writing safetensors: {e}")))?;
    let cfg_path = dir.join("config.json");
    std::fs::write(&cfg_path, cfg.to_hf_json()).map_err(|e| Error::io(&cfg_path, e))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn qk_permutation_round_trips_and_moves_pairs_together() {
        let (heads, hd, d) = (3, 6, 2);
        let w: Vec<f32> = (0..heads * hd * d).map(|i| i as f32).collect();
        let p = hf_rows_to_interleaved(&w, heads, hd, d);
        assert_eq!(interleaved_rows_to_hf(&p, heads, hd, d), w);
        // head 1, pair i = 2: HF rows 6+2 and 6+2+3 become interleaved rows 6+4, 6+5.
        let row = |m: &[f32], r: usize| m[r * d..(r + 1) * d].to_vec();
        assert_eq!(row(&p, 10), row(&w, 8));
        assert_eq!(row(&p, 11), row(&w, 11));
    }
}
