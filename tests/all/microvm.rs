//! Micro-VM backend: hostile guests (`guest/tests/hostile`), host functions, many VMs at once,
//! and nothing left behind. Each thing the threat model says a guest cannot do is tried here.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use sandcell::{
    BackendKind, CpuBudget, InterruptHandle, Policy, Program, RunOptions, Sandbox, SandboxBuilder, Status, TrapKind,
};

use crate::common::{self, text};
use crate::{or_skip, skip};

fn available() -> Result<(), String> {
    let s = sandcell::probe().backend(BackendKind::MicroVm);
    if s.available {
        Ok(())
    } else {
        Err(s.reason.clone())
    }
}

fn hostile() -> Result<PathBuf, String> {
    available()?;
    common::vm_guest("vm-hostile")
}

/// The hostile guest linked with its code and read-only data in 2 MiB regions of their own,
/// which sandcell maps with large pages (as it does the wasm runtime's).
fn hostile_large() -> Result<PathBuf, String> {
    available()?;
    common::vm_guest("vm-hostile-large")
}

fn sandbox(policy: Policy) -> Box<dyn Sandbox> {
    SandboxBuilder::new(BackendKind::MicroVm).policy(policy).build().unwrap()
}

fn base() -> Policy {
    Policy { memory: Some(64 << 20), timeout: Some(Duration::from_secs(20)), ..Policy::default() }
}

fn trap(status: &Status) -> (TrapKind, String) {
    match status {
        Status::Trap(t) => (t.kind, t.message.clone()),
        other => panic!("expected a trap, got {other:?}"),
    }
}

#[test]
fn hostile_instructions_and_memory_accesses_end_as_traps_with_the_reason() {
    let guest = or_skip!(hostile(), "no micro-VM");
    let sb = sandbox(base());
    let cases: &[(&str, TrapKind, &str)] = &[
        ("outside", TrapKind::MemoryOutOfBounds, "unmapped address"),
        ("null", TrapKind::MemoryOutOfBounds, "reading 0x0"),
        ("kernel_read", TrapKind::MemoryOutOfBounds, "reading 0x1000"),
        ("page_tables", TrapKind::MemoryOutOfBounds, "unmapped"),
        ("exec_data", TrapKind::MemoryOutOfBounds, "executing"),
        ("write_code", TrapKind::MemoryOutOfBounds, "writing"),
        ("stack_overflow", TrapKind::MemoryOutOfBounds, "unmapped"),
        ("hlt", TrapKind::IllegalInstruction, "(hlt)"),
        ("cli", TrapKind::IllegalInstruction, "(cli)"),
        ("int3", TrapKind::Breakpoint, "int3"),
        ("ud2", TrapKind::IllegalInstruction, "invalid opcode"),
        ("div0", TrapKind::IntegerDivisionByZero, "divide error"),
        ("in", TrapKind::IllegalInstruction, "port I/O"),
        ("out", TrapKind::IllegalInstruction, "port I/O"),
        ("out_neighbour", TrapKind::BadHostCall, "port 0x5c1"),
        ("rdmsr", TrapKind::IllegalInstruction, "rdmsr"),
        ("wrmsr", TrapKind::IllegalInstruction, "wrmsr"),
    ];
    for (mode, kind, detail) in cases {
        let out = sb.run(&Program::path(&guest).arg(*mode)).unwrap();
        let (k, message) = trap(&out.status);
        assert_eq!(k, *kind, "{mode}: {message}");
        assert!(message.contains(detail), "{mode}: {message}");
        assert!(!text(&out.stdout).contains("survived"), "{mode} survived");
    }
    // `syscall` has no kernel to go to: it faults too.
    assert!(matches!(sb.run(&Program::path(&guest).arg("syscall")).unwrap().status, Status::Trap(_)));
}

#[test]
fn code_and_read_only_data_in_large_pages_keep_w_xor_x() {
    let guest = or_skip!(hostile_large(), "no micro-VM");
    let sb = sandbox(base());
    // One-shot runs (the code copied into a huge page of the run's own) and prepared runs (the
    // code mapped from the shared image): neither lets the guest write its code, run its
    // read-only data, or have the host write into its code for it.
    let prepared = |mode: &str| sb.prepare(&Program::path(&guest).arg(mode)).unwrap().run().unwrap();
    let once = |mode: &str| sb.run(&Program::path(&guest).arg(mode)).unwrap();
    for run in [&once as &dyn Fn(&str) -> sandcell::Outcome, &prepared] {
        let ok = run("exit");
        assert_eq!(ok.status, Status::Exited(0), "{}", text(&ok.stderr));
        for (mode, kind, detail) in [
            ("write_code", TrapKind::MemoryOutOfBounds, "writing"),
            ("exec_data", TrapKind::MemoryOutOfBounds, "executing"),
            ("hc_read_into_code", TrapKind::BadHostCall, "not writable by the guest"),
        ] {
            let out = run(mode);
            let (k, message) = trap(&out.status);
            assert_eq!(k, kind, "{mode}: {message}");
            assert!(message.contains(detail), "{mode}: {message}");
            assert!(!text(&out.stdout).contains("survived"), "{mode} survived");
        }
        let out = run("hc_write_from_code");
        assert!(text(&out.stdout).ends_with("wrote 4\nhc_write_from_code: survived\n"), "{}", text(&out.stdout));
        // What the large page maps beyond the code reads as zeros, run after run.
        for _ in 0..2 {
            let out = run("gap");
            assert!(text(&out.stdout).starts_with("gap 0x0\n"), "{:?} {}", out.status, text(&out.stdout));
        }
    }
}

