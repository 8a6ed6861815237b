//! Extensible structs: the structs a caller passes by pointer start with `size_t size`, which the
//! caller sets to `sizeof` the struct as its header declares it. That lets either side be newer:
//!
//! - a `size` smaller than the struct's first version (the fields it has had since the `size`
//!   field exists) is refused with SANDCELL_ERROR_INVALID_ARGUMENT — typically a caller that did
//!   not set it;
//! - a larger `size` comes from a caller built against a newer header: the fields this library
//!   does not know are ignored;
//! - the library reads and writes only the first `min(size, sizeof)` bytes, and on a struct it
//!   fills in sets `size` to the number of bytes it wrote (as Linux's `sched_getattr` does), so a
//!   newer caller can tell which fields an older library left alone.
//!
//! Fields are only ever appended; [`Extensible::MIN_SIZE`] stays what it is today.

use std::mem::{size_of, MaybeUninit};

use crate::error::{invalid, Result};

/// A `#[repr(C)]` struct whose first field is `size: usize`.
///
/// # Safety
///
/// The implementing type is `#[repr(C)]`, starts with a `usize` field at offset 0, and is valid
/// when all its bytes are zero. A type given to [`read`] must also be valid with any bytes the
/// caller wrote into its fields: integers, raw pointers, optional function pointers (no `bool`,
/// no enums).
pub(crate) unsafe trait Extensible: Copy {
    /// The name of the C type, for messages.
    const C_NAME: &'static str;
    /// The end of the last field of the first version of the struct: callers pass at least this.
    const MIN_SIZE: usize;
}

/// Checks the caller's `size` field.
fn check_size<T: Extensible>(size: usize, name: &str) -> Result<usize> {
    if size < T::MIN_SIZE {
        return Err(invalid(format!(
            "`{name}->size` is {size}: set it to sizeof({}) (at least {} bytes)",
            T::C_NAME,
            T::MIN_SIZE
        )));
    }
    Ok(size.min(size_of::<T>()))
}

/// Reads the caller's struct at `ptr` (not NULL): the fields within its `size`; fields of this
/// library's version beyond it are zero.
pub(crate) unsafe fn read<T: Extensible>(ptr: *const T, name: &str) -> Result<T> {
    // SAFETY: the caller passes a readable struct that starts with its size.
    let size = unsafe { ptr.cast::<usize>().read() };
    let n = check_size::<T>(size, name)?;
    let mut value = MaybeUninit::<T>::zeroed();
    // SAFETY: the caller's struct has at least `n` readable bytes (its `size`), `value` has
    // `size_of::<T>() >= n`; they do not overlap.
    unsafe { std::ptr::copy_nonoverlapping(ptr.cast::<u8>(), value.as_mut_ptr().cast::<u8>(), n) };
    // SAFETY: all-zero bytes are a valid `T`, and the first `n` bytes are the caller's values of
    // the same fields (the trait's contract).
    Ok(unsafe { value.assume_init() })
}

/// Writes `value` into the caller's struct at `ptr`: only within the caller's `size`, which is
/// then set to the number of bytes written. Returns that number.
pub(crate) unsafe fn write<T: Extensible>(ptr: *mut T, value: T, name: &str) -> Result<usize> {
    if ptr.is_null() {
        return Err(invalid(format!("the out-parameter `{name}` is NULL")));
    }
    // SAFETY: the caller passes a writable struct that starts with its size.
    let size = unsafe { ptr.cast::<usize>().read() };
    let n = check_size::<T>(size, name)?;
    // SAFETY: `n` bytes are writable (the caller's size) and readable from `value`; a byte copy
    // of a `Copy` value.
    unsafe {
        std::ptr::copy_nonoverlapping((&value as *const T).cast::<u8>(), ptr.cast::<u8>(), n);
        ptr.cast::<usize>().write(n);
    }
    Ok(n)
}
