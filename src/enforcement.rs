//! The record of how a backend lowered a [`Policy`](crate::Policy): for each field, the
//! mechanism that enforces it, or why it was skipped — and the one rule every backend follows
//! when it cannot enforce a field: refuse, unless the policy is best-effort (then skip it and
//! say so in every outcome).

use std::collections::BTreeMap;
use std::fmt;

use serde::Serialize;

use crate::{BackendKind, Error, Result};

/// A field of [`Policy`](crate::Policy), as the record of enforcement names it (its JSON name).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum PolicyField {
    /// [`Policy::memory`](crate::Policy::memory).
    Memory,
    /// [`Policy::timeout`](crate::Policy::timeout).
    Timeout,
    /// [`Policy::cpu_time`](crate::Policy::cpu_time).
    CpuTime,
    /// [`Policy::fuel`](crate::Policy::fuel).
    Fuel,
    /// [`Policy::cpus`](crate::Policy::cpus).
    Cpus,
    /// [`Policy::max_processes`](crate::Policy::max_processes).
    MaxProcesses,
    /// [`Policy::max_open_files`](crate::Policy::max_open_files).
    MaxOpenFiles,
    /// [`Policy::max_file_size`](crate::Policy::max_file_size).
    MaxFileSize,
    /// [`Policy::max_output`](crate::Policy::max_output).
    MaxOutput,
    /// [`Policy::mounts`](crate::Policy::mounts).
    Mounts,
    /// [`Policy::system_dirs`](crate::Policy::system_dirs).
    SystemDirs,
    /// [`Policy::network`](crate::Policy::network).
    Network,
    /// [`Policy::unix_sockets`](crate::Policy::unix_sockets).
    UnixSockets,
    /// [`Policy::env`](crate::Policy::env).
    Env,
    /// [`Policy::deny_syscalls`](crate::Policy::deny_syscalls).
    DenySyscalls,
    /// [`Policy::compile`](crate::Policy::compile).
    Compile,
}

impl PolicyField {
    /// Every field.
    pub const ALL: [PolicyField; 16] = [
        PolicyField::Memory,
        PolicyField::Timeout,
        PolicyField::CpuTime,
        PolicyField::Fuel,
        PolicyField::Cpus,
        PolicyField::MaxProcesses,
        PolicyField::MaxOpenFiles,
        PolicyField::MaxFileSize,
        PolicyField::MaxOutput,
        PolicyField::Mounts,
        PolicyField::SystemDirs,
        PolicyField::Network,
        PolicyField::UnixSockets,
        PolicyField::Env,
        PolicyField::DenySyscalls,
        PolicyField::Compile,
    ];

    /// The field's name in the policy's JSON form (`memory`, `cpu_time`, ...).
    pub fn name(self) -> &'static str {
        match self {
            PolicyField::Memory => "memory",
            PolicyField::Timeout => "timeout",
            PolicyField::CpuTime => "cpu_time",
            PolicyField::Fuel => "fuel",
            PolicyField::Cpus => "cpus",
            PolicyField::MaxProcesses => "max_processes",
            PolicyField::MaxOpenFiles => "max_open_files",
            PolicyField::MaxFileSize => "max_file_size",
            PolicyField::MaxOutput => "max_output",
            PolicyField::Mounts => "mounts",
            PolicyField::SystemDirs => "system_dirs",
            PolicyField::Network => "network",
            PolicyField::UnixSockets => "unix_sockets",
            PolicyField::Env => "env",
            PolicyField::DenySyscalls => "deny_syscalls",
            PolicyField::Compile => "compile",
        }
    }
}

impl fmt::Display for PolicyField {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for PolicyField {
    type Err = ();
    fn from_str(s: &str) -> std::result::Result<Self, ()> {
        PolicyField::ALL.into_iter().find(|f| f.name() == s).ok_or(())
    }
}

/// How the fields of a sandbox's policy are enforced: built by a backend's lowering, copied into
/// every [`Outcome`](crate::Outcome).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Record {
    pub(crate) enforced: BTreeMap<PolicyField, String>,
    pub(crate) skipped: BTreeMap<PolicyField, String>,
}

/// A backend lowering a policy: records each field's mechanism, and refuses (or, best-effort,
/// skips) what it cannot enforce.
#[derive(Debug)]
pub(crate) struct Lowering {
    backend: BackendKind,
    best_effort: bool,
    pub(crate) record: Record,
}

impl Lowering {
    pub(crate) fn new(backend: BackendKind, best_effort: bool) -> Self {
        Lowering { backend, best_effort, record: Record::default() }
    }

    /// `field` is enforced by `how`.
    pub(crate) fn enforce(&mut self, field: PolicyField, how: impl Into<String>) {
        self.record.enforced.insert(field, how.into());
    }

    /// This backend cannot enforce `field`: an error naming the backend, the field and `reason`,
    /// unless the policy is best-effort, which records the skip instead.
    pub(crate) fn refuse(&mut self, field: PolicyField, reason: impl Into<String>) -> Result<()> {
        let reason = reason.into();
        if self.best_effort {
            self.record.enforced.remove(&field);
            self.record.skipped.insert(field, reason);
            Ok(())
        } else {
            Err(Error::Unenforceable { backend: self.backend, field, reason })
        }
    }

    pub(crate) fn finish(self) -> Record {
        self.record
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_the_json_names_of_the_policys_fields() {
        let json: serde_json::Value = serde_json::to_value(crate::Policy::default()).unwrap();
        let fields: Vec<&str> = json.as_object().unwrap().keys().map(String::as_str).collect();
        for f in PolicyField::ALL {
            assert!(fields.contains(&f.name()), "{f}");
            assert_eq!(f.name().parse::<PolicyField>(), Ok(f));
            assert_eq!(serde_json::to_value(f).unwrap(), f.name());
        }
        // Every field but `best_effort`, which says how to treat the others.
        assert_eq!(fields.len(), PolicyField::ALL.len() + 1);
    }

    #[test]
    fn refusing_skips_when_best_effort() {
        let mut strict = Lowering::new(BackendKind::Wasm, false);
        let e = strict.refuse(PolicyField::Network, "no sockets").unwrap_err();
        assert!(matches!(e, Error::Unenforceable { field: PolicyField::Network, backend: BackendKind::Wasm, .. }));
        let mut lenient = Lowering::new(BackendKind::MicroVm, true);
        lenient.enforce(PolicyField::Network, "nothing");
        lenient.refuse(PolicyField::Network, "no device").unwrap();
        let r = lenient.finish();
        assert_eq!(r.skipped[&PolicyField::Network], "no device");
        assert!(!r.enforced.contains_key(&PolicyField::Network));
    }
}
