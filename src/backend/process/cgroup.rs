//! Per-run cgroups, on cgroup v2 or on v1 controllers (hybrid hosts have both).
//!
//! A run gets its own cgroup (one per v1 controller) nested under sandcell's own cgroup, with
//! the policy's memory and process limits; the host reads peak memory, CPU time and OOM kills
//! from it afterwards and removes it. Where no cgroup is writable (an unprivileged user without
//! a delegated subtree), the backend falls back to rlimits and says so in the outcome.

use std::ffi::CString;
use std::fs;
use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStringExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use crate::probe::Cgroups;

/// Which cgroup version a sandbox uses, and where.
#[derive(Clone, Debug)]
pub(super) enum Setup {
    /// A cgroup v2 directory in which sandcell creates one child per run.
    V2 { parent: PathBuf },
    /// v1 controller directories (each sandcell's own cgroup in that hierarchy).
    V1 { memory: PathBuf, pids: PathBuf, cpuacct: Option<PathBuf> },
}

impl Setup {
    pub(super) fn describe(&self) -> &'static str {
        match self {
            Setup::V2 { .. } => "cgroup v2",
            Setup::V1 { .. } => "cgroup v1",
        }
    }
}

/// This process's cgroup path in a hierarchy (`/proc/self/cgroup`), `hierarchy` being `""` for
/// v2 or a v1 controller name.
fn own_path(hierarchy: &str) -> Option<PathBuf> {
    let text = fs::read_to_string("/proc/self/cgroup").ok()?;
    text.lines().find_map(|line| {
        let mut parts = line.splitn(3, ':');
        let (_, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
        let matches =
            if hierarchy.is_empty() { controllers.is_empty() } else { controllers.split(',').any(|c| c == hierarchy) };
        matches.then(|| PathBuf::from(path.trim_start_matches('/')))
    })
}

fn writable_dir(dir: &Path) -> bool {
    // Create and remove a probe child: the only reliable test of cgroup write permission.
    let probe = dir.join(format!("sandcell-probe-{}", std::process::id()));
    fs::create_dir(&probe).is_ok() && fs::remove_dir(&probe).is_ok()
}

/// Finds a usable cgroup setup: v2 with the memory and pids controllers, else v1 memory + pids.
pub(super) fn detect(host: &Cgroups) -> Option<Setup> {
    if let Some(mount) = &host.v2_mount {
        if ["memory", "pids"].iter().all(|c| host.v2_controllers.iter().any(|h| h == c)) {
            // Runs go in a "sandcell" child of the v2 root's subtree: processes may not live in
            // a cgroup that delegates controllers to children, so sandcell never uses its own.
            collect_stale(std::iter::once(mount));
            let parent = mount.join(format!("sandcell-{}", std::process::id()));
            if fs::create_dir_all(&parent).is_ok() {
                let subtree = mount.join("cgroup.subtree_control");
                let _ = fs::write(&subtree, "+memory +pids +cpu");
                let _ = fs::write(parent.join("cgroup.subtree_control"), "+memory +pids +cpu");
                let enabled = fs::read_to_string(parent.join("cgroup.subtree_control")).unwrap_or_default();
                if enabled.contains("memory") && enabled.contains("pids") && writable_dir(&parent) {
                    return Some(Setup::V2 { parent });
                }
                let _ = fs::remove_dir(&parent);
            }
        }
    }
    let v1 = |controller: &str| -> Option<PathBuf> {
        let dir = host.v1_mount(controller)?.join(own_path(controller)?);
        writable_dir(&dir).then_some(dir)
    };
    let memory = v1("memory")?;
    let pids = v1("pids")?;
    let cpuacct = v1("cpuacct");
    collect_stale(std::iter::once(&memory).chain(Some(&pids)).chain(cpuacct.as_ref()));
    Some(Setup::V1 { memory, pids, cpuacct })
}

/// Removes the run cgroups that processes now gone left in `dirs` (`sandcell-PID-N`: a process
/// that exits without dropping its sandboxes leaves its pool of empty cgroups behind). One
/// attempt each, on the background thread; a cgroup still in use is left alone.
fn collect_stale<'a>(dirs: impl Iterator<Item = &'a PathBuf>) {
    let mut stale = Vec::new();
    for dir in dirs {
        let Ok(entries) = fs::read_dir(dir) else { continue };
        for entry in entries.flatten() {
            let name = entry.file_name();
            let Some(pid) = name.to_str().and_then(|n| n.strip_prefix("sandcell-")).and_then(|r| r.split('-').next())
            else {
                continue;
            };
            if pid.parse::<u32>().is_ok() && !Path::new("/proc").join(pid).exists() {
                // A v2 parent (`sandcell-PID`) holds its runs' cgroups: those go first.
                if let Ok(children) = fs::read_dir(entry.path()) {
                    stale.extend(children.flatten().filter(|c| c.path().is_dir()).map(|c| c.path()));
                }
                stale.push(entry.path());
            }
        }
    }
    if !stale.is_empty() {
        let _ = reaper().send(Job::Collect(stale));
    }
}

