//! Every raw system call of the process backend, in one place. The rest of the backend is safe
//! Rust.
//!
//! Two kinds of functions live here:
//! - **parent side** (may allocate): pipes, clone, pidfds, waiting, cgroup files;
//! - **child side** (between `clone` and `execve`): these must not allocate, lock or panic,
//!   because the child is a copy of a multi-threaded process made by a raw `clone`, without the
//!   C library's fork handlers. They take pre-built `CStr`s and return `Err(errno)`.

#![allow(clippy::missing_safety_doc)]

use std::ffi::CStr;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

/// errno of the last failed call.
pub(super) fn errno() -> i32 {
    io::Error::last_os_error().raw_os_error().unwrap_or(libc::EIO)
}

fn check(rc: libc::c_long) -> Result<libc::c_long, i32> {
    if rc < 0 {
        Err(errno())
    } else {
        Ok(rc)
    }
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
struct CloneArgs {
    flags: u64,
    pidfd: u64,
    child_tid: u64,
    parent_tid: u64,
    exit_signal: u64,
    stack: u64,
    stack_size: u64,
    tls: u64,
    set_tid: u64,
    set_tid_size: u64,
    cgroup: u64,
}

/// Result of [`clone_jail`] in the parent.
pub(super) struct Cloned {
    pub(super) pid: libc::pid_t,
    pub(super) pidfd: OwnedFd,
}

/// `clone3` with `flags` (namespaces) | `CLONE_PIDFD`, optionally into a cgroup v2 directory.
/// Returns `Ok(None)` in the child, `Ok(Some(..))` in the parent.
///
/// # Safety
/// In the child, only async-signal-safe code that does not allocate may run until `execve`.
pub(super) unsafe fn clone_jail(flags: u64, cgroup: Option<RawFd>) -> io::Result<Option<Cloned>> {
    let mut pidfd: RawFd = -1;
    let mut args = CloneArgs {
        flags: flags | libc::CLONE_PIDFD as u64 | if cgroup.is_some() { 0x2_0000_0000 } else { 0 },
        pidfd: &mut pidfd as *mut RawFd as u64,
        exit_signal: libc::SIGCHLD as u64,
        cgroup: cgroup.map_or(0, |fd| fd as u64),
        ..CloneArgs::default()
    };
    // SAFETY: `args` is a valid clone_args of the size passed; without CLONE_VM the child gets
    // its own copy of the address space, and the caller upholds the child-side contract.
    let pid = unsafe { libc::syscall(libc::SYS_clone3, &mut args as *mut CloneArgs, std::mem::size_of::<CloneArgs>()) };
    match pid {
        -1 => Err(io::Error::last_os_error()),
        0 => Ok(None),
        pid => Ok(Some(Cloned { pid: pid as libc::pid_t, pidfd: owned(pidfd as _) })),
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
    check(unsafe { libc::sendmsg(sock, &msg, libc::MSG_NOSIGNAL) } as libc::c_long).map(|_| ())
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
        let n = unsafe { libc::recvmsg(sock, &mut msg, libc::MSG_CMSG_CLOEXEC) };
        if n >= 0 {
            break n as usize;
        }
        let e = errno();
        if e != libc::EINTR {
            return Err(e);
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
                        libc::close(fd);
                    }
                }
            }
            c = libc::CMSG_NXTHDR(&msg, c);
        }
    }
    Ok((n, count))
}

/// `open_tree(path, OPEN_TREE_CLONE | AT_RECURSIVE)`: a detached copy of the mount at `path`.
pub(super) fn open_tree_clone(path: &CStr) -> Result<OwnedFd, i32> {
    const OPEN_TREE_CLONE: libc::c_uint = 1;
    // SAFETY: `path` is NUL-terminated.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_open_tree,
            libc::AT_FDCWD,
            path.as_ptr(),
            OPEN_TREE_CLONE | libc::O_CLOEXEC as libc::c_uint | libc::AT_RECURSIVE as libc::c_uint,
        )
    };
    check(fd).map(owned)
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
pub(super) const MOUNT_ATTR_IDMAP: u64 = 0x0010_0000;

