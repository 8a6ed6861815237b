//! Engines, memory caps and the compiled-module cache.
//!
//! Two base engines exist per process, created on first use: one whose code carries only the
//! stop checks, one that also meters fuel (see [`guard`](super::guard)). Compiled modules are
//! cached per base engine, in memory by the SHA-256 of the module's binary, and optionally on
//! disk. Each sandbox uses a *clone* of a base engine with its own [`CappedTunables`]: clones
//! share compiled code, and the tunables only change how memories and tables are created at
//! instantiation, not the code, so one compiled module serves every memory cap.

use std::cell::Cell;
use std::collections::HashMap;
use std::ptr::NonNull;
use std::sync::OnceLock;
use std::time::Duration;

use parking_lot::Mutex;
use sha2::{Digest, Sha256};
use wasmer::sys::vm::{
    ExpectedValue, LinearMemory, MemoryError, MemoryStyle, TableStyle, ThreadConditions, Trap, VMConfig, VMMemory,
    VMMemoryDefinition, VMSharedMemory, VMTable, VMTableDefinition, WaiterError,
};
use wasmer::sys::{
    BaseTunables, CompilerConfig, Cranelift, CraneliftOptLevel, EngineBuilder, NativeEngineExt, Tunables,
};
use wasmer::{Engine, MemoryType, Module, Pages, TableType};

use super::guard::{Guard, GUARD_VERSION};
use crate::cache::{hex, ArtifactCache};
use crate::{ArtifactSource, CompileLimit, CompileLimits, Error, Result};

/// Tables may not grow past this many elements (16 MiB of host memory for funcref tables).
pub(crate) const MAX_TABLE_ELEMENTS: u32 = 1 << 20;
/// Compiled modules kept in memory per engine; the least recently used is dropped beyond it.
const MEMORY_CACHE_ENTRIES: usize = 256;

thread_local! {
    /// Set when the tunables refuse a memory whose *minimum* exceeds the cap, so that the
    /// instantiating thread can report `MemoryLimit` instead of a generic link error.
    static MEMORY_REFUSED: Cell<bool> = const { Cell::new(false) };
}

/// Returns and clears the flag set when this thread's last instantiation was refused memory.
pub(crate) fn take_memory_refused() -> bool {
    MEMORY_REFUSED.with(|f| f.replace(false))
}

thread_local! {
    /// Set when a `memory.grow` on this thread failed (the cap was reached). wasm code and its
    /// `memory.grow` run on the thread that called into the instance, so a run can tell whether
    /// its guest hit the memory cap.
    static GROW_REFUSED: Cell<bool> = const { Cell::new(false) };
}

/// Returns and clears the flag set when a `memory.grow` on this thread failed.
pub(crate) fn take_grow_refused() -> bool {
    GROW_REFUSED.with(|f| f.replace(false))
}

/// A linear memory that records refused growth in [`GROW_REFUSED`]; everything else is
/// delegated unchanged.
#[derive(Debug)]
struct GrowWatch(VMMemory);

