#!/usr/bin/env bash
# Runs the crash-consistency test with more kills than the test suite does (default 200).
# CRASH_SEED=<n> replays a run whose seed a failure printed.
set -euo pipefail
cd "$(dirname "$0")/.."
CRASH_KILLS="${1:-200}" cargo test -p connector-host --test crash -- --nocapture
