#!/usr/bin/env bash
# Installs what sandcell's tests need, then runs all of them. This is the README's test command
# and what CI runs (.ci/run). Safe to re-run: every install step is skipped when already done.
#
# Environment:
#   SANDCELL_REQUIRE_ALL=1   a test that would skip (no /dev/kvm, no ../shared data, ...) fails
#                            instead; CI sets it, because CI machines have everything.
#   SANDCELL_FUZZ_SECONDS=N  how long the fuzz smoke run lasts (default 20; 0 skips it).
set -euo pipefail
cd "$(dirname "$0")/.."

# Tools `cargo install` puts in place (cbindgen, cargo-fuzz) must be found on a fresh machine too.
export PATH="${CARGO_HOME:-$HOME/.cargo}/bin:$PATH"

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
command -v trinity >/dev/null || need+=(trinity)
command -v cc >/dev/null || need+=(gcc)
command -v c++ >/dev/null || need+=(g++)
python3 -m venv --help >/dev/null 2>&1 || need+=(python3-venv)
if [ ${#need[@]} -gt 0 ]; then
    echo "installing: ${need[*]}"
    if ! { as_root apt-get update -qq && as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null; }; then
        echo "warning: could not install ${need[*]} (not root, no sudo?); tests that need them will say so" >&2
    fi
fi

step "cbindgen (the C header check)"
cbindgen_version=0.29.4
if [ "$(cbindgen --version 2>/dev/null)" != "cbindgen $cbindgen_version" ]; then
    cargo install --locked --quiet cbindgen --version "$cbindgen_version"
fi

step "Rust tests (unit, integration incl. the C ABI under valgrind, doc) and benchmarks in test mode"
# `cargo test` does not build the C library (a cdylib), which the C ABI tests link, nor the CLI
# binary in the same profile: build the workspace first.
cargo build --workspace
cargo test --workspace --all-targets
cargo test --workspace --doc

step "Micro-VM wire format (sandcell-abi) tests on the host"
cargo test --quiet --manifest-path guest/Cargo.toml -p sandcell-abi --target "$(rustc -vV | sed -n 's/^host: //p')"

step "Python package: build the wheel, install it into a fresh virtual environment, run its suite"
venv=target/python-venv
dist=target/python-dist
# python/build: setuptools' build directory, which would carry stale files into the wheel.
rm -rf "$venv" "$dist" python/build
python3 -m venv "$venv"
"$venv/bin/pip" install --quiet --upgrade pip
# build: the PEP 517 front end. setuptools: tests/test_packaging.py builds an sdist and a wheel
# from it with the environment's own setuptools (no network in the test).
"$venv/bin/pip" install --quiet build "setuptools>=77" pytest
# The dev profile takes the library `cargo build --workspace` built above: cargo finds it fresh
# (it re-links at most) instead of compiling wasmer again for a release library. --wheel builds
# from the source tree; a wheel built from the sdist would compile the sdist's own copy of the
# Rust sources.
SANDCELL_CARGO_PROFILE=dev "$venv/bin/python" -m build --wheel --outdir "$dist" ./python
wheels=("$dist"/sandcell-*-py3-none-*.whl)
echo "built ${wheels[*]##*/}"
"$venv/bin/pip" install --quiet "${wheels[@]}"
"$venv/bin/pytest" -q python/tests

fuzz_seconds="${SANDCELL_FUZZ_SECONDS:-20}"
if [ "$fuzz_seconds" != 0 ]; then
    # Every target's corpus was replayed by `cargo test` above (tests/all/fuzz_replay.rs and the
    # C ABI's unit test); the other targets need an instrumented build of wasmer, so their long
    # runs are scripts/fuzz.sh's, not CI's.
    step "Fuzz smoke run of the hypercall decoder (${fuzz_seconds}s)"
    if rustup toolchain list | grep -q '^nightly'; then
        command -v cargo-fuzz >/dev/null || cargo install --locked --quiet cargo-fuzz
        mkdir -p fuzz/work/hypercall_decode
        cargo +nightly fuzz run hypercall_decode fuzz/work/hypercall_decode fuzz/corpus/hypercall_decode -- \
            -max_total_time="$fuzz_seconds" 2>&1 | tail -3
    elif [ -n "${SANDCELL_REQUIRE_ALL:-}" ] && [ "${SANDCELL_REQUIRE_ALL}" != 0 ]; then
        echo "SANDCELL_REQUIRE_ALL is set but there is no nightly toolchain for cargo-fuzz" >&2
        exit 1
    else
        echo "SKIPPED: no nightly toolchain (rustup toolchain install nightly) for cargo-fuzz"
    fi
fi

echo
echo "All tests passed."
