//! Sweep files: a grid of SAEs (architectures × sparsity × widths) trained from one
//! activation dataset in a single pass ([`crate::train`]: every batch is read once and
//! fed to every trainer).
//!
//! A sweep file is a run file (see [`crate::config`]) whose `[data]`, `[sae]` and
//! `[train]` tables are shared by every run, plus `[[grid]]` tables. Each grid table
//! holds `[sae]` keys (and an optional `[grid.train]` sub-table of `[train]` keys); a
//! key whose value is a list is an axis, and the grid yields one run per combination of
//! its axes:
//!
//! ```toml
//! out = "runs/sweep"                     # OUT: runs go to OUT/<name>/ (or --out)
//! hook = "blocks.15.hook_resid_post"     # recorded in each SAE's metadata
//! model = "SmolLM2-135M-Instruct"        # recorded in each SAE's metadata
//!
//! [data]
//! paths = ["runs/cache_block15"]
//! [train]
//! total_tokens = 50_000_000              # batch_size and total_tokens are shared
//! [sae]
//! expansion_factor = 16
//!
//! [[grid]]
//! architecture = "topk"
//! k = [16, 32, 64]                       # three runs: topk-k16, topk-k32, topk-k64
//!
//! [[grid]]
//! architecture = "relu"
//! l1_coefficient = [2.0, 5.0, 10.0]
//! [grid.train]
//! lr = 5e-5                              # for this grid's runs only
//! ```
//!
//! Run names are the architecture followed by `-<key><value>` for every axis, axes in
//! alphabetical order of their keys, the last varying fastest (short keys:
//! [`short_key`]); a grid's `name = "..."` replaces the architecture part.

use std::path::{Path, PathBuf};

use saelab_core::ArchConfig;

use crate::config::{RunConfig, RunTable};
use crate::error::{Context, Error, Result};
use crate::train::{Member, Source, TrainJob};

/// One run of a sweep: its name and its complete run table.
#[derive(Clone, Debug, PartialEq)]
pub struct SweepRun {
    /// Directory name under OUT.
    pub name: String,
    /// `[data]`, `[sae]`, `[train]` for this run.
    pub table: RunTable,
}

/// An expanded sweep file.
#[derive(Clone, Debug, PartialEq)]
pub struct Sweep {
    /// Output folder from the file.
    pub out: Option<PathBuf>,
    /// Hook name to record in the SAEs' metadata.
    pub hook: Option<String>,
    /// Model name to record in the SAEs' metadata.
    pub model: Option<String>,
    /// The runs, in grid order.
    pub runs: Vec<SweepRun>,
}

/// The short form of an axis key in run names: the architecture's own (`lam` for
/// `l1_coefficient`), `x` and `n` for the widths, else the key itself.
pub fn short_key(k: &str) -> &str {
    match k {
        "expansion_factor" => "x",
        "d_sae" => "n",
        other => ArchConfig::short_key(other).unwrap_or(other),
    }
}

fn value_label(v: &toml::Value) -> String {
    match v {
        toml::Value::String(s) => s.clone(),
        toml::Value::Float(f) => format!("{f}"),
        other => other.to_string(),
    }
}

