//! Every raw system call of the process backend, in one place. The rest of the backend is safe
//! Rust.
//!
//! Two kinds of functions live here:
//! - **parent side** (may allocate): pipes, clone, pidfds, waiting, cgroup files;
//! - **child side** (between `clone` and `execve`): the jail's child shares the parent's memory
//!   (`CLONE_VM`, see [`clone_jail`]) and even its thread pointer, so these must not allocate,
//!   lock, panic, or touch thread-local state — not even `errno`: they make their system calls
//!   directly ([`sc`]), without the C library, and return `Err(errno)`. They take pre-built
//!   `CStr`s.

#![allow(clippy::missing_safety_doc)]

use std::ffi::CStr;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

/// A system call made directly, without the C library: the result, or `-errno`. It writes no
/// memory but what the call itself writes (no `errno`).
///
/// # Safety
/// The arguments must be valid for system call `nr`.
#[inline(always)]
pub(super) unsafe fn sc(nr: libc::c_long, args: [usize; 6]) -> isize {
    let ret: isize;
    // SAFETY: the x86-64 system call convention; the kernel clobbers rcx and r11 only.
    unsafe {
        std::arch::asm!(
            "syscall",
            inlateout("rax") nr as isize => ret,
            in("rdi") args[0],
            in("rsi") args[1],
            in("rdx") args[2],
            in("r10") args[3],
            in("r8") args[4],
            in("r9") args[5],
            lateout("rcx") _,
            lateout("r11") _,
            options(nostack),
        );
    }
    ret
}

/// The result of [`sc`] as `Err(errno)` or the value.
fn ck(rc: isize) -> Result<isize, i32> {
    if (-4095..0).contains(&rc) {
        Err(-rc as i32)
    } else {
        Ok(rc)
    }
}

/// Pointer as a system call argument.
fn a<T>(p: *const T) -> usize {
    p as usize
}

/// Pointer the kernel writes through, as a system call argument.
fn am<T>(p: *mut T) -> usize {
    p as usize
}

fn owned(fd: libc::c_long) -> OwnedFd {
    // SAFETY: callers pass a descriptor the kernel just returned, owned by nobody else.
    unsafe { OwnedFd::from_raw_fd(fd as RawFd) }
}

// ---------------------------------------------------------------------------------------------
// Parent side.

/// A pipe whose both ends are close-on-exec; the child `dup2`s its end onto 0, 1 or 2 (which
/// clears the flag on the copy).
pub(super) fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: `fds` is a valid array of two ints.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok((owned(fds[0] as _), owned(fds[1] as _)))
}

/// A connected `SOCK_SEQPACKET` unix socket pair, close-on-exec.
pub(super) fn socketpair() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: `fds` is a valid array of two ints.
    if unsafe { libc::socketpair(libc::AF_UNIX, libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC, 0, fds.as_mut_ptr()) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok((owned(fds[0] as _), owned(fds[1] as _)))
}

