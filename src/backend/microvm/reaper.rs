//! Destroys finished VMs off the run's path.
//!
//! Closing a VM's last file descriptor makes the kernel destroy it there and then: its debugfs
//! entries, its vCPUs, its shadow MMU, an SRCU grace period — ≈ 0.2 ms on PVM, which every run
//! paid after its result was known. A run now passes its VM and vCPU descriptors, in one
//! `SCM_RIGHTS` message, to this process's reaper thread and closes its own copies at once. The
//! reaper receives the message *without room for descriptors*: the kernel then drops the passed
//! files itself, inside that `recv`, so the destruction runs on the reaper thread and the
//! descriptors are never installed in the process's descriptor table — nothing of a finished
//! run is visible there, even for an instant. The reaper thread is started by the first run and
//! lives as long as the process; it runs no guest code and holds nothing between messages.
//!
//! At most [`MAX_PENDING`] VMs wait for destruction: beyond that, or if the reaper cannot be
//! started or reached, a run destroys its VM itself, as before. A run's guest memory is unmapped
//! by the run itself, before it returns.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;

/// How many VMs may wait for the reaper at once.
const MAX_PENDING: usize = 4;

static PENDING: AtomicUsize = AtomicUsize::new(0);

/// The sending end of the reaper's socket, or `None` if it could not be started.
fn sender() -> Option<RawFd> {
    static SENDER: OnceLock<Option<OwnedFd>> = OnceLock::new();
    SENDER.get_or_init(start).as_ref().map(AsRawFd::as_raw_fd)
}

fn start() -> Option<OwnedFd> {
    let mut pair = [0; 2];
    // SAFETY: `pair` has room for the two descriptors.
    if unsafe { libc::socketpair(libc::AF_UNIX, libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC, 0, pair.as_mut_ptr()) } != 0
    {
        return None;
    }
    // SAFETY: socketpair returned two new descriptors that nothing else owns.
    let (send, recv) = unsafe { (OwnedFd::from_raw_fd(pair[0]), OwnedFd::from_raw_fd(pair[1])) };
    std::thread::Builder::new().name("sandcell-vm-reaper".into()).spawn(move || serve(recv)).ok()?;
    Some(send)
}

fn serve(sock: OwnedFd) {
    let mut byte = 0u8;
    loop {
        // No control buffer: the kernel releases the passed files inside this call (and with
        // them the VM, if they held its last references), marking the message MSG_CTRUNC.
        // SAFETY: `byte` is a valid one-byte buffer.
        let n = unsafe { libc::recv(sock.as_raw_fd(), (&mut byte as *mut u8).cast(), 1, 0) };
        match n {
            1 => {
                PENDING.fetch_sub(1, Ordering::SeqCst);
            }
            -1 if std::io::Error::last_os_error().raw_os_error() == Some(libc::EINTR) => {}
            // The sending end is gone (never, while the process lives) or the socket failed.
            _ => return,
        }
    }
}

/// Hands the descriptors of one finished VM (its VM and vCPU descriptors) to the reaper.
/// Returns `false` if the caller must destroy the VM itself. On `true`, the caller closes its
/// own descriptors as usual; that is cheap, since the message holds references to the files.
pub(super) fn hand_over(fds: &[RawFd]) -> bool {
    let Some(sock) = sender() else { return false };
    if PENDING.fetch_add(1, Ordering::SeqCst) >= MAX_PENDING {
        PENDING.fetch_sub(1, Ordering::SeqCst);
        return false;
    }
    if send_fds(sock, fds).is_err() {
        PENDING.fetch_sub(1, Ordering::SeqCst);
        return false;
    }
    true
}

/// Sends one byte with `fds` attached (at most 32 descriptors: a VM and 16 vCPUs fit).
fn send_fds(sock: RawFd, fds: &[RawFd]) -> std::io::Result<()> {
    if fds.is_empty() || fds.len() > 32 {
        return Err(std::io::Error::from_raw_os_error(libc::EINVAL));
    }
    let mut control = [0u64; 24]; // CMSG_SPACE(32 * 4) = 144 bytes, 8-byte aligned
    let byte = 0u8;
    let mut iov = libc::iovec { iov_base: (&byte as *const u8).cast_mut().cast(), iov_len: 1 };
    // SAFETY: msghdr is plain data; all-zero is valid.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    let bytes = std::mem::size_of_val(fds) as u32;
    // SAFETY: CMSG_SPACE and CMSG_LEN are pure computations.
    let (space, len) = unsafe { (libc::CMSG_SPACE(bytes) as usize, libc::CMSG_LEN(bytes) as usize) };
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = space;
    // SAFETY: `control` holds `space` bytes (at most 144 for 32 descriptors), room for one
    // header and the descriptors; the CMSG macros stay inside it.
    unsafe {
        let c = libc::CMSG_FIRSTHDR(&msg);
        (*c).cmsg_level = libc::SOL_SOCKET;
        (*c).cmsg_type = libc::SCM_RIGHTS;
        (*c).cmsg_len = len;
        std::ptr::copy_nonoverlapping(fds.as_ptr(), libc::CMSG_DATA(c).cast::<RawFd>(), fds.len());
    }
    // SAFETY: `msg` describes valid buffers for the duration of the call.
    if unsafe { libc::sendmsg(sock, &msg, libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL) } == 1 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handed_over_files_are_released_by_the_reaper_and_never_installed() {
        let mut p = [0; 2];
        // SAFETY: `p` has room for two descriptors.
        assert_eq!(unsafe { libc::pipe2(p.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
        // SAFETY: new descriptors owned here.
        let (r, w) = unsafe { (OwnedFd::from_raw_fd(p[0]), OwnedFd::from_raw_fd(p[1])) };
        assert!(hand_over(&[w.as_raw_fd()]));
        drop(w);
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
        assert!(send_fds(sender().unwrap(), &[]).is_err());
        assert!(send_fds(sender().unwrap(), &[0; 33]).is_err());
    }
}
