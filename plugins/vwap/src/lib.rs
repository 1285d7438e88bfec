//! `vwap`: session and rolling volume-weighted average price, per trade.
//!
//! Reads `trades` (`price`, `size`) and writes, for every trade it accepts,
//! one sample on `vwap` (`vwap`, `volume`, `rolling_vwap`,
//! `rolling_volume`) with the trade's timestamp.
//!
//! Conventions:
//!
//! - Sessions are `[day + session_start, next day + session_start)`, UTC.
//!   `vwap`/`volume` are `sum(price * size) / sum(size)` and `sum(size)`
//!   over the key's accepted trades of its current session, in arrival
//!   order, up to and including this trade. The first trade of a later
//!   session starts a new one.
//! - A trade of a session *earlier* than the key's current one is late: no
//!   output, and it takes no part in the rolling VWAP either.
//! - `rolling_vwap`/`rolling_volume` cover the key's accepted trades with
//!   event time in `(max_ts - window, max_ts]`, where `max_ts` is the
//!   highest event time the key has had so far (this trade included).
//!   Out-of-order trades inside that range count; the range is not reset
//!   by a new session.
//! - Trades with a size <= 0 or a non-finite price or size are invalid:
//!   skipped, no output. So both volumes are always > 0.
//! - Late and invalid trades are counted ([`Vwap::late_trades`],
//!   [`Vwap::invalid_trades`], since the instance opened) and logged at warn
//!   level on the 1st, 10th, 100th, ... occurrence of each kind.
//!
//! Memory: the window holds one entry per millisecond (the VWAP and size
//! of that millisecond's trades, which leave the window together), so it
//! is bounded by the window's length, not by how dense the feed is.
//!
//! Numerics: sums are compensated (Neumaier). The rolling sums are
//! recomputed from the stored entries once as many entries have left the
//! window as it holds (at least 64), so their error stays bounded over
//! unbounded runs at amortised O(1) cost.

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};
use tickfold_sdk::log::{self, Occurrences};
use tickfold_sdk::prelude::*;
use tickfold_ta::Sum;

const DAY_MS: Millis = 86_400_000;
/// Fewest evictions between two exact recomputations of the rolling sums.
const MIN_RECOMPUTE: u64 = 64;

/// See the crate docs.
pub struct Vwap {
    session_start: Millis,
    window: Millis,
    out: usize,
    late: Occurrences,
    invalid: Occurrences,
}

impl Vwap {
    /// Trades skipped because they belong to an earlier session than their
    /// key's current one, since this instance opened (or was restored).
    pub fn late_trades(&self) -> u64 {
        self.late.total()
    }

    /// Trades skipped for a size <= 0 or a non-finite value, since this
    /// instance opened (or was restored).
    pub fn invalid_trades(&self) -> u64 {
        self.invalid.total()
    }
}

/// The trades of one millisecond kept in the rolling window: their VWAP
/// and total size (a single trade's price and size; snapshots of 0.1.0,
/// which kept one entry per trade, read the same).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
struct Held {
    ts: Millis,
    price: f64,
    size: f64,
}

/// One key's state.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct KeyVwap {
    /// The current session (days since the epoch, shifted by the session
    /// start); `None` before the first trade.
    session: Option<i64>,
    session_notional: Sum,
    session_volume: Sum,
    max_ts: Option<Millis>,
    /// The rolling window's trades by millisecond, sorted by time (older
    /// states may hold several entries of one millisecond, in arrival order).
    held: VecDeque<Held>,
    notional: Sum,
    volume: Sum,
    evicted: u64,
}

