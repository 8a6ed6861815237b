//! The jail: what the child does between `clone` and `execve`, as one linear sequence.
//!
//! Everything the child needs is computed by the parent beforehand ([`Plan`] per sandbox,
//! [`Launch`] per run). The child shares the parent's memory (`CLONE_VM`, on a stack of its own;
//! see `sys::clone_jail`), so from here on nothing allocates, locks, panics or touches
//! thread-local state: each step is a direct system call through [`sys`], the child writes only
//! to its stack, and the first failure is reported to the parent as `(step, errno)` over a
//! close-on-exec pipe, which `execve` closes on success.

use std::ffi::{CStr, CString};
use std::os::fd::RawFd;

use super::seccomp::Profile;
use super::sys;

/// Upper bound on bind mounts per run (system directories, `/etc` files, devices and policy
/// mounts), so the child can keep their descriptors in a fixed array.
pub(super) const MAX_BINDS: usize = 64;

/// A setup step, reported with the errno when it fails.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub(super) enum Step {
    WaitForParent = 1,
    BecomeRoot,
    OpenMountSource,
    MountProc,
    MountRoot,
    BuildRoot,
    BindMount,
    MountTmp,
    PivotRoot,
    ReadOnlyRoot,
    Hostname,
    Loopback,
    WorkingDirectory,
    Rlimits,
    CpuAffinity,
    NewSession,
    NoNewPrivileges,
    Landlock,
    DropCapabilities,
    Stdio,
    Seccomp,
    SendListener,
    Exec,
    JoinCgroup,
}

impl Step {
    pub(super) fn from_u32(v: u32) -> Option<Step> {
        use Step::*;
        [
            WaitForParent,
            BecomeRoot,
            OpenMountSource,
            MountProc,
            MountRoot,
            BuildRoot,
            BindMount,
            MountTmp,
            PivotRoot,
            ReadOnlyRoot,
            Hostname,
            Loopback,
            WorkingDirectory,
            Rlimits,
            CpuAffinity,
            NewSession,
            NoNewPrivileges,
            Landlock,
            DropCapabilities,
            Stdio,
            Seccomp,
            SendListener,
            Exec,
            JoinCgroup,
        ]
        .into_iter()
        .find(|s| *s as u32 == v)
    }

    /// What the step does, as the verb phrase of an error message.
    pub(super) fn action(self) -> &'static str {
        match self {
            Step::WaitForParent => "hand the new process its user-namespace mapping",
            Step::JoinCgroup => "move the sandboxed process into its cgroup",
            Step::BecomeRoot => "switch to the sandbox's user inside its user namespace",
            Step::OpenMountSource => "open a directory to mount into the sandbox",
            Step::MountProc => "mount /proc for the sandbox's pid namespace",
            Step::MountRoot => "create the sandbox's root filesystem",
            Step::BuildRoot => "create directories in the sandbox's root filesystem",
            Step::BindMount => "bind-mount a directory into the sandbox",
            Step::MountTmp => "mount the sandbox's private /tmp",
            Step::PivotRoot => "switch to the sandbox's root filesystem",
            Step::ReadOnlyRoot => "make the sandbox's root filesystem read-only",
            Step::Hostname => "set the sandbox's hostname",
            Step::Loopback => "bring up the sandbox's private loopback interface",
            Step::WorkingDirectory => "change to the program's working directory",
            Step::Rlimits => "set resource limits",
            Step::CpuAffinity => "restrict the CPUs the program may use",
            Step::NewSession => "start a new session",
            Step::NoNewPrivileges => "set no_new_privs",
            Step::Landlock => "apply the Landlock ruleset",
            Step::DropCapabilities => "drop all capabilities",
            Step::Stdio => "connect stdin, stdout and stderr",
            Step::Seccomp => "install the seccomp filter",
            Step::SendListener => "pass the seccomp listener to the host",
            Step::Exec => "execute the program",
        }
    }
}

