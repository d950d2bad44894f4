//! The error type of `saelab-lm`: `saelab_core`'s error plus the one failure core has
//! no word for, the tokenizer's.
//!
//! Files, shapes, configuration values and interruptions are `saelab_core::Error`s
//! (every one that concerns a file names it, so that the binary can print one line
//! such as `data/corpus: no *.txt documents found`), wrapped in [`Error::Core`]. Code
//! that cannot fail in the tokenizer — the model, the stream, running contexts through
//! the model — returns `saelab_core::Result` directly, so nothing ever converts back.

use std::path::Path;

/// Errors raised by `saelab-lm`.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file, shape, configuration or interruption error (`saelab_core`'s kinds).
    #[error(transparent)]
    Core(#[from] saelab_core::Error),
    /// The tokenizer failed on an input (not a file problem).
    #[error("tokenizer: {0}")]
    Tokenizer(String),
}

/// Result alias for `saelab-lm`.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// An I/O error on `path` ([`saelab_core::Error::Io`]).
    pub fn io(path: impl AsRef<Path>, source: std::io::Error) -> Self {
        saelab_core::Error::io(path, source).into()
    }

    /// A malformed or unexpected file ([`saelab_core::Error::BadFile`]).
    pub fn bad_file(path: impl AsRef<Path>, msg: impl Into<String>) -> Self {
        saelab_core::Error::bad_file(path, msg).into()
    }

    /// An invalid configuration value ([`saelab_core::Error::Config`]).
    pub fn config(msg: impl Into<String>) -> Self {
        saelab_core::Error::config(msg).into()
    }

    /// A tokenizer failure on some input.
    pub fn tokenizer(msg: impl std::fmt::Display) -> Self {
        Error::Tokenizer(msg.to_string())
    }
}
