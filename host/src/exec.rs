//! Runs a chain of plugins over a file: what `tickfold exec` does, and the
//! same steps the streaming dataflow takes, minus Kafka and the workers.
//!
//! Per chunk of input:
//! 1. Each row is checked against the watermark *at its arrival* (highest
//!    event time so far minus the allowed lag): a row below it is late,
//!    counted and left out, exactly as a source partition treats it.
//! 2. Keys are interned, the chunk's columns bound to the first stage's
//!    declared input fields (by name), and the stage's outputs fed to the
//!    next stage, and so on.
//! 3. The watermark (highest event time minus the lag) goes to every stage
//!    in order, and whatever it closes flows downstream the same way.
//!
//! At the end of the input the watermark jumps to the end of time, so every
//! window closes, as if the stream had moved on.
//!
//! Wiring: each stage reads the first series that has all the fields its
//! input declares, searching the previous stage's outputs first, then the
//! stages before it, then the input file. Plugins that read "any field"
//! take a `field` parameter for that reason.

use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::keys::KeyTable;
use crate::plugin::{self, Batch, LoadedPlugin, Param, PluginInstance, SeriesDecl};
use crate::source::Chunk;

/// Something that stopped a run.
#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    /// A stage's input cannot be wired to any series.
    #[error(
        "stage {stage} (`{plugin}`) reads `{input}` with fields {needed:?}, but no earlier series has them all (available: {available}); set the plugin's `field` parameter, or put a plugin that produces them before it"
    )]
    Unwired { stage: usize, plugin: String, input: String, needed: Vec<String>, available: String },
    /// A `--param` names no stage, or a parameter no stage declares.
    #[error("{0}")]
    BadParam(String),
    /// A stage's configured input or renames do not fit the plugin.
    #[error("{0}")]
    BadInput(String),
    /// An output series would take a name another series has.
    #[error("stage {stage} (`{plugin}`) writes series `{name}`, which another series is already called; {fix}")]
    NameTaken { stage: usize, plugin: String, name: String, fix: &'static str },
    /// A plugin failed.
    #[error(transparent)]
    Plugin(#[from] plugin::Error),
    /// Writing the output failed.
    #[error("writing the output: {0}")]
    Write(#[from] std::io::Error),
}

/// A series flowing through the chain: the input file's or a stage's output.
#[derive(Clone, Debug)]
struct Series {
    /// Name in the output (`series` column).
    name: String,
    fields: Vec<String>,
    /// Its samples go to the output.
    report: bool,
    /// Its stage was removed or replaced by one that no longer writes it:
    /// nothing writes it now, and its name is free again.
    retired: bool,
}

/// How one declared input of a stage is fed: from series `source`, picking
/// columns `columns` in the order the plugin declared its fields.
#[derive(Clone, Debug)]
struct Wire {
    source: usize,
    input: u32,
    columns: Vec<usize>,
}

struct Stage {
    name: String,
    instance: PluginInstance,
    stats: std::sync::Arc<StageStats>,
    wires: Vec<Wire>,
    /// Series ids of the stage's outputs, by output index.
    outputs: Vec<usize>,
}

/// How an upgraded stage started.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Carried {
    /// From the old version's snapshot.
    State,
    /// From empty state, and why.
    Fresh(String),
}

/// Counts from a run.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ExecStats {
    /// Input rows read.
    pub rows_in: u64,
    /// Input rows left out because they arrived below the watermark.
    pub late: u64,
    /// Input rows handed to the first stage.
    pub samples_in: u64,
    /// Output samples written.
    pub samples_out: u64,
}