/// Removes this process's cgroups if it dies without removing them itself (`SIGKILL`, a crash).
///
/// A directory in cgroupfs outlives the process that made it; a host killed mid-run would leave
/// its runs' cgroups behind until the next sandcell process collects them (`collect_stale`).
/// So the first pool of a process starts a janitor: a small shell, in a process group of its
/// own, that waits for end-of-file on a pipe whose only writer is this process (close-on-exec,
/// and every jail closes inherited descriptors first), then removes every `sandcell-PID-*`
/// cgroup of this process, and on v2 the `sandcell-PID` parent, retrying while the runs'
/// processes are still being killed (their inits die with the host, `PR_SET_PDEATHSIG`). When
/// the host exits normally the janitor finds nothing left and exits too. One per process, for
/// the process's life: ≈ 0.3 ms once, when its first process sandbox with cgroups is built.
fn janitor(setup: &Setup) {
    static STARTED: std::sync::OnceLock<Option<std::process::ChildStdin>> = std::sync::OnceLock::new();
    STARTED.get_or_init(|| {
        let pid = std::process::id();
        let mut patterns: Vec<String> = Vec::new();
        match setup {
            Setup::V2 { parent } => {
                patterns.push(format!("{}/sandcell-{pid}-*", parent.display()));
                patterns.push(parent.display().to_string());
            }
            Setup::V1 { memory, pids, cpuacct } => {
                for dir in std::iter::once(memory).chain(Some(pids)).chain(cpuacct.as_ref()) {
                    patterns.push(format!("{}/sandcell-{pid}-*", dir.display()));
                }
            }
        }
        // `read` returns at end-of-file: when this process is gone.
        const SCRIPT: &str = r#"read -r _
IFS='
'
n=0
while :; do
  busy=0
  for pattern in "$@"; do
    for d in $pattern; do
      [ -d "$d" ] || continue
      rmdir "$d" 2>/dev/null || busy=1
    done
  done
  [ "$busy" = 0 ] && exit 0
  n=$((n + 1))
  [ "$n" -ge 100 ] && exit 1
  sleep 0.1
done"#;
        use std::os::unix::process::CommandExt;
        let child = std::process::Command::new("/bin/sh")
            .arg("-c")
            .arg(SCRIPT)
            .arg("sandcell-cgroup-janitor")
            .args(&patterns)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .process_group(0)
            .spawn();
        match child {
            // The child is never waited for: it outlives this process by design, and until then
            // it only waits. Its pipe's write end is kept for the process's life.
            Ok(mut child) => child.stdin.take(),
            Err(e) => {
                tracing::warn!("cannot start the cgroup janitor (/bin/sh): {e}; a killed host leaves its cgroups behind until the next sandcell process");
                None
            }
        }
    });
}

