//! The feature page of one latent: its numbers, its explanations (`saelab
//! autointerp`'s, with their scores), the histogram, the logit tables, the top
//! contexts, the interval groups, its neighbours, and (served with the model) the
//! steering panel.

use std::fmt::Write;

use saelab_features::LatentRecord;

use super::parts::{context_row, cooccurrence_list, decoder_list, histogram_svg, logit_table};
use super::{explanations, frame, num, percent, steer, Links};
use crate::site::Site;

/// The whole page of `r`.
pub fn page(site: &Site, links: Links, r: &LatentRecord) -> String {
    let mut b = String::with_capacity(64 * 1024);
    let i = r.latent;
    let _ = write!(
        b,
        "<div class=\"head\"><h1>Latent <span class=\"id\">#{i}</span></h1><div class=\"pager\">"
    );
    if i > 0 {
        let _ = write!(
            b,
            "<a href=\"{}\" rel=\"prev\">← #{}</a>",
            links.latent(i - 1),
            i - 1
        );
    }
    if (i as usize) + 1 < site.n_latents() {
        let _ = write!(
            b,
            "<a href=\"{}\" rel=\"next\">#{} →</a>",
            links.latent(i + 1),
            i + 1
        );
    }
    if let Some(p) = links.prompt() {
        let _ = write!(b, "<a href=\"{p}?latent={i}\">Try it on a prompt</a>");
    }
    if links.steer().is_some() {
        b.push_str("<a href=\"#steer\">Steer with it</a>");
    }
    b.push_str("</div></div>");

    let _ = write!(
        b,
        "<dl class=\"stats\" id=\"stats\" data-count=\"{}\" data-density=\"{}\" data-max=\"{}\" \
         data-mean=\"{}\">\
         <div><dt>density</dt><dd>{}</dd></div><div><dt>active positions</dt><dd>{}</dd></div>\
         <div><dt>max</dt><dd>{}</dd></div><div><dt>mean (active)</dt><dd>{}</dd></div>\
         <div><dt>min (active)</dt><dd>{}</dd></div><div><dt>decoder norm</dt><dd>{}</dd></div>\
         </dl>",
        r.count,
        r.density,
        r.max,
        r.mean,
        percent(r.density),
        r.count,
        num(r.max as f64),
        num(r.mean),
        num(r.min as f64),
        num(r.decoder_norm as f64),
    );
    explanations::section(&mut b, site.explanations_of(i));

    b.push_str(
        "<div class=\"grid\"><section class=\"card\"><h2>Activation histogram</h2>\
                <p class=\"note\">Non-zero values in 50 equal bins.</p>",
    );
    histogram_svg(
        &mut b,
        "histogram",
        &r.histogram,
        "activations: the latent never fired",
    );
    let folded = site.features().manifest().settings.tables.final_norm_folded;
    let _ = write!(
        b,
        "</section><section class=\"card\"><h2>Logit effects</h2><p class=\"note\">Decoder \
         row through the unembedding ({}).</p><div class=\"pair\">",
        if folded {
            "final norm gain folded in"
        } else {
            "final norm gain not folded in"
        }
    );
    logit_table(&mut b, site, "logits-bottom", "Negative", &r.logits.bottom);
    logit_table(&mut b, site, "logits-top", "Positive", &r.logits.top);
    b.push_str("</div></section></div>");

    let _ = write!(
        b,
        "<section class=\"card\"><h2>Top activations</h2><p class=\"note\">The {} largest \
         values, one per position; the marked token is where the value was read, shading \
         is value / max ({}).</p><div class=\"ctxs\" id=\"top\">",
        r.top.len(),
        num(r.max as f64)
    );
    if r.top.is_empty() {
        b.push_str("<p class=\"muted\">The latent never fired on these tokens.</p>");
    }
    for s in &r.top {
        context_row(&mut b, site, s, r.max);
    }
    b.push_str("</div></section>");

    if r.intervals.iter().any(|g| !g.samples.is_empty()) {
        b.push_str(
            "<section class=\"card\"><h2>Activation intervals</h2><p class=\"note\">Equal-width \
             intervals of [0, max], highest first, with samples drawn uniformly from each; \
             “contains” counts every position, inactive ones included.</p><div id=\"intervals\">",
        );
        for (k, g) in r.intervals.iter().enumerate().rev() {
            if g.samples.is_empty() {
                continue;
            }
            let _ = write!(
                b,
                "<div class=\"group\" data-interval=\"{k}\"><h3>{} – {} <span class=\"muted\">\
                 contains {} ({} positions)</span></h3><div class=\"ctxs\">",
                num(g.lo),
                num(g.hi),
                percent(g.contains),
                g.positions_in
            );
            for s in &g.samples {
                context_row(&mut b, site, s, r.max);
            }
            b.push_str("</div></div>");
        }
        b.push_str("</div></section>");
    }

    b.push_str(
        "<div class=\"grid\"><section class=\"card\"><h2>Decoder neighbours</h2>\
                <p class=\"note\">Cosine of decoder rows, over all latents.</p>",
    );
    decoder_list(&mut b, links, &r.decoder_neighbours);
    b.push_str(
        "</section><section class=\"card\"><h2>Co-occurring latents</h2>\
                <p class=\"note\">Jaccard index of active positions, over all latents.</p>",
    );
    cooccurrence_list(&mut b, links, &r.cooccurrence_neighbours);
    b.push_str("</section></div>");
    steer::panel(&mut b, links, i, r.max);
    frame(site, links, &format!("Latent {i}"), &b)
}
