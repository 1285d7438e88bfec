//! `macd`: moving average convergence/divergence of one input field, per
//! key, with TA-Lib's conventions.
//!
//! Series `macd` carries the fields `macd` (fast EMA - slow EMA), `signal`
//! (an EMA of the macd line) and `hist` (`macd - signal`). Every EMA is a
//! `TA_EMA`: `k = 2 / (period + 1)`, seeded with the mean of its first
//! `period` values, then `ema = ((x - prev) * k) + prev`.
//!
//! - `variant=standard` (default): the fast and slow EMAs are standalone,
//!   seeded with the mean of the key's first `fast` and first `slow`
//!   values. The macd line starts at index `slow - 1` (25).
//! - `variant=talib`: TA-Lib's own `TA_MACD`, whose fast EMA is seeded with
//!   the mean of the `fast` values ending at index `slow - 1` (indices
//!   14..=25 for 12/26), so both EMAs start together. The two variants
//!   differ in the first outputs by a gap that decays by `1 - 2/(fast+1)`
//!   per value.
//! - The signal EMA is seeded with the mean of the first `signal` macd
//!   values, so the first output comes at index `slow - 1 + signal - 1`
//!   (33 for 12/26/9) in both variants; nothing is emitted before.
//! - One output per input sample after warm-up, labelled with that sample's
//!   `ts`. Values are consumed per key in arrival order and never reset,
//!   not at session boundaries either.
//! - A NaN or infinite value is skipped: no output, no effect on the state.
//!   Skips are counted and logged at the 1st, 10th, 100th, ... occurrence.
//! - A snapshot restored with other periods or another variant starts each
//!   key's warm-up again.
//!
//! | parameter | default | meaning |
//! | --- | --- | --- |
//! | `fast` | `12` | fast EMA period, from 2 to 100000, less than `slow` |
//! | `slow` | `26` | slow EMA period, from 2 to 100000 |
//! | `signal` | `9` | signal EMA period, from 1 to 100000 |
//! | `field` | `close` | the input field |
//! | `variant` | `standard` | `standard` or `talib`, see above |
//!
//! Input: `input` with the one field named by `field`. Output: `macd` with
//! the fields `macd`, `signal`, `hist`.

use tickfold_sdk::log::{self, Occurrences};
use tickfold_sdk::prelude::*;
use tickfold_ta::{MAX_PERIOD, Macd, MacdVariant};

/// See the crate docs.
pub struct MacdPlugin {
    fast: usize,
    slow: usize,
    signal: usize,
    variant: MacdVariant,
    field: String,
    skipped: Occurrences,
    restarted: Occurrences,
}

impl StreamFunction for MacdPlugin {
    type State = Option<Macd>;

    fn info() -> Info {
        Info::new("macd", env!("CARGO_PKG_VERSION"))
            .doc(
                "MACD of one field, per key, with TA-Lib's EMAs: macd = fast EMA - slow EMA, signal = EMA of \
                 macd, hist = macd - signal; first emitted at index slow + signal - 2 (33 for 12/26/9), then once \
                 per input sample. `variant=talib` seeds the fast EMA as TA-Lib's TA_MACD does. Non-finite values \
                 are skipped.",
            )
            .param("fast", Some("12"), "fast EMA period, from 2 to 100000, less than `slow`")
            .param("slow", Some("26"), "slow EMA period, from 2 to 100000")
            .param("signal", Some("9"), "signal EMA period, from 1 to 100000")
            .param("field", Some("close"), "the input field")
            .param("variant", Some("standard"), "`standard` (standalone EMAs) or `talib` (TA-Lib's TA_MACD seeding)")
    }

