//! Every first-party plugin, built to WebAssembly and run through the host's
//! runtime, against an independent plain-Rust reference (`tests/reference`)
//! on seeded data: several keys, gaps, out-of-order trades within the
//! lateness, late ones beyond it. Outputs agree to 1e-9 relative.
//!
//! Each plugin is driven two ways: one row per call with the watermark
//! after every row (the references model exactly that, so the plugins' own
//! lateness handling is checked), and in batches of 1024 rows with the
//! host's late filter in front, as the streaming host and `tickfold exec`
//! run them. Both build variants are checked: `cargo build --target
//! wasm32-wasip2` and `cargo component build`.

use tickfold::keys::KeyTable;
use tickfold::plugin::{self, Batch, LoadedPlugin};
use tickfold_reference::market;

use crate::support::{Trade, plugin_target_dir, plugin_wasm, runtime, trades};

/// One output sample, by names.
#[derive(Clone, Debug, PartialEq)]
pub struct Out {
    pub series: String,
    pub key: String,
    pub ts: i64,
    pub values: Vec<f64>,
}

/// Input rows: key, event time, field values.
type Rows = Vec<(String, i64, Vec<f64>)>;

/// Feeds `rows` to a fresh instance `chunk` rows per call; with `Some(lag)`
/// the watermark follows the highest event time minus `lag` after every
/// call (and, when `host_filter`, rows below it on arrival are left out as
/// the host's sources do); the end of input closes everything.
pub fn drive(
    plugin: &LoadedPlugin,
    params: &[(&str, &str)],
    rows: &Rows,
    chunk: usize,
    lag: Option<i64>,
    host_filter: bool,
) -> Vec<Out> {
    let mut inst = plugin.open(&plugin::params(params.iter().copied())).expect("the plugin opens");
    let fields = inst.inputs()[0].fields.len();
    let names: Vec<String> = inst.outputs().iter().map(|o| o.name.clone()).collect();
    let mut keys = KeyTable::default();
    let mut out = Vec::new();
    let mut max_ts = i64::MIN;
    let collect = |batches: Vec<Batch>, keys: &KeyTable, out: &mut Vec<Out>| out.extend(outs(batches, &names, keys));
    for part in rows.chunks(chunk) {
        let mut batch = Batch::empty(0, fields);
        for (key, ts, values) in part {
            if host_filter && lag.is_some_and(|l| *ts < max_ts.saturating_sub(l)) {
                continue;
            }
            max_ts = max_ts.max(*ts);
            batch.keys.push(keys.intern(key));
            batch.ts.push(*ts);
            for (c, v) in batch.fields.iter_mut().zip(values) {
                c.push(*v);
            }
        }
        collect(inst.process(&[batch], &keys).expect("process"), &keys, &mut out);
        if let Some(l) = lag {
            collect(inst.on_watermark(max_ts.saturating_sub(l)).expect("watermark"), &keys, &mut out);
        }
    }
    collect(inst.on_watermark(i64::MAX).expect("final watermark"), &keys, &mut out);
    out
}

/// Output batches as named samples; `names` are the output series' names.
fn outs(batches: Vec<Batch>, names: &[String], keys: &KeyTable) -> Vec<Out> {
    let mut out = Vec::new();
    for b in batches {
        for i in 0..b.len() {
            out.push(Out {
                series: names[b.series as usize].clone(),
                key: keys.name(b.keys[i]).to_string(),
                ts: b.ts[i],
                values: b.fields.iter().map(|c| c[i]).collect(),
            });
        }
    }
    out
}

/// The trades the host lets through: rows below the watermark (highest
/// event time so far minus `lag`) on arrival are left out.
fn host_filtered(trades: &[Trade], lag: i64) -> Vec<Trade> {
    let mut max_ts = i64::MIN;
    trades
        .iter()
        .filter(|t| {
            let keep = t.ts >= max_ts.saturating_sub(lag);
            max_ts = max_ts.max(t.ts);
            keep
        })
        .cloned()
        .collect()
}

