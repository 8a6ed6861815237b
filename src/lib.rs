//! sandcell runs untrusted code behind one [`Sandbox`] trait, with three isolation backends:
//! WebAssembly (wasmer + Cranelift), a confined Linux process, and a kernel-less KVM micro-VM.
//!
//! ```
//! use std::time::Duration;
//! use sandcell::{BackendKind, Policy, Program, Sandbox, SandboxBuilder, Status};
//!
//! let policy = Policy::builder()
//!     .memory(64 << 20)                 // 64 MiB
//!     .timeout(Duration::from_secs(2))  // wall clock
//!     .build()?;
//! let sandbox = SandboxBuilder::new(BackendKind::Wasm).policy(policy).build()?;
//! let outcome = sandbox.run(&Program::path("examples/hello.wat"))?;
//! assert_eq!(outcome.status, Status::Exited(0));
//! assert_eq!(String::from_utf8_lossy(&outcome.stdout), "Hello, world!\n");
//! # Ok::<(), sandcell::Error>(())
//! ```
//!
//! # Core concepts
//!
//! - [`Policy`]: what a run may do — memory, CPU, wall-clock timeout, processes, output size,
//!   filesystem mounts, network, environment. Backend-neutral, serde-(de)serializable,
//!   validated once when a sandbox is built. A backend enforces every field or refuses the
//!   policy with [`Error::Unenforceable`]; nothing is silently weakened.
//! - [`Program`]: what to run — a wasm module, a native executable, or a micro-VM guest — with
//!   its arguments, environment, stdin and working directory.
//! - [`Outcome`]: how the run ended ([`Status`]), its captured stdout and stderr (capped), and
//!   what it used ([`Usage`]).
//! - [`Sandbox`]: the trait every backend implements; built by [`SandboxBuilder`]. A sandbox is
//!   `Send + Sync` and runs many programs from many threads.
//! - [`InterruptHandle`]: stops runs from another thread, on every backend.
//! - [`probe()`]: what this host supports.
//!
//! Two kinds of failure are never mixed: whatever the *guest* does is an [`Outcome`]; an
//! [`Error`] means the *host* could not do what was asked, and says how to fix it.
//!
//! # Cargo features
//!
//! - `process` (default): the process backend (Linux).
//! - `microvm` (default): the micro-VM backend (Linux, x86-64, `/dev/kvm`).
//! - `async`: [`RunAsync`], runs as futures on tokio (cancellation interrupts the run).
//!
//! The wasm backend is always built.

#![deny(missing_docs)]
#![warn(unsafe_op_in_unsafe_fn, clippy::undocumented_unsafe_blocks)]

mod backend;
mod cache;
mod control;
mod enforcement;
mod error;
mod fuzz;
mod input;
mod outcome;
mod policy;
mod pool;
mod probe;
mod program;
mod sandbox;
mod sys;
mod syscalls;
pub mod units;
mod wasi;
mod wasm_module;

pub use backend::probe;
pub use backend::wasm::WasmSandbox;
pub use control::{InterruptHandle, OutputCallback};
pub use enforcement::PolicyField;
pub use error::{CompileLimit, Error, ErrorKind, Result};
pub use outcome::{signal_name, ArtifactSource, CpuBudget, Outcome, Status, Stream, Trap, TrapKind, Usage};
pub use policy::{
    CompileLimits, Mount, Network, Policy, PolicyBuilder, DEFAULT_COMPILE_MEMORY, DEFAULT_COMPILE_TIME,
    DEFAULT_MAX_FUNCTIONS, DEFAULT_MAX_FUNCTION_SIZE, DEFAULT_MAX_MODULE_SIZE, DEFAULT_MAX_OPEN_FILES,
    DEFAULT_MAX_OUTPUT, DEFAULT_MAX_PROCESSES, DEFAULT_MEMORY,
};
pub use pool::{PoolStats, PrepareOptions, DEFAULT_IDLE_TIMEOUT, DEFAULT_POOL_SIZE, MAX_POOL_SIZE};
pub use probe::{BackendSupport, Cgroups, HostSupport, KvmFlavor, Probe};
pub use program::{Artifact, Program};
#[cfg(feature = "async")]
pub use sandbox::RunAsync;
pub use sandbox::{sandbox, BackendKind, HostFunction, Prepared, RunOptions, Sandbox, SandboxBuilder};

/// Compile-time check that the public types can cross threads.
#[allow(dead_code)]
fn _assert_thread_safety() {
    fn send_sync<T: Send + Sync>() {}
    send_sync::<Policy>();
    send_sync::<Program>();
    send_sync::<Prepared<'static>>();
    send_sync::<Outcome>();
    send_sync::<Error>();
    send_sync::<InterruptHandle>();
    send_sync::<Box<dyn Sandbox>>();
    send_sync::<WasmSandbox>();
    send_sync::<Probe>();
}

/// Internals for sandcell's own tests and fuzz targets. Not part of the API: anything here may
/// change in any release.
#[doc(hidden)]
pub mod __private {
    /// The wasm backend's engine (its stop checks, and fuel metering when `metered`) with
    /// linear memories capped at `memory_cap` bytes, as a sandbox with that policy uses it.
    pub fn wasm_engine(metered: bool, memory_cap: Option<u64>) -> wasmer::Engine {
        crate::backend::wasm::engine::base(metered).capped(memory_cap)
    }
    /// Compiles `wasm` (binary) on the engine [`wasm_engine`] returns, as a sandbox does but
    /// without its budgets: one compilation at a time on the engine, with no deadline.
    pub fn compile(metered: bool, memory_cap: Option<u64>, wasm: &[u8]) -> Result<wasmer::Module, String> {
        crate::backend::wasm::engine::base(metered).compile_unbudgeted(&wasm_engine(metered, memory_cap), wasm)
    }
    /// The export the wasm backend's compiler gives a module's start function, which it takes
    /// out of instantiation (a run calls it under its limits).
    pub const START_EXPORT: &str = crate::backend::wasm::guard::START_EXPORT;
    /// The export of the stop flag (non-zero stops the guest at its next check).
    pub const STOP_EXPORT: &str = crate::backend::wasm::guard::STOP_EXPORT;
    /// The export of the remaining fuel (metered engines).
    pub const FUEL_EXPORT: &str = crate::backend::wasm::guard::FUEL_EXPORT;
    /// The fuzz targets' bodies (`fuzz/`), also replayed over their corpora by the tests.
    pub mod fuzz {
        pub use crate::fuzz::*;
    }
}