pub(super) fn set_nonblocking(fd: &OwnedFd) -> io::Result<()> {
    // SAFETY: F_GETFL/F_SETFL on a valid descriptor.
    unsafe {
        let flags = libc::fcntl(fd.as_raw_fd(), libc::F_GETFL);
        if flags < 0 || libc::fcntl(fd.as_raw_fd(), libc::F_SETFL, flags | libc::O_NONBLOCK) < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

#[repr(C)]
#[derive(Default)]
pub(super) struct CloneArgs {
    pub(super) flags: u64,
    pub(super) pidfd: u64,
    pub(super) child_tid: u64,
    pub(super) parent_tid: u64,
    pub(super) exit_signal: u64,
    pub(super) stack: u64,
    pub(super) stack_size: u64,
    pub(super) tls: u64,
    pub(super) set_tid: u64,
    pub(super) set_tid_size: u64,
    pub(super) cgroup: u64,
}

/// Result of [`clone_jail`] in the parent.
pub(super) struct Cloned {
    pub(super) pid: libc::pid_t,
    pub(super) pidfd: OwnedFd,
}

/// Runs `f(arg)` in a new process made by `clone3(args)` (`nr` = SYS_clone3, `a0`, `a1` = the
/// arguments and their size) or `clone` (`nr` = SYS_clone, `a0` = flags, `a1` = the stack top),
/// on the new stack; returns the new pid (or `-errno`) in the caller. The new process never
/// returns here: when `f` returns, it exits with `f`'s result.
///
/// # Safety
/// The arguments must name a stack (16-byte aligned top) that stays mapped while the new process
/// runs, and `f` must be safe to run there on `arg`.
unsafe fn clone_run(
    nr: libc::c_long,
    a0: usize,
    a1: usize,
    f: extern "C" fn(*mut libc::c_void) -> libc::c_int,
    arg: *mut libc::c_void,
) -> isize {
    let ret: isize;
    // SAFETY: in the parent, `clone3` returns like any call. In the child, which starts on the
    // new stack (16-byte aligned top) with the parent's registers, only r12/r13 (preserved by
    // the call) are used: f(arg), then exit(f's result). It never returns into Rust code.
    unsafe {
        std::arch::asm!(
            "syscall",
            "test rax, rax",
            "jnz 2f",
            "xor ebp, ebp",
            "mov rdi, r12",
            "call r13",
            "mov edi, eax",
            "mov eax, 60",
            "syscall",
            "ud2",
            "2:",
            inlateout("rax") nr as isize => ret,
            in("rdi") a0,
            in("rsi") a1,
            in("rdx") 0usize,
            in("r10") 0usize,
            in("r8") 0usize,
            in("r12") arg,
            in("r13") f,
            lateout("rcx") _,
            lateout("r11") _,
            options(nostack),
        );
    }
    ret
}

/// `clone3(args)` running `f(arg)` in the new process (see `clone_run`); the result or `-errno`.
///
/// # Safety
/// As `clone_run`.
pub(super) unsafe fn clone_args_run(
    args: &mut CloneArgs,
    f: extern "C" fn(*mut libc::c_void) -> libc::c_int,
    arg: *mut libc::c_void,
) -> isize {
    // SAFETY: the caller upholds `clone_run`'s contract.
    unsafe { clone_run(libc::SYS_clone3, a(args), std::mem::size_of::<CloneArgs>(), f, arg) }
}

/// Waits while `word` holds `expected` (or until woken).
pub(super) fn futex_wait(word: &std::sync::atomic::AtomicU32, expected: u32) {
    // SAFETY: a private futex wait on a live word of this process.
    unsafe {
        sc(
            libc::SYS_futex,
            [a(word.as_ptr()), (libc::FUTEX_WAIT | libc::FUTEX_PRIVATE_FLAG) as usize, expected as usize, 0, 0, 0],
        );
    }
}

/// Wakes the waiters on `word` (a direct system call: usable in the jail's child, which shares
/// this process's memory, and so its private futexes).
pub(super) fn futex_wake(word: &std::sync::atomic::AtomicU32) {
    // SAFETY: a private futex wake on a live word of this process.
    unsafe {
        sc(
            libc::SYS_futex,
            [a(word.as_ptr()), (libc::FUTEX_WAKE | libc::FUTEX_PRIVATE_FLAG) as usize, i32::MAX as usize, 0, 0, 0],
        )
    };
}

/// A stack for a process that shares this one's memory: mapped with a guard page below it (an
/// overflow faults instead of writing into the host's memory).
pub(super) struct Stack {
    base: *mut u8,
    len: usize,
}

// SAFETY: the mapping is owned by the `Stack` alone; moving it between threads moves ownership.
unsafe impl Send for Stack {}

const GUARD: usize = 4096;

impl Stack {
    /// The lowest usable address (above the guard page).
    pub(super) fn bottom(&self) -> *mut u8 {
        // SAFETY: inside the mapping.
        unsafe { self.base.add(GUARD) }
    }

    /// A stack of `len` usable bytes (a multiple of the page size).
    pub(super) fn new(len: usize) -> io::Result<Stack> {
        // SAFETY: a fresh private anonymous mapping; the guard page is made inaccessible.
        unsafe {
            let base = libc::mmap(
                std::ptr::null_mut(),
                len + GUARD,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_STACK | libc::MAP_NORESERVE,
                -1,
                0,
            );
            if base == libc::MAP_FAILED {
                return Err(io::Error::last_os_error());
            }
            let stack = Stack { base: base.cast(), len: len + GUARD };
            if libc::mprotect(base, GUARD, libc::PROT_NONE) < 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(stack)
        }
    }

    /// The lowest usable address and the usable size.
    pub(super) fn usable(&self) -> (u64, u64) {
        (self.base as u64 + GUARD as u64, (self.len - GUARD) as u64)
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `new`; nothing runs on it any more (see `clone_jail`).
        unsafe { libc::munmap(self.base.cast(), self.len) };
    }
}

/// `clone3` with `flags` (namespaces) | `CLONE_PIDFD`, optionally into a cgroup v2 directory:
/// the child runs `f(arg)` on `stack`, in its own copy of this process's memory.
///
/// This is the fallback start of a jail. The usual one (`vforker`) has init share the host's
/// memory instead of copying it: copying a multi-threaded host's page tables, and then taking a
/// copy-on-write fault (with a TLB shoot-down on every CPU the host runs on) for each page the
/// host writes while the run lasts, cost ≈ 0.5 ms per run here, and grows with the host's
/// memory. A child that shares the host's memory only ever runs the jail's code (see `jail`),
/// which reads what the parent prepared, writes only to its stack, and uses no thread-local
/// state (hence the direct system calls in this module); the program it starts gets a fresh
/// address space at `execve`. That needs Landlock to keep the program away from init (see
/// `jail::exec_program`); without it, this copying start is used.
///
/// # Safety
/// `stack`, `arg` and everything `f` reads must stay alive and unchanged until the child has
/// been reaped; signals should be blocked (the child inherits the mask and must not run the
/// host's handlers).
pub(super) unsafe fn clone_jail(
    flags: u64,
    cgroup: Option<RawFd>,
    stack: &Stack,
    f: extern "C" fn(*mut libc::c_void) -> libc::c_int,
    arg: *mut libc::c_void,
) -> io::Result<Cloned> {
    let mut pidfd: RawFd = -1;
    let (base, size) = stack.usable();
    let mut args = CloneArgs {
        flags: flags | libc::CLONE_PIDFD as u64 | if cgroup.is_some() { 0x2_0000_0000 } else { 0 },
        pidfd: &mut pidfd as *mut RawFd as u64,
        exit_signal: libc::SIGCHLD as u64,
        stack: base,
        stack_size: size,
        cgroup: cgroup.map_or(0, |fd| fd as u64),
        ..CloneArgs::default()
    };
    // SAFETY: the caller upholds the contract above.
    let pid = unsafe { clone_run(libc::SYS_clone3, am(&mut args), std::mem::size_of::<CloneArgs>(), f, arg) };
    match ck(pid) {
        Err(e) => Err(io::Error::from_raw_os_error(e)),
        Ok(pid) => Ok(Cloned { pid: pid as libc::pid_t, pidfd: owned(pidfd as _) }),
    }
}

/// Blocks every signal of the calling thread until dropped.
pub(super) struct SignalsBlocked(libc::sigset_t);

impl SignalsBlocked {
    pub(super) fn new() -> SignalsBlocked {
        // SAFETY: sigset_t is plain data, filled by sigfillset / pthread_sigmask.
        unsafe {
            let mut all: libc::sigset_t = std::mem::zeroed();
            let mut old: libc::sigset_t = std::mem::zeroed();
            libc::sigfillset(&mut all);
            libc::pthread_sigmask(libc::SIG_SETMASK, &all, &mut old);
            SignalsBlocked(old)
        }
    }
}

impl Drop for SignalsBlocked {
    fn drop(&mut self) {
        // SAFETY: restores the mask saved by `new`.
        unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, &self.0, std::ptr::null_mut()) };
    }
}

