//! Keeping the best `n` of a stream under a total order, the one selection every table
//! of this crate uses (top contexts, logit tables, neighbours), so that the tie rules
//! are written once.

use std::cmp::Ordering;

/// The `n` best items seen so far, best first, under `better`: `better(a, b)` is
/// [`Ordering::Less`] when `a` ranks before `b`. The order must be total (ties already
/// broken, e.g. by index), so the result does not depend on the order items arrive in.
pub struct TopN<T, F> {
    n: usize,
    items: Vec<T>,
    better: F,
}

impl<T, F: Fn(&T, &T) -> Ordering> TopN<T, F> {
    /// An empty selection of at most `n` items.
    pub fn new(n: usize, better: F) -> Self {
        TopN {
            n,
            items: Vec::with_capacity(n + 1),
            better,
        }
    }

    /// Offers one item.
    #[inline]
    pub fn push(&mut self, item: T) {
        if self.n == 0 {
            return;
        }
        if self.items.len() == self.n {
            let worst = self.items.last().expect("n > 0 items");
            if (self.better)(&item, worst) != Ordering::Less {
                return;
            }
            self.items.pop();
        }
        let at = self
            .items
            .partition_point(|x| (self.better)(x, &item) == Ordering::Less);
        self.items.insert(at, item);
    }

    /// The selection, best first.
    pub fn into_sorted(self) -> Vec<T> {
        self.items
    }
}

/// Larger value first, then lower index: the order of every "top" table over indexed
/// values (tokens, latents).
pub fn desc_then_index(a: &(u32, f64), b: &(u32, f64)) -> Ordering {
    b.1.total_cmp(&a.1).then(a.0.cmp(&b.0))
}

/// Smaller value first, then lower index: the order of the "bottom" logit table.
pub fn asc_then_index(a: &(u32, f64), b: &(u32, f64)) -> Ordering {
    a.1.total_cmp(&b.1).then(a.0.cmp(&b.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_best_with_ties_by_index_whatever_the_arrival_order() {
        let items = [(5, 1.0), (2, 3.0), (7, 3.0), (1, 0.5), (3, 3.0), (9, 2.0)];
        let mut fwd = TopN::new(3, desc_then_index);
        items.iter().for_each(|&x| fwd.push(x));
        let mut rev = TopN::new(3, desc_then_index);
        items.iter().rev().for_each(|&x| rev.push(x));
        let want = vec![(2, 3.0), (3, 3.0), (7, 3.0)];
        assert_eq!(fwd.into_sorted(), want);
        assert_eq!(rev.into_sorted(), want);
        let mut low = TopN::new(2, asc_then_index);
        items.iter().for_each(|&x| low.push(x));
        assert_eq!(low.into_sorted(), vec![(1, 0.5), (5, 1.0)]);
        let mut none = TopN::new(0, asc_then_index);
        none.push((1, 1.0));
        assert!(none.into_sorted().is_empty());
    }
}
