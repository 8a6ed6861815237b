"""The wheel and the sdist: the wheel's tag tells the truth about the library it bundles,
Requires-Python is what the package needs, the sdist builds a wheel, and a machine without Rust
gets one line of explanation instead of a traceback."""

from __future__ import annotations

import ast
import importlib.metadata
import importlib.util
import os
import platform
import re
import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path
from typing import Dict, List, Set, Tuple

import pytest

import sandcell
from conftest import REPO, skip_or_fail

PYTHON_DIR = REPO / "python"
LIBRARY = Path(sandcell.__file__).resolve().parent / "libsandcell.so"
# The libraries a manylinux platform provides, and its dynamic loader (PEP 600 / auditwheel).
MANYLINUX_LIBRARIES = {
    "libc.so.6",
    "libm.so.6",
    "libdl.so.2",
    "libpthread.so.0",
    "librt.so.1",
    "libutil.so.1",
    "libresolv.so.2",
    "libnsl.so.1",
    "libgcc_s.so.1",
}


def wheel_platform():
    """The build helper of the source tree (not part of the installed package)."""
    spec = importlib.util.spec_from_file_location("wheel_platform", PYTHON_DIR / "wheel_platform.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def installed_tag() -> str:
    wheel = importlib.metadata.distribution("sandcell").read_text("WHEEL") or ""
    tags = re.findall(r"^Tag: (\S+)$", wheel, re.M)
    assert len(tags) == 1, wheel
    assert "Root-Is-Purelib: false" in wheel
    return tags[0]


def readelf(path: Path) -> Tuple[List[str], Dict[str, Set[str]]]:
    """DT_NEEDED and the version needs of an ELF file, as binutils' readelf reads them."""
    tool = shutil.which("readelf")
    if tool is None:
        skip_or_fail("readelf (binutils) is not installed")
    out = subprocess.run([tool, "-d", "-V", "--wide", str(path)], capture_output=True, text=True, check=True).stdout
    needed = re.findall(r"\(NEEDED\)\s+Shared library: \[([^\]]+)\]", out)
    versions: Dict[str, Set[str]] = {}
    file = None
    for line in out[out.index(".gnu.version_r") :].splitlines()[1:]:
        m = re.search(r"File: (\S+)", line)
        if m:
            file = m.group(1)
            versions.setdefault(file, set())
            continue
        m = re.search(r"Name: (\S+)", line)
        if m and file:
            versions[file].add(m.group(1))
    return needed, versions


def test_the_wheel_is_one_for_every_python_3_tagged_by_its_library() -> None:
    python, abi, plat = installed_tag().split("-")
    assert (python, abi) == ("py3", "none")
    assert plat == wheel_platform().platform_tag(str(LIBRARY))[0]


def test_the_elf_reader_agrees_with_readelf() -> None:
    needed, versions = readelf(LIBRARY)
    info = wheel_platform().read_elf(str(LIBRARY))
    assert info.needed == needed
    assert {k: set(v) for k, v in info.versions.items()} == versions
    assert any(v.startswith("GLIBC_2.") for vs in versions.values() for v in vs)


def test_a_manylinux_tag_is_honest() -> None:
    """manylinux_2_Y: Y is the newest GLIBC_2.Y the library references (at least 17), and it
    links only what every manylinux platform provides. Otherwise the tag is linux_ARCH."""
    plat = installed_tag().split("-")[2]
    needed, versions = readelf(LIBRARY)
    m = re.fullmatch(r"manylinux_(\d+)_(\d+)_(\w+)", plat)
    if m is None:
        assert plat == f"linux_{platform.machine()}"
        return
    glibc = [(2, 17)]
    for names in versions.values():
        for name in names:
            v = re.fullmatch(r"GLIBC_2\.(\d+)(\.\d+)?", name)
            if v:
                glibc.append((2, int(v.group(1))))
            else:
                assert re.fullmatch(r"GCC_[34](\.\d+)*", name), f"{name} is not a manylinux symbol version"
    assert (int(m.group(1)), int(m.group(2))) == max(glibc)
    assert m.group(3) == platform.machine()
    for lib in needed:
        assert lib in MANYLINUX_LIBRARIES or re.fullmatch(r"ld-linux[-\w]*\.so\.\d+", lib), lib


def test_the_platform_tag_refuses_manylinux_when_it_cannot_vouch(tmp_path: Path) -> None:
    wp = wheel_platform()
    info = wp.read_elf(str(LIBRARY))
    assert wp.manylinux_glibc(info)[0] is not None
    extra_lib = info._replace(needed=info.needed + ["libssl.so.3"])
    assert wp.manylinux_glibc(extra_lib)[0] is None
    cxx = info._replace(versions={**info.versions, "libstdc++.so.6": ["GLIBCXX_3.4.30"]})
    assert wp.manylinux_glibc(cxx)[0] is None
    newer = info._replace(versions={**info.versions, "libc.so.6": ["GLIBC_2.39", "GLIBC_2.2.5"]})
    assert wp.manylinux_glibc(newer) == ((2, 39), [])
    not_elf = tmp_path / "libsandcell.so"
    not_elf.write_bytes(b"#!/bin/sh\n")
    tag, why = wp.platform_tag(str(not_elf))
    assert tag == f"linux_{platform.machine()}" and why


def test_requires_python_is_what_the_package_needs() -> None:
    meta = importlib.metadata.metadata("sandcell")
    assert meta["Requires-Python"] == ">=3.9"
    pyproject = (PYTHON_DIR / "pyproject.toml").read_text()
    assert re.search(r'^requires-python = ">=3\.9"$', pyproject, re.M)
    versions = sorted(int(v) for v in re.findall(r"Python :: 3\.(\d+)", pyproject))
    assert versions[0] == 9
    # The code itself is Python 3.9: no syntax of a later version.
    package = Path(sandcell.__file__).parent
    for source in [*package.glob("*.py"), PYTHON_DIR / "setup.py", PYTHON_DIR / "wheel_platform.py"]:
        ast.parse(source.read_text(), str(source), feature_version=(3, 9))


def need_setuptools() -> None:
    try:
        version = importlib.metadata.version("setuptools")
    except importlib.metadata.PackageNotFoundError:
        skip_or_fail("setuptools is not installed here: pip install 'setuptools>=77'")
    if int(version.split(".")[0]) < 77:
        skip_or_fail(f"setuptools {version} is too old to build the package: pip install 'setuptools>=77'")


@pytest.fixture(scope="module")
def sdist(tmp_path_factory: pytest.TempPathFactory) -> Tuple[List[str], Path]:
    """The sdist `python -m build` would make (its file names), unpacked."""
    need_setuptools()
    out = tmp_path_factory.mktemp("sdist")
    done = subprocess.run(
        [sys.executable, "setup.py", "-q", "sdist", "-d", str(out)], cwd=PYTHON_DIR, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stdout + done.stderr
    (archive,) = out.glob("sandcell-*.tar.gz")
    with tarfile.open(archive) as t:
        names = t.getnames()
        t.extractall(out, **({"filter": "data"} if hasattr(tarfile, "data_filter") else {}))  # type: ignore[arg-type]
    top = archive.name[: -len(".tar.gz")]
    return [n[len(top) + 1 :] for n in names if n.startswith(top + "/")], out / top


def test_the_sdist_carries_what_cargo_builds_the_library_from(sdist: Tuple[List[str], Path]) -> None:
    names, _ = sdist
    files = set(names)
    for f in ["setup.py", "wheel_platform.py", "pyproject.toml", "README.md", "sandcell/__init__.py"]:
        assert f in files, f
    for f in ["Cargo.toml", "Cargo.lock", "build.rs", "include/sandcell.h", "ffi/Cargo.toml", "ffi/build.rs", "guest/Cargo.toml"]:
        assert "rust/" + f in files, f
    # Every source file of the crates, and what the manifests declare: benches, workspace members.
    for crate in ["src", "ffi/src", "guest/abi", "guest/runtime", "guest/sdk"]:
        for path in (REPO / crate).rglob("*"):
            if path.is_file() and "target" not in path.relative_to(REPO).parts:
                assert "rust/" + str(path.relative_to(REPO)) in files, path
    for manifest, directory in [("Cargo.toml", ""), ("ffi/Cargo.toml", "ffi/")]:
        for bench in re.findall(r'\[\[bench\]\]\s*name = "([^"]+)"', (REPO / manifest).read_text()):
            assert f"rust/{directory}benches/{bench}.rs" in files, bench
    members = re.search(r"members = \[([^\]]*)\]", (REPO / "guest" / "Cargo.toml").read_text())
    assert members
    for member in re.findall(r'"([^"]+)"', members.group(1)):
        assert f"rust/guest/{member}/Cargo.toml" in files, member
    # Not the build products, nor the suite (it runs against the repository).
    assert not [n for n in names if "/target/" in n or n.startswith("rust/target") or n.endswith(".pyc")]
    assert not [n for n in names if n.startswith("tests/")]


def test_a_wheel_builds_from_the_sdist(sdist: Tuple[List[str], Path], tmp_path: Path) -> None:
    """What `python -m build` does after making the sdist; the library is the installed one, taken
    as already built (SANDCELL_SKIP_CARGO=1) from CARGO_TARGET_DIR."""
    _, tree = sdist
    target = tmp_path / "target"
    (target / "release").mkdir(parents=True)
    os.symlink(LIBRARY, target / "release" / "libsandcell.so")
    env = dict(os.environ, SANDCELL_SKIP_CARGO="1", SANDCELL_CARGO_PROFILE="release", CARGO_TARGET_DIR=str(target))
    done = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-build-isolation", "--no-deps", "-w", str(tmp_path), str(tree)],
        env=env,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    (wheel,) = tmp_path.glob("*.whl")
    plat = wheel_platform().platform_tag(str(LIBRARY))[0]
    assert wheel.name == f"sandcell-{importlib.metadata.version('sandcell')}-py3-none-{plat}.whl"
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
        assert {"sandcell/__init__.py", "sandcell/_lib.py", "sandcell/libsandcell.so", "sandcell/py.typed"} <= names
        assert not [n for n in names if n.startswith(("rust/", "tests/", "wheel_platform"))]
        wheel_file = next(n for n in names if n.endswith(".dist-info/WHEEL"))
        assert f"Tag: py3-none-{plat}" in z.read(wheel_file).decode()


def test_without_cargo_the_build_says_why_in_one_line(sdist: Tuple[List[str], Path], tmp_path: Path) -> None:
    _, tree = sdist
    path = os.pathsep.join(d for d in os.environ.get("PATH", "").split(os.pathsep) if d and not (Path(d) / "cargo").exists())
    env = {k: v for k, v in os.environ.items() if k not in ("SANDCELL_SKIP_CARGO", "CARGO")}
    env["PATH"] = path
    done = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-build-isolation", "--no-deps", "-w", str(tmp_path), str(tree)],
        env=env,
        capture_output=True,
        text=True,
    )
    out = done.stdout + done.stderr
    assert done.returncode != 0
    lines = [line.strip() for line in out.splitlines() if "sandcell:" in line]
    assert len(lines) == 1, out
    assert "cargo is not on PATH" in lines[0] and "https://rustup.rs" in lines[0] and "SANDCELL_SKIP_CARGO=1" in lines[0]
    assert "Traceback" not in out and "FileNotFoundError" not in out, out
