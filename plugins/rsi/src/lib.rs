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
    use tickfold_reference::indicator::{KEYS, Rows, check, feed, inputs, rows};
    use tickfold_reference::ta;
    use tickfold_sdk::testing::Harness;

    use super::*;

    fn reference(xs: &[f64], period: usize) -> Vec<Option<Vec<f64>>> {
        ta::rsi(xs, period).into_iter().map(|v| v.map(|v| vec![v])).collect()
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
            let m = tickfold_reference::indicator::bad_params::<RsiPlugin>(&[("period", period)]);
            assert!(m.contains("`period` must be a whole number from 2 to 100000"), "{m}");
            assert!(m.contains(&format!("got `{period}`")), "{m}");
        }
        let m = tickfold_reference::indicator::bad_params::<RsiPlugin>(&[("field", "")]);
        assert!(m.contains("`field` must be the name of an input field"), "{m}");
        let m = tickfold_reference::indicator::bad_params::<RsiPlugin>(&[("periods", "5")]);
        assert!(m.contains("did you mean `period`"), "{m}");
    }
}
