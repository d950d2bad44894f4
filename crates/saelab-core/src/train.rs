//! The SAE trainer: one SAE, fed batches by a driver.
//!
//! The trainer owns everything shared by all architectures — Adam, the schedules,
//! input normalisation, unit-norm decoder rows with parallel-gradient removal,
//! dead-latent tracking, checkpoints — and calls the architecture's [`Train`] object for
//! the loss and its gradient, on a step engine ([`StepEngine`]: the fast CPU kernels or,
//! with `reference_kernels`, the dense reference). It does not read data: a driver (see [`crate::fit`]) hands it batches,
//! so one pass over the data (or over a model) can feed several trainers at once.
//!
//! Determinism: for a given seed, data order and thread count, every step is
//! bit-for-bit reproducible, and a run restored from a checkpoint continues exactly as
//! the uninterrupted run would have.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::arch::{Step, StepContext, Train};
use crate::config::SaeConfig;
use crate::error::{Error, Result};
use crate::io;
use crate::kernels::engine::{EngineKind, StepEngine};
use crate::optim::{clip_grad_norm, Adam, AdamConfig};
use crate::rng::Rng;
use crate::schedule::Schedule;
use crate::tensor::{Matrix, ParamSet, Tensor};
use crate::tensorfile::safetensors::{self, TensorOut};

/// How `b_dec` is initialised from a data sample.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum BDecInit {
    /// Geometric median (Weiszfeld iterations).
    #[default]
    GeometricMedian,
    /// Mean.
    Mean,
    /// Zeros.
    Zeros,
}

/// Hyperparameters of a training run (everything but the architecture).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainConfig {
    /// Tokens per optimizer step.
    #[serde(default = "d::batch_size")]
    pub batch_size: usize,
    /// Training tokens in total (steps = total_tokens / batch_size).
    #[serde(default = "d::total_tokens")]
    pub total_tokens: u64,
    /// Base learning rate.
    #[serde(default = "d::lr")]
    pub lr: f32,
    /// Adam β1, β2, ε.
    #[serde(default)]
    pub adam: AdamConfig,
    /// Steps of linear LR warm-up.
    #[serde(default)]
    pub lr_warmup_steps: u64,
    /// Final fraction of training over which the LR decays linearly to zero.
    #[serde(default = "d::lr_decay_fraction")]
    pub lr_decay_fraction: f64,
    /// Steps of linear warm-up of the sparsity coefficient (ReLU, JumpReLU, Gated).
    #[serde(default)]
    pub sparsity_warmup_steps: u64,
    /// Clip the global gradient norm to this value.
    #[serde(default)]
    pub grad_clip: Option<f32>,
    /// Scale inputs so that E‖x‖² = d during training (folded into the saved weights).
    #[serde(default = "d::yes")]
    pub normalize_inputs: bool,
    /// Initialisation of `b_dec`.
    #[serde(default)]
    pub b_dec_init: BDecInit,
    /// A latent is dead once it has not fired for this many tokens (drives AuxK and
    /// the logged dead fraction).
    #[serde(default = "d::dead_after_tokens")]
    pub dead_after_tokens: u64,
    /// Seed of the initialisation and of the data order.
    #[serde(default)]
    pub seed: u64,
    /// Write a checkpoint every this many steps (0: only at the end).
    #[serde(default = "d::checkpoint_every")]
    pub checkpoint_every: u64,
    /// Log metrics every this many steps.
    #[serde(default = "d::log_every")]
    pub log_every: u64,
    /// Evaluate on the validation split every this many steps (0: only at the end).
    #[serde(default)]
    pub eval_every: u64,
    /// Fraction of the data held out for validation.
    #[serde(default = "d::val_fraction")]
    pub val_fraction: f64,
    /// Use the dense reference kernels (slow; for checking the fast ones).
    #[serde(default)]
    pub reference_kernels: bool,
}

mod d {
    pub fn batch_size() -> usize {
        4096
    }
    pub fn total_tokens() -> u64 {
        10_000_000
    }
    pub fn lr() -> f32 {
        4e-4
    }
    pub fn lr_decay_fraction() -> f64 {
        0.2
    }
    pub fn yes() -> bool {
        true
    }
    pub fn dead_after_tokens() -> u64 {
        1_000_000
    }
    pub fn checkpoint_every() -> u64 {
        1000
    }
    pub fn log_every() -> u64 {
        10
    }
    pub fn val_fraction() -> f64 {
        0.02
    }
}

