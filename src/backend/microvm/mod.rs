//! The micro-VM backend: each run in its own KVM virtual machine, with no guest kernel.
//!
//! The guest starts directly in 64-bit user mode (CPL3) at its entry point; the only
//! kernel-mode code in the VM is a stub per CPU exception that reports it to the host. On PVM
//! hosts (nested virtualization without VT-x), kernel-mode guest code is emulated and slow while
//! user-mode code runs natively, so a guest that never leaves user mode runs at full speed.
//!
//! | field | mechanism |
//! |---|---|
//! | memory | guest RAM (16 MiB - 2 GiB); a wasm module's linear memory may use about half |
//! | timeout, interrupt | `immediate_exit` + a signal kicks each vCPU out of `KVM_RUN` |
//! | cpu_time | the vCPU threads' CPU clocks |
//! | fuel | wasmi's metering inside the guest (wasm programs; refused for native ones) |
//! | cpus | number of vCPUs (native programs; a wasm program uses one) |
//! | mounts, env, max_open_files, max_file_size | the wasm backend's WASI, serving the guest's WASI calls ([`wasi`]) |
//! | network | none: no device, no hypercall for it |
//! | max_output | capped capture |
//!
//! Two kinds of program run: a WASI module (`.wasm`/`.wat`), executed by the guest runtime
//! (`guest/runtime`, wasmi) that sandcell's build embeds, and a freestanding x86-64 ELF built
//! against the guest SDK (`guest/sdk`, crate `sandcell-guest`).

mod arena;
pub(crate) mod image;
mod lower;
mod reaper;
pub(crate) mod seccomp_vcpu;
mod sys;
pub(crate) mod vm;
mod warm;
pub(crate) mod wasi;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::sys::clock_time;

use parking_lot::Mutex;
use sandcell_abi::{layout, trap, Mailbox, Request, Span, MAILBOX_BYTES};
use sha2::{Digest, Sha256};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend};

use self::image::GuestImage;
use self::vm::{Event, Exception, Reply, Vm};
use crate::control::{Capture, InterruptHandle, Run, RunControl, StopReason};
use crate::input::{self, Stdin, StdinSource};
use crate::wasi::stdio::Sink;
use crate::{
    ArtifactSource, BackendKind, CpuBudget, Error, Outcome, Policy, Program, Result, RunOptions, SandboxBuilder,
    Status, Stream, Trap, TrapKind, Usage,
};

/// The guest runtime for wasm programs, built by `build.rs` for `x86_64-unknown-none` (empty
/// when that target was not installed at build time).
static RUNTIME: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/sandcell-runtime.elf"));
/// Its SHA-256, computed by `build.rs`.
static RUNTIME_DIGEST: &[u8; 32] = include_bytes!(concat!(env!("OUT_DIR"), "/sandcell-runtime.sha256"));

use crate::sandbox::HostFunction;

/// A sandbox whose runs are micro-VMs.
pub struct MicroVmSandbox {
    policy: Policy,
    lowered: lower::Lowered,
    /// Where compiled artifacts (the WASI proxy) are kept, when the builder names a directory.
    cache: Option<crate::cache::ArtifactCache>,
    host_functions: Arc<HashMap<String, HostFunction>>,
    images: Mutex<HashMap<[u8; 32], Arc<GuestImage>>>,
    /// Program files whose image is cached, by path: the file's identity when it was read,
    /// the image's key, and whether it is a wasm module (see `FileId`).
    files: Mutex<HashMap<std::path::PathBuf, KnownFile>>,
    interrupt: InterruptHandle,
}

impl Drop for MicroVmSandbox {
    /// With the last sandbox go the clean guest RAM arenas kept for reuse (see `arena.rs`).
    fn drop(&mut self) {
        arena::sandbox_dropped();
    }
}

impl std::fmt::Debug for MicroVmSandbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MicroVmSandbox").field("policy", &self.policy).field("vcpus", &self.lowered.vcpus).finish()
    }
}

/// Whether the micro-VM backend can run here.
pub(crate) fn support(host: &crate::HostSupport) -> (bool, String) {
    let Some(flavor) = host.kvm_flavor.filter(|_| host.kvm) else {
        return (false, host.kvm_error.clone().unwrap_or_else(|| "no /dev/kvm".into()));
    };
    let runtime = if RUNTIME.is_empty() {
        "; wasm guests unavailable: the guest runtime was not built (run `rustup target add x86_64-unknown-none` and rebuild)"
    } else {
        ""
    };
    (true, format!("KVM ({}): {}{runtime}", flavor.name(), flavor.speed_note()))
}

impl MicroVmSandbox {
    pub(crate) fn new(builder: SandboxBuilder) -> Result<Self> {
        // Only /dev/kvm matters here (the rest of `probe::host` is other backends' business).
        tracing::debug_span!("kvm").in_scope(vm::kvm)?;
        let policy = builder.policy.clone();
        let cache = builder.cache_dir.as_deref().map(crate::cache::ArtifactCache::open).transpose()?;
        let lowered = tracing::debug_span!("lower").in_scope(|| lower::lower(&policy, wasi::proxy_engine()))?;
        arena::sandbox_created();
        vm::pool::prewarm(seccomp_vcpu::filter());
        Ok(MicroVmSandbox {
            policy,
            lowered,
            cache,
            host_functions: builder.host_functions.clone(),
            images: Mutex::new(HashMap::new()),
            files: Mutex::new(HashMap::new()),
            interrupt: InterruptHandle::for_sandbox(),
        })
    }

    /// The guest image for a program, from the cache or built. Returns it and whether the
    /// program is a wasm module.
    fn image(&self, program: &Program) -> Result<(Arc<GuestImage>, bool, ArtifactSource, [u8; 32])> {
        let file = match program.artifact() {
            crate::Artifact::Path(path) => FileId::of(path).map(|id| (path, id)),
            crate::Artifact::Bytes(_) => None,
        };
        if let Some((path, id)) = &file {
            if let Some((known, key, wasm)) = self.files.lock().get(*path) {
                if known == id {
                    if let Some(img) = self.images.lock().get(key) {
                        return Ok((img.clone(), *wasm, ArtifactSource::Memory, *key));
                    }
                }
            }
        }
        let (image, wasm, source, key) = self.image_of(program)?;
        if let Some((path, id)) = file {
            if id.settled() {
                let mut files = self.files.lock();
                if files.len() >= 64 {
                    files.clear();
                }
                files.insert(path.clone(), (id, key, wasm));
            }
        }
        Ok((image, wasm, source, key))
    }

