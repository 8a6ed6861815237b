"""sandcell: run untrusted code behind one API — WebAssembly, a confined Linux process, or a KVM
micro-VM.

    import sandcell

    with sandcell.Sandbox("wasm", memory="64M", timeout=2.0) as sandbox:
        outcome = sandbox.run("examples/hello.wat", args=["world"], stdin=b"input")
        print(outcome.status, outcome.exit_code, outcome.stdout)

A `Sandbox` is a backend with a `Policy` applied; it runs any number of programs, from any
number of threads at once (the GIL is released while a guest runs). What the guest did — exit,
timeout, trap, memory limit, ... — is an `Outcome`; an exception means the host could not run it
(a bad policy or program, a backend this host lacks): see `SandcellError` and its subclasses.
"""

from __future__ import annotations

import ctypes
import json
import os
import threading
from ctypes import byref, c_void_p
from dataclasses import dataclass
from typing import (
    Any,
    Callable,
    Dict,
    Iterable,
    List,
    Mapping,
    NamedTuple,
    Optional,
    Sequence,
    Tuple,
    Union,
)

from . import _lib
from ._lib import lib

__all__ = [
    "BackendUnavailableError",
    "HostError",
    "InternalError",
    "Interrupt",
    "InvalidArgumentError",
    "InvalidPolicyError",
    "InvalidProgramError",
    "Mount",
    "Outcome",
    "Policy",
    "Sandbox",
    "SandcellError",
    "UnenforceableError",
    "Usage",
    "probe",
    "__version__",
]

__version__: str = lib.sandcell_version().decode()

# ------------------------------------------------------------------------------------------------
# Errors: one class per error kind of the C ABI.


class SandcellError(Exception):
    """The host could not do what was asked. `kind` is the C ABI's error kind name."""

    kind: str = "error"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidPolicyError(SandcellError, ValueError):
    """A policy field has a value that makes no sense (the message names the field)."""

    kind = "invalid_policy"


class UnenforceableError(SandcellError):
    """The backend cannot enforce a policy field on this host (and `best_effort` is off)."""

    kind = "unenforceable"


class BackendUnavailableError(SandcellError):
    """The backend cannot run on this host (no /dev/kvm, ...)."""

    kind = "backend_unavailable"


class InvalidProgramError(SandcellError, ValueError):
    """The program cannot be read, or is not something the backend runs."""

    kind = "invalid_program"


class HostError(SandcellError):
    """The host failed to set up the run (a system call, the compiled-module cache)."""

    kind = "host"


class InvalidArgumentError(SandcellError, ValueError):
    """An argument the C ABI refused (a string with a NUL byte, a closed object, ...)."""

    kind = "invalid_argument"


class InternalError(SandcellError):
    """A bug in sandcell."""

    kind = "internal"


_ERRORS = {
    _lib.ERROR_INVALID_POLICY: InvalidPolicyError,
    _lib.ERROR_UNENFORCEABLE: UnenforceableError,
    _lib.ERROR_BACKEND_UNAVAILABLE: BackendUnavailableError,
    _lib.ERROR_INVALID_PROGRAM: InvalidProgramError,
    _lib.ERROR_HOST: HostError,
    _lib.ERROR_INVALID_ARGUMENT: InvalidArgumentError,
    _lib.ERROR_INTERNAL: InternalError,
}


def _check(error: Optional[int]) -> None:
    """Raises the exception for an error the library returned (and frees it)."""
    if not error:
        return
    try:
        kind = lib.sandcell_error_kind(error)
        message = lib.sandcell_error_message(error).decode("utf-8", "replace")
    finally:
        lib.sandcell_error_free(error)
    raise _ERRORS.get(kind, SandcellError)(message)


def _text(value: Union[str, "os.PathLike[str]"], what: str) -> bytes:
    s = os.fspath(value)
    if not isinstance(s, str):
        raise TypeError(f"{what} must be a str or a path, not {type(value).__name__}")
    if "\0" in s:
        raise InvalidArgumentError(f"{what} contains a NUL character")
    return s.encode("utf-8", "surrogateescape")


# ------------------------------------------------------------------------------------------------
# Policies.

Size = Union[int, str]
Duration = Union[int, float, str]


