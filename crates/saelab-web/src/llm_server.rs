//! `saelab serve --llm MODEL`: a local instruct model behind an OpenAI-compatible API,
//! so that auto-interpretation (or any OpenAI client) can use it over HTTP.
//!
//! Routes: `POST /v1/chat/completions` (non-streaming) and `GET /v1/models`. The body
//! of a completion request is OpenAI's: `messages` (`role` system, user or assistant,
//! `content` a string), `max_tokens` (or `max_completion_tokens`; default
//! [`DEFAULT_MAX_TOKENS`], at most [`MAX_TOKENS`]), `temperature` (default 1, in
//! `[0, 2]`), `logprobs` and `top_logprobs` (at most [`MAX_TOP_LOGPROBS`]); `model` is
//! accepted and ignored (one model is served, and named in every reply); `stream: true`
//! and `n` other than 1 are refused. The reply is OpenAI's `chat.completion` object
//! (`id`, `object`, `created`, `model`, `choices[{index, message{role, content},
//! finish_reason, logprobs}]`, `usage{prompt_tokens, completion_tokens,
//! total_tokens}`); every error is OpenAI's `{"error": {"message", "type"}}` with a
//! 4xx (the request: 400, body over [`LLM_BODY_LIMIT`]: 413, unknown path: 404) or a
//! 5xx (the queue full: 503, the model failed: 500). Every check runs before the model.
//!
//! Batching: handlers put each checked request on a bounded queue ([`QUEUE`]; full is
//! a 503) drained by one worker thread, which takes what is waiting — after the first
//! request, whatever else arrives within [`GATHER`], up to [`MAX_BATCH`] — and runs it
//! as one call of [`LocalClient::complete_detailed`] (one batched generation per
//! temperature and `max_tokens`). Requests that arrive together therefore share the
//! model's forwards; a request that arrives during a generation waits for the next.
//! Binds 127.0.0.1 unless told another host ([`crate::server::bind`]).

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use saelab_llm::{
    ChatMessage, ChatRequest, LlmError, LocalClient, LocalReply, Role, TokenLogprobs,
};
use serde::Deserialize;
use serde_json::{json, Value};

/// Largest request body accepted, in bytes (a 413 past it).
pub const LLM_BODY_LIMIT: usize = 256 * 1024;
/// Largest `max_tokens` accepted.
pub const MAX_TOKENS: u32 = 1024;
/// `max_tokens` when the request gives none.
pub const DEFAULT_MAX_TOKENS: u32 = 256;
/// Most messages in one request.
pub const MAX_MESSAGES: usize = 256;
/// Largest `top_logprobs` accepted (OpenAI's limit).
pub const MAX_TOP_LOGPROBS: u32 = 20;
/// Most requests in one batch of the worker.
pub const MAX_BATCH: usize = 16;
/// Requests waiting at most (a 503 past it).
pub const QUEUE: usize = 256;
/// How long the worker waits, after a first request, for others to join its batch.
pub const GATHER: Duration = Duration::from_millis(10);

/// A checked request waiting for the model, and where its reply goes.
struct Job {
    req: ChatRequest,
    reply: tokio::sync::oneshot::Sender<Result<LocalReply, LlmError>>,
}

/// What the handlers share: the model's name, the queue to its worker, the reply
/// counter.
#[derive(Debug)]
pub struct LlmServer {
    name: String,
    context_length: usize,
    queue: SyncSender<Job>,
    next_id: AtomicU64,
}

impl LlmServer {
    /// Starts the worker thread that owns `client` and returns the handlers' state.
    /// The worker ends when the state is dropped. Errors if the thread cannot start.
    pub fn new(client: LocalClient) -> std::io::Result<Arc<LlmServer>> {
        let (tx, rx) = std::sync::mpsc::sync_channel(QUEUE);
        let name = client.name().to_string();
        let context_length = client.context_length();
        std::thread::Builder::new()
            .name("saelab-llm-worker".into())
            .spawn(move || worker(client, rx))?;
        Ok(Arc::new(LlmServer {
            name,
            context_length,
            queue: tx,
            next_id: AtomicU64::new(1),
        }))
    }

    /// The model's name (its file name), as the replies and `/v1/models` give it.
    pub fn model_name(&self) -> &str {
        &self.name
    }
}

/// The worker: takes a batch of what is waiting, runs it, answers each request.
fn worker(client: LocalClient, rx: Receiver<Job>) {
    while let Ok(first) = rx.recv() {
        let mut jobs = vec![first];
        let until = Instant::now() + GATHER;
        while jobs.len() < MAX_BATCH {
            let left = until.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(j) => jobs.push(j),
                Err(RecvTimeoutError::Timeout) => {
                    // Whatever is already queued still joins.
                    while jobs.len() < MAX_BATCH {
                        match rx.try_recv() {
                            Ok(j) => jobs.push(j),
                            Err(_) => break,
                        }
                    }
                    break;
                }
                Err(RecvTimeoutError::Disconnected) => break,
            }
        }
        let reqs: Vec<ChatRequest> = jobs.iter().map(|j| j.req.clone()).collect();
        let t0 = Instant::now();
        let replies = client.complete_detailed(&reqs);
        tracing::info!(
            batch = reqs.len(),
            ms = t0.elapsed().as_millis() as u64,
            "chat completions"
        );
        for (job, r) in jobs.into_iter().zip(replies) {
            // A client that has gone away no longer waits for its reply.
            let _ = job.reply.send(r);
        }
    }
}

