//! Shared pieces of the indicator plugins' tests (sma, ema, rsi, macd,
//! bollinger): seeded input rows with a few non-finite values, feeding a
//! plugin in random batch sizes, and the check that a plugin's outputs for a
//! key match a reference, warm-up included.

use tickfold_sdk::testing::{Harness, Sample};
use tickfold_sdk::{Millis, PluginError, StreamFunction};

use crate::rng::Rng;

pub type Rows = Vec<(&'static str, Millis, Vec<f64>)>;

pub const KEYS: [&str; 3] = ["AAPL", "MSFT", "EURUSD"];

/// `n` rows of per-key random walks, interleaved at random, with about
/// one value in 170 NaN or infinite.
pub fn rows(seed: u64, n: usize) -> Rows {
    let mut rng = Rng(seed);
    let (mut price, mut ts) = ([180.0, 420.0, 1.08], [1_700_000_000_000; 3]);
    let rows: Rows = (0..n)
        .map(|_| {
            let k = (rng.next_u64() % 3) as usize;
            ts[k] += 1 + (rng.next_u64() % 5_000) as Millis;
            price[k] *= 1.0 + 0.004 * (rng.unit() - 0.5);
            let x = match rng.next_u64() % 500 {
                0 => f64::NAN,
                1 => f64::INFINITY,
                2 => f64::NEG_INFINITY,
                _ => price[k],
            };
            (KEYS[k], ts[k], vec![x])
        })
        .collect();
    assert!(rows.iter().any(|r| !r.2[0].is_finite()), "the data should exercise skipping");
    rows
}

/// Feeds `rows` in batches of 1 to 64 rows.
pub fn feed<P: StreamFunction>(h: &mut Harness<P>, rows: &[(&str, Millis, Vec<f64>)], seed: u64) -> Vec<Sample> {
    let (mut rng, mut out, mut rest) = (Rng(seed), Vec::new(), rows);
    while !rest.is_empty() {
        let (batch, tail) = rest.split_at((1 + rng.next_u64() as usize % 64).min(rest.len()));
        out.extend(h.process(0, batch).unwrap());
        rest = tail;
    }
    out
}

/// The finite `(ts, value)`s of `key`, in order: what its indicator sees.
pub fn inputs(rows: &[(&str, Millis, Vec<f64>)], key: &str) -> Vec<(Millis, f64)> {
    rows.iter().filter(|r| r.0 == key && r.2[0].is_finite()).map(|r| (r.1, r.2[0])).collect()
}

/// Checks the outputs of `series` for `key` against `want` (aligned with
/// `inputs`): a warm-up of exactly `lookback` inputs, then one output
/// per input with its ts, within 1e-9 relative. Returns the count.
pub fn check(
    out: &[Sample],
    series: &str,
    key: &str,
    inputs: &[(Millis, f64)],
    want: &[Option<Vec<f64>>],
    lookback: usize,
) -> usize {
    assert_eq!(want.iter().position(Option::is_some), Some(lookback), "{series}: the reference's warm-up");
    let got: Vec<&Sample> = out.iter().filter(|s| s.series == series && s.key == key).collect();
    assert_eq!(got.len(), inputs.len() - lookback, "{series} {key}: outputs after a warm-up of {lookback}");
    for (i, s) in (lookback..).zip(&got) {
        assert_eq!(s.ts, inputs[i].0, "{series} {key}: output for input {i} has its ts");
        let w = want[i].as_ref().unwrap();
        assert_eq!(s.values.len(), w.len());
        for (g, w) in s.values.iter().zip(w) {
            assert!((g - w).abs() <= w.abs().max(1.0) * 1e-9, "{series} {key} at input {i}: {g} vs {w}");
        }
    }
    got.len()
}

pub fn bad_params<P: StreamFunction>(params: &[(&str, &str)]) -> String {
    match Harness::<P>::open(params) {
        Err(PluginError::BadParams(m)) => m,
        Err(e) => panic!("{params:?}: expected bad-params, got {e:?}"),
        Ok(_) => panic!("{params:?} should be refused"),
    }
}
