//! The `sandcell` command-line tool.
//!
//! Exit status: the guest's exit code; 124 on timeout; 125 for any other limit, trap, signal or
//! interruption; 126 when the host could not run the program; 127 when the program does not
//! exist; 2 for a usage error. When the status is sandcell's own (2, 124-127), or a guest's exit
//! code that is one of those, the last line on stderr — written after the guest's output has
//! ended — says which it is.

use std::io::{IsTerminal, Read, Write};
use std::os::unix::fs::FileTypeExt;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, CommandFactory, Parser, Subcommand, ValueEnum};
use sandcell::units::{parse_duration, parse_size};
use sandcell::{BackendKind, Error, Mount, Outcome, Policy, Program, RunOptions, SandboxBuilder, Status, Stream};

/// Exit statuses of sandcell itself.
mod code {
    pub const USAGE: u8 = 2;
    pub const TIMEOUT: u8 = 124;
    pub const STOPPED: u8 = 125;
    pub const HOST: u8 = 126;
    pub const NOT_FOUND: u8 = 127;
    pub const OWN: [u8; 5] = [USAGE, TIMEOUT, STOPPED, HOST, NOT_FOUND];
}

/// Run untrusted code in a WebAssembly sandbox, a confined Linux process or a KVM micro-VM.
#[derive(Parser)]
#[command(name = "sandcell", version, about, after_help = EXIT_STATUS)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

const EXIT_STATUS: &str = "Exit status: the guest's exit code (255 for codes beyond 255); 124 timeout; \
125 another limit, a trap or a signal; 126 the host could not run the program; 127 no such program; \
2 usage error.";

#[derive(Subcommand)]
enum Command {
    /// Run a program in a sandbox.
    #[command(after_help = EXIT_STATUS)]
    Run(Box<RunArgs>),
    /// Measure a program: one cold run, then prepare it once and time N warm runs.
    ///
    /// Prints the cold run's time (the first run in this process: with the artifact cache as
    /// configured, so --no-cache for a compilation from nothing), the preparation's (after the
    /// cold run, which compiled the program already: what preparing costs beyond compiling), and
    /// the warm runs' median and 90th percentile. The guest's output is not shown; the runs'
    /// stdin is --stdin FILE (whole, the same for every run) or nothing.
    #[command(
        mut_arg("stdin", |a| a.help("Feed FILE to every run's stdin, whole ('-': this process's stdin, read first; default: none)")),
        mut_arg("json", |a| a.help("Print one JSON object with the times"))
    )]
    Bench(Box<BenchArgs>),
    /// Show what this host supports: each backend, and the facts behind it.
    Probe {
        /// Print one JSON object.
        #[arg(long)]
        json: bool,
    },
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// Print the manual page (roff), generated from the same definitions as `--help`.
    Man,
}

#[derive(Clone, Copy, ValueEnum)]
enum Backend {
    Wasm,
    Process,
    Microvm,
}

impl From<Backend> for BackendKind {
    fn from(b: Backend) -> Self {
        match b {
            Backend::Wasm => BackendKind::Wasm,
            Backend::Process => BackendKind::Process,
            Backend::Microvm => BackendKind::MicroVm,
        }
    }
}

