//! The simulation scorer (OpenAI's "explain, simulate, score", all-at-once form; delphi
//! forks it), in saelab's words: given only the explanation, the judge predicts how
//! strongly the latent fires on every token of an excerpt, and the score is the
//! Pearson correlation between the true activations and the predicted ones over all
//! tokens of all excerpts (the test examples of every quantile and the
//! non-activating ones) put end to end.
//!
//! One forward per excerpt, no generation: the prompt lists the excerpt's tokens one
//! per line, and the assistant's reply is given (teacher forcing,
//! [`saelab_llm::ChatClient::score_replies`]) as one line per token, the token, a tab
//! and the placeholder `unknown`. At each placeholder the model's distribution over
//! the digits `0`–`9` (from the top log-probabilities there, renormalised over the
//! digits among them) gives the prediction, its expected value; where no digit is
//! among them (the model's mass on the digits is below that of its 20th token), the
//! prediction is 0, "not active", and the place is counted (`no_digit`). Digits rather than
//! OpenAI's 0–10: Qwen2's and SmolLM2's tokenizers write every digit as its own token,
//! so "10" would take two positions. An excerpt whose reply does not tokenise to one
//! placeholder per token (after a tab), or whose request failed, is a counted
//! failure, left out of the correlation.
//!
//! A constant prediction has no correlation: the constant-answer baseline is 0.

use saelab_llm::{ChatMessage, ChatReply, ChatRequest};
use serde::{Deserialize, Serialize};

use crate::metrics::pearson;
use crate::render::token_text;
use crate::sample::{Example, Examples};

/// How the simulation prompts are built.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SimulationConfig {
    /// Top log-probabilities read at each placeholder (the digits are looked for
    /// among them).
    pub top_logprobs: u8,
}

impl Default for SimulationConfig {
    /// The 20 top alternatives (OpenAI's API maximum).
    fn default() -> Self {
        SimulationConfig { top_logprobs: 20 }
    }
}

/// The word in the reply where the model's digit is read.
pub const PLACEHOLDER: &str = "unknown";

const SYSTEM: &str = "You are given the description of a feature of a language model's \
internal activations, and a text split into its tokens, one per line. For each token, \
write the token, a tab, and how strongly the feature is active on it: a whole number \
from 0 (not active) to 9 (most active). Most tokens of most texts are 0.";

/// One excerpt, simulated.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SimulatedItem {
    /// The excerpt's token texts.
    pub str_tokens: Vec<String>,
    /// The latent's value at each token.
    pub activations: Vec<f32>,
    /// The quantile of the example, −1 for a non-activating one (delphi's field).
    pub distance: i32,
    /// Whether the latent fires in the excerpt.
    pub activating: bool,
    /// The predicted activation (0–9) at each token; `None` when the reply failed.
    pub simulated: Option<Vec<f64>>,
}

/// What the simulation scorer says of one explanation of one latent.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct SimulationScore {
    /// The excerpts.
    pub items: Vec<SimulatedItem>,
    /// Excerpts without a usable prediction.
    pub failed: usize,
    /// Placeholders of the usable excerpts without a digit among their top
    /// alternatives (predicted 0), and all placeholders of those excerpts.
    pub no_digit: (usize, usize),
    /// Pearson r of true and predicted activations over the usable excerpts' tokens
    /// end to end; `None` when either side is constant (or nothing is usable).
    pub correlation: Option<f64>,
}

/// A token as one line of the prompt: its text with line breaks, tabs and carriage
/// returns written as `\n`, `\t`, `\r`, and an empty token as `""`.
pub fn token_line(text: &str) -> String {
    if text.is_empty() {
        return "\"\"".into();
    }
    text.replace('\\', "\\\\")
        .replace('\n', "\\n")
        .replace('\t', "\\t")
        .replace('\r', "\\r")
}

/// The excerpts of `ex` in the order scored: the activating test examples, then the
/// non-activating ones.
fn excerpts(ex: &Examples) -> impl Iterator<Item = &Example> {
    ex.test.iter().chain(&ex.non_activating)
}

