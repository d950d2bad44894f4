//! The error type of `saelab-lm`.
//!
//! Like `saelab_core::Error`, every variant that concerns a file names it, so that the
//! binary can print one line such as `data/corpus: no *.txt documents found`.

use std::path::{Path, PathBuf};

/// Errors raised by `saelab-lm`.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file or folder could not be read or written.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file concerned.
        path: PathBuf,
        /// The underlying I/O error.
        source: std::io::Error,
    },
    /// A file exists but its contents are not what saelab expects.
    #[error("{}: {msg}", path.display())]
    BadFile {
        /// The file concerned.
        path: PathBuf,
        /// What is wrong with it, in a few words.
        msg: String,
    },
    /// A configuration value is invalid.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// The tokenizer failed on an input (not a file problem).
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    /// An error from `saelab-core`.
    #[error(transparent)]
    Core(#[from] saelab_core::Error),
}

/// Result alias for `saelab-lm`.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// An I/O error on `path`.
    pub fn io(path: impl AsRef<Path>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.as_ref().to_path_buf(),
            source,
        }
    }

    /// A malformed or unexpected file.
    pub fn bad_file(path: impl AsRef<Path>, msg: impl Into<String>) -> Self {
        Error::BadFile {
            path: path.as_ref().to_path_buf(),
            msg: msg.into(),
        }
    }

    /// An invalid configuration value.
    pub fn config(msg: impl Into<String>) -> Self {
        Error::Config(msg.into())
    }

    /// A tokenizer failure on some input.
    pub fn tokenizer(msg: impl std::fmt::Display) -> Self {
        Error::Tokenizer(msg.to_string())
    }
}
