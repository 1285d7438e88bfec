//! `tickfold bench`: the host's figures, measured the way docs/performance.md
//! reports them (scripts/bench.sh runs them all against real services).
//!
//! - `drain`: a bare rdkafka consumer reading every partition of a topic,
//!   nothing else: the rate the host is compared with.
//! - `pipeline`: the host from a config (Kafka or a file), its rate from the
//!   first record to the last, and where the CPU time went, by stage and by
//!   thread.
//! - `latency`: a paced feed into Kafka, the host, and an InfluxDB stand-in
//!   that notes when each per-trade output (a VWAP line) arrives: the time
//!   from the trade to the sink write that carries its first effect.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

use crate::config::Config;
use crate::dataflow::RunCounters;

/// What `drain` measured.
#[derive(Debug)]
pub struct Drained {
    pub records: u64,
    pub bytes: u64,
    /// From the first record to the last.
    pub elapsed: Duration,
}

impl Drained {
    pub fn rate(&self) -> f64 {
        self.records as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

/// Reads every partition of `topic` from the start with one consumer until
/// `expect` records arrived (or none for 5 s), with `settings` over
/// librdkafka's defaults (none: the defaults).
pub fn drain(brokers: &str, topic: &str, expect: u64, settings: &[(&str, &str)]) -> Result<Drained> {
    let partitions = crate::source::kafka::partition_count(brokers, topic, &Default::default())?;
    let mut config = ClientConfig::new();
    config.set("bootstrap.servers", brokers).set("group.id", "tickfold-bench-drain").set("enable.auto.commit", "false");
    for (k, v) in settings {
        config.set(*k, *v);
    }
    let consumer: BaseConsumer = config.create().context("creating the consumer")?;
    let mut assignment = TopicPartitionList::new();
    for p in 0..partitions as i32 {
        assignment.add_partition_offset(topic, p, Offset::Beginning)?;
    }
    consumer.assign(&assignment)?;
    let (mut records, mut bytes) = (0u64, 0u64);
    let mut first = None;
    let mut last = Instant::now();
    let started = Instant::now();
    while records < expect {
        if first.is_none() && started.elapsed() > Duration::from_secs(30) {
            bail!("no record arrived from topic `{topic}` within 30 s; is it empty?");
        }
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(m)) => {
                first.get_or_insert_with(Instant::now);
                last = Instant::now();
                records += 1;
                bytes += m.payload_len() as u64;
            }
            Some(Err(e)) => tracing::warn!("drain: {e}"),
            None if first.is_some() && last.elapsed() > Duration::from_secs(5) => break,
            None => {}
        }
    }
    let elapsed = first.map_or(Duration::ZERO, |f| last.duration_since(f));
    Ok(Drained { records, bytes, elapsed })
}

/// The consumer settings the host uses (see `source::kafka`), for `drain`.
pub const HOST_CONSUMER_SETTINGS: [(&str, &str); 6] = [
    ("fetch.max.bytes", "67108864"),
    ("max.partition.fetch.bytes", "16777216"),
    ("queued.min.messages", "500000"),
    ("queued.max.messages.kbytes", "262144"),
    ("fetch.wait.max.ms", "5"),
    ("fetch.min.bytes", "1"),
];

/// What `pipeline` measured.
#[derive(Debug)]
pub struct PipelineFigures {
    pub records: u64,
    pub outputs: u64,
    /// From the first record read to the end of the run (every sink
    /// written and closed).
    pub elapsed: Duration,
    /// Seconds of CPU per stage (workers) and per thread group (the rest).
    pub cpu: Vec<(String, f64)>,
    /// Time workers spent blocked on a full sink buffer (back-pressure),
    /// summed over workers; not CPU.
    pub waited_on_sinks: Duration,
}

