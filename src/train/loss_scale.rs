//! Dynamic loss scaling for float16 training.
//!
//! Float16's smallest normal number is about 6e-5, and many gradients are smaller: the loss is
//! multiplied by a large scale before the backward pass, so that they survive, and the
//! gradients are divided by it again before the optimiser sees them. When the scaled gradients
//! overflow, the step is skipped and the scale halved; after `GROWTH_INTERVAL` steps without an
//! overflow it is doubled (PyTorch's `GradScaler` defaults). bfloat16 has float32's range and
//! float32 needs nothing: their scale stays 1, and the arithmetic is then exactly unscaled.

use serde::{Deserialize, Serialize};

use super::config::Precision;

const INITIAL: f64 = 65536.0;
const GROWTH_INTERVAL: u64 = 2000;

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct LossScale {
    pub scale: f64,
    /// Whether the scale adapts (float16) or stays 1.
    pub dynamic: bool,
    /// Steps since the last overflow or growth.
    pub good_steps: u64,
}

impl LossScale {
    pub fn new(dtype: Precision) -> Self {
        let dynamic = dtype == Precision::F16;
        LossScale { scale: if dynamic { INITIAL } else { 1.0 }, dynamic, good_steps: 0 }
    }

    /// After a step whose gradients (scaled by `self.scale`) had the global norm `scaled_norm`:
    /// returns true when they overflowed, which a dynamic scale answers by halving itself (the
    /// step is to be skipped). A fixed scale never reports an overflow.
    pub fn overflowed(&mut self, scaled_norm: f64) -> bool {
        if !self.dynamic {
            return false;
        }
        if !scaled_norm.is_finite() {
            self.scale /= 2.0;
            self.good_steps = 0;
            return true;
        }
        self.good_steps += 1;
        if self.good_steps == GROWTH_INTERVAL {
            self.scale *= 2.0;
            self.good_steps = 0;
        }
        false
    }
}

impl Default for LossScale {
    fn default() -> Self {
        LossScale::new(Precision::F32)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dynamic_scale_halves_on_overflow_and_grows_after_good_steps() {
        let mut s = LossScale::new(Precision::F16);
        assert_eq!(s.scale, 65536.0);
        assert!(s.overflowed(f64::INFINITY));
        assert!(s.overflowed(f64::NAN));
        assert_eq!(s.scale, 16384.0);
        for _ in 0..GROWTH_INTERVAL {
            assert!(!s.overflowed(1.0));
        }
        assert_eq!(s.scale, 32768.0);
        let mut fixed = LossScale::new(Precision::Bf16);
        assert!(!fixed.overflowed(f64::INFINITY));
        assert_eq!(fixed.scale, 1.0);
    }
}