impl Default for TrainConfig {
    fn default() -> Self {
        serde_json::from_str("{}").expect("defaults are valid")
    }
}

impl TrainConfig {
    /// Optimizer steps in the run.
    pub fn total_steps(&self) -> u64 {
        (self.total_tokens / self.batch_size.max(1) as u64).max(1)
    }

    /// The LR and sparsity schedule.
    pub fn schedule(&self) -> Schedule {
        Schedule {
            total_steps: self.total_steps(),
            lr_warmup_steps: self.lr_warmup_steps,
            lr_decay_fraction: self.lr_decay_fraction,
            sparsity_warmup_steps: self.sparsity_warmup_steps,
        }
    }

    /// Checks values that would make training meaningless.
    pub fn validate(&self) -> Result<()> {
        if self.batch_size == 0 {
            return Err(Error::config("batch_size must be positive"));
        }
        if !(self.lr > 0.0 && self.lr.is_finite()) {
            return Err(Error::config("lr must be a positive number"));
        }
        if !(0.0..=1.0).contains(&self.lr_decay_fraction) {
            return Err(Error::config("lr_decay_fraction must be in [0, 1]"));
        }
        if !(0.0..1.0).contains(&self.val_fraction) {
            return Err(Error::config("val_fraction must be in [0, 1)"));
        }
        Ok(())
    }
}

/// What one step did, for logs and progress bars.
#[derive(Clone, Debug, Serialize)]
pub struct StepReport {
    /// Steps completed (1-based after the step).
    pub step: u64,
    /// Tokens consumed so far.
    pub tokens: u64,
    /// Learning rate used.
    pub lr: f32,
    /// Sparsity warm-up multiplier used.
    pub sparsity_scale: f32,
    /// Total loss.
    pub loss: f64,
    /// Loss terms by name.
    pub terms: Vec<(&'static str, f64)>,
    /// Mean non-zero latents per token in this batch.
    pub l0: f64,
    /// FVU on this batch (normalised inputs).
    pub fvu: f64,
    /// Fraction of latents dead (not fired for `dead_after_tokens`).
    pub dead_frac: f64,
    /// Global gradient norm before clipping, if clipping is on.
    pub grad_norm: Option<f32>,
}

/// Trains one SAE.
pub struct Trainer {
    cfg: TrainConfig,
    sae_cfg: SaeConfig,
    arch: Box<dyn Train>,
    /// The engine the steps run on, and the other kind once it has been used (the
    /// benchmark alternates them on one trainer).
    engine: Box<dyn StepEngine>,
    spare_engine: Option<Box<dyn StepEngine>>,
    params: ParamSet,
    grads: ParamSet,
    adam: Adam,
    step: u64,
    tokens_since_fired: Vec<u64>,
    input_scale: f32,
    /// Latents counted as dead regardless of tracking ([`Trainer::set_forced_dead`]).
    forced_dead: Option<Vec<bool>>,
    /// The scaled batch, reused between steps.
    scaled: Matrix,
}

impl Trainer {
    /// A fresh trainer for the SAE `sae_cfg`. `sample` `[rows, d_in]` is raw data used
    /// for the input scale and the `b_dec` initialisation.
    pub fn new(cfg: TrainConfig, sae_cfg: SaeConfig, sample: &Matrix) -> Result<Self> {
        cfg.validate()?;
        let arch = validate_trainable(&sae_cfg)?;
        if sample.cols != sae_cfg.d_in || sample.rows == 0 {
            return Err(Error::Shape(format!(
                "initialisation sample is [{}, {}], the SAE needs d_in = {}",
                sample.rows, sample.cols, sae_cfg.d_in
            )));
        }
        let mut rng = Rng::new(cfg.seed);
        let mut params = arch.init(sae_cfg.dims(), &mut rng);
        let input_scale = if cfg.normalize_inputs {
            let mean_sq = sample
                .data
                .iter()
                .map(|&v| (v as f64) * (v as f64))
                .sum::<f64>()
                / sample.rows as f64;
            if mean_sq > 0.0 {
                (sae_cfg.d_in as f64 / mean_sq).sqrt() as f32
            } else {
                1.0
            }
        } else {
            1.0
        };
        let mut scaled = sample.clone();
        scaled.data.iter_mut().for_each(|v| *v *= input_scale);
        let b_dec = match cfg.b_dec_init {
            BDecInit::GeometricMedian => geometric_median(&scaled, 100, 1e-6),
            BDecInit::Mean => column_mean(&scaled),
            BDecInit::Zeros => vec![0.0; sae_cfg.d_in],
        };
        if sae_cfg.d_out == sae_cfg.d_in {
            params.get_mut("b_dec").data = b_dec;
        }
        let grads = params.zeros_like();
        let adam = Adam::new(cfg.adam, &params);
        Ok(Trainer {
            tokens_since_fired: vec![0; sae_cfg.d_sae],
            engine: engine_kind(&cfg).build(),
            spare_engine: None,
            cfg,
            sae_cfg,
            arch,
            params,
            grads,
            adam,
            step: 0,
            input_scale,
            forced_dead: None,
            scaled: Matrix::default(),
        })
    }

