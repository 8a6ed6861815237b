//! The conformance suite: the same cases, written against the `Sandbox` trait alone, run on every
//! backend available here. Each backend runs the same test guest (`tests/guests/testguest`),
//! compiled for what the backend executes.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sandcell::{
    BackendKind, CpuBudget, InterruptHandle, Mount, Policy, Program, RunOptions, Sandbox, SandboxBuilder, Status,
    Stream,
};

use crate::common::{self, text, TempDir};

/// One backend and how to run the test guest on it.
pub struct Fixture {
    pub kind: BackendKind,
    guest: PathBuf,
}

/// Where the process backend sees the native test guest.
const GUEST_DIR: &str = "/opt/sandcell-guest";

impl Fixture {
    /// The test guest in `mode`, with arguments.
    pub fn guest(&self, mode: &str, args: &[&str]) -> Program {
        let path = match self.kind {
            BackendKind::Process => PathBuf::from(GUEST_DIR).join("testguest"),
            _ => self.guest.clone(),
        };
        Program::path(path).name("testguest").arg(mode).args(args.iter().copied())
    }

    /// A sandbox of this backend with `policy`, plus what the backend needs to reach the guest.
    pub fn sandbox(&self, policy: Policy) -> Box<dyn Sandbox> {
        self.try_sandbox(policy).unwrap_or_else(|e| panic!("{}: {e}", self.kind))
    }

    /// As [`Fixture::sandbox`], or the error of building it.
    pub fn try_sandbox(&self, mut policy: Policy) -> Result<Box<dyn Sandbox>, sandcell::Error> {
        if self.kind == BackendKind::Process {
            policy.mounts.push(Mount::read_only(self.guest.parent().unwrap(), GUEST_DIR));
            // Over a root of its own (a mount at `/`, as a container image's), a native program
            // needs its libraries: the host's, as an image would carry its own.
            if policy.mounts.iter().any(|m| m.guest == std::path::Path::new("/")) && policy.system_dirs.is_none() {
                let dirs = ["/usr", "/bin", "/lib", "/lib64", "/etc/ld.so.cache"];
                policy.system_dirs =
                    Some(dirs.iter().map(PathBuf::from).filter(|d| std::fs::symlink_metadata(d).is_ok()).collect());
            }
        }
        SandboxBuilder::new(self.kind).policy(policy).build()
    }
}

/// Every backend available on this host with its guest built. Backends that cannot run here are
/// reported (and fail the test under `SANDCELL_REQUIRE_ALL`).
pub fn fixtures() -> Vec<Fixture> {
    let mut out = Vec::new();
    for kind in BackendKind::ALL {
        if !common::backend_wanted(kind) {
            eprintln!("not testing {kind}: not in {}", common::TEST_BACKENDS);
            continue;
        }
        let support = sandcell::probe().backend(kind);
        if !support.available {
            if common::require_all() {
                panic!("{} is set but the {kind} backend is unavailable: {}", common::REQUIRE_ALL, support.reason);
            }
            eprintln!("SKIPPED on {kind}: {}", support.reason);
            continue;
        }
        let guest = match kind {
            BackendKind::Process => common::native_guest(),
            _ => common::wasm_guest(),
        };
        match guest {
            Ok(g) => out.push(Fixture { kind, guest: g.to_path_buf() }),
            Err(e) if common::require_all() => {
                panic!("{}: cannot build the {kind} test guest: {e}", common::REQUIRE_ALL)
            }
            Err(e) => eprintln!("SKIPPED on {kind}: {e}"),
        }
    }
    out
}

fn policy() -> Policy {
    Policy::builder().memory(256 << 20).timeout(Duration::from_secs(30)).build().unwrap()
}

#[test]
fn hello_passes_args_stdin_env_and_separates_streams() {
    for f in fixtures() {
        let sb = f.sandbox(policy());
        let out =
            sb.run(&f.guest("hello", &["one", "two words"]).stdin(b"piped in".to_vec()).env("GREETING", "hi")).unwrap();
        assert_eq!(out.status, Status::Exited(0), "{}: {out:?}", f.kind);
        let stdout = text(&out.stdout);
        assert!(stdout.contains("Hello from testguest"), "{}: {stdout}", f.kind);
        assert!(stdout.contains("args: one two words"), "{}: {stdout}", f.kind);
        assert!(stdout.contains("stdin: piped in"), "{}: {stdout}", f.kind);
        assert!(stdout.contains("GREETING=hi"), "{}: {stdout}", f.kind);
        assert_eq!(text(&out.stderr), "a line on stderr\n", "{}", f.kind);
        assert!(out.usage.wall > Duration::ZERO);
    }
}

#[test]
fn a_raised_signal_ends_the_run_with_that_signal_on_every_backend() {
    for f in fixtures() {
        let sb = f.sandbox(policy());
        for sig in [9, 15] {
            let out = sb.run(&f.guest("raise", &[&sig.to_string()])).unwrap();
            assert_eq!(out.status, Status::Signaled(sig), "{}: {}", f.kind, text(&out.stdout));
            assert!(!text(&out.stdout).contains("survived"), "{}", f.kind);
        }
    }
}

#[test]
fn exit_codes_are_exact() {
    for f in fixtures() {
        let sb = f.sandbox(policy());
        for code in [0, 1, 3, 42, 255] {
            let out = sb.run(&f.guest("exit", &[&code.to_string()])).unwrap();
            assert_eq!(out.status, Status::Exited(code), "{}", f.kind);
        }
    }
}

