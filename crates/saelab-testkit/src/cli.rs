//! Running the `saelab` binary from a test and reading what it printed.
//!
//! The binary's path is known only to the tests of the crate that builds it
//! (`env!("CARGO_BIN_EXE_saelab")`), so a test file names it once:
//!
//! ```text
//! const SAELAB: Bin = Bin::new(env!("CARGO_BIN_EXE_saelab"));
//! let out = SAELAB.run(&["inspect", "some/sae"]);
//! ```

use std::path::Path;
use std::process::{Command, Output};

/// A binary under test. Every run gets `RAYON_NUM_THREADS=2` (the machines have two
/// cores, shared by the test binaries running at once).
#[derive(Clone, Copy, Debug)]
pub struct Bin {
    path: &'static str,
}

impl Bin {
    /// The binary at `path`.
    pub const fn new(path: &'static str) -> Bin {
        Bin { path }
    }

    /// A command running the binary with `args`, to spawn or to adjust first.
    pub fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(self.path);
        c.args(args).env("RAYON_NUM_THREADS", "2");
        c
    }

    /// Runs the binary with `args` to the end and collects its output.
    pub fn run(&self, args: &[&str]) -> Output {
        self.cmd(args)
            .output()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", self.path))
    }
}

/// What the process wrote to stderr (lossy UTF-8).
pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// What the process wrote to stdout (lossy UTF-8).
pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// A path as a command-line argument (test paths are UTF-8).
pub fn p(path: &Path) -> &str {
    path.to_str().expect("a UTF-8 path")
}

/// Asserts a failed run that explains itself in one line: a non-zero exit, exactly one
/// non-blank line on stderr, containing every needle, and no panic.
#[track_caller]
pub fn assert_one_line_error(o: &Output, needles: &[&str]) {
    assert!(!o.status.success(), "succeeded: {}{}", stdout(o), stderr(o));
    let e = stderr(o);
    let lines: Vec<&str> = e.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "expected one line, got: {e}");
    crate::assert_mentions(&e, needles);
    assert!(
        !e.contains("panicked") && !e.contains("RUST_BACKTRACE"),
        "{e}"
    );
}
