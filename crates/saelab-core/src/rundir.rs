//! Run directories: the files a training run writes, as typed records that the
//! trainer ([`crate::fit`]) writes and that a report, a resume or a dashboard reads.
//!
//! A run directory ([`RunDir`]) holds
//!
//! | file | record | written |
//! |---|---|---|
//! | `run.json` | [`RunRecord`]: the data, SAE and training configurations | when the run starts |
//! | `metrics.jsonl` | one [`MetricsRecord`] per line: training steps and validations | as the run goes |
//! | `checkpoint/` | SAELens files + `trainer_state.{json,safetensors}`, whose `extra` is a [`CheckpointExtra`] | every `checkpoint_every` steps and at the end, atomically |
//! | `sae/` | the final SAE (SAELens v6 layout) | at the end, atomically |
//! | `eval.json` | an in-model evaluation (`saelab_eval::InModelMetrics`) | by `saelab eval --out`, `saelab report --model`, `saelab run` |
//! | `eval-heldout.json` | [`crate::metrics::ReconMetrics`] on held-out activations | by `saelab run` |
//!
//! Several runs trained in one pass form a [`RunSet`]: one run is the set's directory
//! itself; several are `root/<name>/` each, listed in `root/sweep.json`
//! ([`SweepRecord`]).
//!
//! # Byte compatibility
//!
//! The trainer's records (`run.json`, `metrics.jsonl`, `sweep.json`, the checkpoint's
//! `extra`) are written through a `serde_json::Value`: keys in sorted order and `f32`
//! values widened to `f64` the way `Value` widens them. That is how they were written
//! before they had types, so directories written by older saelab read unchanged and new
//! ones are byte-identical to what the older writer produced (a test holds both to a
//! fixture written by the old code). `eval.json` is written field by field, as before.

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::config::SaeConfig;
use crate::error::{Error, Result};
use crate::io;
use crate::metrics::ReconMetrics;
use crate::train::{StepReport, TrainConfig};

/// What a run was asked to do (`run.json`).
pub const RUN_FILE: &str = "run.json";
/// One JSON record per line: steps and validations (`metrics.jsonl`).
pub const METRICS_FILE: &str = "metrics.jsonl";
/// The members of a run set of several runs (`sweep.json`).
pub const SWEEP_FILE: &str = "sweep.json";
/// The in-model evaluation of a run (`eval.json`).
pub const EVAL_FILE: &str = "eval.json";
/// Reconstruction metrics on held-out activations (`eval-heldout.json`).
pub const HELDOUT_EVAL_FILE: &str = "eval-heldout.json";
/// The latest resumable state (a directory).
pub const CHECKPOINT_DIR: &str = "checkpoint";
/// The final SAE (a directory).
pub const SAE_DIR: &str = "sae";

/// `run.json`: the data a run reads and its configurations. `D` describes the data:
/// `saelab_core::fit::DataSpec` for stored activations, a stream description for
/// activations computed by a model (`saelab-jobs`), or `serde_json::Value` for a reader
/// that does not care.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RunRecord<D> {
    /// What the run reads.
    pub data: D,
    /// The SAE as configured for training (BatchTopK stays BatchTopK here, though its
    /// file form is JumpReLU).
    pub sae: SaeConfig,
    /// The training hyperparameters.
    pub train: TrainConfig,
}

/// One line of `metrics.jsonl`, tagged by its `kind`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind")]
pub enum MetricsRecord {
    /// `kind: "train"`: a logged training step (every `log_every` steps and the last).
    #[serde(rename = "train")]
    Train(StepRecord),
    /// `kind: "val"`: the SAE evaluated on the validation rows.
    #[serde(rename = "val")]
    Val(ValRecord),
}

impl MetricsRecord {
    /// The step the record was written at.
    pub fn step(&self) -> u64 {
        match self {
            MetricsRecord::Train(r) => r.step,
            MetricsRecord::Val(r) => r.step,
        }
    }
}

