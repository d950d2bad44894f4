//! Interventions: edits of an SAE's latents (or a plain vector added) at one hook of
//! the model, on a chosen set of positions, applied inside a forward or at every step
//! of a KV-cached generation.
//!
//! With `x` the model's activation at the hook, `a(x)` the SAE's latents and `x̂(a)`
//! its decoder, an edit turns `a` into `a′` and the hook outputs
//!
//! ```text
//! x′ = x + x̂(a′) − x̂(a)  =  x̂(a′) + (x − x̂(a))        (the SAE error is kept)
//! ```
//!
//! For the usual linear decoder `x̂(a) = a·W_dec + b_dec` this is
//! `x + Σ_i (a′_i − a_i(x))·d_i` with `d_i = W_dec[i]`, and that is what is computed:
//! only the changed latents are touched, never a full decode, so an edit that changes
//! nothing (clamp to the current value, add 0, ablate an inactive latent) leaves `x`
//! bit for bit. For an SAE that normalises its input per token (`LayerNorm`) the
//! decoder output is multiplied by the token's standard deviation, and for one that
//! reports latents scaled by decoder norms (`rescale_acts_by_decoder_norm`) `d_i` is
//! `W_dec[i] / ‖W_dec[i]‖`; both factors enter `d_i` here, so that one unit of a latent
//! always means what the SAE's own decoder makes of it.
//!
//! The operations ([`Op`]) on latent `i`:
//!
//! | op | `a′_i` |
//! |---|---|
//! | `Add(α)` | `a_i + α`, i.e. `x + α·d_i` (the latent need not be computed) |
//! | `Clamp(v)` | `v` |
//! | `ClampMin(v)` | `max(a_i, v)` |
//! | `Scale(s)` | `s·a_i` |
//! | `Ablate` | `0` |
//! | `NegClamp(c)` | `−c` where `a_i > 0`, else `a_i` |
//!
//! Several edits of one SAE are applied to one encoding of `x` (edits of the same latent
//! compose in order); several interventions at one hook apply in the order given, each
//! seeing the output of the previous one. [`Intervention::vector`] adds a fixed vector
//! instead (the random-direction control of the steering measures).
//!
//! Positions ([`Positions`]) are absolute positions of each stream (prompt index), read
//! from the activation ([`saelab_lm::model::Activation::position`]), so the same
//! intervention gives the same edits in one full forward and in a cached generation.
//! The BOS position is left alone unless asked: SAEs are trained without it and its
//! residual is the attention sink, far off the typical norm.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use saelab_core::config::InputNorm;
use saelab_core::{Error, Matrix, Result, Sae};
use saelab_lm::model::{ActivationMut, ForwardOptions};
use serde::{Deserialize, Serialize};

/// Which positions of each stream an intervention edits. Positions are absolute
/// (0 is the prompt's first token); `prompt_len` is the stream's prompt length.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum Positions {
    /// Every position: the prompt and every generated token (Neuronpedia's choice).
    #[default]
    All,
    /// The prompt's positions only.
    Prompt,
    /// The prompt's last position only.
    Last,
    /// These absolute positions.
    List(Vec<usize>),
}

impl Positions {
    /// Whether absolute position `position` of a stream whose prompt has `prompt_len`
    /// tokens is edited.
    pub fn covers(&self, position: usize, prompt_len: usize) -> bool {
        match self {
            Positions::All => true,
            Positions::Prompt => position < prompt_len,
            Positions::Last => position + 1 == prompt_len,
            Positions::List(l) => l.contains(&position),
        }
    }
}

impl FromStr for Positions {
    type Err = Error;

    /// `all`, `prompt`, `last`, or a comma-separated list of positions (`1,4,7`).
    fn from_str(s: &str) -> Result<Self> {
        match s.trim() {
            "all" => Ok(Positions::All),
            "prompt" => Ok(Positions::Prompt),
            "last" => Ok(Positions::Last),
            list => {
                let parsed: std::result::Result<Vec<usize>, _> =
                    list.split(',').map(|p| p.trim().parse::<usize>()).collect();
                match parsed {
                    Ok(l) if !l.is_empty() => Ok(Positions::List(l)),
                    _ => Err(Error::config(format!(
                        "positions '{s}' must be all, prompt, last or a list of \
                         positions such as 1,4,7"
                    ))),
                }
            }
        }
    }
}

impl TryFrom<String> for Positions {
    type Error = Error;

    fn try_from(s: String) -> Result<Self> {
        s.parse()
    }
}

