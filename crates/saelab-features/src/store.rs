//! The features folder: where each file lives, writing the per-range stats files and
//! their index, and reading it back — the manifest, one latent's record without
//! loading the others, the token matrix, the vocabulary.
//!
//! ```text
//! DIR/features.json                         the manifest (crate::manifest)
//! DIR/parts/{i:05}.safetensors              Stage A's shard parts (crate::parts)
//! DIR/tokens.safetensors                    tokens [contexts, ctx_len] U32
//! DIR/vocab.json                            the text of every token id
//! DIR/latents/{hook}/{start}_{end}.safetensors + config.json   delphi's latent cache
//! DIR/stats/{start}_{end}.jsonl             one LatentRecord per line, latent order
//! DIR/stats/index.json                      byte offsets of every line
//! ```
//!
//! Ranges name their first and last latent (`end` inclusive), as delphi's files do.

use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use saelab_core::io::write_file_atomic;
use saelab_core::rundir::{read_json, write_json};
use saelab_core::tensorfile::safetensors::{write_file, SafetensorsFile, TensorOut};
use saelab_core::tensorfile::Values;
use saelab_core::{Error, Result, Sae};

use crate::fingerprint::sae_fingerprint;
use crate::manifest::{self, Manifest};
use crate::record::LatentRecord;

/// The paths of a features folder.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Layout {
    dir: PathBuf,
}

impl Layout {
    /// The folder `dir`.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Layout { dir: dir.into() }
    }

    /// The folder.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// `features.json`.
    pub fn manifest(&self) -> PathBuf {
        self.dir.join("features.json")
    }

    /// Shard part `i`.
    pub fn part(&self, i: usize) -> PathBuf {
        self.dir.join("parts").join(format!("{i:05}.safetensors"))
    }

    /// `tokens.safetensors`.
    pub fn tokens(&self) -> PathBuf {
        self.dir.join("tokens.safetensors")
    }

    /// `vocab.json`.
    pub fn vocab(&self) -> PathBuf {
        self.dir.join("vocab.json")
    }

    /// delphi's folder for `hook`: `latents/{hook}`.
    pub fn delphi_dir(&self, hook: &str) -> PathBuf {
        self.dir.join("latents").join(hook)
    }

    /// delphi's file of latents `start..=end`.
    pub fn delphi_file(&self, hook: &str, start: usize, end: usize) -> PathBuf {
        self.delphi_dir(hook)
            .join(format!("{start}_{end}.safetensors"))
    }

    /// The stats file of latents `start..=end`.
    pub fn stats_file(&self, start: usize, end: usize) -> PathBuf {
        self.dir.join("stats").join(range_name(start, end, "jsonl"))
    }

    /// `stats/index.json`.
    pub fn index(&self) -> PathBuf {
        self.dir.join("stats").join("index.json")
    }
}

/// `{start}_{end}.{ext}`.
fn range_name(start: usize, end: usize, ext: &str) -> String {
    format!("{start}_{end}.{ext}")
}

/// Stage B's latent ranges for latents firing `counts[j]` times: consecutive latents,
/// each range at most `max_latents` long and holding at most `max_entries` active
/// positions in all (a latent with more than that is a range of its own), as
/// `(start, end)` with `end` inclusive. Bounding the entries bounds Stage B's memory
/// whatever the token count; the plan is a function of the counts only, so a resumed
/// pass plans the same ranges.
pub fn plan_ranges(counts: &[u64], max_latents: usize, max_entries: u64) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    let mut start = 0;
    let mut held = 0u64;
    for (j, &c) in counts.iter().enumerate() {
        if j > start && (j - start >= max_latents.max(1) || held + c > max_entries) {
            out.push((start, j - 1));
            start = j;
            held = 0;
        }
        held += c;
    }
    if start < counts.len() {
        out.push((start, counts.len() - 1));
    }
    out
}

/// Writes the stats file of latents `start..=end`: `records` (one per latent, in
/// order), one JSON object per line. Atomic.
pub fn write_stats(
    layout: &Layout,
    start: usize,
    end: usize,
    records: &[LatentRecord],
) -> Result<()> {
    debug_assert_eq!(records.len(), end + 1 - start);
    let mut out = Vec::new();
    for r in records {
        serde_json::to_writer(&mut out, r).expect("records serialise");
        out.push(b'\n');
    }
    let path = layout.stats_file(start, end);
    if let Some(d) = path.parent() {
        std::fs::create_dir_all(d).map_err(|e| Error::io(d, e))?;
    }
    write_file_atomic(&path, &out)
}

/// `stats/index.json`: where each latent's line is.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Index {
    /// The ranges, in latent order.
    pub ranges: Vec<IndexRange>,
}

