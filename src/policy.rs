//! [`Policy`]: what a sandboxed program may do, independent of the backend.

use std::collections::BTreeMap;
use std::path::{Component, Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::units::serde_units;
use crate::{Error, Result};

/// Default cap on memory: 512 MiB.
pub const DEFAULT_MEMORY: u64 = 512 << 20;
/// Default cap on each captured output stream: 16 MiB.
pub const DEFAULT_MAX_OUTPUT: u64 = 16 << 20;
/// Default cap on the number of processes (process backend).
pub const DEFAULT_MAX_PROCESSES: u32 = 64;
/// Default cap on open files.
pub const DEFAULT_MAX_OPEN_FILES: u64 = 256;

/// Limits and permissions for every run of a sandbox.
///
/// A policy is plain data: build it with [`Policy::builder`], with struct update syntax from
/// [`Policy::default`], or from JSON (the serde form rejects unknown fields). It is validated
/// once, when a sandbox is built from it; each backend then either enforces every field or
/// refuses with [`Error::Unenforceable`] — unless [`best_effort`](Policy::best_effort) is set.
///
/// Sizes in the serde form are numbers of bytes or strings such as `"64M"`; durations are
/// strings such as `"500ms"` or numbers of seconds.
///
/// ```
/// use std::time::Duration;
/// let policy = sandcell::Policy::builder()
///     .memory(64 << 20)
///     .timeout(Duration::from_secs(2))
///     .mount_read_only("/usr/share/dict", "/dict")
///     .build()
///     .unwrap();
/// let json = serde_json::to_string(&policy).unwrap();
/// let back: sandcell::Policy = serde_json::from_str(&json).unwrap();
/// assert_eq!(back, policy);
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Policy {
    /// Memory cap in bytes: the wasm linear memory maximum, the cgroup memory limit of a process
    /// tree (RLIMIT_AS where no cgroup is usable), or the micro-VM's guest RAM. `None`: no cap
    /// beyond the backend's own (4 GiB for 32-bit wasm). Default 512 MiB.
    #[serde(with = "serde_units::opt_size")]
    pub memory: Option<u64>,

    /// Wall-clock limit of one run. When it passes, the guest is stopped and the run ends with
    /// [`Status::Timeout`](crate::Status::Timeout). Default: none.
    #[serde(with = "serde_units::opt_duration")]
    pub timeout: Option<Duration>,

    /// CPU-time limit of one run (all threads and processes of the guest together). Ends with
    /// [`Status::CpuLimit`](crate::Status::CpuLimit). Default: none.
    #[serde(with = "serde_units::opt_duration")]
    pub cpu_time: Option<Duration>,

    /// Instruction budget ("fuel") for WebAssembly guests, metered per executed operator.
    /// `Usage::fuel` reports what was consumed. Enforced by the wasm and micro-VM backends;
    /// the process backend refuses it. Default: none (no metering, full speed).
    pub fuel: Option<u64>,

    /// Number of CPUs the guest may use at once: the process backend sets a CFS quota, the
    /// micro-VM backend creates this many vCPUs, a wasm guest always runs on one thread.
    pub cpus: Option<u32>,

    /// Maximum number of processes (and threads) in a run. Default 64.
    pub max_processes: Option<u32>,

    /// Maximum number of files the guest may hold open at once. Default 256.
    pub max_open_files: Option<u64>,

    /// Maximum size of a file the guest writes. Default: none.
    #[serde(with = "serde_units::opt_size")]
    pub max_file_size: Option<u64>,

    /// Cap on each of stdout and stderr, in bytes. Output beyond it is discarded and the run ends
    /// with [`Status::OutputLimit`](crate::Status::OutputLimit). Default 16 MiB.
    #[serde(with = "serde_units::size")]
    pub max_output: u64,

    /// Host directories made visible to the guest. Nothing else of the host filesystem is
    /// visible (the process backend also mounts [`system_dirs`](Policy::system_dirs)).
    pub mounts: Vec<Mount>,

    /// Read-only system directories for native programs (process backend). `None` means the
    /// default set: `/usr`, `/bin`, `/sbin`, `/lib*` and the few files under `/etc` that the
    /// dynamic linker and libc read. `Some(vec![])` mounts none. The other backends show the
    /// guest only its `mounts` and refuse a non-empty list here.
    pub system_dirs: Option<Vec<PathBuf>>,

    /// Network access. Default [`Network::None`].
    pub network: Network,

    /// Whether a native program may create Unix-domain sockets with `socket()` (process
    /// backend). `socketpair()` always works. Default `false`: Landlock cannot keep a program
    /// from connecting to a host socket it can see in a mount (a container runtime's socket
    /// under a mounted `/run`), so by default it gets no socket to connect with. The other
    /// backends have no sockets at all and refuse `true`.
    pub unix_sockets: bool,

    /// Environment variables given to every program (a [`Program`](crate::Program)'s own
    /// variables override these). Nothing from the host's environment is passed on.
    pub env: BTreeMap<String, String>,

    /// System calls to deny on top of the process backend's default allow-list, by name
    /// (`"socket"`, `"fork"`). The other backends let no system call reach the host kernel at
    /// all, so these hold there trivially.
    pub deny_syscalls: Vec<String>,

    /// Budgets for compiling (and validating) an untrusted WebAssembly module, apart from the
    /// run's own limits: a module is compiled before its run starts, and the work it costs the
    /// host must be bounded even when the run's timeout and memory cap are small. See
    /// [`CompileLimits`].
    pub compile: CompileLimits,

    /// Run even when a backend cannot enforce some field; the [`Outcome`](crate::Outcome) then
    /// lists what was skipped. Default `false`: such a policy is refused.
    pub best_effort: bool,
}

/// Budgets for compiling an untrusted WebAssembly module ([`Policy::compile`]).
///
/// A module is refused with [`Error::CompileBudget`] before any compilation when it is larger,
/// or has more functions or a larger function, than these allow, or when the compiler's memory
/// for it, estimated from its contents, would exceed [`memory`](CompileLimits::memory); a
/// compilation that takes longer than [`time`](CompileLimits::time) is stopped within one
/// function's compilation and refused the same way. The defaults compile a 26 MB CPython for
/// WASI (about 9,000 functions) and refuse a module of a million empty functions at once.
/// The wasm backend compiles with Cranelift; the micro-VM backend only validates on the host
/// (its guest compiles inside the VM, under the run's limits), and applies the size and count
/// limits.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CompileLimits {
    /// Largest module accepted, in bytes (binary or WAT text). Default 128 MiB.
    #[serde(with = "serde_units::size")]
    pub max_module_size: u64,
    /// Most functions a module may define. Default 100,000.
    pub max_functions: u32,
    /// Largest function body, in bytes. Default 1 MiB.
    #[serde(with = "serde_units::size")]
    pub max_function_size: u64,
    /// Wall-clock time one compilation may take. Default 60 s.
    #[serde(with = "serde_units::duration")]
    pub time: Duration,
    /// Memory the compiler may need for one module (estimated before compiling from the
    /// module's functions and code size; see `docs/THREAT_MODEL.md`). Default 1 GiB.
    #[serde(with = "serde_units::size")]
    pub memory: u64,
}