    /// The guest image for a program's contents, from the cache or built, and its cache key.
    fn image_of(&self, program: &Program) -> Result<(Arc<GuestImage>, bool, ArtifactSource, [u8; 32])> {
        let bytes = program.load()?;
        let (elf, data, wasm): (&[u8], Vec<u8>, bool) = if image::is_elf(&bytes) {
            (&bytes, Vec::new(), false)
        } else {
            if RUNTIME.is_empty() {
                return Err(Error::BackendUnavailable {
                    backend: BackendKind::MicroVm,
                    reason: "wasm guests need the guest runtime, which this build could not compile: run `rustup target add \
                             x86_64-unknown-none` and rebuild sandcell"
                        .into(),
                });
            }
            // The same budgets and import rules as the wasm backend; validated, not compiled
            // (the guest runtime compiles it inside the VM, under the run's limits).
            let (module, _) = crate::wasm_module::check(&bytes, &self.lowered.compile)?;
            tracing::debug_span!("validate").in_scope(|| crate::wasm_module::validate(&module))?;
            (RUNTIME, module.into_owned(), true)
        };
        let vcpus = if wasm { 1 } else { self.lowered.vcpus };
        let ram = if wasm {
            self.lowered.wasm_ram(data.len() as u64)
        } else {
            match &self.lowered.native_ram {
                Ok(ram) => *ram,
                Err(reason) => {
                    // A cap this backend cannot honour for a native guest: refused, or with
                    // best_effort the smallest guest RAM (the run's outcome lists the skip).
                    if !self.lowered.best_effort {
                        return Err(Error::Unenforceable {
                            backend: BackendKind::MicroVm,
                            field: crate::PolicyField::Memory,
                            reason: reason.clone(),
                        });
                    }
                    layout::MIN_RAM
                }
            }
        };
        let mut h = Sha256::new();
        h.update([u8::from(wasm)]);
        if wasm {
            // The runtime is 1.6 MB: its digest is computed when sandcell is built.
            h.update(RUNTIME_DIGEST);
        } else {
            h.update(elf);
        }
        h.update(&data);
        h.update(ram.to_le_bytes());
        h.update(vcpus.to_le_bytes());
        let key: [u8; 32] = h.finalize().into();
        if let Some(img) = self.images.lock().get(&key) {
            return Ok((img.clone(), wasm, ArtifactSource::Memory, key));
        }
        if wasm {
            // The runtime is read once per process: map its pages in one call (see `populate`).
            image::populate(RUNTIME, 22 /* MADV_POPULATE_READ */);
        }
        let loaded = tracing::debug_span!("load_elf").in_scope(|| image::load_elf(elf))?;
        if layout::HEAP + data.len() as u64 + (8 << 20) > ram {
            return Err(Error::invalid_program(format!(
                "the module ({} bytes) does not fit {} MiB of guest RAM",
                data.len(),
                ram >> 20
            )));
        }
        let img = tracing::debug_span!("build").in_scope(|| image::build(loaded, &data, ram, vcpus))?;
        let mut images = self.images.lock();
        if images.len() >= 64 {
            images.clear();
        }
        images.insert(key, img.clone());
        Ok((img, wasm, ArtifactSource::Compiled, key))
    }

    /// The run's boot information (see [`sandcell_abi::BootInfo`]) and how many bytes of stdin
    /// it carries (native guests only: the wasm runtime reads stdin through WASI).
    fn boot_info(
        &self,
        image: &GuestImage,
        program: &Program,
        wasm: bool,
        stdin: Option<&StdinSource>,
        preparing: bool,
    ) -> Result<(Vec<u8>, usize)> {
        let mut strings = Vec::new();
        let mut argc = 0u64;
        for a in std::iter::once(program.argv0()).chain(program.arguments().iter().cloned()) {
            strings.extend_from_slice(a.as_bytes());
            strings.push(0);
            argc += 1;
        }
        let env = program.merged_env(&self.policy.env);
        for (k, v) in &env {
            strings.extend_from_slice(format!("{k}={v}").as_bytes());
            strings.push(0);
        }
        for name in self.host_functions.keys() {
            strings.extend_from_slice(name.as_bytes());
            strings.push(0);
        }
        let header = sandcell_abi::BootInfo::SIZE;
        if header + strings.len() as u64 > layout::BOOT_INFO_SIZE {
            return Err(Error::invalid_program(format!(
                "arguments, environment and host function names take {} bytes; a micro-VM guest takes at most {}",
                strings.len(),
                layout::BOOT_INFO_SIZE - header
            )));
        }
        // As much stdin as fits the boot area goes in it: reading it then needs no exit.
        // A streamed stdin is read with the hypercall only (`stdin_more`).
        let (stdin, streamed): (&[u8], bool) = match stdin {
            Some(StdinSource::Bytes(bytes)) => (bytes, false),
            Some(StdinSource::Stream(_)) => (&[], true),
            None => (&[], false),
        };
        let room = (layout::BOOT_INFO_SIZE - header) as usize - strings.len();
        // A guest prepared until ready reads the stdin of the run restored from it with the
        // hypercall: the boot area then carries none.
        let streamed = streamed || preparing;
        let inline = if wasm || preparing { 0 } else { stdin.len().min(room) };
        let info = sandcell_abi::BootInfo {
            magic: sandcell_abi::MAGIC as u64,
            version: sandcell_abi::VERSION as u64,
            vcpus: image.vcpus as u64,
            fuel: self.lowered.fuel.unwrap_or(u64::MAX),
            program: image.program.0,
            program_len: image.program.1,
            heap_start: image.heap_start,
            heap_end: image.ram,
            argc,
            envc: env.len() as u64,
            strings_len: strings.len() as u64,
            hostc: self.host_functions.len() as u64,
            stdin_len: inline as u64,
            stdin_more: u64::from(streamed || inline < stdin.len()),
            memory_cap: if wasm { self.lowered.linear_memory.unwrap_or(u64::MAX) } else { u64::MAX },
            snapshot: u64::from(preparing),
            // Set by the machine the boot information is written into (`Machine::write_boot`).
            ram_ready: image.ram,
        };
        let mut boot = info.to_bytes().to_vec();
        boot.extend_from_slice(&strings);
        boot.extend_from_slice(&stdin[..inline]);
        Ok((boot, inline))
    }

    /// A policy with fuel cannot run a native guest (unless best-effort).
    fn refuse_native_fuel(&self) -> Result<()> {
        if self.lowered.fuel.is_some() && !self.lowered.best_effort {
            return Err(Error::Unenforceable {
                backend: BackendKind::MicroVm,
                field: crate::PolicyField::Fuel,
                reason: NATIVE_FUEL.into(),
            });
        }
        Ok(())
    }

    /// What the micro-VM refuses in a program before building its image.
    fn check_program(program: &Program) -> Result<()> {
        program.validate()?;
        if program.working_dir().is_some() {
            return Err(Error::invalid_program(
                "a micro-VM guest has no working directory (WASI preview 1 has none); use absolute paths",
            ));
        }
        if program.entry_point().is_some() {
            return Err(Error::invalid_program("entry points are a wasm-backend feature; a micro-VM runs `_start`"));
        }
        Ok(())
    }

