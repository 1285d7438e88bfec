//! The Parquet archive: raw trades and every output series, kept as files
//! that backfills and audits can read again.
//!
//! Layout, Hive-style, so that Spark, DuckDB or pyarrow see `series` and
//! `date` as partition columns:
//!
//! ```text
//! {dir}/series={name}/date=YYYY-MM-DD/part-w{worker}-{bucket_start_ms}-{seq:04}.parquet
//! {dir}/series={name}/date=YYYY-MM-DD/part-w{worker}-{bucket_start_ms}-{seq:04}-g{generation}.parquet   (late parts)
//! ```
//!
//! Columns: `symbol` (Utf8, dictionary-encoded), `ts` (milliseconds, UTC),
//! one Float64 per field of the series (NaN kept bit for bit), and for raw
//! series (trades as read from Kafka) `partition` and `offset`, so a reader
//! can check that every record is there exactly once. The key-value metadata
//! holds `tickfold.series`, `tickfold.fields` (a JSON array) and
//! `tickfold.kind` (`raw` or `output`).
//!
//! Each dataflow worker owns one [`ArchiveWriter`], with no locks. It
//! buffers rows per (series, event-time bucket of `roll_interval_ms`,
//! aligned to the epoch) and writes a bucket once
//! [`ArchiveWriter::advance`] moves the watermark to or past the bucket's
//! end. `date` is the UTC date of the bucket's start.
//!
//! **Full buckets.** A bucket that holds `max_buffered_rows` when the
//! watermark moves, or when the worker ends a step
//! ([`ArchiveWriter::write_due`]), is written then, as parts that continue its sequence
//! (as a checkpoint writes open buckets), and fills again under the
//! numbers that follow. Memory stays bounded where an hour of event time
//! comes in seconds (a backfill from a file, which takes no checkpoints),
//! and the encoding is spread over the run instead of piled at the hour's
//! end.
//!
//! **Encoding in the background.** The host's writers
//! ([`ArchiveWriter::encode_in_background`]) hand closed buckets to a thread
//! of their own, which orders, encodes, compresses and writes them one at a
//! time in the order they closed, so a worker goes on with its rows while a
//! core with room does the Parquet work (with few keys, one worker is
//! often busier than the other). The files are the plain writer's, byte
//! for byte (a test compares them). `checkpoint` and `finish` wait for the
//! thread. A failed write comes back with a later call, with its bucket
//! and those handed over after it (untried) returned to the buffers; from
//! then until a write succeeds the writer writes on the worker, so the
//! worker waits (back-pressure) as it would without the thread.
//!
//! **Why names and bytes are deterministic.** A worker gets rows from
//! several source workers in an order that changes from run to run, but the
//! set of rows in a bucket is the same, and so is each symbol's order. A
//! closing bucket is sorted by symbol, then `ts` (then `partition`, `offset`
//! for raw series) with a stable sort, so each symbol keeps its arrival order
//! among equal keys, and split into files of `max_rows_per_file` in that
//! order. Re-processing the same data therefore rewrites the same files with
//! the same bytes, and a closing bucket removes any higher-numbered parts an
//! earlier run left behind, so a replay overwrites rather than duplicates.
//! Names include the worker, so this holds while the key-to-worker mapping
//! (worker count) stays the same. A bucket written in parts when full (or at
//! checkpoints) is cut where the run's timing put the cut, so its parts'
//! rows can differ between runs; its close still removes the
//! higher-numbered parts an earlier run left, so each row is there once
//! after a replay, byte-identical or not. (A replay killed before the
//! bucket closes leaves the earlier run's higher parts beside its own:
//! rows at least once, none lost.)
//!
//! **Late rows.** A row whose bucket the watermark has already passed (a
//! plugin that emits windows late, or a lateness policy that lets it
//! through) opens a *late* bucket, written at the next `advance` to new
//! files that continue the bucket's sequence on disk. They never overwrite.
//! Their names carry the writer's generation (the number of checkpoints
//! its lineage took, kept in each cut), which is how a restore tells the
//! late parts written after its cut, in buckets closed before it: those are
//! removed, and their rows come again with the replay. (Late rows are
//! ordinary for windows longer than `roll_interval_ms`: a daily bar
//! labelled with its start lands in a bucket closed a day earlier.)
//!
//! **Checkpoints.** [`ArchiveWriter::checkpoint`] writes the rows of every
//! open bucket as parts that continue the bucket's sequence, and empties
//! the buffers: the rows before a checkpoint are on disk when it is
//! declared complete. It returns an [`ArchiveCut`]: the watermark and each
//! open bucket's parts. [`ArchiveWriter::restore`] after a crash removes
//! this worker's parts of buckets open at the cut that the cut does not
//! list (written after it, and about to be written again), and the late
//! parts written after the cut (see "Late rows"), and continues
//! each open bucket's sequence where the cut left it. A bucket with parts
//! from a checkpoint does not remove "stale" parts when it closes: they
//! are its own. Call `advance(w)` after the plugin chain has seen watermark
//! `w`, so the windows `w` closes land in their bucket before it is
//! written.
//!
//! **Atomic files.** Each file is encoded to `.part-….parquet.tmp` in its
//! final directory (a dot-file, which Hive-style readers skip), fsynced when
//! configured, renamed, and the directory fsynced. A failed write removes the
//! temp file and keeps the bucket buffered, so the next `advance` retries it
//! under the same names.

use rustc_hash::FxHashMap as HashMap;
use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, mpsc};

use arrow::array::{
    Array, ArrayRef, AsArray, Float64Array, Int32Array, Int64Array, StringBuilder, TimestampMillisecondArray,
};
use arrow::datatypes::{DataType, Field, Float64Type, Int32Type, Int64Type, Schema, SchemaRef, TimeUnit};
use arrow::record_batch::RecordBatch;
use parquet::arrow::ArrowWriter;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::basic::{Compression, Encoding, ZstdLevel};
use parquet::errors::ParquetError;
use parquet::file::metadata::{KeyValue, SortingColumn};
use parquet::file::properties::WriterProperties;
use parquet::schema::types::ColumnPath;
use tracing::{debug, info};

use crate::exec::OutputWriter;

/// Key-value metadata key for the series name.
pub const META_SERIES: &str = "tickfold.series";
/// Key-value metadata key for the field names, a JSON array in column order.
pub const META_FIELDS: &str = "tickfold.fields";
/// Key-value metadata key for the kind of series: `raw` or `output`.
pub const META_KIND: &str = "tickfold.kind";

/// Column names every series has, and the two only raw series have. Hive
/// readers add `series` and `date` from the path, so fields may not use
/// those names either.
const RESERVED: [&str; 4] = ["symbol", "ts", "series", "date"];
const RAW_RESERVED: [&str; 2] = ["partition", "offset"];

const DAY_MS: i64 = 86_400_000;

/// The `[sinks.archive]` table of the host's config.
#[derive(Clone, Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ArchiveConfig {
    /// Root directory of the archive, created if missing. Processes of a
    /// cluster may share it: file names carry the worker index, which timely
    /// numbers across processes.
    pub dir: PathBuf,
    /// Event-time width of a file's bucket, in milliseconds (default one
    /// hour). Buckets are aligned to the Unix epoch; pick a width that
    /// divides a day, or a bucket crossing midnight UTC is filed under the
    /// date it starts on. A bucket's rows stay in memory until the
    /// watermark passes its end, or until there are `max_buffered_rows`.
    #[serde(default = "default_roll_interval_ms")]
    pub roll_interval_ms: u64,
    /// Most rows in one file (default 1,000,000); a bucket with more is
    /// split into several files, numbered by their `seq`.
    #[serde(default = "default_max_rows_per_file")]
    pub max_rows_per_file: usize,
    /// Most rows one bucket of one writer holds in memory (default
    /// 1,000,000): a bucket that has this many when the watermark moves or
    /// the worker ends a step is written out then as parts that continue its
    /// sequence, as at a checkpoint, and fills again. Without it a backfill, where an hour of
    /// event time passes in seconds and no checkpoint is taken, held every
    /// row of the hour in memory and encoded them all at its end.
    #[serde(default = "default_max_buffered_rows")]
    pub max_buffered_rows: usize,
    /// zstd compression level, 1 (fastest) to 22 (smallest) (default 3).
    #[serde(default = "default_zstd_level")]
    pub zstd_level: i32,
    /// Whether to fsync each file before renaming it into place, and its
    /// directory after (default true). Without it a power loss can leave a
    /// renamed but empty or truncated file; a process crash cannot.
    #[serde(default = "default_fsync")]
    pub fsync: bool,
}

fn default_roll_interval_ms() -> u64 {
    3_600_000
}

fn default_max_rows_per_file() -> usize {
    1_000_000
}

fn default_max_buffered_rows() -> usize {
    1_000_000
}

fn default_zstd_level() -> i32 {
    3
}

fn default_fsync() -> bool {
    true
}

impl ArchiveConfig {
    /// An archive in `dir` with every other option at its default.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        ArchiveConfig {
            dir: dir.into(),
            roll_interval_ms: default_roll_interval_ms(),
            max_rows_per_file: default_max_rows_per_file(),
            max_buffered_rows: default_max_buffered_rows(),
            zstd_level: default_zstd_level(),
            fsync: default_fsync(),
        }
    }
}

/// Something that stopped the archive.
#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    /// An option of `[sinks.archive]` is out of range.
    #[error("[sinks.archive] {option} = {value} is invalid: {rule}")]
    Config { option: &'static str, value: String, rule: &'static str },
    /// A file-system operation failed.
    #[error("{op} {path}: {source}{}", advice(source))]
    Io { op: &'static str, path: PathBuf, source: io::Error },
    /// A series name cannot be a directory name.
    #[error(
        "series `{series}` cannot be archived: its name becomes the directory `series={series}`, so it must be non-empty, not start with `.`, and use only letters, digits, `_`, `-` and `.` (rename the series in the config or the plugin)"
    )]
    BadSeriesName { series: String },
    /// A field name clashes with a column of the archive.
    #[error(
        "series `{series}`: field `{field}` {problem} (rename the field in the plugin's `describe`, or map it in the config)"
    )]
    BadField { series: String, field: String, problem: &'static str },
    /// A series came back with other fields than it was first written with.
    #[error(
        "series `{series}` was first written with fields {before:?}, now with {now:?}; a series keeps one schema, so give the new shape another series name"
    )]
    FieldsChanged { series: String, before: Vec<String>, now: Vec<String> },
    /// A series was written both as raw and as an output series.
    #[error(
        "series `{series}` was first written as {before} and now as {now}; raw (with partition and offset) and output series need distinct names"
    )]
    KindChanged { series: String, before: &'static str, now: &'static str },
    /// A sample's values do not match its fields.
    #[error("series `{series}`: a sample has {values} values for {fields} fields; this is a bug in the caller")]
    Arity { series: String, fields: usize, values: usize },
    /// The Parquet encoder refused a batch.
    #[error("encoding {path} as Parquet: {reason}; this is a bug in tickfold, please report it")]
    Encode { path: PathBuf, reason: String },
    /// A file of the archive cannot be read back.
    #[error("reading {path}: {reason}")]
    Read { path: PathBuf, reason: String },
}

impl ArchiveError {
    /// Whether the same call may succeed later without a code change: true
    /// for file-system errors (a full disk, a permission, a file in the
    /// way); the rows stay buffered and the next `advance` retries.
    pub fn is_retryable(&self) -> bool {
        matches!(self, ArchiveError::Io { .. })
    }
}

/// What to do about a file-system error, appended to its message.
fn advice(e: &io::Error) -> &'static str {
    use io::ErrorKind::*;
    match e.kind() {
        StorageFull | QuotaExceeded => {
            " (the disk is full: free space, or point `[sinks.archive] dir` at a bigger volume; rows stay buffered until a later `advance` writes them)"
        }
        PermissionDenied | ReadOnlyFilesystem => {
            " (tickfold may not write there: fix the permissions or the mount, or change `[sinks.archive] dir`)"
        }
        NotADirectory | AlreadyExists => " (a file is in the way of one of the archive's directories: move it)",
        _ => "",
    }
}

impl From<ArchiveError> for io::Error {
    fn from(e: ArchiveError) -> io::Error {
        let kind = match &e {
            ArchiveError::Io { source, .. } => source.kind(),
            ArchiveError::Config { .. }
            | ArchiveError::BadSeriesName { .. }
            | ArchiveError::BadField { .. }
            | ArchiveError::FieldsChanged { .. }
            | ArchiveError::KindChanged { .. }
            | ArchiveError::Arity { .. } => io::ErrorKind::InvalidInput,
            ArchiveError::Encode { .. } | ArchiveError::Read { .. } => io::ErrorKind::Other,
        };
        io::Error::new(kind, e)
    }
}

/// Counts from one writer.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ArchiveStats {
    /// Rows in files renamed into place.
    pub rows_written: u64,
    /// Files renamed into place (a retried file counts again).
    pub files_written: u64,
    /// Bytes of those files.
    pub bytes_written: u64,
    /// Rows held in buckets the watermark has not closed yet.
    pub buffered_rows: u64,
    /// File writes that failed (and left their rows buffered for a retry).
    pub failed_writes: u64,
}

impl ArchiveStats {
    /// `rows` buffered rows went into `files` files of `bytes` bytes.
    fn written(&mut self, rows: u64, files: u64, bytes: u64) {
        self.rows_written += rows;
        self.files_written += files;
        self.bytes_written += bytes;
        self.buffered_rows -= rows;
    }
}

/// An archive directory, checked and ready to hand out one writer per worker.
#[derive(Clone, Debug)]
pub struct Archive {
    config: Arc<ArchiveConfig>,
    compression: Compression,
}

impl Archive {
    /// Checks `config`, creates its directory and checks that it is writable.
    pub fn new(config: ArchiveConfig) -> Result<Archive, ArchiveError> {
        let ArchiveConfig { dir, roll_interval_ms, max_rows_per_file, max_buffered_rows, zstd_level, fsync: _ } =
            &config;
        if *roll_interval_ms == 0 || i64::try_from(*roll_interval_ms).is_err() {
            return Err(ArchiveError::Config {
                option: "roll_interval_ms",
                value: roll_interval_ms.to_string(),
                rule: "a bucket must be at least 1 ms wide (3600000 is an hour)",
            });
        }
        if *max_rows_per_file == 0 {
            return Err(ArchiveError::Config {
                option: "max_rows_per_file",
                value: "0".into(),
                rule: "a file must hold at least one row",
            });
        }
        if *max_buffered_rows == 0 {
            return Err(ArchiveError::Config {
                option: "max_buffered_rows",
                value: "0".into(),
                rule: "a bucket must hold at least one row before it is written",
            });
        }
        let level = ZstdLevel::try_new(*zstd_level).map_err(|_| ArchiveError::Config {
            option: "zstd_level",
            value: zstd_level.to_string(),
            rule: "zstd levels run from 1 to 22",
        })?;
        let io = |op, source| ArchiveError::Io { op, path: dir.clone(), source };
        fs::create_dir_all(dir).map_err(|e| io("creating the archive directory", e))?;
        // Find out now, not an hour in when the first bucket closes.
        let probe = dir.join(format!(".tickfold-probe-{}", std::process::id()));
        let written = File::create(&probe).and_then(|mut f| f.write_all(b"probe"));
        let _ = fs::remove_file(&probe);
        written.map_err(|e| io("writing a probe file in the archive directory", e))?;
        Ok(Archive { config: Arc::new(config), compression: Compression::ZSTD(level) })
    }

