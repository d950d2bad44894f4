//! SAE architectures: one file each, behind two traits, listed in one registry.
//!
//! Each architecture's file holds its config struct (the hyperparameters `cfg.json`
//! and run files name), its maths and its tests:
//!
//! - [`Architecture`], implemented by the config struct: what an SAE of this
//!   architecture *is* — its checks against the widths, its file-form tensors, its
//!   inference `encode`, the hyperparameters that run names, report labels and sweep
//!   axes show ([`Knob`]), its SAELens name, and how to get a trainer for it;
//! - [`Train`], implemented by a training object (for all but inference-only forms such
//!   as GroupMax): initialisation, the loss and its gradient for a batch
//!   ([`Train::train_step`]), the conversion to the file form, extra training state.
//!
//! A training step is written against the step engine
//! ([`crate::kernels::engine::StepEngine`]): the architecture says which latents each
//! token keeps and how the loss is put together; the engine computes the products (fast
//! sparse CPU kernels or the dense reference). Nothing in `arch/` touches a kernel's
//! buffers or raw pointers.
//!
//! Two parameter forms exist. The *training form* is what the optimizer updates (for
//! JumpReLU, `log_threshold`); the *file form* is what a SAELens `sae_weights.safetensors`
//! holds (for JumpReLU, `threshold`; BatchTopK is saved as JumpReLU). `encode` works on
//! the file form; `train_step` on the training form; [`Train::to_file`] converts.
//!
//! Adding an architecture: write `arch/<name>.rs` with a config struct implementing
//! [`Architecture`] and [`Registered`] (and a [`Train`] type if it trains), and add one
//! line to the `architectures!` list below. Everything else — configs, `cfg.json`,
//! SAELens files, run names, report labels, sweep axes, `--arch` — reads the registry.

pub mod common;
pub mod topk_family;

#[cfg(test)]
pub(crate) mod gradcheck;

use serde::{Deserialize, Serialize};

use crate::config::Dims;
use crate::error::{Error, Result};
use crate::kernels::engine::StepEngine;
use crate::latents::Latents;
use crate::rng::Rng;
use crate::tensor::{Matrix, ParamSet};

