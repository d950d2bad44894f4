//! A loaded SAE for inference: `encode`, `decode`, `forward`.
//!
//! The order of operations follows SAELens (the reference the fixtures come from):
//!
//! ```text
//! x_n   = norm_in(x)                       (InputNorm::LayerNorm: per-token mean/std)
//! x_enc = x_n − b_dec·[apply_b_dec_to_input]
//! f     = activation(x_enc)                (arch::build(&cfg.arch).encode)
//!         (rescale_acts_by_decoder_norm: the TopK sees pre·‖W_dec,j‖ and f keeps that scale)
//! x̂     = norm_out(f · W_dec + b_dec)      (f divided by ‖W_dec,j‖ first when rescaling)
//! out   = x̂ + x · W_skipᵀ                  (only when a skip matrix W_skip [d_out, d_in] exists;
//!                                           x is the raw input, as in SAELens's SkipTranscoder
//!                                           and sparsify's skip_connection)
//! ```
//!
//! `decode` stops at x̂ (SAELens `decode`, sparsify `decode`); `forward` adds the skip term
//! (SAELens `forward`, sparsify `sae_out`).

use crate::config::{InputNorm, SaeConfig};
use crate::error::{Error, Result};
use crate::kernels::{self, Transpose};
use crate::latents::Latents;
use crate::tensor::{Matrix, ParamSet, Tensor};

/// SAELens's layer-norm epsilon, added to the standard deviation before dividing.
pub const LAYER_NORM_EPS: f32 = 1e-5;

/// The per-token statistics that [`InputNorm::LayerNorm`] removes before encoding and
/// restores after decoding.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RowNorm {
    /// Mean of the token's activation vector.
    pub mean: f32,
    /// Unbiased standard deviation (divisor `d − 1`, as `torch.std`) of the centred vector.
    pub std: f32,
}

/// The result of [`Sae::encode`]: latents plus what decoding needs to undo the input
/// normalisation.
#[derive(Clone, Debug, PartialEq)]
pub struct Encoded {
    /// Sparse latents `[B, n]`. With `rescale_acts_by_decoder_norm` these are the
    /// rescaled values SAELens reports (`pre · ‖W_dec,j‖` after TopK).
    pub latents: Latents,
    /// One entry per row when the config uses [`InputNorm::LayerNorm`], else `None`.
    pub norm: Option<Vec<RowNorm>>,
}

/// An SAE ready for inference: its configuration and its file-form parameters.
///
/// Parameter names and shapes follow SAELens: `W_enc [d_in, n]`, `b_enc [n]`,
/// `W_dec [n, d_out]`, `b_dec [d_out]`, plus `threshold [n]` (JumpReLU / BatchTopK),
/// `b_gate`, `r_mag`, `b_mag` `[n]` (Gated, which has no `b_enc`), and optionally
/// `W_skip [d_out, d_in]`.
#[derive(Clone, Debug, PartialEq)]
pub struct Sae {
    /// Architecture, widths and input conventions.
    pub cfg: SaeConfig,
    /// File-form parameters.
    pub params: ParamSet,
}

/// The tensors an SAE with configuration `cfg` must have, with their shapes
/// (`W_skip` is optional and not listed).
pub fn required_params(cfg: &SaeConfig) -> Vec<(&'static str, Vec<usize>)> {
    cfg.arch.spec().file_params(cfg.dims())
}

/// Checks that `cfg` is self-consistent (independently of any weights). Returns a short
/// message describing the first problem.
pub fn check_config(cfg: &SaeConfig) -> std::result::Result<(), String> {
    if cfg.d_in == 0 || cfg.d_sae == 0 || cfg.d_out == 0 {
        return Err(format!(
            "widths must be positive (d_in={}, d_sae={}, d_out={})",
            cfg.d_in, cfg.d_sae, cfg.d_out
        ));
    }
    if cfg.apply_b_dec_to_input && cfg.d_out != cfg.d_in {
        return Err(format!(
            "apply_b_dec_to_input needs d_out == d_in (d_in={}, d_out={})",
            cfg.d_in, cfg.d_out
        ));
    }
    if cfg.input_norm == InputNorm::LayerNorm && cfg.d_out != cfg.d_in {
        return Err("layer_norm input normalisation is not supported for transcoders".into());
    }
    if cfg.input_norm == InputNorm::LayerNorm && cfg.d_in < 2 {
        return Err("layer_norm input normalisation needs d_in >= 2".into());
    }
    let arch = cfg.arch.spec();
    arch.check(cfg.dims())?;
    if cfg.rescale_acts_by_decoder_norm && !arch.rescales_by_decoder_norm() {
        return Err(format!(
            "rescale_acts_by_decoder_norm is not defined for {}",
            cfg.arch.name()
        ));
    }
    Ok(())
}

