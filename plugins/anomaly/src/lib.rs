//! `anomaly`: per-key rolling z-score alerts.
//!
//! Reads one field (`field`, default `close`) of series `input` and writes
//! `anomaly` (`z`, `value`, `mean`, `stddev`) with the sample's timestamp
//! whenever a value lies `threshold` or more standard deviations from the
//! mean of the `window` values before it.
//!
//! Conventions:
//!
//! - The value stream of a key is, with `of=returns`, the log returns
//!   `ln(x_t / x_(t-1))` of its consecutive samples in arrival order;
//!   with `of=value`, the samples themselves.
//! - Skipped (and counted, [`Anomaly::skipped_samples`]): non-finite
//!   samples, and with `of=returns` samples <= 0 (the next return is then
//!   taken from the last usable sample) and returns that overflow. A key's
//!   first usable sample yields no return.
//! - `z = (value - mean) / stddev` over the previous `window` values of the
//!   key (not including the current one); `stddev` is the sample standard
//!   deviation (n - 1, as pandas' `rolling().std()`). Nothing is scored
//!   until `window` values precede; when `stddev` is 0 (the previous values
//!   are all equal, detected exactly, as pandas does) no z is computed.
//! - An alert is emitted when `|z| >= threshold`; `value` is the return or
//!   the raw value.
//!
//! Numerics: the mean and variance come from sums of `value - shift` and
//! its square (compensated, Neumaier), where `shift` is the window's mean
//! at the last exact recomputation. Every `window` values the shift and
//! the sums are recomputed from the stored values, so precision does not
//! depend on the series' level and error does not accumulate; they are
//! also recomputed before scoring when the variance would cancel (a window
//! whose spread is tiny next to its distance from the shift, such as a
//! nearly flat stretch after a volatile one).

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};
use tickfold_sdk::prelude::*;
use tickfold_ta::Sum;

/// The largest `window` accepted; each key stores that many values.
const MAX_WINDOW: usize = 1_000_000;
/// Recompute the sums exactly when the variance's numerator is below this
/// fraction of the sum of squares it is taken from: below it, rounding of
/// the squares could exceed ~2e-11 of the result.
const ILL_CONDITIONED: f64 = 1e-5;

/// See the crate docs.
pub struct Anomaly {
    window: usize,
    threshold: f64,
    returns: bool,
    out: usize,
    skipped: u64,
}

impl Anomaly {
    /// Samples that yielded no value (non-finite; with `of=returns` also
    /// <= 0), since this instance opened (or was restored).
    pub fn skipped_samples(&self) -> u64 {
        self.skipped
    }
}

/// One key's state.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct KeyStats {
    /// The last usable sample, for returns.
    prev: Option<f64>,
    /// The last `window` values, oldest first.
    values: VecDeque<f64>,
    shift: f64,
    /// Sums of `value - shift` and `(value - shift)^2` over `values`.
    s1: Sum,
    s2: Sum,
    since_recompute: u64,
    /// How many of the latest values equal the last one.
    same_run: u64,
}

impl KeyStats {
    /// Mean and sample standard deviation of `values` (full), and the
    /// deviation of `v` from the mean, computed around the shift.
    fn score(&mut self, v: f64) -> (f64, f64, f64) {
        let n = self.values.len() as f64;
        let constant = self.same_run >= self.values.len() as u64;
        if !constant {
            // Each squared deviation carries a rounding error relative to
            // itself; when the window's spread is tiny next to its distance
            // from the shift those errors dominate, so re-centre first.
            let s1 = self.s1.value();
            if self.s2.value() - s1 * (s1 / n) < self.s2.value() * ILL_CONDITIONED {
                self.recompute();
            }
        }
        let d1 = self.s1.value() / n;
        let mean = self.shift + d1;
        let stddev = if constant {
            0.0
        } else {
            // A comparison rather than f64::max (a libm call in
            // WebAssembly); a negative rounding residue or NaN gives 0.
            let variance = (self.s2.value() - self.s1.value() * d1) / (n - 1.0);
            if variance > 0.0 { variance.sqrt() } else { 0.0 }
        };
        (mean, stddev, (v - self.shift) - d1)
    }

