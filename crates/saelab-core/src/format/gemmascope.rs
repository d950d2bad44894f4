//! Gemma Scope `params.npz`: `W_enc [d_in, n]`, `W_dec [n, d_out]`, `b_enc [n]`,
//! `b_dec [d_out]`, `threshold [n]` (lower-case `w_enc` / `w_dec` are accepted too).
//!
//! These are JumpReLU SAEs whose input is *not* shifted by `b_dec` — which is how
//! SAELens loads them (`apply_b_dec_to_input = false`). The widths come from the bias
//! lengths, and `W_enc` / `W_dec` are transposed if stored the other way round.

use std::path::Path;

use super::tensors::read_npz;
use super::{in_file, Loaded, SourceFormat};
use crate::config::{ArchConfig, InputNorm, SaeConfig, SaeMetadata};
use crate::error::{Error, Result};
use crate::sae::{check_config, Sae};
use crate::tensor::ParamSet;

/// Reads the Gemma Scope archive `path` (`params.npz`).
pub(crate) fn read(path: &Path) -> Result<Loaded> {
    let mut file = read_npz(path)?;
    let tensors = file.infos();
    let b_enc = file.require(&["b_enc"])?;
    let b_dec = file.require(&["b_dec"])?;
    let (n, d_out) = match (b_enc.shape.as_slice(), b_dec.shape.as_slice()) {
        ([n], [d]) => (*n, *d),
        _ => {
            return Err(Error::bad_file(
                path,
                format!(
                    "b_enc and b_dec must be vectors, found shapes {:?} and {:?}",
                    b_enc.shape, b_dec.shape
                ),
            ))
        }
    };
    let w_enc = file.require(&["W_enc", "w_enc"])?;
    let d_in = match w_enc.shape.as_slice() {
        [a, b] if *b == n => *a,
        [a, b] if *a == n => *b,
        s => {
            return Err(Error::bad_file(
                path,
                format!("W_enc has shape {s:?}, which has no dimension of b_enc's length {n}"),
            ))
        }
    };
    let mut notes = Vec::new();
    let mut params = ParamSet::new();
    let was = w_enc.shape.clone();
    params.insert("W_enc", w_enc.oriented(&[d_in, n], path, "W_enc")?);
    if was != [d_in, n] {
        notes.push(format!("W_enc stored as {was:?}, transposed"));
    }
    let w_dec = file.require(&["W_dec", "w_dec"])?;
    let was = w_dec.shape.clone();
    params.insert("W_dec", w_dec.oriented(&[n, d_out], path, "W_dec")?);
    if was != [n, d_out] {
        notes.push(format!("W_dec stored as {was:?}, transposed"));
    }
    params.insert("b_enc", b_enc.vector(n, path, "b_enc")?);
    params.insert("b_dec", b_dec.vector(d_out, path, "b_dec")?);
    params.insert(
        "threshold",
        file.require(&["threshold"])?.vector(n, path, "threshold")?,
    );
    if let Some(sf) = file.take(&["scaling_factor"]) {
        if sf.data.iter().all(|&v| v == 1.0) {
            notes.push("scaling_factor of ones dropped".into());
        } else {
            return Err(Error::bad_file(
                path,
                "scaling_factor other than 1 is not supported",
            ));
        }
    }
    file.expect_empty("jumprelu")?;

    let cfg = SaeConfig {
        arch: ArchConfig::default_for("jumprelu", 0)?,
        d_in,
        d_sae: n,
        d_out,
        apply_b_dec_to_input: false,
        input_norm: InputNorm::None,
        rescale_acts_by_decoder_norm: false,
        metadata: SaeMetadata::default(),
    };
    check_config(&cfg).map_err(|m| Error::bad_file(path, m))?;
    let sae = Sae::new(cfg, params).map_err(|e| in_file(path, e))?;
    Ok(Loaded {
        sae,
        format: SourceFormat::GemmaScope,
        file_architecture: "jumprelu".into(),
        tensors,
        raw_config: serde_json::Value::Null,
        notes,
    })
}
