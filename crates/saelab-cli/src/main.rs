//! `saelab`: train, evaluate and inspect sparse autoencoders from the command line.
//!
//! Every subcommand lives in its own module under `cmd/`: its flags, the library job it
//! starts (`saelab_jobs`) and what it prints. Errors are printed as one
//! line (`saelab: <file>: <problem>`) with a non-zero exit status; Ctrl-C stops long
//! jobs at a safe point (training writes a checkpoint first) and exits with 130.

mod cmd;
mod progress;

use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};

use clap::{Parser, Subcommand};

/// Set by Ctrl-C; long-running commands poll it and stop at a safe point.
pub static STOP: AtomicBool = AtomicBool::new(false);

/// Sparse autoencoders for language-model interpretability.
#[derive(Parser)]
#[command(name = "saelab", version, about, propagate_version = true)]
struct Cli {
    /// More log output (-v: info, -vv: debug).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    verbose: u8,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Generate synthetic activations with a known dictionary.
    Synth(cmd::synth::Args),
    /// Train SAEs on activation files or streamed from a model (or resume a run).
    Train(Box<cmd::train::Args>),
    /// Evaluate an SAE: reconstruction and sparsity metrics on activation files, or
    /// with --model/--corpus CE loss score, ΔCE and KL with the SAE spliced in.
    Eval(cmd::eval::Args),
    /// Train a grid of SAEs (architectures × sparsities × widths) in one data pass.
    Sweep(cmd::sweep::Args),
    /// Compare trained SAEs in one Markdown report with plots.
    Report(cmd::report::Args),
    /// Show the architecture, shapes, dtypes and metadata of an SAE.
    Inspect(cmd::inspect::Args),
    /// Convert an SAE (SAELens, sparsify, Gemma Scope) to saelab's SAELens v6 layout.
    Convert(cmd::convert::Args),
    /// Time training steps (workloads W1–W4 of docs/bench.md) against a dense reference.
    Bench(cmd::bench::Args),
    /// Run a model over a corpus and write an activation cache (resumable).
    Extract(cmd::extract::Args),
    /// Per-latent statistics of an SAE over a corpus (latent cache, top contexts,
    /// histograms, neighbours, logit tables) into a features folder (resumable).
    Features(Box<cmd::features::Args>),
    /// Serve the features dashboard (index, feature pages, JSON API; with --sae and
    /// --model the prompt explorer) on 127.0.0.1; or, with --llm, a local instruct
    /// model as an OpenAI-compatible chat-completion API.
    Serve(cmd::serve::Args),
    /// Write the dashboard's pages as a static folder that opens from file://.
    ExportHtml(cmd::export_html::Args),
    /// Export a features folder for Neuronpedia: SAEDashboard's batch JSON and the
    /// bulk-import layout.
    ExportNeuronpedia(cmd::export_neuronpedia::Args),
    /// One latent's value at every token of a text, through the model and the SAE.
    Encode(cmd::encode::Args),
    /// Continue a prompt with the model (greedy or sampled, KV-cached).
    Generate(cmd::generate::Args),
    /// Continue a prompt without and with interventions on SAE latents (add, clamp,
    /// ablate, …), from the same seed; --measure says what changed.
    Steer(Box<cmd::steer::Args>),
    /// The steering study of an SAE: dose–response against a random direction,
    /// selection by output score, unlearning by negative clamping.
    SteerEval(Box<cmd::steer_eval::Args>),
    /// Explain latents of a features folder (token sets or an LLM) and score the
    /// explanations (embedding, surprisal, detection, fuzz) against a shuffled control.
    Autointerp(Box<cmd::autointerp::Args>),
    /// Run the main job of a configuration file (extract, train, evaluate, summarise;
    /// resumable), e.g. `saelab run configs/main.toml`.
    Run(cmd::run::Args),
}

fn main() -> ExitCode {
    restore_sigpipe();
    let cli = Cli::parse();
    let level = match cli.verbose {
        0 => "warn",
        1 => "info",
        _ => "debug",
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("SAELAB_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level)),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_span_events(tracing_subscriber::fmt::format::FmtSpan::CLOSE)
        .init();
    let _ = ctrlc::set_handler(|| {
        if STOP.swap(true, Ordering::SeqCst) {
            eprintln!("saelab: interrupted twice, exiting now");
            std::process::exit(130);
        }
        eprintln!("saelab: stopping at the next safe point (Ctrl-C again to quit at once)");
    });
    let result = match cli.command {
        Command::Synth(a) => cmd::synth::run(a),
        Command::Train(a) => cmd::train::run(*a),
        Command::Eval(a) => cmd::eval::run(a),
        Command::Sweep(a) => cmd::sweep::run(a),
        Command::Report(a) => cmd::report::run(a),
        Command::Inspect(a) => cmd::inspect::run(a),
        Command::Convert(a) => cmd::convert::run(a),
        Command::Bench(a) => cmd::bench::run(a),
        Command::Extract(a) => cmd::extract::run(a),
        Command::Features(a) => cmd::features::run(*a),
        Command::Serve(a) => cmd::serve::run(a),
        Command::ExportHtml(a) => cmd::export_html::run(a),
        Command::ExportNeuronpedia(a) => cmd::export_neuronpedia::run(a),
        Command::Encode(a) => cmd::encode::run(a),
        Command::Generate(a) => cmd::generate::run(a),
        Command::Steer(a) => cmd::steer::run(*a),
        Command::SteerEval(a) => cmd::steer_eval::run(*a),
        Command::Autointerp(a) => cmd::autointerp::run(*a),
        Command::Run(a) => cmd::run::run(a),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let interrupted = e.chain().any(|c| {
                matches!(c.downcast_ref(), Some(saelab_core::Error::Interrupted))
                    || c.downcast_ref::<saelab_jobs::Error>()
                        .is_some_and(|j| j.is_interrupted())
            });
            if interrupted {
                // The outermost context says where to resume; the cause adds nothing.
                eprintln!("saelab: {e}");
                ExitCode::from(130)
            } else {
                eprintln!("saelab: {}", one_line(&e));
                ExitCode::FAILURE
            }
        }
    }
}

/// The error and its causes on one line, without repeating a cause already quoted
/// in its parent's message.
fn one_line(e: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in e.chain() {
        let s = cause.to_string();
        if out.contains(&s) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&s);
    }
    out.replace('\n', " ")
}

/// Restores the default SIGPIPE action (Rust ignores it), so that `saelab … | head`
/// ends quietly when the reader goes away instead of panicking on the failed write.
fn restore_sigpipe() {
    #[cfg(unix)]
    // SAFETY: called first in `main`, before any other thread exists; SIG_DFL is a
    // valid action for SIGPIPE.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}
