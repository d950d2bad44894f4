//! `saelab-features`: the feature statistics pass behind `saelab features`, and the
//! features folder it writes, which the dashboard server and the exporters read.
//!
//! - [`pass`]: Stage A (model forward to the hook or rows of an activation cache, SAE
//!   encode, one token-major [`parts`] file per block of contexts) and Stage B (per
//!   latent range: delphi's [`latent_cache`] file, the [`stats`] of every latent,
//!   [`cooccurrence`] and [`weights`] neighbours, logit tables), resumable at every
//!   part and range;
//! - [`store`]: the folder's layout, its per-range stats files and their index, and
//!   reading one latent's [`record`] without loading the others; [`manifest`]:
//!   `features.json`, with the [`fingerprint`] that ties a folder to its SAE;
//! - [`explanations`]: `explanations.json`, the explanations and scores of
//!   `saelab autointerp`, merged per latent and explainer;
//! - [`rank`]: the one top-n selection (and tie rule) every table uses.
//!
//! The `.safetensors` files (shard parts, the token matrix, delphi's latent cache) are
//! read and written through `saelab_core::tensorfile::safetensors`: memory-mapped reads
//! that check every tensor's dtype and shape, atomic writes with no metadata.
//!
//! The definitions of every field, with their tie rules and the conventions borrowed
//! from SAEDashboard and delphi, are in `docs/features.md`. Memory never holds a dense
//! `[tokens, latents]` array: Stage A one batch, Stage B one latent range.

#![warn(missing_docs)]

pub mod cooccurrence;
pub mod explanations;
pub mod fingerprint;
pub mod latent_cache;
pub mod manifest;
pub mod parts;
pub mod pass;
pub mod rank;
pub mod record;
pub mod stats;
pub mod store;
pub mod weights;

pub use fingerprint::sae_fingerprint;
pub use manifest::{Manifest, Settings};
pub use pass::{Activations, PassInputs, Progress, Summary};
pub use record::LatentRecord;
pub use store::{Features, Layout};
