//! The `sandcell` command line: its exit statuses and `--json` form are a contract.

use std::process::{Command, Output, Stdio};

use crate::common::{text, TempDir};
use crate::or_skip;

/// The CLI, its default artifact cache in the build's own temporary directory (not the home
/// directory's).
fn cli() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_sandcell"));
    cmd.env("SANDCELL_CACHE_DIR", concat!(env!("CARGO_TARGET_TMPDIR"), "/cli-cache"));
    cmd
}

fn sandcell(args: &[&str]) -> Output {
    cli().args(args).current_dir(crate::common::repo()).stdin(Stdio::null()).output().unwrap()
}

fn json(out: &Output) -> serde_json::Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {}", text(&out.stdout)))
}

#[test]
fn runs_the_sample_and_passes_output_through() {
    let out = sandcell(&["run", "examples/hello.wat"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "Hello, world!\n");
    assert_eq!(text(&out.stderr), "");
}

#[test]
fn exit_status_is_the_guest_exit_code() {
    let guest = or_skip!(crate::common::wasm_guest(), "no wasm test guest");
    let g = guest.to_str().unwrap();
    for code in ["0", "3", "7"] {
        let out = sandcell(&["run", g, "--", "exit", code]);
        assert_eq!(out.status.code(), Some(code.parse().unwrap()));
    }
    // Without `--`, arguments after PROGRAM go to the guest as well.
    assert_eq!(sandcell(&["run", g, "exit", "9"]).status.code(), Some(9));
}

#[test]
fn timeout_is_124_with_a_reason() {
    let dir = TempDir::new("cli-loop");
    let loop_wat = dir.join("loop.wat");
    std::fs::write(&loop_wat, r#"(module (func (export "_start") (loop $l (br $l))))"#).unwrap();
    let out = sandcell(&["run", "--timeout", "300ms", loop_wat.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(124));
    let err = text(&out.stderr);
    assert_eq!(err.lines().count(), 2, "{err}");
    assert!(err.contains("timeout"), "{err}");
}

#[test]
fn other_limits_and_traps_are_125_with_a_reason() {
    let dir = TempDir::new("cli-trap");
    let trap = dir.join("trap.wat");
    std::fs::write(&trap, r#"(module (func (export "_start") unreachable))"#).unwrap();
    let out = sandcell(&["run", trap.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(125));
    assert!(text(&out.stderr).contains("trap: unreachable"), "{}", text(&out.stderr));

    let big = dir.join("big.wat");
    std::fs::write(&big, r#"(module (memory 100) (func (export "_start")))"#).unwrap();
    let out = sandcell(&["run", "--memory", "1M", big.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(125));
    assert!(text(&out.stderr).contains("memory limit"), "{}", text(&out.stderr));

    let fuel = dir.join("fuel.wat");
    std::fs::write(&fuel, r#"(module (func (export "_start") (loop $l (br $l))))"#).unwrap();
    let out = sandcell(&["run", "--fuel", "1000", fuel.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(125));
    assert!(text(&out.stderr).contains("fuel"), "{}", text(&out.stderr));
}

#[test]
fn usage_errors_are_2_host_errors_126_and_a_missing_program_127() {
    let out = sandcell(&["run", "/no/such/module.wasm"]);
    assert_eq!(out.status.code(), Some(127));
    assert!(text(&out.stderr).contains("/no/such/module.wasm"), "{}", text(&out.stderr));
    for bad in [
        &["run", "--memory", "lots", "examples/hello.wat"][..],
        &["run", "--timeout", "soon", "examples/hello.wat"],
        &["run", "--mount", "nocolon", "examples/hello.wat"],
        &["run", "--backend", "vmware", "examples/hello.wat"],
        &["run", "--bogus", "examples/hello.wat"],
        &["run", "--memory", "0", "examples/hello.wat"],
        &["run"],
        &["frobnicate"],
        &[],
    ] {
        let out = sandcell(bad);
        assert_eq!(out.status.code(), Some(2), "{bad:?}: {}", text(&out.stderr));
        assert!(text(&out.stderr).ends_with("sandcell: exit status 2 is sandcell's own: a usage error\n"), "{bad:?}");
    }
    // A host error: a module that is not WebAssembly.
    let dir = TempDir::new("cli-host");
    let junk = dir.join("junk.wasm");
    std::fs::write(&junk, b"\0asm\x01\0\0\0\x01\xff").unwrap();
    let out = sandcell(&["run", junk.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(126), "{}", text(&out.stderr));
}

#[test]
fn help_works_on_every_subcommand() {
    for args in [&["--help"][..], &["-h"], &["run", "--help"], &["run", "-h"], &["probe", "--help"], &["help", "run"]] {
        let out = sandcell(args);
        assert_eq!(out.status.code(), Some(0), "{args:?}: {}", text(&out.stderr));
        assert!(text(&out.stdout).contains("Usage: sandcell"), "{args:?}");
    }
    assert!(text(&sandcell(&["run", "--help"]).stdout).contains("--timeout <DURATION>"));
    assert_eq!(sandcell(&["--version"]).status.code(), Some(0));
}

#[test]
fn completions_and_a_man_page_come_from_the_same_definitions() {
    for shell in ["bash", "zsh", "fish"] {
        let out = sandcell(&["completions", shell]);
        assert_eq!(out.status.code(), Some(0), "{shell}");
        assert!(text(&out.stdout).contains("cpu-time"), "{shell}");
    }
    let out = sandcell(&["man"]);
    assert_eq!(out.status.code(), Some(0));
    let page = text(&out.stdout);
    assert!(page.starts_with(".ie") || page.contains(".TH sandcell"), "{page}");
    assert!(page.contains("probe"), "{page}");
}

#[test]
fn json_errors_carry_a_kind() {
    let kind = |args: &[&str]| json(&sandcell(args))["error"]["kind"].as_str().unwrap().to_owned();
    assert_eq!(kind(&["run", "--json", "--memory", "lots", "examples/hello.wat"]), "usage");
    assert_eq!(kind(&["run", "--json", "/no/such.wasm"]), "program_not_found");
    assert_eq!(kind(&["run", "--json", "--fuel", "5", "--backend", "process", "/bin/true"]), "unenforceable");
    let out = sandcell(&["run", "--json", "/no/such.wasm"]);
    assert!(json(&out)["error"]["message"].as_str().unwrap().contains("/no/such.wasm"));
}

#[test]
fn a_guest_cannot_pass_for_sandcell_through_its_exit_code() {
    // A guest that exits with 124 and prints what sandcell prints on a timeout: the last line
    // on stderr, written after the guest's output ended, says whose the status is.
    let dir = TempDir::new("cli-fake");
    let fake = dir.join("fake.wat");
    let line = "sandcell: exit status 124 is sandcell's own: the guest was stopped at its timeout";
    std::fs::write(
        &fake,
        format!(
            r#"(module
      (import "wasi_snapshot_preview1" "fd_write" (func $w (param i32 i32 i32 i32) (result i32)))
      (import "wasi_snapshot_preview1" "proc_exit" (func $exit (param i32)))
      (memory (export "memory") 1)
      (data (i32.const 16) "{line}\n")
      (func (export "_start") (i32.store (i32.const 0) (i32.const 16)) (i32.store (i32.const 4) (i32.const {}))
        (drop (call $w (i32.const 2) (i32.const 0) (i32.const 1) (i32.const 8)))
        (call $exit (i32.const 124))))"#,
            line.len() + 1
        ),
    )
    .unwrap();
    let out = sandcell(&["run", fake.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(124));
    let err = text(&out.stderr);
    assert_eq!(
        err.lines().last(),
        Some("sandcell: exit status 124 is the guest's own (it exited with code 124)"),
        "{err}"
    );
    // The real timeout.
    let spin = dir.join("spin.wat");
    std::fs::write(&spin, r#"(module (func (export "_start") (loop $l (br $l))))"#).unwrap();
    let out = sandcell(&["run", "--timeout", "200ms", spin.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(124));
    let err = text(&out.stderr);
    assert_eq!(
        err.lines().last(),
        Some("sandcell: exit status 124 is sandcell's own: the guest was stopped at its timeout")
    );
    // An ordinary exit code gets no note.
    let out = sandcell(&["run", "examples/hello.wat"]);
    assert_eq!(text(&out.stderr), "");
}

#[test]
fn mounts_with_a_colon_in_a_path_use_a_double_colon() {
    let guest = or_skip!(crate::common::wasm_guest(), "no wasm test guest");
    let dir = TempDir::new("cli-colon");
    let odd = dir.join("a:b");
    std::fs::create_dir(&odd).unwrap();
    std::fs::write(odd.join("f"), "inside").unwrap();
    let spec = format!("{}::/data", odd.display());
    let out = sandcell(&["run", "--mount", &spec, guest.to_str().unwrap(), "read", "/data/f"]);
    assert_eq!(text(&out.stdout), "ok inside\n", "{}", text(&out.stderr));
}

#[test]
fn sizes_and_durations_accept_every_documented_form() {
    for size in ["1048576", "64K", "64M", "1G"] {
        let out = sandcell(&["run", "--memory", size, "--max-output", size, "examples/hello.wat"]);
        assert_eq!(out.status.code(), Some(0), "{size}: {}", text(&out.stderr));
    }
    for d in ["2s", "500ms"] {
        assert_eq!(sandcell(&["run", "--timeout", d, "examples/hello.wat"]).status.code(), Some(0), "{d}");
    }
}

#[test]
fn json_output_has_the_documented_shape() {
    let out = sandcell(&["run", "--json", "examples/hello.wat"]);
    assert_eq!(out.status.code(), Some(0));
    let v = json(&out);
    assert_eq!(v["status"]["kind"], "exited");
    assert_eq!(v["status"]["code"], 0);
    assert_eq!(v["stdout"], "Hello, world!\n");
    assert_eq!(v["stderr"], "");
    for field in ["wall_ms", "cpu_ms", "peak_memory_bytes", "fuel"] {
        assert!(v["usage"].get(field).is_some(), "usage.{field} missing: {v}");
    }

    let dir = TempDir::new("cli-json");
    let trap = dir.join("trap.wat");
    std::fs::write(&trap, r#"(module (func (export "_start") (drop (i32.div_u (i32.const 1) (i32.const 0)))))"#)
        .unwrap();
    let v = json(&sandcell(&["run", "--json", trap.to_str().unwrap()]));
    assert_eq!(v["status"]["kind"], "trap");
    assert!(v["status"]["detail"].as_str().unwrap().contains("division_by_zero"), "{v}");

    let looping = dir.join("loop.wat");
    std::fs::write(&looping, r#"(module (func (export "_start") (loop $l (br $l))))"#).unwrap();
    let out = sandcell(&["run", "--json", "--timeout", "200ms", looping.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(124));
    assert_eq!(json(&out)["status"]["kind"], "timeout");
    let v = json(&sandcell(&["run", "--json", "--fuel", "500", looping.to_str().unwrap()]));
    assert_eq!(v["status"]["kind"], "cpu_limit");
    assert!(v["usage"]["fuel"].as_u64().unwrap() <= 500);

    let out = sandcell(&["run", "--json", "/no/such.wasm"]);
    assert_eq!(out.status.code(), Some(127));
    assert!(json(&out)["error"]["message"].as_str().unwrap().contains("/no/such.wasm"));
}

#[test]
fn json_escapes_non_utf8_output_losslessly() {
    let guest = or_skip!(crate::common::wasm_guest(), "no wasm test guest");
    let out = sandcell(&["run", "--json", guest.to_str().unwrap(), "--", "bytes"]);
    let v = json(&out);
    assert_eq!(v["stdout"], "ok \u{fffd}\u{fffd}\u{0} end");
    assert_eq!(v["stdout_base64"], "b2sg//4AIGVuZA==");
    assert!(v.get("stderr_base64").is_none(), "{v}");
}

#[test]
fn mounts_env_and_guest_arguments() {
    let guest = or_skip!(crate::common::wasm_guest(), "no wasm test guest");
    let dir = TempDir::new("cli-mount");
    std::fs::write(dir.join("in.txt"), "from the host").unwrap();
    let mount_ro = format!("{}:/data", dir.path().display());
    let out = sandcell(&["run", "--mount", &mount_ro, guest.to_str().unwrap(), "--", "read", "/data/in.txt"]);
    assert_eq!(text(&out.stdout), "ok from the host\n");
    let out = sandcell(&["run", "--mount", &mount_ro, guest.to_str().unwrap(), "--", "write", "/data/x", "y"]);
    assert!(text(&out.stdout).starts_with("err"), "{}", text(&out.stdout));
    let mount_rw = format!("{}:/data:rw", dir.path().display());
    let out = sandcell(&["run", "--mount", &mount_rw, guest.to_str().unwrap(), "--", "write", "/data/x", "y"]);
    assert_eq!(text(&out.stdout), "ok\n");
    assert_eq!(std::fs::read_to_string(dir.join("x")).unwrap(), "y");
    let out = sandcell(&["run", "--env", "A=1", "--env", "B=two=2", guest.to_str().unwrap(), "--", "env"]);
    assert_eq!(text(&out.stdout), "A=1\nB=two=2\n");
}

#[test]
fn stdin_of_the_cli_reaches_the_guest() {
    let guest = or_skip!(crate::common::wasm_guest(), "no wasm test guest");
    use std::io::Write;
    let mut child = cli()
        .args(["run", guest.to_str().unwrap(), "--", "cat"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(b"through a pipe").unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(text(&out.stdout), "through a pipe");
}

/// The CLI streams its stdin: the guest echoes a line while the input is still open (the test
/// writes the second line only after reading the first back), on the WASI backends.
#[test]
fn stdin_is_streamed_into_the_guest_not_read_whole_first() {
    let guest = or_skip!(crate::common::wasm_guest(), "no wasm test guest");
    use std::io::{BufRead, Write};
    for backend in ["wasm", "microvm"] {
        if backend == "microvm" && !sandcell::probe().backend(sandcell::BackendKind::MicroVm).available {
            assert!(!crate::common::require_all(), "the micro-VM backend is unavailable");
            eprintln!("SKIPPED on microvm: unavailable");
            continue;
        }
        let mut child = cli()
            .args(["run", "--backend", backend, "--timeout", "30s", guest.to_str().unwrap(), "--", "echo"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut stdin = child.stdin.take().unwrap();
        let mut stdout = std::io::BufReader::new(child.stdout.take().unwrap());
        stdin.write_all(b"ping\n").unwrap();
        let mut line = String::new();
        stdout.read_line(&mut line).unwrap();
        assert_eq!(line, "ping\n", "{backend}");
        stdin.write_all(b"pong\n").unwrap();
        drop(stdin);
        let mut rest = String::new();
        std::io::Read::read_to_string(&mut stdout, &mut rest).unwrap();
        assert_eq!(rest, "pong\n", "{backend}");
        assert_eq!(child.wait().unwrap().code(), Some(0), "{backend}");
    }
}

/// On a terminal, a spinner shows on stderr while a large module compiles; without one (a pipe,
/// a log file) stderr stays clean. `script` gives the CLI a pseudo-terminal.
#[test]
fn a_spinner_shows_while_a_large_module_compiles_on_a_terminal_only() {
    let dir = TempDir::new("cli-spinner");
    let big = dir.join("big.wat");
    let mut wat = String::from("(module\n");
    for i in 0..12000 {
        wat.push_str(&format!(
            "(func $f{i} (param i32) (result i32) (local i32) (loop (local.set 1 (i32.add (local.get 1) (i32.mul (local.get 0) (i32.const {i})))) (br_if 0 (i32.lt_u (local.get 1) (i32.const 100)))) (local.get 1))\n"
        ));
    }
    wat.push_str("(func (export \"_start\")))\n");
    std::fs::write(&big, wat).unwrap();
    let big = big.to_str().unwrap();

    let piped = sandcell(&["run", "--no-cache", big]);
    assert_eq!(piped.status.code(), Some(0), "{}", text(&piped.stderr));
    assert_eq!(text(&piped.stderr), "", "no spinner without a terminal");

    if std::process::Command::new("script").arg("--version").output().is_err() {
        crate::skip!("`script` (util-linux) is not installed: cannot give the CLI a terminal");
    }
    let command = format!("{} run --no-cache {big}", env!("CARGO_BIN_EXE_sandcell"));
    let out = Command::new("script")
        .args(["-qfec", &command, "/dev/null"])
        .env("SANDCELL_CACHE_DIR", concat!(env!("CARGO_TARGET_TMPDIR"), "/cli-cache"))
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stdout));
    assert!(text(&out.stdout).contains("compiling the module"), "{}", text(&out.stdout));
}

/// `sandcell bench`: a cold run, the preparation and warm runs, as text or one JSON object, on
/// each WASI backend; progress on stderr once it runs longer than a second.
#[test]
fn bench_measures_cold_prepare_and_warm_runs() {
    let v = json(&sandcell(&["bench", "--runs", "5", "--json", "examples/hello.wat"]));
    assert!(v["cold_us"].as_u64().unwrap() > 0, "{v}");
    assert!(v["prepare_us"].is_u64(), "{v}");
    assert_eq!(v["warm"]["runs"], 5, "{v}");
    let (median, p90) = (v["warm"]["median_us"].as_u64().unwrap(), v["warm"]["p90_us"].as_u64().unwrap());
    assert!(median > 0 && p90 >= median, "{v}");
    assert_eq!(v["status"], serde_json::json!({"kind": "exited", "code": 0}), "{v}");

    let out = sandcell(&["bench", "--runs", "3", "--backend", "microvm", "examples/hello.wat"]);
    if sandcell::probe().backend(sandcell::BackendKind::MicroVm).available {
        assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
        let s = text(&out.stdout);
        assert!(s.contains("cold") && s.contains("prepare") && s.contains("median") && s.contains("p90"), "{s}");
    }
    // Usage errors as `run`'s, and --help.
    assert_eq!(sandcell(&["bench", "--runs", "0", "examples/hello.wat"]).status.code(), Some(2));
    assert_eq!(sandcell(&["bench", "--help"]).status.code(), Some(0));
    let missing = sandcell(&["bench", "--json", "no/such/program.wasm"]);
    assert_eq!(missing.status.code(), Some(127));
    assert!(json(&missing)["error"]["kind"].is_string());

    // Longer than a second: progress lines on (non-terminal) stderr.
    let guest = or_skip!(crate::common::wasm_guest(), "no wasm test guest");
    let out = sandcell(&["bench", "--runs", "40", guest.to_str().unwrap(), "--", "sleep", "40"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("warm runs"), "{}", text(&out.stderr));
}

#[test]
fn probe_lists_every_backend() {
    let out = sandcell(&["probe"]);
    assert_eq!(out.status.code(), Some(0));
    let s = text(&out.stdout);
    for b in ["wasm", "process", "microvm"] {
        assert!(s.lines().any(|l| l.starts_with(b)), "{s}");
    }
    let v = json(&sandcell(&["probe", "--json"]));
    let backends = v["backends"].as_array().unwrap();
    assert_eq!(backends.len(), 3);
    assert_eq!(backends[0]["backend"], "wasm");
    assert_eq!(backends[0]["available"], true);
    for b in backends {
        assert!(!b["reason"].as_str().unwrap().is_empty());
    }
}

#[test]
fn compiled_modules_are_kept_in_the_default_cache_unless_told_not_to() {
    let dir = TempDir::new("cli-default-cache");
    let cache = dir.join("cache");
    let run = |extra: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_sandcell"))
            .env("SANDCELL_CACHE_DIR", &cache)
            .args(["run", "--json"])
            .args(extra)
            .arg("examples/hello.wat")
            .current_dir(crate::common::repo())
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
        json(&out)["usage"]["cache"].as_str().unwrap_or_default().to_owned()
    };
    assert_eq!(run(&[]), "compiled");
    assert!(cache.join("key").exists(), "the default cache was not created");
    assert_eq!(run(&[]), "disk", "a second process did not load the artifact from the default cache");
    assert_eq!(run(&["--no-cache"]), "compiled");
    // A default cache that cannot be used (here: a file in the way) is no reason to fail a run.
    std::fs::remove_dir_all(&cache).unwrap();
    std::fs::write(&cache, b"not a directory").unwrap();
    assert_eq!(run(&[]), "compiled");
}
