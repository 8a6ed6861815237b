//! The process backend's lowering of a [`Policy`]: every field, in one place, onto the jail's
//! [`Plan`] (the filesystem tree, rlimits, Landlock rules, the seccomp profile), the run cgroups'
//! limits, and the record of enforcement.

use std::collections::BTreeSet;
use std::ffi::CString;
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use super::jail::{Bind, LandlockPlan, Plan, RootMount, MAX_BINDS};
use super::{cgroup, netns, seccomp, sys, template};
use crate::enforcement::{Lowering, PolicyField as F, Record};
use crate::{BackendKind, Error, HostSupport, Network, Policy, Result};

/// Default system directories (those that exist are mounted read-only; symlinks stay symlinks).
const DEFAULT_SYSTEM_DIRS: &[&str] = &["/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32"];
/// The files under /etc that the dynamic linker and libc read.
const DEFAULT_ETC: &[&str] = &[
    "/etc/ld.so.cache",
    "/etc/ld.so.conf",
    "/etc/ld.so.conf.d",
    "/etc/localtime",
    "/etc/nsswitch.conf",
    "/etc/alternatives",
];
pub(super) const DEVICES: &[&str] = &["/dev/null", "/dev/zero", "/dev/full", "/dev/random", "/dev/urandom"];
/// Guest paths the jail itself provides; mounts may not go there.
const RESERVED: &[&str] = &["/proc", "/dev", "/tmp"];

// Landlock access rights.
const LL_EXECUTE: u64 = 1 << 0;
const LL_WRITE_FILE: u64 = 1 << 1;
const LL_READ_FILE: u64 = 1 << 2;
const LL_READ_DIR: u64 = 1 << 3;
const LL_TRUNCATE: u64 = 1 << 14;
const LL_IOCTL_DEV: u64 = 1 << 15;
const LL_NET_BIND_TCP: u64 = 1 << 0;
const LL_NET_CONNECT_TCP: u64 = 1 << 1;
const LL_SCOPE_ABSTRACT_UNIX: u64 = 1 << 0;
const LL_SCOPE_SIGNAL: u64 = 1 << 1;

fn landlock_fs_rights(abi: u32) -> u64 {
    match abi {
        0 => 0,
        1 => (1 << 13) - 1,
        2 => (1 << 14) - 1,
        3 | 4 => (1 << 15) - 1,
        _ => (1 << 16) - 1,
    }
}

pub(super) fn cstr(p: impl AsRef<[u8]>) -> CString {
    CString::new(p.as_ref().to_vec()).expect("paths were checked for NUL bytes")
}

/// What a process sandbox's runs need of its policy.
pub(super) struct Lowered {
    pub(super) plan: Plan,
    pub(super) cgroups: Option<cgroup::Pool>,
    pub(super) as_root: bool,
    /// Policy mounts to id-map when running as root: (host path, read-only), by index.
    pub(super) idmapped: Vec<(CString, bool)>,
    /// The root template (as root), copied for each run.
    pub(super) template: Option<OwnedFd>,
    pub(super) record: Record,
}

