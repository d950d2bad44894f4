//! Streaming training data: activations computed by the model as training goes, with
//! no cache, served as shuffled batches ([`StreamSource`], a
//! [`saelab_core::fit::BatchSource`]).
//!
//! # How rows are shuffled
//!
//! The contexts of the training part are visited in the plan's order
//! ([`crate::contexts::ContextPlan`]: by default a random permutation of all contexts,
//! a new one each epoch). They are cut into *windows* of `window_contexts` consecutive
//! contexts. A window is run through the model (in forwards of `batch_contexts`
//! contexts), its rows (non-BOS tokens, per hook) are permuted by a generator seeded
//! from `(seed, window index)`, and training batches are consecutive slices of the
//! permuted rows; a batch that reaches the end of a window continues in the next one.
//! A window is a shuffle buffer of about `window_contexts · ctx_len` rows: every batch
//! mixes rows of ~`window_contexts` contexts from unrelated places in the corpus.
//!
//! # Exact resumption, and what it costs
//!
//! Because the windows and their permutations are functions of `(seed, window index)`
//! alone, the position in the stream is two numbers, `(window, offset)` — the window
//! the next row comes from and how many of its rows were already served
//! ([`StreamState`], the JSON that checkpoints store). Restoring it re-runs the model
//! over that one window (at most `window_contexts` contexts, e.g. 256 × 128 tokens: a
//! few tens of seconds on 2 cores) and continues with exactly the batches the
//! uninterrupted run would have produced. The alternative — saving the buffered rows in
//! every checkpoint — would cost `rows · d · 4` bytes per run and hook (75 MB for a
//! 256-context window at d = 576) to save those seconds; saelab recomputes instead.
//! (Exactness assumes the same thread count: the forward is bit-reproducible for a
//! given batch composition, which the window fixes.)
//!
//! Several hooks are captured in the same forwards; stream `s` of
//! [`saelab_core::fit::BatchSource::next_batches`] is hook `s`, and every stream's batch
//! holds the same tokens in the same order. The rows a run sees do not depend on which
//! other hooks are captured beside it.

use saelab_core::fit::BatchSource;
use saelab_core::rng::Rng;
use saelab_core::Matrix;
use serde::{Deserialize, Serialize};

use crate::contexts::{run_contexts, CapturedRows, ContextPlan, ContextRef};
use crate::model::HookedModel;

/// Default contexts per shuffle window.
pub const DEFAULT_WINDOW_CONTEXTS: usize = 256;

/// Salt of the window permutations' generator (kept apart from the plan's epoch
/// permutations, which use the same seed).
const WINDOW_SALT: u64 = 0x5752_4F57_5748_4E44;

/// How a [`StreamSource`] reads the model.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StreamOptions {
    /// Hooks to capture (canonical names), one stream each.
    pub hooks: Vec<String>,
    /// Rows per training batch.
    pub batch_size: usize,
    /// Contexts per forward.
    pub batch_contexts: usize,
    /// Contexts per shuffle window.
    pub window_contexts: usize,
    /// Serve BOS rows too (default false).
    pub keep_bos: bool,
    /// Seed of the window permutations.
    pub seed: u64,
}

/// The position of a [`StreamSource`]: the next row is row `offset` of window
/// `window` (in its permuted order). `window_contexts` and `seed` are recorded so that
/// a restore with other settings is refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamState {
    /// Window of the next row.
    pub window: u64,
    /// Rows of that window already served.
    pub offset: u64,
    /// Contexts per window.
    pub window_contexts: u64,
    /// Permutation seed.
    pub seed: u64,
}

struct Window {
    index: u64,
    rows: CapturedRows,
    perm: Vec<u32>,
}

/// Shuffled training batches computed by the model from a [`ContextPlan`]; see the
/// module docs.
pub struct StreamSource<'a> {
    model: &'a HookedModel,
    plan: &'a ContextPlan,
    opts: StreamOptions,
    window: Option<Window>,
    pos: StreamState,
    epoch: Option<(u64, Vec<u32>)>,
    model_tokens: u64,
}

