//! Training on activations streamed from a model, with no cache
//! (`saelab_lm::stream::StreamSource`): one forward feeds the SAEs of every hook.
//!
//! Each run records its [`StreamSpec`] in `run.json`: the model and corpus with their
//! fingerprints, so that a resume can check it reads the same inputs, and the stream's
//! settings. Validation rows are computed from the corpus's held-out part at the start.

use std::path::PathBuf;
use std::sync::atomic::AtomicBool;

use saelab_core::config::SaeMetadata;
use saelab_core::fit::{self, Run, Validation};
use saelab_core::rundir::RunSet;
use saelab_core::store::ActivationStore;
use saelab_core::Matrix;
use saelab_lm::contexts::{documents_fingerprint, model_fingerprint, ContextOrder, ContextPlan};
use saelab_lm::model::HookedModel;
use saelab_lm::stream::{
    collect_rows, StreamOptions, StreamSource, StreamSpec, DEFAULT_WINDOW_CONTEXTS,
};
use saelab_lm::text::{HeldOut, Part};

use super::{
    fit_loop, member_name, sae_config, start_trainer, RunData, TrainJob, TrainOutcome,
    INIT_SAMPLE_ROWS,
};
use crate::error::{Error, Result};
use crate::event::{Event, OnEvent, Phase};
use crate::inputs;

/// Held-out rows computed for validation when streaming.
pub const DEFAULT_VAL_TOKENS: usize = 16_384;

/// The model and corpus a stream reads, and how.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StreamInput {
    /// The model (GGUF file or Hugging Face directory).
    pub model: PathBuf,
    /// The corpus: its train part is streamed, its held-out part validates.
    pub corpus: PathBuf,
    /// How the stream reads them.
    pub settings: StreamSettings,
}

/// How a stream reads its model and corpus.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StreamSettings {
    /// JSONL field holding the text.
    pub jsonl_field: String,
    /// Tokens per context.
    pub ctx_len: usize,
    /// Contexts per model forward.
    pub batch_contexts: usize,
    /// Contexts per shuffle window.
    pub window_contexts: usize,
    /// Held-out validation rows computed at the start.
    pub val_rows: usize,
    /// Train on BOS positions too.
    pub keep_bos: bool,
}

impl Default for StreamSettings {
    fn default() -> Self {
        StreamSettings {
            jsonl_field: "text".into(),
            ctx_len: 128,
            batch_contexts: 8,
            window_contexts: DEFAULT_WINDOW_CONTEXTS,
            val_rows: DEFAULT_VAL_TOKENS,
            keep_bos: false,
        }
    }
}

/// The hooks of a job's members, each once, and each member's stream index.
fn streams_of(hooks: impl Iterator<Item = String>) -> (Vec<String>, Vec<usize>) {
    let mut list: Vec<String> = Vec::new();
    let mut of = Vec::new();
    for h in hooks {
        let i = match list.iter().position(|x| *x == h) {
            Some(i) => i,
            None => {
                list.push(h);
                list.len() - 1
            }
        };
        of.push(i);
    }
    (list, of)
}

