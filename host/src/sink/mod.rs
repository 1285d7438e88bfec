//! Where series go once the plugins have made them.
//!
//! | file | what it owns |
//! | --- | --- |
//! | `influx` | InfluxDB (v1 and v2 write APIs): line protocol, batches, gzip, retries, back-pressure |
//! | `archive.rs` | the Parquet archive: raw trades and every output series, in Hive-style files a replay overwrites |
//!
//! Each worker of the dataflow holds its own writer on each sink and hands
//! it samples as its plugin chain emits them (see [`crate::exec::OutputWriter`]),
//! then tells it when the worker's frontier (the watermark) moves on.

pub mod archive;
pub mod influx;

use crate::source::Row;

/// What went wrong in a sink: which one, and why (with what to do).
#[derive(Debug, thiserror::Error)]
#[error("{sink}: {message}")]
pub struct SinkError {
    /// `influx`, `archive`, …
    pub sink: &'static str,
    pub message: String,
}

impl SinkError {
    /// A failure of `sink`.
    pub fn new(sink: &'static str, error: impl std::fmt::Display) -> Self {
        SinkError { sink, message: error.to_string() }
    }
}

/// What a worker's sinks need to take up from a checkpoint.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SinkCut {
    /// The archive's open buckets at the cut.
    pub archive: Option<archive::ArchiveCut>,
}

/// A worker's writer on one sink.
pub trait SinkWriter: Send {
    /// One output sample of series `series` (with these field names).
    fn write(
        &mut self,
        series: &str,
        fields: &[String],
        symbol: &str,
        ts: i64,
        values: &[f64],
    ) -> Result<(), SinkError>;

    /// One input row as the source read it (series `series`), for sinks
    /// that keep raw data. Others ignore it.
    fn write_input(&mut self, _series: &str, _fields: &[String], _row: &Row) -> Result<(), SinkError> {
        Ok(())
    }

    /// The worker's watermark moved to `watermark`; the worker has handled
    /// everything its frontier let through.
    fn advance(&mut self, watermark: i64) -> Result<(), SinkError>;

    /// The worker's stream ended (or the host is stopping): hand on
    /// everything buffered.
    fn finish(&mut self) -> Result<(), SinkError>;

    /// The worker is done with what it had to do for now: a sink that
    /// batches per worker hands its batch on (so per-trade outputs are not
    /// held until the watermark moves).
    fn batch_done(&mut self) -> Result<(), SinkError> {
        Ok(())
    }

    /// A checkpoint: write or hand on what is buffered, and record in
    /// `cut` what a restart needs.
    fn checkpoint(&mut self, _cut: &mut SinkCut) -> Result<(), SinkError> {
        Ok(())
    }

    /// Take up from checkpoint `cut`, before anything is written.
    fn restore(&mut self, _cut: &SinkCut) -> Result<(), SinkError> {
        Ok(())
    }

    /// When profiling: how long this sink's per-sample writes were blocked
    /// (back-pressure) since last asked, in ns.
    fn take_wait_ns(&mut self) -> u64 {
        0
    }
}

/// Every sink a worker writes to, as one output for its plugin chain.
#[derive(Default)]
pub struct Fanout {
    sinks: Vec<Box<dyn SinkWriter>>,
    /// Series kept out of each sink, by sink position.
    skip: Vec<Vec<String>>,
    /// Output samples written (to every sink).
    pub written: u64,
    /// Input rows handed to the sinks that keep raw data.
    pub inputs_written: u64,
    /// Time spent in the sinks since the owner last took it, in ns.
    pub busy_ns: u64,
    /// Also time per-sample writes (else only the batch-level calls): one
    /// in `TIME_ONE_IN` (32), scaled up, since clock reads are not free.
    pub timed: bool,
    /// Per-sample writes since the last timed one.
    untimed: u32,
}

/// When profiling, one per-sample write in this many is timed.
const TIME_ONE_IN: u32 = 32;

impl Fanout {
    /// Adds a sink that gets every series except `skip`.
    pub fn add(&mut self, sink: Box<dyn SinkWriter>, skip: Vec<String>) {
        self.sinks.push(sink);
        self.skip.push(skip);
    }

