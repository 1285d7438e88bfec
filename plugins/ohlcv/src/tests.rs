use std::collections::BTreeMap;

use tickfold_reference::market::{self, Trade};
use tickfold_reference::rng::Rng;
use tickfold_sdk::testing::{Harness, Sample};

use super::Ohlcv;

type Row = (&'static str, i64, Vec<f64>);

const KEYS: [&str; 3] = ["AAPL", "MSFT", "BTC-USD"];
const MINUTE: i64 = 60_000;
/// A Monday, 2023-11-13 00:00 UTC, so windows line up with real minutes.
const T0: i64 = 1_699_833_600_000;

/// Trades of several keys interleaved: gaps of several windows, ties in
/// time, zero sizes, out-of-order trades within `lateness + lag` (never
/// late), a few far older ones (mostly late), and a few invalid values.
fn generate(seed: u64, n: usize, window: i64, lateness: i64, lag: i64, scale: [f64; 3]) -> Vec<Row> {
    let mut rng = Rng(seed);
    let mut clock = T0;
    let mut price = scale;
    let mut last_ts = [T0; 3];
    let mut rows = Vec::with_capacity(n);
    for _ in 0..n {
        let k = rng.below(KEYS.len() as u64) as usize;
        if rng.chance(0.01) {
            clock += window * (2 + rng.below(4) as i64);
        } else {
            clock += rng.below(window as u64 / 20) as i64;
        }
        let ts = if rng.chance(0.08) {
            last_ts[k]
        } else if rng.chance(0.08) {
            clock - rng.below((lateness + lag) as u64 + 1) as i64
        } else if rng.chance(0.015) {
            clock - lateness - lag - rng.below(3 * window as u64) as i64
        } else {
            clock
        };
        last_ts[k] = ts;
        price[k] *= 1.0 + (rng.unit() - 0.5) * 0.004;
        let mut p = price[k];
        let mut size = if rng.chance(0.03) { 0.0 } else { (1.0 + rng.below(500) as f64) * (0.5 + rng.unit()) };
        match rng.below(200) {
            0 => p = f64::NAN,
            1 => size = -1.0,
            2 => size = f64::INFINITY,
            _ => {}
        }
        rows.push((KEYS[k], ts, vec![p, size]));
    }
    rows
}

fn to_trades(rows: &[Row]) -> Vec<Trade> {
    rows.iter().map(|(k, ts, v)| Trade { key: k.to_string(), ts: *ts, price: v[0], size: v[1] }).collect()
}

/// Feeds rows one at a time, with the watermark following `max_ts - lag`
/// after each (as `Harness::run` does), but without the final watermark.
/// Each output is tagged with the index of the row after which it came.
fn feed(h: &mut Harness<Ohlcv>, rows: &[Row], lag: Option<i64>, max_ts: &mut i64) -> Vec<(usize, Sample)> {
    let mut out = Vec::new();
    for (i, row) in rows.iter().enumerate() {
        out.extend(h.process(0, std::slice::from_ref(row)).unwrap().into_iter().map(|s| (i, s)));
        *max_ts = (*max_ts).max(row.1);
        if let Some(lag) = lag {
            out.extend(h.watermark(max_ts.saturating_sub(lag)).unwrap().into_iter().map(|s| (i, s)));
        }
    }
    out
}

fn close_to(got: f64, want: f64) -> bool {
    (got - want).abs() <= want.abs().max(1.0) * 1e-9
}

fn relatively_close(got: f64, want: f64) -> bool {
    (got - want).abs() <= want.abs() * 1e-9
}

/// Runs the plugin and the reference over the same trades and compares
/// every bar: selections (open, high, low, close, count) exactly, sums to
/// `near`, and when each bar is emitted. Returns the reference's result.
fn check_against_reference(
    rows: &[Row],
    window: i64,
    lateness: i64,
    lag: Option<i64>,
    near: fn(f64, f64) -> bool,
) -> market::Bars {
    let (w, l) = (format!("{window}ms"), format!("{lateness}ms"));
    let mut h = Harness::<Ohlcv>::open(&[("window", &w), ("lateness", &l)]).unwrap();
    let mut max_ts = i64::MIN;
    let mut got = feed(&mut h, rows, lag, &mut max_ts);
    got.extend(h.watermark(i64::MAX).unwrap().into_iter().map(|s| (usize::MAX, s)));

    // Per key, bars come out in start order.
    let mut last_start: BTreeMap<&str, i64> = BTreeMap::new();
    for (_, s) in &got {
        assert_eq!(s.series, "bars");
        let prev = last_start.insert(&s.key, s.ts);
        assert!(prev.is_none_or(|p| p < s.ts), "{} bars out of order: {prev:?} then {}", s.key, s.ts);
    }

    let want = market::ohlcv_bars(&to_trades(rows), window, lateness, lag);
    got.sort_by(|a, b| (&a.1.key, a.1.ts).cmp(&(&b.1.key, b.1.ts)));
    assert_eq!(got.len(), want.bars.len(), "number of bars");
    for ((after, g), e) in got.iter().zip(&want.bars) {
        let ctx = format!("bar {} @ {}: got {:?}, want {e:?}", g.key, g.ts, g.values);
        assert_eq!((g.key.as_str(), g.ts), (e.key.as_str(), e.start), "{ctx}");
        let [open, high, low, close, volume, vwap, count] = g.values[..] else { panic!("{ctx}") };
        assert_eq!([open, high, low, close, count], [e.open, e.high, e.low, e.close, e.count as f64], "{ctx}");
        assert!(near(volume, e.volume), "volume: {ctx}");
        assert!(near(vwap, e.vwap), "vwap: {ctx}");
        assert_eq!(*after, e.closed_after.unwrap_or(usize::MAX), "emitted after the wrong row: {ctx}");
    }
    let plugin = h.instance().plugin();
    assert_eq!(plugin.late_trades() as usize, want.late, "late trades");
    assert_eq!(plugin.invalid_trades() as usize, want.invalid, "invalid trades");
    want
}

#[test]
fn matches_the_reference_on_generated_trades() {
    let (window, lateness, lag) = (MINUTE, 20_000, 5_000);
    let rows = generate(7, 6_000, window, lateness, lag, [180.0, 370.0, 36_000.0]);
    let want = check_against_reference(&rows, window, lateness, Some(lag), close_to);

    // The data exercises what it is meant to.
    assert!(want.late >= 10 && want.invalid >= 10, "late {} invalid {}", want.late, want.invalid);
    let gaps = want.bars.windows(2).filter(|b| b[0].key == b[1].key && b[1].start - b[0].start >= 3 * window).count();
    assert!(gaps >= 10, "only {gaps} gaps of 2+ empty windows");
    assert!(want.bars.iter().filter(|b| b.closed_after.is_some()).count() > want.bars.len() / 2);
}

#[test]
fn matches_the_reference_with_default_lateness_and_other_windows() {
    for (seed, window, lateness, lag) in [(11, MINUTE, 0, 0), (12, 5 * MINUTE, 0, 1_000), (13, 250, 100, 50)] {
        let rows = generate(seed, 3_000, window, lateness, lag, [50.0, 2.5, 9_000.0]);
        let want = check_against_reference(&rows, window, lateness, Some(lag), close_to);
        assert!(want.late > 0, "seed {seed}: nothing late");
    }
}

#[test]
fn without_watermarks_nothing_is_late_and_everything_closes_at_the_end() {
    let rows = generate(21, 2_000, MINUTE, 0, 0, [10.0, 20.0, 30.0]);
    let want = check_against_reference(&rows, MINUTE, 0, None, close_to);
    assert_eq!(want.late, 0);
}

#[test]
fn large_and_tiny_price_scales() {
    let (window, lateness, lag) = (MINUTE, 10_000, 2_000);
    let rows = generate(31, 4_000, window, lateness, lag, [2.0e7, 3.0e-6, 1.5e7]);
    check_against_reference(&rows, window, lateness, Some(lag), relatively_close);
}

#[test]
fn ties_in_time_pick_the_first_open_and_the_last_close() {
    let mut h = Harness::<Ohlcv>::open(&[("window", "10s")]).unwrap();
    let rows: Vec<Row> = vec![
        ("X", T0 + 5_000, vec![10.0, 1.0]),
        ("X", T0 + 1_000, vec![11.0, 1.0]), // smallest time: open
        ("X", T0 + 1_000, vec![12.0, 1.0]), // tie: arrives later, not the open
        ("X", T0 + 9_000, vec![13.0, 1.0]), // largest time
        ("X", T0 + 9_000, vec![14.0, 2.0]), // tie: arrives last, the close
        ("X", T0 + 2_000, vec![9.0, 1.0]),
        // Before the epoch: windows align with div_euclid.
        ("Y", -1, vec![1.0, 0.0]),
        ("Y", -3, vec![2.0, 0.0]),
    ];
    let out = h.run(&rows, None).unwrap();
    assert_eq!(out.len(), 2);
    assert_eq!((out[0].key.as_str(), out[0].ts), ("X", T0));
    let notional = 10.0 + 11.0 + 12.0 + 13.0 + 28.0 + 9.0;
    assert_eq!(out[0].values, vec![11.0, 14.0, 9.0, 14.0, 7.0, notional / 7.0, 6.0]);
    // Zero volume: vwap is the close.
    assert_eq!((out[1].key.as_str(), out[1].ts), ("Y", -10_000));
    assert_eq!(out[1].values, vec![2.0, 2.0, 1.0, 1.0, 0.0, 1.0, 2.0]);
}

#[test]
fn late_and_invalid_trades_are_skipped_and_counted() {
    let mut h = Harness::<Ohlcv>::open(&[("window", "10s"), ("lateness", "2s")]).unwrap();
    let mut out = h.process(0, &[("X", T0 + 1_000, vec![10.0, 1.0])]).unwrap();
    out.extend(h.watermark(T0 + 11_999).unwrap());
    assert!(out.is_empty(), "the window waits until end + lateness");
    out.extend(h.process(0, &[("X", T0 + 9_999, vec![20.0, 1.0])]).unwrap());
    out.extend(h.watermark(T0 + 12_000).unwrap());
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].values, vec![10.0, 20.0, 10.0, 20.0, 2.0, 15.0, 2.0]);
    let rows = [
        ("X", T0 + 9_999, vec![30.0, 1.0]),
        ("X", T0 + 20_000, vec![f64::NAN, 1.0]),
        ("X", T0 + 20_000, vec![1.0, f64::NEG_INFINITY]),
        ("X", T0 + 20_000, vec![1.0, -0.5]),
        ("X", i64::MAX, vec![1.0, 1.0]),
    ];
    assert!(h.process(0, &rows).unwrap().is_empty());
    assert!(h.watermark(i64::MAX).unwrap().is_empty(), "nothing valid was left open");
    let plugin = h.instance().plugin();
    assert_eq!((plugin.late_trades(), plugin.invalid_trades()), (1, 4));
}

