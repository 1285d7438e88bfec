//! Taking checkpoints while the dataflow runs, and starting from one.
//!
//! A checkpoint is a consistent cut: the plugins' state is the effect of
//! exactly the records before each partition's recorded offset. Rows are
//! fed to the plugins as they arrive, so the cut is made by pausing, not by
//! event time:
//!
//! 1. Every `interval` the coordinator (a thread of its own) asks for
//!    checkpoint `id` and wakes the workers.
//! 2. Each Kafka source, at its next step, stops reading, records each of
//!    its partitions' next offset and newest event time, and waits.
//! 3. Each worker's plugin operator, once every source has paused and no
//!    row is in flight anywhere (none held back for a deploy, no deploy
//!    pending), snapshots its chain, has its sinks write what they hold
//!    (the archive its open buckets; InfluxDB its batch), and hands that
//!    over.
//! 4. With every part in, the sources go on at once; the coordinator makes
//!    InfluxDB write everything handed to it, then writes the checkpoint
//!    (one file, atomically) and hands the offsets to the group committer
//!    (its own client and thread, never waited for) so that Kafka tooling
//!    shows the lag. A run restarts from the checkpoint, never from the
//!    group.
//!
//! A checkpoint that cannot complete in time (a deploy waiting for the
//! stream, say) is abandoned: the sources go on and the next one is tried
//! an interval later, under a new id.
//!
//! **Stopping.** On SIGTERM (or SIGINT) the sources stop reading at once
//! but keep their capabilities; the coordinator takes a last checkpoint of
//! that position (InfluxDB given `stop_flush` to write what it holds), then
//! closes the cuts, and only then do the sources end. The next run resumes
//! exactly there: nothing is read twice, and open windows, which a stop
//! must not close, are in the plugins' state. When the last checkpoint
//! cannot be taken (a plugin change waiting for the stream, InfluxDB
//! down, a failed worker) the stop says so, and the next run resumes from
//! the one before, processing the records since again: slower, not wrong.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::checkpoint::{self, Checkpoint, CheckpointStore, KeyStateCheckpoint, PartitionCheckpoint, StageCheckpoint};
use crate::deploy::ControlPlane;
use crate::plugin::{KeyState, Snapshot};
use crate::sink::SinkCut;
use crate::source::kafka::{GroupCommitter, ReaderOptions};

/// Writes what a sink's own thread holds, waiting at most the given time;
/// true when all is written.
pub type SinkFlush = Arc<dyn Fn(Duration) -> Result<bool, String> + Send + Sync>;

/// How a Kafka run checkpoints.
#[derive(Clone)]
pub struct CheckpointOptions {
    pub store: Arc<dyn CheckpointStore>,
    /// Time between checkpoints.
    pub interval: Duration,
    /// Complete checkpoints kept.
    pub retain: usize,
    /// Start from this checkpoint.
    pub restore: Option<Arc<Checkpoint>>,
    /// Writes everything the sinks' own threads hold (InfluxDB), before a
    /// checkpoint is declared complete: waits at most the given time, and
    /// says whether all is written.
    pub flush: Option<SinkFlush>,
    /// How long the last checkpoint, on a stop, waits for `flush`.
    pub stop_flush: Duration,
}

impl std::fmt::Debug for CheckpointOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CheckpointOptions")
            .field("store", &self.store.describe())
            .field("interval", &self.interval)
            .field("retain", &self.retain)
            .field("restore", &self.restore.as_ref().map(|c| c.id))
            .field("stop_flush", &self.stop_flush)
            .finish()
    }
}

