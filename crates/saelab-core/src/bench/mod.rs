//! The training-step benchmark of `docs/bench.md` (workloads W1–W4).
//!
//! Each workload trains a `d × n` SAE through the real [`Trainer`] on synthetic
//! activations held in memory (batches of `B` rows, cycled), on a rayon pool of
//! `threads` threads:
//!
//! 1. settling steps (W2, W3: until L0 has come down to its working range),
//! 2. `warmup` fast steps and `reference_warmup` reference steps, untimed;
//! 3. `reference_steps` timed rounds, each: one dense product `[B, d] × [d, n]`, a share
//!    of the `steps` fast steps, and one step of the same trainer switched to the dense
//!    reference kernels ([`Trainer::set_reference_kernels`]: dense decoder, dense
//!    gradients — the same maths, computed the way a plain tensor framework does).
//!    Interleaving makes the three see the same conditions when other programs share
//!    the machine, so their ratios hold even when absolute times do not.
//!
//! The dense product is computed with the GEMM the encoder uses
//! ([`crate::kernels::encoder`]), timed once at the start and in every round; each
//! workload's *roofline fraction* is `median product time (its rounds) ÷ median fast
//! step time`: the encoder forward is the only dense product a TopK-family step needs.
//! The same ratio in process CPU seconds is reported too.
//!
//! Workloads (`docs/bench.md`; the choices it leaves open are fixed here):
//!
//! | id | architecture | settings |
//! |---|---|---|
//! | W1 | TopK | k = 32, AuxK k_aux = 256, coefficient 1/32; unit-norm decoder rows |
//! | W2 | ReLU + L1 | λ = [`W2_L1`], settled until L0 ≤ [`SETTLE_L0`] |
//! | W3 | JumpReLU | bandwidth 0.001, λ = [`W3_L0`], θ₀ = [`W3_INIT_THRESHOLD`] |
//! | W4 | BatchTopK | k = 32, AuxK as W1 |
//!
//! Dead latents: on this data every latent fires within the first batches, so with
//! tracking alone the AuxK term of W1/W4 would never run in a short benchmark. W1 and W4
//! therefore count every [`BenchConfig::dead_every`]-th latent as dead
//! ([`Trainer::set_forced_dead`]; 1 % by default, more than the 0.9 % peak seen at any
//! logged step of the README main job's 16× TopK run on SmolLM2; `dead_every = 20`, 5 %,
//! is the stress setting), so that AuxK selects and trains up to `k_aux` latents per
//! token among them in every timed step. The reference steps use the same dead set.
//! The learning rate is the default 4·10⁻⁴ with no decay.

use std::time::Instant;

use serde::Serialize;

use crate::config::{ArchConfig, SaeConfig};
use crate::error::{Error, Result};
use crate::kernels;
use crate::synth::{generate, SynthConfig};
use crate::tensor::Matrix;
use crate::train::{BDecInit, TrainConfig, Trainer};

/// λ of the W2 L1 penalty (norm-weighted, April-2024 form) on the synthetic data.
pub const W2_L1: f32 = 4.0;
/// λ of the W3 L0 penalty.
pub const W3_L0: f32 = 1e-2;
/// Initial JumpReLU threshold of W3 (normalised inputs), chosen so that L0 starts in
/// its working range instead of at ~n/2 (a threshold learnt from 10⁻³ needs many
/// thousand steps to get there).
pub const W3_INIT_THRESHOLD: f32 = 1.6;
/// Settling: W2/W3 train (untimed) until the batch L0 is at most this value.
pub const SETTLE_L0: f64 = 64.0;
/// Learning rate of the settling steps (ten times the default, to reach the working
/// sparsity in tens rather than hundreds of steps; the timed steps use the default).
pub const SETTLE_LR: f32 = 4e-3;

/// One of `docs/bench.md`'s training-step workloads.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum WorkloadId {
    /// TopK, k = 32, AuxK on.
    W1,
    /// ReLU + L1.
    W2,
    /// JumpReLU.
    W3,
    /// BatchTopK, k = 32.
    W4,
}

