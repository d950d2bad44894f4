//! [`LocalClient`]: a local instruct model (a GGUF file or Hugging Face directory run by
//! saelab-lm) as a [`ChatClient`], with no server in between.
//!
//! A request's messages go through the checkpoint's ChatML template
//! ([`ChatTemplate`]: system messages as written, the template's default system
//! message when the conversation has none) with the assistant's turn opened; the model
//! continues until `<|im_end|>` or EOS (`finish_reason` `"stop"`) or `max_tokens`
//! (`"length"`). Temperature 0 is greedy; otherwise tokens are drawn from the
//! temperature-scaled softmax with the client's seed (the same request gets the same
//! reply, alone or in any batch). `top_logprobs` comes from the model's logits at each
//! generated position ([`HookedModel::generate_scored`]: log-softmax at temperature 1).
//!
//! [`ChatClient::complete_many`] runs a batch as one batched generation per group of
//! requests sharing a temperature and a `max_tokens` (at most `max_batch` prompts a
//! generation): on a CPU, one batched step costs little more than one prompt's, which
//! is what makes a 2-core machine usable. The prompts of a group are taken in token
//! order, so that those sharing a prefix run together and the prefix runs once
//! ([`HookedModel::generate`]). A prompt that does not fit the context with
//! its `max_tokens` is [`LlmError::Invalid`] for that request alone.
//!
//! The model id is `local:<file name>#<the first 16 hex digits of the sha256 of the
//! file>` (the whole file is hashed at load, about a second per GB; for a Hugging Face
//! directory, its `model.safetensors` or, failing that, `config.json`).

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};

use saelab_lm::chat::{ChatTemplate, Message};
use saelab_lm::generate::{common_prefix_len, Finish, GenerateOptions, Generation, TokenScores};
use saelab_lm::model::{ForwardOptions, HookedModel};
use saelab_lm::tokenizer::Tokenizer;
use sha2::{Digest, Sha256};

use crate::{ChatClient, ChatReply, ChatRequest, LlmError, Result, Role, TokenLogprobs};

/// How to run a local model.
#[derive(Clone, Debug, PartialEq)]
pub struct LocalConfig {
    /// The GGUF file (or Hugging Face directory) of an instruct model with a ChatML
    /// chat template.
    pub model: PathBuf,
    /// The seed of sampled (temperature > 0) replies.
    pub seed: u64,
    /// Prompts in one batched generation at most (default 16).
    pub max_batch: usize,
}

impl LocalConfig {
    /// The defaults for the model at `path` (seed 0, batches of up to 16).
    pub fn new(path: impl Into<PathBuf>) -> Self {
        LocalConfig {
            model: path.into(),
            seed: 0,
            max_batch: 16,
        }
    }
}

/// A reply with its token counts (what an OpenAI-compatible server reports as
/// `usage`).
#[derive(Clone, Debug, PartialEq)]
pub struct LocalReply {
    /// The reply.
    pub reply: ChatReply,
    /// Tokens of the templated prompt.
    pub prompt_tokens: usize,
    /// Tokens generated (the stop token not included).
    pub completion_tokens: usize,
}

/// A local instruct model answering chat requests.
pub struct LocalClient {
    model: HookedModel,
    tokenizer: Tokenizer,
    chat: ChatTemplate,
    stop: Vec<u32>,
    model_id: String,
    name: String,
    cfg: LocalConfig,
}

impl std::fmt::Debug for LocalClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalClient")
            .field("model_id", &self.model_id)
            .finish()
    }
}

/// A prompt ready to run: its request's index and token ids.
struct Prompt {
    index: usize,
    ids: Vec<u32>,
}

