//! `tickfold run`: the config turned into a running host. Loads the
//! plugins, starts the sinks, runs the dataflow over the Kafka topic, and
//! reports progress until the input ends or the host is told to stop.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use crate::config::{Config, LatePolicy, StartAt};
use crate::dataflow::{self, Pipeline, ReplayOptions, RunCounters, RunOptions, RunStats, SinkFactory};
use crate::decode::Decoder;
use crate::exec::StageSpec;
use crate::plugin::{PluginRuntime, SandboxLimits};
use crate::sink::archive::{Archive, ArchiveError, ArchiveStats, ArchiveWriter};
use crate::sink::influx::{InfluxSink, InfluxStats, InfluxWriter};
use crate::sink::{Fanout, SinkError, SinkWriter};
use crate::source::Row;
use crate::source::kafka::{ReaderOptions, Start};
use std::sync::Mutex;

/// The input series the Kafka source writes.
pub const TRADES: &str = "trades";

/// What a run did, for the summary.
#[derive(Debug)]
pub struct Summary {
    pub run: RunStats,
    pub influx: Option<InfluxStats>,
    pub archive: Option<ArchiveStats>,
    pub elapsed: Duration,
}

/// The fields of the input series [`TRADES`].
pub const TRADE_FIELDS: [&str; 2] = ["price", "size"];

/// The WebAssembly runtime with the config's sandbox limits.
pub fn runtime(config: &Config) -> Result<PluginRuntime> {
    let limits = SandboxLimits {
        memory_bytes: config.sandbox.memory_mib << 20,
        call_timeout_ms: config.sandbox.call_timeout_ms,
        ..SandboxLimits::default()
    };
    PluginRuntime::new(limits, config.sandbox.compile_cache.clone())
        .map_err(|e| anyhow::anyhow!("{e:#}"))
        .context("starting the WebAssembly runtime")
}

/// Opens one instance of each stage and wires the DAG over the trades:
/// what `tickfold run --check` shows, and what a run checks first.
pub fn wire(stages: &[StageSpec]) -> Result<crate::exec::Chain> {
    crate::exec::Chain::open_dag(stages, TRADES, &TRADE_FIELDS.map(String::from), 0, true)
        .context("wiring the plugin DAG")
}

