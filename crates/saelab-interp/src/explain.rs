//! Explanations of a latent from its train examples.
//!
//! - [`token_set`]: no LLM. The tokens carrying the most activation mass over the train
//!   examples, as a comma-separated list: the baseline every table shows beside an
//!   LLM's explanations ("is the explanation more than its top tokens?").
//! - [`llm_request`] and [`parse_explanation`]: the LLM explainer, in the shape of
//!   delphi's default explainer (in saelab's own words): a system message with the
//!   rules, two worked examples, then the latent's examples with the tokens at or
//!   above `mark_fraction` of each example's maximum wrapped in `<<…>>` and, with
//!   `show_activations`, a line of the marked tokens and their activations on a 0–10
//!   scale. The reply's last `[EXPLANATION]:` line is the explanation (or a reply of
//!   one short line without it, marked untagged).

use std::collections::BTreeMap;

use saelab_llm::{ChatMessage, ChatRequest};
use serde::{Deserialize, Serialize};

use crate::render::{above, marked, scaled, token_text};
use crate::sample::Examples;

/// The `n` tokens with the most activation summed over the train examples, their
/// texts trimmed and merged case-insensitively (the first spelling seen is shown),
/// most mass first, joined by ", ". Tokens that are only whitespace are shown escaped
/// (`\n`).
pub fn token_set(ex: &Examples, vocab: &[String], n: usize) -> String {
    let mut mass: BTreeMap<String, (f64, String, usize)> = BTreeMap::new();
    let mut order = 0;
    for e in &ex.train {
        for (&t, &a) in e.tokens.iter().zip(&e.acts) {
            if a <= 0.0 {
                continue;
            }
            let raw = token_text(vocab, t);
            let shown = if raw.trim().is_empty() {
                raw.escape_default().to_string()
            } else {
                raw.trim().to_string()
            };
            let entry = mass
                .entry(shown.to_lowercase())
                .or_insert_with(|| (0.0, shown.clone(), order));
            entry.0 += a as f64;
            order += 1;
        }
    }
    let mut top: Vec<(f64, String, usize)> = mass.into_values().collect();
    top.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.2.cmp(&b.2)));
    top.into_iter()
        .take(n)
        .map(|(_, s, _)| s)
        .collect::<Vec<_>>()
        .join(", ")
}

/// How the LLM explainer is prompted.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ExplainerConfig {
    /// Tokens at or above this fraction of their example's maximum are marked.
    pub mark_fraction: f32,
    /// Follow each example with its marked tokens and their 0–10 activations.
    pub show_activations: bool,
    /// Tokens the explainer may write.
    pub max_tokens: u32,
    /// Worked examples before the latent's excerpts (at most 2). Small models tend to
    /// repeat a worked example's answer; 0 leaves only the rules.
    #[serde(default = "two")]
    pub shots: usize,
}

fn two() -> usize {
    2
}

impl Default for ExplainerConfig {
    /// delphi's defaults: marks at 0.3 of the maximum, activations shown.
    fn default() -> Self {
        ExplainerConfig {
            mark_fraction: 0.3,
            show_activations: true,
            max_tokens: 200,
            shots: 2,
        }
    }
}

const SYSTEM: &str = "You study one feature of a language model's internal activations. \
You are shown short text excerpts where the feature is active. In each excerpt, the \
tokens where it is most active are marked between << and >>; a line after an excerpt \
may list the marked tokens with the feature's strength on a 0 to 10 scale.\n\n\
Find what the marked tokens have in common, and what in the surrounding text they \
depend on. Then describe the feature in one short phrase or sentence.\n\n\
Rules:\n\
- Be concise and specific; do not list the examples or quote them at length.\n\
- If the feature responds to one word or a few words, say which.\n\
- The last line of your answer must be \"[EXPLANATION]: \" followed by the description.";

/// The end of every user message: the rules are far above the excerpts in a long
/// prompt, and small models forget the answer's format without it.
const REMINDER: &str =
    "What does the feature respond to? End with one line \"[EXPLANATION]: \" and the description.";

/// Two worked examples (user excerpts, assistant answer), written for saelab.
const SHOTS: [(&str, &str); 2] = [
    (
        "Excerpt 1: the ship sailed out of the<< harbour>> at dawn\n\
         Marked: (\" harbour\", 9)\n\
         Excerpt 2: boats lay at anchor in the<< port>> all winter\n\
         Marked: (\" port\", 10)\n\
         Excerpt 3: they reached the<< docks>> before the storm\n\
         Marked: (\" docks\", 7)",
        "The marked words are all places where ships are kept or moored, right after \
         \"the\".\n[EXPLANATION]: Nouns for harbours and ports where ships are moored.",
    ),
    (
        "Excerpt 1: she said<< that>> it was too late\n\
         Marked: (\" that\", 8)\n\
         Excerpt 2: he knew<< that>> the answer was wrong\n\
         Marked: (\" that\", 10)\n\
         Excerpt 3: we hoped<< that>> they would come\n\
         Marked: (\" that\", 9)",
        "Each time it is \"that\" after a verb of saying, knowing or hoping, opening a \
         clause.\n[EXPLANATION]: The word \"that\" introducing a clause after verbs of \
         saying, knowing or hoping.",
    ),
];

/// The excerpts of `ex`'s train examples as the explainer sees them.
pub fn excerpts(ex: &Examples, vocab: &[String], cfg: &ExplainerConfig) -> String {
    let mut out = String::new();
    for (i, e) in ex.train.iter().enumerate() {
        let marks = above(e, cfg.mark_fraction);
        out.push_str(&format!(
            "Excerpt {}: {}\n",
            i + 1,
            marked(e, vocab, &marks)
        ));
        if cfg.show_activations {
            let listed: Vec<String> = e
                .tokens
                .iter()
                .zip(&e.acts)
                .zip(&marks)
                .filter(|(_, &m)| m)
                .take(10)
                .map(|((&t, &a), _)| format!("({:?}, {})", token_text(vocab, t), scaled(a, ex.max)))
                .collect();
            out.push_str(&format!("Marked: {}\n", listed.join(", ")));
        }
    }
    out
}

