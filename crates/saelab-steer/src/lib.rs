//! `saelab-steer`: using SAE latents to intervene on a model, and measuring what the
//! interventions do.
//!
//! - [`intervention`]: exact edits of latents at a hook (add `α·d_i`, clamp with the
//!   SAE error kept, clamp-min, scale, ablate, negative clamp where active) or a vector
//!   added, on a set of positions, as patches of a forward or of every step of a
//!   KV-cached generation;
//! - [`spec`]: the user-facing mode and strength (`4x` = four times the latent's
//!   largest activation in the features pass, `raw:30`);
//! - [`measure`]: measures computed from generated text and held-out text, never read
//!   off the hook: concept gain, perplexity under the unsteered model, ΔCE with the
//!   intervention on, Arad et al.'s output and input scores, the sign-flip test;
//! - [`unlearn`]: choosing the latents most specific to one part of a corpus.
//!
//! Formulas and conventions: `docs/steering.md`.

#![warn(missing_docs)]

pub mod intervention;
pub mod measure;
pub mod spec;
pub mod unlearn;

pub use intervention::{with_interventions, Edit, Intervention, Op, Positions, Prompts};
pub use spec::{Mode, Strength};
