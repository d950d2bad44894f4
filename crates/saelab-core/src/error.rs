//! The error type of `saelab-core`.
//!
//! Every variant that concerns a file names the file, so that the binary can print a
//! single line such as `acts.npy: truncated: header says 4096 rows, file holds 1024`.

use std::path::{Path, PathBuf};

/// Errors raised by `saelab-core`.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file could not be read or written.
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
    /// Two inputs disagree in shape, or a shape is invalid for the operation.
    #[error("shape mismatch: {0}")]
    Shape(String),
    /// A configuration value is invalid.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// The run was interrupted (Ctrl-C); state up to the last checkpoint is safe.
    #[error("interrupted")]
    Interrupted,
}

/// Result alias for `saelab-core`.
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
}
