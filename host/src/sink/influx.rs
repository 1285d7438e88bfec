//! The InfluxDB sink: samples as line protocol, batched, gzipped and posted
//! by `connections` writer threads (lanes) that retry until every line is
//! written.
//!
//! Each dataflow worker holds an [`InfluxWriter`] and formats its samples
//! straight into a local buffer per lane, with no lock per sample. A
//! sample's lane is fixed by a hash of its series and symbol, so each
//! series is posted in the order it was made, while the lanes' requests
//! are in flight at once (InfluxDB parses and indexes them in parallel).
//! Full buffers (or, at the latest, the dataflow's
//! [`InfluxWriter::hand_over`] when its frontier moves) go to their lane's
//! thread, which gathers them into requests of `batch_points` points and
//! posts them.
//!
//! Delivery:
//! - Nothing is dropped because the server is down, slow or misconfigured:
//!   the same request is retried with exponential backoff for as long as
//!   it takes. Meanwhile at most `buffer_points` points wait (shared out
//!   among the lanes), and writers that would go past that block
//!   (back-pressure) until the server is back.
//! - Only the server's own verdict drops points: a 400 (say, a field type
//!   conflict) cannot be fixed by retrying, so its points are counted as
//!   rejected and logged with the server's message.
//! - InfluxDB overwrites a point with the same measurement, tags and time,
//!   so writing a point twice (a retry after a lost answer, a replay after a
//!   crash) leaves the same contents.
//!
//! We speak HTTP ourselves instead of using the `influxdb2` crate: it only
//! speaks the v2 API (we need v1 too, for InfluxDB 1.x), cannot gzip
//! request bodies, and builds a `DataPoint` object per point where we
//! format each sample straight into the request text.
//!
//! | file | what it owns |
//! | --- | --- |
//! | `influx.rs` | the sink, the per-worker writer, the state they share |
//! | `influx/config.rs` | `[sinks.influx]`, validated and resolved |
//! | `influx/line.rs` | line protocol: escaping, numbers, what cannot be written |
//! | `influx/poster.rs` | the writer thread: batches, gzip, HTTP, retries |

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError, mpsc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use reqwest::blocking::Client;
use tracing::{error, info, warn};

mod coalesce;
mod config;
mod line;
mod poster;
#[cfg(test)]
mod tests;

use coalesce::Coalescer;
pub use config::{InfluxApi, InfluxConfig, Secret};
use line::{Skip, TagSet, push_line};
use poster::Poster;

/// What went wrong in the InfluxDB sink, and what to do about it.
#[derive(Debug, thiserror::Error)]
pub enum InfluxError {
    /// A key of `[sinks.influx]` is missing, misplaced or out of range.
    #[error("[sinks.influx] `{key}` {problem}")]
    Config {
        /// The key to fix.
        key: &'static str,
        /// What is wrong with it.
        problem: String,
    },
    /// The HTTP client could not be set up (TLS roots, system resources).
    #[error("the InfluxDB sink cannot set up its HTTP client: {0}")]
    Client(String),
    /// The writer thread could not be started.
    #[error("the InfluxDB sink cannot start its writer thread: {0}")]
    Spawn(#[source] std::io::Error),
    /// Points were handed over after the sink was closed.
    #[error(
        "{points} points were handed to the InfluxDB sink after it closed, and were not written; finish every writer before closing the sink"
    )]
    Closed {
        /// Points not written.
        points: u64,
    },
    /// The writer thread died (a bug: see the panic in the log).
    #[error(
        "the InfluxDB sink's writer thread stopped unexpectedly (see the panic above); {points} points were not written: restart from the last checkpoint"
    )]
    Stopped {
        /// Points handed over and not written.
        points: u64,
    },
    /// Closing ran out of time before everything was written.
    #[error(
        "closing the InfluxDB sink: {points} points were still not written after close_timeout_ms ({timeout_ms} ms); last error: {last_error}. Fix the server, then replay from the last checkpoint"
    )]
    Unwritten {
        /// Points not written.
        points: u64,
        /// `close_timeout_ms`.
        timeout_ms: u64,
        /// The last failure seen.
        last_error: String,
    },
}

