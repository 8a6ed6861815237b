//! `vm-hostile-large` is linked as sandcell's wasm runtime is (see `guest/runtime/build.rs`).
fn main() {
    println!("cargo::rustc-link-arg-bin=vm-hostile-large=-zmax-page-size=0x200000");
    println!("cargo::rustc-link-arg-bin=vm-hostile-large=-znorelro");
}
