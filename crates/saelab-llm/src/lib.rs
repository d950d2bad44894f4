//! `saelab-llm`: the chat-completion contract that auto-interpretation (explainers and
//! LLM-judged scorers) is written against, so that the same pipeline runs with a local
//! model or any OpenAI-compatible endpoint.
//!
//! A [`ChatClient`] answers [`ChatRequest`]s (messages, a token budget, a temperature,
//! optionally the top log-probabilities of each generated token) with [`ChatReply`]s.
//! [`ChatClient::complete_many`] takes a batch, which a client may run concurrently (an
//! HTTP client, up to its concurrency) or as one batched generation (a local model).
//!
//! Failures are values, never panics: a batch returns one `Result` per request, so one
//! bad reply costs one item and the run goes on.
//!
//! The clients, one module each:
//!
//! - [`openai`]: [`OpenAiClient`], any OpenAI-compatible `chat/completions` endpoint
//!   (retries with back-off, a timeout, concurrent batches);
//! - [`local`]: [`LocalClient`], a local instruct model run by saelab-lm, a batch as
//!   one batched generation;
//! - [`cache`]: [`CachedClient`], a content-addressed directory of replies in front of
//!   either;
//! - [`config`]: [`ClientConfig`] and [`client_from`], what a command line fills in.

#![warn(missing_docs)]

pub mod cache;
pub mod config;
pub mod local;
pub mod openai;

pub use cache::{CacheStats, CachedClient};
pub use config::{client_from, ClientConfig};
pub use local::{LocalClient, LocalConfig, LocalReply};
pub use openai::{OpenAiClient, OpenAiConfig};

use serde::{Deserialize, Serialize};

/// Who wrote a message.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Instructions.
    System,
    /// The asker.
    User,
    /// The model.
    Assistant,
}

/// One message of a conversation.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ChatMessage {
    /// Its author.
    pub role: Role,
    /// Its text.
    pub content: String,
}

impl ChatMessage {
    /// A system message.
    pub fn system(content: impl Into<String>) -> Self {
        ChatMessage {
            role: Role::System,
            content: content.into(),
        }
    }

    /// A user message.
    pub fn user(content: impl Into<String>) -> Self {
        ChatMessage {
            role: Role::User,
            content: content.into(),
        }
    }

    /// An assistant message.
    pub fn assistant(content: impl Into<String>) -> Self {
        ChatMessage {
            role: Role::Assistant,
            content: content.into(),
        }
    }
}

/// A chat-completion request: the conversation and how to continue it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ChatRequest {
    /// The conversation so far; the reply continues it as the assistant.
    pub messages: Vec<ChatMessage>,
    /// Tokens to generate at most.
    pub max_tokens: u32,
    /// Softmax temperature; 0 is greedy.
    pub temperature: f32,
    /// With `Some(n)`, the reply carries the `n` most likely tokens (and their
    /// log-probabilities) at each generated position, as OpenAI's `top_logprobs`.
    pub top_logprobs: Option<u8>,
}

impl ChatRequest {
    /// A greedy request (temperature 0, no log-probabilities).
    pub fn greedy(messages: Vec<ChatMessage>, max_tokens: u32) -> Self {
        ChatRequest {
            messages,
            max_tokens,
            temperature: 0.0,
            top_logprobs: None,
        }
    }
}

/// One generated token with its log-probability and the most likely alternatives.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TokenLogprobs {
    /// The token's text.
    pub token: String,
    /// Its natural-log probability.
    pub logprob: f32,
    /// The most likely tokens at this position (the generated one among them when it
    /// is one of them), most likely first, as (text, log-probability).
    pub top: Vec<(String, f32)>,
}

/// A chat-completion reply.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ChatReply {
    /// The assistant's text.
    pub content: String,
    /// Per generated token, when the request asked for `top_logprobs` and the client
    /// provides them.
    pub logprobs: Option<Vec<TokenLogprobs>>,
    /// Why generation stopped: `"stop"` (an end token) or `"length"` (the budget).
    pub finish_reason: String,
}

