"""The package's surface: exactly the public names, each documented; `Status`; `Outcome.check()`;
the typed fields of `Policy`."""

from __future__ import annotations

import collections.abc
import copy
import inspect
import json
import pickle
import typing
from typing import Any

import pytest

import sandcell
from sandcell import _outcome
from conftest import HELLO_WAT
from test_async import SPIN

EXIT_3 = b"""(module
  (import "wasi_snapshot_preview1" "proc_exit" (func $exit (param i32)))
  (memory (export "memory") 1)
  (func (export "_start") (call $exit (i32.const 3))))"""
TRAP = b'(module (memory (export "memory") 1) (func (export "_start") unreachable))'


def test_all_lists_exactly_the_public_names() -> None:
    public = {name for name in dir(sandcell) if not name.startswith("_")}
    assert len(sandcell.__all__) == len(set(sandcell.__all__))
    assert public | {"__version__"} == set(sandcell.__all__)
    for name in sandcell.__all__:
        assert hasattr(sandcell, name), name
    # What the modules import stays out of sight.
    for internal in ("ctypes", "json", "os", "threading", "typing", "lib", "Optional", "annotations", "asyncio"):
        assert internal not in public


def _own_members(cls: type):
    for name, member in vars(cls).items():
        if name.startswith("_"):
            continue
        if isinstance(member, (staticmethod, classmethod)):
            member = member.__func__
        if callable(member) or isinstance(member, property):
            yield name, member


def test_every_public_name_is_documented() -> None:
    undocumented = []
    for name in sandcell.__all__:
        obj = getattr(sandcell, name)
        if name == "__version__":
            assert isinstance(obj, str)
            continue
        if isinstance(obj, type):
            if not (vars(obj).get("__doc__") or "").strip():
                undocumented.append(name)
            if issubclass(obj, BaseException) or issubclass(obj, sandcell.Status):
                members = [(n, m) for n, m in _own_members(obj) if n not in sandcell.Status.__members__]
            else:
                members = list(_own_members(obj))
            undocumented += [f"{name}.{n}" for n, m in members if not (m.__doc__ or "").strip()]
            assert obj.__module__ == "sandcell", name
        else:
            if not (obj.__doc__ or "").strip():
                undocumented.append(name)
    for field in sandcell.Usage._fields:
        doc = getattr(sandcell.Usage, field).__doc__ or ""
        if doc.startswith("Alias for field"):
            undocumented.append(f"Usage.{field}")
    assert not undocumented, undocumented


def test_status_is_a_str_enum_of_every_status() -> None:
    S = sandcell.Status
    assert issubclass(S, str) and [s.value for s in S] == [
        "exited",
        "timeout",
        "memory_limit",
        "cpu_limit",
        "output_limit",
        "signaled",
        "trap",
        "syscall_denied",
        "interrupted",
    ]
    assert S.TIMEOUT == "timeout" and "timeout" == S.TIMEOUT
    assert str(S.TIMEOUT) == "timeout" and f"{S.TIMEOUT}" == "timeout" and f"{S.TIMEOUT:>8}" == " timeout"
    assert json.dumps({"s": S.TRAP}) == '{"s": "trap"}'
    assert S("trap") is S.TRAP
    assert {S.EXITED: 1}["exited"] == 1
    with pytest.raises(ValueError):
        S("exitted")
    with sandcell.Sandbox("wasm", timeout="200ms") as sb:
        assert sb.run(HELLO_WAT.encode()).status is S.EXITED
        assert sb.run(SPIN).status is S.TIMEOUT
        assert sb.run(TRAP).status is S.TRAP


def test_a_status_this_package_does_not_list_still_reads() -> None:
    new = _outcome.status_named("quantum_tunnelled")
    assert isinstance(new, sandcell.Status) and isinstance(new, str)
    assert new == "quantum_tunnelled" and str(new) == "quantum_tunnelled"
    assert new not in list(sandcell.Status)
    assert _outcome.status_named("quantum_tunnelled") is new
    assert _outcome.status_named("trap") is sandcell.Status.TRAP


def test_check_returns_a_good_outcome_and_raises_for_anything_else() -> None:
    with sandcell.Sandbox("wasm", timeout="200ms") as sb:
        ok = sb.run(HELLO_WAT.encode())
        assert ok.check() is ok
        for program, status, code, message in [
            (EXIT_3, sandcell.Status.EXITED, 3, "the guest exited with code 3"),
            (TRAP, sandcell.Status.TRAP, None, "the guest trapped (unreachable)"),
            (SPIN, sandcell.Status.TIMEOUT, None, "the guest ended with status timeout"),
        ]:
            out = sb.run(program)
            with pytest.raises(sandcell.OutcomeError) as raised:
                out.check()
            e = raised.value
            assert e.outcome is out and e.status is status and e.exit_code == code
            assert str(e).startswith(message), str(e)
            assert not isinstance(e, sandcell.SandcellError)


