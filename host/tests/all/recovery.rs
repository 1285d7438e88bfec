//! Crash recovery: `tickfold run` killed with SIGKILL at random moments and
//! restarted from its checkpoints writes exactly what a run that never
//! stopped writes, to InfluxDB and to the archive.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tickfold::sink::archive::read_series;

use crate::pipeline::seeded_broker_in_batches_of;
use crate::support::{Influxd, Tansu, TempDir, wait_success};

/// Settings added to `[kafka]` and `[sinks.influx]`.
#[derive(Clone, Copy, Default)]
pub(crate) struct Extra {
    pub kafka: &'static str,
    pub influx: &'static str,
}

/// 2 workers over topic `trades` (4 partitions): bars → RSI and VWAP, into
/// InfluxDB database `database` (with `influx_extra` settings) and an
/// archive in `dir/archive`, checkpoints every 300 ms.
pub(crate) fn config(dir: &Path, broker: &Tansu, influx: &Influxd, database: &str, extra: Extra) -> PathBuf {
    let Extra { kafka: kafka_extra, influx: influx_extra } = extra;
    // And 30-minute bars: labelled with their start, they come after their
    // 10-minute archive bucket closed, as late parts.
    let plugins = format!(
        "{}\n[[plugin]]\nwasm = \"{}\"\ninput = \"trades\"\nparams = {{ window = \"30m\" }}\nrename = {{ bars = \"bars_30m\" }}\n",
        crate::support::bars_rsi_vwap_toml(),
        crate::support::plugin_wasm("ohlcv").display()
    );
    let text = format!(
        r#"
workers = 2
[kafka]
brokers = "{brokers}"
topic = "trades"
group = "{database}"
allowed_lateness_ms = 2000
idle_timeout_ms = 600000
max_batch = 200
stop_when_idle_ms = 1500
{kafka_extra}

{plugins}
[sinks]
archive_trades = true

[sinks.influx]
url = "{url}"
api = "v1"
database = "{database}"
flush_interval_ms = 50
{influx_extra}

[sinks.archive]
dir = "archive"
roll_interval_ms = 600000
max_rows_per_file = 1500
# Small: buckets are also written when full, between checkpoints and kills.
max_buffered_rows = 100

[checkpoint]
dir = "checkpoints"
interval_ms = 300
retain = 3
"#,
        brokers = broker.bootstrap(),
        plugins = plugins,
        url = influx.url(),
    );
    let path = dir.join("tickfold.toml");
    std::fs::write(&path, text).unwrap();
    path
}

pub(crate) fn start(config: &Path, log: &Path) -> Child {
    Command::new(env!("CARGO_BIN_EXE_tickfold"))
        .args(["run", "--config"])
        .arg(config)
        .env("TICKFOLD_LOG", "info")
        .stdout(Stdio::null())
        .stderr(std::fs::OpenOptions::new().create(true).append(true).open(log).unwrap())
        .spawn()
        .unwrap()
}

/// Every point of every measurement, as text, by measurement.
fn influx_contents(influx: &Influxd, database: &str) -> BTreeMap<String, Vec<String>> {
    let mut out = BTreeMap::new();
    for measurement in ["bars_1m", "rsi_14", "vwap", "bars_30m"] {
        let answer = influx.query(database, &format!("SELECT * FROM \"{measurement}\" GROUP BY *"));
        let mut points = Vec::new();
        for series in answer["results"][0]["series"].as_array().cloned().unwrap_or_default() {
            for row in series["values"].as_array().unwrap() {
                points.push(format!("{} {}", series["tags"], row));
            }
        }
        points.sort();
        out.insert(measurement.to_string(), points);
    }
    out
}

/// An archived row with its values as bits: symbol, ts, values,
/// partition, offset.
type RowBits = (String, i64, Vec<u64>, Option<i32>, Option<i64>);

/// Every archived row of every series, as bits, sorted.
fn archive_contents(dir: &Path) -> BTreeMap<String, Vec<RowBits>> {
    let mut out = BTreeMap::new();
    for series in ["trades", "bars_1m", "rsi_14", "vwap", "bars_30m"] {
        let mut rows: Vec<_> = read_series(dir, series)
            .unwrap()
            .into_iter()
            .map(|r| (r.symbol, r.ts, r.values.iter().map(|v| v.to_bits()).collect(), r.partition, r.offset))
            .collect();
        rows.sort();
        out.insert(series.to_string(), rows);
    }
    out
}