/// One stats file in the index.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct IndexRange {
    /// First latent.
    pub start: usize,
    /// Last latent (inclusive).
    pub end: usize,
    /// The file, relative to `stats/`.
    pub file: String,
    /// Byte offset of each latent's line, plus the file's length (`end − start + 2`
    /// values).
    pub offsets: Vec<u64>,
}

/// Builds `stats/index.json` from the stats files of `ranges`, checking that each holds
/// one line per latent.
pub fn write_index(layout: &Layout, ranges: &[(usize, usize)]) -> Result<()> {
    let mut out = Vec::new();
    for &(start, end) in ranges {
        let path = layout.stats_file(start, end);
        let bytes = std::fs::read(&path).map_err(|e| Error::io(&path, e))?;
        let mut offsets = vec![0u64];
        offsets.extend(
            bytes
                .iter()
                .enumerate()
                .filter(|(_, &b)| b == b'\n')
                .map(|(i, _)| i as u64 + 1),
        );
        if offsets.len() != end - start + 2 || offsets.last() != Some(&(bytes.len() as u64)) {
            return Err(Error::bad_file(
                &path,
                format!(
                    "corrupt: {} lines, expected one per latent {start}..={end}",
                    offsets.len() - 1
                ),
            ));
        }
        out.push(IndexRange {
            start,
            end,
            file: range_name(start, end, "jsonl"),
            offsets,
        });
    }
    write_json(&layout.index(), &Index { ranges: out })
}

