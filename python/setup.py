"""Builds the Rust library (the `sandcell-ffi` crate) and ships libsandcell.so inside the package.

`pip install ./python` from the repository root runs this: it calls cargo on the repository this
directory belongs to and copies the library next to the Python modules, so the wheel is
self-contained. Environment:

- SANDCELL_CARGO_PROFILE: the cargo profile (default `release`; the tests use `dev`, which
  reuses what `cargo test` already built).
- CARGO_TARGET_DIR: where cargo builds (default: the repository's `target/`).
- SANDCELL_SKIP_CARGO=1: do not run cargo, take the library already built for the profile.
"""

import os
import shutil
import subprocess
from pathlib import Path

from setuptools import Distribution, setup
from setuptools.command.build_py import build_py

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent


class BuildWithCargo(build_py):
    def run(self):
        super().run()
        if not (ROOT / "ffi" / "Cargo.toml").is_file():
            raise SystemExit(
                f"sandcell: {ROOT} is not the sandcell repository (no ffi/Cargo.toml); build the "
                "package from a clone: pip install ./python"
            )
        profile = os.environ.get("SANDCELL_CARGO_PROFILE", "release")
        if os.environ.get("SANDCELL_SKIP_CARGO") != "1":
            cmd = ["cargo", "build", "-p", "sandcell-ffi", "--profile", profile]
            print("sandcell: " + " ".join(cmd), flush=True)
            subprocess.run(cmd, cwd=ROOT, check=True)
        target = Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target"))
        if not target.is_absolute():
            target = ROOT / target
        built = target / ("debug" if profile in ("dev", "test") else profile) / "libsandcell.so"
        if not built.is_file():
            raise SystemExit(f"sandcell: {built} was not built")
        dest = Path(self.build_lib) / "sandcell" / "libsandcell.so"
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(built, dest)
        # A dev build carries ~100 MB of debug information the package does not need.
        if shutil.which("strip"):
            subprocess.run(["strip", "--strip-debug", str(dest)], check=False)
        os.chmod(dest, 0o755)


class BinaryDistribution(Distribution):
    """The wheel holds a native library: tag it for this platform, not as pure Python."""

    def has_ext_modules(self):
        return True


setup(cmdclass={"build_py": BuildWithCargo}, distclass=BinaryDistribution)
