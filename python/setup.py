"""Builds the Rust library (the `sandcell-ffi` crate) and ships libsandcell.so inside the package.

`pip install ./python`, `pip wheel ./python` and `python -m build ./python` run this: it calls
cargo on the repository this directory belongs to and copies the library next to the Python
modules, so the wheel is self-contained. The wheel is tagged `py3-none-PLATFORM`: one wheel for
every CPython >= 3.9 (ctypes, no CPython extension module), PLATFORM computed from the library
(see wheel_platform.py). The sdist carries the Rust sources under `rust/`, so a wheel builds from
it too (that is what `python -m build` does). Environment:

- SANDCELL_CARGO_PROFILE: the cargo profile (default `release`; the tests use `dev`, which
  reuses what `cargo build` already built).
- CARGO_TARGET_DIR: where cargo builds (default: the repository's `target/`).
- SANDCELL_SKIP_CARGO=1: do not run cargo, take the library already built for the profile (in
  CARGO_TARGET_DIR, or the repository's `target/`).
"""

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

from setuptools import Distribution, setup
from setuptools.command.bdist_wheel import bdist_wheel
from setuptools.command.build_py import build_py
from setuptools.command.sdist import sdist

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from wheel_platform import platform_tag  # noqa: E402  (next to this file, in the sdist too)

# The Rust workspace: the repository around python/, or its copy in an sdist.
ROOT = HERE.parent if (HERE.parent / "ffi" / "Cargo.toml").is_file() else HERE / "rust"
# What the sdist copies into rust/: what `cargo build -p sandcell-ffi` reads (the workspace, its
# two members with their declared benches, the micro-VM guest workspace that build.rs compiles)
# and the C header.
RUST_SOURCES = ["Cargo.toml", "Cargo.lock", "build.rs", "rustfmt.toml", "src", "benches", "ffi", "guest", "include"]
NOT_SOURCES = {"target", "__pycache__", ".git"}


def fail(message: str) -> "SystemExit":
    """A one-line error instead of a traceback."""
    return SystemExit(f"sandcell: {message}")


def library_path() -> Path:
    """Where cargo puts libsandcell.so for the chosen profile."""
    profile = os.environ.get("SANDCELL_CARGO_PROFILE", "release")
    target = Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target"))
    if not target.is_absolute():
        target = ROOT / target
    return target / ("debug" if profile in ("dev", "test") else profile) / "libsandcell.so"


def cargo_build() -> None:
    profile = os.environ.get("SANDCELL_CARGO_PROFILE", "release")
    cargo = shutil.which("cargo")
    if cargo is None:
        raise fail(
            "building the package needs the Rust toolchain, and cargo is not on PATH: install it "
            "(https://rustup.rs), or set SANDCELL_SKIP_CARGO=1 to bundle a libsandcell.so already built"
        )
    cmd = [cargo, "build", "-p", "sandcell-ffi", "--profile", profile]
    print("sandcell: " + " ".join(cmd[1:]), flush=True)
    try:
        done = subprocess.run(cmd, cwd=ROOT)
    except OSError as e:
        raise fail(f"cannot run {cargo}: {e}") from None
    if done.returncode != 0:
        raise fail(f"`cargo {' '.join(cmd[1:])}` failed (exit status {done.returncode}); its errors are above")


class BuildWithCargo(build_py):
    """build_py, plus the library: built with cargo, copied into the package and stripped."""

    def run(self) -> None:
        super().run()
        if not (ROOT / "ffi" / "Cargo.toml").is_file():
            raise fail(
                f"{HERE} is neither in the sandcell repository nor an sdist of it (no "
                f"{ROOT / 'ffi' / 'Cargo.toml'}); build the package from a clone: pip install ./python"
            )
        skip = os.environ.get("SANDCELL_SKIP_CARGO") == "1"
        if not skip:
            cargo_build()
        built = library_path()
        if not built.is_file():
            hint = (
                "SANDCELL_SKIP_CARGO=1 takes a library already built: build it first (cargo build "
                "-p sandcell-ffi), or point CARGO_TARGET_DIR at the target directory that has it"
                if skip
                else "cargo did not build it"
            )
            raise fail(f"{built} is missing: {hint}")
        dest = Path(self.build_lib) / "sandcell" / "libsandcell.so"
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(built, dest)
        # A dev build carries ~100 MB of debug information the package does not need.
        if shutil.which("strip"):
            subprocess.run(["strip", "--strip-debug", str(dest)], check=False)
        os.chmod(dest, 0o755)


class Wheel(bdist_wheel):
    """Tags the wheel `py3-none-PLATFORM`, PLATFORM read from the library it bundles."""

    def get_tag(self):
        if self.plat_name_supplied and self.plat_name:  # --plat-name: the caller decides
            return ("py3", "none", re.sub(r"[-. ]", "_", self.plat_name.lower()))
        build_lib = self.get_finalized_command("build_py").build_lib
        library = Path(build_lib) / "sandcell" / "libsandcell.so"
        if not library.is_file():
            raise fail(f"{library} is missing: the wheel has no library to tag it by")
        tag, reasons = platform_tag(str(library))
        if reasons and not getattr(self, "_told", False):
            self._told = True
            print(f"sandcell: tagged {tag}, not manylinux: " + "; ".join(reasons), flush=True)
        return ("py3", "none", tag)


class SdistWithRust(sdist):
    """The sdist also carries the Rust sources (under rust/), so that a wheel builds from it."""

    def make_release_tree(self, base_dir: str, files) -> None:
        super().make_release_tree(base_dir, files)
        if not (ROOT / "ffi" / "Cargo.toml").is_file():
            raise fail(f"no Rust workspace at {ROOT} to put in the sdist")
        dest_root = Path(base_dir) / "rust"
        for name in RUST_SOURCES:
            source = ROOT / name
            if source.is_file():
                dest_root.mkdir(parents=True, exist_ok=True)
                shutil.copy2(source, dest_root / name)
            elif source.is_dir():
                for directory, subdirs, names in os.walk(source):
                    subdirs[:] = sorted(d for d in subdirs if d not in NOT_SOURCES)
                    out = dest_root / Path(directory).relative_to(ROOT)
                    out.mkdir(parents=True, exist_ok=True)
                    for n in names:
                        if not n.endswith(".pyc"):
                            shutil.copy2(Path(directory) / n, out / n)
            elif name != "rustfmt.toml":
                raise fail(f"{source} is missing: the sdist would not build")


class BinaryDistribution(Distribution):
    """The wheel holds a native library: install it as platform-specific, not pure Python."""

    def has_ext_modules(self):
        return True


setup(
    cmdclass={"build_py": BuildWithCargo, "bdist_wheel": Wheel, "sdist": SdistWithRust},
    distclass=BinaryDistribution,
)
