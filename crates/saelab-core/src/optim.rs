//! Adam, with the moments stored as [`ParamSet`]s so that checkpoints can save them.

use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::tensor::ParamSet;

/// Adam hyperparameters (Kingma & Ba 2015).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdamConfig {
    /// Exponential decay of the first moment.
    #[serde(default = "default_beta1")]
    pub beta1: f32,
    /// Exponential decay of the second moment.
    #[serde(default = "default_beta2")]
    pub beta2: f32,
    /// Added to the root of the second moment.
    #[serde(default = "default_eps")]
    pub eps: f32,
}

fn default_beta1() -> f32 {
    0.9
}
fn default_beta2() -> f32 {
    0.999
}
fn default_eps() -> f32 {
    1e-8
}

impl Default for AdamConfig {
    fn default() -> Self {
        AdamConfig {
            beta1: default_beta1(),
            beta2: default_beta2(),
            eps: default_eps(),
        }
    }
}

/// Adam state: first and second moments for every parameter, and the step count.
#[derive(Clone, Debug, PartialEq)]
pub struct Adam {
    /// Hyperparameters.
    pub cfg: AdamConfig,
    /// First moments, named like the parameters.
    pub m: ParamSet,
    /// Second moments, named like the parameters.
    pub v: ParamSet,
    /// Updates applied so far.
    pub t: u64,
}

/// Elements per parallel task in the update.
const CHUNK: usize = 1 << 14;

impl Adam {
    /// Fresh state (zero moments) for `params`.
    pub fn new(cfg: AdamConfig, params: &ParamSet) -> Self {
        Adam {
            cfg,
            m: params.zeros_like(),
            v: params.zeros_like(),
            t: 0,
        }
    }

    /// One bias-corrected Adam update of `params` with gradients `grads` and step size `lr`:
    /// `m ← β1 m + (1−β1) g`, `v ← β2 v + (1−β2) g²`,
    /// `p ← p − lr · m̂ / (√v̂ + ε)` with `m̂ = m / (1−β1ᵗ)`, `v̂ = v / (1−β2ᵗ)`.
    /// Fused into one pass over memory per tensor.
    pub fn step(&mut self, params: &mut ParamSet, grads: &ParamSet, lr: f32) {
        self.step_unit_rows(params, grads, lr, None);
    }

    /// [`Adam::step`], where the rows (of length `d`) of the tensor named in `unit` are
    /// kept at unit norm in the same pass: each row's gradient first loses its component
    /// along the row (`g ← g − (⟨g, w⟩ / ‖w‖²) w`), and the row is renormalised after its
    /// update — what `remove_parallel_component`, `step` and `normalize_rows` of the
    /// trainer do in three passes. `grads` is not modified.
    pub fn step_unit_rows(
        &mut self,
        params: &mut ParamSet,
        grads: &ParamSet,
        lr: f32,
        unit: Option<(&str, usize)>,
    ) {
        self.t += 1;
        let AdamConfig { beta1, beta2, eps } = self.cfg;
        let bc1 = 1.0 - (beta1 as f64).powi(self.t as i32);
        let bc2 = 1.0 - (beta2 as f64).powi(self.t as i32);
        // p −= lr/bc1 · m / (√v / √bc2 + ε)
        let step_size = (lr as f64 / bc1) as f32;
        let inv_sqrt_bc2 = (1.0 / bc2.sqrt()) as f32;
        let update = move |p: &mut f32, m: &mut f32, v: &mut f32, gi: f32| {
            *m = beta1 * *m + (1.0 - beta1) * gi;
            *v = beta2 * *v + (1.0 - beta2) * gi * gi;
            *p -= step_size * *m / (v.sqrt() * inv_sqrt_bc2 + eps);
        };
        for (((name, p), (_, m)), (_, v)) in params
            .iter_mut()
            .zip(self.m.iter_mut())
            .zip(self.v.iter_mut())
        {
            let g = &grads.get(name).data;
            match unit {
                Some((u, d)) if u == name && d > 0 => {
                    let chunk = (CHUNK / d).max(1) * d;
                    p.data
                        .par_chunks_mut(chunk)
                        .zip(m.data.par_chunks_mut(chunk))
                        .zip(v.data.par_chunks_mut(chunk))
                        .zip(g.par_chunks(chunk))
                        .for_each(|(((p, m), v), g)| {
                            for (((p, m), v), g) in p
                                .chunks_mut(d)
                                .zip(m.chunks_mut(d))
                                .zip(v.chunks_mut(d))
                                .zip(g.chunks(d))
                            {
                                let ww = crate::kernels::dot(p, p);
                                let c = if ww > 0.0 {
                                    crate::kernels::dot(g, p) / ww
                                } else {
                                    0.0
                                };
                                for i in 0..p.len() {
                                    let gi = g[i] - c * p[i];
                                    update(&mut p[i], &mut m[i], &mut v[i], gi);
                                }
                                let norm = crate::kernels::dot(p, p).sqrt();
                                if norm > 0.0 {
                                    p.iter_mut().for_each(|x| *x /= norm);
                                }
                            }
                        });
                }
                _ => {
                    p.data
                        .par_chunks_mut(CHUNK)
                        .zip(m.data.par_chunks_mut(CHUNK))
                        .zip(v.data.par_chunks_mut(CHUNK))
                        .zip(g.par_chunks(CHUNK))
                        .for_each(|(((p, m), v), g)| {
                            for i in 0..p.len() {
                                update(&mut p[i], &mut m[i], &mut v[i], g[i]);
                            }
                        });
                }
            }
        }
    }
}

