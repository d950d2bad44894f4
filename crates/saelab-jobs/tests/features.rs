//! The features pass on the real SmolLM2 model and corpus (see
//! `saelab_testkit::real_data`: each test skips with a message when they are absent, and
//! fails instead under CI), with an SAE built here (random TopK weights, so no
//! training is needed).
//!
//! - exactness: a dense brute force written here, from the model's activations encoded
//!   densely, gives exactly the streaming pass's counts, densities, histograms, top-20
//!   lists (value descending, ties by lower (sequence, position)), interval counts and
//!   membership, quantile slices and co-occurrence neighbours, and delphi's files hold
//!   exactly the active positions; the logit tables and decoder neighbours agree with an
//!   f64 computation;
//! - resume: a pass stopped in Stage A and again in Stage B, then continued, writes the
//!   same bytes as an uninterrupted pass;
//! - refusals: a folder of another SAE, a corrupt file, an SAE of the wrong width — one
//!   line each, naming the file;
//! - from a cache: a pass reading an f32 `saelab extract` cache writes the same files as
//!   the pass running the model over the same contexts; a cache of another hook or
//!   with a truncated shard is refused, naming the file.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use saelab_core::arch::{Registered, TopKConfig};
use saelab_core::config::SaeMetadata;
use saelab_core::format::save_sae;
use saelab_core::{Matrix, ParamSet, Sae, SaeConfig, Tensor};
use saelab_features::latent_cache::read_range;
use saelab_features::{Features, LatentRecord};
use saelab_jobs::extract::{extract, ExtractRequest};
use saelab_jobs::features::{features, FeaturesRequest};
use saelab_jobs::{Event, Phase};
use saelab_lm::model::{ForwardOptions, HookedModel};
use saelab_testkit::{lcg_uniform, real_data, serial};

const HOOK: &str = "blocks.3.hook_resid_post";

/// A TopK SAE of `n` latents on `d`-wide inputs with random weights from `seed`:
/// encoder columns random, decoder rows the unit-normalised encoder columns.
fn random_sae(d: usize, n: usize, k: usize, seed: u64) -> Sae {
    let (w_enc, w_dec) = saelab_testkit::tied_random_weights(d, n, seed, 1.0);
    let mut cfg = SaeConfig::new(TopKConfig::with_k(k).into(), d, n);
    cfg.metadata = SaeMetadata {
        hook_name: Some(HOOK.into()),
        ..SaeMetadata::default()
    };
    let mut p = ParamSet::new();
    p.insert("W_enc", Tensor::new(&[d, n], w_enc).unwrap());
    p.insert(
        "b_enc",
        Tensor::new(&[n], lcg_uniform(n, seed + 1, 0.5)).unwrap(),
    );
    p.insert("W_dec", Tensor::new(&[n, d], w_dec).unwrap());
    p.insert("b_dec", Tensor::new(&[d], vec![0.0; d]).unwrap());
    Sae::new(cfg, p).unwrap()
}

fn write_sae(sae: &Sae, dir: &Path) -> PathBuf {
    save_sae(sae, dir, None).unwrap();
    dir.to_path_buf()
}

fn request(sae: &Path, model: &Path, corpus: &Path, tokens: u64, out: &Path) -> FeaturesRequest {
    FeaturesRequest::new(
        sae.to_path_buf(),
        model.to_path_buf(),
        corpus.to_path_buf(),
        tokens,
        out.to_path_buf(),
    )
}

fn run(req: &FeaturesRequest) -> saelab_jobs::Result<saelab_jobs::features::FeaturesOutcome> {
    features(req, &AtomicBool::new(false), &mut |_| {})
}