    /// The checked configuration.
    pub fn config(&self) -> &ArchiveConfig {
        &self.config
    }

    /// The writer for dataflow worker `worker` (timely's global index, so
    /// workers of different processes never write the same file).
    pub fn writer(&self, worker: usize) -> ArchiveWriter {
        ArchiveWriter {
            files: Files { config: self.config.clone(), worker },
            compression: self.compression,
            // Checked to fit in `new`.
            roll_ms: self.config.roll_interval_ms as i64,
            watermark: i64::MIN,
            series: Vec::new(),
            by_name: HashMap::default(),
            last_series: usize::MAX,
            stats: ArchiveStats::default(),
            resumed: HashMap::default(),
            encoder: None,
            failing: false,
            generation: 0,
        }
    }
}

/// One worker's writer: buffers rows per series and bucket, writes a bucket
/// when the watermark passes it (or, in parts, when it is full).
pub struct ArchiveWriter {
    files: Files,
    compression: Compression,
    roll_ms: i64,
    /// Highest watermark seen; a bucket ending at or below it is closed.
    watermark: i64,
    series: Vec<SeriesBuf>,
    by_name: HashMap<String, usize>,
    /// Index of the last series written, checked first (outputs come in
    /// runs of one series).
    last_series: usize,
    stats: ArchiveStats,
    /// After a restore: where each bucket open at the cut goes on, by
    /// (series, bucket start), taken when the bucket gets its first row.
    resumed: HashMap<(String, i64), u32>,
    /// The thread that writes closed buckets, if encoding in the background.
    encoder: Option<Encoder>,
    /// A write failed and has not succeeded since: write on this thread,
    /// so the worker waits (back-pressure) until the archive takes rows again.
    failing: bool,
    /// Checkpoints taken since the first run of this writer's lineage (one
    /// more than the cut it was restored from); late buckets carry it into
    /// their parts' names.
    generation: u64,
}

/// What a checkpoint needs of one worker's archive: its watermark, and per
/// bucket still open then, where its parts stand.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ArchiveCut {
    pub roll_interval_ms: u64,
    pub watermark: i64,
    pub open: Vec<OpenBucket>,
    /// The writer's generation at the cut: late parts carry the generation
    /// they were written in, and a restore removes those written after the
    /// cut (their rows come again).
    pub generation: u64,
}

/// A bucket open at a checkpoint.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct OpenBucket {
    pub series: String,
    pub start_ms: i64,
    /// Parts `0..next_seq` hold its rows before the cut (late buckets start
    /// higher; every part below `next_seq` is kept).
    pub next_seq: u32,
}

/// What a series' files need: its name, fields, kind, schema and Parquet
/// settings; shared with the encoding thread.
struct SeriesMeta {
    name: String,
    fields: Vec<String>,
    raw: bool,
    schema: SchemaRef,
    props: WriterProperties,
}

/// A series and its open buckets.
struct SeriesBuf {
    meta: Arc<SeriesMeta>,
    buckets: Vec<Bucket>,
    /// Index of the last bucket written to (`usize::MAX` for none).
    last_bucket: usize,
}

impl SeriesBuf {
    /// Takes back a bucket whose write failed (or was not tried). Rows that
    /// came for the same bucket meanwhile opened another one: the two become
    /// one, under the names of the one tried first, so every row is written
    /// once and no file is numbered twice.
    fn put_back(&mut self, mut bucket: Bucket) {
        self.last_bucket = usize::MAX;
        // Back in the buffers it is the open bucket again, whose close
        // removes the stale parts.
        bucket.partial = false;
        if let Some(i) = self.buckets.iter().position(|b| b.start_ms == bucket.start_ms) {
            let other = self.buckets.swap_remove(i);
            let keep_other = match (other.first_seq, bucket.first_seq) {
                (Some(_), None) => true,
                (None, Some(_)) => false,
                // Both named: the lower numbers were taken first (a part cut
                // when the bucket was full, and the rest of the bucket).
                (Some(a), Some(b)) => a < b,
                // Neither tried: the on-time one came first.
                (None, None) => !other.late && bucket.late,
            };
            let (mut keep, rest) = if keep_other { (other, bucket) } else { (bucket, other) };
            keep.absorb(&rest);
            bucket = keep;
        }
        self.buckets.push(bucket);
    }
}

/// The rows of one series in one event-time bucket, as columns.
struct Bucket {
    start_ms: i64,
    /// Opened after the watermark had passed its end: its files continue the
    /// sequence on disk rather than start it.
    late: bool,
    /// The sequence number of its first file, fixed at the first attempt to
    /// write it so that a retry reuses the same names.
    first_seq: Option<u32>,
    /// Some of its rows were written at a checkpoint: `first_seq` continues
    /// after those parts, which are not stale.
    flushed: bool,
    /// The rows of a bucket still open, cut off because it was full: its
    /// write leaves stale parts alone (the bucket's close removes them).
    partial: bool,
    /// Late buckets: the writer's generation when the bucket opened, in its
    /// parts' names (a checkpoint writes every bucket, so no bucket outlives
    /// its generation's cut).
    generation: u64,
    /// Symbols interned for this bucket only, so the table dies with it.
    names: Vec<Box<str>>,
    ids: HashMap<Box<str>, u32>,
    last_symbol: u32,
    symbol: Vec<u32>,
    ts: Vec<i64>,
    /// One column per field.
    values: Vec<Vec<f64>>,
    /// Raw series only.
    partition: Vec<i32>,
    offset: Vec<i64>,
}

impl Bucket {
    fn new(start_ms: i64, late: bool, fields: usize) -> Bucket {
        Bucket {
            start_ms,
            late,
            first_seq: None,
            flushed: false,
            partial: false,
            generation: 0,
            names: Vec::new(),
            ids: HashMap::default(),
            last_symbol: 0,
            symbol: Vec::new(),
            ts: Vec::new(),
            values: vec![Vec::new(); fields],
            partition: Vec::new(),
            offset: Vec::new(),
        }
    }

    fn len(&self) -> usize {
        self.ts.len()
    }

    /// Room for `rows` more rows (with partition and offset if `raw`).
    fn reserve(&mut self, rows: usize, raw: bool) {
        self.symbol.reserve(rows);
        self.ts.reserve(rows);
        for col in &mut self.values {
            col.reserve(rows);
        }
        if raw {
            self.partition.reserve(rows);
            self.offset.reserve(rows);
        }
    }

    /// Forgets the rows (written at a checkpoint); the next parts continue
    /// at `next_seq`.
    fn written_up_to(&mut self, next_seq: u32) {
        let fields = self.values.len();
        *self = Bucket { first_seq: Some(next_seq), flushed: true, ..Bucket::new(self.start_ms, self.late, fields) };
    }

    fn intern(&mut self, symbol: &str) -> u32 {
        if self.names.get(self.last_symbol as usize).is_some_and(|n| **n == *symbol) {
            return self.last_symbol;
        }
        let id = match self.ids.get(symbol) {
            Some(&id) => id,
            None => {
                let id = self.names.len() as u32;
                self.names.push(symbol.into());
                self.ids.insert(symbol.into(), id);
                id
            }
        };
        self.last_symbol = id;
        id
    }

    fn push(&mut self, symbol: &str, ts: i64, values: &[f64], raw: Option<(i32, i64)>) {
        let id = self.intern(symbol);
        self.symbol.push(id);
        self.ts.push(ts);
        for (col, v) in self.values.iter_mut().zip(values) {
            col.push(*v);
        }
        if let Some((partition, offset)) = raw {
            self.partition.push(partition);
            self.offset.push(offset);
        }
    }

    /// Adds the rows of `other`, a bucket of the same series and start.
    fn absorb(&mut self, other: &Bucket) {
        let mut values = Vec::with_capacity(other.values.len());
        for i in 0..other.len() {
            values.clear();
            values.extend(other.values.iter().map(|column| column[i]));
            let raw = (!other.partition.is_empty()).then(|| (other.partition[i], other.offset[i]));
            self.push(&other.names[other.symbol[i] as usize], other.ts[i], &values, raw);
        }
    }

    /// Row indices in file order: by symbol, then ts (then partition and
    /// offset), ties in arrival order.
    fn file_order(&self, raw: bool) -> Vec<usize> {
        let rank = self.symbol_ranks();
        // Rows by symbol with a counting sort (stable: arrival order within
        // a symbol), then each symbol's rows by time. Those arrive nearly in
        // time order (a symbol is read from one partition, only lateness
        // reorders it), so most runs are found sorted by one pass, and the
        // rest go to a stable sort that is quick on nearly sorted input.
        let mut start = vec![0usize; self.names.len() + 1];
        for &id in &self.symbol {
            start[rank[id as usize] as usize + 1] += 1;
        }
        for r in 1..start.len() {
            start[r] += start[r - 1];
        }
        let mut order = vec![0usize; self.len()];
        let mut next = start.clone();
        for (i, &id) in self.symbol.iter().enumerate() {
            let r = rank[id as usize] as usize;
            order[next[r]] = i;
            next[r] += 1;
        }
        for run in start.windows(2) {
            let rows = &mut order[run[0]..run[1]];
            if raw {
                let key = |i: usize| (self.ts[i], self.partition[i], self.offset[i]);
                if !rows.windows(2).all(|w| key(w[0]) <= key(w[1])) {
                    rows.sort_by_key(|&i| key(i));
                }
            } else if !rows.windows(2).all(|w| self.ts[w[0]] <= self.ts[w[1]]) {
                rows.sort_by_key(|&i| self.ts[i]);
            }
        }
        order
    }

    /// Each interned symbol's rank in name order.
    fn symbol_ranks(&self) -> Vec<u32> {
        let mut by_name: Vec<u32> = (0..self.names.len() as u32).collect();
        by_name.sort_unstable_by(|&a, &b| self.names[a as usize].cmp(&self.names[b as usize]));
        let mut rank = vec![0u32; self.names.len()];
        for (r, &id) in by_name.iter().enumerate() {
            rank[id as usize] = r as u32;
        }
        rank
    }

    /// [`file_order`](Self::file_order) by comparisons: rows by symbol
    /// name, then time, then (raw rows) partition and offset; ties keep
    /// their arrival order. The reference the tests hold it to.
    #[cfg(test)]
    fn file_order_plain(&self, raw: bool, rank: &[u32]) -> Vec<usize> {
        let mut order: Vec<usize> = (0..self.len()).collect();
        if raw {
            order.sort_by_key(|&i| (rank[self.symbol[i] as usize], self.ts[i], self.partition[i], self.offset[i]));
        } else {
            order.sort_by_key(|&i| (rank[self.symbol[i] as usize], self.ts[i]));
        }
        order
    }

    /// The rows `rows` as a batch of `schema`.
    fn batch(&self, schema: &SchemaRef, rows: &[usize], raw: bool) -> Result<RecordBatch, arrow::error::ArrowError> {
        let bytes: usize = rows.iter().map(|&i| self.names[self.symbol[i] as usize].len()).sum();
        let mut symbols = StringBuilder::with_capacity(rows.len(), bytes);
        for &i in rows {
            symbols.append_value(&self.names[self.symbol[i] as usize]);
        }
        let mut columns: Vec<ArrayRef> = Vec::with_capacity(schema.fields().len());
        columns.push(Arc::new(symbols.finish()));
        columns.push(Arc::new(
            TimestampMillisecondArray::from_iter_values(rows.iter().map(|&i| self.ts[i])).with_timezone("UTC"),
        ));
        for col in &self.values {
            columns.push(Arc::new(Float64Array::from_iter_values(rows.iter().map(|&i| col[i]))));
        }
        if raw {
            columns.push(Arc::new(Int32Array::from_iter_values(rows.iter().map(|&i| self.partition[i]))));
            columns.push(Arc::new(Int64Array::from_iter_values(rows.iter().map(|&i| self.offset[i]))));
        }
        RecordBatch::try_new(schema.clone(), columns)
    }
}

impl ArchiveWriter {
    /// Buffers one sample of output series `series`.
    pub fn write(
        &mut self,
        series: &str,
        fields: &[String],
        symbol: &str,
        ts: i64,
        values: &[f64],
    ) -> Result<(), ArchiveError> {
        self.push(series, fields, symbol, ts, values, None)
    }

    /// Buffers one raw record of series `series` (trades as read from
    /// Kafka), with the partition and offset it was read at.
    #[allow(clippy::too_many_arguments)] // The sample's parts, as in `write`, plus where it was read.
    pub fn write_raw(
        &mut self,
        series: &str,
        fields: &[String],
        symbol: &str,
        ts: i64,
        values: &[f64],
        partition: i32,
        offset: i64,
    ) -> Result<(), ArchiveError> {
        self.push(series, fields, symbol, ts, values, Some((partition, offset)))
    }

    /// Tells the writer no row below `watermark` will come (except late
    /// ones), writing every bucket that ends at or below it, every late
    /// bucket, and the rows so far of every bucket holding
    /// `max_buffered_rows`. A lower watermark than one seen before closes
    /// nothing.
    ///
    /// On error the unwritten buckets stay buffered; calling again retries
    /// them under the same file names.
    pub fn advance(&mut self, watermark: i64) -> Result<(), ArchiveError> {
        self.watermark = self.watermark.max(watermark);
        // What the encoding thread has done; after a failure there, all it
        // had is back in the buffers, and the writes below happen here.
        self.collect(false)?;
        let background = self.encoder.is_some() && !self.failing;
        for s in 0..self.series.len() {
            // Oldest first, so an error leaves the newest buckets buffered.
            while let Some(i) = self.due(s) {
                let bucket = self.series[s].buckets.swap_remove(i);
                self.series[s].last_bucket = usize::MAX;
                self.hand_over(s, bucket, background)?;
            }
            // Open buckets that are full: their rows go now, and the bucket
            // fills again under the part numbers that follow.
            while let Some(i) = self.full(s) {
                let bucket = self.cut(s, i);
                self.hand_over(s, bucket, background)?;
            }
        }
        self.failing = false;
        Ok(())
    }

    /// Writes what is due without moving the watermark: late buckets and
    /// full ones. For callers that write often while the watermark stands
    /// (a partition that holds it back), so full buckets do not wait.
    pub fn write_due(&mut self) -> Result<(), ArchiveError> {
        self.advance(i64::MIN)
    }

