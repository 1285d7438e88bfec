#!/usr/bin/env bash
# The host's benchmark, in one run on one machine, against real services
# (tansu's memory engine, InfluxDB 1.x from Debian), release build:
#   (a) the raw drain rate of the topic (a bare rdkafka consumer)
#   (b) trades/s through the host, standard plugin set, both sinks, from the
#       topic preloaded with BENCH_TRADES trades, with 1 and 2 workers
#   (c) the same from a file
#   (d) where the CPU time went (printed with (b) and (c))
#   (e) latency from a trade to the InfluxDB write carrying its VWAP, at a
#       steady BENCH_RATE trades/s, InfluxDB flush interval 10 ms
#
#   BENCH_TRADES (default 10000000)  BENCH_RATE (default 100000)  BENCH_SECONDS (default 30)
#   BENCH_ONLY=latency  runs (e) alone
#   BENCH_ONLY=control  runs (c') with the admin API (hot deploys) on and off,
#                       three times each in turn, on BENCH_TRADES (default 3M)
#   BENCH_ONLY=checkpoint  runs (b') over 10k symbols with checkpoints every
#                       10 s and without, twice each in turn, on BENCH_TRADES
#                       (default 15M), and prints each checkpoint's size and time
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
case "${BENCH_ONLY:-}" in
  control) trades=${BENCH_TRADES:-3000000} ;;
  checkpoint) trades=${BENCH_TRADES:-15000000} ;;
  *) trades=${BENCH_TRADES:-10000000} ;;
esac

scripts/install-plugin-toolchain.sh
scripts/install-services.sh
scripts/build-plugins.sh >/dev/null
cargo build --quiet --release -p tickfold
tickfold=${CARGO_TARGET_DIR:-$root/target}/release/tickfold

state=$root/target/bench
rm -rf "$state"
mkdir -p "$state"
source scripts/lib/services.sh
trap 'kill $(jobs -p) 2>/dev/null || true; stop_services' EXIT

start_tansu "$state/tansu"
start_influxd "$state/influxdb"
influxql tickfold "CREATE DATABASE tickfold" >/dev/null
create_topic bench 4
create_topic bench.dead-letter 1

echo "== machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(free -g | awk '/Mem:/{print $2}') GiB"
export TICKFOLD__KAFKA__BROKERS=$BROKERS
export TICKFOLD__SINKS__INFLUX__URL=$INFLUX_URL
export TICKFOLD__SINKS__ARCHIVE__DIR=$state/archive
export TICKFOLD__SINKS__INFLUX__TAGS__HOST=bench
export TICKFOLD__METRICS__LISTEN=127.0.0.1:$(free_port)
export TICKFOLD__ADMIN__LISTEN=127.0.0.1:$(free_port)
export TICKFOLD__ADMIN__STATE_DIR=$state/tickfold-state
start_ms=1767623400000

if [[ "${BENCH_ONLY:-}" == checkpoint ]]; then
  # What checkpoints cost: 10k keys, a checkpoint every 10 s, against the
  # same run without them; the VWAP is kept out of InfluxDB so that its
  # ingest is not the limit.
  symbols=$(seq -f "S%05g" 0 9999 | paste -sd, -)
  create_topic ckbench 4
  echo "== preloading $trades trades of 10000 symbols into topic ckbench (4 partitions)"
  $tickfold produce --brokers "$BROKERS" --topic ckbench --symbols "$symbols" --trades "$trades" --rate 10000 \
    --start-ms $start_ms --as-fast-as-possible --seed 1 2>&1 | tail -1
  for run in 1 2; do
    for mode in on off; do
      rm -rf "$state/archive" "$state/checkpoints"
      echo "== (b') run $run, checkpoints $mode"
      if [[ $mode == on ]]; then
        export TICKFOLD__CHECKPOINT__DIR=$state/checkpoints TICKFOLD__CHECKPOINT__INTERVAL_MS=10000
      fi
      TICKFOLD__KAFKA__TOPIC=ckbench TICKFOLD__WORKERS=2 TICKFOLD__KAFKA__STOP_AFTER_RECORDS=$trades \
        TICKFOLD__SINKS__INFLUX_SKIP='["vwap"]' $tickfold bench pipeline --config examples/tickfold.toml \
        2>"$state/ckbench.log" | head -1
      grep -o 'checkpoint [0-9]* written.*' "$state/ckbench.log" | sed 's/ written to [^ ]*//' || true
      unset TICKFOLD__CHECKPOINT__DIR TICKFOLD__CHECKPOINT__INTERVAL_MS
    done
  done
  exit 0
