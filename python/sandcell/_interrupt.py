"""Interrupt handles, and what stops one run: its timeout, a cancelled task, an interrupt.

The C ABI stops a run through an interrupt handle (`sandcell_interrupt_t`) given in its options,
one per run. A run with a timeout, or started by `Sandbox.run_async()`, gets a private handle of
its own (a `RunStop`): the timer, the task's cancellation, the caller's `Interrupt` and
`Sandbox.interrupt()` all trigger it, and the first of them is remembered as the cause, so that
an interrupted run can be reported as the timeout it was.
"""

import heapq
import itertools
import os
import sys
import threading
import time
import traceback
from ctypes import byref, c_void_p
from typing import Callable, List, Optional, Set, Tuple

from ._errors import check
from ._lib import lib


class Interrupt:
    """Stops the runs it is passed to (`sandbox.run(..., interrupt=handle)`), from any thread.

    Once triggered it stays triggered: a run started with it afterwards ends at once, with
    status `interrupted`. (`Sandbox.interrupt()` instead stops only the runs in progress.)
    """

    def __init__(self) -> None:
        handle = c_void_p()
        check(lib.sandcell_interrupt_new(byref(handle)))
        self._handle: Optional[c_void_p] = handle
        self._lock = threading.RLock()  # RLock: trigger() may run in a signal handler
        self._triggered = False
        # The private stops of runs given this handle along with a timeout (or run_async):
        # they do not watch this handle in C, so trigger() stops them.
        self._followers: Set["RunStop"] = set()

    def trigger(self) -> None:
        """Stops the attached runs; returns at once."""
        with self._lock:
            self._triggered = True
            followers = list(self._followers)
        check(lib.sandcell_interrupt_trigger(self._handle))
        for stop in followers:
            stop.stop(INTERRUPT)

    @property
    def triggered(self) -> bool:
        """Whether `trigger()` was called."""
        return self._triggered

    def __del__(self) -> None:
        handle, self._handle = getattr(self, "_handle", None), None
        if handle:
            lib.sandcell_interrupt_free(handle)


# Why a RunStop stopped its run.
TIMEOUT = "timeout"
INTERRUPT = "interrupt"
CANCEL = "cancel"


class RunStop:
    """The private interrupt handle of one run, and the first reason it was triggered for."""

    __slots__ = ("handle", "cause", "_interrupt", "_lock", "_caller", "_timer")

    def __init__(self, caller: Optional[Interrupt]) -> None:
        self._interrupt = Interrupt()
        self.handle = self._interrupt._handle
        self.cause: Optional[str] = None
        self._lock = threading.Lock()
        self._timer: Optional[List[Optional[Callable[[], None]]]] = None
        self._caller = caller
        if caller is not None:
            with caller._lock:
                caller._followers.add(self)
                already = caller._triggered
            if already:
                self.stop(INTERRUPT)

    def stop(self, cause: str) -> None:
        """Stops the run; the first cause given is kept."""
        with self._lock:
            if self.cause is not None:
                return
            self.cause = cause
        self._interrupt.trigger()

    def start_timer(self, seconds: float) -> None:
        """Stops the run with cause TIMEOUT in `seconds`."""
        self._timer = DEADLINES.add(seconds, self._time_out)

    def _time_out(self) -> None:
        self.stop(TIMEOUT)

    def close(self) -> None:
        """Called when the run has returned: cancels the timer, detaches from the caller's handle."""
        if self._timer is not None:
            DEADLINES.cancel(self._timer)
        if self._caller is not None:
            with self._caller._lock:
                self._caller._followers.discard(self)


Entry = List[Optional[Callable[[], None]]]  # [function], [None] once it ran or was cancelled


class Deadlines:
    """One thread that calls functions when their time comes: the timeouts of runs. (A
    threading.Timer would start a thread per run.)"""

    def __init__(self) -> None:
        self._reset()
        if hasattr(os, "register_at_fork"):
            os.register_at_fork(after_in_child=self._reset)  # the thread does not survive fork()

    def _reset(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._heap: List[Tuple[float, int, Entry]] = []
        self._order = itertools.count()
        self._cancelled = 0
        self._thread: Optional[threading.Thread] = None

    def add(self, seconds: float, function: Callable[[], None]) -> Entry:
        """Calls `function` on the deadline thread in `seconds`, unless cancelled before."""
        entry: Entry = [function]
        with self._cond:
            heapq.heappush(self._heap, (time.monotonic() + seconds, next(self._order), entry))
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name="sandcell-deadlines", daemon=True)
                self._thread.start()
            else:
                self._cond.notify()
        return entry

    def cancel(self, entry: Entry) -> None:
        """Cancels a call `add()` scheduled; nothing happens if it has already run."""
        with self._cond:
            if entry[0] is None:
                return
            entry[0] = None
            self._cancelled += 1
            # Runs usually end long before their timeout: drop cancelled entries in bulk, so that
            # many short runs with a long timeout do not pile up.
            if self._cancelled > 64 and 2 * self._cancelled > len(self._heap):
                self._heap = [e for e in self._heap if e[2][0] is not None]
                heapq.heapify(self._heap)
                self._cancelled = 0

    def pending(self) -> int:
        """How many calls are scheduled and not cancelled."""
        with self._cond:
            return sum(1 for e in self._heap if e[2][0] is not None)

    def _loop(self) -> None:
        cond = self._cond
        while True:
            with cond:
                while True:
                    heap = self._heap
                    while heap and heap[0][2][0] is None:
                        heapq.heappop(heap)
                        self._cancelled -= 1
                    if not heap:
                        cond.wait()
                        continue
                    delay = heap[0][0] - time.monotonic()
                    if delay <= 0:
                        break
                    cond.wait(delay)
                entry = heapq.heappop(heap)[2]
                function, entry[0] = entry[0], None
            try:
                function()  # type: ignore[misc]
            except Exception:  # keep the thread serving the other runs; say what happened
                print("sandcell: a run's timeout failed to stop it:", file=sys.stderr)
                traceback.print_exc()


DEADLINES = Deadlines()
