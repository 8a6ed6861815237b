#!/usr/bin/env bash
# wasmtime's Rust API next to sandcell's prepared runs, in one session (docs/PERFORMANCE.md):
# a WASI hello world and CPython for WASI running `-c "print(1)"` (the interpreter pinned by
# scripts/fetch-interpreters.sh), wasmtime with and without its pooling allocator, sandcell's
# wasm backend through `sandcell bench` (prepared runs).
#
#   bash scripts/bench-wasmtime-peer.sh [RUNS]
#
# Builds the peer (benches/peers/wasmtime-rs, its own project and target directory) and the
# release CLI; needs crates.io. The first build of wasmtime takes several minutes.
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-200}
cargo build --release --quiet --manifest-path benches/peers/wasmtime-rs/Cargo.toml \
    --target-dir target/peers
cargo build --release --quiet --bin sandcell
peer=target/peers/release/wasmtime-peer
# wasmtime (with its default `wat` feature) and sandcell both take the text form.
hello=examples/hello.wat
python=$(bash scripts/fetch-interpreters.sh)
for module in hello cpython; do
    if [ "$module" = hello ]; then m=$hello; args=(); n=$runs; else m=$python; args=(-c "print(1)"); n=$((runs / 10 + 5)); fi
    echo "## $module ($n runs each)"
    echo "wasmtime:          $("$peer" "$n" "$m" "${args[@]}")"
    echo "wasmtime pooling:  $("$peer" --pooling "$n" "$m" "${args[@]}")"
    echo "sandcell (wasm):   $(./target/release/sandcell bench --json --runs "$n" --timeout 60s "$m" -- "${args[@]}")"
done
