#!/usr/bin/env python3
"""Times `sandcell run` as a whole command (process start to exit) on each WASI backend.

Usage: python3 scripts/bench-cli.py [RUNS] [BINARY]
  RUNS    timed runs per backend after 3 warm-ups (default 40)
  BINARY  the CLI to time (default target/release/sandcell; build it with
          `cargo build --release --bin sandcell`)

Each run is `BINARY run --backend B examples/hello.wat`, stdout discarded, with a default
artifact cache of its own (SANDCELL_CACHE_DIR, warmed by the warm-up runs), as a user's second
and later runs are. Prints the median per backend and the micro-VM / wasm ratio. The backends
alternate run by run so that drift on this noisy machine affects both alike.
"""
import os
import statistics
import subprocess
import sys
import tempfile
import time

runs = int(sys.argv[1]) if len(sys.argv) > 1 else 40
binary = sys.argv[2] if len(sys.argv) > 2 else "target/release/sandcell"
backends = ["wasm", "microvm"]
with tempfile.TemporaryDirectory(prefix="sandcell-bench-cli-") as cache:
    env = dict(os.environ, SANDCELL_CACHE_DIR=cache)
    env.pop("SANDCELL_LOG", None)
    times = {b: [] for b in backends}
    for i in range(runs + 3):
        for b in backends:
            start = time.perf_counter()
            subprocess.run([binary, "run", "--backend", b, "examples/hello.wat"], env=env, stdin=subprocess.DEVNULL,
                           stdout=subprocess.DEVNULL, check=True)
            if i >= 3:
                times[b].append(time.perf_counter() - start)
med = {b: statistics.median(t) * 1000 for b, t in times.items()}
print("| command | median | / wasm |")
print("|---|---|---|")
for b in backends:
    print(f"| `sandcell run --backend {b} examples/hello.wat` | {med[b]:.2f} ms | {med[b] / med['wasm']:.2f} |")