/// Why a request got no reply. Each names what failed in one line.
#[derive(Debug, thiserror::Error)]
pub enum LlmError {
    /// The endpoint could not be reached, or the connection failed.
    #[error("{url}: unreachable: {msg}")]
    Unreachable {
        /// The endpoint.
        url: String,
        /// What the transport said.
        msg: String,
    },
    /// The endpoint answered with an HTTP error status (after the retries).
    #[error("{url}: HTTP {status}: {msg}")]
    Status {
        /// The endpoint.
        url: String,
        /// The status code.
        status: u16,
        /// The start of the body.
        msg: String,
    },
    /// No answer within the timeout (after the retries).
    #[error("{url}: timed out after {secs} s")]
    Timeout {
        /// The endpoint.
        url: String,
        /// The timeout.
        secs: u64,
    },
    /// The answer is not a chat-completion reply (not JSON, or fields missing).
    #[error("{url}: malformed reply: {msg}")]
    Malformed {
        /// The endpoint.
        url: String,
        /// What is wrong with it.
        msg: String,
    },
    /// The request cannot be run (too long for the model's context, empty, …).
    #[error("invalid request: {0}")]
    Invalid(String),
    /// The local model failed, or the response cache could not be read or written.
    #[error("{0}")]
    Other(String),
    /// The client cannot do what was asked (an OpenAI-compatible chat endpoint cannot
    /// score a given reply).
    #[error("{0}")]
    Unsupported(String),
}

/// Result alias for `saelab-llm`.
pub type Result<T, E = LlmError> = std::result::Result<T, E>;

/// Something that answers chat-completion requests.
pub trait ChatClient: Send + Sync {
    /// What answers: the model (and endpoint), part of every cache key, e.g.
    /// `local:Qwen2.5-Coder-1.5B-Instruct.Q4_K_M.gguf#<sha256 prefix>` or
    /// `openai:http://127.0.0.1:8000/v1#gpt-4o-mini`.
    fn model_id(&self) -> String;

    /// The reply to one request.
    fn complete(&self, req: &ChatRequest) -> Result<ChatReply>;

    /// The replies to a batch of requests, in order, one `Result` each. The default
    /// runs them one after another; clients override it to run them concurrently or
    /// batched.
    fn complete_many(&self, reqs: &[ChatRequest]) -> Vec<Result<ChatReply>> {
        reqs.iter().map(|r| self.complete(r)).collect()
    }

    /// Whether [`ChatClient::score_replies`] works.
    fn can_score_replies(&self) -> bool {
        false
    }

    /// Teacher forcing: each request's last message is an assistant's reply given in
    /// full; the answer is that reply as the model reads it after the conversation
    /// before it. A [`ChatReply`] with the given text as `content`, one
    /// [`TokenLogprobs`] per token of it (its log-probability, and the request's
    /// `top_logprobs` most likely tokens at its position) and `finish_reason`
    /// `"teacher_forced"`. Nothing is generated (`max_tokens` and `temperature` are not
    /// read). The simulation scorer needs it: the model's distribution at chosen
    /// places of a given text. The default refuses, as an OpenAI-compatible chat
    /// endpoint must (it gives log-probabilities of generated tokens only).
    fn score_replies(&self, reqs: &[ChatRequest]) -> Vec<Result<ChatReply>> {
        reqs.iter()
            .map(|_| {
                Err(LlmError::Unsupported(format!(
                    "{}: cannot score a given reply (teacher forcing needs a local model)",
                    self.model_id()
                )))
            })
            .collect()
    }
}

/// The one reply of a batch of one (`complete` through `complete_many`).
pub(crate) fn only_reply(mut replies: Vec<Result<ChatReply>>) -> Result<ChatReply> {
    replies
        .pop()
        .unwrap_or_else(|| Err(LlmError::Other("no reply".into())))
}

/// A boxed client is a client (so a [`CachedClient`] can wrap what [`client_from`]
/// builds).
impl ChatClient for Box<dyn ChatClient> {
    fn model_id(&self) -> String {
        (**self).model_id()
    }

    fn complete(&self, req: &ChatRequest) -> Result<ChatReply> {
        (**self).complete(req)
    }

    fn complete_many(&self, reqs: &[ChatRequest]) -> Vec<Result<ChatReply>> {
        (**self).complete_many(reqs)
    }

    fn can_score_replies(&self) -> bool {
        (**self).can_score_replies()
    }

    fn score_replies(&self, reqs: &[ChatRequest]) -> Vec<Result<ChatReply>> {
        (**self).score_replies(reqs)
    }
}
