//! The wasm backend: WASI preview 1 modules on wasmer + Cranelift.
//!
//! How the policy is lowered:
//!
//! | field | mechanism |
//! |---|---|
//! | memory | linear memory maximum clamped by the engine's tunables; tables capped too |
//! | timeout, interrupt | stop flag checked at function entries and loop headers ([`guard`]), plus a WASI-level kill that wakes a guest blocked in `poll_oneoff` |
//! | cpu_time | the run thread's CPU clock, checked by the watchdog |
//! | fuel | per-operator metering in a second engine ([`guard`]) |
//! | mounts | preopened directories over [`fs::MountDir`]; nothing else exists |
//! | network | none: no socket imports are linked, networking is `Unsupported` |
//! | max_output | capped capture ([`stdio`]) |
//! | max_open_files, max_file_size | counted in [`fs`] |
//!
//! Three holes in wasmer-wasix's defaults are closed here: stdio that is not set falls back to
//! the host's (sandcell always sets it); the default runtime has host networking (sandcell
//! builds its own with networking unsupported, links only `wasi_snapshot_preview1`, and refuses
//! modules importing anything else); the default root is an unbounded in-memory filesystem
//! (sandcell mounts only the policy's host directories). A fourth: WASI exit codes are 32-bit
//! but wasix keeps them modulo 256, so `proc_exit(256)` would look like success; sandcell
//! links its own `proc_exit` and reports the exact code.

pub(crate) mod engine;
pub(crate) mod fs;
pub(crate) mod guard;
pub(crate) mod stdio;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use wasmer::{
    AsStoreMut, Function, FunctionEnv, FunctionEnvMut, Imports, Instance, Module, RuntimeError, Store, Type, Value,
};
use wasmer_wasix::runtime::task_manager::tokio::TokioTaskManager;
use wasmer_wasix::{PluggableRuntime, UnsupportedVirtualNetworking, WasiEnv, WasiError, WasiFunctionEnv, WasiVersion};

use self::engine::{BaseEngine, CompiledModule, WASI_MODULE};
use self::fs::{FsLimits, MountRoot};
use self::guard::{FLAG_FUEL, FLAG_HOST, FUEL_EXPORT, START_EXPORT, STOP_EXPORT};
use self::stdio::{OutputFile, Sink, StdinFile};
use crate::cache::ArtifactCache;
use crate::control::{watchdog, Capture, InterruptHandle, RunControl, StopReason};
use crate::{
    ArtifactSource, BackendKind, CpuBudget, Error, Network, Outcome, Policy, Program, Result, RunOptions,
    SandboxBuilder, Status, Stream, Trap, TrapKind, Usage,
};

/// The tokio runtime wasmer-wasix needs for its file operations; one for the process.
pub(crate) fn tokio_runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("sandcell-wasi")
            .enable_all()
            .build()
            .expect("cannot start the tokio runtime for WASI")
    })
}

/// A sandbox running WASI preview 1 modules.
pub struct WasmSandbox {
    policy: Policy,
    base: &'static BaseEngine,
    engine: wasmer::Engine,
    runtime: Arc<PluggableRuntime>,
    mounts: Vec<(PathBuf, Arc<MountRoot>)>,
    disk: Option<ArtifactCache>,
    interrupt: InterruptHandle,
    enforced: BTreeMap<String, String>,
    skipped: BTreeMap<String, String>,
}

impl std::fmt::Debug for WasmSandbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WasmSandbox")
            .field("policy", &self.policy)
            .field("metered", &self.policy.fuel.is_some())
            .finish()
    }
}

/// The guest called `proc_exit` with this exact code.
#[derive(Debug, thiserror::Error)]
#[error("guest exited with code {0}")]
struct GuestExit(u32);

/// The guest raised a signal that ends it (`proc_raise`; the Linux signal number).
#[derive(Debug, thiserror::Error)]
#[error("guest raised signal {0}")]
struct GuestSignal(i32);

