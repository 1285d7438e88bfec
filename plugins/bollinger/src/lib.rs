//! `bollinger`: Bollinger bands of one input field, per key, with TA-Lib's
//! conventions (`TA_BBANDS` with an SMA).
//!
//! Series `bollinger` carries the fields `middle`, `upper` and `lower`:
//!
//! - `middle` is the mean of the key's last `period` values (`TA_SMA`).
//! - `upper`/`lower` are `middle ± stddev * dev`, where `dev` is the
//!   POPULATION standard deviation (divided by `period`, not `period - 1`)
//!   of the same values (`TA_STDDEV`). It is computed from the stored window
//!   around the mean, so it keeps its digits at any price scale (1e7 ± 0.01
//!   included); TA-Lib's running E[x²] - E[x]², and its rounding of
//!   variances below 1e-8 to 0, do not.
//! - The first output comes with the key's `period`-th value (index
//!   `period - 1`); nothing is emitted during warm-up. Then one output per
//!   input sample, labelled with that sample's `ts`.
//! - Values are consumed per key in arrival order and never reset, not at
//!   session boundaries either.
//! - A NaN or infinite value is skipped: no output, no effect on the state.
//!   Skips are counted and logged at the 1st, 10th, 100th, ... occurrence.
//! - A snapshot restored with another `period` or `stddev` starts each
//!   key's warm-up again.
//!
//! | parameter | default | meaning |
//! | --- | --- | --- |
//! | `period` | `20` | values in the window, from 2 to 100000 |
//! | `stddev` | `2.0` | band width in standard deviations, positive and finite |
//! | `field` | `close` | the input field |
//!
//! Input: `input` with the one field named by `field`. Output: `bollinger`
//! with the fields `middle`, `upper`, `lower`.

use tickfold_sdk::log::{self, Occurrences};
use tickfold_sdk::prelude::*;
use tickfold_ta::{Bollinger, MAX_PERIOD};

/// See the crate docs.
pub struct BollingerPlugin {
    period: usize,
    k: f64,
    field: String,
    skipped: Occurrences,
    restarted: Occurrences,
}

impl StreamFunction for BollingerPlugin {
    type State = Option<Bollinger>;

    fn info() -> Info {
        Info::new("bollinger", env!("CARGO_PKG_VERSION"))
            .doc(
                "Bollinger bands of one field, per key, as TA-Lib computes them: middle = SMA(period), upper and \
                 lower = middle ± stddev × the population standard deviation of the same values; first emitted \
                 with the period-th value, then once per input sample. Non-finite values are skipped.",
            )
            .param("period", Some("20"), "values in the window, from 2 to 100000")
            .param("stddev", Some("2.0"), "band width in standard deviations, positive")
            .param("field", Some("close"), "the input field")
    }

    fn open(params: &Params, io: &mut Io) -> Result<Self, PluginError> {
        let period = params.usize_in("period", 2..=MAX_PERIOD)?;
        let raw = params.raw("stddev");
        let k = match raw.trim().parse::<f64>() {
            Ok(k) if k.is_finite() && k > 0.0 => k,
            _ => return Err(params.bad("stddev", raw, "a positive number of standard deviations, such as 2.0")),
        };
        let field = params.field_name("field")?;
        io.input("input", &[&field], "the values to measure, per key");
        io.output("bollinger", &["middle", "upper", "lower"], &format!("Bollinger({period}, {k}) of `{field}`"));
        Ok(BollingerPlugin { period, k, field, skipped: Occurrences::default(), restarted: Occurrences::default() })
    }

    fn process(
        &mut self,
        input: &Batch,
        state: &mut KeyedState<Option<Bollinger>>,
        out: &mut Output,
    ) -> Result<(), PluginError> {
        for row in input.rows() {
            let x = row.field(0);
            if !x.is_finite() {
                if let Some(n) = self.skipped.count() {
                    log::skipped_non_finite("bollinger", &self.field, x, state.name(row.key).unwrap_or("?"), row.ts, n);
                }
                continue;
            }
            if let Some(b) = self.indicator(state, row.key).update(x) {
                out.emit(0, row.key, row.ts, &[b.middle, b.upper, b.lower]);
            }
        }
        Ok(())
    }
}

impl BollingerPlugin {
    /// The key's bands; state saved with another period or width starts over.
    fn indicator<'s>(&mut self, state: &'s mut KeyedState<Option<Bollinger>>, key: KeyId) -> &'s mut Bollinger {
        if let Some(Some(saved)) = state.get(key)
            && (saved.period(), saved.k()) != (self.period, self.k)
        {
            if let Some(restarted) = self.restarted.count() {
                log::warn(&format!(
                    "bollinger: key `{}` was saved with period {} and stddev {}, now {} and {}; its warm-up starts \
                     again ({} keys so far)",
                    state.name(key).unwrap_or("?"),
                    saved.period(),
                    saved.k(),
                    self.period,
                    self.k,
                    restarted
                ));
            }
            state.remove(key);
        }
        let (period, k) = (self.period, self.k);
        state.get_mut(key).get_or_insert_with(|| Bollinger::new(period, k))
    }
}

