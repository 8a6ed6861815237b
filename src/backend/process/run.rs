//! One run of a process sandbox: the child is started in its namespaces (see `jail` for what it
//! does before the program runs), handed its identity, supervised — stdin fed, output drained,
//! seccomp notifications answered, the watchdog's stops applied — and its end classified.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::jail::{self, Launch, Step};
use super::lower::cstr;
use super::{cgroup, netns, restore_dumpable, seccomp, stacks, sys, template, vforker, ProcessSandbox};
use crate::control::{Capture, Run, RunControl, StopReason};
use crate::input::Stdin;
use crate::sandbox::narrowed;
use crate::{Artifact, CpuBudget, Error, Outcome, Program, Result, RunOptions, Status, Stream, Usage};

const DEFAULT_PATH: &str = "/usr/local/bin:/usr/bin:/bin:/usr/local/sbin:/usr/sbin:/sbin";
/// The uid and gid the sandbox's root maps to when sandcell runs as root.
const NOBODY: u32 = 65534;

/// The parent's handles on a started child.
struct Child {
    pid: libc::pid_t,
    pidfd: Arc<OwnedFd>,
}

impl ProcessSandbox {
    pub(super) fn exec_candidates(&self, program: &Program, env: &[(String, String)]) -> Result<Vec<CString>> {
        let path =
            match program.artifact() {
                Artifact::Path(p) => p.clone(),
                Artifact::Bytes(_) => return Err(Error::invalid_program(
                    "the process backend runs a program by its path inside the sandbox; put the executable in a mount \
                     and give its guest path",
                )),
            };
        let bytes = path.as_os_str().as_bytes();
        if bytes.contains(&0) {
            return Err(Error::invalid_program("the program path contains a NUL byte"));
        }
        if bytes.contains(&b'/') {
            return Ok(vec![cstr(bytes)]);
        }
        let search = env.iter().find(|(k, _)| k == "PATH").map_or(DEFAULT_PATH, |(_, v)| v.as_str());
        Ok(search.split(':').filter(|d| !d.is_empty()).map(|d| cstr(format!("{d}/{}", path.display()))).collect())
    }