impl Sae {
    /// Wraps `cfg` and `params` after checking that every required tensor is present with
    /// the shape the config implies, that no unknown tensor is present, and that every
    /// value is finite. Errors are [`Error::Shape`] / [`Error::Config`] with a one-line
    /// message; file readers re-wrap them with the file name.
    pub fn new(cfg: SaeConfig, params: ParamSet) -> Result<Sae> {
        let sae = Sae { cfg, params };
        sae.check()?;
        Ok(sae)
    }

    /// The checks of [`Sae::new`], on an existing value.
    pub fn check(&self) -> Result<()> {
        check_config(&self.cfg).map_err(Error::Config)?;
        let required = required_params(&self.cfg);
        for (name, shape) in &required {
            let t = self
                .params
                .try_get(name)
                .ok_or_else(|| Error::Shape(format!("missing tensor {name}")))?;
            if &t.shape != shape {
                return Err(Error::Shape(format!(
                    "{name} has shape {:?}, expected {shape:?} for d_in={}, d_sae={}, d_out={}",
                    t.shape, self.cfg.d_in, self.cfg.d_sae, self.cfg.d_out
                )));
            }
        }
        for (name, t) in self.params.iter() {
            if name == "W_skip" {
                let want = [self.cfg.d_out, self.cfg.d_in];
                if t.shape != want {
                    return Err(Error::Shape(format!(
                        "W_skip has shape {:?}, expected {want:?}",
                        t.shape
                    )));
                }
            } else if !required.iter().any(|(n, _)| *n == name) {
                return Err(Error::Shape(format!(
                    "unexpected tensor {name} for architecture {}",
                    self.cfg.arch.name()
                )));
            }
            if let Some(i) = t.data.iter().position(|v| !v.is_finite()) {
                return Err(Error::Shape(format!(
                    "{name} holds a non-finite value ({}) at flat index {i}",
                    t.data[i]
                )));
            }
        }
        Ok(())
    }

    /// Whether the SAE has a skip matrix `W_skip`.
    pub fn has_skip(&self) -> bool {
        self.params.contains("W_skip")
    }

    /// Whether this is a transcoder (output width differs from input, or a skip path).
    pub fn is_transcoder(&self) -> bool {
        self.cfg.d_out != self.cfg.d_in || self.has_skip()
    }

    /// Euclidean norm of each decoder row, `[n]`.
    pub fn decoder_norms(&self) -> Vec<f32> {
        let w = self.params.get("W_dec");
        w.data
            .chunks(self.cfg.d_out)
            .map(|r| kernels::dot(r, r).sqrt())
            .collect()
    }

    fn check_input(&self, x: &Matrix) -> Result<()> {
        if x.cols != self.cfg.d_in {
            return Err(Error::Shape(format!(
                "input has {} columns but the SAE expects d_in = {}",
                x.cols, self.cfg.d_in
            )));
        }
        Ok(())
    }

    /// The encoder input for `x` `[B, d_in]`: normalised (LayerNorm) and with `b_dec`
    /// subtracted where the config says so, plus the per-row statistics removed.
    pub fn prepare_input(&self, x: &Matrix) -> Result<(Matrix, Option<Vec<RowNorm>>)> {
        self.check_input(x)?;
        let mut xe = x.clone();
        let norm = match self.cfg.input_norm {
            InputNorm::None => None,
            InputNorm::LayerNorm => Some(layer_norm_in(&mut xe)),
        };
        if self.cfg.apply_b_dec_to_input {
            let b = &self.params.get("b_dec").data;
            for r in 0..xe.rows {
                for (v, bv) in xe.row_mut(r).iter_mut().zip(b) {
                    *v -= bv;
                }
            }
        }
        Ok((xe, norm))
    }