/// A logged training step: the [`StepReport`] of the trainer, loss terms flattened into
/// `loss_<name>` keys.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StepRecord {
    /// Steps completed.
    pub step: u64,
    /// Training tokens consumed so far.
    pub tokens: u64,
    /// Learning rate of the step.
    pub lr: f32,
    /// Sparsity warm-up multiplier of the step.
    pub sparsity_scale: f32,
    /// Total loss of the batch.
    #[serde(deserialize_with = "f64_or_nan")]
    pub loss: f64,
    /// Loss terms by name (`mse`, `aux`, `l1`, ...), stored as `loss_<name>` keys.
    #[serde(flatten)]
    pub terms: LossTerms,
    /// Mean active latents per token of the batch.
    #[serde(deserialize_with = "f64_or_nan")]
    pub l0: f64,
    /// FVU of the batch (normalised inputs).
    #[serde(deserialize_with = "f64_or_nan")]
    pub fvu: f64,
    /// Fraction of dead latents.
    #[serde(deserialize_with = "f64_or_nan")]
    pub dead_frac: f64,
    /// Global gradient norm before clipping (when clipping is on).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grad_norm: Option<f32>,
}

impl From<&StepReport> for StepRecord {
    fn from(r: &StepReport) -> Self {
        StepRecord {
            step: r.step,
            tokens: r.tokens,
            lr: r.lr,
            sparsity_scale: r.sparsity_scale,
            loss: r.loss,
            terms: LossTerms(r.terms.iter().map(|(k, v)| (k.to_string(), *v)).collect()),
            l0: r.l0,
            fvu: r.fvu,
            dead_frac: r.dead_frac,
            grad_norm: r.grad_norm,
        }
    }
}

/// A validation: every [`ReconMetrics`] field beside the step.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ValRecord {
    /// Step at which the SAE was evaluated.
    pub step: u64,
    /// The metrics on the validation rows.
    #[serde(flatten)]
    pub metrics: ReconMetrics,
}

/// Loss terms by name; serialised as `loss_<name>` keys of the enclosing record.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct LossTerms(pub BTreeMap<String, f64>);

const LOSS_PREFIX: &str = "loss_";

impl Serialize for LossTerms {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut m = s.serialize_map(Some(self.0.len()))?;
        for (k, v) in &self.0 {
            m.serialize_entry(&format!("{LOSS_PREFIX}{k}"), v)?;
        }
        m.end()
    }
}

impl<'de> Deserialize<'de> for LossTerms {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let raw = BTreeMap::<String, Option<f64>>::deserialize(d)?;
        let mut terms = BTreeMap::new();
        for (k, v) in raw {
            let Some(name) = k.strip_prefix(LOSS_PREFIX) else {
                return Err(serde::de::Error::custom(format!("unknown field `{k}`")));
            };
            terms.insert(name.to_string(), v.unwrap_or(f64::NAN));
        }
        Ok(LossTerms(terms))
    }
}

/// JSON writes a non-finite number as `null`; read it back as NaN.
fn f64_or_nan<'de, D: serde::Deserializer<'de>>(d: D) -> std::result::Result<f64, D::Error> {
    Ok(Option::<f64>::deserialize(d)?.unwrap_or(f64::NAN))
}

/// `sweep.json`: the member directories of a run set, in training order.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SweepRecord {
    /// Directory names under the set's root.
    pub runs: Vec<String>,
}

/// The driver's part of a checkpoint (`trainer_state.json["extra"]`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CheckpointExtra {
    /// The data position ([`crate::fit::BatchSource::state`]).
    pub data: serde_json::Value,
}

/// `value` as JSON through a `serde_json::Value` (sorted keys; see the module docs).
fn record_json<T: Serialize>(value: &T, pretty: bool) -> Vec<u8> {
    let v = serde_json::to_value(value).expect("records serialise");
    if pretty {
        serde_json::to_vec_pretty(&v)
    } else {
        serde_json::to_vec(&v)
    }
    .expect("values serialise")
}

/// `value` as a JSON [`serde_json::Value`] in the form records are written, for
/// containers (such as a trainer state) that embed a record.
pub fn record_value<T: Serialize>(value: &T) -> serde_json::Value {
    serde_json::to_value(value).expect("records serialise")
}

