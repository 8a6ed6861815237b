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
        &[$((stringify!($name), sys_nr::$name)),*]
    };
}

/// x86-64 system call numbers by name (the names `deny_syscalls` accepts).
#[allow(non_upper_case_globals, dead_code)]
mod sys_nr {
    pub use libc::SYS_newfstatat as newfstatat;
    pub use libc::{
        SYS_accept as accept, SYS_accept4 as accept4, SYS_access as access, SYS_acct as acct, SYS_add_key as add_key,
        SYS_adjtimex as adjtimex, SYS_alarm as alarm, SYS_arch_prctl as arch_prctl, SYS_bind as bind, SYS_bpf as bpf,
        SYS_brk as brk, SYS_capget as capget, SYS_capset as capset, SYS_chdir as chdir, SYS_chmod as chmod,
        SYS_chown as chown, SYS_chroot as chroot, SYS_clock_adjtime as clock_adjtime, SYS_clock_getres as clock_getres,
        SYS_clock_gettime as clock_gettime, SYS_clock_nanosleep as clock_nanosleep, SYS_clock_settime as clock_settime,
        SYS_clone as clone, SYS_close as close, SYS_close_range as close_range, SYS_connect as connect,
        SYS_copy_file_range as copy_file_range, SYS_creat as creat, SYS_delete_module as delete_module, SYS_dup as dup,
        SYS_dup2 as dup2, SYS_dup3 as dup3, SYS_epoll_create as epoll_create, SYS_epoll_create1 as epoll_create1,
        SYS_epoll_ctl as epoll_ctl, SYS_epoll_pwait as epoll_pwait, SYS_epoll_pwait2 as epoll_pwait2,
        SYS_epoll_wait as epoll_wait, SYS_eventfd as eventfd, SYS_eventfd2 as eventfd2, SYS_execve as execve,
        SYS_execveat as execveat, SYS_exit as exit, SYS_exit_group as exit_group, SYS_faccessat as faccessat,
        SYS_faccessat2 as faccessat2, SYS_fadvise64 as fadvise64, SYS_fallocate as fallocate,
        SYS_fanotify_init as fanotify_init, SYS_fchdir as fchdir, SYS_fchmod as fchmod, SYS_fchmodat as fchmodat,
        SYS_fchown as fchown, SYS_fchownat as fchownat, SYS_fcntl as fcntl, SYS_fdatasync as fdatasync,
        SYS_fgetxattr as fgetxattr, SYS_finit_module as finit_module, SYS_flistxattr as flistxattr, SYS_flock as flock,
        SYS_fork as fork, SYS_fremovexattr as fremovexattr, SYS_fsconfig as fsconfig, SYS_fsetxattr as fsetxattr,
        SYS_fsmount as fsmount, SYS_fsopen as fsopen, SYS_fspick as fspick, SYS_fstat as fstat, SYS_fstatfs as fstatfs,
        SYS_fsync as fsync, SYS_ftruncate as ftruncate, SYS_futex as futex, SYS_futex_waitv as futex_waitv,
        SYS_futimesat as futimesat, SYS_get_mempolicy as get_mempolicy, SYS_get_robust_list as get_robust_list,
        SYS_getcpu as getcpu, SYS_getcwd as getcwd, SYS_getdents as getdents, SYS_getdents64 as getdents64,
        SYS_getegid as getegid, SYS_geteuid as geteuid, SYS_getgid as getgid, SYS_getgroups as getgroups,
        SYS_getitimer as getitimer, SYS_getpeername as getpeername, SYS_getpgid as getpgid, SYS_getpgrp as getpgrp,
        SYS_getpid as getpid, SYS_getppid as getppid, SYS_getpriority as getpriority, SYS_getrandom as getrandom,
        SYS_getresgid as getresgid, SYS_getresuid as getresuid, SYS_getrlimit as getrlimit, SYS_getrusage as getrusage,
        SYS_getsid as getsid, SYS_getsockname as getsockname, SYS_getsockopt as getsockopt, SYS_gettid as gettid,
        SYS_gettimeofday as gettimeofday, SYS_getuid as getuid, SYS_getxattr as getxattr,
        SYS_init_module as init_module, SYS_inotify_add_watch as inotify_add_watch, SYS_inotify_init as inotify_init,
        SYS_inotify_init1 as inotify_init1, SYS_inotify_rm_watch as inotify_rm_watch, SYS_io_cancel as io_cancel,
        SYS_io_destroy as io_destroy, SYS_io_getevents as io_getevents, SYS_io_setup as io_setup,
        SYS_io_submit as io_submit, SYS_io_uring_enter as io_uring_enter, SYS_io_uring_register as io_uring_register,
        SYS_io_uring_setup as io_uring_setup, SYS_ioctl as ioctl, SYS_ioperm as ioperm, SYS_iopl as iopl,
        SYS_kcmp as kcmp, SYS_kexec_file_load as kexec_file_load, SYS_kexec_load as kexec_load, SYS_keyctl as keyctl,
        SYS_kill as kill, SYS_landlock_add_rule as landlock_add_rule,
        SYS_landlock_create_ruleset as landlock_create_ruleset, SYS_landlock_restrict_self as landlock_restrict_self,
        SYS_lchown as lchown, SYS_lgetxattr as lgetxattr, SYS_link as link, SYS_linkat as linkat, SYS_listen as listen,
        SYS_listxattr as listxattr, SYS_llistxattr as llistxattr, SYS_lookup_dcookie as lookup_dcookie,
        SYS_lremovexattr as lremovexattr, SYS_lseek as lseek, SYS_lsetxattr as lsetxattr, SYS_lstat as lstat,
        SYS_madvise as madvise, SYS_mbind as mbind, SYS_membarrier as membarrier, SYS_memfd_create as memfd_create,
        SYS_mincore as mincore, SYS_mkdir as mkdir, SYS_mkdirat as mkdirat, SYS_mknod as mknod, SYS_mknodat as mknodat,
        SYS_mlock as mlock, SYS_mlock2 as mlock2, SYS_mlockall as mlockall, SYS_mmap as mmap,
        SYS_modify_ldt as modify_ldt, SYS_mount as mount, SYS_mount_setattr as mount_setattr,
        SYS_move_mount as move_mount, SYS_mprotect as mprotect, SYS_mq_getsetattr as mq_getsetattr,
        SYS_mq_notify as mq_notify, SYS_mq_open as mq_open, SYS_mq_timedreceive as mq_timedreceive,
        SYS_mq_timedsend as mq_timedsend, SYS_mq_unlink as mq_unlink, SYS_mremap as mremap, SYS_msgctl as msgctl,
        SYS_msgget as msgget, SYS_msgrcv as msgrcv, SYS_msgsnd as msgsnd, SYS_msync as msync, SYS_munlock as munlock,
        SYS_munlockall as munlockall, SYS_munmap as munmap, SYS_name_to_handle_at as name_to_handle_at,
        SYS_nanosleep as nanosleep, SYS_open as open, SYS_open_by_handle_at as open_by_handle_at,
        SYS_open_tree as open_tree, SYS_openat as openat, SYS_pause as pause, SYS_perf_event_open as perf_event_open,
        SYS_personality as personality, SYS_pidfd_getfd as pidfd_getfd, SYS_pidfd_open as pidfd_open,
        SYS_pidfd_send_signal as pidfd_send_signal, SYS_pipe as pipe, SYS_pipe2 as pipe2, SYS_pivot_root as pivot_root,
        SYS_pkey_alloc as pkey_alloc, SYS_pkey_free as pkey_free, SYS_pkey_mprotect as pkey_mprotect, SYS_poll as poll,
        SYS_ppoll as ppoll, SYS_prctl as prctl, SYS_pread64 as pread64, SYS_preadv as preadv, SYS_preadv2 as preadv2,
        SYS_prlimit64 as prlimit64, SYS_process_madvise as process_madvise, SYS_process_vm_readv as process_vm_readv,
        SYS_process_vm_writev as process_vm_writev, SYS_pselect6 as pselect6, SYS_ptrace as ptrace,
        SYS_pwrite64 as pwrite64, SYS_pwritev as pwritev, SYS_pwritev2 as pwritev2, SYS_quotactl as quotactl,
        SYS_read as read, SYS_readahead as readahead, SYS_readlink as readlink, SYS_readlinkat as readlinkat,
        SYS_readv as readv, SYS_reboot as reboot, SYS_recvfrom as recvfrom, SYS_recvmmsg as recvmmsg,
        SYS_recvmsg as recvmsg, SYS_remap_file_pages as remap_file_pages, SYS_removexattr as removexattr,
        SYS_rename as rename, SYS_renameat as renameat, SYS_renameat2 as renameat2, SYS_request_key as request_key,
        SYS_restart_syscall as restart_syscall, SYS_rmdir as rmdir, SYS_rseq as rseq, SYS_rt_sigaction as rt_sigaction,
        SYS_rt_sigpending as rt_sigpending, SYS_rt_sigprocmask as rt_sigprocmask,
        SYS_rt_sigqueueinfo as rt_sigqueueinfo, SYS_rt_sigreturn as rt_sigreturn, SYS_rt_sigsuspend as rt_sigsuspend,
        SYS_rt_sigtimedwait as rt_sigtimedwait, SYS_rt_tgsigqueueinfo as rt_tgsigqueueinfo,
        SYS_sched_get_priority_max as sched_get_priority_max, SYS_sched_get_priority_min as sched_get_priority_min,
        SYS_sched_getaffinity as sched_getaffinity, SYS_sched_getattr as sched_getattr,
        SYS_sched_getparam as sched_getparam, SYS_sched_getscheduler as sched_getscheduler,
        SYS_sched_rr_get_interval as sched_rr_get_interval, SYS_sched_setaffinity as sched_setaffinity,
        SYS_sched_setattr as sched_setattr, SYS_sched_setparam as sched_setparam,
        SYS_sched_setscheduler as sched_setscheduler, SYS_sched_yield as sched_yield, SYS_seccomp as seccomp,
        SYS_select as select, SYS_semctl as semctl, SYS_semget as semget, SYS_semop as semop,
        SYS_semtimedop as semtimedop, SYS_sendfile as sendfile, SYS_sendmmsg as sendmmsg, SYS_sendmsg as sendmsg,
        SYS_sendto as sendto, SYS_set_mempolicy as set_mempolicy, SYS_set_robust_list as set_robust_list,
        SYS_set_tid_address as set_tid_address, SYS_setdomainname as setdomainname, SYS_setfsgid as setfsgid,
        SYS_setfsuid as setfsuid, SYS_setgid as setgid, SYS_setgroups as setgroups, SYS_sethostname as sethostname,
        SYS_setitimer as setitimer, SYS_setns as setns, SYS_setpgid as setpgid, SYS_setpriority as setpriority,
        SYS_setregid as setregid, SYS_setresgid as setresgid, SYS_setresuid as setresuid, SYS_setreuid as setreuid,
        SYS_setrlimit as setrlimit, SYS_setsid as setsid, SYS_setsockopt as setsockopt,
        SYS_settimeofday as settimeofday, SYS_setuid as setuid, SYS_setxattr as setxattr, SYS_shmat as shmat,
        SYS_shmctl as shmctl, SYS_shmdt as shmdt, SYS_shmget as shmget, SYS_shutdown as shutdown,
        SYS_sigaltstack as sigaltstack, SYS_signalfd as signalfd, SYS_signalfd4 as signalfd4, SYS_socket as socket,
        SYS_socketpair as socketpair, SYS_splice as splice, SYS_stat as stat, SYS_statfs as statfs, SYS_statx as statx,
        SYS_swapoff as swapoff, SYS_swapon as swapon, SYS_symlink as symlink, SYS_symlinkat as symlinkat,
        SYS_sync as sync, SYS_sync_file_range as sync_file_range, SYS_syncfs as syncfs, SYS_sysinfo as sysinfo,
        SYS_syslog as syslog, SYS_tee as tee, SYS_tgkill as tgkill, SYS_time as time, SYS_timer_create as timer_create,
        SYS_timer_delete as timer_delete, SYS_timer_getoverrun as timer_getoverrun, SYS_timer_gettime as timer_gettime,
        SYS_timer_settime as timer_settime, SYS_timerfd_create as timerfd_create,
        SYS_timerfd_gettime as timerfd_gettime, SYS_timerfd_settime as timerfd_settime, SYS_times as times,
        SYS_tkill as tkill, SYS_truncate as truncate, SYS_umask as umask, SYS_umount2 as umount2, SYS_uname as uname,
        SYS_unlink as unlink, SYS_unlinkat as unlinkat, SYS_unshare as unshare, SYS_userfaultfd as userfaultfd,
        SYS_utime as utime, SYS_utimensat as utimensat, SYS_utimes as utimes, SYS_vfork as vfork,
        SYS_vhangup as vhangup, SYS_vmsplice as vmsplice, SYS_wait4 as wait4, SYS_waitid as waitid, SYS_write as write,
        SYS_writev as writev,
    };
}

