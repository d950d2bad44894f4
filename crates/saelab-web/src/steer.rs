//! Steering from the dashboard (`POST /api/steer`): one prompt continued twice from the
//! same seed, without and with edits of the SAE's latents at its hook
//! ([`saelab_jobs::steer::Steerer::steer`]), optionally measured.
//!
//! A request is checked whole before the model runs, so that every mistake of the user
//! is a 4xx with a one-line message and only a failure of the model or of the folder
//! is a 500: the body's shape (unknown fields refused), the prompt's bytes and tokens,
//! the number of edits and of new tokens, the sampler's settings, each edit's latent
//! (a 404 when the SAE has no such latent, as for `/api/latent/{i}`), mode and
//! strength (a strength of `4x` is four times the latent's largest value in the served
//! features folder), and the room left in the model's context.

use saelab_jobs::steer::{EditSpec, InterventionSpec, PromptRequest, SteerOutput};
use saelab_lm::generate::{GenerateOptions, Sampler};
use saelab_steer::{Edit, Intervention, Mode, Positions, Strength};
use serde::Deserialize;

use crate::error::{Result, WebError};
use crate::explorer::{Explorer, MAX_PROMPT_BYTES, MAX_PROMPT_TOKENS};

/// Most tokens generated per continuation.
pub const MAX_NEW_TOKENS: usize = 128;
/// Most edits in one request.
pub const MAX_EDITS: usize = 16;

/// A request to `/api/steer`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SteerRequest {
    /// The prompt (BOS is added in front, or the chat template around it).
    pub prompt: String,
    /// The edits, 1 to [`MAX_EDITS`].
    pub edits: Vec<SteerEdit>,
    /// The positions edited: `all` (default: the prompt and every new token),
    /// `prompt`, `last` (the prompt's last token) or a list such as `1,4,7`.
    #[serde(default)]
    pub positions: Positions,
    /// Put the prompt in the model's chat template as a user message.
    #[serde(default)]
    pub chat: bool,
    /// Tokens to generate at most, 1 to [`MAX_NEW_TOKENS`] (default 32).
    #[serde(default = "default_max_new_tokens")]
    pub max_new_tokens: usize,
    /// Softmax temperature, ≥ 0; 0 is greedy (default 0.5).
    #[serde(default = "default_temperature")]
    pub temperature: f32,
    /// Nucleus sampling mass, in (0, 1] (default 1).
    #[serde(default = "default_top_p")]
    pub top_p: f32,
    /// Seed of the sampler, the same for both continuations (default 16).
    #[serde(default = "default_seed")]
    pub seed: u64,
    /// Also measure both continuations for every edited latent.
    #[serde(default)]
    pub measure: bool,
}

fn default_max_new_tokens() -> usize {
    32
}
fn default_temperature() -> f32 {
    0.5
}
fn default_top_p() -> f32 {
    1.0
}
fn default_seed() -> u64 {
    16
}

/// One edit of a request: `{"latent": 87, "mode": "add", "strength": "4x"}`.
#[derive(Clone, Copy, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SteerEdit {
    /// The latent.
    pub latent: usize,
    /// `add`, `clamp`, `clamp-min`, `scale`, `ablate` or `neg-clamp`.
    pub mode: Mode,
    /// `4x` (times the latent's maximum), `raw:30`, or a number (raw); none for
    /// `ablate`, a plain factor for `scale`. Finite only.
    #[serde(default)]
    pub strength: Option<Strength>,
}

