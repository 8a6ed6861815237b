//! Threads that start jails with `CLONE_VM | CLONE_VFORK`, and wait in the kernel while the
//! jail's init runs.
//!
//! Why: a jail's init that shares the host's memory (`CLONE_VM`) avoids copying the host's page
//! tables and the copy-on-write faults that follow (see `sys::clone_jail`). But a process that
//! shares the host's memory must never be picked by the OOM killer — the kernel kills every
//! process sharing the victim's memory, the host included — and the kernel never picks a vfork
//! child that still shares its parent's memory (`in_vfork` in `oom_badness`). So init is a vfork
//! child, and its parent is one of these threads, suspended in `clone3` until init exits (when
//! the kernel lets it go). The caller goes on as soon as the kernel has made init.
//!
//! A thread serves one run at a time and waits for the next; as many exist as runs are in
//! progress at once. A thread idle for [`IDLE_FOR`] ends, unless it is one of the last
//! [`KEEP_IDLE`]: a burst of runs leaves no threads (or their descriptors) behind. They block every signal (init inherits that mask: no handler of the host
//! may run in it).

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicI32, AtomicU32, Ordering};
use std::sync::mpsc::{channel, Sender};
use std::sync::{Arc, Mutex};

use super::sys::{self, CloneArgs};

/// Where a start stands (`Job::state`).
const PENDING: u32 = 0;
/// Init runs (set by init itself, see `jail::entry`).
pub(super) const STARTED: u32 = 1;
/// `clone3` failed (`Job::errno` says why).
const FAILED: u32 = 2;

/// What the thread runs: `clone3` arguments, init's entry point and its argument.
type Work = (CloneArgs, extern "C" fn(*mut libc::c_void) -> libc::c_int, usize);

/// One start, shared by the caller, the thread and init.
pub(super) struct Job {
    work: Mutex<Option<Work>>,
    /// Set by the kernel (CLONE_PIDFD, CLONE_PARENT_SETTID) before init runs.
    pidfd: AtomicI32,
    pid: AtomicI32,
    /// `PENDING`, then `STARTED` (init) or `FAILED` (the thread).
    pub(super) state: AtomicU32,
    errno: AtomicI32,
    netns: Option<RawFd>,
}

struct Thread {
    jobs: Sender<Arc<Job>>,
    tid: libc::pid_t,
}

static IDLE: Mutex<Vec<Thread>> = Mutex::new(Vec::new());

/// How long a thread waits for another run before it may end.
const IDLE_FOR: std::time::Duration = std::time::Duration::from_secs(1);
/// Idle threads kept however long they wait.
const KEEP_IDLE: usize = 2;

/// Starts init: `entry(arg)` on `stack`, in a new process with `flags` (namespaces), sharing
/// this process's memory, optionally in cgroup v2 directory `cgroup` (and in the network
/// namespace the job names); the thread runs on this CPU if it is in `cpus` (the CPUs init
/// widens to). Returns once the kernel has made init, with its pid and pidfd.
///
/// # Safety
/// As `sys::clone_jail`; besides, `entry` must set `job.state` to `STARTED` (with a futex wake)
/// first thing.
pub(super) unsafe fn start(
    job: &Arc<Job>,
    flags: u64,
    cgroup: Option<RawFd>,
    stack: &sys::Stack,
    cpus: &libc::cpu_set_t,
    entry: extern "C" fn(*mut libc::c_void) -> libc::c_int,
    arg: *mut libc::c_void,
) -> std::io::Result<(libc::pid_t, OwnedFd)> {
    {
        let (base, size) = stack.usable();
        let args = CloneArgs {
            flags: flags
                | libc::CLONE_VM as u64
                | libc::CLONE_VFORK as u64
                | libc::CLONE_PIDFD as u64
                | libc::CLONE_PARENT_SETTID as u64
                | if cgroup.is_some() { 0x2_0000_0000 } else { 0 },
            pidfd: job.pidfd.as_ptr() as u64,
            parent_tid: job.pid.as_ptr() as u64,
            exit_signal: libc::SIGCHLD as u64,
            stack: base,
            stack_size: size,
            cgroup: cgroup.map_or(0, |fd| fd as u64),
            ..CloneArgs::default()
        };
        *job.work.lock().unwrap_or_else(|e| e.into_inner()) = Some((args, entry, arg as usize));
    }
    let thread = match IDLE.lock().unwrap_or_else(|e| e.into_inner()).pop() {
        Some(t) => t,
        None => spawn()?,
    };
    // The thread (and so init, until it widens its CPUs again: see `jail::entry`) runs on this
    // thread's CPU: this thread waits while init sets up, and another CPU may be busy (making
    // the next network namespace, for one), which measured ≈ 0.3 ms slower.
    crate::sys::pin_to_current_cpu(thread.tid, cpus);
    if thread.jobs.send(job.clone()).is_err() {
        return Err(std::io::Error::other("a jail-starting thread ended"));
    }
    // Wait until the kernel has made init (it stores init's pidfd, then its pid, before init
    // first runs, and long before the vfork lets the thread go) — or clone3 failed. Polling
    // for the pid lets this thread go on while init is being scheduled; the futex is the
    // fallback when making it takes long.
    let spin_until = std::time::Instant::now() + std::time::Duration::from_millis(2);
    loop {
        match job.state.load(Ordering::Acquire) {
            FAILED => return Err(std::io::Error::from_raw_os_error(job.errno.load(Ordering::Acquire))),
            STARTED => break,
            _ if job.pid.load(Ordering::Acquire) > 0 && job.pidfd.load(Ordering::Acquire) >= 0 => break,
            _ if std::time::Instant::now() < spin_until => std::thread::yield_now(),
            _ => sys::futex_wait(&job.state, PENDING),
        }
    }
    // SAFETY: the kernel stored a new pidfd, owned by nobody else, before init ran.
    let pidfd = unsafe { OwnedFd::from_raw_fd(job.pidfd.load(Ordering::Acquire)) };
    Ok((job.pid.load(Ordering::Acquire), pidfd))
}

