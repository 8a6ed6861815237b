//! The C ABI of sandcell (`include/sandcell.h`, `libsandcell.so`, `libsandcell.a`).
//!
//! Every exported function catches panics; every pointer argument is checked. Handles are
//! registered while alive, so a handle used after `*_free` (or freed twice) is refused with
//! `SANDCELL_ERROR_INVALID_ARGUMENT` instead of touching freed memory — as long as the use does
//! not race the free on another thread, which the header documents as the caller's bug.

#![allow(clippy::missing_safety_doc)]
#![warn(unsafe_op_in_unsafe_fn)]

use std::collections::HashMap;
use std::ffi::{c_char, c_void, CStr, CString};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::time::Duration;

use parking_lot::Mutex;

// ---------------------------------------------------------------------------------------------
// Constants.

/// Error kind (sandcell_error_kind()): a policy field has a value that makes no sense.
pub const SANDCELL_ERROR_INVALID_POLICY: u32 = 1;
/// Error kind: this backend on this host cannot enforce a policy field (and best_effort is off).
pub const SANDCELL_ERROR_UNENFORCEABLE: u32 = 2;
/// Error kind: the backend cannot run on this host (no /dev/kvm, not Linux, ...).
pub const SANDCELL_ERROR_BACKEND_UNAVAILABLE: u32 = 3;
/// Error kind: the program cannot be read or is not something the backend runs.
pub const SANDCELL_ERROR_INVALID_PROGRAM: u32 = 4;
/// Error kind: the host failed to set up the run (a system call, the compiled-module cache).
pub const SANDCELL_ERROR_HOST: u32 = 5;
/// Error kind: a NULL pointer, a string that is not UTF-8, a length that overflows, a freed
/// handle, an unknown constant.
pub const SANDCELL_ERROR_INVALID_ARGUMENT: u32 = 6;
/// Error kind: a bug in sandcell (a caught panic).
pub const SANDCELL_ERROR_INTERNAL: u32 = 7;

/// Status (sandcell_outcome_status()): the guest exited by itself; the number is its exit code.
pub const SANDCELL_STATUS_EXITED: u32 = 1;
/// Status: the wall-clock timeout passed.
pub const SANDCELL_STATUS_TIMEOUT: u32 = 2;
/// Status: the guest hit the memory cap.
pub const SANDCELL_STATUS_MEMORY_LIMIT: u32 = 3;
/// Status: the CPU-time limit or the fuel budget ran out.
pub const SANDCELL_STATUS_CPU_LIMIT: u32 = 4;
/// Status: stdout or stderr reached max_output.
pub const SANDCELL_STATUS_OUTPUT_LIMIT: u32 = 5;
/// Status: a signal killed the guest process; the number is the signal.
pub const SANDCELL_STATUS_SIGNALED: u32 = 6;
/// Status: the guest faulted (see sandcell_outcome_trap_kind).
pub const SANDCELL_STATUS_TRAP: u32 = 7;
/// Status: the guest made a system call the policy denies.
pub const SANDCELL_STATUS_SYSCALL_DENIED: u32 = 8;
/// Status: an interrupt handle stopped the run.
pub const SANDCELL_STATUS_INTERRUPTED: u32 = 9;

/// Output stream: standard output.
pub const SANDCELL_STREAM_STDOUT: u32 = 1;
/// Output stream: standard error.
pub const SANDCELL_STREAM_STDERR: u32 = 2;

/// Network policy (sandcell_policy_set_network()): no network at all.
pub const SANDCELL_NETWORK_NONE: u32 = 0;
/// Network policy: a private loopback interface only (process backend).
pub const SANDCELL_NETWORK_LOOPBACK: u32 = 1;

// ---------------------------------------------------------------------------------------------
// Objects.

/// An error: a kind and a message.
pub struct Error {
    kind: u32,
    message: CString,
}

/// A policy (limits and permissions), built field by field or from JSON.
pub struct Policy(sandcell::Policy);

/// A program to run: its artifact, arguments, environment, stdin.
pub struct Program(sandcell::Program);

/// A sandbox: a backend with a policy applied. Shareable between threads.
pub struct Sandbox(Box<dyn sandcell::Sandbox>);

/// The result of a run.
pub struct Outcome {
    inner: sandcell::Outcome,
    detail: Option<CString>,
}

/// Stops runs from another thread.
pub struct Interrupt(sandcell::InterruptHandle);

/// Receives output as it is produced: `stream` is SANDCELL_STREAM_STDOUT or _STDERR. Called on
/// the thread that called sandcell_sandbox_run().
pub type OutputFn = Option<unsafe extern "C" fn(user_data: *mut c_void, stream: u32, data: *const u8, len: usize)>;

/// Options of one run (all optional: zero-initialise the struct).
#[repr(C)]
pub struct RunOptions {
    /// Called with each chunk of output as the guest produces it (also captured in the outcome).
    pub on_output: OutputFn,
    /// Passed to `on_output`.
    pub user_data: *mut c_void,
    /// Stops the run when triggered (in addition to the sandbox's own interrupt).
    pub interrupt: *const Interrupt,
}