impl LinearMemory for GrowWatch {
    fn ty(&self) -> MemoryType {
        self.0.ty()
    }
    fn size(&self) -> Pages {
        self.0.size()
    }
    fn style(&self) -> MemoryStyle {
        self.0.style()
    }
    fn grow(&mut self, delta: Pages) -> Result<Pages, MemoryError> {
        let r = self.0.grow(delta);
        if r.is_err() {
            GROW_REFUSED.with(|f| f.set(true));
        }
        r
    }
    fn grow_at_least(&mut self, min_size: u64) -> Result<(), MemoryError> {
        let r = self.0.grow_at_least(min_size);
        if r.is_err() {
            GROW_REFUSED.with(|f| f.set(true));
        }
        r
    }
    fn reset(&mut self) -> Result<(), MemoryError> {
        self.0.reset()
    }
    fn vmmemory(&self) -> NonNull<VMMemoryDefinition> {
        self.0.vmmemory()
    }
    fn try_clone(&self) -> Result<Box<dyn LinearMemory + Send + Sync + 'static>, MemoryError> {
        LinearMemory::try_clone(&self.0)
    }
    unsafe fn initialize_with_data(&self, start: usize, data: &[u8]) -> Result<(), Trap> {
        // SAFETY: forwarded unchanged under the caller's guarantees.
        unsafe { self.0.initialize_with_data(start, data) }
    }
    fn copy(&self) -> Result<Box<dyn LinearMemory + Send + Sync + 'static>, MemoryError> {
        LinearMemory::copy(&self.0)
    }
    fn as_shared(&self) -> Result<VMSharedMemory, MemoryError> {
        self.0.as_shared()
    }
    unsafe fn do_wait(
        &mut self,
        dst: u32,
        expected: ExpectedValue,
        timeout: Option<Duration>,
    ) -> Result<u32, WaiterError> {
        // SAFETY: forwarded unchanged under the caller's guarantees.
        unsafe { self.0.do_wait(dst, expected, timeout) }
    }
    fn do_notify(&mut self, dst: u32, count: u32) -> u32 {
        self.0.do_notify(dst, count)
    }
    fn thread_conditions(&self) -> Option<&ThreadConditions> {
        self.0.thread_conditions()
    }
}