#[test]
fn watermarks_that_close_nothing_do_not_scan_the_keys() {
    let mut h = Harness::<Ohlcv>::open(&[("window", "1m")]).unwrap();
    let names: Vec<String> = (0..1_000).map(|i| format!("K{i}")).collect();
    for (i, name) in names.iter().enumerate() {
        h.process(0, &[(name.as_str(), T0 + i as i64, vec![1.0, 1.0])]).unwrap();
        assert!(h.watermark(T0 + i as i64).unwrap().is_empty());
    }
    // One scan for the first watermark (the earliest close was unknown).
    assert_eq!(h.instance().plugin().key_scans(), 1);
    assert_eq!(h.watermark(T0 + MINUTE).unwrap().len(), 1_000);
    assert_eq!(h.instance().plugin().key_scans(), 2);
    assert!(h.watermark(T0 + 2 * MINUTE).unwrap().is_empty());
    assert_eq!(h.instance().plugin().key_scans(), 2);
}

/// Groups samples by key, keeping their order, as bit patterns.
fn by_key(samples: impl IntoIterator<Item = Sample>) -> BTreeMap<String, Vec<(i64, Vec<u64>)>> {
    let mut map: BTreeMap<String, Vec<(i64, Vec<u64>)>> = BTreeMap::new();
    for s in samples {
        map.entry(s.key).or_default().push((s.ts, s.values.iter().map(|v| v.to_bits()).collect()));
    }
    map
}