    /// Runs `program`, from its `prepared` image if it has one.
    fn run_inner(
        &self,
        program: &Program,
        prepared: Option<&PreparedImage>,
        options: RunOptions,
        started: Instant,
    ) -> Result<Outcome> {
        let (image, wasm, source) = match prepared {
            Some(p) => (p.image.clone(), p.wasm, ArtifactSource::Prepared),
            None => {
                Self::check_program(program)?;
                let (image, wasm, source, _) = tracing::debug_span!("image").in_scope(|| self.image(program))?;
                (image, wasm, source)
            }
        };
        let mut record = self.lowered.record.clone();
        if !wasm && self.lowered.fuel.is_some() {
            self.refuse_native_fuel()?;
            record.enforced.remove(&crate::PolicyField::Fuel);
            record.skipped.insert(crate::PolicyField::Fuel, NATIVE_FUEL.into());
        }
        if !wasm && self.lowered.native_ram.is_err() {
            if let Err(reason) = &self.lowered.native_ram {
                record.enforced.remove(&crate::PolicyField::Memory);
                record.skipped.insert(crate::PolicyField::Memory, reason.clone());
            }
        }
        // A WASI guest's stdin is its WASI environment's; a native guest's is read here.
        let stdin = if wasm { None } else { Some(program.stdin_source()) };
        let pool = prepared.and_then(|p| p.pool.as_ref());
        let after_ready = prepared.is_some_and(|p| p.ready);
        // Restored after ready, the guest has read its boot information long ago: the run's
        // arguments cannot change, its stdin comes by hypercall.
        let (boot, stdin_inline) =
            if after_ready { (Vec::new(), 0) } else { self.boot_info(&image, program, wasm, stdin.as_ref(), false)? };

        let mut run = Run::begin(&self.interrupt, options.handles());
        let control = run.control.clone();
        let sink = Arc::new(Sink {
            capture: parking_lot::Mutex::new(Capture::new(
                crate::sandbox::narrowed(Some(self.lowered.max_output), options.max_output)
                    .unwrap_or(self.lowered.max_output),
                options.on_output,
            )),
            control: control.clone(),
        });
        let wasi_span = tracing::debug_span!("wasi").entered();
        let _stacks = wasm.then(crate::wasi::WasmerCalls::begin);
        let mut wasi = if wasm {
            Some(wasi::WasiService::new(&self.lowered.wasi, self.cache.as_ref(), program, &sink)?)
        } else {
            None
        };
        let outcome = |status: Status, usage: Usage| {
            let (stdout, stderr) = sink.capture.lock().take();
            Outcome {
                status,
                stdout,
                stderr,
                usage,
                enforced: record.enforced.clone(),
                skipped: record.skipped.clone(),
            }
        };
        if let Some(reason) = control.reason() {
            return Ok(outcome(reason.status(), Usage { wall: started.elapsed(), ..Usage::default() }));
        }

        drop(wasi_span);
        // A streamed stdin starts now, just before the guest (see `crate::input`).
        let stdin = stdin.map(StdinSource::open).transpose()?;
        let vm = match pool {
            Some(pool) => {
                let machine = tracing::debug_span!("vm.take").in_scope(|| pool.take())?;
                if !after_ready {
                    if let Err(e) = machine.write_boot(&boot) {
                        machine.destroy();
                        return Err(e);
                    }
                }
                tracing::debug_span!("vm.launch").in_scope(|| Vm::launch(machine, seccomp_vcpu::filter()))?
            }
            None => tracing::debug_span!("vm.start").in_scope(|| Vm::start(&image, &boot, seccomp_vcpu::filter()))?,
        };
        let stopper = vm.stopper();
        let process = wasi.as_ref().map(|w| w.process());
        control.arm(Box::new(move || {
            stopper.stop();
            if let Some(p) = &process {
                p.signal_process(wasmer_wasix::types::wasi::Signal::Sigkill);
            }
        }));
        run.timeout(started, crate::sandbox::narrowed(self.lowered.timeout, options.timeout));
        // The vCPU threads' CPU time; the timer ends (`run.finish`) before the threads do, so the
        // clocks stay valid whenever it reads them.
        let clocks = vm.cpu_clocks();
        run.cpu_budget(
            crate::sandbox::narrowed(self.lowered.cpu_time, options.cpu_time),
            Duration::from_millis(1),
            move || clocks.iter().filter_map(|(k, base)| clock_time(*k).map(|t| t.saturating_sub(*base))).sum(),
        );

        let mut session = Session {
            vm: &vm,
            image: &image,
            sink: &sink,
            control: &control,
            stdin,
            stdin_at: stdin_inline,
            waiting_reads: std::collections::VecDeque::new(),
            defer_read: None,
            host_functions: &self.host_functions,
            wasi: wasi.as_mut(),
            status: None,
            fuel: None,
            ready: ReadyCall::Ignore,
            files: OpenFiles::default(),
        };
        tracing::debug_span!("guest").in_scope(|| session.serve());
        let (status, fuel) = (session.status.take(), session.fuel);

        run.finish();
        let (cpu, peak) = match pool {
            Some(pool) => {
                let (cpu, mut machine) = tracing::debug_span!("vm.finish").in_scope(|| vm.finish_keep());
                match (machine.complete, warm::read_resident(&mut machine)) {
                    (true, Ok(pages)) => {
                        // Restored off this run's path (see `warm::Pool::give_back`).
                        warm::Pool::give_back(pool, machine);
                        (cpu, pages * 4096)
                    }
                    _ => {
                        let peak = vm::resident_bytes(&machine);
                        machine.destroy();
                        (cpu, peak)
                    }
                }
            }
            None => tracing::debug_span!("vm.finish").in_scope(|| vm.finish()),
        };
        let status = match (control.reason(), status) {
            (Some(reason), _) => reason.status(),
            (None, Some(s)) => s,
            (None, None) => {
                Status::Trap(Trap { kind: TrapKind::Other, message: "the VM ended without a result".into() })
            }
        };
        if let Some(w) = wasi {
            w.finish(status.exit_code().unwrap_or(1));
        }
        Ok(outcome(
            status,
            Usage { wall: started.elapsed(), cpu, peak_memory_bytes: peak, fuel, artifact: Some(source) },
        ))
    }
}

