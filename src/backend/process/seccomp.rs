//! The seccomp-bpf filters of a confined process, compiled with `seccompiler`.
//!
//! The profile is one BPF program made of the parts below, chained: a part that allows a call
//! passes it on to the next part, and the first part that does not allow it answers. The parts
//! come in the order of seccomp's precedence (errors before notifications), so this answers what
//! installing them as separate filters would (seccomp keeps the strictest answer; a test checks
//! the two agree), with one installation instead of four (each costs the kernel a verification,
//! a JIT compilation and a run of the filter per system call number to fill its action cache:
//! 0.2 ms in all, per run). In order:
//!
//! 1. **sockets**: `socketpair` of `AF_UNIX` always; `socket` of `AF_UNIX` only where the policy
//!    allows Unix sockets (`unix_sockets`), else it fails with `EACCES` — Landlock cannot keep a
//!    program from connecting to a host socket it can see in a mount (a container runtime's
//!    socket under a mounted `/run`), so it gets no socket to connect with; `AF_INET` and
//!    `AF_INET6` with a loopback network; other families fail with `EAFNOSUPPORT`.
//!
//!    **privilege bits**: `chmod`, `fchmod`, `fchmodat` with the setuid or setgid bit, and
//!    `open`, `openat`, `creat`, `mkdir`, `mkdirat`, `mknod`, `mknodat` creating something with
//!    either, fail with `EPERM`: whatever a program creates in a read-write mount stays on the
//!    host after the run, where a setuid file owned by the host's user would hand that user's
//!    identity to anyone who runs it. (`openat2`, whose mode seccomp cannot read, is not on the
//!    allow-list: `ENOSYS`, and libc falls back to `openat`. File capabilities need
//!    `CAP_SETFCAP`, which the program does not have.)
//!
//!    **shared memory** (only where no cgroup bounds the run's memory): `memfd_create`, System V
//!    shared memory and message queues fail with `ENOSYS`, and `fcntl(F_SETPIPE_SZ)` with
//!    `EPERM` — memory that no process's address space holds, which `RLIMIT_AS` cannot count.
//! 2. **affinity** (when the policy limits CPUs): `sched_setaffinity` fails with `EPERM`, so the
//!    guest cannot widen the CPU set it was given.
//! 3. **deny-list**: calls that must never be made — `ptrace`, `mount`, `unshare`, `bpf`,
//!    `io_uring_*`, `TIOCSTI`/`TIOCLINUX` ioctls (the command compared as 32 bits), namespace
//!    flags to `clone`, and the policy's `deny_syscalls`: a user notification. The host receives
//!    it, answers `EPERM`, and ends the run with `Status::SyscallDenied` naming the call.
//! 4. **allow-list**: the system calls ordinary programs (python3, sh, busybox, C programs) use;
//!    anything else fails with `ENOSYS` (so `clone3` makes glibc fall back to `clone`). Before
//!    seccompiler's architecture check (which kills `int 0x80`, i.e. i386 calls) it gets one more
//!    check of ours that kills x32 calls (numbers with bit 30 set). Every call the parts above
//!    refuse is on it.

use std::collections::{BTreeMap, BTreeSet};

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen as Len, SeccompCmpOp as Op, SeccompCondition as Cond, SeccompFilter,
    SeccompRule, TargetArch,
};

use crate::{Error, Network, Result};

macro_rules! syscalls {
    ($($name:ident),* $(,)?) => {
        &[$(stringify!($name)),*]
    };
}

/// The number of a system call of the lists below (all are in `crate::syscalls::TABLE`).
fn nr(name: &str) -> i64 {
    crate::syscalls::number(name).expect("the lists below name only system calls of the table")
}

