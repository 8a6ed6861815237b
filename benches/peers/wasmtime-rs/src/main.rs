//! `wasmtime-peer [--pooling] RUNS MODULE [ARGS...]`: runs a WASI command RUNS times the way an
//! embedder serving requests would with wasmtime's Rust API — the module compiled once, its
//! imports resolved once (`InstancePre`), then per run a fresh WASI context (arguments, output to
//! a memory pipe), store, instance and `_start` — and prints the median and 90th percentile of a
//! run as JSON. `--pooling` uses wasmtime's pooling instance allocator.

use std::time::Instant;

use wasmtime::{Config, Engine, InstanceAllocationStrategy, Linker, Module, PoolingAllocationConfig, Store};
use wasmtime_wasi::p1::{self, WasiP1Ctx};
use wasmtime_wasi::p2::pipe::MemoryOutputPipe;
use wasmtime_wasi::{I32Exit, WasiCtxBuilder};

fn main() -> wasmtime::Result<()> {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    let pooling = args.first().is_some_and(|a| a == "--pooling");
    if pooling {
        args.remove(0);
    }
    let runs: usize = args.first().and_then(|r| r.parse().ok()).expect("usage: wasmtime-peer [--pooling] RUNS MODULE [ARGS...]");
    let guest_args = &args[1..];
    let mut config = Config::new();
    if pooling {
        config.allocation_strategy(InstanceAllocationStrategy::Pooling(PoolingAllocationConfig::default()));
    }
    let engine = Engine::new(&config)?;
    let module = Module::from_file(&engine, &guest_args[0])?;
    let mut linker: Linker<WasiP1Ctx> = Linker::new(&engine);
    p1::add_to_linker_sync(&mut linker, |t| t)?;
    let pre = linker.instantiate_pre(&module)?;
    let mut times = Vec::with_capacity(runs);
    let mut last = Vec::new();
    for _ in 0..runs {
        let started = Instant::now();
        let stdout = MemoryOutputPipe::new(1 << 20);
        let ctx = WasiCtxBuilder::new().args(guest_args).stdout(stdout.clone()).build_p1();
        let mut store = Store::new(&engine, ctx);
        let instance = pre.instantiate(&mut store)?;
        let start = instance.get_typed_func::<(), ()>(&mut store, "_start")?;
        if let Err(e) = start.call(&mut store, ()) {
            match e.downcast_ref::<I32Exit>() {
                Some(I32Exit(0)) => {}
                _ => return Err(e),
            }
        }
        drop(store);
        times.push(started.elapsed().as_secs_f64() * 1e6);
        last = stdout.contents().to_vec();
    }
    times.sort_by(f64::total_cmp);
    let median = times[times.len() / 2];
    let p90 = times[((times.len() as f64 * 0.9).ceil() as usize).clamp(1, times.len()) - 1];
    println!(
        "{{\"pooling\": {pooling}, \"runs\": {runs}, \"median_us\": {median:.1}, \"p90_us\": {p90:.1}, \"stdout_bytes\": {}}}",
        last.len()
    );
    Ok(())
}
