//! A run's stdin streamed from a host reader ([`RunOptions::stdin_reader`]) instead of given
//! as bytes up front.
//!
//! Every backend receives a stream the same way: a thread of its own (`sandcell-stdin`) copies
//! the reader into a pipe, and the backend reads the pipe's other end. The host holds at most the
//! pipe's buffer (64 KiB on Linux), the thread's 64 KiB chunk and whatever the reader buffers
//! itself, so a guest that reads slowly, or never, cannot make the host buffer the input; the
//! copying runs that far ahead of the guest. How each backend reads the pipe:
//! - process: the pipe *is* the guest's stdin (fd 0);
//! - wasm and micro-VM WASI guests: the WASI stdin file polls it ([`crate::wasi`]);
//! - micro-VM native guests: the read hypercall polls it.
//!
//! The waits of the last two happen on the thread serving the guest and check the run's stop
//! every [`STOP_CHECK`], so a guest blocked reading stdin still ends at its timeout or interrupt.
//!
//! The copying starts just before the guest does ([`StdinSource::open`]). The thread ends when
//! the source reports end-of-file or an error (the guest then reads end-of-file; the error is
//! logged) or when the guest's end of the pipe is gone (the run ended). A descriptor
//! ([`crate::RunOptions::stdin_fd`]) is polled together with the pipe, so its thread ends with the
//! run even while the source is idle. A generic reader that blocks after the run ended (an idle
//! socket, a terminal nobody types into) keeps its thread until its `read` returns; the chunk it
//! then returns is dropped. Either way the copying reads ahead of the guest: up to a pipe's buffer
//! and a chunk (≈ 128 KiB) that the guest never read are consumed from the source.

use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;

/// How often a host thread waiting for streamed stdin checks whether the run was stopped.
pub(crate) const STOP_CHECK: Duration = Duration::from_millis(10);

/// The source a run's stdin comes from; it feeds one run (the first that opens it).
pub(crate) struct StdinStream(Mutex<Option<Origin>>);

/// What a stream reads.
enum Origin {
    /// Any reader: read in blocking calls (a reader that says it would block is tried again).
    Reader(Box<dyn Read + Send>),
    /// A descriptor: polled together with the guest's end of the pipe, so the copying ends as
    /// soon as the run does, even while the source is idle.
    Fd(OwnedFd),
}

impl std::fmt::Debug for StdinStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.lock().is_some() { "StdinStream(unread)" } else { "StdinStream(taken)" })
    }
}

/// Where a run's stdin comes from. Nothing is read from a stream until [`StdinSource::open`],
/// which a backend calls just before its guest starts: a run refused or stopped before that
/// leaves the reader untouched (unread, for no one: it belongs to that run's options).
pub(crate) enum StdinSource {
    /// Fixed bytes, then end-of-file.
    Bytes(Arc<[u8]>),
    /// A streamed stdin, not started yet.
    Stream(Arc<StdinStream>),
}

/// A run's stdin once the guest is about to start.
pub(crate) enum Stdin {
    /// Fixed bytes, then end-of-file.
    Bytes(Arc<[u8]>),
    /// The read end of the pipe a stream is copied into (blocking mode, close-on-exec).
    Pipe(OwnedFd),
}

impl StdinSource {
    /// Starts the stream's copying (a stream a run already took reads as empty).
    pub(crate) fn open(self) -> crate::Result<Stdin> {
        match self {
            StdinSource::Bytes(bytes) => Ok(Stdin::Bytes(bytes)),
            StdinSource::Stream(stream) => match stream.open() {
                Ok(Some(pipe)) => Ok(Stdin::Pipe(pipe)),
                Ok(None) => Ok(Stdin::Bytes(Arc::from(&[][..]))),
                Err(e) => Err(crate::Error::setup("start copying the streamed stdin", e)),
            },
        }
    }
}

impl StdinStream {
    pub(crate) fn new(reader: Box<dyn Read + Send>) -> Arc<Self> {
        Arc::new(StdinStream(Mutex::new(Some(Origin::Reader(reader)))))
    }

    pub(crate) fn from_fd(fd: OwnedFd) -> Arc<Self> {
        Arc::new(StdinStream(Mutex::new(Some(Origin::Fd(fd)))))
    }

    /// Starts copying the reader into a new pipe and returns the pipe's read end; `None` if a
    /// run already took the reader.
    pub(crate) fn open(&self) -> io::Result<Option<OwnedFd>> {
        let Some(origin) = self.0.lock().take() else { return Ok(None) };
        let mut fds = [-1; 2];
        // SAFETY: `fds` has room for the two descriptors pipe2 returns.
        if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: pipe2 succeeded: both descriptors are new and ours.
        let (read, write) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        let write = std::fs::File::from(write);
        std::thread::Builder::new().name("sandcell-stdin".into()).spawn(move || {
            block_sigpipe();
            match origin {
                Origin::Reader(reader) => copy(reader, write),
                Origin::Fd(fd) => copy_fd(&fd, write),
            }
        })?;
        Ok(Some(read))
    }
}

