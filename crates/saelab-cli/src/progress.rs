//! Progress bars (indicatif) in one style for every long-running command.

use indicatif::{ProgressBar, ProgressStyle};

/// A bar over `total` units named `unit` (e.g. "steps", "tokens"), showing rate and ETA.
/// Hidden when stderr is not a terminal, so logs stay clean.
pub fn bar(total: u64, unit: &str) -> ProgressBar {
    let pb = ProgressBar::new(total);
    pb.set_style(
        ProgressStyle::with_template(&format!(
            "{{spinner}} [{{elapsed_precise}}] {{bar:30}} {{pos}}/{{len}} {unit} ({{per_sec}}, ETA {{eta}}) {{msg}}"
        ))
        .expect("valid template"),
    );
    pb
}

/// A spinner with a message, for steps of unknown length (loading a model).
/// Hidden when stderr is not a terminal.
pub fn spinner(msg: &str) -> ProgressBar {
    let pb = ProgressBar::new_spinner();
    pb.set_style(
        ProgressStyle::with_template("{spinner} [{elapsed_precise}] {msg}")
            .expect("valid template"),
    );
    pb.set_message(msg.to_string());
    pb.enable_steady_tick(std::time::Duration::from_millis(200));
    pb
}