/// Counts for the metrics and the benchmark.
#[derive(Debug, Default)]
pub struct CheckpointCounters {
    pub taken: AtomicU64,
    pub abandoned: AtomicU64,
    /// The id of the checkpoint taken as the run stopped (0: none).
    pub at_stop: AtomicU64,
    /// The id of the last complete one (0: none yet in this run).
    pub last_id: AtomicU64,
    /// The last complete one: wall-clock time (ms), bytes, and how long the
    /// workers were paused and the whole took (ns).
    pub last_at_ms: AtomicU64,
    pub last_bytes: AtomicU64,
    pub last_pause_ns: AtomicU64,
    pub last_total_ns: AtomicU64,
}

impl CheckpointCounters {
    /// The last complete checkpoint of this run.
    pub fn last_id(&self) -> Option<u64> {
        Some(self.last_id.load(Ordering::Relaxed)).filter(|&id| id > 0)
    }

    /// The checkpoint taken as the run stopped.
    pub fn at_stop(&self) -> Option<u64> {
        Some(self.at_stop.load(Ordering::Relaxed)).filter(|&id| id > 0)
    }
}

/// One worker's part of a checkpoint.
pub(super) struct WorkerPart {
    pub watermark: i64,
    pub stages: Vec<(String, String, Snapshot)>,
    pub sinks: SinkCut,
}

#[derive(Default)]
struct CutState {
    id: u64,
    sources: Vec<Option<BTreeMap<i32, PartitionCheckpoint>>>,
    workers: Vec<Option<WorkerPart>>,
    /// Sources that have ended (their input is drained), with their last
    /// positions: paused for good, in every cut from now on.
    ended: Vec<Option<BTreeMap<i32, PartitionCheckpoint>>>,
}

impl CutState {
    /// Every source that reads has paused for this cut, or ended.
    fn sources_in(&self, readers: &[bool]) -> bool {
        (0..readers.len()).all(|w| !readers[w] || self.sources[w].is_some() || self.ended[w].is_some())
    }
}

/// The cut in progress, shared by the workers and the coordinator.
pub(super) struct Cuts {
    requested: AtomicU64,
    resumed: AtomicU64,
    /// No more checkpoints: stopping sources may end.
    closed: AtomicBool,
    /// Workers whose source reads partitions (the others have none to
    /// pause).
    readers: Vec<bool>,
    state: Mutex<CutState>,
    changed: Condvar,
    wakers: Mutex<Vec<Box<dyn Fn() + Send + Sync>>>,
}

impl Cuts {
    pub fn new(readers: Vec<bool>) -> Self {
        let workers = readers.len();
        Cuts {
            requested: AtomicU64::new(0),
            resumed: AtomicU64::new(0),
            closed: AtomicBool::new(false),
            readers,
            state: Mutex::new(CutState {
                id: 0,
                sources: vec![None; workers],
                workers: std::iter::repeat_with(|| None).take(workers).collect(),
                ended: vec![None; workers],
            }),
            changed: Condvar::new(),
            wakers: Mutex::new(Vec::new()),
        }
    }

    fn lock(&self) -> MutexGuard<'_, CutState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Registers something to wake when a cut starts or ends.
    pub fn on_wake(&self, wake: Box<dyn Fn() + Send + Sync>) {
        self.wakers.lock().unwrap_or_else(|e| e.into_inner()).push(wake);
    }

    fn wake_all(&self) {
        for wake in self.wakers.lock().unwrap_or_else(|e| e.into_inner()).iter() {
            wake();
        }
    }

    /// The cut a source should pause for, if it has not yet: `Some(id)`.
    pub fn pause_for(&self, paused: u64) -> Option<u64> {
        let id = self.requested.load(Ordering::Acquire);
        (id > paused && id > self.resumed.load(Ordering::Acquire)).then_some(id)
    }

    /// True once the run takes no more checkpoints (the one on a stop is
    /// taken, or given up): a stopping source may end.
    pub fn closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    fn close(&self) {
        self.closed.store(true, Ordering::Release);
        self.wake_all();
    }

    /// True while the source that paused for `paused` must stay paused.
    pub fn holding(&self, paused: u64) -> bool {
        paused > self.resumed.load(Ordering::Acquire)
    }

