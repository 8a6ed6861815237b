"""The wasm benchmarks' peer: the same three measurements with wasmtime (PyPI `wasmtime`).

Prints one JSON object of medians in microseconds. Python binding overhead is included (a few
microseconds per call), which favours sandcell in the comparison; docs/PERFORMANCE.md says so.
"""

import importlib.metadata
import json
import os
import statistics
import sys
import tempfile
import time

import wasmtime

HERE = os.path.dirname(os.path.abspath(__file__))
HELLO = open(os.path.join(HERE, "..", "..", "examples", "hello.wat")).read()
ADD = '(module (func (export "add") (param i32 i32) (result i32) (i32.add (local.get 0) (local.get 1))))'


def median_us(fn, runs, warmup):
    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - t) * 1e6)
    return statistics.median(samples)


def main():
    engine = wasmtime.Engine()
    counter = [0]

    def compile_once():
        counter[0] += 1
        src = HELLO.replace('(export "_start")', '(export "_start") (export "x%d")' % counter[0], 1)
        wasmtime.Module(engine, src)

    hello = wasmtime.Module(engine, HELLO)
    linker = wasmtime.Linker(engine)
    linker.define_wasi()
    out_dir = tempfile.mkdtemp()
    out_path = os.path.join(out_dir, "stdout")

    def hello_once():
        store = wasmtime.Store(engine)
        wasi = wasmtime.WasiConfig()
        wasi.stdout_file = out_path
        store.set_wasi(wasi)
        instance = linker.instantiate(store, hello)
        instance.exports(store)["_start"](store)
        with open(out_path, "rb") as f:
            assert f.read() == b"Hello, world!\n"

    add = wasmtime.Module(engine, ADD)

    def add_once():
        store = wasmtime.Store(engine)
        instance = wasmtime.Instance(store, add, [])
        assert instance.exports(store)["add"](store, 1, 2) == 3

    result = {
        "wasmtime_version": importlib.metadata.version("wasmtime"),
        "compile_us": median_us(compile_once, 50, 5),
        "hello_cached_us": median_us(hello_once, 500, 50),
        "export_call_fresh_instance_us": median_us(add_once, 2000, 200),
    }
    json.dump(result, sys.stdout)
    print()


if __name__ == "__main__":
    main()
