//! The guest's stdin (a fixed buffer then end-of-file, or a stream) and stdout/stderr (capped capture).
//!
//! wasmer-wasix would give the guest the *host's* stdio if none were set; sandcell always sets
//! all three.

use std::io;
use std::os::fd::OwnedFd;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use parking_lot::Mutex;
use tokio::io::{AsyncRead, AsyncSeek, AsyncWrite, ReadBuf};
use wasmer_wasix::virtual_fs::{FsError, VirtualFile};

use crate::control::{Capture, RunControl, StopReason};
use crate::input::{self, Stdin, StdinSource};
use crate::Stream;

/// Stdin: the program's bytes then EOF (a guest reading it never blocks), or a streamed stdin's
/// pipe (see [`crate::input`]), started at the guest's first read or poll of stdin.
pub(crate) struct StdinFile {
    source: Source,
}

enum Source {
    Bytes {
        data: Arc<[u8]>,
        pos: usize,
    },
    /// wasmer-wasix serves `fd_read` by blocking the guest's own thread on the read's future
    /// with no race against the run's stop (its `__asyncify_light`), so the read waits here,
    /// on that thread, in slices that check the stop ([`input::wait_readable`]).
    Stream {
        /// The stream until its copying is started.
        unopened: Option<StdinSource>,
        pipe: Option<OwnedFd>,
        control: Arc<RunControl>,
        /// The WASI call ([`super::call_serial`]) in which the last bytes were read: a read
        /// into the call's next buffer then returns short instead of waiting, as `readv` does.
        read_in_call: u64,
        /// The waker of a guest polling stdin, and whether a timer to wake it is pending.
        waker: Arc<Mutex<Option<std::task::Waker>>>,
        timer: Arc<AtomicBool>,
    },
}

impl std::fmt::Debug for StdinFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.source {
            Source::Bytes { data, pos } => write!(f, "StdinFile(bytes {pos}/{})", data.len()),
            Source::Stream { pipe, .. } => write!(f, "StdinFile(stream, started: {})", pipe.is_some()),
        }
    }
}

impl StdinFile {
    pub(crate) fn new(source: StdinSource, control: Arc<RunControl>) -> Self {
        let source = match source {
            StdinSource::Bytes(data) => Source::Bytes { data, pos: 0 },
            stream => Source::Stream {
                unopened: Some(stream),
                pipe: None,
                control,
                read_in_call: 0,
                waker: Arc::default(),
                timer: Arc::default(),
            },
        };
        StdinFile { source }
    }

    fn buffered(&self) -> usize {
        match &self.source {
            Source::Bytes { data, pos } => data.len() - pos,
            Source::Stream { .. } => 0,
        }
    }

    /// Starts a stream's copying, at the guest's first use of stdin.
    fn start(&mut self) -> io::Result<()> {
        if let Source::Stream { unopened, pipe, .. } = &mut self.source {
            if let Some(stream) = unopened.take() {
                match stream.open().map_err(|e| io::Error::other(e.to_string()))? {
                    Stdin::Pipe(fd) => *pipe = Some(fd),
                    // Taken by another run already: nothing to read.
                    Stdin::Bytes(data) => self.source = Source::Bytes { data, pos: 0 },
                }
            }
        }
        Ok(())
    }
}

impl AsyncRead for StdinFile {
    fn poll_read(mut self: Pin<&mut Self>, _: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        self.start()?;
        match &mut self.source {
            Source::Bytes { data, pos } => {
                let rest = &data[*pos..];
                let n = rest.len().min(buf.remaining());
                buf.put_slice(&rest[..n]);
                *pos += n;
                Poll::Ready(Ok(()))
            }
            Source::Stream { pipe: Some(fd), control, read_in_call, .. } => {
                if buf.remaining() == 0 {
                    return Poll::Ready(Ok(()));
                }
                let call = super::call_serial();
                if !input::readable_now(fd) {
                    if call != 0 && *read_in_call == call {
                        return Poll::Ready(Ok(())); // this call has bytes already: a short read
                    }
                    if let input::Ready::Stopped = input::wait_readable(fd, || control.reason().is_some()) {
                        return Poll::Ready(Err(io::Error::new(io::ErrorKind::Interrupted, "the run was stopped")));
                    }
                }
                let n = input::read_some(fd, buf.initialize_unfilled())?;
                buf.advance(n);
                if n > 0 {
                    *read_in_call = call;
                }
                Poll::Ready(Ok(()))
            }
            Source::Stream { pipe: None, .. } => Poll::Ready(Ok(())),
        }
    }
}

