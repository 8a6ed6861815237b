//! Short names for the platform conditions of each backend, so that the code says
//! `cfg(process_backend)` instead of repeating `all(feature = ..., target_os = ...)`.
fn main() {
    println!("cargo::rustc-check-cfg=cfg(process_backend)");
    println!("cargo::rustc-check-cfg=cfg(microvm_backend)");
    let os = std::env::var("CARGO_CFG_TARGET_OS").unwrap_or_default();
    let arch = std::env::var("CARGO_CFG_TARGET_ARCH").unwrap_or_default();
    let feature = |name: &str| std::env::var_os(format!("CARGO_FEATURE_{}", name.to_uppercase())).is_some();
    if feature("process") && os == "linux" {
        println!("cargo::rustc-cfg=process_backend");
    }
    if feature("microvm") && os == "linux" && arch == "x86_64" {
        println!("cargo::rustc-cfg=microvm_backend");
    }
}