/// The registry: every architecture's module, config type, `ArchConfig` variant and
/// name. Generates the modules, [`ArchConfig`] and its exhaustive dispatch.
macro_rules! architectures {
    ($($(#[$doc:meta])* $module:ident::$config:ident => $variant:ident = $name:literal,)+) => {
        $(pub mod $module;)+
        $(pub use $module::$config;)+

        /// An SAE architecture and its hyperparameters: one variant per architecture,
        /// each holding that architecture's own config struct.
        ///
        /// The tag `architecture` names it, as in a TOML run file:
        /// ```toml
        /// [sae]
        /// architecture = "topk"
        /// k = 32
        /// ```
        #[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
        #[serde(tag = "architecture")]
        pub enum ArchConfig {
            $($(#[$doc])* #[serde(rename = $name)] $variant($module::$config),)+
        }

        $(impl From<$module::$config> for ArchConfig {
            fn from(c: $module::$config) -> Self {
                ArchConfig::$variant(c)
            }
        })+

        impl ArchConfig {
            /// Every architecture's name, in registry order.
            pub const NAMES: &'static [&'static str] = &[$($name),+];

            /// The short name used in configs and in saelab's metadata (`topk`, ...).
            pub fn name(&self) -> &'static str {
                match self {
                    $(ArchConfig::$variant(_) => $name,)+
                }
            }

            /// The architecture's definition (checks, tensors, encode, trainer, ...).
            pub fn spec(&self) -> &dyn Architecture {
                match self {
                    $(ArchConfig::$variant(c) => c,)+
                }
            }

            /// Default hyperparameters for the architecture called `name`, with `k` where
            /// the architecture has one.
            pub fn default_for(name: &str, k: usize) -> Result<ArchConfig> {
                $(if name == $name {
                    return Ok(<$module::$config as Registered>::with_k(k).into());
                })+
                Err(Error::config(format!(
                    "unknown architecture {name:?} (known: {})",
                    ArchConfig::NAMES.join(", ")
                )))
            }
        }
    };
}

architectures! {
    /// ReLU encoder with the April-2024 L1 penalty `λ Σ_i f_i ‖W_dec,i‖`.
    relu::ReluConfig => Relu = "relu",
    /// TopK (OpenAI): the k largest pre-activations per token; AuxK on dead latents.
    topk::TopKConfig => Topk = "topk",
    /// BatchTopK: the `k · B` largest pre-activations across the batch; saved as JumpReLU.
    batchtopk::BatchTopKConfig => Batchtopk = "batchtopk",
    /// JumpReLU (Gemma Scope): `f = pre · H(pre − θ)`, MSE + λ·L0 with STE for θ.
    jumprelu::JumpReluConfig => Jumprelu = "jumprelu",
    /// Gated SAE: a gate path decides which latents fire, a magnitude path how much.
    gated::GatedConfig => Gated = "gated",
    /// EleutherAI sparsify's GroupMax (inference only).
    groupmax::GroupMaxConfig => Groupmax = "groupmax",
    /// ReLU with a plain L1 penalty and unit-norm decoder rows (Bricken et al. 2023).
    vanilla::VanillaConfig => Vanilla = "vanilla",
}

/// A hyperparameter as run names, report labels and sweep axes show it.
#[derive(Clone, Debug, PartialEq)]
pub struct Knob {
    /// The config field (`k`, `l1_coefficient`).
    pub key: &'static str,
    /// Its short form in run and sweep names (`k`, `lam`).
    pub short: &'static str,
    /// Its symbol in labels (`k`, `λ`).
    pub symbol: &'static str,
    /// The value as written (`32`, `5`, `0.001`).
    pub value: String,
    /// Whether it sets the SAE's sparsity (shown in report labels).
    pub sparsity: bool,
}

impl Knob {
    /// A knob for `key` showing `value`.
    pub fn new(key: &'static str, value: impl ToString) -> Knob {
        Knob {
            key,
            short: key,
            symbol: key,
            value: value.to_string(),
            sparsity: false,
        }
    }

    /// The same knob, marked as one that sets the sparsity, with its short form and
    /// symbol.
    pub fn sparsity(mut self, short: &'static str, symbol: &'static str) -> Knob {
        self.short = short;
        self.symbol = symbol;
        self.sparsity = true;
        self
    }
}

/// How SAELens names an architecture in `cfg.json`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SaeLensForm {
    /// The base `architecture` string (`standard`, `topk`, ...); transcoders add a
    /// suffix.
    pub architecture: &'static str,
    /// The `k` that SAELens's config carries for this architecture, if any.
    pub k: Option<usize>,
}

impl SaeLensForm {
    /// The form named `architecture`, with no `k`.
    pub fn named(architecture: &'static str) -> Option<SaeLensForm> {
        Some(SaeLensForm {
            architecture,
            k: None,
        })
    }
}

/// An SAE architecture, implemented by its config struct (see the module docs).
pub trait Architecture: Send + Sync {
    /// Checks the hyperparameters against the SAE's widths; a short message on failure.
    fn check(&self, _dims: Dims) -> std::result::Result<(), String> {
        Ok(())
    }

    /// The file-form tensors with their shapes (SAELens names; an optional `W_skip` is
    /// not listed).
    fn file_params(&self, dims: Dims) -> Vec<(&'static str, Vec<usize>)>;

    /// Inference: sparse latents `[B, n]` for `x_enc [B, d_in]` (input already normalised
    /// and, where the config says so, with `b_dec` subtracted), from file-form
    /// parameters.
    fn encode(&self, params: &ParamSet, x_enc: &Matrix) -> Latents;

    /// The hyperparameters shown in run names, report labels and sweep axes.
    fn knobs(&self) -> Vec<Knob>;

    /// How SAELens names this architecture; `None` when SAELens has no such class.
    fn saelens(&self) -> Option<SaeLensForm>;

    /// The architecture files of this one are written as, when it is another one
    /// (BatchTopK: JumpReLU).
    fn saved_as(&self) -> Option<ArchConfig> {
        None
    }

    /// Whether SAELens's `rescale_acts_by_decoder_norm` is defined for it.
    fn rescales_by_decoder_norm(&self) -> bool {
        false
    }

    /// A fresh training object for an SAE of `dims`, or why this architecture cannot be
    /// trained with these settings.
    fn trainer(&self, dims: Dims) -> std::result::Result<Box<dyn Train>, String>;
}

/// What the registry needs of a config type beyond [`Architecture`].
pub trait Registered: Architecture + Sized {
    /// The default hyperparameters, with `k` where the architecture has one.
    fn with_k(k: usize) -> Self;
}

/// What the trainer tells an architecture about the current step.
#[derive(Clone, Copy, Debug)]
pub struct StepContext<'a> {
    /// Multiplier in `[0, 1]` on the sparsity coefficient (λ warm-up).
    pub sparsity_scale: f32,
    /// `dead[j]` is true when latent `j` has not fired for the configured number of tokens.
    pub dead: &'a [bool],
}

impl<'a> StepContext<'a> {
    /// A context with sparsity scale `sparsity_scale` and dead set `dead`.
    pub fn new(sparsity_scale: f32, dead: &'a [bool]) -> Self {
        StepContext {
            sparsity_scale,
            dead,
        }
    }
}

/// One training step's inputs, as the trainer hands them to [`Train::train_step`].
pub struct Step<'a> {
    /// The engine that computes the step's products.
    pub engine: &'a mut dyn StepEngine,
    /// Training-form parameters.
    pub params: &'a ParamSet,
    /// The batch `[B, d_in]`: normalised input, `b_dec` *not* subtracted.
    pub x: &'a Matrix,
    /// The warm-up scale and the dead latents.
    pub ctx: StepContext<'a>,
    /// Where the gradients go: same names and shapes as `params`, every entry
    /// overwritten, whatever it held before, so that the trainer never clears them.
    pub grads: &'a mut ParamSet,
}

