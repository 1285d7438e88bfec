#!/usr/bin/env bash
# Builds the first-party plugins (and the test fixture) as WebAssembly
# components, both ways a plugin author can:
#   wasm32-wasip2:   cargo build --release --target wasm32-wasip2
#                    -> target/plugins/wasm32-wasip2/release/NAME.wasm
#   cargo-component: cargo component build --release   (pass --component)
#                    -> target/plugins/wasm32-wasip1/release/NAME.wasm
# They get a target directory of their own (target/plugins) so that the
# host's tests can run this while `cargo test` holds the main one.
set -euo pipefail
cd "$(dirname "$0")/.."

PLUGINS=(ohlcv vwap sma ema rsi macd bollinger anomaly tickfold-test-fixtures)
export CARGO_TARGET_DIR="${TICKFOLD_PLUGIN_TARGET:-$PWD/target/plugins}"

args=()
for p in "${PLUGINS[@]}"; do args+=(-p "$p"); done

cargo build --quiet --release --target wasm32-wasip2 "${args[@]}"
if [[ "${1:-}" == "--component" ]]; then
  cargo component build --quiet --release "${args[@]}"
fi
echo "$CARGO_TARGET_DIR"
