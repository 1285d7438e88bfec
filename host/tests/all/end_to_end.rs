//! `tickfold run` as a user runs it, against real services: a seeded topic
//! (4 partitions; out-of-order, late and malformed records) in tansu, the
//! host with 2 workers, InfluxDB 1.x over the v1 API, the Parquet archive.
//! What InfluxDB holds is checked against the references, every good trade
//! is in the archive exactly once, and every bad or late record is in the
//! dead-letter topic.

use std::collections::BTreeMap;

use tickfold::sink::archive::read_series;

use crate::conformance::{Out, assert_same};
use crate::pipeline::{Scenario, check_dead_letters, read_dead_letters, seeded_broker};
use crate::support::{Influxd, Tansu, TempDir, plugin_wasm};

/// Every point of `measurement`, per symbol, as outputs with `fields` in
/// this order.
fn influx_series(influx: &Influxd, measurement: &str, fields: &[&str]) -> Vec<Out> {
    let answer = influx.query("tickfold", &format!("SELECT * FROM \"{measurement}\" GROUP BY \"symbol\""));
    let mut out = Vec::new();
    for series in answer["results"][0]["series"].as_array().cloned().unwrap_or_default() {
        let key = series["tags"]["symbol"].as_str().unwrap().to_string();
        let columns: Vec<&str> = series["columns"].as_array().unwrap().iter().map(|c| c.as_str().unwrap()).collect();
        for row in series["values"].as_array().unwrap() {
            let at = |name: &str| &row[columns.iter().position(|c| *c == name).unwrap()];
            out.push(Out {
                series: measurement.into(),
                key: key.clone(),
                ts: at("time").as_i64().unwrap(),
                values: fields.iter().map(|f| at(f).as_f64().unwrap()).collect(),
            });
        }
    }
    out
}

/// InfluxDB keeps one point per series and time: of several outputs with
/// the same key and time (trades in the same millisecond), the last.
fn last_per_time(outs: Vec<Out>) -> Vec<Out> {
    let mut last: BTreeMap<(String, String, i64), Out> = BTreeMap::new();
    for o in outs {
        last.insert((o.series.clone(), o.key.clone(), o.ts), o);
    }
    last.into_values().collect()
}

#[test]
fn tickfold_run_fills_influxdb_and_the_archive_and_dead_letters_the_rest() {
    let influx = Influxd::start();
    influx.create_database("tickfold");
    let (broker, scenario) = seeded_broker(77, 6_000);

    let dir = TempDir::new("end-to-end");
    let config = format!(
        r#"
workers = 2
[kafka]
brokers = "{brokers}"
topic = "trades"
allowed_lateness_ms = 2000
idle_timeout_ms = 600000
max_batch = 500
stop_when_idle_ms = 1500

{plugins}
[sinks.influx]
url = "{url}"
api = "v1"
database = "tickfold"
flush_interval_ms = 100
tags = {{ host = "e2e" }}

[sinks.archive]
dir = "archive"
roll_interval_ms = 600000
max_rows_per_file = 1500
# Small: buckets are also written before they close (when full).
max_buffered_rows = 60
"#,
        brokers = broker.bootstrap(),
        plugins = crate::support::bars_rsi_vwap_toml(),
        url = influx.url(),
    );
    let config_path = dir.path().join("tickfold.toml");
    std::fs::write(&config_path, config).unwrap();
    let out = run_with_deadline(
        std::process::Command::new(env!("CARGO_BIN_EXE_tickfold"))
            .args(["run", "--config"])
            .arg(&config_path)
            .env("TICKFOLD_LOG", "warn"),
        std::time::Duration::from_secs(300),
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "tickfold run failed:\n{stderr}");

    let expected = scenario.expected();
    // InfluxDB: bars, RSI and VWAP as the references compute them.
    let bars = influx_series(&influx, "bars_1m", &["open", "high", "low", "close", "volume", "vwap", "count"]);
    assert_same("InfluxDB bars_1m", bars, expected.bars.clone());
    assert_same("InfluxDB rsi_14", influx_series(&influx, "rsi_14", &["rsi"]), expected.rsi.clone());
    let vwap = influx_series(&influx, "vwap", &["vwap", "volume", "rolling_vwap", "rolling_volume"]);
    assert_same("InfluxDB vwap", vwap, last_per_time(expected.vwap.clone()));
    // The configured tag is on every point.
    let tagged = influx.query("tickfold", "SELECT count(\"rsi\") FROM \"rsi_14\" WHERE \"host\" = 'e2e'");
    assert_eq!(tagged["results"][0]["series"][0]["values"][0][1].as_u64(), Some(expected.rsi.len() as u64));

    // The archive: every good trade exactly once, bit for bit, with where
    // it was read; every output series in full.
    let archive = dir.path().join("archive");
    let mut trades = read_series(&archive, "trades").unwrap();
    trades.sort_by_key(|r| (r.partition, r.offset));
    let good = scenario.good();
    assert_eq!(trades.len(), good.len(), "every good trade archived once");
    for (row, (p, o, t)) in trades.iter().zip(&good) {
        assert_eq!((row.partition, row.offset), (Some(*p), Some(*o)));
        assert_eq!((row.symbol.as_str(), row.ts), (t.symbol.as_str(), t.ts));
        assert_eq!(row.values, vec![t.price, t.size]);
    }
    let as_outs = |series: &str| -> Vec<Out> {
        read_series(&archive, series)
            .unwrap()
            .into_iter()
            .map(|r| Out { series: series.into(), key: r.symbol, ts: r.ts, values: r.values })
            .collect()
    };
    assert_same("archived bars_1m", as_outs("bars_1m"), expected.bars);
    assert_same("archived rsi_14", as_outs("rsi_14"), expected.rsi);
    // Every VWAP output, ties in time included (the archive keeps them all).
    assert_eq!(as_outs("vwap").len(), expected.vwap.len());
    assert!(
        std::fs::read_dir(archive.join("series=trades")).unwrap().count() >= 1
            && walk(&archive).iter().all(|p| p.extension().is_some_and(|e| e == "parquet")),
        "only finished .parquet files under the archive"
    );
    // Buckets were also written before they closed, when full: a second
    // part where one file (1500 rows) would hold the whole bucket.
    let parts = walk(&archive.join("series=trades"));
    assert!(
        parts.iter().any(|p| p.to_string_lossy().ends_with("-0001.parquet")),
        "no bucket of trades was written in parts: {parts:?}"
    );

    let dead = scenario.dead();
    let letters = read_dead_letters(&broker, "trades.dead-letter", dead.len());
    check_dead_letters(&scenario, "trades", &letters);
    assert!(stderr.contains(&format!("{} dead-lettered", dead.len())), "the summary counts dead letters:\n{stderr}");
}