/// Writes `bytes` to `path` as a new file readable by its owner only: a temporary file in the
/// same directory, renamed over `path` once complete (a reader never sees half a snapshot).
fn write_private(path: &std::path::Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let name = path.file_name().ok_or_else(|| std::io::Error::other("the path names no file"))?;
    let mut nonce = [0u8; 8];
    crate::cache::random(&mut nonce)?;
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(name);
    tmp_name.push(format!(".{}.tmp", crate::cache::hex(&nonce)));
    let tmp = path.with_file_name(tmp_name);
    // `create_new`: the temporary file is ours (never one someone else put there).
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(&tmp)?;
    let result = f.write_all(bytes).and_then(|_| f.sync_data()).and_then(|_| std::fs::rename(&tmp, path));
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

impl MicroVmSandbox {
    /// The cache whose key seals snapshot files.
    fn snapshot_cache(&self) -> Result<&crate::cache::ArtifactCache> {
        self.cache.as_ref().ok_or_else(|| Error::Unsupported {
            backend: BackendKind::MicroVm,
            what: "snapshot files without an artifact cache".into(),
            reason: "snapshot files are sealed with the key of the sandbox's artifact cache: set a cache directory \
                     (SandboxBuilder::cache_dir)"
                .into(),
        })
    }

    /// What a snapshot of `image` under this sandbox records and a loaded one must match.
    fn snapshot_header(&self, image: &GuestImage, key: [u8; 32], program: &Program, ready: bool) -> warm::file::Header {
        let policy = serde_json::to_vec(&self.policy).unwrap_or_default();
        // The program is its image and what a guest may have read before the snapshot: its
        // arguments, environment and the host functions' names (a snapshot after ready holds
        // them in guest memory; a run restored from it keeps them).
        let mut h = Sha256::new();
        h.update(key);
        for a in std::iter::once(program.argv0()).chain(program.arguments().iter().cloned()) {
            h.update((a.len() as u64).to_le_bytes());
            h.update(a.as_bytes());
        }
        for (k, v) in program.merged_env(&self.policy.env) {
            h.update((k.len() as u64).to_le_bytes());
            h.update(k.as_bytes());
            h.update((v.len() as u64).to_le_bytes());
            h.update(v.as_bytes());
        }
        let mut names: Vec<&String> = self.host_functions.keys().collect();
        names.sort();
        for n in names {
            h.update((n.len() as u64).to_le_bytes());
            h.update(n.as_bytes());
        }
        warm::file::Header {
            // The guest ABI's version too: it fixes the guest-physical layout the snapshot's
            // pages and registers assume.
            sandcell: format!("{} (guest ABI {})", env!("CARGO_PKG_VERSION"), sandcell_abi::VERSION),
            cpu: warm::file::cpu(),
            policy: crate::cache::hex(&Sha256::digest(&policy)),
            program: crate::cache::hex(&h.finalize()),
            ready,
            ram: image.ram,
            vcpus: image.vcpus,
        }
    }

    /// Prepares `program` from the snapshot file at `path` (checked before anything runs).
    fn prepare_from_file(
        &self,
        program: &Program,
        image: Arc<GuestImage>,
        wasm: bool,
        key: [u8; 32],
        path: &std::path::Path,
        config: warm::PoolConfig,
    ) -> Result<crate::Prepared<'_>> {
        let cache = self.snapshot_cache()?;
        let refuse = |reason: String| {
            Error::invalid_program(format!("the snapshot file `{}` cannot be used: {reason}", path.display()))
        };
        // At most the image's RAM and the file's own structure.
        let limit = image.ram + (4 << 20);
        // Not through a symlink, not a FIFO or device (which could block or never end).
        let file = {
            use std::os::unix::fs::OpenOptionsExt;
            std::fs::OpenOptions::new()
                .read(true)
                .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC)
                .open(path)
                .map_err(|e| refuse(e.to_string()))?
        };
        if !file.metadata().map_err(|e| refuse(e.to_string()))?.is_file() {
            return Err(refuse("it is not a regular file".into()));
        }
        let mut bytes = Vec::new();
        std::io::Read::read_to_end(&mut std::io::Read::take(file, limit + 1), &mut bytes)
            .map_err(|e| refuse(e.to_string()))?;
        if bytes.len() as u64 > limit {
            return Err(refuse("it is larger than any snapshot of this program".into()));
        }
        // Where the snapshot was taken (`ready`) is the file's to say; everything else must match.
        let expected = self.snapshot_header(&image, key, program, false);
        let (snapshot, ready) = warm::file::decode(&bytes, &expected, cache, &image).map_err(refuse)?;
        let mut machine =
            tracing::debug_span!("vm.create").in_scope(|| vm::Machine::create(&image, vm::Code::Shared))?;
        let restored = warm::read_resident(&mut machine).and_then(|_| snapshot.restore(&mut machine));
        if let Err(e) = restored {
            machine.destroy();
            return Err(e);
        }
        Ok(self.pooled(program, PreparedImage { image, wasm, pool: None, ready, key }, snapshot, machine, config))
    }

    /// The prepared program of `state`, with a pool of VMs in `snapshot`'s state (`machine` the
    /// first of them).
    fn pooled(
        &self,
        program: &Program,
        mut state: PreparedImage,
        snapshot: warm::Snapshot,
        machine: vm::Machine,
        config: warm::PoolConfig,
    ) -> crate::Prepared<'_> {
        let pool = warm::Pool::new(state.image.clone(), snapshot, machine, config);
        let counters = pool.stats.clone();
        state.pool = Some(pool);
        crate::Prepared::pooled(self, program, Box::new(state), counters)
    }

    /// Runs a guest from its entry until it says it is ready, under the policy's limits, and
    /// returns its VM stopped right after that call. Its output is discarded; its stdin is
    /// empty; a WASI guest (the runtime says ready before `_start`) may make no WASI call.
    ///
    /// `Err` is the host's failure; `Ok(Err(why))` says the guest did not get there (it ended,
    /// trapped, was stopped, or made a call it may not make before ready).
    fn run_until_ready(
        &self,
        image: &GuestImage,
        program: &Program,
        wasm: bool,
        mode: ReadyCall,
    ) -> Result<std::result::Result<vm::Machine, String>> {
        let started = Instant::now();
        let (boot, _) = self.boot_info(image, program, wasm, None, true)?;
        // The preparing run's stdin is empty (each run restored from it has its own).
        let program = &program.clone().stdin(Vec::new());
        let machine = vm::Machine::create(image, vm::Code::Shared)?;
        if let Err(e) = machine.write_boot(&boot) {
            machine.destroy();
            return Err(e);
        }
        let mut run = Run::begin(&self.interrupt, std::iter::empty());
        let control = run.control.clone();
        let sink = Arc::new(Sink {
            capture: parking_lot::Mutex::new(Capture::new(self.lowered.max_output, None)),
            control: control.clone(),
        });
        // A WASI program that says ready itself (`/run/sandcell/ready`) makes WASI calls
        // before: it is served as in any run.
        let _stacks = (mode == ReadyCall::StopAtFile).then(crate::wasi::WasmerCalls::begin);
        let mut wasi = match mode {
            ReadyCall::StopAtFile => {
                match wasi::WasiService::new(&self.lowered.wasi, self.cache.as_ref(), program, &sink) {
                    Ok(w) => Some(w),
                    Err(e) => {
                        machine.destroy();
                        return Err(e);
                    }
                }
            }
            _ => None,
        };
        let vm = Vm::launch(machine, seccomp_vcpu::filter())?;
        let stopper = vm.stopper();
        let process = wasi.as_ref().map(|w| w.process());
        control.arm(Box::new(move || {
            stopper.stop();
            if let Some(p) = &process {
                p.signal_process(wasmer_wasix::types::wasi::Signal::Sigkill);
            }
        }));
        run.timeout(started, self.lowered.timeout);
        let clocks = vm.cpu_clocks();
        run.cpu_budget(self.lowered.cpu_time, Duration::from_millis(1), move || {
            clocks.iter().filter_map(|(k, base)| clock_time(*k).map(|t| t.saturating_sub(*base))).sum()
        });
        let mut session = Session {
            vm: &vm,
            image,
            sink: &sink,
            control: &control,
            stdin: Some(Stdin::Bytes(Arc::from(&[][..]))),
            stdin_at: 0,
            waiting_reads: std::collections::VecDeque::new(),
            defer_read: None,
            host_functions: &self.host_functions,
            wasi: wasi.as_mut(),
            status: None,
            fuel: None,
            ready: mode,
            files: OpenFiles { run_dir: self.lowered.wasi.run_dir_fd(), ..OpenFiles::default() },
        };
        session.serve();
        let (status, called) = (session.status.take(), session.ready == ReadyCall::Called);
        run.finish();
        let (_, machine) = vm.finish_keep();
        if let Some(w) = wasi {
            w.finish(0);
        }
        let status = match (control.reason(), status) {
            (Some(reason), _) => Some(reason.status()),
            (None, s) => s,
        };
        match (called, status) {
            (true, None) if machine.complete => {
                // Runs restored from here are not preparing any more (`sandcell_guest::preparing`).
                let field = layout::BOOT_INFO + 15 * 8;
                if machine.memory.write_obj(0u64, GuestAddress(field)).is_err() {
                    machine.destroy();
                    return Err(Error::setup("finish the snapshot", std::io::Error::other("boot area")));
                }
                Ok(Ok(machine))
            }
            (_, status) => {
                machine.destroy();
                let (_, stderr) = sink.capture.lock().take();
                let stderr = String::from_utf8_lossy(&stderr);
                let how = status.map_or_else(|| "it stopped".to_owned(), |s| s.to_string());
                Ok(Err(format!(
                    "the program did not say it was ready while being prepared: {how}{}",
                    if stderr.trim().is_empty() { String::new() } else { format!("; its stderr: {}", stderr.trim()) }
                )))
            }
        }
    }
}

/// A program file whose image is cached: its identity when read, the image's key, whether it is
/// a wasm module.
type KnownFile = (FileId, [u8; 32], bool);

/// Who a program file is: unchanged identity means unchanged contents, so a cached image is used
/// without reading and hashing the file again (≈ 25 µs of a run for a small program, more for a
/// wasm module, which is also validated). The change time moves on every write and cannot be set
/// by users; but it has the kernel's clock-tick granularity, so a file written within the same
/// tick could look unchanged. An identity is therefore only recorded for a file whose last change
/// is over a second old (`settled`), as git does for its index.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct FileId {
    dev: u64,
    ino: u64,
    size: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
}