#[test]
fn a_wasm_guest_grows_its_memory_past_what_its_start_registers() {
    let _ = or_skip!(available(), "no micro-VM");
    // A one-shot run registers part of guest RAM with KVM and the rest as the heap grows
    // (`op::RAM`): 300 MiB of linear memory is well past the first part; the cap still holds.
    let wat = r#"(module (memory 1)
        (func (export "_start")
          (if (i32.eq (memory.grow (i32.const 4800)) (i32.const -1)) (then unreachable))
          (i32.store (i32.const 314572000) (i32.const 7))
          (if (i32.ne (i32.load (i32.const 314572000)) (i32.const 7)) (then unreachable))
          (if (i32.ne (memory.grow (i32.const 4800)) (i32.const -1)) (then unreachable))))"#;
    let sb = sandbox(Policy { memory: Some(400 << 20), timeout: Some(Duration::from_secs(30)), ..Policy::default() });
    let out = sb.run(&Program::bytes(wat.as_bytes().to_vec())).unwrap();
    assert_eq!(out.status, Status::Exited(0), "{:?} {}", out.status, text(&out.stderr));
}

#[test]
fn hypercalls_with_bad_pointers_lengths_or_numbers_are_refused() {
    let guest = or_skip!(hostile(), "no micro-VM");
    let sb = sandbox(base());
    // Spans the guest may read are fine to read out through the host.
    let out = sb.run(&Program::path(&guest).arg("hc_write_from_code").stdin(b"x".to_vec())).unwrap();
    assert_eq!(out.status, Status::Exited(0));
    assert!(text(&out.stdout).ends_with("wrote 4\nhc_write_from_code: survived\n"), "{}", text(&out.stdout));
    for (mode, detail) in [
        ("hc_overflow", "overflows"),
        ("hc_huge", "too long"),
        ("hc_outside", "outside the guest's memory"),
        ("hc_kernel", "outside the guest's memory"),
        ("hc_unknown", "unknown hypercall 999"),
        ("hc_exit_outside", "outside the guest's memory"),
        ("hc_read_into_code", "not writable by the guest"),
        ("hc_read_into_guard", "not writable by the guest"),
        ("hc_read_into_absent_stack", "not writable by the guest"),
        ("hc_read_across_guard", "not writable by the guest"),
        ("hc_bad_version", "bad magic"),
    ] {
        let out = sb.run(&Program::path(&guest).arg(mode)).unwrap();
        let (k, message) = trap(&out.status);
        assert_eq!(k, TrapKind::BadHostCall, "{mode}: {message}");
        assert!(message.contains(detail), "{mode}: {message}");
    }
}

#[test]
fn a_spinning_native_guest_is_stopped_by_the_timeout_and_by_an_interrupt() {
    let guest = or_skip!(hostile(), "no micro-VM");
    let sb = sandbox(Policy { timeout: Some(Duration::from_millis(200)), ..base() });
    let started = Instant::now();
    assert_eq!(sb.run(&Program::path(&guest).arg("spin")).unwrap().status, Status::Timeout);
    assert!(started.elapsed() < Duration::from_secs(3));

    let sb = sandbox(base());
    let handle = InterruptHandle::new();
    let h = handle.clone();
    let t = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(150));
        h.interrupt();
    });
    let out = sb.run_with(&Program::path(&guest).arg("spin"), RunOptions::new().interrupt(handle)).unwrap();
    t.join().unwrap();
    assert_eq!(out.status, Status::Interrupted);
}

#[test]
fn cpu_time_limit_stops_a_spinning_native_guest() {
    let guest = or_skip!(hostile(), "no micro-VM");
    let sb = sandbox(Policy { cpu_time: Some(Duration::from_millis(200)), ..base() });
    let out = sb.run(&Program::path(&guest).arg("spin")).unwrap();
    assert_eq!(out.status, Status::CpuLimit(CpuBudget::CpuTime));
}

#[test]
fn output_floods_are_capped() {
    let guest = or_skip!(hostile(), "no micro-VM");
    let sb = sandbox(Policy { max_output: 1 << 20, ..base() });
    let out = sb.run(&Program::path(&guest).arg("flood")).unwrap();
    assert_eq!(out.status, Status::OutputLimit);
    assert_eq!(out.stdout.len(), 1 << 20);
}

#[test]
fn exit_codes_are_exact_and_memory_is_guest_ram() {
    let guest = or_skip!(hostile(), "no micro-VM");
    let sb = sandbox(Policy { memory: Some(32 << 20), ..base() });
    assert_eq!(sb.run(&Program::path(&guest).args(["exit", "3"])).unwrap().status, Status::Exited(3));
    let out = sb.run(&Program::path(&guest).args(["alloc", "4"])).unwrap();
    assert!(text(&out.stdout).starts_with("allocated 4 MiB\n"), "{}", text(&out.stdout));
    assert!(out.enforced[&sandcell::PolicyField::Memory].contains("32 MiB"), "{:?}", out.enforced);
    let out = sb.run(&Program::path(&guest).args(["alloc", "64"])).unwrap();
    assert_ne!(out.status, Status::Exited(0), "a 32 MiB guest allocated 64 MiB");
    // A cap below what a native guest's RAM can be: its runs are refused, saying why (a wasm
    // guest's runs are not: for it the cap is its linear memory's).
    let small = sandbox(Policy { memory: Some(4 << 20), ..base() });
    let err = small.run(&Program::path(&guest).args(["exit", "0"])).unwrap_err();
    assert!(matches!(err, sandcell::Error::Unenforceable { field: sandcell::PolicyField::Memory, .. }), "{err}");
    let out = small.run(&Program::bytes(include_bytes!("../../examples/hello.wat").to_vec())).unwrap();
    assert_eq!(out.status, Status::Exited(0));
    // With best_effort the native guest runs in the smallest guest RAM, and the outcome says so.
    let lenient = sandbox(Policy { memory: Some(4 << 20), best_effort: true, ..base() });
    let out = lenient.run(&Program::path(&guest).args(["exit", "0"])).unwrap();
    assert_eq!(out.status, Status::Exited(0));
    assert!(out.skipped.contains_key(&sandcell::PolicyField::Memory), "{:?}", out.skipped);
}

