//! `rsi`: Wilder's relative strength index of one input field, per key,
//! with TA-Lib's conventions (`TA_RSI`).
//!
//! Series `rsi` (field `rsi`) carries the key's RSI over `period` changes:
//!
//! - The first output comes after `period` changes, with the key's
//!   `period + 1`-th value (index `period`); nothing is emitted during
//!   warm-up.
//! - Seed: average gain = sum of the gains of the first `period` changes /
//!   `period`, average loss likewise (losses as positive numbers). Then
//!   Wilder's smoothing: `avg = (avg * (period - 1) + current) / period`.
//! - `RSI = 100 * avgGain / (avgGain + avgLoss)`, and 0 when both are 0
//!   (TA-Lib's choice for a flat series). TA-Lib treats a sum below 1e-8 as
//!   zero; here only an exact zero is, so prices around 1e-6 work too.
//! - One output per input sample after warm-up, labelled with that sample's
//!   `ts`. Values are consumed per key in arrival order and never reset,
//!   not at session boundaries either.
//! - A NaN or infinite value is skipped: no output, no effect on the state
//!   (the next change is measured from the last finite value). Skips are
//!   counted and logged at the 1st, 10th, 100th, ... occurrence.
//! - A snapshot restored with another `period` starts each key's warm-up
//!   again.
//!
//! | parameter | default | meaning |
//! | --- | --- | --- |
//! | `period` | `14` | changes averaged, from 2 to 100000 |
//! | `field` | `close` | the input field |
//!
//! Input: `input` with the one field named by `field`. Output: `rsi` with
//! the field `rsi`, from 0 to 100.

use tickfold_sdk::log::{self, Occurrences};
use tickfold_sdk::prelude::*;
use tickfold_ta::{MAX_PERIOD, Rsi};

/// See the crate docs.
pub struct RsiPlugin {
    period: usize,
    field: String,
    skipped: Occurrences,
    restarted: Occurrences,
}

impl StreamFunction for RsiPlugin {
    type State = Option<Rsi>;

    fn info() -> Info {
        Info::new("rsi", env!("CARGO_PKG_VERSION"))
            .doc(
                "Wilder's relative strength index of one field, per key, as TA-Lib computes it: averages seeded \
                 with the plain means of the first `period` gains and losses, then Wilder's smoothing; first \
                 emitted after `period` changes, then once per input sample. Non-finite values are skipped.",
            )
            .param("period", Some("14"), "number of changes averaged, from 2 to 100000")
            .param("field", Some("close"), "the input field")
    }

    fn open(params: &Params, io: &mut Io) -> Result<Self, PluginError> {
        let period = params.usize_in("period", 2..=MAX_PERIOD)?;
        let field = params.field_name("field")?;
        io.input("input", &[&field], "the values to measure, per key");
        io.output("rsi", &["rsi"], &format!("RSI({period}) of `{field}`, from 0 to 100"));
        Ok(RsiPlugin { period, field, skipped: Occurrences::default(), restarted: Occurrences::default() })
    }

    fn process(
        &mut self,
        input: &Batch,
        state: &mut KeyedState<Option<Rsi>>,
        out: &mut Output,
    ) -> Result<(), PluginError> {
        for row in input.rows() {
            let x = row.field(0);
            if !x.is_finite() {
                if let Some(n) = self.skipped.count() {
                    log::skipped_non_finite("rsi", &self.field, x, state.name(row.key).unwrap_or("?"), row.ts, n);
                }
                continue;
            }
            if let Some(rsi) = self.indicator(state, row.key).update(x) {
                out.emit(0, row.key, row.ts, &[rsi]);
            }
        }
        Ok(())
    }
}

impl RsiPlugin {
    /// The key's RSI; state saved with another period starts over.
    fn indicator<'s>(&mut self, state: &'s mut KeyedState<Option<Rsi>>, key: KeyId) -> &'s mut Rsi {
        if let Some(Some(saved)) = state.get(key)
            && saved.period() != self.period
        {
            if let Some(restarted) = self.restarted.count() {
                log::warn(&format!(
                    "rsi: key `{}` was saved with period {}, now {}; its warm-up starts again ({} keys so far)",
                    state.name(key).unwrap_or("?"),
                    saved.period(),
                    self.period,
                    restarted
                ));
            }
            state.remove(key);
        }
        let period = self.period;
        state.get_mut(key).get_or_insert_with(|| Rsi::new(period))
    }
}

tickfold_sdk::export!(RsiPlugin);

