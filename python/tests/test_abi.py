"""The ctypes declarations of sandcell._lib against include/sandcell.h: every function the package
declares has the header's parameters and result, every struct its fields, every constant its
value. A change to the C ABI that the package does not follow fails here instead of corrupting
memory at run time."""

from __future__ import annotations

import ctypes
import re
from typing import Dict, List, NamedTuple, Tuple

import pytest

import sandcell
from sandcell import _errors, _lib
from conftest import REPO, skip_or_fail

HEADER = REPO / "include" / "sandcell.h"


class CType(NamedTuple):
    """A C type reduced to what the ABI depends on: its base type and pointer depth."""

    base: str
    pointers: int


class Header(NamedTuple):
    functions: Dict[str, Tuple[CType, List[CType]]]
    fn_types: Dict[str, Tuple[CType, List[CType]]]
    structs: Dict[str, List[Tuple[str, CType]]]
    defines: Dict[str, str]


def ctype(decl: str, named: bool) -> Tuple[str, CType]:
    """`const uint8_t *data` -> ("data", CType("uint8_t", 1)); `void` -> ("", CType("void", 0))."""
    tokens = [t for t in re.findall(r"\w+|\*", decl) if t != "const"]
    name = ""
    if named and len(tokens) >= 2 and tokens[-1] != "*":
        name = tokens.pop()
    words = [t for t in tokens if t != "*"]
    assert len(words) == 1, f"cannot read the C type {decl!r}"
    return name, CType(words[0], tokens.count("*"))


def parameters(text: str) -> List[CType]:
    text = text.strip()
    if text in ("", "void"):
        return []
    return [ctype(p, named=True)[1] for p in text.split(",")]


def parse_header(text: str) -> Header:
    defines = dict(re.findall(r"^#define\s+(SANDCELL_\w+)\s+(\S+)", text, re.M))
    code = re.sub(r"/\*.*?\*/", " ", text, flags=re.S)
    code = re.sub(r"//[^\n]*", " ", code)
    code = re.sub(r"^#.*$", " ", code, flags=re.M)
    code = code.replace('extern "C" {', " ")
    fn_types = {}
    for result, name, params in re.findall(r"typedef\s+([\w\s\*]+?)\s*\(\s*\*\s*(\w+)\s*\)\s*\(([^)]*)\)\s*;", code):
        fn_types[name] = (ctype(result, named=False)[1], parameters(params))
    structs = {}
    for body, name in re.findall(r"typedef\s+struct\s*\{([^}]*)\}\s*(\w+)\s*;", code):
        fields = [ctype(f, named=True) for f in body.split(";") if f.strip()]
        structs[name] = fields
    functions = {}
    for result, name, params in re.findall(r"([\w\s\*]+?)\b(sandcell_\w+)\s*\(([^)]*)\)\s*;", code):
        if "typedef" in result:
            continue
        functions[name] = (ctype(result, named=False)[1], parameters(params))
    return Header(functions, fn_types, structs, defines)


@pytest.fixture(scope="module")
def header() -> Header:
    if not HEADER.is_file():
        skip_or_fail(f"{HEADER} is missing (the tests run from a clone of the repository)")
    parsed = parse_header(HEADER.read_text())
    # The parser must see the whole header: a regex that silently matched nothing would make
    # every comparison below vacuous.
    assert len(parsed.functions) >= 50 and "sandcell_sandbox_run" in parsed.functions
    assert set(parsed.structs) >= {"sandcell_run_options_t", "sandcell_usage_t", "sandcell_outcome_summary_t"}
    assert set(parsed.fn_types) >= {"sandcell_output_fn", "sandcell_output_fn2"}
    return parsed


