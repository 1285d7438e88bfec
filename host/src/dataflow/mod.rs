//! The timely dataflow: rows from a source, exchanged by key among the
//! workers, through each worker's plugin DAG, to its sinks.
//!
//! Timely timestamps are event time. A source decides lateness (a row below
//! its watermark on arrival is late, counted and left out), sends each batch
//! at the watermark it had when it read it (so there are as few distinct
//! timely times as batches, not as rows), and then holds its capability at
//! the new watermark. The frontier a plugin chain sees is therefore the
//! sources' watermark: when it passes a time, every row sent at that time
//! has arrived, and the chain's watermark moves to the frontier.
//!
//! Rows are exchanged by a hash of their key, so each key lives on exactly
//! one worker, and its rows arrive there in the order its partition holds
//! them: each worker's chain sees what `exec` would have seen for its keys.
//!
//! Two sources feed the same operators: a file ([`replay`], worker 0 reads
//! it) and a Kafka topic ([`run`], every worker reads the partitions it
//! owns, with a watermark per partition and idle partitions let go).

use std::collections::{BTreeMap, VecDeque};
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::Poll;
use std::time::{Duration, Instant};

use timely::dataflow::Stream;
use timely::dataflow::channels::pact::Exchange;
use timely::dataflow::operators::generic::operator::source;

mod checkpoints;

pub use checkpoints::{CheckpointCounters, CheckpointOptions, SinkFlush};

use crate::decode::Decoder;
use crate::deploy::{Applied, Change, ControlPlane};
use crate::exec::{Chain, ExecError, StageSpec};
use crate::sink::{Fanout, SharedWriter, SinkError};
use crate::source::Row;
use crate::source::file::{FileError, FileSource, ReadAhead};
use crate::source::kafka::{
    self, DeadLetters, KafkaSourceError, PartitionReader, ReaderOptions, SourceCounters, Start,
};