#[test]
fn sigkill_at_random_moments_leaves_influxdb_and_the_archive_as_an_uninterrupted_run() {
    // One record per batch: tansu's memory engine cannot resume a fetch
    // inside a batch (see `Scenario::produce_in_batches_of`), and every
    // restart resumes at an arbitrary offset. Kafka itself can.
    let (broker, scenario) = seeded_broker_in_batches_of(2027, 120_000, 1);
    let influx = Influxd::start();
    influx.create_database("clean");
    influx.create_database("faulty");

    // The reference: one run from start to end.
    let clean = TempDir::new("recovery-clean");
    let config_clean = config(clean.path(), &broker, &influx, "clean", Extra::default());
    let log = clean.path().join("tickfold.log");
    let started = Instant::now();
    wait_success(&mut start(&config_clean, &log), &log, Duration::from_secs(180));
    let uninterrupted = started.elapsed();
    eprintln!("uninterrupted run: {uninterrupted:?}");

    // Killed at seeded random moments within the run, restarted each time.
    let faulty = TempDir::new("recovery-faulty");
    let config_faulty = config(faulty.path(), &broker, &influx, "faulty", Extra::default());
    let log = faulty.path().join("tickfold.log");
    let mut rng = 0x2545_f491_4f6c_dd1du64;
    let mut kills = 0;
    // Checkpoints that hold state: a run's first ones may come before it
    // has read anything, and a kill right after those would test nothing.
    let checkpoints_written = || {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        text.lines().filter(|l| l.contains(" written to ") && !l.contains(" keys=0 ")).count()
    };
    while kills < 5 {
        let before = checkpoints_written();
        let mut child = start(&config_faulty, &log);
        // Once this run has written a checkpoint with state in it (so each
        // restart gets further and restores something), at a seeded random
        // moment within a slice of the run.
        let deadline = Instant::now() + Duration::from_secs(60);
        while checkpoints_written() == before {
            assert!(
                child.try_wait().unwrap().is_none(),
                "the host ended early:\n{}",
                std::fs::read_to_string(&log).unwrap()
            );
            assert!(
                Instant::now() < deadline,
                "no checkpoint within 60 s:\n{}",
                std::fs::read_to_string(&log).unwrap()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        let after = Duration::from_millis(rng % 500);
        std::thread::sleep(after);
        if child.try_wait().unwrap().is_some() {
            panic!(
                "the host ended before kill {kills} ({after:?} after a checkpoint; a whole run takes {uninterrupted:?}); make the input larger:\n{}",
                std::fs::read_to_string(&log).unwrap()
            );
        }
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        kills += 1;
    }
    // The newest checkpoint damaged (one byte flipped, as a bad disk
    // would): the last start must notice, say so, and use the one before.
    let dir = faulty.path().join("checkpoints");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "tfck"))
        .collect();
    files.sort();
    let newest = files.last().expect("checkpoints were written").clone();
    let mut bytes = std::fs::read(&newest).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x10;
    std::fs::write(&newest, bytes).unwrap();
    let mut child = start(&config_faulty, &log);
    wait_success(&mut child, &log, Duration::from_secs(120));
    let text = std::fs::read_to_string(&log).unwrap();
    for line in text.lines().filter(|l| l.contains("restoring from") || l.contains("written to")) {
        eprintln!("{}", line.split(" INFO ").nth(1).unwrap_or(line));
    }
    let restores = text.matches("restoring from checkpoint").count();
    assert_eq!(restores, 5, "every restart after the first run restores from a checkpoint:\n{text}");
    let name = newest.file_name().unwrap().to_string_lossy();
    assert!(
        text.contains(&format!("checkpoint {name} is unreadable: checksum mismatch")) && text.contains("falling back"),
        "the damaged checkpoint is reported:\n{text}"
    );

    assert_same_outputs(&influx, &clean.path().join("archive"), &faulty.path().join("archive"), scenario.good().len());
    // The 30-minute bars went to late parts, named with the generation,
    // across the kills.
    let late = tickfold::sink::archive::series_files(&faulty.path().join("archive"), "bars_30m")
        .unwrap()
        .into_iter()
        .filter(|p| p.file_name().unwrap().to_string_lossy().contains("-g"))
        .count();
    assert!(late > 10, "{late} late parts of bars_30m");

    // Dead letters are at least once: the clean run sent each once, and
    // the killed runs each at least once more (a checkpoint waits for the
    // broker to take those before its cut).
    let mut sent: BTreeMap<String, usize> = BTreeMap::new();
    let dead = scenario.dead();
    for source in dead_letter_sources(&broker, "trades.dead-letter", 2 * dead.len()) {
        *sent.entry(source).or_default() += 1;
    }
    assert!(!dead.is_empty());
    for (partition, offset) in dead.keys() {
        let source = format!("trades/{partition}/{offset}");
        let n = sent.remove(&source).unwrap_or(0);
        assert!(n >= 2, "{source} was dead-lettered {n} times by the two runs");
    }
    assert!(sent.is_empty(), "dead letters of good records: {:?}", sent.keys().take(5).collect::<Vec<_>>());
}

