//! [`Outcome`]: how a run ended, what it printed and what it consumed.

use crate::PolicyField;
use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

/// How a run ended. Everything the guest does — exit, crash, loop, exhaust a limit — is a
/// `Status`; only host-side failures are [`Error`](crate::Error)s.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Status {
    /// The guest exited by itself with this code (exact: a wasm `proc_exit(256)` is 256, not 0).
    Exited(i32),
    /// The wall-clock [`timeout`](crate::Policy::timeout) passed.
    Timeout,
    /// The guest needed more memory than the policy allows.
    MemoryLimit,
    /// The guest used up its CPU budget.
    CpuLimit(CpuBudget),
    /// The guest wrote more than [`max_output`](crate::Policy::max_output) to stdout or stderr.
    OutputLimit,
    /// A native guest was killed by this signal (process backend).
    Signaled(i32),
    /// The guest trapped: a WebAssembly trap, or a CPU exception in a micro-VM.
    Trap(Trap),
    /// The guest made a system call the policy forbids (named where it can be known).
    SyscallDenied(Option<String>),
    /// The run was stopped through an [`InterruptHandle`](crate::InterruptHandle).
    Interrupted,
}

/// Which CPU budget ran out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum CpuBudget {
    /// [`Policy::cpu_time`](crate::Policy::cpu_time).
    CpuTime,
    /// [`Policy::fuel`](crate::Policy::fuel).
    Fuel,
}

/// A trap: its kind and a human-readable message.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Trap {
    /// What kind of trap.
    pub kind: TrapKind,
    /// Details (the engine's message, the faulting address, ...).
    pub message: String,
}

/// Kinds of traps, across the wasm and micro-VM backends.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum TrapKind {
    /// Wasm `unreachable` (also how a Rust guest's panic ends).
    Unreachable,
    /// Integer division by zero (wasm), or a #DE divide error (micro-VM).
    IntegerDivisionByZero,
    /// Integer overflow (wasm `INT_MIN / -1`).
    IntegerOverflow,
    /// Out-of-bounds memory access (wasm), or a page fault on memory the guest may not touch
    /// (micro-VM).
    MemoryOutOfBounds,
    /// Out-of-bounds table access.
    TableOutOfBounds,
    /// Indirect call to a null table entry.
    IndirectCallToNull,
    /// Indirect call with the wrong signature.
    BadSignature,
    /// Float to integer conversion of NaN or an out-of-range value.
    BadConversionToInteger,
    /// The guest's stack overflowed.
    StackOverflow,
    /// Misaligned atomic access.
    UnalignedAtomic,
    /// A privileged or invalid instruction (#GP, #UD, `hlt`, `cli`, `rdmsr` in a micro-VM).
    IllegalInstruction,
    /// A breakpoint (`int3`).
    Breakpoint,
    /// A hypercall or host function call the host refused (bad pointer, bad length, unknown
    /// number).
    BadHostCall,
    /// Anything else.
    Other,
}

impl TrapKind {
    /// A short snake_case name (`unreachable`, `stack_overflow`, ...).
    pub fn name(self) -> &'static str {
        match self {
            TrapKind::Unreachable => "unreachable",
            TrapKind::IntegerDivisionByZero => "integer_division_by_zero",
            TrapKind::IntegerOverflow => "integer_overflow",
            TrapKind::MemoryOutOfBounds => "memory_out_of_bounds",
            TrapKind::TableOutOfBounds => "table_out_of_bounds",
            TrapKind::IndirectCallToNull => "indirect_call_to_null",
            TrapKind::BadSignature => "bad_signature",
            TrapKind::BadConversionToInteger => "bad_conversion_to_integer",
            TrapKind::StackOverflow => "stack_overflow",
            TrapKind::UnalignedAtomic => "unaligned_atomic",
            TrapKind::IllegalInstruction => "illegal_instruction",
            TrapKind::Breakpoint => "breakpoint",
            TrapKind::BadHostCall => "bad_host_call",
            TrapKind::Other => "other",
        }
    }
}

