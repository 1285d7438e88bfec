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
        let out = self
            .call("process", |p, s, o| p.tickfold_plugin_stream_function().operator().call_process(s, o, batches))?
            .map_err(|error| Error::Rejected { plugin: self.label.clone(), call: "process", error })?;
        self.checked("process", out)
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
        let out = self
            .call("on-watermark", |p, s, o| p.tickfold_plugin_stream_function().operator().call_on_watermark(s, o, ts))?
            .map_err(|error| Error::Rejected { plugin: self.label.clone(), call: "on-watermark", error })?;
        self.checked("on-watermark", out)
    }

    /// `out`, if it keeps the contract; else the instance is stopped, as
    /// for a trap: the host would index past its tables with such a batch
    /// (or file samples under another key), and what the instance holds
    /// can no longer be trusted.
    fn checked(&mut self, call: &'static str, out: Vec<Batch>) -> Result<Vec<Batch>, Error> {
        let Some(what) = broken_contract(&self.outputs, &self.named, &out) else {
            return Ok(out);
        };
        let reason = StopReason::BadOutput(what);
        self.stopped = Some(reason.to_string());
        Err(Error::Stopped { plugin: self.label.clone(), call, reason, detail: String::new() })
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

/// What is wrong with `batches` as the outputs of an instance that declares
/// `outputs` and was given the keys `named` (by id), if anything: each
/// batch must be of a declared series, with that series' number of field
/// columns, every column one value per row, and only keys the instance
/// was given.
fn broken_contract(outputs: &[SeriesDecl], named: &[bool], batches: &[Batch]) -> Option<String> {
    for b in batches {
        let Some(decl) = outputs.get(b.series as usize) else {
            return Some(format!(
                "a batch for output series {} (it declares {} output series, numbered from 0)",
                b.series,
                outputs.len()
            ));
        };
        if b.fields.len() != decl.fields.len() {
            return Some(format!(
                "a batch of `{}` with {} field columns (the series declares {}: {})",
                decl.name,
                b.fields.len(),
                decl.fields.len(),
                decl.fields.join(", ")
            ));
        }
        let rows = b.keys.len();
        if b.ts.len() != rows || b.fields.iter().any(|c| c.len() != rows) {
            return Some(format!(
                "a batch of `{}` whose columns differ in length ({rows} keys, {} times, fields of {:?} values)",
                decl.name,
                b.ts.len(),
                b.fields.iter().map(Vec::len).collect::<Vec<_>>()
            ));
        }
        if let Some(&id) = b.keys.iter().find(|&&id| !named.get(id as usize).copied().unwrap_or(false)) {
            return Some(format!(
                "a sample of `{}` for key id {id}, which the host never gave it (outputs may only use keys named in `add-keys`)",
                decl.name
            ));
        }
    }
    None
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

#[cfg(test)]
mod tests {
    use super::*;

    fn decl(name: &str, fields: &[&str]) -> SeriesDecl {
        SeriesDecl { name: name.into(), fields: fields.iter().map(|f| f.to_string()).collect(), doc: String::new() }
    }

    fn batch(series: u32, keys: &[u32], ts: usize, fields: &[usize]) -> Batch {
        Batch { series, keys: keys.to_vec(), ts: vec![0; ts], fields: fields.iter().map(|&n| vec![1.0; n]).collect() }
    }

    #[test]
    fn outputs_are_held_to_the_contract() {
        let outputs = [decl("bars", &["open", "close"]), decl("vwap", &["vwap"])];
        // Keys 0 and 2 were given; 1 was not (another stage's), 3 is past the table.
        let named = [true, false, true];
        let check = |batches: &[Batch]| broken_contract(&outputs, &named, batches);

        assert_eq!(check(&[]), None);
        assert_eq!(check(&[batch(0, &[0, 2], 2, &[2, 2]), batch(1, &[2], 1, &[1])]), None);
        assert_eq!(check(&[batch(1, &[], 0, &[0])]), None, "an empty batch is fine");

        let wrong = [
            (batch(2, &[0], 1, &[1]), "output series 2 (it declares 2 output series"),
            (batch(0, &[0], 1, &[1]), "`bars` with 1 field columns (the series declares 2: open, close)"),
            (batch(0, &[0], 1, &[1, 1, 1]), "with 3 field columns"),
            (batch(0, &[0, 2], 1, &[2, 2]), "columns differ in length (2 keys, 1 times"),
            (batch(0, &[0, 2], 2, &[2, 1]), "fields of [2, 1] values"),
            (batch(1, &[0, 1], 2, &[2]), "key id 1, which the host never gave it"),
            (batch(1, &[3], 1, &[1]), "key id 3"),
        ];
        for (b, says) in wrong {
            // Also after a good batch: every batch is checked.
            let what = check(&[batch(1, &[0], 1, &[1]), b]).expect("broken");
            assert!(what.contains(says), "{what} / {says}");
        }
    }
}
