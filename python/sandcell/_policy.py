"""Policies: the limits and permissions of a sandbox, checked and normalized by the library."""

import dataclasses
import json
import os
import re
from ctypes import byref, c_void_p
from types import MappingProxyType
from typing import Any, Dict, Iterable, Mapping, Optional, Sequence, Tuple, Union

from . import _lib
from ._errors import InternalError, check
from ._lib import lib

# Bytes, or a string with a binary unit: `"64K"`, `"64M"`, `"1G"`.
Size = Union[int, str]
# Seconds, or a string with a unit: `"500ms"`, `"2s"`.
Duration = Union[int, float, str]


@dataclasses.dataclass(frozen=True)
class Mount:
    """A host directory visible inside the sandbox at `guest`; read-only unless `writable`."""

    host: str
    guest: str
    writable: bool = False

    def to_dict(self) -> Dict[str, Any]:
        """The mount as an object of the policy's JSON schema."""
        return {"host": os.fspath(self.host), "guest": os.fspath(self.guest), "writable": self.writable}


@dataclasses.dataclass(frozen=True)
class CompileLimits:
    """Budgets for compiling an untrusted WebAssembly module, apart from the run's own limits
    (`Policy.compile`); a module over one is refused with `InvalidProgramError` naming it.

    `max_module_size` and `max_function_size` are bytes, `max_functions` a count, `time` the
    seconds one compilation may take, `memory` the bytes the compiler may need for one module.
    `Policy().compile` holds the defaults (128 MiB, 100,000 functions, 1 MiB, 60 s, 1 GiB); change
    some with `policy.compile.replace(time=5)`, or give `Policy(compile={"time": "5s"})` (the
    fields not named keep their defaults).
    """

    max_module_size: int
    max_functions: int
    max_function_size: int
    time: float
    memory: int

    def replace(self, **changes: Any) -> "CompileLimits":
        """A copy with some fields changed."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> Dict[str, Any]:
        """The limits as an object of the policy's JSON schema."""
        return dataclasses.asdict(self)


MountLike = Union[Mount, Tuple[str, str], Tuple[str, str, bool], Mapping[str, Any]]

UNSET: Any = object()


def mount_dict(m: MountLike) -> Dict[str, Any]:
    """A mount in any of the accepted forms as its JSON object."""
    if isinstance(m, Mount):
        return m.to_dict()
    if isinstance(m, Mapping):
        return dict(m)
    if isinstance(m, (tuple, list)) and len(m) in (2, 3):
        return Mount(os.fspath(m[0]), os.fspath(m[1]), bool(m[2]) if len(m) == 3 else False).to_dict()
    raise TypeError(f"a mount is a Mount, a (host, guest[, writable]) tuple or a dict, not {m!r}")


def json_value(key: str, value: Any) -> Any:
    """A field's value as it goes into the JSON document the library checks."""
    if key == "mounts":
        return [mount_dict(m) for m in value]
    if key == "system_dirs" and value is not None:
        return [os.fspath(d) for d in value]
    if key == "deny_syscalls":
        return list(value)
    if key == "env" and value is not None:
        return dict(value)
    if key == "compile" and isinstance(value, CompileLimits):
        return value.to_dict()
    if key == "compile" and isinstance(value, Mapping):
        return dict(value)
    return value


_DURATION = re.compile(r"(\d+)(ns|us|ms|s)")
_PER_SECOND = {"s": 1, "ms": 1_000, "us": 1_000_000, "ns": 1_000_000_000}


def seconds(canonical: Optional[str]) -> Optional[float]:
    """A duration of the canonical JSON (`"1500ms"`, `"2s"`) in seconds."""
    if canonical is None:
        return None
    m = _DURATION.fullmatch(canonical)
    if not m:
        raise InternalError(f"the library wrote the duration {canonical!r}, which this package cannot read")
    return int(m.group(1)) / _PER_SECOND[m.group(2)]


