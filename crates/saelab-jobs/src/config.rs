//! Run files: TOML tables that describe a job, overridden by dotted keys.
//!
//! A training run file has three tables:
//! ```toml
//! [data]
//! paths = ["acts.npy"]          # files or directories of activations
//! tensor = "activations"        # safetensors tensor name (optional)
//!
//! [sae]
//! architecture = "topk"         # any trainable name of the registry (saelab train --help)
//! k = 32
//! expansion_factor = 16         # or d_sae = 9216
//!
//! [train]
//! total_tokens = 2_000_000
//! lr = 4e-4
//! ```
//! A [`RunTable`] is the file before it is read: any value can be set by its dotted key
//! (`train.lr`), which is what command-line flags and `--set table.key=value` do (the
//! value is parsed as TOML, falling back to a string). [`RunConfig::parse`] then reads
//! it once into typed records. `[sae]` stays a table ([`SaeTable`]) until the SAE's
//! width is known, because the multi-valued choices of `saelab train` ([`Axes`]) set
//! its keys once per SAE.

use std::path::Path;

use saelab_core::fit::DataSpec;
use saelab_core::train::TrainConfig;
use saelab_core::ArchConfig;
use serde::de::DeserializeOwned;

use crate::error::{Error, Result};

/// Default latents per input dimension.
pub const DEFAULT_EXPANSION: usize = 16;

/// A run file's TOML before it is read.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RunTable(pub toml::Table);

impl RunTable {
    /// Reads `path` (if any) as a TOML table; no path gives an empty table.
    pub fn load(path: Option<&Path>) -> Result<RunTable> {
        let Some(p) = path else {
            return Ok(RunTable::default());
        };
        let text = std::fs::read_to_string(p).map_err(|e| saelab_core::Error::io(p, e))?;
        text.parse::<toml::Table>()
            .map(RunTable)
            .map_err(|e| Error::invalid(format!("{}: invalid TOML: {}", p.display(), e.message())))
    }

    /// Sets `dotted.key = value`, creating intermediate tables.
    pub fn set(&mut self, dotted: &str, value: toml::Value) -> Result<()> {
        set_key(&mut self.0, dotted, value)
    }

    /// Applies a `key=value` override; the value is parsed as TOML, else taken as a
    /// string.
    pub fn apply_override(&mut self, kv: &str) -> Result<()> {
        let Some((k, v)) = kv.split_once('=') else {
            return Err(Error::invalid(format!("--set {kv}: expected key=value")));
        };
        let value = format!("v = {v}")
            .parse::<toml::Table>()
            .ok()
            .and_then(|mut t| t.remove("v"))
            .unwrap_or_else(|| toml::Value::String(v.to_string()));
        self.set(k.trim(), value)
    }

    /// Applies `key=value` overrides in order (later ones win).
    pub fn apply_overrides<S: AsRef<str>>(&mut self, kvs: &[S]) -> Result<()> {
        kvs.iter()
            .try_for_each(|kv| self.apply_override(kv.as_ref()))
    }
}

/// Sets `dotted.key = value` in `table`, creating intermediate tables.
fn set_key(table: &mut toml::Table, dotted: &str, value: toml::Value) -> Result<()> {
    let mut parts: Vec<&str> = dotted.split('.').collect();
    let last = parts
        .pop()
        .filter(|s| !s.is_empty())
        .ok_or_else(|| Error::invalid(format!("{dotted:?}: empty key")))?;
    let mut t = table;
    for p in parts {
        t = t
            .entry(p.to_string())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()))
            .as_table_mut()
            .ok_or_else(|| Error::invalid(format!("{dotted}: {p} is not a table")))?;
    }
    t.insert(last.to_string(), value);
    Ok(())
}

/// An integer as a TOML value.
pub fn toml_int(v: impl TryInto<i64>) -> toml::Value {
    toml::Value::Integer(v.try_into().unwrap_or(i64::MAX))
}

/// A TOML value read as `T`, with the error naming `what`.
pub(crate) fn from_toml<T: DeserializeOwned>(v: toml::Value, what: &str) -> Result<T> {
    v.try_into()
        .map_err(|e: toml::de::Error| Error::invalid(format!("{what}: {}", e.message())))
}

/// A training run file, read.
#[derive(Clone, Debug, PartialEq)]
pub struct RunConfig {
    /// `[data]`: activation files (absent for training streamed from a model).
    pub data: Option<DataSpec>,
    /// `[sae]`: the architecture's keys and the width.
    pub sae: SaeTable,
    /// `[train]`: training hyperparameters (defaults for absent keys).
    pub train: TrainConfig,
}

