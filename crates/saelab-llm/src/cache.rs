//! [`CachedClient`]: a content-addressed cache of replies in a directory, in front of
//! any [`ChatClient`], so that re-running auto-interpretation asks nothing twice.
//!
//! The key of a request is `sha256(canonical JSON of {"model_id", "request"})` in hex:
//! the inner client's [`ChatClient::model_id`] and the whole [`ChatRequest`] (messages,
//! budget, temperature, log-probabilities), with object keys sorted, so a changed
//! model, prompt or setting is a different key. The reply is `{dir}/{key}.json`
//! (`{"model_id", "request", "reply"}`), written to a temporary sibling and renamed
//! into place, so a file is complete or absent; not synced, so after a crash a file may
//! be truncated, and a file that does not parse or holds another request is a miss,
//! asked again and rewritten, never a panic. Failures are not cached.
//!
//! A batch sends only its misses, once each (a request repeated in the batch is asked
//! once), to the inner client's [`ChatClient::complete_many`] in one call.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::{ChatClient, ChatReply, ChatRequest, LlmError, Result};

/// What a [`CachedClient`] has done so far.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CacheStats {
    /// Requests sent to the inner client.
    pub requests: u64,
    /// Requests answered from the cache.
    pub hits: u64,
    /// Requests the inner client failed (not cached).
    pub failures: u64,
    /// Replies that could not be written to the cache (each also logged).
    pub write_errors: u64,
}

/// A [`ChatClient`] that answers from a directory of replies when it can and asks
/// `inner` otherwise.
pub struct CachedClient<C: ChatClient> {
    inner: C,
    dir: PathBuf,
    model_id: String,
    requests: AtomicU64,
    hits: AtomicU64,
    failures: AtomicU64,
    write_errors: AtomicU64,
    tmp_counter: AtomicU64,
}

/// One cache file.
#[derive(Serialize, Deserialize)]
struct Entry {
    model_id: String,
    request: ChatRequest,
    reply: ChatReply,
}

impl<C: ChatClient> CachedClient<C> {
    /// `inner` with its replies cached in `dir` (created if needed). Errors (one line)
    /// when `dir` cannot be created or written.
    pub fn new(inner: C, dir: impl AsRef<Path>) -> Result<Self> {
        let dir = dir.as_ref().to_path_buf();
        let fail =
            |e: std::io::Error| LlmError::Other(format!("response cache {}: {e}", dir.display()));
        std::fs::create_dir_all(&dir).map_err(fail)?;
        let probe = dir.join(format!(".write-test-{}", std::process::id()));
        std::fs::write(&probe, b"").map_err(fail)?;
        let _ = std::fs::remove_file(&probe);
        Ok(CachedClient {
            model_id: inner.model_id(),
            inner,
            dir,
            requests: AtomicU64::new(0),
            hits: AtomicU64::new(0),
            failures: AtomicU64::new(0),
            write_errors: AtomicU64::new(0),
            tmp_counter: AtomicU64::new(0),
        })
    }

    /// The counters so far.
    pub fn stats(&self) -> CacheStats {
        CacheStats {
            requests: self.requests.load(Ordering::Relaxed),
            hits: self.hits.load(Ordering::Relaxed),
            failures: self.failures.load(Ordering::Relaxed),
            write_errors: self.write_errors.load(Ordering::Relaxed),
        }
    }

    /// The client asked on a miss.
    pub fn inner(&self) -> &C {
        &self.inner
    }

    /// The cache directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The cache key of `req` (64 hex digits): the sha256 of the canonical JSON of
    /// `{"model_id": …, "request": …}`.
    pub fn key(&self, req: &ChatRequest) -> String {
        cache_key(&self.model_id, req)
    }

    /// The file holding the reply to `req` (whether or not it exists yet).
    pub fn path_of(&self, req: &ChatRequest) -> PathBuf {
        self.path_in(Mode::Complete, req)
    }

    /// The model id an entry of `mode` is stored under: a teacher-forced score is
    /// another answer to the same request, so it has keys of its own.
    fn id_of(&self, mode: Mode) -> String {
        match mode {
            Mode::Complete => self.model_id.clone(),
            Mode::Score => format!("{}#teacher-forced", self.model_id),
        }
    }

    fn path_in(&self, mode: Mode, req: &ChatRequest) -> PathBuf {
        let key = cache_key(&self.id_of(mode), req);
        self.dir.join(format!("{key}.json"))
    }

    /// The cached reply of `req`, if a valid one is stored.
    fn lookup(&self, mode: Mode, req: &ChatRequest, path: &Path) -> Option<ChatReply> {
        let bytes = std::fs::read(path).ok()?;
        match serde_json::from_slice::<Entry>(&bytes) {
            Ok(e) if e.model_id == self.id_of(mode) && &e.request == req => Some(e.reply),
            _ => {
                tracing::warn!(file = %path.display(), "unreadable cache entry; asking again");
                None
            }
        }
    }

    /// Stores `reply`; a failure is counted and logged, not returned (the reply is
    /// good).
    fn store(&self, mode: Mode, req: &ChatRequest, path: &Path, reply: &ChatReply) {
        let entry = Entry {
            model_id: self.id_of(mode),
            request: req.clone(),
            reply: reply.clone(),
        };
        let n = self.tmp_counter.fetch_add(1, Ordering::Relaxed);
        let name = path.file_name().unwrap_or_default().to_string_lossy();
        let tmp = path.with_file_name(format!(".{name}.{}-{n}.tmp", std::process::id()));
        let written = serde_json::to_vec(&entry)
            .map_err(std::io::Error::other)
            .and_then(|bytes| std::fs::write(&tmp, bytes))
            .and_then(|()| std::fs::rename(&tmp, path));
        if let Err(e) = written {
            let _ = std::fs::remove_file(&tmp);
            self.write_errors.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(file = %path.display(), error = %e, "cannot write the cache entry");
        }
    }

