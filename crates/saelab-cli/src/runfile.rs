//! TOML run files with command-line overrides.
//!
//! A run file has three tables:
//! ```toml
//! [data]
//! paths = ["acts.npy"]          # files or directories of activations
//! tensor = "activations"        # safetensors tensor name (optional)
//!
//! [sae]
//! architecture = "topk"         # relu | topk | batchtopk | jumprelu | gated
//! k = 32
//! expansion_factor = 16         # or d_sae = 9216
//!
//! [train]
//! total_tokens = 2_000_000
//! lr = 4e-4
//! ```
//! Any value can be overridden with `--set table.key=value` (the value is parsed as
//! TOML, falling back to a string), and the common ones have their own flags.

use std::path::Path;

use anyhow::{bail, Context, Result};
use saelab_core::fit::DataSpec;
use saelab_core::train::TrainConfig;
use saelab_core::ArchConfig;

/// A parsed run file.
pub struct RunFile {
    /// Activation data.
    pub data: DataSpec,
    /// Architecture and its hyperparameters.
    pub arch: ArchConfig,
    /// Explicit number of latents, if given.
    pub d_sae: Option<usize>,
    /// Latents per input dimension, if given.
    pub expansion_factor: Option<usize>,
    /// Training hyperparameters.
    pub train: TrainConfig,
}

/// Reads `path` (if any) as a TOML table; an absent path gives an empty table.
pub fn load_table(path: Option<&Path>) -> Result<toml::Table> {
    match path {
        None => Ok(toml::Table::new()),
        Some(p) => {
            let text = std::fs::read_to_string(p).with_context(|| format!("{}", p.display()))?;
            text.parse::<toml::Table>()
                .map_err(|e| anyhow::anyhow!("{}: invalid TOML: {}", p.display(), e.message()))
        }
    }
}

/// Sets `dotted.key = value` in `table`, creating intermediate tables.
pub fn set(table: &mut toml::Table, dotted: &str, value: toml::Value) -> Result<()> {
    let mut parts: Vec<&str> = dotted.split('.').collect();
    let last = parts.pop().filter(|s| !s.is_empty()).context("empty key")?;
    let mut t = table;
    for p in parts {
        t = t
            .entry(p.to_string())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()))
            .as_table_mut()
            .with_context(|| format!("{dotted}: {p} is not a table"))?;
    }
    t.insert(last.to_string(), value);
    Ok(())
}

/// Applies a `key=value` override; the value is parsed as TOML, else taken as a string.
pub fn apply_override(table: &mut toml::Table, kv: &str) -> Result<()> {
    let Some((k, v)) = kv.split_once('=') else {
        bail!("--set {kv}: expected key=value");
    };
    let value = format!("v = {v}")
        .parse::<toml::Table>()
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(v.to_string()));
    set(table, k.trim(), value)
}

/// Turns the merged table into a [`RunFile`], with errors that name the bad key.
pub fn parse(mut table: toml::Table) -> Result<RunFile> {
    let data: DataSpec = match table.remove("data") {
        Some(v) => v
            .try_into()
            .context("[data]: expected `paths` (a list) and optional `tensor`")?,
        None => bail!("no activation data given (--acts FILE or [data] paths = [...])"),
    };
    if data.paths.is_empty() {
        bail!("no activation data given (--acts FILE or [data] paths = [...])");
    }
    let m = parse_model(table)?;
    Ok(RunFile {
        data,
        arch: m.arch,
        d_sae: m.d_sae,
        expansion_factor: m.expansion_factor,
        train: m.train,
    })
}

/// The `[sae]` and `[train]` parts of a run file (for training streamed from a model,
/// which takes no `[data]`).
pub struct ModelPart {
    /// Architecture and its hyperparameters.
    pub arch: ArchConfig,
    /// Explicit number of latents, if given.
    pub d_sae: Option<usize>,
    /// Latents per input dimension, if given.
    pub expansion_factor: Option<usize>,
    /// Training hyperparameters.
    pub train: TrainConfig,
}

/// Parses a table holding only `[sae]` and `[train]`.
pub fn parse_model(mut table: toml::Table) -> Result<ModelPart> {
    if table.contains_key("data") {
        bail!("[data] names activation files; it cannot be combined with --model");
    }
    let mut sae = match table.remove("sae") {
        Some(toml::Value::Table(t)) => t,
        Some(_) => bail!("[sae] must be a table"),
        None => bail!("no architecture given (--arch NAME or [sae] architecture = ...)"),
    };
    let d_sae = take_usize(&mut sae, "d_sae")?;
    let expansion_factor = take_usize(&mut sae, "expansion_factor")?;
    let name = sae
        .get("architecture")
        .and_then(|v| v.as_str())
        .context("no architecture given (--arch NAME or [sae] architecture = ...)")?
        .to_string();
    let arch: ArchConfig = toml::Value::Table(sae)
        .try_into()
        .map_err(|e: toml::de::Error| {
            anyhow::anyhow!("[sae] for architecture {name:?}: {}", e.message())
        })?;
    let train: TrainConfig = match table.remove("train") {
        Some(v) => v
            .try_into()
            .map_err(|e: toml::de::Error| anyhow::anyhow!("[train]: {}", e.message()))?,
        None => TrainConfig::default(),
    };
    if let Some(k) = table.keys().next() {
        bail!("unknown table [{k}] in the run configuration (known: data, sae, train)");
    }
    Ok(ModelPart {
        arch,
        d_sae,
        expansion_factor,
        train,
    })
}

fn take_usize(t: &mut toml::Table, key: &str) -> Result<Option<usize>> {
    match t.remove(key) {
        None => Ok(None),
        Some(toml::Value::Integer(i)) if i > 0 => Ok(Some(i as usize)),
        Some(v) => bail!("[sae] {key} must be a positive integer, got {v}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overrides_and_defaults() {
        let mut t: toml::Table = r#"
            [data]
            paths = ["a.npy"]
            [sae]
            architecture = "topk"
            k = 8
            expansion_factor = 4
            [train]
            lr = 1e-3
        "#
        .parse()
        .unwrap();
        apply_override(&mut t, "train.total_tokens=1000").unwrap();
        apply_override(&mut t, "sae.k=16").unwrap();
        let r = parse(t).unwrap();
        assert_eq!(r.train.total_tokens, 1000);
        assert_eq!(r.train.lr, 1e-3);
        assert_eq!(r.expansion_factor, Some(4));
        assert!(matches!(
            r.arch,
            ArchConfig::Topk(saelab_core::arch::TopKConfig { k: 16, .. })
        ));
    }

    #[test]
    fn unknown_keys_and_architectures_are_named() {
        let t: toml::Table = "[data]\npaths=['a']\n[sae]\narchitecture='topk'\nk=2\n[train]\nlrr=1"
            .parse()
            .unwrap();
        let e = parse(t).err().unwrap().to_string();
        assert!(e.contains("lrr"), "{e}");
        let t: toml::Table = "[data]\npaths=['a']\n[sae]\narchitecture='nope'"
            .parse()
            .unwrap();
        let e = parse(t).err().unwrap().to_string();
        assert!(e.contains("nope"), "{e}");
    }
}