/// What a run consumed.
#[repr(C)]
pub struct Usage {
    /// Wall-clock time of the run, in nanoseconds.
    pub wall_ns: u64,
    /// CPU time of the guest (all its threads and processes), in nanoseconds.
    pub cpu_ns: u64,
    /// Peak memory: wasm linear memory, the process tree's peak, the micro-VM RAM touched.
    pub peak_memory_bytes: u64,
    /// Fuel consumed; meaningful when `has_fuel` is true.
    pub fuel: u64,
    /// Whether the policy set a fuel budget (and `fuel` is the amount used).
    pub has_fuel: bool,
}

/// Everything about an outcome, read in one call (sandcell_outcome_summary()): what bindings
/// for other languages use, so that reading an outcome costs one crossing of the ABI. Every
/// pointer stays valid until the outcome is freed.
#[repr(C)]
pub struct Summary {
    /// SANDCELL_STATUS_* (0 for a status this version of the header does not know).
    pub status: u32,
    /// The exit code (EXITED), the signal (SIGNALED), 0 otherwise.
    pub code: i32,
    /// The status as its JSON name (see sandcell_outcome_kind()). Static.
    pub kind: *const c_char,
    /// The trap kind for a TRAP, else NULL. Static.
    pub trap_kind: *const c_char,
    /// The status detail, or NULL (see sandcell_outcome_detail()).
    pub detail: *const c_char,
    /// Captured stdout (not NUL-terminated).
    pub stdout_data: *const u8,
    /// Its length in bytes.
    pub stdout_len: usize,
    /// Captured stderr (not NUL-terminated).
    pub stderr_data: *const u8,
    /// Its length in bytes.
    pub stderr_len: usize,
    /// What the run consumed.
    pub usage: Usage,
}

// ---------------------------------------------------------------------------------------------
// Handles: a registry of live objects.

static LIVE: Mutex<Option<HashMap<usize, &'static str>>> = Mutex::new(None);

fn register<T>(value: T, kind: &'static str) -> *mut T {
    let ptr = Box::into_raw(Box::new(value));
    LIVE.lock().get_or_insert_with(HashMap::new).insert(ptr as usize, kind);
    ptr
}

fn is_live(ptr: usize, kind: &'static str) -> bool {
    LIVE.lock().as_ref().and_then(|m| m.get(&ptr)).is_some_and(|k| *k == kind)
}

fn err(kind: u32, message: impl Into<String>) -> Box<Error> {
    let message = message.into().replace('\0', " ");
    Box::new(Error { kind, message: CString::new(message).unwrap_or_default() })
}

fn invalid(what: impl Into<String>) -> Box<Error> {
    err(SANDCELL_ERROR_INVALID_ARGUMENT, what)
}

type Result<T> = std::result::Result<T, Box<Error>>;

fn from_sandcell(e: sandcell::Error) -> Box<Error> {
    let kind = match e.kind() {
        sandcell::ErrorKind::InvalidPolicy => SANDCELL_ERROR_INVALID_POLICY,
        sandcell::ErrorKind::Unenforceable => SANDCELL_ERROR_UNENFORCEABLE,
        sandcell::ErrorKind::BackendUnavailable => SANDCELL_ERROR_BACKEND_UNAVAILABLE,
        sandcell::ErrorKind::InvalidProgram => SANDCELL_ERROR_INVALID_PROGRAM,
        _ => SANDCELL_ERROR_HOST,
    };
    err(kind, e.to_string_with_causes())
}

/// Checks that `ptr` is a live handle of type `kind`.
fn check<T>(ptr: *const T, kind: &'static str, name: &str) -> Result<()> {
    if ptr.is_null() {
        return Err(invalid(format!("`{name}` is NULL")));
    }
    if !is_live(ptr as usize, kind) {
        return Err(invalid(format!("`{name}` is not a live {kind} (already freed, or not one)")));
    }
    Ok(())
}

/// Borrows a live handle of type `kind`.
unsafe fn get<'a, T>(ptr: *const T, kind: &'static str, name: &str) -> Result<&'a T> {
    check(ptr, kind, name)?;
    // SAFETY: registered pointers come from Box::into_raw of a `T` and are unregistered before
    // they are freed.
    Ok(unsafe { &*ptr })
}

/// Mutably borrows a live handle of type `kind`.
unsafe fn get_mut<'a, T>(ptr: *mut T, kind: &'static str, name: &str) -> Result<&'a mut T> {
    check(ptr, kind, name)?;
    // SAFETY: as `get`; the header forbids modifying an object from two threads at once.
    Ok(unsafe { &mut *ptr })
}

/// Frees a live handle; NULL, a freed or a foreign pointer is ignored.
unsafe fn release<T>(ptr: *mut T, kind: &'static str) {
    if ptr.is_null() {
        return;
    }
    let removed = {
        let mut live = LIVE.lock();
        match live.as_mut() {
            Some(m) if m.get(&(ptr as usize)) == Some(&kind) => m.remove(&(ptr as usize)).is_some(),
            _ => false,
        }
    };
    if removed {
        // SAFETY: the pointer came from Box::into_raw and was just unregistered.
        drop(unsafe { Box::from_raw(ptr) });
    }
}