#[derive(Args)]
struct RunArgs {
    /// Isolation backend.
    #[arg(long, value_enum, default_value = "wasm")]
    backend: Backend,
    /// Memory cap (1048576, 64K, 64M, 1G; default 512M).
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    memory: Option<u64>,
    /// Wall-clock limit (2s, 500ms).
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    timeout: Option<Duration>,
    /// CPU-time limit.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    cpu_time: Option<Duration>,
    /// Instruction budget for wasm guests.
    #[arg(long, value_name = "N")]
    fuel: Option<u64>,
    /// Cap on each of stdout and stderr (default 16M).
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    max_output: Option<u64>,
    /// Process limit (process backend; default 64).
    #[arg(long, value_name = "N")]
    max_processes: Option<u32>,
    /// CPUs the guest may use (micro-VM: the vCPU count).
    #[arg(long, value_name = "N")]
    vcpus: Option<u32>,
    /// Make a host directory visible: HOST:GUEST[:ro|:rw], or HOST::GUEST[:ro|:rw] when a path
    /// contains a colon (read-only unless :rw).
    #[arg(long, value_name = "MOUNT", value_parser = parse_mount)]
    mount: Vec<Mount>,
    /// Set an environment variable (K=V).
    #[arg(long, value_name = "K=V", value_parser = parse_env)]
    env: Vec<(String, String)>,
    /// Feed FILE to the guest's stdin ('-': this process's stdin; default: this process's stdin
    /// when it is a pipe or a file).
    #[arg(long, value_name = "FILE")]
    stdin: Option<String>,
    /// Working directory inside the sandbox.
    #[arg(long, value_name = "DIR")]
    cwd: Option<PathBuf>,
    /// Call this wasm export instead of _start (ARGS are its parameters).
    #[arg(long, value_name = "NAME")]
    entry: Option<String>,
    /// Keep compiled artifacts in DIR (default: $SANDCELL_CACHE_DIR, else $XDG_CACHE_HOME/sandcell,
    /// else ~/.cache/sandcell).
    #[arg(long, value_name = "DIR")]
    cache_dir: Option<PathBuf>,
    /// Compile everything afresh and keep nothing on disk.
    #[arg(long, conflicts_with = "cache_dir")]
    no_cache: bool,
    /// Start from a JSON policy document (the flags above change it).
    #[arg(long, value_name = "FILE")]
    policy: Option<PathBuf>,
    /// Let native programs create Unix-domain sockets (process backend).
    #[arg(long)]
    unix_sockets: bool,
    /// Run even if some policy field cannot be enforced (the outcome lists what was skipped).
    #[arg(long)]
    best_effort: bool,
    /// Print one JSON object with status, output and usage.
    #[arg(long)]
    json: bool,
    /// The program: a .wasm/.wat file, a native executable's path inside the sandbox (process
    /// backend), or a micro-VM guest.
    program: String,
    /// Arguments for the program.
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    args: Vec<String>,
}

#[derive(Args)]
struct BenchArgs {
    /// Warm runs to time after preparing the program.
    #[arg(long, value_name = "N", default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..))]
    runs: u32,
    /// Ready instances the prepared program keeps between runs (backends with pools: microvm).
    #[arg(long, value_name = "N")]
    pool: Option<usize>,
    /// Prepare by running the program until it says it is ready, and start each warm run from
    /// there (microvm, native guests calling `sandcell_guest::ready`).
    #[arg(long)]
    until_ready: bool,
    #[command(flatten)]
    run: RunArgs,
}

fn parse_mount(spec: &str) -> Result<Mount, String> {
    Mount::parse(spec).map_err(|e| match e {
        Error::InvalidPolicy { reason, .. } => reason,
        other => other.to_string(),
    })
}

fn parse_env(text: &str) -> Result<(String, String), String> {
    let (k, v) = text.split_once('=').ok_or_else(|| format!("`{text}` is not K=V"))?;
    Ok((k.to_owned(), v.to_owned()))
}

/// A failure of the CLI itself: its exit status, a kind for `--json`, and the message.
struct Failure {
    code: u8,
    kind: &'static str,
    message: String,
}

impl From<Error> for Failure {
    fn from(e: Error) -> Self {
        let (code, kind) = match &e {
            Error::ProgramNotFound { .. } => (code::NOT_FOUND, "program_not_found"),
            // What was asked cannot be valid: a usage error, as a bad flag is.
            Error::InvalidPolicy { .. } => (code::USAGE, e.kind().name()),
            Error::CompileBudget { .. } => (code::HOST, "compile_budget"),
            _ => (code::HOST, e.kind().name()),
        };
        Failure { code, kind, message: e.to_string_with_causes() }
    }
}

