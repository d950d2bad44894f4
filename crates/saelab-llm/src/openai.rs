//! [`OpenAiClient`]: any OpenAI-compatible chat-completion endpoint (OpenAI, vLLM,
//! llama.cpp's server, `saelab serve --llm`) over blocking HTTP (`ureq`).
//!
//! One request is one `POST {base_url}/chat/completions` with the body
//! `{model, messages: [{role, content}], max_tokens, temperature}`, plus
//! `logprobs: true, top_logprobs: n` only when the request asks for log-probabilities,
//! and `Authorization: Bearer <key>` when a key is set. The reply's
//! `choices[0].message.content`, `choices[0].finish_reason` and
//! `choices[0].logprobs.content[i].{token, logprob, top_logprobs[{token, logprob}]}`
//! become a [`ChatReply`].
//!
//! Transient failures are retried with exponential back-off (`backoff · 2^attempt`):
//! a connection that fails, a timeout, HTTP 429 and 5xx. Anything else (another 4xx, a
//! reply that is not a chat completion) is final at once. Every failure is an
//! [`LlmError`] naming the URL. [`ChatClient::complete_many`] runs a batch on up to
//! `concurrency` threads, each taking the next request, so results keep their order
//! and one failure costs one item.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use serde::Deserialize;
use serde_json::json;

use crate::{ChatClient, ChatReply, ChatRequest, LlmError, Result, Role, TokenLogprobs};

/// Bytes of an error body quoted in [`LlmError::Status`].
const BODY_QUOTE: usize = 200;

/// Largest reply body read, in bytes.
const REPLY_LIMIT: u64 = 16 << 20;

/// How to reach an OpenAI-compatible endpoint.
#[derive(Clone, Debug, PartialEq)]
pub struct OpenAiConfig {
    /// The API root, e.g. `http://127.0.0.1:8080/v1` (`/chat/completions` is appended;
    /// a trailing `/` is ignored).
    pub base_url: String,
    /// The model name sent in every request.
    pub model: String,
    /// The environment variable holding the API key (default `OPENAI_API_KEY`).
    pub key_env: String,
    /// Whether the key may be absent (a local server): then, with the variable unset
    /// or empty, no `Authorization` header is sent. When false (the default) a
    /// missing key is an error at construction.
    pub key_optional: bool,
    /// Time allowed for one attempt, connection to last byte (default 120 s).
    pub timeout: Duration,
    /// Attempts after the first for transient failures (default 3).
    pub retries: u32,
    /// The first back-off; attempt `k` waits `backoff · 2^k` before retrying (default
    /// 1 s).
    pub backoff: Duration,
    /// Requests of a batch in flight at once (default 4, at least 1).
    pub concurrency: usize,
}

impl OpenAiConfig {
    /// The defaults for `model` at `base_url`.
    pub fn new(base_url: impl Into<String>, model: impl Into<String>) -> Self {
        OpenAiConfig {
            base_url: base_url.into(),
            model: model.into(),
            key_env: "OPENAI_API_KEY".into(),
            key_optional: false,
            timeout: Duration::from_secs(120),
            retries: 3,
            backoff: Duration::from_secs(1),
            concurrency: 4,
        }
    }
}

/// A blocking client of an OpenAI-compatible `chat/completions` endpoint.
pub struct OpenAiClient {
    cfg: OpenAiConfig,
    url: String,
    key: Option<String>,
    agent: ureq::Agent,
}

impl std::fmt::Debug for OpenAiClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the key.
        f.debug_struct("OpenAiClient")
            .field("url", &self.url)
            .field("model", &self.cfg.model)
            .field("key", &self.key.as_ref().map(|_| "<set>"))
            .finish()
    }
}

