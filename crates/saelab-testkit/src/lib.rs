//! `saelab-testkit`: what the saelab test suites share, written once.
//!
//! - [`data`]: where the real SmolLM2 model, sentence encoder and English corpus are
//!   (`SAELAB_DATA`, as in `scripts/setup.sh`), the vendored SAE fixtures and the
//!   tokenizer oracle; a test that needs them skips with a message, or fails when `CI`
//!   or `SAELAB_REQUIRE_DATA` is set (`scripts/test.sh` sets it), so a green CI run
//!   always includes them;
//! - [`cli`]: running the `saelab` binary and checking its one-line errors;
//! - [`serial`]: the heavy real-model tests of one test binary run one at a time on two
//!   rayon threads (the machines have two cores);
//! - [`unwritable_dir`]: a folder where nobody, root included, can create anything;
//! - [`assert_mentions`]: an error message holds every expected fragment;
//! - [`lcg_uniform`], [`tied_random_weights`] and [`identity_relu_weights`]: the deterministic weights the test
//!   models and SAEs are built from.
//!
//! It is a dev-dependency of every crate and depends on no saelab crate, so that the
//! unit tests inside `saelab-core` and `saelab-lm` can use it too.

#![warn(missing_docs)]

pub mod cli;
pub mod data;

use std::path::PathBuf;
use std::sync::{Mutex, MutexGuard};

pub use data::{fixtures_dir, real_data, tokenizer_oracle, RealData};

/// Limits rayon's global pool to 2 threads (a no-op if it is already built) and holds a
/// lock of this test binary, so that the tests calling it run one at a time instead of
/// fighting over the two cores. Keep the guard for the whole test.
pub fn serial() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    let _ = rayon::ThreadPoolBuilder::new()
        .num_threads(2)
        .build_global();
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

/// A folder where creating a file or folder fails even for root (tests and CI run as
/// root, who ignores permission bits): the root of sysfs (`/sys`, where nothing can be
/// created) or of procfs (`/proc`). Panics if neither refuses a probe file, since a
/// test that meant to check a refusal would then check nothing.
pub fn unwritable_dir() -> PathBuf {
    for dir in ["/sys", "/proc"] {
        let probe = PathBuf::from(dir).join(format!("saelab-probe-{}", std::process::id()));
        if !probe.parent().is_some_and(|p| p.is_dir()) {
            continue;
        }
        if std::fs::write(&probe, b"").is_err() && std::fs::create_dir(&probe).is_err() {
            return PathBuf::from(dir);
        }
        let _ = std::fs::remove_file(&probe);
        let _ = std::fs::remove_dir(&probe);
    }
    panic!("no folder refuses writes here (tried /sys and /proc)");
}

/// Asserts that `text` (an error message, a report) contains every one of `needles`,
/// naming the first one missing.
#[track_caller]
pub fn assert_mentions(text: &str, needles: &[&str]) {
    for n in needles {
        assert!(text.contains(n), "{n:?} not in: {text}");
    }
}

/// `n` deterministic pseudo-random values, uniform in [−scale, scale) (a 64-bit LCG
/// seeded with `seed`, its top 24 bits per value): the random weights of the test
/// models and SAEs, the same on every machine.
pub fn lcg_uniform(n: usize, seed: u64, scale: f32) -> Vec<f32> {
    let mut s = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
    (0..n)
        .map(|_| {
            s = s
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            ((s >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * scale
        })
        .collect()
}

/// Random encoder weights `W_enc [d, n]` (row-major, [`lcg_uniform`] from `seed` in
/// `[−scale, scale)`) and the decoder `W_dec [n, d]` whose rows are the encoder's
/// columns normalised to unit length: the tied random SAEs of the features, dashboard
/// and evaluation tests, which need latents that fire without training.
pub fn tied_random_weights(d: usize, n: usize, seed: u64, scale: f32) -> (Vec<f32>, Vec<f32>) {
    let w_enc = lcg_uniform(d * n, seed, scale);
    let mut w_dec = vec![0f32; n * d];
    for j in 0..n {
        let norm: f32 = (0..d).map(|i| w_enc[i * n + j].powi(2)).sum::<f32>().sqrt();
        for i in 0..d {
            w_dec[j * d + i] = w_enc[i * n + j] / norm;
        }
    }
    (w_enc, w_dec)
}

/// The weights of a ReLU SAE of width `2d` that reconstructs every `x` of width `d`
/// exactly: `W_enc = [I, −I]` (`[d, 2d]`, row-major) and `W_dec = [I; −I]` (`[2d, d]`),
/// so that `relu(x) − relu(−x) = x` (with zero biases).
pub fn identity_relu_weights(d: usize) -> (Vec<f32>, Vec<f32>) {
    let n = 2 * d;
    let mut w_enc = vec![0f32; d * n];
    let mut w_dec = vec![0f32; n * d];
    for i in 0..d {
        w_enc[i * n + i] = 1.0;
        w_enc[i * n + d + i] = -1.0;
        w_dec[i * d + i] = 1.0;
        w_dec[(d + i) * d + i] = -1.0;
    }
    (w_enc, w_dec)
}
