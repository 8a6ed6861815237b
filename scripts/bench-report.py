#!/usr/bin/env python3
"""Runs sandcell's criterion benchmarks and the peer measurements in one session, and prints the
markdown tables of docs/PERFORMANCE.md (medians, and ratios to the peers measured in that run).

Usage: python3 scripts/bench-report.py [wasm] [process] [microvm] [ffi]   (default: all)
Needs: the wasmtime package from PyPI for the wasm peer (pip install wasmtime).
"""
import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def criterion(group, name):
    path = os.path.join(ROOT, "target", "criterion", f"{group}_{name}", "new", "estimates.json")
    with open(path) as f:
        return json.load(f)["median"]["point_estimate"] / 1e3  # ns -> us


def bench(name):
    subprocess.run(["cargo", "bench", "--bench", name], cwd=ROOT, check=True,
                   stdout=subprocess.DEVNULL)


def fmt(us):
    return f"{us / 1e3:.2f} ms" if us >= 1000 else f"{us:.1f} µs"


def wasm():
    if "--no-run" not in sys.argv: bench("wasm")
    peer = json.loads(subprocess.run([sys.executable, os.path.join(ROOT, "benches/peers/wasmtime_peer.py")],
                                     check=True, capture_output=True, text=True).stdout)
    print(f"### wasm (wasmtime {peer['wasmtime_version']} through its Python package)\n")
    print("| measurement | sandcell | wasmtime | sandcell / wasmtime |")
    print("|---|---|---|---|")
    for label, ours, theirs in [
        ("compile the hello module (Cranelift)", "compile", "compile_us"),
        ("cached hello world, end to end", "hello_cached", "hello_cached_us"),
        ("call an export on a fresh instance", "export_call_fresh_instance", "export_call_fresh_instance_us"),
    ]:
        a, b = criterion("wasm", ours), peer[theirs]
        print(f"| {label} | {fmt(a)} | {fmt(b)} | {a / b:.2f} |")
    print()


def process():
    if "--no-run" not in sys.argv: bench("process")
    ours = criterion("process", "sandcell_true")
    print("### process (/bin/true, end to end)\n")
    print("| tool | median | sandcell / tool |")
    print("|---|---|---|")
    print(f"| sandcell, fully confined | {fmt(ours)} | 1.00 |")
    for label, name in [("fork + exec", "fork_exec_true"), ("unshare, same namespaces", "unshare_true"),
                        ("bubblewrap --unshare-all", "bwrap_true")]:
        try:
            t = criterion("process", name)
            print(f"| {label} | {fmt(t)} | {ours / t:.2f} |")
        except FileNotFoundError:
            print(f"| {label} | not measured | |")
    print()


def microvm():
    if "--no-run" not in sys.argv: bench("microvm")
    floor = criterion("microvm", "kvm_floor")
    deferred = criterion("microvm", "kvm_floor_deferred")
    print("### microvm\n")
    print("| measurement | median | / raw KVM floor | / floor, teardown deferred |")
    print("|---|---|---|---|")
    for label, name in [("raw KVM floor: create VM + vCPU, run to first exit", "kvm_floor"),
                        ("the same, its teardown on another thread", "kvm_floor_deferred"),
                        ("the same while it is the only VM on the host", "kvm_floor_only_vm"),
                        ("native hello guest, create to result", "native_hello"),
                        ("WASI hello module, create to result", "wasi_hello")]:
        t = criterion("microvm", name)
        print(f"| {label} | {fmt(t)} | {t / floor:.2f} | {t / deferred:.2f} |")
    print()
    wasm_cli = criterion("cli", "wasm_hello")
    vm_cli = criterion("cli", "microvm_hello")
    print("| whole command, default cache warm | median | / `--backend wasm` |")
    print("|---|---|---|")
    print(f"| `sandcell run --backend wasm examples/hello.wat` | {fmt(wasm_cli)} | 1.00 |")
    print(f"| `sandcell run --backend microvm examples/hello.wat` | {fmt(vm_cli)} | {vm_cli / wasm_cli:.2f} |")
    print()


def ffi():
    # The C benchmark loads libsandcell.so, which `cargo bench` does not build by itself.
    subprocess.run(["cargo", "build", "--release", "-p", "sandcell-ffi"], cwd=ROOT, check=True)
    subprocess.run(["cargo", "bench", "-p", "sandcell-ffi", "--bench", "ffi"], cwd=ROOT, check=True,
                   stdout=subprocess.DEVNULL)
    rust = criterion("ffi", "rust_api")
    c = criterion("ffi", "c_api")
    # The Python package's own code, on the release library the C benchmark just used.
    env = dict(os.environ, PYTHONPATH=os.path.join(ROOT, "python"),
               SANDCELL_LIBRARY=os.path.join(ROOT, "target", "release", "libsandcell.so"))
    out = subprocess.run([sys.executable, os.path.join(ROOT, "benches/python_overhead.py")], check=True,
                         capture_output=True, text=True, env=env).stdout
    py = json.loads(out)
    # A negative C cost is noise (the two figures are within a few µs); it is not credited.
    added = py["added_us"] + max(c - rust, 0.0)
    print("### C ABI and Python overhead (one wasm run of the cached hello world)\n")
    print("| path | median | added over the Rust API |")
    print("|---|---|---|")
    print(f"| Rust API (`Sandbox::run`) | {fmt(rust)} | |")
    print(f"| C ABI (libsandcell.so via dlopen) | {fmt(c)} | {fmt(c - rust)} |")
    print(f"| Python: the C calls through ctypes | {fmt(py['c_calls_us'])} | |")
    print(f"| Python package (`Sandbox.run`) | {fmt(py['package_us'])} | {fmt(added)} |")
    print()
    print(f"Python's added cost is measured against the C calls made through ctypes in the same process, "
          f"interleaved batch by batch ({fmt(py['added_us'])}, including {fmt(2 * py['crossing_us'])} for "
          f"the two ctypes crossings of that loop), plus the C ABI's own cost over Rust when positive.")
    print()


if __name__ == "__main__":
    wanted = [a for a in sys.argv[1:] if not a.startswith("--")] or ["wasm", "process", "microvm", "ffi"]
    for w in wanted:
        globals()[w]()
