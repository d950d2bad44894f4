//! The key/value cache of an incremental forward, family-neutral: for every block and
//! every stream of a batch, the (rotated) keys and the values of the positions the
//! stream has seen so far.
//!
//! A stream is one token sequence being extended (one prompt of a generation). Streams
//! have their own lengths, so prompts of different lengths decode together in one
//! batch: [`crate::model::HookedModel::forward_cached`] runs new tokens for any subset
//! of the streams, each at its own positions `len..len + T`. The family's blocks
//! append the new keys and values layer by layer; the driver commits the new lengths
//! only when the whole forward succeeded, and otherwise drops what was appended, so a
//! failed forward (a patch returning an error) leaves the cache as it was.
//!
//! Memory: `2 · n_layers · width · 4` bytes per position and stream (SmolLM2-135M:
//! 30 blocks × 2 × 192 values, 46 KB per position). A block with a sliding window `w`
//! (Gemma 3's local blocks) keeps only the positions a later query can still see, at
//! most `w + TRIM_SLACK` rows per stream between forwards: its memory is bounded
//! however long the stream grows.

use super::activation::Placement;

/// Rows past a window a block may hold before they are dropped: dropping in steps of
/// this many keeps the copy of the remaining rows to once per this many tokens.
const TRIM_SLACK: usize = 64;

/// The keys and values of one stream at one block: `[rows, width]` each, row `r`
/// holding absolute position `first + r` (`first` is 0 unless a window dropped the
/// positions before it).
#[derive(Clone, Debug, Default)]
pub(crate) struct LayerKv {
    /// Keys, RoPE already applied, `[rows, width]`.
    pub keys: Vec<f32>,
    /// Values `[rows, width]`.
    pub values: Vec<f32>,
    /// Absolute position of row 0.
    pub first: usize,
}

/// Keys and values of the positions seen so far, per block, for a batch of streams of
/// their own lengths. Made for one model by [`crate::model::HookedModel::kv_cache`]
/// and grown by [`crate::model::HookedModel::forward_cached`].
#[derive(Clone, Debug)]
pub struct KvCache {
    /// Values per position of the keys (and of the values) at one block.
    width: usize,
    /// `[layer][stream]`.
    layers: Vec<Vec<LayerKv>>,
    /// Per block, the sliding window of its attention (`None`: every position).
    windows: Vec<Option<usize>>,
    /// Committed positions per stream.
    lens: Vec<usize>,
}

impl KvCache {
    /// An empty cache of `batch` streams for a model whose blocks have these sliding
    /// windows (one entry per block, `None` for full attention) and whose keys and
    /// values are `width` wide.
    pub(crate) fn new(windows: Vec<Option<usize>>, width: usize, batch: usize) -> Self {
        KvCache {
            width,
            layers: vec![vec![LayerKv::default(); batch]; windows.len()],
            windows,
            lens: vec![0; batch],
        }
    }

    /// Positions block `layer` holds for stream `s`: all of them, or for a block with
    /// a window `w`, at most `w + 64` (the last ones).
    pub fn held_positions(&self, layer: usize, s: usize) -> usize {
        self.layers[layer][s].keys.len() / self.width
    }

    /// Number of streams.
    pub fn batch(&self) -> usize {
        self.lens.len()
    }

    /// Positions stream `s` holds: the absolute position its next token takes.
    pub fn stream_len(&self, s: usize) -> usize {
        self.lens[s]
    }

    /// Positions of every stream.
    pub fn lens(&self) -> &[usize] {
        &self.lens
    }

    /// A cache of `n` streams, each a copy of stream `s` of this one: a prefix shared
    /// by many sequences is run once, and each copy is then continued by its own
    /// suffix. Panics if `s` is out of range.
    pub fn replicate(&self, s: usize, n: usize) -> KvCache {
        KvCache {
            width: self.width,
            layers: self.layers.iter().map(|l| vec![l[s].clone(); n]).collect(),
            windows: self.windows.clone(),
            lens: vec![self.lens[s]; n],
        }
    }

    /// Blocks the cache was made for.
    pub(crate) fn n_layers(&self) -> usize {
        self.layers.len()
    }

    /// Key (and value) width per position the cache was made for.
    pub(crate) fn width(&self) -> usize {
        self.width
    }

    /// Every stream's keys and values at block `layer`, indexed by stream, for a
    /// family's blocks to append to and attend over.
    pub(crate) fn layer_mut(&mut self, layer: usize) -> &mut [LayerKv] {
        &mut self.layers[layer]
    }

    /// Makes the `new` positions appended to each of `streams` at every block part of
    /// the cache; a block with a window `w` then drops the positions no later query
    /// can see (before `len + 1 − w`), once `TRIM_SLACK` of them have gathered.
    pub(crate) fn commit(&mut self, streams: &[usize], new: usize) {
        for &s in streams {
            self.lens[s] += new;
        }
        let w = self.width;
        for (layer, window) in self.layers.iter_mut().zip(&self.windows) {
            let Some(window) = *window else { continue };
            for &s in streams {
                let kv = &mut layer[s];
                let keep_from = (self.lens[s] + 1).saturating_sub(window);
                if keep_from >= kv.first + TRIM_SLACK {
                    let drop = (keep_from - kv.first) * w;
                    kv.keys.drain(..drop);
                    kv.values.drain(..drop);
                    kv.first = keep_from;
                }
            }
        }
        debug_assert!(self.layers.iter().all(|l| l
            .iter()
            .zip(&self.lens)
            .all(|(kv, &len)| kv.keys.len() == (len - kv.first) * w)));
    }

    /// Drops whatever was appended since the last commit (after a failed forward).
    pub(crate) fn rollback(&mut self) {
        let w = self.width;
        for layer in &mut self.layers {
            for (kv, &len) in layer.iter_mut().zip(&self.lens) {
                kv.keys.truncate((len - kv.first) * w);
                kv.values.truncate((len - kv.first) * w);
            }
        }
    }
}

/// What the sequences of a forward continue, as a family's blocks see it.
pub(crate) enum Past<'c> {
    /// Nothing: whole sequences from position 0, causal attention within them.
    None,
    /// Streams of a cache: sequence `b` is new positions of stream `places[b].stream`
    /// from `places[b].start`; the blocks append their keys and values to `cache` and
    /// attend over every position of the stream.
    Cached {
        /// Where each sequence of the batch sits.
        places: &'c [Placement],
        /// The streams' keys and values, appended to block by block.
        cache: &'c mut KvCache,
    },
}
