"""The Python API itself: policies, errors, outcomes, callbacks, threads and the GIL."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest

import sandcell
from conftest import HELLO_WAT, REPO

SPIN = b'(module (memory (export "memory") 1) (func (export "_start") (loop $l (br $l))))'
TRAP = b'(module (memory (export "memory") 1) (func (export "_start") unreachable))'
ADD = b'(module (func (export "add") (param i32 i32) (result i32) (i32.add (local.get 0) (local.get 1))))'
# Prints "go\n", then spins.
GO_SPIN = b"""(module
  (import "wasi_snapshot_preview1" "fd_write" (func $w (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 16) "go\\n")
  (func (export "_start")
    (i32.store (i32.const 0) (i32.const 16))
    (i32.store (i32.const 4) (i32.const 3))
    (drop (call $w (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8)))
    (loop $l (br $l))))"""


def test_version_and_probe() -> None:
    assert sandcell.__version__.count(".") == 2
    info = sandcell.probe()
    assert {b["backend"] for b in info["backends"]} == {"wasm", "process", "microvm"}
    assert next(b for b in info["backends"] if b["backend"] == "wasm")["available"]


def test_package_is_typed() -> None:
    assert (Path(sandcell.__file__).parent / "py.typed").is_file()


def test_hello_from_a_path_and_from_bytes() -> None:
    with sandcell.Sandbox("wasm", memory="64M", timeout=2.0) as sb:
        a = sb.run(REPO / "examples" / "hello.wat")
        b = sb.run(HELLO_WAT.encode())
    for out in (a, b):
        assert out.ok and out.stdout == b"Hello, world!\n" and out.stderr == b""
        assert out.usage.wall > 0 and out.usage.fuel is None
    assert "memory" in a.enforced and a.skipped == {}
    doc = json.loads(a.to_json())
    assert doc["status"] == {"kind": "exited", "code": 0}
    assert repr(a).startswith("<Outcome exited")


def test_policy_fields_units_and_json() -> None:
    p = sandcell.Policy(
        memory="64M",
        timeout=1.5,
        cpu_time="2s",
        fuel=10_000,
        max_output="1K",
        env={"A": "b"},
        mounts=[("/tmp", "/data"), sandcell.Mount("/tmp", "/rw", writable=True), {"host": "/tmp", "guest": "/d"}],
        deny_syscalls=["uname"],
    )
    d = p.to_dict()
    assert d["memory"] == 64 << 20 and d["max_output"] == 1024 and d["fuel"] == 10_000
    assert d["mounts"][1] == {"host": "/tmp", "guest": "/rw", "writable": True}
    assert p.memory == 64 << 20
    assert sandcell.Policy.from_json(p.to_json()) == p
    assert sandcell.Policy.from_dict(d) == p
    q = p.replace(memory=None)
    assert q.memory is None and p.memory == 64 << 20
    # Unset fields keep the defaults.
    assert sandcell.Policy().memory == 512 << 20


@pytest.mark.parametrize(
    "fields, field",
    [
        ({"memory": "lots"}, "memory"),
        ({"memory": 0}, "memory"),
        ({"timeout": "soon"}, "timeout"),
        ({"cpus": 0}, "cpus"),
        ({"mounts": [("", "/x")]}, "mounts[0].host"),
        ({"mounts": [("/tmp", "not/absolute")]}, "mounts[0].guest"),
        ({"env": {"A=B": "c"}}, "env"),
        ({"deny_syscalls": ["not_a_syscall"]}, "deny_syscalls"),
        ({"network": "internet"}, "network"),
    ],
)
def test_bad_policies_raise_invalid_policy_naming_the_field(fields, field) -> None:
    with pytest.raises(sandcell.InvalidPolicyError, match=field.replace("[", r"\[").replace("]", r"\]")):
        sandcell.Policy(**fields)


def test_policy_json_refuses_unknown_fields_and_non_objects() -> None:
    with pytest.raises(sandcell.InvalidPolicyError, match="memroy"):
        sandcell.Policy.from_json('{"memroy": 1}')
    with pytest.raises(sandcell.InvalidPolicyError):
        sandcell.Policy.from_json("[1]")
    with pytest.raises(TypeError):
        sandcell.Policy(memroy=1)  # type: ignore[call-arg]


def test_error_hierarchy() -> None:
    for cls in (
        sandcell.InvalidPolicyError,
        sandcell.UnenforceableError,
        sandcell.BackendUnavailableError,
        sandcell.InvalidProgramError,
        sandcell.HostError,
        sandcell.InvalidArgumentError,
        sandcell.InternalError,
    ):
        assert issubclass(cls, sandcell.SandcellError)
    assert issubclass(sandcell.InvalidPolicyError, ValueError)
    with pytest.raises(sandcell.InvalidArgumentError, match="quantum"):
        sandcell.Sandbox("quantum")
    with pytest.raises(sandcell.UnenforceableError, match="network"):
        sandcell.Sandbox("wasm", network="loopback")
    with pytest.raises(sandcell.InvalidProgramError):
        sandcell.Sandbox("wasm").run(b"\x00asm\x01\x00\x00\x00\xff")
    with pytest.raises(TypeError):
        sandcell.Sandbox("wasm", sandcell.Policy(), memory="1M")


def test_best_effort_runs_and_reports_what_was_skipped() -> None:
    with sandcell.Sandbox("wasm", network="loopback", best_effort=True) as sb:
        out = sb.run(HELLO_WAT.encode())
    assert out.ok
    assert "network" in out.skipped


def test_statuses_traps_fuel_and_entry_points() -> None:
    with sandcell.Sandbox("wasm", timeout="300ms") as sb:
        assert sb.run(SPIN).status == "timeout"
        trap = sb.run(TRAP)
        assert (trap.status, trap.trap) == ("trap", "unreachable")
        assert trap.exit_code is None and "unreachable" in (trap.detail or "")
        add = sb.run(ADD, ["40", "2"], entry="add")
        assert add.ok and add.stdout == b"42\n"
    with sandcell.Sandbox("wasm", fuel=100_000) as sb:
        out = sb.run(SPIN)
        assert out.status == "cpu_limit" and out.detail == "fuel exhausted"
        assert out.usage.fuel is not None and out.usage.fuel >= 100_000


def test_bad_run_arguments() -> None:
    with sandcell.Sandbox("wasm") as sb:
        with pytest.raises(sandcell.InvalidArgumentError, match="NUL"):
            sb.run(HELLO_WAT.encode(), ["a\0b"])
        with pytest.raises(TypeError):
            sb.run(HELLO_WAT.encode(), "not a list")  # type: ignore[arg-type]
        with pytest.raises(sandcell.InvalidProgramError, match="BAD=NAME"):
            sb.run(HELLO_WAT.encode(), env={"BAD=NAME": "x"})
        with pytest.raises(TypeError):
            sb.run(42)  # type: ignore[arg-type]


def test_closed_sandboxes_refuse_runs() -> None:
    sb = sandcell.Sandbox("wasm")
    with sb:
        assert sb.run(HELLO_WAT.encode()).ok
    assert sb.closed
    with pytest.raises(sandcell.InvalidArgumentError, match="closed"):
        sb.run(HELLO_WAT.encode())
    with pytest.raises(sandcell.InvalidArgumentError, match="closed"):
        sb.interrupt()
    sb.close()  # twice is fine


def test_closing_while_another_thread_runs_waits_for_that_run() -> None:
    sb = sandcell.Sandbox("wasm", timeout="500ms")
    result = {}
    t = threading.Thread(target=lambda: result.update(out=sb.run(SPIN)))
    t.start()
    time.sleep(0.1)
    sb.close()
    t.join()
    assert result["out"].status == "timeout"
    assert sb.closed


def test_a_callback_that_raises_stops_the_run_and_the_exception_propagates() -> None:
    class Stop(Exception):
        pass

    def boom(chunk: bytes) -> None:
        raise Stop(chunk)

    with sandcell.Sandbox("wasm", timeout=20) as sb:
        started = time.monotonic()
        with pytest.raises(Stop):
            sb.run(GO_SPIN, on_stdout=boom)
        assert time.monotonic() - started < 10
        # The sandbox is still usable.
        assert sb.run(HELLO_WAT.encode()).ok


def test_a_callback_that_raises_leaves_the_callers_interrupt_handle_alone() -> None:
    class Stop(Exception):
        pass

    def boom(chunk: bytes) -> None:
        raise Stop(chunk)

    handle = sandcell.Interrupt()
    with sandcell.Sandbox("wasm", timeout=20) as sb:
        with pytest.raises(Stop):
            sb.run(GO_SPIN, interrupt=handle, on_stdout=boom)
        # The handle was not triggered: a run with it goes to the end; it still stops runs.
        assert sb.run(HELLO_WAT.encode(), interrupt=handle).ok
        handle.trigger()
        assert sb.run(HELLO_WAT.encode(), interrupt=handle).status == "interrupted"


def test_an_interrupt_handle_stops_a_run_from_another_thread() -> None:
    handle = sandcell.Interrupt()
    go = threading.Event()
    with sandcell.Sandbox("wasm", timeout=20) as sb:
        threading.Thread(target=lambda: (go.wait(10), handle.trigger())).start()
        out = sb.run(GO_SPIN, interrupt=handle, on_stdout=lambda _: go.set())
    assert out.status == "interrupted"
    assert out.stdout == b"go\n"


def test_the_gil_is_released_while_a_guest_runs() -> None:
    """While guests spin in two threads, this thread keeps running Python code, and both runs
    are under way at the same time. With the GIL held, the counter could not advance and the
    second run could not start before the first ended (at its 20 s timeout)."""
    started = [threading.Event(), threading.Event()]
    results = {}
    with sandcell.Sandbox("wasm", timeout=20) as sb:

        def worker(i: int) -> None:
            results[i] = sb.run(GO_SPIN, on_stdout=lambda _: started[i].set())

        threads = [threading.Thread(target=worker, args=(i,)) for i in range(2)]
        for t in threads:
            t.start()
        assert started[0].wait(10) and started[1].wait(10), "both guests should be running at once"
        counter = 0
        deadline = time.monotonic() + 0.2
        while time.monotonic() < deadline:
            counter += 1
        assert counter > 1000
        sb.interrupt()
        for t in threads:
            t.join(10)
    assert [results[i].status for i in range(2)] == ["interrupted", "interrupted"]


WIZER = b"""(module
  (import "wasi_snapshot_preview1" "fd_write" (func $w (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (global $inits (mut i32) (i32.const 0))
  (data (i32.const 200) "inits=?\\n")
  (func (export "wizer.initialize")
    (global.set $inits (i32.add (global.get $inits) (i32.const 1))))
  (func (export "_start")
    (i32.store8 (i32.const 206) (i32.add (i32.const 48) (global.get $inits)))
    (i32.store (i32.const 0) (i32.const 200)) (i32.store (i32.const 4) (i32.const 8))
    (drop (call $w (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8)))))
"""


def test_wasm_prepare_until_ready_runs_the_wizer_initializer_once() -> None:
    with sandcell.Sandbox("wasm", timeout=5.0) as sb:
        assert sb.run(WIZER).stdout == b"inits=0\n"
        with sb.prepare(WIZER, until_ready=True) as ready:
            for _ in range(2):
                assert ready.run().stdout == b"inits=1\n"
        with pytest.raises(sandcell.InvalidProgramError, match="wizer.initialize"):
            sb.prepare(REPO / "examples" / "hello.wat", until_ready=True)
