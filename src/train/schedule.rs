//! The learning-rate schedule: linear warmup, then linear decay to zero.
//!
//! For optimiser step k (1-based) of `total`, with `warmup` warmup steps:
//! `lr = base · k / warmup` while k ≤ warmup, then `base · (total − k + 1) / (total − warmup)`.
//! Unlike the reference's scheduler, which starts at lr 0, no step is spent at lr 0.

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LinearSchedule {
    pub base_lr: f64,
    pub warmup: u64,
    pub total: u64,
}

impl LinearSchedule {
    /// `warmup_fraction` of `total` steps of warmup (rounded up).
    pub fn new(base_lr: f64, warmup_fraction: f64, total: u64) -> Self {
        let warmup = ((warmup_fraction * total as f64).ceil() as u64).min(total);
        LinearSchedule { base_lr, warmup, total }
    }

    pub fn lr(&self, step: u64) -> f64 {
        if step == 0 || step > self.total {
            return 0.0;
        }
        if step <= self.warmup {
            return self.base_lr * step as f64 / self.warmup as f64;
        }
        self.base_lr * (self.total - step + 1) as f64 / (self.total - self.warmup) as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warms_up_then_decays_to_zero() {
        let s = LinearSchedule::new(1.0, 0.1, 100);
        assert_eq!(s.warmup, 10);
        assert!((s.lr(1) - 0.1).abs() < 1e-12);
        assert!((s.lr(10) - 1.0).abs() < 1e-12);
        assert!((s.lr(11) - 1.0).abs() < 1e-12 && s.lr(12) < 1.0);
        assert!((s.lr(100) - 1.0 / 90.0).abs() < 1e-12);
        assert_eq!(s.lr(101), 0.0);
        assert!((1..100).all(|k| k < 11 || s.lr(k + 1) < s.lr(k)));
        let no_warmup = LinearSchedule::new(1.0, 0.0, 4);
        assert_eq!(no_warmup.lr(1), 1.0);
    }
}
