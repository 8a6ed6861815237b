//! Micro-VM benchmarks, each from nothing to the result:
//!
//! - `microvm/kvm_floor`: the raw KVM floor with kvm-ioctls — create a VM, give it 64 KiB of
//!   memory, create a vCPU, set its registers, run a real-mode `out` to the first exit, tear
//!   down — measured while a micro-VM sandbox exists in the process, i.e. under the same
//!   conditions as sandcell's runs (its keeper VM holds KVM's static keys; see
//!   `src/backend/microvm/vm.rs`). Nothing sandcell does can be faster than this here.
//! - `microvm/kvm_floor_deferred`: the same, with the VM and vCPU handed to another thread to
//!   be closed there — as sandcell hands each finished VM to its reaper thread.
//! - `microvm/kvm_floor_only_vm`: the same, measured first, while this VM is the only one on
//!   the host (KVM then rewrites kernel code on every create and destroy).
//! - `microvm/native_hello`: `Sandbox::run` of the native hello guest (`guest/examples/hello`):
//!   a new VM from the cached image, run, captured output; the VM is destroyed on sandcell's
//!   reaper thread (in the loop, that competes with the next runs for the CPUs).
//! - `microvm/wasi_hello`: the same for `examples/hello.wat` (the wasm runtime in the VM, WASI
//!   served by the host).
//!
//! Run: `cargo bench --bench microvm` (needs /dev/kvm and the guest built:
//! `CARGO_TARGET_DIR=target/guest cargo build --manifest-path guest/Cargo.toml --release --target x86_64-unknown-none -p hello`; the tests build it there too).

use criterion::{criterion_group, criterion_main, Criterion};
use kvm_bindings::kvm_userspace_memory_region;
use kvm_ioctls::{Kvm, VcpuExit};
use sandcell::{BackendKind, Policy, Program, SandboxBuilder, Status};

fn kvm_floor(kvm: &Kvm, mem: *mut u8) {
    drop(kvm_floor_keep(kvm, mem));
}

fn kvm_floor_keep(kvm: &Kvm, mem: *mut u8) -> (kvm_ioctls::VmFd, kvm_ioctls::VcpuFd) {
    let vm = kvm.create_vm().unwrap();
    let region = kvm_userspace_memory_region {
        slot: 0,
        flags: 0,
        guest_phys_addr: 0,
        memory_size: 0x10000,
        userspace_addr: mem as u64,
    };
    // SAFETY: `mem` is a live 64 KiB anonymous mapping that outlives the VM.
    unsafe { vm.set_user_memory_region(region).unwrap() };
    let mut vcpu = vm.create_vcpu(0).unwrap();
    let mut sregs = vcpu.get_sregs().unwrap();
    sregs.cs.base = 0;
    sregs.cs.selector = 0;
    vcpu.set_sregs(&sregs).unwrap();
    let regs = kvm_bindings::kvm_regs { rip: 0x1000, rflags: 2, ..Default::default() };
    vcpu.set_regs(&regs).unwrap();
    match vcpu.run().unwrap() {
        VcpuExit::IoOut(0x10, _) => {}
        other => panic!("unexpected exit {other:?}"),
    }
    (vm, vcpu)
}