/// Reaps the process behind `pidfd` if it has not been reaped yet (`waitid(P_PIDFD)`), waiting
/// for it to end. Returns at once when it was reaped already.
pub(super) fn wait_pidfd(pidfd: RawFd) {
    const P_PIDFD: libc::idtype_t = 3;
    loop {
        // SAFETY: siginfo_t is plain data; waitid on a pidfd of our child.
        let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
        // SAFETY: valid out-pointer.
        let rc = unsafe { libc::waitid(P_PIDFD, pidfd as libc::id_t, &mut info, libc::WEXITED | libc::__WALL) };
        if rc == 0 || io::Error::last_os_error().raw_os_error() != Some(libc::EINTR) {
            return;
        }
    }
}

/// Sends `sig` through a pidfd (no pid-reuse race).
pub(super) fn pidfd_kill(pidfd: RawFd, sig: i32) -> io::Result<()> {
    // SAFETY: a plain syscall on a descriptor; a stale descriptor only yields an error.
    let rc = unsafe { libc::syscall(libc::SYS_pidfd_send_signal, pidfd, sig, std::ptr::null::<libc::siginfo_t>(), 0) };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// Waits for the child and returns its wait status and resource usage.
pub(super) fn wait(pid: libc::pid_t) -> io::Result<(i32, libc::rusage)> {
    let mut status = 0;
    // SAFETY: rusage is plain data; all-zero is valid.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    loop {
        // SAFETY: valid out-pointers; `pid` is our child.
        let rc = unsafe { libc::wait4(pid, &mut status, libc::__WALL, &mut usage) };
        if rc == pid {
            return Ok((status, usage));
        }
        let e = io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EINTR) {
            return Err(e);
        }
    }
}

/// `poll` with a timeout in milliseconds (-1: forever), retried on EINTR.
pub(super) fn poll(fds: &mut [libc::pollfd], timeout_ms: i32) -> io::Result<usize> {
    loop {
        // SAFETY: `fds` is a valid slice of pollfd.
        let rc = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, timeout_ms) };
        if rc >= 0 {
            return Ok(rc as usize);
        }
        let e = io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EINTR) {
            return Err(e);
        }
    }
}

/// `read` into `buf`; `Ok(0)` at end-of-file, `Err(WouldBlock)` when empty.
pub(super) fn read(fd: RawFd, buf: &mut [u8]) -> io::Result<usize> {
    loop {
        // SAFETY: `buf` is valid for writes of its length.
        let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
        if n >= 0 {
            return Ok(n as usize);
        }
        let e = io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EINTR) {
            return Err(e);
        }
    }
}

/// `write` from `buf`.
pub(super) fn write(fd: RawFd, buf: &[u8]) -> io::Result<usize> {
    loop {
        // SAFETY: `buf` is valid for reads of its length.
        let n = unsafe { libc::write(fd, buf.as_ptr().cast(), buf.len()) };
        if n >= 0 {
            return Ok(n as usize);
        }
        let e = io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EINTR) {
            return Err(e);
        }
    }
}

/// Sends `data` and the descriptors `fds` in one message.
pub(super) fn send_fds(sock: RawFd, data: &[u8], fds: &[RawFd]) -> Result<(), i32> {
    let mut cmsg_buf = [0u64; 32]; // room for 60 descriptors, 8-byte aligned
    let mut iov = libc::iovec { iov_base: data.as_ptr() as *mut libc::c_void, iov_len: data.len() };
    // SAFETY: msghdr is plain data; all-zero is valid.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    if !fds.is_empty() {
        let n = fds.len().min(60);
        // SAFETY: CMSG_SPACE is a pure computation.
        let space = unsafe { libc::CMSG_SPACE((n * 4) as u32) } as usize;
        msg.msg_control = cmsg_buf.as_mut_ptr().cast();
        msg.msg_controllen = space;
        // SAFETY: msg_control points at a buffer of `space` bytes, large enough for one header
        // and `n` descriptors; the CMSG macros stay inside it.
        unsafe {
            let c = libc::CMSG_FIRSTHDR(&msg);
            (*c).cmsg_level = libc::SOL_SOCKET;
            (*c).cmsg_type = libc::SCM_RIGHTS;
            (*c).cmsg_len = libc::CMSG_LEN((n * 4) as u32) as usize;
            std::ptr::copy_nonoverlapping(fds.as_ptr(), libc::CMSG_DATA(c).cast::<RawFd>(), n);
        }
    }
    // SAFETY: `msg` describes valid buffers.
    ck(unsafe { sc(libc::SYS_sendmsg, [sock as usize, a(&msg), libc::MSG_NOSIGNAL as usize, 0, 0, 0]) }).map(|_| ())
}