INTEGERS = {
    "bool": ("bool", 8),
    "int": ("signed", 8 * ctypes.sizeof(ctypes.c_int)),
    "int8_t": ("signed", 8),
    "uint8_t": ("unsigned", 8),
    "int32_t": ("signed", 32),
    "uint32_t": ("unsigned", 32),
    "int64_t": ("signed", 64),
    "uint64_t": ("unsigned", 64),
    "size_t": ("unsigned", 8 * ctypes.sizeof(ctypes.c_size_t)),
}
BYTES = {"char", "uint8_t", "int8_t"}


def integer_kind(ct: type) -> Tuple[str, int]:
    code = getattr(ct, "_type_", None)
    assert isinstance(code, str) and code in "?bBhHiIlLqQ", f"{ct} is not an integer type"
    kind = "bool" if code == "?" else "unsigned" if code.isupper() else "signed"
    return kind, 8 * ctypes.sizeof(ct)


def mismatch(ct: object, c: CType, h: Header, where: str) -> List[str]:
    """Why the ctypes type `ct` does not declare the C type `c` (empty when it does)."""
    bad = [f"{where}: {ct!r} does not declare {c.base}{' ' + '*' * c.pointers if c.pointers else ''}"]
    if ct is None:
        return [] if c == CType("void", 0) else bad
    if ct is ctypes.c_void_p:  # any pointer to data
        return [] if c.pointers == 1 and c.base not in h.fn_types else bad
    if ct is ctypes.c_char_p:  # a pointer to bytes
        return [] if c.pointers == 1 and c.base in BYTES else bad
    if isinstance(ct, type) and issubclass(ct, ctypes._Pointer):
        if c.pointers == 0:
            return bad
        return mismatch(ct._type_, CType(c.base, c.pointers - 1), h, where)
    if isinstance(ct, type) and issubclass(ct, ctypes._CFuncPtr):
        if c.pointers != 0 or c.base not in h.fn_types:
            return bad
        result, params = h.fn_types[c.base]
        if len(ct._argtypes_) != len(params):
            return bad + [f"{where}: {len(ct._argtypes_)} parameters, the header has {len(params)}"]
        errors = mismatch(ct._restype_, result, h, f"{where} (result)")
        for i, (a, p) in enumerate(zip(ct._argtypes_, params)):
            errors += mismatch(a, p, h, f"{where} (parameter {i + 1})")
        return errors
    if isinstance(ct, type) and issubclass(ct, ctypes.Structure):
        if c.pointers != 0 or c.base != getattr(ct, "c_name", None) or c.base not in h.structs:
            return bad
        return struct_mismatch(ct, h)
    if c.pointers != 0 or c.base not in INTEGERS:
        return bad
    return [] if integer_kind(ct) == INTEGERS[c.base] else bad  # type: ignore[arg-type]


def struct_mismatch(ct: type, h: Header) -> List[str]:
    fields = h.structs[ct.c_name]  # type: ignore[attr-defined]
    ours = ct._fields_  # type: ignore[attr-defined]
    if [n for n, _ in ours] != [n for n, _ in fields]:
        return [f"{ct.__name__}: fields {[n for n, _ in ours]}, the header has {[n for n, _ in fields]}"]
    errors = []
    for (name, t), (_, c) in zip(ours, fields):
        errors += mismatch(t, c, h, f"{ct.__name__}.{name}")
    return errors


def test_every_declared_function_matches_its_prototype(header: Header) -> None:
    errors = []
    for name, (args, result) in _lib._SIGNATURES.items():
        if name not in header.functions:
            errors.append(f"{name} is not in the header")
            continue
        c_result, c_params = header.functions[name]
        if len(args) != len(c_params):
            errors.append(f"{name}: {len(args)} parameters, the header has {len(c_params)}")
            continue
        errors += mismatch(result, c_result, header, f"{name} (result)")
        for i, (a, p) in enumerate(zip(args, c_params)):
            errors += mismatch(a, p, header, f"{name} (parameter {i + 1})")
        # ... and the declaration is the one the library's function object uses.
        fn = getattr(_lib.lib, name)
        assert list(fn.argtypes) == list(args) and fn.restype is result, name
    assert not errors, "\n".join(errors)


