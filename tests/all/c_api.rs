//! The C ABI as a C program sees it: `libsandcell` installed with `scripts/install-c.sh`, the
//! examples and `tests/c/test_api.c` built with the system C compiler through `pkg-config`,
//! run directly and under valgrind, and the checked-in header compared with cbindgen's output.
//!
//! These tests use the `libsandcell.so` that `cargo build -p sandcell-ffi` (or `cargo test
//! --workspace`, as the README's test command runs) put next to this test binary. They also check
//! what the library exports (the header's functions and nothing else) and its SONAME.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use crate::common::{self, text, TempDir};
use crate::or_skip;

/// The cargo profile directory this test binary was built into (`target/debug`).
fn profile_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    exe.parent().and_then(Path::parent).unwrap().to_path_buf()
}

fn tool(name: &str) -> Result<(), String> {
    match Command::new(name).arg("--version").output() {
        Ok(o) if o.status.success() => Ok(()),
        _ => Err(format!("`{name}` is not installed (scripts/test.sh installs it)")),
    }
}

/// Installs the library into a temporary prefix, as the README's install step does.
fn install() -> Result<TempDir, String> {
    let dir = profile_dir();
    if !dir.join("libsandcell.so").is_file() {
        return Err(format!(
            "{} is not built: run `cargo build -p sandcell-ffi` (the README's test command builds it)",
            dir.join("libsandcell.so").display()
        ));
    }
    let profile = match dir.file_name().and_then(|n| n.to_str()) {
        Some("debug") => "dev".to_owned(),
        Some(other) => other.to_owned(),
        None => return Err("cannot tell the cargo profile".into()),
    };
    let prefix = TempDir::new("c-prefix");
    let out = Command::new("bash")
        .arg(common::repo().join("scripts/install-c.sh"))
        .args(["--no-build", "--profile", &profile, "--prefix"])
        .arg(prefix.path())
        .env("CARGO_TARGET_DIR", dir.parent().unwrap())
        .output()
        .map_err(|e| format!("cannot run scripts/install-c.sh: {e}"))?;
    assert!(out.status.success(), "install-c.sh failed: {}{}", text(&out.stdout), text(&out.stderr));
    Ok(prefix)
}

/// `cc SOURCE $(pkg-config --cflags --libs sandcell)`, linked so that it finds the library in
/// the prefix.
fn compile(prefix: &Path, source: &str, exe: &Path) -> Output {
    compile_with(prefix, source, exe, &[])
}

fn compile_with(prefix: &Path, source: &str, exe: &Path, extra: &[&str]) -> Output {
    let pc = |arg: &str| {
        let out = Command::new("pkg-config")
            .args([arg, "sandcell"])
            .env("PKG_CONFIG_PATH", prefix.join("lib/pkgconfig"))
            .output()
            .unwrap();
        assert!(out.status.success(), "pkg-config {arg} sandcell: {}", text(&out.stderr));
        text(&out.stdout).split_whitespace().map(str::to_owned).collect::<Vec<_>>()
    };
    let out = Command::new("cc")
        .args(["-std=c11", "-Wall", "-Wextra", "-Werror", "-g", "-O1", "-D_GNU_SOURCE"])
        .args(extra)
        .arg(common::repo().join(source))
        .args(pc("--cflags"))
        .args(pc("--libs"))
        .arg(format!("-Wl,-rpath,{}", prefix.join("lib").display()))
        .arg("-lpthread")
        .arg("-o")
        .arg(exe)
        .output()
        .unwrap();
    assert!(out.status.success(), "cc {source} failed:\n{}", text(&out.stderr));
    out
}

fn run_in_repo(exe: &Path, args: &[&str]) -> Output {
    Command::new(exe).args(args).current_dir(common::repo()).output().unwrap()
}

