//! The [`Sandbox`] trait and building a sandbox from a backend and a policy.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use crate::control::{InterruptHandle, OutputCallback};
use crate::{Error, Outcome, Policy, Program, Result};

/// The isolation backends.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u32)]
pub enum BackendKind {
    /// WebAssembly (wasmer + Cranelift), WASI preview 1. Runs `.wasm` / `.wat` modules.
    Wasm = 1,
    /// A Linux process confined by namespaces, seccomp-bpf, Landlock and resource limits.
    /// Runs native executables.
    Process = 2,
    /// A kernel-less KVM micro-VM. Runs wasm modules (engine inside the guest) and freestanding
    /// guest programs.
    MicroVm = 3,
}

impl BackendKind {
    /// All backends.
    pub const ALL: [BackendKind; 3] = [BackendKind::Wasm, BackendKind::Process, BackendKind::MicroVm];

    /// The lowercase name used by the CLI and in JSON (`wasm`, `process`, `microvm`).
    pub fn name(self) -> &'static str {
        match self {
            BackendKind::Wasm => "wasm",
            BackendKind::Process => "process",
            BackendKind::MicroVm => "microvm",
        }
    }
}

impl fmt::Display for BackendKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for BackendKind {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "wasm" => Ok(BackendKind::Wasm),
            "process" => Ok(BackendKind::Process),
            "microvm" => Ok(BackendKind::MicroVm),
            other => Err(Error::invalid_policy(
                "backend",
                format!("unknown backend `{other}`: expected wasm, process or microvm"),
            )),
        }
    }
}

/// Per-run options beyond the [`Program`]: an interrupt handle, a streaming output callback, and
/// limits of this run alone. A run's limits only ever narrow the sandbox's policy: the run gets
/// the smaller of the two (a policy without a timeout takes the run's).
#[derive(Default)]
#[must_use]
#[non_exhaustive]
pub struct RunOptions {
    /// Attach the run to this handle as well as to the sandbox's own.
    pub interrupt: Option<InterruptHandle>,
    /// Called with each chunk of output as the guest produces it, on the thread running the
    /// guest. The chunks are also captured in the [`Outcome`], within the same cap.
    pub on_output: Option<OutputCallback>,
    /// A wall-clock limit for this run (→ [`crate::Status::Timeout`]).
    pub timeout: Option<Duration>,
    /// A CPU-time limit for this run (→ [`crate::Status::CpuLimit`]).
    pub cpu_time: Option<Duration>,
    /// A cap on each of stdout and stderr for this run (→ [`crate::Status::OutputLimit`]).
    pub max_output: Option<u64>,
    /// The run's stdin, instead of the program's.
    pub stdin: Option<Arc<[u8]>>,
    /// The run's stdin streamed from a reader (see [`RunOptions::stdin_reader`]).
    pub(crate) stdin_stream: Option<Arc<crate::input::StdinStream>>,
    /// The handle an async run's cancellation triggers (see [`RunAsync`]).
    pub(crate) cancel: Option<InterruptHandle>,
}

/// The smaller of a policy's limit and a run's (either may be absent).
pub(crate) fn narrowed<T: Ord + Copy>(policy: Option<T>, run: Option<T>) -> Option<T> {
    match (policy, run) {
        (Some(p), Some(r)) => Some(p.min(r)),
        (p, r) => p.or(r),
    }
}

impl RunOptions {
    /// No options.
    pub fn new() -> Self {
        Self::default()
    }
    /// Sets [`RunOptions::interrupt`].
    pub fn interrupt(mut self, handle: InterruptHandle) -> Self {
        self.interrupt = Some(handle);
        self
    }
    /// Sets [`RunOptions::on_output`].
    pub fn on_output(mut self, callback: impl FnMut(crate::Stream, &[u8]) + Send + 'static) -> Self {
        self.on_output = Some(Box::new(callback));
        self
    }
    /// Sets [`RunOptions::timeout`].
    pub fn timeout(mut self, limit: Duration) -> Self {
        self.timeout = Some(limit);
        self
    }
    /// Sets [`RunOptions::cpu_time`].
    pub fn cpu_time(mut self, limit: Duration) -> Self {
        self.cpu_time = Some(limit);
        self
    }
    /// Sets [`RunOptions::max_output`].
    pub fn max_output(mut self, bytes: u64) -> Self {
        self.max_output = Some(bytes);
        self
    }
    /// Sets [`RunOptions::stdin`].
    pub fn stdin(mut self, input: impl Into<Arc<[u8]>>) -> Self {
        self.stdin = Some(input.into());
        self
    }

