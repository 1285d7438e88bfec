//! One plugin instance: checks what the host sends, dispatches to the
//! [`StreamFunction`], and saves and restores its state.
//!
//! [`Instance`] is plain Rust and runs natively (the [`crate::testing`]
//! harness, benchmarks); [`Exported`] wraps it as the WIT `operator`
//! resource inside the component.

use std::cell::RefCell;

use crate::bindings::exports::tickfold::plugin::stream_function as wit;
use crate::{
    Batch, Descriptor, Info, Io, KeyName, KeyedState, Millis, Output, Param, Params, PluginError, SeriesDecl, Snapshot,
    StreamFunction,
};

/// A running instance of plugin `P`.
pub struct Instance<P: StreamFunction> {
    plugin: P,
    state: KeyedState<P::State>,
    io: Io,
    out: Output,
}

impl<P: StreamFunction> Instance<P> {
    /// Checks `params` and opens the plugin.
    pub fn open(params: &[Param]) -> Result<Self, PluginError> {
        Self::with_state(params, KeyedState::default())
    }

    /// Opens the plugin and loads a snapshot's state into it. A format the
    /// plugin does not read is refused with [`PluginError::BadState`].
    pub fn restore(params: &[Param], snapshot: Snapshot) -> Result<Self, PluginError> {
        let Snapshot { format_version, shared, keys } = snapshot;
        let state = KeyedState::load(&shared, keys, |bytes| {
            if format_version == P::STATE_FORMAT_VERSION {
                postcard::from_bytes(bytes).map_err(|e| PluginError::BadState(format!("cannot decode: {e}")))
            } else {
                P::migrate_state(format_version, bytes)
            }
        })?;
        Self::with_state(params, state)
    }

    fn with_state(params: &[Param], state: KeyedState<P::State>) -> Result<Self, PluginError> {
        let params = Params::check(&P::info(), params)?;
        let mut io = Io::default();
        let plugin = P::open(&params, &mut io)?;
        let out = Output::new(io.outputs.iter().map(|s| s.fields.len()));
        Ok(Instance { plugin, state, io, out })
    }

    /// The series this instance reads.
    pub fn inputs(&self) -> &[SeriesDecl] {
        &self.io.inputs
    }

    /// The series this instance writes.
    pub fn outputs(&self) -> &[SeriesDecl] {
        &self.io.outputs
    }

    /// Names keys before their first sample.
    pub fn add_keys(&mut self, keys: Vec<KeyName>) {
        self.state.add_keys(keys)
    }

    /// Checks and processes input batches; returns what they complete.
    pub fn process(&mut self, input: &[Batch]) -> Result<Vec<Batch>, PluginError> {
        for batch in input {
            let Some(decl) = self.io.inputs.get(batch.series as usize) else {
                return Err(PluginError::BadInput(format!(
                    "batch for input series {}, but {} declares {} input series",
                    batch.series,
                    P::info().name,
                    self.io.inputs.len()
                )));
            };
            batch.check_shape(decl.fields.len()).map_err(PluginError::BadInput)?;
            if let Some(key) = batch.keys.iter().find(|&&k| !self.state.is_known(k)) {
                return Err(PluginError::BadInput(format!(
                    "key id {key} in a batch of `{}` was never named with add-keys",
                    decl.name
                )));
            }
            self.plugin.process(batch, &mut self.state, &mut self.out)?;
        }
        Ok(self.out.take())
    }

    /// Advances the watermark and returns the windows it closes.
    pub fn on_watermark(&mut self, ts: Millis) -> Result<Vec<Batch>, PluginError> {
        self.state.set_watermark(ts);
        let watermark = self.state.watermark();
        self.plugin.on_watermark(watermark, &mut self.state, &mut self.out)?;
        Ok(self.out.take())
    }

    /// Saves the instance's state.
    pub fn snapshot(&self) -> Snapshot {
        let (shared, keys) = self.state.save();
        Snapshot { format_version: P::STATE_FORMAT_VERSION, shared, keys }
    }

    /// The plugin itself, for tests.
    pub fn plugin(&self) -> &P {
        &self.plugin
    }
}

/// What `describe` returns for `P`: its [`Info`], and its series with every
/// parameter at its default (empty when a parameter has no default).
pub fn describe<P: StreamFunction>() -> Descriptor {
    let Info { name, version, doc, params } = P::info();
    let (inputs, outputs) = match Instance::<P>::open(&[]) {
        Ok(instance) => (instance.io.inputs, instance.io.outputs),
        Err(_) => (Vec::new(), Vec::new()),
    };
    Descriptor { name, version, doc, params, inputs, outputs, state_format_version: P::STATE_FORMAT_VERSION }
}

/// [`Instance`] as the component's exported `operator` resource. The WIT
/// methods take `&self`, hence the `RefCell`; the host never overlaps
/// calls on one instance, so it never finds the cell borrowed.
pub struct Exported<P: StreamFunction>(RefCell<Instance<P>>);

impl<P: StreamFunction> wit::GuestOperator for Exported<P> {
    fn open(params: Vec<Param>) -> Result<wit::Operator, PluginError> {
        Ok(wit::Operator::new(Exported(RefCell::new(Instance::<P>::open(&params)?))))
    }

    fn restore(params: Vec<Param>, state: Snapshot) -> Result<wit::Operator, PluginError> {
        Ok(wit::Operator::new(Exported(RefCell::new(Instance::<P>::restore(&params, state)?))))
    }

    fn inputs(&self) -> Vec<SeriesDecl> {
        self.0.borrow().inputs().to_vec()
    }

    fn outputs(&self) -> Vec<SeriesDecl> {
        self.0.borrow().outputs().to_vec()
    }

    fn add_keys(&self, keys: Vec<KeyName>) {
        self.0.borrow_mut().add_keys(keys)
    }

    fn process(&self, input: Vec<Batch>) -> Result<Vec<Batch>, PluginError> {
        self.0.borrow_mut().process(&input)
    }

    fn on_watermark(&self, ts: Millis) -> Result<Vec<Batch>, PluginError> {
        self.0.borrow_mut().on_watermark(ts)
    }

    fn snapshot(&self) -> Snapshot {
        self.0.borrow().snapshot()
    }
}
