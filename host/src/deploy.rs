//! Hot deploys: plugins added, upgraded and removed while the host runs.
//!
//! The admin API hands a request to the [`ControlPlane`], which checks it
//! against the DAG as it will be once every change already accepted has
//! taken effect (so a rejected deploy disturbs nothing), persists it, and
//! queues it. Worker 0's control source (see `dataflow`) sends each queued
//! change into the dataflow at one event time `T`, broadcast to every
//! worker; each worker applies it once its frontier reaches `T`: samples
//! before `T` went through the old DAG, samples from `T` on go through the
//! new one, on every worker alike. An upgrade starts the new version from
//! the old one's `snapshot()` when it `restore()`s it.
//!
//! Deployed plugins live in the state directory (`deployed.json` and a copy
//! of each component), so a restarted host runs them again.

use std::collections::{BTreeMap, VecDeque};
use std::hash::Hasher;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::exec::{Carried, Chain, StageSpec, StageStats};
use crate::plugin::{self, LoadedPlugin, PluginRuntime};

/// Why a deploy or removal was refused. Each message says what to change.
#[derive(Debug, thiserror::Error)]
pub enum DeployError {
    /// The component is larger than the limit.
    #[error(
        "the component has {size} bytes, over the limit of {limit} (`max_plugin_bytes` in [admin]); build it with --release, or raise the limit"
    )]
    TooLarge { size: usize, limit: usize },
    /// Not a component of our contract, or it failed to describe itself.
    #[error("rejected: {0}")]
    Plugin(plugin::Error),
    /// The parameters are wrong.
    #[error("rejected: {0}")]
    BadParams(String),
    /// An input series or field that does not exist, or a wiring that
    /// does not fit.
    #[error("rejected: {0}")]
    BadInput(String),
    /// The name is taken by a plugin of the config file, or an output
    /// series' name by another series.
    #[error("rejected: {0}")]
    NameClash(String),
    /// The name is not usable.
    #[error(
        "rejected: `{0}` is not a usable plugin name: use 1 to 64 letters, digits, `_` or `-`, starting with a letter"
    )]
    BadName(String),
    /// No deployed plugin has that name.
    #[error("no deployed plugin is called `{name}` (deployed: {deployed})")]
    NotFound { name: String, deployed: String },
    /// Removing it would break a plugin that reads its series.
    #[error("refused: {0}")]
    InUse(String),
    /// The host runs without a control plane for deploys.
    #[error("this host does not take deploys (it is not running a stream)")]
    Closed,
    /// Writing the state directory failed.
    #[error("cannot persist the deploy in {dir}: {source}; nothing was changed", dir = .dir.display())]
    Persist { dir: PathBuf, source: std::io::Error },
}

impl DeployError {
    /// The HTTP status the admin API answers with.
    pub fn status(&self) -> u16 {
        match self {
            DeployError::TooLarge { .. } => 413,
            DeployError::NotFound { .. } => 404,
            DeployError::NameClash(_) | DeployError::InUse(_) => 409,
            DeployError::Closed => 503,
            DeployError::Persist { .. } => 500,
            _ => 422,
        }
    }
}

/// A deploy as the API receives it.
#[derive(Clone, Debug, Default)]
pub struct DeployRequest {
    pub name: String,
    pub wasm: Vec<u8>,
    /// `SERIES` or `SERIES.FIELD`, one per declared input; empty: wire by
    /// fields.
    pub inputs: Vec<String>,
    pub params: Vec<(String, String)>,
    /// Output series renamed: plugin's name → series name.
    pub rename: BTreeMap<String, String>,
}

/// What a change does to the DAG.
#[derive(Clone)]
pub enum Change {
    /// A new stage, at the end.
    Add(StageSpec),
    /// A stage replaced in place by a new version (or new parameters).
    Upgrade(StageSpec),
    /// A stage taken out.
    Remove(String),
}

impl Change {
    fn verb(&self) -> &'static str {
        match self {
            Change::Add(_) => "deploy",
            Change::Upgrade(_) => "upgrade",
            Change::Remove(_) => "remove",
        }
    }
}

/// One worker's outcome of applying a change.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Applied {
    /// Applied (an upgrade started from the old state).
    Done,
    /// An upgrade that started from empty state, and why.
    Fresh(String),
    /// It could not be applied on this worker.
    Failed(String),
}

