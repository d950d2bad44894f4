//! The pass itself: Stage A (model → SAE → shard parts), then Stage B (per latent
//! range: delphi's file, the statistics, the neighbours and logit tables), resumable
//! at every part and every range.
//!
//! Stage A runs the model over the pass's contexts a batch at a time (the forward stops
//! after the hook's block), or reads their rows from an activation cache
//! ([`Activations`]), encodes the non-BOS rows with the SAE and writes one shard part
//! per `contexts_per_part` contexts. Stage B then takes the latents one range at a
//! time: one read of every part collects the range's entries (for its delphi file and
//! its statistics) and its co-occurrence counts against all latents; the products of
//! its decoder rows give the logit tables and decoder neighbours. The ranges are
//! planned from the latents' counts so that none holds more than `range_entries`
//! active positions (nor more than `range_size` latents): memory holds one range's
//! entries, `range × n_latents` counts and one product block, never a dense
//! `[tokens, latents]` array, and does not grow with the token count.
//!
//! The manifest is rewritten after every part and every range; a stopped (stop flag)
//! or killed pass loses at most the part or range it was writing, and a rerun with the
//! same settings continues and writes the same bytes as an uninterrupted pass.

use std::sync::atomic::{AtomicBool, Ordering};

use rayon::prelude::*;
use saelab_core::store::ActivationStore;
use saelab_core::{Error, Matrix, Result, Sae};
use saelab_lm::contexts::{is_bos_position, run_contexts, ContextRef};
use saelab_lm::model::HookedModel;

use crate::cooccurrence::{jaccard_neighbours, CoCounts};
use crate::latent_cache::{self, DelphiConfig, DelphiRange};
use crate::manifest::{self, Manifest, Settings, State, FORMAT, VERSION};
use crate::parts::{read_counts, Part};
use crate::record::LatentRecord;
use crate::stats::{latent_stats, Entry};
use crate::store::{self, plan_ranges, Layout};
use crate::weights::{decoder_neighbours, logit_tables, Decoder};

/// Where Stage A's activations come from.
pub enum Activations<'a> {
    /// The model's forward over each batch of contexts, stopped after the hook's block.
    Model,
    /// The rows of an activation store (a `saelab extract` cache of the same model,
    /// hook and contexts): `rows[offsets[s]..offsets[s + 1]]` are the store rows of
    /// context `s`'s non-BOS positions, in position order.
    Store {
        /// The store.
        store: &'a ActivationStore,
        /// Store rows of every context's non-BOS positions, context after context.
        rows: &'a [usize],
        /// `offsets[s]`: where context `s`'s rows begin in `rows` (`contexts + 1`
        /// values).
        offsets: &'a [usize],
    },
}

impl Activations<'_> {
    /// The hook's activations at the non-BOS positions of contexts `first..` (the
    /// `batch`), context after context, positions in order.
    fn rows(
        &self,
        model: &HookedModel,
        hook: &str,
        first: usize,
        batch: &[ContextRef<'_>],
    ) -> Result<Matrix> {
        match self {
            Activations::Model => {
                let rows = run_contexts(model, &[hook.to_string()], batch, false)?;
                Matrix::from_vec(
                    rows.rows,
                    rows.d,
                    rows.acts.into_iter().next().unwrap_or_default(),
                )
            }
            Activations::Store {
                store,
                rows,
                offsets,
            } => {
                let mut x = Matrix::zeros(0, store.d());
                store.read_rows(&rows[offsets[first]..offsets[first + batch.len()]], &mut x)?;
                Ok(x)
            }
        }
    }
}

/// What the pass reads.
pub struct PassInputs<'a> {
    /// The model (its unembedding gives the logit tables; it runs in Stage A only with
    /// [`Activations::Model`]).
    pub model: &'a HookedModel,
    /// Where Stage A's activations come from.
    pub activations: Activations<'a>,
    /// The SAE (its `d_in` must be the hook's width).
    pub sae: &'a Sae,
    /// The pass's contexts, in order: context `s` is sequence `s` of the cache.
    pub contexts: Vec<ContextRef<'a>>,
    /// The text of every token id (written to `vocab.json`).
    pub vocab: &'a [String],
    /// The settings (written to `features.json`; checked against an existing one).
    pub settings: Settings,
}

