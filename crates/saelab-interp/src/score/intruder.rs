//! The intruder scorer (delphi's, in saelab's words): the judge sees the explanation
//! and `shown` excerpts, all but one activating examples from one quantile, one a
//! non-activating example (the intruder) with as many marked tokens as the others have
//! on average; it answers which excerpt does not fit. The score is the fraction of
//! prompts where it names the intruder, against a chance rate of 1/`shown`.
//!
//! Each quantile slice of the test examples gives prompts of `shown − 1` of its
//! examples; non-activating examples are the intruders, in turn. The answer is read
//! from the reply's last `[RESPONSE]:` line (a 1-based index); a reply without one, or
//! with an index out of range, is a counted failure.

use saelab_core::rng::Rng;
use saelab_llm::{ChatMessage, ChatReply, ChatRequest};
use serde::{Deserialize, Serialize};

use crate::render::{above, marked};
use crate::sample::{Example, Examples};

/// How the intruder prompts are built.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct IntruderConfig {
    /// Excerpts per prompt, the intruder among them.
    pub shown: usize,
    /// Marks on tokens at or above this fraction of their example's maximum.
    pub mark_fraction: f32,
    /// Tokens the judge may write.
    pub max_tokens: u32,
    /// Seed of the intruder's position and marks.
    pub seed: u64,
}

impl Default for IntruderConfig {
    fn default() -> Self {
        IntruderConfig {
            shown: 5,
            mark_fraction: 0.3,
            max_tokens: 40,
            seed: 0,
        }
    }
}

/// One prompt: the request, and the 0-based position of its intruder.
#[derive(Clone, Debug)]
pub struct IntruderPrompt {
    /// The request.
    pub request: ChatRequest,
    /// Where the intruder is.
    pub intruder: usize,
    /// The quantile of the activating excerpts.
    pub quantile: i32,
}

/// What the judge got right.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct IntruderScore {
    /// Prompts asked.
    pub prompts: usize,
    /// Prompts whose reply failed or named no valid excerpt.
    pub failed: usize,
    /// Prompts where the intruder was named.
    pub correct: usize,
    /// `correct / (prompts − failed)`, `None` without an answer.
    pub accuracy: Option<f64>,
    /// Chance: 1 / excerpts per prompt.
    pub chance: f64,
}

const SYSTEM: &str = "You are given the description of a feature of a language model's \
internal activations, and numbered text excerpts with some tokens marked between << and \
>>. In all but one excerpt the marked tokens are where the feature is active; in one \
excerpt, the intruder, they are not. Say which excerpt is the intruder. The last line \
of your answer must be \"[RESPONSE]: \" followed by its number.";

/// The prompts for `ex` under `explanation`.
pub fn prompts(
    explanation: &str,
    ex: &Examples,
    vocab: &[String],
    cfg: &IntruderConfig,
) -> Vec<IntruderPrompt> {
    let mut rng = Rng::new(cfg.seed).fork(ex.latent as u64 ^ 0x696e_7472);
    let k = cfg.shown.max(2) - 1;
    let mut slices: std::collections::BTreeMap<i32, Vec<&Example>> = Default::default();
    for e in &ex.test {
        slices.entry(e.quantile).or_default().push(e);
    }
    let marks_per_active = {
        let total: usize = ex
            .test
            .iter()
            .map(|e| above(e, cfg.mark_fraction).iter().filter(|&&m| m).count())
            .sum();
        total.div_ceil(ex.test.len().max(1)).max(1)
    };
    let mut intruders = ex.non_activating.iter();
    let mut out = Vec::new();
    for (&q, members) in &slices {
        for group in members.chunks(k).filter(|g| g.len() == k) {
            let Some(intruder) = intruders.next() else {
                return out;
            };
            let at = rng.below(cfg.shown.max(2) as u64) as usize;
            let mut texts: Vec<String> = group
                .iter()
                .map(|e| marked(e, vocab, &above(e, cfg.mark_fraction)))
                .collect();
            let mut pos: Vec<usize> = (0..intruder.tokens.len()).collect();
            rng.shuffle(&mut pos);
            let mut marks = vec![false; intruder.tokens.len()];
            for &p in pos.iter().take(marks_per_active) {
                marks[p] = true;
            }
            texts.insert(at, marked(intruder, vocab, &marks));
            let mut body = format!("Description: {explanation}\n\n");
            for (i, t) in texts.iter().enumerate() {
                body.push_str(&format!("Excerpt {}: {t}\n", i + 1));
            }
            out.push(IntruderPrompt {
                request: ChatRequest {
                    messages: vec![
                        ChatMessage::system(SYSTEM),
                        ChatMessage::user(body.trim_end()),
                    ],
                    max_tokens: cfg.max_tokens,
                    temperature: 0.0,
                    top_logprobs: None,
                },
                intruder: at,
                quantile: q,
            });
        }
    }
    out
}

