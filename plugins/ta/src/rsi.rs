//! Wilder's relative strength index.

use serde::{Deserialize, Serialize};

/// TA-Lib's `TA_RSI`: the first output comes after `period` changes (index
/// `period`). Average gain and loss start as the plain means of the first
/// `period` gains and losses (losses as positive numbers), then follow
/// Wilder's smoothing `avg = (avg * (period - 1) + current) / period`.
/// `RSI = 100 * gain / (gain + loss)`, and 0 when both are 0.
///
/// Unlike TA-Lib, which treats `gain + loss` below 1e-8 as zero, only an
/// exact zero counts, so the RSI of prices around 1e-6 is not flattened to 0.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Rsi {
    period: usize,
    prev: Option<f64>,
    /// Changes seen, up to `period`.
    changes: usize,
    /// Sums of gains and losses during warm-up, then Wilder's averages.
    gain: f64,
    loss: f64,
}

impl Rsi {
    /// An RSI over `period` changes. Panics if `period` is 0.
    pub fn new(period: usize) -> Self {
        assert!(period >= 1, "an RSI needs a period of at least 1, got {period}");
        Rsi { period, prev: None, changes: 0, gain: 0.0, loss: 0.0 }
    }

    /// The period it was made with.
    pub fn period(&self) -> usize {
        self.period
    }

    /// How many values come before the first output: `period`.
    pub fn lookback(&self) -> usize {
        self.period
    }

    /// Consumes the next value (finite; the caller filters the rest) and
    /// returns the RSI once warmed up.
    #[inline]
    pub fn update(&mut self, x: f64) -> Option<f64> {
        debug_assert!(x.is_finite(), "Rsi::update({x}): filter non-finite values out first");
        let prev = self.prev.replace(x)?;
        let change = x - prev;
        let (gain, loss) = if change < 0.0 { (0.0, -change) } else { (change, 0.0) };
        let n = self.period as f64;
        if self.changes < self.period {
            // Gains and losses are never negative, so this plain sum has
            // no cancellation to compensate for.
            self.gain += gain;
            self.loss += loss;
            self.changes += 1;
            if self.changes < self.period {
                return None;
            }
            self.gain /= n;
            self.loss /= n;
        } else {
            self.gain = (self.gain * (n - 1.0) + gain) / n;
            self.loss = (self.loss * (n - 1.0) + loss) / n;
        }
        let total = self.gain + self.loss;
        Some(if total == 0.0 { 0.0 } else { 100.0 * (self.gain / total) })
    }
}