impl WorkloadId {
    /// All four, in order.
    pub const ALL: [WorkloadId; 4] = [
        WorkloadId::W1,
        WorkloadId::W2,
        WorkloadId::W3,
        WorkloadId::W4,
    ];

    /// Parses `w1`…`w4` (case-insensitive).
    pub fn parse(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "w1" => Ok(WorkloadId::W1),
            "w2" => Ok(WorkloadId::W2),
            "w3" => Ok(WorkloadId::W3),
            "w4" => Ok(WorkloadId::W4),
            _ => Err(Error::config(format!(
                "unknown workload {s:?}: expected w1, w2, w3 or w4"
            ))),
        }
    }

    /// The architecture this workload trains.
    pub fn arch(self) -> ArchConfig {
        match self {
            WorkloadId::W1 => ArchConfig::Topk(crate::arch::TopKConfig {
                k: 32,
                aux_k: 256,
                aux_coefficient: 1.0 / 32.0,
            }),
            WorkloadId::W2 => ArchConfig::Relu(crate::arch::ReluConfig {
                l1_coefficient: W2_L1,
            }),
            WorkloadId::W3 => ArchConfig::Jumprelu(crate::arch::JumpReluConfig {
                l0_coefficient: W3_L0,
                bandwidth: 1e-3,
                init_threshold: W3_INIT_THRESHOLD,
            }),
            WorkloadId::W4 => ArchConfig::Batchtopk(crate::arch::BatchTopKConfig {
                k: 32,
                aux_k: 256,
                aux_coefficient: 1.0 / 32.0,
                threshold_momentum: 0.01,
            }),
        }
    }

    /// One-line description of the settings.
    pub fn settings(self) -> String {
        match self {
            WorkloadId::W1 => "TopK k=32, AuxK k_aux=256 c=1/32, unit-norm decoder".into(),
            WorkloadId::W2 => format!("ReLU + L1 (April 2024), lambda={W2_L1}"),
            WorkloadId::W3 => {
                format!("JumpReLU bandwidth=0.001, lambda={W3_L0}, theta0={W3_INIT_THRESHOLD}")
            }
            WorkloadId::W4 => "BatchTopK k=32, AuxK k_aux=256 c=1/32".into(),
        }
    }

    fn has_auxk(self) -> bool {
        matches!(self, WorkloadId::W1 | WorkloadId::W4)
    }

    fn settles(self) -> bool {
        matches!(self, WorkloadId::W2 | WorkloadId::W3)
    }
}

/// What to run.
#[derive(Clone, Debug, Serialize)]
pub struct BenchConfig {
    /// Workloads, in order.
    pub workloads: Vec<WorkloadId>,
    /// Activation width d.
    pub d: usize,
    /// Latents n.
    pub n: usize,
    /// Tokens per step B.
    pub batch: usize,
    /// Threads of the rayon pool everything runs on.
    pub threads: usize,
    /// Untimed fast steps before the timed ones.
    pub warmup: usize,
    /// Timed fast steps.
    pub steps: usize,
    /// Untimed reference steps before the timed ones.
    pub reference_warmup: usize,
    /// Timed reference steps (0 skips the reference and the speed-up).
    pub reference_steps: usize,
    /// Most settling steps for W2/W3 (stops earlier once L0 ≤ [`SETTLE_L0`]).
    pub max_settle_steps: usize,
    /// Timed repetitions of the dense product for the peak.
    pub gemm_reps: usize,
    /// Distinct synthetic batches held in memory (cycled).
    pub data_batches: usize,
    /// W1/W4: every this-many-th latent counts as dead (0: tracking only).
    pub dead_every: usize,
    /// Seed of the data and of the SAE initialisation.
    pub seed: u64,
}