    /// Encodes `x` `[B, d_in]` into sparse latents `[B, n]` (see the module docs for the
    /// exact steps). Fails only if `x` does not have `d_in` columns.
    pub fn encode(&self, x: &Matrix) -> Result<Encoded> {
        let (xe, norm) = self.prepare_input(x)?;
        let arch = self.cfg.arch.spec();
        let latents = if self.cfg.rescale_acts_by_decoder_norm {
            // TopK on pre·‖W_dec,j‖: scale the encoder columns and bias by the norms.
            let norms = self.decoder_norms();
            let n = self.cfg.d_sae;
            let mut w = self.params.get("W_enc").clone();
            for row in w.data.chunks_mut(n) {
                for (v, s) in row.iter_mut().zip(&norms) {
                    *v *= s;
                }
            }
            let mut b = self.params.get("b_enc").clone();
            for (v, s) in b.data.iter_mut().zip(&norms) {
                *v *= s;
            }
            let mut p = ParamSet::new();
            p.insert("W_enc", w);
            p.insert("b_enc", b);
            arch.encode(&p, &xe)
        } else {
            arch.encode(&self.params, &xe)
        };
        Ok(Encoded { latents, norm })
    }

    /// Dense latents `[B, n]` for `x` `[B, d_in]` (convenient for tests and small batches).
    pub fn encode_dense(&self, x: &Matrix) -> Result<Matrix> {
        Ok(self.encode(x)?.latents.to_dense())
    }

    /// Decodes latents back to `[B, d_out]`: `f · W_dec + b_dec`, then the inverse input
    /// normalisation. Does not add the skip term (see [`Sae::forward`]).
    pub fn decode(&self, enc: &Encoded) -> Result<Matrix> {
        self.decode_latents(&enc.latents, enc.norm.as_deref())
    }

    /// [`Sae::decode`] from latents `[B, n]` and, for LayerNorm SAEs, the per-row
    /// statistics returned by the encoder (`None` decodes without denormalising).
    pub fn decode_latents(&self, latents: &Latents, norm: Option<&[RowNorm]>) -> Result<Matrix> {
        if latents.n != self.cfg.d_sae {
            return Err(Error::Shape(format!(
                "latents have width {} but the SAE has d_sae = {}",
                latents.n, self.cfg.d_sae
            )));
        }
        if let Some(s) = norm {
            if s.len() != latents.rows() {
                return Err(Error::Shape(format!(
                    "{} rows of latents but {} rows of normalisation statistics",
                    latents.rows(),
                    s.len()
                )));
            }
        }
        let w_dec = &self.params.get("W_dec").data;
        let b_dec = &self.params.get("b_dec").data;
        let mut out = if self.cfg.rescale_acts_by_decoder_norm {
            let norms = self.decoder_norms();
            let mut l = latents.clone();
            for (v, &j) in l.val.iter_mut().zip(&l.idx) {
                *v /= norms[j as usize];
            }
            kernels::decode(&l, w_dec, b_dec)
        } else {
            kernels::decode(latents, w_dec, b_dec)
        };
        if let (Some(stats), true) = (norm, self.cfg.input_norm == InputNorm::LayerNorm) {
            for (r, s) in stats.iter().enumerate() {
                for v in out.row_mut(r) {
                    *v = *v * s.std + s.mean;
                }
            }
        }
        Ok(out)
    }

    /// The skip term `x · W_skipᵀ` `[B, d_out]` for raw input `x` `[B, d_in]`, if the
    /// SAE has a skip matrix.
    pub fn skip_term(&self, x: &Matrix) -> Result<Option<Matrix>> {
        self.check_input(x)?;
        let Some(w) = self.params.try_get("W_skip") else {
            return Ok(None);
        };
        let mut out = Matrix::zeros(x.rows, self.cfg.d_out);
        kernels::gemm(
            x.rows,
            self.cfg.d_in,
            self.cfg.d_out,
            1.0,
            &x.data,
            Transpose::No,
            &w.data,
            Transpose::Yes,
            0.0,
            &mut out.data,
        );
        Ok(Some(out))
    }

