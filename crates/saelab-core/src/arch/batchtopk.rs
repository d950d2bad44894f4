//! BatchTopK SAE ("BatchTopK Sparse Autoencoders", Bussmann et al. 2024).
//!
//! Training forward, with `x' = x − b_dec` and `pre = x' W_enc + b_enc` `[B, n]`:
//! keep the `k·B` largest *positive* entries of `pre` across the whole batch (ties broken
//! towards the earlier token, then the lower latent index), zero the rest:
//! `f = pre ⊙ 1[selected]`, `x̂ = f W_dec + b_dec`. Tokens may get more or fewer than
//! `k` latents; the batch average is at most `k`.
//!
//! Loss: `mean ‖x − x̂‖² + aux`, where `aux` is TopK's AuxK term on dead latents
//! ([`AuxK`], shared with `topk.rs`). The selection is piecewise constant, so `pre`
//! gets the reconstruction gradient on the selected entries only.
//!
//! Inference threshold: after each step, `θ ← (1 − m) θ + m · min(selected values)`
//! (`m = threshold_momentum`; the first step sets θ directly). One batch's minimum is
//! already a precise estimate (the `k·B`-th largest of `B·n` values), so the EMA only
//! needs to smooth a little; what it must not do is lag: the selected values shrink a
//! lot early in training, and with `m = 0.01` θ lagged so far behind that halfway
//! through a 244-step run on SmolLM2 activations it gave an inference L0 of 25 for
//! k = 64. The default `m = 0.1` forgets in about ten steps. At inference BatchTopK is
//! JumpReLU with θ for every latent, `f = pre · 1[pre > θ]`, which gives no batch
//! dependence; [`Architecture::to_file`] writes that JumpReLU form (`threshold [n]`,
//! [`ArchConfig::Jumprelu`]). θ is the extra training state ([`Architecture::state`]).
//!
//! Decoder rows are kept at unit norm.

use rayon::prelude::*;

use super::common::{init_tied, mse_and_grad, sub_assign, subtract_bias, AuxK, Forward, Kernels};
use super::jumprelu::jumprelu_latents;
use super::topk::{sparse_step, AuxSpec};
use super::{Architecture, StepContext, StepOutput};
use crate::config::{ArchConfig, Dims};
use crate::error::{Error, Result};
use crate::kernels::select::topk_rows;
use crate::kernels::select::{for_each_above, TopKSelector};
use crate::kernels::sparse::{AuxLatents, Workspace};
use crate::kernels::{affine, ROW_CHUNK};
use crate::latents::Latents;
use crate::rng::Rng;
use crate::tensor::{Matrix, ParamSet, Tensor};

/// The BatchTopK architecture. Training form: `W_enc [d_in, n]`, `b_enc [n]`,
/// `W_dec [n, d_out]`, `b_dec [d_out]`; file form adds `threshold [n]` (all θ).
pub struct BatchTopK {
    cfg: ArchConfig,
    k: usize,
    aux: AuxK,
    momentum: f32,
    /// EMA of the smallest selected value; `None` before the first step.
    threshold: Option<f32>,
    ws: Workspace,
}

impl BatchTopK {
    /// Builds from an [`ArchConfig::Batchtopk`].
    pub fn new(cfg: ArchConfig) -> Self {
        let ArchConfig::Batchtopk {
            k,
            aux_k,
            aux_coefficient,
            threshold_momentum,
        } = cfg
        else {
            panic!("BatchTopK::new needs ArchConfig::Batchtopk");
        };
        BatchTopK {
            cfg,
            k,
            aux: AuxK {
                k: aux_k,
                coefficient: aux_coefficient,
            },
            momentum: threshold_momentum,
            threshold: None,
            ws: Workspace::default(),
        }
    }

    /// Updates the inference threshold with the smallest selected value of a step.
    fn update_threshold(&mut self, lat: &Latents) {
        if let Some(min) = lat.val.iter().copied().reduce(f32::min) {
            self.threshold = Some(match self.threshold {
                None => min,
                Some(t) => (1.0 - self.momentum) * t + self.momentum * min,
            });
        }
    }