/// What went wrong in a dataflow run.
#[derive(Debug, thiserror::Error)]
pub enum DataflowError {
    /// The input file could not be read.
    #[error(transparent)]
    File(#[from] FileError),
    /// Kafka could not be read.
    #[error(transparent)]
    Kafka(#[from] KafkaSourceError),
    /// A plugin chain failed (or could not be wired).
    #[error(transparent)]
    Chain(#[from] ExecError),
    /// A sink failed.
    #[error(transparent)]
    Sink(#[from] SinkError),
    /// A checkpoint does not fit this run.
    #[error("{0}")]
    Restore(String),
    /// Timely could not start its workers.
    #[error("starting {workers} workers: {reason}")]
    Workers { workers: usize, reason: String },
}

/// What every worker runs, whatever the source.
#[derive(Clone)]
pub struct Pipeline {
    /// The plugin DAG.
    pub stages: Vec<StageSpec>,
    /// The input series' name (`trades`) and fields.
    pub input_name: String,
    pub input_fields: Vec<String>,
    /// Hand the input rows to sinks that keep raw data (the archive).
    pub keep_input: bool,
    /// Write every stage's outputs, not only the last stage's.
    pub report_all: bool,
    /// Hot deploys (`None`: the DAG is fixed for the run).
    pub control: Option<Arc<ControlPlane>>,
    /// How far ahead of the newest event time the control source promises
    /// no change (ms): rows beyond it wait for the promise to move on.
    pub deploy_lead_ms: i64,
}

/// Makes worker `index`'s writers on every sink.
pub type SinkFactory = Arc<dyn Fn(usize) -> Result<Fanout, SinkError> + Send + Sync>;

/// Counts of a run, shared by its workers (and readable while it runs).
#[derive(Debug, Default)]
pub struct RunCounters {
    /// The sources' counts.
    pub source: Arc<SourceCounters>,
    /// Output samples written to the sinks.
    pub samples_out: AtomicU64,
    /// The lowest watermark any worker has reached (`i64::MIN` until all
    /// have one).
    pub watermark: std::sync::atomic::AtomicI64,
    /// Where the workers' time goes.
    pub times: StageTimes,
    /// Rows sent by the sources and not yet through a plugin chain.
    pub in_flight: std::sync::atomic::AtomicI64,
    /// Time the sinks' per-sample writes too (`times.sinks_ns`): two clock
    /// reads per output sample, for `tickfold bench`.
    pub profile: AtomicBool,
    /// Checkpoints taken, abandoned, and the last one's size and time.
    pub checkpoints: CheckpointCounters,
}

/// Rows in flight (read, not yet processed) beyond which the sources stop
/// reading until the chains catch up (by default; `[kafka] max_in_flight`). Timely's channels are unbounded:
/// without this a source runs ahead of a worker held back by its sinks and
/// fills memory with the backlog.
pub const MAX_IN_FLIGHT: i64 = 200_000;

/// Chunks a file's reader thread decodes ahead of the source operator:
/// enough to ride out a slow moment on either side.
const READ_AHEAD: usize = 4;

/// Wall time the workers spent per stage, summed over workers, in ns. The
/// workers block only where `sink_wait_ns` (InfluxDB's full buffer) or a
/// full archive queue (inside `sinks_ns`) holds them, so the rest is their
/// CPU time there, plus any wait for a core.
#[derive(Debug, Default)]
pub struct StageTimes {
    /// Reading partitions (librdkafka's local queues) and decoding.
    pub source_ns: AtomicU64,
    /// The plugin operator: plugins and the sink writes they cause.
    pub process_ns: AtomicU64,
    /// Of which, the sinks' worker-side writes (formatting lines, filling
    /// the archive's columns, handing closed buckets to its encoding
    /// thread), waits included.
    pub sinks_ns: AtomicU64,
    /// Of which, waiting for a full sink buffer to drain (back-pressure).
    pub sink_wait_ns: AtomicU64,
}

/// State every worker of a run shares.
struct Shared {
    counters: Arc<RunCounters>,
    failure: Mutex<Option<DataflowError>>,
    /// Stop reading; do not close open windows (the host is stopping, not
    /// at the end of its input).
    interrupted: Arc<AtomicBool>,
    /// Per worker, the watermark it has reached.
    watermarks: Mutex<Vec<i64>>,
    /// The newest event time any source has sent.
    max_event: AtomicI64,
    /// Sources still holding their capability: the control source ends
    /// with the last of them.
    live_sources: AtomicUsize,
    /// The control source's promise (its capability's time): rows at or
    /// after it are held until it moves on.
    promise: AtomicI64,
    /// Wakes the control source (set by worker 0's when there is one).
    wake_control: Mutex<Option<Box<dyn Fn() + Send + Sync>>>,
    /// Checkpoints in progress (Kafka runs with `[checkpoint]`).
    cuts: Option<Arc<checkpoints::Cuts>>,
    /// The checkpoint the run starts from.
    restore: Option<Arc<crate::checkpoint::Checkpoint>>,
}

impl Shared {
    fn new(counters: Arc<RunCounters>, interrupted: Arc<AtomicBool>, workers: usize) -> Self {
        Shared {
            counters,
            failure: Mutex::new(None),
            interrupted,
            watermarks: Mutex::new(vec![i64::MIN; workers]),
            max_event: AtomicI64::new(i64::MIN),
            live_sources: AtomicUsize::new(workers),
            promise: AtomicI64::new(i64::MAX),
            wake_control: Mutex::new(None),
            cuts: None,
            restore: None,
        }
    }

    /// A source sent rows up to event time `newest`: if that reaches past
    /// the control source's promise, the rows wait for it, so wake it now
    /// rather than at its next tick (a replay races through event time).
    fn sent_up_to(&self, newest: i64) {
        self.max_event.fetch_max(newest, Ordering::Relaxed);
        if newest >= self.promise.load(Ordering::Relaxed)
            && let Some(wake) = self.wake_control.lock().expect("wake lock").as_ref()
        {
            wake();
        }
    }

    /// A source let go of its capability (once per source).
    fn source_done(&self, done: &mut bool) {
        if !std::mem::replace(done, true) {
            self.live_sources.fetch_sub(1, Ordering::Relaxed);
        }
    }

    fn fail(&self, e: impl Into<DataflowError>) {
        self.failure.lock().expect("failure lock").get_or_insert(e.into());
        // One failure stops every worker's source.
        self.interrupted.store(true, Ordering::Relaxed);
    }
}

/// How to run a replay over a file.
#[derive(Clone, Debug)]
pub struct ReplayOptions {
    /// Worker threads.
    pub workers: usize,
    /// How far the source's watermark trails its newest event time, in ms.
    pub watermark_lag_ms: i64,
    /// Rows per chunk read from the file (and per timely time).
    pub batch_rows: usize,
    /// Report every stage's outputs, not only the last stage's.
    pub report_all: bool,
}

/// Counts from a replay.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ReplayStats {
    /// Rows the source read.
    pub rows_in: u64,
    /// Rows the source left out as late.
    pub late: u64,
    /// Output samples written.
    pub samples_out: u64,
}

/// An output shared by every worker.
pub type SharedOutput = Arc<Mutex<Box<dyn crate::exec::OutputWriter + Send>>>;

/// Runs the plugin chain over `input` on `options.workers` threads, writing
/// outputs to `out`. The same chain, parameters and watermark lag give the
/// same samples as `tickfold exec` (per key in the same order; keys
/// interleave differently).
pub fn replay(
    input: &Path,
    stages: &[StageSpec],
    options: &ReplayOptions,
    out: SharedOutput,
) -> Result<ReplayStats, DataflowError> {
    // The chain is wired to the file's fields; read them once up front.
    let fields = FileSource::open(input, 1)?.fields().to_vec();
    let pipeline = Pipeline {
        stages: stages.to_vec(),
        input_name: "input".into(),
        input_fields: fields,
        keep_input: false,
        report_all: options.report_all,
        control: None,
        deploy_lead_ms: 0,
    };
    let sinks: SinkFactory = Arc::new(move |_| {
        let mut fanout = Fanout::default();
        fanout.add(Box::new(SharedWriter(out.clone())), Vec::new());
        Ok(fanout)
    });
    replay_into(input, &pipeline, options, sinks, Arc::default(), Arc::default())
}

/// Runs `pipeline` over the file `input` into the sinks `sinks` makes per
/// worker: the host's dataflow with a file in place of Kafka (backfills,
/// benchmarks). Rows carry partition `-1` and their row number as offset.
pub fn replay_into(
    input: &Path,
    pipeline: &Pipeline,
    options: &ReplayOptions,
    sinks: SinkFactory,
    counters: Arc<RunCounters>,
    interrupted: Arc<AtomicBool>,
) -> Result<ReplayStats, DataflowError> {
    let pipeline = pipeline.clone();
    counters.watermark.store(i64::MIN, Ordering::Relaxed);
    let shared = Arc::new(Shared::new(counters, interrupted, options.workers.max(1)));
    let input: PathBuf = input.to_path_buf();
    let (lag, batch_rows) = (options.watermark_lag_ms, options.batch_rows);
    let workers = options.workers.max(1);
    let s = shared.clone();
    let guards = timely::execute(timely::Config::process(workers), move |worker| {
        let index = worker.index();
        let shared = s.clone();
        let input = input.clone();
        let fanout = (sinks)(index);
        worker.dataflow::<i64, _, _>(|scope| {
            let src_shared = shared.clone();
            let rows = source(scope, &format!("FileSource({})", input.display()), move |capability, info| {
                let activator = scope.activator_for(info.address.clone());
                // Worker 0 reads the file, decoding it on a thread of its own
                // a few chunks ahead; the others have no rows to send and let
                // their capability go at once.
                let mut reader = None;
                if index == 0 {
                    let wake = scope.worker().sync_activator_for(info.address.to_vec());
                    let ready = move || {
                        let _ = wake.activate();
                    };
                    match FileSource::open(&input, batch_rows).and_then(|f| ReadAhead::spawn(f, READ_AHEAD, ready)) {
                        Ok(r) => reader = Some(r),
                        Err(e) => src_shared.fail(e),
                    }
                }
                // Held at the source's watermark; released at the end of
                // the file, which lets every window close.
                let mut capability = reader.is_some().then_some(capability);
                let mut max_ts = i64::MIN;
                let mut row_number = 0i64;
                let shared = src_shared;
                let mut done = false;
                move |output| {
                    let (Some(cap), Some(file)) = (capability.as_mut(), reader.as_mut()) else {
                        capability = None;
                        shared.source_done(&mut done);
                        return;
                    };
                    if shared.interrupted.load(Ordering::Relaxed) {
                        capability = None;
                        shared.source_done(&mut done);
                        return;
                    }
                    if shared.counters.in_flight.load(Ordering::Relaxed) > MAX_IN_FLIGHT {
                        activator.activate_after(Duration::from_millis(1));
                        return;
                    }
                    let counters = &shared.counters.source;
                    let reading = Instant::now();
                    let next = match file.poll_chunk() {
                        Poll::Ready(next) => next,
                        // The reader thread wakes this operator with the chunk.
                        Poll::Pending => return,
                    };
                    let times = &shared.counters.times;
                    match next {
                        Ok(Some(chunk)) => {
                            // Counted per chunk, not with an atomic add per row.
                            let (mut late, mut sent) = (0u64, 0u64);
                            let mut session = output.session(&cap);
                            for i in 0..chunk.len() {
                                row_number += 1;
                                let ts = chunk.ts[i];
                                if ts < max_ts.saturating_sub(lag) {
                                    late += 1;
                                    continue;
                                }
                                max_ts = max_ts.max(ts);
                                sent += 1;
                                session.give(Row {
                                    key: chunk.symbols[i].as_str().into(),
                                    ts,
                                    values: chunk.fields.iter().map(|c| c[i]).collect(),
                                    partition: -1,
                                    offset: row_number - 1,
                                });
                            }
                            drop(session);
                            times.source_ns.fetch_add(reading.elapsed().as_nanos() as u64, Ordering::Relaxed);
                            shared.sent_up_to(max_ts);
                            counters.records.fetch_add(chunk.len() as u64, Ordering::Relaxed);
                            counters.late.fetch_add(late, Ordering::Relaxed);
                            counters.trades.fetch_add(sent, Ordering::Relaxed);
                            shared.counters.in_flight.fetch_add(sent as i64, Ordering::Relaxed);
                            let watermark = max_ts.saturating_sub(lag);
                            if watermark > *cap.time() {
                                cap.downgrade(&watermark);
                            }
                            activator.activate();
                        }
                        Ok(None) => {
                            capability = None;
                            shared.source_done(&mut done);
                        }
                        Err(e) => {
                            shared.fail(e);
                            capability = None;
                            shared.source_done(&mut done);
                        }
                    }
                }
            });
            let control = control_source(scope, index, &pipeline, shared.clone());
            process(rows, control, index, &pipeline, fanout, shared.clone());
        });
    })
    .map_err(|reason| DataflowError::Workers { workers, reason })?;
    for result in guards.join() {
        result.map_err(|reason| DataflowError::Workers { workers, reason })?;
    }
    if let Some(e) = shared.failure.lock().expect("failure lock").take() {
        return Err(e);
    }
    let c = &shared.counters;
    Ok(ReplayStats {
        rows_in: c.source.records.load(Ordering::Relaxed),
        late: c.source.late.load(Ordering::Relaxed),
        samples_out: c.samples_out.load(Ordering::Relaxed),
    })
}

/// How to run the host over a Kafka topic.
#[derive(Clone, Debug)]
pub struct RunOptions {
    pub workers: usize,
    pub reader: ReaderOptions,
    pub decoder: Decoder,
    /// Where each partition starts.
    pub start: Start,
    /// The dead-letter topic (`None`: malformed records are only counted).
    pub dead_letter_topic: Option<String>,
    /// End once every partition is at its end and quiet this long.
    pub stop_when_idle: Option<Duration>,
    /// End once this many records have been read, over all workers.
    pub stop_after_records: Option<u64>,
    /// Take checkpoints (and start from the one given).
    pub checkpoint: Option<CheckpointOptions>,
    /// Rows read and not yet through a chain beyond which the sources
    /// pause ([`MAX_IN_FLIGHT`] by default).
    pub max_in_flight: i64,
}

/// What a run did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RunStats {
    pub partitions: usize,
    pub records: u64,
    pub trades: u64,
    pub malformed: u64,
    pub late: u64,
    pub dead_lettered: u64,
    /// Dead letters the broker did not take.
    pub dead_letters_failed: u64,
    pub samples_out: u64,
    /// Per partition, the next offset to read.
    pub positions: BTreeMap<i32, i64>,
    /// The checkpoint taken as the run stopped on a signal, if any.
    pub checkpoint_at_stop: Option<u64>,
}

/// How long the end of a run waits for the broker to take the last dead
/// letters (failed ones are sent again meanwhile).
const DEAD_LETTERS_AT_END: Duration = Duration::from_secs(30);

/// Runs the pipeline over every partition of the topic until the input
/// ends (`stop_when_idle`) or `interrupted` is set. On interruption, open
/// windows stay open (they are not final), a last checkpoint is taken where
/// the sources stopped (with `[checkpoint]`), and the sinks write what they
/// hold.
pub fn run(
    options: &RunOptions,
    pipeline: &Pipeline,
    sinks: SinkFactory,
    counters: Arc<RunCounters>,
    interrupted: Arc<AtomicBool>,
) -> Result<RunStats, DataflowError> {
    let reader = &options.reader;
    let partitions = kafka::partition_count(&reader.brokers, &reader.topic, &reader.options)?;
    let dead_letters = match &options.dead_letter_topic {
        Some(topic) => Some(Arc::new(DeadLetters::new(&reader.brokers, topic, &reader.topic, &reader.options)?)),
        None => None,
    };
    let workers = options.workers.max(1);
    let max_in_flight = options.max_in_flight.max(1);
    tracing::info!(
        topic = %reader.topic, partitions, workers,
        "reading {partitions} partitions on {workers} workers"
    );
    counters.watermark.store(i64::MIN, Ordering::Relaxed);
    let restore = options.checkpoint.as_ref().and_then(|c| c.restore.clone());
    if let Some(checkpoint) = &restore
        && checkpoint.workers != workers
    {
        return Err(DataflowError::Restore(format!(
            "checkpoint {} was taken with {} workers, and this run has {workers}; run with {} workers (a checkpoint's keys and archive files belong to its workers)",
            checkpoint.id, checkpoint.workers, checkpoint.workers
        )));
    }
    let readers: Vec<bool> =
        (0..workers).map(|w| !kafka::owned_partitions(partitions, w, workers).is_empty()).collect();
    let cuts = options.checkpoint.as_ref().map(|_| Arc::new(checkpoints::Cuts::new(readers)));
    let shared = Arc::new(Shared {
        cuts: cuts.clone(),
        restore: restore.clone(),
        ..Shared::new(counters.clone(), interrupted.clone(), workers)
    });
    let run_done = Arc::new(AtomicBool::new(false));
    let coordinator = match (&options.checkpoint, &cuts) {
        (Some(checkpoint), Some(cuts)) => {
            let coordinator = checkpoints::Coordinator {
                cuts: cuts.clone(),
                options: checkpoint.clone(),
                reader: options.reader.clone(),
                workers,
                control: pipeline.control.clone(),
                counters: counters.clone(),
                done: run_done.clone(),
                interrupted: interrupted.clone(),
                failed: {
                    let shared = shared.clone();
                    Box::new(move || shared.failure.lock().expect("failure lock").is_some())
                },
                dead_letters: dead_letters.clone(),
            };
            Some(std::thread::Builder::new().name("checkpoints".into()).spawn(move || coordinator.run()).map_err(
                |e| DataflowError::Workers { workers, reason: format!("starting the checkpoint thread: {e}") },
            )?)
        }
        _ => None,
    };
    // Every partition's watermark (`None` while idle), for workers whose
    // own partitions have all gone idle.
    let partition_watermarks: Arc<Mutex<BTreeMap<i32, Option<i64>>>> = Arc::default();
    let positions: Arc<Mutex<BTreeMap<i32, i64>>> = Arc::default();
    let (s, o, p, dl, pw, pos) = (
        shared.clone(),
        options.clone(),
        pipeline.clone(),
        dead_letters.clone(),
        partition_watermarks.clone(),
        positions.clone(),
    );
    let guards = timely::execute(timely::Config::process(workers), move |worker| {
        let index = worker.index();
        let shared = s.clone();
        let options = o.clone();
        let fanout = (sinks)(index);
        let (dead_letters, partition_watermarks, positions) = (dl.clone(), pw.clone(), pos.clone());
        worker.dataflow::<i64, _, _>(|scope| {
            let src_shared = shared.clone();
            // From a checkpoint, each partition starts at its offset there.
            let restored = shared.restore.as_ref().map(|c| c.partitions.clone()).unwrap_or_default();
            let mine: Vec<(i32, Start)> = kafka::owned_partitions(partitions, index, workers)
                .into_iter()
                .map(|p| match restored.get(&p) {
                    Some(c) if c.next_offset >= 0 => (p, Start::At(c.next_offset)),
                    _ => (p, options.start),
                })
                .collect();
            let rows = source(scope, &format!("Kafka({})", options.reader.topic), move |capability, info| {
                let activator = scope.activator_for(info.address.clone());
                let wake = scope.worker().sync_activator_for(info.address.to_vec());
                let on_data = move || {
                    let _ = wake.activate();
                };
                let shared = src_shared;
                let mut reader = None;
                if !mine.is_empty() {
                    let opened = PartitionReader::open(
                        options.reader.clone(),
                        &mine,
                        options.decoder.clone(),
                        dead_letters,
                        shared.counters.source.clone(),
                        on_data,
                    );
                    match opened {
                        Ok(mut r) => {
                            if let Some(checkpoint) = &shared.restore {
                                r.restore(&checkpoint.partitions);
                            }
                            reader = Some(r);
                        }
                        Err(e) => shared.fail(e),
                    }
                }
                if let Some(cuts) = &shared.cuts {
                    let wake = scope.worker().sync_activator_for(info.address.to_vec());
                    cuts.on_wake(Box::new(move || {
                        let _ = wake.activate();
                    }));
                }
                // The checkpoint this source last paused for.
                let mut paused = 0u64;
                let mut last_said = Instant::now();
                // A worker without partitions never sends: it lets go of
                // its capability at once.
                let mut capability = reader.is_some().then_some(capability);
                let mut batch: Vec<Row> = Vec::new();
                let (stop_when_idle, stop_after) = (options.stop_when_idle, options.stop_after_records);
                let mut done = false;
                move |output| {
                    let (Some(cap), Some(reader)) = (capability.as_mut(), reader.as_mut()) else {
                        capability = None;
                        shared.source_done(&mut done);
                        return;
                    };
                    if shared.interrupted.load(Ordering::Relaxed) {
                        // Stopping: read nothing more. With checkpoints,
                        // stay paused here (keeping the capability, so no
                        // window closes) until the last one is taken.
                        if let Some(cuts) = shared.cuts.as_ref().filter(|c| !c.closed()) {
                            if let Some(id) = cuts.pause_for(paused) {
                                paused = id;
                                cuts.source_paused(index, id, reader.checkpoint());
                            }
                            activator.activate_after(Duration::from_millis(5));
                            return;
                        }
                        record_positions(&positions, reader);
                        capability = None;
                        shared.source_done(&mut done);
                        return;
                    }
                    if let Some(cuts) = &shared.cuts {
                        // A checkpoint: stop at a record boundary and say
                        // where, then wait until every worker has its part.
                        if let Some(id) = cuts.pause_for(paused) {
                            paused = id;
                            cuts.source_paused(index, id, reader.checkpoint());
                        }
                        if cuts.holding(paused) {
                            activator.activate_after(Duration::from_millis(5));
                            return;
                        }
                    }
                    if shared.counters.in_flight.load(Ordering::Relaxed) > max_in_flight {
                        // The chains are behind (held back by a sink):
                        // let the broker keep the backlog, not our memory.
                        activator.activate_after(Duration::from_millis(1));
                        return;
                    }
                    let floor = *cap.time();
                    let polling = Instant::now();
                    let read = reader.poll(floor, &mut batch);
                    let times = &shared.counters.times;
                    times.source_ns.fetch_add(polling.elapsed().as_nanos() as u64, Ordering::Relaxed);
                    if !batch.is_empty() {
                        let newest = batch.iter().map(|r| r.ts).max().unwrap_or(i64::MIN);
                        shared.sent_up_to(newest);
                        shared.counters.in_flight.fetch_add(batch.len() as i64, Ordering::Relaxed);
                        output.session(&cap).give_iterator(batch.drain(..));
                    }
                    let now = Instant::now();
                    let target = {
                        let mut all = partition_watermarks.lock().expect("watermarks lock");
                        for (p, w) in reader.partition_watermarks(now) {
                            all.insert(p, w);
                        }
                        // All of ours idle: follow the slowest active
                        // partition of the others, so we do not hold them
                        // back; a partition that wakes up below it sends
                        // its old trades to the dead-letter topic as late.
                        reader.watermark(now).or_else(|| all.values().flatten().min().copied())
                    };
                    if let Some(w) = target
                        && w > *cap.time()
                    {
                        cap.downgrade(&w);
                    }
                    if last_said.elapsed() >= Duration::from_secs(5) {
                        last_said = now;
                        tracing::debug!(worker = index, capability = *cap.time(), "source: {}", reader.describe(now));
                    }
                    let read_enough =
                        stop_after.is_some_and(|n| shared.counters.source.records.load(Ordering::Relaxed) >= n);
                    if read_enough || stop_when_idle.is_some_and(|quiet| reader.drained(now, quiet)) {
                        record_positions(&positions, reader);
                        if let Some(cuts) = &shared.cuts {
                            // Checkpoints go on without this source.
                            cuts.source_ended(index, reader.checkpoint());
                        }
                        capability = None;
                        shared.source_done(&mut done);
                        return;
                    }
                    if read > 0 {
                        activator.activate();
                    } else {
                        // Records wake us through the queue callback; this
                        // tick keeps idleness and shutdown checks going.
                        activator.activate_after(Duration::from_millis(50));
                    }
                }
            });
            let control = control_source(scope, index, &p, shared.clone());
            process(rows, control, index, &p, fanout, shared.clone());
        });
    })
    .map_err(|reason| DataflowError::Workers { workers, reason })?;
    let joined: Result<Vec<()>, DataflowError> =
        guards.join().into_iter().map(|r| r.map_err(|reason| DataflowError::Workers { workers, reason })).collect();
    run_done.store(true, Ordering::Relaxed);
    if let Some(c) = coordinator {
        let _ = c.join();
    }
    joined?;
    let mut dead_letters_failed = 0;
    if let Some(dl) = &dead_letters {
        if !dl.settled(dl.queued(), DEAD_LETTERS_AT_END) {
            tracing::error!(
                "{} dead letters were not on the broker within {} s ({} failed attempts)",
                dl.unsent(),
                DEAD_LETTERS_AT_END.as_secs(),
                dl.failed_attempts()
            );
        }
        // Those not sent are lost with the producer: count them.
        dead_letters_failed = dl.unsent();
    }
    if let Some(e) = shared.failure.lock().expect("failure lock").take() {
        return Err(e);
    }
    let c = &counters.source;
    Ok(RunStats {
        partitions,
        records: c.records.load(Ordering::Relaxed),
        trades: c.trades.load(Ordering::Relaxed),
        malformed: c.malformed.load(Ordering::Relaxed),
        late: c.late.load(Ordering::Relaxed),
        dead_lettered: c.dead_lettered.load(Ordering::Relaxed),
        dead_letters_failed,
        samples_out: counters.samples_out.load(Ordering::Relaxed),
        positions: positions.lock().expect("positions lock").clone(),
        checkpoint_at_stop: counters.checkpoints.at_stop(),
    })
}

fn record_positions(positions: &Mutex<BTreeMap<i32, i64>>, reader: &PartitionReader) {
    positions.lock().expect("positions lock").extend(reader.positions());
}

/// How often the control source moves its promise on (and looks for
/// queued changes when nothing wakes it).
const CONTROL_TICK: Duration = Duration::from_millis(10);

/// Worker 0's source of plugin changes, broadcast to every worker.
///
/// Its capability is a promise: no change will take effect before that
/// event time. It runs `deploy_lead_ms` ahead of the newest event time the
/// sources have sent, moved on every tick and whenever a source sends rows
/// past it, so rows are rarely held back. A queued change is sent at the
/// capability's time `T`: no worker can have processed a row at or after
/// `T` yet (the process operator holds those back until the promise passes
/// them), so every worker applies the change between the same rows. The
/// lead stays fixed, not scaled to how fast event time moves, so a change
/// asked for during a catch-up takes effect right after it, not minutes
/// ahead of the live data that follows.
fn control_source<'scope>(
    scope: timely::dataflow::Scope<'scope, i64>,
    index: usize,
    pipeline: &Pipeline,
    shared: Arc<Shared>,
) -> Stream<'scope, i64, Vec<u64>> {
    use timely::dataflow::operators::vec::Broadcast;
    let control = pipeline.control.clone().filter(|_| index == 0);
    let lead = pipeline.deploy_lead_ms.max(0);
    let changes = source(scope, "Deploys", move |capability, info| {
        let activator = scope.activator_for(info.address.clone());
        if let Some(control) = &control {
            let wake = Arc::new(scope.worker().sync_activator_for(info.address.to_vec()));
            let w = wake.clone();
            control.set_wake(Box::new(move || {
                let _ = w.activate();
            }));
            *shared.wake_control.lock().expect("wake lock") = Some(Box::new(move || {
                let _ = wake.activate();
            }));
            shared.promise.store(i64::MIN, Ordering::Relaxed);
        }
        let mut capability = control.is_some().then_some(capability);
        move |output| {
            let (Some(cap), Some(control)) = (capability.as_mut(), control.as_ref()) else {
                capability = None;
                return;
            };
            if shared.interrupted.load(Ordering::Relaxed) || shared.live_sources.load(Ordering::Relaxed) == 0 {
                // The sources are done: so are changes.
                shared.promise.store(i64::MAX, Ordering::Relaxed);
                capability = None;
                return;
            }
            let max = shared.max_event.load(Ordering::Relaxed);
            if max != i64::MIN {
                let promise = max.saturating_add(lead).saturating_add(1);
                if promise > *cap.time() {
                    cap.downgrade(&promise);
                    shared.promise.store(promise, Ordering::Relaxed);
                }
            }
            let queued = control.take_queued();
            if !queued.is_empty() {
                let at = *cap.time();
                let mut session = output.session(&cap);
                for id in queued {
                    control.sent(id, at);
                    session.give(id);
                }
            }
            activator.activate_after(CONTROL_TICK);
        }
    });
    changes.broadcast()
}