/// Loads the config's plugins, without running them. Each stage is named
/// by the config or after its plugin (`-2`, `-3`… when several share it).
pub fn stages(config: &Config, runtime: &PluginRuntime) -> Result<Vec<StageSpec>> {
    let mut stages: Vec<StageSpec> = Vec::with_capacity(config.plugins.len());
    for p in &config.plugins {
        let plugin = runtime
            .load_file(&p.wasm)
            .map_err(|e| anyhow::anyhow!("{e:#}"))
            .with_context(|| format!("loading plugin {}", p.wasm.display()))?;
        let pairs = p.param_pairs();
        let params = crate::plugin::params(pairs.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        let taken = |name: &str| stages.iter().any(|s| s.name == name);
        let name = match &p.name {
            Some(name) if taken(name) => {
                anyhow::bail!("two plugins of the config are called `{name}`; names must differ")
            }
            Some(name) => name.clone(),
            None => {
                let base = plugin.descriptor().name.clone();
                let mut name = base.clone();
                let mut n = 1;
                while taken(&name) {
                    n += 1;
                    name = format!("{base}-{n}");
                }
                name
            }
        };
        stages.push(StageSpec {
            name,
            input: p.input.clone(),
            rename: p.rename.clone(),
            ..StageSpec::new(plugin, params)
        });
    }
    Ok(stages)
}

/// Runs the host as `config` says until the input ends (with
/// `kafka.stop_when_idle_ms`) or `interrupted` is set (SIGINT, SIGTERM).
/// With `file`, the same DAG and sinks run over that file of trades
/// instead of the topic (backfills, benchmarks), with the allowed lateness
/// as the file's watermark lag.
pub fn run(config: &Config, file: Option<&Path>, interrupted: Arc<AtomicBool>) -> Result<Summary> {
    run_with(config, file, interrupted, Arc::default())
}

/// [`run`], counting into `counters` (which the caller may watch).
pub fn run_with(
    config: &Config,
    file: Option<&Path>,
    interrupted: Arc<AtomicBool>,
    counters: Arc<RunCounters>,
) -> Result<Summary> {
    let started = Instant::now();
    let runtime = runtime(config)?;
    let stages = stages(config, &runtime)?;
    // Wire the DAG once here, so a mistake is reported before anything
    // connects to Kafka.
    wire(&stages)?;
    // With the admin API, the plugins deployed to earlier runs join the
    // config's, and the DAG can change while the host runs.
    let control = match &config.admin {
        Some(admin) => {
            let deployed = crate::deploy::load_deployed(&admin.state_dir, &runtime)?;
            if !deployed.is_empty() {
                let names: Vec<&str> = deployed.iter().map(|(s, _)| s.name.as_str()).collect();
                tracing::info!("running the plugins deployed earlier: {}", names.join(", "));
            }
            let max_bytes = admin.max_plugin_bytes.unwrap_or(runtime.limits().max_component_bytes);
            let options = crate::deploy::PlaneOptions {
                input_name: TRADES.into(),
                input_fields: TRADE_FIELDS.map(String::from).to_vec(),
                workers: config.workers,
                state_dir: Some(admin.state_dir.clone()),
                max_bytes,
            };
            let plane =
                crate::deploy::ControlPlane::new(runtime.clone(), options, stages.clone(), deployed).map_err(|e| {
                    anyhow::anyhow!("the deployed plugins in {} no longer fit the DAG: {e}", admin.state_dir.display())
                })?;
            Some((Arc::new(plane), admin, max_bytes))
        }
        None => None,
    };
    let pipeline = Pipeline {
        stages: control.as_ref().map_or(stages, |(c, _, _)| c.stages()),
        input_name: TRADES.into(),
        input_fields: TRADE_FIELDS.map(String::from).to_vec(),
        keep_input: config.sinks.archive.is_some() && config.sinks.archive_trades,
        report_all: true,
        control: control.as_ref().map(|(c, _, _)| c.clone()),
        deploy_lead_ms: config.admin.as_ref().map_or(0, |a| a.deploy_lead_ms),
    };

    let influx = match &config.sinks.influx {
        Some(c) => Some(Arc::new(InfluxSink::start(c.clone()).context("starting the InfluxDB sink")?)),
        None => None,
    };
    let archive = match &config.sinks.archive {
        Some(c) => Some(Arc::new(Archive::new(c.clone()).context("opening the Parquet archive")?)),
        None => None,
    };
    // Each worker's archive counts, as of its last watermark.
    let archive_stats: Arc<Mutex<Vec<ArchiveStats>>> =
        Arc::new(Mutex::new(vec![ArchiveStats::default(); config.workers]));
    let sinks: SinkFactory = {
        let (influx, archive, skip) = (influx.clone(), archive.clone(), config.sinks.influx_skip.clone());
        let archive_stats = archive_stats.clone();
        let counters = counters.clone();
        let interrupted = interrupted.clone();
        Arc::new(move |worker| {
            let mut fanout = Fanout::default();
            if let Some(sink) = &influx {
                let timed = counters.profile.load(Ordering::Relaxed);
                let writer = InfluxWorker { writer: sink.writer(), counters: counters.clone(), timed, waited_ns: 0 };
                fanout.add(Box::new(writer), skip.clone());
            }
            if let Some(archive) = &archive {
                // Parquet encoding and zstd on a thread of their own, so a
                // worker whose keys are busy hands them to a core with room.
                let encoding =
                    archive.writer(worker).encode_in_background().map_err(|e| SinkError::new("archive", e))?;
                let writer = ArchiveWorker {
                    writer: encoding,
                    worker,
                    stats: archive_stats.clone(),
                    interrupted: interrupted.clone(),
                };
                fanout.add(Box::new(writer), Vec::new());
            }
            Ok(fanout)
        })
    };

    let checkpoint = match (&config.checkpoint, file) {
        (Some(c), None) => {
            let store = crate::checkpoint::LocalDir::new(&c.dir).context("opening the checkpoint directory")?;
            let restore = crate::checkpoint::load_latest(&store).context("reading the checkpoints")?;
            match &restore {
                Some(cp) => tracing::info!(
                    id = cp.id,
                    "restoring from checkpoint {} (taken {}): every partition resumes at its offset there",
                    cp.id,
                    format_ms(cp.taken_at_ms)
                ),
                None => tracing::info!(dir = %c.dir.display(), "no checkpoint yet: starting as the config says"),
            }
            let flush: Option<dataflow::SinkFlush> = influx.as_ref().map(|sink| {
                let sink = sink.clone();
                Arc::new(move |limit| sink.sync_within(limit).map_err(|e| e.to_string())) as dataflow::SinkFlush
            });
            Some(crate::dataflow::CheckpointOptions {
                store: Arc::new(store),
                interval: Duration::from_millis(c.interval_ms.max(1)),
                retain: c.retain,
                restore: restore.map(Arc::new),
                flush,
                // As long as closing the sink would try.
                stop_flush: influx.as_ref().map_or(Duration::ZERO, |s| s.close_timeout()),
            })
        }
        (Some(_), Some(_)) => {
            tracing::warn!("checkpoints are taken for Kafka runs only; this run over a file takes none");
            None
        }
        (None, _) => None,
    };
    let kafka = &config.kafka;
    let mut options = RunOptions {
        workers: config.workers,
        reader: ReaderOptions {
            brokers: kafka.brokers.clone(),
            topic: kafka.topic.clone(),
            group: kafka.group.clone(),
            allowed_lateness_ms: kafka.allowed_lateness_ms,
            idle_timeout: Duration::from_millis(kafka.idle_timeout_ms),
            max_batch: kafka.max_batch,
            dead_letter_late: kafka.late == LatePolicy::DeadLetter,
            options: kafka.options.clone(),
        },
        decoder: Decoder::new(config.decode.shape, config.decode.fields.clone()),
        start: match kafka.start {
            StartAt::Earliest => Start::Earliest,
            StartAt::Latest => Start::Latest,
            StartAt::Committed => Start::Committed,
        },
        dead_letter_topic: Some(kafka.dead_letter_topic()),
        stop_when_idle: kafka.stop_when_idle_ms.map(Duration::from_millis),
        stop_after_records: kafka.stop_after_records,
        checkpoint,
        max_in_flight: kafka.max_in_flight.min(i64::MAX as u64) as i64,
    };
    // The endpoint reads the same counters the reporter logs; it must be
    // stopped before the InfluxDB sink closes (it holds the sink).
    let metrics = match &config.metrics {
        Some(c) => {
            let sources = crate::metrics::Sources {
                counters: counters.clone(),
                influx: influx.clone(),
                archive: archive.as_ref().map(|_| archive_stats.clone()),
                plugins: match &pipeline.control {
                    Some(plane) => {
                        let plane = plane.clone();
                        Arc::new(move || plane.plugin_stats())
                    }
                    None => crate::metrics::fixed_plugins(
                        pipeline.stages.iter().map(|s| (s.name.clone(), s.stats.clone())).collect(),
                    ),
                },
            };
            Some(crate::metrics::MetricsServer::start(c, sources).context("starting the metrics endpoint")?)
        }
        None => None,
    };
    let admin = match &control {
        Some((plane, config, max_bytes)) => {
            Some(crate::api::AdminServer::start(config, plane.clone(), *max_bytes).context("starting the admin API")?)
        }
        None => None,
    };
    let reporter = Reporter::start(counters.clone(), influx.clone(), interrupted.clone());
    let result = match file {
        None => dataflow::run(&options, &pipeline, sinks, counters.clone(), interrupted.clone()),
        Some(path) => {
            let replay = ReplayOptions {
                workers: config.workers,
                watermark_lag_ms: kafka.allowed_lateness_ms,
                batch_rows: kafka.max_batch,
                report_all: true,
            };
            dataflow::replay_into(path, &pipeline, &replay, sinks, counters.clone(), interrupted.clone()).map(|_| {
                let c = &counters.source;
                RunStats {
                    records: c.records.load(Ordering::Relaxed),
                    trades: c.trades.load(Ordering::Relaxed),
                    late: c.late.load(Ordering::Relaxed),
                    samples_out: counters.samples_out.load(Ordering::Relaxed),
                    ..RunStats::default()
                }
            })
        }
    };
    reporter.stop();
    // The checkpoint options hold the InfluxDB sink (to flush it): let go.
    options.checkpoint = None;
    if let Some((plane, _, _)) = &control {
        plane.close();
    }
    if let Some(a) = admin {
        a.stop();
    }
    if let Some(m) = metrics {
        m.stop();
    }
    // Whatever happened, write what the sinks hold; a failed run's own
    // error comes first.
    let influx_stats = match influx.map(Arc::try_unwrap) {
        Some(Ok(sink)) => match (sink.close(), &result) {
            (Ok(stats), _) => Some(stats),
            (Err(e), Ok(_)) => return Err(anyhow::Error::new(e).context("writing the last points to InfluxDB")),
            (Err(e), Err(_)) => {
                tracing::error!("writing the last points to InfluxDB: {e}");
                None
            }
        },
        Some(Err(_)) => anyhow::bail!("the InfluxDB sink is still in use after the run (a bug)"),
        None => None,
    };
    let run = result?;
    if file.is_none()
        && let Err(e) = crate::source::kafka::commit_positions(&options.reader, &run.positions, Duration::from_secs(10))
    {
        tracing::warn!("{e}");
    }
    let archive = archive.map(|_| {
        let per_worker = archive_stats.lock().expect("archive stats lock");
        crate::metrics::sum_archive(&per_worker)
    });
    Ok(Summary { run, influx: influx_stats, archive, elapsed: started.elapsed() })
}

/// Logs the run's progress every few seconds.
struct Reporter {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Reporter {
    fn start(counters: Arc<RunCounters>, influx: Option<Arc<InfluxSink>>, interrupted: Arc<AtomicBool>) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let thread = std::thread::spawn(move || {
            let every = Duration::from_secs(5);
            let mut last = (Instant::now(), 0u64);
            let mut stopping_since: Option<Instant> = None;
            while !s.load(Ordering::Relaxed) {
                std::thread::park_timeout(if stopping_since.is_some() { Duration::from_millis(200) } else { every });
                if s.load(Ordering::Relaxed) {
                    break;
                }
                if interrupted.load(Ordering::Relaxed) {
                    // Stopping: workers hand their last points to InfluxDB.
                    // If it is down they would wait for it for ever; after a
                    // grace period the sink gets `close_timeout_ms` more,
                    // then gives up (and says how many points it lost).
                    let since = *stopping_since.get_or_insert_with(Instant::now);
                    if since.elapsed() >= Duration::from_secs(5)
                        && let Some(sink) = &influx
                    {
                        tracing::warn!(
                            "stopping: InfluxDB has not taken the last points yet; giving it close_timeout_ms more"
                        );
                        sink.begin_close();
                        break;
                    }
                    continue;
                }
                let c = &counters.source;
                let records = c.records.load(Ordering::Relaxed);
                let rate = (records - last.1) as f64 / last.0.elapsed().as_secs_f64().max(1e-9);
                last = (Instant::now(), records);
                let watermark = counters.watermark.load(Ordering::Relaxed);
                let influx = influx.as_ref().map(|i| {
                    let s = i.stats();
                    format!(", influx: {} points written, {} buffered", s.points_written, s.buffered_points)
                });
                tracing::info!(
                    "{records} records ({rate:.0}/s), {} trades, {} malformed, {} late, {} outputs, watermark {}{}",
                    c.trades.load(Ordering::Relaxed),
                    c.malformed.load(Ordering::Relaxed),
                    c.late.load(Ordering::Relaxed),
                    counters.samples_out.load(Ordering::Relaxed),
                    format_ms(watermark),
                    influx.unwrap_or_default(),
                );
            }
        });
        Reporter { stop, thread: Some(thread) }
    }

    fn stop(mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            t.thread().unpark();
            let _ = t.join();
        }
    }
}

