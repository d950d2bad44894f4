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
//! and never a BOS position. The activations are the exact f32 values rounded to f16
//! (to nearest even); saelab's own statistics are computed from the f32 values of the
//! shard parts. The file holds `tokens` first, then `locations`, then `activations`, so
//! that every tensor is aligned to its element size, as the `safetensors` library's
//! own writer lays them out.

use serde::{Deserialize, Serialize};

use saelab_core::rundir::write_json;
use saelab_core::tensorfile::safetensors::{SafetensorsFile, TensorOut};
use saelab_core::tensorfile::Values;
use saelab_core::Result;

use crate::store::{write_tensors, Layout};

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
    write_tensors(
        &layout.delphi_file(hook, start, end),
        &[
            TensorOut::new(
                "tokens",
                &[tokens.len() / ctx_len.max(1), ctx_len],
                Values::I64(tokens),
            ),
            TensorOut::new(
                "locations",
                &[range.len(), 3],
                Values::U32(&range.locations),
            ),
            TensorOut::new(
                "activations",
                &[range.len()],
                Values::F16(&range.activations),
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

/// Reads back the delphi file of latents `start..=end`: the entries (f16 values widened
/// to f32), the token matrix (row-major) and its shape `[n_seq, ctx_len]`, checking
/// dtypes and shapes as delphi's loader expects. Errors name the file.
pub fn read_range(
    layout: &Layout,
    hook: &str,
    start: usize,
    end: usize,
) -> Result<(DelphiRange, Vec<i64>, Vec<usize>)> {
    let f = SafetensorsFile::open(&layout.delphi_file(hook, start, end))?;
    let locations = f.read_u32("locations")?;
    let activations = f.read_f16("activations")?;
    let n = activations.len();
    f.expect_shape("locations", &[n, 3])?;
    f.expect_shape("activations", &[n])?;
    let tokens = f.read_i64("tokens")?;
    let shape = f.shape("tokens")?.to_vec();
    Ok((
        DelphiRange {
            locations,
            activations,
        },
        tokens,
        shape,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delphi_files_hold_delphis_dtypes_and_shapes_aligned() {
        let dir = tempfile::tempdir().unwrap();
        let layout = Layout::new(dir.path());
        let hook = "blocks.3.hook_resid_post";
        let mut r = DelphiRange::with_capacity(3);
        r.push(0, 1, 2, 0.5);
        r.push(1, 3, 0, 1.0 / 3.0);
        r.push(1, 4, 7, -65504.0);
        let tokens: Vec<i64> = (0..10).collect();
        write_range(&layout, hook, 8, 15, &r, &tokens, 5).unwrap();
        let (back, toks, shape) = read_range(&layout, hook, 8, 15).unwrap();
        assert_eq!(back.locations, r.locations);
        // f16 rounds to nearest: 1/3 is 0x3555.
        assert_eq!(back.activations, [0.5, 0.333_251_95, -65504.0]);
        assert_eq!((toks, shape), (tokens.clone(), vec![2, 5]));

        // The header delphi's loader reads: names, dtypes, shapes, and every tensor's
        // data at a multiple of its element size.
        let path = layout.delphi_file(hook, 8, 15);
        let f = SafetensorsFile::open(&path).unwrap();
        let header: Vec<(&str, &str, &[usize])> = f
            .entries()
            .iter()
            .map(|e| (e.name.as_str(), e.dtype.as_str(), &e.shape[..]))
            .collect();
        assert_eq!(
            header,
            [
                ("activations", "F16", &[3][..]),
                ("locations", "U32", &[3, 3]),
                ("tokens", "I64", &[2, 5]),
            ]
        );
        let start = std::fs::metadata(&path).unwrap().len() as usize
            - f.entries().iter().map(|e| e.data_offsets.1).max().unwrap();
        assert_eq!(start % 8, 0);
        for e in f.entries() {
            let size = e.known_dtype().unwrap().size();
            assert_eq!(e.data_offsets.0 % size, 0, "{}", e.name);
        }

        // An empty range is a valid file of zero entries.
        write_range(&layout, hook, 0, 7, &DelphiRange::default(), &tokens, 5).unwrap();
        let (back, _, _) = read_range(&layout, hook, 0, 7).unwrap();
        assert!(back.is_empty() && back.locations.is_empty());
        let e = read_range(&layout, hook, 16, 23).unwrap_err().to_string();
        assert!(e.contains("16_23.safetensors"), "{e}");
    }
}