/// A directory or file made visible in the sandbox.
pub(super) struct Bind {
    /// Host path, opened by the child with `open_tree` (unless the parent sends an id-mapped
    /// copy).
    pub(super) source: CString,
    /// Target under the staging root, e.g. `/tmp/usr`.
    pub(super) target: CString,
    /// Mount attributes (read-only, nosuid, nodev).
    pub(super) attrs: u64,
    /// Index into the id-mapped mounts the parent sends, when it sends one for this bind.
    pub(super) idmapped: Option<usize>,
}

/// A policy mount at `/`: the new root is that host directory, not a fresh one.
pub(super) struct RootMount {
    pub(super) source: CString,
    /// Mount attributes (read-only unless the mount is writable; always nosuid, nodev).
    pub(super) attrs: u64,
    /// Index into the id-mapped mounts the parent sends, when it sends one for the root.
    pub(super) idmapped: Option<usize>,
}

/// Everything about the jail that does not change between runs of a sandbox.
pub(super) struct Plan {
    /// The policy's root, when it has a mount at `/`; then /dev is a small tmpfs of the jail's,
    /// with `dev_files` and `dev_symlinks` in it, and nothing else of the skeleton is written.
    pub(super) root: Option<RootMount>,
    /// Mount points for the device nodes, in the /dev tmpfs over a root mount.
    pub(super) dev_files: Vec<CString>,
    /// `(target, link)` in the /dev tmpfs over a root mount (`/dev/fd -> /proc/self/fd`, ...).
    pub(super) dev_symlinks: Vec<(CString, CString)>,
    /// Directories to create in the new root, parents first (absolute, under the staging root).
    pub(super) dirs: Vec<CString>,
    /// Empty files to create as mount points for file binds.
    pub(super) files: Vec<CString>,
    /// Files with content (`/etc/passwd`, `/etc/group`).
    pub(super) contents: Vec<(CString, Vec<u8>)>,
    /// Symlinks `(target, link)`.
    pub(super) symlinks: Vec<(CString, CString)>,
    pub(super) binds: Vec<Bind>,
    /// `size=` option of the private /tmp.
    pub(super) tmp_size: CString,
    pub(super) loopback: bool,
    pub(super) cpus: Option<u32>,
    /// `(resource, soft, hard)`, set by init for itself and the program.
    pub(super) rlimits: Vec<(libc::__rlimit_resource_t, u64, u64)>,
    /// RLIMIT_NOFILE, set by the program's process just before it executes the program.
    pub(super) max_open_files: Option<u64>,
    pub(super) landlock: Option<LandlockPlan>,
    pub(super) seccomp: Profile,
    /// The root comes ready from the sandbox's template (see `template`): the parent sends a
    /// copy first in its message, and `dirs`, `files`, `contents`, `symlinks` and the device
    /// nodes are in it already.
    pub(super) template: bool,
    /// When the program exits, init kills and reaps what is left of the run and reports the
    /// tree's usage (`init`); false when the policy denies a system call that needs.
    pub(super) init_ends_run: bool,
}

/// Landlock rights for this kernel's ABI and the rules, by path inside the new root.
pub(super) struct LandlockPlan {
    pub(super) abi: u32,
    pub(super) handled_fs: u64,
    pub(super) handled_net: u64,
    pub(super) scoped: u64,
    pub(super) rules: Vec<(CString, u64)>,
}

/// What changes per run.
pub(super) struct Launch<'a> {
    pub(super) plan: &'a Plan,
    /// Candidate paths to execute, in order (a `PATH` search, or the one given path).
    pub(super) exec: &'a [CString],
    /// NULL-terminated argument and environment arrays pointing into strings the parent owns.
    pub(super) argv: &'a [*const libc::c_char],
    pub(super) envp: &'a [*const libc::c_char],
    pub(super) cwd: &'a CStr,
    /// Child ends of stdin, stdout, stderr.
    pub(super) stdio: [RawFd; 3],
    /// The child's end of the parent/child socket.
    pub(super) sync: RawFd,
    /// Write end of the close-on-exec error pipe.
    pub(super) error: RawFd,
    /// Stack memory for starting pid 2 (owned by the parent, copied into the child).
    pub(super) stack: *mut u8,
    /// The network namespace was made ready by the pool (loopback already up where asked).
    pub(super) network_ready: bool,
    /// The child shares the host's memory (`CLONE_VM`); then it must not change what belongs
    /// to that memory, such as whether it is dumpable.
    pub(super) shares_memory: bool,
    /// Where to say "init runs" (`vforker::STARTED`, with a futex wake), or null.
    pub(super) started: *const std::sync::atomic::AtomicU32,
    /// The CPUs the host's thread may run on (init's, once it has started).
    pub(super) cpus: libc::cpu_set_t,
    /// The `tasks` files of the run's cgroup v1 hierarchies, which init joins itself (on v2 it
    /// is born in its cgroup, `CLONE_INTO_CGROUP`).
    pub(super) cgroup_tasks: &'a [CString],
}