impl Job {
    /// A start into network namespace `netns` (kept open by the caller until `start` returns),
    /// or with whatever `flags` say.
    pub(super) fn new(netns: Option<&OwnedFd>) -> Arc<Job> {
        Arc::new(Job {
            work: Mutex::new(None),
            pidfd: AtomicI32::new(-1),
            pid: AtomicI32::new(0),
            state: AtomicU32::new(PENDING),
            errno: AtomicI32::new(0),
            netns: netns.map(|n| n.as_raw_fd()),
        })
    }
}

fn spawn() -> std::io::Result<Thread> {
    let (jobs, inbox) = channel::<Arc<Job>>();
    let me = jobs.clone();
    let (tid_tx, tid_rx) = channel();
    std::thread::Builder::new().name("sandcell-jail".into()).spawn(move || {
        // Every signal blocked, for good: init inherits this mask.
        let _blocked = sys::SignalsBlocked::new();
        // A thread that cannot serve says nothing: the caller then knows at once.
        let Ok(home) = std::fs::File::open("/proc/thread-self/ns/net") else { return };
        // SAFETY: gettid has no preconditions.
        let tid = unsafe { libc::gettid() };
        let _ = tid_tx.send(tid);
        loop {
            let job = match inbox.recv_timeout(IDLE_FOR) {
                Ok(job) => job,
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                    // Under the lock: a caller that took this thread from the list has sent
                    // (or is about to send) it a job, so a thread not in the list waits on.
                    let mut idle = IDLE.lock().unwrap_or_else(|e| e.into_inner());
                    if idle.len() > KEEP_IDLE {
                        if let Some(i) = idle.iter().position(|t| t.tid == tid) {
                            idle.swap_remove(i);
                            return;
                        }
                    }
                    continue;
                }
                Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => return,
            };
            run(&job, home.as_raw_fd());
            // The caller has its answer (init ran and has exited now, or clone3 failed).
            drop(job);
            IDLE.lock().unwrap_or_else(|e| e.into_inner()).push(Thread { jobs: me.clone(), tid });
        }
    })?;
    let tid = tid_rx.recv().map_err(|_| std::io::Error::other("a jail-starting thread ended at once"))?;
    Ok(Thread { jobs, tid })
}

fn run(job: &Job, home: RawFd) {
    let fail = |errno: i32| {
        job.errno.store(errno, Ordering::Release);
        job.state.store(FAILED, Ordering::Release);
        sys::futex_wake(&job.state);
    };
    if let Some(ns) = job.netns {
        // SAFETY: setns of the network namespace affects only this thread.
        if unsafe { libc::setns(ns, libc::CLONE_NEWNET) } < 0 {
            return fail(std::io::Error::last_os_error().raw_os_error().unwrap_or(libc::EIO));
        }
    }
    let Some((mut args, entry, arg)) = job.work.lock().unwrap_or_else(|e| e.into_inner()).take() else {
        return fail(libc::EINVAL);
    };
    // SAFETY: `start`'s contract: the stack, `arg` and what `entry` reads outlive init (the
    // caller reaps init before releasing them); this thread stays suspended until init exits.
    let rc = unsafe { sys::clone_args_run(&mut args, entry, arg as *mut libc::c_void) };
    if job.netns.is_some() {
        // SAFETY: back to this thread's own network namespace (fails only without memory).
        unsafe { libc::setns(home, libc::CLONE_NEWNET) };
    }
    if rc < 0 {
        fail(-rc as i32);
    } else if job.state.compare_exchange(PENDING, STARTED, Ordering::AcqRel, Ordering::Acquire).is_ok() {
        // Init has come and gone without saying it ran (killed at once): the caller, if it is
        // still waiting, has the kernel's pid and pidfd all the same.
        sys::futex_wake(&job.state);
    }
}
