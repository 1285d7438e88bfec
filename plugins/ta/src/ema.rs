//! Exponential moving average.

use serde::{Deserialize, Serialize};

use crate::Sum;

/// TA-Lib's `TA_EMA`: `k = 2 / (period + 1)`, seeded with the mean of the
/// first `period` values, which is also the first output (index
/// `period - 1`); then `ema = (x - prev) * k + prev`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Ema {
    period: usize,
    k: f64,
    /// Sum of the values seen during warm-up.
    seed: Sum,
    seen: usize,
    value: Option<f64>,
}

impl Ema {
    /// An EMA over `period` values. Panics if `period` is 0.
    pub fn new(period: usize) -> Self {
        assert!(period >= 1, "an EMA needs a period of at least 1, got {period}");
        Ema { period, k: 2.0 / (period as f64 + 1.0), seed: Sum::ZERO, seen: 0, value: None }
    }

    /// The period it was made with.
    pub fn period(&self) -> usize {
        self.period
    }

    /// How many values come before the first output: `period - 1`.
    pub fn lookback(&self) -> usize {
        self.period - 1
    }

    /// The latest output, if warmed up.
    pub fn value(&self) -> Option<f64> {
        self.value
    }

    /// Consumes the next value (finite; the caller filters the rest) and
    /// returns the EMA once warmed up.
    #[inline]
    pub fn update(&mut self, x: f64) -> Option<f64> {
        debug_assert!(x.is_finite(), "Ema::update({x}): filter non-finite values out first");
        let next = match self.value {
            // TA-Lib's exact form, so results match it to the last bit.
            Some(prev) => (x - prev) * self.k + prev,
            None => {
                self.seed.add(x);
                self.seen += 1;
                if self.seen < self.period {
                    return None;
                }
                self.seed.value() / self.period as f64
            }
        };
        self.value = Some(next);
        self.value
    }
}
