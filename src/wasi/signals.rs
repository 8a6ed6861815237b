//! `proc_raise`: what a WASI guest raising a signal does to its run.
//!
//! WASI preview 1 numbers signals its own way (`wasi_snapshot_preview1`'s `signal` enum): 1-15
//! are the Linux numbers, 16-30 are Linux's 17-31 (WASI has no 16, `SIGSTKFLT`). A guest that
//! raises a signal whose default action ends a process ends its run with
//! [`Status::Signaled`](crate::Status::Signaled) and the Linux number — the status a native
//! program raising the same signal gets on the process backend. Signals whose default action
//! is to ignore them (`SIGCHLD`, `SIGURG`, `SIGWINCH`) or to continue (`SIGCONT`) do nothing.
//! A WASI guest has no one to continue it, so the stop signals (`SIGSTOP`, `SIGTSTP`, `SIGTTIN`,
//! `SIGTTOU`) do nothing either, rather than leave the run hanging until its timeout.

/// What `proc_raise(signal)` does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Raise {
    /// The run ends, killed by this (Linux) signal.
    Terminate(i32),
    /// Nothing happens; `proc_raise` returns success.
    Ignore,
    /// Not a WASI signal number: `proc_raise` fails with `EINVAL`.
    Invalid,
}

/// WASI's `EINVAL`.
pub(crate) const ERRNO_INVAL: i32 = 28;

/// The effect of raising WASI signal `wasi_signal`.
pub(crate) fn raise(wasi_signal: i32) -> Raise {
    let linux = match wasi_signal {
        0 => return Raise::Ignore,
        1..=15 => wasi_signal,
        16..=30 => wasi_signal + 1,
        _ => return Raise::Invalid,
    };
    match linux {
        libc::SIGCHLD | libc::SIGURG | libc::SIGWINCH | libc::SIGCONT => Raise::Ignore,
        libc::SIGSTOP | libc::SIGTSTP | libc::SIGTTIN | libc::SIGTTOU => Raise::Ignore,
        sig => Raise::Terminate(sig),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wasi_numbers_map_to_linux_ones() {
        assert_eq!(raise(9), Raise::Terminate(libc::SIGKILL));
        assert_eq!(raise(15), Raise::Terminate(libc::SIGTERM));
        assert_eq!(raise(6), Raise::Terminate(libc::SIGABRT));
        assert_eq!(raise(16), Raise::Ignore); // chld
        assert_eq!(raise(18), Raise::Ignore); // stop
        assert_eq!(raise(23), Raise::Terminate(libc::SIGXCPU));
        assert_eq!(raise(30), Raise::Terminate(libc::SIGSYS));
        assert_eq!(raise(0), Raise::Ignore);
        assert_eq!(raise(31), Raise::Invalid);
        assert_eq!(raise(-1), Raise::Invalid);
    }
}