/// Rows held back from the chain: those at or after the earliest change
/// not yet applied (they belong to the DAG after it) or after the control
/// source's promise (a change may still come before them), and those of a
/// key that already has rows held back (a key's rows keep their order).
#[derive(Default)]
struct Held {
    rows: VecDeque<Row>,
    keys: rustc_hash::FxHashMap<compact_str::CompactString, usize>,
}

impl Held {
    fn push(&mut self, row: Row) {
        *self.keys.entry(row.key.clone()).or_default() += 1;
        self.rows.push_back(row);
    }

    fn holds_key(&self, key: &str) -> bool {
        !self.keys.is_empty() && self.keys.contains_key(key)
    }

    fn earliest(&self) -> i64 {
        self.rows.iter().map(|r| r.ts).min().unwrap_or(i64::MAX)
    }

    /// Takes, in order, the rows before `gate` whose key has no earlier
    /// row still held; with `force`, every row before `gate`.
    fn release(&mut self, gate: i64, force: bool) -> Vec<Row> {
        if self.rows.is_empty() {
            return Vec::new();
        }
        let mut out = Vec::new();
        let mut kept = VecDeque::with_capacity(self.rows.len());
        let mut still: rustc_hash::FxHashMap<compact_str::CompactString, usize> = Default::default();
        for row in self.rows.drain(..) {
            if row.ts < gate && (force || !still.contains_key(row.key.as_str())) {
                out.push(row);
            } else {
                *still.entry(row.key.clone()).or_default() += 1;
                kept.push_back(row);
            }
        }
        self.rows = kept;
        self.keys = still;
        out
    }
}