/// The calls ordinary programs make.
const ALLOWED: &[&str] = syscalls![
    accept,
    accept4,
    access,
    alarm,
    arch_prctl,
    bind,
    brk,
    capget,
    capset,
    chdir,
    chmod,
    chown,
    clock_getres,
    clock_gettime,
    clock_nanosleep,
    clone,
    close,
    close_range,
    connect,
    copy_file_range,
    creat,
    dup,
    dup2,
    dup3,
    epoll_create,
    epoll_create1,
    epoll_ctl,
    epoll_pwait,
    epoll_pwait2,
    epoll_wait,
    eventfd,
    eventfd2,
    execve,
    execveat,
    exit,
    exit_group,
    faccessat,
    faccessat2,
    fadvise64,
    fallocate,
    fchdir,
    fchmod,
    fchmodat,
    fchown,
    fchownat,
    fcntl,
    fdatasync,
    fgetxattr,
    flistxattr,
    flock,
    fork,
    fremovexattr,
    fsetxattr,
    fstat,
    fstatfs,
    fsync,
    ftruncate,
    futex,
    futex_waitv,
    futimesat,
    get_mempolicy,
    get_robust_list,
    getcpu,
    getcwd,
    getdents,
    getdents64,
    getegid,
    geteuid,
    getgid,
    getgroups,
    getitimer,
    getpeername,
    getpgid,
    getpgrp,
    getpid,
    getppid,
    getpriority,
    getrandom,
    getresgid,
    getresuid,
    getrlimit,
    getrusage,
    getsid,
    getsockname,
    getsockopt,
    gettid,
    gettimeofday,
    getuid,
    getxattr,
    inotify_add_watch,
    inotify_init,
    inotify_init1,
    inotify_rm_watch,
    io_cancel,
    io_destroy,
    io_getevents,
    io_setup,
    io_submit,
    ioctl,
    kill,
    landlock_add_rule,
    landlock_create_ruleset,
    landlock_restrict_self,
    lchown,
    lgetxattr,
    link,
    linkat,
    listen,
    listxattr,
    llistxattr,
    lremovexattr,
    lseek,
    lsetxattr,
    lstat,
    madvise,
    mbind,
    membarrier,
    memfd_create,
    mincore,
    mkdir,
    mkdirat,
    mknod,
    mknodat,
    mlock,
    mlock2,
    mlockall,
    mmap,
    mprotect,
    mq_getsetattr,
    mq_notify,
    mq_open,
    mq_timedreceive,
    mq_timedsend,
    mq_unlink,
    mremap,
    msgctl,
    msgget,
    msgrcv,
    msgsnd,
    msync,
    munlock,
    munlockall,
    munmap,
    nanosleep,
    newfstatat,
    open,
    openat,
    pause,
    personality,
    pidfd_open,
    pidfd_send_signal,
    pipe,
    pipe2,
    pkey_alloc,
    pkey_free,
    pkey_mprotect,
    poll,
    ppoll,
    prctl,
    pread64,
    preadv,
    preadv2,
    prlimit64,
    pselect6,
    pwrite64,
    pwritev,
    pwritev2,
    read,
    readahead,
    readlink,
    readlinkat,
    readv,
    recvfrom,
    recvmmsg,
    recvmsg,
    remap_file_pages,
    removexattr,
    rename,
    renameat,
    renameat2,
    restart_syscall,
    rmdir,
    rseq,
    rt_sigaction,
    rt_sigpending,
    rt_sigprocmask,
    rt_sigqueueinfo,
    rt_sigreturn,
    rt_sigsuspend,
    rt_sigtimedwait,
    rt_tgsigqueueinfo,
    sched_get_priority_max,
    sched_get_priority_min,
    sched_getaffinity,
    sched_getattr,
    sched_getparam,
    sched_getscheduler,
    sched_rr_get_interval,
    sched_setaffinity,
    sched_setattr,
    sched_setparam,
    sched_setscheduler,
    sched_yield,
    seccomp,
    select,
    semctl,
    semget,
    semop,
    semtimedop,
    sendfile,
    sendmmsg,
    sendmsg,
    sendto,
    set_mempolicy,
    set_robust_list,
    set_tid_address,
    setfsgid,
    setfsuid,
    setgid,
    setgroups,
    setitimer,
    setpgid,
    setpriority,
    setregid,
    setresgid,
    setresuid,
    setreuid,
    setrlimit,
    setsid,
    setsockopt,
    setuid,
    setxattr,
    shmat,
    shmctl,
    shmdt,
    shmget,
    shutdown,
    sigaltstack,
    signalfd,
    signalfd4,
    socket,
    socketpair,
    splice,
    stat,
    statfs,
    statx,
    symlink,
    symlinkat,
    sync,
    sync_file_range,
    syncfs,
    sysinfo,
    tee,
    tgkill,
    time,
    timer_create,
    timer_delete,
    timer_getoverrun,
    timer_gettime,
    timer_settime,
    timerfd_create,
    timerfd_gettime,
    timerfd_settime,
    times,
    tkill,
    truncate,
    umask,
    uname,
    unlink,
    unlinkat,
    utime,
    utimensat,
    utimes,
    vfork,
    vmsplice,
    wait4,
    waitid,
    write,
    writev,
];

/// Calls that end the run as `SyscallDenied` (the list and a few more of the same kind).
const DENIED: &[&str] = syscalls![
    ptrace,
    process_vm_readv,
    process_vm_writev,
    process_madvise,
    mount,
    umount2,
    pivot_root,
    chroot,
    unshare,
    setns,
    bpf,
    perf_event_open,
    keyctl,
    add_key,
    request_key,
    init_module,
    finit_module,
    delete_module,
    kexec_load,
    kexec_file_load,
    userfaultfd,
    io_uring_setup,
    io_uring_enter,
    io_uring_register,
    reboot,
    swapon,
    swapoff,
    acct,
    quotactl,
    settimeofday,
    clock_settime,
    clock_adjtime,
    adjtimex,
    syslog,
    vhangup,
    iopl,
    ioperm,
    open_by_handle_at,
    name_to_handle_at,
    lookup_dcookie,
    fanotify_init,
    move_mount,
    open_tree,
    fsopen,
    fsconfig,
    fsmount,
    fspick,
    mount_setattr,
    pidfd_getfd,
    kcmp,
    sethostname,
    setdomainname,
    modify_ldt,
];