fn benches(c: &mut Criterion) {
    if !sandcell::probe().backend(BackendKind::MicroVm).available {
        eprintln!("microvm backend unavailable: {}", sandcell::probe().backend(BackendKind::MicroVm).reason);
        return;
    }
    let kvm = Kvm::new().unwrap();
    // SAFETY: an anonymous private mapping of 64 KiB, unmapped at the end.
    let mem = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            0x10000,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    } as *mut u8;
    // mov al, 0x42; out 0x10, al; hlt
    // SAFETY: the mapping is 64 KiB long.
    unsafe { std::ptr::copy_nonoverlapping([0xb0u8, 0x42, 0xe6, 0x10, 0xf4].as_ptr(), mem.add(0x1000), 5) };
    // Before any sandbox exists in this process.
    c.bench_function("microvm/kvm_floor_only_vm", |b| b.iter(|| kvm_floor(&kvm, mem)));

    let sandbox = SandboxBuilder::new(BackendKind::MicroVm)
        .policy(Policy::builder().memory(64 << 20).build().unwrap())
        .build()
        .unwrap();
    // The keeper VM (see `src/backend/microvm/vm.rs`) is the first VM a sandbox destroys: one
    // run first, so that the floor is measured in the conditions sandcell's own runs have.
    let _ = sandbox.run(&Program::bytes(include_bytes!("../examples/hello.wat").to_vec()));
    c.bench_function("microvm/kvm_floor", |b| b.iter(|| kvm_floor(&kvm, mem)));
    let (tx, rx) = std::sync::mpsc::channel::<(kvm_ioctls::VmFd, kvm_ioctls::VcpuFd)>();
    std::thread::spawn(move || {
        for x in rx {
            drop(x)
        }
    });
    c.bench_function("microvm/kvm_floor_deferred", |b| b.iter(|| tx.send(kvm_floor_keep(&kvm, mem)).unwrap()));
    let hello = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/guest/x86_64-unknown-none/release/hello");
    if hello.exists() {
        let program = Program::path(&hello);
        assert_eq!(sandbox.run(&program).unwrap().status, Status::Exited(0));
        c.bench_function("microvm/native_hello", |b| b.iter(|| sandbox.run(&program).unwrap()));
        // Prepared: each run restores the snapshot into the pooled VM (see warm.rs).
        let prepared = sandbox.prepare(&program).unwrap();
        c.bench_function("microvm/native_hello_restored", |b| b.iter(|| prepared.run().unwrap()));
        // Runs per second on this machine's CPUs: one thread per CPU, each with its own
        // prepared program (own pool), 200 runs each.
        let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
        let preps: Vec<_> = (0..threads).map(|_| sandbox.prepare(&program).unwrap()).collect();
        c.bench_function(&format!("microvm/native_hello_restored_x{threads}_200"), |b| {
            b.iter(|| {
                std::thread::scope(|s| {
                    for p in &preps {
                        s.spawn(move || {
                            for _ in 0..200 {
                                p.run().unwrap();
                            }
                        });
                    }
                })
            })
        });
    } else {
        eprintln!("skipping microvm/native_hello: build guest/examples/hello first");
    }
    let wat = Program::bytes(include_bytes!("../examples/hello.wat").to_vec());
    assert_eq!(sandbox.run(&wat).unwrap().stdout, b"Hello, world!\n");
    c.bench_function("microvm/wasi_hello", |b| b.iter(|| sandbox.run(&wat).unwrap()));
    let prepared = sandbox.prepare(&wat).unwrap();
    c.bench_function("microvm/wasi_hello_restored", |b| b.iter(|| prepared.run().unwrap()));
    drop(prepared);

    // The whole command, as a user types it: `sandcell run --backend wasm|microvm hello.wat`, a
    // new process each time, with the CLI's default artifact cache (warm after the first run).
    let cache = std::env::temp_dir().join(format!("sandcell-bench-cli-{}", std::process::id()));
    let example = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/hello.wat");
    for backend in ["wasm", "microvm"] {
        let command = || {
            let out = std::process::Command::new(env!("CARGO_BIN_EXE_sandcell"))
                .args(["run", "--backend", backend])
                .arg(&example)
                .env("SANDCELL_CACHE_DIR", &cache)
                .stdin(std::process::Stdio::null())
                .output()
                .unwrap();
            assert_eq!(out.stdout, b"Hello, world!\n", "{}", String::from_utf8_lossy(&out.stderr));
        };
        command();
        c.bench_function(&format!("cli/{backend}_hello"), |b| b.iter(command));
    }
    let _ = std::fs::remove_dir_all(&cache);
    // SAFETY: unmapping the mapping made above.
    unsafe { libc::munmap(mem.cast(), 0x10000) };
}

criterion_group!(name = microvm; config = Criterion::default().sample_size(50); targets = benches);
criterion_main!(microvm);
