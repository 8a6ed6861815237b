//! Small libc wrappers shared by the backends. Backend-specific system calls live in each
//! backend's own `sys.rs`.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::time::Duration;

fn cstring(path: &Path) -> io::Result<CString> {
    CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains a NUL byte"))
}

/// Opens a directory as an `O_PATH` descriptor.
pub(crate) fn open_dir_path(path: &Path) -> io::Result<OwnedFd> {
    let c = cstring(path)?;
    // SAFETY: `c` is a valid NUL-terminated string; the returned fd is checked and then owned.
    let fd = unsafe { libc::open(c.as_ptr(), libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just returned by open and is not owned elsewhere.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Result of resolving a path beneath a directory.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Beneath {
    /// The path resolves inside the directory (or does not exist yet, with its parent inside).
    Inside,
    /// Resolving it leaves the directory (through `..` or a symlink) or crosses a magic link.
    Escapes,
}

/// Checks with `openat2(RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS)` whether `rel` (relative to
/// `dir`) resolves inside `dir`, following symlinks in every component, or in all but the last
/// when `follow_last` is false. The kernel does the walk, so this holds for symlinks anywhere in
/// the path. Missing paths count as inside: the operation that follows will fail on its own.
pub(crate) fn resolve_beneath(dir: &OwnedFd, rel: &Path, follow_last: bool) -> io::Result<Beneath> {
    if rel.as_os_str().is_empty() {
        return Ok(Beneath::Inside);
    }
    let (target, flags) = if follow_last {
        (rel, 0)
    } else {
        match rel.parent() {
            Some(p) if !p.as_os_str().is_empty() => (p, 0),
            _ => return Ok(Beneath::Inside),
        }
    };
    let c = cstring(target)?;
    // SAFETY: open_how is a plain C struct of integers; all-zero is a valid value.
    let mut how: libc::open_how = unsafe { std::mem::zeroed() };
    how.flags = (libc::O_PATH | libc::O_CLOEXEC | flags) as u64;
    how.resolve = libc::RESOLVE_BENEATH | libc::RESOLVE_NO_MAGICLINKS;
    // SAFETY: `how` is a valid open_how of the size passed; `c` is NUL-terminated; `dir` is open.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_openat2,
            dir.as_raw_fd(),
            c.as_ptr(),
            &how as *const libc::open_how,
            std::mem::size_of::<libc::open_how>(),
        )
    };
    if fd >= 0 {
        // SAFETY: the kernel returned a new descriptor that nothing else owns.
        drop(unsafe { OwnedFd::from_raw_fd(fd as i32) });
        return Ok(Beneath::Inside);
    }
    let err = io::Error::last_os_error();
    match err.raw_os_error() {
        Some(libc::EXDEV) | Some(libc::ELOOP) => Ok(Beneath::Escapes),
        Some(libc::ENOENT) | Some(libc::ENOTDIR) | Some(libc::EACCES) => Ok(Beneath::Inside),
        _ => Err(err),
    }
}

/// CPU time used by the calling thread.
pub(crate) fn thread_cpu_time() -> Duration {
    clock_time(libc::CLOCK_THREAD_CPUTIME_ID).unwrap_or_default()
}

/// The CPU-time clock of the calling thread, readable from other threads.
pub(crate) fn current_thread_cpu_clock() -> Option<libc::clockid_t> {
    let mut clock: libc::clockid_t = 0;
    // SAFETY: pthread_self is always valid for the calling thread; `clock` is a valid out-pointer.
    let rc = unsafe { libc::pthread_getcpuclockid(libc::pthread_self(), &mut clock) };
    (rc == 0).then_some(clock)
}

/// Reads a clock.
pub(crate) fn clock_time(clock: libc::clockid_t) -> Option<Duration> {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `ts` is a valid out-pointer; an invalid clock id only makes the call fail.
    let rc = unsafe { libc::clock_gettime(clock, &mut ts) };
    (rc == 0).then(|| Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32))
}

/// The CPUs the calling thread may run on (all of them if that cannot be read).
pub(crate) fn allowed_cpus() -> libc::cpu_set_t {
    // SAFETY: an all-zero cpu_set_t is valid; sched_getaffinity fills it.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is a valid cpu_set_t of the size passed.
    if unsafe { libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) } != 0 {
        for cpu in 0..libc::CPU_SETSIZE as usize {
            // SAFETY: `cpu` is below CPU_SETSIZE.
            unsafe { libc::CPU_SET(cpu, &mut set) };
        }
    }
    set
}

/// Runs thread `tid` (of this process) on the CPU the calling thread is on now, if that CPU is
/// in `allowed`. Best effort: a failure only costs speed.
pub(crate) fn pin_to_current_cpu(tid: libc::pid_t, allowed: &libc::cpu_set_t) {
    // SAFETY: sched_getcpu has no preconditions.
    let Ok(here) = usize::try_from(unsafe { libc::sched_getcpu() }) else { return };
    // SAFETY: `here` is checked against CPU_SETSIZE first.
    if here >= libc::CPU_SETSIZE as usize || !unsafe { libc::CPU_ISSET(here, allowed) } {
        return;
    }
    // SAFETY: an all-zero cpu_set_t is valid; `here` is below CPU_SETSIZE; `tid` is a thread of
    // this process (a stale one only makes the call fail).
    unsafe {
        let mut one: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(here, &mut one);
        libc::sched_setaffinity(tid, std::mem::size_of::<libc::cpu_set_t>(), &one);
    }
}
