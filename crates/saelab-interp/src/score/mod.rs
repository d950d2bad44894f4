//! Scorers: how well an explanation predicts where its latent fires, on the test
//! examples (activating, from every quantile) and the non-activating ones.
//!
//! - [`classify`]: LLM-judged, delphi's *detection* (does this excerpt activate the
//!   feature?) and *fuzzing* (are the marked tokens the ones the feature fires on?),
//!   scored by balanced accuracy, precision, recall, F1, and AUROC when the client
//!   returns log-probabilities;
//! - [`surprisal`]: no LLM judge. How much the explanation, as a prefix, lowers a base
//!   model's loss on an excerpt, compared with an unrelated prefix; AUROC of that gain,
//!   activating against non-activating;
//! - [`embedding`]: no LLM. Cosine similarity of the explanation's and the excerpt's
//!   sentence embeddings; AUROC;
//! - [`intruder`]: LLM-judged, which excerpt does not fit; accuracy;
//! - [`simulation`]: LLM log-probabilities, the activation the explanation predicts
//!   at every token; Pearson correlation with the true activations.
//!
//! Each gives per-item [`ItemScore`]s in delphi's score-file fields and a
//! [`ScoreSummary`].

pub mod classify;
pub mod embedding;
pub mod intruder;
pub mod simulation;
pub mod surprisal;

use serde::{Deserialize, Serialize};

use crate::metrics::{auroc, Confusion};
use crate::sample::Example;

/// One scored item, with delphi's field names (`scores/{scorer}/…` files hold a JSON
/// list of these).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ItemScore {
    /// The excerpt's token texts.
    pub str_tokens: Vec<String>,
    /// The latent's value at each token.
    pub activations: Vec<f32>,
    /// The quantile the example came from, −1 for a non-activating one.
    pub distance: i32,
    /// The truth: does the latent fire in the excerpt.
    pub activating: bool,
    /// The scorer's answer (`None`: no usable reply for it, or a scorer that only
    /// ranks).
    pub prediction: Option<bool>,
    /// The probability of "yes", or the ranking score (surprisal gain, cosine).
    pub probability: Option<f64>,
    /// Whether the prediction equals the truth (`None` without a prediction).
    pub correct: Option<bool>,
}

impl ItemScore {
    /// An unscored item for `e`, with its token texts.
    pub fn new(e: &Example, vocab: &[String]) -> Self {
        ItemScore {
            str_tokens: e
                .tokens
                .iter()
                .map(|&t| crate::render::token_text(vocab, t).to_string())
                .collect(),
            activations: e.acts.clone(),
            distance: e.quantile,
            activating: e.activating(),
            prediction: None,
            probability: None,
            correct: None,
        }
    }

    /// Sets the prediction (and whether it is correct).
    pub fn predict(&mut self, p: Option<bool>) {
        self.prediction = p;
        self.correct = p.map(|p| p == self.activating);
    }
}

/// What a scorer says of one explanation of one latent.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ScoreSummary {
    /// Items scored.
    pub items: usize,
    /// Items without a usable answer (a failed or malformed reply), left out of every
    /// metric below.
    pub failed: usize,
    /// The confusion of the predictions (classifying scorers).
    pub confusion: Option<Confusion>,
    /// ½(TP/P + TN/N) (classifying scorers).
    pub balanced_accuracy: Option<f64>,
    /// Precision (classifying scorers).
    pub precision: Option<f64>,
    /// Recall (classifying scorers).
    pub recall: Option<f64>,
    /// F1 (classifying scorers).
    pub f1: Option<f64>,
    /// AUROC of `probability` over the items that have one, activating against
    /// non-activating (`None` without both classes).
    pub auroc: Option<f64>,
}

impl ScoreSummary {
    /// The summary of `items`. A classifying scorer's failures are the items without a
    /// prediction, a ranking scorer's those without a probability.
    pub fn of(items: &[ItemScore], classifying: bool) -> Self {
        let usable = |i: &ItemScore| {
            if classifying {
                i.prediction.is_some()
            } else {
                i.probability.is_some()
            }
        };
        let mut s = ScoreSummary {
            items: items.len(),
            failed: items.iter().filter(|i| !usable(i)).count(),
            ..Default::default()
        };
        if classifying {
            let c = Confusion::of(
                items
                    .iter()
                    .filter_map(|i| i.prediction.map(|p| (i.activating, p))),
            );
            if c.positives() + c.negatives() > 0 {
                s.balanced_accuracy = Some(c.balanced_accuracy());
                s.precision = Some(c.precision());
                s.recall = Some(c.recall());
                s.f1 = Some(c.f1());
                s.confusion = Some(c);
            }
        }
        let (p, t): (Vec<f64>, Vec<bool>) = items
            .iter()
            .filter_map(|i| i.probability.map(|p| (p, i.activating)))
            .unzip();
        s.auroc = auroc(&p, &t);
        s
    }
}
