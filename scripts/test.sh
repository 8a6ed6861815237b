#!/usr/bin/env bash
# Installs what sandcell's tests need, then runs all of them. This is the README's test command
# and what CI runs (.ci/run). Safe to re-run: every install step is skipped when already done.
#
# Environment:
#   SANDCELL_REQUIRE_ALL=1   a test that would skip (no /dev/kvm, no ../shared data, ...) fails
#                            instead; CI sets it, because CI machines have everything.
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n==> %s\n' "$*"; }

as_root() {
    if [ "$(id -u)" = 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else return 1; fi
}

step "Rust targets for guest programs"
rustup target add wasm32-wasip1 x86_64-unknown-none >/dev/null

step "System packages"
need=()
command -v valgrind >/dev/null || need+=(valgrind)
command -v pkg-config >/dev/null || need+=(pkg-config)
command -v bwrap >/dev/null || need+=(bubblewrap)
command -v cc >/dev/null || need+=(gcc)
python3 -m venv --help >/dev/null 2>&1 || need+=(python3-venv)
if [ ${#need[@]} -gt 0 ]; then
    echo "installing: ${need[*]}"
    if ! { as_root apt-get update -qq && as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null; }; then
        echo "warning: could not install ${need[*]} (not root, no sudo?); tests that need them will say so" >&2
    fi
fi

step "Rust tests (unit, integration, doc) and benchmarks in test mode"
cargo test --workspace --all-targets
cargo test --workspace --doc

echo
echo "All tests passed."
