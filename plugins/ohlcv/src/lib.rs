//! `ohlcv`: tumbling event-time OHLCV bars per key.
//!
//! Reads `trades` (`price`, `size`) and writes `bars` (`open`, `high`,
//! `low`, `close`, `volume`, `vwap`, `count`), one bar per key and window
//! that received at least one trade.
//!
//! Conventions:
//!
//! - Windows are `[start, start + window)`, aligned to the Unix epoch (1m
//!   bars start on the minute, UTC). A bar's timestamp is its window's
//!   start.
//! - A window closes when the watermark reaches `start + window +
//!   lateness`; its bar is emitted then, from `on_watermark`. A key's bars
//!   come out in start order. A window with no trades emits no bar.
//! - `open` is the price of the trade with the smallest event time (ties:
//!   the first to arrive); `close` the one with the largest event time
//!   (ties: the last to arrive). `high`/`low` are the extreme prices.
//! - `volume` is the sum of sizes, `vwap` is `sum(price * size) / volume`,
//!   and when the volume is 0 (only zero-size trades) `vwap` is `close`.
//!   `count` is the number of trades. Sums are compensated (Neumaier).
//! - A trade whose window has already closed is *late*; a trade with a
//!   non-finite price or size, a negative size, or an event time within two
//!   windows plus `lateness` of the ends of the i64 range is *invalid*. Both
//!   are skipped and counted ([`Ohlcv::late_trades`],
//!   [`Ohlcv::invalid_trades`], since the instance opened), and logged at
//!   warn level on the 1st, 10th, 100th, ... occurrence of each kind.
//!
//! Cost: `on_watermark` keeps the earliest close time of any open window
//! and returns at once while the watermark is below it, so watermarks that
//! close nothing do not visit every key. After a restore that time is
//! unknown (it is not part of the snapshot), so the first watermark visits
//! every key once, and keys whose restored state arrives later (when the
//! host names them) are folded in through `KeyedState::take_restored`.

use serde::{Deserialize, Serialize};
use tickfold_sdk::log::{self, Occurrences};
use tickfold_sdk::prelude::*;
use tickfold_ta::Sum;

/// See the crate docs.
pub struct Ohlcv {
    spec: WindowSpec,
    /// Event times outside this range are invalid: window arithmetic on
    /// them would overflow.
    min_ts: Millis,
    max_ts: Millis,
    bars: usize,
    /// No open window of any key closes before this watermark. `MIN` means
    /// unknown (a fresh or restored instance), forcing one full scan.
    earliest_close: Millis,
    late: Occurrences,
    invalid: Occurrences,
    scans: u64,
}

impl Ohlcv {
    /// Trades skipped because their window had closed, since this instance
    /// opened (or was restored).
    pub fn late_trades(&self) -> u64 {
        self.late.total()
    }

    /// Trades skipped for a non-finite or negative value (or an unusable
    /// event time), since this instance opened (or was restored).
    pub fn invalid_trades(&self) -> u64 {
        self.invalid.total()
    }

    /// How many watermarks visited every key (the others closed nothing
    /// and returned at once).
    pub fn key_scans(&self) -> u64 {
        self.scans
    }
}

/// The running bar of one window.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct BarState {
    open: f64,
    open_ts: Millis,
    high: f64,
    low: f64,
    close: f64,
    close_ts: Millis,
    volume: Sum,
    notional: Sum,
    count: u64,
}

impl BarState {
    #[inline]
    fn add(&mut self, ts: Millis, price: f64, size: f64) {
        if self.count == 0 {
            (self.open, self.open_ts, self.close, self.close_ts) = (price, ts, price, ts);
            (self.high, self.low) = (price, price);
        } else {
            // Strict for open, non-strict for close: ties keep the first
            // open and take the last close.
            if ts < self.open_ts {
                (self.open, self.open_ts) = (price, ts);
            }
            if ts >= self.close_ts {
                (self.close, self.close_ts) = (price, ts);
            }
            // Comparisons, not f64::max/min: prices here are finite, and
            // WebAssembly has no instruction for Rust's NaN-ignoring max, so
            // those become calls into libm.
            if price > self.high {
                self.high = price;
            }
            if price < self.low {
                self.low = price;
            }
        }
        self.volume.add(size);
        self.notional.add(price * size);
        self.count += 1;
    }

    fn values(&self) -> [f64; 7] {
        let volume = self.volume.value();
        let vwap = if volume == 0.0 { self.close } else { self.notional.value() / volume };
        [self.open, self.high, self.low, self.close, volume, vwap, self.count as f64]
    }
}

impl StreamFunction for Ohlcv {
    type State = Windows<BarState>;

