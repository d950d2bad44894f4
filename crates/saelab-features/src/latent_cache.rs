//! The sparse latent cache in delphi's layout, so that delphi
//! (`delphi.latents.LatentDataset`) reads it as if its own `save_splits` wrote it:
//!
//! ```text
//! latents/{hook}/{start}_{end}.safetensors   (end inclusive, as delphi names them)
//!     locations   [N, 3] U32   (sequence, position, latent − start), token-major order
//!     activations [N]    F16
//!     tokens      [n_seq, ctx_len] I64   the whole token matrix, in every file
//! latents/{hook}/config.json                 delphi's CacheConfig fields + model_name
//! ```
//!
//! delphi stores `locations` as U16 when both the sequence and the latent offset fit,
//! else U32; this cache always writes U32 (delphi's loader widens either to int64).
//! Only active positions appear (value ≠ 0; delphi's own cache keeps `|a| > 1e-5`),
//! and never a BOS position. The activations are the exact f32 values rounded to f16;
//! saelab's own statistics are computed from the f32 values of the shard parts.

use serde::{Deserialize, Serialize};

use saelab_core::rundir::write_json;
use saelab_core::Result;

use crate::store::Layout;
use crate::tensor_io::{self, expect_shape, Data};

/// The entries of one delphi file, in the order they are pushed.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct DelphiRange {
    /// `(sequence, position, latent − start)` triples, flattened.
    pub locations: Vec<u32>,
    /// The values.
    pub activations: Vec<f32>,
}

impl DelphiRange {
    /// An empty range with room for `entries` entries.
    pub fn with_capacity(entries: u64) -> Self {
        DelphiRange {
            locations: Vec::with_capacity(3 * entries as usize),
            activations: Vec::with_capacity(entries as usize),
        }
    }

    /// Appends one entry.
    #[inline]
    pub fn push(&mut self, seq: u32, pos: u32, offset: u32, value: f32) {
        self.locations.extend_from_slice(&[seq, pos, offset]);
        self.activations.push(value);
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.activations.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.activations.is_empty()
    }
}

/// delphi's `CacheConfig` as its `config.json` holds it, plus `model_name`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DelphiConfig {
    /// The corpus (a path here; a Hugging Face dataset in delphi).
    pub dataset_repo: String,
    /// The corpus part.
    pub dataset_split: String,
    /// Unused (empty).
    pub dataset_name: String,
    /// The text field.
    pub dataset_column: String,
    /// Contexts per forward.
    pub batch_size: usize,
    /// Tokens per context.
    pub cache_ctx_len: usize,
    /// Tokens cached (`n_seq · ctx_len`, BOS included).
    pub n_tokens: u64,
    /// Number of files (latent ranges).
    pub n_splits: usize,
    /// The model's name (delphi passes it to `AutoTokenizer.from_pretrained`).
    pub model_name: String,
}

/// Writes the delphi file of latents `start..=end`.
pub fn write_range(
    layout: &Layout,
    hook: &str,
    start: usize,
    end: usize,
    range: &DelphiRange,
    tokens: &[i64],
    ctx_len: usize,
) -> Result<()> {
    tensor_io::write(
        &layout.delphi_file(hook, start, end),
        &[
            (
                "locations",
                vec![range.len(), 3],
                Data::U32(&range.locations),
            ),
            (
                "activations",
                vec![range.len()],
                Data::F16(&range.activations),
            ),
            (
                "tokens",
                vec![tokens.len() / ctx_len.max(1), ctx_len],
                Data::I64(tokens),
            ),
        ],
    )
}

/// Writes `config.json` of the delphi folder of `hook`.
pub fn write_config(layout: &Layout, hook: &str, cfg: &DelphiConfig) -> Result<()> {
    let dir = layout.delphi_dir(hook);
    std::fs::create_dir_all(&dir).map_err(|e| saelab_core::Error::io(&dir, e))?;
    write_json(&dir.join("config.json"), cfg)
}

/// Reads back the delphi file of latents `start..=end` (the entries with f16 values as
/// f32, and the token matrix), checking dtypes and shapes as delphi's loader expects.
pub fn read_range(
    layout: &Layout,
    hook: &str,
    start: usize,
    end: usize,
) -> Result<(DelphiRange, Vec<i64>, Vec<usize>)> {
    let path = layout.delphi_file(hook, start, end);
    let f = tensor_io::File::read(&path)?;
    let (ls, locations) = f.u32("locations")?;
    let (as_, activations) = f.f16("activations")?;
    let n = activations.len();
    expect_shape(&path, "locations", &ls, &[n, 3])?;
    expect_shape(&path, "activations", &as_, &[n])?;
    let (ts, tokens) = f.i64("tokens")?;
    Ok((
        DelphiRange {
            locations,
            activations,
        },
        tokens,
        ts,
    ))
}