unsafe fn string<'a>(ptr: *const c_char, name: &str) -> Result<&'a str> {
    if ptr.is_null() {
        return Err(invalid(format!("`{name}` is NULL")));
    }
    // SAFETY: the caller passes a NUL-terminated string.
    unsafe { CStr::from_ptr(ptr) }.to_str().map_err(|_| invalid(format!("`{name}` is not valid UTF-8")))
}

unsafe fn bytes<'a>(ptr: *const u8, len: usize, name: &str) -> Result<&'a [u8]> {
    if len == 0 {
        return Ok(&[]);
    }
    if ptr.is_null() {
        return Err(invalid(format!("`{name}` is NULL but its length is {len}")));
    }
    if len > isize::MAX as usize {
        return Err(invalid(format!("the length of `{name}` overflows")));
    }
    // SAFETY: the caller passes `len` readable bytes.
    Ok(unsafe { std::slice::from_raw_parts(ptr, len) })
}

unsafe fn out<T>(ptr: *mut T, value: T, name: &str) -> Result<()> {
    if ptr.is_null() {
        return Err(invalid(format!("the out-parameter `{name}` is NULL")));
    }
    // SAFETY: the caller passes a writable location.
    unsafe { ptr.write(value) };
    Ok(())
}

/// Runs `f`, turning an error or a panic into an error object.
fn guard(f: impl FnOnce() -> Result<()>) -> *mut Error {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(Ok(())) => std::ptr::null_mut(),
        Ok(Err(e)) => register(*e, "error"),
        Err(panic) => {
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_default();
            register(*err(SANDCELL_ERROR_INTERNAL, format!("internal error (a bug in sandcell): {what}")), "error")
        }
    }
}

/// Hands a string to the caller through `ptr` (checked first, so nothing leaks).
unsafe fn out_string(ptr: *mut *mut c_char, s: String, name: &str) -> Result<()> {
    if ptr.is_null() {
        return Err(invalid(format!("the out-parameter `{name}` is NULL")));
    }
    let s = CString::new(s.replace('\0', " ")).unwrap_or_default().into_raw();
    LIVE.lock().get_or_insert_with(HashMap::new).insert(s as usize, "string");
    // SAFETY: checked above; the caller passes a writable location.
    unsafe { ptr.write(s) };
    Ok(())
}

/// A NUL-terminated copy of one of the library's static names, kept for the life of the process
/// (there are a few dozen names, each interned once).
fn static_name(name: &'static str) -> *const c_char {
    static NAMES: Mutex<Vec<(&'static str, &'static CStr)>> = Mutex::new(Vec::new());
    let mut names = NAMES.lock();
    if let Some((_, c)) = names.iter().find(|(n, _)| *n == name) {
        return c.as_ptr();
    }
    let c: &'static CStr = Box::leak(CString::new(name).unwrap_or_default().into_boxed_c_str());
    names.push((name, c));
    c.as_ptr()
}

// ---------------------------------------------------------------------------------------------
// Errors and strings.

/// The error's message (valid until the error is freed). Never NULL: for NULL or a freed error
/// it is a static text saying so.
#[no_mangle]
pub unsafe extern "C" fn sandcell_error_message(error: *const Error) -> *const c_char {
    if error.is_null() {
        return c"(no error: NULL)".as_ptr();
    }
    if !is_live(error as usize, "error") {
        return c"(not a live sandcell_error_t: already freed, or not an error)".as_ptr();
    }
    // SAFETY: a live error (registered, not yet freed).
    unsafe { (*error).message.as_ptr() }
}

/// The error's kind (SANDCELL_ERROR_*); 0 for NULL or a freed error.
#[no_mangle]
pub unsafe extern "C" fn sandcell_error_kind(error: *const Error) -> u32 {
    if error.is_null() || !is_live(error as usize, "error") {
        return 0;
    }
    // SAFETY: a live error.
    unsafe { (*error).kind }
}

/// Frees an error (NULL, or an error already freed, is ignored).
#[no_mangle]
pub unsafe extern "C" fn sandcell_error_free(error: *mut Error) {
    // SAFETY: `release` checks the registry.
    let _ = catch_unwind(AssertUnwindSafe(|| unsafe { release(error, "error") }));
}

/// Frees a string the library handed out (NULL, or a string already freed, is ignored).
#[no_mangle]
pub unsafe extern "C" fn sandcell_string_free(s: *mut c_char) {
    let _ = catch_unwind(|| {
        let removed = LIVE
            .lock()
            .as_mut()
            .is_some_and(|m| m.get(&(s as usize)) == Some(&"string") && m.remove(&(s as usize)).is_some());
        if removed {
            // SAFETY: registered strings come from CString::into_raw and were just unregistered.
            drop(unsafe { CString::from_raw(s) });
        }
    });
}

/// The library's version, a static string.
#[no_mangle]
pub extern "C" fn sandcell_version() -> *const c_char {
    concat!(env!("CARGO_PKG_VERSION"), "\0").as_ptr().cast()
}

/// What this host supports, as JSON (`sandcell probe --json`). Free with sandcell_string_free().
#[no_mangle]
pub unsafe extern "C" fn sandcell_probe_json(json: *mut *mut c_char) -> *mut Error {
    guard(|| {
        let s = sandcell::probe().to_json();
        // SAFETY: checked out-parameter.
        unsafe { out_string(json, s, "json") }
    })
}

