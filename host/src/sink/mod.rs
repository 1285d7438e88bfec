//! Where series go once the plugins have made them.
//!
//! | file | what it owns |
//! | --- | --- |
//!
//! Each worker of the dataflow holds its own writer on each sink and hands
//! it samples as its plugin chain emits them (see [`crate::exec::OutputWriter`]),
//! then tells it when the worker's frontier (the watermark) moves on.

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
}

/// Every sink a worker writes to, as one output for its plugin chain.
#[derive(Default)]
pub struct Fanout {
    sinks: Vec<Box<dyn SinkWriter>>,
    /// Series kept out of each sink, by sink position.
    skip: Vec<Vec<String>>,
    /// Output samples written (to every sink).
    pub written: u64,
}

impl Fanout {
    /// Adds a sink that gets every series except `skip`.
    pub fn add(&mut self, sink: Box<dyn SinkWriter>, skip: Vec<String>) {
        self.sinks.push(sink);
        self.skip.push(skip);
    }

    /// Hands an input row to the sinks that keep raw data.
    pub fn write_input(&mut self, series: &str, fields: &[String], row: &Row) -> Result<(), SinkError> {
        for (sink, skip) in self.sinks.iter_mut().zip(&self.skip) {
            if !skip.iter().any(|s| s == series) {
                sink.write_input(series, fields, row)?;
            }
        }
        Ok(())
    }

    /// Tells every sink the watermark moved.
    pub fn advance(&mut self, watermark: i64) -> Result<(), SinkError> {
        self.sinks.iter_mut().try_for_each(|s| s.advance(watermark))
    }

    /// Ends every sink's stream.
    pub fn finish_sinks(&mut self) -> Result<(), SinkError> {
        self.sinks.iter_mut().try_for_each(|s| s.finish())
    }
}

impl crate::exec::OutputWriter for Fanout {
    fn write(&mut self, series: &str, fields: &[String], symbol: &str, ts: i64, values: &[f64]) -> std::io::Result<()> {
        self.written += 1;
        for (sink, skip) in self.sinks.iter_mut().zip(&self.skip) {
            if !skip.iter().any(|s| s == series) {
                sink.write(series, fields, symbol, ts, values).map_err(std::io::Error::other)?;
            }
        }
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