impl Default for BenchConfig {
    /// `docs/bench.md`'s settings: d = 576, n = 9216, B = 4096, 2 threads, 5 + 20 steps.
    fn default() -> Self {
        BenchConfig {
            workloads: WorkloadId::ALL.to_vec(),
            d: 576,
            n: 9216,
            batch: 4096,
            threads: 2,
            warmup: 5,
            steps: 20,
            reference_warmup: 2,
            reference_steps: 5,
            max_settle_steps: 400,
            gemm_reps: 10,
            data_batches: 8,
            dead_every: 100,
            seed: 0,
        }
    }
}

/// Timing of the dense `[B, d] × [d, n]` product.
#[derive(Clone, Debug, Serialize)]
pub struct GemmPeak {
    /// Which implementation (the encoder's GEMM).
    pub backend: String,
    /// Floating-point operations of one product, `2·B·d·n`.
    pub flops: f64,
    /// Median seconds of one product.
    pub median_s: f64,
    /// Fastest repetition, seconds.
    pub best_s: f64,
    /// `flops / median_s / 1e9`.
    pub gflops: f64,
    /// Process CPU seconds per product (Linux; `None` elsewhere).
    pub cpu_s: Option<f64>,
}

/// Step-time statistics of one kernel set.
#[derive(Clone, Debug, Serialize)]
pub struct StepTimes {
    /// Timed steps.
    pub steps: usize,
    /// Median wall-clock seconds per step.
    pub median_s: f64,
    /// Fastest step, seconds.
    pub best_s: f64,
    /// Tokens per second at the median step time.
    pub tokens_per_s: f64,
    /// Process CPU seconds per step over the timed steps (Linux; `None` elsewhere):
    /// close to `threads × median_s` when the machine was otherwise idle.
    pub cpu_s_per_step: Option<f64>,
    /// Mean L0 over the timed steps.
    pub l0: f64,
    /// Mean dead fraction over the timed steps.
    pub dead_frac: f64,
    /// Loss of the last timed step.
    pub last_loss: f64,
    /// Mean AuxK term over the timed steps (0 when inactive).
    pub aux: f64,
}

/// Result of one workload.
#[derive(Clone, Debug, Serialize)]
pub struct WorkloadResult {
    /// W1…W4.
    pub id: WorkloadId,
    /// Architecture name.
    pub architecture: String,
    /// Settings in words.
    pub settings: String,
    /// Untimed settling steps run before warm-up.
    pub settle_steps: usize,
    /// The fast kernels.
    pub fast: StepTimes,
    /// The dense reference kernels (same trainer, continued).
    pub reference: Option<StepTimes>,
    /// The dense product as timed in this workload's rounds (interleaved with its steps).
    pub gemm: GemmPeak,
    /// `gemm.median_s` ÷ fast median step time.
    pub roofline_fraction: f64,
    /// The same ratio in process CPU seconds (product CPU time ÷ step CPU time), less
    /// sensitive to other programs taking turns on the cores (Linux only).
    pub roofline_fraction_cpu: Option<f64>,
    /// Reference median ÷ fast median.
    pub speedup: Option<f64>,
}

/// Everything a run measured.
#[derive(Clone, Debug, Serialize)]
pub struct BenchReport {
    /// What was run.
    pub config: BenchConfig,
    /// The dense-product peak measured in this run.
    pub gemm: GemmPeak,
    /// One entry per workload.
    pub workloads: Vec<WorkloadResult>,
}

/// Process CPU time (user + system) in seconds, from `/proc/self/stat` (Linux only).
pub fn cpu_seconds() -> Option<f64> {
    let s = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the command name (which is in parentheses and may contain spaces).
    let rest = &s[s.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = f.get(11)?.parse().ok()?;
    let stime: f64 = f.get(12)?.parse().ok()?;
    Some((utime + stime) / 100.0) // USER_HZ is 100 on Linux
}

/// Median of `v` (sorts it); NaN when empty.
pub fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n == 0 {
        return f64::NAN;
    }
    if n % 2 == 1 {
        v[n / 2]
    } else {
        0.5 * (v[n / 2 - 1] + v[n / 2])
    }
}