impl Status {
    /// The snake_case kind used in JSON: `exited`, `timeout`, `memory_limit`, `cpu_limit`,
    /// `output_limit`, `signaled`, `trap`, `syscall_denied`, `interrupted`.
    pub fn kind(&self) -> &'static str {
        match self {
            Status::Exited(_) => "exited",
            Status::Timeout => "timeout",
            Status::MemoryLimit => "memory_limit",
            Status::CpuLimit(_) => "cpu_limit",
            Status::OutputLimit => "output_limit",
            Status::Signaled(_) => "signaled",
            Status::Trap(_) => "trap",
            Status::SyscallDenied(_) => "syscall_denied",
            Status::Interrupted => "interrupted",
        }
    }

    /// Extra detail, where there is any: the trap kind and message, the signal name, the denied
    /// system call, which CPU budget ran out.
    pub fn detail(&self) -> Option<String> {
        match self {
            Status::Exited(_) | Status::Timeout | Status::MemoryLimit | Status::OutputLimit | Status::Interrupted => {
                None
            }
            Status::CpuLimit(CpuBudget::Fuel) => Some("fuel exhausted".into()),
            Status::CpuLimit(CpuBudget::CpuTime) => Some("cpu time limit reached".into()),
            Status::Signaled(sig) => Some(signal_name(*sig)),
            Status::Trap(t) if t.message.is_empty() => Some(t.kind.name().to_owned()),
            Status::Trap(t) => Some(format!("{}: {}", t.kind.name(), t.message)),
            Status::SyscallDenied(name) => name.clone(),
        }
    }

    /// The exit code, when the guest exited by itself.
    pub fn exit_code(&self) -> Option<i32> {
        match self {
            Status::Exited(c) => Some(*c),
            _ => None,
        }
    }

    /// True for `Exited(0)`.
    pub fn success(&self) -> bool {
        *self == Status::Exited(0)
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Status::Exited(code) => write!(f, "exited with code {code}"),
            Status::Timeout => f.write_str("stopped: wall-clock timeout"),
            Status::MemoryLimit => f.write_str("stopped: memory limit"),
            Status::CpuLimit(CpuBudget::Fuel) => f.write_str("stopped: fuel exhausted"),
            Status::CpuLimit(CpuBudget::CpuTime) => f.write_str("stopped: cpu time limit"),
            Status::OutputLimit => f.write_str("stopped: output limit"),
            Status::Signaled(sig) => write!(f, "killed by signal {sig} ({})", signal_name(*sig)),
            Status::Trap(t) => write!(f, "trap: {}", t.kind.name()).and_then(|_| {
                if t.message.is_empty() {
                    Ok(())
                } else {
                    write!(f, ": {}", t.message)
                }
            }),
            Status::SyscallDenied(Some(name)) => {
                write!(f, "stopped: forbidden system call `{name}`")
            }
            Status::SyscallDenied(None) => f.write_str("stopped: forbidden system call"),
            Status::Interrupted => f.write_str("stopped: interrupted by the host"),
        }
    }
}

/// The name of a signal number (`SIGKILL`), or `signal N`.
pub fn signal_name(sig: i32) -> String {
    let name = match sig {
        1 => "SIGHUP",
        2 => "SIGINT",
        3 => "SIGQUIT",
        4 => "SIGILL",
        5 => "SIGTRAP",
        6 => "SIGABRT",
        7 => "SIGBUS",
        8 => "SIGFPE",
        9 => "SIGKILL",
        10 => "SIGUSR1",
        11 => "SIGSEGV",
        12 => "SIGUSR2",
        13 => "SIGPIPE",
        14 => "SIGALRM",
        15 => "SIGTERM",
        24 => "SIGXCPU",
        25 => "SIGXFSZ",
        31 => "SIGSYS",
        _ => return format!("signal {sig}"),
    };
    name.to_owned()
}

/// What a run consumed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Usage {
    /// Wall-clock time from the start of the run to its end.
    pub wall: Duration,
    /// CPU time used by the guest (user + system; all processes of the tree).
    pub cpu: Duration,
    /// Peak memory: wasm linear memory, the process tree's peak (cgroup) or max RSS, or the
    /// micro-VM's guest RAM that was touched.
    pub peak_memory_bytes: u64,
    /// Fuel consumed, when the policy set a fuel budget.
    pub fuel: Option<u64>,
    /// Where the compiled program came from (wasm and micro-VM backends).
    pub artifact: Option<ArtifactSource>,
}

/// Where a run's compiled artifact came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ArtifactSource {
    /// The in-memory cache of this process.
    Memory,
    /// The on-disk cache directory.
    Disk,
    /// Compiled for this run (and stored in the caches).
    Compiled,
    /// The program's [`Prepared`](crate::Prepared) state.
    Prepared,
}

impl ArtifactSource {
    /// `memory`, `disk`, `compiled` or `prepared`.
    pub fn name(self) -> &'static str {
        match self {
            ArtifactSource::Memory => "memory",
            ArtifactSource::Disk => "disk",
            ArtifactSource::Compiled => "compiled",
            ArtifactSource::Prepared => "prepared",
        }
    }
}

/// The two output streams.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u32)]
pub enum Stream {
    /// Standard output.
    Stdout = 1,
    /// Standard error.
    Stderr = 2,
}

