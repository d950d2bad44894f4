//! Examples as text: plain, with `<<…>>` marks around runs of tokens, and with the
//! activation list an LLM explainer sees. Token texts come from the features folder's
//! `vocab.json`.

use crate::sample::Example;

/// The vocabulary as excerpts show it: the BOS token, which the features pass puts
/// at the start of every context and between packed documents, reads as a line break
/// (a document boundary) instead of its special-token text (`<|im_start|>` for
/// SmolLM2), which the explainer, the judges and the surprisal model would otherwise
/// read as text.
pub fn display_vocab(mut vocab: Vec<String>, bos: Option<u32>) -> Vec<String> {
    if let Some(t) = bos.and_then(|b| vocab.get_mut(b as usize)) {
        *t = "\n".to_string();
    }
    vocab
}

/// The text of an example's tokens.
pub fn plain(e: &Example, vocab: &[String]) -> String {
    e.tokens.iter().map(|&t| token_text(vocab, t)).collect()
}

/// The text of token `t` (`�` for an id outside the vocabulary).
pub fn token_text(vocab: &[String], t: u32) -> &str {
    vocab
        .get(t as usize)
        .map(String::as_str)
        .unwrap_or("\u{fffd}")
}

/// The text with each run of consecutive marked tokens (`marked[i]`) wrapped in
/// `<<` and `>>`.
pub fn marked(e: &Example, vocab: &[String], marked: &[bool]) -> String {
    let mut out = String::new();
    let mut open = false;
    for (i, &t) in e.tokens.iter().enumerate() {
        let m = marked.get(i).copied().unwrap_or(false);
        if m && !open {
            out.push_str("<<");
            open = true;
        } else if !m && open {
            out.push_str(">>");
            open = false;
        }
        out.push_str(token_text(vocab, t));
    }
    if open {
        out.push_str(">>");
    }
    out
}

/// Which tokens of `e` are at least `fraction` of its own largest activation (none
/// for a non-activating example).
pub fn above(e: &Example, fraction: f32) -> Vec<bool> {
    let max = e.max();
    e.acts
        .iter()
        .map(|&a| max > 0.0 && a > 0.0 && a >= fraction * max)
        .collect()
}

/// An activation on delphi's displayed scale: ⌈10·a/max⌉ clamped to 0..=10.
pub fn scaled(a: f32, max: f32) -> u32 {
    if max <= 0.0 || a <= 0.0 {
        0
    } else {
        ((10.0 * a / max).ceil() as u32).min(10)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_of_marked_tokens_get_one_pair_of_marks() {
        let vocab: Vec<String> = ["The", " big", " whale", " swam", "."]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let e = Example {
            context: 0,
            start: 0,
            tokens: vec![0, 1, 2, 3, 4],
            acts: vec![0.0, 2.0, 10.0, 0.5, 3.0],
            quantile: 0,
        };
        assert_eq!(plain(&e, &vocab), "The big whale swam.");
        let m = above(&e, 0.2);
        assert_eq!(m, [false, true, true, false, true]);
        assert_eq!(marked(&e, &vocab, &m), "The<< big whale>> swam<<.>>");
        assert_eq!(
            (scaled(10.0, 10.0), scaled(0.5, 10.0), scaled(0.0, 10.0)),
            (10, 1, 0)
        );
        assert_eq!(scaled(3.01, 10.0), 4);
    }

    #[test]
    fn the_bos_token_reads_as_a_document_break() {
        let vocab: Vec<String> = ["<|im_start|>", "Call", " me"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let e = Example {
            context: 0,
            start: 0,
            tokens: vec![1, 0, 1, 2],
            acts: vec![0.0; 4],
            quantile: -1,
        };
        assert_eq!(
            plain(&e, &display_vocab(vocab.clone(), Some(0))),
            "Call\nCall me"
        );
        assert_eq!(
            plain(&e, &display_vocab(vocab.clone(), None)),
            "Call<|im_start|>Call me"
        );
        assert_eq!(display_vocab(vocab, Some(9)).len(), 3);
    }
}