// ---------------------------------------------------------------------------------------------
// Policies.

/// A new policy with the defaults (512 MiB memory, 16 MiB per output stream, 64 processes, no
/// network, no mounts).
#[no_mangle]
pub unsafe extern "C" fn sandcell_policy_new(policy: *mut *mut Policy) -> *mut Error {
    guard(|| {
        let p = register(Policy(sandcell::Policy::default()), "policy");
        // SAFETY: checked out-parameter.
        unsafe { out(policy, p, "policy") }
    })
}

/// A policy from its JSON document (the schema of the README; unknown fields are refused).
#[no_mangle]
pub unsafe extern "C" fn sandcell_policy_from_json(json: *const c_char, policy: *mut *mut Policy) -> *mut Error {
    guard(|| {
        // SAFETY: checked string.
        let text = unsafe { string(json, "json")? };
        let parsed = sandcell::Policy::from_json(text).map_err(from_sandcell)?;
        if policy.is_null() {
            return Err(invalid("the out-parameter `policy` is NULL"));
        }
        let p = register(Policy(parsed), "policy");
        // SAFETY: checked out-parameter.
        unsafe { out(policy, p, "policy") }
    })
}

/// The policy as a JSON document. Free with sandcell_string_free().
#[no_mangle]
pub unsafe extern "C" fn sandcell_policy_to_json(policy: *const Policy, json: *mut *mut c_char) -> *mut Error {
    guard(|| {
        // SAFETY: checked handle and out-parameter.
        unsafe {
            let p = get(policy, "policy", "policy")?;
            out_string(json, p.0.to_json(), "json")
        }
    })
}

/// Applies `f` to a live policy.
unsafe fn edit_policy(policy: *mut Policy, f: impl FnOnce(&mut sandcell::Policy) -> Result<()>) -> *mut Error {
    guard(|| {
        // SAFETY: checked handle.
        f(&mut unsafe { get_mut(policy, "policy", "policy")? }.0)
    })
}

fn opt(v: u64) -> Option<u64> {
    (v != 0).then_some(v)
}

fn opt_ms(v: u64) -> Option<Duration> {
    (v != 0).then(|| Duration::from_millis(v))
}

/// Memory cap in bytes (0: no cap).
#[no_mangle]
pub unsafe extern "C" fn sandcell_policy_set_memory(policy: *mut Policy, bytes: u64) -> *mut Error {
    // SAFETY: `edit_policy` checks the handle.
    unsafe {
        edit_policy(policy, |p| {
            p.memory = opt(bytes);
            Ok(())
        })
    }
}

/// Wall-clock limit in milliseconds (0: none).
#[no_mangle]
pub unsafe extern "C" fn sandcell_policy_set_timeout_ms(policy: *mut Policy, ms: u64) -> *mut Error {
    // SAFETY: `edit_policy` checks the handle.
    unsafe {
        edit_policy(policy, |p| {
            p.timeout = opt_ms(ms);
            Ok(())
        })
    }
}

/// CPU-time limit in milliseconds (0: none).
#[no_mangle]
pub unsafe extern "C" fn sandcell_policy_set_cpu_time_ms(policy: *mut Policy, ms: u64) -> *mut Error {
    // SAFETY: `edit_policy` checks the handle.
    unsafe {
        edit_policy(policy, |p| {
            p.cpu_time = opt_ms(ms);
            Ok(())
        })
    }
}

/// Instruction budget for wasm guests (0: unmetered).
#[no_mangle]
pub unsafe extern "C" fn sandcell_policy_set_fuel(policy: *mut Policy, fuel: u64) -> *mut Error {
    // SAFETY: `edit_policy` checks the handle.
    unsafe {
        edit_policy(policy, |p| {
            p.fuel = opt(fuel);
            Ok(())
        })
    }
}

/// CPUs the guest may use (0: unset).
#[no_mangle]
pub unsafe extern "C" fn sandcell_policy_set_cpus(policy: *mut Policy, cpus: u32) -> *mut Error {
    // SAFETY: `edit_policy` checks the handle.
    unsafe {
        edit_policy(policy, |p| {
            p.cpus = (cpus != 0).then_some(cpus);
            Ok(())
        })
    }
}

/// Maximum processes (0: no limit).
#[no_mangle]
pub unsafe extern "C" fn sandcell_policy_set_max_processes(policy: *mut Policy, n: u32) -> *mut Error {
    // SAFETY: `edit_policy` checks the handle.
    unsafe {
        edit_policy(policy, |p| {
            p.max_processes = (n != 0).then_some(n);
            Ok(())
        })
    }
}

/// Maximum open files (0: no limit).
#[no_mangle]
pub unsafe extern "C" fn sandcell_policy_set_max_open_files(policy: *mut Policy, n: u64) -> *mut Error {
    // SAFETY: `edit_policy` checks the handle.
    unsafe {
        edit_policy(policy, |p| {
            p.max_open_files = opt(n);
            Ok(())
        })
    }
}

/// Maximum size of a file the guest writes (0: no limit).
#[no_mangle]
pub unsafe extern "C" fn sandcell_policy_set_max_file_size(policy: *mut Policy, bytes: u64) -> *mut Error {
    // SAFETY: `edit_policy` checks the handle.
    unsafe {
        edit_policy(policy, |p| {
            p.max_file_size = opt(bytes);
            Ok(())
        })
    }
}