/// Default [`CompileLimits::max_module_size`]: 128 MiB.
pub const DEFAULT_MAX_MODULE_SIZE: u64 = 128 << 20;
/// Default [`CompileLimits::max_functions`].
pub const DEFAULT_MAX_FUNCTIONS: u32 = 100_000;
/// Default [`CompileLimits::max_function_size`]: 1 MiB.
pub const DEFAULT_MAX_FUNCTION_SIZE: u64 = 1 << 20;
/// Default [`CompileLimits::time`]: 60 s.
pub const DEFAULT_COMPILE_TIME: Duration = Duration::from_secs(60);
/// Default [`CompileLimits::memory`]: 1 GiB.
pub const DEFAULT_COMPILE_MEMORY: u64 = 1 << 30;

impl Default for CompileLimits {
    fn default() -> Self {
        CompileLimits {
            max_module_size: DEFAULT_MAX_MODULE_SIZE,
            max_functions: DEFAULT_MAX_FUNCTIONS,
            max_function_size: DEFAULT_MAX_FUNCTION_SIZE,
            time: DEFAULT_COMPILE_TIME,
            memory: DEFAULT_COMPILE_MEMORY,
        }
    }
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            memory: Some(DEFAULT_MEMORY),
            timeout: None,
            cpu_time: None,
            fuel: None,
            cpus: None,
            max_processes: Some(DEFAULT_MAX_PROCESSES),
            max_open_files: Some(DEFAULT_MAX_OPEN_FILES),
            max_file_size: None,
            max_output: DEFAULT_MAX_OUTPUT,
            mounts: Vec::new(),
            system_dirs: None,
            network: Network::None,
            unix_sockets: false,
            env: BTreeMap::new(),
            deny_syscalls: Vec::new(),
            compile: CompileLimits::default(),
            best_effort: false,
        }
    }
}

