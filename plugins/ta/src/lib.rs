//! Streaming technical-analysis indicators for Tickfold plugins.
//!
//! Each indicator is a small state machine for one key's series: feed it
//! values in order with `update`, and it answers `Some(output)` once warmed
//! up. They follow TA-Lib's conventions (seeding, warm-up length, population
//! vs sample deviation), checked against batch implementations of TA-Lib's
//! algorithms in `tests/reference`. Every state is `serde`-serialisable, so
//! it can live in a plugin's per-key state and survive checkpoints.
//!
//! Numerics: running sums use Neumaier's compensated summation ([`Sum`]),
//! and rolling sums are recomputed from the stored window periodically, so
//! error stays at a few ulps over unbounded runs and at any price scale.

pub mod sum;

pub use sum::Sum;
