//! The step engine: the operations an SAE training step is written in.
//!
//! An architecture (`arch/*.rs`) states its maths — which latents a token keeps, how its
//! loss and gradients are put together — in terms of a few operations on whole batches,
//! and a [`StepEngine`] carries them out. Two engines exist, in the spirit of candle's
//! `CustomOp` (a fast implementation and a plain one behind one interface):
//!
//! - [`crate::kernels::cpu::CpuEngine`]: the fast CPU kernels (the encoder product fused
//!   with the selection, sparse decoder and sparse gradients, AuxK dense over the dead set
//!   when that is cheaper, dense products when the latents are dense);
//! - [`crate::kernels::reference::ReferenceEngine`]: dense products over all `n` latents
//!   and plain sorts, written independently of the fast kernels, as a test oracle and the
//!   benchmark's baseline.
//!
//! A GPU engine would be a third implementation of the same trait.
//!
//! The operations, with `x [B, d]` a batch (normalised, `b_dec` not subtracted),
//! `pre = (x − b_dec) W_enc + b_enc` `[B, n]`, `W_dec [n, d]`:
//!
//! 1. [`StepEngine::encode`]: `pre` and a selection of latents from it ([`Select`]),
//!    optionally with the AuxK latents of the TopK family ([`AuxSelect`]), without
//!    necessarily storing `pre`;
//! 2. [`StepEngine::reconstruct`]: `x̂ = f W_dec + b_dec`, the MSE `Σ‖x̂ − x‖²` and
//!    `∂L/∂f_rj = ⟨W_dec[j], 2(x̂_r − x_r)/B⟩` at every selected entry; with AuxK also
//!    `ê = a W_dec` reconstructing the residual `x − x̂` (a constant);
//! 3. [`StepEngine::backward`]: given `∂L/∂pre` at the selected entries, *writes* the
//!    gradients of `W_enc`, `b_enc`, `W_dec`, `b_dec` (every entry overwritten), the AuxK
//!    term's included;
//! 4. unfused building blocks for architectures whose forward is not a single selection
//!    (Gated): [`StepEngine::pre_activations`], [`StepEngine::decode`],
//!    [`StepEngine::decode_backward`], [`StepEngine::latent_grads`],
//!    [`StepEngine::encode_backward`].

use crate::latents::Latents;
use crate::tensor::Matrix;

/// The encoder of a step: `pre = (x − b_dec) W_enc + b_enc`.
#[derive(Clone, Copy, Debug)]
pub struct EncoderWeights<'a> {
    /// `W_enc [d, n]`.
    pub w_enc: &'a [f32],
    /// `b_enc [n]`.
    pub b_enc: &'a [f32],
    /// `b_dec [d]`, subtracted from the input (training always subtracts it).
    pub b_dec: &'a [f32],
}

/// Which latents an encoder pass keeps, as `(latent, pre-activation)` entries.
#[derive(Clone, Copy, Debug)]
pub enum Select<'a> {
    /// Per token, the `k` largest *positive* pre-activations (ties: lower latent first),
    /// sorted by decreasing value.
    TopK(usize),
    /// Per token, every latent `j` with `pre_j > lower[j]` (`lower [n]`), in increasing
    /// latent order.
    Above(&'a [f32]),
    /// Across the whole batch, the `total` largest *positive* pre-activations (ties: the
    /// earlier token, then the lower latent, first); each token's entries in increasing
    /// latent order. `hint`, when given, is a value believed to lie below the cut (the
    /// fast engine then collects only candidates above it while the encoder runs, and
    /// falls back to the full pre-activations if fewer than `total` exceed it).
    BatchTopK {
        /// Entries kept in the batch (`k · B`).
        total: usize,
        /// A positive value probably below the `total`-th largest.
        hint: Option<f32>,
    },
}

/// The AuxK latents to select in the same encoder pass: per token, the `k` largest
/// positive pre-activations among the `dead` latents (increasing indices). Empty `dead`
/// or `k = 0`: no AuxK term.
#[derive(Clone, Copy, Debug)]
pub struct AuxSelect<'a> {
    /// Dead latents, increasing.
    pub dead: &'a [u32],
    /// AuxK latents per token.
    pub k: usize,
    /// Coefficient `c` of the term `c · mean ‖ê − (x − x̂)‖²`.
    pub coefficient: f32,
}

