//! A compiler middleware that makes wasm code stoppable and, optionally, metered.
//!
//! wasmer has no epoch interruption, so every compiled function gets two kinds of checks:
//!
//! - **Stop flag.** A mutable `i32` global (exported as [`STOP_EXPORT`]) is read at every function
//!   entry and at every loop header; a non-zero value traps with `unreachable`. The host sets it
//!   from another thread through the global's address. Function entries cover recursion without
//!   loops (naive Fibonacci); loop headers cover `(loop br 0)`.
//!
//!   Cranelift would otherwise hoist the flag's load out of a loop with no stores in it (wasmer
//!   puts globals in an alias region that is not read-only), so after each loop-header check the
//!   code stores to a second, private global: the store clobbers that region and forces a fresh
//!   load on every iteration. Calls clobber memory anyway, so recursion needs no such store.
//!
//! - **Fuel** (only in the metered engine). Each operator costs one unit; the cost of a basic block
//!   is charged before the operator that ends it (branches, calls, block ends), from a mutable
//!   `i64` global exported as [`FUEL_EXPORT`]. When the remaining fuel is smaller than the block's
//!   cost, the stop flag is set to [`FLAG_FUEL`] and the code traps.
//!
//! - **Start function.** The module's start function is taken out of instantiation and exported
//!   as [`START_EXPORT`]; the run calls it after arming its limits, so that it runs under them.
//!
//! The guest cannot name either global: they are added after the module's own globals and only
//! exported to the host. One middleware instance serves every module compiled on its engine: the
//! indexes of the added globals are recorded per module in `transform_module_info`, and wasmer
//! holds the engine's lock for the whole compilation of a module, so they cannot be mixed up.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use parking_lot::Mutex;
use wasmer::sys::{FunctionMiddleware, MiddlewareError, MiddlewareReaderState, ModuleMiddleware};
use wasmer::wasmparser::{BlockType, Operator};
use wasmer::{ExportIndex, GlobalInit, GlobalType, LocalFunctionIndex, Mutability, Type};
use wasmer_types::{GlobalIndex, ModuleInfo};

/// Export name of the stop flag global.
pub(crate) const STOP_EXPORT: &str = "__sandcell_stop";
/// Export name of the fuel global.
pub(crate) const FUEL_EXPORT: &str = "__sandcell_fuel";
/// Export name of the module's start function, which sandcell takes out of instantiation and
/// calls itself once the run's limits are armed (a start function that loops must stop at the
/// timeout like any other code; wasmer would run it inside `Instance::new`, before any limit).
pub(crate) const START_EXPORT: &str = "__sandcell_start";
/// Stop flag value written by the host to stop a run.
pub(crate) const FLAG_HOST: i32 = 1;
/// Stop flag value written by the guest's own code when fuel runs out.
pub(crate) const FLAG_FUEL: i32 = 2;
/// Bumped whenever the injected code changes; part of every cache key.
pub(crate) const GUARD_VERSION: u32 = 2;

#[derive(Clone, Copy, Debug)]
struct Globals {
    stop: u32,
    scratch: u32,
    fuel: Option<u32>,
}

/// The module-level middleware.
#[derive(Debug)]
pub(crate) struct Guard {
    metered: bool,
    current: Mutex<Option<Globals>>,
    /// When the compilation in progress must end (its `CompileLimits::time`), and whether it
    /// was stopped for that.
    deadline: Mutex<Option<Instant>>,
    timed_out: Arc<AtomicBool>,
}

impl Guard {
    pub(crate) fn new(metered: bool) -> Arc<Self> {
        Arc::new(Guard { metered, current: Mutex::new(None), deadline: Mutex::new(None), timed_out: Arc::default() })
    }

    /// Sets the deadline of the next compilation on this engine (the caller serializes them).
    pub(crate) fn begin(&self, deadline: Instant) {
        *self.deadline.lock() = Some(deadline);
        self.timed_out.store(false, Ordering::SeqCst);
    }

    /// Ends the compilation `begin` started: whether it was stopped at its deadline. After
    /// this, compilations on the engine have no deadline (and nothing left of this one's).
    pub(crate) fn end(&self) -> bool {
        *self.deadline.lock() = None;
        self.timed_out.swap(false, Ordering::SeqCst)
    }
}

/// How many operators a function's translation feeds between two looks at the clock.
const CLOCK_EVERY: u32 = 4096;

fn add_global(info: &mut ModuleInfo, ty: Type, init: GlobalInit) -> GlobalIndex {
    let index = info.globals.push(GlobalType::new(ty, Mutability::Var));
    info.global_initializers.push(init);
    index
}

impl ModuleMiddleware for Guard {
    fn transform_module_info(&self, info: &mut ModuleInfo) -> Result<(), MiddlewareError> {
        for name in [STOP_EXPORT, FUEL_EXPORT, START_EXPORT] {
            if info.exports.contains_key(name) {
                return Err(MiddlewareError::new(
                    "sandcell",
                    format!("the module exports `{name}`, a name sandcell reserves"),
                ));
            }
        }
        if let Some(start) = info.start_function.take() {
            info.exports.insert(START_EXPORT.to_owned(), ExportIndex::Function(start));
        }
        let stop = add_global(info, Type::I32, GlobalInit::I32Const(0));
        info.exports.insert(STOP_EXPORT.to_owned(), ExportIndex::Global(stop));
        let scratch = add_global(info, Type::I32, GlobalInit::I32Const(0));
        let fuel = self.metered.then(|| {
            let fuel = add_global(info, Type::I64, GlobalInit::I64Const(0));
            info.exports.insert(FUEL_EXPORT.to_owned(), ExportIndex::Global(fuel));
            fuel.as_u32()
        });
        *self.current.lock() = Some(Globals { stop: stop.as_u32(), scratch: scratch.as_u32(), fuel });
        Ok(())
    }