def test_structs_and_callbacks_match_the_header(header: Header) -> None:
    errors = []
    for struct in (_lib.RunOptions, _lib.Usage, _lib.Summary):
        errors += mismatch(struct, CType(struct.c_name, 0), header, struct.__name__)
    errors += mismatch(_lib.OUTPUT_FN, CType("sandcell_output_fn", 0), header, "OUTPUT_FN")
    errors += mismatch(_lib.OUTPUT_FN2, CType("sandcell_output_fn2", 0), header, "OUTPUT_FN2")
    assert not errors, "\n".join(errors)


def test_constants_match_the_header(header: Header) -> None:
    d = header.defines
    assert _lib.ABI_VERSION == int(d["SANDCELL_ABI_VERSION"])
    ours = {name: value for name, value in vars(_lib).items() if re.fullmatch(r"(ERROR|STATUS|STREAM)_[A-Z_]+", name)}
    theirs = {name[len("SANDCELL_") :]: int(v) for name, v in d.items() if re.fullmatch(r"SANDCELL_(ERROR|STATUS|STREAM)_\w+", name)}
    assert ours == theirs


def test_every_status_and_error_kind_of_the_header_has_its_python_name(header: Header) -> None:
    statuses = {name[len("SANDCELL_STATUS_") :].lower() for name in header.defines if name.startswith("SANDCELL_STATUS_")}
    assert {s.value for s in sandcell.Status} == statuses
    assert {s.name.lower() for s in sandcell.Status} == statuses
    kinds = {int(v) for name, v in header.defines.items() if name.startswith("SANDCELL_ERROR_")}
    assert set(_errors.ERRORS) == kinds
    for code, cls in _errors.ERRORS.items():
        define = next(n for n, v in header.defines.items() if n.startswith("SANDCELL_ERROR_") and int(v) == code)
        assert cls.kind == define[len("SANDCELL_ERROR_") :].lower()


def test_the_library_is_the_version_of_the_header(header: Header) -> None:
    d = header.defines
    version = f"{d['SANDCELL_VERSION_MAJOR']}.{d['SANDCELL_VERSION_MINOR']}.{d['SANDCELL_VERSION_PATCH']}"
    assert sandcell.__version__ == version
    assert _lib.lib.sandcell_abi_version() == int(d["SANDCELL_ABI_VERSION"])


def test_the_checker_catches_drift(header: Header) -> None:
    """The comparison itself: declarations that differ from the header are reported."""
    p, pp = ctypes.c_void_p, ctypes.POINTER(ctypes.c_void_p)
    run_result, run_params = header.functions["sandcell_sandbox_run"]
    assert mismatch(pp, run_params[0], header, "x")  # a handle is not a pointer to a pointer
    assert mismatch(p, run_params[3], header, "x")  # an out-parameter is
    assert not mismatch(pp, run_params[3], header, "x")
    assert mismatch(ctypes.POINTER(_lib.Usage), run_params[2], header, "x")  # the wrong struct
    assert mismatch(ctypes.c_uint64, header.functions["sandcell_error_kind"][0], header, "x")
    assert mismatch(ctypes.c_int32, header.functions["sandcell_error_kind"][0], header, "x")
    assert mismatch(None, run_result, header, "x")
    assert mismatch(ctypes.c_char_p, header.functions["sandcell_policy_set_memory"][1][1], header, "x")

    class Shuffled(ctypes.Structure):
        c_name = "sandcell_usage_t"
        _fields_ = [(n, t) for n, t in reversed(_lib.Usage._fields_)]

    assert mismatch(Shuffled, CType("sandcell_usage_t", 0), header, "x")
    wrong_callback = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_uint32, ctypes.c_char_p, ctypes.c_size_t)
    assert mismatch(wrong_callback, CType("sandcell_output_fn2", 0), header, "x")
