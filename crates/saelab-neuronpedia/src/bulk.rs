//! Format (B): Neuronpedia's bulk-import layout.
//!
//! ```text
//! {out}/{model_id}/{source_id}/release.jsonl  model.jsonl  sourceset.jsonl  source.jsonl
//!                              features/batch-{n}.jsonl.gz      one Neuron row per latent
//!                              activations/batch-{n}.jsonl.gz   one Activation row per example
//!                              explanations/batch-{n}.jsonl.gz  one Explanation row per
//!                                                               explanation (if any)
//! ```
//!
//! Neuronpedia's importer inserts each line with `jsonb_to_recordset`, taking the first
//! line's keys as the column list, so every key is a Prisma column name of its table and
//! every line of a file has the same keys: the rows are structs whose fields are always
//! written (a missing value is `null` or `[]`, never an absent key). `index` is a
//! string; datetimes are ISO strings (UTC). A Neuron row is its batch entry of format
//! (A) with `maxActApprox` (the largest `maxValue` of its rows) and `topkCosSimIndices`
//! / `topkCosSimValues` (the ten nearest latents by decoder cosine, over all latents);
//! an Activation row is one example with `maxValue`, `maxValueTokenIndex` (first
//! argmax) and `minValue` computed from its rounded values. Activation ids are
//! `sl{hash}-{latent}-{k}`, the hash over the model id, source id and SAE fingerprint,
//! so that they are unique across exports and the same on a re-export (the importer
//! skips ids it already has).
//!
//! An Explanation row is one record of the features folder's `explanations.json`
//! (`saelab autointerp`) of a latent that has a Neuron row: `description` the text,
//! `typeName` `saelab_token-set` or `saelab_llm` (see [`type_name`]),
//! `explanationModelName` the LLM's model id (`saelab-token-set` for token sets),
//! `embedding` null, `notes` the scores in one line ([`notes`]), `authorId` and
//! `triggeredByUserId` the export's creator id, `createdAt` the export's time, as on
//! every other row. Its id is `{prefix}-{latent}-e{hash}`, the hash over the explainer
//! and the text: a re-export of the same explanation has the same id (the importer
//! skips it), a new text of the same explainer a new one.

#![allow(non_snake_case)]

use std::io::Write;
use std::path::Path;

use saelab_core::{Error, Result};
use saelab_features::explanations::{ExplanationRecord, ExplanationScore};
use serde::Serialize;

use crate::dashboard::{round5, Feature};

/// A `Neuron` row.
#[derive(Clone, Debug, Serialize)]
pub(crate) struct NeuronRow {
    pub modelId: String,
    pub layer: String,
    pub index: String,
    pub creatorId: String,
    pub createdAt: String,
    pub sourceSetName: Option<String>,
    pub maxActApprox: f64,
    pub hasVector: bool,
    pub vector: Vec<f64>,
    pub vectorLabel: Option<String>,
    pub vectorDefaultSteerStrength: f64,
    pub hookName: Option<String>,
    pub topkCosSimIndices: Vec<u32>,
    pub topkCosSimValues: Vec<f64>,
    pub neuron_alignment_indices: Vec<u32>,
    pub neuron_alignment_values: Vec<f64>,
    pub neuron_alignment_l1: Vec<f64>,
    pub correlated_neurons_indices: Vec<u32>,
    pub correlated_neurons_pearson: Vec<f64>,
    pub correlated_neurons_l1: Vec<f64>,
    pub correlated_features_indices: Vec<u32>,
    pub correlated_features_pearson: Vec<f64>,
    pub correlated_features_l1: Vec<f64>,
    pub neg_str: Vec<String>,
    pub neg_values: Vec<f64>,
    pub pos_str: Vec<String>,
    pub pos_values: Vec<f64>,
    pub frac_nonzero: f64,
    pub freq_hist_data_bar_heights: Vec<u64>,
    pub freq_hist_data_bar_values: Vec<f64>,
    pub logits_hist_data_bar_heights: Vec<u64>,
    pub logits_hist_data_bar_values: Vec<f64>,
    pub decoder_weights_dist: Vec<f64>,
}

