//! Sandboxes and runs: a backend with a policy, the options of one run (output callbacks, an
//! interrupt handle), and the run itself.

use std::ffi::{c_char, c_int, c_void, CString};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;

use crate::consts::*;
use crate::error::{from_sandcell, guard, invalid, Error, Result};
use crate::extensible::{self, Extensible};
use crate::handle::{get, register, release};
use crate::interrupt::{Interrupt, Link};
use crate::outcome::Outcome;
use crate::policy::Policy;
use crate::program::Program;
use crate::util::{out, string};

/// A sandbox: a backend with a policy applied. Shareable between threads.
pub struct Sandbox(Arc<dyn sandcell::Sandbox>);

/// Receives output as it is produced: `stream` is SANDCELL_STREAM_STDOUT or _STDERR. Called on
/// the thread that called sandcell_sandbox_run().
pub type OutputFn = Option<unsafe extern "C" fn(user_data: *mut c_void, stream: u32, data: *const u8, len: usize)>;

/// Like sandcell_output_fn, and its result decides whether the run goes on: 0 to continue,
/// non-zero to stop the run, which then ends with SANDCELL_STATUS_INTERRUPTED (the guest is
/// stopped as an interrupt handle stops it; the callback is not called again for that run).
/// Called on the thread that called sandcell_sandbox_run().
pub type OutputFn2 =
    Option<unsafe extern "C" fn(user_data: *mut c_void, stream: u32, data: *const u8, len: usize) -> c_int>;

/// Options of one run. Set `size` and zero the rest, then set what you need:
/// `sandcell_run_options_t options = {.size = sizeof(sandcell_run_options_t)};`
#[repr(C)]
#[derive(Clone, Copy)]
pub struct RunOptions {
    /// sizeof(sandcell_run_options_t), set by the caller (see EXTENSIBLE STRUCTS at the top).
    pub size: usize,
    /// Called with each chunk of output as the guest produces it (also captured in the outcome).
    pub on_output: OutputFn,
    /// Passed to `on_output` and `on_output2`.
    pub user_data: *mut c_void,
    /// Stops the run when triggered (in addition to the sandbox's own interrupt).
    pub interrupt: *const Interrupt,
    /// Like `on_output`, and returns non-zero to stop the run (see sandcell_output_fn2). Set
    /// `on_output` or `on_output2`, not both.
    pub on_output2: OutputFn2,
    /// Non-zero: the run's stdin is streamed from `stdin_fd` instead of the program's bytes —
    /// the guest reads input as it arrives (a pipe, a socket, a file, a terminal). The library
    /// reads a duplicate of the descriptor, so the caller may close `stdin_fd` once the call has
    /// returned; it starts reading when the guest starts and stops when the run ends (even if
    /// the descriptor is idle), and reads ahead of the guest (up to about 128 KiB the guest may
    /// not read are taken from it). A guest waiting for input still ends at its wall-clock
    /// timeout or an interrupt (CPU time does not pass while it waits).
    pub stream_stdin: u32,
    /// The descriptor `stream_stdin` streams from.
    pub stdin_fd: c_int,
    /// Non-NULL: this run's stdin is these `stdin_len` bytes (copied; then end-of-file) instead
    /// of the program's — with a prepared program, how each run gets its own input. A non-NULL
    /// pointer with `stdin_len` 0 is an empty stdin. Not together with `stream_stdin`.
    pub stdin_data: *const u8,
    /// The length of `stdin_data`.
    pub stdin_len: usize,
}

const _: () = assert!(std::mem::offset_of!(RunOptions, size) == 0);

// SAFETY: repr(C), `size` first; integers, raw pointers and optional function pointers only.
unsafe impl Extensible for RunOptions {
    const C_NAME: &'static str = "sandcell_run_options_t";
    const MIN_SIZE: usize = std::mem::offset_of!(RunOptions, on_output2) + std::mem::size_of::<OutputFn2>();
}