/// The address of a run's stop flag, valid while its instance lives.
struct FlagPtr(*mut i32);
// SAFETY: the pointer is only dereferenced (atomically) by the stopper, which the run disarms
// before its store is dropped; `RunControl::disarm` waits for a running stopper to finish.
unsafe impl Send for FlagPtr {}
// SAFETY: as above; all accesses are atomic.
unsafe impl Sync for FlagPtr {}

impl FlagPtr {
    fn raise(&self) {
        // SAFETY: the pointer is the `VMGlobalDefinition` of the instance's stop flag, an
        // aligned i32. The run disarms the stopper that owns this `FlagPtr` before it drops the
        // store, so the instance (and the global) is alive whenever this runs.
        unsafe { AtomicI32::from_ptr(self.0) }.store(FLAG_HOST, Ordering::SeqCst);
    }
}

impl WasmSandbox {
    pub(crate) fn new(builder: SandboxBuilder) -> Result<Self> {
        let SandboxBuilder { policy, cache_dir, .. } = builder;
        let mut enforced = BTreeMap::new();
        let mut skipped = BTreeMap::new();
        let mut refuse = |field: &str, reason: &str| -> Result<()> {
            if policy.best_effort {
                skipped.insert(field.to_owned(), reason.to_owned());
                Ok(())
            } else {
                Err(Error::Unenforceable {
                    backend: BackendKind::Wasm,
                    field: field.to_owned(),
                    reason: reason.to_owned(),
                })
            }
        };
        if policy.network != Network::None {
            refuse("network", "WASI preview 1 has no network: a wasm guest gets no sockets at all; use the process backend for a private loopback")?;
        }
        if policy.unix_sockets {
            refuse("unix_sockets", "a wasm guest has no sockets at all")?;
        }
        if policy.system_dirs.as_ref().is_some_and(|d| !d.is_empty()) {
            refuse("system_dirs", "a wasm guest has no system directories; mount what the module needs with `mounts`")?;
        }

        let base = engine::base(policy.fuel.is_some());
        let engine = base.capped(policy.memory);
        let handle = tokio_runtime().handle().clone();
        let mut runtime = PluggableRuntime::new(Arc::new(TokioTaskManager::new(handle.clone())));
        runtime.set_engine(engine.clone());
        runtime.set_networking_implementation(UnsupportedVirtualNetworking::default());

        let mut mounts = Vec::with_capacity(policy.mounts.len());
        for (i, m) in policy.mounts.iter().enumerate() {
            let field = format!("mounts[{i}].host");
            let host = std::fs::canonicalize(&m.host)
                .map_err(|e| Error::invalid_policy(&field, format!("`{}`: {e}", m.host.display())))?;
            if !host.is_dir() {
                return Err(Error::invalid_policy(
                    &field,
                    format!("`{}` is not a directory (the wasm backend mounts directories)", host.display()),
                ));
            }
            let root = MountRoot::new(&host, m.writable, handle.clone())
                .map_err(|e| Error::invalid_policy(&field, format!("`{}`: {e}", host.display())))?;
            mounts.push((m.guest.clone(), Arc::new(root)));
        }
        let disk = cache_dir.as_deref().map(ArtifactCache::open).transpose()?;

        if let Some(mem) = policy.memory {
            enforced.insert(
                "memory".into(),
                format!("linear memory capped at {} wasm pages", mem / wasmer::WASM_PAGE_SIZE as u64),
            );
        }
        if policy.timeout.is_some() {
            enforced.insert("timeout".into(), "stop flag at function entries and loop headers".into());
        }
        if policy.cpu_time.is_some() {
            enforced.insert("cpu_time".into(), "run thread's CPU clock".into());
        }
        if policy.fuel.is_some() {
            enforced.insert("fuel".into(), "per-operator metering".into());
        }
        if policy.cpus.is_some() {
            enforced.insert("cpus".into(), "a wasm run uses one thread".into());
        }
        if policy.max_processes.is_some() {
            enforced.insert("max_processes".into(), "WASI preview 1 cannot create processes".into());
        }
        enforced.insert("network".into(), "no sockets linked".into());
        if !policy.deny_syscalls.is_empty() {
            enforced.insert("deny_syscalls".into(), "a wasm guest makes no system calls, only WASI calls".into());
        }
        Ok(WasmSandbox {
            policy,
            base,
            engine,
            runtime: Arc::new(runtime),
            mounts,
            disk,
            interrupt: InterruptHandle::for_sandbox(),
            enforced,
            skipped,
        })
    }

