//! Serving a wasm guest's WASI calls with the wasm backend's own WASI (wasmer-wasix), so a
//! micro-VM guest gets exactly the same files, environment, limits and confinement.
//!
//! wasix functions take pointers into a wasm instance's memory. The host instantiates a small
//! *proxy* module that imports every WASI preview 1 function (but `proc_exit`, which the guest
//! runtime handles itself) and re-exports each; its memory is a *window*: a linear memory object
//! whose base and length the host points at the guest's own linear memory (inside guest RAM)
//! before each call. wasix's accesses are bounds-checked against the window, so a call can read
//! and write nothing but the guest module's memory. The vCPU is stopped while a call is served.

use std::cell::Cell;
use std::ptr::NonNull;
use std::sync::OnceLock;

use wasmer::sys::vm::{
    LinearMemory, MemoryError, MemoryStyle, TableStyle, Trap, VMConfig, VMMemory, VMMemoryDefinition, VMTable,
    VMTableDefinition,
};
use wasmer::sys::{BaseTunables, NativeEngineExt, Tunables};
use wasmer::{Engine, Function, Instance, MemoryType, Module, Pages, Store, TableType, Value};

use crate::cache::ArtifactCache;
use crate::wasi::stdio::Sink;
use crate::wasi::WasiHost;
use crate::{Error, Result};

use crate::wasi::SIGNATURES;

/// Whether WASI function `index` is `proc_raise`, which the host answers itself (see
/// `crate::wasi::signals`) rather than through wasix.
pub(crate) fn is_proc_raise(index: u16) -> bool {
    SIGNATURES.get(usize::from(index)).is_some_and(|(name, _)| *name == "proc_raise")
}

fn wat_types(sig: &str) -> String {
    sig.chars().map(|c| if c == 'I' { " i64" } else { " i32" }).collect()
}

/// The proxy module's text (everything but `proc_exit`).
fn proxy_wat() -> String {
    let mut imports = String::new();
    let mut funcs = String::new();
    for (i, (name, sig)) in SIGNATURES.iter().enumerate() {
        if *name == "proc_exit" {
            continue;
        }
        let params = wat_types(sig);
        let params = if params.is_empty() { String::new() } else { format!("(param{params})") };
        imports
            .push_str(&format!("(import \"wasi_snapshot_preview1\" \"{name}\" (func $f{i} {params} (result i32)))\n"));
        let gets: String = (0..sig.len()).map(|k| format!(" local.get {k}")).collect();
        funcs.push_str(&format!("(func (export \"{name}\") {params} (result i32){gets} call $f{i})\n"));
    }
    format!("(module\n{imports}(memory (export \"memory\") 0)\n{funcs})")
}

thread_local! {
    /// Set by the proxy tunables when the proxy instance's memory is created, so that the
    /// instantiating thread learns where its definition lives.
    static WINDOW: Cell<Option<NonNull<VMMemoryDefinition>>> = const { Cell::new(None) };
}

/// The window memory: its definition (inside the proxy instance's context) is rewritten before
/// each call; it never grows.
#[derive(Debug)]
struct Window {
    definition: NonNull<VMMemoryDefinition>,
}

// SAFETY: the window is only used on the run's supervisor thread (wasmer stores are not Send);
// the marker traits are required by the `LinearMemory` trait object bound.
unsafe impl Send for Window {}
// SAFETY: as above.
unsafe impl Sync for Window {}

impl LinearMemory for Window {
    fn ty(&self) -> MemoryType {
        MemoryType::new(0, Some(65536), false)
    }
    fn size(&self) -> Pages {
        // SAFETY: the definition lives in the proxy instance, which outlives this memory object.
        Pages((unsafe { self.definition.as_ref() }.current_length / wasmer::WASM_PAGE_SIZE) as u32)
    }
    fn style(&self) -> MemoryStyle {
        MemoryStyle::Static
    }
    fn grow(&mut self, _: Pages) -> std::result::Result<Pages, MemoryError> {
        Err(MemoryError::Generic("the WASI window does not grow".into()))
    }
    fn vmmemory(&self) -> NonNull<VMMemoryDefinition> {
        self.definition
    }
    fn try_clone(&self) -> std::result::Result<Box<dyn LinearMemory + Send + Sync + 'static>, MemoryError> {
        Err(MemoryError::Generic("the WASI window cannot be cloned".into()))
    }
    unsafe fn initialize_with_data(&self, _: usize, _: &[u8]) -> std::result::Result<(), Trap> {
        Ok(())
    }
    fn copy(&self) -> std::result::Result<Box<dyn LinearMemory + Send + Sync + 'static>, MemoryError> {
        Err(MemoryError::Generic("the WASI window cannot be copied".into()))
    }
}

