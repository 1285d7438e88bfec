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
    use tickfold_reference::indicator::{KEYS, check, feed, inputs, rows};
    use tickfold_reference::ta;
    use tickfold_sdk::testing::{Harness, Sample};

    use super::*;

    fn reference(xs: &[f64], period: usize) -> Vec<Option<Vec<f64>>> {
        ta::ema(xs, period).into_iter().map(|v| v.map(|v| vec![v])).collect()
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
            let m = tickfold_reference::indicator::bad_params::<EmaPlugin>(&[("periods", periods)]);
            assert!(
                m.contains("`periods` must be a comma-separated list of distinct whole numbers from 1 to 100000"),
                "{m}"
            );
            assert!(m.contains(&format!("got `{periods}`")), "{m}");
        }
        let m = tickfold_reference::indicator::bad_params::<EmaPlugin>(&[("periods", "5,15,5")]);
        assert!(m.contains("without repeats (5 appears twice)"), "{m}");
        let m = tickfold_reference::indicator::bad_params::<EmaPlugin>(&[("field", " ")]);
        assert!(m.contains("`field` must be the name of an input field"), "{m}");
        let m = tickfold_reference::indicator::bad_params::<EmaPlugin>(&[("period", "5")]);
        assert!(m.contains("did you mean `periods`"), "{m}");
    }

    #[test]
    fn sparse_logging_is_at_powers_of_ten() {
        let logged: Vec<u64> = (1..=2_000).filter(|&n| tickfold_sdk::log::is_sparse(n)).collect();
        assert_eq!(logged, [1, 10, 100, 1_000]);
    }
}
