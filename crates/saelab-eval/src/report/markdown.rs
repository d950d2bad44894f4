//! The report's Markdown page: one table row per run, the comparison against TopK at
//! equal L0, and links to the plots.

use std::fmt::Write as _;

use super::plots::Image;
use super::runs::{ArchSeries, FinalMetrics, RunSummary};
use crate::inmodel::InModelMetrics;

/// The FVU of the `reference` frontier (points sorted by L0) at `l0`, interpolated
/// linearly in log L0; `None` outside its L0 range.
pub fn frontier_at(reference: &[(f64, f64)], l0: f64) -> Option<f64> {
    let w = reference
        .windows(2)
        .find(|w| w[0].0 <= l0 && l0 <= w[1].0)?;
    let (a, b) = (w[0], w[1]);
    if a.0 == b.0 {
        return Some(a.1.min(b.1));
    }
    let t = (l0.ln() - a.0.ln()) / (b.0.ln() - a.0.ln());
    Some(a.1 + t * (b.1 - a.1))
}

fn fmt(v: f64, prec: usize) -> String {
    if v.is_finite() {
        format!("{v:.prec$}")
    } else {
        "–".to_string()
    }
}

/// The report's Markdown: the comparison table, the comparison against TopK at equal
/// L0 (from the `fvu` series), and the plots in `images` (or why they were skipped).
pub(super) fn markdown(
    runs: &[RunSummary],
    fvu: &ArchSeries,
    images: &[Image],
    skipped: Option<&str>,
) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "# SAE comparison\n");
    let hooks: Vec<&str> = {
        let mut h: Vec<&str> = runs.iter().filter_map(|r| r.hook.as_deref()).collect();
        h.sort();
        h.dedup();
        h
    };
    let _ = writeln!(
        s,
        "{} SAEs{}. L0, FVU, NMSE, cos and dead/dense fractions are the last validation \
         record of each run's `metrics.jsonl` (held-out activation rows), or the \
         reconstruction metrics of `eval.json` for runs without one. CE loss score \
         `(ce_zero − ce_sae)/(ce_zero − ce_clean)`, ΔCE `ce_sae − ce_clean` and KL \
         `KL(p_clean ‖ p_sae)` (nats per token) come from `eval.json`: the SAE spliced into \
         the model on held-out text, BOS positions excluded.\n",
        runs.len(),
        if hooks.is_empty() {
            String::new()
        } else {
            format!(" at `{}`", hooks.join("`, `"))
        }
    );
    let _ = writeln!(
        s,
        "| run | arch | sparsity | d_sae | L0 | FVU | NMSE | cos | dead | dense | CE score | ΔCE | KL | ce_clean |"
    );
    let _ = writeln!(
        s,
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    );
    let mut sorted: Vec<&RunSummary> = runs.iter().collect();
    sorted.sort_by(|a, b| {
        a.arch.cmp(&b.arch).then(
            a.last
                .as_ref()
                .map_or(f64::NAN, |l| l.l0)
                .total_cmp(&b.last.as_ref().map_or(f64::NAN, |l| l.l0)),
        )
    });
    for r in sorted {
        let l = r.last.clone().unwrap_or(FinalMetrics {
            l0: f64::NAN,
            fvu: f64::NAN,
            nmse: f64::NAN,
            cos_sim: f64::NAN,
            dead_frac: f64::NAN,
            dense_frac: f64::NAN,
            step: 0,
        });
        let m = r.in_model.as_ref();
        let g = |f: fn(&InModelMetrics) -> f64, p| fmt(m.map_or(f64::NAN, f), p);
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            r.name,
            r.arch,
            r.sparsity,
            r.d_sae,
            fmt(l.l0, 1),
            fmt(l.fvu, 4),
            fmt(l.nmse, 4),
            fmt(l.cos_sim, 4),
            fmt(l.dead_frac, 4),
            fmt(l.dense_frac, 4),
            g(|m| m.ce_loss_score, 4),
            g(|m| m.delta_ce, 4),
            g(|m| m.kl_sae, 4),
            g(|m| m.ce_clean, 3),
        );
    }
    s.push('\n');
    // Frontier comparison against TopK at equal L0.
    if let Some(topk) = fvu.get("topk").filter(|t| t.len() >= 2) {
        let reference: Vec<(f64, f64)> = topk.iter().map(|p| (p.0, p.1)).collect();
        let mut lines = Vec::new();
        for (arch, pts) in fvu.iter().filter(|(a, _)| a.as_str() != "topk") {
            for p in pts {
                match frontier_at(&reference, p.0) {
                    Some(t) => lines.push(format!(
                        "- {arch} {} at L0 {:.1}: FVU {:.4} vs TopK {:.4} ({:+.1} %)",
                        p.2,
                        p.0,
                        p.1,
                        t,
                        100.0 * (p.1 - t) / t
                    )),
                    None => lines.push(format!(
                        "- {arch} {} at L0 {:.1}: outside TopK's L0 range [{:.1}, {:.1}]",
                        p.2,
                        p.0,
                        reference[0].0,
                        reference[reference.len() - 1].0
                    )),
                }
            }
        }
        if !lines.is_empty() {
            let _ = writeln!(
                s,
                "## Against TopK at equal L0\n\nTopK's FVU interpolated linearly in log L0 \
                 between its runs:\n\n{}\n",
                lines.join("\n")
            );
        }
    }
    let _ = writeln!(s, "## Plots\n");
    if let Some(why) = skipped {
        let _ = writeln!(s, "Plots were not drawn: {why}.\n");
    }
    for (_, title, p) in images {
        let file = p
            .file_name()
            .map(|f| f.to_string_lossy())
            .unwrap_or_default();
        let _ = writeln!(s, "### {title}\n\n![{title}]({file})\n");
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frontier_interpolates_in_log_l0() {
        let r = [(10.0, 0.4), (40.0, 0.2)];
        assert_eq!(frontier_at(&r, 10.0), Some(0.4));
        // log-midpoint of 10 and 40 is 20.
        assert!((frontier_at(&r, 20.0).unwrap() - 0.3).abs() < 1e-12);
        assert_eq!(frontier_at(&r, 50.0), None);
    }
}
