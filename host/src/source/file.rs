//! Trades or bars from a CSV, JSONL or Parquet file, read in chunks.
//!
//! Columns (the same names in every format):
//!
//! | column | meaning | also accepted |
//! | --- | --- | --- |
//! | `symbol` | the key | `s`, `key`, `ticker` |
//! | `ts` | event time, integer milliseconds since the Unix epoch, UTC (Parquet: an integer or a timestamp column of any unit) | `t`, `time`, `timestamp` |
//! | anything numeric | a field, named by its column | `p` is read as `price`, `v` as `size` (Finnhub's names) |
//!
//! Trades are `symbol, ts, price, size`; bars are `symbol, ts, open, high,
//! low, close, volume` (and whatever else is numeric). Which columns are
//! fields is decided by the first record (CSV, JSONL: the columns whose
//! value parses as a number) or the schema (Parquet: numeric columns).
//! A record that breaks that shape is an error naming its line.

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};

use arrow::array::{Array, AsArray};
use arrow::datatypes::{DataType, Float64Type, Int64Type, TimeUnit};
use parquet::arrow::arrow_reader::{ParquetRecordBatchReader, ParquetRecordBatchReaderBuilder};

use super::Chunk;

const SYMBOL_NAMES: [&str; 4] = ["symbol", "s", "key", "ticker"];
const TS_NAMES: [&str; 4] = ["ts", "t", "time", "timestamp"];

/// Something wrong with an input file.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    /// It could not be opened or read.
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    /// Its extension is not one we read.
    #[error("{path}: unknown file type; name it *.csv, *.jsonl (or *.ndjson, *.json) or *.parquet")]
    UnknownFormat { path: PathBuf },
    /// A required column is missing.
    #[error("{path}: no {what} column (name it one of: {names})")]
    MissingColumn { path: PathBuf, what: &'static str, names: String },
    /// A record does not parse.
    #[error("{path}:{line}: {reason}")]
    BadRecord { path: PathBuf, line: u64, reason: String },
    /// The Parquet reader failed.
    #[error("{path}: {reason}")]
    Parquet { path: PathBuf, reason: String },
}

/// A file of samples, opened and read a chunk at a time.
pub struct FileSource {
    path: PathBuf,
    fields: Vec<String>,
    chunk_rows: usize,
    reader: Reader,
}

/// One JSON record and the line it came from.
type JsonRecord = (u64, serde_json::Map<String, serde_json::Value>);

enum Reader {
    Csv {
        reader: csv::Reader<File>,
        /// The record being read, reused (one allocation per file, not per
        /// row).
        record: csv::StringRecord,
        /// `record` holds the first row, read by `open` to find the fields.
        first: bool,
        symbol: usize,
        ts: usize,
        columns: Vec<usize>,
    },
    Jsonl {
        lines: std::io::Lines<BufReader<File>>,
        line: u64,
        first: Option<JsonRecord>,
        keys: (String, String),
    },
    Parquet {
        batches: ParquetRecordBatchReader,
        symbol: usize,
        ts: usize,
        columns: Vec<usize>,
    },
}

impl FileSource {
    /// Opens `path`, reading its header (or first record, or schema).
    pub fn open(path: &Path, chunk_rows: usize) -> Result<Self, FileError> {
        let io = |source| FileError::Io { path: path.to_path_buf(), source };
        let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("").to_ascii_lowercase();
        let file = File::open(path).map_err(io)?;
        let (fields, reader) = match ext.as_str() {
            "csv" => open_csv(path, file)?,
            "jsonl" | "ndjson" | "json" => open_jsonl(path, file)?,
            "parquet" => open_parquet(path, file, chunk_rows)?,
            _ => return Err(FileError::UnknownFormat { path: path.to_path_buf() }),
        };
        Ok(FileSource { path: path.to_path_buf(), fields, chunk_rows: chunk_rows.max(1), reader })
    }

    /// The field names, in column order.
    pub fn fields(&self) -> &[String] {
        &self.fields
    }