/// The name of an x86-64 system call number, when sandcell knows it.
pub(super) fn name_of(nr: i64) -> Option<&'static str> {
    crate::syscalls::name(nr)
}

const TIOCSTI: u64 = 0x5412;
const TIOCLINUX: u64 = 0x541C;
const CLONE_NEW_FLAGS: [u64; 8] = [
    libc::CLONE_NEWNS as u64,
    libc::CLONE_NEWCGROUP as u64,
    libc::CLONE_NEWUTS as u64,
    libc::CLONE_NEWIPC as u64,
    libc::CLONE_NEWUSER as u64,
    libc::CLONE_NEWPID as u64,
    libc::CLONE_NEWNET as u64,
    0x80, // CLONE_NEWTIME
];

/// The compiled filter (installed with the notification listener).
pub(super) struct Profile {
    pub(super) filter: BpfProgram,
}

/// What a policy decides about the filter.
#[derive(Clone, Debug, Default)]
pub(super) struct Rules {
    /// The policy's `deny_syscalls`.
    pub(super) deny: Vec<String>,
    pub(super) network: Network,
    /// `sched_setaffinity` refused (the policy limits CPUs).
    pub(super) limit_affinity: bool,
    /// `socket(AF_UNIX)` allowed (the policy's `unix_sockets`).
    pub(super) unix_sockets: bool,
    /// No cgroup bounds the run's memory: shared memory that `RLIMIT_AS` cannot count is refused.
    pub(super) refuse_shared_memory: bool,
}

const S_ISUID: u64 = 0o4000;
const S_ISGID: u64 = 0o2000;
const O_TMPFILE_BIT: u64 = 0o20000000;
const F_SETPIPE_SZ: u64 = 1031;

fn rule(conds: Vec<Cond>) -> SeccompRule {
    SeccompRule::new(conds).expect("conditions are valid")
}

fn cond(arg: u8, len: Len, op: Op, value: u64) -> Cond {
    Cond::new(arg, len, op, value).expect("argument index is valid")
}

fn compile(rules: BTreeMap<i64, Vec<SeccompRule>>, mismatch: SeccompAction, matched: SeccompAction) -> BpfProgram {
    let filter = SeccompFilter::new(rules, mismatch, matched, TargetArch::x86_64).expect("actions differ");
    BpfProgram::try_from(filter).expect("the filter compiles")
}

const SECCOMP_RET_USER_NOTIF: u32 = 0x7fc0_0000;
const AUDIT_ARCH_X86_64: u32 = 62 | 0x8000_0000 | 0x4000_0000;

/// One classic BPF instruction (for the short guard sequence seccompiler has no form for).
fn bpf(code: u16, jt: u8, jf: u8, k: u32) -> seccompiler::sock_filter {
    seccompiler::sock_filter { code, jt, jf, k }
}

const BPF_RET_K: u16 = 0x06;

/// Builds the profile for a policy.
pub(super) fn profile(rules: &Rules) -> Result<Profile> {
    let filter = chain(parts(rules)?);
    if filter.len() > 4096 {
        return Err(Error::invalid_policy(
            "deny_syscalls",
            "the seccomp filter would be longer than the kernel allows",
        ));
    }
    Ok(Profile { filter })
}

/// Rules that refuse a call when argument `mode` has the setuid or setgid bit, and (when
/// given) argument `flags` has `O_CREAT` or `O_TMPFILE`.
fn privilege_rules(mode: u8, flags: Option<u8>) -> Vec<SeccompRule> {
    let mut rules = Vec::new();
    for bit in [S_ISUID, S_ISGID] {
        let with_bit = cond(mode, Len::Dword, Op::MaskedEq(bit), bit);
        match flags {
            None => rules.push(rule(vec![with_bit])),
            Some(f) => {
                for create in [libc::O_CREAT as u64, O_TMPFILE_BIT] {
                    rules.push(rule(vec![cond(f, Len::Dword, Op::MaskedEq(create), create), with_bit.clone()]));
                }
            }
        }
    }
    rules
}

