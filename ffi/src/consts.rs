//! Every number of the ABI: versions, error kinds, statuses, streams, network policies, the
//! no-limit values of the setters. Kept together, in the order the header lists them.

/// The version of sandcell this header belongs to: MAJOR.MINOR.PATCH (sandcell_version() is the
/// loaded library's).
pub const SANDCELL_VERSION_MAJOR: u32 = 0;
/// See SANDCELL_VERSION_MAJOR.
pub const SANDCELL_VERSION_MINOR: u32 = 1;
/// See SANDCELL_VERSION_MAJOR.
pub const SANDCELL_VERSION_PATCH: u32 = 0;
/// The version of this ABI: bumped on every incompatible change (a function, type, field or
/// constant changed or removed), not for additions (new functions, constants, or fields at the
/// end of an extensible struct). It is the N of the library's SONAME, libsandcell.so.N; a program
/// may compare it with sandcell_abi_version() at start-up.
pub const SANDCELL_ABI_VERSION: u32 = 0;

// The numbers above are literals because cbindgen copies literals into the header. They cannot go
// stale: the build fails when they differ from the crate's version in ffi/Cargo.toml (which
// `sandcell_version()` returns), and build.rs takes the SONAME from SANDCELL_ABI_VERSION.
const _: () = {
    assert!(SANDCELL_VERSION_MAJOR == parse_u32(env!("CARGO_PKG_VERSION_MAJOR")), "update SANDCELL_VERSION_MAJOR");
    assert!(SANDCELL_VERSION_MINOR == parse_u32(env!("CARGO_PKG_VERSION_MINOR")), "update SANDCELL_VERSION_MINOR");
    assert!(SANDCELL_VERSION_PATCH == parse_u32(env!("CARGO_PKG_VERSION_PATCH")), "update SANDCELL_VERSION_PATCH");
};

/// A decimal number, at compile time.
const fn parse_u32(s: &str) -> u32 {
    let bytes = s.as_bytes();
    assert!(!bytes.is_empty(), "not a number");
    let mut value = 0u32;
    let mut i = 0;
    while i < bytes.len() {
        assert!(bytes[i].is_ascii_digit(), "not a number");
        value = value * 10 + (bytes[i] - b'0') as u32;
        i += 1;
    }
    value
}

/// Error kind (sandcell_error_kind()): a policy field has a value that makes no sense.
pub const SANDCELL_ERROR_INVALID_POLICY: u32 = 1;
/// Error kind: this backend on this host cannot enforce a policy field (and best_effort is off).
pub const SANDCELL_ERROR_UNENFORCEABLE: u32 = 2;
/// Error kind: the backend cannot run on this host (no /dev/kvm, not Linux, ...).
pub const SANDCELL_ERROR_BACKEND_UNAVAILABLE: u32 = 3;
/// Error kind: the program cannot be read or is not something the backend runs.
pub const SANDCELL_ERROR_INVALID_PROGRAM: u32 = 4;
/// Error kind: the host failed to set up the run (a system call, the compiled-module cache).
pub const SANDCELL_ERROR_HOST: u32 = 5;
/// Error kind: a NULL pointer, a string that is not UTF-8, a length that overflows, a freed
/// handle, an unknown constant.
pub const SANDCELL_ERROR_INVALID_ARGUMENT: u32 = 6;
/// Error kind: a bug in sandcell (a caught panic).
pub const SANDCELL_ERROR_INTERNAL: u32 = 7;

/// Status (sandcell_outcome_status()): the guest exited by itself; the number is its exit code.
pub const SANDCELL_STATUS_EXITED: u32 = 1;
/// Status: the wall-clock timeout passed.
pub const SANDCELL_STATUS_TIMEOUT: u32 = 2;
/// Status: the guest hit the memory cap.
pub const SANDCELL_STATUS_MEMORY_LIMIT: u32 = 3;
/// Status: the CPU-time limit or the fuel budget ran out.
pub const SANDCELL_STATUS_CPU_LIMIT: u32 = 4;
/// Status: stdout or stderr reached max_output.
pub const SANDCELL_STATUS_OUTPUT_LIMIT: u32 = 5;
/// Status: a signal killed the guest process; the number is the signal.
pub const SANDCELL_STATUS_SIGNALED: u32 = 6;
/// Status: the guest faulted (see sandcell_outcome_trap_kind).
pub const SANDCELL_STATUS_TRAP: u32 = 7;
/// Status: the guest made a system call the policy denies.
pub const SANDCELL_STATUS_SYSCALL_DENIED: u32 = 8;
/// Status: an interrupt handle stopped the run.
pub const SANDCELL_STATUS_INTERRUPTED: u32 = 9;

/// Output stream: standard output.
pub const SANDCELL_STREAM_STDOUT: u32 = 1;
/// Output stream: standard error.
pub const SANDCELL_STREAM_STDERR: u32 = 2;

/// Network policy (sandcell_policy_set_network()): no network at all.
pub const SANDCELL_NETWORK_NONE: u32 = 0;
/// Network policy: a private loopback interface only (process backend).
pub const SANDCELL_NETWORK_LOOPBACK: u32 = 1;

/// Passed to a uint64_t setter of a limit (sandcell_policy_set_memory(), _timeout_ms(), ...): no
/// limit at all. (0 means the default.)
pub const SANDCELL_UNLIMITED: u64 = u64::MAX;
/// Passed to a uint32_t setter of a limit (sandcell_policy_set_max_processes(), _cpus()): no
/// limit at all. (0 means the default.)
pub const SANDCELL_UNLIMITED_U32: u32 = u32::MAX;

/// Ready instances a prepared program keeps by default (sandcell_prepare_options_t).
pub const SANDCELL_DEFAULT_POOL_SIZE: u32 = 2;
/// The largest pool a prepared program may keep.
pub const SANDCELL_MAX_POOL_SIZE: u32 = 64;
const _: () = assert!(
    SANDCELL_DEFAULT_POOL_SIZE as usize == sandcell::DEFAULT_POOL_SIZE
        && SANDCELL_MAX_POOL_SIZE as usize == sandcell::MAX_POOL_SIZE
);