/// One teacher-forced request per excerpt of `ex` under `explanation`.
pub fn requests(
    explanation: &str,
    ex: &Examples,
    vocab: &[String],
    cfg: &SimulationConfig,
) -> Vec<ChatRequest> {
    excerpts(ex)
        .map(|e| {
            let lines: Vec<String> = e
                .tokens
                .iter()
                .map(|&t| token_line(token_text(vocab, t)))
                .collect();
            let user = format!(
                "Description: {explanation}\n\nTokens:\n{}",
                lines.join("\n")
            );
            let reply: String = lines
                .iter()
                .map(|l| format!("{l}\t{PLACEHOLDER}\n"))
                .collect();
            ChatRequest {
                messages: vec![
                    ChatMessage::system(SYSTEM),
                    ChatMessage::user(user),
                    ChatMessage::assistant(reply),
                ],
                max_tokens: 0,
                temperature: 0.0,
                top_logprobs: Some(cfg.top_logprobs),
            }
        })
        .collect()
}

/// The `n` predictions of a teacher-forced reply: at each placeholder token (one that
/// starts with [`PLACEHOLDER`] right after a tab), the expected digit under the
/// distribution of the digits among its top alternatives, 0 where there is none; and
/// how many placeholders had none. `None` unless there are exactly `n` placeholders.
pub fn predictions(reply: &ChatReply, n: usize) -> Option<(Vec<f64>, usize)> {
    let tokens = reply.logprobs.as_ref()?;
    let mut out = Vec::with_capacity(n);
    let mut after_tab = false;
    let mut no_digit = 0;
    for t in tokens {
        if after_tab && t.token.starts_with(PLACEHOLDER) {
            let (mut mass, mut sum) = (0.0f64, 0.0f64);
            for (text, lp) in &t.top {
                if let Some(d) = single_digit(text) {
                    let p = (*lp as f64).exp();
                    mass += p;
                    sum += p * d as f64;
                }
            }
            if mass > 0.0 {
                out.push(sum / mass);
            } else {
                no_digit += 1;
                out.push(0.0);
            }
        }
        after_tab = t.token.ends_with('\t');
    }
    (out.len() == n).then_some((out, no_digit))
}

/// The digit a token text is, if it is one (surrounding spaces allowed).
fn single_digit(text: &str) -> Option<u32> {
    let t = text.trim();
    let mut chars = t.chars();
    let c = chars.next()?;
    if chars.next().is_none() {
        c.to_digit(10)
    } else {
        None
    }
}

