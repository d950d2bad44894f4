//! SAE files: SAELens (v6 and pre-6.0), EleutherAI sparsify and Gemma Scope.
//!
//! - [`load_sae`] reads any supported SAE, detecting the format from the files present:
//!   `cfg.json` + `sae_weights.safetensors` (SAELens), `cfg.json` + `sae.safetensors`
//!   (sparsify), `params.npz` (Gemma Scope). Tensors stored as F32, F16, BF16 or F64
//!   become f32; the orientation of 2-D tensors is worked out from their shapes (a
//!   stored transpose of a non-square matrix is accepted), and every result is checked
//!   by [`Sae::new`] (shapes, finiteness). The fixtures test then checks forward passes.
//! - [`save_sae`] writes saelab's native format, a SAELens v6 directory (`cfg.json`,
//!   `sae_weights.safetensors`, optional `sparsity.safetensors`), atomically.
//! - [`describe`] reports what `saelab inspect` prints.
//!
//! Every error names the file concerned and fits on one line.

mod gemmascope;
mod saelens;
mod sparsify;
mod tensors;

use std::fmt;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::config::{InputNorm, SaeMetadata};
use crate::error::{Error, Result};
use crate::sae::Sae;

pub use saelens::{saelens_architecture_name, SAELENS_FORMAT_VERSION};

/// File name of a SAELens config.
pub const CFG_FILE: &str = "cfg.json";
/// File name of SAELens weights.
pub const SAELENS_WEIGHTS_FILE: &str = "sae_weights.safetensors";
/// File name of SAELens per-latent log10 firing frequencies.
pub const SPARSITY_FILE: &str = "sparsity.safetensors";
/// File name of sparsify weights.
pub const SPARSIFY_WEIGHTS_FILE: &str = "sae.safetensors";
/// File name of Gemma Scope weights.
pub const GEMMASCOPE_FILE: &str = "params.npz";

/// The on-disk format an SAE was read from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SourceFormat {
    /// SAELens ≥ 6.0 (`metadata.sae_lens_version` ≥ 6), including saelab's own files.
    SaeLens,
    /// SAELens before 6.0 (no version, or an older one): flat config with
    /// `activation_fn_str` / `activation_fn_kwargs`, `hook_name` at top level.
    SaeLensLegacy,
    /// EleutherAI sparsify (`cfg.json` + `sae.safetensors`).
    Sparsify,
    /// Gemma Scope (`params.npz`).
    GemmaScope,
}

impl fmt::Display for SourceFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SourceFormat::SaeLens => "SAELens v6",
            SourceFormat::SaeLensLegacy => "SAELens (pre-6.0 config)",
            SourceFormat::Sparsify => "EleutherAI sparsify",
            SourceFormat::GemmaScope => "Gemma Scope params.npz",
        })
    }
}

/// Name, shape and stored dtype of one tensor in an SAE file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct TensorInfo {
    /// Name in the file (e.g. `encoder.weight` for sparsify).
    pub name: String,
    /// Shape in the file.
    pub shape: Vec<usize>,
    /// Dtype in the file (`F32`, `BF16`, `<f4`, ...).
    pub dtype: String,
}

/// What `saelab inspect` shows about an SAE: a loaded SAE plus facts about its files.
#[derive(Clone, Debug, Serialize)]
pub struct SaeDescription {
    /// The path given.
    pub path: PathBuf,
    /// The format detected.
    pub format: SourceFormat,
    /// The architecture name the file uses (`standard`, `topk`, `jumprelu_transcoder`,
    /// `groupmax`, ...).
    pub file_architecture: String,
    /// saelab's architecture and hyperparameters.
    pub arch: crate::config::ArchConfig,
    /// Input width.
    pub d_in: usize,
    /// Number of latents.
    pub d_sae: usize,
    /// Output width.
    pub d_out: usize,
    /// Whether `b_dec` is subtracted from the input before encoding.
    pub apply_b_dec_to_input: bool,
    /// Input normalisation.
    pub input_norm: InputNorm,
    /// TopK rescaling by decoder norms.
    pub rescale_acts_by_decoder_norm: bool,
    /// Whether a skip matrix `W_skip` is present.
    pub has_skip: bool,
    /// The weight file's tensors as stored.
    pub tensors: Vec<TensorInfo>,
    /// saelab's view of the provenance metadata.
    pub metadata: SaeMetadata,
    /// The config file as stored (`null` for Gemma Scope).
    pub raw_config: serde_json::Value,
    /// Summary of `sparsity.safetensors`, if present.
    pub sparsity: Option<SparsitySummary>,
    /// Conversions applied while reading (transposes, folded scaling factors, ...).
    pub notes: Vec<String>,
}

