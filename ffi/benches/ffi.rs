//! What the C ABI adds to one run.
//!
//! - `ffi/rust_api`: `Sandbox::run` of the cached hello world through the Rust API, reading its
//!   stdout.
//! - `ffi/c_api`: the same run through `libsandcell.so`, loaded with `dlopen` as a C program
//!   loads it: `sandcell_sandbox_run`, `sandcell_outcome_status`, `sandcell_outcome_output`,
//!   `sandcell_outcome_free` — handle checks, panic guards and the outcome handle included.
//!
//! Run: `cargo build --release -p sandcell-ffi && cargo bench -p sandcell-ffi --bench ffi`;
//! `scripts/bench-report.py ffi` does both and adds the Python
//! package's figure (`python/bench_overhead.py`) measured in the same session.

use std::ffi::{c_char, c_void, CString};
use std::ptr;

use criterion::{criterion_group, criterion_main, Criterion};
use sandcell::{BackendKind, Policy, Program, SandboxBuilder};

const HELLO: &str = include_str!("../../examples/hello.wat");
const STATUS_EXITED: u32 = 1;
const STREAM_STDOUT: u32 = 1;

type Err = *mut c_void;

/// The functions the benchmark calls, looked up in libsandcell.so.
struct Abi {
    policy_new: unsafe extern "C" fn(*mut *mut c_void) -> Err,
    policy_set_memory: unsafe extern "C" fn(*mut c_void, u64) -> Err,
    sandbox_new: unsafe extern "C" fn(*const c_char, *const c_void, *const c_char, *mut *mut c_void) -> Err,
    program_from_bytes: unsafe extern "C" fn(*const u8, usize, *mut *mut c_void) -> Err,
    sandbox_run: unsafe extern "C" fn(*const c_void, *const c_void, *const c_void, *mut *mut c_void) -> Err,
    outcome_status: unsafe extern "C" fn(*const c_void, *mut u32, *mut i32) -> Err,
    outcome_output: unsafe extern "C" fn(*const c_void, u32, *mut *const u8, *mut usize) -> Err,
    outcome_free: unsafe extern "C" fn(*mut c_void),
}

/// Loads `libsandcell.so` from the profile directory this benchmark was built into.
#[allow(clippy::missing_transmute_annotations)] // each target type is the `Abi` field's
fn load() -> Abi {
    let exe = std::env::current_exe().unwrap();
    let lib = exe.parent().and_then(|deps| deps.parent()).unwrap().join("libsandcell.so");
    assert!(lib.exists(), "{} is not built: run `cargo build --release -p sandcell-ffi` first", lib.display());
    let path = CString::new(lib.to_str().unwrap()).unwrap();
    // SAFETY: dlopen/dlsym with NUL-terminated names; each symbol is cast to the type its
    // declaration in include/sandcell.h gives it.
    unsafe {
        let handle = libc::dlopen(path.as_ptr(), libc::RTLD_NOW | libc::RTLD_LOCAL);
        assert!(!handle.is_null(), "dlopen {} failed", lib.display());
        let sym = |name: &str| {
            let c = CString::new(name).unwrap();
            let p = libc::dlsym(handle, c.as_ptr());
            assert!(!p.is_null(), "{name} missing from libsandcell.so");
            p
        };
        Abi {
            policy_new: std::mem::transmute::<*mut c_void, _>(sym("sandcell_policy_new")),
            policy_set_memory: std::mem::transmute::<*mut c_void, _>(sym("sandcell_policy_set_memory")),
            sandbox_new: std::mem::transmute::<*mut c_void, _>(sym("sandcell_sandbox_new")),
            program_from_bytes: std::mem::transmute::<*mut c_void, _>(sym("sandcell_program_from_bytes")),
            sandbox_run: std::mem::transmute::<*mut c_void, _>(sym("sandcell_sandbox_run")),
            outcome_status: std::mem::transmute::<*mut c_void, _>(sym("sandcell_outcome_status")),
            outcome_output: std::mem::transmute::<*mut c_void, _>(sym("sandcell_outcome_output")),
            outcome_free: std::mem::transmute::<*mut c_void, _>(sym("sandcell_outcome_free")),
        }
    }
}

fn benches(c: &mut Criterion) {
    let sandbox = SandboxBuilder::new(BackendKind::Wasm)
        .policy(Policy::builder().memory(64 << 20).build().unwrap())
        .build()
        .unwrap();
    let hello = Program::bytes(HELLO.as_bytes().to_vec());
    c.bench_function("ffi/rust_api", |b| {
        b.iter(|| {
            let out = sandbox.run(&hello).unwrap();
            assert_eq!(out.stdout.len(), 14);
            out
        })
    });

    let abi = load();
    // SAFETY: the C ABI used as its header documents: every out-parameter is valid, and the
    // handles stay alive for the whole benchmark (the process exits after it).
    unsafe {
        let mut policy = ptr::null_mut();
        assert!((abi.policy_new)(&mut policy).is_null());
        assert!((abi.policy_set_memory)(policy, 64 << 20).is_null());
        let mut sb = ptr::null_mut();
        assert!((abi.sandbox_new)(c"wasm".as_ptr(), policy, ptr::null(), &mut sb).is_null());
        let mut program = ptr::null_mut();
        assert!((abi.program_from_bytes)(HELLO.as_ptr(), HELLO.len(), &mut program).is_null());
        c.bench_function("ffi/c_api", |b| {
            b.iter(|| {
                let mut outcome = ptr::null_mut();
                assert!((abi.sandbox_run)(sb, program, ptr::null(), &mut outcome).is_null());
                let (mut status, mut code) = (0u32, 0i32);
                assert!((abi.outcome_status)(outcome, &mut status, &mut code).is_null());
                let (mut data, mut len) = (ptr::null(), 0usize);
                assert!((abi.outcome_output)(outcome, STREAM_STDOUT, &mut data, &mut len).is_null());
                assert_eq!((status, code, len), (STATUS_EXITED, 0, 14));
                (abi.outcome_free)(outcome);
            })
        });
    }
}

criterion_group!(name = ffi; config = Criterion::default().sample_size(50); targets = benches);
criterion_main!(ffi);