impl KeyVwap {
    fn hold(&mut self, trade: Held, window: Millis) {
        let max_ts = self.max_ts.map_or(trade.ts, |m| m.max(trade.ts));
        self.max_ts = Some(max_ts);
        // Exclusive lower bound of the window.
        let floor = max_ts.saturating_sub(window);
        if trade.ts > floor {
            // Trades of one millisecond leave the window together, so they
            // are held as one (their VWAP and total size): the window then
            // holds at most one entry per millisecond, however dense the feed.
            let at = if self.held.back().is_none_or(|h| h.ts <= trade.ts) {
                self.held.len()
            } else {
                self.held.partition_point(|h| h.ts <= trade.ts)
            };
            match at.checked_sub(1).and_then(|i| self.held.get_mut(i)).filter(|h| h.ts == trade.ts) {
                Some(same_ms) => {
                    let size = same_ms.size + trade.size;
                    same_ms.price = (same_ms.price * same_ms.size + trade.price * trade.size) / size;
                    same_ms.size = size;
                }
                None => self.held.insert(at, trade),
            }
            self.notional.add(trade.price * trade.size);
            self.volume.add(trade.size);
        }
        while let Some(old) = self.held.front().copied().filter(|h| h.ts <= floor) {
            self.held.pop_front();
            self.notional.add(-(old.price * old.size));
            self.volume.add(-old.size);
            self.evicted += 1;
        }
        if self.evicted >= MIN_RECOMPUTE.max(self.held.len() as u64) {
            self.notional = self.held.iter().map(|h| h.price * h.size).collect();
            self.volume = self.held.iter().map(|h| h.size).collect();
            self.evicted = 0;
        }
    }
}

impl StreamFunction for Vwap {
    type State = KeyVwap;

    fn info() -> Info {
        Info::new("vwap", env!("CARGO_PKG_VERSION"))
            .doc(
                "Per trade: the session VWAP and volume (sessions start daily at `session_start` UTC; a key's first \
                 trade of a later session resets them) and the rolling VWAP and volume over the trades in \
                 (max_ts - window, max_ts], max_ts being the key's highest event time so far. Trades of an earlier \
                 session than the key's current one are late, and trades with size <= 0 or non-finite values \
                 invalid: both are skipped (no output), counted and logged.",
            )
            .param("session_start", Some("00:00"), "UTC time of day at which sessions start, HH:MM or HH:MM:SS")
            .param("window", Some("5m"), "length of the rolling VWAP's window, a positive duration")
    }

    fn open(params: &Params, io: &mut Io) -> Result<Self, PluginError> {
        let session_start = params.time_of_day_ms("session_start")?;
        let window = params.duration_ms("window")?;
        if window <= 0 {
            return Err(params.bad("window", params.raw("window"), "a positive duration such as 5m"));
        }
        io.input("trades", &["price", "size"], "trades: price and size (quantity)");
        let out = io.output(
            "vwap",
            &["vwap", "volume", "rolling_vwap", "rolling_volume"],
            "per accepted trade: session VWAP and volume, rolling VWAP and volume",
        );
        Ok(Vwap { session_start, window, out, late: Occurrences::default(), invalid: Occurrences::default() })
    }

    fn process(
        &mut self,
        input: &Batch,
        state: &mut KeyedState<Self::State>,
        out: &mut Output,
    ) -> Result<(), PluginError> {
        for row in input.rows() {
            let (price, size) = (row.field(0), row.field(1));
            if !(price.is_finite() && size.is_finite() && size > 0.0) {
                if let Some(n) = self.invalid.count() {
                    log::warn(&format!(
                        "vwap: skipped an invalid trade of `{}` at {} (price {price}, size {size}); {} so far",
                        state.name(row.key).unwrap_or("?"),
                        row.ts,
                        n
                    ));
                }
                continue;
            }
            let session = row.ts.saturating_sub(self.session_start).div_euclid(DAY_MS);
            let key = state.get_mut(row.key);
            match key.session {
                Some(current) if session < current => {
                    if let Some(n) = self.late.count() {
                        log::warn(&format!(
                            "vwap: skipped a late trade of `{}` at {}: its session ended before the current one; \
                             {} so far",
                            state.name(row.key).unwrap_or("?"),
                            row.ts,
                            n
                        ));
                    }
                    continue;
                }
                Some(current) if session == current => {}
                _ => {
                    key.session = Some(session);
                    key.session_notional = Sum::ZERO;
                    key.session_volume = Sum::ZERO;
                }
            }
            key.session_notional.add(price * size);
            key.session_volume.add(size);
            key.hold(Held { ts: row.ts, price, size }, self.window);

            let volume = key.session_volume.value();
            let rolling_volume = key.volume.value();
            out.emit(
                self.out,
                row.key,
                row.ts,
                &[key.session_notional.value() / volume, volume, key.notional.value() / rolling_volume, rolling_volume],
            );
        }
        Ok(())
    }
}

tickfold_sdk::export!(Vwap);

#[cfg(test)]
mod tests;