impl LocalClient {
    /// Loads the model, its tokenizer and chat template. Errors (one line, naming the
    /// file): a missing or unreadable model, a checkpoint without a ChatML template.
    pub fn load(cfg: &LocalConfig) -> Result<Self> {
        let path = &cfg.model;
        let model = HookedModel::load(path).map_err(other)?;
        let tokenizer = Tokenizer::from_path(path).map_err(other)?;
        let chat = ChatTemplate::from_tokenizer(&tokenizer).map_err(other)?;
        let mut stop: Vec<u32> = model.eos_token_id().into_iter().collect();
        stop.extend(tokenizer.token_to_id("<|im_end|>"));
        stop.sort_unstable();
        stop.dedup();
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| path.display().to_string());
        let model_id = format!("local:{name}#{}", fingerprint(path)?);
        Ok(LocalClient {
            model,
            tokenizer,
            chat,
            stop,
            model_id,
            name,
            cfg: LocalConfig {
                max_batch: cfg.max_batch.max(1),
                ..cfg.clone()
            },
        })
    }

    /// The model's file name (what a server reports as the model).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The model's context length, in tokens (prompt and reply together).
    pub fn context_length(&self) -> usize {
        self.model.context_length()
    }

    /// The templated token ids of `req`'s conversation, the assistant's turn opened.
    /// Errors: no messages, a text the vocabulary cannot represent, a prompt that
    /// leaves no room for `max_tokens` in the context.
    pub fn prompt_ids(&self, req: &ChatRequest) -> Result<Vec<u32>> {
        if req.messages.is_empty() {
            return Err(LlmError::Invalid("the request has no messages".into()));
        }
        let messages: Vec<Message> = req
            .messages
            .iter()
            .map(|m| match m.role {
                Role::System => Message::system(m.content.clone()),
                Role::User => Message::user(m.content.clone()),
                Role::Assistant => Message::assistant(m.content.clone()),
            })
            .collect();
        let ids = self
            .chat
            .encode(&self.tokenizer, &messages, true)
            .map_err(|e| LlmError::Invalid(e.to_string().replace('\n', " ")))?;
        let ctx = self.context_length();
        if ids.len() + req.max_tokens as usize > ctx {
            return Err(LlmError::Invalid(format!(
                "the prompt is {} tokens and max_tokens is {}, beyond the {ctx}-token \
                 context of {}",
                ids.len(),
                req.max_tokens,
                self.name
            )));
        }
        Ok(ids)
    }

    /// The replies to `reqs`, in order, with their token counts: one batched
    /// generation per group of requests with the same temperature and `max_tokens`
    /// (at most `max_batch` prompts each). A request that cannot run fails alone; a
    /// generation that fails fails its group's requests.
    pub fn complete_detailed(&self, reqs: &[ChatRequest]) -> Vec<Result<LocalReply>> {
        let mut out: Vec<Option<Result<LocalReply>>> = reqs.iter().map(|_| None).collect();
        let mut groups = BTreeMap::<(u32, u32), Vec<Prompt>>::new();
        for (index, req) in reqs.iter().enumerate() {
            if !(req.temperature.is_finite() && req.temperature >= 0.0) {
                out[index] = Some(Err(LlmError::Invalid(format!(
                    "temperature {} must be a finite number ≥ 0",
                    req.temperature
                ))));
                continue;
            }
            match self.prompt_ids(req) {
                Ok(ids) => groups
                    .entry((req.temperature.to_bits(), req.max_tokens))
                    .or_default()
                    .push(Prompt { index, ids }),
                Err(e) => out[index] = Some(Err(e)),
            }
        }
        for ((temp_bits, max_tokens), mut prompts) in groups {
            // In token order, prompts that share a prefix (a judge's instructions and
            // description) fall in the same generation, which runs that prefix once.
            prompts.sort_by(|a, b| a.ids.cmp(&b.ids));
            for chunk in prompts.chunks(self.cfg.max_batch) {
                let gen = GenerateOptions {
                    max_new_tokens: max_tokens as usize,
                    temperature: f32::from_bits(temp_bits),
                    top_p: 1.0,
                    seed: self.cfg.seed,
                    stop_tokens: Some(self.stop.clone()),
                };
                let top_n = chunk
                    .iter()
                    .filter_map(|p| reqs[p.index].top_logprobs)
                    .max();
                match self.run(chunk, &gen, top_n) {
                    Ok(gens) => {
                        for (p, (g, scores)) in chunk.iter().zip(gens) {
                            let want = reqs[p.index].top_logprobs;
                            out[p.index] = Some(self.reply(p, g, scores, want));
                        }
                    }
                    Err(e) => {
                        for p in chunk {
                            out[p.index] = Some(Err(LlmError::Other(e.clone())));
                        }
                    }
                }
            }
        }
        out.into_iter()
            .map(|r| r.unwrap_or_else(|| Err(LlmError::Other("no reply".into()))))
            .collect()
    }

    /// The teacher-forced scores of `reqs` ([`ChatClient::score_replies`]), in order.
    /// Within a group of at most `max_batch` requests (in token order), the prefix
    /// their conversations share runs once; each request then runs its own tokens up
    /// to the reply, and the reply with logits at every position.
    pub fn score_detailed(&self, reqs: &[ChatRequest]) -> Vec<Result<ChatReply>> {
        let mut out: Vec<Option<Result<ChatReply>>> = reqs.iter().map(|_| None).collect();
        let mut ready: Vec<(usize, Vec<u32>, usize)> = Vec::new();
        for (index, req) in reqs.iter().enumerate() {
            match self.forced_ids(req) {
                Ok((ids, head)) => ready.push((index, ids, head)),
                Err(e) => out[index] = Some(Err(e)),
            }
        }
        ready.sort_by(|a, b| a.1.cmp(&b.1));
        for chunk in ready.chunks(self.cfg.max_batch) {
            let heads: Vec<&[u32]> = chunk.iter().map(|(_, ids, h)| &ids[..*h]).collect();
            let shared = common_prefix_len(&heads);
            match self.score_chunk(chunk, shared, reqs) {
                Ok(replies) => {
                    for ((index, _, _), r) in chunk.iter().zip(replies) {
                        out[*index] = Some(r);
                    }
                }
                Err(e) => {
                    for (index, _, _) in chunk {
                        out[*index] = Some(Err(LlmError::Other(e.clone())));
                    }
                }
            }
        }
        out.into_iter()
            .map(|r| r.unwrap_or_else(|| Err(LlmError::Other("no reply".into()))))
            .collect()
    }

    /// The tokens of a teacher-forced request (the conversation before its last
    /// message, the assistant's turn opened, then that message's text) and where the
    /// reply starts. Errors: no assistant message last, an empty reply, too long.
    fn forced_ids(&self, req: &ChatRequest) -> Result<(Vec<u32>, usize)> {
        let Some((last, before)) = req.messages.split_last() else {
            return Err(LlmError::Invalid("the request has no messages".into()));
        };
        if last.role != Role::Assistant || before.is_empty() {
            return Err(LlmError::Invalid(
                "a reply to score must be the last message, an assistant's, after the \
                 conversation it answers"
                    .into(),
            ));
        }
        let head = self.prompt_ids(&ChatRequest {
            messages: before.to_vec(),
            max_tokens: 0,
            ..req.clone()
        })?;
        let reply = self.tokenizer.encode(&last.content).map_err(other)?;
        if reply.is_empty() {
            return Err(LlmError::Invalid("the reply to score is empty".into()));
        }
        let ctx = self.context_length();
        if head.len() + reply.len() > ctx {
            return Err(LlmError::Invalid(format!(
                "the conversation and reply are {} tokens, beyond the {ctx}-token context \
                 of {}",
                head.len() + reply.len(),
                self.name
            )));
        }
        let start = head.len();
        Ok(([head, reply].concat(), start))
    }

    /// One group of teacher-forced requests: `(index, ids, reply start)` each, the
    /// first `shared` tokens common to all.
    fn score_chunk(
        &self,
        chunk: &[(usize, Vec<u32>, usize)],
        shared: usize,
        reqs: &[ChatRequest],
    ) -> std::result::Result<Vec<Result<ChatReply>>, String> {
        let fail = |e: &dyn std::fmt::Display| {
            format!("{}: {}", self.name, e.to_string().replace('\n', " "))
        };
        let none = ForwardOptions::new();
        let mut base = self.model.kv_cache(1);
        if shared > 0 {
            self.model
                .forward_cached(&[&chunk[0].1[..shared]], &mut base, &[0], &none)
                .map_err(|e| fail(&e))?;
        }
        let all = ForwardOptions::new().logits(saelab_lm::model::Logits::All);
        let mut replies = Vec::with_capacity(chunk.len());
        for (index, ids, start) in chunk {
            let mut cache = base.replicate(0, 1);
            // Up to the reply's predicting position without logits, then from there
            // with the logits of every position: row k predicts reply token k.
            if start - 1 > shared {
                self.model
                    .forward_cached(&[&ids[shared..start - 1]], &mut cache, &[0], &none)
                    .map_err(|e| fail(&e))?;
            }
            let logits = self
                .model
                .forward_cached(&[&ids[start - 1..ids.len() - 1]], &mut cache, &[0], &all)
                .map_err(|e| fail(&e))?
                .take_logits()
                .map_err(|e| fail(&e))?;
            let n = reqs[*index].top_logprobs.unwrap_or(0) as usize;
            let logprobs = ids[*start..]
                .iter()
                .enumerate()
                .map(|(k, &token)| {
                    let s = TokenScores::from_logits(logits.at(0, k), token, n);
                    self.token_logprobs(&s, n)
                })
                .collect();
            let content = reqs[*index]
                .messages
                .last()
                .map(|m| m.content.clone())
                .unwrap_or_default();
            replies.push(Ok(ChatReply {
                content,
                logprobs: Some(logprobs),
                finish_reason: "teacher_forced".into(),
            }));
        }
        Ok(replies)
    }

    /// A token's scores as text: the token and its `n` most likely alternatives.
    fn token_logprobs(&self, s: &TokenScores, n: usize) -> TokenLogprobs {
        let text = |id: u32| self.tokenizer.token_str(id).unwrap_or_default();
        TokenLogprobs {
            token: text(s.token),
            logprob: s.logprob,
            top: s
                .top
                .iter()
                .take(n)
                .map(|&(id, lp)| (text(id), lp))
                .collect(),
        }
    }

    /// One batched generation, scored when some request asks for log-probabilities.
    fn run(
        &self,
        chunk: &[Prompt],
        gen: &GenerateOptions,
        top_n: Option<u8>,
    ) -> std::result::Result<Vec<(Generation, Vec<TokenScores>)>, String> {
        let ids: Vec<&[u32]> = chunk.iter().map(|p| p.ids.as_slice()).collect();
        let opts = ForwardOptions::new();
        let r = match top_n {
            Some(n) => self.model.generate_scored(&ids, gen, &opts, n as usize),
            None => self
                .model
                .generate(&ids, gen, &opts)
                .map(|gs| gs.into_iter().map(|g| (g, Vec::new())).collect()),
        };
        r.map_err(|e| format!("{}: {}", self.name, e.to_string().replace('\n', " ")))
    }

    /// The reply of one generated stream.
    fn reply(
        &self,
        p: &Prompt,
        g: Generation,
        scores: Vec<TokenScores>,
        want: Option<u8>,
    ) -> Result<LocalReply> {
        let content = self.tokenizer.decode(&g.tokens).map_err(other)?;
        let logprobs = want.map(|n| {
            scores
                .iter()
                .map(|s| self.token_logprobs(s, n as usize))
                .collect()
        });
        let finish_reason = match g.finish {
            Finish::Stop(_) => "stop",
            Finish::Length => "length",
        };
        Ok(LocalReply {
            reply: ChatReply {
                content,
                logprobs,
                finish_reason: finish_reason.into(),
            },
            prompt_tokens: p.ids.len(),
            completion_tokens: g.tokens.len(),
        })
    }
}

