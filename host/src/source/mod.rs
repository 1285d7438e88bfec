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
/// Its symbol and values are stored inline (a trade's two values, a symbol
/// of up to 24 bytes), so making one allocates nothing.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Row {
    /// The key (symbol).
    pub key: compact_str::CompactString,
    /// Event time, ms since the Unix epoch, UTC.
    pub ts: i64,
    /// The input series' fields (`price, size` for trades).
    #[serde(with = "inline_values")]
    pub values: Values,
    /// The Kafka partition it came from (`-1` for files).
    pub partition: i32,
    /// Its offset there (for files, the row number).
    pub offset: i64,
}

/// A row's values: inline up to two (a trade's price and size).
pub type Values = smallvec::SmallVec<[f64; 2]>;

/// Serde for [`Values`] as a plain sequence (smallvec's own `serde` feature
/// would rebuild every crate that uses smallvec).
mod inline_values {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(values: &super::Values, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(values.iter())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<super::Values, D::Error> {
        Vec::<f64>::deserialize(d).map(super::Values::from_vec)
    }
}

/// Samples of one series, column-major, keys not yet interned.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Chunk {
    /// The key (symbol) of each sample.
    pub symbols: Vec<compact_str::CompactString>,
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
