//! Moving values across the boundary: strings and buffers in, out-parameters and strings out,
//! the library's static names, and `sandcell_string_free`.

use std::ffi::{c_char, CStr, CString};
use std::panic::catch_unwind;

use parking_lot::Mutex;

use crate::error::{invalid, Result};
use crate::handle::{track, untrack};

/// Borrows a NUL-terminated UTF-8 string argument.
pub(crate) unsafe fn string<'a>(ptr: *const c_char, name: &str) -> Result<&'a str> {
    if ptr.is_null() {
        return Err(invalid(format!("`{name}` is NULL")));
    }
    // SAFETY: the caller passes a NUL-terminated string.
    unsafe { CStr::from_ptr(ptr) }.to_str().map_err(|_| invalid(format!("`{name}` is not valid UTF-8")))
}

/// Borrows a buffer argument of `len` bytes (NULL is fine when `len` is 0).
pub(crate) unsafe fn bytes<'a>(ptr: *const u8, len: usize, name: &str) -> Result<&'a [u8]> {
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

/// Writes `value` through an out-parameter.
pub(crate) unsafe fn out<T>(ptr: *mut T, value: T, name: &str) -> Result<()> {
    if ptr.is_null() {
        return Err(invalid(format!("the out-parameter `{name}` is NULL")));
    }
    // SAFETY: the caller passes a writable location.
    unsafe { ptr.write(value) };
    Ok(())
}

/// Hands a string to the caller through `ptr` (checked first, so nothing leaks).
pub(crate) unsafe fn out_string(ptr: *mut *mut c_char, s: String, name: &str) -> Result<()> {
    if ptr.is_null() {
        return Err(invalid(format!("the out-parameter `{name}` is NULL")));
    }
    let s = CString::new(s.replace('\0', " ")).unwrap_or_default().into_raw();
    track(s as usize, "string");
    // SAFETY: checked above; the caller passes a writable location.
    unsafe { ptr.write(s) };
    Ok(())
}

/// A NUL-terminated copy of one of the library's static names, kept for the life of the process
/// (there are a few dozen names, each interned once).
pub(crate) fn static_name(name: &'static str) -> *const c_char {
    static NAMES: Mutex<Vec<(&'static str, &'static CStr)>> = Mutex::new(Vec::new());
    let mut names = NAMES.lock();
    if let Some((_, c)) = names.iter().find(|(n, _)| *n == name) {
        return c.as_ptr();
    }
    let c: &'static CStr = Box::leak(CString::new(name).unwrap_or_default().into_boxed_c_str());
    names.push((name, c));
    c.as_ptr()
}

/// Frees a string the library handed out (NULL, or a string already freed, is ignored).
#[no_mangle]
pub unsafe extern "C" fn sandcell_string_free(s: *mut c_char) {
    let _ = catch_unwind(|| {
        if untrack(s as usize, "string") {
            // SAFETY: registered strings come from CString::into_raw and were just unregistered.
            drop(unsafe { CString::from_raw(s) });
        }
    });
}