impl AsyncWrite for StdinFile {
    fn poll_write(self: Pin<&mut Self>, _: &mut Context<'_>, _: &[u8]) -> Poll<io::Result<usize>> {
        Poll::Ready(Err(io::Error::new(io::ErrorKind::PermissionDenied, "stdin is read-only")))
    }
    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

impl AsyncSeek for StdinFile {
    fn start_seek(self: Pin<&mut Self>, _: io::SeekFrom) -> io::Result<()> {
        Err(io::Error::new(io::ErrorKind::Unsupported, "stdin is not seekable"))
    }
    fn poll_complete(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<u64>> {
        Poll::Ready(Ok(0))
    }
}

impl VirtualFile for StdinFile {
    fn last_accessed(&self) -> u64 {
        0
    }
    fn last_modified(&self) -> u64 {
        0
    }
    fn created_time(&self) -> u64 {
        0
    }
    fn size(&self) -> u64 {
        self.buffered() as u64
    }
    fn set_len(&mut self, _: u64) -> Result<(), FsError> {
        Err(FsError::PermissionDenied)
    }
    fn unlink(&mut self) -> Result<(), FsError> {
        Ok(())
    }
    fn poll_read_ready(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        self.start()?;
        match &self.source {
            Source::Bytes { .. } => Poll::Ready(Ok(self.buffered())),
            Source::Stream { pipe: None, .. } => Poll::Ready(Ok(0)),
            Source::Stream { pipe: Some(fd), control, waker, timer, .. } => {
                if input::readable_now(fd) || control.reason().is_some() {
                    return Poll::Ready(Ok(1));
                }
                // Not yet: look again shortly (a guest polling stdin, e.g. in `poll_oneoff`,
                // waits with its own timeout and the run's kill as well). One timer at a time,
                // whatever the guest does, waking the latest waker.
                *waker.lock() = Some(cx.waker().clone());
                if !timer.swap(true, Ordering::AcqRel) {
                    let (waker, timer) = (waker.clone(), timer.clone());
                    super::tokio_runtime().spawn(async move {
                        tokio::time::sleep(input::STOP_CHECK).await;
                        timer.store(false, Ordering::Release);
                        if let Some(w) = waker.lock().take() {
                            w.wake();
                        }
                    });
                }
                Poll::Pending
            }
        }
    }
    fn poll_write_ready(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<usize>> {
        Poll::Ready(Ok(0))
    }
}

/// Stdout or stderr: appends to the run's [`Capture`]; past the cap, stops the run with
/// `OutputLimit`.
#[derive(Debug)]
pub(crate) struct OutputFile {
    stream: Stream,
    sink: Arc<Sink>,
}

/// What both output files share.
pub(crate) struct Sink {
    pub(crate) capture: Mutex<Capture>,
    pub(crate) control: Arc<RunControl>,
}

impl std::fmt::Debug for Sink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Sink")
    }
}

impl OutputFile {
    pub(crate) fn new(stream: Stream, sink: Arc<Sink>) -> Self {
        OutputFile { stream, sink }
    }
}

impl AsyncWrite for OutputFile {
    fn poll_write(self: Pin<&mut Self>, _: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        if !self.sink.capture.lock().push(self.stream, buf) {
            // The stop flag ends the guest at its next check; until then its writes vanish.
            self.sink.control.stop(StopReason::OutputLimit);
        }
        Poll::Ready(Ok(buf.len()))
    }
    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

impl AsyncRead for OutputFile {
    fn poll_read(self: Pin<&mut Self>, _: &mut Context<'_>, _: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Err(io::Error::new(io::ErrorKind::PermissionDenied, "output streams are write-only")))
    }
}

impl AsyncSeek for OutputFile {
    fn start_seek(self: Pin<&mut Self>, _: io::SeekFrom) -> io::Result<()> {
        Err(io::Error::new(io::ErrorKind::Unsupported, "output streams are not seekable"))
    }
    fn poll_complete(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<u64>> {
        Poll::Ready(Ok(0))
    }
}

impl VirtualFile for OutputFile {
    fn last_accessed(&self) -> u64 {
        0
    }
    fn last_modified(&self) -> u64 {
        0
    }
    fn created_time(&self) -> u64 {
        0
    }
    fn size(&self) -> u64 {
        0
    }
    fn set_len(&mut self, _: u64) -> Result<(), FsError> {
        Err(FsError::PermissionDenied)
    }
    fn unlink(&mut self) -> Result<(), FsError> {
        Ok(())
    }
    fn poll_read_ready(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<usize>> {
        Poll::Ready(Ok(0))
    }
    fn poll_write_ready(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<usize>> {
        Poll::Ready(Ok(usize::MAX))
    }
}
