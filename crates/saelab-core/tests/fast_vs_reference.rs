//! Whole training runs through the fast kernels against the dense reference kernels,
//! and reproducibility of the fast path across thread counts.
//!
//! Sizes are deliberately awkward: n not a multiple of 8 or 32, a batch that is not a
//! multiple of the kernels' row blocks, k larger than some rows' positive count.

use saelab_core::synth::{generate, SynthConfig};
use saelab_core::train::{BDecInit, TrainConfig, Trainer};
use saelab_core::{ArchConfig, Matrix, ParamSet, SaeConfig};

const D: usize = 19;
const N: usize = 75;
const B: usize = 61;
const STEPS: u64 = 30;

fn data() -> Matrix {
    let cfg = SynthConfig {
        d: D,
        n_features: 60,
        avg_active: 5.0,
        seed: 3,
        ..SynthConfig::default()
    };
    generate(&cfg, B * STEPS as usize).unwrap().x
}

fn archs() -> Vec<(&'static str, ArchConfig)> {
    vec![
        (
            "topk",
            ArchConfig::Topk {
                k: 6,
                aux_k: 9,
                aux_coefficient: 1.0 / 32.0,
            },
        ),
        (
            "batchtopk",
            ArchConfig::Batchtopk {
                k: 2,
                aux_k: 9,
                aux_coefficient: 1.0 / 32.0,
                threshold_momentum: 0.05,
            },
        ),
        (
            "jumprelu",
            ArchConfig::Jumprelu {
                l0_coefficient: 0.05,
                bandwidth: 0.05,
                init_threshold: 0.3,
            },
        ),
        (
            "relu",
            ArchConfig::Relu {
                l1_coefficient: 2.0,
            },
        ),
    ]
}

fn trainer(arch: &ArchConfig, x: &Matrix, reference: bool) -> Trainer {
    let cfg = TrainConfig {
        batch_size: B,
        total_tokens: B as u64 * STEPS,
        lr: 2e-3,
        lr_warmup_steps: 2,
        sparsity_warmup_steps: 5,
        // Short, so that latents die during the run and AuxK has work to do.
        dead_after_tokens: B as u64,
        b_dec_init: BDecInit::Mean,
        seed: 11,
        reference_kernels: reference,
        ..TrainConfig::default()
    };
    Trainer::new(
        cfg,
        SaeConfig::new(arch.clone(), D, N),
        &x.slice_rows(0, 4 * B),
    )
    .unwrap()
}

/// Losses and latent counts of every step, and the final parameters.
fn run(arch: &ArchConfig, x: &Matrix, reference: bool) -> (Vec<(f64, f64, Option<f64>)>, ParamSet) {
    let mut t = trainer(arch, x, reference);
    let mut curve = Vec::new();
    for s in 0..STEPS as usize {
        let r = t.step(&x.slice_rows(s * B, (s + 1) * B)).unwrap();
        let aux = r.terms.iter().find(|(n, _)| *n == "aux").map(|t| t.1);
        curve.push((r.loss, r.l0, aux));
    }
    (curve, t.params().clone())
}

#[test]
fn fast_and_reference_paths_give_the_same_loss_curve() {
    let x = data();
    for (name, arch) in archs() {
        let (fast, pf) = run(&arch, &x, false);
        let (slow, pr) = run(&arch, &x, true);
        assert!(
            fast.last().unwrap().0 < fast[0].0,
            "{name}: loss did not fall ({} -> {})",
            fast[0].0,
            fast.last().unwrap().0
        );
        for (s, (a, b)) in fast.iter().zip(&slow).enumerate() {
            assert!(
                (a.0 - b.0).abs() <= 2e-3 * b.0.abs().max(1e-3),
                "{name} step {s}: loss {} (fast) vs {} (reference)",
                a.0,
                b.0
            );
            assert!(
                (a.1 - b.1).abs() <= 0.05 * b.1.max(1.0),
                "{name} step {s}: L0 {} vs {}",
                a.1,
                b.1
            );
            match (a.2, b.2) {
                (Some(u), Some(v)) => assert!(
                    (u - v).abs() <= 5e-3 * v.abs().max(1e-4),
                    "{name} step {s}: aux {u} vs {v}"
                ),
                (None, None) => {}
                other => panic!("{name} step {s}: AuxK on in only one path: {other:?}"),
            }
        }
        if name == "topk" || name == "batchtopk" {
            assert!(
                fast.iter().filter(|c| c.2.is_some_and(|v| v > 0.0)).count() >= 5,
                "{name}: AuxK never had dead latents to train"
            );
        }
        for ((pname, a), (_, b)) in pf.iter().zip(pr.iter()) {
            let scale = b.data.iter().fold(0.0f32, |m, v| m.max(v.abs())).max(1e-3);
            let worst = a
                .data
                .iter()
                .zip(&b.data)
                .fold(0.0f32, |m, (u, v)| m.max((u - v).abs()));
            assert!(
                worst <= 2e-2 * scale,
                "{name}: {pname} differs by {worst} (scale {scale})"
            );
        }
    }
}

#[test]
fn fast_path_is_identical_for_any_thread_count() {
    let x = data();
    for (name, arch) in archs() {
        let runs: Vec<ParamSet> = [1usize, 2, 3]
            .iter()
            .map(|&threads| {
                let pool = rayon::ThreadPoolBuilder::new()
                    .num_threads(threads)
                    .build()
                    .unwrap();
                pool.install(|| run(&arch, &x, false).1)
            })
            .collect();
        assert_eq!(runs[0], runs[1], "{name}: 1 vs 2 threads");
        assert_eq!(runs[0], runs[2], "{name}: 1 vs 3 threads");
    }
}