    /// Streams the run's stdin from `reader` as the guest reads it, instead of the program's
    /// bytes (and instead of [`RunOptions::stdin`]): the guest reads what the reader has produced
    /// so far and waits for more, and reads end-of-file once the reader does. A thread of the
    /// run's copies the reader into a pipe, so the host never holds more than the pipe's buffer
    /// however slowly the guest reads; a guest waiting for input still ends at its timeout or
    /// interrupt. The reader is read until it ends or the run does (a reader blocked after the
    /// run ended keeps its thread until its `read` returns).
    pub fn stdin_reader(mut self, reader: impl std::io::Read + Send + 'static) -> Self {
        self.stdin_stream = Some(crate::input::StdinStream::new(Box::new(reader)));
        self
    }

    /// Streams the run's stdin from a descriptor (a pipe, a socket, a terminal, a file) as
    /// [`stdin_reader`](RunOptions::stdin_reader) does, and better: the descriptor is polled
    /// together with the run, so the copying ends when the run does even if the source is idle,
    /// and a non-blocking descriptor works. The copying reads ahead of the guest (up to about
    /// 128 KiB the guest may never read are taken from the source).
    pub fn stdin_fd(mut self, fd: impl Into<std::os::fd::OwnedFd>) -> Self {
        self.stdin_stream = Some(crate::input::StdinStream::from_fd(fd.into()));
        self
    }

    /// The interrupt handles of this run besides the sandbox's own.
    pub(crate) fn handles(&self) -> impl Iterator<Item = &InterruptHandle> {
        self.interrupt.iter().chain(self.cancel.iter())
    }

    /// The program with this run's stdin, if it has one of its own.
    pub(crate) fn program<'a>(&mut self, program: &'a Program) -> std::borrow::Cow<'a, Program> {
        match (self.stdin_stream.take(), self.stdin.take()) {
            (Some(stream), _) => std::borrow::Cow::Owned(program.clone().with_stream(stream)),
            (None, Some(input)) => std::borrow::Cow::Owned(program.clone().stdin(input)),
            (None, None) => std::borrow::Cow::Borrowed(program),
        }
    }
}

impl fmt::Debug for RunOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RunOptions")
            .field("interrupt", &self.interrupt)
            .field("on_output", &self.on_output.as_ref().map(|_| "callback"))
            .field("timeout", &self.timeout)
            .field("cpu_time", &self.cpu_time)
            .field("max_output", &self.max_output)
            .field("stdin", &self.stdin.as_ref().map(|s| s.len()))
            .field("stdin_stream", &self.stdin_stream)
            .finish()
    }
}

/// An isolation backend with a policy applied. `Send + Sync`: one sandbox runs many programs,
/// from many threads at once; each run is independent.
pub trait Sandbox: Send + Sync + fmt::Debug {
    /// Which backend this is.
    fn backend(&self) -> BackendKind;

    /// The validated policy every run follows.
    fn policy(&self) -> &Policy;

    /// Runs a program to completion. `Ok` whatever the guest did; `Err` only when the host could
    /// not run it (unreadable or malformed program, a system resource missing).
    fn run(&self, program: &Program) -> Result<Outcome> {
        self.run_with(program, RunOptions::default())
    }

    /// Runs a program with [`RunOptions`].
    fn run_with(&self, program: &Program, options: RunOptions) -> Result<Outcome>;

    /// The sandbox's interrupt handle: stops every run in progress on this sandbox.
    fn interrupt_handle(&self) -> InterruptHandle;

    /// Does once what every run of `program` on this sandbox would repeat, and returns it ready
    /// to run (see [`Prepared`]). Errors are those a run would have (an unreadable or invalid
    /// program, a module over its compilation budgets), found now instead.
    fn prepare(&self, program: &Program) -> Result<Prepared<'_>>;

