//! Generation and steering as library jobs (`saelab generate`, `saelab steer`, the
//! server's `/api/steer`).
//!
//! A [`Steerer`] holds a loaded model, its tokenizer and (for instruct models) its chat
//! template; [`SteerSae::load`] holds an SAE with its hook and, when one exists, its
//! features folder (whose per-latent maximum turns a strength of `4x` into a value).
//! [`Steerer::steer`] generates from one prompt twice from the same seed, without and
//! with the interventions, and can measure both continuations for each edited latent
//! ([`saelab_steer::measure`]): the share of tokens in the latent's concept set (its
//! logit-lens tokens and top activating tokens), its mean value when the text is
//! re-encoded by the unsteered model, and the perplexity under the unsteered model.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use saelab_core::Sae;
use saelab_features::Features;
use saelab_lm::chat::{ChatTemplate, Message};
use saelab_lm::contexts::tokenizer_for_model;
use saelab_lm::generate::{Finish, GenerateOptions, Generation};
use saelab_lm::model::{ForwardOptions, HookedModel};
use saelab_lm::tokenizer::Tokenizer;
use saelab_steer::measure::{logit_lens_tokens, measure_text, TextMeasure};
use saelab_steer::{
    with_interventions, Edit, Intervention, Mode, Op, Positions, Prompts, Strength,
};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::event::OnEvent;
use crate::inputs;

/// How many logit-lens tokens and top activating tokens make a latent's concept set.
pub const CONCEPT_TOKENS: usize = 20;

/// Which tokens make a latent's concept set (what the concept share counts).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ConceptSet {
    /// Its logit-lens tokens and the tokens of its top activating examples.
    #[default]
    Both,
    /// The tokens of its top activating examples only (what the latent reads; the
    /// logit lens is noisy at middle layers).
    Examples,
    /// Its logit-lens tokens only (what the latent writes, read through the unembedding).
    Lens,
}

impl std::str::FromStr for ConceptSet {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "both" => Ok(ConceptSet::Both),
            "examples" => Ok(ConceptSet::Examples),
            "lens" => Ok(ConceptSet::Lens),
            _ => Err(format!(
                "unknown concept set {s:?}: expected both, examples or lens"
            )),
        }
    }
}

/// One edit as the user writes it: a latent, a mode and a strength still to resolve.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EditSpec {
    /// The latent.
    pub latent: usize,
    /// What to do to it.
    pub mode: Mode,
    /// How strongly (`4x`, `raw:30`); none for `ablate`.
    #[serde(default)]
    pub strength: Option<Strength>,
}

/// An SAE loaded for steering: the SAE, where it came from, its hook, and its features
/// folder when there is one.
#[derive(Debug)]
pub struct SteerSae {
    /// The SAE.
    pub sae: Sae,
    /// The directory it was loaded from.
    pub dir: PathBuf,
    /// Its hook (canonical name).
    pub hook: String,
    /// Its features folder, for the latents' maxima and top tokens.
    pub features: Option<Features>,
    /// The features folder's token matrix, read once when first needed.
    tokens: std::sync::OnceLock<Vec<u32>>,
}

impl SteerSae {
    /// An SAE loaded by the caller (from `dir`, for `hook`), with its features folder.
    pub fn new(sae: Sae, dir: PathBuf, hook: String, features: Option<Features>) -> Self {
        SteerSae {
            sae,
            dir,
            hook,
            features,
            tokens: std::sync::OnceLock::new(),
        }
    }

    /// Loads the SAE at `path` (an SAE or run directory) with its hook (`hook`, else its
    /// own) and checks it against `model`; opens `features` (default: the run's
    /// `features` folder, when it exists; a folder made from another SAE is an error).
    pub fn load(
        path: &Path,
        hook: Option<&str>,
        features: Option<&Path>,
        steerer: &Steerer,
    ) -> Result<Self> {
        let (sae, dir, hook) = inputs::sae_with_hook(path, hook)?;
        steerer.model.hook(&hook)?;
        inputs::check_sae_width(&sae, &dir, &steerer.model, &steerer.model_path, &hook)?;
        let features = match features {
            Some(f) => Some(Features::open_for(f, &sae)?),
            None => default_features_dir(path, &dir)
                .map(|f| Features::open_for(&f, &sae))
                .transpose()?,
        };
        Ok(SteerSae::new(sae, dir, hook, features))
    }

    /// The largest activation of `latent` in the features pass, if there is one.
    pub fn max_activation(&self, latent: usize) -> Result<Option<f32>> {
        self.check_latent(latent)?;
        match &self.features {
            Some(f) => Ok(Some(f.latent(latent)?.max)),
            None => Ok(None),
        }
    }