/// Receives one message into `data` and up to `fds.len()` descriptors. Returns (bytes, count
/// of descriptors). Does not allocate (usable in the child).
pub(super) fn recv_fds(sock: RawFd, data: &mut [u8], fds: &mut [RawFd]) -> Result<(usize, usize), i32> {
    let mut cmsg_buf = [0u64; 32];
    let mut iov = libc::iovec { iov_base: data.as_mut_ptr().cast(), iov_len: data.len() };
    // SAFETY: msghdr is plain data; all-zero is valid.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = cmsg_buf.as_mut_ptr().cast();
    msg.msg_controllen = std::mem::size_of_val(&cmsg_buf);
    let n = loop {
        // SAFETY: `msg` describes valid buffers.
        match ck(unsafe {
            sc(libc::SYS_recvmsg, [sock as usize, am(&mut msg), libc::MSG_CMSG_CLOEXEC as usize, 0, 0, 0])
        }) {
            Ok(n) => break n as usize,
            Err(libc::EINTR) => {}
            Err(e) => return Err(e),
        }
    };
    let mut count = 0;
    // SAFETY: the kernel filled msg_control with well-formed headers within msg_controllen.
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(&msg);
        while !c.is_null() {
            if (*c).cmsg_level == libc::SOL_SOCKET && (*c).cmsg_type == libc::SCM_RIGHTS {
                let payload = (*c).cmsg_len - libc::CMSG_LEN(0) as usize;
                let k = payload / 4;
                let p = libc::CMSG_DATA(c).cast::<RawFd>();
                for i in 0..k {
                    let fd = *p.add(i);
                    if count < fds.len() {
                        fds[count] = fd;
                        count += 1;
                    } else {
                        close(fd);
                    }
                }
            }
            c = libc::CMSG_NXTHDR(&msg, c);
        }
    }
    Ok((n, count))
}

/// A descriptor the child side owns: closed with a direct system call when dropped.
pub(super) struct Fd(RawFd);

impl Fd {
    pub(super) fn raw(&self) -> RawFd {
        self.0
    }

    /// Gives up ownership without closing.
    pub(super) fn into_raw(self) -> RawFd {
        let fd = self.0;
        std::mem::forget(self);
        fd
    }

    /// As a standard owned descriptor (parent side).
    pub(super) fn into_owned(self) -> OwnedFd {
        owned(self.into_raw() as libc::c_long)
    }
}

impl Drop for Fd {
    fn drop(&mut self) {
        close(self.0);
    }
}

/// `open(path, flags)` (child side: no allocation, no errno).
pub(super) fn open(path: &CStr, flags: i32) -> Result<Fd, i32> {
    // SAFETY: `path` is NUL-terminated.
    let fd = ck(unsafe { sc(libc::SYS_openat, [libc::AT_FDCWD as usize, a(path.as_ptr()), flags as usize, 0, 0, 0]) })?;
    Ok(Fd(fd as RawFd))
}

/// `open_tree(path, OPEN_TREE_CLONE | AT_RECURSIVE)`: a detached copy of the mount at `path`.
pub(super) fn open_tree_clone(path: &CStr) -> Result<Fd, i32> {
    const OPEN_TREE_CLONE: usize = 1;
    let flags = OPEN_TREE_CLONE | libc::O_CLOEXEC as usize | libc::AT_RECURSIVE as usize;
    // SAFETY: `path` is NUL-terminated.
    let fd = ck(unsafe { sc(libc::SYS_open_tree, [libc::AT_FDCWD as usize, a(path.as_ptr()), flags, 0, 0, 0]) })?;
    Ok(Fd(fd as RawFd))
}

/// `open_tree(fd, "", OPEN_TREE_CLONE)`: a detached copy of the (detached) mount `fd`.
pub(super) fn open_tree_copy(fd: RawFd) -> Result<Fd, i32> {
    const OPEN_TREE_CLONE: usize = 1;
    let flags = OPEN_TREE_CLONE | libc::O_CLOEXEC as usize | libc::AT_EMPTY_PATH as usize;
    // SAFETY: "" with AT_EMPTY_PATH names `fd`.
    let copy = ck(unsafe { sc(libc::SYS_open_tree, [fd as usize, a(c"".as_ptr()), flags, 0, 0, 0]) })?;
    Ok(Fd(copy as RawFd))
}

#[repr(C)]
struct MountAttr {
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
    userns_fd: u64,
}

pub(super) const MOUNT_ATTR_RDONLY: u64 = 0x1;
pub(super) const MOUNT_ATTR_NOSUID: u64 = 0x2;
pub(super) const MOUNT_ATTR_NODEV: u64 = 0x4;
pub(super) const MOUNT_ATTR_NOEXEC: u64 = 0x8;
pub(super) const MOUNT_ATTR_IDMAP: u64 = 0x0010_0000;

/// `mount_setattr` on a whole (detached) tree: sets `attrs`, and an id-mapping from `userns`.
pub(super) fn mount_setattr(fd: RawFd, attrs: u64, userns: Option<RawFd>) -> Result<(), i32> {
    let mut attr = MountAttr {
        attr_set: attrs | if userns.is_some() { MOUNT_ATTR_IDMAP } else { 0 },
        attr_clr: 0,
        propagation: 0,
        userns_fd: userns.map_or(0, |u| u as u64),
    };
    let flags = (libc::AT_EMPTY_PATH | libc::AT_RECURSIVE) as usize;
    let size = std::mem::size_of::<MountAttr>();
    // SAFETY: `attr` is a valid mount_attr of the size passed; "" with AT_EMPTY_PATH names `fd`.
    ck(unsafe { sc(libc::SYS_mount_setattr, [fd as usize, a(c"".as_ptr()), flags, am(&mut attr), size, 0]) })
        .map(|_| ())
}

// ---------------------------------------------------------------------------------------------
// Child side: no allocation from here on.

