//! Interop: forward-pass parity with the outputs of the real Python libraries (SAELens,
//! sparsify, Gemma Scope as SAELens loads it), write → read round trips, and clear
//! errors on bad SAE files.
//!
//! Fixtures are vendored in `tests/fixtures` (written by SAELens 6.54.12 and
//! eai-sparsify 1.3.3; see its README); `SAELAB_FIXTURES` points elsewhere.

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};

use saelab_core::config::{ArchConfig, InputNorm, SaeConfig, SaeMetadata};
use saelab_core::format::{self, SourceFormat};
use saelab_core::rng::Rng;
use saelab_core::sae::required_params;
use saelab_core::{Latents, Matrix, ParamSet, Sae, Tensor};
use safetensors::tensor::{Dtype, TensorView};

// ------------------------------------------------------------------------------------
// helpers

/// The vendored fixtures (`$SAELAB_FIXTURES` overrides); panics if they are missing.
fn fixtures() -> PathBuf {
    saelab_testkit::fixtures_dir()
}

enum Arr {
    F(Vec<usize>, Vec<f32>),
    I(Vec<usize>, Vec<i64>),
}

fn read_expected(path: &Path) -> HashMap<String, Arr> {
    let bytes = fs::read(path).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    st.iter()
        .map(|(name, v)| {
            let shape = v.shape().to_vec();
            let arr = match v.dtype() {
                Dtype::F32 => Arr::F(
                    shape,
                    v.data()
                        .chunks_exact(4)
                        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
                        .collect(),
                ),
                Dtype::I64 => Arr::I(
                    shape,
                    v.data()
                        .chunks_exact(8)
                        .map(|c| i64::from_le_bytes(c.try_into().unwrap()))
                        .collect(),
                ),
                d => panic!("unexpected dtype {d:?} in {}", path.display()),
            };
            (name.to_string(), arr)
        })
        .collect()
}

fn mat(e: &HashMap<String, Arr>, name: &str) -> Matrix {
    match &e[name] {
        Arr::F(s, d) => Matrix::from_vec(s[0], s[1], d.clone()).unwrap(),
        Arr::I(..) => panic!("{name} is not float"),
    }
}

fn ints(e: &HashMap<String, Arr>, name: &str) -> (Vec<usize>, Vec<i64>) {
    match &e[name] {
        Arr::I(s, d) => (s.clone(), d.clone()),
        Arr::F(..) => panic!("{name} is not integer"),
    }
}

/// Largest elementwise error relative to the tensor's scale (max |want|), and the
/// relative error of the whole tensor in L2. Both must be ≤ 1e-5.
fn assert_close(what: &str, got: &Matrix, want: &Matrix) -> f64 {
    assert_eq!(
        (got.rows, got.cols),
        (want.rows, want.cols),
        "{what}: shape"
    );
    let scale = want
        .data
        .iter()
        .fold(0f64, |m, v| m.max(v.abs() as f64))
        .max(1e-30);
    let mut max_err = 0f64;
    let (mut num, mut den) = (0f64, 0f64);
    for (a, b) in got.data.iter().zip(&want.data) {
        let e = (*a as f64 - *b as f64).abs();
        max_err = max_err.max(e);
        num += e * e;
        den += (*b as f64) * (*b as f64);
    }
    let rel_max = max_err / scale;
    let rel_l2 = (num / den.max(1e-60)).sqrt();
    assert!(
        rel_max <= 1e-5 && rel_l2 <= 1e-5,
        "{what}: relative error too large (max {rel_max:.3e}, L2 {rel_l2:.3e})"
    );
    rel_max.max(rel_l2)
}

/// Rows' sets of non-zero latents must agree, except where the expected value at the
/// boundary is tied with an excluded one.
fn assert_same_support(what: &str, got: &Matrix, want: &Matrix) {
    for r in 0..want.rows {
        let g: Vec<usize> = (0..got.cols).filter(|&j| got.row(r)[j] != 0.0).collect();
        let w: Vec<usize> = (0..want.cols).filter(|&j| want.row(r)[j] != 0.0).collect();
        assert_eq!(g, w, "{what}: active latents differ in row {r}");
    }
}

fn rand_tensor(rng: &mut Rng, shape: &[usize], scale: f32, offset: f32) -> Tensor {
    let n: usize = shape.iter().product();
    Tensor::new(
        shape,
        (0..n)
            .map(|_| offset + rng.normal() as f32 * scale)
            .collect(),
    )
    .unwrap()
}

