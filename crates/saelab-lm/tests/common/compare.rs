//! Comparisons of logits and activations.

/// The largest `|a_i − b_i|`.
pub fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0f32, f32::max)
}

/// The index of the largest value, the lowest index among equals.
pub fn argmax(row: &[f32]) -> usize {
    (0..row.len())
        .max_by(|&i, &j| row[i].total_cmp(&row[j]).then(j.cmp(&i)))
        .unwrap()
}