/// An `Activation` row.
#[derive(Clone, Debug, Serialize)]
pub(crate) struct ActivationRow {
    pub id: String,
    pub tokens: Vec<String>,
    pub index: String,
    pub layer: String,
    pub modelId: String,
    pub maxValue: f64,
    pub maxValueTokenIndex: usize,
    pub minValue: f64,
    pub values: Vec<f64>,
    pub creatorId: String,
    pub dataSource: Option<String>,
    pub dataIndex: Option<String>,
    pub dfaValues: Vec<f64>,
    pub dfaTargetIndex: Option<i64>,
    pub dfaMaxValue: Option<f64>,
    pub createdAt: String,
    pub lossValues: Vec<f64>,
    pub logitContributions: Option<String>,
    pub binMin: f64,
    pub binMax: f64,
    pub binContains: f64,
    pub qualifyingTokenIndex: u32,
}

/// An `Explanation` row. `embedding` is always null (Neuronpedia's is a 256-d
/// OpenAI embedding, computed on its side).
#[derive(Clone, Debug, Serialize)]
pub(crate) struct ExplanationRow {
    pub id: String,
    pub modelId: String,
    pub layer: String,
    pub index: String,
    pub description: String,
    pub authorId: String,
    pub typeName: String,
    pub explanationModelName: String,
    pub embedding: Option<Vec<f64>>,
    pub notes: Option<String>,
    pub triggeredByUserId: String,
    pub createdAt: String,
}

/// The `typeName` of an explainer: `saelab_token-set` for `token-set`, `saelab_llm` for
/// every `llm:<model>` (the model goes in `explanationModelName`), `saelab_{name}` for
/// another name, its characters outside letters, digits, `-` and `_` as `-`. Neuronpedia
/// types are `{author}_{method}` (`oai_token-act-pair`, `np_max-act`).
pub fn type_name(explainer: &str) -> String {
    if explainer.starts_with("llm:") || explainer == "llm" {
        return "saelab_llm".into();
    }
    let method: String = explainer
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '-'
            }
        })
        .collect();
    format!("saelab_{method}")
}

/// The `explanationModelName` of an explainer: the model id of `llm:<model>`,
/// `saelab-token-set` for `token-set`, `saelab-{name}` for another.
pub fn explanation_model_name(explainer: &str) -> String {
    match explainer.strip_prefix("llm:") {
        Some(model) if !model.is_empty() => model.into(),
        _ => format!("saelab-{explainer}"),
    }
}

/// The `notes` of an explanation: its scores in one line, each
/// `{scorer} {metric} {value} (shuffled {s}, baseline {b}[, {k} failed])`, values to
/// three decimals and `—` for none, joined by `; `; none without scores.
pub fn notes(scores: &[ExplanationScore]) -> Option<String> {
    let f = |x: Option<f64>| x.map_or_else(|| "—".to_string(), |v| format!("{v:.3}"));
    let parts: Vec<String> = scores
        .iter()
        .map(|s| {
            let failed = if s.failed > 0 {
                format!(", {} failed", s.failed)
            } else {
                String::new()
            };
            format!(
                "{} {} {} (shuffled {}, baseline {:.3}{failed})",
                s.scorer,
                s.metric,
                f(s.value),
                f(s.shuffled),
                s.baseline
            )
        })
        .collect();
    (!parts.is_empty()).then(|| parts.join("; "))
}