fn random_sae(cfg: SaeConfig, skip: bool, seed: u64) -> Sae {
    let mut rng = Rng::new(seed);
    let mut p = ParamSet::new();
    for (name, shape) in required_params(&cfg) {
        let t = match name {
            "threshold" => {
                let mut t = rand_tensor(&mut rng, &shape, 0.1, 0.2);
                t.data.iter_mut().for_each(|v| *v = v.abs());
                t
            }
            "b_enc" | "b_gate" | "b_mag" | "r_mag" | "b_dec" => {
                rand_tensor(&mut rng, &shape, 0.1, 0.0)
            }
            _ => rand_tensor(&mut rng, &shape, 0.4, 0.0),
        };
        p.insert(name, t);
    }
    if skip {
        p.insert(
            "W_skip",
            rand_tensor(&mut rng, &[cfg.d_out, cfg.d_in], 0.2, 0.0),
        );
    }
    Sae::new(cfg, p).unwrap()
}

fn random_x(rows: usize, d: usize, seed: u64) -> Matrix {
    let mut rng = Rng::new(seed);
    Matrix::from_vec(
        rows,
        d,
        (0..rows * d).map(|_| rng.normal() as f32 + 0.3).collect(),
    )
    .unwrap()
}

fn one_line(e: &saelab_core::Error) -> String {
    let s = e.to_string();
    assert!(!s.contains('\n'), "error is not one line: {s:?}");
    s
}

/// Writes `tensors` (raw little-endian bytes of `dtype`) to `path` with the reference
/// `safetensors` crate, independently of saelab's writer.
fn write_safetensors_raw(path: &Path, dtype: Dtype, tensors: &[(String, Vec<usize>, Vec<u8>)]) {
    let views: Vec<(String, TensorView)> = tensors
        .iter()
        .map(|(n, s, b)| (n.clone(), TensorView::new(dtype, s.clone(), b).unwrap()))
        .collect();
    fs::write(path, safetensors::serialize(views, None).unwrap()).unwrap();
}

/// `p` as an f32 `.safetensors` file at `path`, through the reference crate.
fn write_f32_safetensors(path: &Path, p: &ParamSet) {
    let tensors: Vec<(String, Vec<usize>, Vec<u8>)> = p
        .iter()
        .map(|(n, t)| {
            let bytes = t.data.iter().flat_map(|v| v.to_le_bytes()).collect();
            (n.to_string(), t.shape.clone(), bytes)
        })
        .collect();
    write_safetensors_raw(path, Dtype::F32, &tensors);
}

fn copy_dir(from: &Path, to: &Path) {
    fs::create_dir_all(to).unwrap();
    for e in fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        fs::copy(e.path(), to.join(e.file_name())).unwrap();
    }
}

// ------------------------------------------------------------------------------------
// parity with the Python libraries

#[test]
fn saelens_fixtures_forward_parity() {
    let fx = fixtures();
    let index: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(fx.join("saelens/INDEX.json")).unwrap()).unwrap();
    let cases = index["cases"].as_object().unwrap();
    assert!(
        cases.len() >= 10,
        "expected every SAELens case, found {}",
        cases.len()
    );
    for (case, info) in cases {
        let dir = fx.join("saelens").join(case);
        let (sae, fmt) =
            format::load_sae_with_format(&dir).unwrap_or_else(|e| panic!("{case}: {e}"));
        assert_eq!(fmt, SourceFormat::SaeLens, "{case}");
        let e = read_expected(&dir.join("expected.safetensors"));
        let x = mat(&e, "x");
        let enc = sae.encode(&x).unwrap();
        let dense = enc.latents.to_dense();
        let want_f = mat(&e, "feature_acts");
        assert_same_support(case, &dense, &want_f);
        let mut worst = assert_close(&format!("{case} feature_acts"), &dense, &want_f);
        let l0 = enc.latents.nnz() as f64 / x.rows as f64;
        let want_l0 = info["nonzero_latents_per_row"].as_f64().unwrap();
        assert!((l0 - want_l0).abs() < 1e-9, "{case}: L0 {l0} vs {want_l0}");
        let recon = sae.decode(&enc).unwrap();
        worst = worst.max(assert_close(
            &format!("{case} recon"),
            &recon,
            &mat(&e, "recon"),
        ));
        let (_, out) = sae.forward(&x).unwrap();
        worst = worst.max(assert_close(
            &format!("{case} forward"),
            &out,
            &mat(&e, "forward"),
        ));
        eprintln!(
            "saelens/{case}: ok ({}, L0 {l0}, worst relative error {worst:.2e})",
            sae.cfg.arch.name()
        );
    }
}

/// sparsify's `top_acts` / `top_indices` as one sparse row set, zero activations dropped.
fn sparsify_latents(e: &HashMap<String, Arr>, n: usize) -> Latents {
    let (shape, idx) = ints(e, "top_indices");
    let acts = mat(e, "top_acts");
    let mut l = Latents::new(n);
    for r in 0..shape[0] {
        l.push_row(
            (0..shape[1])
                .map(|c| (idx[r * shape[1] + c] as u32, acts.row(r)[c]))
                .filter(|&(_, v)| v != 0.0),
        );
    }
    l
}