/// The source header of every dead letter in `topic`: at least `expected`
/// (or 60 s), then until none comes for 2 s.
fn dead_letter_sources(broker: &crate::support::Tansu, topic: &str, expected: usize) -> Vec<String> {
    use rdkafka::consumer::Consumer;
    use rdkafka::message::{Headers, Message};
    let consumer = broker.consumer("tickfold-test-dlq-recovery");
    let mut assignment = rdkafka::TopicPartitionList::new();
    assignment.add_partition_offset(topic, 0, rdkafka::Offset::Beginning).unwrap();
    consumer.assign(&assignment).unwrap();
    let mut sources = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let Some(m) = consumer.poll(Duration::from_secs(2)) else {
            if sources.len() >= expected || Instant::now() >= deadline {
                break;
            }
            continue;
        };
        let m = m.unwrap();
        let source = m
            .headers()
            .and_then(|h| h.iter().find(|h| h.key == tickfold::source::kafka::headers::SOURCE).and_then(|h| h.value));
        sources.push(String::from_utf8_lossy(source.unwrap_or_default()).into_owned());
    }
    sources
}

/// The faulty run's InfluxDB database and archive (`faulty`) hold exactly
/// what the clean run's do (`clean`); the clean archive holds `good` trades.
pub(crate) fn assert_same_outputs(influx: &Influxd, clean: &Path, faulty: &Path, good: usize) {
    // The raw trades first: each good trade once (a cut that loses or
    // repeats records shows here), then what the plugins made of them.
    let (want, got) = (archive_contents(clean), archive_contents(faulty));
    assert_eq!(want["trades"].len(), good, "every good trade archived once");
    let influx_same: Vec<(String, bool)> = {
        let (want, got) = (influx_contents(influx, "clean"), influx_contents(influx, "faulty"));
        want.iter().map(|(m, p)| (m.clone(), *p == got[m])).collect()
    };
    for series in ["trades", "vwap", "bars_1m", "rsi_14", "bars_30m"] {
        let (rows, other) = (&want[series], &got[series]);
        let first = rows.iter().zip(other.iter()).position(|(a, b)| a != b);
        assert!(
            rows == other,
            "(InfluxDB, measurement: same: {influx_same:?}) {series}: {} archived rows after the kills, {} without; first difference at {first:?}: {:?} vs {:?}",
            other.len(),
            rows.len(),
            first.map(|i| &rows[i]),
            first.map(|i| &other[i])
        );
    }
    let (want, got) = (influx_contents(influx, "clean"), influx_contents(influx, "faulty"));
    for (measurement, points) in &want {
        assert!(!points.is_empty(), "{measurement}: the reference wrote nothing");
        let other = &got[measurement];
        let missing: Vec<&String> = points.iter().filter(|p| !other.contains(p)).take(5).collect();
        let extra: Vec<&String> = other.iter().filter(|p| !points.contains(p)).take(5).collect();
        assert!(
            points == other,
            "{measurement}: {} points after the kills, {} without; missing e.g. {missing:#?}; extra e.g. {extra:#?}",
            other.len(),
            points.len()
        );
    }
}

#[test]
fn no_checkpoint_is_written_while_dead_letters_before_it_are_not_on_the_broker() {
    // The dead-letter topic does not exist at first, so the dead letters
    // stay unsent (librdkafka hands them back after 30 s, and they are kept
    // and sent again). The host runs on, without `stop_when_idle_ms`, until
    // told to stop.
    let (broker, scenario) = seeded_broker_in_batches_of(2028, 20_000, 500);
    let influx = Influxd::start();
    influx.create_database("dlq");
    let dir = TempDir::new("recovery-dlq");
    let path = config(dir.path(), &broker, &influx, "dlq", Extra::default());
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(text.contains("stop_when_idle_ms = 1500\n"));
    std::fs::write(&path, text.replace("stop_when_idle_ms = 1500\n", "dead_letter_topic = \"trades.dlq\"\n")).unwrap();
    let log = dir.path().join("tickfold.log");
    let read = || std::fs::read_to_string(&log).unwrap_or_default();
    let written = || read().lines().filter(|l| l.contains(" written to ")).count();
    let mut child = start(&path, &log);
    let deadline = Instant::now() + Duration::from_secs(120);
    while !read().contains("a dead letter was not delivered") {
        assert!(child.try_wait().unwrap().is_none(), "the host ended early:\n{}", read());
        assert!(Instant::now() < deadline, "the dead letters never failed:\n{}", read());
        std::thread::sleep(Duration::from_millis(20));
    }
    // Letters before every later cut are stuck: no checkpoint completes.
    let stuck = written();
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(written(), stuck, "a checkpoint was written while dead letters before its cut were unsent:\n{}", read());

    broker.create_topic("trades.dlq", 1);
    let deadline = Instant::now() + Duration::from_secs(60);
    while written() == stuck {
        assert!(child.try_wait().unwrap().is_none(), "the host ended early:\n{}", read());
        assert!(Instant::now() < deadline, "no checkpoint once the letters could go:\n{}", read());
        std::thread::sleep(Duration::from_millis(20));
    }
    let status = Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
    assert!(status.success());
    wait_success(&mut child, &log, Duration::from_secs(60));

    let dead = scenario.dead();
    let sent: std::collections::BTreeSet<String> =
        dead_letter_sources(&broker, "trades.dlq", dead.len()).into_iter().collect();
    for (partition, offset) in dead.keys() {
        assert!(
            sent.contains(&format!("trades/{partition}/{offset}")),
            "trades/{partition}/{offset} was not dead-lettered"
        );
    }
}
