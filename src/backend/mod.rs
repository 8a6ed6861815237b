//! The isolation backends. Each lowers the backend-neutral [`Policy`](crate::Policy) onto its
//! own mechanisms in one place and implements [`Sandbox`](crate::Sandbox).

pub(crate) mod wasm;

use crate::{BackendKind, Error, Result, Sandbox, SandboxBuilder};

pub(crate) fn build_process(_builder: SandboxBuilder) -> Result<Box<dyn Sandbox>> {
    Err(Error::BackendUnavailable {
        backend: BackendKind::Process,
        reason: "this build of sandcell was compiled without the `process` feature".into(),
    })
}

pub(crate) fn build_microvm(_builder: SandboxBuilder) -> Result<Box<dyn Sandbox>> {
    Err(Error::BackendUnavailable {
        backend: BackendKind::MicroVm,
        reason: "this build of sandcell was compiled without the `microvm` feature".into(),
    })
}

/// Whether `kind` can run on this host (see [`probe`](crate::probe())).
pub(crate) fn support(kind: BackendKind, _host: &crate::HostSupport) -> crate::BackendSupport {
    match kind {
        BackendKind::Wasm => crate::BackendSupport {
            backend: kind,
            available: true,
            reason: "wasmer + Cranelift, WASI preview 1; needs nothing from the host".into(),
        },
        _ => crate::BackendSupport {
            backend: kind,
            available: false,
            reason: format!("the {kind} backend is not part of this build"),
        },
    }
}