/// Scales all gradients so that their global L2 norm is at most `max_norm`.
/// Returns the norm before clipping.
pub fn clip_grad_norm(grads: &mut ParamSet, max_norm: f32) -> f32 {
    let sq: f64 = grads
        .iter()
        .map(|(_, t)| t.data.iter().map(|&g| (g as f64) * (g as f64)).sum::<f64>())
        .sum();
    let norm = sq.sqrt() as f32;
    if norm > max_norm && norm > 0.0 {
        let s = max_norm / norm;
        for (_, t) in grads.iter_mut() {
            t.data.iter_mut().for_each(|g| *g *= s);
        }
    }
    norm
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tensor::Tensor;

    #[test]
    fn matches_a_scalar_adam_written_out_by_hand() {
        let mut p = ParamSet::new();
        p.insert("w", Tensor::new(&[2], vec![1.0, -2.0]).unwrap());
        let mut opt = Adam::new(AdamConfig::default(), &p);
        let (b1, b2, eps, lr) = (0.9f64, 0.999f64, 1e-8f64, 0.01f64);
        let (mut w, mut m, mut v) = (1.0f64, 0.0f64, 0.0f64);
        for t in 1..=5 {
            // loss = w² (first coordinate), gradient 2w
            let mut g = p.zeros_like();
            g.get_mut("w").data[0] = 2.0 * p.get("w").data[0];
            opt.step(&mut p, &g, lr as f32);
            let gw = 2.0 * w;
            m = b1 * m + (1.0 - b1) * gw;
            v = b2 * v + (1.0 - b2) * gw * gw;
            let mh = m / (1.0 - b1.powi(t));
            let vh = v / (1.0 - b2.powi(t));
            w -= lr * mh / (vh.sqrt() + eps);
            assert!((p.get("w").data[0] as f64 - w).abs() < 1e-6);
        }
        assert_eq!(p.get("w").data[1], -2.0); // zero gradient, no move
    }

    #[test]
    fn unit_row_step_equals_projection_adam_and_renormalisation() {
        // Three separate passes written out: remove the parallel component, Adam,
        // renormalise; against the fused step.
        let (rows, d) = (5, 7);
        let mut rng = crate::rng::Rng::new(1);
        let mut p = ParamSet::new();
        let w: Vec<f32> = (0..rows * d).map(|_| rng.normal() as f32).collect();
        p.insert("W", Tensor::new(&[rows, d], w).unwrap());
        p.insert("b", Tensor::new(&[3], vec![0.5, -1.0, 2.0]).unwrap());
        let mut q = p.clone();
        let (mut fused, mut plain) = (
            Adam::new(AdamConfig::default(), &p),
            Adam::new(AdamConfig::default(), &p),
        );
        for _ in 0..4 {
            let mut g = p.zeros_like();
            for (_, t) in g.iter_mut() {
                t.data.iter_mut().for_each(|v| *v = rng.normal() as f32);
            }
            fused.step_unit_rows(&mut p, &g, 0.05, Some(("W", d)));
            let mut g2 = g.clone();
            let wq = q.get("W").data.clone();
            for (gr, wr) in g2.get_mut("W").data.chunks_mut(d).zip(wq.chunks(d)) {
                let ww: f32 = wr.iter().map(|x| x * x).sum();
                let c: f32 = gr.iter().zip(wr).map(|(a, b)| a * b).sum::<f32>() / ww;
                gr.iter_mut().zip(wr).for_each(|(a, b)| *a -= c * b);
            }
            plain.step(&mut q, &g2, 0.05);
            for r in q.get_mut("W").data.chunks_mut(d) {
                let n: f32 = r.iter().map(|x| x * x).sum::<f32>().sqrt();
                r.iter_mut().for_each(|x| *x /= n);
            }
        }
        for ((_, a), (_, b)) in p.iter().zip(q.iter()) {
            for (x, y) in a.data.iter().zip(&b.data) {
                assert!((x - y).abs() < 1e-5, "{x} vs {y}");
            }
        }
        for r in p.get("W").data.chunks(d) {
            let n: f32 = r.iter().map(|x| x * x).sum::<f32>().sqrt();
            assert!((n - 1.0).abs() < 1e-5);
        }
    }

    #[test]
    fn clipping_bounds_the_global_norm() {
        let mut g = ParamSet::new();
        g.insert("a", Tensor::new(&[2], vec![3.0, 4.0]).unwrap());
        assert_eq!(clip_grad_norm(&mut g, 1.0), 5.0);
        assert!((g.get("a").data[0] - 0.6).abs() < 1e-6);
    }
}