/// The Explanation row of `r`, or `None` when its text is empty (Neuronpedia needs a
/// description).
pub(crate) fn explanation_row(c: &Common<'_>, r: &ExplanationRecord) -> Option<ExplanationRow> {
    let description = r.explanation.trim();
    if description.is_empty() {
        return None;
    }
    let hash = crate::fnv(&[&r.explainer, &r.explanation]);
    Some(ExplanationRow {
        id: format!("{}-{}-e{hash:016x}", c.id_prefix, r.latent),
        modelId: c.model_id.into(),
        layer: c.source_id.into(),
        index: r.latent.to_string(),
        description: description.into(),
        authorId: c.creator_id.into(),
        typeName: type_name(&r.explainer),
        explanationModelName: explanation_model_name(&r.explainer),
        embedding: None,
        notes: notes(&r.scores),
        triggeredByUserId: c.creator_id.into(),
        createdAt: c.created_at.into(),
    })
}

/// What every row of one export shares.
pub(crate) struct Common<'a> {
    pub model_id: &'a str,
    pub source_id: &'a str,
    pub source_set: &'a str,
    pub hook: &'a str,
    pub creator_id: &'a str,
    pub created_at: &'a str,
    /// Prefix of every activation id.
    pub id_prefix: &'a str,
}

/// The Neuron row of `f` and its Activation rows; `cos` the decoder neighbours.
pub(crate) fn rows(
    c: &Common<'_>,
    f: &Feature,
    cos: &[(u32, f32)],
) -> (NeuronRow, Vec<ActivationRow>) {
    let index = f.feature_index.to_string();
    let acts: Vec<ActivationRow> = f
        .activations
        .iter()
        .enumerate()
        .map(|(k, a)| {
            let (mut arg, mut max, mut min) = (0, f64::NEG_INFINITY, f64::INFINITY);
            for (t, &v) in a.values.iter().enumerate() {
                if v > max {
                    (arg, max) = (t, v);
                }
                min = min.min(v);
            }
            ActivationRow {
                id: format!("{}-{}-{k}", c.id_prefix, f.feature_index),
                tokens: a.tokens.clone(),
                index: index.clone(),
                layer: c.source_id.into(),
                modelId: c.model_id.into(),
                maxValue: max,
                maxValueTokenIndex: arg,
                minValue: min,
                values: a.values.clone(),
                creatorId: c.creator_id.into(),
                dataSource: None,
                dataIndex: None,
                dfaValues: Vec::new(),
                dfaTargetIndex: None,
                dfaMaxValue: None,
                createdAt: c.created_at.into(),
                lossValues: Vec::new(),
                logitContributions: None,
                binMin: a.bin_min,
                binMax: a.bin_max,
                binContains: a.bin_contains,
                qualifyingTokenIndex: a.qualifying_token_index,
            }
        })
        .collect();
    let max_act = acts.iter().map(|a| a.maxValue).fold(0.0, f64::max);
    let neuron = NeuronRow {
        modelId: c.model_id.into(),
        layer: c.source_id.into(),
        index,
        creatorId: c.creator_id.into(),
        createdAt: c.created_at.into(),
        sourceSetName: Some(c.source_set.into()),
        maxActApprox: max_act,
        hasVector: false,
        vector: Vec::new(),
        vectorLabel: None,
        // The schema's default (SAEDashboard writes it for every SAE latent).
        vectorDefaultSteerStrength: 10.0,
        hookName: Some(c.hook.into()),
        topkCosSimIndices: cos.iter().map(|&(j, _)| j).collect(),
        topkCosSimValues: cos.iter().map(|&(_, v)| round5(v as f64)).collect(),
        neuron_alignment_indices: f.neuron_alignment_indices.clone(),
        neuron_alignment_values: f.neuron_alignment_values.clone(),
        neuron_alignment_l1: f.neuron_alignment_l1.clone(),
        correlated_neurons_indices: f.correlated_neurons_indices.clone(),
        correlated_neurons_pearson: f.correlated_neurons_pearson.clone(),
        correlated_neurons_l1: f.correlated_neurons_l1.clone(),
        correlated_features_indices: f.correlated_features_indices.clone(),
        correlated_features_pearson: f.correlated_features_pearson.clone(),
        correlated_features_l1: f.correlated_features_l1.clone(),
        neg_str: f.neg_str.clone(),
        neg_values: f.neg_values.clone(),
        pos_str: f.pos_str.clone(),
        pos_values: f.pos_values.clone(),
        frac_nonzero: f.frac_nonzero,
        freq_hist_data_bar_heights: f.freq_hist_data_bar_heights.clone(),
        freq_hist_data_bar_values: f.freq_hist_data_bar_values.clone(),
        logits_hist_data_bar_heights: f.logits_hist_data_bar_heights.clone(),
        logits_hist_data_bar_values: f.logits_hist_data_bar_values.clone(),
        decoder_weights_dist: f.decoder_weights_dist.clone(),
    };
    (neuron, acts)
}

