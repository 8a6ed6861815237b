//! Every raw libc call of the micro-VM backend; the rest is safe Rust around it.
//!
//! As in the process backend's `sys.rs`, each wrapper is one small operation. They keep the flags,
//! the order of operations and the error handling of the code that used to make these calls
//! inline: most are on a run's path, which is tuned, so none adds a call. Functions that map,
//! discard or unmap memory at an address the caller gives, or signal a thread by its
//! `pthread_t`, are `unsafe`, and their `# Safety` sections say what the caller must guarantee;
//! the others are safe whatever their arguments.
//!
//! Not here: KVM's ioctls (through kvm-ioctls, next to the objects they act on), and the
//! `unsafe impl Send`/`Sync` markers (with their types).

use std::ffi::CStr;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

/// The page size of the host (x86-64).
const PAGE: usize = 4096;

// ---------------------------------------------------------------------------------------------
// Memory.

/// Protection of the mappings [`map_anonymous`] and [`remap_anonymous`] make: read-write.
pub(super) const ANON_PROT: i32 = libc::PROT_READ | libc::PROT_WRITE;

/// Flags of the mappings [`map_anonymous`] and [`remap_anonymous`] make: private, anonymous, no
/// swap reserved.
pub(super) const ANON_FLAGS: i32 = libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE;

/// A new mapping of `len` bytes ([`ANON_PROT`], [`ANON_FLAGS`]) where the kernel chooses; its
/// pages read as zeros. The caller owns it (see [`unmap`]).
pub(super) fn map_anonymous(len: usize) -> io::Result<*mut u8> {
    // SAFETY: without MAP_FIXED the kernel places the mapping where nothing is mapped, so no
    // memory this process uses changes; the new mapping is referred to by nothing yet.
    let base = unsafe { libc::mmap(std::ptr::null_mut(), len, ANON_PROT, ANON_FLAGS, -1, 0) };
    if base == libc::MAP_FAILED {
        return Err(io::Error::last_os_error());
    }
    Ok(base.cast())
}

/// Replaces `[addr, addr + len)` with fresh memory as [`map_anonymous`] makes (`MAP_FIXED`):
/// whatever was mapped there goes, and the range reads as zeros. Returns false if the call
/// failed (what the range then holds is unspecified).
///
/// # Safety
/// The range must lie inside a mapping the caller owns, and nothing may refer to its contents
/// (they are replaced).
pub(super) unsafe fn remap_anonymous(addr: *mut u8, len: usize) -> bool {
    // SAFETY: the caller owns the range and nothing refers to its contents, so replacing the
    // mapping there is unobservable but for the new zeros.
    let at = unsafe { libc::mmap(addr.cast(), len, ANON_PROT, ANON_FLAGS | libc::MAP_FIXED, -1, 0) };
    at != libc::MAP_FAILED
}

