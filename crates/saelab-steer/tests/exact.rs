//! Exactness of interventions on the real SmolLM2 model (skips without the data, fails
//! under CI): edits that change no latent leave the logits as they were; clamping with
//! the error kept is `x + (v − a_i(x))·d_i`; an intervention on the prompt matches one
//! on every position until the prompt ends; and a KV-cached generation under an
//! intervention picks the tokens a full forward under the same intervention picks.
//!
//! The SAE is a TopK SAE with tied random weights (the formulas hold for any SAE; a
//! random one needs no training), at a middle layer of the model.

use std::sync::{MutexGuard, OnceLock};

use saelab_core::{ArchConfig, Matrix, ParamSet, Sae, SaeConfig, Tensor};
use saelab_lm::generate::GenerateOptions;
use saelab_lm::model::{ForwardOptions, HookedModel, Logits};
use saelab_lm::tokenizer::Tokenizer;
use saelab_steer::{with_interventions, Edit, Intervention, Op, Positions, Prompts};
use saelab_testkit::{real_data, serial, tied_random_weights};

const HOOK: &str = "blocks.6.hook_resid_post";
const N_LATENTS: usize = 2304;

fn smollm() -> Option<(
    &'static HookedModel,
    &'static Tokenizer,
    MutexGuard<'static, ()>,
)> {
    static M: OnceLock<(HookedModel, Tokenizer)> = OnceLock::new();
    let path = real_data()?.model;
    let (m, t) = M.get_or_init(|| {
        (
            HookedModel::from_gguf(&path).expect("load SmolLM2 GGUF"),
            Tokenizer::from_gguf(&path).expect("SmolLM2 tokenizer"),
        )
    });
    Some((m, t, serial()))
}

fn random_sae(d: usize) -> Sae {
    let n = N_LATENTS;
    let (we, wd) = tied_random_weights(d, n, 42, 1.0);
    let cfg = SaeConfig::new(ArchConfig::default_for("topk", 32).unwrap(), d, n);
    let mut p = ParamSet::new();
    p.insert("W_enc", Tensor::new(&[d, n], we).unwrap());
    p.insert("b_enc", Tensor::new(&[n], vec![0.0; n]).unwrap());
    p.insert("W_dec", Tensor::new(&[n, d], wd).unwrap());
    p.insert("b_dec", Tensor::new(&[d], vec![0.0; d]).unwrap());
    Sae::new(cfg, p).unwrap()
}

fn prompt(model: &HookedModel, tok: &Tokenizer, text: &str) -> Vec<u32> {
    let mut p = vec![model.bos_token_id().unwrap()];
    p.extend(tok.encode(text).unwrap());
    p
}

/// The hook activation `[T, d]` of `tokens` and the SAE's dense latents `[T, n]`.
fn hook_and_latents(model: &HookedModel, sae: &Sae, tokens: &[u32]) -> (Matrix, Matrix) {
    let out = model
        .forward(&[tokens], &ForwardOptions::new().capture(HOOK))
        .unwrap();
    let x = out.capture(HOOK).unwrap().to_activation().into_matrix();
    let a = sae.encode_dense(&x).unwrap();
    (x, a)
}

