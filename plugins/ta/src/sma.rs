//! Simple moving average.

use serde::{Deserialize, Serialize};

use crate::window::Window;

/// The mean of the last `period` values (TA-Lib's `TA_SMA`): the first
/// output comes with the `period`-th value (index `period - 1`).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Sma {
    window: Window,
}

impl Sma {
    /// An SMA over `period` values. Panics if `period` is 0.
    pub fn new(period: usize) -> Self {
        Sma { window: Window::new(period) }
    }

    /// The period it was made with.
    pub fn period(&self) -> usize {
        self.window.period()
    }

    /// How many values come before the first output: `period - 1`.
    pub fn lookback(&self) -> usize {
        self.period() - 1
    }

    /// Consumes the next value (finite; the caller filters the rest) and
    /// returns the mean of the last `period`, once there are that many.
    #[inline]
    pub fn update(&mut self, x: f64) -> Option<f64> {
        debug_assert!(x.is_finite(), "Sma::update({x}): filter non-finite values out first");
        self.window.push(x).then(|| self.window.mean())
    }
}
