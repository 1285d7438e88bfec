//! Runs a plugin natively over rows, for unit tests.
//!
//! ```
//! # use tickfold_sdk::prelude::*;
//! # pub struct Echo;
//! # impl StreamFunction for Echo {
//! #     type State = ();
//! #     fn info() -> Info { Info::new("echo", "1") }
//! #     fn open(_: &Params, io: &mut Io) -> Result<Self, PluginError> {
//! #         io.input("in", &["v"], ""); io.output("out", &["v"], ""); Ok(Echo)
//! #     }
//! #     fn process(&mut self, b: &Batch, _: &mut KeyedState<()>, out: &mut Output) -> Result<(), PluginError> {
//! #         for r in b.rows() { out.emit(0, r.key, r.ts, &[r.field(0)]); } Ok(())
//! #     }
//! # }
//! let mut h = tickfold_sdk::testing::Harness::<Echo>::open(&[]).unwrap();
//! let out = h.run(&[("AAPL", 1_000, vec![1.5])], Some(0)).unwrap();
//! assert_eq!((out[0].key.as_str(), out[0].ts, out[0].values[0]), ("AAPL", 1_000, 1.5));
//! ```

use std::collections::HashMap;

use crate::{Batch, Instance, KeyId, KeyName, Millis, Param, PluginError, Snapshot, StreamFunction};

/// One output sample, with names instead of ids.
#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    /// The output series' name.
    pub series: String,
    /// The key's name.
    pub key: String,
    /// Event time.
    pub ts: Millis,
    /// One value per field of the series.
    pub values: Vec<f64>,
}

/// A plugin instance with a key table, fed rows by name.
pub struct Harness<P: StreamFunction> {
    instance: Instance<P>,
    ids: HashMap<String, KeyId>,
    names: Vec<String>,
    max_ts: Millis,
}

impl<P: StreamFunction> Harness<P> {
    /// Opens the plugin with `name=value` parameters.
    pub fn open(params: &[(&str, &str)]) -> Result<Self, PluginError> {
        Ok(Self::from_instance(Instance::open(&to_params(params))?))
    }

    /// Restores the plugin from a snapshot and, as the host does, names
    /// every key the snapshot holds.
    pub fn restore(params: &[(&str, &str)], snapshot: Snapshot) -> Result<Self, PluginError> {
        let names: Vec<String> = snapshot.keys.iter().map(|k| k.key.clone()).collect();
        let mut h = Self::from_instance(Instance::restore(&to_params(params), snapshot)?);
        names.iter().for_each(|n| {
            h.key(n);
        });
        Ok(h)
    }

    fn from_instance(instance: Instance<P>) -> Self {
        Harness { instance, ids: HashMap::new(), names: Vec::new(), max_ts: Millis::MIN }
    }

    /// The instance under test.
    pub fn instance(&mut self) -> &mut Instance<P> {
        &mut self.instance
    }

    /// The id of `name`, naming it to the plugin on first use.
    pub fn key(&mut self, name: &str) -> KeyId {
        if let Some(&id) = self.ids.get(name) {
            return id;
        }
        let id = self.names.len() as KeyId;
        self.ids.insert(name.to_string(), id);
        self.names.push(name.to_string());
        self.instance.add_keys(vec![KeyName { id, name: name.to_string() }]);
        id
    }

    /// Processes rows of input series `series` as one batch.
    pub fn process(&mut self, series: u32, rows: &[(&str, Millis, Vec<f64>)]) -> Result<Vec<Sample>, PluginError> {
        let fields = self.instance.inputs().get(series as usize).map_or(0, |s| s.fields.len());
        let mut batch = Batch::new(series, fields);
        for (key, ts, values) in rows {
            let id = self.key(key);
            batch.push(id, *ts, values);
            self.max_ts = self.max_ts.max(*ts);
        }
        let out = self.instance.process(&[batch])?;
        Ok(self.samples(out))
    }

    /// Advances the watermark.
    pub fn watermark(&mut self, ts: Millis) -> Result<Vec<Sample>, PluginError> {
        let out = self.instance.on_watermark(ts)?;
        Ok(self.samples(out))
    }

    /// Feeds rows of input 0 one at a time. With `Some(lag)`, the watermark
    /// follows the highest event time minus `lag` after each row, as the
    /// host's sources do; either way it ends at `Millis::MAX`, closing every
    /// window.
    pub fn run(
        &mut self,
        rows: &[(&str, Millis, Vec<f64>)],
        lag_ms: Option<Millis>,
    ) -> Result<Vec<Sample>, PluginError> {
        let mut out = self.feed(rows, lag_ms)?;
        out.extend(self.finish()?);
        Ok(out)
    }

    /// Like [`Harness::run`] without the final watermark, to continue later
    /// (after a snapshot, say). The highest event time seen so far carries
    /// over between calls, and can be set with [`Harness::set_max_ts`].
    pub fn feed(
        &mut self,
        rows: &[(&str, Millis, Vec<f64>)],
        lag_ms: Option<Millis>,
    ) -> Result<Vec<Sample>, PluginError> {
        let mut out = Vec::new();
        for row in rows {
            out.extend(self.process(0, std::slice::from_ref(row))?);
            if let Some(lag) = lag_ms {
                out.extend(self.watermark(self.max_ts.saturating_sub(lag))?);
            }
        }
        Ok(out)
    }

    /// Ends the input: the watermark moves to `Millis::MAX`.
    pub fn finish(&mut self) -> Result<Vec<Sample>, PluginError> {
        self.watermark(Millis::MAX)
    }

    /// Sets the highest event time seen, as when continuing a run in a
    /// restored instance.
    pub fn set_max_ts(&mut self, ts: Millis) {
        self.max_ts = ts;
    }

    fn samples(&self, batches: Vec<Batch>) -> Vec<Sample> {
        let mut samples = Vec::new();
        for b in batches {
            let series = &self.instance.outputs()[b.series as usize].name;
            for row in b.rows() {
                samples.push(Sample {
                    series: series.clone(),
                    key: self.names[row.key as usize].clone(),
                    ts: row.ts,
                    values: (0..b.fields.len()).map(|f| row.field(f)).collect(),
                });
            }
        }
        samples
    }
}

fn to_params(params: &[(&str, &str)]) -> Vec<Param> {
    params.iter().map(|(n, v)| Param { name: n.to_string(), value: v.to_string() }).collect()
}
