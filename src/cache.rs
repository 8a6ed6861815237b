//! The on-disk artifact cache: compiled code that sandcell will later load and run natively, so
//! it must come from this code and from nowhere else.
//!
//! A local user who controls a directory on the way to the cache could swap a component for a
//! symlink (or another directory) between a check of the path and a later use of it. So:
//!
//! - the directory is opened **once**, one component of its canonical path at a time with
//!   `O_NOFOLLOW` (a component swapped for a symlink after the path was resolved makes the open
//!   fail),
//!   and its owner and mode are checked **on the opened descriptor**: it must belong to the
//!   user sandcell runs as and be writable by nobody else;
//! - every file inside is reached relative to that descriptor, with `O_NOFOLLOW`, and its owner
//!   and mode are checked on the opened file before anything is read from it;
//! - every artifact is **authenticated**: an HMAC-SHA256 over its name and contents, keyed with
//!   32 random bytes kept in the directory's `key` file (mode 0600, created once). Without the
//!   key nobody can write an artifact sandcell accepts; a file that does not verify is treated
//!   as missing (the module is compiled again and the file replaced).

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::{Error, Result};

type HmacSha256 = Hmac<Sha256>;

/// The header of an artifact file: magic and format version, then the MAC.
const MAGIC: &[u8; 8] = b"SCART02\0";
const MAC_LEN: usize = 32;
const KEY_FILE: &str = "key";

/// An opened, checked cache directory.
#[derive(Debug)]
pub(crate) struct ArtifactCache {
    dir: PathBuf,
    fd: OwnedFd,
    key: [u8; 32],
}

fn cstring(bytes: &[u8]) -> io::Result<std::ffi::CString> {
    std::ffi::CString::new(bytes).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "a NUL byte in a path"))
}

