//! SAELens directories: `cfg.json` + `sae_weights.safetensors` (+ `sparsity.safetensors`).
//!
//! Reading accepts SAELens ≥ 6.0 configs and the flat pre-6.0 ones. The architectures
//! SAELens names map to saelab's as follows (transcoders have `d_out` and no input
//! `b_dec`; `skip` ones a `W_skip [d_out, d_in]` added to the output):
//!
//! | SAELens `architecture`                         | saelab                      |
//! |------------------------------------------------|-----------------------------|
//! | `standard`, `transcoder`, `skip_transcoder`    | `relu`                      |
//! | `topk` (`k`, `rescale_acts_by_decoder_norm`)   | `topk`                      |
//! | `jumprelu`, `jumprelu_transcoder`, `jumprelu_skip_transcoder` | `jumprelu`   |
//! | `gated`                                        | `gated`                     |
//!
//! saelab writes the same names. Combinations SAELens has no class for (a TopK or Gated
//! transcoder, a skip matrix on a TopK SAE as sparsify makes) are written as
//! `topk_transcoder`, `topk_skip_transcoder`, `gated_transcoder`, ...: saelab reads them
//! back exactly; SAELens refuses them rather than running them wrongly.
//!
//! Pre-6.0 configs (no `sae_lens_version`, or one below 6): `activation_fn_str` (or
//! `activation_fn`) `topk` with `activation_fn_kwargs.k` means TopK whatever the
//! `architecture` says (as SAELens's own migration does); `hook_point*` keys are the old
//! names of `hook_name*`; `normalize_activations` may be a boolean; a `scaling_factor`
//! tensor of ones is dropped and any other value (with `finetuning_scaling_factor`) is
//! folded into `W_dec`; a `log_threshold` tensor becomes `threshold = exp(log_threshold)`.

use std::path::Path;

use serde_json::{json, Map, Value};

use super::tensors::{param_pairs, read_safetensors, safetensors_bytes, RawFile};
use super::{
    in_file, read_cfg_json, uint_field, Loaded, SourceFormat, CFG_FILE, SAELENS_WEIGHTS_FILE,
    SPARSITY_FILE,
};
use crate::config::{ArchConfig, InputNorm, SaeConfig, SaeMetadata};
use crate::error::{Error, Result};
use crate::sae::{check_config, Sae};
use crate::tensor::{ParamSet, Tensor};

/// The SAELens version saelab's files declare in `metadata.sae_lens_version`: the
/// config layout they follow (SAELens reads configs without it as pre-6.0).
pub const SAELENS_FORMAT_VERSION: &str = "6.0.0";

/// The `architecture` string saelab writes for `sae` (see the module table).
pub fn saelens_architecture_name(sae: &Sae) -> Result<String> {
    let file_arch = sae.cfg.arch.file_form();
    let form = file_arch.spec().saelens().ok_or_else(|| {
        Error::config(format!(
            "{} SAEs cannot be written in SAELens format (SAELens has no such architecture)",
            sae.cfg.arch.name()
        ))
    })?;
    let base = form.architecture;
    let skip = sae.has_skip();
    let transcoder = skip || sae.cfg.d_out != sae.cfg.d_in;
    Ok(match (base, transcoder, skip) {
        (_, false, _) => base.to_string(),
        ("standard", true, false) => "transcoder".into(),
        ("standard", true, true) => "skip_transcoder".into(),
        (b, true, false) => format!("{b}_transcoder"),
        (b, true, true) => format!("{b}_skip_transcoder"),
    })
}

/// The parts of a SAELens config saelab needs, normalised from v6 or pre-6.0 layouts.
struct Parsed {
    arch_name: String,
    base: String,
    skip: bool,
    d_in: usize,
    d_sae: usize,
    d_out: usize,
    k: Option<usize>,
    rescale: bool,
    apply_b_dec: bool,
    norm: InputNorm,
    fold_scaling_factor: bool,
    metadata: Map<String, Value>,
    legacy: bool,
    notes: Vec<String>,
}