/// A `SourceRelease` row.
#[derive(Debug, Serialize)]
pub(crate) struct ReleaseRow {
    pub name: String,
    pub description: String,
    pub descriptionShort: Option<String>,
    pub creatorName: String,
    pub creatorNameShort: Option<String>,
    pub creatorId: String,
    pub creatorEmail: Option<String>,
    pub visibility: String,
    pub isNewUi: bool,
    pub featured: bool,
    pub urls: Vec<String>,
    pub defaultSourceSetName: Option<String>,
    pub defaultSourceId: Option<String>,
    pub defaultUmapSourceIds: Vec<String>,
    pub createdAt: String,
}

/// A `Model` row (created by the importer only if the model is absent).
#[derive(Debug, Serialize)]
pub(crate) struct ModelRow {
    pub id: String,
    pub instruct: bool,
    pub creatorId: String,
    pub displayNameShort: String,
    pub displayName: String,
    pub tlensId: Option<String>,
    pub dimension: Option<usize>,
    pub visibility: String,
    pub defaultSourceSetName: Option<String>,
    pub defaultSourceId: Option<String>,
    pub inferenceEnabled: bool,
    pub layers: u32,
    pub neuronsPerLayer: u32,
    pub owner: String,
    pub website: Option<String>,
    pub createdAt: String,
    pub updatedAt: String,
}

/// A `SourceSet` row.
#[derive(Debug, Serialize)]
pub(crate) struct SourceSetRow {
    pub modelId: String,
    pub name: String,
    pub creatorId: String,
    pub hasDashboards: bool,
    pub visibility: String,
    pub description: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub creatorName: String,
    pub urls: Vec<String>,
    pub creatorEmail: Option<String>,
    pub releaseName: Option<String>,
    pub defaultOfModelId: Option<String>,
    pub defaultRange: u32,
    pub defaultShowBreaks: bool,
    pub showDfa: bool,
    pub showCorrelated: bool,
    pub showHeadAttribution: bool,
    pub showUmap: bool,
    pub createdAt: String,
}

/// A `Source` row.
#[derive(Debug, Serialize)]
pub(crate) struct SourceRow {
    pub id: String,
    pub modelId: String,
    pub setName: String,
    pub creatorId: String,
    pub hasDashboards: bool,
    pub inferenceEnabled: bool,
    pub inferenceHosts: Vec<String>,
    pub saelensConfig: Option<String>,
    pub saelensRelease: Option<String>,
    pub saelensSaeId: Option<String>,
    pub hfRepoId: Option<String>,
    pub hfFolderId: Option<String>,
    pub visibility: String,
    pub defaultOfModelId: Option<String>,
    pub hasUmap: bool,
    pub hasUmapLogSparsity: bool,
    pub hasUmapClusters: bool,
    pub num_prompts: usize,
    pub num_tokens_in_prompt: usize,
    pub dataset: String,
    pub notes: Option<String>,
    pub createdAt: String,
}

/// Writes `rows` to `path`, one JSON object per line, gzip-compressed when `gzip`.
pub(crate) fn write_jsonl<T: Serialize>(path: &Path, rows: &[T], gzip: bool) -> Result<()> {
    let io = |e: std::io::Error| Error::io(path, e);
    let file = std::fs::File::create(path).map_err(io)?;
    let mut buf = std::io::BufWriter::with_capacity(1 << 20, file);
    if gzip {
        let mut g = flate2::write::GzEncoder::new(buf, flate2::Compression::new(5));
        lines(&mut g, rows).map_err(io)?;
        buf = g.finish().map_err(io)?;
    } else {
        lines(&mut buf, rows).map_err(io)?;
    }
    buf.flush().map_err(io)
}