    /// Source of worker `worker` paused for `id` at these positions.
    pub fn source_paused(&self, worker: usize, id: u64, partitions: BTreeMap<i32, PartitionCheckpoint>) {
        let mut state = self.lock();
        if state.id == id {
            state.sources[worker] = Some(partitions);
        }
        drop(state);
        self.changed.notify_all();
        // The plugin operators wait for the last source.
        self.wake_all();
    }

    /// Source of worker `worker` has ended at these positions.
    pub fn source_ended(&self, worker: usize, partitions: BTreeMap<i32, PartitionCheckpoint>) {
        self.lock().ended[worker] = Some(partitions);
        self.changed.notify_all();
        self.wake_all();
    }

    /// The cut worker `worker`'s plugin operator should take its part of,
    /// once every source has paused.
    pub fn part_due(&self, done: u64) -> Option<u64> {
        let id = self.requested.load(Ordering::Acquire);
        if id <= done || id <= self.resumed.load(Ordering::Acquire) {
            return None;
        }
        let state = self.lock();
        (state.id == id && state.sources_in(&self.readers)).then_some(id)
    }

    /// Worker `worker`'s part of cut `id`.
    pub fn worker_part(&self, worker: usize, id: u64, part: WorkerPart) {
        let mut state = self.lock();
        if state.id == id {
            state.workers[worker] = Some(part);
        }
        drop(state);
        self.changed.notify_all();
    }

    fn start(&self, id: u64) {
        let workers = self.readers.len();
        let mut state = self.lock();
        state.id = id;
        state.sources = vec![None; workers];
        state.workers = std::iter::repeat_with(|| None).take(workers).collect();
        drop(state);
        self.requested.store(id, Ordering::Release);
        self.wake_all();
    }

    /// Which parts of the cut in progress are missing, for the log.
    fn missing(&self) -> String {
        let state = self.lock();
        let sources: Vec<usize> = (0..self.readers.len())
            .filter(|&w| {
                self.readers[w] && state.sources.get(w).is_none_or(Option::is_none) && state.ended[w].is_none()
            })
            .collect();
        let workers: Vec<usize> =
            (0..self.readers.len()).filter(|&w| state.workers.get(w).is_none_or(Option::is_none)).collect();
        format!("sources of workers {sources:?} and plugin operators of workers {workers:?}")
    }

    /// Waits until every part of cut `id` is in, or `deadline`, or `stop`.
    fn gather(&self, id: u64, deadline: Instant, stop: &dyn Fn() -> bool) -> Option<CutState> {
        let mut state = self.lock();
        loop {
            let complete = state.id == id
                && state.workers.len() == self.readers.len()
                && state.workers.iter().all(Option::is_some)
                && state.sources_in(&self.readers);
            if complete {
                let workers = self.readers.len();
                return Some(CutState {
                    id,
                    sources: std::mem::replace(&mut state.sources, vec![None; workers]),
                    workers: std::mem::replace(
                        &mut state.workers,
                        std::iter::repeat_with(|| None).take(workers).collect(),
                    ),
                    ended: state.ended.clone(),
                });
            }
            if Instant::now() >= deadline || stop() {
                return None;
            }
            drop(state);
            // Nudge the workers: a plugin operator only runs when woken.
            self.wake_all();
            state = self.lock();
            state = self.changed.wait_timeout(state, Duration::from_millis(5)).unwrap_or_else(|e| e.into_inner()).0;
        }
    }

    /// Lets the sources go on after cut `id`.
    fn resume(&self, id: u64) {
        self.resumed.store(id, Ordering::Release);
        self.wake_all();
    }
}

