//! Token ids as the strings a Neuronpedia dashboard shows.
//!
//! SAEDashboard takes each vocabulary entry as the tokenizer stores it (byte-level
//! symbols) and replaces a few byte-level artefacts (its `HTML_ANOMALIES`: `Ġ` → space,
//! `Ċ` → newline, `ĉ` → tab, `âĢĶ` → `—`, `âĢĵ` → `–`, `âĢľ`/`âĢĿ` → `“`/`”`,
//! `âĢĺ`/`âĢĻ` → `‘`/`’`, `âĢĭ` → space); every other byte symbol stays as it is
//! (`é` shows as `Ã©`). saelab writes:
//!
//! - a token that is whole UTF-8 text: its decoded text (`vocab.json` of the features
//!   folder), which is SAEDashboard's string for every token its table covers, and the
//!   real character where SAEDashboard leaves byte symbols (`é`, not `Ã©`); the one
//!   exception SAEDashboard makes on purpose is kept: a zero-width space (`âĢĭ`) is
//!   written as a plain space;
//! - a token that is only part of a UTF-8 character (it decodes to U+FFFD; 314 of
//!   SmolLM2's 49 152): the stored piece with SAEDashboard's replacements, exactly
//!   SAEDashboard's string, so that such tokens stay distinct from one another;
//! - an id outside the vocabulary: `<|outofrange|>`, as SAEDashboard.

use std::path::Path;

use saelab_core::{Error, Result};
use saelab_lm::tokenizer::Tokenizer;

/// What SAEDashboard writes for a token id outside the vocabulary.
pub const OUT_OF_RANGE: &str = "<|outofrange|>";

/// SAEDashboard's `HTML_ANOMALIES`, applied to stored byte-level pieces.
const PIECE_REPLACEMENTS: [(&str, &str); 10] = [
    ("âĢĶ", "—"),
    ("âĢĵ", "–"),
    ("âĢľ", "“"),
    ("âĢĿ", "”"),
    ("âĢĺ", "‘"),
    ("âĢĻ", "’"),
    ("âĢĭ", " "),
    ("Ġ", " "),
    ("Ċ", "\n"),
    ("ĉ", "\t"),
];

/// The dashboard string of one token from its decoded text and its stored piece (see
/// the module documentation).
pub fn display(decoded: &str, piece: Option<&str>) -> String {
    match piece {
        Some(p) if decoded.contains('\u{FFFD}') => PIECE_REPLACEMENTS
            .iter()
            .fold(p.to_string(), |s, (from, to)| s.replace(from, to)),
        _ => decoded.replace('\u{200B}', " "),
    }
}

/// The dashboard strings of every token id, `vocab[i]` being the decoded text the
/// features folder stores and `tok` the model's tokenizer, which must agree with it
/// (an error names `tok_path` otherwise).
pub fn display_strings(vocab: &[String], tok: &Tokenizer, tok_path: &Path) -> Result<Vec<String>> {
    if tok.vocab_size() != vocab.len() {
        return Err(Error::bad_file(
            tok_path,
            format!(
                "its tokenizer has {} tokens, the features folder's vocab.json {}; pass \
                 --model with the model the features were computed with",
                tok.vocab_size(),
                vocab.len()
            ),
        ));
    }
    vocab
        .iter()
        .enumerate()
        .map(|(i, text)| {
            let id = i as u32;
            if tok.token_str(id).as_deref().unwrap_or_default() != text {
                return Err(Error::bad_file(
                    tok_path,
                    format!(
                        "its tokenizer reads token {i} differently from the features \
                         folder's vocab.json; pass --model with the model the features \
                         were computed with"
                    ),
                ));
            }
            Ok(display(text, tok.token_piece(id).as_deref()))
        })
        .collect()
}

/// The dashboard string of token `id`.
pub fn token_string(strings: &[String], id: u32) -> &str {
    strings
        .get(id as usize)
        .map(String::as_str)
        .unwrap_or(OUT_OF_RANGE)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn whole_text_is_decoded_and_partial_characters_keep_their_piece() {
        assert_eq!(display(" the", Some("Ġthe")), " the");
        assert_eq!(display("\n\n", Some("ĊĊ")), "\n\n");
        assert_eq!(display(" é", Some("ĠÃ©")), " é");
        assert_eq!(display("\u{200B}", Some("âĢĭ")), " ");
        assert_eq!(display("\u{FFFD}", Some("âĢ")), "âĢ");
        assert_eq!(display(" \u{FFFD}", Some("ĠâĢ")), " âĢ");
        assert_eq!(
            display("<|im_start|>", Some("<|im_start|>")),
            "<|im_start|>"
        );
        let s = vec!["a".to_string()];
        assert_eq!(token_string(&s, 0), "a");
        assert_eq!(token_string(&s, 1), OUT_OF_RANGE);
    }
}