    /// [`prepare`](Sandbox::prepare) with [`PrepareOptions`](crate::PrepareOptions): a pool of
    /// ready instances, a snapshot taken once the program says it is ready. A backend that
    /// cannot do what the options ask refuses them ([`Error::Unsupported`](crate::Error::Unsupported)
    /// naming the option); with [`PrepareOptions::new`](crate::PrepareOptions::new) this is
    /// `prepare`.
    fn prepare_with(&self, program: &Program, options: &crate::PrepareOptions) -> Result<Prepared<'_>> {
        if !options.is_plain() {
            return Err(crate::Error::Unsupported {
                backend: self.backend(),
                what: "pools of ready instances and snapshots after ready".into(),
                reason: "it keeps no instances between runs; prepare without options".into(),
            });
        }
        self.prepare(program)
    }

    /// Saves a prepared program's snapshot (called by [`Prepared::save_snapshot`]).
    #[doc(hidden)]
    fn save_prepared(&self, _prepared: &Prepared<'_>, _path: &std::path::Path, _: PrivateToken) -> Result<()> {
        Err(crate::Error::Unsupported {
            backend: self.backend(),
            what: "snapshot files".into(),
            reason: "it takes no snapshots".into(),
        })
    }

    /// Runs a program [`prepare`](Sandbox::prepare)d on this sandbox (called by
    /// [`Prepared::run_with`]; the token keeps it from being called from outside the crate).
    #[doc(hidden)]
    fn run_prepared(&self, prepared: &Prepared<'_>, options: RunOptions, _: PrivateToken) -> Result<Outcome> {
        self.run_with(&prepared.program, options)
    }
}

pub(crate) mod token {
    /// Stops [`Sandbox::run_prepared`](super::Sandbox::run_prepared) from being called from
    /// outside the crate: this type cannot be named or made there.
    #[derive(Clone, Copy)]
    pub struct PrivateToken(pub(crate) ());
}
use token::PrivateToken;

/// A program made ready to run, many times, on the sandbox that prepared it
/// ([`Sandbox::prepare`]).
///
/// What is done once: reading and checking the program and finding (or compiling) its
/// compiled form — the wasm backend's compiled module, the micro-VM's guest image — so that each
/// run starts from it instead of reading the file again and looking it up by its contents (for
/// a 26 MB interpreter that lookup hashes 26 MB per run). On the micro-VM, a snapshot of the
/// program's VM (at its entry, after the guest runtime instantiated a WASI module, or where the
/// program said it was ready: [`PrepareOptions::until_ready`](crate::PrepareOptions::until_ready))
/// and a pool of VMs that each run restores it into: whatever a run changed is the snapshot's
/// again before the next run uses that VM. On the wasm and micro-VM backends a `Prepared` keeps
/// the program as it was when prepared: changing the file afterwards does not change what its
/// runs execute. The process backend prepares only the checks of the program for now (each run
/// executes the path). Runs share nothing writable: each gets a new instance or process, or a
/// VM reset to the snapshot, and its own [`RunOptions`] (stdin, limits, interrupt).
///
/// ```
/// use sandcell::{BackendKind, Program, RunOptions, SandboxBuilder, Status};
/// let sandbox = SandboxBuilder::new(BackendKind::Wasm).build()?;
/// let prepared = sandbox.prepare(&Program::path("examples/hello.wat"))?;
/// for _ in 0..3 {
///     assert_eq!(prepared.run()?.status, Status::Exited(0));
/// }
/// let outcome = prepared.run_with(RunOptions::new().stdin(b"input".to_vec()))?;
/// # Ok::<(), sandcell::Error>(())
/// ```
pub struct Prepared<'s> {
    sandbox: &'s dyn Sandbox,
    program: Program,
    /// The backend's prepared state (its type is the backend's business).
    pub(crate) artifact: Box<dyn std::any::Any + Send + Sync>,
    /// The counters of its pool of ready instances, if it has one.
    pool: Option<std::sync::Arc<crate::pool::Counters>>,
}

impl<'s> Prepared<'s> {
    /// A prepared program with the backend's state (for backends' `prepare`).
    pub(crate) fn new(
        sandbox: &'s dyn Sandbox,
        program: &Program,
        artifact: Box<dyn std::any::Any + Send + Sync>,
    ) -> Self {
        Prepared { sandbox, program: program.clone(), artifact, pool: None }
    }

    /// As [`Prepared::new`], with the counters of the program's pool.
    pub(crate) fn pooled(
        sandbox: &'s dyn Sandbox,
        program: &Program,
        artifact: Box<dyn std::any::Any + Send + Sync>,
        pool: std::sync::Arc<crate::pool::Counters>,
    ) -> Self {
        Prepared { sandbox, program: program.clone(), artifact, pool: Some(pool) }
    }

    /// What the program's pool of ready instances did: `None` when it has none (prepared
    /// without one, or on a backend that keeps none).
    pub fn pool_stats(&self) -> Option<crate::PoolStats> {
        self.pool.as_ref().map(|c| c.stats())
    }