    fn check_latent(&self, latent: usize) -> Result<()> {
        let n = self.sae.cfg.d_sae;
        if latent >= n {
            return Err(Error::invalid(format!(
                "{}: latent {latent} is out of range: the SAE has {n} latents (0..{})",
                self.dir.display(),
                n - 1
            )));
        }
        Ok(())
    }

    /// The edits of `specs` with their strengths resolved.
    pub fn resolve(&self, specs: &[EditSpec]) -> Result<Vec<Edit>> {
        specs
            .iter()
            .map(|e| {
                self.check_latent(e.latent)?;
                let max = match e.strength {
                    Some(Strength::TimesMax(_)) => self.max_activation(e.latent)?,
                    _ => None,
                };
                let op = e
                    .mode
                    .op(e.latent, e.strength, max)
                    .map_err(|err| Error::invalid(format!("{}: {err}", self.dir.display())))?;
                Ok(Edit {
                    latent: e.latent,
                    op,
                })
            })
            .collect()
    }

    /// The latent's concept set ([`ConceptSet::Both`]): its logit-lens tokens and, with
    /// a features folder, the tokens of its top activating examples (distinct, best
    /// first), `CONCEPT_TOKENS` of each.
    pub fn concept_tokens(&self, model: &HookedModel, latent: usize) -> Result<BTreeSet<u32>> {
        self.concept_set(model, latent, ConceptSet::Both)
    }

    /// The latent's concept set of the given kind, `CONCEPT_TOKENS` of each part.
    pub fn concept_set(
        &self,
        model: &HookedModel,
        latent: usize,
        kind: ConceptSet,
    ) -> Result<BTreeSet<u32>> {
        let mut set = BTreeSet::new();
        if kind != ConceptSet::Examples {
            set.extend(logit_lens_tokens(model, &self.sae, latent, CONCEPT_TOKENS)?);
        }
        if kind != ConceptSet::Lens {
            set.extend(self.top_tokens(latent, CONCEPT_TOKENS)?);
        }
        Ok(set)
    }

    /// The tokens at the latent's top activating positions in the features pass,
    /// distinct, best first, at most `k` (empty without a features folder).
    pub fn top_tokens(&self, latent: usize, k: usize) -> Result<Vec<u32>> {
        let mut out: Vec<u32> = Vec::new();
        for t in self.example_tokens(latent)? {
            if out.len() == k {
                break;
            }
            if !out.contains(&t) {
                out.push(t);
            }
        }
        Ok(out)
    }
}

impl SteerSae {
    /// The token at each of the latent's top activating positions in the features
    /// pass, best first, repeats kept (Arad et al.'s input score reads them; empty
    /// without a features folder).
    pub fn example_tokens(&self, latent: usize) -> Result<Vec<u32>> {
        let Some(f) = &self.features else {
            return Ok(Vec::new());
        };
        let rec = f.latent(latent)?;
        let tokens = match self.tokens.get() {
            Some(t) => t,
            None => {
                let t = f.tokens()?;
                self.tokens.get_or_init(|| t)
            }
        };
        let ctx = f.manifest().settings.ctx_len;
        Ok(rec
            .top
            .iter()
            .map(|s| tokens[s.seq as usize * ctx + s.pos as usize])
            .collect())
    }
}

/// The features folder of a run, when it exists: `<path>/features`, or beside the SAE
/// directory (`<dir>/../features`) when `path` is the run's `sae/` folder.
fn default_features_dir(path: &Path, dir: &Path) -> Option<PathBuf> {
    let mut cands = vec![path.join("features")];
    if let Some(p) = dir.parent() {
        cands.push(p.join("features"));
    }
    cands
        .into_iter()
        .find(|c| c.join("features.json").is_file())
}

/// Interventions of one SAE, as the user writes them.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InterventionSpec {
    /// Index of the SAE in the list the request's SAEs were loaded from.
    #[serde(default)]
    pub sae: usize,
    /// The positions edited (default: all).
    #[serde(default)]
    pub positions: Positions,
    /// The edits.
    pub edits: Vec<EditSpec>,
}

/// One generation request: a prompt and how to continue it.
#[derive(Clone, Debug, PartialEq)]
pub struct PromptRequest {
    /// The text.
    pub text: String,
    /// Put it in the model's chat template as a user message, with the assistant's
    /// turn opened (instruct models).
    pub chat: bool,
    /// Length, sampling, seed, stop tokens.
    pub gen: GenerateOptions,
}

