//! Build script:
//! - short names for the platform conditions of each backend, so that the code says
//!   `cfg(process_backend)` instead of repeating `all(feature = ..., target_os = ...)`;
//! - the micro-VM's guest runtime (`guest/runtime`, wasmi), compiled for `x86_64-unknown-none`
//!   and embedded, with its SHA-256 (part of every guest image's cache key: computing it at run
//!   time cost each new process about 3 ms). Everything is written under `OUT_DIR`. If the
//!   target is not installed, a warning says how to add it and the micro-VM backend runs native
//!   guests only.
use std::path::{Path, PathBuf};
use std::process::Command;

fn main() {
    println!("cargo::rustc-check-cfg=cfg(process_backend)");
    println!("cargo::rustc-check-cfg=cfg(microvm_backend)");
    let os = std::env::var("CARGO_CFG_TARGET_OS").unwrap_or_default();
    let arch = std::env::var("CARGO_CFG_TARGET_ARCH").unwrap_or_default();
    let feature = |name: &str| std::env::var_os(format!("CARGO_FEATURE_{}", name.to_uppercase())).is_some();
    if feature("process") && os == "linux" {
        println!("cargo::rustc-cfg=process_backend");
    }
    let out_dir = PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    let out = out_dir.join("sandcell-runtime.elf");
    if feature("microvm") && os == "linux" && arch == "x86_64" {
        println!("cargo::rustc-cfg=microvm_backend");
        build_guest_runtime(&out);
    } else {
        std::fs::write(&out, b"").expect("write OUT_DIR");
    }
    let runtime = std::fs::read(&out).expect("read the guest runtime back");
    let digest: [u8; 32] = sha2::Digest::finalize(<sha2::Sha256 as sha2::Digest>::new_with_prefix(&runtime)).into();
    std::fs::write(out_dir.join("sandcell-runtime.sha256"), digest).expect("write OUT_DIR");
}

fn build_guest_runtime(out: &Path) {
    let manifest = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    let guest = manifest.join("guest");
    for dir in ["abi", "sdk", "runtime"] {
        println!("cargo::rerun-if-changed={}", guest.join(dir).display());
    }
    println!("cargo::rerun-if-changed={}", guest.join("Cargo.toml").display());
    println!("cargo::rerun-if-env-changed=SANDCELL_SKIP_GUEST_RUNTIME");
    // Its own target directory under OUT_DIR: nothing is written into the source tree (which may
    // be read-only, as a crate from crates.io is).
    let target_dir = PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets OUT_DIR")).join("guest-target");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = if std::env::var_os("SANDCELL_SKIP_GUEST_RUNTIME").is_some() {
        None
    } else {
        Command::new(cargo)
            .args(["build", "--release", "--quiet", "--target", "x86_64-unknown-none", "-p", "sandcell-runtime"])
            .current_dir(&guest)
            .env("CARGO_TARGET_DIR", &target_dir)
            .env_remove("RUSTFLAGS")
            .env_remove("CARGO_ENCODED_RUSTFLAGS")
            .env_remove("CARGO_BUILD_TARGET")
            .env_remove("RUSTC_WORKSPACE_WRAPPER")
            .status()
            .ok()
    };
    let built = target_dir.join("x86_64-unknown-none/release/sandcell-runtime");
    if status.is_some_and(|s| s.success()) && built.is_file() {
        std::fs::copy(&built, out).expect("copy the guest runtime");
    } else {
        println!(
            "cargo::warning=the micro-VM guest runtime was not built (is the target installed? `rustup target add \
             x86_64-unknown-none`); micro-VM sandboxes will run native guests only"
        );
        std::fs::write(out, b"").expect("write OUT_DIR");
    }
}
