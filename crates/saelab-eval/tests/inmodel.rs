//! In-model evaluation on the real SmolLM2 model (see `saelab_testkit::real_data`:
//! skipped with a message without it, failing under CI): identity and all-zero SAEs
//! give the CE loss score's end points, and every number matches an independent
//! computation from the model's logits.

use std::cell::RefCell;
use std::sync::OnceLock;

use saelab_core::{ArchConfig, Latents, Matrix, ParamSet, Sae, SaeConfig};
use saelab_eval::splice::{error_term_patch, ErrorTermAction};
use saelab_eval::{evaluate_in_model, InModelEvalSet, InModelMetrics, InModelOptions};
use saelab_lm::model::{Activation, ActivationMut, ForwardOptions, HookedModel, Logits};
use saelab_lm::text::{pack_all, Corpus, HeldOut, LoadOptions, PackConfig, Part};
use saelab_lm::tokenizer::Tokenizer;
use saelab_testkit::{lcg_uniform, real_data, serial};

const HOOK: &str = "blocks.15.hook_resid_post";
const CTX: usize = 24;

/// The model and a few held-out contexts, or `None` (with a message; a panic under CI)
/// without the real data.
fn setup() -> Option<(&'static HookedModel, &'static [Vec<u32>])> {
    static M: OnceLock<(HookedModel, Vec<Vec<u32>>)> = OnceLock::new();
    let data = real_data()?;
    let (m, c) = M.get_or_init(|| {
        let model = HookedModel::from_gguf(&data.model).expect("load SmolLM2");
        let tok = Tokenizer::from_gguf(&data.model).expect("tokenizer");
        let corpus =
            Corpus::load(data.collection("sotu"), &LoadOptions::default()).expect("corpus");
        let docs = corpus.part(Part::HeldOut, HeldOut::default());
        let bos = tok.bos_id().expect("bos");
        let mut ctxs: Vec<Vec<u32>> = pack_all(&tok, docs, PackConfig::new(CTX, bos))
            .expect("pack")
            .into_iter()
            .take(3)
            .map(|c| c.tokens)
            .collect();
        // One context with a document boundary (a BOS) in the middle.
        let a = tok.encode("The union is strong, and").unwrap();
        let b = tok
            .encode("Fellow citizens of the Senate and of the House")
            .unwrap();
        let mut c = vec![bos];
        c.extend(&a);
        c.push(bos);
        c.extend(&b);
        c.extend(&ctxs[0][1..]);
        c.truncate(CTX);
        ctxs.push(c);
        (model, ctxs)
    });
    Some((m, c))
}

fn bos(model: &HookedModel) -> u32 {
    model.bos_token_id().expect("SmolLM2 names a BOS")
}

/// The SAE of `cfg` with the given `W_enc`, `b_enc`, `W_dec` and `b_dec`.
fn sae(cfg: SaeConfig, [we, be, wd, bd]: [Vec<f32>; 4]) -> Sae {
    let (d, n) = (cfg.d_in, cfg.d_sae);
    let mut p = ParamSet::new();
    for (name, shape, data) in [
        ("W_enc", vec![d, n], we),
        ("b_enc", vec![n], be),
        ("W_dec", vec![n, d], wd),
        ("b_dec", vec![d], bd),
    ] {
        p.insert(name, saelab_core::Tensor::new(&shape, data).unwrap());
    }
    Sae::new(cfg, p).unwrap()
}

/// The configuration of a ReLU SAE from `d` to `n` latents.
fn relu(d: usize, n: usize) -> SaeConfig {
    SaeConfig::new(ArchConfig::default_for("relu", 0).unwrap(), d, n)
}

/// A ReLU SAE with `W_enc = [I, −I]`, `W_dec = [I; −I]`, zero biases: relu(x) − relu(−x)
/// reconstructs every x exactly.
fn identity_sae(d: usize) -> Sae {
    let (we, wd) = saelab_testkit::identity_relu_weights(d);
    sae(relu(d, 2 * d), [we, vec![0.0; 2 * d], wd, vec![0.0; d]])
}

fn zero_sae(d: usize, n: usize) -> Sae {
    let zeros = |len| vec![0.0; len];
    sae(relu(d, n), [zeros(d * n), zeros(n), zeros(n * d), zeros(d)])
}