/// Splits `--param` values among stages: `NAME.key=value` goes to the
/// stage whose plugin is called NAME (or stage number N as `N.key`); a
/// bare `key=value` goes to every stage that declares `key`.
pub fn assign_params(plugins: &[LoadedPlugin], given: &[(String, String)]) -> Result<Vec<Vec<Param>>, ExecError> {
    let mut per_stage = vec![Vec::new(); plugins.len()];
    for (key, value) in given {
        let declares = |p: &LoadedPlugin, k: &str| p.descriptor().params.iter().any(|d| d.name == k);
        let targets: Vec<(usize, &str)> = match key.split_once('.') {
            Some((stage, k)) => {
                let by_name = plugins.iter().position(|p| p.descriptor().name == stage);
                let by_index = stage.parse::<usize>().ok().filter(|&i| i < plugins.len());
                match by_name.or(by_index) {
                    Some(i) => vec![(i, k)],
                    None => {
                        return Err(ExecError::BadParam(format!(
                            "--param {key}={value}: no stage is called `{stage}` (stages: {})",
                            plugins.iter().map(|p| p.descriptor().name.as_str()).collect::<Vec<_>>().join(", ")
                        )));
                    }
                }
            }
            None => {
                plugins.iter().enumerate().filter(|(_, p)| declares(p, key)).map(|(i, _)| (i, key.as_str())).collect()
            }
        };
        if targets.is_empty() {
            return Err(ExecError::BadParam(format!(
                "--param {key}={value}: no plugin in the chain declares `{key}` (run `tickfold check` on a plugin to see its parameters)"
            )));
        }
        for (i, k) in targets {
            per_stage[i].push(Param { name: k.to_string(), value: value.clone() });
        }
    }
    Ok(per_stage)
}

/// One stage of a DAG: a plugin, its parameters, and optionally the series
/// each of its inputs reads and new names for its outputs.
#[derive(Clone)]
pub struct StageSpec {
    /// The stage's name, unique in the DAG (`tickfold plugins`, metrics,
    /// deploys and removals refer to it).
    pub name: String,
    pub plugin: LoadedPlugin,
    pub params: Vec<Param>,
    /// Series names, one per declared input; `None` wires by fields.
    pub input: Option<Vec<String>>,
    /// Output series renamed: plugin's name → name in the sinks.
    pub rename: std::collections::BTreeMap<String, String>,
    /// The stage's counts, shared by every worker's instance of it (clones
    /// of a spec share them).
    pub stats: std::sync::Arc<StageStats>,
}

impl StageSpec {
    /// A stage named after its plugin that wires by fields and renames
    /// nothing.
    pub fn new(plugin: LoadedPlugin, params: Vec<Param>) -> Self {
        StageSpec {
            name: plugin.descriptor().name.clone(),
            plugin,
            params,
            input: None,
            rename: Default::default(),
            stats: Default::default(),
        }
    }
}

/// Upper bounds of the call-latency buckets, in µs (Prometheus-style,
/// cumulative when reported; the last bucket is +Inf).
pub const CALL_BUCKETS_US: [u64; 9] = [10, 50, 100, 500, 1_000, 5_000, 10_000, 100_000, 1_000_000];

/// A stage's counts over all workers, for the metrics: samples in and
/// out, calls into the plugin and how long they took, failures.
#[derive(Debug, Default)]
pub struct StageStats {
    pub samples_in: AtomicU64,
    pub samples_out: AtomicU64,
    /// Calls that failed (traps, deadlines, memory, errors).
    pub failures: AtomicU64,
    /// Calls per latency bucket (`CALL_BUCKETS_US`, then +Inf), not
    /// cumulative.
    pub calls: [AtomicU64; CALL_BUCKETS_US.len() + 1],
    /// Time in calls, ns.
    pub call_ns: AtomicU64,
}

