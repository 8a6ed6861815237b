//! Host-side WASI preview 1, shared by the backends that run WebAssembly: the wasm backend runs
//! its guest against it directly, the micro-VM backend serves its guest's WASI calls with it. One
//! implementation, so that a module sees the same files, environment and limits on both.
//!
//! Built on wasmer-wasix, with four of its defaults closed:
//!
//! - stdio that is not set falls back to the host's: sandcell always sets all three ([`stdio`]);
//! - the default runtime has host networking: sandcell builds its own with networking
//!   unsupported, links only `wasi_snapshot_preview1`, and answers socket calls as a WASI host
//!   without sockets would;
//! - the default root is an unbounded in-memory filesystem: sandcell's guest filesystem holds only
//!   the policy's mounts ([`fs`]);
//! - WASI exit codes are 32-bit but wasix keeps them modulo 256, and raising a signal does not
//!   end the guest: sandcell defines `proc_exit` and `proc_raise` itself ([`GuestExit`],
//!   [`signals`]).
//!
//! Each backend owns a [`WasiHost`] per sandbox (the policy's mounts, opened once) and builds a
//! [`WasiFunctionEnv`] per run.

pub(crate) mod fs;
pub(crate) mod signals;
pub(crate) mod stdio;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

use wasmer::{Function, FunctionEnv, FunctionEnvMut, Imports, RuntimeError, Store, Value};
use wasmer_wasix::runtime::task_manager::tokio::TokioTaskManager;
use wasmer_wasix::{PluggableRuntime, UnsupportedVirtualNetworking, WasiEnv, WasiFunctionEnv, WasiVersion};

use self::fs::{FsLimits, MountRoot};
use self::stdio::{OutputFile, Sink, StdinFile};
use crate::{Error, Mount, Program, Result, Stream};

/// The WASI preview 1 namespace, the only one a sandbox provides.
pub(crate) const WASI_MODULE: &str = "wasi_snapshot_preview1";

/// Parameter types of each WASI preview 1 function (`i` = i32, `I` = i64), by the index of
/// the micro-VM ABI's WASI function table; every one returns an i32 errno.
pub(crate) const SIGNATURES: &[(&str, &str)] = &[
    ("args_get", "ii"),
    ("args_sizes_get", "ii"),
    ("environ_get", "ii"),
    ("environ_sizes_get", "ii"),
    ("clock_res_get", "ii"),
    ("clock_time_get", "iIi"),
    ("fd_advise", "iIIi"),
    ("fd_allocate", "iII"),
    ("fd_close", "i"),
    ("fd_datasync", "i"),
    ("fd_fdstat_get", "ii"),
    ("fd_fdstat_set_flags", "ii"),
    ("fd_fdstat_set_rights", "iII"),
    ("fd_filestat_get", "ii"),
    ("fd_filestat_set_size", "iI"),
    ("fd_filestat_set_times", "iIIi"),
    ("fd_pread", "iiiIi"),
    ("fd_prestat_get", "ii"),
    ("fd_prestat_dir_name", "iii"),
    ("fd_pwrite", "iiiIi"),
    ("fd_read", "iiii"),
    ("fd_readdir", "iiiIi"),
    ("fd_renumber", "ii"),
    ("fd_seek", "iIii"),
    ("fd_sync", "i"),
    ("fd_tell", "ii"),
    ("fd_write", "iiii"),
    ("path_create_directory", "iii"),
    ("path_filestat_get", "iiiii"),
    ("path_filestat_set_times", "iiiiIIi"),
    ("path_link", "iiiiiii"),
    ("path_open", "iiiiiIIii"),
    ("path_readlink", "iiiiii"),
    ("path_remove_directory", "iii"),
    ("path_rename", "iiiiii"),
    ("path_symlink", "iiiii"),
    ("path_unlink_file", "iii"),
    ("poll_oneoff", "iiii"),
    ("proc_exit", "i"),
    ("proc_raise", "i"),
    ("random_get", "ii"),
    ("sched_yield", ""),
    ("sock_accept", "iii"),
    ("sock_recv", "iiiiii"),
    ("sock_send", "iiiii"),
    ("sock_shutdown", "ii"),
];