/// Relative comparison, absolute near zero.
pub fn close(got: f64, want: f64) -> bool {
    (got - want).abs() <= 1e-9 * want.abs().max(1.0) || (got.is_nan() && want.is_nan())
}

/// Compares outputs as sets ordered by (series, key, ts), printing both
/// sides of the first difference.
pub fn assert_same(what: &str, mut got: Vec<Out>, mut want: Vec<Out>) {
    let order = |a: &Out, b: &Out| (&a.series, &a.key, a.ts).cmp(&(&b.series, &b.key, b.ts));
    got.sort_by(order);
    want.sort_by(order);
    assert!(!want.is_empty(), "{what}: the reference expects no output; the test data is too small");
    for (i, (g, w)) in got.iter().zip(&want).enumerate() {
        let same = g.series == w.series
            && g.key == w.key
            && g.ts == w.ts
            && g.values.len() == w.values.len()
            && g.values.iter().zip(&w.values).all(|(a, b)| close(*a, *b));
        assert!(same, "{what}: output {i} differs\n  expected: {w:?}\n  got:      {g:?}");
    }
    assert_eq!(got.len(), want.len(), "{what}: {} outputs, the reference has {}", got.len(), want.len());
}

fn trade_rows(trades: &[Trade]) -> Rows {
    trades.iter().map(|t| (t.symbol.to_string(), t.ts, vec![t.price, t.size])).collect()
}

pub fn ref_trades(trades: &[Trade]) -> Vec<market::Trade> {
    trades.iter().map(|t| market::Trade { key: t.symbol.to_string(), ts: t.ts, price: t.price, size: t.size }).collect()
}

pub fn bars_as_out(bars: &market::Bars) -> Vec<Out> {
    bars.bars
        .iter()
        .map(|b| Out {
            series: "bars".into(),
            key: b.key.clone(),
            ts: b.start,
            values: vec![b.open, b.high, b.low, b.close, b.volume, b.vwap, b.count as f64],
        })
        .collect()
}

/// What the vwap plugin writes for `trades` (and their reference form):
/// per trade the session VWAP and volume, and the rolling ones.
pub fn vwap_outs(trades: &[Trade], reference: &[market::Trade], session_start_ms: i64, window_ms: i64) -> Vec<Out> {
    let session = market::session_vwap(reference, session_start_ms);
    let rolling = market::rolling_vwap(reference, window_ms);
    trades
        .iter()
        .zip(session.iter().zip(&rolling))
        .filter_map(|(t, (s, r))| {
            let (s, r) = (s.as_ref()?, r.as_ref()?);
            Some(Out {
                series: "vwap".into(),
                key: t.symbol.to_string(),
                ts: t.ts,
                values: vec![s.vwap, s.volume, r.vwap, r.volume],
            })
        })
        .collect()
}

/// Both build variants of a plugin, loaded.
pub fn variants(name: &str) -> Vec<(String, LoadedPlugin)> {
    let rt = runtime();
    let component = plugin_target_dir().join(format!("wasm32-wasip1/release/{name}.wasm"));
    let mut v = vec![(format!("{name} (wasm32-wasip2)"), rt.load_file(&plugin_wasm(name)).expect("loads"))];
    if component.exists() {
        v.push((format!("{name} (cargo component)"), rt.load_file(&component).expect("loads")));
    }
    v
}

const SYMBOLS: [&str; 4] = ["AAPL", "MSFT", "BTC-USD", "EURUSD"];

#[test]
fn ohlcv_matches_the_reference_including_late_trades() {
    let data = trades(101, &SYMBOLS, 6_000, 1_700_000_000_000, 100.0);
    let reference = ref_trades(&data);
    for (name, plugin) in variants("ohlcv") {
        // Row by row, the plugin's own lateness decides: a 2 s lag with 1 s
        // of allowed lateness leaves some swapped trades late.
        let params = [("window", "1m"), ("lateness", "1s")];
        let want = market::ohlcv_bars(&reference, 60_000, 1_000, Some(2_000));
        assert!(want.late > 0, "the data should have late trades");
        assert_same(&name, drive(&plugin, &params, &trade_rows(&data), 1, Some(2_000), false), bars_as_out(&want));

        // In batches, behind the host's late filter.
        let kept = host_filtered(&data, 2_000);
        let want = market::ohlcv_bars(&ref_trades(&kept), 60_000, 1_000, None);
        assert_same(&name, drive(&plugin, &params, &trade_rows(&data), 1024, Some(2_000), true), bars_as_out(&want));
    }
}

