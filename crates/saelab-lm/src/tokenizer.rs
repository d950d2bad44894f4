//! Tokenizers: GPT-2-style byte-level BPE or SentencePiece built from GGUF metadata, or
//! any Hugging Face `tokenizer.json`.
//!
//! All are run by the Hugging Face `tokenizers` crate; for a GGUF file this module
//! assembles the pipeline from the metadata instead of hand-writing BPE. A
//! SentencePiece vocabulary (`tokenizer.ggml.model = "llama"`: tokens and scores, no
//! merges; Gemma 3) becomes a BPE that reproduces llama.cpp's score-driven merging
//! with byte fallback (see `spm_tokenizer`; its spaces are `▁`, so text holding
//! U+2581 itself decodes with a space there). For `tokenizer.ggml.model = "gpt2"`:
//!
//! - model: BPE over `tokenizer.ggml.tokens` (id = index) and `tokenizer.ggml.merges`
//!   (rank = index, so earlier merges win), no unknown token, no dropout;
//! - pre-tokenizer, chosen by `tokenizer.ggml.pre`:
//!   - `smollm` (and the other types llama.cpp treats the same way: `starcoder`,
//!     `refact`, `command-r`, `codeshell`, `exaone`, `minerva`): every `\p{N}` character
//!     becomes its own piece, then the GPT-2 regex
//!     `'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+`
//!     splits the rest; this is `Sequence[Digits(individual), ByteLevel]`, the
//!     pre-tokenizer of SmolLM2's own `tokenizer.json`;
//!   - `gpt2` (and `mpt`, `olmo`, `jais`): the GPT-2 regex alone;
//!   - `qwen2` (Qwen2, Qwen2.5): Qwen2's own split regex, `QWEN2_SPLIT`, whose
//!     pieces are then mapped to bytes: contractions in any case, letters with at most
//!     one leading non-letter non-digit (not a newline), each digit alone,
//!     punctuation runs with their trailing newlines, newline runs with the whitespace
//!     before them, then whitespace as GPT-2's; this is
//!     `Sequence[Split(regex, isolated), ByteLevel(no regex)]`, the pre-tokenizer of
//!     Qwen2's own `tokenizer.json` and of llama.cpp's `qwen2` type;
//!   - anything else is refused with an error naming the type;
//! - byte-level mapping without a prefix space (`tokenizer.ggml.add_space_prefix`,
//!   false for SmolLM2), and the byte-level decoder.
//!
//! `tokenizer.ggml.add_bos_token` is not read: saelab starts every context and prompt
//! with BOS whatever the file says (false for SmolLM2 and Qwen2 alike), as
//! TransformerLens does; for Qwen2 that BOS is `<|endoftext|>`.
//!
//! # Special tokens in text
//!
//! [`Tokenizer::encode`] treats text as *data*: a literal `<|im_start|>` inside a
//! document is tokenized character by character like any other text, never mapped to the
//! control token. Corpus text therefore cannot inject control tokens, and
//! `decode(encode(text)) == text` holds for every string. [`Tokenizer::encode_with_special`]
//! recognises the control tokens (GGUF token type 3, or the `special` added tokens of a
//! `tokenizer.json`), for prompts written in a chat template. Non-special added tokens
//! of a `tokenizer.json` (GGUF type 4, "user-defined") are matched by both, as their
//! models expect. Neither adds BOS or EOS; [`Tokenizer::decode`] writes control tokens
//! out as their text.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::quantized::gguf_file;
use rayon::prelude::*;
use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::models::bpe::{Vocab, BPE};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::pre_tokenizers::PreTokenizerWrapper;
use tokenizers::{AddedToken, SplitDelimiterBehavior};

use crate::error::{Error, Result};

/// GGUF token type of a control token (`<|im_start|>`, `<|endoftext|>`, ...).
const GGUF_TOKEN_CONTROL: i64 = 3;
/// GGUF token type of a user-defined token (always matched as a whole in text).
const GGUF_TOKEN_USER_DEFINED: i64 = 4;

