//! Bollinger bands.

use serde::{Deserialize, Serialize};

use crate::window::Window;

/// One Bollinger output.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq)]
pub struct Bands {
    /// The SMA of the window.
    pub middle: f64,
    /// `middle + k * deviation`.
    pub upper: f64,
    /// `middle - k * deviation`.
    pub lower: f64,
    /// The population standard deviation of the window. Plugins emit only
    /// the bands; this is here because `upper - middle` cannot recover a
    /// small deviation of large prices to full precision.
    pub deviation: f64,
}

/// TA-Lib's `TA_BBANDS` with an SMA: the middle band is the mean of the
/// last `period` values and the bands lie `k` population standard
/// deviations (divide by `period`) of the same values above and below; the
/// first output comes at index `period - 1`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Bollinger {
    window: Window,
    k: f64,
}

impl Bollinger {
    /// Bands over `period` values, `k` deviations wide. Panics if `period`
    /// is 0.
    pub fn new(period: usize, k: f64) -> Self {
        Bollinger { window: Window::new(period), k }
    }

    /// The period it was made with.
    pub fn period(&self) -> usize {
        self.window.period()
    }

    /// The width in standard deviations.
    pub fn k(&self) -> f64 {
        self.k
    }

    /// How many values come before the first output: `period - 1`.
    pub fn lookback(&self) -> usize {
        self.period() - 1
    }

    /// Consumes the next value (finite; the caller filters the rest) and
    /// returns the bands once there are `period` values.
    #[inline]
    pub fn update(&mut self, x: f64) -> Option<Bands> {
        debug_assert!(x.is_finite(), "Bollinger::update({x}): filter non-finite values out first");
        if !self.window.push(x) {
            return None;
        }
        let middle = self.window.mean();
        let deviation = population_deviation(self.window.values(), middle);
        let width = deviation * self.k;
        Some(Bands { middle, upper: middle + width, lower: middle - width, deviation })
    }
}

/// The population standard deviation of `values` around `mean`, an
/// approximation of their mean. Deviations from a nearby mean have no
/// cancellation (unlike E[x²] - E[x]², which loses every digit for prices
/// like 1e7 ± 0.01), and subtracting `(Σd)²/n` removes the first-order
/// error of `mean` (the corrected two-pass algorithm).
fn population_deviation(values: &[f64], mean: f64) -> f64 {
    let (mut sum, mut squares) = (0.0, 0.0);
    for &x in values {
        let d = x - mean;
        sum += d;
        squares += d * d;
    }
    let n = values.len() as f64;
    // Rounding can leave a tiny negative variance. A comparison rather than
    // f64::max, which is a libm call in WebAssembly; NaN also gives 0.
    let variance = (squares - sum * sum / n) / n;
    if variance > 0.0 { variance.sqrt() } else { 0.0 }
}