#[test]
fn ohlcv_is_exact_at_any_price_scale() {
    for scale in [1e-6, 1e7] {
        let data = trades(7, &SYMBOLS[..2], 2_000, 0, scale);
        let want = market::ohlcv_bars(&ref_trades(&data), 300_000, 0, None);
        let (_, plugin) = variants("ohlcv").remove(0);
        assert_same(
            &format!("ohlcv at {scale}"),
            drive(&plugin, &[("window", "5m")], &trade_rows(&data), 512, None, false),
            bars_as_out(&want),
        );
    }
}

#[test]
fn vwap_matches_the_reference_across_sessions() {
    // Start an hour before midnight so sessions reset; a 23:00 session
    // start is checked too.
    let data = trades(202, &SYMBOLS, 3_000, 1_700_000_000_000 - 1_700_000_000_000 % 86_400_000 - 3_600_000, 50.0);
    let reference = ref_trades(&data);
    for (session, start_ms) in [("00:00", 0), ("23:00", 23 * 3_600_000)] {
        let want = vwap_outs(&data, &reference, start_ms, 300_000);
        for (name, plugin) in variants("vwap") {
            let params = [("session_start", session), ("window", "5m")];
            // One output per trade, in arrival order: compare in order.
            let got = drive(&plugin, &params, &trade_rows(&data), 700, None, false);
            assert_eq!(got.len(), want.len(), "{name}: one output per trade of the current session");
            for (g, w) in got.iter().zip(&want) {
                assert!(
                    g.key == w.key && g.ts == w.ts && g.values.iter().zip(&w.values).all(|(a, b)| close(*a, *b)),
                    "{name}, session {session}:\n  expected {w:?}\n  got      {g:?}"
                );
            }
        }
    }
}

#[test]
fn anomaly_matches_the_reference_zscores() {
    let data = trades(303, &SYMBOLS, 8_000, 0, 20.0);
    let samples: Vec<market::Sample> =
        data.iter().map(|t| market::Sample { key: t.symbol.to_string(), ts: t.ts, x: t.price }).collect();
    let rows: Rows = data.iter().map(|t| (t.symbol.to_string(), t.ts, vec![t.price])).collect();
    for (of, of_param) in [(market::ZscoreOf::Returns, "returns"), (market::ZscoreOf::Value, "value")] {
        let want: Vec<Out> = market::zscore_alerts(&samples, 50, 2.5, of)
            .into_iter()
            .map(|s| Out {
                series: "anomaly".into(),
                key: s.key,
                ts: s.ts,
                values: vec![s.z.unwrap(), s.value, s.mean, s.stddev],
            })
            .collect();
        for (name, plugin) in variants("anomaly") {
            let params = [("window", "50"), ("threshold", "2.5"), ("of", of_param), ("field", "close")];
            assert_same(
                &format!("{name} of {of_param}"),
                drive(&plugin, &params, &rows, 333, None, false),
                want.clone(),
            );
        }
    }
}

