//! Linker arguments of libsandcell.so (Linux; other systems get the defaults):
//!
//! - SONAME `libsandcell.so.N`, N being `SANDCELL_ABI_VERSION` (src/consts.rs, read here so that
//!   there is one place to bump it): a program linked against the library records that name and
//!   never loads a library of another ABI. `scripts/install-c.sh` installs the file as
//!   `libsandcell.so.N.MINOR.PATCH` with the links `libsandcell.so.N` and `libsandcell.so`.
//!
//! - Only the `sandcell_*` functions exported. rustc exports every `#[no_mangle]` function of
//!   every crate linked in, so wasmer's own C symbols (`wasmer_vm_*`, ...) would be exported too.
//!   A linker version script (`global: sandcell_*; local: *;`) does not help: rustc passes its own,
//!   which names each of those symbols literally, and a literal `global` wins over a wildcard
//!   `local`. `--exclude-libs,ALL` does: every symbol defined in a static archive — every Rust
//!   dependency is linked as one (`.rlib`), the standard library included — gets hidden
//!   visibility, so only this crate's own objects, the `sandcell_*` functions, stay exported.
//!   (This is also why the ABI is one crate: in an rlib of its own, the `sandcell_*` functions
//!   would be hidden as well.) tests/all/c_api.rs checks the exported list.
use std::path::Path;

fn main() {
    println!("cargo::rerun-if-changed=build.rs");
    println!("cargo::rerun-if-changed=src/consts.rs");
    if std::env::var("CARGO_CFG_TARGET_OS").as_deref() != Ok("linux") {
        return;
    }
    let manifest = std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR");
    let abi = abi_version(&Path::new(&manifest).join("src/consts.rs"));
    println!("cargo::rustc-cdylib-link-arg=-Wl,-soname,libsandcell.so.{abi}");
    println!("cargo::rustc-cdylib-link-arg=-Wl,--exclude-libs,ALL");
}

/// The value of `pub const SANDCELL_ABI_VERSION: u32 = N;` in `consts`.
fn abi_version(consts: &Path) -> u32 {
    const PREFIX: &str = "pub const SANDCELL_ABI_VERSION: u32 = ";
    let text = std::fs::read_to_string(consts).unwrap_or_else(|e| panic!("read {}: {e}", consts.display()));
    text.lines()
        .find_map(|line| line.strip_prefix(PREFIX)?.strip_suffix(';')?.parse().ok())
        .unwrap_or_else(|| panic!("{} has no line `{PREFIX}N;`", consts.display()))
}
