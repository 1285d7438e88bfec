//! `sma`: simple moving averages of one input field, per key, with
//! TA-Lib's conventions (`TA_SMA`).
//!
//! For each period `p` in `periods`, series `sma_<p>` (field `sma`) carries
//! the mean of the key's last `p` values of the input field.
//!
//! - The first output comes with the key's `p`-th value (index `p - 1`);
//!   nothing is emitted during warm-up.
//! - After it, every input sample gives one output per period, labelled
//!   with that sample's `ts`.
//! - Values are consumed per key in arrival order and never reset, not at
//!   session boundaries either.
//! - A NaN or infinite value is skipped: no output, no effect on the state.
//!   Skips are counted and logged at the 1st, 10th, 100th, ... occurrence.
//! - A snapshot restored with other `periods` keeps the averages of the
//!   periods that remain; new periods start their warm-up.
//!
//! | parameter | default | meaning |
//! | --- | --- | --- |
//! | `periods` | `5,15,30` | distinct periods, each from 1 to 100000 |
//! | `field` | `close` | the input field to average |
//!
//! Input: `input` with the one field named by `field`. Outputs: `sma_<p>`,
//! one per period in the order given, each with the field `sma`.

use tickfold_ta::{MultiPeriodPlugin, MultiPeriodSpec, Sma};

/// What makes [`MultiPeriodPlugin`] the `sma` plugin.
pub struct SmaSpec;

impl MultiPeriodSpec for SmaSpec {
    type Indicator = Sma;
    const NAME: &'static str = "sma";
    const VERSION: &'static str = env!("CARGO_PKG_VERSION");
    const DOC: &'static str = "Simple moving averages of one field, per key, as TA-Lib computes them: `sma_<p>` is the mean of \
                 the last p values, first emitted with the p-th value and then once per input sample. Non-finite \
                 values are skipped.";
    const DEFAULT_PERIODS: &'static str = "5,15,30";

    fn output_doc(p: usize, field: &str) -> String {
        format!("mean of the last {p} values of `{field}`")
    }
}

/// See the crate docs.
pub type SmaPlugin = MultiPeriodPlugin<SmaSpec>;

tickfold_sdk::export!(SmaPlugin);

#[cfg(test)]
mod tests {
    use tickfold_reference::indicator::{KEYS, check, feed, inputs, rows};
    use tickfold_reference::ta;
    use tickfold_sdk::testing::{Harness, Sample};

    use tickfold_sdk::prelude::*;

    use super::*;

    fn reference(xs: &[f64], period: usize) -> Vec<Option<Vec<f64>>> {
        ta::sma(xs, period).into_iter().map(|v| v.map(|v| vec![v])).collect()
    }

    #[test]
    fn matches_the_reference_for_every_key_and_period() {
        let rows = rows(1, 4_000);
        let mut h = Harness::<SmaPlugin>::open(&[("periods", "1,5,30,200"), ("field", "px")]).unwrap();
        assert_eq!(h.instance().inputs()[0].fields, ["px"]);
        let out = feed(&mut h, &rows, 2);
        let mut checked = 0;
        for key in KEYS {
            let inputs = inputs(&rows, key);
            let xs: Vec<f64> = inputs.iter().map(|i| i.1).collect();
            for p in [1, 5, 30, 200] {
                checked += check(&out, &format!("sma_{p}"), key, &inputs, &reference(&xs, p), p - 1);
            }
        }
        assert_eq!(checked, out.len(), "no outputs beyond the expected ones");
    }

    #[test]
    fn defaults_declare_three_series() {
        let d = tickfold_sdk::runtime::describe::<SmaPlugin>();
        assert_eq!(d.inputs[0].fields, ["close"]);
        let outputs: Vec<(&str, &[String])> = d.outputs.iter().map(|s| (s.name.as_str(), &s.fields[..])).collect();
        let sma = ["sma".to_string()];
        assert_eq!(outputs, [("sma_5", &sma[..]), ("sma_15", &sma[..]), ("sma_30", &sma[..])]);
    }

