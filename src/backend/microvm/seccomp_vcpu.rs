//! The seccomp filter of vCPU threads (compiled with seccompiler): a vCPU thread may run its vCPU
//! and read its registers, wait on and wake futexes (its channels), manage memory for them, set
//! its own CPU affinity, and exit. Anything else fails with `EPERM` — a failing call surfaces as a host error, where a kill
//! would take the embedding process down with it.

use std::collections::BTreeMap;
use std::sync::{Arc, OnceLock};

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen as Len, SeccompCmpOp as Op, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};

const KVM_RUN: u64 = 0xae80;
const KVM_GET_REGS: u64 = 0x8090_ae81;
const KVM_GET_SREGS: u64 = 0x8138_ae83;

/// The compiled filter (built once).
pub(crate) fn filter() -> Arc<Vec<seccompiler::sock_filter>> {
    static FILTER: OnceLock<Arc<Vec<seccompiler::sock_filter>>> = OnceLock::new();
    FILTER
        .get_or_init(|| {
            let mut rules: BTreeMap<i64, Vec<SeccompRule>> = BTreeMap::new();
            for nr in [
                libc::SYS_futex,
                libc::SYS_mmap,
                libc::SYS_munmap,
                libc::SYS_madvise,
                libc::SYS_mprotect,
                libc::SYS_mremap,
                libc::SYS_brk,
                libc::SYS_rt_sigprocmask,
                libc::SYS_rt_sigreturn,
                libc::SYS_sigaltstack,
                libc::SYS_sched_yield,
                libc::SYS_clock_gettime,
                libc::SYS_exit,
                libc::SYS_rseq,
                libc::SYS_getrandom,
            ] {
                rules.insert(nr, vec![]);
            }
            let ioctl = |cmd: u64| {
                SeccompRule::new(vec![SeccompCondition::new(1, Len::Dword, Op::Eq, cmd).expect("valid condition")])
                    .expect("valid rule")
            };
            rules.insert(libc::SYS_ioctl, vec![ioctl(KVM_RUN), ioctl(KVM_GET_REGS), ioctl(KVM_GET_SREGS)]);
            // Its own CPU affinity only (pid 0): it lets go of a pin after each run.
            rules.insert(
                libc::SYS_sched_setaffinity,
                vec![SeccompRule::new(vec![SeccompCondition::new(0, Len::Qword, Op::Eq, 0).expect("valid condition")])
                    .expect("valid rule")],
            );
            let filter = SeccompFilter::new(
                rules,
                SeccompAction::Errno(libc::EPERM as u32),
                SeccompAction::Allow,
                TargetArch::x86_64,
            )
            .expect("actions differ");
            Arc::new(BpfProgram::try_from(filter).expect("the filter compiles"))
        })
        .clone()
}

/// Installs the filter on the calling thread only.
pub(crate) fn apply(program: &[seccompiler::sock_filter]) -> std::io::Result<()> {
    super::sys::seccomp_install_thread(program)
}
