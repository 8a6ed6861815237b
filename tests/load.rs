//! Load and faults: bursts of concurrent runs on every backend all complete, and once their
//! sandboxes are dropped nothing of them remains in the host process (threads, descriptors,
//! mappings, mounts, VMs) or on the host (zombies, cgroups); a host killed with SIGKILL in the
//! middle of a run leaves no guest, VM or cgroup; an interrupt, a timeout and the guest's own
//! completion racing each other never hang a run or lose its outcome.
//!
//! A test binary of its own, so that counting this process's threads and descriptors sees no
//! other test's; its tests take turns (`SERIAL`). Tests that need something this host lacks
//! print `SKIPPED` (a failure under `SANDCELL_REQUIRE_ALL=1`).

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{Arc, Barrier, Mutex};
use std::time::{Duration, Instant};

use sandcell::{BackendKind, InterruptHandle, Policy, Program, RunOptions, Sandbox, SandboxBuilder, Status};

static SERIAL: Mutex<()> = Mutex::new(());

fn require_all() -> bool {
    std::env::var("SANDCELL_REQUIRE_ALL").is_ok_and(|v| !v.is_empty() && v != "0")
}

/// Whether `kind` can run here; prints the skip (or fails under SANDCELL_REQUIRE_ALL).
fn available(kind: BackendKind) -> bool {
    let support = sandcell::probe().backend(kind);
    if !support.available {
        assert!(!require_all(), "SANDCELL_REQUIRE_ALL is set but {kind} is unavailable: {}", support.reason);
        eprintln!("SKIPPED on {kind}: {}", support.reason);
    }
    support.available
}

/// Writes `hi\n` and exits 0.
const HELLO: &str = r#"(module
  (import "wasi_snapshot_preview1" "fd_write" (func $w (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 16) "hi\n")
  (func (export "_start")
    (i32.store (i32.const 0) (i32.const 16)) (i32.store (i32.const 4) (i32.const 3))
    (drop (call $w (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8)))))"#;

/// What this process holds, and what the host holds for it.
#[derive(Debug, Clone)]
struct Snapshot {
    threads: usize,
    fds: usize,
    kvm_fds: usize,
    maps: usize,
    vm_kib: u64,
    mounts: usize,
    children: usize,
    zombies: Vec<u32>,
    cgroups: BTreeSet<String>,
    /// The mappings, for the report when they do not settle.
    map_lines: Vec<String>,
}

fn count(dir: &str) -> usize {
    std::fs::read_dir(dir).map(|d| d.count()).unwrap_or(0)
}

/// This process's children (pid, state).
fn children() -> Vec<(u32, char)> {
    let me = std::process::id();
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|p| p.parse::<u32>().ok()) else { continue };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { continue };
        // pid (comm) state ppid ...: comm may hold spaces and parentheses, so split after the last ')'.
        let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else { continue };
        let mut fields = rest.split_whitespace();
        let state = fields.next().and_then(|s| s.chars().next()).unwrap_or('?');
        if fields.next().and_then(|p| p.parse::<u32>().ok()) == Some(me) {
            out.push((pid, state));
        }
    }
    out
}

/// Cgroup directories named after process `pid` (`sandcell-PID` and `sandcell-PID-N`), anywhere
/// in the cgroup hierarchies.
fn cgroups_of(pid: u32) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    let prefix = format!("sandcell-{pid}");
    let mut stack: Vec<(std::path::PathBuf, usize)> = vec![(Path::new("/sys/fs/cgroup").to_path_buf(), 0)];
    while let Some((dir, depth)) = stack.pop() {
        for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let Ok(ft) = entry.file_type() else { continue };
            if !ft.is_dir() {
                continue;
            }
            let name = entry.file_name().to_string_lossy().into_owned();
            if name == prefix || name.starts_with(&format!("{prefix}-")) {
                found.insert(entry.path().display().to_string());
            }
            if depth < 6 {
                stack.push((entry.path(), depth + 1));
            }
        }
    }
    found
}