#[test]
fn native_guests_call_host_functions_the_embedder_registered() {
    let guest = or_skip!(hostile(), "no micro-VM");
    let sb = SandboxBuilder::new(BackendKind::MicroVm)
        .policy(base())
        .host_function("echo", |input| Ok([b"echo: ".as_slice(), input].concat()))
        .host_function("fail", |_| Err("nope".into()))
        .build()
        .unwrap();
    let out = sb.run(&Program::path(&guest).args(["echo", "hi"])).unwrap();
    assert_eq!(out.status, Status::Exited(0), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "echo: hi\nErr(TooSmall(28))\nErr(NotFound)\nfailed: nope\necho: survived\n");
    // The other backends have no host functions and say so.
    let err = SandboxBuilder::new(BackendKind::Wasm).host_function("echo", |i| Ok(i.to_vec())).build().unwrap_err();
    assert!(err.to_string().contains("host_functions"), "{err}");
}

/// A native guest reads a streamed stdin through the read hypercall, all of it, and a guest
/// waiting on a stream that never ends stops at its timeout.
#[test]
fn native_guests_read_a_streamed_stdin_and_stop_at_the_timeout_while_waiting() {
    let guest = or_skip!(hostile(), "no micro-VM");
    let sb = sandbox(base());
    let fnv = |bytes: &[u8]| {
        bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ *b as u64).wrapping_mul(0x100_0000_01b3))
    };
    let input: Vec<u8> = (0..200_000usize).map(|i| (i * 13 + i / 97) as u8).collect();
    let (reader, mut writer) = crate::common::pipe();
    let feed = input.clone();
    let feeder = std::thread::spawn(move || {
        use std::io::Write;
        for chunk in feed.chunks(30_000) {
            writer.write_all(chunk).unwrap();
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    });
    let out = sb.run_with(&Program::path(&guest).arg("stdin"), RunOptions::new().stdin_reader(reader)).unwrap();
    feeder.join().unwrap();
    assert_eq!(out.status, Status::Exited(0), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), format!("stdin 200000 bytes, fnv {:016x}\nstdin: survived\n", fnv(&input)));

    let (reader, writer) = crate::common::pipe();
    let started = std::time::Instant::now();
    let options = RunOptions::new().stdin_reader(reader).timeout(std::time::Duration::from_millis(300));
    let out = sb.run_with(&Program::path(&guest).arg("stdin"), options).unwrap();
    assert_eq!(out.status, Status::Timeout);
    assert!(started.elapsed() < std::time::Duration::from_secs(5), "{:?}", started.elapsed());
    drop(writer);
}

/// With several vCPUs, one waiting for a streamed stdin that never comes does not hold up the
/// others: vCPU 0's exit ends the run at once.
#[test]
fn a_vcpu_waiting_for_stdin_does_not_stall_the_other_vcpus() {
    let guest = or_skip!(hostile(), "no micro-VM");
    let sb = sandbox(Policy { cpus: Some(2), ..base() });
    let (reader, writer) = crate::common::pipe();
    let started = std::time::Instant::now();
    let out = sb.run_with(&Program::path(&guest).arg("stdin_wait"), RunOptions::new().stdin_reader(reader)).unwrap();
    assert_eq!(out.status, Status::Exited(7), "{}", text(&out.stderr));
    assert!(started.elapsed() < Duration::from_secs(10), "{:?}", started.elapsed());
    drop(writer);
    // And input that comes later is read by the waiting vCPU (answered from the serving loop).
    let (reader, mut writer) = crate::common::pipe();
    let feeder = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(50));
        std::io::Write::write_all(&mut writer, b"hello").unwrap();
        std::thread::sleep(Duration::from_millis(2000));
    });
    let out = sb.run_with(&Program::path(&guest).arg("stdin_wait"), RunOptions::new().stdin_reader(reader)).unwrap();
    assert_eq!(out.status, Status::Exited(7), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("cpu 1 read 5"), "{}", text(&out.stdout));
    feeder.join().unwrap();
}

/// A WASI `fd_read` of a streamed stdin answers as `readv` does: with what has arrived (a short
/// read across two buffers, not a wait to fill the second), and at once for an empty buffer.
#[test]
fn wasi_reads_of_a_streamed_stdin_return_what_has_arrived() {
    or_skip!(hostile(), "no micro-VM");
    crate::wasm::short_reads_of_streamed_stdin(&*sandbox(base()));
}

#[test]
fn native_guests_read_all_of_stdin_whether_it_fits_the_boot_area_or_not() {
    let guest = or_skip!(hostile(), "no micro-VM");
    let sb = sandbox(base());
    let fnv = |bytes: &[u8]| {
        bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ *b as u64).wrapping_mul(0x100_0000_01b3))
    };
    // Empty, small (placed in the boot area), and larger than the boot area (the rest is read
    // through hypercalls, continuing exactly where the boot area's part ends).
    for len in [0usize, 5, 70_000, 300_001] {
        let input: Vec<u8> = (0..len).map(|i| (i * 7 + i / 251) as u8).collect();
        let out = sb.run(&Program::path(&guest).arg("stdin").stdin(input.clone())).unwrap();
        assert_eq!(out.status, Status::Exited(0), "{len}: {}", text(&out.stderr));
        assert_eq!(text(&out.stdout), format!("stdin {len} bytes, fnv {:016x}\nstdin: survived\n", fnv(&input)));
    }
}

#[test]
fn several_vcpus_run_the_same_native_guest() {
    let guest = or_skip!(hostile(), "no micro-VM");
    let sb = sandbox(Policy { cpus: Some(4), ..base() });
    let out = sb.run(&Program::path(&guest).arg("cpus")).unwrap();
    assert_eq!(out.status, Status::Exited(0), "{}", text(&out.stderr));
    let s = text(&out.stdout);
    assert!(s.contains("cpu 0 of 4: 3 others arrived"), "{s}");
    for cpu in 1..4 {
        assert!(s.contains(&format!("cpu {cpu} of 4")), "{s}");
    }
}