    fn push(&mut self, v: f64, window: usize) {
        if self.values.is_empty() {
            self.shift = v;
        }
        self.same_run = if self.values.back() == Some(&v) { self.same_run.saturating_add(1) } else { 1 };
        let d = v - self.shift;
        self.s1.add(d);
        self.s2.add(d * d);
        self.values.push_back(v);
        if self.values.len() > window
            && let Some(old) = self.values.pop_front()
        {
            let d = old - self.shift;
            self.s1.add(-d);
            self.s2.add(-(d * d));
        }
        self.since_recompute += 1;
        if self.since_recompute >= window as u64 {
            self.recompute();
        }
    }

    fn recompute(&mut self) {
        let mean = self.values.iter().copied().collect::<Sum>().value() / self.values.len() as f64;
        self.shift = mean;
        self.s1 = self.values.iter().map(|x| x - mean).collect();
        self.s2 = self.values.iter().map(|x| (x - mean) * (x - mean)).collect();
        self.since_recompute = 0;
    }
}

impl StreamFunction for Anomaly {
    type State = KeyStats;

    fn info() -> Info {
        Info::new("anomaly", env!("CARGO_PKG_VERSION"))
            .doc(
                "Per-key rolling z-score alerts: z = (value - mean) / stddev over the previous `window` values \
                 (sample standard deviation, n - 1), emitted when |z| >= `threshold`. The values are the log \
                 returns of consecutive samples (`of=returns`) or the samples themselves (`of=value`). Non-finite \
                 samples, and for returns samples <= 0, are skipped and counted. No z while fewer than `window` \
                 values precede, or when they are all equal.",
            )
            .param("window", Some("100"), "number of previous values the mean and deviation cover, at least 2")
            .param("threshold", Some("3.0"), "alert when |z| reaches this, a positive number")
            .param("of", Some("returns"), "`returns` (log returns of the field) or `value` (the field itself)")
            .param("field", Some("close"), "name of the input field to read")
    }

    fn open(params: &Params, io: &mut Io) -> Result<Self, PluginError> {
        let raw = params.raw("window");
        let window = match raw.trim().parse::<usize>() {
            Ok(w) if (2..=MAX_WINDOW).contains(&w) => w,
            _ => return Err(params.bad("window", raw, &format!("a whole number from 2 to {MAX_WINDOW}"))),
        };
        let raw = params.raw("threshold");
        let threshold = match raw.trim().parse::<f64>() {
            Ok(t) if t.is_finite() && t > 0.0 => t,
            _ => return Err(params.bad("threshold", raw, "a positive number such as 3.0")),
        };
        let returns = match params.raw("of").trim() {
            "returns" => true,
            "value" => false,
            other => return Err(params.bad("of", other, "`returns` or `value`")),
        };
        let field = params.raw("field").trim();
        if field.is_empty() {
            return Err(params.bad("field", params.raw("field"), "the name of an input field, such as close"));
        }
        io.input("input", &[field], "the series to watch");
        let out = io.output("anomaly", &["z", "value", "mean", "stddev"], "values with |z| >= threshold");
        Ok(Anomaly { window, threshold, returns, out, skipped: 0 })
    }

    fn process(
        &mut self,
        input: &Batch,
        state: &mut KeyedState<Self::State>,
        out: &mut Output,
    ) -> Result<(), PluginError> {
        for row in input.rows() {
            let x = row.field(0);
            let stats = state.get_mut(row.key);
            let value = if self.returns {
                if !(x.is_finite() && x > 0.0) {
                    self.skipped += 1;
                    continue;
                }
                match stats.prev.replace(x) {
                    None => continue,
                    Some(prev) => (x / prev).ln(),
                }
            } else {
                x
            };
            if !value.is_finite() {
                self.skipped += 1;
                continue;
            }
            if stats.values.len() == self.window {
                let (mean, stddev, deviation) = stats.score(value);
                if stddev > 0.0 {
                    let z = deviation / stddev;
                    if z.abs() >= self.threshold {
                        out.emit(self.out, row.key, row.ts, &[z, value, mean, stddev]);
                    }
                }
            }
            stats.push(value, self.window);
        }
        Ok(())
    }
}

tickfold_sdk::export!(Anomaly);

#[cfg(test)]
mod tests;
