//! `saelab-web`: the features dashboard — a features folder (`saelab features`) served
//! as pages and a JSON API, a live prompt explorer through the model and the SAE, and
//! the same pages exported as a static folder; with the model, steering: a prompt
//! continued with and without edits of the SAE's latents.
//!
//! - [`site`]: the folder opened for the pages (per-latent summaries in memory, full
//!   records read on demand, `explanations.json` read once); [`listing`]: the index as
//!   a query (sort, token search, pages), shared by the HTML index and `/api/latents`;
//!   [`explanations`]: the search over the explanations' text, shared by
//!   `/explanations` and `/api/explanations`;
//! - [`html`]: server-side rendering of every page as plain HTML, with exact values in
//!   `data-*` attributes; [`assets`]: the stylesheet and the small script, embedded;
//! - [`explorer`]: text → tokens → model forward to the hook → `Sae::encode`, bounded;
//!   [`steer`]: `/api/steer`'s request, checked whole, then
//!   `saelab_jobs::steer::Steerer::steer` on the explorer's model and SAE;
//! - [`server`]: the axum routes, their limits and the path check (loopback by
//!   default); [`paths`]: that check; [`api`]: the JSON shapes; [`error`]: how a failed
//!   request is answered;
//! - [`export`]: `saelab export-html`, written atomically;
//! - [`llm_server`]: `saelab serve --llm`, a local instruct model behind an
//!   OpenAI-compatible chat-completion API (saelab-llm's `LocalClient`, requests
//!   batched by one worker).
//!
//! It depends on the libraries (core, lm, llm, eval, features, steer, jobs), never on the CLI, which is
//! a thin skin over [`server::serve`] and [`export::export_html`].

#![warn(missing_docs)]

pub mod api;
pub mod assets;
pub mod error;
pub mod explanations;
pub mod explorer;
pub mod export;
pub mod html;
pub mod listing;
pub mod llm_server;
pub mod paths;
pub mod server;
pub mod site;
pub mod steer;

pub use error::WebError;
pub use explorer::Explorer;
pub use export::export_html;
pub use server::{AppState, ServeOptions};
pub use site::Site;
