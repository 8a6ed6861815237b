//! Error objects: how a failure (or a caught panic) becomes a `sandcell_error_t`, and the
//! functions that read and free one.

use std::ffi::{c_char, CString};
use std::panic::{catch_unwind, AssertUnwindSafe};

use crate::consts::*;
use crate::handle::{is_live, register, release};

/// An error: a kind and a message.
pub struct Error {
    kind: u32,
    message: CString,
}

/// An error object of `kind`.
pub(crate) fn err(kind: u32, message: impl Into<String>) -> Box<Error> {
    let message = message.into().replace('\0', " ");
    Box::new(Error { kind, message: CString::new(message).unwrap_or_default() })
}

/// A SANDCELL_ERROR_INVALID_ARGUMENT error.
pub(crate) fn invalid(what: impl Into<String>) -> Box<Error> {
    err(SANDCELL_ERROR_INVALID_ARGUMENT, what)
}

pub(crate) type Result<T> = std::result::Result<T, Box<Error>>;

/// The error object of a library error: its kind mapped, its causes in the message.
pub(crate) fn from_sandcell(e: sandcell::Error) -> Box<Error> {
    let kind = match e.kind() {
        sandcell::ErrorKind::InvalidPolicy => SANDCELL_ERROR_INVALID_POLICY,
        sandcell::ErrorKind::Unenforceable => SANDCELL_ERROR_UNENFORCEABLE,
        sandcell::ErrorKind::BackendUnavailable => SANDCELL_ERROR_BACKEND_UNAVAILABLE,
        sandcell::ErrorKind::InvalidProgram => SANDCELL_ERROR_INVALID_PROGRAM,
        _ => SANDCELL_ERROR_HOST,
    };
    err(kind, e.to_string_with_causes())
}

/// Runs `f`, turning an error or a panic into an error object.
pub(crate) fn guard(f: impl FnOnce() -> Result<()>) -> *mut Error {
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