/// Cap on each of stdout and stderr, in bytes.
#[no_mangle]
pub unsafe extern "C" fn sandcell_policy_set_max_output(policy: *mut Policy, bytes: u64) -> *mut Error {
    // SAFETY: `edit_policy` checks the handle.
    unsafe {
        edit_policy(policy, |p| {
            p.max_output = bytes;
            Ok(())
        })
    }
}

/// Run even when a field cannot be enforced (the outcome lists what was skipped).
#[no_mangle]
pub unsafe extern "C" fn sandcell_policy_set_best_effort(policy: *mut Policy, yes: bool) -> *mut Error {
    // SAFETY: `edit_policy` checks the handle.
    unsafe {
        edit_policy(policy, |p| {
            p.best_effort = yes;
            Ok(())
        })
    }
}

/// SANDCELL_NETWORK_NONE or SANDCELL_NETWORK_LOOPBACK.
#[no_mangle]
pub unsafe extern "C" fn sandcell_policy_set_network(policy: *mut Policy, network: u32) -> *mut Error {
    // SAFETY: `edit_policy` checks the handle.
    unsafe {
        edit_policy(policy, |p| {
            p.network = match network {
                SANDCELL_NETWORK_NONE => sandcell::Network::None,
                SANDCELL_NETWORK_LOOPBACK => sandcell::Network::Loopback,
                other => return Err(invalid(format!("unknown network policy {other}"))),
            };
            Ok(())
        })
    }
}

/// Process backend: the host directories mounted read-only so that dynamically linked programs
/// run (`count` paths; `count` 0 mounts none). Other backends refuse a non-empty list.
#[no_mangle]
pub unsafe extern "C" fn sandcell_policy_set_system_dirs(
    policy: *mut Policy,
    dirs: *const *const c_char,
    count: usize,
) -> *mut Error {
    guard(|| {
        // SAFETY: checked handle, array and strings.
        unsafe {
            let p = get_mut(policy, "policy", "policy")?;
            let list = if count == 0 {
                &[][..]
            } else {
                if dirs.is_null() {
                    return Err(invalid(format!("`dirs` is NULL but `count` is {count}")));
                }
                if count > isize::MAX as usize / std::mem::size_of::<*const c_char>() {
                    return Err(invalid("`count` overflows"));
                }
                std::slice::from_raw_parts(dirs, count)
            };
            let mut paths = Vec::with_capacity(list.len());
            for (i, d) in list.iter().enumerate() {
                paths.push(std::path::PathBuf::from(string(*d, &format!("dirs[{i}]"))?));
            }
            p.0.system_dirs = Some(paths);
        }
        Ok(())
    })
}

/// Process backend: back to the default system directories (/usr, /bin, /lib*, ...).
#[no_mangle]
pub unsafe extern "C" fn sandcell_policy_default_system_dirs(policy: *mut Policy) -> *mut Error {
    guard(|| {
        // SAFETY: checked handle.
        unsafe { get_mut(policy, "policy", "policy")? }.0.system_dirs = None;
        Ok(())
    })
}

/// Makes a host directory visible at `guest_path`, read-only unless `writable`.
#[no_mangle]
pub unsafe extern "C" fn sandcell_policy_add_mount(
    policy: *mut Policy,
    host_path: *const c_char,
    guest_path: *const c_char,
    writable: bool,
) -> *mut Error {
    guard(|| {
        // SAFETY: checked handle and strings.
        unsafe {
            let p = get_mut(policy, "policy", "policy")?;
            let host = string(host_path, "host_path")?;
            let guest = string(guest_path, "guest_path")?;
            p.0.mounts.push(sandcell::Mount { host: host.into(), guest: guest.into(), writable });
        }
        Ok(())
    })
}

/// Sets an environment variable of every program.
#[no_mangle]
pub unsafe extern "C" fn sandcell_policy_set_env(
    policy: *mut Policy,
    key: *const c_char,
    value: *const c_char,
) -> *mut Error {
    guard(|| {
        // SAFETY: checked handle and strings.
        unsafe {
            let p = get_mut(policy, "policy", "policy")?;
            p.0.env.insert(string(key, "key")?.to_owned(), string(value, "value")?.to_owned());
        }
        Ok(())
    })
}

/// Denies a system call (by name) on top of the process backend's allow-list.
#[no_mangle]
pub unsafe extern "C" fn sandcell_policy_deny_syscall(policy: *mut Policy, name: *const c_char) -> *mut Error {
    guard(|| {
        // SAFETY: checked handle and string.
        unsafe {
            let p = get_mut(policy, "policy", "policy")?;
            p.0.deny_syscalls.push(string(name, "name")?.to_owned());
        }
        Ok(())
    })
}

/// Checks the policy now (sandcell_sandbox_new() checks it too).
#[no_mangle]
pub unsafe extern "C" fn sandcell_policy_validate(policy: *const Policy) -> *mut Error {
    guard(|| {
        // SAFETY: checked handle.
        let p = unsafe { get(policy, "policy", "policy")? };
        p.0.validate().map_err(from_sandcell)
    })
}

