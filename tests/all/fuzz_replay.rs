//! The fuzz targets' corpora (`fuzz/corpus/<target>/`: seeds, and every crash found, kept as a
//! regression), replayed through the same bodies the fuzzers call (`sandcell::__private::fuzz`),
//! plus a fixed pseudo-random sweep per target. No instrumented build: this runs in every
//! `cargo test`. Long fuzzing runs: `scripts/fuzz.sh`. (The C ABI's corpus is replayed by
//! `sandcell-ffi`'s own unit test.)

use std::path::PathBuf;

use sandcell::__private::fuzz;

include!("../../fuzz/smith.rs");

fn corpus(target: &str) -> Vec<Vec<u8>> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus").join(target);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.expect("corpus entry").path())
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no corpus in {}", dir.display());
    files.iter().map(|f| std::fs::read(f).expect("corpus file")).collect()
}

/// A fixed xorshift sequence: the same inputs on every run.
struct Noise(u64);

impl Noise {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn bytes(&mut self, max: usize) -> Vec<u8> {
        let n = self.next() as usize % (max + 1);
        (0..n).map(|_| self.next() as u8).collect()
    }
}

#[test]
fn policy_json_corpus() {
    for input in corpus("policy_json") {
        fuzz::policy_json(&input);
    }
    let mut noise = Noise(1);
    for input in corpus("policy_json") {
        // Each seed with bytes changed here and there.
        for _ in 0..20 {
            let mut m = input.clone();
            for _ in 0..3 {
                if !m.is_empty() {
                    let i = noise.next() as usize % m.len();
                    m[i] = noise.next() as u8;
                }
            }
            fuzz::policy_json(&m);
        }
    }
}

#[test]
fn process_lowering_corpus() {
    for input in corpus("process_lowering") {
        fuzz::process_lowering(&input);
    }
}

#[test]
fn wasm_module_corpus() {
    let mut ran = 0;
    let mut inputs = corpus("wasm_module");
    let mut noise = Noise(7);
    inputs.extend((0..40).map(|_| noise.bytes(2048)));
    for input in inputs {
        if let Some((wasm, metered)) = smith_module(&input) {
            fuzz::wasm_module(&wasm, metered);
            ran += 1;
        }
    }
    assert!(ran > 20, "wasm-smith made only {ran} modules");
}

#[test]
fn microvm_hypercalls_corpus() {
    for input in corpus("microvm_hypercalls") {
        fuzz::microvm_hypercalls(&input);
    }
    // Every WASI function with its right number of arguments: pointers into the 64 KiB of guest
    // memory, lengths, descriptors and flags, small and huge.
    let mut noise = Noise(3);
    let mut memory = vec![0u8; 64 << 10];
    memory[..16].copy_from_slice(b"file.txt\0sub\0..\0");
    for (i, b) in memory.iter_mut().enumerate().skip(4096) {
        *b = (i * 31 % 251) as u8;
    }
    let mut function = 0;
    while let Some(arity) = fuzz::wasi_arity(function) {
        for round in 0..6 {
            let mut input = memory.clone();
            let mut args = [0u64; 13];
            args[0] = function as u64;
            args[1] = 0; // the guest's linear memory: all 64 KiB
            args[2] = 64 << 10;
            args[3] = arity as u64;
            for a in &mut args[4..4 + arity] {
                *a = match (noise.next() % 5, round) {
                    (_, 0) => 0,
                    (0, _) => noise.next() % 16,     // descriptors, small lengths, flags
                    (1, _) => noise.next() % 65_536, // pointers
                    (2, _) => 65_536 - noise.next() % 16, // pointers at the edge
                    (3, _) => u64::from(u32::MAX) - noise.next() % 4,
                    _ => noise.next(),
                };
            }
            let mut mailbox = Vec::new();
            mailbox.extend_from_slice(&sandcell_abi::MAGIC.to_le_bytes());
            mailbox.extend_from_slice(&sandcell_abi::VERSION.to_le_bytes());
            mailbox.extend_from_slice(&sandcell_abi::op::WASI.to_le_bytes());
            for a in args {
                mailbox.extend_from_slice(&a.to_le_bytes());
            }
            mailbox.resize(sandcell_abi::MAILBOX_BYTES, 0);
            input.extend_from_slice(&mailbox);
            fuzz::microvm_hypercalls(&input);
        }
        function += 1;
    }
    assert!(function > 40, "only {function} WASI functions");
}

#[test]
fn artifact_cache_corpus() {
    for input in corpus("artifact_cache") {
        fuzz::artifact_cache(&input);
    }
    let mut noise = Noise(5);
    for _ in 0..200 {
        fuzz::artifact_cache(&noise.bytes(300));
    }
}

#[test]
fn hypercall_decode_corpus() {
    for input in corpus("hypercall_decode") {
        sandcell_abi::fuzz_decode(&input);
    }
}