/// Reads `path` as JSON of type `T`; errors name the file.
pub fn read_json<T: DeserializeOwned>(path: &Path, what: &str) -> Result<T> {
    let bytes = fs::read(path).map_err(|e| Error::io(path, e))?;
    let v: serde_json::Value = serde_json::from_slice(&bytes)
        .map_err(|e| Error::bad_file(path, format!("not valid JSON: {e}")))?;
    serde_json::from_value(v).map_err(|e| Error::bad_file(path, format!("not {what}: {e}")))
}

/// Writes `value` to `path` atomically as pretty JSON, fields in their declared order,
/// with a final newline (the form of `eval.json`).
pub fn write_json<T: Serialize>(path: &Path, value: &T) -> Result<()> {
    let mut bytes = serde_json::to_vec_pretty(value).expect("serialisable");
    bytes.push(b'\n');
    io::write_file_atomic(path, &bytes)
}

/// The directory of one run; see the module docs for its files.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RunDir {
    path: PathBuf,
}

impl RunDir {
    /// The run directory at `path` (nothing is read or created).
    pub fn new(path: impl Into<PathBuf>) -> Self {
        RunDir { path: path.into() }
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// `run.json`.
    pub fn run_file(&self) -> PathBuf {
        self.path.join(RUN_FILE)
    }

    /// `metrics.jsonl`.
    pub fn metrics_file(&self) -> PathBuf {
        self.path.join(METRICS_FILE)
    }

    /// `checkpoint/`.
    pub fn checkpoint_dir(&self) -> PathBuf {
        self.path.join(CHECKPOINT_DIR)
    }

    /// `sae/`.
    pub fn sae_dir(&self) -> PathBuf {
        self.path.join(SAE_DIR)
    }

    /// `eval.json`.
    pub fn eval_file(&self) -> PathBuf {
        self.path.join(EVAL_FILE)
    }

    /// `eval-heldout.json`.
    pub fn heldout_eval_file(&self) -> PathBuf {
        self.path.join(HELDOUT_EVAL_FILE)
    }

    /// Whether a run was started here (`run.json` exists).
    pub fn holds_run(&self) -> bool {
        self.run_file().exists()
    }

    /// Whether the run finished (its final SAE exists).
    pub fn is_finished(&self) -> bool {
        self.sae_dir().join("cfg.json").is_file()
    }

    /// Whether a checkpoint can be resumed from.
    pub fn has_checkpoint(&self) -> bool {
        self.checkpoint_dir().join("trainer_state.json").exists()
    }

    /// Starts a run here: fails if one was started already, checks the directory is
    /// writable, creates it and writes `run.json`.
    pub fn create<D: Serialize>(&self, record: &RunRecord<D>) -> Result<()> {
        if self.holds_run() {
            return Err(Error::bad_file(
                &self.path,
                "already holds a run; use --resume to continue it or choose another --out",
            ));
        }
        io::check_writable(&self.path)?;
        fs::create_dir_all(&self.path).map_err(|e| Error::io(&self.path, e))?;
        io::write_file_atomic(&self.run_file(), &record_json(record, true))
    }

    /// Reads `run.json` with the data described as `D`.
    pub fn read_record<D: DeserializeOwned>(&self) -> Result<RunRecord<D>> {
        read_json(&self.run_file(), "a saelab run record")
    }

    /// The SAE configuration as trained (`run.json`'s `sae`): `None` without a
    /// `run.json`, or when its `sae` entry is not a configuration this saelab reads (a
    /// reader then falls back to the SAE files). A `run.json` that is not JSON is an
    /// error.
    pub fn read_trained_config(&self) -> Result<Option<SaeConfig>> {
        #[derive(Deserialize)]
        struct SaeOnly {
            sae: serde_json::Value,
        }
        let path = self.run_file();
        if !path.is_file() {
            return Ok(None);
        }
        let bytes = fs::read(&path).map_err(|e| Error::io(&path, e))?;
        let v: serde_json::Value = serde_json::from_slice(&bytes)
            .map_err(|e| Error::bad_file(&path, format!("not valid JSON: {e}")))?;
        Ok(serde_json::from_value::<SaeOnly>(v)
            .ok()
            .and_then(|s| serde_json::from_value(s.sae).ok()))
    }

    /// Opens `metrics.jsonl` for appending (created if absent).
    pub fn open_log(&self) -> Result<MetricsLog> {
        let path = self.metrics_file();
        let file = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(|e| Error::io(&path, e))?;
        Ok(MetricsLog { file, path })
    }

    /// The records of `metrics.jsonl` (none if it does not exist). Blank lines and
    /// records of kinds this saelab does not know are skipped; a line that is not JSON,
    /// or a known record that does not parse, is an error naming the file and line.
    pub fn read_log(&self) -> Result<Vec<MetricsRecord>> {
        let path = self.metrics_file();
        let Ok(text) = fs::read_to_string(&path) else {
            return Ok(Vec::new());
        };
        let mut out = Vec::new();
        for (i, line) in text.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            let v: serde_json::Value = serde_json::from_str(line)
                .map_err(|e| Error::bad_file(&path, format!("line {}: not JSON: {e}", i + 1)))?;
            let kind = v.get("kind").and_then(|k| k.as_str()).unwrap_or_default();
            if !matches!(kind, "train" | "val") {
                continue;
            }
            let kind = kind.to_string();
            out.push(serde_json::from_value(v).map_err(|e| {
                Error::bad_file(&path, format!("line {}: not a {kind} record: {e}", i + 1))
            })?);
        }
        Ok(out)
    }