/// A TopK SAE that reconstructs partially: decoder rows are the encoder's columns.
fn topk_sae(d: usize, n: usize, k: usize, acts: &[f32]) -> Sae {
    let (we, wd) = saelab_testkit::tied_random_weights(d, n, 7, 0.2);
    // b_dec: the mean activation, so that the reconstruction is not hopeless.
    let rows = acts.len() / d;
    let b_dec: Vec<f32> = (0..d)
        .map(|i| (0..rows).map(|r| acts[r * d + i]).sum::<f32>() / rows as f32)
        .collect();
    let mut cfg = SaeConfig::new(ArchConfig::default_for("topk", k).unwrap(), d, n);
    cfg.apply_b_dec_to_input = true;
    sae(cfg, [we, lcg_uniform(n, 11, 0.05), wd, b_dec])
}

fn flat(t: &Activation) -> Vec<f32> {
    t.as_slice().to_vec()
}

/// A replacement of one hook row, given its flat position.
type RowFn<'a> = dyn Fn(usize, &[f32]) -> Vec<f32> + 'a;

/// All-position logits `[B·T·V]` of a forward with an optional replacement of the
/// hook's rows (a function of the flat position and the row).
fn logits_with(model: &HookedModel, ctxs: &[Vec<u32>], replace: Option<&RowFn>) -> Vec<f32> {
    let mut opts = ForwardOptions::new().logits(Logits::All);
    if let Some(f) = replace {
        opts = opts.patch(HOOK, move |t: &mut ActivationMut<'_>| {
            for (r, row) in t.rows_mut().enumerate() {
                let new = f(r, row);
                row.copy_from_slice(&new);
            }
            Ok(())
        });
    }
    flat(model.forward(ctxs, &opts).unwrap().logits.as_ref().unwrap())
}

/// log-softmax of one row in f64 with the standard library's exp.
fn log_softmax64(row: &[f32]) -> Vec<f64> {
    let m = row.iter().fold(f64::NEG_INFINITY, |m, &v| m.max(v as f64));
    let lse = m + row.iter().map(|&v| (v as f64 - m).exp()).sum::<f64>().ln();
    row.iter().map(|&v| v as f64 - lse).collect()
}

fn close(name: &str, got: f64, want: f64, tol: f64) {
    assert!(
        (got - want).abs() <= tol * (1.0 + want.abs()),
        "{name}: got {got}, want {want}"
    );
}

#[test]
fn identity_sae_scores_one_and_zero_kl() {
    let _g = serial();
    let Some((model, ctxs)) = setup() else { return };
    let m = evaluate_in_model(
        model,
        &identity_sae(model.d_model()),
        HOOK,
        ctxs,
        &InModelOptions::default(),
    )
    .unwrap();
    assert!((m.ce_loss_score - 1.0).abs() < 1e-6, "{m:?}");
    assert!(m.kl_sae.abs() < 1e-6, "kl {}", m.kl_sae);
    assert!(m.delta_ce.abs() < 1e-6, "delta_ce {}", m.delta_ce);
    assert!(m.recon.fvu < 1e-10, "fvu {}", m.recon.fvu);
    // Zeroing block 15's residual destroys the prediction; the mean hurts less.
    assert!(m.ce_zero > m.ce_clean + 1.0, "{m:?}");
    assert!(m.ce_mean > m.ce_clean && m.ce_mean < m.ce_zero, "{m:?}");
}

#[test]
fn all_zero_sae_scores_zero() {
    let _g = serial();
    let Some((model, ctxs)) = setup() else { return };
    let d = model.d_model();
    let m = evaluate_in_model(
        model,
        &zero_sae(d, 64),
        HOOK,
        ctxs,
        &InModelOptions::default(),
    )
    .unwrap();
    assert!(m.ce_loss_score.abs() < 1e-6, "{m:?}");
    close("ce_sae = ce_zero", m.ce_sae, m.ce_zero, 1e-9);
    assert_eq!(m.recon.l0, 0.0);
    assert!(
        m.kl_sae > 1.0,
        "zeroing the residual must move the distribution"
    );
}