#[test]
fn sparsify_fixtures_forward_parity() {
    let fx = fixtures();
    for case in ["topk", "topk_skip", "groupmax"] {
        let dir = fx.join("sparsify").join(case);
        let (sae, fmt) =
            format::load_sae_with_format(&dir).unwrap_or_else(|e| panic!("{case}: {e}"));
        assert_eq!(fmt, SourceFormat::Sparsify);
        assert_eq!(sae.has_skip(), case == "topk_skip");
        let e = read_expected(&dir.join("expected.safetensors"));
        let x = mat(&e, "x");
        let want = sparsify_latents(&e, sae.cfg.d_sae);
        let enc = sae.encode(&x).unwrap();
        for r in 0..x.rows {
            let (gi, gv) = enc.latents.row(r);
            let (wi, wv) = want.row(r);
            let mut g: Vec<(u32, f32)> = gi.iter().copied().zip(gv.iter().copied()).collect();
            let mut w: Vec<(u32, f32)> = wi.iter().copied().zip(wv.iter().copied()).collect();
            g.sort_by_key(|p| p.0);
            w.sort_by_key(|p| p.0);
            let gs: Vec<u32> = g.iter().map(|p| p.0).collect();
            let ws: Vec<u32> = w.iter().map(|p| p.0).collect();
            assert_eq!(gs, ws, "{case}: top_indices differ in row {r}");
        }
        let mut worst = assert_close(
            &format!("{case} top_acts"),
            &enc.latents.to_dense(),
            &want.to_dense(),
        );
        // Decode sparsify's own latents, and ours.
        worst = worst.max(assert_close(
            &format!("{case} decode"),
            &sae.decode_latents(&want, None).unwrap(),
            &mat(&e, "decode"),
        ));
        worst = worst.max(assert_close(
            &format!("{case} decode(ours)"),
            &sae.decode(&enc).unwrap(),
            &mat(&e, "decode"),
        ));
        let (_, out) = sae.forward(&x).unwrap();
        worst = worst.max(assert_close(
            &format!("{case} sae_out"),
            &out,
            &mat(&e, "sae_out"),
        ));
        eprintln!("sparsify/{case}: ok (worst relative error {worst:.2e})");
    }
}

#[test]
fn gemmascope_fixture_forward_parity() {
    let fx = fixtures();
    let dir = fx.join("gemmascope/layer_0/width_64/average_l0_29");
    for path in [dir.clone(), dir.join("params.npz")] {
        let (sae, fmt) = format::load_sae_with_format(&path).unwrap();
        assert_eq!(fmt, SourceFormat::GemmaScope);
        assert!(!sae.cfg.apply_b_dec_to_input);
        assert_eq!(sae.cfg.arch.name(), "jumprelu");
        let e = read_expected(&dir.join("expected.safetensors"));
        let x = mat(&e, "x");
        let enc = sae.encode(&x).unwrap();
        let want = mat(&e, "feature_acts");
        assert_same_support("gemmascope", &enc.latents.to_dense(), &want);
        assert_close("gemmascope feature_acts", &enc.latents.to_dense(), &want);
        assert_close(
            "gemmascope recon",
            &sae.decode(&enc).unwrap(),
            &mat(&e, "recon"),
        );
        assert_close(
            "gemmascope forward",
            &sae.forward(&x).unwrap().1,
            &mat(&e, "forward"),
        );
    }
    // Same weights as the SAELens gemmascope-style case, so the two loads must agree.
    let a = format::load_sae(&dir).unwrap();
    let b = format::load_sae(&fx.join("saelens/jumprelu_gemmascope_style")).unwrap();
    assert_eq!(a.params.get("W_enc"), b.params.get("W_enc"));
    assert_eq!(a.params.get("threshold"), b.params.get("threshold"));
}

