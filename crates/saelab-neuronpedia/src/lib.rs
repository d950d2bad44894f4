//! `saelab-neuronpedia`: a features folder (`saelab features`, read through
//! [`saelab_features::Features`]) exported for Neuronpedia, in the two layouts of
//! `docs/neuronpedia.md`:
//!
//! - (A) [`dashboard`]: SAEDashboard's Neuronpedia runner output, `batch-{n}.json` with
//!   `n_features_at_a_time` latents each, `skipped_indexes.json` (the dead latents) and
//!   `run_settings.json`, in `out/`;
//! - (B) [`bulk`]: Neuronpedia's bulk-import layout (`release.jsonl`, `model.jsonl`,
//!   `sourceset.jsonl`, `source.jsonl`, `features/batch-{n}.jsonl.gz`,
//!   `activations/batch-{n}.jsonl.gz`, and `explanations/batch-{n}.jsonl.gz` when the
//!   folder has explanations from `saelab autointerp`) in `out/{model_id}/{source_id}/`.
//!
//! Both come from the same per-latent entries, so a Neuron row is its batch entry plus
//! the columns only the database has. Batches hold the latents that fire, in index
//! order (SAEDashboard leaves the dead ones to `skipped_indexes.json`). The export is
//! refused for a folder made from another SAE, and the output folder appears complete
//! or not at all (`saelab_core::io::write_dir_atomic`). `scripts/check_neuronpedia.py`
//! checks every invariant of the schema on the result.

#![warn(missing_docs)]

pub mod bulk;
pub mod dashboard;
pub mod text;
mod time;

use std::path::{Path, PathBuf};

use saelab_core::io::write_dir_atomic;
use saelab_core::rundir::write_json;
use saelab_core::{Error, Result, Sae};
use saelab_features::explanations::{self, read_explanations};
use saelab_features::{Features, LatentRecord};
use saelab_lm::contexts::tokenizer_for_model;
use serde_json::json;

use crate::bulk::{
    explanation_row, rows, write_jsonl, ActivationRow, Common, ExplanationRow, ModelRow, NeuronRow,
    ReleaseRow, SourceRow, SourceSetRow,
};
use crate::dashboard::{Batch, Feature, Inputs};

/// The `creatorId` SAEDashboard falls back to when it is given none (the user that
/// Neuronpedia's own bulk imports are made under).
pub const DEFAULT_CREATOR_ID: &str = "clkht01d40000jv08hvalcvly";

/// Explanation rows per `explanations/batch-{n}.jsonl.gz` file.
pub const EXPLANATIONS_PER_FILE: usize = 4096;

/// The `exporter` field of `run_settings.json`: marks a folder this crate wrote, which
/// a later export may replace.
pub const EXPORTER: &str = "saelab export-neuronpedia";

/// What to export, and under which Neuronpedia names.
#[derive(Clone, Debug, PartialEq)]
pub struct ExportRequest {
    /// The features folder.
    pub features: PathBuf,
    /// The output folder (created; an earlier export there is replaced).
    pub out: PathBuf,
    /// Neuronpedia's model id (e.g. `smollm2-135m-instruct`).
    pub model_id: String,
    /// The source set name; default `saelab-{hook kind}-{width}` (e.g. `saelab-res-9k`).
    pub source_set: Option<String>,
    /// The layer; default the `N` of the hook's `blocks.N.`.
    pub layer: Option<u32>,
    /// `creatorName` of the release and source set.
    pub creator_name: String,
    /// `creatorId` of every row ([`DEFAULT_CREATOR_ID`] by default).
    pub creator_id: String,
    /// The release name; default the source set name.
    pub release: Option<String>,
    /// The model whose tokenizer gives the token strings; default the model path in the
    /// folder's `features.json`.
    pub model: Option<PathBuf>,
    /// Latents per batch file (SAEDashboard's `n_features_at_a_time`).
    pub batch_size: usize,
}

impl ExportRequest {
    /// A request with the defaults: names from the hook, creator `saelab` with
    /// [`DEFAULT_CREATOR_ID`], the folder's own model, 128 latents per batch.
    pub fn new(features: PathBuf, out: PathBuf, model_id: impl Into<String>) -> Self {
        ExportRequest {
            features,
            out,
            model_id: model_id.into(),
            source_set: None,
            layer: None,
            creator_name: "saelab".into(),
            creator_id: DEFAULT_CREATOR_ID.into(),
            release: None,
            model: None,
            batch_size: 128,
        }
    }
}

