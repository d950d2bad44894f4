//! Progress bars (indicatif) in one style for every long-running command, and the
//! [`Reporter`] that turns a job's events into them.

use std::sync::atomic::Ordering;
use std::time::Instant;

use indicatif::{ProgressBar, ProgressStyle};
use saelab_core::fit::Event as FitEvent;
use saelab_jobs::{Event, Phase};
use saelab_lm::cache;

use crate::STOP;

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

/// Turns a job's [`Event`]s into progress bars and the lines every command prints
/// while it runs (notes, validations, checkpoints), and remembers where the job was
/// for the message of an interruption.
#[derive(Default)]
pub struct Reporter {
    bar: Option<ProgressBar>,
    /// Runs being trained (labels of multi-run lines).
    names: Vec<String>,
    total_steps: u64,
    /// The step of the last checkpoint written.
    pub checkpoint: Option<u64>,
    /// The last extraction progress.
    pub extract: cache::Progress,
    extract_t0: Option<Instant>,
    extract_start: Option<u64>,
    in_model_contexts: u64,
    /// Stop as if interrupted once every run finished this step (testing resume).
    pub stop_after_steps: Option<u64>,
    /// Stop as if interrupted after this many contexts of an extraction.
    pub stop_after_contexts: Option<u64>,
}

impl Reporter {
    /// A reporter with no stop points.
    pub fn new() -> Self {
        Reporter::default()
    }

    /// Handles one event.
    pub fn handle(&mut self, ev: Event<'_>) {
        match ev {
            Event::Begin {
                phase,
                label,
                total,
                done,
            } => {
                self.finish();
                let pb = match total {
                    None => spinner(&label),
                    Some(t) => {
                        let pb = bar(t, phase.unit());
                        pb.set_position(done);
                        pb
                    }
                };
                if phase == Phase::Extract {
                    self.extract_t0 = Some(Instant::now());
                    self.extract_start = None;
                }
                if phase == Phase::InModel {
                    self.in_model_contexts = total.unwrap_or(0) / 2;
                }
                self.bar = Some(pb);
            }
            Event::Advance { done } => {
                if let Some(pb) = &self.bar {
                    pb.set_position(done);
                }
            }
            Event::End => self.finish(),
            Event::Note(s) => self.eprint(&format!("note: {s}")),
            Event::Loaded(l) => println!(
                "loaded {} ({} blocks, d = {}) and packed {} contexts of {} tokens from {} \
                 documents in {:.1} s",
                l.model.display(),
                l.n_layers,
                l.d_model,
                l.contexts,
                l.ctx_len,
                l.documents,
                l.secs
            ),
            Event::Extract(p) => self.extract_progress(p),
            Event::InModel(p) => {
                if let Some(pb) = &self.bar {
                    let base = if p.pass == "mean" {
                        self.in_model_contexts
                    } else {
                        0
                    };
                    pb.set_position(base + p.done as u64);
                    pb.set_message(p.pass);
                }
            }
            Event::Evaluated { name, metrics: m } => self.eprint(&format!(
                "{name}: CE loss score {:.4}, KL {:.4}, ΔCE {:.4}",
                m.ce_loss_score, m.kl_sae, m.delta_ce
            )),
            Event::Resuming { dir, step, total } => self.eprint(&format!(
                "resuming {} at step {step} of {total}",
                dir.display()
            )),
            Event::TrainStart {
                names,
                start,
                total,
            } => {
                self.finish();
                self.names = names.to_vec();
                self.total_steps = total;
                let pb = bar(total, "steps");
                pb.set_position(start);
                self.bar = Some(pb);
            }
            Event::Fit(ev) => self.fit(ev),
            Event::Stage { n, of, title } => println!("\n== {n}/{of} {title}"),
            Event::StageDone(o) => crate::cmd::run::print_stage(&o),
            Event::Skipped(s) => println!("{s}"),
        }
    }

    fn fit(&mut self, ev: FitEvent<'_>) {
        let Some(pb) = &self.bar else { return };
        let n_runs = self.names.len();
        match ev {
            FitEvent::Step { run, report } => {
                if run == 0 {
                    pb.set_position(report.step);
                    if report.step % 10 == 0 || report.step == self.total_steps {
                        pb.set_message(format!(
                            "loss {:.4} L0 {:.1} FVU {:.4} dead {:.3}",
                            report.loss, report.l0, report.fvu, report.dead_frac
                        ));
                    }
                }
                if run + 1 == n_runs && self.stop_after_steps.is_some_and(|s| report.step >= s) {
                    STOP.store(true, Ordering::SeqCst);
                }
            }
            FitEvent::Eval { run, metrics, step } => {
                let label = if n_runs > 1 {
                    format!("{}: ", self.names[run])
                } else {
                    String::new()
                };
                pb.println(format!(
                    "{label}step {step}: val FVU {:.4}, L0 {:.1}, dead {:.3}",
                    metrics.fvu, metrics.l0, metrics.dead_frac
                ));
            }
            FitEvent::Checkpoint { step } => {
                self.checkpoint = Some(step);
                pb.println(format!("checkpoint at step {step}"));
            }
        }
    }

    fn extract_progress(&mut self, p: &cache::Progress) {
        let Some(pb) = &self.bar else { return };
        let len = pb.length().unwrap_or(u64::MAX);
        let start = *self.extract_start.get_or_insert_with(|| {
            pb.set_position(p.resumed_rows.min(len));
            pb.reset_eta();
            p.contexts
        });
        self.extract = *p;
        pb.set_position(p.rows.min(len));
        let secs = self
            .extract_t0
            .map_or(0.0, |t| t.elapsed().as_secs_f64())
            .max(1e-9);
        pb.set_message(format!(
            "{:.0} model tok/s, {} shards",
            p.model_tokens as f64 / secs,
            p.shards
        ));
        if self
            .stop_after_contexts
            .is_some_and(|n| p.contexts.saturating_sub(start) >= n)
        {
            STOP.store(true, Ordering::SeqCst);
        }
    }

    /// Prints a line to stderr without breaking the bar.
    fn eprint(&self, line: &str) {
        match &self.bar {
            Some(pb) => pb.suspend(|| eprintln!("{line}")),
            None => eprintln!("{line}"),
        }
    }

    fn finish(&mut self) {
        if let Some(pb) = self.bar.take() {
            pb.finish_and_clear();
        }
    }
}

impl Drop for Reporter {
    fn drop(&mut self) {
        self.finish();
    }
}
