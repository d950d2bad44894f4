//! JumpReLU SAE ("Jumping Ahead", Rajamanoharan et al. 2024; the Gemma Scope recipe).
//!
//! Forward, with `x' = x − b_dec`, `pre = x' W_enc + b_enc` and a per-latent threshold
//! `θ = exp(log_threshold) > 0`:
//!
//! `f = pre · H(pre − θ)`, `x̂ = f W_dec + b_dec`
//!
//! (`H` the Heaviside step; since θ > 0 this equals SAELens' `ReLU(pre) · 1[pre > θ]`).
//!
//! Loss (per batch of `B` tokens; `λ = l0_coefficient`, `s` the warm-up scale):
//!
//! `L = mean_tokens ‖x − x̂‖² + λ·s · mean_tokens Σ_i H(pre_i − θ_i)`
//!
//! Gradients. `pre` gets the ordinary gradient through `f` where the latent is on
//! (`∂f/∂pre = H(pre − θ)`) and none through the L0 term (whose true gradient is zero
//! almost everywhere). θ gets straight-through pseudo-derivatives with the rectangle
//! kernel `K(u) = 1[|u| < 1/2]` and bandwidth `ε`:
//!
//! - `∂f/∂θ = −(θ/ε) · K((pre − θ)/ε)`,
//! - `∂H/∂θ = −(1/ε) · K((pre − θ)/ε)`,
//!
//! so `∂L/∂θ_i = Σ_tokens K((pre − θ_i)/ε) · (−(θ_i/ε) ∂L/∂f_i − λ·s/(B ε))`, where
//! `∂L/∂f_i` is taken for every token in the kernel band, including those where the
//! latent is off. The chain rule through `θ = exp(log_threshold)` multiplies by θ.
//!
//! Decoder rows are kept at unit norm (Gemma Scope; DESIGN.md). The file form replaces
//! `log_threshold` by `threshold = exp(log_threshold)`.

use super::common::{init_tied, mse_and_grad, sub_assign, subtract_bias, Kernels};
use super::{Architecture, StepContext, StepOutput};
use crate::config::{ArchConfig, Dims};
use crate::kernels::affine;
use crate::kernels::select::for_each_above;
use crate::kernels::sparse::{AuxBackward, Grads, Workspace};
use crate::latents::Latents;
use crate::rng::Rng;
use crate::tensor::{Matrix, ParamSet, Tensor};

/// The JumpReLU architecture. Training form: `W_enc [d_in, n]`, `b_enc [n]`,
/// `W_dec [n, d_out]`, `b_dec [d_out]`, `log_threshold [n]`; file form has
/// `threshold [n]` in place of `log_threshold`.
pub struct JumpRelu {
    cfg: ArchConfig,
    l0_coefficient: f32,
    bandwidth: f32,
    init_threshold: f32,
    ws: Workspace,
}

impl JumpRelu {
    /// Builds from an [`ArchConfig::Jumprelu`].
    pub fn new(cfg: ArchConfig) -> Self {
        let ArchConfig::Jumprelu {
            l0_coefficient,
            bandwidth,
            init_threshold,
        } = cfg
        else {
            panic!("JumpRelu::new needs ArchConfig::Jumprelu");
        };
        JumpRelu {
            cfg,
            l0_coefficient,
            bandwidth,
            init_threshold,
            ws: Workspace::default(),
        }
    }

