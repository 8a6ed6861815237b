"""The wheel's platform tag, read from the libsandcell.so it bundles (used by setup.py).

The package loads the library with ctypes, so the wheel works with every CPython >= 3.9 (its
tag is `py3-none-PLATFORM`); what ties it to a platform is the library alone. A manylinux tag
promises that the library runs on every Linux distribution with glibc >= 2.Y, so the tag is
computed from the library itself, not from the build machine:

- Y is the highest `GLIBC_2.Y` symbol version the library references (its ELF
  `.gnu.version_r` section: what `readelf -V` shows under "Version needs"), and at least 17, the
  oldest manylinux this tool vouches for (manylinux2014);
- every library it links (DT_NEEDED) must be one that manylinux allows the platform to provide
  (libc, libm, libdl, libpthread, librt, libgcc_s, the dynamic loader, ...), and every other
  symbol version it references must be an old enough `GCC_x` (libgcc_s).

If any of this does not hold, or the file cannot be read as ELF, the tag is `linux_ARCH`, which
promises nothing beyond "Linux on this architecture" (PyPI refuses such wheels; pip installs them).
This is the check auditwheel makes for symbol versions and libraries, without its repair step.

Only the standard library is used: it runs inside the isolated build environment.
"""

from __future__ import annotations

import re
import struct
from typing import Dict, List, NamedTuple, Optional, Tuple

# e_machine values and the architecture names of wheel tags.
MACHINES = {3: "i686", 62: "x86_64", 183: "aarch64", 40: "armv7l", 21: "ppc64le", 22: "s390x", 243: "riscv64"}

# Libraries a manylinux platform provides (PEP 600 defers to auditwheel's list; those sandcell
# could plausibly link). libstdc++ is left out on purpose: its GLIBCXX versions are not checked here.
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
# The dynamic loader is part of glibc on every manylinux platform.
LOADER = re.compile(r"^ld-linux(-[a-z0-9_-]+)?\.so\.\d+$|^ld64\.so\.\d+$")
OLDEST_GLIBC = (2, 17)
NEWEST_GCC = (4, 8, 0)  # libgcc_s versions manylinux2014 (and every later policy) provides

SHT_DYNAMIC = 6
SHT_GNU_VERNEED = 0x6FFFFFFE
DT_NULL = 0
DT_NEEDED = 1


class ElfInfo(NamedTuple):
    """What the platform tag depends on."""

    machine: int
    needed: List[str]
    """DT_NEEDED: the libraries the dynamic linker loads with it."""
    versions: Dict[str, List[str]]
    """Version needs: for each library, the symbol versions referenced (`GLIBC_2.34`, ...)."""


class Section(NamedTuple):
    type: int
    offset: int
    size: int
    link: int
    info: int