    /// Compiles the program's module, or fetches it from the caches, without running it, and
    /// says where it came from. `run` does this itself; call it to warm the caches ahead of time.
    pub fn precompile(&self, program: &Program) -> Result<ArtifactSource> {
        let (_, source) = self.compile(program)?;
        Ok(source)
    }

    fn compile(&self, program: &Program) -> Result<(CompiledModule, ArtifactSource)> {
        let bytes = program.load()?;
        self.base.module(&bytes, self.disk.as_ref(), &self.policy.compile)
    }

    fn outcome(&self, status: Status, sink: &Sink, usage: Usage) -> Outcome {
        let (stdout, stderr) = sink.capture.lock().take();
        Outcome { status, stdout, stderr, usage, enforced: self.enforced.clone(), skipped: self.skipped.clone() }
    }

    fn run_compiled(
        &self,
        compiled: &CompiledModule,
        source: ArtifactSource,
        program: &Program,
        options: RunOptions,
        started: Instant,
    ) -> Result<Outcome> {
        let control = RunControl::new();
        let _sandbox_attachment = self.interrupt.attach(&control);
        let _run_attachment = options.interrupt.as_ref().map(|h| h.attach(&control));
        let sink = Arc::new(Sink {
            capture: Mutex::new(Capture::new(self.policy.max_output, options.on_output)),
            control: control.clone(),
        });
        let _tokio = tokio_runtime().enter();
        let cpu_start = crate::sys::thread_cpu_time();
        engine::take_new_memories();
        let mut store = Store::new(self.engine.clone());

        // Instantiate, with WASI only when the module imports it.
        let mut wasi = None;
        let instantiated = if compiled.uses_wasi {
            let fenv = self.wasi_env(program, &sink, &mut store)?;
            let mut imports = self.wasi_imports(&mut store, &fenv, |name| compiled.imports(name));
            imports.define(
                WASI_MODULE,
                "proc_exit",
                Function::new_typed(&mut store, |code: i32| -> Result<(), GuestExit> { Err(GuestExit(code as u32)) }),
            );
            if compiled.imports("proc_raise") {
                imports.define(
                    WASI_MODULE,
                    "proc_raise",
                    Function::new_typed(&mut store, |signal: i32| -> Result<i32, GuestSignal> {
                        match crate::wasi::signals::raise(signal) {
                            crate::wasi::signals::Raise::Terminate(sig) => Err(GuestSignal(sig)),
                            crate::wasi::signals::Raise::Ignore => Ok(0),
                            crate::wasi::signals::Raise::Invalid => Ok(crate::wasi::signals::ERRNO_INVAL),
                        }
                    }),
                );
            }
            let result = Instance::new(&mut store, &compiled.module, &imports);
            wasi = Some(fenv);
            result
        } else {
            Instance::new(&mut store, &compiled.module, &Imports::new())
        };
        let waits = engine::take_new_memories();
        let instance = match instantiated {
            Ok(i) => i,
            Err(e) if engine::take_memory_refused() => {
                let usage = Usage { wall: started.elapsed(), artifact: Some(source), ..Usage::default() };
                let _ = e;
                return Ok(self.outcome(Status::MemoryLimit, &sink, usage));
            }
            // Initialising its memories and tables trapped (a data segment out of bounds): the
            // guest's doing, reported as the trap it is.
            Err(wasmer::InstantiationError::Start(e)) => {
                let usage = Usage { wall: started.elapsed(), artifact: Some(source), ..Usage::default() };
                return Ok(self.outcome(classify(e), &sink, usage));
            }
            Err(e) => return Err(Error::invalid_program(format!("cannot instantiate the module: {e}"))),
        };
        if let Some(fenv) = wasi.as_mut() {
            // It fails for want of what a WASI module must export (its memory): the module's fault.
            fenv.initialize(&mut store, instance.clone())
                .map_err(|e| Error::invalid_program(format!("the module uses WASI but cannot have it: {e}")))?;
        }
        if let Some(fuel) = self.policy.fuel {
            let global =
                instance.exports.get_global(FUEL_EXPORT).map_err(|e| Error::Engine { reason: e.to_string() })?;
            global.set(&mut store, Value::I64(fuel as i64)).map_err(|e| Error::Engine { reason: e.to_string() })?;
        }

        // Arm the stop mechanism: the flag, and a kill that wakes a guest blocked in WASI.
        let flag = stop_flag(&instance, &mut store)?;
        let process = wasi.as_ref().map(|f| f.data(&store).process.clone());
        control.arm(Box::new(move || {
            flag.raise();
            // A guest blocked in `memory.atomic.wait` wakes and traps.
            for conditions in &waits {
                conditions.disable_atomics();
            }
            if let Some(p) = &process {
                p.signal_process(wasmer_wasix::types::wasi::Signal::Sigkill);
            }
        }));
        let timers = self.start_timers(&control, started);

        // Run.
        let entry = program.entry_point().unwrap_or("_start");
        let func = instance.exports.get_function(entry).map_err(|_| {
            Error::invalid_program(if entry == "_start" {
                "the module has no `_start` export: sandcell runs WASI commands (or set an entry point)".to_owned()
            } else {
                format!("the module has no exported function `{entry}`")
            })
        })?;
        let params = entry_params(func.ty(&store).params(), program, entry)?;
        engine::take_grow_refused();
        // The module's start function first (see `guard::START_EXPORT`), under the same limits.
        let result = match instance.exports.get_function(START_EXPORT) {
            Ok(start) => start.call(&mut store, &[]),
            Err(_) => Ok(Box::default()),
        };
        let result = result.and_then(|_| func.call(&mut store, &params));
        let grow_refused = engine::take_grow_refused();

        drop(timers);
        control.disarm();
        let cpu = crate::sys::thread_cpu_time().saturating_sub(cpu_start);
        // SAFETY: the stopper is disarmed, nothing else writes the flag; reading it through the
        // global API is ordinary store access.
        let flag_value =
            instance.exports.get_global(STOP_EXPORT).ok().map(|g| g.get(&mut store)).and_then(|v| v.i32()).unwrap_or(0);

        let status = match (control.reason(), result) {
            (Some(reason), _) => reason.status(),
            (None, _) if flag_value == FLAG_FUEL => Status::CpuLimit(CpuBudget::Fuel),
            (None, Ok(values)) => {
                if program.entry_point().is_some() && !values.is_empty() {
                    let text: String = values.iter().map(|v| format!("{}\n", value_text(v))).collect();
                    if !sink.capture.lock().push(Stream::Stdout, text.as_bytes()) {
                        control.stop(StopReason::OutputLimit);
                    }
                }
                control.reason().map_or(Status::Exited(0), StopReason::status)
            }
            (None, Err(e)) => match classify(e) {
                // The guest died (typically an allocator abort) after the cap refused it memory.
                Status::Trap(_) if grow_refused => Status::MemoryLimit,
                other => other,
            },
        };
        if let Some(fenv) = wasi.as_ref() {
            let code = status.exit_code().unwrap_or(1);
            fenv.on_exit(&mut store, Some(wasmer_wasix::types::wasi::ExitCode::from(code.clamp(0, 255) as u16)));
        }
        let peak_memory_bytes =
            instance.exports.iter().memories().map(|(_, m)| m.view(&store).data_size()).sum::<u64>();
        let fuel = self.policy.fuel.map(|budget| {
            let left =
                instance.exports.get_global(FUEL_EXPORT).ok().and_then(|g| g.get(&mut store).i64()).unwrap_or(0) as u64;
            budget.saturating_sub(left)
        });
        // Teardown in this order: the instance, the WASI environment (its file handles), the store.
        drop(instance);
        #[allow(clippy::drop_non_drop)] // dropping it drops its fields, which is the point
        drop(wasi);
        drop(store);
        let usage = Usage { wall: started.elapsed(), cpu, peak_memory_bytes, fuel, artifact: Some(source) };
        Ok(self.outcome(status, &sink, usage))
    }

