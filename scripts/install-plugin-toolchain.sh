#!/usr/bin/env bash
# Installs what building Tickfold plugins needs, idempotently: the wasm32-wasip2
# and wasm32-wasip1 targets (the second is what cargo-component builds through)
# and cargo-component itself. Safe to run again: each step checks first.
set -euo pipefail

CARGO_COMPONENT_VERSION=0.21.1

say() { printf 'tickfold: %s\n' "$*"; }

for target in wasm32-wasip2 wasm32-wasip1; do
  if ! rustup target list --installed | grep -qx "$target"; then
    say "adding the Rust target $target"
    rustup target add "$target"
  fi
done

if ! cargo component --version 2>/dev/null | grep -q "$CARGO_COMPONENT_VERSION"; then
  say "installing cargo-component $CARGO_COMPONENT_VERSION (a cold build takes ~9 minutes on 2 cores)"
  # --locked: the versions its authors tested. It warns about a yanked
  # wit-parser in its lock file; that build works.
  cargo install cargo-component --version "$CARGO_COMPONENT_VERSION" --locked
fi
say "plugin toolchain ready: $(cargo component --version)"
