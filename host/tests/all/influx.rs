//! The InfluxDB sink against real servers: InfluxDB 1.6 over the v1 API,
//! VictoriaMetrics over InfluxDB's v2 write API. Seeded points of two
//! series go in through several writers, gzipped, and are read back with
//! their tags; a server that comes up late gets every point; writing the
//! same points again changes nothing.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, mpsc};
use std::time::Duration;

use tickfold::exec::OutputWriter;
use tickfold::sink::influx::{InfluxConfig, InfluxSink, Secret};

use crate::support::{self, Influxd, VictoriaMetrics};

/// Symbols, one of them with characters line protocol must escape.
const SYMBOLS: [&str; 3] = ["AAPL", "BTC-USD", "BRK B,A=1"];

/// Extra tags on every point, one of them awkward too.
fn extra_tags() -> BTreeMap<String, String> {
    BTreeMap::from([("run".to_string(), "it".to_string()), ("venue".to_string(), "x y,z=w".to_string())])
}

/// One output sample.
struct Point {
    series: &'static str,
    fields: Vec<String>,
    symbol: &'static str,
    ts: i64,
    values: Vec<f64>,
}

/// Seeded samples of two series (one named with a space), unique per
/// series, symbol and time: InfluxDB keeps only the last write of a point,
/// VictoriaMetrics keeps every one, so duplicates would make the two
/// disagree. Values span prices, whole sizes and tiny numbers written in
/// exponent form.
fn points(seed: u64, trades: usize) -> Vec<Point> {
    let trade_fields: Vec<String> = ["price", "size", "tiny"].map(String::from).to_vec();
    let bar_fields: Vec<String> = ["vwap", "range"].map(String::from).to_vec();
    let mut seen = BTreeSet::new();
    let mut out = Vec::new();
    for (i, t) in support::trades(seed, &SYMBOLS, trades, 1_700_000_000_000, 100.0).into_iter().enumerate() {
        if !seen.insert((t.symbol.clone(), t.ts)) {
            continue;
        }
        let symbol = *SYMBOLS.iter().find(|s| **s == t.symbol).unwrap();
        out.push(Point {
            series: "trades",
            fields: trade_fields.clone(),
            symbol,
            ts: t.ts,
            values: vec![t.price, t.size, t.price * 1e-250],
        });
        if i % 3 == 0 {
            out.push(Point {
                series: "bars 1m",
                fields: bar_fields.clone(),
                symbol,
                ts: t.ts,
                values: vec![t.price * (1.0 + 1e-9 * i as f64), t.price.sqrt()],
            });
        }
    }
    out
}

/// Writes `points` through one writer per symbol, each on its own thread,
/// as dataflow workers would.
fn write(sink: &InfluxSink, points: &[Point]) {
    std::thread::scope(|s| {
        for symbol in SYMBOLS {
            s.spawn(move || {
                let mut w = sink.writer();
                for p in points.iter().filter(|p| p.symbol == symbol) {
                    w.write(p.series, &p.fields, p.symbol, p.ts, &p.values).unwrap();
                }
                w.finish().unwrap();
            });
        }
    });
}

/// `sink.sync()`, failing the test rather than hanging it.
fn sync_within(sink: &Arc<InfluxSink>, limit: Duration) {
    let (done_tx, done) = mpsc::channel();
    let sink = sink.clone();
    std::thread::spawn(move || done_tx.send(sink.sync().map_err(|e| e.to_string())));
    match done.recv_timeout(limit) {
        Ok(result) => result.unwrap(),
        Err(_) => panic!("sync did not finish within {limit:?}"),
    }
}

/// (series, field, symbol, time) → value, as written.
type Values = BTreeMap<(String, String, String, i64), f64>;

fn expected(points: &[Point]) -> Values {
    let mut out = Values::new();
    for p in points {
        for (field, value) in p.fields.iter().zip(&p.values) {
            out.insert((p.series.to_string(), field.clone(), p.symbol.to_string(), p.ts), *value);
        }
    }
    out
}

/// Everything in both series of `database`, checking each point's tags.
fn read_influxd(server: &Influxd, database: &str) -> Values {
    let mut out = Values::new();
    for series in ["trades", "bars 1m"] {
        let answer = server.query(database, &format!("SELECT * FROM \"{series}\" GROUP BY *"));
        for group in answer["results"][0]["series"].as_array().unwrap() {
            let tags = group["tags"].as_object().unwrap();
            assert_eq!(tags["run"], "it");
            assert_eq!(tags["venue"], "x y,z=w");
            let symbol = tags["symbol"].as_str().unwrap();
            let columns: Vec<&str> = group["columns"].as_array().unwrap().iter().map(|c| c.as_str().unwrap()).collect();
            assert_eq!(columns[0], "time");
            for row in group["values"].as_array().unwrap() {
                let ts = row[0].as_i64().unwrap();
                for (field, value) in columns[1..].iter().zip(&row.as_array().unwrap()[1..]) {
                    let key = (series.to_string(), field.to_string(), symbol.to_string(), ts);
                    assert!(out.insert(key, value.as_f64().unwrap()).is_none());
                }
            }
        }
    }
    out
}

/// Every value bit for bit, and nothing else.
fn assert_bit_for_bit(got: &Values, want: &Values) {
    assert_eq!(got.len(), want.len(), "values read back");
    for ((key, w), (got_key, g)) in want.iter().zip(got) {
        assert_eq!(key, got_key);
        assert_eq!(g.to_bits(), w.to_bits(), "{key:?}: wrote {w:?}, read {g:?}");
    }
}