/// The parameters of WASI function `name` that are descriptors. (`poll_oneoff` names
/// descriptors inside its subscriptions, in memory: not here.)
fn fd_params(name: &str) -> &'static [usize] {
    match name {
        "fd_renumber" => &[0, 1],
        // path_link(old_fd, flags, old_path, old_len, new_fd, ...), path_rename(fd, old_path,
        // old_len, new_fd, ...).
        "path_link" => &[0, 4],
        "path_rename" => &[0, 3],
        "path_symlink" => &[2],
        n if n.starts_with("fd_") || n.starts_with("path_") || n.starts_with("sock_") => &[0],
        _ => &[],
    }
}

/// Marks a stretch of wasm execution on this thread (a run on the wasm backend, a micro-VM run's
/// WASI service). wasmer runs guest code on coroutine stacks of 1 MiB that it pools process-wide
/// and never frees: a burst of 1,000 concurrent runs would keep 1,000 stacks mapped for the
/// process's life. When the last stretch in progress ends after more than [`KEEP_STACKS`] ran at
/// once, the pool is drained (sequential runs keep reusing their thread's cached stack).
pub(crate) struct WasmerCalls(());

static IN_PROGRESS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
static PEAK: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
/// Concurrent stretches whose stacks the pool may keep.
const KEEP_STACKS: usize = 4;

impl WasmerCalls {
    pub(crate) fn begin() -> Self {
        use std::sync::atomic::Ordering::AcqRel;
        let n = IN_PROGRESS.fetch_add(1, AcqRel) + 1;
        PEAK.fetch_max(n, AcqRel);
        WasmerCalls(())
    }
}

impl Drop for WasmerCalls {
    fn drop(&mut self) {
        use std::sync::atomic::Ordering::AcqRel;
        if IN_PROGRESS.fetch_sub(1, AcqRel) == 1 && PEAK.load(std::sync::atomic::Ordering::Acquire) > KEEP_STACKS {
            PEAK.store(0, std::sync::atomic::Ordering::Release);
            // Stacks in use by runs that start meanwhile are theirs, not the pool's.
            wasmer_vm::drain_stack_pool();
        }
    }
}

/// The tokio runtime wasmer-wasix needs for its file operations; one for the process.
pub(crate) fn tokio_runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            // Blocking file operations get threads of their own; after a burst of runs they
            // end within a second (tokio's default keeps them 10 s).
            .thread_keep_alive(std::time::Duration::from_secs(1))
            .thread_name("sandcell-wasi")
            .enable_all()
            .build()
            .expect("cannot start the tokio runtime for WASI")
    })
}

/// The guest called `proc_exit` with this exact code.
#[derive(Debug, thiserror::Error)]
#[error("guest exited with code {0}")]
pub(crate) struct GuestExit(pub(crate) u32);

/// The guest raised a signal that ends it (`proc_raise`; the Linux signal number).
#[derive(Debug, thiserror::Error)]
#[error("guest raised signal {0}")]
pub(crate) struct GuestSignal(pub(crate) i32);

/// What the policy says about a WASI guest's world, prepared once per sandbox.
pub(crate) struct WasiHost {
    runtime: Arc<PluggableRuntime>,
    /// Each mount: its guest path, whether it is writable, and its opened host directory.
    mounts: Vec<(PathBuf, bool, Arc<MountRoot>)>,
    env: BTreeMap<String, String>,
    max_open_files: Option<u64>,
    max_file_size: Option<u64>,
}

impl std::fmt::Debug for WasiHost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WasiHost").field("mounts", &self.mounts.len()).finish()
    }
}

