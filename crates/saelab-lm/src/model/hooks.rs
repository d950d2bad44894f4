//! Hook points (TransformerLens names), forward options and outputs, and the hook sites
//! of one forward: the capture and patch step every family's blocks call.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::sync::Arc;

use saelab_core::{Error, Matrix, Result};

use super::activation::{Activation, ActivationMut, Placement};
use super::info::ModelInfo;

/// Which activation inside a block a hook point names. The kinds of every family, by
/// their TransformerLens names; a family offers a subset ([`ModelInfo::hook_kinds`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum HookKind {
    /// `hook_resid_pre`: the residual stream entering the block.
    ResidPre,
    /// `hook_attn_out`: the attention output (after the output projection), before it
    /// is added to the residual stream.
    AttnOut,
    /// `hook_resid_mid`: the residual stream between attention and MLP
    /// (`resid_pre + attn_out`).
    ResidMid,
    /// `ln2.hook_normalized`: the MLP's input normalised by the second norm, before
    /// the norm's gain (as in TransformerLens, which folds the gain into the MLP's input
    /// weights): for RMSNorm `resid_mid / √(mean(resid_mid²) + ε)`. Transcoders read it.
    Ln2Normalized,
    /// `hook_mlp_out`: the MLP output (after the down projection), before it is added.
    MlpOut,
    /// `hook_resid_post`: the residual stream leaving the block (`resid_mid + mlp_out`).
    ResidPost,
}

impl HookKind {
    /// Every kind any family offers.
    pub const ALL: [HookKind; 6] = [
        HookKind::ResidPre,
        HookKind::AttnOut,
        HookKind::ResidMid,
        HookKind::Ln2Normalized,
        HookKind::MlpOut,
        HookKind::ResidPost,
    ];