#[test]
fn legacy_saelens_configs_load_with_parity() {
    let fx = fixtures();
    let tmp = tempfile::tempdir().unwrap();
    // Real pre-6.0 layouts: flat provenance keys, activation_fn_str / kwargs, old
    // hook_point names, boolean normalize_activations, torch dtype strings.
    let cases = [
        (
            "standard",
            serde_json::json!({
                "d_in": 16, "d_sae": 64, "dtype": "torch.float32", "device": "cpu",
                "model_name": "gelu-2l", "hook_point": "blocks.0.hook_mlp_out",
                "hook_point_layer": 0, "hook_point_head_index": null,
                "activation_fn_str": "relu", "apply_b_dec_to_input": true,
                "finetuning_scaling_factor": false, "context_size": 128,
                "prepend_bos": true, "dataset_path": "NeelNanda/c4-tokenized-2b",
                "normalize_activations": false, "sae_lens_training_version": "3.5.0"
            }),
        ),
        (
            "topk",
            serde_json::json!({
                "architecture": "standard", "d_in": 16, "d_sae": 64, "dtype": "float32",
                "device": "cpu", "model_name": "gemma-2-2b",
                "hook_name": "blocks.12.hook_resid_post", "hook_layer": 12,
                "hook_head_index": null, "activation_fn_str": "topk",
                "activation_fn_kwargs": {"k": 4}, "apply_b_dec_to_input": true,
                "finetuning_scaling_factor": false, "sae_lens_training_version": null,
                "prepend_bos": true, "dataset_path": "monology/pile-uncopyrighted",
                "dataset_trust_remote_code": true, "context_size": 128,
                "normalize_activations": "none", "neuronpedia_id": "x/12-topk"
            }),
        ),
        (
            "jumprelu_gemmascope_style",
            serde_json::json!({
                "architecture": "jumprelu", "d_in": 16, "d_sae": 64,
                "activation_fn_str": "relu", "apply_b_dec_to_input": false,
                "finetuning_scaling_factor": false, "context_size": 1024,
                "model_name": "gemma-2-2b", "hook_name": "blocks.0.hook_resid_post",
                "hook_layer": 0, "hook_head_index": null, "prepend_bos": true,
                "dataset_path": "monology/pile-uncopyrighted",
                "normalize_activations": null, "model_from_pretrained_kwargs": {}
            }),
        ),
    ];
    for (case, cfg) in cases {
        let dir = tmp.path().join(case);
        copy_dir(&fx.join("saelens").join(case), &dir);
        fs::write(dir.join("cfg.json"), serde_json::to_vec(&cfg).unwrap()).unwrap();
        let (sae, fmt) = format::load_sae_with_format(&dir).unwrap();
        assert_eq!(fmt, SourceFormat::SaeLensLegacy, "{case}");
        let e = read_expected(&dir.join("expected.safetensors"));
        let x = mat(&e, "x");
        let (lat, out) = sae.forward(&x).unwrap();
        assert_close(case, &lat.to_dense(), &mat(&e, "feature_acts"));
        assert_close(case, &out, &mat(&e, "forward"));
        assert!(
            sae.cfg.metadata.hook_name.is_some(),
            "{case}: hook name kept"
        );
    }
    let sae = format::load_sae(&tmp.path().join("standard")).unwrap();
    assert_eq!(
        sae.cfg.metadata.hook_name.as_deref(),
        Some("blocks.0.hook_mlp_out")
    );
    assert_eq!(sae.cfg.metadata.context_size, Some(128));
    let topk = format::load_sae(&tmp.path().join("topk")).unwrap();
    assert!(matches!(
        topk.cfg.arch,
        ArchConfig::Topk(saelab_core::arch::TopKConfig { k: 4, .. })
    ));

    // A topk activation without k is refused, naming the file.
    let dir = tmp.path().join("topk");
    let mut cfg = cases_topk_without_k();
    cfg["d_in"] = 16.into();
    fs::write(dir.join("cfg.json"), serde_json::to_vec(&cfg).unwrap()).unwrap();
    let err = one_line(&format::load_sae(&dir).unwrap_err());
    assert!(err.contains("cfg.json") && err.contains("no k"), "{err}");
}

fn cases_topk_without_k() -> serde_json::Value {
    serde_json::json!({"d_sae": 64, "activation_fn_str": "topk", "activation_fn_kwargs": {}})
}

#[test]
fn sparsify_converts_to_native_and_keeps_outputs() {
    let fx = fixtures();
    let tmp = tempfile::tempdir().unwrap();
    for case in ["topk", "topk_skip"] {
        let src = fx.join("sparsify").join(case);
        let sae = format::load_sae(&src).unwrap();
        let out_dir = tmp.path().join(case);
        format::save_sae(&sae, &out_dir, None).unwrap();
        let back = format::load_sae(&out_dir).unwrap();
        let e = read_expected(&src.join("expected.safetensors"));
        let x = mat(&e, "x");
        assert_close(case, &back.forward(&x).unwrap().1, &mat(&e, "sae_out"));
        let d = format::describe(&out_dir).unwrap();
        assert_eq!(d.format, SourceFormat::SaeLens);
        assert_eq!(
            d.file_architecture,
            if case == "topk" {
                "topk"
            } else {
                "topk_skip_transcoder"
            }
        );
    }
}