/// An event time for people: RFC 3339 in UTC, or `none yet`.
pub fn format_ms(ms: i64) -> String {
    if ms == i64::MIN {
        return "none yet".into();
    }
    if ms == i64::MAX {
        return "end of input".into();
    }
    let secs = ms.div_euclid(1000);
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let (y, m, d) = civil_from_days(days);
    format!("{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z", rem / 3600, rem % 3600 / 60, rem % 60, ms.rem_euclid(1000))
}

/// Days since 1970-01-01 to (year, month, day), proleptic Gregorian
/// (Howard Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

/// A worker's InfluxDB writer, timing how long it waits on a full buffer.
struct InfluxWorker {
    writer: InfluxWriter,
    counters: Arc<RunCounters>,
    /// Time each write (`tickfold bench`).
    timed: bool,
    /// Per-sample writes' waits not yet taken by the fanout.
    waited_ns: u64,
}

impl InfluxWorker {
    /// Hands the worker's lines to the sink's thread; blocks while its
    /// buffer is full (back-pressure), which is timed.
    fn hand_over(&mut self) -> Result<(), SinkError> {
        let started = Instant::now();
        let result = self.writer.hand_over().map_err(|e| SinkError::new("influx", e));
        let waited = started.elapsed().as_nanos() as u64;
        self.counters.times.sink_wait_ns.fetch_add(waited, Ordering::Relaxed);
        result
    }
}