/// Summary of a SAELens `sparsity.safetensors` (log10 firing fractions).
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct SparsitySummary {
    /// Number of latents.
    pub n: usize,
    /// Mean of log10 firing fraction.
    pub mean_log10: f32,
    /// Latents with log10 firing fraction ≤ −9 (never fired, given SAELens's 1e-10 floor).
    pub dead: usize,
    /// Latents firing on more than 10 % of tokens.
    pub dense: usize,
}

/// An SAE with the facts [`describe`] reports.
#[derive(Clone, Debug)]
pub(crate) struct Loaded {
    pub sae: Sae,
    pub format: SourceFormat,
    pub file_architecture: String,
    pub tensors: Vec<TensorInfo>,
    pub raw_config: serde_json::Value,
    pub notes: Vec<String>,
}

/// Where an SAE's files are and which format they are in.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Located {
    /// The SAE directory (for Gemma Scope, the `.npz` file itself).
    pub path: PathBuf,
    /// The detected format (`SaeLens` here covers legacy configs too; the config decides).
    pub format: SourceFormat,
}

/// Finds the SAE at `path`: a directory, or one of its files (`cfg.json`,
/// `sae_weights.safetensors`, `sae.safetensors`, any `.npz`).
pub fn locate(path: &Path) -> Result<Located> {
    if !path.exists() {
        return Err(Error::bad_file(path, "no such file or directory"));
    }
    if path.is_file() {
        let name = path.file_name().unwrap_or_default().to_string_lossy();
        if name.ends_with(".npz") {
            return Ok(Located {
                path: path.to_path_buf(),
                format: SourceFormat::GemmaScope,
            });
        }
        if [
            CFG_FILE,
            SAELENS_WEIGHTS_FILE,
            SPARSIFY_WEIGHTS_FILE,
            SPARSITY_FILE,
        ]
        .contains(&name.as_ref())
        {
            let parent = path.parent().filter(|p| !p.as_os_str().is_empty());
            return locate(parent.unwrap_or(Path::new(".")));
        }
        return Err(Error::bad_file(
            path,
            "not an SAE file (expected a directory, cfg.json, a .safetensors weight file or a .npz)",
        ));
    }
    let has = |f: &str| path.join(f).is_file();
    let format = if has(SAELENS_WEIGHTS_FILE) {
        SourceFormat::SaeLens
    } else if has(SPARSIFY_WEIGHTS_FILE) {
        SourceFormat::Sparsify
    } else if has(GEMMASCOPE_FILE) {
        return Ok(Located {
            path: path.join(GEMMASCOPE_FILE),
            format: SourceFormat::GemmaScope,
        });
    } else {
        return Err(Error::bad_file(
            path,
            "no SAE found: expected cfg.json + sae_weights.safetensors (SAELens), \
             cfg.json + sae.safetensors (sparsify) or params.npz (Gemma Scope)",
        ));
    };
    if !has(CFG_FILE) {
        return Err(Error::bad_file(
            path.join(CFG_FILE),
            "missing (the weights are there, the config is not)",
        ));
    }
    Ok(Located {
        path: path.to_path_buf(),
        format,
    })
}