impl SteerRequest {
    /// Checks what needs no model or folder: the prompt's bytes, the number of edits
    /// and of new tokens, the sampler's settings, and each latent against `n_latents`
    /// (a 404). The rest is checked by [`run`] before the model runs.
    pub fn check(&self, n_latents: usize) -> Result<()> {
        let bad = |m: String| Err(WebError::BadRequest(m));
        if self.prompt.len() > MAX_PROMPT_BYTES {
            return bad(format!(
                "the prompt is {} bytes; steering takes at most {MAX_PROMPT_BYTES}",
                self.prompt.len()
            ));
        }
        if self.prompt.trim().is_empty() {
            return bad("the prompt is empty".into());
        }
        if self.edits.is_empty() {
            return bad("nothing to steer with: give at least one edit".into());
        }
        if self.edits.len() > MAX_EDITS {
            return bad(format!(
                "{} edits; steering takes at most {MAX_EDITS}",
                self.edits.len()
            ));
        }
        if self.max_new_tokens == 0 || self.max_new_tokens > MAX_NEW_TOKENS {
            return bad(format!(
                "max_new_tokens={}: give 1 to {MAX_NEW_TOKENS}",
                self.max_new_tokens
            ));
        }
        if !self.temperature.is_finite() || self.temperature < 0.0 {
            return bad(format!(
                "temperature={}: give a finite number ≥ 0 (0 is greedy)",
                self.temperature
            ));
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return bad(format!("top_p={}: give a number in (0, 1]", self.top_p));
        }
        // The sampler's own checks, in case they are stricter.
        Sampler::new(self.temperature, self.top_p)
            .map_err(|e| WebError::BadRequest(one_line(&e.to_string())))?;
        if let Some(e) = self.edits.iter().find(|e| e.latent >= n_latents) {
            return Err(WebError::NotFound(format!(
                "latent {} does not exist (the SAE has {n_latents} latents)",
                e.latent
            )));
        }
        Ok(())
    }

    /// The job's form of the request: one intervention on the explorer's SAE.
    fn job(&self) -> (InterventionSpec, PromptRequest) {
        let spec = InterventionSpec {
            sae: 0,
            positions: self.positions.clone(),
            edits: self
                .edits
                .iter()
                .map(|e| EditSpec {
                    latent: e.latent,
                    mode: e.mode,
                    strength: e.strength,
                })
                .collect(),
        };
        let req = PromptRequest {
            text: self.prompt.clone(),
            chat: self.chat,
            gen: GenerateOptions {
                max_new_tokens: self.max_new_tokens,
                temperature: self.temperature,
                top_p: self.top_p,
                seed: self.seed,
                stop_tokens: None,
            },
        };
        (spec, req)
    }
}

/// Runs `req` on `ex`: [`SteerRequest::check`], then each edit resolved against the
/// served folder's maxima and checked as the intervention will be (a 400 naming the
/// edit), the prompt tokenised and checked against [`MAX_PROMPT_TOKENS`] and the
/// model's context (a 400), then both continuations. Only a failure past these checks
/// is a 500.
pub fn run(ex: &Explorer, req: &SteerRequest) -> Result<SteerOutput> {
    req.check(ex.n_latents())?;
    let ss = ex.steer_sae();
    let mut edits = Vec::with_capacity(req.edits.len());
    for (k, e) in req.edits.iter().enumerate() {
        let max = match e.strength {
            Some(Strength::TimesMax(_)) => ss.max_activation(e.latent).map_err(internal)?,
            _ => None,
        };
        let op = e.mode.op(e.latent, e.strength, max).map_err(|err| {
            WebError::BadRequest(one_line(&format!(
                "edit {} (latent {}): {err}",
                k + 1,
                e.latent
            )))
        })?;
        edits.push(Edit {
            latent: e.latent,
            op,
        });
    }
    // The intervention's own checks (finite values, an SAE that can be intervened on),
    // before the model runs.
    Intervention::latents(&ss.sae, ss.hook.clone(), &edits, req.positions.clone())
        .map_err(|e| WebError::BadRequest(one_line(&e.to_string())))?;
    let st = ex.steerer();
    let ids = st
        .prompt_ids(&req.prompt, req.chat, req.max_new_tokens)
        .map_err(|e| WebError::BadRequest(job_message(&e)))?;
    let limit = MAX_PROMPT_TOKENS + 1;
    if ids.len() > limit {
        return Err(WebError::BadRequest(format!(
            "the prompt is {} tokens with BOS (or the chat template); steering takes at \
             most {limit}",
            ids.len()
        )));
    }
    let (spec, preq) = req.job();
    st.steer(std::slice::from_ref(ss), &[spec], &preq, req.measure)
        .map_err(internal)
}

/// A job's error as one line: every context, then the cause.
fn job_message(e: &saelab_jobs::Error) -> String {
    match e {
        saelab_jobs::Error::Context { context, source } => {
            format!("{context}: {}", job_message(source))
        }
        e => one_line(&e.to_string()),
    }
}

fn internal(e: saelab_jobs::Error) -> WebError {
    WebError::Internal(job_message(&e))
}

