//! What the `saelab` binary's test files share (each includes it with `mod common;`;
//! the general helpers are in `saelab_testkit`).

// Each test file is its own crate and uses only some of these.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Output;

use saelab_core::format::save_sae;
use saelab_core::{ArchConfig, ParamSet, Sae, SaeConfig, Tensor};
use saelab_testkit::cli::Bin;

/// The binary under test.
pub const SAELAB: Bin = Bin::new(env!("CARGO_BIN_EXE_saelab"));

/// Runs `saelab args…` to the end.
pub fn saelab(args: &[&str]) -> Output {
    SAELAB.run(args)
}

/// Writes `dir/zero-sae`: a TopK SAE (k 4, 16 latents) for SmolLM2's residual stream
/// (d = 576) at `hook`, all weights zero — enough for the model commands to run.
pub fn zero_sae(dir: &Path, hook: &str) -> PathBuf {
    let (d, n) = (576, 16);
    let mut cfg = SaeConfig::new(ArchConfig::default_for("topk", 4).unwrap(), d, n);
    cfg.metadata.hook_name = Some(hook.into());
    let mut ps = ParamSet::new();
    ps.insert("W_enc", Tensor::zeros(&[d, n]));
    ps.insert("b_enc", Tensor::zeros(&[n]));
    ps.insert("W_dec", Tensor::zeros(&[n, d]));
    ps.insert("b_dec", Tensor::zeros(&[d]));
    let out = dir.join("zero-sae");
    save_sae(&Sae::new(cfg, ps).unwrap(), &out, None).unwrap();
    out
}