/// What the coordinator needs of the run.
pub(super) struct Coordinator {
    pub cuts: Arc<Cuts>,
    pub options: CheckpointOptions,
    pub reader: ReaderOptions,
    pub workers: usize,
    pub control: Option<Arc<ControlPlane>>,
    pub counters: Arc<super::RunCounters>,
    /// The run is over: no more checkpoints.
    pub done: Arc<AtomicBool>,
    /// The host is stopping (a signal, or a failure): one last checkpoint.
    pub interrupted: Arc<AtomicBool>,
    /// A worker failed: its state is not to be trusted for a checkpoint.
    pub failed: Box<dyn Fn() -> bool + Send>,
    /// The dead-letter producer: a checkpoint waits for the broker to take
    /// the dead letters of the records before its cut.
    pub dead_letters: Option<Arc<crate::source::kafka::DeadLetters>>,
}

struct CloseOnDrop(Arc<Cuts>);

impl Drop for CloseOnDrop {
    fn drop(&mut self) {
        self.0.close();
    }
}

/// The least time the checkpoint on a stop gives the broker to take the
/// dead letters before its cut (with InfluxDB's `stop_flush`, if longer).
const DEAD_LETTERS_AT_STOP: Duration = Duration::from_secs(10);

/// How long the workers get to reach a cut before it is abandoned.
const GATHER_WITHIN: Duration = Duration::from_secs(30);

/// How long the end of a run waits for the consumer group's last commits.
const COMMIT_WAIT: Duration = Duration::from_secs(10);

impl Coordinator {
    /// Takes a checkpoint every interval until the run ends, and one more
    /// when it stops.
    pub fn run(self) {
        // Every attempt gets a new id, so that sources and workers that
        // took part in an abandoned one take part in the next.
        let mut next_id = self.options.restore.as_ref().map_or(0, |c| c.id) + 1;
        let stopping = || self.interrupted.load(Ordering::Relaxed);
        let ended = || self.done.load(Ordering::Relaxed);
        // However this ends (a panic included), stopping sources must not
        // wait for a checkpoint that will never come.
        let _close = CloseOnDrop(self.cuts.clone());
        // One client for the run's commits (for Kafka tooling only).
        let committer = match GroupCommitter::new(&self.reader) {
            Ok(c) => Some(c),
            Err(e) => {
                tracing::warn!("checkpoints will not be committed to the consumer group: {e}");
                None
            }
        };
        let committer = committer.as_ref();
        let mut due = Instant::now() + self.options.interval;
        while !ended() && !stopping() {
            if Instant::now() < due {
                std::thread::sleep(Duration::from_millis(20).min(due - Instant::now()));
                continue;
            }
            due = Instant::now() + self.options.interval;
            if self.control.as_ref().is_some_and(|c| c.has_pending()) {
                tracing::debug!("checkpoint postponed: a plugin change is waiting to take effect");
                continue;
            }
            self.take(next_id, false, committer);
            next_id += 1;
        }
        if stopping() && !ended() {
            self.last(next_id, committer);
        }
        // The last commits are for the tools: worth a short wait, not more.
        if let Some(c) = committer
            && !c.wait(COMMIT_WAIT)
        {
            tracing::warn!(
                "the consumer group's offsets were not confirmed within {} s; Kafka's tools may show an older position",
                COMMIT_WAIT.as_secs()
            );
        }
    }

    /// The checkpoint of the position where the sources stopped.
    fn last(&self, id: u64, committer: Option<&GroupCommitter>) {
        let previous = self.counters.checkpoints.last_id().or(self.options.restore.as_ref().map(|c| c.id));
        let resume = match previous {
            Some(p) => format!("the next run resumes from checkpoint {p} and processes the records since again"),
            None => "the next run starts as the config says".to_string(),
        };
        if (self.failed)() {
            tracing::warn!("no checkpoint on this stop: a worker failed; {resume}");
            return;
        }
        if self.control.as_ref().is_some_and(|c| c.has_pending()) {
            tracing::warn!("no checkpoint on this stop: a plugin change is waiting for the stream; {resume}");
            return;
        }
        tracing::info!(id, "stopping: taking a last checkpoint of where the sources stopped");
        if self.take(id, true, committer) {
            self.counters.checkpoints.at_stop.store(id, Ordering::Relaxed);
            tracing::info!(id, "checkpoint {id} taken on stopping: the next run resumes exactly there");
        } else {
            tracing::warn!(id, "the checkpoint on stopping was not taken; {resume}");
        }
    }