/// The encoder's dense product `[B, d] × [d, n]` on random data, ready to be timed.
struct Product {
    x: Matrix,
    w: Vec<f32>,
    bias: Vec<f32>,
    out: Matrix,
}

impl Product {
    fn new(b: usize, d: usize, n: usize, seed: u64) -> Self {
        let mut rng = crate::rng::Rng::new(seed ^ 0x6e6d);
        let x = Matrix::from_vec(b, d, (0..b * d).map(|_| rng.normal() as f32).collect())
            .expect("shape");
        let w: Vec<f32> = (0..d * n).map(|_| rng.normal() as f32 * 0.05).collect();
        Product {
            x,
            w,
            bias: vec![0.0; n],
            out: Matrix::zeros(b, n),
        }
    }

    /// Wall seconds of one product.
    fn time(&mut self) -> f64 {
        let t = Instant::now();
        kernels::encoder::dense_product(&self.x, &self.w, &self.bias, &mut self.out);
        t.elapsed().as_secs_f64()
    }

    fn flops(&self) -> f64 {
        2.0 * (self.x.rows * self.x.cols * self.bias.len()) as f64
    }

    fn peak(&self, mut times: Vec<f64>, cpu_s: Option<f64>) -> GemmPeak {
        let best_s = times.iter().copied().fold(f64::INFINITY, f64::min);
        let median_s = median(&mut times);
        GemmPeak {
            backend: kernels::encoder::backend_name().to_string(),
            flops: self.flops(),
            median_s,
            best_s,
            gflops: self.flops() / median_s / 1e9,
            cpu_s,
        }
    }
}

/// Times the encoder's dense product `[B, d] × [d, n]` `reps` times (after one warm-up).
pub fn measure_gemm_peak(b: usize, d: usize, n: usize, reps: usize, seed: u64) -> GemmPeak {
    let mut p = Product::new(b, d, n, seed);
    p.time();
    let cpu0 = cpu_seconds();
    let times: Vec<f64> = (0..reps.max(1)).map(|_| p.time()).collect();
    let cpu = match (cpu0, cpu_seconds()) {
        (Some(a), Some(b)) => Some((b - a) / reps.max(1) as f64),
        _ => None,
    };
    p.peak(times, cpu)
}

/// Step samples of one kernel set.
#[derive(Default)]
struct Samples {
    times: Vec<f64>,
    cpu: f64,
    cpu_ok: bool,
    l0: f64,
    dead: f64,
    aux: f64,
    last_loss: f64,
}

impl Samples {
    fn step(&mut self, t: &mut Trainer, batch: &Matrix) -> Result<()> {
        let c0 = cpu_seconds();
        let t0 = Instant::now();
        let r = t.step(batch)?;
        self.times.push(t0.elapsed().as_secs_f64());
        match (c0, cpu_seconds()) {
            (Some(a), Some(b)) => {
                self.cpu += b - a;
                self.cpu_ok = true;
            }
            _ => self.cpu_ok = false,
        }
        self.l0 += r.l0;
        self.dead += r.dead_frac;
        self.aux += r
            .terms
            .iter()
            .find(|(n, _)| *n == "aux")
            .map_or(0.0, |t| t.1);
        self.last_loss = r.loss;
        Ok(())
    }

    fn finish(mut self, rows: usize) -> StepTimes {
        let steps = self.times.len();
        let s = steps.max(1) as f64;
        let best_s = self.times.iter().copied().fold(f64::INFINITY, f64::min);
        let median_s = median(&mut self.times);
        StepTimes {
            steps,
            median_s,
            best_s,
            tokens_per_s: rows as f64 / median_s,
            cpu_s_per_step: self.cpu_ok.then(|| self.cpu / s),
            l0: self.l0 / s,
            dead_frac: self.dead / s,
            last_loss: self.last_loss,
            aux: self.aux / s,
        }
    }
}