/// Runs the host as `config` says (with `file` instead of Kafka if given),
/// timing the stretch from the first record read to the end of the run
/// (the sinks closed), and splits the CPU time it used. Over Kafka, set
/// `kafka.stop_after_records` to the topic's size: a quiet-period stop
/// would add its wait to the time.
pub fn pipeline(config: &Config, file: Option<&Path>) -> Result<PipelineFigures> {
    let counters = Arc::new(RunCounters::default());
    counters.profile.store(true, Ordering::Relaxed);
    let done = Arc::new(AtomicBool::new(false));
    // When the first record was read (sampled every millisecond), and
    // every thread's CPU time as last seen (threads end with the run, and
    // take their counts with them, so they are sampled while they live).
    // The CPU counts are taken from then on too: compiling the plugins
    // at start-up is not the pipeline's cost.
    let first: Arc<Mutex<Option<Instant>>> = Arc::default();
    let threads: Arc<Mutex<ThreadTimes>> = Arc::default();
    let baseline: Arc<Mutex<(ThreadTimes, f64)>> = Arc::default();
    let sampler = {
        let (counters, done, first, threads, baseline) =
            (counters.clone(), done.clone(), first.clone(), threads.clone(), baseline.clone());
        std::thread::Builder::new().name("bench-sampler".into()).spawn(move || {
            let mut tick = 0u64;
            while !done.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(1));
                if counters.source.records.load(Ordering::Relaxed) > 0 && first.lock().expect("first").is_none() {
                    *baseline.lock().expect("baseline") = (thread_cpu(), process_cpu());
                    *first.lock().expect("first") = Some(Instant::now());
                }
                tick += 1;
                if tick.is_multiple_of(50) {
                    threads.lock().expect("threads").extend(thread_cpu());
                }
            }
        })?
    };
    let summary = crate::host::run_with(config, file, Arc::new(AtomicBool::new(false)), counters.clone());
    let end = Instant::now();
    done.store(true, Ordering::Relaxed);
    let _ = sampler.join();
    let summary = summary?;
    let elapsed = match *first.lock().expect("first") {
        Some(first) => end.duration_since(first),
        None => bail!("the host read no records; is the topic (or file) empty?"),
    };
    let (before, process_before) = baseline.lock().expect("baseline").clone();
    let mut seen = threads.lock().expect("threads").clone();
    seen.extend(thread_cpu());
    let mut groups: BTreeMap<String, f64> = BTreeMap::new();
    for (tid, (name, secs)) in &seen {
        let spent = secs - before.get(tid).map_or(0.0, |b| b.1);
        if spent > 0.0 {
            *groups.entry(thread_group(name)).or_default() += spent;
        }
    }
    // What no sample saw (threads shorter than a sample period).
    let unseen = process_cpu() - process_before - groups.values().sum::<f64>();
    if unseen > 0.0 {
        *groups.entry("other (main, compile, sampler)".into()).or_default() += unseen;
    }
    let workers = groups.remove("dataflow workers").unwrap_or(0.0);
    let t = &counters.times;
    let ns = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed) as f64 / 1e9;
    let (source, process, sinks, wait) = (ns(&t.source_ns), ns(&t.process_ns), ns(&t.sinks_ns), ns(&t.sink_wait_ns));
    let mut cpu = vec![
        ("workers: reading and decoding (Kafka partitions, or the file)".to_string(), source),
        ("workers: plugins".to_string(), (process - sinks).max(0.0)),
        ("workers: sink writes (line protocol, archive buffers)".to_string(), (sinks - wait).max(0.0)),
        ("workers: exchange, scheduling, idle polling".to_string(), (workers - source - (process - wait)).max(0.0)),
    ];
    cpu.extend(groups);
    Ok(PipelineFigures {
        records: summary.run.records,
        outputs: summary.run.samples_out,
        elapsed,
        cpu,
        waited_on_sinks: Duration::from_secs_f64(wait),
    })
}

/// Which part of the host a thread belongs to, from its name.
fn thread_group(name: &str) -> String {
    let group = if name.starts_with("timely:work") {
        "dataflow workers"
    } else if name.starts_with("rdk:") {
        "librdkafka (consumer, dead-letter producer)"
    } else if name == "file-reader" {
        "file reader (CSV, JSONL, Parquet decoding)"
    } else if name.starts_with("archive-w") {
        "archive encoding (Parquet, zstd, files)"
    } else if name.contains("influx") || name.contains("reqwest") || name.starts_with("tokio") {
        "InfluxDB writer (batching, gzip, HTTP)"
    } else {
        "other (main, compile, sampler)"
    };
    group.to_string()
}

/// CPU seconds per thread: thread id → (name, seconds).
type ThreadTimes = BTreeMap<u64, (String, f64)>;