    pub(super) fn run_inner(&self, program: &Program, options: RunOptions, started: Instant) -> Result<Outcome> {
        program.validate()?;
        let mut env = program.merged_env(&self.policy.env);
        if !env.iter().any(|(k, _)| k == "PATH") {
            env.push(("PATH".into(), DEFAULT_PATH.into()));
        }
        let exec = self.exec_candidates(program, &env)?;
        let argv0 = match program.artifact() {
            Artifact::Path(p)
                if program.argv0() == p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default() =>
            {
                p.to_string_lossy().into_owned()
            }
            _ => program.argv0(),
        };
        let args: Vec<CString> =
            std::iter::once(argv0.as_str()).chain(program.arguments().iter().map(String::as_str)).map(cstr).collect();
        let envs: Vec<CString> = env.iter().map(|(k, v)| cstr(format!("{k}={v}"))).collect();
        let argv: Vec<*const libc::c_char> =
            args.iter().map(|a| a.as_ptr()).chain(std::iter::once(std::ptr::null())).collect();
        let envp: Vec<*const libc::c_char> =
            envs.iter().map(|e| e.as_ptr()).chain(std::iter::once(std::ptr::null())).collect();
        let cwd = cstr(program.working_dir().unwrap_or(Path::new("/")).as_os_str().as_bytes());

        let setup_err = |action: &'static str| move |e: io::Error| Error::setup(action, e);
        let (stdout_r, stdout_w) = sys::pipe().map_err(setup_err("create the stdout pipe"))?;
        let (stderr_r, stderr_w) = sys::pipe().map_err(setup_err("create the stderr pipe"))?;
        let (error_r, error_w) = sys::pipe().map_err(setup_err("create the status pipe"))?;
        let (sync_parent, sync_child) = sys::socketpair().map_err(setup_err("create the control socket"))?;

        // A run whose handle was interrupted before it started ends at once.
        let cpu_limit = narrowed(self.policy.cpu_time, options.cpu_time);
        let mut run = Run::begin(&self.interrupt, options.handles());
        let control = run.control.clone();
        if let Some(reason) = control.reason() {
            return Ok(self.stopped_before_start(reason, started));
        }

        let cgroup = match &self.cgroups {
            Some(pool) => Some(
                tracing::debug_span!("cgroup")
                    .in_scope(|| pool.take())
                    .map_err(setup_err("create the run's cgroup"))?,
            ),
            None => None,
        };
        if cpu_limit != self.policy.cpu_time && cgroup.as_ref().and_then(|cg| cg.cpu_probe()).is_none() {
            // Without a cgroup's CPU accounting the CPU limit is the sandbox's RLIMIT_CPU.
            return Err(Error::Unenforceable {
                backend: crate::BackendKind::Process,
                field: crate::PolicyField::CpuTime,
                reason: "a CPU-time limit for one run needs a cgroup with CPU accounting to measure the run's \
                         processes (run as root or with a delegated cgroup), or set cpu_time in the sandbox's policy"
                    .into(),
            });
        }

        // A network namespace made ahead by the pool (as root), else one made by clone3.
        let netns = if self.as_root { netns::take(self.plan.loopback) } else { None };
        let stacks = stacks::take().map_err(setup_err("map the jail's stacks"))?;
        // With Landlock (always, unless the policy is best-effort on a kernel without it), init
        // shares the host's memory and is started by a vfork thread; else it gets a copy of it.
        // See `sys::clone_jail` and `vforker`.
        let shares_memory = self.plan.landlock.is_some();
        let job = vforker::Job::new(netns.as_ref());
        // Stdin: a pipe the supervisor fills with the program's bytes, or the pipe a streamed
        // stdin is copied into (see `crate::input`), handed to the guest as it is. A stream is
        // started only now that nothing but the launch itself can refuse the run.
        let (stdin_r, stdin_w, stdin) = match program.stdin_source().open()? {
            Stdin::Pipe(r) => (r, None, Arc::from(&[][..])),
            Stdin::Bytes(bytes) => {
                let (r, w) = sys::pipe().map_err(setup_err("create the stdin pipe"))?;
                (r, Some(w), bytes)
            }
        };
        let launch = Launch {
            plan: &self.plan,
            exec: &exec,
            argv: &argv,
            envp: &envp,
            cwd: &cwd,
            stdio: [stdin_r.as_raw_fd(), stdout_w.as_raw_fd(), stderr_w.as_raw_fd()],
            sync: sync_child.as_raw_fd(),
            error: error_w.as_raw_fd(),
            stack: stacks.program.bottom(),
            network_ready: netns.is_some(),
            shares_memory,
            started: if shares_memory { &job.state } else { std::ptr::null() },
            // SAFETY: an all-zero cpu_set_t is valid (and unused without a shared memory).
            cpus: if shares_memory { crate::sys::allowed_cpus() } else { unsafe { std::mem::zeroed() } },
            cgroup_tasks: cgroup.as_ref().map_or(&[], |c| c.tasks_files()),
        };
        let mut flags = (libc::CLONE_NEWUSER
            | libc::CLONE_NEWPID
            | libc::CLONE_NEWNS
            | libc::CLONE_NEWIPC
            | libc::CLONE_NEWUTS
            | libc::CLONE_NEWCGROUP) as u64;
        if netns.is_none() {
            flags |= libc::CLONE_NEWNET as u64;
        }
        let v2_fd = cgroup.as_ref().and_then(|c| c.v2_fd.as_ref()).map(|fd| fd.as_raw_fd());
        let arg = &launch as *const Launch as *mut libc::c_void;
        let launching = tracing::debug_span!("launch").entered();
        let (pid, pidfd) = if shares_memory {
            // SAFETY: init runs `jail::entry` on its own stack, says it runs first thing, and
            // only makes system calls on data prepared above, which (with the stacks) `_lease`
            // below keeps alive until it is reaped.
            unsafe { vforker::start(&job, flags, v2_fd, &stacks.init, &launch.cpus, jail::entry, arg) }
                .map_err(setup_err("create the sandbox's namespaces (clone3)"))?
        } else {
            // The child starts with every signal blocked (no handler of the host may run in it
            // before it executes the program); pid 2 unblocks them for the program.
            let blocked = sys::SignalsBlocked::new();
            let away = match &netns {
                Some(ns) => Some(netns::Away::enter(ns).map_err(setup_err("enter the run's network namespace"))?),
                None => None,
            };
            // SAFETY: as above; the child has its own copy of this process's memory.
            let cloned = unsafe { sys::clone_jail(flags, v2_fd, &stacks.init, jail::entry, arg) };
            let left = away.map(netns::Away::leave);
            drop(blocked);
            let cloned = cloned.map_err(setup_err("create the sandbox's namespaces (clone3)"))?;
            if let Some(Err(e)) = left {
                let _ = sys::pidfd_kill(cloned.pidfd.as_raw_fd(), libc::SIGKILL);
                let _ = sys::wait(cloned.pid);
                return Err(Error::setup("return to the host's network namespace", e));
            }
            (cloned.pid, cloned.pidfd)
        };
        drop(launching);
        let child = Child { pid, pidfd: Arc::new(pidfd) };
        let lease = stacks::Lease { stacks: Some(stacks), child: child.pidfd.clone() };
        drop(netns);
        drop((stdin_r, stdout_w, stderr_w, error_w, sync_child));

        // From here on the child exists: every exit path must kill and reap it.
        let pidfd = child.pidfd.clone();
        control.arm(Box::new(move || {
            let _ = sys::pidfd_kill(pidfd.as_raw_fd(), libc::SIGKILL);
        }));
        let result = tracing::debug_span!("supervise").in_scope(|| {
            self.supervise(
                &child,
                &mut run,
                cgroup.as_deref(),
                Io { stdin_w, stdin, stdout_r, stderr_r, error_r, sync: sync_parent },
                program,
                options,
                started,
            )
        });
        run.finish();
        match result {
            Ok(outcome) => {
                // Init may still be on its way out (see `supervise`): it is reaped, and only then
                // are its stacks and the run's cgroup (which it is in until then) given back, on
                // the background thread — in this order, the fields' drop order.
                cgroup::release_later((lease, cgroup));
                Ok(outcome)
            }
            Err(e) => {
                let _ = sys::pidfd_kill(child.pidfd.as_raw_fd(), libc::SIGKILL);
                let _ = sys::wait(child.pid);
                // A stop requested while the jail was being set up (the kill made set-up fail)
                // is that stop, not a host error.
                match control.reason() {
                    Some(reason) => Ok(self.stopped_before_start(reason, started)),
                    None => Err(e),
                }
            }
        }
    }

