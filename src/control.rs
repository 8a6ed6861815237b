//! Stopping runs: [`InterruptHandle`] (public), the per-run [`RunControl`] every backend uses,
//! the shared [`watchdog`] timer thread, and capped output [`Capture`].

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::sync::{Arc, OnceLock, Weak};
use std::time::Instant;

use parking_lot::{Condvar, Mutex};

use crate::{CpuBudget, Status, Stream};

/// Why the host stopped a run. The first reason recorded wins.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum StopReason {
    Timeout,
    Interrupted,
    CpuLimit(CpuBudget),
    OutputLimit,
}

impl StopReason {
    pub(crate) fn status(self) -> Status {
        match self {
            StopReason::Timeout => Status::Timeout,
            StopReason::Interrupted => Status::Interrupted,
            StopReason::CpuLimit(b) => Status::CpuLimit(b),
            StopReason::OutputLimit => Status::OutputLimit,
        }
    }
}

type StopFn = Box<dyn Fn() + Send + Sync>;

/// The host's side of one run: records why it was stopped, and knows how to stop the guest
/// (set by the backend while the guest runs).
#[derive(Default)]
pub(crate) struct RunControl {
    reason: OnceLock<StopReason>,
    stopper: Mutex<Option<StopFn>>,
}

impl RunControl {
    pub(crate) fn new() -> Arc<Self> {
        Arc::new(RunControl::default())
    }

    /// Records `reason` (unless another was recorded first) and stops the guest.
    pub(crate) fn stop(&self, reason: StopReason) {
        let _ = self.reason.set(reason);
        if let Some(stop) = self.stopper.lock().as_ref() {
            stop();
        }
    }

    /// Why the run was stopped, if it was.
    pub(crate) fn reason(&self) -> Option<StopReason> {
        self.reason.get().copied()
    }

    /// Installs the backend's way to stop the guest. If the run was stopped before, it is
    /// called at once, so that a stop that raced the start of the guest is not lost.
    pub(crate) fn arm(&self, stop: StopFn) {
        let mut slot = self.stopper.lock();
        if self.reason().is_some() {
            stop();
        }
        *slot = Some(stop);
    }

    /// Removes the stopper; after this returns, it is not running and will not run again.
    pub(crate) fn disarm(&self) {
        self.stopper.lock().take();
    }
}

/// Stops runs from another thread. `Send + Sync + Clone`.
///
/// There are two kinds:
/// - [`Sandbox::interrupt_handle`](crate::Sandbox::interrupt_handle) returns the sandbox's
///   handle: [`interrupt`](InterruptHandle::interrupt) stops every run in progress on that
///   sandbox; runs started afterwards are not affected.
/// - [`InterruptHandle::new`] makes a handle for the runs it is passed to (through
///   [`RunOptions::interrupt`](crate::RunOptions::interrupt)). It stays interrupted: a run
///   started with it after `interrupt()` ends at once. This closes the race of an interrupt
///   that arrives just before the run starts.
///
/// An interrupted run ends with [`Status::Interrupted`].
#[derive(Clone)]
pub struct InterruptHandle {
    inner: Arc<HandleInner>,
}

struct HandleInner {
    sticky: bool,
    state: Mutex<HandleState>,
}

#[derive(Default)]
struct HandleState {
    fired: bool,
    next_id: u64,
    runs: HashMap<u64, Weak<RunControl>>,
}

impl Default for InterruptHandle {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for InterruptHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = self.inner.state.lock();
        f.debug_struct("InterruptHandle")
            .field("sticky", &self.inner.sticky)
            .field("interrupted", &state.fired)
            .field("runs", &state.runs.len())
            .finish()
    }
}

impl InterruptHandle {
    /// A handle for the runs it is given to; once interrupted it stays interrupted.
    pub fn new() -> Self {
        Self::with_stickiness(true)
    }

    pub(crate) fn for_sandbox() -> Self {
        Self::with_stickiness(false)
    }

    fn with_stickiness(sticky: bool) -> Self {
        InterruptHandle { inner: Arc::new(HandleInner { sticky, state: Mutex::new(HandleState::default()) }) }
    }

