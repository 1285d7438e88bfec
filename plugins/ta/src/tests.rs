//! Unit tests: hand-checked examples, definitions recomputed from scratch,
//! price scales, and long runs.

use std::collections::VecDeque;

use tickfold_reference::rng::Rng;

use crate::*;

/// A multiplicative random walk from `start`, steps of up to `step` relative.
fn walk(seed: u64, n: usize, start: f64, step: f64) -> Vec<f64> {
    let mut rng = Rng(seed);
    let mut x = start;
    (0..n)
        .map(|_| {
            x *= 1.0 + step * rng.signed();
            x
        })
        .collect()
}

fn close(got: f64, want: f64, rel: f64) -> bool {
    (got - want).abs() <= rel * want.abs()
}

/// Mean and population deviation of `w`, recomputed from scratch.
fn exact_stats(w: &VecDeque<f64>) -> (f64, f64) {
    let n = w.len() as f64;
    let mean = w.iter().copied().collect::<Sum>().value() / n;
    let var = w.iter().map(|x| (x - mean) * (x - mean)).collect::<Sum>().value() / n;
    (mean, var.sqrt())
}

/// Feeds `xs` to `Sma(period)` and `Bollinger(period)` and checks every
/// output against a recomputation from the window (every `stride`-th one,
/// for long periods), to `rel` relative. Returns the outputs checked.
fn check_rolling(xs: &[f64], period: usize, stride: usize, rel: f64) -> usize {
    let mut sma = Sma::new(period);
    let mut bb = Bollinger::new(period, 2.0);
    let mut window = VecDeque::with_capacity(period + 1);
    let mut checked = 0;
    for (i, &x) in xs.iter().enumerate() {
        window.push_back(x);
        if window.len() > period {
            window.pop_front();
        }
        let (s, b) = (sma.update(x), bb.update(x));
        assert_eq!(s.is_some(), i >= period - 1, "SMA({period}) warm-up at index {i}");
        assert_eq!(b.is_some(), i >= period - 1, "Bollinger({period}) warm-up at index {i}");
        let (Some(s), Some(b)) = (s, b) else { continue };
        if i % stride != 0 {
            continue;
        }
        let (mean, dev) = exact_stats(&window);
        assert!(close(s, mean, rel), "SMA({period}) at {i}: {s} vs exact {mean}");
        assert!(close(b.middle, mean, rel), "Bollinger({period}) middle at {i}: {} vs exact {mean}", b.middle);
        assert!(close(b.deviation, dev, rel), "Bollinger({period}) deviation at {i}: {} vs exact {dev}", b.deviation);
        assert_eq!((b.upper, b.lower), (b.middle + 2.0 * b.deviation, b.middle - 2.0 * b.deviation));
        checked += 1;
    }
    checked
}

#[test]
fn sma_is_the_mean_of_the_last_period_values() {
    let mut sma = Sma::new(3);
    let out: Vec<_> = [1.0, 2.0, 3.0, 4.0, 6.0].into_iter().map(|x| sma.update(x)).collect();
    assert_eq!(out, vec![None, None, Some(2.0), Some(3.0), Some(13.0 / 3.0)]);
    assert_eq!(sma.lookback(), 2);

    let mut one = Sma::new(1);
    assert_eq!([5.0, 7.0].map(|x| one.update(x)), [Some(5.0), Some(7.0)]);
    assert_eq!(check_rolling(&walk(1, 2_000, 100.0, 0.01), 7, 1, 1e-13), 2_000 - 6);
}

#[test]
fn ema_is_seeded_with_the_sma_then_follows_talibs_formula() {
    // period 3: k = 0.5, seed = mean(1, 2, 3) = 2, then (4 - 2) * 0.5 + 2 = 3,
    // then (1 - 3) * 0.5 + 3 = 2.
    let mut ema = Ema::new(3);
    let out: Vec<_> = [1.0, 2.0, 3.0, 4.0, 1.0].into_iter().map(|x| ema.update(x)).collect();
    assert_eq!(out, vec![None, None, Some(2.0), Some(3.0), Some(2.0)]);

    let xs = walk(2, 500, 50.0, 0.02);
    let mut ema = Ema::new(12);
    let k = 2.0 / 13.0;
    let mut prev = xs[..12].iter().sum::<f64>() / 12.0;
    for (i, &x) in xs.iter().enumerate() {
        let got = ema.update(x);
        if i < 11 {
            assert_eq!(got, None);
            continue;
        }
        if i > 11 {
            prev += (x - prev) * k;
        }
        assert!(close(got.unwrap(), prev, 1e-12), "index {i}");
    }
}

