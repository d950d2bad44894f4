//! The prompt explorer's live path: a typed text is tokenised (BOS first, as every
//! context of the features pass starts), run through the model up to the SAE's hook
//! (the forward stops after that block), encoded by the SAE, and answered with each
//! token's value of a chosen latent and its top latents. The prompt is bounded in bytes
//! and in tokens so that one request cannot hold the CPU for long.
//!
//! The [`Explorer`] is also what steering runs on ([`crate::steer`]): it holds the model
//! once, as a [`Steerer`], and the SAE with the served features folder, as a
//! [`SteerSae`].

use std::path::Path;

use saelab_core::Matrix;
use saelab_features::Features;
use saelab_jobs::steer::{SteerSae, Steerer};
use saelab_lm::contexts::model_fingerprint;
use saelab_lm::model::{ForwardOptions, HookedModel};
use serde::{Deserialize, Serialize};

use crate::error::{Result, WebError};

/// Longest prompt accepted, in bytes of UTF-8.
pub const MAX_PROMPT_BYTES: usize = 4096;
/// Most tokens of a prompt (BOS not counted).
pub const MAX_PROMPT_TOKENS: usize = 256;
/// Most latents listed per token.
pub const MAX_TOP: usize = 32;

/// The model (with its tokenizer and chat template) and the SAE of a features folder,
/// loaded once for the prompt explorer and for steering.
pub struct Explorer {
    steerer: Steerer,
    sae: SteerSae,
    bos: u32,
}

impl std::fmt::Debug for Explorer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Explorer")
            .field("model", &self.steerer.model_path)
            .field("sae", &self.sae.dir)
            .field("hook", &self.sae.hook)
            .field("bos", &self.bos)
            .finish_non_exhaustive()
    }
}

/// A request to `/api/prompt`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PromptRequest {
    /// The text (BOS is added in front).
    pub text: String,
    /// The latent whose values colour the tokens (default: none, only the top
    /// latents).
    #[serde(default)]
    pub latent: Option<u32>,
    /// Latents listed per token (default 5, at most [`MAX_TOP`]).
    #[serde(default)]
    pub top: Option<usize>,
}

/// One latent's value at a token.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct LatentValue {
    /// The latent.
    pub latent: u32,
    /// Its value.
    pub value: f32,
}

/// One token of the prompt.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PromptToken {
    /// Position in the prompt (0 is the first token after BOS).
    pub pos: usize,
    /// Token id.
    pub id: u32,
    /// Its text.
    pub text: String,
    /// The chosen latent's value here (0 when none was chosen or it is inactive).
    pub value: f32,
    /// The most active latents here, value descending (ties: lower latent).
    pub top: Vec<LatentValue>,
}

/// The answer of `/api/prompt`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PromptResult {
    /// The hook the SAE reads.
    pub hook: String,
    /// The chosen latent.
    pub latent: Option<u32>,
    /// The chosen latent's largest value over the features pass (what the page scales
    /// its shading by; 0 without a latent).
    pub latent_max: f32,
    /// The tokens (BOS left out).
    pub tokens: Vec<PromptToken>,
}

impl Explorer {
    /// Loads the SAE at `sae` (a run directory or an SAE directory) and the model at
    /// `model`, and checks both against the folder `features`: the SAE's fingerprint,
    /// the model's fingerprint and the hook's width. The folder is kept for steering
    /// (the latents' maxima behind strengths such as `4x`). Errors are one line naming
    /// the file.
    pub fn load(features: &Features, sae: &Path, model: &Path) -> saelab_jobs::Result<Explorer> {
        let sae_dir = saelab_eval::report::sae_dir(sae);
        let sae = saelab_core::format::load_sae(&sae_dir)?;
        features.check_sae(&sae)?;
        let s = &features.manifest().settings;
        let fp = model_fingerprint(model)?;
        if fp != s.model.fingerprint {
            return Err(saelab_lm::Error::bad_file(
                features.layout().manifest(),
                format!(
                    "made with another model (fingerprint {}, {} has {fp})",
                    s.model.fingerprint,
                    model.display()
                ),
            )
            .into());
        }
        let m = HookedModel::load(model)?;
        let hook = m.hook(&s.hook)?.name();
        if sae.cfg.d_in != m.d_model() {
            return Err(saelab_lm::Error::bad_file(
                sae_dir.join("cfg.json"),
                format!(
                    "the SAE reads d_in = {}, but {} of {} is {} wide",
                    sae.cfg.d_in,
                    s.hook,
                    model.display(),
                    m.d_model()
                ),
            )
            .into());
        }
        let steerer = Steerer::new(m, model)?;
        let bos = steerer
            .tokenizer
            .bos_id()
            .or(steerer.model.bos_token_id())
            .or(s.model.bos_token_id)
            .ok_or_else(|| saelab_lm::Error::bad_file(model, "names no BOS token"))?;
        Ok(Explorer {
            steerer,
            sae: SteerSae::new(sae, sae_dir, hook, Some(features.clone())),
            bos,
        })
    }