/// Tunables of the proxy engine: its one memory is the window.
struct ProxyTunables {
    base: BaseTunables,
}

impl Tunables for ProxyTunables {
    fn memory_style(&self, memory: &MemoryType) -> MemoryStyle {
        self.base.memory_style(memory)
    }
    fn table_style(&self, table: &TableType) -> TableStyle {
        self.base.table_style(table)
    }
    fn create_host_memory(&self, _: &MemoryType, _: &MemoryStyle) -> std::result::Result<VMMemory, MemoryError> {
        Err(MemoryError::Generic("the WASI proxy has no host memories".into()))
    }
    unsafe fn create_vm_memory(
        &self,
        _: &MemoryType,
        _: &MemoryStyle,
        vm_definition_location: NonNull<VMMemoryDefinition>,
    ) -> std::result::Result<VMMemory, MemoryError> {
        // SAFETY: wasmer passes the instance's own definition slot, valid for the instance's
        // lifetime; it starts empty.
        unsafe {
            vm_definition_location
                .as_ptr()
                .write(VMMemoryDefinition { base: NonNull::dangling().as_ptr(), current_length: 0 });
        }
        WINDOW.with(|w| w.set(Some(vm_definition_location)));
        Ok(VMMemory(Box::new(Window { definition: vm_definition_location })))
    }
    fn create_host_table(&self, ty: &TableType, style: &TableStyle) -> std::result::Result<VMTable, String> {
        self.base.create_host_table(ty, style)
    }
    unsafe fn create_vm_table(
        &self,
        ty: &TableType,
        style: &TableStyle,
        loc: NonNull<VMTableDefinition>,
    ) -> std::result::Result<VMTable, String> {
        // SAFETY: forwarded unchanged.
        unsafe { self.base.create_vm_table(ty, style, loc) }
    }
    fn vmconfig(&self) -> &VMConfig {
        self.base.vmconfig()
    }
}

/// The engine whose tunables create windows: one per process (the proxy's code is the same for
/// every sandbox). Cranelift without sandcell's guard middleware: the proxy only forwards calls.
pub(crate) fn proxy_engine() -> Engine {
    static ENGINE: OnceLock<Engine> = OnceLock::new();
    ENGINE
        .get_or_init(|| {
            let mut engine: Engine = wasmer::sys::EngineBuilder::new(wasmer::sys::Cranelift::default()).into();
            engine.set_tunables(ProxyTunables { base: BaseTunables::default() });
            engine
        })
        .clone()
}

/// The proxy module, compiled once per process — or loaded from the artifact cache, where the
/// sandbox has one (compiling it costs a new process about 20 ms).
fn proxy(cache: Option<&ArtifactCache>) -> Result<&'static Module> {
    static PROXY: OnceLock<std::result::Result<Module, String>> = OnceLock::new();
    if let Some(m) = PROXY.get() {
        return m.as_ref().map_err(|reason| Error::Engine { reason: reason.clone() });
    }
    let engine = proxy_engine();
    let wat = proxy_wat();
    let name = {
        use sha2::Digest;
        let id = format!("wasi-proxy/{}/{}/{wat}", wasmer_types::VERSION, engine.deterministic_id());
        format!("proxy-{}", crate::cache::hex(&sha2::Sha256::digest(id.as_bytes())))
    };
    // SAFETY: `ArtifactCache::load` returns only bytes this code stored there (authenticated
    // with the cache's key, see `crate::cache`), serialized from a module of this engine.
    let cached =
        cache.and_then(|c| c.load(&name)).and_then(|bytes| unsafe { Module::deserialize(&engine, bytes) }.ok());
    let module = match cached {
        Some(m) => Ok(m),
        None => {
            let compiled = Module::new(&engine, wat).map_err(|e| format!("cannot compile the WASI proxy: {e}"));
            if let (Ok(m), Some(c)) = (&compiled, cache) {
                if let Ok(bytes) = m.serialize() {
                    let _ = c.store(&name, &bytes);
                }
            }
            compiled
        }
    };
    PROXY.get_or_init(|| module).as_ref().map_err(|reason| Error::Engine { reason: reason.clone() })
}