/// The profile's parts, in order (see the module documentation).
fn parts(rules: &Rules) -> Result<Vec<BpfProgram>> {
    let Rules { deny, network, limit_affinity, unix_sockets, refuse_shared_memory } = rules;
    let (network, limit_affinity) = (*network, *limit_affinity);
    let mut extra_denied = Vec::new();
    for name in deny {
        let nr = crate::syscalls::number(name).ok_or_else(|| {
            Error::invalid_policy("deny_syscalls", format!("`{name}` is not an x86-64 system call sandcell knows"))
        })?;
        extra_denied.push(nr);
    }

    let highest = crate::syscalls::TABLE.iter().map(|(_, nr)| *nr).max().expect("the table is not empty") as u32;

    // The deny-list (part 3), answered by the host: plain numbers in a search tree, the calls
    // denied for some arguments only with seccompiler.
    let denied_numbers: BTreeSet<u32> =
        DENIED.iter().map(|n| nr(n)).chain(extra_denied.iter().copied()).map(|nr| nr as u32).collect();
    let mut denied: BTreeMap<i64, Vec<SeccompRule>> = BTreeMap::new();
    denied.insert(
        libc::SYS_ioctl,
        vec![rule(vec![cond(1, Len::Dword, Op::Eq, TIOCSTI)]), rule(vec![cond(1, Len::Dword, Op::Eq, TIOCLINUX)])],
    );
    denied.insert(
        libc::SYS_clone,
        // The kernel reads only the low 32 bits of clone's flags, where all of these are.
        CLONE_NEW_FLAGS.iter().map(|f| rule(vec![cond(0, Len::Dword, Op::MaskedEq(*f), *f)])).collect(),
    );
    let mut deny_args = compile(denied, SeccompAction::Allow, SeccompAction::Trap);
    // seccompiler has no user-notification action: it compiled `Trap`, which becomes one here.
    for insn in deny_args.iter_mut() {
        if insn.code == BPF_RET_K && insn.k == libc::SECCOMP_RET_TRAP {
            insn.k = SECCOMP_RET_USER_NOTIF;
        }
    }

    // Socket families (part 1).
    let mut families = vec![cond(0, Len::Dword, Op::Ne, libc::AF_UNIX as u64)];
    if network == Network::Loopback {
        families.push(cond(0, Len::Dword, Op::Ne, libc::AF_INET as u64));
        families.push(cond(0, Len::Dword, Op::Ne, libc::AF_INET6 as u64));
    }
    let mut sockets = BTreeMap::new();
    sockets.insert(libc::SYS_socket, vec![rule(families.clone())]);
    sockets.insert(libc::SYS_socketpair, vec![rule(families)]);
    let sockets = compile(sockets, SeccompAction::Allow, SeccompAction::Errno(libc::EAFNOSUPPORT as u32));
    let mut parts = vec![sockets];
    // The policy's own deny-list names a call: it ends the run as denied (a user notification),
    // which an error answer of the parts below would take precedence over.
    let denied_by_policy = |nr: i64| extra_denied.contains(&nr);
    if !unix_sockets && !denied_by_policy(libc::SYS_socket) {
        let mut unix = BTreeMap::new();
        unix.insert(libc::SYS_socket, vec![rule(vec![cond(0, Len::Dword, Op::Eq, libc::AF_UNIX as u64)])]);
        parts.push(compile(unix, SeccompAction::Allow, SeccompAction::Errno(libc::EACCES as u32)));
    }

    // Privilege bits: setuid/setgid modes.
    let mut privilege = BTreeMap::new();
    privilege.insert(libc::SYS_chmod, privilege_rules(1, None));
    privilege.insert(libc::SYS_fchmod, privilege_rules(1, None));
    privilege.insert(libc::SYS_fchmodat, privilege_rules(2, None));
    privilege.insert(libc::SYS_creat, privilege_rules(1, None));
    privilege.insert(libc::SYS_mkdir, privilege_rules(1, None));
    privilege.insert(libc::SYS_mkdirat, privilege_rules(2, None));
    privilege.insert(libc::SYS_mknod, privilege_rules(1, None));
    privilege.insert(libc::SYS_mknodat, privilege_rules(2, None));
    privilege.insert(libc::SYS_open, privilege_rules(2, Some(1)));
    privilege.insert(libc::SYS_openat, privilege_rules(3, Some(2)));
    privilege.retain(|nr, _| !denied_by_policy(*nr));
    if !privilege.is_empty() {
        parts.push(compile(privilege, SeccompAction::Allow, SeccompAction::Errno(libc::EPERM as u32)));
    }

    // Shared memory beyond RLIMIT_AS, without a cgroup.
    if *refuse_shared_memory {
        let mut shared = BTreeMap::new();
        for nr in [libc::SYS_memfd_create, libc::SYS_shmget, libc::SYS_msgget] {
            if !denied_by_policy(nr) {
                shared.insert(nr, vec![]);
            }
        }
        if !shared.is_empty() {
            parts.push(compile(shared, SeccompAction::Allow, SeccompAction::Errno(libc::ENOSYS as u32)));
        }
        if !denied_by_policy(libc::SYS_fcntl) {
            let mut pipes = BTreeMap::new();
            pipes.insert(libc::SYS_fcntl, vec![rule(vec![cond(1, Len::Dword, Op::Eq, F_SETPIPE_SZ)])]);
            parts.push(compile(pipes, SeccompAction::Allow, SeccompAction::Errno(libc::EPERM as u32)));
        }
    }

    // Where two parts refuse the same call (a socket family refused, `socket` denied by the
    // policy), the stricter answer must come first: errors before notifications, as seccomp's
    // precedence has it. Affinity comes next.
    if limit_affinity {
        let mut aff = BTreeMap::new();
        aff.insert(libc::SYS_sched_setaffinity, vec![]);
        parts.push(compile(aff, SeccompAction::Allow, SeccompAction::Errno(libc::EPERM as u32)));
    }
    parts.push(deny_args);

    // The deny-list's plain numbers and the allow-list (part 4) in one search tree: denied
    // numbers are notified, allowed ones allowed, the rest fail with ENOSYS. Every call a part
    // above refuses for some arguments is allowed here, so that it never overrules them.
    let mut allowed: BTreeSet<u32> = ALLOWED.iter().map(|n| nr(n) as u32).collect();
    allowed.extend(
        [libc::SYS_ioctl, libc::SYS_clone, libc::SYS_socket, libc::SYS_socketpair, libc::SYS_sched_setaffinity]
            .map(|nr| nr as u32),
    );
    if *refuse_shared_memory {
        // Refused by their part above; not on the allow-list, so the answer stays ENOSYS.
        for nr in [libc::SYS_memfd_create, libc::SYS_shmget, libc::SYS_msgget] {
            allowed.remove(&(nr as u32));
        }
    }
    parts.push(number_filter(
        |nr| {
            if denied_numbers.contains(&nr) {
                SECCOMP_RET_USER_NOTIF
            } else if allowed.contains(&nr) {
                libc::SECCOMP_RET_ALLOW
            } else {
                libc::SECCOMP_RET_ERRNO | libc::ENOSYS as u32
            }
        },
        highest,
        libc::SECCOMP_RET_ERRNO | libc::ENOSYS as u32,
    ));
    Ok(parts)
}

