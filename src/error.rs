//! Host-side failures.
//!
//! An [`Error`] always means that the *host* could not do what was asked: the policy is invalid,
//! the backend cannot run on this machine, the program could not be read or is malformed, or a
//! system call needed to set up the sandbox failed. Whatever the *guest* does is reported in an
//! [`Outcome`](crate::Outcome) instead.

use std::path::PathBuf;

use crate::BackendKind;

/// `Result` with sandcell's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Why the host could not do what was asked. Each message says what failed and how to fix it.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A policy field has a value that can never be valid.
    #[error("invalid policy: `{field}`: {reason}")]
    InvalidPolicy {
        /// The policy field, as spelled in the serde form (`memory`, `mounts[0].host`, ...).
        field: String,
        /// What is wrong with it and what would be accepted.
        reason: String,
    },

    /// A policy field is valid but this backend cannot enforce it. sandcell refuses rather than
    /// silently running with less confinement; set `best_effort` to run anyway and have the
    /// [`Outcome`](crate::Outcome) list what was skipped.
    #[error("the {backend} backend cannot enforce `{field}`: {reason}")]
    Unenforceable {
        /// The backend that was asked.
        backend: BackendKind,
        /// The policy field.
        field: crate::PolicyField,
        /// Why it cannot be enforced, and what to do instead.
        reason: String,
    },

    /// A request this backend cannot carry out (for example, an option of
    /// [`PrepareOptions`](crate::PrepareOptions) it has no mechanism for).
    #[error("the {backend} backend cannot do {what}: {reason}")]
    Unsupported {
        /// The backend that was asked.
        backend: BackendKind,
        /// What was asked.
        what: String,
        /// Why, and what to do instead.
        reason: String,
    },

    /// The backend cannot run on this host at all (feature not compiled in, KVM missing, ...).
    #[error("the {backend} backend is not available on this host: {reason}")]
    BackendUnavailable {
        /// The backend that was asked.
        backend: BackendKind,
        /// Why, and how to fix it.
        reason: String,
    },

    /// The program's file could not be read.
    #[error("cannot read program `{}`", path.display())]
    ReadProgram {
        /// The path that was given.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },

    /// The program does not exist: no such file on the host (wasm, micro-VM), or nothing to
    /// execute at that path, or on the `PATH`, inside the sandbox (process).
    #[error("program not found: `{program}`{}", if hint.is_empty() { String::new() } else { format!(" ({hint})") })]
    ProgramNotFound {
        /// The program as it was given.
        program: String,
        /// Where it was looked for, or how to make it visible.
        hint: String,
    },

    /// The program is malformed or does not fit this backend (not WebAssembly, imports that the
    /// sandbox does not provide, arguments with NUL bytes, ...).
    #[error("invalid program: {reason}")]
    InvalidProgram {
        /// What is wrong with it.
        reason: String,
    },

    /// The WebAssembly module is over one of the compilation budgets of
    /// [`Policy::compile`](crate::Policy::compile): it was refused before compiling, or its
    /// compilation was stopped.
    #[error("the module is over the compilation budget `compile.{}`: {reason}", limit.name())]
    CompileBudget {
        /// Which budget.
        limit: CompileLimit,
        /// The module's figure and the budget.
        reason: String,
    },

    /// A system resource needed to set up or run the sandbox could not be obtained.
    #[error("cannot {action}")]
    Setup {
        /// What sandcell was doing, as a verb phrase ("create a user namespace").
        action: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },

    /// The compiled-module cache directory could not be used.
    #[error("module cache `{}`: {reason}", dir.display())]
    Cache {
        /// The configured cache directory.
        dir: PathBuf,
        /// What went wrong and how to fix it.
        reason: String,
    },

    /// The WebAssembly engine failed for a reason that is not the guest's fault.
    #[error("wasm engine: {reason}")]
    Engine {
        /// What failed.
        reason: String,
    },
}

/// The compilation budgets of [`CompileLimits`](crate::CompileLimits).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum CompileLimit {
    /// [`CompileLimits::max_module_size`](crate::CompileLimits::max_module_size).
    ModuleSize,
    /// [`CompileLimits::max_functions`](crate::CompileLimits::max_functions).
    Functions,
    /// [`CompileLimits::max_function_size`](crate::CompileLimits::max_function_size).
    FunctionSize,
    /// [`CompileLimits::time`](crate::CompileLimits::time).
    Time,
    /// [`CompileLimits::memory`](crate::CompileLimits::memory).
    Memory,
}

impl CompileLimit {
    /// The field's name in [`CompileLimits`](crate::CompileLimits) (`max_functions`, ...).
    pub fn name(self) -> &'static str {
        match self {
            CompileLimit::ModuleSize => "max_module_size",
            CompileLimit::Functions => "max_functions",
            CompileLimit::FunctionSize => "max_function_size",
            CompileLimit::Time => "time",
            CompileLimit::Memory => "memory",
        }
    }
}

/// A coarse classification of [`Error`], stable across versions; the C ABI and the Python
/// package expose it so that callers can branch on it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
#[repr(u32)]
pub enum ErrorKind {
    /// [`Error::InvalidPolicy`], or an invalid argument through the C ABI.
    InvalidPolicy = 1,
    /// [`Error::Unenforceable`] and [`Error::Unsupported`].
    Unenforceable = 2,
    /// [`Error::BackendUnavailable`].
    BackendUnavailable = 3,
    /// [`Error::ReadProgram`], [`Error::ProgramNotFound`], [`Error::InvalidProgram`] and
    /// [`Error::CompileBudget`].
    InvalidProgram = 4,
    /// [`Error::Setup`], [`Error::Cache`] and [`Error::Engine`].
    Host = 5,
}

impl ErrorKind {
    /// A short lowercase name (`invalid_policy`, `unenforceable`, ...).
    pub fn name(self) -> &'static str {
        match self {
            ErrorKind::InvalidPolicy => "invalid_policy",
            ErrorKind::Unenforceable => "unenforceable",
            ErrorKind::BackendUnavailable => "backend_unavailable",
            ErrorKind::InvalidProgram => "invalid_program",
            ErrorKind::Host => "host",
        }
    }
}

impl Error {
    /// The [`ErrorKind`] of this error.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::InvalidPolicy { .. } => ErrorKind::InvalidPolicy,
            Error::Unenforceable { .. } => ErrorKind::Unenforceable,
            Error::Unsupported { .. } => ErrorKind::Unenforceable,
            Error::BackendUnavailable { .. } => ErrorKind::BackendUnavailable,
            Error::ReadProgram { .. }
            | Error::ProgramNotFound { .. }
            | Error::InvalidProgram { .. }
            | Error::CompileBudget { .. } => ErrorKind::InvalidProgram,
            Error::Setup { .. } | Error::Cache { .. } | Error::Engine { .. } => ErrorKind::Host,
        }
    }

    pub(crate) fn invalid_policy(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Error::InvalidPolicy { field: field.into(), reason: reason.into() }
    }

    pub(crate) fn invalid_program(reason: impl Into<String>) -> Self {
        Error::InvalidProgram { reason: reason.into() }
    }

    pub(crate) fn setup(action: impl Into<String>, source: std::io::Error) -> Self {
        Error::Setup { action: action.into(), source }
    }

    /// The message of this error followed by its chain of causes, `: `-separated.
    pub fn to_string_with_causes(&self) -> String {
        let mut text = self.to_string();
        let mut cause = std::error::Error::source(self);
        while let Some(c) = cause {
            text.push_str(": ");
            text.push_str(&c.to_string());
            cause = c.source();
        }
        text
    }
}
