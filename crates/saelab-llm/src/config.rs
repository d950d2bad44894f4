//! [`ClientConfig`]: what a command line says about the explainer / judge model, and
//! [`client_from`], the one place that turns it into a [`ChatClient`].
//!
//! The flags it stands for: `--llm-base-url` and `--llm-model` (an OpenAI-compatible
//! endpoint), `--llm-key-env`, `--llm-key-optional`, `--llm-concurrency`,
//! `--llm-timeout`, `--llm-retries`; or `--explainer-model PATH` (a local model); and a
//! cache directory, which wraps either client in a [`CachedClient`].

use std::path::PathBuf;
use std::time::Duration;

use crate::cache::CachedClient;
use crate::local::{LocalClient, LocalConfig};
use crate::openai::{OpenAiClient, OpenAiConfig};
use crate::{ChatClient, LlmError, Result};

/// Which model answers, and how: an endpoint (`base_url` and `model`) or a local model
/// file (`explainer_model`), exactly one of them.
#[derive(Clone, Debug, PartialEq)]
pub struct ClientConfig {
    /// `--llm-base-url`: an OpenAI-compatible API root, e.g. `http://127.0.0.1:8080/v1`.
    pub base_url: Option<String>,
    /// `--llm-model`: the endpoint's model name (required with `base_url`).
    pub model: Option<String>,
    /// `--llm-key-env`: the variable holding the API key (default `OPENAI_API_KEY`).
    pub key_env: String,
    /// Whether the endpoint may be called without a key (default false).
    pub key_optional: bool,
    /// `--llm-concurrency`: requests in flight at once (default 4).
    pub concurrency: usize,
    /// `--llm-timeout`: per attempt (default 120 s).
    pub timeout: Duration,
    /// `--llm-retries`: retries of transient failures (default 3).
    pub retries: u32,
    /// The first back-off between retries (default 1 s, doubling).
    pub backoff: Duration,
    /// `--explainer-model PATH`: a local instruct model instead of an endpoint.
    pub explainer_model: Option<PathBuf>,
    /// The seed of a local model's sampled replies (default 0).
    pub seed: u64,
    /// Replies cached here when given ([`CachedClient`]).
    pub cache_dir: Option<PathBuf>,
}

impl Default for ClientConfig {
    /// No model chosen yet; the defaults of [`OpenAiConfig::new`] and
    /// [`LocalConfig::new`] for the rest.
    fn default() -> Self {
        let o = OpenAiConfig::new("", "");
        ClientConfig {
            base_url: None,
            model: None,
            key_env: o.key_env,
            key_optional: o.key_optional,
            concurrency: o.concurrency,
            timeout: o.timeout,
            retries: o.retries,
            backoff: o.backoff,
            explainer_model: None,
            seed: 0,
            cache_dir: None,
        }
    }
}

impl ClientConfig {
    /// The endpoint's settings, when the config names an endpoint.
    pub fn openai(&self) -> Option<OpenAiConfig> {
        let base = self.base_url.as_ref()?;
        Some(OpenAiConfig {
            base_url: base.clone(),
            model: self.model.clone().unwrap_or_default(),
            key_env: self.key_env.clone(),
            key_optional: self.key_optional,
            timeout: self.timeout,
            retries: self.retries,
            backoff: self.backoff,
            concurrency: self.concurrency,
        })
    }
}

/// The client `cfg` describes, behind the response cache when `cfg.cache_dir` is
/// given. Errors (one line, before any request): neither or both of an endpoint and a
/// local model, an endpoint without a model name, a missing required key, a local model
/// that does not load, a cache directory that cannot be written.
pub fn client_from(cfg: &ClientConfig) -> Result<Box<dyn ChatClient>> {
    let client: Box<dyn ChatClient> = match (&cfg.base_url, &cfg.explainer_model) {
        (Some(_), Some(_)) => {
            return Err(LlmError::Invalid(
                "give either an endpoint (--llm-base-url) or a local model \
                 (--explainer-model), not both"
                    .into(),
            ))
        }
        (None, None) => {
            return Err(LlmError::Invalid(
                "no model to ask: give --llm-base-url and --llm-model, or --explainer-model".into(),
            ))
        }
        (Some(base), None) => {
            if cfg.model.as_deref().is_none_or(|m| m.trim().is_empty()) {
                return Err(LlmError::Invalid(format!(
                    "{base}: --llm-model is required with --llm-base-url"
                )));
            }
            let o = cfg.openai().unwrap_or_else(|| OpenAiConfig::new(base, ""));
            Box::new(OpenAiClient::new(o)?)
        }
        (None, Some(path)) => Box::new(LocalClient::load(&LocalConfig {
            seed: cfg.seed,
            ..LocalConfig::new(path)
        })?),
    };
    match &cfg.cache_dir {
        Some(dir) => Ok(Box::new(CachedClient::new(client, dir)?)),
        None => Ok(client),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_config_names_exactly_one_model() {
        let msg = |cfg: ClientConfig| client_from(&cfg).err().map(|e| e.to_string());
        let none = msg(ClientConfig::default()).unwrap();
        assert!(none.contains("no model to ask"), "{none}");
        let both = msg(ClientConfig {
            base_url: Some("http://127.0.0.1:1/v1".into()),
            explainer_model: Some("m.gguf".into()),
            ..ClientConfig::default()
        })
        .unwrap();
        assert!(both.contains("not both"), "{both}");
        let no_model = msg(ClientConfig {
            base_url: Some("http://127.0.0.1:1/v1".into()),
            ..ClientConfig::default()
        })
        .unwrap();
        assert!(no_model.contains("--llm-model is required"), "{no_model}");
        let missing = msg(ClientConfig {
            explainer_model: Some("/nonexistent/m.gguf".into()),
            ..ClientConfig::default()
        })
        .unwrap();
        assert!(missing.contains("/nonexistent/m.gguf") && !missing.contains('\n'));
    }
}