/// Frees a policy (NULL is fine).
#[no_mangle]
pub unsafe extern "C" fn sandcell_policy_free(policy: *mut Policy) {
    // SAFETY: `release` checks the registry.
    let _ = catch_unwind(AssertUnwindSafe(|| unsafe { release(policy, "policy") }));
}

// ---------------------------------------------------------------------------------------------
// Programs.

/// A program read from a file (for the process backend: a path inside the sandbox).
#[no_mangle]
pub unsafe extern "C" fn sandcell_program_from_path(path: *const c_char, program: *mut *mut Program) -> *mut Error {
    guard(|| {
        // SAFETY: checked string and out-parameter.
        unsafe {
            let path = string(path, "path")?;
            if program.is_null() {
                return Err(invalid("the out-parameter `program` is NULL"));
            }
            out(program, register(Program(sandcell::Program::path(path)), "program"), "program")
        }
    })
}

/// A program given as bytes (a wasm module, WAT text, or a micro-VM guest ELF).
#[no_mangle]
pub unsafe extern "C" fn sandcell_program_from_bytes(
    data: *const u8,
    len: usize,
    program: *mut *mut Program,
) -> *mut Error {
    guard(|| {
        // SAFETY: checked buffer and out-parameter.
        unsafe {
            let data = bytes(data, len, "data")?;
            if program.is_null() {
                return Err(invalid("the out-parameter `program` is NULL"));
            }
            out(program, register(Program(sandcell::Program::bytes(data.to_vec())), "program"), "program")
        }
    })
}

/// Replaces the program by `f(program)`; `f` has already checked its own arguments.
unsafe fn edit_program(program: *mut Program, f: impl FnOnce(sandcell::Program) -> sandcell::Program) -> Result<()> {
    // SAFETY: checked handle.
    let p = unsafe { get_mut(program, "program", "program")? };
    let taken = std::mem::replace(&mut p.0, sandcell::Program::bytes(Vec::new()));
    p.0 = f(taken);
    Ok(())
}

/// Appends an argument.
#[no_mangle]
pub unsafe extern "C" fn sandcell_program_add_arg(program: *mut Program, arg: *const c_char) -> *mut Error {
    guard(|| {
        // SAFETY: checked string and handle.
        unsafe {
            let arg = string(arg, "arg")?;
            edit_program(program, |p| p.arg(arg))
        }
    })
}

/// Sets an environment variable of the program (it wins over the policy's). Names with `=` or
/// NUL are refused when the program runs.
#[no_mangle]
pub unsafe extern "C" fn sandcell_program_set_env(
    program: *mut Program,
    key: *const c_char,
    value: *const c_char,
) -> *mut Error {
    guard(|| {
        // SAFETY: checked strings and handle.
        unsafe {
            let key = string(key, "key")?;
            let value = string(value, "value")?;
            edit_program(program, |p| p.env(key, value))
        }
    })
}

/// Sets the bytes the program reads from stdin (copied).
#[no_mangle]
pub unsafe extern "C" fn sandcell_program_set_stdin(program: *mut Program, data: *const u8, len: usize) -> *mut Error {
    guard(|| {
        // SAFETY: checked buffer and handle.
        unsafe {
            let data = bytes(data, len, "data")?;
            edit_program(program, |p| p.stdin(data.to_vec()))
        }
    })
}

/// Sets the working directory inside the sandbox (process backend).
#[no_mangle]
pub unsafe extern "C" fn sandcell_program_set_cwd(program: *mut Program, dir: *const c_char) -> *mut Error {
    guard(|| {
        // SAFETY: checked string and handle.
        unsafe {
            let dir = string(dir, "dir")?;
            edit_program(program, |p| p.cwd(dir))
        }
    })
}

/// Sets the program's name as it sees it (argv[0]); by default the file name, or `main` for bytes.
#[no_mangle]
pub unsafe extern "C" fn sandcell_program_set_name(program: *mut Program, name: *const c_char) -> *mut Error {
    guard(|| {
        // SAFETY: checked string and handle.
        unsafe {
            let name = string(name, "name")?;
            edit_program(program, |p| p.name(name))
        }
    })
}

/// Calls this wasm export instead of `_start`; the program's arguments become its parameters.
#[no_mangle]
pub unsafe extern "C" fn sandcell_program_set_entry(program: *mut Program, export_name: *const c_char) -> *mut Error {
    guard(|| {
        // SAFETY: checked string and handle.
        unsafe {
            let name = string(export_name, "export_name")?;
            edit_program(program, |p| p.entry(name))
        }
    })
}

/// Frees a program (NULL is fine).
#[no_mangle]
pub unsafe extern "C" fn sandcell_program_free(program: *mut Program) {
    // SAFETY: `release` checks the registry.
    let _ = catch_unwind(AssertUnwindSafe(|| unsafe { release(program, "program") }));
}

// ---------------------------------------------------------------------------------------------
// Sandboxes and runs.

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
            out(sandbox, register(Sandbox(built), "sandbox"), "sandbox")
        }
    })
}

struct CallbackSink {
    f: unsafe extern "C" fn(*mut c_void, u32, *const u8, usize),
    user_data: *mut c_void,
}