    /// Takes checkpoint `id`; `last` on a stop (the sources have stopped
    /// for good, and InfluxDB gets `stop_flush` to write what it holds).
    fn take(&self, id: u64, last: bool, committer: Option<&GroupCommitter>) -> bool {
        let started = Instant::now();
        // A regular cut gives way to a stop (which takes its own); the last
        // one gives way only to a failure or the end of the run.
        let give_up = || {
            self.done.load(Ordering::Relaxed) || (self.interrupted.load(Ordering::Relaxed) && !last) || (self.failed)()
        };
        self.cuts.start(id);
        let gathered = self.cuts.gather(id, started + GATHER_WITHIN, &give_up);
        let missing = if gathered.is_none() { self.cuts.missing() } else { String::new() };
        self.cuts.resume(id);
        let paused = started.elapsed();
        // Every record before the cut has been read, so its dead letter,
        // if it has one, is queued by now.
        let dead_letters_queued = self.dead_letters.as_ref().map(|dl| dl.queued());
        let Some(cut) = gathered else {
            if !give_up() {
                self.counters.checkpoints.abandoned.fetch_add(1, Ordering::Relaxed);
                let in_flight = self.counters.in_flight.load(Ordering::Relaxed);
                tracing::warn!(
                    id,
                    "checkpoint abandoned: the workers did not all reach the cut within {} s (missing: {missing}; rows in flight: {in_flight})",
                    GATHER_WITHIN.as_secs()
                );
            }
            return false;
        };
        let flushing = Instant::now();
        if let Some(flush) = &self.options.flush {
            // InfluxDB may be down for a while: a regular checkpoint waits
            // for it (the sources go on meanwhile, up to the buffer's
            // back-pressure), until the host stops.
            let deadline = last.then(|| Instant::now() + self.options.stop_flush);
            loop {
                match flush(Duration::from_millis(200)) {
                    Ok(true) => break,
                    Ok(false) if deadline.is_some_and(|d| Instant::now() >= d) => {
                        tracing::error!(
                            id,
                            "checkpoint not taken: InfluxDB did not take the points before the cut within {} ms",
                            self.options.stop_flush.as_millis()
                        );
                        return false;
                    }
                    Ok(false) if give_up() => {
                        tracing::warn!(id, "checkpoint not taken: stopping while InfluxDB is still behind the cut");
                        return false;
                    }
                    Ok(false) => {}
                    Err(e) => {
                        tracing::error!(id, "checkpoint not taken: the sinks could not write what they held: {e}");
                        return false;
                    }
                }
            }
        }
        if let (Some(dl), Some(queued)) = (&self.dead_letters, dead_letters_queued) {
            // Once the checkpoint says a record is done, a restart does not
            // read it again: its dead letter must be on the broker first.
            // On a stop, InfluxDB's and this wait share one deadline.
            let allowed = self.options.stop_flush.max(DEAD_LETTERS_AT_STOP);
            let deadline = last.then(|| flushing + allowed);
            while !dl.settled(queued, Duration::from_millis(200)) {
                if deadline.is_some_and(|d| Instant::now() >= d) {
                    tracing::error!(
                        id,
                        "checkpoint not taken: {} dead letters were not on the broker within {} ms of stopping",
                        dl.unsent(),
                        allowed.as_millis()
                    );
                    return false;
                }
                if give_up() {
                    tracing::warn!(id, "checkpoint not taken: stopping while dead letters before the cut are unsent");
                    return false;
                }
            }
        }
        let checkpoint = assemble(id, &self.reader.topic, self.workers, cut);
        let positions: BTreeMap<i32, i64> = checkpoint
            .partitions
            .iter()
            .filter(|(_, p)| p.next_offset >= 0)
            .map(|(&p, c)| (p, c.next_offset))
            .collect();
        let keys: usize = checkpoint.stages.iter().map(|s| s.keys.len()).sum();
        match checkpoint::save(self.options.store.as_ref(), &checkpoint, self.options.retain) {
            Ok(bytes) => {
                let c = &self.counters.checkpoints;
                c.taken.fetch_add(1, Ordering::Relaxed);
                c.last_id.store(id, Ordering::Relaxed);
                c.last_at_ms.store(checkpoint.taken_at_ms as u64, Ordering::Relaxed);
                c.last_bytes.store(bytes as u64, Ordering::Relaxed);
                c.last_pause_ns.store(paused.as_nanos() as u64, Ordering::Relaxed);
                c.last_total_ns.store(started.elapsed().as_nanos() as u64, Ordering::Relaxed);
                tracing::info!(
                    id,
                    bytes,
                    keys,
                    paused_ms = paused.as_millis() as u64,
                    took_ms = started.elapsed().as_millis() as u64,
                    "checkpoint {id} written to {}",
                    self.options.store.describe()
                );
            }
            Err(e) => {
                tracing::error!(id, "checkpoint not written: {e}");
                return false;
            }
        }
        // For Kafka tooling only: a restart reads the checkpoint. Sent, not
        // waited for: a busy broker must not hold the next checkpoint back.
        if let Some(c) = committer {
            c.commit(&positions);
        }
        true
    }
}

