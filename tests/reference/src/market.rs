//! References for bars, VWAP and anomalies, written from the definitions in
//! the `ohlcv`, `vwap` and `anomaly` plugins' docs.
//!
//! Every function takes the whole input at once and recomputes each output
//! from scratch (plain sums over the rows that belong to it), so it is slow
//! (quadratic) but easy to check by reading. Rows of one key are taken in
//! the order given, which is the arrival order the plugins see.

/// A trade as the `ohlcv` and `vwap` plugins read it.
#[derive(Clone, Debug, PartialEq)]
pub struct Trade {
    /// The key (symbol).
    pub key: String,
    /// Event time, ms since the Unix epoch.
    pub ts: i64,
    /// Trade price.
    pub price: f64,
    /// Trade size (quantity).
    pub size: f64,
}

/// One OHLCV bar: the trades of one key in `[start, start + window)`.
#[derive(Clone, Debug, PartialEq)]
pub struct Bar {
    /// The key.
    pub key: String,
    /// Start of the window (the bar's timestamp).
    pub start: i64,
    /// Price of the trade with the smallest event time (ties: first given).
    pub open: f64,
    /// Highest price.
    pub high: f64,
    /// Lowest price.
    pub low: f64,
    /// Price of the trade with the largest event time (ties: last given).
    pub close: f64,
    /// Sum of sizes.
    pub volume: f64,
    /// `sum(price * size) / volume`, or `close` when the volume is 0.
    pub vwap: f64,
    /// Number of trades.
    pub count: usize,
    /// Index (into the input) of the trade after whose watermark the bar
    /// closes; `None` when only the final watermark (`i64::MAX`) closes it.
    pub closed_after: Option<usize>,
}

/// What [`ohlcv_bars`] computes.
#[derive(Clone, Debug, PartialEq)]
pub struct Bars {
    /// The bars, sorted by key, then start.
    pub bars: Vec<Bar>,
    /// Trades dropped because their window had closed.
    pub late: usize,
    /// Trades dropped because of a non-finite price or size, or a negative
    /// size.
    pub invalid: usize,
}

/// Tumbling bars of `window_ms`, aligned to the epoch.
///
/// Watermark model: with `Some(lag)`, after trade `i` the watermark is the
/// highest event time of trades `0..=i` (valid or not) minus `lag`
/// (saturating). A window `[s, s + window)` closes once the watermark
/// reaches `s + window + lateness_ms`; a trade arriving when its window has
/// closed is late. With `None` nothing is late and every bar closes at the
/// end.
pub fn ohlcv_bars(trades: &[Trade], window_ms: i64, lateness_ms: i64, watermark_lag_ms: Option<i64>) -> Bars {
    assert!(window_ms > 0 && lateness_ms >= 0);
    // watermark_after[i]: the watermark once trade i has been processed.
    let mut watermark_after = Vec::with_capacity(trades.len());
    let mut max_ts = i64::MIN;
    for t in trades {
        max_ts = max_ts.max(t.ts);
        watermark_after.push(match watermark_lag_ms {
            Some(lag) => max_ts.saturating_sub(lag),
            None => i64::MIN,
        });
    }
    let start_of = |ts: i64| ts.div_euclid(window_ms) * window_ms;
    let closes_at = |start: i64| start + window_ms + lateness_ms;

    let mut late = 0;
    let mut invalid = 0;
    // (index, trade) of every trade that makes it into a bar.
    let mut kept: Vec<(usize, &Trade)> = Vec::new();
    for (i, t) in trades.iter().enumerate() {
        if !t.price.is_finite() || !t.size.is_finite() || t.size < 0.0 {
            invalid += 1;
            continue;
        }
        let watermark_before = if i == 0 { i64::MIN } else { watermark_after[i - 1] };
        if closes_at(start_of(t.ts)) <= watermark_before {
            late += 1;
            continue;
        }
        kept.push((i, t));
    }

    let mut groups: Vec<(String, i64)> = kept.iter().map(|(_, t)| (t.key.clone(), start_of(t.ts))).collect();
    groups.sort();
    groups.dedup();

    let mut bars = Vec::new();
    for (key, start) in groups {
        let members: Vec<&Trade> =
            kept.iter().filter(|(_, t)| t.key == key && start_of(t.ts) == start).map(|(_, t)| *t).collect();
        let min_ts = members.iter().map(|t| t.ts).min().unwrap();
        let max_ts = members.iter().map(|t| t.ts).max().unwrap();
        let open = members.iter().find(|t| t.ts == min_ts).unwrap().price;
        let close = members.iter().rev().find(|t| t.ts == max_ts).unwrap().price;
        let high = members.iter().map(|t| t.price).fold(f64::NEG_INFINITY, f64::max);
        let low = members.iter().map(|t| t.price).fold(f64::INFINITY, f64::min);
        let volume: f64 = members.iter().map(|t| t.size).sum();
        let notional: f64 = members.iter().map(|t| t.price * t.size).sum();
        let vwap = if volume == 0.0 { close } else { notional / volume };
        let closed_after = watermark_after.iter().position(|&w| w >= closes_at(start));
        bars.push(Bar { key, start, open, high, low, close, volume, vwap, count: members.len(), closed_after });
    }
    Bars { bars, late, invalid }
}