    /// A program with nothing prepared: its runs are plain [`Sandbox::run_with`] runs. For
    /// implementations of [`Sandbox`] outside this crate, whose `prepare` has nothing to do once.
    pub fn unprepared(sandbox: &'s dyn Sandbox, program: &Program) -> Self {
        Prepared { sandbox, program: program.clone(), artifact: Box::new(()), pool: None }
    }

    /// The backend's state of this program, for `sandbox`'s `run_prepared`: `None` for one
    /// made with [`Prepared::unprepared`] (a plain run); an error unless `sandbox` prepared it.
    pub(crate) fn state<T: 'static>(&self, sandbox: &dyn Sandbox) -> Result<Option<&T>> {
        let mine = std::ptr::addr_eq(self.sandbox as *const dyn Sandbox, sandbox as *const dyn Sandbox);
        match self.artifact.downcast_ref::<T>() {
            Some(state) if mine => Ok(Some(state)),
            None if mine && self.artifact.is::<()>() => Ok(None),
            _ => Err(crate::Error::invalid_program("the program was prepared by another sandbox")),
        }
    }

    /// Runs the prepared program.
    pub fn run(&self) -> Result<Outcome> {
        self.run_with(RunOptions::default())
    }

    /// Runs the prepared program with [`RunOptions`] of this run.
    pub fn run_with(&self, options: RunOptions) -> Result<Outcome> {
        self.sandbox.run_prepared(self, options, PrivateToken(()))
    }

    /// Saves the program's snapshot to a file (written whole, then renamed into place; mode
    /// 0600), which another process loads with
    /// [`PrepareOptions::snapshot_file`](crate::PrepareOptions::snapshot_file). The file is
    /// sealed with the key of the sandbox's artifact cache, so the sandbox needs one
    /// ([`SandboxBuilder::cache_dir`]). Backends without snapshots refuse.
    pub fn save_snapshot(&self, path: impl AsRef<std::path::Path>) -> Result<()> {
        self.sandbox.save_prepared(self, path.as_ref(), PrivateToken(()))
    }

    /// The program as prepared (its arguments and environment are every run's).
    pub fn program(&self) -> &Program {
        &self.program
    }

    /// The sandbox that prepared it.
    pub fn sandbox(&self) -> &'s dyn Sandbox {
        self.sandbox
    }
}

impl fmt::Debug for Prepared<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Prepared").field("backend", &self.sandbox.backend()).field("program", &self.program).finish()
    }
}

/// Builds a [`Sandbox`] for a backend: the policy plus backend configuration that is not policy
/// (where compiled modules are cached).
///
/// ```
/// use sandcell::{BackendKind, Policy, Program, SandboxBuilder, Status};
/// let sandbox = SandboxBuilder::new(BackendKind::Wasm)
///     .policy(Policy::builder().memory(32 << 20).build()?)
///     .build()?;
/// let outcome = sandbox.run(&Program::path("examples/hello.wat"))?;
/// assert_eq!(outcome.status, Status::Exited(0));
/// assert_eq!(outcome.stdout, b"Hello, world!\n");
/// # Ok::<(), sandcell::Error>(())
/// ```
#[derive(Clone)]
#[must_use]
pub struct SandboxBuilder {
    pub(crate) backend: BackendKind,
    pub(crate) policy: Policy,
    pub(crate) cache_dir: Option<PathBuf>,
    pub(crate) host_functions: std::sync::Arc<std::collections::HashMap<String, HostFunction>>,
}

/// A function the embedder offers to micro-VM guests (`sandcell_guest::host_call`): input bytes
/// in, output bytes or an error message out. It runs on the thread that called `run`.
pub type HostFunction = std::sync::Arc<dyn Fn(&[u8]) -> std::result::Result<Vec<u8>, String> + Send + Sync>;

