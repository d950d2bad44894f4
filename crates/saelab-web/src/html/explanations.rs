//! The explanations of `saelab autointerp` on the pages: the latent page's
//! "Explanations" section (every record of the latent, its text escaped, one table of
//! scores per record, each score beside its shuffled control and baseline), the live
//! search page `/explanations`, the search form of the index, and the data the
//! exported index searches in the browser. Exact values are in `data-*` attributes,
//! as elsewhere; what the eye reads is rounded to three decimals, `—` for a missing
//! value.

use std::fmt::Write;

use saelab_features::explanations::{ExplanationRecord, ExplanationScore};

use super::{esc, frame, num, Links};
use crate::explanations::{SearchResult, MAX_QUERY_BYTES};
use crate::site::Site;

/// What the pages say when a folder or a latent has no explanation.
pub const NONE_YET: &str = "No explanations: run saelab autointerp on this features folder.";

/// A value rounded to three decimals, `—` when there is none.
pub fn opt_num(x: Option<f64>) -> String {
    x.map_or_else(|| "—".into(), num)
}

/// An exact value for a `data-*` attribute (Rust's shortest round trip), empty when
/// there is none.
fn opt_attr(x: Option<f64>) -> String {
    x.map_or_else(String::new, |v| v.to_string())
}

/// How a score compares with its shuffled control: `better` (above it), `worse`,
/// `even`, or `unknown` when either is missing.
pub fn verdict(s: &ExplanationScore) -> &'static str {
    match (s.value, s.shuffled) {
        (Some(v), Some(c)) if v > c => "better",
        (Some(v), Some(c)) if v < c => "worse",
        (Some(_), Some(_)) => "even",
        _ => "unknown",
    }
}

/// `value − shuffled` signed, with ▲ above the control and ▼ below; `—` without both.
fn delta(s: &ExplanationScore) -> String {
    match (s.value, s.shuffled) {
        (Some(v), Some(c)) => {
            let d = v - c;
            let mark = match verdict(s) {
                "better" => " ▲",
                "worse" => " ▼",
                _ => "",
            };
            format!("{}{:.3}{mark}", if d < 0.0 { "−" } else { "+" }, d.abs())
        }
        _ => "—".into(),
    }
}

/// One line of a score, as the search results and the Neuronpedia notes read it:
/// `embedding auroc 0.612 (shuffled 0.480)`.
pub fn score_line(s: &ExplanationScore) -> String {
    format!(
        "{} {} {} (shuffled {})",
        s.scorer,
        s.metric,
        opt_num(s.value),
        opt_num(s.shuffled)
    )
}

/// The table of one record's scores.
fn score_table(out: &mut String, scores: &[ExplanationScore]) {
    if scores.is_empty() {
        out.push_str("<p class=\"muted\">Not scored.</p>");
        return;
    }
    out.push_str(
        "<table class=\"scores\"><thead><tr><th>scorer</th><th>metric</th>\
         <th class=\"num\">value</th><th class=\"num\">shuffled</th>\
         <th class=\"num\">vs shuffled</th><th class=\"num\">baseline</th>\
         <th class=\"num\">failed items</th></tr></thead><tbody>",
    );
    for s in scores {
        let _ = write!(
            out,
            "<tr class=\"{v}\" data-scorer=\"{}\" data-metric=\"{}\" data-value=\"{}\" \
             data-shuffled=\"{}\" data-baseline=\"{}\" data-failed=\"{}\" data-verdict=\"{v}\">\
             <td>{}</td><td>{}</td><td class=\"num value\">{}</td><td class=\"num\">{}</td>\
             <td class=\"num delta\">{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td>\
             </tr>",
            esc(&s.scorer),
            esc(&s.metric),
            opt_attr(s.value),
            opt_attr(s.shuffled),
            s.baseline,
            s.failed,
            esc(&s.scorer),
            esc(&s.metric),
            opt_num(s.value),
            opt_num(s.shuffled),
            delta(s),
            num(s.baseline),
            s.failed,
            v = verdict(s),
        );
    }
    out.push_str("</tbody></table>");
}

