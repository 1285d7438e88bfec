//! `ema`: exponential moving averages of one input field, per key, with
//! TA-Lib's conventions (`TA_EMA`).
//!
//! For each period `p` in `periods`, series `ema_<p>` (field `ema`) carries
//! the key's EMA of the input field with `k = 2 / (p + 1)`:
//!
//! - The EMA is seeded with the mean of the key's first `p` values, and
//!   that mean is the first output, with the `p`-th value (index `p - 1`);
//!   nothing is emitted during warm-up.
//! - Then `ema = ((x - prev) * k) + prev` (TA-Lib's exact form), one
//!   output per input sample, labelled with that sample's `ts`.
//! - Values are consumed per key in arrival order and never reset, not at
//!   session boundaries either.
//! - A NaN or infinite value is skipped: no output, no effect on the state.
//!   Skips are counted and logged at the 1st, 10th, 100th, ... occurrence.
//! - A snapshot restored with other `periods` keeps the averages of the
//!   periods that remain; new periods start their warm-up.
//!
//! | parameter | default | meaning |
//! | --- | --- | --- |
//! | `periods` | `12,26` | distinct periods, each from 1 to 100000 |
//! | `field` | `close` | the input field to average |
//!
//! Input: `input` with the one field named by `field`. Outputs: `ema_<p>`,
//! one per period in the order given, each with the field `ema`.

use tickfold_ta::{Ema, MultiPeriodPlugin, MultiPeriodSpec};

/// What makes [`MultiPeriodPlugin`] the `ema` plugin.
pub struct EmaSpec;

impl MultiPeriodSpec for EmaSpec {
    type Indicator = Ema;
    const NAME: &'static str = "ema";
    const VERSION: &'static str = env!("CARGO_PKG_VERSION");
    const DOC: &'static str = "Exponential moving averages of one field, per key, as TA-Lib computes them: `ema_<p>` uses \
                 k = 2/(p+1), is seeded with the mean of the first p values (its first output, with the p-th \
                 value) and then emitted once per input sample. Non-finite values are skipped.";
    const DEFAULT_PERIODS: &'static str = "12,26";

    fn output_doc(p: usize, field: &str) -> String {
        format!("EMA over {p} values of `{field}`")
    }
}

/// See the crate docs.
pub type EmaPlugin = MultiPeriodPlugin<EmaSpec>;

tickfold_sdk::export!(EmaPlugin);

#[cfg(test)]
mod tests {
    use tickfold_reference::rng::Rng;
    use tickfold_reference::ta;
    use tickfold_sdk::testing::{Harness, Sample};

    use tickfold_sdk::prelude::*;

    use super::*;