impl SinkWriter for InfluxWorker {
    fn write(
        &mut self,
        series: &str,
        fields: &[String],
        symbol: &str,
        ts: i64,
        values: &[f64],
    ) -> Result<(), SinkError> {
        // The writer hands over by itself when its batch is full, which may
        // wait; when profiling, a write that long counts as waiting.
        let started = self.timed.then(Instant::now);
        let result = crate::exec::OutputWriter::write(&mut self.writer, series, fields, symbol, ts, values)
            .map_err(|e| SinkError::new("influx", e));
        if let Some(took) = started.map(|s| s.elapsed())
            && took > Duration::from_micros(50)
        {
            self.counters.times.sink_wait_ns.fetch_add(took.as_nanos() as u64, Ordering::Relaxed);
            self.waited_ns += took.as_nanos() as u64;
        }
        result
    }

    fn take_wait_ns(&mut self) -> u64 {
        std::mem::take(&mut self.waited_ns)
    }

    fn advance(&mut self, _: i64) -> Result<(), SinkError> {
        self.hand_over()
    }

    fn finish(&mut self) -> Result<(), SinkError> {
        self.hand_over()
    }

    fn batch_done(&mut self) -> Result<(), SinkError> {
        self.hand_over()
    }

    fn checkpoint(&mut self, _: &mut crate::sink::SinkCut) -> Result<(), SinkError> {
        // The sink's thread writes it; the checkpoint waits for that.
        self.hand_over()
    }
}