/// The model's activations at the hook for every non-BOS position of the folder's
/// contexts, encoded densely: `(dense [rows, n], (seq, pos) of each row)`. The forwards
/// take the pass's batches of contexts (the same batches give the same floats).
fn brute_force(f: &Features, model: &HookedModel, sae: &Sae) -> (Vec<f32>, Vec<(u32, u32)>) {
    let s = &f.manifest().settings;
    let tokens = f.tokens().unwrap();
    let bos = s.model.bos_token_id.unwrap();
    let (ctx, n) = (s.ctx_len, s.sae.n_latents);
    let mut dense = Vec::new();
    let mut at = Vec::new();
    let seqs: Vec<&[u32]> = tokens.chunks(ctx).collect();
    for (b, batch) in seqs.chunks(s.batch_contexts).enumerate() {
        let fwd = model
            .forward(batch, &ForwardOptions::new().capture(HOOK))
            .unwrap();
        let acts = fwd.capture(HOOK).unwrap().as_slice();
        let d = model.d_model();
        let mut x = Vec::new();
        for (c, toks) in batch.iter().enumerate() {
            for (t, &tok) in toks.iter().enumerate() {
                if tok != bos {
                    let r = c * ctx + t;
                    x.extend_from_slice(&acts[r * d..(r + 1) * d]);
                    at.push(((b * s.batch_contexts + c) as u32, t as u32));
                }
            }
        }
        let m = Matrix::from_vec(x.len() / d, d, x).unwrap();
        dense.extend(sae.encode_dense(&m).unwrap().data);
    }
    assert_eq!(dense.len(), at.len() * n);
    (dense, at)
}

/// Every file under `dir`, by relative path.
fn files(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.insert(
                    p.strip_prefix(dir).unwrap().to_path_buf(),
                    std::fs::read(&p).unwrap(),
                );
            }
        }
    }
    out
}