impl FileId {
    fn of(path: &std::path::Path) -> Option<FileId> {
        use std::os::unix::fs::MetadataExt;
        let m = std::fs::metadata(path).ok()?;
        Some(FileId {
            dev: m.dev(),
            ino: m.ino(),
            size: m.size(),
            mtime: (m.mtime(), m.mtime_nsec()),
            ctime: (m.ctime(), m.ctime_nsec()),
        })
    }

    /// Whether the file's last change is more than a second in the past.
    fn settled(&self) -> bool {
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        let changed = Duration::new(self.ctime.0.max(0) as u64, self.ctime.1.clamp(0, 999_999_999) as u32);
        now.saturating_sub(changed) > Duration::from_secs(1)
    }
}

/// Why fuel cannot be enforced on a native guest.
const NATIVE_FUEL: &str = "native guest code cannot be metered instruction by instruction; use cpu_time";

/// A prepared program's guest image (see [`crate::Prepared`]), and the snapshot and VMs its
/// runs start from (see `warm.rs`).
struct PreparedImage {
    image: Arc<GuestImage>,
    wasm: bool,
    /// The image's key (what a snapshot file names as its program).
    key: [u8; 32],
    pool: Option<Arc<warm::Pool>>,
    /// Whether the snapshot was taken where the guest said it was ready.
    ready: bool,
}

/// What a guest's `ready` call does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ReadyCall {
    /// Nothing (a run).
    Ignore,
    /// Stops the VM right after the call, for a snapshot (a preparing run).
    Stop,
    /// A preparing run of a WASI program that says ready itself: the VM stops right after the
    /// guest closes a descriptor it opened on `/run/sandcell/ready` (the runtime's own `ready`
    /// call, before `_start`, does nothing).
    StopAtFile,
    /// The guest has called it (a preparing run; the VM is stopping).
    Called,
}

/// Serving one VM's events until it ends.
struct Session<'a> {
    vm: &'a Vm,
    image: &'a GuestImage,
    sink: &'a Arc<Sink>,
    control: &'a Arc<RunControl>,
    /// A native guest's stdin (`None` for a WASI guest) and how much of its bytes it has read.
    stdin: Option<Stdin>,
    stdin_at: usize,
    /// Reads of a streamed stdin waiting for input (vCPU, buffer), oldest first: with several
    /// vCPUs, one waiting for input must not hold up the others' calls (see `serve`).
    waiting_reads: std::collections::VecDeque<(u32, Span)>,
    /// Set by a read that has to wait (taken by `hypercall`).
    defer_read: Option<Span>,
    host_functions: &'a HashMap<String, HostFunction>,
    wasi: Option<&'a mut wasi::WasiService>,
    status: Option<Status>,
    fuel: Option<u64>,
    ready: ReadyCall,
    /// The WASI descriptors a preparing run has open (`ReadyCall::StopAtFile` only).
    files: OpenFiles,
}

/// The files a WASI guest opened (`path_open`) and has not closed, and which of them are
/// `/run/sandcell/ready`: at the snapshot it may have none open but that one (a run restored
/// from it gets a fresh WASI environment, with its standard streams and preopens only).
#[derive(Debug, Default)]
struct OpenFiles {
    /// The descriptor of `/run/sandcell` ([`crate::wasi::WasiHost::run_dir_fd`]).
    run_dir: u32,
    open: std::collections::BTreeSet<u32>,
    ready: std::collections::BTreeSet<u32>,
    /// A standard stream or preopen the guest replaced (`fd_renumber` onto it).
    replaced: Option<u32>,
}

fn bad_host_call(message: String) -> Status {
    Status::Trap(Trap { kind: TrapKind::BadHostCall, message })
}