    /// The next chunk of up to `chunk_rows` samples, or `None` at the end.
    pub fn next_chunk(&mut self) -> Result<Option<Chunk>, FileError> {
        let mut chunk = Chunk::with_fields(self.fields.len());
        let path = &self.path;
        match &mut self.reader {
            Reader::Csv { reader, record, first, symbol, ts, columns } => {
                while chunk.len() < self.chunk_rows {
                    if !std::mem::take(first) {
                        let more = reader
                            .read_record(record)
                            .map_err(|e| bad(path, e.position().map_or(0, |p| p.line()), e.to_string()))?;
                        if !more {
                            break;
                        }
                    }
                    let line = record.position().map_or(0, |p| p.line());
                    // Fields are trimmed here rather than by the reader,
                    // which would trim every field of every row.
                    let sym = record.get(*symbol).unwrap_or_default().trim();
                    let t = record.get(*ts).unwrap_or_default();
                    let t = t
                        .trim()
                        .parse::<i64>()
                        .map_err(|_| bad(path, line, format!("`ts` must be integer milliseconds, got `{t}`")))?;
                    chunk.symbols.push(sym.to_string());
                    chunk.ts.push(t);
                    for (out, (&c, name)) in chunk.fields.iter_mut().zip(columns.iter().zip(&self.fields)) {
                        let raw = record.get(c).unwrap_or_default();
                        let v = raw
                            .trim()
                            .parse::<f64>()
                            .map_err(|_| bad(path, line, format!("`{name}` must be a number, got `{raw}`")))?;
                        out.push(v);
                    }
                }
            }
            Reader::Jsonl { lines, line, first, keys } => {
                while chunk.len() < self.chunk_rows {
                    let (n, obj) = match first.take() {
                        Some(f) => f,
                        None => match next_json(path, lines, line)? {
                            Some(f) => f,
                            None => break,
                        },
                    };
                    let sym = obj
                        .get(&keys.0)
                        .and_then(|v| v.as_str())
                        .ok_or_else(|| bad(path, n, format!("`{}` must be a string", keys.0)))?;
                    let t = obj
                        .get(&keys.1)
                        .and_then(|v| v.as_i64())
                        .ok_or_else(|| bad(path, n, format!("`{}` must be integer milliseconds", keys.1)))?;
                    chunk.symbols.push(sym.to_string());
                    chunk.ts.push(t);
                    for (out, name) in chunk.fields.iter_mut().zip(&self.fields) {
                        let v =
                            json_field(&obj, name).ok_or_else(|| bad(path, n, format!("`{name}` must be a number")))?;
                        out.push(v);
                    }
                }
            }
            Reader::Parquet { batches, symbol, ts, columns } => {
                let Some(batch) = batches.next() else { return Ok(None) };
                let batch = batch.map_err(|e| FileError::Parquet { path: path.clone(), reason: e.to_string() })?;
                let pq = |e: arrow::error::ArrowError| FileError::Parquet { path: path.clone(), reason: e.to_string() };
                let symbols = arrow::compute::cast(batch.column(*symbol), &DataType::Utf8).map_err(pq)?;
                for s in symbols.as_string::<i32>().iter() {
                    chunk.symbols.push(s.unwrap_or_default().to_string());
                }
                chunk.ts = timestamps_ms(batch.column(*ts)).map_err(pq)?;
                for (out, &c) in chunk.fields.iter_mut().zip(columns.iter()) {
                    let col = arrow::compute::cast(batch.column(c), &DataType::Float64).map_err(pq)?;
                    out.extend(col.as_primitive::<Float64Type>().iter().map(|v| v.unwrap_or(f64::NAN)));
                }
            }
        }
        Ok(if chunk.is_empty() { None } else { Some(chunk) })
    }
}

fn bad(path: &Path, line: u64, reason: String) -> FileError {
    FileError::BadRecord { path: path.to_path_buf(), line, reason }
}

fn find(names: &[String], wanted: &[&str]) -> Option<usize> {
    wanted.iter().find_map(|w| names.iter().position(|n| n.eq_ignore_ascii_case(w)))
}

fn missing(path: &Path, what: &'static str, names: &[&str]) -> FileError {
    FileError::MissingColumn { path: path.to_path_buf(), what, names: names.join(", ") }
}

/// Finnhub's one-letter names, read as the names our plugins use.
fn field_name(column: &str) -> String {
    match column {
        "p" => "price".into(),
        "v" => "size".into(),
        other => other.into(),
    }
}

fn open_csv(path: &Path, file: File) -> Result<(Vec<String>, Reader), FileError> {
    let mut reader = csv::ReaderBuilder::new().buffer_capacity(1 << 18).from_reader(file);
    let header: Vec<String> =
        reader.headers().map_err(|e| bad(path, 1, e.to_string()))?.iter().map(|h| h.trim().to_string()).collect();
    let symbol = find(&header, &SYMBOL_NAMES).ok_or_else(|| missing(path, "symbol", &SYMBOL_NAMES))?;
    let ts = find(&header, &TS_NAMES).ok_or_else(|| missing(path, "timestamp", &TS_NAMES))?;
    let mut record = csv::StringRecord::new();
    let first = reader.read_record(&mut record).map_err(|e| bad(path, 2, e.to_string()))?;
    let columns: Vec<usize> = (0..header.len())
        .filter(|&c| c != symbol && c != ts)
        .filter(|&c| first && record.get(c).is_some_and(|v| v.trim().parse::<f64>().is_ok()))
        .collect();
    let fields = columns.iter().map(|&c| field_name(&header[c])).collect();
    Ok((fields, Reader::Csv { reader, record, first, symbol, ts, columns }))
}

