//! Patches that splice an SAE (or a constant) into a model at a hook point.
//!
//! Every function here returns a closure for [`ForwardOptions::patch`]: it receives the
//! hook's activation `[B, T, d]` and returns its replacement of the same shape. A
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

use candle_core::{DType, Device, Tensor};
use saelab_core::{Error, Latents, Matrix, Result, Sae};
use saelab_lm::model::candle_err;

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

/// The values of an f32 (or any float) tensor `[B, T, d]` and its three dimensions.
pub(crate) fn tensor_rows(t: &Tensor) -> Result<((usize, usize, usize), Vec<f32>)> {
    let dims = t.dims3().map_err(|_| {
        Error::Shape(format!(
            "hook activation must be [B, T, d], got {:?}",
            t.dims()
        ))
    })?;
    let v = t
        .to_dtype(DType::F32)
        .and_then(|t| t.flatten_all())
        .and_then(|t| t.to_vec1::<f32>())
        .map_err(candle_err)?;
    Ok((dims, v))
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

/// Writes `rows` of `values` (`[M, d]`) back into `flat` and wraps it as `[B, T, d]`.
fn scatter(
    mut flat: Vec<f32>,
    dims: (usize, usize, usize),
    rows: &[usize],
    values: &Matrix,
) -> Result<Tensor> {
    let d = dims.2;
    for (i, &r) in rows.iter().enumerate() {
        flat[r * d..(r + 1) * d].copy_from_slice(values.row(i));
    }
    Tensor::from_vec(flat, dims, &Device::Cpu).map_err(candle_err)
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
) -> impl Fn(&Tensor) -> Result<Tensor> + 'a {
    move |t: &Tensor| {
        let (dims, flat) = tensor_rows(t)?;
        check_widths(sae, dims.2)?;
        check_mask(mask, dims.0, dims.1)?;
        let (x, positions) = gather(&flat, dims.2, mask);
        let (latents, out) = sae.forward(&x)?;
        let patched = scatter(flat, dims, &positions, &out)?;
        *record.borrow_mut() = Some(SpliceRecord {
            x,
            out,
            latents,
            positions,
        });
        Ok(patched)
    }
}

/// A patch setting the activation at the masked positions to the vector `value`
/// (`[d]`): zeros for zero ablation, the mean activation for mean ablation.
pub fn constant_patch<'a>(
    value: &'a [f32],
    mask: Option<&'a [bool]>,
) -> impl Fn(&Tensor) -> Result<Tensor> + 'a {
    move |t: &Tensor| {
        let (dims, mut flat) = tensor_rows(t)?;
        if value.len() != dims.2 {
            return Err(Error::Shape(format!(
                "ablation value has width {}, the hook activation {}",
                value.len(),
                dims.2
            )));
        }
        check_mask(mask, dims.0, dims.1)?;
        for (r, row) in flat.chunks_mut(dims.2).enumerate() {
            if mask.is_none_or(|m| m[r]) {
                row.copy_from_slice(value);
            }
        }
        Tensor::from_vec(flat, dims, &Device::Cpu).map_err(candle_err)
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
    /// Output `recon + error`, returned as the model's own activation `x` bit for bit,
    /// so the forward is exactly the clean one.
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
) -> impl Fn(&Tensor) -> Result<Tensor> + 'a
where
    F: Fn(&ErrorTerm<'_>) -> Result<ErrorTermAction> + 'a,
{
    move |t: &Tensor| {
        let (dims, flat) = tensor_rows(t)?;
        check_widths(sae, dims.2)?;
        check_mask(mask, dims.0, dims.1)?;
        let (x, positions) = gather(&flat, dims.2, mask);
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
            batch: (dims.0, dims.1),
            positions: &positions,
            x: &x,
            latents: &enc.latents,
            recon: &recon,
            error: &error,
        })?;
        match action {
            ErrorTermAction::Keep => Tensor::from_vec(flat, dims, &Device::Cpu).map_err(candle_err),
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
                scatter(flat, dims, &positions, &out)
            }
        }
    }
}
