//! The plugin runtime: what it accepts, what it refuses and why, and that
//! a misbehaving plugin is stopped while everything else keeps working.

use tickfold::keys::KeyTable;
use tickfold::plugin::{self, Batch, Error, GuestError, LoadedPlugin, PluginInstance, StopReason};

use crate::support::{plugin_wasm, runtime, runtime_with};

fn fixture() -> LoadedPlugin {
    runtime().load_file(&plugin_wasm("tickfold-test-fixtures")).expect("the fixture loads")
}

fn open(plugin: &LoadedPlugin, mode: &str) -> PluginInstance {
    plugin.open(&plugin::params([("mode", mode)])).expect("the fixture opens")
}

/// One batch of input series 0 with `n` samples spread over `keys`.
fn batch(keys: &mut KeyTable, names: &[&str], n: usize) -> Batch {
    let mut b = Batch::empty(0, 1);
    for i in 0..n {
        b.keys.push(keys.intern(names[i % names.len()]));
        b.ts.push(1_000 + i as i64);
        b.fields[0].push(i as f64);
    }
    b
}

/// The `count` column of the `echo` output, by key name.
fn counts(out: &[Batch], keys: &KeyTable) -> Vec<(String, f64)> {
    out.iter()
        .filter(|b| b.series == 0)
        .flat_map(|b| b.keys.iter().zip(&b.fields[1]).map(|(k, c)| (keys.name(*k).to_string(), *c)))
        .collect()
}

#[test]
fn describe_reports_name_params_and_series() {
    let plugin = fixture();
    let d = plugin.descriptor();
    assert_eq!(d.name, "misbehave");
    assert_eq!(d.params[0].name, "mode");
    assert_eq!(d.params[0].default.as_deref(), Some("echo"));
    assert_eq!(d.inputs[0].fields, vec!["value"]);
    assert_eq!(d.outputs[0].fields, vec!["value", "count"]);
}

#[test]
fn a_file_that_is_not_wasm_is_refused() {
    let err = runtime().load("notes.txt", b"hello, world").err().expect("refused");
    assert!(matches!(err, Error::NotWasm { .. }), "{err}");
    assert!(err.to_string().contains("not a WebAssembly file"), "{err}");
}

#[test]
fn a_core_module_is_refused_with_how_to_build_a_component() {
    // The smallest valid core module: magic and version 1.
    let err = runtime().load("core.wasm", b"\0asm\x01\0\0\0").err().expect("refused");
    assert!(matches!(err, Error::CoreModule { .. }), "{err}");
    assert!(err.to_string().contains("wasm32-wasip2"), "{err}");
}

#[test]
fn a_component_of_another_world_is_refused_naming_the_missing_export() {
    let empty = wat::parse_str("(component)").unwrap();
    let err = runtime().load("empty.wasm", &empty).err().expect("refused");
    assert!(matches!(err, Error::WrongWorld { .. }), "{err}");
    let msg = err.to_string();
    assert!(msg.contains("exports nothing") && msg.contains(plugin::EXPORT_NAME), "{msg}");
}

#[test]
fn a_plugin_of_another_contract_version_is_refused_naming_both_versions() {
    let other = crate::support::future_contract_component();
    let err = runtime().load("future.wasm", &other).err().expect("refused");
    let msg = err.to_string();
    assert!(matches!(err, Error::WrongVersion { .. }), "{msg}");
    assert!(msg.contains("tickfold:plugin@0.2.0") && msg.contains(plugin::CONTRACT), "{msg}");
}

#[test]
fn a_component_importing_what_the_sandbox_lacks_is_refused() {
    let greedy = wat::parse_str(
        r#"(component
            (import "acme:net/http@1.0.0" (instance (export "get" (func))))
            (core module $m (func (export "f")))
            (core instance $i (instantiate $m))
            (func $f (canon lift (core func $i "f")))
            (instance $api (export "describe" (func $f)))
            (export "tickfold:plugin/stream-function@0.1.0" (instance $api)))"#,
    )
    .unwrap();
    let msg = runtime().load("greedy.wasm", &greedy).err().expect("refused").to_string();
    assert!(msg.contains("imports `acme:net/http@1.0.0`"), "{msg}");
}