fn next_json(
    path: &Path,
    lines: &mut std::io::Lines<BufReader<File>>,
    line: &mut u64,
) -> Result<Option<JsonRecord>, FileError> {
    for text in lines.by_ref() {
        *line += 1;
        let text = text.map_err(|source| FileError::Io { path: path.to_path_buf(), source })?;
        if text.trim().is_empty() {
            continue;
        }
        return match serde_json::from_str::<serde_json::Value>(&text) {
            Ok(serde_json::Value::Object(obj)) => Ok(Some((*line, obj))),
            Ok(_) => Err(bad(path, *line, "each line must be a JSON object".into())),
            Err(e) => Err(bad(path, *line, format!("not JSON: {e}"))),
        };
    }
    Ok(None)
}

fn json_field(obj: &serde_json::Map<String, serde_json::Value>, field: &str) -> Option<f64> {
    let aliases: &[&str] = match field {
        "price" => &["price", "p"],
        "size" => &["size", "v"],
        other => return obj.get(other)?.as_f64(),
    };
    aliases.iter().find_map(|a| obj.get(*a)?.as_f64())
}

fn open_jsonl(path: &Path, file: File) -> Result<(Vec<String>, Reader), FileError> {
    let mut lines = BufReader::new(file).lines();
    let mut line = 0;
    let first = next_json(path, &mut lines, &mut line)?;
    let keys: Vec<String> = first.as_ref().map(|(_, o)| o.keys().cloned().collect()).unwrap_or_default();
    let symbol = find(&keys, &SYMBOL_NAMES).map(|i| keys[i].clone());
    let ts = find(&keys, &TS_NAMES).map(|i| keys[i].clone());
    let (symbol, ts, fields) = match (&first, symbol, ts) {
        (None, _, _) => (String::new(), String::new(), Vec::new()),
        (Some(_), None, _) => return Err(missing(path, "symbol", &SYMBOL_NAMES)),
        (Some(_), _, None) => return Err(missing(path, "timestamp", &TS_NAMES)),
        (Some((_, obj)), Some(s), Some(t)) => {
            let fields =
                keys.iter().filter(|k| **k != s && **k != t && obj[*k].is_number()).map(|k| field_name(k)).collect();
            (s, t, fields)
        }
    };
    Ok((fields, Reader::Jsonl { lines, line, first, keys: (symbol, ts) }))
}

fn open_parquet(path: &Path, file: File, chunk_rows: usize) -> Result<(Vec<String>, Reader), FileError> {
    let pq = |e: parquet::errors::ParquetError| FileError::Parquet { path: path.to_path_buf(), reason: e.to_string() };
    let builder = ParquetRecordBatchReaderBuilder::try_new(file).map_err(pq)?;
    let schema = builder.schema().clone();
    let names: Vec<String> = schema.fields().iter().map(|f| f.name().clone()).collect();
    let symbol = find(&names, &SYMBOL_NAMES).ok_or_else(|| missing(path, "symbol", &SYMBOL_NAMES))?;
    let ts = find(&names, &TS_NAMES).ok_or_else(|| missing(path, "timestamp", &TS_NAMES))?;
    let columns: Vec<usize> =
        (0..names.len()).filter(|&c| c != symbol && c != ts && schema.field(c).data_type().is_numeric()).collect();
    let fields = columns.iter().map(|&c| field_name(&names[c])).collect();
    let batches = builder.with_batch_size(chunk_rows.max(1)).build().map_err(pq)?;
    Ok((fields, Reader::Parquet { batches, symbol, ts, columns }))
}

/// An integer or timestamp column as milliseconds.
fn timestamps_ms(col: &dyn Array) -> Result<Vec<i64>, arrow::error::ArrowError> {
    let (raw, per_ms): (_, i64) = match col.data_type() {
        DataType::Timestamp(unit, _) => {
            let per_ms = match unit {
                TimeUnit::Second => -1000,
                TimeUnit::Millisecond => 1,
                TimeUnit::Microsecond => 1_000,
                TimeUnit::Nanosecond => 1_000_000,
            };
            (arrow::compute::cast(col, &DataType::Int64)?, per_ms)
        }
        _ => (arrow::compute::cast(col, &DataType::Int64)?, 1),
    };
    let ints = raw.as_primitive::<Int64Type>();
    Ok(ints
        .iter()
        .map(|v| {
            let v = v.unwrap_or(i64::MIN);
            if per_ms < 0 { v.saturating_mul(-per_ms) } else { v.div_euclid(per_ms) }
        })
        .collect())
}