    /// Full forward pass on `x` `[B, d_in]`: the latents and the output `[B, d_out]`
    /// (reconstruction plus skip term).
    pub fn forward(&self, x: &Matrix) -> Result<(Latents, Matrix)> {
        let enc = self.encode(x)?;
        let mut out = self.decode(&enc)?;
        if let Some(s) = self.skip_term(x)? {
            for (o, v) in out.data.iter_mut().zip(&s.data) {
                *o += v;
            }
        }
        Ok((enc.latents, out))
    }

    /// `Ok` if [`Sae::refit_sq_err`] is defined for this SAE, else the error that says
    /// why not.
    pub fn check_refit(&self) -> Result<()> {
        if self.is_transcoder() || self.cfg.input_norm == InputNorm::LayerNorm {
            return Err(Error::config(
                "refit needs an SAE that reconstructs its own input without LayerNorm \
                 (not a transcoder or a LayerNorm-input SAE)",
            ));
        }
        Ok(())
    }

    /// `Σ_r ‖x_r − x̂_r‖²` when each row's coefficients on its active `latents` are
    /// refit by least squares (same support, same decoder; see [`crate::refit`]).
    /// Defined for SAEs whose output is an affine map of the latents on the input's own
    /// space: not for transcoders or LayerNorm-input SAEs (an error says so).
    pub fn refit_sq_err(&self, x: &Matrix, latents: &Latents) -> Result<f64> {
        self.check_refit()?;
        self.check_input(x)?;
        let mut y = crate::kernels::subtract_bias(x, &self.params.get("b_dec").data);
        if let Some(s) = self.skip_term(x)? {
            y.data.iter_mut().zip(&s.data).for_each(|(v, s)| *v -= s);
        }
        Ok(crate::refit::refit_sq_err(
            &y,
            latents,
            &self.params.get("W_dec").data,
        ))
    }

    /// A tensor of the SAE by name, or a shape error naming it.
    pub fn param(&self, name: &str) -> Result<&Tensor> {
        self.params
            .try_get(name)
            .ok_or_else(|| Error::Shape(format!("missing tensor {name}")))
    }
}

/// SAELens `layer_norm` input step, in place on every row of `x`: subtract the mean,
/// divide by (unbiased std + [`LAYER_NORM_EPS`]). Returns the statistics per row.
fn layer_norm_in(x: &mut Matrix) -> Vec<RowNorm> {
    let d = x.cols;
    (0..x.rows)
        .map(|r| {
            let row = x.row_mut(r);
            let mean = (row.iter().map(|&v| v as f64).sum::<f64>() / d as f64) as f32;
            row.iter_mut().for_each(|v| *v -= mean);
            let ss: f64 = row.iter().map(|&v| (v as f64) * (v as f64)).sum();
            let std = (ss / (d as f64 - 1.0)).sqrt() as f32;
            let denom = std + LAYER_NORM_EPS;
            row.iter_mut().for_each(|v| *v /= denom);
            RowNorm { mean, std }
        })
        .collect()
}

#[cfg(test)]
#[allow(clippy::needless_range_loop)] // the naive references index on purpose
mod tests {
    use super::*;
    use crate::config::ArchConfig;
    use crate::rng::Rng;

    fn random_tensor(rng: &mut Rng, shape: &[usize], scale: f32) -> Tensor {
        let n = shape.iter().product();
        Tensor::new(shape, (0..n).map(|_| rng.normal() as f32 * scale).collect()).unwrap()
    }

