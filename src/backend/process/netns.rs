//! Network namespaces made ahead of the runs that use them.
//!
//! A new network namespace is the single most expensive part of starting a jail here (≈ 0.4 ms of
//! `clone3`, measured: the kernel sets up a loopback device, per-namespace tables, sysctls). When
//! sandcell runs as root, a background thread keeps a few fresh, empty namespaces ready, and a
//! run takes one instead of creating its own in `clone3`. Each namespace serves exactly one run
//! and is never reused: when the run's last process exits, the kernel frees it as before. What
//! changes is who owns it: the host's user namespace instead of the run's, so the run's root has
//! no `CAP_NET_ADMIN` over its network (it cannot bring up or configure an interface) — stricter
//! than before. For the `loopback` policy, the thread brings `lo` up when it makes the namespace.
//!
//! Unprivileged, a namespace the run could join would have to be made inside a user namespace the
//! run then shares, so that path keeps creating the namespace in `clone3`. A run that finds no
//! namespace ready does the same; the pool never makes a run slower or weaker.

use std::collections::VecDeque;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::{Condvar, Mutex, OnceLock};

use super::sys;

/// Namespaces kept ready per kind: enough for back-to-back runs and a little concurrency; more
/// concurrent runs fall back to creating their own.
const READY: usize = 2;

#[derive(Default)]
struct State {
    /// Ready namespaces: `[0]` without, `[1]` with the loopback interface up.
    ready: [VecDeque<OwnedFd>; 2],
    /// Which kinds have been asked for (only those are made).
    wanted: [bool; 2],
}

struct Pool {
    state: Mutex<State>,
    changed: Condvar,
}

fn pool() -> &'static Pool {
    static POOL: OnceLock<&'static Pool> = OnceLock::new();
    POOL.get_or_init(|| {
        let pool: &'static Pool =
            Box::leak(Box::new(Pool { state: Mutex::new(State::default()), changed: Condvar::new() }));
        // If the thread cannot start (or later cannot make a namespace), the pool stays empty.
        let _ = std::thread::Builder::new().name("sandcell-netns".into()).spawn(move || fill(pool));
        pool
    })
}

/// Starts making namespaces of this kind (a sandbox that will want them calls this when built).
pub(super) fn prime(loopback: bool) {
    let pool = pool();
    let mut state = pool.state.lock().unwrap_or_else(|e| e.into_inner());
    state.wanted[usize::from(loopback)] = true;
    pool.changed.notify_all();
}

/// A fresh network namespace of this kind, if one is ready.
pub(super) fn take(loopback: bool) -> Option<OwnedFd> {
    let pool = pool();
    let mut state = pool.state.lock().unwrap_or_else(|e| e.into_inner());
    let kind = usize::from(loopback);
    state.wanted[kind] = true;
    let ns = state.ready[kind].pop_front();
    pool.changed.notify_all();
    ns
}

/// The pool's thread: keeps `READY` namespaces of each wanted kind.
fn fill(pool: &'static Pool) {
    let Ok(home) = std::fs::File::open("/proc/thread-self/ns/net") else { return };
    loop {
        let kind = {
            let mut state = pool.state.lock().unwrap_or_else(|e| e.into_inner());
            loop {
                let short = (0..2).find(|k| state.wanted[*k] && state.ready[*k].len() < READY);
                match short {
                    Some(k) => break k,
                    None => state = pool.changed.wait(state).unwrap_or_else(|e| e.into_inner()),
                }
            }
        };
        match make(kind == 1, home.as_raw_fd()) {
            Ok(ns) => pool.state.lock().unwrap_or_else(|e| e.into_inner()).ready[kind].push_back(ns),
            // Runs create their own namespaces from now on.
            Err(_) => return,
        }
    }
}

/// Makes a namespace on this thread and returns to `home`.
fn make(loopback: bool, home: RawFd) -> std::io::Result<OwnedFd> {
    let check = |rc: libc::c_int| if rc < 0 { Err(std::io::Error::last_os_error()) } else { Ok(rc) };
    // SAFETY: unshare and setns of the network namespace affect only this thread.
    check(unsafe { libc::unshare(libc::CLONE_NEWNET) })?;
    let made = (|| {
        // SAFETY: a NUL-terminated path; the descriptor is owned below.
        let fd = check(unsafe { libc::open(c"/proc/thread-self/ns/net".as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC) })?;
        // SAFETY: `fd` was just opened and is owned by nothing else.
        let ns = unsafe { OwnedFd::from_raw_fd(fd) };
        if loopback {
            sys::loopback_up().map_err(std::io::Error::from_raw_os_error)?;
        }
        Ok(ns)
    })();
    // SAFETY: `home` is this thread's original network namespace.
    check(unsafe { libc::setns(home, libc::CLONE_NEWNET) })?;
    made
}

/// The calling thread, temporarily in another network namespace: the process it clones while
/// there starts in that namespace. The caller blocks signals for as long as the thread is away,
/// so that no handler runs there.
pub(super) struct Away {
    home: OwnedFd,
}

impl Away {
    /// Moves the calling thread into `ns`.
    pub(super) fn enter(ns: &OwnedFd) -> std::io::Result<Away> {
        let home = OwnedFd::from(std::fs::File::open("/proc/thread-self/ns/net")?);
        // SAFETY: setns of the network namespace affects only this thread.
        if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(Away { home })
    }

    /// Returns the thread to its own namespace. Going back can only fail if the kernel cannot
    /// allocate a few bytes; it is tried a few times, and a failure is reported.
    pub(super) fn leave(self) -> std::io::Result<()> {
        let mut result = Ok(());
        for _ in 0..3 {
            // SAFETY: `home` is this thread's own network namespace.
            if unsafe { libc::setns(self.home.as_raw_fd(), libc::CLONE_NEWNET) } == 0 {
                return Ok(());
            }
            result = Err(std::io::Error::last_os_error());
        }
        result
    }
}