    /// Stops the runs attached to this handle. Returns at once; each run ends shortly after
    /// with [`Status::Interrupted`].
    pub fn interrupt(&self) {
        let runs: Vec<Arc<RunControl>> = {
            let mut state = self.inner.state.lock();
            if self.inner.sticky {
                state.fired = true;
            }
            state.runs.values().filter_map(Weak::upgrade).collect()
        };
        for run in runs {
            run.stop(StopReason::Interrupted);
        }
    }

    /// Whether [`interrupt`](InterruptHandle::interrupt) was called on a handle made with
    /// [`InterruptHandle::new`]. Always false for a sandbox's handle.
    pub fn is_interrupted(&self) -> bool {
        self.inner.state.lock().fired
    }

    /// Number of runs currently attached.
    pub fn active_runs(&self) -> usize {
        self.inner.state.lock().runs.values().filter(|w| w.strong_count() > 0).count()
    }

    pub(crate) fn attach(&self, run: &Arc<RunControl>) -> Attachment {
        let mut state = self.inner.state.lock();
        let id = state.next_id;
        state.next_id += 1;
        state.runs.insert(id, Arc::downgrade(run));
        if state.fired {
            run.stop(StopReason::Interrupted);
        }
        Attachment { handle: self.inner.clone(), id }
    }
}

/// Detaches a run from an [`InterruptHandle`] when dropped.
pub(crate) struct Attachment {
    handle: Arc<HandleInner>,
    id: u64,
}

impl Drop for Attachment {
    fn drop(&mut self) {
        self.handle.state.lock().runs.remove(&self.id);
    }
}

/// What every backend sets up for one run: its [`RunControl`], attached to the sandbox's
/// interrupt handle and to the run's own, and its timers (wall-clock timeout, CPU budget).
pub(crate) struct Run {
    pub(crate) control: Arc<RunControl>,
    _attachments: Vec<Attachment>,
    timers: Vec<watchdog::TimerGuard>,
}

impl Run {
    /// A run attached to `sandbox`'s handle and to `run`'s, if given (which may have been
    /// interrupted already: then the run is stopped from the start).
    pub(crate) fn begin<'a>(sandbox: &'a InterruptHandle, run: impl IntoIterator<Item = &'a InterruptHandle>) -> Run {
        let control = RunControl::new();
        let attachments = std::iter::once(sandbox).chain(run).map(|h| h.attach(&control)).collect();
        // The watchdog thread starts now (once per process), not once the guest runs: a thread
        // that starts maps and unmaps memory, and on a virtualised host the TLB shootdowns that
        // sends to the guest's CPU cost a micro-VM guest hundreds of microseconds.
        watchdog::start();
        Run { control, _attachments: attachments, timers: Vec::new() }
    }

    /// Stops the run with [`StopReason::Timeout`] at `started + timeout`.
    pub(crate) fn timeout(&mut self, started: Instant, timeout: Option<std::time::Duration>) {
        if let Some(timeout) = timeout {
            let c = self.control.clone();
            self.timers.push(watchdog::schedule(
                started + timeout,
                Box::new(move |_| {
                    c.stop(StopReason::Timeout);
                    None
                }),
            ));
        }
    }

    /// Stops the run with a CPU-time [`StopReason::CpuLimit`] once `used()` reaches `limit`
    /// (see [`watchdog::cpu_budget`]).
    pub(crate) fn cpu_budget(
        &mut self,
        limit: Option<std::time::Duration>,
        min_step: std::time::Duration,
        used: impl Fn() -> std::time::Duration + Send + 'static,
    ) {
        if let Some(limit) = limit {
            self.timers.push(watchdog::cpu_budget(&self.control, limit, min_step, used));
        }
    }

    /// Cancels the timers and the stopper: once this returns, nothing stops the guest any more
    /// (the backend may then tear it down).
    pub(crate) fn finish(&mut self) {
        self.timers.clear();
        self.control.disarm();
    }
}

/// Called by the watchdog thread at its deadline; returns the next deadline to be called again.
pub(crate) type TimerTask = Box<dyn FnMut(Instant) -> Option<Instant> + Send>;