/// A sandbox of the backend named `backend` ("wasm", "process" or "microvm"; a backend added in
/// a later version is reached by its name, without a change to this ABI), with `policy` (NULL: the
/// default policy; copied) and an optional directory for compiled artifacts (NULL: none).
#[no_mangle]
pub unsafe extern "C" fn sandcell_sandbox_new(
    backend: *const c_char,
    policy: *const Policy,
    cache_dir: *const c_char,
    sandbox: *mut *mut Sandbox,
) -> *mut Error {
    guard(|| {
        // SAFETY: checked string.
        let name = unsafe { string(backend, "backend")? };
        let kind: sandcell::BackendKind = name
            .parse()
            .map_err(|_| invalid(format!("unknown backend `{name}`: expected wasm, process or microvm")))?;
        // SAFETY: checked handle, string and out-parameter.
        unsafe {
            let policy =
                if policy.is_null() { sandcell::Policy::default() } else { get(policy, "policy", "policy")?.0.clone() };
            if sandbox.is_null() {
                return Err(invalid("the out-parameter `sandbox` is NULL"));
            }
            let mut builder = sandcell::SandboxBuilder::new(kind).policy(policy);
            if !cache_dir.is_null() {
                builder = builder.cache_dir(string(cache_dir, "cache_dir")?);
            }
            let built = builder.build().map_err(from_sandcell)?;
            out(sandbox, register(Sandbox(Arc::from(built)), "sandbox"), "sandbox")
        }
    })
}

/// The caller's output callback and its user data, as the run calls them.
struct CallbackSink {
    f: unsafe extern "C" fn(*mut c_void, u32, *const u8, usize),
    user_data: *mut c_void,
}

/// An `on_output2` callback: once it asks to stop, `stop` is triggered and it is not called again.
struct StoppingSink {
    f: unsafe extern "C" fn(*mut c_void, u32, *const u8, usize) -> c_int,
    user_data: *mut c_void,
    stop: sandcell::InterruptHandle,
    stopped: bool,
}

// SAFETY: the callbacks are only called on the thread that called `sandcell_sandbox_run`, during
// that call, as the header documents; the pointer is the caller's.
unsafe impl Send for CallbackSink {}
// SAFETY: as for `CallbackSink`.
unsafe impl Send for StoppingSink {}

fn stream_number(stream: sandcell::Stream) -> u32 {
    match stream {
        sandcell::Stream::Stdout => SANDCELL_STREAM_STDOUT,
        sandcell::Stream::Stderr => SANDCELL_STREAM_STDERR,
    }
}

/// Runs `program` to completion. The outcome (whatever the guest did) is written to `outcome`;
/// an error means the host could not run it. `options` may be NULL.
#[no_mangle]
pub unsafe extern "C" fn sandcell_sandbox_run(
    sandbox: *const Sandbox,
    program: *const Program,
    options: *const RunOptions,
    outcome: *mut *mut Outcome,
) -> *mut Error {
    guard(|| {
        // SAFETY: checked handles and out-parameter; `options` is read only if non-NULL, within
        // its size.
        unsafe {
            let sb = get(sandbox, "sandbox", "sandbox")?;
            let prog = get(program, "program", "program")?;
            if outcome.is_null() {
                return Err(invalid("the out-parameter `outcome` is NULL"));
            }
            let (run_options, _link) = run_options_from(options)?;
            let result = sb.0.run_with(&prog.0, run_options).map_err(from_sandcell)?;
            let detail = result.status.detail().map(|d| CString::new(d.replace('\0', " ")).unwrap_or_default());
            out(outcome, register(Outcome { inner: result, detail }, "outcome"), "outcome")
        }
    })
}