#[test]
fn snapshot_and_restore_continue_exactly() {
    let (window, lateness, lag) = (MINUTE, 20_000, 5_000);
    let params = [("window", "1m"), ("lateness", "20s")];
    let rows = generate(41, 3_000, window, lateness, lag, [180.0, 370.0, 36_000.0]);

    let mut whole = Harness::<Ohlcv>::open(&params).unwrap();
    let mut max_ts = i64::MIN;
    let mut expected: Vec<Sample> = feed(&mut whole, &rows, Some(lag), &mut max_ts).into_iter().map(|p| p.1).collect();
    expected.extend(whole.watermark(i64::MAX).unwrap());
    let plugin = whole.instance().plugin();
    let (late, invalid) = (plugin.late_trades(), plugin.invalid_trades());

    for split in [1, 777, 1_500, 2_999] {
        let mut first = Harness::<Ohlcv>::open(&params).unwrap();
        let mut max_ts = i64::MIN;
        let mut got: Vec<Sample> =
            feed(&mut first, &rows[..split], Some(lag), &mut max_ts).into_iter().map(|p| p.1).collect();
        let snapshot = first.instance().snapshot();
        let mut second = Harness::<Ohlcv>::restore(&params, snapshot).unwrap();
        // The host names the keys after a restore; new ids, another order.
        for key in KEYS.iter().rev() {
            second.key(key);
        }
        got.extend(feed(&mut second, &rows[split..], Some(lag), &mut max_ts).into_iter().map(|p| p.1));
        got.extend(second.watermark(i64::MAX).unwrap());
        assert_eq!(by_key(got), by_key(expected.clone()), "split at {split}");
        let (a, b) = (first.instance().plugin(), second.instance().plugin());
        assert_eq!((a.late_trades() + b.late_trades(), a.invalid_trades() + b.invalid_trades()), (late, invalid));
    }
}