// SAFETY: the callback is only called on the thread that called `sandcell_sandbox_run`, during
// that call, as the header documents; the pointer is the caller's.
unsafe impl Send for CallbackSink {}

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
        // SAFETY: checked handles and out-parameter; `options` is read only if non-NULL.
        unsafe {
            let sb = get(sandbox, "sandbox", "sandbox")?;
            let prog = get(program, "program", "program")?;
            if outcome.is_null() {
                return Err(invalid("the out-parameter `outcome` is NULL"));
            }
            let mut run_options = sandcell::RunOptions::new();
            if !options.is_null() {
                let o = &*options;
                if let Some(f) = o.on_output {
                    let sink = CallbackSink { f, user_data: o.user_data };
                    run_options = run_options.on_output(move |stream, data| {
                        let s = match stream {
                            sandcell::Stream::Stdout => SANDCELL_STREAM_STDOUT,
                            sandcell::Stream::Stderr => SANDCELL_STREAM_STDERR,
                        };
                        let sink = &sink;
                        // SAFETY: the caller's callback, with its own user data.
                        (sink.f)(sink.user_data, s, data.as_ptr(), data.len());
                    });
                }
                if !o.interrupt.is_null() {
                    run_options = run_options.interrupt(get(o.interrupt, "interrupt", "options->interrupt")?.0.clone());
                }
            }
            let result = sb.0.run_with(&prog.0, run_options).map_err(from_sandcell)?;
            let detail = result.status.detail().map(|d| CString::new(d.replace('\0', " ")).unwrap_or_default());
            out(outcome, register(Outcome { inner: result, detail }, "outcome"), "outcome")
        }
    })
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

// ---------------------------------------------------------------------------------------------
// Interrupt handles.

/// A new interrupt handle for runs (pass it in sandcell_run_options_t). Once triggered it stays
/// triggered: a run started with it afterwards ends at once.
#[no_mangle]
pub unsafe extern "C" fn sandcell_interrupt_new(interrupt: *mut *mut Interrupt) -> *mut Error {
    guard(|| {
        if interrupt.is_null() {
            return Err(invalid("the out-parameter `interrupt` is NULL"));
        }
        // SAFETY: checked out-parameter.
        unsafe { out(interrupt, register(Interrupt(sandcell::InterruptHandle::new()), "interrupt"), "interrupt") }
    })
}

/// Stops the runs attached to the handle. Any thread.
#[no_mangle]
pub unsafe extern "C" fn sandcell_interrupt_trigger(interrupt: *const Interrupt) -> *mut Error {
    guard(|| {
        // SAFETY: checked handle.
        let i = unsafe { get(interrupt, "interrupt", "interrupt")? };
        i.0.interrupt();
        Ok(())
    })
}

/// Frees an interrupt handle (NULL is fine).
#[no_mangle]
pub unsafe extern "C" fn sandcell_interrupt_free(interrupt: *mut Interrupt) {
    // SAFETY: `release` checks the registry.
    let _ = catch_unwind(AssertUnwindSafe(|| unsafe { release(interrupt, "interrupt") }));
}

// ---------------------------------------------------------------------------------------------
// Outcomes.

fn status_code(status: &sandcell::Status) -> (u32, i32) {
    match status {
        sandcell::Status::Exited(c) => (SANDCELL_STATUS_EXITED, *c),
        sandcell::Status::Timeout => (SANDCELL_STATUS_TIMEOUT, 0),
        sandcell::Status::MemoryLimit => (SANDCELL_STATUS_MEMORY_LIMIT, 0),
        sandcell::Status::CpuLimit(_) => (SANDCELL_STATUS_CPU_LIMIT, 0),
        sandcell::Status::OutputLimit => (SANDCELL_STATUS_OUTPUT_LIMIT, 0),
        sandcell::Status::Signaled(sig) => (SANDCELL_STATUS_SIGNALED, *sig),
        sandcell::Status::Trap(_) => (SANDCELL_STATUS_TRAP, 0),
        sandcell::Status::SyscallDenied(_) => (SANDCELL_STATUS_SYSCALL_DENIED, 0),
        sandcell::Status::Interrupted => (SANDCELL_STATUS_INTERRUPTED, 0),
        _ => (0, 0),
    }
}

fn trap_name(status: &sandcell::Status) -> *const c_char {
    match status {
        sandcell::Status::Trap(t) => static_name(t.kind.name()),
        _ => std::ptr::null(),
    }
}

fn usage_of(u: &sandcell::Usage) -> Usage {
    Usage {
        wall_ns: u.wall.as_nanos() as u64,
        cpu_ns: u.cpu.as_nanos() as u64,
        peak_memory_bytes: u.peak_memory_bytes,
        fuel: u.fuel.unwrap_or(0),
        has_fuel: u.fuel.is_some(),
    }
}