/// The latent page's "Explanations" section: every record of the latent, or a line
/// saying there is none.
pub fn section(out: &mut String, records: &[ExplanationRecord]) {
    let _ = write!(
        out,
        "<section class=\"card\" id=\"explanations\" data-count=\"{}\"><h2>Explanations</h2>",
        records.len()
    );
    if records.is_empty() {
        let _ = write!(
            out,
            "<p class=\"muted\" id=\"no-explanations\">{}</p></section>",
            esc(NONE_YET)
        );
        return;
    }
    out.push_str(
        "<p class=\"note\">Written and scored by <code>saelab autointerp</code>. Each score \
         sits beside the same scorer given another latent's explanation (shuffled) and a \
         constant answer (baseline); ▲ marks a value above its shuffled control, ▼ one \
         below.</p>",
    );
    for r in records {
        let _ = write!(
            out,
            "<div class=\"expl\" data-explainer=\"{}\"><div class=\"expl-head\">\
             <span class=\"chip explainer\">{}</span><span class=\"muted src\">from {}</span>\
             </div><p class=\"expl-text\">{}</p>",
            esc(&r.explainer),
            esc(&r.explainer),
            esc(&r.source),
            esc(&r.explanation)
        );
        score_table(out, &r.scores);
        out.push_str("</div>");
    }
    out.push_str("</section>");
}

/// The index's form that searches the explanations: to `/explanations` when served;
/// exported, searched by the embedded script over [`static_block`]'s data.
pub fn search_form(out: &mut String, links: Links, value: &str) {
    let placeholder = "Search explanations, e.g. whale";
    match links.explanations() {
        Some(action) => {
            let _ = write!(
                out,
                "<form class=\"search\" id=\"explain-form\" method=\"get\" action=\"{action}\">\
                 <input type=\"search\" name=\"q\" id=\"explain-search\" maxlength=\"{MAX_QUERY_BYTES}\" \
                 placeholder=\"{placeholder}\" value=\"{}\"><button type=\"submit\" \
                 id=\"explain-run\">Search</button></form>",
                esc(value)
            );
        }
        None => {
            let _ = write!(
                out,
                "<form class=\"search\" id=\"explain-form\" onsubmit=\"return false\">\
                 <input type=\"search\" id=\"explain-search\" maxlength=\"{MAX_QUERY_BYTES}\" \
                 placeholder=\"{placeholder}\"></form>"
            );
        }
    }
}

/// The table of search hits (the live page fills it from a [`SearchResult`], the
/// exported index from its script).
fn hits_head(out: &mut String, hidden: bool) {
    let _ = write!(
        out,
        "<table class=\"index hits\" id=\"explanation-hits\"{}><thead><tr><th>Latent</th>\
         <th>Explainer</th><th>Explanation</th><th>First score</th></tr></thead><tbody>",
        if hidden { " hidden" } else { "" }
    );
}

/// The live search page `/explanations`: the form, the count, the hits linked to
/// their latents.
pub fn server_page(site: &Site, links: Links, r: &SearchResult) -> String {
    let mut b = String::with_capacity(16 * 1024 + r.hits.len() * 512);
    b.push_str("<div class=\"head\"><h1>Explanations</h1>");
    search_form(&mut b, links, &r.query.q);
    b.push_str("</div>");
    let what = if r.query.q.is_empty() {
        "All explanations".to_string()
    } else {
        format!("“{}”", esc(&r.query.q))
    };
    let _ = write!(
        b,
        "<p class=\"note\" id=\"explain-summary\" data-total=\"{}\" data-records=\"{}\">{what}: \
         {} of the folder's {} explanations{}</p>",
        r.total,
        r.records,
        r.total,
        r.records,
        if r.total > r.hits.len() {
            format!(" · the first {} shown", r.hits.len())
        } else {
            String::new()
        }
    );
    if r.records == 0 {
        let _ = write!(
            b,
            "<p class=\"muted\" id=\"no-explanations\">{}</p>",
            esc(NONE_YET)
        );
        return frame(site, links, "Explanations", &b);
    }
    hits_head(&mut b, false);
    for h in &r.hits {
        let _ = write!(
            b,
            "<tr data-latent=\"{}\" data-explainer=\"{}\"><td><a href=\"{}\">#{}</a></td>\
             <td><span class=\"chip\">{}</span></td><td class=\"expl-text\">{}</td>\
             <td class=\"{}\">{}</td></tr>",
            h.latent,
            esc(&h.explainer),
            links.latent(h.latent),
            h.latent,
            esc(&h.explainer),
            esc(&h.explanation),
            h.score.as_ref().map_or("unknown", verdict),
            h.score
                .as_ref()
                .map_or_else(|| "not scored".into(), |s| esc(&score_line(s))),
        );
    }
    if r.hits.is_empty() {
        b.push_str("<tr><td colspan=\"4\" class=\"muted\">No explanation matches.</td></tr>");
    }
    b.push_str("</tbody></table>");
    frame(site, links, "Explanations", &b)
}