fn snapshot() -> Snapshot {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let vm_kib = status
        .lines()
        .find_map(|l| l.strip_prefix("VmSize:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0);
    let kvm_fds = std::fs::read_dir("/proc/self/fd")
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| std::fs::read_link(e.path()).is_ok_and(|t| t.to_string_lossy().contains("kvm")))
        .count();
    let kids = children();
    let map_lines: Vec<String> =
        std::fs::read_to_string("/proc/self/maps").unwrap_or_default().lines().map(str::to_owned).collect();
    Snapshot {
        map_lines: map_lines.clone(),
        threads: count("/proc/self/task"),
        fds: count("/proc/self/fd"),
        kvm_fds,
        maps: map_lines.len(),
        vm_kib,
        mounts: std::fs::read_to_string("/proc/self/mountinfo").map(|m| m.lines().count()).unwrap_or(0),
        children: kids.iter().filter(|(_, s)| *s != 'Z').count(),
        zombies: kids.iter().filter(|(_, s)| *s == 'Z').map(|(p, _)| *p).collect(),
        cgroups: cgroups_of(std::process::id()),
    }
}

/// What may differ from the baseline once everything is dropped: malloc's per-thread arenas
/// (glibc keeps up to 8 per CPU, each a reservation of 64 MiB and two mappings) stay mapped
/// after a burst of threads; nothing of sandcell's may.
fn settled(base: &Snapshot, now: &Snapshot) -> Result<(), String> {
    let mut problems = Vec::new();
    if now.threads > base.threads {
        problems.push(format!("threads {} > {}", now.threads, base.threads));
    }
    if now.fds > base.fds {
        problems.push(format!("descriptors {} > {}", now.fds, base.fds));
    }
    if now.kvm_fds > base.kvm_fds {
        problems.push(format!("KVM descriptors {} > {}", now.kvm_fds, base.kvm_fds));
    }
    if now.maps > base.maps + 100 {
        problems.push(format!("mappings {} > {} + 100", now.maps, base.maps));
    }
    if now.vm_kib > base.vm_kib + (2 << 20) {
        problems.push(format!("address space {} KiB > {} KiB + 2 GiB", now.vm_kib, base.vm_kib));
    }
    if now.mounts != base.mounts {
        problems.push(format!("mounts {} != {}", now.mounts, base.mounts));
    }
    if now.children > base.children {
        problems.push(format!("child processes {} > {}", now.children, base.children));
    }
    if !now.zombies.is_empty() {
        problems.push(format!("zombies {:?}", now.zombies));
    }
    if now.cgroups != base.cgroups {
        problems.push(format!("cgroups {:?} (before: {:?})", now.cgroups, base.cgroups));
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems.join("; "))
    }
}

/// Waits (up to 15 s: idle helper threads end after a second) until nothing exceeds `base`.
fn assert_settles(base: &Snapshot, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let now = snapshot();
        match settled(base, &now) {
            Ok(()) => return,
            Err(e) if Instant::now() > deadline => {
                let before: BTreeSet<&String> = base.map_lines.iter().collect();
                let new: Vec<&String> = now.map_lines.iter().filter(|l| !before.contains(l)).take(40).collect();
                panic!("after {what}, left behind: {e}\nnew mappings (first 40): {new:#?}")
            }
            Err(_) => std::thread::sleep(Duration::from_millis(100)),
        }
    }
}

fn process_policy() -> Policy {
    Policy {
        memory: Some(256 << 20),
        timeout: Some(Duration::from_secs(60)),
        system_dirs: Some(
            ["/usr", "/bin", "/lib", "/lib64", "/etc/ld.so.cache"]
                .iter()
                .map(std::path::PathBuf::from)
                .filter(|d| d.exists())
                .collect(),
        ),
        ..Policy::default()
    }
}