/// Everything about the outcome in one call (see sandcell_outcome_summary_t).
#[no_mangle]
pub unsafe extern "C" fn sandcell_outcome_summary(outcome: *const Outcome, summary: *mut Summary) -> *mut Error {
    guard(|| {
        // SAFETY: checked handle and out-parameter.
        unsafe {
            let o = get(outcome, "outcome", "outcome")?;
            let (status, code) = status_code(&o.inner.status);
            out(
                summary,
                Summary {
                    status,
                    code,
                    kind: static_name(o.inner.status.kind()),
                    trap_kind: trap_name(&o.inner.status),
                    detail: o.detail.as_ref().map_or(std::ptr::null(), |d| d.as_ptr()),
                    stdout_data: o.inner.stdout.as_ptr(),
                    stdout_len: o.inner.stdout.len(),
                    stderr_data: o.inner.stderr.as_ptr(),
                    stderr_len: o.inner.stderr.len(),
                    usage: usage_of(&o.inner.usage),
                },
                "summary",
            )
        }
    })
}

/// How the run ended (SANDCELL_STATUS_*), and a number: the exit code (EXITED), the signal
/// (SIGNALED), 0 otherwise.
#[no_mangle]
pub unsafe extern "C" fn sandcell_outcome_status(
    outcome: *const Outcome,
    status: *mut u32,
    code: *mut i32,
) -> *mut Error {
    guard(|| {
        // SAFETY: checked handle and out-parameters.
        unsafe {
            let o = get(outcome, "outcome", "outcome")?;
            let (s, c) = status_code(&o.inner.status);
            out(status, s, "status")?;
            if !code.is_null() {
                code.write(c);
            }
            Ok(())
        }
    })
}

/// How the run ended, as the snake_case name of the JSON contract ("exited", "timeout",
/// "memory_limit", "cpu_limit", "output_limit", "signaled", "trap", "syscall_denied",
/// "interrupted"; a later version may add names). A static string.
#[no_mangle]
pub unsafe extern "C" fn sandcell_outcome_kind(outcome: *const Outcome, kind: *mut *const c_char) -> *mut Error {
    guard(|| {
        // SAFETY: checked handle and out-parameter.
        unsafe {
            let o = get(outcome, "outcome", "outcome")?;
            out(kind, static_name(o.inner.status.kind()), "kind")
        }
    })
}

/// For a trap, its kind ("unreachable", "memory_out_of_bounds", "stack_overflow", ...; a static
/// string); NULL for any other status.
#[no_mangle]
pub unsafe extern "C" fn sandcell_outcome_trap_kind(
    outcome: *const Outcome,
    trap_kind: *mut *const c_char,
) -> *mut Error {
    guard(|| {
        // SAFETY: checked handle and out-parameter.
        unsafe {
            let o = get(outcome, "outcome", "outcome")?;
            out(trap_kind, trap_name(&o.inner.status), "trap_kind")
        }
    })
}

/// Detail of the status (trap kind and message, signal name, denied system call), or NULL when
/// there is none. Valid until the outcome is freed.
#[no_mangle]
pub unsafe extern "C" fn sandcell_outcome_detail(outcome: *const Outcome, detail: *mut *const c_char) -> *mut Error {
    guard(|| {
        // SAFETY: checked handle and out-parameter.
        unsafe {
            let o = get(outcome, "outcome", "outcome")?;
            out(detail, o.detail.as_ref().map_or(std::ptr::null(), |d| d.as_ptr()), "detail")
        }
    })
}

/// The captured bytes of a stream (SANDCELL_STREAM_STDOUT or _STDERR). Valid until the outcome
/// is freed; not NUL-terminated.
#[no_mangle]
pub unsafe extern "C" fn sandcell_outcome_output(
    outcome: *const Outcome,
    stream: u32,
    data: *mut *const u8,
    len: *mut usize,
) -> *mut Error {
    guard(|| {
        // SAFETY: checked handle and out-parameters.
        unsafe {
            let o = get(outcome, "outcome", "outcome")?;
            let buf = match stream {
                SANDCELL_STREAM_STDOUT => &o.inner.stdout,
                SANDCELL_STREAM_STDERR => &o.inner.stderr,
                other => return Err(invalid(format!("unknown stream {other}"))),
            };
            if data.is_null() || len.is_null() {
                return Err(invalid("the out-parameters `data` and `len` must not be NULL"));
            }
            data.write(buf.as_ptr());
            len.write(buf.len());
            Ok(())
        }
    })
}

/// What the run consumed.
#[no_mangle]
pub unsafe extern "C" fn sandcell_outcome_usage(outcome: *const Outcome, usage: *mut Usage) -> *mut Error {
    guard(|| {
        // SAFETY: checked handle and out-parameter.
        unsafe {
            let o = get(outcome, "outcome", "outcome")?;
            out(usage, usage_of(&o.inner.usage), "usage")
        }
    })
}

/// The outcome as the CLI's `--json` object. Free with sandcell_string_free().
#[no_mangle]
pub unsafe extern "C" fn sandcell_outcome_to_json(outcome: *const Outcome, json: *mut *mut c_char) -> *mut Error {
    guard(|| {
        // SAFETY: checked handle and out-parameter.
        unsafe {
            let o = get(outcome, "outcome", "outcome")?;
            out_string(json, o.inner.to_json(), "json")
        }
    })
}

/// Frees an outcome (NULL is fine).
#[no_mangle]
pub unsafe extern "C" fn sandcell_outcome_free(outcome: *mut Outcome) {
    // SAFETY: `release` checks the registry.
    let _ = catch_unwind(AssertUnwindSafe(|| unsafe { release(outcome, "outcome") }));
}
