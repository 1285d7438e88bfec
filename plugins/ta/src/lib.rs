//! Streaming technical-analysis indicators for Tickfold plugins.
//!
//! Each indicator is a small state machine for one key's series: feed it
//! values in order with `update`, and it answers `Some(output)` once warmed
//! up. They follow TA-Lib's conventions (seeding, warm-up length, population
//! vs sample deviation), checked against batch implementations of TA-Lib's
//! algorithms in `tests/reference`. Every state is `serde`-serialisable, so
//! it can live in a plugin's per-key state and survive checkpoints.
//!
//! | type | TA-Lib | first output at index |
//! | --- | --- | --- |
//! | [`Sma`] | `TA_SMA` | `period - 1` |
//! | [`Ema`] | `TA_EMA` | `period - 1` |
//! | [`Rsi`] | `TA_RSI` | `period` |
//! | [`Macd`] | `TA_MACD` ([`MacdVariant::TaLib`]) or two `TA_EMA`s | `slow - 1 + signal - 1` |
//! | [`Bollinger`] | `TA_BBANDS` with an SMA | `period - 1` |
//!
//! Values must be finite: a NaN or infinity would stay in the state for
//! good, so callers filter them out (debug builds assert it). Periods are
//! not validated beyond the constructors' panics; plugins check parameters
//! and report bad ones.
//!
//! [`MultiPeriodPlugin`] runs one [`PeriodIndicator`] ([`Sma`], [`Ema`]) per
//! period per key: it is the whole of the `sma` and `ema` plugins.
//!
//! Numerics: running sums use Neumaier's compensated summation ([`Sum`]),
//! and rolling sums are recomputed from the stored window every `period`
//! updates, so error stays at a few ulps over unbounded runs and at any
//! price scale. Bollinger's deviation is computed from the stored window
//! around the mean, never as E[x²] - E[x]². Updates do not allocate.

mod bollinger;
mod ema;
mod macd;
pub mod multi;
mod rsi;
mod sma;
pub mod sum;
mod window;

#[cfg(test)]
mod tests;

pub use bollinger::{Bands, Bollinger};
pub use ema::Ema;
pub use macd::{Macd, MacdOutput, MacdVariant};
pub use multi::{MultiPeriodPlugin, MultiPeriodSpec, PeriodIndicator};
pub use rsi::Rsi;
pub use sma::Sma;
pub use sum::Sum;

/// The longest period the plugins accept, as in TA-Lib. Windowed
/// indicators keep `period` values per key (800 kB at this length).
pub const MAX_PERIOD: usize = 100_000;
