//! Configuration of an SAE (what its file says) and of a training run.
//!
//! Both are plain serde structs so that a run can be described by a TOML file and
//! overridden from the command line, and so that checkpoints can store them as JSON.

use serde::{Deserialize, Serialize};

pub use crate::arch::ArchConfig;

/// How inputs are normalised before the encoder (and undone after the decoder).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum InputNorm {
    /// Inputs are used as they are (a training-time scale, if any, is folded into the weights).
    #[default]
    None,
    /// Per-token layer norm without affine parameters (SAELens `layer_norm`): the
    /// token's mean and standard deviation are removed before encoding and restored
    /// after decoding.
    LayerNorm,
}

/// Everything needed to run an SAE: its architecture, shapes and input conventions.
/// This is what `cfg.json` describes.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SaeConfig {
    /// Architecture and its hyperparameters.
    #[serde(flatten)]
    pub arch: ArchConfig,
    /// Input width d_in.
    pub d_in: usize,
    /// Number of latents n.
    pub d_sae: usize,
    /// Output width (equals d_in except for transcoders).
    pub d_out: usize,
    /// Whether `b_dec` is subtracted from the input before encoding.
    pub apply_b_dec_to_input: bool,
    /// Input normalisation applied at run time.
    #[serde(default)]
    pub input_norm: InputNorm,
    /// TopK only (SAELens): multiply latents by their decoder row norms before selection
    /// and divide again before decoding.
    #[serde(default)]
    pub rescale_acts_by_decoder_norm: bool,
    /// Where the activations came from and how the SAE was trained.
    #[serde(default)]
    pub metadata: SaeMetadata,
}

/// Provenance of an SAE: written under `cfg.json["metadata"]`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, Default)]
pub struct SaeMetadata {
    /// Model the activations came from (e.g. `SmolLM2-135M-Instruct`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model_name: Option<String>,
    /// Hook point (e.g. `blocks.15.hook_resid_post`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hook_name: Option<String>,
    /// Tokens per context used during extraction.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub context_size: Option<usize>,
    /// Whether contexts started with BOS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prepend_bos: Option<bool>,
    /// Dataset description (paths or names).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dataset_path: Option<String>,
    /// Architecture the SAE was trained as, when it differs from the saved one
    /// (BatchTopK is saved as JumpReLU).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trained_as: Option<String>,
    /// Scalar the inputs were multiplied by during training (already folded into the
    /// saved weights; kept for the record).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub folded_input_scale: Option<f32>,
    /// Tokens seen in training.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub training_tokens: Option<u64>,
}

impl SaeConfig {
    /// A config for an SAE of `d_in → d_sae → d_in` with default conventions.
    pub fn new(arch: ArchConfig, d_in: usize, d_sae: usize) -> Self {
        SaeConfig {
            arch,
            d_in,
            d_sae,
            d_out: d_in,
            apply_b_dec_to_input: true,
            input_norm: InputNorm::None,
            rescale_acts_by_decoder_norm: false,
            metadata: SaeMetadata::default(),
        }
    }

    /// The tensor shapes (`d_in`, `n`, `d_out`).
    pub fn dims(&self) -> Dims {
        Dims {
            d_in: self.d_in,
            n: self.d_sae,
            d_out: self.d_out,
        }
    }
}

/// The three widths of an SAE.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Dims {
    /// Input width.
    pub d_in: usize,
    /// Number of latents.
    pub n: usize,
    /// Output width.
    pub d_out: usize,
}

impl Dims {
    /// An SAE of `n` latents that reconstructs its `d`-wide input (`d_in = d_out = d`).
    pub fn square(d: usize, n: usize) -> Dims {
        Dims {
            d_in: d,
            n,
            d_out: d,
        }
    }
}