#[test]
fn streaming_statistics_equal_a_dense_brute_force() {
    let Some(data) = real_data() else { return };
    let _serial = serial();
    let tmp = tempfile::tempdir().unwrap();
    let (d, n) = (576, 1536);
    let sae = random_sae(d, n, 16, 7);
    let sae_dir = write_sae(&sae, &tmp.path().join("sae"));
    let out = tmp.path().join("features");
    let mut req = request(&sae_dir, &data.model, &data.corpus, 20_000, &out);
    // Ranges of at most 512 latents and 60 000 entries (about 320 000 in all): the
    // planned ranges are uneven, and every boundary is checked below.
    req.range_size = 512;
    req.range_entries = 60_000;
    let t0 = Instant::now();
    let o = run(&req).unwrap();
    eprintln!(
        "pass: {} tokens x {n} latents in {:.1} s (cache {:.1} s, stats {:.1} s)",
        o.summary.positions,
        t0.elapsed().as_secs_f64(),
        o.summary.secs_cache,
        o.summary.secs_stats
    );
    let f = Features::open_for(&out, &sae).unwrap();
    let positions = f.manifest().settings.positions;
    assert!((20_000..20_000 + 128).contains(&positions));

    let model = HookedModel::load(&data.model).unwrap();
    let (dense, at) = brute_force(&f, &model, &sae);
    assert_eq!(at.len() as u64, positions);
    let (dense_ref, rows) = (&dense, at.len());
    let col = |j: usize| (0..rows).map(move |r| (r, dense_ref[r * n + j]));
    let recs: Vec<LatentRecord> = (0..n).map(|j| f.latent(j).unwrap()).collect();
    let mut compared = 0;
    let mut counts = vec![0u64; n];
    for (j, rec) in recs.iter().enumerate() {
        // Active positions in (seq, pos) order, and in rank order.
        let active: Vec<(u32, u32, f32)> = col(j)
            .filter(|&(_, v)| v != 0.0)
            .map(|(r, v)| (at[r].0, at[r].1, v))
            .collect();
        counts[j] = active.len() as u64;
        assert_eq!(rec.count, active.len() as u64, "latent {j}");
        assert_eq!(rec.density, active.len() as f64 / positions as f64);
        if active.is_empty() {
            assert!(rec.top.is_empty() && rec.histogram.heights.is_empty());
            continue;
        }
        let max = active.iter().map(|a| a.2).fold(f32::MIN, f32::max);
        let min = active.iter().map(|a| a.2).fold(f32::MAX, f32::min);
        let sum: f64 = active.iter().map(|a| a.2 as f64).sum();
        assert_eq!((rec.max, rec.min), (max, min), "latent {j}");
        assert_eq!(rec.mean, sum / active.len() as f64);
        // Histogram: 50 bins over [min, max] (widened by 1 when they are equal).
        let (lo, hi) = if min == max {
            (min as f64 - 1.0, max as f64 + 1.0)
        } else {
            (min as f64, max as f64)
        };
        let mut heights = vec![0u64; 50];
        for a in &active {
            let b = ((a.2 as f64 - lo) / (hi - lo) * 50.0)
                .floor()
                .clamp(0.0, 49.0);
            heights[b as usize] += 1;
        }
        assert_eq!(rec.histogram.heights, heights, "latent {j}");
        // Top 20: value descending, ties by lower (seq, pos).
        let mut ranked = active.clone();
        ranked.sort_by(|a, b| b.2.total_cmp(&a.2).then((a.0, a.1).cmp(&(b.0, b.1))));
        let top: Vec<(u32, u32, f32)> = rec.top.iter().map(|s| (s.seq, s.pos, s.value)).collect();
        assert_eq!(top, ranked[..ranked.len().min(20)].to_vec(), "latent {j}");
        compared += 1;
        for s in &rec.top {
            let window: Vec<(u32, f32)> = active
                .iter()
                .filter(|a| a.0 == s.seq)
                .map(|a| (a.1, a.2))
                .collect();
            assert_eq!(s.acts, window);
        }
        // Intervals of linspace(0, max, 6): counts over all positions, zeros included.
        assert_eq!(rec.intervals.len(), 5);
        for (k, g) in rec.intervals.iter().enumerate() {
            let (lo, hi) = (
                max as f64 * k as f64 / 5.0,
                if k == 4 {
                    max as f64
                } else {
                    max as f64 * (k + 1) as f64 / 5.0
                },
            );
            assert_eq!((g.lo, g.hi), (lo, hi));
            let inside = col(j)
                .filter(|&(_, v)| lo <= v as f64 && v as f64 <= hi)
                .count() as u64;
            assert_eq!(g.positions_in, inside, "latent {j} interval {k}");
            assert_eq!(g.contains, inside as f64 / positions as f64);
            let eligible = active
                .iter()
                .filter(|a| lo <= a.2 as f64 && a.2 as f64 <= hi)
                .count();
            assert_eq!(g.samples.len(), eligible.min(5));
            for s in &g.samples {
                assert!(s.value != 0.0 && lo <= s.value as f64 && s.value as f64 <= hi);
                assert!(active.contains(&(s.seq, s.pos, s.value)));
            }
        }
        // Quantiles: each sample's rank lies in its slice.
        let mut slice_total = 0;
        for q in &rec.quantiles {
            slice_total += q.rank_hi - q.rank_lo;
            for s in &q.samples {
                let r = ranked
                    .iter()
                    .position(|a| (a.0, a.1) == (s.seq, s.pos))
                    .unwrap() as u64;
                assert!(q.rank_lo <= r && r < q.rank_hi);
                assert_eq!(ranked[r as usize].2, s.value);
            }
        }
        assert_eq!(slice_total, active.len() as u64);
    }
    eprintln!("exact: {compared} top-20 lists of {n} latents over {positions} tokens");
    assert!(compared > n / 4, "only {compared} latents fire");

    // Co-occurrence neighbours of every 40th latent, over all latents.
    let actives: Vec<Vec<usize>> = (0..at.len())
        .map(|r| (0..n).filter(|&j| dense[r * n + j] != 0.0).collect())
        .collect();
    for i in (0..n).step_by(40) {
        let mut both = vec![0u64; n];
        for row in actives.iter().filter(|row| row.contains(&i)) {
            row.iter().for_each(|&j| both[j] += 1);
        }
        let mut cand: Vec<(u32, f64, u64)> = (0..n)
            .filter(|&j| j != i && both[j] > 0)
            .map(|j| {
                (
                    j as u32,
                    both[j] as f64 / (counts[i] + counts[j] - both[j]) as f64,
                    both[j],
                )
            })
            .collect();
        cand.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        cand.truncate(10);
        let got: Vec<(u32, f64, u64)> = recs[i]
            .cooccurrence_neighbours
            .iter()
            .map(|c| (c.latent, c.jaccard, c.both))
            .collect();
        assert_eq!(got, cand, "latent {i}");
    }

    // Logit tables and decoder neighbours against f64 products.
    let w_dec = &sae.params.get("W_dec").data;
    let w_u = model.unembedding();
    let v = model.vocab_size();
    let dot = |a: &[f32], b: &[f32]| {
        a.iter()
            .zip(b)
            .map(|(&x, &y)| x as f64 * y as f64)
            .sum::<f64>()
    };
    for i in (0..n).step_by(97) {
        let row = &w_dec[i * d..(i + 1) * d];
        let eff: Vec<f64> = (0..v).map(|t| dot(row, &w_u[t * d..(t + 1) * d])).collect();
        let mut sorted = eff.clone();
        sorted.sort_by(|a, b| b.total_cmp(a));
        let lt = &recs[i].logits;
        assert_eq!((lt.top.len(), lt.bottom.len()), (10, 10));
        for (k, tv) in lt.top.iter().enumerate() {
            assert!((tv.value as f64 - eff[tv.token as usize]).abs() < 1e-4);
            assert!(
                (eff[tv.token as usize] - sorted[k]).abs() < 1e-4,
                "latent {i} top {k}"
            );
        }
        for (k, tv) in lt.bottom.iter().enumerate() {
            assert!((eff[tv.token as usize] - sorted[v - 1 - k]).abs() < 1e-4);
        }
        assert_eq!(lt.histogram.heights.iter().sum::<u64>(), v as u64);
        assert_eq!(lt.histogram.heights.len(), 50);
        assert!(
            (lt.histogram.lo - sorted[v - 1]).abs() < 1e-4
                && (lt.histogram.hi - sorted[0]).abs() < 1e-4
        );
        let norm = |j: usize| dot(&w_dec[j * d..(j + 1) * d], &w_dec[j * d..(j + 1) * d]).sqrt();
        let mut cos: Vec<(usize, f64)> = (0..n)
            .filter(|&j| j != i)
            .map(|j| {
                (
                    j,
                    dot(row, &w_dec[j * d..(j + 1) * d]) / (norm(i) * norm(j)),
                )
            })
            .collect();
        cos.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        for (k, nb) in recs[i].decoder_neighbours.iter().enumerate() {
            assert!(
                (nb.cosine as f64 - cos[k].1).abs() < 1e-5,
                "latent {i} neighbour {k}"
            );
            let exact = cos.iter().find(|c| c.0 == nb.latent as usize).unwrap().1;
            assert!((exact - cos[k].1).abs() < 1e-5);
        }
    }

    // delphi's files: exactly the active positions, f16 values, the whole token matrix.
    let tokens = f.tokens().unwrap();
    let planned = &f.manifest().state.ranges;
    assert!(planned.len() > 3, "{planned:?}");
    for &(start, end) in planned {
        let held: u64 = (start..=end).map(|j| counts[j] as u64).sum();
        assert!(held <= 60_000 || start == end, "{start}_{end} holds {held}");
        let (r, toks, shape) = read_range(f.layout(), HOOK, start, end).unwrap();
        assert_eq!(shape, vec![f.manifest().settings.contexts, 128]);
        assert!(toks.iter().zip(&tokens).all(|(&a, &b)| a == b as i64));
        let want: usize = (start..=end).map(|j| counts[j] as usize).sum();
        assert_eq!(r.len(), want);
        let row_of: BTreeMap<(u32, u32), usize> =
            at.iter().enumerate().map(|(i, &k)| (k, i)).collect();
        for (loc, &a) in r.locations.chunks(3).zip(&r.activations) {
            let row = row_of[&(loc[0], loc[1])];
            let v = dense[row * n + start + loc[2] as usize];
            assert_eq!(a, half::f16::from_f32(v).to_f32());
        }
    }
}

