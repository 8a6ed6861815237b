//! The micro-VM's WebAssembly runtime: a freestanding program that runs the WASI preview 1 module
//! the host placed in guest memory, with wasmi.
//!
//! Every WASI call of the module becomes one hypercall: the function's index, the module's linear
//! memory (where its pointer arguments point) and its arguments. The host serves the call with
//! the same WASI implementation and the same policy as the wasm backend, reading and writing the
//! linear memory in place. `proc_exit` and traps end the VM with the exact exit code or trap
//! kind; fuel, when the policy asks for it, is wasmi's own metering.
#![no_std]
#![no_main]

extern crate alloc;

use alloc::string::ToString;
use alloc::vec::Vec;

use sandcell_guest::abi::{op, trap, WASI_FUNCTIONS};
use sandcell_guest::{exit, hypercall};
use wasmi::ResourceLimiter;
use wasmi::{Caller, Config, Engine, Error, Extern, Linker, Module, Store, TrapCode, Val};
use wasmi_core::LimiterError;

sandcell_guest::entry!(main);

const WASI: &str = "wasi_snapshot_preview1";

/// Limits linear memory to what the VM's heap can hold, and remembers a refused growth: a trap
/// after it is reported as running out of memory, as the wasm backend does.
struct Limits {
    max_memory: usize,
    refused: bool,
}

impl ResourceLimiter for Limits {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> Result<bool, LimiterError> {
        let ok = desired <= self.max_memory && maximum.is_none_or(|m| desired <= m);
        self.refused |= !ok;
        Ok(ok)
    }
    fn table_growing(&mut self, _current: usize, desired: usize, maximum: Option<usize>) -> Result<bool, LimiterError> {
        let ok = desired <= 1 << 20 && maximum.is_none_or(|m| desired <= m);
        self.refused |= !ok;
        Ok(ok)
    }
    fn memory_grow_failed(&mut self, _error: &wasmi::errors::MemoryError) -> Result<(), LimiterError> {
        self.refused = true;
        Ok(())
    }
    fn instances(&self) -> usize {
        1
    }
    fn tables(&self) -> usize {
        16
    }
    fn memories(&self) -> usize {
        1
    }
}

fn report_trap(kind: u64, message: &str, fuel_used: Option<u64>) -> ! {
    sandcell_guest::flush();
    // SAFETY: TRAP takes a kind, a message buffer in guest memory, and the fuel used.
    unsafe {
        hypercall(
            op::TRAP,
            &[kind, message.as_ptr() as u64, message.len().min(4096) as u64, fuel_used.unwrap_or(u64::MAX)],
        )
    };
    loop {
        core::hint::spin_loop();
    }
}

fn trap_kind(code: TrapCode) -> u64 {
    match code {
        TrapCode::UnreachableCodeReached => trap::UNREACHABLE,
        TrapCode::MemoryOutOfBounds => trap::MEMORY_OUT_OF_BOUNDS,
        TrapCode::TableOutOfBounds => trap::TABLE_OUT_OF_BOUNDS,
        TrapCode::IndirectCallToNull => trap::INDIRECT_CALL_TO_NULL,
        TrapCode::IntegerDivisionByZero => trap::DIVISION_BY_ZERO,
        TrapCode::IntegerOverflow => trap::INTEGER_OVERFLOW,
        TrapCode::BadConversionToInteger => trap::BAD_CONVERSION,
        TrapCode::StackOverflow => trap::STACK_OVERFLOW,
        TrapCode::BadSignature => trap::BAD_SIGNATURE,
        TrapCode::OutOfFuel => trap::OUT_OF_FUEL,
        TrapCode::GrowthOperationLimited => trap::OUT_OF_MEMORY,
        _ => trap::OTHER,
    }
}