#[test]
fn fuel_meters_wasm_guests_and_is_refused_for_native_ones() {
    let guest = or_skip!(hostile(), "no micro-VM");
    let sb = sandbox(Policy { fuel: Some(100_000), ..base() });
    let out = sb.run(&Program::bytes(br#"(module (func (export "_start") (loop $l (br $l))))"#.to_vec())).unwrap();
    assert_eq!(out.status, Status::CpuLimit(CpuBudget::Fuel));
    assert!(out.usage.fuel.is_some_and(|f| f > 90_000));
    let err = sb.run(&Program::path(&guest).arg("exit")).unwrap_err();
    assert!(matches!(err, sandcell::Error::Unenforceable { field: sandcell::PolicyField::Fuel, .. }), "{err}");
}

#[test]
fn twenty_micro_vms_at_once() {
    let guest = or_skip!(hostile(), "no micro-VM");
    let hello = or_skip!(common::vm_guest("hello"), "no hello guest");
    let sb: Arc<dyn Sandbox> = Arc::from(sandbox(Policy { memory: Some(32 << 20), ..base() }));
    let threads: Vec<_> = (0..20)
        .map(|i| {
            let sb = sb.clone();
            let program = if i % 2 == 0 {
                Program::path(&hello).arg(format!("vm{i}"))
            } else {
                Program::path(&guest).args(["exit", &i.to_string()])
            };
            std::thread::spawn(move || (i, sb.run(&program).unwrap()))
        })
        .collect();
    for t in threads {
        let (i, out) = t.join().unwrap();
        if i % 2 == 0 {
            assert_eq!(out.status, Status::Exited(0));
            assert!(text(&out.stdout).contains(&format!("arg 1: vm{i}")));
        } else {
            assert_eq!(out.status, Status::Exited(i));
        }
    }
}

fn count(path: &str) -> usize {
    std::fs::read_dir(path).map(|d| d.count()).unwrap_or(0)
}

#[test]
fn nothing_is_left_behind_after_runs() {
    let guest = or_skip!(hostile(), "no micro-VM");
    let sb = sandbox(base());
    // Warm up (first-use threads: the watchdog, wasix's runtime, the image cache).
    for mode in ["exit", "div0", "spin"] {
        let _ = sandbox(Policy { timeout: Some(Duration::from_millis(50)), ..base() })
            .run(&Program::path(&guest).arg(mode));
    }
    let _ = sb.run(&Program::bytes(include_bytes!("../../examples/hello.wat").to_vec()));
    let maps = || std::fs::read_to_string("/proc/self/maps").unwrap().lines().count();
    // The VMs that exist on the host: KVM gives each a debugfs directory named
    // `<creating thread>-<fd>`, listed here through a private mount of debugfs (as root;
    // otherwise 0). A finished run's VM is destroyed on a background thread, not kept.
    let script =
        "mount -t debugfs none /sys/kernel/debug && ls /sys/kernel/debug/kvm | grep -c '^[0-9]*-[0-9]*$' || true";
    let vms = || {
        std::process::Command::new("unshare")
            .args(["--mount", "--propagation", "private", "sh", "-c", script])
            .output()
            .ok()
            .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse::<usize>().ok())
            .unwrap_or(0)
    };
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        // The keeper VM is always there: the listing works.
        assert!(vms() >= 1, "cannot list this process's VMs through debugfs");
    }
    // Other tests run in parallel threads of this process; retry until a quiet moment.
    for attempt in 0..20 {
        let before = (count("/proc/self/task"), count("/proc/self/fd"), maps(), vms());
        for mode in ["exit", "div0", "hc_unknown"] {
            sb.run(&Program::path(&guest).arg(mode)).unwrap();
        }
        sb.run(&Program::bytes(include_bytes!("../../examples/hello.wat").to_vec())).unwrap();
        // Descriptors and mappings are gone when a run returns; the VM itself within moments.
        std::thread::sleep(Duration::from_millis(20));
        if before == (count("/proc/self/task"), count("/proc/self/fd"), maps(), vms()) {
            return;
        }
        std::thread::sleep(Duration::from_millis(50 * attempt));
    }
    panic!("threads, descriptors, mappings or VMs kept growing across micro-VM runs");
}

#[test]
fn the_cli_runs_native_and_wasm_guests_on_the_microvm_backend() {
    let guest = or_skip!(hostile(), "no micro-VM");
    let cli = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_sandcell"))
            .env("SANDCELL_CACHE_DIR", concat!(env!("CARGO_TARGET_TMPDIR"), "/cli-cache"))
            .args(args)
            .current_dir(common::repo())
            .output()
            .unwrap()
    };
    let out = cli(&["run", "--backend", "microvm", "examples/hello.wat"]);
    assert_eq!(text(&out.stdout), "Hello, world!\n");
    let out = cli(&["run", "--backend", "microvm", "--vcpus", "2", guest.to_str().unwrap(), "--", "cpus"]);
    assert!(text(&out.stdout).contains("cpu 0 of 2: 1 others arrived"), "{}", text(&out.stdout));
    let out = cli(&["run", "--backend", "microvm", guest.to_str().unwrap(), "--", "exit", "7"]);
    assert_eq!(out.status.code(), Some(7));
    let out = cli(&["probe", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    if v["host"]["kvm"] == true {
        assert!(["vt-x", "amd-v", "pvm", "unknown"].contains(&v["host"]["kvm_flavor"].as_str().unwrap()));
    }
}

#[test]
fn microvm_tests_need_kvm_where_it_exists() {
    if std::path::Path::new("/dev/kvm").exists() && available().is_err() {
        skip!("/dev/kvm exists but the micro-VM backend is unavailable: {:?}", available());
    }
}

#[test]
fn a_guest_finds_nothing_an_earlier_guest_left_in_memory() {
    // Guest RAM is reused from run to run once cleaned (see src/backend/microvm/arena.rs): a
    // run that leaves a marker in every page of its heap and stack must not be followed by one
    // that finds any.
    let guest = or_skip!(hostile(), "no micro-VM");
    let sb = sandbox(base());
    let found = |out: &sandcell::Outcome| text(&out.stdout).trim().to_string();
    let planted = sb.run(&Program::path(&guest).args(["find_secret", "plant"])).unwrap();
    assert_eq!(found(&planted), format!("found {} secrets\nfind_secret: survived", 4096 + 63));
    for _ in 0..3 {
        assert_eq!(sb.run(&Program::path(&guest).arg("secret")).unwrap().status, Status::Exited(0));
        let out = sb.run(&Program::path(&guest).arg("find_secret")).unwrap();
        assert_eq!(found(&out), "found 0 secrets\nfind_secret: survived");
    }
}

#[test]
fn a_program_file_is_run_as_it_is_now_after_being_rewritten() {
    // Cached images are found by the program file's identity; a rewrite must change it.
    let guest = or_skip!(hostile(), "no micro-VM");
    let dir = common::TempDir::new("rewrite");
    let path = dir.join("guest");
    let sb = sandbox(base());
    std::fs::copy(&guest, &path).unwrap();
    let first = sb.run(&Program::path(&path).args(["exit", "3"])).unwrap();
    assert_eq!(first.status, Status::Exited(3));
    // Past the one-second settling time, the file's identity is recorded; the next run uses it.
    std::thread::sleep(Duration::from_millis(1100));
    assert_eq!(sb.run(&Program::path(&path).args(["exit", "4"])).unwrap().status, Status::Exited(4));
    let cached = sb.run(&Program::path(&path).args(["exit", "5"])).unwrap();
    assert_eq!((cached.status, cached.usage.artifact), (Status::Exited(5), Some(sandcell::ArtifactSource::Memory)));
    // A different program written to the same path, at once: it is what runs.
    let wat = br#"(module (import "wasi_snapshot_preview1" "proc_exit" (func $exit (param i32)))
        (func (export "_start") (call $exit (i32.const 9))))"#;
    std::fs::write(&path, wat).unwrap();
    assert_eq!(sb.run(&Program::path(&path)).unwrap().status, Status::Exited(9));
    std::fs::copy(&guest, &path).unwrap();
    assert_eq!(sb.run(&Program::path(&path).args(["exit", "6"])).unwrap().status, Status::Exited(6));
}