impl<'a> Step<'a> {
    /// The step on `x` with `params` on `engine`, writing into `grads`.
    pub fn new(
        engine: &'a mut dyn StepEngine,
        params: &'a ParamSet,
        x: &'a Matrix,
        ctx: StepContext<'a>,
        grads: &'a mut ParamSet,
    ) -> Self {
        Step {
            engine,
            params,
            x,
            ctx,
            grads,
        }
    }
}

/// The result of one forward/backward pass on a batch.
#[derive(Clone, Debug, Default)]
pub struct StepOutput {
    /// Total loss (the quantity whose gradient was computed).
    pub loss: f64,
    /// Named loss terms, each already multiplied by its coefficient
    /// (`mse`, `l1`, `l0`, `aux`, ...). They sum to `loss`.
    pub terms: Vec<(&'static str, f64)>,
    /// Latents that fired in this batch (training-time activations), for L0 and
    /// dead-latent tracking.
    pub latents: Latents,
    /// Σ over the batch of ‖x − x̂‖² (for FVU).
    pub sq_err: f64,
}

/// Training of one architecture: parameters, loss and gradient.
///
/// Shapes: `x` is `[B, d_in]`; latents are `[B, n]` (sparse); reconstructions `[B, d_out]`.
pub trait Train: Send {
    /// Fresh training-form parameters for `dims`. The default is the tied
    /// initialisation ([`common::init_tied`]): `W_dec` rows random unit directions,
    /// `W_enc = W_decᵀ`, biases zero; architectures that prescribe otherwise override
    /// it. The trainer sets `b_dec` from data afterwards.
    fn init(&self, dims: Dims, rng: &mut Rng) -> ParamSet {
        common::init_tied(dims, 1.0, rng)
    }

