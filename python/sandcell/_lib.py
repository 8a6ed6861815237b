"""Loads libsandcell.so and declares the C functions of include/sandcell.h for ctypes.

ctypes releases the GIL for the duration of every call into the library, so a thread running a
guest does not stop other Python threads; output callbacks take the GIL back while they run.
"""

from __future__ import annotations

import ctypes
import os
from ctypes import (
    CFUNCTYPE,
    POINTER,
    Structure,
    c_bool,
    c_char_p,
    c_int,
    c_int32,
    c_size_t,
    c_uint8,
    c_uint32,
    c_uint64,
    c_void_p,
)
from pathlib import Path


def _library_path() -> str:
    override = os.environ.get("SANDCELL_LIBRARY")
    if override:
        return override
    here = Path(__file__).resolve().parent / "libsandcell.so"
    if here.is_file():
        return str(here)
    raise ImportError(
        f"sandcell: {here} is missing; install the package with `pip install ./python` from a "
        "clone of the repository (it builds the library), or point SANDCELL_LIBRARY at a "
        "libsandcell.so"
    )


lib = ctypes.CDLL(_library_path())

# The SANDCELL_ABI_VERSION of include/sandcell.h these declarations follow.
ABI_VERSION = 0

OUTPUT_FN = CFUNCTYPE(None, c_void_p, c_uint32, POINTER(c_uint8), c_size_t)
# Returns non-zero to stop the run (it then ends as interrupted).
OUTPUT_FN2 = CFUNCTYPE(c_int, c_void_p, c_uint32, POINTER(c_uint8), c_size_t)


# The extensible structs start with `size`, which the caller sets to the struct's size: pass the
# *_SIZE constant below as the first positional argument. `c_name` is the struct's name in
# include/sandcell.h (tests/test_abi.py compares the two).
class RunOptions(Structure):
    c_name = "sandcell_run_options_t"
    _fields_ = [
        ("size", c_size_t),
        ("on_output", OUTPUT_FN),
        ("user_data", c_void_p),
        ("interrupt", c_void_p),
        ("on_output2", OUTPUT_FN2),
        ("stream_stdin", c_uint32),
        ("stdin_fd", c_int),
        ("stdin_data", POINTER(c_uint8)),
        ("stdin_len", c_size_t),
    ]


class PrepareOptions(Structure):
    c_name = "sandcell_prepare_options_t"
    _fields_ = [
        ("size", c_size_t),
        ("set_pool_size", c_uint32),
        ("pool_size", c_uint32),
        ("idle_timeout_ms", c_uint64),
        ("until_ready", c_uint32),
        ("snapshot_file", c_char_p),
    ]


class PoolStats(Structure):
    c_name = "sandcell_pool_stats_t"
    _fields_ = [
        ("size", c_size_t),
        ("hits", c_uint64),
        ("misses", c_uint64),
        ("evictions", c_uint64),
        ("idle", c_uint64),
        ("snapshot_bytes", c_uint64),
    ]


class Usage(Structure):
    c_name = "sandcell_usage_t"
    _fields_ = [
        ("size", c_size_t),
        ("wall_ns", c_uint64),
        ("cpu_ns", c_uint64),
        ("peak_memory_bytes", c_uint64),
        ("fuel", c_uint64),
        ("has_fuel", c_bool),
    ]


class Summary(Structure):
    c_name = "sandcell_outcome_summary_t"
    _fields_ = [
        ("size", c_size_t),
        ("status", c_uint32),
        ("code", c_int32),
        ("kind", c_void_p),
        ("trap_kind", c_void_p),
        ("detail", c_void_p),
        ("stdout_data", c_void_p),
        ("stdout_len", c_size_t),
        ("stderr_data", c_void_p),
        ("stderr_len", c_size_t),
        ("usage", Usage),
    ]


RUN_OPTIONS_SIZE = ctypes.sizeof(RunOptions)
USAGE_SIZE = ctypes.sizeof(Usage)
SUMMARY_SIZE = ctypes.sizeof(Summary)


P = c_void_p  # every handle, and the returned sandcell_error_t *
PP = POINTER(c_void_p)