/// Every number of `evaluate_in_model` against a computation from the model's logits
/// with a hand-written SAE (dense TopK), mean and masks.
#[test]
fn metrics_match_an_independent_computation() {
    let _g = serial();
    let Some((model, ctxs)) = setup() else { return };
    let (d, n, k) = (model.d_model(), 256, 8);
    let bos = bos(model);
    let t_len = CTX;
    let tokens: Vec<u32> = ctxs.iter().flatten().copied().collect();
    let is_bos = |r: usize| tokens[r] == bos;

    // Clean activations at the hook.
    let cap = model
        .forward(ctxs, &ForwardOptions::new().capture(HOOK))
        .unwrap();
    let acts = flat(cap.capture(HOOK).unwrap());
    let rows = acts.len() / d;
    let non_bos: Vec<usize> = (0..rows).filter(|&r| !is_bos(r)).collect();
    assert!(non_bos.len() < rows, "the contexts must hold BOS positions");
    let mut mean = vec![0f64; d];
    for &r in &non_bos {
        for i in 0..d {
            mean[i] += acts[r * d + i] as f64 / non_bos.len() as f64;
        }
    }
    let mean32: Vec<f32> = mean.iter().map(|&v| v as f32).collect();
    let non_bos_acts: Vec<f32> = non_bos
        .iter()
        .flat_map(|&r| acts[r * d..(r + 1) * d].to_vec())
        .collect();
    let sae = topk_sae(d, n, k, &non_bos_acts);

    // The SAE by hand: pre = (x − b_dec)·W_enc + b_enc, keep the k largest, ReLU.
    let [we, be, wd, bd] = ["W_enc", "b_enc", "W_dec", "b_dec"].map(|w| &sae.params.get(w).data);
    let sae_by_hand = |x: &[f32]| -> (Vec<f32>, usize) {
        let mut pre: Vec<(f64, usize)> = (0..n)
            .map(|j| {
                let s: f64 = (0..d)
                    .map(|i| (x[i] - bd[i]) as f64 * we[i * n + j] as f64)
                    .sum();
                (s + be[j] as f64, j)
            })
            .collect();
        pre.sort_by(|a, b| b.0.total_cmp(&a.0));
        let mut y: Vec<f64> = bd.iter().map(|&v| v as f64).collect();
        let mut l0 = 0;
        for &(v, j) in &pre[..k] {
            if v > 0.0 {
                l0 += 1;
                for i in 0..d {
                    y[i] += v * wd[j * d + i] as f64;
                }
            }
        }
        (y.iter().map(|&v| v as f32).collect(), l0)
    };
    let keep = |r: usize, x: &[f32], f: &dyn Fn(&[f32]) -> Vec<f32>| {
        if is_bos(r) {
            x.to_vec()
        } else {
            f(x)
        }
    };
    let recon = |r: usize, x: &[f32]| keep(r, x, &|x| sae_by_hand(x).0);
    let zero = |r: usize, x: &[f32]| keep(r, x, &|_| vec![0f32; d]);
    let meanf = |r: usize, x: &[f32]| keep(r, x, &|_| mean32.clone());
    let clean = logits_with(model, ctxs, None);
    let with_sae = logits_with(model, ctxs, Some(&recon));
    let with_zero = logits_with(model, ctxs, Some(&zero));
    let with_mean = logits_with(model, ctxs, Some(&meanf));

    // CE and KL over positions t < T−1 whose token is not BOS.
    let v = model.vocab_size();
    let (mut ce, mut kl, mut count) = ([0f64; 4], 0f64, 0usize);
    for r in 0..rows {
        if r % t_len == t_len - 1 || is_bos(r) {
            continue;
        }
        count += 1;
        let target = tokens[r + 1] as usize;
        let lps: Vec<Vec<f64>> = [&clean, &with_sae, &with_zero, &with_mean]
            .iter()
            .map(|l| log_softmax64(&l[r * v..(r + 1) * v]))
            .collect();
        for (c, lp) in ce.iter_mut().zip(&lps) {
            *c -= lp[target];
        }
        kl += (0..v)
            .map(|i| lps[0][i].exp() * (lps[0][i] - lps[1][i]))
            .sum::<f64>();
    }
    let ce = ce.map(|c| c / count as f64);
    let kl = kl / count as f64;

    // Reconstruction by hand on the non-BOS rows.
    let (mut err, mut var, mut l0) = (0f64, 0f64, 0usize);
    let mut mu = vec![0f64; d];
    for &r in &non_bos {
        for i in 0..d {
            mu[i] += acts[r * d + i] as f64 / non_bos.len() as f64;
        }
    }
    for &r in &non_bos {
        let x = &acts[r * d..(r + 1) * d];
        let (y, l) = sae_by_hand(x);
        l0 += l;
        for i in 0..d {
            err += (x[i] as f64 - y[i] as f64).powi(2);
            var += (x[i] as f64 - mu[i]).powi(2);
        }
    }

    let opts = InModelOptions {
        batch_size: 3, // two batches: 3 + 1 contexts
        ..Default::default()
    };
    let m = evaluate_in_model(model, &sae, HOOK, ctxs, &opts).unwrap();
    eprintln!("{}", serde_json::to_string(&m).unwrap());
    assert_eq!(m.scored_tokens as usize, count);
    assert_eq!(m.recon.tokens as usize, non_bos.len());
    close("ce_clean", m.ce_clean, ce[0], 2e-5);
    close("ce_sae", m.ce_sae, ce[1], 2e-5);
    close("ce_zero", m.ce_zero, ce[2], 2e-5);
    close("ce_mean", m.ce_mean, ce[3], 2e-5);
    close("kl_sae", m.kl_sae, kl, 1e-3);
    let score = (ce[2] - ce[1]) / (ce[2] - ce[0]);
    close("ce_loss_score", m.ce_loss_score, score, 1e-4);
    close("delta_ce", m.delta_ce, ce[1] - ce[0], 1e-3);
    close("fvu", m.recon.fvu, err / var, 1e-4);
    close("l0", m.recon.l0, l0 as f64 / non_bos.len() as f64, 1e-9);
    // The test SAE must sit strictly between the end points to mean anything.
    assert!(m.ce_loss_score > 0.0 && m.ce_loss_score < 1.0, "{m:?}");
    assert!(kl > 1e-3);

    // The model's own loss agrees with the clean CE.
    let out = model
        .forward(ctxs, &ForwardOptions::new().loss(true))
        .unwrap();
    let loss = out.loss.as_ref().unwrap().data.clone();
    let (mut s, mut c) = (0f64, 0usize);
    for r in 0..rows {
        let (b, t) = (r / t_len, r % t_len);
        if t < t_len - 1 && !is_bos(r) {
            s += loss[b * (t_len - 1) + t] as f64;
            c += 1;
        }
    }
    close("ce_clean vs model loss", m.ce_clean, s / c as f64, 1e-5);

    // A cached evaluation set gives the same numbers.
    let set = InModelEvalSet::new(model, HOOK, ctxs.to_vec(), &opts).unwrap();
    assert!(set.caches_clean());
    let m2 = set.evaluate(model, &sae).unwrap();
    same_numbers(&m, &m2);
    let uncached = InModelEvalSet::new(
        model,
        HOOK,
        ctxs.to_vec(),
        &InModelOptions {
            max_cached_bytes: 0,
            ..opts.clone()
        },
    )
    .unwrap();
    assert!(!uncached.caches_clean());
    same_numbers(&m, &uncached.evaluate(model, &sae).unwrap());
}