    /// The fast step: the encoder runs block by block and keeps, per token, the latents
    /// that are on (`pre > θ`) or inside the kernel band (`|pre − θ| < ε/2`), with their
    /// pre-activations for the θ estimator; everything after is sparse.
    fn train_step_fast(
        &mut self,
        p: &ParamSet,
        x: &Matrix,
        ctx: &StepContext,
        grads: &mut ParamSet,
    ) -> StepOutput {
        let (w_enc, b_enc) = (&p.get("W_enc").data, &p.get("b_enc").data);
        let (w_dec, b_dec) = (&p.get("W_dec").data, &p.get("b_dec").data);
        let theta: Vec<f32> = p
            .get("log_threshold")
            .data
            .iter()
            .map(|v| v.exp())
            .collect();
        let (d, n) = (x.cols, theta.len());
        let eps = self.bandwidth;
        let half = 0.5 * eps;
        let bsz = x.rows.max(1) as f64;
        // A superset filter (a little below θ − ε/2), then the exact classification.
        let lower: Vec<f32> = theta
            .iter()
            .map(|&t| {
                let l = t - half;
                l - l.abs() * 1e-5 - f32::MIN_POSITIVE
            })
            .collect();
        self.ws.encoder.load(w_enc, d, n);
        let parts = self.ws.encoder.run(
            w_enc,
            x,
            Some(b_dec),
            b_enc,
            || (Latents::new(n), Vec::<f32>::new()),
            |(lat, band), _r, pre| {
                for_each_above(pre, &lower, |j, v| {
                    let t = theta[j];
                    let in_band = (v - t).abs() < half;
                    if v > t {
                        lat.idx.push(j as u32);
                        lat.val.push(v);
                        band.push(if in_band { v } else { f32::NAN });
                    } else if in_band {
                        lat.idx.push(j as u32);
                        lat.val.push(0.0);
                        band.push(v);
                    }
                });
                lat.indptr.push(lat.idx.len());
            },
        );
        let mut pattern = Latents::with_capacity(n, x.rows, 0);
        let mut band = Vec::new();
        for (l, b) in &parts {
            pattern.append(l);
            band.extend_from_slice(b);
        }
        let l0_count = pattern.val.iter().filter(|&&v| v != 0.0).count();
        let sums = self.ws.rows(x, w_dec, b_dec, &pattern, None);
        let mse = sums.sq_err / bsz;
        let lam = (self.l0_coefficient * ctx.sparsity_scale) as f64;
        let l0_term = lam * l0_count as f64 / bsz;
        let g_f = std::mem::take(&mut self.ws.g_f);
        let [g_w_enc, g_b_enc, g_w_dec, g_b_dec, g_log_theta] =
            grads.get_many_mut(["W_enc", "b_enc", "W_dec", "b_dec", "log_threshold"]);
        // θ pseudo-gradient over the band entries, then chain rule to log θ.
        let l0_per_token = (lam / bsz) as f32;
        let mut g_theta = vec![0.0f32; n];
        for ((&j, &g), &v) in pattern.idx.iter().zip(&g_f).zip(&band) {
            if !v.is_nan() {
                let j = j as usize;
                g_theta[j] -= (theta[j] / eps) * g + l0_per_token / eps;
            }
        }
        for ((g, gt), t) in g_log_theta.data.iter_mut().zip(&g_theta).zip(&theta) {
            *g = gt * t;
        }
        let g_pre: Vec<f32> = g_f
            .iter()
            .zip(&pattern.val)
            .map(|(&g, &v)| if v != 0.0 { g } else { 0.0 })
            .collect();
        self.ws.backward(
            x,
            b_dec,
            w_enc,
            &pattern,
            &g_pre,
            w_dec,
            AuxBackward::None,
            Grads {
                w_enc: &mut g_w_enc.data,
                b_enc: &mut g_b_enc.data,
                w_dec: &mut g_w_dec.data,
                b_dec: &mut g_b_dec.data,
            },
        );
        self.ws.g_f = g_f;
        let mut latents = pattern;
        latents.prune_zeros();
        StepOutput {
            loss: mse + l0_term,
            terms: vec![("mse", mse), ("l0", l0_term)],
            latents,
            sq_err: sums.sq_err,
        }
    }
}

/// JumpReLU activation with SAELens semantics, in place on dense pre-activations
/// `pre [B, n]` with thresholds `theta [n]`: keeps `pre` where `pre > θ` and `pre > 0`,
/// zeroes the rest, and returns the non-zeros as [`Latents`].
pub fn jumprelu_latents(mut pre: Matrix, theta: &[f32]) -> Latents {
    for row in pre.data.chunks_mut(theta.len().max(1)) {
        for (v, &t) in row.iter_mut().zip(theta) {
            // SAELens: ReLU(pre) · 1[pre > θ]
            if !(*v > t && *v > 0.0) {
                *v = 0.0;
            }
        }
    }
    Latents::from_dense(&pre)
}

impl Architecture for JumpRelu {
    fn config(&self) -> &ArchConfig {
        &self.cfg
    }

