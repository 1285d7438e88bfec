//! `tickfold check` and `tickfold exec`, run as a user runs them.

use std::path::Path;
use std::process::{Command, Output};

use crate::support::{TempDir, plugin_wasm, trades, write_trades_csv};

fn tickfold(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_tickfold")).args(args).output().expect("running tickfold")
}

fn stdout(out: &Output) -> String {
    assert!(out.status.success(), "tickfold failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout.clone()).unwrap()
}

fn p(path: &Path) -> &str {
    path.to_str().unwrap()
}

#[test]
fn check_prints_the_description() {
    let wasm = plugin_wasm("ohlcv");
    let text = stdout(&tickfold(&["check", p(&wasm)]));
    assert!(text.starts_with("ohlcv "), "{text}");
    assert!(text.contains("implements tickfold:plugin@0.1.0"), "{text}");
    assert!(text.contains("window") && text.contains("default 1m"), "{text}");
    assert!(text.contains("bars: open, high, low, close, volume, vwap, count"), "{text}");

    let json: serde_json::Value = serde_json::from_str(&stdout(&tickfold(&["check", "--json", p(&wasm)]))).unwrap();
    assert_eq!(json["name"], "ohlcv");
    assert_eq!(json["outputs"][0]["fields"][6], "count");
}

#[test]
fn check_with_parameters_shows_the_series_they_make() {
    let text = stdout(&tickfold(&["check", p(&plugin_wasm("sma")), "--param", "periods=7,21"]));
    assert!(text.contains("outputs (with the given parameters)"), "{text}");
    assert!(text.contains("sma_7: sma") && text.contains("sma_21: sma"), "{text}");
}

#[test]
fn check_explains_what_is_wrong() {
    let dir = TempDir::new("check");
    let notes = dir.path().join("notes.wasm");
    std::fs::write(&notes, "not wasm").unwrap();
    let out = tickfold(&["check", p(&notes)]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("tickfold: error:") && err.contains("not a WebAssembly file"), "{err}");

    let out = tickfold(&["check", p(&plugin_wasm("ohlcv")), "--param", "window=soon"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("parameter `window` must be a duration"), "{err}");
}

/// Runs `exec` and parses its JSONL output.
fn exec_jsonl(args: &[&str]) -> Vec<serde_json::Value> {
    let mut all = vec!["exec", "--format", "jsonl"];
    all.extend_from_slice(args);
    stdout(&tickfold(&all)).lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

#[test]
fn exec_gives_the_same_bars_from_csv_jsonl_and_parquet() {
    let dir = TempDir::new("formats");
    let data = trades(7, &["AAPL", "MSFT", "BTC-USD"], 3_000, 1_700_000_000_000, 100.0);
    let csv = dir.path().join("trades.csv");
    write_trades_csv(&csv, &data);

    // The same trades as JSONL with Finnhub's short names.
    let jsonl = dir.path().join("trades.jsonl");
    let lines: Vec<String> = data
        .iter()
        .map(|t| serde_json::json!({"s": t.symbol, "t": t.ts, "p": t.price, "v": t.size}).to_string())
        .collect();
    std::fs::write(&jsonl, lines.join("\n")).unwrap();

    // And as Parquet, with a millisecond timestamp column.
    let parquet = dir.path().join("trades.parquet");
    write_parquet(&parquet, &data);

    let ohlcv = plugin_wasm("ohlcv");
    let from_csv = exec_jsonl(&[p(&ohlcv), "--input", p(&csv), "--watermark-lag-ms", "2000"]);
    assert!(from_csv.len() > 100, "expected bars, got {}", from_csv.len());
    assert_eq!(from_csv[0]["series"], "bars");
    assert_eq!(exec_jsonl(&[p(&ohlcv), "--input", p(&jsonl), "--watermark-lag-ms", "2000"]), from_csv);
    assert_eq!(exec_jsonl(&[p(&ohlcv), "--input", p(&parquet), "--watermark-lag-ms", "2000"]), from_csv);
}

fn write_parquet(path: &Path, data: &[crate::support::Trade]) {
    use std::sync::Arc;

    use arrow::array::{Float64Array, StringArray, TimestampMillisecondArray};
    use arrow::record_batch::RecordBatch;

    let batch = RecordBatch::try_from_iter(vec![
        ("symbol", Arc::new(StringArray::from_iter_values(data.iter().map(|t| t.symbol.as_str()))) as _),
        ("ts", Arc::new(TimestampMillisecondArray::from_iter_values(data.iter().map(|t| t.ts))) as _),
        ("price", Arc::new(Float64Array::from_iter_values(data.iter().map(|t| t.price))) as _),
        ("size", Arc::new(Float64Array::from_iter_values(data.iter().map(|t| t.size))) as _),
    ])
    .unwrap();
    let file = std::fs::File::create(path).unwrap();
    let mut writer = parquet::arrow::ArrowWriter::try_new(file, batch.schema(), None).unwrap();
    writer.write(&batch).unwrap();
    writer.close().unwrap();
}

#[test]
fn a_chain_equals_its_stages_run_one_after_the_other() {
    let dir = TempDir::new("chain");
    let csv = dir.path().join("trades.csv");
    write_trades_csv(&csv, &trades(11, &["AAPL", "MSFT"], 20_000, 1_700_000_000_000, 50.0));
    let (ohlcv, rsi) = (plugin_wasm("ohlcv"), plugin_wasm("rsi"));

    // ohlcv → rsi in one run.
    let chained = exec_jsonl(&[p(&ohlcv), p(&rsi), "--input", p(&csv), "--param", "rsi.period=5"]);
    assert!(!chained.is_empty() && chained.iter().all(|r| r["series"] == "rsi"));

    // ohlcv to a bars file, then rsi over that file.
    let bars = dir.path().join("bars.jsonl");
    let out = tickfold(&["exec", p(&ohlcv), "--input", p(&csv), "--output", p(&bars)]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    // The bars file is in emission order, not event-time order (each
    // watermark closes every key's windows in turn), so nothing may count
    // as late when it is read back: a lag longer than the data.
    let two_step =
        exec_jsonl(&[p(&rsi), "--input", p(&bars), "--param", "period=5", "--watermark-lag-ms", "100000000000"]);
    // Order is defined per key (arrival order), not across keys: compare
    // each key's sequence.
    let per_key = |rows: &[serde_json::Value]| {
        let mut by_key: std::collections::BTreeMap<String, Vec<serde_json::Value>> = Default::default();
        for r in rows {
            by_key.entry(r["symbol"].as_str().unwrap().to_string()).or_default().push(r.clone());
        }
        by_key
    };
    assert_eq!(per_key(&chained), per_key(&two_step));
}

#[test]
fn exec_counts_late_rows_and_leaves_them_out() {
    let dir = TempDir::new("late");
    let csv = dir.path().join("trades.csv");
    std::fs::write(
        &csv,
        "symbol,ts,price,size\nAAPL,60000,10,1\nAAPL,125000,11,1\nAAPL,61000,99,1\nAAPL,124000,12,2\n",
    )
    .unwrap();
    let out = tickfold(&[
        "exec",
        p(&plugin_wasm("ohlcv")),
        "--input",
        p(&csv),
        "--format",
        "jsonl",
        "--watermark-lag-ms",
        "5000",
    ]);
    let text = stdout(&out);
    let bars: Vec<serde_json::Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    // The trade at 61 s arrives when the watermark is 120 s: late, left out.
    assert_eq!(bars.len(), 2, "{text}");
    assert_eq!((bars[0]["ts"].as_i64(), bars[0]["high"].as_f64()), (Some(60_000), Some(10.0)));
    assert_eq!((bars[1]["open"].as_f64(), bars[1]["close"].as_f64()), (Some(12.0), Some(11.0)));
    assert!(String::from_utf8_lossy(&out.stderr).contains("1 late"), "{}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn exec_names_the_line_of_a_malformed_record() {
    let dir = TempDir::new("malformed");
    let csv = dir.path().join("trades.csv");
    std::fs::write(&csv, "symbol,ts,price,size\nAAPL,1000,10,1\nAAPL,later,11,1\n").unwrap();
    let out = tickfold(&["exec", p(&plugin_wasm("ohlcv")), "--input", p(&csv)]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("trades.csv:3") && err.contains("`ts` must be integer milliseconds"), "{err}");
}

#[test]
fn exec_explains_an_input_it_cannot_wire() {
    let dir = TempDir::new("unwired");
    let csv = dir.path().join("trades.csv");
    write_trades_csv(&csv, &trades(3, &["AAPL"], 100, 0, 10.0));
    // rsi reads `close` by default; trades have `price`.
    let out = tickfold(&["exec", p(&plugin_wasm("rsi")), "--input", p(&csv)]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("[\"close\"]") && err.contains("`field` parameter"), "{err}");
    // With field=price it runs.
    stdout(&tickfold(&["exec", p(&plugin_wasm("rsi")), "--input", p(&csv), "--param", "field=price"]));
}

/// Each key's rows, in order.
fn per_key(rows: &[serde_json::Value]) -> std::collections::BTreeMap<(String, String), Vec<serde_json::Value>> {
    let mut by_key: std::collections::BTreeMap<(String, String), Vec<serde_json::Value>> = Default::default();
    for r in rows {
        let key = (r["series"].as_str().unwrap().to_string(), r["symbol"].as_str().unwrap().to_string());
        by_key.entry(key).or_default().push(r.clone());
    }
    by_key
}

#[test]
fn replay_on_workers_gives_what_exec_gives_per_key() {
    let dir = TempDir::new("replay");
    let csv = dir.path().join("trades.csv");
    write_trades_csv(
        &csv,
        &trades(21, &["AAPL", "MSFT", "BTC-USD", "EURUSD", "NVDA"], 20_000, 1_700_000_000_000, 80.0),
    );
    let (ohlcv, rsi, vwap) = (plugin_wasm("ohlcv"), plugin_wasm("rsi"), plugin_wasm("vwap"));
    for chain in [vec![p(&ohlcv), p(&rsi)], vec![p(&vwap)]] {
        let mut common = chain.clone();
        common.extend(["--input", p(&csv), "--all-stages", "--watermark-lag-ms", "3000", "--batch-rows", "777"]);
        let exec = tickfold(&[&["exec", "--format", "jsonl"][..], &common].concat());
        let expected = stdout(&exec);
        let late = |out: &Output| {
            let err = String::from_utf8_lossy(&out.stderr).to_string();
            err.split(" late").next().and_then(|s| s.rsplit(' ').next()).unwrap_or_default().to_string()
        };
        assert_ne!(late(&exec), "0", "the data should have late trades");
        for workers in ["1", "2", "3"] {
            let replay = tickfold(&[&["replay", "--format", "jsonl", "--workers", workers][..], &common].concat());
            let got = stdout(&replay);
            let parse =
                |t: &str| t.lines().map(|l| serde_json::from_str(l).unwrap()).collect::<Vec<serde_json::Value>>();
            assert_eq!(per_key(&parse(&got)), per_key(&parse(&expected)), "{chain:?} on {workers} workers");
            assert_eq!(late(&replay), late(&exec), "the same trades are late");
        }
    }
}

#[test]
fn a_plugin_that_traps_mid_run_is_reported_by_exec_and_replay() {
    let dir = TempDir::new("trap");
    let csv = dir.path().join("values.csv");
    std::fs::write(&csv, "symbol,ts,value\nAAPL,1000,1\nMSFT,2000,2\n").unwrap();
    let fixture = plugin_wasm("tickfold-test-fixtures");
    for command in ["exec", "replay"] {
        let out = tickfold(&[command, p(&fixture), "--input", p(&csv), "--param", "mode=trap"]);
        assert!(!out.status.success(), "{command} should fail");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("tickfold: error:") && err.contains("stopped during process") && err.contains("asked to trap"),
            "{command}: {err}"
        );
        // Parameters the plugin refuses stop the run before any row.
        let out = tickfold(&[command, p(&fixture), "--input", p(&csv), "--param", "mode=sideways"]);
        assert!(!out.status.success(), "{command} should refuse");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("bad parameters") && err.contains("sideways"), "{command}: {err}");
    }
}