/// One axis of a grid: the section (`sae` or `train`), the key and its values.
type Axis = (&'static str, String, Vec<toml::Value>);

/// Scalars and axes of one table of a grid entry.
fn split_axes(t: &toml::Table, section: &'static str) -> (toml::Table, Vec<Axis>) {
    let mut scalars = toml::Table::new();
    let mut axes = Vec::new();
    for (k, v) in t {
        match v {
            toml::Value::Array(a) => axes.push((section, k.clone(), a.clone())),
            other => {
                scalars.insert(k.clone(), other.clone());
            }
        }
    }
    (scalars, axes)
}

fn merge(into: &mut toml::Table, section: &str, from: &toml::Table) {
    let t = into
        .entry(section.to_string())
        .or_insert_with(|| toml::Value::Table(toml::Table::new()))
        .as_table_mut()
        .expect("sections are tables");
    for (k, v) in from {
        t.insert(k.clone(), v.clone());
    }
}

impl Sweep {
    /// Expands a sweep file's table (overrides already applied) into its runs; `file`
    /// names the file in errors.
    pub fn expand(table: RunTable, file: &Path) -> Result<Sweep> {
        let mut table = table.0;
        let bad = |msg: String| Error::invalid(format!("{}: {msg}", file.display()));
        let take_str = |t: &mut toml::Table, k: &str| -> Result<Option<String>> {
            match t.remove(k) {
                None => Ok(None),
                Some(toml::Value::String(s)) => Ok(Some(s)),
                Some(v) => Err(bad(format!("`{k}` must be a string, got {v}"))),
            }
        };
        let out = take_str(&mut table, "out")?.map(PathBuf::from);
        let hook = take_str(&mut table, "hook")?;
        let model = take_str(&mut table, "model")?;
        let grids = match table.remove("grid") {
            Some(toml::Value::Array(a)) if !a.is_empty() => a,
            Some(_) => return Err(bad("`grid` must be a list of [[grid]] tables".into())),
            None => return Err(bad("no [[grid]] tables: nothing to sweep over".into())),
        };
        let mut runs: Vec<SweepRun> = Vec::new();
        for (gi, g) in grids.into_iter().enumerate() {
            let toml::Value::Table(mut g) = g else {
                return Err(bad(format!("grid entry {} is not a table", gi + 1)));
            };
            let name = match g.remove("name") {
                Some(toml::Value::String(s)) => Some(s),
                None => None,
                Some(v) => {
                    return Err(bad(format!(
                        "grid {}: `name` must be a string, got {v}",
                        gi + 1
                    )))
                }
            };
            let train = match g.remove("train") {
                Some(toml::Value::Table(t)) => t,
                None => toml::Table::new(),
                Some(_) => return Err(bad(format!("grid {}: `train` must be a table", gi + 1))),
            };
            let (sae_scalars, mut axes) = split_axes(&g, "sae");
            let (train_scalars, train_axes) = split_axes(&train, "train");
            axes.extend(train_axes);
            if let Some((_, k, _)) = axes.iter().find(|a| a.2.is_empty()) {
                return Err(bad(format!("grid {}: `{k}` is an empty list", gi + 1)));
            }
            let base_name = name.unwrap_or_else(|| {
                sae_scalars
                    .get("architecture")
                    .and_then(|v| v.as_str())
                    .unwrap_or("run")
                    .to_string()
            });
            // Cartesian product, last axis fastest.
            let total: usize = axes.iter().map(|a| a.2.len()).product();
            for idx in 0..total {
                let mut t = table.clone();
                merge(&mut t, "sae", &sae_scalars);
                merge(&mut t, "train", &train_scalars);
                let mut run_name = base_name.clone();
                let mut rem = idx;
                let mut picks = Vec::with_capacity(axes.len());
                for (section, key, values) in axes.iter().rev() {
                    let v = &values[rem % values.len()];
                    rem /= values.len();
                    picks.push((*section, key, v));
                }
                picks.reverse();
                for (section, key, v) in picks {
                    let mut one = toml::Table::new();
                    one.insert(key.clone(), v.clone());
                    merge(&mut t, section, &one);
                    run_name.push_str(&format!("-{}{}", short_key(key), value_label(v)));
                }
                if runs.iter().any(|r| r.name == run_name) {
                    return Err(bad(format!(
                        "two runs are named {run_name:?}; give the grids distinct `name`s"
                    )));
                }
                runs.push(SweepRun {
                    name: run_name,
                    table: RunTable(t),
                });
            }
        }
        Ok(Sweep {
            out,
            hook,
            model,
            runs,
        })
    }

    /// The training job of the sweep into `out`: every run parsed (a bad grid fails
    /// before anything is touched) and checked to share one pass over the data.
    pub fn job(&self, file: &Path, out: PathBuf) -> Result<TrainJob> {
        let mut parsed = Vec::with_capacity(self.runs.len());
        for r in &self.runs {
            let cfg = RunConfig::parse(r.table.clone())
                .and_then(|c| {
                    c.require_data()?;
                    let sae = c.sae.resolve()?;
                    Ok((c, sae))
                })
                .context_with(|| format!("{}: run {}", file.display(), r.name))?;
            parsed.push(cfg);
        }
        let first = &parsed[0].0;
        for (r, (c, _)) in self.runs.iter().zip(&parsed) {
            let (t, f) = (&c.train, &first.train);
            if t.batch_size != f.batch_size
                || t.total_tokens != f.total_tokens
                || t.val_fraction != f.val_fraction
                || t.seed != f.seed
                || c.data != first.data
            {
                return Err(Error::invalid(format!(
                    "{}: run {} differs from {} in data, batch_size, total_tokens, val_fraction \
                     or seed; runs of one sweep share one pass over the data",
                    file.display(),
                    r.name,
                    self.runs[0].name
                )));
            }
        }
        let data = first.require_data()?.clone();
        let members = self
            .runs
            .iter()
            .zip(parsed)
            .map(|(r, (c, sae))| Member {
                name: Some(r.name.clone()),
                hook: None,
                sae,
                train: c.train,
                hook_name: self.hook.clone(),
                model_name: self.model.clone(),
            })
            .collect();
        Ok(TrainJob {
            source: Source::Store(data),
            members,
            out,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Width;

    #[test]
    fn grids_expand_to_named_runs() {
        let t = RunTable(
            r#"
            out = "o"
            hook = "blocks.1.hook_resid_post"
            [data]
            paths = ["a.npy"]
            [train]
            total_tokens = 1000
            lr = 1e-3
            [sae]
            expansion_factor = 4
            [[grid]]
            architecture = "topk"
            k = [8, 16]
            expansion_factor = [2, 4]
            [[grid]]
            architecture = "relu"
            l1_coefficient = [1.0, 3.0]
            [grid.train]
            lr = 5e-5
        "#
            .parse()
            .unwrap(),
        );
        let s = Sweep::expand(t, Path::new("s.toml")).unwrap();
        let names: Vec<&str> = s.runs.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "topk-x2-k8",
                "topk-x2-k16",
                "topk-x4-k8",
                "topk-x4-k16",
                "relu-lam1",
                "relu-lam3"
            ]
        );
        assert_eq!(s.hook.as_deref(), Some("blocks.1.hook_resid_post"));
        let job = s.job(Path::new("s.toml"), PathBuf::from("o")).unwrap();
        let m = &job.members[2];
        assert!(matches!(
            m.sae.arch,
            ArchConfig::Topk(saelab_core::arch::TopKConfig { k: 8, .. })
        ));
        assert_eq!(m.sae.width, Width::Expansion(4));
        assert_eq!(m.train.lr, 1e-3);
        assert_eq!(m.name.as_deref(), Some("topk-x4-k8"));
        assert_eq!(m.hook_name.as_deref(), Some("blocks.1.hook_resid_post"));
        let m = &job.members[5];
        assert_eq!((m.train.lr, m.train.total_tokens), (5e-5, 1000));
        assert!(matches!(
            m.sae.arch,
            ArchConfig::Relu(saelab_core::arch::ReluConfig { l1_coefficient }) if l1_coefficient == 3.0
        ));
        let Source::Store(data) = &job.source else {
            panic!("a store job")
        };
        assert_eq!(data.paths, [PathBuf::from("a.npy")]);
    }

    #[test]
    fn bad_grids_are_named() {
        let expand = |s: &str| {
            Sweep::expand(RunTable(s.parse().unwrap()), Path::new("s.toml"))
                .unwrap_err()
                .to_string()
        };
        let e = expand("[data]\npaths=['a']\n");
        assert!(e.contains("no [[grid]]"), "{e}");
        let e = expand("[[grid]]\narchitecture='topk'\nk=[]\n");
        assert!(e.contains("empty list"), "{e}");
        let e =
            expand("[[grid]]\narchitecture='topk'\nk=[4]\n[[grid]]\narchitecture='topk'\nk=[4]\n");
        assert!(e.contains("two runs"), "{e}");
        let s = Sweep::expand(
            RunTable(
                "[data]\npaths=['a']\n[[grid]]\narchitecture='topk'\nk=[4]\n[grid.train]\n\
                 batch_size=7\n[[grid]]\nname='b'\narchitecture='topk'\nk=[4]\n"
                    .parse()
                    .unwrap(),
            ),
            Path::new("s.toml"),
        )
        .unwrap();
        let e = s
            .job(Path::new("s.toml"), "o".into())
            .unwrap_err()
            .to_string();
        assert!(e.contains("share one pass"), "{e}");
    }
}