#[test]
fn a_file_over_the_size_limit_is_refused_before_it_is_read() {
    let rt = runtime_with(|l| l.max_component_bytes = 1024);
    let err = rt.load_file(&plugin_wasm("tickfold-test-fixtures")).err().expect("refused");
    assert!(matches!(err, Error::TooLarge { limit: 1024, .. }), "{err}");
}

#[test]
fn bad_parameters_come_back_as_the_plugins_message() {
    let plugin = fixture();
    let err = plugin.open(&plugin::params([("mode", "sideways")])).err().expect("refused");
    match &err {
        Error::Rejected { error: GuestError::BadParams(m), .. } => {
            assert!(m.contains("`mode`") && m.contains("sideways"), "{m}")
        }
        other => panic!("expected bad params, got {other}"),
    }
    let err = plugin.open(&plugin::params([("mood", "echo")])).err().expect("refused");
    assert!(err.to_string().contains("did you mean `mode`"), "{err}");
}

#[test]
fn keys_are_named_once_and_state_is_per_key() {
    let plugin = fixture();
    let mut inst = open(&plugin, "echo");
    let mut keys = KeyTable::default();
    let first = inst.process(&[batch(&mut keys, &["AAPL", "MSFT"], 4)], &keys).unwrap();
    let second = inst.process(&[batch(&mut keys, &["TSLA", "AAPL"], 2)], &keys).unwrap();
    assert_eq!(
        counts(&first, &keys),
        vec![("AAPL".into(), 1.0), ("MSFT".into(), 1.0), ("AAPL".into(), 2.0), ("MSFT".into(), 2.0)]
    );
    assert_eq!(counts(&second, &keys), vec![("TSLA".into(), 1.0), ("AAPL".into(), 3.0)]);
}

#[test]
fn a_batch_of_the_wrong_shape_is_refused_and_the_instance_goes_on() {
    let plugin = fixture();
    let mut inst = open(&plugin, "echo");
    let mut keys = KeyTable::default();
    let mut bad = batch(&mut keys, &["AAPL"], 3);
    bad.ts.pop();
    let err = inst.process(&[bad], &keys).expect_err("refused");
    assert!(
        matches!(&err, Error::Rejected { error: GuestError::BadInput(m), .. } if m.contains("timestamps")),
        "{err}"
    );
    assert!(!inst.is_stopped());
    assert_eq!(inst.process(&[batch(&mut keys, &["AAPL"], 1)], &keys).unwrap()[0].len(), 1);
}

#[test]
fn snapshot_and_restore_carry_state_by_key_name() {
    let plugin = fixture();
    let mut a = open(&plugin, "echo");
    let mut keys_a = KeyTable::default();
    a.process(&[batch(&mut keys_a, &["AAPL", "MSFT", "MSFT"], 3)], &keys_a).unwrap();
    let snap = a.snapshot().unwrap();
    let mut names: Vec<&str> = snap.keys.iter().map(|k| k.key.as_str()).collect();
    names.sort();
    assert_eq!(names, vec!["AAPL", "MSFT"]);

    // A fresh instance with a key table in another order: state follows
    // the names, not the ids.
    let mut keys_b = KeyTable::default();
    keys_b.intern("TSLA");
    let mut b = plugin.restore(&plugin::params([("mode", "echo")]), &snap, &mut keys_b).unwrap();
    let out = b.process(&[batch(&mut keys_b, &["MSFT", "AAPL", "TSLA"], 3)], &keys_b).unwrap();
    assert_eq!(counts(&out, &keys_b), vec![("MSFT".into(), 3.0), ("AAPL".into(), 2.0), ("TSLA".into(), 1.0)]);
}

#[test]
fn a_trapping_plugin_is_stopped_with_its_panic_message_and_others_run_on() {
    let plugin = fixture();
    let mut keys = KeyTable::default();
    let mut bad = open(&plugin, "trap");
    let mut good = open(&plugin, "echo");
    let err = bad.process(&[batch(&mut keys, &["AAPL"], 1)], &keys).expect_err("it traps");
    match &err {
        Error::Stopped { reason: StopReason::Trap(_), detail, plugin, .. } => {
            assert!(detail.contains("asked to trap"), "the panic message is in the report: {detail}");
            assert!(plugin.starts_with("misbehave@"), "{plugin}");
        }
        other => panic!("expected a trap, got {other}"),
    }
    assert!(bad.is_stopped());
    let again = bad.process(&[batch(&mut keys, &["AAPL"], 1)], &keys).expect_err("stays stopped");
    assert!(matches!(again, Error::AlreadyStopped { .. }), "{again}");
    // The other instance, and a new one, still work.
    assert_eq!(good.process(&[batch(&mut keys, &["AAPL"], 2)], &keys).unwrap()[0].len(), 2);
    assert_eq!(open(&plugin, "echo").process(&[batch(&mut keys, &["AAPL"], 1)], &keys).unwrap()[0].len(), 1);
}