/// The split regex of Qwen2's pre-tokenizer (`tokenizer.ggml.pre = "qwen2"`), as
/// Qwen2's `tokenizer.json` and llama.cpp's `llama-vocab.cpp` give it. Unlike GPT-2's
/// it splits digits one at a time and keeps a single non-letter before a word.
const QWEN2_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// Words kept in the BPE cache. The default (10 000) is smaller than the number of
/// distinct words of a few-megabyte English corpus.
const BPE_CACHE_WORDS: usize = 200_000;

/// A text tokenizer with known BOS / EOS ids.
///
/// Cheap to share across threads (`&Tokenizer` is `Sync`); all methods take `&self`.
#[derive(Clone)]
pub struct Tokenizer {
    /// Control tokens are not matched in the input (see the module docs).
    literal: tokenizers::Tokenizer,
    /// Control tokens are matched in the input.
    special: tokenizers::Tokenizer,
    bos: Option<u32>,
    eos: Option<u32>,
    vocab_size: usize,
    special_ids: Vec<u32>,
    /// Bytes the vocabulary has no symbol for (`None`: all representable).
    unrepresentable: Option<[bool; 256]>,
    /// The checkpoint's Jinja chat template, when it has one.
    chat_template: Option<String>,
    source: PathBuf,
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokenizer")
            .field("source", &self.source)
            .field("vocab_size", &self.vocab_size)
            .field("bos", &self.bos)
            .field("eos", &self.eos)
            .finish_non_exhaustive()
    }
}

/// The pre-tokenizer families this module can build from a GGUF `tokenizer.ggml.pre`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum PreKind {
    /// Individual digits, then the GPT-2 regex.
    DigitsThenGpt2,
    /// The GPT-2 regex alone.
    Gpt2,
    /// Qwen2's split regex ([`QWEN2_SPLIT`]).
    Qwen2,
}

fn pre_kind(pre: &str) -> Option<PreKind> {
    match pre {
        "smollm" | "starcoder" | "refact" | "command-r" | "codeshell" | "exaone" | "minerva" => {
            Some(PreKind::DigitsThenGpt2)
        }
        "gpt2" | "mpt" | "olmo" | "jais" => Some(PreKind::Gpt2),
        "qwen2" => Some(PreKind::Qwen2),
        _ => None,
    }
}

/// The 256 characters GPT-2's byte-level mapping assigns to the bytes 0..=255.
fn byte_level_alphabet() -> Vec<char> {
    let printable = |b: u32| (0x21..=0x7E).contains(&b) || (0xA1..=0xAC).contains(&b) || b >= 0xAE;
    let mut next = 256u32;
    (0u32..256)
        .map(|b| {
            if printable(b) {
                char::from_u32(b).expect("byte is a valid char")
            } else {
                let c = char::from_u32(next).expect("256..512 are valid chars");
                next += 1;
                c
            }
        })
        .collect()
}

/// Reads an integer-valued GGUF metadata entry of any integer type.
fn gguf_int(v: &gguf_file::Value) -> Option<i64> {
    use gguf_file::Value as V;
    Some(match v {
        V::U8(x) => *x as i64,
        V::I8(x) => *x as i64,
        V::U16(x) => *x as i64,
        V::I16(x) => *x as i64,
        V::U32(x) => *x as i64,
        V::I32(x) => *x as i64,
        V::U64(x) => i64::try_from(*x).ok()?,
        V::I64(x) => *x,
        _ => return None,
    })
}

