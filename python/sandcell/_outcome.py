"""Outcomes: how a run ended, what it wrote and what it used."""

import ctypes
import enum
import json
from ctypes import byref, c_void_p
from typing import Any, Dict, NamedTuple, Optional

from . import _lib
from ._errors import check
from ._lib import lib


class Status(str, enum.Enum):
    """How a run ended: every status of the C ABI (`SANDCELL_STATUS_*`).

    A `str` as well: `outcome.status == "timeout"` holds, and `str()`, f-strings and `json`
    give the bare name (`"timeout"`, not `"Status.TIMEOUT"`).

    - `EXITED`: the guest exited by itself; `Outcome.exit_code` is its code.
    - `TIMEOUT`: the wall-clock limit passed: the policy's `timeout`, or `run(timeout=...)`.
    - `MEMORY_LIMIT`: the guest hit the memory cap.
    - `CPU_LIMIT`: the CPU-time limit or the fuel budget ran out.
    - `OUTPUT_LIMIT`: stdout or stderr reached `max_output`.
    - `SIGNALED`: a signal killed the guest process; `Outcome.signal` is the signal.
    - `TRAP`: the guest faulted; `Outcome.trap` is the trap kind.
    - `SYSCALL_DENIED`: the guest made a system call the policy denies.
    - `INTERRUPTED`: an interrupt stopped the run (`Interrupt.trigger()`, `Sandbox.interrupt()`,
      an output callback that raised, a cancelled `run_async()`).

    A library newer than this package may report a status it does not list: that outcome's
    status is then a `Status` outside the enumeration, whose value is the library's name for it.
    """

    EXITED = "exited"
    TIMEOUT = "timeout"
    MEMORY_LIMIT = "memory_limit"
    CPU_LIMIT = "cpu_limit"
    OUTPUT_LIMIT = "output_limit"
    SIGNALED = "signaled"
    TRAP = "trap"
    SYSCALL_DENIED = "syscall_denied"
    INTERRUPTED = "interrupted"

    def __str__(self) -> str:
        return str.__str__(self)

    def __format__(self, spec: str) -> str:
        return str.__format__(self, spec)


_UNLISTED: Dict[str, Status] = {}


def status_named(name: str) -> Status:
    """The Status of a name the library reported, listed or not."""
    try:
        return Status(name)
    except ValueError:
        pass
    status = _UNLISTED.get(name)
    if status is None:
        # A member outside the enumeration (as enum.Flag makes for combinations): Status("...")
        # still refuses the name, so a typo in user code is not mistaken for a new status.
        status = str.__new__(Status, name)
        status._name_ = name.upper()
        status._value_ = name
        status = _UNLISTED.setdefault(name, status)
    return status


class Usage(NamedTuple):
    """What a run consumed."""

    wall: float
    cpu: float
    peak_memory_bytes: int
    fuel: Optional[int]


Usage.wall.__doc__ = "Wall-clock seconds."
Usage.cpu.__doc__ = "CPU seconds of the guest (all its threads and processes)."
Usage.peak_memory_bytes.__doc__ = (
    "Peak memory: wasm linear memory, the process tree's peak, or the micro-VM RAM touched."
)
Usage.fuel.__doc__ = "Fuel consumed, when the policy set a fuel budget."


_Summary = _lib.Summary
_SUMMARY_SIZE = _lib.SUMMARY_SIZE
_outcome_summary = lib.sandcell_outcome_summary
_string_at = ctypes.string_at
_EXITED = _lib.STATUS_EXITED
_SIGNALED = _lib.STATUS_SIGNALED
_STATUSES: Dict[int, Status] = {}


def _status_at(address: int) -> Status:
    """The status of a static name the library handed out, decoded once."""
    status = _STATUSES.get(address)
    if status is None:
        status = _STATUSES[address] = status_named(ctypes.string_at(address).decode())
    return status


_TRAPS: Dict[int, str] = {}


def _trap_at(address: int) -> str:
    name = _TRAPS.get(address)
    if name is None:
        name = _TRAPS[address] = ctypes.string_at(address).decode()
    return name