/// Lowers `policy` onto the jail, on a host with `host`'s facts.
pub(super) fn lower(policy: &Policy, host: &HostSupport) -> Result<Lowered> {
    // Every field, by name: a new one does not compile until it is handled here.
    let Policy {
        memory,
        timeout,
        cpu_time,
        fuel,
        cpus,
        max_processes,
        max_open_files,
        max_file_size,
        max_output: _, // the host's capture of the output pipes (`run`)
        mounts,
        system_dirs,
        network,
        unix_sockets,
        env: _, // the program's environment (`run`); nothing else is passed on
        deny_syscalls,
        compile: _, // nothing is compiled: native code runs as it is
        best_effort,
    } = policy.clone();
    let mut l = Lowering::new(BackendKind::Process, best_effort);
    l.enforce(F::MaxOutput, "capped capture, both pipes drained");
    if !policy.env.is_empty() {
        l.enforce(F::Env, "the program's environment; nothing of the host's is passed on");
    }
    if fuel.is_some() {
        l.refuse(F::Fuel, "native code cannot be metered instruction by instruction; use cpu_time")?;
    }
    let abi = host.landlock_abi.unwrap_or(0);
    if abi == 0 {
        l.refuse(
            F::Mounts,
            "Landlock is not enabled in this kernel, so the filesystem policy would rest on mount namespaces alone",
        )?;
    }

    // SAFETY: geteuid has no preconditions.
    let as_root = unsafe { libc::geteuid() } == 0;
    if as_root {
        netns::prime(network == Network::Loopback);
    }
    super::host_dumpable();
    let cgroups = if as_root { cgroup::detect(&host.cgroups) } else { None };

    // Resource limits.
    let mut rlimits: Vec<(libc::__rlimit_resource_t, u64, u64)> = vec![(libc::RLIMIT_CORE, 0, 0)];
    match (&cgroups, memory) {
        (Some(cg), Some(m)) => {
            l.enforce(F::Memory, format!("{} memory limit of {m} bytes for the whole tree", cg.describe()));
        }
        (None, Some(m)) => {
            rlimits.push((libc::RLIMIT_AS, m, m));
            // Memory no address space holds is refused (see `seccomp`), or bounded: POSIX
            // message queues not at all, /tmp (and /dev/shm, a link to it) by its size.
            rlimits.push((libc::RLIMIT_MSGQUEUE, 0, 0));
            l.enforce(
                F::Memory,
                format!(
                    "per process, not for the whole run (no writable cgroup): RLIMIT_AS of {m} bytes; /tmp and \
                     /dev/shm a tmpfs of {m} bytes; memfd_create, System V shared memory and message queues, POSIX \
                     message queues and larger pipe buffers refused"
                ),
            );
        }
        (_, None) => {}
    }
    match (&cgroups, max_processes) {
        (Some(cg), Some(_)) => l.enforce(F::MaxProcesses, format!("{} pids limit", cg.describe())),
        (None, Some(n)) => {
            // +1: the run's init.
            rlimits.push((libc::RLIMIT_NPROC, n as u64 + 1, n as u64 + 1));
            l.enforce(F::MaxProcesses, "RLIMIT_NPROC in the run's own user namespace");
        }
        (_, None) => {}
    }
    if let Some(cpu) = cpu_time {
        let secs = cpu.as_secs().max(1);
        rlimits.push((libc::RLIMIT_CPU, secs, secs + 1));
        l.enforce(
            F::CpuTime,
            if cgroups.is_some() { "cgroup CPU time of the tree, and RLIMIT_CPU" } else { "RLIMIT_CPU per process" },
        );
    }
    if let Some(n) = max_open_files {
        l.enforce(F::MaxOpenFiles, format!("RLIMIT_NOFILE of {n}"));
    }
    if let Some(n) = max_file_size {
        rlimits.push((libc::RLIMIT_FSIZE, n, n));
        l.enforce(F::MaxFileSize, format!("RLIMIT_FSIZE of {n} bytes"));
    }
    if timeout.is_some() {
        l.enforce(F::Timeout, "SIGKILL of the pid namespace");
    }
    if cpus.is_some() {
        l.enforce(F::Cpus, "CPU affinity, sched_setaffinity denied");
    }
    l.enforce(
        F::Network,
        match network {
            Network::None => "empty network namespace",
            Network::Loopback => "network namespace with only a private loopback",
        },
    );
    l.enforce(
        F::DenySyscalls,
        if deny_syscalls.is_empty() {
            "seccomp-bpf allow-list".to_owned()
        } else {
            format!("seccomp-bpf allow-list; {} denied by name, ending the run", deny_syscalls.join(", "))
        },
    );
    l.enforce(
        F::UnixSockets,
        if unix_sockets {
            "socket(AF_UNIX) allowed"
        } else {
            "socket(AF_UNIX) refused by seccomp (socketpair allowed)"
        },
    );
    let refuse_shared_memory = cgroups.is_none() && memory.is_some();

    // The filesystem: the policy's root (a mount at `/`, which a container image's root is), or
    // a fresh read-only one with the system directories.
    let root_mount = mounts.iter().position(|m| m.guest == Path::new("/"));
    let ro = sys::MOUNT_ATTR_RDONLY | sys::MOUNT_ATTR_NOSUID | sys::MOUNT_ATTR_NODEV;
    let mut tree = Tree::default();
    let mut idmapped = Vec::new();
    let mut root = None;
    if let Some(i) = root_mount {
        let m = &mounts[i];
        let host_path = canonical(&m.host, i)?;
        if !host_path.is_dir() {
            return Err(Error::invalid_policy(format!("mounts[{i}].host"), "a mount at `/` must be a directory"));
        }
        let map = as_root.then(|| {
            idmapped.push((cstr(host_path.as_os_str().as_bytes()), !m.writable));
            idmapped.len() - 1
        });
        let attrs = if m.writable { sys::MOUNT_ATTR_NOSUID | sys::MOUNT_ATTR_NODEV } else { ro };
        root = Some(RootMount { source: cstr(host_path.as_os_str().as_bytes()), attrs, idmapped: map });
        // Its own /etc stays; /proc, /dev and /tmp are the jail's, mounted over it.
        tree.dir(Path::new("/proc"));
        tree.dir(Path::new("/tmp"));
        tree.dir(Path::new("/dev"));
    } else {
        tree.dir(Path::new("/etc"));
        tree.dir(Path::new("/dev"));
        tree.dir(Path::new("/proc"));
        tree.dir(Path::new("/tmp"));
        tree.contents.push((
            "/etc/passwd".into(),
            b"root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n".to_vec(),
        ));
        tree.contents.push(("/etc/group".into(), b"root:x:0:\nnogroup:x:65534:\n".to_vec()));
        tree.contents.push(("/etc/hostname".into(), b"sandcell\n".to_vec()));
    }
    let dev_links = [
        ("/dev/fd", "/proc/self/fd"),
        ("/dev/stdin", "/proc/self/fd/0"),
        ("/dev/stdout", "/proc/self/fd/1"),
        ("/dev/stderr", "/proc/self/fd/2"),
        ("/dev/shm", "/tmp"),
    ];
    // With a root mount, /dev is a small tmpfs of the jail's (the links and the device nodes go
    // in it, not into the image): created after it is mounted, so they are `dev_contents`.
    let mut dev_contents = Vec::new();
    for (link, target) in dev_links {
        if root.is_some() {
            dev_contents.push((cstr(target), staged(Path::new(link))));
        } else {
            tree.symlinks.push((target.into(), link.into()));
        }
    }
    // `/run/sandcell/ready`, where a program says its start-up is done (as on the WASI
    // backends): here a link to /dev/null, whose writes go nowhere. Over a root mount (the
    // host's directory) there is no room for it.
    if root.is_none() {
        tree.parents(Path::new("/run/sandcell/ready"));
        tree.symlinks.push(("/dev/null".into(), "/run/sandcell/ready".into()));
    }
    // The system directories: the default set over a fresh root, none over a root mount unless
    // the policy lists them.
    let system: Vec<PathBuf> = match (&system_dirs, root.is_some()) {
        (Some(dirs), _) => dirs.clone(),
        (None, false) => DEFAULT_SYSTEM_DIRS.iter().chain(DEFAULT_ETC).map(PathBuf::from).collect(),
        (None, true) => Vec::new(),
    };
    for dir in &system {
        let Ok(meta) = std::fs::symlink_metadata(dir) else {
            if system_dirs.is_some() {
                return Err(Error::invalid_policy(
                    "system_dirs",
                    format!("`{}` does not exist on this host", dir.display()),
                ));
            }
            continue;
        };
        if meta.file_type().is_symlink() {
            let target =
                std::fs::read_link(dir).map_err(|e| Error::setup(format!("read the symlink {}", dir.display()), e))?;
            tree.parents(dir);
            tree.symlinks.push((target, dir.clone()));
        } else {
            tree.bind(dir, dir, meta.is_dir(), ro, None);
        }
    }
    l.enforce(
        F::SystemDirs,
        if system.is_empty() {
            "none".to_owned()
        } else {
            format!("{} read-only system directories and files", system.len())
        },
    );
    // As root, over a fresh root, the skeleton and the device nodes go into a read-only template
    // built once (see `template`, below); else the jail builds them, devices bind-mounted, per
    // run.
    let use_template = as_root && root.is_none();
    if !use_template {
        for dev in DEVICES {
            tree.bind(Path::new(dev), Path::new(dev), false, sys::MOUNT_ATTR_NOSUID, None);
        }
    }
    let mut landlock_rules: Vec<(PathBuf, u64)> = Vec::new();
    for (i, m) in mounts.iter().enumerate() {
        if Some(i) == root_mount {
            if m.writable {
                landlock_rules.push((m.guest.clone(), u64::MAX));
            }
            continue;
        }
        let field = format!("mounts[{i}]");
        if RESERVED.iter().any(|r| m.guest.starts_with(r)) {
            return Err(Error::invalid_policy(
                format!("{field}.guest"),
                format!(
                    "`{}` is provided by the process backend itself (/proc, /dev and /tmp); mount elsewhere",
                    m.guest.display()
                ),
            ));
        }
        let host_path = canonical(&m.host, i)?;
        let is_dir = host_path.is_dir();
        let attrs = if m.writable { sys::MOUNT_ATTR_NOSUID | sys::MOUNT_ATTR_NODEV } else { ro };
        let map = as_root.then(|| {
            idmapped.push((cstr(host_path.as_os_str().as_bytes()), !m.writable));
            idmapped.len() - 1
        });
        tree.bind(&host_path, &m.guest, is_dir, attrs, map);
        if m.writable {
            landlock_rules
                .push((m.guest.clone(), if is_dir { u64::MAX } else { LL_READ_FILE | LL_WRITE_FILE | LL_TRUNCATE }));
        }
    }
    if tree.binds.len() > MAX_BINDS {
        return Err(Error::invalid_policy(
            "mounts",
            format!("at most {} mounts", MAX_BINDS - DEVICES.len() - system.len()),
        ));
    }
    if !mounts.is_empty() {
        l.enforce(
            F::Mounts,
            format!(
                "bind mounts in a new mount namespace{}{}{}",
                if root.is_some() { ", one of them the root" } else { "" },
                if as_root { ", id-mapped to the sandbox's user" } else { "" },
                if abi > 0 { ", Landlock" } else { "" }
            ),
        );
    }

    let landlock = (abi > 0).then(|| {
        let handled_fs = landlock_fs_rights(abi);
        let file_rights = (LL_EXECUTE | LL_READ_FILE | LL_WRITE_FILE | LL_TRUNCATE | LL_IOCTL_DEV) & handled_fs;
        let mut rules = vec![(cstr("/"), LL_EXECUTE | LL_READ_FILE | LL_READ_DIR), (cstr("/tmp"), handled_fs)];
        // The device nodes: one rule for /dev, which holds nothing else (and is read-only).
        rules.push((cstr("/dev"), (LL_READ_FILE | LL_WRITE_FILE | LL_IOCTL_DEV) & handled_fs));
        for (guest, access) in &landlock_rules {
            let access = if *access == u64::MAX { handled_fs } else { access & file_rights };
            rules.push((cstr(guest.as_os_str().as_bytes()), access));
        }
        let handled_net = if abi >= 4 && network == Network::None { LL_NET_BIND_TCP | LL_NET_CONNECT_TCP } else { 0 };
        let scoped = if abi >= 6 { LL_SCOPE_ABSTRACT_UNIX | LL_SCOPE_SIGNAL } else { 0 };
        LandlockPlan { abi, handled_fs, handled_net, scoped, rules }
    });

    let tmp_size = memory.unwrap_or(256 << 20);
    let template = if use_template {
        let template = build_template(&tree);
        if template.is_none() {
            // Could not build it: the jail builds the root per run, as without root.
            for dev in DEVICES {
                tree.bind(Path::new(dev), Path::new(dev), false, sys::MOUNT_ATTR_NOSUID, None);
            }
        }
        template
    } else {
        None
    };
    if template.is_some() {
        // It has the whole skeleton.
        tree.dirs.clear();
        tree.files.clear();
        tree.contents.clear();
        tree.symlinks.clear();
    }
    // With a root mount, the device mount points live in the /dev tmpfs: created after it.
    let (files, dev_files): (Vec<CString>, Vec<CString>) = if root.is_some() {
        let (dev, other): (Vec<&PathBuf>, Vec<&PathBuf>) = tree.files.iter().partition(|f| f.starts_with("/dev"));
        (other.iter().map(|f| staged(f)).collect(), dev.iter().map(|f| staged(f)).collect())
    } else {
        (tree.files.iter().map(|f| staged(f)).collect(), Vec::new())
    };
    let plan = Plan {
        root,
        dirs: tree.dirs.iter().map(|d| staged(d)).collect(),
        files,
        dev_files,
        dev_symlinks: dev_contents,
        contents: tree.contents.iter().map(|(p, c)| (staged(p), c.clone())).collect(),
        symlinks: tree.symlinks.iter().map(|(t, l)| (cstr(t.as_os_str().as_bytes()), staged(l))).collect(),
        binds: tree.binds,
        tmp_size: cstr(tmp_size.to_string()),
        loopback: network == Network::Loopback,
        cpus,
        rlimits,
        max_open_files,
        landlock,
        seccomp: seccomp::profile(&seccomp::Rules {
            deny: deny_syscalls.clone(),
            network,
            limit_affinity: cpus.is_some(),
            unix_sockets,
            refuse_shared_memory,
        })?,
        template: template.is_some(),
        // Init ends the run itself (see `jail::init`) unless the policy denies a system call
        // it needs for that; the kernel then does it when init exits.
        init_ends_run: !deny_syscalls.iter().any(|d| matches!(d.as_str(), "kill" | "getrusage")),
    };
    // pids +1: the run's init.
    let limits = cgroup::Limits { memory, pids: max_processes.map(|n| n + 1) };
    let cgroups = cgroups.map(|setup| cgroup::Pool::new(setup, limits));
    Ok(Lowered { plan, cgroups, as_root, idmapped, template, record: l.finish() })
}