fn lines<T: Serialize>(w: &mut impl Write, rows: &[T]) -> std::io::Result<()> {
    for r in rows {
        serde_json::to_writer(&mut *w, r)?;
        w.write_all(b"\n")?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn score(
        scorer: &str,
        value: Option<f64>,
        shuffled: Option<f64>,
        failed: usize,
    ) -> ExplanationScore {
        ExplanationScore {
            scorer: scorer.into(),
            metric: "auroc".into(),
            value,
            shuffled,
            baseline: 0.5,
            failed,
        }
    }

    fn common() -> Common<'static> {
        Common {
            model_id: "m",
            source_id: "2-saelab-res-576",
            source_set: "saelab-res-576",
            hook: "blocks.2.hook_resid_post",
            creator_id: "user",
            created_at: "2026-01-01T00:00:00.000Z",
            id_prefix: "sl0123",
        }
    }

    #[test]
    fn names_and_notes() {
        assert_eq!(type_name("token-set"), "saelab_token-set");
        assert_eq!(type_name("llm:local:Qwen.gguf#ab12"), "saelab_llm");
        assert_eq!(type_name("my explainer/2"), "saelab_my-explainer-2");
        assert_eq!(explanation_model_name("llm:gpt-4o-mini"), "gpt-4o-mini");
        assert_eq!(explanation_model_name("token-set"), "saelab-token-set");
        assert_eq!(notes(&[]), None);
        assert_eq!(
            notes(&[
                score("embedding", Some(0.6123), Some(0.48), 0),
                score("surprisal", None, Some(0.5), 3),
            ])
            .unwrap(),
            "embedding auroc 0.612 (shuffled 0.480, baseline 0.500); \
             surprisal auroc — (shuffled 0.500, baseline 0.500, 3 failed)"
        );
    }

    #[test]
    fn explanation_rows_have_every_column_and_stable_ids() {
        let c = common();
        let rec = |explainer: &str, text: &str| ExplanationRecord {
            latent: 7,
            explainer: explainer.into(),
            explanation: text.into(),
            source: "runs/ai".into(),
            scores: vec![score("embedding", Some(0.7), Some(0.4), 0)],
        };
        let a = explanation_row(&c, &rec("token-set", " whales ")).unwrap();
        let v = serde_json::to_value(&a).unwrap();
        let keys: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
        let mut want = [
            "id",
            "modelId",
            "layer",
            "index",
            "description",
            "authorId",
            "typeName",
            "explanationModelName",
            "embedding",
            "notes",
            "triggeredByUserId",
            "createdAt",
        ];
        let mut got = keys.clone();
        got.sort_unstable();
        want.sort_unstable();
        assert_eq!(got, want);
        assert_eq!(v["index"], "7");
        assert_eq!(v["layer"], "2-saelab-res-576");
        assert_eq!(v["description"], "whales");
        assert_eq!(v["embedding"], serde_json::Value::Null);
        assert_eq!(v["authorId"], "user");
        assert_eq!(v["triggeredByUserId"], "user");
        assert!(a.id.starts_with("sl0123-7-e"), "{}", a.id);
        // The same record, the same id; another explainer or text, another.
        assert_eq!(
            explanation_row(&c, &rec("token-set", " whales "))
                .unwrap()
                .id,
            a.id
        );
        assert_ne!(
            explanation_row(&c, &rec("llm:m", " whales ")).unwrap().id,
            a.id
        );
        assert_ne!(
            explanation_row(&c, &rec("token-set", "ships")).unwrap().id,
            a.id
        );
        // No row for an empty text.
        assert!(explanation_row(&c, &rec("token-set", "  ")).is_none());
    }
}