impl Session<'_> {
    fn serve(&mut self) {
        while self.status.is_none() && self.ready != ReadyCall::Called {
            let event = if self.waiting_reads.is_empty() {
                match self.vm.events.recv() {
                    Ok(event) => event,
                    Err(_) => break,
                }
            } else {
                // Some vCPU waits for stdin: look for its input between the others' events.
                match self.vm.events.recv_timeout(Duration::from_millis(1)) {
                    Ok(event) => event,
                    Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                        if self.control.reason().is_some() {
                            return;
                        }
                        self.answer_waiting_reads();
                        continue;
                    }
                    Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => break,
                }
            };
            let (cpu, reply) = match event {
                Event::Hypercall { cpu } => match self.hypercall(cpu) {
                    Some(reply) => (cpu, reply),
                    None => continue, // a read that waits for input
                },
                Event::Exception { cpu, exception } => {
                    self.status = Some(self.exception(exception));
                    (cpu, Reply::Quit)
                }
                Event::Fault { cpu, kind, reason } => {
                    let trap = match kind {
                        vm::FaultKind::Port => TrapKind::BadHostCall,
                        vm::FaultKind::Memory => TrapKind::MemoryOutOfBounds,
                        vm::FaultKind::Cpu => TrapKind::Other,
                    };
                    self.status = Some(Status::Trap(Trap { kind: trap, message: reason }));
                    (cpu, Reply::Quit)
                }
                Event::Interrupted { cpu } => (cpu, Reply::Resume),
            };
            if self.control.reason().is_some() {
                self.vm.reply(cpu, Reply::Quit);
                return;
            }
            self.vm.reply(cpu, if self.status.is_some() { Reply::Quit } else { reply });
        }
    }

    /// Checks that a span lies in guest RAM above the VM's own structures (the guest's image,
    /// stacks and heap).
    fn check_inside(&self, span: Span) -> std::result::Result<(), String> {
        // An empty buffer touches nothing (an empty slice's address is dangling, e.g. 0x1).
        // Past the RAM registered so far (see `vm::RamSlots`) the guest reaches nothing either.
        if span.len > 0 && (span.addr < layout::IMAGE || span.end() > self.vm.ram_ready()) {
            return Err(format!("buffer {:#x}+{:#x} is outside the guest's memory", span.addr, span.len));
        }
        Ok(())
    }

    /// Checks that the guest could write the span itself: the host writes for the guest only
    /// there (never over its code or read-only data, which would undo its W^X protection and,
    /// the image's read-only pages being shared, reach other runs).
    fn check(&self, span: Span) -> std::result::Result<(), String> {
        self.check_inside(span)?;
        if !self.image.writable(span.addr, span.len) {
            return Err(format!("buffer {:#x}+{:#x} is not writable by the guest", span.addr, span.len));
        }
        Ok(())
    }

    /// Checks that the guest could read the span: its image, stacks, heap, or the (read-only)
    /// boot area, where its arguments live.
    fn check_readable(&self, span: Span) -> std::result::Result<(), String> {
        let boot = layout::BOOT_INFO..layout::BOOT_INFO + layout::BOOT_INFO_SIZE;
        if boot.contains(&span.addr) && span.end() <= boot.end {
            return Ok(());
        }
        self.check_inside(span)
    }

    fn read(&self, span: Span) -> std::result::Result<Vec<u8>, String> {
        self.check_readable(span)?;
        let mut buf = vec![0u8; span.len as usize];
        self.vm.memory.read_slice(&mut buf, GuestAddress(span.addr)).map_err(|e| e.to_string())?;
        Ok(buf)
    }

    fn write(&self, span: Span, bytes: &[u8]) -> std::result::Result<(), String> {
        self.check(Span { addr: span.addr, len: bytes.len() as u64 })?;
        self.vm.memory.write_slice(bytes, GuestAddress(span.addr)).map_err(|e| e.to_string())
    }

    /// Serves vCPU `cpu`'s call; `None` when it is a read that waits for input (answered
    /// later by [`Session::answer_waiting_reads`]).
    fn hypercall(&mut self, cpu: u32) -> Option<Reply> {
        let at = GuestAddress(layout::mailbox(cpu));
        let mut bytes = [0u8; MAILBOX_BYTES];
        if self.vm.memory.read_slice(&mut bytes, at).is_err() {
            self.status = Some(bad_host_call("unreadable mailbox".into()));
            return Some(Reply::Quit);
        }
        let request = match sandcell_abi::decode(&bytes) {
            Ok(r) => r,
            Err(e) => {
                self.status = Some(bad_host_call(format!("invalid hypercall: {e}")));
                return Some(Reply::Quit);
            }
        };
        let (ret, ret2) = match self.serve_request(request) {
            Ok(r) => r,
            Err(message) => {
                self.status = Some(bad_host_call(message));
                return Some(Reply::Quit);
            }
        };
        if let Some(buf) = self.defer_read.take() {
            self.waiting_reads.push_back((cpu, buf));
            return None;
        }
        Some(self.answer(cpu, ret, ret2))
    }

    /// Writes a call's results into vCPU `cpu`'s mailbox.
    fn answer(&mut self, cpu: u32, ret: i64, ret2: u64) -> Reply {
        if self.status.is_some() {
            return Reply::Quit;
        }
        let at = GuestAddress(layout::mailbox(cpu));
        let mut bytes = [0u8; MAILBOX_BYTES];
        if self.vm.memory.read_slice(&mut bytes, at).is_err() {
            self.status = Some(bad_host_call("unreadable mailbox".into()));
            return Reply::Quit;
        }
        let mut m = Mailbox::from_bytes(&bytes);
        m.ret = ret;
        m.ret2 = ret2;
        if self.vm.memory.write_slice(&m.to_bytes(), at).is_err() {
            self.status = Some(bad_host_call("unwritable mailbox".into()));
            return Reply::Quit;
        }
        Reply::Resume
    }

    /// Answers the reads waiting for a streamed stdin, oldest first, while input (or its end)
    /// is there.
    fn answer_waiting_reads(&mut self) {
        while let Some(&(cpu, buf)) = self.waiting_reads.front() {
            let Some(Stdin::Pipe(fd)) = &self.stdin else { return };
            if !input::readable_now(fd) {
                return;
            }
            self.waiting_reads.pop_front();
            let mut chunk = vec![0u8; buf.len.min(64 * 1024) as usize];
            let n = input::read_some(fd, &mut chunk).unwrap_or(0);
            let reply = match self.write(buf, &chunk[..n]) {
                Ok(()) => self.answer(cpu, n as i64, 0),
                Err(message) => {
                    self.status = Some(bad_host_call(message));
                    Reply::Quit
                }
            };
            self.vm.reply(cpu, reply);
        }
    }

    fn serve_request(&mut self, request: Request) -> std::result::Result<(i64, u64), String> {
        Ok(match request {
            Request::Exit { code, fuel_used, output } => {
                self.fuel = fuel_used;
                if output.len > 0 {
                    let bytes = self.read(output)?;
                    if !self.sink.capture.lock().push(Stream::Stdout, &bytes) {
                        self.control.stop(StopReason::OutputLimit);
                    }
                }
                self.status = Some(Status::Exited(code));
                (0, 0)
            }
            Request::Ram { end } => (self.vm.grow_ram(end) as i64, 0),
            Request::Trap { kind, message, fuel_used } => {
                self.fuel = fuel_used;
                let text = self.read(message).map(|m| String::from_utf8_lossy(&m).into_owned()).unwrap_or_default();
                self.status = Some(match kind {
                    trap::OUT_OF_FUEL => Status::CpuLimit(CpuBudget::Fuel),
                    trap::OUT_OF_MEMORY => Status::MemoryLimit,
                    k => Status::Trap(Trap { kind: wasm_trap_kind(k), message: text }),
                });
                (0, 0)
            }
            Request::Write { fd, buf } => {
                let bytes = self.read(buf)?;
                let stream = if fd == 1 { Stream::Stdout } else { Stream::Stderr };
                if !self.sink.capture.lock().push(stream, &bytes) {
                    self.control.stop(StopReason::OutputLimit);
                }
                (bytes.len() as i64, 0)
            }
            Request::Read { buf } => {
                self.check(buf)?;
                let want = buf.len.min(64 * 1024) as usize;
                match &self.stdin {
                    Some(Stdin::Bytes(bytes)) => {
                        let rest = &bytes[self.stdin_at.min(bytes.len())..];
                        let n = rest.len().min(want);
                        self.write(buf, &rest[..n])?;
                        self.stdin_at += n;
                        (n as i64, 0)
                    }
                    Some(Stdin::Pipe(fd)) => {
                        if self.image.vcpus > 1 && !input::readable_now(fd) {
                            // Answered by `serve` once input arrives; the other vCPUs go on.
                            self.defer_read = Some(buf);
                            return Ok((0, 0));
                        }
                        let control = self.control;
                        if let input::Ready::Stopped = input::wait_readable(fd, || control.reason().is_some()) {
                            return Ok((0, 0)); // the run is ending; the guest is stopped next
                        }
                        let mut chunk = vec![0u8; want];
                        let n = input::read_some(fd, &mut chunk).unwrap_or(0);
                        self.write(buf, &chunk[..n])?;
                        (n as i64, 0)
                    }
                    None => (0, 0),
                }
            }
            Request::HostCall { name, input, output } => {
                let name =
                    String::from_utf8(self.read(name)?).map_err(|_| "host function name is not UTF-8".to_owned())?;
                let Some(f) = self.host_functions.get(&name) else {
                    return Ok((-sandcell_abi::host_call_error::NOT_FOUND, 0));
                };
                let input = self.read(input)?;
                let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(&input)))
                    .unwrap_or_else(|_| Err(format!("host function `{name}` panicked")));
                match result {
                    Ok(out) if out.len() as u64 <= output.len => {
                        self.write(output, &out)?;
                        (out.len() as i64, 0)
                    }
                    Ok(out) => (-sandcell_abi::host_call_error::TOO_SMALL, out.len() as u64),
                    Err(message) => {
                        let m = &message.as_bytes()[..message.len().min(output.len as usize)];
                        self.write(output, m)?;
                        (-sandcell_abi::host_call_error::FAILED, m.len() as u64)
                    }
                }
            }
            Request::Ready => {
                // (With `StopAtFile` this is the runtime's call before `_start`: nothing.)
                if self.ready == ReadyCall::Stop {
                    // The vCPU completes this call and stops before its next instruction (see
                    // `Vm::stop_after_reply`): its registers are then the snapshot's.
                    if self.image.vcpus != 1 {
                        return Err("a snapshot after ready takes a guest with one vCPU".into());
                    }
                    self.ready = ReadyCall::Called;
                    self.vm.stop_after_reply();
                }
                (0, 0)
            }
            Request::Wasi { function, .. } if wasi::is_proc_raise(function) => {
                // As on the wasm backend: a signal that ends a process ends the run with it.
                let signal = match request {
                    Request::Wasi { args, nargs: 1, .. } => args[0] as u32 as i32,
                    _ => return Err("proc_raise takes one argument".into()),
                };
                match crate::wasi::signals::raise(signal) {
                    crate::wasi::signals::Raise::Terminate(sig) => {
                        self.status = Some(Status::Signaled(sig));
                        (0, 0)
                    }
                    crate::wasi::signals::Raise::Ignore => (0, 0),
                    crate::wasi::signals::Raise::Invalid => (crate::wasi::signals::ERRNO_INVAL as i64, 0),
                }
            }
            Request::Wasi { function, memory, args, nargs } => {
                self.check(memory)?;
                let host = self.vm.memory.get_host_address(GuestAddress(memory.addr)).map_err(|e| e.to_string())?;
                let wasi = self.wasi.as_deref_mut().ok_or("WASI calls are for wasm guests")?;
                let errno = wasi.call(function as usize, (host, memory.len as usize), &args[..nargs as usize])?;
                if self.ready == ReadyCall::StopAtFile && errno == 0 {
                    // SAFETY: `host` is the guest's linear memory, `memory.len` bytes inside
                    // guest RAM (checked above); the vCPU is stopped.
                    let linear = unsafe { std::slice::from_raw_parts(host, memory.len as usize) };
                    self.track_files(function, &args[..nargs as usize], linear)?;
                }
                (errno as i64, 0)
            }
        })
    }

    /// Follows the descriptors a WASI guest being prepared opens and closes, and stops it for
    /// the snapshot when it closes one it opened on `/run/sandcell/ready` (see [`OpenFiles`]).
    fn track_files(&mut self, function: u16, args: &[u64], linear: &[u8]) -> std::result::Result<(), String> {
        let at = |ptr: u64, len: usize| linear.get(ptr as usize..(ptr as usize).checked_add(len)?);
        match sandcell_abi::WASI_FUNCTIONS.get(function as usize).copied() {
            Some("path_open") if args.len() == 9 => {
                let Some(fd) = at(args[8], 4).map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]])) else {
                    return Ok(());
                };
                let path = at(args[2], args[3].min(64) as usize).unwrap_or_default();
                let path = path.strip_prefix(b"./").unwrap_or(path);
                if args[0] as u32 == self.files.run_dir && path == crate::wasi::fs::READY_FILE.as_bytes() {
                    self.files.ready.insert(fd);
                }
                self.files.open.insert(fd);
            }
            // wasix's `fd_renumber` is a `dup2`: `from` stays open and `to` becomes a copy.
            Some("fd_renumber") if args.len() == 2 => {
                let (from, to) = (args[0] as u32, args[1] as u32);
                if from != to {
                    if to <= self.files.run_dir {
                        // A standard stream or preopen replaced: a fresh environment would not
                        // have what the guest now has there.
                        self.files.replaced = Some(to);
                    }
                    if self.files.ready.contains(&from) {
                        self.files.ready.insert(to);
                    } else {
                        self.files.ready.remove(&to);
                    }
                    if to > self.files.run_dir {
                        self.files.open.insert(to);
                    }
                }
            }
            Some("fd_close") if args.len() == 1 => {
                let fd = args[0] as u32;
                self.files.open.remove(&fd);
                if self.files.ready.remove(&fd) {
                    if let Some(replaced) = self.files.replaced {
                        return Err(format!(
                            "the program replaced descriptor {replaced} (a standard stream or preopen) before it said it \
                             was ready: a run restored from the snapshot starts with a fresh WASI environment"
                        ));
                    }
                    let others: Vec<String> = self.files.open.iter().map(u32::to_string).collect();
                    if !others.is_empty() {
                        return Err(format!(
                            "the program said it was ready with files open (descriptors {}): a run restored from the \
                             snapshot starts with a fresh WASI environment, so close them before writing \
                             /run/sandcell/ready",
                            others.join(", ")
                        ));
                    }
                    self.ready = ReadyCall::Called;
                    self.vm.stop_after_reply();
                }
            }
            _ => {}
        }
        Ok(())
    }

    fn exception(&self, e: Exception) -> Status {
        let instruction = |rip: u64| -> &'static str {
            let mut b = [0u8; 2];
            if rip < layout::IMAGE
                || rip + 2 > self.image.ram
                || self.vm.memory.read_slice(&mut b, GuestAddress(rip)).is_err()
            {
                return "";
            }
            match b {
                [0xf4, _] => " (hlt)",
                [0xfa, _] => " (cli)",
                [0xfb, _] => " (sti)",
                [0x0f, 0x32] => " (rdmsr)",
                [0x0f, 0x30] => " (wrmsr)",
                [0xe4..=0xe7, _] | [0xec..=0xef, _] => " (port I/O)",
                [0x0f, 0x0b] => " (ud2)",
                _ => "",
            }
        };
        let (kind, message) = match e.vector {
            0 => (TrapKind::IntegerDivisionByZero, format!("divide error at {:#x}", e.rip)),
            3 => (TrapKind::Breakpoint, format!("breakpoint (int3) at {:#x}", e.rip)),
            6 => (TrapKind::IllegalInstruction, format!("invalid opcode at {:#x}{}", e.rip, instruction(e.rip))),
            13 => (
                TrapKind::IllegalInstruction,
                format!("general protection fault at {:#x}{}", e.rip, instruction(e.rip)),
            ),
            14 => {
                let what = if e.error_code & 0x10 != 0 {
                    "executing"
                } else if e.error_code & 0x2 != 0 {
                    "writing"
                } else {
                    "reading"
                };
                let why = if e.error_code & 1 == 0 { "an unmapped address" } else { "a page that does not allow it" };
                (TrapKind::MemoryOutOfBounds, format!("page fault {what} {:#x} ({why}) at {:#x}", e.cr2, e.rip))
            }
            8 => (TrapKind::Other, "double fault".into()),
            v => (TrapKind::Other, format!("CPU exception {v} at {:#x}", e.rip)),
        };
        Status::Trap(Trap { kind, message })
    }
}

