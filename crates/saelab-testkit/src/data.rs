//! The real data the tests read, resolved in one place.
//!
//! - the SmolLM2 model, the sentence encoder and the English corpus fetched by
//!   `scripts/setup.sh` into `$SAELAB_DATA` (default `<workspace>/data`, the same rule
//!   as the scripts): `models/SmolLM2-135M-Instruct.Q4_1.gguf`,
//!   `models/all-MiniLM-L6-v2/` and `corpus/{sotu,brown,moby}/*.txt`;
//! - the SAE fixtures written by the Python libraries, vendored in
//!   `crates/saelab-core/tests/fixtures` (`$SAELAB_FIXTURES` overrides);
//! - the tokenizer oracle (llama.cpp through `node-llama-cpp`), installed by
//!   `scripts/setup.sh` into `$SAELAB_TOKENIZER_ORACLE` (default
//!   `<workspace>/target/tokenizer-oracle`).
//!
//! Without the data a test skips with a message, unless the data is *required*: `CI` or
//! `SAELAB_REQUIRE_DATA` is set (to anything but empty, `0` or `false`). Then the test
//! panics naming what is missing, so a CI run cannot go green without the real-model
//! tests.

use std::path::{Path, PathBuf};

/// File name of the real model under `$SAELAB_DATA/models/`.
pub const SMOLLM2_GGUF: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";

/// Folder name of the sentence encoder (sentence-transformers/all-MiniLM-L6-v2) under
/// `$SAELAB_DATA/models/`.
pub const EMBEDDER_DIR: &str = "all-MiniLM-L6-v2";

/// The workspace root (two levels above this crate).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// `$SAELAB_DATA`, or `<workspace>/data` when it is unset or empty.
pub fn data_dir() -> PathBuf {
    env_path("SAELAB_DATA").unwrap_or_else(|| workspace_root().join("data"))
}

/// Whether missing data fails the tests instead of skipping them: `CI` or
/// `SAELAB_REQUIRE_DATA` is set to anything but empty, `0` or `false`.
pub fn data_required() -> bool {
    ["CI", "SAELAB_REQUIRE_DATA"]
        .iter()
        .any(|k| std::env::var(k).is_ok_and(|v| !matches!(v.trim(), "" | "0" | "false" | "FALSE")))
}

/// The real model, sentence encoder and corpus.
#[derive(Clone, Debug)]
pub struct RealData {
    /// The SmolLM2-135M-Instruct GGUF file.
    pub model: PathBuf,
    /// The sentence-transformers folder of all-MiniLM-L6-v2 (`config.json`,
    /// `model.safetensors`, `tokenizer.json`, `modules.json`, `1_Pooling/`, …), the
    /// embedding scorer's encoder.
    pub embedder: PathBuf,
    /// The corpus folder (`sotu/`, `brown/`, `moby/`, one document per `.txt` file).
    pub corpus: PathBuf,
}

impl RealData {
    /// One of the corpus's collections: `"sotu"`, `"brown"` or `"moby"`.
    pub fn collection(&self, name: &str) -> PathBuf {
        self.corpus.join(name)
    }
}

/// The real model, sentence encoder and corpus, or `None` (after a `skipping:` message
/// on stderr) when they are absent. Panics instead when the data is required
/// ([`data_required`]). The encoder counts as present when its folder holds
/// `model.safetensors` (setup renames the folder into place only once it is complete).
pub fn real_data() -> Option<RealData> {
    let dir = data_dir();
    let data = RealData {
        model: dir.join("models").join(SMOLLM2_GGUF),
        embedder: dir.join("models").join(EMBEDDER_DIR),
        corpus: dir.join("corpus"),
    };
    let embedder_weights = data.embedder.join("model.safetensors");
    let missing = if !data.model.is_file() {
        &data.model
    } else if !embedder_weights.is_file() {
        &embedder_weights
    } else if !data.corpus.is_dir() {
        &data.corpus
    } else {
        return Some(data);
    };
    absent(&format!(
        "{} is absent (run scripts/setup.sh; SAELAB_DATA={})",
        missing.display(),
        dir.display()
    ));
    None
}

/// The opt-in models `scripts/setup.sh --model NAME` fetches, as (`NAME`, file name
/// under `$SAELAB_DATA/models/`).
pub const OPT_IN_MODELS: &[(&str, &str)] = &[
    ("qwen2.5-0.5b", "Qwen2.5-Coder-0.5B-Instruct.Q4_K_M.gguf"),
    ("qwen2.5-1.5b", "Qwen2.5-Coder-1.5B-Instruct.Q4_K_M.gguf"),
    ("gemma3-270m", "gemma-3-270m.Q4_K_M.gguf"),
];

/// The GGUF of an opt-in model ([`OPT_IN_MODELS`]), or `None` (after a `skipping:`
/// message) when it was not set up. Never required, CI included: these models are not
/// part of the default setup.
pub fn opt_in_model(name: &str) -> Option<PathBuf> {
    let (_, file) = OPT_IN_MODELS
        .iter()
        .find(|(n, _)| *n == name)
        .unwrap_or_else(|| panic!("{name} is not an opt-in model of scripts/setup.sh"));
    let p = data_dir().join("models").join(file);
    if p.is_file() {
        return Some(p);
    }
    eprintln!(
        "skipping: {} is absent (opt-in: scripts/setup.sh --model {name})",
        p.display()
    );
    None
}

/// The vendored SAE fixtures (`$SAELAB_FIXTURES`, default
/// `crates/saelab-core/tests/fixtures`). They are part of the repository, so they are
/// always required: panics if their `README.md` is missing.
pub fn fixtures_dir() -> PathBuf {
    let p = env_path("SAELAB_FIXTURES")
        .unwrap_or_else(|| workspace_root().join("crates/saelab-core/tests/fixtures"));
    assert!(
        p.join("README.md").is_file(),
        "interop fixtures missing at {} (set SAELAB_FIXTURES)",
        p.display()
    );
    p
}

/// The folder holding the tokenizer oracle's `node_modules` (see the module doc), or
/// `None` (after a `skipping:` message) when `node` or the package is missing. Panics
/// instead when the data is required.
pub fn tokenizer_oracle() -> Option<PathBuf> {
    let dir = env_path("SAELAB_TOKENIZER_ORACLE")
        .unwrap_or_else(|| workspace_root().join("target/tokenizer-oracle"));
    let package = dir.join("node_modules/node-llama-cpp/package.json");
    let node = std::process::Command::new("node")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if node && package.is_file() {
        return Some(dir);
    }
    absent(&format!(
        "the tokenizer oracle is absent ({}; run scripts/setup.sh)",
        if node {
            format!("no {}", package.display())
        } else {
            "no `node` on PATH".to_string()
        }
    ));
    None
}

/// Skips with a message, or panics when the data is required.
fn absent(what: &str) {
    if data_required() {
        panic!("real test data required (CI or SAELAB_REQUIRE_DATA is set), but {what}");
    }
    eprintln!("skipping: {what}; set SAELAB_REQUIRE_DATA=1 to fail instead");
}

fn env_path(key: &str) -> Option<PathBuf> {
    std::env::var_os(key)
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
}
