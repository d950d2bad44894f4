//! What the `saelab` binary's test files share (each includes it with `mod common;`;
//! the general helpers are in `saelab_testkit`).

// Each test file is its own crate and uses only some of these.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Output;

use saelab_core::format::save_sae;
use saelab_core::{ArchConfig, ParamSet, Sae, SaeConfig, Tensor};
use saelab_testkit::cli::{assert_one_line_error, p, stderr, Bin};
use saelab_testkit::tied_random_weights;

/// The binary under test.
pub const SAELAB: Bin = Bin::new(env!("CARGO_BIN_EXE_saelab"));

/// Runs `saelab args…` to the end.
pub fn saelab(args: &[&str]) -> Output {
    SAELAB.run(args)
}

/// Runs `saelab args…` and asserts that it succeeded (showing its stderr otherwise).
#[track_caller]
pub fn saelab_ok(args: &[&str]) -> Output {
    let o = saelab(args);
    assert!(o.status.success(), "{}", stderr(&o));
    o
}

/// Runs `saelab args…` and asserts that it failed in one line holding every needle
/// (see [`assert_one_line_error`]).
#[track_caller]
pub fn saelab_fails(args: &[&str], needles: &[&str]) -> Output {
    let o = saelab(args);
    assert_one_line_error(&o, needles);
    o
}

/// `saelab synth --out out`: `rows` training rows and `heldout` held-out rows of width
/// `d`, drawn from `features` true features with 3 active per row on average
/// (`out/train.npy`, `out/heldout.npy`, `out/dictionary.npy`).
pub fn synth(out: &Path, rows: usize, heldout: usize, d: usize, features: usize) {
    let [rows, heldout, d, features] = [rows, heldout, d, features].map(|n| n.to_string());
    saelab_ok(&[
        "synth",
        "--out",
        p(out),
        "--rows",
        &rows,
        "--heldout-rows",
        &heldout,
        "--d",
        &d,
        "--features",
        &features,
        "--avg-active",
        "3",
    ]);
}

/// `saelab train` of a TopK SAE (k 4, 64 latents) on `acts` for 50 steps of 256 rows
/// into `out`, with a checkpoint every 5 steps.
pub fn train_args<'a>(acts: &'a str, out: &'a str) -> Vec<&'a str> {
    vec![
        "train",
        "--acts",
        acts,
        "--arch",
        "topk",
        "--k",
        "4",
        "--d-sae",
        "64",
        "--tokens",
        "12800",
        "--batch-size",
        "256",
        "--lr",
        "3e-3",
        "--out",
        out,
        "--set",
        "train.checkpoint_every=5",
        "--set",
        "train.dead_after_tokens=1000",
    ]
}

/// The JSON file at `path` (a run's `sae/cfg.json`, a sweep's `sweep.json`, …).
pub fn read_json(path: &Path) -> serde_json::Value {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    serde_json::from_slice(&bytes).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The weights file of the SAE that the run in `run` wrote.
pub fn weights(run: &Path) -> Vec<u8> {
    std::fs::read(run.join("sae/sae_weights.safetensors")).unwrap()
}

/// Sets the value that follows `flag` in `args` (panics if `flag` is not there).
pub fn set_arg<'a>(args: &mut [&'a str], flag: &str, value: &'a str) {
    let i = args
        .iter()
        .position(|a| *a == flag)
        .unwrap_or_else(|| panic!("no {flag} in {args:?}"));
    args[i + 1] = value;
}

/// Writes `dir/name`: an SAE of `arch` from `d` to `n` latents with the given weights
/// and zero biases, its metadata naming `hook`.
fn write_sae(
    dir: &Path,
    name: &str,
    arch: ArchConfig,
    (d, n): (usize, usize),
    hook: Option<&str>,
    [w_enc, w_dec]: [Vec<f32>; 2],
) -> PathBuf {
    let mut cfg = SaeConfig::new(arch, d, n);
    cfg.metadata.hook_name = hook.map(String::from);
    let mut ps = ParamSet::new();
    ps.insert("W_enc", Tensor::new(&[d, n], w_enc).unwrap());
    ps.insert("b_enc", Tensor::zeros(&[n]));
    ps.insert("W_dec", Tensor::new(&[n, d], w_dec).unwrap());
    ps.insert("b_dec", Tensor::zeros(&[d]));
    let out = dir.join(name);
    save_sae(&Sae::new(cfg, ps).unwrap(), &out, None).unwrap();
    out
}

