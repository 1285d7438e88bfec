//! Several periods of one single-valued indicator per key, and the plugin
//! that serves them: the `sma` and `ema` plugins are this plugin with a
//! [`MultiPeriodSpec`] each.
//!
//! For each period `p` in `periods`, series `<name>_<p>` (field `<name>`)
//! carries the key's indicator over `p` values. Non-finite values are
//! skipped (counted, logged at the 1st, 10th, 100th, ...). A snapshot
//! restored with other `periods` keeps the indicators of the periods that
//! remain; new periods start their warm-up.

use std::marker::PhantomData;

use serde::Serialize;
use serde::de::DeserializeOwned;
use tickfold_sdk::log::{self, Occurrences};
use tickfold_sdk::prelude::*;

use crate::{Ema, MAX_PERIOD, Sma};

/// An indicator made from one period that turns each value into at most
/// one output: what [`MultiPeriodPlugin`] runs once per period.
pub trait PeriodIndicator: Clone + Serialize + DeserializeOwned + 'static {
    /// A fresh indicator over `period` values.
    fn new(period: usize) -> Self;
    /// The period it was made with.
    fn period(&self) -> usize;
    /// Consumes the next (finite) value; `Some` once warmed up.
    fn update(&mut self, x: f64) -> Option<f64>;
}

impl PeriodIndicator for Sma {
    fn new(period: usize) -> Self {
        Sma::new(period)
    }
    fn period(&self) -> usize {
        Sma::period(self)
    }
    #[inline]
    fn update(&mut self, x: f64) -> Option<f64> {
        Sma::update(self, x)
    }
}

impl PeriodIndicator for Ema {
    fn new(period: usize) -> Self {
        Ema::new(period)
    }
    fn period(&self) -> usize {
        Ema::period(self)
    }
    #[inline]
    fn update(&mut self, x: f64) -> Option<f64> {
        Ema::update(self, x)
    }
}

/// What makes a [`MultiPeriodPlugin`] a particular plugin.
pub trait MultiPeriodSpec: 'static {
    /// The indicator run per period.
    type Indicator: PeriodIndicator;
    /// The plugin's name, the prefix of its series and their one field.
    const NAME: &'static str;
    /// The plugin's version (the plugin crate's `CARGO_PKG_VERSION`).
    const VERSION: &'static str;
    /// The documentation paragraph.
    const DOC: &'static str;
    /// The default of `periods`, also the example in its error message.
    const DEFAULT_PERIODS: &'static str;
    /// The description of the output series for `period` over `field`.
    fn output_doc(period: usize, field: &str) -> String;
}

/// A plugin emitting, per key, one series per period of `S::Indicator`.
pub struct MultiPeriodPlugin<S: MultiPeriodSpec> {
    periods: Vec<usize>,
    field: String,
    skipped: Occurrences,
    restarted: Occurrences,
    spec: PhantomData<fn() -> S>,
}

impl<S: MultiPeriodSpec> StreamFunction for MultiPeriodPlugin<S> {
    /// One indicator per period, in the order of `periods`.
    type State = Vec<S::Indicator>;

    fn info() -> Info {
        Info::new(S::NAME, S::VERSION)
            .doc(S::DOC)
            .param("periods", Some(S::DEFAULT_PERIODS), "comma-separated distinct periods, each from 1 to 100000")
            .param("field", Some("close"), "the input field to average")
    }

    fn open(params: &Params, io: &mut Io) -> Result<Self, PluginError> {
        let periods = params.distinct_list_in("periods", 1..=MAX_PERIOD, S::DEFAULT_PERIODS)?;
        let field = params.field_name("field")?;
        io.input("input", &[&field], "the values to average, per key");
        for &p in &periods {
            io.output(&format!("{}_{p}", S::NAME), &[S::NAME], &S::output_doc(p, &field));
        }
        Ok(MultiPeriodPlugin {
            periods,
            field,
            skipped: Occurrences::default(),
            restarted: Occurrences::default(),
            spec: PhantomData,
        })
    }

    fn process(
        &mut self,
        input: &Batch,
        state: &mut KeyedState<Self::State>,
        out: &mut Output,
    ) -> Result<(), PluginError> {
        for row in input.rows() {
            let x = row.field(0);
            if !x.is_finite() {
                if let Some(n) = self.skipped.count() {
                    log::skipped_non_finite(S::NAME, &self.field, x, state.name(row.key).unwrap_or("?"), row.ts, n);
                }
                continue;
            }
            // Outputs are declared in the order of `periods`, so the index
            // of an indicator is its output series.
            for (series, indicator) in self.indicators(state, row.key).iter_mut().enumerate() {
                if let Some(value) = indicator.update(x) {
                    out.emit(series, row.key, row.ts, &[value]);
                }
            }
        }
        Ok(())
    }
}

impl<S: MultiPeriodSpec> MultiPeriodPlugin<S> {
    /// The key's indicators, one per configured period. State restored from
    /// a snapshot taken with other periods keeps the periods that remain.
    fn indicators<'s>(
        &mut self,
        state: &'s mut KeyedState<Vec<S::Indicator>>,
        key: KeyId,
    ) -> &'s mut Vec<S::Indicator> {
        let current =
            state.get(key).is_some_and(|s| s.iter().map(PeriodIndicator::period).eq(self.periods.iter().copied()));
        if !current {
            let old = state.remove(key).unwrap_or_default();
            if !old.is_empty()
                && let Some(n) = self.restarted.count()
            {
                let old_periods: Vec<String> = old.iter().map(|s| s.period().to_string()).collect();
                log::warn(&format!(
                    "{}: key `{}` was saved with periods {}, now {}; new periods start their warm-up ({n} keys so \
                     far)",
                    S::NAME,
                    state.name(key).unwrap_or("?"),
                    old_periods.join(","),
                    self.periods.iter().map(usize::to_string).collect::<Vec<_>>().join(","),
                ));
            }
            *state.get_mut(key) = self
                .periods
                .iter()
                .map(|&p| old.iter().find(|s| s.period() == p).cloned().unwrap_or_else(|| S::Indicator::new(p)))
                .collect();
        }
        state.get_mut(key)
    }
}
