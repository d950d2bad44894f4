//! The one error type of the web side: what went wrong with a request, mapped to an
//! HTTP status. A request never panics the server; every refusal is a 4xx with a
//! one-line message, as JSON under `/api/` and as a small page elsewhere.

use axum::http::StatusCode;

/// A request that cannot be answered, or a folder that cannot be served.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WebError {
    /// The request is malformed (a bad number, a refused path, a prompt too long): 400.
    BadRequest(String),
    /// No such latent or page: 404.
    NotFound(String),
    /// The request body is over the limit: 413.
    TooLarge(String),
    /// The features folder or the model failed: 500, with the file named.
    Internal(String),
}

impl WebError {
    /// The HTTP status the error is answered with.
    pub fn status(&self) -> StatusCode {
        match self {
            WebError::BadRequest(_) => StatusCode::BAD_REQUEST,
            WebError::NotFound(_) => StatusCode::NOT_FOUND,
            WebError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            WebError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The one-line message.
    pub fn message(&self) -> &str {
        match self {
            WebError::BadRequest(m)
            | WebError::NotFound(m)
            | WebError::TooLarge(m)
            | WebError::Internal(m) => m,
        }
    }
}

impl std::fmt::Display for WebError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.message())
    }
}

impl std::error::Error for WebError {}

impl From<saelab_core::Error> for WebError {
    fn from(e: saelab_core::Error) -> Self {
        WebError::Internal(e.to_string().replace('\n', " "))
    }
}

/// The web side's result type.
pub type Result<T> = std::result::Result<T, WebError>;
