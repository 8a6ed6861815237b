#!/usr/bin/env bash
# Installs the C library: libsandcell.so, libsandcell.a, sandcell.h and sandcell.pc.
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
        -h|--help) sed -n '2,12p' "$0"; exit 0 ;;
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
mkdir -p "$prefix/lib/pkgconfig" "$prefix/include"
install -m 0755 "$target/libsandcell.so" "$prefix/lib/libsandcell.so"
install -m 0644 "$target/libsandcell.a" "$prefix/lib/libsandcell.a"
install -m 0644 "$root/include/sandcell.h" "$prefix/include/sandcell.h"
sed -e "s|@PREFIX@|$prefix|" -e "s|@VERSION@|$version|" "$root/ffi/sandcell.pc.in" > "$prefix/lib/pkgconfig/sandcell.pc"
if [ "$(id -u)" = 0 ] && command -v ldconfig >/dev/null && [ "$prefix" = /usr/local ] || [ "$prefix" = /usr ]; then
    ldconfig
fi
echo "installed sandcell $version into $prefix"