/// The chat request that asks for an explanation of `ex`.
pub fn llm_request(ex: &Examples, vocab: &[String], cfg: &ExplainerConfig) -> ChatRequest {
    let mut messages = vec![ChatMessage::system(SYSTEM)];
    for &(user, assistant) in SHOTS.iter().take(cfg.shots) {
        messages.push(ChatMessage::user(format!("{user}\n\n{REMINDER}")));
        messages.push(ChatMessage::assistant(assistant));
    }
    messages.push(ChatMessage::user(format!(
        "{}\n\n{REMINDER}",
        excerpts(ex, vocab, cfg).trim_end()
    )));
    ChatRequest::greedy(messages, cfg.max_tokens)
}

/// Longest untagged reply taken as an explanation, in characters.
pub const MAX_UNTAGGED: usize = 300;

/// An explanation read from a reply.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Parsed {
    /// The explanation.
    pub text: String,
    /// Whether it came from an `[EXPLANATION]:` line (else the reply was one short
    /// line without the tag).
    pub tagged: bool,
}

/// The explanation in a reply: the text after the last `[EXPLANATION]:`, up to the end
/// of its line, trimmed. A reply without the tag that is one non-empty line of at most
/// [`MAX_UNTAGGED`] characters is taken whole, marked untagged: small models (the 0.5 B
/// Qwen) answer the question in one sentence and drop the format line, and such a
/// sentence is unambiguous. `None` for anything else (an empty tag, several lines
/// without one).
pub fn parse_explanation(reply: &str) -> Option<Parsed> {
    if let Some(at) = reply.rfind("[EXPLANATION]:") {
        let rest = &reply[at + "[EXPLANATION]:".len()..];
        let line = rest.lines().next().unwrap_or("").trim();
        return (!line.is_empty()).then(|| Parsed {
            text: line.to_string(),
            tagged: true,
        });
    }
    let text = reply.trim();
    let one_line = !text.is_empty() && !text.contains('\n');
    (one_line && text.chars().count() <= MAX_UNTAGGED).then(|| Parsed {
        text: text.to_string(),
        tagged: false,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sample::Example;

    fn examples() -> (Examples, Vec<String>) {
        let vocab: Vec<String> = ["\n", " Whale", " whale", " sea", " the", "Ship"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let e = |tokens: Vec<u32>, acts: Vec<f32>| Example {
            context: 0,
            start: 0,
            tokens,
            acts,
            quantile: 0,
        };
        let ex = Examples {
            latent: 7,
            max: 10.0,
            activating_windows: 2,
            train: vec![
                e(vec![4, 1, 3, 0], vec![0.0, 6.0, 2.0, 1.0]),
                e(vec![4, 2, 5, 0], vec![0.0, 10.0, 0.0, 1.5]),
            ],
            test: vec![],
            non_activating: vec![],
            similar_non_activating: 0,
        };
        (ex, vocab)
    }

    #[test]
    fn token_set_ranks_trimmed_case_merged_tokens_by_mass() {
        let (ex, vocab) = examples();
        // whale 6 + 10, \n 1 + 1.5, sea 2.
        assert_eq!(token_set(&ex, &vocab, 5), "Whale, \\n, sea");
        assert_eq!(token_set(&ex, &vocab, 1), "Whale");
    }

    #[test]
    fn the_prompt_marks_tokens_and_the_reply_parses() {
        let (ex, vocab) = examples();
        let req = llm_request(&ex, &vocab, &ExplainerConfig::default());
        assert_eq!(req.messages.len(), 6);
        let last = &req.messages[5].content;
        assert!(
            last.starts_with("Excerpt 1:  the<< Whale sea>>\n"),
            "{last}"
        );
        assert!(
            last.contains("Marked: (\" Whale\", 6), (\" sea\", 2)"),
            "{last}"
        );
        assert!(last.contains("Excerpt 2:  the<< whale>>Ship\n"), "{last}");
        assert!(
            last.ends_with(&format!("(\" whale\", 10)\n\n{REMINDER}")),
            "{last}"
        );
        let tagged = |t: &str| {
            Some(Parsed {
                text: t.into(),
                tagged: true,
            })
        };
        assert_eq!(
            parse_explanation("Thinking.\n[EXPLANATION]: Whales.\nmore"),
            tagged("Whales.")
        );
        assert_eq!(
            parse_explanation("[EXPLANATION]: a\n[EXPLANATION]:  b "),
            tagged("b")
        );
        let bare = ExplainerConfig {
            shots: 0,
            ..ExplainerConfig::default()
        };
        let req0 = llm_request(&ex, &vocab, &bare);
        assert_eq!(req0.messages.len(), 2);
        assert_eq!(req0.messages[1].content, *last);
        // One short line without the tag is taken, marked; several lines are not.
        assert_eq!(
            parse_explanation(" The feature responds to the word \"by\". "),
            Some(Parsed {
                text: "The feature responds to the word \"by\".".into(),
                tagged: false
            })
        );
        assert_eq!(parse_explanation("It is about ships.\nOr harbours."), None);
        assert_eq!(parse_explanation(&"x".repeat(MAX_UNTAGGED + 1)), None);
        assert_eq!(parse_explanation("  \n "), None);
        assert_eq!(parse_explanation("[EXPLANATION]:   \n"), None);
    }
}