    fn open(params: &Params, io: &mut Io) -> Result<Self, PluginError> {
        let fast = params.usize_in("fast", 2..=MAX_PERIOD)?;
        let slow = params.usize_in("slow", 2..=MAX_PERIOD)?;
        let signal = params.usize_in("signal", 1..=MAX_PERIOD)?;
        if fast >= slow {
            return Err(params.bad("fast", params.raw("fast"), &format!("less than `slow` ({slow})")));
        }
        let raw = params.raw("variant");
        let variant = match raw.trim() {
            v if v.eq_ignore_ascii_case("standard") => MacdVariant::Standard,
            v if v.eq_ignore_ascii_case("talib") => MacdVariant::TaLib,
            _ => return Err(params.bad("variant", raw, "`standard` or `talib`")),
        };
        let field = params.field_name("field")?;
        io.input("input", &[&field], "the values to measure, per key");
        io.output("macd", &["macd", "signal", "hist"], &format!("MACD({fast},{slow},{signal}) of `{field}`"));
        Ok(MacdPlugin {
            fast,
            slow,
            signal,
            variant,
            field,
            skipped: Occurrences::default(),
            restarted: Occurrences::default(),
        })
    }

    fn process(
        &mut self,
        input: &Batch,
        state: &mut KeyedState<Option<Macd>>,
        out: &mut Output,
    ) -> Result<(), PluginError> {
        for row in input.rows() {
            let x = row.field(0);
            if !x.is_finite() {
                if let Some(n) = self.skipped.count() {
                    log::skipped_non_finite("macd", &self.field, x, state.name(row.key).unwrap_or("?"), row.ts, n);
                }
                continue;
            }
            if let Some(m) = self.indicator(state, row.key).update(x) {
                out.emit(0, row.key, row.ts, &[m.macd, m.signal, m.hist]);
            }
        }
        Ok(())
    }
}

impl MacdPlugin {
    /// The key's MACD; state saved with other settings starts over.
    fn indicator<'s>(&mut self, state: &'s mut KeyedState<Option<Macd>>, key: KeyId) -> &'s mut Macd {
        let settings = |m: &Macd| (m.fast_period(), m.slow_period(), m.signal_period(), m.variant());
        let wanted = (self.fast, self.slow, self.signal, self.variant);
        if let Some(Some(saved)) = state.get(key)
            && settings(saved) != wanted
        {
            if let Some(restarted) = self.restarted.count() {
                log::warn(&format!(
                    "macd: key `{}` was saved with (fast, slow, signal, variant) {:?}, now {wanted:?}; its \
                     warm-up starts again ({} keys so far)",
                    state.name(key).unwrap_or("?"),
                    settings(saved),
                    restarted
                ));
            }
            state.remove(key);
        }
        state.get_mut(key).get_or_insert_with(|| Macd::new(wanted.0, wanted.1, wanted.2, wanted.3))
    }
}

tickfold_sdk::export!(MacdPlugin);

#[cfg(test)]
mod tests {
    use tickfold_reference::indicator::{KEYS, check, feed, inputs, rows};
    use tickfold_reference::ta;
    use tickfold_sdk::testing::Harness;

    use super::*;

    type Reference = fn(&[f64], usize, usize, usize) -> Vec<Option<(f64, f64, f64)>>;

    fn reference(f: Reference, xs: &[f64], (fast, slow, signal): (usize, usize, usize)) -> Vec<Option<Vec<f64>>> {
        f(xs, fast, slow, signal).into_iter().map(|v| v.map(|(m, s, h)| vec![m, s, h])).collect()
    }

    #[test]
    fn both_variants_match_their_references() {
        let rows = rows(1, 4_000);
        let variants: [(&str, Reference); 2] = [("standard", ta::macd), ("talib", ta::macd_talib)];
        for (variant, f) in variants {
            for (fast, slow, signal) in [(12, 26, 9), (5, 13, 1), (2, 40, 20)] {
                let (fs, ss, gs) = (fast.to_string(), slow.to_string(), signal.to_string());
                let params =
                    [("fast", &*fs), ("slow", &*ss), ("signal", &*gs), ("variant", variant), ("field", "last")];
                let mut h = Harness::<MacdPlugin>::open(&params).unwrap();
                assert_eq!(h.instance().inputs()[0].fields, ["last"]);
                let out = feed(&mut h, &rows, 2);
                let mut checked = 0;
                for key in KEYS {
                    let inputs = inputs(&rows, key);
                    let xs: Vec<f64> = inputs.iter().map(|i| i.1).collect();
                    let want = reference(f, &xs, (fast, slow, signal));
                    checked += check(&out, "macd", key, &inputs, &want, slow + signal - 2);
                }
                assert_eq!(checked, out.len(), "{params:?}: no outputs beyond the expected ones");
            }
        }
    }