    /// Steps completed.
    pub fn step_count(&self) -> u64 {
        self.step
    }

    /// Whether the run has done all its steps.
    pub fn finished(&self) -> bool {
        self.step >= self.cfg.total_steps()
    }

    /// The run's hyperparameters.
    pub fn train_config(&self) -> &TrainConfig {
        &self.cfg
    }

    /// The SAE being trained (architecture as configured for training).
    pub fn sae_config(&self) -> &SaeConfig {
        &self.sae_cfg
    }

    /// The scalar inputs are multiplied by during training.
    pub fn input_scale(&self) -> f32 {
        self.input_scale
    }

    /// Training-form parameters (inputs scaled by [`Trainer::input_scale`]).
    pub fn params(&self) -> &ParamSet {
        &self.params
    }

    /// Sets the base learning rate for the following steps (the benchmark settles the
    /// sparsity of W2/W3 at a higher rate before timing).
    pub fn set_learning_rate(&mut self, lr: f32) -> Result<()> {
        if !(lr > 0.0 && lr.is_finite()) {
            return Err(Error::config("lr must be a positive number"));
        }
        self.cfg.lr = lr;
        Ok(())
    }

    /// Switches between the fast kernels and the dense reference kernels for the
    /// following steps (same maths; the benchmark times both on one trainer).
    pub fn set_reference_kernels(&mut self, on: bool) {
        self.cfg.reference_kernels = on;
        let want = engine_kind(&self.cfg);
        if self.engine.kind() != want {
            let other = self.spare_engine.take().unwrap_or_else(|| want.build());
            self.spare_engine = Some(std::mem::replace(&mut self.engine, other));
        }
    }

    /// Replaces the step engine (tests pin the CPU engine's route this way).
    pub fn set_engine(&mut self, engine: Box<dyn StepEngine>) {
        self.engine = engine;
        self.spare_engine = None;
    }

    /// Counts the latents where `dead[j]` is true as dead (for the AuxK loss and the
    /// dead fraction) in addition to those found by tracking; `None` restores plain
    /// tracking. For benchmarks and tests that need a dead set of a known size.
    pub fn set_forced_dead(&mut self, dead: Option<Vec<bool>>) -> Result<()> {
        if let Some(d) = &dead {
            if d.len() != self.sae_cfg.d_sae {
                return Err(Error::Shape(format!(
                    "forced dead mask has {} entries, the SAE has {} latents",
                    d.len(),
                    self.sae_cfg.d_sae
                )));
            }
        }
        self.forced_dead = dead;
        Ok(())
    }

    fn is_dead(&self, j: usize) -> bool {
        self.tokens_since_fired[j] >= self.cfg.dead_after_tokens
            || self.forced_dead.as_ref().is_some_and(|f| f[j])
    }

    /// Fraction of latents that have not fired for `dead_after_tokens` tokens.
    pub fn dead_fraction(&self) -> f64 {
        let dead = (0..self.tokens_since_fired.len())
            .filter(|&j| self.is_dead(j))
            .count();
        dead as f64 / self.tokens_since_fired.len().max(1) as f64
    }