/// CPU seconds this process has used, its ended threads included.
fn process_cpu() -> f64 {
    std::fs::read_to_string("/proc/self/stat").ok().and_then(|s| stat_cpu_secs(&s)).unwrap_or(0.0)
}

/// utime + stime of a /proc `stat` line, in seconds.
fn stat_cpu_secs(stat: &str) -> Option<f64> {
    // Fields after the parenthesised name: utime and stime are fields 14
    // and 15 (1-based, as proc(5) numbers them), 12 and 13 after the name.
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let (u, s) = (fields.get(11)?.parse::<f64>().ok()?, fields.get(12)?.parse::<f64>().ok()?);
    // Clock ticks per second: 100 on every Linux we run on.
    Some((u + s) / 100.0)
}

/// CPU seconds used so far by each live thread of this process, by thread
/// id, with the thread's name. Read from /proc (Linux).
fn thread_cpu() -> ThreadTimes {
    let mut out = BTreeMap::new();
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else { return out };
    for task in tasks.flatten() {
        let dir = task.path();
        let Some(tid) = task.file_name().to_str().and_then(|t| t.parse::<u64>().ok()) else { continue };
        let (Ok(name), Ok(stat)) =
            (std::fs::read_to_string(dir.join("comm")), std::fs::read_to_string(dir.join("stat")))
        else {
            continue;
        };
        if let Some(secs) = stat_cpu_secs(&stat) {
            out.insert(tid, (name.trim().to_string(), secs));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn cpu_times_are_read_after_the_name_even_with_spaces_and_parentheses() {
        let stat = "4242 (rdk:broker 1 (x)) S 1 2 3 4 5 6 7 8 9 10 250 150 0 0 20 0 1 0";
        assert_eq!(super::stat_cpu_secs(stat), Some(4.0));
        assert!(super::process_cpu() >= 0.0);
        assert!(super::thread_cpu().values().any(|(name, _)| !name.is_empty()));
    }

    #[test]
    fn latency_counts_every_trade_and_merged_ones_at_the_last_point_of_their_millisecond() {
        let a = |symbol: &str, ts: i64, arrived: i64| (symbol.to_string(), ts, arrived);
        let sorted = |v: Vec<(i64, i64)>| {
            let mut v: Vec<i64> = v.into_iter().map(|(_, latency)| latency).collect();
            v.sort_unstable();
            v
        };
        // A point per trade: each its own.
        let fed = [("A", 1), ("A", 1), ("B", 2)];
        assert_eq!(
            sorted(super::per_trade(fed.into_iter(), vec![a("A", 1, 12), a("A", 1, 10), a("B", 2, 5)])),
            [3, 9, 11]
        );
        // Three trades in one point, then in two: the rest at the later one.
        let fed = [("A", 1); 3];
        assert_eq!(sorted(super::per_trade(fed.into_iter(), vec![a("A", 1, 10)])), [9, 9, 9]);
        assert_eq!(sorted(super::per_trade(fed.into_iter(), vec![a("A", 1, 15), a("A", 1, 10)])), [9, 14, 14]);
        // A point without a trade fed counts as one; a trade without a
        // point is not measured.
        assert_eq!(super::per_trade([("B", 3)].into_iter(), vec![a("C", 5, 7)]), [(5, 2)]);
    }
}

/// What `latency` measured, in ms.
#[derive(Debug)]
pub struct Latency {
    /// Trades measured (past the warm-up).
    pub samples: usize,
    /// VWAP points that carried them (fewer when the sink merges the
    /// points of a millisecond).
    pub points: usize,
    /// Trades fed after the warm-up whose millisecond got no point before
    /// the host was stopped (2 s after the feed ended): not in the figures.
    pub unmeasured: usize,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub max: f64,
    /// The same per [`LATENCY_WINDOW_MS`] of event time, from the end of
    /// the warm-up: (seconds in, trades, p50, p99, max). A tail that grows
    /// through the run is something filling up (the broker's log), not
    /// noise.
    pub windows: Vec<(f64, usize, f64, f64, f64)>,
    /// Trades the feed produced, and at what rate it managed.
    pub produced: u64,
    pub produced_rate: f64,
}

/// Feeds `rate` trades/s for `seconds` into `config.kafka.topic` (which
/// must be empty), runs the host with its InfluxDB sink pointed at a
/// stand-in that timestamps every request, and reports, for each trade,
/// the arrival time of the VWAP point carrying it minus its event time.
/// The paced feed sends each trade at its event time, so that is the time
/// from the trade's append to the sink write carrying its first effect
/// (plus the producer's own lag, reported as its achieved rate).
///
/// The sink merges the VWAP points of a symbol's millisecond (`coalesce`),
/// so one point may carry several trades: the percentiles are per trade,
/// the trades of a millisecond counted (see `per_trade`) from the same
/// seeded feed.
pub fn latency(config: &Config, rate: f64, seconds: f64, warmup: Duration) -> Result<Latency> {
    let listener = TcpListener::bind("127.0.0.1:0").context("binding the InfluxDB stand-in")?;
    let url = format!("http://{}", listener.local_addr()?);
    let samples: Arc<Mutex<Vec<Arrival>>> = Arc::default();
    let measure_from = Arc::new(Mutex::new(i64::MAX));
    {
        let (samples, measure_from) = (samples.clone(), measure_from.clone());
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let (samples, measure_from) = (samples.clone(), measure_from.clone());
                std::thread::spawn(move || serve_influx_standin(stream, &samples, &measure_from));
            }
        });
    }
    let mut config = config.clone();
    let influx = config.sinks.influx.as_mut().context("the config needs a [sinks.influx] table")?;
    influx.url = url;
    influx.flush_interval_ms = 10;
    config.kafka.start = crate::config::StartAt::Latest;
    config.kafka.stop_when_idle_ms = None;

    let interrupted = Arc::new(AtomicBool::new(false));
    let host = {
        let (config, interrupted) = (config.clone(), interrupted.clone());
        std::thread::spawn(move || crate::host::run_with(&config, None, interrupted, Arc::default()))
    };
    // Let the host compile its plugins and take its partitions.
    std::thread::sleep(Duration::from_secs(3));
    let now_ms = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_millis() as i64;
    *measure_from.lock().expect("lock") = now_ms + warmup.as_millis() as i64;
    let symbols = ["AAPL", "MSFT", "NVDA", "AMZN", "GOOG", "BTC-USD", "ETH-USD", "EURUSD"];
    const SEED: u64 = 7;
    let options = crate::produce::ProduceOptions {
        brokers: config.kafka.brokers.clone(),
        topic: config.kafka.topic.clone(),
        feed: crate::produce::Feed::Synthetic {
            symbols: symbols.map(String::from).to_vec(),
            rate,
            start_ms: now_ms,
            seed: SEED,
        },
        trades: (rate * seconds) as u64,
        paced: true,
    };
    let started = Instant::now();
    let produced = crate::produce::produce(&options, |_, _| {})?;
    let produced_rate = produced.sent as f64 / started.elapsed().as_secs_f64();
    // Let the last writes arrive, then stop the host.
    std::thread::sleep(Duration::from_secs(2));
    interrupted.store(true, Ordering::Relaxed);
    host.join().map_err(|_| anyhow::anyhow!("the host panicked"))??;

    let arrivals = std::mem::take(&mut *samples.lock().expect("samples"));
    let from = *measure_from.lock().expect("lock");
    let mut fed = 0usize;
    let trades = crate::synthetic::Market::new(SEED, &symbols, now_ms, rate)
        .take(produced.sent as usize)
        .filter(|t| t.ts >= from)
        .inspect(|_| fed += 1)
        .map(|t| (symbols[t.symbol], t.ts));
    let points = arrivals.len();
    let timed = per_trade(trades, arrivals);
    let unmeasured = fed.saturating_sub(timed.len());
    if timed.is_empty() {
        bail!("no VWAP point reached the InfluxDB stand-in");
    }
    let mut by_window: std::collections::BTreeMap<i64, Vec<i64>> = std::collections::BTreeMap::new();
    for &(ts, latency) in &timed {
        by_window.entry((ts - from) / LATENCY_WINDOW_MS).or_default().push(latency);
    }
    let windows = by_window
        .into_iter()
        .map(|(window, mut w)| {
            w.sort_unstable();
            let secs = (window * LATENCY_WINDOW_MS) as f64 / 1e3;
            (secs, w.len(), quantile(&w, 0.5), quantile(&w, 0.99), *w.last().expect("not empty") as f64)
        })
        .collect();
    let mut s: Vec<i64> = timed.into_iter().map(|(_, latency)| latency).collect();
    s.sort_unstable();
    let at = |q: f64| quantile(&s, q);
    Ok(Latency {
        windows,
        samples: s.len(),
        points,
        unmeasured,
        p50: at(0.5),
        p90: at(0.9),
        p99: at(0.99),
        max: *s.last().expect("not empty") as f64,
        produced: produced.sent,
        produced_rate,
    })
}