mod spinner {
    //! A spinner on stderr while a module compiles (or, on the micro-VM, is validated): a
    //! `tracing` layer that watches the library's `compile` and `validate` spans. Installed on a
    //! terminal only; it appears after [`DELAY`], so quick compilations draw nothing.

    use std::sync::mpsc;
    use std::time::Duration;

    use parking_lot::Mutex;
    use tracing::span;
    use tracing_subscriber::layer::{Context, Layer};
    use tracing_subscriber::registry::LookupSpan;

    /// How long a compilation runs before the spinner appears.
    pub const DELAY: Duration = Duration::from_millis(250);

    #[derive(Default)]
    pub struct Spinner {
        /// Ends the spinner's thread (and clears its line) when dropped or sent to.
        active: Mutex<Option<(mpsc::Sender<()>, std::thread::JoinHandle<()>)>>,
    }

    /// What the spinner says for one of sandcell's own spans (wasmer has a `validate` of its own).
    fn watched(meta: &tracing::Metadata<'_>) -> Option<&'static str> {
        if !meta.target().starts_with("sandcell") {
            return None;
        }
        match meta.name() {
            "compile" => Some("compiling the module"),
            "validate" => Some("validating the module"),
            _ => None,
        }
    }

    impl<S: tracing::Subscriber + for<'a> LookupSpan<'a>> Layer<S> for Spinner {
        fn on_enter(&self, id: &span::Id, ctx: Context<'_, S>) {
            let Some(what) = ctx.span(id).and_then(|s| watched(s.metadata())) else { return };
            let mut active = self.active.lock();
            if active.is_some() {
                return;
            }
            let (stop, stopped) = mpsc::channel::<()>();
            let thread = std::thread::spawn(move || {
                if stopped.recv_timeout(DELAY) != Err(mpsc::RecvTimeoutError::Timeout) {
                    return;
                }
                let bar = indicatif::ProgressBar::new_spinner().with_message(format!("sandcell: {what}…"));
                bar.set_draw_target(indicatif::ProgressDrawTarget::stderr());
                bar.enable_steady_tick(Duration::from_millis(100));
                let _ = stopped.recv();
                bar.finish_and_clear();
            });
            *active = Some((stop, thread));
        }

        fn on_exit(&self, id: &span::Id, ctx: Context<'_, S>) {
            if ctx.span(id).and_then(|s| watched(s.metadata())).is_none() {
                return;
            }
            if let Some((stop, thread)) = self.active.lock().take() {
                let _ = stop.send(());
                let _ = thread.join(); // the line is cleared before the guest's output
            }
        }
    }
}

fn main() -> ExitCode {
    // `SANDCELL_LOG=debug` (a tracing filter) prints each span as it closes, with its time; on
    // a terminal, a spinner shows while a large module compiles.
    {
        use tracing_subscriber::layer::SubscriberExt;
        use tracing_subscriber::util::SubscriberInitExt;
        use tracing_subscriber::Layer;
        let log = std::env::var("SANDCELL_LOG").ok().map(|filter| {
            tracing_subscriber::fmt::layer()
                .with_span_events(tracing_subscriber::fmt::format::FmtSpan::CLOSE)
                .with_writer(std::io::stderr)
                .with_filter(tracing_subscriber::EnvFilter::new(filter))
        });
        // Filtered to sandcell's own spans: unfiltered, the layer would enable every callsite of
        // every library (wasmer-wasix traces each WASI call).
        let spinner = std::io::stderr().is_terminal().then(|| {
            spinner::Spinner::default()
                .with_filter(tracing_subscriber::filter::filter_fn(|m| m.target().starts_with("sandcell")))
        });
        if log.is_some() || spinner.is_some() {
            let _ = tracing_subscriber::registry().with(log).with(spinner).try_init();
        }
    }
    let raw: Vec<String> = std::env::args().collect();
    // Whether `--json` was asked for, for errors before (or in) argument parsing: among the
    // run options, that is before the program.
    let wants_json = raw.iter().skip(1).take_while(|a| *a != "--").any(|a| a == "--json");
    let cli = match Cli::try_parse_from(&raw) {
        Ok(cli) => cli,
        Err(e) => {
            use clap::error::ErrorKind as K;
            if matches!(e.kind(), K::DisplayHelp | K::DisplayVersion | K::DisplayHelpOnMissingArgumentOrSubcommand)
                && e.exit_code() == 0
            {
                let _ = e.print();
                return ExitCode::SUCCESS;
            }
            if wants_json {
                // clap's first line, without its `error: ` prefix.
                let text = e.render().to_string();
                let first = text.lines().next().unwrap_or_default();
                print_json_error("usage", first.strip_prefix("error: ").unwrap_or(first));
            }
            let _ = e.print();
            eprintln!("sandcell: exit status {} is sandcell's own: a usage error", code::USAGE);
            return ExitCode::from(code::USAGE);
        }
    };
    let json = matches!(&cli.command, Command::Run(a) if a.json)
        || matches!(&cli.command, Command::Bench(a) if a.run.json)
        || matches!(cli.command, Command::Probe { json: true });
    match execute(cli.command) {
        Ok(code) => ExitCode::from(code),
        Err(Failure { code, kind, message }) => {
            if json {
                print_json_error(kind, &message);
            }
            eprintln!("sandcell: error: {message}");
            eprintln!("sandcell: exit status {code} is sandcell's own: {}", own_meaning(code));
            ExitCode::from(code)
        }
    }
}

fn own_meaning(code: u8) -> &'static str {
    match code {
        code::USAGE => "a usage error",
        code::TIMEOUT => "the guest was stopped at its timeout",
        code::STOPPED => "the guest was stopped (a limit, a trap, a signal or an interrupt)",
        code::NOT_FOUND => "the program was not found",
        _ => "the host could not run the program",
    }
}

