//! `saelab sweep`: train a grid of SAEs (architectures × sparsity × widths) from one
//! activation dataset in a single pass: every batch is read once and fed to every
//! trainer (`saelab_core::fit`).
//!
//! A sweep file is a run file (see `runfile`) whose `[data]`, `[sae]` and `[train]`
//! tables are shared by every run, plus `[[grid]]` tables. Each grid table holds `[sae]`
//! keys (and an optional `[grid.train]` sub-table of `[train]` keys); a key whose value
//! is a list is an axis, and the grid yields one run per combination of its axes:
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
//! `k`, `lam` for l1_coefficient, `l0c`, `th` for init_threshold, `x` for expansion_factor, `n` for d_sae); a grid's `name = "..."`
//! replaces the architecture part.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use saelab_core::fit::{self, Run};
use saelab_core::train::Trainer;
use saelab_core::SaeConfig;

use crate::cmd::train;
use crate::runfile;

#[derive(clap::Args)]
pub struct Args {
    /// Sweep file (TOML): shared [data], [sae], [train] and [[grid]] tables.
    #[arg(long)]
    config: PathBuf,
    /// Output folder, one run directory per SAE (overrides the file's `out`).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Override a shared value: --set train.total_tokens=1e6 --set data.paths=['x']
    #[arg(long = "set", value_name = "KEY=VALUE")]
    set: Vec<String>,
    /// List the runs and exit.
    #[arg(long)]
    dry_run: bool,
    /// Continue an interrupted sweep from its runs' checkpoints (the same as
    /// `saelab train --resume OUT`).
    #[arg(long)]
    resume: bool,
}

/// One run of a sweep: its name and its complete run table.
#[derive(Debug)]
pub struct SweepRun {
    /// Directory name under OUT.
    pub name: String,
    /// `[data]`, `[sae]`, `[train]` for this run.
    pub table: toml::Table,
}

/// A parsed sweep file.
#[derive(Debug)]
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

