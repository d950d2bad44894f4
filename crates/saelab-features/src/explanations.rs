//! `explanations.json` in a features folder: the explanations `saelab autointerp` wrote
//! for its latents, each with its scores beside the shuffled-explanation control and
//! the constant-answer baseline, so that the dashboard can show and search them and the
//! Neuronpedia export can carry them. One record per (latent, explainer): a later run of
//! the same explainer replaces its records (adding to their scores when its explanation
//! is the same) and leaves the others'.
//!
//! ```json
//! {"version": 1, "records": [{"latent": 7, "explainer": "token-set",
//!   "explanation": "\" the\", \" a\"", "source": "runs/autointerp/x",
//!   "scores": [{"scorer": "embedding", "metric": "auroc", "value": 0.61,
//!               "shuffled": 0.48, "baseline": 0.5, "failed": 0}]}]}
//! ```

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use saelab_core::io::write_file_atomic;
use saelab_core::{Error, Result};
use serde::{Deserialize, Serialize};

/// The file's name in a features folder.
pub const FILE: &str = "explanations.json";
/// The version this code writes and reads.
pub const VERSION: u32 = 1;

/// One explanation of one latent, with its scores.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExplanationRecord {
    /// The latent.
    pub latent: u32,
    /// Who wrote it: `token-set`, or `llm:<model>`.
    pub explainer: String,
    /// The explanation.
    pub explanation: String,
    /// The autointerp output folder it came from.
    pub source: String,
    /// Its scores, one per scorer.
    pub scores: Vec<ExplanationScore>,
}

/// One scorer's verdict on an explanation.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExplanationScore {
    /// `detection`, `fuzz`, `intruder`, `surprisal` or `embedding`.
    pub scorer: String,
    /// `balanced_accuracy`, `accuracy` or `auroc`.
    pub metric: String,
    /// The metric of this explanation (none: no usable item).
    pub value: Option<f64>,
    /// The metric of another latent's explanation on this latent's items.
    pub shuffled: Option<f64>,
    /// The metric of a constant answer, a random ranking or a random guess.
    pub baseline: f64,
    /// Items (intruder: prompts) without a usable answer, real and shuffled together.
    pub failed: usize,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileBody {
    version: u32,
    records: Vec<ExplanationRecord>,
}

/// `explanations.json` of the features folder `dir`.
pub fn path(dir: &Path) -> PathBuf {
    dir.join(FILE)
}

/// The records of `dir`'s `explanations.json`, by latent then explainer; none when the
/// folder has no such file. A corrupt file or another version is an error naming it.
pub fn read_explanations(dir: &Path) -> Result<Vec<ExplanationRecord>> {
    let p = path(dir);
    let bytes = match std::fs::read(&p) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(Error::io(&p, e)),
    };
    let body: FileBody =
        serde_json::from_slice(&bytes).map_err(|e| Error::bad_file(&p, format!("corrupt: {e}")))?;
    if body.version != VERSION {
        return Err(Error::bad_file(
            &p,
            format!("version {} (this saelab reads {VERSION})", body.version),
        ));
    }
    Ok(body.records)
}

/// Merges `records` into `dir`'s `explanations.json` (atomically): each replaces the
/// record of the same latent and explainer, if any, keeping that record's scores by
/// scorers the new one lacks when the two explanations are the same text (a later run
/// with other scorers adds to the scores); the other records stay.
pub fn merge_explanations(dir: &Path, records: Vec<ExplanationRecord>) -> Result<()> {
    let mut all: BTreeMap<(u32, String), ExplanationRecord> = read_explanations(dir)?
        .into_iter()
        .map(|r| ((r.latent, r.explainer.clone()), r))
        .collect();
    for mut r in records {
        let key = (r.latent, r.explainer.clone());
        if let Some(old) = all.remove(&key) {
            if old.explanation == r.explanation {
                let kept: Vec<_> = old
                    .scores
                    .into_iter()
                    .filter(|o| r.scores.iter().all(|n| n.scorer != o.scorer))
                    .collect();
                r.scores.extend(kept);
                r.scores.sort_by(|a, b| a.scorer.cmp(&b.scorer));
            }
        }
        all.insert(key, r);
    }
    let body = FileBody {
        version: VERSION,
        records: all.into_values().collect(),
    };
    let bytes = serde_json::to_vec_pretty(&body).expect("records serialise");
    write_file_atomic(&path(dir), &bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(latent: u32, explainer: &str, text: &str) -> ExplanationRecord {
        scored(latent, explainer, text, "embedding")
    }

    fn scored(latent: u32, explainer: &str, text: &str, scorer: &str) -> ExplanationRecord {
        ExplanationRecord {
            latent,
            explainer: explainer.into(),
            explanation: text.into(),
            source: "runs/x".into(),
            scores: vec![ExplanationScore {
                scorer: scorer.into(),
                metric: "auroc".into(),
                value: Some(0.7),
                shuffled: None,
                baseline: 0.5,
                failed: 1,
            }],
        }
    }

    #[test]
    fn merging_replaces_the_same_explainer_and_keeps_the_others() {
        let dir = tempfile::tempdir().unwrap();
        assert!(read_explanations(dir.path()).unwrap().is_empty());
        merge_explanations(
            dir.path(),
            vec![record(5, "token-set", "a"), record(2, "token-set", "b")],
        )
        .unwrap();
        merge_explanations(
            dir.path(),
            vec![record(5, "llm:m", "c"), record(5, "token-set", "d")],
        )
        .unwrap();
        let got: Vec<_> = read_explanations(dir.path())
            .unwrap()
            .into_iter()
            .map(|r| (r.latent, r.explainer, r.explanation))
            .collect();
        assert_eq!(
            got,
            [
                (2, "token-set".to_string(), "b".to_string()),
                (5, "llm:m".to_string(), "c".to_string()),
                (5, "token-set".to_string(), "d".to_string()),
            ]
        );
    }

    #[test]
    fn a_run_with_other_scorers_adds_to_the_same_explanation() {
        let dir = tempfile::tempdir().unwrap();
        let scorers = |dir: &Path| -> Vec<String> {
            read_explanations(dir).unwrap()[0]
                .scores
                .iter()
                .map(|s| s.scorer.clone())
                .collect()
        };
        merge_explanations(dir.path(), vec![scored(1, "token-set", "a", "surprisal")]).unwrap();
        merge_explanations(dir.path(), vec![scored(1, "token-set", "a", "embedding")]).unwrap();
        assert_eq!(scorers(dir.path()), ["embedding", "surprisal"]);
        // A new text starts afresh.
        merge_explanations(dir.path(), vec![scored(1, "token-set", "b", "fuzz")]).unwrap();
        assert_eq!(scorers(dir.path()), ["fuzz"]);
    }

    #[test]
    fn a_corrupt_file_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(path(dir.path()), b"{\"version\": 1, \"records\": [").unwrap();
        let e = read_explanations(dir.path()).unwrap_err().to_string();
        assert!(
            e.contains("explanations.json") && e.contains("corrupt"),
            "{e}"
        );
        std::fs::write(path(dir.path()), b"{\"version\": 9, \"records\": []}").unwrap();
        let e = read_explanations(dir.path()).unwrap_err().to_string();
        assert!(e.contains("version 9"), "{e}");
    }
}
