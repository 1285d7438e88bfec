#!/usr/bin/env bash
# The quick start's first command: installs what is missing, builds the
# plugins and the host, and runs the standard plugin chain over a seeded
# synthetic market, showing the series it computes.
#
# Until the Kafka → InfluxDB host lands (issue 4), the pipeline runs over a
# file with `tickfold exec`: the same plugins, the same batches and
# watermarks, without the broker.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/install-plugin-toolchain.sh
echo "tickfold: building the plugins"
wasm="$(scripts/build-plugins.sh)/wasm32-wasip2/release"
echo "tickfold: building the host"
cargo build --quiet -p tickfold
tickfold=target/debug/tickfold

out=target/demo
mkdir -p "$out"
$tickfold generate --output "$out/trades.csv" --trades 200000 --rate 20

echo
echo "tickfold: the plugins, as the host sees them"
$tickfold check "$wasm/ohlcv.wasm"

echo
echo "tickfold: trades → 1-minute bars → RSI(14) (ohlcv then rsi, chained)"
$tickfold exec "$wasm/ohlcv.wasm" "$wasm/rsi.wasm" --all-stages \
  --input "$out/trades.csv" --watermark-lag-ms 2000 --output "$out/bars_rsi.csv"
echo "tickfold: trades → session and 5-minute rolling VWAP"
$tickfold exec "$wasm/vwap.wasm" --input "$out/trades.csv" --output "$out/vwap.csv"
echo "tickfold: bar closes → MACD(12,26,9) and Bollinger(20, 2)"
$tickfold exec "$wasm/ohlcv.wasm" "$wasm/macd.wasm" --input "$out/trades.csv" --output "$out/macd.csv"
$tickfold exec "$wasm/ohlcv.wasm" "$wasm/bollinger.wasm" --input "$out/trades.csv" --output "$out/bollinger.csv"

echo
echo "tickfold: the last bars and RSI values of each symbol:"
python3 - "$out/bars_rsi.csv" <<'PY'
import csv, sys
rows = list(csv.DictReader(open(sys.argv[1])))
last = {}
for r in rows:
    last[(r["symbol"], r["series"])] = r
print(f"{'symbol':10} {'bar start (UTC ms)':>20} {'open':>10} {'high':>10} {'low':>10} {'close':>10} {'volume':>9} {'rsi':>7}")
for sym in sorted({k[0] for k in last}):
    b, r = last.get((sym, "bars")), last.get((sym, "rsi"))
    if b:
        rsi = f"{float(r['rsi']):7.2f}" if r else "   —"
        print(f"{sym:10} {b['ts']:>20} {float(b['open']):10.4f} {float(b['high']):10.4f} {float(b['low']):10.4f} {float(b['close']):10.4f} {float(b['volume']):9.0f} {rsi}")
print(f"\n{sum(1 for r in rows if r['series']=='bars')} bars, {sum(1 for r in rows if r['series']=='rsi')} RSI values")
PY
echo
echo "tickfold: all outputs are in $out/ (bars_rsi.csv, vwap.csv, macd.csv, bollinger.csv)"