    /// The hook the SAE reads.
    pub fn hook(&self) -> &str {
        &self.sae.hook
    }

    /// Number of latents of the SAE.
    pub fn n_latents(&self) -> usize {
        self.sae.sae.cfg.d_sae
    }

    /// The model, its tokenizer and chat template, as steering uses them.
    pub fn steerer(&self) -> &Steerer {
        &self.steerer
    }

    /// The SAE with its hook and the served features folder, as steering uses them.
    pub fn steer_sae(&self) -> &SteerSae {
        &self.sae
    }

    /// Runs `req` (with `latent_max` the chosen latent's max over the pass). A prompt
    /// that is empty, too long or not representable, or an unknown latent, is a 400
    /// naming the limit.
    pub fn run(&self, req: &PromptRequest, latent_max: f32) -> Result<PromptResult> {
        if req.text.len() > MAX_PROMPT_BYTES {
            return Err(WebError::BadRequest(format!(
                "the prompt is {} bytes; the explorer takes at most {MAX_PROMPT_BYTES}",
                req.text.len()
            )));
        }
        if req.text.trim().is_empty() {
            return Err(WebError::BadRequest("the prompt is empty".into()));
        }
        let n = self.n_latents();
        if let Some(l) = req.latent.filter(|&l| l as usize >= n) {
            return Err(WebError::NotFound(format!(
                "latent {l} does not exist (the SAE has {n} latents)"
            )));
        }
        let top = req.top.unwrap_or(5);
        if top > MAX_TOP {
            return Err(WebError::BadRequest(format!(
                "top={top}: at most {MAX_TOP} latents per token"
            )));
        }
        let (model, tokenizer) = (&self.steerer.model, &self.steerer.tokenizer);
        let ids = tokenizer
            .encode(&req.text)
            .map_err(|e| WebError::BadRequest(format!("the prompt cannot be tokenised: {e}")))?;
        let limit = MAX_PROMPT_TOKENS.min(model.context_length().saturating_sub(1));
        if ids.len() > limit {
            return Err(WebError::BadRequest(format!(
                "the prompt is {} tokens; the explorer takes at most {limit}",
                ids.len()
            )));
        }
        let mut seq = Vec::with_capacity(ids.len() + 1);
        seq.push(self.bos);
        seq.extend_from_slice(&ids);
        let hook = self.hook();
        let fwd = model.forward(&[&seq[..]], &ForwardOptions::new().capture(hook))?;
        let acts = fwd.capture(hook)?.as_slice();
        let d = model.d_model();
        // Row 0 is BOS, left out as in the features pass.
        let x = Matrix::from_vec(ids.len(), d, acts[d..].to_vec())?;
        let lat = self.sae.sae.encode(&x)?.latents;
        let tokens = ids
            .iter()
            .enumerate()
            .map(|(pos, &id)| {
                let (idx, val) = lat.row(pos);
                let mut all: Vec<LatentValue> = idx
                    .iter()
                    .zip(val)
                    .filter(|(_, &v)| v != 0.0)
                    .map(|(&latent, &value)| LatentValue { latent, value })
                    .collect();
                let value = req
                    .latent
                    .and_then(|l| all.iter().find(|e| e.latent == l))
                    .map_or(0.0, |e| e.value);
                all.sort_by(|a, b| b.value.total_cmp(&a.value).then(a.latent.cmp(&b.latent)));
                all.truncate(top);
                PromptToken {
                    pos,
                    id,
                    text: tokenizer.token_str(id).unwrap_or_default(),
                    value,
                    top: all,
                }
            })
            .collect();
        Ok(PromptResult {
            hook: self.hook().to_string(),
            latent: req.latent,
            latent_max: if req.latent.is_some() {
                latent_max
            } else {
                0.0
            },
            tokens,
        })
    }
}