/// The 0-based excerpt a reply names: the integer after its last `[RESPONSE]:`, if it
/// is between 1 and `shown`.
pub fn parse_response(reply: &str, shown: usize) -> Option<usize> {
    let at = reply.rfind("[RESPONSE]:")?;
    let digits: String = reply[at + "[RESPONSE]:".len()..]
        .trim_start()
        .chars()
        .take_while(|c| c.is_ascii_digit())
        .collect();
    let n: usize = digits.parse().ok()?;
    (1..=shown).contains(&n).then(|| n - 1)
}

/// The score of `prompts` from their replies (in order).
pub fn score(
    prompts: &[IntruderPrompt],
    replies: &[saelab_llm::Result<ChatReply>],
    shown: usize,
) -> IntruderScore {
    let mut s = IntruderScore {
        prompts: prompts.len(),
        chance: 1.0 / shown.max(2) as f64,
        ..Default::default()
    };
    for (p, r) in prompts.iter().zip(replies) {
        match r
            .as_ref()
            .ok()
            .and_then(|r| parse_response(&r.content, shown))
        {
            Some(i) => s.correct += usize::from(i == p.intruder),
            None => s.failed += 1,
        }
    }
    let answered = s.prompts - s.failed;
    s.accuracy = (answered > 0).then(|| s.correct as f64 / answered as f64);
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn responses_parse_and_score_against_the_intruder() {
        assert_eq!(parse_response("It is 3.\n[RESPONSE]: 3", 5), Some(2));
        assert_eq!(parse_response("[RESPONSE]: 6", 5), None);
        assert_eq!(parse_response("[RESPONSE]: zero", 5), None);
        assert_eq!(parse_response("excerpt 2", 5), None);
        let e = |ctx: u32, active: bool, q: i32| Example {
            context: ctx,
            start: 0,
            tokens: vec![0, 1, 2],
            acts: if active {
                vec![0.0, 1.0, 0.0]
            } else {
                vec![0.0; 3]
            },
            quantile: q,
        };
        let ex = Examples {
            latent: 1,
            max: 1.0,
            activating_windows: 8,
            train: vec![],
            test: (0..8).map(|i| e(i, true, (i / 4) as i32)).collect(),
            non_activating: (10..13).map(|i| e(i, false, -1)).collect(),
            similar_non_activating: 0,
        };
        let vocab: Vec<String> = ["a", " b", " c"].iter().map(|s| s.to_string()).collect();
        let ps = prompts("b", &ex, &vocab, &IntruderConfig::default());
        // Two slices of 4 activating examples: one prompt each.
        assert_eq!(ps.len(), 2);
        let body = &ps[0].request.messages[1].content;
        assert_eq!(body.matches("Excerpt ").count(), 5, "{body}");
        let reply = |i: usize| {
            Ok(ChatReply {
                content: format!("[RESPONSE]: {}", i + 1),
                logprobs: None,
                finish_reason: "stop".into(),
            })
        };
        let replies = vec![reply(ps[0].intruder), reply((ps[1].intruder + 1) % 5)];
        let s = score(&ps, &replies, 5);
        assert_eq!(
            (s.correct, s.failed, s.accuracy, s.chance),
            (1, 0, Some(0.5), 0.2)
        );
        let bad = vec![
            reply(ps[0].intruder),
            Ok(ChatReply {
                content: "no idea".into(),
                logprobs: None,
                finish_reason: "stop".into(),
            }),
        ];
        let s = score(&ps, &bad, 5);
        assert_eq!((s.correct, s.failed, s.accuracy), (1, 1, Some(1.0)));
    }
}