#[test]
fn a_plugin_that_emits_a_key_it_was_never_given_is_stopped_not_followed() {
    // The host would look the id up in its key table: past its end, or
    // under another stage's key. The instance is stopped as for a trap.
    let plugin = fixture();
    let mut keys = KeyTable::default();
    let mut bad = open(&plugin, "stray-key");
    let err = bad.process(&[batch(&mut keys, &["AAPL"], 1)], &keys).expect_err("stopped");
    match &err {
        Error::Stopped { reason: StopReason::BadOutput(what), call, .. } => {
            assert_eq!(*call, "process");
            assert!(what.contains("key id 1000000") && what.contains("add-keys"), "{what}");
        }
        other => panic!("expected a stop for a bad output, got {other}"),
    }
    assert!(err.to_string().contains("a bug in the plugin"), "{err}");
    assert!(bad.is_stopped());
    assert!(matches!(bad.on_watermark(10).expect_err("stays stopped"), Error::AlreadyStopped { .. }));
    assert_eq!(open(&plugin, "echo").process(&[batch(&mut keys, &["AAPL"], 1)], &keys).unwrap()[0].len(), 1);
}

#[test]
fn an_endless_loop_is_interrupted_at_the_deadline() {
    let rt = runtime_with(|l| l.call_timeout_ms = 100);
    let plugin = rt.load_file(&plugin_wasm("tickfold-test-fixtures")).unwrap();
    let mut keys = KeyTable::default();
    let started = std::time::Instant::now();
    let err = open(&plugin, "loop").process(&[batch(&mut keys, &["AAPL"], 1)], &keys).expect_err("interrupted");
    assert!(matches!(err, Error::Stopped { reason: StopReason::Deadline { timeout_ms: 100 }, .. }), "{err}");
    assert!(err.to_string().contains("100 ms deadline"), "{err}");
    // It was interrupted, not left to run (a loose bound: this is not a speed test).
    assert!(started.elapsed() < std::time::Duration::from_secs(30));
    assert_eq!(open(&plugin, "echo").process(&[batch(&mut keys, &["AAPL"], 1)], &keys).unwrap()[0].len(), 1);
}

#[test]
fn unbounded_allocation_is_stopped_at_the_memory_limit() {
    let rt = runtime_with(|l| l.memory_bytes = 32 << 20);
    let plugin = rt.load_file(&plugin_wasm("tickfold-test-fixtures")).unwrap();
    let mut keys = KeyTable::default();
    let err = open(&plugin, "grow").process(&[batch(&mut keys, &["AAPL"], 1)], &keys).expect_err("stopped");
    assert!(
        matches!(err, Error::Stopped { reason: StopReason::Memory { limit_bytes } , .. } if limit_bytes == 32 << 20),
        "{err}"
    );
    assert!(err.to_string().contains("32 MiB"), "{err}");
    assert_eq!(open(&plugin, "echo").process(&[batch(&mut keys, &["AAPL"], 1)], &keys).unwrap()[0].len(), 1);
}

#[test]
fn an_error_value_is_returned_and_does_not_stop_the_plugin() {
    let plugin = fixture();
    let mut keys = KeyTable::default();
    let mut inst = open(&plugin, "error");
    let err = inst.process(&[batch(&mut keys, &["AAPL"], 1)], &keys).expect_err("an error value");
    assert!(
        matches!(&err, Error::Rejected { error: GuestError::Failed(m), .. } if m.contains("asked to fail")),
        "{err}"
    );
    assert!(!inst.is_stopped());
}

#[test]
fn the_sandbox_has_no_files_environment_network_or_clock() {
    let plugin = fixture();
    let mut keys = KeyTable::default();
    let out = open(&plugin, "probe").process(&[batch(&mut keys, &["AAPL"], 1)], &keys).unwrap();
    let probe = out.iter().find(|b| b.series == 1).expect("a probe sample");
    let got: Vec<f64> = probe.fields.iter().map(|c| c[0]).collect();
    // fs, env, net reached nothing; the clock reads 0 ms since the epoch.
    assert_eq!(got, vec![0.0, 0.0, 0.0, 0.0]);
}

