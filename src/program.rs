//! [`Program`]: what to run.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::policy::check_env;
use crate::{Error, Result};

/// Where a program's code comes from.
#[derive(Clone, Debug)]
pub enum Artifact {
    /// A file. For the wasm and micro-VM backends it is a path on the host (`.wasm`, `.wat`, or
    /// a guest ELF); for the process backend it is a path inside the sandbox's filesystem view.
    Path(PathBuf),
    /// Bytes in memory: a wasm module (binary or text) or a freestanding guest ELF.
    Bytes(Arc<[u8]>),
}

/// A program to run: the artifact, its arguments, environment, stdin and working directory.
///
/// ```
/// let program = sandcell::Program::path("examples/hello.wat")
///     .arg("world")
///     .env("GREETING", "hello")
///     .stdin(b"input".to_vec());
/// assert_eq!(program.arguments(), ["world"]);
/// ```
#[derive(Clone, Debug)]
pub struct Program {
    artifact: Artifact,
    name: Option<String>,
    args: Vec<String>,
    env: Vec<(String, String)>,
    stdin: Arc<[u8]>,
    /// A run's streamed stdin (set from [`crate::RunOptions::stdin_reader`]); replaces `stdin`.
    stream: Option<Arc<crate::input::StdinStream>>,
    cwd: Option<PathBuf>,
    entry: Option<String>,
}

impl Program {
    /// A program read from a file.
    pub fn path(path: impl Into<PathBuf>) -> Self {
        Self::new(Artifact::Path(path.into()))
    }

    /// A program given as bytes (a wasm module, WAT text, or a guest ELF).
    pub fn bytes(bytes: impl Into<Arc<[u8]>>) -> Self {
        Self::new(Artifact::Bytes(bytes.into()))
    }

    fn new(artifact: Artifact) -> Self {
        Program {
            artifact,
            name: None,
            args: Vec::new(),
            env: Vec::new(),
            stdin: Arc::from(&[][..]),
            stream: None,
            cwd: None,
            entry: None,
        }
    }

    /// Appends one argument (after `argv[0]`).
    #[must_use]
    pub fn arg(mut self, arg: impl Into<String>) -> Self {
        self.args.push(arg.into());
        self
    }

    /// Appends arguments.
    #[must_use]
    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.args.extend(args.into_iter().map(Into::into));
        self
    }

    /// Sets an environment variable (overriding the policy's variable of the same name).
    #[must_use]
    pub fn env(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        let key = key.into();
        self.env.retain(|(k, _)| *k != key);
        self.env.push((key, value.into()));
        self
    }

    /// The bytes the program reads from stdin; after them it reads end-of-file.
    #[must_use]
    pub fn stdin(mut self, input: impl Into<Arc<[u8]>>) -> Self {
        self.stdin = input.into();
        self.stream = None;
        self
    }

    /// This program with its stdin streamed from `stream` (one run's, see `RunOptions`).
    pub(crate) fn with_stream(mut self, stream: Arc<crate::input::StdinStream>) -> Self {
        self.stdin = Arc::from(&[][..]);
        self.stream = Some(stream);
        self
    }

    /// Working directory inside the sandbox.
    #[must_use]
    pub fn cwd(mut self, dir: impl Into<PathBuf>) -> Self {
        self.cwd = Some(dir.into());
        self
    }

    /// `argv[0]` (default: the file name of the artifact, or `main` for bytes).
    #[must_use]
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }

    /// Calls this exported function instead of `_start` (wasm backend). Its parameters are
    /// parsed from the program's arguments (`i32`, `i64`, `f32`, `f64`), and its results are
    /// written to stdout, one per line. Suits plugin-style modules that export functions.
    #[must_use]
    pub fn entry(mut self, export: impl Into<String>) -> Self {
        self.entry = Some(export.into());
        self
    }

    /// The entry point set with [`entry`](Program::entry).
    pub fn entry_point(&self) -> Option<&str> {
        self.entry.as_deref()
    }

    /// The artifact.
    pub fn artifact(&self) -> &Artifact {
        &self.artifact
    }
    /// The arguments after `argv[0]`.
    pub fn arguments(&self) -> &[String] {
        &self.args
    }
    /// The program's own environment variables.
    pub fn env_vars(&self) -> &[(String, String)] {
        &self.env
    }
    /// The stdin bytes.
    pub fn stdin_bytes(&self) -> &[u8] {
        &self.stdin
    }
    /// Where the run's stdin comes from: the bytes, or the streamed reader (not started yet).
    pub(crate) fn stdin_source(&self) -> crate::input::StdinSource {
        use crate::input::StdinSource;
        match &self.stream {
            Some(stream) => StdinSource::Stream(stream.clone()),
            None => StdinSource::Bytes(self.stdin.clone()),
        }
    }
    /// The working directory, if set.
    pub fn working_dir(&self) -> Option<&Path> {
        self.cwd.as_deref()
    }

    /// `argv[0]`.
    pub fn argv0(&self) -> String {
        if let Some(name) = &self.name {
            return name.clone();
        }
        match &self.artifact {
            Artifact::Path(p) => match &p.file_name() {
                Some(n) => n.to_string_lossy().into_owned(),
                None => p.to_string_lossy().into_owned(),
            },
            Artifact::Bytes(_) => "main".to_owned(),
        }
    }

    /// Reads the artifact from the host (wasm and micro-VM backends).
    pub(crate) fn load(&self) -> Result<Arc<[u8]>> {
        match &self.artifact {
            Artifact::Bytes(b) => Ok(b.clone()),
            Artifact::Path(p) => std::fs::read(p).map(Arc::from).map_err(|source| {
                if source.kind() == std::io::ErrorKind::NotFound {
                    Error::ProgramNotFound { program: p.display().to_string(), hint: "no such file on the host".into() }
                } else {
                    Error::ReadProgram { path: p.clone(), source }
                }
            }),
        }
    }

    /// Checks arguments and environment for bytes no backend can pass on.
    pub(crate) fn validate(&self) -> Result<()> {
        for a in self.args.iter().chain(self.name.iter()) {
            if a.contains('\0') {
                return Err(Error::invalid_program(format!("argument `{}` contains a NUL byte", a.escape_debug())));
            }
        }
        for (k, v) in &self.env {
            check_env(k, v)
                .map_err(|why| Error::invalid_program(format!("environment variable `{}`: {why}", k.escape_debug())))?;
        }
        if let Some(cwd) = &self.cwd {
            if !cwd.is_absolute() {
                return Err(Error::invalid_program(format!("working directory `{}` must be absolute", cwd.display())));
            }
        }
        Ok(())
    }

    /// The environment of a run: the policy's variables, then the program's (which win).
    pub(crate) fn merged_env(&self, policy_env: &std::collections::BTreeMap<String, String>) -> Vec<(String, String)> {
        let mut env: Vec<(String, String)> = policy_env
            .iter()
            .filter(|(k, _)| !self.env.iter().any(|(pk, _)| pk == *k))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        env.extend(self.env.iter().cloned());
        env
    }
}
