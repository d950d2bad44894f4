//! The index of latents. Served live it is one page of a [`Listing`] (sorted,
//! searched and paged by the server through plain links and a form), with a second
//! form that searches the explanations' text (`/explanations`); exported it is every
//! latent in one table that the embedded script sorts and filters in the browser,
//! since a folder opened from `file://` has no server to ask, and the explanations
//! embedded for the script to search.

use std::fmt::Write;

use super::{esc, explanations, frame, num, percent, Links};
use crate::listing::{Listing, Query, SortKey};
use crate::site::{display_token, Site, Summary};

/// Tokens shown per list in a row.
const SHOWN: usize = 6;

fn chips(out: &mut String, site: &Site, ids: &[u32]) {
    for &t in ids.iter().take(SHOWN) {
        let _ = write!(
            out,
            "<span class=\"chip\">{}</span>",
            esc(&display_token(site.token_text(t)))
        );
    }
}

/// The lower-cased, trimmed token texts a row is searched by, as a JSON array.
fn search_tokens(site: &Site, s: &Summary) -> String {
    let mut v: Vec<String> = s
        .max_tokens
        .iter()
        .chain(&s.promoted)
        .map(|&t| site.token_text(t).trim().to_lowercase())
        .filter(|t| !t.is_empty())
        .collect();
    v.sort();
    v.dedup();
    serde_json::to_string(&v).unwrap_or_else(|_| "[]".into())
}

fn row(out: &mut String, site: &Site, links: Links, s: &Summary) {
    let _ = write!(
        out,
        "<tr data-latent=\"{}\" data-density=\"{}\" data-max=\"{}\" data-mean=\"{}\" \
         data-tokens=\"{}\"><td><a href=\"{}\">#{}</a></td><td class=\"num\">{}</td>\
         <td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"chips\">",
        s.latent,
        s.density,
        s.max,
        s.mean,
        esc(&search_tokens(site, s)),
        links.latent(s.latent),
        s.latent,
        percent(s.density),
        num(s.max as f64),
        num(s.mean),
    );
    chips(out, site, &s.max_tokens);
    out.push_str("</td><td class=\"chips\">");
    chips(out, site, &s.promoted);
    out.push_str("</td></tr>");
}

const COLUMNS: [(SortKey, &str); 4] = [
    (SortKey::Latent, "Latent"),
    (SortKey::Density, "Density"),
    (SortKey::Max, "Max"),
    (SortKey::Mean, "Mean"),
];

/// The query string of `q` with `sort`, `order` and `page` replaced.
fn href(q: &Query, sort: SortKey, desc: bool, page: usize) -> String {
    let mut s = format!(
        "/?sort={}&order={}",
        sort.name(),
        if desc { "desc" } else { "asc" }
    );
    if let Some(t) = &q.q {
        s.push_str("&q=");
        s.push_str(&url_encode(t));
    }
    if q.per != Query::default().per {
        let _ = write!(s, "&per={}", q.per);
    }
    if page > 1 {
        let _ = write!(s, "&page={page}");
    }
    s
}

/// Percent-encodes a query value.
fn url_encode(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

/// The live index: one page of `l`.
pub fn server_page(site: &Site, links: Links, l: &Listing) -> String {
    let q = &l.query;
    let mut b = String::with_capacity(64 * 1024);
    let _ = write!(
        b,
        "<div class=\"head\"><h1>Latents</h1><div class=\"searches\"><form class=\"search\" \
         method=\"get\" action=\"/\"><input type=\"hidden\" name=\"sort\" value=\"{}\">\
         <input type=\"hidden\" name=\"order\" value=\"{}\"><input type=\"search\" name=\"q\" \
         id=\"search\" placeholder=\"Search by token, e.g. the\" value=\"{}\">\
         <button type=\"submit\">Search</button></form>",
        q.sort.name(),
        if q.desc { "desc" } else { "asc" },
        esc(q.q.as_deref().unwrap_or("")),
    );
    explanations::search_form(&mut b, links, "");
    b.push_str("</div></div>");
    let _ =
        write!(
        b,
        "<p class=\"note\" id=\"summary\" data-total=\"{}\">{}{} latents · sorted by {} ({}) · \
         page {} of {}</p>",
        l.total,
        match &q.q {
            Some(t) => format!("Token “{}”: ", esc(t)),
            None => String::new(),
        },
        l.total,
        q.sort.name(),
        if q.desc { "largest first" } else { "smallest first" },
        q.page,
        l.pages
    );
    b.push_str("<table class=\"index\" id=\"latents\"><thead><tr>");
    for (key, label) in COLUMNS {
        let active = key == q.sort;
        let desc = if active {
            !q.desc
        } else {
            key != SortKey::Latent
        };
        let arrow = match (active, q.desc) {
            (true, true) => " ▾",
            (true, false) => " ▴",
            _ => "",
        };
        let _ = write!(
            b,
            "<th class=\"{}\"><a href=\"{}\">{label}{arrow}</a></th>",
            if key == SortKey::Latent { "" } else { "num" },
            esc(&href(q, key, desc, 1))
        );
    }
    b.push_str("<th>Top-activating tokens</th><th>Promoted tokens</th></tr></thead><tbody>");
    for s in &l.rows {
        row(&mut b, site, links, s);
    }
    if l.rows.is_empty() {
        b.push_str("<tr><td colspan=\"6\" class=\"muted\">No latent matches.</td></tr>");
    }
    b.push_str("</tbody></table><nav class=\"pages\">");
    if q.page > 1 {
        let _ = write!(
            b,
            "<a href=\"{}\" rel=\"prev\">← previous</a>",
            esc(&href(q, q.sort, q.desc, q.page - 1))
        );
    }
    if q.page < l.pages {
        let _ = write!(
            b,
            "<a href=\"{}\" rel=\"next\">next →</a>",
            esc(&href(q, q.sort, q.desc, q.page + 1))
        );
    }
    b.push_str("</nav>");
    frame(site, links, "Latents", &b)
}

/// The exported index: every latent, sorted and filtered in the browser.
pub fn static_page(site: &Site) -> String {
    let links = Links::Static;
    let mut b = String::with_capacity(site.n_latents() * 400 + 4096);
    b.push_str(
        "<div class=\"head\"><h1>Latents</h1><form class=\"search\" onsubmit=\"return false\">\
         <input type=\"search\" id=\"search\" placeholder=\"Search by token, e.g. the\">\
         </form></div>",
    );
    explanations::static_block(&mut b, site);
    let _ = write!(
        b,
        "<p class=\"note\" id=\"summary\" data-total=\"{}\">{} latents · click a column to \
         sort</p><table class=\"index\" id=\"latents\" data-client=\"1\"><thead><tr>",
        site.n_latents(),
        site.n_latents()
    );
    for (key, label) in COLUMNS {
        let _ = write!(
            b,
            "<th class=\"{}\" data-sort=\"{}\"><a href=\"#\">{label}</a></th>",
            if key == SortKey::Latent { "" } else { "num" },
            key.name()
        );
    }
    b.push_str("<th>Top-activating tokens</th><th>Promoted tokens</th></tr></thead><tbody>");
    let mut rows: Vec<&Summary> = site.summaries().iter().collect();
    rows.sort_by(|a, b| {
        b.density
            .total_cmp(&a.density)
            .then(a.latent.cmp(&b.latent))
    });
    for s in rows {
        row(&mut b, site, links, s);
    }
    b.push_str("</tbody></table>");
    frame(site, links, "Latents", &b)
}