/// An axis key's short form in run names: the architecture's own (`lam` for
/// `l1_coefficient`), `x` and `n` for the widths, else the key itself.
fn short_key(k: &str) -> &str {
    match k {
        "expansion_factor" => "x",
        "d_sae" => "n",
        other => saelab_core::ArchConfig::short_key(other).unwrap_or(other),
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

/// Expands a sweep table into its runs (with `--set` overrides already applied).
pub fn expand(mut table: toml::Table, file: &Path) -> Result<Sweep> {
    let take_str = |t: &mut toml::Table, k: &str| -> Result<Option<String>> {
        match t.remove(k) {
            None => Ok(None),
            Some(toml::Value::String(s)) => Ok(Some(s)),
            Some(v) => bail!("{}: `{k}` must be a string, got {v}", file.display()),
        }
    };
    let out = take_str(&mut table, "out")?.map(PathBuf::from);
    let hook = take_str(&mut table, "hook")?;
    let model = take_str(&mut table, "model")?;
    let grids = match table.remove("grid") {
        Some(toml::Value::Array(a)) if !a.is_empty() => a,
        Some(_) => bail!(
            "{}: `grid` must be a list of [[grid]] tables",
            file.display()
        ),
        None => bail!(
            "{}: no [[grid]] tables: nothing to sweep over",
            file.display()
        ),
    };
    let mut runs: Vec<SweepRun> = Vec::new();
    for (gi, g) in grids.into_iter().enumerate() {
        let toml::Value::Table(mut g) = g else {
            bail!("{}: grid entry {} is not a table", file.display(), gi + 1);
        };
        let name = match g.remove("name") {
            Some(toml::Value::String(s)) => Some(s),
            None => None,
            Some(v) => bail!(
                "{}: grid {}: `name` must be a string, got {v}",
                file.display(),
                gi + 1
            ),
        };
        let train = match g.remove("train") {
            Some(toml::Value::Table(t)) => t,
            None => toml::Table::new(),
            Some(_) => bail!(
                "{}: grid {}: `train` must be a table",
                file.display(),
                gi + 1
            ),
        };
        let (sae_scalars, mut axes) = split_axes(&g, "sae");
        let (train_scalars, train_axes) = split_axes(&train, "train");
        axes.extend(train_axes);
        if let Some((_, k, _)) = axes.iter().find(|a| a.2.is_empty()) {
            bail!(
                "{}: grid {}: `{k}` is an empty list",
                file.display(),
                gi + 1
            );
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
                bail!(
                    "{}: two runs are named {run_name:?}; give the grids distinct `name`s",
                    file.display()
                );
            }
            runs.push(SweepRun {
                name: run_name,
                table: t,
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

pub fn run(a: Args) -> Result<()> {
    let mut table = runfile::load_table(Some(&a.config))?;
    for kv in &a.set {
        runfile::apply_override(&mut table, kv)?;
    }
    let sweep = expand(table, &a.config)?;
    let out = a.out.clone().or(sweep.out.clone()).with_context(|| {
        format!(
            "{}: no `out` folder (set it or pass --out)",
            a.config.display()
        )
    })?;
    // Parse every run before touching anything, so that a bad grid fails early.
    let mut parsed = Vec::with_capacity(sweep.runs.len());
    for r in &sweep.runs {
        let rf = runfile::parse(r.table.clone())
            .with_context(|| format!("{}: run {}", a.config.display(), r.name))?;
        parsed.push(rf);
    }
    let first = &parsed[0];
    for (r, rf) in sweep.runs.iter().zip(&parsed) {
        let (c, f) = (&rf.train, &first.train);
        if c.batch_size != f.batch_size
            || c.total_tokens != f.total_tokens
            || c.val_fraction != f.val_fraction
            || c.seed != f.seed
            || rf.data != first.data
        {
            bail!(
                "{}: run {} differs from {} in data, batch_size, total_tokens, val_fraction \
                 or seed; runs of one sweep share one pass over the data",
                a.config.display(),
                r.name,
                sweep.runs[0].name
            );
        }
    }
    if a.dry_run {
        println!("{} runs into {}:", sweep.runs.len(), out.display());
        for (r, rf) in sweep.runs.iter().zip(&parsed) {
            println!("  {:<28} {:?} lr={}", r.name, rf.arch, rf.train.lr);
        }
        return Ok(());
    }
    if a.resume {
        // The sweep folder holds `sweep.json`, so `saelab train --resume` continues it.
        return train::resume(&out, None);
    }
    let store = first.data.open()?;
    let sample = train::init_sample(&store, first.train.val_fraction)?;
    let d = store.d();
    let cache = train::cache_metadata(&first.data);
    let names: Vec<String> = sweep.runs.iter().map(|r| r.name.clone()).collect();
    let dirs = train::run_dirs(&out, &names)?;
    let data = first.data.clone();
    let mut trainers = Vec::new();
    for (r, rf) in sweep.runs.iter().zip(parsed) {
        let mut cfg = SaeConfig::new(rf.arch, d, train::width(d, rf.d_sae, rf.expansion_factor));
        if let Some(m) = &cache {
            cfg.metadata = m.clone();
        }
        if sweep.hook.is_some() {
            cfg.metadata.hook_name = sweep.hook.clone();
        }
        if sweep.model.is_some() {
            cfg.metadata.model_name = sweep.model.clone();
        }
        let trainer = Trainer::new(rf.train, cfg, &sample)
            .with_context(|| format!("run {}: cannot start training", r.name))?;
        trainers.push(trainer);
    }
    train::write_sweep(&out, &names)?;
    let mut runs = Vec::new();
    for (trainer, dir) in trainers.into_iter().zip(dirs) {
        fit::create_run_dir(&dir, &data, &trainer)?;
        runs.push(Run { trainer, dir });
    }
    train::train_on_store(&store, &mut runs, &names, None, &out, None)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The data spec shared by the runs.
    fn data_of(s: &Sweep) -> Option<saelab_core::fit::DataSpec> {
        s.runs
            .first()
            .and_then(|r| runfile::parse(r.table.clone()).ok())
            .map(|rf| rf.data)
    }

    #[test]
    fn grids_expand_to_named_runs() {
        let t: toml::Table = r#"
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
        .unwrap();
        let s = expand(t, Path::new("s.toml")).unwrap();
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
        let rf = runfile::parse(s.runs[2].table.clone()).unwrap();
        assert!(matches!(
            rf.arch,
            saelab_core::ArchConfig::Topk(saelab_core::arch::TopKConfig { k: 8, .. })
        ));
        assert_eq!(rf.expansion_factor, Some(4));
        assert_eq!(rf.train.lr, 1e-3);
        let rf = runfile::parse(s.runs[5].table.clone()).unwrap();
        assert_eq!(rf.train.lr, 5e-5);
        assert_eq!(rf.train.total_tokens, 1000);
        assert!(matches!(
            rf.arch,
            saelab_core::ArchConfig::Relu(saelab_core::arch::ReluConfig { l1_coefficient }) if l1_coefficient == 3.0
        ));
        assert_eq!(s.hook.as_deref(), Some("blocks.1.hook_resid_post"));
        assert_eq!(data_of(&s).unwrap().paths, [PathBuf::from("a.npy")]);
    }

    #[test]
    fn bad_grids_are_named() {
        let t: toml::Table = "[data]\npaths=['a']\n".parse().unwrap();
        let e = expand(t, Path::new("s.toml")).unwrap_err().to_string();
        assert!(e.contains("no [[grid]]"), "{e}");
        let t: toml::Table = "[[grid]]\narchitecture='topk'\nk=[]\n".parse().unwrap();
        let e = expand(t, Path::new("s.toml")).unwrap_err().to_string();
        assert!(e.contains("empty list"), "{e}");
        let t: toml::Table =
            "[[grid]]\narchitecture='topk'\nk=[4]\n[[grid]]\narchitecture='topk'\nk=[4]\n"
                .parse()
                .unwrap();
        let e = expand(t, Path::new("s.toml")).unwrap_err().to_string();
        assert!(e.contains("two runs"), "{e}");
    }
}
