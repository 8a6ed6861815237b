"""Fixtures: the test guest of the Rust conformance suite (tests/guests/testguest), compiled for
each backend, and the backends this host offers.

A backend this host lacks is skipped with the reason, unless SANDCELL_REQUIRE_ALL=1 (CI sets it),
which turns the skip into a failure.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Dict, Iterator

import pytest

import sandcell

REPO = Path(os.environ.get("SANDCELL_REPO", Path(__file__).resolve().parents[2]))

# The suite tests the installed package (its wheel carries libsandcell.so), not the source tree:
# run it as `pytest python/tests` from the repository root, not `python -m pytest` from python/.
if Path(sandcell.__file__).resolve().parent == REPO / "python" / "sandcell":
    raise ImportError("sandcell was imported from the source tree, not the installed package")
GUEST_DIR = "/opt/sandcell-guest"  # where the process backend sees the native test guest
BACKENDS = ("wasm", "process", "microvm")


def require_all() -> bool:
    return os.environ.get("SANDCELL_REQUIRE_ALL", "") not in ("", "0")


def skip_or_fail(why: str) -> None:
    if require_all():
        pytest.fail(f"SANDCELL_REQUIRE_ALL is set, so this may not skip: {why}")
    pytest.skip(why)


_built: Dict[str, Path] = {}


def guest_for(target: str, file: str) -> Path:
    """Builds tests/guests for `target` (once per session) and returns the artifact."""
    if target in _built:
        return _built[target]
    out = REPO / "target" / "guests"
    path = out / target / "release" / file
    cargo = shutil.which("cargo")
    if cargo and (REPO / "tests" / "guests" / "Cargo.toml").is_file():
        env = {k: v for k, v in os.environ.items() if k not in ("RUSTFLAGS", "CARGO_BUILD_TARGET")}
        env["CARGO_TARGET_DIR"] = str(out)
        done = subprocess.run(
            [cargo, "build", "--release", "--quiet", "--target", target],
            cwd=REPO / "tests" / "guests",
            env=env,
        )
        if done.returncode != 0:
            skip_or_fail(f"building the test guest for {target} failed (rustup target add {target})")
    if not path.is_file():
        skip_or_fail(f"{path} is not built and cannot be built here")
    _built[target] = path
    return path


class Fixture:
    """One backend and how to reach the test guest on it."""

    def __init__(self, backend: str) -> None:
        self.backend = backend
        if backend == "process":
            self.host_guest = guest_for("x86_64-unknown-linux-gnu", "testguest")
            self.program = f"{GUEST_DIR}/testguest"
        else:
            self.host_guest = guest_for("wasm32-wasip1", "testguest.wasm")
            self.program = str(self.host_guest)

    def sandbox(self, **fields: object) -> sandcell.Sandbox:
        fields.setdefault("memory", "256M")
        fields.setdefault("timeout", 30)
        if self.backend == "process":
            mounts = list(fields.pop("mounts", []))  # type: ignore[call-overload]
            mounts.append(sandcell.Mount(str(self.host_guest.parent), GUEST_DIR))
            fields["mounts"] = mounts
        return sandcell.Sandbox(self.backend, **fields)

    def run(self, sandbox: sandcell.Sandbox, mode: str, *args: str, **kw: object) -> sandcell.Outcome:
        return sandbox.run(self.program, [mode, *args], name="testguest", **kw)  # type: ignore[arg-type]

    def __repr__(self) -> str:
        return self.backend


def _available(backend: str) -> None:
    info = next(b for b in sandcell.probe()["backends"] if b["backend"] == backend)
    if not info["available"]:
        skip_or_fail(f"the {backend} backend is unavailable: {info['reason']}")


@pytest.fixture(params=BACKENDS)
def fx(request: pytest.FixtureRequest) -> Iterator[Fixture]:
    _available(request.param)
    yield Fixture(request.param)


HELLO_WAT = (REPO / "examples" / "hello.wat").read_text()