/// Trains the members of `job` on activations streamed from `input`.
pub(super) fn train(
    job: &TrainJob,
    input: &StreamInput,
    stop: &AtomicBool,
    on: &mut OnEvent,
) -> Result<TrainOutcome> {
    let (hooks, stream_of) = streams_of(job.members.iter().map(|m| {
        m.hook
            .clone()
            .expect("members of a streaming job have a hook")
    }));
    let train_cfg = &job.members[0].train;
    train_cfg.validate()?;
    RunSet::ensure_unused(&job.out)?;
    let s = &input.settings;
    let corpus = inputs::load_corpus(&input.corpus, &s.jsonl_field)?;
    let held_out = HeldOut::default();
    let spec = StreamSpec {
        model: input.model.clone(),
        model_fingerprint: model_fingerprint(&input.model)?,
        corpus: input.corpus.clone(),
        jsonl_field: s.jsonl_field.clone(),
        train_fingerprint: documents_fingerprint(&corpus.part(Part::Train, held_out)),
        hook: String::new(),
        ctx_len: s.ctx_len,
        batch_contexts: s.batch_contexts,
        window_contexts: s.window_contexts,
        keep_bos: s.keep_bos,
        seed: train_cfg.seed,
        val_rows: s.val_rows,
        held_out_every: held_out.every(),
        held_out_offset: held_out.offset(),
    };
    drop(corpus);
    let inputs = StreamInputs::open(&spec, false, on)?;
    for h in &hooks {
        inputs.model.hook(h)?;
    }
    let mut source = inputs.source(&spec, &hooks, train_cfg.batch_size, None)?;
    let d = inputs.model.d_model();
    let mut samples: Vec<Option<Matrix>> = vec![None; hooks.len()];
    let mut trainers = Vec::new();
    let mut names = Vec::new();
    for (m, &s) in job.members.iter().zip(&stream_of) {
        if samples[s].is_none() {
            samples[s] = Some(source.sample(s, INIT_SAMPLE_ROWS)?);
        }
        let metadata = SaeMetadata {
            model_name: input
                .model
                .file_stem()
                .map(|s| s.to_string_lossy().to_string()),
            hook_name: Some(hooks[s].clone()),
            context_size: Some(spec.ctx_len),
            prepend_bos: Some(true),
            dataset_path: Some(input.corpus.display().to_string()),
            ..Default::default()
        };
        let cfg = sae_config(m, d, metadata);
        names.push(member_name(m, &cfg));
        let sample = samples[s].as_ref().expect("just computed");
        trainers.push(start_trainer(m, cfg, sample)?);
    }
    drop(samples);
    let set = RunSet::new(&job.out, names)?;
    let stores = inputs.validation(&hooks, &spec, on)?;
    set.write_sweep()?;
    let mut runs = Vec::new();
    for ((trainer, dir), &s) in trainers.into_iter().zip(set.dirs()).zip(&stream_of) {
        let mut stream = spec.clone();
        stream.hook = hooks[s].clone();
        fit::create_run_dir(dir.path(), &RunData::Stream { stream }, &trainer)?;
        runs.push(Run {
            trainer,
            dir: dir.path().to_path_buf(),
        });
    }
    let vals = validations(&stores);
    let val_refs: Vec<Option<&Validation>> = vals.iter().map(Option::as_ref).collect();
    let last_val = fit_loop(
        &mut source,
        &val_refs,
        &mut runs,
        &stream_of,
        &set,
        stop,
        on,
    )?;
    Ok(TrainOutcome {
        set,
        last_val,
        model_tokens: Some(source.model_tokens()),
    })
}

/// Continues the streamed runs of `set` (one spec each, in order) from the data
/// position `state`.
pub(super) fn resume(
    set: &RunSet,
    specs: &[StreamSpec],
    mut runs: Vec<Run>,
    state: &serde_json::Value,
    stop: &AtomicBool,
    on: &mut OnEvent,
) -> Result<TrainOutcome> {
    if specs.iter().any(|s| !s.same_pass(&specs[0])) {
        return Err(Error::invalid(format!(
            "{}: the runs were not streamed from one pass over the model",
            set.root().display()
        )));
    }
    let (hooks, stream_of) = streams_of(specs.iter().map(|s| s.hook.clone()));
    let spec = &specs[0];
    let inputs = StreamInputs::open(spec, true, on)?;
    let batch_size = runs[0].trainer.train_config().batch_size;
    let mut source = inputs.source(spec, &hooks, batch_size, Some(state))?;
    let stores = inputs.validation(&hooks, spec, on)?;
    let vals = validations(&stores);
    let val_refs: Vec<Option<&Validation>> = vals.iter().map(Option::as_ref).collect();
    let last_val = fit_loop(&mut source, &val_refs, &mut runs, &stream_of, set, stop, on)?;
    Ok(TrainOutcome {
        set: set.clone(),
        last_val,
        model_tokens: Some(source.model_tokens()),
    })
}