#[test]
fn an_untrusted_module_is_refused_within_its_compilation_budgets_before_any_vm_starts() {
    or_skip!(available(), "no micro-VM");
    // A million empty functions: refused after reading the function section, not validated,
    // not compiled, no VM created.
    let n = 1_000_000usize;
    let mut m = b"\0asm\x01\0\0\0".to_vec();
    let leb = |out: &mut Vec<u8>, mut v: usize| loop {
        let byte = (v & 0x7f) as u8;
        v >>= 7;
        if v == 0 {
            out.push(byte);
            break;
        }
        out.push(byte | 0x80);
    };
    let mut funcs = Vec::new();
    leb(&mut funcs, n);
    funcs.extend(std::iter::repeat_n(0u8, n));
    m.extend_from_slice(&[1, 4, 1, 0x60, 0, 0, 3]);
    leb(&mut m, funcs.len());
    m.extend_from_slice(&funcs);
    let sb = sandbox(Policy { memory: Some(32 << 20), timeout: Some(Duration::from_secs(1)), ..base() });
    let started = Instant::now();
    let e = sb.run(&Program::bytes(m)).unwrap_err();
    assert!(matches!(e, sandcell::Error::CompileBudget { limit: sandcell::CompileLimit::Functions, .. }), "{e}");
    assert!(started.elapsed() < Duration::from_secs(2));
}

/// `prepare` refuses what every run would refuse: fuel for a native guest (unless best-effort).
#[test]
fn prepare_refuses_fuel_for_a_native_guest_as_a_run_would() {
    let guest = or_skip!(hostile(), "no micro-VM");
    let sb = sandbox(Policy { fuel: Some(1_000_000), ..base() });
    let err = sb.prepare(&Program::path(&guest).arg("exit")).unwrap_err();
    assert!(matches!(err, sandcell::Error::Unenforceable { field: sandcell::PolicyField::Fuel, .. }), "{err}");
    let run_err = sb.run(&Program::path(&guest).arg("exit")).unwrap_err();
    assert_eq!(run_err.kind(), err.kind());
    let lenient = sandbox(Policy { fuel: Some(1_000_000), best_effort: true, ..base() });
    let out = lenient.prepare(&Program::path(&guest).args(["exit", "3"])).unwrap().run().unwrap();
    assert_eq!(out.status, Status::Exited(3));
    assert!(out.skipped.contains_key(&sandcell::PolicyField::Fuel));
}

/// The residue line a run restored from a clean snapshot must print.
const CLEAN: &str = "residue: 0 markers, 0 runs, xmm15 0x0, xmm14 0x0";

/// Runs of a prepared program restore its snapshot into a pooled VM: whatever a run leaves in
/// memory (heap, stack, statics) or registers (general, SSE), the next run sees the snapshot.
#[test]
fn prepared_runs_reuse_a_vm_and_see_nothing_an_earlier_run_left() {
    let guest = or_skip!(hostile(), "no micro-VM");
    let sb = sandbox(base());
    // The marker search finds what it looks for (a plain run that plants, then counts).
    let planted = sb.run(&Program::path(&guest).args(["find_secret", "plant"])).unwrap();
    assert!(text(&planted.stdout).starts_with("found ") && !text(&planted.stdout).contains("found 0 "));
    let prepared = sb.prepare(&Program::path(&guest).arg("residue")).unwrap();
    for i in 0..5 {
        let out = prepared.run().unwrap();
        assert_eq!(out.status, Status::Exited(0), "run {i}: {}", text(&out.stderr));
        assert_eq!(text(&out.stdout).trim(), CLEAN, "run {i}");
        assert_eq!(out.usage.artifact, Some(sandcell::ArtifactSource::Prepared));
    }
    let stats = prepared.pool_stats().expect("a micro-VM prepared program has a pool");
    // The pool starts with its default two VMs; runs alternate between them.
    assert_eq!((stats.hits, stats.misses, stats.idle), (5, 0, sandcell::DEFAULT_POOL_SIZE as u64), "{stats:?}");
    assert!(stats.snapshot_bytes > 0 && stats.snapshot_bytes < 4 << 20, "{stats:?}");
}