    /// Hands the child its identity, waits for it to start the program, and collects output
    /// until the run ends.
    #[allow(clippy::too_many_arguments)]
    fn supervise(
        &self,
        child: &Child,
        run: &mut Run,
        cgroup: Option<&cgroup::RunCgroup>,
        io: Io,
        program: &Program,
        options: RunOptions,
        started: Instant,
    ) -> Result<Outcome> {
        let cpu_limit = narrowed(self.policy.cpu_time, options.cpu_time);
        let control = &run.control.clone();
        // The user namespace mapping: the sandbox's root is the unprivileged `nobody` when
        // sandcell runs as root, else the calling user.
        // SAFETY: geteuid/getegid have no preconditions.
        let (uid, gid) = if self.as_root { (NOBODY, NOBODY) } else { unsafe { (libc::geteuid(), libc::getegid()) } };
        let proc_dir = PathBuf::from(format!("/proc/{}", child.pid));
        if !self.as_root {
            std::fs::write(proc_dir.join("setgroups"), "deny")
                .map_err(|e| Error::setup("deny setgroups in the user namespace", e))?;
        }
        std::fs::write(proc_dir.join("uid_map"), format!("0 {uid} 1"))
            .map_err(|e| Error::setup("write the uid map", e))?;
        std::fs::write(proc_dir.join("gid_map"), format!("0 {gid} 1"))
            .map_err(|e| Error::setup("write the gid map", e))?;
        // Id-mapped copies of the policy's mounts, so that the sandbox's root owns what the
        // host's root owns in them (only possible, and only needed, when running as root).
        let mut idmapped: Vec<OwnedFd> = Vec::new();
        if !self.idmapped.is_empty() {
            let userns = std::fs::File::open(proc_dir.join("ns/user"))
                .map_err(|e| Error::setup("open the run's user namespace", e))?;
            for (path, read_only) in &self.idmapped {
                let attrs = sys::MOUNT_ATTR_NOSUID
                    | sys::MOUNT_ATTR_NODEV
                    | if *read_only { sys::MOUNT_ATTR_RDONLY } else { 0 };
                let tree = sys::open_tree_clone(path)
                    .map_err(|e| Error::setup("open a mount source", io::Error::from_raw_os_error(e)))?
                    .into_owned();
                sys::mount_setattr(tree.as_raw_fd(), attrs, Some(userns.as_raw_fd())).map_err(|e| {
                    Error::setup(
                        format!("id-map the mount of {}", path.to_string_lossy()),
                        io::Error::from_raw_os_error(e),
                    )
                })?;
                idmapped.push(tree);
            }
        }
        // The run's copy of the root template comes first.
        let root = match &self.template {
            Some(t) => Some(template::copy(t).map_err(|e| Error::setup("copy the root template", e))?),
            None => None,
        };
        let raw: Vec<RawFd> = root.iter().chain(idmapped.iter()).map(|f| f.as_raw_fd()).collect();
        sys::send_fds(io.sync.as_raw_fd(), b"G", &raw)
            .map_err(|e| Error::setup("start the sandboxed process", io::Error::from_raw_os_error(e)))?;
        drop((idmapped, root));

        run.timeout(started, narrowed(self.policy.timeout, options.timeout));
        // The tree's CPU time, from the cgroup (RLIMIT_CPU covers single processes anyway).
        if let Some(probe) = cgroup.and_then(|cg| cg.cpu_probe()) {
            run.cpu_budget(cpu_limit, Duration::from_millis(5), move || probe.read().unwrap_or_default());
        }

        // The child reports a failed step on the status pipe; end-of-file means it executed.
        let mut record = [0u8; 8];
        let mut got = 0;
        while got < 8 {
            match sys::read(io.error_r.as_raw_fd(), &mut record[got..]) {
                Ok(0) => break,
                Ok(n) => got += n,
                Err(e) => return Err(Error::setup("read the sandbox's start-up status", e)),
            }
        }
        if self.plan.landlock.is_some() {
            restore_dumpable();
        }
        if got == 8 {
            let step = u32::from_ne_bytes(record[..4].try_into().expect("4 bytes"));
            let errno = i32::from_ne_bytes(record[4..].try_into().expect("4 bytes"));
            let _ = sys::wait(child.pid);
            let step = Step::from_u32(step).unwrap_or(Step::Exec);
            if step == Step::Exec {
                let shown = match program.artifact() {
                    Artifact::Path(p) => p.display().to_string(),
                    Artifact::Bytes(_) => String::new(),
                };
                if errno == libc::ENOENT || errno == libc::ENOTDIR {
                    return Err(Error::ProgramNotFound {
                        program: shown,
                        hint: "not inside the sandbox, which sees its system directories and mounts only".into(),
                    });
                }
                return Err(Error::invalid_program(format!(
                    "cannot execute `{shown}` inside the sandbox: {} (is it visible there? the sandbox sees its \
                     system directories and mounts only)",
                    io::Error::from_raw_os_error(errno)
                )));
            }
            return Err(Error::setup(step.action(), io::Error::from_raw_os_error(errno)));
        }
        // The seccomp listener was sent just before exec.
        let mut fds = [-1 as RawFd; 1];
        let mut byte = [0u8; 1];
        let listener = match sys::recv_fds(io.sync.as_raw_fd(), &mut byte, &mut fds) {
            // SAFETY: the kernel installed this descriptor for us with the message.
            Ok((_, 1)) => Some(unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fds[0]) }),
            _ => None,
        };

        // Collect output until every writer is gone and the init has exited.
        let limit = narrowed(Some(self.policy.max_output), options.max_output).unwrap_or(self.policy.max_output);
        let mut capture = Capture::new(limit, options.on_output);
        let sync = io.sync.try_clone().map_err(|e| Error::setup("duplicate the control socket", e))?;
        let (denied, report) = tracing::debug_span!("guest")
            .in_scope(|| pump(child, control, io, sync.as_raw_fd(), listener.as_ref(), &mut capture));
        // Init reports the program's own wait status when it exits (see `jail::init`). If it
        // reported that the run has ended (every process of it dead and reaped), the result
        // does not wait for init's own exit, which tears the namespaces down: init is reaped
        // on a background thread (`run_inner`). Otherwise init is waited for here; if it was
        // killed (timeout, interrupt), its own status stands.
        let report = report.or_else(|| {
            let mut msg = [0u8; jail::REPORT_LEN];
            sys::set_nonblocking(&sync).ok()?;
            match sys::recv_fds(sync.as_raw_fd(), &mut msg, &mut []) {
                Ok((jail::REPORT_LEN, _)) => Report::parse(&msg),
                _ => None,
            }
        });
        let (status, tree_cpu, tree_peak) = match report {
            Some(r) if r.ended => (r.status, r.cpu, r.peak),
            _ => {
                let (init_status, rusage) =
                    sys::wait(child.pid).map_err(|e| Error::setup("wait for the sandboxed process", e))?;
                let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
                let status = report.map_or(init_status, |r| r.status);
                (status, tv(rusage.ru_utime) + tv(rusage.ru_stime), rusage.ru_maxrss as u64 * 1024)
            }
        };
        run.finish();
        let wall = started.elapsed();

        let oom = cgroup.is_some_and(|c| c.oom_killed());
        let cpu = cgroup.and_then(|c| c.cpu_usage()).unwrap_or(tree_cpu);
        // Without a cgroup, the kernel's peak of the reaped tree also counts the memory of the
        // process the program was started from — the host's (see docs/THREAT_MODEL.md, "Usage
        // without cgroups").
        let peak = cgroup.and_then(|c| c.peak_memory()).unwrap_or(tree_peak);
        let status = match (control.reason(), denied) {
            (Some(reason), _) => reason.status(),
            (None, Some(name)) => Status::SyscallDenied(Some(name)),
            (None, None) => self.classify(status, oom, cpu, peak, cpu_limit),
        };
        let (stdout, stderr) = capture.take();
        Ok(Outcome {
            status,
            stdout,
            stderr,
            usage: Usage { wall, cpu, peak_memory_bytes: peak, fuel: None, artifact: None },
            enforced: self.record.enforced.clone(),
            skipped: self.record.skipped.clone(),
        })
    }

    fn stopped_before_start(&self, reason: StopReason, started: Instant) -> Outcome {
        Outcome {
            status: reason.status(),
            stdout: Vec::new(),
            stderr: Vec::new(),
            usage: Usage { wall: started.elapsed(), ..Usage::default() },
            enforced: self.record.enforced.clone(),
            skipped: self.record.skipped.clone(),
        }
    }

    fn classify(&self, wait_status: i32, oom: bool, cpu: Duration, peak: u64, cpu_limit: Option<Duration>) -> Status {
        if libc::WIFEXITED(wait_status) {
            let code = libc::WEXITSTATUS(wait_status);
            return if oom && code != 0 { Status::MemoryLimit } else { Status::Exited(code) };
        }
        let sig = libc::WTERMSIG(wait_status);
        let over_cpu = cpu_limit.is_some_and(|limit| cpu >= limit);
        // Without a cgroup there is no OOM kill to observe: RLIMIT_AS makes allocations fail
        // inside the guest, which typically aborts or faults. A crash with the process's peak
        // resident memory within 10% of the cap is taken as hitting the cap.
        let at_rlimit_ceiling = self.cgroups.is_none()
            && self.policy.memory.is_some_and(|m| peak >= m / 10 * 9)
            && matches!(sig, libc::SIGABRT | libc::SIGSEGV | libc::SIGBUS | libc::SIGKILL);
        match sig {
            libc::SIGSYS => Status::SyscallDenied(None),
            libc::SIGXCPU => Status::CpuLimit(CpuBudget::CpuTime),
            libc::SIGKILL if oom => Status::MemoryLimit,
            libc::SIGKILL if over_cpu => Status::CpuLimit(CpuBudget::CpuTime),
            _ if oom || at_rlimit_ceiling => Status::MemoryLimit,
            sig => Status::Signaled(sig),
        }
    }
}