#[test]
fn rsi_follows_wilder_after_a_plain_mean_seed() {
    // period 2. Changes +1, -1: gain 0.5, loss 0.5, RSI 50 at index 2.
    // Change +2: gain (0.5 * 1 + 2) / 2 = 1.25, loss (0.5 * 1 + 0) / 2 = 0.25.
    let mut rsi = Rsi::new(2);
    let out: Vec<_> = [1.0, 2.0, 1.0, 3.0].into_iter().map(|x| rsi.update(x)).collect();
    assert_eq!(out[..3], [None, None, Some(50.0)]);
    assert!(close(out[3].unwrap(), 100.0 * 1.25 / 1.5, 1e-15));
    assert_eq!(rsi.lookback(), 2);

    let flat: Vec<_> = (0..20).map(|_| 7.0).collect();
    let mut rsi = Rsi::new(14);
    let out: Vec<_> = flat.iter().map(|&x| rsi.update(x)).collect();
    assert!(out[..14].iter().all(Option::is_none));
    assert!(out[14..].iter().all(|&r| r == Some(0.0)), "no movement is RSI 0, as in TA-Lib: {out:?}");

    let mut rsi = Rsi::new(14);
    let rising: Vec<_> = (0..20).map(|i| rsi.update(i as f64)).collect();
    assert!(rising[14..].iter().all(|&r| r == Some(100.0)));
}

#[test]
fn bollinger_uses_the_population_deviation() {
    // The textbook example: mean 5, population deviation exactly 2.
    let mut bb = Bollinger::new(8, 2.0);
    let out: Vec<_> = [2.0, 4.0, 4.0, 4.0, 5.0, 5.0, 7.0, 9.0].into_iter().map(|x| bb.update(x)).collect();
    assert!(out[..7].iter().all(Option::is_none));
    assert_eq!(out[7], Some(Bands { middle: 5.0, upper: 9.0, lower: 1.0, deviation: 2.0 }));
}

#[test]
fn macd_standard_is_the_difference_of_two_standalone_emas() {
    let xs = walk(3, 300, 20.0, 0.02);
    let mut macd = Macd::new(12, 26, 9, MacdVariant::Standard);
    let (mut fast, mut slow, mut signal) = (Ema::new(12), Ema::new(26), Ema::new(9));
    assert_eq!(macd.lookback(), 33);
    for (i, &x) in xs.iter().enumerate() {
        let got = macd.update(x);
        let (f, s) = (fast.update(x), slow.update(x));
        let want = match (f, s) {
            (Some(f), Some(s)) => signal.update(f - s).map(|sig| (f - s, sig)),
            _ => None,
        };
        assert_eq!(got.is_some(), i >= 33, "warm-up at index {i}");
        if let (Some(got), Some((m, sig))) = (got, want) {
            assert_eq!((got.macd, got.signal, got.hist), (m, sig, m - sig), "index {i}");
        }
    }
}

#[test]
fn macd_talib_seeds_the_fast_ema_late_but_warms_up_as_long() {
    let xs = walk(4, 400, 100.0, 0.02);
    let mut standard = Macd::new(12, 26, 9, MacdVariant::Standard);
    let mut talib = Macd::new(12, 26, 9, MacdVariant::TaLib);
    // TA-Lib's fast EMA is an EMA(12) that starts at index 26 - 12 = 14.
    let mut late_fast = Ema::new(12);
    let mut first_difference = None;
    for (i, &x) in xs.iter().enumerate() {
        let (s, t) = (standard.update(x), talib.update(x));
        let late = if i >= 14 { late_fast.update(x) } else { None };
        assert_eq!(s.is_some(), i >= 33, "standard warm-up at index {i}");
        assert_eq!(t.is_some(), i >= 33, "talib warm-up at index {i}");
        assert_eq!(talib.slow_ema(), standard.slow_ema(), "the slow EMAs are the same, index {i}");
        if i == 25 {
            let seed = xs[14..=25].iter().sum::<f64>() / 12.0;
            assert!(close(talib.fast_ema().unwrap(), seed, 1e-14), "talib's fast EMA starts at mean(x[14..=25])");
        }
        if i >= 25 {
            assert_eq!(talib.fast_ema(), late, "talib's fast EMA at index {i}");
        } else {
            assert_eq!(talib.fast_ema(), None, "talib's fast EMA has no value before index 25 (index {i})");
        }
        if let (Some(s), Some(t)) = (s, t) {
            let fast_gap = talib.fast_ema().unwrap() - standard.fast_ema().unwrap();
            assert!(close(t.macd - s.macd, fast_gap, 1e-6), "the macd lines differ by the fast EMAs, index {i}");
            first_difference.get_or_insert(fast_gap.abs());
        }
    }
    // Seeds differ, and the difference decays by (1 - k) per step.
    let first = first_difference.unwrap();
    assert!(first > 1e-6, "the variants should differ at the first output, got {first}");
    let last = (talib.fast_ema().unwrap() - standard.fast_ema().unwrap()).abs();
    assert!(last < first * 1e-10, "the difference should have decayed: {first} then {last}");
}