#[test]
fn a_plugin_logging_every_sample_keeps_running() {
    let plugin = fixture();
    let mut keys = KeyTable::default();
    let mut inst = open(&plugin, "log");
    let out = inst.process(&[batch(&mut keys, &["AAPL"], 5_000)], &keys).unwrap();
    assert_eq!(out[0].len(), 5_000);
    assert!(!inst.is_stopped());
}

#[test]
fn a_snapshot_in_a_format_the_plugin_does_not_read_is_refused_clearly() {
    let plugin = fixture();
    let mut keys = KeyTable::default();
    let mut a = open(&plugin, "echo");
    a.process(&[batch(&mut keys, &["AAPL"], 2)], &keys).unwrap();
    let mut snap = a.snapshot().unwrap();
    assert_eq!(snap.format_version, plugin.descriptor().state_format_version);
    // As if written by a later version of the plugin with another layout.
    snap.format_version += 1;
    let err =
        plugin.restore(&plugin::params([("mode", "echo")]), &snap, &mut KeyTable::default()).err().expect("refused");
    match &err {
        Error::Rejected { error: GuestError::BadState(m), call: "restore", .. } => {
            assert!(m.contains("format version 2") && m.contains("start the plugin from empty state"), "{m}")
        }
        other => panic!("expected bad state, got {other}"),
    }
}

#[test]
fn compiled_components_are_cached_on_disk_when_asked() {
    let dir = crate::support::TempDir::new("cache");
    let rt = tickfold::plugin::PluginRuntime::new(Default::default(), Some(dir.path().to_path_buf())).unwrap();
    let wasm = plugin_wasm("tickfold-test-fixtures");
    rt.load_file(&wasm).unwrap();
    // wasmtime writes the cache entry in the background; give it a moment.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let count = || walk(dir.path());
    while count() == 0 && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert!(count() > 0, "nothing cached in {}", dir.path().display());
    // A second runtime loads from the cache and still works.
    let rt2 = tickfold::plugin::PluginRuntime::new(Default::default(), Some(dir.path().to_path_buf())).unwrap();
    let plugin = rt2.load_file(&wasm).unwrap();
    let mut keys = KeyTable::default();
    assert_eq!(open(&plugin, "echo").process(&[batch(&mut keys, &["AAPL"], 1)], &keys).unwrap()[0].len(), 1);
}

fn walk(dir: &std::path::Path) -> usize {
    std::fs::read_dir(dir)
        .map(|rd| rd.flatten().map(|e| if e.path().is_dir() { walk(&e.path()) } else { 1 }).sum())
        .unwrap_or(0)
}

#[test]
fn a_restored_key_that_never_trades_again_still_closes_its_windows() {
    let plugin = runtime().load_file(&plugin_wasm("ohlcv")).unwrap();
    let mut keys = KeyTable::default();
    let mut a = plugin.open(&[]).unwrap();
    let mut trades = Batch::empty(0, 2);
    for (symbol, ts, price) in [("AAPL", 1_000, 10.0), ("MSFT", 2_000, 20.0)] {
        trades.keys.push(keys.intern(symbol));
        trades.ts.push(ts);
        trades.fields[0].push(price);
        trades.fields[1].push(1.0);
    }
    a.process(&[trades], &keys).unwrap();
    let snap = a.snapshot().unwrap();

    // Restored with a fresh key table, and no trade of either key since.
    let mut keys_b = KeyTable::default();
    let mut b = plugin.restore(&[], &snap, &mut keys_b).unwrap();
    let bars = b.on_watermark(i64::MAX).unwrap();
    let mut got: Vec<(&str, f64)> =
        bars[0].keys.iter().zip(&bars[0].fields[0]).map(|(k, open)| (keys_b.name(*k), *open)).collect();
    got.sort_by(|x, y| x.0.cmp(y.0));
    assert_eq!(got, vec![("AAPL", 10.0), ("MSFT", 20.0)]);
}