fn assemble(id: u64, topic: &str, workers: usize, cut: CutState) -> Checkpoint {
    let mut partitions = BTreeMap::new();
    for (paused, ended) in cut.sources.into_iter().zip(cut.ended) {
        if let Some(part) = paused.or(ended) {
            partitions.extend(part);
        }
    }
    let mut stages: Vec<StageCheckpoint> = Vec::new();
    let mut watermarks = Vec::with_capacity(workers);
    let mut sinks = Vec::with_capacity(workers);
    for (worker, part) in cut.workers.into_iter().enumerate() {
        let part = part.expect("gathered parts are complete");
        watermarks.push(part.watermark);
        sinks.push(part.sinks);
        for (name, plugin, snapshot) in part.stages {
            let stage = match stages.iter().position(|s| s.name == name) {
                Some(i) => &mut stages[i],
                None => {
                    stages.push(StageCheckpoint {
                        name,
                        plugin,
                        format_version: snapshot.format_version,
                        shared: vec![Vec::new(); workers],
                        keys: Vec::new(),
                    });
                    stages.last_mut().expect("just pushed")
                }
            };
            stage.shared[worker] = snapshot.shared;
            stage.keys.extend(snapshot.keys.into_iter().map(|k| KeyStateCheckpoint { key: k.key, state: k.state }));
        }
    }
    let taken_at_ms =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64);
    Checkpoint { id, taken_at_ms, topic: topic.into(), workers, partitions, watermarks, stages, sinks }
}

/// Worker `index`'s plugin states from `checkpoint`: the keys routed to it.
pub(super) fn states_for(checkpoint: &Checkpoint, index: usize, workers: usize) -> BTreeMap<String, Snapshot> {
    checkpoint
        .stages
        .iter()
        .map(|stage| {
            let keys = stage
                .keys
                .iter()
                .filter(|k| (super::key_hash(&k.key) % workers as u64) as usize == index)
                .map(|k| KeyState { key: k.key.clone(), state: k.state.clone() })
                .collect();
            let shared = stage.shared.get(index).cloned().unwrap_or_default();
            (stage.name.clone(), Snapshot { format_version: stage.format_version, shared, keys })
        })
        .collect()
}