    /// Keeps only the `metrics.jsonl` lines written at or before `step` (those after a
    /// checkpoint, when the run resumes from it); lines without a step are dropped.
    pub fn truncate_log(&self, step: u64) -> Result<()> {
        #[derive(Deserialize)]
        struct At {
            step: u64,
        }
        let path = self.metrics_file();
        let Ok(text) = fs::read_to_string(&path) else {
            return Ok(());
        };
        let kept: String = text
            .lines()
            .filter(|l| serde_json::from_str::<At>(l).is_ok_and(|a| a.step <= step))
            .map(|l| format!("{l}\n"))
            .collect();
        io::write_file_atomic(&path, kept.as_bytes())
    }
}

/// `metrics.jsonl` open for appending.
pub struct MetricsLog {
    file: fs::File,
    path: PathBuf,
}

impl MetricsLog {
    /// Appends one record as one line.
    pub fn append(&mut self, record: &MetricsRecord) -> Result<()> {
        let mut line = record_json(record, false);
        line.push(b'\n');
        self.file
            .write_all(&line)
            .map_err(|e| Error::io(&self.path, e))
    }
}

/// The runs trained in one pass: the set's root directory itself for one run,
/// `root/<name>/` for each of several (listed in `root/sweep.json`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RunSet {
    root: PathBuf,
    names: Vec<String>,
    dirs: Vec<RunDir>,
}

impl RunSet {
    /// A new set of runs named `names` under `root` (nothing is written yet). Fails if
    /// `root` already holds a run or a set, or a name repeats.
    pub fn new(root: &Path, names: Vec<String>) -> Result<RunSet> {
        RunSet::ensure_unused(root)?;
        if names.is_empty() {
            return Err(Error::config("a run set needs at least one run"));
        }
        let mut seen = std::collections::HashSet::new();
        if let Some(n) = names.iter().find(|n| !seen.insert(n.as_str())) {
            return Err(Error::config(format!(
                "the sweep lists the configuration {n} twice"
            )));
        }
        let dirs = if names.len() == 1 {
            vec![RunDir::new(root)]
        } else {
            names.iter().map(|n| RunDir::new(root.join(n))).collect()
        };
        Ok(RunSet {
            root: root.to_path_buf(),
            names,
            dirs,
        })
    }

    /// Fails if `root` already holds a run or a set: a job checks this before its
    /// expensive preparations, and [`RunSet::new`] again.
    pub fn ensure_unused(root: &Path) -> Result<()> {
        for f in [RUN_FILE, SWEEP_FILE] {
            if root.join(f).exists() {
                return Err(Error::bad_file(
                    root,
                    "already holds a run; use --resume to continue it or choose another --out",
                ));
            }
        }
        Ok(())
    }