    /// Writes `bucket` of series `s`, or hands it to the encoding thread;
    /// a failed write puts it back in the buffers.
    fn hand_over(&mut self, s: usize, mut bucket: Bucket, background: bool) -> Result<(), ArchiveError> {
        if background {
            return self.send(s, bucket);
        }
        match self.files.write_bucket(&self.series[s].meta, &mut bucket) {
            Ok((files, bytes)) => {
                self.stats.written(bucket.len() as u64, files, bytes);
                Ok(())
            }
            Err(e) => {
                self.series[s].put_back(bucket);
                self.stats.failed_writes += 1;
                Err(e)
            }
        }
    }

    /// An open on-time bucket of series `s` holding `max_buffered_rows`.
    /// (A late bucket is written at this `advance` anyway.)
    fn full(&self, s: usize) -> Option<usize> {
        let most = self.files.config.max_buffered_rows;
        self.series[s].buckets.iter().position(|b| !b.late && b.len() >= most)
    }

    /// Takes the rows of open bucket `i` of series `s`, named now, and
    /// leaves in its place an empty bucket whose parts follow theirs. It is
    /// still the same bucket: when it closes it removes stale parts past its
    /// own, unless a checkpoint or restore flushed it. The cut parts remove
    /// none: a replay killed before the bucket closes leaves the earlier
    /// run's parts above its own, so rows are there at least once, never
    /// lost (once again when a replay completes).
    fn cut(&mut self, s: usize, i: usize) -> Bucket {
        let per_file = self.files.config.max_rows_per_file;
        let buf = &mut self.series[s];
        buf.last_bucket = usize::MAX;
        let full = &mut buf.buckets[i];
        // The number the writer would give it: only on-time buckets are cut,
        // and theirs start at 0 (a late bucket's depend on what is on disk).
        let first = *full.first_seq.get_or_insert(0);
        let mut rest = Bucket::new(full.start_ms, false, full.values.len());
        rest.first_seq = Some(first + full.len().div_ceil(per_file) as u32);
        rest.flushed = full.flushed;
        // It is likely to fill again: no regrowing from empty.
        rest.reserve(full.len(), !full.partition.is_empty());
        let mut taken = std::mem::replace(full, rest);
        taken.partial = true;
        taken
    }

    /// Writes every bucket: the end of the input. Rows written afterwards
    /// count as late.
    pub fn finish(&mut self) -> Result<(), ArchiveError> {
        self.advance(i64::MAX)?;
        self.collect(true)
    }

    /// A checkpoint: writes the rows of every open bucket as parts that
    /// continue its sequence, empties the buffers, and says where each open
    /// bucket stands.
    pub fn checkpoint(&mut self) -> Result<ArchiveCut, ArchiveError> {
        // Buckets closed before the cut are on disk before it counts: the
        // restore keeps closed buckets' files and never writes them again.
        self.collect(true)?;
        let mut open = Vec::new();
        for s in 0..self.series.len() {
            for b in 0..self.series[s].buckets.len() {
                let mut bucket = std::mem::replace(&mut self.series[s].buckets[b], Bucket::new(0, false, 0));
                let result = if bucket.len() > 0 {
                    self.files.write_bucket(&self.series[s].meta, &mut bucket)
                } else {
                    Ok((0, 0))
                };
                let (files, bytes) = match result {
                    Ok(done) => done,
                    Err(e) => {
                        self.series[s].buckets[b] = bucket;
                        self.stats.failed_writes += 1;
                        return Err(e);
                    }
                };
                let rows = bucket.len() as u64;
                self.stats.written(rows, files, bytes);
                let next_seq = bucket.first_seq.unwrap_or(0) + files as u32;
                if bucket.first_seq.is_some() {
                    bucket.written_up_to(next_seq);
                }
                open.push(OpenBucket { series: self.series[s].meta.name.clone(), start_ms: bucket.start_ms, next_seq });
                self.series[s].buckets[b] = bucket;
            }
        }
        // Buckets open at the cut this writer was restored from that have
        // had no row since: still open, their parts still held.
        for ((series, start_ms), &next_seq) in &self.resumed {
            open.push(OpenBucket { series: series.clone(), start_ms: *start_ms, next_seq });
        }
        let cut = ArchiveCut {
            roll_interval_ms: self.roll_ms as u64,
            watermark: self.watermark,
            open,
            generation: self.generation,
        };
        self.generation += 1;
        Ok(cut)
    }

    /// Takes up from checkpoint `cut` after a crash, before any row is
    /// written: removes this worker's parts of buckets that were open at
    /// the cut or opened after it, except those the cut holds, and
    /// continues each open bucket's sequence.
    pub fn restore(&mut self, cut: &ArchiveCut) -> Result<(), ArchiveError> {
        if cut.roll_interval_ms as i64 != self.roll_ms {
            return Err(ArchiveError::Io {
                op: "restoring from a checkpoint",
                path: self.files.config.dir.clone(),
                source: io::Error::other(format!(
                    "the checkpoint was taken with roll_interval_ms = {}, the config now says {}; put it back until the next checkpoint",
                    cut.roll_interval_ms, self.roll_ms
                )),
            });
        }
        self.watermark = cut.watermark;
        let keep: HashMap<(&str, i64), u32> =
            cut.open.iter().map(|o| ((o.series.as_str(), o.start_ms), o.next_seq)).collect();
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| ArchiveError::Io { op: "restoring from a checkpoint", path: path.clone(), source }
        };
        let root = &self.files.config.dir;
        let series_dirs = match fs::read_dir(root) {
            Ok(d) => d,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(io(root)(e)),
        };
        for series_dir in series_dirs {
            let series_dir = series_dir.map_err(io(root))?.path();
            let Some(series) = series_dir.file_name().and_then(|n| n.to_str()).and_then(|n| n.strip_prefix("series="))
            else {
                continue;
            };
            let series = series.to_string();
            for date_dir in fs::read_dir(&series_dir).map_err(io(&series_dir))? {
                let date_dir = date_dir.map_err(io(&series_dir))?.path();
                if !date_dir.is_dir() {
                    continue;
                }
                for file in fs::read_dir(&date_dir).map_err(io(&date_dir))? {
                    let path = file.map_err(io(&date_dir))?.path();
                    let Some(part) = path.file_name().and_then(|n| n.to_str()).and_then(PartName::parse) else {
                        continue;
                    };
                    if part.worker != self.files.worker {
                        continue;
                    }
                    let (start, seq) = (part.bucket_start_ms, part.seq);
                    let closed_at_cut = start.saturating_add(self.roll_ms) <= cut.watermark;
                    let held = keep.get(&(series.as_str(), start)).is_some_and(|&next| seq < next);
                    // A late part of a bucket closed at the cut, written after it.
                    let late_after_cut = part.generation.is_some_and(|g| g > cut.generation);
                    if (!closed_at_cut && !held) || (closed_at_cut && late_after_cut) {
                        fs::remove_file(&path).map_err(io(&path))?;
                        info!(worker = self.files.worker, path = %path.display(), "removed a part written after the checkpoint (it is written again)");
                    }
                }
            }
        }
        self.resumed = cut.open.iter().map(|o| ((o.series.clone(), o.start_ms), o.next_seq)).collect();
        self.generation = cut.generation + 1;
        Ok(())
    }

    /// Counts so far.
    pub fn stats(&self) -> ArchiveStats {
        self.stats
    }

    /// The worker this writer belongs to.
    pub fn worker(&self) -> usize {
        self.files.worker
    }

    /// Encodes and writes closed buckets on a thread of this writer's own,
    /// in the order they close, while the worker goes on with the next rows.
    /// Files, names and bytes are those of the plain writer; what changes is
    /// when they appear: `advance` hands the buckets over, and `finish` and
    /// `checkpoint` wait until every bucket handed over is on disk. Errors
    /// come back with the next call; from then on, until a write succeeds
    /// again, this thread writes (and so the worker waits) as without one.
    pub fn encode_in_background(mut self) -> Result<ArchiveWriter, ArchiveError> {
        let encoder = Encoder::spawn(self.files.clone()).map_err(|source| ArchiveError::Io {
            op: "starting the encoding thread of",
            path: self.files.config.dir.clone(),
            source,
        })?;
        self.encoder = Some(encoder);
        Ok(self)
    }

    /// Hands closed bucket `bucket` of series `s` to the encoding thread,
    /// waiting while its queue is full.
    fn send(&mut self, s: usize, bucket: Bucket) -> Result<(), ArchiveError> {
        let encoder = self.encoder.as_mut().expect("only called with an encoder");
        let job = Job { series: s, meta: self.series[s].meta.clone(), bucket };
        match encoder.jobs.as_ref().expect("open until dropped").send(job) {
            Ok(()) => {
                encoder.in_flight += 1;
                Ok(())
            }
            Err(mpsc::SendError(job)) => {
                self.series[s].put_back(job.bucket);
                Err(encoder_gone(&self.files))
            }
        }
    }

    /// Takes the encoding thread's reports: those in so far, or with `wait`
    /// all of them. A failed bucket, and those handed back untried after it,
    /// return to the buffers; the first error is returned.
    fn collect(&mut self, wait: bool) -> Result<(), ArchiveError> {
        let Some(encoder) = self.encoder.as_mut() else { return Ok(()) };
        let mut error = None;
        while encoder.in_flight > 0 {
            // After a failure, every bucket still out is taken back first.
            let done = if wait || error.is_some() { encoder.done.recv().ok() } else { encoder.done.try_recv().ok() };
            let Some(Done { series, rows, result }) = done else {
                if wait || error.is_some() {
                    // The thread is gone (it panicked) with buckets unwritten.
                    return Err(error.unwrap_or_else(|| encoder_gone(&self.files)));
                }
                break;
            };
            encoder.in_flight -= 1;
            match result {
                Ok((files, bytes)) => {
                    self.stats.written(rows, files, bytes);
                }
                Err((e, bucket)) => {
                    if let Some(e) = e {
                        self.stats.failed_writes += 1;
                        error.get_or_insert(e);
                    }
                    self.series[series].put_back(bucket);
                }
            }
        }
        if encoder.in_flight == 0 {
            encoder.halted.store(false, Ordering::Release);
        }
        match error {
            Some(e) => {
                self.failing = true;
                Err(e)
            }
            None => Ok(()),
        }
    }

    fn push(
        &mut self,
        series: &str,
        fields: &[String],
        symbol: &str,
        ts: i64,
        values: &[f64],
        raw: Option<(i32, i64)>,
    ) -> Result<(), ArchiveError> {
        if values.len() != fields.len() {
            return Err(ArchiveError::Arity { series: series.into(), fields: fields.len(), values: values.len() });
        }
        let s = self.lookup(series, fields, raw.is_some())?;
        let start = bucket_start(ts, self.roll_ms);
        let late = start.saturating_add(self.roll_ms) <= self.watermark;
        let buf = &mut self.series[s];
        let b = match buf.buckets.get(buf.last_bucket) {
            Some(b) if b.start_ms == start => buf.last_bucket,
            _ => match buf.buckets.iter().position(|b| b.start_ms == start) {
                Some(b) => b,
                None => {
                    if late {
                        debug!(
                            worker = self.files.worker,
                            series,
                            bucket_start_ms = start,
                            "late rows for a closed bucket"
                        );
                    }
                    let mut bucket = Bucket::new(start, late, fields.len());
                    bucket.generation = self.generation;
                    if let Some(next) =
                        (!self.resumed.is_empty()).then(|| self.resumed.remove(&(series.to_string(), start))).flatten()
                    {
                        // Open at the checkpoint: go on after its parts.
                        bucket.first_seq = Some(next);
                        bucket.flushed = true;
                    }
                    buf.buckets.push(bucket);
                    buf.buckets.len() - 1
                }
            },
        };
        buf.last_bucket = b;
        buf.buckets[b].push(symbol, ts, values, raw);
        self.stats.buffered_rows += 1;
        Ok(())
    }

    /// The index of series `series`, registering it on first sight, after
    /// checking it keeps its fields and kind.
    fn lookup(&mut self, series: &str, fields: &[String], raw: bool) -> Result<usize, ArchiveError> {
        let s = match self.series.get(self.last_series) {
            Some(buf) if buf.meta.name == series => self.last_series,
            _ => match self.by_name.get(series) {
                Some(&s) => s,
                None => self.register(series, fields, raw)?,
            },
        };
        let buf = &self.series[s].meta;
        if buf.fields != fields {
            return Err(ArchiveError::FieldsChanged {
                series: series.into(),
                before: buf.fields.clone(),
                now: fields.to_vec(),
            });
        }
        if buf.raw != raw {
            return Err(ArchiveError::KindChanged { series: series.into(), before: kind(buf.raw), now: kind(raw) });
        }
        self.last_series = s;
        Ok(s)
    }

    fn register(&mut self, series: &str, fields: &[String], raw: bool) -> Result<usize, ArchiveError> {
        check_series_name(series)?;
        let bad =
            |field: &String, problem| ArchiveError::BadField { series: series.into(), field: field.clone(), problem };
        for (i, f) in fields.iter().enumerate() {
            if f.is_empty() {
                return Err(bad(f, "is empty"));
            }
            if RESERVED.contains(&f.as_str()) || (raw && RAW_RESERVED.contains(&f.as_str())) {
                return Err(bad(f, "has the name of a column the archive adds"));
            }
            if fields[..i].contains(f) {
                return Err(bad(f, "appears twice"));
            }
        }
        let schema = series_schema(fields, raw);
        let props = writer_props(series, fields, raw, self.compression);
        self.series.push(SeriesBuf {
            meta: Arc::new(SeriesMeta { name: series.into(), fields: fields.to_vec(), raw, schema, props }),
            buckets: Vec::new(),
            last_bucket: usize::MAX,
        });
        self.by_name.insert(series.into(), self.series.len() - 1);
        Ok(self.series.len() - 1)
    }

    /// The oldest bucket of series `s` due to be written.
    fn due(&self, s: usize) -> Option<usize> {
        let roll = self.roll_ms;
        let buckets = &self.series[s].buckets;
        (0..buckets.len())
            .filter(|&i| buckets[i].start_ms.saturating_add(roll) <= self.watermark)
            .min_by_key(|&i| buckets[i].start_ms)
    }
}

/// A closed bucket on its way to the encoding thread.
struct Job {
    series: usize,
    meta: Arc<SeriesMeta>,
    bucket: Bucket,
}

/// What became of a job: its files and bytes, or the bucket back with the
/// error (`None`: not tried, because a write before it failed).
struct Done {
    series: usize,
    rows: u64,
    result: Result<(u64, u64), (Option<ArchiveError>, Bucket)>,
}

/// Closed buckets waiting for the encoding thread, beyond the one it is
/// writing: enough to keep it busy, few enough to bound the memory.
const ENCODER_QUEUE: usize = 2;