#[test]
fn examples_build_with_pkg_config_and_run() {
    or_skip!(tool("cc"), "no C compiler");
    or_skip!(tool("pkg-config"), "no pkg-config");
    let prefix = or_skip!(install(), "no C library");
    let work = TempDir::new("c-examples");

    // The installed layout: the file, its SONAME link, the linker's link.
    let abi = header_abi_version();
    let lib = prefix.path().join("lib");
    let soname = format!("libsandcell.so.{abi}");
    assert_eq!(std::fs::read_link(lib.join("libsandcell.so")).unwrap(), Path::new(&soname));
    let real = std::fs::read_link(lib.join(&soname)).unwrap();
    assert!(real.to_str().unwrap().starts_with(&format!("{soname}.")), "{}", real.display());
    assert!(lib.join(&real).is_file());

    let hello = work.join("hello");
    compile(prefix.path(), "examples/c/hello.c", &hello);
    // A program records the SONAME, not the file name.
    if tool("readelf").is_ok() {
        let needed = dynamic_section(&hello);
        assert!(needed.contains(&format!("Shared library: [{soname}]")), "{needed}");
    }
    let out = run_in_repo(&hello, &["examples/hello.wat"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "Hello, world!\n");
    assert!(text(&out.stderr).contains("exited (code 0)"), "{}", text(&out.stderr));

    let policy = work.join("policy_json");
    compile(prefix.path(), "examples/c/policy_json.c", &policy);
    let out = run_in_repo(&policy, &["examples/hello.wat"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["status"]["kind"], "exited");
    assert_eq!(json["stdout"], "Hello, world!\n");
    // A fuel budget from the document is enforced (the hello world needs a few dozen units).
    let out = run_in_repo(&policy, &["examples/hello.wat", r#"{"fuel": 5}"#]);
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["status"]["kind"], "cpu_limit", "{json}");
    // A bad document is a typed error naming the field.
    let out = run_in_repo(&policy, &["examples/hello.wat", r#"{"memory": "lots"}"#]);
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(err.contains("error (kind 1)") && err.contains("memory"), "{err}");

    // The static library links too (with the system libraries pkg-config lists for it).
    let libs = Command::new("pkg-config")
        .args(["--static", "--libs-only-l", "sandcell"])
        .env("PKG_CONFIG_PATH", prefix.path().join("lib/pkgconfig"))
        .output()
        .unwrap();
    let system_libs: Vec<String> =
        text(&libs.stdout).split_whitespace().filter(|l| *l != "-lsandcell").map(str::to_owned).collect();
    let static_hello = work.join("hello-static");
    let out = Command::new("cc")
        .arg(common::repo().join("examples/c/hello.c"))
        .arg(format!("-I{}", prefix.path().join("include").display()))
        .arg(prefix.path().join("lib/libsandcell.a"))
        .args(&system_libs)
        .arg("-o")
        .arg(&static_hello)
        .output()
        .unwrap();
    assert!(out.status.success(), "static link failed:\n{}", text(&out.stderr));
    let out = run_in_repo(&static_hello, &["examples/hello.wat"]);
    assert_eq!(text(&out.stdout), "Hello, world!\n", "{}", text(&out.stderr));

    // The header is also valid C++.
    if tool("c++").is_ok() {
        let out = Command::new("c++")
            .args(["-fsyntax-only", "-Wall", "-Werror", "-x", "c++"])
            .arg(prefix.path().join("include/sandcell.h"))
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", text(&out.stderr));
    }
}

/// Builds tests/c/test_api.c against the installed library.
fn test_program() -> Result<(TempDir, TempDir, PathBuf), String> {
    tool("cc")?;
    tool("pkg-config")?;
    let prefix = install()?;
    let work = TempDir::new("c-api");
    let exe = work.join("test_api");
    compile(prefix.path(), "tests/c/test_api.c", &exe);
    Ok((prefix, work, exe))
}

/// Prints the skips test_api reports, failing under SANDCELL_REQUIRE_ALL.
fn check_skips(stdout: &str) {
    for line in stdout.lines().filter(|l| l.starts_with("SKIP ")) {
        if common::require_all() {
            panic!("{} is set, so the C API test may not skip a backend: {line}", common::REQUIRE_ALL);
        }
        eprintln!("SKIPPED (C API test): {line}");
    }
}

#[test]
fn c_api_test_program_passes_on_every_backend() {
    let (_prefix, _work, exe) = or_skip!(test_program(), "cannot build the C API test");
    let out = run_in_repo(&exe, &["--backends", "wasm,process,microvm"]);
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "test_api failed:\n{stdout}{}", text(&out.stderr));
    assert!(stdout.contains(", 0 failed"), "{stdout}");
    check_skips(&stdout);
}

/// valgrind follows the wasm backend fully, but not KVM guest memory or seccomp filters (it
/// reports `seccomp` as an unhandled system call), so this run covers the whole API on the wasm
/// backend; the test above covers the other backends without valgrind.
#[test]
fn c_api_test_program_is_clean_under_valgrind() {
    or_skip!(tool("valgrind"), "no valgrind");
    let (_prefix, _work, exe) = or_skip!(test_program(), "cannot build the C API test");
    let out = Command::new("valgrind")
        .args([
            "--leak-check=full",
            "--errors-for-leak-kinds=definite",
            "--error-exitcode=99",
            // Cranelift writes code at run time into fresh mappings.
            "--smc-check=all-non-file",
            "--quiet",
        ])
        .arg(&exe)
        .args(["--backends", "wasm"])
        .current_dir(common::repo())
        .output()
        .unwrap();
    let stdout = text(&out.stdout);
    let stderr = text(&out.stderr);
    assert!(out.status.success(), "valgrind reported problems (exit {:?}):\n{stdout}\n{stderr}", out.status.code());
    assert!(stdout.contains(", 0 failed"), "{stdout}");
    assert!(!stderr.contains("Invalid read") && !stderr.contains("Invalid write"), "{stderr}");
}

/// The same program built with AddressSanitizer (and LeakSanitizer), on every backend: the
/// program's own accesses to what the library hands out (outcome buffers, strings, structs with
/// a size) are checked, and the library's allocations, which go through the sanitizer's malloc,
/// are checked for leaks at exit. The wasm backend's traps are SIGSEGV/SIGBUS handlers of its
/// own: the sanitizer must leave those signals to it (`handle_segv=0`, `handle_sigbus=0`).
#[test]
fn c_api_test_program_is_clean_under_address_sanitizer() {
    let (prefix, work, _) = or_skip!(test_program(), "cannot build the C API test");
    let exe = work.join("test_api_asan");
    compile_with(prefix.path(), "tests/c/test_api.c", &exe, &["-fsanitize=address", "-fno-omit-frame-pointer"]);
    let out = Command::new(&exe)
        .args(["--backends", "wasm,process,microvm"])
        .env("ASAN_OPTIONS", "handle_segv=0:handle_sigbus=0:handle_sigfpe=0:allow_user_segv_handler=1:detect_leaks=1:abort_on_error=0:exitcode=99")
        .current_dir(common::repo())
        .output()
        .unwrap();
    let stdout = text(&out.stdout);
    let stderr = text(&out.stderr);
    assert!(
        out.status.success(),
        "AddressSanitizer reported problems (exit {:?}):\n{stdout}\n{stderr}",
        out.status.code()
    );
    assert!(stdout.contains(", 0 failed"), "{stdout}");
    assert!(!stderr.contains("ERROR: AddressSanitizer") && !stderr.contains("ERROR: LeakSanitizer"), "{stderr}");
    check_skips(&stdout);
}

#[test]
fn checked_in_header_matches_cbindgen() {
    or_skip!(tool("cbindgen"), "no cbindgen (`cargo install cbindgen`; scripts/test.sh installs it)");
    let work = TempDir::new("header");
    let generated = work.join("sandcell.h");
    let out = Command::new("cbindgen")
        .args(["--config", "ffi/cbindgen.toml", "--crate", "sandcell-ffi", "--output"])
        .arg(&generated)
        .arg("ffi")
        .current_dir(common::repo())
        .output()
        .unwrap();
    assert!(out.status.success(), "cbindgen failed: {}", text(&out.stderr));
    let fresh = std::fs::read_to_string(&generated).unwrap();
    let checked_in = std::fs::read_to_string(common::repo().join("include/sandcell.h")).unwrap();
    assert!(
        fresh == checked_in,
        "include/sandcell.h is out of date: regenerate it with\n  cbindgen --config ffi/cbindgen.toml --crate sandcell-ffi --output include/sandcell.h ffi"
    );
}

/// `SANDCELL_ABI_VERSION` of the checked-in header.
fn header_abi_version() -> u32 {
    let header = std::fs::read_to_string(common::repo().join("include/sandcell.h")).unwrap();
    header
        .lines()
        .find_map(|l| l.strip_prefix("#define SANDCELL_ABI_VERSION ")?.trim().parse().ok())
        .expect("include/sandcell.h defines SANDCELL_ABI_VERSION")
}

/// The functions include/sandcell.h declares.
fn header_functions() -> Vec<String> {
    let header = std::fs::read_to_string(common::repo().join("include/sandcell.h")).unwrap();
    let mut names = Vec::new();
    for line in header.lines() {
        let trimmed = line.trim_start();
        if line.starts_with(' ') || trimmed.starts_with('/') || trimmed.starts_with('*') || trimmed.starts_with('#') {
            continue;
        }
        // A declaration: `type *sandcell_name(args...`.
        if let Some(open) = line.find('(') {
            let before = &line[..open];
            let name = before.rsplit(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).next().unwrap_or("");
            if name.starts_with("sandcell_") {
                names.push(name.to_owned());
            }
        }
    }
    names.sort();
    names
}

fn dynamic_section(file: &Path) -> String {
    let out = Command::new("readelf").arg("-d").arg(file).output().unwrap();
    assert!(out.status.success(), "readelf -d {}: {}", file.display(), text(&out.stderr));
    text(&out.stdout)
}

/// libsandcell.so exports the header's functions and nothing else (wasmer's own C symbols,
/// `wasmer_vm_*`, and the Rust standard library's are hidden: ffi/build.rs), and its SONAME is
/// `libsandcell.so.<SANDCELL_ABI_VERSION>`.
#[test]
fn library_exports_the_header_functions_only() {
    or_skip!(tool("nm"), "no nm (binutils)");
    or_skip!(tool("readelf"), "no readelf (binutils)");
    let lib = profile_dir().join("libsandcell.so");
    if !lib.is_file() {
        crate::skip!("{} is not built: run `cargo build -p sandcell-ffi`", lib.display());
    }
    let out = Command::new("nm").args(["-D", "--defined-only"]).arg(&lib).output().unwrap();
    assert!(out.status.success(), "nm: {}", text(&out.stderr));
    let mut exported = Vec::new();
    let mut foreign = Vec::new();
    for line in text(&out.stdout).lines() {
        // `ADDRESS TYPE NAME`
        let fields: Vec<&str> = line.split_whitespace().collect();
        let (kind, name) = match fields.as_slice() {
            [_, kind, name] => (*kind, *name),
            _ => continue,
        };
        if kind == "T" && name.starts_with("sandcell_") {
            exported.push(name.to_owned());
        } else {
            foreign.push(line.to_owned());
        }
    }
    assert!(foreign.is_empty(), "libsandcell.so exports more than the C API:\n{}", foreign.join("\n"));
    exported.sort();
    assert_eq!(exported, header_functions(), "the exported functions differ from those of include/sandcell.h");

    let dynamic = dynamic_section(&lib);
    let soname = format!("Library soname: [libsandcell.so.{}]", header_abi_version());
    assert!(dynamic.contains(&soname), "no `{soname}` in:\n{dynamic}");
}
