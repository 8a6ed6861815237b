"""The sandcell hello world in Python: run a WebAssembly module, print what it wrote.

    pip install ./python
    python examples/python/hello.py [examples/hello.wat]
"""

import sys

import sandcell

program = sys.argv[1] if len(sys.argv) > 1 else "examples/hello.wat"

with sandcell.Sandbox("wasm", memory="64M", timeout=2.0) as sandbox:
    outcome = sandbox.run(program, on_stdout=lambda chunk: sys.stdout.write(chunk.decode(errors="replace")))

print(f"[sandcell {sandcell.__version__}] {outcome.status} (exit code {outcome.exit_code}), "
      f"{outcome.usage.wall * 1e3:.2f} ms", file=sys.stderr)
sys.exit(outcome.exit_code if outcome.status == "exited" else 1)
