//! Documents from plain-text files, folders of `*.txt` files and JSONL, and the
//! train / held-out split by document.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// One document of a corpus.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Document {
    /// Index of the document in its [`Corpus`] (0, 1, 2, ... in corpus order).
    pub id: u32,
    /// Where the text came from: a file path, or `path:line` for a JSONL record.
    pub source: String,
    /// The text, exactly as read (no normalisation, no trimming).
    pub text: String,
}

/// How to read documents.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LoadOptions {
    /// The JSONL field holding the text (default `text`).
    pub jsonl_field: String,
    /// Keep documents whose text is empty or only whitespace (default false: they are
    /// skipped, since they hold nothing to learn from).
    pub keep_empty: bool,
}

impl Default for LoadOptions {
    fn default() -> Self {
        LoadOptions {
            jsonl_field: "text".to_string(),
            keep_empty: false,
        }
    }
}

/// An ordered list of documents; `documents()[i].id == i`.
///
/// The order is deterministic: a folder's files are sorted by path, JSONL records keep
/// their line order. Everything downstream (split, packing, the activation cache's
/// document ids) depends on this order only.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Corpus {
    docs: Vec<Document>,
}

/// Which documents to use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Part {
    /// Documents not held out (for training).
    Train,
    /// The held-out documents (for evaluation; never trained on).
    HeldOut,
    /// Every document.
    All,
}

/// The held-out rule: document `id` is held out when `id % every == offset`.
///
/// The default, every 20th document (`every = 20`, `offset = 19`), holds out 5 %.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HeldOut {
    every: u32,
    offset: u32,
}

impl Default for HeldOut {
    fn default() -> Self {
        HeldOut {
            every: 20,
            offset: 19,
        }
    }
}

impl HeldOut {
    /// Holds out the documents with `id % every == offset`; needs `offset < every`.
    pub fn new(every: u32, offset: u32) -> Result<Self> {
        if every == 0 || offset >= every {
            return Err(Error::config(format!(
                "held-out rule needs 0 <= offset < every, got every = {every}, offset = {offset}"
            )));
        }
        Ok(HeldOut { every, offset })
    }

    /// The period of the rule.
    pub fn every(&self) -> u32 {
        self.every
    }

    /// The residue of held-out document ids.
    pub fn offset(&self) -> u32 {
        self.offset
    }

    /// Whether document `id` is held out.
    pub fn is_held_out(&self, id: u32) -> bool {
        id % self.every == self.offset
    }

    /// Whether document `id` belongs to `part`.
    pub fn in_part(&self, id: u32, part: Part) -> bool {
        match part {
            Part::All => true,
            Part::Train => !self.is_held_out(id),
            Part::HeldOut => self.is_held_out(id),
        }
    }
}

fn read_utf8(path: &Path) -> Result<String> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    String::from_utf8(bytes).map_err(|e| {
        Error::bad_file(
            path,
            format!(
                "not UTF-8 text (invalid byte at offset {})",
                e.utf8_error().valid_up_to()
            ),
        )
    })
}

/// Appends every `*.txt` file below `dir` (following symbolic links, visiting each real
/// folder once) to `out`.
fn collect_txt(dir: &Path, out: &mut Vec<PathBuf>, seen: &mut HashSet<PathBuf>) -> Result<()> {
    let real = dir.canonicalize().map_err(|e| Error::io(dir, e))?;
    if !seen.insert(real) {
        return Ok(());
    }
    for entry in std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))? {
        let path = entry.map_err(|e| Error::io(dir, e))?.path();
        let meta = std::fs::metadata(&path).map_err(|e| Error::io(&path, e))?;
        if meta.is_dir() {
            collect_txt(&path, out, seen)?;
        } else if meta.is_file()
            && path
                .extension()
                .is_some_and(|e| e.eq_ignore_ascii_case("txt"))
        {
            out.push(path);
        }
    }
    Ok(())
}

impl Corpus {
    /// Documents from `path`: a folder (every `*.txt` below it, recursively, sorted by
    /// path, one document per file), a `.jsonl` / `.ndjson` file (one document per
    /// record), or any other file (one plain-text document).
    ///
    /// Errors name the path: missing or unreadable, not UTF-8, a JSONL record without the
    /// text field, or no (non-empty) documents at all.
    pub fn load(path: impl AsRef<Path>, opts: &LoadOptions) -> Result<Self> {
        let path = path.as_ref();
        let meta = std::fs::metadata(path).map_err(|e| Error::io(path, e))?;
        if meta.is_dir() {
            Self::from_dir(path, opts)
        } else {
            let jsonl = path.extension().is_some_and(|e| {
                e.eq_ignore_ascii_case("jsonl") || e.eq_ignore_ascii_case("ndjson")
            });
            if jsonl {
                Self::from_jsonl(path, opts)
            } else {
                Self::from_text_file(path, opts)
            }
        }
    }

