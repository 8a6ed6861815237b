//! The isolation backends. Each lowers the backend-neutral [`Policy`](crate::Policy) onto its
//! own mechanisms in one place and implements [`Sandbox`](crate::Sandbox).

#[cfg(microvm_backend)]
pub(crate) mod microvm;
#[cfg(process_backend)]
pub(crate) mod process;
pub(crate) mod wasm;

#[allow(unused_imports)]
use crate::{BackendKind, Error, Probe, Result, Sandbox, SandboxBuilder};

/// Builds the sandbox a builder describes (its policy already validated).
pub(crate) fn build(builder: SandboxBuilder) -> Result<Box<dyn Sandbox>> {
    match builder.backend {
        BackendKind::Wasm => Ok(Box::new(wasm::WasmSandbox::new(builder)?)),
        BackendKind::Process => build_process(builder),
        BackendKind::MicroVm => build_microvm(builder),
    }
}

/// Builds a wasm sandbox as its concrete type.
pub(crate) fn build_wasm(builder: SandboxBuilder) -> Result<wasm::WasmSandbox> {
    wasm::WasmSandbox::new(builder)
}

/// Probes the host once and returns the cached result: its facts, and whether each backend can
/// run on it.
///
/// ```
/// let probe = sandcell::probe();
/// assert!(probe.backend(sandcell::BackendKind::Wasm).available);
/// ```
pub fn probe() -> &'static Probe {
    static PROBE: std::sync::OnceLock<Probe> = std::sync::OnceLock::new();
    PROBE.get_or_init(|| {
        let host = crate::probe::host().clone();
        let backends = BackendKind::ALL.iter().map(|&kind| support(kind, &host)).collect();
        Probe { host, backends }
    })
}

#[cfg(process_backend)]
fn build_process(builder: SandboxBuilder) -> Result<Box<dyn Sandbox>> {
    Ok(Box::new(process::ProcessSandbox::new(builder)?))
}

#[cfg(not(process_backend))]
fn build_process(_builder: SandboxBuilder) -> Result<Box<dyn Sandbox>> {
    Err(Error::BackendUnavailable {
        backend: BackendKind::Process,
        reason: "this build of sandcell was compiled without the `process` feature (Linux only)".into(),
    })
}

#[cfg(microvm_backend)]
fn build_microvm(builder: SandboxBuilder) -> Result<Box<dyn Sandbox>> {
    Ok(Box::new(microvm::MicroVmSandbox::new(builder)?))
}

#[cfg(not(microvm_backend))]
fn build_microvm(_builder: SandboxBuilder) -> Result<Box<dyn Sandbox>> {
    Err(Error::BackendUnavailable {
        backend: BackendKind::MicroVm,
        reason: "this build of sandcell was compiled without the `microvm` feature (Linux, x86-64)".into(),
    })
}

/// Whether `kind` can run on this host (see [`probe`](crate::probe())).
fn support(kind: BackendKind, host: &crate::HostSupport) -> crate::BackendSupport {
    let (available, reason) = match kind {
        BackendKind::Wasm => (true, "wasmer + Cranelift, WASI preview 1; needs nothing from the host".to_owned()),
        #[cfg(process_backend)]
        BackendKind::Process => process::support(host),
        #[cfg(microvm_backend)]
        BackendKind::MicroVm => microvm::support(host),
        #[allow(unreachable_patterns)]
        _ => (false, format!("the {kind} backend is not part of this build")),
    };
    let _ = host;
    crate::BackendSupport { backend: kind, available, reason }
}