/// A run stopped by its timeout, or one that traps, leaves a VM that is restored like any other.
#[test]
fn a_pooled_vm_comes_back_clean_after_a_timeout_and_a_trap() {
    let guest = or_skip!(hostile(), "no micro-VM");
    let sb = sandbox(base());
    let spin = sb.prepare(&Program::path(&guest).arg("spin")).unwrap();
    let out = spin.run_with(RunOptions::new().timeout(Duration::from_millis(100))).unwrap();
    assert_eq!(out.status, Status::Timeout);
    let out = spin.run_with(RunOptions::new().timeout(Duration::from_millis(100))).unwrap();
    assert_eq!(out.status, Status::Timeout);
    assert_eq!(spin.pool_stats().unwrap().hits, 2);
    let residue = sb.prepare(&Program::path(&guest).arg("residue")).unwrap();
    let interrupt = InterruptHandle::new();
    let stopper = interrupt.clone();
    std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(50));
        stopper.interrupt();
    });
    // Planted, then stopped while running: the interrupt lands during or after the run.
    let _ = residue.run_with(RunOptions::new().interrupt(interrupt)).unwrap();
    let out = residue.run().unwrap();
    assert_eq!(text(&out.stdout).trim(), CLEAN);
}

/// A pool keeps at most its size, makes a VM when none is idle (a miss), and destroys VMs idle
/// past the timeout (evictions), even when no run comes.
#[test]
fn a_pool_is_bounded_counts_misses_and_evicts_idle_vms() {
    let guest = or_skip!(hostile(), "no micro-VM");
    let sb: Arc<dyn Sandbox> = Arc::from(sandbox(base()));
    let options = sandcell::PrepareOptions::new().pool_size(2).idle_timeout(Duration::from_millis(300));
    let prepared = Arc::new(sb.prepare_with(&Program::path(&guest).arg("residue"), &options).unwrap());
    std::thread::scope(|s| {
        for _ in 0..4 {
            let p = prepared.clone();
            s.spawn(move || {
                for _ in 0..3 {
                    let out = p.run().unwrap();
                    assert_eq!(text(&out.stdout).trim(), CLEAN);
                }
            });
        }
    });
    let stats = prepared.pool_stats().unwrap();
    assert_eq!(stats.hits + stats.misses, 12, "{stats:?}");
    assert!(stats.idle <= 2, "{stats:?}");
    let deadline = Instant::now() + Duration::from_secs(5);
    while prepared.pool_stats().unwrap().idle > 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    let later = prepared.pool_stats().unwrap();
    assert_eq!(later.idle, 0, "idle VMs outlived the idle timeout: {later:?}");
    assert!(later.evictions >= 1, "{later:?}");
    // After eviction a run still works (a miss).
    assert_eq!(text(&prepared.run().unwrap().stdout).trim(), CLEAN);
    assert_eq!(prepared.pool_stats().unwrap().misses, later.misses + 1);
    // Pool size 0: every run makes its VM from the snapshot.
    let none =
        sb.prepare_with(&Program::path(&guest).arg("residue"), &sandcell::PrepareOptions::new().pool_size(0)).unwrap();
    for _ in 0..2 {
        assert_eq!(text(&none.run().unwrap().stdout).trim(), CLEAN);
    }
    assert_eq!(none.pool_stats().unwrap().hits, 0);
    let too_big =
        sb.prepare_with(&Program::path(&guest).arg("residue"), &sandcell::PrepareOptions::new().pool_size(100_000));
    assert!(too_big.unwrap_err().to_string().contains("at most"));
}

/// `until_ready`: the program's start-up runs once; every run continues after `ready()` with
/// its own stdin, sees the start-up's state but nothing of earlier runs, and draws fresh
/// randomness (RDRAND).
#[test]
fn a_snapshot_after_ready_starts_each_run_after_the_start_up() {
    let guest = or_skip!(hostile(), "no micro-VM");
    let sb = sandbox(base());
    let options = sandcell::PrepareOptions::new().until_ready(true);
    let prepared = sb.prepare_with(&Program::path(&guest).args(["ready", "50000000", "check"]), &options).unwrap();
    let mut randoms = std::collections::HashSet::new();
    let mut tokens = std::collections::HashSet::new();
    for input in ["first", "second", "third"] {
        let started = Instant::now();
        let out = prepared.run_with(RunOptions::new().stdin(input.as_bytes().to_vec())).unwrap();
        let elapsed = started.elapsed();
        assert_eq!(out.status, Status::Exited(0), "{}", text(&out.stderr));
        let stdout = text(&out.stdout);
        assert!(!stdout.contains("before ready"), "{stdout}");
        assert!(
            stdout.starts_with(&format!(
                "input {input:?}, initialised 42, residue 0 markers 0 runs xmm15 0x0 xmm14 0x0, token "
            )),
            "{stdout}"
        );
        tokens.insert(field(&stdout, "token"));
        assert!(stdout.trim_end().ends_with("preparing false"), "{stdout}");
        randoms.insert(field(&stdout, "rdrand"));
        // The start-up loop is not run again (it takes far longer than a restored run).
        assert!(elapsed < Duration::from_secs(2), "{elapsed:?}");
    }
    assert_eq!(randoms.len(), 3, "RDRAND repeated across restored runs: {randoms:?}");
    // What the guest drew before ready is part of the snapshot: shared (documented).
    assert_eq!(tokens.len(), 1, "{tokens:?}");
    // A streamed stdin reaches the restored guest too.
    let (r, mut w) = common::pipe();
    std::io::Write::write_all(&mut w, b"streamed").unwrap();
    drop(w);
    let out = prepared.run_with(RunOptions::new().stdin_reader(r)).unwrap();
    assert!(text(&out.stdout).starts_with("input \"streamed\""), "{}", text(&out.stdout));
}