impl fmt::Debug for SandboxBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SandboxBuilder")
            .field("backend", &self.backend)
            .field("policy", &self.policy)
            .field("cache_dir", &self.cache_dir)
            .field("host_functions", &self.host_functions.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl SandboxBuilder {
    /// A builder for `backend` with the default policy.
    pub fn new(backend: BackendKind) -> Self {
        SandboxBuilder { backend, policy: Policy::default(), cache_dir: None, host_functions: Default::default() }
    }

    /// The policy of every run.
    pub fn policy(mut self, policy: Policy) -> Self {
        self.policy = policy;
        self
    }

    /// A directory for compiled artifacts (wasm modules; micro-VM guest images), shared by every
    /// process that uses the same directory. It must be owned by the current user and not be
    /// writable by others: sandcell loads native code from it.
    pub fn cache_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.cache_dir = Some(dir.into());
        self
    }

    /// Offers a function to guests under `name` (micro-VM backend: `sandcell_guest::host_call`).
    /// The other backends refuse a builder with host functions.
    pub fn host_function(
        mut self,
        name: impl Into<String>,
        f: impl Fn(&[u8]) -> std::result::Result<Vec<u8>, String> + Send + Sync + 'static,
    ) -> Self {
        std::sync::Arc::make_mut(&mut self.host_functions).insert(name.into(), std::sync::Arc::new(f));
        self
    }

    /// Validates the policy, lowers it onto the backend, and returns the sandbox.
    pub fn build(self) -> Result<Box<dyn Sandbox>> {
        let _span = tracing::info_span!("sandcell.build", backend = %self.backend).entered();
        self.policy.validate()?;
        if !self.host_functions.is_empty() && self.backend != BackendKind::MicroVm {
            return Err(Error::invalid_policy(
                "host_functions",
                format!("the {} backend offers no host functions; only microvm guests can call them", self.backend),
            ));
        }
        crate::backend::build(self)
    }
}

impl SandboxBuilder {
    /// Builds a wasm sandbox as its concrete type, for the wasm-only methods
    /// ([`WasmSandbox::precompile`](crate::WasmSandbox::precompile)). Fails if the builder's
    /// backend is not [`BackendKind::Wasm`].
    pub fn build_wasm(self) -> Result<crate::WasmSandbox> {
        if self.backend != BackendKind::Wasm {
            return Err(Error::invalid_policy("backend", format!("build_wasm() called on a {} builder", self.backend)));
        }
        self.policy.validate()?;
        crate::backend::build_wasm(self)
    }
}

/// Shorthand for `SandboxBuilder::new(backend).policy(policy).build()`.
pub fn sandbox(backend: BackendKind, policy: Policy) -> Result<Box<dyn Sandbox>> {
    SandboxBuilder::new(backend).policy(policy).build()
}

/// Runs as futures (feature `async`, on tokio): [`RunAsync::run_async`] on an `Arc` of any
/// sandbox.
///
/// The run itself is blocking work: it goes to tokio's blocking thread pool
/// (`spawn_blocking`), never onto the executor's worker threads. Dropping the future before it
/// completes — cancelling the task, losing a `select!`, a `tokio::time::timeout` — interrupts the
/// run, which then ends within milliseconds on its thread (its outcome is dropped with it).
///
/// ```
/// # async fn demo() -> sandcell::Result<()> {
/// use std::sync::Arc;
/// use sandcell::{BackendKind, Program, RunAsync, RunOptions, Sandbox, SandboxBuilder};
/// let sandbox: Arc<dyn Sandbox> = SandboxBuilder::new(BackendKind::Wasm).build()?.into();
/// let outcome = sandbox.run_async(Program::path("examples/hello.wat"), RunOptions::new()).await?;
/// assert_eq!(outcome.stdout, b"Hello, world!\n");
/// # Ok(()) }
/// # tokio::runtime::Runtime::new().unwrap().block_on(demo()).unwrap();
/// ```
#[cfg(feature = "async")]
pub trait RunAsync {
    /// Runs `program` with `options` off the executor; cancellation interrupts the run. Must be
    /// awaited within a tokio runtime.
    fn run_async(
        &self,
        program: Program,
        options: RunOptions,
    ) -> impl std::future::Future<Output = Result<Outcome>> + Send + 'static;
}

#[cfg(feature = "async")]
impl<S: Sandbox + ?Sized + 'static> RunAsync for Arc<S> {
    fn run_async(
        &self,
        program: Program,
        mut options: RunOptions,
    ) -> impl std::future::Future<Output = Result<Outcome>> + Send + 'static {
        /// Interrupts the run if the future is dropped before the run returned.
        struct OnCancel(Option<InterruptHandle>);
        impl OnCancel {
            fn disarm(&mut self) {
                self.0 = None;
            }
        }
        impl Drop for OnCancel {
            fn drop(&mut self) {
                if let Some(handle) = self.0.take() {
                    handle.interrupt();
                }
            }
        }
        let sandbox = self.clone();
        let cancel = InterruptHandle::new();
        options.cancel = Some(cancel.clone());
        let mut guard = OnCancel(Some(cancel));
        async move {
            let joined = tokio::task::spawn_blocking(move || sandbox.run_with(&program, options)).await;
            guard.disarm();
            joined.unwrap_or_else(|e| Err(Error::Engine { reason: format!("the run's thread failed: {e}") }))
        }
    }
}
