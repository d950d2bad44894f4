//! One module per `saelab` subcommand.

pub mod bench;
pub mod bench_model;
pub mod convert;
pub mod eval;
pub mod extract;
pub mod inspect;
pub mod report;
pub mod sweep;
pub mod synth;
pub mod train;

use std::path::Path;

/// The hook an SAE is spliced at: `--hook` if given, else the SAE's own
/// `metadata.hook_name`; an error naming `sae_dir` when neither says.
pub fn splice_hook(
    flag: Option<&str>,
    sae_hook: Option<&str>,
    sae_dir: &Path,
) -> anyhow::Result<String> {
    flag.or(sae_hook).map(str::to_string).ok_or_else(|| {
        anyhow::anyhow!(
            "{}: the SAE's metadata names no hook point; give one with --hook",
            sae_dir.display()
        )
    })
}
