//! LLM-judged scoring, as delphi's *detection* and *fuzzing* scorers (in saelab's own
//! words).
//!
//! The test examples (activating, from every quantile) and the non-activating ones
//! are shuffled (seeded) and shown `per_prompt` at a time with the explanation.
//! - Detection: plain excerpts; the judge says for each whether the feature is active
//!   in it. Truth: the latent fires in the excerpt.
//! - Fuzzing: each excerpt with marks, activating ones on their tokens at or above
//!   `mark_fraction` of their maximum, non-activating ones on as many random tokens as
//!   an activating test example has marked on average (rounded up); the judge says for
//!   each whether the marked tokens are where the feature is active. Truth: the
//!   excerpt is activating (its marks are the real ones).
//!
//! The judge answers with a list of 0/1, one per excerpt, in order. The first `[…]`
//! of the reply is read; a reply without one, or with an entry that is not 0 or 1, or
//! with another number of entries, is a failure for every excerpt of that prompt,
//! counted and left out of the metrics. When the client returns log-probabilities,
//! each answer's probability is P("1") / (P("0") + P("1")) at the position of its
//! digit, from the top alternatives there.

use saelab_core::rng::Rng;
use saelab_llm::{ChatMessage, ChatReply, ChatRequest};
use serde::{Deserialize, Serialize};

use super::ItemScore;
use crate::render::{above, marked, plain};
use crate::sample::{Example, Examples};

/// Which question the judge is asked.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Task {
    /// Is the feature active in this excerpt?
    Detection,
    /// Are the marked tokens the ones the feature is active on?
    Fuzzing,
}

impl Task {
    /// Its name in file paths and tables (delphi's scorer names: `detection`, `fuzz`).
    pub fn name(self) -> &'static str {
        match self {
            Task::Detection => "detection",
            Task::Fuzzing => "fuzz",
        }
    }
}

/// How the judge is prompted.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ClassifyConfig {
    /// Excerpts per prompt (delphi's `n_examples_shown`).
    pub per_prompt: usize,
    /// Fuzzing marks tokens at or above this fraction of their example's maximum.
    pub mark_fraction: f32,
    /// Tokens the judge may write.
    pub max_tokens: u32,
    /// Ask for this many top log-probabilities per token (for AUROC), or none.
    pub top_logprobs: Option<u8>,
    /// Seed of the shuffle and of the fuzzing decoys.
    pub seed: u64,
}

impl Default for ClassifyConfig {
    /// delphi's CLI defaults: 5 excerpts per prompt, marks at 0.3 of the maximum.
    fn default() -> Self {
        ClassifyConfig {
            per_prompt: 5,
            mark_fraction: 0.3,
            max_tokens: 40,
            top_logprobs: None,
            seed: 0,
        }
    }
}

/// The prompts of one scoring: the items in the order shown, the requests, and for
/// each request the items it covers.
#[derive(Clone, Debug)]
pub struct Prompts {
    /// The items, unscored, in the order they are shown.
    pub items: Vec<ItemScore>,
    /// One request per group of `per_prompt` items.
    pub requests: Vec<ChatRequest>,
    /// `requests[k]` covers `items[groups[k].0..groups[k].1]`.
    pub groups: Vec<(usize, usize)>,
}

fn system(task: Task) -> String {
    let question = match task {
        Task::Detection => {
            "For each excerpt, decide whether the feature is active anywhere in it. \
             Answer 1 if it is and 0 if it is not."
        }
        Task::Fuzzing => {
            "In each excerpt some tokens are marked between << and >>. For each excerpt, \
             decide whether the marked tokens are the ones where the feature is active, \
             as the description says. Answer 1 if the marking is right and 0 if it is not."
        }
    };
    format!(
        "You are given the description of a feature of a language model's internal \
         activations, and numbered text excerpts. {question}\n\n\
         Reply with a Python list of the answers in the order of the excerpts and nothing \
         else, for example [1, 0, 0] for three excerpts."
    )
}

/// The prompts that ask the judge about `ex`'s test and non-activating examples under
/// `explanation`.
pub fn prompts(
    task: Task,
    explanation: &str,
    ex: &Examples,
    vocab: &[String],
    cfg: &ClassifyConfig,
) -> Prompts {
    let mut rng = Rng::new(cfg.seed).fork(ex.latent as u64);
    let mut shown: Vec<&Example> = ex.test.iter().chain(&ex.non_activating).collect();
    rng.shuffle(&mut shown);
    // Fuzzing decoys: as many marks as an activating test example has on average.
    let marks_per_active = {
        let counts: Vec<usize> = ex
            .test
            .iter()
            .map(|e| above(e, cfg.mark_fraction).iter().filter(|&&m| m).count())
            .collect();
        let total: usize = counts.iter().sum();
        total.div_ceil(counts.len().max(1)).max(1)
    };
    let text = |e: &Example, rng: &mut Rng| match task {
        Task::Detection => plain(e, vocab),
        Task::Fuzzing => {
            let marks = if e.activating() {
                above(e, cfg.mark_fraction)
            } else {
                let mut pos: Vec<usize> = (0..e.tokens.len()).collect();
                rng.shuffle(&mut pos);
                let mut m = vec![false; e.tokens.len()];
                for &p in pos.iter().take(marks_per_active) {
                    m[p] = true;
                }
                m
            };
            marked(e, vocab, &marks)
        }
    };
    let per = cfg.per_prompt.max(1);
    let (mut items, mut requests, mut groups) = (Vec::new(), Vec::new(), Vec::new());
    for chunk in shown.chunks(per) {
        let start = items.len();
        let mut body = format!("Description: {explanation}\n\n");
        for (k, e) in chunk.iter().enumerate() {
            body.push_str(&format!("Excerpt {}: {}\n", k + 1, text(e, &mut rng)));
            items.push(ItemScore::new(e, vocab));
        }
        body.push_str(&format!("\nAnswer with a list of {} numbers.", chunk.len()));
        requests.push(ChatRequest {
            messages: vec![ChatMessage::system(system(task)), ChatMessage::user(body)],
            max_tokens: cfg.max_tokens,
            temperature: 0.0,
            top_logprobs: cfg.top_logprobs,
        });
        groups.push((start, items.len()));
    }
    Prompts {
        items,
        requests,
        groups,
    }
}

