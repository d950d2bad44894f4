//! delphi's result layout, so that delphi's analysis (`log/result_analysis.py`,
//! `parse_score_file`) reads saelab's results:
//!
//! ```text
//! OUT/explanations/{module}_latent{i}.txt           the explanation, a JSON string
//! OUT/scores/{scorer}/{module}_latent{i}.txt        a JSON list of ItemScore
//! ```
//!
//! `module` is the hook name. Files are written atomically, so a latent whose files
//! exist is complete and a resumed run skips it.

use std::path::{Path, PathBuf};

use saelab_core::io::write_file_atomic;
use saelab_core::{Error, Result};

use crate::score::ItemScore;

/// The result folder of one run.
#[derive(Clone, Debug)]
pub struct Output {
    dir: PathBuf,
    module: String,
}

impl Output {
    /// Results under `dir` for the hook `module`.
    pub fn new(dir: impl Into<PathBuf>, module: impl Into<String>) -> Self {
        Output {
            dir: dir.into(),
            module: module.into(),
        }
    }

    /// The folder.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// `explanations/{module}_latent{i}.txt`.
    pub fn explanation_file(&self, latent: usize) -> PathBuf {
        self.dir
            .join("explanations")
            .join(format!("{}_latent{latent}.txt", self.module))
    }

    /// `scores/{scorer}/{module}_latent{i}.txt`.
    pub fn score_file(&self, scorer: &str, latent: usize) -> PathBuf {
        self.dir
            .join("scores")
            .join(scorer)
            .join(format!("{}_latent{latent}.txt", self.module))
    }

    /// Writes latent `latent`'s explanation.
    pub fn write_explanation(&self, latent: usize, text: &str) -> Result<()> {
        let json = serde_json::to_string(text).expect("a string serialises");
        write(&self.explanation_file(latent), json.as_bytes())
    }

    /// The explanation written for `latent`, if any.
    pub fn read_explanation(&self, latent: usize) -> Result<Option<String>> {
        let p = self.explanation_file(latent);
        if !p.is_file() {
            return Ok(None);
        }
        let bytes = std::fs::read(&p).map_err(|e| Error::io(&p, e))?;
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| Error::bad_file(&p, format!("not a JSON string: {e}")))
    }

    /// Writes `scorer`'s items for `latent`.
    pub fn write_scores(&self, scorer: &str, latent: usize, items: &[ItemScore]) -> Result<()> {
        self.write_json(scorer, latent, &items)
    }

    /// `scorer`'s items for `latent`, if written.
    pub fn read_scores(&self, scorer: &str, latent: usize) -> Result<Option<Vec<ItemScore>>> {
        self.read_json(scorer, latent)
    }

    /// Writes `value` as `scorer`'s file for `latent` (a per-item list, or what a scorer
    /// whose results are not one writes, e.g. the intruder scorer's counts).
    pub fn write_json<T: serde::Serialize>(
        &self,
        scorer: &str,
        latent: usize,
        value: &T,
    ) -> Result<()> {
        let json = serde_json::to_string(value).expect("scores serialise");
        write(&self.score_file(scorer, latent), json.as_bytes())
    }

    /// `scorer`'s file for `latent` as a `T`, if written; a file that is not one is an
    /// error naming it.
    pub fn read_json<T: serde::de::DeserializeOwned>(
        &self,
        scorer: &str,
        latent: usize,
    ) -> Result<Option<T>> {
        let p = self.score_file(scorer, latent);
        if !p.is_file() {
            return Ok(None);
        }
        let bytes = std::fs::read(&p).map_err(|e| Error::io(&p, e))?;
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| Error::bad_file(&p, format!("not a {scorer} score file: {e}")))
    }
}

fn write(path: &Path, bytes: &[u8]) -> Result<()> {
    if let Some(d) = path.parent() {
        std::fs::create_dir_all(d).map_err(|e| Error::io(d, e))?;
    }
    write_file_atomic(path, bytes)
}