    /// The set started in `root`: the members listed in `root/sweep.json`, else the run
    /// in `root` itself (named after the directory).
    pub fn open(root: &Path) -> Result<RunSet> {
        let sweep = root.join(SWEEP_FILE);
        if !sweep.is_file() {
            let name = root
                .file_name()
                .unwrap_or_default()
                .to_string_lossy()
                .to_string();
            return Ok(RunSet {
                root: root.to_path_buf(),
                names: vec![name],
                dirs: vec![RunDir::new(root)],
            });
        }
        let rec: SweepRecord = read_json(&sweep, "a valid `runs` list")?;
        if rec.runs.is_empty() {
            return Err(Error::bad_file(&sweep, "the `runs` list is empty"));
        }
        let dirs = rec.runs.iter().map(|n| RunDir::new(root.join(n))).collect();
        Ok(RunSet {
            root: root.to_path_buf(),
            names: rec.runs,
            dirs,
        })
    }

    /// Records the members in `root/sweep.json` (several runs only; one run needs no
    /// list), creating `root`.
    pub fn write_sweep(&self) -> Result<()> {
        if self.names.len() > 1 {
            io::check_writable(&self.root)?;
            fs::create_dir_all(&self.root).map_err(|e| Error::io(&self.root, e))?;
            let rec = SweepRecord {
                runs: self.names.clone(),
            };
            io::write_file_atomic(&self.root.join(SWEEP_FILE), &record_json(&rec, true))?;
        }
        Ok(())
    }

    /// The set's directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The members' names, in training order.
    pub fn names(&self) -> &[String] {
        &self.names
    }

    /// The members' directories, in training order.
    pub fn dirs(&self) -> &[RunDir] {
        &self.dirs
    }

    /// Number of runs.
    pub fn len(&self) -> usize {
        self.names.len()
    }

    /// Whether the set is empty (never, for a set made by [`RunSet::new`] or
    /// [`RunSet::open`]).
    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn step_report() -> StepReport {
        StepReport {
            step: 20,
            tokens: 5120,
            lr: 3e-3,
            sparsity_scale: 0.5,
            loss: 1.25,
            terms: vec![("mse", 1.0), ("aux", 0.25)],
            l0: 4.0,
            fvu: 0.125,
            dead_frac: 0.0,
            grad_norm: Some(2.5),
        }
    }

    /// The line the untyped writer produced for `r` (a `json!` object, keys sorted).
    fn old_line(r: &StepReport) -> String {
        let mut v = serde_json::json!({
            "kind": "train", "step": r.step, "tokens": r.tokens, "lr": r.lr,
            "sparsity_scale": r.sparsity_scale, "loss": r.loss, "l0": r.l0,
            "fvu": r.fvu, "dead_frac": r.dead_frac,
        });
        for (name, value) in &r.terms {
            v[format!("loss_{name}")] = serde_json::json!(value);
        }
        if let Some(g) = r.grad_norm {
            v["grad_norm"] = serde_json::json!(g);
        }
        serde_json::to_string(&v).unwrap()
    }

    #[test]
    fn step_records_are_the_old_lines_and_read_back() {
        let mut r = step_report();
        for grad_norm in [Some(2.5), None] {
            r.grad_norm = grad_norm;
            let rec = MetricsRecord::Train(StepRecord::from(&r));
            let line = String::from_utf8(record_json(&rec, false)).unwrap();
            assert_eq!(line, old_line(&r));
            let back: MetricsRecord = serde_json::from_str(&line).unwrap();
            assert_eq!(back, rec);
            assert_eq!(back.step(), 20);
        }
    }