fn print_json_error(kind: &str, message: &str) {
    let v = serde_json::json!({"error": {"kind": kind, "message": message}});
    println!("{v}");
}

fn execute(command: Command) -> Result<u8, Failure> {
    match command {
        Command::Run(args) => run(*args),
        Command::Bench(args) => bench(*args),
        Command::Probe { json } => {
            let probe = sandcell::probe();
            if json {
                println!("{}", probe.to_json());
            } else {
                println!("{probe}");
            }
            Ok(0)
        }
        Command::Completions { shell } => {
            clap_complete::generate(shell, &mut Cli::command(), "sandcell", &mut std::io::stdout());
            Ok(0)
        }
        Command::Man => {
            let mut out = Vec::new();
            clap_mangen::Man::new(Cli::command()).render(&mut out).map_err(|e| Failure {
                code: code::HOST,
                kind: "host",
                message: format!("cannot render: {e}"),
            })?;
            std::io::stdout().write_all(&out).map_err(|e| Failure {
                code: code::HOST,
                kind: "host",
                message: e.to_string(),
            })?;
            Ok(0)
        }
    }
}

/// Where compiled artifacts go unless `--cache-dir` or `--no-cache` says otherwise.
fn default_cache_dir() -> Option<PathBuf> {
    let nonempty = |v: &str| std::env::var_os(v).filter(|s| !s.is_empty()).map(PathBuf::from);
    if let Some(dir) = nonempty("SANDCELL_CACHE_DIR") {
        return Some(dir);
    }
    if let Some(dir) = nonempty("XDG_CACHE_HOME").filter(|d| d.is_absolute()) {
        return Some(dir.join("sandcell"));
    }
    nonempty("HOME").filter(|d| d.is_absolute()).map(|home| home.join(".cache/sandcell"))
}

