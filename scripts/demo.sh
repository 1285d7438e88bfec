#!/usr/bin/env bash
# The quick start's first command: installs what is missing, builds the
# plugins and the host, starts a Kafka-protocol broker (tansu) and InfluxDB
# on loopback, feeds the topic with a synthetic market (an hour of history,
# then live trades), runs `tickfold run` with the standard plugin set,
# deploys one more plugin into the running host (a VWAP over 1-minute
# windows, through the admin API), and prints what InfluxDB holds every few
# seconds. Ctrl-C stops everything.
#
#   DEMO_SECONDS=N   stop by itself after N seconds (default: run until Ctrl-C)
#   DEMO_RATE=N      trades per second (default 200)
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD

scripts/install-plugin-toolchain.sh
scripts/install-services.sh
echo "tickfold: building the plugins"
scripts/build-plugins.sh >/dev/null
echo "tickfold: building the host"
cargo build --quiet -p tickfold
tickfold=${CARGO_TARGET_DIR:-$root/target}/debug/tickfold

state=$root/target/demo
rm -rf "$state"
mkdir -p "$state"
source scripts/lib/services.sh
trap 'kill $(jobs -p) 2>/dev/null || true; stop_services' EXIT
trap 'exit 130' INT TERM

start_tansu "$state/tansu"
start_influxd "$state/influxdb"
create_topic trades 4
create_topic trades.dead-letter 1
influxql tickfold "CREATE DATABASE tickfold" >/dev/null
echo "tickfold: broker at $BROKERS, InfluxDB at $INFLUX_URL (database tickfold)"

symbols=AAPL,MSFT,NVDA,BTC-USD,ETH-USD
rate=${DEMO_RATE:-200}
now_ms=$(($(date +%s) * 1000))
# One market: its first hour is history (sent at once), then it goes on
# live at $rate trades/s, each trade sent when the clock reaches it.
echo "tickfold: feeding the topic: an hour of history ($((rate * 3600)) trades), then $rate trades/s live"
$tickfold produce --brokers "$BROKERS" --topic trades --symbols $symbols --seed 1 \
  --start-ms $((now_ms - 3600000)) --rate "$rate" --trades 1000000000 >"$state/produce.log" 2>&1 &

export TICKFOLD__KAFKA__BROKERS=$BROKERS
export TICKFOLD__SINKS__INFLUX__URL=$INFLUX_URL
export TICKFOLD__SINKS__INFLUX__FLUSH_INTERVAL_MS=200
export TICKFOLD__SINKS__ARCHIVE__DIR=$state/archive
export TICKFOLD__SINKS__ARCHIVE__ROLL_INTERVAL_MS=60000
metrics_port=$(free_port)
export TICKFOLD__METRICS__LISTEN=127.0.0.1:$metrics_port
admin_port=$(free_port)
export TICKFOLD__ADMIN__LISTEN=127.0.0.1:$admin_port
export TICKFOLD__ADMIN__STATE_DIR=$state/tickfold-state
export TICKFOLD_ADMIN_URL=http://127.0.0.1:$admin_port
$tickfold run --config examples/tickfold.toml >"$state/host.log" 2>&1 &
host=$!
echo "tickfold: host running (log: $state/host.log; config: examples/tickfold.toml; metrics: http://127.0.0.1:$metrics_port/metrics; admin API: $TICKFOLD_ADMIN_URL)"
echo
vwap_wasm=${TICKFOLD_PLUGIN_TARGET:-$root/target/plugins}/wasm32-wasip2/release/vwap.wasm
deployed=

started=$(date +%s)
while sleep 5; do
  if ! kill -0 $host 2>/dev/null; then
    echo "tickfold: the host stopped; its log:" >&2
    tail -20 "$state/host.log" >&2
    exit 1
  fi
  if [[ -z $deployed ]] && (($(date +%s) - started >= 10)); then
    # A hot deploy into the running host: every worker switches at the same
    # event time, and the series `vwap_1m` appears in InfluxDB.
    echo "tickfold: \$ tickfold deploy vwap.wasm --name vwap_1m --input trades --param window=1m"
    $tickfold deploy "$vwap_wasm" --name vwap_1m --input trades --param window=1m | sed 's/^/  /' || true
    $tickfold plugins | sed 's/^/  /' || true
    echo
    deployed=1
  fi
  python3 - "$INFLUX_URL" "$state/archive" <<'PY'
import json, os, sys, urllib.parse, urllib.request, datetime
url, archive = sys.argv[1:]
def q(query):
    data = urllib.parse.urlencode({"db": "tickfold", "q": query, "epoch": "ms"}).encode()
    out = json.load(urllib.request.urlopen(url + "/query", data=data, timeout=10))
    return out["results"][0].get("series", [])
def last(measurement, fields):
    rows = {}
    for s in q(f'SELECT {", ".join(f"last({f}) AS {f}" for f in fields)} FROM "{measurement}" GROUP BY symbol'):
        rows[s["tags"]["symbol"]] = dict(zip(s["columns"], s["values"][0]))
    return rows
vwap, bars, rsi = last("vwap", ["vwap", "rolling_vwap"]), last("bars_1m", ["close", "volume"]), last("rsi_14", ["rsi"])
sma = last("vwap_1m", ["rolling_vwap"])  # deployed while the host runs
# Several selectors in one query give no time: ask for the last trade's alone.
for s in q('SELECT last("vwap") FROM "vwap" GROUP BY "symbol"'):
    vwap.setdefault(s["tags"]["symbol"], {})["time"] = s["values"][0][0]
now = datetime.datetime.now(datetime.timezone.utc).strftime("%H:%M:%S")
print(f"── {now} UTC ─ InfluxDB: SELECT last(…) FROM vwap, bars_1m, rsi_14, vwap_1m GROUP BY symbol")
print(f"{'symbol':8} {'last trade (UTC)':>17} {'session vwap':>13} {'5m vwap':>10} {'last 1m close':>14} {'volume':>8} {'rsi 14':>7} {'1m vwap*':>10}")
for sym in sorted(vwap):
    v, b, r, m = vwap[sym], bars.get(sym, {}), rsi.get(sym, {}), sma.get(sym, {})
    t = datetime.datetime.fromtimestamp(v["time"] / 1000, datetime.timezone.utc).strftime("%H:%M:%S.%f")[:-3]
    fmt = lambda x, w, p: f"{x:{w}.{p}f}" if isinstance(x, (int, float)) else f"{'—':>{w}}"
    print(f"{sym:8} {t:>17} {fmt(v.get('vwap'), 13, 4)} {fmt(v.get('rolling_vwap'), 10, 4)} {fmt(b.get('close'), 14, 4)} {fmt(b.get('volume'), 8, 0)} {fmt(r.get('rsi'), 7, 2)} {fmt(m.get('rolling_vwap'), 10, 4)}")
files = [os.path.join(d, f) for d, _, fs in os.walk(archive) for f in fs if f.endswith(".parquet")]
print("* vwap_1m: deployed while the host runs (tickfold deploy)")
print(f"Parquet archive: {len(files)} files under {archive}" + (f" (e.g. {os.path.relpath(max(files, key=os.path.getmtime), archive)})" if files else ""))
PY
  tail -1 "$state/host.log" | sed 's/^/host: /'
  echo
  if [[ -n "${DEMO_SECONDS:-}" ]] && (($(date +%s) - started >= DEMO_SECONDS)); then
    echo "tickfold: demo done (DEMO_SECONDS=$DEMO_SECONDS)"
    break
  fi
done