impl ChatClient for LocalClient {
    /// `local:<file name>#<sha256 prefix of the file>`.
    fn model_id(&self) -> String {
        self.model_id.clone()
    }

    fn complete(&self, req: &ChatRequest) -> Result<ChatReply> {
        crate::only_reply(self.complete_many(std::slice::from_ref(req)))
    }

    /// One batched generation per group (see [`LocalClient::complete_detailed`]).
    fn complete_many(&self, reqs: &[ChatRequest]) -> Vec<Result<ChatReply>> {
        self.complete_detailed(reqs)
            .into_iter()
            .map(|r| r.map(|l| l.reply))
            .collect()
    }

    fn can_score_replies(&self) -> bool {
        true
    }

    /// See [`LocalClient::score_detailed`].
    fn score_replies(&self, reqs: &[ChatRequest]) -> Vec<Result<ChatReply>> {
        self.score_detailed(reqs)
    }
}

/// A saelab-lm error as one line.
fn other(e: impl std::fmt::Display) -> LlmError {
    LlmError::Other(e.to_string().replace('\n', " "))
}

/// The first 16 hex digits of the sha256 of the model's weights file (for a
/// directory: `model.safetensors`, else `config.json`).
fn fingerprint(path: &Path) -> Result<String> {
    let file = if path.is_dir() {
        let st = path.join("model.safetensors");
        if st.is_file() {
            st
        } else {
            path.join("config.json")
        }
    } else {
        path.to_path_buf()
    };
    let fail = |e: std::io::Error| LlmError::Other(format!("{}: {e}", file.display()));
    let mut f = std::fs::File::open(&file).map_err(fail)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).map_err(fail)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    let digest = hasher.finalize();
    Ok(digest.iter().take(8).map(|b| format!("{b:02x}")).collect())
}
