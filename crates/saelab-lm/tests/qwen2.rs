//! Tests of the Qwen2 family and its tokenizer on Qwen2.5-Coder-0.5B-Instruct, the
//! opt-in model of `scripts/setup.sh --model qwen2.5-0.5b` (the checks, shared with
//! `qwen2_1_5b.rs`, and their references: `common/qwen2.rs`).
//!
//! The model is not part of the default setup, so these tests skip with a message when
//! its GGUF is absent, under CI too; the corpus they read is the default one
//! (`saelab_testkit::real_data`, whose CI rule applies once the model is there).

mod common;
use common::qwen2::*;

const SIZE: Size = Size {
    name: "qwen2.5-0.5b",
    n_layers: 24,
    d_model: 896,
};

qwen2_tests!(SIZE);
