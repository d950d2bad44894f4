//! The fast CPU step engine: [`StepEngine`] on saelab's own kernels.
//!
//! - [`StepEngine::encode`] runs the blocked encoder product ([`super::encoder`]) and
//!   selects each block's latents while its pre-activations are in cache: per-token
//!   top-k ([`TopKSelector`]), entries above per-latent bounds ([`for_each_above`]), or
//!   the batch-wide top-k from the candidates above a lower bound ([`select_candidates`],
//!   falling back to the full pre-activations and [`batch_topk`]); AuxK latents among the
//!   dead ones are picked in the same visit, sparse or written straight into the
//!   workspace's dense `F` (see [`Workspace::prepare_aux`]).
//! - [`StepEngine::reconstruct`] and [`StepEngine::backward`] are the fused sparse row
//!   and latent passes of [`super::sparse`] ([`Workspace::rows`], [`Workspace::backward`]).
//! - When the selected latents are denser than [`CpuEngine::dense_above`] (a ReLU SAE
//!   early in training) and there is no AuxK term, the step continues with dense
//!   products instead ([`super::reference`]'s kernels), which then do less work per
//!   useful entry than gathers and scatters.

use tracing::debug_span;

use super::engine::{
    AuxLatents, AuxSelect, EncoderWeights, EngineKind, Grads, Reconstruction, Select, Selected,
    StepEngine,
};
use super::select::{batch_topk, for_each_above, select_candidates, topk_rows, TopKSelector};
use super::sparse::{AuxBackward, AuxInput, Workspace};
use super::{reference, subtract_bias};
use crate::latents::Latents;
use crate::tensor::Matrix;

/// Latent density (stored entries / (rows · n)) above which the dense products are used
/// (see the module docs). A rough CPU crossover.
pub const DENSE_DENSITY: f64 = 1.0 / 16.0;

/// The fast CPU engine. Holds the buffers a step reuses, so that steps allocate no
/// large arrays.
pub struct CpuEngine {
    ws: Workspace,
    dense_above: f64,
}

impl Default for CpuEngine {
    fn default() -> Self {
        CpuEngine {
            ws: Workspace::default(),
            dense_above: DENSE_DENSITY,
        }
    }
}

impl CpuEngine {
    /// An engine that takes the dense route above latent density `dense_above` (`1.0`:
    /// always the sparse kernels; `0.0`: dense products whenever there is no AuxK term).
    /// Tests pin the route this way.
    pub fn with_dense_above(dense_above: f64) -> Self {
        CpuEngine {
            ws: Workspace::default(),
            dense_above,
        }
    }

    /// The latent density above which the dense route is taken.
    pub fn dense_above(&self) -> f64 {
        self.dense_above
    }

    fn is_dense(&self, l: &Latents) -> bool {
        l.nnz() as f64 > self.dense_above * (l.rows() * l.n).max(1) as f64
    }