    type Rows = Vec<(&'static str, Millis, Vec<f64>)>;

    const KEYS: [&str; 3] = ["AAPL", "MSFT", "EURUSD"];

    /// `n` rows of per-key random walks, interleaved at random, with about
    /// one value in 170 NaN or infinite.
    fn rows(seed: u64, n: usize) -> Rows {
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
    fn feed(h: &mut Harness<EmaPlugin>, rows: &[(&str, Millis, Vec<f64>)], seed: u64) -> Vec<Sample> {
        let (mut rng, mut out, mut rest) = (Rng(seed), Vec::new(), rows);
        while !rest.is_empty() {
            let (batch, tail) = rest.split_at((1 + rng.next_u64() as usize % 64).min(rest.len()));
            out.extend(h.process(0, batch).unwrap());
            rest = tail;
        }
        out
    }

    /// The finite `(ts, value)`s of `key`, in order: what its indicator sees.
    fn inputs(rows: &[(&str, Millis, Vec<f64>)], key: &str) -> Vec<(Millis, f64)> {
        rows.iter().filter(|r| r.0 == key && r.2[0].is_finite()).map(|r| (r.1, r.2[0])).collect()
    }

    /// Checks the outputs of `series` for `key` against `want` (aligned with
    /// `inputs`): a warm-up of exactly `lookback` inputs, then one output
    /// per input with its ts, within 1e-9 relative. Returns the count.
    fn check(
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

    fn reference(xs: &[f64], period: usize) -> Vec<Option<Vec<f64>>> {
        ta::ema(xs, period).into_iter().map(|v| v.map(|v| vec![v])).collect()
    }

    fn bad_params(params: &[(&str, &str)]) -> String {
        match Harness::<EmaPlugin>::open(params) {
            Err(PluginError::BadParams(m)) => m,
            Err(e) => panic!("{params:?}: expected bad-params, got {e:?}"),
            Ok(_) => panic!("{params:?} should be refused"),
        }
    }

    #[test]
    fn matches_the_reference_for_every_key_and_period() {
        let rows = rows(1, 4_000);
        let mut h = Harness::<EmaPlugin>::open(&[("periods", "1,5,30,200"), ("field", "px")]).unwrap();
        assert_eq!(h.instance().inputs()[0].fields, ["px"]);
        let out = feed(&mut h, &rows, 2);
        let mut checked = 0;
        for key in KEYS {
            let inputs = inputs(&rows, key);
            let xs: Vec<f64> = inputs.iter().map(|i| i.1).collect();
            for p in [1, 5, 30, 200] {
                checked += check(&out, &format!("ema_{p}"), key, &inputs, &reference(&xs, p), p - 1);
            }
        }
        assert_eq!(checked, out.len(), "no outputs beyond the expected ones");
    }

    #[test]
    fn defaults_declare_two_series() {
        let d = tickfold_sdk::runtime::describe::<EmaPlugin>();
        assert_eq!(d.inputs[0].fields, ["close"]);
        let outputs: Vec<(&str, &[String])> = d.outputs.iter().map(|s| (s.name.as_str(), &s.fields[..])).collect();
        let ema = ["ema".to_string()];
        assert_eq!(outputs, [("ema_12", &ema[..]), ("ema_26", &ema[..])]);
    }

    #[test]
    fn a_restored_snapshot_continues_like_an_uninterrupted_run() {
        let rows = rows(3, 3_000);
        // 20 rows: inside every key's warm-up; 1500: long after it.
        for split in [20, 1_500] {
            let (a, b) = rows.split_at(split);
            let mut whole = Harness::<EmaPlugin>::open(&[]).unwrap();
            feed(&mut whole, a, 4);
            let want = feed(&mut whole, b, 5);

            let mut first = Harness::<EmaPlugin>::open(&[]).unwrap();
            feed(&mut first, a, 4);
            let mut second = Harness::<EmaPlugin>::restore(&[], first.instance().snapshot()).unwrap();
            // Other ids than before: state must follow the names.
            KEYS.iter().rev().for_each(|k| _ = second.key(k));
            let got = feed(&mut second, b, 5);
            assert!(want.len() > 100);
            assert_eq!(got, want, "split at {split}");
        }
    }

    #[test]
    fn restoring_with_other_periods_keeps_the_ones_that_remain() {
        let rows = rows(6, 2_000);
        let (a, b) = rows.split_at(900);
        let mut whole = Harness::<EmaPlugin>::open(&[("periods", "12,26")]).unwrap();
        feed(&mut whole, a, 7);
        let kept = feed(&mut whole, b, 8);

        let mut first = Harness::<EmaPlugin>::open(&[("periods", "12,26")]).unwrap();
        feed(&mut first, a, 7);
        let snapshot = first.instance().snapshot();
        let mut second = Harness::<EmaPlugin>::restore(&[("periods", "40,12")], snapshot).unwrap();
        let out = feed(&mut second, b, 8);

        let ema_12 = |v: &[Sample]| v.iter().filter(|s| s.series == "ema_12").cloned().collect::<Vec<_>>();
        assert_eq!(ema_12(&out), ema_12(&kept));
        for key in KEYS {
            let inputs = inputs(b, key);
            let xs: Vec<f64> = inputs.iter().map(|i| i.1).collect();
            check(&out, "ema_40", key, &inputs, &reference(&xs, 40), 39);
        }
    }

    #[test]
    fn bad_params_say_what_to_change() {
        for periods in ["", "5,0", "5,x", "100001", "-3"] {
            let m = bad_params(&[("periods", periods)]);
            assert!(
                m.contains("`periods` must be a comma-separated list of distinct whole numbers from 1 to 100000"),
                "{m}"
            );
            assert!(m.contains(&format!("got `{periods}`")), "{m}");
        }
        let m = bad_params(&[("periods", "5,15,5")]);
        assert!(m.contains("without repeats (5 appears twice)"), "{m}");
        let m = bad_params(&[("field", " ")]);
        assert!(m.contains("`field` must be the name of an input field"), "{m}");
        let m = bad_params(&[("period", "5")]);
        assert!(m.contains("did you mean `periods`"), "{m}");
    }

    #[test]
    fn sparse_logging_is_at_powers_of_ten() {
        let logged: Vec<u64> = (1..=2_000).filter(|&n| tickfold_sdk::log::is_sparse(n)).collect();
        assert_eq!(logged, [1, 10, 100, 1_000]);
    }
}
