//! The feature page's steering panel: a form whose script posts to `/api/steer` and
//! shows the unsteered and steered continuations side by side, with the measures when
//! asked. Only a server with the model and the SAE has it; a server without them says
//! how to start one, and the static export has none.

use std::fmt::Write;

use saelab_steer::Mode;

use super::{esc, num, Links};
use crate::explorer::{MAX_PROMPT_BYTES, MAX_PROMPT_TOKENS};
use crate::steer::MAX_NEW_TOKENS;

/// Appends the panel for latent `latent` (largest value `max` in the features pass) to
/// `out`: the form when `links` has the steering endpoint, a one-line note on a server
/// without it, nothing in an export.
pub fn panel(out: &mut String, links: Links, latent: u32, max: f32) {
    let Some(endpoint) = links.steer() else {
        if let Links::Server { explorer: false } = links {
            out.push_str(
                "<section class=\"card\" id=\"steer\"><h2>Steer with this latent</h2>\
                 <p class=\"note\">Steering needs the model and the SAE: start saelab serve \
                 with --sae RUN --model M.</p></section>",
            );
        }
        return;
    };
    let _ = write!(
        out,
        "<section class=\"card\" id=\"steer\"><h2>Steer with this latent</h2><p class=\"note\">\
         The prompt is continued twice from the same seed, without and with the edit of \
         latent #{latent} at the SAE's hook. A strength of <code>4x</code> is four times the \
         latent's max ({}); <code>raw:30</code> is the value itself; <code>scale</code> takes \
         a plain factor, <code>ablate</code> none.</p>\
         <form id=\"steer-form\" class=\"prompt steer\" data-latent=\"{latent}\" \
         data-endpoint=\"{}\">\
         <label for=\"steer-prompt\">Prompt <span class=\"muted\">(at most {MAX_PROMPT_TOKENS} \
         tokens; BOS is added in front)</span></label>\
         <textarea id=\"steer-prompt\" name=\"prompt\" maxlength=\"{MAX_PROMPT_BYTES}\" \
         rows=\"2\" placeholder=\"The start of a text\"></textarea><div class=\"row\">\
         <label for=\"steer-mode\">Mode</label><select id=\"steer-mode\" name=\"mode\">",
        num(max as f64),
        esc(&endpoint),
    );
    for m in Mode::ALL {
        let _ = write!(out, "<option value=\"{0}\">{0}</option>", m.name());
    }
    let _ = write!(
        out,
        "</select><label for=\"steer-strength\">Strength</label><input id=\"steer-strength\" \
         name=\"strength\" type=\"text\" value=\"4x\" size=\"8\" spellcheck=\"false\">\
         <label for=\"steer-positions\">Positions</label><select id=\"steer-positions\" \
         name=\"positions\"><option value=\"all\">all</option><option value=\"prompt\">prompt\
         </option><option value=\"last\">last</option></select>\
         <label for=\"steer-tokens\">Tokens</label><input id=\"steer-tokens\" name=\"tokens\" \
         type=\"number\" min=\"1\" max=\"{MAX_NEW_TOKENS}\" value=\"32\">\
         <label for=\"steer-seed\">Seed</label><input id=\"steer-seed\" name=\"seed\" \
         type=\"number\" min=\"0\" value=\"16\">\
         <label class=\"check\"><input id=\"steer-measure\" name=\"measure\" \
         type=\"checkbox\"> measure</label>\
         <button id=\"steer-run\" type=\"submit\">Steer</button><span id=\"steer-status\" \
         class=\"muted\"></span></div></form>\
         <div id=\"steer-out\" data-state=\"idle\" hidden><div class=\"pair\">\
         <div><h3>Unsteered</h3><div id=\"steer-unsteered\" class=\"cont\"></div></div>\
         <div><h3>Steered</h3><div id=\"steer-steered\" class=\"cont\"></div></div></div>\
         <p id=\"steer-edits\" class=\"note\"></p><div id=\"steer-measures\"></div></div>\
         </section>"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_panel_is_only_where_the_model_is() {
        let mut served = String::new();
        panel(&mut served, Links::Server { explorer: true }, 7, 2.5);
        assert!(served.contains("id=\"steer-form\"") && served.contains("data-latent=\"7\""));
        assert!(served.contains("data-endpoint=\"/api/steer\""));
        for m in Mode::ALL {
            assert!(served.contains(&format!("<option value=\"{}\"", m.name())));
        }
        let mut bare = String::new();
        panel(&mut bare, Links::Server { explorer: false }, 7, 2.5);
        assert!(bare.contains("--sae RUN --model M") && !bare.contains("<form"));
        let mut exported = String::new();
        panel(&mut exported, Links::Static, 7, 2.5);
        assert!(exported.is_empty());
    }
}
