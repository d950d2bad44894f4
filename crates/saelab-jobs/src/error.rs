//! The error type of `saelab-jobs`: the libraries' errors, plus what a job finds
//! wrong with its inputs, each on one line that names the file or setting at fault.

/// Errors raised by a job.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An error from `saelab-core` (files, shapes, configurations, Ctrl-C).
    #[error(transparent)]
    Core(#[from] saelab_core::Error),
    /// An error from `saelab-lm` (models, tokenizers, corpora, caches).
    #[error(transparent)]
    Lm(#[from] saelab_lm::Error),
    /// The job's inputs do not fit together; the message says how.
    #[error("{0}")]
    Invalid(String),
    /// `source`, in the context of what the job was doing.
    #[error("{context}")]
    Context {
        /// What the job was doing (e.g. `run topk-k32: cannot start training`).
        context: String,
        /// What went wrong.
        #[source]
        source: Box<Error>,
    },
}

/// Result alias for `saelab-jobs`.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// A job-level error with this message.
    pub fn invalid(msg: impl Into<String>) -> Self {
        Error::Invalid(msg.into())
    }

    /// Whether the job stopped because its stop flag was set (Ctrl-C): its state up to
    /// the last safe point is kept and running it again continues.
    pub fn is_interrupted(&self) -> bool {
        match self {
            Error::Core(saelab_core::Error::Interrupted) => true,
            Error::Lm(saelab_lm::Error::Core(saelab_core::Error::Interrupted)) => true,
            Error::Context { source, .. } => source.is_interrupted(),
            _ => false,
        }
    }
}

/// Adds context to the error of a result.
pub trait Context<T> {
    /// Wraps the error as [`Error::Context`] with the message `f()`.
    fn context_with(self, f: impl FnOnce() -> String) -> Result<T>;
}

impl<T, E: Into<Error>> Context<T> for std::result::Result<T, E> {
    fn context_with(self, f: impl FnOnce() -> String) -> Result<T> {
        self.map_err(|e| Error::Context {
            context: f(),
            source: Box::new(e.into()),
        })
    }
}