/// A progress report.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Progress {
    /// Stage A: non-BOS tokens encoded so far, of `total` (`resumed` were done by an
    /// earlier run).
    Tokens {
        /// Done.
        done: u64,
        /// In the pass.
        total: u64,
        /// Done before this run.
        resumed: u64,
    },
    /// Stage A wrote a shard part (`done` of `total`).
    Part {
        /// Parts written.
        done: usize,
        /// In the pass.
        total: usize,
    },
    /// Stage B: latents whose statistics are written, of `total`.
    Latents {
        /// Done.
        done: u64,
        /// In the SAE.
        total: u64,
        /// Done before this run.
        resumed: u64,
    },
}

/// What a pass did.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Summary {
    /// The folder was already complete; nothing ran.
    pub already_complete: bool,
    /// Shard parts written by this run.
    pub parts_written: usize,
    /// Non-BOS tokens encoded by this run.
    pub tokens_encoded: u64,
    /// Latent ranges written by this run.
    pub ranges_written: usize,
    /// Non-BOS positions of the pass.
    pub positions: u64,
    /// Contexts of the pass.
    pub contexts: usize,
    /// Seconds of Stage A in this run.
    pub secs_cache: f64,
    /// Of those, seconds spent getting the activations: the model's forward to the
    /// hook, or the reads of a cache. The rest of Stage A is the SAE's encode and the
    /// parts, so `secs_cache / secs_activations` is what the pass costs over a plain
    /// forward over the same tokens, measured in the same run.
    pub secs_activations: f64,
    /// Seconds of Stage B in this run.
    pub secs_stats: f64,
}

/// The manifest a folder at `layout` continues from, or a new one for `settings`;
/// errors name `features.json` when the folder was made from other inputs.
pub fn begin(layout: &Layout, settings: &Settings) -> Result<Manifest> {
    let path = layout.manifest();
    if path.is_file() {
        let m = manifest::read(&path)?;
        if let Some(diff) = m.settings.difference(settings) {
            return Err(Error::bad_file(
                &path,
                format!("{diff}; use another --out or remove the folder"),
            ));
        }
        return Ok(m);
    }
    std::fs::create_dir_all(layout.dir()).map_err(|e| Error::io(layout.dir(), e))?;
    let m = Manifest {
        format: FORMAT.into(),
        version: VERSION,
        settings: settings.clone(),
        state: State {
            parts_total: settings.contexts.div_ceil(settings.contexts_per_part),
            ..State::default()
        },
    };
    manifest::write(&path, &m)?;
    Ok(m)
}

fn check_stop(stop: &AtomicBool) -> Result<()> {
    if stop.load(Ordering::SeqCst) {
        Err(Error::Interrupted)
    } else {
        Ok(())
    }
}

/// Runs (or continues) the pass into `layout`.
pub fn run(
    layout: &Layout,
    inp: &PassInputs<'_>,
    stop: &AtomicBool,
    on: &mut dyn FnMut(Progress),
) -> Result<Summary> {
    let s = &inp.settings;
    if inp.sae.cfg.d_in != inp.model.d_model() || s.contexts != inp.contexts.len() {
        return Err(Error::config(format!(
            "the SAE reads {} values per token and the pass has {} contexts; the hook is {} \
             wide and the settings say {} contexts",
            inp.sae.cfg.d_in,
            inp.contexts.len(),
            inp.model.d_model(),
            s.contexts
        )));
    }
    let mut m = begin(layout, s)?;
    let mut summary = Summary {
        positions: s.positions,
        contexts: s.contexts,
        ..Summary::default()
    };
    if m.state.complete {
        summary.already_complete = true;
        return Ok(summary);
    }
    let t0 = std::time::Instant::now();
    (
        summary.parts_written,
        summary.tokens_encoded,
        summary.secs_activations,
    ) = stage_a(layout, inp, &mut m, stop, on)?;
    summary.secs_cache = t0.elapsed().as_secs_f64();
    let t1 = std::time::Instant::now();
    summary.ranges_written = stage_b(layout, inp, &mut m, stop, on)?;
    store::write_index(layout, &m.state.ranges)?;
    m.state.complete = true;
    manifest::write(&layout.manifest(), &m)?;
    summary.secs_stats = t1.elapsed().as_secs_f64();
    Ok(summary)
}