class Policy:
    """Limits and permissions of a sandbox.

    Every field is optional; what is not given keeps sandcell's default (512 MiB memory, 16 MiB
    per output stream, 64 processes, 256 open files, no timeout, no network, no mounts). Sizes
    are bytes or strings with a unit (`"64M"`, `"1G"`); durations are seconds or strings with a
    unit (`"500ms"`, `"2s"`). `None` removes a limit that has a default (`memory=None`: no cap).
    The policy is checked when it is made: a bad value raises `InvalidPolicyError` naming the
    field. A policy is immutable and hashable; its fields read back normalized, with types:
    sizes in bytes (`int`), durations in seconds (`float`), lists as tuples. `replace()` makes
    a changed copy.
    """

    # The names of the fields, in the order of the JSON document.
    FIELDS: Tuple[str, ...] = (
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
        "unix_sockets",
        "env",
        "deny_syscalls",
        "compile",
        "best_effort",
    )

    __slots__ = (
        "_json",
        "_memory",
        "_timeout",
        "_cpu_time",
        "_fuel",
        "_cpus",
        "_max_processes",
        "_max_open_files",
        "_max_file_size",
        "_max_output",
        "_mounts",
        "_system_dirs",
        "_network",
        "_unix_sockets",
        "_env",
        "_deny_syscalls",
        "_compile",
        "_best_effort",
    )

    def __init__(
        self,
        *,
        memory: Optional[Size] = UNSET,
        timeout: Optional[Duration] = UNSET,
        cpu_time: Optional[Duration] = UNSET,
        fuel: Optional[int] = UNSET,
        cpus: Optional[int] = UNSET,
        max_processes: Optional[int] = UNSET,
        max_open_files: Optional[int] = UNSET,
        max_file_size: Optional[Size] = UNSET,
        max_output: Size = UNSET,
        mounts: Iterable[MountLike] = UNSET,
        system_dirs: Optional[Sequence[str]] = UNSET,
        network: str = UNSET,
        unix_sockets: bool = UNSET,
        env: Optional[Mapping[str, str]] = UNSET,
        deny_syscalls: Iterable[str] = UNSET,
        compile: Union[CompileLimits, Mapping[str, Any]] = UNSET,
        best_effort: bool = UNSET,
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
            unix_sockets=unix_sockets,
            env=env,
            deny_syscalls=deny_syscalls,
            compile=compile,
            best_effort=best_effort,
        )
        doc = {key: json_value(key, value) for key, value in given.items() if value is not UNSET}
        self._load(self._normalize(json.dumps(doc)))

    @staticmethod
    def _normalize(text: str) -> str:
        """Validates a JSON document through the library and returns its canonical form."""
        handle = c_void_p()
        check(lib.sandcell_policy_from_json(text.encode("utf-8"), byref(handle)))
        try:
            out = c_void_p()
            check(lib.sandcell_policy_to_json(handle, byref(out)))
            return _lib.take_string(out)
        finally:
            lib.sandcell_policy_free(handle)

    def _load(self, canonical: str) -> None:
        """Sets the fields from the canonical JSON document (every field present, sizes in bytes,
        durations as `"1500ms"`)."""
        d = json.loads(canonical)
        self._json = canonical
        self._memory: Optional[int] = d["memory"]
        self._timeout = seconds(d["timeout"])
        self._cpu_time = seconds(d["cpu_time"])
        self._fuel: Optional[int] = d["fuel"]
        self._cpus: Optional[int] = d["cpus"]
        self._max_processes: Optional[int] = d["max_processes"]
        self._max_open_files: Optional[int] = d["max_open_files"]
        self._max_file_size: Optional[int] = d["max_file_size"]
        self._max_output: int = d["max_output"]
        self._mounts = tuple(Mount(m["host"], m["guest"], m["writable"]) for m in d["mounts"])
        dirs = d["system_dirs"]
        self._system_dirs = None if dirs is None else tuple(dirs)
        self._network: str = d["network"]
        self._unix_sockets: bool = d["unix_sockets"]
        self._env: Mapping[str, str] = MappingProxyType(dict(d["env"]))
        self._deny_syscalls = tuple(d["deny_syscalls"])
        c = d["compile"]
        self._compile = CompileLimits(
            max_module_size=c["max_module_size"],
            max_functions=c["max_functions"],
            max_function_size=c["max_function_size"],
            time=seconds(c["time"]),  # type: ignore[arg-type]
            memory=c["memory"],
        )
        self._best_effort: bool = d["best_effort"]

    @classmethod
    def from_json(cls, text: str) -> "Policy":
        """A policy from its JSON document (the schema in the README; unknown fields refused)."""
        p = cls.__new__(cls)
        p._load(cls._normalize(text))
        return p

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any]) -> "Policy":
        """A policy from a dict of the JSON schema."""
        return cls.from_json(json.dumps({k: json_value(k, v) for k, v in doc.items()}))

    def to_json(self) -> str:
        """The canonical JSON document (every field, sizes in bytes, durations as strings)."""
        return self._json

    def to_dict(self) -> Dict[str, Any]:
        """The canonical JSON document as a dict (a new one at each call)."""
        doc: Dict[str, Any] = json.loads(self._json)
        return doc

    def replace(self, **changes: Any) -> "Policy":
        """A copy with some fields changed (`compile` given as a dict changes only the limits it
        names)."""
        doc = self.to_dict()
        for key, value in changes.items():
            if key not in self.FIELDS:
                raise TypeError(f"Policy has no field {key!r}")
            if key == "compile" and isinstance(value, Mapping):
                value = {**doc["compile"], **value}
            doc[key] = json_value(key, value)
        return Policy.from_json(json.dumps(doc))

    # The fields, typed. (Each is read once from the canonical document when the policy is made.)

    @property
    def memory(self) -> Optional[int]:
        """Memory cap in bytes; `None`: no cap beyond the backend's own."""
        return self._memory

    @property
    def timeout(self) -> Optional[float]:
        """Wall-clock limit of one run, in seconds (the run ends as `Status.TIMEOUT`); `None`:
        none."""
        return self._timeout

    @property
    def cpu_time(self) -> Optional[float]:
        """CPU-time limit of one run, in seconds (`Status.CPU_LIMIT`); `None`: none."""
        return self._cpu_time

    @property
    def fuel(self) -> Optional[int]:
        """Instruction budget of wasm guests (`Status.CPU_LIMIT`); `None`: unmetered."""
        return self._fuel

    @property
    def cpus(self) -> Optional[int]:
        """CPUs the guest may use at once; `None`: the backend's own."""
        return self._cpus

    @property
    def max_processes(self) -> Optional[int]:
        """Processes and threads in a run; `None`: no limit."""
        return self._max_processes

    @property
    def max_open_files(self) -> Optional[int]:
        """Files the guest may hold open at once; `None`: no limit."""
        return self._max_open_files

    @property
    def max_file_size(self) -> Optional[int]:
        """Size in bytes of a file the guest writes; `None`: no limit."""
        return self._max_file_size

    @property
    def max_output(self) -> int:
        """Cap in bytes on each of stdout and stderr (`Status.OUTPUT_LIMIT`)."""
        return self._max_output

    @property
    def mounts(self) -> Tuple[Mount, ...]:
        """Host directories visible to the guest."""
        return self._mounts

    @property
    def system_dirs(self) -> Optional[Tuple[str, ...]]:
        """Read-only system directories for native programs (process backend); `None`: the
        default set."""
        return self._system_dirs

    @property
    def network(self) -> str:
        """`"none"`, or `"loopback"` (a private loopback interface, process backend)."""
        return self._network

    @property
    def unix_sockets(self) -> bool:
        """Whether native programs may create Unix-domain sockets (process backend)."""
        return self._unix_sockets

    @property
    def env(self) -> Mapping[str, str]:
        """Environment variables of every program (read-only mapping)."""
        return self._env

    @property
    def deny_syscalls(self) -> Tuple[str, ...]:
        """System calls denied on top of the process backend's allow-list."""
        return self._deny_syscalls

    @property
    def compile(self) -> CompileLimits:
        """Budgets for compiling an untrusted wasm module."""
        return self._compile

    @property
    def best_effort(self) -> bool:
        """Whether the sandbox runs even when a field cannot be enforced (the outcome lists
        what was skipped)."""
        return self._best_effort

    def __reduce__(self) -> Tuple[Any, Tuple[str]]:
        return (Policy.from_json, (self._json,))  # pickled as its canonical document

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Policy) and self._json == other._json

    def __hash__(self) -> int:
        return hash(self._json)

    def __repr__(self) -> str:
        return f"Policy.from_json({self._json!r})"