/// A run's WASI service.
pub(crate) struct WasiService {
    pub(crate) store: Store,
    instance: Instance,
    pub(crate) env: wasmer_wasix::WasiFunctionEnv,
    window: NonNull<VMMemoryDefinition>,
    functions: Vec<Option<Function>>,
}

impl WasiService {
    /// Builds the run's WASI environment under the sandbox's policy (`host`), and the proxy.
    pub(crate) fn new(
        host: &WasiHost,
        cache: Option<&ArtifactCache>,
        program: &crate::Program,
        sink: &std::sync::Arc<Sink>,
    ) -> Result<Self> {
        let module = proxy(cache)?;
        let _tokio = crate::wasi::tokio_runtime().enter();
        let mut store = Store::new(proxy_engine());
        let env = host.env(program, sink, &mut store)?;
        let imports = host.imports(&mut store, &env, |name| name != "proc_exit");
        WINDOW.with(|w| w.set(None));
        let instance = Instance::new(&mut store, module, &imports)
            .map_err(|e| Error::Engine { reason: format!("cannot instantiate the WASI proxy: {e}") })?;
        let window =
            WINDOW.with(|w| w.take()).ok_or_else(|| Error::Engine { reason: "the WASI proxy has no window".into() })?;
        let mut env = env;
        env.initialize(&mut store, instance.clone())
            .map_err(|e| Error::Engine { reason: format!("cannot initialise WASI: {e}") })?;
        let functions = SIGNATURES.iter().map(|(name, _)| instance.exports.get_function(name).ok().cloned()).collect();
        Ok(WasiService { store, instance, env, window, functions })
    }

    /// Calls WASI function `index` with `args`, the module's memory being `memory` (a host
    /// pointer into guest RAM and a length, already validated). Returns the errno, or a trap.
    pub(crate) fn call(
        &mut self,
        index: usize,
        memory: (*mut u8, usize),
        args: &[u64],
    ) -> std::result::Result<i32, String> {
        let (_, sig) = SIGNATURES.get(index).ok_or("unknown WASI function")?;
        if sig.len() != args.len() {
            return Err(format!(
                "WASI function {} takes {} arguments, {} given",
                SIGNATURES[index].0,
                sig.len(),
                args.len()
            ));
        }
        let f = self.functions.get(index).cloned().flatten().ok_or("WASI function not served")?;
        // SAFETY: the definition slot belongs to the live proxy instance; the range was checked
        // to lie inside guest RAM, which outlives the call, and the guest's vCPU is stopped.
        unsafe { self.window.as_ptr().write(VMMemoryDefinition { base: memory.0, current_length: memory.1 }) };
        let values: Vec<Value> = sig
            .chars()
            .zip(args)
            .map(|(t, a)| if t == 'I' { Value::I64(*a as i64) } else { Value::I32(*a as u32 as i32) })
            .collect();
        let _tokio = crate::wasi::tokio_runtime().enter();
        let result = f.call(&mut self.store, &values);
        // The window closes again: nothing may reach guest memory between calls.
        // SAFETY: as above.
        unsafe {
            self.window.as_ptr().write(VMMemoryDefinition { base: NonNull::dangling().as_ptr(), current_length: 0 })
        };
        match result {
            Ok(v) => Ok(v.first().and_then(Value::i32).unwrap_or(0)),
            Err(e) => Err(e.message()),
        }
    }

    /// Stops a call blocked in WASI (e.g. sleeping): the same kill the wasm backend uses.
    pub(crate) fn process(&self) -> wasmer_wasix::WasiProcess {
        self.env.data(&self.store).process.clone()
    }

    /// Releases WASI resources.
    pub(crate) fn finish(mut self, code: i32) {
        self.env.on_exit(&mut self.store, Some(wasmer_wasix::types::wasi::ExitCode::from(code.clamp(0, 255) as u16)));
        drop(self.instance);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_follow_the_abi_table() {
        assert_eq!(SIGNATURES.len(), sandcell_abi::WASI_FUNCTIONS.len());
        for ((name, _), abi) in SIGNATURES.iter().zip(sandcell_abi::WASI_FUNCTIONS) {
            assert_eq!(name, abi);
        }
    }

    #[test]
    fn the_proxy_compiles() {
        proxy(None).unwrap();
    }
}