#[test]
fn snapshot_restore_continue_equals_an_uninterrupted_run() {
    // Through WebAssembly: run half, snapshot, restore in a fresh instance
    // with keys interned in another order, run the rest.
    let data = trades(404, &SYMBOLS, 4_000, 1_700_000_000_000, 100.0);
    let rows = trade_rows(&data);
    for name in ["ohlcv", "vwap"] {
        let (label, plugin) = variants(name).remove(0);
        let whole = drive(&plugin, &[], &rows, 256, Some(5_000), true);
        let (first, second) = rows.split_at(rows.len() / 2);
        let mut a = plugin.open(&[]).unwrap();
        let mut keys = KeyTable::default();
        let mut got = Vec::new();
        let names: Vec<String> = a.outputs().iter().map(|o| o.name.clone()).collect();
        let mut max_ts = i64::MIN;
        let mut feed = |inst: &mut plugin::PluginInstance,
                        keys: &mut KeyTable,
                        part: &[(String, i64, Vec<f64>)],
                        got: &mut Vec<Out>| {
            for piece in part.chunks(256) {
                let mut batch = Batch::empty(0, 2);
                for (k, ts, v) in piece {
                    if *ts < max_ts.saturating_sub(5_000) {
                        continue;
                    }
                    max_ts = max_ts.max(*ts);
                    batch.keys.push(keys.intern(k));
                    batch.ts.push(*ts);
                    batch.fields[0].push(v[0]);
                    batch.fields[1].push(v[1]);
                }
                let mut produced = inst.process(&[batch], keys).unwrap();
                produced.extend(inst.on_watermark(max_ts.saturating_sub(5_000)).unwrap());
                got.extend(outs(produced, &names, keys));
            }
        };
        feed(&mut a, &mut keys, first, &mut got);
        let snap = a.snapshot().unwrap();
        drop(a);
        let mut keys_b = KeyTable::default();
        for s in SYMBOLS.iter().rev() {
            keys_b.intern(s);
        }
        let mut b = plugin.restore(&[], &snap, &mut keys_b).unwrap();
        feed(&mut b, &mut keys_b, second, &mut got);
        got.extend(outs(b.on_watermark(i64::MAX).unwrap(), &names, &keys_b));
        // Bit for bit, not within a tolerance.
        let mut g = got.clone();
        let mut w = whole.clone();
        let order = |a: &Out, b: &Out| {
            (&a.series, &a.key, a.ts).cmp(&(&b.series, &b.key, b.ts)).then(a.values.partial_cmp(&b.values).unwrap())
        };
        g.sort_by(order);
        w.sort_by(order);
        assert_eq!(g, w, "{label}: restored run differs from the uninterrupted one");
    }
}

/// Bar closes of several keys, interleaved: a per-key random walk at the
/// given price scale, in event-time order per key.
fn closes(seed: u64, n: usize, scale: f64) -> Rows {
    let mut rng = crate::support::Rng::new(seed);
    let mut level = [scale, 2.0 * scale, 0.5 * scale];
    (0..n)
        .map(|i| {
            let k = (rng.next_u64() % 3) as usize;
            level[k] *= (0.01 * rng.normal()).exp();
            (SYMBOLS[k].to_string(), 60_000 * i as i64, vec![level[k]])
        })
        .collect()
}

/// The expected outputs of an indicator computed per key by `reference`
/// over the key's values in arrival order, labelled with each input's ts.
fn per_key(rows: &Rows, series: &str, reference: impl Fn(&[f64]) -> Vec<Option<Vec<f64>>>) -> Vec<Out> {
    let mut out = Vec::new();
    for key in SYMBOLS {
        let mine: Vec<&(String, i64, Vec<f64>)> = rows.iter().filter(|r| r.0 == key).collect();
        let values: Vec<f64> = mine.iter().map(|r| r.2[0]).collect();
        for (row, v) in mine.iter().zip(reference(&values)) {
            if let Some(values) = v {
                out.push(Out { series: series.into(), key: key.into(), ts: row.1, values });
            }
        }
    }
    out
}

