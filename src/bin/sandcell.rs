//! The `sandcell` command-line tool.
//!
//! ```text
//! sandcell run [--backend wasm|process|microvm] [--memory SIZE] [--timeout DURATION]
//!              [--fuel N] [--max-output SIZE] [--mount HOST:GUEST[:ro|:rw]]... [--env K=V]...
//!              [--json] PROGRAM [-- ARGS...]
//! sandcell probe [--json]
//! ```
//!
//! Exit status: the guest's exit code; 124 on timeout; 125 for any other limit, trap, signal or
//! interruption (with a one-line reason on stderr); 126 when the host could not run the program.

use std::io::{IsTerminal, Read, Write};
use std::os::unix::fs::FileTypeExt;
use std::path::PathBuf;
use std::process::ExitCode;

use sandcell::units::{parse_duration, parse_size};
use sandcell::{BackendKind, Error, Mount, Outcome, Policy, Program, RunOptions, SandboxBuilder, Status, Stream};

const USAGE: &str = "\
usage:
  sandcell run [OPTIONS] PROGRAM [-- ARGS...]
  sandcell probe [--json]

run options:
  --backend wasm|process|microvm   isolation backend (default: wasm)
  --memory SIZE                    memory cap (1048576, 64K, 64M, 1G; default 512M)
  --timeout DURATION               wall-clock limit (2s, 500ms)
  --cpu-time DURATION              CPU-time limit
  --fuel N                         instruction budget for wasm guests
  --max-output SIZE                cap on each of stdout and stderr (default 16M)
  --max-processes N                process limit (process backend; default 64)
  --vcpus N                        CPUs the guest may use (micro-VM: vCPU count)
  --mount HOST:GUEST[:ro|:rw]      make a host directory visible (read-only by default)
  --env K=V                        set an environment variable
  --stdin FILE                     feed FILE to the guest's stdin ('-': this process's stdin;
                                   default: this process's stdin when it is a pipe or a file)
  --cwd DIR                        working directory inside the sandbox
  --entry NAME                     call this wasm export instead of _start (ARGS are its parameters)
  --cache-dir DIR                  keep compiled artifacts in DIR
  --policy FILE                    start from a JSON policy document
  --best-effort                    run even if some policy field cannot be enforced
  --json                           print one JSON object with status, output and usage

exit status: the guest's exit code; 124 timeout; 125 other limit, trap or signal;
126 the host could not run the program.";

/// A host-side failure of the CLI itself.
struct Failure(String);

impl From<Error> for Failure {
    fn from(e: Error) -> Self {
        Failure(e.to_string_with_causes())
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let json = args.iter().take_while(|a| *a != "--").any(|a| a == "--json");
    let result = match args.first().map(String::as_str) {
        Some("run") => run(&args[1..]),
        Some("probe") => probe(&args[1..]),
        Some("-h" | "--help" | "help") => {
            println!("{USAGE}");
            Ok(0)
        }
        Some("-V" | "--version") => {
            println!("sandcell {}", env!("CARGO_PKG_VERSION"));
            Ok(0)
        }
        Some(other) => Err(Failure(format!("unknown command `{other}`\n{USAGE}"))),
        None => Err(Failure(USAGE.to_owned())),
    };
    match result {
        Ok(code) => ExitCode::from(code),
        Err(Failure(message)) => {
            if json {
                let mut out = String::from("{\"error\":");
                out.push_str(&json_string(&message));
                out.push('}');
                println!("{out}");
            }
            eprintln!("sandcell: error: {message}");
            ExitCode::from(126)
        }
    }
}

fn json_string(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| "\"\"".to_owned())
}

fn probe(args: &[String]) -> Result<u8, Failure> {
    let mut json = false;
    for a in args {
        match a.as_str() {
            "--json" => json = true,
            other => return Err(Failure(format!("unknown option `{other}` for `probe`"))),
        }
    }
    let probe = sandcell::probe();
    if json {
        println!("{}", probe.to_json());
    } else {
        println!("{probe}");
    }
    Ok(0)
}