    /// Tied init with unit-norm decoder rows, `b_enc = 0`, `b_dec = 0`,
    /// `log_threshold = ln(init_threshold)` for every latent.
    fn init(&self, dims: Dims, rng: &mut Rng) -> ParamSet {
        let mut p = init_tied(dims, 1.0, rng);
        p.insert(
            "log_threshold",
            Tensor::new(&[dims.n], vec![self.init_threshold.ln(); dims.n]).unwrap(),
        );
        p
    }

    fn encode(&self, p: &ParamSet, x_enc: &Matrix) -> Latents {
        let pre = affine(x_enc, &p.get("W_enc").data, &p.get("b_enc").data);
        jumprelu_latents(pre, &p.get("threshold").data)
    }

    fn train_step(
        &mut self,
        p: &ParamSet,
        x: &Matrix,
        ctx: &StepContext,
        grads: &mut ParamSet,
    ) -> StepOutput {
        if !ctx.reference {
            return self.train_step_fast(p, x, ctx, grads);
        }
        // The reference kernels accumulate.
        grads.fill_zero();
        let kern = Kernels {
            reference: ctx.reference,
        };
        let (w_enc, b_enc) = (&p.get("W_enc").data, &p.get("b_enc").data);
        let (w_dec, b_dec) = (&p.get("W_dec").data, &p.get("b_dec").data);
        let theta: Vec<f32> = p
            .get("log_threshold")
            .data
            .iter()
            .map(|v| v.exp())
            .collect();
        let [g_w_enc, g_b_enc, g_w_dec, g_b_dec, g_log_theta] =
            grads.get_many_mut(["W_enc", "b_enc", "W_dec", "b_dec", "log_threshold"]);
        let n = theta.len();
        let eps = self.bandwidth;
        let half = 0.5 * eps;
        let bsz = x.rows.max(1) as f64;

        let x_enc = subtract_bias(x, b_dec);
        let pre = affine(&x_enc, w_enc, b_enc);

        // Pattern: every latent that is on (pre > θ) or inside the kernel band
        // (|pre − θ| < ε/2). Band entries that are off are stored with value 0: they do
        // not change x̂ but the θ estimator needs ∂L/∂f there.
        // Active entries hold pre > θ > 0, so "stored value ≠ 0" is "latent on".
        let mut pattern = Latents::with_capacity(n, x.rows, 0);
        for r in 0..x.rows {
            pattern.push_row(pre.row(r).iter().zip(&theta).enumerate().filter_map(
                |(j, (&v, &t))| {
                    if v > t {
                        Some((j as u32, v))
                    } else if (v - t).abs() < half {
                        Some((j as u32, 0.0))
                    } else {
                        None
                    }
                },
            ));
        }
        let l0_count = pattern.val.iter().filter(|&&v| v != 0.0).count();

        let x_hat = kern.decode(&pattern, w_dec, b_dec);
        let (sq_err, g_out) = mse_and_grad(&x_hat, x);
        let mse = sq_err / bsz;
        let lam = (self.l0_coefficient * ctx.sparsity_scale) as f64;
        let l0_term = lam * l0_count as f64 / bsz;

        // ∂L/∂f at every stored entry (also off band entries).
        let g_f = kern.decode_backward(
            &pattern,
            &g_out,
            w_dec,
            &mut g_w_dec.data,
            &mut g_b_dec.data,
        );

        // θ pseudo-gradient (rectangle-kernel STE), then chain rule to log θ.
        let l0_per_token = (lam / bsz) as f32;
        let mut g_theta = vec![0.0f32; n];
        for r in 0..x.rows {
            let row = pre.row(r);
            let (lo, hi) = (pattern.indptr[r], pattern.indptr[r + 1]);
            for (&j, &g) in pattern.idx[lo..hi].iter().zip(&g_f[lo..hi]) {
                let j = j as usize;
                if (row[j] - theta[j]).abs() < half {
                    g_theta[j] -= (theta[j] / eps) * g + l0_per_token / eps;
                }
            }
        }
        for ((g, gt), t) in g_log_theta.data.iter_mut().zip(&g_theta).zip(&theta) {
            *g += gt * t;
        }

        // pre gets ∂L/∂f where the latent is on.
        let g_pre: Vec<f32> = g_f
            .iter()
            .zip(&pattern.val)
            .map(|(&g, &v)| if v != 0.0 { g } else { 0.0 })
            .collect();
        let s = kern.encode_backward(
            &pattern,
            &g_pre,
            &x_enc,
            w_enc,
            &mut g_w_enc.data,
            Some(&mut g_b_enc.data),
        );
        sub_assign(&mut g_b_dec.data, &s);

        let mut latents = pattern;
        latents.prune_zeros();
        StepOutput {
            loss: mse + l0_term,
            terms: vec![("mse", mse), ("l0", l0_term)],
            latents,
            sq_err,
        }
    }