    /// The WASI preview 1 imports with sandcell's wrappers (descriptor cap, no sockets), for the
    /// functions `wanted` says the module uses (each wrapper costs time per run).
    pub(crate) fn wasi_imports(
        &self,
        store: &mut Store,
        fenv: &WasiFunctionEnv,
        wanted: impl Fn(&str) -> bool,
    ) -> Imports {
        let mut imports = wasmer_wasix::generate_import_object_from_env(store, &fenv.env, WasiVersion::Snapshot1);
        if wanted("path_open") {
            limit_descriptors(store, &mut imports, self.policy.max_open_files);
        }
        no_sockets(store, &mut imports, &wanted);
        imports
    }

    /// The WASI environment of a run: arguments, environment, capped stdio, the policy's mounts.
    pub(crate) fn wasi_env(&self, program: &Program, sink: &Arc<Sink>, store: &mut Store) -> Result<WasiFunctionEnv> {
        let limits = FsLimits::new(self.policy.max_open_files, self.policy.max_file_size);
        let root = fs::build_root(&self.mounts, &limits)
            .map_err(|e| Error::Engine { reason: format!("cannot assemble the guest filesystem: {e}") })?;
        let mut builder = WasiEnv::builder(program.argv0())
            .args(program.arguments())
            .envs(program.merged_env(&self.policy.env))
            .stdin(Box::new(StdinFile::new(program.stdin_shared())))
            .stdout(Box::new(OutputFile::new(Stream::Stdout, sink.clone())))
            .stderr(Box::new(OutputFile::new(Stream::Stderr, sink.clone())))
            .runtime(self.runtime.clone())
            .mount_fs(root);
        for ((guest, _), mount) in self.mounts.iter().zip(&self.policy.mounts) {
            let writable = mount.writable;
            builder
                .add_preopen_build(|p| p.directory(guest).read(true).write(writable).create(writable))
                .map_err(|e| Error::Engine { reason: format!("cannot preopen `{}`: {e}", guest.display()) })?;
        }
        let env = builder.build().map_err(|e| Error::invalid_program(format!("cannot set up WASI: {e}")))?;
        Ok(WasiFunctionEnv::new(store, env))
    }