pub(crate) fn load_detailed(path: &Path) -> Result<Loaded> {
    let loc = locate(path)?;
    match loc.format {
        SourceFormat::SaeLens | SourceFormat::SaeLensLegacy => saelens::read(&loc.path),
        SourceFormat::Sparsify => sparsify::read(&loc.path),
        SourceFormat::GemmaScope => gemmascope::read(&loc.path),
    }
}

/// Loads the SAE at `path` (a directory or one of its files), in any supported format.
pub fn load_sae(path: &Path) -> Result<Sae> {
    Ok(load_detailed(path)?.sae)
}

/// Loads the SAE at `path` and says which format it was read from.
pub fn load_sae_with_format(path: &Path) -> Result<(Sae, SourceFormat)> {
    let l = load_detailed(path)?;
    Ok((l.sae, l.format))
}

/// Writes `sae` to `dir` as a SAELens v6 directory: `cfg.json` (SAELens fields, plus
/// saelab's under `metadata`), `sae_weights.safetensors` (f32), and, when `sparsity`
/// is given, `sparsity.safetensors` holding `sparsity = log10(fraction + 1e-10)`.
///
/// `sparsity`, if given, is the fraction of tokens (in `[0, 1]`) on which each of the
/// `d_sae` latents fired. The directory is written atomically: on any error nothing at
/// `dir` changes, and an existing `dir` is replaced as a whole only once the new one is
/// complete. BatchTopK SAEs are written as JumpReLU (`metadata.trained_as = "batchtopk"`);
/// GroupMax SAEs cannot be written (SAELens has no such architecture).
pub fn save_sae(sae: &Sae, dir: &Path, sparsity: Option<&[f32]>) -> Result<()> {
    save_sae_with(sae, dir, sparsity, |_| Ok(()))
}

/// [`save_sae`], plus `extra` writing further files (e.g. training state) into the same
/// temporary directory before it is moved into place, so that all appear together.
pub fn save_sae_with(
    sae: &Sae,
    dir: &Path,
    sparsity: Option<&[f32]>,
    extra: impl FnOnce(&Path) -> Result<()>,
) -> Result<()> {
    let files = saelens::render(sae, sparsity)?;
    crate::io::write_dir_atomic(dir, |tmp| {
        for (name, bytes) in &files {
            std::fs::write(tmp.join(name), bytes).map_err(|e| Error::io(dir.join(name), e))?;
        }
        extra(tmp)
    })
}

/// Reads `sparsity.safetensors` in the SAELens directory `dir`: the log10 firing
/// fraction of each latent, or `None` if the file is absent.
pub fn read_log_sparsity(dir: &Path) -> Result<Option<Vec<f32>>> {
    let path = dir.join(SPARSITY_FILE);
    if !path.is_file() {
        return Ok(None);
    }
    let mut f = tensors::read_safetensors(&path)?;
    let t = f.require(&["sparsity"])?;
    if t.shape.len() != 1 {
        return Err(Error::bad_file(
            &path,
            format!(
                "sparsity has shape {:?}, expected one value per latent",
                t.shape
            ),
        ));
    }
    Ok(Some(t.data))
}

/// Loads the SAE at `path` and reports its format, architecture, shapes, stored dtypes,
/// metadata and (SAELens) sparsity summary.
pub fn describe(path: &Path) -> Result<SaeDescription> {
    let l = load_detailed(path)?;
    let dir = locate(path)?.path;
    let sparsity = if l.format == SourceFormat::GemmaScope {
        None
    } else {
        read_log_sparsity(&dir)?
            .map(|s| {
                if s.len() != l.sae.cfg.d_sae {
                    return Err(Error::bad_file(
                        dir.join(SPARSITY_FILE),
                        format!("{} values for {} latents", s.len(), l.sae.cfg.d_sae),
                    ));
                }
                let n = s.len();
                Ok(SparsitySummary {
                    n,
                    mean_log10: s.iter().sum::<f32>() / n.max(1) as f32,
                    dead: s.iter().filter(|&&v| v <= -9.0).count(),
                    dense: s.iter().filter(|&&v| v > (0.1f32).log10()).count(),
                })
            })
            .transpose()?
    };
    let c = &l.sae.cfg;
    Ok(SaeDescription {
        path: path.to_path_buf(),
        format: l.format,
        file_architecture: l.file_architecture,
        arch: c.arch.clone(),
        d_in: c.d_in,
        d_sae: c.d_sae,
        d_out: c.d_out,
        apply_b_dec_to_input: c.apply_b_dec_to_input,
        input_norm: c.input_norm,
        rescale_acts_by_decoder_norm: c.rescale_acts_by_decoder_norm,
        has_skip: l.sae.has_skip(),
        tensors: l.tensors,
        metadata: c.metadata.clone(),
        raw_config: l.raw_config,
        sparsity,
        notes: l.notes,
    })
}

