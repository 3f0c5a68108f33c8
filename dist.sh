#!/usr/bin/env bash
# Builds the release artifacts into dist/: every connector component as
# <connector>-<version>.wasm and the host as connector-host-<version>-<target>, each with a
# .sha256 file beside it, which is verified once written. The component's version is the
# one it reports itself (`connector-host inspect`, which also prints its WIT version).
set -euo pipefail
cd "$(dirname "$0")"
# Without rustup's auto-install (RUSTUP_AUTO_INSTALL=0) nothing adds the target by itself.
rustup target add wasm32-wasip2 >/dev/null
target_dir="${CARGO_TARGET_DIR:-target}"
cargo build --release -p connector-host    # its build script builds the components too
host="$target_dir/release/connector-host"
components="$target_dir/components/wasm32-wasip2/release"
mkdir -p dist
write() { # <file in dist/>: its .sha256, then verified
    (cd dist && sha256sum "$1" > "$1.sha256" && sha256sum --check --quiet "$1.sha256")
    echo "dist/$1 $(wc -c < "dist/$1") bytes, sha256 $(cut -d' ' -f1 "dist/$1.sha256")"
}
for connector in defender-alerts defender-incidents entra; do
    wasm="$components/${connector//-/_}.wasm"
    version=$("$host" --log-level error inspect "$wasm" | sed -n 's/^version: //p')
    wit=$("$host" --log-level error inspect "$wasm" | sed -n 's/^wit: //p')
    name="$connector-$version.wasm"
    cp "$wasm" "dist/$name"
    write "$name"
    echo "  built for $wit"
done
host_version=$("$host" --version | cut -d' ' -f2)
host_name="connector-host-$host_version-$(rustc -vV | sed -n 's/^host: //p')"
cp "$host" "dist/$host_name"
write "$host_name"