/// `mount_setattr` on a whole (detached) tree: sets `attrs`, and an id-mapping from `userns`.
pub(super) fn mount_setattr(fd: RawFd, attrs: u64, userns: Option<RawFd>) -> Result<(), i32> {
    let mut attr = MountAttr {
        attr_set: attrs | if userns.is_some() { MOUNT_ATTR_IDMAP } else { 0 },
        attr_clr: 0,
        propagation: 0,
        userns_fd: userns.map_or(0, |u| u as u64),
    };
    // SAFETY: `attr` is a valid mount_attr of the size passed; "" with AT_EMPTY_PATH names `fd`.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            fd,
            c"".as_ptr(),
            (libc::AT_EMPTY_PATH | libc::AT_RECURSIVE) as libc::c_uint,
            &mut attr as *mut MountAttr,
            std::mem::size_of::<MountAttr>(),
        )
    };
    check(rc).map(|_| ())
}

// ---------------------------------------------------------------------------------------------
// Child side: no allocation from here on.

/// Writes all of `buf` to `fd`.
pub(super) fn write_all(fd: RawFd, mut buf: &[u8]) -> Result<(), i32> {
    while !buf.is_empty() {
        // SAFETY: `buf` is valid for reads of its length.
        let n = unsafe { libc::write(fd, buf.as_ptr().cast(), buf.len()) };
        if n < 0 {
            let e = errno();
            if e == libc::EINTR {
                continue;
            }
            return Err(e);
        }
        buf = &buf[n as usize..];
    }
    Ok(())
}

/// `setresgid(0,0,0)` and `setresuid(0,0,0)` as raw system calls. glibc's wrappers would try to
/// change the credentials of every thread the parent had, and wait forever for threads that do
/// not exist in the cloned child.
pub(super) fn become_root() -> Result<(), i32> {
    // SAFETY: integer arguments only.
    unsafe {
        check(libc::syscall(libc::SYS_setresgid, 0, 0, 0))?;
        check(libc::syscall(libc::SYS_setresuid, 0, 0, 0))?;
    }
    Ok(())
}

pub(super) fn close(fd: RawFd) {
    // SAFETY: closing a descriptor number has no memory-safety preconditions.
    unsafe { libc::close(fd) };
}

pub(super) fn dup2(from: RawFd, to: RawFd) -> Result<(), i32> {
    // SAFETY: plain descriptor operation.
    check(unsafe { libc::dup2(from, to) } as libc::c_long).map(|_| ())
}

pub(super) fn mount(
    src: Option<&CStr>,
    target: &CStr,
    fstype: Option<&CStr>,
    flags: libc::c_ulong,
    data: Option<&CStr>,
) -> Result<(), i32> {
    let p = |s: Option<&CStr>| s.map_or(std::ptr::null(), CStr::as_ptr);
    // SAFETY: every pointer is NULL or a NUL-terminated string.
    check(unsafe { libc::mount(p(src), target.as_ptr(), p(fstype), flags, p(data).cast()) } as libc::c_long).map(|_| ())
}

/// `fsopen` + `fsconfig` (string options) + `fsmount`: a new detached filesystem instance.
pub(super) fn new_fs(fstype: &CStr, options: &[(&CStr, &CStr)], mount_attrs: u64) -> Result<OwnedFd, i32> {
    const FSOPEN_CLOEXEC: libc::c_uint = 1;
    const FSCONFIG_SET_STRING: libc::c_uint = 1;
    const FSCONFIG_CMD_CREATE: libc::c_uint = 6;
    const FSMOUNT_CLOEXEC: libc::c_uint = 1;
    // SAFETY: NUL-terminated strings; descriptors checked.
    unsafe {
        let fs = owned(check(libc::syscall(libc::SYS_fsopen, fstype.as_ptr(), FSOPEN_CLOEXEC))?);
        for (k, v) in options {
            check(libc::syscall(libc::SYS_fsconfig, fs.as_raw_fd(), FSCONFIG_SET_STRING, k.as_ptr(), v.as_ptr(), 0))?;
        }
        check(libc::syscall(
            libc::SYS_fsconfig,
            fs.as_raw_fd(),
            FSCONFIG_CMD_CREATE,
            std::ptr::null::<libc::c_char>(),
            std::ptr::null::<libc::c_void>(),
            0,
        ))?;
        check(libc::syscall(libc::SYS_fsmount, fs.as_raw_fd(), FSMOUNT_CLOEXEC, mount_attrs)).map(owned)
    }
}