#[test]
fn describe_reports_every_fixture() {
    let fx = fixtures();
    // Every fixture: what describe reports agrees with the SAE that loads.
    let index: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(fx.join("saelens/INDEX.json")).unwrap()).unwrap();
    let mut dirs: Vec<PathBuf> = index["cases"]
        .as_object()
        .unwrap()
        .keys()
        .map(|c| fx.join("saelens").join(c))
        .collect();
    dirs.extend(["topk", "topk_skip", "groupmax"].map(|c| fx.join("sparsify").join(c)));
    dirs.push(fx.join("gemmascope/layer_0/width_64/average_l0_29"));
    assert!(dirs.len() >= 14, "{} fixtures", dirs.len());
    for dir in &dirs {
        let d = format::describe(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
        let sae = format::load_sae(dir).unwrap();
        let c = &sae.cfg;
        assert_eq!(
            (&d.arch, d.d_in, d.d_sae, d.d_out, d.has_skip),
            (&c.arch, c.d_in, c.d_sae, c.d_out, sae.has_skip()),
            "{}",
            dir.display()
        );
        assert!(!d.tensors.is_empty(), "{}", dir.display());
        assert!(
            d.to_string().contains(&d.file_architecture),
            "{}",
            dir.display()
        );
    }
    let d = format::describe(&fx.join("sparsify/groupmax")).unwrap();
    assert_eq!((d.d_in, d.d_sae, d.d_out), (16, 64, 16));
    assert_eq!(
        d.arch,
        ArchConfig::Groupmax(saelab_core::arch::GroupMaxConfig { k: 4 })
    );
    assert!(d
        .tensors
        .iter()
        .any(|t| t.name == "encoder.weight" && t.shape == [64, 16]));
    let text = d.to_string();
    eprintln!("{text}");
    assert!(
        text.contains("groupmax") && text.contains("encoder.weight"),
        "{text}"
    );
    let d = format::describe(&fx.join("saelens/skip_transcoder/cfg.json")).unwrap();
    eprintln!("{d}");
    assert_eq!(d.file_architecture, "skip_transcoder");
    assert!(d.has_skip && d.d_out == 12);
    let d = format::describe(&fx.join("gemmascope/layer_0/width_64/average_l0_29")).unwrap();
    assert_eq!(d.format, SourceFormat::GemmaScope);
    assert!(d.tensors.iter().all(|t| t.dtype == "<f4"));
    serde_json::to_string(&d).unwrap();
}

// ------------------------------------------------------------------------------------
// write → read

fn roundtrip_cases() -> Vec<(&'static str, &'static str, SaeConfig, bool)> {
    let (d, n) = (10, 40);
    let base = |arch: ArchConfig| SaeConfig::new(arch, d, n);
    let mut v = Vec::new();
    v.push((
        "relu",
        "standard",
        base(ArchConfig::Relu(saelab_core::arch::ReluConfig {
            l1_coefficient: 2.5,
        })),
        false,
    ));
    let mut c = base(ArchConfig::default_for("topk", 5).unwrap());
    c.metadata = SaeMetadata {
        model_name: Some("SmolLM2-135M-Instruct".into()),
        hook_name: Some("blocks.15.hook_resid_post".into()),
        context_size: Some(256),
        prepend_bos: Some(true),
        dataset_path: Some("corpus/sotu".into()),
        trained_as: None,
        folded_input_scale: Some(0.125),
        training_tokens: Some(1_000_000),
    };
    v.push(("topk", "topk", c, false));
    let mut c = base(ArchConfig::default_for("topk", 3).unwrap());
    c.input_norm = InputNorm::LayerNorm;
    c.rescale_acts_by_decoder_norm = true;
    v.push(("topk_layernorm_rescale", "topk", c, false));
    v.push((
        "jumprelu",
        "jumprelu",
        base(ArchConfig::default_for("jumprelu", 0).unwrap()),
        false,
    ));
    let mut c = base(ArchConfig::default_for("jumprelu", 0).unwrap());
    c.apply_b_dec_to_input = false;
    v.push(("jumprelu_no_bdec", "jumprelu", c, false));
    v.push((
        "gated",
        "gated",
        base(ArchConfig::default_for("gated", 0).unwrap()),
        false,
    ));
    let mut c = base(ArchConfig::Relu(saelab_core::arch::ReluConfig {
        l1_coefficient: 1.0,
    }));
    c.d_out = 7;
    c.apply_b_dec_to_input = false;
    v.push(("transcoder", "transcoder", c.clone(), false));
    v.push(("skip_transcoder", "skip_transcoder", c, true));
    let mut c = base(ArchConfig::default_for("jumprelu", 0).unwrap());
    c.d_out = 6;
    c.apply_b_dec_to_input = false;
    v.push((
        "jumprelu_skip_transcoder",
        "jumprelu_skip_transcoder",
        c,
        true,
    ));
    let mut c = base(ArchConfig::default_for("topk", 4).unwrap());
    c.d_out = 6;
    c.apply_b_dec_to_input = false;
    v.push(("topk_transcoder", "topk_transcoder", c, false));
    v
}