    fn relu_sae(d: usize, n: usize, d_out: usize, skip: bool) -> Sae {
        let mut rng = Rng::new(3);
        let mut cfg = SaeConfig::new(
            ArchConfig::Relu(crate::arch::ReluConfig {
                l1_coefficient: 1.0,
            }),
            d,
            n,
        );
        cfg.d_out = d_out;
        cfg.apply_b_dec_to_input = d == d_out;
        let mut p = ParamSet::new();
        p.insert("W_enc", random_tensor(&mut rng, &[d, n], 0.5));
        p.insert("b_enc", random_tensor(&mut rng, &[n], 0.1));
        p.insert("W_dec", random_tensor(&mut rng, &[n, d_out], 0.5));
        p.insert("b_dec", random_tensor(&mut rng, &[d_out], 0.1));
        if skip {
            p.insert("W_skip", random_tensor(&mut rng, &[d_out, d], 0.3));
        }
        Sae::new(cfg, p).unwrap()
    }

    /// Dense, literal evaluation of the SAELens formulas, independent of the kernels.
    fn naive_forward(sae: &Sae, x: &Matrix) -> (Matrix, Matrix) {
        let (d, n, o) = (sae.cfg.d_in, sae.cfg.d_sae, sae.cfg.d_out);
        let p = &sae.params;
        let (we, be, wd, bd) = (
            &p.get("W_enc").data,
            &p.get("b_enc").data,
            &p.get("W_dec").data,
            &p.get("b_dec").data,
        );
        let mut f = Matrix::zeros(x.rows, n);
        let mut y = Matrix::zeros(x.rows, o);
        for r in 0..x.rows {
            let xr = x.row(r);
            for j in 0..n {
                let mut s = be[j] as f64;
                for i in 0..d {
                    let xi = if sae.cfg.apply_b_dec_to_input {
                        xr[i] - bd[i]
                    } else {
                        xr[i]
                    };
                    s += xi as f64 * we[i * n + j] as f64;
                }
                f.data[r * n + j] = (s as f32).max(0.0);
            }
            for k in 0..o {
                let mut s = bd[k] as f64;
                for j in 0..n {
                    s += f.data[r * n + j] as f64 * wd[j * o + k] as f64;
                }
                if let Some(ws) = p.try_get("W_skip") {
                    for i in 0..d {
                        s += xr[i] as f64 * ws.data[k * d + i] as f64;
                    }
                }
                y.data[r * o + k] = s as f32;
            }
        }
        (f, y)
    }

    #[test]
    fn forward_matches_naive_formula_with_and_without_skip() {
        let mut rng = Rng::new(9);
        for (d, n, o, skip) in [(6, 20, 6, false), (6, 20, 4, false), (5, 12, 7, true)] {
            let sae = relu_sae(d, n, o, skip);
            let x =
                Matrix::from_vec(7, d, (0..7 * d).map(|_| rng.normal() as f32).collect()).unwrap();
            let (lat, y) = sae.forward(&x).unwrap();
            let (f, y_ref) = naive_forward(&sae, &x);
            for (a, b) in lat.to_dense().data.iter().zip(&f.data) {
                assert!((a - b).abs() <= 1e-5 * (1.0 + b.abs()), "{a} vs {b}");
            }
            for (a, b) in y.data.iter().zip(&y_ref.data) {
                assert!((a - b).abs() <= 1e-5 * (1.0 + b.abs()), "{a} vs {b}");
            }
        }
    }