impl RunConfig {
    /// Reads a run table, with errors that name the bad key. Unknown tables are refused.
    pub fn parse(mut table: RunTable) -> Result<RunConfig> {
        let t = &mut table.0;
        let data = match t.remove("data") {
            Some(v) => Some(v.try_into::<DataSpec>().map_err(|_| {
                Error::invalid("[data]: expected `paths` (a list) and optional `tensor`")
            })?),
            None => None,
        };
        let sae = match t.remove("sae") {
            Some(toml::Value::Table(s)) => SaeTable(s),
            Some(_) => return Err(Error::invalid("[sae] must be a table")),
            None => SaeTable::default(),
        };
        let train: TrainConfig = match t.remove("train") {
            Some(v) => from_toml(v, "[train]")?,
            None => TrainConfig::default(),
        };
        if let Some(k) = t.keys().next() {
            return Err(Error::invalid(format!(
                "unknown table [{k}] in the run configuration (known: data, sae, train)"
            )));
        }
        Ok(RunConfig { data, sae, train })
    }

    /// The activation files, or an error saying none were given.
    pub fn require_data(&self) -> Result<&DataSpec> {
        self.data
            .as_ref()
            .filter(|d| !d.paths.is_empty())
            .ok_or_else(|| {
                Error::invalid("no activation data given (--acts FILE or [data] paths = [...])")
            })
    }

    /// Refuses `[data]` (training streamed from a model reads no files).
    pub fn refuse_data(&self) -> Result<()> {
        if self.data.is_some() {
            return Err(Error::invalid(
                "[data] names activation files; it cannot be combined with --model",
            ));
        }
        Ok(())
    }
}

/// The `[sae]` table: `architecture` and its hyperparameters, plus `d_sae` or
/// `expansion_factor`.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SaeTable(pub toml::Table);

impl SaeTable {
    /// Sets one key of the table.
    pub fn set(&mut self, key: &str, value: toml::Value) {
        self.0.insert(key.to_string(), value);
    }

    /// The architecture and width the table describes.
    pub fn resolve(&self) -> Result<SaeChoice> {
        let mut t = self.0.clone();
        let d_sae = take_positive(&mut t, "d_sae")?;
        let expansion = take_positive(&mut t, "expansion_factor")?;
        let name = t
            .get("architecture")
            .and_then(|v| v.as_str())
            .ok_or_else(|| {
                Error::invalid("no architecture given (--arch NAME or [sae] architecture = ...)")
            })?
            .to_string();
        let arch: ArchConfig = from_toml(
            toml::Value::Table(t),
            &format!("[sae] for architecture {name:?}"),
        )?;
        let width = match (d_sae, expansion) {
            (Some(n), _) => Width::Latents(n),
            (None, Some(e)) => Width::Expansion(e),
            (None, None) => Width::Expansion(DEFAULT_EXPANSION),
        };
        Ok(SaeChoice { arch, width })
    }
}

fn take_positive(t: &mut toml::Table, key: &str) -> Result<Option<usize>> {
    match t.remove(key) {
        None => Ok(None),
        Some(toml::Value::Integer(i)) if i > 0 => Ok(Some(i as usize)),
        Some(v) => Err(Error::invalid(format!(
            "[sae] {key} must be a positive integer, got {v}"
        ))),
    }
}

/// An SAE to train: its architecture and its width.
#[derive(Clone, Debug, PartialEq)]
pub struct SaeChoice {
    /// Architecture and hyperparameters.
    pub arch: ArchConfig,
    /// Number of latents.
    pub width: Width,
}

/// The number of latents: explicit, or per input dimension.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Width {
    /// `d_sae` latents.
    Latents(usize),
    /// `expansion_factor × d` latents.
    Expansion(usize),
}

impl Width {
    /// The number of latents for inputs of width `d`.
    pub fn latents(self, d: usize) -> usize {
        match self {
            Width::Latents(n) => n,
            Width::Expansion(e) => e * d,
        }
    }
}

/// The multi-valued choices of `saelab train`: one SAE per combination of hooks ×
/// architectures × k × widths, every list left empty taking the run file's value.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Axes {
    /// Hook points (streaming only).
    pub hooks: Vec<String>,
    /// `[sae] architecture` values.
    pub arch: Vec<String>,
    /// `[sae] k` values.
    pub k: Vec<usize>,
    /// `[sae] d_sae` values.
    pub d_sae: Vec<usize>,
    /// `[sae] expansion_factor` values.
    pub expansion: Vec<usize>,
}

