//! What the Parquet archive costs per row, apart from the rest of the host:
//! buffering rows (the per-sample path) and writing the files when the
//! watermark closes their buckets (ordering, Arrow arrays, Parquet encoding,
//! zstd, the file itself).
//!
//! Run with `cargo bench -p tickfold --bench archive`. One worker's writer
//! takes the rows the standard plugin set makes it archive per trade: the
//! raw trade (`price, size`, with its partition and offset) and the VWAP
//! plugin's sample (`vwap, volume, rolling_vwap, rolling_volume`), for a
//! seeded synthetic market of 5 symbols at 10,000 trades/s (the benchmark's
//! `tickfold produce` feed), in one-hour buckets. Each figure is the median
//! of 5 runs into a fresh directory; fsync is off so that the disk's flush
//! latency does not drown the encoder's cost (the host keeps it on).
//!
//! Arguments: `-- TRADES` (default 2,000,000) and `-- TRADES LEVEL` for a
//! zstd level other than 3.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use tickfold::sink::archive::{Archive, ArchiveConfig};
use tickfold::synthetic::Market;

const RUNS: usize = 5;
const SYMBOLS: [&str; 5] = ["AAPL", "MSFT", "AMZN", "NVDA", "TSLA"];

/// A trade and the VWAP sample it makes, as the host hands them over.
struct Row {
    symbol: usize,
    ts: i64,
    trade: [f64; 2],
    offset: i64,
    vwap: [f64; 4],
}

/// The rows of `trades` trades: a session VWAP and a 5-minute rolling one
/// (kept as sums per symbol, as the plugin does), offsets per partition.
fn rows(trades: usize) -> Vec<Row> {
    let market = Market::new(1, &SYMBOLS, 1_767_623_400_000, 10_000.0);
    let mut session = [(0.0f64, 0.0f64); SYMBOLS.len()];
    let mut rolling: Vec<std::collections::VecDeque<(i64, f64, f64)>> = vec![Default::default(); SYMBOLS.len()];
    let mut sums = [(0.0f64, 0.0f64); SYMBOLS.len()];
    let mut offsets = [0i64; SYMBOLS.len()];
    market
        .take(trades)
        .map(|t| {
            let s = t.symbol;
            session[s].0 += t.price * t.size;
            session[s].1 += t.size;
            rolling[s].push_back((t.ts, t.price * t.size, t.size));
            sums[s].0 += t.price * t.size;
            sums[s].1 += t.size;
            while rolling[s].front().is_some_and(|&(ts, _, _)| ts <= t.ts - 300_000) {
                let (_, pv, v) = rolling[s].pop_front().expect("checked");
                sums[s].0 -= pv;
                sums[s].1 -= v;
            }
            offsets[s] += 1;
            Row {
                symbol: s,
                ts: t.ts,
                trade: [t.price, t.size],
                offset: offsets[s],
                vwap: [session[s].0 / session[s].1, session[s].1, sums[s].0 / sums[s].1, sums[s].1],
            }
        })
        .collect()
}

struct Figures {
    buffer: Duration,
    write: Duration,
    bytes: u64,
}

fn run(dir: &Path, rows: &[Row], level: i32) -> Figures {
    let _ = std::fs::remove_dir_all(dir);
    let config = ArchiveConfig { zstd_level: level, fsync: false, ..ArchiveConfig::new(dir) };
    let archive = Archive::new(config).expect("archive directory");
    let mut writer = archive.writer(0);
    let raw_fields = ["price".to_string(), "size".to_string()];
    let vwap_fields: Vec<String> =
        ["vwap", "volume", "rolling_vwap", "rolling_volume"].iter().map(|s| s.to_string()).collect();
    let started = Instant::now();
    for r in rows {
        let symbol = SYMBOLS[r.symbol];
        writer
            .write_raw("trades", &raw_fields, symbol, r.ts, &r.trade, (r.symbol % 4) as i32, r.offset)
            .expect("buffered");
        writer.write("vwap", &vwap_fields, symbol, r.ts, &r.vwap).expect("buffered");
    }
    let buffered = started.elapsed();
    let started = Instant::now();
    writer.finish().expect("written");
    let write = started.elapsed();
    let stats = writer.stats();
    assert_eq!(stats.rows_written, 2 * rows.len() as u64, "every row is in a file");
    Figures { buffer: buffered, write, bytes: stats.bytes_written }
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).filter(|a| !a.starts_with("--")).collect();
    let trades: usize = args.first().map_or(2_000_000, |a| a.parse().expect("TRADES is a number"));
    let level: i32 = args.get(1).map_or(3, |a| a.parse().expect("LEVEL is a number"));
    let rows = rows(trades);
    let dir: PathBuf = std::env::temp_dir().join(format!("tickfold-archive-bench-{}", std::process::id()));
    let figures: Vec<Figures> = (0..RUNS).map(|_| run(&dir, &rows, level)).collect();
    let _ = std::fs::remove_dir_all(&dir);
    let n = (2 * trades) as f64;
    let per_row = |d: Duration| d.as_nanos() as f64 / n;
    let buffer = median(figures.iter().map(|f| f.buffer).collect());
    let write = median(figures.iter().map(|f| f.write).collect());
    let bytes = figures[0].bytes;
    println!(
        "archive: {trades} trades → {} rows (raw trades + VWAP samples), zstd level {level}, median of {RUNS}",
        2 * trades
    );
    println!("  buffering rows       {:7.1} ns/row", per_row(buffer));
    println!("  writing the files    {:7.1} ns/row", per_row(write));
    println!(
        "  together             {:7.1} ns/row, {:.2} M trades/s on one core",
        per_row(buffer + write),
        trades as f64 / (buffer + write).as_secs_f64() / 1e6
    );
    println!("  on disk              {:7.2} bytes/row ({:.1} MB)", bytes as f64 / n, bytes as f64 / 1e6);
}
