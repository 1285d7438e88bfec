# Starts the services the demo and the benchmark talk to, on loopback and
# free ports, under a state directory; sourced by scripts/demo.sh and
# scripts/bench.sh. Every service started is stopped by `stop_services`
# (which the callers run on exit). Tests start their own (host/tests/all/support.rs).

TICKFOLD_PIDS=()

free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

wait_port() { # PORT WHAT
  for _ in $(seq 1 300); do
    if python3 -c "import socket,sys; socket.create_connection(('127.0.0.1', $1), 0.2)" 2>/dev/null; then return 0; fi
    sleep 0.1
  done
  echo "tickfold: $2 did not listen on port $1 within 30 s" >&2
  return 1
}

# start_tansu DIR: a Kafka-protocol broker with the in-memory engine.
# Sets TANSU_PORT and BROKERS.
start_tansu() {
  local dir=$1
  mkdir -p "$dir"
  TANSU_PORT=$(free_port)
  BROKERS=127.0.0.1:$TANSU_PORT
  local url=tcp://$BROKERS
  tansu broker --listener-url "$url" --advertised-listener-url "$url" --storage-engine memory://tansu/ \
    >"$dir/tansu.log" 2>&1 &
  TICKFOLD_PIDS+=($!)
  wait_port "$TANSU_PORT" tansu
}

# create_topic NAME PARTITIONS
create_topic() {
  tansu topic create "$1" --partitions "$2" --broker "tcp://$BROKERS" >/dev/null
}

# start_influxd DIR: InfluxDB 1.x with its data under DIR. Sets INFLUX_PORT
# and INFLUX_URL.
start_influxd() {
  local dir=$1
  mkdir -p "$dir"
  INFLUX_PORT=$(free_port)
  INFLUX_URL=http://127.0.0.1:$INFLUX_PORT
  cat >"$dir/influxdb.conf" <<CONF
reporting-disabled = true
bind-address = "127.0.0.1:$(free_port)"
[meta]
  dir = "$dir/meta"
[data]
  dir = "$dir/data"
  wal-dir = "$dir/wal"
  query-log-enabled = false
[monitor]
  store-enabled = false
[http]
  bind-address = "127.0.0.1:$INFLUX_PORT"
  log-enabled = false
[logging]
  level = "warn"
CONF
  influxd run -config "$dir/influxdb.conf" >"$dir/influxd.log" 2>&1 &
  TICKFOLD_PIDS+=($!)
  wait_port "$INFLUX_PORT" influxd
}

# influxql DB QUERY: prints the JSON answer.
influxql() {
  python3 - "$INFLUX_URL" "$1" "$2" <<'PY'
import json, sys, urllib.parse, urllib.request
url, db, q = sys.argv[1:]
data = urllib.parse.urlencode({"db": db, "q": q, "epoch": "ms"}).encode()
print(urllib.request.urlopen(url + "/query", data=data, timeout=10).read().decode())
PY
}

stop_services() {
  for pid in "${TICKFOLD_PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${TICKFOLD_PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
  TICKFOLD_PIDS=()
}