impl From<Positions> for String {
    fn from(p: Positions) -> String {
        p.to_string()
    }
}

impl fmt::Display for Positions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Positions::All => f.write_str("all"),
            Positions::Prompt => f.write_str("prompt"),
            Positions::Last => f.write_str("last"),
            Positions::List(l) => {
                let s: Vec<String> = l.iter().map(usize::to_string).collect();
                f.write_str(&s.join(","))
            }
        }
    }
}

/// What an edit does to one latent's value `a` (see the module docs' table).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", content = "value", rename_all = "snake_case")]
pub enum Op {
    /// `a + α`: adds `α·d_i` to the activation.
    Add(f32),
    /// `v`.
    Clamp(f32),
    /// `max(a, v)`.
    ClampMin(f32),
    /// `s·a`.
    Scale(f32),
    /// `0`.
    Ablate,
    /// `−c` where `a > 0`, else `a`.
    NegClamp(f32),
}

impl Op {
    /// The latent's value after the edit.
    pub fn apply(self, a: f32) -> f32 {
        match self {
            Op::Add(s) => a + s,
            Op::Clamp(v) => v,
            Op::ClampMin(v) => a.max(v),
            Op::Scale(s) => s * a,
            Op::Ablate => 0.0,
            Op::NegClamp(c) => {
                if a > 0.0 {
                    -c
                } else {
                    a
                }
            }
        }
    }

    /// Whether the edit depends on the latent's current value (all but `Add`).
    pub fn reads_latent(self) -> bool {
        !matches!(self, Op::Add(_))
    }

    fn value(self) -> Option<f32> {
        match self {
            Op::Add(v) | Op::Clamp(v) | Op::ClampMin(v) | Op::Scale(v) | Op::NegClamp(v) => Some(v),
            Op::Ablate => None,
        }
    }
}

/// One edit: an operation on one latent.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Edit {
    /// The latent's index in the SAE.
    pub latent: usize,
    /// What to do to it.
    #[serde(flatten)]
    pub op: Op,
}

/// The streams an intervention runs over: each prompt's length (positions below it are
/// the prompt's) and whether it starts with BOS. For a forward over whole texts (no
/// generation) the prompt is the whole text.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Prompts {
    lens: Vec<usize>,
    bos_first: Vec<bool>,
}

impl Prompts {
    /// The streams of `prompts` (stream `i` is prompt `i`), for a model whose BOS is `bos`.
    pub fn new<S: AsRef<[u32]>>(prompts: &[S], bos: Option<u32>) -> Self {
        Prompts {
            lens: prompts.iter().map(|p| p.as_ref().len()).collect(),
            bos_first: prompts
                .iter()
                .map(|p| bos.is_some() && p.as_ref().first().copied() == bos)
                .collect(),
        }
    }

    /// Number of streams.
    pub fn len(&self) -> usize {
        self.lens.len()
    }

    /// Whether there are no streams.
    pub fn is_empty(&self) -> bool {
        self.lens.is_empty()
    }

    /// Prompt length of stream `s`.
    pub fn prompt_len(&self, s: usize) -> usize {
        self.lens[s]
    }
}

/// One latent's edits, ready to apply: its decoder direction scale and its ops in order.
#[derive(Clone, Debug)]
struct LatentPlan {
    latent: usize,
    ops: Vec<Op>,
    reads: bool,
    /// `1/‖W_dec[i]‖` for SAEs reporting norm-rescaled latents, else 1.
    dir_scale: f32,
}

#[derive(Clone, Debug)]
enum Kind<'s> {
    Latents { sae: &'s Sae, plan: Vec<LatentPlan> },
    Vector(Vec<f32>),
}

/// Edits at one hook, on a set of positions: of one SAE's latents
/// ([`Intervention::latents`]) or a fixed vector added ([`Intervention::vector`]).
#[derive(Clone, Debug)]
pub struct Intervention<'s> {
    hook: String,
    positions: Positions,
    edit_bos: bool,
    kind: Kind<'s>,
}

