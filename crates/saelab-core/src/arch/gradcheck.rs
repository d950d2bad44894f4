//! Finite-difference gradient checks shared by the architecture tests.

use super::{Step, StepContext, StepOutput, Train};
use crate::config::Dims;
use crate::kernels::cpu::CpuEngine;
use crate::kernels::engine::{EngineKind, StepEngine};
use crate::rng::Rng;
use crate::tensor::{Matrix, ParamSet};

/// Random parameters for `arch`: its own initialisation, then every value perturbed so
/// that biases are non-zero and no symmetry hides a wrong gradient.
pub fn perturbed_params(arch: &dyn Train, dims: Dims, rng: &mut Rng, scale: f32) -> ParamSet {
    let mut p = arch.init(dims, rng);
    for (_, t) in p.iter_mut() {
        for v in t.data.iter_mut() {
            *v += scale * rng.normal() as f32;
        }
    }
    p
}

/// The engines every architecture's gradient is checked on: the CPU engine pinned to
/// its sparse kernels, the CPU engine pinned to its dense route, and the reference.
pub fn engines() -> Vec<Box<dyn StepEngine>> {
    vec![
        Box::new(CpuEngine::with_dense_above(1.0)),
        Box::new(CpuEngine::with_dense_above(0.0)),
        EngineKind::Reference.build(),
    ]
}

/// One step of `arch` on the default CPU engine, the gradient discarded.
pub fn step_on_cpu(
    arch: &mut dyn Train,
    params: &ParamSet,
    x: &Matrix,
    ctx: StepContext,
) -> StepOutput {
    let mut grads = params.zeros_like();
    arch.train_step(Step::new(
        &mut CpuEngine::default(),
        params,
        x,
        ctx,
        &mut grads,
    ))
}

/// A `[rows, d]` batch of standard-normal inputs.
pub fn random_batch(rng: &mut Rng, rows: usize, d: usize) -> Matrix {
    Matrix::from_vec(
        rows,
        d,
        (0..rows * d).map(|_| rng.normal() as f32).collect(),
    )
    .unwrap()
}

/// A ReLU SAE computed literally in f64 from parameters `p` (`W_enc`, `b_enc`, `W_dec`,
/// `b_dec`) on `x [B, d]`: the latents of every row `[B][n]` and `Σ‖x̂ − x‖²`. The
/// independent side of the loss tests of the ReLU-encoder architectures.
pub fn naive_relu(p: &ParamSet, x: &Matrix) -> (Vec<Vec<f64>>, f64) {
    let (d, n) = (x.cols, p.get("b_enc").data.len());
    let (w_enc, b_enc) = (&p.get("W_enc").data, &p.get("b_enc").data);
    let (w_dec, b_dec) = (&p.get("W_dec").data, &p.get("b_dec").data);
    let mut sq = 0.0f64;
    let mut latents = Vec::with_capacity(x.rows);
    for r in 0..x.rows {
        let f: Vec<f64> = (0..n)
            .map(|j| {
                let pre = b_enc[j] as f64
                    + (0..d)
                        .map(|i| (x.row(r)[i] - b_dec[i]) as f64 * w_enc[i * n + j] as f64)
                        .sum::<f64>();
                pre.max(0.0)
            })
            .collect();
        for i in 0..d {
            let xh = b_dec[i] as f64 + (0..n).map(|j| f[j] * w_dec[j * d + i] as f64).sum::<f64>();
            sq += (xh - x.row(r)[i] as f64).powi(2);
        }
        latents.push(f);
    }
    (latents, sq)
}

/// Which coordinates to check: `(tensor name, flat index) -> bool`.
pub type CoordFilter<'a> = &'a dyn Fn(&str, usize) -> bool;

/// Compares the analytic gradient of `arch.train_step` on `engine` with central differences of its
/// loss for `samples` random coordinates of every parameter except those in `skip`
/// (and, given `only`, only coordinates it accepts — for losses with a stop-gradient,
/// where the finite difference is only the gradient where the stopped value is constant).
/// Coordinates where the loss is not smooth at step `h` (a latent crossing a TopK or
/// threshold boundary) are detected by a one-sided disagreement and skipped; at least
/// half of the sampled coordinates of every tensor must be checked.
#[allow(clippy::too_many_arguments)]
pub fn check(
    arch: &mut dyn Train,
    engine: &mut dyn StepEngine,
    params: &ParamSet,
    x: &Matrix,
    ctx: &StepContext,
    skip: &[&str],
    samples: usize,
    only: Option<CoordFilter>,
) {
    let mut grads = params.zeros_like();
    arch.train_step(Step::new(engine, params, x, *ctx, &mut grads));
    let mut rng = Rng::new(99);
    let h = 1e-3f32;
    for (name, t) in params.iter() {
        if skip.contains(&name) {
            continue;
        }
        let mut checked = 0;
        let candidates: Vec<usize> = (0..t.data.len())
            .filter(|&i| only.is_none_or(|f| f(name, i)))
            .collect();
        if candidates.is_empty() {
            continue;
        }
        let tries = samples.min(candidates.len());
        for _ in 0..tries {
            let i = candidates[rng.below(candidates.len() as u64) as usize];
            let mut loss_at = |delta: f32| {
                let mut q = params.clone();
                q.get_mut(name).data[i] += delta;
                let mut g = params.zeros_like();
                arch.train_step(Step::new(engine, &q, x, *ctx, &mut g)).loss
            };
            let l0 = loss_at(0.0);
            let lp = loss_at(h);
            let lm = loss_at(-h);
            let (fwd, bwd) = ((lp - l0) / h as f64, (l0 - lm) / h as f64);
            let scale = fwd.abs().max(bwd.abs()).max(1e-2);
            if (fwd - bwd).abs() > 0.05 * scale + 1e-2 {
                continue; // kink inside [-h, h]
            }
            let fd = (lp - lm) / (2.0 * h as f64);
            let an = grads.get(name).data[i] as f64;
            assert!(
                (fd - an).abs() <= 2e-2 * fd.abs().max(an.abs()) + 2e-3,
                "{name}[{i}]: finite difference {fd} vs analytic {an}"
            );
            checked += 1;
        }
        assert!(
            checked * 2 >= tries,
            "{name}: only {checked} of {tries} coordinates were smooth enough to check"
        );
    }
}

/// [`check`] of `arch` at `params` on `x` on every engine of [`engines`], 40 coordinates
/// per tensor, the tensors in `skip` left out.
pub fn check_on_every_engine(
    arch: &mut dyn Train,
    params: &ParamSet,
    x: &Matrix,
    ctx: &StepContext,
    skip: &[&str],
) {
    for mut engine in engines() {
        check(arch, engine.as_mut(), params, x, ctx, skip, 40, None);
    }
}

/// The standard gradient check of an architecture: d = 6, n = 20, a batch of 9 inputs,
/// no dead latents, the parameters of `arch.init` (seed 5) perturbed by `perturb`, every
/// engine.
pub fn check_standard_case(arch: &mut dyn Train, perturb: f32, sparsity_scale: f32) {
    let dims = Dims::square(6, 20);
    let mut rng = Rng::new(5);
    let p = perturbed_params(arch, dims, &mut rng, perturb);
    let x = random_batch(&mut rng, 9, 6);
    let dead = vec![false; 20];
    let ctx = StepContext::new(sparsity_scale, &dead);
    check_on_every_engine(arch, &p, &x, &ctx, &[]);
}
