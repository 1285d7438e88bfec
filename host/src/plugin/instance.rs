//! One running plugin instance: its store, its `operator` resource, and the
//! key names it has been told.

use wasmtime::component::ResourceAny;
use wasmtime::{Store, Trap};

use super::bindings::{Plugin, PluginPre};
use super::error::{Error, StopReason};
use super::sandbox::Sandbox;
use super::{Batch, KeyName, Param, SandboxLimits, SeriesDecl, Snapshot};
use crate::keys::{KeyId, KeyTable};

/// An instance of a plugin in its own store. Not shared between threads:
/// each worker opens its own.
pub struct PluginInstance {
    label: String,
    store: Store<Sandbox>,
    plugin: Plugin,
    operator: ResourceAny,
    limits: SandboxLimits,
    inputs: Vec<SeriesDecl>,
    outputs: Vec<SeriesDecl>,
    /// `named[id]`: the key's name has been sent with `add-keys`.
    named: Vec<bool>,
    /// Why the instance was stopped, once it has been.
    stopped: Option<String>,
}

impl PluginInstance {
    pub(super) fn open(
        mut store: Store<Sandbox>,
        pre: &PluginPre<Sandbox>,
        label: String,
        limits: &SandboxLimits,
        params: &[Param],
        snapshot: Option<&Snapshot>,
    ) -> Result<Self, Error> {
        let plugin = pre
            .instantiate(&mut store)
            .map_err(|e| Error::Host { plugin: label.clone(), reason: format!("cannot instantiate: {e:#}") })?;
        let op = plugin.tickfold_plugin_stream_function().operator();
        let (call, opened) = match snapshot {
            None => ("open", op.call_open(&mut store, params)),
            Some(s) => ("restore", op.call_restore(&mut store, params, s)),
        };
        let operator = opened
            .map_err(|e| classify(&label, call, e, &store, limits))?
            .map_err(|error| Error::Rejected { plugin: label.clone(), call, error })?;
        let mut instance = PluginInstance {
            label,
            store,
            plugin,
            operator,
            limits: limits.clone(),
            inputs: Vec::new(),
            outputs: Vec::new(),
            named: Vec::new(),
            stopped: None,
        };
        instance.inputs =
            instance.call("inputs", |p, s, o| p.tickfold_plugin_stream_function().operator().call_inputs(s, o))?;
        instance.outputs =
            instance.call("outputs", |p, s, o| p.tickfold_plugin_stream_function().operator().call_outputs(s, o))?;
        Ok(instance)
    }

    /// `name@version`.
    pub fn label(&self) -> &str {
        &self.label
    }

    /// The series this instance reads, in `batch.series` order.
    pub fn inputs(&self) -> &[SeriesDecl] {
        &self.inputs
    }

    /// The series this instance writes, in `batch.series` order.
    pub fn outputs(&self) -> &[SeriesDecl] {
        &self.outputs
    }

    /// True once a trap, deadline or memory overrun has stopped it.
    pub fn is_stopped(&self) -> bool {
        self.stopped.is_some()
    }

    /// Sends the names of keys in `batches` the instance has not seen, then
    /// the batches; returns what they complete.
    pub fn process(&mut self, batches: &[Batch], keys: &KeyTable) -> Result<Vec<Batch>, Error> {
        for batch in batches {
            self.name_keys(&batch.keys, keys)?;
        }
        self.call("process", |p, s, o| p.tickfold_plugin_stream_function().operator().call_process(s, o, batches))?
            .map_err(|error| Error::Rejected { plugin: self.label.clone(), call: "process", error })
    }

    /// Sends the names of those of `ids` the instance has not been told.
    pub(super) fn name_keys(&mut self, ids: &[KeyId], keys: &KeyTable) -> Result<(), Error> {
        let mut new_keys = Vec::new();
        for &id in ids {
            let i = id as usize;
            if i >= self.named.len() {
                self.named.resize(i + 1, false);
            }
            if !self.named[i] {
                self.named[i] = true;
                new_keys.push(KeyName { id, name: keys.name(id).to_string() });
            }
        }
        if new_keys.is_empty() {
            return Ok(());
        }
        self.call("add-keys", |p, s, o| p.tickfold_plugin_stream_function().operator().call_add_keys(s, o, &new_keys))
    }

    /// Advances the watermark; returns the windows it closes.
    pub fn on_watermark(&mut self, ts: i64) -> Result<Vec<Batch>, Error> {
        self.call("on-watermark", |p, s, o| p.tickfold_plugin_stream_function().operator().call_on_watermark(s, o, ts))?
            .map_err(|error| Error::Rejected { plugin: self.label.clone(), call: "on-watermark", error })
    }

    /// Saves the instance's state.
    pub fn snapshot(&mut self) -> Result<Snapshot, Error> {
        self.call("snapshot", |p, s, o| p.tickfold_plugin_stream_function().operator().call_snapshot(s, o))
    }

    /// Makes one call with a fresh deadline; a trap stops the instance.
    fn call<R>(
        &mut self,
        call: &'static str,
        f: impl FnOnce(&Plugin, &mut Store<Sandbox>, ResourceAny) -> wasmtime::Result<R>,
    ) -> Result<R, Error> {
        if let Some(reason) = &self.stopped {
            return Err(Error::AlreadyStopped { plugin: self.label.clone(), reason: reason.clone() });
        }
        self.store.set_epoch_deadline(self.limits.deadline_ticks());
        f(&self.plugin, &mut self.store, self.operator).map_err(|e| {
            let error = classify(&self.label, call, e, &self.store, &self.limits);
            if let Error::Stopped { reason, .. } = &error {
                self.stopped = Some(reason.to_string());
            }
            error
        })
    }
}

/// Turns a failed call into a report: why it stopped, the guest's
/// backtrace, and the last lines it printed (a panic message, typically).
pub(super) fn classify(
    plugin: &str,
    call: &'static str,
    error: wasmtime::Error,
    store: &Store<Sandbox>,
    limits: &SandboxLimits,
) -> Error {
    let reason = if store.data().memory_refused {
        StopReason::Memory { limit_bytes: limits.memory_bytes }
    } else {
        match error.downcast_ref::<Trap>() {
            Some(Trap::Interrupt) => StopReason::Deadline { timeout_ms: limits.call_timeout_ms },
            Some(trap) => StopReason::Trap(trap.to_string()),
            None => StopReason::Trap(format!("{error}")),
        }
    };
    let mut detail = String::new();
    let output = store.data().output_tail();
    if !output.is_empty() {
        detail.push_str("its last output:\n");
        detail.push_str(&output);
        detail.push('\n');
    }
    if let Some(bt) = error.downcast_ref::<wasmtime::WasmBacktrace>() {
        detail.push_str(&format!("{bt}"));
    }
    let detail = detail.trim_end().to_string();
    tracing::error!(plugin, call, %reason, "{detail}");
    Error::Stopped { plugin: plugin.to_string(), call, reason, detail }
}