impl<'s> Intervention<'s> {
    /// Edits of `sae`'s latents at `hook`, on `positions`. Errors (one line): no edits,
    /// a latent `≥ d_sae`, a value that is not finite, a transcoder or an SAE with a
    /// skip matrix (its output does not replace its input), or a dead decoder row under
    /// `rescale_acts_by_decoder_norm`.
    pub fn latents(
        sae: &'s Sae,
        hook: impl Into<String>,
        edits: &[Edit],
        positions: Positions,
    ) -> Result<Self> {
        if edits.is_empty() {
            return Err(Error::config("an intervention needs at least one edit"));
        }
        if sae.is_transcoder() {
            return Err(Error::config(
                "a transcoder or an SAE with a skip matrix cannot be intervened on: its \
                 output does not replace its input",
            ));
        }
        let n = sae.cfg.d_sae;
        let norms = sae
            .cfg
            .rescale_acts_by_decoder_norm
            .then(|| sae.decoder_norms());
        let mut by_latent: BTreeMap<usize, usize> = BTreeMap::new();
        let mut plan: Vec<LatentPlan> = Vec::new();
        for e in edits {
            if e.latent >= n {
                return Err(Error::config(format!(
                    "latent {} is out of range: the SAE has {n} latents (0..{})",
                    e.latent,
                    n - 1
                )));
            }
            if let Some(v) = e.op.value().filter(|v| !v.is_finite()) {
                return Err(Error::config(format!(
                    "latent {}: the strength {v} is not a finite number",
                    e.latent
                )));
            }
            let dir_scale = match &norms {
                Some(nr) if nr[e.latent] > 0.0 => 1.0 / nr[e.latent],
                Some(_) => {
                    return Err(Error::config(format!(
                        "latent {} has a zero decoder row: it cannot be steered",
                        e.latent
                    )))
                }
                None => 1.0,
            };
            let slot = *by_latent.entry(e.latent).or_insert_with(|| {
                plan.push(LatentPlan {
                    latent: e.latent,
                    ops: Vec::new(),
                    reads: false,
                    dir_scale,
                });
                plan.len() - 1
            });
            plan[slot].ops.push(e.op);
            plan[slot].reads |= e.op.reads_latent();
        }
        Ok(Intervention {
            hook: hook.into(),
            positions,
            edit_bos: false,
            kind: Kind::Latents { sae, plan },
        })
    }

    /// Adds `v` (`[d_model]`) at `hook` on `positions`. Errors if `v` holds a value
    /// that is not finite.
    pub fn vector(hook: impl Into<String>, v: Vec<f32>, positions: Positions) -> Result<Self> {
        if v.iter().any(|x| !x.is_finite()) {
            return Err(Error::config(
                "the steering vector holds a value that is not finite",
            ));
        }
        Ok(Intervention {
            hook: hook.into(),
            positions,
            edit_bos: false,
            kind: Kind::Vector(v),
        })
    }

    /// Also edit the BOS position (left alone by default).
    pub fn edit_bos(mut self, on: bool) -> Self {
        self.edit_bos = on;
        self
    }

    /// The hook it edits.
    pub fn hook(&self) -> &str {
        &self.hook
    }

    /// The positions it edits.
    pub fn positions(&self) -> &Positions {
        &self.positions
    }

    /// The rows (`b·T + t`) of `act` this intervention edits.
    fn rows(&self, act: &ActivationMut<'_>, prompts: &Prompts) -> Result<Vec<usize>> {
        let mut rows = Vec::new();
        for b in 0..act.batch() {
            let s = act.stream(b);
            if s >= prompts.len() {
                return Err(Error::Shape(format!(
                    "the forward runs stream {s}, but the intervention knows {} prompts",
                    prompts.len()
                )));
            }
            for t in 0..act.seq_len() {
                let pos = act.position(b, t);
                if pos == 0 && prompts.bos_first[s] && !self.edit_bos {
                    continue;
                }
                if self.positions.covers(pos, prompts.lens[s]) {
                    rows.push(b * act.seq_len() + t);
                }
            }
        }
        Ok(rows)
    }

    /// Edits `act` in place (the body of the patch [`Intervention::patch`] returns).
    pub fn apply(&self, act: &mut ActivationMut<'_>, prompts: &Prompts) -> Result<()> {
        let rows = self.rows(act, prompts)?;
        if rows.is_empty() {
            return Ok(());
        }
        match &self.kind {
            Kind::Vector(v) => {
                check_width(v.len(), act.width(), "the steering vector")?;
                for &r in &rows {
                    axpy(1.0, v, act.row_mut(r));
                }
                Ok(())
            }
            Kind::Latents { sae, plan } => apply_latent_edits(sae, plan, act, &rows),
        }
    }