fn v1_config(url: String) -> InfluxConfig {
    InfluxConfig { tags: extra_tags(), batch_points: 1000, initial_backoff_ms: 10, ..InfluxConfig::v1(url, "ticks") }
}

#[test]
fn v1_to_influxdb_reads_back_every_value_bit_for_bit() {
    let server = Influxd::start();
    server.create_database("ticks");
    let points = points(11, 6000);
    let sink = Arc::new(InfluxSink::start(v1_config(server.url())).unwrap());
    write(&sink, &points);
    sync_within(&sink, Duration::from_secs(60));

    assert_bit_for_bit(&read_influxd(&server, "ticks"), &expected(&points));
    let stats = Arc::into_inner(sink).unwrap().close().unwrap();
    assert_eq!(stats.points_written, points.len() as u64);
    assert_eq!((stats.points_rejected, stats.retries), (0, 0));
}

#[test]
fn v2_to_victoria_metrics_reads_back_every_value() {
    let server = VictoriaMetrics::start();
    let points = points(12, 6000);
    let config = InfluxConfig {
        tags: extra_tags(),
        batch_points: 1000,
        ..InfluxConfig::v2(server.url(), "markets", "tickfold", Secret::new("unused-by-victoria-metrics"))
    };
    let sink = Arc::new(InfluxSink::start(config).unwrap());
    write(&sink, &points);
    sync_within(&sink, Duration::from_secs(60));

    // VictoriaMetrics names a series `measurement_field` and makes tags labels.
    let names: BTreeMap<String, (String, String)> = points
        .iter()
        .flat_map(|p| p.fields.iter().map(|f| (format!("{}_{f}", p.series), (p.series.to_string(), f.clone()))))
        .collect();
    let mut got = Values::new();
    for series in server.export(r#"{run="it"}"#) {
        let labels = series["metric"].as_object().unwrap();
        let label_names: Vec<&str> = labels.keys().map(String::as_str).collect();
        assert_eq!(label_names, ["__name__", "run", "symbol", "venue"]);
        assert_eq!(labels["venue"], "x y,z=w");
        let (measurement, field) = &names[labels["__name__"].as_str().unwrap()];
        let symbol = labels["symbol"].as_str().unwrap();
        let times = series["timestamps"].as_array().unwrap();
        let values = series["values"].as_array().unwrap();
        for (ts, value) in times.iter().zip(values) {
            let key = (measurement.clone(), field.clone(), symbol.to_string(), ts.as_i64().unwrap());
            assert!(got.insert(key.clone(), value.as_f64().unwrap()).is_none(), "{key:?} is there twice");
        }
    }
    let want = expected(&points);
    assert_eq!(got.len(), want.len(), "values read back");
    for ((key, w), (got_key, g)) in want.iter().zip(&got) {
        assert_eq!(key, got_key);
        // VictoriaMetrics stores values as decimals of about 12 significant
        // digits (measured: relative error below 1e-12), so bit-for-bit
        // holds on InfluxDB only.
        assert!(((g - w) / w).abs() < 1e-11, "{key:?}: wrote {w:?}, read {g:?}");
    }
    let stats = Arc::into_inner(sink).unwrap().close().unwrap();
    assert_eq!(stats.points_written, points.len() as u64);
}

#[test]
fn a_server_that_comes_up_late_gets_every_point_once() {
    let port = support::free_port();
    let url = format!("http://127.0.0.1:{port}");
    let points = points(13, 3000);
    let sink =
        Arc::new(InfluxSink::start(InfluxConfig { max_backoff_ms: 200, batch_points: 500, ..v1_config(url) }).unwrap());
    write(&sink, &points);
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while sink.stats().retries < 2 {
        assert!(std::time::Instant::now() < deadline, "the sink never tried the unreachable server");
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(sink.stats().points_written, 0);

    // Up, but without the database at first: that is retried too.
    let server = Influxd::start_on(port);
    while !sink.stats().last_error.is_some_and(|e| e.contains("database not found")) {
        assert!(std::time::Instant::now() < deadline, "the sink never found the database missing");
        std::thread::sleep(Duration::from_millis(10));
    }
    server.create_database("ticks");
    sync_within(&sink, Duration::from_secs(60));

    assert_bit_for_bit(&read_influxd(&server, "ticks"), &expected(&points));
    let stats = Arc::into_inner(sink).unwrap().close().unwrap();
    assert_eq!((stats.points_written, stats.points_rejected), (points.len() as u64, 0));
}

#[test]
fn writing_the_same_points_again_changes_nothing() {
    let server = Influxd::start();
    server.create_database("ticks");
    let points = points(14, 3000);
    let sink = Arc::new(InfluxSink::start(v1_config(server.url())).unwrap());
    write(&sink, &points);
    sync_within(&sink, Duration::from_secs(60));
    let first = read_influxd(&server, "ticks");

    // A replay after a crash: the same points again.
    write(&sink, &points);
    sync_within(&sink, Duration::from_secs(60));
    let count = server.query("ticks", "SELECT COUNT(price) FROM trades");
    let second = read_influxd(&server, "ticks");
    assert_bit_for_bit(&second, &first);
    assert_bit_for_bit(&second, &expected(&points));
    let trades = points.iter().filter(|p| p.series == "trades").count();
    assert_eq!(count["results"][0]["series"][0]["values"][0][1], trades);
    let stats = Arc::into_inner(sink).unwrap().close().unwrap();
    assert_eq!(stats.points_written, 2 * points.len() as u64);
}
