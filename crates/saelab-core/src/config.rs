//! Configuration of an SAE (what its file says) and of a training run.
//!
//! Both are plain serde structs so that a run can be described by a TOML file and
//! overridden from the command line, and so that checkpoints can store them as JSON.

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// An SAE architecture and the hyperparameters that belong to it.
///
/// The tag `architecture` names it, as in a TOML run file:
/// ```toml
/// [sae]
/// architecture = "topk"
/// k = 32
/// ```
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "architecture", rename_all = "lowercase", deny_unknown_fields)]
pub enum ArchConfig {
    /// ReLU encoder with the April-2024 L1 penalty `λ Σ_i f_i ‖W_dec,i‖`.
    Relu {
        /// λ, reached at the end of the sparsity warm-up.
        #[serde(default = "defaults::l1_coefficient")]
        l1_coefficient: f32,
    },
    /// TopK (OpenAI): keep the k largest pre-activations per token; AuxK on dead latents.
    Topk {
        /// Latents kept per token.
        k: usize,
        /// Dead latents used by the AuxK loss (0 disables AuxK).
        #[serde(default = "defaults::aux_k")]
        aux_k: usize,
        /// Coefficient of the AuxK loss.
        #[serde(default = "defaults::aux_coefficient")]
        aux_coefficient: f32,
    },
    /// BatchTopK: keep the `k · B` largest pre-activations across the batch; at inference
    /// a single threshold θ (an EMA of the smallest kept value) turns it into JumpReLU.
    Batchtopk {
        /// Mean latents kept per token.
        k: usize,
        /// Dead latents used by the AuxK loss (0 disables AuxK).
        #[serde(default = "defaults::aux_k")]
        aux_k: usize,
        /// Coefficient of the AuxK loss.
        #[serde(default = "defaults::aux_coefficient")]
        aux_coefficient: f32,
        /// EMA momentum of the inference threshold.
        #[serde(default = "defaults::threshold_momentum")]
        threshold_momentum: f32,
    },
    /// JumpReLU (Gemma Scope): `f = pre · H(pre − θ)`, loss MSE + λ·L0 with
    /// rectangle-kernel straight-through estimators for θ.
    Jumprelu {
        /// λ of the L0 penalty, reached at the end of the sparsity warm-up.
        #[serde(default = "defaults::l0_coefficient")]
        l0_coefficient: f32,
        /// Bandwidth ε of the rectangle kernel.
        #[serde(default = "defaults::bandwidth")]
        bandwidth: f32,
        /// Initial threshold θ for every latent.
        #[serde(default = "defaults::init_threshold")]
        init_threshold: f32,
    },
    /// Gated SAE: a gate path decides which latents fire, a magnitude path how much.
    Gated {
        /// λ of the L1 penalty on the gate pre-activations.
        #[serde(default = "defaults::l1_coefficient")]
        l1_coefficient: f32,
    },
    /// EleutherAI sparsify's GroupMax: the latents are split into k groups and the
    /// largest of each group is kept. Inference only (read from sparsify files).
    Groupmax {
        /// Number of groups.
        k: usize,
    },
}

mod defaults {
    pub fn l1_coefficient() -> f32 {
        5.0
    }
    pub fn aux_k() -> usize {
        256
    }
    pub fn aux_coefficient() -> f32 {
        1.0 / 32.0
    }
    pub fn threshold_momentum() -> f32 {
        0.1
    }
    pub fn l0_coefficient() -> f32 {
        1e-3
    }
    pub fn bandwidth() -> f32 {
        1e-3
    }
    pub fn init_threshold() -> f32 {
        1e-3
    }
}

impl ArchConfig {
    /// The short name used in configs and in saelab's metadata (`topk`, `jumprelu`, ...).
    pub fn name(&self) -> &'static str {
        match self {
            ArchConfig::Relu { .. } => "relu",
            ArchConfig::Topk { .. } => "topk",
            ArchConfig::Batchtopk { .. } => "batchtopk",
            ArchConfig::Jumprelu { .. } => "jumprelu",
            ArchConfig::Gated { .. } => "gated",
            ArchConfig::Groupmax { .. } => "groupmax",
        }
    }

    /// Whether saelab can train this architecture. GroupMax is read from sparsify files
    /// for inference only; a training run must refuse a config for which this is false.
    pub fn trainable(&self) -> bool {
        !matches!(self, ArchConfig::Groupmax { .. })
    }

    /// Default hyperparameters for the architecture called `name`.
    pub fn default_for(name: &str, k: usize) -> Result<ArchConfig> {
        let v = serde_json::json!({ "architecture": name, "k": k });
        let mut v = v;
        if !matches!(name, "topk" | "batchtopk" | "groupmax") {
            v.as_object_mut().unwrap().remove("k");
        }
        serde_json::from_value(v).map_err(|_| {
            Error::config(format!(
                "unknown architecture {name:?} (known: relu, topk, batchtopk, jumprelu, gated)"
            ))
        })
    }
}

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