    /// One optimizer step on `batch` `[B, d_in]` (raw, unscaled activations).
    pub fn step(&mut self, batch: &Matrix) -> Result<StepReport> {
        if batch.cols != self.sae_cfg.d_in {
            return Err(Error::Shape(format!(
                "batch has width {}, the SAE needs d_in = {}",
                batch.cols, self.sae_cfg.d_in
            )));
        }
        let _span = tracing::debug_span!("step", step = self.step + 1).entered();
        // Scaled copy of the batch into a buffer kept between steps (no allocation).
        let mut x = std::mem::take(&mut self.scaled);
        scale_into(batch, self.input_scale, &mut x);
        let schedule = self.cfg.schedule();
        let sparsity_scale = schedule.sparsity_scale(self.step);
        let dead: Vec<bool> = (0..self.tokens_since_fired.len())
            .map(|j| self.is_dead(j))
            .collect();
        let ctx = StepContext::new(sparsity_scale, &dead);
        let step = Step::new(self.engine.as_mut(), &self.params, &x, ctx, &mut self.grads);
        let out = self.arch.train_step(step);
        if !out.loss.is_finite() {
            return Err(Error::config(format!(
                "loss became {} at step {}; lower the learning rate or check the inputs",
                out.loss,
                self.step + 1
            )));
        }
        let unit_norm = self.arch.unit_norm_decoder();
        let lr = self.cfg.lr * schedule.lr_scale(self.step);
        let adam_span = tracing::debug_span!("adam").entered();
        let grad_norm = if unit_norm && self.cfg.grad_clip.is_none() {
            // Parallel-gradient removal, Adam and renormalisation in one pass.
            let d = self.params.get("W_dec").cols();
            self.adam
                .step_unit_rows(&mut self.params, &self.grads, lr, Some(("W_dec", d)));
            None
        } else {
            if unit_norm {
                remove_parallel_component(self.params.get("W_dec"), self.grads.get_mut("W_dec"));
            }
            let grad_norm = self
                .cfg
                .grad_clip
                .map(|c| clip_grad_norm(&mut self.grads, c));
            self.adam.step(&mut self.params, &self.grads, lr);
            if unit_norm {
                normalize_rows(self.params.get_mut("W_dec"));
            }
            grad_norm
        };
        drop(adam_span);
        // Dead-latent tracking: tokens since each latent last fired.
        let b = x.rows as u64;
        let mut last_row: Vec<Option<usize>> = vec![None; self.sae_cfg.d_sae];
        for r in 0..out.latents.rows() {
            let (idx, val) = out.latents.row(r);
            for (&j, &v) in idx.iter().zip(val) {
                if v != 0.0 {
                    last_row[j as usize] = Some(r);
                }
            }
        }
        for (t, last) in self.tokens_since_fired.iter_mut().zip(&last_row) {
            *t = match last {
                Some(r) => b - 1 - *r as u64,
                None => t.saturating_add(b),
            };
        }
        self.step += 1;
        let nnz = out.latents.val.iter().filter(|&&v| v != 0.0).count();
        let total_var = centered_sq_sum(&x);
        self.scaled = x;
        Ok(StepReport {
            step: self.step,
            tokens: self.step * self.cfg.batch_size as u64,
            lr,
            sparsity_scale,
            loss: out.loss,
            terms: out.terms,
            l0: nnz as f64 / b.max(1) as f64,
            fvu: out.sq_err / total_var.max(f64::MIN_POSITIVE),
            dead_frac: self.dead_fraction(),
            grad_norm,
        })
    }

    /// The SAE in file form for raw (unscaled) inputs: the input scale `s` is folded in
    /// (`W_enc · s`, `W_dec / s`, `b_dec / s`), and the architecture converts its
    /// training form (e.g. BatchTopK → JumpReLU).
    pub fn export(&self) -> (SaeConfig, ParamSet) {
        let (mut p, arch_cfg) = self.arch.to_file(&self.params);
        let s = self.input_scale;
        if s != 1.0 {
            for (name, t) in p.iter_mut() {
                match name {
                    "W_enc" => t.data.iter_mut().for_each(|v| *v *= s),
                    "W_dec" | "b_dec" => t.data.iter_mut().for_each(|v| *v /= s),
                    _ => {}
                }
            }
        }
        let mut cfg = self.sae_cfg.clone();
        if arch_cfg.name() != self.sae_cfg.arch.name() {
            cfg.metadata.trained_as = Some(self.sae_cfg.arch.name().to_string());
        }
        cfg.arch = arch_cfg;
        cfg.metadata.folded_input_scale = (s != 1.0).then_some(s);
        cfg.metadata.training_tokens = Some(self.step * self.cfg.batch_size as u64);
        (cfg, p)
    }