struct RunArgs {
    backend: BackendKind,
    policy: Policy,
    json: bool,
    program: String,
    args: Vec<String>,
    env: Vec<(String, String)>,
    stdin: Option<String>,
    cwd: Option<PathBuf>,
    entry: Option<String>,
    cache_dir: Option<PathBuf>,
}

fn parse_run(args: &[String]) -> Result<RunArgs, Failure> {
    let mut backend = BackendKind::Wasm;
    let mut policy: Option<Policy> = None;
    type Edit = Box<dyn FnOnce(&mut Policy) -> Result<(), Failure>>;
    let mut edits: Vec<Edit> = Vec::new();
    let mut json = false;
    let mut program = None;
    let mut rest = Vec::new();
    let mut env = Vec::new();
    let mut stdin = None;
    let mut cwd = None;
    let mut entry = None;
    let mut cache_dir = None;

    let mut it = args.iter();
    while let Some(arg) = it.next() {
        let (flag, inline) = match arg.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f, Some(v.to_owned())),
            _ => (arg.as_str(), None),
        };
        let mut value = |name: &str| -> Result<String, Failure> {
            match inline.clone() {
                Some(v) => Ok(v),
                None => it.next().cloned().ok_or_else(|| Failure(format!("`{name}` needs a value"))),
            }
        };
        let bad = |what: &str, why: String| Failure(format!("invalid {what}: {why}"));
        match flag {
            "--" => {
                rest.extend(it.by_ref().cloned());
                break;
            }
            "--backend" => backend = value(flag)?.parse()?,
            "--memory" => {
                let v = parse_size(&value(flag)?).map_err(|e| bad("--memory", e))?;
                edits.push(Box::new(move |p| {
                    p.memory = Some(v);
                    Ok(())
                }));
            }
            "--timeout" => {
                let v = parse_duration(&value(flag)?).map_err(|e| bad("--timeout", e))?;
                edits.push(Box::new(move |p| {
                    p.timeout = Some(v);
                    Ok(())
                }));
            }
            "--cpu-time" => {
                let v = parse_duration(&value(flag)?).map_err(|e| bad("--cpu-time", e))?;
                edits.push(Box::new(move |p| {
                    p.cpu_time = Some(v);
                    Ok(())
                }));
            }
            "--fuel" => {
                let text = value(flag)?;
                let v: u64 = text.parse().map_err(|_| bad("--fuel", format!("`{text}` is not a whole number")))?;
                edits.push(Box::new(move |p| {
                    p.fuel = Some(v);
                    Ok(())
                }));
            }
            "--max-output" => {
                let v = parse_size(&value(flag)?).map_err(|e| bad("--max-output", e))?;
                edits.push(Box::new(move |p| {
                    p.max_output = v;
                    Ok(())
                }));
            }
            "--max-processes" => {
                let text = value(flag)?;
                let v: u32 =
                    text.parse().map_err(|_| bad("--max-processes", format!("`{text}` is not a whole number")))?;
                edits.push(Box::new(move |p| {
                    p.max_processes = Some(v);
                    Ok(())
                }));
            }
            "--vcpus" => {
                let text = value(flag)?;
                let v: u32 = text.parse().map_err(|_| bad("--vcpus", format!("`{text}` is not a whole number")))?;
                edits.push(Box::new(move |p| {
                    p.cpus = Some(v);
                    Ok(())
                }));
            }
            "--mount" => {
                let m = Mount::parse(&value(flag)?)?;
                edits.push(Box::new(move |p| {
                    p.mounts.push(m);
                    Ok(())
                }));
            }
            "--env" => {
                let text = value(flag)?;
                let (k, v) = text.split_once('=').ok_or_else(|| bad("--env", format!("`{text}` is not K=V")))?;
                env.push((k.to_owned(), v.to_owned()));
            }
            "--stdin" => stdin = Some(value(flag)?),
            "--cwd" => cwd = Some(PathBuf::from(value(flag)?)),
            "--entry" => entry = Some(value(flag)?),
            "--cache-dir" => cache_dir = Some(PathBuf::from(value(flag)?)),
            "--policy" => {
                let path = value(flag)?;
                let text =
                    std::fs::read_to_string(&path).map_err(|e| Failure(format!("cannot read policy `{path}`: {e}")))?;
                policy = Some(Policy::from_json(&text)?);
            }
            "--best-effort" => edits.push(Box::new(|p| {
                p.best_effort = true;
                Ok(())
            })),
            "--json" => json = true,
            f if f.starts_with('-') && f.len() > 1 => return Err(Failure(format!("unknown option `{f}`\n{USAGE}"))),
            _ => {
                program = Some(arg.clone());
                rest.extend(it.by_ref().cloned());
                if rest.first().is_some_and(|a| a == "--") {
                    rest.remove(0);
                }
                break;
            }
        }
    }
    let program = program
        .or_else(|| (!rest.is_empty()).then(|| rest.remove(0)))
        .ok_or_else(|| Failure(format!("`run` needs a PROGRAM\n{USAGE}")))?;
    let mut policy = policy.unwrap_or_default();
    for edit in edits {
        edit(&mut policy)?;
    }
    Ok(RunArgs { backend, policy, json, program, args: rest, env, stdin, cwd, entry, cache_dir })
}