/// The thread that encodes and writes one writer's closed buckets, one at a
/// time in the order they closed (a late bucket's parts are numbered after
/// those on disk, so the order matters).
struct Encoder {
    jobs: Option<mpsc::SyncSender<Job>>,
    done: mpsc::Receiver<Done>,
    /// Jobs sent and not yet reported.
    in_flight: usize,
    /// Set by the thread when a write fails: it hands the jobs after that
    /// one back untried until the writer has taken everything back.
    halted: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Encoder {
    fn spawn(files: Files) -> io::Result<Encoder> {
        let (jobs, queue) = mpsc::sync_channel::<Job>(ENCODER_QUEUE);
        let (report, done) = mpsc::channel();
        let halted = Arc::new(AtomicBool::new(false));
        let stop = halted.clone();
        let thread = std::thread::Builder::new().name(format!("archive-w{}", files.worker)).spawn(move || {
            for Job { series, meta, mut bucket } in queue {
                let rows = bucket.len() as u64;
                let result = if stop.load(Ordering::Acquire) {
                    Err((None, bucket))
                } else {
                    // A written bucket is dropped here, off the worker.
                    files.write_bucket(&meta, &mut bucket).map_err(|e| {
                        stop.store(true, Ordering::Release);
                        (Some(e), bucket)
                    })
                };
                if report.send(Done { series, rows, result }).is_err() {
                    break;
                }
            }
        })?;
        Ok(Encoder { jobs: Some(jobs), done, in_flight: 0, halted, thread: Some(thread) })
    }
}

impl Drop for Encoder {
    fn drop(&mut self) {
        // The thread writes what it was given, then ends.
        drop(self.jobs.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn encoder_gone(files: &Files) -> ArchiveError {
    ArchiveError::Encode {
        path: files.config.dir.clone(),
        reason: format!(
            "worker {}'s encoding thread ended with buckets unwritten (a panic, see the log); they are replayed from the last checkpoint after a restart",
            files.worker
        ),
    }
}

/// Where a writer's files go: the archive's config and the worker, all
/// that writing a bucket needs besides the bucket (so a thread of its own
/// can do it).
#[derive(Clone)]
struct Files {
    config: Arc<ArchiveConfig>,
    worker: usize,
}

impl Files {
    /// Writes one bucket's files; returns how many files and bytes.
    fn write_bucket(&self, series: &SeriesMeta, bucket: &mut Bucket) -> Result<(u64, u64), ArchiveError> {
        let dir =
            self.config.dir.join(format!("series={}", series.name)).join(format!("date={}", utc_date(bucket.start_ms)));
        self.ensure_dir(&dir)?;
        let first = match bucket.first_seq {
            Some(seq) => seq,
            None => {
                let seq = if bucket.late {
                    existing_parts(&dir, self.worker, bucket.start_ms)?
                        .into_iter()
                        .map(|p| p.seq)
                        .max()
                        .map_or(0, |s| s + 1)
                } else {
                    0
                };
                bucket.first_seq = Some(seq);
                seq
            }
        };
        let order = bucket.file_order(series.raw);
        let mut bytes = 0;
        let mut files = 0u32;
        for rows in order.chunks(self.config.max_rows_per_file) {
            let name = PartName {
                worker: self.worker,
                bucket_start_ms: bucket.start_ms,
                seq: first + files,
                generation: bucket.late.then_some(bucket.generation),
            }
            .to_string();
            let path = dir.join(&name);
            let batch = bucket
                .batch(&series.schema, rows, series.raw)
                .map_err(|e| ArchiveError::Encode { path: path.clone(), reason: e.to_string() })?;
            let written = write_file(&dir, &name, &series.schema, series.props.clone(), &batch, self.config.fsync)?;
            debug!(
                worker = self.worker,
                series = %series.name,
                path = %path.display(),
                rows = rows.len(),
                bytes = written,
                late = bucket.late,
                "archived"
            );
            bytes += written;
            files += 1;
        }
        if !bucket.late && !bucket.flushed && !bucket.partial {
            // Parts past the last one just written are from an earlier run
            // that saw this bucket differently; this run's files replace them.
            let mut removed = false;
            for part in existing_parts(&dir, self.worker, bucket.start_ms)? {
                if part.seq >= first + files {
                    let path = dir.join(part.to_string());
                    fs::remove_file(&path).map_err(|source| ArchiveError::Io {
                        op: "removing a stale part",
                        path: path.clone(),
                        source,
                    })?;
                    info!(worker = self.worker, series = %series.name, path = %path.display(), "removed a part an earlier run left beyond this bucket's files");
                    removed = true;
                }
            }
            if removed && self.config.fsync {
                sync_dir(&dir)?;
            }
        }
        Ok((u64::from(files), bytes))
    }

    /// Creates `dir` (`series=…/date=…`) if missing, making the new entries
    /// durable when fsync is on.
    fn ensure_dir(&self, dir: &Path) -> Result<(), ArchiveError> {
        if dir.is_dir() {
            return Ok(());
        }
        fs::create_dir_all(dir).map_err(|source| ArchiveError::Io {
            op: "creating directory",
            path: dir.to_path_buf(),
            source,
        })?;
        if self.config.fsync {
            // The date directory's entry lives in the series directory, and
            // that one's in the root.
            for parent in dir.ancestors().skip(1).take(2) {
                sync_dir(parent)?;
            }
        }
        Ok(())
    }
}

impl OutputWriter for ArchiveWriter {
    fn write(&mut self, series: &str, fields: &[String], symbol: &str, ts: i64, values: &[f64]) -> io::Result<()> {
        ArchiveWriter::write(self, series, fields, symbol, ts, values).map_err(io::Error::from)
    }

    fn finish(&mut self) -> io::Result<()> {
        ArchiveWriter::finish(self).map_err(io::Error::from)
    }
}

fn kind(raw: bool) -> &'static str {
    if raw { "raw" } else { "output" }
}

fn check_series_name(series: &str) -> Result<(), ArchiveError> {
    let ok = !series.is_empty()
        && !series.starts_with('.')
        && series.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'));
    if ok { Ok(()) } else { Err(ArchiveError::BadSeriesName { series: series.into() }) }
}

/// The start of the bucket holding `ts`.
fn bucket_start(ts: i64, roll_ms: i64) -> i64 {
    // Saturating: a null timestamp read as i64::MIN lands in the lowest bucket.
    ts.saturating_sub(ts.rem_euclid(roll_ms))
}

/// `YYYY-MM-DD`, the UTC date of `ms` (proleptic Gregorian).
fn utc_date(ms: i64) -> String {
    // Howard Hinnant's `civil_from_days`.
    let z = ms.div_euclid(DAY_MS) + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02}")
}

/// A part's file name: `part-w{worker}-{bucket_start_ms}-{seq:04}.parquet`,
/// and for a late part (rows for a bucket already closed)
/// `…-{seq:04}-g{generation}.parquet`, the writer's generation, so that a
/// restore can tell the late parts written after its cut.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct PartName {
    worker: usize,
    bucket_start_ms: i64,
    seq: u32,
    generation: Option<u64>,
}

impl std::fmt::Display for PartName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let PartName { worker, bucket_start_ms, seq, generation } = self;
        write!(f, "part-w{worker}-{bucket_start_ms}-{seq:04}")?;
        if let Some(g) = generation {
            write!(f, "-g{g}")?;
        }
        f.write_str(".parquet")
    }
}

impl PartName {
    /// The parts of a file name this module wrote (bucket starts before the
    /// epoch are negative), or `None` for any other file.
    fn parse(name: &str) -> Option<PartName> {
        let rest = name.strip_prefix("part-w")?.strip_suffix(".parquet")?;
        let (worker, rest) = rest.split_once('-')?;
        let (rest, generation) = match rest.rsplit_once("-g") {
            Some((rest, g)) => (rest, Some(g)),
            None => (rest, None),
        };
        let (start, seq) = rest.rsplit_once('-')?;
        let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
        if !digits(worker) || !digits(seq) || !generation.is_none_or(digits) {
            return None;
        }
        Some(PartName {
            worker: worker.parse().ok()?,
            bucket_start_ms: start.parse().ok()?,
            seq: seq.parse().ok()?,
            generation: match generation {
                Some(g) => Some(g.parse().ok()?),
                None => None,
            },
        })
    }
}

/// The name of on-time part `seq` of a bucket.
#[cfg(test)]
fn part_name(worker: usize, bucket_start_ms: i64, seq: u32) -> String {
    PartName { worker, bucket_start_ms, seq, generation: None }.to_string()
}

/// This worker's parts of this bucket in `dir`, late ones included.
fn existing_parts(dir: &Path, worker: usize, bucket_start_ms: i64) -> Result<Vec<PartName>, ArchiveError> {
    let io = |source| ArchiveError::Io { op: "listing", path: dir.to_path_buf(), source };
    let mut parts = Vec::new();
    for entry in fs::read_dir(dir).map_err(io)? {
        let name = entry.map_err(io)?.file_name();
        let part = name.to_str().and_then(PartName::parse);
        parts.extend(part.filter(|p| p.worker == worker && p.bucket_start_ms == bucket_start_ms));
    }
    Ok(parts)
}

fn series_schema(fields: &[String], raw: bool) -> SchemaRef {
    let mut columns = vec![
        Field::new("symbol", DataType::Utf8, false),
        Field::new("ts", DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into())), false),
    ];
    columns.extend(fields.iter().map(|f| Field::new(f, DataType::Float64, false)));
    if raw {
        columns.push(Field::new("partition", DataType::Int32, false));
        columns.push(Field::new("offset", DataType::Int64, false));
    }
    Arc::new(Schema::new(columns))
}

fn writer_props(series: &str, fields: &[String], raw: bool, compression: Compression) -> WriterProperties {
    let fields_json = serde_json::to_string(fields).expect("a list of strings serializes");
    let metadata = vec![
        KeyValue::new(META_SERIES.into(), series.to_string()),
        KeyValue::new(META_FIELDS.into(), fields_json),
        KeyValue::new(META_KIND.into(), kind(raw).to_string()),
    ];
    let sorted = |column_idx| SortingColumn { column_idx, descending: false, nulls_first: false };
    let mut sorting = vec![sorted(0), sorted(1)];
    if raw {
        let partition = 2 + fields.len() as i32;
        sorting.extend([sorted(partition), sorted(partition + 1)]);
    }
    let mut builder = WriterProperties::builder()
        .set_compression(compression)
        // Dictionaries only where values repeat by construction: timestamps,
        // offsets and indicator values are nearly unique, and building a
        // dictionary for them costs worker time before falling back to plain.
        .set_dictionary_enabled(false)
        .set_column_dictionary_enabled(ColumnPath::from("symbol"), true)
        .set_column_dictionary_enabled(ColumnPath::from("partition"), raw)
        // Rows are sorted by symbol then time, so times (and a raw series'
        // offsets) rise in small steps: deltas pack them into a few bits.
        .set_column_encoding(ColumnPath::from("ts"), Encoding::DELTA_BINARY_PACKED)
        .set_sorting_columns(Some(sorting))
        .set_key_value_metadata(Some(metadata));
    if raw {
        builder = builder.set_column_encoding(ColumnPath::from("offset"), Encoding::DELTA_BINARY_PACKED);
    }
    // Floats with their bytes split into streams (all sign/exponent bytes,
    // then the next byte of each, ...): neighbouring prices share their high
    // bytes, which zstd then finds at once. Together with the deltas this
    // made writing ~40 % cheaper and files ~20 % smaller than plain
    // encoding (`cargo bench -p tickfold --bench archive`, docs/performance.md).
    for field in fields {
        builder = builder.set_column_encoding(ColumnPath::from(field.as_str()), Encoding::BYTE_STREAM_SPLIT);
    }
    builder.build()
}

/// A file that remembers the first I/O error, which the Parquet writer would
/// otherwise flatten into a string, losing "the disk is full".
struct TrackedFile {
    file: File,
    error: Option<io::Error>,
    bytes: u64,
}

impl TrackedFile {
    fn keep(&mut self, e: io::Error) -> io::Error {
        let copy = match e.raw_os_error() {
            Some(code) => io::Error::from_raw_os_error(code),
            None => io::Error::new(e.kind(), e.to_string()),
        };
        self.error.get_or_insert(e);
        copy
    }
}

impl Write for TrackedFile {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self.file.write(buf) {
            Ok(n) => {
                self.bytes += n as u64;
                Ok(n)
            }
            Err(e) => Err(self.keep(e)),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.flush().map_err(|e| self.keep(e))
    }
}

/// Writes `batch` to `dir/name` atomically: a temp file, fsynced when asked,
/// renamed into place. Returns the file's size.
fn write_file(
    dir: &Path,
    name: &str,
    schema: &SchemaRef,
    props: WriterProperties,
    batch: &RecordBatch,
    fsync: bool,
) -> Result<u64, ArchiveError> {
    let path = dir.join(name);
    let tmp = dir.join(format!(".{name}.tmp"));
    let result = encode(&tmp, &path, schema, props, batch, fsync).and_then(|bytes| {
        fs::rename(&tmp, &path).map_err(|source| ArchiveError::Io {
            op: "renaming the temp file into place as",
            path: path.clone(),
            source,
        })?;
        Ok(bytes)
    });
    match result {
        Ok(bytes) => {
            if fsync {
                sync_dir(dir)?;
            }
            Ok(bytes)
        }
        Err(e) => {
            let _ = fs::remove_file(&tmp);
            Err(e)
        }
    }
}

/// Encodes `batch` into `tmp`; errors name `path`, the file being made.
fn encode(
    tmp: &Path,
    path: &Path,
    schema: &SchemaRef,
    props: WriterProperties,
    batch: &RecordBatch,
    fsync: bool,
) -> Result<u64, ArchiveError> {
    let io = |op, source| ArchiveError::Io { op, path: path.to_path_buf(), source };
    let file = File::create(tmp).map_err(|e| io("creating a temp file for", e))?;
    let sink = TrackedFile { file, error: None, bytes: 0 };
    let mut writer = ArrowWriter::try_new(sink, schema.clone(), Some(props))
        .map_err(|e| ArchiveError::Encode { path: path.to_path_buf(), reason: e.to_string() })?;
    // `finish`, not `into_inner`: it flushes everything to the file yet
    // keeps the writer, and so the file's recorded error, in hand.
    let written = writer.write(batch).and_then(|()| writer.finish().map(drop));
    if let Err(e) = written {
        return Err(match writer.inner_mut().error.take() {
            Some(source) => io("writing", source),
            None => match e {
                ParquetError::External(inner) => match inner.downcast::<io::Error>() {
                    Ok(source) => io("writing", *source),
                    Err(other) => ArchiveError::Encode { path: path.to_path_buf(), reason: other.to_string() },
                },
                other => ArchiveError::Encode { path: path.to_path_buf(), reason: other.to_string() },
            },
        });
    }
    let sink = writer.inner();
    if fsync {
        sink.file.sync_all().map_err(|e| io("syncing", e))?;
    }
    Ok(sink.bytes)
}