    /// Writes the complete training state into `dir` (which must exist):
    /// `trainer_state.safetensors` (parameters, Adam moments, dead-latent counters) and
    /// `trainer_state.json` (step, configs, scale, architecture state, and `extra` —
    /// the driver's data position).
    pub fn write_state(&self, dir: &Path, extra: serde_json::Value) -> Result<()> {
        let mut tensors: Vec<(String, Vec<usize>, Vec<f32>)> = Vec::new();
        for (prefix, set) in [
            ("param.", &self.params),
            ("adam_m.", &self.adam.m),
            ("adam_v.", &self.adam.v),
        ] {
            for (name, t) in set.iter() {
                tensors.push((format!("{prefix}{name}"), t.shape.clone(), t.data.clone()));
            }
        }
        // Counters are stored as two f32 halves of the u64 to stay exact.
        let (hi, lo): (Vec<f32>, Vec<f32>) = self
            .tokens_since_fired
            .iter()
            .map(|&t| (((t >> 24) as f32), ((t & 0xFF_FFFF) as f32)))
            .unzip();
        let n = hi.len();
        tensors.push(("tokens_since_fired.hi".into(), vec![n], hi));
        tensors.push(("tokens_since_fired.lo".into(), vec![n], lo));
        let out: Vec<TensorOut<'_>> = tensors
            .iter()
            .map(|(name, shape, data)| TensorOut::f32(name, shape, data))
            .collect();
        safetensors::write_file(&dir.join("trainer_state.safetensors"), &out, &[])?;
        let state = TrainerState {
            saelab_version: env!("CARGO_PKG_VERSION").to_string(),
            step: self.step,
            adam_t: self.adam.t,
            input_scale: self.input_scale,
            train: self.cfg.clone(),
            sae: self.sae_cfg.clone(),
            arch_state: self.arch.state(),
            extra,
        };
        let json = serde_json::to_vec_pretty(&state).expect("state serialises");
        io::write_file_atomic(&dir.join("trainer_state.json"), &json)
    }