impl WasiHost {
    /// Opens the policy's mounts (directories only) and builds the runtime: `engine` is the
    /// engine the guest's (or the proxy's) module belongs to.
    pub(crate) fn new(
        engine: wasmer::Engine,
        mounts: &[Mount],
        env: &BTreeMap<String, String>,
        max_open_files: Option<u64>,
        max_file_size: Option<u64>,
    ) -> Result<Self> {
        let handle = tokio_runtime().handle().clone();
        let mut runtime = PluggableRuntime::new(Arc::new(TokioTaskManager::new(handle.clone())));
        runtime.set_engine(engine);
        runtime.set_networking_implementation(UnsupportedVirtualNetworking::default());
        let mut opened = Vec::with_capacity(mounts.len());
        for (i, m) in mounts.iter().enumerate() {
            if m.guest.starts_with(fs::RUN_DIR) {
                return Err(Error::invalid_policy(
                    format!("mounts[{i}].guest"),
                    format!(
                        "`{}` is inside `{}`, sandcell's own directory in a WASI guest (where a guest says it is \
                         ready); mount elsewhere",
                        m.guest.display(),
                        fs::RUN_DIR
                    ),
                ));
            }
            let field = format!("mounts[{i}].host");
            let host = std::fs::canonicalize(&m.host)
                .map_err(|e| Error::invalid_policy(&field, format!("`{}`: {e}", m.host.display())))?;
            if !host.is_dir() {
                return Err(Error::invalid_policy(
                    &field,
                    format!("`{}` is not a directory (a WASI guest's mounts are directories)", host.display()),
                ));
            }
            let root = MountRoot::new(&host, m.writable, handle.clone())
                .map_err(|e| Error::invalid_policy(&field, format!("`{}`: {e}", host.display())))?;
            opened.push((m.guest.clone(), m.writable, Arc::new(root)));
        }
        // A mount at `/` is preopened first (right after wasix's own root, see `root_fd`).
        opened.sort_by_key(|(guest, _, _)| guest != std::path::Path::new("/"));
        Ok(WasiHost { runtime: Arc::new(runtime), mounts: opened, env: env.clone(), max_open_files, max_file_size })
    }

    /// The WASI environment of a run: arguments, environment, capped stdio, the mounts.
    pub(crate) fn env(&self, program: &Program, sink: &Arc<Sink>, store: &mut Store) -> Result<WasiFunctionEnv> {
        let limits = FsLimits::new(self.max_open_files, self.max_file_size);
        let root = fs::build_root(&self.mounts, &limits)
            .map_err(|e| Error::Engine { reason: format!("cannot assemble the guest filesystem: {e}") })?;
        let mut builder = WasiEnv::builder(program.argv0())
            .args(program.arguments())
            .envs(program.merged_env(&self.env))
            .stdin(Box::new(StdinFile::new(program.stdin_source(), sink.control.clone())))
            .stdout(Box::new(OutputFile::new(Stream::Stdout, sink.clone())))
            .stderr(Box::new(OutputFile::new(Stream::Stderr, sink.clone())))
            .runtime(self.runtime.clone())
            .mount_fs(root);
        for (guest, writable, _) in &self.mounts {
            let writable = *writable;
            builder
                .add_preopen_build(|p| p.directory(guest).read(true).write(writable).create(writable))
                .map_err(|e| Error::Engine { reason: format!("cannot preopen `{}`: {e}", guest.display()) })?;
        }
        // sandcell's own directory comes last: the mounts keep their descriptors.
        builder
            .add_preopen_build(|p| p.directory(fs::RUN_DIR).read(true).write(true).create(true))
            .map_err(|e| Error::Engine { reason: format!("cannot preopen `{}`: {e}", fs::RUN_DIR) })?;
        let env = builder.build().map_err(|e| Error::invalid_program(format!("cannot set up WASI: {e}")))?;
        Ok(WasiFunctionEnv::new(store, env))
    }

    /// The descriptor of `/run/sandcell` in a run's WASI environment: after wasix's own root
    /// (3) and the mounts, in their order (see [`WasiHost::env`]).
    pub(crate) fn run_dir_fd(&self) -> u32 {
        4 + self.mounts.len() as u32
    }