/// `n` runs at once (threads released together) of `program` on `sandbox`; every one must end
/// with exit 0 and `expect` on stdout.
fn burst(sandbox: Arc<dyn Sandbox>, n: usize, program: Program, expect: &str) {
    let barrier = Arc::new(Barrier::new(n));
    let threads: Vec<_> = (0..n)
        .map(|i| {
            let (sb, barrier, program, expect) = (sandbox.clone(), barrier.clone(), program.clone(), expect.to_owned());
            std::thread::Builder::new()
                // Rust's default 2 MiB: glibc caches up to 40 MiB of freed thread stacks, which
                // stay mapped (20 of this size), and are not sandcell's.
                .stack_size(2 << 20)
                .spawn(move || {
                    barrier.wait();
                    let out = sb.run(&program).map_err(|e| format!("run {i}: {e}"))?;
                    if out.status != Status::Exited(0) || out.stdout != expect.as_bytes() {
                        return Err(format!(
                            "run {i}: {:?} stdout {:?} stderr {:?}",
                            out.status,
                            String::from_utf8_lossy(&out.stdout),
                            String::from_utf8_lossy(&out.stderr)
                        ));
                    }
                    Ok(())
                })
                .expect("spawn a thread")
        })
        .collect();
    let failures: Vec<String> = threads.into_iter().filter_map(|t| t.join().expect("thread").err()).collect();
    assert!(failures.is_empty(), "{} of {n} runs failed: {:?}", failures.len(), &failures[..failures.len().min(5)]);
}

/// Builds a sandbox of `kind`, runs a burst of `n`, drops the sandbox.
fn load(kind: BackendKind, n: usize) {
    let (policy, program, expect) = match kind {
        BackendKind::Process => (process_policy(), Program::path("/bin/echo").arg("hi"), "hi\n"),
        _ => (
            Policy { timeout: Some(Duration::from_secs(60)), ..Policy::default() },
            Program::bytes(HELLO.as_bytes().to_vec()),
            "hi\n",
        ),
    };
    let sandbox: Arc<dyn Sandbox> = SandboxBuilder::new(kind).policy(policy).build().expect("sandbox").into();
    burst(sandbox, n, program, expect);
}

fn raise_descriptor_limit() {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: valid out-pointer.
    unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) };
    limit.rlim_cur = limit.rlim_max.min(65_536);
    // SAFETY: valid pointer.
    unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) };
}

#[test]
fn bursts_on_every_backend_complete_and_leave_nothing_behind() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    raise_descriptor_limit();
    let backends: Vec<(BackendKind, usize)> =
        [(BackendKind::Wasm, 1000), (BackendKind::Process, 200), (BackendKind::MicroVm, 20)]
            .into_iter()
            .filter(|(k, _)| available(*k))
            .collect();
    // Warm up: what lives as long as the process (the WASI runtime's threads, the micro-VM
    // reaper thread, the cgroup janitor, two idle jail-starting threads) exists before the
    // baseline is taken.
    for (kind, _) in &backends {
        load(*kind, 3);
    }
    std::thread::sleep(Duration::from_millis(1500));
    let base = snapshot();
    for (kind, n) in backends {
        let started = Instant::now();
        load(kind, n);
        eprintln!("{n} concurrent runs on {kind}: {:?}", started.elapsed());
        assert_settles(&base, &format!("{n} concurrent runs on {kind}"));
    }
}