/// The width of [`Latency::windows`].
pub const LATENCY_WINDOW_MS: i64 = 5_000;

/// The `q` quantile of sorted `s`.
fn quantile(s: &[i64], q: f64) -> f64 {
    s[((s.len() - 1) as f64 * q).round() as usize] as f64
}

/// A VWAP point the stand-in received: symbol, event time, arrival (ms).
type Arrival = (String, i64, i64);

/// Each trade's event time and latency (ms), from the `trades` fed (symbol, event time)
/// and the VWAP points' `arrivals`. Where a symbol's millisecond has as
/// many points as trades (nothing merged), each point is a trade. Where it
/// has fewer, which trades a point carries is not known, so the count is
/// conservative: each earlier point carries one trade and the last one
/// (the last to arrive) the rest. A millisecond without trades fed (not
/// expected) counts its points as trades.
fn per_trade<'a>(trades: impl Iterator<Item = (&'a str, i64)>, arrivals: Vec<Arrival>) -> Vec<(i64, i64)> {
    let mut fed: std::collections::HashMap<(&str, i64), usize> = std::collections::HashMap::new();
    for key in trades {
        *fed.entry(key).or_default() += 1;
    }
    let mut by_key: std::collections::HashMap<(String, i64), Vec<i64>> = std::collections::HashMap::new();
    for (symbol, ts, arrived) in arrivals {
        by_key.entry((symbol, ts)).or_default().push(arrived);
    }
    let mut latencies = Vec::new();
    for ((symbol, ts), mut times) in by_key {
        times.sort_unstable();
        let trades = fed.get(&(symbol.as_str(), ts)).copied().unwrap_or(0).max(times.len());
        let last = *times.last().expect("a point per key");
        latencies.extend(times.iter().map(|a| (ts, a - ts)));
        latencies.extend(std::iter::repeat_n((ts, last - ts), trades - times.len()));
    }
    latencies
}