/// Joins filters into one program: where a part would allow the call, it jumps to the start of
/// the next part instead (the last part's answers stand). Jumps inside a part keep their
/// targets: one instruction replaces one instruction.
fn chain(parts: Vec<BpfProgram>) -> BpfProgram {
    const JA: u16 = 0x05;
    let count = parts.len();
    let mut out = Vec::with_capacity(parts.iter().map(Vec::len).sum());
    for (k, part) in parts.into_iter().enumerate() {
        let len = part.len();
        for (i, insn) in part.into_iter().enumerate() {
            if k + 1 < count && insn.code == BPF_RET_K && insn.k == libc::SECCOMP_RET_ALLOW {
                out.push(bpf(JA, 0, 0, (len - i - 1) as u32));
            } else {
                out.push(insn);
            }
        }
    }
    out
}

/// Compiles "number `nr` → `action(nr)` up to `highest`, `beyond` above" into a balanced binary
/// search over the runs of numbers with the same answer, after a guard that kills anything that
/// is not an x86-64 call (`int 0x80` enters as i386) and x32 calls (bit 30 of the number).
///
/// Why not seccompiler here: it compiles rules into one linear chain, and when a filter is
/// installed the kernel runs it once per system call number to precompute its action cache.
/// For a 390-entry allow-list that is about 0.5 ms — on every run, since every run installs its
/// filter. A search tree is at most a dozen comparisons deep, and installs in microseconds.
/// seccompiler compiles every rule that inspects arguments (the filters below).
fn number_filter(action: impl Fn(u32) -> u32, highest: u32, beyond: u32) -> BpfProgram {
    const LD_ABS: u16 = 0x20;
    const JEQ: u16 = 0x15;
    const JGE: u16 = 0x35;
    const JSET: u16 = 0x45;
    const JA: u16 = 0x05;
    let mut prog = vec![
        bpf(LD_ABS, 0, 0, 4), // A = arch
        bpf(JEQ, 1, 0, AUDIT_ARCH_X86_64),
        bpf(BPF_RET_K, 0, 0, libc::SECCOMP_RET_KILL_PROCESS),
        bpf(LD_ABS, 0, 0, 0), // A = nr (kept in A from here on)
        bpf(JSET, 0, 1, 0x4000_0000),
        bpf(BPF_RET_K, 0, 0, libc::SECCOMP_RET_KILL_PROCESS),
        bpf(JGE, 0, 1, highest + 1),
        bpf(BPF_RET_K, 0, 0, beyond),
    ];
    // Runs of consecutive numbers with the same answer, covering 0..=highest: (first, action).
    let mut runs: Vec<(u32, u32)> = Vec::new();
    for nr in 0..=highest {
        let action = action(nr);
        if runs.last().is_none_or(|(_, a)| *a != action) {
            runs.push((nr, action));
        }
    }
    fn emit(runs: &[(u32, u32)], prog: &mut BpfProgram) {
        if let [(_, action)] = runs {
            prog.push(bpf(BPF_RET_K, 0, 0, *action));
            return;
        }
        let mid = runs.len() / 2;
        // if A >= first of the right half: jump over the left half; else fall into it.
        prog.push(bpf(JGE, 0, 1, runs[mid].0));
        let ja = prog.len();
        prog.push(bpf(JA, 0, 0, 0));
        emit(&runs[..mid], prog);
        prog[ja].k = (prog.len() - ja - 1) as u32;
        emit(&runs[mid..], prog);
    }
    emit(&runs, &mut prog);
    prog
}