thread_local! {
    /// The wait/notify state of each linear memory created on this thread since the last
    /// [`take_new_memories`]: a run collects its instance's after instantiation, so that a stop
    /// can wake a guest blocked in `memory.atomic.wait` (which no check in wasm code reaches).
    static NEW_MEMORIES: std::cell::RefCell<Vec<ThreadConditions>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// The wait/notify state of the memories created on this thread since the last call.
pub(crate) fn take_new_memories() -> Vec<ThreadConditions> {
    NEW_MEMORIES.with(|m| std::mem::take(&mut *m.borrow_mut()))
}

fn watched(memory: VMMemory) -> VMMemory {
    if let Some(conditions) = memory.thread_conditions() {
        NEW_MEMORIES.with(|m| m.borrow_mut().push(conditions.clone()));
    }
    VMMemory(Box::new(GrowWatch(memory)))
}

/// Tunables that cap linear memories and tables. The memory *style* is left to
/// [`BaseTunables`] (static, 4 GiB reservation + guard), so compiled code does not depend on the
/// cap.
#[derive(Clone)]
pub(crate) struct CappedTunables {
    base: BaseTunables,
    max_pages: Option<Pages>,
}

impl CappedTunables {
    fn memory_type(&self, ty: &MemoryType) -> Result<MemoryType, MemoryError> {
        let Some(cap) = self.max_pages else {
            return Ok(*ty);
        };
        if ty.minimum > cap {
            MEMORY_REFUSED.with(|f| f.set(true));
            return Err(MemoryError::MinimumMemoryTooLarge { min_requested: ty.minimum, max_allowed: cap });
        }
        let maximum = Some(ty.maximum.map_or(cap, |m| m.min(cap)));
        Ok(MemoryType { maximum, ..*ty })
    }

    fn table_type(ty: &TableType) -> Result<TableType, String> {
        if ty.minimum > MAX_TABLE_ELEMENTS {
            MEMORY_REFUSED.with(|f| f.set(true));
            return Err(format!("table of {} elements exceeds sandcell's limit of {MAX_TABLE_ELEMENTS}", ty.minimum));
        }
        let maximum = Some(ty.maximum.map_or(MAX_TABLE_ELEMENTS, |m| m.min(MAX_TABLE_ELEMENTS)));
        Ok(TableType { maximum, ..*ty })
    }
}

impl Tunables for CappedTunables {
    fn memory_style(&self, memory: &MemoryType) -> MemoryStyle {
        self.base.memory_style(memory)
    }

    fn table_style(&self, table: &TableType) -> TableStyle {
        self.base.table_style(table)
    }

    fn create_host_memory(&self, ty: &MemoryType, style: &MemoryStyle) -> Result<VMMemory, MemoryError> {
        self.base.create_host_memory(&self.memory_type(ty)?, style).map(watched)
    }

    unsafe fn create_vm_memory(
        &self,
        ty: &MemoryType,
        style: &MemoryStyle,
        vm_definition_location: NonNull<VMMemoryDefinition>,
    ) -> Result<VMMemory, MemoryError> {
        let ty = self.memory_type(ty)?;
        // SAFETY: forwarded unchanged; the caller guarantees `vm_definition_location` is valid.
        unsafe { self.base.create_vm_memory(&ty, style, vm_definition_location) }.map(watched)
    }

    fn create_host_table(&self, ty: &TableType, style: &TableStyle) -> Result<VMTable, String> {
        self.base.create_host_table(&Self::table_type(ty)?, style)
    }

    unsafe fn create_vm_table(
        &self,
        ty: &TableType,
        style: &TableStyle,
        vm_definition_location: NonNull<VMTableDefinition>,
    ) -> Result<VMTable, String> {
        let ty = Self::table_type(ty)?;
        // SAFETY: forwarded unchanged; the caller guarantees `vm_definition_location` is valid.
        unsafe { self.base.create_vm_table(&ty, style, vm_definition_location) }
    }

    fn vmconfig(&self) -> &VMConfig {
        self.base.vmconfig()
    }
}

/// A base engine and its in-memory module cache.
pub(crate) struct BaseEngine {
    engine: Engine,
    metered: bool,
    modules: Mutex<Lru>,
    /// The engine's middleware, which also enforces a compilation's time budget.
    guard: std::sync::Arc<Guard>,
    /// Held for a whole compilation (wasmer serializes them per engine anyway), so that the
    /// middleware's deadline is that of the compilation in progress.
    compiling: Mutex<()>,
}

#[derive(Default)]
struct Lru {
    clock: u64,
    entries: HashMap<[u8; 32], (u64, CompiledModule)>,
}

/// A compiled module and what sandcell learned about it at compile time.
#[derive(Clone)]
pub(crate) struct CompiledModule {
    pub(crate) module: Module,
    /// Whether the module imports anything (all imports are WASI preview 1, checked).
    pub(crate) uses_wasi: bool,
    /// The WASI functions it imports.
    imported: std::sync::Arc<std::collections::BTreeSet<String>>,
}

impl CompiledModule {
    /// Whether the module imports this WASI preview 1 function.
    pub(crate) fn imports(&self, name: &str) -> bool {
        self.imported.contains(name)
    }
}

static PLAIN: OnceLock<BaseEngine> = OnceLock::new();
static METERED: OnceLock<BaseEngine> = OnceLock::new();

/// The base engine of the given flavour, created on first use.
pub(crate) fn base(metered: bool) -> &'static BaseEngine {
    let cell = if metered { &METERED } else { &PLAIN };
    cell.get_or_init(|| {
        let mut compiler = Cranelift::default();
        compiler.opt_level(CraneliftOptLevel::Speed);
        let guard = Guard::new(metered);
        compiler.push_middleware(guard.clone());
        let engine: Engine = EngineBuilder::new(compiler).into();
        BaseEngine { engine, metered, modules: Mutex::new(Lru::default()), guard, compiling: Mutex::new(()) }
    })
}

impl BaseEngine {
    /// A clone of this engine whose instances get at most `memory_bytes` of linear memory.
    pub(crate) fn capped(&self, memory_bytes: Option<u64>) -> Engine {
        let max_pages = memory_bytes
            .map(|b| Pages(u32::try_from(b / wasmer::WASM_PAGE_SIZE as u64).unwrap_or(u32::MAX).min(65536)));
        let mut engine = self.engine.clone();
        engine.set_tunables(CappedTunables { base: BaseTunables::default(), max_pages });
        engine
    }

    /// What identifies this engine's compiled code, for cache keys.
    fn fingerprint(&self) -> String {
        format!(
            "wasmer {} / {} / guard v{GUARD_VERSION} / metered {}",
            wasmer_types::VERSION,
            self.engine.deterministic_id(),
            self.metered
        )
    }