def read_elf(path: str) -> ElfInfo:
    """Reads the machine, DT_NEEDED and version needs of an ELF file. Raises ValueError when the
    file is not an ELF file with section headers."""
    with open(path, "rb") as f:
        data = f.read()
    if data[:4] != b"\x7fELF":
        raise ValueError(f"{path} is not an ELF file")
    bits = {1: 32, 2: 64}.get(data[4])
    order = {1: "<", 2: ">"}.get(data[5])
    if bits is None or order is None:
        raise ValueError(f"{path}: unknown ELF class or byte order")
    if bits == 64:
        header = struct.unpack_from(order + "HHIQQQIHHHHHH", data, 16)
        sh_format = order + "IIQQQQIIQQ"
    else:
        header = struct.unpack_from(order + "HHIIIIIHHHHHH", data, 16)
        sh_format = order + "IIIIIIIIII"
    machine, shoff, shentsize, shnum = header[1], header[5], header[10], header[11]
    if not shoff:
        raise ValueError(f"{path} has no section headers")

    def section(index: int) -> Section:
        f = struct.unpack_from(sh_format, data, shoff + index * shentsize)
        return Section(type=f[1], offset=f[4], size=f[5], link=f[6], info=f[7])

    if shnum == 0:  # more than 0xff00 sections: the count is in section 0
        shnum = section(0).size
    sections = [section(i) for i in range(shnum)]

    def string(table: Section, offset: int) -> str:
        start = table.offset + offset
        end = data.index(b"\0", start)
        return data[start:end].decode("utf-8", "replace")

    needed: List[str] = []
    versions: Dict[str, List[str]] = {}
    for s in sections:
        if s.type == SHT_DYNAMIC:
            strings = sections[s.link]
            entry = struct.Struct(order + ("qQ" if bits == 64 else "iI"))
            for pos in range(s.offset, s.offset + s.size, entry.size):
                tag, value = entry.unpack_from(data, pos)
                if tag == DT_NULL:
                    break
                if tag == DT_NEEDED:
                    needed.append(string(strings, value))
        elif s.type == SHT_GNU_VERNEED:
            # Elf_Verneed {vn_version, vn_cnt, vn_file, vn_aux, vn_next} followed by vn_cnt
            # Elf_Vernaux {vna_hash, vna_flags, vna_other, vna_name, vna_next}: the same layout for
            # ELF32 and ELF64. sh_info is the number of Elf_Verneed entries.
            strings = sections[s.link]
            pos = s.offset
            for _ in range(s.info):
                _, count, file, aux, next_need = struct.unpack_from(order + "HHIII", data, pos)
                names = versions.setdefault(string(strings, file), [])
                apos = pos + aux
                for _ in range(count):
                    _, _, _, name, next_aux = struct.unpack_from(order + "IHHII", data, apos)
                    names.append(string(strings, name))
                    if not next_aux:
                        break
                    apos += next_aux
                if not next_need:
                    break
                pos += next_need
    return ElfInfo(machine, needed, versions)


def _version(text: str, prefix: str) -> Optional[Tuple[int, ...]]:
    m = re.fullmatch(re.escape(prefix) + r"(\d+(?:\.\d+)*)", text)
    return tuple(int(p) for p in m.group(1).split(".")) if m else None


def manylinux_glibc(info: ElfInfo) -> Tuple[Optional[Tuple[int, int]], List[str]]:
    """The glibc version a manylinux tag of this library names, or None, and the reasons why not."""
    problems = []
    for lib in info.needed:
        if lib not in MANYLINUX_LIBRARIES and not LOADER.match(lib):
            problems.append(f"it links {lib}, which manylinux platforms need not provide")
    glibc = OLDEST_GLIBC
    for lib, names in info.versions.items():
        for name in names:
            g = _version(name, "GLIBC_")
            if g is not None:
                if g[0] != 2 or len(g) < 2:
                    problems.append(f"{lib}: unexpected glibc version {name}")
                else:
                    glibc = max(glibc, (g[0], g[1]))
                continue
            gcc = _version(name, "GCC_")
            if gcc is not None and lib == "libgcc_s.so.1":
                if gcc > NEWEST_GCC:
                    problems.append(f"it needs {name} of libgcc_s, newer than manylinux provides")
                continue
            problems.append(f"it needs the symbol version {name} of {lib}")
    return (None if problems else glibc), problems


def platform_tag(path: str) -> Tuple[str, List[str]]:
    """The wheel platform tag for a wheel bundling the library at `path`, and why it is not a
    manylinux tag when it is not."""
    try:
        info = read_elf(path)
    except (OSError, ValueError, struct.error, IndexError) as e:
        import platform

        return f"linux_{platform.machine()}", [f"cannot read it as ELF: {e}"]
    arch = MACHINES.get(info.machine)
    if arch is None:
        import platform

        return f"linux_{platform.machine()}", [f"unknown ELF machine {info.machine}"]
    glibc, problems = manylinux_glibc(info)
    if glibc is None:
        return f"linux_{arch}", problems
    return f"manylinux_{glibc[0]}_{glibc[1]}_{arch}", []


if __name__ == "__main__":
    import sys

    for p in sys.argv[1:]:
        tag, why = platform_tag(p)
        print(p, tag, *why, sep="\n  ")