    #[test]
    fn rescale_by_decoder_norm_selects_on_scaled_preactivations() {
        let (d, n, k) = (5, 16, 3);
        let mut rng = Rng::new(4);
        let mut cfg = SaeConfig::new(ArchConfig::default_for("topk", k).unwrap(), d, n);
        cfg.rescale_acts_by_decoder_norm = true;
        let mut p = ParamSet::new();
        p.insert("W_enc", random_tensor(&mut rng, &[d, n], 0.5));
        p.insert("b_enc", random_tensor(&mut rng, &[n], 0.1));
        // Decoder rows with very different norms, so that rescaling changes the choice.
        let mut w_dec = random_tensor(&mut rng, &[n, d], 1.0);
        for (j, row) in w_dec.data.chunks_mut(d).enumerate() {
            row.iter_mut().for_each(|v| *v *= 0.2 + j as f32 * 0.3);
        }
        p.insert("W_dec", w_dec.clone());
        p.insert("b_dec", random_tensor(&mut rng, &[d], 0.1));
        let sae = Sae::new(cfg, p).unwrap();
        let norms: Vec<f32> = w_dec
            .data
            .chunks(d)
            .map(|r| r.iter().map(|v| v * v).sum::<f32>().sqrt())
            .collect();
        let x = Matrix::from_vec(6, d, (0..6 * d).map(|_| rng.normal() as f32).collect()).unwrap();
        let (lat, y) = sae.forward(&x).unwrap();
        let (we, be, bd) = (
            &sae.params.get("W_enc").data,
            &sae.params.get("b_enc").data,
            &sae.params.get("b_dec").data,
        );
        let mut changed = false;
        for r in 0..x.rows {
            let s: Vec<f32> = (0..n)
                .map(|j| {
                    let pre: f32 = be[j]
                        + (0..d)
                            .map(|i| (x.row(r)[i] - bd[i]) * we[i * n + j])
                            .sum::<f32>();
                    pre * norms[j]
                })
                .collect();
            let mut order: Vec<usize> = (0..n).collect();
            order.sort_by(|&a, &b| s[b].total_cmp(&s[a]));
            let mut want: Vec<u32> = order[..k]
                .iter()
                .filter(|&&j| s[j] > 0.0)
                .map(|&j| j as u32)
                .collect();
            want.sort();
            let (gi, gv) = lat.row(r);
            let mut got: Vec<u32> = gi.to_vec();
            got.sort();
            assert_eq!(got, want, "row {r}");
            // Without rescaling the raw pre-activations would pick differently somewhere.
            let raw: Vec<f32> = (0..n).map(|j| s[j] / norms[j]).collect();
            let mut o2: Vec<usize> = (0..n).collect();
            o2.sort_by(|&a, &b| raw[b].total_cmp(&raw[a]));
            changed |= o2[..k].iter().any(|j| !order[..k].contains(j));
            let mut y_ref: Vec<f32> = bd.to_vec();
            for (&j, &v) in gi.iter().zip(gv) {
                assert!((v - s[j as usize]).abs() <= 1e-5 * (1.0 + v.abs()));
                for c in 0..d {
                    y_ref[c] += v / norms[j as usize] * w_dec.data[j as usize * d + c];
                }
            }
            for (a, b) in y.row(r).iter().zip(&y_ref) {
                assert!((a - b).abs() <= 1e-5 * (1.0 + b.abs()), "{a} vs {b}");
            }
        }
        assert!(changed, "test data should make rescaling matter");
    }

    #[test]
    fn layer_norm_round_trips_statistics() {
        let mut x = Matrix::from_vec(2, 4, vec![1.0, 2.0, 3.0, 4.0, -2.0, 0.0, 0.0, 2.0]).unwrap();
        let stats = layer_norm_in(&mut x);
        // Row 0: mean 2.5, unbiased std sqrt(5/3).
        assert!((stats[0].mean - 2.5).abs() < 1e-6);
        assert!((stats[0].std - (5.0f32 / 3.0).sqrt()).abs() < 1e-6);
        assert!((stats[1].std - (8.0f32 / 3.0).sqrt()).abs() < 1e-6);
        let want = -1.5 / ((5.0f32 / 3.0).sqrt() + LAYER_NORM_EPS);
        assert!((x.data[0] - want).abs() < 1e-6);
    }

    #[test]
    fn bad_shapes_and_inputs_are_errors() {
        let sae = relu_sae(6, 20, 6, false);
        assert!(sae.encode(&Matrix::zeros(3, 5)).is_err());
        let mut p = sae.params.clone();
        p.insert("W_enc", Tensor::zeros(&[20, 6]));
        let e = Sae::new(sae.cfg.clone(), p).unwrap_err().to_string();
        assert!(e.contains("W_enc has shape [20, 6]"), "{e}");
        let mut p = sae.params.clone();
        p.remove("b_enc");
        assert!(Sae::new(sae.cfg.clone(), p)
            .unwrap_err()
            .to_string()
            .contains("missing tensor b_enc"));
        let mut p = sae.params.clone();
        p.get_mut("b_dec").data[2] = f32::NAN;
        assert!(Sae::new(sae.cfg.clone(), p)
            .unwrap_err()
            .to_string()
            .contains("non-finite"));
    }
}
