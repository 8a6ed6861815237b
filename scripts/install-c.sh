#!/usr/bin/env bash
# Installs the C library: libsandcell.so, libsandcell.a, sandcell.h and sandcell.pc.
#
# The shared library is installed as libsandcell.so.ABI.MINOR.PATCH with the usual links
# libsandcell.so.ABI (its SONAME: ABI is SANDCELL_ABI_VERSION of the header, bumped on every
# incompatible change) and libsandcell.so (for the linker).
#
#   scripts/install-c.sh [--prefix DIR] [--profile release|dev] [--no-build]
#
# Defaults: --prefix /usr/local, --profile release. Afterwards
#   cc app.c $(pkg-config --cflags --libs sandcell)
# works (for a prefix pkg-config does not search, set PKG_CONFIG_PATH=DIR/lib/pkgconfig; for a
# prefix the dynamic linker does not search, add -Wl,-rpath,DIR/lib or set LD_LIBRARY_PATH).
# --no-build installs what `cargo build -p sandcell-ffi` already built (the tests use it so that
# they do not build a second profile).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
prefix=/usr/local
profile=release
build=1
while [ $# -gt 0 ]; do
    case "$1" in
        --prefix) prefix="$2"; shift 2 ;;
        --profile) profile="$2"; shift 2 ;;
        --no-build) build=0; shift ;;
        -h|--help) sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "$0"; exit 0 ;;
        *) echo "install-c.sh: unknown argument $1" >&2; exit 2 ;;
    esac
done
case "$profile" in
    dev|debug) dir=debug; profile=dev ;;
    *) dir="$profile" ;;
esac
if [ "$build" = 1 ]; then
    (cd "$root" && cargo build -p sandcell-ffi --profile "$profile")
fi
target="${CARGO_TARGET_DIR:-$root/target}/$dir"
for f in libsandcell.so libsandcell.a; do
    [ -f "$target/$f" ] || { echo "install-c.sh: $target/$f is missing (build with: cargo build -p sandcell-ffi --profile $profile)" >&2; exit 1; }
done
version="$(sed -n 's/^version = "\(.*\)"/\1/p' "$root/ffi/Cargo.toml" | head -1)"
abi="$(sed -n 's/^#define SANDCELL_ABI_VERSION \([0-9][0-9]*\)$/\1/p' "$root/include/sandcell.h")"
[ -n "$abi" ] || { echo "install-c.sh: no SANDCELL_ABI_VERSION in include/sandcell.h" >&2; exit 1; }
soname="libsandcell.so.$abi"
# The file carries the ABI version and the library's minor and patch versions.
real="$soname.$(echo "$version" | cut -d. -f2).$(echo "$version" | cut -d. -f3 | sed 's/[^0-9].*//')"
if command -v readelf >/dev/null; then
    built_soname="$(readelf -d "$target/libsandcell.so" | sed -n 's/.*(SONAME).*\[\(.*\)\]/\1/p')"
    if [ "$built_soname" != "$soname" ]; then
        echo "install-c.sh: $target/libsandcell.so has SONAME '$built_soname', expected $soname (rebuild it)" >&2
        exit 1
    fi
fi
mkdir -p "$prefix/lib/pkgconfig" "$prefix/include"
# Replaced, not overwritten in place: a program running with the old file keeps its mapping.
rm -f "$prefix/lib/$real"
install -m 0755 "$target/libsandcell.so" "$prefix/lib/$real"
ln -sfn "$real" "$prefix/lib/$soname"
ln -sfn "$soname" "$prefix/lib/libsandcell.so"
install -m 0644 "$target/libsandcell.a" "$prefix/lib/libsandcell.a"
install -m 0644 "$root/include/sandcell.h" "$prefix/include/sandcell.h"
sed -e "s|@PREFIX@|$prefix|" -e "s|@VERSION@|$version|" "$root/ffi/sandcell.pc.in" > "$prefix/lib/pkgconfig/sandcell.pc"
if [ "$(id -u)" = 0 ] && command -v ldconfig >/dev/null && { [ "$prefix" = /usr/local ] || [ "$prefix" = /usr ]; }; then
    ldconfig
fi
echo "installed sandcell $version (ABI $abi, $prefix/lib/$real) into $prefix"
