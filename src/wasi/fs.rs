//! The guest's view of host directories: a policy mount becomes a [`MountDir`].
//!
//! wasmer-wasix already confines paths (it resolves `..` and symlinks itself, inside the guest's
//! namespace), and sandcell adds its own layer under it, so that a mount holds even if that
//! resolution had a gap:
//!
//! - every path is re-checked by the kernel with `openat2(RESOLVE_BENEATH)` against the mount's
//!   root before wasmer's host filesystem touches it: a symlink that leads out is refused;
//! - a read-only mount refuses every mutation at this layer (create, write, truncate, rename,
//!   remove, set times, unlink), whatever rights the guest's descriptors carry; WASI preopen
//!   rights alone are not a boundary (an `O_CREAT` open still creates files);
//! - writes go straight to the host directory (no in-memory overlay, which would let a guest
//!   grow host memory without bound);
//! - the number of open files and the size of written files are capped per run.

use std::future::Future;
use std::io;
use std::os::fd::OwnedFd;
use std::path::{Component, Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncSeek, AsyncWrite, ReadBuf};
use wasmer_wasix::virtual_fs::{
    self, host_fs, FileOpener, FileSystem, FsError, Metadata, OpenOptions, OpenOptionsConfig, ReadDir, VirtualFile,
};

use crate::sys::{self, Beneath};

type FsResult<T> = Result<T, FsError>;

/// A policy mount, prepared once per sandbox.
#[derive(Debug)]
pub(crate) struct MountRoot {
    inner: host_fs::FileSystem,
    root_fd: OwnedFd,
    writable: bool,
}

impl MountRoot {
    pub(crate) fn new(host: &Path, writable: bool, handle: tokio::runtime::Handle) -> io::Result<Self> {
        let root_fd = sys::open_dir_path(host)?;
        let inner = host_fs::FileSystem::new(handle, host)
            .map_err(|e| io::Error::other(format!("cannot use it as a filesystem root: {e}")))?;
        Ok(MountRoot { inner, root_fd, writable })
    }
}

/// Per-run limits shared by all of a run's mounts.
#[derive(Debug)]
pub(crate) struct FsLimits {
    open_files: AtomicU64,
    max_open_files: u64,
    max_file_size: u64,
}

impl FsLimits {
    pub(crate) fn new(max_open_files: Option<u64>, max_file_size: Option<u64>) -> Arc<Self> {
        Arc::new(FsLimits {
            open_files: AtomicU64::new(0),
            max_open_files: max_open_files.unwrap_or(u64::MAX),
            max_file_size: max_file_size.unwrap_or(u64::MAX),
        })
    }
}

/// A mount as one run sees it.
#[derive(Debug)]
pub(crate) struct MountDir {
    root: Arc<MountRoot>,
    limits: Arc<FsLimits>,
}

impl MountDir {
    pub(crate) fn new(root: Arc<MountRoot>, limits: Arc<FsLimits>) -> Self {
        MountDir { root, limits }
    }

    /// Refuses paths that resolve outside the mount. `follow_last`: whether the operation
    /// follows a symlink in the last component.
    fn check(&self, path: &Path, follow_last: bool) -> FsResult<()> {
        let rel = lexical_relative(path)?;
        match sys::resolve_beneath(&self.root.root_fd, &rel, follow_last) {
            Ok(Beneath::Inside) => Ok(()),
            Ok(Beneath::Escapes) => Err(FsError::PermissionDenied),
            Err(_) => Err(FsError::IOError),
        }
    }

    fn check_writable(&self) -> FsResult<()> {
        if self.root.writable {
            Ok(())
        } else {
            Err(FsError::PermissionDenied)
        }
    }
}

/// The path relative to the mount root, with `.` and `..` resolved lexically (as wasmer's host
/// filesystem does); `..` above the root stays at the root.
fn lexical_relative(path: &Path) -> FsResult<PathBuf> {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::RootDir | Component::CurDir => {}
            Component::ParentDir => {
                out.pop();
            }
            Component::Normal(p) => out.push(p),
            Component::Prefix(_) => return Err(FsError::InvalidInput),
        }
    }
    Ok(out)
}

impl FileSystem for MountDir {
    fn readlink(&self, path: &Path) -> FsResult<PathBuf> {
        self.check(path, false)?;
        self.root.inner.readlink(path)
    }

    fn read_dir(&self, path: &Path) -> FsResult<ReadDir> {
        self.check(path, true)?;
        self.root.inner.read_dir(path)
    }

    fn create_dir(&self, path: &Path) -> FsResult<()> {
        self.check_writable()?;
        self.check(path, false)?;
        self.root.inner.create_dir(path)
    }

    fn create_symlink(&self, source: &Path, target: &Path) -> FsResult<()> {
        self.check_writable()?;
        self.check(target, false)?;
        self.root.inner.create_symlink(source, target)
    }

    fn hard_link(&self, source: &Path, target: &Path) -> FsResult<()> {
        self.check_writable()?;
        self.check(source, false)?;
        self.check(target, false)?;
        self.root.inner.hard_link(source, target)
    }