/// Runs `command`, killing it (and failing the test) if it has not ended
/// by `deadline`: a hung host fails the test instead of hanging CI.
fn run_with_deadline(command: &mut std::process::Command, deadline: std::time::Duration) -> std::process::Output {
    run_with_deadline_signalled(command, None, deadline)
}

/// [`run_with_deadline`], sending SIGTERM `term_after` the start.
fn run_with_deadline_signalled(
    command: &mut std::process::Command,
    term_after: Option<std::time::Duration>,
    deadline: std::time::Duration,
) -> std::process::Output {
    let child = command.stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped()).spawn().unwrap();
    let id = child.id().to_string();
    let (done, wait) = std::sync::mpsc::channel();
    std::thread::spawn(move || done.send(child.wait_with_output()));
    if let Some(after) = term_after {
        std::thread::sleep(after);
        let _ = std::process::Command::new("kill").args(["-TERM", &id]).status();
    }
    match wait.recv_timeout(deadline) {
        Ok(out) => out.unwrap(),
        Err(_) => {
            let _ = std::process::Command::new("kill").args(["-9", &id]).status();
            panic!("tickfold run did not end within {deadline:?}; killed it");
        }
    }
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        if path.is_dir() {
            files.extend(walk(&path));
        } else {
            files.push(path);
        }
    }
    files
}

/// A config for `tickfold run` over topic `trades` with one plugin (vwap)
/// and InfluxDB at `influx_url`; `extra` is appended to `[kafka]`.
pub(crate) fn small_config(dir: &std::path::Path, broker: &Tansu, influx_url: &str, extra: &str) -> std::path::PathBuf {
    let config = format!(
        r#"
workers = 2
[kafka]
brokers = "{brokers}"
topic = "trades"
start = "committed"
group = "resume-test"
{extra}

[[plugin]]
wasm = "{vwap}"

[sinks.influx]
url = "{influx_url}"
api = "v1"
database = "tickfold"
flush_interval_ms = 50
close_timeout_ms = 1000
"#,
        brokers = broker.bootstrap(),
        vwap = plugin_wasm("vwap").display(),
    );
    let path = dir.join("tickfold.toml");
    std::fs::write(&path, config).unwrap();
    path
}

#[test]
fn sigterm_with_influxdb_down_ends_the_host_and_says_what_was_not_written() {
    let (broker, _) = seeded_broker(5, 2_000);
    let dir = TempDir::new("sigterm");
    // Nothing listens there: every write fails and is retried.
    let nowhere = format!("http://127.0.0.1:{}", crate::support::free_port());
    let config = small_config(dir.path(), &broker, &nowhere, "");
    let out = run_with_deadline_signalled(
        std::process::Command::new(env!("CARGO_BIN_EXE_tickfold"))
            .args(["run", "--config"])
            .arg(&config)
            .env("TICKFOLD_LOG", "warn"),
        Some(std::time::Duration::from_secs(4)),
        std::time::Duration::from_secs(64),
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "points were lost, so the run must fail:\n{stderr}");
    assert!(stderr.contains("not written"), "the error says points were not written:\n{stderr}");
}

#[test]
fn committed_offsets_let_a_restarted_host_resume_where_it_stopped() {
    let influx = Influxd::start();
    influx.create_database("tickfold");
    let (broker, first) = seeded_broker(6, 1_500);
    let dir = TempDir::new("resume");
    let config = small_config(dir.path(), &broker, &influx.url(), "stop_when_idle_ms = 1000");
    let run = || {
        let out = run_with_deadline(
            std::process::Command::new(env!("CARGO_BIN_EXE_tickfold"))
                .args(["run", "--config"])
                .arg(&config)
                .env("TICKFOLD_LOG", "warn"),
            std::time::Duration::from_secs(120),
        );
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(out.status.success(), "{stderr}");
        stderr
    };
    let records = |s: &Scenario| s.partitions.iter().map(Vec::len).sum::<usize>();
    let stderr = run();
    assert!(stderr.contains(&format!("tickfold: {} records", records(&first))), "{stderr}");
    // More records arrive; the second run reads only those.
    let second = Scenario::new(7, 700);
    second.produce(&broker, "trades");
    let stderr = run();
    assert!(stderr.contains(&format!("tickfold: {} records", records(&second))), "{stderr}");
}