@dataclass(frozen=True)
class Mount:
    """A host directory visible inside the sandbox at `guest`; read-only unless `writable`."""

    host: str
    guest: str
    writable: bool = False

    def to_dict(self) -> Dict[str, Any]:
        return {"host": os.fspath(self.host), "guest": os.fspath(self.guest), "writable": self.writable}


MountLike = Union[Mount, Tuple[str, str], Tuple[str, str, bool], Mapping[str, Any]]

_UNSET: Any = object()


def _mount(m: MountLike) -> Dict[str, Any]:
    if isinstance(m, Mount):
        return m.to_dict()
    if isinstance(m, Mapping):
        return dict(m)
    if isinstance(m, (tuple, list)) and len(m) in (2, 3):
        return Mount(os.fspath(m[0]), os.fspath(m[1]), bool(m[2]) if len(m) == 3 else False).to_dict()
    raise TypeError(f"a mount is a Mount, a (host, guest[, writable]) tuple or a dict, not {m!r}")


class Policy:
    """Limits and permissions of a sandbox.

    Every field is optional; what is not given keeps sandcell's default (512 MiB memory, 16 MiB
    per output stream, 64 processes, 256 open files, no timeout, no network, no mounts). Sizes
    are bytes or strings with a unit (`"64M"`, `"1G"`); durations are seconds or strings with a
    unit (`"500ms"`, `"2s"`). `None` removes a limit that has a default (`memory=None`: no cap).
    The policy is checked when it is made: a bad value raises `InvalidPolicyError` naming the
    field.
    """

    FIELDS = (
        "memory",
        "timeout",
        "cpu_time",
        "fuel",
        "cpus",
        "max_processes",
        "max_open_files",
        "max_file_size",
        "max_output",
        "mounts",
        "system_dirs",
        "network",
        "env",
        "deny_syscalls",
        "best_effort",
    )

    def __init__(
        self,
        *,
        memory: Optional[Size] = _UNSET,
        timeout: Optional[Duration] = _UNSET,
        cpu_time: Optional[Duration] = _UNSET,
        fuel: Optional[int] = _UNSET,
        cpus: Optional[int] = _UNSET,
        max_processes: Optional[int] = _UNSET,
        max_open_files: Optional[int] = _UNSET,
        max_file_size: Optional[Size] = _UNSET,
        max_output: Size = _UNSET,
        mounts: Iterable[MountLike] = _UNSET,
        system_dirs: Optional[Sequence[str]] = _UNSET,
        network: str = _UNSET,
        env: Optional[Mapping[str, str]] = _UNSET,
        deny_syscalls: Iterable[str] = _UNSET,
        best_effort: bool = _UNSET,
    ) -> None:
        given = dict(
            memory=memory,
            timeout=timeout,
            cpu_time=cpu_time,
            fuel=fuel,
            cpus=cpus,
            max_processes=max_processes,
            max_open_files=max_open_files,
            max_file_size=max_file_size,
            max_output=max_output,
            mounts=mounts,
            system_dirs=system_dirs,
            network=network,
            env=env,
            deny_syscalls=deny_syscalls,
            best_effort=best_effort,
        )
        doc: Dict[str, Any] = {}
        for key, value in given.items():
            if value is _UNSET:
                continue
            if key == "mounts":
                value = [_mount(m) for m in value]
            elif key in ("system_dirs",) and value is not None:
                value = [os.fspath(d) for d in value]
            elif key == "deny_syscalls":
                value = list(value)
            elif key == "env" and value is not None:
                value = dict(value)
            doc[key] = value
        self._json = self._normalize(json.dumps(doc))

    @staticmethod
    def _normalize(text: str) -> str:
        """Validates a JSON document through the library and returns its canonical form."""
        handle = c_void_p()
        _check(lib.sandcell_policy_from_json(text.encode("utf-8"), byref(handle)))
        try:
            out = c_void_p()
            _check(lib.sandcell_policy_to_json(handle, byref(out)))
            return _lib.take_string(out)
        finally:
            lib.sandcell_policy_free(handle)

    @classmethod
    def from_json(cls, text: str) -> "Policy":
        """A policy from its JSON document (the schema in the README; unknown fields refused)."""
        p = cls.__new__(cls)
        p._json = cls._normalize(text)
        return p

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any]) -> "Policy":
        """A policy from a dict of the JSON schema."""
        return cls.from_json(json.dumps(dict(doc)))

    def to_json(self) -> str:
        """The canonical JSON document (every field, sizes in bytes)."""
        return self._json

    def to_dict(self) -> Dict[str, Any]:
        return json.loads(self._json)

    def replace(self, **changes: Any) -> "Policy":
        """A copy with some fields changed."""
        doc = self.to_dict()
        for key, value in changes.items():
            if key not in self.FIELDS:
                raise TypeError(f"Policy has no field {key!r}")
            if key == "mounts":
                value = [_mount(m) for m in value]
            doc[key] = value
        return Policy.from_dict(doc)

    def __getattr__(self, name: str) -> Any:
        if name in Policy.FIELDS:
            return self.to_dict()[name]
        raise AttributeError(name)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Policy) and self._json == other._json

    def __hash__(self) -> int:
        return hash(self._json)

    def __repr__(self) -> str:
        return f"Policy.from_json({self._json!r})"