#[test]
fn bad_params_say_what_to_change() {
    let err =
        |params: &[(&str, &str)]| Harness::<Ohlcv>::open(params).err().expect("should fail").message().to_string();
    let m = err(&[("window", "0s")]);
    assert!(m.contains("ohlcv: parameter `window` must be a positive duration") && m.contains("`0s`"), "{m}");
    let m = err(&[("window", "soon")]);
    assert!(m.contains("parameter `window` must be a duration") && m.contains("`soon`"), "{m}");
    let m = err(&[("lateness", "-5s")]);
    assert!(m.contains("parameter `lateness` must be a duration") && m.contains("`-5s`"), "{m}");
    let m = err(&[("window", "1d"), ("lateness", "9223372036854775807")]);
    assert!(m.contains("parameter `lateness` must be a duration that fits"), "{m}");
    let m = err(&[("windw", "1m")]);
    assert!(m.contains("unknown parameter `windw`") && m.contains("did you mean `window`"), "{m}");
}

#[test]
fn declares_its_series() {
    let mut h = Harness::<Ohlcv>::open(&[]).unwrap();
    let inst = h.instance();
    assert_eq!(inst.inputs()[0].name, "trades");
    assert_eq!(inst.inputs()[0].fields, ["price", "size"]);
    let out = &inst.outputs()[0];
    assert_eq!(out.name, "bars");
    assert_eq!(out.fields, ["open", "high", "low", "close", "volume", "vwap", "count"]);
}

#[test]
fn restored_keys_without_new_trades_still_close_their_windows() {
    let mut h = Harness::<Ohlcv>::open(&[("window", "1m")]).unwrap();
    h.feed(&[("AAPL", 1_000, vec![10.0, 1.0]), ("MSFT", 2_000, vec![20.0, 2.0])], Some(0)).unwrap();
    let snap = h.instance().snapshot();
    // A scan happens first (MSFT named, AAPL not yet), then AAPL's state
    // arrives when the host names it, with no trade of its own.
    let mut r = Harness::<Ohlcv>::restore(&[("window", "1m")], snap).unwrap();
    let out = r.finish().unwrap();
    let keys: Vec<&str> = out.iter().map(|s| s.key.as_str()).collect();
    assert_eq!(keys, vec!["AAPL", "MSFT"], "{out:?}");
    assert_eq!(out[0].values[0], 10.0);
}
