"""`await sandbox.run_async(...)`: the run goes on off the event loop, and cancelling the task
stops it."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any, Coroutine

import pytest

import sandcell
from conftest import HELLO_WAT
from test_api import GO_SPIN  # prints "go\n", then spins

# The spinning guest of the issue: it never ends by itself.
SPIN = b'(module (func (export "_start") (loop (br 0))))'


def run(coro: Coroutine[Any, Any, Any]) -> Any:
    return asyncio.run(coro)


def run_threads() -> int:
    return sum(1 for t in threading.enumerate() if t.name == "sandcell-run")


def assert_no_guest_spins() -> None:
    """No run thread is left, and this process no longer burns CPU (a spinning guest runs on a
    thread of this process, and would use about all of the 0.4 s measured)."""
    deadline = time.monotonic() + 5
    while run_threads() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert run_threads() == 0
    cpu, wall = time.process_time(), time.monotonic()
    time.sleep(0.4)
    used = time.process_time() - cpu
    assert used < 0.5 * (time.monotonic() - wall), f"{used:.2f} s of CPU in 0.4 s: a guest still runs"


def test_run_async_returns_the_outcome_without_blocking_the_loop() -> None:
    async def main() -> None:
        ticks = 0

        async def ticker() -> None:
            nonlocal ticks
            while True:
                await asyncio.sleep(0.01)
                ticks += 1

        t = asyncio.ensure_future(ticker())
        with sandcell.Sandbox("wasm", timeout="500ms") as sb:
            hello = await sb.run_async(HELLO_WAT.encode())
            spun = await sb.run_async(SPIN)  # blocks its thread for 0.5 s, not the loop
        t.cancel()
        assert hello.ok and hello.stdout == b"Hello, world!\n"
        assert spun.status is sandcell.Status.TIMEOUT
        assert ticks >= 10, ticks

    run(main())


def test_cancelling_the_task_stops_a_running_guest_promptly() -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        started = asyncio.Event()
        with sandcell.Sandbox("wasm", timeout=60) as sb:
            task = asyncio.ensure_future(
                sb.run_async(GO_SPIN, on_stdout=lambda _: loop.call_soon_threadsafe(started.set))
            )
            await asyncio.wait_for(started.wait(), 20)
            await asyncio.sleep(0.1)
            assert run_threads() == 1 and not task.done()
            cancelled_at = time.monotonic()
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            assert task.cancelled()
            assert time.monotonic() - cancelled_at < 2, "the cancelled task should end at once"
            # The run has returned by the time the task ends (its thread may still be exiting).
            assert sb._runs == 0
            # The sandbox is still usable.
            assert (await sb.run_async(HELLO_WAT.encode())).ok

    run(main())
    assert_no_guest_spins()


def test_wait_for_stops_the_spinning_guest() -> None:
    async def main() -> None:
        with sandcell.Sandbox("wasm", timeout=60) as sb:
            started = time.monotonic()
            with pytest.raises(asyncio.TimeoutError):
                await asyncio.wait_for(sb.run_async(SPIN), 0.5)
            assert time.monotonic() - started < 3

    run(main())
    assert_no_guest_spins()


def test_a_cancellation_as_the_run_starts_stops_it() -> None:
    """Cancelled before the library has started the run: the run starts stopped."""

    async def main() -> None:
        with sandcell.Sandbox("wasm", timeout=60) as sb:
            for delay in (0, 0.001, 0.01, 0.05):
                task = asyncio.ensure_future(sb.run_async(SPIN))
                await asyncio.sleep(delay)
                started = time.monotonic()
                task.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await task
                assert time.monotonic() - started < 2

    run(main())
    assert_no_guest_spins()


def test_a_second_cancellation_still_waits_for_the_run_to_stop() -> None:
    async def main() -> None:
        with sandcell.Sandbox("wasm", timeout=60) as sb:
            task = asyncio.ensure_future(sb.run_async(SPIN))
            await asyncio.sleep(0.3)
            task.cancel()
            await asyncio.sleep(0)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            assert sb._runs == 0

    run(main())
    assert_no_guest_spins()


def test_run_async_timeout_interrupt_and_errors() -> None:
    async def main() -> None:
        with sandcell.Sandbox("wasm", timeout=60) as sb:
            out = await sb.run_async(SPIN, timeout=0.3)
            assert out.status is sandcell.Status.TIMEOUT and out.usage.wall < 5
            handle = sandcell.Interrupt()
            task = asyncio.ensure_future(sb.run_async(SPIN, interrupt=handle))
            await asyncio.sleep(0.2)
            handle.trigger()
            assert (await asyncio.wait_for(task, 5)).status is sandcell.Status.INTERRUPTED
            with pytest.raises(sandcell.InvalidProgramError):
                await sb.run_async(b"\x00asm\x01\x00\x00\x00\xff")
            with pytest.raises(sandcell.InvalidArgumentError):
                await sb.run_async(SPIN, timeout=0)

    run(main())


def test_runs_awaited_together_run_at_once() -> None:
    """Four guests spinning until their 0.5 s timeout take about 0.5 s together, not 2 s."""

    async def main() -> None:
        with sandcell.Sandbox("wasm", timeout=60) as sb:
            await sb.run_async(SPIN, timeout=0.05)  # compiled once, before timing
            started = time.monotonic()
            outs = await asyncio.gather(*(sb.run_async(SPIN, timeout=0.5) for _ in range(4)))
            elapsed = time.monotonic() - started
        assert [o.status for o in outs] == [sandcell.Status.TIMEOUT] * 4
        assert elapsed < 1.8, elapsed

    run(main())