/// The SentencePiece pipeline of a GGUF vocabulary with `tokenizer.ggml.model =
/// "llama"` (Gemma 3, LLaMA 2), written to reproduce llama.cpp's SPM tokenizer, which is
/// not SentencePiece's Viterbi but a greedy merge: the text's spaces become `▁`, every
/// character starts as a symbol, and the adjacent pair whose concatenation is a
/// vocabulary entry of the highest score is merged first (the leftmost among equal
/// scores), until no pair is an entry; a character left that is not an entry becomes
/// its UTF-8 bytes' `<0xXX>` tokens.
///
/// That is a BPE of the `tokenizers` crate: the vocabulary as it is, one merge `(a, b)`
/// for every entry `a + b` split at a character boundary into two entries, ranked by
/// the score of `a + b` (highest first; equal scores by id), and byte fallback; the
/// normalizer `' ' → '▁'`, no pre-tokenizer (the whole text between added tokens is
/// one word, as in llama.cpp), the decoder `'▁' → ' '`, byte fallback, fuse. Control
/// tokens (type 3) are special added tokens and user-defined tokens (type 4: Gemma's
/// runs of newlines, spaces and tabs, `<start_of_image>`, ...) plain added tokens, both
/// matched on the raw text (not normalised), as llama.cpp partitions text on them
/// before tokenizing the rest. Errors are the one-line reason.
fn spm_tokenizer(
    tokens: &[&String],
    types: &[i64],
    scores: &[f32],
) -> std::result::Result<tokenizers::Tokenizer, String> {
    use tokenizers::decoders::byte_fallback::ByteFallback;
    use tokenizers::decoders::fuse::Fuse;
    use tokenizers::decoders::sequence::Sequence as DecoderSequence;
    use tokenizers::normalizers::replace::Replace;

    let mut vocab = Vocab::with_capacity(tokens.len());
    for (id, tok) in tokens.iter().enumerate() {
        vocab.entry((*tok).clone()).or_insert(id as u32);
    }
    for b in 0..=255u8 {
        let piece = format!("<0x{b:02X}>");
        if !vocab.contains_key(&piece) {
            return Err(format!(
                "SentencePiece vocabulary lacks the byte token `{piece}`; byte fallback \
                 needs all 256"
            ));
        }
    }
    // (score, id, left, right) for every split of every entry into two entries.
    let mut ranked: Vec<(f32, u32, &str, &str)> = Vec::new();
    for (id, tok) in tokens.iter().enumerate() {
        if vocab.get(tok.as_str()) != Some(&(id as u32)) {
            continue; // a duplicate string: llama.cpp looks up the first id
        }
        for (at, _) in tok.char_indices().skip(1) {
            let (a, b) = tok.split_at(at);
            if vocab.contains_key(a) && vocab.contains_key(b) {
                ranked.push((scores[id], id as u32, a, b));
            }
        }
    }
    ranked.sort_by(|x, y| y.0.total_cmp(&x.0).then(x.1.cmp(&y.1)));
    let merges: Vec<(String, String)> = ranked
        .into_iter()
        .map(|(_, _, a, b)| (a.to_string(), b.to_string()))
        .collect();
    let bpe = BPE::builder()
        .vocab_and_merges(vocab, merges)
        .byte_fallback(true)
        .cache_capacity(BPE_CACHE_WORDS)
        .build()
        .map_err(|e| format!("invalid SentencePiece vocabulary: {e}"))?;
    let mut hf = tokenizers::Tokenizer::new(bpe);
    let space = Replace::new(" ", "▁").map_err(|e| e.to_string())?;
    hf.with_normalizer(Some(space)).map_err(|e| e.to_string())?;
    let unspace = Replace::new("▁", " ").map_err(|e| e.to_string())?;
    hf.with_decoder(Some(DecoderSequence::new(vec![
        unspace.into(),
        ByteFallback::new().into(),
        Fuse::new().into(),
    ])));
    let added = |kind: i64, special: bool| -> Vec<AddedToken> {
        tokens
            .iter()
            .zip(types)
            .filter(|(_, &t)| t == kind)
            .map(|(s, _)| AddedToken::from((*s).clone(), special).normalized(false))
            .collect()
    };
    hf.add_special_tokens(added(GGUF_TOKEN_CONTROL, true))
        .map_err(|e| format!("control tokens: {e}"))?;
    hf.add_tokens(added(GGUF_TOKEN_USER_DEFINED, false))
        .map_err(|e| format!("user-defined tokens: {e}"))?;
    Ok(hf)
}

