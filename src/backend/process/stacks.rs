//! Stacks for the jail's processes, which share the host's memory until the program executes:
//! the jail's init (pid 1 of the run) and pid 2 before its `execve`. Each stack has a guard page
//! below it. Stacks are pooled (a run's stacks are mapped once and reused by later runs) and
//! only go back to the pool once the process that ran on them has been reaped.

use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::{Arc, Mutex};

use super::sys::{self, Stack};

/// The init's stack: its setup keeps a few small arrays (descriptors of up to 64 bind mounts,
/// messages); 256 KiB leaves ample room, and only the pages used are ever backed.
const INIT_STACK: usize = 256 << 10;

/// The two stacks of one run.
pub(super) struct Stacks {
    pub(super) init: Stack,
    pub(super) program: Stack,
}

impl Stacks {
    fn new() -> std::io::Result<Stacks> {
        Ok(Stacks { init: Stack::new(INIT_STACK)?, program: Stack::new(sys::SPAWN_STACK)? })
    }
}

static POOL: Mutex<Vec<Stacks>> = Mutex::new(Vec::new());

/// How many pairs the pool keeps: a burst of runs maps more, and unmaps them as they end.
const KEEP: usize = 8;

/// A pair of stacks from the pool, or new ones.
pub(super) fn take() -> std::io::Result<Stacks> {
    match POOL.lock().unwrap_or_else(|e| e.into_inner()).pop() {
        Some(s) => Ok(s),
        None => Stacks::new(),
    }
}

/// A run's stacks while its child may run on them. Dropping the lease makes sure the child is
/// gone — killed and reaped if it still runs (an early return or a panic in the parent) — and
/// only then gives the stacks back.
pub(super) struct Lease {
    pub(super) stacks: Option<Stacks>,
    pub(super) child: Arc<OwnedFd>,
}

impl Drop for Lease {
    fn drop(&mut self) {
        // Both fail harmlessly when the child has already been reaped (the usual case).
        let _ = sys::pidfd_kill(self.child.as_raw_fd(), libc::SIGKILL);
        sys::wait_pidfd(self.child.as_raw_fd());
        if let Some(stacks) = self.stacks.take() {
            let mut pool = POOL.lock().unwrap_or_else(|e| e.into_inner());
            if pool.len() < KEEP {
                pool.push(stacks);
            }
        }
    }
}