    /// Counts and stores what the inner client answered.
    fn record(&self, mode: Mode, req: &ChatRequest, path: &Path, r: &Result<ChatReply>) {
        match r {
            Ok(reply) => self.store(mode, req, path, reply),
            Err(_) => {
                self.failures.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Hits from the directory; the distinct misses in one call of `ask`.
    fn answer_many(
        &self,
        mode: Mode,
        reqs: &[ChatRequest],
        ask: impl FnOnce(&[ChatRequest]) -> Vec<Result<ChatReply>>,
    ) -> Vec<Result<ChatReply>> {
        let mut out: Vec<Option<Result<ChatReply>>> = Vec::with_capacity(reqs.len());
        // Per distinct miss: its key's path, and every index asking it.
        let mut misses: Vec<(PathBuf, Vec<usize>)> = Vec::new();
        let mut seen = std::collections::HashMap::<PathBuf, usize>::new();
        for (i, req) in reqs.iter().enumerate() {
            let path = self.path_in(mode, req);
            if let Some(&m) = seen.get(&path) {
                misses[m].1.push(i);
                out.push(None);
                self.hits.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            match self.lookup(mode, req, &path) {
                Some(reply) => {
                    self.hits.fetch_add(1, Ordering::Relaxed);
                    out.push(Some(Ok(reply)));
                }
                None => {
                    seen.insert(path.clone(), misses.len());
                    misses.push((path, vec![i]));
                    out.push(None);
                }
            }
        }
        if !misses.is_empty() {
            let asked: Vec<ChatRequest> = misses.iter().map(|m| reqs[m.1[0]].clone()).collect();
            self.requests
                .fetch_add(asked.len() as u64, Ordering::Relaxed);
            let mut answers = ask(&asked);
            answers.resize_with(asked.len(), || {
                Err(LlmError::Other(
                    "the inner client returned fewer replies than requests".into(),
                ))
            });
            for ((path, idx), r) in misses.iter().zip(answers) {
                self.record(mode, &reqs[idx[0]], path, &r);
                for &i in &idx[1..] {
                    out[i] = Some(clone_result(&r));
                }
                out[idx[0]] = Some(r);
            }
        }
        out.into_iter()
            .map(|r| r.unwrap_or_else(|| Err(LlmError::Other("no reply".into()))))
            .collect()
    }
}

/// What a cache entry answers: a completion, or a teacher-forced score.
#[derive(Clone, Copy)]
enum Mode {
    Complete,
    Score,
}

impl<C: ChatClient> ChatClient for CachedClient<C> {
    /// The inner client's.
    fn model_id(&self) -> String {
        self.model_id.clone()
    }

    fn complete(&self, req: &ChatRequest) -> Result<ChatReply> {
        crate::only_reply(self.complete_many(std::slice::from_ref(req)))
    }

    /// Hits from the directory; the distinct misses in one inner `complete_many`.
    fn complete_many(&self, reqs: &[ChatRequest]) -> Vec<Result<ChatReply>> {
        self.answer_many(Mode::Complete, reqs, |r| self.inner.complete_many(r))
    }

    fn can_score_replies(&self) -> bool {
        self.inner.can_score_replies()
    }

    /// Cached as completions are, under keys of their own.
    fn score_replies(&self, reqs: &[ChatRequest]) -> Vec<Result<ChatReply>> {
        self.answer_many(Mode::Score, reqs, |r| self.inner.score_replies(r))
    }
}

/// A copy of a result for a repeated request (errors are not `Clone`: the copy keeps
/// the message).
fn clone_result(r: &Result<ChatReply>) -> Result<ChatReply> {
    match r {
        Ok(reply) => Ok(reply.clone()),
        Err(e) => Err(LlmError::Other(e.to_string())),
    }
}

/// sha256 (hex) of the canonical JSON of `{"model_id": model_id, "request": req}`.
pub fn cache_key(model_id: &str, req: &ChatRequest) -> String {
    let value = serde_json::json!({ "model_id": model_id, "request": req });
    let mut text = String::new();
    canonical(&value, &mut text);
    let digest = Sha256::digest(text.as_bytes());
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// `v` as JSON with object keys sorted and no whitespace, whatever the map order of
/// `serde_json`'s build.
fn canonical(v: &serde_json::Value, out: &mut String) {
    match v {
        serde_json::Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            out.push('{');
            for (i, k) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&serde_json::Value::String(k.clone()).to_string());
                out.push(':');
                canonical(&map[k], out);
            }
            out.push('}');
        }
        serde_json::Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                canonical(item, out);
            }
            out.push(']');
        }
        other => out.push_str(&other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ChatMessage;

    #[test]
    fn keys_follow_the_model_and_every_field_of_the_request() {
        let req = ChatRequest::greedy(vec![ChatMessage::user("hi")], 8);
        let k = cache_key("m", &req);
        assert_eq!(k.len(), 64);
        assert_eq!(k, cache_key("m", &req.clone()));
        assert_ne!(k, cache_key("n", &req));
        let mut r2 = req.clone();
        r2.max_tokens = 9;
        assert_ne!(k, cache_key("m", &r2));
        let mut r3 = req.clone();
        r3.top_logprobs = Some(2);
        assert_ne!(k, cache_key("m", &r3));
        let mut s = String::new();
        canonical(
            &serde_json::json!({"b": [1, {"d": 2, "c": 3}], "a": "x"}),
            &mut s,
        );
        assert_eq!(s, r#"{"a":"x","b":[1,{"c":3,"d":2}]}"#);
    }
}
