//! TopK SAE ("Scaling and evaluating sparse autoencoders", Gao et al. 2024).
//!
//! `f = ReLU(TopK_k((x − b_dec) W_enc + b_enc))`, `x̂ = f W_dec + b_dec`.
//! Loss: `mean ‖x − x̂‖² + c_aux · mean ‖e − ê‖²`, where `e = x − x̂` (no gradient
//! through e) and `ê = ReLU(TopK_{k_aux} over dead latents) · W_dec` — the AuxK term
//! that gives dead latents a gradient. Decoder rows are kept at unit norm.

use super::common::{init_tied, mse_and_grad, sub_assign, subtract_bias, AuxK, Forward, Kernels};
use super::{Architecture, StepContext, StepOutput};
use crate::config::{ArchConfig, Dims};
use crate::kernels::affine;
use crate::kernels::select::{topk_rows, TopKSelector};
use crate::kernels::sparse::{AuxBackward, AuxInput, AuxLatents, Grads, Workspace};
use crate::latents::Latents;
use crate::rng::Rng;
use crate::tensor::{Matrix, ParamSet};

/// The TopK architecture.
pub struct TopK {
    cfg: ArchConfig,
    k: usize,
    aux_k: usize,
    aux_coefficient: f32,
    ws: Workspace,
}

impl TopK {
    /// Builds from an [`ArchConfig::Topk`].
    pub fn new(cfg: ArchConfig) -> Self {
        let ArchConfig::Topk {
            k,
            aux_k,
            aux_coefficient,
        } = cfg
        else {
            panic!("TopK::new needs ArchConfig::Topk");
        };
        TopK {
            cfg,
            k,
            aux_k,
            aux_coefficient,
            ws: Workspace::default(),
        }
    }

    /// The fast step: fused encoder + selection, sparse decoder and sparse gradients.
    fn train_step_fast(
        &mut self,
        p: &ParamSet,
        x: &Matrix,
        ctx: &StepContext,
        grads: &mut ParamSet,
    ) -> StepOutput {
        let (w_enc, b_enc) = (&p.get("W_enc").data, &p.get("b_enc").data);
        let b_dec = &p.get("b_dec").data;
        let aux = AuxSpec::new(self.aux_k, self.aux_coefficient, ctx.dead);
        let (lat, aux_lat) = encode_topk(&mut self.ws, x, w_enc, b_enc, b_dec, self.k, &aux);
        sparse_step(&mut self.ws, p, x, grads, lat, aux_lat, &aux)
    }
}

/// The AuxK settings of one step of the TopK family.
pub(crate) struct AuxSpec {
    /// Dead latents, increasing (empty: AuxK off this step).
    pub dead: Vec<u32>,
    /// AuxK latents per token.
    pub k: usize,
    /// Coefficient of the term.
    pub coefficient: f32,
}

impl AuxSpec {
    /// AuxK with `k_aux` latents and `coefficient`, on when both are positive and some
    /// latent is dead.
    pub fn new(k_aux: usize, coefficient: f32, dead: &[bool]) -> Self {
        let on = k_aux > 0 && coefficient > 0.0 && dead.iter().any(|&v| v);
        AuxSpec {
            dead: if on {
                (0..dead.len() as u32)
                    .filter(|&j| dead[j as usize])
                    .collect()
            } else {
                Vec::new()
            },
            k: k_aux,
            coefficient,
        }
    }

    /// Whether the term is computed this step.
    pub fn on(&self) -> bool {
        !self.dead.is_empty()
    }
}

/// The sparse part of a TopK-family step once the latents are selected: decoder
/// forward, MSE (+ AuxK over `aux_lat`, whose entries are at dead latents), and every
/// gradient, written into `grads` (every entry overwritten). Every main latent is
/// positive and passes its gradient to its pre-activation. The workspace's AuxK state
/// is the one [`Workspace::prepare_aux`] set for `aux`.
pub(crate) fn sparse_step(
    ws: &mut Workspace,
    p: &ParamSet,
    x: &Matrix,
    grads: &mut ParamSet,
    lat: Latents,
    aux_lat: AuxLatents,
    aux: &AuxSpec,
) -> StepOutput {
    let w_enc = &p.get("W_enc").data;
    let (w_dec, b_dec) = (&p.get("W_dec").data, &p.get("b_dec").data);
    let [g_w_enc, g_b_enc, g_w_dec, g_b_dec] =
        grads.get_many_mut(["W_enc", "b_enc", "W_dec", "b_dec"]);
    let bsz = x.rows.max(1) as f64;
    let mut ph = crate::kernels::Phases::start();
    let c = aux.coefficient;
    let sparse_aux = match &aux_lat {
        AuxLatents::Sparse(l) => Some(l),
        _ => None,
    };
    let sums = ws.rows(
        x,
        w_dec,
        b_dec,
        &lat,
        sparse_aux.map(|l| AuxInput {
            latents: l,
            coefficient: c,
        }),
    );
    ph.mark("row pass");
    let mse = sums.sq_err / bsz;
    let mut terms = vec![("mse", mse)];
    let mut loss = mse;
    let (g_pre, g_pre_aux) = (std::mem::take(&mut ws.g_f), std::mem::take(&mut ws.g_f_aux));
    let aux_mode = match &aux_lat {
        AuxLatents::Off => AuxBackward::None,
        AuxLatents::Dense => AuxBackward::Dense { coefficient: c },
        AuxLatents::Sparse(l) => AuxBackward::Sparse(l, &g_pre_aux),
    };
    let dense_sq = ws.backward(
        x,
        b_dec,
        w_enc,
        &lat,
        &g_pre,
        w_dec,
        aux_mode,
        Grads {
            w_enc: &mut g_w_enc.data,
            b_enc: &mut g_b_enc.data,
            w_dec: &mut g_w_dec.data,
            b_dec: &mut g_b_dec.data,
        },
    );
    ws.g_f = g_pre;
    ws.g_f_aux = g_pre_aux;
    ph.mark("backward");
    if !matches!(aux_lat, AuxLatents::Off) {
        let a = c as f64 * (sums.aux_sq + dense_sq) / bsz;
        terms.push(("aux", a));
        loss += a;
    }
    StepOutput {
        loss,
        terms,
        latents: lat,
        sq_err: sums.sq_err,
    }
}