/// Exchanges rows by key and runs worker `index`'s plugin chain over them
/// as the frontier lets them through, writing to its sinks; applies the
/// plugin changes that `control` carries at their event times.
fn process<'scope>(
    rows: Stream<'scope, i64, Vec<Row>>,
    control: Stream<'scope, i64, Vec<u64>>,
    index: usize,
    pipeline: &Pipeline,
    fanout: Result<Fanout, SinkError>,
    shared: Arc<Shared>,
) {
    use timely::dataflow::channels::pact::Pipeline as Local;
    use timely::dataflow::operators::generic::builder_rc::OperatorBuilder;

    let workers = shared.watermarks.lock().expect("watermarks lock").len();
    let states = shared.restore.as_ref().map(|c| checkpoints::states_for(c, index, workers)).unwrap_or_default();
    if shared.restore.is_some() {
        let keys: usize = states.values().map(|s| s.keys.len()).sum();
        tracing::info!(worker = index, stages = states.len(), keys, "plugin state restored from the checkpoint");
    }
    let chain = Chain::open_dag_restored(
        &pipeline.stages,
        &pipeline.input_name,
        &pipeline.input_fields,
        0,
        pipeline.report_all,
        &states,
    );
    // From a checkpoint, the sinks take up where it left them.
    let fanout = fanout.and_then(|mut f| {
        if let Some(checkpoint) = &shared.restore {
            f.restore(&checkpoint.sinks[index])?;
        }
        Ok(f)
    });
    let mut state = match (chain, fanout) {
        (Ok(chain), Ok(mut fanout)) => {
            fanout.timed = shared.counters.profile.load(Ordering::Relaxed);
            Some((chain, fanout))
        }
        (Err(e), _) => {
            shared.fail(e);
            None
        }
        (_, Err(e)) => {
            shared.fail(e);
            None
        }
    };
    let (input_name, input_fields, keep_input) =
        (pipeline.input_name.clone(), pipeline.input_fields.clone(), pipeline.keep_input);
    let plane = pipeline.control.clone();
    let by_key = Exchange::new(|row: &Row| key_hash(&row.key));
    let scope = rows.scope();
    let mut builder = OperatorBuilder::new("PluginChain".to_string(), scope);
    let mut rows_in = builder.new_input(rows.container::<Vec<Row>>(), by_key);
    let mut changes_in = builder.new_input(control.container::<Vec<u64>>(), Local);
    let mut watermark = shared.restore.as_ref().map_or(i64::MIN, |c| c.watermarks[index]);
    let mut finished = false;
    let mut held = Held::default();
    // The checkpoint this worker last gave its part of.
    let mut cut_done = shared.restore.as_ref().map_or(0, |c| c.id);
    if let Some(cuts) = &shared.cuts {
        let wake = scope.worker().sync_activator_for(builder.operator_info().address.to_vec());
        cuts.on_wake(Box::new(move || {
            let _ = wake.activate();
        }));
    }
    // Changes received, not yet applied: (event time, id), in order.
    let mut pending: Vec<(i64, u64)> = Vec::new();
    builder.build(move |_capabilities| {
        move |frontiers| {
            let started = Instant::now();
            let Some((chain, fanout)) = state.as_mut().filter(|_| !finished) else {
                // The chain failed to open (the run reports it), or the
                // stream ended: drain the inputs rather than hold them.
                rows_in.for_each(|_, rows| {
                    shared.counters.in_flight.fetch_sub(rows.len() as i64, Ordering::Relaxed);
                });
                changes_in.for_each(|_, _| {});
                return;
            };
            changes_in.for_each(|time, ids| {
                let at = time.least().copied().unwrap_or(i64::MIN);
                pending.extend(ids.drain(..).map(|id| (at, id)));
            });
            pending.sort_unstable();
            let first = |f: &timely::progress::frontier::MutableAntichain<i64>| {
                f.frontier().iter().next().copied().unwrap_or(i64::MAX)
            };
            // Every row before `rows_done` has arrived (the sources'
            // watermark); no change can come before `changes_done`.
            let (rows_done, changes_done) = (first(&frontiers[0]), first(&frontiers[1]));
            let stopping = shared.interrupted.load(Ordering::Relaxed);
            let gate = |pending: &[(i64, u64)]| pending.first().map_or(changes_done, |p| p.0.min(changes_done));
            let step = (|| -> Result<(), DataflowError> {
                let (before, inputs_before) = (fanout.written, fanout.inputs_written);
                // Rows before the gate are fed as they arrive, not when the
                // frontier passes their time: a row sent at time t has an
                // event time of at least t, and the chain's watermark is a
                // frontier that has not passed t yet, so no row is below
                // it; and a key's rows come from one source over one FIFO
                // channel, in partition order. Per-trade outputs (VWAP)
                // thus leave at once.
                let mut result = Ok(());
                let open = gate(&pending);
                rows_in.for_each(|_, rows| {
                    if result.is_err() {
                        return;
                    }
                    result = (|| -> Result<(), DataflowError> {
                        shared.counters.in_flight.fetch_sub(rows.len() as i64, Ordering::Relaxed);
                        if keep_input {
                            for row in rows.iter() {
                                fanout.write_input(&input_name, &input_fields, row)?;
                            }
                        }
                        if held.rows.is_empty() && rows.iter().all(|r| r.ts < open) {
                            chain
                                .feed(rows.iter().map(|r| (r.key.as_str(), r.ts, r.values.iter().copied())), fanout)?;
                            return Ok(());
                        }
                        let mut now = Vec::with_capacity(rows.len());
                        for row in rows.drain(..) {
                            if row.ts < open && !held.holds_key(&row.key) {
                                now.push(row);
                            } else {
                                held.push(row);
                            }
                        }
                        feed(chain, fanout, &now)?;
                        Ok(())
                    })();
                });
                result?;

                if stopping && rows_done == i64::MAX {
                    // Stopping, not at the end of the input: rows before a
                    // pending change may still be unread, so it is not
                    // applied (the state directory has it for the next
                    // run), and what is held goes through the DAG as it is.
                    let rest = held.release(i64::MAX, true);
                    feed(chain, fanout, &rest)?;
                } else {
                    // Changes whose time every row before has reached.
                    while let Some(&(at, id)) = pending.first()
                        && at <= rows_done.min(changes_done)
                    {
                        let before_change = held.release(at, true);
                        feed(chain, fanout, &before_change)?;
                        if at > watermark {
                            chain.advance(at, fanout)?;
                            fanout.advance(at)?;
                            watermark = at;
                        }
                        pending.remove(0);
                        if let Some(plane) = &plane {
                            apply(plane, chain, id, index, at);
                        }
                    }
                    let released = held.release(gate(&pending), false);
                    feed(chain, fanout, &released)?;
                }

                // The frontier is the sources' watermark (held back by
                // rows still held): every row below it has gone through.
                let complete = rows_done.min(changes_done).min(held.earliest());
                if complete > watermark {
                    watermark = complete;
                    if complete == i64::MAX && stopping {
                        // Stopping, not at the end of the input: open windows
                        // are not final, so they are not closed and written.
                    } else {
                        chain.advance(watermark, fanout)?;
                        fanout.advance(watermark)?;
                    }
                    let mut all = shared.watermarks.lock().expect("watermarks lock");
                    all[index] = watermark;
                    let lowest = all.iter().copied().min().unwrap_or(i64::MIN);
                    shared.counters.watermark.store(lowest, Ordering::Relaxed);
                }
                if fanout.written > before {
                    shared.counters.samples_out.fetch_add(fanout.written - before, Ordering::Relaxed);
                }
                if fanout.written > before || fanout.inputs_written > inputs_before {
                    fanout.batch_done()?;
                }
                // Our part of a checkpoint, once every source has paused
                // and every row read before has gone through a chain.
                if let Some(cuts) = &shared.cuts
                    && complete != i64::MAX
                    && let Some(id) = cuts.part_due(cut_done)
                    && shared.counters.in_flight.load(Ordering::Acquire) == 0
                    && held.rows.is_empty()
                    && pending.is_empty()
                {
                    let stages = chain.snapshot()?;
                    let sinks = fanout.checkpoint()?;
                    cuts.worker_part(index, id, checkpoints::WorkerPart { watermark, stages, sinks });
                    cut_done = id;
                }
                if complete == i64::MAX {
                    fanout.finish_sinks()?;
                    finished = true;
                }
                Ok(())
            })();
            if let Err(e) = step {
                shared.fail(e);
                finished = true;
                // Write what the sinks hold, as far as they still can.
                if let Err(e) = fanout.finish_sinks() {
                    tracing::error!(worker = index, "after a failure, the sinks could not write what they held: {e}");
                }
            }
            let times = &shared.counters.times;
            times.process_ns.fetch_add(started.elapsed().as_nanos() as u64, Ordering::Relaxed);
            times.sinks_ns.fetch_add(std::mem::take(&mut fanout.busy_ns), Ordering::Relaxed);
        }
    });
}

