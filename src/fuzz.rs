//! The bodies of the fuzz targets in `fuzz/fuzz_targets/`, here so that the corpus replay tests
//! (`tests/all/fuzz_replay.rs`, run by every `cargo test`) call exactly what the fuzzers call,
//! without an instrumented build of wasmer. Each function takes the fuzzer's input and panics
//! only when it finds a bug: a panic inside sandcell, or a property below that does not hold.
//! (The C ABI's target is `sandcell-ffi`'s `fuzz` module; the hypercall decoder's is
//! `sandcell_abi::fuzz_decode`.)

use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::Duration;

use crate::{BackendKind, ErrorKind, Policy, Program, Sandbox, SandboxBuilder, Status};

/// Policy JSON: parsing never panics; a policy that parses serialises to JSON that parses back
/// to the same policy; validation and the wasm and micro-VM lowerings (pure computations) answer
/// with a policy or a typed error.
pub fn policy_json(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let Ok(policy) = Policy::from_json(&text) else { return };
    let again = Policy::from_json(&policy.to_json()).expect("a policy's own JSON parses");
    assert_eq!(again, policy, "a policy's JSON round trip changed it");
    if policy.validate().is_err() {
        return;
    }
    // Building a wasm sandbox lowers the policy (mounts are opened: only existing directories).
    if let Err(e) = SandboxBuilder::new(BackendKind::Wasm).policy(policy.clone()).build() {
        assert!(
            matches!(e.kind(), ErrorKind::InvalidPolicy | ErrorKind::Unenforceable),
            "building a wasm sandbox from a valid policy failed with {:?}: {e}",
            e.kind()
        );
    }
}

/// The policy every fuzzed module runs under: small, and bounded in every dimension, so that a
/// fuzzer's thousands of runs a minute stay cheap. `metered` picks fuel (exact, fast to hit)
/// over the wall-clock timeout (the interrupt path).
fn module_policy(metered: bool) -> Policy {
    let limits = crate::CompileLimits {
        max_module_size: 1 << 20,
        max_functions: 1_000,
        time: Duration::from_secs(5),
        ..Default::default()
    };
    let builder = Policy::builder().memory(16 << 20).max_output(4096).compile(limits);
    let builder = if metered {
        builder.fuel(200_000).timeout(Duration::from_secs(5))
    } else {
        builder.timeout(Duration::from_millis(40))
    };
    builder.build().expect("the fuzzing policy is valid")
}

/// A module (from `wasm-smith` in the fuzz target and the replay test, or any bytes) compiled and
/// run on the wasm backend under [`module_policy`]: the run ends (the fuel or the timeout stops
/// any loop, the start function's included), a module sandcell refuses is a typed error, the
/// output stays within its cap, and the status is one a wasm guest can have.
pub fn wasm_module(wasm: &[u8], metered: bool) {
    static SANDBOXES: OnceLock<[Box<dyn Sandbox>; 2]> = OnceLock::new();
    let sandboxes = SANDBOXES.get_or_init(|| {
        let build = |m| SandboxBuilder::new(BackendKind::Wasm).policy(module_policy(m)).build().expect("wasm sandbox");
        [build(false), build(true)]
    });
    let sandbox = &sandboxes[usize::from(metered)];
    match sandbox.run(&Program::bytes(wasm.to_vec()).entry("_start")) {
        Ok(outcome) => {
            assert!(outcome.stdout.len() + outcome.stderr.len() <= 4096 * 2, "output past its cap");
            match outcome.status {
                Status::Exited(_)
                | Status::Trap(_)
                | Status::Signaled(_)
                | Status::MemoryLimit
                | Status::OutputLimit
                | Status::Timeout => {}
                Status::CpuLimit(_) => assert!(metered, "a CPU limit without fuel or cpu_time"),
                other => panic!("a wasm guest ended with {other:?}"),
            }
        }
        Err(e) => assert!(e.kind() == ErrorKind::InvalidProgram, "running a module failed with {:?}: {e}", e.kind()),
    }
}

/// The process backend's lowering of an arbitrary policy (JSON) to its jail plan: it answers
/// with a plan or a typed error, and whatever the policy says, the plan's seccomp filter refuses
/// what every jail refuses (ptrace, setting setuid bits, 32-bit system calls, foreign
/// architectures), refuses Unix sockets unless the policy allows them, and denies every system
/// call the policy denies.
#[cfg(all(feature = "process", target_os = "linux"))]
pub fn process_lowering(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let Ok(policy) = Policy::from_json(&text) else { return };
    if policy.validate().is_err() {
        return;
    }
    crate::backend::process::fuzz_lowering(&policy);
}

/// Another name for [`process_lowering`] on hosts without the process backend: nothing to check.
#[cfg(not(all(feature = "process", target_os = "linux")))]
pub fn process_lowering(_data: &[u8]) {}

/// The micro-VM's hypercall decoder and host-side WASI dispatch, fed arbitrary guest memory:
/// the first 64 KiB of `data` are the guest's memory, the rest a sequence of mailboxes. Each
/// mailbox is decoded as the host decodes a vCPU's; each WASI request whose memory lies inside
/// the guest's is served by the run's WASI service as the micro-VM serves it (the buffer
/// standing for guest RAM, a read-only mount, a timer that kills a call blocked too long). The
/// host never panics and never touches memory outside the buffer (the fuzz target runs under
/// AddressSanitizer).
#[cfg(all(feature = "microvm", target_os = "linux", target_arch = "x86_64"))]
pub fn microvm_hypercalls(data: &[u8]) {
    crate::backend::microvm::fuzz_hypercalls(data, fuzz_mount());
}

/// Another name for [`microvm_hypercalls`] on hosts without the micro-VM backend.
#[cfg(not(all(feature = "microvm", target_os = "linux", target_arch = "x86_64")))]
pub fn microvm_hypercalls(_data: &[u8]) {}

/// A small directory tree that fuzzed guests see read-only.
#[allow(dead_code)]
fn fuzz_mount() -> PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("sandcell-fuzz-mount-{}", std::process::id()));
        let _ = std::fs::create_dir_all(dir.join("sub"));
        let _ = std::fs::write(dir.join("file.txt"), b"hello\n");
        let _ = std::fs::write(dir.join("sub/other"), b"");
        dir
    })
    .clone()
}

/// The artifact cache's loader: a file under an artifact's name holding arbitrary bytes is never
/// loaded (it carries no valid MAC) and never panics the loader; an artifact stored and then
/// altered at any one byte (the first 8 bytes of `data` pick the byte and the change) is never
/// loaded either, while the unaltered one is.
pub fn artifact_cache(data: &[u8]) {
    crate::cache::fuzz(data);
}

/// How many arguments WASI function `index` (of `sandcell_abi::WASI_FUNCTIONS`) takes, for
/// building well-formed hypercalls to fuzz from.
pub fn wasi_arity(index: usize) -> Option<usize> {
    crate::wasi::SIGNATURES.get(index).map(|(_, sig)| sig.len())
}