/// The exported index's part: the form, the (hidden until searched) table of hits
/// and every explanation as JSON for the script (`latent`, `explainer`, `text`,
/// `score`: the first score's line, `verdict`). `<` is written `\u003c` so that no
/// text can close the `<script>` element.
pub fn static_block(out: &mut String, site: &Site) {
    if site.explanations().is_empty() {
        return;
    }
    let rows: Vec<serde_json::Value> = site
        .explanations()
        .iter()
        .map(|r| {
            let first = r.scores.first();
            serde_json::json!({
                "latent": r.latent,
                "explainer": r.explainer,
                "text": r.explanation,
                "score": first.map_or_else(|| "not scored".into(), score_line),
                "verdict": first.map_or("unknown", verdict),
            })
        })
        .collect();
    let json = serde_json::to_string(&rows)
        .unwrap_or_else(|_| "[]".into())
        .replace('<', "\\u003c");
    let _ = write!(
        out,
        "<section class=\"card\" id=\"explain-box\"><h2>Explanations</h2>\
         <p class=\"note\" id=\"explain-summary\" data-records=\"{n}\">{n} explanations \
         (saelab autointerp) · type to search their text</p>",
        n = rows.len()
    );
    search_form(out, Links::Static, "");
    hits_head(out, true);
    let _ = write!(
        out,
        "</tbody></table><script type=\"application/json\" id=\"explanations-data\">{json}\
         </script></section>"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn score(value: Option<f64>, shuffled: Option<f64>) -> ExplanationScore {
        ExplanationScore {
            scorer: "embedding".into(),
            metric: "auroc".into(),
            value,
            shuffled,
            baseline: 0.5,
            failed: 2,
        }
    }

    fn record(text: &str, scores: Vec<ExplanationScore>) -> ExplanationRecord {
        ExplanationRecord {
            latent: 4,
            explainer: "llm:local:<m>".into(),
            explanation: text.into(),
            source: "runs/ai".into(),
            scores,
        }
    }

    #[test]
    fn verdicts_and_deltas() {
        assert_eq!(verdict(&score(Some(0.61), Some(0.48))), "better");
        assert_eq!(verdict(&score(Some(0.4), Some(0.48))), "worse");
        assert_eq!(verdict(&score(Some(0.5), Some(0.5))), "even");
        assert_eq!(verdict(&score(None, Some(0.5))), "unknown");
        assert_eq!(delta(&score(Some(0.612), Some(0.48))), "+0.132 ▲");
        assert_eq!(delta(&score(Some(0.4), Some(0.48))), "−0.080 ▼");
        assert_eq!(delta(&score(Some(0.5), None)), "—");
        assert_eq!(
            score_line(&score(Some(0.6125), None)),
            "embedding auroc 0.613 (shuffled —)"
        );
    }

    #[test]
    fn the_section_escapes_the_text_and_shows_every_score() {
        let mut h = String::new();
        section(
            &mut h,
            &[
                record(
                    "<script>alert(1)</script> & \"quotes\"",
                    vec![score(Some(0.612), Some(0.48)), score(None, None)],
                ),
                record("plain", Vec::new()),
            ],
        );
        assert!(!h.contains("<script>"), "{h}");
        assert!(h.contains("&lt;script&gt;alert(1)&lt;/script&gt; &amp; &quot;quotes&quot;"));
        assert!(h.contains("data-explainer=\"llm:local:&lt;m&gt;\""));
        assert_eq!(h.matches("<div class=\"expl\"").count(), 2);
        assert_eq!(h.matches("<tr class=").count(), 2);
        // Values to three decimals, the exact ones in data-*, — for none.
        assert!(h.contains("data-value=\"0.612\" data-shuffled=\"0.48\""));
        assert!(h.contains("<td class=\"num value\">0.612</td><td class=\"num\">0.480</td>"));
        assert!(h.contains("data-value=\"\" data-shuffled=\"\""));
        assert!(h.contains("<td class=\"num value\">—</td>"));
        assert!(h.contains("data-verdict=\"better\"") && h.contains("data-verdict=\"unknown\""));
        assert!(h.contains("<td class=\"num\">0.500</td><td class=\"num\">2</td>"));
        assert!(h.contains("Not scored."));

        let mut none = String::new();
        section(&mut none, &[]);
        assert!(none.contains("id=\"no-explanations\"") && none.contains("saelab autointerp"));
        assert!(none.contains("data-count=\"0\""));
    }
}