/// Limits of one run's cgroup.
#[derive(Debug)]
pub(super) struct Limits {
    pub(super) memory: Option<u64>,
    pub(super) pids: Option<u32>,
}

/// One run's cgroup(s); removed when dropped.
#[derive(Debug)]
pub(super) struct RunCgroup {
    dirs: Vec<PathBuf>,
    v2: bool,
    memory: PathBuf,
    cpu: Option<PathBuf>,
    /// For v2: the directory, opened, for `CLONE_INTO_CGROUP`.
    pub(super) v2_fd: Option<OwnedFd>,
    /// For v1: each directory's `tasks` file (see `tasks_files`).
    tasks: Vec<CString>,
    /// Counters at the start of the current run (cgroups are reused; see [`Pool`]).
    oom_base: u64,
    cpu_base: Duration,
}

/// Memory a finished run may leave charged to its cgroup without it being reclaimed before the
/// cgroup is reused (the next run then has this much less headroom, and its peak may include it).
const LEFT_OVER: u64 = 1 << 20;

/// A sandbox's idle run cgroups. Creating a cgroup, moving a process in and removing it again
/// costs about 0.4 ms per run (removal waits for RCU grace periods), so a finished run's cgroup —
/// empty, since its pid namespace is gone — is reclaimed on a background thread and reused by a
/// later run of the same sandbox (same limits). Counters that cannot be reset are taken as a
/// baseline when a run starts.
#[derive(Debug)]
pub(super) struct Pool {
    setup: Setup,
    limits: Limits,
    idle: Arc<Mutex<Vec<RunCgroup>>>,
}

impl Drop for Pool {
    /// The idle cgroups go with the sandbox (leased ones are removed when their run ends).
    fn drop(&mut self) {
        for cg in self.idle.lock().unwrap_or_else(|e| e.into_inner()).drain(..) {
            drop(cg);
        }
    }
}

/// Live pools on cgroup v2, which share this process's `sandcell-PID` parent directory: the
/// last one to go removes it (see [`Pool::close`]).
static V2_POOLS: Mutex<usize> = Mutex::new(0);

impl Pool {
    pub(super) fn new(setup: Setup, limits: Limits) -> Self {
        if let Setup::V2 { parent } = &setup {
            let mut live = V2_POOLS.lock().unwrap_or_else(|e| e.into_inner());
            *live += 1;
            // The last pool before this one may have removed it.
            let _ = fs::create_dir(parent);
            let _ = fs::write(parent.join("cgroup.subtree_control"), "+memory +pids +cpu");
        }
        janitor(&setup);
        Pool { setup, limits, idle: Arc::default() }
    }

    /// Drops the pool and waits until every cgroup it had is gone (see [`flush`]); on v2, the
    /// last pool of the process also removes the parent directory.
    pub(super) fn close(self) {
        let setup = self.setup.clone();
        drop(self);
        flush();
        if let Setup::V2 { parent } = setup {
            let mut live = V2_POOLS.lock().unwrap_or_else(|e| e.into_inner());
            *live -= 1;
            if *live == 0 {
                let _ = fs::remove_dir(&parent);
            }
        }
    }

    /// A cgroup for one run, fresh counters, returned to the pool when the lease is dropped.
    pub(super) fn take(&self) -> io::Result<Lease> {
        let reused = self.idle.lock().unwrap_or_else(|e| e.into_inner()).pop();
        // A reused cgroup's counters were reset when it was recycled, off the run's path.
        let cg = match reused {
            Some(cg) => cg,
            None => {
                let mut cg = RunCgroup::create(&self.setup, &self.limits)?;
                cg.begin();
                cg
            }
        };
        Ok(Lease { cg: Some(cg), idle: Arc::downgrade(&self.idle) })
    }
}

/// A run's use of a pooled cgroup.
pub(super) struct Lease {
    cg: Option<RunCgroup>,
    idle: Weak<Mutex<Vec<RunCgroup>>>,
}