# ------------------------------------------------------------------------------------------------
# Interrupt handles.


class Interrupt:
    """Stops the runs it is passed to (`sandbox.run(..., interrupt=handle)`), from any thread.

    Once triggered it stays triggered: a run started with it afterwards ends at once, with
    status `interrupted`. (`Sandbox.interrupt()` instead stops only the runs in progress.)
    """

    def __init__(self) -> None:
        handle = c_void_p()
        _check(lib.sandcell_interrupt_new(byref(handle)))
        self._handle: Optional[c_void_p] = handle

    def trigger(self) -> None:
        """Stops the attached runs; returns at once."""
        _check(lib.sandcell_interrupt_trigger(self._handle))

    def __del__(self) -> None:
        handle, self._handle = getattr(self, "_handle", None), None
        if handle:
            lib.sandcell_interrupt_free(handle)


# ------------------------------------------------------------------------------------------------
# Outcomes.


class Usage(NamedTuple):
    """What a run consumed."""

    wall: float
    """Wall-clock seconds."""
    cpu: float
    """CPU seconds of the guest (all its threads and processes)."""
    peak_memory_bytes: int
    """Peak memory: wasm linear memory, the process tree's peak, or the micro-VM RAM touched."""
    fuel: Optional[int]
    """Fuel consumed, when the policy set a fuel budget."""


_Summary = _lib.Summary
_SUMMARY_SIZE = _lib.SUMMARY_SIZE
_outcome_summary = lib.sandcell_outcome_summary
_string_at = ctypes.string_at
_EXITED = _lib.STATUS_EXITED
_SIGNALED = _lib.STATUS_SIGNALED
_NAMES: Dict[int, str] = {}


def _name(address: int) -> str:
    """A static name the library handed out (status and trap kinds), decoded once."""
    name = _NAMES.get(address)
    if name is None:
        name = _NAMES[address] = ctypes.string_at(address).decode()
    return name


class Outcome:
    """How a run ended, its captured output and its resource use.

    `status` is one of `exited`, `timeout`, `memory_limit`, `cpu_limit`, `output_limit`,
    `signaled`, `trap`, `syscall_denied`, `interrupted`. `exit_code` is set for `exited`,
    `signal` for `signaled`, `trap` (the trap kind, e.g. `unreachable`) for `trap`; `detail`
    says more where there is more to say.
    """

    __slots__ = ("status", "exit_code", "signal", "trap", "detail", "stdout", "stderr", "usage", "_handle", "_doc")

    status: str
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
        # One call reads everything (each crossing of the ABI costs about a microsecond).
        s = _Summary(_SUMMARY_SIZE)
        error = _outcome_summary(handle, byref(s))
        if error:
            _check(error)
        self.status = _name(s.kind)
        code = s.code
        status = s.status
        self.exit_code = code if status == _EXITED else None
        self.signal = code if status == _SIGNALED else None
        self.trap = _name(s.trap_kind) if s.trap_kind else None
        self.detail = ctypes.string_at(s.detail).decode("utf-8", "replace") if s.detail else None
        self.stdout = _string_at(s.stdout_data, s.stdout_len) if s.stdout_len else b""
        self.stderr = _string_at(s.stderr_data, s.stderr_len) if s.stderr_len else b""
        u = s.usage
        self.usage = Usage(u.wall_ns / 1e9, u.cpu_ns / 1e9, u.peak_memory_bytes, u.fuel if u.has_fuel else None)

    @property
    def ok(self) -> bool:
        """True when the guest exited with code 0."""
        return self.status == "exited" and self.exit_code == 0

    def _json_doc(self) -> Dict[str, Any]:
        if self._doc is None:
            out = c_void_p()
            _check(lib.sandcell_outcome_to_json(self._handle, byref(out)))
            self._doc = json.loads(_lib.take_string(out))
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