/// Maps `file`'s bytes `[start, end)` at `base + start`, over what is mapped there (`MAP_FIXED`),
/// read-write and `MAP_NORESERVE`: `MAP_SHARED` with `shared` (writes go to the file), else
/// `MAP_PRIVATE` (copy-on-write).
///
/// # Safety
/// `[base + start, base + end)` must lie inside a mapping the caller owns, and nothing may refer
/// to its contents (they are replaced). With `shared`, nothing may write through the range what
/// other mappings of the file must not see.
pub(super) unsafe fn map_file_over(
    base: *mut u8,
    start: u64,
    end: u64,
    file: BorrowedFd<'_>,
    shared: bool,
) -> io::Result<()> {
    let flags = if shared { libc::MAP_SHARED } else { libc::MAP_PRIVATE };
    // SAFETY: `base + start` is inside the caller's mapping (see above), so `add` stays inside
    // it; the caller owns the range and nothing refers to what it held.
    let at = unsafe {
        libc::mmap(
            base.add(start as usize).cast(),
            (end - start) as usize,
            libc::PROT_READ | libc::PROT_WRITE,
            flags | libc::MAP_FIXED | libc::MAP_NORESERVE,
            file.as_raw_fd(),
            start as libc::off_t,
        )
    };
    if at == libc::MAP_FAILED {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Asks for transparent huge pages in `[addr, addr+len)` (`MADV_HUGEPAGE`). A hint: where the
/// host has them off, or the range is not 2 MiB-aligned, small pages serve.
pub(super) fn advise_huge(addr: *mut u8, len: usize) {
    // SAFETY: MADV_HUGEPAGE changes no byte of memory, only how later faults are served.
    unsafe { libc::madvise(addr.cast(), len, libc::MADV_HUGEPAGE) };
}

/// Faults the pages of `[addr, addr + len)` in, writable (`MADV_POPULATE_WRITE`: a private
/// mapping's pages are copied now instead of at the first write). Best effort: the result is not
/// checked.
pub(super) fn populate_write(addr: *mut u8, len: usize) {
    const MADV_POPULATE_WRITE: i32 = 23;
    // SAFETY: MADV_POPULATE_WRITE changes no byte of memory, only whether pages are present
    // (and private ones copied); a range that is not mapped read-write only yields an error.
    unsafe { libc::madvise(addr.cast(), len, MADV_POPULATE_WRITE) };
}

/// Discards the pages of `[addr, addr + len)` (`MADV_DONTNEED`: in an anonymous private mapping
/// they read as zeros next time). Returns false if the call failed.
///
/// # Safety
/// The range must lie inside a mapping the caller owns, and nothing may refer to its contents
/// (they are lost).
pub(super) unsafe fn discard(addr: *mut u8, len: usize) -> bool {
    // SAFETY: the caller owns the range and nothing refers to its contents.
    unsafe { libc::madvise(addr.cast(), len, libc::MADV_DONTNEED) == 0 }
}

/// Unmaps `[addr, addr + len)`. The result is not checked.
///
/// # Safety
/// The caller must own the mapping, and nothing may use it afterwards.
pub(super) unsafe fn unmap(addr: *mut u8, len: usize) {
    // SAFETY: the caller owns the mapping and nothing uses it any more.
    unsafe { libc::munmap(addr.cast(), len) };
}

/// Which pages of `[addr, addr + len)` are resident (`mincore`): bit 0 of `vec[i]` for page `i`.
/// `len` is cut to the pages `vec` has room for. Returns false if the call failed (for example,
/// the range is not all mapped).
pub(super) fn mincore(addr: *mut u8, len: usize, vec: &mut [u8]) -> bool {
    // SAFETY: the kernel writes one byte per page of the range, which is cut to `vec.len()`
    // pages, and reads no memory; an address outside any mapping only yields an error.
    unsafe { libc::mincore(addr.cast(), len.min(vec.len().saturating_mul(PAGE)), vec.as_mut_ptr()) == 0 }
}

// ---------------------------------------------------------------------------------------------
// Signals and threads.

extern "C" fn empty_handler(_: libc::c_int) {}

/// `SIGRTMIN`: the first real-time signal the C library leaves to applications.
pub(super) fn sigrtmin() -> i32 {
    libc::SIGRTMIN()
}

/// Installs an empty handler for `sig`, without `SA_RESTART`: delivered to a thread blocked in a
/// system call (`KVM_RUN`), it makes the call fail with `EINTR`, and does nothing else. It
/// replaces any handler of `sig`; the result is not checked.
pub(super) fn set_empty_handler(sig: i32) {
    // SAFETY: a sigaction is plain data (all-zero is valid: no flags, and the mask is emptied
    // below); the handler is empty, hence async-signal-safe.
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = empty_handler as *const () as usize;
        libc::sigemptyset(&mut sa.sa_mask);
        libc::sigaction(sig, &sa, std::ptr::null_mut());
    }
}

/// Sends `sig` to `thread`, a thread of this process (`pthread_kill`). The result is not
/// checked.
///
/// # Safety
/// `thread` must name a thread that has not ended: the `pthread_t` of an ended thread may
/// refer to freed memory.
pub(super) unsafe fn signal_thread(thread: libc::pthread_t, sig: i32) {
    // SAFETY: `thread` is alive (the caller's guarantee).
    unsafe { libc::pthread_kill(thread, sig) };
}

/// The calling thread's `pthread_t`.
pub(super) fn pthread_self() -> libc::pthread_t {
    // SAFETY: pthread_self has no preconditions and cannot fail.
    unsafe { libc::pthread_self() }
}

/// The calling thread's kernel thread id.
pub(super) fn gettid() -> libc::pid_t {
    // SAFETY: gettid has no preconditions and cannot fail.
    unsafe { libc::gettid() }
}

/// Lets thread `tid` run on `cpus` only. Best effort: the result is not checked.
pub(super) fn set_affinity(tid: libc::pid_t, cpus: &libc::cpu_set_t) {
    // SAFETY: `cpus` is a valid set of exactly the size passed; the kernel only reads it.
    unsafe { libc::sched_setaffinity(tid, std::mem::size_of::<libc::cpu_set_t>(), cpus) };
}

/// Sets `no_new_privs` and installs `program` as a seccomp filter of the calling thread only
/// (`seccomp(SECCOMP_SET_MODE_FILTER)` without `TSYNC`).
pub(super) fn seccomp_install_thread(program: &[seccompiler::sock_filter]) -> io::Result<()> {
    let prog = libc::sock_fprog { len: program.len() as u16, filter: program.as_ptr() as *mut libc::sock_filter };
    // SAFETY: PR_SET_NO_NEW_PRIVS takes integers only; seccomp reads `prog`, which points at
    // `len` instructions that outlive the call (seccompiler's sock_filter has libc's layout).
    unsafe {
        if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) < 0
            || libc::syscall(libc::SYS_seccomp, 1, 0, &prog as *const libc::sock_fprog) < 0
        {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Descriptors.

/// A new memfd named `name` (empty), close-on-exec.
pub(super) fn memfd_create(name: &CStr) -> io::Result<OwnedFd> {
    // SAFETY: `name` is NUL-terminated and only read.
    let fd = unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just created and is owned by nothing else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// A connected pair of `SOCK_SEQPACKET` unix sockets, close-on-exec.
pub(super) fn socketpair() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut pair = [0; 2];
    // SAFETY: `pair` has room for the two descriptors.
    if unsafe { libc::socketpair(libc::AF_UNIX, libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC, 0, pair.as_mut_ptr()) } != 0
    {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: socketpair returned two new descriptors that nothing else owns.
    Ok(unsafe { (OwnedFd::from_raw_fd(pair[0]), OwnedFd::from_raw_fd(pair[1])) })
}

/// Receives one message into `buf` (`recv`, no flags) and returns its length. There is no room
/// for control data: the kernel releases any descriptors attached to the message inside this
/// call (marking it `MSG_CTRUNC`); they are never installed in this process.
pub(super) fn recv(sock: BorrowedFd<'_>, buf: &mut [u64]) -> io::Result<usize> {
    // SAFETY: `buf` is valid for writes of its size in bytes.
    let n = unsafe { libc::recv(sock.as_raw_fd(), buf.as_mut_ptr().cast(), std::mem::size_of_val(buf), 0) };
    if n == -1 {
        return Err(io::Error::last_os_error());
    }
    Ok(n as usize)
}

/// Sends `data` with `fds` attached (`SCM_RIGHTS`; at most 32 descriptors), without blocking
/// and without `SIGPIPE`. Fails with `EINVAL` for no descriptors or more than 32, and with the
/// call's error if it did not send all of `data`.
pub(super) fn send_fds(sock: BorrowedFd<'_>, data: &[u64; 2], fds: &[RawFd]) -> io::Result<()> {
    if fds.is_empty() || fds.len() > 32 {
        return Err(io::Error::from_raw_os_error(libc::EINVAL));
    }
    let mut control = [0u64; 24]; // CMSG_SPACE(32 * 4) = 144 bytes, 8-byte aligned
    let mut iov = libc::iovec { iov_base: data.as_ptr().cast_mut().cast(), iov_len: 16 };
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
    // SAFETY: `msg` describes `iov`, `data` and `control`, valid for the duration of the call.
    if unsafe { libc::sendmsg(sock.as_raw_fd(), &msg, libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL) } == 16 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Whether the host has any swap space (`sysinfo`; zram and zswap count). Without swap an
/// anonymous page is either resident or never written.
pub(super) fn host_has_swap() -> bool {
    // SAFETY: `info` is a plain struct the kernel fills.
    let mut info: libc::sysinfo = unsafe { std::mem::zeroed() };
    // SAFETY: a valid pointer to it.
    if unsafe { libc::sysinfo(&mut info) } != 0 {
        return true; // unknown: take the careful path
    }
    info.totalswap > 0
}

/// Which pages from `base` are in use — present in memory or in swap — from
/// `/proc/self/pagemap`, one byte per page of `out` (bit 0).
pub(super) fn pagemap_in_use(base: *mut u8, out: &mut [u8]) -> io::Result<()> {
    use std::os::unix::fs::FileExt;
    static PAGEMAP: std::sync::OnceLock<std::result::Result<std::fs::File, String>> = std::sync::OnceLock::new();
    let file = PAGEMAP
        .get_or_init(|| std::fs::File::open("/proc/self/pagemap").map_err(|e| e.to_string()))
        .as_ref()
        .map_err(|e| io::Error::other(e.clone()))?;
    const PRESENT: u64 = 1 << 63;
    const SWAPPED: u64 = 1 << 62;
    let mut buf = vec![0u8; 8 * 4096];
    let first = base as u64 / PAGE as u64;
    for (chunk_index, chunk) in out.chunks_mut(4096).enumerate() {
        let bytes = &mut buf[..chunk.len() * 8];
        file.read_exact_at(bytes, (first + chunk_index as u64 * 4096) * 8)?;
        for (i, entry) in bytes.chunks_exact(8).enumerate() {
            let e = u64::from_le_bytes(entry.try_into().unwrap_or([0; 8]));
            chunk[i] = u8::from(e & (PRESENT | SWAPPED) != 0);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Without swap, `/proc/self/pagemap` and `mincore` agree on which anonymous pages are in
    /// use (the pagemap path is the one taken when the host has swap).
    #[test]
    fn pagemap_and_mincore_agree_on_anonymous_memory() {
        let len = 64 * PAGE;
        let base = map_anonymous(len).unwrap();
        for page in [0usize, 3, 4, 40, 63] {
            // SAFETY: inside the mapping made above.
            unsafe { base.add(page * PAGE).write_volatile(1) };
        }
        let (mut a, mut b) = (vec![0u8; 64], vec![0u8; 64]);
        assert!(mincore(base, len, &mut a));
        pagemap_in_use(base, &mut b).unwrap();
        let a: Vec<u8> = a.iter().map(|x| x & 1).collect();
        assert_eq!(a, b);
        assert_eq!(b.iter().filter(|x| **x == 1).count(), 5);
        // SAFETY: the mapping made above, unused from here.
        unsafe { unmap(base, len) };
    }
}