impl OpenAiClient {
    /// A client for `cfg`. Errors (one line, before any request): an empty base URL
    /// or model, a base URL that is not `http://` or `https://`, a zero timeout, or a
    /// required key whose variable is unset or empty.
    pub fn new(cfg: OpenAiConfig) -> Result<Self> {
        let base = cfg.base_url.trim().trim_end_matches('/');
        if !(base.starts_with("http://") || base.starts_with("https://")) {
            return Err(LlmError::Invalid(format!(
                "base URL {:?} must start with http:// or https:// (e.g. \
                 http://127.0.0.1:8080/v1)",
                cfg.base_url
            )));
        }
        if cfg.model.trim().is_empty() {
            return Err(LlmError::Invalid(format!(
                "{base}: no model name given (the endpoint's model, e.g. gpt-4o-mini)"
            )));
        }
        if cfg.timeout.is_zero() {
            return Err(LlmError::Invalid("the timeout must be above 0 s".into()));
        }
        let key = std::env::var(&cfg.key_env)
            .ok()
            .filter(|k| !k.trim().is_empty());
        if key.is_none() && !cfg.key_optional {
            return Err(LlmError::Invalid(format!(
                "{base}: no API key: the environment variable {} is unset or empty \
                 (set it, name another variable, or make the key optional for a local \
                 server)",
                cfg.key_env
            )));
        }
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .timeout_global(Some(cfg.timeout))
            .http_status_as_error(false)
            .max_idle_connections_per_host(cfg.concurrency.max(1))
            .build()
            .into();
        Ok(OpenAiClient {
            url: format!("{base}/chat/completions"),
            key,
            agent,
            cfg,
        })
    }

    /// The endpoint every request is posted to (`{base_url}/chat/completions`).
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The JSON body of `req` (what is posted).
    pub fn request_body(&self, req: &ChatRequest) -> serde_json::Value {
        let messages: Vec<serde_json::Value> = req
            .messages
            .iter()
            .map(|m| json!({ "role": role_name(m.role), "content": m.content }))
            .collect();
        let mut body = json!({
            "model": self.cfg.model,
            "messages": messages,
            "max_tokens": req.max_tokens,
            "temperature": req.temperature,
        });
        if let Some(n) = req.top_logprobs {
            body["logprobs"] = json!(true);
            body["top_logprobs"] = json!(n);
        }
        body
    }

    /// One attempt: the reply, or the failure and whether it is worth retrying.
    fn attempt(&self, body: &str) -> std::result::Result<ChatReply, (LlmError, bool)> {
        let mut post = self
            .agent
            .post(&self.url)
            .header("Content-Type", "application/json");
        if let Some(key) = &self.key {
            post = post.header("Authorization", &format!("Bearer {key}"));
        }
        let mut resp = post.send(body).map_err(|e| self.transport(e))?;
        let status = resp.status().as_u16();
        let bytes = resp
            .body_mut()
            .with_config()
            .limit(REPLY_LIMIT)
            .read_to_vec()
            .map_err(|e| self.transport(e))?;
        let text = String::from_utf8_lossy(&bytes);
        if !(200..300).contains(&status) {
            let retry = status == 429 || status >= 500;
            let msg = one_line(&text, BODY_QUOTE);
            return Err((
                LlmError::Status {
                    url: self.url.clone(),
                    status,
                    msg,
                },
                retry,
            ));
        }
        parse_reply(&text).map_err(|msg| {
            (
                LlmError::Malformed {
                    url: self.url.clone(),
                    msg,
                },
                false,
            )
        })
    }

    /// A transport error as an [`LlmError`], retryable unless the reply was too large.
    fn transport(&self, e: ureq::Error) -> (LlmError, bool) {
        let url = self.url.clone();
        let timeout = LlmError::Timeout {
            url: url.clone(),
            secs: self.cfg.timeout.as_secs(),
        };
        match e {
            ureq::Error::Timeout(_) => (timeout, true),
            ureq::Error::Io(io) if io.kind() == std::io::ErrorKind::TimedOut => (timeout, true),
            ureq::Error::BodyExceedsLimit(n) => (
                LlmError::Malformed {
                    url,
                    msg: format!("the reply is over {n} bytes"),
                },
                false,
            ),
            other => (
                LlmError::Unreachable {
                    url,
                    msg: one_line(&other.to_string(), BODY_QUOTE),
                },
                true,
            ),
        }
    }
}

impl ChatClient for OpenAiClient {
    /// `openai:{base_url}#{model}`.
    fn model_id(&self) -> String {
        let base = self.url.trim_end_matches("/chat/completions");
        format!("openai:{base}#{}", self.cfg.model)
    }

    fn complete(&self, req: &ChatRequest) -> Result<ChatReply> {
        let body = self.request_body(req).to_string();
        let mut attempt = 0u32;
        loop {
            match self.attempt(&body) {
                Ok(reply) => return Ok(reply),
                Err((e, retry)) if retry && attempt < self.cfg.retries => {
                    let wait = self.cfg.backoff.saturating_mul(1u32 << attempt.min(16));
                    tracing::warn!(error = %e, attempt, wait_ms = wait.as_millis() as u64,
                        "chat request failed; retrying");
                    std::thread::sleep(wait);
                    attempt += 1;
                }
                Err((e, _)) => return Err(e),
            }
        }
    }