/// The calls ordinary programs make.
const ALLOWED: &[(&str, i64)] = syscalls![
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
const DENIED: &[(&str, i64)] = syscalls![
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

/// Every name `deny_syscalls` may use, with its number.
fn all_known() -> impl Iterator<Item = &'static (&'static str, i64)> {
    // clone3 and openat2 fail with ENOSYS: libc falls back to clone and openat, whose arguments
    // seccomp can read.
    const NOT_ALLOWED: &[(&str, i64)] = &[("clone3", libc::SYS_clone3), ("openat2", libc::SYS_openat2)];
    ALLOWED.iter().chain(DENIED.iter()).chain(NOT_ALLOWED.iter())
}

/// Whether `name` is an x86-64 system call `deny_syscalls` accepts (policy validation).
pub(crate) fn is_known(name: &str) -> bool {
    all_known().any(|(n, _)| *n == name)
}

/// The name of an x86-64 system call number, when sandcell knows it.
pub(super) fn name_of(nr: i64) -> Option<&'static str> {
    all_known().find(|(_, n)| *n == nr).map(|(name, _)| *name)
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
        let nr = all_known().find(|(n, _)| n == name).map(|(_, nr)| *nr).ok_or_else(|| {
            Error::invalid_policy("deny_syscalls", format!("`{name}` is not an x86-64 system call sandcell knows"))
        })?;
        extra_denied.push(nr);
    }

    let highest = all_known().map(|(_, nr)| *nr).max().expect("the table is not empty") as u32;

    // The deny-list (part 3), answered by the host: plain numbers in a search tree, the calls
    // denied for some arguments only with seccompiler.
    let denied_numbers: BTreeSet<u32> =
        DENIED.iter().map(|(_, nr)| *nr).chain(extra_denied.iter().copied()).map(|nr| nr as u32).collect();
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
    let mut allowed: BTreeSet<u32> = ALLOWED.iter().map(|(_, nr)| *nr as u32).collect();
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs a classic BPF seccomp program the way the kernel does, for the instructions the
    /// filters above use.
    fn interpret(prog: &[seccompiler::sock_filter], arch: u32, nr: u32, args: [u64; 6]) -> u32 {
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
                other => panic!("instruction {other:#x} not interpreted"),
            }
        }
    }

    #[test]
    fn the_number_tree_answers_exactly_the_set() {
        let set: BTreeSet<u32> = ALLOWED.iter().map(|(_, n)| *n as u32).collect();
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