/// Counts since the sink started, as [`InfluxSink::stats`] saw them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct InfluxStats {
    /// Points the server accepted.
    pub points_written: u64,
    /// Requests the server accepted.
    pub batches_written: u64,
    /// Request bodies sent (after gzip), counting every attempt that got an
    /// answer.
    pub bytes_sent: u64,
    /// Failed attempts that were (or are being) retried.
    pub retries: u64,
    /// Points the server refused (400: e.g. a field type conflict) or that
    /// were too large to send on their own (413); not retried.
    pub points_rejected: u64,
    /// Points left out because none of their fields was finite (line
    /// protocol has no NaN or infinity; such fields alone are dropped). A
    /// point without a finite field merged into a held one of its time
    /// counts in `points_coalesced` instead.
    pub points_skipped_non_finite: u64,
    /// Points left out because line protocol cannot carry their names or
    /// time: a line break in a name, a backslash at its end or before `,`,
    /// `=` or a space, a measurement starting with `#`, or a time outside
    /// InfluxDB's range (years 1677 to 2262).
    pub points_skipped_unwritable: u64,
    /// Points not posted because a later point of the same series, symbol
    /// and time was merged with them (`coalesce`): the server would have
    /// overwritten them.
    pub points_coalesced: u64,
    /// Points handed over and not yet written or rejected.
    pub buffered_points: u64,
    /// The most points the buffer holds before writers wait.
    pub buffer_capacity: u64,
    /// Answered write requests per latency bucket ([`WRITE_BUCKETS_MS`],
    /// then +Inf), not cumulative.
    pub write_buckets: Vec<u64>,
    /// Time in answered write requests, ns.
    pub write_ns: u64,
    /// The last failure, if any (kept after recovery).
    pub last_error: Option<String>,
}

impl InfluxStats {
    /// Adds another connection's counts.
    fn add(&mut self, other: InfluxStats) {
        self.points_written += other.points_written;
        self.batches_written += other.batches_written;
        self.bytes_sent += other.bytes_sent;
        self.retries += other.retries;
        self.points_rejected += other.points_rejected;
        self.points_skipped_non_finite += other.points_skipped_non_finite;
        self.points_skipped_unwritable += other.points_skipped_unwritable;
        self.points_coalesced += other.points_coalesced;
        self.buffered_points += other.buffered_points;
        self.buffer_capacity += other.buffer_capacity;
        if self.write_buckets.len() < other.write_buckets.len() {
            self.write_buckets.resize(other.write_buckets.len(), 0);
        }
        for (total, n) in self.write_buckets.iter_mut().zip(&other.write_buckets) {
            *total += n;
        }
        self.write_ns += other.write_ns;
        // A lane still holding points says why; otherwise any lane's.
        if self.last_error.is_none() || (other.buffered_points > 0 && other.last_error.is_some()) {
            self.last_error = other.last_error;
        }
    }
}

/// The InfluxDB sink: `connections` writer threads (lanes), fed by
/// [`InfluxWriter`]s; each series goes to one lane, so its points are
/// written in order.
///
/// Close it with [`InfluxSink::close`] to learn whether everything was
/// written. Dropping it instead lets the threads write what is left (for up
/// to `close_timeout_ms`) in the background.
pub struct InfluxSink {
    lanes: Vec<Lane>,
    tags: Arc<TagSet>,
    batch_points: usize,
    flush_interval: Duration,
    close_timeout_ms: u64,
    coalesce: bool,
}

/// One connection's writer thread and the state it shares with writers.
struct Lane {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

impl InfluxSink {
    /// Validates `config` and starts the writer threads. Nothing is sent
    /// until points are written: an unreachable server is not an error here
    /// (writes wait for it).
    pub fn start(config: InfluxConfig) -> Result<InfluxSink, InfluxError> {
        let endpoint = config.resolve()?;
        let tags = Arc::new(TagSet::new(&config.tags));
        info!(
            url = %endpoint.base, api = config.api.name(), target = %endpoint.target,
            "InfluxDB sink started: writing batches of up to {} points over {} connection(s)", config.batch_points, config.connections
        );
        let mut sink = InfluxSink {
            lanes: Vec::with_capacity(config.connections),
            tags,
            batch_points: config.batch_points,
            flush_interval: Duration::from_millis(config.flush_interval_ms),
            close_timeout_ms: config.close_timeout_ms,
            coalesce: config.coalesce,
        };
        for lane in 0..config.connections {
            // On error, dropping `sink` stops the lanes already started.
            sink.lanes.push(Lane::start(&config, &endpoint, lane)?);
        }
        Ok(sink)
    }