    /// The fast step. The batch-wide selection is made from the entries above a lower
    /// bound `L` (half the current threshold θ), collected while the encoder runs block
    /// by block: when at least `k·B` entries exceed `L`, the `k·B` largest of the batch
    /// all do, so selecting among them is exact. Otherwise (first step, or θ far off)
    /// the full pre-activations are computed and selected from.
    fn train_step_fast(
        &mut self,
        p: &ParamSet,
        x: &Matrix,
        ctx: &StepContext,
        grads: &mut ParamSet,
    ) -> StepOutput {
        let (w_enc, b_enc) = (&p.get("W_enc").data, &p.get("b_enc").data);
        let b_dec = &p.get("b_dec").data;
        let (d, n) = (x.cols, b_enc.len());
        let m = self.k * x.rows;
        let aux = AuxSpec::new(self.aux.k, self.aux.coefficient, ctx.dead);
        let k_aux = self.aux.k;
        let mut ph = crate::kernels::Phases::start();
        let dense_aux = self.ws.prepare_aux(n, x.rows, &aux.dead, k_aux);
        self.ws.encoder.load(w_enc, d, n);
        let lower = self.threshold.map(|t| 0.5 * t).filter(|&l| l > 0.0);
        let mut selected = None;
        if let Some(l) = lower {
            let thr = vec![l; n];
            let dead = &aux.dead;
            let (encoder, aux_rows) = self.ws.encoder_with_aux();
            let parts = encoder.run(
                w_enc,
                x,
                Some(b_dec),
                b_enc,
                || {
                    (
                        Vec::<(u32, u32, f32)>::new(),
                        Latents::new(n),
                        TopKSelector::default(),
                    )
                },
                |(cand, auxl, sel), r, pre| {
                    for_each_above(pre, &thr, |j, v| cand.push((r as u32, j as u32, v)));
                    if !dead.is_empty() {
                        sel.among_unordered(pre, dead, k_aux);
                        if dense_aux {
                            // SAFETY: the encoder visits row r once, on one task.
                            unsafe { aux_rows.write(r, sel.result()) };
                        } else {
                            auxl.push_row(sel.result().iter().copied());
                        }
                    }
                },
            );
            ph.mark("encode+candidates");
            let total: usize = parts.iter().map(|p| p.0.len()).sum();
            if total >= m {
                let sparse_aux = aux.on() && !dense_aux;
                let mut aux_lat = Latents::with_capacity(n, x.rows, k_aux);
                let mut cand = Vec::with_capacity(total);
                for (c, a, _) in parts {
                    cand.extend_from_slice(&c);
                    if sparse_aux {
                        aux_lat.append(&a);
                    }
                }
                let aux_lat = AuxLatents::pick(aux.on(), dense_aux, aux_lat);
                selected = Some((select_candidates(&cand, m, x.rows, n), aux_lat));
                ph.mark("select");
            }
        }
        let (lat, aux_lat) = match selected {
            Some(s) => s,
            None => {
                // Full pre-activations, then the exact radix selection.
                let mut pre = Matrix::zeros(x.rows, n);
                let ptr = pre.data.as_mut_ptr() as usize;
                self.ws.encoder.run(
                    w_enc,
                    x,
                    Some(b_dec),
                    b_enc,
                    || (),
                    |_, r, row| {
                        // SAFETY: each row r is visited exactly once; rows are disjoint.
                        let dst = unsafe {
                            std::slice::from_raw_parts_mut((ptr as *mut f32).add(r * n), n)
                        };
                        dst.copy_from_slice(row);
                    },
                );
                let lat = batch_topk(&pre, m);
                let aux_lat = if !aux.on() {
                    AuxLatents::Off
                } else {
                    let l = topk_rows(&pre, k_aux, Some(ctx.dead));
                    if dense_aux {
                        self.ws.set_dense_aux(&l);
                        AuxLatents::Dense
                    } else {
                        AuxLatents::Sparse(l)
                    }
                };
                ph.mark("dense pre + select");
                (lat, aux_lat)
            }
        };
        self.update_threshold(&lat);
        sparse_step(&mut self.ws, p, x, grads, lat, aux_lat, &aux)
    }

    /// The inference threshold θ (0 before the first training step).
    pub fn threshold(&self) -> f32 {
        self.threshold.unwrap_or(0.0)
    }
}

/// Number of histogram bins per radix pass (16 bits of an f32 at a time).
const BINS: usize = 1 << 16;