/// A VWAP and the volume behind it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Vwap {
    /// `sum(price * size) / sum(size)`.
    pub vwap: f64,
    /// `sum(size)`.
    pub volume: f64,
}

const DAY_MS: i64 = 86_400_000;

fn vwap_trade_is_valid(t: &Trade) -> bool {
    t.price.is_finite() && t.size.is_finite() && t.size > 0.0
}

fn vwap_of<'a>(trades: impl Iterator<Item = &'a Trade>) -> Vwap {
    let (mut notional, mut volume) = (0.0, 0.0);
    for t in trades {
        notional += t.price * t.size;
        volume += t.size;
    }
    Vwap { vwap: notional / volume, volume }
}

/// Session VWAP, one entry per trade: `None` for a trade that is skipped
/// (size <= 0, a non-finite value, or a session earlier than the key's
/// current one).
///
/// Sessions are `[day + session_start_ms, next day + session_start_ms)` in
/// UTC. A key's current session is the latest session of its valid trades
/// so far; the VWAP covers the key's valid trades of that session up to and
/// including this one.
pub fn session_vwap(trades: &[Trade], session_start_ms: i64) -> Vec<Option<Vwap>> {
    let session_of = |t: &Trade| (t.ts - session_start_ms).div_euclid(DAY_MS);
    (0..trades.len())
        .map(|i| {
            let t = &trades[i];
            if !vwap_trade_is_valid(t) {
                return None;
            }
            let seen = || trades[..=i].iter().filter(|u| u.key == t.key && vwap_trade_is_valid(u));
            let current = seen().map(session_of).max().unwrap();
            if session_of(t) < current {
                return None;
            }
            Some(vwap_of(seen().filter(|u| session_of(u) == current)))
        })
        .collect()
}

/// Rolling VWAP, one entry per trade: `None` for a trade with size <= 0 or
/// a non-finite value.
///
/// For trade `i`, `max_ts` is the highest event time among the key's valid
/// trades `0..=i`, and the VWAP covers those of them with event time in
/// `(max_ts - window_ms, max_ts]`. Every valid trade given takes part:
/// callers remove beforehand the trades that another rule skips (such as
/// [`session_vwap`]'s late ones).
pub fn rolling_vwap(trades: &[Trade], window_ms: i64) -> Vec<Option<Vwap>> {
    (0..trades.len())
        .map(|i| {
            let t = &trades[i];
            if !vwap_trade_is_valid(t) {
                return None;
            }
            let seen = || trades[..=i].iter().filter(|u| u.key == t.key && vwap_trade_is_valid(u));
            let max_ts = seen().map(|u| u.ts).max().unwrap();
            Some(vwap_of(seen().filter(|u| u.ts > max_ts - window_ms && u.ts <= max_ts)))
        })
        .collect()
}

/// One input sample of the `anomaly` plugin.
#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    /// The key.
    pub key: String,
    /// Event time.
    pub ts: i64,
    /// The input field's value.
    pub x: f64,
}

/// What the z-score is taken of.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ZscoreOf {
    /// `ln(x_t / x_(t-1))` of consecutive positive, finite samples of a key.
    Returns,
    /// The finite samples themselves.
    Value,
}

