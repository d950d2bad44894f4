//! Server-side rendering of the pages as plain HTML strings: the shared frame
//! ([`frame`]), escaping, number formats, and where links point ([`Links`]), which is
//! the one difference between a page served live and the same page exported to a
//! folder for `file://`.

pub mod explanations;
pub mod index;
pub mod latent;
pub mod parts;
pub mod prompt;
pub mod steer;

use std::fmt::Write;

use crate::site::Site;

/// Where a page's links point.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Links {
    /// Served by `saelab serve`: absolute paths on the server; `explorer` says whether
    /// the prompt explorer is there.
    Server {
        /// The server was given a model and an SAE.
        explorer: bool,
    },
    /// Exported by `saelab export-html`: relative file names in one flat folder.
    Static,
}

impl Links {
    /// The index of latents.
    pub fn index(self) -> String {
        match self {
            Links::Server { .. } => "/".into(),
            Links::Static => "index.html".into(),
        }
    }

    /// Latent `i`'s page.
    pub fn latent(self, i: u32) -> String {
        match self {
            Links::Server { .. } => format!("/latent/{i}"),
            Links::Static => format!("latent-{i}.html"),
        }
    }

    /// An embedded asset (`style.css`, `app.js`).
    pub fn asset(self, name: &str) -> String {
        match self {
            Links::Server { .. } => format!("/assets/{name}"),
            Links::Static => name.into(),
        }
    }

    /// The explanation search page, when served (the exported index searches in the
    /// browser instead).
    pub fn explanations(self) -> Option<String> {
        match self {
            Links::Server { .. } => Some("/explanations".into()),
            Links::Static => None,
        }
    }

    /// The prompt explorer, when there is one.
    pub fn prompt(self) -> Option<String> {
        match self {
            Links::Server { explorer: true } => Some("/prompt".into()),
            _ => None,
        }
    }

    /// The steering endpoint, when there is one (a server with the model and the SAE).
    pub fn steer(self) -> Option<String> {
        match self {
            Links::Server { explorer: true } => Some("/api/steer".into()),
            _ => None,
        }
    }
}

/// Escapes text for HTML content and attribute values.
pub fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            _ => out.push(c),
        }
    }
    out
}

/// A density as a percentage with three significant digits (`0.0123%`, `4.56%`).
pub fn percent(x: f64) -> String {
    let p = x * 100.0;
    if p == 0.0 {
        "0%".into()
    } else if p >= 10.0 {
        format!("{p:.1}%")
    } else if p >= 1.0 {
        format!("{p:.2}%")
    } else {
        let digits = (2 - p.log10().floor() as i32).clamp(3, 8) as usize;
        format!("{p:.digits$}%")
    }
}

/// A value as shown in a table (three decimals).
pub fn num(x: f64) -> String {
    format!("{x:.3}")
}

/// The page frame: head, top bar with the folder's description, the body, the script.
pub fn frame(site: &Site, links: Links, title: &str, body: &str) -> String {
    let s = &site.features().manifest().settings;
    let mut h = String::with_capacity(body.len() + 2048);
    let _ = write!(
        h,
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>{} · saelab</title><link rel=\"stylesheet\" href=\"{}\"></head><body>\
         <header class=\"bar\"><a class=\"brand\" href=\"{}\">saelab<span>features</span></a>\
         <span class=\"where\">{} · {} · {} latents · {} tokens</span><nav>\
         <a href=\"{}\">Latents</a>",
        esc(title),
        links.asset("style.css"),
        links.index(),
        esc(&s.model.name),
        esc(&s.hook),
        s.sae.n_latents,
        s.positions,
        links.index(),
    );
    if let Some(e) = links.explanations() {
        let _ = write!(h, "<a href=\"{e}\">Explanations</a>");
    }
    if let Some(p) = links.prompt() {
        let _ = write!(h, "<a href=\"{p}\">Prompt explorer</a>");
    }
    let _ = writeln!(
        h,
        "</nav></header><main>{body}</main><footer>{} SAE · {} · {} contexts of {} tokens \
         from {} ({} part) · seed {}</footer><script src=\"{}\"></script></body></html>",
        esc(&s.sae.architecture),
        esc(&s.sae.path),
        s.contexts,
        s.ctx_len,
        esc(&s.corpus.path),
        esc(&s.corpus.part),
        s.seed,
        links.asset("app.js"),
    );
    h
}

/// A small page for an error (404, 400) in the same frame.
pub fn error_page(site: &Site, links: Links, status: u16, message: &str) -> String {
    let body = format!(
        "<section class=\"card error\"><h1>{status}</h1><p>{}</p><p><a href=\"{}\">Back to \
         the latents</a></p></section>",
        esc(message),
        links.index()
    );
    frame(site, links, &status.to_string(), &body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escaping_and_formats() {
        assert_eq!(
            esc("<a href=\"x\">&'"),
            "&lt;a href=&quot;x&quot;&gt;&amp;&#39;"
        );
        assert_eq!(percent(0.0), "0%");
        assert_eq!(percent(0.5), "50.0%");
        assert_eq!(percent(0.0123), "1.23%");
        assert_eq!(percent(0.000_123_4), "0.0123%");
        assert_eq!(Links::Static.latent(3), "latent-3.html");
        assert_eq!(Links::Server { explorer: false }.latent(3), "/latent/3");
        assert_eq!(Links::Server { explorer: false }.prompt(), None);
        assert_eq!(Links::Server { explorer: false }.steer(), None);
        assert_eq!(Links::Static.steer(), None);
        assert_eq!(Links::Static.explanations(), None);
        assert_eq!(
            Links::Server { explorer: false }.explanations().as_deref(),
            Some("/explanations")
        );
        assert_eq!(
            Links::Server { explorer: true }.steer().as_deref(),
            Some("/api/steer")
        );
    }
}