impl fmt::Display for SaeDescription {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "path          {}", self.path.display())?;
        writeln!(f, "format        {}", self.format)?;
        let k = match self.arch.knob("k") {
            Some(k) => format!(" k={k}"),
            None => String::new(),
        };
        writeln!(
            f,
            "architecture  {}{k} (file: {})",
            self.arch.name(),
            self.file_architecture
        )?;
        writeln!(
            f,
            "shape         d_in={} d_sae={} d_out={}{}",
            self.d_in,
            self.d_sae,
            self.d_out,
            if self.has_skip { " +W_skip" } else { "" }
        )?;
        writeln!(
            f,
            "input         apply_b_dec_to_input={} norm={:?} rescale_acts_by_decoder_norm={}",
            self.apply_b_dec_to_input, self.input_norm, self.rescale_acts_by_decoder_norm
        )?;
        writeln!(f, "tensors")?;
        for t in &self.tensors {
            writeln!(f, "  {:<16} {:<6} {:?}", t.name, t.dtype, t.shape)?;
        }
        // The file's own metadata object (SAELens v6) shows everything it holds;
        // otherwise saelab's reading of the provenance fields.
        let meta = match self.raw_config.get("metadata") {
            Some(m @ serde_json::Value::Object(_)) => m.clone(),
            _ => serde_json::to_value(&self.metadata).unwrap_or_default(),
        };
        if let Some(m) = meta.as_object().filter(|m| !m.is_empty()) {
            writeln!(f, "metadata")?;
            for (k, v) in m {
                writeln!(f, "  {k:<26} {v}")?;
            }
        }
        if let Some(s) = &self.sparsity {
            writeln!(
                f,
                "sparsity      mean log10 freq {:.3}, dead {} / {}, dense (>10%) {}",
                s.mean_log10, s.dead, s.n, s.dense
            )?;
        }
        for n in &self.notes {
            writeln!(f, "note          {n}")?;
        }
        Ok(())
    }
}

/// The `cfg.json` at `path`: a JSON object, or an error naming the file (unreadable,
/// invalid JSON, not an object).
pub(crate) fn read_cfg_json(path: &Path) -> Result<serde_json::Value> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    let raw: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| Error::bad_file(path, format!("invalid JSON: {e}")))?;
    if !raw.is_object() {
        return Err(Error::bad_file(path, "expected a JSON object"));
    }
    Ok(raw)
}

/// The non-negative integer `key` of the `cfg.json` object `root` read from `path`:
/// `None` when absent or null, an error naming the file when it is anything else.
pub(crate) fn uint_field(
    root: &serde_json::Map<String, serde_json::Value>,
    path: &Path,
    key: &str,
) -> Result<Option<usize>> {
    match root.get(key) {
        None | Some(serde_json::Value::Null) => Ok(None),
        Some(v) => v.as_u64().map(|x| Some(x as usize)).ok_or_else(|| {
            Error::bad_file(
                path,
                format!("{key} must be a non-negative integer, found {v}"),
            )
        }),
    }
}

/// Re-wraps a validation error from [`Sae::new`] as a file error.
pub(crate) fn in_file(path: &Path, e: Error) -> Error {
    match e {
        Error::Shape(m) | Error::Config(m) => Error::bad_file(path, m),
        other => other,
    }
}
