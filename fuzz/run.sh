#!/usr/bin/env bash
# Runs each fuzz target for a bounded time (default 60 s) and prints libFuzzer's summary.
# cargo-fuzz wants nightly flags; RUSTC_BOOTSTRAP=1 lets the stable toolchain take them.
set -euo pipefail
cd "$(dirname "$0")"
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
secs="${1:-60}"
export RUSTC_BOOTSTRAP=1
for target in config cursor page ocsf; do
    mkdir -p "corpus/$target"
    cargo fuzz run "$target" "corpus/$target" -- -max_total_time="$secs" 2>&1 | grep -E "^(#[0-9]+.*DONE|Done|==[0-9]+==|SUMMARY)" || true
done