/// The contexts of part `p`.
fn part_contexts(s: &Settings, p: usize) -> std::ops::Range<usize> {
    p * s.contexts_per_part..((p + 1) * s.contexts_per_part).min(s.contexts)
}

fn non_bos(c: &ContextRef<'_>) -> u64 {
    c.positions.iter().filter(|&&p| !is_bos_position(p)).count() as u64
}

/// Stage A: writes the missing shard parts. Returns how many it wrote, the tokens it
/// encoded and the seconds spent getting their activations.
fn stage_a(
    layout: &Layout,
    inp: &PassInputs<'_>,
    m: &mut Manifest,
    stop: &AtomicBool,
    on: &mut dyn FnMut(Progress),
) -> Result<(usize, u64, f64)> {
    let s = &inp.settings;
    let _span = tracing::info_span!("features_cache", parts = m.state.parts_total).entered();
    let n = inp.sae.cfg.d_sae;
    let first = m.state.parts_done;
    let mut done: u64 = inp.contexts[..part_contexts(s, first).start.min(s.contexts)]
        .iter()
        .map(non_bos)
        .sum();
    let resumed = done;
    let mut secs_activations = 0.0;
    on(Progress::Tokens {
        done,
        total: s.positions,
        resumed,
    });
    for p in first..m.state.parts_total {
        let mut part = Part::new(s.ctx_len, n);
        let cs = part_contexts(s, p);
        for (b, batch) in inp.contexts[cs.clone()]
            .chunks(s.batch_contexts)
            .enumerate()
        {
            check_stop(stop)?;
            let first = cs.start + b * s.batch_contexts;
            let t = std::time::Instant::now();
            let x = inp.activations.rows(inp.model, &s.hook, first, batch)?;
            secs_activations += t.elapsed().as_secs_f64();
            if x.rows as u64 != batch.iter().map(non_bos).sum::<u64>() {
                return Err(Error::Shape(format!(
                    "contexts {first}..{}: {} activation rows for {} non-BOS tokens",
                    first + batch.len(),
                    x.rows,
                    batch.iter().map(non_bos).sum::<u64>()
                )));
            }
            let lat = inp.sae.encode(&x)?.latents;
            // Rows come context by context, non-BOS positions in order.
            let mut r = 0;
            for c in batch {
                let mut ctx_rows: Vec<Vec<(u32, f32)>> = vec![Vec::new(); s.ctx_len];
                for (t, &pos) in c.positions.iter().enumerate() {
                    if is_bos_position(pos) {
                        continue;
                    }
                    let (idx, val) = lat.row(r);
                    ctx_rows[t] = idx
                        .iter()
                        .zip(val)
                        .filter(|(_, &v)| v != 0.0)
                        .map(|(&j, &v)| (j, v))
                        .collect();
                    r += 1;
                }
                part.push_context(c.tokens, ctx_rows);
                done += non_bos(c);
            }
            on(Progress::Tokens {
                done,
                total: s.positions,
                resumed,
            });
        }
        part.write(&layout.part(p))?;
        m.state.parts_done = p + 1;
        manifest::write(&layout.manifest(), m)?;
        on(Progress::Part {
            done: p + 1,
            total: m.state.parts_total,
        });
    }
    Ok((
        m.state.parts_total - first,
        done - resumed,
        secs_activations,
    ))
}