/// Counts, over the positive entries of `pre`, the bins `bin(bits)` (`None`: skip).
fn histogram(pre: &Matrix, bin: impl Fn(u32) -> Option<usize> + Sync) -> Vec<u64> {
    pre.data
        .par_chunks(ROW_CHUNK * pre.cols.max(1))
        .fold(
            || vec![0u64; BINS],
            |mut h, chunk| {
                for &v in chunk {
                    if v > 0.0 {
                        if let Some(b) = bin(v.to_bits()) {
                            h[b] += 1;
                        }
                    }
                }
                h
            },
        )
        .reduce(
            || vec![0u64; BINS],
            |mut a, b| {
                a.iter_mut().zip(&b).for_each(|(x, y)| *x += y);
                a
            },
        )
}

/// Scanning `hist` from the top bin down, the bin where the running count first
/// reaches `want` (≥ 1), and how many entries lie in higher bins.
fn bin_of_rank(hist: &[u64], want: u64) -> (usize, u64) {
    let mut above = 0u64;
    for b in (0..hist.len()).rev() {
        if above + hist[b] >= want {
            return (b, above);
        }
        above += hist[b];
    }
    unreachable!("fewer entries than the rank asked for")
}

/// The `m` largest positive entries of `pre` `[B, n]` across all rows (ties: earlier
/// row, then lower column, first), as [`Latents`] with each row's entries in increasing
/// latent order. Fewer than `m` if fewer are positive.
///
/// Exact and O(B·n): positive f32 values order like their bit patterns, so the m-th
/// largest value is found by two 16-bit radix histograms rather than a sort.
pub fn batch_topk(pre: &Matrix, m: usize) -> Latents {
    let n = pre.cols;
    let positive = pre.data.par_iter().filter(|&&v| v > 0.0).count();
    // Cut: keep values with bits > cut, and the first `ties` entries with bits == cut.
    let (cut, ties) = if m == 0 {
        (u32::MAX, 0)
    } else if positive <= m {
        (0, 0) // every positive value has bits > 0
    } else {
        let m = m as u64;
        let hi_hist = histogram(pre, |b| Some((b >> 16) as usize));
        let (hi, above_hi) = bin_of_rank(&hi_hist, m);
        let lo_hist = histogram(pre, |b| {
            ((b >> 16) as usize == hi).then_some((b & 0xffff) as usize)
        });
        let (lo, above_lo) = bin_of_rank(&lo_hist, m - above_hi);
        (
            ((hi as u32) << 16) | lo as u32,
            (m - above_hi - above_lo) as usize,
        )
    };
    // Tie budget per chunk of rows, in row-major order.
    let chunks: Vec<&[f32]> = pre.data.chunks(ROW_CHUNK * n.max(1)).collect();
    let tie_counts: Vec<usize> = chunks
        .par_iter()
        .map(|c| c.iter().filter(|v| **v > 0.0 && v.to_bits() == cut).count())
        .collect();
    let mut left = ties;
    let budgets: Vec<usize> = tie_counts
        .iter()
        .map(|&c| {
            let b = c.min(left);
            left -= b;
            b
        })
        .collect();
    let parts: Vec<Latents> = chunks
        .par_iter()
        .zip(&budgets)
        .map(|(c, &budget)| {
            let mut budget = budget;
            let mut out = Latents::new(n);
            for row in c.chunks(n.max(1)) {
                out.push_row(row.iter().enumerate().filter_map(|(j, &v)| {
                    if v.partial_cmp(&0.0) != Some(std::cmp::Ordering::Greater) {
                        return None; // not positive (or NaN)
                    }
                    let bits = v.to_bits();
                    let keep = bits > cut
                        || (bits == cut && budget > 0 && {
                            budget -= 1;
                            true
                        });
                    keep.then_some((j as u32, v))
                }));
            }
            out
        })
        .collect();
    let mut out = Latents::with_capacity(n, pre.rows, 0);
    for p in &parts {
        out.append(p);
    }
    out
}

