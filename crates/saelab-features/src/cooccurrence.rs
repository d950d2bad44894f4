//! Co-occurrence neighbours over all latents, in bounded memory.
//!
//! For a block of latents `start..end` the pass keeps one `u32` count per (block
//! latent, any latent): positions where both are active. It fills them from the
//! token-major shard parts, one part at a time: at every position, each active block
//! latent counts every latent active there. Memory is `block × n_latents × 4` bytes
//! (1024 × 9216 latents: 38 MB), whatever the token count.
//!
//! The Jaccard index of latents `a` and `b` over active positions is
//! `both / (count_a + count_b − both)`.

use crate::parts::Part;
use crate::rank::{desc_then_index, TopN};
use crate::record::CoNeighbour;

/// The co-occurrence counts of one block of latents against all of them.
pub struct CoCounts {
    start: usize,
    end: usize,
    n: usize,
    counts: Vec<u32>,
}

impl CoCounts {
    /// Zero counts for latents `start..end` (exclusive) against `n` latents.
    pub fn new(start: usize, end: usize, n: usize) -> Self {
        CoCounts {
            start,
            end,
            n,
            counts: vec![0; (end - start) * n],
        }
    }

    /// Adds the positions of `part`.
    pub fn add_part(&mut self, part: &Part) {
        for r in 0..part.rows() {
            let (lat, _) = part.row(r);
            let a = lat.partition_point(|&j| (j as usize) < self.start);
            let b = lat.partition_point(|&j| (j as usize) < self.end);
            for &i in &lat[a..b] {
                let row = &mut self.counts[(i as usize - self.start) * self.n..][..self.n];
                for &j in lat {
                    row[j as usize] += 1;
                }
            }
        }
    }

    /// The counts of block latent `i` (absolute index) against every latent.
    pub fn row(&self, i: usize) -> &[u32] {
        &self.counts[(i - self.start) * self.n..][..self.n]
    }
}

/// The `k` latents with the highest Jaccard index with latent `i`, over all latents
/// but itself that are ever active with it: Jaccard descending, ties by lower index.
/// `both` is `i`'s row of [`CoCounts`], `counts` every latent's active positions.
pub fn jaccard_neighbours(i: usize, both: &[u32], counts: &[u64], k: usize) -> Vec<CoNeighbour> {
    let mut top = TopN::new(k, desc_then_index);
    let ci = counts[i];
    for (j, &c) in both.iter().enumerate() {
        if j == i || c == 0 {
            continue;
        }
        let c = c as u64;
        top.push((j as u32, c as f64 / (ci + counts[j] - c) as f64));
    }
    top.into_sorted()
        .into_iter()
        .map(|(latent, jaccard)| CoNeighbour {
            latent,
            jaccard,
            both: both[latent as usize] as u64,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_pairs_per_position_and_ranks_by_jaccard() {
        let mut p = Part::new(4, 4);
        // Positions: {0,1}, {0,1,2}, {2}, {0,3}.
        p.push_context(
            &[0; 4],
            vec![
                vec![(0, 1.0), (1, 1.0)],
                vec![(2, 1.0), (0, 1.0), (1, 1.0)],
                vec![(2, 1.0)],
                vec![(3, 1.0), (0, 1.0)],
            ],
        );
        let mut cc = CoCounts::new(0, 2, 4);
        cc.add_part(&p);
        assert_eq!(cc.row(0), &[3, 2, 1, 1]);
        assert_eq!(cc.row(1), &[2, 2, 1, 0]);
        let counts: Vec<u64> = p.counts().iter().map(|&c| c as u64).collect();
        let nb = jaccard_neighbours(0, cc.row(0), &counts, 3);
        // J(0,1) = 2/3, J(0,3) = 1/3, J(0,2) = 1/4.
        let got: Vec<(u32, u64)> = nb.iter().map(|x| (x.latent, x.both)).collect();
        assert_eq!(got, vec![(1, 2), (3, 1), (2, 1)]);
        assert!((nb[0].jaccard - 2.0 / 3.0).abs() < 1e-12);
        let nb = jaccard_neighbours(1, cc.row(1), &counts, 5);
        assert_eq!(nb.len(), 2);
    }
}