/// Where a change stands, as the API reports it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ChangeStatus {
    pub id: u64,
    /// `deploy`, `upgrade` or `remove`.
    pub change: String,
    pub name: String,
    /// `name@version` of the plugin deployed (none for a removal).
    pub plugin: Option<String>,
    /// The version it replaced (upgrades).
    pub previous: Option<String>,
    /// The event time (ms) at which it takes effect on every worker; none
    /// until the dataflow has picked it up.
    pub at: Option<i64>,
    /// Workers that have applied it, of `workers`.
    pub applied: usize,
    pub workers: usize,
    /// Per worker, once applied.
    pub outcomes: Vec<Option<Applied>>,
    /// The output series (deploys and upgrades).
    pub outputs: Vec<String>,
    /// For upgrades, once applied everywhere: `carried over` or `fresh: …`.
    pub state: Option<String>,
}

impl ChangeStatus {
    /// Every worker has applied it.
    pub fn complete(&self) -> bool {
        self.applied == self.workers
    }
}

/// A plugin of the running DAG, as `tickfold plugins` shows it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PluginInfo {
    pub name: String,
    pub plugin: String,
    pub version: String,
    /// `config` or `deployed`.
    pub origin: String,
    pub inputs: Vec<String>,
    pub outputs: Vec<String>,
    pub params: BTreeMap<String, String>,
    /// Instances (one per worker).
    pub instances: usize,
    pub samples_in: u64,
    pub samples_out: u64,
    pub errors: u64,
    /// `running`, or the change waiting to take effect.
    pub status: String,
}

/// A deployed plugin as persisted in `deployed.json`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Persisted {
    pub name: String,
    /// The component's copy, relative to the state directory.
    pub wasm: String,
    pub inputs: Vec<String>,
    pub params: Vec<(String, String)>,
    pub rename: BTreeMap<String, String>,
}

/// A stage of the DAG as the control plane sees it: as it will be once
/// every accepted change has taken effect.
#[derive(Clone)]
struct Entry {
    spec: StageSpec,
    /// Persisted form; `None` for the config file's plugins.
    deployed: Option<Persisted>,
    inputs: Vec<String>,
    outputs: Vec<String>,
}

struct Pending {
    change: Change,
    status: ChangeStatus,
}

#[derive(Default)]
struct State {
    dag: Vec<Entry>,
    changes: BTreeMap<u64, Pending>,
    /// Accepted, not yet sent into the dataflow.
    queue: VecDeque<u64>,
    next_id: u64,
    /// Stats of stages removed while the host runs, kept for the metrics
    /// (a counter must not vanish mid-run).
    retired: Vec<(String, Arc<StageStats>)>,
    /// The dataflow is gone: changes would never be applied.
    closed: bool,
}

/// What a control plane serves: the input series, the workers, where
/// deploys are kept and how large a component may be.
#[derive(Clone, Debug)]
pub struct PlaneOptions {
    pub input_name: String,
    pub input_fields: Vec<String>,
    pub workers: usize,
    /// `None`: deploys are not persisted.
    pub state_dir: Option<PathBuf>,
    pub max_bytes: usize,
}

/// Wakes worker 0's control source when a change is queued.
pub type Wake = Box<dyn Fn() + Send + Sync>;

/// The plugins of a running host and the changes to them.
pub struct ControlPlane {
    runtime: PluginRuntime,
    input_name: String,
    input_fields: Vec<String>,
    workers: usize,
    max_bytes: usize,
    state_dir: Option<PathBuf>,
    state: Mutex<State>,
    changed: Condvar,
    wake: Mutex<Option<Wake>>,
}

impl ControlPlane {
    /// A control plane over the DAG `config` (the config file's stages)
    /// followed by `deployed` (from the state directory).
    pub fn new(
        runtime: PluginRuntime,
        options: PlaneOptions,
        config: Vec<StageSpec>,
        deployed: Vec<(StageSpec, Persisted)>,
    ) -> Result<Self, DeployError> {
        let control = ControlPlane {
            runtime,
            input_name: options.input_name,
            input_fields: options.input_fields,
            workers: options.workers,
            max_bytes: options.max_bytes,
            state_dir: options.state_dir,
            state: Mutex::new(State::default()),
            changed: Condvar::new(),
            wake: Mutex::new(None),
        };
        let specs: Vec<StageSpec> = config.iter().cloned().chain(deployed.iter().map(|(s, _)| s.clone())).collect();
        let chain = control.wire(&specs)?;
        let mut dag = Vec::new();
        let persisted = std::iter::repeat_n(None, config.len()).chain(deployed.into_iter().map(|(_, p)| Some(p)));
        for (spec, deployed) in specs.into_iter().zip(persisted) {
            dag.push(entry(&chain, spec, deployed));
        }
        control.lock().dag = dag;
        Ok(control)
    }