#[test]
fn write_then_read_gives_identical_outputs_for_every_architecture() {
    let tmp = tempfile::tempdir().unwrap();
    for (i, (name, file_arch, cfg, skip)) in roundtrip_cases().into_iter().enumerate() {
        let sae = random_sae(cfg, skip, 100 + i as u64);
        let dir = tmp.path().join(name);
        let freq: Vec<f32> = (0..sae.cfg.d_sae).map(|j| j as f32 / 64.0).collect();
        format::save_sae(&sae, &dir, Some(&freq)).unwrap();
        let (back, fmt) = format::load_sae_with_format(&dir).unwrap();
        assert_eq!(fmt, SourceFormat::SaeLens, "{name}");
        assert_eq!(back.cfg, sae.cfg, "{name}: config");
        assert_eq!(back.params.len(), sae.params.len(), "{name}");
        for (pn, t) in sae.params.iter() {
            assert_eq!(back.params.get(pn), t, "{name}: {pn}");
        }
        let x = random_x(33, sae.cfg.d_in, 7);
        let (l1, y1) = sae.forward(&x).unwrap();
        let (l2, y2) = back.forward(&x).unwrap();
        assert_eq!(l1, l2, "{name}: latents");
        assert_eq!(y1, y2, "{name}: outputs");
        assert!(l1.nnz() > 0, "{name}: the test SAE should fire");
        let cfg: serde_json::Value =
            serde_json::from_str(&fs::read_to_string(dir.join("cfg.json")).unwrap()).unwrap();
        assert_eq!(cfg["architecture"], file_arch, "{name}");
        assert_eq!(cfg["metadata"]["sae_lens_version"], "6.0.0");
        let log = format::read_log_sparsity(&dir).unwrap().unwrap();
        assert_eq!(log.len(), sae.cfg.d_sae);
        assert!((log[0] - (-10.0)).abs() < 1e-4 && (log[32] - 0.5f32.log10()).abs() < 1e-5);
        let s = format::describe(&dir).unwrap().sparsity.unwrap();
        // fractions j/64: one never fires, j >= 7 fire on more than 10 % of tokens
        assert_eq!((s.n, s.dead, s.dense), (40, 1, 33), "{name}");
        eprintln!("round trip {name}: ok");
    }
}

#[test]
fn batchtopk_is_saved_as_jumprelu() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = SaeConfig::new(ArchConfig::default_for("batchtopk", 4).unwrap(), 8, 24);
    let sae = random_sae(cfg, false, 5);
    format::save_sae(&sae, tmp.path().join("b").as_path(), None).unwrap();
    let back = format::load_sae(&tmp.path().join("b")).unwrap();
    assert_eq!(back.cfg.arch.name(), "jumprelu");
    assert_eq!(back.cfg.metadata.trained_as.as_deref(), Some("batchtopk"));
    let mut as_jump = sae.clone();
    as_jump.cfg.arch = ArchConfig::default_for("jumprelu", 0).unwrap();
    let x = random_x(9, 8, 1);
    assert_eq!(back.forward(&x).unwrap(), as_jump.forward(&x).unwrap());
}

#[test]
fn half_precision_weights_are_read_as_f32() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = SaeConfig::new(ArchConfig::default_for("topk", 3).unwrap(), 6, 18);
    let sae = random_sae(cfg, false, 11);
    for (dtype, tag) in [(Dtype::BF16, "bf16"), (Dtype::F16, "f16")] {
        let dir = tmp.path().join(tag);
        format::save_sae(&sae, &dir, None).unwrap();
        // Rewrite the weights in 16-bit, and build the f32 SAE they should decode to.
        let mut rounded = sae.clone();
        let mut store: Vec<(String, Vec<usize>, Vec<u8>)> = Vec::new();
        for (name, t) in rounded.params.iter_mut() {
            let mut bytes = Vec::new();
            for v in t.data.iter_mut() {
                if dtype == Dtype::BF16 {
                    let h = half::bf16::from_f32(*v);
                    bytes.extend(h.to_le_bytes());
                    *v = h.to_f32();
                } else {
                    let h = half::f16::from_f32(*v);
                    bytes.extend(h.to_le_bytes());
                    *v = h.to_f32();
                }
            }
            store.push((name.to_string(), t.shape.clone(), bytes));
        }
        write_safetensors_raw(&dir.join("sae_weights.safetensors"), dtype, &store);
        let back = format::load_sae(&dir).unwrap();
        assert_eq!(back.params, rounded.params, "{tag}");
        let d = format::describe(&dir).unwrap();
        assert!(
            d.tensors.iter().all(|t| t.dtype == format!("{dtype:?}")),
            "{tag}"
        );
    }
}

#[test]
fn transposed_weights_are_oriented_by_shape() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = SaeConfig::new(
        ArchConfig::Relu(saelab_core::arch::ReluConfig {
            l1_coefficient: 1.0,
        }),
        6,
        15,
    );
    let sae = random_sae(cfg, false, 21);
    let dir = tmp.path().join("t");
    format::save_sae(&sae, &dir, None).unwrap();
    let mut p = sae.params.clone();
    let w = p.get("W_enc").clone();
    let wt = Matrix::from_vec(6, 15, w.data).unwrap().transpose();
    p.insert("W_enc", Tensor::new(&[15, 6], wt.data).unwrap());
    write_f32_safetensors(&dir.join("sae_weights.safetensors"), &p);
    let back = format::load_sae(&dir).unwrap();
    let x = random_x(5, 6, 2);
    assert_eq!(back.forward(&x).unwrap(), sae.forward(&x).unwrap());
    assert!(format::describe(&dir)
        .unwrap()
        .notes
        .iter()
        .any(|n| n.contains("transposed")));
}