fn policy_of(a: &RunArgs) -> Result<Policy, Failure> {
    let mut policy = match &a.policy {
        Some(path) => {
            let text = std::fs::read_to_string(path).map_err(|e| Failure {
                code: code::USAGE,
                kind: "usage",
                message: format!("cannot read policy `{}`: {e}", path.display()),
            })?;
            Policy::from_json(&text)?
        }
        None => Policy::default(),
    };
    if let Some(v) = a.memory {
        policy.memory = Some(v);
    }
    if let Some(v) = a.timeout {
        policy.timeout = Some(v);
    }
    if let Some(v) = a.cpu_time {
        policy.cpu_time = Some(v);
    }
    if let Some(v) = a.fuel {
        policy.fuel = Some(v);
    }
    if let Some(v) = a.max_output {
        policy.max_output = v;
    }
    if let Some(v) = a.max_processes {
        policy.max_processes = Some(v);
    }
    if let Some(v) = a.vcpus {
        policy.cpus = Some(v);
    }
    policy.mounts.extend(a.mount.iter().cloned());
    policy.unix_sockets |= a.unix_sockets;
    policy.best_effort |= a.best_effort;
    Ok(policy)
}

/// The guest's stdin: `--stdin FILE`, or this process's stdin when it is a pipe or a file (never
/// a terminal, which would wait for typing). It is streamed: the guest reads input as it arrives
/// (an interactive pipe works, and a large file is never held in memory).
fn stdin_fd(spec: Option<&str>) -> Result<Option<std::os::fd::OwnedFd>, Failure> {
    use std::os::fd::AsFd;
    let fail = |message: String| Failure { code: code::HOST, kind: "host", message };
    let own_stdin =
        || std::io::stdin().as_fd().try_clone_to_owned().map_err(|e| fail(format!("cannot read stdin: {e}")));
    match spec {
        Some("-") => Ok(Some(own_stdin()?)),
        Some(path) => {
            let file = std::fs::File::open(path).map_err(|e| fail(format!("cannot read `{path}` for stdin: {e}")))?;
            if file.metadata().is_ok_and(|m| m.is_dir()) {
                return Err(fail(format!("cannot read `{path}` for stdin: it is a directory")));
            }
            Ok(Some(file.into()))
        }
        None => {
            if std::io::stdin().is_terminal() {
                return Ok(None);
            }
            let meta = std::fs::metadata("/proc/self/fd/0");
            let pipe_or_file = meta
                .map(|m| m.file_type().is_fifo() || m.file_type().is_file() || m.file_type().is_socket())
                .unwrap_or(false);
            if pipe_or_file {
                Ok(Some(own_stdin()?))
            } else {
                Ok(None)
            }
        }
    }
}

/// The program `run` and `bench` run: PROGRAM, its arguments, environment, directory, entry.
fn program_of(a: &RunArgs) -> Program {
    let mut program = Program::path(&a.program).args(a.args.iter().cloned());
    for (k, v) in &a.env {
        program = program.env(k.clone(), v.clone());
    }
    if let Some(cwd) = &a.cwd {
        program = program.cwd(cwd.clone());
    }
    if let Some(entry) = &a.entry {
        program = program.entry(entry.clone());
    }
    program
}

/// The sandbox `run` and `bench` use: the backend, the policy, the artifact cache.
fn sandbox_of(a: &RunArgs) -> Result<Box<dyn sandcell::Sandbox>, Failure> {
    let builder = SandboxBuilder::new(a.backend.into()).policy(policy_of(a)?);
    Ok(match (&a.cache_dir, a.no_cache) {
        (Some(dir), _) => builder.cache_dir(dir.clone()).build()?,
        (None, true) => builder.build()?,
        // The default cache is a convenience: where it cannot be used (no home, a read-only or
        // foreign directory), the run goes on without it.
        (None, false) => match default_cache_dir() {
            Some(dir) => match builder.clone().cache_dir(dir).build() {
                Err(sandcell::Error::Cache { dir, reason }) => {
                    tracing::debug!("not using the default cache {}: {reason}", dir.display());
                    builder.build()?
                }
                other => other?,
            },
            None => builder.build()?,
        },
    })
}