/// The `m` largest of the candidate entries `(row, column, value)` (listed in row-major
/// order, all positive), ties broken towards the earlier row, then the lower column —
/// the rule of [`batch_topk`] — as [`Latents`] with `rows` rows, each row's entries in
/// increasing latent order.
fn select_candidates(cand: &[(u32, u32, f32)], m: usize, rows: usize, n: usize) -> Latents {
    let mut out = Latents::with_capacity(n, rows, m / rows.max(1));
    let (cut, mut ties) = if m == 0 {
        (f32::INFINITY, 0)
    } else if cand.len() <= m {
        (0.0, 0)
    } else {
        let mut vals: Vec<f32> = cand.iter().map(|c| c.2).collect();
        let (_, &mut cut, _) = vals.select_nth_unstable_by(m - 1, |a, b| b.total_cmp(a));
        let above = cand.iter().filter(|c| c.2 > cut).count();
        (cut, m - above)
    };
    let mut e = 0;
    for r in 0..rows {
        while e < cand.len() && cand[e].0 as usize == r {
            let (_, j, v) = cand[e];
            if v > cut
                || (v == cut && ties > 0 && {
                    ties -= 1;
                    true
                })
            {
                out.idx.push(j);
                out.val.push(v);
            }
            e += 1;
        }
        out.indptr.push(out.idx.len());
    }
    out
}

impl Architecture for BatchTopK {
    fn config(&self) -> &ArchConfig {
        &self.cfg
    }

    /// Tied init with unit-norm decoder rows, biases zero.
    fn init(&self, dims: Dims, rng: &mut Rng) -> ParamSet {
        init_tied(dims, 1.0, rng)
    }

    /// JumpReLU with the file form's `threshold [n]` when present (what
    /// [`Architecture::to_file`] writes), else with the current θ for every latent.
    fn encode(&self, p: &ParamSet, x_enc: &Matrix) -> Latents {
        let b_enc = &p.get("b_enc").data;
        let pre = affine(x_enc, &p.get("W_enc").data, b_enc);
        match p.try_get("threshold") {
            Some(t) => jumprelu_latents(pre, &t.data),
            None => jumprelu_latents(pre, &vec![self.threshold(); b_enc.len()]),
        }
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
        let [g_w_enc, g_b_enc, g_w_dec, g_b_dec] =
            grads.get_many_mut(["W_enc", "b_enc", "W_dec", "b_dec"]);
        let bsz = x.rows.max(1) as f64;

        let x_enc = subtract_bias(x, b_dec);
        let pre = affine(&x_enc, w_enc, b_enc);
        let lat = batch_topk(&pre, self.k * x.rows);
        let x_hat = kern.decode(&lat, w_dec, b_dec);
        let (sq_err, g_out) = mse_and_grad(&x_hat, x);
        let mut loss = sq_err / bsz;
        let mut terms = vec![("mse", loss)];

        // Reconstruction path: every selected value is positive and passes gradient.
        let g_f = kern.decode_backward(&lat, &g_out, w_dec, &mut g_w_dec.data, &mut g_b_dec.data);
        let s = kern.encode_backward(
            &lat,
            &g_f,
            &x_enc,
            w_enc,
            &mut g_w_enc.data,
            Some(&mut g_b_enc.data),
        );
        sub_assign(&mut g_b_dec.data, &s);

        let fwd = Forward {
            x,
            x_enc: &x_enc,
            pre: &pre,
            x_hat: &x_hat,
        };
        if let Some(aux_loss) = self.aux.add_loss_and_grad(p, fwd, ctx, grads) {
            terms.push(("aux", aux_loss));
            loss += aux_loss;
        }

        // Inference threshold: EMA of the smallest selected value.
        self.update_threshold(&lat);

        StepOutput {
            loss,
            terms,
            latents: lat,
            sq_err,
        }
    }

    fn unit_norm_decoder(&self) -> bool {
        true
    }

    /// The JumpReLU form: the parameters plus `threshold [n]` = θ for every latent,
    /// under [`ArchConfig::Jumprelu`] (default training hyperparameters).
    fn to_file(&self, params: &ParamSet) -> (ParamSet, ArchConfig) {
        let mut out = params.clone();
        let n = params.get("b_enc").data.len();
        out.insert(
            "threshold",
            Tensor::new(&[n], vec![self.threshold(); n]).unwrap(),
        );
        let cfg =
            ArchConfig::default_for("jumprelu", self.k).expect("jumprelu is a known architecture");
        (out, cfg)
    }

