//! Moving average convergence/divergence.

use serde::{Deserialize, Serialize};

use crate::Ema;

/// How the fast EMA is seeded.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub enum MacdVariant {
    /// Both EMAs are standalone `TA_EMA`s: the fast one is seeded with the
    /// mean of the first `fast` values, the slow one with the first `slow`.
    #[default]
    Standard,
    /// TA-Lib's `TA_MACD`: the fast EMA is seeded with the mean of the
    /// `fast` values ending where the slow EMA's seed ends (index
    /// `slow - 1`), so both start together.
    TaLib,
}

/// One MACD output.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq)]
pub struct MacdOutput {
    /// Fast EMA minus slow EMA.
    pub macd: f64,
    /// EMA of `macd` over the signal period.
    pub signal: f64,
    /// `macd - signal`.
    pub hist: f64,
}

/// MACD: the macd line (fast EMA minus slow EMA) starts at index
/// `slow - 1`; the signal line is a `TA_EMA` of the macd line, seeded with
/// the mean of its first `signal` values; the first output comes at index
/// `slow - 1 + signal - 1` (33 for 12, 26, 9) in both variants.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Macd {
    variant: MacdVariant,
    fast: Ema,
    slow: Ema,
    signal: Ema,
    /// Values the fast EMA still has to skip (TA-Lib variant only).
    fast_skip: usize,
}

impl Macd {
    /// A MACD. Panics unless `1 <= fast < slow` and `signal >= 1`.
    pub fn new(fast: usize, slow: usize, signal: usize, variant: MacdVariant) -> Self {
        assert!(1 <= fast && fast < slow, "MACD needs 1 <= fast < slow, got fast {fast} and slow {slow}");
        let fast_skip = match variant {
            MacdVariant::Standard => 0,
            MacdVariant::TaLib => slow - fast,
        };
        Macd { variant, fast: Ema::new(fast), slow: Ema::new(slow), signal: Ema::new(signal), fast_skip }
    }

    /// The fast EMA's period.
    pub fn fast_period(&self) -> usize {
        self.fast.period()
    }

    /// The slow EMA's period.
    pub fn slow_period(&self) -> usize {
        self.slow.period()
    }

    /// The signal EMA's period.
    pub fn signal_period(&self) -> usize {
        self.signal.period()
    }

    /// How the fast EMA is seeded.
    pub fn variant(&self) -> MacdVariant {
        self.variant
    }

    /// How many values come before the first output: `slow - 1 + signal - 1`.
    pub fn lookback(&self) -> usize {
        self.slow.lookback() + self.signal.lookback()
    }

    /// The fast EMA's latest value, once it has one.
    pub fn fast_ema(&self) -> Option<f64> {
        self.fast.value()
    }

    /// The slow EMA's latest value, once it has one.
    pub fn slow_ema(&self) -> Option<f64> {
        self.slow.value()
    }

    /// Consumes the next value (finite; the caller filters the rest) and
    /// returns the MACD once the signal line is warmed up.
    #[inline]
    pub fn update(&mut self, x: f64) -> Option<MacdOutput> {
        let fast = if self.fast_skip > 0 {
            self.fast_skip -= 1;
            None
        } else {
            self.fast.update(x)
        };
        let slow = self.slow.update(x);
        // fast < slow, so the fast EMA is ready whenever the slow one is.
        let (Some(fast), Some(slow)) = (fast, slow) else { return None };
        let macd = fast - slow;
        let signal = self.signal.update(macd)?;
        Some(MacdOutput { macd, signal, hist: macd - signal })
    }
}