/// Synthetic activations for the benchmark: `batches` batches of `[b, d]`, from a
/// dictionary of `2n` power-law-frequency features with 32 active per sample on average.
pub fn bench_data(d: usize, n: usize, b: usize, batches: usize, seed: u64) -> Result<Vec<Matrix>> {
    let cfg = SynthConfig {
        d,
        n_features: 2 * n,
        avg_active: 32.0f64.min(2.0 * n as f64),
        seed,
        ..SynthConfig::default()
    };
    let all = generate(&cfg, b * batches.max(1))?.x;
    Ok((0..batches.max(1))
        .map(|i| all.slice_rows(i * b, (i + 1) * b))
        .collect())
}

/// Runs one workload on `data` (already inside the thread pool).
pub fn run_workload(
    cfg: &BenchConfig,
    id: WorkloadId,
    data: &[Matrix],
    progress: &mut (dyn FnMut(&str) + Send),
) -> Result<WorkloadResult> {
    let arch = id.arch();
    let train = TrainConfig {
        batch_size: cfg.batch,
        total_tokens: (cfg.batch as u64) << 30,
        lr_decay_fraction: 0.0,
        dead_after_tokens: 1_000_000,
        b_dec_init: BDecInit::Mean,
        seed: cfg.seed,
        ..TrainConfig::default()
    };
    let sae = SaeConfig::new(arch.clone(), cfg.d, cfg.n);
    let mut t = Trainer::new(train, sae, &data[0])?;
    if id.has_auxk() && cfg.dead_every > 0 {
        t.set_forced_dead(Some((0..cfg.n).map(|j| j % cfg.dead_every == 0).collect()))?;
    }
    let mut pos = 0usize;
    let mut settle_steps = 0;
    if id.settles() {
        t.set_learning_rate(SETTLE_LR)?;
        while settle_steps < cfg.max_settle_steps {
            let r = t.step(&data[pos % data.len()])?;
            pos += 1;
            settle_steps += 1;
            if settle_steps % 10 == 0 {
                progress(&format!(
                    "{id:?}: settling, step {settle_steps}, L0 {:.1}",
                    r.l0
                ));
            }
            if r.l0 <= SETTLE_L0 {
                break;
            }
        }
        t.set_learning_rate(TrainConfig::default().lr)?;
    }
    // Warm-up of both kernel sets and of the product.
    for _ in 0..cfg.warmup {
        t.step(&data[pos % data.len()])?;
        pos += 1;
    }
    let with_ref = cfg.reference_steps > 0;
    if with_ref {
        t.set_reference_kernels(true);
        for _ in 0..cfg.reference_warmup {
            t.step(&data[pos % data.len()])?;
            pos += 1;
        }
        t.set_reference_kernels(false);
    }
    let mut product = Product::new(cfg.batch, cfg.d, cfg.n, cfg.seed);
    product.time();
    // Timed rounds: one product, a share of the fast steps, one reference step — so
    // that all three see the same conditions on a shared machine.
    let rounds = if with_ref {
        cfg.reference_steps
    } else {
        cfg.gemm_reps.clamp(1, 5)
    };
    let per_round = cfg.steps.div_ceil(rounds);
    progress(&format!(
        "{id:?}: timing {rounds} rounds of 1 product, {per_round} fast steps{}",
        if with_ref { ", 1 reference step" } else { "" }
    ));
    let (mut fast, mut slow) = (Samples::default(), Samples::default());
    let (mut ptimes, mut pcpu, mut pcpu_ok) = (Vec::new(), 0.0, true);
    for _ in 0..rounds {
        let c0 = cpu_seconds();
        ptimes.push(product.time());
        match (c0, cpu_seconds()) {
            (Some(a), Some(b)) => pcpu += b - a,
            _ => pcpu_ok = false,
        }
        for _ in 0..per_round {
            fast.step(&mut t, &data[pos % data.len()])?;
            pos += 1;
        }
        if with_ref {
            t.set_reference_kernels(true);
            slow.step(&mut t, &data[pos % data.len()])?;
            pos += 1;
            t.set_reference_kernels(false);
        }
    }
    let local = product.peak(ptimes, pcpu_ok.then(|| pcpu / rounds as f64));
    let fast = fast.finish(cfg.batch);
    let reference = with_ref.then(|| slow.finish(cfg.batch));
    progress(&format!(
        "{id:?}: product {:.3} s, fast step {:.3} s{}",
        local.median_s,
        fast.median_s,
        reference.as_ref().map_or(String::new(), |r| format!(
            ", reference step {:.3} s",
            r.median_s
        ))
    ));
    Ok(WorkloadResult {
        id,
        architecture: arch.name().to_string(),
        settings: id.settings(),
        settle_steps,
        roofline_fraction: local.median_s / fast.median_s,
        roofline_fraction_cpu: match (local.cpu_s, fast.cpu_s_per_step) {
            (Some(a), Some(b)) if b > 0.0 => Some(a / b),
            _ => None,
        },
        gemm: local,
        speedup: reference.as_ref().map(|r| r.median_s / fast.median_s),
        fast,
        reference,
    })
}

