//! The per-latent record: everything the dashboard shows for one latent, as one JSON
//! object (one line of a `stats/{start}_{end}.jsonl` file). The exact definitions of
//! the fields are in `docs/features.md`; the doc comments here say what each holds.

use serde::{Deserialize, Serialize};

/// All statistics and tables of one latent.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LatentRecord {
    /// The latent's index in the SAE.
    pub latent: u32,
    /// Positions (BOS excluded) where the latent is active (its value is not 0).
    pub count: u64,
    /// `count / positions`, over every non-BOS position of the pass.
    pub density: f64,
    /// Largest value (0 for a latent that never fires).
    pub max: f32,
    /// Smallest non-zero value (0 for a latent that never fires).
    pub min: f32,
    /// Mean of the non-zero values (0 for a latent that never fires).
    pub mean: f64,
    /// Histogram of the non-zero values ([`Histogram`]; empty for a dead latent).
    pub histogram: Histogram,
    /// The largest activations, best first (value descending, then lower
    /// `(seq, pos)`); at most one per position, never an inactive one.
    pub top: Vec<Sample>,
    /// Equal-width intervals of `[0, max]`, lowest first (SAEDashboard semantics).
    pub intervals: Vec<IntervalGroup>,
    /// Equal-count slices of the active positions by rank, highest first (delphi's
    /// quantiles, kept for auto-interpretation).
    pub quantiles: Vec<QuantileGroup>,
    /// The decoder row through the unembedding.
    pub logits: LogitTable,
    /// Euclidean norm of the decoder row `W_dec[latent]`.
    pub decoder_norm: f32,
    /// The latents whose decoder rows are most similar (cosine), over all latents.
    pub decoder_neighbours: Vec<Neighbour>,
    /// The latents most often active at the same positions (Jaccard), over all latents.
    pub cooccurrence_neighbours: Vec<CoNeighbour>,
}

/// A histogram of equal-width bins over `[lo, hi]`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Histogram {
    /// Left edge of the first bin.
    pub lo: f64,
    /// Right edge of the last bin.
    pub hi: f64,
    /// Bin midpoints (SAEDashboard's `bar_values`).
    pub midpoints: Vec<f32>,
    /// Values per bin (SAEDashboard's `bar_heights`).
    pub heights: Vec<u64>,
}

/// One example position and the latent's values over its whole context window.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Sample {
    /// The context: a row of `tokens.safetensors` (and of delphi's `tokens`).
    pub seq: u32,
    /// The position inside the context (0 is the context's first token).
    pub pos: u32,
    /// The latent's value there.
    pub value: f32,
    /// The latent's non-zero values in the whole context, as `(position, value)` in
    /// position order (the sample's own position included).
    pub acts: Vec<(u32, f32)>,
}

/// One of SAEDashboard's "quantile" groups: an interval of activation values.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct IntervalGroup {
    /// Lower edge (inclusive).
    pub lo: f64,
    /// Upper edge (inclusive).
    pub hi: f64,
    /// Positions with `lo ≤ value ≤ hi`, inactive positions (value 0) included.
    pub positions_in: u64,
    /// `positions_in / positions` (SAEDashboard's `CONTAINS`).
    pub contains: f64,
    /// Up to 5 active positions drawn uniformly from those in the interval, value
    /// descending then `(seq, pos)`.
    pub samples: Vec<Sample>,
}

/// One of delphi's quantiles: a slice of the active positions ranked by value.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct QuantileGroup {
    /// First rank of the slice (rank 0 is the largest value).
    pub rank_lo: u64,
    /// One past its last rank.
    pub rank_hi: u64,
    /// Up to 5 positions drawn uniformly from the slice, in rank order.
    pub samples: Vec<Sample>,
}

/// The logit effects of a decoder row: `W_dec[latent] · W_Uᵀ`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct LogitTable {
    /// The most promoted tokens, largest first (ties: lower token id).
    pub top: Vec<TokenValue>,
    /// The most suppressed tokens, smallest first (ties: lower token id).
    pub bottom: Vec<TokenValue>,
    /// Histogram of the effect on every token of the vocabulary (heights sum to
    /// `d_vocab`).
    pub histogram: Histogram,
}

/// A token and a value.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct TokenValue {
    /// Token id (its text is in `vocab.json`).
    pub token: u32,
    /// The value.
    pub value: f32,
}

/// A latent and the cosine of its decoder row with this one's.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Neighbour {
    /// The other latent.
    pub latent: u32,
    /// Cosine of the two decoder rows.
    pub cosine: f32,
}

/// A latent and how often it is active together with this one.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct CoNeighbour {
    /// The other latent.
    pub latent: u32,
    /// `both / (count_a + count_b − both)` over active positions.
    pub jaccard: f64,
    /// Positions where both are active.
    pub both: u64,
}
