//! The crate's error: one line, naming the file at fault.

use std::path::PathBuf;

/// What went wrong loading or running a sentence encoder. Every message is one line
/// and names the file it is about (a model-folder path), or the step that failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file the folder must hold is not there.
    #[error("{}: missing (a sentence-transformers model folder holds config.json, model.safetensors, tokenizer.json, modules.json and the pooling config)", .0.display())]
    Missing(PathBuf),
    /// A file exists but could not be read.
    #[error("{}: {message}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error, one line.
        message: String,
    },
    /// A JSON file does not parse, or lacks a field the encoder needs.
    #[error("{}: bad JSON: {message}", path.display())]
    Json {
        /// The file.
        path: PathBuf,
        /// What serde_json said, one line.
        message: String,
    },
    /// The files describe something this crate does not implement (another
    /// architecture, pooling mode or module).
    #[error("{}: {message}", path.display())]
    Unsupported {
        /// The file that says so.
        path: PathBuf,
        /// What is unsupported.
        message: String,
    },
    /// The weights do not fit the config: a missing tensor, a wrong shape or dtype.
    #[error("{}: {message}", path.display())]
    Weights {
        /// The safetensors file.
        path: PathBuf,
        /// What candle said, one line.
        message: String,
    },
    /// The tokenizer could not be loaded, or could not encode a text.
    #[error("{}: {message}", path.display())]
    Tokenizer {
        /// The tokenizer.json file.
        path: PathBuf,
        /// What the tokenizers crate said, one line.
        message: String,
    },
    /// The BERT forward failed (not expected once a model has loaded).
    #[error("BERT forward: {0}")]
    Forward(String),
}

/// The crate's result type.
pub type Result<T> = std::result::Result<T, Error>;

/// The first line of an error's message (candle's may append a backtrace).
pub(crate) fn one_line(e: impl std::fmt::Display) -> String {
    let s = e.to_string();
    s.lines().next().unwrap_or("").trim().to_string()
}
