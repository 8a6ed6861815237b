//! Outcomes: how a run ended, its output and what it consumed.

use std::ffi::{c_char, CString};
use std::mem::{offset_of, size_of};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::ptr::addr_of_mut;

use crate::consts::*;
use crate::error::{guard, invalid, Error};
use crate::extensible::{self, Extensible};
use crate::handle::{get, release};
use crate::util::{out, out_string, static_name};

/// The result of a run.
pub struct Outcome {
    pub(crate) inner: sandcell::Outcome,
    pub(crate) detail: Option<CString>,
}

/// What a run consumed. Set `size` before passing it to sandcell_outcome_usage():
/// `sandcell_usage_t usage = {.size = sizeof(sandcell_usage_t)};`
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Usage {
    /// sizeof(sandcell_usage_t), set by the caller; the library sets it to the number of bytes it
    /// wrote (see EXTENSIBLE STRUCTS at the top).
    pub size: usize,
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
/// pointer stays valid until the outcome is freed. Set `size` before passing it:
/// `sandcell_outcome_summary_t summary = {.size = sizeof(sandcell_outcome_summary_t)};`
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Summary {
    /// sizeof(sandcell_outcome_summary_t), set by the caller; the library sets it to the number of
    /// bytes it wrote (see EXTENSIBLE STRUCTS at the top).
    pub size: usize,
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
    /// What the run consumed (the library sets `usage.size` to the bytes of it written).
    pub usage: Usage,
    // Fields added later go here, after `usage`; `sandcell_usage_t` can then no longer grow (its
    // new figures would go here instead).
}

const _: () = assert!(offset_of!(Usage, size) == 0 && offset_of!(Summary, size) == 0);

// SAFETY: repr(C), `size` first, valid all-zero; only written, never read from the caller.
unsafe impl Extensible for Usage {
    const C_NAME: &'static str = "sandcell_usage_t";
    const MIN_SIZE: usize = offset_of!(Usage, has_fuel) + size_of::<bool>();
}

// SAFETY: as for `Usage`.
unsafe impl Extensible for Summary {
    const C_NAME: &'static str = "sandcell_outcome_summary_t";
    const MIN_SIZE: usize = offset_of!(Summary, usage) + Usage::MIN_SIZE;
}

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
        size: size_of::<Usage>(),
        wall_ns: u.wall.as_nanos() as u64,
        cpu_ns: u.cpu.as_nanos() as u64,
        peak_memory_bytes: u.peak_memory_bytes,
        fuel: u.fuel.unwrap_or(0),
        has_fuel: u.fuel.is_some(),
    }
}

/// Everything about the outcome in one call (see sandcell_outcome_summary_t; set its `size`).
#[no_mangle]
pub unsafe extern "C" fn sandcell_outcome_summary(outcome: *const Outcome, summary: *mut Summary) -> *mut Error {
    guard(|| {
        // SAFETY: checked handle and out-parameter.
        unsafe {
            let o = get(outcome, "outcome", "outcome")?;
            let (status, code) = status_code(&o.inner.status);
            let written = extensible::write(
                summary,
                Summary {
                    size: size_of::<Summary>(),
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
            )?;
            // The nested usage's size: the bytes of it written (all of it, unless the caller's
            // struct is of an older version that ends within it).
            let usage_written = written.saturating_sub(offset_of!(Summary, usage)).min(size_of::<Usage>());
            addr_of_mut!((*summary).usage.size).write(usage_written);
            Ok(())
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

/// What the run consumed (set `usage->size` first).
#[no_mangle]
pub unsafe extern "C" fn sandcell_outcome_usage(outcome: *const Outcome, usage: *mut Usage) -> *mut Error {
    guard(|| {
        // SAFETY: checked handle and out-parameter.
        unsafe {
            let o = get(outcome, "outcome", "outcome")?;
            extensible::write(usage, usage_of(&o.inner.usage), "usage")?;
            Ok(())
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