/// Init's last word on a run (see `jail::init`).
#[derive(Clone, Copy)]
struct Report {
    /// The program's wait status.
    status: i32,
    /// Every process of the run is dead and reaped (`S`); else only the program has exited
    /// (`s`) and the kernel ends the rest when init exits.
    ended: bool,
    /// The program tree's CPU time and largest resident set (with `ended`).
    cpu: Duration,
    peak: u64,
}

impl Report {
    fn parse(msg: &[u8; jail::REPORT_LEN]) -> Option<Report> {
        let word = |at: usize| u64::from_ne_bytes(msg[at..at + 8].try_into().expect("8 bytes"));
        let status = i32::from_ne_bytes(msg[1..5].try_into().expect("4 bytes"));
        match msg[0] {
            b'S' => Some(Report { status, ended: true, cpu: Duration::from_micros(word(5)), peak: word(13) }),
            b's' => Some(Report { status, ended: false, cpu: Duration::ZERO, peak: 0 }),
            _ => None,
        }
    }
}

/// The parent's ends of a run's pipes and socket.
struct Io {
    stdin_w: Option<OwnedFd>,
    /// What to write to `stdin_w`.
    stdin: Arc<[u8]>,
    stdout_r: OwnedFd,
    stderr_r: OwnedFd,
    error_r: OwnedFd,
    sync: OwnedFd,
}

