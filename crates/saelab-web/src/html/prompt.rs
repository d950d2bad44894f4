//! The prompt explorer's page: a form whose script posts to `/api/prompt` and draws
//! the answer (the tokens shaded by the chosen latent, each token's top latents).

use std::fmt::Write;

use super::{esc, frame, Links};
use crate::explorer::{MAX_PROMPT_BYTES, MAX_PROMPT_TOKENS};
use crate::site::Site;

/// The page, with the form filled with `text` and `latent`.
pub fn page(site: &Site, links: Links, text: &str, latent: Option<u32>) -> String {
    let mut b = String::new();
    let _ = write!(
        b,
        "<div class=\"head\"><h1>Prompt explorer</h1></div>\
         <section class=\"card\"><form id=\"prompt-form\" class=\"prompt\" data-n=\"{n}\" \
         data-links=\"{}\">\
         <label for=\"prompt-text\">Text <span class=\"muted\">(at most {MAX_PROMPT_TOKENS} \
         tokens; BOS is added in front, as in the features pass)</span></label>\
         <textarea id=\"prompt-text\" name=\"text\" maxlength=\"{MAX_PROMPT_BYTES}\" rows=\"3\" \
         placeholder=\"Type a sentence\">{}</textarea><div class=\"row\">\
         <label for=\"prompt-latent\">Latent</label><input id=\"prompt-latent\" name=\"latent\" \
         type=\"number\" min=\"0\" max=\"{}\" value=\"{}\" placeholder=\"none\">\
         <button id=\"prompt-run\" type=\"submit\">Run</button><span id=\"prompt-status\" \
         class=\"muted\"></span></div></form></section>\
         <section class=\"card\" id=\"prompt-out\" data-state=\"idle\"><h2>Tokens</h2>\
         <p class=\"note\">Shaded by the chosen latent's value / its max over the features \
         pass; hover a token for its value, click it for its top latents.</p>\
         <div id=\"prompt-tokens\" class=\"toks big\"></div><h2>Top latents per token</h2>\
         <div id=\"prompt-top\"></div></section>",
        links.latent(0).trim_end_matches("0"),
        esc(text),
        site.n_latents().saturating_sub(1),
        latent.map(|l| l.to_string()).unwrap_or_default(),
        n = site.n_latents(),
    );
    frame(site, links, "Prompt explorer", &b)
}