/// A run's options from the caller's `sandcell_run_options_t` (NULL: none), and the link that
/// keeps the caller's interrupt handle connected to the run's own while it lasts.
///
/// # Safety
/// `options` is NULL or points to a readable struct starting with its size.
unsafe fn run_options_from(options: *const RunOptions) -> Result<(sandcell::RunOptions, Option<Link>)> {
    // SAFETY: as the caller promises; `options` is read only if non-NULL, within its size.
    unsafe {
        let mut run_options = sandcell::RunOptions::new();
        // Keeps the run's own handle linked to the caller's interrupt handle during the run.
        let mut _link = None;
        if !options.is_null() {
            let o = extensible::read(options, "options")?;
            let interrupt =
                if o.interrupt.is_null() { None } else { Some(get(o.interrupt, "interrupt", "options->interrupt")?) };
            match (o.on_output, o.on_output2) {
                (Some(_), Some(_)) => {
                    return Err(invalid("set `options->on_output` or `options->on_output2`, not both"));
                }
                (Some(f), None) => {
                    let sink = CallbackSink { f, user_data: o.user_data };
                    run_options = run_options.on_output(move |stream, data| {
                        let sink = &sink;
                        // SAFETY: the caller's callback, with its own user data.
                        (sink.f)(sink.user_data, stream_number(stream), data.as_ptr(), data.len());
                    });
                    if let Some(i) = interrupt {
                        run_options = run_options.interrupt(i.handle().clone());
                    }
                }
                (None, Some(f)) => {
                    // The run gets its own handle, which the callback triggers to stop it, and
                    // which the caller's handle triggers too while the run lasts.
                    let own = sandcell::InterruptHandle::new();
                    _link = interrupt.map(|i| i.link(&own));
                    let mut sink = StoppingSink { f, user_data: o.user_data, stop: own.clone(), stopped: false };
                    run_options = run_options.interrupt(own).on_output(move |stream, data| {
                        let sink = &mut sink;
                        if sink.stopped {
                            return;
                        }
                        // SAFETY: the caller's callback, with its own user data.
                        if (sink.f)(sink.user_data, stream_number(stream), data.as_ptr(), data.len()) != 0 {
                            sink.stopped = true;
                            sink.stop.interrupt();
                        }
                    });
                }
                (None, None) => {
                    if let Some(i) = interrupt {
                        run_options = run_options.interrupt(i.handle().clone());
                    }
                }
            }
            if o.stdin_data.is_null() && o.stdin_len != 0 {
                return Err(invalid("options->stdin_data is NULL but options->stdin_len is not 0"));
            }
            if !o.stdin_data.is_null() {
                if o.stream_stdin != 0 {
                    return Err(invalid("set `options->stdin_data` or `options->stream_stdin`, not both"));
                }
                if o.stdin_len > isize::MAX as usize {
                    return Err(invalid("options->stdin_len overflows"));
                }
                // SAFETY: the caller's buffer of `stdin_len` bytes, copied here.
                let data = std::slice::from_raw_parts(o.stdin_data, o.stdin_len);
                run_options = run_options.stdin(data.to_vec());
            }
            if o.stream_stdin != 0 {
                if o.stdin_fd < 0 {
                    return Err(invalid(format!("options->stdin_fd is {}, not a descriptor", o.stdin_fd)));
                }
                // SAFETY: only duplicated (F_DUPFD_CLOEXEC), which fails on a closed descriptor.
                let fd = std::os::fd::BorrowedFd::borrow_raw(o.stdin_fd)
                    .try_clone_to_owned()
                    .map_err(|e| invalid(format!("options->stdin_fd {}: {e}", o.stdin_fd)))?;
                run_options = run_options.stdin_fd(fd);
            }
        }
        Ok((run_options, _link))
    }
}

/// A program prepared on a sandbox (sandcell_sandbox_prepare()): runs start from what was done
/// once. It keeps its sandbox alive; it may be run from several threads at once.
pub struct Prepared {
    /// Borrows the sandbox that `_sandbox` keeps alive (declared first: dropped first).
    prepared: sandcell::Prepared<'static>,
    _sandbox: Arc<dyn sandcell::Sandbox>,
}

/// Does once what every run of `program` on `sandbox` would repeat (reading and checking it,
/// finding or compiling its compiled module or guest image) and hands out the prepared program,
/// which sandcell_prepared_run() runs. The program is copied: changing it afterwards (or, on the
/// wasm and micro-VM backends, its file) does not change the prepared one. Errors are those a
/// run would have. The prepared program keeps its sandbox alive: either may be freed first.
#[no_mangle]
pub unsafe extern "C" fn sandcell_sandbox_prepare(
    sandbox: *const Sandbox,
    program: *const Program,
    prepared: *mut *mut Prepared,
) -> *mut Error {
    // SAFETY: `prepare` checks its arguments.
    guard(|| unsafe { prepare(sandbox, program, &sandcell::PrepareOptions::new(), prepared) })
}