/// `move_mount` of the detached mount `from` onto `to` (a path in the current namespace).
pub(super) fn move_mount(from: RawFd, to: &CStr) -> Result<(), i32> {
    const MOVE_MOUNT_F_EMPTY_PATH: libc::c_uint = 4;
    // SAFETY: NUL-terminated strings; "" + F_EMPTY_PATH names `from`.
    check(unsafe {
        libc::syscall(libc::SYS_move_mount, from, c"".as_ptr(), libc::AT_FDCWD, to.as_ptr(), MOVE_MOUNT_F_EMPTY_PATH)
    })
    .map(|_| ())
}

pub(super) fn mkdir(path: &CStr, mode: libc::mode_t) -> Result<(), i32> {
    // SAFETY: NUL-terminated path.
    match check(unsafe { libc::mkdir(path.as_ptr(), mode) } as libc::c_long) {
        Err(libc::EEXIST) | Ok(_) => Ok(()),
        Err(e) => Err(e),
    }
}

pub(super) fn symlink(target: &CStr, link: &CStr) -> Result<(), i32> {
    // SAFETY: NUL-terminated strings.
    check(unsafe { libc::symlink(target.as_ptr(), link.as_ptr()) } as libc::c_long).map(|_| ())
}

/// Creates (or truncates) a file and writes `content` into it.
pub(super) fn create_file(path: &CStr, content: &[u8], mode: libc::mode_t) -> Result<(), i32> {
    // SAFETY: NUL-terminated path; the descriptor is closed below.
    let fd = check(unsafe {
        libc::open(
            path.as_ptr(),
            libc::O_WRONLY | libc::O_CREAT | libc::O_TRUNC | libc::O_CLOEXEC,
            mode as libc::c_uint,
        )
    } as libc::c_long)? as RawFd;
    let r = write_all(fd, content);
    close(fd);
    r
}

pub(super) fn pivot_root_here() -> Result<(), i32> {
    // SAFETY: NUL-terminated strings.
    check(unsafe { libc::syscall(libc::SYS_pivot_root, c".".as_ptr(), c".".as_ptr()) }).map(|_| ())
}

pub(super) fn umount_detach(path: &CStr) -> Result<(), i32> {
    // SAFETY: NUL-terminated path.
    check(unsafe { libc::umount2(path.as_ptr(), libc::MNT_DETACH) } as libc::c_long).map(|_| ())
}

pub(super) fn chdir(path: &CStr) -> Result<(), i32> {
    // SAFETY: NUL-terminated path.
    check(unsafe { libc::chdir(path.as_ptr()) } as libc::c_long).map(|_| ())
}

pub(super) fn sethostname(name: &[u8]) -> Result<(), i32> {
    // SAFETY: `name` is valid for its length.
    check(unsafe { libc::sethostname(name.as_ptr().cast(), name.len()) } as libc::c_long).map(|_| ())
}

/// Brings the loopback interface up (in the run's own network namespace).
pub(super) fn loopback_up() -> Result<(), i32> {
    // SAFETY: a datagram socket used for one ioctl; ifreq is plain data.
    unsafe {
        let s = check(libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) as libc::c_long)? as RawFd;
        let mut req: libc::ifreq = std::mem::zeroed();
        req.ifr_name[..2].copy_from_slice(&[b'l' as libc::c_char, b'o' as libc::c_char]);
        req.ifr_ifru.ifru_flags = (libc::IFF_UP | libc::IFF_LOOPBACK | libc::IFF_RUNNING) as libc::c_short;
        let r = check(libc::ioctl(s, libc::SIOCSIFFLAGS, &req) as libc::c_long);
        close(s);
        r.map(|_| ())
    }
}