impl std::ops::Deref for Lease {
    type Target = RunCgroup;
    fn deref(&self) -> &RunCgroup {
        self.cg.as_ref().expect("present until dropped")
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        if let Some(cg) = self.cg.take() {
            if on_reaper() {
                recycle(cg, &self.idle);
            } else {
                let _ = reaper().send(Job::Recycle(cg, self.idle.clone()));
            }
        }
    }
}

/// Gives a cgroup back to its pool if the pool still exists and the cgroup is empty; removes
/// it otherwise.
fn recycle(mut cg: RunCgroup, idle: &Weak<Mutex<Vec<RunCgroup>>>) {
    match idle.upgrade() {
        Some(idle) if cg.recycle() => idle.lock().unwrap_or_else(|e| e.into_inner()).push(cg),
        _ => drop(cg),
    }
}

fn unique_name() -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    format!("sandcell-{}-{}", std::process::id(), N.fetch_add(1, Ordering::Relaxed))
}

fn write(dir: &Path, file: &str, value: &str) -> io::Result<()> {
    fs::write(dir.join(file), value).map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", dir.join(file).display())))
}

impl RunCgroup {
    pub(super) fn create(setup: &Setup, limits: &Limits) -> io::Result<RunCgroup> {
        let name = unique_name();
        match setup {
            Setup::V2 { parent } => {
                let dir = parent.join(&name);
                fs::create_dir(&dir)?;
                let mut cg = RunCgroup {
                    dirs: vec![dir.clone()],
                    v2: true,
                    memory: dir.clone(),
                    cpu: Some(dir.clone()),
                    v2_fd: None,
                    tasks: Vec::new(),
                    oom_base: 0,
                    cpu_base: Duration::ZERO,
                };
                if let Some(m) = limits.memory {
                    write(&dir, "memory.max", &m.to_string())?;
                    let _ = write(&dir, "memory.swap.max", "0");
                }
                if let Some(p) = limits.pids {
                    write(&dir, "pids.max", &p.to_string())?;
                }
                cg.v2_fd = Some(fs::File::open(&dir)?.into());
                Ok(cg)
            }
            Setup::V1 { memory, pids, cpuacct } => {
                let mut cg = RunCgroup {
                    dirs: Vec::new(),
                    v2: false,
                    memory: memory.join(&name),
                    cpu: None,
                    v2_fd: None,
                    tasks: Vec::new(),
                    oom_base: 0,
                    cpu_base: Duration::ZERO,
                };
                fs::create_dir(&cg.memory)?;
                cg.dirs.push(cg.memory.clone());
                if let Some(m) = limits.memory {
                    write(&cg.memory, "memory.limit_in_bytes", &m.to_string())?;
                    // No swap beyond the limit, where the kernel accounts swap.
                    let _ = write(&cg.memory, "memory.memsw.limit_in_bytes", &m.to_string());
                }
                let p = pids.join(&name);
                fs::create_dir(&p)?;
                cg.dirs.push(p.clone());
                if let Some(n) = limits.pids {
                    write(&p, "pids.max", &n.to_string())?;
                }
                if let Some(c) = cpuacct {
                    let c = c.join(&name);
                    fs::create_dir(&c)?;
                    cg.dirs.push(c.clone());
                    cg.cpu = Some(c);
                }
                cg.tasks = cg
                    .dirs
                    .iter()
                    .map(|d| CString::new(d.join("tasks").into_os_string().into_vec()))
                    .collect::<Result<_, _>>()
                    .map_err(io::Error::other)?;
                Ok(cg)
            }
        }
    }

    /// Resets or records the counters at the start of a run.
    fn begin(&mut self) {
        if self.v2 {
            let _ = fs::write(self.memory.join("memory.peak"), "0");
        } else {
            let _ = fs::write(self.memory.join("memory.max_usage_in_bytes"), "0");
            let _ = fs::write(self.memory.join("memory.memsw.max_usage_in_bytes"), "0");
            if let Some(c) = &self.cpu {
                let _ = fs::write(c.join("cpuacct.usage"), "0");
            }
        }
        self.oom_base = self.oom_kills();
        self.cpu_base = if self.v2 { self.raw_cpu().unwrap_or_default() } else { Duration::ZERO };
    }

