//! Patches that splice an SAE (or a constant) into a model at a hook point.
//!
//! Every function here returns a closure for [`ForwardOptions::patch`]: it receives the
//! hook's activation `[B, T, d]` and rewrites the spliced positions in place. A
//! *mask* of `B·T` booleans (row-major over `[B, T]`, see [`splice_mask`]) says which
//! positions are replaced; the others keep the model's own activation. By default the
//! positions whose token is BOS are left alone, as SAELens does for its "ignored"
//! tokens: the BOS residual is the attention sink, orders of magnitude off the typical
//! norm, and SAEs are trained without it.
//!
//! - [`reconstruction_patch`]: `x ↦ Sae::forward(x)` (reconstruction plus skip term),
//!   recording the inputs, outputs and latents for the reconstruction metrics;
//! - [`constant_patch`]: `x ↦ c` (zero ablation, mean ablation);
//! - [`error_term_patch`]: error-term mode. The hook output is `x̂ + (x − x̂)`, i.e. the
//!   model runs unchanged, while a callback sees `x`, the latents, `x̂` and the error
//!   `x − x̂`, and may replace the latents (the output is then `decode(f′) + (x − x̂)`).
//!
//! [`ForwardOptions::patch`]: saelab_lm::model::ForwardOptions::patch

use std::cell::RefCell;

use saelab_core::{Error, Latents, Matrix, Result, Sae};
use saelab_lm::model::ActivationMut;

/// Which positions of a batch of equal-length sequences a splice replaces: `B·T`
/// booleans, row-major over `[B, T]`. A position is spliced unless its token is `bos`
/// (when `bos` is `Some` and `splice_bos` is false).
pub fn splice_mask<S: AsRef<[u32]>>(tokens: &[S], bos: Option<u32>, splice_bos: bool) -> Vec<bool> {
    tokens
        .iter()
        .flat_map(|s| s.as_ref().iter())
        .map(|&t| splice_bos || Some(t) != bos)
        .collect()
}

/// The rows of `flat` (`[B·T, d]`) selected by `mask`, as a matrix, with their indices.
fn gather(flat: &[f32], d: usize, mask: Option<&[bool]>) -> (Matrix, Vec<usize>) {
    let n = flat.len() / d.max(1);
    let rows: Vec<usize> = match mask {
        Some(m) => (0..n).filter(|&r| m[r]).collect(),
        None => (0..n).collect(),
    };
    let mut data = Vec::with_capacity(rows.len() * d);
    for &r in &rows {
        data.extend_from_slice(&flat[r * d..(r + 1) * d]);
    }
    (
        Matrix {
            rows: rows.len(),
            cols: d,
            data,
        },
        rows,
    )
}

fn check_mask(mask: Option<&[bool]>, b: usize, t: usize) -> Result<()> {
    match mask {
        Some(m) if m.len() != b * t => Err(Error::Shape(format!(
            "splice mask has {} entries for a [{b}, {t}] batch",
            m.len()
        ))),
        _ => Ok(()),
    }
}

fn check_widths(sae: &Sae, d: usize) -> Result<()> {
    if sae.cfg.d_in != d || sae.cfg.d_out != d {
        return Err(Error::Shape(format!(
            "the SAE maps d_in = {} to d_out = {}, but the hook activation has width {d}; \
             only an SAE whose output replaces its input can be spliced",
            sae.cfg.d_in, sae.cfg.d_out
        )));
    }
    Ok(())
}

/// Writes row `i` of `values` (`[M, d]`) over row `rows[i]` of the activation.
fn scatter(act: &mut ActivationMut<'_>, rows: &[usize], values: &Matrix) {
    for (i, &r) in rows.iter().enumerate() {
        act.row_mut(r).copy_from_slice(values.row(i));
    }
}

/// What a [`reconstruction_patch`] saw and produced at its latest call, for the
/// spliced positions only (`M` rows, in row-major `[B, T]` order).
#[derive(Clone, Debug)]
pub struct SpliceRecord {
    /// The hook activations that were replaced, `[M, d]`.
    pub x: Matrix,
    /// What replaced them (`Sae::forward`: reconstruction plus skip term), `[M, d]`.
    pub out: Matrix,
    /// The SAE latents, `[M, n]`.
    pub latents: Latents,
    /// Flat position `b·T + t` of each row.
    pub positions: Vec<usize>,
}

/// A patch replacing the activation at the masked positions by the SAE's output
/// `Sae::forward(x)` (input normalisation, reconstruction and skip term included).
/// Each call stores a [`SpliceRecord`] in `record`. `mask = None` splices every position.
pub fn reconstruction_patch<'a>(
    sae: &'a Sae,
    mask: Option<&'a [bool]>,
    record: &'a RefCell<Option<SpliceRecord>>,
) -> impl Fn(&mut ActivationMut<'_>) -> Result<()> + 'a {
    move |act: &mut ActivationMut<'_>| {
        check_widths(sae, act.width())?;
        check_mask(mask, act.batch(), act.seq_len())?;
        let (x, positions) = gather(act.as_slice(), act.width(), mask);
        let (latents, out) = sae.forward(&x)?;
        scatter(act, &positions, &out);
        *record.borrow_mut() = Some(SpliceRecord {
            x,
            out,
            latents,
            positions,
        });
        Ok(())
    }
}