/// A value scored against the window of values before it.
#[derive(Clone, Debug, PartialEq)]
pub struct Scored {
    /// The key.
    pub key: String,
    /// Event time of the sample that produced the value.
    pub ts: i64,
    /// The value (a log return, or the sample).
    pub value: f64,
    /// Mean of the previous `window` values.
    pub mean: f64,
    /// Sample standard deviation (n - 1) of the previous `window` values;
    /// exactly 0 when they are all equal (as in pandas).
    pub stddev: f64,
    /// `(value - mean) / stddev`, or `None` when `stddev` is 0.
    pub z: Option<f64>,
}

/// Every value that has `window` values before it (of the same key),
/// scored against them, in input order. Samples that yield no value
/// (non-finite; for returns also non-positive, a key's first, and a
/// return that overflows) are skipped.
pub fn zscores(samples: &[Sample], window: usize, of: ZscoreOf) -> Vec<Scored> {
    assert!(window >= 2);
    // The value stream of each key: (key, ts, value), in input order.
    let mut values: Vec<(&str, i64, f64)> = Vec::new();
    for (i, s) in samples.iter().enumerate() {
        match of {
            ZscoreOf::Value => {
                if s.x.is_finite() {
                    values.push((&s.key, s.ts, s.x));
                }
            }
            ZscoreOf::Returns => {
                let usable = |x: f64| x.is_finite() && x > 0.0;
                if !usable(s.x) {
                    continue;
                }
                let previous = samples[..i].iter().rev().find(|p| p.key == s.key && usable(p.x));
                if let Some(p) = previous {
                    let r = (s.x / p.x).ln();
                    if r.is_finite() {
                        values.push((&s.key, s.ts, r));
                    }
                }
            }
        }
    }

    let mut scored = Vec::new();
    for (i, &(key, ts, value)) in values.iter().enumerate() {
        let before: Vec<f64> = values[..i].iter().filter(|v| v.0 == key).map(|v| v.2).collect();
        if before.len() < window {
            continue;
        }
        let w = &before[before.len() - window..];
        let n = window as f64;
        let mean = w.iter().sum::<f64>() / n;
        let stddev = if w.iter().all(|&x| x == w[0]) {
            0.0
        } else {
            (w.iter().map(|x| (x - mean) * (x - mean)).sum::<f64>() / (n - 1.0)).sqrt()
        };
        let z = (stddev != 0.0).then(|| (value - mean) / stddev);
        scored.push(Scored { key: key.to_string(), ts, value, mean, stddev, z });
    }
    scored
}