    /// The stages to start the dataflow with.
    pub fn stages(&self) -> Vec<StageSpec> {
        self.lock().dag.iter().map(|e| e.spec.clone()).collect()
    }

    /// Every stage's stats, for the metrics (removed ones included).
    pub fn plugin_stats(&self) -> Vec<(String, Arc<StageStats>)> {
        let state = self.lock();
        let live = state.dag.iter().map(|e| (e.spec.name.clone(), e.spec.stats.clone()));
        let mut all: Vec<_> = live.collect();
        for (name, stats) in &state.retired {
            if !all.iter().any(|(n, _)| n == name) {
                all.push((name.clone(), stats.clone()));
            }
        }
        all
    }

    /// Deploys a plugin, or upgrades the deployed plugin of that name.
    pub fn deploy(&self, request: DeployRequest) -> Result<ChangeStatus, DeployError> {
        check_name(&request.name)?;
        if request.wasm.len() > self.max_bytes {
            return Err(DeployError::TooLarge { size: request.wasm.len(), limit: self.max_bytes });
        }
        // Loading compiles the component: done outside the lock.
        let plugin = self.runtime.load(&request.name, &request.wasm).map_err(DeployError::Plugin)?;
        let params = plugin::params(request.params.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        let probe = plugin.open(&params).map_err(|e| match e {
            plugin::Error::Rejected { .. } => DeployError::BadParams(e.to_string()),
            other => DeployError::Plugin(other),
        })?;
        // One output: the series takes the plugin's name; several: NAME_OUTPUT.
        let outputs = probe.outputs();
        let mut rename = BTreeMap::new();
        for out in outputs {
            let default =
                if outputs.len() == 1 { request.name.clone() } else { format!("{}_{}", request.name, out.name) };
            rename.insert(out.name.clone(), request.rename.get(&out.name).cloned().unwrap_or(default));
        }
        if let Some(unknown) = request.rename.keys().find(|k| !outputs.iter().any(|o| &o.name == *k)) {
            return Err(DeployError::BadInput(format!(
                "`{}` writes no series `{unknown}` to rename (it writes: {})",
                plugin.label(),
                outputs.iter().map(|o| o.name.as_str()).collect::<Vec<_>>().join(", ")
            )));
        }
        drop(probe);

        let mut state = self.lock();
        if state.closed {
            return Err(DeployError::Closed);
        }
        let existing = state.dag.iter().position(|e| e.spec.name == request.name);
        if let Some(i) = existing
            && state.dag[i].deployed.is_none()
        {
            return Err(DeployError::NameClash(format!(
                "`{}` is a plugin of the config file; deploy under another name (the config's plugins change with the config)",
                request.name
            )));
        }
        let stats = existing.map(|i| state.dag[i].spec.stats.clone()).unwrap_or_default();
        let spec = StageSpec {
            name: request.name.clone(),
            plugin: plugin.clone(),
            params,
            input: (!request.inputs.is_empty()).then(|| request.inputs.clone()),
            rename,
            stats,
        };
        let mut candidate: Vec<StageSpec> = state.dag.iter().map(|e| e.spec.clone()).collect();
        match existing {
            Some(i) => candidate[i] = spec.clone(),
            None => candidate.push(spec.clone()),
        }
        let chain = self.wire(&candidate)?;
        // Every output must keep its intended name: no clash.
        let intended: Vec<&String> = spec.rename.values().collect();
        let got = chain.stage_outputs(&spec.name);
        if let Some((name, _)) = got.iter().find(|(n, _)| !intended.contains(&n)) {
            let wanted = name.split_once('.').map_or(name.as_str(), |(_, w)| w);
            return Err(DeployError::NameClash(format!(
                "`{}` would write series `{wanted}`, which another series is already called; deploy under another name or rename the output (--rename OUTPUT=SERIES)",
                request.name
            )));
        }
        if spec.rename.values().any(|n| *n == self.input_name) {
            return Err(DeployError::NameClash(format!(
                "`{}` would write series `{}`, the input's name; rename the output",
                request.name, self.input_name
            )));
        }

        let previous = existing.map(|i| state.dag[i].spec.plugin.label());
        let persisted = Persisted {
            name: request.name.clone(),
            wasm: format!("plugins/{}-{:016x}.wasm", request.name, content_hash(&request.wasm)),
            inputs: request.inputs.clone(),
            params: request.params.clone(),
            rename: spec.rename.clone(),
        };
        let new_entry = entry(&chain, spec.clone(), Some(persisted.clone()));
        let mut dag = state.dag.clone();
        match existing {
            Some(i) => dag[i] = new_entry,
            None => dag.push(new_entry),
        }
        self.persist(&dag, Some((&persisted, &request.wasm)))?;
        state.dag = dag;
        let change = if existing.is_some() { Change::Upgrade(spec.clone()) } else { Change::Add(spec.clone()) };
        let outputs = chain.stage_outputs(&spec.name).into_iter().map(|(n, _)| n).collect();
        let status = self.enqueue(&mut state, change, &request.name, Some(plugin.label()), previous, outputs);
        tracing::info!(
            plugin = %plugin.label(), name = %request.name,
            "accepted {} of `{}`; it takes effect at the next event time the dataflow picks", status.change, request.name
        );
        Ok(status)
    }

    /// Removes the deployed plugin `name`.
    pub fn remove(&self, name: &str) -> Result<ChangeStatus, DeployError> {
        let mut state = self.lock();
        if state.closed {
            return Err(DeployError::Closed);
        }
        let Some(i) = state.dag.iter().position(|e| e.spec.name == name) else {
            let deployed: Vec<&str> =
                state.dag.iter().filter(|e| e.deployed.is_some()).map(|e| e.spec.name.as_str()).collect();
            return Err(DeployError::NotFound {
                name: name.into(),
                deployed: if deployed.is_empty() { "none".into() } else { deployed.join(", ") },
            });
        };
        if state.dag[i].deployed.is_none() {
            return Err(DeployError::InUse(format!(
                "`{name}` is a plugin of the config file; take it out of the config instead"
            )));
        }
        let outputs = &state.dag[i].outputs;
        if let Some(reader) =
            state.dag.iter().find(|e| e.spec.name != name && e.inputs.iter().any(|s| outputs.contains(s)))
        {
            return Err(DeployError::InUse(format!(
                "`{}` reads a series `{name}` writes; remove `{}` first",
                reader.spec.name, reader.spec.name
            )));
        }
        let mut dag = state.dag.clone();
        let removed = dag.remove(i);
        self.persist(&dag, None)?;
        state.dag = dag;
        state.retired.push((name.to_string(), removed.spec.stats.clone()));
        let status = self.enqueue(
            &mut state,
            Change::Remove(name.into()),
            name,
            None,
            Some(removed.spec.plugin.label()),
            Vec::new(),
        );
        tracing::info!(name, "accepted removal of `{name}`");
        Ok(status)
    }

    /// True while a change is accepted and not yet applied everywhere.
    pub fn has_pending(&self) -> bool {
        let state = self.lock();
        !state.closed && (!state.queue.is_empty() || state.changes.values().any(|p| !p.status.complete()))
    }

    /// Where change `id` stands now.
    pub fn status(&self, id: u64) -> Option<ChangeStatus> {
        self.lock().changes.get(&id).map(|p| p.status.clone())
    }

    /// Waits up to `timeout` for change `id` to take effect on every
    /// worker, and says where it stands.
    pub fn wait(&self, id: u64, timeout: Duration) -> Option<ChangeStatus> {
        let deadline = Instant::now() + timeout;
        let mut state = self.lock();
        loop {
            let status = state.changes.get(&id)?.status.clone();
            let now = Instant::now();
            if status.complete() || state.closed || now >= deadline {
                return Some(status);
            }
            state = self.changed.wait_timeout(state, deadline - now).unwrap_or_else(|e| e.into_inner()).0;
        }
    }

    /// The plugins of the DAG with their counts.
    pub fn list(&self) -> Vec<PluginInfo> {
        let state = self.lock();
        state
            .dag
            .iter()
            .map(|e| {
                let d = e.spec.plugin.descriptor();
                let pending = state
                    .changes
                    .values()
                    .filter(|p| p.status.name == e.spec.name && !p.status.complete())
                    .map(|p| match p.status.at {
                        Some(at) => format!("{} at {}", p.status.change, crate::host::format_ms(at)),
                        None => format!("{} queued", p.status.change),
                    })
                    .next_back();
                let s = &e.spec.stats;
                PluginInfo {
                    name: e.spec.name.clone(),
                    plugin: d.name.clone(),
                    version: d.version.clone(),
                    origin: if e.deployed.is_some() { "deployed" } else { "config" }.into(),
                    inputs: e.inputs.clone(),
                    outputs: e.outputs.clone(),
                    params: e.spec.params.iter().map(|p| (p.name.clone(), p.value.clone())).collect(),
                    instances: self.workers,
                    samples_in: s.samples_in.load(Ordering::Relaxed),
                    samples_out: s.samples_out.load(Ordering::Relaxed),
                    errors: s.failures.load(Ordering::Relaxed),
                    status: pending.unwrap_or_else(|| "running".into()),
                }
            })
            .collect()
    }

    /// Sets what wakes the dataflow's control source.
    pub fn set_wake(&self, wake: Wake) {
        *self.wake.lock().unwrap_or_else(|e| e.into_inner()) = Some(wake);
    }

    /// Takes the queued changes' ids, for the control source to send.
    pub fn take_queued(&self) -> Vec<u64> {
        self.lock().queue.drain(..).collect()
    }

    /// The control source sent change `id` at event time `at`.
    pub fn sent(&self, id: u64, at: i64) {
        if let Some(p) = self.lock().changes.get_mut(&id) {
            p.status.at = Some(at);
        }
        self.changed.notify_all();
    }

    /// The change with id `id`, for a worker to apply.
    pub fn change(&self, id: u64) -> Option<Change> {
        self.lock().changes.get(&id).map(|p| p.change.clone())
    }

    /// Worker `worker` applied change `id`.
    pub fn applied(&self, id: u64, worker: usize, outcome: Applied) {
        let mut state = self.lock();
        if let Some(p) = state.changes.get_mut(&id) {
            let s = &mut p.status;
            if s.outcomes[worker].is_none() {
                s.applied += 1;
            }
            s.outcomes[worker] = Some(outcome);
            if s.complete() && matches!(p.change, Change::Upgrade(_)) {
                let fresh: Vec<&String> = s
                    .outcomes
                    .iter()
                    .flatten()
                    .filter_map(|o| if let Applied::Fresh(w) = o { Some(w) } else { None })
                    .collect();
                s.state = Some(match fresh.first() {
                    None => "carried over from the old version's snapshot".into(),
                    Some(why) => format!("started empty on {} of {} workers: {why}", fresh.len(), s.workers),
                });
            }
        }
        drop(state);
        self.changed.notify_all();
    }

    /// The dataflow ended: changes not applied by now never will be.
    pub fn close(&self) {
        self.lock().closed = true;
        self.changed.notify_all();
    }

    fn enqueue(
        &self,
        state: &mut State,
        change: Change,
        name: &str,
        plugin: Option<String>,
        previous: Option<String>,
        outputs: Vec<String>,
    ) -> ChangeStatus {
        let id = state.next_id;
        state.next_id += 1;
        let status = ChangeStatus {
            id,
            change: change.verb().into(),
            name: name.into(),
            plugin,
            previous,
            at: None,
            applied: 0,
            workers: self.workers,
            outcomes: vec![None; self.workers],
            outputs,
            state: None,
        };
        state.changes.insert(id, Pending { change, status: status.clone() });
        state.queue.push_back(id);
        if let Some(wake) = self.wake.lock().unwrap_or_else(|e| e.into_inner()).as_ref() {
            wake();
        }
        status
    }

    /// Wires `specs` as the dataflow would, reporting what does not fit.
    fn wire(&self, specs: &[StageSpec]) -> Result<Chain, DeployError> {
        Chain::open_dag(specs, &self.input_name, &self.input_fields, 0, true).map_err(|e| match e {
            crate::exec::ExecError::Plugin(p @ plugin::Error::Rejected { .. }) => DeployError::BadParams(p.to_string()),
            crate::exec::ExecError::Plugin(p) => DeployError::Plugin(p),
            e @ crate::exec::ExecError::NameTaken { .. } => DeployError::NameClash(e.to_string()),
            other => DeployError::BadInput(other.to_string()),
        })
    }

    /// Writes the deployed plugins of `dag` (and a new component) to the
    /// state directory: the component first, then `deployed.json` through
    /// a temporary file, then components nothing refers to are removed.
    fn persist(&self, dag: &[Entry], new: Option<(&Persisted, &[u8])>) -> Result<(), DeployError> {
        let Some(dir) = &self.state_dir else { return Ok(()) };
        let failed = |source: std::io::Error| DeployError::Persist { dir: dir.clone(), source };
        std::fs::create_dir_all(dir.join("plugins")).map_err(failed)?;
        if let Some((p, bytes)) = new {
            write_atomically(&dir.join(&p.wasm), bytes).map_err(failed)?;
        }
        let deployed: Vec<&Persisted> = dag.iter().filter_map(|e| e.deployed.as_ref()).collect();
        let json = serde_json::to_vec_pretty(&deployed).map_err(|e| failed(std::io::Error::other(e)))?;
        write_atomically(&dir.join(DEPLOYED_FILE), &json).map_err(failed)?;
        if let Ok(files) = std::fs::read_dir(dir.join("plugins")) {
            for file in files.flatten() {
                let rel = format!("plugins/{}", file.file_name().to_string_lossy());
                if !deployed.iter().any(|p| p.wasm == rel) {
                    let _ = std::fs::remove_file(file.path());
                }
            }
        }
        Ok(())
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The file in the state directory that lists the deployed plugins.
pub const DEPLOYED_FILE: &str = "deployed.json";

/// Loads the plugins deployed to an earlier run from `dir`, in deploy
/// order.
pub fn load_deployed(dir: &Path, runtime: &PluginRuntime) -> anyhow::Result<Vec<(StageSpec, Persisted)>> {
    use anyhow::Context;
    let path = dir.join(DEPLOYED_FILE);
    let text = match std::fs::read(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    let list: Vec<Persisted> = serde_json::from_slice(&text)
        .with_context(|| format!("{} is not a list of deployed plugins; fix or delete it", path.display()))?;
    list.into_iter()
        .map(|p| {
            let wasm = dir.join(&p.wasm);
            let plugin: LoadedPlugin = runtime.load_file(&wasm).map_err(|e| {
                anyhow::anyhow!(
                    "deployed plugin `{}` cannot be loaded again: {e}; take it out of {} (or restore the file) and start again",
                    p.name,
                    path.display()
                )
            })?;
            let params = plugin::params(p.params.iter().map(|(k, v)| (k.as_str(), v.as_str())));
            let spec = StageSpec {
                name: p.name.clone(),
                input: (!p.inputs.is_empty()).then(|| p.inputs.clone()),
                rename: p.rename.clone(),
                ..StageSpec::new(plugin, params)
            };
            Ok((spec, p))
        })
        .collect()
}

fn entry(chain: &Chain, spec: StageSpec, deployed: Option<Persisted>) -> Entry {
    Entry {
        inputs: chain.stage_inputs(&spec.name),
        outputs: chain.stage_outputs(&spec.name).into_iter().map(|(n, _)| n).collect(),
        spec,
        deployed,
    }
}

fn check_name(name: &str) -> Result<(), DeployError> {
    let ok = (1..=64).contains(&name.len())
        && name.starts_with(|c: char| c.is_ascii_alphabetic())
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    if ok { Ok(()) } else { Err(DeployError::BadName(name.into())) }
}

/// A stable hash of a component's bytes, for its file name.
fn content_hash(bytes: &[u8]) -> u64 {
    let mut h = rustc_hash::FxHasher::default();
    h.write(bytes);
    h.finish()
}

fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)
}

/// How an upgrade's outcome reads in [`Applied`].
impl From<Carried> for Applied {
    fn from(c: Carried) -> Self {
        match c {
            Carried::State => Applied::Done,
            Carried::Fresh(why) => Applied::Fresh(why),
        }
    }
}
