"""Sandboxes: a backend with a policy applied, which runs programs (blocking, or awaited)."""

import asyncio
import ctypes
import json
import math
import os
import threading
from ctypes import POINTER, byref, c_int, c_void_p, sizeof
from typing import Any, BinaryIO, Callable, Dict, List, Mapping, NamedTuple, Optional, Sequence, Set, Tuple, TypeVar, Union

from . import _lib
from ._errors import InvalidArgumentError, InvalidPolicyError, check, text
from ._interrupt import CANCEL, INTERRUPT, TIMEOUT, Interrupt, RunStop
from ._lib import lib
from ._outcome import Outcome, Status
from ._policy import Duration, Policy

Program = Union[str, "os.PathLike[str]", bytes, bytearray, memoryview]
OutputCallback = Callable[[bytes], None]

_program_from_bytes = lib.sandcell_program_from_bytes
_program_free = lib.sandcell_program_free
_sandbox_run = lib.sandcell_sandbox_run
_prepared_run = lib.sandcell_prepared_run


class _Call(NamedTuple):
    """What one run() was asked to run."""

    program: Program
    args: Sequence[str]
    stdin: Any
    env: Optional[Mapping[str, str]]
    cwd: Optional[str]
    entry: Optional[str]
    name: Optional[str]
    on_stdout: Optional[OutputCallback]
    on_stderr: Optional[OutputCallback]
    # The C handle of a prepared program: run it instead of building `program`.
    prepared: Optional[c_void_p] = None


def _make_program(call: _Call) -> c_void_p:
    """The C program for `call` (the caller frees it)."""
    program = call.program
    prog = c_void_p()
    if isinstance(program, bytes):
        error = _program_from_bytes(program, len(program), byref(prog))
    elif isinstance(program, (bytearray, memoryview)):
        data = bytes(program)
        error = _program_from_bytes(data, len(data), byref(prog))
    else:
        error = lib.sandcell_program_from_path(text(program, "program"), byref(prog))
    if error:
        check(error)
    try:
        if (
            call.args
            or call.stdin is not None
            or call.env
            or call.cwd is not None
            or call.entry is not None
            or call.name is not None
        ):
            _configure(prog, call)
    except BaseException:
        _program_free(prog)
        raise
    return prog


def _run_options(
    interrupt: Optional[c_void_p], call: _Call, on_output2: Any = None
) -> Tuple[Optional["_lib.RunOptions"], Any]:
    """The C options of a run (None when there are none to give), and what must stay alive
    while the run lasts."""
    stdin_fd = _stdin_fd(call.stdin)
    # A prepared program's runs each take their stdin bytes through the options.
    stdin_bytes = None
    if call.prepared is not None and call.stdin is not None and stdin_fd is None:
        stdin_bytes = call.stdin.encode() if isinstance(call.stdin, str) else bytes(call.stdin)
    if not interrupt and stdin_fd is None and stdin_bytes is None and on_output2 is None:
        return None, None
    options = _lib.RunOptions(_lib.RUN_OPTIONS_SIZE, interrupt=interrupt)
    if on_output2 is not None:
        options.on_output2 = on_output2
    if stdin_fd is not None:
        options.stream_stdin, options.stdin_fd = 1, stdin_fd
    keep: Any = None
    if stdin_bytes is not None:
        keep = ctypes.create_string_buffer(stdin_bytes, len(stdin_bytes) or 1)
        options.stdin_data = ctypes.cast(keep, POINTER(ctypes.c_uint8))
        options.stdin_len = len(stdin_bytes)
    return options, keep


def _stdin_fd(stdin: Any) -> Optional[int]:
    """The descriptor a file-like `stdin` streams from, or None for bytes, str and None."""
    if stdin is None or isinstance(stdin, (bytes, bytearray, memoryview, str)):
        return None
    fileno = getattr(stdin, "fileno", None)
    if fileno is None:
        raise TypeError(
            f"stdin must be bytes, str, or a file object with fileno() (a pipe, socket or file), "
            f"not {type(stdin).__name__}"
        )
    return int(fileno())