/// The validation set of each stream (over all of its rows).
fn validations(stores: &[Option<ActivationStore>]) -> Vec<Option<Validation<'_>>> {
    stores
        .iter()
        .map(|s| {
            s.as_ref().map(|store| Validation {
                store,
                rows: 0..store.rows(),
            })
        })
        .collect()
}

/// The model and the contexts a stream reads: the training part and (if it packs into
/// a context) the held-out part.
struct StreamInputs {
    model: HookedModel,
    train: ContextPlan,
    held: Option<ContextPlan>,
}

impl StreamInputs {
    /// Loads them for `spec`. With `check`, the model and the training documents must
    /// still have the fingerprints the run started with.
    fn open(spec: &StreamSpec, check: bool, on: &mut OnEvent) -> Result<StreamInputs> {
        let corpus = inputs::load_corpus(&spec.corpus, &spec.jsonl_field)?;
        let held_out = HeldOut::new(spec.held_out_every, spec.held_out_offset)?;
        let train_docs = corpus.part(Part::Train, held_out);
        let held_docs = corpus.part(Part::HeldOut, held_out);
        if train_docs.is_empty() {
            return Err(Error::invalid(format!(
                "{}: the train part is empty ({} documents)",
                spec.corpus.display(),
                corpus.len()
            )));
        }
        if check {
            if documents_fingerprint(&train_docs) != spec.train_fingerprint {
                return Err(Error::invalid(format!(
                    "{}: the training documents changed since the run started; \
                     the stream cannot resume exactly",
                    spec.corpus.display()
                )));
            }
            if model_fingerprint(&spec.model)? != spec.model_fingerprint {
                return Err(Error::invalid(format!(
                    "{}: the model file changed since the run started",
                    spec.model.display()
                )));
            }
        }
        let model = inputs::load_model(&spec.model, on)?;
        let (tok, pack) = inputs::packing(&model, &spec.model, spec.ctx_len)?;
        let order = ContextOrder::Shuffled { seed: spec.seed };
        let train = ContextPlan::new(&tok, &train_docs, pack.clone(), order)
            .map_err(|e| Error::invalid(format!("{} (train part): {e}", spec.corpus.display())))?;
        let held = if held_docs.is_empty() {
            None
        } else {
            ContextPlan::new(&tok, &held_docs, pack, order).ok()
        };
        if held.is_none() {
            on(Event::Note(format!(
                "{} has no held-out context; training runs without validation",
                spec.corpus.display()
            )));
        }
        Ok(StreamInputs { model, train, held })
    }

    /// The training batches of `hooks`, from the start or from `state`.
    fn source(
        &self,
        spec: &StreamSpec,
        hooks: &[String],
        batch_size: usize,
        state: Option<&serde_json::Value>,
    ) -> Result<StreamSource<'_>> {
        Ok(StreamSource::new(
            &self.model,
            &self.train,
            StreamOptions {
                hooks: hooks.to_vec(),
                batch_size,
                batch_contexts: spec.batch_contexts,
                window_contexts: spec.window_contexts,
                keep_bos: spec.keep_bos,
                seed: spec.seed,
            },
            state,
        )?)
    }

    /// Held-out activations per hook (`val_rows` of them), as in-memory stores.
    fn validation(
        &self,
        hooks: &[String],
        spec: &StreamSpec,
        on: &mut OnEvent,
    ) -> Result<Vec<Option<ActivationStore>>> {
        let Some(plan) = self.held.as_ref().filter(|_| spec.val_rows > 0) else {
            return Ok(hooks.iter().map(|_| None).collect());
        };
        let _span = tracing::info_span!("validation", rows = spec.val_rows).entered();
        on(Event::Begin {
            phase: Phase::Validation,
            label: "held-out rows".into(),
            total: Some(spec.val_rows as u64),
            done: 0,
        });
        let ms = collect_rows(
            &self.model,
            plan,
            hooks,
            spec.keep_bos,
            spec.batch_contexts,
            spec.val_rows,
            |n| on(Event::Advance { done: n as u64 }),
        );
        on(Event::End);
        ms?.iter()
            .map(|m| Ok(Some(ActivationStore::from_matrix(m)?)))
            .collect()
    }
}
