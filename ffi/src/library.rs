//! The library itself: its version, its ABI version, and what the host supports.

use std::ffi::c_char;

use crate::consts::SANDCELL_ABI_VERSION;
use crate::error::{guard, Error};
use crate::util::out_string;

/// The loaded library's version, "MAJOR.MINOR.PATCH", a static string.
#[no_mangle]
pub extern "C" fn sandcell_version() -> *const c_char {
    concat!(env!("CARGO_PKG_VERSION"), "\0").as_ptr().cast()
}

/// The loaded library's ABI version: SANDCELL_ABI_VERSION of the header it was built with. A
/// program built against a header with another SANDCELL_ABI_VERSION must not use it (the SONAME,
/// libsandcell.so.N, keeps the dynamic linker from loading it; a library opened with dlopen() by
/// path should be checked with this function).
#[no_mangle]
pub extern "C" fn sandcell_abi_version() -> u32 {
    SANDCELL_ABI_VERSION
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
