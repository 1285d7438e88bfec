//! Compensated (Neumaier) summation.

use serde::{Deserialize, Serialize};

/// A running sum that carries the rounding error of each addition, so that
/// adding millions of prices (or adding and removing them, in a rolling
/// window) stays accurate to a few ulps of the true sum.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Sum {
    sum: f64,
    compensation: f64,
}

impl Sum {
    /// A sum of nothing.
    pub const ZERO: Sum = Sum { sum: 0.0, compensation: 0.0 };

    /// Adds `x` (subtract with a negative `x`).
    #[inline]
    pub fn add(&mut self, x: f64) {
        let t = self.sum + x;
        if self.sum.abs() >= x.abs() {
            self.compensation += (self.sum - t) + x;
        } else {
            self.compensation += (x - t) + self.sum;
        }
        self.sum = t;
    }

    /// The sum.
    #[inline]
    pub fn value(&self) -> f64 {
        self.sum + self.compensation
    }
}

impl FromIterator<f64> for Sum {
    fn from_iter<I: IntoIterator<Item = f64>>(iter: I) -> Self {
        let mut s = Sum::ZERO;
        iter.into_iter().for_each(|x| s.add(x));
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compensation_recovers_what_naive_summation_loses() {
        // 1e16 + 1 + 1 - 1e16: naive f64 summation gives 0 (or 2 by luck
        // of order); the compensated sum gives exactly 2.
        let s: Sum = [1e16, 1.0, 1.0, -1e16].into_iter().collect();
        assert_eq!(s.value(), 2.0);
        let mut naive = 0.0;
        for x in [1e16, 1.0, 1.0, -1e16] {
            naive += x;
        }
        assert_ne!(naive, 2.0);
    }

    #[test]
    fn adding_and_removing_many_values_returns_to_zero() {
        let mut s = Sum::ZERO;
        let xs: Vec<f64> = (0..100_000).map(|i| 1000.0 + (i as f64).sin() * 0.01).collect();
        xs.iter().for_each(|&x| s.add(x));
        xs.iter().for_each(|&x| s.add(-x));
        assert!(s.value().abs() < 1e-9, "{}", s.value());
    }
}