    #[test]
    fn the_variants_differ_enough_for_the_comparison_to_tell_them_apart() {
        let rows = rows(1, 4_000);
        let xs: Vec<f64> = inputs(&rows, "AAPL").iter().map(|i| i.1).collect();
        let (s, t) = (ta::macd(&xs, 12, 26, 9), ta::macd_talib(&xs, 12, 26, 9));
        let (s, t) = (s[33].unwrap().0, t[33].unwrap().0);
        assert!((s - t).abs() > 1e-6, "standard {s} vs talib {t}");
    }

    #[test]
    fn defaults_declare_one_series_of_three_fields() {
        let d = tickfold_sdk::runtime::describe::<MacdPlugin>();
        assert_eq!(d.inputs[0].fields, ["close"]);
        assert_eq!((d.outputs.len(), d.outputs[0].name.as_str()), (1, "macd"));
        assert_eq!(d.outputs[0].fields, ["macd", "signal", "hist"]);
    }

    #[test]
    fn a_restored_snapshot_continues_like_an_uninterrupted_run() {
        let rows = rows(3, 3_000);
        // 20 rows: inside every key's warm-up; 1500: long after it.
        for (split, variant) in [(20, "standard"), (20, "talib"), (1_500, "standard")] {
            let params = [("variant", variant)];
            let (a, b) = rows.split_at(split);
            let mut whole = Harness::<MacdPlugin>::open(&params).unwrap();
            feed(&mut whole, a, 4);
            let want = feed(&mut whole, b, 5);

            let mut first = Harness::<MacdPlugin>::open(&params).unwrap();
            feed(&mut first, a, 4);
            let mut second = Harness::<MacdPlugin>::restore(&params, first.instance().snapshot()).unwrap();
            // Other ids than before: state must follow the names.
            KEYS.iter().rev().for_each(|k| _ = second.key(k));
            let got = feed(&mut second, b, 5);
            assert!(want.len() > 100);
            assert_eq!(got, want, "split at {split}, {variant}");
        }
    }

    #[test]
    fn restoring_with_another_variant_starts_over() {
        let rows = rows(6, 2_000);
        let (a, b) = rows.split_at(900);
        let mut first = Harness::<MacdPlugin>::open(&[]).unwrap();
        feed(&mut first, a, 7);
        let params = [("variant", "talib")];
        let mut second = Harness::<MacdPlugin>::restore(&params, first.instance().snapshot()).unwrap();
        let out = feed(&mut second, b, 8);
        for key in KEYS {
            let inputs = inputs(b, key);
            let xs: Vec<f64> = inputs.iter().map(|i| i.1).collect();
            check(&out, "macd", key, &inputs, &reference(ta::macd_talib, &xs, (12, 26, 9)), 33);
        }
    }

    #[test]
    fn bad_params_say_what_to_change() {
        for (name, value, min) in [("fast", "1", 2), ("slow", "x", 2), ("signal", "0", 1), ("signal", "100001", 1)] {
            let m = tickfold_reference::indicator::bad_params::<MacdPlugin>(&[(name, value)]);
            assert!(m.contains(&format!("`{name}` must be a whole number from {min} to 100000, got `{value}`")), "{m}");
        }
        let m = tickfold_reference::indicator::bad_params::<MacdPlugin>(&[("fast", "26")]);
        assert!(m.contains("`fast` must be less than `slow` (26), got `26`"), "{m}");
        let m = tickfold_reference::indicator::bad_params::<MacdPlugin>(&[("fast", "30"), ("slow", "20")]);
        assert!(m.contains("`fast` must be less than `slow` (20), got `30`"), "{m}");
        let m = tickfold_reference::indicator::bad_params::<MacdPlugin>(&[("variant", "metastock")]);
        assert!(m.contains("`variant` must be `standard` or `talib`, got `metastock`"), "{m}");
        let m = tickfold_reference::indicator::bad_params::<MacdPlugin>(&[("field", "")]);
        assert!(m.contains("`field` must be the name of an input field"), "{m}");
    }
}
