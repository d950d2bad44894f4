//! `saelab-core`: sparse-autoencoder maths with no language-model code.
//!
//! - [`arch`]: one file per SAE architecture behind the [`arch::Architecture`] trait;
//! - [`kernels`]: the dense and sparse CPU products those architectures call;
//! - [`sae`]: a loaded SAE for inference (`encode`, `decode`, `forward`);
//! - [`train`], [`optim`], [`schedule`]: the training loop, Adam, warm-ups and decays;
//! - [`fit`], [`rundir`]: the driver feeding trainers, and the run directories it writes
//!   (typed records the report and resume read back);
//! - [`metrics`]: reconstruction and sparsity metrics as defined in DESIGN.md;
//! - [`format`]: SAELens, sparsify and Gemma Scope files;
//! - [`store`]: activation matrices from `.npy` / `.safetensors`, memory-mapped;
//! - [`synth`]: synthetic activations with a known dictionary;
//! - [`bench`]: the training-step benchmark of BENCH.md (W1–W4).

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
pub mod train;

pub use config::{ArchConfig, Dims, SaeConfig};
pub use error::{Error, Result};
pub use latents::Latents;
pub use sae::{Encoded, Sae};
pub use tensor::{Matrix, ParamSet, Tensor};