impl Tokenizer {
    /// Builds the tokenizer stored in a GGUF file's metadata (`tokenizer.ggml.*`).
    ///
    /// Only the header is read, not the tensor data. Errors name `path` when the file
    /// cannot be read, is not GGUF, lacks tokens or merges, uses a tokenizer model other
    /// than `gpt2` (byte-level BPE), or a pre-tokenizer type this module does not know.
    pub fn from_gguf(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let mut file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
        let content = gguf_file::Content::read(&mut file)
            .map_err(|e| Error::bad_file(path, format!("not a readable GGUF file: {e}")))?;
        Self::from_gguf_metadata(&content.metadata, path)
    }

    /// Builds the tokenizer from already-parsed GGUF metadata; `path` is only used in
    /// error messages and [`Tokenizer::source`].
    pub(crate) fn from_gguf_metadata(
        md: &HashMap<String, gguf_file::Value>,
        path: impl AsRef<Path>,
    ) -> Result<Self> {
        let path = path.as_ref();
        let bad = |msg: String| Error::bad_file(path, msg);
        let get_str = |key: &str| -> Result<Option<&String>> {
            match md.get(key) {
                None => Ok(None),
                Some(v) => v
                    .to_string()
                    .map(Some)
                    .map_err(|_| bad(format!("metadata `{key}` is not a string"))),
            }
        };
        let get_array = |key: &str| -> Result<&Vec<gguf_file::Value>> {
            md.get(key)
                .ok_or_else(|| bad(format!("no `{key}` in the GGUF metadata")))?
                .to_vec()
                .map_err(|_| bad(format!("metadata `{key}` is not an array")))
        };

        let model = get_str("tokenizer.ggml.model")?
            .ok_or_else(|| bad("no `tokenizer.ggml.model` in the GGUF metadata".into()))?;
        // `None`: SentencePiece; `Some`: byte-level BPE with this pre-tokenizer.
        let pre = match model.as_str() {
            "llama" => None,
            "gpt2" => {
                let pre_name = get_str("tokenizer.ggml.pre")?
                    .map(String::as_str)
                    .unwrap_or("gpt2");
                Some(pre_kind(pre_name).ok_or_else(|| {
                    bad(format!(
                        "pre-tokenizer `{pre_name}` is not supported (supported: smollm, \
                         starcoder, refact, command-r, codeshell, exaone, minerva, gpt2, mpt, \
                         olmo, jais, qwen2)"
                    ))
                })?)
            }
            _ => {
                return Err(bad(format!(
                    "tokenizer model `{model}` is not supported (only `gpt2`, byte-level BPE, \
                     and `llama`, SentencePiece)"
                )))
            }
        };
        let get_bool = |key: &str, default: bool| -> Result<bool> {
            match md.get(key) {
                None => Ok(default),
                Some(v) => v
                    .to_bool()
                    .map_err(|_| bad(format!("metadata `{key}` is not a bool"))),
            }
        };
        let add_prefix_space = get_bool("tokenizer.ggml.add_space_prefix", false)?;

        let tokens: Vec<&String> = get_array("tokenizer.ggml.tokens")?
            .iter()
            .map(|v| v.to_string())
            .collect::<std::result::Result<_, _>>()
            .map_err(|_| bad("`tokenizer.ggml.tokens` holds a non-string".into()))?;
        if tokens.is_empty() {
            return Err(bad("`tokenizer.ggml.tokens` is empty".into()));
        }
        let types: Vec<i64> = match md.get("tokenizer.ggml.token_type") {
            None => vec![1; tokens.len()],
            Some(v) => v
                .to_vec()
                .ok()
                .and_then(|a| a.iter().map(gguf_int).collect::<Option<Vec<_>>>())
                .ok_or_else(|| bad("`tokenizer.ggml.token_type` is not an integer array".into()))?,
        };
        if types.len() != tokens.len() {
            return Err(bad(format!(
                "{} token types for {} tokens",
                types.len(),
                tokens.len()
            )));
        }
        let finish = |hf, unrepresentable| {
            Self::from_gguf_parts(hf, md, path, tokens.len(), &types, unrepresentable)
        };
        let Some(pre) = pre else {
            let scores: Vec<f32> = get_array("tokenizer.ggml.scores")?
                .iter()
                .map(|v| v.to_f32())
                .collect::<std::result::Result<_, _>>()
                .map_err(|_| bad("`tokenizer.ggml.scores` holds a non-f32".into()))?;
            if scores.len() != tokens.len() {
                return Err(bad(format!(
                    "{} token scores for {} tokens",
                    scores.len(),
                    tokens.len()
                )));
            }
            if add_prefix_space {
                return Err(bad(
                    "`tokenizer.ggml.add_space_prefix` = true is not supported for \
                     SentencePiece vocabularies"
                        .into(),
                ));
            }
            let hf = spm_tokenizer(&tokens, &types, &scores).map_err(bad)?;
            return finish(hf, None);
        };
        let merges: Vec<(String, String)> = get_array("tokenizer.ggml.merges")?
            .iter()
            .enumerate()
            .map(|(i, v)| {
                let s = v
                    .to_string()
                    .map_err(|_| bad(format!("merge {i} is not a string")))?;
                let (a, b) = s
                    .split_once(' ')
                    .filter(|(a, b)| !a.is_empty() && !b.is_empty() && !b.contains(' '))
                    .ok_or_else(|| bad(format!("merge {i} `{s}` is not two tokens")))?;
                Ok((a.to_string(), b.to_string()))
            })
            .collect::<Result<_>>()?;

        let mut vocab = Vocab::with_capacity(tokens.len());
        for (id, tok) in tokens.iter().enumerate() {
            // llama.cpp keeps the first id of a duplicated string; so do we.
            vocab.entry((*tok).clone()).or_insert(id as u32);
        }
        // Without an unknown token, BPE silently drops characters it has no symbol for.
        // A byte-level vocabulary must hold the symbols of printable ASCII, tab and
        // newline; any other byte it lacks (SmolLM2 lacks six control characters and
        // lead bytes of 4-byte UTF-8 sequences above U+3FFFF) is refused by `encode`.
        let mut unrepresentable = [false; 256];
        for (b, c) in byte_level_alphabet().into_iter().enumerate() {
            if !vocab.contains_key(&c.to_string()) {
                if (0x20..0x7F).contains(&b) || b == b'\n' as usize || b == b'\t' as usize {
                    return Err(bad(format!(
                        "vocabulary lacks the byte-level symbol `{c}` (byte 0x{b:02x}); \
                         not a byte-level BPE vocabulary"
                    )));
                }
                unrepresentable[b] = true;
            }
        }
        let bpe = BPE::builder()
            .vocab_and_merges(vocab, merges)
            .cache_capacity(BPE_CACHE_WORDS)
            .build()
            .map_err(|e| bad(format!("invalid BPE vocabulary / merges: {e}")))?;

        let byte_level = ByteLevel::new(add_prefix_space, true, true);
        let pre_tokenizer: PreTokenizerWrapper = match pre {
            PreKind::DigitsThenGpt2 => Sequence::new(vec![
                PreTokenizerWrapper::Digits(Digits::new(true)),
                PreTokenizerWrapper::ByteLevel(byte_level),
            ])
            .into(),
            PreKind::Gpt2 => byte_level.into(),
            PreKind::Qwen2 => {
                let split = Split::new(
                    SplitPattern::Regex(QWEN2_SPLIT.into()),
                    SplitDelimiterBehavior::Isolated,
                    false,
                )
                .map_err(|e| bad(format!("the qwen2 split regex: {e}")))?;
                Sequence::new(vec![
                    PreTokenizerWrapper::Split(split),
                    PreTokenizerWrapper::ByteLevel(ByteLevel::new(add_prefix_space, true, false)),
                ])
                .into()
            }
        };
        let mut hf = tokenizers::Tokenizer::new(bpe);
        hf.with_pre_tokenizer(Some(pre_tokenizer));
        hf.with_decoder(Some(ByteLevelDecoder::default()));

        let added = |kind: i64, special: bool| -> Vec<AddedToken> {
            tokens
                .iter()
                .zip(&types)
                .filter(|(_, &t)| t == kind)
                .map(|(s, _)| AddedToken::from((*s).clone(), special))
                .collect()
        };
        hf.add_special_tokens(added(GGUF_TOKEN_CONTROL, true))
            .map_err(|e| bad(format!("control tokens: {e}")))?;
        hf.add_tokens(added(GGUF_TOKEN_USER_DEFINED, false))
            .map_err(|e| bad(format!("user-defined tokens: {e}")))?;
        finish(
            hf,
            unrepresentable
                .iter()
                .any(|&m| m)
                .then_some(unrepresentable),
        )
    }