fn canonical(host: &Path, i: usize) -> Result<PathBuf> {
    std::fs::canonicalize(host)
        .map_err(|e| Error::invalid_policy(format!("mounts[{i}].host"), format!("`{}`: {e}", host.display())))
}

/// The sandbox's root template from its tree (skeleton and device nodes), or `None` if it cannot
/// be built (the jail then builds the root per run).
fn build_template(tree: &Tree) -> Option<OwnedFd> {
    let dirs: Vec<CString> = tree.dirs.iter().map(|d| cstr(d.as_os_str().as_bytes())).collect();
    let files: Vec<CString> = tree.files.iter().map(|f| cstr(f.as_os_str().as_bytes())).collect();
    let contents: Vec<(CString, &[u8])> =
        tree.contents.iter().map(|(p, c)| (cstr(p.as_os_str().as_bytes()), c.as_slice())).collect();
    let symlinks: Vec<(CString, CString)> =
        tree.symlinks.iter().map(|(t, l)| (cstr(t.as_os_str().as_bytes()), cstr(l.as_os_str().as_bytes()))).collect();
    let skeleton = template::Skeleton {
        dirs: dirs.iter().map(CString::as_c_str).collect(),
        files: files.iter().map(CString::as_c_str).collect(),
        contents: contents.iter().map(|(p, c)| (p.as_c_str(), *c)).collect(),
        symlinks: symlinks.iter().map(|(t, l)| (t.as_c_str(), l.as_c_str())).collect(),
        devices: DEVICES,
    };
    template::build(&skeleton).ok()
}