fn one_line(s: &str) -> String {
    s.replace('\n', " ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(body: &str) -> std::result::Result<SteerRequest, String> {
        serde_json::from_str(body).map_err(|e| e.to_string())
    }

    #[test]
    fn requests_parse_with_their_defaults() {
        let r =
            parse(r#"{"prompt": "Hi", "edits": [{"latent": 3, "mode": "add", "strength": "4x"}]}"#)
                .unwrap();
        assert_eq!(
            (r.max_new_tokens, r.temperature, r.top_p, r.seed),
            (32, 0.5, 1.0, 16)
        );
        assert_eq!(r.positions, Positions::All);
        assert!(!r.chat && !r.measure);
        assert_eq!(r.edits[0].strength, Some(Strength::TimesMax(4.0)));
        r.check(10).unwrap();
        let r = parse(
            r#"{"prompt": "Hi", "positions": "1,4", "edits": [{"latent": 3, "mode": "clamp-min",
                "strength": 2.5}, {"latent": 4, "mode": "ablate"}]}"#,
        )
        .unwrap();
        assert_eq!(r.positions, Positions::List(vec![1, 4]));
        assert_eq!(r.edits[0].strength, Some(Strength::Raw(2.5)));
        assert_eq!(r.edits[1].strength, None);
    }

    #[test]
    fn bad_requests_are_refused_with_the_reason() {
        let edit = r#"{"latent": 3, "mode": "add", "strength": "4x"}"#;
        for (body, want) in [
            (r#"{"prompt": "Hi"}"#.to_string(), "missing field `edits`"),
            (
                format!(r#"{{"prompt": "Hi", "edits": [{edit}], "x": 1}}"#),
                "unknown field",
            ),
            (
                r#"{"prompt": "Hi", "edits": [{"latent": 3, "mode": "add", "y": 0}]}"#.into(),
                "unknown field",
            ),
            (
                r#"{"prompt": "Hi", "edits": [{"latent": 3, "mode": "push"}]}"#.into(),
                "unknown variant",
            ),
            (
                r#"{"prompt": "Hi", "edits": [{"latent": 3, "mode": "add", "strength": "NaNx"}]}"#
                    .into(),
                "finite number",
            ),
            (
                r#"{"prompt": "Hi", "edits": [{"latent": 3, "mode": "add", "strength": 1e39}]}"#
                    .into(),
                "finite number",
            ),
            (
                format!(r#"{{"prompt": "Hi", "edits": [{edit}], "positions": "middle"}}"#),
                "positions 'middle'",
            ),
            (
                format!(r#"{{"prompt": "Hi", "edits": [{edit}], "temperature": 1e39}}"#),
                "out of range",
            ),
        ] {
            let e = parse(&body).unwrap_err();
            assert!(e.contains(want), "{body}: {e}");
        }
        let check = |body: String| parse(&body).unwrap().check(10).unwrap_err();
        for (body, want) in [
            (format!(r#"{{"prompt": " ", "edits": [{edit}]}}"#), "empty"),
            (
                format!(r#"{{"prompt": "{}", "edits": [{edit}]}}"#, "a".repeat(5000)),
                "at most 4096",
            ),
            (
                r#"{"prompt": "Hi", "edits": []}"#.into(),
                "at least one edit",
            ),
            (
                format!(
                    r#"{{"prompt": "Hi", "edits": [{}]}}"#,
                    vec![edit; 17].join(",")
                ),
                "at most 16",
            ),
            (
                format!(r#"{{"prompt": "Hi", "edits": [{edit}], "max_new_tokens": 0}}"#),
                "max_new_tokens=0",
            ),
            (
                format!(r#"{{"prompt": "Hi", "edits": [{edit}], "max_new_tokens": 129}}"#),
                "1 to 128",
            ),
            (
                format!(r#"{{"prompt": "Hi", "edits": [{edit}], "temperature": -1}}"#),
                "temperature",
            ),
            (
                format!(r#"{{"prompt": "Hi", "edits": [{edit}], "top_p": 0}}"#),
                "top_p",
            ),
            (
                format!(r#"{{"prompt": "Hi", "edits": [{edit}], "top_p": 1.5}}"#),
                "top_p",
            ),
        ] {
            let e = check(body.clone());
            assert_eq!(e.status().as_u16(), 400, "{body}");
            assert!(e.message().contains(want), "{body}: {}", e.message());
        }
        let e = check(
            r#"{"prompt": "Hi", "edits": [{"latent": 10, "mode": "add", "strength": "4x"}]}"#
                .into(),
        );
        assert_eq!(e.status().as_u16(), 404);
        assert!(
            e.message().contains("latent 10 does not exist"),
            "{}",
            e.message()
        );
    }
}