/// Sets every ignored signal back to its default action and unblocks all signals (handled ones
/// return to their default at `execve` anyway). Raw `rt_sigaction`: the C library refuses to
/// touch the signals it reserves for itself (32 and 33), which can arrive ignored too.
/// Async-signal-safe.
pub(super) fn reset_signals() {
    /// The kernel's `struct sigaction` for x86-64.
    #[repr(C)]
    struct KernelSigaction {
        handler: usize,
        flags: u64,
        restorer: usize,
        mask: u64,
    }
    // SAFETY: rt_sigaction and rt_sigprocmask with valid structs of the sizes the kernel expects.
    unsafe {
        for sig in 1..=64 {
            let mut old = KernelSigaction { handler: 0, flags: 0, restorer: 0, mask: 0 };
            let queried = libc::syscall(libc::SYS_rt_sigaction, sig, std::ptr::null::<KernelSigaction>(), &mut old, 8);
            if queried == 0 && old.handler == libc::SIG_IGN {
                let dfl = KernelSigaction { handler: libc::SIG_DFL, flags: 0, restorer: 0, mask: 0 };
                libc::syscall(libc::SYS_rt_sigaction, sig, &dfl, std::ptr::null_mut::<KernelSigaction>(), 8);
            }
        }
        let none: u64 = 0;
        libc::syscall(libc::SYS_rt_sigprocmask, libc::SIG_SETMASK, &none, std::ptr::null_mut::<u64>(), 8);
    }
}

pub(super) fn setrlimit(resource: libc::__rlimit_resource_t, soft: u64, hard: u64) -> Result<(), i32> {
    let lim = libc::rlimit { rlim_cur: soft, rlim_max: hard };
    // SAFETY: valid rlimit struct; prlimit64 on ourselves (pid 0).
    check(unsafe {
        libc::syscall(
            libc::SYS_prlimit64,
            0,
            resource,
            &lim as *const libc::rlimit,
            std::ptr::null_mut::<libc::rlimit>(),
        )
    })
    .map(|_| ())
}

pub(super) fn setsid() -> Result<(), i32> {
    // SAFETY: no arguments.
    check(unsafe { libc::syscall(libc::SYS_setsid) }).map(|_| ())
}

pub(super) fn prctl(op: libc::c_int, arg: libc::c_ulong) -> Result<(), i32> {
    // SAFETY: the prctl operations used here take integer arguments only.
    check(unsafe { libc::prctl(op, arg, 0, 0, 0) } as libc::c_long).map(|_| ())
}

/// Restricts the CPUs this process (and its children) may run on to the first `n` of those it
/// may use now.
pub(super) fn limit_cpus(n: u32) -> Result<(), i32> {
    // SAFETY: cpu_set_t is plain data; the CPU_* helpers stay within it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        check(libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) as libc::c_long)?;
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
        check(libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) as libc::c_long).map(|_| ())
    }
}

/// Drops every capability: effective, permitted, inheritable, ambient and the bounding set.
pub(super) fn drop_capabilities() -> Result<(), i32> {
    for cap in 0..=63 {
        // SAFETY: integer arguments; EINVAL past the last capability ends the loop.
        if unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap, 0, 0, 0) } < 0 {
            if errno() == libc::EINVAL {
                break;
            }
            return Err(errno());
        }
    }
    // SAFETY: integer arguments.
    check(unsafe { libc::prctl(libc::PR_CAP_AMBIENT, libc::PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0) } as libc::c_long)?;
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
    check(unsafe { libc::syscall(libc::SYS_capset, &mut header as *mut Header, data.as_ptr()) }).map(|_| ())
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
pub(super) fn landlock_ruleset(fs: u64, net: u64, scoped: u64, abi: u32) -> Result<OwnedFd, i32> {
    let attr = RulesetAttr { handled_access_fs: fs, handled_access_net: net, scoped };
    // The attribute grew over ABI versions; pass the size this kernel knows.
    let size = match abi {
        0..=3 => 8,
        4 | 5 => 16,
        _ => 24,
    };
    // SAFETY: `attr` is valid for `size` bytes.
    check(unsafe { libc::syscall(libc::SYS_landlock_create_ruleset, &attr as *const RulesetAttr, size, 0) }).map(owned)
}

/// Allows `access` beneath `path` (opened `O_PATH`).
pub(super) fn landlock_allow(ruleset: RawFd, path: &CStr, access: u64) -> Result<(), i32> {
    const LANDLOCK_RULE_PATH_BENEATH: libc::c_int = 1;
    // SAFETY: NUL-terminated path.
    let fd = check(unsafe { libc::open(path.as_ptr(), libc::O_PATH | libc::O_CLOEXEC) } as libc::c_long)? as RawFd;
    let attr = PathBeneathAttr { allowed_access: access, parent_fd: fd };
    // SAFETY: `attr` is a valid path-beneath rule.
    let r = check(unsafe {
        libc::syscall(
            libc::SYS_landlock_add_rule,
            ruleset,
            LANDLOCK_RULE_PATH_BENEATH,
            &attr as *const PathBeneathAttr,
            0,
        )
    });
    close(fd);
    r.map(|_| ())
}

