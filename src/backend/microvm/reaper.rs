//! Destroys finished VMs off the run's path.
//!
//! Closing a VM's last file descriptor makes the kernel destroy it there and then: its debugfs
//! entries, its vCPUs, its shadow MMU, an SRCU grace period — ≈ 0.2 ms on PVM, which every run
//! paid after its result was known. A run now passes its VM and vCPU descriptors, in one
//! `SCM_RIGHTS` message, to this process's reaper thread, closes its own copies, and only then
//! lets the reaper take the message. The reaper receives it *without room for descriptors*: the
//! kernel then drops the passed files itself, inside that `recv`, so the destruction runs on the
//! reaper thread and the descriptors are never installed in the process's descriptor table —
//! nothing of a finished run is visible there, even for an instant. The message also carries
//! the run's guest RAM (see `arena.rs`), which the reaper cleans for reuse once the VM is gone.
//! The reaper thread is started by the first run and lives as long as the process; it runs no
//! guest code and holds nothing between messages.
//!
//! At most [`MAX_PENDING`] VMs wait for destruction: beyond that, or if the reaper cannot be
//! started or reached, a run destroys its VM and cleans its arena itself.

use std::os::fd::{AsFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::OnceLock;

use super::arena::Arena;
use super::sys;

/// How many VMs may wait for the reaper at once.
const MAX_PENDING: usize = 4;

static PENDING: AtomicUsize = AtomicUsize::new(0);

/// The sending end of the reaper's socket, and the channel that tells it a message may be
/// taken.
struct Reaper {
    sock: OwnedFd,
    go: Sender<()>,
    /// Held from a message's send to its go-ahead, so that go-aheads come in the order of the
    /// messages even when runs end at the same time on several threads (each go-ahead then
    /// lets the reaper take the message whose sender has closed its descriptors).
    handing: parking_lot::Mutex<()>,
}

fn reaper() -> Option<&'static Reaper> {
    static REAPER: OnceLock<Option<Reaper>> = OnceLock::new();
    REAPER.get_or_init(start).as_ref()
}

fn start() -> Option<Reaper> {
    let (send, recv) = sys::socketpair().ok()?;
    let (go, wait) = channel();
    std::thread::Builder::new().name("sandcell-vm-reaper".into()).spawn(move || serve(recv, wait)).ok()?;
    Some(Reaper { sock: send, go, handing: parking_lot::Mutex::new(()) })
}

fn serve(sock: OwnedFd, go: Receiver<()>) {
    // A message is taken only once its sender has closed its own descriptors (`Handed` is
    // dropped after them): the message then holds the files' last references, and the VM is
    // destroyed here, not in the sender's `close`.
    while go.recv().is_ok() {
        let mut raw = [0u64; 2];
        loop {
            // No control buffer: the kernel releases the passed files inside this call (and
            // with them the VM), marking the message MSG_CTRUNC.
            match sys::recv(sock.as_fd(), &mut raw) {
                Ok(16) => {
                    // SAFETY: the sender put an arena it gave up (`into_raw`) in the message,
                    // once.
                    unsafe { Arena::from_raw(raw) }.recycle();
                    break;
                }
                Err(e) if e.raw_os_error() == Some(libc::EINTR) => continue,
                // Cannot happen while the process lives (the sending end is never closed); the
                // arena, if any, is left mapped rather than reused.
                _ => break,
            }
        }
        PENDING.fetch_sub(1, Ordering::SeqCst);
    }
}

/// A VM handed to the reaper: drop it once the sender has closed its own copies of the VM's
/// descriptors; the reaper then destroys the VM and recycles its arena.
pub(super) struct Handed {
    reaper: &'static Reaper,
    _turn: parking_lot::MutexGuard<'static, ()>,
}

impl Drop for Handed {
    fn drop(&mut self) {
        let _ = self.reaper.go.send(());
    }
}

/// Hands the descriptors of one finished VM (its VM and vCPU descriptors) and its guest RAM to
/// the reaper. On `Err`, the caller destroys the VM itself and gets the arena back. On `Ok`, the
/// caller closes its own descriptors (cheap: the message holds references to the files), then
/// drops the `Handed`. One message carries at most 32 descriptors (`sys::send_fds`): a VM and 16
/// vCPUs fit.
pub(super) fn hand_over(fds: &[RawFd], arena: Arena) -> Result<Handed, Arena> {
    let Some(reaper) = reaper() else { return Err(arena) };
    if PENDING.fetch_add(1, Ordering::SeqCst) >= MAX_PENDING {
        PENDING.fetch_sub(1, Ordering::SeqCst);
        return Err(arena);
    }
    let turn = reaper.handing.lock();
    let raw = arena.into_raw();
    if sys::send_fds(reaper.sock.as_fd(), &raw, fds).is_err() {
        PENDING.fetch_sub(1, Ordering::SeqCst);
        // SAFETY: `raw` came from `into_raw` just now and was not sent.
        return Err(unsafe { Arena::from_raw(raw) });
    }
    Ok(Handed { reaper, _turn: turn })
}

#[cfg(test)]
mod tests {
    use std::os::fd::{AsRawFd, FromRawFd};

    use super::*;

    #[test]
    fn handed_over_files_are_released_by_the_reaper_and_never_installed() {
        let mut p = [0; 2];
        // SAFETY: `p` has room for two descriptors.
        assert_eq!(unsafe { libc::pipe2(p.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
        // SAFETY: new descriptors owned here.
        let (r, w) = unsafe { (OwnedFd::from_raw_fd(p[0]), OwnedFd::from_raw_fd(p[1])) };
        let handed = hand_over(&[w.as_raw_fd()], Arena::take(2 << 20).unwrap()).unwrap();
        drop(w);
        drop(handed);
        // The only other reference to the write end was in the message: once the reaper has
        // dropped it, the read end sees end-of-file.
        let mut pfd = libc::pollfd { fd: r.as_raw_fd(), events: libc::POLLIN, revents: 0 };
        // SAFETY: one valid pollfd.
        assert_eq!(unsafe { libc::poll(&mut pfd, 1, 10_000) }, 1, "the reaper did not release the file");
        let mut b = [0u8; 1];
        // SAFETY: `b` is a valid one-byte buffer.
        assert_eq!(unsafe { libc::read(r.as_raw_fd(), b.as_mut_ptr().cast(), 1) }, 0);
    }

    #[test]
    fn nothing_or_too_many_descriptors_are_refused() {
        let sock = reaper().unwrap().sock.as_fd();
        assert!(sys::send_fds(sock, &[0, 0], &[]).is_err());
        assert!(sys::send_fds(sock, &[0, 0], &[0; 33]).is_err());
    }
}
