//! Interrupt handles: stop runs from another thread.

use std::collections::HashMap;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;

use parking_lot::Mutex;

use crate::error::{guard, invalid, Error};
use crate::handle::{get, register, release};
use crate::util::out;

/// Stops runs from another thread.
pub struct Interrupt {
    handle: sandcell::InterruptHandle,
    /// The own handles of the runs that can also stop themselves (an `on_output2` callback). A
    /// run is attached to one handle besides its sandbox's, so such a run gets its own handle,
    /// linked here while it runs: triggering this handle triggers it too. Shared with the runs'
    /// [`Link`]s, so that freeing this handle during such a run is as safe as during another.
    linked: Arc<Mutex<Linked>>,
}

#[derive(Default)]
struct Linked {
    next: u64,
    runs: HashMap<u64, sandcell::InterruptHandle>,
}

impl Interrupt {
    fn new() -> Self {
        Interrupt { handle: sandcell::InterruptHandle::new(), linked: Arc::default() }
    }

    /// The handle to attach a run to.
    pub(crate) fn handle(&self) -> &sandcell::InterruptHandle {
        &self.handle
    }

    /// Stops the runs attached to this handle and those linked to it.
    fn trigger(&self) {
        self.handle.interrupt();
        let linked: Vec<sandcell::InterruptHandle> = self.linked.lock().runs.values().cloned().collect();
        for run in linked {
            run.interrupt();
        }
    }

    /// Links a run's own handle to this one until the returned guard is dropped. If this handle
    /// was triggered already, `run` is triggered at once (it stays triggered, as this one does).
    pub(crate) fn link(&self, run: &sandcell::InterruptHandle) -> Link {
        let id = {
            let mut linked = self.linked.lock();
            let id = linked.next;
            linked.next += 1;
            linked.runs.insert(id, run.clone());
            id
        };
        // Checked after linking: a trigger that ran before the link is seen here, one that runs
        // after it finds the link.
        if self.handle.is_interrupted() {
            run.interrupt();
        }
        Link { linked: self.linked.clone(), id }
    }
}

/// Unlinks a run's handle when dropped (see [`Interrupt::link`]).
pub(crate) struct Link {
    linked: Arc<Mutex<Linked>>,
    id: u64,
}

impl Drop for Link {
    fn drop(&mut self) {
        self.linked.lock().runs.remove(&self.id);
    }
}

/// A new interrupt handle for runs (pass it in sandcell_run_options_t). Once triggered it stays
/// triggered: a run started with it afterwards ends at once.
#[no_mangle]
pub unsafe extern "C" fn sandcell_interrupt_new(interrupt: *mut *mut Interrupt) -> *mut Error {
    guard(|| {
        if interrupt.is_null() {
            return Err(invalid("the out-parameter `interrupt` is NULL"));
        }
        // SAFETY: checked out-parameter.
        unsafe { out(interrupt, register(Interrupt::new(), "interrupt"), "interrupt") }
    })
}

/// Stops the runs attached to the handle. Any thread.
#[no_mangle]
pub unsafe extern "C" fn sandcell_interrupt_trigger(interrupt: *const Interrupt) -> *mut Error {
    guard(|| {
        // SAFETY: checked handle.
        let i = unsafe { get(interrupt, "interrupt", "interrupt")? };
        i.trigger();
        Ok(())
    })
}

/// Frees an interrupt handle (NULL is fine).
#[no_mangle]
pub unsafe extern "C" fn sandcell_interrupt_free(interrupt: *mut Interrupt) {
    // SAFETY: `release` checks the registry.
    let _ = catch_unwind(AssertUnwindSafe(|| unsafe { release(interrupt, "interrupt") }));
}
