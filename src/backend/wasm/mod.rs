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
pub(crate) mod guard;
mod lower;
mod wizer;

use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use wasmer::{AsStoreMut, Imports, Instance, Module, RuntimeError, Store, Type, Value};
use wasmer_wasix::WasiError;

use self::engine::CompiledModule;
use self::guard::{FLAG_FUEL, FLAG_HOST, FUEL_EXPORT, START_EXPORT, STOP_EXPORT};
use self::lower::Lowered;
use crate::cache::ArtifactCache;
use crate::control::{Capture, InterruptHandle, Run, StopReason};
use crate::wasi::stdio::Sink;
use crate::wasi::{GuestExit, GuestSignal};
use crate::{
    ArtifactSource, BackendKind, CpuBudget, Error, Outcome, Policy, Program, Result, RunOptions, SandboxBuilder,
    Status, Stream, Trap, TrapKind, Usage,
};

/// A sandbox running WASI preview 1 modules.
pub struct WasmSandbox {
    policy: Policy,
    lowered: Lowered,
    disk: Option<ArtifactCache>,
    interrupt: InterruptHandle,
}

impl std::fmt::Debug for WasmSandbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WasmSandbox")
            .field("policy", &self.policy)
            .field("metered", &self.policy.fuel.is_some())
            .finish()
    }
}

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
        let lowered = tracing::debug_span!("lower").in_scope(|| lower::lower(&policy))?;
        let disk = cache_dir.as_deref().map(ArtifactCache::open).transpose()?;
        Ok(WasmSandbox { policy, lowered, disk, interrupt: InterruptHandle::for_sandbox() })
    }

    /// Compiles the program's module, or fetches it from the caches, without running it, and
    /// says where it came from. `run` does this itself; call it to warm the caches ahead of time.
    pub fn precompile(&self, program: &Program) -> Result<ArtifactSource> {
        let (_, source) = self.compile(program)?;
        Ok(source)
    }

    fn compile(&self, program: &Program) -> Result<(CompiledModule, ArtifactSource)> {
        let bytes = program.load()?;
        self.lowered.base.module(&bytes, self.disk.as_ref(), &self.lowered.compile)
    }

    fn outcome(&self, status: Status, sink: &Sink, usage: Usage) -> Outcome {
        let (stdout, stderr) = sink.capture.lock().take();
        let record = &self.lowered.record;
        Outcome { status, stdout, stderr, usage, enforced: record.enforced.clone(), skipped: record.skipped.clone() }
    }

    fn run_compiled(
        &self,
        compiled: &CompiledModule,
        source: ArtifactSource,
        program: &Program,
        options: RunOptions,
        started: Instant,
        mut init: Option<(&wizer::Shape, &mut Option<wizer::Captured>)>,
    ) -> Result<Outcome> {
        let mut run = Run::begin(&self.interrupt, options.handles());
        let control = run.control.clone();
        let sink = Arc::new(Sink {
            capture: Mutex::new(Capture::new(
                crate::sandbox::narrowed(Some(self.lowered.max_output), options.max_output)
                    .unwrap_or(self.lowered.max_output),
                options.on_output,
            )),
            control: control.clone(),
        });
        let _tokio = crate::wasi::tokio_runtime().enter();
        let cpu_start = crate::sys::thread_cpu_time();
        engine::take_new_memories();
        let mut store = Store::new(self.lowered.engine.clone());

        // Instantiate, with WASI only when the module imports it.
        let instantiating = tracing::debug_span!("instantiate").entered();
        let mut wasi = None;
        let instantiated = if compiled.uses_wasi {
            let host = &self.lowered.wasi;
            let fenv = host.env(program, &sink, &mut store)?;
            let mut imports = host.imports(&mut store, &fenv, |name| compiled.imports(name));
            crate::wasi::define_exit_and_raise(&mut store, &mut imports, compiled.imports("proc_raise"));
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
        if let Some(fuel) = self.lowered.fuel {
            let global =
                instance.exports.get_global(FUEL_EXPORT).map_err(|e| Error::Engine { reason: e.to_string() })?;
            global.set(&mut store, Value::I64(fuel as i64)).map_err(|e| Error::Engine { reason: e.to_string() })?;
        }

        drop(instantiating);
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
        run.timeout(started, crate::sandbox::narrowed(self.lowered.timeout, options.timeout));
        if let Some(clock) = crate::sys::current_thread_cpu_clock() {
            let base = crate::sys::clock_time(clock).unwrap_or_default();
            run.cpu_budget(
                crate::sandbox::narrowed(self.lowered.cpu_time, options.cpu_time),
                Duration::from_millis(1),
                move || crate::sys::clock_time(clock).unwrap_or_default().saturating_sub(base),
            );
        }

        // Run (an initialisation being prepared: `wizer.initialize`, see `wizer.rs`).
        let entry = if init.is_some() { wizer::INIT_EXPORT } else { program.entry_point().unwrap_or("_start") };
        let func = instance.exports.get_function(entry).map_err(|_| {
            Error::invalid_program(if entry == "_start" {
                "the module has no `_start` export: sandcell runs WASI commands (or set an entry point)".to_owned()
            } else {
                format!("the module has no exported function `{entry}`")
            })
        })?;
        let params = if init.is_some() {
            if !func.ty(&store).params().is_empty() || !func.ty(&store).results().is_empty() {
                return Err(Error::invalid_program(format!("`{entry}` must take and return nothing")));
            }
            Vec::new()
        } else {
            entry_params(func.ty(&store).params(), program, entry)?
        };
        engine::take_grow_refused();
        let guest = tracing::debug_span!("guest").entered();
        // The module's start function first (see `guard::START_EXPORT`), under the same limits.
        let result = match instance.exports.get_function(START_EXPORT) {
            Ok(start) => start.call(&mut store, &[]),
            Err(_) => Ok(Box::default()),
        };
        let result = result.and_then(|_| func.call(&mut store, &params));
        let grow_refused = engine::take_grow_refused();
        drop(guest);

        run.finish();
        // The initialisation returned, unstopped: what it left is the snapshot.
        if let Some((shape, captured)) = init.as_mut() {
            if result.is_ok() && control.reason().is_none() {
                **captured = Some(wizer_state(&instance, &mut store, shape)?);
            }
        }
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
        let fuel = self.lowered.fuel.map(|budget| {
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
}

/// The memories and globals an initialisation left (exported under `wizer`'s names).
fn wizer_state(instance: &Instance, store: &mut Store, shape: &wizer::Shape) -> Result<wizer::Captured> {
    let missing = |what: String| Error::Engine { reason: format!("the instrumented module lacks `{what}`") };
    let mut captured = wizer::Captured::default();
    for i in 0..shape.memories {
        let name = format!("{}{i}", wizer::MEMORY_PREFIX);
        let memory = instance.exports.get_memory(&name).map_err(|_| missing(name))?;
        let bytes = memory.view(store).copy_to_vec().map_err(|e| Error::Engine { reason: e.to_string() })?;
        captured.memories.push(bytes);
    }
    for i in 0..shape.globals.len() {
        let name = format!("{}{i}", wizer::GLOBAL_PREFIX);
        let global = instance.exports.get_global(&name).map_err(|_| missing(name))?;
        captured.globals.push(match global.get(store) {
            Value::I32(v) => Some(wizer::GlobalValue::I32(v)),
            Value::I64(v) => Some(wizer::GlobalValue::I64(v)),
            Value::F32(v) => Some(wizer::GlobalValue::F32(v.to_bits())),
            Value::F64(v) => Some(wizer::GlobalValue::F64(v.to_bits())),
            Value::V128(v) => Some(wizer::GlobalValue::V128(v)),
            _ => None,
        });
    }
    Ok(captured)
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

    fn run_with(&self, program: &Program, mut options: RunOptions) -> Result<Outcome> {
        let _span = tracing::info_span!("sandcell.run", backend = "wasm").entered();
        let started = Instant::now();
        let program = &*options.program(program);
        let _stacks = crate::wasi::WasmerCalls::begin();
        check_program(program)?;
        let (compiled, source) = tracing::debug_span!("compile").in_scope(|| self.compile(program))?;
        self.run_compiled(&compiled, source, program, options, started, None)
    }

    /// Checks the program and compiles it (or finds it compiled) once.
    fn prepare(&self, program: &Program) -> Result<crate::Prepared<'_>> {
        check_program(program)?;
        let (compiled, _) = tracing::debug_span!("compile").in_scope(|| self.compile(program))?;
        Ok(crate::Prepared::new(self, program, Box::new(compiled)))
    }

    /// `until_ready` alone: a snapshot after `wizer.initialize` (see `wizer.rs`). The wasm
    /// backend keeps no instances between runs and takes no snapshot files.
    fn prepare_with(&self, program: &Program, options: &crate::PrepareOptions) -> Result<crate::Prepared<'_>> {
        if options.is_plain() {
            return self.prepare(program);
        }
        if options != &crate::PrepareOptions::new().until_ready(true) {
            return Err(Error::Unsupported {
                backend: BackendKind::Wasm,
                what: "pools of ready instances and snapshot files".into(),
                reason: concat!(
                    "it keeps no instances between runs (instantiating a compiled module is what a run does); ",
                    "prepare without options, or with `until_ready` alone for a module that exports `wizer.initialize`"
                )
                .into(),
            });
        }
        let _span = tracing::info_span!("sandcell.prepare", backend = "wasm").entered();
        check_program(program)?;
        let bytes = program.load()?;
        let (wasm, _) = crate::wasm_module::check(&bytes, &self.lowered.compile)?;
        crate::wasm_module::validate(&wasm)?;
        let shape = wizer::shape(&wasm).map_err(Error::invalid_program)?;
        let instrumented = wizer::instrument(&wasm, &shape).map_err(Error::invalid_program)?;
        let (compiled, source) = self.lowered.base.module(&instrumented, self.disk.as_ref(), &self.lowered.compile)?;
        // Under the sandbox's policy, with the program's arguments and environment and no stdin;
        // what it prints is dropped.
        let init_program = program.clone().stdin(Vec::new());
        let _stacks = crate::wasi::WasmerCalls::begin();
        let mut captured = None;
        let outcome = tracing::debug_span!("initialize").in_scope(|| {
            self.run_compiled(
                &compiled,
                source,
                &init_program,
                RunOptions::new(),
                Instant::now(),
                Some((&shape, &mut captured)),
            )
        })?;
        let Some(captured) = captured else {
            let stderr = String::from_utf8_lossy(&outcome.stderr);
            let stderr: String = stderr.trim().chars().take(1000).collect();
            return Err(Error::invalid_program(format!(
                "`{}` did not return: {:?}{}",
                wizer::INIT_EXPORT,
                outcome.status,
                if stderr.is_empty() { String::new() } else { format!(" (stderr: {stderr})") }
            )));
        };
        // The snapshot holds what the initialiser left in memory: it is held to the module-size
        // budget while it is written, and compiled without the module caches (another
        // initialisation makes another module, which no other run would find there).
        let snapshot = wizer::snapshot(&wasm, &shape, &captured, self.lowered.compile.max_module_size)
            .map_err(Error::invalid_program)?;
        drop(captured);
        crate::wasm_module::validate(&snapshot)?;
        let compiled = tracing::debug_span!("compile")
            .in_scope(|| self.lowered.base.compile_uncached(&snapshot, &self.lowered.compile))?;
        Ok(crate::Prepared::new(self, program, Box::new(compiled)))
    }

    fn run_prepared(
        &self,
        prepared: &crate::Prepared<'_>,
        mut options: RunOptions,
        _: crate::sandbox::token::PrivateToken,
    ) -> Result<Outcome> {
        let _span = tracing::info_span!("sandcell.run", backend = "wasm").entered();
        let started = Instant::now();
        let Some(compiled) = prepared.state::<CompiledModule>(self)? else {
            return self.run_with(prepared.program(), options);
        };
        let program = &*options.program(prepared.program());
        let _stacks = crate::wasi::WasmerCalls::begin();
        self.run_compiled(compiled, ArtifactSource::Prepared, program, options, started, None)
    }

    fn interrupt_handle(&self) -> InterruptHandle {
        self.interrupt.clone()
    }
}

/// What the wasm backend refuses in a program before compiling it.
fn check_program(program: &Program) -> Result<()> {
    program.validate()?;
    if let Some(cwd) = program.working_dir() {
        return Err(Error::invalid_program(format!(
            "the wasm backend cannot start a program in `{}`: WASI preview 1 has no working directory (a guest's \
             libc resolves relative paths against its preopened mounts); use absolute paths",
            cwd.display()
        )));
    }
    Ok(())
}

#[allow(dead_code)]
fn _module_is_send_sync(m: Module) -> impl Send + Sync {
    m
}