    /// The batch on up to `concurrency` threads, results in request order.
    fn complete_many(&self, reqs: &[ChatRequest]) -> Vec<Result<ChatReply>> {
        let threads = self.cfg.concurrency.clamp(1, reqs.len().max(1));
        let next = AtomicUsize::new(0);
        let out: Vec<Mutex<Option<Result<ChatReply>>>> =
            reqs.iter().map(|_| Mutex::new(None)).collect();
        std::thread::scope(|s| {
            for _ in 0..threads {
                s.spawn(|| loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(req) = reqs.get(i) else { break };
                    let r = self.complete(req);
                    *out[i].lock().unwrap_or_else(|e| e.into_inner()) = Some(r);
                });
            }
        });
        out.into_iter()
            .map(|m| {
                m.into_inner()
                    .unwrap_or_else(|e| e.into_inner())
                    .unwrap_or_else(|| Err(LlmError::Other("a request thread failed".into())))
            })
            .collect()
    }
}

/// The OpenAI name of a role.
fn role_name(r: Role) -> &'static str {
    match r {
        Role::System => "system",
        Role::User => "user",
        Role::Assistant => "assistant",
    }
}

/// The first `max` characters of `s` on one line.
fn one_line(s: &str, max: usize) -> String {
    let flat: String = s
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(max)
        .collect();
    let flat = flat.trim().to_string();
    if s.chars().count() > max {
        format!("{flat}…")
    } else {
        flat
    }
}

#[derive(Deserialize)]
struct Completion {
    choices: Vec<Choice>,
}

#[derive(Deserialize)]
struct Choice {
    message: Message,
    finish_reason: Option<String>,
    logprobs: Option<Logprobs>,
}

#[derive(Deserialize)]
struct Message {
    content: Option<String>,
}

#[derive(Deserialize)]
struct Logprobs {
    content: Option<Vec<TokenEntry>>,
}

#[derive(Deserialize)]
struct TokenEntry {
    token: String,
    logprob: f32,
    #[serde(default)]
    top_logprobs: Vec<TopEntry>,
}

#[derive(Deserialize)]
struct TopEntry {
    token: String,
    logprob: f32,
}

/// A chat-completion reply body as a [`ChatReply`], or what is wrong with it.
fn parse_reply(text: &str) -> std::result::Result<ChatReply, String> {
    let c: Completion = serde_json::from_str(text).map_err(|e| {
        let what = if serde_json::from_str::<serde_json::Value>(text).is_ok() {
            "not a chat completion"
        } else {
            "not JSON"
        };
        format!("{what} ({e}): {}", one_line(text, 80))
    })?;
    let choice = c
        .choices
        .into_iter()
        .next()
        .ok_or_else(|| "no choices in the reply".to_string())?;
    let logprobs = choice.logprobs.and_then(|l| l.content).map(|entries| {
        entries
            .into_iter()
            .map(|e| TokenLogprobs {
                token: e.token,
                logprob: e.logprob,
                top: e
                    .top_logprobs
                    .into_iter()
                    .map(|t| (t.token, t.logprob))
                    .collect(),
            })
            .collect()
    });
    Ok(ChatReply {
        content: choice.message.content.unwrap_or_default(),
        logprobs,
        finish_reason: choice.finish_reason.unwrap_or_else(|| "stop".into()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies_parse_and_bad_ones_say_why() {
        let r = parse_reply(
            r#"{"choices":[{"message":{"role":"assistant","content":"hi"},
                "finish_reason":"length","logprobs":{"content":[{"token":"hi",
                "logprob":-0.5,"top_logprobs":[{"token":"hi","logprob":-0.5},
                {"token":"yo","logprob":-1.5}]}]}}]}"#,
        )
        .unwrap();
        assert_eq!(r.content, "hi");
        assert_eq!(r.finish_reason, "length");
        let lp = r.logprobs.unwrap();
        assert_eq!(lp[0].top, vec![("hi".into(), -0.5), ("yo".into(), -1.5)]);
        assert!(parse_reply("<html>").unwrap_err().starts_with("not JSON"));
        assert!(parse_reply(r#"{"x":1}"#)
            .unwrap_err()
            .starts_with("not a chat completion"));
        assert_eq!(
            parse_reply(r#"{"choices":[]}"#).unwrap_err(),
            "no choices in the reply"
        );
        assert_eq!(one_line("a\nb", 10), "a b");
        assert_eq!(one_line("abcdef", 3), "abc…");
    }
}
