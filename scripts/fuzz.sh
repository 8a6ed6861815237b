#!/usr/bin/env bash
# Runs sandcell's fuzz targets (cargo-fuzz, nightly) for a while each: the long runs the README's
# test command does not do. New inputs go to fuzz/work/<target> (not committed); the checked-in
# seeds in fuzz/corpus/<target> are read. A crash leaves its input in fuzz/artifacts/<target>:
# copy it into fuzz/corpus/<target>/ so that `cargo test` replays it from then on (see
# tests/all/fuzz_replay.rs), fix the bug, and commit both.
#
#   scripts/fuzz.sh                 every target, 10 minutes each
#   scripts/fuzz.sh 3600 wasm_module c_abi
#
# The first run builds wasmer with coverage instrumentation (about 15 minutes on 2 cores).
# The sanitizer is AddressSanitizer, except for the targets that run guest code (wasm_module,
# c_abi): wasmer runs it on coroutine stacks and unwinds traps across them, which
# AddressSanitizer misreads as stack-buffer-overflows in wasmer's own trap code; those targets
# are built without a sanitizer (in fuzz/target/nosan, a second build) and find panics, aborts
# and failed checks. The wasm backend's traps use SIGSEGV/SIGBUS/SIGFPE, which libFuzzer must
# leave to it (-handle_segv=0 -handle_bus=0 -handle_fpe=0).
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="${CARGO_HOME:-$HOME/.cargo}/bin:$PATH"
seconds="${1:-600}"
shift || true
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
    targets=(hypercall_decode policy_json artifact_cache process_lowering microvm_hypercalls wasm_module c_abi)
fi
command -v cargo-fuzz >/dev/null || cargo install --locked --quiet cargo-fuzz
for t in "${targets[@]}"; do
    echo "==> $t for ${seconds}s"
    mkdir -p "fuzz/work/$t"
    case "$t" in
        wasm_module | c_abi) build=(--sanitizer none --target-dir fuzz/target/nosan) ;;
        *) build=() ;;
    esac
    cargo +nightly fuzz run --features full "${build[@]}" "$t" "fuzz/work/$t" "fuzz/corpus/$t" -- \
        -max_total_time="$seconds" -timeout=30 -rss_limit_mb=4096 -handle_segv=0 -handle_bus=0 -handle_fpe=0
done