    #[test]
    fn val_and_run_records_are_the_old_bytes() {
        let m = ReconMetrics {
            tokens: 300,
            fvu: 0.41,
            explained_variance: 0.59,
            nmse: 0.39,
            mse: 0.0988,
            cos_sim: 0.7,
            l2_ratio: 1.7,
            rel_recon_bias: 1.33,
            l0: 2.0,
            dead_frac: 0.0,
            dense_frac: 0.625,
            fvu_refit: None,
        };
        let mut old = serde_json::to_value(&m).unwrap();
        old["kind"] = serde_json::json!("val");
        old["step"] = serde_json::json!(10);
        let rec = MetricsRecord::Val(ValRecord {
            step: 10,
            metrics: m,
        });
        assert_eq!(record_json(&rec, false), serde_json::to_vec(&old).unwrap());

        let data = crate::fit::DataSpec {
            paths: vec!["acts.npy".into()],
            tensor: None,
        };
        let train = TrainConfig {
            lr: 3e-3,
            grad_clip: Some(1.0),
            ..TrainConfig::default()
        };
        let sae = SaeConfig::new(crate::ArchConfig::default_for("topk", 8).unwrap(), 16, 64);
        let old = serde_json::json!({ "data": data, "train": train, "sae": sae });
        let rec = RunRecord {
            data: &data,
            sae,
            train,
        };
        assert_eq!(
            record_json(&rec, true),
            serde_json::to_vec_pretty(&old).unwrap()
        );
        let sweep = SweepRecord {
            runs: vec!["a".into(), "b".into()],
        };
        assert_eq!(
            record_json(&sweep, true),
            serde_json::to_vec_pretty(&serde_json::json!({ "runs": ["a", "b"] })).unwrap()
        );
    }

    #[test]
    fn a_null_loss_reads_as_nan_and_a_stray_key_is_refused() {
        let line = r#"{"dead_frac":0.0,"fvu":null,"kind":"train","l0":1.0,"loss":null,"loss_mse":null,"lr":0.001,"sparsity_scale":1.0,"step":3,"tokens":30}"#;
        let MetricsRecord::Train(r) = serde_json::from_str(line).unwrap() else {
            panic!("a train record")
        };
        assert!(r.loss.is_nan() && r.fvu.is_nan() && r.terms.0["mse"].is_nan());
        let stray = line.replace("\"l0\"", "\"l_zero\"");
        assert!(serde_json::from_str::<MetricsRecord>(&stray).is_err());
    }

    #[test]
    fn logs_append_read_skip_unknown_kinds_and_truncate() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = RunDir::new(tmp.path());
        assert!(dir.read_log().unwrap().is_empty());
        let mut log = dir.open_log().unwrap();
        for step in [10, 20, 30] {
            let mut r = step_report();
            r.step = step;
            log.append(&MetricsRecord::Train(StepRecord::from(&r)))
                .unwrap();
        }
        drop(log);
        let mut text = fs::read_to_string(dir.metrics_file()).unwrap();
        text.push_str("{\"kind\":\"val_model\",\"step\":30,\"ce_sae\":3.0}\n\n");
        fs::write(dir.metrics_file(), &text).unwrap();
        let steps: Vec<u64> = dir.read_log().unwrap().iter().map(|r| r.step()).collect();
        assert_eq!(steps, [10, 20, 30]);
        dir.truncate_log(20).unwrap();
        let steps: Vec<u64> = dir.read_log().unwrap().iter().map(|r| r.step()).collect();
        assert_eq!(steps, [10, 20]);
        fs::write(dir.metrics_file(), "{\"kind\":\"train\",\"step\":1}\n").unwrap();
        let e = dir.read_log().unwrap_err().to_string();
        assert!(e.contains("metrics.jsonl") && e.contains("line 1"), "{e}");
    }

    #[test]
    fn run_sets_refuse_a_used_root_and_repeated_names() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("set");
        let one = RunSet::new(&root, vec!["a".into()]).unwrap();
        assert_eq!(one.dirs(), [RunDir::new(&root)]);
        one.write_sweep().unwrap();
        assert!(!root.join(SWEEP_FILE).exists(), "one run needs no list");
        let e = RunSet::new(&root, vec!["a".into(), "a".into()]).unwrap_err();
        assert!(e.to_string().contains("a twice"), "{e}");
        let two = RunSet::new(&root, vec!["a".into(), "b".into()]).unwrap();
        two.write_sweep().unwrap();
        let opened = RunSet::open(&root).unwrap();
        assert_eq!(opened, two);
        let e = RunSet::new(&root, vec!["c".into()]).unwrap_err();
        assert!(e.to_string().contains("already holds a run"), "{e}");
        fs::write(root.join(SWEEP_FILE), "{\"runs\": 3}").unwrap();
        let e = RunSet::open(&root).unwrap_err().to_string();
        assert!(e.contains("sweep.json") && e.contains("runs"), "{e}");
    }
}
