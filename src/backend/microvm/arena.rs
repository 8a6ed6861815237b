//! Guest RAM mappings, reused from run to run once they are clean.
//!
//! Unmapping a run's guest RAM cost ≈ 70 µs of every run: the kernel frees its pages and, while
//! the VM still exists (it is destroyed on the reaper thread, see `reaper.rs`), KVM walks its
//! bookkeeping for every page of the range to drop its own mappings. Instead, a run's mapping
//! (an *arena*) outlives its VM: before the run returns, the part that held the image's contents
//! is replaced by fresh anonymous memory (one `mmap`, so that the arena is again one plain
//! anonymous mapping and keeps no image file open); the reaper, once the VM is destroyed,
//! discards every page the guest touched (`MADV_DONTNEED`: the next touch reads zeros) and only
//! then offers the arena to the next run. Nothing of one guest can reach another: an arena is
//! reused only after all its pages were discarded.
//!
//! At most [`MAX_FREE`] clean arenas wait for reuse; one idle longer than [`IDLE_LIFETIME`] is
//! unmapped by the next run that looks for one, and when the process's last micro-VM sandbox is
//! dropped they are all unmapped (and so is an arena that comes back after that).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use super::sys;
use crate::{Error, Result};

/// How many clean arenas are kept for reuse.
const MAX_FREE: usize = 8;

/// How long a clean arena is kept without being reused.
const IDLE_LIFETIME: Duration = Duration::from_secs(10);

/// One guest RAM mapping: anonymous, private, read-write, `MAP_NORESERVE`.
#[derive(Debug)]
pub(crate) struct Arena {
    base: usize,
    len: usize,
}

/// Clean arenas, with when each was freed.
static FREE: Mutex<Vec<(Arena, Instant)>> = Mutex::new(Vec::new());

impl Arena {
    /// A clean arena of `len` bytes (reused, or mapped now).
    pub(crate) fn take(len: usize) -> Result<Arena> {
        let mut expired = Vec::new();
        let reused = {
            let mut free = FREE.lock();
            let now = Instant::now();
            free.retain_mut(|(a, at)| {
                let keep = now.duration_since(*at) < IDLE_LIFETIME;
                if !keep {
                    expired.push(Arena { base: a.base, len: a.len });
                }
                keep
            });
            free.iter().rposition(|(a, _)| a.len == len).map(|i| free.swap_remove(i).0)
        };
        drop(expired);
        if let Some(arena) = reused {
            return Ok(arena);
        }
        let base = sys::map_anonymous(len).map_err(|e| Error::setup("map guest memory", e))?;
        Ok(Arena { base: base as usize, len })
    }

    pub(crate) fn base(&self) -> *mut u8 {
        self.base as *mut u8
    }

    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// Replaces `[0, end)` with fresh anonymous memory: the image's file mappings go, and with
    /// them the run's pages there. Returns false if that failed (the arena must then not be
    /// reused; dropping it unmaps it).
    pub(crate) fn reset_front(&self, end: usize) -> bool {
        let end = end.min(self.len);
        if end == 0 {
            return true;
        }
        // SAFETY: `[base, base+end)` lies inside this arena, which only this run uses now, and
        // nothing refers to its contents any more (the run's guest memory is dropped).
        unsafe { sys::remap_anonymous(self.base(), end) }
    }

    /// Discards every page (they read as zeros next time) and offers the arena for reuse. The
    /// VM that used it must be gone. An arena that cannot be cleaned is unmapped instead.
    /// Once no micro-VM sandbox is left, the arena is unmapped instead.
    pub(crate) fn recycle(self) {
        if SANDBOXES.load(Ordering::SeqCst) == 0 {
            return; // dropped: unmapped
        }
        // SAFETY: the whole arena, which nothing uses any more (its VM is destroyed).
        if !unsafe { sys::discard(self.base(), self.len) } {
            return;
        }
        let mut free = FREE.lock();
        // Checked again under the lock that `sandbox_dropped` takes after the count drops, so
        // that an arena recycled while the last sandbox goes is not kept.
        if free.len() < MAX_FREE && SANDBOXES.load(Ordering::SeqCst) > 0 {
            free.push((self, Instant::now()));
        }
    }

    /// The arena's address and length, to pass it to another thread through a message.
    pub(crate) fn into_raw(self) -> [u64; 2] {
        let raw = [self.base as u64, self.len as u64];
        std::mem::forget(self);
        raw
    }

    /// The arena `into_raw` gave.
    ///
    /// # Safety
    /// `raw` must come from `into_raw`, and be turned back into an arena once.
    pub(crate) unsafe fn from_raw(raw: [u64; 2]) -> Arena {
        Arena { base: raw[0] as usize, len: raw[1] as usize }
    }
}

impl Drop for Arena {
    fn drop(&mut self) {
        // SAFETY: the arena owns its mapping, and nothing uses it once the arena is dropped.
        unsafe { sys::unmap(self.base(), self.len) };
    }
}

/// Micro-VM sandboxes alive in this process: clean arenas are kept only while there are some.
static SANDBOXES: AtomicUsize = AtomicUsize::new(0);

/// A micro-VM sandbox was made.
pub(crate) fn sandbox_created() {
    SANDBOXES.fetch_add(1, Ordering::SeqCst);
}

/// A micro-VM sandbox was dropped: with the last one, every clean arena is unmapped.
pub(crate) fn sandbox_dropped() {
    if SANDBOXES.fetch_sub(1, Ordering::SeqCst) == 1 {
        let free = std::mem::take(&mut *FREE.lock());
        drop(free);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_recycled_arena_reads_as_zeros_and_is_reused() {
        sandbox_created();
        let len = 4 << 20;
        let a = Arena::take(len).unwrap();
        // SAFETY: the arena is `len` bytes of read-write memory.
        unsafe { a.base().add(4096).write_bytes(0xAB, 8192) };
        let base = a.base;
        a.recycle();
        let b = Arena::take(len).unwrap();
        // Other tests may take arenas of other sizes, never this one's: it comes back.
        assert_eq!(b.base, base);
        // SAFETY: as above.
        let bytes = unsafe { std::slice::from_raw_parts(b.base().add(4096), 8192) };
        assert!(bytes.iter().all(|&x| x == 0));
        // SAFETY: as above.
        unsafe { b.base().write_bytes(1, 16) };
        assert!(b.reset_front(4096));
        // SAFETY: as above.
        assert_eq!(unsafe { b.base().read() }, 0);
        sandbox_dropped();
    }
}