class Outcome:
    """How a run ended, its captured output and its resource use.

    `status` is a `Status`. `exit_code` is set for `EXITED`, `signal` for `SIGNALED`, `trap`
    (the trap kind, e.g. `unreachable`) for `TRAP`; `detail` says more where there is more to
    say. `stdout` and `stderr` are bytes; `usage` is a `Usage`. `ok` is true when the guest
    exited with code 0, and `check()` raises `OutcomeError` when it did not.
    """

    __slots__ = (
        "status",
        "exit_code",
        "signal",
        "trap",
        "detail",
        "stdout",
        "stderr",
        "usage",
        "_handle",
        "_doc",
        "_run_timeout",
    )

    status: Status
    exit_code: Optional[int]
    signal: Optional[int]
    trap: Optional[str]
    detail: Optional[str]
    stdout: bytes
    stderr: bytes
    usage: Usage

    def __init__(self, handle: c_void_p) -> None:
        self._handle: Optional[c_void_p] = handle
        self._doc: Optional[Dict[str, Any]] = None
        self._run_timeout: Optional[float] = None
        # One call reads everything (each crossing of the ABI costs about a microsecond).
        s = _Summary(_SUMMARY_SIZE)
        error = _outcome_summary(handle, byref(s))
        if error:
            check(error)
        self.status = _status_at(s.kind)
        code = s.code
        status = s.status
        self.exit_code = code if status == _EXITED else None
        self.signal = code if status == _SIGNALED else None
        self.trap = _trap_at(s.trap_kind) if s.trap_kind else None
        self.detail = ctypes.string_at(s.detail).decode("utf-8", "replace") if s.detail else None
        self.stdout = _string_at(s.stdout_data, s.stdout_len) if s.stdout_len else b""
        self.stderr = _string_at(s.stderr_data, s.stderr_len) if s.stderr_len else b""
        u = s.usage
        self.usage = Usage(u.wall_ns / 1e9, u.cpu_ns / 1e9, u.peak_memory_bytes, u.fuel if u.has_fuel else None)

    def _timed_out(self, seconds: float) -> None:
        """The run's own timeout stopped it (through an interrupt): report it as a timeout."""
        self.status = Status.TIMEOUT
        self.detail = f"the run's timeout ({seconds:g} s) passed"
        self._run_timeout = seconds

    @property
    def ok(self) -> bool:
        """True when the guest exited with code 0."""
        return self.status == Status.EXITED and self.exit_code == 0

    def check(self) -> "Outcome":
        """Returns the outcome when the guest exited with code 0; raises `OutcomeError` (which
        holds the outcome) for any other status or exit code."""
        if not self.ok:
            raise OutcomeError(self)
        return self

    def _json_doc(self) -> Dict[str, Any]:
        if self._doc is None:
            out = c_void_p()
            check(lib.sandcell_outcome_to_json(self._handle, byref(out)))
            doc = json.loads(_lib.take_string(out))
            if self._run_timeout is not None:
                doc["status"] = {"kind": Status.TIMEOUT.value}  # as a policy timeout writes it
            self._doc = doc
        return self._doc

    def to_json(self) -> str:
        """The JSON object of the CLI's `--json` contract."""
        return json.dumps(self._json_doc())

    @property
    def enforced(self) -> Dict[str, str]:
        """For each policy field that needed a mechanism, the mechanism that enforced it."""
        return dict(self._json_doc()["enforced"])

    @property
    def skipped(self) -> Dict[str, str]:
        """Fields a `best_effort` policy could not enforce, and why."""
        return dict(self._json_doc()["skipped"])

    def __del__(self) -> None:
        handle, self._handle = getattr(self, "_handle", None), None
        if handle:
            lib.sandcell_outcome_free(handle)

    def __repr__(self) -> str:
        extra = (
            f" exit_code={self.exit_code}" if self.exit_code is not None else f" detail={self.detail!r}" if self.detail else ""
        )
        return f"<Outcome {self.status}{extra} stdout={len(self.stdout)}B stderr={len(self.stderr)}B>"


def _describe(outcome: Outcome) -> str:
    status = outcome.status
    if status == Status.EXITED:
        what = f"exited with code {outcome.exit_code}"
    elif status == Status.SIGNALED:
        what = f"was killed by signal {outcome.signal}"
    elif status == Status.TRAP:
        what = f"trapped ({outcome.trap})"
    else:
        what = f"ended with status {status}"
    if outcome.detail and status != Status.EXITED:
        what += f": {outcome.detail}"
    lines = outcome.stderr.decode("utf-8", "replace").strip().splitlines()
    if lines:
        last = lines[-1] if len(lines[-1]) <= 200 else lines[-1][:200] + "..."
        what += f" (stderr ends with: {last})"
    return "the guest " + what


class OutcomeError(Exception):
    """Raised by `Outcome.check()`: the run ended otherwise than with exit code 0.

    `outcome` is the `Outcome` (with its output and usage), `status` and `exit_code` are its own.
    It is not a `SandcellError`: those mean the host could not run the program; this means the
    program ran, and failed.
    """

    def __init__(self, outcome: Outcome) -> None:
        super().__init__(_describe(outcome))
        self.outcome = outcome

    @property
    def status(self) -> Status:
        """The outcome's status."""
        return self.outcome.status

    @property
    def exit_code(self) -> Optional[int]:
        """The outcome's exit code (for `Status.EXITED`), else None."""
        return self.outcome.exit_code