/// The result of a run: how it ended, its captured output (capped) and its resource use.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Outcome {
    /// How the run ended.
    pub status: Status,
    /// Captured stdout (at most [`max_output`](crate::Policy::max_output) bytes).
    pub stdout: Vec<u8>,
    /// Captured stderr (at most [`max_output`](crate::Policy::max_output) bytes).
    pub stderr: Vec<u8>,
    /// Resources used.
    pub usage: Usage,
    /// For each policy field that needed a mechanism, the mechanism that enforced it in this
    /// run (`Memory → "cgroup v2 memory.max"`).
    pub enforced: BTreeMap<PolicyField, String>,
    /// Fields a [`best_effort`](crate::Policy::best_effort) policy could not have enforced, and
    /// why. Always empty unless `best_effort` is set.
    pub skipped: BTreeMap<PolicyField, String>,
}

impl Outcome {
    /// The JSON object of the CLI's `--json` contract:
    /// `{"status": {"kind": ..., "code"|"signal"|"detail": ...}, "stdout": ..., "stderr": ...,
    /// "usage": {...}, "enforced": {...}, "skipped": {...}}`.
    ///
    /// Output that is valid UTF-8 is an ordinary JSON string. Output that is not is given twice:
    /// `stdout` holds it as text with each invalid byte replaced by U+FFFD (readable, and
    /// accepted by every JSON parser), and `stdout_base64` holds the exact bytes, base64-encoded
    /// (likewise `stderr_base64`). So no byte is ever lost, and `*_base64` appears exactly when
    /// the output is not UTF-8.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("an outcome always serialises")
    }
}

/// The shape documented at [`Outcome::to_json`].
impl serde::Serialize for Outcome {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> std::result::Result<S::Ok, S::Error> {
        use base64::Engine as _;
        use serde::ser::SerializeMap;
        let mut map = serializer.serialize_map(None)?;
        map.serialize_entry("status", &self.status)?;
        for (name, bytes) in [("stdout", &self.stdout), ("stderr", &self.stderr)] {
            map.serialize_entry(name, &String::from_utf8_lossy(bytes))?;
            if std::str::from_utf8(bytes).is_err() {
                map.serialize_entry(
                    &format!("{name}_base64"),
                    &base64::engine::general_purpose::STANDARD.encode(bytes),
                )?;
            }
        }
        map.serialize_entry("usage", &self.usage)?;
        map.serialize_entry("enforced", &self.enforced)?;
        map.serialize_entry("skipped", &self.skipped)?;
        map.end()
    }
}

/// `{"kind": "exited", "code": 0}`, `{"kind": "signaled", "signal": 9}`, `{"kind": "trap",
/// "trap": "unreachable", "detail": ...}`: the kind's name, its number where it has one, the
/// trap kind, and a `detail` string where there is one.
impl serde::Serialize for Status {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> std::result::Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut map = serializer.serialize_map(None)?;
        map.serialize_entry("kind", self.kind())?;
        match self {
            Status::Exited(code) => map.serialize_entry("code", code)?,
            Status::Signaled(sig) => map.serialize_entry("signal", sig)?,
            Status::Trap(t) => map.serialize_entry("trap", t.kind.name())?,
            _ => {}
        }
        if let Some(detail) = self.detail() {
            map.serialize_entry("detail", &detail)?;
        }
        map.end()
    }
}

/// `{"wall_ms": 0.31, "cpu_ms": 0.29, "peak_memory_bytes": 65536, "fuel": null, "cache":
/// "memory"}`: durations in milliseconds (three decimals), the artifact's source by name.
impl serde::Serialize for Usage {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> std::result::Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let ms = |d: Duration| (d.as_secs_f64() * 1e6).round() / 1e3;
        let mut map = serializer.serialize_map(Some(5))?;
        map.serialize_entry("wall_ms", &ms(self.wall))?;
        map.serialize_entry("cpu_ms", &ms(self.cpu))?;
        map.serialize_entry("peak_memory_bytes", &self.peak_memory_bytes)?;
        map.serialize_entry("fuel", &self.fuel)?;
        map.serialize_entry("cache", &self.artifact.map(ArtifactSource::name))?;
        map.end()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_escapes_non_utf8_losslessly() {
        let outcome = Outcome {
            status: Status::Exited(3),
            stdout: b"ok \xff\xfe end\n".to_vec(),
            stderr: "caf\u{e9} \"q\"".as_bytes().to_vec(),
            usage: Usage::default(),
            enforced: BTreeMap::new(),
            skipped: BTreeMap::new(),
        };
        let json = outcome.to_json();
        assert!(json.contains("\"stdout\":\"ok \u{fffd}\u{fffd} end\\n\""), "{json}");
        assert!(json.contains(r#""stdout_base64":"b2sg//4gZW5kCg==""#), "{json}");
        assert!(json.contains("\"stderr\":\"caf\u{e9} \\\"q\\\"\""), "{json}");
        assert!(!json.contains("stderr_base64"));
        assert!(json.starts_with(r#"{"status":{"kind":"exited","code":3}"#), "{json}");
    }
}