    /// Puts a tokenizer built from GGUF metadata together: BOS / EOS ids checked
    /// against the vocabulary, the control tokens, the bytes `encode` refuses, the chat
    /// template.
    fn from_gguf_parts(
        hf: tokenizers::Tokenizer,
        md: &HashMap<String, gguf_file::Value>,
        path: &Path,
        n_tokens: usize,
        types: &[i64],
        unrepresentable: Option<[bool; 256]>,
    ) -> Result<Self> {
        let bad = |msg: String| Error::bad_file(path, msg);
        let get_int = |key: &str| -> Result<Option<i64>> {
            match md.get(key) {
                None => Ok(None),
                Some(v) => gguf_int(v)
                    .map(Some)
                    .ok_or_else(|| bad(format!("metadata `{key}` is not an integer"))),
            }
        };
        let id_in_range = |key: &str| -> Result<Option<u32>> {
            match get_int(key)? {
                None => Ok(None),
                Some(id) if id >= 0 && (id as usize) < n_tokens => Ok(Some(id as u32)),
                Some(id) => Err(bad(format!(
                    "`{key}` = {id} is outside the vocabulary of {n_tokens} tokens"
                ))),
            }
        };
        let bos = id_in_range("tokenizer.ggml.bos_token_id")?;
        let eos = id_in_range("tokenizer.ggml.eos_token_id")?;
        let special_ids = (0..n_tokens as u32)
            .filter(|&i| types[i as usize] == GGUF_TOKEN_CONTROL)
            .collect();
        let mut tok = Self::assemble(hf, bos, eos, n_tokens, special_ids, path);
        tok.unrepresentable = unrepresentable;
        tok.chat_template = match md.get("tokenizer.chat_template") {
            None => None,
            Some(v) => Some(
                v.to_string()
                    .map_err(|_| bad("metadata `tokenizer.chat_template` is not a string".into()))?
                    .clone(),
            ),
        };
        Ok(tok)
    }