def _configure(prog: c_void_p, call: _Call) -> None:
    """Sets a program's arguments, stdin, environment, working directory, entry and name."""
    args = call.args
    if isinstance(args, (str, bytes)):
        raise TypeError("args must be a sequence of strings, not a single string")
    for a in args:
        check(lib.sandcell_program_add_arg(prog, text(a, "argument")))
    if call.stdin is not None and _stdin_fd(call.stdin) is None:
        data = call.stdin.encode() if isinstance(call.stdin, str) else bytes(call.stdin)
        check(lib.sandcell_program_set_stdin(prog, data, len(data)))
    for k, v in (call.env or {}).items():
        check(lib.sandcell_program_set_env(prog, text(k, "env name"), text(v, "env value")))
    if call.cwd is not None:
        check(lib.sandcell_program_set_cwd(prog, text(call.cwd, "cwd")))
    if call.entry is not None:
        check(lib.sandcell_program_set_entry(prog, text(call.entry, "entry")))
    if call.name is not None:
        check(lib.sandcell_program_set_name(prog, text(call.name, "name")))


def _run_timeout(timeout: Optional[Duration]) -> Optional[float]:
    """A run's `timeout` argument in seconds (None: none)."""
    if timeout is None:
        return None
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float, str)):
        raise TypeError(f"timeout must be seconds or a string such as '500ms', not {type(timeout).__name__}")
    if isinstance(timeout, str):
        try:  # the library's parser, so that units mean what they mean in a policy
            seconds = Policy(timeout=timeout).timeout
        except InvalidPolicyError as e:
            raise InvalidArgumentError(f"timeout {timeout!r}: {e.message}") from None
    else:
        seconds = float(timeout)
    if seconds is None or not (seconds > 0 and math.isfinite(seconds)):
        raise InvalidArgumentError(f"timeout must be a positive duration, not {timeout!r} (None: no timeout)")
    return seconds


def _interrupt_handle(interrupt: Optional[Interrupt]) -> Optional[c_void_p]:
    if interrupt is None:
        return None
    if not isinstance(interrupt, Interrupt):
        raise TypeError(f"interrupt must be a sandcell.Interrupt, not {type(interrupt).__name__}")
    return interrupt._handle


_Self = TypeVar("_Self", bound="_Owned")


class _Owned:
    """A C handle shared by runs on several threads: `close()` releases it once the last run
    in progress has returned. Subclasses set `_what` and `_free`, and `_own(handle)` first."""

    _what = "object"

    @staticmethod
    def _free(handle: c_void_p) -> None:
        raise NotImplementedError

    def _own(self, handle: Optional[c_void_p]) -> None:
        self._lock = threading.Lock()
        self._runs = 0
        self._stops: Set[RunStop] = set()
        self._closed = False
        self._handle: Optional[c_void_p] = handle

    def close(self) -> None:
        """Releases it. Runs in progress on other threads finish first; new runs raise
        `InvalidArgumentError`."""
        with self._lock:
            self._closed = True
            if self._runs:
                return  # the last run frees it
            handle, self._handle = self._handle, None
        if handle:
            self._free(handle)

    @property
    def closed(self) -> bool:
        """Whether `close()` was called."""
        return self._closed

    def _begin(self, stop: Optional[RunStop] = None) -> c_void_p:
        with self._lock:
            if self._closed or not self._handle:
                raise InvalidArgumentError(f"the {self._what} is closed")
            self._runs += 1
            if stop is not None:
                self._stops.add(stop)
            return self._handle

    def _end(self, stop: Optional[RunStop] = None) -> None:
        with self._lock:
            self._runs -= 1
            if stop is not None:
                self._stops.discard(stop)
            if not (self._closed and self._runs == 0):
                return
            handle, self._handle = self._handle, None
        if handle:
            self._free(handle)

    def __enter__(self: _Self) -> _Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        if getattr(self, "_handle", None) is not None and getattr(self, "_runs", 0) == 0:
            self._free(self._handle)  # type: ignore[arg-type]
            self._handle = None