    fn start_timers(&self, control: &Arc<RunControl>, started: Instant) -> Vec<watchdog::TimerGuard> {
        let mut timers = Vec::new();
        if let Some(timeout) = self.policy.timeout {
            let c = control.clone();
            timers.push(watchdog::schedule(
                started + timeout,
                Box::new(move |_| {
                    c.stop(StopReason::Timeout);
                    None
                }),
            ));
        }
        if let (Some(limit), Some(clock)) = (self.policy.cpu_time, crate::sys::current_thread_cpu_clock()) {
            let base = crate::sys::clock_time(clock).unwrap_or_default();
            timers.push(watchdog::cpu_budget(control, limit, Duration::from_millis(1), move || {
                crate::sys::clock_time(clock).unwrap_or_default().saturating_sub(base)
            }));
        }
        timers
    }
}

/// Caps the number of descriptors the guest holds open (`max_open_files`). In WASI preview 1
/// only `path_open` creates descriptors, so sandcell wraps it and `fd_close`: an open beyond the
/// cap fails with `EMFILE`. (wasix keeps each descriptor in host memory and has no cap of its
/// own, so without this a guest could grow host memory by opening one file forever.) Closing
/// the initial descriptors (stdio, preopens) frees at most that many extra slots.
fn limit_descriptors(store: &mut Store, imports: &mut Imports, max: Option<u64>) {
    const ERRNO_MFILE: i32 = 33;
    let Some(max) = max else { return };
    let (Some(wasmer::Extern::Function(open)), Some(wasmer::Extern::Function(close))) =
        (imports.get_export(WASI_MODULE, "path_open"), imports.get_export(WASI_MODULE, "fd_close"))
    else {
        return;
    };
    struct Descriptors {
        open: Function,
        close: Function,
        count: u64,
        max: u64,
    }
    let env = FunctionEnv::new(store, Descriptors { open, close, count: 0, max });
    type OpenArgs = (i32, i32, i32, i32, i32, i64, i64, i32, i32);
    let path_open = Function::new_typed_with_env(
        store,
        &env,
        |mut ctx: FunctionEnvMut<Descriptors>,
         a: i32,
         b: i32,
         c: i32,
         d: i32,
         e: i32,
         f: i64,
         g: i64,
         h: i32,
         i: i32| {
            let (count, max, inner) = {
                let data = ctx.data();
                (data.count, data.max, data.open.clone())
            };
            if count >= max {
                return Ok(ERRNO_MFILE);
            }
            let typed = inner.typed::<OpenArgs, i32>(&ctx)?;
            let errno = typed.call(&mut ctx, a, b, c, d, e, f, g, h, i)?;
            if errno == 0 {
                ctx.data_mut().count += 1;
            }
            Ok::<i32, RuntimeError>(errno)
        },
    );
    let fd_close = Function::new_typed_with_env(store, &env, |mut ctx: FunctionEnvMut<Descriptors>, fd: i32| {
        let inner = ctx.data().close.clone();
        let errno = inner.typed::<i32, i32>(&ctx)?.call(&mut ctx, fd)?;
        if errno == 0 {
            let data = ctx.data_mut();
            data.count = data.count.saturating_sub(1);
        }
        Ok::<i32, RuntimeError>(errno)
    });
    imports.define(WASI_MODULE, "path_open", path_open);
    imports.define(WASI_MODULE, "fd_close", fd_close);
}