/// Fused encoder and TopK selection: per row, the `k` largest positive pre-activations
/// (`pre = (x − b_dec) W_enc + b_enc`), and with AuxK on the `aux.k` largest positive
/// ones among the dead latents — sparse, or written straight into the workspace's dense
/// `F` when [`Workspace::prepare_aux`] picks the dense route — computed block by block
/// without storing the `[B, n]` pre-activations. Main rows' entries are sorted by
/// decreasing value.
pub(crate) fn encode_topk(
    ws: &mut Workspace,
    x: &Matrix,
    w_enc: &[f32],
    b_enc: &[f32],
    b_dec: &[f32],
    k: usize,
    aux: &AuxSpec,
) -> (Latents, AuxLatents) {
    let (d, n) = (x.cols, b_enc.len());
    let mut ph = crate::kernels::Phases::start();
    let dense_aux = ws.prepare_aux(n, x.rows, &aux.dead, aux.k);
    ws.encoder.load(w_enc, d, n);
    ph.mark("pack W_enc");
    let (encoder, aux_rows) = ws.encoder_with_aux();
    let (ka, dead) = (aux.k, &aux.dead[..]);
    let parts = encoder.run(
        w_enc,
        x,
        Some(b_dec),
        b_enc,
        || (Latents::new(n), Latents::new(n), TopKSelector::default()),
        |(main, auxl, sel), r, pre| {
            sel.row(pre, k);
            main.push_row(sel.result().iter().copied());
            if aux.on() {
                sel.among_unordered(pre, dead, ka);
                if dense_aux {
                    // SAFETY: the encoder visits row r once, on one task.
                    unsafe { aux_rows.write(r, sel.result()) };
                } else {
                    auxl.push_row(sel.result().iter().copied());
                }
            }
        },
    );
    ph.mark("encode+select");
    let mut lat = Latents::with_capacity(n, x.rows, k);
    let sparse_aux = aux.on() && !dense_aux;
    let mut auxl = Latents::with_capacity(n, x.rows, if sparse_aux { ka } else { 0 });
    for (m, a, _) in &parts {
        lat.append(m);
        if sparse_aux {
            auxl.append(a);
        }
    }
    ph.mark("gather latents");
    (lat, AuxLatents::pick(aux.on(), dense_aux, auxl))
}

impl Architecture for TopK {
    fn config(&self) -> &ArchConfig {
        &self.cfg
    }

    fn init(&self, dims: Dims, rng: &mut Rng) -> ParamSet {
        init_tied(dims, 1.0, rng)
    }