/// seccompiler's `sock_filter` and libc's have the same layout.
pub(super) fn as_libc(program: &BpfProgram) -> &[libc::sock_filter] {
    const _: () = assert!(std::mem::size_of::<seccompiler::sock_filter>() == std::mem::size_of::<libc::sock_filter>());
    // SAFETY: both are `#[repr(C)] { u16, u8, u8, u32 }` (size checked above).
    unsafe { std::slice::from_raw_parts(program.as_ptr().cast::<libc::sock_filter>(), program.len()) }
}

/// Runs a classic BPF seccomp program the way the kernel does, for the instructions the
/// filters above use.
pub(super) fn interpret(prog: &[seccompiler::sock_filter], arch: u32, nr: u32, args: [u64; 6]) -> u32 {
    let mut data = [0u8; 64];
    data[..4].copy_from_slice(&nr.to_ne_bytes());
    data[4..8].copy_from_slice(&arch.to_ne_bytes());
    for (i, a) in args.iter().enumerate() {
        data[16 + 8 * i..24 + 8 * i].copy_from_slice(&a.to_ne_bytes());
    }
    let (mut a, mut pc) = (0u32, 0usize);
    loop {
        let i = &prog[pc];
        pc += 1;
        match i.code {
            0x20 => a = u32::from_ne_bytes(data[i.k as usize..i.k as usize + 4].try_into().unwrap()),
            0x06 => return i.k,
            0x05 => pc += i.k as usize,
            0x15 | 0x25 | 0x35 | 0x45 => {
                let taken = match i.code {
                    0x15 => a == i.k,
                    0x25 => a > i.k,
                    0x35 => a >= i.k,
                    _ => a & i.k != 0,
                };
                pc += if taken { i.jt } else { i.jf } as usize;
            }
            0x54 => a &= i.k,
            other => panic!("instruction {other:#x} not interpreted (extend `interpret`)"),
        }
    }
}