/// The scored values with `|z| >= threshold`: what the `anomaly` plugin
/// emits.
pub fn zscore_alerts(samples: &[Sample], window: usize, threshold: f64, of: ZscoreOf) -> Vec<Scored> {
    zscores(samples, window, of).into_iter().filter(|s| s.z.is_some_and(|z| z.abs() >= threshold)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn trade(key: &str, ts: i64, price: f64, size: f64) -> Trade {
        Trade { key: key.into(), ts, price, size }
    }

    #[test]
    fn bars_by_hand() {
        // Window 10, lateness 5, watermark = max ts - 2.
        let trades = vec![
            trade("A", 3, 10.0, 1.0),
            trade("A", 1, 12.0, 2.0),  // earlier: the open
            trade("A", 3, 11.0, 1.0),  // ties the largest ts, arrives last: the close
            trade("B", 4, 5.0, 0.0),   // zero volume: vwap = close
            trade("A", 17, 20.0, 1.0), // watermark 15 closes [0, 10)
            trade("A", 9, 99.0, 1.0),  // late
            trade("A", 12, f64::NAN, 1.0),
            trade("A", 12, 1.0, -1.0),
        ];
        let out = ohlcv_bars(&trades, 10, 5, Some(2));
        assert_eq!((out.late, out.invalid), (1, 2));
        let a0 = &out.bars[0];
        assert_eq!((a0.key.as_str(), a0.start, a0.count, a0.closed_after), ("A", 0, 3, Some(4)));
        assert_eq!((a0.open, a0.high, a0.low, a0.close, a0.volume), (12.0, 12.0, 10.0, 11.0, 4.0));
        assert_eq!(a0.vwap, (10.0 + 24.0 + 11.0) / 4.0);
        let a1 = &out.bars[1];
        assert_eq!((a1.start, a1.open, a1.close, a1.count, a1.closed_after), (10, 20.0, 20.0, 1, None));
        let b = &out.bars[2];
        assert_eq!((b.key.as_str(), b.vwap, b.volume, b.closed_after), ("B", 5.0, 0.0, Some(4)));
        assert_eq!(out.bars.len(), 3);
    }

    #[test]
    fn session_vwap_resets_and_rejects_earlier_sessions() {
        let h = 3_600_000;
        // Sessions start at 01:00 UTC.
        let trades = vec![
            trade("A", 2 * h, 10.0, 1.0),
            trade("A", 23 * h, 20.0, 3.0),
            trade("A", 24 * h + h / 2, 40.0, 1.0), // 00:30 next day: same session
            trade("A", 25 * h, 7.0, 2.0),          // 01:00: a new session
            trade("A", 24 * h + h / 2, 1.0, 1.0),  // the previous session: late
            trade("A", 25 * h, 1.0, 0.0),          // size 0: skipped
        ];
        let got = session_vwap(&trades, h);
        assert_eq!(got[0], Some(Vwap { vwap: 10.0, volume: 1.0 }));
        assert_eq!(got[1], Some(Vwap { vwap: 70.0 / 4.0, volume: 4.0 }));
        assert_eq!(got[2], Some(Vwap { vwap: 110.0 / 5.0, volume: 5.0 }));
        assert_eq!(got[3], Some(Vwap { vwap: 7.0, volume: 2.0 }));
        assert_eq!(got[4], None);
        assert_eq!(got[5], None);
    }

    #[test]
    fn rolling_vwap_follows_the_highest_time() {
        let trades = vec![
            trade("A", 100, 10.0, 1.0),
            trade("A", 105, 20.0, 1.0),
            trade("A", 95, 30.0, 2.0), // out of order and outside (95, 105]
            trade("A", 104, 40.0, 2.0),
            trade("A", 111, 50.0, 1.0), // window (101, 111]
        ];
        let got = rolling_vwap(&trades, 10);
        assert_eq!(got[1], Some(Vwap { vwap: 15.0, volume: 2.0 }));
        assert_eq!(got[2], Some(Vwap { vwap: 15.0, volume: 2.0 }));
        assert_eq!(got[3], Some(Vwap { vwap: 110.0 / 4.0, volume: 4.0 }));
        assert_eq!(got[4], Some(Vwap { vwap: 150.0 / 4.0, volume: 4.0 }));
    }

    #[test]
    fn zscores_by_hand() {
        let s = |ts: i64, x: f64| Sample { key: "A".into(), ts, x };
        // Values 1, 2, 3 then 6: mean 2, sample sd 1, z 4.
        let samples = vec![s(1, 1.0), s(2, 2.0), s(3, 3.0), s(4, 6.0), s(5, f64::NAN)];
        let z = zscores(&samples, 3, ZscoreOf::Value);
        assert_eq!(z.len(), 1);
        assert_eq!((z[0].ts, z[0].mean, z[0].stddev, z[0].z), (4, 2.0, 1.0, Some(4.0)));
        assert_eq!(zscore_alerts(&samples, 3, 4.0, ZscoreOf::Value).len(), 1);
        assert!(zscore_alerts(&samples, 3, 4.5, ZscoreOf::Value).is_empty());

        // Prices e^0, e^1, (skipped 0), e^2, e^3, e^3: returns 1, 1, 1, 0.
        let e = std::f64::consts::E;
        let prices = vec![s(1, 1.0), s(2, e), s(3, 0.0), s(4, e * e), s(5, e * e * e), s(6, e * e * e)];
        let z = zscores(&prices, 2, ZscoreOf::Returns);
        assert_eq!(z.len(), 2);
        assert_eq!(z[1].ts, 6);
        assert!((z[1].mean - 1.0).abs() < 1e-12 && z[1].value == 0.0);
    }

    #[test]
    fn a_constant_window_has_no_z() {
        let samples: Vec<Sample> = (0..5).map(|i| Sample { key: "A".into(), ts: i, x: 0.1 }).collect();
        let z = zscores(&samples, 3, ZscoreOf::Value);
        assert_eq!(z.len(), 2);
        assert!(z.iter().all(|s| s.stddev == 0.0 && s.z.is_none()));
    }
}