fn main() -> i32 {
    let budget = sandcell_guest::fuel();
    let mut config = Config::default();
    config.consume_fuel(budget.is_some());
    let engine = Engine::new(&config);
    let module = match Module::new(&engine, sandcell_guest::program()) {
        Ok(m) => m,
        Err(e) => report_trap(trap::OTHER, &e.to_string(), None),
    };
    // The linear memory grows in place in the heap's large-block arena (see the SDK allocator),
    // up to the policy's cap (as on the wasm backend: `memory.grow` returns -1 past it).
    let room = sandcell_guest::largest_allocation().saturating_sub(1 << 20);
    let max_memory = sandcell_guest::memory_cap().map_or(room, |cap| room.min(cap as usize));
    let mut store = Store::new(&engine, Limits { max_memory, refused: false });
    store.limiter(|l| l);
    if let Some(f) = budget {
        let _ = store.set_fuel(f);
    }
    let used = |store: &Store<Limits>| budget.map(|b| b - store.get_fuel().unwrap_or(0));

    let mut linker = Linker::<Limits>::new(&engine);
    let mut linked = [false; WASI_FUNCTIONS.len()];
    for import in module.imports() {
        if import.module() != WASI {
            report_trap(trap::OTHER, "the module imports something other than WASI preview 1", None);
        }
        let name = import.name();
        let Some(index) = WASI_FUNCTIONS.iter().position(|f| *f == name) else {
            report_trap(trap::OTHER, "the module imports an unknown WASI function", None);
        };
        let Some(ty) = import.ty().func().cloned() else {
            report_trap(trap::OTHER, "a WASI import is not a function", None);
        };
        // A module may import the same function twice (AssemblyScript does); one definition
        // serves both, and a second import with another type fails at instantiation.
        if linked[index] {
            continue;
        }
        linked[index] = true;
        let result = if name == "proc_exit" {
            linker.func_new(WASI, name, ty, |_caller: Caller<'_, Limits>, args: &[Val], _: &mut [Val]| {
                Err(Error::i32_exit(args.first().and_then(Val::i32).unwrap_or(0)))
            })
        } else {
            linker.func_new(WASI, name, ty, move |caller: Caller<'_, Limits>, args: &[Val], results: &mut [Val]| {
                forward(&caller, index, args, results);
                Ok(())
            })
        };
        if result.is_err() {
            report_trap(trap::OTHER, "cannot link a WASI import", None);
        }
    }
    let instance = match linker.instantiate_and_start(&mut store, &module) {
        Ok(i) => i,
        Err(e) => {
            let kind = if store.data().refused {
                trap::OUT_OF_MEMORY
            } else {
                e.as_trap_code().map_or(trap::OTHER, trap_kind)
            };
            report_trap(kind, &e.to_string(), used(&store))
        }
    };
    let Ok(start) = instance.get_typed_func::<(), ()>(&store, "_start") else {
        report_trap(trap::OTHER, "the module has no `_start` export", None);
    };
    // Compiled and instantiated, no guest code run yet (but a start function): when the host
    // prepares a snapshot, every run of the prepared module starts here.
    if sandcell_guest::preparing() {
        sandcell_guest::ready();
    }
    match start.call(&mut store, ()) {
        Ok(()) => finish(0, used(&store)),
        Err(e) => {
            if let Some(code) = e.i32_exit_status() {
                finish(code, used(&store));
            }
            let kind = match e.as_trap_code() {
                Some(code) if store.data().refused && code != TrapCode::OutOfFuel => trap::OUT_OF_MEMORY,
                Some(code) => trap_kind(code),
                None => trap::OTHER,
            };
            report_trap(kind, &e.to_string(), used(&store))
        }
    }
}

fn finish(code: i32, fuel_used: Option<u64>) -> ! {
    sandcell_guest::flush();
    // SAFETY: EXIT takes the code and the fuel used.
    unsafe { hypercall(op::EXIT, &[code as u32 as u64, fuel_used.unwrap_or(u64::MAX)]) };
    exit(code)
}

/// One WASI call, served by the host in the module's own memory.
fn forward(caller: &Caller<'_, Limits>, index: usize, args: &[Val], results: &mut [Val]) {
    let (base, len) = match caller.get_export("memory") {
        Some(Extern::Memory(m)) => (m.data_ptr(caller) as u64, m.data_size(caller) as u64),
        _ => (0, 0),
    };
    let mut call: Vec<u64> = Vec::with_capacity(13);
    call.extend_from_slice(&[index as u64, base, len, args.len().min(9) as u64]);
    for a in args.iter().take(9) {
        call.push(match a {
            Val::I32(v) => *v as u32 as u64,
            Val::I64(v) => *v as u64,
            _ => 0,
        });
    }
    // SAFETY: WASI takes the function index, the memory span and up to nine integer arguments.
    let (errno, _) = unsafe { hypercall(op::WASI, &call) };
    if let Some(r) = results.first_mut() {
        *r = Val::I32(errno as i32);
    }
}