// ------------------------------------------------------------------------------------
// bad files and directories

fn saved(tmp: &Path) -> (Sae, PathBuf) {
    let cfg = SaeConfig::new(ArchConfig::default_for("topk", 3).unwrap(), 8, 32);
    let sae = random_sae(cfg, false, 3);
    let dir = tmp.join("sae");
    format::save_sae(&sae, &dir, None).unwrap();
    (sae, dir)
}

#[test]
fn save_into_unwritable_directory_fails_cleanly() {
    let tmp = tempfile::tempdir().unwrap();
    let (sae, _) = saved(tmp.path());
    // A path below a regular file cannot be created, even by root.
    let blocker = tmp.path().join("not_a_dir");
    fs::write(&blocker, b"x").unwrap();
    let before: Vec<_> = fs::read_dir(tmp.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    let target = blocker.join("out");
    let err = format::save_sae(&sae, &target, None).unwrap_err();
    let msg = one_line(&err);
    assert!(msg.contains("not_a_dir"), "{msg}");
    let after: Vec<_> = fs::read_dir(tmp.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(before, after, "nothing new may appear");
    assert_eq!(fs::read(&blocker).unwrap(), b"x");

    // A failure while rendering (bad sparsity) leaves an existing SAE untouched.
    let dir = tmp.path().join("sae");
    let cfg_before = fs::read(dir.join("cfg.json")).unwrap();
    let err = format::save_sae(&sae, &dir, Some(&[2.0; 32])).unwrap_err();
    assert!(one_line(&err).contains("sparsity"));
    assert_eq!(fs::read(dir.join("cfg.json")).unwrap(), cfg_before);
    let names: Vec<_> = fs::read_dir(tmp.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names.len(), 2, "no temporary directory left: {names:?}");
}

#[test]
fn truncated_weights_are_a_clear_error() {
    let tmp = tempfile::tempdir().unwrap();
    let (_, dir) = saved(tmp.path());
    let w = dir.join("sae_weights.safetensors");
    let bytes = fs::read(&w).unwrap();
    for cut in [bytes.len() - 10, bytes.len() / 2, 40, 5, 0] {
        fs::write(&w, &bytes[..cut]).unwrap();
        let msg = one_line(&format::load_sae(&dir).unwrap_err());
        assert!(msg.contains("sae_weights.safetensors"), "{msg}");
        assert!(msg.contains("truncated"), "cut {cut}: {msg}");
    }
}

#[test]
fn corrupt_weights_are_a_clear_error() {
    let tmp = tempfile::tempdir().unwrap();
    let (_, dir) = saved(tmp.path());
    let w = dir.join("sae_weights.safetensors");
    let mut bytes = fs::read(&w).unwrap();
    for b in &mut bytes[8..20] {
        *b = b'#';
    }
    fs::write(&w, &bytes).unwrap();
    let msg = one_line(&format::load_sae(&dir).unwrap_err());
    assert!(
        msg.contains("sae_weights.safetensors") && msg.contains("not a valid safetensors"),
        "{msg}"
    );
    fs::write(&w, b"this is not a safetensors file at all, just some text").unwrap();
    let msg = one_line(&format::load_sae(&dir).unwrap_err());
    assert!(msg.contains("sae_weights.safetensors"), "{msg}");
    // NaN in the weights
    let (sae, dir) = saved(&tmp.path().join("nan"));
    let mut p = sae.params.clone();
    p.get_mut("W_dec").data[5] = f32::NAN;
    write_f32_safetensors(&dir.join("sae_weights.safetensors"), &p);
    let msg = one_line(&format::load_sae(&dir).unwrap_err());
    assert!(
        msg.contains("sae_weights.safetensors")
            && msg.contains("W_dec")
            && msg.contains("non-finite"),
        "{msg}"
    );
}

fn rewrite_weights(dir: &Path, f: impl FnOnce(&mut ParamSet)) {
    let mut p = format::load_sae(dir).unwrap().params;
    f(&mut p);
    write_f32_safetensors(&dir.join("sae_weights.safetensors"), &p);
}

#[test]
fn missing_tensor_is_a_clear_error() {
    let tmp = tempfile::tempdir().unwrap();
    let (_, dir) = saved(tmp.path());
    rewrite_weights(&dir, |p| {
        p.remove("b_enc");
    });
    let msg = one_line(&format::load_sae(&dir).unwrap_err());
    assert!(
        msg.contains("sae_weights.safetensors") && msg.contains("missing tensor b_enc"),
        "{msg}"
    );
}

#[test]
fn unexpected_tensor_is_a_clear_error() {
    let tmp = tempfile::tempdir().unwrap();
    let (_, dir) = saved(tmp.path());
    rewrite_weights(&dir, |p| p.insert("mystery", Tensor::zeros(&[3])));
    let msg = one_line(&format::load_sae(&dir).unwrap_err());
    assert!(
        msg.contains("sae_weights.safetensors") && msg.contains("unexpected tensor mystery"),
        "{msg}"
    );
}

#[test]
fn shape_mismatch_between_cfg_and_weights_is_a_clear_error() {
    let tmp = tempfile::tempdir().unwrap();
    let (_, dir) = saved(tmp.path());
    let cfg_path = dir.join("cfg.json");
    let mut cfg: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(&cfg_path).unwrap()).unwrap();
    cfg["d_sae"] = 48.into();
    fs::write(&cfg_path, serde_json::to_vec(&cfg).unwrap()).unwrap();
    let msg = one_line(&format::load_sae(&dir).unwrap_err());
    assert!(msg.contains("sae_weights.safetensors"), "{msg}");
    assert!(msg.contains("[8, 32]") && msg.contains("[8, 48]"), "{msg}");

    // A vector of the wrong length
    let (_, dir) = saved(&tmp.path().join("b"));
    rewrite_weights(&dir, |p| p.insert("b_dec", Tensor::zeros(&[9])));
    let msg = one_line(&format::load_sae(&dir).unwrap_err());
    assert!(
        msg.contains("sae_weights.safetensors") && msg.contains("b_dec"),
        "{msg}"
    );
}

#[test]
fn unknown_architecture_is_a_clear_error() {
    let tmp = tempfile::tempdir().unwrap();
    let (_, dir) = saved(tmp.path());
    let cfg_path = dir.join("cfg.json");
    let mut cfg: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(&cfg_path).unwrap()).unwrap();
    cfg["architecture"] = "matryoshka_hypercube".into();
    fs::write(&cfg_path, serde_json::to_vec(&cfg).unwrap()).unwrap();
    let msg = one_line(&format::load_sae(&dir).unwrap_err());
    assert!(
        msg.contains("cfg.json") && msg.contains("unknown architecture \"matryoshka_hypercube\""),
        "{msg}"
    );
    // and a config that is not JSON
    fs::write(&cfg_path, b"{ d_in: 8").unwrap();
    let msg = one_line(&format::load_sae(&dir).unwrap_err());
    assert!(
        msg.contains("cfg.json") && msg.contains("invalid JSON"),
        "{msg}"
    );
}