/// A run that takes about as long as its timeout, interrupted at about the same time: whichever
/// comes first wins, every run returns, and a run that completed has its whole output.
#[test]
fn interrupt_timeout_and_completion_racing_never_hang_or_lose_an_outcome() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let cases: Vec<(BackendKind, u32, Program)> = vec![
        (BackendKind::Wasm, 300, spin_module(3_000_000)),
        (BackendKind::MicroVm, 60, spin_module(300_000)),
        (
            BackendKind::Process,
            60,
            Program::path("/bin/sh").args(["-c", "i=0; while [ $i -lt 200 ]; do i=$((i+1)); done; echo done"]),
        ),
    ];
    for (kind, rounds, program) in cases {
        if !available(kind) {
            continue;
        }
        let policy = match kind {
            BackendKind::Process => process_policy(),
            _ => Policy::default(),
        };
        // Calibrate: how long the program takes alone.
        let sandbox = SandboxBuilder::new(kind).policy(policy.clone()).build().expect("sandbox");
        let started = Instant::now();
        let out = sandbox.run(&program).expect("calibration run");
        assert_eq!(out.status, Status::Exited(0), "{kind}: {}", String::from_utf8_lossy(&out.stderr));
        let alone = started.elapsed().max(Duration::from_millis(1));
        let policy = Policy { timeout: Some(alone), ..policy };
        let sandbox: Arc<dyn Sandbox> = SandboxBuilder::new(kind).policy(policy).build().expect("sandbox").into();
        let mut seen = std::collections::BTreeMap::<String, u32>::new();
        for round in 0..rounds {
            let handle = InterruptHandle::new();
            let (sb, program, h) = (sandbox.clone(), program.clone(), handle.clone());
            let (tx, rx) = std::sync::mpsc::channel();
            std::thread::spawn(move || {
                let _ = tx.send(sb.run_with(&program, RunOptions::new().interrupt(h)));
            });
            // Interrupt somewhere between half and one and a half times the run's own length.
            let at = alone.mul_f64(0.5 + f64::from(round % 11) / 10.0);
            std::thread::sleep(at);
            handle.interrupt();
            let result = rx
                .recv_timeout(Duration::from_secs(30))
                .unwrap_or_else(|_| panic!("{kind}: round {round} hung (interrupt at {at:?}, run {alone:?})"));
            let out = result.unwrap_or_else(|e| panic!("{kind}: round {round}: host error {e}"));
            match &out.status {
                Status::Exited(0) => {
                    assert_eq!(out.stdout, b"done\n", "{kind}: round {round}: completed run lost output")
                }
                Status::Timeout | Status::Interrupted => {}
                other => panic!("{kind}: round {round}: {other:?} {}", String::from_utf8_lossy(&out.stderr)),
            }
            *seen.entry(format!("{:?}", out.status)).or_default() += 1;
        }
        eprintln!("{kind}: {seen:?} (run alone {alone:?})");
    }
}

/// Spins `n` iterations, then writes `done\n`.
fn spin_module(n: u32) -> Program {
    let wat = format!(
        r#"(module
  (import "wasi_snapshot_preview1" "fd_write" (func $w (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 16) "done\n")
  (func (export "_start") (local $i i32)
    (loop $l (local.set $i (i32.add (local.get $i) (i32.const 1)))
      (br_if $l (i32.lt_u (local.get $i) (i32.const {n}))))
    (i32.store (i32.const 0) (i32.const 16)) (i32.store (i32.const 4) (i32.const 5))
    (drop (call $w (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8)))))"#
    );
    Program::bytes(wat.into_bytes())
}

