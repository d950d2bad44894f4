//! The pieces of the feature page: a context row with per-token shading, the
//! histogram as SVG bars, the logit tables, the neighbour lists. Every number a test
//! or a reader may want exactly is in a `data-*` attribute, written with Rust's
//! shortest round-trip formatting of the stored value.

use std::fmt::Write;

use saelab_features::record::{CoNeighbour, Histogram, Neighbour, Sample, TokenValue};

use super::{esc, num, Links};
use crate::site::{display_token, Site};

/// Tokens shown before a sample's own position.
pub const BEFORE: usize = 24;
/// Tokens shown after it.
pub const AFTER: usize = 8;

/// The shading of a value: its fraction of the latent's max, in `[0, 1]`.
pub fn shade(value: f32, max: f32) -> f32 {
    if max > 0.0 && value > 0.0 {
        (value / max).clamp(0.0, 1.0)
    } else {
        0.0
    }
}

/// One token as a span: its text, its exact value in `data-act` and in the tooltip,
/// shaded by `value / max`; `qualifying` marks the sample's own position.
pub fn token_span(out: &mut String, site: &Site, id: u32, value: f32, max: f32, qualifying: bool) {
    let text = if site.is_bos(id) {
        "⟨bos⟩".to_string()
    } else {
        display_token(site.token_text(id))
    };
    let a = shade(value, max);
    let class = match (qualifying, site.is_bos(id)) {
        (true, _) => "t q",
        (false, true) => "t bos",
        _ => "t",
    };
    let _ = write!(out, "<span class=\"{class}\" data-act=\"{value}\"");
    if a > 0.0 {
        let _ = write!(out, " style=\"--a:{a:.3}\"");
    }
    let _ = write!(out, " title=\"{value} · token {id}\">{}</span>", esc(&text));
}

/// A row of a sample: its value, then the tokens around its position.
pub fn context_row(out: &mut String, site: &Site, s: &Sample, max: f32) {
    let tokens = site.context(s.seq);
    let pos = s.pos as usize;
    let lo = pos.saturating_sub(BEFORE);
    let hi = (pos + AFTER + 1).min(tokens.len());
    let _ = write!(
        out,
        "<div class=\"ctx\" data-seq=\"{}\" data-pos=\"{}\" data-value=\"{}\">\
         <span class=\"v\">{}</span><span class=\"toks\">",
        s.seq,
        s.pos,
        s.value,
        num(s.value as f64)
    );
    if lo > 0 {
        out.push_str("<span class=\"more\">…</span>");
    }
    for (p, &id) in tokens.iter().enumerate().take(hi).skip(lo) {
        let value = s
            .acts
            .binary_search_by_key(&(p as u32), |&(q, _)| q)
            .map_or(0.0, |k| s.acts[k].1);
        token_span(out, site, id, value, max, p == pos);
    }
    if hi < tokens.len() {
        out.push_str("<span class=\"more\">…</span>");
    }
    let _ = write!(
        out,
        "</span><span class=\"loc\">ctx {} · pos {}</span></div>",
        s.seq, s.pos
    );
}

/// The histogram of non-zero values: one `<rect class="bar">` per bin with its count
/// in `data-count` and its midpoint in `data-mid`.
pub fn histogram_svg(out: &mut String, id: &str, h: &Histogram, what: &str) {
    if h.heights.is_empty() {
        let _ = write!(out, "<p class=\"muted\" id=\"{id}\">No {what}.</p>");
        return;
    }
    let (w, ht, pad) = (600.0f64, 150.0f64, 18.0f64);
    let n = h.heights.len() as f64;
    let bw = w / n;
    let top = *h.heights.iter().max().unwrap_or(&1) as f64;
    let _ = write!(
        out,
        "<svg class=\"hist\" id=\"{id}\" viewBox=\"0 0 {w} {}\" role=\"img\" \
         aria-label=\"{what}\" data-bins=\"{}\">",
        ht + pad,
        h.heights.len()
    );
    for (k, (&c, &mid)) in h.heights.iter().zip(&h.midpoints).enumerate() {
        let bh = if top > 0.0 { c as f64 / top * ht } else { 0.0 };
        let bh = if c > 0 { bh.max(1.0) } else { 0.0 };
        let _ = write!(
            out,
            "<rect class=\"bar\" x=\"{:.2}\" y=\"{:.2}\" width=\"{:.2}\" height=\"{bh:.2}\" \
             data-count=\"{c}\" data-mid=\"{mid}\"><title>{} · {c}</title></rect>",
            k as f64 * bw + 0.5,
            ht - bh,
            (bw - 1.0).max(0.5),
            num(mid as f64)
        );
    }
    let _ = write!(
        out,
        "<line class=\"axis\" x1=\"0\" y1=\"{ht}\" x2=\"{w}\" y2=\"{ht}\"/>\
         <text x=\"0\" y=\"{}\" class=\"lbl\">{}</text>\
         <text x=\"{w}\" y=\"{}\" class=\"lbl end\">{}</text></svg>",
        ht + 14.0,
        num(h.lo),
        ht + 14.0,
        num(h.hi)
    );
}

/// A logit table: one row per token with `data-token-id` and `data-value`.
pub fn logit_table(out: &mut String, site: &Site, id: &str, title: &str, rows: &[TokenValue]) {
    let _ = write!(
        out,
        "<table class=\"logits\" id=\"{id}\"><thead><tr><th colspan=\"2\">{title}</th></tr>\
         </thead><tbody>"
    );
    for t in rows {
        let _ = write!(
            out,
            "<tr data-token-id=\"{}\" data-value=\"{}\"><td><span class=\"chip\">{}</span>\
             </td><td class=\"num\">{:+.3}</td></tr>",
            t.token,
            t.value,
            esc(&display_token(site.token_text(t.token))),
            t.value
        );
    }
    out.push_str("</tbody></table>");
}

/// The decoder-cosine neighbours, linked.
pub fn decoder_list(out: &mut String, links: Links, rows: &[Neighbour]) {
    out.push_str(
        "<table class=\"nb\" id=\"decoder-neighbours\"><thead><tr><th>latent</th>\
         <th class=\"num\">cosine</th></tr></thead><tbody>",
    );
    for n in rows {
        let _ = write!(
            out,
            "<tr data-latent=\"{}\" data-cosine=\"{}\"><td><a href=\"{}\">#{}</a></td>\
             <td class=\"num\">{}</td></tr>",
            n.latent,
            n.cosine,
            links.latent(n.latent),
            n.latent,
            num(n.cosine as f64)
        );
    }
    out.push_str("</tbody></table>");
}

/// The co-occurrence neighbours, linked.
pub fn cooccurrence_list(out: &mut String, links: Links, rows: &[CoNeighbour]) {
    out.push_str(
        "<table class=\"nb\" id=\"co-neighbours\"><thead><tr><th>latent</th>\
         <th class=\"num\">Jaccard</th><th class=\"num\">together</th></tr></thead><tbody>",
    );
    if rows.is_empty() {
        out.push_str("<tr><td colspan=\"3\" class=\"muted\">none</td></tr>");
    }
    for n in rows {
        let _ = write!(
            out,
            "<tr data-latent=\"{}\" data-jaccard=\"{}\"><td><a href=\"{}\">#{}</a></td>\
             <td class=\"num\">{}</td><td class=\"num\">{}</td></tr>",
            n.latent,
            n.jaccard,
            links.latent(n.latent),
            n.latent,
            num(n.jaccard),
            n.both
        );
    }
    out.push_str("</tbody></table>");
}