/// One timer thread for the whole process: every run's deadlines (wall clock, CPU-time checks)
/// are entries in its heap, so a run costs no thread of its own.
pub(crate) mod watchdog {
    use super::*;

    type Slot = Arc<Mutex<Option<TimerTask>>>;

    struct Shared {
        state: Mutex<State>,
        wake: Condvar,
    }

    #[derive(Default)]
    struct State {
        next_id: u64,
        heap: BinaryHeap<Reverse<(Instant, u64)>>,
        slots: HashMap<u64, Slot>,
    }

    fn shared() -> &'static Shared {
        static SHARED: OnceLock<&'static Shared> = OnceLock::new();
        SHARED.get_or_init(|| {
            let shared: &'static Shared =
                Box::leak(Box::new(Shared { state: Mutex::new(State::default()), wake: Condvar::new() }));
            std::thread::Builder::new()
                .name("sandcell-watchdog".into())
                .spawn(move || run(shared))
                .expect("cannot start the sandcell watchdog thread");
            shared
        })
    }

    fn run(shared: &'static Shared) {
        let mut state = shared.state.lock();
        loop {
            let now = Instant::now();
            match state.heap.peek() {
                None => {
                    shared.wake.wait(&mut state);
                }
                Some(Reverse((at, _))) if *at > now => {
                    let at = *at;
                    shared.wake.wait_until(&mut state, at);
                }
                Some(_) => {
                    let Reverse((_, id)) = state.heap.pop().expect("peeked");
                    let Some(slot) = state.slots.get(&id).cloned() else {
                        continue;
                    };
                    // Run the task without the heap lock, holding only its own slot lock, so
                    // that cancelling (which takes the slot lock) waits for it to finish.
                    let next = parking_lot::MutexGuard::unlocked(&mut state, || {
                        let mut task = slot.lock();
                        task.as_mut().and_then(|t| t(now))
                    });
                    match next {
                        Some(at) if state.slots.contains_key(&id) => state.heap.push(Reverse((at, id))),
                        _ => {
                            state.slots.remove(&id);
                        }
                    }
                }
            }
        }
    }

    /// Cancels its timer when dropped; once dropped, the task is not running and never will.
    pub(crate) struct TimerGuard {
        id: u64,
        slot: Slot,
    }

    impl Drop for TimerGuard {
        fn drop(&mut self) {
            self.slot.lock().take();
            shared().state.lock().slots.remove(&self.id);
        }
    }

    /// Stops the run with `CpuLimit(CpuTime)` once `used()` reaches `limit`. It checks when the
    /// whole budget could first have been spent, then whenever the rest could have been, at
    /// least `min_step` apart (CPU time never runs ahead of the wall clock).
    pub(crate) fn cpu_budget(
        control: &Arc<RunControl>,
        limit: std::time::Duration,
        min_step: std::time::Duration,
        used: impl Fn() -> std::time::Duration + Send + 'static,
    ) -> TimerGuard {
        let control = control.clone();
        schedule(
            Instant::now() + limit,
            Box::new(move |now| {
                let used = used();
                if used >= limit {
                    control.stop(StopReason::CpuLimit(CpuBudget::CpuTime));
                    None
                } else {
                    Some(now + (limit - used).max(min_step))
                }
            }),
        )
    }

    /// Starts the watchdog thread if it is not running yet.
    pub(crate) fn start() {
        shared();
    }

    /// Calls `task` on the watchdog thread at `at` (and again at whatever it returns).
    pub(crate) fn schedule(at: Instant, task: TimerTask) -> TimerGuard {
        let shared = shared();
        let slot: Slot = Arc::new(Mutex::new(Some(task)));
        let mut state = shared.state.lock();
        let id = state.next_id;
        state.next_id += 1;
        state.slots.insert(id, slot.clone());
        state.heap.push(Reverse((at, id)));
        shared.wake.notify_one();
        TimerGuard { id, slot }
    }
}

/// Receives output as the guest produces it (from the thread that runs the guest).
pub type OutputCallback = Box<dyn FnMut(Stream, &[u8]) + Send>;