const STAGING_ROOT: &CStr = c"/tmp";

fn fail(error: RawFd, step: Step, errno: i32) -> ! {
    let mut record = [0u8; 8];
    record[..4].copy_from_slice(&(step as u32).to_ne_bytes());
    record[4..].copy_from_slice(&errno.to_ne_bytes());
    let _ = sys::write_all(error, &record);
    sys::exit(127)
}

/// The child's entry point (`sys::clone_jail`): `arg` is the parent's `Launch`.
pub(super) extern "C" fn entry(arg: *mut libc::c_void) -> libc::c_int {
    // SAFETY: the parent passes its `Launch`, which it keeps alive until this process is reaped.
    let launch = unsafe { &*(arg as *const Launch) };
    // SAFETY: when set, `started` points at the start's state, which outlives this process.
    if let Some(started) = unsafe { launch.started.as_ref() } {
        started.store(super::vforker::STARTED, std::sync::atomic::Ordering::Release);
        sys::futex_wake(started);
        // Started pinned to one CPU (see `vforker::start`): back to all the CPUs the host may use.
        let _ = sys::set_affinity(&launch.cpus);
    }
    child(launch)
}

/// The child's side: pid 1 of the run's pid namespace. It sets up the jail, then forks the
/// program as pid 2 and stays as a minimal init: it reaps orphans and, when the program exits,
/// hands its exact wait status to the host and exits, which ends every process left in the
/// namespace. (A program that were pid 1 itself would ignore signals it has no handler for,
/// even `kill -SEGV $$`.) Never returns.
pub(super) fn child(launch: &Launch) -> ! {
    let err = launch.error;
    let ruleset = match setup(launch) {
        Ok(ruleset) => ruleset,
        Err((step, errno)) => fail(err, step, errno),
    };
    // pid 2 shares this process's memory until it executes the program (CLONE_VM|CLONE_VFORK:
    // no page-table copy, and this init waits until the exec), on the stack the parent set aside.
    let program = Program { launch, landlock: ruleset.as_ref().map_or(-1, sys::Fd::raw) };
    match sys::spawn_vfork(launch.stack, exec_trampoline, &program as *const Program as *mut libc::c_void) {
        Ok(pid) => init(launch, pid),
        Err(errno) => fail(err, Step::Exec, errno),
    }
}

/// What pid 2 needs: the launch, and the Landlock ruleset to apply once more (or -1).
struct Program<'a> {
    launch: &'a Launch<'a>,
    landlock: RawFd,
}

extern "C" fn exec_trampoline(arg: *mut libc::c_void) -> libc::c_int {
    // SAFETY: `arg` is the `Program` of `child`, which is suspended (CLONE_VFORK) and keeps it
    // alive until this process executes the program or exits.
    exec_program(unsafe { &*(arg as *const Program) })
}

