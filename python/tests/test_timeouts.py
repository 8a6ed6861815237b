"""`run(..., timeout=seconds)`: a per-run wall-clock limit, on top of the policy's, reported as
`timeout` like the policy's own."""

from __future__ import annotations

import json
import threading
import time

import pytest

import sandcell
from sandcell import _interrupt
from conftest import HELLO_WAT, Fixture
from test_async import GO_SPIN, SPIN


def test_a_run_timeout_stops_a_spinning_guest_as_a_timeout() -> None:
    with sandcell.Sandbox("wasm") as sb:  # no policy timeout
        started = time.monotonic()
        out = sb.run(SPIN, timeout=0.3)
    elapsed = time.monotonic() - started
    assert out.status is sandcell.Status.TIMEOUT and out.status == "timeout"
    assert 0.3 <= elapsed < 5
    assert out.usage.wall >= 0.25
    assert "0.3 s" in (out.detail or "")
    assert json.loads(out.to_json())["status"] == {"kind": "timeout"}
    assert not out.ok


def test_it_is_the_status_a_policy_timeout_gives() -> None:
    with sandcell.Sandbox("wasm", timeout="300ms") as sb:
        by_policy = sb.run(SPIN)
    with sandcell.Sandbox("wasm") as sb:
        by_run = sb.run(SPIN, timeout="300ms")
    assert by_policy.status is by_run.status is sandcell.Status.TIMEOUT
    assert json.loads(by_policy.to_json())["status"] == json.loads(by_run.to_json())["status"]


def test_the_policy_timeout_still_applies_when_the_run_timeout_is_longer() -> None:
    with sandcell.Sandbox("wasm", timeout="300ms") as sb:
        started = time.monotonic()
        out = sb.run(SPIN, timeout=60)
        assert out.status is sandcell.Status.TIMEOUT
        assert time.monotonic() - started < 5
        assert sb.policy.timeout == 0.3  # not widened


def test_the_timeout_ends_every_backend_guest(fx: Fixture) -> None:
    with fx.sandbox(timeout=30) as sb:
        for mode in ("spin", "sleep"):
            started = time.monotonic()
            out = fx.run(sb, mode, *(["60000"] if mode == "sleep" else []), timeout=0.3)
            assert out.status is sandcell.Status.TIMEOUT, (mode, out)
            assert time.monotonic() - started < 5
        assert fx.run(sb, "exit", "0", timeout=30).ok


def test_a_run_that_ends_in_time_is_untouched_and_leaves_no_timer() -> None:
    before = _interrupt.DEADLINES.pending()
    with sandcell.Sandbox("wasm") as sb:
        for _ in range(200):
            out = sb.run(HELLO_WAT.encode(), timeout=3600)
            assert out.ok and out.detail is None
    assert _interrupt.DEADLINES.pending() == before


def test_with_streaming_output() -> None:
    seen = []
    with sandcell.Sandbox("wasm") as sb:
        out = sb.run(GO_SPIN, on_stdout=seen.append, timeout=0.3)
    assert out.status is sandcell.Status.TIMEOUT
    assert out.stdout == b"go\n" and b"".join(seen) == b"go\n"


def test_an_interrupt_before_the_timeout_is_an_interrupt() -> None:
    with sandcell.Sandbox("wasm") as sb:
        handle = sandcell.Interrupt()
        threading.Timer(0.2, handle.trigger).start()
        started = time.monotonic()
        out = sb.run(SPIN, interrupt=handle, timeout=30)
        assert out.status is sandcell.Status.INTERRUPTED
        assert time.monotonic() - started < 5
        # Triggered before the run: it ends at once, interrupted.
        assert sb.run(SPIN, interrupt=handle, timeout=30).status is sandcell.Status.INTERRUPTED
        # Sandbox.interrupt() too.
        result = {}
        t = threading.Thread(target=lambda: result.update(out=sb.run(SPIN, timeout=30)))
        t.start()
        time.sleep(0.3)
        sb.interrupt()
        t.join(10)
        assert result["out"].status is sandcell.Status.INTERRUPTED


def test_the_timeout_is_checked() -> None:
    with sandcell.Sandbox("wasm") as sb:
        for bad in (0, -1, 0.0, float("nan"), float("inf"), "0s", "soon", "-2s"):
            with pytest.raises(sandcell.InvalidArgumentError, match="timeout"):
                sb.run(HELLO_WAT.encode(), timeout=bad)
        for wrong in (True, b"1s", [1]):
            with pytest.raises(TypeError):
                sb.run(HELLO_WAT.encode(), timeout=wrong)  # type: ignore[arg-type]
        with pytest.raises(TypeError):
            sb.run(HELLO_WAT.encode(), interrupt=object(), timeout=1)  # type: ignore[arg-type]


def test_the_deadline_thread_runs_many_timeouts_in_order() -> None:
    fired = []
    lock = threading.Lock()

    def note(i: int) -> None:
        with lock:
            fired.append(i)

    entries = [_interrupt.DEADLINES.add(0.05 + 0.01 * i, lambda i=i: note(i)) for i in reversed(range(10))]
    _interrupt.DEADLINES.cancel(entries[0])  # i == 9
    deadline = time.monotonic() + 5
    while len(fired) < 9 and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.1)
    assert fired == list(range(9))