    fn unit_norm_decoder(&self) -> bool {
        true
    }

    /// Replaces `log_threshold` by `threshold = exp(log_threshold)`.
    fn to_file(&self, params: &ParamSet) -> (ParamSet, ArchConfig) {
        let mut out = ParamSet::new();
        for (name, t) in params.iter() {
            if name == "log_threshold" {
                let th = t.data.iter().map(|v| v.exp()).collect();
                out.insert("threshold", Tensor::new(&t.shape, th).unwrap());
            } else {
                out.insert(name, t.clone());
            }
        }
        (out, self.cfg.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::arch::gradcheck;

    fn arch(l0_coefficient: f32, bandwidth: f32) -> JumpRelu {
        JumpRelu::new(ArchConfig::Jumprelu {
            l0_coefficient,
            bandwidth,
            init_threshold: 1e-3,
        })
    }

    /// Parameters with thresholds spread around 0.1–0.5, so that a good share of the
    /// positive pre-activations are switched off by the jump.
    fn params(a: &JumpRelu, dims: Dims, rng: &mut Rng) -> ParamSet {
        let mut p = gradcheck::perturbed_params(a, dims, rng, 0.1);
        for v in p.get_mut("log_threshold").data.iter_mut() {
            *v = (0.1 + 0.4 * rng.uniform() as f32).ln();
        }
        p
    }

    #[test]
    fn init_has_log_threshold_and_unit_decoder_rows() {
        let a = arch(1e-3, 1e-3);
        let dims = Dims {
            d_in: 5,
            n: 7,
            d_out: 5,
        };
        let p = a.init(dims, &mut Rng::new(1));
        for &v in &p.get("log_threshold").data {
            assert!((v - 1e-3f32.ln()).abs() < 1e-6);
        }
        for row in p.get("W_dec").data.chunks(5) {
            let norm: f32 = row.iter().map(|v| v * v).sum::<f32>().sqrt();
            assert!((norm - 1.0).abs() < 1e-5);
        }
        assert!(a.unit_norm_decoder());
    }

    #[test]
    fn gradient_matches_finite_differences() {
        // log_threshold has only a pseudo-gradient (checked separately below); every
        // other parameter has a true gradient away from the jumps. A wide band (ε = 0.2)
        // puts many switched-off latents in the pattern, which must not pass gradient to pre.
        let dims = Dims {
            d_in: 6,
            n: 20,
            d_out: 6,
        };
        let mut rng = Rng::new(15);
        let mut a = arch(0.05, 0.2);
        let p = params(&a, dims, &mut rng);
        let x = gradcheck::random_batch(&mut rng, 9, 6);
        let dead = vec![false; 20];
        for reference in [false, true] {
            let ctx = StepContext {
                sparsity_scale: 0.8,
                dead: &dead,
                reference,
            };
            gradcheck::check(&mut a, &p, &x, &ctx, &["log_threshold"], 40, None);
        }
    }

    #[test]
    fn threshold_gradient_is_the_rectangle_kernel_estimator() {
        // Direct dense computation of the loss and of
        // ∂L/∂log θ_j = θ_j Σ_r K((pre_rj − θ_j)/ε)(−(θ_j/ε) ∂L/∂f_rj − λ s/(B ε)).
        let (d, n, rows) = (5, 16, 11);
        let dims = Dims {
            d_in: d,
            n,
            d_out: d,
        };
        let mut rng = Rng::new(21);
        let (lam, eps, s) = (0.3f32, 0.25f32, 0.6f32);
        let mut a = arch(lam, eps);
        let p = params(&a, dims, &mut rng);
        let x = gradcheck::random_batch(&mut rng, rows, d);
        let (w_enc, b_enc) = (&p.get("W_enc").data, &p.get("b_enc").data);
        let (w_dec, b_dec) = (&p.get("W_dec").data, &p.get("b_dec").data);
        let theta: Vec<f64> = p
            .get("log_threshold")
            .data
            .iter()
            .map(|&v| (v as f64).exp())
            .collect();
        let bf = rows as f64;
        let mut pre_row = vec![0.0f64; n];
        let mut want = vec![0.0f64; n];
        let (mut mse, mut l0, mut in_band) = (0.0f64, 0.0f64, 0);
        for r in 0..rows {
            for j in 0..n {
                pre_row[j] = b_enc[j] as f64
                    + (0..d)
                        .map(|i| (x.row(r)[i] - b_dec[i]) as f64 * w_enc[i * n + j] as f64)
                        .sum::<f64>();
            }
            let f: Vec<f64> = (0..n)
                .map(|j| {
                    if pre_row[j] > theta[j] {
                        pre_row[j]
                    } else {
                        0.0
                    }
                })
                .collect();
            l0 += f.iter().filter(|&&v| v != 0.0).count() as f64;
            let err: Vec<f64> = (0..d)
                .map(|i| {
                    b_dec[i] as f64 + (0..n).map(|j| f[j] * w_dec[j * d + i] as f64).sum::<f64>()
                        - x.row(r)[i] as f64
                })
                .collect();
            mse += err.iter().map(|e| e * e).sum::<f64>();
            for j in 0..n {
                if ((pre_row[j] - theta[j]) / eps as f64).abs() < 0.5 {
                    in_band += 1;
                    let g_f: f64 = (0..d)
                        .map(|i| 2.0 * err[i] * w_dec[j * d + i] as f64 / bf)
                        .sum();
                    let g_theta =
                        -(theta[j] / eps as f64) * g_f - (lam * s) as f64 / (bf * eps as f64);
                    want[j] += g_theta * theta[j];
                }
            }
        }
        assert!(in_band >= 10, "only {in_band} entries in the kernel band");
        let want_loss = mse / bf + (lam * s) as f64 * l0 / bf;
        let dead = vec![false; n];
        for reference in [false, true] {
            let ctx = StepContext {
                sparsity_scale: s,
                dead: &dead,
                reference,
            };
            let mut g = p.zeros_like();
            let out = a.train_step(&p, &x, &ctx, &mut g);
            assert!((out.loss - want_loss).abs() < 1e-4 * want_loss);
            assert_eq!(out.latents.nnz() as f64, l0);
            for (j, (&got, &w)) in g.get("log_threshold").data.iter().zip(&want).enumerate() {
                assert!(
                    (got as f64 - w).abs() < 1e-4 * (1.0 + w.abs()),
                    "log_threshold[{j}]: {got} vs {w}"
                );
            }
            assert!(want.iter().any(|&w| w.abs() > 1e-2));
        }
    }

    #[test]
    fn file_form_encodes_exactly_the_training_latents() {
        let dims = Dims {
            d_in: 8,
            n: 40,
            d_out: 8,
        };
        let mut rng = Rng::new(3);
        let mut a = arch(1e-2, 1e-3);
        let p = params(&a, dims, &mut rng);
        let x = gradcheck::random_batch(&mut rng, 33, 8);
        let dead = vec![false; 40];
        let ctx = StepContext {
            sparsity_scale: 1.0,
            dead: &dead,
            reference: false,
        };
        let mut g = p.zeros_like();
        let out = a.train_step(&p, &x, &ctx, &mut g);
        let (file, cfg) = a.to_file(&p);
        assert_eq!(&cfg, a.config());
        assert!(!file.contains("log_threshold"));
        for (t, l) in file
            .get("threshold")
            .data
            .iter()
            .zip(&p.get("log_threshold").data)
        {
            assert_eq!(*t, l.exp());
        }
        let enc = a.encode(&file, &subtract_bias(&x, &p.get("b_dec").data));
        assert!(out.latents.nnz() > 0 && out.latents.nnz() < 33 * 40);
        assert_eq!(enc, out.latents);
    }
}
