//! `saelab-testkit`: what the saelab test suites share, written once.
//!
//! - [`data`]: where the real SmolLM2 model and English corpus are (`SAELAB_DATA`, as in
//!   `scripts/setup.sh`), the vendored SAE fixtures and the tokenizer oracle; a test
//!   that needs them skips with a message, or fails when `CI` or `SAELAB_REQUIRE_DATA`
//!   is set (`scripts/test.sh` sets it), so a green CI run always includes them;
//! - [`cli`]: running the `saelab` binary and checking its one-line errors;
//! - [`serial`]: the heavy real-model tests of one test binary run one at a time on two
//!   rayon threads (the machines have two cores);
//! - [`unwritable_dir`]: a folder where nobody, root included, can create anything.
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