    /// The WASI preview 1 imports with sandcell's wrappers (descriptor cap, no sockets, the
    /// root), for the functions `wanted` says the module uses (each wrapper costs time per run).
    pub(crate) fn imports(&self, store: &mut Store, fenv: &WasiFunctionEnv, wanted: impl Fn(&str) -> bool) -> Imports {
        let mut imports = wasmer_wasix::generate_import_object_from_env(store, &fenv.env, WasiVersion::Snapshot1);
        if wanted("path_open") {
            wrap_path_open(store, &mut imports, fenv, self.max_open_files);
        }
        if wanted("path_link") || wanted("path_symlink") {
            cap_links(store, &mut imports, self.run_dir_fd());
        }
        no_sockets(store, &mut imports, &wanted);
        let root_mount = self.mounts.first().is_some_and(|(guest, _, _)| guest == std::path::Path::new("/"));
        checked_args(store, &mut imports, &wanted, root_mount);
        if root_mount {
            root_prestat(store, &mut imports, fenv, &wanted);
        }
        imports
    }
}

/// The parameters of WASI function `name` that point at values wider than a byte, with their
/// alignment (from the preview 1 witx: sizes and counts 4, descriptors 4, timestamps and file
/// sizes 8, `fdstat`/`filestat`/subscriptions/events 8, `prestat` and iovec arrays 4, `roflags` 2).
fn aligned_params(name: &str) -> &'static [(usize, u32)] {
    match name {
        "args_get" | "environ_get" => &[(0, 4)],
        "args_sizes_get" | "environ_sizes_get" => &[(0, 4), (1, 4)],
        "clock_res_get" | "fd_fdstat_get" | "fd_filestat_get" | "fd_tell" => &[(1, 8)],
        "clock_time_get" => &[(2, 8)],
        "fd_pread" | "fd_pwrite" | "sock_send" => &[(1, 4), (4, 4)],
        "fd_prestat_get" => &[(1, 4)],
        "fd_read" | "fd_write" => &[(1, 4), (3, 4)],
        "fd_readdir" => &[(4, 4)],
        "fd_seek" => &[(3, 8)],
        "path_filestat_get" => &[(4, 8)],
        "path_open" => &[(8, 4)],
        "path_readlink" => &[(5, 4)],
        "poll_oneoff" => &[(0, 8), (1, 8), (3, 4)],
        "sock_accept" => &[(2, 4)],
        "sock_recv" => &[(1, 4), (4, 4), (5, 2)],
        _ => &[],
    }
}