    /// One encoder pass: `main(selector, pre_r, out)` appends row `r`'s selected
    /// entries to `out`, and with AuxK the AuxK latents of the row are picked among the
    /// dead ones (sparse, or written into the workspace's dense `F`).
    fn encode_rows<F>(
        &mut self,
        x: &Matrix,
        enc: EncoderWeights,
        aux: AuxSelect,
        dense_aux: bool,
        main: F,
    ) -> (Latents, AuxLatents)
    where
        F: Fn(&mut TopKSelector, &[f32], &mut Latents) + Sync,
    {
        let n = enc.b_enc.len();
        let (encoder, aux_rows) = self.ws.encoder_with_aux();
        let (ka, dead, on) = (aux.k, aux.dead, aux.on());
        let parts = encoder.run(
            enc.w_enc,
            x,
            Some(enc.b_dec),
            enc.b_enc,
            || (Latents::new(n), Latents::new(n), TopKSelector::default()),
            |(lat, auxl, sel), r, pre| {
                main(sel, pre, lat);
                if on {
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
        let nnz = parts.iter().map(|p| p.0.nnz()).sum::<usize>();
        let mut lat = Latents::with_capacity(n, x.rows, nnz / x.rows.max(1));
        let sparse_aux = on && !dense_aux;
        let mut auxl = Latents::with_capacity(n, x.rows, if sparse_aux { ka } else { 0 });
        for (l, a, _) in &parts {
            lat.append(l);
            if sparse_aux {
                auxl.append(a);
            }
        }
        (lat, AuxLatents::pick(on, dense_aux, auxl))
    }

    /// The batch-wide top-`total`. With a positive `hint`, the encoder pass collects the
    /// entries above it: when at least `total` exceed it, the `total` largest of the
    /// batch all do, so selecting among them is exact. Otherwise (no hint, or the hint
    /// too high) the full pre-activations are computed and selected from.
    fn encode_batch_topk(
        &mut self,
        x: &Matrix,
        enc: EncoderWeights,
        (total, hint): (usize, Option<f32>),
        aux: AuxSelect,
        dense_aux: bool,
    ) -> (Latents, AuxLatents) {
        let n = enc.b_enc.len();
        if let Some(l) = hint.filter(|&l| l > 0.0) {
            let thr = vec![l; n];
            let (cand, aux_lat) = self.encode_rows(x, enc, aux, dense_aux, above(&thr));
            if cand.nnz() >= total {
                return (select_candidates(&cand, total), aux_lat);
            }
        }
        // Full pre-activations, then the exact radix selection.
        let pre = self.full_pre_activations(x, enc);
        let lat = batch_topk(&pre, total);
        let aux_lat = if !aux.on() {
            AuxLatents::Off
        } else {
            let l = topk_rows(&pre, aux.k, Some(aux.dead));
            if dense_aux {
                self.ws.set_dense_aux(&l);
                AuxLatents::Dense
            } else {
                AuxLatents::Sparse(l)
            }
        };
        (lat, aux_lat)
    }

    /// `(x − b_dec) W_enc + b_enc` `[B, n]` on the loaded encoder.
    fn full_pre_activations(&self, x: &Matrix, enc: EncoderWeights) -> Matrix {
        let n = enc.b_enc.len();
        let mut pre = Matrix::zeros(x.rows, n);
        let rows = super::SharedMut::new(&mut pre.data);
        self.ws.encoder.run(
            enc.w_enc,
            x,
            Some(enc.b_dec),
            enc.b_enc,
            || (),
            // SAFETY: the encoder visits each row exactly once, on one task.
            |_, r, row| unsafe { rows.slice(r * n, n) }.copy_from_slice(row),
        );
        pre
    }
}

/// The row selection of [`Select::Above`]: every entry above `lower`, in latent order.
fn above(lower: &[f32]) -> impl Fn(&mut TopKSelector, &[f32], &mut Latents) + Sync + '_ {
    move |_, pre, lat| {
        for_each_above(pre, lower, |j, v| {
            lat.idx.push(j as u32);
            lat.val.push(v);
        });
        lat.indptr.push(lat.idx.len());
    }
}

impl StepEngine for CpuEngine {
    fn kind(&self) -> EngineKind {
        EngineKind::Cpu
    }

    fn encode(
        &mut self,
        x: &Matrix,
        enc: EncoderWeights,
        select: Select,
        aux: AuxSelect,
    ) -> Selected {
        let _span = debug_span!("encode").entered();
        let (d, n) = (x.cols, enc.b_enc.len());
        let dead: &[u32] = if aux.on() { aux.dead } else { &[] };
        let dense_aux = self.ws.prepare_aux(n, x.rows, dead, aux.k);
        {
            let _s = debug_span!("pack_w_enc").entered();
            self.ws.encoder.load(enc.w_enc, d, n);
        }
        let (latents, aux_lat) = match select {
            Select::TopK(k) => self.encode_rows(x, enc, aux, dense_aux, |sel, pre, lat| {
                sel.row(pre, k);
                lat.push_row(sel.result().iter().copied());
            }),
            Select::Above(lower) => {
                assert_eq!(lower.len(), n, "encode: lower bounds are not [n]");
                self.encode_rows(x, enc, aux, dense_aux, above(lower))
            }
            Select::BatchTopK { total, hint } => {
                self.encode_batch_topk(x, enc, (total, hint), aux, dense_aux)
            }
        };
        let dense = !aux_lat.on() && self.is_dense(&latents);
        Selected {
            latents,
            aux: aux_lat,
            aux_coefficient: aux.coefficient,
            dense,
        }
    }

    fn reconstruct(
        &mut self,
        x: &Matrix,
        w_dec: &[f32],
        b_dec: &[f32],
        sel: &Selected,
    ) -> Reconstruction {
        let _span = debug_span!("reconstruct", dense = sel.dense).entered();
        if sel.dense {
            let x_hat = reference::decode(&sel.latents, w_dec, b_dec);
            let (sq_err, g_out) = super::mse_and_grad(&x_hat, x);
            let g_f = reference::latent_grads(&sel.latents, &g_out, w_dec);
            self.ws.g_out = g_out;
            return Reconstruction {
                sq_err,
                g_f,
                aux_sq: 0.0,
                g_f_aux: Vec::new(),
            };
        }
        let aux = match &sel.aux {
            AuxLatents::Sparse(l) => Some(AuxInput {
                latents: l,
                coefficient: sel.aux_coefficient,
            }),
            _ => None,
        };
        let sums = self.ws.rows(x, w_dec, b_dec, &sel.latents, aux);
        Reconstruction {
            sq_err: sums.sq_err,
            g_f: std::mem::take(&mut self.ws.g_f),
            aux_sq: sums.aux_sq,
            g_f_aux: std::mem::take(&mut self.ws.g_f_aux),
        }
    }

    fn backward(
        &mut self,
        x: &Matrix,
        enc: EncoderWeights,
        w_dec: &[f32],
        sel: &Selected,
        rec: Reconstruction,
        grads: Grads,
    ) -> f64 {
        let _span = debug_span!("backward", dense = sel.dense).entered();
        if sel.dense {
            // The dense route's kernels accumulate.
            for g in [&mut *grads.w_enc, grads.b_enc, grads.w_dec, grads.b_dec] {
                g.fill(0.0);
            }
            reference::decode_weight_grads(&sel.latents, &self.ws.g_out, grads.w_dec, grads.b_dec);
            let x_enc = subtract_bias(x, enc.b_dec);
            let s = reference::encode_backward(
                &sel.latents,
                &rec.g_f,
                &x_enc,
                enc.w_enc,
                grads.w_enc,
                Some(grads.b_enc),
            );
            super::sub_assign(grads.b_dec, &s);
            self.ws.g_f = rec.g_f;
            return 0.0;
        }
        let aux = match &sel.aux {
            AuxLatents::Off => AuxBackward::None,
            AuxLatents::Dense => AuxBackward::Dense {
                coefficient: sel.aux_coefficient,
            },
            AuxLatents::Sparse(l) => AuxBackward::Sparse(l, &rec.g_f_aux),
        };
        let dense_sq = self.ws.backward(
            x,
            enc.b_dec,
            enc.w_enc,
            &sel.latents,
            &rec.g_f,
            w_dec,
            aux,
            grads,
        );
        self.ws.g_f = rec.g_f;
        self.ws.g_f_aux = rec.g_f_aux;
        rec.aux_sq + dense_sq
    }

    fn pre_activations(&mut self, x: &Matrix, w: &[f32], b: &[f32]) -> Matrix {
        super::affine(x, w, b)
    }

    fn decode(&mut self, l: &Latents, w: &[f32], b: &[f32]) -> Matrix {
        if self.is_dense(l) {
            reference::decode(l, w, b)
        } else {
            super::decode(l, w, b)
        }
    }

    fn decode_backward(
        &mut self,
        l: &Latents,
        g_out: &Matrix,
        w: &[f32],
        g_w: &mut [f32],
        g_b: &mut [f32],
    ) -> Vec<f32> {
        if self.is_dense(l) {
            reference::decode_backward(l, g_out, w, g_w, g_b)
        } else {
            super::decode_backward(l, g_out, w, g_w, g_b)
        }
    }

    fn latent_grads(&mut self, l: &Latents, g_out: &Matrix, w: &[f32]) -> Vec<f32> {
        if self.is_dense(l) {
            reference::latent_grads(l, g_out, w)
        } else {
            super::latent_grads(l, g_out, w)
        }
    }

    fn encode_backward(
        &mut self,
        pattern: &Latents,
        g_pre: &[f32],
        x: &Matrix,
        w: &[f32],
        g_w: &mut [f32],
        g_b: Option<&mut [f32]>,
    ) -> Vec<f32> {
        if self.is_dense(pattern) {
            reference::encode_backward(pattern, g_pre, x, w, g_w, g_b)
        } else {
            super::encode_backward(pattern, g_pre, x, w, g_w, g_b)
        }
    }
}