#[test]
fn environment_is_only_what_policy_and_program_give() {
    for f in fixtures() {
        let p =
            Policy { env: [("FROM_POLICY".into(), "p".into()), ("BOTH".into(), "policy".into())].into(), ..policy() };
        let sb = f.sandbox(p);
        let out = sb.run(&f.guest("env", &[]).env("BOTH", "program")).unwrap();
        let env = text(&out.stdout);
        assert!(env.contains("FROM_POLICY=p\n"), "{}: {env}", f.kind);
        assert!(env.contains("BOTH=program\n"), "{}: {env}", f.kind);
        assert!(!env.contains("BOTH=policy"), "{}: {env}", f.kind);
        for host_var in ["HOME=", "PATH=/root", "CARGO", "USER="] {
            assert!(
                !env.lines().any(|l| l.starts_with(host_var)),
                "{}: host variable {host_var} leaked: {env}",
                f.kind
            );
        }
    }
}

#[test]
fn wall_clock_timeout_stops_a_spinning_guest() {
    for f in fixtures() {
        let sb = f.sandbox(Policy { timeout: Some(Duration::from_millis(300)), ..policy() });
        let started = Instant::now();
        let out = sb.run(&f.guest("spin", &[])).unwrap();
        assert_eq!(out.status, Status::Timeout, "{}", f.kind);
        assert!(started.elapsed() < Duration::from_secs(5), "{}: took {:?}", f.kind, started.elapsed());
        assert!(out.usage.wall >= Duration::from_millis(300), "{}", f.kind);
    }
}

#[test]
fn wall_clock_timeout_stops_a_sleeping_guest() {
    for f in fixtures() {
        let sb = f.sandbox(Policy { timeout: Some(Duration::from_millis(300)), ..policy() });
        let started = Instant::now();
        let out = sb.run(&f.guest("sleep", &["60000"])).unwrap();
        assert_eq!(out.status, Status::Timeout, "{}", f.kind);
        assert!(started.elapsed() < Duration::from_secs(5), "{}: took {:?}", f.kind, started.elapsed());
    }
}

#[test]
fn cpu_time_limit_stops_a_spinning_guest() {
    for f in fixtures() {
        let sb = f.sandbox(Policy { cpu_time: Some(Duration::from_millis(300)), ..policy() });
        let started = Instant::now();
        let out = sb.run(&f.guest("spin", &[])).unwrap();
        assert_eq!(out.status, Status::CpuLimit(CpuBudget::CpuTime), "{}", f.kind);
        assert!(started.elapsed() < Duration::from_secs(10), "{}: took {:?}", f.kind, started.elapsed());
        assert!(out.usage.cpu >= Duration::from_millis(250), "{}: cpu {:?}", f.kind, out.usage.cpu);
    }
}

