"""The examples in examples/python run against the installed package."""

from __future__ import annotations

import subprocess
import sys

import sandcell
from conftest import REPO, skip_or_fail


def run_example(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, *args], cwd=REPO, capture_output=True, text=True, timeout=120
    )


def test_hello_example() -> None:
    done = run_example("examples/python/hello.py")
    assert done.returncode == 0, done.stderr
    assert done.stdout == "Hello, world!\n"
    assert "exited (exit code 0)" in done.stderr


def test_untrusted_snippet_example() -> None:
    info = next(b for b in sandcell.probe()["backends"] if b["backend"] == "process")
    if not info["available"]:
        skip_or_fail(f"the process backend is unavailable: {info['reason']}")
    done = run_example("examples/python/untrusted_snippet.py")
    assert done.returncode == 0, done.stderr
    lines = {line.split("->")[0].strip(): line.split("->")[1] for line in done.stdout.splitlines()}
    assert lines["well-behaved"].split()[:2] == ["exited", "0"] and lines["well-behaved"].rstrip().endswith("45")
    assert "timeout" in lines["spins forever"] or "cpu_limit" in lines["spins forever"]
    assert "memory_limit" in lines["allocates 1 GiB"] or "MemoryError" in lines["allocates 1 GiB"]
    assert "exited 1" in lines["reads /etc/shadow"] and "No such file" in lines["reads /etc/shadow"]
    assert "exited 1" in lines["opens a socket"]
    assert "forks a bomb" in lines
    one = run_example("examples/python/untrusted_snippet.py", "print(6 * 7)")
    assert one.returncode == 0 and one.stdout.rstrip().endswith("42"), one.stdout + one.stderr