/// A refused or failed request, answered as OpenAI's error object.
#[derive(Debug)]
struct ApiError {
    status: StatusCode,
    message: String,
}

impl ApiError {
    fn bad(message: impl Into<String>) -> ApiError {
        ApiError {
            status: StatusCode::BAD_REQUEST,
            message: message.into(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let kind = if self.status.is_server_error() {
            tracing::error!(error = %self.message, "chat completion failed");
            "server_error"
        } else {
            "invalid_request_error"
        };
        let body = json!({ "error": {
            "message": self.message,
            "type": kind,
            "code": self.status.as_u16(),
        }});
        (self.status, Json(body)).into_response()
    }
}

/// OpenAI's request, the fields this server reads.
#[derive(Deserialize)]
struct WireRequest {
    #[allow(dead_code)]
    model: Option<String>,
    messages: Vec<WireMessage>,
    max_tokens: Option<u32>,
    max_completion_tokens: Option<u32>,
    temperature: Option<f32>,
    logprobs: Option<bool>,
    top_logprobs: Option<u32>,
    stream: Option<bool>,
    n: Option<u32>,
}

#[derive(Deserialize)]
struct WireMessage {
    role: String,
    content: String,
}

/// The request checked against every limit, as a [`ChatRequest`].
fn check(body: &[u8]) -> Result<ChatRequest, ApiError> {
    let w: WireRequest = serde_json::from_slice(body).map_err(|e| {
        ApiError::bad(format!(
            "the body is not a chat-completion request: {}",
            e.to_string().replace('\n', " ")
        ))
    })?;
    if w.stream == Some(true) {
        return Err(ApiError::bad(
            "streaming is not supported: send \"stream\": false",
        ));
    }
    if w.n.is_some_and(|n| n != 1) {
        return Err(ApiError::bad("only n = 1 is supported"));
    }
    if w.messages.is_empty() {
        return Err(ApiError::bad("messages is empty"));
    }
    if w.messages.len() > MAX_MESSAGES {
        return Err(ApiError::bad(format!(
            "{} messages; at most {MAX_MESSAGES}",
            w.messages.len()
        )));
    }
    let messages = w
        .messages
        .into_iter()
        .enumerate()
        .map(|(i, m)| {
            let role = match m.role.as_str() {
                "system" | "developer" => Role::System,
                "user" => Role::User,
                "assistant" => Role::Assistant,
                other => {
                    return Err(ApiError::bad(format!(
                        "messages[{i}]: role {:?} is not system, user or assistant",
                        other.chars().take(40).collect::<String>()
                    )))
                }
            };
            Ok(ChatMessage {
                role,
                content: m.content,
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let max_tokens = w
        .max_completion_tokens
        .or(w.max_tokens)
        .unwrap_or(DEFAULT_MAX_TOKENS);
    if max_tokens > MAX_TOKENS {
        return Err(ApiError::bad(format!(
            "max_tokens {max_tokens} is over this server's limit of {MAX_TOKENS}"
        )));
    }
    let temperature = w.temperature.unwrap_or(1.0);
    if !(0.0..=2.0).contains(&temperature) {
        return Err(ApiError::bad(format!(
            "temperature {temperature} must be in [0, 2]"
        )));
    }
    let top_logprobs = match (w.logprobs.unwrap_or(false), w.top_logprobs) {
        (_, Some(n)) if n > MAX_TOP_LOGPROBS => {
            return Err(ApiError::bad(format!(
                "top_logprobs {n} is over {MAX_TOP_LOGPROBS}"
            )))
        }
        (false, Some(_)) => {
            return Err(ApiError::bad("top_logprobs needs \"logprobs\": true"));
        }
        (true, n) => Some(n.unwrap_or(0) as u8),
        (false, None) => None,
    };
    Ok(ChatRequest {
        messages,
        max_tokens,
        temperature,
        top_logprobs,
    })
}

async fn chat_completions(
    State(st): State<Arc<LlmServer>>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<Value>, ApiError> {
    let body = body.map_err(|e| ApiError {
        status: e.status(),
        message: if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            format!("the request body is over {LLM_BODY_LIMIT} bytes")
        } else {
            e.body_text()
        },
    })?;
    let req = check(&body)?;
    let (tx, rx) = tokio::sync::oneshot::channel();
    st.queue
        .try_send(Job { req, reply: tx })
        .map_err(|e| match e {
            TrySendError::Full(_) => ApiError {
                status: StatusCode::SERVICE_UNAVAILABLE,
                message: format!("{QUEUE} requests are waiting; try again later"),
            },
            TrySendError::Disconnected(_) => ApiError {
                status: StatusCode::INTERNAL_SERVER_ERROR,
                message: "the model's worker has stopped".into(),
            },
        })?;
    let reply = rx
        .await
        .map_err(|_| ApiError {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            message: "the model's worker dropped the request".into(),
        })?
        .map_err(|e| ApiError {
            status: match e {
                LlmError::Invalid(_) => StatusCode::BAD_REQUEST,
                _ => StatusCode::INTERNAL_SERVER_ERROR,
            },
            message: e.to_string(),
        })?;
    let id = st.next_id.fetch_add(1, Ordering::Relaxed);
    Ok(Json(completion(&st, id, reply)))
}

/// OpenAI's `chat.completion` object for one reply.
fn completion(st: &LlmServer, id: u64, r: LocalReply) -> Value {
    let created = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let logprobs = r.reply.logprobs.as_ref().map(|lp| {
        let entry = |t: &str, l: f32| json!({ "token": t, "logprob": l, "bytes": t.as_bytes() });
        let content: Vec<Value> = lp
            .iter()
            .map(
                |TokenLogprobs {
                     token,
                     logprob,
                     top,
                 }| {
                    let mut e = entry(token, *logprob);
                    e["top_logprobs"] = top.iter().map(|(t, l)| entry(t, *l)).collect();
                    e
                },
            )
            .collect();
        json!({ "content": content })
    });
    json!({
        "id": format!("chatcmpl-saelab-{id}"),
        "object": "chat.completion",
        "created": created,
        "model": st.name,
        "choices": [{
            "index": 0,
            "message": { "role": "assistant", "content": r.reply.content },
            "finish_reason": r.reply.finish_reason,
            "logprobs": logprobs,
        }],
        "usage": {
            "prompt_tokens": r.prompt_tokens,
            "completion_tokens": r.completion_tokens,
            "total_tokens": r.prompt_tokens + r.completion_tokens,
        },
    })
}

async fn models(State(st): State<Arc<LlmServer>>) -> Json<Value> {
    Json(json!({
        "object": "list",
        "data": [{
            "id": st.name,
            "object": "model",
            "created": 0,
            "owned_by": "saelab",
            "context_length": st.context_length,
        }],
    }))
}

async fn not_found() -> ApiError {
    ApiError {
        status: StatusCode::NOT_FOUND,
        message: "no such route: this server has POST /v1/chat/completions and GET /v1/models"
            .into(),
    }
}

/// The routes and their limits, over `state`.
pub fn router(state: Arc<LlmServer>) -> Router {
    Router::new()
        .route("/v1/chat/completions", post(chat_completions))
        .route("/v1/models", get(models))
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(LLM_BODY_LIMIT))
        .with_state(state)
}

/// Serves `state` on `listener` until `shutdown` completes (then lets open requests
/// finish).
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: Arc<LlmServer>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router(state))
        .with_graceful_shutdown(shutdown)
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(body: &str) -> String {
        check(body.as_bytes()).unwrap_err().message
    }

    #[test]
    fn requests_are_checked_before_the_model() {
        let ok = check(
            br#"{"model":"x","messages":[{"role":"system","content":"s"},
                {"role":"user","content":"u"}],"max_tokens":5,"temperature":0,
                "logprobs":true,"top_logprobs":3}"#,
        )
        .unwrap();
        assert_eq!(ok.messages[0], ChatMessage::system("s"));
        assert_eq!(
            (ok.max_tokens, ok.temperature, ok.top_logprobs),
            (5, 0.0, Some(3))
        );
        let plain = check(br#"{"messages":[{"role":"user","content":"u"}]}"#).unwrap();
        assert_eq!(
            (plain.max_tokens, plain.temperature, plain.top_logprobs),
            (DEFAULT_MAX_TOKENS, 1.0, None)
        );
        let m = r#""messages":[{"role":"user","content":"u"}]"#;
        for (body, needle) in [
            (format!("{{{m},\"stream\":true}}"), "streaming"),
            (format!("{{{m},\"n\":2}}"), "n = 1"),
            (format!("{{{m},\"max_tokens\":5000}}"), "max_tokens 5000"),
            (format!("{{{m},\"temperature\":3}}"), "temperature 3"),
            (format!("{{{m},\"top_logprobs\":2}}"), "needs"),
            (
                format!("{{{m},\"logprobs\":true,\"top_logprobs\":21}}"),
                "top_logprobs 21",
            ),
            (r#"{"messages":[]}"#.into(), "empty"),
            (
                r#"{"messages":[{"role":"tool","content":"x"}]}"#.into(),
                "role \"tool\"",
            ),
            ("not json".into(), "not a chat-completion request"),
        ] {
            let e = refused(&body);
            assert!(e.contains(needle) && !e.contains('\n'), "{body}: {e}");
        }
        let many: Vec<String> = (0..=MAX_MESSAGES)
            .map(|_| r#"{"role":"user","content":"u"}"#.to_string())
            .collect();
        let e = refused(&format!("{{\"messages\":[{}]}}", many.join(",")));
        assert!(e.contains("at most"), "{e}");
    }
}
