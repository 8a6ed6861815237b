//! Wasm backend benchmarks.
//!
//! - `wasm/compile`: compile a WASI module (the 14-line hello world) with Cranelift, cache bypassed.
//! - `wasm/hello_cached`: run the cached hello world end to end: fresh store, WASI environment,
//!   instantiate, `_start`, captured stdout, teardown — what `Sandbox::run` costs per run.
//! - `wasm/export_call_fresh_instance`: call an `add` export on a fresh instance of a cached module.
//! - `wasm/hello_prepared`: the hello world from `Sandbox::prepare`.
//! - `cpython/print1_cached` and `cpython/print1_prepared`: CPython for WASI running
//!   `-c "print(1)"`, plain (the module read and looked up per run) and prepared. Only when
//!   `SANDCELL_CPYTHON_WASM` names the module (`scripts/fetch-interpreters.sh` fetches the pinned
//!   one and prints its path).
//!
//! Run: `cargo bench --bench wasm`; `scripts/bench-report` puts the figures next to wasmtime's.

use criterion::{criterion_group, criterion_main, Criterion};
use sandcell::{BackendKind, Policy, Program, Sandbox, SandboxBuilder, Status};

const HELLO: &str = include_str!("../examples/hello.wat");
const ADD: &str =
    r#"(module (func (export "add") (param i32 i32) (result i32) (i32.add (local.get 0) (local.get 1))))"#;

fn benches(c: &mut Criterion) {
    let policy = Policy::builder().memory(64 << 20).build().unwrap();
    let wasm = SandboxBuilder::new(BackendKind::Wasm).policy(policy.clone()).build_wasm().unwrap();

    let mut n = 0u64;
    c.bench_function("wasm/compile", |b| {
        b.iter(|| {
            // A distinct export name per iteration gives a distinct module, so the cache misses.
            n += 1;
            let src = HELLO.replacen("(export \"_start\")", &format!("(export \"_start\") (export \"x{n}\")"), 1);
            wasm.precompile(&Program::bytes(src.into_bytes())).unwrap()
        })
    });

    let sandbox: Box<dyn Sandbox> = SandboxBuilder::new(BackendKind::Wasm).policy(policy).build().unwrap();
    let hello = Program::bytes(HELLO.as_bytes().to_vec());
    assert_eq!(sandbox.run(&hello).unwrap().stdout, b"Hello, world!\n");
    c.bench_function("wasm/hello_cached", |b| {
        b.iter(|| {
            let out = sandbox.run(&hello).unwrap();
            debug_assert_eq!(out.status, Status::Exited(0));
            out
        })
    });

    let prepared = sandbox.prepare(&hello).unwrap();
    c.bench_function("wasm/hello_prepared", |b| b.iter(|| prepared.run().unwrap()));

    if let Some(python) = std::env::var_os("SANDCELL_CPYTHON_WASM") {
        let python = Program::path(python).args(["-c", "print(1)"]);
        assert_eq!(sandbox.run(&python).unwrap().stdout, b"1\n");
        let mut group = c.benchmark_group("cpython");
        group.sample_size(20);
        group.bench_function("print1_cached", |b| b.iter(|| sandbox.run(&python).unwrap()));
        let prepared = sandbox.prepare(&python).unwrap();
        group.bench_function("print1_prepared", |b| b.iter(|| prepared.run().unwrap()));
        group.finish();
    } else {
        eprintln!("cpython/*: skipped (set SANDCELL_CPYTHON_WASM, see scripts/fetch-interpreters.sh)");
    }

    let add = Program::bytes(ADD.as_bytes().to_vec()).entry("add").args(["1", "2"]);
    assert_eq!(sandbox.run(&add).unwrap().stdout, b"3\n");
    c.bench_function("wasm/export_call_fresh_instance", |b| b.iter(|| sandbox.run(&add).unwrap()));
}

criterion_group!(name = wasm; config = Criterion::default().sample_size(50); targets = benches);
criterion_main!(wasm);
