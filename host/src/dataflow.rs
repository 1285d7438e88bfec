//! The timely dataflow: samples from a source, exchanged by key among the
//! workers, through each worker's plugin chain, to an output.
//!
//! Timely timestamps are event time. A source decides lateness (a row below
//! its watermark on arrival is late, counted and left out), sends each chunk
//! at the watermark it had when it read it (so there are as few distinct
//! timely times as chunks, not as samples), and then holds its capability at
//! the new watermark. The frontier a plugin chain sees is therefore the
//! source's watermark: when it passes a time, every row sent at that time
//! has arrived, and the chain's watermark moves to the frontier.
//!
//! Rows are exchanged by a hash of their key, so each key lives on exactly
//! one worker, and its rows arrive there in the order the source read them:
//! each worker's chain sees what `exec` would have seen for its keys.
//!
//! Today the source is a file (`tickfold replay`); Kafka partitions, one
//! reader per partition spread over the workers, come next (issue 4).

use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use timely::dataflow::channels::pact::Exchange;
use timely::dataflow::operators::Operator;
use timely::dataflow::operators::generic::operator::source;

use crate::exec::{Chain, ExecError, OutputWriter};
use crate::plugin::{LoadedPlugin, Param};
use crate::source::file::{FileError, FileSource};

/// A row on its way from a source to a plugin chain: key, event time, fields.
type Row = (String, i64, Vec<f64>);