/// A host directory (or file) made visible inside the sandbox.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Mount {
    /// Path on the host. Relative paths are resolved against the current directory when the
    /// sandbox is built.
    pub host: PathBuf,
    /// Absolute path inside the sandbox.
    pub guest: PathBuf,
    /// Whether the guest may create, change and delete files under it. Default `false`.
    #[serde(default)]
    pub writable: bool,
}

impl Mount {
    /// A read-only mount.
    pub fn read_only(host: impl Into<PathBuf>, guest: impl Into<PathBuf>) -> Self {
        Mount { host: host.into(), guest: guest.into(), writable: false }
    }

    /// A read-write mount.
    pub fn read_write(host: impl Into<PathBuf>, guest: impl Into<PathBuf>) -> Self {
        Mount { host: host.into(), guest: guest.into(), writable: true }
    }

    /// Parses the CLI form `HOST:GUEST[:ro|:rw]` (read-only when the mode is left out), or
    /// `HOST::GUEST[:ro|:rw]` when a path contains a colon (everything before the first `::` is
    /// the host path).
    ///
    /// ```
    /// use sandcell::Mount;
    /// assert_eq!(Mount::parse("/srv/in:/in:rw").unwrap(), Mount::read_write("/srv/in", "/in"));
    /// assert_eq!(Mount::parse("/srv/a:b::/in").unwrap(), Mount::read_only("/srv/a:b", "/in"));
    /// assert_eq!(Mount::parse("/srv/in::/x:y:ro").unwrap(), Mount::read_only("/srv/in", "/x:y"));
    /// assert!(Mount::parse("/a:/b:/c").is_err());
    /// ```
    pub fn parse(spec: &str) -> Result<Self> {
        let bad = |why: &str| {
            Error::invalid_policy(
                "mounts",
                format!("`{spec}`: {why}; expected HOST:GUEST[:ro|:rw] or HOST::GUEST[:ro|:rw]"),
            )
        };
        let (host, guest, writable) = if let Some((host, rest)) = spec.split_once("::") {
            match rest.rsplit_once(':') {
                Some((guest, "ro")) => (host, guest, false),
                Some((guest, "rw")) => (host, guest, true),
                _ => (host, rest, false),
            }
        } else {
            let parts: Vec<&str> = spec.split(':').collect();
            match parts[..] {
                [host, guest] => (host, guest, false),
                [host, guest, "ro"] => (host, guest, false),
                [host, guest, "rw"] => (host, guest, true),
                _ => return Err(bad("wrong number of `:`-separated parts")),
            }
        };
        if host.is_empty() || guest.is_empty() {
            return Err(bad("empty path"));
        }
        Ok(Mount { host: host.into(), guest: guest.into(), writable })
    }
}

/// Network access of the guest.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Network {
    /// No network at all.
    #[default]
    None,
    /// A private loopback interface that only this run's own processes share (process backend):
    /// a program may talk to itself over 127.0.0.1, never to the host or another sandbox.
    /// Backends without a network stack refuse it.
    Loopback,
}

impl Policy {
    /// Starts a [`PolicyBuilder`] from the default policy.
    pub fn builder() -> PolicyBuilder {
        PolicyBuilder { policy: Policy::default() }
    }

    /// Parses the JSON form (unknown fields are refused) and validates it.
    pub fn from_json(json: &str) -> Result<Self> {
        let bad = |e: String| Error::invalid_policy("(document)", format!("not a valid policy document: {e}"));
        let value: serde_json::Value = serde_json::from_str(json).map_err(|e| bad(e.to_string()))?;
        if !value.is_object() {
            return Err(bad("a policy is a JSON object".into()));
        }
        // The error names the field at fault (`mounts[0].guest`), not just a line and column.
        let policy: Policy = serde_path_to_error::deserialize(value).map_err(|e| {
            let path = e.path().to_string();
            let inner = e.into_inner().to_string();
            if path == "." {
                bad(inner)
            } else {
                Error::invalid_policy(path, inner)
            }
        })?;
        policy.validate()?;
        Ok(policy)
    }