    /// Hands an input row to the sinks that keep raw data.
    pub fn write_input(&mut self, series: &str, fields: &[String], row: &Row) -> Result<(), SinkError> {
        let started = self.sample_clock();
        self.inputs_written += 1;
        for (sink, skip) in self.sinks.iter_mut().zip(&self.skip) {
            if !skip.iter().any(|s| s == series) {
                sink.write_input(series, fields, row)?;
            }
        }
        self.sampled(started);
        Ok(())
    }

    /// The start of a per-sample write to time, if this one is.
    fn sample_clock(&mut self) -> Option<std::time::Instant> {
        if !self.timed {
            return None;
        }
        self.untimed += 1;
        (self.untimed >= TIME_ONE_IN).then(|| {
            self.untimed = 0;
            std::time::Instant::now()
        })
    }

    /// Adds a per-sample write's time: waits exactly (a blocked write is
    /// rare and long, so sampling would make them noise), the rest scaled
    /// up from the sampled writes.
    fn sampled(&mut self, started: Option<std::time::Instant>) {
        if !self.timed {
            return;
        }
        let waited: u64 = self.sinks.iter_mut().map(|s| s.take_wait_ns()).sum();
        let worked = started.map_or(0, |s| (s.elapsed().as_nanos() as u64).saturating_sub(waited));
        self.busy_ns += worked * u64::from(TIME_ONE_IN) + waited;
    }

    /// Tells every sink the watermark moved.
    pub fn advance(&mut self, watermark: i64) -> Result<(), SinkError> {
        self.timed(|s| s.advance(watermark))
    }

    /// Lets every sink hand on what the worker's last step wrote.
    pub fn batch_done(&mut self) -> Result<(), SinkError> {
        self.timed(|s| s.batch_done())
    }

    /// Ends every sink's stream.
    pub fn finish_sinks(&mut self) -> Result<(), SinkError> {
        self.timed(|s| s.finish())
    }

    /// A checkpoint of every sink.
    pub fn checkpoint(&mut self) -> Result<SinkCut, SinkError> {
        let mut cut = SinkCut::default();
        self.timed(|s| s.checkpoint(&mut cut))?;
        Ok(cut)
    }

    /// Every sink takes up from `cut`.
    pub fn restore(&mut self, cut: &SinkCut) -> Result<(), SinkError> {
        self.timed(|s| s.restore(cut))
    }

    fn timed(&mut self, mut f: impl FnMut(&mut Box<dyn SinkWriter>) -> Result<(), SinkError>) -> Result<(), SinkError> {
        let started = std::time::Instant::now();
        let result = self.sinks.iter_mut().try_for_each(&mut f);
        self.busy_ns += started.elapsed().as_nanos() as u64;
        result
    }
}

impl crate::exec::OutputWriter for Fanout {
    fn write(&mut self, series: &str, fields: &[String], symbol: &str, ts: i64, values: &[f64]) -> std::io::Result<()> {
        // Timed only when profiling (the benchmark's split), and then one
        // sample in `TIME_ONE_IN`.
        let started = self.sample_clock();
        self.written += 1;
        for (sink, skip) in self.sinks.iter_mut().zip(&self.skip) {
            if !skip.iter().any(|s| s == series) {
                sink.write(series, fields, symbol, ts, values).map_err(std::io::Error::other)?;
            }
        }
        self.sampled(started);
        Ok(())
    }

    fn finish(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// A sink over an [`crate::exec::OutputWriter`] shared by every worker
/// (files written by `tickfold replay`, tests).
pub struct SharedWriter(pub std::sync::Arc<std::sync::Mutex<Box<dyn crate::exec::OutputWriter + Send>>>);

impl SinkWriter for SharedWriter {
    fn write(
        &mut self,
        series: &str,
        fields: &[String],
        symbol: &str,
        ts: i64,
        values: &[f64],
    ) -> Result<(), SinkError> {
        let mut out = self.0.lock().expect("output lock");
        out.write(series, fields, symbol, ts, values).map_err(|e| SinkError::new("output", e))
    }

    fn advance(&mut self, _: i64) -> Result<(), SinkError> {
        Ok(())
    }

    fn finish(&mut self) -> Result<(), SinkError> {
        Ok(())
    }
}