fn major_version(v: &Value) -> Option<u64> {
    v.as_str()?
        .trim_start_matches('v')
        .split(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()
}

fn parse_cfg(path: &Path, root: &Map<String, Value>) -> Result<Parsed> {
    let bad = |m: String| Error::bad_file(path, m);
    let meta_in = root.get("metadata").and_then(Value::as_object);
    let version = root
        .get("sae_lens_version")
        .or_else(|| meta_in.and_then(|m| m.get("sae_lens_version")))
        .filter(|v| !v.is_null());
    let legacy = version.and_then(major_version).is_none_or(|v| v < 6);
    let mut notes = Vec::new();

    let usize_field = |key: &str| uint_field(root, path, key);
    let d_in = usize_field("d_in")?.ok_or_else(|| bad("missing field d_in".into()))?;
    let d_sae = usize_field("d_sae")?.ok_or_else(|| bad("missing field d_sae".into()))?;
    let bool_field = |key: &str, default: bool| -> Result<bool> {
        match root.get(key) {
            None | Some(Value::Null) => Ok(default),
            Some(Value::Bool(b)) => Ok(*b),
            Some(v) => Err(bad(format!("{key} must be true or false, found {v}"))),
        }
    };
    let apply_b_dec = bool_field("apply_b_dec_to_input", true)?;
    let rescale = bool_field("rescale_acts_by_decoder_norm", false)?;

    let mut arch_name = match root.get("architecture") {
        None | Some(Value::Null) if legacy => "standard".to_string(),
        None | Some(Value::Null) => return Err(bad("missing field architecture".into())),
        Some(Value::String(s)) => s.clone(),
        Some(v) => return Err(bad(format!("architecture must be a string, found {v}"))),
    };
    let mut k = usize_field("k")?;

    if legacy {
        let act = root
            .get("activation_fn_str")
            .or_else(|| root.get("activation_fn"))
            .and_then(Value::as_str)
            .unwrap_or("relu");
        let kw_k = root
            .get("activation_fn_kwargs")
            .and_then(|v| v.get("k"))
            .and_then(Value::as_u64)
            .map(|x| x as usize);
        match act {
            "topk" => {
                let kk = kw_k.or(k).ok_or_else(|| {
                    bad("activation_fn_str is topk but activation_fn_kwargs has no k".into())
                })?;
                if arch_name != "topk" {
                    notes.push(format!(
                        "pre-6.0 config: architecture {arch_name:?} with a topk activation read as topk"
                    ));
                }
                arch_name = "topk".into();
                k = Some(kk);
            }
            "relu" => {
                if arch_name == "topk" && k.is_none() {
                    k = kw_k;
                }
            }
            other => {
                return Err(bad(format!(
                    "activation function {other:?} is not supported (relu or topk)"
                )))
            }
        }
        if root
            .get("activation_fn_kwargs")
            .and_then(|v| v.get("signed"))
            .and_then(Value::as_bool)
            == Some(true)
        {
            return Err(bad("signed TopK activations are not supported".into()));
        }
    }

    let (base, transcoder, skip) = match arch_name.as_str() {
        "transcoder" => ("standard".to_string(), true, false),
        "skip_transcoder" => ("standard".to_string(), true, true),
        s => {
            if let Some(b) = s.strip_suffix("_skip_transcoder") {
                (b.to_string(), true, true)
            } else if let Some(b) = s.strip_suffix("_transcoder") {
                (b.to_string(), true, false)
            } else {
                (s.to_string(), false, false)
            }
        }
    };
    let Some(arch) = ArchConfig::from_saelens(&base, k) else {
        return Err(bad(format!(
            "unknown architecture {arch_name:?} (known: {}, transcoder, skip_transcoder, \
             and the *_transcoder and *_skip_transcoder forms)",
            ArchConfig::saelens_names().join(", ")
        )));
    };
    if arch.spec().saelens().and_then(|f| f.k).is_some() && k.is_none() {
        return Err(bad(format!("architecture {base} needs k")));
    }
    let d_out = if transcoder {
        usize_field("d_out")?.ok_or_else(|| bad(format!("{arch_name} needs d_out")))?
    } else {
        d_in
    };

    let norm = match root.get("normalize_activations") {
        None | Some(Value::Null) | Some(Value::Bool(false)) => InputNorm::None,
        Some(Value::Bool(true)) => {
            notes.push("normalize_activations=expected_average_only_in: identity at inference".into());
            InputNorm::None
        }
        Some(Value::String(s)) => match s.as_str() {
            "none" => InputNorm::None,
            "layer_norm" => InputNorm::LayerNorm,
            "expected_average_only_in" => {
                notes.push(
                    "normalize_activations=expected_average_only_in: identity at inference \
                     (SAELens folds the scale only for its named releases)"
                        .into(),
                );
                InputNorm::None
            }
            other => {
                return Err(bad(format!(
                    "normalize_activations {other:?} is not supported (none, layer_norm, expected_average_only_in)"
                )))
            }
        },
        Some(v) => return Err(bad(format!("normalize_activations must be a string, found {v}"))),
    };
    if let Some(r) = root.get("reshape_activations").and_then(Value::as_str) {
        if r != "none" {
            notes.push(format!(
                "reshape_activations={r}: inputs are taken as already flattened [tokens, d_in]"
            ));
        }
    }

    // Provenance: v6 keeps it under `metadata`; pre-6.0 at top level (old key names).
    let mut metadata = meta_in.cloned().unwrap_or_default();
    if legacy {
        for (old, new) in [
            ("hook_point", "hook_name"),
            ("hook_point_layer", "hook_layer"),
            ("hook_point_head_index", "hook_head_index"),
        ] {
            if let Some(v) = root.get(old) {
                metadata.entry(new.to_string()).or_insert_with(|| v.clone());
            }
        }
        for key in [
            "model_name",
            "hook_name",
            "hook_layer",
            "hook_head_index",
            "context_size",
            "prepend_bos",
            "dataset_path",
            "neuronpedia_id",
            "model_from_pretrained_kwargs",
            "sae_lens_training_version",
        ] {
            if let Some(v) = root.get(key).filter(|v| !v.is_null()) {
                metadata.entry(key.to_string()).or_insert_with(|| v.clone());
            }
        }
    }
    let fold_scaling_factor = bool_field("finetuning_scaling_factor", false)?;

    Ok(Parsed {
        arch_name,
        base,
        skip,
        d_in,
        d_sae,
        d_out,
        k,
        rescale,
        apply_b_dec,
        norm,
        fold_scaling_factor,
        metadata,
        legacy,
        notes,
    })
}

/// saelab's architecture for a parsed config: the hyperparameters saelab stored under
/// `metadata.saelab.arch` when they are of the same architecture, else defaults; SAELens's
/// own `k` wins over a stored one.
fn arch_config(p: &Parsed) -> ArchConfig {
    let read = ArchConfig::from_saelens(&p.base, p.k).expect("checked in parse_cfg");
    let stored = p
        .metadata
        .get("saelab")
        .and_then(|s| s.get("arch"))
        .and_then(|a| serde_json::from_value::<ArchConfig>(a.clone()).ok())
        .filter(|a| a.name() == read.name());
    match (stored, p.k) {
        (Some(a), Some(k)) => a.replace_k(k),
        (Some(a), None) => a,
        (None, _) => read,
    }
}

/// Reads the SAELens directory `dir`.
pub(crate) fn read(dir: &Path) -> Result<Loaded> {
    let cfg_path = dir.join(CFG_FILE);
    let w_path = dir.join(SAELENS_WEIGHTS_FILE);
    let raw = read_cfg_json(&cfg_path)?;
    let root = raw.as_object().expect("read_cfg_json returns an object");
    let mut p = parse_cfg(&cfg_path, root)?;
    let arch = arch_config(&p);
    let metadata: SaeMetadata = serde_json::from_value(Value::Object(p.metadata.clone()))
        .unwrap_or_else(|_| {
            // A field of an unexpected type (e.g. a string context_size): keep what parses.
            let mut m = SaeMetadata::default();
            let get = |k: &str| p.metadata.get(k);
            m.model_name = get("model_name")
                .and_then(Value::as_str)
                .map(str::to_string);
            m.hook_name = get("hook_name").and_then(Value::as_str).map(str::to_string);
            m
        });
    let cfg = SaeConfig {
        arch,
        d_in: p.d_in,
        d_sae: p.d_sae,
        d_out: p.d_out,
        apply_b_dec_to_input: p.apply_b_dec,
        input_norm: p.norm,
        rescale_acts_by_decoder_norm: p.rescale,
        metadata,
    };
    check_config(&cfg).map_err(|m| Error::bad_file(&cfg_path, m))?;

    let mut file = read_safetensors(&w_path)?;
    let tensors = file.infos();
    let (params, notes) = weights_to_params(&mut file, &cfg, &p)?;
    p.notes.extend(notes);
    let sae = Sae::new(cfg, params).map_err(|e| in_file(&w_path, e))?;
    Ok(Loaded {
        sae,
        format: if p.legacy {
            SourceFormat::SaeLensLegacy
        } else {
            SourceFormat::SaeLens
        },
        file_architecture: p.arch_name,
        tensors,
        raw_config: raw,
        notes: p.notes,
    })
}

/// Takes the SAELens tensors out of `file` in saelab's orientation, applying the
/// pre-6.0 conversions. Returns the parameters and notes on what was converted.
fn weights_to_params(
    file: &mut RawFile,
    cfg: &SaeConfig,
    p: &Parsed,
) -> Result<(ParamSet, Vec<String>)> {
    let path = file.path.clone();
    let mut notes = Vec::new();
    let mut params = ParamSet::new();
    for (name, shape) in crate::sae::required_params(cfg) {
        let t = match name {
            "threshold" => match file.take(&["threshold"]) {
                Some(t) => t,
                None => {
                    let mut t = file.require(&["threshold", "log_threshold"])?;
                    t.data.iter_mut().for_each(|v| *v = v.exp());
                    notes.push("threshold = exp(log_threshold)".into());
                    t
                }
            },
            _ => file.require(&[name])?,
        };
        let was = t.shape.clone();
        let t = t.oriented(&shape, &path, name)?;
        if was != shape {
            notes.push(format!("{name} stored as {was:?}, transposed to {shape:?}"));
        }
        params.insert(name, t);
    }
    if p.skip {
        let t = file.require(&["W_skip"])?;
        let want = [cfg.d_out, cfg.d_in];
        params.insert("W_skip", t.oriented(&want, &path, "W_skip")?);
    }
    if let Some(sf) = file.take(&["scaling_factor", "finetuning_scaling_factor"]) {
        if sf.data.iter().all(|&v| v == 1.0) {
            notes.push(format!("{} of ones dropped", sf.name));
        } else if p.fold_scaling_factor || sf.name == "finetuning_scaling_factor" {
            let s = sf.vector(cfg.d_sae, &path, "scaling_factor")?;
            let w = params.get_mut("W_dec");
            for (row, &f) in w.data.chunks_mut(cfg.d_out).zip(&s.data) {
                row.iter_mut().for_each(|v| *v *= f);
            }
            notes.push("finetuning scaling factor folded into W_dec".into());
        } else {
            return Err(Error::bad_file(
                &path,
                "scaling_factor is present but cfg.json has finetuning_scaling_factor = false",
            ));
        }
    }
    file.expect_empty(&p.arch_name)?;
    Ok((params, notes))
}

/// The files of a SAELens v6 directory for `sae`: `(file name, bytes)`.
pub(crate) fn render(sae: &Sae, sparsity: Option<&[f32]>) -> Result<Vec<(String, Vec<u8>)>> {
    sae.check()?;
    let arch_name = saelens_architecture_name(sae)?;
    let c = &sae.cfg;
    let mut metadata = c.metadata.clone();
    let file_arch = c.arch.file_form();
    if file_arch.name() != c.arch.name() {
        metadata
            .trained_as
            .get_or_insert_with(|| c.arch.name().into());
    }
    let mut meta = match serde_json::to_value(&metadata) {
        Ok(Value::Object(m)) => m,
        _ => Map::new(),
    };
    meta.insert("sae_lens_version".into(), json!(SAELENS_FORMAT_VERSION));
    meta.insert(
        "sae_lens_training_version".into(),
        json!(SAELENS_FORMAT_VERSION),
    );
    meta.insert(
        "saelab".into(),
        json!({ "version": env!("CARGO_PKG_VERSION"), "arch": file_arch }),
    );
    let mut cfg = Map::new();
    cfg.insert("d_in".into(), json!(c.d_in));
    cfg.insert("d_sae".into(), json!(c.d_sae));
    cfg.insert("dtype".into(), json!("float32"));
    cfg.insert("device".into(), json!("cpu"));
    cfg.insert("apply_b_dec_to_input".into(), json!(c.apply_b_dec_to_input));
    cfg.insert(
        "normalize_activations".into(),
        json!(match c.input_norm {
            InputNorm::None => "none",
            InputNorm::LayerNorm => "layer_norm",
        }),
    );
    cfg.insert("reshape_activations".into(), json!("none"));
    cfg.insert("metadata".into(), Value::Object(meta));
    if let Some(k) = file_arch.spec().saelens().and_then(|f| f.k) {
        cfg.insert("k".into(), json!(k));
        cfg.insert(
            "rescale_acts_by_decoder_norm".into(),
            json!(c.rescale_acts_by_decoder_norm),
        );
    }
    if sae.is_transcoder() {
        cfg.insert("d_out".into(), json!(c.d_out));
    }
    cfg.insert("architecture".into(), json!(arch_name));
    let cfg_bytes = serde_json::to_vec_pretty(&Value::Object(cfg))
        .map_err(|e| Error::config(format!("cannot serialise cfg.json: {e}")))?;

    let mut files = vec![
        (CFG_FILE.to_string(), cfg_bytes),
        (
            SAELENS_WEIGHTS_FILE.to_string(),
            safetensors_bytes(param_pairs(&sae.params))?,
        ),
    ];
    if let Some(s) = sparsity {
        if s.len() != c.d_sae {
            return Err(Error::config(format!(
                "sparsity has {} values for {} latents",
                s.len(),
                c.d_sae
            )));
        }
        if let Some(v) = s.iter().find(|v| !(0.0..=1.0).contains(*v)) {
            return Err(Error::config(format!(
                "sparsity must be firing fractions in [0, 1], found {v}"
            )));
        }
        let log = Tensor::new(
            &[s.len()],
            s.iter()
                .map(|&f| (f as f64 + 1e-10).log10() as f32)
                .collect(),
        )?;
        files.push((
            SPARSITY_FILE.to_string(),
            safetensors_bytes([("sparsity", &log)])?,
        ));
    }
    Ok(files)
}
