use std::collections::BTreeMap;

use tickfold_reference::market::{self, Trade};
use tickfold_reference::rng::Rng;
use tickfold_sdk::testing::{Harness, Sample};

use super::Vwap;

type Row = (&'static str, i64, Vec<f64>);

const KEYS: [&str; 3] = ["AAPL", "MSFT", "BTC-USD"];
const SECOND: i64 = 1_000;
const MINUTE: i64 = 60 * SECOND;
const HOUR: i64 = 60 * MINUTE;
const DAY: i64 = 24 * HOUR;
/// 2023-11-13 00:00 UTC.
const D0: i64 = 1_699_833_600_000;

/// Trades of several keys interleaved over several days: gaps of hours,
/// out-of-order trades within and beyond the rolling window, some from
/// earlier sessions, and a few invalid values.
fn generate(seed: u64, n: usize, window: i64, scale: [f64; 3]) -> Vec<Row> {
    let mut rng = Rng(seed);
    let mut clock = D0 + 11 * HOUR;
    let mut price = scale;
    let mut max_ts = [clock; 3];
    let mut rows = Vec::with_capacity(n);
    for _ in 0..n {
        let k = rng.below(KEYS.len() as u64) as usize;
        clock +=
            if rng.chance(0.005) { HOUR * (1 + rng.below(6) as i64) } else { rng.below(40 * SECOND as u64) as i64 };
        let ts = if rng.chance(0.1) {
            max_ts[k] - rng.below(window as u64 * 3 / 2) as i64
        } else if rng.chance(0.01) {
            clock - rng.below(2 * DAY as u64) as i64
        } else {
            clock
        };
        max_ts[k] = max_ts[k].max(ts);
        price[k] *= 1.0 + (rng.unit() - 0.5) * 0.004;
        let mut p = price[k];
        let mut size = (1.0 + rng.below(500) as f64) * (0.5 + rng.unit());
        match rng.below(200) {
            0 => p = f64::NAN,
            1 => size = -1.0,
            2 => size = 0.0,
            3 => size = f64::INFINITY,
            _ => {}
        }
        rows.push((KEYS[k], ts, vec![p, size]));
    }
    rows
}

fn to_trades(rows: &[Row]) -> Vec<Trade> {
    rows.iter().map(|(k, ts, v)| Trade { key: k.to_string(), ts: *ts, price: v[0], size: v[1] }).collect()
}

fn close_to(got: f64, want: f64) -> bool {
    (got - want).abs() <= want.abs().max(1.0) * 1e-9
}

fn relatively_close(got: f64, want: f64) -> bool {
    (got - want).abs() <= want.abs() * 1e-9
}

/// What the plugin should emit for `rows`, from the reference: one sample
/// per trade that the session rule accepts, in arrival order.
fn expected(rows: &[Row], session_start: i64, window: i64) -> Vec<(String, i64, [f64; 4])> {
    let trades = to_trades(rows);
    let session = market::session_vwap(&trades, session_start);
    // Trades the session rule skips take no part in the rolling VWAP.
    let accepted: Vec<(Trade, market::Vwap)> =
        trades.into_iter().zip(session).filter_map(|(t, s)| Some((t, s?))).collect();
    let accepted_trades: Vec<Trade> = accepted.iter().map(|(t, _)| t.clone()).collect();
    let rolling = market::rolling_vwap(&accepted_trades, window);
    accepted
        .into_iter()
        .zip(rolling)
        .map(|((t, s), r)| {
            let r = r.expect("an accepted trade is valid");
            (t.key, t.ts, [s.vwap, s.volume, r.vwap, r.volume])
        })
        .collect()
}

fn compare(got: &[Sample], want: &[(String, i64, [f64; 4])], near: fn(f64, f64) -> bool) {
    assert_eq!(got.len(), want.len(), "number of outputs");
    for (g, (key, ts, values)) in got.iter().zip(want) {
        let ctx = format!("{} @ {}: got {:?}, want {values:?}", g.key, g.ts, g.values);
        assert_eq!((g.series.as_str(), g.key.as_str(), g.ts), ("vwap", key.as_str(), *ts), "{ctx}");
        assert!(g.values.iter().zip(values).all(|(&a, &b)| near(a, b)), "{ctx}");
    }
}

fn run(params: &[(&str, &str)], rows: &[Row]) -> (Vec<Sample>, u64, u64) {
    let mut h = Harness::<Vwap>::open(params).unwrap();
    let out = h.run(rows, None).unwrap();
    let plugin = h.instance().plugin();
    (out, plugin.late_trades(), plugin.invalid_trades())
}

#[test]
fn matches_the_reference_on_generated_trades() {
    for (seed, session_start, start_ms, window, window_ms) in
        [(1, "00:00", 0, "5m", 5 * MINUTE), (2, "13:30", 13 * HOUR + 30 * MINUTE, "90s", 90 * SECOND)]
    {
        let rows = generate(seed, 4_000, window_ms, [180.0, 370.0, 36_000.0]);
        let (got, late, invalid) = run(&[("session_start", session_start), ("window", window)], &rows);
        let want = expected(&rows, start_ms, window_ms);
        compare(&got, &want, close_to);

        let n_valid = rows.iter().filter(|r| r.2[0].is_finite() && r.2[1].is_finite() && r.2[1] > 0.0).count();
        assert_eq!(invalid as usize, rows.len() - n_valid);
        assert_eq!(late as usize, n_valid - want.len());
        // The data exercises what it is meant to.
        assert!(late >= 10 && invalid >= 10, "late {late}, invalid {invalid}");
        let sessions: std::collections::BTreeSet<i64> = want.iter().map(|w| (w.1 - start_ms).div_euclid(DAY)).collect();
        assert!(sessions.len() >= 3, "sessions {sessions:?}");
        // Accepted out-of-order trades, inside and beyond the rolling window.
        let (mut inside, mut beyond) = (0, 0);
        let mut max_ts: BTreeMap<&str, i64> = BTreeMap::new();
        for (key, ts, _) in &want {
            let max = max_ts.entry(key.as_str()).or_insert(*ts);
            if *ts < *max - window_ms {
                beyond += 1;
            } else if *ts < *max {
                inside += 1;
            }
            *max = (*max).max(*ts);
        }
        assert!(inside >= 50 && beyond >= 20, "out of order: {inside} inside, {beyond} beyond");
    }
}

#[test]
fn large_and_tiny_price_scales() {
    let rows = generate(3, 3_000, 5 * MINUTE, [2.0e7, 3.0e-6, 1.5e7]);
    let (got, _, _) = run(&[], &rows);
    compare(&got, &expected(&rows, 0, 5 * MINUTE), relatively_close);
}

#[test]
fn sessions_reset_at_the_configured_time() {
    let at = D0 + 13 * HOUR + 30 * MINUTE;
    let rows: Vec<Row> = vec![
        ("X", at - 1, vec![10.0, 1.0]),                       // the previous day's session
        ("X", at, vec![20.0, 3.0]),                           // a new session
        ("X", at - MINUTE, vec![99.0, 1.0]),                  // the previous session: late
        ("X", at + 10 * HOUR + 40 * MINUTE, vec![30.0, 1.0]), // 00:10 next day, same session
        ("Y", at - 1, vec![5.0, 2.0]),                        // other keys keep their own sessions
    ];
    let (got, late, invalid) = run(&[("session_start", "13:30")], &rows);
    assert_eq!((late, invalid), (1, 0));
    let got: Vec<(&str, i64, Vec<f64>)> = got.iter().map(|s| (s.key.as_str(), s.ts, s.values.clone())).collect();
    assert_eq!(
        got,
        vec![
            ("X", at - 1, vec![10.0, 1.0, 10.0, 1.0]),
            // Rolling (5m) still holds the previous session's trade.
            ("X", at, vec![20.0, 3.0, 70.0 / 4.0, 4.0]),
            ("X", at + 10 * HOUR + 40 * MINUTE, vec![90.0 / 4.0, 4.0, 30.0, 1.0]),
            ("Y", at - 1, vec![5.0, 2.0, 5.0, 2.0]),
        ]
    );
}

#[test]
fn the_default_session_starts_at_midnight() {
    let rows: Vec<Row> =
        vec![("X", D0 - 1, vec![10.0, 1.0]), ("X", D0, vec![20.0, 1.0]), ("X", D0 + DAY - 1, vec![40.0, 2.0])];
    let (got, _, _) = run(&[("window", "1s")], &rows);
    let values: Vec<Vec<f64>> = got.into_iter().map(|s| s.values).collect();
    assert_eq!(values, vec![vec![10.0, 1.0, 10.0, 1.0], vec![20.0, 1.0, 15.0, 2.0], vec![100.0 / 3.0, 3.0, 40.0, 2.0]]);
}

#[test]
fn out_of_order_trades_count_inside_the_window_only() {
    let rows: Vec<Row> = vec![
        ("X", D0 + 100 * SECOND, vec![10.0, 1.0]),
        ("X", D0 + 95 * SECOND, vec![20.0, 1.0]),      // inside (90s, 100s]
        ("X", D0 + 90 * SECOND, vec![30.0, 1.0]),      // on the open bound: outside
        ("X", D0 + 101 * SECOND, vec![40.0, 2.0]),     // now (91s, 101s]
        ("X", D0 + 100 * SECOND, vec![f64::NAN, 1.0]), // invalid
        ("X", D0 + 100 * SECOND, vec![1.0, 0.0]),      // invalid
    ];
    let (got, late, invalid) = run(&[("window", "10s")], &rows);
    assert_eq!((late, invalid), (0, 2));
    let values: Vec<Vec<f64>> = got.into_iter().map(|s| s.values).collect();
    assert_eq!(
        values,
        vec![
            vec![10.0, 1.0, 10.0, 1.0],
            vec![15.0, 2.0, 15.0, 2.0],
            vec![20.0, 3.0, 15.0, 2.0],
            vec![28.0, 5.0, 110.0 / 4.0, 4.0],
        ]
    );
}

#[test]
fn rolling_sums_do_not_drift_over_long_runs() {
    // Blocks of huge and tiny notionals: after a block of huge ones leaves
    // the window, plain running sums would keep their rounding error.
    let mut rng = Rng(99);
    let rows: Vec<Row> = (0..100_000)
        .map(|i| {
            let huge = (i / 50) % 2 == 0;
            let price = if huge { 1.0e7 * (1.0 + rng.unit()) } else { 1.0e-3 * (1.0 + rng.unit()) };
            let size = if huge { 1.0e3 * (1.0 + rng.unit()) } else { 1.0e-3 * (1.0 + rng.unit()) };
            ("X", D0 + 100 * i as i64, vec![price, size])
        })
        .collect();
    let (got, _, _) = run(&[("window", "1s")], &rows);
    // In-order data: the last outputs depend only on the last few trades.
    let tail = &rows[rows.len() - 200..];
    let want = market::rolling_vwap(&to_trades(tail), SECOND);
    for (g, w) in got[got.len() - 100..].iter().zip(&want[100..]) {
        let w = w.unwrap();
        assert!(relatively_close(g.values[2], w.vwap) && relatively_close(g.values[3], w.volume), "{g:?} {w:?}");
    }
}

/// Groups samples by key, keeping their order, as bit patterns.
fn by_key(samples: impl IntoIterator<Item = Sample>) -> BTreeMap<String, Vec<(i64, Vec<u64>)>> {
    let mut map: BTreeMap<String, Vec<(i64, Vec<u64>)>> = BTreeMap::new();
    for s in samples {
        map.entry(s.key).or_default().push((s.ts, s.values.iter().map(|v| v.to_bits()).collect()));
    }
    map
}

fn feed(h: &mut Harness<Vwap>, rows: &[Row]) -> Vec<Sample> {
    rows.iter().flat_map(|row| h.process(0, std::slice::from_ref(row)).unwrap()).collect()
}

#[test]
fn snapshot_and_restore_continue_exactly() {
    let params = [("session_start", "09:30"), ("window", "2m")];
    let rows = generate(5, 3_000, 2 * MINUTE, [180.0, 370.0, 36_000.0]);
    let mut whole = Harness::<Vwap>::open(&params).unwrap();
    let expected = feed(&mut whole, &rows);

    for split in [1, 1_000, 2_222, 2_999] {
        let mut first = Harness::<Vwap>::open(&params).unwrap();
        let mut got = feed(&mut first, &rows[..split]);
        let mut second = Harness::<Vwap>::restore(&params, first.instance().snapshot()).unwrap();
        // The host names the keys after a restore; new ids, another order.
        for key in KEYS.iter().rev() {
            second.key(key);
        }
        got.extend(feed(&mut second, &rows[split..]));
        assert_eq!(by_key(got), by_key(expected.clone()), "split at {split}");
    }
}

#[test]
fn bad_params_say_what_to_change() {
    let err = |params: &[(&str, &str)]| Harness::<Vwap>::open(params).err().expect("should fail").message().to_string();
    let m = err(&[("session_start", "25:00")]);
    assert!(m.contains("vwap: parameter `session_start` must be a UTC time of day") && m.contains("`25:00`"), "{m}");
    let m = err(&[("session_start", "noon")]);
    assert!(m.contains("parameter `session_start` must be a UTC time of day"), "{m}");
    let m = err(&[("window", "0m")]);
    assert!(m.contains("vwap: parameter `window` must be a positive duration") && m.contains("`0m`"), "{m}");
    let m = err(&[("window", "5 minutes")]);
    assert!(m.contains("parameter `window` must be a duration"), "{m}");
    let m = err(&[("session", "09:30")]);
    assert!(m.contains("unknown parameter `session`"), "{m}");
}

#[test]
fn declares_its_series() {
    let mut h = Harness::<Vwap>::open(&[]).unwrap();
    let inst = h.instance();
    assert_eq!(inst.inputs()[0].name, "trades");
    assert_eq!(inst.inputs()[0].fields, ["price", "size"]);
    assert_eq!(inst.outputs()[0].name, "vwap");
    assert_eq!(inst.outputs()[0].fields, ["vwap", "volume", "rolling_vwap", "rolling_volume"]);
}

#[test]
fn the_trades_of_one_millisecond_are_held_as_one() {
    // A dense feed: several trades per millisecond, some a little out of
    // order (into a millisecond already held, in the middle of the window).
    let mut rng = Rng(17);
    let mut clock = D0 + 10 * HOUR;
    let mut price = [180.0, 36_000.0];
    let mut rows: Vec<Row> = Vec::new();
    for _ in 0..6_000 {
        let k = rng.below(2) as usize;
        if rng.chance(0.1) {
            clock += 1 + rng.below(3) as i64;
        }
        let ts = if rng.chance(0.05) { clock - rng.below(50) as i64 } else { clock };
        price[k] *= 1.0 + (rng.unit() - 0.5) * 0.002;
        rows.push((KEYS[k], ts, vec![price[k], 1.0 + rng.below(100) as f64]));
    }
    let (got, _, _) = run(&[("window", "1s")], &rows);
    compare(&got, &expected(&rows, 0, SECOND), relatively_close);

    // The window holds one entry per millisecond, not one per trade.
    let mut key = super::KeyVwap::default();
    let mut most_trades = 0;
    for (i, (_, ts, v)) in rows.iter().filter(|r| r.0 == KEYS[0]).enumerate() {
        key.hold(super::Held { ts: *ts, price: v[0], size: v[1] }, SECOND);
        if i % 100 == 0 {
            let max = key.max_ts.unwrap();
            let ms: std::collections::BTreeSet<i64> = key.held.iter().map(|h| h.ts).collect();
            assert_eq!(key.held.len(), ms.len(), "one entry per millisecond");
            let trades = rows.iter().filter(|r| r.0 == KEYS[0] && r.1 > max - SECOND && r.1 <= max).count();
            most_trades = most_trades.max(trades);
            assert!(key.held.len() <= trades);
            if trades > 100 {
                assert!(key.held.len() < trades, "{} entries for {trades} trades", key.held.len());
            }
        }
    }
    assert!(most_trades > 500, "a dense window: {most_trades} trades");
}