    fn generate_function_middleware<'a>(&self, _: LocalFunctionIndex) -> Box<dyn FunctionMiddleware<'a> + 'a> {
        let globals = self.current.lock().expect("transform_module_info runs before functions are compiled");
        let deadline = *self.deadline.lock();
        let timed_out = self.timed_out.clone();
        Box::new(FunctionGuard { globals, entered: false, cost: 0, deadline, ops: 0, timed_out, expired: false })
    }
}

#[derive(Debug)]
struct FunctionGuard {
    globals: Globals,
    entered: bool,
    cost: u64,
    deadline: Option<Instant>,
    /// Operators fed since the clock was last read.
    ops: u32,
    timed_out: Arc<AtomicBool>,
    /// The deadline passed while this function was translated: the rest of it is dead code.
    expired: bool,
}

impl FunctionGuard {
    /// Whether the compilation's deadline has passed (looked at every [`CLOCK_EVERY`]
    /// operators, and at the first of each function).
    fn expired(&mut self) -> bool {
        if self.expired || self.timed_out.load(Ordering::Relaxed) {
            return true;
        }
        let Some(deadline) = self.deadline else { return false };
        if self.ops > 0 && self.ops < CLOCK_EVERY {
            self.ops += 1;
            return false;
        }
        self.ops = 1;
        if Instant::now() < deadline {
            return false;
        }
        self.timed_out.store(true, Ordering::SeqCst);
        true
    }
}

/// Operators that shape a function's blocks; after the compilation's deadline only these are
/// kept, after an `unreachable`, so that the rest of the module compiles to almost nothing.
///
/// (Why not fail the compilation with a middleware error at once: wasmer's Cranelift translator
/// then reuses a half-built function context on that thread, and the compilation panics.)
fn shapes_blocks(op: &Operator) -> bool {
    matches!(
        op,
        Operator::Block { .. }
            | Operator::Loop { .. }
            | Operator::If { .. }
            | Operator::Else
            | Operator::End
            | Operator::Try { .. }
            | Operator::Catch { .. }
            | Operator::CatchAll
            | Operator::Delegate { .. }
            | Operator::TryTable { .. }
    )
}

impl FunctionGuard {
    /// `if (stop) unreachable`
    fn check_stop<'a>(&self, state: &mut MiddlewareReaderState<'a>) {
        state.extend([
            Operator::GlobalGet { global_index: self.globals.stop },
            Operator::If { blockty: BlockType::Empty },
            Operator::Unreachable,
            Operator::End,
        ]);
    }

    /// Charges the pending cost: `if (fuel < cost) { stop = FLAG_FUEL; unreachable } fuel -= cost`.
    fn charge<'a>(&mut self, fuel: u32, state: &mut MiddlewareReaderState<'a>) {
        let cost = self.cost as i64;
        self.cost = 0;
        state.extend([
            Operator::GlobalGet { global_index: fuel },
            Operator::I64Const { value: cost },
            Operator::I64LtU,
            Operator::If { blockty: BlockType::Empty },
            Operator::I32Const { value: FLAG_FUEL },
            Operator::GlobalSet { global_index: self.globals.stop },
            Operator::Unreachable,
            Operator::End,
            Operator::GlobalGet { global_index: fuel },
            Operator::I64Const { value: cost },
            Operator::I64Sub,
            Operator::GlobalSet { global_index: fuel },
        ]);
    }
}

/// Operators that end a basic block (branch sources) or start one (branch targets).
fn ends_block(op: &Operator) -> bool {
    matches!(
        op,
        Operator::Loop { .. }
            | Operator::Block { .. }
            | Operator::End
            | Operator::If { .. }
            | Operator::Else
            | Operator::Br { .. }
            | Operator::BrIf { .. }
            | Operator::BrTable { .. }
            | Operator::Return
            | Operator::Call { .. }
            | Operator::CallIndirect { .. }
            | Operator::CallRef { .. }
            | Operator::ReturnCall { .. }
            | Operator::ReturnCallIndirect { .. }
            | Operator::ReturnCallRef { .. }
            | Operator::Throw { .. }
            | Operator::ThrowRef
            | Operator::Rethrow { .. }
            | Operator::Delegate { .. }
            | Operator::Catch { .. }
            | Operator::CatchAll
            | Operator::TryTable { .. }
            | Operator::BrOnNull { .. }
            | Operator::BrOnNonNull { .. }
            | Operator::BrOnCast { .. }
            | Operator::BrOnCastFail { .. }
    )
}

impl<'a> FunctionMiddleware<'a> for FunctionGuard {
    fn feed(&mut self, op: Operator<'a>, state: &mut MiddlewareReaderState<'a>) -> Result<(), MiddlewareError> {
        if self.expired() {
            // The compilation is over its time budget and will be refused (see `BaseEngine`):
            // what is left of this function becomes dead code.
            if !self.expired {
                self.expired = true;
                state.push_operator(Operator::Unreachable);
            }
            if shapes_blocks(&op) {
                state.push_operator(op);
            }
            return Ok(());
        }
        if !self.entered {
            self.entered = true;
            self.check_stop(state);
        }
        if let Some(fuel) = self.globals.fuel {
            self.cost += 1;
            if ends_block(&op) {
                self.charge(fuel, state);
            }
        }
        let is_loop = matches!(op, Operator::Loop { .. });
        state.push_operator(op);
        if is_loop {
            self.check_stop(state);
            state.extend([Operator::I32Const { value: 0 }, Operator::GlobalSet { global_index: self.globals.scratch }]);
        }
        Ok(())
    }
}