    /// The JSON form.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("a policy always serializes")
    }

    /// Checks every field for values that no backend could accept. Backends check what they
    /// can enforce when a sandbox is built.
    pub fn validate(&self) -> Result<()> {
        if self.memory == Some(0) {
            return Err(Error::invalid_policy("memory", "must be greater than 0 (leave it unset for no cap)"));
        }
        for (field, value) in [("timeout", self.timeout), ("cpu_time", self.cpu_time)] {
            if value == Some(Duration::ZERO) {
                return Err(Error::invalid_policy(field, "must be greater than 0 (leave it unset for no limit)"));
            }
        }
        if self.cpus == Some(0) {
            return Err(Error::invalid_policy("cpus", "must be at least 1"));
        }
        if self.max_processes == Some(0) {
            return Err(Error::invalid_policy("max_processes", "must be at least 1"));
        }
        if self.max_open_files == Some(0) {
            return Err(Error::invalid_policy("max_open_files", "must be at least 1"));
        }
        let mut guests: Vec<&Path> = Vec::new();
        for (i, m) in self.mounts.iter().enumerate() {
            if m.host.as_os_str().is_empty() {
                return Err(Error::invalid_policy(format!("mounts[{i}].host"), "is empty"));
            }
            check_guest_path(&m.guest).map_err(|why| Error::invalid_policy(format!("mounts[{i}].guest"), why))?;
            if guests.contains(&m.guest.as_path()) {
                return Err(Error::invalid_policy(
                    format!("mounts[{i}].guest"),
                    format!("`{}` is mounted twice", m.guest.display()),
                ));
            }
            guests.push(&m.guest);
        }
        if let Some(dirs) = &self.system_dirs {
            for (i, d) in dirs.iter().enumerate() {
                check_guest_path(d).map_err(|why| Error::invalid_policy(format!("system_dirs[{i}]"), why))?;
            }
        }
        for (key, value) in &self.env {
            check_env(key, value).map_err(|why| Error::invalid_policy(format!("env.{key}"), why))?;
        }
        let c = &self.compile;
        for (field, zero) in [
            ("compile.max_module_size", c.max_module_size == 0),
            ("compile.max_functions", c.max_functions == 0),
            ("compile.max_function_size", c.max_function_size == 0),
            ("compile.time", c.time.is_zero()),
            ("compile.memory", c.memory == 0),
        ] {
            if zero {
                return Err(Error::invalid_policy(field, "must be greater than 0"));
            }
        }
        for name in &self.deny_syscalls {
            if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
                return Err(Error::invalid_policy("deny_syscalls", format!("`{name}` is not a system call name")));
            }
            // The table of x86-64 system calls catches a misspelt name for every backend, at
            // validation rather than at the first run.
            if crate::syscalls::known_here() && crate::syscalls::number(name).is_none() {
                return Err(Error::invalid_policy(
                    "deny_syscalls",
                    format!("`{name}` is not an x86-64 system call sandcell knows"),
                ));
            }
        }
        Ok(())
    }
}

/// A guest path must be absolute and normal: no `..`, no `.`.
pub(crate) fn check_guest_path(path: &Path) -> std::result::Result<(), String> {
    if !path.is_absolute() {
        return Err(format!("`{}` must be an absolute path", path.display()));
    }
    if path.components().any(|c| matches!(c, Component::ParentDir | Component::CurDir)) {
        return Err(format!("`{}` must not contain `.` or `..`", path.display()));
    }
    if path.to_str().is_none() {
        return Err(format!("`{}` is not valid UTF-8", path.display()));
    }
    Ok(())
}

pub(crate) fn check_env(key: &str, value: &str) -> std::result::Result<(), String> {
    if key.is_empty() {
        return Err("an environment variable needs a name".into());
    }
    if key.contains('=') || key.contains('\0') {
        return Err(format!("the name `{}` contains `=` or a NUL byte", key.escape_debug()));
    }
    if value.contains('\0') {
        return Err("the value contains a NUL byte".into());
    }
    Ok(())
}

/// Builds a [`Policy`] field by field; [`build`](PolicyBuilder::build) validates it.
#[derive(Clone, Debug)]
#[must_use]
pub struct PolicyBuilder {
    policy: Policy,
}

