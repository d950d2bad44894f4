//! `saelab export-html`: the pages as a static folder that works from `file://`: the
//! index (every latent in one table, sorted and searched by the embedded script), one
//! page per latent (`latent-{i}.html`), the stylesheet and the script, all linked by
//! relative names in one flat folder. The folder is built under a temporary name and
//! renamed into place (`saelab_core::io::write_dir_atomic`): it appears complete or not
//! at all, and an older export of that name is replaced only once the new one is done.
//! The prompt explorer needs the model, so it is not exported.

use std::path::Path;

use rayon::prelude::*;
use saelab_core::Result;

use crate::assets;
use crate::html::{self, Links};
use crate::site::Site;

/// What an export wrote.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ExportSummary {
    /// Latent pages written.
    pub pages: usize,
    /// Bytes written in all.
    pub bytes: u64,
}

/// Writes the pages of `site` into the folder `out` (replacing an older export).
pub fn export_html(site: &Site, out: &Path) -> Result<ExportSummary> {
    let mut summary = ExportSummary { pages: 0, bytes: 0 };
    saelab_core::io::write_dir_atomic(out, |dir| {
        // Plain writes: the folder as a whole is what appears atomically.
        let write = |name: &str, text: &str| -> Result<u64> {
            let path = dir.join(name);
            std::fs::write(&path, text).map_err(|e| saelab_core::Error::io(&path, e))?;
            Ok(text.len() as u64)
        };
        let mut bytes = write("style.css", assets::STYLE_CSS)?;
        bytes += write("app.js", assets::APP_JS)?;
        bytes += write("index.html", &html::index::static_page(site))?;
        let pages: Vec<u64> = (0..site.n_latents())
            .into_par_iter()
            .map(|i| {
                let r = site
                    .record(i)
                    .map_err(|e| saelab_core::Error::config(e.to_string()))?;
                write(
                    &format!("latent-{i}.html"),
                    &html::latent::page(site, Links::Static, &r),
                )
            })
            .collect::<Result<_>>()?;
        summary = ExportSummary {
            pages: pages.len(),
            bytes: bytes + pages.iter().sum::<u64>(),
        };
        Ok(())
    })?;
    Ok(summary)
}