impl AuxSelect<'_> {
    /// No AuxK term.
    pub const OFF: AuxSelect<'static> = AuxSelect {
        dead: &[],
        k: 0,
        coefficient: 0.0,
    };

    /// Whether the term is computed.
    pub fn on(&self) -> bool {
        !self.dead.is_empty() && self.k > 0 && self.coefficient > 0.0
    }
}

/// How a step's AuxK latents are held.
pub enum AuxLatents {
    /// No AuxK term this step.
    Off,
    /// Sparse rows over all `n` latents (every entry at a dead latent).
    Sparse(Latents),
    /// Dense over the dead set, inside the engine that selected them.
    Dense,
}

impl AuxLatents {
    /// The form for a step whose AuxK term is `on`, on the `dense` route or else held
    /// as the `sparse` latents.
    pub fn pick(on: bool, dense: bool, sparse: Latents) -> Self {
        match (on, dense) {
            (false, _) => AuxLatents::Off,
            (true, true) => AuxLatents::Dense,
            (true, false) => AuxLatents::Sparse(sparse),
        }
    }

    /// Whether there is an AuxK term.
    pub fn on(&self) -> bool {
        !matches!(self, AuxLatents::Off)
    }
}

/// The result of [`StepEngine::encode`].
pub struct Selected {
    /// The selected entries `[B, n]` (values: the pre-activations).
    pub latents: Latents,
    /// The AuxK latents, if asked for.
    pub aux: AuxLatents,
    /// The AuxK coefficient the selection was made for.
    pub(crate) aux_coefficient: f32,
    /// Whether the engine computes the rest of this step with dense products (the
    /// latents are too dense for the sparse kernels to pay off).
    pub(crate) dense: bool,
}

impl Selected {
    /// The same selection with its latents replaced by `f(latents)`: a refinement over
    /// the same rows (JumpReLU classifies a superset of its latents this way). The AuxK
    /// latents and the engine's route stay as selected.
    pub fn refine(mut self, f: impl FnOnce(Latents) -> Latents) -> Selected {
        let rows = self.latents.rows();
        self.latents = f(std::mem::take(&mut self.latents));
        assert_eq!(self.latents.rows(), rows, "refine: the rows changed");
        self
    }
}

/// The result of [`StepEngine::reconstruct`].
pub struct Reconstruction {
    /// `Σ_r ‖x̂_r − x_r‖²`.
    pub sq_err: f64,
    /// `∂L/∂f` of the MSE term at every selected entry (aligned with the latents'
    /// values). The architecture turns it into `∂L/∂pre` in place (activation
    /// derivative, penalty gradients) before [`StepEngine::backward`].
    pub g_f: Vec<f32>,
    /// The sparse AuxK route's `Σ ‖ê − (x − x̂)‖²` and `∂L/∂a` at its entries.
    pub(crate) aux_sq: f64,
    pub(crate) g_f_aux: Vec<f32>,
}

/// Gradients of one step, borrowed from the gradient set.
pub struct Grads<'a> {
    /// `∂L/∂W_enc [d, n]`.
    pub w_enc: &'a mut [f32],
    /// `∂L/∂b_enc [n]`.
    pub b_enc: &'a mut [f32],
    /// `∂L/∂W_dec [n, d]`.
    pub w_dec: &'a mut [f32],
    /// `∂L/∂b_dec [d]`.
    pub b_dec: &'a mut [f32],
}

/// The operations of an SAE training step (see the module docs). Every method is
/// deterministic for a given thread count.
pub trait StepEngine: Send {
    /// Which engine this is.
    fn kind(&self) -> EngineKind;

    /// Encoder pass on `x [B, d]` with `enc`, keeping the entries `select` names and,
    /// when `aux` is on, the AuxK latents.
    fn encode(
        &mut self,
        x: &Matrix,
        enc: EncoderWeights,
        select: Select,
        aux: AuxSelect,
    ) -> Selected;

