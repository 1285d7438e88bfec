//! Where samples come from.
//!
//! | file | what it owns |
//! | --- | --- |
//! | `file.rs` | CSV, JSONL and Parquet files of trades or bars, read in chunks (`tickfold exec`, replay) |
//! | `kafka.rs` | a topic's partitions, read side by side with a watermark each; dead letters |
//!
//! Every source yields [`Chunk`]s: samples of one series with their keys
//! still as names; the next stage interns them.

pub mod file;
pub mod kafka;

use serde::{Deserialize, Serialize};

/// A sample as it leaves a source: the row the dataflow exchanges by key.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Row {
    /// The key (symbol).
    pub key: String,
    /// Event time, ms since the Unix epoch, UTC.
    pub ts: i64,
    /// The input series' fields (`price, size` for trades).
    pub values: Vec<f64>,
    /// The Kafka partition it came from (`-1` for files).
    pub partition: i32,
    /// Its offset there (for files, the row number).
    pub offset: i64,
}

/// Samples of one series, column-major, keys not yet interned.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Chunk {
    /// The key (symbol) of each sample.
    pub symbols: Vec<String>,
    /// Event time of each sample, ms since the Unix epoch, UTC.
    pub ts: Vec<i64>,
    /// One column per field, in the source's field order.
    pub fields: Vec<Vec<f64>>,
}

impl Chunk {
    /// An empty chunk with `fields` columns.
    pub fn with_fields(fields: usize) -> Self {
        Chunk { symbols: Vec::new(), ts: Vec::new(), fields: vec![Vec::new(); fields] }
    }

    /// The number of samples.
    pub fn len(&self) -> usize {
        self.ts.len()
    }

    /// True when it holds no samples.
    pub fn is_empty(&self) -> bool {
        self.ts.is_empty()
    }
}