#[cfg(test)]
mod tests {
    use tickfold_reference::rng::Rng;
    use tickfold_reference::ta;
    use tickfold_sdk::testing::{Harness, Sample};

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
    fn feed(h: &mut Harness<RsiPlugin>, rows: &[(&str, Millis, Vec<f64>)], seed: u64) -> Vec<Sample> {
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
        ta::rsi(xs, period).into_iter().map(|v| v.map(|v| vec![v])).collect()
    }

    fn bad_params(params: &[(&str, &str)]) -> String {
        match Harness::<RsiPlugin>::open(params) {
            Err(PluginError::BadParams(m)) => m,
            Err(e) => panic!("{params:?}: expected bad-params, got {e:?}"),
            Ok(_) => panic!("{params:?} should be refused"),
        }
    }

    #[test]
    fn matches_the_reference_for_every_key() {
        let rows = rows(1, 4_000);
        for period in [2, 14, 30] {
            let p = period.to_string();
            let mut h = Harness::<RsiPlugin>::open(&[("period", &p), ("field", "mid")]).unwrap();
            assert_eq!(h.instance().inputs()[0].fields, ["mid"]);
            let out = feed(&mut h, &rows, 2);
            let mut checked = 0;
            for key in KEYS {
                let inputs = inputs(&rows, key);
                let xs: Vec<f64> = inputs.iter().map(|i| i.1).collect();
                checked += check(&out, "rsi", key, &inputs, &reference(&xs, period), period);
            }
            assert_eq!(checked, out.len(), "no outputs beyond the expected ones");
        }
    }

    #[test]
    fn defaults_declare_one_series() {
        let d = tickfold_sdk::runtime::describe::<RsiPlugin>();
        assert_eq!(d.inputs[0].fields, ["close"]);
        assert_eq!((d.outputs.len(), d.outputs[0].name.as_str()), (1, "rsi"));
        assert_eq!(d.outputs[0].fields, ["rsi"]);
    }

    #[test]
    fn a_flat_series_has_rsi_zero() {
        let rows: Rows = (0..20).map(|i| ("AAPL", i, vec![5.0])).collect();
        let out = Harness::<RsiPlugin>::open(&[]).unwrap().run(&rows, None).unwrap();
        assert_eq!(
            out.iter().map(|s| (s.ts, s.values[0])).collect::<Vec<_>>(),
            (14..20).map(|t| (t, 0.0)).collect::<Vec<_>>()
        );
    }

    #[test]
    fn a_restored_snapshot_continues_like_an_uninterrupted_run() {
        let rows = rows(3, 3_000);
        // 20 rows: inside every key's warm-up; 1500: long after it.
        for split in [20, 1_500] {
            let (a, b) = rows.split_at(split);
            let mut whole = Harness::<RsiPlugin>::open(&[]).unwrap();
            feed(&mut whole, a, 4);
            let want = feed(&mut whole, b, 5);

            let mut first = Harness::<RsiPlugin>::open(&[]).unwrap();
            feed(&mut first, a, 4);
            let mut second = Harness::<RsiPlugin>::restore(&[], first.instance().snapshot()).unwrap();
            // Other ids than before: state must follow the names.
            KEYS.iter().rev().for_each(|k| _ = second.key(k));
            let got = feed(&mut second, b, 5);
            assert!(want.len() > 100);
            assert_eq!(got, want, "split at {split}");
        }
    }

    #[test]
    fn restoring_with_another_period_starts_over() {
        let rows = rows(6, 2_000);
        let (a, b) = rows.split_at(900);
        let mut first = Harness::<RsiPlugin>::open(&[]).unwrap();
        feed(&mut first, a, 7);
        let mut second = Harness::<RsiPlugin>::restore(&[("period", "9")], first.instance().snapshot()).unwrap();
        let out = feed(&mut second, b, 8);
        for key in KEYS {
            let inputs = inputs(b, key);
            let xs: Vec<f64> = inputs.iter().map(|i| i.1).collect();
            check(&out, "rsi", key, &inputs, &reference(&xs, 9), 9);
        }
    }

    #[test]
    fn bad_params_say_what_to_change() {
        for period in ["", "1", "0", "x", "2.5", "100001"] {
            let m = bad_params(&[("period", period)]);
            assert!(m.contains("`period` must be a whole number from 2 to 100000"), "{m}");
            assert!(m.contains(&format!("got `{period}`")), "{m}");
        }
        let m = bad_params(&[("field", "")]);
        assert!(m.contains("`field` must be the name of an input field"), "{m}");
        let m = bad_params(&[("periods", "5")]);
        assert!(m.contains("did you mean `period`"), "{m}");
    }
}