/// pid 2: connect stdio, close everything else at exec, and execute the first candidate that
/// exists (ENOENT moves on to the next; any other error is final).
fn exec_program(p: &Program) -> ! {
    let l = p.launch;
    // The program starts with no signal blocked (init blocks them all) and, as init reset them
    // (`setup`), none ignored.
    sys::unblock_signals();
    // A Landlock domain of its own, nested in init's with the same rules: Landlock lets a
    // process inspect or trace (ptrace, /proc/PID/mem, pidfd_getfd...) only processes in its
    // own domain or below, so the program cannot reach init — which, sharing the host's memory
    // (see `sys::clone_jail`), must be out of its reach.
    if p.landlock >= 0 {
        if let Err(e) = sys::landlock_restrict(p.landlock) {
            fail(l.error, Step::Landlock, e);
        }
    }
    for (target, fd) in l.stdio.iter().enumerate() {
        if let Err(e) = sys::dup2(*fd, target as RawFd) {
            fail(l.error, Step::Stdio, e);
        }
    }
    sys::close_from_on_exec(3);
    // The descriptor limit last: init's own descriptors (rulesets, mount sources) are not the
    // program's to count.
    if let Some(n) = l.plan.max_open_files {
        if let Err(e) = sys::setrlimit(libc::RLIMIT_NOFILE, n, n) {
            fail(l.error, Step::Rlimits, e);
        }
    }
    let mut last = libc::ENOENT;
    for path in l.exec {
        last = sys::execve(path, l.argv, l.envp);
        if last != libc::ENOENT && last != libc::ENOTDIR {
            break;
        }
    }
    fail(l.error, Step::Exec, last)
}

/// The size of init's final report: `S`, the program's wait status (4 bytes), and the CPU time
/// (µs) and largest resident set (bytes) of the program's whole tree (8 bytes each) — or `s`
/// and the status alone, when init leaves ending the run to the kernel.
pub(super) const REPORT_LEN: usize = 21;

/// pid 1 after the fork: holds no descriptor but its control socket (it started with a copy of
/// the host's descriptors and never executes anything, so it would otherwise keep them open,
/// among them the write end of this run's stdin and other runs' pipes), reaps every child, and
/// when the program exits, ends the run: it kills every other process of the namespace and
/// reaps them all (orphans are reparented to it; when it has no child left, nothing of the run
/// is alive), and only then reports the program's status and the tree's usage. The host returns
/// the run's result on that report, without waiting for init's own exit (which tears the
/// namespaces down; the host reaps init in the background). Its signals stay blocked: it shares
/// the host's memory, and no handler of the host may run in it.
fn init(l: &Launch, program: libc::pid_t) -> ! {
    sys::close_all_except(&mut [l.sync]);
    loop {
        let (pid, status) = match sys::wait_any() {
            Ok(reaped) => reaped,
            Err(libc::EINTR) => continue,
            Err(_) => sys::exit(0),
        };
        if pid == program && !l.plan.init_ends_run {
            // The kernel ends the rest of the run when init exits; the host waits for that.
            let mut msg = [0u8; REPORT_LEN];
            msg[0] = b's';
            msg[1..5].copy_from_slice(&status.to_ne_bytes());
            let _ = sys::send_fds(l.sync, &msg, &[]);
            sys::exit(0);
        }
        if pid == program {
            // A process forking at this moment takes its child with it (the kernel delivers a
            // signal sent to many processes during a fork to the new child as well).
            sys::kill_all_others();
            let ended = loop {
                match sys::wait_any() {
                    Ok(_) | Err(libc::EINTR) => {}
                    Err(libc::ECHILD) => break true, // nothing left
                    Err(_) => break false,
                }
            };
            let (cpu, peak) = sys::children_usage();
            let mut msg = [0u8; REPORT_LEN];
            // Should waiting fail otherwise (it cannot), the kernel ends the run at init's exit.
            msg[0] = if ended { b'S' } else { b's' };
            msg[1..5].copy_from_slice(&status.to_ne_bytes());
            msg[5..13].copy_from_slice(&(cpu.as_micros() as u64).to_ne_bytes());
            msg[13..21].copy_from_slice(&peak.to_ne_bytes());
            // Nothing of `l` (the host's memory, which the host may release once it has this
            // message) is used after this point.
            let _ = sys::send_fds(l.sync, &msg, &[]);
            sys::exit(0);
        }
    }
}

