//! The registry of live handles. Every object handed to the caller is registered under its
//! address and type until it is freed, so that a freed, foreign or mistyped pointer is refused
//! instead of dereferenced.

use std::collections::HashMap;

use parking_lot::Mutex;

use crate::error::{invalid, Result};

static LIVE: Mutex<Option<HashMap<usize, &'static str>>> = Mutex::new(None);

/// Records `addr` as a live object of type `kind`.
pub(crate) fn track(addr: usize, kind: &'static str) {
    LIVE.lock().get_or_insert_with(HashMap::new).insert(addr, kind);
}

/// Forgets `addr` if it is a live object of type `kind`; returns whether it was.
pub(crate) fn untrack(addr: usize, kind: &'static str) -> bool {
    let mut live = LIVE.lock();
    match live.as_mut() {
        Some(m) if m.get(&addr) == Some(&kind) => m.remove(&addr).is_some(),
        _ => false,
    }
}

/// Moves `value` to the heap and registers it as a live `kind`.
pub(crate) fn register<T>(value: T, kind: &'static str) -> *mut T {
    let ptr = Box::into_raw(Box::new(value));
    track(ptr as usize, kind);
    ptr
}

pub(crate) fn is_live(ptr: usize, kind: &'static str) -> bool {
    LIVE.lock().as_ref().and_then(|m| m.get(&ptr)).is_some_and(|k| *k == kind)
}

/// Checks that `ptr` is a live handle of type `kind`.
pub(crate) fn check<T>(ptr: *const T, kind: &'static str, name: &str) -> Result<()> {
    if ptr.is_null() {
        return Err(invalid(format!("`{name}` is NULL")));
    }
    if !is_live(ptr as usize, kind) {
        return Err(invalid(format!("`{name}` is not a live {kind} (already freed, or not one)")));
    }
    Ok(())
}

/// Borrows a live handle of type `kind`.
pub(crate) unsafe fn get<'a, T>(ptr: *const T, kind: &'static str, name: &str) -> Result<&'a T> {
    check(ptr, kind, name)?;
    // SAFETY: registered pointers come from Box::into_raw of a `T` and are unregistered before
    // they are freed.
    Ok(unsafe { &*ptr })
}

/// Mutably borrows a live handle of type `kind`.
pub(crate) unsafe fn get_mut<'a, T>(ptr: *mut T, kind: &'static str, name: &str) -> Result<&'a mut T> {
    check(ptr, kind, name)?;
    // SAFETY: as `get`; the header forbids modifying an object from two threads at once.
    Ok(unsafe { &mut *ptr })
}

/// Frees a live handle; NULL, a freed or a foreign pointer is ignored.
pub(crate) unsafe fn release<T>(ptr: *mut T, kind: &'static str) {
    if ptr.is_null() {
        return;
    }
    if untrack(ptr as usize, kind) {
        // SAFETY: the pointer came from Box::into_raw and was just unregistered.
        drop(unsafe { Box::from_raw(ptr) });
    }
}