#[test]
fn indicators_match_ta_lib_conventions_through_webassembly() {
    use tickfold_reference::ta;
    for scale in [100.0, 1e-6, 1e7] {
        let rows = closes(505, 3_000, scale);
        let what = |name: &str| format!("{name} at price scale {scale}");
        for (name, plugin) in variants("sma") {
            let got = drive(&plugin, &[("periods", "5,30")], &rows, 500, None, false);
            let mut want = per_key(&rows, "sma_5", |v| ta::sma(v, 5).into_iter().map(|o| o.map(|x| vec![x])).collect());
            want.extend(per_key(&rows, "sma_30", |v| ta::sma(v, 30).into_iter().map(|o| o.map(|x| vec![x])).collect()));
            assert_same(&what(&name), got, want);
        }
        for (name, plugin) in variants("ema") {
            let got = drive(&plugin, &[("periods", "12,26")], &rows, 500, None, false);
            let mut want =
                per_key(&rows, "ema_12", |v| ta::ema(v, 12).into_iter().map(|o| o.map(|x| vec![x])).collect());
            want.extend(per_key(&rows, "ema_26", |v| ta::ema(v, 26).into_iter().map(|o| o.map(|x| vec![x])).collect()));
            assert_same(&what(&name), got, want);
        }
        for (name, plugin) in variants("rsi") {
            let got = drive(&plugin, &[], &rows, 500, None, false);
            let want = per_key(&rows, "rsi", |v| ta::rsi(v, 14).into_iter().map(|o| o.map(|x| vec![x])).collect());
            assert_same(&what(&name), got, want);
        }
        for (variant, reference) in
            [("standard", ta::macd as fn(&[f64], usize, usize, usize) -> _), ("talib", ta::macd_talib)]
        {
            for (name, plugin) in variants("macd") {
                let got = drive(&plugin, &[("variant", variant)], &rows, 500, None, false);
                let want = per_key(&rows, "macd", |v| {
                    reference(v, 12, 26, 9).into_iter().map(|o| o.map(|(m, s, h)| vec![m, s, h])).collect()
                });
                assert_same(&format!("{} ({variant})", what(&name)), got, want);
            }
        }
        for (name, plugin) in variants("bollinger") {
            let got = drive(&plugin, &[], &rows, 500, None, false);
            let want = per_key(&rows, "bollinger", |v| {
                ta::bbands(v, 20, 2.0).into_iter().map(|o| o.map(|(m, u, l)| vec![m, u, l])).collect()
            });
            assert_same(&what(&name), got, want);
        }
    }
}

#[test]
fn the_indicator_chain_from_trades_matches_the_references() {
    // ohlcv → rsi as `tickfold exec` wires it: the reference RSI runs over
    // the reference bars' closes.
    let data = trades(606, &SYMBOLS, 30_000, 1_700_000_000_000, 100.0);
    // The chain's source leaves out trades below the watermark on arrival
    // (a 10 s lag); the reference gets the trades it lets through.
    let kept = host_filtered(&data, 10_000);
    assert!(kept.len() < data.len(), "some trades should be late");
    let bars = market::ohlcv_bars(&ref_trades(&kept), 60_000, 0, None);
    let bar_rows: Rows = bars.bars.iter().map(|b| (b.key.clone(), b.start, vec![b.close])).collect();
    let want = per_key(&bar_rows, "rsi", |v| {
        tickfold_reference::ta::rsi(v, 14).into_iter().map(|o| o.map(|x| vec![x])).collect()
    });

    let rt = runtime();
    let plugins = [rt.load_file(&plugin_wasm("ohlcv")).unwrap(), rt.load_file(&plugin_wasm("rsi")).unwrap()];
    let params = tickfold::exec::assign_params(&plugins, &[]).unwrap();
    let mut chain =
        tickfold::exec::Chain::open(&plugins, &params, &["price".into(), "size".into()], 10_000, false).unwrap();
    let mut sink = Collect(Vec::new());
    for part in data.chunks(1000) {
        let chunk = tickfold::source::Chunk {
            symbols: part.iter().map(|t| t.symbol.as_str().into()).collect(),
            ts: part.iter().map(|t| t.ts).collect(),
            fields: vec![part.iter().map(|t| t.price).collect(), part.iter().map(|t| t.size).collect()],
        };
        chain.push(&chunk, &mut sink).unwrap();
    }
    chain.finish(&mut sink).unwrap();
    assert_eq!(chain.stats().late as usize, data.len() - kept.len());
    assert_same("ohlcv → rsi", sink.0, want);
}

/// An output writer that keeps what it is given.
struct Collect(Vec<Out>);

impl tickfold::exec::OutputWriter for Collect {
    fn write(&mut self, series: &str, _: &[String], symbol: &str, ts: i64, values: &[f64]) -> std::io::Result<()> {
        self.0.push(Out { series: series.into(), key: symbol.into(), ts, values: values.to_vec() });
        Ok(())
    }

    fn finish(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
