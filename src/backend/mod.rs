//! The isolation backends. Each lowers the backend-neutral [`Policy`](crate::Policy) onto its
//! own mechanisms in one place and implements [`Sandbox`](crate::Sandbox).

#[cfg(process_backend)]
pub(crate) mod process;
pub(crate) mod wasm;

use crate::{BackendKind, Error, Result, Sandbox, SandboxBuilder};

#[cfg(process_backend)]
pub(crate) fn build_process(builder: SandboxBuilder) -> Result<Box<dyn Sandbox>> {
    Ok(Box::new(process::ProcessSandbox::new(builder)?))
}

#[cfg(not(process_backend))]
pub(crate) fn build_process(_builder: SandboxBuilder) -> Result<Box<dyn Sandbox>> {
    Err(Error::BackendUnavailable {
        backend: BackendKind::Process,
        reason: "this build of sandcell was compiled without the `process` feature (Linux only)".into(),
    })
}

pub(crate) fn build_microvm(_builder: SandboxBuilder) -> Result<Box<dyn Sandbox>> {
    Err(Error::BackendUnavailable {
        backend: BackendKind::MicroVm,
        reason: "this build of sandcell was compiled without the `microvm` feature".into(),
    })
}

/// Whether `kind` can run on this host (see [`probe`](crate::probe())).
pub(crate) fn support(kind: BackendKind, host: &crate::HostSupport) -> crate::BackendSupport {
    let (available, reason) = match kind {
        BackendKind::Wasm => (true, "wasmer + Cranelift, WASI preview 1; needs nothing from the host".to_owned()),
        #[cfg(process_backend)]
        BackendKind::Process => process::support(host),
        _ => (false, format!("the {kind} backend is not part of this build")),
    };
    let _ = host;
    crate::BackendSupport { backend: kind, available, reason }
}