#[test]
fn sandbox_interrupt_handle_stops_runs_in_progress_from_another_thread() {
    for f in fixtures() {
        let sb: Arc<dyn Sandbox> = Arc::from(f.sandbox(policy()));
        let handle = sb.interrupt_handle();
        let runner = {
            let sb = sb.clone();
            let program = f.guest("spin", &[]);
            std::thread::spawn(move || sb.run(&program))
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while handle.active_runs() == 0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        std::thread::sleep(Duration::from_millis(50));
        handle.interrupt();
        let out = runner.join().unwrap().unwrap();
        assert_eq!(out.status, Status::Interrupted, "{}", f.kind);
        // The sandbox's handle does not affect later runs.
        let out = sb.run(&f.guest("exit", &["0"])).unwrap();
        assert_eq!(out.status, Status::Exited(0), "{}", f.kind);
    }
}

#[test]
fn a_run_handle_interrupted_before_the_run_stops_it_at_once() {
    for f in fixtures() {
        let sb = f.sandbox(policy());
        let handle = InterruptHandle::new();
        handle.interrupt();
        let started = Instant::now();
        let out = sb.run_with(&f.guest("spin", &[]), RunOptions::new().interrupt(handle)).unwrap();
        assert_eq!(out.status, Status::Interrupted, "{}", f.kind);
        assert!(started.elapsed() < Duration::from_secs(5), "{}", f.kind);
    }
}

#[test]
fn output_flood_is_capped_without_host_memory_growth() {
    for f in fixtures() {
        let cap = 1 << 20;
        let sb = f.sandbox(Policy { max_output: cap, timeout: Some(Duration::from_secs(30)), ..policy() });
        let out = sb.run(&f.guest("flood", &["1073741824", "both"])).unwrap();
        assert_eq!(out.status, Status::OutputLimit, "{}", f.kind);
        assert_eq!(out.stdout.len() as u64, cap, "{}", f.kind);
        assert!(out.stderr.len() as u64 <= cap, "{}", f.kind);
        assert!(out.stdout.iter().all(|&b| b == b'x'), "{}", f.kind);
    }
}

#[test]
fn output_within_the_cap_is_complete() {
    for f in fixtures() {
        let sb = f.sandbox(Policy { max_output: 1 << 20, ..policy() });
        let out = sb.run(&f.guest("flood", &["655360"])).unwrap();
        assert_eq!(out.status, Status::Exited(0), "{}", f.kind);
        assert_eq!(out.stdout.len(), 655360, "{}", f.kind);
    }
}

#[test]
fn streamed_output_matches_captured_output() {
    for f in fixtures() {
        let sb = f.sandbox(policy());
        let seen: Arc<Mutex<(Vec<u8>, Vec<u8>)>> = Arc::default();
        let s = seen.clone();
        let options = RunOptions::new().on_output(move |stream, bytes| {
            let mut s = s.lock().unwrap();
            match stream {
                Stream::Stdout => s.0.extend_from_slice(bytes),
                Stream::Stderr => s.1.extend_from_slice(bytes),
            }
        });
        let out = sb.run_with(&f.guest("hello", &["streamed"]), options).unwrap();
        let seen = seen.lock().unwrap();
        assert_eq!(seen.0, out.stdout, "{}", f.kind);
        assert_eq!(seen.1, out.stderr, "{}", f.kind);
        assert!(!out.stdout.is_empty());
    }
}

#[test]
fn memory_bomb_ends_with_memory_limit() {
    for f in fixtures() {
        let sb = f.sandbox(Policy { memory: Some(64 << 20), ..policy() });
        let out = sb.run(&f.guest("alloc", &["1024"])).unwrap();
        assert_eq!(out.status, Status::MemoryLimit, "{}: {out:?}", f.kind);
        // Within the cap it works.
        let out = sb.run(&f.guest("alloc", &["16"])).unwrap();
        assert_eq!(out.status, Status::Exited(0), "{}: {}", f.kind, text(&out.stderr));
    }
}

#[test]
fn non_utf8_output_keeps_every_byte() {
    for f in fixtures() {
        let out = f.sandbox(policy()).run(&f.guest("bytes", &[])).unwrap();
        assert_eq!(out.stdout, b"ok \xff\xfe\x00 end", "{}", f.kind);
    }
}

fn mount_fixture() -> (TempDir, TempDir) {
    let ro = TempDir::new("ro");
    std::fs::write(ro.join("data.txt"), "read-only data").unwrap();
    std::fs::create_dir(ro.join("sub")).unwrap();
    let rw = TempDir::new("rw");
    std::fs::write(rw.join("existing.txt"), "old").unwrap();
    (ro, rw)
}

#[test]
fn read_only_mount_is_readable_and_refuses_every_write() {
    for f in fixtures() {
        let (ro, _rw) = mount_fixture();
        let sb = f.sandbox(Policy { mounts: vec![Mount::read_only(ro.path(), "/data")], ..policy() });
        let out = sb.run(&f.guest("read", &["/data/data.txt"])).unwrap();
        assert_eq!(text(&out.stdout), "ok read-only data\n", "{}", f.kind);
        let out = sb.run(&f.guest("ls", &["/data"])).unwrap();
        assert_eq!(text(&out.stdout), "ok data.txt,sub\n", "{}", f.kind);
        for (mode, path) in [
            ("write", "/data/data.txt"),
            ("write", "/data/new.txt"),
            ("create", "/data/created.txt"),
            ("remove", "/data/data.txt"),
            ("mkdir", "/data/newdir"),
        ] {
            let out = sb.run(&f.guest(mode, &[path])).unwrap();
            assert!(text(&out.stdout).starts_with("err"), "{}: {mode} {path} succeeded: {}", f.kind, text(&out.stdout));
        }
        assert_eq!(std::fs::read_to_string(ro.join("data.txt")).unwrap(), "read-only data", "{}", f.kind);
        assert!(
            !ro.join("new.txt").exists() && !ro.join("created.txt").exists() && !ro.join("newdir").exists(),
            "{}",
            f.kind
        );
    }
}

#[test]
fn read_write_mount_writes_reach_the_host() {
    for f in fixtures() {
        let (_ro, rw) = mount_fixture();
        let sb = f.sandbox(Policy { mounts: vec![Mount::read_write(rw.path(), "/work")], ..policy() });
        let out = sb.run(&f.guest("write", &["/work/out.txt", "written by the guest"])).unwrap();
        assert_eq!(text(&out.stdout), "ok\n", "{}: {}", f.kind, text(&out.stderr));
        assert_eq!(std::fs::read_to_string(rw.join("out.txt")).unwrap(), "written by the guest", "{}", f.kind);
        let out = sb.run(&f.guest("remove", &["/work/existing.txt"])).unwrap();
        assert_eq!(text(&out.stdout), "ok\n", "{}", f.kind);
        assert!(!rw.join("existing.txt").exists(), "{}", f.kind);
    }
}

#[test]
fn nothing_outside_the_mounts_is_reachable() {
    for f in fixtures() {
        let (ro, _rw) = mount_fixture();
        let secret = TempDir::new("secret");
        std::fs::write(secret.join("secret.txt"), "host secret").unwrap();
        std::os::unix::fs::symlink(secret.join("secret.txt"), ro.join("abs-link")).unwrap();
        std::os::unix::fs::symlink(
            "../../../../../../../../../..".to_owned() + &secret.join("secret.txt").display().to_string(),
            ro.join("rel-link"),
        )
        .unwrap();
        std::os::unix::fs::symlink(secret.path(), ro.join("dir-link")).unwrap();
        let sb = f.sandbox(Policy { mounts: vec![Mount::read_only(ro.path(), "/data")], ..policy() });
        let secret_path = secret.join("secret.txt").display().to_string();
        let dotdot = format!("/data/../../../../../../..{secret_path}");
        for path in [
            secret_path.as_str(),
            dotdot.as_str(),
            "/data/abs-link",
            "/data/rel-link",
            "/data/dir-link/secret.txt",
            "/etc/shadow",
        ] {
            let out = sb.run(&f.guest("read", &[path])).unwrap();
            let stdout = text(&out.stdout);
            assert!(!stdout.contains("host secret"), "{}: read {path} escaped the mount: {stdout}", f.kind);
            assert!(stdout.starts_with("err"), "{}: read {path}: {stdout}", f.kind);
        }
        // The host's /etc/passwd is not visible (the process backend shows a synthetic one).
        let host_passwd = std::fs::read_to_string("/etc/passwd").unwrap_or_default();
        let out = sb.run(&f.guest("read", &["/etc/passwd"])).unwrap();
        let stdout = text(&out.stdout);
        assert!(
            host_passwd.lines().count() <= 2 || !stdout.contains(host_passwd.trim()),
            "{}: host /etc/passwd: {stdout}",
            f.kind
        );
    }
}

#[test]
fn one_sandbox_runs_many_programs_from_many_threads() {
    for f in fixtures() {
        let sb: Arc<dyn Sandbox> = Arc::from(f.sandbox(policy()));
        let threads: Vec<_> = (0..6)
            .map(|t| {
                let sb = sb.clone();
                let programs: Vec<Program> = (0..5)
                    .map(|i| f.guest("hello", &[&format!("t{t}-i{i}")]).stdin(format!("in-{t}-{i}").into_bytes()))
                    .collect();
                std::thread::spawn(move || {
                    for (i, p) in programs.iter().enumerate() {
                        let out = sb.run(p).unwrap();
                        assert_eq!(out.status, Status::Exited(0));
                        let s = text(&out.stdout);
                        assert!(s.contains(&format!("args: t{t}-i{i}")), "{s}");
                        assert!(s.contains(&format!("stdin: in-{t}-{i}")), "{s}");
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
    }
}

#[test]
fn unreadable_program_is_a_host_error_not_an_outcome() {
    for f in fixtures() {
        let sb = f.sandbox(policy());
        let missing = match f.kind {
            BackendKind::Process => Program::path("/no/such/program"),
            _ => Program::path("/no/such/program.wasm"),
        };
        let err = sb.run(&missing).unwrap_err();
        assert!(err.to_string().contains("/no/such/program"), "{}: {err}", f.kind);
    }
}

#[test]
fn working_directory_is_set_or_refused() {
    for f in fixtures() {
        let (_ro, rw) = mount_fixture();
        let sb = f.sandbox(Policy { mounts: vec![Mount::read_write(rw.path(), "/work")], ..policy() });
        let result = sb.run(&f.guest("cwd", &[]).cwd("/work"));
        if f.kind == BackendKind::Process {
            assert_eq!(text(&result.unwrap().stdout), "/work\n", "{}", f.kind);
        } else {
            // WASI preview 1 has no working directory: refused loudly rather than ignored.
            let err = result.unwrap_err();
            assert_eq!(err.kind(), sandcell::ErrorKind::InvalidProgram, "{}: {err}", f.kind);
            assert!(err.to_string().contains("working directory"), "{err}");
        }
    }
}

/// What a case of the cross-backend table expects.
#[derive(Debug)]
enum Expect {
    /// Exits with this code, with this on stdout (`None`: not checked) and `stderr` containing
    /// this (`None`: not checked).
    Exit(i32, Option<&'static str>, Option<&'static str>),
    /// Ends with this status, whatever it printed.
    Ends(Status),
}

/// A check of the host afterwards.
type AfterCheck = fn(&Dirs) -> Result<(), String>;

/// One case: the same policy and program on every backend.
struct Case {
    name: &'static str,
    policy: fn(&Dirs) -> Policy,
    mode: &'static str,
    args: &'static [&'static str],
    env: &'static [(&'static str, &'static str)],
    stdin: &'static [u8],
    expect: Expect,
    /// Backends that refuse the case when the sandbox is built, with the field, as documented.
    refused: &'static [(BackendKind, sandcell::PolicyField)],
    /// A check of the host afterwards (files a run wrote).
    after: Option<AfterCheck>,
}

/// Host directories a case may mount: `ro` holds `data.txt`, `rw` holds `existing.txt`, `root`
/// is a directory for a mount at `/`, holding `file.txt`.
struct Dirs {
    ro: TempDir,
    rw: TempDir,
    root: TempDir,
}

impl Dirs {
    fn new() -> Dirs {
        let (ro, rw) = mount_fixture();
        let root = TempDir::new("root");
        std::fs::write(root.join("file.txt"), "in the root").unwrap();
        Dirs { ro, rw, root }
    }
}

const CASES: &[Case] = &[
    Case {
        name: "exit code",
        policy: |_| policy(),
        mode: "exit",
        args: &["42"],
        env: &[],
        stdin: b"",
        expect: Expect::Exit(42, Some(""), Some("")),
        refused: &[],
        after: None,
    },
    Case {
        name: "arguments, stdin, environment, two streams",
        policy: |_| Policy { env: [("GREETING".into(), "from the policy".into())].into(), ..policy() },
        mode: "hello",
        args: &["one", "two words"],
        env: &[],
        stdin: b"piped",
        expect: Expect::Exit(
            0,
            Some("Hello from testguest\nargs: one two words\nstdin: piped\nGREETING=from the policy\n"),
            Some("a line on stderr\n"),
        ),
        refused: &[],
        after: None,
    },
    Case {
        name: "the program's environment wins over the policy's",
        policy: |_| Policy { env: [("GREETING".into(), "policy".into())].into(), ..policy() },
        mode: "hello",
        args: &[],
        env: &[("GREETING", "program")],
        stdin: b"",
        expect: Expect::Exit(0, Some("Hello from testguest\nargs: \nstdin: \nGREETING=program\n"), None),
        refused: &[],
        after: None,
    },
    Case {
        name: "output cap",
        policy: |_| Policy { max_output: 64 << 10, ..policy() },
        mode: "flood",
        args: &["1048576"],
        env: &[],
        stdin: b"",
        expect: Expect::Ends(Status::OutputLimit),
        refused: &[],
        after: None,
    },
    Case {
        name: "memory within the cap",
        policy: |_| Policy { memory: Some(128 << 20), ..policy() },
        mode: "alloc",
        args: &["16"],
        env: &[],
        stdin: b"",
        expect: Expect::Exit(0, Some("allocated 16 MiB\n"), None),
        refused: &[],
        after: None,
    },
    Case {
        name: "memory over the cap",
        policy: |_| Policy { memory: Some(64 << 20), ..policy() },
        mode: "alloc",
        args: &["256"],
        env: &[],
        stdin: b"",
        expect: Expect::Ends(Status::MemoryLimit),
        refused: &[],
        after: None,
    },
    Case {
        name: "timeout of a busy guest",
        policy: |_| Policy { timeout: Some(Duration::from_millis(300)), ..policy() },
        mode: "spin",
        args: &[],
        env: &[],
        stdin: b"",
        expect: Expect::Ends(Status::Timeout),
        refused: &[],
        after: None,
    },
    Case {
        name: "timeout of a sleeping guest",
        policy: |_| Policy { timeout: Some(Duration::from_millis(300)), ..policy() },
        mode: "sleep",
        args: &["10000"],
        env: &[],
        stdin: b"",
        expect: Expect::Ends(Status::Timeout),
        refused: &[],
        after: None,
    },
    Case {
        name: "a raised signal",
        policy: |_| policy(),
        mode: "raise",
        args: &["15"],
        env: &[],
        stdin: b"",
        expect: Expect::Ends(Status::Signaled(15)),
        refused: &[],
        after: None,
    },
    Case {
        name: "a read-only mount reads",
        policy: |d| Policy { mounts: vec![Mount::read_only(d.ro.path(), "/data")], ..policy() },
        mode: "read",
        args: &["/data/data.txt"],
        env: &[],
        stdin: b"",
        expect: Expect::Exit(0, Some("ok read-only data\n"), None),
        refused: &[],
        after: None,
    },
    Case {
        name: "a read-only mount refuses a write",
        policy: |d| Policy { mounts: vec![Mount::read_only(d.ro.path(), "/data")], ..policy() },
        mode: "write",
        args: &["/data/data.txt", "changed"],
        env: &[],
        stdin: b"",
        expect: Expect::Exit(0, None, None),
        refused: &[],
        after: Some(|d| {
            let now = std::fs::read_to_string(d.ro.join("data.txt")).unwrap();
            (now == "read-only data").then_some(()).ok_or(format!("the read-only file became {now:?}"))
        }),
    },
    Case {
        name: "a read-write mount writes to the host",
        policy: |d| Policy { mounts: vec![Mount::read_write(d.rw.path(), "/out")], ..policy() },
        mode: "write",
        args: &["/out/new.txt", "written"],
        env: &[],
        stdin: b"",
        expect: Expect::Exit(0, Some("ok\n"), None),
        refused: &[],
        after: Some(|d| {
            let now = std::fs::read_to_string(d.rw.join("new.txt")).map_err(|e| e.to_string())?;
            (now == "written").then_some(()).ok_or(format!("the host file holds {now:?}"))
        }),
    },
    Case {
        name: "a mount at / is the root, readable",
        policy: |d| Policy { mounts: vec![Mount::read_write(d.root.path(), "/")], ..policy() },
        mode: "read",
        args: &["/file.txt"],
        env: &[],
        stdin: b"",
        expect: Expect::Exit(0, Some("ok in the root\n"), None),
        refused: &[],
        after: None,
    },
    Case {
        name: "a mount at / is the root, writable",
        policy: |d| Policy { mounts: vec![Mount::read_write(d.root.path(), "/")], ..policy() },
        mode: "write",
        args: &["/made-in-root.txt", "root write"],
        env: &[],
        stdin: b"",
        expect: Expect::Exit(0, Some("ok\n"), None),
        refused: &[],
        after: Some(|d| {
            let now = std::fs::read_to_string(d.root.join("made-in-root.txt")).map_err(|e| e.to_string())?;
            (now == "root write").then_some(()).ok_or(format!("the host file holds {now:?}"))
        }),
    },
    Case {
        name: "a private loopback",
        policy: |_| Policy { network: sandcell::Network::Loopback, ..policy() },
        mode: "exit",
        args: &["0"],
        env: &[],
        stdin: b"",
        expect: Expect::Exit(0, None, None),
        refused: &[
            (BackendKind::Wasm, sandcell::PolicyField::Network),
            (BackendKind::MicroVm, sandcell::PolicyField::Network),
        ],
        after: None,
    },
    Case {
        name: "fuel",
        policy: |_| Policy { fuel: Some(1_000_000), ..policy() },
        mode: "spin",
        args: &[],
        env: &[],
        stdin: b"",
        expect: Expect::Ends(Status::CpuLimit(CpuBudget::Fuel)),
        refused: &[(BackendKind::Process, sandcell::PolicyField::Fuel)],
        after: None,
    },
];

/// The cross-backend table: each case, on every backend here, ends the same way — or is
/// refused by a backend, as documented, naming the field.
#[test]
fn the_same_policy_and_program_behave_the_same_on_every_backend() {
    let fixtures = fixtures();
    let mut failures = Vec::new();
    let mut ran = 0;
    for case in CASES {
        for f in &fixtures {
            let dirs = Dirs::new();
            let refusal = case.refused.iter().find(|(k, _)| *k == f.kind).map(|(_, field)| *field);
            let built = f.try_sandbox((case.policy)(&dirs));
            let sb = match (built, refusal) {
                (Ok(sb), None) => sb,
                (Err(sandcell::Error::Unenforceable { field, .. }), Some(expected)) if field == expected => continue,
                (Ok(_), Some(field)) => {
                    failures.push(format!("{} on {}: expected a refusal of `{field}`", case.name, f.kind));
                    continue;
                }
                (Err(e), _) => {
                    failures.push(format!("{} on {}: cannot build: {e}", case.name, f.kind));
                    continue;
                }
            };
            let mut program = f.guest(case.mode, case.args).stdin(case.stdin.to_vec());
            for (k, v) in case.env {
                program = program.env(*k, *v);
            }
            ran += 1;
            let out = match sb.run(&program) {
                Ok(out) => out,
                Err(e) => {
                    failures.push(format!("{} on {}: host error {e}", case.name, f.kind));
                    continue;
                }
            };
            let wrong = match &case.expect {
                Expect::Exit(code, stdout, stderr) => {
                    if out.status != Status::Exited(*code) {
                        Some(format!("status {:?}, stderr {}", out.status, text(&out.stderr)))
                    } else if stdout.is_some_and(|o| text(&out.stdout) != o) {
                        Some(format!("stdout {:?}", text(&out.stdout)))
                    } else if stderr.is_some_and(|e| !text(&out.stderr).contains(e)) {
                        Some(format!("stderr {:?}", text(&out.stderr)))
                    } else {
                        None
                    }
                }
                Expect::Ends(status) => (out.status != *status).then(|| format!("status {:?}", out.status)),
            };
            if let Some(wrong) = wrong.or_else(|| case.after.and_then(|check| check(&dirs).err())) {
                failures.push(format!("{} on {}: {wrong} (expected {:?})", case.name, f.kind, case.expect));
            }
        }
    }
    assert!(ran > 0, "no backend to run the cases on");
    assert!(failures.is_empty(), "{} of {ran} runs differ:\n{}", failures.len(), failures.join("\n"));
}

/// `RunOptions` give one run tighter limits and its own stdin, on every backend, and never widen
/// the sandbox's policy.
#[test]
fn run_options_narrow_one_run_and_never_widen_the_policy() {
    for f in fixtures() {
        let sb = f.sandbox(Policy { timeout: Some(Duration::from_secs(30)), max_output: 1 << 20, ..policy() });
        // A shorter timeout for this run.
        let started = Instant::now();
        let out = sb.run_with(&f.guest("spin", &[]), RunOptions::new().timeout(Duration::from_millis(300))).unwrap();
        assert_eq!(out.status, Status::Timeout, "{}", f.kind);
        assert!(started.elapsed() < Duration::from_secs(10), "{}: took {:?}", f.kind, started.elapsed());
        // A smaller output cap for this run.
        let out = sb.run_with(&f.guest("flood", &["655360"]), RunOptions::new().max_output(1000)).unwrap();
        assert_eq!(out.status, Status::OutputLimit, "{}", f.kind);
        assert_eq!(out.stdout.len(), 1000, "{}", f.kind);
        // A larger one does not widen the policy's.
        let out = sb.run_with(&f.guest("flood", &["2000000"]), RunOptions::new().max_output(1 << 30)).unwrap();
        assert_eq!(out.status, Status::OutputLimit, "{}", f.kind);
        assert_eq!(out.stdout.len(), 1 << 20, "{}", f.kind);
        // Nor does a longer timeout.
        let tight = f.sandbox(Policy { timeout: Some(Duration::from_millis(300)), ..policy() });
        let out = tight.run_with(&f.guest("spin", &[]), RunOptions::new().timeout(Duration::from_secs(60))).unwrap();
        assert_eq!(out.status, Status::Timeout, "{}", f.kind);
        assert!(out.usage.wall < Duration::from_secs(10), "{}", f.kind);
        // The run's own stdin replaces the program's.
        let program = f.guest("cat", &[]).stdin(b"the program's".to_vec());
        let out = sb.run_with(&program, RunOptions::new().stdin(b"the run's".to_vec())).unwrap();
        assert_eq!(text(&out.stdout), "the run's", "{}", f.kind);
        // A CPU-time limit for one run: enforced where the run's CPU time can be measured, else
        // refused, never ignored.
        match sb.run_with(&f.guest("spin", &[]), RunOptions::new().cpu_time(Duration::from_millis(300))) {
            Ok(out) => assert_eq!(out.status, Status::CpuLimit(CpuBudget::CpuTime), "{}", f.kind),
            Err(e) => {
                assert_eq!(f.kind, BackendKind::Process, "{e}");
                assert_eq!(e.kind(), sandcell::ErrorKind::Unenforceable, "{e}");
            }
        }
    }
}

/// Streamed stdin ([`RunOptions::stdin_reader`]): the guest reads input as it arrives. The
/// second line is written only after the guest has echoed the first, so a backend that read the
/// whole stream before starting the guest would never see it (the run would hang until its
/// timeout and the assertion on the output would fail).
#[test]
fn streamed_stdin_reaches_the_guest_as_it_arrives_on_every_backend() {
    for f in fixtures() {
        let sb = f.sandbox(policy());
        let (reader, mut writer) = crate::common::pipe();
        let (echoed, seen) = std::sync::mpsc::channel::<()>();
        let feeder = std::thread::spawn(move || {
            use std::io::Write;
            writer.write_all(b"first line\n").unwrap();
            let answered = seen.recv_timeout(Duration::from_secs(20)).is_ok();
            // A large tail too: more than any pipe holds, so the copying must keep up.
            let tail: Vec<u8> = (0..300_000u32).map(|i| b'a' + (i % 26) as u8).collect();
            let _ = writer.write_all(b"second line\n");
            let _ = writer.write_all(&tail);
            answered
        });
        let mut first = Some(echoed);
        let options =
            RunOptions::new().stdin_reader(reader).timeout(Duration::from_secs(25)).on_output(move |_, bytes| {
                if bytes.windows(5).any(|w| w == b"first") {
                    if let Some(tx) = first.take() {
                        let _ = tx.send(());
                    }
                }
            });
        let out = sb.run_with(&f.guest("echo", &[]), options).unwrap();
        assert!(feeder.join().unwrap(), "{}: the guest did not echo the first line before the input ended", f.kind);
        assert_eq!(out.status, Status::Exited(0), "{}: {}", f.kind, text(&out.stderr));
        assert_eq!(out.stdout.len(), 11 + 12 + 300_000, "{}", f.kind);
        assert!(out.stdout.starts_with(b"first line\nsecond line\nabc"), "{}", f.kind);
    }
}

/// A guest blocked reading a stream that never ends (an idle pipe) still ends at its timeout, and
/// at an interrupt; the host thread copying the stream ends when the writer goes.
#[test]
fn a_guest_waiting_for_streamed_stdin_ends_at_its_timeout_and_interrupt_on_every_backend() {
    for f in fixtures() {
        let sb = f.sandbox(policy());
        let (reader, writer) = crate::common::pipe();
        let started = Instant::now();
        let out = sb
            .run_with(&f.guest("cat", &[]), RunOptions::new().stdin_reader(reader).timeout(Duration::from_millis(300)))
            .unwrap();
        assert_eq!(out.status, Status::Timeout, "{}", f.kind);
        assert!(started.elapsed() < Duration::from_secs(5), "{}: {:?}", f.kind, started.elapsed());

        let (reader2, writer2) = crate::common::pipe();
        let handle = InterruptHandle::new();
        let h = handle.clone();
        let t = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(200));
            h.interrupt();
        });
        let out = sb.run_with(&f.guest("cat", &[]), RunOptions::new().stdin_reader(reader2).interrupt(handle)).unwrap();
        t.join().unwrap();
        assert_eq!(out.status, Status::Interrupted, "{}", f.kind);
        drop((writer, writer2));
    }
}

/// A stream feeds one run: options are per run, and the reader is consumed by it.
#[test]
fn streamed_stdin_that_ends_at_once_reads_as_empty_input_on_every_backend() {
    for f in fixtures() {
        let sb = f.sandbox(policy());
        let out = sb.run_with(&f.guest("cat", &[]), RunOptions::new().stdin_reader(std::io::empty())).unwrap();
        assert_eq!((out.status.clone(), out.stdout.len()), (Status::Exited(0), 0), "{}", f.kind);
        let out =
            sb.run_with(&f.guest("cat", &[]), RunOptions::new().stdin_reader(&b"bytes from a slice"[..])).unwrap();
        assert_eq!(text(&out.stdout), "bytes from a slice", "{}", f.kind);
    }
}

/// `tracing` spans: one for building a sandbox and one for each run, with the run's phases inside
/// (`lower` at build; `guest` for the time the guest runs), on every backend.
#[test]
fn tracing_spans_cover_the_build_the_run_and_its_phases_on_every_backend() {
    use tracing_subscriber::layer::SubscriberExt;

    #[derive(Clone, Default)]
    struct Names(Arc<Mutex<Vec<String>>>);
    impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for Names {
        fn on_new_span(
            &self,
            attrs: &tracing::span::Attributes<'_>,
            _: &tracing::span::Id,
            _: tracing_subscriber::layer::Context<'_, S>,
        ) {
            self.0.lock().unwrap().push(attrs.metadata().name().to_owned());
        }
    }
    for f in fixtures() {
        // tracing caches, per call site, whether any subscriber wants it; a call site first
        // reached on another test's thread while this subscriber was being installed can keep
        // a stale "no" (a race in tracing's cache, not in sandcell). So the cache is rebuilt
        // once this subscriber is in place, and a run that still misses a span is tried again.
        let mut seen = Vec::new();
        for _attempt in 0..3 {
            let names = Names::default();
            let subscriber = tracing_subscriber::registry().with(names.clone());
            tracing::subscriber::with_default(subscriber, || {
                tracing::callsite::rebuild_interest_cache();
                let sb = f.sandbox(policy());
                let out = sb.run(&f.guest("exit", &["0"])).unwrap();
                assert_eq!(out.status, Status::Exited(0), "{}", f.kind);
            });
            seen = names.0.lock().unwrap().clone();
            if ["sandcell.build", "lower", "sandcell.run", "guest"].iter().all(|w| seen.iter().any(|n| n == w)) {
                break;
            }
        }
        for wanted in ["sandcell.build", "lower", "sandcell.run", "guest"] {
            assert!(seen.iter().any(|n| n == wanted), "{}: no `{wanted}` span among {seen:?}", f.kind);
        }
    }
}

/// A run stopped before its guest starts (its interrupt fired already) never reads from its
/// stdin stream: the stream starts with the guest.
#[test]
fn a_run_that_never_starts_leaves_its_stdin_stream_unread_on_every_backend() {
    struct Watched(Arc<std::sync::atomic::AtomicBool>);
    impl std::io::Read for Watched {
        fn read(&mut self, _: &mut [u8]) -> std::io::Result<usize> {
            self.0.store(true, std::sync::atomic::Ordering::SeqCst);
            Ok(0)
        }
    }
    for f in fixtures() {
        let sb = f.sandbox(policy());
        let touched = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let handle = InterruptHandle::new();
        handle.interrupt();
        let options = RunOptions::new().interrupt(handle).stdin_reader(Watched(touched.clone()));
        let out = sb.run_with(&f.guest("cat", &[]), options).unwrap();
        assert_eq!(out.status, Status::Interrupted, "{}", f.kind);
        std::thread::sleep(Duration::from_millis(50));
        assert!(!touched.load(std::sync::atomic::Ordering::SeqCst), "{}: the stream was read", f.kind);
    }
}

/// `Sandbox::prepare`: a prepared program runs many times with each run's own stdin and
/// options, behaves as a plain run does, and keeps what it was prepared from.
#[test]
fn a_prepared_program_runs_many_times_like_a_plain_run_on_every_backend() {
    for f in fixtures() {
        let sb = f.sandbox(policy());
        let prepared = sb.prepare(&f.guest("hello", &["one"]).env("GREETING", "hi")).unwrap();
        assert_eq!(prepared.sandbox().backend(), f.kind);
        for i in 0..3 {
            let out = prepared.run_with(RunOptions::new().stdin(format!("in-{i}").into_bytes())).unwrap();
            assert_eq!(out.status, Status::Exited(0), "{}", f.kind);
            let stdout = text(&out.stdout);
            assert!(stdout.contains("args: one"), "{}: {stdout}", f.kind);
            assert!(stdout.contains(&format!("stdin: in-{i}")), "{}: {stdout}", f.kind);
            assert!(stdout.contains("GREETING=hi"), "{}: {stdout}", f.kind);
        }
        // Each run's limits and streams are its own.
        let spin = sb.prepare(&f.guest("spin", &[])).unwrap();
        let out = spin.run_with(RunOptions::new().timeout(Duration::from_millis(200))).unwrap();
        assert_eq!(out.status, Status::Timeout, "{}", f.kind);
        let cat = sb.prepare(&f.guest("cat", &[])).unwrap();
        let out = cat.run_with(RunOptions::new().stdin_reader(&b"streamed"[..])).unwrap();
        assert_eq!(text(&out.stdout), "streamed", "{}", f.kind);
        // The same record of enforcement as a plain run, and where the artifact came from.
        let plain = sb.run(&f.guest("exit", &["0"])).unwrap();
        let out = sb.prepare(&f.guest("exit", &["0"])).unwrap().run().unwrap();
        assert_eq!((&out.enforced, &out.skipped), (&plain.enforced, &plain.skipped), "{}", f.kind);
        if f.kind != BackendKind::Process {
            assert_eq!(out.usage.artifact, Some(sandcell::ArtifactSource::Prepared), "{}", f.kind);
        }
        // A per-run output cap still applies.
        let hello = sb.prepare(&f.guest("hello", &[])).unwrap();
        let capped = hello.run_with(RunOptions::new().max_output(4)).unwrap();
        assert_eq!(capped.status, Status::OutputLimit, "{}", f.kind);
        // What a run would refuse, prepare refuses.
        let refused = match f.kind {
            BackendKind::Process => sb.prepare(&Program::bytes(b"\x7fELF".to_vec())),
            _ => sb.prepare(&Program::path("/nonexistent/program.wasm")),
        };
        assert!(refused.is_err(), "{}", f.kind);
    }
}

/// A prepared module is the one that was prepared: replacing the file afterwards does not
/// change what its runs execute (WASI backends; the process backend executes the path).
#[test]
fn a_prepared_module_keeps_what_it_was_prepared_from() {
    for f in fixtures().into_iter().filter(|f| f.kind != BackendKind::Process) {
        let dir = common::TempDir::new("prepared");
        let path = dir.join("exit.wat");
        let module = |code: i32| {
            format!(
                r#"(module (import "wasi_snapshot_preview1" "proc_exit" (func $e (param i32)))
                   (memory (export "memory") 1) (func (export "_start") (call $e (i32.const {code}))))"#
            )
        };
        std::fs::write(&path, module(3)).unwrap();
        let sb = f.sandbox(policy());
        let prepared = sb.prepare(&Program::path(&path)).unwrap();
        std::fs::write(&path, module(4)).unwrap();
        assert_eq!(prepared.run().unwrap().status, Status::Exited(3), "{}", f.kind);
        assert_eq!(sb.run(&Program::path(&path)).unwrap().status, Status::Exited(4), "{}", f.kind);
    }
}

/// A descriptor as stdin ([`RunOptions::stdin_fd`]): a non-blocking socket streams (it is not
/// taken for end-of-file when it has nothing yet), and when the run ends the library lets go of
/// it at once although the source is still open and idle.
#[test]
fn a_non_blocking_descriptor_streams_and_is_released_when_the_run_ends_on_every_backend() {
    use std::io::{Read, Write};
    for f in fixtures() {
        let sb = f.sandbox(policy());
        let (source, mut peer) = std::os::unix::net::UnixStream::pair().unwrap();
        source.set_nonblocking(true).unwrap();
        let mut writer = peer.try_clone().unwrap();
        let feeder = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(100));
            writer.write_all(b"late").unwrap();
        });
        let options = RunOptions::new().stdin_fd(source).timeout(Duration::from_millis(1500));
        let out = sb.run_with(&f.guest("echo", &[]), options).unwrap();
        feeder.join().unwrap();
        assert_eq!(out.status, Status::Timeout, "{}", f.kind);
        assert_eq!(text(&out.stdout), "late", "{}", f.kind);
        // The library's copy of the socket is closed: the peer reads end-of-file.
        peer.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut buf = [0u8; 8];
        assert_eq!(peer.read(&mut buf).unwrap(), 0, "{}: the run's stdin is still held", f.kind);
    }
}

/// A program that says it is ready by writing `/run/sandcell/ready` runs unchanged on every
/// backend: the write succeeds and does nothing outside a preparation until ready.
#[test]
fn writing_run_sandcell_ready_works_on_every_backend() {
    for f in fixtures() {
        let sb = f.sandbox(policy());
        let out = sb.run(&f.guest("ready", &[]).stdin(b"in".to_vec())).unwrap();
        assert_eq!(out.status, Status::Exited(0), "{}: {out:?}", f.kind);
        let stdout = text(&out.stdout);
        assert!(stdout.starts_with("before ready"), "{}: {stdout}", f.kind);
        assert!(stdout.contains("ready Ok(()), input \"in\", table 49950000, run 1"), "{}: {stdout}", f.kind);
    }
}