fn sync_dir(dir: &Path) -> Result<(), ArchiveError> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(|source| ArchiveError::Io {
        op: "syncing directory",
        path: dir.to_path_buf(),
        source,
    })
}

/// One row read back from the archive.
#[derive(Clone, Debug, PartialEq)]
pub struct ArchivedRow {
    /// The key.
    pub symbol: String,
    /// Event time, ms since the Unix epoch.
    pub ts: i64,
    /// One value per field, in the file's field order.
    pub values: Vec<f64>,
    /// Raw series: the Kafka partition the record was read from.
    pub partition: Option<i32>,
    /// Raw series: its offset in that partition.
    pub offset: Option<i64>,
}

/// One file of the archive read back.
#[derive(Clone, Debug, PartialEq)]
pub struct ArchivedPart {
    /// `tickfold.series` from the metadata.
    pub series: String,
    /// `tickfold.fields` from the metadata, in column order.
    pub fields: Vec<String>,
    /// Whether it is a raw series (with partition and offset).
    pub raw: bool,
    /// Its rows in file order.
    pub rows: Vec<ArchivedRow>,
}

/// Every file of `series` under `dir`, by date directory then name; temp
/// files and anything else not named `part-*.parquet` are left out.
pub fn series_files(dir: &Path, series: &str) -> Result<Vec<PathBuf>, ArchiveError> {
    check_series_name(series)?;
    let root = dir.join(format!("series={series}"));
    if !root.exists() {
        return Ok(Vec::new());
    }
    let list = |dir: &Path| -> Result<Vec<(String, PathBuf)>, ArchiveError> {
        let io = |source| ArchiveError::Io { op: "listing", path: dir.to_path_buf(), source };
        let mut out = Vec::new();
        for entry in fs::read_dir(dir).map_err(io)? {
            let entry = entry.map_err(io)?;
            if let Some(name) = entry.file_name().to_str() {
                out.push((name.to_string(), entry.path()));
            }
        }
        out.sort();
        Ok(out)
    };
    let mut files = Vec::new();
    for (date, date_dir) in list(&root)? {
        if !date.starts_with("date=") || !date_dir.is_dir() {
            continue;
        }
        for (name, path) in list(&date_dir)? {
            if name.starts_with("part-") && name.ends_with(".parquet") {
                files.push(path);
            }
        }
    }
    Ok(files)
}

/// Reads every file of `series` back, file after file in the order of
/// [`series_files`]. Fails if the files disagree on the fields.
pub fn read_series(dir: &Path, series: &str) -> Result<Vec<ArchivedRow>, ArchiveError> {
    let mut rows = Vec::new();
    let mut fields: Option<(Vec<String>, PathBuf)> = None;
    for path in series_files(dir, series)? {
        let part = read_part(&path)?;
        match &fields {
            Some((first, first_path)) if *first != part.fields => {
                return Err(ArchiveError::Read {
                    path,
                    reason: format!("fields {:?} differ from {:?} in {}", part.fields, first, first_path.display()),
                });
            }
            Some(_) => {}
            None => fields = Some((part.fields.clone(), path.clone())),
        }
        rows.extend(part.rows);
    }
    Ok(rows)
}