# name: (argument types, result type); fallible functions return an error pointer.
# tests/test_abi.py checks every entry against the prototype in include/sandcell.h.
_SIGNATURES = {
    "sandcell_error_message": ([P], c_char_p),
    "sandcell_error_kind": ([P], c_uint32),
    "sandcell_error_free": ([P], None),
    "sandcell_string_free": ([P], None),
    "sandcell_version": ([], c_char_p),
    "sandcell_abi_version": ([], c_uint32),
    "sandcell_probe_json": ([PP], P),
    "sandcell_policy_from_json": ([c_char_p, PP], P),
    "sandcell_policy_to_json": ([P, PP], P),
    "sandcell_policy_free": ([P], None),
    "sandcell_program_from_path": ([c_char_p, PP], P),
    "sandcell_program_from_bytes": ([c_char_p, c_size_t, PP], P),
    "sandcell_program_add_arg": ([P, c_char_p], P),
    "sandcell_program_set_env": ([P, c_char_p, c_char_p], P),
    "sandcell_program_set_stdin": ([P, c_char_p, c_size_t], P),
    "sandcell_program_set_cwd": ([P, c_char_p], P),
    "sandcell_program_set_entry": ([P, c_char_p], P),
    "sandcell_program_set_name": ([P, c_char_p], P),
    "sandcell_program_free": ([P], None),
    "sandcell_sandbox_new": ([c_char_p, P, c_char_p, PP], P),
    "sandcell_sandbox_run": ([P, P, POINTER(RunOptions), PP], P),
    "sandcell_sandbox_prepare": ([P, P, PP], P),
    "sandcell_sandbox_prepare_with": ([P, P, POINTER(PrepareOptions), PP], P),
    "sandcell_prepared_pool_stats": ([P, POINTER(PoolStats), POINTER(c_int)], P),
    "sandcell_prepared_save_snapshot": ([P, c_char_p], P),
    "sandcell_prepared_run": ([P, POINTER(RunOptions), PP], P),
    "sandcell_prepared_free": ([P], None),
    "sandcell_sandbox_interrupt": ([P], P),
    "sandcell_sandbox_free": ([P], None),
    "sandcell_interrupt_new": ([PP], P),
    "sandcell_interrupt_trigger": ([P], P),
    "sandcell_interrupt_free": ([P], None),
    "sandcell_outcome_status": ([P, POINTER(c_uint32), POINTER(c_int32)], P),
    "sandcell_outcome_kind": ([P, POINTER(c_char_p)], P),
    "sandcell_outcome_trap_kind": ([P, POINTER(c_char_p)], P),
    "sandcell_outcome_detail": ([P, POINTER(c_char_p)], P),
    "sandcell_outcome_output": ([P, c_uint32, POINTER(POINTER(c_uint8)), POINTER(c_size_t)], P),
    "sandcell_outcome_usage": ([P, POINTER(Usage)], P),
    "sandcell_outcome_summary": ([P, POINTER(Summary)], P),
    "sandcell_outcome_to_json": ([P, PP], P),
    "sandcell_outcome_free": ([P], None),
}

for _name, (_args, _res) in _SIGNATURES.items():
    _fn = getattr(lib, _name)
    _fn.argtypes = _args
    _fn.restype = _res

if lib.sandcell_abi_version() != ABI_VERSION:
    raise ImportError(
        f"sandcell: {_library_path()} has ABI version {lib.sandcell_abi_version()}, this package "
        f"needs {ABI_VERSION}: install the package and the library from the same source"
    )

# Constants of include/sandcell.h (tests/test_abi.py compares them with it).
ERROR_INVALID_POLICY = 1
ERROR_UNENFORCEABLE = 2
ERROR_BACKEND_UNAVAILABLE = 3
ERROR_INVALID_PROGRAM = 4
ERROR_HOST = 5
ERROR_INVALID_ARGUMENT = 6
ERROR_INTERNAL = 7
STATUS_EXITED = 1
STATUS_TIMEOUT = 2
STATUS_MEMORY_LIMIT = 3
STATUS_CPU_LIMIT = 4
STATUS_OUTPUT_LIMIT = 5
STATUS_SIGNALED = 6
STATUS_TRAP = 7
STATUS_SYSCALL_DENIED = 8
STATUS_INTERRUPTED = 9
STREAM_STDOUT = 1
STREAM_STDERR = 2


def take_string(ptr: c_void_p) -> str:
    """Reads a string the library handed out, then frees it."""
    try:
        return ctypes.string_at(ptr).decode("utf-8")
    finally:
        lib.sandcell_string_free(ptr)