impl PolicyBuilder {
    /// Sets [`Policy::memory`] in bytes.
    pub fn memory(mut self, bytes: u64) -> Self {
        self.policy.memory = Some(bytes);
        self
    }
    /// Removes the memory cap.
    pub fn unlimited_memory(mut self) -> Self {
        self.policy.memory = None;
        self
    }
    /// Sets [`Policy::timeout`].
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.policy.timeout = Some(timeout);
        self
    }
    /// Sets [`Policy::cpu_time`].
    pub fn cpu_time(mut self, limit: Duration) -> Self {
        self.policy.cpu_time = Some(limit);
        self
    }
    /// Sets [`Policy::fuel`].
    pub fn fuel(mut self, fuel: u64) -> Self {
        self.policy.fuel = Some(fuel);
        self
    }
    /// Sets [`Policy::cpus`].
    pub fn cpus(mut self, cpus: u32) -> Self {
        self.policy.cpus = Some(cpus);
        self
    }
    /// Sets [`Policy::max_processes`].
    pub fn max_processes(mut self, n: u32) -> Self {
        self.policy.max_processes = Some(n);
        self
    }
    /// Sets [`Policy::max_open_files`].
    pub fn max_open_files(mut self, n: u64) -> Self {
        self.policy.max_open_files = Some(n);
        self
    }
    /// Sets [`Policy::max_file_size`].
    pub fn max_file_size(mut self, bytes: u64) -> Self {
        self.policy.max_file_size = Some(bytes);
        self
    }
    /// Sets [`Policy::max_output`].
    pub fn max_output(mut self, bytes: u64) -> Self {
        self.policy.max_output = bytes;
        self
    }
    /// Adds a mount.
    pub fn mount(mut self, mount: Mount) -> Self {
        self.policy.mounts.push(mount);
        self
    }
    /// Adds a read-only mount.
    pub fn mount_read_only(self, host: impl Into<PathBuf>, guest: impl Into<PathBuf>) -> Self {
        self.mount(Mount::read_only(host, guest))
    }
    /// Adds a read-write mount.
    pub fn mount_read_write(self, host: impl Into<PathBuf>, guest: impl Into<PathBuf>) -> Self {
        self.mount(Mount::read_write(host, guest))
    }
    /// Sets [`Policy::system_dirs`].
    pub fn system_dirs(mut self, dirs: Vec<PathBuf>) -> Self {
        self.policy.system_dirs = Some(dirs);
        self
    }
    /// Sets [`Policy::network`].
    pub fn network(mut self, network: Network) -> Self {
        self.policy.network = network;
        self
    }
    /// Adds an environment variable.
    pub fn env(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.policy.env.insert(key.into(), value.into());
        self
    }
    /// Adds a system call to [`Policy::deny_syscalls`].
    pub fn deny_syscall(mut self, name: impl Into<String>) -> Self {
        self.policy.deny_syscalls.push(name.into());
        self
    }
    /// Sets [`Policy::unix_sockets`].
    pub fn unix_sockets(mut self, allowed: bool) -> Self {
        self.policy.unix_sockets = allowed;
        self
    }
    /// Sets [`Policy::compile`].
    pub fn compile(mut self, limits: CompileLimits) -> Self {
        self.policy.compile = limits;
        self
    }
    /// Sets [`Policy::best_effort`].
    pub fn best_effort(mut self, yes: bool) -> Self {
        self.policy.best_effort = yes;
        self
    }
    /// Validates and returns the policy.
    pub fn build(self) -> Result<Policy> {
        self.policy.validate()?;
        Ok(self.policy)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_round_trip_and_units() {
        let p = Policy::from_json(
            r#"{"memory": "64M", "timeout": "1500ms", "cpu_time": 2, "max_output": "1K",
                "mounts": [{"host": "/tmp", "guest": "/data", "writable": true}],
                "env": {"A": "b"}}"#,
        )
        .unwrap();
        assert_eq!(p.memory, Some(64 << 20));
        assert_eq!(p.timeout, Some(Duration::from_millis(1500)));
        assert_eq!(p.cpu_time, Some(Duration::from_secs(2)));
        assert_eq!(p.max_output, 1024);
        assert!(p.mounts[0].writable);
        let again = Policy::from_json(&p.to_json()).unwrap();
        assert_eq!(again, p);
    }

    #[test]
    fn unknown_fields_and_bad_values_are_refused() {
        let e = Policy::from_json(r#"{"memroy": 1}"#).unwrap_err();
        assert!(e.to_string().contains("memroy"), "{e}");
        assert!(Policy::from_json(r#"{"memory": "lots"}"#).is_err());
        assert!(Policy::from_json(r#"{"memory": 0}"#).is_err());
        assert!(Policy::from_json(r#"{"mounts": [{"host": "/tmp", "guest": "rel"}]}"#).is_err());
        assert!(Policy::from_json(r#"{"mounts": [{"host": "/tmp", "guest": "/a/../b"}]}"#).is_err());
        assert!(Policy::from_json(r#"{"network": "host"}"#).is_err());
        assert!(Policy::builder().env("A=B", "c").build().is_err());
    }

    #[test]
    fn mount_specs() {
        assert_eq!(Mount::parse("/a:/b").unwrap(), Mount::read_only("/a", "/b"));
        assert_eq!(Mount::parse("/a:/b:rw").unwrap(), Mount::read_write("/a", "/b"));
        assert_eq!(Mount::parse("/a:/b:ro").unwrap(), Mount::read_only("/a", "/b"));
        assert!(Mount::parse("/a").is_err());
        assert!(Mount::parse("/a:/b:rx").is_err());
        assert!(Mount::parse(":/b").is_err());
    }
}