    /// The TransformerLens name inside a block, e.g. `hook_resid_post`.
    pub fn suffix(self) -> &'static str {
        match self {
            HookKind::ResidPre => "hook_resid_pre",
            HookKind::AttnOut => "hook_attn_out",
            HookKind::ResidMid => "hook_resid_mid",
            HookKind::Ln2Normalized => "ln2.hook_normalized",
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
    /// Parse a TransformerLens hook name, `blocks.{layer}.{suffix}` with the suffix of
    /// any [`HookKind`], without a model: the layer is not range-checked. For the
    /// canonical form of a name before the model is loaded; [`ModelInfo::hook`] checks
    /// a name against a model.
    pub fn parse(name: &str) -> Result<HookPoint> {
        let unknown = || Error::config(format!("unknown hook '{name}'"));
        let (layer, suffix) = name
            .strip_prefix("blocks.")
            .and_then(|rest| rest.split_once('.'))
            .ok_or_else(unknown)?;
        let kind = HookKind::ALL
            .into_iter()
            .find(|k| k.suffix() == suffix)
            .ok_or_else(unknown)?;
        let layer: usize = layer.parse().map_err(|_| {
            Error::config(format!("hook '{name}': '{layer}' is not a layer number"))
        })?;
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

/// A patch: edits, in place, the activation `[B, T, d_model]` (f32) at a hook point.
///
/// The activation says where its rows sit ([`Activation::stream`],
/// [`Activation::position`]): in an incremental forward or a generation the rows are
/// only the new positions, so a patch meant for a set of positions reads them there.
pub type PatchFn<'a> = Box<dyn Fn(&mut ActivationMut<'_>) -> Result<()> + 'a>;

/// Which logits a forward returns.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Logits {
    /// No logits: the forward stops after the last block a capture or patch needs.
    #[default]
    None,
    /// Logits of the last position of each sequence, `[B, 1, V]`.
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

    /// Edit the activation at `hook` in place with `f` (which sees the value after the
    /// patches added before it on the same hook; they apply in the order added). The
    /// forward continues from the edited values. `f` can read the stream and absolute
    /// position of each row ([`Activation::stream`], [`Activation::position`]).
    pub fn patch(
        mut self,
        hook: impl Into<String>,
        f: impl Fn(&mut ActivationMut<'_>) -> Result<()> + 'a,
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
    /// Captured activations by canonical hook name, each `[B, T, d_model]`.
    pub captures: BTreeMap<String, Activation>,
    /// Logits as asked: `[B, T, V]` (every position) or `[B, 1, V]` (the last).
    pub logits: Option<Activation>,
    /// Next-token cross-entropy `[B, T−1]` in nats, when asked.
    pub loss: Option<Matrix>,
    /// Number of blocks that ran.
    pub blocks_run: usize,
}

impl ForwardOutput {
    /// The captured activation at `hook` (`[B, T, d_model]`), or an error naming the
    /// hooks that were captured.
    pub fn capture(&self, hook: &str) -> Result<&Activation> {
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
    pub fn take_capture(&mut self, hook: &str) -> Result<Activation> {
        self.capture(hook)?;
        Ok(self.captures.remove(hook).expect("checked above"))
    }

    /// Remove and return the logits, or an error if the forward was not asked for them.
    pub fn take_logits(&mut self) -> Result<Activation> {
        self.logits
            .take()
            .ok_or_else(|| Error::config("the forward was not asked for logits"))
    }
}

/// The hooks of one forward resolved against the model: what to capture, what to
/// patch (in order), and how many blocks to run.
pub(crate) struct Plan<'o, 'a> {
    captures: BTreeSet<HookPoint>,
    patches: BTreeMap<HookPoint, Vec<&'o PatchFn<'a>>>,
    /// Blocks to run: up to the deepest hook asked for, or all when the head is needed.
    pub n_blocks: usize,
}

impl<'o, 'a> Plan<'o, 'a> {
    /// Checks every hook name of `opts` against `info`.
    pub fn new(info: &ModelInfo, opts: &'o ForwardOptions<'a>) -> Result<Self> {
        let mut plan = Plan {
            captures: BTreeSet::new(),
            patches: BTreeMap::new(),
            n_blocks: 0,
        };
        for name in &opts.captures {
            let hp = info.hook(name)?;
            plan.n_blocks = plan.n_blocks.max(hp.layer + 1);
            plan.captures.insert(hp);
        }
        for (name, f) in &opts.patches {
            let hp = info.hook(name)?;
            plan.n_blocks = plan.n_blocks.max(hp.layer + 1);
            plan.patches.entry(hp).or_default().push(f);
        }
        if opts.needs_head() {
            plan.n_blocks = info.n_layers;
        }
        Ok(plan)
    }
}

/// The hook sites of one forward, as a family's blocks see them: at each hook point a
/// block calls [`Hooks::visit`] with the buffer holding that activation, and computes a
/// value that exists only for a hook (such as [`HookKind::Ln2Normalized`]) only when
/// [`Hooks::wants`] says so.
pub(crate) struct Hooks<'p, 'o, 'a> {
    plan: &'p Plan<'o, 'a>,
    batch: usize,
    seq_len: usize,
    /// Where the sequences sit (`None` in a full forward), given to every activation.
    places: Option<Arc<[Placement]>>,
    out: &'p mut ForwardOutput,
}

impl<'p, 'o, 'a> Hooks<'p, 'o, 'a> {
    /// The hook sites of a forward over `batch` sequences of `seq_len` tokens, writing
    /// captures into `out`; `places` says where the sequences sit (`None`: a full
    /// forward, sequence `b` is stream `b` from position 0).
    pub fn new(
        plan: &'p Plan<'o, 'a>,
        batch: usize,
        seq_len: usize,
        places: Option<Arc<[Placement]>>,
        out: &'p mut ForwardOutput,
    ) -> Self {
        Hooks {
            plan,
            batch,
            seq_len,
            places,
            out,
        }
    }

    /// Whether the forward captures or patches `blocks.{layer}.{kind}`.
    pub fn wants(&self, layer: usize, kind: HookKind) -> bool {
        let hp = HookPoint { layer, kind };
        self.plan.captures.contains(&hp) || self.plan.patches.contains_key(&hp)
    }

    /// At `blocks.{layer}.{kind}`, whose activation is `buf` (`[B·T, width]`): applies
    /// the patches in order, then records a capture. Does nothing for a hook nobody asked
    /// for.
    pub fn visit(&mut self, layer: usize, kind: HookKind, buf: &mut [f32]) -> Result<()> {
        let hp = HookPoint { layer, kind };
        let width = buf.len() / (self.batch * self.seq_len);
        if let Some(fs) = self.plan.patches.get(&hp) {
            let mut view = ActivationMut::from_slice(self.batch, self.seq_len, width, buf)?
                .placed(self.places.clone());
            for pf in fs {
                pf(&mut view)?;
            }
        }
        if self.plan.captures.contains(&hp) {
            let a = Activation::new(self.batch, self.seq_len, width, buf.to_vec())?
                .placed(self.places.clone());
            self.out.captures.insert(hp.name(), a);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_parse_to_their_kind_and_back() {
        for kind in HookKind::ALL {
            let hp = HookPoint { layer: 12, kind };
            assert_eq!(HookPoint::parse(&hp.name()).unwrap(), hp);
        }
        let hp = HookPoint::parse("blocks.007.ln2.hook_normalized").unwrap();
        assert_eq!(hp.name(), "blocks.7.ln2.hook_normalized");
        for bad in [
            "blocks.1.hook_resid_postt",
            "resid_post",
            "blocks.x.hook_mlp_out",
        ] {
            let e = HookPoint::parse(bad).unwrap_err().to_string();
            assert!(e.contains(&format!("'{bad}'")) || e.contains("'x'"), "{e}");
        }
    }
}