/// Runs the benchmark: data, the GEMM peak, then every workload, on a pool of
/// `cfg.threads` threads. `progress` receives one-line status messages.
pub fn run(cfg: &BenchConfig, progress: &mut (dyn FnMut(&str) + Send)) -> Result<BenchReport> {
    if cfg.d == 0 || cfg.n == 0 || cfg.batch == 0 || cfg.threads == 0 || cfg.steps == 0 {
        return Err(Error::config(
            "bench: d, n, batch, threads and steps must be positive",
        ));
    }
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(cfg.threads)
        .build()
        .map_err(|e| Error::config(format!("bench: cannot start {} threads: {e}", cfg.threads)))?;
    pool.install(|| {
        progress("generating synthetic data");
        let data = bench_data(cfg.d, cfg.n, cfg.batch, cfg.data_batches, cfg.seed)?;
        progress("measuring the dense product peak");
        let gemm = measure_gemm_peak(cfg.batch, cfg.d, cfg.n, cfg.gemm_reps, cfg.seed);
        progress(&format!(
            "peak {:.0} GFLOP/s ({:.3} s per product)",
            gemm.gflops, gemm.median_s
        ));
        let mut workloads = Vec::new();
        for &id in &cfg.workloads {
            workloads.push(run_workload(cfg, id, &data, progress)?);
        }
        Ok(BenchReport {
            config: cfg.clone(),
            gemm,
            workloads,
        })
    })
}

/// The report as a Markdown table.
pub fn format_table(r: &BenchReport) -> String {
    let mut s = format!(
        "dense [{}x{}]x[{}x{}] product ({}), at the start: {:.0} GFLOP/s, {:.1} ms\n\n",
        r.config.batch,
        r.config.d,
        r.config.d,
        r.config.n,
        r.gemm.backend,
        r.gemm.gflops,
        r.gemm.median_s * 1e3
    );
    s.push_str(
        "| id | arch | step (ms) | tokens/s | product (ms) | roofline | roofline (CPU s) | reference step (ms) | speed-up | L0 | dead |\n",
    );
    s.push_str("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n");
    for w in &r.workloads {
        let (rs, sp) = match (&w.reference, w.speedup) {
            (Some(rf), Some(sp)) => (format!("{:.0}", rf.median_s * 1e3), format!("{sp:.1}x")),
            _ => ("-".into(), "-".into()),
        };
        let cpu = w
            .roofline_fraction_cpu
            .map_or("-".to_string(), |v| format!("{v:.2}"));
        s.push_str(&format!(
            "| {:?} | {} | {:.1} | {:.0} | {:.1} | {:.2} | {} | {} | {} | {:.1} | {:.3} |\n",
            w.id,
            w.architecture,
            w.fast.median_s * 1e3,
            w.fast.tokens_per_s,
            w.gemm.median_s * 1e3,
            w.roofline_fraction,
            cpu,
            rs,
            sp,
            w.fast.l0,
            w.fast.dead_frac
        ));
    }
    s
}