/// The guest's stdin: `--stdin FILE`, or this process's stdin when it is a pipe or a file (never
/// a terminal, which would wait for typing).
fn read_stdin(spec: Option<&str>) -> Result<Vec<u8>, Failure> {
    let mut buf = Vec::new();
    match spec {
        Some("-") => {
            std::io::stdin().read_to_end(&mut buf).map_err(|e| Failure(format!("cannot read stdin: {e}")))?;
        }
        Some(path) => {
            buf = std::fs::read(path).map_err(|e| Failure(format!("cannot read `{path}` for stdin: {e}")))?;
        }
        None => {
            let stdin = std::io::stdin();
            if stdin.is_terminal() {
                return Ok(buf);
            }
            let meta = std::fs::metadata("/proc/self/fd/0");
            let pipe_or_file = meta.map(|m| m.file_type().is_fifo() || m.file_type().is_file()).unwrap_or(false);
            if pipe_or_file {
                stdin.lock().read_to_end(&mut buf).map_err(|e| Failure(format!("cannot read stdin: {e}")))?;
            }
        }
    }
    Ok(buf)
}

fn run(args: &[String]) -> Result<u8, Failure> {
    let a = parse_run(args)?;
    let mut program = Program::path(&a.program).args(a.args.iter().cloned()).stdin(read_stdin(a.stdin.as_deref())?);
    for (k, v) in &a.env {
        program = program.env(k.clone(), v.clone());
    }
    if let Some(cwd) = &a.cwd {
        program = program.cwd(cwd.clone());
    }
    if let Some(entry) = &a.entry {
        program = program.entry(entry.clone());
    }
    let mut builder = SandboxBuilder::new(a.backend).policy(a.policy);
    if let Some(dir) = &a.cache_dir {
        builder = builder.cache_dir(dir.clone());
    }
    let sandbox = builder.build()?;
    let mut options = RunOptions::new();
    if !a.json {
        // Pass output through as it is produced.
        options = options.on_output(|stream, bytes| {
            let _ = match stream {
                Stream::Stdout => std::io::stdout().lock().write_all(bytes).and_then(|_| std::io::stdout().flush()),
                Stream::Stderr => std::io::stderr().lock().write_all(bytes),
            };
        });
    }
    let outcome = sandbox.run_with(&program, options)?;
    if a.json {
        println!("{}", outcome.to_json());
    } else if !matches!(outcome.status, Status::Exited(_)) {
        eprintln!("sandcell: {}", reason(&outcome));
    }
    Ok(exit_status(&outcome.status))
}

fn reason(outcome: &Outcome) -> String {
    match &outcome.status {
        Status::Timeout => format!("{} after {:.3}s", outcome.status, outcome.usage.wall.as_secs_f64()),
        other => other.to_string(),
    }
}

/// Exit status of the CLI for a guest outcome. Exit codes outside 0-255 (possible in WASI,
/// which has 32-bit codes) become 255: never 0, which would fake success.
fn exit_status(status: &Status) -> u8 {
    match status {
        Status::Exited(code) => u8::try_from(*code).unwrap_or(255),
        Status::Timeout => 124,
        _ => 125,
    }
}