thread_local! {
    /// Counts the wrapped WASI calls made on this thread (0: none yet).
    static CALL_SERIAL: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

/// Which WASI call this thread is in (a wrapped call; 0 before the first): the stdin file tells
/// the buffers of one `fd_read` from those of the next by it. WASI calls run on the thread that
/// runs the guest (the micro-VM's: the thread serving its calls).
pub(crate) fn call_serial() -> u64 {
    CALL_SERIAL.with(|c| c.get())
}

/// One wrapper per WASI function whose arguments need a look before wasix sees them:
///
/// - a pointer to a wider-than-byte value that is misaligned gets `EFAULT`: wasix makes a Rust
///   reference of it, which a build with debug assertions (any `cargo build` without
///   `--release`) turns into an abort of the whole host process, so one guest could end every
///   run of its host (wasmtime traps on the same pointers; the error lets the guest go on, and
///   compilers always align them, so no real program sees it);
/// - with a mount at `/` (`swap_root`), descriptors 3 and 4 are swapped (see [`root_prestat`]).
fn checked_args(store: &mut Store, imports: &mut Imports, wanted: &impl Fn(&str) -> bool, swap_root: bool) {
    const ERRNO_FAULT: i32 = 21;
    let swap = |fd: i32| match fd {
        WASIX_ROOT_FD => ROOT_MOUNT_FD,
        ROOT_MOUNT_FD => WASIX_ROOT_FD,
        other => other,
    };
    for (name, _) in SIGNATURES.iter().filter(|(n, _)| wanted(n)) {
        let aligned = aligned_params(name);
        let fds: &[usize] = if swap_root { fd_params(name) } else { &[] };
        if aligned.is_empty() && fds.is_empty() {
            continue;
        }
        let Some(wasmer::Extern::Function(inner)) = imports.get_export(WASI_MODULE, name) else { continue };
        let ty = inner.ty(store);
        let env = FunctionEnv::new(store, inner);
        let wrapped =
            Function::new_with_env(store, &env, ty, move |mut ctx: FunctionEnvMut<Function>, args: &[Value]| {
                let misaligned = aligned.iter().any(|&(p, align)| match args.get(p) {
                    Some(Value::I32(ptr)) => (*ptr as u32) % align != 0,
                    _ => false,
                });
                if misaligned {
                    return Ok(vec![Value::I32(ERRNO_FAULT)]);
                }
                let mut args = args.to_vec();
                for &p in fds {
                    if let Some(Value::I32(fd)) = args.get(p) {
                        args[p] = Value::I32(swap(*fd));
                    }
                }
                CALL_SERIAL.with(|c| c.set(c.get().wrapping_add(1).max(1)));
                let inner = ctx.data().clone();
                Ok(inner.call(&mut ctx, &args)?.into_vec())
            });
        imports.define(WASI_MODULE, name, wrapped);
    }
}

/// Defines `proc_exit` (the exact 32-bit code, as [`GuestExit`]) and, when the module imports
/// it, `proc_raise` (see [`signals`]) for a guest run directly on the host.
pub(crate) fn define_exit_and_raise(store: &mut Store, imports: &mut Imports, raises: bool) {
    imports.define(
        WASI_MODULE,
        "proc_exit",
        Function::new_typed(store, |code: i32| -> std::result::Result<(), GuestExit> { Err(GuestExit(code as u32)) }),
    );
    if raises {
        imports.define(
            WASI_MODULE,
            "proc_raise",
            Function::new_typed(store, |signal: i32| -> std::result::Result<i32, GuestSignal> {
                match signals::raise(signal) {
                    signals::Raise::Terminate(sig) => Err(GuestSignal(sig)),
                    signals::Raise::Ignore => Ok(0),
                    signals::Raise::Invalid => Ok(signals::ERRNO_INVAL),
                }
            }),
        );
    }
}

/// wasix's own root directory, always descriptor 3 and preopened as `/`.
const WASIX_ROOT_FD: i32 = 3;
/// The preopen of a mount at `/`, which is preopened first, right after wasix's root.
const ROOT_MOUNT_FD: i32 = 4;

/// Makes a mount at `/` the guest's root: the first preopen named `/`, which is what programs
/// built with wasi-libc (Rust's standard library among them) resolve absolute paths against.
///
/// wasix always keeps a virtual root of its own at descriptor 3, preopened as `/`, in which
/// nothing can be created, and refuses to let another descriptor replace it. So the guest's
/// descriptors 3 and 4 are swapped at the import boundary (by [`checked_args`]): the guest's 3 is the mount, its 4
/// wasix's root — which `fd_prestat_get` then describes as a preopen of another kind than a
/// directory, so that no guest takes it for a second `/` (wasi-libc takes the last of equal
/// prefixes, other code the first). Preopens cannot be closed or renumbered, and no new
/// descriptor is ever 3 or 4, so only descriptor arguments need translating, never results.
/// (`poll_oneoff` names descriptors inside its subscriptions, which are not translated:
/// polling a directory is meaningless.)
fn root_prestat(store: &mut Store, imports: &mut Imports, fenv: &WasiFunctionEnv, wanted: &impl Fn(&str) -> bool) {
    if !wanted("fd_prestat_get") {
        return;
    }
    let Some(wasmer::Extern::Function(inner)) = imports.get_export(WASI_MODULE, "fd_prestat_get") else { return };
    struct Prestat {
        inner: Function,
        wasi: FunctionEnv<WasiEnv>,
    }
    let env = FunctionEnv::new(store, Prestat { inner, wasi: fenv.env.clone() });
    let prestat = Function::new_typed_with_env(store, &env, |mut ctx: FunctionEnvMut<Prestat>, fd: i32, out: i32| {
        const ERRNO_FAULT: i32 = 21;
        if fd != ROOT_MOUNT_FD {
            // `checked_args`'s wrapper, inside this one, translates the descriptor.
            let inner = ctx.data().inner.clone();
            return inner.typed::<(i32, i32), i32>(&ctx)?.call(&mut ctx, fd, out);
        }
        // wasix's root, which the guest sees at 4: a preopen, but not of a directory
        // (`prestat`: tag 1, name length 0).
        let wasi = ctx.data().wasi.clone();
        let answer = [1u8, 0, 0, 0, 0, 0, 0, 0];
        let written =
            wasi.as_ref(&ctx).try_memory_view(&ctx).is_some_and(|view| view.write(out as u32 as u64, &answer).is_ok());
        Ok::<i32, RuntimeError>(if written { 0 } else { ERRNO_FAULT })
    });
    imports.define(WASI_MODULE, "fd_prestat_get", prestat);
}

/// What wasix says of a descriptor (`fd_fdstat_get`): its file type and rights.
struct Fdstat {
    filetype: u8,
    rights: u64,
}

/// Asks wasix's own `fd_fdstat_get` (`raw`) about `fd`. It answers into guest memory: the
/// 24 bytes it writes at offset 0 are saved before and put back after, so the guest sees no
/// change (it is stopped while the host serves its call, and preview 1 has one thread).
fn fdstat<T>(ctx: &mut FunctionEnvMut<T>, raw: &Function, wasi: &FunctionEnv<WasiEnv>, fd: i32) -> Option<Fdstat> {
    let mut saved = [0u8; 24];
    wasi.as_ref(ctx).try_memory_view(ctx)?.read(0, &mut saved).ok()?;
    let errno = raw.typed::<(i32, i32), i32>(ctx).ok()?.call(ctx, fd, 0).ok()?;
    let mut answer = [0u8; 24];
    let view = wasi.as_ref(ctx).try_memory_view(ctx)?;
    view.read(0, &mut answer).ok()?;
    view.write(0, &saved).ok()?;
    (errno == 0)
        .then(|| Fdstat { filetype: answer[0], rights: u64::from_le_bytes(answer[8..16].try_into().expect("8 bytes")) })
}

/// Links a run may make (hard and symbolic together).
const MAX_LINKS: u32 = 1024;
/// The longest symlink target (`PATH_MAX`).
const MAX_SYMLINK_TARGET: i32 = 4096;

/// Bounds the links a guest makes. wasix keeps a hard link as an alias in its own memory (never
/// on the host), and a symlink too where the file system has none to offer (host mounts): a
/// guest repeating either, with long names or targets, would grow host memory without bound.
/// So a run makes at most [`MAX_LINKS`] of them, each symlink target at most
/// [`MAX_SYMLINK_TARGET`] bytes, and none in `/run/sandcell` (`run_dir`, sandcell's own
/// directory); beyond that the call fails (`EMLINK`, `ENAMETOOLONG`, `EPERM`).
fn cap_links(store: &mut Store, imports: &mut Imports, run_dir: u32) {
    const ERRNO_MLINK: i32 = 34;
    const ERRNO_NAMETOOLONG: i32 = 37;
    const ERRNO_PERM: i32 = 63;
    struct Links {
        link: Option<Function>,
        symlink: Option<Function>,
        made: u32,
    }
    let get = |imports: &Imports, name: &str| match imports.get_export(WASI_MODULE, name) {
        Some(wasmer::Extern::Function(f)) => Some(f),
        _ => None,
    };
    let (link, symlink) = (get(imports, "path_link"), get(imports, "path_symlink"));
    let env = FunctionEnv::new(store, Links { link: link.clone(), symlink: symlink.clone(), made: 0 });
    fn errno(values: &[Value]) -> i32 {
        values.first().and_then(Value::i32).unwrap_or(0)
    }
    if link.is_some() {
        let path_link = Function::new_typed_with_env(
            store,
            &env,
            move |mut ctx: FunctionEnvMut<Links>,
                  old_fd: i32,
                  old_flags: i32,
                  old_path: i32,
                  old_len: i32,
                  new_fd: i32,
                  new_path: i32,
                  new_len: i32|
                  -> std::result::Result<i32, RuntimeError> {
                if new_fd as u32 == run_dir {
                    return Ok(ERRNO_PERM);
                }
                if ctx.data().made >= MAX_LINKS {
                    return Ok(ERRNO_MLINK);
                }
                let Some(inner) = ctx.data().link.clone() else { return Ok(ERRNO_PERM) };
                let args = [old_fd, old_flags, old_path, old_len, new_fd, new_path, new_len].map(Value::I32);
                let e = errno(&inner.call(&mut ctx, &args)?);
                if e == 0 {
                    ctx.data_mut().made += 1;
                }
                Ok(e)
            },
        );
        imports.define(WASI_MODULE, "path_link", path_link);
    }
    if symlink.is_some() {
        let path_symlink = Function::new_typed_with_env(
            store,
            &env,
            move |mut ctx: FunctionEnvMut<Links>,
                  old_path: i32,
                  old_len: i32,
                  fd: i32,
                  new_path: i32,
                  new_len: i32|
                  -> std::result::Result<i32, RuntimeError> {
                if fd as u32 == run_dir {
                    return Ok(ERRNO_PERM);
                }
                if old_len as u32 > MAX_SYMLINK_TARGET as u32 {
                    return Ok(ERRNO_NAMETOOLONG);
                }
                if ctx.data().made >= MAX_LINKS {
                    return Ok(ERRNO_MLINK);
                }
                let Some(inner) = ctx.data().symlink.clone() else { return Ok(ERRNO_PERM) };
                let args = [old_path, old_len, fd, new_path, new_len].map(Value::I32);
                let e = errno(&inner.call(&mut ctx, &args)?);
                if e == 0 {
                    ctx.data_mut().made += 1;
                }
                Ok(e)
            },
        );
        imports.define(WASI_MODULE, "path_symlink", path_symlink);
    }
}

/// Wraps `path_open` (and `fd_close`) for what wasix lacks:
///
/// - the cap on descriptors the guest holds open (`max_open_files`). In WASI preview 1 only
///   `path_open` creates descriptors: an open beyond the cap fails with `EMFILE`. (wasix keeps
///   each descriptor in host memory and has no cap of its own, so without this a guest could
///   grow host memory by opening one file forever.) A close that wasix answers with success but
///   does not carry out (a descriptor for a preopened directory itself: wasix keeps it) gives no
///   slot back;
/// - opening a directory (`O_DIRECTORY`) with rights that include `fd_write`, as a guest asking
///   for a directory descriptor with the rights of the one it came from does (the WASI test
///   suite's Rust tests open their root so): wasix refuses that with `EISDIR`, but a directory
///   descriptor cannot be written anyway, so the right is dropped and the open goes ahead;
/// - `O_TRUNC` needs `path_filestat_set_size` on the directory (wasix checks only
///   `path_open`): `ENOTCAPABLE` otherwise;
/// - a descriptor that is not a directory as the directory: `ENOTDIR` (wasix says `EACCES`).
fn wrap_path_open(store: &mut Store, imports: &mut Imports, fenv: &WasiFunctionEnv, max: Option<u64>) {
    const ERRNO_ACCES: i32 = 2;
    const ERRNO_MFILE: i32 = 33;
    const ERRNO_NOTDIR: i32 = 54;
    const ERRNO_NOTCAPABLE: i32 = 76;
    const OFLAGS_DIRECTORY: i32 = 1 << 1;
    const OFLAGS_TRUNC: i32 = 1 << 3;
    const RIGHTS_FD_WRITE: i64 = 1 << 6;
    const RIGHTS_PATH_FILESTAT_SET_SIZE: u64 = 1 << 19;
    const FILETYPE_DIRECTORY: u8 = 3;
    let (
        Some(wasmer::Extern::Function(open)),
        Some(wasmer::Extern::Function(close)),
        Some(wasmer::Extern::Function(stat)),
    ) = (
        imports.get_export(WASI_MODULE, "path_open"),
        imports.get_export(WASI_MODULE, "fd_close"),
        imports.get_export(WASI_MODULE, "fd_fdstat_get"),
    )
    else {
        return;
    };
    struct Descriptors {
        open: Function,
        close: Function,
        stat: Function,
        wasi: FunctionEnv<WasiEnv>,
        count: u64,
        max: Option<u64>,
    }
    let env = FunctionEnv::new(store, Descriptors { open, close, stat, wasi: fenv.env.clone(), count: 0, max });
    type OpenArgs = (i32, i32, i32, i32, i32, i64, i64, i32, i32);
    let path_open = Function::new_typed_with_env(
        store,
        &env,
        |mut ctx: FunctionEnvMut<Descriptors>,
         dirfd: i32,
         dirflags: i32,
         path: i32,
         path_len: i32,
         oflags: i32,
         mut rights: i64,
         inheriting: i64,
         fdflags: i32,
         opened: i32| {
            let (count, max, inner, stat, wasi) = {
                let data = ctx.data();
                (data.count, data.max, data.open.clone(), data.stat.clone(), data.wasi.clone())
            };
            if max.is_some_and(|max| count >= max) {
                return Ok(ERRNO_MFILE);
            }
            if oflags & OFLAGS_DIRECTORY != 0 {
                rights &= !RIGHTS_FD_WRITE;
            }
            if oflags & OFLAGS_TRUNC != 0 {
                if let Some(dir) = fdstat(&mut ctx, &stat, &wasi, dirfd) {
                    if dir.rights & RIGHTS_PATH_FILESTAT_SET_SIZE == 0 {
                        return Ok(ERRNO_NOTCAPABLE);
                    }
                }
            }
            let typed = inner.typed::<OpenArgs, i32>(&ctx)?;
            let errno =
                typed.call(&mut ctx, dirfd, dirflags, path, path_len, oflags, rights, inheriting, fdflags, opened)?;
            if errno == 0 {
                ctx.data_mut().count += 1;
            }
            if errno == ERRNO_ACCES
                && fdstat(&mut ctx, &stat, &wasi, dirfd).is_some_and(|d| d.filetype != FILETYPE_DIRECTORY)
            {
                return Ok(ERRNO_NOTDIR);
            }
            Ok::<i32, RuntimeError>(errno)
        },
    );
    imports.define(WASI_MODULE, "path_open", path_open);
    if max.is_some() {
        let fd_close = Function::new_typed_with_env(store, &env, |mut ctx: FunctionEnvMut<Descriptors>, fd: i32| {
            let (inner, stat, wasi) = {
                let data = ctx.data();
                (data.close.clone(), data.stat.clone(), data.wasi.clone())
            };
            let errno = inner.typed::<i32, i32>(&ctx)?.call(&mut ctx, fd)?;
            // Only a descriptor that is gone gives its slot back.
            if errno == 0 && fdstat(&mut ctx, &stat, &wasi, fd).is_none() {
                let data = ctx.data_mut();
                data.count = data.count.saturating_sub(1);
            }
            Ok::<i32, RuntimeError>(errno)
        });
        imports.define(WASI_MODULE, "fd_close", fd_close);
    }
}

/// A sandbox has no network, so no descriptor is ever a socket: WASI preview 1's `sock_accept`,
/// `sock_recv`, `sock_send` and `sock_shutdown` fail with `EBADF` on a descriptor that is not
/// open and `ENOTSOCK` on any other (wasix would answer `EACCES` or `ENOTSUP` there). wasix still
/// checks the descriptor; its networking is `Unsupported`, so it can never succeed.
fn no_sockets(store: &mut Store, imports: &mut Imports, wanted: &impl Fn(&str) -> bool) {
    const ERRNO_BADF: i32 = 8;
    const ERRNO_NOTSOCK: i32 = 57;
    for name in ["sock_accept", "sock_recv", "sock_send", "sock_shutdown"].into_iter().filter(|n| wanted(n)) {
        let Some(wasmer::Extern::Function(inner)) = imports.get_export(WASI_MODULE, name) else { continue };
        let ty = inner.ty(store);
        let env = FunctionEnv::new(store, inner);
        let wrapped = Function::new_with_env(store, &env, ty, |mut ctx: FunctionEnvMut<Function>, args: &[Value]| {
            let inner = ctx.data().clone();
            let result = inner.call(&mut ctx, args)?;
            let errno = match result.first().and_then(Value::i32) {
                Some(0) | Some(ERRNO_BADF) => result[0].i32().unwrap_or(ERRNO_BADF),
                _ => ERRNO_NOTSOCK,
            };
            Ok(vec![Value::I32(errno)])
        });
        imports.define(WASI_MODULE, name, wrapped);
    }
}