tickfold_sdk::export!(BollingerPlugin);

#[cfg(test)]
mod tests {
    use tickfold_reference::indicator::{KEYS, Rows, check, feed, inputs, rows};
    use tickfold_reference::ta;
    use tickfold_sdk::testing::Harness;

    use super::*;

    fn reference(xs: &[f64], period: usize, k: f64) -> Vec<Option<Vec<f64>>> {
        ta::bbands(xs, period, k).into_iter().map(|v| v.map(|(m, u, l)| vec![m, u, l])).collect()
    }

    #[test]
    fn matches_the_reference_for_every_key() {
        let rows = rows(1, 4_000);
        for (period, k) in [(20, 2.0), (2, 1.0), (5, 1.5), (120, 3.0)] {
            let (p, ks) = (period.to_string(), k.to_string());
            let mut h =
                Harness::<BollingerPlugin>::open(&[("period", &p), ("stddev", &ks), ("field", "vwap")]).unwrap();
            assert_eq!(h.instance().inputs()[0].fields, ["vwap"]);
            let out = feed(&mut h, &rows, 2);
            let mut checked = 0;
            for key in KEYS {
                let inputs = inputs(&rows, key);
                let xs: Vec<f64> = inputs.iter().map(|i| i.1).collect();
                checked += check(&out, "bollinger", key, &inputs, &reference(&xs, period, k), period - 1);
            }
            assert_eq!(checked, out.len(), "no outputs beyond the expected ones");
        }
    }

    #[test]
    fn the_deviation_is_the_population_one() {
        // The textbook example: mean 5, population deviation 2 (the sample
        // deviation would be 2.138...).
        let rows: Rows = [2.0, 4.0, 4.0, 4.0, 5.0, 5.0, 7.0, 9.0].iter().map(|&x| ("AAPL", 0, vec![x])).collect();
        let out = Harness::<BollingerPlugin>::open(&[("period", "8")]).unwrap().run(&rows, None).unwrap();
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].values, [5.0, 9.0, 1.0]);
    }

    #[test]
    fn defaults_declare_one_series_of_three_fields() {
        let d = tickfold_sdk::runtime::describe::<BollingerPlugin>();
        assert_eq!(d.inputs[0].fields, ["close"]);
        assert_eq!((d.outputs.len(), d.outputs[0].name.as_str()), (1, "bollinger"));
        assert_eq!(d.outputs[0].fields, ["middle", "upper", "lower"]);
    }

    #[test]
    fn a_restored_snapshot_continues_like_an_uninterrupted_run() {
        let rows = rows(3, 3_000);
        // 20 rows: inside every key's warm-up; 1500: long after it.
        for split in [20, 1_500] {
            let (a, b) = rows.split_at(split);
            let mut whole = Harness::<BollingerPlugin>::open(&[]).unwrap();
            feed(&mut whole, a, 4);
            let want = feed(&mut whole, b, 5);

            let mut first = Harness::<BollingerPlugin>::open(&[]).unwrap();
            feed(&mut first, a, 4);
            let mut second = Harness::<BollingerPlugin>::restore(&[], first.instance().snapshot()).unwrap();
            // Other ids than before: state must follow the names.
            KEYS.iter().rev().for_each(|k| _ = second.key(k));
            let got = feed(&mut second, b, 5);
            assert!(want.len() > 100);
            assert_eq!(got, want, "split at {split}");
        }
    }

    #[test]
    fn restoring_with_another_width_starts_over() {
        let rows = rows(6, 2_000);
        let (a, b) = rows.split_at(900);
        let mut first = Harness::<BollingerPlugin>::open(&[]).unwrap();
        feed(&mut first, a, 7);
        let params = [("stddev", "2.5")];
        let mut second = Harness::<BollingerPlugin>::restore(&params, first.instance().snapshot()).unwrap();
        let out = feed(&mut second, b, 8);
        for key in KEYS {
            let inputs = inputs(b, key);
            let xs: Vec<f64> = inputs.iter().map(|i| i.1).collect();
            check(&out, "bollinger", key, &inputs, &reference(&xs, 20, 2.5), 19);
        }
    }

    #[test]
    fn bad_params_say_what_to_change() {
        for period in ["1", "x", "", "100001"] {
            let m = tickfold_reference::indicator::bad_params::<BollingerPlugin>(&[("period", period)]);
            assert!(m.contains(&format!("`period` must be a whole number from 2 to 100000, got `{period}`")), "{m}");
        }
        for k in ["0", "-1", "NaN", "inf", "two"] {
            let m = tickfold_reference::indicator::bad_params::<BollingerPlugin>(&[("stddev", k)]);
            assert!(
                m.contains(&format!(
                    "`stddev` must be a positive number of standard deviations, such as 2.0, got `{k}`"
                )),
                "{m}"
            );
        }
        let m = tickfold_reference::indicator::bad_params::<BollingerPlugin>(&[("field", "")]);
        assert!(m.contains("`field` must be the name of an input field"), "{m}");
    }
}