#[test]
fn price_scale_does_not_matter() {
    let base = walk(5, 3_000, 100.0, 0.001);
    for scale in [1e-6, 1e7] {
        let xs: Vec<f64> = base.iter().map(|x| x * scale).collect();
        assert_eq!(check_rolling(&xs, 20, 1, 1e-12), 3_000 - 19);

        let (mut ema, mut ema1) = (Ema::new(12), Ema::new(12));
        let (mut rsi, mut rsi1) = (Rsi::new(14), Rsi::new(14));
        let (mut macd, mut macd1) =
            (Macd::new(12, 26, 9, MacdVariant::TaLib), Macd::new(12, 26, 9, MacdVariant::TaLib));
        for (&x, &x1) in xs.iter().zip(&base) {
            let (e, e1) = (ema.update(x), ema1.update(x1));
            assert_eq!(e.is_some(), e1.is_some());
            if let (Some(e), Some(e1)) = (e, e1) {
                assert!(close(e, e1 * scale, 1e-12), "EMA at scale {scale}: {e} vs {}", e1 * scale);
            }
            // TA-Lib would call gain + loss below 1e-8 zero and say 0 here.
            let (r, r1) = (rsi.update(x), rsi1.update(x1));
            assert_eq!(r.is_some(), r1.is_some());
            if let (Some(r), Some(r1)) = (r, r1) {
                assert!((r - r1).abs() <= 1e-9, "RSI at scale {scale}: {r} vs {r1}");
            }
            let (m, m1) = (macd.update(x), macd1.update(x1));
            assert_eq!(m.is_some(), m1.is_some());
            if let (Some(m), Some(m1)) = (m, m1) {
                let tol = 1e-9 * scale * x1;
                for (a, b) in [(m.macd, m1.macd), (m.signal, m1.signal), (m.hist, m1.hist)] {
                    assert!((a - b * scale).abs() <= tol, "MACD at scale {scale}: {a} vs {}", b * scale);
                }
            }
        }
    }

    // 1e7 ± 0.01: E[x²] - E[x]² has nothing left; the two-pass keeps it all.
    let mut rng = Rng(6);
    let xs: Vec<f64> = (0..3_000).map(|_| 1e7 + 0.01 * rng.signed()).collect();
    assert_eq!(check_rolling(&xs, 20, 1, 1e-9), 3_000 - 19);
    let w = &xs[..20];
    let naive_var = w.iter().map(|x| x * x).sum::<f64>() / 20.0 - (w.iter().sum::<f64>() / 20.0).powi(2);
    let (_, dev) = exact_stats(&w.iter().copied().collect());
    assert!(!close(naive_var.max(0.0).sqrt(), dev, 1e-3), "this data should defeat the naive formula");
}

#[test]
fn rolling_sums_stay_exact_over_a_million_values() {
    // The level jumps between scales every 50k values, so a rolling sum
    // that kept the rounding of 1e7-sized values would be far off at 1e-6.
    let levels = [100.0, 1e7, 1e-6, 1e5, 1e-3, 1.0];
    let mut rng = Rng(7);
    let xs: Vec<f64> =
        (0..1_000_000).map(|i| levels[(i / 50_000) % levels.len()] * (1.0 + 0.01 * rng.signed())).collect();
    assert_eq!(check_rolling(&xs, 20, 1, 1e-9), 1_000_000 - 19);
    assert!(check_rolling(&xs, 500, 97, 1e-9) > 10_000);
}