impl StageStats {
    fn record<T, E>(&self, started: std::time::Instant, result: &Result<T, E>) {
        let took = started.elapsed();
        let us = took.as_micros() as u64;
        let bucket = CALL_BUCKETS_US.iter().position(|&b| us <= b).unwrap_or(CALL_BUCKETS_US.len());
        self.calls[bucket].fetch_add(1, Ordering::Relaxed);
        self.call_ns.fetch_add(took.as_nanos() as u64, Ordering::Relaxed);
        if result.is_err() {
            self.failures.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// A chain of plugin instances wired to an input's fields.
///
/// Stages can be added, removed and replaced while it runs (hot deploys):
/// the dataflow does that at one event time on every worker, between the
/// samples before it and those after.
pub struct Chain {
    stages: Vec<Stage>,
    series: Vec<Series>,
    keys: KeyTable,
    lag_ms: i64,
    max_ts: i64,
    /// Report the outputs of stages added later.
    report_all: bool,
    stats: ExecStats,
}

impl Chain {
    /// Opens every stage and wires it. `input_fields` are the input file's
    /// fields; `report_all` reports every stage's outputs, not only the
    /// last stage's.
    pub fn open(
        plugins: &[LoadedPlugin],
        params: &[Vec<Param>],
        input_fields: &[String],
        lag_ms: i64,
        report_all: bool,
    ) -> Result<Self, ExecError> {
        let stages: Vec<StageSpec> =
            plugins.iter().zip(params).map(|(plugin, params)| StageSpec::new(plugin.clone(), params.clone())).collect();
        Self::open_dag(&stages, "input", input_fields, lag_ms, report_all)
    }

    /// Opens a DAG of stages over an input series called `input_name`.
    /// A stage reads the series its spec names, or else the newest series
    /// with the fields it declares; its outputs may be renamed. An output
    /// whose name is taken is called `STAGE.NAME` (stage number).
    pub fn open_dag(
        specs: &[StageSpec],
        input_name: &str,
        input_fields: &[String],
        lag_ms: i64,
        report_all: bool,
    ) -> Result<Self, ExecError> {
        Self::open_dag_restored(specs, input_name, input_fields, lag_ms, report_all, &Default::default())
    }

    /// [`Chain::open_dag`], each stage named in `states` restored from its
    /// snapshot (a checkpoint's, cut down to this worker's keys). A stage
    /// whose plugin refuses its state starts empty, with a warning: the
    /// plugin changed since (an upgrade accepted just before a crash).
    pub fn open_dag_restored(
        specs: &[StageSpec],
        input_name: &str,
        input_fields: &[String],
        lag_ms: i64,
        report_all: bool,
        states: &std::collections::BTreeMap<String, crate::plugin::Snapshot>,
    ) -> Result<Self, ExecError> {
        let mut chain = Chain {
            stages: Vec::with_capacity(specs.len()),
            series: vec![Series {
                name: input_name.into(),
                fields: input_fields.to_vec(),
                report: false,
                retired: false,
            }],
            keys: KeyTable::default(),
            lag_ms,
            max_ts: i64::MIN,
            report_all,
            stats: ExecStats::default(),
        };
        for (i, spec) in specs.iter().enumerate() {
            let instance = match states.get(&spec.name) {
                Some(state) => match spec.plugin.restore(&spec.params, state, &mut chain.keys) {
                    Ok(instance) => instance,
                    Err(e) => {
                        tracing::warn!(stage = %spec.name, "the checkpointed state was refused, so the stage starts empty: {e}");
                        spec.plugin.open(&spec.params)?
                    }
                },
                None => spec.plugin.open(&spec.params)?,
            };
            let report = report_all || i + 1 == specs.len();
            let stage = chain.attach(i, spec, instance, &[], report, false)?;
            chain.stages.push(stage);
        }
        Ok(chain)
    }

    /// Wires `instance` of `spec` (stage number `stage_no`, for messages)
    /// to the live series and names its outputs. `replacing` are the
    /// outputs of the stage it replaces: not readable by it, and taken
    /// over where name and fields match. With `strict`, an output name that
    /// is taken is an error instead of being prefixed.
    fn attach(
        &mut self,
        stage_no: usize,
        spec: &StageSpec,
        instance: PluginInstance,
        replacing: &[usize],
        report: bool,
        strict: bool,
    ) -> Result<Stage, ExecError> {
        let plugin = &spec.plugin;
        let declared = instance.inputs();
        if let Some(named) = &spec.input
            && named.len() != declared.len()
        {
            return Err(ExecError::BadInput(format!(
                "stage {stage_no} (`{}`) has {} input(s) ({}), but {} series are named ({})",
                plugin.label(),
                declared.len(),
                declared.iter().map(|d| d.name.as_str()).collect::<Vec<_>>().join(", "),
                named.len(),
                named.join(", ")
            )));
        }
        let readable: Vec<(usize, &Series)> =
            self.series.iter().enumerate().filter(|(id, s)| !s.retired && !replacing.contains(id)).collect();
        let wires = declared
            .iter()
            .enumerate()
            .map(|(input, decl)| {
                let named = spec.input.as_ref().map(|n| n[input].as_str());
                wire(stage_no, plugin, input as u32, decl, named, &readable)
            })
            .collect::<Result<Vec<_>, _>>()?;
        for from in spec.rename.keys() {
            if !instance.outputs().iter().any(|o| &o.name == from) {
                return Err(ExecError::BadInput(format!(
                    "stage {stage_no} (`{}`) renames `{from}`, but writes no such series (it writes: {})",
                    plugin.label(),
                    instance.outputs().iter().map(|o| o.name.as_str()).collect::<Vec<_>>().join(", ")
                )));
            }
        }
        let mut outputs = Vec::new();
        for out in instance.outputs() {
            let name = spec.rename.get(&out.name).cloned().unwrap_or_else(|| out.name.clone());
            if let Some(&id) =
                replacing.iter().find(|&&id| self.series[id].name == name && self.series[id].fields == out.fields)
            {
                outputs.push(id);
                continue;
            }
            let taken =
                self.series.iter().enumerate().any(|(id, s)| !s.retired && s.name == name && !replacing.contains(&id));
            if taken && (strict || spec.rename.contains_key(&out.name)) {
                return Err(ExecError::NameTaken {
                    stage: stage_no,
                    plugin: plugin.label(),
                    name,
                    fix: if strict { "deploy it under another name, or rename its output" } else { "rename it" },
                });
            }
            let name = if taken { format!("{stage_no}.{name}") } else { name };
            outputs.push(self.series.len());
            self.series.push(Series { name, fields: out.fields.clone(), report, retired: false });
        }
        Ok(Stage { name: spec.name.clone(), instance, wires, outputs, stats: spec.stats.clone() })
    }

    /// The reported series' names and fields, in order.
    pub fn reported_series(&self) -> impl Iterator<Item = (&str, &[String])> {
        self.series.iter().filter(|s| s.report && !s.retired).map(|s| (s.name.as_str(), s.fields.as_slice()))
    }

    /// The stages' names, in order.
    pub fn stage_names(&self) -> impl Iterator<Item = &str> {
        self.stages.iter().map(|s| s.name.as_str())
    }

    /// The names and fields of the series stage `name` writes.
    pub fn stage_outputs(&self, name: &str) -> Vec<(String, Vec<String>)> {
        let Some(stage) = self.stages.iter().find(|s| s.name == name) else { return Vec::new() };
        stage.outputs.iter().map(|&id| (self.series[id].name.clone(), self.series[id].fields.clone())).collect()
    }

    /// The names of the series stage `name` reads.
    pub fn stage_inputs(&self, name: &str) -> Vec<String> {
        let Some(stage) = self.stages.iter().find(|s| s.name == name) else { return Vec::new() };
        stage.wires.iter().map(|w| self.series[w.source].name.clone()).collect()
    }

    /// Every stage's state: (stage name, `plugin@version`, snapshot).
    pub fn snapshot(&mut self) -> Result<Vec<(String, String, crate::plugin::Snapshot)>, ExecError> {
        let mut out = Vec::with_capacity(self.stages.len());
        for stage in &mut self.stages {
            let snapshot = stage.instance.snapshot()?;
            out.push((stage.name.clone(), stage.instance.label().to_string(), snapshot));
        }
        Ok(out)
    }

    /// Adds a stage at the end, reading the live series. Its output names
    /// must be free.
    pub fn add_stage(&mut self, spec: &StageSpec) -> Result<(), ExecError> {
        if self.stages.iter().any(|s| s.name == spec.name) {
            return Err(ExecError::BadInput(format!("a stage called `{}` is already running", spec.name)));
        }
        let instance = spec.plugin.open(&spec.params)?;
        let stage = self.attach(self.stages.len(), spec, instance, &[], true, true)?;
        self.stages.push(stage);
        Ok(())
    }

    /// Removes stage `name`; its open state is dropped and its series are
    /// written no more. Refused while another stage reads them.
    pub fn remove_stage(&mut self, name: &str) -> Result<(), ExecError> {
        let i = self.stage_index(name)?;
        let outputs = self.stages[i].outputs.clone();
        self.check_unread(i, &outputs)?;
        self.stages.remove(i);
        for id in outputs {
            self.series[id].retired = true;
        }
        Ok(())
    }

    /// Replaces stage `spec.name` by `spec`, in place: the new instance
    /// starts from the old one's snapshot when it restores it, and from
    /// empty state otherwise. Outputs with the same name and fields stay
    /// the same series (their readers keep reading them).
    pub fn replace_stage(&mut self, spec: &StageSpec) -> Result<Carried, ExecError> {
        let i = self.stage_index(&spec.name)?;
        let old_outputs = self.stages[i].outputs.clone();
        let (instance, carried) = match self.stages[i].instance.snapshot() {
            Ok(snapshot) => match spec.plugin.restore(&spec.params, &snapshot, &mut self.keys) {
                Ok(instance) => (instance, Carried::State),
                Err(e) => (
                    spec.plugin.open(&spec.params)?,
                    Carried::Fresh(format!("the new version refused the old state: {e}")),
                ),
            },
            Err(e) => {
                (spec.plugin.open(&spec.params)?, Carried::Fresh(format!("the old version gave no snapshot: {e}")))
            }
        };
        let report = old_outputs.iter().any(|&id| self.series[id].report) || self.report_all;
        let series_before = self.series.len();
        let stage = match self.attach(i, spec, instance, &old_outputs, report, true) {
            Ok(stage) => stage,
            Err(e) => {
                self.series.truncate(series_before);
                return Err(e);
            }
        };
        let dropped: Vec<usize> = old_outputs.iter().copied().filter(|id| !stage.outputs.contains(id)).collect();
        if let Err(e) = self.check_unread(i, &dropped) {
            self.series.truncate(series_before);
            return Err(e);
        }
        for id in dropped {
            self.series[id].retired = true;
        }
        self.stages[i] = stage;
        Ok(carried)
    }

    fn stage_index(&self, name: &str) -> Result<usize, ExecError> {
        self.stages.iter().position(|s| s.name == name).ok_or_else(|| {
            ExecError::BadInput(format!(
                "no stage is called `{name}` (stages: {})",
                self.stages.iter().map(|s| s.name.as_str()).collect::<Vec<_>>().join(", ")
            ))
        })
    }

    /// Fails if a stage other than `except` reads one of `series`.
    fn check_unread(&self, except: usize, series: &[usize]) -> Result<(), ExecError> {
        for (j, other) in self.stages.iter().enumerate() {
            if j != except
                && let Some(w) = other.wires.iter().find(|w| series.contains(&w.source))
            {
                return Err(ExecError::BadInput(format!(
                    "`{}` reads series `{}`, which `{}` would no longer write; remove or change `{}` first",
                    other.name, self.series[w.source].name, self.stages[except].name, other.name
                )));
            }
        }
        Ok(())
    }

    /// Counts so far.
    pub fn stats(&self) -> &ExecStats {
        &self.stats
    }

    /// Feeds one chunk of input, leaving out rows below the watermark on
    /// arrival, then advances the watermark.
    pub fn push(&mut self, chunk: &Chunk, out: &mut dyn OutputWriter) -> Result<(), ExecError> {
        let mut on_time = Vec::with_capacity(chunk.len());
        for i in 0..chunk.len() {
            self.stats.rows_in += 1;
            let ts = chunk.ts[i];
            if ts < self.watermark() {
                self.stats.late += 1;
                continue;
            }
            self.max_ts = self.max_ts.max(ts);
            on_time.push(i);
        }
        let rows =
            on_time.iter().map(|&i| (chunk.symbols[i].as_str(), chunk.ts[i], chunk.fields.iter().map(move |c| c[i])));
        self.feed(rows, out)?;
        self.advance(self.watermark(), out)
    }

    /// Feeds rows that a source has already let through (the streaming
    /// dataflow decides lateness at its sources), without moving the
    /// watermark.
    pub fn feed<'r, V: IntoIterator<Item = f64>>(
        &mut self,
        rows: impl IntoIterator<Item = (&'r str, i64, V)>,
        out: &mut dyn OutputWriter,
    ) -> Result<(), ExecError> {
        let fields = self.series[0].fields.len();
        let mut input = Batch::empty(0, fields);
        for (symbol, ts, values) in rows {
            input.keys.push(self.keys.intern(symbol));
            input.ts.push(ts);
            for (col, v) in input.fields.iter_mut().zip(values) {
                col.push(v);
            }
        }
        if input.is_empty() {
            return Ok(());
        }
        self.stats.samples_in += input.len() as u64;
        self.flow(0, vec![input], out)
    }

    /// Ends the input: the watermark moves to the end of time.
    pub fn finish(&mut self, out: &mut dyn OutputWriter) -> Result<(), ExecError> {
        self.advance(i64::MAX, out)
    }

    fn watermark(&self) -> i64 {
        self.max_ts.saturating_sub(self.lag_ms)
    }

    /// Tells every stage, in order, that no sample below `watermark` will
    /// arrive, routing what that closes downstream.
    pub fn advance(&mut self, watermark: i64, out: &mut dyn OutputWriter) -> Result<(), ExecError> {
        for i in 0..self.stages.len() {
            let stage = &mut self.stages[i];
            let started = std::time::Instant::now();
            let produced = stage.instance.on_watermark(watermark);
            stage.stats.record(started, &produced);
            let produced = produced?;
            stage.stats.samples_out.fetch_add(produced.iter().map(|b| b.len() as u64).sum(), Ordering::Relaxed);
            self.route(i, produced, out)?;
        }
        Ok(())
    }

    /// Sends batches of series `source` to every stage wired to it, in
    /// stage order, routing what each produces onwards.
    fn flow(&mut self, source: usize, batches: Vec<Batch>, out: &mut dyn OutputWriter) -> Result<(), ExecError> {
        for i in 0..self.stages.len() {
            let inputs: Vec<Batch> = self.stages[i]
                .wires
                .iter()
                .filter(|w| w.source == source)
                .flat_map(|w| batches.iter().map(move |b| select(b, w)))
                .filter(|b| !b.is_empty())
                .collect();
            if inputs.is_empty() {
                continue;
            }
            let stage = &mut self.stages[i];
            let started = std::time::Instant::now();
            let produced = stage.instance.process(&inputs, &self.keys);
            stage.stats.record(started, &produced);
            let produced = produced?;
            let (sin, sout) =
                (inputs.iter().map(Batch::len).sum::<usize>(), produced.iter().map(Batch::len).sum::<usize>());
            stage.stats.samples_in.fetch_add(sin as u64, Ordering::Relaxed);
            stage.stats.samples_out.fetch_add(sout as u64, Ordering::Relaxed);
            self.route(i, produced, out)?;
        }
        Ok(())
    }

    fn route(&mut self, stage: usize, produced: Vec<Batch>, out: &mut dyn OutputWriter) -> Result<(), ExecError> {
        for batch in produced {
            let id = self.stages[stage].outputs[batch.series as usize];
            let s = &self.series[id];
            if s.report {
                // One row's values at a time, in a buffer kept across rows.
                let mut values = Vec::with_capacity(batch.fields.len());
                for row in 0..batch.len() {
                    values.clear();
                    values.extend(batch.fields.iter().map(|c| c[row]));
                    out.write(&s.name, &s.fields, self.keys.name(batch.keys[row]), batch.ts[row], &values)?;
                    self.stats.samples_out += 1;
                }
            }
            let mut relabelled = batch;
            relabelled.series = 0;
            self.flow(id, vec![relabelled], out)?;
        }
        Ok(())
    }
}

/// Wires input `input` (declared `decl`) of a stage to one of the
/// `readable` series: the one `named` (`SERIES`, or `SERIES.FIELD` to feed a
/// one-field input from that field), or else the newest with every field
/// the input declares.
fn wire(
    stage: usize,
    plugin: &LoadedPlugin,
    input: u32,
    decl: &SeriesDecl,
    named: Option<&str>,
    readable: &[(usize, &Series)],
) -> Result<Wire, ExecError> {
    let columns_in = |s: &Series| -> Option<Vec<usize>> {
        decl.fields.iter().map(|f| s.fields.iter().position(|have| have == f)).collect()
    };
    let listing =
        || readable.iter().map(|(_, s)| format!("{} ({})", s.name, s.fields.join(", "))).collect::<Vec<_>>().join("; ");
    let find = |name: &str| readable.iter().rev().find(|(_, s)| s.name == name).copied();
    if let Some(name) = named {
        if let Some((id, s)) = find(name) {
            return match columns_in(s) {
                Some(columns) => Ok(Wire { source: id, input, columns }),
                None => Err(ExecError::Unwired {
                    stage,
                    plugin: plugin.label(),
                    input: decl.name.clone(),
                    needed: decl.fields.clone(),
                    available: format!("{} ({})", s.name, s.fields.join(", ")),
                }),
            };
        }
        // `SERIES.FIELD`: a one-field input fed from a chosen field.
        if let Some((series, field)) = name.rsplit_once('.')
            && let Some((id, s)) = find(series)
        {
            let Some(column) = s.fields.iter().position(|f| f == field) else {
                return Err(ExecError::BadInput(format!(
                    "stage {stage} (`{}`) reads `{name}`, but series `{series}` has no field `{field}` (its fields: {})",
                    plugin.label(),
                    s.fields.join(", ")
                )));
            };
            if decl.fields.len() != 1 {
                return Err(ExecError::BadInput(format!(
                    "stage {stage} (`{}`) reads `{name}`, one field, but its input `{}` takes {} fields ({}); name the series alone",
                    plugin.label(),
                    decl.name,
                    decl.fields.len(),
                    decl.fields.join(", ")
                )));
            }
            return Ok(Wire { source: id, input, columns: vec![column] });
        }
        return Err(ExecError::BadInput(format!(
            "stage {stage} (`{}`) reads series `{name}`, which nothing before it writes (available: {})",
            plugin.label(),
            listing()
        )));
    }
    // Newest series first: the previous stage's outputs, then earlier ones,
    // then the input file.
    for (id, s) in readable.iter().rev() {
        if let Some(columns) = columns_in(s) {
            return Ok(Wire { source: *id, input, columns });
        }
    }
    Err(ExecError::Unwired {
        stage,
        plugin: plugin.label(),
        input: decl.name.clone(),
        needed: decl.fields.clone(),
        available: listing(),
    })
}

/// The columns of `batch` that wire `w` reads, as a batch of its input.
fn select(batch: &Batch, w: &Wire) -> Batch {
    Batch {
        series: w.input,
        keys: batch.keys.clone(),
        ts: batch.ts.clone(),
        fields: w.columns.iter().map(|&c| batch.fields[c].clone()).collect(),
    }
}

/// Where `tickfold exec` writes output samples.
pub trait OutputWriter {
    /// Writes one sample of series `series`.
    fn write(&mut self, series: &str, fields: &[String], symbol: &str, ts: i64, values: &[f64]) -> std::io::Result<()>;
    /// Flushes buffered output.
    fn finish(&mut self) -> std::io::Result<()>;
}

/// One JSON object per line: `{"series":…,"symbol":…,"ts":…,<field>:…}`.
/// Numbers are written in their shortest exact form, so they read back
/// bit for bit.
pub struct JsonlWriter<W: Write>(pub W);

impl<W: Write> OutputWriter for JsonlWriter<W> {
    fn write(&mut self, series: &str, fields: &[String], symbol: &str, ts: i64, values: &[f64]) -> std::io::Result<()> {
        let mut obj = serde_json::Map::new();
        obj.insert("series".into(), series.into());
        obj.insert("symbol".into(), symbol.into());
        obj.insert("ts".into(), ts.into());
        for (f, v) in fields.iter().zip(values) {
            // JSON has no NaN or infinity; those become null.
            obj.insert(f.clone(), serde_json::Number::from_f64(*v).map_or(serde_json::Value::Null, Into::into));
        }
        serde_json::to_writer(&mut self.0, &obj)?;
        self.0.write_all(b"\n")
    }

    fn finish(&mut self) -> std::io::Result<()> {
        self.0.flush()
    }
}

/// CSV with the columns `series, symbol, ts` and the union of every
/// reported series' fields; a series leaves the fields it lacks empty.
pub struct CsvWriter<W: Write> {
    out: csv::Writer<W>,
    columns: Vec<String>,
}

impl<W: Write> CsvWriter<W> {
    /// Writes the header for these series.
    pub fn new<'a>(out: W, series: impl Iterator<Item = (&'a str, &'a [String])>) -> std::io::Result<Self> {
        let mut columns: Vec<String> = Vec::new();
        for (_, fields) in series {
            for f in fields {
                if !columns.contains(f) {
                    columns.push(f.clone());
                }
            }
        }
        let mut out = csv::Writer::from_writer(out);
        let header = ["series", "symbol", "ts"].into_iter().map(str::to_string).chain(columns.iter().cloned());
        out.write_record(header.collect::<Vec<_>>())?;
        Ok(CsvWriter { out, columns })
    }
}

impl<W: Write> OutputWriter for CsvWriter<W> {
    fn write(&mut self, series: &str, fields: &[String], symbol: &str, ts: i64, values: &[f64]) -> std::io::Result<()> {
        let mut record = vec![series.to_string(), symbol.to_string(), ts.to_string()];
        for c in &self.columns {
            record.push(fields.iter().position(|f| f == c).map(|i| values[i].to_string()).unwrap_or_default());
        }
        self.out.write_record(&record)?;
        Ok(())
    }

    fn finish(&mut self) -> std::io::Result<()> {
        self.out.flush()
    }
}
