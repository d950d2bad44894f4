//! Tests of the Qwen2 family and its tokenizer on Qwen2.5-Coder-1.5B-Instruct, the
//! opt-in model of `scripts/setup.sh --model qwen2.5-1.5b` and the project's
//! local explainer model (the checks, shared with
//! `qwen2.rs`, and their references: `common/qwen2.rs`).
//!
//! The model is not part of the default setup, so these tests skip with a message when
//! its GGUF is absent, under CI too; the corpus they read is the default one
//! (`saelab_testkit::real_data`, whose CI rule applies once the model is there).

mod common;
use common::qwen2::*;

const SIZE: Size = Size {
    name: "qwen2.5-1.5b",
    n_layers: 28,
    d_model: 1536,
};

qwen2_tests!(SIZE);