    fn remove_dir(&self, path: &Path) -> FsResult<()> {
        self.check_writable()?;
        self.check(path, false)?;
        self.root.inner.remove_dir(path)
    }

    fn rename<'a>(&'a self, from: &'a Path, to: &'a Path) -> Pin<Box<dyn Future<Output = FsResult<()>> + Send + 'a>> {
        Box::pin(async move {
            self.check_writable()?;
            self.check(from, false)?;
            self.check(to, false)?;
            self.root.inner.rename(from, to).await
        })
    }

    fn metadata(&self, path: &Path) -> FsResult<Metadata> {
        self.check(path, true)?;
        self.root.inner.metadata(path)
    }

    fn symlink_metadata(&self, path: &Path) -> FsResult<Metadata> {
        self.check(path, false)?;
        self.root.inner.symlink_metadata(path)
    }

    fn remove_file(&self, path: &Path) -> FsResult<()> {
        self.check_writable()?;
        self.check(path, false)?;
        self.root.inner.remove_file(path)
    }

    fn new_open_options(&self) -> OpenOptions<'_> {
        OpenOptions::new(self)
    }
}

impl FileOpener for MountDir {
    fn open(&self, path: &Path, conf: &OpenOptionsConfig) -> FsResult<Box<dyn VirtualFile + Send + Sync + 'static>> {
        if conf.would_mutate() {
            self.check_writable()?;
        }
        self.check(path, true)?;
        let limits = self.limits.clone();
        let open = limits.open_files.fetch_add(1, Ordering::SeqCst);
        if open >= limits.max_open_files {
            limits.open_files.fetch_sub(1, Ordering::SeqCst);
            return Err(FsError::StorageFull);
        }
        // Appending is a property of the WASI descriptor, which wasix implements itself (it seeks
        // to the end before each write, and `fd_fdstat_set_flags` can turn it off): a host file
        // opened to append would keep appending after the guest turned that off.
        let conf = OpenOptionsConfig { append: false, ..conf.clone() };
        let opened = self.root.inner.new_open_options().options(conf).open(path);
        match opened {
            Ok(inner) => Ok(Box::new(GuardedFile { inner, writable: self.root.writable, pos: 0, limits })),
            Err(e) => {
                limits.open_files.fetch_sub(1, Ordering::SeqCst);
                Err(e)
            }
        }
    }
}

/// A host file opened through a mount: refuses mutation on read-only mounts, caps file size,
/// and gives its open-file slot back when closed.
#[derive(Debug)]
struct GuardedFile {
    inner: Box<dyn VirtualFile + Send + Sync + 'static>,
    writable: bool,
    /// Position after the last completed seek or write, for the file-size cap.
    pos: u64,
    limits: Arc<FsLimits>,
}

impl Drop for GuardedFile {
    fn drop(&mut self) {
        self.limits.open_files.fetch_sub(1, Ordering::SeqCst);
    }
}

fn read_only() -> io::Error {
    io::Error::new(io::ErrorKind::ReadOnlyFilesystem, "read-only mount")
}

impl AsyncRead for GuardedFile {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = r {
            self.pos += (buf.filled().len() - before) as u64;
        }
        r
    }
}