#[test]
fn a_stopped_pass_continues_to_the_same_bytes() {
    let Some(data) = real_data() else { return };
    let _serial = serial();
    let tmp = tempfile::tempdir().unwrap();
    let sae = random_sae(576, 768, 8, 3);
    let sae_dir = write_sae(&sae, &tmp.path().join("sae"));
    let req = |out: &Path| {
        let mut r = request(&sae_dir, &data.model, &data.corpus, 4000, out);
        r.contexts_per_part = 8;
        r.range_size = 256;
        r.seed = 5;
        r
    };
    let whole = tmp.path().join("whole");
    run(&req(&whole)).unwrap();

    let cut = tmp.path().join("cut");
    // Stop in Stage A after 2 batches, then in Stage B after its first range.
    for (phase, after) in [(Phase::FeatureCache, 2), (Phase::FeatureStats, 1)] {
        let stop = AtomicBool::new(false);
        let mut seen = 0;
        let mut current = None;
        let e = features(&req(&cut), &stop, &mut |ev| match ev {
            Event::Begin { phase, .. } => current = Some(phase),
            Event::Advance { .. } if current == Some(phase) => {
                seen += 1;
                if seen > after {
                    stop.store(true, Ordering::SeqCst);
                }
            }
            _ => {}
        })
        .unwrap_err();
        assert!(e.is_interrupted(), "{e}");
    }
    let m = saelab_features::manifest::read(&cut.join("features.json")).unwrap();
    assert!(
        m.state.parts_done == m.state.parts_total && m.state.ranges_done == 1,
        "{:?}",
        m.state
    );
    let o = run(&req(&cut)).unwrap();
    assert_eq!((o.summary.parts_written, o.summary.ranges_written), (0, 2));
    assert_eq!(files(&whole), files(&cut));
    assert!(run(&req(&cut)).unwrap().summary.already_complete);

    // Another SAE: refused, naming the manifest; nothing changes.
    let other = random_sae(576, 768, 8, 4);
    let other_dir = write_sae(&other, &tmp.path().join("other"));
    let mut r2 = req(&cut);
    r2.sae = other_dir;
    let e = run(&r2).unwrap_err().to_string();
    assert!(
        e.contains("features.json") && e.contains("another SAE") && !e.contains('\n'),
        "{e}"
    );
    let e = Features::open_for(&cut, &other).unwrap_err().to_string();
    assert!(
        e.contains("features.json") && e.contains("another SAE"),
        "{e}"
    );
    assert_eq!(files(&whole), files(&cut));

    // Corrupt files: one line naming the file.
    let f = Features::open(&cut).unwrap();
    let stats = cut.join("stats/0_255.jsonl");
    let mut bytes = std::fs::read(&stats).unwrap();
    bytes[10..30].copy_from_slice(b"####################");
    std::fs::write(&stats, &bytes).unwrap();
    let e = f.latent(0).unwrap_err().to_string();
    assert!(
        e.contains("0_255.jsonl") && e.contains("latent 0") && !e.contains('\n'),
        "{e}"
    );
    assert!(f.latent(1).is_ok());
    let e = f.latent(768).unwrap_err().to_string();
    assert!(e.contains("latent 768 does not exist"), "{e}");
    std::fs::write(cut.join("features.json"), b"{\"format\": ").unwrap();
    let e = Features::open(&cut).unwrap_err().to_string();
    assert!(
        e.contains("features.json") && e.contains("not valid JSON") && !e.contains('\n'),
        "{e}"
    );
}

