//! Hook points (TransformerLens names), forward options and forward outputs.

use std::collections::BTreeMap;
use std::fmt;

use candle_core::Tensor;
use saelab_core::{Error, Result};

/// Which activation inside a block a hook point names.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum HookKind {
    /// The residual stream entering the block.
    ResidPre,
    /// The attention output (after the output projection), before it is added.
    AttnOut,
    /// The residual stream between attention and MLP (`resid_pre + attn_out`).
    ResidMid,
    /// The MLP output (after the down projection), before it is added.
    MlpOut,
    /// The residual stream leaving the block (`resid_mid + mlp_out`).
    ResidPost,
}

impl HookKind {
    /// Every kind, in the order the forward reaches them inside a block.
    pub const ALL: [HookKind; 5] = [
        HookKind::ResidPre,
        HookKind::AttnOut,
        HookKind::ResidMid,
        HookKind::MlpOut,
        HookKind::ResidPost,
    ];

    /// The TransformerLens suffix, e.g. `hook_resid_post`.
    pub fn suffix(self) -> &'static str {
        match self {
            HookKind::ResidPre => "hook_resid_pre",
            HookKind::AttnOut => "hook_attn_out",
            HookKind::ResidMid => "hook_resid_mid",
            HookKind::MlpOut => "hook_mlp_out",
            HookKind::ResidPost => "hook_resid_post",
        }
    }
}

/// A hook point: one activation `[B, T, d_model]` of one block, named
/// `blocks.{layer}.{kind suffix}` as in TransformerLens.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct HookPoint {
    /// Block index, `0..n_layers`.
    pub layer: usize,
    /// Which activation of the block.
    pub kind: HookKind,
}

impl HookPoint {
    /// Parse a TransformerLens hook name and check the layer against `n_layers`.
    ///
    /// Errors name the bad hook and list the valid ones.
    pub fn parse(name: &str, n_layers: usize) -> Result<HookPoint> {
        let valid = || valid_hooks_message(n_layers);
        let rest = name.strip_prefix("blocks.").ok_or_else(|| {
            Error::config(format!("unknown hook '{name}'; valid hooks: {}", valid()))
        })?;
        let (layer, suffix) = rest.split_once('.').ok_or_else(|| {
            Error::config(format!("unknown hook '{name}'; valid hooks: {}", valid()))
        })?;
        let kind = HookKind::ALL
            .into_iter()
            .find(|k| k.suffix() == suffix)
            .ok_or_else(|| {
                Error::config(format!("unknown hook '{name}'; valid hooks: {}", valid()))
            })?;
        let layer: usize = layer.parse().map_err(|_| {
            Error::config(format!(
                "hook '{name}': '{layer}' is not a layer number; valid hooks: {}",
                valid()
            ))
        })?;
        if layer >= n_layers {
            return Err(Error::config(format!(
                "hook '{name}': layer {layer} is out of range, the model has {n_layers} blocks \
                 (0..={}); valid hooks: {}",
                n_layers.saturating_sub(1),
                valid()
            )));
        }
        Ok(HookPoint { layer, kind })
    }

    /// The canonical TransformerLens name.
    pub fn name(&self) -> String {
        self.to_string()
    }
}

impl fmt::Display for HookPoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "blocks.{}.{}", self.layer, self.kind.suffix())
    }
}

/// One line listing the valid hook names of a model with `n_layers` blocks.
pub fn valid_hooks_message(n_layers: usize) -> String {
    let last = n_layers.saturating_sub(1);
    let kinds: Vec<String> = HookKind::ALL
        .iter()
        .map(|k| format!("blocks.{{L}}.{}", k.suffix()))
        .collect();
    format!("{} with L in 0..={last}", kinds.join(", "))
}

/// A patch: receives the activation `[B, T, d_model]` (f32) at a hook point and returns
/// the tensor that replaces it (same shape; any float dtype, converted to f32).
pub type PatchFn<'a> = Box<dyn Fn(&Tensor) -> Result<Tensor> + 'a>;

