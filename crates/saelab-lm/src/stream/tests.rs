//! Stream tests on a tiny random model (no data needed).

use std::sync::atomic::AtomicBool;

use saelab_core::fit::{fit, fit_streams, Run, Validation};
use saelab_core::store::ActivationStore;
use saelab_core::train::{TrainConfig, Trainer};
use saelab_core::{ArchConfig, SaeConfig};

use super::*;
use crate::contexts::{ContextOrder, ContextPlan};
use crate::test_support::tiny_setup;
use crate::text::{Document, HeldOut, PackConfig, Part};

const H1: &str = "blocks.0.hook_resid_post";
const H2: &str = "blocks.1.hook_attn_out";

struct Fixture {
    _dir: tempfile::TempDir,
    model: HookedModel,
    train: ContextPlan,
    held: ContextPlan,
}

fn fixture() -> Fixture {
    let (dir, model, tok, corpus) = tiny_setup();
    let plan = |part, max_docs: usize| {
        let mut docs: Vec<&Document> = corpus.part(part, HeldOut::new(5, 4).unwrap());
        docs.truncate(max_docs);
        ContextPlan::new(
            &tok,
            &docs,
            PackConfig::new(16, 0),
            ContextOrder::Shuffled { seed: 2 },
        )
        .unwrap()
    };
    Fixture {
        _dir: dir,
        model,
        // A small training part, so that a few batches run past its end.
        train: plan(Part::Train, 6),
        held: plan(Part::HeldOut, 8),
    }
}

fn opts(hooks: &[&str]) -> StreamOptions {
    StreamOptions {
        hooks: hooks.iter().map(|s| s.to_string()).collect(),
        batch_size: 50,
        batch_contexts: 3,
        window_contexts: 5,
        keep_bos: false,
        seed: 9,
    }
}

fn batches(src: &mut StreamSource<'_>, n: usize) -> Vec<Vec<Matrix>> {
    (0..n)
        .map(|_| {
            let mut out = vec![Matrix::default(); src.streams()];
            src.next_batches(&mut out).unwrap();
            out
        })
        .collect()
}

fn sorted_rows(m: &[f32], d: usize) -> Vec<Vec<u32>> {
    let mut rows: Vec<Vec<u32>> = m
        .chunks(d)
        .map(|r| r.iter().map(|x| x.to_bits()).collect())
        .collect();
    rows.sort();
    rows
}

#[test]
fn windows_are_served_as_permutations_of_their_rows() {
    let fx = fixture();
    let mut src = StreamSource::new(&fx.model, &fx.train, opts(&[H1]), None).unwrap();
    let got: Vec<f32> = batches(&mut src, 8)
        .into_iter()
        .flat_map(|b| b[0].data.clone())
        .collect();
    let d = fx.model.d_model();
    let mut start = 0;
    for w in 0..2usize {
        let ctxs: Vec<_> = (w * 5..w * 5 + 5)
            .map(|g| fx.train.first_epoch(g))
            .collect();
        let direct = run_contexts(&fx.model, &[H1.to_string()], &ctxs, false).unwrap();
        let n = direct.rows;
        let served = &got[start * d..(start + n) * d];
        assert_eq!(sorted_rows(served, d), sorted_rows(&direct.acts[0], d));
        assert_ne!(served, &direct.acts[0][..], "window {w} was not shuffled");
        start += n;
    }
    assert!(src.model_tokens() > 0);
}

#[test]
fn a_restored_stream_continues_exactly_and_sampling_does_not_move_it() {
    let fx = fixture();
    let mut a = StreamSource::new(&fx.model, &fx.train, opts(&[H1]), None).unwrap();
    let sample = a.sample(0, 20).unwrap();
    assert_eq!((sample.rows, sample.cols), (20, 32));
    let first = batches(&mut a, 3);
    let state = a.state();
    let rest = batches(&mut a, 20);
    // Past the end of the part: epochs wrap around.
    assert!(
        a.position().window * 5 > fx.train.len() as u64,
        "{:?} of {} contexts",
        a.position(),
        fx.train.len()
    );

    let mut fresh = StreamSource::new(&fx.model, &fx.train, opts(&[H1]), None).unwrap();
    assert_eq!(batches(&mut fresh, 3), first);
    let mut b = StreamSource::new(&fx.model, &fx.train, opts(&[H1]), Some(&state)).unwrap();
    assert_eq!(batches(&mut b, 20), rest);

    let mut other = opts(&[H1]);
    other.window_contexts = 6;
    let e = StreamSource::new(&fx.model, &fx.train, other, Some(&state))
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("contexts per window"), "{e}");
    let e = StreamSource::new(
        &fx.model,
        &fx.train,
        opts(&["blocks.7.hook_resid_post"]),
        None,
    )
    .err()
    .unwrap()
    .to_string();
    assert!(e.contains("out of range"), "{e}");
}