/// What every jail's filter refuses, whatever the policy (the lowering fuzz target checks it on
/// every plan): ptrace, setting setuid or setgid bits, other architectures' and 32-bit calls,
/// Unix sockets unless `unix_sockets`, and each of `deny`.
pub(super) fn assert_invariants(profile: &Profile, unix_sockets: bool, deny: &[String]) {
    let answer = |nr: i64, args: [u64; 6]| interpret(&profile.filter, AUDIT_ARCH_X86_64, nr as u32, args);
    let allow = libc::SECCOMP_RET_ALLOW;
    assert_ne!(answer(libc::SYS_ptrace, [0; 6]), allow, "ptrace allowed");
    assert_ne!(answer(libc::SYS_chmod, [0, S_ISUID | 0o755, 0, 0, 0, 0]), allow, "setuid chmod allowed");
    assert_ne!(answer(libc::SYS_fchmodat, [3, 0, S_ISGID | 0o755, 0, 0, 0]), allow, "setgid fchmodat allowed");
    let creat = libc::O_CREAT as u64 | libc::O_WRONLY as u64;
    assert_ne!(answer(libc::SYS_openat, [3, 0, creat, S_ISUID | 0o755, 0, 0]), allow, "setuid creation allowed");
    assert_ne!(answer(libc::SYS_openat2, [3, 0, 0, 24, 0, 0]), allow, "openat2 allowed");
    assert_eq!(
        interpret(&profile.filter, AUDIT_ARCH_X86_64, 0x4000_0000 | 39, [0; 6]),
        libc::SECCOMP_RET_KILL_PROCESS,
        "x32 calls allowed"
    );
    assert_eq!(
        interpret(&profile.filter, 0x4000_0003, 20, [0; 6]),
        libc::SECCOMP_RET_KILL_PROCESS,
        "i386 calls allowed"
    );
    let unix = answer(libc::SYS_socket, [libc::AF_UNIX as u64, 1, 0, 0, 0, 0]);
    if !unix_sockets {
        assert_ne!(unix, allow, "AF_UNIX sockets allowed against the policy");
    }
    for name in deny {
        if let Some(nr) = crate::syscalls::number(name) {
            assert_ne!(answer(nr, [0; 6]), allow, "denied system call `{name}` allowed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_number_tree_answers_exactly_the_set() {
        let set: BTreeSet<u32> = ALLOWED.iter().map(|n| nr(n) as u32).collect();
        let prog = number_filter(|nr| if set.contains(&nr) { 111 } else { 222 }, 460, 222);
        assert!(prog.len() < 400, "{}", prog.len());
        for nr in 0..600u32 {
            let want = if nr <= 460 && set.contains(&nr) { 111 } else { 222 };
            assert_eq!(interpret(&prog, AUDIT_ARCH_X86_64, nr, [0; 6]), want, "nr {nr}");
        }
        assert_eq!(interpret(&prog, AUDIT_ARCH_X86_64, 0x4000_0000 | 39, [0; 6]), libc::SECCOMP_RET_KILL_PROCESS);
        assert_eq!(interpret(&prog, 0x4000_0003 /* i386 */, 20, [0; 6]), libc::SECCOMP_RET_KILL_PROCESS);
    }

    #[test]
    fn the_profile_answers_as_documented() {
        let p = profile(&Rules { deny: vec!["fork".into()], limit_affinity: true, ..Rules::default() }).unwrap();
        let x86 = AUDIT_ARCH_X86_64;
        let answer = |nr: i64, args: [u64; 6]| interpret(&p.filter, x86, nr as u32, args);
        assert_eq!(answer(libc::SYS_read, [0; 6]), libc::SECCOMP_RET_ALLOW);
        assert_eq!(answer(libc::SYS_ptrace, [0; 6]), SECCOMP_RET_USER_NOTIF);
        assert_eq!(answer(libc::SYS_fork, [0; 6]), SECCOMP_RET_USER_NOTIF);
        assert_eq!(answer(libc::SYS_clone3, [0; 6]), libc::SECCOMP_RET_ERRNO | libc::ENOSYS as u32);
        assert_eq!(answer(libc::SYS_ioctl, [0, TIOCSTI | 1 << 32, 0, 0, 0, 0]), SECCOMP_RET_USER_NOTIF);
        assert_eq!(answer(libc::SYS_ioctl, [0, 0x5401, 0, 0, 0, 0]), libc::SECCOMP_RET_ALLOW);
        assert_eq!(
            answer(libc::SYS_clone, [libc::CLONE_NEWUSER as u64 | libc::SIGCHLD as u64, 0, 0, 0, 0, 0]),
            SECCOMP_RET_USER_NOTIF
        );
        assert_eq!(answer(libc::SYS_clone, [libc::SIGCHLD as u64, 0, 0, 0, 0, 0]), libc::SECCOMP_RET_ALLOW);
        assert_eq!(
            answer(libc::SYS_socket, [libc::AF_INET as u64, 0, 0, 0, 0, 0]),
            libc::SECCOMP_RET_ERRNO | libc::EAFNOSUPPORT as u32
        );
        assert_eq!(
            answer(libc::SYS_socket, [libc::AF_UNIX as u64, 0, 0, 0, 0, 0]),
            libc::SECCOMP_RET_ERRNO | libc::EACCES as u32
        );
        assert_eq!(answer(libc::SYS_sched_setaffinity, [0; 6]), libc::SECCOMP_RET_ERRNO | libc::EPERM as u32);
        assert_eq!(answer(1000, [0; 6]), libc::SECCOMP_RET_ERRNO | libc::ENOSYS as u32);
        let eperm = libc::SECCOMP_RET_ERRNO | libc::EPERM as u32;
        let allow = libc::SECCOMP_RET_ALLOW;
        // No setuid or setgid bit, whichever call would set it.
        assert_eq!(answer(libc::SYS_chmod, [0, 0o4755, 0, 0, 0, 0]), eperm);
        assert_eq!(answer(libc::SYS_chmod, [0, 0o2755, 0, 0, 0, 0]), eperm);
        assert_eq!(answer(libc::SYS_chmod, [0, 0o1777, 0, 0, 0, 0]), allow);
        assert_eq!(answer(libc::SYS_fchmod, [3, 0o6755, 0, 0, 0, 0]), eperm);
        assert_eq!(answer(libc::SYS_fchmodat, [3, 0, 0o4755, 0, 0, 0]), eperm);
        assert_eq!(answer(libc::SYS_fchmodat, [3, 0, 0o755, 0, 0, 0]), allow);
        let creat = libc::O_CREAT as u64 | libc::O_WRONLY as u64;
        assert_eq!(answer(libc::SYS_openat, [3, 0, creat, 0o4755, 0, 0]), eperm);
        assert_eq!(answer(libc::SYS_openat, [3, 0, O_TMPFILE_BIT | 2, 0o2755, 0, 0]), eperm);
        assert_eq!(answer(libc::SYS_openat, [3, 0, creat, 0o755, 0, 0]), allow);
        assert_eq!(answer(libc::SYS_openat, [3, 0, 0, 0o4755, 0, 0]), allow); // no O_CREAT: mode unused
        assert_eq!(answer(libc::SYS_open, [0, creat, 0o4755, 0, 0, 0]), eperm);
        assert_eq!(answer(libc::SYS_creat, [0, 0o4755, 0, 0, 0, 0]), eperm);
        assert_eq!(answer(libc::SYS_mkdir, [0, 0o2755, 0, 0, 0, 0]), eperm);
        assert_eq!(answer(libc::SYS_mkdirat, [3, 0, 0o2755, 0, 0, 0]), eperm);
        assert_eq!(answer(libc::SYS_mknod, [0, 0o104755, 0, 0, 0, 0]), eperm);
        assert_eq!(answer(libc::SYS_mknodat, [3, 0, 0o104755, 0, 0, 0]), eperm);
        assert_eq!(answer(libc::SYS_openat2, [3, 0, 0, 24, 0, 0]), libc::SECCOMP_RET_ERRNO | libc::ENOSYS as u32);
        // Unix sockets: socketpair always, socket only where the policy allows them.
        let eacces = libc::SECCOMP_RET_ERRNO | libc::EACCES as u32;
        assert_eq!(answer(libc::SYS_socket, [libc::AF_UNIX as u64, 1, 0, 0, 0, 0]), eacces);
        assert_eq!(answer(libc::SYS_socketpair, [libc::AF_UNIX as u64, 1, 0, 0, 0, 0]), allow);
        let open = profile(&Rules { unix_sockets: true, ..Rules::default() }).unwrap();
        assert_eq!(interpret(&open.filter, x86, libc::SYS_socket as u32, [libc::AF_UNIX as u64, 1, 0, 0, 0, 0]), allow);
        // Shared memory RLIMIT_AS cannot count, refused only without a cgroup.
        let enosys = libc::SECCOMP_RET_ERRNO | libc::ENOSYS as u32;
        assert_eq!(answer(libc::SYS_memfd_create, [0; 6]), allow);
        let bounded = profile(&Rules { refuse_shared_memory: true, ..Rules::default() }).unwrap();
        let b = |nr: i64, args: [u64; 6]| interpret(&bounded.filter, x86, nr as u32, args);
        assert_eq!(b(libc::SYS_memfd_create, [0; 6]), enosys);
        assert_eq!(b(libc::SYS_shmget, [0; 6]), enosys);
        assert_eq!(b(libc::SYS_msgget, [0; 6]), enosys);
        assert_eq!(b(libc::SYS_fcntl, [3, F_SETPIPE_SZ, 1 << 20, 0, 0, 0]), eperm);
        assert_eq!(b(libc::SYS_fcntl, [3, libc::F_GETFL as u64, 0, 0, 0, 0]), allow);
    }

    #[test]
    fn the_chained_filter_answers_what_the_parts_installed_separately_would() {
        // Seccomp keeps the strictest answer of all installed filters.
        let rank = |k: u32| match k & 0xffff_0000 {
            0x8000_0000 => 0, // kill process
            0x0003_0000 => 2, // trap
            0x0005_0000 => 3, // errno
            0x7fc0_0000 => 4, // user notification
            _ => 9,           // allow, log
        };
        let interesting_args: Vec<[u64; 6]> = vec![
            [0; 6],
            [libc::AF_INET as u64, 0, 0, 0, 0, 0],
            [libc::AF_INET6 as u64, 0, 0, 0, 0, 0],
            [libc::AF_UNIX as u64, 0, 0, 0, 0, 0],
            [libc::AF_NETLINK as u64, 0, 0, 0, 0, 0],
            [0, TIOCSTI, 0, 0, 0, 0],
            [0, TIOCLINUX | 7 << 32, 0, 0, 0, 0],
            [0, 0x5401, 0, 0, 0, 0],
            [libc::CLONE_NEWNET as u64 | libc::SIGCHLD as u64, 0, 0, 0, 0, 0],
            [libc::CLONE_VM as u64 | libc::CLONE_THREAD as u64, 0, 0, 0, 0, 0],
            [0, 0o4755, 0o4755, 0o4755, 0, 0],
            [0, 0o2755, 0o2755, 0o2755, 0, 0],
            [0, libc::O_CREAT as u64 | 1, 0o6755, 0o644, 0, 0],
            [0, 0o100755, libc::O_CREAT as u64, 0o4700, 0, 0],
            [0, F_SETPIPE_SZ, 1 << 20, 0, 0, 0],
        ];
        for rules in [
            Rules::default(),
            Rules {
                deny: vec!["fork".to_string(), "socket".to_string()],
                network: Network::Loopback,
                limit_affinity: true,
                unix_sockets: true,
                refuse_shared_memory: true,
            },
            Rules { refuse_shared_memory: true, deny: vec!["chmod".into(), "fcntl".into()], ..Rules::default() },
        ] {
            let parts = parts(&rules).unwrap();
            let whole = chain(parts.clone());
            for arch in [AUDIT_ARCH_X86_64, 0x4000_0003] {
                for nr in (0..520u32).chain([0x4000_0000 | 1, 0x4000_0000 | 39]) {
                    for args in &interesting_args {
                        let separate =
                            parts.iter().map(|f| interpret(f, arch, nr, *args)).min_by_key(|k| rank(*k)).unwrap();
                        assert_eq!(interpret(&whole, arch, nr, *args), separate, "nr {nr} args {args:?}");
                    }
                }
            }
        }
    }

    #[test]
    fn profile_compiles_and_names_resolve() {
        let p =
            profile(&Rules { deny: vec!["socket".into(), "fork".into()], limit_affinity: true, ..Rules::default() })
                .unwrap();
        assert!(p.filter.len() < 1024, "{}", p.filter.len());
        assert_eq!(name_of(libc::SYS_ptrace), Some("ptrace"));
        assert!(profile(&Rules { deny: vec!["frobnicate".into()], ..Rules::default() }).is_err());
        let notif = p.filter.iter().filter(|i| i.k == SECCOMP_RET_USER_NOTIF).count();
        assert!(notif > 0);
    }
}
