//! The micro-VM backend's lowering of a [`Policy`]: every field, in one place.

use std::time::Duration;

use sandcell_abi::layout;

use crate::enforcement::{Lowering, PolicyField as F, Record};
use crate::wasi::WasiHost;
use crate::{BackendKind, CompileLimits, Error, Network, Policy, Result};

/// Guest RAM of a native guest when the policy sets no memory cap.
pub(super) const DEFAULT_RAM: u64 = 512 << 20;
const LARGE_PAGE: u64 = 2 << 20;

/// What a micro-VM sandbox's runs need of its policy.
pub(super) struct Lowered {
    /// A wasm guest's linear memory cap (`memory.grow` returns -1 past it), as the wasm
    /// backend applies it.
    pub(super) linear_memory: Option<u64>,
    /// A native guest's guest RAM: the memory cap, or why it cannot be one.
    pub(super) native_ram: std::result::Result<u64, String>,
    pub(super) vcpus: u32,
    pub(super) timeout: Option<Duration>,
    pub(super) cpu_time: Option<Duration>,
    pub(super) fuel: Option<u64>,
    pub(super) max_output: u64,
    pub(super) compile: CompileLimits,
    pub(super) best_effort: bool,
    pub(super) wasi: WasiHost,
    pub(super) record: Record,
}

impl Lowered {
    /// Guest RAM for a wasm guest of `module_len` bytes: the runtime and its heap below
    /// [`layout::HEAP`], the module, what the interpreter builds from it, and the linear memory
    /// up to its cap — sized by the backend, so that the same memory cap means the same thing as
    /// on the wasm backend however small it is.
    pub(super) fn wasm_ram(&self, module_len: u64) -> u64 {
        let linear = self.linear_memory.unwrap_or(DEFAULT_RAM);
        let need =
            layout::HEAP.saturating_add(module_len.saturating_mul(5)).saturating_add(linear).saturating_add(16 << 20);
        need.next_multiple_of(LARGE_PAGE).clamp(layout::MIN_RAM, layout::MAX_RAM)
    }
}

/// Lowers `policy` onto the micro-VM: refuses what a guest cannot be given, and records the
/// mechanism of everything else. `proxy_engine` is the engine of the WASI proxy (see `wasi`).
pub(super) fn lower(policy: &Policy, proxy_engine: wasmer::Engine) -> Result<Lowered> {
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
        deny_syscalls: _, // no system call of the guest reaches the host: holds trivially
        compile,
        best_effort,
    } = policy;
    let mut l = Lowering::new(BackendKind::MicroVm, *best_effort);

    let ram = memory.unwrap_or(DEFAULT_RAM) / LARGE_PAGE * LARGE_PAGE;
    let native_ram = if ram < layout::MIN_RAM {
        Err(format!(
            "a native guest's memory cap is its guest RAM, which holds its image and stacks: at least {} MiB",
            layout::MIN_RAM >> 20
        ))
    } else {
        Ok(ram.min(layout::MAX_RAM))
    };
    match memory {
        Some(m) => l.enforce(
            F::Memory,
            format!(
                "a wasm guest's linear memory capped at {} wasm pages; a native guest's guest RAM of {} MiB",
                m / 65536,
                native_ram.as_ref().map_or(0, |r| r >> 20)
            ),
        ),
        None => l.enforce(F::Memory, format!("guest RAM of {} MiB", DEFAULT_RAM >> 20)),
    }
    let vcpus = cpus.unwrap_or(1);
    if vcpus > layout::MAX_VCPUS {
        return Err(Error::invalid_policy("cpus", format!("at most {} vCPUs", layout::MAX_VCPUS)));
    }
    if cpus.is_some() {
        l.enforce(F::Cpus, format!("{vcpus} vCPUs for a native guest; a wasm guest runs on one"));
    }
    if timeout.is_some() {
        l.enforce(F::Timeout, "vCPUs kicked out of KVM_RUN; blocked WASI calls woken");
    }
    if cpu_time.is_some() {
        l.enforce(F::CpuTime, "the vCPU threads' CPU clocks");
    }
    if fuel.is_some() {
        // Refused at run time for a native guest (see `MicroVmSandbox::run_inner`).
        l.enforce(F::Fuel, "the guest runtime's metering (wasm guests)");
    }
    if max_processes.is_some() {
        l.enforce(F::MaxProcesses, "a micro-VM guest has no processes");
    }
    if max_open_files.is_some() {
        l.enforce(F::MaxOpenFiles, "descriptors counted at path_open (WASI, served by the host)");
    }
    if max_file_size.is_some() {
        l.enforce(F::MaxFileSize, "writes past the size refused (WASI, served by the host)");
    }
    l.enforce(F::MaxOutput, "capped capture");
    if !mounts.is_empty() {
        l.enforce(F::Mounts, "the guest's WASI calls served by the host under the mounts");
    }
    if system_dirs.as_ref().is_some_and(|d| !d.is_empty()) {
        l.refuse(F::SystemDirs, "a micro-VM guest has no system directories; mount what it needs with `mounts`")?;
    }
    match network {
        Network::None => l.enforce(F::Network, "no network device, no hypercall for one"),
        Network::Loopback => l.refuse(F::Network, "a micro-VM has no network device and no hypercall for one")?,
    }
    if *unix_sockets {
        l.refuse(F::UnixSockets, "a micro-VM guest has no sockets at all")?;
    }
    if !env.is_empty() {
        l.enforce(F::Env, "the guest's environment (boot information)");
    }
    l.enforce(F::DenySyscalls, "no system call of the guest reaches the host kernel; vCPU threads seccomp-filtered");
    l.enforce(F::Compile, "size and count limits, and validation, on the host; the guest compiles in the VM");

    let wasi = WasiHost::new(proxy_engine, mounts, env, *max_open_files, *max_file_size)?;
    Ok(Lowered {
        linear_memory: *memory,
        native_ram,
        vcpus,
        timeout: *timeout,
        cpu_time: *cpu_time,
        fuel: *fuel,
        max_output: *max_output,
        compile: *compile,
        best_effort: *best_effort,
        wasi,
        record: l.finish(),
    })
}
