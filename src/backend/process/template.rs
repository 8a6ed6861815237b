//! The read-only template of a sandbox's root filesystem (when sandcell runs as root).
//!
//! Every run of a sandbox starts from the same skeleton: directories and mount-point files, the
//! synthetic `/etc/passwd` and `/etc/group`, symlinks, and the five device nodes. Building it
//! per run cost ≈ 0.13 ms (a tmpfs, two dozen files, five device bind mounts, and their teardown
//! at the end of the run). Instead, the sandbox builds it once, in a detached tmpfs made
//! read-only, and each run gets a copy of that mount (`open_tree(OPEN_TREE_CLONE)`, one mount)
//! onto which its system directories, `/proc`, `/tmp` and the policy's mounts are attached.
//!
//! The copies share the template's files, which nothing can change: the mount is read-only, its
//! files belong to the host's root (unmapped in the run's user namespace, so the run's root has
//! no rights over them), and the program cannot remount anything (no capabilities, seccomp).
//! Device nodes work there because the template was made by the host's root (a tmpfs mounted
//! inside a user namespace refuses device nodes); the rest of the sandbox stays `nodev`.
//!
//! Without root the parent cannot make device nodes; the jail then builds its root per run.

use std::ffi::CStr;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::FileTypeExt;

use super::sys;

/// What the template holds, as paths inside the sandbox (absolute).
pub(super) struct Skeleton<'a> {
    pub(super) dirs: Vec<&'a CStr>,
    pub(super) files: Vec<&'a CStr>,
    pub(super) contents: Vec<(&'a CStr, &'a [u8])>,
    pub(super) symlinks: Vec<(&'a CStr, &'a CStr)>,
    pub(super) devices: &'a [&'a str],
}

/// A path inside the sandbox, relative to the template's root.
fn rel(path: &CStr) -> &CStr {
    let bytes = path.to_bytes_with_nul();
    let skip = bytes.iter().take_while(|b| **b == b'/').count();
    CStr::from_bytes_with_nul(&bytes[skip..]).unwrap_or(c".")
}

fn check(rc: libc::c_int, what: &str) -> io::Result<()> {
    if rc < 0 {
        let e = io::Error::last_os_error();
        Err(io::Error::new(e.kind(), format!("{what}: {e}")))
    } else {
        Ok(())
    }
}

/// Builds the template: a detached, read-only tmpfs mount.
pub(super) fn build(s: &Skeleton) -> io::Result<OwnedFd> {
    let root = sys::new_fs(c"tmpfs", &[(c"mode", c"0755"), (c"size", c"1m")], sys::MOUNT_ATTR_NOSUID)
        .map_err(io::Error::from_raw_os_error)?
        .into_owned();
    let at = root.as_raw_fd();
    // The calls below take NUL-terminated relative paths under the template's root descriptor.
    for dir in &s.dirs {
        // SAFETY: see above.
        let rc = unsafe { libc::mkdirat(at, rel(dir).as_ptr(), 0o755) };
        if rc < 0 && io::Error::last_os_error().raw_os_error() != Some(libc::EEXIST) {
            check(rc, "mkdir in the root template")?;
        }
    }
    let write_file = |path: &CStr, content: &[u8]| -> io::Result<()> {
        // SAFETY: see above; the descriptor is closed below.
        let fd = unsafe {
            libc::openat(
                at,
                rel(path).as_ptr(),
                libc::O_WRONLY | libc::O_CREAT | libc::O_TRUNC | libc::O_CLOEXEC,
                0o644,
            )
        };
        check(fd, "create a file in the root template")?;
        let mut rest = content;
        let mut result = Ok(());
        while !rest.is_empty() {
            // SAFETY: `rest` is valid for reads of its length.
            let n = unsafe { libc::write(fd, rest.as_ptr().cast(), rest.len()) };
            if n < 0 {
                result = check(-1, "write a file in the root template");
                break;
            }
            rest = &rest[n as usize..];
        }
        // SAFETY: closes the descriptor opened above.
        unsafe { libc::close(fd) };
        result
    };
    for file in &s.files {
        write_file(file, b"")?;
    }
    for (path, content) in &s.contents {
        write_file(path, content)?;
    }
    for (target, link) in &s.symlinks {
        // SAFETY: see above.
        let rc = unsafe { libc::symlinkat(target.as_ptr(), at, rel(link).as_ptr()) };
        check(rc, "symlink in the root template")?;
    }
    for dev in s.devices {
        let meta = std::fs::metadata(dev)?;
        if !meta.file_type().is_char_device() {
            return Err(io::Error::other(format!("{dev} is not a character device on this host")));
        }
        let path = std::ffi::CString::new(dev.trim_start_matches('/')).map_err(io::Error::other)?;
        let rdev = std::os::unix::fs::MetadataExt::rdev(&meta);
        // SAFETY: see above.
        let rc = unsafe { libc::mknodat(at, path.as_ptr(), libc::S_IFCHR | 0o666, rdev) };
        check(rc, "make a device node")?;
        // mknod applies the umask; the nodes are for everyone in the sandbox.
        // SAFETY: see above.
        check(unsafe { libc::fchmodat(at, path.as_ptr(), 0o666, 0) }, "set a device node's mode")?;
    }
    sys::mount_setattr(at, sys::MOUNT_ATTR_RDONLY | sys::MOUNT_ATTR_NOSUID, None)
        .map_err(io::Error::from_raw_os_error)?;
    Ok(root)
}

/// A run's copy of the template (one detached mount, sharing the template's files).
pub(super) fn copy(template: &OwnedFd) -> io::Result<OwnedFd> {
    sys::open_tree_copy(template.as_raw_fd()).map(sys::Fd::into_owned).map_err(io::Error::from_raw_os_error)
}