fn run(a: RunArgs) -> Result<u8, Failure> {
    let sandbox = sandbox_of(&a)?;
    let stdin = stdin_fd(a.stdin.as_deref())?;
    let program = program_of(&a);
    let mut options = RunOptions::new();
    if let Some(fd) = stdin {
        options = options.stdin_fd(fd);
    }
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
    let status = exit_status(&outcome.status);
    if a.json {
        println!("{}", outcome.to_json());
    } else {
        let _ = std::io::stdout().flush();
        match &outcome.status {
            Status::Exited(code) if code::OWN.contains(&status) => {
                // The guest's own code, which is also one of sandcell's: say whose it is.
                eprintln!("sandcell: exit status {status} is the guest's own (it exited with code {code})");
            }
            Status::Exited(_) => {}
            _ => {
                eprintln!("sandcell: {}", reason(&outcome));
                eprintln!("sandcell: exit status {status} is sandcell's own: {}", own_meaning(status));
            }
        }
    }
    Ok(status)
}

/// `sandcell bench`: a cold run, `prepare`, then `--runs` warm runs of the prepared program.
fn bench(a: BenchArgs) -> Result<u8, Failure> {
    let r = &a.run;
    let started = std::time::Instant::now();
    let sandbox = sandbox_of(r)?;
    let mut program = program_of(r);
    match r.stdin.as_deref() {
        None => {}
        Some("-") => {
            let mut input = Vec::new();
            std::io::stdin().read_to_end(&mut input).map_err(|e| host_failure(format!("cannot read stdin: {e}")))?;
            program = program.stdin(input);
        }
        Some(path) => {
            let input =
                std::fs::read(path).map_err(|e| host_failure(format!("cannot read `{path}` for stdin: {e}")))?;
            program = program.stdin(input);
        }
    }
    let micros = |d: Duration| d.as_secs_f64() * 1e6;
    let progress = bench_progress::Progress::new(u64::from(a.runs), started);

    progress.cold();
    let t = std::time::Instant::now();
    let cold = sandbox.run(&program)?;
    let cold_us = micros(t.elapsed());
    let t = std::time::Instant::now();
    let mut options = sandcell::PrepareOptions::new().until_ready(a.until_ready);
    if let Some(n) = a.pool {
        options = options.pool_size(n);
    }
    let prepared = sandbox.prepare_with(&program, &options)?;
    let prepare_us = micros(t.elapsed());
    let mut warm = Vec::with_capacity(a.runs as usize);
    let mut failed = 0u32;
    for i in 0..a.runs {
        progress.at(u64::from(i));
        let t = std::time::Instant::now();
        // After ready, each run reads the program's stdin (the preparing run had none).
        let status = prepared.run()?.status;
        warm.push(micros(t.elapsed()));
        failed += u32::from(status != Status::Exited(0));
    }
    progress.at(u64::from(a.runs));
    drop(progress);
    warm.sort_by(f64::total_cmp);
    // The median of an even count is the mean of the two middle runs; p90 is the nearest rank.
    let mid = warm.len() / 2;
    let median = if warm.len() % 2 == 0 { (warm[mid - 1] + warm[mid]) / 2.0 } else { warm[mid] };
    let p90 = warm[((warm.len() as f64 * 0.9).ceil() as usize).clamp(1, warm.len()) - 1];
    let backend = sandcell::BackendKind::from(r.backend).name();
    if r.json {
        let v = serde_json::json!({
            "backend": backend,
            "status": &cold.status,
            "cold_us": cold_us.round() as u64,
            "prepare_us": prepare_us.round() as u64,
            "warm": {
                "median_us": median.round() as u64,
                "p90_us": p90.round() as u64,
                "runs": a.runs,
                "not_exit_0": failed,
            },
            "pool": prepared.pool_stats(),
        });
        println!("{v}");
    } else {
        println!("backend   {backend}");
        println!("status    {} (cold run); {failed} of {} warm runs did not exit 0", cold.status, a.runs);
        println!("cold      {}", human(cold_us));
        println!("prepare   {}", human(prepare_us));
        println!("warm      median {}, p90 {} ({} runs)", human(median), human(p90), a.runs);
        if let Some(p) = prepared.pool_stats() {
            println!(
                "pool      {} hits, {} misses, {} evictions; snapshot {} KiB",
                p.hits,
                p.misses,
                p.evictions,
                p.snapshot_bytes.div_ceil(1024)
            );
        }
    }
    if cold.status != Status::Exited(0) || failed > 0 {
        eprintln!("sandcell: note: the program did not always exit 0; the times are of what it did");
    }
    Ok(0)
}