/// Writes all of `buf` to `fd`.
pub(super) fn write_all(fd: RawFd, mut buf: &[u8]) -> Result<(), i32> {
    while !buf.is_empty() {
        // SAFETY: `buf` is valid for reads of its length.
        match ck(unsafe { sc(libc::SYS_write, [fd as usize, a(buf.as_ptr()), buf.len(), 0, 0, 0]) }) {
            Ok(n) => buf = &buf[n as usize..],
            Err(libc::EINTR) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// `setresgid(0,0,0)` and `setresuid(0,0,0)` as raw system calls. glibc's wrappers would try to
/// change the credentials of every thread the parent had, and wait forever for threads that do
/// not exist in the cloned child.
pub(super) fn become_root() -> Result<(), i32> {
    // SAFETY: integer arguments only.
    unsafe {
        ck(sc(libc::SYS_setresgid, [0; 6]))?;
        ck(sc(libc::SYS_setresuid, [0; 6]))?;
    }
    Ok(())
}

pub(super) fn close(fd: RawFd) {
    // SAFETY: closing a descriptor number has no memory-safety preconditions.
    unsafe { sc(libc::SYS_close, [fd as usize, 0, 0, 0, 0, 0]) };
}

pub(super) fn dup2(from: RawFd, to: RawFd) -> Result<(), i32> {
    // SAFETY: plain descriptor operation.
    ck(unsafe { sc(libc::SYS_dup2, [from as usize, to as usize, 0, 0, 0, 0]) }).map(|_| ())
}

pub(super) fn mount(
    src: Option<&CStr>,
    target: &CStr,
    fstype: Option<&CStr>,
    flags: libc::c_ulong,
    data: Option<&CStr>,
) -> Result<(), i32> {
    let p = |s: Option<&CStr>| s.map_or(0, |s| a(s.as_ptr()));
    // SAFETY: every pointer is NULL or a NUL-terminated string.
    ck(unsafe { sc(libc::SYS_mount, [p(src), a(target.as_ptr()), p(fstype), flags as usize, p(data), 0]) }).map(|_| ())
}

/// `fsopen` + `fsconfig` (string options) + `fsmount`: a new detached filesystem instance.
pub(super) fn new_fs(fstype: &CStr, options: &[(&CStr, &CStr)], mount_attrs: u64) -> Result<Fd, i32> {
    const FSOPEN_CLOEXEC: usize = 1;
    const FSCONFIG_SET_STRING: usize = 1;
    const FSCONFIG_CMD_CREATE: usize = 6;
    const FSMOUNT_CLOEXEC: usize = 1;
    // SAFETY: NUL-terminated strings; descriptors checked.
    unsafe {
        let fs = Fd(ck(sc(libc::SYS_fsopen, [a(fstype.as_ptr()), FSOPEN_CLOEXEC, 0, 0, 0, 0]))? as RawFd);
        let fd = fs.raw() as usize;
        for (k, v) in options {
            ck(sc(libc::SYS_fsconfig, [fd, FSCONFIG_SET_STRING, a(k.as_ptr()), a(v.as_ptr()), 0, 0]))?;
        }
        ck(sc(libc::SYS_fsconfig, [fd, FSCONFIG_CMD_CREATE, 0, 0, 0, 0]))?;
        Ok(Fd(ck(sc(libc::SYS_fsmount, [fd, FSMOUNT_CLOEXEC, mount_attrs as usize, 0, 0, 0]))? as RawFd))
    }
}

/// `move_mount` of the detached mount `from` onto `to` (a path in the current namespace).
pub(super) fn move_mount(from: RawFd, to: &CStr) -> Result<(), i32> {
    const MOVE_MOUNT_F_EMPTY_PATH: usize = 4;
    let args = [from as usize, a(c"".as_ptr()), libc::AT_FDCWD as usize, a(to.as_ptr()), MOVE_MOUNT_F_EMPTY_PATH, 0];
    // SAFETY: NUL-terminated strings; "" + F_EMPTY_PATH names `from`.
    ck(unsafe { sc(libc::SYS_move_mount, args) }).map(|_| ())
}

pub(super) fn mkdir(path: &CStr, mode: libc::mode_t) -> Result<(), i32> {
    // SAFETY: NUL-terminated path.
    match ck(unsafe { sc(libc::SYS_mkdir, [a(path.as_ptr()), mode as usize, 0, 0, 0, 0]) }) {
        Err(libc::EEXIST) | Ok(_) => Ok(()),
        Err(e) => Err(e),
    }
}

pub(super) fn symlink(target: &CStr, link: &CStr) -> Result<(), i32> {
    // SAFETY: NUL-terminated strings.
    ck(unsafe { sc(libc::SYS_symlink, [a(target.as_ptr()), a(link.as_ptr()), 0, 0, 0, 0]) }).map(|_| ())
}

/// Creates (or truncates) a file and writes `content` into it.
pub(super) fn create_file(path: &CStr, content: &[u8], mode: libc::mode_t) -> Result<(), i32> {
    let flags = (libc::O_WRONLY | libc::O_CREAT | libc::O_TRUNC | libc::O_CLOEXEC) as usize;
    // SAFETY: NUL-terminated path; the descriptor is closed below.
    let fd = ck(unsafe { sc(libc::SYS_open, [a(path.as_ptr()), flags, mode as usize, 0, 0, 0]) })? as RawFd;
    let r = write_all(fd, content);
    close(fd);
    r
}

/// Creates an empty file to mount over, unless something is there already.
pub(super) fn mount_point_file(path: &CStr) -> Result<(), i32> {
    let flags = (libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL | libc::O_CLOEXEC) as usize;
    // SAFETY: NUL-terminated path; the descriptor is closed below.
    match ck(unsafe { sc(libc::SYS_open, [a(path.as_ptr()), flags, 0o644, 0, 0, 0]) }) {
        Ok(fd) => {
            close(fd as RawFd);
            Ok(())
        }
        Err(libc::EEXIST) => Ok(()),
        Err(e) => Err(e),
    }
}

pub(super) fn pivot_root_here() -> Result<(), i32> {
    // SAFETY: NUL-terminated strings.
    ck(unsafe { sc(libc::SYS_pivot_root, [a(c".".as_ptr()), a(c".".as_ptr()), 0, 0, 0, 0]) }).map(|_| ())
}

pub(super) fn umount_detach(path: &CStr) -> Result<(), i32> {
    // SAFETY: NUL-terminated path.
    ck(unsafe { sc(libc::SYS_umount2, [a(path.as_ptr()), libc::MNT_DETACH as usize, 0, 0, 0, 0]) }).map(|_| ())
}

pub(super) fn chdir(path: &CStr) -> Result<(), i32> {
    // SAFETY: NUL-terminated path.
    ck(unsafe { sc(libc::SYS_chdir, [a(path.as_ptr()), 0, 0, 0, 0, 0]) }).map(|_| ())
}

pub(super) fn sethostname(name: &[u8]) -> Result<(), i32> {
    // SAFETY: `name` is valid for its length.
    ck(unsafe { sc(libc::SYS_sethostname, [a(name.as_ptr()), name.len(), 0, 0, 0, 0]) }).map(|_| ())
}

/// Brings the loopback interface up (in the run's own network namespace).
pub(super) fn loopback_up() -> Result<(), i32> {
    // SAFETY: a datagram socket used for one ioctl; ifreq is plain data.
    unsafe {
        let kind = (libc::SOCK_DGRAM | libc::SOCK_CLOEXEC) as usize;
        let s = Fd(ck(sc(libc::SYS_socket, [libc::AF_INET as usize, kind, 0, 0, 0, 0]))? as RawFd);
        let mut req: libc::ifreq = std::mem::zeroed();
        req.ifr_name[..2].copy_from_slice(&[b'l' as libc::c_char, b'o' as libc::c_char]);
        req.ifr_ifru.ifru_flags = (libc::IFF_UP | libc::IFF_LOOPBACK | libc::IFF_RUNNING) as libc::c_short;
        ck(sc(libc::SYS_ioctl, [s.raw() as usize, libc::SIOCSIFFLAGS as usize, a(&req), 0, 0, 0])).map(|_| ())
    }
}

/// Sets every signal's action back to the default (ignored ones stay ignored across `execve`,
/// handled ones would not matter). Raw `rt_sigaction`: the C library refuses to touch the
/// signals it reserves for itself (32 and 33), which can arrive ignored too. Async-signal-safe.
pub(super) fn reset_signals() {
    /// The kernel's `struct sigaction` for x86-64.
    #[repr(C)]
    struct KernelSigaction {
        handler: usize,
        flags: u64,
        restorer: usize,
        mask: u64,
    }
    let dfl = KernelSigaction { handler: libc::SIG_DFL, flags: 0, restorer: 0, mask: 0 };
    for sig in 1..=64usize {
        if sig != libc::SIGKILL as usize && sig != libc::SIGSTOP as usize {
            // SAFETY: rt_sigaction with a valid struct of the size the kernel expects.
            unsafe { sc(libc::SYS_rt_sigaction, [sig, a(&dfl), 0, 8, 0, 0]) };
        }
    }
}

/// Unblocks every signal.
pub(super) fn unblock_signals() {
    let none: u64 = 0;
    // SAFETY: rt_sigprocmask with a valid 8-byte set.
    unsafe { sc(libc::SYS_rt_sigprocmask, [libc::SIG_SETMASK as usize, a(&none), 0, 8, 0, 0]) };
}

pub(super) fn setrlimit(resource: libc::__rlimit_resource_t, soft: u64, hard: u64) -> Result<(), i32> {
    let lim = libc::rlimit { rlim_cur: soft, rlim_max: hard };
    // SAFETY: valid rlimit struct; prlimit64 on ourselves (pid 0).
    ck(unsafe { sc(libc::SYS_prlimit64, [0, resource as usize, a(&lim), 0, 0, 0]) }).map(|_| ())
}

pub(super) fn setsid() -> Result<(), i32> {
    // SAFETY: no arguments.
    ck(unsafe { sc(libc::SYS_setsid, [0; 6]) }).map(|_| ())
}

pub(super) fn prctl(op: libc::c_int, arg: libc::c_ulong) -> Result<(), i32> {
    // SAFETY: the prctl operations used here take integer arguments only.
    ck(unsafe { sc(libc::SYS_prctl, [op as usize, arg as usize, 0, 0, 0, 0]) }).map(|_| ())
}

/// Restricts the CPUs this process (and its children) may run on to the first `n` of those it
/// may use now.
pub(super) fn limit_cpus(n: u32) -> Result<(), i32> {
    // SAFETY: cpu_set_t is plain data; the CPU_* helpers stay within it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        let size = std::mem::size_of::<libc::cpu_set_t>();
        ck(sc(libc::SYS_sched_getaffinity, [0, size, am(&mut set), 0, 0, 0]))?;
        let mut kept = 0;
        for cpu in 0..libc::CPU_SETSIZE as usize {
            if libc::CPU_ISSET(cpu, &set) {
                if kept >= n {
                    libc::CPU_CLR(cpu, &mut set);
                } else {
                    kept += 1;
                }
            }
        }
        ck(sc(libc::SYS_sched_setaffinity, [0, size, a(&set), 0, 0, 0])).map(|_| ())
    }
}

/// Sets the calling process's CPUs.
pub(super) fn set_affinity(cpus: &libc::cpu_set_t) -> Result<(), i32> {
    let size = std::mem::size_of::<libc::cpu_set_t>();
    // SAFETY: a valid cpu_set_t of the size passed.
    ck(unsafe { sc(libc::SYS_sched_setaffinity, [0, size, a(cpus), 0, 0, 0]) }).map(|_| ())
}

/// Drops every capability: effective, permitted, inheritable, ambient and the bounding set.
pub(super) fn drop_capabilities() -> Result<(), i32> {
    for cap in 0..=63 {
        // EINVAL past the last capability ends the loop.
        match prctl(libc::PR_CAPBSET_DROP, cap) {
            Ok(()) => {}
            Err(libc::EINVAL) => break,
            Err(e) => return Err(e),
        }
    }
    let clear = [libc::PR_CAP_AMBIENT as usize, libc::PR_CAP_AMBIENT_CLEAR_ALL as usize, 0, 0, 0, 0];
    // SAFETY: integer arguments.
    ck(unsafe { sc(libc::SYS_prctl, clear) })?;
    #[repr(C)]
    struct Header {
        version: u32,
        pid: i32,
    }
    #[repr(C)]
    struct Data {
        effective: u32,
        permitted: u32,
        inheritable: u32,
    }
    let mut header = Header { version: 0x2008_0522, pid: 0 };
    let data =
        [Data { effective: 0, permitted: 0, inheritable: 0 }, Data { effective: 0, permitted: 0, inheritable: 0 }];
    // SAFETY: version 3 capset takes a header and two data structs.
    ck(unsafe { sc(libc::SYS_capset, [am(&mut header), a(data.as_ptr()), 0, 0, 0, 0]) }).map(|_| ())
}

// Landlock.

#[repr(C)]
struct RulesetAttr {
    handled_access_fs: u64,
    handled_access_net: u64,
    scoped: u64,
}

#[repr(C, packed)]
struct PathBeneathAttr {
    allowed_access: u64,
    parent_fd: i32,
}

/// Creates a Landlock ruleset handling these rights.
pub(super) fn landlock_ruleset(fs: u64, net: u64, scoped: u64, abi: u32) -> Result<Fd, i32> {
    let attr = RulesetAttr { handled_access_fs: fs, handled_access_net: net, scoped };
    // The attribute grew over ABI versions; pass the size this kernel knows.
    let size = match abi {
        0..=3 => 8,
        4 | 5 => 16,
        _ => 24,
    };
    // SAFETY: `attr` is valid for `size` bytes.
    let fd = ck(unsafe { sc(libc::SYS_landlock_create_ruleset, [a(&attr), size, 0, 0, 0, 0]) })?;
    Ok(Fd(fd as RawFd))
}

/// Allows `access` beneath `path` (opened `O_PATH`).
pub(super) fn landlock_allow(ruleset: RawFd, path: &CStr, access: u64) -> Result<(), i32> {
    const LANDLOCK_RULE_PATH_BENEATH: usize = 1;
    let flags = (libc::O_PATH | libc::O_CLOEXEC) as usize;
    // SAFETY: NUL-terminated path.
    let fd = Fd(ck(unsafe { sc(libc::SYS_open, [a(path.as_ptr()), flags, 0, 0, 0, 0]) })? as RawFd);
    let attr = PathBeneathAttr { allowed_access: access, parent_fd: fd.raw() };
    // SAFETY: `attr` is a valid path-beneath rule.
    ck(unsafe { sc(libc::SYS_landlock_add_rule, [ruleset as usize, LANDLOCK_RULE_PATH_BENEATH, a(&attr), 0, 0, 0]) })
        .map(|_| ())
}

pub(super) fn landlock_restrict(ruleset: RawFd) -> Result<(), i32> {
    // SAFETY: plain syscall on a descriptor.
    ck(unsafe { sc(libc::SYS_landlock_restrict_self, [ruleset as usize, 0, 0, 0, 0, 0]) }).map(|_| ())
}

/// Installs a seccomp filter. With `listener`, returns the user-notification descriptor.
pub(super) fn seccomp_install(program: &[libc::sock_filter], listener: bool) -> Result<Option<RawFd>, i32> {
    const SECCOMP_SET_MODE_FILTER: usize = 1;
    const SECCOMP_FILTER_FLAG_NEW_LISTENER: usize = 1 << 3;
    let prog = libc::sock_fprog { len: program.len() as u16, filter: program.as_ptr() as *mut libc::sock_filter };
    let flags = if listener { SECCOMP_FILTER_FLAG_NEW_LISTENER } else { 0 };
    // SAFETY: `prog` points at `len` valid instructions that outlive the call.
    let rc = ck(unsafe { sc(libc::SYS_seccomp, [SECCOMP_SET_MODE_FILTER, flags, a(&prog), 0, 0, 0]) })?;
    Ok(listener.then_some(rc as RawFd))
}

/// Marks every descriptor from `first` up close-on-exec (they vanish at `execve`, while the
/// error pipe still works if `execve` fails).
pub(super) fn close_from_on_exec(first: u32) {
    const CLOSE_RANGE_CLOEXEC: usize = 1 << 2;
    // SAFETY: changing descriptor flags has no memory-safety preconditions.
    unsafe { sc(libc::SYS_close_range, [first as usize, u32::MAX as usize, CLOSE_RANGE_CLOEXEC, 0, 0, 0]) };
}

/// Size of the stack pid 2 uses between its creation and `execve`.
pub(super) const SPAWN_STACK: usize = 64 * 1024;

/// Starts `f(arg)` in a new process that shares this one's memory until it executes or exits
/// (`CLONE_VM | CLONE_VFORK`); this process is suspended meanwhile. `stack` is the lowest
/// address of `SPAWN_STACK` bytes. Returns the new pid, or `Err(errno)`.
pub(super) fn spawn_vfork(
    stack: *mut u8,
    f: extern "C" fn(*mut libc::c_void) -> libc::c_int,
    arg: *mut libc::c_void,
) -> Result<libc::pid_t, i32> {
    // The legacy `clone`: the jail's seccomp filter, installed by now, answers clone3 with ENOSYS.
    let flags = (libc::CLONE_VM | libc::CLONE_VFORK | libc::SIGCHLD) as usize;
    let top = (stack as usize + SPAWN_STACK) & !15;
    // SAFETY: the new process runs `f` on `stack`; CLONE_VFORK keeps this process, and so
    // `arg` and the stack, suspended and alive until it executes or exits.
    ck(unsafe { clone_run(libc::SYS_clone, flags, top, f, arg) }).map(|pid| pid as libc::pid_t)
}

/// Waits for any child (`__WALL`); returns its pid and wait status.
pub(super) fn wait_any() -> Result<(libc::pid_t, i32), i32> {
    let mut status: i32 = 0;
    // SAFETY: valid out-pointer; no rusage.
    let pid = ck(unsafe { sc(libc::SYS_wait4, [usize::MAX, am(&mut status), libc::__WALL as usize, 0, 0, 0]) })?;
    Ok((pid as libc::pid_t, status))
}

/// Sends SIGKILL to every process of the caller's pid namespace but itself (from its init).
pub(super) fn kill_all_others() {
    // SAFETY: kill(-1) has no memory-safety preconditions.
    unsafe { sc(libc::SYS_kill, [-1isize as usize, libc::SIGKILL as usize, 0, 0, 0, 0]) };
}

/// The resources used by the caller's waited-for children and their descendants:
/// (user + system CPU time, largest resident set in bytes).
pub(super) fn children_usage() -> (std::time::Duration, u64) {
    // SAFETY: rusage is plain data; all-zero is valid.
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: valid out-pointer.
    if ck(unsafe { sc(libc::SYS_getrusage, [libc::RUSAGE_CHILDREN as usize, am(&mut u), 0, 0, 0, 0]) }).is_err() {
        return (std::time::Duration::ZERO, 0);
    }
    let t = |tv: libc::timeval| std::time::Duration::new(tv.tv_sec as u64, tv.tv_usec as u32 * 1000);
    (t(u.ru_utime) + t(u.ru_stime), u.ru_maxrss as u64 * 1024)
}

/// Closes every descriptor but those in `keep` (sorted in place; negative entries ignored).
/// Allocates nothing.
pub(super) fn close_all_except(keep: &mut [RawFd]) {
    keep.sort_unstable();
    let mut next: u32 = 0;
    for &fd in keep.iter() {
        let Ok(fd) = u32::try_from(fd) else { continue };
        if fd > next {
            // SAFETY: closing descriptors has no memory-safety preconditions.
            unsafe { sc(libc::SYS_close_range, [next as usize, fd as usize - 1, 0, 0, 0, 0]) };
        }
        next = next.max(fd + 1);
    }
    // SAFETY: as above.
    unsafe { sc(libc::SYS_close_range, [next as usize, u32::MAX as usize, 0, 0, 0, 0]) };
}

/// `execve`; returns only on failure.
pub(super) fn execve(path: &CStr, argv: &[*const libc::c_char], envp: &[*const libc::c_char]) -> i32 {
    // SAFETY: `argv` and `envp` are NULL-terminated arrays of NUL-terminated strings that the
    // parent built before clone and that live in this address space.
    let rc = unsafe { sc(libc::SYS_execve, [a(path.as_ptr()), a(argv.as_ptr()), a(envp.as_ptr()), 0, 0, 0]) };
    ck(rc).err().unwrap_or(libc::EIO)
}

pub(super) fn exit(code: i32) -> ! {
    // SAFETY: exit_group ends this process (its own thread group) at once: no destructors, no
    // atexit handlers.
    unsafe { sc(libc::SYS_exit_group, [code as usize, 0, 0, 0, 0, 0]) };
    // SAFETY: exit_group does not return.
    unsafe { std::hint::unreachable_unchecked() }
}

// ---------------------------------------------------------------------------------------------
// Seccomp user notifications (parent side).

#[repr(C)]
#[derive(Default)]
struct SeccompData {
    nr: i32,
    arch: u32,
    instruction_pointer: u64,
    args: [u64; 6],
}

#[repr(C)]
#[derive(Default)]
struct SeccompNotif {
    id: u64,
    pid: u32,
    flags: u32,
    data: SeccompData,
}

#[repr(C)]
struct SeccompNotifResp {
    id: u64,
    val: i64,
    error: i32,
    flags: u32,
}

const SECCOMP_IOCTL_NOTIF_RECV: libc::c_ulong = 0xc050_2100;
const SECCOMP_IOCTL_NOTIF_SEND: libc::c_ulong = 0xc018_2101;

/// Receives one pending notification, answers it with `EPERM`, and returns the system call
/// number. `None` when nothing was pending.
pub(super) fn seccomp_deny_next(listener: RawFd) -> Option<i32> {
    let mut notif = SeccompNotif::default();
    // SAFETY: `notif` is a zeroed seccomp_notif of the right size.
    if unsafe { libc::ioctl(listener, SECCOMP_IOCTL_NOTIF_RECV, &mut notif) } < 0 {
        return None;
    }
    let mut resp = SeccompNotifResp { id: notif.id, val: 0, error: -libc::EPERM, flags: 0 };
    // SAFETY: `resp` is a valid seccomp_notif_resp.
    unsafe { libc::ioctl(listener, SECCOMP_IOCTL_NOTIF_SEND, &mut resp) };
    Some(notif.data.nr)
}