    /// `{"threshold": θ}` (`null` before the first step).
    fn state(&self) -> serde_json::Value {
        serde_json::json!({ "threshold": self.threshold })
    }

    fn load_state(&mut self, state: &serde_json::Value) -> Result<()> {
        match state.get("threshold") {
            Some(serde_json::Value::Null) => self.threshold = None,
            Some(v) => match v.as_f64() {
                Some(t) if t.is_finite() => self.threshold = Some(t as f32),
                _ => {
                    return Err(Error::config(format!(
                        "batchtopk training state: threshold {v} is not a finite number"
                    )))
                }
            },
            None => {
                return Err(Error::config(
                    "batchtopk training state: no \"threshold\" field",
                ))
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::arch::gradcheck;

    fn arch(k: usize, aux_k: usize, momentum: f32) -> BatchTopK {
        BatchTopK::new(ArchConfig::Batchtopk {
            k,
            aux_k,
            aux_coefficient: 0.5,
            threshold_momentum: momentum,
        })
    }

    /// Direct selection: sort every positive entry by (value desc, row, column) and keep
    /// the first `m`; returned as sorted (row, column, value) triples.
    fn naive_select(pre: &Matrix, m: usize) -> Vec<(usize, usize, f32)> {
        let mut all: Vec<(usize, usize, f32)> = (0..pre.rows)
            .flat_map(|r| (0..pre.cols).map(move |j| (r, j)))
            .map(|(r, j)| (r, j, pre.row(r)[j]))
            .filter(|e| e.2 > 0.0)
            .collect();
        all.sort_by(|a, b| b.2.total_cmp(&a.2).then((a.0, a.1).cmp(&(b.0, b.1))));
        all.truncate(m);
        all.sort_by_key(|e| (e.0, e.1));
        all
    }

    fn triples(l: &Latents) -> Vec<(usize, usize, f32)> {
        let mut out = Vec::new();
        for r in 0..l.rows() {
            let (idx, val) = l.row(r);
            for (&j, &v) in idx.iter().zip(val) {
                out.push((r, j as usize, v));
            }
        }
        out
    }

    #[test]
    fn selection_matches_a_full_sort_including_ties() {
        let mut rng = Rng::new(7);
        // Values on a coarse grid, so that many ties straddle the cut; several rows,
        // more than one row chunk, negatives and zeros.
        let (rows, n) = (150, 37);
        let data: Vec<f32> = (0..rows * n)
            .map(|_| (rng.below(41) as f32 - 20.0) * 0.25)
            .collect();
        let pre = Matrix::from_vec(rows, n, data).unwrap();
        let positive = pre.data.iter().filter(|&&v| v > 0.0).count();
        for m in [
            0,
            1,
            5,
            149,
            150 * 3,
            2000,
            positive - 1,
            positive,
            positive + 10,
        ] {
            let got = batch_topk(&pre, m);
            assert_eq!(got.rows(), rows);
            assert_eq!(triples(&got), naive_select(&pre, m), "m = {m}");
        }
        // Continuous values spanning many binades.
        let data: Vec<f32> = (0..rows * n)
            .map(|_| {
                (rng.normal() * 3.0).exp() as f32 * if rng.uniform() < 0.3 { -1.0 } else { 1.0 }
            })
            .collect();
        let pre = Matrix::from_vec(rows, n, data).unwrap();
        for m in [1, 7, 300, 1111, 4000] {
            assert_eq!(
                triples(&batch_topk(&pre, m)),
                naive_select(&pre, m),
                "m = {m}"
            );
        }
    }

    #[test]
    fn training_selects_k_times_batch_across_the_batch() {
        let (d, n, rows, k) = (6, 24, 17, 3);
        let mut rng = Rng::new(2);
        let mut a = arch(k, 0, 0.1);
        let p = gradcheck::perturbed_params(
            &a,
            Dims {
                d_in: d,
                n,
                d_out: d,
            },
            &mut rng,
            0.1,
        );
        let x = gradcheck::random_batch(&mut rng, rows, d);
        let dead = vec![false; n];
        let ctx = StepContext {
            sparsity_scale: 1.0,
            dead: &dead,
            reference: false,
        };
        let out = a.train_step(&p, &x, &ctx, &mut p.zeros_like());
        // Independent pre-activations in f64, then the selection by full sort.
        let (w_enc, b_enc, b_dec) = (
            &p.get("W_enc").data,
            &p.get("b_enc").data,
            &p.get("b_dec").data,
        );
        let pre64: Vec<f64> = (0..rows * n)
            .map(|e| {
                let (r, j) = (e / n, e % n);
                b_enc[j] as f64
                    + (0..d)
                        .map(|i| (x.row(r)[i] - b_dec[i]) as f64 * w_enc[i * n + j] as f64)
                        .sum::<f64>()
            })
            .collect();
        let pre = Matrix::from_vec(rows, n, pre64.iter().map(|&v| v as f32).collect()).unwrap();
        let want = naive_select(&pre, k * rows);
        let got = triples(&out.latents);
        assert_eq!(got.len(), k * rows);
        let per_row: Vec<usize> = (0..rows).map(|r| out.latents.row(r).0.len()).collect();
        assert!(
            per_row.iter().any(|&c| c != k),
            "selection is per batch, not per row"
        );
        for (g, w) in got.iter().zip(&want) {
            assert_eq!((g.0, g.1), (w.0, w.1));
            assert!((g.2 - w.2).abs() < 1e-5 * (1.0 + w.2.abs()));
        }
        assert_eq!(
            a.threshold(),
            got.iter().map(|e| e.2).fold(f32::INFINITY, f32::min)
        );
    }

    #[test]
    fn gradient_matches_finite_differences() {
        let dims = Dims {
            d_in: 6,
            n: 20,
            d_out: 6,
        };
        let mut rng = Rng::new(5);
        let mut a = arch(4, 0, 0.01);
        let p = gradcheck::perturbed_params(&a, dims, &mut rng, 0.1);
        let x = gradcheck::random_batch(&mut rng, 9, 6);
        let dead = vec![false; 20];
        for reference in [false, true] {
            let ctx = StepContext {
                sparsity_scale: 1.0,
                dead: &dead,
                reference,
            };
            gradcheck::check(&mut a, &p, &x, &ctx, &[], 40, None);
        }
    }

    #[test]
    fn auxk_gradient_matches_finite_differences_on_dead_latents() {
        // As in topk.rs: the AuxK target carries no gradient, so only parameters of
        // latents that are dead and unselected on this batch have FD = analytic.
        let (d, n) = (6, 24);
        let dims = Dims {
            d_in: d,
            n,
            d_out: d,
        };
        let mut rng = Rng::new(6);
        let mut a = arch(3, 4, 0.01);
        let p = gradcheck::perturbed_params(&a, dims, &mut rng, 0.1);
        let x = gradcheck::random_batch(&mut rng, 7, d);
        let pre = affine(
            &subtract_bias(&x, &p.get("b_dec").data),
            &p.get("W_enc").data,
            &p.get("b_enc").data,
        );
        let used = batch_topk(&pre, 3 * 7);
        let dead: Vec<bool> = (0..n).map(|j| !used.idx.contains(&(j as u32))).collect();
        assert!(dead.iter().filter(|&&v| v).count() >= 4);
        let only = |name: &str, i: usize| match name {
            "W_enc" => dead[i % n],
            "b_enc" => dead[i],
            "W_dec" => dead[i / d],
            _ => false,
        };
        for reference in [false, true] {
            let ctx = StepContext {
                sparsity_scale: 1.0,
                dead: &dead,
                reference,
            };
            let out = a.train_step(&p, &x, &ctx, &mut p.zeros_like());
            assert!(out.terms.iter().any(|(t, v)| *t == "aux" && *v > 0.0));
            gradcheck::check(&mut a, &p, &x, &ctx, &[], 40, Some(&only));
        }
    }

    #[test]
    fn threshold_is_an_ema_of_the_smallest_selected_value() {
        let (d, n, rows, k, m) = (5, 16, 10, 2, 0.2f32);
        let mut rng = Rng::new(13);
        let mut a = arch(k, 0, m);
        let p = gradcheck::perturbed_params(
            &a,
            Dims {
                d_in: d,
                n,
                d_out: d,
            },
            &mut rng,
            0.1,
        );
        let dead = vec![false; n];
        let ctx = StepContext {
            sparsity_scale: 1.0,
            dead: &dead,
            reference: false,
        };
        assert_eq!(a.state(), serde_json::json!({ "threshold": null }));
        let mut want: Option<f64> = None;
        for _ in 0..6 {
            let x = gradcheck::random_batch(&mut rng, rows, d);
            let pre = affine(
                &subtract_bias(&x, &p.get("b_dec").data),
                &p.get("W_enc").data,
                &p.get("b_enc").data,
            );
            let min = naive_select(&pre, k * rows)
                .iter()
                .map(|e| e.2)
                .fold(f32::INFINITY, f32::min) as f64;
            want = Some(match want {
                None => min,
                Some(t) => (1.0 - m as f64) * t + m as f64 * min,
            });
            a.train_step(&p, &x, &ctx, &mut p.zeros_like());
            assert!((a.threshold() as f64 - want.unwrap()).abs() < 1e-5);
        }
        // state round trip, and refusal of a malformed state
        let mut b = arch(k, 0, m);
        b.load_state(&a.state()).unwrap();
        assert_eq!(b.threshold(), a.threshold());
        assert_eq!(b.to_file(&p), a.to_file(&p));
        assert!(b
            .load_state(&serde_json::json!({ "threshold": "x" }))
            .is_err());
        assert!(b.load_state(&serde_json::Value::Null).is_err());
        b.load_state(&serde_json::json!({ "threshold": null }))
            .unwrap();
        assert_eq!(b.threshold, None);
    }

    #[test]
    fn jumprelu_file_form_reproduces_training_sparsity() {
        // Fixed parameters, a stream of batches from one distribution: θ settles, and the
        // JumpReLU file form then gives about k latents per token on fresh batches, with
        // nearly the same active set as the batch selection and identical values.
        let (d, n, rows, k) = (16, 96, 256, 6);
        let mut rng = Rng::new(17);
        let mut a = arch(k, 0, 0.05);
        let p = gradcheck::perturbed_params(
            &a,
            Dims {
                d_in: d,
                n,
                d_out: d,
            },
            &mut rng,
            0.05,
        );
        let dead = vec![false; n];
        let ctx = StepContext {
            sparsity_scale: 1.0,
            dead: &dead,
            reference: false,
        };
        for _ in 0..200 {
            let x = gradcheck::random_batch(&mut rng, rows, d);
            a.train_step(&p, &x, &ctx, &mut p.zeros_like());
        }
        let (file, cfg) = a.to_file(&p);
        assert!(matches!(cfg, ArchConfig::Jumprelu { .. }));
        let th = &file.get("threshold").data;
        assert_eq!(th.len(), n);
        assert!(th.iter().all(|&t| t == a.threshold() && t > 0.0));
        let jump = crate::arch::build(&cfg);
        let (mut l0_train, mut l0_file, mut common, mut union) = (0usize, 0usize, 0usize, 0usize);
        for _ in 0..20 {
            let x = gradcheck::random_batch(&mut rng, rows, d);
            let train = a.train_step(&p, &x, &ctx, &mut p.zeros_like()).latents;
            let enc = jump.encode(&file, &subtract_bias(&x, &p.get("b_dec").data));
            l0_train += train.nnz();
            l0_file += enc.nnz();
            let (t, e) = (triples(&train), triples(&enc));
            for r in 0..rows {
                let tr: Vec<_> = t.iter().filter(|v| v.0 == r).collect();
                let er: Vec<_> = e.iter().filter(|v| v.0 == r).collect();
                for a in &tr {
                    if let Some(b) = er.iter().find(|b| b.1 == a.1) {
                        assert_eq!(a.2, b.2);
                        common += 1;
                    }
                }
                union += tr.len() + er.len();
            }
        }
        let union = union - common;
        let (l0_train, l0_file) = (l0_train as f64 / 5120.0, l0_file as f64 / 5120.0);
        eprintln!(
            "L0: batch selection {l0_train:.3}, JumpReLU file form {l0_file:.3}; Jaccard {:.3}",
            common as f64 / union as f64
        );
        assert_eq!(l0_train, k as f64);
        assert!(
            (l0_file - k as f64).abs() < 0.1 * k as f64,
            "file-form L0 {l0_file}"
        );
        assert!(common as f64 / union as f64 > 0.9);
    }
}