/// How sandcell_sandbox_prepare_with() prepares a program. Set `size` and zero the rest:
/// `sandcell_prepare_options_t options = {.size = sizeof(sandcell_prepare_options_t)};`
#[repr(C)]
#[derive(Clone, Copy)]
pub struct PrepareOptions {
    /// sizeof(sandcell_prepare_options_t), set by the caller (see EXTENSIBLE STRUCTS at the top).
    pub size: usize,
    /// Non-zero: keep `pool_size` ready instances between runs (0 keeps none); zero: the
    /// default (SANDCELL_DEFAULT_POOL_SIZE). Backends that keep no instances refuse it.
    pub set_pool_size: u32,
    /// See `set_pool_size` (at most SANDCELL_MAX_POOL_SIZE).
    pub pool_size: u32,
    /// How long an idle instance is kept, in milliseconds (0: the default, 30 s).
    pub idle_timeout_ms: u64,
    /// Non-zero: run the program until it says it is ready and start every run from there
    /// (micro-VM native guests calling `sandcell_guest::ready`); refused where unsupported.
    pub until_ready: u32,
    /// Non-NULL: start from the snapshot saved in this file (sandcell_prepared_save_snapshot())
    /// instead of making one; the file is checked first and refused with the reason
    /// (SANDCELL_ERROR_INVALID_PROGRAM) unless it was sealed with the sandbox's artifact cache
    /// key by this sandcell version, on this CPU, under the same policy, for the same program.
    pub snapshot_file: *const c_char,
}

const _: () = assert!(std::mem::offset_of!(PrepareOptions, size) == 0);

// SAFETY: repr(C), `size` first; integers and a raw pointer only.
unsafe impl Extensible for PrepareOptions {
    const C_NAME: &'static str = "sandcell_prepare_options_t";
    const MIN_SIZE: usize = std::mem::size_of::<PrepareOptions>();
}

/// What a prepared program's pool of ready instances did (sandcell_prepared_pool_stats()). Set
/// `size` before the call; the library sets it to the bytes it wrote.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct PoolStats {
    /// sizeof(sandcell_pool_stats_t) (see EXTENSIBLE STRUCTS at the top).
    pub size: usize,
    /// Runs that took an idle instance.
    pub hits: u64,
    /// Runs that found none idle and made one.
    pub misses: u64,
    /// Instances destroyed for idling past the timeout or a full pool.
    pub evictions: u64,
    /// Instances idle now.
    pub idle: u64,
    /// Bytes of guest memory the snapshot keeps.
    pub snapshot_bytes: u64,
}

const _: () = assert!(std::mem::offset_of!(PoolStats, size) == 0);

// SAFETY: repr(C), `size` first; integers only.
unsafe impl Extensible for PoolStats {
    const C_NAME: &'static str = "sandcell_pool_stats_t";
    const MIN_SIZE: usize = std::mem::size_of::<PoolStats>();
}

/// As sandcell_sandbox_prepare(), with `options` (NULL: the defaults): a pool of ready
/// instances of the given size and idle timeout, a snapshot taken once the program says it is
/// ready. A backend that cannot do what they ask fails with SANDCELL_ERROR_UNENFORCEABLE.
#[no_mangle]
pub unsafe extern "C" fn sandcell_sandbox_prepare_with(
    sandbox: *const Sandbox,
    program: *const Program,
    options: *const PrepareOptions,
    prepared: *mut *mut Prepared,
) -> *mut Error {
    guard(|| {
        // SAFETY: checked handles, struct and out-parameter.
        unsafe {
            let mut opts = sandcell::PrepareOptions::new();
            if !options.is_null() {
                let o = extensible::read(options, "options")?;
                if o.set_pool_size != 0 {
                    opts = opts.pool_size(o.pool_size as usize);
                }
                if o.idle_timeout_ms != 0 {
                    opts = opts.idle_timeout(std::time::Duration::from_millis(o.idle_timeout_ms));
                }
                opts = opts.until_ready(o.until_ready != 0);
                if !o.snapshot_file.is_null() {
                    opts = opts.snapshot_file(string(o.snapshot_file, "options->snapshot_file")?);
                }
            }
            prepare(sandbox, program, &opts, prepared)
        }
    })
}

/// Prepares `program` on `sandbox` with `options` into `prepared`.
unsafe fn prepare(
    sandbox: *const Sandbox,
    program: *const Program,
    options: &sandcell::PrepareOptions,
    prepared: *mut *mut Prepared,
) -> Result<()> {
    // SAFETY: checked handles and out-parameter.
    unsafe {
        let sb = get(sandbox, "sandbox", "sandbox")?;
        let prog = get(program, "program", "program")?;
        if prepared.is_null() {
            return Err(invalid("the out-parameter `prepared` is NULL"));
        }
        let keep = sb.0.clone();
        let made = keep.prepare_with(&prog.0, options).map_err(from_sandcell)?;
        // SAFETY: `made` borrows the sandbox behind `keep`, a heap allocation that the
        // `Prepared` keeps alive (and never moves) for as long as `made` exists: the field
        // order drops `made` first.
        let made: sandcell::Prepared<'static> = std::mem::transmute(made);
        out(prepared, register(Prepared { prepared: made, _sandbox: keep }, "prepared"), "prepared")
    }
}

