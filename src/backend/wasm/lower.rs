//! The wasm backend's lowering of a [`Policy`]: every field, in one place.

use std::time::Duration;

use super::engine::{self, BaseEngine};
use crate::enforcement::{Lowering, PolicyField as F, Record};
use crate::wasi::WasiHost;
use crate::{BackendKind, CompileLimits, Network, Policy, Result};

/// What a wasm sandbox's runs need of its policy.
pub(super) struct Lowered {
    pub(super) base: &'static BaseEngine,
    /// The base engine with the memory cap in its tunables.
    pub(super) engine: wasmer::Engine,
    pub(super) wasi: WasiHost,
    pub(super) timeout: Option<Duration>,
    pub(super) cpu_time: Option<Duration>,
    pub(super) fuel: Option<u64>,
    pub(super) max_output: u64,
    pub(super) compile: CompileLimits,
    pub(super) record: Record,
}

/// Lowers `policy` onto wasmer: refuses what a wasm guest cannot be given, and records the
/// mechanism of everything else.
pub(super) fn lower(policy: &Policy) -> Result<Lowered> {
    // Every field, by name: a new one does not compile until it is handled here.
    let Policy {
        memory,
        timeout,
        cpu_time,
        fuel,
        cpus,
        max_processes,
        max_open_files,
        max_file_size,
        max_output,
        mounts,
        system_dirs,
        network,
        unix_sockets,
        env,
        deny_syscalls,
        compile,
        best_effort,
    } = policy;
    let mut l = Lowering::new(BackendKind::Wasm, *best_effort);

    let base = engine::base(fuel.is_some());
    let engine = base.capped(*memory);
    if let Some(m) = memory {
        l.enforce(F::Memory, format!("linear memory capped at {} wasm pages", m / wasmer::WASM_PAGE_SIZE as u64));
    }
    if timeout.is_some() {
        l.enforce(
            F::Timeout,
            "stop flag at function entries and loop headers; blocked WASI calls and atomic waits woken",
        );
    }
    if cpu_time.is_some() {
        l.enforce(F::CpuTime, "the run thread's CPU clock");
    }
    if fuel.is_some() {
        l.enforce(F::Fuel, "per-operator metering");
    }
    if cpus.is_some() {
        l.enforce(F::Cpus, "a wasm run uses one thread");
    }
    if max_processes.is_some() {
        l.enforce(F::MaxProcesses, "WASI preview 1 cannot create processes");
    }
    if max_open_files.is_some() {
        l.enforce(F::MaxOpenFiles, "descriptors counted at path_open");
    }
    if max_file_size.is_some() {
        l.enforce(F::MaxFileSize, "writes past the size refused");
    }
    l.enforce(F::MaxOutput, "capped capture");
    if !mounts.is_empty() {
        l.enforce(F::Mounts, "preopened directories; each path checked with openat2(RESOLVE_BENEATH)");
    }
    if system_dirs.as_ref().is_some_and(|d| !d.is_empty()) {
        l.refuse(F::SystemDirs, "a wasm guest has no system directories; mount what the module needs with `mounts`")?;
    }
    match network {
        Network::None => l.enforce(F::Network, "no sockets linked"),
        Network::Loopback => l.refuse(
            F::Network,
            "WASI preview 1 has no network: a wasm guest gets no sockets at all; use the process backend for a private \
             loopback",
        )?,
    }
    if *unix_sockets {
        l.refuse(F::UnixSockets, "a wasm guest has no sockets at all")?;
    }
    if !env.is_empty() {
        l.enforce(F::Env, "the WASI environment");
    }
    if !deny_syscalls.is_empty() {
        l.enforce(F::DenySyscalls, "a wasm guest makes no system calls, only WASI calls");
    }
    l.enforce(F::Compile, "size and count limits before Cranelift compiles; its time checked while it does");

    let wasi = WasiHost::new(engine.clone(), mounts, env, *max_open_files, *max_file_size)?;
    Ok(Lowered {
        base,
        engine,
        wasi,
        timeout: *timeout,
        cpu_time: *cpu_time,
        fuel: *fuel,
        max_output: *max_output,
        compile: *compile,
        record: l.finish(),
    })
}