    fn info() -> Info {
        Info::new("ohlcv", env!("CARGO_PKG_VERSION"))
            .doc(
                "Tumbling event-time OHLCV bars per key, timestamped with the window's start and emitted when the \
                 watermark passes the window's end plus `lateness`. open/close are the prices of the earliest/latest \
                 trade by event time (ties: first/last to arrive); vwap = sum(price*size)/volume, or close when the \
                 volume is 0. Windows without trades emit nothing. Late trades (window already closed) and trades \
                 with a non-finite price or size or a negative size are skipped, counted and logged.",
            )
            .param("window", Some("1m"), "bar length, a positive duration (250ms, 30s, 1m, 1h, 1d)")
            .param("lateness", Some("0ms"), "how long past its end a window waits for out-of-order trades")
    }

    fn open(params: &Params, io: &mut Io) -> Result<Self, PluginError> {
        let window = params.duration_ms("window")?;
        if window <= 0 {
            return Err(params.bad("window", params.raw("window"), "a positive duration such as 1m"));
        }
        let lateness = params.duration_ms("lateness")?;
        if window.checked_add(lateness).is_none() {
            return Err(params.bad("lateness", params.raw("lateness"), "a duration that fits with `window` in i64 ms"));
        }
        io.input("trades", &["price", "size"], "trades: price and size (quantity)");
        let bars = io.output(
            "bars",
            &["open", "high", "low", "close", "volume", "vwap", "count"],
            "one bar per key and window with trades, at the window's start",
        );
        let reach = window + lateness;
        Ok(Ohlcv {
            spec: WindowSpec::tumbling(window).with_lateness(lateness),
            min_ts: Millis::MIN.saturating_add(reach).saturating_add(window),
            max_ts: Millis::MAX - reach - 1,
            bars,
            earliest_close: Millis::MIN,
            late: Occurrences::default(),
            invalid: Occurrences::default(),
            scans: 0,
        })
    }

    fn process(
        &mut self,
        input: &Batch,
        state: &mut KeyedState<Self::State>,
        _out: &mut Output,
    ) -> Result<(), PluginError> {
        let watermark = state.watermark();
        for row in input.rows() {
            let (price, size) = (row.field(0), row.field(1));
            let usable_ts = (self.min_ts..=self.max_ts).contains(&row.ts);
            if !(price.is_finite() && size.is_finite() && size >= 0.0 && usable_ts) {
                if let Some(n) = self.invalid.count() {
                    log::warn(&format!(
                        "ohlcv: skipped an invalid trade of `{}` at {} (price {price}, size {size}); {} so far",
                        state.name(row.key).unwrap_or("?"),
                        row.ts,
                        n
                    ));
                }
                continue;
            }
            let windows = state.get_mut(row.key);
            match windows.add(&self.spec, row.ts, watermark, |_, bar| bar.add(row.ts, price, size)) {
                Placed::Open => {
                    // The key's earliest window, not this trade's: a restored
                    // key may hold older ones.
                    if let Some(close) = windows.next_close(&self.spec) {
                        self.earliest_close = self.earliest_close.min(close);
                    }
                }
                Placed::Late | Placed::PartlyLate => {
                    if let Some(n) = self.late.count() {
                        log::warn(&format!(
                            "ohlcv: skipped a late trade of `{}` at {}: its window had closed (watermark {}); {} so far",
                            state.name(row.key).unwrap_or("?"),
                            row.ts,
                            watermark,
                            n
                        ));
                    }
                }
            }
        }
        Ok(())
    }

    fn on_watermark(
        &mut self,
        watermark: Millis,
        state: &mut KeyedState<Self::State>,
        out: &mut Output,
    ) -> Result<(), PluginError> {
        // Keys whose restored state arrived since the last watermark may
        // hold windows older than anything the cache has seen.
        let restored: Vec<KeyId> = state.take_restored().collect();
        for key in restored {
            if let Some(close) = state.get(key).and_then(|w| w.next_close(&self.spec)) {
                self.earliest_close = self.earliest_close.min(close);
            }
        }
        if watermark < self.earliest_close {
            return Ok(());
        }
        self.scans += 1;
        let mut earliest = Millis::MAX;
        for (key, windows) in state.iter_mut() {
            windows.close(&self.spec, watermark, |start, bar| out.emit(self.bars, key, start, &bar.values()));
            if let Some(close) = windows.next_close(&self.spec) {
                earliest = earliest.min(close);
            }
        }
        self.earliest_close = earliest;
        Ok(())
    }
}

tickfold_sdk::export!(Ohlcv);

#[cfg(test)]
mod tests;