/// A patch setting the activation at the masked positions to the vector `value`
/// (`[d]`): zeros for zero ablation, the mean activation for mean ablation.
pub fn constant_patch<'a>(
    value: &'a [f32],
    mask: Option<&'a [bool]>,
) -> impl Fn(&mut ActivationMut<'_>) -> Result<()> + 'a {
    move |act: &mut ActivationMut<'_>| {
        if value.len() != act.width() {
            return Err(Error::Shape(format!(
                "ablation value has width {}, the hook activation {}",
                value.len(),
                act.width()
            )));
        }
        check_mask(mask, act.batch(), act.seq_len())?;
        for (r, row) in act.rows_mut().enumerate() {
            if mask.is_none_or(|m| m[r]) {
                row.copy_from_slice(value);
            }
        }
        Ok(())
    }
}

/// The SAE decomposition of a hook activation that [`error_term_patch`] hands to its
/// callback: `x = recon + error` (up to one f32 rounding per value), for the spliced
/// positions only (`M` rows in row-major `[B, T]` order).
#[derive(Debug)]
pub struct ErrorTerm<'t> {
    /// Batch size `B` and sequence length `T` of the forward.
    pub batch: (usize, usize),
    /// Flat position `b·T + t` of each row.
    pub positions: &'t [usize],
    /// The model's activation, `[M, d]`.
    pub x: &'t Matrix,
    /// The SAE latents, `[M, n]`.
    pub latents: &'t Latents,
    /// `Sae::forward(x)`: reconstruction plus skip term, `[M, d]`.
    pub recon: &'t Matrix,
    /// The SAE error `x − recon`, `[M, d]`.
    pub error: &'t Matrix,
}

/// What the hook outputs after an [`error_term_patch`] callback.
#[derive(Clone, Debug)]
pub enum ErrorTermAction {
    /// Output `recon + error`, i.e. leave the model's own activation `x` untouched bit
    /// for bit, so the forward is exactly the clean one.
    Keep,
    /// Output `decode(latents) + skip + error`, with these latents `[M, n]` in place of
    /// the SAE's (ablating or steering features while keeping the error term).
    Replace(Latents),
}

/// Error-term mode: the SAE is spliced in as `x̂ + (x − x̂)`, so the model's output is
/// preserved exactly while `callback` sees the decomposition ([`ErrorTerm`]) at every
/// forward; it may return [`ErrorTermAction::Replace`] to intervene on the latents with
/// the error term held fixed. `mask = None` decomposes every position; unmasked
/// positions always keep `x`.
pub fn error_term_patch<'a, F>(
    sae: &'a Sae,
    mask: Option<&'a [bool]>,
    callback: F,
) -> impl Fn(&mut ActivationMut<'_>) -> Result<()> + 'a
where
    F: Fn(&ErrorTerm<'_>) -> Result<ErrorTermAction> + 'a,
{
    move |act: &mut ActivationMut<'_>| {
        check_widths(sae, act.width())?;
        check_mask(mask, act.batch(), act.seq_len())?;
        let (x, positions) = gather(act.as_slice(), act.width(), mask);
        let enc = sae.encode(&x)?;
        let skip = sae.skip_term(&x)?;
        let with_skip = |mut m: Matrix| {
            if let Some(s) = &skip {
                m.data.iter_mut().zip(&s.data).for_each(|(o, v)| *o += v);
            }
            m
        };
        let recon = with_skip(sae.decode(&enc)?);
        let mut error = x.clone();
        error
            .data
            .iter_mut()
            .zip(&recon.data)
            .for_each(|(e, r)| *e -= r);
        let action = callback(&ErrorTerm {
            batch: (act.batch(), act.seq_len()),
            positions: &positions,
            x: &x,
            latents: &enc.latents,
            recon: &recon,
            error: &error,
        })?;
        match action {
            ErrorTermAction::Keep => Ok(()),
            ErrorTermAction::Replace(lat) => {
                if lat.rows() != x.rows {
                    return Err(Error::Shape(format!(
                        "replacement latents have {} rows, the splice {}",
                        lat.rows(),
                        x.rows
                    )));
                }
                let mut out = with_skip(sae.decode_latents(&lat, enc.norm.as_deref())?);
                out.data
                    .iter_mut()
                    .zip(&error.data)
                    .for_each(|(o, e)| *o += e);
                scatter(act, &positions, &out);
                Ok(())
            }
        }
    }
}