/// What `until_ready` cannot do is refused: a program that ends before it is ready (native or
/// WASI), a guest with several vCPUs; and the other backends refuse pool options.
#[test]
fn until_ready_refuses_what_it_cannot_snapshot() {
    let guest = or_skip!(hostile(), "no micro-VM");
    let sb = sandbox(base());
    let options = sandcell::PrepareOptions::new().until_ready(true);
    let err = sb.prepare_with(&Program::path(&guest).args(["exit", "3"]), &options).unwrap_err();
    assert!(err.to_string().contains("did not say it was ready") && err.to_string().contains("code 3"), "{err}");
    let sb_short = sandbox(Policy { timeout: Some(Duration::from_millis(200)), ..base() });
    let err2 = sb_short.prepare_with(&Program::path(&guest).arg("spin"), &options).unwrap_err();
    assert!(err2.to_string().contains("timeout") || err2.to_string().contains("time"), "{err2}");
    let multi = sandbox(Policy { cpus: Some(2), ..base() });
    let err = multi.prepare_with(&Program::path(&guest).arg("ready"), &options).unwrap_err();
    assert!(matches!(err, sandcell::Error::Unsupported { .. }), "{err}");
    // A WASI module that never writes /run/sandcell/ready ends before it is ready.
    let wasm = sb.prepare_with(&Program::path(common::repo().join("examples/hello.wat")), &options).unwrap_err();
    assert!(wasm.to_string().contains("did not say it was ready"), "{wasm}");
    let wasm_sb = SandboxBuilder::new(BackendKind::Wasm).build().unwrap();
    let err = wasm_sb
        .prepare_with(
            &Program::path(common::repo().join("examples/hello.wat")),
            &sandcell::PrepareOptions::new().pool_size(2),
        )
        .unwrap_err();
    assert!(matches!(err, sandcell::Error::Unsupported { backend: BackendKind::Wasm, .. }), "{err}");
}

/// The hex word after `name ` in a line of the hostile guest's output.
fn field(line: &str, name: &str) -> String {
    let at = line.find(&format!("{name} ")).unwrap_or_else(|| panic!("no {name} in {line}")) + name.len() + 1;
    line[at..].chars().take_while(char::is_ascii_hexdigit).collect()
}

/// A snapshot saved to a file is loaded by another sandbox (as another process would): its runs
/// continue after the start-up without running it again; a file altered, truncated, sealed
/// with another key, made by another version, under another policy or for another program is
/// refused with the reason, and never run.
#[test]
fn snapshot_files_load_elsewhere_and_anything_else_is_refused() {
    let guest = or_skip!(hostile(), "no micro-VM");
    let cache = common::TempDir::new("snap-cache");
    let dir = common::TempDir::new("snap");
    let file = dir.path().join("ready.snap");
    let make = |policy: Policy, cache: &std::path::Path| {
        SandboxBuilder::new(BackendKind::MicroVm).policy(policy).cache_dir(cache).build().unwrap()
    };
    let program = Program::path(&guest).args(["ready", "1000", "check"]);
    let sb = make(base(), cache.path());
    let prepared = sb.prepare_with(&program, &sandcell::PrepareOptions::new().until_ready(true)).unwrap();
    let first = text(&prepared.run_with(RunOptions::new().stdin(b"a".to_vec())).unwrap().stdout);
    prepared.save_snapshot(&file).unwrap();
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&file).unwrap().permissions()) & 0o777,
        0o600
    );

    let other = make(base(), cache.path());
    let from_file = sandcell::PrepareOptions::new().snapshot_file(&file);
    let loaded = other.prepare_with(&program, &from_file).unwrap();
    let out = loaded.run_with(RunOptions::new().stdin(b"b".to_vec())).unwrap();
    let second = text(&out.stdout);
    assert!(second.starts_with("input \"b\", initialised 42, residue 0 markers 0 runs"), "{second}");
    assert_eq!(field(&first, "token"), field(&second, "token"), "the start-up ran again");
    assert_ne!(field(&first, "rdrand"), field(&second, "rdrand"));

    let refused = |sandbox: &dyn Sandbox, program: &Program, needle: &str| {
        let e = sandbox.prepare_with(program, &from_file).unwrap_err();
        assert!(e.to_string().contains(needle), "expected `{needle}`: {e}");
    };
    let good = std::fs::read(&file).unwrap();
    // Altered anywhere: a data byte, the header.
    for at in [good.len() - 100, 50] {
        let mut bad = good.clone();
        bad[at] ^= 1;
        std::fs::write(&file, &bad).unwrap();
        refused(&*other, &program, "does not verify");
    }
    std::fs::write(&file, &good[..good.len() / 2]).unwrap();
    refused(&*other, &program, "does not verify");
    std::fs::write(&file, b"not a snapshot").unwrap();
    refused(&*other, &program, "not a sandcell snapshot");
    std::fs::write(&file, &good).unwrap();
    // Another cache's key.
    let elsewhere = common::TempDir::new("snap-other");
    refused(&*make(base(), elsewhere.path()), &program, "does not verify");
    // Another policy; another program.
    refused(
        &*make(Policy { env: [("X".into(), "1".into())].into(), ..base() }, cache.path()),
        &program,
        "another policy",
    );
    refused(&*other, &Program::path(common::vm_guest("hello").unwrap()), "another program");
    // The same binary with other arguments or environment: what it read before ready differs.
    refused(&*other, &Program::path(&guest).args(["ready", "1000", "check", "x"]), "another program");
    refused(&*other, &program.clone().env("K", "V"), "another program");
    // Not through a symlink; not a FIFO.
    let link = dir.join("link.snap");
    std::os::unix::fs::symlink(&file, &link).unwrap();
    let e = other.prepare_with(&program, &sandcell::PrepareOptions::new().snapshot_file(&link)).unwrap_err();
    assert!(e.to_string().contains("cannot be used"), "{e}");
    let fifo = dir.join("fifo.snap");
    assert!(std::process::Command::new("mkfifo").arg(&fifo).status().unwrap().success());
    let e = other.prepare_with(&program, &sandcell::PrepareOptions::new().snapshot_file(&fifo)).unwrap_err();
    assert!(e.to_string().contains("not a regular file"), "{e}");
    // Sealed with the right key but made by another version, or on another CPU.
    let key = std::fs::read(cache.path().join("key")).unwrap();
    for (from, to, needle) in [
        ("\"sandcell\":\"", "\"sandcell\":\"0.0.0-", "made by sandcell 0.0.0-"),
        ("\"cpu\":\"", "\"cpu\":\"00", "another model"),
    ] {
        let payload = &good[40..];
        let json_len = u32::from_le_bytes(payload[..4].try_into().unwrap()) as usize;
        let json = String::from_utf8(payload[4..4 + json_len].to_vec()).unwrap().replacen(from, to, 1);
        let mut p = (json.len() as u32).to_le_bytes().to_vec();
        p.extend_from_slice(json.as_bytes());
        p.extend_from_slice(&payload[4 + json_len..]);
        use hmac::Mac;
        let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(&key).unwrap();
        mac.update(b"snapshot\0");
        mac.update(&p);
        let mut forged = b"SCSNAP01".to_vec();
        forged.extend_from_slice(&mac.finalize().into_bytes());
        forged.extend_from_slice(&p);
        std::fs::write(&file, &forged).unwrap();
        refused(&*other, &program, needle);
    }
    // No cache, no snapshot files; until_ready with a file is contradictory.
    let uncached = sandbox(base());
    let e = uncached
        .prepare_with(&program, &sandcell::PrepareOptions::new().until_ready(true))
        .unwrap()
        .save_snapshot(&file);
    assert!(matches!(e, Err(sandcell::Error::Unsupported { .. })), "{e:?}");
    let both = sandcell::PrepareOptions::new().snapshot_file(&file).until_ready(true);
    assert!(other.prepare_with(&program, &both).is_err());
    // Backends without snapshots refuse to save one.
    let wasm = SandboxBuilder::new(BackendKind::Wasm).build().unwrap();
    let p = wasm.prepare(&Program::path(common::repo().join("examples/hello.wat"))).unwrap();
    assert!(matches!(p.save_snapshot(&file), Err(sandcell::Error::Unsupported { backend: BackendKind::Wasm, .. })));
}