/// A worker's archive writer, publishing its counts as it goes.
struct ArchiveWorker {
    writer: ArchiveWriter,
    worker: usize,
    stats: Arc<Mutex<Vec<ArchiveStats>>>,
    /// The host is stopping: stop retrying a failing write.
    interrupted: Arc<AtomicBool>,
}

/// The longest wait between two tries of a failing archive write.
const ARCHIVE_RETRY_MAX: Duration = Duration::from_secs(2);

impl ArchiveWorker {
    fn publish(&self) {
        self.stats.lock().expect("archive stats lock")[self.worker] = self.writer.stats();
    }

    /// Runs `op`, retrying while the file system refuses (a full disk, a
    /// permission): the rows stay buffered, and this worker, and through
    /// the sources' in-flight bound the whole pipeline, waits until there
    /// is room. Nothing is dropped and no half-written file is left (a
    /// failed file's temp file is removed). A stop ends the wait with the
    /// error: the next run replays from the last checkpoint.
    fn retrying<T>(
        &mut self,
        mut op: impl FnMut(&mut ArchiveWriter) -> Result<T, ArchiveError>,
    ) -> Result<T, SinkError> {
        let mut failing: Option<(Instant, Instant)> = None;
        let mut pause = Duration::from_millis(50);
        loop {
            let result = op(&mut self.writer);
            self.publish();
            match result {
                Ok(v) => {
                    if let Some((since, _)) = failing {
                        tracing::info!(
                            worker = self.worker,
                            "archive: writing again after {:.1} s of failed writes",
                            since.elapsed().as_secs_f64()
                        );
                    }
                    return Ok(v);
                }
                Err(e) if e.is_retryable() && !self.interrupted.load(Ordering::Relaxed) => {
                    let now = Instant::now();
                    match &mut failing {
                        None => {
                            tracing::error!(
                                worker = self.worker,
                                "archive: {e}; retrying until it succeeds: this worker waits meanwhile, and nothing is dropped"
                            );
                            failing = Some((now, now));
                        }
                        Some((since, said)) if now.duration_since(*said) >= Duration::from_secs(30) => {
                            tracing::error!(
                                worker = self.worker,
                                "archive: still failing after {:.0} s: {e}",
                                now.duration_since(*since).as_secs_f64()
                            );
                            *said = now;
                        }
                        Some(_) => {}
                    }
                    std::thread::sleep(pause);
                    pause = (pause * 2).min(ARCHIVE_RETRY_MAX);
                }
                Err(e) => return Err(SinkError::new("archive", e)),
            }
        }
    }
}