    /// Decoder forward of `sel`, the MSE term and `∂L/∂f` at its entries (and the AuxK
    /// reconstruction of the residual when `sel` carries AuxK latents). `x [B, d]`,
    /// `w_dec [n, d]`, `b_dec [d]`.
    fn reconstruct(
        &mut self,
        x: &Matrix,
        w_dec: &[f32],
        b_dec: &[f32],
        sel: &Selected,
    ) -> Reconstruction;

    /// Backward pass after [`StepEngine::reconstruct`]: `rec.g_f` holds `∂L/∂pre` at the
    /// entries of `sel.latents`. Writes every entry of `grads`: the decoder row gradients
    /// `Σ_r f_rj (∂L/∂x̂_r)`, the encoder gradients from `∂L/∂pre`, `∂L/∂b_dec` through
    /// both the decoder and the encoder input `x − b_dec`, and the AuxK term's (whose
    /// latents pass their gradient to their pre-activations: they are all positive).
    /// Returns the AuxK `Σ ‖ê − (x − x̂)‖²` (0 without AuxK).
    fn backward(
        &mut self,
        x: &Matrix,
        enc: EncoderWeights,
        w_dec: &[f32],
        sel: &Selected,
        rec: Reconstruction,
        grads: Grads,
    ) -> f64;

    /// Dense pre-activations `x W + b`: `x [B, d]`, `w [d, n]`, `b [n]` → `[B, n]`.
    fn pre_activations(&mut self, x: &Matrix, w: &[f32], b: &[f32]) -> Matrix;

    /// `l W + b`: latents `[B, n]`, `w [n, d]`, `b [d]` → `[B, d]`.
    fn decode(&mut self, l: &Latents, w: &[f32], b: &[f32]) -> Matrix;

    /// Backward of [`StepEngine::decode`] given `g_out = ∂L/∂out [B, d]`: *adds*
    /// `Σ_r l_rj g_out[r]` into `g_w [n, d]` and `Σ_r g_out[r]` into `g_b [d]`; returns
    /// `∂L/∂l` at the stored entries.
    fn decode_backward(
        &mut self,
        l: &Latents,
        g_out: &Matrix,
        w: &[f32],
        g_w: &mut [f32],
        g_b: &mut [f32],
    ) -> Vec<f32>;

    /// `∂L/∂l` at the stored entries of `l` for `out = l W + b`, touching no weight
    /// gradient (a frozen decoder).
    fn latent_grads(&mut self, l: &Latents, g_out: &Matrix, w: &[f32]) -> Vec<f32>;

    /// Backward of the encoder product at the entries of `pattern`, `g_pre` aligned with
    /// them, `x [B, d]` the encoder input: *adds* `Σ_r g_pre[r, j] x[r]` into
    /// `g_w [d, n]` and `Σ_r g_pre[r, j]` into `g_b [n]` (if given); returns
    /// `Σ_r ∂L/∂x[r] = W · colsum(g_pre)` `[d]`.
    fn encode_backward(
        &mut self,
        pattern: &Latents,
        g_pre: &[f32],
        x: &Matrix,
        w: &[f32],
        g_w: &mut [f32],
        g_b: Option<&mut [f32]>,
    ) -> Vec<f32>;
}

/// Which engine to build.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EngineKind {
    /// [`crate::kernels::cpu::CpuEngine`].
    Cpu,
    /// [`crate::kernels::reference::ReferenceEngine`].
    Reference,
}

impl EngineKind {
    /// A short name for reports (`cpu`, `reference`).
    pub fn name(self) -> &'static str {
        match self {
            EngineKind::Cpu => "cpu",
            EngineKind::Reference => "reference",
        }
    }

    /// A fresh engine of this kind.
    pub fn build(self) -> Box<dyn StepEngine> {
        match self {
            EngineKind::Cpu => Box::new(crate::kernels::cpu::CpuEngine::default()),
            EngineKind::Reference => {
                Box::new(crate::kernels::reference::ReferenceEngine::default())
            }
        }
    }
}