/// A WASI module prepared on the micro-VM starts each run from its instantiated state (the
/// snapshot the runtime takes before `_start`): what a run writes to its linear memory or
/// globals is gone in the next, and `random_get` is fresh in each.
#[test]
fn prepared_wasi_runs_start_from_the_instantiated_module_and_draw_fresh_randomness() {
    or_skip!(available(), "no micro-VM");
    let wat = r#"(module
      (import "wasi_snapshot_preview1" "fd_write" (func $w (param i32 i32 i32 i32) (result i32)))
      (import "wasi_snapshot_preview1" "random_get" (func $r (param i32 i32) (result i32)))
      (memory (export "memory") 1)
      (global $g (mut i32) (i32.const 48))
      (data (i32.const 100) "0")
      (func (export "_start")
        ;; memory[100] and the global: each run adds one and prints both ("11" when fresh)
        (i32.store8 (i32.const 100) (i32.add (i32.load8_u (i32.const 100)) (i32.const 1)))
        (global.set $g (i32.add (global.get $g) (i32.const 1)))
        (i32.store8 (i32.const 101) (global.get $g))
        ;; then 16 random bytes
        (drop (call $r (i32.const 102) (i32.const 16)))
        (i32.store (i32.const 0) (i32.const 100))
        (i32.store (i32.const 4) (i32.const 18))
        (drop (call $w (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8)))))"#;
    let sb = sandbox(base());
    let prepared = sb.prepare(&Program::bytes(wat.as_bytes().to_vec())).unwrap();
    let mut randoms = std::collections::HashSet::new();
    for _ in 0..4 {
        let out = prepared.run().unwrap();
        assert_eq!(out.status, Status::Exited(0), "{}", text(&out.stderr));
        assert_eq!(&out.stdout[..2], b"11", "state of an earlier run was visible");
        randoms.insert(out.stdout[2..].to_vec());
    }
    assert_eq!(randoms.len(), 4, "random_get repeated across runs");
    assert_eq!(prepared.pool_stats().unwrap().hits, 4);
}

/// A WASI program says it is ready by writing `/run/sandcell/ready` (here Rust's `std::fs::write`):
/// prepared until ready on the micro-VM, its start-up runs once and every run continues after
/// the write with its own stdin, the start-up's state, nothing of earlier runs, fresh
/// randomness; a program with files open at that point is refused. Unprepared, on either WASI
/// backend, the write succeeds and does nothing.
#[test]
fn a_wasi_program_says_ready_by_writing_run_sandcell_ready() {
    or_skip!(available(), "no micro-VM");
    let guest = or_skip!(common::wasm_guest(), "no wasm test guest");
    let sb = sandbox(base());
    let options = sandcell::PrepareOptions::new().until_ready(true);
    let prepared = sb.prepare_with(&Program::path(guest).arg("ready").name("testguest"), &options).unwrap();
    let mut randoms = std::collections::HashSet::new();
    for input in ["one", "two", "three"] {
        let out = prepared.run_with(RunOptions::new().stdin(input.as_bytes().to_vec())).unwrap();
        assert_eq!(out.status, Status::Exited(0), "{}", text(&out.stderr));
        let stdout = text(&out.stdout);
        assert!(!stdout.contains("before ready"), "{stdout}");
        assert!(
            stdout.starts_with(&format!("ready Ok(()), input {input:?}, table 49950000, run 1, random ")),
            "{stdout}"
        );
        assert!(stdout.trim_end().ends_with("kept false"), "{stdout}");
        randoms.insert(field(&stdout, "random"));
    }
    assert_eq!(randoms.len(), 3, "{randoms:?}");
    let open = sb.prepare_with(&Program::path(guest).args(["ready", "keep-open"]).name("testguest"), &options);
    let e = open.unwrap_err().to_string();
    assert!(e.contains("files open"), "{e}");
    for backend in [BackendKind::MicroVm, BackendKind::Wasm] {
        let plain = SandboxBuilder::new(backend).policy(base()).build().unwrap();
        let out = plain.run(&Program::path(guest).arg("ready").name("testguest").stdin(b"x".to_vec())).unwrap();
        let stdout = text(&out.stdout);
        assert!(stdout.starts_with("before ready"), "{backend:?}: {stdout}");
        assert!(stdout.contains("ready Ok(()), input \"x\""), "{backend:?}: {stdout}");
    }
}