#[test]
fn an_sae_of_another_width_is_refused_naming_its_file() {
    let Some(data) = real_data() else { return };
    let _serial = serial();
    let tmp = tempfile::tempdir().unwrap();
    let sae = random_sae(64, 128, 4, 1);
    let sae_dir = write_sae(&sae, &tmp.path().join("narrow"));
    let out = tmp.path().join("features");
    let e = run(&request(&sae_dir, &data.model, &data.corpus, 1000, &out))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("narrow/cfg.json")
            && e.contains("d_in = 64")
            && e.contains("576")
            && !e.contains('\n'),
        "{e}"
    );
    assert!(!out.exists());
}

#[test]
fn an_f32_cache_gives_the_folder_of_the_forward() {
    let Some(data) = real_data() else { return };
    let _serial = serial();
    let tmp = tempfile::tempdir().unwrap();
    let sae = random_sae(576, 512, 8, 9);
    let sae_dir = write_sae(&sae, &tmp.path().join("sae"));
    // Shards of about 8 contexts, so that the pass's contexts span several.
    let acts = tmp.path().join("acts");
    let mut x = ExtractRequest::new(
        data.model.clone(),
        vec![HOOK.into()],
        data.corpus.clone(),
        5000,
        acts.clone(),
    );
    x.shard_rows = 1000;
    extract(&x, &AtomicBool::new(false), &mut |_| {}).unwrap();
    assert!(
        saelab_core::store::manifest::read_manifest(&acts)
            .unwrap()
            .shards
            .len()
            > 3
    );

    let forward = tmp.path().join("forward");
    let from_cache = tmp.path().join("cache");
    let tokens = 3000;
    let o = run(&request(
        &sae_dir,
        &data.model,
        &data.corpus,
        tokens,
        &forward,
    ))
    .unwrap();
    let cached = FeaturesRequest::from_cache(
        sae_dir.clone(),
        data.model.clone(),
        acts.clone(),
        tokens,
        from_cache.clone(),
    );
    let c = run(&cached).unwrap();
    assert_eq!(
        (c.summary.contexts, c.summary.positions),
        (o.summary.contexts, o.summary.positions)
    );
    // Every file but the manifest is the same, byte for byte; the manifests differ in
    // where the activations came from.
    let (mut a, mut b) = (files(&forward), files(&from_cache));
    let manifest = PathBuf::from("features.json");
    a.remove(&manifest);
    b.remove(&manifest);
    assert_eq!(a.keys().collect::<Vec<_>>(), b.keys().collect::<Vec<_>>());
    for (k, v) in &a {
        assert!(v == &b[k], "{} differs", k.display());
    }
    let read = |d: &Path| saelab_features::manifest::read(&d.join("features.json")).unwrap();
    let (ma, mb) = (read(&forward), read(&from_cache));
    assert_eq!(ma.settings.activations, None);
    let info = mb.settings.activations.clone().unwrap();
    assert_eq!(
        (info.dtype.as_str(), info.order.as_str()),
        ("f32", "shuffled (seed 0)")
    );
    let mut sb = mb.settings.clone();
    sb.activations = None;
    assert_eq!(ma.settings.difference(&sb), None);
    assert_eq!(ma.state, mb.state);
    // The two folders are not interchangeable: a rerun of one from the other source is
    // refused, naming the manifest.
    let mut other = cached.clone();
    other.out = forward.clone();
    let e = run(&other).unwrap_err().to_string();
    assert!(
        e.contains("features.json") && e.contains("activation cache"),
        "{e}"
    );

    // A cache of another hook, or with a truncated shard: one line naming the file.
    let mut sae4 = random_sae(576, 512, 8, 9);
    sae4.cfg.metadata.hook_name = Some("blocks.4.hook_resid_post".into());
    let sae4_dir = write_sae(&sae4, &tmp.path().join("sae4"));
    let mut r = cached.clone();
    r.sae = sae4_dir;
    r.out = tmp.path().join("hook4");
    let e = run(&r).unwrap_err().to_string();
    assert!(
        e.contains("acts/manifest.json") && e.contains("blocks.4") && !e.contains('\n'),
        "{e}"
    );
    assert!(!r.out.exists());
    let shard = acts.join("shard-00001.safetensors");
    let len = std::fs::metadata(&shard).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&shard)
        .unwrap()
        .set_len(len / 2)
        .unwrap();
    let mut r = cached.clone();
    r.out = tmp.path().join("truncated");
    let e = run(&r).unwrap_err().to_string();
    assert!(
        e.contains("shard-00001.safetensors") && !e.contains('\n'),
        "{e}"
    );
    assert!(!r.out.exists());
}