class Sandbox(_Owned):
    """A backend (`"wasm"`, `"process"` or `"microvm"`) with a policy applied.

    Give either a `Policy` or its fields as keyword arguments:
    `Sandbox("wasm", memory="64M", timeout=2.0, mounts=[("/data", "/data")])`. One sandbox runs
    any number of programs, from any number of threads (or asyncio tasks, with `run_async`) at
    once. Use it as a context manager, or call `close()`; runs still in progress on other
    threads finish first. `backend` and `policy` are what it was made with.
    """

    _what = "sandbox"
    _free = staticmethod(lib.sandcell_sandbox_free)

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
        self.backend: str = backend
        self.policy: Policy = policy
        self._own(None)
        c_policy = c_void_p()
        check(lib.sandcell_policy_from_json(policy.to_json().encode(), byref(c_policy)))
        try:
            handle = c_void_p()
            cache = text(cache_dir, "cache_dir") if cache_dir is not None else None
            check(lib.sandcell_sandbox_new(text(backend, "backend"), c_policy, cache, byref(handle)))
            self._handle = handle
        finally:
            lib.sandcell_policy_free(c_policy)

    def run(
        self,
        program: Program,
        args: Sequence[str] = (),
        *,
        stdin: Optional[Union[bytes, str, BinaryIO]] = None,
        env: Optional[Mapping[str, str]] = None,
        cwd: Optional[str] = None,
        entry: Optional[str] = None,
        name: Optional[str] = None,
        on_stdout: Optional[OutputCallback] = None,
        on_stderr: Optional[OutputCallback] = None,
        interrupt: Optional[Interrupt] = None,
        timeout: Optional[Duration] = None,
    ) -> Outcome:
        """Runs `program` to completion and returns its `Outcome`.

        `program` is a path (a `.wasm`/`.wat` module, a micro-VM guest, or for the process
        backend an executable's path inside the sandbox) or the program's bytes. `args` follow
        the program's name (`name`, argv[0]); `env` adds to the policy's variables; `entry` calls
        a wasm export instead of `_start`; `cwd` is the working directory (process backend).
        `on_stdout` / `on_stderr` receive output as the guest produces it (it is also in the
        outcome); they run on this thread. If a callback raises, the run is stopped and the
        exception re-raised. `interrupt` stops the run when triggered (see `Interrupt`).

        `stdin` is bytes (or str, encoded as UTF-8) the guest reads, then end-of-file; or a
        binary file object with a descriptor (`sys.stdin.buffer`, a pipe, a socket, an open
        file), streamed: the guest reads its input as it arrives. The library reads the
        descriptor itself (from a duplicate), so data Python has already buffered in the file
        object is not seen.

        `timeout` (seconds, or a string such as `"500ms"`) limits this run's wall-clock time on
        top of the policy's `timeout`, which still applies: the shorter one ends the run, with
        status `timeout` either way. It counts from the moment the run starts in the library, so
        it includes compiling a module the first time (the policy's timeout does not). The run
        is stopped through an interrupt; if the run is interrupted otherwise (`interrupt`,
        `Sandbox.interrupt()`) before the timeout passes, its status is `interrupted`.
        """
        seconds = _run_timeout(timeout)
        call = _Call(program, args, stdin, env, cwd, entry, name, on_stdout, on_stderr)
        if seconds is None:
            return self._run(call, _interrupt_handle(interrupt), None, None)
        _interrupt_handle(interrupt)  # type check
        return self._run_stopped(call, RunStop(interrupt), seconds)

    async def run_async(
        self,
        program: Program,
        args: Sequence[str] = (),
        *,
        stdin: Optional[Union[bytes, str, BinaryIO]] = None,
        env: Optional[Mapping[str, str]] = None,
        cwd: Optional[str] = None,
        entry: Optional[str] = None,
        name: Optional[str] = None,
        on_stdout: Optional[OutputCallback] = None,
        on_stderr: Optional[OutputCallback] = None,
        interrupt: Optional[Interrupt] = None,
        timeout: Optional[Duration] = None,
    ) -> Outcome:
        """`run()` for asyncio: `outcome = await sandbox.run_async(program, ...)`.

        The run goes on in a thread of its own (one per run, so that runs never wait for a pool
        worker), and the event loop keeps running. Cancelling the awaiting task (`task.cancel()`,
        `asyncio.wait_for()`, `asyncio.timeout()`, ...) stops the run through an interrupt; the
        task then ends with `CancelledError` as soon as the run has returned, so the guest is no
        longer running when the cancellation completes. The arguments are `run()`'s; note that
        `on_stdout` and `on_stderr` are called on the run's thread, not in the event loop (hand
        data to the loop with `loop.call_soon_threadsafe`).
        """
        seconds = _run_timeout(timeout)
        _interrupt_handle(interrupt)  # type check
        call = _Call(program, args, stdin, env, cwd, entry, name, on_stdout, on_stderr)
        return await self._run_async(call, interrupt, seconds)

    async def _run_async(
        self,
        call: _Call,
        interrupt: Optional[Interrupt],
        seconds: Optional[float],
        release: Optional[Callable[[], None]] = None,
    ) -> Outcome:
        """Runs `call` on a thread of its own; `release` (if any) is called on that thread once
        the run has returned — never while the run may still use what it releases."""
        try:
            loop = asyncio.get_running_loop()
        except BaseException:
            if release is not None:
                release()
            raise
        done: "asyncio.Future[Outcome]" = loop.create_future()
        stop = RunStop(interrupt)

        def settle(outcome: Optional[Outcome], error: Optional[BaseException]) -> None:
            if done.done():
                return
            if error is not None:
                done.set_exception(error)
            else:
                done.set_result(outcome)  # type: ignore[arg-type]

        def work() -> None:
            outcome, error = None, None
            try:
                outcome = self._run_stopped(call, stop, seconds)
            except BaseException as e:  # delivered to the awaiting task
                error = e
            finally:
                if release is not None:
                    release()
            try:
                loop.call_soon_threadsafe(settle, outcome, error)
            except RuntimeError:  # the event loop is closed: nobody awaits the run any more
                pass

        try:
            threading.Thread(target=work, name="sandcell-run", daemon=True).start()
        except BaseException:
            if release is not None:
                release()
            raise
        try:
            return await asyncio.shield(done)
        except asyncio.CancelledError:
            stop.stop(CANCEL)
            # Wait for the run to return, so that the guest is stopped when the task ends (it
            # returns promptly once interrupted). A second cancellation does not stop the wait.
            while not done.done():
                try:
                    await asyncio.shield(done)
                except asyncio.CancelledError:
                    continue
                except BaseException:
                    break
            if not done.cancelled():
                done.exception()  # retrieved: the task is cancelled, whatever the run did
            raise

    def _run_stopped(self, call: _Call, stop: RunStop, seconds: Optional[float]) -> Outcome:
        """Runs with a private interrupt handle: a timeout, a cancellation or the caller's
        interrupt stops the run; an interrupted run is reported as a timeout when the timeout
        came first."""
        try:
            outcome = self._run(call, stop.handle, stop, seconds)
        finally:
            stop.close()
        if seconds is not None and stop.cause == TIMEOUT and outcome.status == Status.INTERRUPTED:
            outcome._timed_out(seconds)
        return outcome

    def _run(
        self, call: _Call, interrupt: Optional[c_void_p], stop: Optional[RunStop], seconds: Optional[float]
    ) -> Outcome:
        handle = self._begin(stop)
        try:
            prog = _make_program(call) if call.prepared is None else None
            try:
                if call.prepared is not None:
                    prepared = call.prepared

                    def invoke(options: Any, out: Any) -> Any:
                        return _prepared_run(prepared, options, out)

                else:

                    def invoke(options: Any, out: Any) -> Any:
                        return _sandbox_run(handle, prog, options, out)

                if stop is not None and seconds is not None:
                    stop.start_timer(seconds)
                if call.on_stdout is None and call.on_stderr is None:
                    options, _keep = _run_options(interrupt, call)
                    out = c_void_p()
                    error = invoke(byref(options) if options is not None else None, byref(out))
                    if error:
                        check(error)
                    return Outcome(out)
                return self._run_streaming(invoke, call, interrupt)
            finally:
                if prog is not None:
                    _program_free(prog)
        finally:
            self._end(stop)

    def _run_streaming(self, invoke: Callable[[Any, Any], Any], call: _Call, interrupt: Optional[c_void_p]) -> Outcome:
        on_stdout, on_stderr = call.on_stdout, call.on_stderr
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
        options, _keep = _run_options(interrupt, call, callback)
        out = c_void_p()
        check(invoke(byref(options), byref(out)))
        outcome = Outcome(out)
        if failure:
            raise failure[0]
        return outcome

    def prepare(
        self,
        program: Program,
        args: Sequence[str] = (),
        *,
        env: Optional[Mapping[str, str]] = None,
        cwd: Optional[str] = None,
        entry: Optional[str] = None,
        name: Optional[str] = None,
        pool_size: Optional[int] = None,
        idle_timeout: Optional[Duration] = None,
        until_ready: bool = False,
        snapshot_file: Optional[Union[str, "os.PathLike[str]"]] = None,
    ) -> "Prepared":
        """Does once what every run of `program` would repeat and returns a `Prepared` whose
        `run()` starts from there: reading and checking the program and finding (or compiling)
        its compiled module or guest image; on the micro-VM, a snapshot of its VM that each run
        restores into a pooled VM. For a 26 MB CPython on the wasm backend that halves the time
        of a run. The arguments, environment, directory, entry and name are every run's; each run
        gives its own `stdin`, callbacks, interrupt and timeout. Errors are those a run would
        raise, raised now.

        `pool_size` (ready instances kept between runs, 0 to 64) and `idle_timeout` (seconds an
        idle one is kept) shape the pool; `until_ready=True` runs the program once until it says
        it is ready and starts every run from there (on the wasm backend: the module's
        `wizer.initialize` export, whose memory and globals become the snapshot); `snapshot_file` starts from a snapshot
        another process saved (`Prepared.save_snapshot`), checked first. A backend that cannot
        do what they ask raises `UnenforceableError`."""
        call = _Call(program, args, None, env, cwd, entry, name, None, None)
        options = None
        if pool_size is not None or idle_timeout is not None or until_ready or snapshot_file is not None:
            options = _lib.PrepareOptions(size=sizeof(_lib.PrepareOptions))
            if pool_size is not None:
                if isinstance(pool_size, bool) or not isinstance(pool_size, int) or not 0 <= pool_size < 2**32:
                    raise InvalidArgumentError(f"pool_size must be an integer from 0, not {pool_size!r}")
                options.set_pool_size = 1
                options.pool_size = pool_size
            if idle_timeout is not None:
                seconds = _run_timeout(idle_timeout)
                assert seconds is not None
                options.idle_timeout_ms = max(1, round(seconds * 1000))
            options.until_ready = 1 if until_ready else 0
            if snapshot_file is not None:
                options.snapshot_file = os.fsencode(snapshot_file)
        handle = self._begin(None)
        try:
            prog = _make_program(call)
            try:
                prepared = c_void_p()
                if options is None:
                    check(lib.sandcell_sandbox_prepare(handle, prog, byref(prepared)))
                else:
                    check(lib.sandcell_sandbox_prepare_with(handle, prog, byref(options), byref(prepared)))
            finally:
                _program_free(prog)
        finally:
            self._end(None)
        return Prepared(self, prepared, program)

    def interrupt(self) -> None:
        """Stops every run in progress on this sandbox (status `interrupted`); later runs are
        not affected."""
        handle = self._begin(None)
        try:
            with self._lock:
                stops = list(self._stops)
            for stop in stops:  # runs with a private interrupt: record why they stop
                stop.stop(INTERRUPT)
            check(lib.sandcell_sandbox_interrupt(handle))
        finally:
            self._end(None)

    def __repr__(self) -> str:
        return f"<sandcell.Sandbox {self.backend}{' (closed)' if self._closed else ''}>"