fi

if [[ "${BENCH_ONLY:-}" == control ]]; then
  # What holding rows for hot deploys costs: the same file through the same
  # DAG with the [admin] table (control source, rows held past its promise)
  # and without it. The copy sits in target/ so its relative paths still
  # point at target/plugins.
  $tickfold generate --output "$state/trades.csv" --trades "$trades" --rate 10000 --start-ms $start_ms --seed 1
  python3 - examples/tickfold.toml "$root/target/tickfold-no-admin.toml" <<'PY'
import re, sys
text = open(sys.argv[1]).read()
open(sys.argv[2], "w").write(re.sub(r"(?ms)^\[admin\]\n.*?(?=^\[)", "", text))
PY
  for run in 1 2 3; do
    for config in examples/tickfold.toml "$root/target/tickfold-no-admin.toml"; do
      echo "== (c') run $run, $config"
      rm -rf "$state/archive"
      TICKFOLD__WORKERS=2 TICKFOLD__SINKS__INFLUX_SKIP='["vwap"]' \
        $tickfold bench pipeline --config "$config" --input "$state/trades.csv" 2>/dev/null | head -1
    done
  done
  exit 0
fi

if [[ "${BENCH_ONLY:-}" != latency ]]; then
echo "== preloading $trades trades into topic bench (4 partitions)"
$tickfold produce --brokers "$BROKERS" --topic bench --trades "$trades" --rate 10000 \
  --start-ms $start_ms --as-fast-as-possible --seed 1 2>&1 | tail -1

echo "== (a) raw drain rate"
$tickfold bench drain --brokers "$BROKERS" --topic bench --expect "$trades"

for workers in 1 2; do
  echo "== (b, d) the host over the topic, $workers worker(s), standard plugin set, InfluxDB + Parquet"
  rm -rf "$state/archive"
  TICKFOLD__KAFKA__TOPIC=bench TICKFOLD__WORKERS=$workers TICKFOLD__KAFKA__STOP_AFTER_RECORDS=$trades \
    $tickfold bench pipeline --config examples/tickfold.toml
done

echo "== (b', d) 2 workers, the per-trade VWAP kept out of InfluxDB (archived only): the host without InfluxDB's ingest as the limit"
rm -rf "$state/archive"
TICKFOLD__KAFKA__TOPIC=bench TICKFOLD__WORKERS=2 TICKFOLD__KAFKA__STOP_AFTER_RECORDS=$trades \
  TICKFOLD__SINKS__INFLUX_SKIP='["vwap"]' $tickfold bench pipeline --config examples/tickfold.toml

echo "== (c, d) the same from a file"
$tickfold generate --output "$state/trades.csv" --trades "$trades" --rate 10000 --start-ms $start_ms --seed 1
rm -rf "$state/archive"
TICKFOLD__WORKERS=2 $tickfold bench pipeline --config examples/tickfold.toml --input "$state/trades.csv"

echo "== (c', d) the file, 2 workers, the per-trade VWAP kept out of InfluxDB (archived only)"
rm -rf "$state/archive"
TICKFOLD__WORKERS=2 TICKFOLD__SINKS__INFLUX_SKIP='["vwap"]' \
  $tickfold bench pipeline --config examples/tickfold.toml --input "$state/trades.csv"

fi

# (e) on fresh services: after the runs above InfluxDB compacts what it
# took in, on the same two cores, and the broker holds 10M records.
stop_services
start_tansu "$state/tansu-latency"
export TICKFOLD__KAFKA__BROKERS=$BROKERS
create_topic latency 4
create_topic latency.dead-letter 1

echo "== (e) latency at ${BENCH_RATE:-100000} trades/s"
TICKFOLD__KAFKA__TOPIC=latency TICKFOLD__WORKERS=2 TICKFOLD__KAFKA__IDLE_TIMEOUT_MS=200 \
  $tickfold bench latency --config examples/tickfold.toml --rate "${BENCH_RATE:-100000}" --seconds "${BENCH_SECONDS:-30}"