impl SinkWriter for ArchiveWorker {
    fn write(
        &mut self,
        series: &str,
        fields: &[String],
        symbol: &str,
        ts: i64,
        values: &[f64],
    ) -> Result<(), SinkError> {
        // Buffers only: files are written by `advance`, `finish` and
        // `checkpoint`.
        self.writer.write(series, fields, symbol, ts, values).map_err(|e| SinkError::new("archive", e))
    }

    fn write_input(&mut self, series: &str, fields: &[String], row: &Row) -> Result<(), SinkError> {
        self.writer
            .write_raw(series, fields, &row.key, row.ts, &row.values, row.partition, row.offset)
            .map_err(|e| SinkError::new("archive", e))
    }

    fn advance(&mut self, watermark: i64) -> Result<(), SinkError> {
        // A failed `advance` keeps the unwritten buckets: calling it again
        // retries them under the same names.
        self.retrying(|w| w.advance(watermark))
    }

    fn finish(&mut self) -> Result<(), SinkError> {
        self.retrying(ArchiveWriter::finish)
    }

    fn batch_done(&mut self) -> Result<(), SinkError> {
        // Full buckets go at once, not at the next move of the watermark.
        self.retrying(ArchiveWriter::write_due)
    }

    fn checkpoint(&mut self, cut: &mut crate::sink::SinkCut) -> Result<(), SinkError> {
        // Buckets written by a failed try are empty on the next, which
        // then reports their parts as they stand.
        cut.archive = Some(self.retrying(ArchiveWriter::checkpoint)?);
        Ok(())
    }

    fn restore(&mut self, cut: &crate::sink::SinkCut) -> Result<(), SinkError> {
        match &cut.archive {
            Some(archive) => self.writer.restore(archive).map_err(|e| SinkError::new("archive", e)),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::format_ms;

    #[test]
    fn event_times_read_as_utc() {
        assert_eq!(format_ms(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(format_ms(1_700_000_000_123), "2023-11-14T22:13:20.123Z");
        assert_eq!(format_ms(951_782_400_000), "2000-02-29T00:00:00.000Z");
        assert_eq!(format_ms(-1), "1969-12-31T23:59:59.999Z");
        assert_eq!(format_ms(i64::MIN), "none yet");
    }
}