/// The `n` answers of a reply: the first `[…]` holding exactly `n` entries, each 0 or
/// 1; `None` for anything else.
pub fn parse_answers(reply: &str, n: usize) -> Option<Vec<bool>> {
    let open = reply.find('[')?;
    let close = open + reply[open..].find(']')?;
    let answers: Option<Vec<bool>> = reply[open + 1..close]
        .split(',')
        .map(|s| match s.trim() {
            "1" => Some(true),
            "0" => Some(false),
            _ => None,
        })
        .collect();
    answers.filter(|a| a.len() == n)
}

/// Each answer's P("1") / (P("0") + P("1")) from the log-probabilities of the reply's
/// digit tokens after its first `[` (the first `n` tokens that are "0" or "1"), or
/// `None` when the reply has no log-probabilities or fewer such tokens.
pub fn answer_probabilities(reply: &ChatReply, n: usize) -> Option<Vec<f64>> {
    let lps = reply.logprobs.as_ref()?;
    let start = lps.iter().position(|t| t.token.contains('['))?;
    let mut out = Vec::with_capacity(n);
    for t in &lps[start..] {
        if out.len() == n {
            break;
        }
        let digit = t.token.trim().trim_start_matches('[').trim();
        if digit != "0" && digit != "1" {
            continue;
        }
        let mass = |d: &str| -> f64 {
            t.top
                .iter()
                .filter(|(s, _)| s.trim().trim_start_matches('[').trim() == d)
                .map(|(_, lp)| (*lp as f64).exp())
                .sum()
        };
        let (p0, p1) = (mass("0"), mass("1"));
        out.push(if p0 + p1 > 0.0 {
            p1 / (p0 + p1)
        } else if digit == "1" {
            1.0
        } else {
            0.0
        });
    }
    (out.len() == n).then_some(out)
}

/// Fills `prompts.items` from the replies (one per request, in order); returns the
/// items and the number of prompts whose reply failed or could not be parsed.
pub fn apply(
    mut prompts: Prompts,
    replies: &[saelab_llm::Result<ChatReply>],
) -> (Vec<ItemScore>, usize) {
    let mut failed = 0;
    for (&(a, b), reply) in prompts.groups.iter().zip(replies) {
        let n = b - a;
        let parsed = reply
            .as_ref()
            .ok()
            .and_then(|r| parse_answers(&r.content, n).map(|ans| (ans, r)));
        match parsed {
            Some((answers, r)) => {
                let probs = answer_probabilities(r, n);
                for (k, item) in prompts.items[a..b].iter_mut().enumerate() {
                    item.predict(Some(answers[k]));
                    item.probability = probs.as_ref().map(|p| p[k]);
                }
            }
            None => failed += 1,
        }
    }
    (prompts.items, failed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use saelab_llm::TokenLogprobs;

    #[test]
    fn answers_parse_only_from_a_whole_list_of_the_right_length() {
        assert_eq!(
            parse_answers("Sure: [1, 0,1 ]", 3),
            Some(vec![true, false, true])
        );
        assert_eq!(parse_answers("[1, 0", 2), None);
        assert_eq!(parse_answers("The first one is active.", 1), None);
        assert_eq!(parse_answers("[1, 0, 1]", 2), None);
        assert_eq!(parse_answers("[1, 2]", 2), None);
        assert_eq!(parse_answers("[yes, no]", 2), None);
    }

    #[test]
    fn probabilities_come_from_the_digit_tokens_top_alternatives() {
        let tok = |s: &str, top: &[(&str, f32)]| TokenLogprobs {
            token: s.into(),
            logprob: 0.0,
            top: top.iter().map(|(t, l)| (t.to_string(), *l)).collect(),
        };
        let reply = ChatReply {
            content: "[1, 0]".into(),
            logprobs: Some(vec![
                tok("[", &[("[", 0.0)]),
                tok("1", &[("1", (0.75f32).ln()), ("0", (0.25f32).ln())]),
                tok(",", &[]),
                tok(
                    " 0",
                    &[(" 0", (0.6f32).ln()), (" 1", (0.2f32).ln()), ("x", -1.0)],
                ),
                tok("]", &[]),
            ]),
            finish_reason: "stop".into(),
        };
        let p = answer_probabilities(&reply, 2).unwrap();
        assert!(
            (p[0] - 0.75).abs() < 1e-6 && (p[1] - 0.25).abs() < 1e-6,
            "{p:?}"
        );
        assert_eq!(answer_probabilities(&reply, 3), None);
    }
}
