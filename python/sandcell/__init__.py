"""sandcell: run untrusted code behind one API — WebAssembly, a confined Linux process, or a KVM
micro-VM.

    import sandcell

    with sandcell.Sandbox("wasm", memory="64M", timeout=2.0) as sandbox:
        outcome = sandbox.run("examples/hello.wat", args=["world"], stdin=b"input")
        print(outcome.status, outcome.exit_code, outcome.stdout)

A `Sandbox` is a backend with a `Policy` applied; it runs any number of programs, from any
number of threads at once (the GIL is released while a guest runs), or from asyncio tasks with
`await sandbox.run_async(...)` (cancelling the task stops the run). `run(..., timeout=seconds)`
limits one run. What the guest did — exit, timeout, trap, memory limit, ... — is an `Outcome`
whose `status` is a `Status`; `outcome.check()` raises `OutcomeError` unless the guest exited
with code 0. An exception from `run()` means the host could not run the program (a bad policy or
program, a backend this host lacks): see `SandcellError` and its subclasses.
"""

from ._errors import (
    BackendUnavailableError,
    HostError,
    InternalError,
    InvalidArgumentError,
    InvalidPolicyError,
    InvalidProgramError,
    SandcellError,
    UnenforceableError,
)
from ._interrupt import Interrupt
from ._lib import lib as _c
from ._outcome import Outcome, OutcomeError, Status, Usage
from ._policy import CompileLimits, Mount, Policy
from ._sandbox import Prepared, Sandbox, probe

__all__ = [
    "BackendUnavailableError",
    "CompileLimits",
    "HostError",
    "InternalError",
    "Interrupt",
    "InvalidArgumentError",
    "InvalidPolicyError",
    "InvalidProgramError",
    "Mount",
    "Outcome",
    "OutcomeError",
    "Policy",
    "Prepared",
    "Sandbox",
    "SandcellError",
    "Status",
    "UnenforceableError",
    "Usage",
    "probe",
    "__version__",
]

# The version of the loaded libsandcell.
__version__: str = _c.sandcell_version().decode()

# The classes live in private modules; they are documented, printed and pickled as sandcell.X.
for _name in __all__:
    _obj = globals()[_name]
    if isinstance(_obj, type) or callable(_obj):
        _obj.__module__ = __name__
del _name, _obj