pub(super) fn landlock_restrict(ruleset: RawFd) -> Result<(), i32> {
    // SAFETY: plain syscall on a descriptor.
    check(unsafe { libc::syscall(libc::SYS_landlock_restrict_self, ruleset, 0) }).map(|_| ())
}

/// Installs a seccomp filter. With `listener`, returns the user-notification descriptor.
pub(super) fn seccomp_install(program: &[libc::sock_filter], listener: bool) -> Result<Option<RawFd>, i32> {
    const SECCOMP_SET_MODE_FILTER: libc::c_uint = 1;
    const SECCOMP_FILTER_FLAG_NEW_LISTENER: libc::c_ulong = 1 << 3;
    let prog = libc::sock_fprog { len: program.len() as u16, filter: program.as_ptr() as *mut libc::sock_filter };
    let flags = if listener { SECCOMP_FILTER_FLAG_NEW_LISTENER } else { 0 };
    // SAFETY: `prog` points at `len` valid instructions that outlive the call.
    let rc = check(unsafe {
        libc::syscall(libc::SYS_seccomp, SECCOMP_SET_MODE_FILTER, flags, &prog as *const libc::sock_fprog)
    })?;
    Ok(listener.then_some(rc as RawFd))
}

/// Marks every descriptor from `first` up close-on-exec (they vanish at `execve`, while the
/// error pipe still works if `execve` fails).
pub(super) fn close_from_on_exec(first: u32) {
    const CLOSE_RANGE_CLOEXEC: libc::c_uint = 1 << 2;
    // SAFETY: changing descriptor flags has no memory-safety preconditions.
    unsafe { libc::syscall(libc::SYS_close_range, first, u32::MAX, CLOSE_RANGE_CLOEXEC) };
}

/// Size of the stack pid 2 uses between its creation and `execve`.
pub(super) const SPAWN_STACK: usize = 64 * 1024;

/// Starts `f(arg)` in a new process that shares this one's memory until it executes or exits
/// (`CLONE_VM | CLONE_VFORK`); this process is suspended meanwhile. `stack` points at
/// `SPAWN_STACK` bytes. Returns the new pid, or -1.
pub(super) fn spawn_vfork(
    stack: *mut u8,
    f: extern "C" fn(*mut libc::c_void) -> libc::c_int,
    arg: *mut libc::c_void,
) -> libc::pid_t {
    // SAFETY: glibc's clone runs `f` on the given stack (its top, 16-byte aligned) in the new
    // process; CLONE_VFORK keeps this process, and so `arg` and the stack, suspended and alive
    // until the child executes or exits. glibc's clone takes no locks and runs no fork handlers.
    unsafe {
        let top = (stack.add(SPAWN_STACK) as usize & !15) as *mut libc::c_void;
        libc::clone(f, top, libc::CLONE_VM | libc::CLONE_VFORK | libc::SIGCHLD, arg)
    }
}

/// Closes every descriptor except `keep`.
pub(super) fn close_all_but(keep: RawFd) {
    let keep = keep as u32;
    // SAFETY: closing descriptors has no memory-safety preconditions.
    unsafe {
        if keep > 0 {
            libc::syscall(libc::SYS_close_range, 0u32, keep - 1, 0u32);
        }
        libc::syscall(libc::SYS_close_range, keep + 1, u32::MAX, 0u32);
    }
}

/// `execve`; returns only on failure.
pub(super) fn execve(path: &CStr, argv: &[*const libc::c_char], envp: &[*const libc::c_char]) -> i32 {
    // SAFETY: `argv` and `envp` are NULL-terminated arrays of NUL-terminated strings that the
    // parent built before clone and that live in this address space.
    unsafe { libc::execve(path.as_ptr(), argv.as_ptr(), envp.as_ptr()) };
    errno()
}

pub(super) fn exit(code: i32) -> ! {
    // SAFETY: `_exit` never returns and runs no destructors or atexit handlers.
    unsafe { libc::_exit(code) }
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