/// A sandbox has no network, so no descriptor is ever a socket: WASI preview 1's `sock_accept`,
/// `sock_recv`, `sock_send` and `sock_shutdown` fail with `EBADF` on a descriptor that is not
/// open and `ENOTSOCK` on any other (wasix would answer `EACCES` or `ENOTSUP` there). wasix still
/// checks the descriptor; its networking is `Unsupported`, so it can never succeed.
fn no_sockets(store: &mut Store, imports: &mut Imports, wanted: &impl Fn(&str) -> bool) {
    const ERRNO_BADF: i32 = 8;
    const ERRNO_NOTSOCK: i32 = 57;
    for name in ["sock_accept", "sock_recv", "sock_send", "sock_shutdown"].into_iter().filter(|n| wanted(n)) {
        let Some(wasmer::Extern::Function(inner)) = imports.get_export(WASI_MODULE, name) else { continue };
        let ty = inner.ty(store);
        let env = FunctionEnv::new(store, inner);
        let wrapped = Function::new_with_env(store, &env, ty, |mut ctx: FunctionEnvMut<Function>, args: &[Value]| {
            let inner = ctx.data().clone();
            let result = inner.call(&mut ctx, args)?;
            let errno = match result.first().and_then(Value::i32) {
                Some(0) | Some(ERRNO_BADF) => result[0].i32().unwrap_or(ERRNO_BADF),
                _ => ERRNO_NOTSOCK,
            };
            Ok(vec![Value::I32(errno)])
        });
        imports.define(WASI_MODULE, name, wrapped);
    }
}

/// Finds the stop flag global's address.
fn stop_flag(instance: &Instance, store: &mut Store) -> Result<FlagPtr> {
    let global = instance
        .exports
        .get_global(STOP_EXPORT)
        .map_err(|e| Error::Engine { reason: format!("compiled module lacks its stop flag: {e}") })?;
    let vm = wasmer::Extern::Global(global.clone()).to_vm_extern().unwrap_sys();
    match vm {
        wasmer::sys::vm::VMExtern::Global(handle) => {
            let definition = handle.get(store.objects_mut().as_sys()).vmglobal();
            Ok(FlagPtr(definition.as_ptr().cast::<i32>()))
        }
        _ => Err(Error::Engine { reason: "stop flag is not a global".into() }),
    }
}