/// What an export wrote.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExportSummary {
    /// Latents in the batches (those that fire).
    pub latents: usize,
    /// Dead latents, listed in `skipped_indexes.json`.
    pub skipped: usize,
    /// Batch files of each layout.
    pub batches: usize,
    /// Example contexts (Activation rows).
    pub activations: usize,
    /// Explanation rows (records of `explanations.json`).
    pub explanations: usize,
    /// Records of `explanations.json` left out: of a dead latent (which has no Neuron
    /// row to belong to) or with an empty text.
    pub explanations_left_out: usize,
    /// The source id (`{layer}-{source set}`).
    pub source_id: String,
    /// The bulk-import folder, `out/{model_id}/{source_id}`.
    pub bulk_dir: PathBuf,
}

/// The default source set name for an SAE on `hook` with `n` latents:
/// `saelab-{kind}-{width}`, the kind `res`, `respre`, `resmid`, `mlp`, `att` or the
/// hook's own name, the width in thousands (`9k`) when a multiple of 1024.
pub fn default_source_set(hook: &str, n: usize) -> String {
    let point = hook_point(hook);
    let kind = match point {
        "hook_resid_post" => "res".to_string(),
        "hook_resid_pre" => "respre".into(),
        "hook_resid_mid" => "resmid".into(),
        "hook_mlp_out" => "mlp".into(),
        "hook_attn_out" => "att".into(),
        other => other
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() {
                    c.to_ascii_lowercase()
                } else {
                    '-'
                }
            })
            .collect(),
    };
    let width = if n.is_multiple_of(1024) && n > 0 {
        format!("{}k", n / 1024)
    } else {
        n.to_string()
    };
    format!("saelab-{kind}-{width}")
}

/// The hook point without its `blocks.N.` prefix.
fn hook_point(hook: &str) -> &str {
    hook.strip_prefix("blocks.")
        .and_then(|r| r.split_once('.'))
        .filter(|(n, _)| n.parse::<u32>().is_ok())
        .map_or(hook, |(_, p)| p)
}

/// The `N` of a hook `blocks.N.…`.
pub fn hook_layer(hook: &str) -> Option<u32> {
    hook.strip_prefix("blocks.")?
        .split('.')
        .next()?
        .parse()
        .ok()
}

/// A Neuronpedia id: non-empty, ASCII letters, digits, `-`, `_` and `.`, not only dots
/// (it is a folder name of the bulk layout and part of URLs).
fn check_id(what: &str, id: &str) -> Result<()> {
    let ok = !id.is_empty()
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        && id.chars().any(|c| c != '.');
    if ok {
        Ok(())
    } else {
        Err(Error::config(format!(
            "{what} {id:?} is not a Neuronpedia id (use letters, digits, '-', '_', '.')"
        )))
    }
}