#[test]
fn missing_files_and_bad_npz_are_clear_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let msg = one_line(&format::load_sae(&tmp.path().join("nowhere")).unwrap_err());
    assert!(msg.contains("nowhere") && msg.contains("no such"), "{msg}");
    let msg = one_line(&format::load_sae(tmp.path()).unwrap_err());
    assert!(msg.contains("no SAE found"), "{msg}");
    let (_, dir) = saved(&tmp.path().join("x"));
    fs::remove_file(dir.join("cfg.json")).unwrap();
    let msg = one_line(&format::load_sae(&dir).unwrap_err());
    assert!(msg.contains("cfg.json") && msg.contains("missing"), "{msg}");

    let npz = tmp.path().join("params.npz");
    fs::write(&npz, b"PK\x03\x04 this zip stops here").unwrap();
    let msg = one_line(&format::load_sae(&npz).unwrap_err());
    assert!(msg.contains("params.npz"), "{msg}");
    let good =
        fs::read(fixtures().join("gemmascope/layer_0/width_64/average_l0_29/params.npz")).unwrap();
    fs::write(&npz, &good[..good.len() / 2]).unwrap();
    let msg = one_line(&format::load_sae(&npz).unwrap_err());
    assert!(msg.contains("params.npz"), "{msg}");
}

#[test]
fn groupmax_cannot_be_saved_in_saelens_format() {
    let cfg = SaeConfig::new(
        ArchConfig::Groupmax(saelab_core::arch::GroupMaxConfig { k: 4 }),
        6,
        16,
    );
    let sae = random_sae(cfg, false, 2);
    let tmp = tempfile::tempdir().unwrap();
    let msg = one_line(&format::save_sae(&sae, &tmp.path().join("g"), None).unwrap_err());
    assert!(msg.contains("groupmax"), "{msg}");
    assert!(!tmp.path().join("g").exists());
    let groupmax = ArchConfig::Groupmax(saelab_core::arch::GroupMaxConfig { k: 4 });
    let dims = saelab_core::Dims::square(6, 16);
    let err = groupmax
        .trainer(dims)
        .err()
        .expect("groupmax is inference-only");
    assert!(err.to_string().contains("not trained"), "{err}");
}