#[test]
fn each_stream_of_a_multi_hook_source_equals_the_single_hook_stream() {
    let fx = fixture();
    let mut both = StreamSource::new(&fx.model, &fx.train, opts(&[H1, H2]), None).unwrap();
    let mut one = StreamSource::new(&fx.model, &fx.train, opts(&[H2]), None).unwrap();
    let b = batches(&mut both, 5);
    let o = batches(&mut one, 5);
    for (x, y) in b.iter().zip(&o) {
        assert_eq!(x[1], y[0]);
        assert_ne!(x[0], x[1]);
    }
    let mut m = Matrix::default();
    assert!(both.next_batch(&mut m).is_err());
}

fn trainer(sample: &Matrix) -> Trainer {
    let cfg: TrainConfig = serde_json::from_value(serde_json::json!({
        "batch_size": 50, "total_tokens": 350, "lr": 0.01, "checkpoint_every": 0,
        "log_every": 1, "eval_every": 3, "dead_after_tokens": 100,
    }))
    .unwrap();
    let arch = ArchConfig::Topk(saelab_core::arch::TopKConfig {
        k: 2,
        aux_k: 8,
        aux_coefficient: 1.0 / 32.0,
    });
    Trainer::new(cfg, SaeConfig::new(arch, 32, 64), sample).unwrap()
}

#[test]
fn one_pass_over_two_hooks_trains_each_sae_as_a_single_run_would() {
    let fx = fixture();
    let tmp = tempfile::tempdir().unwrap();
    let never = AtomicBool::new(false);
    let hooks = [H1.to_string(), H2.to_string()];
    let vals = collect_rows(&fx.model, &fx.held, &hooks, false, 3, 60, |_| {}).unwrap();
    assert_eq!(vals[0].rows, 60);
    let stores: Vec<ActivationStore> = vals
        .iter()
        .map(|m| ActivationStore::from_matrix(m).unwrap())
        .collect();
    let vs: Vec<Validation> = stores
        .iter()
        .map(|s| Validation {
            store: s,
            rows: 0..s.rows(),
        })
        .collect();

    // The sweep: one SAE per hook, one forward per batch of contexts.
    let mut src = StreamSource::new(&fx.model, &fx.train, opts(&[H1, H2]), None).unwrap();
    let mut runs: Vec<Run> = (0..2)
        .map(|s| {
            let dir = tmp.path().join(format!("sweep{s}"));
            std::fs::create_dir_all(&dir).unwrap();
            Run {
                trainer: trainer(&src.sample(s, 100).unwrap()),
                dir,
            }
        })
        .collect();
    fit_streams(
        &mut src,
        &[Some(&vs[0]), Some(&vs[1])],
        &mut runs,
        &[0, 1],
        &never,
        |_| {},
    )
    .unwrap();

    // The second hook alone.
    let mut single = StreamSource::new(&fx.model, &fx.train, opts(&[H2]), None).unwrap();
    let dir = tmp.path().join("single");
    std::fs::create_dir_all(&dir).unwrap();
    let mut one = vec![Run {
        trainer: trainer(&single.sample(0, 100).unwrap()),
        dir: dir.clone(),
    }];
    fit(&mut single, Some(&vs[1]), &mut one, &never, |_| {}).unwrap();

    let w = |d: &std::path::Path| std::fs::read(d.join("sae/sae_weights.safetensors")).unwrap();
    assert!(
        w(&dir) == w(&tmp.path().join("sweep1")),
        "sweep run differs from single run"
    );
    assert!(w(&dir) != w(&tmp.path().join("sweep0")));
    let log = std::fs::read_to_string(dir.join("metrics.jsonl")).unwrap();
    assert!(log.contains("\"kind\":\"val\""), "{log}");
}