/// Reads one file of the archive.
pub fn read_part(path: &Path) -> Result<ArchivedPart, ArchiveError> {
    let bad = |reason: String| ArchiveError::Read { path: path.to_path_buf(), reason };
    let file =
        File::open(path).map_err(|source| ArchiveError::Io { op: "opening", path: path.to_path_buf(), source })?;
    let builder = ParquetRecordBatchReaderBuilder::try_new(file).map_err(|e| bad(e.to_string()))?;
    let meta = |key: &str| -> Result<String, ArchiveError> {
        builder
            .metadata()
            .file_metadata()
            .key_value_metadata()
            .and_then(|kv| kv.iter().find(|e| e.key == key))
            .and_then(|e| e.value.clone())
            .ok_or_else(|| bad(format!("no `{key}` in the key-value metadata; not a file of a tickfold archive")))
    };
    let series = meta(META_SERIES)?;
    let fields: Vec<String> = serde_json::from_str(&meta(META_FIELDS)?)
        .map_err(|e| bad(format!("`{META_FIELDS}` is not a JSON list: {e}")))?;
    let raw = meta(META_KIND)? == "raw";
    let reader = builder.build().map_err(|e| bad(e.to_string()))?;
    let mut rows = Vec::new();
    for batch in reader {
        let batch = batch.map_err(|e| bad(e.to_string()))?;
        let column = |name: &str, ty: &DataType| -> Result<&ArrayRef, ArchiveError> {
            let col = batch.column_by_name(name).ok_or_else(|| bad(format!("no `{name}` column")))?;
            if col.data_type() != ty {
                return Err(bad(format!("column `{name}` is {}, expected {ty}", col.data_type())));
            }
            Ok(col)
        };
        let symbol = column("symbol", &DataType::Utf8)?.as_string::<i32>();
        let ts = column("ts", &DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into())))?
            .as_primitive::<arrow::datatypes::TimestampMillisecondType>();
        let values: Vec<&Float64Array> = fields
            .iter()
            .map(|f| column(f, &DataType::Float64).map(|c| c.as_primitive::<Float64Type>()))
            .collect::<Result<_, _>>()?;
        let (partition, offset) = if raw {
            (
                Some(column("partition", &DataType::Int32)?.as_primitive::<Int32Type>()),
                Some(column("offset", &DataType::Int64)?.as_primitive::<Int64Type>()),
            )
        } else {
            (None, None)
        };
        for i in 0..batch.num_rows() {
            rows.push(ArchivedRow {
                symbol: symbol.value(i).to_string(),
                ts: ts.value(i),
                values: values.iter().map(|c| c.value(i)).collect(),
                partition: partition.map(|c| c.value(i)),
                offset: offset.map(|c| c.value(i)),
            });
        }
    }
    Ok(ArchivedPart { series, fields, raw, rows })
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    const HOUR: i64 = 3_600_000;

    /// A fresh directory under the system temp dir, removed on drop.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new(name: &str) -> TempDir {
            static NEXT: AtomicUsize = AtomicUsize::new(0);
            let n = NEXT.fetch_add(1, Ordering::Relaxed);
            let path = std::env::temp_dir().join(format!("tickfold-archive-{name}-{}-{n}", std::process::id()));
            let _ = fs::remove_dir_all(&path);
            TempDir(path)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    fn names(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn the_fast_file_order_is_the_plain_one() {
        // Seeded rows with many ties (few symbols, few distinct times, the
        // same time from two partitions), for both kinds of series: in
        // random time order, and in time order with some rows late (the
        // usual case, which the fast order finds sorted per symbol).
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = |n: u64| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x % n
        };
        let symbols = ["MSFT", "AAPL", "NVDA", "A", "AAPL.X"];
        for (raw, nearly_sorted) in [(false, false), (true, false), (false, true), (true, true)] {
            let start = 1_700_000_000_000 - 1_700_000_000_000 % HOUR;
            let mut bucket = Bucket::new(start, false, 1);
            let mut offsets = [0i64; 3];
            for n in 0..5_000 {
                let ts = if nearly_sorted {
                    // Rising in steps of 0 to 2 ms; one row in 50 up to 1 s late.
                    let on_time = start + n * 2 - next(3) as i64;
                    if next(50) == 0 { on_time - next(1000) as i64 } else { on_time }
                } else {
                    start + next(40) as i64 * 90_000
                };
                let symbol = symbols[next(symbols.len() as u64) as usize];
                let partition = next(3) as usize;
                offsets[partition] += 1 + next(3) as i64;
                let source = raw.then_some((partition as i32 - 1, offsets[partition]));
                bucket.push(symbol, ts, &[next(1000) as f64], source);
            }
            let plain = bucket.file_order_plain(raw, &bucket.symbol_ranks());
            assert_eq!(bucket.file_order(raw), plain, "raw: {raw}, nearly sorted: {nearly_sorted}");
            // And it is the order the files promise.
            let key = |i: usize| (bucket.names[bucket.symbol[i] as usize].to_string(), bucket.ts[i]);
            assert!(plain.windows(2).all(|w| key(w[0]) <= key(w[1])));
        }
    }

    fn archive(dir: &Path, max_rows: usize) -> Archive {
        Archive::new(ArchiveConfig { max_rows_per_file: max_rows, ..ArchiveConfig::new(dir) }).unwrap()
    }

    /// Every file under `dir`, by path relative to it, with its bytes.
    fn contents(dir: &Path) -> BTreeMap<String, Vec<u8>> {
        let mut out = BTreeMap::new();
        let mut stack = vec![dir.to_path_buf()];
        while let Some(d) = stack.pop() {
            for entry in fs::read_dir(&d).unwrap() {
                let path = entry.unwrap().path();
                if path.is_dir() {
                    stack.push(path);
                } else {
                    let rel = path.strip_prefix(dir).unwrap().to_string_lossy().into_owned();
                    out.insert(rel, fs::read(&path).unwrap());
                }
            }
        }
        out
    }

    fn assert_no_temp_files(dir: &Path) {
        let temps: Vec<String> = contents(dir).into_keys().filter(|p| p.ends_with(".tmp")).collect();
        assert!(temps.is_empty(), "temp files left: {temps:?}");
    }

    /// A row with its values as bits, so NaN compares equal to itself.
    type RowBits = (String, i64, Vec<u64>, Option<i32>, Option<i64>);

    fn bits(rows: &[ArchivedRow]) -> Vec<RowBits> {
        rows.iter()
            .map(|r| (r.symbol.clone(), r.ts, r.values.iter().map(|v| v.to_bits()).collect(), r.partition, r.offset))
            .collect()
    }

    /// xorshift64*: small, seeded, and the same everywhere.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
        }

        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }
    }

    #[test]
    fn round_trip_keeps_values_bit_for_bit_and_records_the_schema() {
        let tmp = TempDir::new("roundtrip");
        let mut w = archive(&tmp.0, 1000).writer(0);
        let fields = names(&["open", "close"]);
        let odd_nan = f64::from_bits(0x7ff8_0000_0000_0001);
        let input = [
            ("MSFT", 2_000, [1.5, -0.0]),
            ("AAPL", 1_000, [odd_nan, f64::INFINITY]),
            ("AAPL", 3_000, [f64::MIN_POSITIVE / 2.0, f64::NEG_INFINITY]),
            ("MSFT", 1_000, [0.1 + 0.2, f64::MAX]),
            ("AAPL", 2_000, [f64::NAN, 0.0]),
        ];
        for (symbol, ts, values) in &input {
            w.write("bars_1m", &fields, symbol, *ts, values).unwrap();
        }
        assert_eq!(w.stats().buffered_rows, 5);
        w.finish().unwrap();
        let stats = w.stats();
        assert_eq!((stats.rows_written, stats.files_written, stats.buffered_rows), (5, 1, 0));

        let mut expected: Vec<ArchivedRow> = input
            .iter()
            .map(|(s, ts, v)| ArchivedRow {
                symbol: s.to_string(),
                ts: *ts,
                values: v.to_vec(),
                partition: None,
                offset: None,
            })
            .collect();
        expected.sort_by(|a, b| (&a.symbol, a.ts).cmp(&(&b.symbol, b.ts)));
        assert_eq!(bits(&read_series(&tmp.0, "bars_1m").unwrap()), bits(&expected));

        let files = series_files(&tmp.0, "bars_1m").unwrap();
        assert_eq!(files.len(), 1);
        assert_eq!(stats.bytes_written, fs::metadata(&files[0]).unwrap().len());
        let part = read_part(&files[0]).unwrap();
        assert_eq!((part.series.as_str(), &part.fields, part.raw), ("bars_1m", &fields, false));

        let builder = ParquetRecordBatchReaderBuilder::try_new(File::open(&files[0]).unwrap()).unwrap();
        let schema = builder.schema();
        let columns: Vec<(&str, &DataType)> =
            schema.fields().iter().map(|f| (f.name().as_str(), f.data_type())).collect();
        assert_eq!(
            columns,
            [
                ("symbol", &DataType::Utf8),
                ("ts", &DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into()))),
                ("open", &DataType::Float64),
                ("close", &DataType::Float64),
            ]
        );
        assert_eq!(schema.metadata().get(META_SERIES).map(String::as_str), Some("bars_1m"));
        assert_eq!(schema.metadata().get(META_FIELDS).map(String::as_str), Some(r#"["open","close"]"#));
        let group = builder.metadata().row_group(0);
        assert!(group.column(0).dictionary_page_offset().is_some(), "symbol is dictionary-encoded");
        assert!(group.column(1).dictionary_page_offset().is_none(), "ts is not");
        assert!(group.column(1).encodings().any(|e| e == Encoding::DELTA_BINARY_PACKED), "ts as deltas");
        for c in &group.columns()[2..] {
            assert!(c.encodings().any(|e| e == Encoding::BYTE_STREAM_SPLIT), "fields split into byte streams: {c:?}");
        }
        for c in group.columns() {
            assert!(matches!(c.compression(), Compression::ZSTD(_)), "{c:?}");
        }
        let sorting = group.sorting_columns().unwrap();
        assert_eq!(sorting.iter().map(|s| s.column_idx).collect::<Vec<_>>(), [0, 1]);
        assert_no_temp_files(&tmp.0);
    }

    #[test]
    fn hive_paths_carry_the_series_and_the_date_the_bucket_starts_on() {
        let tmp = TempDir::new("hive");
        let config = ArchiveConfig { roll_interval_ms: 5 * HOUR as u64, ..ArchiveConfig::new(&tmp.0) };
        let mut w = Archive::new(config).unwrap().writer(3);
        let fields = names(&["rsi"]);
        // 2024-01-14 23:30 and 2024-01-15 01:00 UTC share the bucket that
        // starts at 2024-01-14 21:00; 2024-01-15 03:00 is in the next one.
        for ts in [1_705_275_000_000, 1_705_280_400_000, 1_705_287_600_000] {
            w.write("rsi_14", &fields, "AAPL", ts, &[50.0]).unwrap();
        }
        w.finish().unwrap();
        let files: Vec<String> = contents(&tmp.0).into_keys().collect();
        assert_eq!(
            files,
            [
                "series=rsi_14/date=2024-01-14/part-w3-1705266000000-0000.parquet",
                "series=rsi_14/date=2024-01-15/part-w3-1705284000000-0000.parquet",
            ]
        );
        assert_eq!(read_part(&tmp.0.join(&files[0])).unwrap().rows.len(), 2);
    }

    #[test]
    fn dates_and_buckets_are_utc_and_floor_below_the_epoch() {
        assert_eq!(utc_date(0), "1970-01-01");
        assert_eq!(utc_date(-1), "1969-12-31");
        assert_eq!(utc_date(1_709_164_800_000), "2024-02-29");
        assert_eq!(utc_date(951_868_800_000 - 1), "2000-02-29");
        assert_eq!(utc_date(951_868_800_000), "2000-03-01");
        assert_eq!(bucket_start(-1, HOUR), -HOUR);
        assert_eq!(bucket_start(HOUR, HOUR), HOUR);
        assert_eq!(bucket_start(i64::MIN, HOUR), i64::MIN);
        assert_eq!(bucket_start(i64::MAX, HOUR), i64::MAX - i64::MAX.rem_euclid(HOUR));
    }

    /// Per symbol, rows in their (deterministic) order; duplicate
    /// timestamps, so the stable sort's tie-breaking is exercised.
    /// symbol, ts, values, partition, offset
    type Record = (String, i64, [f64; 2], i32, i64);

    fn generated() -> Vec<Vec<Record>> {
        let mut rng = Rng(0x5eed);
        let mut offsets = [0i64; 2];
        (0..4)
            .map(|s| {
                let symbol = format!("SYM{}", 3 - s);
                let mut ts = 0;
                (0..40)
                    .map(|_| {
                        ts += (rng.below(4) as i64) * 300_000;
                        let partition = s % 2;
                        offsets[partition as usize] += 1;
                        let values = [rng.next() as f64 / 7.0, f64::from_bits(rng.next() >> 2)];
                        (symbol.clone(), ts, values, partition, offsets[partition as usize])
                    })
                    .collect()
            })
            .collect()
    }

    #[test]
    fn interleavings_across_symbols_give_identical_files() {
        let per_symbol = generated();
        let fields = names(&["a", "b"]);
        let run = |name: &str, interleave: bool| {
            let tmp = TempDir::new(name);
            let mut w = archive(&tmp.0, 17).writer(1);
            let mut next = vec![0usize; per_symbol.len()];
            let mut rng = Rng(if interleave { 7 } else { 1 });
            let mut fed = 0;
            loop {
                let open: Vec<usize> = (0..per_symbol.len()).filter(|&s| next[s] < per_symbol[s].len()).collect();
                let Some(&first) = open.first() else { break };
                let s = if interleave { open[rng.below(open.len() as u64) as usize] } else { first };
                let (symbol, ts, values, partition, offset) = &per_symbol[s][next[s]];
                next[s] += 1;
                w.write("out", &fields, symbol, *ts, values).unwrap();
                w.write_raw("trades", &fields, symbol, *ts, values, *partition, *offset).unwrap();
                fed += 1;
                if interleave && fed % 25 == 0 {
                    // No row is late: every symbol's timestamps only grow.
                    let safe = (0..per_symbol.len())
                        .map(|s| per_symbol[s].get(next[s]).map_or(i64::MAX, |r| r.1))
                        .min()
                        .unwrap();
                    w.advance(safe).unwrap();
                }
            }
            w.finish().unwrap();
            (contents(&tmp.0), read_series(&tmp.0, "trades").unwrap())
        };
        let (a, raw_a) = run("order-a", false);
        let (b, raw_b) = run("order-b", true);
        assert!(a.len() > 4, "several buckets and files: {:?}", a.keys());
        assert_eq!(a.keys().collect::<Vec<_>>(), b.keys().collect::<Vec<_>>());
        for (path, bytes) in &a {
            assert!(b[path] == *bytes, "{path} differs between interleavings");
        }
        // And a raw record is there exactly once.
        let mut seen: Vec<(i32, i64)> = raw_a.iter().map(|r| (r.partition.unwrap(), r.offset.unwrap())).collect();
        seen.sort();
        seen.dedup();
        assert_eq!(seen.len(), 160);
        assert_eq!(bits(&raw_a), bits(&raw_b));
    }

    #[test]
    fn a_bucket_rolls_into_files_of_at_most_max_rows() {
        let tmp = TempDir::new("roll");
        let mut w = archive(&tmp.0, 3).writer(0);
        let fields = names(&["v"]);
        for i in 0..10 {
            let symbol = if i % 2 == 0 { "B" } else { "A" };
            w.write("s", &fields, symbol, 100 - i, &[i as f64]).unwrap();
        }
        w.advance(HOUR).unwrap();
        let files = series_files(&tmp.0, "s").unwrap();
        let names: Vec<String> = files.iter().map(|p| p.file_name().unwrap().to_string_lossy().into_owned()).collect();
        assert_eq!(
            names,
            ["part-w0-0-0000.parquet", "part-w0-0-0001.parquet", "part-w0-0-0002.parquet", "part-w0-0-0003.parquet"]
        );
        let sizes: Vec<usize> = files.iter().map(|p| read_part(p).unwrap().rows.len()).collect();
        assert_eq!(sizes, [3, 3, 3, 1]);
        let keys: Vec<(String, i64)> =
            read_series(&tmp.0, "s").unwrap().into_iter().map(|r| (r.symbol, r.ts)).collect();
        let mut sorted = keys.clone();
        sorted.sort();
        assert_eq!(keys, sorted, "files continue one another in sort order");
        assert_eq!(w.stats().files_written, 4);
    }

    /// An archive in `dir` with files of `max_rows` rows, whose buckets are
    /// written once they hold `max_buffered` rows.
    fn buffering(dir: &Path, max_rows: usize, max_buffered: usize) -> Archive {
        Archive::new(ArchiveConfig {
            max_rows_per_file: max_rows,
            max_buffered_rows: max_buffered,
            ..ArchiveConfig::new(dir)
        })
        .unwrap()
    }

    /// The part numbers of the files of `series` (every bucket's, pooled),
    /// in order.
    fn part_numbers(dir: &Path, series: &str) -> Vec<u32> {
        let mut seqs: Vec<u32> = series_files(dir, series)
            .unwrap()
            .iter()
            .map(|p| PartName::parse(p.file_name().unwrap().to_str().unwrap()).expect("a part").seq)
            .collect();
        seqs.sort();
        seqs
    }

    /// Writes row `i` of series `s` (symbol X, time `i`, value `i`) for
    /// each `i` of `rows`, moving the watermark to `i` after each.
    fn write_each(w: &mut ArchiveWriter, rows: std::ops::Range<i64>) {
        for i in rows {
            w.write("s", &names(&["v"]), "X", i, &[i as f64]).unwrap();
            w.advance(i).unwrap();
        }
    }

    /// The values of series `series` as integers, in order.
    fn sorted_values(dir: &Path, series: &str) -> Vec<i64> {
        let mut values: Vec<i64> = read_series(dir, series).unwrap().iter().map(|r| r.values[0] as i64).collect();
        values.sort();
        values
    }

    #[test]
    fn a_full_bucket_is_written_before_it_closes_and_every_row_lands_once() {
        let tmp = TempDir::new("full-bucket");
        let fields = names(&["v"]);
        let mut w = buffering(&tmp.0, 4, 10).writer(0);
        let mut most_buffered = 0;
        // 53 rows of one hour, two symbols, the watermark moving every 5
        // rows but staying inside the hour.
        for i in 0..53i64 {
            let symbol = if i % 3 == 0 { "B" } else { "A" };
            w.write("s", &fields, symbol, 1_000 + i, &[i as f64]).unwrap();
            if i % 5 == 4 {
                w.advance(i).unwrap();
            }
            most_buffered = most_buffered.max(w.stats().buffered_rows);
        }
        assert!(most_buffered < 15, "at most 10 rows and one step's more: {most_buffered}");
        let before_close = series_files(&tmp.0, "s").unwrap();
        assert!(before_close.len() >= 9, "full buckets went out in the hour: {before_close:?}");
        for file in &before_close {
            let rows = read_part(file).unwrap().rows;
            assert!(rows.len() <= 4, "{} has {} rows", file.display(), rows.len());
            let keys: Vec<(String, i64)> = rows.into_iter().map(|r| (r.symbol, r.ts)).collect();
            assert!(keys.is_sorted(), "a part is in file order: {keys:?}");
        }
        w.advance(HOUR).unwrap();
        assert_eq!(w.stats().buffered_rows, 0);
        let seqs = part_numbers(&tmp.0, "s");
        assert_eq!(seqs, (0..seqs.len() as u32).collect::<Vec<_>>(), "parts numbered without a gap");
        assert_eq!(sorted_values(&tmp.0, "s"), (0..53).collect::<Vec<_>>(), "every row once");
        assert_eq!(w.stats().rows_written, 53);
        assert_no_temp_files(&tmp.0);
    }

    #[test]
    fn a_replay_of_a_bucket_written_in_parts_leaves_each_row_once() {
        let tmp = TempDir::new("replay-parts");
        let fields = names(&["v"]);
        let run = |max_rows, max_buffered, advance_every: i64| {
            let mut w = buffering(&tmp.0, max_rows, max_buffered).writer(0);
            for i in 0..20i64 {
                w.write("s", &fields, "X", i, &[i as f64]).unwrap();
                if i % advance_every == advance_every - 1 {
                    w.advance(i).unwrap();
                }
            }
            w.finish().unwrap();
            let mut values: Vec<i64> = read_series(&tmp.0, "s").unwrap().iter().map(|r| r.values[0] as i64).collect();
            values.sort();
            assert_eq!(values, (0..20).collect::<Vec<_>>(), "every row once");
            part_numbers(&tmp.0, "s")
        };
        // One row a file: 20 parts.
        assert_eq!(run(1, 1_000, 20).len(), 20);
        // The replay cuts the bucket at every 6 rows: 4 parts, the 16 an
        // earlier run left above them are gone.
        assert_eq!(run(1_000, 6, 3), [0, 1, 2, 3]);
        // And the other way round, cut at other points.
        assert_eq!(run(1_000, 5, 5), [0, 1, 2, 3]);
        assert_eq!(run(7, 1_000, 20), [0, 1, 2]);
        assert_no_temp_files(&tmp.0);
    }

    #[test]
    fn a_restore_after_parts_written_for_room_replays_each_row_once() {
        let tmp = TempDir::new("restore-parts");
        let mut w = buffering(&tmp.0, 3, 3).writer(0);
        write_each(&mut w, 0..7); // parts 0 (rows 0-2) and 1 (3-5)
        let cut = w.checkpoint().unwrap(); // part 2 (row 6)
        assert_eq!(cut.open, [OpenBucket { series: "s".into(), start_ms: 0, next_seq: 3 }]);
        write_each(&mut w, 7..12); // part 3 (7-9) after the cut, then a crash
        assert_eq!(part_numbers(&tmp.0, "s"), [0, 1, 2, 3]);
        drop(w);

        let mut restarted = buffering(&tmp.0, 3, 3).writer(0);
        restarted.restore(&cut).unwrap();
        assert_eq!(part_numbers(&tmp.0, "s"), [0, 1, 2], "the part after the cut is gone");
        write_each(&mut restarted, 7..12);
        restarted.finish().unwrap();
        assert_eq!(sorted_values(&tmp.0, "s"), (0..12).collect::<Vec<_>>(), "every row once");
        assert_eq!(part_numbers(&tmp.0, "s"), [0, 1, 2, 3, 4]);
        assert_no_temp_files(&tmp.0);
    }

    #[test]
    fn failed_writes_of_full_buckets_come_back_without_a_gap_in_the_parts() {
        let tmp = TempDir::new("full-blocked");
        let fields = names(&["price", "size"]);
        let mut w = buffering(&tmp.0, 1_000, 2).writer(0).encode_in_background().unwrap();
        fs::write(tmp.0.join("series=trades"), b"not a directory").unwrap();
        let mut failures = 0;
        for i in 1..=15i64 {
            w.write_raw("trades", &fields, "AAPL", i, &[i as f64, 1.0], 0, i).unwrap();
            w.write("bars", &fields, "AAPL", i, &[i as f64, 1.0]).unwrap();
            // Cuts go to the thread; the first failure comes back with a
            // later call, with the cuts handed over after it.
            if i % 2 == 0 && w.advance(i).is_err() {
                failures += 1;
            }
        }
        assert!(failures > 0);
        fs::remove_file(tmp.0.join("series=trades")).unwrap();
        w.finish().unwrap();
        assert_eq!(w.stats().buffered_rows, 0);
        for series in ["trades", "bars"] {
            let mut values: Vec<i64> =
                read_series(&tmp.0, series).unwrap().iter().map(|r| r.values[0] as i64).collect();
            values.sort();
            assert_eq!(values, (1..=15).collect::<Vec<_>>(), "{series}: every row once");
            let seqs = part_numbers(&tmp.0, series);
            assert_eq!(seqs, (0..seqs.len() as u32).collect::<Vec<_>>(), "{series}: parts numbered without a gap");
        }
        assert_no_temp_files(&tmp.0);
    }

    /// Worker 0's part `seq` of bucket 0 in `dir`, on time or late.
    fn find_part(dir: &Path, seq: u32) -> PartName {
        let parts = existing_parts(dir, 0, 0).unwrap();
        *parts.iter().find(|p| p.seq == seq).unwrap_or_else(|| panic!("no part {seq}: {parts:?}"))
    }

    #[test]
    fn part_names_read_back_as_written() {
        for part in [
            PartName { worker: 0, bucket_start_ms: 0, seq: 1, generation: None },
            PartName { worker: 12, bucket_start_ms: 1_700_000_000_000, seq: 10_000, generation: Some(7) },
            PartName { worker: 3, bucket_start_ms: -3_600_000, seq: 2, generation: None },
            PartName { worker: 3, bucket_start_ms: -3_600_000, seq: 2, generation: Some(0) },
        ] {
            assert_eq!(PartName::parse(&part.to_string()), Some(part), "{part}");
        }
        assert_eq!(part_name(1, 3_600_000, 2), "part-w1-3600000-0002.parquet");
        for other in [
            ".part-w0-0-0001.parquet.tmp",
            "part-w0-0-0001.parquet.tmp",
            "part-wx-0-0001.parquet",
            "part-w0-0-00a1.parquet",
            "part-w0-0-0001-g.parquet",
            "part-w0-0-0001-gx.parquet",
            "part-w0-0001.parquet",
            "filler",
        ] {
            assert_eq!(PartName::parse(other), None, "{other}");
        }
    }

    #[test]
    fn a_restore_removes_the_late_parts_written_after_its_cut() {
        // A series whose rows come after their bucket closed (a daily bar
        // labelled with its start, with hourly buckets): late parts.
        let tmp = TempDir::new("late-restore");
        let fields = names(&["v"]);
        let mut w = archive(&tmp.0, 1000).writer(0);
        let late = |w: &mut ArchiveWriter, ts: i64| {
            w.write("s", &fields, "X", ts, &[ts as f64]).unwrap();
            w.advance(2 * HOUR).unwrap();
        };
        w.write("s", &fields, "X", 10, &[10.0]).unwrap();
        w.advance(2 * HOUR).unwrap(); // part 0
        late(&mut w, 20); // late part 1, before the cut
        let cut = w.checkpoint().unwrap();
        late(&mut w, 30); // late part 2, after it; then a crash
        let dir = tmp.0.join("series=s/date=1970-01-01");
        assert_eq!(find_part(&dir, 1).generation, Some(cut.generation));
        assert_eq!(find_part(&dir, 2).generation, Some(cut.generation + 1));
        drop(w);

        let mut restarted = archive(&tmp.0, 1000).writer(0);
        restarted.restore(&cut).unwrap();
        assert_eq!(part_numbers(&tmp.0, "s"), [0, 1], "the late part written after the cut is gone");
        late(&mut restarted, 30); // the replay brings its row again
        assert_eq!(sorted_values(&tmp.0, "s"), [10, 20, 30], "every row once");
        // And a second crash and restore, from a cut of the restarted writer.
        let cut = restarted.checkpoint().unwrap();
        late(&mut restarted, 40);
        drop(restarted);
        let mut again = archive(&tmp.0, 1000).writer(0);
        again.restore(&cut).unwrap();
        late(&mut again, 40);
        assert_eq!(sorted_values(&tmp.0, "s"), [10, 20, 30, 40]);
        assert_no_temp_files(&tmp.0);
    }

    #[test]
    fn late_rows_land_in_new_files_continuing_the_sequence() {
        let tmp = TempDir::new("late");
        let fields = names(&["close"]);
        let mut w = archive(&tmp.0, 1000).writer(0);
        w.write("bars", &fields, "AAPL", 1_000, &[1.0]).unwrap();
        w.write("bars", &fields, "AAPL", HOUR + 1, &[2.0]).unwrap();
        w.advance(HOUR).unwrap();
        let first = series_files(&tmp.0, "bars").unwrap();
        assert_eq!(first.len(), 1);
        let first_bytes = fs::read(&first[0]).unwrap();

        // Late: the watermark passed its bucket. Buffered until the next advance.
        w.write("bars", &fields, "AAPL", 500, &[3.0]).unwrap();
        assert_eq!(w.stats().buffered_rows, 2);
        assert_eq!(series_files(&tmp.0, "bars").unwrap().len(), 1);
        w.advance(HOUR).unwrap();
        w.write("bars", &fields, "MSFT", 10, &[4.0]).unwrap();
        w.advance(HOUR).unwrap();

        let dir = tmp.0.join("series=bars/date=1970-01-01");
        let part = |seq| read_part(&dir.join(find_part(&dir, seq).to_string())).unwrap();
        assert_eq!(fs::read(&first[0]).unwrap(), first_bytes, "the closed file is left alone");
        assert_eq!(part(1).rows[0].values, [3.0]);
        assert_eq!(part(2).rows[0].values, [4.0]);
        assert_eq!(w.stats().buffered_rows, 1, "the second hour is still open");

        // A restarted worker that is told its restored frontier first
        // appends late rows after the files on disk, too.
        let mut restarted = archive(&tmp.0, 1000).writer(0);
        restarted.advance(HOUR).unwrap();
        restarted.write("bars", &fields, "AAPL", 7, &[5.0]).unwrap();
        restarted.advance(HOUR).unwrap();
        assert_eq!(part(3).rows[0].values, [5.0]);
        assert_eq!(fs::read(&first[0]).unwrap(), first_bytes);
        assert_no_temp_files(&tmp.0);
    }

    #[test]
    fn a_replay_overwrites_its_files_and_removes_stale_parts() {
        let tmp = TempDir::new("replay");
        let fields = names(&["v"]);
        let run = |max_rows| {
            let mut w = archive(&tmp.0, max_rows).writer(2);
            for i in 0..5 {
                w.write("s", &fields, "X", i, &[i as f64]).unwrap();
            }
            w.finish().unwrap();
            contents(&tmp.0)
        };
        let once = run(2);
        assert_eq!(once.len(), 3);
        assert_eq!(run(2), once, "same names, same bytes");
        assert_eq!(read_series(&tmp.0, "s").unwrap().len(), 5, "not duplicated");
        let wider = run(10);
        assert_eq!(wider.len(), 1, "parts 1 and 2 of the earlier run are gone: {:?}", wider.keys());
        assert_eq!(read_series(&tmp.0, "s").unwrap().len(), 5);
    }

    #[test]
    fn raw_series_keep_partition_and_offset() {
        let tmp = TempDir::new("raw");
        let fields = names(&["price", "size"]);
        let mut w = archive(&tmp.0, 1000).writer(0);
        // The same symbol and time from two partitions, arriving out of order.
        w.write_raw("trades", &fields, "AAPL", 5, &[10.0, 1.0], 1, 40).unwrap();
        w.write_raw("trades", &fields, "AAPL", 5, &[10.5, 2.0], 0, 7).unwrap();
        w.write_raw("trades", &fields, "AAPL", 4, &[9.5, 3.0], 1, 39).unwrap();
        w.finish().unwrap();
        let files = series_files(&tmp.0, "trades").unwrap();
        let part = read_part(&files[0]).unwrap();
        assert!(part.raw);
        let got: Vec<(i64, Option<i32>, Option<i64>)> =
            part.rows.iter().map(|r| (r.ts, r.partition, r.offset)).collect();
        assert_eq!(got, [(4, Some(1), Some(39)), (5, Some(0), Some(7)), (5, Some(1), Some(40))]);
        let builder = ParquetRecordBatchReaderBuilder::try_new(File::open(&files[0]).unwrap()).unwrap();
        let schema = builder.schema();
        assert_eq!(schema.field_with_name("partition").unwrap().data_type(), &DataType::Int32);
        assert_eq!(schema.field_with_name("offset").unwrap().data_type(), &DataType::Int64);
        assert_eq!(schema.metadata().get(META_KIND).map(String::as_str), Some("raw"));
        let sorting = builder.metadata().row_group(0).sorting_columns().unwrap();
        assert_eq!(sorting.iter().map(|s| s.column_idx).collect::<Vec<_>>(), [0, 1, 4, 5]);
        let offset = builder.metadata().row_group(0).column(5);
        assert!(offset.encodings().any(|e| e == Encoding::DELTA_BINARY_PACKED), "offsets as deltas");
    }

    #[test]
    fn extreme_times_and_values_survive_the_delta_and_byte_stream_encodings() {
        // Deltas between these overflow an i64: the encoding must wrap, not
        // saturate or fail. Each time is in its own bucket, so its own file.
        let tmp = TempDir::new("extremes");
        let fields = names(&["v"]);
        let mut w = archive(&tmp.0, 1000).writer(0);
        let times = [i64::MIN, -1, 0, 1, i64::MAX - 1];
        let values = [f64::MIN, -0.0, f64::from_bits(1), f64::MAX, f64::NAN];
        for (ts, v) in times.iter().zip(values) {
            for symbol in ["A", "B"] {
                w.write("s", &fields, symbol, *ts, &[v]).unwrap();
            }
        }
        w.finish().unwrap();
        let mut got = bits(&read_series(&tmp.0, "s").unwrap());
        let mut expected: Vec<RowBits> = times
            .iter()
            .zip(values)
            .flat_map(|(ts, v)| ["A", "B"].map(|s| (s.to_string(), *ts, vec![v.to_bits()], None, None)))
            .collect();
        got.sort();
        expected.sort();
        assert_eq!(got, expected);
    }

    #[test]
    fn a_file_in_the_way_is_a_clear_error_and_leaves_no_file() {
        let tmp = TempDir::new("blocked");
        let fields = names(&["price", "size"]);
        let mut w = archive(&tmp.0, 1000).writer(0);
        fs::write(tmp.0.join("series=trades"), b"not a directory").unwrap();
        w.write_raw("trades", &fields, "AAPL", 5, &[10.0, 1.0], 0, 1).unwrap();
        let err = w.advance(HOUR).unwrap_err();
        let message = err.to_string();
        assert!(message.contains("series=trades"), "{message}");
        assert!(message.contains("a file is in the way"), "{message}");
        assert!(err.is_retryable());
        assert_eq!(w.stats().buffered_rows, 1, "the rows stay buffered");

        // Once the file is moved, the next advance writes the bucket.
        fs::remove_file(tmp.0.join("series=trades")).unwrap();
        w.advance(HOUR).unwrap();
        assert_eq!(read_series(&tmp.0, "trades").unwrap().len(), 1);
        assert_no_temp_files(&tmp.0);
    }

    /// Feeds `w` the generated rows, symbols interleaved, with watermark
    /// advances, late rows and a checkpoint on the way, and finishes it.
    /// Feeds seeded rows of `out` and `trades`, late rows of `out`, and a
    /// checkpoint; returns how many rows of `out` it wrote.
    fn feed_with_late_rows_and_a_checkpoint(w: &mut ArchiveWriter) -> usize {
        let per_symbol = generated();
        let fields = names(&["a", "b"]);
        let mut next = vec![0usize; per_symbol.len()];
        let mut rng = Rng(11);
        let mut fed = 0;
        loop {
            let open: Vec<usize> = (0..per_symbol.len()).filter(|&s| next[s] < per_symbol[s].len()).collect();
            if open.is_empty() {
                break;
            }
            let s = open[rng.below(open.len() as u64) as usize];
            let (symbol, ts, values, partition, offset) = &per_symbol[s][next[s]];
            next[s] += 1;
            w.write("out", &fields, symbol, *ts, values).unwrap();
            w.write_raw("trades", &fields, symbol, *ts, values, *partition, *offset).unwrap();
            fed += 1;
            if fed % 20 == 0 {
                let safe =
                    (0..per_symbol.len()).map(|s| per_symbol[s].get(next[s]).map_or(i64::MAX, |r| r.1)).min().unwrap();
                w.advance(safe).unwrap();
                // A row for a bucket the watermark has closed.
                w.write("out", &fields, "LATE", safe - HOUR, &[fed as f64, 0.0]).unwrap();
            }
            if fed == 90 {
                w.checkpoint().unwrap();
            }
        }
        w.finish().unwrap();
        fed + fed / 20
    }

    #[test]
    fn background_encoding_writes_the_plain_writers_files() {
        // Buckets written when they close, and also when they are full.
        let mut files = Vec::new();
        for max_buffered in [1_000, 9] {
            let plain_dir = TempDir::new("plain");
            let mut plain = buffering(&plain_dir.0, 7, max_buffered).writer(0);
            let out_rows = feed_with_late_rows_and_a_checkpoint(&mut plain);
            let background_dir = TempDir::new("background");
            let mut background =
                buffering(&background_dir.0, 7, max_buffered).writer(0).encode_in_background().unwrap();
            feed_with_late_rows_and_a_checkpoint(&mut background);

            let (a, b) = (contents(&plain_dir.0), contents(&background_dir.0));
            assert!(a.len() > 20, "many buckets, late parts and checkpoint parts: {:?}", a.keys());
            assert_eq!(a.keys().collect::<Vec<_>>(), b.keys().collect::<Vec<_>>());
            for (path, bytes) in &a {
                assert!(b[path] == *bytes, "{path} differs");
            }
            assert_eq!(plain.stats(), background.stats());
            assert_eq!(background.stats().buffered_rows, 0);
            let raw = read_series(&background_dir.0, "trades").unwrap();
            let mut seen: Vec<(i32, i64)> = raw.iter().map(|r| (r.partition.unwrap(), r.offset.unwrap())).collect();
            seen.sort();
            seen.dedup();
            assert_eq!((raw.len(), seen.len()), (160, 160), "every raw row once");
            assert_eq!(read_series(&background_dir.0, "out").unwrap().len(), out_rows, "every output row once");
            files.push(a.len());
        }
        assert!(files[1] > files[0], "full buckets were cut into more parts: {files:?}");
    }

    #[test]
    fn cut_parts_put_back_out_of_order_keep_the_first_number() {
        // As after a failed background write: the failed cut (parts from 4)
        // and an untried later one (from 6) come back, in that order, while
        // the bucket fills again from 8.
        let tmp = TempDir::new("put-back");
        let fields = names(&["v"]);
        let mut w = buffering(&tmp.0, 2, 1_000).writer(0);
        w.write("s", &fields, "X", 1, &[1.0]).unwrap();
        w.series[0].buckets[0].first_seq = Some(8);
        let cut = |first: u32, rows: &[i64]| {
            let mut b = Bucket::new(0, false, 1);
            b.first_seq = Some(first);
            b.partial = true;
            for &ts in rows {
                b.push("X", ts, &[ts as f64], None);
            }
            b
        };
        w.stats.buffered_rows += 5;
        w.series[0].put_back(cut(4, &[10, 11, 12]));
        w.series[0].put_back(cut(6, &[20, 21]));
        let buckets = &w.series[0].buckets;
        assert_eq!(buckets.len(), 1);
        assert_eq!((buckets[0].first_seq, buckets[0].partial), (Some(4), false));
        w.finish().unwrap();
        assert_eq!(part_numbers(&tmp.0, "s"), [4, 5, 6], "from the first number, without a gap");
        let mut ts: Vec<i64> = read_series(&tmp.0, "s").unwrap().iter().map(|r| r.ts).collect();
        ts.sort();
        assert_eq!(ts, [1, 10, 11, 12, 20, 21]);
    }

    #[test]
    fn a_replay_killed_before_a_cut_bucket_closes_loses_no_row() {
        let tmp = TempDir::new("replay-killed");
        let values = || sorted_values(&tmp.0, "s");
        // A complete run, one row a file: parts 0 to 19.
        let mut first = buffering(&tmp.0, 1, 1_000).writer(0);
        write_each(&mut first, 0..20);
        first.finish().unwrap();
        // A replay cut at every 6 rows, killed after 12: its parts 0 and 1
        // replace the first run's, whose parts 2 to 19 stay meanwhile.
        let mut replay = buffering(&tmp.0, 1_000, 6).writer(0);
        write_each(&mut replay, 0..12);
        drop(replay);
        let mut once: Vec<i64> = values();
        once.dedup();
        assert_eq!(once, (0..20).collect::<Vec<_>>(), "every row at least once");
        // The replay run again to its end: each row once.
        let mut replay = buffering(&tmp.0, 1_000, 6).writer(0);
        write_each(&mut replay, 0..20);
        replay.finish().unwrap();
        assert_eq!(values(), (0..20).collect::<Vec<_>>());
        assert_eq!(part_numbers(&tmp.0, "s"), [0, 1, 2, 3]);
    }

    #[test]
    fn a_failed_cut_on_the_workers_thread_is_retried_under_its_numbers() {
        let tmp = TempDir::new("cut-failed");
        let fields = names(&["v"]);
        let mut w = buffering(&tmp.0, 1_000, 3).writer(0);
        fs::write(tmp.0.join("series=s"), b"not a directory").unwrap();
        for i in 0..7i64 {
            w.write("s", &fields, "X", i, &[i as f64]).unwrap();
            if i % 3 == 2 {
                let err = w.advance(i).unwrap_err();
                assert!(err.is_retryable(), "{err}");
            }
        }
        assert_eq!(w.stats().buffered_rows, 7, "the rows stay buffered");
        fs::remove_file(tmp.0.join("series=s")).unwrap();
        w.advance(7).unwrap();
        w.write("s", &fields, "X", 7, &[7.0]).unwrap();
        w.finish().unwrap();
        assert_eq!(part_numbers(&tmp.0, "s"), [0, 1]);
        assert_eq!(sorted_values(&tmp.0, "s"), (0..8).collect::<Vec<_>>());
    }

    #[test]
    fn full_buckets_are_written_without_the_watermark_moving() {
        let tmp = TempDir::new("write-due");
        let fields = names(&["v"]);
        let mut w = buffering(&tmp.0, 1_000, 3).writer(0).encode_in_background().unwrap();
        for i in 0..5i64 {
            w.write("s", &fields, "X", 100 + i, &[i as f64]).unwrap();
        }
        w.write_due().unwrap();
        w.write("s", &fields, "X", 200, &[5.0]).unwrap();
        w.write_due().unwrap();
        w.checkpoint().unwrap(); // waits for the thread, writes the open rows
        assert_eq!(part_numbers(&tmp.0, "s"), [0, 1]);
        assert_eq!(read_part(&series_files(&tmp.0, "s").unwrap()[0]).unwrap().rows.len(), 5);
        assert_eq!(w.stats().buffered_rows, 0);
    }

    #[test]
    fn a_failed_background_write_comes_back_and_no_row_is_lost_or_doubled() {
        let tmp = TempDir::new("background-blocked");
        let fields = names(&["price", "size"]);
        let mut w = archive(&tmp.0, 1000).writer(0).encode_in_background().unwrap();
        fs::write(tmp.0.join("series=trades"), b"not a directory").unwrap();
        let mut offset = 0;
        let mut trade = |w: &mut ArchiveWriter, ts: i64| {
            offset += 1;
            w.write_raw("trades", &fields, "AAPL", ts, &[offset as f64, 1.0], 0, offset).unwrap();
            w.write("bars", &fields, "AAPL", ts, &[offset as f64, 1.0]).unwrap();
        };
        for hour in 0..3 {
            trade(&mut w, hour * HOUR + 5);
            trade(&mut w, hour * HOUR + 9);
        }
        // Handed over; the failure comes back with a later call. Meanwhile a
        // late trade opens another bucket for the first hour.
        let _ = w.advance(3 * HOUR);
        trade(&mut w, 7);
        let err = w.finish().unwrap_err();
        assert!(err.to_string().contains("a file is in the way"), "{err}");
        assert!(err.is_retryable());
        // Until a write succeeds, the writer writes on the caller's thread:
        // the error is there at once, and the worker waits.
        assert!(w.advance(3 * HOUR).is_err());
        assert!(w.stats().buffered_rows >= 7, "the trades stay buffered: {:?}", w.stats());

        fs::remove_file(tmp.0.join("series=trades")).unwrap();
        w.finish().unwrap();
        assert_eq!(w.stats().buffered_rows, 0);
        // Back in the background after the success.
        trade(&mut w, 5 * HOUR);
        w.finish().unwrap();

        for series in ["trades", "bars"] {
            let mut values: Vec<i64> =
                read_series(&tmp.0, series).unwrap().iter().map(|r| r.values[0] as i64).collect();
            values.sort();
            assert_eq!(values, (1..=8).collect::<Vec<_>>(), "{series}: every row once");
        }
        assert_no_temp_files(&tmp.0);
    }

    #[cfg(unix)]
    #[test]
    fn a_full_disk_reads_as_such_and_leaves_no_file() {
        if !Path::new("/dev/full").exists() {
            return;
        }
        let tmp = TempDir::new("full");
        let fields = names(&["v"]);
        let mut w = archive(&tmp.0, 1000).writer(0);
        w.write("s", &fields, "X", 1, &[1.0]).unwrap();
        // The temp file's name is a link to /dev/full, where every write
        // fails with ENOSPC.
        let dir = tmp.0.join("series=s/date=1970-01-01");
        fs::create_dir_all(&dir).unwrap();
        let name = part_name(0, 0, 0);
        std::os::unix::fs::symlink("/dev/full", dir.join(format!(".{name}.tmp"))).unwrap();
        let err = w.advance(HOUR).unwrap_err();
        let message = err.to_string();
        assert!(message.contains(&*dir.join(&name).to_string_lossy()), "{message}");
        assert!(message.contains("the disk is full"), "{message}");
        assert_eq!(io::Error::from(err).kind(), io::ErrorKind::StorageFull);
        assert!(!dir.join(&name).exists());
        assert_no_temp_files(&tmp.0);

        w.advance(HOUR).unwrap();
        assert_eq!(read_series(&tmp.0, "s").unwrap().len(), 1);
    }

    #[test]
    fn config_has_defaults_refuses_unknown_options_and_checks_ranges() {
        let config: ArchiveConfig = serde_json::from_str(r#"{"dir": "/tmp/a"}"#).unwrap();
        let ArchiveConfig { dir, roll_interval_ms, max_rows_per_file, max_buffered_rows, zstd_level, fsync } = config;
        assert_eq!(dir, Path::new("/tmp/a"));
        assert_eq!(
            (roll_interval_ms, max_rows_per_file, max_buffered_rows, zstd_level, fsync),
            (3_600_000, 1_000_000, 1_000_000, 3, true)
        );
        let unknown = serde_json::from_str::<ArchiveConfig>(r#"{"dir": "a", "roll_ms": 5}"#).unwrap_err();
        assert!(unknown.to_string().contains("unknown field `roll_ms`"), "{unknown}");

        let tmp = TempDir::new("config");
        let check = |c: ArchiveConfig| Archive::new(c).unwrap_err().to_string();
        let base = ArchiveConfig::new(&tmp.0);
        assert!(check(ArchiveConfig { roll_interval_ms: 0, ..base.clone() }).contains("roll_interval_ms = 0"));
        assert!(check(ArchiveConfig { max_rows_per_file: 0, ..base.clone() }).contains("max_rows_per_file = 0"));
        assert!(check(ArchiveConfig { max_buffered_rows: 0, ..base.clone() }).contains("max_buffered_rows = 0"));
        assert!(check(ArchiveConfig { zstd_level: 23, ..base.clone() }).contains("zstd levels run from 1 to 22"));
        assert!(!tmp.0.exists(), "nothing created for a bad config");

        fs::write(&tmp.0, b"a file").unwrap();
        let message = check(base);
        assert!(message.contains("creating the archive directory"), "{message}");
        fs::remove_file(&tmp.0).unwrap();
    }

    #[test]
    fn series_keep_their_name_fields_and_kind() {
        let tmp = TempDir::new("series");
        let mut w = archive(&tmp.0, 1000).writer(0);
        let fields = names(&["a", "b"]);
        w.write("s", &fields, "X", 1, &[1.0, 2.0]).unwrap();
        let err = |r: Result<(), ArchiveError>| r.unwrap_err().to_string();
        assert!(err(w.write("s", &names(&["a"]), "X", 1, &[1.0])).contains("first written with fields"));
        assert!(err(w.write_raw("s", &fields, "X", 1, &[1.0, 2.0], 0, 0)).contains("as output and now as raw"));
        assert!(err(w.write("s", &fields, "X", 1, &[1.0])).contains("1 values for 2 fields"));
        for bad in ["", "../up", "a/b", ".hidden", "a=b"] {
            assert!(err(w.write(bad, &fields, "X", 1, &[1.0, 2.0])).contains("cannot be archived"), "{bad}");
        }
        assert!(err(w.write("t", &names(&["ts"]), "X", 1, &[1.0])).contains("name of a column"));
        assert!(err(w.write("t", &names(&["a", "a"]), "X", 1, &[1.0, 2.0])).contains("appears twice"));
        assert!(err(w.write_raw("t", &names(&["offset"]), "X", 1, &[1.0], 0, 0)).contains("name of a column"));
        // An output series may have a field called `offset`.
        w.write("u", &names(&["offset"]), "X", 1, &[1.0]).unwrap();
        assert_eq!(w.stats().buffered_rows, 2);
    }

    #[test]
    fn it_stands_in_as_a_chains_output() {
        let tmp = TempDir::new("output");
        let mut w = archive(&tmp.0, 1000).writer(0);
        let out: &mut dyn OutputWriter = &mut w;
        let fields = names(&["sma"]);
        out.write("sma_20", &fields, "AAPL", 60_000, &[101.25]).unwrap();
        assert_eq!(out.write("no/such", &fields, "AAPL", 1, &[1.0]).unwrap_err().kind(), io::ErrorKind::InvalidInput);
        out.finish().unwrap();
        let rows = read_series(&tmp.0, "sma_20").unwrap();
        assert_eq!(
            bits(&rows),
            bits(&[ArchivedRow {
                symbol: "AAPL".into(),
                ts: 60_000,
                values: vec![101.25],
                partition: None,
                offset: None
            }])
        );
    }

    /// Rows of series `s` (field `v`): (symbol, ts, v).
    fn put(w: &mut ArchiveWriter, rows: &[(&str, i64, f64)]) {
        for &(sym, ts, v) in rows {
            w.write("s", &names(&["v"]), sym, ts, &[v]).unwrap();
        }
    }

    fn sorted_rows(dir: &Path) -> Vec<(String, i64, u64)> {
        let mut rows: Vec<_> =
            read_series(dir, "s").unwrap().into_iter().map(|r| (r.symbol, r.ts, r.values[0].to_bits())).collect();
        rows.sort();
        rows
    }

    #[test]
    fn a_crash_after_a_checkpoint_leaves_every_row_once_after_the_replay() {
        let before: Vec<(&str, i64, f64)> =
            (0..7).map(|i| (["A", "B"][i % 2], 100 + i as i64 * 100, i as f64)).collect();
        let after: Vec<(&str, i64, f64)> =
            (0..9).map(|i| (["A", "B", "C"][i % 3], 600 + i as i64 * 150, 10.0 + i as f64)).collect();
        let roll = |dir: &Path| {
            Archive::new(ArchiveConfig { max_rows_per_file: 2, roll_interval_ms: 1_000, ..ArchiveConfig::new(dir) })
                .unwrap()
        };

        // Uninterrupted.
        let clean = TempDir::new("ckpt-clean");
        let mut w = roll(&clean.0).writer(0);
        put(&mut w, &before);
        w.advance(400).unwrap();
        put(&mut w, &after);
        w.finish().unwrap();
        let want = sorted_rows(&clean.0);
        assert_eq!(want.len(), before.len() + after.len());

        // A checkpoint at watermark 400, more rows, buckets closed, another
        // flush, then a crash (the writer dropped unfinished).
        let dir = TempDir::new("ckpt-crash");
        let archive = roll(&dir.0);
        let mut w = archive.writer(0);
        put(&mut w, &before);
        w.advance(400).unwrap();
        let cut = w.checkpoint().unwrap();
        assert_eq!(w.stats().buffered_rows, 0, "a checkpoint writes every buffered row");
        assert_eq!(sorted_rows(&dir.0).len(), before.len());
        put(&mut w, &after);
        w.advance(1_500).unwrap();
        let _later = w.checkpoint().unwrap();
        drop(w);

        // The restart: restore the cut, replay what came after it.
        let mut w = roll(&dir.0).writer(0);
        w.restore(&cut).unwrap();
        put(&mut w, &after);
        w.finish().unwrap();
        assert_eq!(sorted_rows(&dir.0), want, "every row once, none lost");
        assert_no_temp_files(&dir.0);

        // Restored, then a checkpoint before any row arrives (the open
        // buckets are still only on disk), a crash, and a restore from that
        // newer cut: the first cut's parts must still count as held.
        let mut w = roll(&dir.0).writer(0);
        w.restore(&cut).unwrap();
        let idle_cut = w.checkpoint().unwrap();
        drop(w);
        let mut w = roll(&dir.0).writer(0);
        w.restore(&idle_cut).unwrap();
        put(&mut w, &after);
        w.finish().unwrap();
        assert_eq!(sorted_rows(&dir.0), want, "a cut taken before any row after a restore keeps the parts");

        // Restoring the same cut again and replaying again changes nothing.
        let mut w = roll(&dir.0).writer(0);
        w.restore(&cut).unwrap();
        put(&mut w, &after);
        w.finish().unwrap();
        assert_eq!(sorted_rows(&dir.0), want);

        // Another roll interval than the checkpoint's is refused.
        let other = Archive::new(ArchiveConfig { roll_interval_ms: 2_000, ..ArchiveConfig::new(&dir.0) }).unwrap();
        let err = other.writer(0).restore(&cut).unwrap_err().to_string();
        assert!(err.contains("roll_interval_ms"), "{err}");
    }

    #[test]
    fn repeated_crashes_and_restores_from_the_latest_cut_keep_every_row_once() {
        // Rows in event-time order with a little disorder, over several
        // buckets; a checkpoint every 37 rows; a crash at seeded points,
        // each followed by a restore from the last cut and a replay.
        let mut rng = Rng(42);
        let mut rows: Vec<(String, i64, f64)> = Vec::new();
        let mut ts = 0i64;
        for i in 0..2_000 {
            ts += rng.below(40) as i64;
            rows.push((["A", "B", "C"][rng.below(3) as usize].to_string(), ts, i as f64));
        }
        let config =
            |dir: &Path| ArchiveConfig { max_rows_per_file: 25, roll_interval_ms: 5_000, ..ArchiveConfig::new(dir) };
        let feed = |w: &mut ArchiveWriter, rows: &[(String, i64, f64)]| {
            for (sym, ts, v) in rows {
                w.write("s", &names(&["v"]), sym, *ts, &[*v]).unwrap();
            }
        };
        let clean = TempDir::new("crashes-clean");
        let mut w = Archive::new(config(&clean.0)).unwrap().writer(0);
        for chunk in rows.chunks(37) {
            feed(&mut w, chunk);
            w.advance(chunk.last().unwrap().1 - 100).unwrap();
        }
        w.finish().unwrap();
        let want = sorted_rows(&clean.0);

        let dir = TempDir::new("crashes");
        let mut cut: Option<(usize, ArchiveCut)> = None;
        let mut crashes = 0;
        'run: loop {
            let mut w = Archive::new(config(&dir.0)).unwrap().writer(0);
            let from = match &cut {
                Some((at, c)) => {
                    w.restore(c).unwrap();
                    *at
                }
                None => 0,
            };
            for (i, chunk) in rows[from..].chunks(37).enumerate() {
                feed(&mut w, chunk);
                w.advance(chunk.last().unwrap().1 - 100).unwrap();
                let at = from + (i + 1) * 37;
                cut = Some((at.min(rows.len()), w.checkpoint().unwrap()));
                // Rows after the cut, then a crash, sometimes.
                if crashes < 6 && rng.below(5) == 0 {
                    let more = &rows[at.min(rows.len())..(at + rng.below(60) as usize).min(rows.len())];
                    feed(&mut w, more);
                    if let Some(last) = more.last() {
                        w.advance(last.1 - 100).unwrap();
                    }
                    crashes += 1;
                    continue 'run;
                }
            }
            w.finish().unwrap();
            break;
        }
        assert!(crashes >= 3, "{crashes} crashes");
        assert_eq!(sorted_rows(&dir.0), want);
    }
}