fn feed(chain: &mut Chain, fanout: &mut Fanout, rows: &[Row]) -> Result<(), DataflowError> {
    if !rows.is_empty() {
        chain.feed(rows.iter().map(|r| (r.key.as_str(), r.ts, r.values.iter().copied())), fanout)?;
    }
    Ok(())
}

/// Applies change `id` to worker `worker`'s chain at event time `at`, and
/// reports how it went. A change that fails here (it was checked when it
/// was accepted, so this is rare: a plugin out of memory, say) leaves the
/// chain as it was and is reported, not fatal.
fn apply(plane: &ControlPlane, chain: &mut Chain, id: u64, worker: usize, at: i64) {
    let Some(change) = plane.change(id) else { return };
    let outcome = match &change {
        Change::Add(spec) => chain.add_stage(spec).map(|()| Applied::Done),
        Change::Upgrade(spec) => chain.replace_stage(spec).map(Applied::from),
        Change::Remove(name) => chain.remove_stage(name).map(|()| Applied::Done),
    };
    let outcome = outcome.unwrap_or_else(|e| {
        tracing::error!(worker, change = id, "a plugin change could not be applied on this worker: {e}");
        Applied::Failed(e.to_string())
    });
    tracing::info!(worker, change = id, at = %crate::host::format_ms(at), "plugin change applied: {outcome:?}");
    plane.applied(id, worker, outcome);
}

