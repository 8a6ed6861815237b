"""Run untrusted Python snippets (say, code an AI agent wrote) with limits.

Each snippet runs in the process backend: its own namespaces and empty root, seccomp, Landlock,
no network, 128 MiB of memory, 2 s of wall-clock time and 1 s of CPU time. The host's Python
interpreter is visible read-only (the default system directories); nothing else of the host is.

    pip install ./python
    python examples/python/untrusted_snippet.py            # runs the demo snippets below
    python examples/python/untrusted_snippet.py 'print(6 * 7)'
"""

import shutil
import sys

import sandcell

SNIPPETS = {
    "well-behaved": "print(sum(range(10)))",
    "spins forever": "while True: pass",
    "allocates 1 GiB": "x = bytearray(1 << 30)",
    "reads /etc/shadow": "print(open('/etc/shadow').read())",
    "opens a socket": "import socket; socket.create_connection(('1.1.1.1', 53), timeout=1)",
    "forks a bomb": "import os\nwhile True: os.fork()",
}

PYTHON = shutil.which("python3", path="/usr/bin:/bin") or "/usr/bin/python3"


def run_snippet(sandbox: sandcell.Sandbox, code: str) -> sandcell.Outcome:
    return sandbox.run(PYTHON, ["-I", "-S", "-c", code], name="python3")


def main() -> int:
    snippets = {"your snippet": sys.argv[1]} if len(sys.argv) > 1 else SNIPPETS
    policy = sandcell.Policy(memory="128M", timeout="2s", cpu_time="1s", max_processes=8, max_output="64K")
    try:
        sandbox = sandcell.Sandbox("process", policy)
    except sandcell.BackendUnavailableError as e:
        print(f"the process backend is not available here: {e}", file=sys.stderr)
        return 1
    with sandbox:
        for label, code in snippets.items():
            out = run_snippet(sandbox, code)
            summary = out.status if out.exit_code is None else f"exited {out.exit_code}"
            if out.detail:
                summary += f" ({out.detail})"
            last_line = (out.stdout or out.stderr).decode(errors="replace").strip().splitlines()[-1:] or [""]
            print(f"{label:18} -> {summary:40} {last_line[0][:70]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