/// One combination of [`Axes`]: the hook (streaming) and the `[sae]` table.
#[derive(Clone, Debug, PartialEq)]
pub struct Combo {
    /// The hook this SAE reads (streaming only).
    pub hook: Option<String>,
    /// The `[sae]` table with this combination's keys set.
    pub sae: SaeTable,
}

fn opts_or_none<T: Clone>(v: &[T]) -> Vec<Option<T>> {
    if v.is_empty() {
        vec![None]
    } else {
        v.iter().cloned().map(Some).collect()
    }
}

impl Axes {
    /// Every combination, hooks varying slowest and widths fastest, each applied to a
    /// copy of `base`.
    pub fn combos(&self, base: &SaeTable) -> Vec<Combo> {
        let mut out = Vec::new();
        for hook in opts_or_none(&self.hooks) {
            for arch in opts_or_none(&self.arch) {
                for k in opts_or_none(&self.k) {
                    for d_sae in opts_or_none(&self.d_sae) {
                        for expansion in opts_or_none(&self.expansion) {
                            let mut sae = base.clone();
                            if let Some(a) = &arch {
                                sae.set("architecture", toml::Value::String(a.clone()));
                            }
                            if let Some(k) = k {
                                sae.set("k", toml_int(k));
                            }
                            if let Some(n) = d_sae {
                                sae.set("d_sae", toml_int(n));
                            }
                            if let Some(e) = expansion {
                                sae.set("expansion_factor", toml_int(e));
                            }
                            out.push(Combo {
                                hook: hook.clone(),
                                sae,
                            });
                        }
                    }
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overrides_and_defaults() {
        let mut t = RunTable(
            r#"
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
            .unwrap(),
        );
        t.apply_overrides(&["train.total_tokens=1000", "sae.k=16"])
            .unwrap();
        let r = RunConfig::parse(t).unwrap();
        assert_eq!(r.train.total_tokens, 1000);
        assert_eq!(r.train.lr, 1e-3);
        assert_eq!(r.require_data().unwrap().paths, [Path::new("a.npy")]);
        let sae = r.sae.resolve().unwrap();
        assert_eq!(sae.width, Width::Expansion(4));
        assert!(matches!(
            sae.arch,
            ArchConfig::Topk(saelab_core::arch::TopKConfig { k: 16, .. })
        ));
    }

    #[test]
    fn unknown_keys_and_architectures_are_named() {
        let t = RunTable(
            "[data]\npaths=['a']\n[sae]\narchitecture='topk'\nk=2\n[train]\nlrr=1"
                .parse()
                .unwrap(),
        );
        let e = RunConfig::parse(t).unwrap_err().to_string();
        assert!(e.contains("lrr"), "{e}");
        let t = RunTable(
            "[data]\npaths=['a']\n[sae]\narchitecture='nope'"
                .parse()
                .unwrap(),
        );
        let e = RunConfig::parse(t)
            .unwrap()
            .sae
            .resolve()
            .unwrap_err()
            .to_string();
        assert!(e.contains("nope"), "{e}");
        let t = RunTable("[extra]\nx=1".parse().unwrap());
        let e = RunConfig::parse(t).unwrap_err().to_string();
        assert!(e.contains("unknown table [extra]"), "{e}");
    }

    #[test]
    fn combinations_set_the_sae_keys_widths_fastest() {
        let base = SaeTable("architecture='relu'\nd_sae=64".parse().unwrap());
        let axes = Axes {
            arch: vec!["topk".into()],
            k: vec![4, 8],
            expansion: vec![2, 3],
            ..Axes::default()
        };
        let got: Vec<(usize, Width)> = axes
            .combos(&base)
            .iter()
            .map(|c| {
                let s = c.sae.resolve().unwrap();
                let ArchConfig::Topk(saelab_core::arch::TopKConfig { k, .. }) = s.arch else {
                    panic!("topk")
                };
                (k, s.width)
            })
            .collect();
        // d_sae from the file wins over an expansion factor, as it always has.
        assert_eq!(
            got,
            [
                (4, Width::Latents(64)),
                (4, Width::Latents(64)),
                (8, Width::Latents(64)),
                (8, Width::Latents(64))
            ]
        );
        assert_eq!(Axes::default().combos(&base).len(), 1);
    }
}