    /// The patch for [`ForwardOptions::patch`]: [`Intervention::apply`] with `prompts`.
    pub fn patch<'a>(
        &'a self,
        prompts: &'a Prompts,
    ) -> impl Fn(&mut ActivationMut<'_>) -> Result<()> + 'a {
        move |act: &mut ActivationMut<'_>| self.apply(act, prompts)
    }
}

/// `opts` with every intervention of `set` patched in, in order.
pub fn with_interventions<'a>(
    mut opts: ForwardOptions<'a>,
    set: &'a [Intervention<'_>],
    prompts: &'a Prompts,
) -> ForwardOptions<'a> {
    for iv in set {
        opts = opts.patch(iv.hook.clone(), iv.patch(prompts));
    }
    opts
}

fn check_width(have: usize, want: usize, what: &str) -> Result<()> {
    if have != want {
        return Err(Error::Shape(format!(
            "{what} has width {have}, but the hook activation has width {want}"
        )));
    }
    Ok(())
}

/// `y += s·x`.
fn axpy(s: f32, x: &[f32], y: &mut [f32]) {
    for (o, v) in y.iter_mut().zip(x) {
        *o += s * v;
    }
}

/// The latent edits of `plan` at `rows` of `act`: one encoding of those rows (when an
/// edit reads a latent or the SAE normalises its input), then `x += (a′_i − a_i)·d_i`
/// per changed latent.
fn apply_latent_edits(
    sae: &Sae,
    plan: &[LatentPlan],
    act: &mut ActivationMut<'_>,
    rows: &[usize],
) -> Result<()> {
    let d = act.width();
    check_width(sae.cfg.d_in, d, "the SAE input")?;
    let reads = plan.iter().any(|p| p.reads);
    let layer_norm = sae.cfg.input_norm == InputNorm::LayerNorm;
    // Current values of the latents that are read, per row, and the decoder's
    // per-row factor (the token's std for a LayerNorm SAE).
    let mut current: Vec<f32> = Vec::new();
    let mut row_scale: Vec<f32> = vec![1.0; rows.len()];
    if reads || layer_norm {
        let mut x = Matrix::zeros(rows.len(), d);
        for (i, &r) in rows.iter().enumerate() {
            x.row_mut(i).copy_from_slice(act.row(r));
        }
        let norm = if reads {
            let enc = sae.encode(&x)?;
            current = vec![0.0; rows.len() * plan.len()];
            for i in 0..rows.len() {
                let (idx, val) = enc.latents.row(i);
                for (j, p) in plan.iter().enumerate() {
                    if let Some(k) = idx.iter().position(|&l| l as usize == p.latent) {
                        current[i * plan.len() + j] = val[k];
                    }
                }
            }
            enc.norm
        } else {
            sae.prepare_input(&x)?.1
        };
        if let (Some(stats), true) = (norm, layer_norm) {
            for (s, st) in row_scale.iter_mut().zip(stats) {
                *s = st.std;
            }
        }
    }
    let w_dec = &sae.params.get("W_dec").data;
    for (i, &r) in rows.iter().enumerate() {
        let out = act.row_mut(r);
        for (j, p) in plan.iter().enumerate() {
            let a = if p.reads {
                current[i * plan.len() + j]
            } else {
                0.0
            };
            let delta = p.ops.iter().fold(a, |v, op| op.apply(v)) - a;
            if delta != 0.0 {
                let dir = &w_dec[p.latent * d..(p.latent + 1) * d];
                axpy(delta * p.dir_scale * row_scale[i], dir, out);
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use saelab_core::{ArchConfig, ParamSet, SaeConfig, Tensor};
    use saelab_testkit::tied_random_weights;

    fn sae(d: usize, n: usize, k: usize) -> Sae {
        let (we, wd) = tied_random_weights(d, n, 7, 1.0);
        let cfg = SaeConfig::new(ArchConfig::default_for("topk", k).unwrap(), d, n);
        let mut p = ParamSet::new();
        p.insert("W_enc", Tensor::new(&[d, n], we).unwrap());
        p.insert("b_enc", Tensor::new(&[n], vec![0.0; n]).unwrap());
        p.insert("W_dec", Tensor::new(&[n, d], wd).unwrap());
        p.insert("b_dec", Tensor::new(&[d], vec![0.0; d]).unwrap());
        Sae::new(cfg, p).unwrap()
    }

    #[test]
    fn positions_parse_and_cover() {
        assert_eq!("last".parse::<Positions>().unwrap(), Positions::Last);
        assert_eq!(
            "1, 4,7".parse::<Positions>().unwrap(),
            Positions::List(vec![1, 4, 7])
        );
        assert!("first".parse::<Positions>().is_err());
        assert!("1,,2".parse::<Positions>().is_err());
        assert!(Positions::Prompt.covers(4, 5) && !Positions::Prompt.covers(5, 5));
        assert!(Positions::Last.covers(4, 5) && !Positions::Last.covers(3, 5));
        assert_eq!(Positions::List(vec![2, 3]).to_string(), "2,3");
    }

    #[test]
    fn ops_follow_the_table() {
        assert_eq!(Op::Add(2.0).apply(1.0), 3.0);
        assert_eq!(Op::Clamp(5.0).apply(1.0), 5.0);
        assert_eq!(Op::ClampMin(5.0).apply(7.0), 7.0);
        assert_eq!(Op::ClampMin(5.0).apply(1.0), 5.0);
        assert_eq!(Op::Scale(-2.0).apply(1.5), -3.0);
        assert_eq!(Op::Ablate.apply(1.5), 0.0);
        assert_eq!(Op::NegClamp(4.0).apply(1.5), -4.0);
        assert_eq!(Op::NegClamp(4.0).apply(0.0), 0.0);
    }

    /// On a toy activation, every op's output is `x + (a′ − a)·d_i` with `a` from the
    /// SAE's own encoder, and positions and BOS are respected.
    #[test]
    fn edits_move_the_activation_along_the_decoder_row() {
        let (d, n) = (8, 32);
        let s = sae(d, n, 4);
        let x0: Vec<f32> = saelab_testkit::lcg_uniform(3 * d, 11, 1.0);
        let prompts = Prompts::new(&[vec![1u32, 5, 6]], Some(1));
        let enc = s
            .encode(&Matrix {
                rows: 3,
                cols: d,
                data: x0.clone(),
            })
            .unwrap()
            .latents
            .to_dense();
        // The most active latent at position 2.
        let row2 = enc.row(2);
        let i = (0..n).max_by(|&a, &b| row2[a].total_cmp(&row2[b])).unwrap();
        let a = row2[i];
        assert!(a > 0.0);
        let dir = &s.params.get("W_dec").data[i * d..(i + 1) * d];
        for (op, want) in [
            (Op::Clamp(3.0), 3.0),
            (Op::Add(1.5), a + 1.5),
            (Op::Scale(2.0), 2.0 * a),
            (Op::Ablate, 0.0),
            (Op::NegClamp(2.0), -2.0),
            (Op::ClampMin(a + 1.0), a + 1.0),
        ] {
            let iv =
                Intervention::latents(&s, "h", &[Edit { latent: i, op }], Positions::All).unwrap();
            let mut buf = x0.clone();
            let mut act = ActivationMut::from_slice(1, 3, d, &mut buf).unwrap();
            iv.apply(&mut act, &prompts).unwrap();
            assert_eq!(&buf[..d], &x0[..d], "{op:?}: BOS left alone");
            for c in 0..d {
                let expect = x0[2 * d + c] + (want - a) * dir[c];
                assert!((buf[2 * d + c] - expect).abs() < 1e-6, "{op:?}");
            }
        }
        // `last` edits only position 2; a list only the positions named.
        let iv = Intervention::latents(
            &s,
            "h",
            &[Edit {
                latent: i,
                op: Op::Add(1.0),
            }],
            Positions::List(vec![1]),
        )
        .unwrap();
        let mut buf = x0.clone();
        let mut act = ActivationMut::from_slice(1, 3, d, &mut buf).unwrap();
        iv.apply(&mut act, &prompts).unwrap();
        assert_ne!(&buf[d..2 * d], &x0[d..2 * d]);
        assert_eq!(&buf[2 * d..], &x0[2 * d..]);
    }

    #[test]
    fn bad_edits_are_refused_in_one_line() {
        let s = sae(8, 32, 4);
        let e = |latent, op| Intervention::latents(&s, "h", &[Edit { latent, op }], Positions::All);
        let msg = e(32, Op::Ablate).unwrap_err().to_string();
        assert!(
            msg.contains("latent 32 is out of range") && msg.contains("32 latents"),
            "{msg}"
        );
        let msg = e(3, Op::Add(f32::NAN)).unwrap_err().to_string();
        assert!(msg.contains("not a finite number"), "{msg}");
        assert!(Intervention::latents(&s, "h", &[], Positions::All).is_err());
        assert!(Intervention::vector("h", vec![f32::INFINITY], Positions::All).is_err());
    }
}