    /// A new writer, for one dataflow worker.
    pub fn writer(&self) -> InfluxWriter {
        InfluxWriter {
            lanes: self
                .lanes
                .iter()
                .map(|lane| LaneBuffer {
                    shared: lane.shared.clone(),
                    out: Lines { tags: self.tags.clone(), lines: String::new(), points: 0, warned_unwritable: false },
                    held: Coalescer::default(),
                    since: Instant::now(),
                })
                .collect(),
            points: 0,
            since: Instant::now(),
            batch_points: self.batch_points,
            flush_interval: self.flush_interval,
            coalesce: self.coalesce,
        }
    }

    /// Blocks until every point handed over before the call has been
    /// written (or rejected by the server: see [`InfluxStats`]), posting
    /// them without waiting for the flush interval. While the server is
    /// down this waits for it, as writers do.
    pub fn sync(&self) -> Result<(), InfluxError> {
        while !self.sync_within(Duration::from_secs(3600))? {}
        Ok(())
    }

    /// [`sync`](Self::sync), waiting at most `limit`: true when every point
    /// handed over before the call is settled, false if some are not yet
    /// (the server is down or slow; they stay buffered and will be
    /// written).
    pub fn sync_within(&self, limit: Duration) -> Result<bool, InfluxError> {
        let deadline = Instant::now() + limit;
        // Every lane is told first, so they post at once, in parallel.
        let targets: Vec<u64> = self.lanes.iter().map(|lane| lane.shared.flush_all()).collect();
        for (lane, target) in self.lanes.iter().zip(targets) {
            if !lane.shared.settled_by(target, deadline)? {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// How long [`close`](Self::close) keeps trying.
    pub fn close_timeout(&self) -> Duration {
        Duration::from_millis(self.close_timeout_ms)
    }

    /// The counts so far, over all connections.
    pub fn stats(&self) -> InfluxStats {
        let mut total = InfluxStats::default();
        for lane in &self.lanes {
            total.add(lane.shared.stats());
        }
        total
    }

    /// Writes everything handed over (trying for at most
    /// `close_timeout_ms`) and stops the writer threads. Finish every
    /// writer first: points handed over after this are refused.
    pub fn close(mut self) -> Result<InfluxStats, InfluxError> {
        self.shut();
        let mut panicked = false;
        for lane in &mut self.lanes {
            let thread = lane.thread.take().expect("only close and drop take the threads");
            panicked |= thread.join().is_err();
        }
        let stats = self.stats();
        if panicked {
            return Err(InfluxError::Stopped { points: stats.buffered_points });
        }
        if stats.buffered_points > 0 {
            return Err(InfluxError::Unwritten {
                points: stats.buffered_points,
                timeout_ms: self.close_timeout_ms,
                last_error: stats.last_error.unwrap_or_else(|| "none".into()),
            });
        }
        info!(
            points_written = stats.points_written,
            points_rejected = stats.points_rejected,
            batches_written = stats.batches_written,
            "InfluxDB sink closed"
        );
        Ok(stats)
    }

    /// Starts the close deadline without closing: from now on the writer
    /// threads post what they get without waiting for the flush interval
    /// and retry for at most `close_timeout_ms` from now, then give up,
    /// which also releases writers blocked on a full buffer (their points
    /// are reported as not written). Writers may still hand over points
    /// until [`close`](Self::close): the threads only stop, with nothing
    /// left, once closed. For a host that must stop while the server is
    /// down.
    pub fn begin_close(&self) {
        let deadline = Instant::now() + Duration::from_millis(self.close_timeout_ms);
        for lane in &self.lanes {
            let mut state = lane.shared.lock();
            if state.closing.is_none() {
                state.closing = Some(deadline);
            }
            drop(state);
            lane.shared.to_thread.notify_one();
        }
    }

    /// No writer hands over anything more: the threads write what they
    /// have (within the close deadline) and stop.
    fn shut(&self) {
        self.begin_close();
        for lane in &self.lanes {
            lane.shared.lock().closed = true;
            lane.shared.to_thread.notify_one();
        }
    }
}

impl Drop for InfluxSink {
    fn drop(&mut self) {
        if self.lanes.iter().any(|lane| lane.thread.is_some()) {
            self.shut();
        }
    }
}

impl Lane {
    /// Starts lane `index`'s writer thread.
    fn start(config: &InfluxConfig, endpoint: &config::Endpoint, index: usize) -> Result<Lane, InfluxError> {
        // The buffer is shared out: `resolve` checked that a batch fits.
        let (share, rest) = (config.buffer_points / config.connections, config.buffer_points % config.connections);
        let buffer_points = (share + usize::from(index < rest)) as u64;
        let shared = Arc::new(Shared {
            state: Mutex::new(State::default()),
            to_thread: Condvar::new(),
            to_writers: Condvar::new(),
            counters: Counters::default(),
            buffer_points,
            close_timeout_ms: config.close_timeout_ms,
        });
        let timeout = Duration::from_millis(config.timeout_ms);
        let (thread_shared, thread_config, endpoint) = (shared.clone(), config.clone(), endpoint.clone());
        let (ready_tx, ready_rx) = mpsc::sync_channel(1);
        let thread = std::thread::Builder::new()
            .name(if index == 0 { "influx-writer".into() } else { format!("influx-writer-{index}") })
            .spawn(move || {
                // The blocking client runs its own runtime, and may not be
                // built or dropped inside an async one: build it here, on a
                // thread that is ours, whatever thread calls `start`.
                let built = Client::builder()
                    .timeout(timeout)
                    // A redirected POST turns into a GET: better to report
                    // the 3xx as a wrong `url`.
                    .redirect(reqwest::redirect::Policy::none())
                    .user_agent(concat!("tickfold/", env!("CARGO_PKG_VERSION")))
                    .build();
                match built {
                    Ok(client) => {
                        let _ = ready_tx.send(Ok(()));
                        Poster::new(thread_shared, client, endpoint, &thread_config).run();
                    }
                    Err(e) => {
                        let _ = ready_tx.send(Err(InfluxError::Client(poster::error_chain(&e))));
                    }
                }
            })
            .map_err(InfluxError::Spawn)?;
        match ready_rx.recv() {
            Ok(Ok(())) => Ok(Lane { shared, thread: Some(thread) }),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(InfluxError::Client("the writer thread ended while building the client".into())),
        }
    }
}

/// One dataflow worker's writer: formats samples into a buffer per lane
/// and hands them to the lanes' threads when one holds `batch_points`
/// points, when the oldest line is `flush_interval_ms` old, or when told to.
///
/// Handing over blocks while a lane's buffer is full (back-pressure).
/// Dropping a writer hands over what it holds.
pub struct InfluxWriter {
    lanes: Vec<LaneBuffer>,
    /// Points in all lanes' buffers, formatted or held.
    points: usize,
    /// When the oldest point not handed over was written.
    since: Instant,
    batch_points: usize,
    flush_interval: Duration,
    /// Merge points of one series, symbol and time (`coalesce`).
    coalesce: bool,
}

/// A writer's points for one lane.
struct LaneBuffer {
    shared: Arc<Shared>,
    /// Formatted, not yet handed over.
    out: Lines,
    /// Points not yet formatted, one per series and symbol (`coalesce`).
    held: Coalescer,
    /// When this lane's oldest point not handed over was written: the
    /// thread posts a chunk once that is `flush_interval_ms` old.
    since: Instant,
}

/// Line protocol not yet handed over.
struct Lines {
    tags: Arc<TagSet>,
    /// Each ending in `\n`.
    lines: String,
    /// Points in `lines`.
    points: usize,
    warned_unwritable: bool,
}

impl Lines {
    /// Formats one point, or counts (in `counters`) why it cannot be.
    fn push(&mut self, counters: &Counters, series: &str, fields: &[String], symbol: &str, ts: i64, values: &[f64]) {
        match push_line(&mut self.lines, &self.tags, series, fields, symbol, ts, values) {
            Ok(()) => self.points += 1,
            Err(Skip::NonFinite) => {
                counters.points_skipped_non_finite.fetch_add(1, Ordering::Relaxed);
            }
            Err(Skip::Unwritable) => {
                counters.points_skipped_unwritable.fetch_add(1, Ordering::Relaxed);
                // Once per writer and lane: the counter tells the rest.
                if !std::mem::replace(&mut self.warned_unwritable, true) {
                    warn!(
                        series, symbol, ts, fields = ?fields,
                        "a point cannot be written as InfluxDB line protocol (a line break in a name, a backslash at its end or before `,`, `=` or a space, a measurement starting with `#`, or a time outside 1677-2262), so it is left out; further ones are only counted in points_skipped_unwritable"
                    );
                }
            }
        }
    }

    /// [`push`](Self::push) for a point the coalescer held.
    fn push_held(&mut self, counters: &Counters, p: &coalesce::Held) {
        self.push(counters, &p.series, &p.fields, &p.symbol, p.ts, &p.values);
    }
}

impl InfluxWriter {
    /// Sends the lines written so far to the lanes' threads, waiting while
    /// a lane already holds its share of `buffer_points` unwritten points.
    /// Call it when the worker's frontier moves, so that a quiet worker's
    /// last points do not wait for more.
    pub fn hand_over(&mut self) -> Result<(), InfluxError> {
        self.points = 0;
        let mut result = Ok(());
        for lane in &mut self.lanes {
            // Every lane gets its lines even if one refuses them.
            let handed = lane.hand_over();
            if result.is_ok() {
                result = handed;
            }
        }
        result
    }
}

/// The hash of a point's series and symbol: it picks the lane (the same on
/// every worker and in every run) and finds the point held for them.
fn route_hash(series: &str, symbol: &str) -> u64 {
    let mut hash = rustc_hash::FxHasher::default();
    std::hash::Hash::hash(&(series, symbol), &mut hash);
    std::hash::Hasher::finish(&hash)
}

impl LaneBuffer {
    /// Points formatted or held.
    fn pending(&self) -> usize {
        self.out.points + self.held.len()
    }

    /// Takes a point: held to be merged with others of its time, or
    /// formatted at once.
    #[allow(clippy::too_many_arguments)]
    fn put(
        &mut self,
        coalesce: bool,
        hash: u64,
        series: &str,
        fields: &[String],
        symbol: &str,
        ts: i64,
        values: &[f64],
    ) {
        let (out, counters) = (&mut self.out, &self.shared.counters);
        if coalesce {
            let put = self
                .held
                .put(hash, series, fields, symbol, ts, values, line::names_writable, |p| out.push_held(counters, p));
            if put != coalesce::Put::Direct {
                return;
            }
        }
        // Not merged (or names line protocol cannot carry): as it is.
        out.push(counters, series, fields, symbol, ts, values);
    }

    fn hand_over(&mut self) -> Result<(), InfluxError> {
        let (out, counters) = (&mut self.out, &self.shared.counters);
        self.held.drain(|p| out.push_held(counters, p));
        let merged = self.held.take_merged();
        if merged > 0 {
            counters.points_coalesced.fetch_add(merged, Ordering::Relaxed);
        }
        if self.out.points == 0 {
            return Ok(());
        }
        let points = std::mem::take(&mut self.out.points) as u64;
        let shared = &*self.shared;
        let mut state = shared.lock();
        while state.stopped.is_none() && state.handed - state.settled + points > shared.buffer_points {
            state = shared.to_writers.wait(state).unwrap_or_else(PoisonError::into_inner);
        }
        if let Some(stop) = state.stopped {
            let closed = state.closed;
            drop(state);
            self.out.lines.clear();
            return Err(match stop {
                Stop::Panicked => InfluxError::Stopped { points },
                Stop::GaveUp if !closed => InfluxError::Unwritten {
                    points,
                    timeout_ms: shared.close_timeout_ms,
                    last_error: shared.last_error().unwrap_or_else(|| "none".into()),
                },
                Stop::Closed | Stop::GaveUp => InfluxError::Closed { points },
            });
        }
        // Swap in an emptied buffer the thread gave back, keeping its capacity.
        let spare = state.spare.pop().unwrap_or_default();
        let lines = std::mem::replace(&mut self.out.lines, spare);
        state.queue.push_back(Chunk { lines, start: 0, points, since: self.since });
        state.handed += points;
        drop(state);
        shared.to_thread.notify_one();
        Ok(())
    }
}

impl crate::exec::OutputWriter for InfluxWriter {
    fn write(&mut self, series: &str, fields: &[String], symbol: &str, ts: i64, values: &[f64]) -> std::io::Result<()> {
        if self.points == 0 {
            self.since = Instant::now();
        }
        let hash = route_hash(series, symbol);
        let l = if self.lanes.len() == 1 { 0 } else { (hash % self.lanes.len() as u64) as usize };
        let lane = &mut self.lanes[l];
        let before = lane.pending();
        if before == 0 {
            lane.since = if self.points == 0 { self.since } else { Instant::now() };
        }
        lane.put(self.coalesce, hash, series, fields, symbol, ts, values);
        // Merging or formatting a displaced point never lowers the count.
        self.points += lane.pending() - before;
        if self.lanes[l].pending() >= self.batch_points {
            // A full batch goes now; the other lanes keep filling.
            self.points -= self.lanes[l].pending();
            self.lanes[l].hand_over().map_err(std::io::Error::other)?;
        }
        if self.points > 0 && self.since.elapsed() >= self.flush_interval {
            self.hand_over().map_err(std::io::Error::other)?;
        }
        Ok(())
    }

    fn finish(&mut self) -> std::io::Result<()> {
        self.hand_over().map_err(std::io::Error::other)
    }
}

impl Drop for InfluxWriter {
    fn drop(&mut self) {
        if let Err(e) = self.hand_over() {
            error!("{e}");
        }
    }
}

// ---------------------------------------------------------------------------
// What writers and the thread share

/// Lines one writer handed over.
struct Chunk {
    lines: String,
    /// Bytes of `lines` already taken into a request.
    start: usize,
    /// Points in `lines[start..]`.
    points: u64,
    /// When its oldest line was written.
    since: Instant,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Stop {
    /// Closed, everything written.
    Closed,
    /// Closed, and gave up at `close_timeout_ms`.
    GaveUp,
    /// The thread panicked.
    Panicked,
}

#[derive(Default)]
struct State {
    /// Handed over, not yet taken by the thread.
    queue: VecDeque<Chunk>,
    /// Points ever handed over. Counted under the same lock as the push
    /// onto `queue`, so counts and queue order agree: when `settled`
    /// reaches a value of `handed`, everything handed over before is done.
    handed: u64,
    /// Points written or rejected; the thread settles them in order.
    settled: u64,
    /// `sync` wants everything up to this count posted without waiting for
    /// the flush interval.
    flush_through: u64,
    /// When closing must be done by: set when the host starts stopping,
    /// which may be before the last writer has handed over its points.
    closing: Option<Instant>,
    /// [`InfluxSink::close`] was called: no writer hands over anything
    /// more, so the thread stops once it has nothing left.
    closed: bool,
    /// Why the thread stopped, once it has.
    stopped: Option<Stop>,
    /// Emptied line buffers the thread gives back, so writers reuse their
    /// capacity instead of growing new ones.
    spare: Vec<String>,
}

/// Enough spare buffers for a few workers, without hoarding memory.
const MAX_SPARE_BUFFERS: usize = 8;

/// Upper bounds of the write-latency buckets, in ms.
pub const WRITE_BUCKETS_MS: [u64; 10] = [1, 5, 10, 25, 50, 100, 250, 500, 1_000, 5_000];

#[derive(Default)]
struct Counters {
    /// Answered requests per latency bucket, and their total time.
    requests: [AtomicU64; WRITE_BUCKETS_MS.len() + 1],
    request_ns: AtomicU64,
    points_written: AtomicU64,
    batches_written: AtomicU64,
    bytes_sent: AtomicU64,
    retries: AtomicU64,
    points_rejected: AtomicU64,
    points_skipped_non_finite: AtomicU64,
    points_skipped_unwritable: AtomicU64,
    points_coalesced: AtomicU64,
    last_error: Mutex<Option<String>>,
}

impl Counters {
    fn record_request(&self, took: std::time::Duration) {
        let us = took.as_micros() as u64;
        let bucket = WRITE_BUCKETS_MS.iter().position(|&b| us <= b * 1_000).unwrap_or(WRITE_BUCKETS_MS.len());
        self.requests[bucket].fetch_add(1, Ordering::Relaxed);
        self.request_ns.fetch_add(took.as_nanos() as u64, Ordering::Relaxed);
    }
}

struct Shared {
    state: Mutex<State>,
    /// Wakes the thread: lines handed over, a sync, closing.
    to_thread: Condvar,
    /// Wakes writers and `sync`: points settled, the thread stopped.
    to_writers: Condvar,
    counters: Counters,
    buffer_points: u64,
    /// `close_timeout_ms`, for the error writers get once the thread gave up.
    close_timeout_ms: u64,
}

impl Shared {
    /// The state; a panic elsewhere leaves it consistent (counts and a
    /// queue, each updated in one step), so a poisoned lock is used as is.
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn stats(&self) -> InfluxStats {
        let c = &self.counters;
        let buffered_points = {
            let state = self.lock();
            state.handed - state.settled
        };
        InfluxStats {
            points_written: c.points_written.load(Ordering::Relaxed),
            batches_written: c.batches_written.load(Ordering::Relaxed),
            bytes_sent: c.bytes_sent.load(Ordering::Relaxed),
            retries: c.retries.load(Ordering::Relaxed),
            points_rejected: c.points_rejected.load(Ordering::Relaxed),
            points_skipped_non_finite: c.points_skipped_non_finite.load(Ordering::Relaxed),
            points_skipped_unwritable: c.points_skipped_unwritable.load(Ordering::Relaxed),
            points_coalesced: c.points_coalesced.load(Ordering::Relaxed),
            buffered_points,
            buffer_capacity: self.buffer_points,
            write_buckets: c.requests.iter().map(|b| b.load(Ordering::Relaxed)).collect(),
            write_ns: c.request_ns.load(Ordering::Relaxed),
            last_error: self.last_error(),
        }
    }

    /// Asks the thread to post everything handed over so far without
    /// waiting for the flush interval; returns the count to wait for.
    fn flush_all(&self) -> u64 {
        let mut state = self.lock();
        let target = state.handed;
        state.flush_through = state.flush_through.max(target);
        drop(state);
        self.to_thread.notify_one();
        target
    }

    /// Waits until `target` points are settled, or `deadline` (false).
    fn settled_by(&self, target: u64, deadline: Instant) -> Result<bool, InfluxError> {
        let mut state = self.lock();
        while state.settled < target {
            if state.stopped.is_some() {
                return Err(InfluxError::Stopped { points: state.handed - state.settled });
            }
            let now = Instant::now();
            if now >= deadline {
                return Ok(false);
            }
            state = self.to_writers.wait_timeout(state, deadline - now).unwrap_or_else(PoisonError::into_inner).0;
        }
        Ok(true)
    }

    fn last_error(&self) -> Option<String> {
        self.counters.last_error.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    fn set_last_error(&self, message: &str) {
        *self.counters.last_error.lock().unwrap_or_else(PoisonError::into_inner) = Some(message.to_string());
    }
}

/// Marks the sink stopped when the thread ends, however it ends, so that
/// no writer or `sync` waits for it forever.
struct StopGuard(Arc<Shared>);

impl Drop for StopGuard {
    fn drop(&mut self) {
        let mut state = self.0.lock();
        if state.stopped.is_none() {
            state.stopped = Some(if std::thread::panicking() { Stop::Panicked } else { Stop::Closed });
        }
        drop(state);
        self.0.to_writers.notify_all();
    }
}