/// A continuation, as tokens and text.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Continuation {
    /// The new token ids (the stop token left out).
    pub tokens: Vec<u32>,
    /// Their text.
    pub text: String,
    /// `stop` or `length`.
    pub finish: &'static str,
}

/// What the two continuations say about one edited latent.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct LatentEffect {
    /// Index of the SAE in the request's list.
    pub sae: usize,
    /// The latent.
    pub latent: usize,
    /// Size of its concept set.
    pub concept_tokens: usize,
    /// The unsteered continuation, measured.
    pub unsteered: Measured,
    /// The steered continuation, measured.
    pub steered: Measured,
}

/// [`TextMeasure`] in serialisable form.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct Measured {
    /// Tokens measured.
    pub tokens: usize,
    /// Share of them in the concept set.
    pub concept_share: f64,
    /// The latent's mean value over them, re-encoded by the unsteered model.
    pub mean_activation: f64,
    /// Perplexity under the unsteered model.
    pub perplexity: f64,
}

impl From<TextMeasure> for Measured {
    fn from(m: TextMeasure) -> Self {
        Measured {
            tokens: m.tokens,
            concept_share: m.concept_share,
            mean_activation: m.mean_activation,
            perplexity: m.perplexity,
        }
    }
}

/// The edits applied, resolved (strength as a value).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct AppliedEdit {
    /// Index of the SAE in the request's list.
    pub sae: usize,
    /// Its hook.
    pub hook: String,
    /// The positions edited.
    pub positions: String,
    /// The latent.
    pub latent: usize,
    /// The operation, with its value.
    pub op: Op,
}

/// Steered and unsteered continuations of one prompt, from the same seed.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct SteerOutput {
    /// The prompt's token count (BOS or chat markers included).
    pub prompt_tokens: usize,
    /// Without interventions.
    pub unsteered: Continuation,
    /// With them.
    pub steered: Continuation,
    /// What was applied.
    pub edits: Vec<AppliedEdit>,
    /// Per edited latent, when measured.
    pub effects: Vec<LatentEffect>,
}

/// The one generation of a one-prompt batch.
fn one(g: Vec<Generation>) -> Result<Generation> {
    g.into_iter()
        .next()
        .ok_or_else(|| Error::invalid("the model returned no generation for the prompt"))
}

/// A model ready to generate: the model, its tokenizer and its chat template.
pub struct Steerer {
    /// The model.
    pub model: HookedModel,
    /// Where it was loaded from.
    pub model_path: PathBuf,
    /// Its tokenizer.
    pub tokenizer: Tokenizer,
    /// Its chat template, or why it has none saelab can use (kept for `--chat`'s error).
    chat: std::result::Result<ChatTemplate, String>,
}

impl std::fmt::Debug for Steerer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Steerer")
            .field("model_path", &self.model_path)
            .field("chat", &self.chat.is_ok())
            .finish_non_exhaustive()
    }
}

impl Steerer {
    /// Loads the model at `path` and its tokenizer (and chat template, if it has a
    /// ChatML one).
    pub fn load(path: &Path, on: &mut OnEvent) -> Result<Self> {
        let model = inputs::load_model(path, on)?;
        Self::new(model, path)
    }

    /// Wraps an already loaded `model` (from `path`).
    pub fn new(model: HookedModel, path: &Path) -> Result<Self> {
        let tokenizer = tokenizer_for_model(path)?;
        let chat = ChatTemplate::from_tokenizer(&tokenizer).map_err(|e| e.to_string());
        Ok(Steerer {
            model,
            model_path: path.to_path_buf(),
            tokenizer,
            chat,
        })
    }

    /// The token ids of `text`: BOS and the text, or with `chat` the model's chat
    /// template around it as a user message, the assistant's turn opened. Errors: an
    /// empty text, `chat` for a model without a ChatML template, a prompt that leaves
    /// no room for `max_new` tokens in the model's context.
    pub fn prompt_ids(&self, text: &str, chat: bool, max_new: usize) -> Result<Vec<u32>> {
        if text.trim().is_empty() {
            return Err(Error::invalid("the prompt is empty"));
        }
        let ids = if chat {
            let t = self
                .chat
                .as_ref()
                .map_err(|why| Error::invalid(format!("{why}; leave out --chat")))?;
            t.encode(&self.tokenizer, &[Message::user(text)], true)?
        } else {
            let bos = self
                .tokenizer
                .bos_id()
                .or(self.model.bos_token_id())
                .ok_or_else(|| {
                    Error::invalid(format!(
                        "{}: names no BOS token; saelab starts every prompt with BOS",
                        self.model_path.display()
                    ))
                })?;
            std::iter::once(bos)
                .chain(self.tokenizer.encode(text)?)
                .collect()
        };
        let ctx = self.model.context_length();
        if ids.len() + max_new > ctx {
            return Err(Error::invalid(format!(
                "the prompt is {} tokens and {max_new} are to be generated, beyond the \
                 {ctx}-token context of {}",
                ids.len(),
                self.model_path.display()
            )));
        }
        Ok(ids)
    }