/// `openat(dirfd, name, flags | O_NOFOLLOW | O_CLOEXEC, mode)` for one path component.
fn openat(dirfd: i32, name: &[u8], flags: i32, mode: u32) -> io::Result<OwnedFd> {
    if name.is_empty() || name.contains(&b'/') || name == b"." || name == b".." {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "not a single path component"));
    }
    let c = cstring(name)?;
    // SAFETY: `c` is NUL-terminated; the returned descriptor is checked and then owned.
    let fd = unsafe { libc::openat(dirfd, c.as_ptr(), flags | libc::O_NOFOLLOW | libc::O_CLOEXEC, mode) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a new descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Opens the directory at the absolute path `path` one component at a time, refusing a symlink
/// anywhere (each step is `O_NOFOLLOW` relative to the directory opened before it).
fn open_dir_no_symlinks(path: &Path) -> io::Result<OwnedFd> {
    let root = cstring(b"/")?;
    // SAFETY: a NUL-terminated path; the descriptor is checked and then owned.
    let fd = unsafe { libc::open(root.as_ptr(), libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a new descriptor that nothing else owns.
    let mut dir = unsafe { OwnedFd::from_raw_fd(fd) };
    for component in path.components() {
        match component {
            std::path::Component::RootDir => {}
            std::path::Component::Normal(name) => {
                dir = openat(dir.as_raw_fd(), name.as_bytes(), libc::O_PATH | libc::O_DIRECTORY, 0)?;
            }
            _ => return Err(io::Error::new(io::ErrorKind::InvalidInput, "not a canonical path")),
        }
    }
    // From the O_PATH descriptor to one that can be read.
    openat_self(&dir)
}

/// Reopens an `O_PATH` directory descriptor for reading, through `/proc/self/fd` (no path is
/// resolved again).
fn openat_self(dir: &OwnedFd) -> io::Result<OwnedFd> {
    let c = cstring(format!("/proc/self/fd/{}", dir.as_raw_fd()).as_bytes())?;
    // SAFETY: a NUL-terminated path; the descriptor is checked and then owned.
    let fd = unsafe { libc::open(c.as_ptr(), libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a new descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Opens `name` in the directory `dir` without following a symlink.
fn open_in(dir: &OwnedFd, name: &str, flags: i32, mode: u32) -> io::Result<OwnedFd> {
    openat(dir.as_raw_fd(), name.as_bytes(), flags, mode)
}

/// Checks an opened file or directory: owned by `uid`, writable by nobody else.
fn check_owner(file: &File, uid: u32, what: &str) -> std::result::Result<std::fs::Metadata, String> {
    let meta = file.metadata().map_err(|e| format!("cannot read {what}: {e}"))?;
    if meta.uid() != uid {
        return Err(format!(
            "{what} is owned by uid {} but sandcell runs as uid {uid}; compiled code is loaded from it, so it must be \
             owned by the current user",
            meta.uid()
        ));
    }
    if meta.permissions().mode() & 0o022 != 0 {
        return Err(format!("{what} is writable by group or others; run `chmod go-w` on it"));
    }
    Ok(meta)
}

impl ArtifactCache {
    /// Opens (creating it, mode 0700, if missing) and checks the cache directory, and reads or
    /// creates its key.
    pub(crate) fn open(dir: &Path) -> Result<Self> {
        let err = |reason: String| Error::Cache { dir: dir.to_owned(), reason };
        if !dir.exists() {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(|e| err(format!("cannot create it: {e}")))?;
        }
        let real = std::fs::canonicalize(dir).map_err(|e| err(format!("cannot resolve it: {e}")))?;
        let fd = open_dir_no_symlinks(&real)
            .map_err(|e| err(format!("cannot open {} (a component changed into a symlink?): {e}", real.display())))?;
        // SAFETY: geteuid has no preconditions.
        let uid = unsafe { libc::geteuid() };
        let dir_file = File::from(fd);
        let meta = check_owner(&dir_file, uid, "the directory").map_err(err)?;
        if !meta.is_dir() {
            return Err(err("is not a directory".into()));
        }
        let fd = OwnedFd::from(dir_file);
        let key = Self::key(&fd, uid).map_err(err)?;
        Ok(ArtifactCache { dir: real, fd, key })
    }

    /// Reads the directory's key, or creates it.
    fn key(dir: &OwnedFd, uid: u32) -> std::result::Result<[u8; 32], String> {
        for _ in 0..2 {
            match open_in(dir, KEY_FILE, libc::O_RDONLY, 0) {
                Ok(fd) => {
                    let mut file = File::from(fd);
                    let meta = check_owner(&file, uid, "its key file")?;
                    if !meta.is_file() || meta.permissions().mode() & 0o077 != 0 || meta.len() != 32 {
                        return Err("its key file must be a regular file of 32 bytes, mode 0600".into());
                    }
                    let mut key = [0u8; 32];
                    file.read_exact(&mut key).map_err(|e| format!("cannot read its key file: {e}"))?;
                    return Ok(key);
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    let mut key = [0u8; 32];
                    random(&mut key).map_err(|e| format!("cannot make a key: {e}"))?;
                    // O_EXCL: of two processes creating it at once, one wins and both use its key.
                    match open_in(dir, KEY_FILE, libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL, 0o600) {
                        Ok(fd) => {
                            let mut file = File::from(fd);
                            file.write_all(&key)
                                .and_then(|_| file.sync_all())
                                .map_err(|e| format!("cannot write its key: {e}"))?;
                            return Ok(key);
                        }
                        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                        Err(e) => return Err(format!("cannot create its key file: {e}")),
                    }
                }
                Err(e) => return Err(format!("cannot open its key file (is it a symlink?): {e}")),
            }
        }
        Err("its key file keeps changing".into())
    }

    fn mac(&self, name: &str, payload: &[u8]) -> HmacSha256 {
        let mut mac = HmacSha256::new_from_slice(&self.key).expect("HMAC takes any key length");
        mac.update(name.as_bytes());
        mac.update(&[0]);
        mac.update(payload);
        mac
    }

    /// The MAC of `payload` stored under `name` with this cache's key: what makes a file
    /// sandcell later trusts (an artifact, a snapshot) unforgeable without the key.
    pub(crate) fn seal(&self, name: &str, payload: &[u8]) -> [u8; MAC_LEN] {
        self.mac(name, payload).finalize().into_bytes().into()
    }

    /// Whether `mac` is [`ArtifactCache::seal`]'s for `name` and `payload` (in constant time).
    pub(crate) fn verify(&self, name: &str, payload: &[u8], mac: &[u8]) -> bool {
        self.mac(name, payload).verify_slice(mac).is_ok()
    }

    fn file_name(name: &str) -> String {
        format!("{name}.art")
    }

    /// The artifact stored under `name`, if there is one that this cache's key authenticates.
    /// Anything else (missing, not a regular file, someone else's, altered, truncated) is `None`.
    pub(crate) fn load(&self, name: &str) -> Option<Vec<u8>> {
        let fd = open_in(&self.fd, &Self::file_name(name), libc::O_RDONLY, 0).ok()?;
        let mut file = File::from(fd);
        // SAFETY: geteuid has no preconditions.
        let meta = check_owner(&file, unsafe { libc::geteuid() }, "the artifact").ok()?;
        if !meta.is_file() {
            return None;
        }
        let mut data = Vec::with_capacity(meta.len() as usize);
        file.read_to_end(&mut data).ok()?;
        let (header, payload) = data.split_at_checked(MAGIC.len() + MAC_LEN)?;
        if &header[..MAGIC.len()] != MAGIC {
            return None;
        }
        self.mac(name, payload).verify_slice(&header[MAGIC.len()..]).ok()?;
        Some(payload.to_vec())
    }

    /// Stores an artifact under `name` (written to a temporary file, then renamed into place).
    pub(crate) fn store(&self, name: &str, payload: &[u8]) -> Result<()> {
        let err = |reason: String| Error::Cache { dir: self.dir.clone(), reason };
        let mut nonce = [0u8; 8];
        random(&mut nonce).map_err(|e| err(format!("cannot name a temporary file: {e}")))?;
        let tmp = format!(".{name}.{}.tmp", hex(&nonce));
        let write = || -> io::Result<()> {
            let fd = open_in(&self.fd, &tmp, libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL, 0o600)?;
            let mut f = File::from(fd);
            f.write_all(MAGIC)?;
            f.write_all(&self.mac(name, payload).finalize().into_bytes())?;
            f.write_all(payload)?;
            f.sync_data()?;
            let (from, to) = (cstring(tmp.as_bytes())?, cstring(Self::file_name(name).as_bytes())?);
            // SAFETY: both names are NUL-terminated and relative to the cache's descriptor.
            let rc = unsafe { libc::renameat(self.fd.as_raw_fd(), from.as_ptr(), self.fd.as_raw_fd(), to.as_ptr()) };
            if rc != 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        };
        write().map_err(|e| {
            if let Ok(c) = cstring(tmp.as_bytes()) {
                // SAFETY: a NUL-terminated name relative to the cache's descriptor.
                unsafe { libc::unlinkat(self.fd.as_raw_fd(), c.as_ptr(), 0) };
            }
            err(format!("cannot write a compiled artifact: {e}"))
        })
    }
}

/// Fills `buf` from the kernel's random source.
pub(crate) fn random(buf: &mut [u8]) -> io::Result<()> {
    let mut filled = 0;
    while filled < buf.len() {
        // SAFETY: the pointer and length describe the unfilled part of `buf`.
        let n = unsafe { libc::getrandom(buf[filled..].as_mut_ptr().cast(), buf.len() - filled, 0) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        filled += n as usize;
    }
    Ok(())
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The body of the artifact-loader fuzz target (see [`crate::fuzz::artifact_cache`]).
pub(crate) fn fuzz(data: &[u8]) {
    static CACHE: std::sync::OnceLock<ArtifactCache> = std::sync::OnceLock::new();
    let cache = CACHE.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("sandcell-fuzz-cache-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        ArtifactCache::open(&dir).expect("the fuzzing cache opens")
    });
    let path = |name: &str| cache.dir.join(ArtifactCache::file_name(name));
    // Any bytes under an artifact's name.
    std::fs::write(path("raw"), data).expect("write the fuzzing artifact");
    assert_eq!(cache.load("raw"), None, "a file the cache did not write was loaded");
    // A stored artifact altered at one byte.
    let Some((head, payload)) = data.split_first_chunk::<8>() else { return };
    cache.store("altered", payload).expect("store the fuzzing artifact");
    assert_eq!(cache.load("altered").as_deref(), Some(payload), "a stored artifact did not load");
    let mut file = std::fs::read(path("altered")).expect("read the stored artifact");
    let at = u32::from_le_bytes([head[0], head[1], head[2], head[3]]) as usize % file.len();
    file[at] ^= head[4].max(1);
    if head[5] & 1 == 1 {
        // ... or cut short there.
        file.truncate(at);
    }
    std::fs::write(path("altered"), &file).expect("write the altered artifact");
    assert_eq!(cache.load("altered"), None, "an altered artifact was loaded");
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    fn tempdir(tag: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("sandcell-cache-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).unwrap();
        dir
    }

    #[test]
    fn artifacts_round_trip_and_anything_altered_is_not_loaded() {
        let dir = tempdir("round");
        let cache = ArtifactCache::open(&dir.join("c")).unwrap();
        cache.store("abc", b"native code").unwrap();
        assert_eq!(cache.load("abc").as_deref(), Some(&b"native code"[..]));
        // Another process opening the same directory uses the same key.
        let again = ArtifactCache::open(&dir.join("c")).unwrap();
        assert_eq!(again.load("abc").as_deref(), Some(&b"native code"[..]));
        // A flipped byte, a truncation, the right bytes under another name: none verify.
        let path = dir.join("c/abc.art");
        let mut data = std::fs::read(&path).unwrap();
        let last = data.len() - 1;
        data[last] ^= 1;
        std::fs::write(&path, &data).unwrap();
        assert_eq!(cache.load("abc"), None);
        std::fs::write(&path, &data[..20]).unwrap();
        assert_eq!(cache.load("abc"), None);
        cache.store("abc", b"native code").unwrap();
        std::fs::copy(&path, dir.join("c/other.art")).unwrap();
        assert_eq!(cache.load("other"), None);
        // An artifact file that is a symlink to a good one is not followed.
        std::fs::remove_file(&path).unwrap();
        symlink(dir.join("c/other.art"), &path).unwrap();
        assert_eq!(cache.load("abc"), None);
        // A different directory (another key) does not accept this one's artifacts.
        let other = ArtifactCache::open(&dir.join("d")).unwrap();
        std::fs::copy(dir.join("c/other.art"), dir.join("d/other.art")).unwrap();
        assert_eq!(other.load("other"), None);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn unsafe_directories_and_keys_are_refused() {
        let dir = tempdir("unsafe");
        let open = dir.join("open");
        std::fs::create_dir(&open).unwrap();
        std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o777)).unwrap();
        assert!(ArtifactCache::open(&open).unwrap_err().to_string().contains("writable by group or others"));
        // A key file others can read is refused (an artifact's MAC is only as secret as it).
        let c = dir.join("c");
        ArtifactCache::open(&c).unwrap();
        std::fs::set_permissions(c.join("key"), std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(ArtifactCache::open(&c).unwrap_err().to_string().contains("key file"));
        // A key file that is a symlink (to a key someone else knows) is refused.
        std::fs::remove_file(c.join("key")).unwrap();
        std::fs::write(dir.join("known"), [7u8; 32]).unwrap();
        std::fs::set_permissions(dir.join("known"), std::fs::Permissions::from_mode(0o600)).unwrap();
        symlink(dir.join("known"), c.join("key")).unwrap();
        assert!(ArtifactCache::open(&c).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