/// A write to a pipe whose reader is gone raises SIGPIPE, which kills a host that does not
/// ignore it (C programs); blocked in the copying thread, it leaves `write` to fail with EPIPE. A
/// SIGPIPE left pending on the thread is discarded when the thread ends.
fn block_sigpipe() {
    // SAFETY: a signal set built by sigemptyset/sigaddset; changes only this thread's mask.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGPIPE);
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
    }
}

/// Whether the guest's end of the pipe is gone (the run ended): the write end then polls as
/// an error.
fn run_ended(pipe: &std::fs::File) -> bool {
    let mut pfd = libc::pollfd { fd: pipe.as_raw_fd(), events: 0, revents: 0 };
    // SAFETY: one valid pollfd; a zero timeout never blocks.
    unsafe { libc::poll(&mut pfd, 1, 0) > 0 && pfd.revents & (libc::POLLERR | libc::POLLHUP) != 0 }
}

/// The copying thread's body for a descriptor: waits for input and for the run's end at once.
fn copy_fd(fd: &OwnedFd, mut pipe: std::fs::File) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let mut fds = [
            libc::pollfd { fd: fd.as_raw_fd(), events: libc::POLLIN, revents: 0 },
            libc::pollfd { fd: pipe.as_raw_fd(), events: 0, revents: 0 },
        ];
        // SAFETY: two valid pollfds.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), 2, -1) };
        if n < 0 {
            if io::Error::last_os_error().kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return;
        }
        if fds[1].revents & (libc::POLLERR | libc::POLLHUP) != 0 {
            return; // the run ended
        }
        if fds[0].revents == 0 {
            continue;
        }
        let n = match read_some(fd, &mut buf) {
            Ok(0) => return,
            Ok(n) => n,
            // A non-blocking source polled readable but had nothing after all: wait again.
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) => {
                tracing::warn!("the run's stdin descriptor failed ({e}); the guest reads end-of-file");
                return;
            }
        };
        if pipe.write_all(&buf[..n]).is_err() {
            return; // the run ended
        }
    }
}

/// The copying thread's body for any reader.
fn copy(mut reader: Box<dyn Read + Send>, mut pipe: std::fs::File) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match reader.read(&mut buf) {
            Ok(0) => return,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            // A non-blocking reader with nothing yet: not the end of the input.
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                if run_ended(&pipe) {
                    return;
                }
                std::thread::sleep(STOP_CHECK);
                continue;
            }
            Err(e) => {
                tracing::warn!("the run's stdin reader failed ({e}); the guest reads end-of-file");
                return;
            }
        };
        if pipe.write_all(&buf[..n]).is_err() {
            return; // the run ended
        }
    }
}

/// What waiting for streamed stdin ended with.
pub(crate) enum Ready {
    /// Bytes (or end-of-file) can be read without blocking.
    Readable,
    /// The run was stopped.
    Stopped,
}

/// Waits until `fd` is readable or `stopped()` says the run ended, checking every
/// [`STOP_CHECK`].
pub(crate) fn wait_readable(fd: &OwnedFd, stopped: impl Fn() -> bool) -> Ready {
    let fd = fd.as_raw_fd();
    loop {
        if stopped() {
            return Ready::Stopped;
        }
        let mut pfd = libc::pollfd { fd, events: libc::POLLIN, revents: 0 };
        // SAFETY: one valid pollfd.
        let n = unsafe { libc::poll(&mut pfd, 1, STOP_CHECK.as_millis() as libc::c_int) };
        if n > 0 {
            // POLLIN, POLLHUP (end-of-file) or POLLERR: a read answers at once.
            return Ready::Readable;
        }
        if n < 0 && io::Error::last_os_error().kind() != io::ErrorKind::Interrupted {
            return Ready::Readable; // let the read report the error
        }
    }
}

/// Whether a read of `fd` would answer at once (bytes, end-of-file or an error).
pub(crate) fn readable_now(fd: &OwnedFd) -> bool {
    let mut pfd = libc::pollfd { fd: fd.as_raw_fd(), events: libc::POLLIN, revents: 0 };
    // SAFETY: one valid pollfd; a zero timeout never blocks.
    unsafe { libc::poll(&mut pfd, 1, 0) != 0 }
}

/// Reads what is available from a readable `fd` (0 = end-of-file).
pub(crate) fn read_some(fd: &OwnedFd, buf: &mut [u8]) -> io::Result<usize> {
    loop {
        // SAFETY: `buf` is valid for `buf.len()` bytes.
        let n = unsafe { libc::read(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
        if n >= 0 {
            return Ok(n as usize);
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}
