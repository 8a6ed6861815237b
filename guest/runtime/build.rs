//! Link options for the runtime (the host's build script builds it; see `build.rs` there).
fn main() {
    // Each segment (read-only data, code, read-write data) in a 2 MiB-aligned region of its own,
    // so that the host maps the whole code segment with one 2 MiB guest page: on a VMM that
    // shadows guest page tables (KVM without EPT/NPT, e.g. PVM) a run then takes one page fault
    // for its code instead of one per 32 KiB of it (≈ 30 for the runtime, ≈ 40 µs each there).
    println!("cargo::rustc-link-arg-bins=-zmax-page-size=0x200000");
    // One read-write segment, not two (sandcell's loader never makes relocated data read-only
    // again, so a RELRO segment would only cost another 2 MiB region).
    println!("cargo::rustc-link-arg-bins=-znorelro");
    // Symbols are of no use in the VM; without them the runtime sandcell embeds is a quarter
    // smaller.
    println!("cargo::rustc-link-arg-bins=--strip-all");
}