# ------------------------------------------------------------------------------------------------
# Sandboxes.

Program = Union[str, "os.PathLike[str]", bytes, bytearray, memoryview]
OutputCallback = Callable[[bytes], None]


_program_from_bytes = lib.sandcell_program_from_bytes
_program_free = lib.sandcell_program_free
_sandbox_run = lib.sandcell_sandbox_run


def _configure(
    prog: c_void_p,
    args: Sequence[str],
    stdin: Optional[Union[bytes, str]],
    env: Optional[Mapping[str, str]],
    cwd: Optional[str],
    entry: Optional[str],
    name: Optional[str],
) -> None:
    """Sets a program's arguments, stdin, environment, working directory, entry and name."""
    if isinstance(args, (str, bytes)):
        raise TypeError("args must be a sequence of strings, not a single string")
    for a in args:
        _check(lib.sandcell_program_add_arg(prog, _text(a, "argument")))
    if stdin is not None:
        data = stdin.encode() if isinstance(stdin, str) else bytes(stdin)
        _check(lib.sandcell_program_set_stdin(prog, data, len(data)))
    for k, v in (env or {}).items():
        _check(lib.sandcell_program_set_env(prog, _text(k, "env name"), _text(v, "env value")))
    if cwd is not None:
        _check(lib.sandcell_program_set_cwd(prog, _text(cwd, "cwd")))
    if entry is not None:
        _check(lib.sandcell_program_set_entry(prog, _text(entry, "entry")))
    if name is not None:
        _check(lib.sandcell_program_set_name(prog, _text(name, "name")))