/// A guest path under the staging root the child builds the new root at.
pub(super) fn staged(guest: &Path) -> CString {
    let mut bytes = b"/tmp".to_vec();
    bytes.extend_from_slice(guest.as_os_str().as_bytes());
    cstr(bytes)
}

/// The new root's layout, collected while lowering the policy.
#[derive(Default)]
struct Tree {
    dirs: BTreeSet<PathBuf>,
    files: BTreeSet<PathBuf>,
    contents: Vec<(PathBuf, Vec<u8>)>,
    symlinks: Vec<(PathBuf, PathBuf)>,
    binds: Vec<Bind>,
}

impl Tree {
    /// A directory and its parents (a `BTreeSet` of paths iterates parents before children).
    fn dir(&mut self, path: &Path) {
        for a in path.ancestors() {
            if a != Path::new("/") && !a.as_os_str().is_empty() {
                self.dirs.insert(a.to_path_buf());
            }
        }
    }

    fn parents(&mut self, path: &Path) {
        if let Some(p) = path.parent() {
            self.dir(p);
        }
    }

    fn bind(&mut self, source: &Path, guest: &Path, is_dir: bool, attrs: u64, idmapped: Option<usize>) {
        if is_dir {
            self.dir(guest);
        } else {
            self.parents(guest);
            self.files.insert(guest.to_path_buf());
        }
        self.binds.push(Bind { source: cstr(source.as_os_str().as_bytes()), target: staged(guest), attrs, idmapped });
    }
}