/// Parses the program's arguments as the parameters of an entry point.
fn entry_params(types: &[Type], program: &Program, entry: &str) -> Result<Vec<Value>> {
    if program.entry_point().is_none() {
        if !types.is_empty() {
            return Err(Error::invalid_program("`_start` must take no parameters"));
        }
        return Ok(Vec::new());
    }
    let args = program.arguments();
    if args.len() != types.len() {
        return Err(Error::invalid_program(format!(
            "`{entry}` takes {} parameters, {} arguments were given",
            types.len(),
            args.len()
        )));
    }
    types
        .iter()
        .zip(args)
        .map(|(ty, a)| {
            let bad = || Error::invalid_program(format!("argument `{a}` is not a valid {ty:?} for `{entry}`"));
            Ok(match ty {
                Type::I32 => {
                    Value::I32(a.parse::<i32>().or_else(|_| a.parse::<u32>().map(|v| v as i32)).map_err(|_| bad())?)
                }
                Type::I64 => {
                    Value::I64(a.parse::<i64>().or_else(|_| a.parse::<u64>().map(|v| v as i64)).map_err(|_| bad())?)
                }
                Type::F32 => Value::F32(a.parse().map_err(|_| bad())?),
                Type::F64 => Value::F64(a.parse().map_err(|_| bad())?),
                _ => {
                    return Err(Error::invalid_program(format!(
                        "`{entry}` takes a {ty:?} parameter, which cannot be given as text"
                    )))
                }
            })
        })
        .collect()
}

fn value_text(v: &Value) -> String {
    match v {
        Value::I32(x) => x.to_string(),
        Value::I64(x) => x.to_string(),
        Value::F32(x) => x.to_string(),
        Value::F64(x) => x.to_string(),
        other => format!("{other:?}"),
    }
}

/// Turns an error out of the guest's entry point into a status.
fn classify(error: RuntimeError) -> Status {
    if let Some(GuestExit(code)) = error.downcast_ref::<GuestExit>() {
        return Status::Exited(*code as i32);
    }
    if let Some(GuestSignal(sig)) = error.downcast_ref::<GuestSignal>() {
        return Status::Signaled(*sig);
    }
    if let Some(WasiError::Exit(code)) = error.downcast_ref::<WasiError>() {
        return Status::Exited(code.raw());
    }
    let message = error.message();
    let kind = match error.to_trap() {
        Some(code) => trap_kind(code),
        None => TrapKind::Other,
    };
    Status::Trap(Trap { kind, message })
}

fn trap_kind(code: wasmer_types::TrapCode) -> TrapKind {
    use wasmer_types::TrapCode as T;
    match code {
        T::StackOverflow => TrapKind::StackOverflow,
        T::HeapAccessOutOfBounds | T::HeapMisaligned => TrapKind::MemoryOutOfBounds,
        T::TableAccessOutOfBounds => TrapKind::TableOutOfBounds,
        T::IndirectCallToNull => TrapKind::IndirectCallToNull,
        T::BadSignature => TrapKind::BadSignature,
        T::IntegerOverflow => TrapKind::IntegerOverflow,
        T::IntegerDivisionByZero => TrapKind::IntegerDivisionByZero,
        T::BadConversionToInteger => TrapKind::BadConversionToInteger,
        T::UnreachableCodeReached => TrapKind::Unreachable,
        T::UnalignedAtomic => TrapKind::UnalignedAtomic,
        _ => TrapKind::Other,
    }
}

impl crate::Sandbox for WasmSandbox {
    fn backend(&self) -> BackendKind {
        BackendKind::Wasm
    }

    fn policy(&self) -> &Policy {
        &self.policy
    }

    fn run_with(&self, program: &Program, options: RunOptions) -> Result<Outcome> {
        let started = Instant::now();
        program.validate()?;
        if let Some(cwd) = program.working_dir() {
            return Err(Error::invalid_program(format!(
                "the wasm backend cannot start a program in `{}`: WASI preview 1 has no working directory (a \
                 guest's libc resolves relative paths against its preopened mounts); use absolute paths",
                cwd.display()
            )));
        }
        let (compiled, source) = self.compile(program)?;
        self.run_compiled(&compiled, source, program, options, started)
    }

    fn interrupt_handle(&self) -> InterruptHandle {
        self.interrupt.clone()
    }
}

#[allow(dead_code)]
fn _module_is_send_sync(m: Module) -> impl Send + Sync {
    m
}