class Sandbox:
    """A backend (`"wasm"`, `"process"` or `"microvm"`) with a policy applied.

    Give either a `Policy` or its fields as keyword arguments:
    `Sandbox("wasm", memory="64M", timeout=2.0, mounts=[("/data", "/data")])`. One sandbox runs
    any number of programs, from any number of threads at once. Use it as a context manager, or
    call `close()`; runs still in progress on other threads finish first.
    """

    def __init__(
        self,
        backend: str = "wasm",
        policy: Optional[Policy] = None,
        *,
        cache_dir: Optional[Union[str, "os.PathLike[str]"]] = None,
        **policy_fields: Any,
    ) -> None:
        if policy is not None and policy_fields:
            raise TypeError("give a Policy or policy fields, not both")
        if policy is None:
            policy = Policy(**policy_fields)
        elif not isinstance(policy, Policy):
            raise TypeError(f"policy must be a sandcell.Policy, not {type(policy).__name__}")
        self.backend = backend
        self.policy = policy
        self._lock = threading.Lock()
        self._runs = 0
        self._closed = False
        self._handle: Optional[c_void_p] = None
        c_policy = c_void_p()
        _check(lib.sandcell_policy_from_json(policy.to_json().encode(), byref(c_policy)))
        try:
            handle = c_void_p()
            cache = _text(cache_dir, "cache_dir") if cache_dir is not None else None
            _check(lib.sandcell_sandbox_new(_text(backend, "backend"), c_policy, cache, byref(handle)))
            self._handle = handle
        finally:
            lib.sandcell_policy_free(c_policy)

    def run(
        self,
        program: Program,
        args: Sequence[str] = (),
        *,
        stdin: Optional[Union[bytes, str]] = None,
        env: Optional[Mapping[str, str]] = None,
        cwd: Optional[str] = None,
        entry: Optional[str] = None,
        name: Optional[str] = None,
        on_stdout: Optional[OutputCallback] = None,
        on_stderr: Optional[OutputCallback] = None,
        interrupt: Optional[Interrupt] = None,
    ) -> Outcome:
        """Runs `program` to completion and returns its `Outcome`.

        `program` is a path (a `.wasm`/`.wat` module, a micro-VM guest, or for the process
        backend an executable's path inside the sandbox) or the program's bytes. `args` follow
        the program's name (`name`, argv[0]); `env` adds to the policy's variables; `entry` calls
        a wasm export instead of `_start`; `cwd` is the working directory (process backend).
        `on_stdout` /
        `on_stderr` receive output as the guest produces it (it is also in the outcome); they
        run on this thread. If a callback raises, the run is stopped and the exception re-raised.
        """
        handle = self._begin()
        try:
            prog = c_void_p()
            if isinstance(program, bytes):
                error = _program_from_bytes(program, len(program), byref(prog))
            elif isinstance(program, (bytearray, memoryview)):
                data = bytes(program)
                error = _program_from_bytes(data, len(data), byref(prog))
            else:
                error = lib.sandcell_program_from_path(_text(program, "program"), byref(prog))
            if error:
                _check(error)
            try:
                if args or stdin is not None or env or cwd is not None or entry is not None or name is not None:
                    _configure(prog, args, stdin, env, cwd, entry, name)
                if on_stdout is None and on_stderr is None:
                    options = _lib.RunOptions(_lib.RUN_OPTIONS_SIZE, interrupt=interrupt._handle) if interrupt else None
                    out = c_void_p()
                    error = _sandbox_run(handle, prog, byref(options) if options else None, byref(out))
                    if error:
                        _check(error)
                    return Outcome(out)
                return self._run_streaming(handle, prog, on_stdout, on_stderr, interrupt)
            finally:
                _program_free(prog)
        finally:
            self._end()

    def _run_streaming(
        self,
        sandbox: c_void_p,
        prog: c_void_p,
        on_stdout: Optional[OutputCallback],
        on_stderr: Optional[OutputCallback],
        interrupt: Optional[Interrupt],
    ) -> Outcome:
        failure: List[BaseException] = []

        # A callback that raises stops the run: `deliver` returns non-zero (the run ends as
        # interrupted; the caller's interrupt handle, if any, is not triggered).
        def deliver(_user: Any, stream: int, data: Any, length: int) -> int:
            if failure:
                return 1
            try:
                chunk = ctypes.string_at(data, length)
                cb = on_stdout if stream == _lib.STREAM_STDOUT else on_stderr
                if cb is not None:
                    cb(chunk)
            except BaseException as e:  # re-raised after the run
                failure.append(e)
                return 1
            return 0

        callback = _lib.OUTPUT_FN2(deliver)
        options = _lib.RunOptions(
            _lib.RUN_OPTIONS_SIZE, interrupt=interrupt._handle if interrupt else None, on_output2=callback
        )
        out = c_void_p()
        _check(_sandbox_run(sandbox, prog, byref(options), byref(out)))
        outcome = Outcome(out)
        if failure:
            raise failure[0]
        return outcome

    def interrupt(self) -> None:
        """Stops every run in progress on this sandbox (status `interrupted`); later runs are
        not affected."""
        handle = self._begin()
        try:
            _check(lib.sandcell_sandbox_interrupt(handle))
        finally:
            self._end()

    def close(self) -> None:
        """Releases the sandbox. Runs in progress on other threads finish first; new runs raise
        `InvalidArgumentError`."""
        with self._lock:
            self._closed = True
            if self._runs:
                return  # the last run frees it
            handle, self._handle = self._handle, None
        if handle:
            lib.sandcell_sandbox_free(handle)

    @property
    def closed(self) -> bool:
        return self._closed

    def _begin(self) -> c_void_p:
        with self._lock:
            if self._closed or not self._handle:
                raise InvalidArgumentError("the sandbox is closed")
            self._runs += 1
            return self._handle

    def _end(self) -> None:
        with self._lock:
            self._runs -= 1
            if not (self._closed and self._runs == 0):
                return
            handle, self._handle = self._handle, None
        if handle:
            lib.sandcell_sandbox_free(handle)

    def __enter__(self) -> "Sandbox":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        if getattr(self, "_handle", None) is not None and getattr(self, "_runs", 0) == 0:
            lib.sandcell_sandbox_free(self._handle)
            self._handle = None

    def __repr__(self) -> str:
        return f"<sandcell.Sandbox {self.backend}{' (closed)' if self._closed else ''}>"


def probe() -> Dict[str, Any]:
    """What this host supports: each backend's availability and the reason when it is not."""
    out = c_void_p()
    _check(lib.sandcell_probe_json(byref(out)))
    return json.loads(_lib.take_string(out))
