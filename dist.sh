#!/usr/bin/env bash
# Builds the release connector components and writes dist/<connector>-<version>.wasm with a
# sha256 file beside each. The version is the one the component reports in `describe`.
set -euo pipefail
cd "$(dirname "$0")"
rustup target add wasm32-wasip2 >/dev/null
target_dir="${CARGO_TARGET_DIR:-target}"
cargo build --release --target wasm32-wasip2 --target-dir "$target_dir/components" \
    -p defender-alerts -p defender-incidents -p entra
cargo build -p connector-host
host="$target_dir/debug/connector-host"
mkdir -p dist
for connector in defender-alerts defender-incidents entra; do
    wasm="$target_dir/components/wasm32-wasip2/release/${connector//-/_}.wasm"
    version=$("$host" --log-level error describe "$wasm" | python3 -c 'import json,sys; print(json.load(sys.stdin)["version"])')
    out="dist/$connector-$version.wasm"
    cp "$wasm" "$out"
    (cd dist && sha256sum "$(basename "$out")" > "$(basename "$out").sha256")
    echo "$out $(wc -c < "$out") bytes, $(cut -d' ' -f1 "$out.sha256")"
done
