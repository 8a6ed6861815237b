//! The process backend: a native program in a fresh jail per run.
//!
//! | field | mechanism |
//! |---|---|
//! | (always) | new user, pid, mount, network, ipc, uts and cgroup namespaces; the program is the pid namespace's init, so the whole tree dies with it; the sandbox's root maps to an unprivileged uid outside |
//! | filesystem | a fresh tmpfs root: read-only system directories, a size-capped private `/tmp`, a new `/proc`, `/dev/{null,zero,full,random,urandom}`, the policy's mounts (id-mapped when sandcell runs as root); Landlock rules to match |
//! | network | an empty network namespace (no interface up); `loopback`: its `lo` up; Landlock denies TCP bind/connect (`none`) and scopes abstract unix sockets and signals |
//! | syscalls | seccomp-bpf allow-list plus a deny-list answered by the host ([`seccomp`]) |
//! | memory | cgroup memory limit (v2 or v1), else RLIMIT_AS per process |
//! | max_processes | pids cgroup, else RLIMIT_NPROC in the run's own user namespace |
//! | cpu_time | RLIMIT_CPU per process, and the run's cgroup CPU time for the tree |
//! | cpus | CPU affinity, with `sched_setaffinity` denied |
//! | timeout, interrupt | SIGKILL of the namespace's init through a pidfd |
//! | max_open_files, max_file_size | RLIMIT_NOFILE, RLIMIT_FSIZE |
//! | fuel | refused: native code cannot be metered |

mod cgroup;
mod jail;
mod lower;
mod netns;
mod run;
mod seccomp;
mod stacks;
mod sys;
mod template;
mod vforker;

use std::ffi::CString;
use std::os::fd::OwnedFd;
use std::time::Instant;

use self::jail::Plan;
use crate::control::InterruptHandle;
use crate::{BackendKind, Error, Outcome, Policy, Program, Result, RunOptions, SandboxBuilder};

/// A sandbox running native programs in per-run jails.
pub struct ProcessSandbox {
    policy: Policy,
    plan: Plan,
    cgroups: Option<cgroup::Pool>,
    as_root: bool,
    /// Policy mounts to id-map when running as root: (host path, read-only), by index.
    idmapped: Vec<(CString, bool)>,
    /// The root template (as root), copied for each run.
    template: Option<OwnedFd>,
    interrupt: InterruptHandle,
    record: crate::enforcement::Record,
}

impl std::fmt::Debug for ProcessSandbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProcessSandbox").field("policy", &self.policy).field("cgroups", &self.cgroups).finish()
    }
}

impl ProcessSandbox {
    pub(crate) fn new(builder: SandboxBuilder) -> Result<Self> {
        let SandboxBuilder { policy, .. } = builder;
        let host = crate::probe::host();
        let unavailable = |reason: String| Error::BackendUnavailable { backend: BackendKind::Process, reason };
        if !host.user_namespaces {
            return Err(unavailable(
                "user namespaces are disabled (sysctl user.max_user_namespaces or kernel.unprivileged_userns_clone)"
                    .into(),
            ));
        }
        if !host.seccomp {
            return Err(unavailable("the kernel has no seccomp filter support".into()));
        }
        let lower::Lowered { plan, cgroups, as_root, idmapped, template, record } =
            tracing::debug_span!("lower").in_scope(|| lower::lower(&policy, host))?;
        Ok(ProcessSandbox {
            policy,
            plan,
            cgroups,
            as_root,
            idmapped,
            template,
            interrupt: InterruptHandle::for_sandbox(),
            record,
        })
    }
}

impl Drop for ProcessSandbox {
    /// The sandbox's cgroups go with it, before this returns: the idle ones, and those of its
    /// finished runs once their inits are reaped (see `cgroup::flush`).
    fn drop(&mut self) {
        if let Some(pool) = self.cgroups.take() {
            pool.close();
        }
    }
}

/// Whether this process was dumpable before any jail's init shared its memory (read when the
/// first process sandbox is built).
static HOST_DUMPABLE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();

fn host_dumpable() -> bool {
    // SAFETY: PR_GET_DUMPABLE takes no pointer.
    *HOST_DUMPABLE.get_or_init(|| unsafe { libc::prctl(libc::PR_GET_DUMPABLE) } == 1)
}

/// Puts back this process's "dumpable" flag. A jail's init that shares this process's memory
/// switches to the sandbox's user, and the kernel then clears the flag of that memory — of this
/// process, that is (fs.suid_dumpable). Init needs no such protection (the program's nested
/// Landlock domain keeps it out of reach), so once init has switched, the host gets its flag
/// back; while a run is starting it may read as cleared.
fn restore_dumpable() {
    // SAFETY: PR_GET_DUMPABLE / PR_SET_DUMPABLE take integers only.
    if host_dumpable() && unsafe { libc::prctl(libc::PR_GET_DUMPABLE) } != 1 {
        // SAFETY: as above.
        unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 1) };
    }
}

impl crate::Sandbox for ProcessSandbox {
    fn backend(&self) -> BackendKind {
        BackendKind::Process
    }

    fn policy(&self) -> &Policy {
        &self.policy
    }

    fn run_with(&self, program: &Program, mut options: RunOptions) -> Result<Outcome> {
        let _span = tracing::info_span!("sandcell.run", backend = "process").entered();
        let program = options.program(program);
        self.run_inner(&program, options, Instant::now())
    }

    fn interrupt_handle(&self) -> InterruptHandle {
        self.interrupt.clone()
    }

    /// Checks the program up front (refusing what every run would); each run still checks it
    /// again, executes its path and starts its jail from nothing.
    fn prepare(&self, program: &Program) -> Result<crate::Prepared<'_>> {
        program.validate()?;
        self.exec_candidates(program, &program.merged_env(&self.policy.env))?;
        Ok(crate::Prepared::new(self, program, Box::new(())))
    }
}

/// Whether the process backend can run here.
pub(crate) fn support(host: &crate::HostSupport) -> (bool, String) {
    if !host.user_namespaces {
        return (false, "user namespaces are disabled on this host".into());
    }
    if !host.seccomp {
        return (false, "the kernel has no seccomp filter support".into());
    }
    let landlock = host
        .landlock_abi
        .map_or("no Landlock (policies with mounts need best_effort)".to_owned(), |v| format!("Landlock ABI {v}"));
    let limits = if host.root {
        match cgroup::detect(&host.cgroups) {
            Some(s) => format!("{} limits", s.describe()),
            None => "rlimits (no writable cgroup)".into(),
        }
    } else {
        "rlimits (not root: no cgroups)".into()
    };
    (true, format!("namespaces, seccomp-bpf, {landlock}, {limits}"))
}

/// The body of the lowering fuzz target (see [`crate::fuzz::process_lowering`]).
pub(crate) fn fuzz_lowering(policy: &Policy) {
    match lower::lower(policy, crate::probe::host()) {
        Ok(lowered) => seccomp::assert_invariants(&lowered.plan.seccomp, policy.unix_sockets, &policy.deny_syscalls),
        Err(e) => assert!(
            matches!(e.kind(), crate::ErrorKind::InvalidPolicy | crate::ErrorKind::Unenforceable),
            "lowering a valid policy failed with {:?}: {e}",
            e.kind()
        ),
    }
}