/// The statistics of a prepared program's pool into `stats` (its `size` set by the caller);
/// `*has_pool` is set to 1, or to 0 (and `stats` left alone) when the program keeps no pool.
#[no_mangle]
pub unsafe extern "C" fn sandcell_prepared_pool_stats(
    prepared: *const Prepared,
    stats: *mut PoolStats,
    has_pool: *mut c_int,
) -> *mut Error {
    guard(|| {
        // SAFETY: checked handle, struct and out-parameter.
        unsafe {
            let p = get(prepared, "prepared", "prepared")?;
            if has_pool.is_null() {
                return Err(invalid("the out-parameter `has_pool` is NULL"));
            }
            match p.prepared.pool_stats() {
                Some(s) => {
                    extensible::write(
                        stats,
                        PoolStats {
                            size: std::mem::size_of::<PoolStats>(),
                            hits: s.hits,
                            misses: s.misses,
                            evictions: s.evictions,
                            idle: s.idle,
                            snapshot_bytes: s.snapshot_bytes,
                        },
                        "stats",
                    )?;
                    *has_pool = 1;
                }
                None => *has_pool = 0,
            }
            Ok(())
        }
    })
}

/// Saves a prepared program's snapshot to the file at `path` (written whole, then renamed into
/// place, mode 0600), for sandcell_sandbox_prepare_with() in another process. The sandbox needs
/// an artifact cache (its key seals the file); backends without snapshots fail with
/// SANDCELL_ERROR_UNENFORCEABLE.
#[no_mangle]
pub unsafe extern "C" fn sandcell_prepared_save_snapshot(prepared: *const Prepared, path: *const c_char) -> *mut Error {
    guard(|| {
        // SAFETY: checked handle and string.
        unsafe {
            let p = get(prepared, "prepared", "prepared")?;
            let path = string(path, "path")?;
            p.prepared.save_snapshot(path).map_err(from_sandcell)
        }
    })
}

/// Runs a prepared program, as sandcell_sandbox_run() runs a program (`options` may be NULL).
#[no_mangle]
pub unsafe extern "C" fn sandcell_prepared_run(
    prepared: *const Prepared,
    options: *const RunOptions,
    outcome: *mut *mut Outcome,
) -> *mut Error {
    guard(|| {
        // SAFETY: checked handle and out-parameter; `options` as sandcell_sandbox_run() reads it.
        unsafe {
            let p = get(prepared, "prepared", "prepared")?;
            if outcome.is_null() {
                return Err(invalid("the out-parameter `outcome` is NULL"));
            }
            let (run_options, _link) = run_options_from(options)?;
            let result = p.prepared.run_with(run_options).map_err(from_sandcell)?;
            let detail = result.status.detail().map(|d| CString::new(d.replace('\0', " ")).unwrap_or_default());
            out(outcome, register(Outcome { inner: result, detail }, "outcome"), "outcome")
        }
    })
}

/// Frees a prepared program (NULL is fine). Its runs in progress on other threads must have
/// returned.
#[no_mangle]
pub unsafe extern "C" fn sandcell_prepared_free(prepared: *mut Prepared) {
    // SAFETY: `release` checks the registry.
    let _ = catch_unwind(AssertUnwindSafe(|| unsafe { release(prepared, "prepared") }));
}

/// Stops every run in progress on this sandbox (they end with SANDCELL_STATUS_INTERRUPTED).
#[no_mangle]
pub unsafe extern "C" fn sandcell_sandbox_interrupt(sandbox: *const Sandbox) -> *mut Error {
    guard(|| {
        // SAFETY: checked handle.
        let sb = unsafe { get(sandbox, "sandbox", "sandbox")? };
        sb.0.interrupt_handle().interrupt();
        Ok(())
    })
}

/// Frees a sandbox (NULL is fine). Runs in progress on other threads must have returned.
#[no_mangle]
pub unsafe extern "C" fn sandcell_sandbox_free(sandbox: *mut Sandbox) {
    // SAFETY: `release` checks the registry.
    let _ = catch_unwind(AssertUnwindSafe(|| unsafe { release(sandbox, "sandbox") }));
}