    fn oom_kills(&self) -> u64 {
        let (file, key) = if self.v2 { ("memory.events", "oom_kill") } else { ("memory.oom_control", "oom_kill") };
        parse_keyed(&fs::read_to_string(self.memory.join(file)).unwrap_or_default(), key).unwrap_or(0)
    }

    fn raw_cpu(&self) -> Option<Duration> {
        CpuProbe { dir: self.cpu.clone()?, v2: self.v2, base: Duration::ZERO }.read()
    }

    /// Whether the cgroup holds no process (so it can be reused). If so, reclaims the memory a
    /// run left charged to it (page cache) when that is more than a little — reclaiming costs
    /// CPU time, taken from the runs in progress — and resets its counters for the next run.
    fn recycle(&mut self) -> bool {
        let empty =
            self.dirs.iter().all(|d| fs::read_to_string(d.join("cgroup.procs")).is_ok_and(|p| p.trim().is_empty()));
        if empty {
            let usage = if self.v2 { "memory.current" } else { "memory.usage_in_bytes" };
            let left: u64 = fs::read_to_string(self.memory.join(usage))
                .ok()
                .and_then(|u| u.trim().parse().ok())
                .unwrap_or(u64::MAX);
            if left > LEFT_OVER {
                if self.v2 {
                    let _ = fs::write(self.memory.join("memory.reclaim"), "1G");
                } else {
                    let _ = fs::write(self.memory.join("memory.force_empty"), "0");
                }
            }
            self.begin();
        }
        empty
    }

    /// The `tasks` files the run's init writes "0" to, joining its cgroups itself (v1; on v2
    /// it is born in its cgroup, `CLONE_INTO_CGROUP`). See `jail::setup`, step 2b.
    pub(super) fn tasks_files(&self) -> &[CString] {
        &self.tasks
    }

    /// CPU time used by the run's processes.
    pub(super) fn cpu_usage(&self) -> Option<Duration> {
        self.cpu_probe()?.read()
    }

    /// A handle that reads the run's CPU time (for the watchdog thread).
    pub(super) fn cpu_probe(&self) -> Option<CpuProbe> {
        Some(CpuProbe { dir: self.cpu.clone()?, v2: self.v2, base: self.cpu_base })
    }

    /// Peak memory of the run.
    pub(super) fn peak_memory(&self) -> Option<u64> {
        let file = if self.v2 { "memory.peak" } else { "memory.max_usage_in_bytes" };
        fs::read_to_string(self.memory.join(file)).ok()?.trim().parse().ok()
    }

    /// Whether the kernel's OOM killer killed a process of the run.
    pub(super) fn oom_killed(&self) -> bool {
        self.oom_kills() > self.oom_base
    }
}

impl Drop for RunCgroup {
    fn drop(&mut self) {
        // Removing a memory cgroup waits for RCU grace periods (about a millisecond), so it is
        // handed to a background thread rather than charged to the run. The run's processes are
        // gone; a directory can stay busy for a moment while the kernel finishes with them.
        let dirs = std::mem::take(&mut self.dirs);
        if dirs.is_empty() {
            return;
        }
        if on_reaper() {
            remove_dirs(dirs);
        } else {
            let _ = reaper().send(Job::Remove(dirs));
        }
    }
}

/// Work for the background cgroup thread.
enum Job {
    Remove(Vec<PathBuf>),
    /// Something whose release takes a while, released here instead of on a run's path.
    Release(Box<dyn Send>),
    /// Stale cgroups of processes now gone: one attempt each.
    Collect(Vec<PathBuf>),
    Recycle(RunCgroup, Weak<Mutex<Vec<RunCgroup>>>),
    /// Answered once every job sent before it is done.
    Barrier(std::sync::mpsc::Sender<()>),
}

