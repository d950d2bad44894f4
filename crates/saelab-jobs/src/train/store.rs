//! Training on stored activations: activation files or a `saelab extract` cache, split
//! into training and validation rows, read as shuffled batches.

use std::path::Path;
use std::sync::atomic::AtomicBool;

use saelab_core::config::SaeMetadata;
use saelab_core::fit::{self, DataSpec, Run, StoreSource, Validation};
use saelab_core::rundir::RunSet;
use saelab_core::store::{ActivationStore, Split};
use saelab_core::Matrix;

use super::{
    fit_loop, member_name, sae_config, start_trainer, RunData, TrainJob, TrainOutcome,
    INIT_SAMPLE_ROWS,
};
use crate::error::{Error, Result};
use crate::event::{Event, OnEvent};

/// Trains the members of `job` on the rows of `data`.
pub(super) fn train(
    job: &TrainJob,
    data: &DataSpec,
    stop: &AtomicBool,
    on: &mut OnEvent,
) -> Result<TrainOutcome> {
    let store = data.open()?;
    let d = store.d();
    let metadata = cache_metadata(data, on).unwrap_or_default();
    let cfgs: Vec<_> = job
        .members
        .iter()
        .map(|m| sae_config(m, d, metadata.clone()))
        .collect();
    let names = job
        .members
        .iter()
        .zip(&cfgs)
        .map(|(m, c)| member_name(m, c))
        .collect();
    let set = RunSet::new(&job.out, names)?;
    let sample = init_sample(&store, job.members[0].train.val_fraction)?;
    let trainers = job
        .members
        .iter()
        .zip(cfgs)
        .map(|(m, cfg)| start_trainer(m, cfg, &sample))
        .collect::<Result<Vec<_>>>()?;
    drop(sample);
    set.write_sweep()?;
    let record = RunData::Store(data.clone());
    let mut runs = Vec::new();
    for (trainer, dir) in trainers.into_iter().zip(set.dirs()) {
        fit::create_run_dir(dir.path(), &record, &trainer)?;
        runs.push(Run {
            trainer,
            dir: dir.path().to_path_buf(),
        });
    }
    train_runs(&store, &set, runs, None, stop, on)
}

/// SAE metadata from the manifest of an activation cache, when the data is one; notes
/// an incomplete cache.
fn cache_metadata(data: &DataSpec, on: &mut OnEvent) -> Option<SaeMetadata> {
    let dir = data.paths.first()?;
    if !dir.join(saelab_lm::cache::MANIFEST).is_file() {
        return None;
    }
    let m = saelab_lm::cache::read_manifest(dir).ok()?;
    if !m.complete {
        on(Event::Note(format!(
            "{} is an incomplete activation cache ({} of {} rows); \
             `saelab extract` with the same arguments continues it",
            dir.display(),
            m.rows,
            m.target_rows
        )));
    }
    Some(SaeMetadata {
        model_name: Path::new(&m.model.path)
            .file_stem()
            .map(|s| s.to_string_lossy().to_string()),
        hook_name: Some(m.hook.clone()),
        context_size: Some(m.tokens.ctx_len),
        prepend_bos: Some(m.tokens.prepend_bos),
        dataset_path: Some(m.corpus.path.clone()),
        ..Default::default()
    })
}

/// Trains `runs` (new, or restored at the data position `state`) on `store`.
pub(super) fn train_runs(
    store: &ActivationStore,
    set: &RunSet,
    mut runs: Vec<Run>,
    state: Option<&serde_json::Value>,
    stop: &AtomicBool,
    on: &mut OnEvent,
) -> Result<TrainOutcome> {
    let cfg = runs[0].trainer.train_config().clone();
    // The split and the shuffle come from the first run: the others must agree.
    if let Some(r) = runs.iter().find(|r| {
        let c = r.trainer.train_config();
        c.seed != cfg.seed || c.val_fraction != cfg.val_fraction
    }) {
        return Err(Error::invalid(format!(
            "{}: differs from {} in seed or val_fraction; runs trained in one pass share \
             the data split and order",
            r.dir.display(),
            runs[0].dir.display()
        )));
    }
    let split = Split::new(store.rows(), cfg.val_fraction)?;
    let mut source = StoreSource::new(store, &split, cfg.batch_size, cfg.seed, state)?;
    let val = (!split.val.is_empty()).then(|| Validation {
        store,
        rows: split.val.clone(),
    });
    let stream_of = vec![0; runs.len()];
    let last_val = fit_loop(
        &mut source,
        &[val.as_ref()],
        &mut runs,
        &stream_of,
        set,
        stop,
        on,
    )?;
    Ok(TrainOutcome {
        set: set.clone(),
        last_val,
        model_tokens: None,
    })
}

/// Evenly spaced rows of the training range (never the validation rows).
fn init_sample(store: &ActivationStore, val_fraction: f64) -> Result<Matrix> {
    let split = Split::new(store.rows(), val_fraction)?;
    let n = split.train.len().min(INIT_SAMPLE_ROWS);
    if n == 0 {
        return Err(Error::invalid(
            "no training rows after holding out the validation split",
        ));
    }
    let step = split.train.len() as f64 / n as f64;
    let rows: Vec<usize> = (0..n)
        .map(|i| split.train.start + (i as f64 * step) as usize)
        .collect();
    let mut m = Matrix::zeros(n, store.d());
    store.read_rows(&rows, &mut m)?;
    Ok(m)
}