    /// Forward pass, loss and gradient of one batch (see [`Step`]): the gradient is
    /// *written* into `step.grads`, every entry of it.
    fn train_step(&mut self, step: Step<'_>) -> StepOutput;

    /// Whether decoder rows are kept at unit norm (renormalised after each step, with the
    /// gradient component parallel to each row removed before it). True by default, as
    /// every architecture but the norm-weighted L1 ReLU SAE keeps them so.
    fn unit_norm_decoder(&self) -> bool {
        true
    }

    /// File-form parameters and the architecture config to save them under.
    fn to_file(&self, params: &ParamSet) -> (ParamSet, ArchConfig);

    /// Architecture-specific training state beyond the parameters (e.g. BatchTopK's
    /// threshold EMA), for checkpoints.
    fn state(&self) -> serde_json::Value {
        serde_json::Value::Null
    }

    /// Restores what [`Train::state`] returned.
    fn load_state(&mut self, _state: &serde_json::Value) -> Result<()> {
        Ok(())
    }
}

impl ArchConfig {
    /// A training object for an SAE of `dims`; a config error naming the architecture
    /// when it cannot be trained.
    pub fn trainer(&self, dims: Dims) -> Result<Box<dyn Train>> {
        self.spec().trainer(dims).map_err(Error::Config)
    }

    /// The names of the architectures saelab can train, and of those with a `k`, in
    /// registry order (for help texts): an architecture trains when its default config
    /// yields a trainer.
    pub fn trainable_names() -> (Vec<&'static str>, Vec<&'static str>) {
        let dims = Dims::square(1, 1);
        let trainable: Vec<&'static str> = ArchConfig::NAMES
            .iter()
            .copied()
            .filter(|name| {
                let a = ArchConfig::default_for(name, 1).expect("registered name");
                a.spec().trainer(dims).is_ok()
            })
            .collect();
        let with_k = trainable
            .iter()
            .copied()
            .filter(|name| {
                let a = ArchConfig::default_for(name, 1).expect("registered name");
                a.knob("k").is_some()
            })
            .collect();
        (trainable, with_k)
    }

    /// The hyperparameters shown in run names, labels and sweep axes.
    pub fn knobs(&self) -> Vec<Knob> {
        self.spec().knobs()
    }

    /// The value of the hyperparameter `key`, if this architecture has it.
    pub fn knob(&self, key: &str) -> Option<String> {
        self.knobs()
            .into_iter()
            .find(|k| k.key == key)
            .map(|k| k.value)
    }

    /// The report label of its sparsity setting: `k=32`, `λ=5`, `λ0=1 θ0=2`.
    pub fn sparsity_label(&self) -> String {
        let parts: Vec<String> = self
            .knobs()
            .into_iter()
            .filter(|k| k.sparsity)
            .map(|k| format!("{}={}", k.symbol, k.value))
            .collect();
        parts.join(" ")
    }

    /// The short form of hyperparameter `key` in sweep names (`lam` for
    /// `l1_coefficient`), from whichever architecture declares it; `None` if none does.
    pub fn short_key(key: &str) -> Option<&'static str> {
        ArchConfig::NAMES.iter().find_map(|name| {
            ArchConfig::default_for(name, 1)
                .expect("registered name")
                .knobs()
                .into_iter()
                .find(|k| k.key == key)
                .map(|k| k.short)
        })
    }

    /// The config its files are written under (BatchTopK: JumpReLU with default
    /// training hyperparameters; every other architecture: itself).
    pub fn file_form(&self) -> ArchConfig {
        self.spec().saved_as().unwrap_or_else(|| self.clone())
    }

