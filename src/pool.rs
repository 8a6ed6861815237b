//! Warm starts: how a prepared program keeps ready instances ([`PrepareOptions`]) and what its
//! pool did ([`PoolStats`]).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// How [`Sandbox::prepare_with`](crate::Sandbox::prepare_with) prepares a program.
///
/// ```
/// use std::time::Duration;
/// use sandcell::PrepareOptions;
/// let options = PrepareOptions::new().pool_size(4).idle_timeout(Duration::from_secs(60));
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PrepareOptions {
    pub(crate) pool_size: Option<usize>,
    pub(crate) idle_timeout: Option<Duration>,
    pub(crate) until_ready: bool,
    pub(crate) snapshot_file: Option<std::path::PathBuf>,
}

impl Default for PrepareOptions {
    fn default() -> Self {
        Self::new()
    }
}

/// Ready instances a pool keeps when [`PrepareOptions::pool_size`] is not given: two, so that
/// back-to-back runs alternate between them while the other is being restored.
pub const DEFAULT_POOL_SIZE: usize = 2;
/// How long a pool keeps an idle instance when [`PrepareOptions::idle_timeout`] is not given.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// The largest pool a prepared program may keep.
pub const MAX_POOL_SIZE: usize = 64;

impl PrepareOptions {
    /// What [`Sandbox::prepare`](crate::Sandbox::prepare) does.
    pub fn new() -> Self {
        PrepareOptions { pool_size: None, idle_timeout: None, until_ready: false, snapshot_file: None }
    }

    /// How many ready instances to keep between runs (at most [`MAX_POOL_SIZE`]; 0 keeps none:
    /// every run makes its instance from the snapshot). Runs beyond that many at once make an
    /// instance of their own (a pool miss). Backends that keep no instances refuse the option.
    pub fn pool_size(mut self, size: usize) -> Self {
        self.pool_size = Some(size);
        self
    }

    /// How long an idle instance is kept before it is destroyed (an eviction).
    pub fn idle_timeout(mut self, timeout: Duration) -> Self {
        self.idle_timeout = Some(timeout);
        self
    }

    /// Runs the program once while preparing, until it says it is ready, and starts every run
    /// from that point: the program's start-up is paid once. On the micro-VM a native guest
    /// calls `sandcell_guest::ready()` and a WASI program writes and closes
    /// `/run/sandcell/ready`; on the wasm backend, where a running call stack cannot be captured,
    /// the module exports `wizer.initialize` (the Wizer convention): it is called once under the
    /// sandbox's policy, and the memories and globals it leaves become a new module that every
    /// run starts (tables are not captured, as with Wizer). Each run then has its own stdin; the
    /// arguments and environment are those the program read before it was ready. Output written
    /// before ready is discarded (past the policy's output cap it stops the program, as in a
    /// run); a program that ends, fails or is stopped before it is ready fails `prepare_with`.
    /// The process backend refuses it.
    pub fn until_ready(mut self, yes: bool) -> Self {
        self.until_ready = yes;
        self
    }

    /// Starts from the snapshot saved in this file ([`Prepared::save_snapshot`](crate::Prepared::save_snapshot))
    /// instead of making one: the program's start-up is not run at all. The file is checked
    /// before anything runs — sealed with the key of the sandbox's artifact cache, made by this
    /// sandcell version, on a CPU with the same features, under the same policy, for the same
    /// program — and refused with the reason otherwise. Not together with `until_ready` (the
    /// file says where its snapshot was taken).
    pub fn snapshot_file(mut self, path: impl Into<std::path::PathBuf>) -> Self {
        self.snapshot_file = Some(path.into());
        self
    }

    /// Whether these are [`PrepareOptions::new`]'s.
    pub(crate) fn is_plain(&self) -> bool {
        *self == PrepareOptions::new()
    }

    /// The pool size asked for, checked.
    pub(crate) fn checked_pool_size(&self) -> crate::Result<usize> {
        match self.pool_size {
            Some(n) if n > MAX_POOL_SIZE => Err(crate::Error::invalid_program(format!(
                "a pool of {n} instances was asked; a prepared program keeps at most {MAX_POOL_SIZE}"
            ))),
            Some(n) => Ok(n),
            None => Ok(DEFAULT_POOL_SIZE),
        }
    }
}

/// What a prepared program's pool of ready instances did ([`Prepared::pool_stats`](crate::Prepared::pool_stats)).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct PoolStats {
    /// Runs that took an idle instance.
    pub hits: u64,
    /// Runs that found none idle and made one from the snapshot.
    pub misses: u64,
    /// Instances destroyed because they stayed idle past the timeout or the pool was full.
    pub evictions: u64,
    /// Instances idle now (ready, or being reset after a run).
    pub idle: u64,
    /// Bytes of guest memory the snapshot keeps (saved once per prepared program, shared by
    /// its instances).
    pub snapshot_bytes: u64,
}

/// A pool's counters, updated by its backend.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) hits: AtomicU64,
    pub(crate) misses: AtomicU64,
    pub(crate) evictions: AtomicU64,
    pub(crate) idle: AtomicU64,
    pub(crate) snapshot_bytes: AtomicU64,
}

impl Counters {
    pub(crate) fn stats(&self) -> PoolStats {
        PoolStats {
            hits: self.hits.load(Ordering::Relaxed),
            misses: self.misses.load(Ordering::Relaxed),
            evictions: self.evictions.load(Ordering::Relaxed),
            idle: self.idle.load(Ordering::Relaxed),
            snapshot_bytes: self.snapshot_bytes.load(Ordering::Relaxed),
        }
    }
}