    /// Returns the compiled module for a program's bytes (a wasm binary or WAT text), from
    /// memory, disk, or by compiling it. The caches are keyed by the bytes as given, so a cached
    /// WAT program is not parsed again.
    pub(crate) fn module(
        &self,
        program: &[u8],
        disk: Option<&ArtifactCache>,
        limits: &CompileLimits,
    ) -> Result<(CompiledModule, ArtifactSource)> {
        let hash: [u8; 32] = Sha256::digest(program).into();
        {
            let mut lru = self.modules.lock();
            lru.clock += 1;
            let now = lru.clock;
            if let Some((used, m)) = lru.entries.get_mut(&hash) {
                *used = now;
                return Ok((m.clone(), ArtifactSource::Memory));
            }
        }
        let key = disk.map(|_| hex(&Sha256::digest([&hash[..], self.fingerprint().as_bytes()].concat())));
        let mut source = ArtifactSource::Compiled;
        let mut module = None;
        if let (Some(disk), Some(key)) = (disk, &key) {
            if let Some(bytes) = disk.load(key) {
                // SAFETY: `ArtifactCache::load` returns only bytes that this code wrote: they are
                // authenticated with a key only the cache's owner can read (see `crate::cache`).
                if let Ok(m) = unsafe { Module::deserialize(&self.engine, bytes) } {
                    module = Some(m);
                    source = ArtifactSource::Disk;
                }
            }
        }
        let module = match module {
            Some(m) => m,
            None => {
                let m = self.compile(program, limits)?;
                if let (Some(disk), Some(key)) = (disk, &key) {
                    let bytes = m
                        .serialize()
                        .map_err(|e| Error::Engine { reason: format!("cannot serialize a compiled module: {e}") })?;
                    disk.store(key, &bytes)?;
                }
                m
            }
        };
        let imported: std::collections::BTreeSet<String> = module.imports().map(|i| i.name().to_owned()).collect();
        let compiled = CompiledModule { module, uses_wasi: !imported.is_empty(), imported: imported.into() };
        let mut lru = self.modules.lock();
        if lru.entries.len() >= MEMORY_CACHE_ENTRIES {
            if let Some(oldest) = lru.entries.iter().min_by_key(|(_, (used, _))| *used).map(|(k, _)| *k) {
                lru.entries.remove(&oldest);
            }
        }
        let now = lru.clock;
        lru.entries.insert(hash, (now, compiled.clone()));
        Ok((compiled, source))
    }
}

impl BaseEngine {
    /// Compiles `program` within its budgets and keeps it in no cache (a module made for one
    /// prepared program: a snapshot after initialisation).
    pub(crate) fn compile_uncached(&self, program: &[u8], limits: &CompileLimits) -> Result<CompiledModule> {
        let module = self.compile(program, limits)?;
        let imported: std::collections::BTreeSet<String> = module.imports().map(|i| i.name().to_owned()).collect();
        Ok(CompiledModule { module, uses_wasi: !imported.is_empty(), imported: imported.into() })
    }

    /// Compiles `wasm` on `engine` (a clone of this one) with no budget: for sandcell's own tests.
    pub(crate) fn compile_unbudgeted(&self, engine: &Engine, wasm: &[u8]) -> std::result::Result<Module, String> {
        let _one_at_a_time = self.compiling.lock();
        self.guard.end();
        Module::from_binary(engine, wasm).map_err(|e| e.to_string())
    }

    /// Compiles an untrusted module within its budgets (see `crate::wasm_module`): the static
    /// ones are checked first, the time budget by the middleware while Cranelift compiles.
    fn compile(&self, program: &[u8], limits: &CompileLimits) -> Result<Module> {
        let (wasm, _) = crate::wasm_module::check(program, limits)?;
        let _one_at_a_time = self.compiling.lock();
        self.guard.begin(std::time::Instant::now() + limits.time);
        let compiled = Module::from_binary(&self.engine, &wasm)
            .map_err(|e| Error::invalid_program(format!("not a valid WebAssembly module: {e}")));
        if self.guard.end() {
            return Err(Error::CompileBudget {
                limit: CompileLimit::Time,
                reason: format!("the compilation was stopped after {:?}", limits.time),
            });
        }
        compiled
    }
}