/// Capped capture of stdout and stderr, shared by every backend.
pub(crate) struct Capture {
    limit: u64,
    stdout: Vec<u8>,
    stderr: Vec<u8>,
    callback: Option<OutputCallback>,
    exceeded: bool,
}

impl Capture {
    pub(crate) fn new(limit: u64, callback: Option<OutputCallback>) -> Self {
        Capture { limit, stdout: Vec::new(), stderr: Vec::new(), callback, exceeded: false }
    }

    /// Appends what the guest wrote. Returns `false` once the stream is over its cap: the bytes
    /// up to the cap are kept, the rest dropped, and the caller must stop the run.
    pub(crate) fn push(&mut self, stream: Stream, data: &[u8]) -> bool {
        let buf = match stream {
            Stream::Stdout => &mut self.stdout,
            Stream::Stderr => &mut self.stderr,
        };
        let room = usize::try_from(self.limit.saturating_sub(buf.len() as u64)).unwrap_or(usize::MAX);
        let take = data.len().min(room);
        buf.extend_from_slice(&data[..take]);
        if let Some(cb) = self.callback.as_mut() {
            if take > 0 {
                cb(stream, &data[..take]);
            }
        }
        if take < data.len() {
            self.exceeded = true;
        }
        !self.exceeded
    }

    pub(crate) fn take(&mut self) -> (Vec<u8>, Vec<u8>) {
        (std::mem::take(&mut self.stdout), std::mem::take(&mut self.stderr))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    #[test]
    fn capture_caps_each_stream() {
        let seen = Arc::new(AtomicUsize::new(0));
        let s = seen.clone();
        let mut c = Capture::new(
            4,
            Some(Box::new(move |_, d| {
                s.fetch_add(d.len(), Ordering::SeqCst);
            })),
        );
        assert!(c.push(Stream::Stdout, b"ab"));
        assert!(c.push(Stream::Stderr, b"abcd"));
        assert!(!c.push(Stream::Stdout, b"cdef"));
        let (o, e) = c.take();
        assert_eq!((o.as_slice(), e.as_slice()), (&b"abcd"[..], &b"abcd"[..]));
        assert_eq!(seen.load(Ordering::SeqCst), 8);
    }

    #[test]
    fn first_stop_reason_wins_and_late_arm_fires() {
        let run = RunControl::new();
        run.stop(StopReason::Timeout);
        run.stop(StopReason::Interrupted);
        assert_eq!(run.reason(), Some(StopReason::Timeout));
        let fired = Arc::new(AtomicUsize::new(0));
        let f = fired.clone();
        run.arm(Box::new(move || {
            f.fetch_add(1, Ordering::SeqCst);
        }));
        assert_eq!(fired.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn sticky_handles_stop_later_runs_sandbox_handles_do_not() {
        let sticky = InterruptHandle::new();
        sticky.interrupt();
        let run = RunControl::new();
        let _a = sticky.attach(&run);
        assert_eq!(run.reason(), Some(StopReason::Interrupted));

        let wide = InterruptHandle::for_sandbox();
        wide.interrupt();
        let run = RunControl::new();
        let _b = wide.attach(&run);
        assert_eq!(run.reason(), None);
        wide.interrupt();
        assert_eq!(run.reason(), Some(StopReason::Interrupted));
    }

    #[test]
    fn watchdog_fires_reschedules_and_cancels() {
        let hits = Arc::new(AtomicUsize::new(0));
        let h = hits.clone();
        let guard = watchdog::schedule(
            Instant::now(),
            Box::new(move |now| (h.fetch_add(1, Ordering::SeqCst) < 2).then(|| now + Duration::from_millis(1))),
        );
        std::thread::sleep(Duration::from_millis(100));
        assert_eq!(hits.load(Ordering::SeqCst), 3);
        drop(guard);

        let late = Arc::new(AtomicUsize::new(0));
        let l = late.clone();
        let guard = watchdog::schedule(
            Instant::now() + Duration::from_millis(50),
            Box::new(move |_| {
                l.fetch_add(1, Ordering::SeqCst);
                None
            }),
        );
        drop(guard);
        std::thread::sleep(Duration::from_millis(100));
        assert_eq!(late.load(Ordering::SeqCst), 0);
    }
}