/// All logits `[T, V]` of `tokens` under the interventions of `set`.
fn logits_with(
    model: &HookedModel,
    tokens: &[u32],
    prompts: &Prompts,
    set: &[Intervention<'_>],
) -> Vec<f32> {
    let opts = with_interventions(ForwardOptions::new().logits(Logits::All), set, prompts);
    let mut out = model.forward(&[tokens], &opts).unwrap();
    out.take_logits().unwrap().into_vec()
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

fn one(sae: &Sae, latent: usize, op: Op, positions: Positions) -> Intervention<'_> {
    Intervention::latents(sae, HOOK, &[Edit { latent, op }], positions).unwrap()
}

#[test]
fn edits_that_change_no_latent_leave_the_logits_unchanged() {
    let Some((model, tok, _serial)) = smollm() else {
        return;
    };
    let sae = random_sae(model.d_model());
    let tokens = prompt(
        model,
        tok,
        "The ship sailed into the harbour at dawn, and the crew",
    );
    let t = tokens.len();
    let (_, a) = hook_and_latents(model, &sae, &tokens);
    let prompts = Prompts::new(&[tokens.as_slice()], model.bos_token_id());
    let clean = logits_with(model, &tokens, &prompts, &[]);

    // The most active latent at the last position, clamped to its own value there.
    let last = a.row(t - 1);
    let i = (0..N_LATENTS)
        .max_by(|&x, &y| last[x].total_cmp(&last[y]))
        .unwrap();
    let v = last[i];
    assert!(v > 0.0);
    let clamp_same = one(&sae, i, Op::Clamp(v), Positions::List(vec![t - 1]));
    // A latent active nowhere on the prompt (BOS excluded), ablated everywhere.
    let inactive = (0..N_LATENTS)
        .find(|&j| (1..t).all(|r| a.row(r)[j] == 0.0))
        .expect("a latent inactive on the prompt");
    let cases = [
        ("clamp to the current value", clamp_same),
        ("add 0", one(&sae, i, Op::Add(0.0), Positions::All)),
        (
            "ablate an inactive latent",
            one(&sae, inactive, Op::Ablate, Positions::All),
        ),
        ("scale by 1", one(&sae, i, Op::Scale(1.0), Positions::All)),
    ];
    for (what, iv) in cases {
        let got = logits_with(model, &tokens, &prompts, std::slice::from_ref(&iv));
        let diff = max_abs_diff(&got, &clean);
        assert!(diff <= 1e-6, "{what}: logits moved by {diff}");
    }
    // The same clamp at another value moves the last position's logits and nothing
    // before it (the model is causal).
    let moved = one(&sae, i, Op::Clamp(v + 20.0), Positions::List(vec![t - 1]));
    let got = logits_with(model, &tokens, &prompts, &[moved]);
    let vsz = model.vocab_size();
    assert_eq!(&got[..(t - 1) * vsz], &clean[..(t - 1) * vsz]);
    assert!(max_abs_diff(&got[(t - 1) * vsz..], &clean[(t - 1) * vsz..]) > 1e-2);
}

#[test]
fn clamping_with_the_error_kept_is_x_plus_the_change_along_the_decoder_row() {
    let Some((model, tok, _serial)) = smollm() else {
        return;
    };
    let sae = random_sae(model.d_model());
    let tokens = prompt(
        model,
        tok,
        "Call me Ishmael. Some years ago, never mind how long",
    );
    let t = tokens.len();
    let d = model.d_model();
    let (x, a) = hook_and_latents(model, &sae, &tokens);
    let prompts = Prompts::new(&[tokens.as_slice()], model.bos_token_id());
    let w_dec = &sae.params.get("W_dec").data;
    // One latent active at position 3, another inactive there; both clamped to 7.5,
    // and a second SAE-free vector added at the same hook after them.
    let r3 = a.row(3);
    let on = (0..N_LATENTS).find(|&j| r3[j] > 0.0).unwrap();
    let off = (0..N_LATENTS).find(|&j| r3[j] == 0.0).unwrap();
    let v = 7.5f32;
    let iv = Intervention::latents(
        &sae,
        HOOK,
        &[
            Edit {
                latent: on,
                op: Op::Clamp(v),
            },
            Edit {
                latent: off,
                op: Op::Clamp(v),
            },
        ],
        Positions::All,
    )
    .unwrap();
    let set = [iv];
    let opts = with_interventions(ForwardOptions::new().capture(HOOK), &set, &prompts);
    let out = model.forward(&[tokens.as_slice()], &opts).unwrap();
    let xp = out.capture(HOOK).unwrap();
    let mut worst = 0f32;
    for r in 0..t {
        for c in 0..d {
            let want = if r == 0 {
                x.row(0)[c] // BOS is left alone
            } else {
                x.row(r)[c]
                    + (v - a.row(r)[on]) * w_dec[on * d + c]
                    + (v - a.row(r)[off]) * w_dec[off * d + c]
            };
            worst = worst.max((xp.at(0, r)[c] - want).abs());
        }
    }
    assert!(
        worst <= 1e-5,
        "clamp with error differs from the formula by {worst}"
    );
    assert!(
        (1..t).any(|r| a.row(r)[on] != v),
        "the test must move the latent somewhere"
    );
}

#[test]
fn a_prompt_intervention_matches_all_until_the_prompt_ends() {
    let Some((model, tok, _serial)) = smollm() else {
        return;
    };
    let sae = random_sae(model.d_model());
    let p = prompt(model, tok, "The weather today is");
    let cont = tok
        .encode(" cold and wet, with rain falling on the old town")
        .unwrap();
    let full: Vec<u32> = p.iter().chain(&cont).copied().collect();
    let prompts = Prompts::new(&[p.as_slice()], model.bos_token_id());
    let vsz = model.vocab_size();
    let steer = |pos: Positions| one(&sae, 17, Op::Add(40.0), pos);
    let on_prompt = logits_with(model, &full, &prompts, &[steer(Positions::Prompt)]);
    let on_all = logits_with(model, &full, &prompts, &[steer(Positions::All)]);
    let clean = logits_with(model, &full, &prompts, &[]);
    let n_p = p.len();
    assert_eq!(&on_prompt[..n_p * vsz], &on_all[..n_p * vsz]);
    assert!(max_abs_diff(&on_prompt[..n_p * vsz], &clean[..n_p * vsz]) > 1e-2);
    for r in n_p..full.len() {
        let row = |l: &[f32]| l[r * vsz..(r + 1) * vsz].to_vec();
        assert!(
            max_abs_diff(&row(&on_prompt), &row(&on_all)) > 1e-3,
            "position {r} after the prompt"
        );
    }

    // In a generation: the first new token (from the prompt's last position) is the
    // same for both, and the runs share the seed.
    let gen = GenerateOptions {
        max_new_tokens: 12,
        temperature: 0.7,
        seed: 16,
        ..GenerateOptions::default()
    };
    let run = |pos: Positions| {
        let set = [steer(pos)];
        let opts = with_interventions(ForwardOptions::new(), &set, &prompts);
        model
            .generate(&[p.as_slice()], &gen, &opts)
            .unwrap()
            .remove(0)
            .tokens
    };
    let (a, b) = (run(Positions::Prompt), run(Positions::All));
    assert_eq!(a[0], b[0]);
    assert_eq!(a, run(Positions::Prompt), "same seed, same tokens");
}

#[test]
fn cached_generation_under_an_intervention_equals_the_full_forward() {
    let Some((model, tok, _serial)) = smollm() else {
        return;
    };
    let sae = random_sae(model.d_model());
    let prompts_tok = [
        prompt(model, tok, "Once upon a time"),
        prompt(model, tok, "The President said that the nation"),
    ];
    let prompts = Prompts::new(&prompts_tok, model.bos_token_id());
    let (_, a) = hook_and_latents(model, &sae, &prompts_tok[0]);
    let r = a.row(1);
    let i = (0..N_LATENTS)
        .max_by(|&x, &y| r[x].total_cmp(&r[y]))
        .unwrap();
    let set = [Intervention::latents(
        &sae,
        HOOK,
        &[
            Edit {
                latent: i,
                op: Op::Clamp(3.0 * r[i]),
            },
            Edit {
                latent: 5,
                op: Op::Add(25.0),
            },
        ],
        Positions::All,
    )
    .unwrap()];
    let gen = GenerateOptions {
        max_new_tokens: 24,
        stop_tokens: Some(vec![]),
        ..GenerateOptions::default()
    };
    let opts = with_interventions(ForwardOptions::new(), &set, &prompts);
    let outs = model.generate(&prompts_tok, &gen, &opts).unwrap();
    let vsz = model.vocab_size();
    for (s, (p, g)) in prompts_tok.iter().zip(&outs).enumerate() {
        let full: Vec<u32> = p.iter().chain(&g.tokens).copied().collect();
        let one_stream = Prompts::new(&[p.as_slice()], model.bos_token_id());
        let logits = logits_with(model, &full, &one_stream, &set);
        for (j, &tok_j) in g.tokens.iter().enumerate() {
            let row = &logits[(p.len() - 1 + j) * vsz..(p.len() + j) * vsz];
            let best = (0..vsz).fold(0, |b, x| if row[x] > row[b] { x } else { b });
            assert_eq!(best, tok_j as usize, "stream {s}, new token {j}");
        }
    }
}
