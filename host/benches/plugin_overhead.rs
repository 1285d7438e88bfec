//! What running a plugin as WebAssembly costs, against the same plugin
//! compiled natively: ns per sample for every first-party plugin, and the
//! ratio.
//!
//! Run with `cargo bench -p tickfold --bench plugin_overhead`. It builds the
//! plugins (scripts/build-plugins.sh), then for each one feeds 2^20 samples
//! over 64 keys in batches of 1024, advancing the watermark after every
//! batch, as the dataflow does. The WebAssembly side goes through the host's
//! runtime (`PluginInstance`: key names, lowering the columns, the call, the
//! epoch deadline, lifting the outputs); the native side runs the same
//! plugin crate through the SDK's `Instance` (parameter checks, batch
//! validation, per-key state, outputs), so the difference is the sandbox.
//! Each figure is the median of 9 runs, each on a fresh instance, native and
//! WebAssembly runs taken in turn so that the shared machine's load hits
//! both alike.
//!
//! An argument runs only the rows whose name contains it:
//! `cargo bench -p tickfold --bench plugin_overhead -- crossing`.

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use tickfold::keys::KeyTable;
use tickfold::plugin::{self, LoadedPlugin, PluginRuntime, SandboxLimits};
use tickfold::synthetic::Market;
use tickfold_sdk::StreamFunction;

const SAMPLES: usize = 1 << 20;
const KEYS: usize = 64;
const RUNS: usize = 9;

/// Input columns shared by both sides.
struct Data {
    names: Vec<String>,
    keys: Vec<u32>,
    ts: Vec<i64>,
    fields: Vec<Vec<f64>>,
}

/// Trades (`price, size`) or a close series (`close`), from the same market.
fn data(fields: &[&str]) -> Data {
    let names: Vec<String> = (0..KEYS).map(|i| format!("SYM{i:02}")).collect();
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    // 1,000 trades/s: 2^20 samples span ~17 minutes, so 1-minute windows
    // close as the watermark moves.
    let market = Market::new(42, &refs, 1_700_000_000_000, 1_000.0);
    let mut d = Data { names, keys: Vec::new(), ts: Vec::new(), fields: vec![Vec::new(); fields.len()] };
    for t in market.take(SAMPLES) {
        d.keys.push(t.symbol as u32);
        d.ts.push(t.ts);
        for (col, f) in d.fields.iter_mut().zip(fields) {
            col.push(if *f == "size" { t.size } else { t.price });
        }
    }
    d
}

fn ranges(batch: usize) -> impl Iterator<Item = std::ops::Range<usize>> {
    (0..SAMPLES).step_by(batch).map(move |s| s..(s + batch).min(SAMPLES))
}

/// The data cut into batches of `batch` samples, each with the watermark
/// to advance to after it; `make` builds a batch from keys, times and
/// columns (the host's and the SDK's `Batch` are different types).
fn batches<B>(d: &Data, batch: usize, make: impl Fn(Vec<u32>, Vec<i64>, Vec<Vec<f64>>) -> B) -> Vec<(B, i64)> {
    ranges(batch)
        .map(|r| {
            let fields = d.fields.iter().map(|c| c[r.clone()].to_vec()).collect();
            (make(d.keys[r.clone()].to_vec(), d.ts[r.clone()].to_vec(), fields), d.ts[r.end - 1] - 1_000)
        })
        .collect()
}

fn median(mut runs: Vec<Duration>) -> f64 {
    runs.sort();
    runs[runs.len() / 2].as_nanos() as f64 / SAMPLES as f64
}

/// One timed run on a fresh instance.
type Run<'a> = Box<dyn FnMut() -> Duration + 'a>;

/// Medians of native and WebAssembly runs taken in turn, so that a change
/// in the machine's load (it is shared) hits both sides alike.
fn interleaved(mut native: Run<'_>, mut wasm: Run<'_>) -> (f64, f64) {
    let (mut n, mut w) = (Vec::new(), Vec::new());
    for _ in 0..RUNS {
        n.push(native());
        w.push(wasm());
    }
    (median(n), median(w))
}

fn wasm_run<'a>(plugin: &'a LoadedPlugin, params: &'a [(&str, &str)], d: &Data, batch: usize) -> Run<'a> {
    let mut keys = KeyTable::default();
    d.names.iter().for_each(|n| {
        keys.intern(n);
    });
    let batches = batches(d, batch, |keys, ts, fields| plugin::Batch { series: 0, keys, ts, fields });
    Box::new(move || {
        let mut inst = plugin.open(&plugin::params(params.iter().copied())).expect("opens");
        let start = Instant::now();
        for (b, wm) in &batches {
            std::hint::black_box(inst.process(std::slice::from_ref(b), &keys).expect("process"));
            std::hint::black_box(inst.on_watermark(*wm).expect("watermark"));
        }
        start.elapsed()
    })
}