#[test]
fn a_chain_restored_from_its_snapshot_snapshots_the_same_state() {
    use tickfold::exec::{Chain, JsonlWriter, StageSpec};
    let rt = runtime();
    let spec = StageSpec::new(rt.load_file(&plugin_wasm("vwap")).unwrap(), Vec::new());
    let fields = vec!["price".to_string(), "size".to_string()];
    let mut chain = Chain::open_dag(std::slice::from_ref(&spec), "trades", &fields, 0, true).unwrap();
    let mut out = JsonlWriter(Vec::new());
    let rows = [("AAPL", 1_000i64, [10.0, 1.0]), ("MSFT", 1_500, [20.0, 2.0]), ("AAPL", 2_000, [11.0, 3.0])];
    chain.feed(rows.iter().map(|(k, ts, v)| (*k, *ts, v.iter().copied())), &mut out).unwrap();
    let first = chain.snapshot().unwrap();
    assert_eq!(first[0].2.keys.len(), 2, "{:?}", first[0].2);
    let states = [(first[0].0.clone(), first[0].2.clone())].into_iter().collect();
    let mut restored =
        Chain::open_dag_restored(std::slice::from_ref(&spec), "trades", &fields, 0, true, &states).unwrap();
    let again = restored.snapshot().unwrap();
    assert_eq!(again[0].2, first[0].2, "a restored chain keeps its state");
}

/// Outputs of `chain` fed `rows` in chunks, advancing the watermark (last
/// ts minus 2 s) after each chunk, optionally snapshotted and restored into
/// a new chain after chunk `cut`.
fn run_chain(specs: &[tickfold::exec::StageSpec], rows: &[(String, i64, [f64; 2])], cut: Option<usize>) -> Vec<String> {
    use tickfold::exec::{Chain, JsonlWriter};
    let fields = vec!["price".to_string(), "size".to_string()];
    let mut chain = Chain::open_dag(specs, "trades", &fields, 0, true).unwrap();
    let mut out = JsonlWriter(Vec::new());
    let mut max_ts = i64::MIN;
    for (i, chunk) in rows.chunks(97).enumerate() {
        chain.feed(chunk.iter().map(|(k, ts, v)| (k.as_str(), *ts, v.iter().copied())), &mut out).unwrap();
        max_ts = max_ts.max(chunk.iter().map(|r| r.1).max().unwrap());
        chain.advance(max_ts - 2_000, &mut out).unwrap();
        if cut == Some(i) {
            let states = chain.snapshot().unwrap().into_iter().map(|(name, _, s)| (name, s)).collect();
            chain = Chain::open_dag_restored(specs, "trades", &fields, 0, true, &states).unwrap();
        }
    }
    chain.finish(&mut out).unwrap();
    let mut lines: Vec<String> = String::from_utf8(out.0).unwrap().lines().map(str::to_string).collect();
    lines.sort();
    lines
}

#[test]
fn every_first_party_chain_restored_mid_stream_writes_what_it_would_have() {
    use tickfold::exec::StageSpec;
    let rt = runtime();
    let stage = |name: &str, params: &[(&str, &str)], input: &str, rename: &[(&str, &str)]| StageSpec {
        input: Some(vec![input.to_string()]),
        rename: rename.iter().map(|(a, b)| (a.to_string(), b.to_string())).collect(),
        ..StageSpec::new(rt.load_file(&plugin_wasm(name)).unwrap(), tickfold::plugin::params(params.iter().copied()))
    };
    let specs = vec![
        stage("ohlcv", &[("window", "1m")], "trades", &[("bars", "bars_1m")]),
        stage("rsi", &[("period", "14")], "bars_1m", &[("rsi", "rsi_14")]),
        stage("vwap", &[], "trades", &[]),
    ];
    let ts = crate::support::trades(7, &["AAPL", "MSFT", "NVDA"], 6_000, 1_700_000_000_000, 100.0);
    // Out of order within the lateness: swap neighbours now and then.
    let mut rows: Vec<(String, i64, [f64; 2])> =
        ts.iter().map(|t| (t.symbol.to_string(), t.ts, [t.price, t.size])).collect();
    for i in (0..rows.len() - 1).step_by(7) {
        rows.swap(i, i + 1);
    }
    let want = run_chain(&specs, &rows, None);
    assert!(want.len() > 6_000);
    for cut in [0, 5, 20, 33] {
        assert_eq!(run_chain(&specs, &rows, Some(cut)), want, "restored after chunk {cut}");
    }
}
