//! `saelab-eval`: evaluations of SAEs that need a language model.
//!
//! - [`inmodel`]: next-token CE with the hook clean, replaced by the SAE output, zeroed
//!   and mean-ablated; CE loss score, ΔCE, KL(p_clean ‖ p_sae) and the reconstruction
//!   metrics on the same tokens ([`evaluate_in_model`], [`InModelEvalSet`] for a fixed
//!   set evaluated many times, e.g. during training);
//! - [`splice`]: the patches behind it, and error-term mode ([`splice::error_term_patch`]):
//!   the model output preserved exactly while the SAE error is exposed at the hook;
//! - [`contexts`]: held-out evaluation contexts from a text corpus;
//! - [`report`]: comparing trained SAEs (run directories) in one Markdown report with
//!   PNG / SVG plots.

#![warn(missing_docs)]

pub mod contexts;
pub mod inmodel;
pub mod report;
pub mod splice;

pub use inmodel::{
    evaluate_in_model, evaluate_in_model_with, InModelEvalSet, InModelMetrics, InModelOptions,
    Progress, Timing,
};