/// Feeds stdin, drains stdout and stderr (both at once, so a guest flooding one while the other
/// fills cannot deadlock), answers seccomp notifications, until the output pipes close and
/// either init has exited or it reported on `sync` that the run has ended. Returns the name of a
/// denied system call, if one was made, and init's report, if it came.
fn pump(
    child: &Child,
    control: &RunControl,
    io: Io,
    sync: RawFd,
    listener: Option<&OwnedFd>,
    capture: &mut Capture,
) -> (Option<String>, Option<Report>) {
    const STDOUT: usize = 0;
    const STDERR: usize = 1;
    const STDIN: usize = 2;
    const LISTENER: usize = 3;
    const EXIT: usize = 4;
    const SYNC: usize = 5;
    let mut report: Option<Report> = None;
    let mut sync_open = true;
    let _ = sys::set_nonblocking(&io.stdout_r);
    let _ = sys::set_nonblocking(&io.stderr_r);
    // Our end of stdin; dropping it gives the guest end-of-file.
    let stdin_bytes = io.stdin.clone();
    let stdin: &[u8] = &stdin_bytes;
    let mut stdin_w = io.stdin_w.filter(|_| !stdin.is_empty());
    if let Some(w) = &stdin_w {
        let _ = sys::set_nonblocking(w);
    }
    let mut stdin_left = stdin;
    let mut open = [true, true];
    let mut exited = false;
    let mut listening = true;
    let mut denied = None;
    let mut buf = vec![0u8; 64 * 1024];
    while open[STDOUT] || open[STDERR] || !exited {
        let mut fds: Vec<libc::pollfd> = Vec::with_capacity(6);
        let mut slot = [usize::MAX; 6];
        let mut watch = |which: usize, fd: RawFd, events: i16| {
            slot[which] = fds.len();
            fds.push(libc::pollfd { fd, events, revents: 0 });
        };
        if open[STDOUT] {
            watch(STDOUT, io.stdout_r.as_raw_fd(), libc::POLLIN);
        }
        if open[STDERR] {
            watch(STDERR, io.stderr_r.as_raw_fd(), libc::POLLIN);
        }
        if let Some(w) = &stdin_w {
            watch(STDIN, w.as_raw_fd(), libc::POLLOUT);
        }
        if let Some(l) = listener.filter(|_| listening) {
            watch(LISTENER, l.as_raw_fd(), libc::POLLIN);
        }
        if !exited {
            watch(EXIT, child.pidfd.as_raw_fd(), libc::POLLIN);
            if sync_open && report.is_none() {
                watch(SYNC, sync, libc::POLLIN);
            }
        }
        if sys::poll(&mut fds, -1).is_err() {
            break;
        }
        let ready = |which: usize| slot[which] != usize::MAX && fds[slot[which]].revents != 0;
        for (which, fd, stream) in
            [(STDOUT, io.stdout_r.as_raw_fd(), Stream::Stdout), (STDERR, io.stderr_r.as_raw_fd(), Stream::Stderr)]
        {
            if !ready(which) {
                continue;
            }
            match sys::read(fd, &mut buf) {
                Ok(0) => open[which] = false,
                Ok(n) => {
                    if !capture.push(stream, &buf[..n]) {
                        control.stop(StopReason::OutputLimit);
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(_) => open[which] = false,
            }
        }
        if ready(STDIN) {
            if let Some(w) = &stdin_w {
                match sys::write(w.as_raw_fd(), stdin_left) {
                    Ok(n) => stdin_left = &stdin_left[n..],
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(_) => stdin_left = &[],
                }
            }
            if stdin_left.is_empty() {
                stdin_w = None;
            }
        }
        if ready(LISTENER) {
            // POLLHUP: no process can make a notification any more; stop watching.
            if fds[slot[LISTENER]].revents & (libc::POLLHUP | libc::POLLERR) != 0 {
                listening = false;
            }
            if let Some(nr) = listener.and_then(|l| sys::seccomp_deny_next(l.as_raw_fd())) {
                if denied.is_none() {
                    denied = Some(seccomp::name_of(nr as i64).map_or_else(|| format!("syscall {nr}"), str::to_owned));
                }
                let _ = sys::pidfd_kill(child.pidfd.as_raw_fd(), libc::SIGKILL);
            }
        }
        if ready(SYNC) {
            let mut msg = [0u8; jail::REPORT_LEN];
            match sys::recv_fds(sync, &mut msg, &mut []) {
                Ok((jail::REPORT_LEN, _)) => {
                    report = Report::parse(&msg);
                    // Everything of the run is gone: nothing more to wait for but the output
                    // already in the pipes (their writers are gone too).
                    if report.is_some_and(|r| r.ended) {
                        exited = true;
                        stdin_w = None;
                    }
                }
                _ => sync_open = false,
            }
        }
        if ready(EXIT) {
            exited = true;
            stdin_w = None;
        }
    }
    (denied, report)
}