    /// Restores a trainer from a directory written by [`Trainer::write_state`].
    /// Returns the trainer and the driver's `extra` value.
    pub fn read_state(dir: &Path) -> Result<(Trainer, serde_json::Value)> {
        let json_path = dir.join("trainer_state.json");
        let bytes = std::fs::read(&json_path).map_err(|e| Error::io(&json_path, e))?;
        let state: TrainerState = serde_json::from_slice(&bytes)
            .map_err(|e| Error::bad_file(&json_path, format!("not a saelab trainer state: {e}")))?;
        let st_path = dir.join("trainer_state.safetensors");
        let tensors: Vec<(String, Tensor)> = safetensors::read_f32_file(&st_path)?
            .into_iter()
            .map(|t| (t.name, t.tensor))
            .collect();
        let mut arch = validate_trainable(&state.sae).map_err(|e| in_file(&json_path, e))?;
        arch.load_state(&state.arch_state)?;
        let template = arch.init(state.sae.dims(), &mut Rng::new(0));
        let take = |prefix: &str| -> Result<ParamSet> {
            let mut set = ParamSet::new();
            for (name, t) in template.iter() {
                let key = format!("{prefix}{name}");
                let found = tensors
                    .iter()
                    .find(|(k, _)| *k == key)
                    .ok_or_else(|| Error::bad_file(&st_path, format!("tensor {key} missing")))?;
                if found.1.shape != t.shape {
                    return Err(Error::bad_file(
                        &st_path,
                        format!(
                            "{key} has shape {:?}, expected {:?}",
                            found.1.shape, t.shape
                        ),
                    ));
                }
                set.insert(name, found.1.clone());
            }
            Ok(set)
        };
        let params = take("param.")?;
        let mut adam = Adam::new(state.train.adam, &params);
        adam.m = take("adam_m.")?;
        adam.v = take("adam_v.")?;
        adam.t = state.adam_t;
        let get = |k: &str| {
            tensors
                .iter()
                .find(|(n, _)| n == k)
                .map(|(_, t)| t.data.clone())
                .ok_or_else(|| Error::bad_file(&st_path, format!("tensor {k} missing")))
        };
        let (hi, lo) = (get("tokens_since_fired.hi")?, get("tokens_since_fired.lo")?);
        if hi.len() != state.sae.d_sae || lo.len() != state.sae.d_sae {
            return Err(Error::bad_file(
                &st_path,
                "dead-latent counters have the wrong length",
            ));
        }
        let tokens_since_fired = hi
            .iter()
            .zip(&lo)
            .map(|(&h, &l)| ((h as u64) << 24) | l as u64)
            .collect();
        let trainer = Trainer {
            grads: params.zeros_like(),
            engine: engine_kind(&state.train).build(),
            spare_engine: None,
            cfg: state.train,
            sae_cfg: state.sae,
            arch,
            params,
            adam,
            step: state.step,
            tokens_since_fired,
            input_scale: state.input_scale,
            forced_dead: None,
            scaled: Matrix::default(),
        };
        Ok((trainer, state.extra))
    }
}

#[derive(Serialize, Deserialize)]
struct TrainerState {
    saelab_version: String,
    step: u64,
    adam_t: u64,
    input_scale: f32,
    train: TrainConfig,
    sae: SaeConfig,
    arch_state: serde_json::Value,
    extra: serde_json::Value,
}

/// The training object for `cfg`, or a config error saying why it cannot be trained.
pub fn validate_trainable(cfg: &SaeConfig) -> Result<Box<dyn Train>> {
    if cfg.d_in == 0 || cfg.d_sae == 0 {
        return Err(Error::config("d_in and d_sae must be positive"));
    }
    let arch = cfg.arch.trainer(cfg.dims())?;
    if cfg.d_out != cfg.d_in {
        return Err(Error::config(
            "training transcoders (d_out ≠ d_in) is not supported",
        ));
    }
    Ok(arch)
}

/// The engine a run's settings ask for.
fn engine_kind(cfg: &TrainConfig) -> EngineKind {
    if cfg.reference_kernels {
        EngineKind::Reference
    } else {
        EngineKind::Cpu
    }
}

/// `e` with `path` named, when it is a config error (a state file whose SAE config
/// cannot be trained).
fn in_file(path: &Path, e: Error) -> Error {
    match e {
        Error::Config(m) => Error::bad_file(path, m),
        other => other,
    }
}

/// Removes from each gradient row `g_j` its component along decoder row `w_j`:
/// `g_j ← g_j − (⟨g_j, w_j⟩ / ‖w_j‖²) w_j`. With rows renormalised after the step, this
/// keeps Adam from spending its update on the norm it will lose anyway.
pub fn remove_parallel_component(w: &Tensor, g: &mut Tensor) {
    use rayon::prelude::*;
    let d = w.cols();
    g.data
        .par_chunks_mut(d)
        .zip(w.data.par_chunks(d))
        .for_each(|(g, w)| {
            let ww = crate::kernels::dot(w, w);
            if ww > 0.0 {
                let c = crate::kernels::dot(g, w) / ww;
                crate::kernels::axpy(-c, w, g);
            }
        });
}

/// Scales every row of a 2-D tensor to unit L2 norm (zero rows stay zero).
pub fn normalize_rows(w: &mut Tensor) {
    use rayon::prelude::*;
    let d = w.cols();
    w.data.par_chunks_mut(d).for_each(|row| {
        let norm = crate::kernels::dot(row, row).sqrt();
        if norm > 0.0 {
            row.iter_mut().for_each(|v| *v /= norm);
        }
    });
}

/// Per-column mean of `x` `[rows, d]`.
pub fn column_mean(x: &Matrix) -> Vec<f32> {
    let mut m = vec![0.0f64; x.cols];
    for r in 0..x.rows {
        for (a, &v) in m.iter_mut().zip(x.row(r)) {
            *a += v as f64;
        }
    }
    m.iter()
        .map(|&a| (a / x.rows.max(1) as f64) as f32)
        .collect()
}

/// Geometric median of the rows of `x` by Weiszfeld's algorithm, starting from the
/// mean; stops after `max_iter` iterations or when the update is below `tol` relative
/// to the estimate's norm.
pub fn geometric_median(x: &Matrix, max_iter: usize, tol: f64) -> Vec<f32> {
    let d = x.cols;
    let mut y: Vec<f64> = column_mean(x).iter().map(|&v| v as f64).collect();
    for _ in 0..max_iter {
        let mut num = vec![0.0f64; d];
        let mut den = 0.0f64;
        for r in 0..x.rows {
            let row = x.row(r);
            let dist = row
                .iter()
                .zip(&y)
                .map(|(&a, &b)| (a as f64 - b).powi(2))
                .sum::<f64>()
                .sqrt()
                .max(1e-8);
            let w = 1.0 / dist;
            den += w;
            for (n, &a) in num.iter_mut().zip(row) {
                *n += w * a as f64;
            }
        }
        let next: Vec<f64> = num.iter().map(|n| n / den).collect();
        let shift = next
            .iter()
            .zip(&y)
            .map(|(a, b)| (a - b).powi(2))
            .sum::<f64>()
            .sqrt();
        let norm = next.iter().map(|a| a * a).sum::<f64>().sqrt();
        y = next;
        if shift <= tol * norm.max(1e-12) {
            break;
        }
    }
    y.iter().map(|&v| v as f32).collect()
}

/// `out = s · x` (reusing `out`'s allocation), in parallel chunks of rows.
fn scale_into(x: &Matrix, s: f32, out: &mut Matrix) {
    use rayon::prelude::*;
    if out.data.len() != x.data.len() {
        out.data = vec![0.0; x.data.len()];
    }
    out.rows = x.rows;
    out.cols = x.cols;
    out.data
        .par_chunks_mut(1 << 16)
        .zip(x.data.par_chunks(1 << 16))
        .for_each(|(o, i)| {
            for (a, &b) in o.iter_mut().zip(i) {
                *a = s * b;
            }
        });
}

/// Σ‖x_r − μ‖² over rows, μ the column mean; summed in fixed chunks of rows (the
/// result does not depend on the thread count).
fn centered_sq_sum(x: &Matrix) -> f64 {
    use rayon::prelude::*;
    let d = x.cols.max(1);
    let chunk = 256 * d;
    let parts: Vec<(Vec<f64>, Vec<f64>)> = x
        .data
        .par_chunks(chunk)
        .map(|c| {
            // Per-column sums and sums of squares in f64.
            let mut s = vec![0.0f64; d];
            let mut q = vec![0.0f64; d];
            for row in c.chunks(d) {
                for ((a, b), &v) in s.iter_mut().zip(q.iter_mut()).zip(row) {
                    let v = v as f64;
                    *a += v;
                    *b += v * v;
                }
            }
            (s, q)
        })
        .collect();
    let (mut s, mut q) = (vec![0.0f64; d], vec![0.0f64; d]);
    for (ps, pq) in &parts {
        for i in 0..d {
            s[i] += ps[i];
            q[i] += pq[i];
        }
    }
    let rows = x.rows.max(1) as f64;
    // Σ_r (x_ri − μ_i)² = Σ x² − (Σ x)² / rows, per column.
    s.iter()
        .zip(&q)
        .map(|(&a, &b)| (b - a * a / rows).max(0.0))
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ArchConfig;
    use crate::synth::{generate, SynthConfig};

    fn synth(d: usize, f: usize, rows: usize) -> Matrix {
        let cfg = SynthConfig {
            d,
            n_features: f,
            avg_active: 4.0,
            ..SynthConfig::default()
        };
        generate(&cfg, rows).unwrap().x
    }

    fn batch(x: &Matrix, step: u64, b: usize) -> Matrix {
        let start = (step as usize * b) % (x.rows - b);
        x.slice_rows(start, start + b)
    }

    fn topk_trainer(x: &Matrix) -> Trainer {
        let cfg = TrainConfig {
            batch_size: 64,
            total_tokens: 64 * 30,
            lr: 1e-3,
            dead_after_tokens: 200,
            lr_warmup_steps: 3,
            ..TrainConfig::default()
        };
        let arch = ArchConfig::Topk(crate::arch::TopKConfig {
            k: 4,
            aux_k: 8,
            aux_coefficient: 1.0 / 32.0,
        });
        Trainer::new(cfg, SaeConfig::new(arch, x.cols, 48), &x.slice_rows(0, 256)).unwrap()
    }

    #[test]
    fn resumed_run_ends_with_identical_weights() {
        let x = synth(12, 40, 4000);
        let mut full = topk_trainer(&x);
        while !full.finished() {
            let s = full.step_count();
            full.step(&batch(&x, s, 64)).unwrap();
        }
        let mut first = topk_trainer(&x);
        for s in 0..13 {
            first.step(&batch(&x, s, 64)).unwrap();
        }
        let dir = tempfile::tempdir().unwrap();
        first
            .write_state(dir.path(), serde_json::json!({"pos": 13}))
            .unwrap();
        drop(first);
        let (mut resumed, extra) = Trainer::read_state(dir.path()).unwrap();
        assert_eq!(extra["pos"], 13);
        while !resumed.finished() {
            let s = resumed.step_count();
            resumed.step(&batch(&x, s, 64)).unwrap();
        }
        assert_eq!(resumed.params(), full.params());
        assert_eq!(resumed.export(), full.export());
        // The dead-latent counters came back too.
        assert_eq!(resumed.dead_fraction(), full.dead_fraction());
    }

    #[test]
    fn decoder_rows_stay_unit_norm_and_loss_falls() {
        let x = synth(12, 40, 4000);
        let mut t = topk_trainer(&x);
        let first = t.step(&batch(&x, 0, 64)).unwrap();
        let mut last = first.clone();
        while !t.finished() {
            let s = t.step_count();
            last = t.step(&batch(&x, s, 64)).unwrap();
        }
        assert!(last.loss < first.loss, "{} !< {}", last.loss, first.loss);
        for row in t.params().get("W_dec").data.chunks(12) {
            let norm: f32 = row.iter().map(|v| v * v).sum::<f32>().sqrt();
            assert!((norm - 1.0).abs() < 1e-5);
        }
    }

    #[test]
    fn export_folds_the_input_scale() {
        // The exported SAE applied to raw x must equal the trained SAE applied to s·x,
        // divided by s.
        let x = synth(12, 40, 1000);
        let mut t = topk_trainer(&x);
        for s in 0..5 {
            t.step(&batch(&x, s, 64)).unwrap();
        }
        let s = t.input_scale();
        assert!(s != 1.0);
        let (cfg, file) = t.export();
        let arch = cfg.arch.spec();
        let xb = x.slice_rows(0, 16);
        let raw_enc = crate::arch::common::subtract_bias(&xb, &file.get("b_dec").data);
        let lat_raw = arch.encode(&file, &raw_enc);
        let mut xs = xb.clone();
        xs.data.iter_mut().for_each(|v| *v *= s);
        let scaled_enc = crate::arch::common::subtract_bias(&xs, &t.params().get("b_dec").data);
        let lat_scaled = arch.encode(t.params(), &scaled_enc);
        assert_eq!(lat_raw.idx, lat_scaled.idx);
        for (a, b) in lat_raw.val.iter().zip(&lat_scaled.val) {
            assert!((a - b).abs() < 1e-4 * (1.0 + b.abs()));
        }
    }

    #[test]
    fn geometric_median_resists_outliers() {
        let mut rows = vec![0.0f32; 2 * 11];
        for i in 0..10 {
            rows[2 * i] = 1.0 + (i as f32 - 4.5) * 1e-3;
            rows[2 * i + 1] = 1.0;
        }
        rows[20] = 1000.0;
        rows[21] = 1000.0;
        let x = Matrix::from_vec(11, 2, rows).unwrap();
        let m = geometric_median(&x, 200, 1e-9);
        assert!(
            (m[0] - 1.0).abs() < 0.01 && (m[1] - 1.0).abs() < 0.01,
            "{m:?}"
        );
        assert!(column_mean(&x)[0] > 90.0);
    }
}