def _conforms(value: Any, hint: Any) -> bool:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is type(None):
        return value is None
    if origin is typing.Union:
        return any(_conforms(value, a) for a in args)
    if origin is tuple:
        return isinstance(value, tuple) and all(_conforms(v, args[0]) for v in value)
    if origin is collections.abc.Mapping:
        return isinstance(value, collections.abc.Mapping) and all(
            _conforms(k, args[0]) and _conforms(v, args[1]) for k, v in value.items()
        )
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, float)
    return isinstance(value, hint)


POLICIES = [
    sandcell.Policy(),
    sandcell.Policy(
        memory="64M",
        timeout="1500ms",
        cpu_time=2,
        fuel=1000,
        cpus=2,
        max_processes=None,
        max_open_files=10,
        max_file_size="1K",
        max_output=0,
        mounts=[("/tmp", "/t", True)],
        system_dirs=["/usr"],
        network="loopback",
        unix_sockets=True,
        env={"A": "b"},
        deny_syscalls=["uname"],
        compile={"time": "250ms", "max_functions": 7},
        best_effort=True,
    ),
]


@pytest.mark.parametrize("policy", POLICIES)
def test_policy_fields_are_typed_attributes(policy: sandcell.Policy) -> None:
    doc = policy.to_dict()
    # The library's fields are exactly the package's, in the same order.
    assert list(doc) == list(sandcell.Policy.FIELDS)
    assert "__getattr__" not in vars(sandcell.Policy)
    for name in sandcell.Policy.FIELDS:
        prop = vars(sandcell.Policy)[name]
        assert isinstance(prop, property), name
        hint = typing.get_type_hints(prop.fget)["return"]
        assert hint is not Any
        assert _conforms(getattr(policy, name), hint), (name, getattr(policy, name), hint)
    for name, member in vars(sandcell.CompileLimits).get("__dataclass_fields__").items():
        assert _conforms(getattr(policy.compile, name), typing.get_type_hints(sandcell.CompileLimits)[name])


def test_policy_field_values() -> None:
    default, p = POLICIES
    assert (default.memory, default.timeout, default.max_processes, default.system_dirs) == (512 << 20, None, 64, None)
    assert default.compile == sandcell.CompileLimits(128 << 20, 100_000, 1 << 20, 60.0, 1 << 30)
    assert p.memory == 64 << 20 and p.timeout == 1.5 and p.cpu_time == 2.0 and p.max_file_size == 1024
    assert p.max_processes is None and p.max_output == 0 and p.network == "loopback" and p.unix_sockets
    assert p.mounts == (sandcell.Mount("/tmp", "/t", True),)
    assert p.system_dirs == ("/usr",) and p.deny_syscalls == ("uname",) and dict(p.env) == {"A": "b"}
    assert p.compile.time == 0.25 and p.compile.max_functions == 7 and p.compile.memory == 1 << 30
    assert p.best_effort is True and p.fuel == 1000 and p.cpus == 2 and p.max_open_files == 10
    # Immutable: no field can be set, nor the environment changed behind the policy's back.
    with pytest.raises(AttributeError):
        p.memory = 1  # type: ignore[misc]
    with pytest.raises(TypeError):
        p.env["A"] = "c"  # type: ignore[index]
    # replace() and the compile limits.
    q = p.replace(compile=p.compile.replace(time=5), timeout=None)
    assert q.compile.time == 5.0 and q.compile.max_functions == 7 and q.timeout is None and p.timeout == 1.5
    assert p.replace(compile={"memory": "2G"}).compile == p.compile.replace(memory=2 << 30)
    assert sandcell.Policy.from_json(p.to_json()) == p and sandcell.Policy.from_dict(p.to_dict()) == p
    assert pickle.loads(pickle.dumps(p)) == p and copy.deepcopy(p) == p and pickle.loads(pickle.dumps(p.mounts)) == p.mounts
    assert sandcell.Policy(compile=p.compile) == sandcell.Policy(compile={"time": "250ms", "max_functions": 7})
    with pytest.raises(sandcell.InvalidPolicyError, match="compile"):
        sandcell.Policy(compile={"tme": 1})
    # The typed fields are what the sandbox enforces: a sandbox from the policy reads them back.
    assert sandcell.Sandbox("wasm", sandcell.Policy(timeout=0.25)).policy.timeout == 0.25


def test_signatures_of_run_and_run_async_agree() -> None:
    run = inspect.signature(sandcell.Sandbox.run)
    run_async = inspect.signature(sandcell.Sandbox.run_async)
    assert run.parameters == run_async.parameters
    assert inspect.iscoroutinefunction(sandcell.Sandbox.run_async)
    assert "timeout" in run.parameters