/// Sets the jail up; returns the Landlock ruleset it applied, if any (pid 2 applies it again).
fn setup(l: &Launch) -> Result<Option<sys::Fd>, (Step, i32)> {
    let plan = l.plan;
    let at = |step: Step| move |errno: i32| (step, errno);

    // 0. Only this run's own descriptors: init starts with a copy of the host's descriptor
    //    table, which holds other runs' pipes and whatever else the host has open. Closed first,
    //    so that nothing of the host (or of another run) is ever held here, and so that the
    //    descriptors this run creates below fit under any limit, however many the host has.
    let mut keep = [l.stdio[0], l.stdio[1], l.stdio[2], l.sync, l.error];
    sys::close_all_except(&mut keep);

    // 1. Die with the host: if the parent thread goes, so does this process, and with it (as
    //    pid 1 of its namespace) every process of the run.
    sys::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong).map_err(at(Step::WaitForParent))?;
    // SAFETY: getppid has no preconditions.
    let parent = unsafe { libc::getppid() };

    //    Every signal back to its default action (the host's ignore SIGPIPE, for one; the
    //    program inherits these), while the parent is busy anyway. The mask stays full: no
    //    handler of the host may run here, and init ignores default-action signals anyway.
    sys::reset_signals();

    // 2. Wait until the parent has written our uid/gid maps. The message carries the id-mapped
    //    mounts the parent prepared, if any. EOF: the parent died.
    let mut msg = [0u8; 1];
    let mut received = [-1 as RawFd; MAX_BINDS + 1];
    match sys::recv_fds(l.sync, &mut msg, &mut received) {
        Ok((1, _)) => {}
        Ok(_) => return Err((Step::WaitForParent, libc::EPIPE)),
        Err(e) => return Err((Step::WaitForParent, e)),
    }
    // With a template, its copy comes first.
    let (root_copy, idmapped) = if plan.template { (received[0], &received[1..]) } else { (-1, &received[..]) };

    // 2b. Join the run's cgroups, before anything else of the run exists. Until step 3 this
    //     process still has the host's root uid (the user namespace does not change it), so
    //     it may write the root-owned `tasks` files; and a process moving itself alone — "0"
    //     to `tasks` — takes no global lock, where the host writing its pid to `cgroup.procs`
    //     (every thread of a process) takes one that waits for an RCU grace period whenever
    //     cgroups were not changed for a while: ≈ 1.2 ms in one run out of five, measured.
    for tasks in l.cgroup_tasks {
        let fd = sys::open(tasks, libc::O_WRONLY | libc::O_CLOEXEC).map_err(at(Step::JoinCgroup))?;
        sys::write_all(fd.raw(), b"0").map_err(at(Step::JoinCgroup))?;
    }

    // 3. Become the sandbox's root inside the user namespace. Outside, that is the unprivileged
    //    uid the parent mapped (never the host's root).
    sys::become_root().map_err(at(Step::BecomeRoot))?;
    //    A change of user id clears the parent-death signal: set it again, and if the host died
    //    in between (this process then has another parent), go now.
    sys::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong).map_err(at(Step::BecomeRoot))?;
    // SAFETY: getppid has no preconditions.
    if unsafe { libc::getppid() } != parent {
        return Err((Step::BecomeRoot, libc::ESRCH));
    }

    // 4. Nothing mounted here propagates back to the host: the mount namespace belongs to a
    //    less privileged user namespace, so the kernel made every copied mount a slave (receive
    //    only), and the new mounts below are private. (Remounting the copies private would only
    //    cost time.)

    // 5. Take detached copies of everything to be bind-mounted, while the host's tree is still
    //    our root. System directories, `/etc` files and policy mounts become read-only as the
    //    plan says; everything is nosuid, and nodev except the device nodes.
    let mut sources = [-1 as RawFd; MAX_BINDS];
    for (i, bind) in plan.binds.iter().enumerate() {
        let fd = match bind.idmapped.map(|k| idmapped[k]).filter(|fd| *fd >= 0) {
            Some(fd) => fd,
            None => {
                let fd = sys::open_tree_clone(&bind.source).map_err(at(Step::OpenMountSource))?;
                sys::mount_setattr(fd.raw(), bind.attrs, None).map_err(at(Step::OpenMountSource))?;
                fd.into_raw()
            }
        };
        sources[i] = fd;
    }

    // 6. A /proc for our pid namespace. The kernel allows this in a user namespace only while a
    //    full /proc is visible, i.e. before the host's tree is hidden. `hidepid=invisible`: a
    //    process sees only the processes it may inspect (ptrace read access) — for the program,
    //    its own tree, not this init, which shares the host's memory: /proc/1/cmdline would
    //    show the host's arguments. (The program's nested Landlock domain denies it that access
    //    to init; without Landlock, init is not dumpable, which denies it too.)
    let proc = sys::new_fs(
        c"proc",
        &[(c"hidepid", c"invisible")],
        sys::MOUNT_ATTR_NOSUID | sys::MOUNT_ATTR_NODEV | 0x8, /* noexec */
    )
    .map_err(at(Step::MountProc))?;

    // 7. The new root: a small tmpfs, attached over /tmp of this (private) namespace while it is
    //    being built.
    //    (Or the copy of the sandbox's read-only template, with the skeleton of step 8 in it; or
    //    the policy's mount at `/`.)
    if let Some(root) = &plan.root {
        let fd = match root.idmapped.map(|k| idmapped[k]).filter(|fd| *fd >= 0) {
            Some(fd) => fd,
            None => {
                let fd = sys::open_tree_clone(&root.source).map_err(at(Step::MountRoot))?;
                sys::mount_setattr(fd.raw(), root.attrs, None).map_err(at(Step::MountRoot))?;
                fd.into_raw()
            }
        };
        sys::move_mount(fd, STAGING_ROOT).map_err(at(Step::MountRoot))?;
        sys::close(fd);
    } else if plan.template {
        if root_copy < 0 {
            return Err((Step::MountRoot, libc::EBADF));
        }
        sys::move_mount(root_copy, STAGING_ROOT).map_err(at(Step::MountRoot))?;
        sys::close(root_copy);
    } else {
        let root = sys::new_fs(
            c"tmpfs",
            &[(c"mode", c"0755"), (c"size", c"4m")],
            sys::MOUNT_ATTR_NOSUID | sys::MOUNT_ATTR_NODEV,
        )
        .map_err(at(Step::MountRoot))?;
        sys::move_mount(root.raw(), STAGING_ROOT).map_err(at(Step::MountRoot))?;
    }

    // 8. Its skeleton: directories, mount-point files, symlinks (`/bin -> usr/bin`), and the
    //    synthetic `/etc/passwd` and `/etc/group` (none with a template: it has them).
    //    Over a root mount, only the mount points, where they are missing, and a /dev of the
    //    jail's own.
    for dir in &plan.dirs {
        sys::mkdir(dir, 0o755).map_err(at(Step::BuildRoot))?;
    }
    for file in &plan.files {
        sys::mount_point_file(file).map_err(at(Step::BuildRoot))?;
    }
    if plan.root.is_some() {
        let dev = sys::new_fs(
            c"tmpfs",
            &[(c"mode", c"0755"), (c"size", c"64k")],
            sys::MOUNT_ATTR_NOSUID | sys::MOUNT_ATTR_NOEXEC,
        )
        .map_err(at(Step::BuildRoot))?;
        sys::move_mount(dev.raw(), c"/tmp/dev").map_err(at(Step::BuildRoot))?;
        for file in &plan.dev_files {
            sys::mount_point_file(file).map_err(at(Step::BuildRoot))?;
        }
        for (target, link) in &plan.dev_symlinks {
            sys::symlink(target, link).map_err(at(Step::BuildRoot))?;
        }
    }
    for (path, content) in &plan.contents {
        sys::create_file(path, content, 0o644).map_err(at(Step::BuildRoot))?;
    }
    for (target, link) in &plan.symlinks {
        sys::symlink(target, link).map_err(at(Step::BuildRoot))?;
    }

    // 9. Attach the bind mounts, /proc and a private, size-capped /tmp.
    for (i, bind) in plan.binds.iter().enumerate() {
        sys::move_mount(sources[i], &bind.target).map_err(at(Step::BindMount))?;
        sys::close(sources[i]);
    }
    sys::move_mount(proc.raw(), c"/tmp/proc").map_err(at(Step::MountProc))?;
    let tmp = sys::new_fs(
        c"tmpfs",
        &[(c"mode", c"1777"), (c"size", &plan.tmp_size)],
        sys::MOUNT_ATTR_NOSUID | sys::MOUNT_ATTR_NODEV,
    )
    .map_err(at(Step::MountTmp))?;
    sys::move_mount(tmp.raw(), c"/tmp/tmp").map_err(at(Step::MountTmp))?;
    drop((proc, tmp));

    // 10. Switch roots: pivot_root(".", ".") stacks the old root under the new one, and the lazy
    //     unmount detaches the whole host tree from this namespace.
    sys::chdir(STAGING_ROOT).map_err(at(Step::PivotRoot))?;
    sys::pivot_root_here().map_err(at(Step::PivotRoot))?;
    sys::umount_detach(c".").map_err(at(Step::PivotRoot))?;
    sys::chdir(c"/").map_err(at(Step::PivotRoot))?;

    // 11. The root itself is read-only; only /tmp and read-write mounts can be written. (A
    //     template's copy is read-only already, and holds the device nodes: not nodev. A root
    //     mount is as the policy says.)
    if !plan.template && plan.root.is_none() {
        sys::mount(
            None,
            c"/",
            None,
            libc::MS_REMOUNT | libc::MS_BIND | libc::MS_RDONLY | libc::MS_NOSUID | libc::MS_NODEV,
            None,
        )
        .map_err(at(Step::ReadOnlyRoot))?;
    }

    // 12. Identity and network inside the namespaces.
    sys::sethostname(b"sandcell").map_err(at(Step::Hostname))?;
    if plan.loopback && !l.network_ready {
        sys::loopback_up().map_err(at(Step::Loopback))?;
    }
    sys::chdir(l.cwd).map_err(at(Step::WorkingDirectory))?;

    // 13. Resource limits (per process; the cgroup limits for the whole tree were set by the
    //     parent), CPU affinity, a new session without a controlling terminal.
    for &(resource, soft, hard) in &plan.rlimits {
        sys::setrlimit(resource, soft, hard).map_err(at(Step::Rlimits))?;
    }
    if let Some(n) = plan.cpus {
        sys::limit_cpus(n).map_err(at(Step::CpuAffinity))?;
    }
    sys::setsid().map_err(at(Step::NewSession))?;

    // 14. No new privileges (setuid bits and file capabilities are ignored from now on), then
    //     Landlock, then no capabilities at all.
    sys::prctl(libc::PR_SET_NO_NEW_PRIVS, 1).map_err(at(Step::NoNewPrivileges))?;
    let mut landlock = None;
    if let Some(ll) = &plan.landlock {
        let ruleset =
            sys::landlock_ruleset(ll.handled_fs, ll.handled_net, ll.scoped, ll.abi).map_err(at(Step::Landlock))?;
        for (path, access) in &ll.rules {
            sys::landlock_allow(ruleset.raw(), path, *access).map_err(at(Step::Landlock))?;
        }
        sys::landlock_restrict(ruleset.raw()).map_err(at(Step::Landlock))?;
        landlock = Some(ruleset);
    }
    sys::drop_capabilities().map_err(at(Step::DropCapabilities))?;

    // 15. Init out of the guest's reach (/proc/1/mem and the like). With its own copy of the
    //     host's memory: not dumpable. Sharing the host's memory, that flag would be the host's
    //     own; then the program's nested Landlock domain keeps it away (see `exec_program`).
    if !l.shares_memory {
        sys::prctl(libc::PR_SET_DUMPABLE, 0).map_err(at(Step::NoNewPrivileges))?;
    }

    // 16. seccomp last (it would forbid the steps above); it covers this init and the program.
    //     The filter comes with its user-notification listener, which goes to the host.
    let listener =
        sys::seccomp_install(super::seccomp::as_libc(&plan.seccomp.filter), true).map_err(at(Step::Seccomp))?;
    if let Some(fd) = listener {
        sys::send_fds(l.sync, b"L", &[fd]).map_err(at(Step::SendListener))?;
        sys::close(fd);
    }
    Ok(landlock)
}