/// The score of `replies` (one per request of [`requests`], in order; an `Err` is a
/// failed excerpt).
pub fn score<E>(
    ex: &Examples,
    vocab: &[String],
    replies: &[Result<ChatReply, E>],
) -> SimulationScore {
    let mut items = Vec::new();
    let (mut truth, mut predicted) = (Vec::new(), Vec::new());
    let mut no_digit = (0, 0);
    for (e, reply) in excerpts(ex).zip(replies) {
        let simulated = reply
            .as_ref()
            .ok()
            .and_then(|r| predictions(r, e.tokens.len()))
            .map(|(p, missing)| {
                no_digit.0 += missing;
                no_digit.1 += p.len();
                p
            });
        if let Some(p) = &simulated {
            truth.extend(e.acts.iter().map(|&a| a as f64));
            predicted.extend_from_slice(p);
        }
        items.push(SimulatedItem {
            str_tokens: e
                .tokens
                .iter()
                .map(|&t| token_text(vocab, t).to_string())
                .collect(),
            activations: e.acts.clone(),
            distance: e.quantile,
            activating: e.activating(),
            simulated,
        });
    }
    SimulationScore {
        failed: items.iter().filter(|i| i.simulated.is_none()).count(),
        no_digit,
        correlation: pearson(&truth, &predicted),
        items,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use saelab_llm::TokenLogprobs;

    fn tok(token: &str, top: &[(&str, f32)]) -> TokenLogprobs {
        TokenLogprobs {
            token: token.into(),
            logprob: 0.0,
            top: top.iter().map(|&(t, p)| (t.to_string(), p.ln())).collect(),
        }
    }

    fn reply(tokens: Vec<TokenLogprobs>) -> ChatReply {
        ChatReply {
            content: String::new(),
            logprobs: Some(tokens),
            finish_reason: "teacher_forced".into(),
        }
    }

    #[test]
    fn a_prediction_is_the_expected_digit_at_each_placeholder() {
        // "the\tunknown\n cat\tunknown\n": two placeholders.
        let r = reply(vec![
            tok("the", &[]),
            tok("\t", &[]),
            // P(0) = 0.6, P(4) = 0.2, a word 0.2: EV over the digits = 0.2·4/0.8 = 1.
            tok("unknown", &[("0", 0.6), ("4", 0.2), ("the", 0.2)]),
            tok("\n", &[]),
            tok(" cat", &[]),
            tok("\t", &[]),
            tok("unknown", &[(" 9", 0.5), ("3", 0.5)]),
            tok("\n", &[]),
        ]);
        let (p, none) = predictions(&r, 2).unwrap();
        assert_eq!(none, 0);
        assert!(
            (p[0] - 1.0).abs() < 1e-6 && (p[1] - 6.0).abs() < 1e-6,
            "{p:?}"
        );
        // Another count of placeholders fails; a placeholder without a digit among its
        // alternatives predicts 0, counted.
        assert_eq!(predictions(&r, 3), None);
        let no_digit = reply(vec![tok("\t", &[]), tok("unknown", &[("a", 0.9)])]);
        assert_eq!(predictions(&no_digit, 1), Some((vec![0.0], 1)));
        // A placeholder word not after a tab is text, not a slot.
        let text = reply(vec![tok(" unknown", &[("0", 1.0)])]);
        assert_eq!(predictions(&text, 0), Some((vec![], 0)));
    }

    #[test]
    fn the_score_correlates_the_usable_excerpts_end_to_end() {
        let example = |acts: Vec<f32>, quantile| Example {
            context: 0,
            start: 0,
            tokens: vec![0; acts.len()],
            acts,
            quantile,
        };
        let ex = Examples {
            latent: 3,
            max: 4.0,
            activating_windows: 1,
            train: vec![],
            test: vec![example(vec![1.0, 2.0], 0)],
            non_activating: vec![example(vec![0.0, 0.0], -1), example(vec![0.0, 0.0], -1)],
            similar_non_activating: 0,
        };
        let vocab = vec!["a".to_string()];
        let reqs = requests("letters", &ex, &vocab, &SimulationConfig::default());
        assert_eq!(reqs.len(), 3);
        let forced = &reqs[0].messages[2].content;
        assert_eq!(forced, "a\tunknown\na\tunknown\n");
        let slots = |digits: [&str; 2]| {
            reply(
                digits
                    .iter()
                    .flat_map(|d| {
                        [
                            tok("a", &[]),
                            tok("\t", &[]),
                            tok("unknown", &[(d, 1.0)]),
                            tok("\n", &[]),
                        ]
                    })
                    .collect(),
            )
        };
        // Truth 1 2 0 0 (the third excerpt fails); predictions 1 4 0 1:
        // means 0.75 and 1.5; Σdxdy = −0.125+3.125+1.125+0.375 = 4.5,
        // Σdx² = 2.75, Σdy² = 9: r = 4.5/√24.75.
        let replies: Vec<Result<ChatReply, ()>> =
            vec![Ok(slots(["1", "4"])), Ok(slots(["0", "1"])), Err(())];
        let s = score(&ex, &vocab, &replies);
        assert_eq!((s.failed, s.no_digit), (1, (0, 4)));
        let want = 4.5 / 24.75f64.sqrt();
        assert!(
            (s.correlation.unwrap() - want).abs() < 1e-12,
            "{:?}",
            s.correlation
        );
        assert!(s.items[0].activating && !s.items[1].activating);
    }

    #[test]
    fn token_lines_escape_what_would_break_the_lines() {
        assert_eq!(token_line("\n"), "\\n");
        assert_eq!(token_line(" a\tb\\"), " a\\tb\\\\");
        assert_eq!(token_line(""), "\"\"");
    }
}