/// Writes `dir/zero-sae`: a TopK SAE (k 4, 16 latents) for SmolLM2's residual stream
/// (d = 576) at `hook`, all weights zero — enough for the model commands to run.
pub fn zero_sae(dir: &Path, hook: &str) -> PathBuf {
    let (d, n) = (576, 16);
    let arch = ArchConfig::default_for("topk", 4).unwrap();
    let zeros = [vec![0.0; d * n], vec![0.0; n * d]];
    write_sae(dir, "zero-sae", arch, (d, n), Some(hook), zeros)
}

/// Writes `dir/name`: a ReLU SAE for SmolLM2's residual stream (d = 576) reconstructing
/// every activation exactly (`saelab_testkit::identity_relu_weights`), its metadata
/// naming `hook`.
pub fn identity_sae(dir: &Path, name: &str, hook: Option<&str>) -> PathBuf {
    let d = 576;
    let arch = ArchConfig::default_for("relu", 0).unwrap();
    let (w_enc, w_dec) = saelab_testkit::identity_relu_weights(d);
    write_sae(dir, name, arch, (d, 2 * d), hook, [w_enc, w_dec])
}

/// The server process, killed when dropped; its stderr lines collected.
pub struct Server {
    child: std::process::Child,
    /// `host:port`.
    pub addr: String,
    /// Its stderr, line by line.
    pub log: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `saelab -v serve --llm MODEL --port 0` and waits for its address.
pub fn start_llm_server(model: &std::path::Path) -> Server {
    use std::io::BufRead;
    let mut child = SAELAB
        .cmd(&["-v", "serve", "--llm", p(model), "--port", "0"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start saelab serve --llm");
    let mut out = std::io::BufReader::new(child.stdout.take().unwrap());
    let log: std::sync::Arc<std::sync::Mutex<Vec<String>>> = Default::default();
    let err = child.stderr.take().unwrap();
    let l = log.clone();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(err).lines().map_while(Result::ok) {
            l.lock().unwrap().push(line);
        }
    });
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    let start = line
        .find("http://")
        .unwrap_or_else(|| panic!("no address in {line:?}"));
    let addr = line[start + 7..].split('/').next().unwrap().to_string();
    assert!(line.contains("SmolLM2-135M-Instruct.Q4_1.gguf"), "{line}");
    Server { child, addr, log }
}

pub fn random_sae(dir: &Path, d: usize, n: usize, hook: &str) {
    let (we, wd) = tied_random_weights(d, n, 3, 1.0);
    let mut cfg = SaeConfig::new(ArchConfig::default_for("topk", 8).unwrap(), d, n);
    cfg.metadata.hook_name = Some(hook.into());
    let mut ps = ParamSet::new();
    ps.insert("W_enc", Tensor::new(&[d, n], we).unwrap());
    ps.insert("b_enc", Tensor::zeros(&[n]));
    ps.insert("W_dec", Tensor::new(&[n, d], wd).unwrap());
    ps.insert("b_dec", Tensor::zeros(&[d]));
    save_sae(&Sae::new(cfg, ps).unwrap(), dir, None).unwrap();
}

/// Copies the first `n` documents (by file name) of the corpus collection `name`
/// whose names start with `prefix` into `to/00.txt`, `to/01.txt`, … (document 19 of
/// a folder is held out).
pub fn copy_collection(
    data: &saelab_testkit::RealData,
    name: &str,
    prefix: &str,
    n: usize,
    to: &Path,
) {
    std::fs::create_dir_all(to).unwrap();
    let mut files: Vec<PathBuf> = std::fs::read_dir(data.collection(name))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|f| f.file_name().unwrap().to_string_lossy().starts_with(prefix))
        .collect();
    files.sort();
    for (i, f) in files.iter().take(n).enumerate() {
        std::fs::copy(f, to.join(format!("{i:02}.txt"))).unwrap();
    }
}