/// Answers InfluxDB write requests (`204`), noting every `vwap` line's
/// symbol, time and arrival, once past `measure_from`.
fn serve_influx_standin(stream: std::net::TcpStream, samples: &Mutex<Vec<Arrival>>, measure_from: &Mutex<i64>) {
    let mut reader = BufReader::new(match stream.try_clone() {
        Ok(s) => s,
        Err(_) => return,
    });
    let mut writer = stream;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let (mut length, mut gzip) = (0usize, false);
        loop {
            let mut header = String::new();
            if reader.read_line(&mut header).unwrap_or(0) == 0 {
                return;
            }
            let header = header.trim_end();
            if header.is_empty() {
                break;
            }
            let lower = header.to_ascii_lowercase();
            if let Some(v) = lower.strip_prefix("content-length:") {
                length = v.trim().parse().unwrap_or(0);
            } else if lower.starts_with("content-encoding:") && lower.contains("gzip") {
                gzip = true;
            }
        }
        let mut body = vec![0; length];
        if reader.read_exact(&mut body).is_err() {
            return;
        }
        let arrived =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64);
        let text = if gzip {
            let mut out = String::new();
            if flate2::read::GzDecoder::new(&body[..]).read_to_string(&mut out).is_err() {
                return;
            }
            out
        } else {
            String::from_utf8_lossy(&body).into_owned()
        };
        let from = *measure_from.lock().expect("lock");
        let mut got = Vec::new();
        for l in text.lines().filter(|l| l.starts_with("vwap,")) {
            if let Some(ts) = l.rsplit(' ').next().and_then(|t| t.parse::<i64>().ok())
                && ts >= from
                && let Some((_, rest)) = l.split_once(",symbol=")
            {
                let symbol = rest.split([',', ' ']).next().unwrap_or_default();
                got.push((symbol.to_string(), ts, arrived));
            }
        }
        samples.lock().expect("samples").extend(got);
        if writer.write_all(b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\n\r\n").is_err() {
            return;
        }
    }
}
