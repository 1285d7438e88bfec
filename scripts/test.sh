#!/usr/bin/env bash
# The whole test suite, on a fresh Debian machine with rustup: installs what
# is missing (idempotently), then runs every test of the workspace in the
# debug profile. This is the command the README gives and CI runs.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/install-plugin-toolchain.sh
# The real services the end-to-end tests start on loopback (tansu, ...).
scripts/install-services.sh

# The first-party plugins as WebAssembly components, both ways (the tests
# would build them on first use anyway; building here shows progress).
echo "tickfold: building the plugins (wasm32-wasip2 and cargo-component)"
scripts/build-plugins.sh --component >/dev/null

echo "tickfold: running the test suite"
cargo test --workspace "$@"