fn wasm_trap_kind(k: u64) -> TrapKind {
    match k {
        trap::UNREACHABLE => TrapKind::Unreachable,
        trap::DIVISION_BY_ZERO => TrapKind::IntegerDivisionByZero,
        trap::INTEGER_OVERFLOW => TrapKind::IntegerOverflow,
        trap::MEMORY_OUT_OF_BOUNDS => TrapKind::MemoryOutOfBounds,
        trap::TABLE_OUT_OF_BOUNDS => TrapKind::TableOutOfBounds,
        trap::INDIRECT_CALL_TO_NULL => TrapKind::IndirectCallToNull,
        trap::BAD_SIGNATURE => TrapKind::BadSignature,
        trap::BAD_CONVERSION => TrapKind::BadConversionToInteger,
        trap::STACK_OVERFLOW => TrapKind::StackOverflow,
        _ => TrapKind::Other,
    }
}

impl crate::Sandbox for MicroVmSandbox {
    fn backend(&self) -> BackendKind {
        BackendKind::MicroVm
    }

    fn policy(&self) -> &Policy {
        &self.policy
    }

    fn run_with(&self, program: &Program, mut options: RunOptions) -> Result<Outcome> {
        let _span = tracing::info_span!("sandcell.run", backend = "microvm").entered();
        let program = options.program(program);
        self.run_inner(&program, None, options, Instant::now())
    }

