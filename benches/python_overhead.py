"""What the Python package adds to one run of the cached hello world (the workload of
`cargo bench -p sandcell-ffi --bench ffi`).

Two loops run interleaved, batch by batch, so that both see the same machine state:
- `c_calls`: the C functions the C benchmark calls (`sandcell_sandbox_run`, then
  `sandcell_outcome_free`), called through ctypes on one program handle — the C ABI's cost as
  seen from Python;
- `package`: `Sandbox.run(HELLO)` — argument handling, a program handle made and freed, the
  `Outcome` (status, output, usage) read, and freed.
Each figure is the median over batches of the mean time per run in the batch, as criterion
reports. `added_us` is the median of the per-batch differences, plus the cost of the two ctypes
crossings the `c_calls` loop itself makes (`crossing_us` each), so it is what the package adds on
top of the C ABI; scripts/bench-report.py adds the C ABI's own cost over Rust from criterion.

    PYTHONPATH=python SANDCELL_LIBRARY=target/release/libsandcell.so python3 benches/python_overhead.py
"""

import json
import os
import statistics
import time
from ctypes import byref, c_void_p

import sandcell
from sandcell._lib import lib

HERE = os.path.dirname(os.path.abspath(__file__))
HELLO = open(os.path.join(HERE, "..", "examples", "hello.wat"), "rb").read()


def mean_us(fn, n):
    t = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - t) / n * 1e6


def main() -> None:
    batches, per_batch = 60, 300
    with sandcell.Sandbox("wasm", memory=64 << 20) as sandbox:
        handle = sandbox._handle
        program = c_void_p()
        assert not lib.sandcell_program_from_bytes(HELLO, len(HELLO), byref(program))

        def c_calls():
            out = c_void_p()
            lib.sandcell_sandbox_run(handle, program, None, byref(out))
            lib.sandcell_outcome_free(out)

        def package():
            out = sandbox.run(HELLO)
            assert out.exit_code == 0 and len(out.stdout) == 14

        for fn in (c_calls, package):
            mean_us(fn, per_batch)
        c, p = [], []
        for _ in range(batches):
            c.append(mean_us(c_calls, per_batch))
            p.append(mean_us(package, per_batch))
        lib.sandcell_program_free(program)
    crossing = statistics.median(mean_us(lambda: lib.sandcell_error_kind(None), 10000) for _ in range(20))
    print(json.dumps({
        "c_calls_us": statistics.median(c),
        "package_us": statistics.median(p),
        "crossing_us": crossing,
        "added_us": statistics.median(b - a for a, b in zip(c, p)) + 2 * crossing,
        "runs": 2 * batches * per_batch,
    }))


if __name__ == "__main__":
    main()