class Prepared(_Owned):
    """A program prepared on a sandbox (`Sandbox.prepare`), to run many times.

    `run()` and `await run_async()` take `run()`'s per-run arguments: `stdin`, `on_stdout`,
    `on_stderr`, `interrupt`, `timeout`. Runs share nothing writable; each gets a new instance,
    VM or process. Runs need the sandbox open (`Sandbox.interrupt()` stops them too). Use it as a
    context manager, or call `close()` (runs in progress on other threads finish first).
    """

    _what = "prepared program"
    _free = staticmethod(lib.sandcell_prepared_free)

    def __init__(self, sandbox: Sandbox, handle: c_void_p, program: Program) -> None:
        self.sandbox: Sandbox = sandbox
        self.program: Program = program
        self._own(handle)

    def run(
        self,
        *,
        stdin: Optional[Union[bytes, str, BinaryIO]] = None,
        on_stdout: Optional[OutputCallback] = None,
        on_stderr: Optional[OutputCallback] = None,
        interrupt: Optional[Interrupt] = None,
        timeout: Optional[Duration] = None,
    ) -> Outcome:
        """Runs the prepared program (see `Sandbox.run` for the arguments)."""
        seconds = _run_timeout(timeout)
        handle = self._begin()
        try:
            call = _Call(self.program, (), stdin, None, None, None, None, on_stdout, on_stderr, handle)
            if seconds is None:
                return self.sandbox._run(call, _interrupt_handle(interrupt), None, None)
            _interrupt_handle(interrupt)  # type check
            return self.sandbox._run_stopped(call, RunStop(interrupt), seconds)
        finally:
            self._end()

    async def run_async(
        self,
        *,
        stdin: Optional[Union[bytes, str, BinaryIO]] = None,
        on_stdout: Optional[OutputCallback] = None,
        on_stderr: Optional[OutputCallback] = None,
        interrupt: Optional[Interrupt] = None,
        timeout: Optional[Duration] = None,
    ) -> Outcome:
        """`run()` for asyncio (see `Sandbox.run_async`)."""
        seconds = _run_timeout(timeout)
        _interrupt_handle(interrupt)  # type check
        handle = self._begin()
        call = _Call(self.program, (), stdin, None, None, None, None, on_stdout, on_stderr, handle)
        # The run's thread releases the handle when the C call has returned: closing (or
        # destroying) this coroutine early cannot free the prepared program under the run.
        return await self.sandbox._run_async(call, interrupt, seconds, self._end)

    def save_snapshot(self, path: Union[str, "os.PathLike[str]"]) -> None:
        """Saves the program's snapshot to `path` (mode 0600) for `Sandbox.prepare(...,
        snapshot_file=path)` in another process. The sandbox needs a `cache_dir` (its key seals
        the file); backends without snapshots raise `UnenforceableError`."""
        handle = self._begin()
        try:
            check(lib.sandcell_prepared_save_snapshot(handle, os.fsencode(path)))
        finally:
            self._end()

    @property
    def pool_stats(self) -> Optional[Dict[str, int]]:
        """What the program's pool of ready instances did — `hits`, `misses`, `evictions`,
        `idle`, `snapshot_bytes` — or `None` when it keeps none (a backend without pools)."""
        handle = self._begin()
        try:
            stats = _lib.PoolStats(size=sizeof(_lib.PoolStats))
            has = c_int(0)
            check(lib.sandcell_prepared_pool_stats(handle, byref(stats), byref(has)))
        finally:
            self._end()
        if not has.value:
            return None
        return {k: int(getattr(stats, k)) for k in ("hits", "misses", "evictions", "idle", "snapshot_bytes")}

    def __repr__(self) -> str:
        return f"<sandcell.Prepared {self.program!r} on {self.sandbox.backend}{' (closed)' if self._closed else ''}>"


def probe() -> Dict[str, Any]:
    """What this host supports: each backend's availability and the reason when it is not."""
    out = c_void_p()
    check(lib.sandcell_probe_json(byref(out)))
    info: Dict[str, Any] = json.loads(_lib.take_string(out))
    return info