    fn encode(&self, p: &ParamSet, x_enc: &Matrix) -> Latents {
        let pre = affine(x_enc, &p.get("W_enc").data, &p.get("b_enc").data);
        topk_rows(&pre, self.k, None)
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
        let b = x.rows.max(1) as f64;

        let x_enc = subtract_bias(x, b_dec);
        let pre = affine(&x_enc, w_enc, b_enc);
        let lat = topk_rows(&pre, self.k, None);
        let x_hat = kern.decode(&lat, w_dec, b_dec);
        let (sq_err, g_out) = mse_and_grad(&x_hat, x);
        let mut loss = sq_err / b;
        let mut terms = vec![("mse", loss)];

        // Reconstruction path. ReLU' = 1 on every kept latent (all are positive).
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

        // AuxK: reconstruct the residual e = x − x̂ from the top dead latents.
        let aux = AuxK {
            k: self.aux_k,
            coefficient: self.aux_coefficient,
        };
        let fwd = Forward {
            x,
            x_enc: &x_enc,
            pre: &pre,
            x_hat: &x_hat,
        };
        if let Some(aux_loss) = aux.add_loss_and_grad(p, fwd, ctx, grads) {
            terms.push(("aux", aux_loss));
            loss += aux_loss;
        }

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
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::arch::gradcheck;

    fn arch(k: usize, aux_k: usize) -> TopK {
        TopK::new(ArchConfig::Topk {
            k,
            aux_k,
            aux_coefficient: 0.5,
        })
    }

    #[test]
    fn gradient_matches_finite_differences() {
        let dims = Dims {
            d_in: 6,
            n: 20,
            d_out: 6,
        };
        let mut rng = Rng::new(5);
        let mut a = arch(4, 0);
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
        // The AuxK target e = x − x̂ carries no gradient, so finite differences equal the
        // analytic gradient only for parameters x̂ does not depend on: those of latents
        // that are dead *and* unused by the main TopK on this batch.
        let (d, n) = (6, 24);
        let dims = Dims {
            d_in: d,
            n,
            d_out: d,
        };
        let mut rng = Rng::new(6);
        let mut a = arch(3, 4);
        let p = gradcheck::perturbed_params(&a, dims, &mut rng, 0.1);
        let x = gradcheck::random_batch(&mut rng, 7, d);
        let x_enc = subtract_bias(&x, &p.get("b_dec").data);
        let used = a.encode(&p, &x_enc);
        let dead: Vec<bool> = (0..n).map(|j| !used.idx.contains(&(j as u32))).collect();
        assert!(dead.iter().filter(|&&v| v).count() >= 4);
        let only = |name: &str, i: usize| match name {
            "W_enc" => dead[i % n],
            "b_enc" => dead[i],
            "W_dec" => dead[i / d],
            _ => false,
        };
        let ctx = StepContext {
            sparsity_scale: 1.0,
            dead: &dead,
            reference: false,
        };
        let mut g = p.zeros_like();
        let out = a.train_step(&p, &x, &ctx, &mut g);
        assert!(out.terms.iter().any(|(t, v)| *t == "aux" && *v > 0.0));
        gradcheck::check(&mut a, &p, &x, &ctx, &[], 40, Some(&only));
    }

    #[test]
    fn fast_and_reference_agree_with_a_small_dead_set() {
        // Few dead latents and a large k_aux: the AuxK pairs fill most of [B, |dead|], so
        // the fast step takes the dense-over-the-dead-set route.
        let dims = Dims {
            d_in: 13,
            n: 67,
            d_out: 13,
        };
        let mut rng = Rng::new(12);
        let mut a = arch(5, 6);
        let p = gradcheck::perturbed_params(&a, dims, &mut rng, 0.1);
        let x = gradcheck::random_batch(&mut rng, 41, 13);
        let dead: Vec<bool> = (0..67).map(|j| j % 5 == 2).collect();
        let ctx = |reference| StepContext {
            sparsity_scale: 1.0,
            dead: &dead,
            reference,
        };
        let (mut g1, mut g2) = (p.zeros_like(), p.zeros_like());
        let o1 = a.train_step(&p, &x, &ctx(false), &mut g1);
        let o2 = a.train_step(&p, &x, &ctx(true), &mut g2);
        let aux = |o: &StepOutput| o.terms.iter().find(|t| t.0 == "aux").unwrap().1;
        assert!(aux(&o2) > 0.0);
        assert!((aux(&o1) - aux(&o2)).abs() < 1e-4 * aux(&o2));
        assert!((o1.loss - o2.loss).abs() < 1e-4 * o2.loss);
        // Same selection; values equal up to the summation order of the two products.
        assert_eq!(o1.latents.indptr, o2.latents.indptr);
        assert_eq!(o1.latents.idx, o2.latents.idx);
        for (u, v) in o1.latents.val.iter().zip(&o2.latents.val) {
            assert!((u - v).abs() < 1e-5 * (1.0 + v.abs()));
        }
        for ((name, t1), (_, t2)) in g1.iter().zip(g2.iter()) {
            for (u, v) in t1.data.iter().zip(&t2.data) {
                assert!((u - v).abs() < 1e-4 * (1.0 + u.abs()), "{name}: {u} vs {v}");
            }
        }
    }

    #[test]
    fn fast_and_reference_kernels_agree() {
        let dims = Dims {
            d_in: 13,
            n: 67,
            d_out: 13,
        };
        let mut rng = Rng::new(8);
        let mut a = arch(70, 5); // k larger than the number of positive pre-activations
        let p = gradcheck::perturbed_params(&a, dims, &mut rng, 0.1);
        let x = gradcheck::random_batch(&mut rng, 1, 13);
        let dead = vec![true; 67];
        let mut g1 = p.zeros_like();
        let mut g2 = p.zeros_like();
        let ctx = |reference| StepContext {
            sparsity_scale: 1.0,
            dead: &dead,
            reference,
        };
        let o1 = a.train_step(&p, &x, &ctx(false), &mut g1);
        let o2 = a.train_step(&p, &x, &ctx(true), &mut g2);
        assert!((o1.loss - o2.loss).abs() < 1e-4 * o1.loss.abs().max(1.0));
        for ((_, t1), (_, t2)) in g1.iter().zip(g2.iter()) {
            for (u, v) in t1.data.iter().zip(&t2.data) {
                assert!((u - v).abs() < 1e-4 * (1.0 + u.abs()));
            }
        }
    }
}