/// FNV-1a (64 bits) of `parts`, each followed by a 0 byte.
fn fnv(parts: &[&str]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for p in parts {
        for &b in p.as_bytes().iter().chain(&[0u8]) {
            h ^= b as u64;
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    h
}

/// Writes `value` as compact JSON (the output folder as a whole is atomic).
fn write_compact<T: serde::Serialize>(path: &Path, value: &T) -> Result<()> {
    let bytes = serde_json::to_vec(value).map_err(|e| Error::io(path, e.into()))?;
    std::fs::write(path, bytes).map_err(|e| Error::io(path, e))
}

/// Refuses an existing `out` that is not an earlier export.
fn check_out(out: &Path) -> Result<()> {
    if !out.exists() {
        return Ok(());
    }
    let settings = out.join("run_settings.json");
    let ours = std::fs::read(&settings)
        .ok()
        .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
        .is_some_and(|v| v["exporter"] == EXPORTER);
    if ours {
        Ok(())
    } else {
        Err(Error::bad_file(
            out,
            "exists and is not an earlier saelab Neuronpedia export; choose another --out",
        ))
    }
}

/// Exports the features folder `req.features`, made from `sae`, into `req.out`.
/// Errors (one line, naming the file): a folder of another SAE, a corrupt features
/// file, a tokenizer that does not match the folder's vocabulary, an `out` that is
/// something else.
pub fn export(req: &ExportRequest, sae: &Sae) -> Result<ExportSummary> {
    if req.batch_size == 0 {
        return Err(Error::config("the batch size must be at least 1"));
    }
    check_id("the model id", &req.model_id)?;
    let f = Features::open_for(&req.features, sae)?;
    let s = &f.manifest().settings;
    let n = f.n_latents();
    let records = read_explanations(&req.features)?;
    if let Some(r) = records.iter().find(|r| r.latent as usize >= n) {
        return Err(Error::bad_file(
            explanations::path(&req.features),
            format!(
                "an explanation of latent {}, outside the SAE's {n} latents",
                r.latent
            ),
        ));
    }
    let w_dec = &sae.param("W_dec")?.data;
    let d = sae.cfg.d_out;
    if w_dec.len() != n * d {
        return Err(Error::config(format!(
            "the SAE's W_dec holds {} values, not {n} × {d}",
            w_dec.len()
        )));
    }
    let layer = match req.layer {
        Some(l) => l,
        None => hook_layer(&s.hook).ok_or_else(|| {
            Error::config(format!(
                "cannot tell the layer from the hook {}; pass --layer",
                s.hook
            ))
        })?,
    };
    let source_set = req
        .source_set
        .clone()
        .unwrap_or_else(|| default_source_set(&s.hook, n));
    check_id("the source set", &source_set)?;
    let release = req.release.clone().unwrap_or_else(|| source_set.clone());
    let source_id = format!("{layer}-{source_set}");
    check_out(&req.out)?;

    let model_path = req
        .model
        .clone()
        .unwrap_or_else(|| PathBuf::from(&s.model.path));
    if !model_path.exists() {
        return Err(Error::bad_file(
            &model_path,
            "the model named in features.json is not there (its tokenizer gives the \
             token strings); pass --model",
        ));
    }
    let tok = tokenizer_for_model(&model_path).map_err(|e| match e {
        saelab_lm::Error::Core(e) => e,
        other => Error::bad_file(&model_path, other.to_string()),
    })?;
    let vocab = f.vocab()?;
    let strings = text::display_strings(&vocab, &tok, &model_path)?;
    let tokens = f.tokens()?;
    let stats_dir = f.layout().dir().join("stats");
    let inputs = Inputs {
        tokens: &tokens,
        ctx_len: s.ctx_len,
        strings: &strings,
        w_dec,
        d,
        n_prompts_total: s.contexts,
        dataset: s.corpus.path.clone(),
        stats_dir: &stats_dir,
    };
    let created_at = time::now_iso();
    let id_prefix = format!(
        "sl{:016x}",
        fnv(&[&req.model_id, &source_id, &s.sae.fingerprint])
    );
    let common = Common {
        model_id: &req.model_id,
        source_id: &source_id,
        source_set: &source_set,
        hook: &s.hook,
        creator_id: &req.creator_id,
        created_at: &created_at,
        id_prefix: &id_prefix,
    };
    let rel = Path::new(&req.model_id).join(&source_id);
    let mut summary = ExportSummary {
        latents: 0,
        skipped: 0,
        batches: 0,
        activations: 0,
        explanations: 0,
        explanations_left_out: 0,
        source_id: source_id.clone(),
        bulk_dir: req.out.join(&rel),
    };

    write_dir_atomic(&req.out, |tmp| {
        let bulk = tmp.join(&rel);
        for sub in ["features", "activations"] {
            let d = bulk.join(sub);
            std::fs::create_dir_all(&d).map_err(|e| Error::io(&d, e))?;
        }
        let mut skipped = Vec::new();
        let mut pending: Vec<LatentRecord> = Vec::new();
        let flush = |pending: &mut Vec<LatentRecord>, summary: &mut ExportSummary| {
            let b = summary.batches;
            let mut features: Vec<Feature> = Vec::with_capacity(pending.len());
            let mut neurons: Vec<NeuronRow> = Vec::with_capacity(pending.len());
            let mut acts: Vec<ActivationRow> = Vec::new();
            for rec in pending.drain(..) {
                let feat = inputs.feature(&rec, s.positions)?;
                let cos: Vec<(u32, f32)> = rec
                    .decoder_neighbours
                    .iter()
                    .map(|nb| (nb.latent, nb.cosine))
                    .collect();
                let (row, a) = rows(&common, &feat, &cos);
                neurons.push(row);
                acts.extend(a);
                features.push(feat);
            }
            summary.latents += features.len();
            summary.activations += acts.len();
            let name = format!("batch-{b}");
            write_jsonl(
                &bulk.join("features").join(format!("{name}.jsonl.gz")),
                &neurons,
                true,
            )?;
            write_jsonl(
                &bulk.join("activations").join(format!("{name}.jsonl.gz")),
                &acts,
                true,
            )?;
            write_compact(
                &tmp.join(format!("{name}.json")),
                &Batch {
                    model_id: req.model_id.clone(),
                    layer,
                    sae_set: source_set.clone(),
                    sae_id_suffix: None,
                    features,
                },
            )?;
            summary.batches += 1;
            Ok::<(), Error>(())
        };
        for i in 0..n {
            let rec = f.latent(i)?;
            if rec.count == 0 {
                skipped.push(i);
                continue;
            }
            pending.push(rec);
            if pending.len() == req.batch_size {
                flush(&mut pending, &mut summary)?;
            }
        }
        if !pending.is_empty() {
            flush(&mut pending, &mut summary)?;
        }
        summary.skipped = skipped.len();
        let (n_rows, left_out) = write_explanations(&bulk, &common, &records, &skipped)?;
        summary.explanations = n_rows;
        summary.explanations_left_out = left_out;

        write_json(
            &tmp.join("skipped_indexes.json"),
            &json!({
                "model_id": req.model_id,
                "layer": layer.to_string(),
                "sae_set": source_set,
                // saelab skips exactly the latents that never fire, not those under a
                // log-density threshold.
                "log_sparsity": null,
                "skipped_indexes": skipped,
            }),
        )?;
        write_json(
            &tmp.join("run_settings.json"),
            &json!({
                "exporter": EXPORTER,
                "saelab_version": env!("CARGO_PKG_VERSION"),
                "model_id": req.model_id,
                "layer": layer,
                "sae_set": source_set,
                "np_sae_id_suffix": null,
                "source_id": source_id,
                "release": release,
                "hook_name": s.hook,
                "sae_path": s.sae.path,
                "sae_fingerprint": s.sae.fingerprint,
                "sae_architecture": s.sae.architecture,
                "d_sae": n,
                "features_dir": req.features.display().to_string(),
                "model_path": model_path.display().to_string(),
                "huggingface_dataset_path": s.corpus.path,
                "corpus_part": s.corpus.part,
                "n_prompts_total": s.contexts,
                "n_tokens_in_prompt": s.ctx_len,
                "n_positions": s.positions,
                "d_vocab": s.model.d_vocab,
                "seed": s.seed,
                "n_features_at_a_time": req.batch_size,
                "top_acts_group_size": s.stats.top,
                "n_quantiles": s.stats.intervals,
                "quantile_group_size": s.stats.interval_samples,
                "final_norm_folded": s.tables.final_norm_folded,
                "correlated_features": "Jaccard index over active positions, over all \
                    latents (correlated_features_l1); no Pearson",
                "batches": summary.batches,
                "latents_exported": summary.latents,
                "dead_latents": summary.skipped,
                "explanations": summary.explanations,
                "explanations_left_out": summary.explanations_left_out,
            }),
        )?;
        write_metadata(
            &bulk,
            &Meta {
                req,
                source_set: &source_set,
                source_id: &source_id,
                release: &release,
                created_at: &created_at,
                f: &f,
            },
        )
    })?;
    Ok(summary)
}

/// Writes the Explanation rows of `records` (those of live latents with a text, by
/// latent then explainer, each id once) into `bulk/explanations/batch-{n}.jsonl.gz`,
/// [`EXPLANATIONS_PER_FILE`] rows a file; nothing, not even the folder, when there is
/// none. Returns the rows written and the records left out.
fn write_explanations(
    bulk: &Path,
    common: &Common<'_>,
    records: &[saelab_features::explanations::ExplanationRecord],
    dead: &[usize],
) -> Result<(usize, usize)> {
    let mut sorted: Vec<_> = records.iter().collect();
    sorted.sort_by(|a, b| (a.latent, &a.explainer).cmp(&(b.latent, &b.explainer)));
    let mut seen = std::collections::HashSet::new();
    let rows: Vec<ExplanationRow> = sorted
        .into_iter()
        .filter(|r| dead.binary_search(&(r.latent as usize)).is_err())
        .filter_map(|r| explanation_row(common, r))
        .filter(|row| seen.insert(row.id.clone()))
        .collect();
    if !rows.is_empty() {
        let dir = bulk.join("explanations");
        std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
        for (k, chunk) in rows.chunks(EXPLANATIONS_PER_FILE).enumerate() {
            write_jsonl(&dir.join(format!("batch-{k}.jsonl.gz")), chunk, true)?;
        }
    }
    Ok((rows.len(), records.len() - rows.len()))
}

struct Meta<'a> {
    req: &'a ExportRequest,
    source_set: &'a str,
    source_id: &'a str,
    release: &'a str,
    created_at: &'a str,
    f: &'a Features,
}

/// `release.jsonl`, `model.jsonl`, `sourceset.jsonl`, `source.jsonl` (one row each).
fn write_metadata(dir: &Path, m: &Meta<'_>) -> Result<()> {
    let s = &m.f.manifest().settings;
    let req = m.req;
    let at = || m.created_at.to_string();
    let description = format!(
        "saelab {} SAE, {} latents, on {} of {}",
        s.sae.architecture, s.sae.n_latents, s.hook, s.model.name
    );
    let lower = req.model_id.to_ascii_lowercase();
    write_jsonl(
        &dir.join("release.jsonl"),
        &[ReleaseRow {
            name: m.release.into(),
            description: description.clone(),
            descriptionShort: Some(description.clone()),
            creatorName: req.creator_name.clone(),
            creatorNameShort: Some(req.creator_name.clone()),
            creatorId: req.creator_id.clone(),
            creatorEmail: None,
            visibility: "PUBLIC".into(),
            isNewUi: false,
            featured: false,
            urls: Vec::new(),
            defaultSourceSetName: Some(m.source_set.into()),
            defaultSourceId: Some(m.source_id.into()),
            defaultUmapSourceIds: Vec::new(),
            createdAt: at(),
        }],
        false,
    )?;
    write_jsonl(
        &dir.join("model.jsonl"),
        &[ModelRow {
            id: req.model_id.clone(),
            instruct: lower.ends_with("-it") || lower.contains("instruct"),
            creatorId: req.creator_id.clone(),
            displayNameShort: req.model_id.clone(),
            displayName: req.model_id.clone(),
            tlensId: None,
            dimension: Some(s.model.d_model),
            visibility: "PUBLIC".into(),
            defaultSourceSetName: Some(m.source_set.into()),
            defaultSourceId: Some(m.source_id.into()),
            inferenceEnabled: false,
            // Not recorded in a features folder; SAEDashboard writes 0 too.
            layers: 0,
            neuronsPerLayer: 0,
            owner: String::new(),
            website: None,
            createdAt: at(),
            updatedAt: at(),
        }],
        false,
    )?;
    write_jsonl(
        &dir.join("sourceset.jsonl"),
        &[SourceSetRow {
            modelId: req.model_id.clone(),
            name: m.source_set.into(),
            creatorId: req.creator_id.clone(),
            hasDashboards: true,
            visibility: "PUBLIC".into(),
            description,
            kind: String::new(),
            creatorName: req.creator_name.clone(),
            urls: Vec::new(),
            creatorEmail: None,
            releaseName: Some(m.release.into()),
            defaultOfModelId: None,
            defaultRange: 1,
            defaultShowBreaks: true,
            showDfa: false,
            showCorrelated: true,
            showHeadAttribution: false,
            showUmap: false,
            createdAt: at(),
        }],
        false,
    )?;
    write_jsonl(
        &dir.join("source.jsonl"),
        &[SourceRow {
            id: m.source_id.into(),
            modelId: req.model_id.clone(),
            setName: m.source_set.into(),
            creatorId: req.creator_id.clone(),
            hasDashboards: true,
            inferenceEnabled: false,
            inferenceHosts: Vec::new(),
            saelensConfig: None,
            saelensRelease: None,
            saelensSaeId: None,
            hfRepoId: None,
            hfFolderId: None,
            visibility: "PUBLIC".into(),
            defaultOfModelId: None,
            hasUmap: false,
            hasUmapLogSparsity: false,
            hasUmapClusters: false,
            num_prompts: s.contexts,
            num_tokens_in_prompt: s.ctx_len,
            dataset: s.corpus.path.clone(),
            notes: Some(format!(
                "saelab features: {} non-BOS positions in {} contexts of {} tokens \
                 (the denominator of frac_nonzero); correlated features are \
                 co-occurrence Jaccard neighbours over all latents",
                s.positions, s.contexts, s.ctx_len
            )),
            createdAt: at(),
        }],
        false,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_from_the_hook() {
        assert_eq!(hook_layer("blocks.15.hook_resid_post"), Some(15));
        assert_eq!(hook_layer("hook_embed"), None);
        assert_eq!(
            default_source_set("blocks.15.hook_resid_post", 9216),
            "saelab-res-9k"
        );
        assert_eq!(
            default_source_set("blocks.2.hook_mlp_out", 576),
            "saelab-mlp-576"
        );
        assert_eq!(
            default_source_set("blocks.2.ln2.hook_normalized", 1024),
            "saelab-ln2-hook-normalized-1k"
        );
        assert!(check_id("x", "smollm2-135m").is_ok());
        for bad in ["", "..", "a/b", "a b"] {
            assert!(check_id("x", bad).is_err(), "{bad}");
        }
        assert_ne!(fnv(&["a", "bc"]), fnv(&["ab", "c"]));
    }
}
