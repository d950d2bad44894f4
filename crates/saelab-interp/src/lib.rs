//! `saelab-interp`: automatic interpretation of SAE latents from a features folder
//! (`saelab features`), as delphi does it and with its defects fixed.
//!
//! - [`sample`]: a latent's examples, 32-token windows: train and test from equal-count
//!   quantiles (disjoint), non-activating windows, a minimum-examples rule;
//! - [`explain`]: the no-LLM token-set explainer and the LLM explainer's prompt and
//!   parse; [`render`]: excerpts as text, with `<<…>>` marks;
//! - [`score`]: detection and fuzzing (LLM-judged), surprisal (a base model) and
//!   embedding (a sentence encoder), per item in delphi's score-file fields;
//! - [`metrics`]: balanced accuracy, precision, recall, F1, AUROC, the constant-answer
//!   baseline, the paired sign-flip test of explanations against a shuffled control;
//! - [`output`]: delphi's `explanations/` and `scores/{scorer}/` files.
//!
//! Every LLM call goes through `saelab_llm::ChatClient`, so a local model and an
//! OpenAI-compatible endpoint are interchangeable.

#![warn(missing_docs)]

pub mod explain;
pub mod metrics;
pub mod output;
pub mod render;
pub mod sample;
pub mod score;