impl<'a> StreamSource<'a> {
    /// A source over `plan` (the training part), starting at the beginning or at a
    /// saved `state` ([`BatchSource::state`]). Checks the hooks against the model.
    pub fn new(
        model: &'a HookedModel,
        plan: &'a ContextPlan,
        opts: StreamOptions,
        state: Option<&serde_json::Value>,
    ) -> saelab_core::Result<Self> {
        if opts.hooks.is_empty() {
            return Err(saelab_core::Error::config("no hook to stream"));
        }
        for h in &opts.hooks {
            model.hook(h)?;
        }
        if opts.batch_size == 0 || opts.batch_contexts == 0 || opts.window_contexts == 0 {
            return Err(saelab_core::Error::config(
                "batch size, contexts per forward and contexts per window must be positive",
            ));
        }
        let pos = match state {
            None => StreamState {
                window: 0,
                offset: 0,
                window_contexts: opts.window_contexts as u64,
                seed: opts.seed,
            },
            Some(v) => {
                let s: StreamState = serde_json::from_value(v.clone()).map_err(|e| {
                    saelab_core::Error::config(format!(
                        "invalid stream position in checkpoint: {e}"
                    ))
                })?;
                if s.window_contexts != opts.window_contexts as u64 || s.seed != opts.seed {
                    return Err(saelab_core::Error::config(format!(
                        "the checkpoint's stream used {} contexts per window and seed {}, \
                         not {} and {}",
                        s.window_contexts, s.seed, opts.window_contexts, opts.seed
                    )));
                }
                s
            }
        };
        Ok(StreamSource {
            model,
            plan,
            opts,
            window: None,
            pos,
            epoch: None,
            model_tokens: 0,
        })
    }

    /// Tokens run through the model so far (BOS included).
    pub fn model_tokens(&self) -> u64 {
        self.model_tokens
    }

    /// Global context index `g` of the plan's multi-epoch stream.
    fn context(&mut self, g: u64) -> ContextRef<'a> {
        let n = self.plan.len() as u64;
        let (epoch, slot) = (g / n, (g % n) as usize);
        if self.epoch.as_ref().is_none_or(|(e, _)| *e != epoch) {
            self.epoch = Some((epoch, self.plan.epoch_order(epoch).into_owned()));
        }
        let packed = self.epoch.as_ref().expect("just set").1[slot] as usize;
        let plan: &'a ContextPlan = self.plan;
        plan.packed(packed, g)
    }

    /// Makes window `w` current: runs its contexts through the model and permutes its
    /// rows.
    fn load_window(&mut self, w: u64) -> saelab_core::Result<()> {
        if self.window.as_ref().is_some_and(|win| win.index == w) {
            return Ok(());
        }
        self.window = None;
        let wc = self.opts.window_contexts as u64;
        let mut rows = CapturedRows::new(self.opts.hooks.len(), self.model.d_model());
        let mut g = w * wc;
        while g < (w + 1) * wc {
            let end = (g + self.opts.batch_contexts as u64).min((w + 1) * wc);
            let batch: Vec<ContextRef<'a>> = (g..end).map(|i| self.context(i)).collect();
            let got = run_contexts(self.model, &self.opts.hooks, &batch, self.opts.keep_bos)?;
            self.model_tokens += (batch.len() * self.plan.ctx_len()) as u64;
            rows.append(&got);
            g = end;
        }
        if rows.rows == 0 {
            return Err(saelab_core::Error::config(format!(
                "window {w} of the stream holds no rows (every token is BOS)"
            )));
        }
        let mut perm: Vec<u32> = (0..rows.rows as u32).collect();
        Rng::new(self.opts.seed ^ WINDOW_SALT)
            .fork(w)
            .shuffle(&mut perm);
        self.window = Some(Window {
            index: w,
            rows,
            perm,
        });
        Ok(())
    }

    /// Up to `max_rows` rows of stream `stream` from the current window, evenly spaced
    /// in the window's unpermuted order, `[n, d]`. At the start of a run this is the
    /// data the SAE is initialised from (input scale, `b_dec`); it does not move the
    /// stream.
    pub fn sample(&mut self, stream: usize, max_rows: usize) -> saelab_core::Result<Matrix> {
        if stream >= self.opts.hooks.len() {
            return Err(saelab_core::Error::config(format!(
                "stream {stream} does not exist ({} hooks)",
                self.opts.hooks.len()
            )));
        }
        self.load_window(self.pos.window)?;
        let win = self.window.as_ref().expect("loaded");
        let d = win.rows.d;
        let n = win.rows.rows.min(max_rows.max(1));
        let step = win.rows.rows as f64 / n as f64;
        let mut m = Matrix::zeros(n, d);
        for i in 0..n {
            let r = (i as f64 * step) as usize;
            m.row_mut(i)
                .copy_from_slice(&win.rows.acts[stream][r * d..(r + 1) * d]);
        }
        Ok(m)
    }

    /// The stream's position.
    pub fn position(&self) -> StreamState {
        self.pos
    }
}