    /// Generation options for `req`: with `chat`, `<|im_end|>` also stops.
    fn options(&self, req: &PromptRequest) -> GenerateOptions {
        let mut gen = req.gen.clone();
        if req.chat && gen.stop_tokens.is_none() {
            let mut stop: Vec<u32> = self.model.eos_token_id().into_iter().collect();
            stop.extend(self.tokenizer.token_to_id("<|im_end|>"));
            gen.stop_tokens = Some(stop);
        }
        gen
    }

    /// Continues `req` without interventions.
    pub fn generate(&self, req: &PromptRequest) -> Result<Continuation> {
        let ids = self.prompt_ids(&req.text, req.chat, req.gen.max_new_tokens)?;
        let g = self.model.generate(
            &[ids.as_slice()],
            &self.options(req),
            &ForwardOptions::new(),
        )?;
        self.continuation(one(g)?)
    }

    fn continuation(&self, g: Generation) -> Result<Continuation> {
        Ok(Continuation {
            text: self.tokenizer.decode(&g.tokens)?,
            tokens: g.tokens,
            finish: match g.finish {
                Finish::Stop(_) => "stop",
                Finish::Length => "length",
            },
        })
    }

    /// Continues `req` twice from the same seed, without and with the interventions of
    /// `specs` on `saes`; with `measure`, measures both continuations for every edited
    /// latent. Errors (one line): an SAE index out of range, the errors of
    /// [`SteerSae::resolve`] and [`Steerer::prompt_ids`].
    pub fn steer(
        &self,
        saes: &[SteerSae],
        specs: &[InterventionSpec],
        req: &PromptRequest,
        measure: bool,
    ) -> Result<SteerOutput> {
        if specs.is_empty() {
            return Err(Error::invalid(
                "nothing to steer with: give at least one edit",
            ));
        }
        let mut set = Vec::new();
        let mut applied = Vec::new();
        for s in specs {
            let ss = saes.get(s.sae).ok_or_else(|| {
                Error::invalid(format!(
                    "intervention on SAE {} but {} SAEs are loaded",
                    s.sae,
                    saes.len()
                ))
            })?;
            let edits = ss.resolve(&s.edits)?;
            for e in &edits {
                applied.push(AppliedEdit {
                    sae: s.sae,
                    hook: ss.hook.clone(),
                    positions: s.positions.to_string(),
                    latent: e.latent,
                    op: e.op,
                });
            }
            set.push(Intervention::latents(
                &ss.sae,
                ss.hook.clone(),
                &edits,
                s.positions.clone(),
            )?);
        }
        let ids = self.prompt_ids(&req.text, req.chat, req.gen.max_new_tokens)?;
        let gen = self.options(req);
        let prompts = Prompts::new(&[ids.as_slice()], self.model.bos_token_id());
        let plain = self
            .model
            .generate(&[ids.as_slice()], &gen, &ForwardOptions::new())?;
        let opts = with_interventions(ForwardOptions::new(), &set, &prompts);
        let steered = self.model.generate(&[ids.as_slice()], &gen, &opts)?;
        let unsteered = self.continuation(one(plain)?)?;
        let steered = self.continuation(one(steered)?)?;
        let mut effects = Vec::new();
        if measure {
            let mut seen = BTreeSet::new();
            for e in &applied {
                if !seen.insert((e.sae, e.latent)) {
                    continue;
                }
                let ss = &saes[e.sae];
                let concept = ss.concept_tokens(&self.model, e.latent)?;
                let m = |c: &Continuation| {
                    measure_text(
                        &self.model,
                        &ss.sae,
                        &ss.hook,
                        e.latent,
                        &concept,
                        &ids,
                        &c.tokens,
                    )
                };
                effects.push(LatentEffect {
                    sae: e.sae,
                    latent: e.latent,
                    concept_tokens: concept.len(),
                    unsteered: m(&unsteered)?.into(),
                    steered: m(&steered)?.into(),
                });
            }
        }
        Ok(SteerOutput {
            prompt_tokens: ids.len(),
            unsteered,
            steered,
            edits: applied,
            effects,
        })
    }
}