fn same_numbers(a: &InModelMetrics, b: &InModelMetrics) {
    for (name, x, y) in [
        ("ce_clean", a.ce_clean, b.ce_clean),
        ("ce_sae", a.ce_sae, b.ce_sae),
        ("ce_zero", a.ce_zero, b.ce_zero),
        ("ce_mean", a.ce_mean, b.ce_mean),
        ("kl_sae", a.kl_sae, b.kl_sae),
        ("fvu", a.recon.fvu, b.recon.fvu),
    ] {
        close(name, y, x, 1e-9);
    }
}

/// Error-term mode leaves the forward exactly clean, exposes x = x̂ + error, and with
/// replaced latents keeps the error term.
#[test]
fn error_term_mode_preserves_the_output_and_exposes_the_error() {
    let _g = serial();
    let Some((model, ctxs)) = setup() else { return };
    let d = model.d_model();
    let bos = bos(model);
    let cap = model
        .forward(ctxs, &ForwardOptions::new().capture(HOOK))
        .unwrap();
    let acts = flat(cap.capture(HOOK).unwrap());
    let sae = topk_sae(d, 256, 8, &acts);
    let clean = logits_with(model, ctxs, None);
    let mask = saelab_eval::splice::splice_mask(ctxs, Some(bos), false);

    // Keep: bit-for-bit the clean logits; the callback saw the decomposition.
    type Seen = (Matrix, Matrix, Matrix, Vec<usize>);
    let seen: RefCell<Option<Seen>> = RefCell::new(None);
    let patch = error_term_patch(&sae, Some(&mask), |e| {
        *seen.borrow_mut() = Some((
            e.x.clone(),
            e.recon.clone(),
            e.error.clone(),
            e.positions.to_vec(),
        ));
        Ok(ErrorTermAction::Keep)
    });
    let out = model
        .forward(
            ctxs,
            &ForwardOptions::new().patch(HOOK, patch).logits(Logits::All),
        )
        .unwrap();
    assert_eq!(flat(out.logits.as_ref().unwrap()), clean);
    let (x, recon, error, positions) = seen.into_inner().expect("callback ran");
    assert_eq!(positions.len(), mask.iter().filter(|&&m| m).count());
    for (i, &r) in positions.iter().enumerate() {
        assert_eq!(x.row(i), &acts[r * d..(r + 1) * d]);
    }
    let (_, want_recon) = sae.forward(&x).unwrap();
    assert_eq!(recon, want_recon);
    for ((a, b), e) in x.data.iter().zip(&recon.data).zip(&error.data) {
        assert!((a - (b + e)).abs() <= 1e-5 * (1.0 + a.abs()));
    }
    assert!(
        error.data.iter().any(|&e| e.abs() > 1e-2),
        "the test SAE is imperfect"
    );

    // Replace with the SAE's own latents: decode + error = x within rounding.
    let patch = error_term_patch(&sae, Some(&mask), |e| {
        Ok(ErrorTermAction::Replace(e.latents.clone()))
    });
    let out = model
        .forward(
            ctxs,
            &ForwardOptions::new().patch(HOOK, patch).logits(Logits::All),
        )
        .unwrap();
    let same = flat(out.logits.as_ref().unwrap());
    let worst = same
        .iter()
        .zip(&clean)
        .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
    assert!(worst < 1e-2, "max logit change {worst}");

    // Replace with no active latent: the hook becomes b_dec + error = x − (x̂ − b_dec).
    let patch = error_term_patch(&sae, Some(&mask), |e| {
        let mut l = Latents::new(e.latents.n);
        for _ in 0..e.latents.rows() {
            l.push_row([]);
        }
        Ok(ErrorTermAction::Replace(l))
    });
    let got = model
        .forward(
            ctxs,
            &ForwardOptions::new().patch(HOOK, patch).capture(HOOK),
        )
        .unwrap();
    let got = flat(got.capture(HOOK).unwrap());
    let bd = &sae.params.get("b_dec").data;
    for r in 0..acts.len() / d {
        let xr = &acts[r * d..(r + 1) * d];
        let want: Vec<f32> = if mask[r] {
            let xm = Matrix::from_vec(1, d, xr.to_vec()).unwrap();
            let (_, y) = sae.forward(&xm).unwrap();
            (0..d).map(|i| bd[i] + (xr[i] - y.data[i])).collect()
        } else {
            xr.to_vec()
        };
        for (a, b) in got[r * d..(r + 1) * d].iter().zip(&want) {
            assert!(
                (a - b).abs() <= 1e-4 * (1.0 + b.abs()),
                "row {r}: {a} vs {b}"
            );
        }
    }
}

#[test]
fn bad_inputs_are_clear_errors() {
    let _g = serial();
    let Some((model, ctxs)) = setup() else { return };
    let sae = zero_sae(model.d_model(), 8);
    let opts = InModelOptions::default();
    let e = evaluate_in_model(model, &sae, "blocks.99.hook_resid_post", ctxs, &opts)
        .unwrap_err()
        .to_string();
    assert!(e.contains("out of range"), "{e}");
    let e = evaluate_in_model(model, &zero_sae(10, 8), HOOK, ctxs, &opts)
        .unwrap_err()
        .to_string();
    assert!(e.contains("d_in = 10"), "{e}");
    let ragged = vec![vec![1u32, 2, 3], vec![1u32, 2]];
    let e = evaluate_in_model(model, &sae, HOOK, &ragged, &opts)
        .unwrap_err()
        .to_string();
    assert!(e.contains("equal length"), "{e}");
    let only_bos = vec![vec![bos(model); 4]];
    let e = evaluate_in_model(model, &sae, HOOK, &only_bos, &opts)
        .unwrap_err()
        .to_string();
    assert!(e.contains("no position to score"), "{e}");
}
