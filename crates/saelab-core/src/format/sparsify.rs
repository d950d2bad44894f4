//! EleutherAI sparsify SAEs: `cfg.json` + `sae.safetensors`.
//!
//! Tensors: `encoder.weight [n, d_in]` (a `torch.nn.Linear`, so saelab's `W_enc` is its
//! transpose), `encoder.bias [n]`, `W_dec [n, d_out]`, `b_dec [d_out]`, and with
//! `skip_connection` a `W_skip [d_out, d_in]`. Config keys used: `d_in`, `num_latents`
//! (0 means `d_in · expansion_factor`), `k`, `activation` (`topk`, the default, or
//! `groupmax`), `transcode`, `skip_connection`.
//!
//! sparsify computes `pre = ReLU((x − b_dec·[not transcode]) · W_encᵀ + b)` and keeps the
//! top `k` (or the maximum of each of `k` groups); `decode` is `f · W_dec + b_dec`, and
//! the forward output adds `x · W_skipᵀ` on the raw input. That is exactly saelab's
//! [`crate::sae::Sae`] with `apply_b_dec_to_input = !transcode`.

use std::path::Path;

use serde_json::Value;

use super::tensors::read_safetensors;
use super::{
    in_file, read_cfg_json, uint_field, Loaded, SourceFormat, CFG_FILE, SPARSIFY_WEIGHTS_FILE,
};
use crate::config::{ArchConfig, InputNorm, SaeConfig, SaeMetadata};
use crate::error::{Error, Result};
use crate::sae::{check_config, Sae};
use crate::tensor::ParamSet;

/// Reads the sparsify directory `dir`.
pub(crate) fn read(dir: &Path) -> Result<Loaded> {
    let cfg_path = dir.join(CFG_FILE);
    let w_path = dir.join(SPARSIFY_WEIGHTS_FILE);
    let raw = read_cfg_json(&cfg_path)?;
    let root = raw.as_object().expect("read_cfg_json returns an object");
    let bad = |m: String| Error::bad_file(&cfg_path, m);
    let uint = |key: &str| uint_field(root, &cfg_path, key);
    let flag = |key: &str| root.get(key).and_then(Value::as_bool).unwrap_or(false);

    let d_in = uint("d_in")?.ok_or_else(|| bad("missing field d_in".into()))?;
    let k = uint("k")?.ok_or_else(|| bad("missing field k".into()))?;
    let activation = root
        .get("activation")
        .and_then(Value::as_str)
        .unwrap_or("topk")
        .to_string();
    if flag("signed") {
        return Err(bad("signed TopK activations are not supported".into()));
    }
    let transcode = flag("transcode");
    let skip = flag("skip_connection");

    let mut file = read_safetensors(&w_path)?;
    let tensors = file.infos();
    let enc = file.require(&["encoder.weight"])?;
    // n: from the config, else from the encoder's shape (the dimension that is not d_in).
    let n = match uint("num_latents")?.filter(|&n| n > 0) {
        Some(n) => n,
        None => match uint("expansion_factor")? {
            Some(e) if e > 0 => d_in * e,
            _ => return Err(bad("neither num_latents nor expansion_factor is set".into())),
        },
    };
    let mut notes = Vec::new();
    // nn.Linear stores [n, d_in]; saelab wants W_enc [d_in, n].
    let w_enc = if enc.shape == [n, d_in] {
        notes.push("encoder.weight [n, d_in] transposed to W_enc [d_in, n]".into());
        let t = enc;
        let mut out = vec![0.0f32; n * d_in];
        for j in 0..n {
            for i in 0..d_in {
                out[i * n + j] = t.data[j * d_in + i];
            }
        }
        crate::tensor::Tensor::new(&[d_in, n], out)?
    } else if enc.shape == [d_in, n] {
        notes.push("encoder.weight stored as [d_in, n], used as W_enc".into());
        crate::tensor::Tensor::new(&[d_in, n], enc.data)?
    } else {
        return Err(Error::bad_file(
            &w_path,
            format!(
                "encoder.weight has shape {:?}, expected [{n}, {d_in}] (num_latents, d_in)",
                enc.shape
            ),
        ));
    };
    let b_enc = file
        .require(&["encoder.bias"])?
        .vector(n, &w_path, "encoder.bias")?;
    let w_dec_raw = file.require(&["W_dec"])?;
    // d_out: the dimension of W_dec that is not n (d_in unless it is ambiguous).
    let d_out = match w_dec_raw.shape.as_slice() {
        [a, b] if *a == n => *b,
        [a, b] if *b == n => *a,
        s => {
            return Err(Error::bad_file(
                &w_path,
                format!("W_dec has shape {s:?}, expected [{n}, d_out]"),
            ))
        }
    };
    let w_dec = w_dec_raw.oriented(&[n, d_out], &w_path, "W_dec")?;
    let b_dec = file.require(&["b_dec"])?.vector(d_out, &w_path, "b_dec")?;

    let arch = match activation.as_str() {
        "topk" => ArchConfig::default_for("topk", k)?,
        "groupmax" => ArchConfig::Groupmax(crate::arch::GroupMaxConfig { k }),
        other => {
            return Err(bad(format!(
                "unknown activation {other:?} (known: topk, groupmax)"
            )))
        }
    };
    let cfg = SaeConfig {
        arch,
        d_in,
        d_sae: n,
        d_out,
        apply_b_dec_to_input: !transcode,
        input_norm: InputNorm::None,
        rescale_acts_by_decoder_norm: false,
        // sparsify names the hook point by the directory (`layers.6.mlp`), a module path
        // rather than a hook name; it is left to the caller.
        metadata: SaeMetadata::default(),
    };
    check_config(&cfg).map_err(|m| Error::bad_file(&cfg_path, m))?;

    let mut params = ParamSet::new();
    params.insert("W_enc", w_enc);
    params.insert("b_enc", b_enc);
    params.insert("W_dec", w_dec);
    params.insert("b_dec", b_dec);
    match (skip, file.take(&["W_skip"])) {
        (true, Some(t)) => params.insert("W_skip", t.oriented(&[d_out, d_in], &w_path, "W_skip")?),
        (true, None) => {
            return Err(Error::bad_file(
                &w_path,
                "missing tensor W_skip (cfg.json has skip_connection = true)",
            ))
        }
        (false, Some(_)) => {
            return Err(Error::bad_file(
                &w_path,
                "unexpected tensor W_skip (cfg.json has skip_connection = false)",
            ))
        }
        (false, None) => {}
    }
    file.expect_empty(&activation)?;
    let sae = Sae::new(cfg, params).map_err(|e| in_file(&w_path, e))?;
    Ok(Loaded {
        sae,
        format: SourceFormat::Sparsify,
        file_architecture: activation,
        tensors,
        raw_config: raw,
        notes,
    })
}