impl AsyncWrite for GuardedFile {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        if !self.writable {
            return Poll::Ready(Err(read_only()));
        }
        let start = self.pos;
        let room = self.limits.max_file_size.saturating_sub(start);
        if room == 0 && !buf.is_empty() {
            return Poll::Ready(Err(io::Error::new(io::ErrorKind::FileTooLarge, "file size limit")));
        }
        let n = buf.len().min(usize::try_from(room).unwrap_or(usize::MAX));
        let r = Pin::new(&mut self.inner).poll_write(cx, &buf[..n]);
        if let Poll::Ready(Ok(written)) = r {
            self.pos = start + written as u64;
        }
        r
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

impl AsyncSeek for GuardedFile {
    fn start_seek(mut self: Pin<&mut Self>, position: io::SeekFrom) -> io::Result<()> {
        Pin::new(&mut self.inner).start_seek(position)
    }
    fn poll_complete(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<u64>> {
        let r = Pin::new(&mut self.inner).poll_complete(cx);
        if let Poll::Ready(Ok(p)) = r {
            self.pos = p;
        }
        r
    }
}

impl VirtualFile for GuardedFile {
    fn last_accessed(&self) -> u64 {
        self.inner.last_accessed()
    }
    fn last_modified(&self) -> u64 {
        self.inner.last_modified()
    }
    fn created_time(&self) -> u64 {
        self.inner.created_time()
    }
    fn set_times(&mut self, atime: Option<u64>, mtime: Option<u64>) -> FsResult<()> {
        if !self.writable {
            return Err(FsError::PermissionDenied);
        }
        self.inner.set_times(atime, mtime)
    }
    fn size(&self) -> u64 {
        self.inner.size()
    }
    fn set_len(&mut self, new_size: u64) -> FsResult<()> {
        if !self.writable {
            return Err(FsError::PermissionDenied);
        }
        if new_size > self.limits.max_file_size {
            return Err(FsError::StorageFull);
        }
        self.inner.set_len(new_size)
    }
    fn unlink(&mut self) -> FsResult<()> {
        if !self.writable {
            return Err(FsError::PermissionDenied);
        }
        self.inner.unlink()
    }
    fn is_open(&self) -> bool {
        self.inner.is_open()
    }
    fn poll_read_ready(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        Pin::new(&mut *self.inner).poll_read_ready(cx)
    }
    fn poll_write_ready(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        Pin::new(&mut *self.inner).poll_write_ready(cx)
    }
}

/// The guest's whole filesystem: the policy's mounts and nothing else. Directories above a mount
/// point exist (empty, read-only); no in-memory root is writable.
pub(crate) fn build_root(
    mounts: &[(PathBuf, bool, Arc<MountRoot>)],
    limits: &Arc<FsLimits>,
) -> FsResult<virtual_fs::MountFileSystem> {
    let root = virtual_fs::MountFileSystem::new();
    for (guest, _, mount) in mounts {
        root.mount(guest, Arc::new(MountDir::new(mount.clone(), limits.clone())))?;
    }
    root.mount(Path::new(RUN_DIR), Arc::new(RunDir))?;
    Ok(root)
}

/// `/run/sandcell`: sandcell's own directory in every WASI guest's file system. It holds one
/// file, `ready`, which a guest writes (and closes) to say its start-up is done (a micro-VM
/// preparing the program until ready snapshots it there; anywhere else the write does nothing).
/// Writes to `ready` are discarded; nothing can be created, removed or renamed here, so a guest
/// cannot grow host memory through it.
#[derive(Debug, Default)]
pub(crate) struct RunDir;

/// The guest path of [`RunDir`], and its one file's name.
pub(crate) const RUN_DIR: &str = "/run/sandcell";
pub(crate) const READY_FILE: &str = "ready";

impl RunDir {
    /// `Some(true)` for the directory itself, `Some(false)` for `ready`, `None` otherwise.
    fn entry(path: &Path) -> Option<bool> {
        let mut names = path.components().filter(|c| !matches!(c, Component::RootDir | Component::CurDir));
        match (names.next(), names.next()) {
            (None, _) => Some(true),
            (Some(Component::Normal(n)), None) if n == READY_FILE => Some(false),
            _ => None,
        }
    }

    fn meta(dir: bool) -> Metadata {
        Metadata {
            ft: if dir { virtual_fs::FileType::new_dir() } else { virtual_fs::FileType::new_file() },
            accessed: 0,
            created: 0,
            modified: 0,
            len: 0,
        }
    }
}

impl FileSystem for RunDir {
    fn readlink(&self, _: &Path) -> FsResult<PathBuf> {
        Err(FsError::InvalidInput)
    }

    fn read_dir(&self, path: &Path) -> FsResult<ReadDir> {
        match Self::entry(path) {
            Some(true) => Ok(ReadDir::new(vec![virtual_fs::DirEntry {
                path: Path::new("/").join(READY_FILE),
                metadata: Ok(Self::meta(false)),
            }])),
            Some(false) => Err(FsError::BaseNotDirectory),
            None => Err(FsError::EntryNotFound),
        }
    }

    fn create_dir(&self, _: &Path) -> FsResult<()> {
        Err(FsError::PermissionDenied)
    }

    // Links are refused here, not `Unsupported` (the trait's default): for `Unsupported`, wasix
    // keeps a symlink or hard link in its own memory instead, which a guest could repeat
    // without bound.
    fn create_symlink(&self, _: &Path, _: &Path) -> FsResult<()> {
        Err(FsError::PermissionDenied)
    }

    fn hard_link(&self, _: &Path, _: &Path) -> FsResult<()> {
        Err(FsError::PermissionDenied)
    }

    fn remove_dir(&self, _: &Path) -> FsResult<()> {
        Err(FsError::PermissionDenied)
    }

    fn rename<'a>(&'a self, _: &'a Path, _: &'a Path) -> Pin<Box<dyn Future<Output = FsResult<()>> + Send + 'a>> {
        Box::pin(async { Err(FsError::PermissionDenied) })
    }

    fn metadata(&self, path: &Path) -> FsResult<Metadata> {
        Self::entry(path).map(Self::meta).ok_or(FsError::EntryNotFound)
    }

    fn symlink_metadata(&self, path: &Path) -> FsResult<Metadata> {
        self.metadata(path)
    }

    fn remove_file(&self, _: &Path) -> FsResult<()> {
        Err(FsError::PermissionDenied)
    }

    fn new_open_options(&self) -> OpenOptions<'_> {
        OpenOptions::new(self)
    }
}

impl FileOpener for RunDir {
    fn open(&self, path: &Path, conf: &OpenOptionsConfig) -> FsResult<Box<dyn VirtualFile + Send + Sync + 'static>> {
        match Self::entry(path) {
            Some(false) => Ok(Box::new(virtual_fs::NullFile::default())),
            Some(true) => Err(FsError::NotAFile),
            None if conf.create || conf.create_new => Err(FsError::PermissionDenied),
            None => Err(FsError::EntryNotFound),
        }
    }
}
