//! Process backend benchmarks: a fully confined run of `/bin/true`, end to end, next to the
//! tools it replaces, measured in the same run:
//!
//! - `process/sandcell_true`: `Sandbox::run` of /bin/true with the default policy (all seven
//!   namespaces, fresh root, seccomp, Landlock, cgroup or rlimit limits), output captured.
//! - `process/fork_exec_true`: `std::process::Command` (fork + exec, no confinement).
//! - `process/unshare_true`: util-linux `unshare` with user, pid, mount, net, ipc, uts and cgroup
//!   namespaces (no filesystem, seccomp or limits).
//! - `process/bwrap_true`: bubblewrap with `--unshare-all`, a read-only system tree, new /proc,
//!   /dev and /tmp, `--die-with-parent` (no seccomp filter, no limits).
//!
//! Run: `cargo bench --bench process`. Peers that are not installed are skipped with a message.

use std::process::{Command, Stdio};

use criterion::{criterion_group, criterion_main, Criterion};
use sandcell::{BackendKind, Policy, Program, SandboxBuilder, Status};

fn quiet(cmd: &mut Command) -> &mut Command {
    cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null())
}

fn works(cmd: &mut Command) -> bool {
    quiet(cmd).status().map(|s| s.success()).unwrap_or(false)
}

fn benches(c: &mut Criterion) {
    if !sandcell::probe().backend(BackendKind::Process).available {
        eprintln!("process backend unavailable here: {}", sandcell::probe().backend(BackendKind::Process).reason);
        return;
    }
    let sandbox = SandboxBuilder::new(BackendKind::Process).policy(Policy::default()).build().unwrap();
    let program = Program::path("/bin/true");
    assert_eq!(sandbox.run(&program).unwrap().status, Status::Exited(0));
    c.bench_function("process/sandcell_true", |b| b.iter(|| sandbox.run(&program).unwrap()));

    c.bench_function("process/fork_exec_true", |b| b.iter(|| quiet(&mut Command::new("/bin/true")).status().unwrap()));

    let unshare = || {
        let mut cmd = Command::new("unshare");
        cmd.args([
            "--user",
            "--map-root-user",
            "--pid",
            "--fork",
            "--mount",
            "--net",
            "--ipc",
            "--uts",
            "--cgroup",
            "/bin/true",
        ]);
        cmd
    };
    if works(&mut unshare()) {
        c.bench_function("process/unshare_true", |b| b.iter(|| quiet(&mut unshare()).status().unwrap()));
    } else {
        eprintln!("skipping process/unshare_true: `unshare` is not usable here");
    }

    let bwrap = || {
        let mut cmd = Command::new("bwrap");
        cmd.args(["--unshare-all", "--die-with-parent", "--ro-bind", "/usr", "/usr"]);
        for dir in ["/bin", "/sbin", "/lib", "/lib64"] {
            match std::fs::read_link(dir) {
                Ok(target) => cmd.args(["--symlink", target.to_str().unwrap(), dir]),
                Err(_) if std::path::Path::new(dir).exists() => cmd.args(["--ro-bind", dir, dir]),
                Err(_) => &mut cmd,
            };
        }
        cmd.args(["--proc", "/proc", "--dev", "/dev", "--tmpfs", "/tmp", "/bin/true"]);
        cmd
    };
    if works(&mut bwrap()) {
        c.bench_function("process/bwrap_true", |b| b.iter(|| quiet(&mut bwrap()).status().unwrap()));
    } else {
        eprintln!("skipping process/bwrap_true: bubblewrap (Debian package `bubblewrap`) is not installed");
    }
}

criterion_group!(name = process; config = Criterion::default().sample_size(100); targets = benches);
criterion_main!(process);
