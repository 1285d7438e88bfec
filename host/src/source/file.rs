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
use std::sync::mpsc;
use std::task::Poll;

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
                    chunk.symbols.push(sym.into());
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
                    chunk.symbols.push(sym.into());
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
                    chunk.symbols.push(s.unwrap_or_default().into());
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

/// A file read and decoded on a thread of its own, up to `depth` chunks
/// ahead of the worker that takes them, so that decoding overlaps with the
/// work on the rows (the dataflow's file source has one reader for the
/// whole file). The chunks, errors included, are [`FileSource::next_chunk`]'s,
/// in the same order.
pub struct ReadAhead {
    path: PathBuf,
    fields: Vec<String>,
    chunks: mpsc::Receiver<Result<Option<Chunk>, FileError>>,
    /// The end (or an error) was taken: nothing more comes.
    ended: bool,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl ReadAhead {
    /// Starts reading `source` on a thread named `file-reader`, which calls
    /// `ready` after each chunk it hands over (to wake the taker).
    pub fn spawn(mut source: FileSource, depth: usize, ready: impl Fn() + Send + 'static) -> Result<Self, FileError> {
        let (path, fields) = (source.path.clone(), source.fields.clone());
        Self::spawn_with(path, fields, move || source.next_chunk(), depth, ready)
    }

    /// [`spawn`](Self::spawn) over any chunk reader (tests give it one
    /// that fails).
    fn spawn_with(
        path: PathBuf,
        fields: Vec<String>,
        mut next_chunk: impl FnMut() -> Result<Option<Chunk>, FileError> + Send + 'static,
        depth: usize,
        ready: impl Fn() + Send + 'static,
    ) -> Result<Self, FileError> {
        let (chunks, taken) = mpsc::sync_channel(depth.max(1));
        let thread = std::thread::Builder::new()
            .name("file-reader".into())
            .spawn(move || {
                // Also wakes the taker if decoding panics, so it finds the
                // thread gone instead of waiting for a chunk forever.
                let wake = WakeOnDrop(ready);
                loop {
                    let next = next_chunk();
                    let last = !matches!(next, Ok(Some(_)));
                    // An error here: the taker went away.
                    let handed = chunks.send(next).is_ok();
                    (wake.0)();
                    if last || !handed {
                        break;
                    }
                }
            })
            .map_err(|e| FileError::Io { path: path.clone(), source: e })?;
        Ok(ReadAhead { path, fields, chunks: taken, ended: false, thread: Some(thread) })
    }

    /// The field names, in column order.
    pub fn fields(&self) -> &[String] {
        &self.fields
    }

    /// The next chunk if it is decoded (`Ready(Ok(None))` at the end), or
    /// `Pending` (then `ready` is called once it is).
    pub fn poll_chunk(&mut self) -> Poll<Result<Option<Chunk>, FileError>> {
        if self.ended {
            return Poll::Ready(Ok(None));
        }
        match self.chunks.try_recv() {
            Ok(next) => Poll::Ready(self.took(next)),
            Err(mpsc::TryRecvError::Empty) => Poll::Pending,
            Err(mpsc::TryRecvError::Disconnected) => Poll::Ready(self.took(Err(self.gone()))),
        }
    }

    /// The next chunk, waiting for it; `None` at the end.
    pub fn next_chunk(&mut self) -> Result<Option<Chunk>, FileError> {
        if self.ended {
            return Ok(None);
        }
        let next = self.chunks.recv().unwrap_or_else(|_| Err(self.gone()));
        self.took(next)
    }

    fn took(&mut self, next: Result<Option<Chunk>, FileError>) -> Result<Option<Chunk>, FileError> {
        self.ended = !matches!(next, Ok(Some(_)));
        next
    }

    fn gone(&self) -> FileError {
        FileError::Io {
            path: self.path.clone(),
            source: std::io::Error::other("the reading thread ended before the end of the file (a panic; see the log)"),
        }
    }
}

/// Calls its function when dropped, unwinding included.
struct WakeOnDrop<F: Fn()>(F);

impl<F: Fn()> Drop for WakeOnDrop<F> {
    fn drop(&mut self) {
        (self.0)();
    }
}

impl Drop for ReadAhead {
    fn drop(&mut self) {
        // Without a taker the thread stops after the chunk it is reading.
        let (_, none) = mpsc::sync_channel(0);
        drop(std::mem::replace(&mut self.chunks, none));
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A file under the temp dir, removed on drop.
    struct TempFile(PathBuf);

    impl TempFile {
        fn new(name: &str, text: &str) -> TempFile {
            let path = std::env::temp_dir().join(format!("tickfold-file-{}-{name}", std::process::id()));
            std::fs::write(&path, text).unwrap();
            TempFile(path)
        }
    }

    impl Drop for TempFile {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }

    /// Seeded trades, one line each, with a malformed line at `bad`.
    fn lines(rows: usize, bad: usize, json: bool) -> String {
        let mut x = 0x2545_f491_4f6c_dd1du64;
        let mut out = if json { String::new() } else { "symbol,ts,price,size\n".to_string() };
        for i in 0..rows {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let (symbol, price, size) =
                (["AAPL", "MSFT", "BTC-USD"][(x % 3) as usize], (x % 100_000) as f64 / 7.0, x % 500);
            let ts = if i == bad { "soon".to_string() } else { (1_700_000_000_000 + i as i64 * 3).to_string() };
            out += &if json {
                format!("{{\"symbol\":\"{symbol}\",\"ts\":{ts},\"price\":{price},\"size\":{size}}}\n")
            } else {
                format!("{symbol},{ts},{price},{size}\n")
            };
        }
        out
    }

    type Taken = (Vec<(String, i64, Vec<u64>)>, Option<String>);

    /// Every row taken with `next` until the end or an error, and the error.
    fn take_all(mut next: impl FnMut() -> Result<Option<Chunk>, FileError>) -> Taken {
        let mut rows = Vec::new();
        loop {
            match next() {
                Ok(Some(chunk)) => {
                    for i in 0..chunk.len() {
                        let values = chunk.fields.iter().map(|c| c[i].to_bits()).collect();
                        rows.push((chunk.symbols[i].to_string(), chunk.ts[i], values));
                    }
                }
                Ok(None) => return (rows, None),
                Err(e) => return (rows, Some(e.to_string())),
            }
        }
    }

    #[test]
    fn reading_ahead_gives_the_plain_readers_chunks_and_errors() {
        for (name, text) in [
            ("clean.csv", lines(1000, usize::MAX, false)),
            ("bad.csv", lines(1000, 700, false)),
            ("clean.jsonl", lines(1000, usize::MAX, true)),
            ("bad.jsonl", lines(1000, 700, true)),
        ] {
            let file = TempFile::new(name, &text);
            let mut plain = FileSource::open(&file.0, 64).unwrap();
            let expected = take_all(|| plain.next_chunk());
            assert_eq!(expected.0.len(), if name.starts_with("bad") { 700 - 700 % 64 } else { 1000 }, "{name}");
            assert_eq!(expected.1.is_some(), name.starts_with("bad"), "{name}: {:?}", expected.1);

            let mut waiting = ReadAhead::spawn(FileSource::open(&file.0, 64).unwrap(), 2, || {}).unwrap();
            assert_eq!(waiting.fields(), ["price", "size"]);
            assert_eq!(take_all(|| waiting.next_chunk()), expected, "{name}, waiting");

            let mut polling = ReadAhead::spawn(FileSource::open(&file.0, 64).unwrap(), 1, || {}).unwrap();
            let polled = take_all(|| {
                loop {
                    match polling.poll_chunk() {
                        Poll::Ready(next) => return next,
                        Poll::Pending => std::thread::yield_now(),
                    }
                }
            });
            assert_eq!(polled, expected, "{name}, polling");
            assert!(matches!(polling.poll_chunk(), Poll::Ready(Ok(None))), "after the end, the end again");
        }
    }

    #[test]
    fn a_reader_thread_that_panics_wakes_its_taker_with_an_error() {
        let woken = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let w = woken.clone();
        let mut calls = 0;
        let next = move || {
            calls += 1;
            if calls > 1 {
                panic!("a decoder bug");
            }
            Ok(Some(Chunk::with_fields(0)))
        };
        let wake = move || {
            w.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        };
        let mut reader = ReadAhead::spawn_with("x.csv".into(), Vec::new(), next, 4, wake).unwrap();
        // Woken for the chunk, and again as the thread dies.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while woken.load(std::sync::atomic::Ordering::SeqCst) < 2 {
            assert!(std::time::Instant::now() < deadline, "the taker was not woken");
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        assert!(matches!(reader.poll_chunk(), Poll::Ready(Ok(Some(_)))));
        let Poll::Ready(Err(e)) = reader.poll_chunk() else { panic!("the thread's end is an error") };
        assert!(e.to_string().contains("the reading thread ended"), "{e}");
        assert!(matches!(reader.poll_chunk(), Poll::Ready(Ok(None))), "reported once");
    }

    #[test]
    fn a_read_ahead_dropped_early_stops_its_thread() {
        let file = TempFile::new("early.csv", &lines(5000, usize::MAX, false));
        let woken = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let w = woken.clone();
        let mut reader = ReadAhead::spawn(FileSource::open(&file.0, 10).unwrap(), 1, move || {
            w.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        })
        .unwrap();
        assert_eq!(reader.next_chunk().unwrap().unwrap().len(), 10);
        // The thread is blocked handing over a chunk; dropping must end it
        // (the drop joins it), not hang.
        drop(reader);
        let handed = woken.load(std::sync::atomic::Ordering::Relaxed);
        assert!(handed < 500, "it stopped early: {handed} chunks");
    }
}