fn native_run<'a, P: StreamFunction>(params: &'a [(&str, &str)], d: &Data, batch: usize) -> Run<'a> {
    let params: Vec<tickfold_sdk::Param> =
        params.iter().map(|(n, v)| tickfold_sdk::Param { name: n.to_string(), value: v.to_string() }).collect();
    let batches = batches(d, batch, |keys, ts, fields| tickfold_sdk::Batch { series: 0, keys, ts, fields });
    let names: Vec<tickfold_sdk::KeyName> =
        d.names.iter().enumerate().map(|(i, n)| tickfold_sdk::KeyName { id: i as u32, name: n.clone() }).collect();
    Box::new(move || {
        let mut inst = tickfold_sdk::Instance::<P>::open(&params).expect("opens");
        inst.add_keys(names.clone());
        let start = Instant::now();
        for (b, wm) in &batches {
            std::hint::black_box(inst.process(std::slice::from_ref(b)).expect("process"));
            std::hint::black_box(inst.on_watermark(*wm).expect("watermark"));
        }
        start.elapsed()
    })
}

struct Case {
    /// The row's name.
    label: &'static str,
    crate_name: &'static str,
    params: &'static [(&'static str, &'static str)],
    fields: &'static [&'static str],
    native: for<'a> fn(&'a [(&'a str, &'a str)], &Data, usize) -> Run<'a>,
}

fn cases() -> Vec<Case> {
    const TRADES: &[&str] = &["price", "size"];
    const CLOSE: &[&str] = &["close"];
    vec![
        // The crossing alone: a plugin that consumes a batch and emits
        // nothing, and one that copies it back out with a count per key.
        Case {
            label: "crossing: 1 field in, nothing out",
            crate_name: "tickfold_test_fixtures",
            params: &[("mode", "sink")],
            fields: &["value"],
            native: native_run::<tickfold_test_fixtures::Misbehave>,
        },
        Case {
            label: "crossing: 1 field in, 2 out",
            crate_name: "tickfold_test_fixtures",
            params: &[("mode", "echo")],
            fields: &["value"],
            native: native_run::<tickfold_test_fixtures::Misbehave>,
        },
        Case { label: "ohlcv", crate_name: "ohlcv", params: &[], fields: TRADES, native: native_run::<ohlcv::Ohlcv> },
        Case { label: "vwap", crate_name: "vwap", params: &[], fields: TRADES, native: native_run::<vwap::Vwap> },
        Case { label: "sma", crate_name: "sma", params: &[], fields: CLOSE, native: native_run::<sma::SmaPlugin> },
        Case { label: "ema", crate_name: "ema", params: &[], fields: CLOSE, native: native_run::<ema::EmaPlugin> },
        Case { label: "rsi", crate_name: "rsi", params: &[], fields: CLOSE, native: native_run::<rsi::RsiPlugin> },
        Case { label: "macd", crate_name: "macd", params: &[], fields: CLOSE, native: native_run::<macd::MacdPlugin> },
        Case {
            label: "bollinger",
            crate_name: "bollinger",
            params: &[],
            fields: CLOSE,
            native: native_run::<bollinger::BollingerPlugin>,
        },
        Case {
            label: "anomaly",
            crate_name: "anomaly",
            params: &[],
            fields: CLOSE,
            native: native_run::<anomaly::Anomaly>,
        },
    ]
}

fn built_plugins() -> PathBuf {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let out = Command::new("bash").arg(root.join("scripts/build-plugins.sh")).output().expect("build-plugins.sh runs");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    PathBuf::from(String::from_utf8(out.stdout).unwrap().trim()).join("wasm32-wasip2/release")
}

fn main() {
    let dir = built_plugins();
    let runtime = PluginRuntime::new(SandboxLimits::default(), None).expect("runtime");
    println!(
        "plugin overhead: {SAMPLES} samples, {KEYS} keys, watermark after every batch, median of {RUNS} runs, native and wasm in turn"
    );
    println!();
    println!("| plugin | batch | native ns/sample | wasm ns/sample | wasm / native |");
    println!("| --- | ---: | ---: | ---: | ---: |");
    let filter = std::env::args().skip(1).find(|a| !a.starts_with('-')).unwrap_or_default();
    let mut sweep = Vec::new();
    for case in cases().into_iter().filter(|c| c.label.contains(filter.as_str())) {
        let plugin = runtime.load_file(&dir.join(format!("{}.wasm", case.crate_name))).expect("plugin loads");
        let d = data(case.fields);
        let batches: &[usize] =
            if case.crate_name == "ohlcv" || case.crate_name == "sma" { &[64, 256, 1024, 4096] } else { &[1024] };
        for &batch in batches {
            let (native, wasm) =
                interleaved((case.native)(case.params, &d, batch), wasm_run(&plugin, case.params, &d, batch));
            let row = format!("| {} | {batch} | {native:.1} | {wasm:.1} | {:.2} |", case.label, wasm / native);
            if batch == 1024 {
                println!("{row}");
            } else {
                sweep.push(row);
            }
        }
    }
    println!();
    println!("batch-size sweep:");
    println!();
    println!("| plugin | batch | native ns/sample | wasm ns/sample | wasm / native |");
    println!("| --- | ---: | ---: | ---: | ---: |");
    sweep.iter().for_each(|r| println!("{r}"));
}