    /// Loads a Hugging Face `tokenizer.json` (or the `tokenizer.json` inside a model
    /// folder).
    ///
    /// BOS / EOS ids come from `config.json` (`bos_token_id`, `eos_token_id`) beside the
    /// file, else from `tokenizer_config.json` (`bos_token`, `eos_token`), else are
    /// unknown (`None`). Truncation and padding stored in the file are switched off.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self> {
        let mut path = path.as_ref().to_path_buf();
        if path.is_dir() {
            path = path.join("tokenizer.json");
        }
        let bytes = std::fs::read(&path).map_err(|e| Error::io(&path, e))?;
        let mut hf = tokenizers::Tokenizer::from_bytes(&bytes)
            .map_err(|e| Error::bad_file(&path, format!("not a valid tokenizer.json: {e}")))?;
        hf.with_truncation(None)
            .map_err(|e| Error::bad_file(&path, e.to_string()))?;
        hf.with_padding(None);

        let dir = path.parent().unwrap_or(Path::new("."));
        let read_json = |name: &str| -> Result<Option<serde_json::Value>> {
            let p = dir.join(name);
            if !p.is_file() {
                return Ok(None);
            }
            let text = std::fs::read_to_string(&p).map_err(|e| Error::io(&p, e))?;
            serde_json::from_str(&text)
                .map(Some)
                .map_err(|e| Error::bad_file(&p, format!("invalid JSON: {e}")))
        };
        let config = read_json("config.json")?;
        let tok_config = read_json("tokenizer_config.json")?;
        let lookup = |id_key: &str, tok_key: &str| -> Option<u32> {
            let from_config = config.as_ref().and_then(|c| match c.get(id_key)? {
                serde_json::Value::Array(a) => a.first()?.as_u64(),
                v => v.as_u64(),
            });
            from_config.map(|id| id as u32).or_else(|| {
                let t = tok_config.as_ref()?.get(tok_key)?;
                let s = t.as_str().or_else(|| t.get("content")?.as_str())?;
                hf.token_to_id(s)
            })
        };
        let bos = lookup("bos_token_id", "bos_token");
        let eos = lookup("eos_token_id", "eos_token");
        let vocab_size = hf.get_vocab_size(true);
        let mut special_ids: Vec<u32> = hf
            .get_added_tokens_decoder()
            .into_iter()
            .filter(|(_, t)| t.special)
            .map(|(id, _)| id)
            .collect();
        special_ids.sort_unstable();
        let mut tok = Self::assemble(hf, bos, eos, vocab_size, special_ids, &path);
        tok.chat_template = tok_config
            .as_ref()
            .and_then(|c| c.get("chat_template")?.as_str())
            .map(str::to_string);
        Ok(tok)
    }

    /// Loads from a `.gguf` file, a `tokenizer.json`, or a folder holding a
    /// `tokenizer.json`, by looking at the path.
    pub fn from_path(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let is_gguf = path
            .extension()
            .is_some_and(|e| e.eq_ignore_ascii_case("gguf"));
        if is_gguf {
            Self::from_gguf(path)
        } else {
            Self::from_file(path)
        }
    }

    fn assemble(
        special: tokenizers::Tokenizer,
        bos: Option<u32>,
        eos: Option<u32>,
        vocab_size: usize,
        special_ids: Vec<u32>,
        source: &Path,
    ) -> Self {
        let mut literal = special.clone();
        literal.set_encode_special_tokens(true);
        Tokenizer {
            literal,
            special,
            bos,
            eos,
            vocab_size,
            special_ids,
            unrepresentable: None,
            chat_template: None,
            source: source.to_path_buf(),
        }
    }

    /// Replaces the BOS / EOS ids (for models whose files do not say them, or to pack
    /// documents with another separator).
    pub fn with_special_ids(mut self, bos: Option<u32>, eos: Option<u32>) -> Self {
        self.bos = bos;
        self.eos = eos;
        self
    }

    /// Token ids of `text`, treating control-token strings in it as plain text; no BOS
    /// or EOS is added. Returns one id per token, in order; `decode` of the result gives
    /// `text` back exactly.
    ///
    /// Errors if `text` holds a byte the vocabulary has no symbol for (for SmolLM2: the
    /// control characters U+0004, U+0006, U+0013, U+0014, U+0016, U+001D and code points
    /// U+40000..=U+BFFFF), rather than dropping it silently as a plain BPE would.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        self.check_representable(text)?;
        Self::run_encode(&self.literal, text)
    }

    /// Token ids of `text`, mapping control-token strings (`<|im_start|>`, ...) to their
    /// ids; no BOS or EOS is added. Same errors as [`Tokenizer::encode`].
    pub fn encode_with_special(&self, text: &str) -> Result<Vec<u32>> {
        self.check_representable(text)?;
        Self::run_encode(&self.special, text)
    }

    fn check_representable(&self, text: &str) -> Result<()> {
        let Some(mask) = &self.unrepresentable else {
            return Ok(());
        };
        match text.bytes().position(|b| mask[b as usize]) {
            None => Ok(()),
            Some(at) => {
                let start = (0..=at)
                    .rev()
                    .find(|&i| text.is_char_boundary(i))
                    .unwrap_or(0);
                let c = text[start..].chars().next().unwrap_or('\u{fffd}');
                Err(Error::tokenizer(format!(
                    "character U+{:04X} at byte {start} cannot be represented by the \
                     vocabulary of {}",
                    c as u32,
                    self.source.display()
                )))
            }
        }
    }

    fn run_encode(hf: &tokenizers::Tokenizer, text: &str) -> Result<Vec<u32>> {
        let enc = hf.encode_fast(text, false).map_err(Error::tokenizer)?;
        Ok(enc.get_ids().to_vec())
    }

    /// Whether `encode` accepts every byte (false for SmolLM2, see [`Tokenizer::encode`]).
    pub fn represents_all_bytes(&self) -> bool {
        self.unrepresentable.is_none()
    }

    /// [`Tokenizer::encode`] of many texts, in parallel on the rayon pool; output `i`
    /// is the encoding of `texts[i]`.
    pub fn encode_batch<S: AsRef<str> + Sync>(&self, texts: &[S]) -> Result<Vec<Vec<u32>>> {
        texts.par_iter().map(|t| self.encode(t.as_ref())).collect()
    }

    /// The text of `ids`, control tokens included as their strings. Invalid UTF-8 (a
    /// sequence cut inside a multi-byte character) becomes U+FFFD. Errors if an id is
    /// outside the vocabulary.
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        if let Some(&bad) = ids.iter().find(|&&id| id as usize >= self.vocab_size) {
            return Err(Error::tokenizer(format!(
                "token id {bad} is outside the vocabulary of {} tokens",
                self.vocab_size
            )));
        }
        self.special.decode(ids, false).map_err(Error::tokenizer)
    }

    /// The text one token stands for (for display), e.g. `" the"` for `Ġthe`; a token
    /// that is only part of a UTF-8 character shows as U+FFFD. `None` if `id` is outside
    /// the vocabulary.
    pub fn token_str(&self, id: u32) -> Option<String> {
        if id as usize >= self.vocab_size {
            return None;
        }
        self.special.decode(&[id], false).ok()
    }

    /// The vocabulary entry of `id` as stored (byte-level symbols, e.g. `"Ġthe"`).
    pub fn token_piece(&self, id: u32) -> Option<String> {
        self.special.id_to_token(id)
    }

    /// The id of a vocabulary entry as stored (e.g. `"Ġthe"`, `"<|im_start|>"`).
    pub fn token_to_id(&self, piece: &str) -> Option<u32> {
        self.special.token_to_id(piece)
    }

    /// Id of the beginning-of-sequence token, if the model files name one. For the
    /// SmolLM2-Instruct GGUF this is `<|im_start|>` (1).
    pub fn bos_id(&self) -> Option<u32> {
        self.bos
    }

    /// Id of the end-of-sequence token, if the model files name one (SmolLM2-Instruct:
    /// `<|im_end|>`, 2).
    pub fn eos_id(&self) -> Option<u32> {
        self.eos
    }

    /// Number of token ids (the model's embedding rows for GGUF); every id returned by
    /// `encode` is below it.
    pub fn vocab_size(&self) -> usize {
        self.vocab_size
    }

    /// Whether `id` is a control / special token (BOS, EOS, chat markers, ...).
    pub fn is_special(&self, id: u32) -> bool {
        self.special_ids.binary_search(&id).is_ok()
    }

    /// The ids of all control / special tokens, ascending.
    pub fn special_ids(&self) -> &[u32] {
        &self.special_ids
    }

    /// The checkpoint's Jinja chat template (GGUF `tokenizer.chat_template`, or
    /// `chat_template` in `tokenizer_config.json` beside a `tokenizer.json`), when it
    /// has one; [`crate::chat::ChatTemplate`] implements the ChatML ones.
    pub fn chat_template(&self) -> Option<&str> {
        self.chat_template.as_deref()
    }

    /// The file this tokenizer was loaded from.
    pub fn source(&self) -> &Path {
        &self.source
    }
}

#[cfg(test)]
pub(crate) mod tests;