    /// One document holding the whole of a UTF-8 text file.
    pub fn from_text_file(path: impl AsRef<Path>, opts: &LoadOptions) -> Result<Self> {
        let path = path.as_ref();
        let text = read_utf8(path)?;
        let corpus = Self::from_texts([(path.display().to_string(), text)], opts);
        corpus.non_empty(path, "the file holds only whitespace")
    }

    /// One document per `*.txt` file below `dir` (recursively, following links), in
    /// path order.
    pub fn from_dir(dir: impl AsRef<Path>, opts: &LoadOptions) -> Result<Self> {
        let dir = dir.as_ref();
        let mut files = Vec::new();
        collect_txt(dir, &mut files, &mut HashSet::new())?;
        files.sort();
        let found = files.len();
        let texts = files
            .into_iter()
            .map(|p| Ok((p.display().to_string(), read_utf8(&p)?)))
            .collect::<Result<Vec<_>>>()?;
        let corpus = Self::from_texts(texts, opts);
        let why = if found == 0 {
            "no *.txt documents found".to_string()
        } else {
            format!("all {found} *.txt files are empty")
        };
        corpus.non_empty(dir, &why)
    }

    /// One document per line of a JSONL file, the text taken from the string field
    /// `opts.jsonl_field` of each record. Blank lines are skipped; a line that is not a
    /// JSON object with that string field is an error naming the file and line.
    pub fn from_jsonl(path: impl AsRef<Path>, opts: &LoadOptions) -> Result<Self> {
        let path = path.as_ref();
        let content = read_utf8(path)?;
        let field = opts.jsonl_field.as_str();
        let mut texts = Vec::new();
        for (i, line) in content.lines().enumerate() {
            let lineno = i + 1;
            if line.trim().is_empty() {
                continue;
            }
            let value: serde_json::Value = serde_json::from_str(line)
                .map_err(|e| Error::bad_file(path, format!("line {lineno}: invalid JSON: {e}")))?;
            let obj = value.as_object().ok_or_else(|| {
                Error::bad_file(path, format!("line {lineno}: not a JSON object"))
            })?;
            let text = match obj.get(field) {
                Some(serde_json::Value::String(s)) => s.clone(),
                Some(_) => {
                    return Err(Error::bad_file(
                        path,
                        format!("line {lineno}: field `{field}` is not a string"),
                    ))
                }
                None => {
                    let mut keys: Vec<&str> = obj.keys().map(String::as_str).collect();
                    keys.truncate(8);
                    return Err(Error::bad_file(
                        path,
                        format!(
                            "line {lineno}: no field `{field}` (fields: {})",
                            keys.join(", ")
                        ),
                    ));
                }
            };
            texts.push((format!("{}:{lineno}", path.display()), text));
        }
        let corpus = Self::from_texts(texts, opts);
        corpus.non_empty(path, "no non-empty records")
    }

    /// A corpus from in-memory `(source, text)` pairs, in the given order (empty texts
    /// skipped unless `opts.keep_empty`). Never fails; may be empty.
    pub fn from_texts<I, S, T>(texts: I, opts: &LoadOptions) -> Self
    where
        I: IntoIterator<Item = (S, T)>,
        S: Into<String>,
        T: Into<String>,
    {
        let docs = texts
            .into_iter()
            .map(|(s, t)| (s.into(), t.into()))
            .filter(|(_, t): &(String, String)| opts.keep_empty || !t.trim().is_empty())
            .enumerate()
            .map(|(i, (source, text))| Document {
                id: u32::try_from(i).expect("more than 4 billion documents"),
                source,
                text,
            })
            .collect();
        Corpus { docs }
    }

    fn non_empty(self, path: &Path, why: &str) -> Result<Self> {
        if self.docs.is_empty() {
            Err(Error::bad_file(path, why))
        } else {
            Ok(self)
        }
    }

    /// All documents, in corpus order.
    pub fn documents(&self) -> &[Document] {
        &self.docs
    }

    /// Number of documents.
    pub fn len(&self) -> usize {
        self.docs.len()
    }

    /// Whether there are no documents.
    pub fn is_empty(&self) -> bool {
        self.docs.is_empty()
    }

    /// Total UTF-8 bytes of text.
    pub fn total_bytes(&self) -> usize {
        self.docs.iter().map(|d| d.text.len()).sum()
    }

    /// The documents of `part` under `held_out`, in corpus order.
    pub fn part(&self, part: Part, held_out: HeldOut) -> Vec<&Document> {
        self.docs
            .iter()
            .filter(|d| held_out.in_part(d.id, part))
            .collect()
    }
}
