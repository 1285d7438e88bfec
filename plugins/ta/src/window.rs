//! The last `period` values of a series, with their rolling sum.

use serde::{Deserialize, Serialize};

use crate::Sum;

/// A ring of the last `period` values and their sum. The sum is rolled
/// (add the new value, subtract the old) and recomputed from the ring every
/// `period` updates, so its error is bounded by one window's worth of
/// roundings however long the series runs.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(try_from = "Saved")]
pub(crate) struct Window {
    period: usize,
    /// Grows to `period` during warm-up, then is overwritten in a ring.
    values: Vec<f64>,
    /// The slot the next value overwrites, once `values` is full.
    next: usize,
    sum: Sum,
    /// Rolled updates since `sum` was last recomputed exactly.
    rolled: usize,
}

/// A [`Window`] as read from a snapshot, checked before use so that
/// corrupt state is refused when restored instead of trapping later.
#[derive(Deserialize)]
struct Saved {
    period: usize,
    values: Vec<f64>,
    next: usize,
    sum: Sum,
    rolled: usize,
}

impl TryFrom<Saved> for Window {
    type Error = String;

    fn try_from(s: Saved) -> Result<Self, String> {
        let filling = s.values.len() < s.period;
        if s.period == 0 || s.values.len() > s.period || s.next >= s.period || (filling && s.next != 0) {
            return Err(format!(
                "inconsistent window: period {}, {} values, next slot {}",
                s.period,
                s.values.len(),
                s.next
            ));
        }
        Ok(Window { period: s.period, values: s.values, next: s.next, sum: s.sum, rolled: s.rolled })
    }
}

impl Window {
    pub(crate) fn new(period: usize) -> Self {
        assert!(period >= 1, "a window needs a period of at least 1, got {period}");
        Window { period, values: Vec::with_capacity(period), next: 0, sum: Sum::ZERO, rolled: 0 }
    }

    pub(crate) fn period(&self) -> usize {
        self.period
    }

    /// Adds `x`, dropping the oldest value once full; true when full.
    #[inline]
    pub(crate) fn push(&mut self, x: f64) -> bool {
        if self.values.len() < self.period {
            self.values.push(x);
            self.sum.add(x);
            return self.values.len() == self.period;
        }
        let old = std::mem::replace(&mut self.values[self.next], x);
        self.next += 1;
        if self.next == self.period {
            self.next = 0;
        }
        self.rolled += 1;
        if self.rolled >= self.period {
            self.sum = self.values.iter().copied().collect();
            self.rolled = 0;
        } else {
            self.sum.add(x);
            self.sum.add(-old);
        }
        true
    }

    /// The mean of the stored values; meaningful once full.
    #[inline]
    pub(crate) fn mean(&self) -> f64 {
        self.sum.value() / self.period as f64
    }

    /// The stored values, in no particular order.
    #[inline]
    pub(crate) fn values(&self) -> &[f64] {
        &self.values
    }
}
