//! `saelab-core`: sparse-autoencoder maths with no language-model code.
//!
//! The path of a training run, top to bottom:
//!
//! - [`store`]: activation matrices from `.npy` / `.safetensors` files and caches,
//!   memory-mapped, split into training and validation rows, served in shuffled batches;
//! - [`fit`]: the driver — batches from a store (or a model stream) into one or more
//!   trainers, checkpoints, resume, Ctrl-C; [`rundir`]: the run directories it writes,
//!   as typed records that the report and resume read back;
//! - [`train`]: one SAE's trainer (Adam in [`optim`], schedules in [`schedule`], input
//!   normalisation, unit-norm decoder rows, dead latents, exact checkpoint state);
//! - [`arch`]: one file per SAE architecture behind two traits (what an SAE *is*, how it
//!   trains), listed in one registry; [`config`]: the SAE config (`cfg.json`);
//! - [`kernels`]: the step engine the architectures are written against — the fast CPU
//!   kernels and the dense reference — and the products and selections inside them;
//! - [`sae`]: a loaded SAE for inference (`encode`, `decode`, `forward`); [`format`](mod@format):
//!   SAELens, sparsify and Gemma Scope files;
//! - [`metrics`], [`evaluate`], [`refit`]: the metric definitions of `docs/metrics.md`,
//!   accumulated batch by batch; dictionary recovery on synthetic data; least-squares
//!   refits of the latents;
//! - [`synth`]: synthetic activations with a known dictionary; [`bench`](mod@bench): the
//!   training-step benchmark of `docs/bench.md` (W1–W4);
//! - [`tensor`], [`latents`]: dense matrices, named parameter sets, sparse latents;
//!   [`tensorfile`]: the bytes of `.safetensors` and `.npy` (headers, dtypes, the one
//!   conversion to f32) for every reader and writer; [`io`]: atomic files and
//!   directories; [`rng`]: the seeded generator;
//!   [`error`]: the error type (every message names the file and the problem).

#![warn(missing_docs)]

pub mod arch;
pub mod bench;
pub mod config;
pub mod error;
pub mod evaluate;
pub mod fit;
pub mod format;
pub mod io;
pub mod kernels;
pub mod latents;
pub mod metrics;
pub mod optim;
pub mod refit;
pub mod rng;
pub mod rundir;
pub mod sae;
pub mod schedule;
pub mod store;
pub mod synth;
pub mod tensor;
pub mod tensorfile;
pub mod train;

pub use config::{ArchConfig, Dims, SaeConfig};
pub use error::{Error, Result};
pub use latents::Latents;
pub use sae::{Encoded, Sae};
pub use tensor::{Matrix, ParamSet, Tensor};
