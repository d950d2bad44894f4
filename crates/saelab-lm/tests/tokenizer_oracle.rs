//! saelab's tokenizer against an independent implementation: llama.cpp's own, run
//! through node-llama-cpp on the SmolLM2 GGUF's vocabulary
//! (`tests/oracle/llama_cpp_tokenize.mjs`, installed by `scripts/setup.sh --oracle`).
//! Every document of the real corpus must get exactly the same token ids. saelab builds
//! its pipeline (digits split one by one, byte-level BPE) from the GGUF metadata itself;
//! llama.cpp applies its own pre-tokenizer for the file's `smollm` type, so a wrong
//! assumption in either shows up here. Skipped without the real data or the oracle,
//! failing instead under CI.

use saelab_testkit::real_data;

mod common;
use common::oracle::assert_corpus_matches_llama_cpp;

#[test]
fn every_corpus_document_tokenizes_as_llama_cpp_does() {
    let Some(data) = real_data() else { return };
    assert_corpus_matches_llama_cpp(&data.model, &data.corpus, 3_000_000);
}