/// The CLI killed with SIGKILL while its guest runs: afterwards no process of the run exists, and
/// (as root, where runs get cgroups) no cgroup of the CLI's remains. The micro-VM and the wasm
/// guest live inside the CLI process and go with it; the process backend's jail dies with it
/// (`PR_SET_PDEATHSIG` on its init) and the cgroup janitor removes its cgroups.
#[test]
fn a_host_killed_mid_run_leaves_no_guest_vm_or_cgroup() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let cli = env!("CARGO_BIN_EXE_sandcell");
    let dir = std::env::temp_dir().join(format!("sandcell-kill-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let spin = dir.join("spin.wat");
    std::fs::write(
        &spin,
        r#"(module
  (import "wasi_snapshot_preview1" "fd_write" (func $w (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 16) "started\n")
  (func (export "_start")
    (i32.store (i32.const 0) (i32.const 16)) (i32.store (i32.const 4) (i32.const 8))
    (drop (call $w (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8)))
    (loop $l (br $l))))"#,
    )
    .expect("write the module");
    for kind in [BackendKind::Process, BackendKind::Wasm, BackendKind::MicroVm] {
        if !available(kind) {
            continue;
        }
        let marker = format!("sandcell-kill-marker-{}-{kind}", std::process::id());
        let mut cmd = Command::new(cli);
        cmd.env("SANDCELL_CACHE_DIR", concat!(env!("CARGO_TARGET_TMPDIR"), "/cli-cache"));
        cmd.args(["run", "--backend", kind.name(), "--timeout", "120s"]);
        match kind {
            BackendKind::Process => {
                cmd.args(["--memory", "128M", "--", "/bin/sh", "-c", "echo started; while :; do :; done", &marker]);
            }
            _ => {
                cmd.arg(&spin);
            }
        }
        let mut child = cmd.stdout(Stdio::piped()).stderr(Stdio::null()).spawn().expect("start the CLI");
        let pid = child.id();
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("stdout")).read_line(&mut line).expect("read");
        assert_eq!(line, "started\n", "{kind}: the guest did not start");
        let during = cgroups_of(pid);
        // SAFETY: kill has no memory preconditions; the pid is our own child, not yet reaped.
        unsafe { libc::kill(pid as i32, libc::SIGKILL) };
        let _ = child.wait();
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let guests: Vec<u32> = std::fs::read_dir("/proc")
                .into_iter()
                .flatten()
                .flatten()
                .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
                .filter(|p| {
                    std::fs::read(format!("/proc/{p}/cmdline"))
                        .is_ok_and(|c| c.windows(marker.len()).any(|w| w == marker.as_bytes()))
                })
                .collect();
            let left = cgroups_of(pid);
            if guests.is_empty() && left.is_empty() {
                eprintln!("{kind}: nothing left (cgroups during the run: {during:?})");
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{kind}: after the host was killed, guest processes {guests:?} and cgroups {left:?} remain"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// Trinity, Debian's system-call fuzzer, inside the process backend for a while (two minutes;
/// `SANDCELL_TRINITY_SECONDS` changes it): the host survives, the sandbox holds (nothing with a
/// setuid bit appears in its writable mount, no process of it outlives the run), and nothing is
/// left once the sandbox is dropped. Calls that end a run (`Status::SyscallDenied`: ptrace,
/// mount, bpf, ...) are kept out of trinity's list, or every run would end at the first one;
/// their refusal is tested on its own (tests/all/process.rs).
#[test]
fn trinity_in_the_process_backend_leaves_the_host_intact() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    if !available(BackendKind::Process) {
        return;
    }
    let Ok(list) = Command::new("trinity").arg("-L").stderr(Stdio::null()).output() else {
        assert!(!require_all(), "SANDCELL_REQUIRE_ALL is set but trinity is not installed (apt-get install trinity)");
        eprintln!("SKIPPED: no trinity (apt-get install trinity)");
        return;
    };
    let known: BTreeSet<String> = String::from_utf8_lossy(&list.stdout)
        .lines()
        .filter_map(|l| l.strip_prefix("entrypoint ")?.split_whitespace().nth(1).map(str::to_owned))
        .collect();
    // The calls sandcell answers by ending the run, from the seccomp profile's own source.
    let source = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("src/backend/process/seccomp.rs"))
        .expect("seccomp.rs");
    let denied =
        source.split("const DENIED: &[&str] = syscalls![").nth(1).and_then(|s| s.split("];").next()).unwrap_or("");
    let mut args: Vec<String> =
        ["-q", "-l", "off", "-C", "2", "-N", "1000000", "--dangerous"].map(String::from).to_vec();
    args.push("--disable-fds=bpf,perf,fanotify,userfaultfd".into());
    // Also kept out: the kill family, with which trinity ends the shell that restarts it (its
    // signals cannot leave the run's pid namespace; `signals_cannot_reach_host_processes` in
    // tests/all/process.rs tries that).
    let kills = ["kill", "tkill", "tgkill", "rt_sigqueueinfo", "rt_tgsigqueueinfo", "pidfd_send_signal"];
    for name in
        denied.split(',').map(str::trim).chain(["clone", "clone3", "ioctl"]).chain(kills).filter(|n| known.contains(*n))
    {
        args.extend(["-x".into(), name.to_owned()]);
    }
    let seconds: u64 = std::env::var("SANDCELL_TRINITY_SECONDS").ok().and_then(|s| s.parse().ok()).unwrap_or(120);
    let dir = std::env::temp_dir().join(format!("sandcell-trinity-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("temp dir");
    // What lives as long as the process (the cgroup janitor, idle jail threads) exists first.
    load(BackendKind::Process, 3);
    std::thread::sleep(Duration::from_millis(1500));
    let base = snapshot();
    {
        let policy = Policy {
            timeout: Some(Duration::from_secs(seconds)),
            max_open_files: Some(4096),
            max_file_size: Some(256 << 20),
            mounts: vec![sandcell::Mount::read_write(&dir, "/work")],
            ..process_policy()
        };
        let sandbox = SandboxBuilder::new(BackendKind::Process).policy(policy).build().expect("sandbox");
        let started = Instant::now();
        // Its chatter (thousands of lines a second) goes to a file in the writable mount; it is
        // restarted whenever it stops, until the run's timeout; files past `max_file_size` are
        // refused with EFBIG rather than SIGXFSZ (ignored, and so for trinity too).
        let script = format!(
            "trap '' XFSZ; while :; do /usr/bin/trinity {} >>/work/trinity.log 2>&1; echo trinity exited $?; done",
            args.join(" ")
        );
        let out = sandbox
            .run(&Program::path("/bin/sh").args(["-c", &script]).cwd("/work"))
            .expect("the run itself must not fail");
        let stderr = String::from_utf8_lossy(&out.stderr);
        eprintln!("trinity ran {:?}: {:?}", started.elapsed(), out.status);
        assert!(
            matches!(
                out.status,
                Status::Timeout | Status::SyscallDenied(_) | Status::Signaled(_) | Status::MemoryLimit
            ),
            "{:?}: {stderr}",
            out.status
        );
        if out.status == Status::Timeout {
            // Trinity waits 10 s before it starts as root; after that, its two children make
            // system calls as fast as they can.
            assert!(out.usage.cpu > Duration::from_secs(1), "trinity barely ran: {:?} of CPU", out.usage.cpu);
        } else {
            eprintln!("trinity's run ended early ({:?}); the host and the sandbox must hold all the same", out.status);
        }
        let log = std::fs::read(dir.join("trinity.log")).unwrap_or_default();
        let log = String::from_utf8_lossy(&log);
        assert!(
            log.contains("Generating file descriptors"),
            "trinity did not get to fuzzing: {}{stderr}",
            &log[..log.len().min(4000)]
        );
    }
    // The sandbox holds: nothing privileged in the writable mount, no trinity left running.
    for entry in walk(&dir) {
        use std::os::unix::fs::PermissionsExt;
        if let Ok(meta) = std::fs::symlink_metadata(&entry) {
            assert_eq!(meta.permissions().mode() & 0o6000, 0, "{} has a setuid/setgid bit", entry.display());
        }
    }
    let trinity_left: Vec<String> = std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| std::fs::read_to_string(e.path().join("comm")).is_ok_and(|c| c.trim() == "trinity"))
        .map(|e| std::fs::read_to_string(e.path().join("status")).unwrap_or_default())
        .collect();
    assert!(trinity_left.is_empty(), "trinity processes outlived their run: {trinity_left:#?}");
    assert_settles(&base, "trinity");
    let _ = std::fs::remove_dir_all(&dir);
}

fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let path = entry.path();
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                stack.push(path.clone());
            }
            out.push(path);
        }
    }
    out
}