/// What went wrong in a dataflow run.
#[derive(Debug, thiserror::Error)]
pub enum DataflowError {
    /// The input could not be read.
    #[error(transparent)]
    Source(#[from] FileError),
    /// A plugin chain failed (or could not be wired).
    #[error(transparent)]
    Chain(#[from] ExecError),
    /// Timely could not start its workers.
    #[error("starting {workers} workers: {reason}")]
    Workers { workers: usize, reason: String },
}

/// How to run a replay.
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

/// Counts from a run.
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
pub type SharedOutput = Arc<Mutex<Box<dyn OutputWriter + Send>>>;

/// Runs the plugin chain over `input` on `options.workers` threads, writing
/// outputs to `out`. The same chain, parameters and watermark lag give the
/// same samples as `tickfold exec` (per key in the same order; keys
/// interleave differently).
pub fn replay(
    input: &Path,
    plugins: &[LoadedPlugin],
    params: &[Vec<Param>],
    options: &ReplayOptions,
    out: SharedOutput,
) -> Result<ReplayStats, DataflowError> {
    // The chain is wired to the file's fields; read them once up front.
    let fields = FileSource::open(input, 1)?.fields().to_vec();
    let input: PathBuf = input.to_path_buf();
    let (plugins, params, options) = (plugins.to_vec(), params.to_vec(), options.clone());
    let rows_in = Arc::new(AtomicU64::new(0));
    let late = Arc::new(AtomicU64::new(0));
    let samples_out = Arc::new(AtomicU64::new(0));
    let failure: Arc<Mutex<Option<DataflowError>>> = Arc::new(Mutex::new(None));
    let workers = options.workers.max(1);

    let (r, l, s, f) = (rows_in.clone(), late.clone(), samples_out.clone(), failure.clone());
    let guards = timely::execute(timely::Config::process(workers), move |worker| {
        let index = worker.index();
        let (rows_in, late, samples_out, failure) = (r.clone(), l.clone(), s.clone(), f.clone());
        let fail = move |e: DataflowError| {
            failure.lock().expect("failure lock").get_or_insert(e);
        };
        let chain = Chain::open(&plugins, &params, &fields, 0, options.report_all);
        let mut chain = match chain {
            Ok(c) => Some(c),
            Err(e) => {
                fail(e.into());
                None
            }
        };
        let (input, lag, batch_rows) = (input.clone(), options.watermark_lag_ms, options.batch_rows);
        let fail_source = fail.clone();
        let out = out.clone();
        worker.dataflow::<i64, _, _>(move |scope| {
            let rows = source(scope, &format!("FileSource({})", input.display()), |capability, info| {
                let activator = scope.activator_for(info.address);
                // Worker 0 reads the file; the others have no rows to send
                // and let their capability go at once.
                let mut reader = None;
                if index == 0 {
                    match FileSource::open(&input, batch_rows) {
                        Ok(r) => reader = Some(r),
                        Err(e) => fail_source(e.into()),
                    }
                }
                // Held at the source's watermark; released at the end of
                // the file, which lets every window close.
                let mut capability = reader.is_some().then_some(capability);
                let mut max_ts = i64::MIN;
                move |output| {
                    let (Some(cap), Some(file)) = (capability.as_mut(), reader.as_mut()) else {
                        capability = None;
                        return;
                    };
                    match file.next_chunk() {
                        Ok(Some(chunk)) => {
                            let mut session = output.session(&cap);
                            for i in 0..chunk.len() {
                                rows_in.fetch_add(1, Ordering::Relaxed);
                                let ts = chunk.ts[i];
                                if ts < max_ts.saturating_sub(lag) {
                                    late.fetch_add(1, Ordering::Relaxed);
                                    continue;
                                }
                                max_ts = max_ts.max(ts);
                                let values = chunk.fields.iter().map(|c| c[i]).collect();
                                session.give((chunk.symbols[i].clone(), ts, values));
                            }
                            drop(session);
                            let watermark = max_ts.saturating_sub(lag);
                            if watermark > *cap.time() {
                                cap.downgrade(&watermark);
                            }
                            activator.activate();
                        }
                        Ok(None) => capability = None,
                        Err(e) => {
                            fail_source(e.into());
                            capability = None;
                        }
                    }
                }
            });
            let by_key = Exchange::new(|row: &Row| key_hash(&row.0));
            let mut stash: std::collections::BTreeMap<i64, Vec<Vec<Row>>> = Default::default();
            let mut watermark = i64::MIN;
            rows.container::<Vec<Row>>().sink(by_key, "PluginChain", move |(input, frontier)| {
                let Some(chain) = chain.as_mut() else {
                    // The chain failed to open (the run reports it): drain
                    // the input rather than stash a whole file for nothing.
                    input.for_each(|_, _| {});
                    return;
                };
                input.for_each(|stamp, data| {
                    // Our sources send under a capability, so every message
                    // has a time; one without would claim no progress, and is
                    // due at once.
                    let time = stamp.least().copied().unwrap_or(i64::MIN);
                    stash.entry(time).or_default().push(std::mem::take(data));
                });

                // Everything stamped below the frontier has arrived.
                let complete = frontier.frontier().iter().next().copied().unwrap_or(i64::MAX);
                let mut sink = Counted { out: &out, written: &samples_out };
                while let Some(entry) = stash.first_entry() {
                    if *entry.key() >= complete {
                        break;
                    }
                    for rows in entry.remove() {
                        let fed =
                            chain.feed(rows.iter().map(|(k, ts, v)| (k.as_str(), *ts, v.iter().copied())), &mut sink);
                        if let Err(e) = fed {
                            fail(e.into());
                            return;
                        }
                    }
                }
                if complete > watermark {
                    watermark = complete;
                    if let Err(e) = chain.advance(watermark, &mut sink) {
                        fail(e.into());
                    }
                }
            });
        });
    })
    .map_err(|reason| DataflowError::Workers { workers, reason })?;
    for result in guards.join() {
        result.map_err(|reason| DataflowError::Workers { workers, reason })?;
    }
    if let Some(e) = failure.lock().expect("failure lock").take() {
        return Err(e);
    }
    Ok(ReplayStats {
        rows_in: rows_in.load(Ordering::Relaxed),
        late: late.load(Ordering::Relaxed),
        samples_out: samples_out.load(Ordering::Relaxed),
    })
}

/// The worker a key goes to is a pure function of the key.
fn key_hash(key: &str) -> u64 {
    // Fixed keys, not `RandomState`: every worker must route a key alike.
    let mut h = std::collections::hash_map::DefaultHasher::new();
    key.hash(&mut h);
    h.finish()
}

/// Writes to the shared output and counts what it wrote.
struct Counted<'a> {
    out: &'a SharedOutput,
    written: &'a AtomicU64,
}

impl OutputWriter for Counted<'_> {
    fn write(&mut self, series: &str, fields: &[String], symbol: &str, ts: i64, values: &[f64]) -> std::io::Result<()> {
        self.written.fetch_add(1, Ordering::Relaxed);
        self.out.lock().expect("output lock").write(series, fields, symbol, ts, values)
    }

    fn finish(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
