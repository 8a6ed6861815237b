//! Shared test helpers: building guest programs, skipping with a reason, temporary directories.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// When set (CI sets it on machines that have everything), a test that would skip fails instead.
pub const REQUIRE_ALL: &str = "SANDCELL_REQUIRE_ALL";

/// Set for a re-run of the tests as another user: guests are used as already built, never built.
pub const PREBUILT_ONLY: &str = "SANDCELL_TEST_PREBUILT_ONLY";

/// A comma-separated list of backends the conformance suite runs on (default: all). The
/// unprivileged re-run sets it to `wasm,process`: `/dev/kvm` belongs to root and the kvm group.
pub const TEST_BACKENDS: &str = "SANDCELL_TEST_BACKENDS";

pub fn backend_wanted(kind: sandcell::BackendKind) -> bool {
    match std::env::var(TEST_BACKENDS) {
        Ok(list) if !list.is_empty() => list.split(',').any(|b| b.trim() == kind.name()),
        _ => true,
    }
}

pub fn prebuilt_only() -> bool {
    std::env::var_os(PREBUILT_ONLY).is_some()
}

pub fn require_all() -> bool {
    std::env::var_os(REQUIRE_ALL).is_some_and(|v| v != "0" && !v.is_empty())
}

/// Skips the current test with a printed reason, or fails it under `SANDCELL_REQUIRE_ALL`.
#[macro_export]
macro_rules! skip {
    ($($why:tt)*) => {{
        let why = format!($($why)*);
        if $crate::common::require_all() {
            panic!("{} is set, so this test may not skip: {why}", $crate::common::REQUIRE_ALL);
        }
        eprintln!("SKIPPED: {why}");
        return;
    }};
}

/// Unwraps an `Option`, skipping the test with `$why` when it is `None`.
#[macro_export]
macro_rules! or_skip {
    ($opt:expr, $($why:tt)*) => {
        match $opt {
            Ok(v) => v,
            Err(e) => $crate::skip!("{}: {e}", format!($($why)*)),
        }
    };
}

pub fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// `../shared/testdata` next to the repository, present on the project's machines and in CI,
/// absent in a user's clone.
pub fn shared_testdata() -> Option<PathBuf> {
    let p = repo().join("../shared/testdata");
    p.is_dir().then_some(p)
}

fn cargo() -> String {
    std::env::var("CARGO").unwrap_or_else(|_| "cargo".into())
}

/// Builds `tests/guests` for `target` (once per test process) and returns the path of the
/// `testguest` artifact.
fn build_guest(target: &'static str, file: &'static str) -> Result<PathBuf, String> {
    let out = repo().join("target/guests");
    if prebuilt_only() {
        let path = out.join(target).join("release").join(file);
        return path.is_file().then_some(path.clone()).ok_or_else(|| format!("{} was not prebuilt", path.display()));
    }
    let status = Command::new(cargo())
        .args(["build", "--release", "--quiet", "--target", target])
        .current_dir(repo().join("tests/guests"))
        .env("CARGO_TARGET_DIR", &out)
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_BUILD_TARGET")
        .status()
        .map_err(|e| format!("cannot run cargo: {e}"))?;
    if !status.success() {
        return Err(format!(
            "building the test guest for {target} failed (is the target installed? `rustup target add {target}`)"
        ));
    }
    let path = out.join(target).join("release").join(file);
    path.is_file().then_some(path.clone()).ok_or_else(|| format!("{} was not built", path.display()))
}

/// The Rust test guest compiled to `wasm32-wasip1`.
pub fn wasm_guest() -> Result<&'static Path, String> {
    static GUEST: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    GUEST
        .get_or_init(|| build_guest("wasm32-wasip1", "testguest.wasm"))
        .as_ref()
        .map(PathBuf::as_path)
        .map_err(Clone::clone)
}

/// The same guest compiled for the host (process backend).
pub fn native_guest() -> Result<&'static Path, String> {
    static GUEST: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    GUEST
        .get_or_init(|| build_guest("x86_64-unknown-linux-gnu", "testguest"))
        .as_ref()
        .map(PathBuf::as_path)
        .map_err(Clone::clone)
}

/// A micro-VM guest from the `guest/` workspace (`vm-hostile`, `hello`), built for
/// `x86_64-unknown-none` once per test process.
pub fn vm_guest(name: &'static str) -> Result<PathBuf, String> {
    static BUILT: OnceLock<Result<(), String>> = OnceLock::new();
    let dir = repo().join("target/guest/x86_64-unknown-none/release");
    if !prebuilt_only() {
        BUILT
            .get_or_init(|| {
                let status = Command::new(cargo())
                    .args(["build", "--release", "--quiet", "--target", "x86_64-unknown-none", "-p", "vm-hostile", "-p", "hello"])
                    .current_dir(repo().join("guest"))
                    .env("CARGO_TARGET_DIR", repo().join("target/guest"))
                    .env_remove("RUSTFLAGS")
                    .env_remove("CARGO_BUILD_TARGET")
                    .status()
                    .map_err(|e| format!("cannot run cargo: {e}"))?;
                status.success().then_some(()).ok_or_else(|| {
                    "building the micro-VM guests failed (is the target installed? `rustup target add x86_64-unknown-none`)".to_owned()
                })
            })
            .clone()?;
    }
    let path = dir.join(name);
    path.is_file().then_some(path.clone()).ok_or_else(|| format!("{} was not built", path.display()))
}

/// A fresh temporary directory, removed when dropped.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        use std::sync::atomic::{AtomicU32, Ordering};
        static N: AtomicU32 = AtomicU32::new(0);
        let p = std::env::temp_dir().join(format!(
            "sandcell-test-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        ));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
    pub fn path(&self) -> &Path {
        &self.0
    }
    pub fn join(&self, p: &str) -> PathBuf {
        self.0.join(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = Command::new("chmod").arg("-R").arg("u+rwx").arg(&self.0).status();
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// A pipe (read end, write end) as files (`std::io::pipe` is newer than the crate's MSRV).
pub fn pipe() -> (std::fs::File, std::fs::File) {
    use std::os::fd::FromRawFd;
    let mut fds = [-1; 2];
    // SAFETY: `fds` has room for the two descriptors pipe2 returns.
    assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0, "pipe2");
    // SAFETY: both descriptors are new and owned here.
    unsafe { (std::fs::File::from_raw_fd(fds[0]), std::fs::File::from_raw_fd(fds[1])) }
}