/// The worker a key goes to is a pure function of the key.
fn key_hash(key: &str) -> u64 {
    // A fixed hash, not `RandomState`: every worker (and every run, whose
    // archive file names carry the worker) must route a key alike. FxHash:
    // SipHash showed in profiles, and symbols are short.
    let mut h = rustc_hash::FxHasher::default();
    key.hash(&mut h);
    h.finish()
}

#[cfg(test)]
mod tests {
    use super::{Held, Row};

    fn row(key: &str, ts: i64) -> Row {
        Row { key: key.into(), ts, values: smallvec::smallvec![ts as f64], partition: 0, offset: ts }
    }

    fn keys_and_times(rows: &[Row]) -> Vec<(&str, i64)> {
        rows.iter().map(|r| (r.key.as_str(), r.ts)).collect()
    }

    #[test]
    fn held_rows_leave_in_order_and_a_key_never_overtakes_itself() {
        let mut held = Held::default();
        for (k, ts) in [("A", 30), ("B", 5), ("A", 10), ("C", 40), ("B", 6)] {
            held.push(row(k, ts));
        }
        assert!(held.holds_key("A") && !held.holds_key("D"));
        assert_eq!(held.earliest(), 5);
        // Gate 20: A@30 stays, so A@10 behind it stays too (A keeps its
        // order); B's rows and nothing of C (40) leave, in order.
        let out = held.release(20, false);
        assert_eq!(keys_and_times(&out), [("B", 5), ("B", 6)]);
        assert_eq!(keys_and_times(held.rows.make_contiguous()), [("A", 30), ("A", 10), ("C", 40)]);
        assert!(!held.holds_key("B"));
        // A change at 20: every row before it goes first, whatever its key.
        let out = held.release(20, true);
        assert_eq!(keys_and_times(&out), [("A", 10)]);
        let out = held.release(i64::MAX, false);
        assert_eq!(keys_and_times(&out), [("A", 30), ("C", 40)]);
        assert!(held.rows.is_empty() && held.keys.is_empty() && held.earliest() == i64::MAX);
    }
}