impl BatchSource for StreamSource<'_> {
    fn d(&self) -> usize {
        self.model.d_model()
    }

    fn streams(&self) -> usize {
        self.opts.hooks.len()
    }

    fn next_batch(&mut self, out: &mut Matrix) -> saelab_core::Result<()> {
        if self.opts.hooks.len() != 1 {
            return Err(saelab_core::Error::config(
                "this stream captures several hooks; read it with next_batches",
            ));
        }
        self.next_batches(std::slice::from_mut(out))
    }

    fn next_batches(&mut self, out: &mut [Matrix]) -> saelab_core::Result<()> {
        if out.len() != self.opts.hooks.len() {
            return Err(saelab_core::Error::config(format!(
                "{} output batches for {} streams",
                out.len(),
                self.opts.hooks.len()
            )));
        }
        let (b, d) = (self.opts.batch_size, self.model.d_model());
        for m in out.iter_mut() {
            m.rows = b;
            m.cols = d;
            m.data.resize(b * d, 0.0);
        }
        let mut filled = 0;
        while filled < b {
            self.load_window(self.pos.window)?;
            let win = self.window.as_ref().expect("loaded");
            let offset = self.pos.offset as usize;
            let take = (b - filled).min(win.rows.rows - offset);
            for (s, m) in out.iter_mut().enumerate() {
                let src = &win.rows.acts[s];
                for (j, &r) in win.perm[offset..offset + take].iter().enumerate() {
                    let r = r as usize;
                    m.row_mut(filled + j)
                        .copy_from_slice(&src[r * d..(r + 1) * d]);
                }
            }
            filled += take;
            self.pos.offset += take as u64;
            if self.pos.offset as usize == win.rows.rows {
                self.pos.window += 1;
                self.pos.offset = 0;
            }
        }
        Ok(())
    }

    fn state(&self) -> serde_json::Value {
        serde_json::to_value(self.pos).expect("serialisable")
    }
}

/// The first rows of `plan` (epoch 0, in its order), at most `max_rows` of them, for
/// each hook: `[n, d]` per hook. Used for a fixed validation set of held-out
/// activations. `on_rows` is called with the rows collected so far.
pub fn collect_rows(
    model: &HookedModel,
    plan: &ContextPlan,
    hooks: &[String],
    keep_bos: bool,
    batch_contexts: usize,
    max_rows: usize,
    mut on_rows: impl FnMut(usize),
) -> saelab_core::Result<Vec<Matrix>> {
    let d = model.d_model();
    let mut rows = CapturedRows::new(hooks.len(), d);
    let mut g = 0usize;
    while rows.rows < max_rows && g < plan.len() {
        let end = (g + batch_contexts.max(1)).min(plan.len());
        let batch: Vec<ContextRef<'_>> = (g..end).map(|i| plan.first_epoch(i)).collect();
        rows.append(&run_contexts(model, hooks, &batch, keep_bos)?);
        g = end;
        on_rows(rows.rows.min(max_rows));
    }
    let n = rows.rows.min(max_rows);
    rows.acts
        .into_iter()
        .map(|mut a| {
            a.truncate(n * d);
            Matrix::from_vec(n, d, a)
        })
        .collect()
}

/// Everything needed to rebuild the stream of a training run (recorded in `run.json`
/// under `data.stream`, one hook per run).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamSpec {
    /// Model path.
    pub model: std::path::PathBuf,
    /// [`crate::contexts::model_fingerprint`] at the start of the run.
    pub model_fingerprint: String,
    /// Corpus path.
    pub corpus: std::path::PathBuf,
    /// JSONL text field.
    pub jsonl_field: String,
    /// Fingerprint of the training part's documents.
    pub train_fingerprint: String,
    /// The hook this run reads.
    pub hook: String,
    /// Tokens per context.
    pub ctx_len: usize,
    /// Contexts per forward.
    pub batch_contexts: usize,
    /// Contexts per shuffle window.
    pub window_contexts: usize,
    /// Whether BOS rows are served.
    pub keep_bos: bool,
    /// Seed of the context order and of the window permutations.
    pub seed: u64,
    /// Held-out validation rows computed at the start.
    pub val_rows: usize,
    /// Held-out rule: every `held_out_every`-th document...
    pub held_out_every: u32,
    /// ... with `id % every == held_out_offset`.
    pub held_out_offset: u32,
}

impl StreamSpec {
    /// Whether two runs can share one pass over the model: equal but for the hook.
    pub fn same_pass(&self, other: &StreamSpec) -> bool {
        let mut o = other.clone();
        o.hook = self.hook.clone();
        *self == o
    }
}

#[cfg(test)]
mod tests;