/// Writes the `.safetensors` file `path` of the folder atomically, creating the
/// folder it lies in: `tensors` back to back in the order given (widest dtype first
/// keeps each aligned), with no `__metadata__`, so that equal tensors give equal bytes
/// and a resumed pass writes the same files as one that never stopped.
pub(crate) fn write_tensors(path: &Path, tensors: &[TensorOut<'_>]) -> Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    }
    write_file(path, tensors, &[])
}

/// Writes `tokens.safetensors`: `tokens [contexts, ctx_len]` U32.
pub fn write_tokens(layout: &Layout, tokens: &[u32], ctx_len: usize) -> Result<()> {
    write_tensors(
        &layout.tokens(),
        &[TensorOut::new(
            "tokens",
            &[tokens.len() / ctx_len.max(1), ctx_len],
            Values::U32(tokens),
        )],
    )
}

/// A complete features folder, opened for reading.
#[derive(Clone, Debug)]
pub struct Features {
    layout: Layout,
    manifest: Manifest,
    index: Index,
}

impl Features {
    /// Opens the folder `dir`: its manifest (which must say the pass is complete) and
    /// its index. Errors name the file at fault in one line.
    pub fn open(dir: &Path) -> Result<Features> {
        let layout = Layout::new(dir);
        let mpath = layout.manifest();
        if !mpath.is_file() {
            return Err(Error::bad_file(
                dir,
                "not a features folder (no features.json)",
            ));
        }
        let manifest = manifest::read(&mpath)?;
        let s = &manifest.state;
        if !s.complete {
            return Err(Error::bad_file(
                &mpath,
                format!(
                    "the features pass is not complete ({} of {} parts, {} of {} latent \
                     ranges); run saelab features again to finish it",
                    s.parts_done,
                    s.parts_total,
                    s.ranges_done,
                    s.ranges.len()
                ),
            ));
        }
        let ipath = layout.index();
        let index: Index = read_json(&ipath, "a features index")?;
        let n = manifest.settings.sae.n_latents;
        let mut next = 0;
        for r in &index.ranges {
            if r.start != next || r.end < r.start || r.offsets.len() != r.end - r.start + 2 {
                return Err(Error::bad_file(
                    &ipath,
                    "corrupt: ranges do not tile the latents",
                ));
            }
            next = r.end + 1;
        }
        if next != n {
            return Err(Error::bad_file(
                &ipath,
                format!("corrupt: indexes {next} latents, the SAE has {n}"),
            ));
        }
        Ok(Features {
            layout,
            manifest,
            index,
        })
    }

    /// [`Features::open`], then a check that the folder was made from `sae`: a folder
    /// of another SAE is an error naming `features.json`.
    pub fn open_for(dir: &Path, sae: &Sae) -> Result<Features> {
        let f = Features::open(dir)?;
        f.check_sae(sae)?;
        Ok(f)
    }

    /// Checks that the folder was made from `sae` (same fingerprint).
    pub fn check_sae(&self, sae: &Sae) -> Result<()> {
        let fp = sae_fingerprint(sae);
        if fp != self.manifest.settings.sae.fingerprint {
            return Err(Error::bad_file(
                self.layout.manifest(),
                format!(
                    "made from another SAE (fingerprint {}, this SAE {fp})",
                    self.manifest.settings.sae.fingerprint
                ),
            ));
        }
        Ok(())
    }

    /// The manifest.
    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// The folder's paths.
    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    /// Number of latents.
    pub fn n_latents(&self) -> usize {
        self.manifest.settings.sae.n_latents
    }

    /// The record of latent `i`, read from its line alone. Errors: `i` out of range, or
    /// a line that is missing or not a valid record (naming the stats file).
    pub fn latent(&self, i: usize) -> Result<LatentRecord> {
        let n = self.n_latents();
        let r = self
            .index
            .ranges
            .iter()
            .find(|r| r.start <= i && i <= r.end)
            .ok_or_else(|| {
                Error::config(format!(
                    "latent {i} does not exist (the SAE has {n} latents)"
                ))
            })?;
        let path = self.layout.dir().join("stats").join(&r.file);
        let (a, b) = (r.offsets[i - r.start], r.offsets[i - r.start + 1]);
        let mut f = std::fs::File::open(&path).map_err(|e| Error::io(&path, e))?;
        let len = f.metadata().map_err(|e| Error::io(&path, e))?.len();
        if b < a || b > len {
            return Err(Error::bad_file(
                &path,
                format!("truncated: the index puts latent {i} at bytes {a}..{b} of {len}"),
            ));
        }
        let mut buf = vec![0u8; (b - a) as usize];
        f.seek(SeekFrom::Start(a))
            .and_then(|_| f.read_exact(&mut buf))
            .map_err(|e| Error::io(&path, e))?;
        let rec: LatentRecord = serde_json::from_slice(&buf).map_err(|e| {
            Error::bad_file(
                &path,
                format!("corrupt: latent {i}: not a latent record: {e}"),
            )
        })?;
        if rec.latent as usize != i {
            return Err(Error::bad_file(
                &path,
                format!(
                    "corrupt: the line of latent {i} holds latent {}",
                    rec.latent
                ),
            ));
        }
        Ok(rec)
    }

    /// The latent ranges `(start, end)` (inclusive) of the stats and delphi files, in
    /// order; they tile `0..n_latents`.
    pub fn ranges(&self) -> Vec<(usize, usize)> {
        self.index.ranges.iter().map(|r| (r.start, r.end)).collect()
    }

    /// Every active position of latent `i` as `(context, position, value)`, from its
    /// delphi file (values rounded to f16 there), in token-major order.
    pub fn latent_entries(&self, i: usize) -> Result<Vec<(u32, u32, f32)>> {
        let n = self.n_latents();
        let (start, end) = self
            .ranges()
            .into_iter()
            .find(|&(a, b)| a <= i && i <= b)
            .ok_or_else(|| {
                Error::config(format!(
                    "latent {i} does not exist (the SAE has {n} latents)"
                ))
            })?;
        let hook = &self.manifest.settings.hook;
        let (r, _, _) = crate::latent_cache::read_range(&self.layout, hook, start, end)?;
        let offset = (i - start) as u32;
        Ok(r.locations
            .chunks_exact(3)
            .zip(&r.activations)
            .filter(|(l, _)| l[2] == offset)
            .map(|(l, &v)| (l[0], l[1], v))
            .collect())
    }

    /// The token matrix `[contexts, ctx_len]`, row-major.
    pub fn tokens(&self) -> Result<Vec<u32>> {
        let f = SafetensorsFile::open(&self.layout.tokens())?;
        let s = &self.manifest.settings;
        f.expect_shape("tokens", &[s.contexts, s.ctx_len])?;
        f.read_u32("tokens")
    }

    /// The text of every token id (`vocab.json`).
    pub fn vocab(&self) -> Result<Vec<String>> {
        read_json(&self.layout.vocab(), "a list of token texts")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_tile_the_latents_with_inclusive_ends() {
        assert_eq!(plan_ranges(&[1; 10], 4, 100), vec![(0, 3), (4, 7), (8, 9)]);
        assert_eq!(plan_ranges(&[1; 8], 4, 100), vec![(0, 3), (4, 7)]);
        // The entry bound: 5 + 5 > 9 closes a range; 50 alone exceeds it and is its own.
        assert_eq!(
            plan_ranges(&[5, 5, 50, 1, 2, 3], 4, 9),
            vec![(0, 0), (1, 1), (2, 2), (3, 5)]
        );
        assert_eq!(plan_ranges(&[0; 3], 2, 0), vec![(0, 1), (2, 2)]);
        assert!(plan_ranges(&[], 4, 9).is_empty());
        let l = Layout::new("/x");
        assert_eq!(l.stats_file(0, 3), PathBuf::from("/x/stats/0_3.jsonl"));
        assert_eq!(
            l.delphi_file("blocks.3.hook_resid_post", 4, 7),
            PathBuf::from("/x/latents/blocks.3.hook_resid_post/4_7.safetensors")
        );
    }
}