/// Which logits a forward returns.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Logits {
    /// No logits: the forward stops after the last block a capture or patch needs.
    #[default]
    None,
    /// Logits of the last position of each sequence, `[B, V]`.
    Last,
    /// Logits at every position, `[B, T, V]`.
    All,
}

/// What one forward computes: hooks to capture, patches to apply, logits and loss.
///
/// Build with the chained methods:
/// `ForwardOptions::new().capture("blocks.15.hook_resid_post").logits(Logits::Last)`.
#[derive(Default)]
pub struct ForwardOptions<'a> {
    pub(crate) captures: Vec<String>,
    pub(crate) patches: Vec<(String, PatchFn<'a>)>,
    pub(crate) logits: Logits,
    pub(crate) loss: bool,
}

impl<'a> ForwardOptions<'a> {
    /// Nothing requested: add captures, patches, logits or loss.
    pub fn new() -> Self {
        Self::default()
    }

    /// Capture the activation at `hook` (returned as `[B, T, d_model]` f32). When the
    /// hook is also patched, the capture holds the patched value.
    pub fn capture(mut self, hook: impl Into<String>) -> Self {
        self.captures.push(hook.into());
        self
    }

    /// Capture every hook in `hooks`.
    pub fn capture_all<S: Into<String>>(mut self, hooks: impl IntoIterator<Item = S>) -> Self {
        self.captures.extend(hooks.into_iter().map(Into::into));
        self
    }

    /// Replace the activation at `hook` by `f(activation)`. Several patches on one hook
    /// apply in the order they were added.
    pub fn patch(
        mut self,
        hook: impl Into<String>,
        f: impl Fn(&Tensor) -> Result<Tensor> + 'a,
    ) -> Self {
        self.patches.push((hook.into(), Box::new(f)));
        self
    }

    /// Which logits to return (default [`Logits::None`]).
    pub fn logits(mut self, mode: Logits) -> Self {
        self.logits = mode;
        self
    }

    /// Also return the next-token cross-entropy `[B, T−1]` (nats): position `t`'s logits
    /// scored against token `t + 1`. Computed in row chunks, without keeping all logits.
    pub fn loss(mut self, on: bool) -> Self {
        self.loss = on;
        self
    }

    /// Whether the forward must run every block and the unembedding.
    pub(crate) fn needs_head(&self) -> bool {
        self.logits != Logits::None || self.loss
    }
}

/// What a forward returns.
#[derive(Debug, Default)]
pub struct ForwardOutput {
    /// Captured activations by canonical hook name, each `[B, T, d_model]` f32.
    pub captures: BTreeMap<String, Tensor>,
    /// Logits as asked: `[B, V]` (last position) or `[B, T, V]` (all positions).
    pub logits: Option<Tensor>,
    /// Next-token cross-entropy `[B, T−1]` in nats, when asked.
    pub loss: Option<Tensor>,
    /// Number of blocks that ran.
    pub blocks_run: usize,
}

impl ForwardOutput {
    /// The captured activation at `hook` (`[B, T, d_model]`), or an error naming the
    /// hooks that were captured.
    pub fn capture(&self, hook: &str) -> Result<&Tensor> {
        self.captures.get(hook).ok_or_else(|| {
            let have: Vec<&str> = self.captures.keys().map(String::as_str).collect();
            Error::config(format!(
                "hook '{hook}' was not captured (captured: {})",
                if have.is_empty() {
                    "none".to_string()
                } else {
                    have.join(", ")
                }
            ))
        })
    }

    /// Remove and return the captured activation at `hook`.
    pub fn take_capture(&mut self, hook: &str) -> Result<Tensor> {
        self.capture(hook)?;
        Ok(self.captures.remove(hook).expect("checked above"))
    }
}
