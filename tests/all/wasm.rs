//! Wasm backend specifics: memory caps, interruption of loop-free code, traps, fuel, the module
//! cache, and the holes in wasmer-wasix's defaults that sandcell closes.

use std::sync::Arc;
use std::time::{Duration, Instant};

use sandcell::{
    ArtifactSource, BackendKind, CpuBudget, Error, ErrorKind, InterruptHandle, Mount, Network, Policy, Program,
    RunOptions, Sandbox, SandboxBuilder, Status, TrapKind, WasmSandbox,
};

use crate::common::{text, TempDir};
use crate::or_skip;

fn sandbox(policy: Policy) -> Box<dyn Sandbox> {
    SandboxBuilder::new(BackendKind::Wasm).policy(policy).build().unwrap()
}

fn wat(src: &str) -> Program {
    Program::bytes(src.as_bytes().to_vec())
}

/// A module whose `_start` grows memory step by step and writes each `memory.grow` result to
/// stdout as one byte per call ('0'+result, or '-' for -1).
const GROW: &str = r#"(module
  (import "wasi_snapshot_preview1" "fd_write" (func $w (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (func $out (param $r i32)
    (i32.store8 (i32.const 100) (select (i32.const 45) (i32.add (i32.const 48) (local.get $r))
                                        (i32.eq (local.get $r) (i32.const -1))))
    (i32.store (i32.const 0) (i32.const 100)) (i32.store (i32.const 4) (i32.const 1))
    (drop (call $w (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8))))
  (func (export "_start")
    (call $out (memory.grow (i32.const 1)))   ;; 1 -> 2 pages: returns 1
    (call $out (memory.grow (i32.const 1)))   ;; 2 -> 3 pages: returns 2
    (call $out (memory.grow (i32.const 1)))   ;; refused at a 3-page cap: -1
    (call $out (memory.grow (i32.const 100))))) ;; refused: -1
"#;

#[test]
fn memory_grow_returns_minus_one_at_the_cap() {
    let sb = sandbox(Policy { memory: Some(3 * 65536), ..Policy::default() });
    let out = sb.run(&wat(GROW)).unwrap();
    assert_eq!(text(&out.stdout), "12--");
    // The guest handled the refusal itself, so it exited normally.
    assert_eq!(out.status, Status::Exited(0));
    assert_eq!(out.usage.peak_memory_bytes, 3 * 65536);
    // With room, every grow succeeds.
    let out = sandbox(Policy { memory: Some(200 * 65536), ..Policy::default() }).run(&wat(GROW)).unwrap();
    assert_eq!(text(&out.stdout), "1234");
}

#[test]
fn a_module_whose_initial_memory_exceeds_the_cap_fails_cleanly() {
    let sb = sandbox(Policy { memory: Some(1 << 20), ..Policy::default() });
    let out = sb.run(&wat(r#"(module (memory 100) (func (export "_start")))"#)).unwrap();
    assert_eq!(out.status, Status::MemoryLimit);
    let out = sb.run(&wat(r#"(module (memory 16) (func (export "_start")))"#)).unwrap();
    assert_eq!(out.status, Status::Exited(0));
    // A huge table is refused the same way (tables are host memory too).
    let out = sb.run(&wat(r#"(module (table 100000000 funcref) (func (export "_start")))"#)).unwrap();
    assert_eq!(out.status, Status::MemoryLimit);
}

fn stopped_within(sb: &dyn Sandbox, program: &Program, limit: Duration) -> Status {
    let started = Instant::now();
    let out = sb.run(program).unwrap();
    assert!(started.elapsed() < limit, "took {:?}", started.elapsed());
    out.status
}

#[test]
fn timeout_stops_an_empty_infinite_loop() {
    let sb = sandbox(Policy { timeout: Some(Duration::from_millis(200)), ..Policy::default() });
    let p = wat(r#"(module (func (export "_start") (loop $l (br $l))))"#);
    assert_eq!(stopped_within(&*sb, &p, Duration::from_secs(3)), Status::Timeout);
}

#[test]
fn timeout_stops_an_arithmetic_loop_without_calls() {
    let sb = sandbox(Policy { timeout: Some(Duration::from_millis(200)), ..Policy::default() });
    let p = wat(r#"(module (func (export "_start") (local $i i64)
             (loop $l (local.set $i (i64.add (local.get $i) (i64.const 1))) (br $l))))"#);
    assert_eq!(stopped_within(&*sb, &p, Duration::from_secs(3)), Status::Timeout);
}

/// Naive recursive Fibonacci: no loop anywhere, only calls.
const FIB: &str = r#"(module
  (func $fib (export "fib") (param $n i64) (result i64)
    (if (result i64) (i64.lt_u (local.get $n) (i64.const 2))
      (then (local.get $n))
      (else (i64.add (call $fib (i64.sub (local.get $n) (i64.const 1)))
                     (call $fib (i64.sub (local.get $n) (i64.const 2)))))))
  (func (export "_start") (drop (call $fib (i64.const 60)))))"#;

#[test]
fn timeout_stops_loop_free_recursion() {
    let sb = sandbox(Policy { timeout: Some(Duration::from_millis(200)), ..Policy::default() });
    assert_eq!(stopped_within(&*sb, &wat(FIB), Duration::from_secs(3)), Status::Timeout);
}

#[test]
fn interrupt_handle_stops_loop_free_recursion_from_another_thread() {
    let sb: Arc<dyn Sandbox> = Arc::from(sandbox(Policy::default()));
    let handle = InterruptHandle::new();
    let h = handle.clone();
    let stopper = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(150));
        h.interrupt();
    });
    let started = Instant::now();
    let out = sb.run_with(&wat(FIB), RunOptions::new().interrupt(handle)).unwrap();
    stopper.join().unwrap();
    assert_eq!(out.status, Status::Interrupted);
    assert!(started.elapsed() < Duration::from_secs(3));
}

#[test]
fn entry_point_calls_an_export_with_arguments() {
    let sb = sandbox(Policy::default());
    let out = sb.run(&wat(FIB).entry("fib").arg("20")).unwrap();
    assert_eq!(out.status, Status::Exited(0));
    assert_eq!(text(&out.stdout), "6765\n");
    let err = sb.run(&wat(FIB).entry("fib").arg("x")).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidProgram);
    let err = sb.run(&wat(FIB).entry("nope")).unwrap_err();
    assert!(err.to_string().contains("nope"), "{err}");
}

fn trap_of(body: &str) -> (TrapKind, String) {
    let src = format!(
        r#"(module (memory 1) (table 2 funcref) (type $t (func))
             (func $rec (call $rec))
             (func (export "_start") {body}))"#
    );
    match sandbox(Policy::default()).run(&wat(&src)).unwrap().status {
        Status::Trap(t) => (t.kind, t.message),
        other => panic!("{body}: expected a trap, got {other:?}"),
    }
}

#[test]
fn traps_end_as_trap_with_their_kind_and_the_host_survives() {
    let cases = [
        ("unreachable", TrapKind::Unreachable),
        ("(drop (i32.div_s (i32.const 1) (i32.const 0)))", TrapKind::IntegerDivisionByZero),
        ("(drop (i32.div_s (i32.const -2147483648) (i32.const -1)))", TrapKind::IntegerOverflow),
        ("(drop (i32.load (i32.const 0x7ffffff0)))", TrapKind::MemoryOutOfBounds),
        ("(call_indirect (type $t) (i32.const 0))", TrapKind::IndirectCallToNull),
        ("(call_indirect (type $t) (i32.const 7))", TrapKind::TableOutOfBounds),
        ("(drop (i32.trunc_f32_s (f32.const nan)))", TrapKind::BadConversionToInteger),
        ("(call $rec)", TrapKind::StackOverflow),
    ];
    for _ in 0..3 {
        for (body, kind) in cases {
            let (got, message) = trap_of(body);
            assert_eq!(got, kind, "{body}: {message}");
        }
    }
}

#[test]
fn a_rust_guest_panic_is_a_trap_with_its_message_on_stderr() {
    let guest = or_skip!(crate::common::wasm_guest(), "no wasm test guest");
    let out = sandbox(Policy::default()).run(&Program::path(guest).arg("panic")).unwrap();
    assert!(matches!(&out.status, Status::Trap(t) if t.kind == TrapKind::Unreachable), "{:?}", out.status);
    assert!(text(&out.stderr).contains("the guest panicked on purpose"));
}

#[test]
fn fuel_limits_work_and_usage_reports_what_was_used() {
    let sb = sandbox(Policy { fuel: Some(1_000_000), ..Policy::default() });
    let out = sb.run(&wat(FIB)).unwrap();
    assert_eq!(out.status, Status::CpuLimit(CpuBudget::Fuel));
    let used = out.usage.fuel.unwrap();
    assert!(used > 900_000 && used <= 1_000_000, "{used}");

    let out = sb.run(&wat(FIB).entry("fib").arg("10")).unwrap();
    assert_eq!(out.status, Status::Exited(0));
    assert_eq!(text(&out.stdout), "55\n");
    let small = out.usage.fuel.unwrap();
    let out = sb.run(&wat(FIB).entry("fib").arg("15")).unwrap();
    let larger = out.usage.fuel.unwrap();
    assert!(small > 0 && larger > small * 5, "fib(10) used {small}, fib(15) used {larger}");
    // Deterministic: the same work costs the same fuel.
    let again = sb.run(&wat(FIB).entry("fib").arg("15")).unwrap().usage.fuel.unwrap();
    assert_eq!(again, larger);
    // No fuel policy: nothing is metered.
    assert_eq!(sandbox(Policy::default()).run(&wat(FIB).entry("fib").arg("10")).unwrap().usage.fuel, None);
}

#[test]
fn fuel_also_stops_an_empty_loop() {
    let sb = sandbox(Policy { fuel: Some(10_000), ..Policy::default() });
    let out = sb.run(&wat(r#"(module (func (export "_start") (loop $l (br $l))))"#)).unwrap();
    assert_eq!(out.status, Status::CpuLimit(CpuBudget::Fuel));
}

#[test]
fn exit_codes_above_255_are_not_truncated_to_success() {
    let sb = sandbox(Policy::default());
    for code in [256u32, 300, 65536, u32::MAX] {
        let src = format!(
            r#"(module (import "wasi_snapshot_preview1" "proc_exit" (func $exit (param i32)))
                 (memory (export "memory") 1)
                 (func (export "_start") (call $exit (i32.const {}))))"#,
            code as i32
        );
        assert_eq!(sb.run(&wat(&src)).unwrap().status, Status::Exited(code as i32));
    }
}

#[test]
fn modules_importing_anything_but_wasi_preview1_are_refused() {
    let sb = sandbox(Policy::default());
    for (module, name) in [("env", "host_fn"), ("wasix_32v1", "sock_open"), ("wasi", "thread-spawn")] {
        let src = format!(r#"(module (import "{module}" "{name}" (func)) (func (export "_start")))"#);
        let err = sb.run(&wat(&src)).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidProgram, "{err}");
        assert!(err.to_string().contains(name), "{err}");
    }
    let err = sb.run(&wat(r#"(module (import "wasi_snapshot_preview1" "memory" (memory 1)))"#)).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidProgram);
}

#[test]
fn malformed_modules_are_host_errors() {
    let sb = sandbox(Policy::default());
    for bytes in [&b"\0asm\x01\0\0\0\xff\xff"[..], b"(module (func $x (i32.add)))", b"\xff\xfe\xfd", b""] {
        let err = sb.run(&Program::bytes(bytes.to_vec())).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidProgram, "{err}");
    }
    let err = sb.run(&wat(r#"(module (func (export "main")))"#)).unwrap_err();
    assert!(err.to_string().contains("_start"), "{err}");
}

#[test]
fn network_is_refused_loudly_unless_best_effort() {
    let err = SandboxBuilder::new(BackendKind::Wasm)
        .policy(Policy { network: Network::Loopback, ..Policy::default() })
        .build()
        .unwrap_err();
    assert!(matches!(err, Error::Unenforceable { field: sandcell::PolicyField::Network, .. }), "{err}");
    let sb = SandboxBuilder::new(BackendKind::Wasm)
        .policy(Policy { network: Network::Loopback, best_effort: true, ..Policy::default() })
        .build()
        .unwrap();
    let out = sb.run(&Program::path("examples/hello.wat")).unwrap();
    assert!(out.skipped.contains_key(&sandcell::PolicyField::Network), "{:?}", out.skipped);
}

/// Raw `path_open` with `O_CREAT`, asking for every right, through the mount's own preopened
/// descriptor (4) and through wasix's virtual root (3): preopen rights alone would let this
/// create a file on a read-only mount.
fn raw_create(fd: u32, path: &str) -> Program {
    wat(&format!(
        r#"(module
      (import "wasi_snapshot_preview1" "path_open"
        (func $open (param i32 i32 i32 i32 i32 i64 i64 i32 i32) (result i32)))
      (import "wasi_snapshot_preview1" "proc_exit" (func $exit (param i32)))
      (memory (export "memory") 1)
      (data (i32.const 100) "{path}")
      (func (export "_start")
        ;; fd, follow symlinks, path, O_CREAT|O_TRUNC (1|8), all rights, fdflags 0, result at 200
        (call $exit (call $open (i32.const {fd}) (i32.const 1) (i32.const 100) (i32.const {len})
                               (i32.const 9) (i64.const -1) (i64.const -1) (i32.const 0) (i32.const 200)))))"#,
        len = path.len()
    ))
}

#[test]
fn raw_path_open_with_create_cannot_write_a_read_only_mount() {
    let dir = TempDir::new("rawopen");
    let sb = sandbox(Policy { mounts: vec![Mount::read_only(dir.path(), "/data")], ..Policy::default() });
    for program in [raw_create(4, "created-by-guest"), raw_create(3, "data/created-by-guest")] {
        let out = sb.run(&program).unwrap();
        assert_ne!(out.status, Status::Exited(0), "path_open succeeded");
        assert!(!dir.join("created-by-guest").exists(), "the guest created a file on a read-only mount");
    }
    // On a read-write mount the same call works through the mount's descriptor.
    let sb = sandbox(Policy { mounts: vec![Mount::read_write(dir.path(), "/data")], ..Policy::default() });
    assert_eq!(sb.run(&raw_create(4, "created-by-guest")).unwrap().status, Status::Exited(0));
    assert!(dir.join("created-by-guest").exists());
}

#[test]
fn without_mounts_the_guest_sees_no_files_but_run_sandcell() {
    let guest = or_skip!(crate::common::wasm_guest(), "no wasm test guest");
    let sb = sandbox(Policy::default());
    // Nothing but sandcell's own /run/sandcell, which holds only `ready` (see `wasi::fs::RunDir`).
    for path in ["/", ".", "/tmp", "/etc", "/dev"] {
        let out = sb.run(&Program::path(guest).args(["ls", path])).unwrap();
        let s = text(&out.stdout);
        let entries: Vec<&str> = s.strip_prefix("ok ").unwrap_or("").split_whitespace().collect();
        assert!(s.starts_with("err") || entries.iter().all(|e| e.ends_with("run/sandcell")), "ls {path}: {s}");
    }
    let out = sb.run(&Program::path(guest).args(["ls", "/run/sandcell"])).unwrap();
    assert_eq!(text(&out.stdout), "ok ready\n");
    // Nothing can be made there: no file, directory, symlink or hard link (for a link the file
    // system does not support, wasix would keep one in host memory instead).
    for args in [
        &["write", "/run/sandcell/other", "data"][..],
        &["mkdir", "/run/sandcell/d"],
        // (/run/sandcell is descriptor 4 without mounts: after wasix's root at 3.)
        &["link", "sym", "4", "ready", "s"],
        &["link", "hard", "/run/sandcell/ready", "/run/sandcell/h"],
        &["remove", "/run/sandcell/ready"],
    ] {
        let out = sb.run(&Program::path(guest).args(args.iter().copied())).unwrap();
        assert!(text(&out.stdout).starts_with("err"), "{args:?}: {}", text(&out.stdout));
    }
    // A policy mount inside it is refused when the sandbox is built.
    let dir = TempDir::new("runmount");
    let e = SandboxBuilder::new(BackendKind::Wasm)
        .policy(Policy { mounts: vec![Mount::read_only(dir.path(), "/run/sandcell/x")], ..Policy::default() })
        .build()
        .unwrap_err();
    assert!(matches!(&e, sandcell::Error::InvalidPolicy { field, .. } if field == "mounts[0].guest"), "{e}");
    let out = sb.run(&Program::path(guest).args(["write", "/tmp/x", "data"])).unwrap();
    assert!(text(&out.stdout).starts_with("err"), "{}", text(&out.stdout));
}

#[test]
fn open_files_and_file_size_are_capped() {
    let guest = or_skip!(crate::common::wasm_guest(), "no wasm test guest");
    let dir = TempDir::new("caps");
    std::fs::write(dir.join("f"), "x").unwrap();
    let sb = sandbox(Policy {
        mounts: vec![Mount::read_write(dir.path(), "/d")],
        max_open_files: Some(20),
        max_file_size: Some(1 << 20),
        ..Policy::default()
    });
    let out = sb.run(&Program::path(guest).args(["openfiles", "/d/f"])).unwrap();
    let s = text(&out.stdout);
    let opened: usize = s.split_whitespace().nth(1).unwrap().parse().unwrap();
    assert!(opened <= 20, "{s}");
    let out = sb.run(&Program::path(guest).args(["bigfile", "/d/big", "10485760"])).unwrap();
    assert!(text(&out.stdout).starts_with("wrote 1048576 then"), "{}", text(&out.stdout));
    assert_eq!(std::fs::metadata(dir.join("big")).unwrap().len(), 1 << 20);
}

#[test]
fn compiled_modules_are_cached_in_memory_and_on_disk() {
    let cache = TempDir::new("cache");
    // A module unique to this test run, so that no other test has compiled it.
    let src = format!(r#"(module (func (export "_start")) (func (export "tag{}")))"#, std::process::id());
    let program = wat(&src);
    let sb: WasmSandbox = SandboxBuilder::new(BackendKind::Wasm).cache_dir(cache.path()).build_wasm().unwrap();
    assert_eq!(sb.precompile(&program).unwrap(), ArtifactSource::Compiled);
    assert_eq!(sb.precompile(&program).unwrap(), ArtifactSource::Memory);
    // Its key and one artifact.
    assert_eq!(std::fs::read_dir(cache.path()).unwrap().count(), 2);

    // Another process loads the artifact from disk instead of compiling.
    let src_file = cache.join("m.wat");
    std::fs::write(&src_file, &src).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_sandcell"))
        .env("SANDCELL_CACHE_DIR", concat!(env!("CARGO_TARGET_TMPDIR"), "/cli-cache"))
        .args(["run", "--json", "--cache-dir"])
        .arg(cache.path())
        .arg(&src_file)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("\"cache\":\"disk\""), "{}", text(&out.stdout));

    // A corrupted artifact is recompiled, not loaded.
    for entry in std::fs::read_dir(cache.path()).unwrap() {
        let p = entry.unwrap().path();
        if p.extension().is_some_and(|e| e == "art") {
            let mut bytes = std::fs::read(&p).unwrap();
            let mid = bytes.len() / 2;
            bytes[mid] ^= 0xff;
            std::fs::write(&p, bytes).unwrap();
        }
    }
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_sandcell"))
        .env("SANDCELL_CACHE_DIR", concat!(env!("CARGO_TARGET_TMPDIR"), "/cli-cache"))
        .args(["run", "--json", "--cache-dir"])
        .arg(cache.path())
        .arg(&src_file)
        .output()
        .unwrap();
    assert!(text(&out.stdout).contains("\"cache\":\"compiled\""), "{}", text(&out.stdout));
}

/// A WASI module that prints `word`.
fn printer(word: &str) -> String {
    format!(
        r#"(module
      (import "wasi_snapshot_preview1" "fd_write" (func $w (param i32 i32 i32 i32) (result i32)))
      (memory (export "memory") 1) (data (i32.const 16) "{word}\n")
      (func (export "_start") (i32.store (i32.const 0) (i32.const 16)) (i32.store (i32.const 4) (i32.const {}))
        (drop (call $w (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8)))))"#,
        word.len() + 1
    )
}

#[test]
fn a_local_user_swapping_the_cache_directory_never_gets_code_loaded() {
    // The attack: a local user who controls the directory above root's cache swaps the cache
    // for a symlink to a directory of their own — holding, under the name of the victim's
    // artifact, the compiled code of another module, authenticated with a key the attacker
    // chose — while root's sandcell (here, fresh CLI processes, which load from disk) opens it.
    // Each run either refuses the cache or runs the victim's own code.
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        crate::skip!("needs root: the attacker is another user");
    }
    use hmac::Mac;
    use std::os::unix::fs::{symlink, PermissionsExt};
    let top = TempDir::new("cache-swap");
    let parent = top.join("attacker-controlled");
    std::fs::create_dir(&parent).unwrap();
    let real = parent.join("cache");
    let victim = top.join("victim.wat");
    std::fs::write(&victim, printer("victim")).unwrap();
    let artifact = |dir: &std::path::Path, program: &std::path::Path| {
        let sb = SandboxBuilder::new(BackendKind::Wasm).cache_dir(dir).build_wasm().unwrap();
        sb.precompile(&Program::path(program)).unwrap();
        std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .find(|p| p.extension().is_some_and(|e| e == "art"))
            .unwrap()
    };
    let victim_artifact = artifact(&real, &victim);
    let name = victim_artifact.file_stem().unwrap().to_str().unwrap().to_owned();
    // The attacker's forgery: another module's code, under the victim's name.
    let pwned = top.join("pwned.wat");
    std::fs::write(&pwned, printer("pwned")).unwrap();
    let forged_code = std::fs::read(artifact(&top.join("forge"), &pwned)).unwrap()[8 + 32..].to_vec();
    let evil = parent.join("evil");
    std::fs::create_dir(&evil).unwrap();
    let key = [0x41u8; 32];
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(&key).unwrap();
    mac.update(name.as_bytes());
    mac.update(&[0]);
    mac.update(&forged_code);
    let forged = [&b"SCART02\0"[..], &mac.finalize().into_bytes(), &forged_code].concat();
    std::fs::write(evil.join(format!("{name}.art")), forged).unwrap();
    std::fs::write(evil.join("key"), key).unwrap();
    for p in [evil.join("key"), evil.join(format!("{name}.art")), evil.clone(), parent.clone()] {
        std::os::unix::fs::chown(&p, Some(65534), Some(65534)).unwrap();
    }
    for p in [evil.join("key"), evil.join(format!("{name}.art"))] {
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flipper = {
        let (stop, parent) = (stop.clone(), parent.clone());
        std::thread::spawn(move || {
            let (cache, aside, link) = (parent.join("cache"), parent.join("aside"), parent.join("link"));
            let _ = symlink("evil", &link);
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let _ = std::fs::rename(&cache, &aside);
                let _ = std::fs::rename(&link, &cache); // the cache is now the attacker's symlink
                std::thread::yield_now();
                let _ = std::fs::rename(&cache, &link);
                let _ = std::fs::rename(&aside, &cache);
            }
        })
    };
    let (mut ran, mut refused) = (0, 0);
    // At least 100 tries, and on until both outcomes were seen (on a loaded machine the swap
    // may take a while to land between the CLI's steps), for up to two minutes.
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    let mut tries = 0;
    while tries < 100 || ((ran == 0 || refused == 0) && std::time::Instant::now() < deadline) {
        tries += 1;
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_sandcell"))
            .env("SANDCELL_CACHE_DIR", concat!(env!("CARGO_TARGET_TMPDIR"), "/cli-cache"))
            .args(["run", "--cache-dir"])
            .arg(&real)
            .arg(&victim)
            .output()
            .unwrap();
        assert!(!text(&out.stdout).contains("pwned"), "the attacker's code ran");
        match out.status.code() {
            Some(0) => {
                assert_eq!(text(&out.stdout), "victim\n");
                ran += 1;
            }
            _ => {
                assert!(text(&out.stderr).contains("module cache"), "{}", text(&out.stderr));
                refused += 1;
            }
        }
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    flipper.join().unwrap();
    eprintln!("victim ran {ran} times, the cache was refused {refused} times");
    assert!(ran > 0 && refused > 0, "the swap never raced the open: ran {ran}, refused {refused}");
}

#[test]
fn an_unsafe_cache_directory_is_refused() {
    let cache = TempDir::new("badcache");
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(cache.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    let err = SandboxBuilder::new(BackendKind::Wasm).cache_dir(cache.path()).build().unwrap_err();
    assert!(err.to_string().contains("writable by group or others"), "{err}");
}

#[test]
fn host_memory_stays_bounded_under_a_memory_bomb() {
    let guest = or_skip!(crate::common::wasm_guest(), "no wasm test guest");
    fn rss_kib() -> u64 {
        let status = std::fs::read_to_string("/proc/self/status").unwrap();
        let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
        line.split_whitespace().nth(1).unwrap().parse().unwrap()
    }
    let sb = sandbox(Policy { memory: Some(32 << 20), ..Policy::default() });
    let before = rss_kib();
    for _ in 0..5 {
        let out = sb.run(&Program::path(guest).args(["alloc", "4096"])).unwrap();
        assert_eq!(out.status, Status::MemoryLimit);
    }
    let grew = rss_kib().saturating_sub(before);
    assert!(grew < 200 * 1024, "host RSS grew by {grew} KiB");
}

#[test]
fn stdin_is_delivered_then_end_of_file() {
    let guest = or_skip!(crate::common::wasm_guest(), "no wasm test guest");
    let input: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    let out = sandbox(Policy::default()).run(&Program::path(guest).arg("cat").stdin(input.clone())).unwrap();
    assert_eq!(out.status, Status::Exited(0));
    assert_eq!(out.stdout, input);
}

#[test]
fn a_guest_cannot_name_the_stop_flag() {
    // A module that exports the reserved name is refused rather than given control of it.
    let err = sandbox(Policy::default())
        .run(&wat(r#"(module (global (export "__sandcell_stop") (mut i32) (i32.const 0)) (func (export "_start")))"#))
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidProgram, "{err}");
}

/// A WASI command whose start function loops forever: instantiation runs it in wasmer.
const START_LOOP: &str = r#"(module
  (memory (export "memory") 1)
  (func $spin (loop br 0))
  (start $spin)
  (func (export "_start")))"#;

#[test]
fn a_start_function_runs_under_the_runs_limits() {
    let limited = |policy: Policy| stopped_within(&*sandbox(policy), &wat(START_LOOP), Duration::from_secs(5));
    let timeout = Policy { timeout: Some(Duration::from_millis(200)), ..Policy::default() };
    assert_eq!(limited(timeout), Status::Timeout);
    let cpu = Policy { cpu_time: Some(Duration::from_millis(200)), ..Policy::default() };
    assert_eq!(limited(cpu), Status::CpuLimit(CpuBudget::CpuTime));
    let fuel = Policy { fuel: Some(1_000_000), ..Policy::default() };
    assert_eq!(limited(fuel), Status::CpuLimit(CpuBudget::Fuel));
    // Interrupted from another thread, too.
    let sb = sandbox(Policy::default());
    let handle = InterruptHandle::new();
    let h = handle.clone();
    let t = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(100));
        h.interrupt();
    });
    let out = sb.run_with(&wat(START_LOOP), RunOptions::new().interrupt(handle)).unwrap();
    t.join().unwrap();
    assert_eq!(out.status, Status::Interrupted);
    // A start function that traps is a trap, as in `_start`; one that ends runs `_start` next.
    let out = sb.run(&wat(r#"(module (func $s unreachable) (start $s) (func (export "_start")))"#)).unwrap();
    assert!(matches!(out.status, Status::Trap(ref t) if t.kind == TrapKind::Unreachable), "{:?}", out.status);
    let out = sb
        .run(&wat(r#"(module
          (import "wasi_snapshot_preview1" "proc_exit" (func $exit (param i32)))
          (memory (export "memory") 1)
          (global $g (mut i32) (i32.const 0))
          (func $s (global.set $g (i32.const 7))) (start $s)
          (func (export "_start") (call $exit (global.get $g))))"#))
        .unwrap();
    assert_eq!(out.status, Status::Exited(7));
}

/// Waits on shared memory with no timeout: nobody will ever notify it.
const WAIT_FOREVER: &str = r#"(module
  (memory (export "memory") 1 1 shared)
  (func (export "_start")
    (drop (memory.atomic.wait32 (i32.const 0) (i32.const 0) (i64.const -1)))))"#;

#[test]
fn a_guest_blocked_in_an_atomic_wait_is_stopped_by_the_timeout_and_by_an_interrupt() {
    let sb = sandbox(Policy { timeout: Some(Duration::from_millis(200)), ..Policy::default() });
    assert_eq!(stopped_within(&*sb, &wat(WAIT_FOREVER), Duration::from_secs(5)), Status::Timeout);
    let sb = sandbox(Policy::default());
    let handle = sb.interrupt_handle();
    let t = std::thread::spawn(move || {
        for _ in 0..50 {
            std::thread::sleep(Duration::from_millis(20));
            handle.interrupt();
        }
    });
    let started = Instant::now();
    let out = sb.run(&wat(WAIT_FOREVER)).unwrap();
    assert_eq!(out.status, Status::Interrupted);
    assert!(started.elapsed() < Duration::from_secs(2));
    t.join().unwrap();
    // A wait with a timeout of its own still times out by itself.
    let out = sb
        .run(&wat(r#"(module
          (import "wasi_snapshot_preview1" "proc_exit" (func $exit (param i32)))
          (memory (export "memory") 1 1 shared)
          (func (export "_start")
            (call $exit (memory.atomic.wait32 (i32.const 0) (i32.const 0) (i64.const 1000000)))))"#))
        .unwrap();
    assert_eq!(out.status, Status::Exited(2));
}

#[test]
fn compiling_an_untrusted_module_is_bounded_by_budgets_of_its_own() {
    // The attack: a million empty functions (4 MB), under a 16 MiB memory cap and a 1 s timeout.
    let n = 1_000_000usize;
    let mut m = b"\0asm\x01\0\0\0".to_vec();
    let section = |m: &mut Vec<u8>, id: u8, body: &[u8]| {
        m.push(id);
        leb(m, body.len() as u64);
        m.extend_from_slice(body);
    };
    section(&mut m, 1, &[1, 0x60, 0, 0]);
    let mut funcs = Vec::new();
    leb(&mut funcs, n as u64);
    funcs.extend(std::iter::repeat_n(0u8, n));
    section(&mut m, 3, &funcs);
    let mut code = Vec::new();
    leb(&mut code, n as u64);
    for _ in 0..n {
        code.extend_from_slice(&[2, 0, 0x0b]);
    }
    section(&mut m, 10, &code);
    let policy = Policy { memory: Some(16 << 20), timeout: Some(Duration::from_secs(1)), ..Policy::default() };
    let sb = sandbox(policy.clone());
    let started = Instant::now();
    let e = sb.run(&Program::bytes(m.clone())).unwrap_err();
    assert!(matches!(e, Error::CompileBudget { limit: sandcell::CompileLimit::Functions, .. }), "{e}");
    assert_eq!(e.kind(), ErrorKind::InvalidProgram);
    assert!(started.elapsed() < Duration::from_secs(10), "{:?}", started.elapsed());

    // Within the count, the time budget stops a compilation that runs over.
    let mut wat_text = String::from("(module\n");
    for i in 0..20_000 {
        wat_text.push_str(&format!("(func (export \"f{i}\") (result i32) (i32.add (i32.const {i}) (i32.const 1)))\n"));
    }
    wat_text.push_str("(func (export \"_start\")))");
    let tight = sandcell::CompileLimits { time: Duration::from_millis(20), ..Default::default() };
    let sb = sandbox(Policy { compile: tight, ..policy.clone() });
    let started = Instant::now();
    let e = sb.run(&wat(&wat_text)).unwrap_err();
    assert!(matches!(e, Error::CompileBudget { limit: sandcell::CompileLimit::Time, .. }), "{e}");
    assert!(started.elapsed() < Duration::from_secs(20), "{:?}", started.elapsed());
    // With its default budgets, the same module compiles and runs.
    let out = sandbox(policy).run(&wat(&wat_text)).unwrap();
    assert_eq!(out.status, Status::Exited(0));
}

fn leb(out: &mut Vec<u8>, mut v: u64) {
    loop {
        let byte = (v & 0x7f) as u8;
        v >>= 7;
        if v == 0 {
            out.push(byte);
            return;
        }
        out.push(byte | 0x80);
    }
}

#[test]
fn raising_a_signal_ends_the_run_with_that_signal() {
    let raise = |sig: i32| {
        wat(&format!(
            r#"(module
          (import "wasi_snapshot_preview1" "proc_raise" (func $raise (param i32) (result i32)))
          (import "wasi_snapshot_preview1" "proc_exit" (func $exit (param i32)))
          (memory (export "memory") 1)
          (func (export "_start") (call $exit (call $raise (i32.const {sig})))))"#
        ))
    };
    let sb = sandbox(Policy::default());
    assert_eq!(sb.run(&raise(9)).unwrap().status, Status::Signaled(libc::SIGKILL));
    assert_eq!(sb.run(&raise(15)).unwrap().status, Status::Signaled(libc::SIGTERM));
    // WASI's 16-30 are Linux's 17-31.
    assert_eq!(sb.run(&raise(30)).unwrap().status, Status::Signaled(libc::SIGSYS));
    // Ignored by default (SIGCHLD, WASI 16): proc_raise returns 0 and the guest goes on.
    assert_eq!(sb.run(&raise(16)).unwrap().status, Status::Exited(0));
    // Not a signal: EINVAL (28).
    assert_eq!(sb.run(&raise(99)).unwrap().status, Status::Exited(28));
}

#[test]
fn opening_and_closing_a_preopen_forever_is_capped_like_any_descriptor() {
    // wasix answers a close of a descriptor for a preopened directory itself with success but
    // keeps it: without the cap, a guest opening "." of its mount and closing it in a loop grew
    // the host's descriptor table without bound. Exit code: the errno that ended the loop.
    let dir = TempDir::new("preopen-loop");
    let sb = sandbox(Policy {
        max_open_files: Some(64),
        mounts: vec![Mount::read_only(dir.path(), "/data")],
        ..Policy::default()
    });
    let out = sb
        .run(&wat(r#"(module
          (import "wasi_snapshot_preview1" "path_open" (func $open (param i32 i32 i32 i32 i32 i64 i64 i32 i32) (result i32)))
          (import "wasi_snapshot_preview1" "fd_close" (func $close (param i32) (result i32)))
          (import "wasi_snapshot_preview1" "proc_exit" (func $exit (param i32)))
          (memory (export "memory") 1)
          (data (i32.const 100) ".")
          (func (export "_start") (local $i i32) (local $e i32)
            (loop $l
              (local.set $e (call $open (i32.const 4) (i32.const 0) (i32.const 100) (i32.const 1) (i32.const 2)
                (i64.const 0) (i64.const 0) (i32.const 0) (i32.const 200)))
              (if (local.get $e) (then (call $exit (local.get $e))))
              (drop (call $close (i32.load (i32.const 200))))
              (local.set $i (i32.add (local.get $i) (i32.const 1)))
              (br_if $l (i32.lt_u (local.get $i) (i32.const 100000))))
            (call $exit (i32.const 0))))"#))
        .unwrap();
    assert_eq!(out.status, Status::Exited(33), "the loop was never capped (EMFILE)");
}

/// Found by the micro-VM hypercall fuzz target: wasix turned a misaligned pointer into a Rust
/// reference, which a host built with debug assertions answers by aborting the whole process.
/// Both WASI backends answer EFAULT instead, and the guest goes on.
#[test]
fn misaligned_wasi_pointers_are_refused_not_a_host_abort() {
    let src = r#"(module
        (import "wasi_snapshot_preview1" "args_sizes_get" (func $sizes (param i32 i32) (result i32)))
        (import "wasi_snapshot_preview1" "clock_time_get" (func $clock (param i32 i64 i32) (result i32)))
        (import "wasi_snapshot_preview1" "fd_write" (func $write (param i32 i32 i32 i32) (result i32)))
        (import "wasi_snapshot_preview1" "proc_exit" (func $exit (param i32)))
        (memory (export "memory") 1)
        (func (export "_start")
          (if (i32.ne (call $sizes (i32.const 1) (i32.const 8)) (i32.const 21)) (then (call $exit (i32.const 1))))
          (if (i32.ne (call $clock (i32.const 0) (i64.const 0) (i32.const 12)) (i32.const 21)) (then (call $exit (i32.const 2))))
          (if (i32.ne (call $write (i32.const 1) (i32.const 2) (i32.const 1) (i32.const 16)) (i32.const 21)) (then (call $exit (i32.const 3))))
          ;; aligned, the same calls work
          (if (i32.ne (call $sizes (i32.const 0) (i32.const 4)) (i32.const 0)) (then (call $exit (i32.const 4))))
          (call $exit (i32.const 0))))"#;
    for kind in [BackendKind::Wasm, BackendKind::MicroVm] {
        let support = sandcell::probe().backend(kind);
        if !support.available {
            crate::skip!("{kind}: {}", support.reason);
        }
        let sb = SandboxBuilder::new(kind).policy(Policy::default()).build().unwrap();
        let out = sb.run(&wat(src)).unwrap();
        assert_eq!(out.status, Status::Exited(0), "{kind}: {}", String::from_utf8_lossy(&out.stderr));
    }
}

/// `RunAsync`: the run goes to tokio's blocking pool (the executor's one worker thread stays
/// free while a guest spins), its outcome is the same as `run`'s, and dropping the future (here
/// through a timeout) interrupts the run instead of leaving it spinning.
#[test]
fn async_runs_stay_off_the_executor_and_cancellation_interrupts_them() {
    use sandcell::RunAsync;
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    let sb: Arc<dyn Sandbox> = SandboxBuilder::new(BackendKind::Wasm).policy(Policy::default()).build().unwrap().into();
    rt.block_on(async {
        let out = sb.run_async(Program::path("examples/hello.wat"), RunOptions::new()).await.unwrap();
        assert_eq!(text(&out.stdout), "Hello, world!\n");
        // A spinning guest, abandoned after 200 ms; meanwhile the one worker thread still runs
        // other tasks.
        let spin = wat(r#"(module (func (export "_start") (loop (br 0))))"#);
        let ticker = tokio::spawn(async {
            let started = Instant::now();
            let mut ticks = 0;
            while started.elapsed() < Duration::from_millis(150) {
                ticks += 1;
                tokio::task::yield_now().await;
            }
            ticks
        });
        let abandoned = tokio::time::timeout(Duration::from_millis(200), sb.run_async(spin, RunOptions::new())).await;
        assert!(abandoned.is_err(), "a spinning guest finished?");
        assert!(ticker.await.unwrap() > 10, "the executor was blocked by the run");
    });
    // The abandoned run was interrupted: nothing is left running on the sandbox.
    let deadline = Instant::now() + Duration::from_secs(5);
    while sb.interrupt_handle().active_runs() > 0 {
        assert!(Instant::now() < deadline, "the cancelled run still runs");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Two reads on `sandbox`, each a module calling `fd_read` on a stream whose writer stays open:
/// four bytes written into buffers of 4 and 100 bytes give a read of 4 (exit code 4), and an
/// empty buffer reads 0 at once (exit code 0); waiting instead would end in the timeout.
pub fn short_reads_of_streamed_stdin(sandbox: &dyn Sandbox) {
    let module = |iovecs: &str, count: i32| {
        format!(
            r#"(module
  (import "wasi_snapshot_preview1" "fd_read" (func $fd_read (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "proc_exit" (func $exit (param i32)))
  (memory (export "memory") 1)
  (data (i32.const 0) "{iovecs}")
  (func (export "_start")
    (drop (call $fd_read (i32.const 0) (i32.const 0) (i32.const {count}) (i32.const 64)))
    (call $exit (i32.load (i32.const 64)))))"#
        )
    };
    let two = module("\\00\\01\\00\\00\\04\\00\\00\\00\\00\\02\\00\\00\\64\\00\\00\\00", 2);
    let empty = module("\\00\\01\\00\\00\\00\\00\\00\\00", 1);
    for (wat, input, expected) in [(two, &b"abcd"[..], 4), (empty, &b""[..], 0)] {
        let (reader, mut writer) = crate::common::pipe();
        std::io::Write::write_all(&mut writer, input).unwrap();
        let options = RunOptions::new().stdin_reader(reader).timeout(Duration::from_secs(5));
        let out = sandbox.run_with(&Program::bytes(wat.into_bytes()), options).unwrap();
        assert_eq!(
            out.status,
            Status::Exited(expected),
            "{}: {}",
            sandbox.backend(),
            String::from_utf8_lossy(&out.stderr)
        );
        drop(writer);
    }
}

#[test]
fn wasi_reads_of_a_streamed_stdin_return_what_has_arrived() {
    let sb = SandboxBuilder::new(BackendKind::Wasm).build().unwrap();
    short_reads_of_streamed_stdin(&*sb);
}

/// wasix keeps hard links (and symlinks on host mounts) in its own memory: a run makes at most
/// 1,024, and a symlink's target is at most 4,096 bytes, so a guest cannot grow host memory
/// through them.
#[test]
fn links_a_guest_makes_are_bounded() {
    let guest = or_skip!(crate::common::wasm_guest(), "no wasm test guest");
    let dir = TempDir::new("links");
    std::fs::write(dir.join("f"), "x").unwrap();
    let sb = sandbox(Policy { mounts: vec![Mount::read_write(dir.path(), "/d")], ..Policy::default() });
    let out = sb.run(&Program::path(guest).args(["links", "1500", "/d"])).unwrap();
    assert_eq!(text(&out.stdout), "made 1024\n");
    // The mount is descriptor 4 here (wasix's root is 3).
    let long = "x".repeat(5000);
    let out = sb.run(&Program::path(guest).args(["link", "sym", "4", &long, "s"])).unwrap();
    assert!(text(&out.stdout).starts_with("err"), "{}", text(&out.stdout));
    let out = sb.run(&Program::path(guest).args(["link", "sym", "4", "f", "s"])).unwrap();
    assert_eq!(text(&out.stdout), "ok\n");
}

/// A WASI command with a Wizer initialiser: `wizer.initialize` counts itself in `$inits`, fills
/// a table of squares and reads the environment's size; `_start` counts itself in `$runs` and
/// prints `inits=I runs=R sq=S env=E` (S: the table's entry 3, E: the environment's count then).
const WIZER: &str = r#"(module
  (import "wasi_snapshot_preview1" "fd_write" (func $w (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "environ_sizes_get" (func $es (param i32 i32) (result i32)))
  (memory (export "memory") 1)
  (global $inits (mut i32) (i32.const 0))
  (global $runs (mut i32) (i32.const 0))
  (data (i32.const 200) "inits=? runs=? sq=? env=?\n")
  (func (export "wizer.initialize") (local $i i32)
    (global.set $inits (i32.add (global.get $inits) (i32.const 1)))
    (loop $l
      (i32.store (i32.add (i32.const 1024) (i32.shl (local.get $i) (i32.const 2)))
                 (i32.mul (local.get $i) (local.get $i)))
      (local.set $i (i32.add (local.get $i) (i32.const 1)))
      (br_if $l (i32.lt_u (local.get $i) (i32.const 1000))))
    (drop (call $es (i32.const 16) (i32.const 20))))
  (func (export "_start")
    (global.set $runs (i32.add (global.get $runs) (i32.const 1)))
    (i32.store8 (i32.const 206) (i32.add (i32.const 48) (global.get $inits)))
    (i32.store8 (i32.const 213) (i32.add (i32.const 48) (global.get $runs)))
    (i32.store8 (i32.const 218) (i32.add (i32.const 48) (i32.load (i32.const 1036))))
    (i32.store8 (i32.const 224) (i32.add (i32.const 48) (i32.load (i32.const 16))))
    (i32.store (i32.const 0) (i32.const 200)) (i32.store (i32.const 4) (i32.const 26))
    (drop (call $w (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8)))))
"#;

#[test]
fn until_ready_snapshots_a_module_after_its_wizer_initializer() {
    let sb = sandbox(Policy { timeout: Some(Duration::from_secs(10)), ..Policy::default() });
    let program = wat(WIZER).env("A", "1").env("B", "2");
    // Unprepared: the initialiser never runs.
    assert_eq!(text(&sb.run(&program).unwrap().stdout), "inits=0 runs=1 sq=0 env=0\n");
    // Prepared until ready: it ran once, before any run; every run starts from what it left
    // (its memory and globals), not from the previous run.
    let prepared = sb.prepare_with(&program, &sandcell::PrepareOptions::new().until_ready(true)).unwrap();
    for _ in 0..3 {
        let out = prepared.run().unwrap();
        assert_eq!(out.status, Status::Exited(0));
        assert_eq!(text(&out.stdout), "inits=1 runs=1 sq=9 env=2\n");
    }
    // The snapshot's module is compiled once, and cached like any module.
    assert_eq!(prepared.run().unwrap().usage.artifact, Some(ArtifactSource::Prepared));
}

#[test]
fn a_wizer_initializer_that_fails_or_overruns_is_refused_with_the_reason_under_the_policy() {
    let sb = sandbox(Policy { timeout: Some(Duration::from_millis(300)), memory: Some(2 << 20), ..Policy::default() });
    let ready = sandcell::PrepareOptions::new().until_ready(true);
    let module = |init: &str| {
        wat(&format!(
            r#"(module (memory (export "memory") 1) (func (export "wizer.initialize") {init}) (func (export "_start")))"#
        ))
    };
    for (init, why) in [
        ("unreachable", "Trap"),
        ("(loop $l (br $l))", "Timeout"),
        ("(if (i32.eq (memory.grow (i32.const 100)) (i32.const -1)) (then unreachable))", "MemoryLimit"),
    ] {
        let started = Instant::now();
        let err = sb.prepare_with(&module(init), &ready).err().expect(init);
        assert_eq!(err.kind(), ErrorKind::InvalidProgram, "{init}: {err}");
        assert!(err.to_string().contains("did not return") && err.to_string().contains(why), "{init}: {err}");
        assert!(started.elapsed() < Duration::from_secs(5), "{init}");
    }
    // No initialiser, or pools and snapshot files (the wasm backend keeps no instances).
    let err = sb.prepare_with(&wat(r#"(module (func (export "_start")))"#), &ready).err().unwrap();
    assert!(err.to_string().contains("wizer.initialize"), "{err}");
    let err = sb.prepare_with(&module(""), &ready.clone().pool_size(4)).err().unwrap();
    assert_eq!(err.kind(), ErrorKind::Unenforceable, "{err}");
}
