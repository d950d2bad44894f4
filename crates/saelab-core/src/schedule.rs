//! Learning-rate and sparsity-coefficient schedules.

use serde::{Deserialize, Serialize};

/// Linear LR warm-up, constant, then linear decay to zero over the final fraction of
/// training; and a linear warm-up of the sparsity coefficient from 0 to its value.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Schedule {
    /// Total optimizer steps.
    pub total_steps: u64,
    /// Steps over which the LR rises linearly from 0.
    pub lr_warmup_steps: u64,
    /// Fraction of `total_steps` at the end over which the LR decays linearly to 0.
    pub lr_decay_fraction: f64,
    /// Steps over which the sparsity coefficient rises linearly from 0 to its value.
    pub sparsity_warmup_steps: u64,
}

impl Schedule {
    /// Multiplier on the base LR at (0-based) `step`.
    pub fn lr_scale(&self, step: u64) -> f32 {
        let s = step as f64;
        let warm = if self.lr_warmup_steps > 0 {
            ((s + 1.0) / self.lr_warmup_steps as f64).min(1.0)
        } else {
            1.0
        };
        let decay_steps = (self.lr_decay_fraction * self.total_steps as f64).round();
        let decay_start = self.total_steps as f64 - decay_steps;
        let decay = if decay_steps > 0.0 && s >= decay_start {
            ((self.total_steps as f64 - s) / decay_steps).clamp(0.0, 1.0)
        } else {
            1.0
        };
        (warm * decay) as f32
    }

    /// Multiplier on the sparsity coefficient at (0-based) `step`.
    pub fn sparsity_scale(&self, step: u64) -> f32 {
        if self.sparsity_warmup_steps == 0 {
            1.0
        } else {
            ((step as f64 + 1.0) / self.sparsity_warmup_steps as f64).min(1.0) as f32
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warmup_plateau_and_decay() {
        let s = Schedule {
            total_steps: 100,
            lr_warmup_steps: 10,
            lr_decay_fraction: 0.2,
            sparsity_warmup_steps: 50,
        };
        assert!((s.lr_scale(0) - 0.1).abs() < 1e-6);
        assert_eq!(s.lr_scale(9), 1.0);
        assert_eq!(s.lr_scale(50), 1.0);
        assert_eq!(s.lr_scale(80), 1.0);
        assert!((s.lr_scale(90) - 0.5).abs() < 1e-6);
        assert!(s.lr_scale(99) > 0.0 && s.lr_scale(99) <= 0.05 + 1e-6);
        assert!((s.sparsity_scale(24) - 0.5).abs() < 1e-6);
        assert_eq!(s.sparsity_scale(70), 1.0);
    }
}