/// Stage B: writes the missing latent ranges. Returns how many it wrote.
fn stage_b(
    layout: &Layout,
    inp: &PassInputs<'_>,
    m: &mut Manifest,
    stop: &AtomicBool,
    on: &mut dyn FnMut(Progress),
) -> Result<usize> {
    let s = &inp.settings;
    let n = s.sae.n_latents;
    let ctx = s.ctx_len;
    let mut counts = vec![0u64; n];
    for p in 0..m.state.parts_total {
        for (c, x) in counts.iter_mut().zip(read_counts(&layout.part(p), n)?) {
            *c += x as u64;
        }
    }
    if m.state.ranges.is_empty() {
        m.state.ranges = plan_ranges(&counts, s.range_size, s.range_entries);
        manifest::write(&layout.manifest(), m)?;
    }
    let all_ranges = m.state.ranges.clone();
    let _span = tracing::info_span!("features_stats", ranges = all_ranges.len()).entered();

    // What every range needs: the token matrix, the vocabulary, delphi's config, the
    // firing counts of all latents, the decoder.
    let tokens: Vec<u32> = inp
        .contexts
        .iter()
        .flat_map(|c| c.tokens.iter().copied())
        .collect();
    store::write_tokens(layout, &tokens, ctx)?;
    saelab_core::rundir::write_json(&layout.vocab(), &inp.vocab)?;
    latent_cache::write_config(
        layout,
        &s.hook,
        &DelphiConfig {
            dataset_repo: s.corpus.path.clone(),
            dataset_split: s.corpus.part.clone(),
            dataset_name: String::new(),
            dataset_column: "text".into(),
            batch_size: s.batch_contexts,
            cache_ctx_len: ctx,
            n_tokens: (s.contexts * ctx) as u64,
            n_splits: all_ranges.len(),
            model_name: s.model.name.clone(),
        },
    )?;
    let tokens_i64: Vec<i64> = tokens.iter().map(|&t| t as i64).collect();
    let w_dec = &inp.sae.param("W_dec")?.data;
    let dec = Decoder {
        w: w_dec,
        d: inp.sae.cfg.d_out,
    };
    let normalised = dec.normalised();
    let norms = dec.norms();
    let w_u = inp.model.unembedding();

    let first = m.state.ranges_done;
    let resumed = all_ranges[..first]
        .iter()
        .map(|&(a, b)| (b + 1 - a) as u64)
        .sum();
    on(Progress::Latents {
        done: resumed,
        total: n as u64,
        resumed,
    });
    for (r, &(start, end)) in all_ranges.iter().enumerate().skip(first) {
        check_stop(stop)?;
        let len = end + 1 - start;
        // Exactly sized from the counts: the range holds what the plan bounded.
        let mut entries: Vec<Vec<Entry>> = counts[start..=end]
            .iter()
            .map(|&c| Vec::with_capacity(c as usize))
            .collect();
        let mut delphi = DelphiRange::with_capacity(counts[start..=end].iter().sum::<u64>());
        let mut co = CoCounts::new(start, end + 1, n);
        for p in 0..m.state.parts_total {
            let cs = part_contexts(s, p);
            let part = Part::read(&layout.part(p), cs.len(), ctx, n)?;
            for row in 0..part.rows() {
                let (lat, val) = part.row(row);
                let a = lat.partition_point(|&j| (j as usize) < start);
                let b = lat.partition_point(|&j| (j as usize) <= end);
                if a == b {
                    continue;
                }
                let seq = (cs.start + row / ctx) as u32;
                let pos = (row % ctx) as u32;
                for (&j, &v) in lat[a..b].iter().zip(&val[a..b]) {
                    let off = j as usize - start;
                    entries[off].push(Entry { seq, pos, value: v });
                    delphi.push(seq, pos, off as u32, v);
                }
            }
            co.add_part(&part);
        }
        let logits = logit_tables(dec, w_u, start..end + 1, &s.tables);
        let neighbours =
            decoder_neighbours(&normalised, dec.d, start..end + 1, s.tables.neighbours);
        let records: Vec<LatentRecord> = (0..len)
            .into_par_iter()
            .map(|o| {
                let i = start + o;
                let a = latent_stats(i as u32, &entries[o], s.positions, s.seed, &s.stats);
                LatentRecord {
                    latent: i as u32,
                    count: a.count,
                    density: a.density,
                    max: a.max,
                    min: a.min,
                    mean: a.mean,
                    histogram: a.histogram,
                    top: a.top,
                    intervals: a.intervals,
                    quantiles: a.quantiles,
                    logits: logits[o].clone(),
                    decoder_norm: norms[i],
                    decoder_neighbours: neighbours[o].clone(),
                    cooccurrence_neighbours: jaccard_neighbours(
                        i,
                        co.row(i),
                        &counts,
                        s.tables.neighbours,
                    ),
                }
            })
            .collect();
        latent_cache::write_range(layout, &s.hook, start, end, &delphi, &tokens_i64, ctx)?;
        store::write_stats(layout, start, end, &records)?;
        m.state.ranges_done = r + 1;
        manifest::write(&layout.manifest(), m)?;
        on(Progress::Latents {
            done: (end + 1) as u64,
            total: n as u64,
            resumed,
        });
    }
    Ok(all_ranges.len() - first)
}