    /// Checks the program, builds (or finds) its guest image, and snapshots a VM at its entry
    /// (see `warm.rs`).
    fn prepare(&self, program: &Program) -> Result<crate::Prepared<'_>> {
        self.prepare_with(program, &crate::PrepareOptions::new())
    }

    /// As `prepare`, with a pool of the asked size and idle timeout, and the snapshot taken at
    /// the entry or where the guest says it is ready.
    fn prepare_with(&self, program: &Program, options: &crate::PrepareOptions) -> Result<crate::Prepared<'_>> {
        let _span = tracing::info_span!("sandcell.prepare", backend = "microvm").entered();
        Self::check_program(program)?;
        let config = warm::PoolConfig {
            size: options.checked_pool_size()?,
            idle_timeout: options.idle_timeout.unwrap_or(crate::DEFAULT_IDLE_TIMEOUT),
        };
        let (image, wasm, _, key) = tracing::debug_span!("image").in_scope(|| self.image(program))?;
        if !wasm {
            self.refuse_native_fuel()?;
        }
        if let Some(path) = &options.snapshot_file {
            if options.until_ready {
                return Err(Error::invalid_program(
                    "until_ready and a snapshot file together: the file says where its snapshot was taken",
                ));
            }
            return self.prepare_from_file(program, image, wasm, key, path, config);
        }
        if options.until_ready && image.vcpus != 1 {
            return Err(Error::Unsupported {
                backend: BackendKind::MicroVm,
                what: format!("a snapshot after ready of a guest with {} vCPUs", image.vcpus),
                reason: "a snapshot after ready takes a guest with one vCPU (policy `cpus` = 1)".into(),
            });
        }
        let at_entry = || -> Result<vm::Machine> {
            let (boot, _) = self.boot_info(&image, program, wasm, None, false)?;
            let machine =
                tracing::debug_span!("vm.create").in_scope(|| vm::Machine::create(&image, vm::Code::Shared))?;
            if let Err(e) = machine.write_boot(&boot) {
                machine.destroy();
                return Err(e);
            }
            Ok(machine)
        };
        let (machine, ready) = if options.until_ready {
            // A native guest calls `sandcell_guest::ready()`; a WASI program writes and closes
            // `/run/sandcell/ready`.
            let mode = if wasm { ReadyCall::StopAtFile } else { ReadyCall::Stop };
            let machine = tracing::debug_span!("until_ready")
                .in_scope(|| self.run_until_ready(&image, program, wasm, mode))?
                .map_err(Error::invalid_program)?;
            (machine, true)
        } else if wasm {
            // The guest runtime compiles and instantiates the module, then says ready right
            // before `_start` (no guest code has run, no WASI call was made): each run starts
            // there, with its own arguments, environment and stdin (all WASI, served per run).
            // A module whose start function calls WASI cannot be snapshotted there: its runs
            // start from the entry (and compile the module each time), as unprepared ones do.
            // A module that traps or is stopped before `_start` has its runs do the same (a
            // run's outcome, not an error of `prepare`). A failure of the host is an error.
            match tracing::debug_span!("until_ready")
                .in_scope(|| self.run_until_ready(&image, program, true, ReadyCall::Stop))?
            {
                Ok(machine) => (machine, true),
                Err(why) => {
                    tracing::debug!("no snapshot after instantiation ({why}); snapshot at the entry");
                    (at_entry()?, false)
                }
            }
        } else {
            (at_entry()?, false)
        };
        let mut machine = machine;
        let snapshot = match tracing::debug_span!("snapshot").in_scope(|| warm::Snapshot::take(&mut machine, &image)) {
            Ok(s) => s,
            Err(e) => {
                machine.destroy();
                return Err(e);
            }
        };
        Ok(self.pooled(program, PreparedImage { image, wasm, pool: None, ready, key }, snapshot, machine, config))
    }

    fn save_prepared(
        &self,
        prepared: &crate::Prepared<'_>,
        path: &std::path::Path,
        _: crate::sandbox::token::PrivateToken,
    ) -> Result<()> {
        let state = prepared.state::<PreparedImage>(self)?;
        let Some(pool) = state.and_then(|s| s.pool.as_ref().map(|p| (s, p))) else {
            return Err(Error::invalid_program("the program was not prepared with a snapshot"));
        };
        let (state, pool) = pool;
        let cache = self.snapshot_cache()?;
        let header = self.snapshot_header(&state.image, state.key, prepared.program(), state.ready);
        let bytes = warm::file::encode(&pool.snapshot, &header, cache);
        write_private(path, &bytes)
            .map_err(|e| Error::setup(format!("write the snapshot file `{}`", path.display()), e))
    }

    fn run_prepared(
        &self,
        prepared: &crate::Prepared<'_>,
        mut options: RunOptions,
        _: crate::sandbox::token::PrivateToken,
    ) -> Result<Outcome> {
        let _span = tracing::info_span!("sandcell.run", backend = "microvm").entered();
        let Some(image) = prepared.state::<PreparedImage>(self)? else {
            return self.run_with(prepared.program(), options);
        };
        let program = options.program(prepared.program());
        self.run_inner(&program, Some(image), options, Instant::now())
    }

    fn interrupt_handle(&self) -> InterruptHandle {
        self.interrupt.clone()
    }
}

/// The body of the hypercall fuzz target (see [`crate::fuzz::microvm_hypercalls`]).
pub(crate) fn fuzz_hypercalls(data: &[u8], mount: std::path::PathBuf) {
    use std::sync::{Condvar, OnceLock};
    const RAM: usize = 64 << 10;
    static HOST: OnceLock<crate::wasi::WasiHost> = OnceLock::new();
    let host = HOST.get_or_init(|| {
        let mounts = [crate::Mount::read_only(mount, "/data")];
        crate::wasi::WasiHost::new(wasi::proxy_engine(), &mounts, &Default::default(), Some(16), Some(1 << 20))
            .expect("the fuzzing WASI host")
    });
    let mut ram = vec![0u8; RAM];
    let n = data.len().min(RAM);
    ram[..n].copy_from_slice(&data[..n]);
    let control = RunControl::new();
    let sink = Arc::new(Sink { capture: Mutex::new(Capture::new(4096, None)), control });
    let program = Program::bytes(Vec::new()).arg("fuzz").stdin(b"some input\n".to_vec());
    let mut service = wasi::WasiService::new(host, None, &program, &sink).expect("the WASI service starts");
    // A call that blocks (a long poll_oneoff, a sleep) is killed as a run's timeout kills it.
    let process = service.process();
    let done = Arc::new((std::sync::Mutex::new(false), Condvar::new()));
    let watchdog = {
        let done = done.clone();
        std::thread::spawn(move || {
            let (lock, cv) = &*done;
            let guard = lock.lock().unwrap_or_else(|e| e.into_inner());
            let (guard, _) =
                cv.wait_timeout_while(guard, Duration::from_millis(200), |d| !*d).unwrap_or_else(|e| e.into_inner());
            if !*guard {
                process.signal_process(wasmer_wasix::types::wasi::Signal::Sigkill);
            }
        })
    };
    for chunk in data[n..].chunks(MAILBOX_BYTES) {
        let mut bytes = [0u8; MAILBOX_BYTES];
        bytes[..chunk.len()].copy_from_slice(chunk);
        let Ok(Request::Wasi { function, memory, args, nargs }) = sandcell_abi::decode(&bytes) else { continue };
        if wasi::is_proc_raise(function) {
            continue; // served by the session, not by WASI
        }
        // The session checks the span against guest RAM (`Session::check`, tested on real VMs);
        // here it is folded into the buffer, so that fuzzed requests reach WASI's own checks.
        let addr = (memory.addr % RAM as u64) as usize;
        let len = (memory.len as usize).min(RAM - addr);
        let args = args.get(..usize::from(nargs)).unwrap_or(&args);
        let _ = service.call(usize::from(function), (ram[addr..].as_mut_ptr(), len), args);
    }
    *done.0.lock().unwrap_or_else(|e| e.into_inner()) = true;
    done.1.notify_all();
    let _ = watchdog.join();
    service.finish(0);
}
