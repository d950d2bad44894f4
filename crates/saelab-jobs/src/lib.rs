//! `saelab-jobs`: saelab's jobs as a library, so that the `saelab` binary, a web server
//! or a Python binding start the same jobs the same way.
//!
//! - [`extract`]: run a model over a corpus part into an activation cache;
//! - [`train`]: train SAEs on stored activations or on activations streamed from a
//!   model, one run directory each, and resume an interrupted set of runs;
//! - [`sweep`]: expand a sweep file into a training job;
//! - [`eval`]: evaluate an SAE on activation files, or spliced into the model (writing
//!   `eval.json`);
//! - [`encode`]: one text through the model and the SAE, every latent at every token;
//! - [`features`]: the feature statistics pass (`saelab features`): a latent cache,
//!   per-latent statistics and weights-only tables in a features folder;
//! - [`steer`]: generation, and steered against unsteered continuations of a prompt
//!   with exact interventions on SAE latents, measured;
//! - [`steer_eval`]: the steering study: dose–response against a random direction,
//!   selection by output score, unlearning by negative clamping;
//! - [`autointerp`]: explain latents of a features folder and score the explanations
//!   against a shuffled control (delphi's layout);
//! - [`pipeline`]: the main job (extract, train, evaluate, summarise) as one resumable
//!   job;
//! - [`config`]: run files (TOML) and their overrides;
//! - [`inputs`]: the one place that loads models and packs corpus contexts.
//!
//! A job takes a request (a typed record), a stop flag (set it, e.g. on Ctrl-C, and the
//! job stops at its next safe point with an error for which
//! [`Error::is_interrupted`] holds; running it again continues) and a callback that
//! receives [`Event`]s (progress, notes, results as they come). Jobs never print.

#![warn(missing_docs)]

pub mod autointerp;
pub mod config;
pub mod encode;
pub mod error;
pub mod eval;
pub mod event;
pub mod extract;
pub mod features;
pub mod inputs;
pub mod pipeline;
pub mod steer;
pub mod steer_eval;
pub mod sweep;
pub mod train;

pub use error::{Error, Result};
pub use event::{Event, OnEvent, Phase};