    #[test]
    fn a_restored_snapshot_continues_like_an_uninterrupted_run() {
        let rows = rows(3, 3_000);
        // 20 rows: inside every key's warm-up; 1500: long after it.
        for split in [20, 1_500] {
            let (a, b) = rows.split_at(split);
            let mut whole = Harness::<SmaPlugin>::open(&[]).unwrap();
            feed(&mut whole, a, 4);
            let want = feed(&mut whole, b, 5);

            let mut first = Harness::<SmaPlugin>::open(&[]).unwrap();
            feed(&mut first, a, 4);
            let mut second = Harness::<SmaPlugin>::restore(&[], first.instance().snapshot()).unwrap();
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
        let mut whole = Harness::<SmaPlugin>::open(&[("periods", "5,15")]).unwrap();
        feed(&mut whole, a, 7);
        let kept = feed(&mut whole, b, 8);

        let mut first = Harness::<SmaPlugin>::open(&[("periods", "5,15")]).unwrap();
        feed(&mut first, a, 7);
        let snapshot = first.instance().snapshot();
        let mut second = Harness::<SmaPlugin>::restore(&[("periods", "30,5")], snapshot).unwrap();
        let out = feed(&mut second, b, 8);

        let sma_5 = |v: &[Sample]| v.iter().filter(|s| s.series == "sma_5").cloned().collect::<Vec<_>>();
        assert_eq!(sma_5(&out), sma_5(&kept));
        for key in KEYS {
            let inputs = inputs(b, key);
            let xs: Vec<f64> = inputs.iter().map(|i| i.1).collect();
            check(&out, "sma_30", key, &inputs, &reference(&xs, 30), 29);
        }
    }

    #[test]
    fn a_corrupt_window_is_refused_on_restore() {
        let mut h = Harness::<SmaPlugin>::open(&[("periods", "3")]).unwrap();
        h.run(&[("AAPL", 1, vec![1.0]), ("AAPL", 2, vec![2.0]), ("AAPL", 3, vec![3.0])], None).unwrap();
        let mut snapshot = h.instance().snapshot();
        // postcard: 1 average; period 3; 3 values; 24 bytes of f64; then the
        // ring's next slot, which must be below the period.
        let state = &mut snapshot.keys[0].state;
        assert_eq!(state[..3], [1, 3, 3]);
        state[27] = 5;
        match Harness::<SmaPlugin>::restore(&[("periods", "3")], snapshot) {
            // postcard drops the text of custom errors, so only the key is named.
            Err(PluginError::BadState(m)) => assert!(m.contains("key `AAPL`"), "{m}"),
            Err(e) => panic!("expected bad-state, got {e:?}"),
            Ok(_) => panic!("a ring index past the period should be refused"),
        }
    }

    #[test]
    fn bad_params_say_what_to_change() {
        for periods in ["", "5,0", "5,x", "100001", "-3"] {
            let m = tickfold_reference::indicator::bad_params::<SmaPlugin>(&[("periods", periods)]);
            assert!(
                m.contains("`periods` must be a comma-separated list of distinct whole numbers from 1 to 100000"),
                "{m}"
            );
            assert!(m.contains(&format!("got `{periods}`")), "{m}");
        }
        let m = tickfold_reference::indicator::bad_params::<SmaPlugin>(&[("periods", "5,15,5")]);
        assert!(m.contains("without repeats (5 appears twice)"), "{m}");
        let m = tickfold_reference::indicator::bad_params::<SmaPlugin>(&[("field", " ")]);
        assert!(m.contains("`field` must be the name of an input field"), "{m}");
        let m = tickfold_reference::indicator::bad_params::<SmaPlugin>(&[("period", "5")]);
        assert!(m.contains("did you mean `periods`"), "{m}");
    }

    #[test]
    fn sparse_logging_is_at_powers_of_ten() {
        let logged: Vec<u64> = (1..=2_000).filter(|&n| tickfold_sdk::log::is_sparse(n)).collect();
        assert_eq!(logged, [1, 10, 100, 1_000]);
    }
}
