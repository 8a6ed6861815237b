"""The exceptions of the host: one class per error kind of the C ABI, and how errors the library
returns become them."""

import os
from typing import Optional, Union

from . import _lib
from ._lib import lib


class SandcellError(Exception):
    """The host could not do what was asked. `kind` is the C ABI's error kind name, `message` the
    library's message. (What the guest did is never an exception: see `Outcome` and
    `Outcome.check()`.)"""

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
    """An argument refused (a string with a NUL byte, a closed sandbox, a timeout that is not a
    positive duration, ...)."""

    kind = "invalid_argument"


class InternalError(SandcellError):
    """A bug in sandcell."""

    kind = "internal"


ERRORS = {
    _lib.ERROR_INVALID_POLICY: InvalidPolicyError,
    _lib.ERROR_UNENFORCEABLE: UnenforceableError,
    _lib.ERROR_BACKEND_UNAVAILABLE: BackendUnavailableError,
    _lib.ERROR_INVALID_PROGRAM: InvalidProgramError,
    _lib.ERROR_HOST: HostError,
    _lib.ERROR_INVALID_ARGUMENT: InvalidArgumentError,
    _lib.ERROR_INTERNAL: InternalError,
}


def check(error: Optional[int]) -> None:
    """Raises the exception for an error the library returned (and frees it)."""
    if not error:
        return
    try:
        kind = lib.sandcell_error_kind(error)
        message = lib.sandcell_error_message(error).decode("utf-8", "replace")
    finally:
        lib.sandcell_error_free(error)
    raise ERRORS.get(kind, SandcellError)(message)


def text(value: Union[str, "os.PathLike[str]"], what: str) -> bytes:
    """A str or path as the C string the library takes."""
    s = os.fspath(value)
    if not isinstance(s, str):
        raise TypeError(f"{what} must be a str or a path, not {type(value).__name__}")
    if "\0" in s:
        raise InvalidArgumentError(f"{what} contains a NUL character")
    return s.encode("utf-8", "surrogateescape")