    /// The architecture SAELens's base name `architecture` (`standard`, `topk`, ...) is
    /// read as, with SAELens's `k` where it has one.
    pub fn from_saelens(architecture: &str, k: Option<usize>) -> Option<ArchConfig> {
        ArchConfig::NAMES.iter().find_map(|name| {
            let a = ArchConfig::default_for(name, k.unwrap_or(0)).expect("registered name");
            let form = a.spec().saelens()?;
            (form.architecture == architecture && a.spec().saved_as().is_none()).then_some(a)
        })
    }

    /// The SAELens base names saelab reads, for error messages.
    pub fn saelens_names() -> Vec<&'static str> {
        ArchConfig::NAMES
            .iter()
            .filter_map(|name| {
                let a = ArchConfig::default_for(name, 1).expect("registered name");
                let form = a.spec().saelens()?;
                a.spec().saved_as().is_none().then_some(form.architecture)
            })
            .collect()
    }

    /// This config with its `k` (if it has a field of that name) set to `k`.
    pub fn replace_k(&self, k: usize) -> ArchConfig {
        let mut v = serde_json::to_value(self).expect("configs serialise");
        if let Some(f) = v.get_mut("k") {
            *f = serde_json::json!(k);
        }
        serde_json::from_value(v).expect("the same config with another k")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::engine::EngineKind;

    /// A copy of `p`'s shapes filled with NaN: an entry a step fails to write shows.
    pub(crate) fn nan_like(p: &ParamSet) -> ParamSet {
        let mut g = p.zeros_like();
        for (_, t) in g.iter_mut() {
            t.data.fill(f32::NAN);
        }
        g
    }

    #[test]
    fn train_step_overwrites_every_gradient_entry() {
        let dims = Dims::square(13, 67);
        let some_dead: Vec<bool> = (0..67).map(|j| j % 5 == 2).collect();
        let all_dead = vec![true; 67];
        let topk = |aux_k| {
            ArchConfig::Topk(topk::TopKConfig {
                k: 5,
                aux_k,
                aux_coefficient: 1.0 / 32.0,
            })
        };
        let batchtopk = |aux_k| {
            ArchConfig::Batchtopk(batchtopk::BatchTopKConfig {
                k: 5,
                aux_k,
                aux_coefficient: 1.0 / 32.0,
                threshold_momentum: 0.1,
            })
        };
        // (config, dead set): AuxK over a small dead set takes the dense route, over
        // all latents with a small k_aux the sparse one.
        let cases = [
            (topk(6), &some_dead),
            (topk(5), &all_dead),
            (batchtopk(6), &some_dead),
            (batchtopk(5), &all_dead),
            (
                ArchConfig::Jumprelu(jumprelu::JumpReluConfig {
                    l0_coefficient: 0.05,
                    bandwidth: 0.05,
                    init_threshold: 0.1,
                }),
                &some_dead,
            ),
            (
                ArchConfig::Relu(relu::ReluConfig {
                    l1_coefficient: 2.0,
                }),
                &some_dead,
            ),
            (
                ArchConfig::Gated(gated::GatedConfig {
                    l1_coefficient: 1.0,
                }),
                &some_dead,
            ),
        ];
        // The CPU engine on its sparse route, on its dense route, and the reference.
        let engines: [fn() -> Box<dyn StepEngine>; 3] = [
            || Box::new(crate::kernels::cpu::CpuEngine::with_dense_above(1.0)),
            || Box::new(crate::kernels::cpu::CpuEngine::with_dense_above(0.0)),
            || EngineKind::Reference.build(),
        ];
        for (cfg, dead) in cases {
            for (e, engine) in engines.iter().enumerate() {
                let mut rng = Rng::new(4);
                let (mut a1, mut a2) = (cfg.trainer(dims).unwrap(), cfg.trainer(dims).unwrap());
                let (mut e1, mut e2) = (engine(), engine());
                let p = gradcheck::perturbed_params(a1.as_ref(), dims, &mut rng, 0.1);
                let ctx = StepContext::new(1.0, dead);
                // Two steps each, so that state-dependent routes (BatchTopK's threshold)
                // are taken alike.
                for step in 0..2 {
                    let x = gradcheck::random_batch(&mut rng, 41, 13);
                    let mut g1 = p.zeros_like();
                    let mut g2 = nan_like(&p);
                    let o1 = a1.train_step(Step::new(e1.as_mut(), &p, &x, ctx, &mut g1));
                    let o2 = a2.train_step(Step::new(e2.as_mut(), &p, &x, ctx, &mut g2));
                    assert_eq!(o1.loss.to_bits(), o2.loss.to_bits());
                    for ((name, t1), (_, t2)) in g1.iter().zip(g2.iter()) {
                        for (i, (u, v)) in t1.data.iter().zip(&t2.data).enumerate() {
                            assert!(
                                u.to_bits() == v.to_bits(),
                                "{} (engine {e}, step {step}): {name}[{i}] is \
                                 {u} from zeroed gradients, {v} from NaN-filled ones",
                                cfg.name()
                            );
                        }
                    }
                }
            }
        }
    }

    /// For every trainable architecture, the file form holds exactly the tensors
    /// `file_params` names, under the config `file_form` gives, and its inference
    /// `encode` reproduces the training step's latents bit for bit. (BatchTopK's file
    /// form cuts at the threshold EMA, not at the batch's own k·B-th value: its file
    /// has its own test.)
    #[test]
    fn file_form_encodes_exactly_the_training_latents() {
        let dims = Dims::square(8, 40);
        let dead = vec![false; 40];
        let (trainable, _) = ArchConfig::trainable_names();
        for name in trainable.into_iter().filter(|&n| n != "batchtopk") {
            let cfg = ArchConfig::default_for(name, 5).unwrap();
            let mut a = cfg.trainer(dims).unwrap();
            let mut rng = Rng::new(3);
            let p = gradcheck::perturbed_params(a.as_ref(), dims, &mut rng, 0.1);
            let x = gradcheck::random_batch(&mut rng, 33, 8);
            let ctx = StepContext::new(1.0, &dead);
            let out = gradcheck::step_on_cpu(a.as_mut(), &p, &x, ctx);
            let (file, saved) = a.to_file(&p);
            assert_eq!(saved, cfg.file_form(), "{name}");
            let mut names: Vec<&str> = file.iter().map(|(n, _)| n).collect();
            let mut want: Vec<&str> = saved.spec().file_params(dims).iter().map(|t| t.0).collect();
            names.sort();
            want.sort();
            assert_eq!(names, want, "{name}");
            let x_enc = common::subtract_bias(&x, &p.get("b_dec").data);
            let enc = saved.spec().encode(&file, &x_enc);
            let nnz = out.latents.nnz();
            assert!(nnz > 0 && nnz < 33 * 40, "{name}: {nnz} latents fired");
            assert_eq!(enc, out.latents, "{name}");
        }
    }

    #[test]
    fn the_registry_round_trips_every_architecture() {
        for name in ArchConfig::NAMES {
            let a = ArchConfig::default_for(name, 4).unwrap();
            assert_eq!(a.name(), *name);
            let json = serde_json::to_value(&a).unwrap();
            assert_eq!(json["architecture"], *name);
            let back: ArchConfig = serde_json::from_value(json).unwrap();
            assert_eq!(back, a);
            if let Some(form) = a.spec().saelens() {
                if a.spec().saved_as().is_none() {
                    let read = ArchConfig::from_saelens(form.architecture, form.k).unwrap();
                    assert_eq!(read.name(), *name);
                }
            }
        }
        assert!(ArchConfig::default_for("nope", 1).is_err());
        let bad: std::result::Result<ArchConfig, _> =
            serde_json::from_value(serde_json::json!({"architecture": "topk", "k": 3, "kk": 1}));
        assert!(bad.is_err(), "unknown fields are refused");
    }
}