thread_local! {
    static ON_REAPER: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Whether this is the background cgroup thread: what would be sent to it is done at once, so
/// that a [`flush`] covers the work a job causes, not only the job itself.
fn on_reaper() -> bool {
    ON_REAPER.with(std::cell::Cell::get)
}

/// Waits until the background thread has done everything sent to it so far: runs' inits reaped,
/// their cgroups recycled or, where their sandbox is gone, removed. A sandbox calls it when it
/// is dropped, so that a process that exits right after (the CLI) leaves no cgroup behind.
pub(super) fn flush() {
    let (tx, rx) = std::sync::mpsc::channel();
    if reaper().send(Job::Barrier(tx)).is_ok() {
        // Removing a cgroup can wait for the kernel to finish with its last process; bounded.
        let _ = rx.recv_timeout(Duration::from_secs(10));
    }
}

fn remove_dirs(dirs: Vec<PathBuf>) {
    for dir in &dirs {
        for _ in 0..1000 {
            match fs::remove_dir(dir) {
                Ok(()) => break,
                Err(e) if e.kind() == io::ErrorKind::NotFound => break,
                Err(_) => std::thread::sleep(Duration::from_millis(1)),
            }
        }
    }
}

/// Releases `thing` on the background thread.
pub(super) fn release_later(thing: impl Send + 'static) {
    if let Err(std::sync::mpsc::SendError(Job::Release(thing))) = reaper().send(Job::Release(Box::new(thing))) {
        drop(thing);
    }
}

fn reaper() -> &'static std::sync::mpsc::Sender<Job> {
    static REAPER: std::sync::OnceLock<std::sync::mpsc::Sender<Job>> = std::sync::OnceLock::new();
    REAPER.get_or_init(|| {
        let (tx, rx) = std::sync::mpsc::channel::<Job>();
        std::thread::Builder::new()
            .name("sandcell-cgroups".into())
            .spawn(move || {
                ON_REAPER.with(|r| r.set(true));
                for job in rx {
                    match job {
                        Job::Remove(dirs) => remove_dirs(dirs),
                        Job::Release(thing) => drop(thing),
                        Job::Collect(dirs) => {
                            for dir in dirs {
                                let _ = fs::remove_dir(dir);
                            }
                        }
                        Job::Recycle(cg, idle) => recycle(cg, &idle),
                        Job::Barrier(done) => {
                            let _ = done.send(());
                        }
                    }
                }
            })
            .expect("cannot start the cgroup thread");
        tx
    })
}
/// Reads a run's CPU time from its cgroup.
pub(super) struct CpuProbe {
    dir: PathBuf,
    v2: bool,
    base: Duration,
}

impl CpuProbe {
    pub(super) fn read(&self) -> Option<Duration> {
        let total = if self.v2 {
            let stat = fs::read_to_string(self.dir.join("cpu.stat")).ok()?;
            parse_keyed(&stat, "usage_usec").map(Duration::from_micros)
        } else {
            fs::read_to_string(self.dir.join("cpuacct.usage")).ok()?.trim().parse().ok().map(Duration::from_nanos)
        };
        total.map(|t| t.saturating_sub(self.base))
    }
}

/// Reads `key N` from a flat-keyed cgroup file.
fn parse_keyed(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|l| {
        let mut it = l.split_whitespace();
        (it.next()? == key).then(|| it.next()?.parse().ok()).flatten()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keyed_files() {
        assert_eq!(parse_keyed("oom_kill_disable 0\nunder_oom 0\noom_kill 2\n", "oom_kill"), Some(2));
        assert_eq!(parse_keyed("low 0\nhigh 0\nmax 3\noom 1\noom_kill 1\n", "oom_kill"), Some(1));
        assert_eq!(parse_keyed("usage_usec 1234\nuser_usec 1000\n", "usage_usec"), Some(1234));
        assert_eq!(parse_keyed("", "oom_kill"), None);
    }
}