fn human(us: f64) -> String {
    if us >= 1e6 {
        format!("{:.3} s", us / 1e6)
    } else if us >= 1e3 {
        format!("{:.3} ms", us / 1e3)
    } else {
        format!("{us:.1} µs")
    }
}

fn host_failure(message: String) -> Failure {
    Failure { code: code::HOST, kind: "host", message }
}

mod bench_progress {
    //! Progress of `sandcell bench` on stderr once it has run for a second: a bar on a terminal,
    //! else a line at most every second (and the last one).

    use std::io::IsTerminal;
    use std::time::{Duration, Instant};

    use parking_lot::Mutex;

    pub struct Progress {
        total: u64,
        started: Instant,
        bar: Mutex<Option<indicatif::ProgressBar>>,
        last_line: Mutex<Option<Instant>>,
        /// Stops the note about a slow cold run (see `cold`).
        cold_done: Mutex<Option<std::sync::mpsc::Sender<()>>>,
    }

    impl Progress {
        pub fn new(total: u64, started: Instant) -> Self {
            Progress { total, started, bar: Mutex::new(None), last_line: Mutex::new(None), cold_done: Mutex::new(None) }
        }

        /// The cold run starts: if it (with its compilation) lasts more than a second, say so.
        pub fn cold(&self) {
            let (tx, rx) = std::sync::mpsc::channel::<()>();
            *self.cold_done.lock() = Some(tx);
            std::thread::spawn(move || {
                if rx.recv_timeout(Duration::from_secs(1)) == Err(std::sync::mpsc::RecvTimeoutError::Timeout) {
                    eprintln!("sandcell bench: cold run (compiling the program)...");
                }
            });
        }

        /// `done` warm runs have finished.
        pub fn at(&self, done: u64) {
            self.cold_done.lock().take();
            if self.started.elapsed() < Duration::from_secs(1) {
                return;
            }
            if std::io::stderr().is_terminal() {
                let mut bar = self.bar.lock();
                let bar = bar.get_or_insert_with(|| {
                    let b = indicatif::ProgressBar::with_draw_target(
                        Some(self.total),
                        indicatif::ProgressDrawTarget::stderr(),
                    );
                    b.set_message("warm runs");
                    b
                });
                bar.set_position(done);
            } else {
                let mut last = self.last_line.lock();
                if done == self.total || last.is_none_or(|t| t.elapsed() >= Duration::from_secs(1)) {
                    eprintln!("sandcell bench: {done}/{} warm runs", self.total);
                    *last = Some(Instant::now());
                }
            }
        }
    }

    impl Drop for Progress {
        /// Clears the bar, also when the benchmark ends early with an error.
        fn drop(&mut self) {
            self.cold_done.lock().take();
            if let Some(bar) = self.bar.lock().take() {
                bar.finish_and_clear();
            }
        }
    }
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
        Status::Timeout => code::TIMEOUT,
        _ => code::STOPPED,
    }
}
