//! Warm starts: a snapshot of a micro-VM, and a pool of VMs that runs restore from it.
//!
//! A prepared program ([`crate::Prepared`]) keeps a [`Snapshot`] of its VM — at the program's
//! entry, or where the guest said it was ready (`prepare_with` and `PrepareOptions::until_ready`)
//! — and a bounded pool of idle VMs ([`Machine`]s) that hold that state. A run takes an idle VM
//! (or, when none is idle, makes one and restores the snapshot into it), runs it, then restores
//! the snapshot into it again and puts it back. Creating a VM, registering its memory and
//! creating its vCPUs — most of a cold run on this kind of host — are off the run's path, and
//! KVM's mappings of the pages a run did not change stay warm.
//!
//! **What a restore resets.** Every page a run can change (see [`GuestImage::changeable`]: the
//! pages the guest's page tables let it write, and those only the host or the exception stubs
//! write) gets the snapshot's contents back:
//! - a page that was resident when the snapshot was taken, or that is part of the image's
//!   private contents, is saved in the snapshot and copied back into the VM's memory (its host
//!   mapping stays, so KVM's mapping of it stays too);
//! - any other page a run made resident is discarded (`MADV_DONTNEED`): it reads as zeros again,
//!   as it did at the snapshot, and KVM drops its mapping.
//!
//! Which pages are resident comes from `mincore`, which for the anonymous memory outside the
//! image's file mappings is exact (a page the guest or the host touched is resident). Pages
//! nobody can change (the image's read-only pages, page tables, IDT, TSS, stubs) are not looked
//! at. The vCPUs get their registers back (general, special — segments, control registers,
//! descriptor tables —, x87/SSE, pending events). A run therefore sees exactly the
//! snapshot's state whatever the previous run wrote; a hostile test checks it.
//!
//! A VM whose run did not hand every vCPU back, or whose restore failed, is destroyed instead
//! of pooled.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use kvm_bindings::{kvm_fpu, kvm_regs, kvm_sregs, kvm_vcpu_events};
use kvm_ioctls::{Cap, SyncReg};
use parking_lot::Mutex;

use super::image::{GuestImage, Sharing};
use super::sys;
use super::vm::{Code, Machine};
use crate::{Error, Result};

const PAGE: usize = 0x1000;

/// One vCPU's registers.
struct CpuState {
    regs: kvm_regs,
    sregs: kvm_sregs,
    fpu: kvm_fpu,
    events: kvm_vcpu_events,
}

fn kvm_err(action: &'static str) -> impl Fn(kvm_ioctls::Error) -> Error {
    move |e| Error::setup(action, std::io::Error::from_raw_os_error(e.errno()))
}

/// A VM's state at one point: its vCPUs' registers and the contents of the pages a run can
/// change.
pub(crate) struct Snapshot {
    cpus: Vec<CpuState>,
    /// The changeable page ranges (page indexes `[start, end)`).
    changeable: Vec<(usize, usize)>,
    /// For each page of guest RAM: whether its contents are saved.
    saved: Vec<bool>,
    /// The saved pages, ascending.
    saved_pages: Vec<u32>,
    /// The saved pages' contents, in page order.
    data: Vec<u8>,
}

impl std::fmt::Debug for Snapshot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Snapshot").field("vcpus", &self.cpus.len()).field("saved_bytes", &self.data.len()).finish()
    }
}

/// Reads which pages of `machine`'s guest RAM are in use into its `resident` map (bit 0 per
/// page), which stays allocated with the machine (a 512 MiB guest's map is 128 KiB: allocating
/// it per run cost a fresh mapping and its page faults). Returns how many are.
///
/// `mincore` is exact for this anonymous memory only while nothing of it can be swapped out: a
/// page in swap (and not in the swap cache) reads as absent, yet holds what a run wrote. So
/// while the host has any swap (`sysinfo`, checked every time: swap can be turned on at any
/// moment), the map comes from `/proc/self/pagemap` instead, where a swapped page is marked.
pub(crate) fn read_resident(machine: &mut Machine) -> Result<u64> {
    let (base, len) = machine.ram();
    machine.resident.resize(len / PAGE, 0);
    let exact = if sys::host_has_swap() {
        sys::pagemap_in_use(base, &mut machine.resident)
    } else if sys::mincore(base, len, &mut machine.resident) {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    };
    exact.map_err(|e| Error::setup("read which guest pages are in use", e))?;
    Ok(machine.resident.iter().map(|b| u64::from(b & 1)).sum())
}

/// Completes what each vCPU's last exit left pending in KVM (the `out` of the final hypercall,
/// or an emulated string I/O): KVM finishes it at the next `KVM_RUN` — after applying registers
/// given through the `kvm_run` page, so on the *restored* state. One `KVM_RUN` with
/// `immediate_exit` set finishes it now and returns before entering the guest (KVM's documented
/// way). Returns false if a vCPU did anything else (the machine must then be destroyed).
pub(crate) fn complete_pending(machine: &mut Machine) -> bool {
    machine.vcpus.iter_mut().all(|vcpu| {
        vcpu.get_kvm_run().immediate_exit = 1;
        let done = matches!(vcpu.run(), Err(e) if e.errno() == libc::EINTR);
        vcpu.get_kvm_run().immediate_exit = 0;
        done
    })
}

impl Snapshot {
    /// Takes `machine`'s state (its vCPUs must be stopped, out of the guest, with any I/O exit
    /// completed).
    pub(crate) fn take(machine: &mut Machine, image: &GuestImage) -> Result<Snapshot> {
        let mut cpus = Vec::with_capacity(machine.vcpus.len());
        for vcpu in &machine.vcpus {
            cpus.push(CpuState {
                regs: vcpu.get_regs().map_err(kvm_err("read vCPU registers"))?,
                sregs: vcpu.get_sregs().map_err(kvm_err("read vCPU state"))?,
                fpu: vcpu.get_fpu().map_err(kvm_err("read vCPU FPU state"))?,
                events: vcpu.get_vcpu_events().map_err(kvm_err("read vCPU events"))?,
            });
        }
        let (base, len) = machine.ram();
        let pages = len / PAGE;
        let changeable: Vec<(usize, usize)> = image
            .changeable()
            .into_iter()
            .map(|(s, e)| (s as usize / PAGE, (e as usize / PAGE).min(pages)))
            .filter(|(s, e)| s < e)
            .collect();
        read_resident(machine)?;
        let resident = &machine.resident;
        let mut saved = vec![false; pages];
        // The image's private contents are file pages: `mincore` says nothing about whether a
        // run changed them, so the changeable ones among them are always saved.
        for (start, end, sharing) in &image.content {
            if *sharing == Sharing::Private {
                let (s, e) = (*start as usize / PAGE, (*end as usize).div_ceil(PAGE).min(pages));
                saved[s..e].iter_mut().for_each(|b| *b = true);
            }
        }
        let mut keep = vec![false; pages];
        for &(s, e) in &changeable {
            for p in s..e {
                keep[p] = saved[p] || resident[p] & 1 != 0;
            }
        }
        let saved_pages: Vec<u32> = (0..pages).filter(|p| keep[*p]).map(|p| p as u32).collect();
        let mut data = Vec::with_capacity(saved_pages.len() * PAGE);
        for p in saved_pages.iter().map(|p| *p as usize) {
            // SAFETY: page `p` lies inside the machine's guest RAM mapping, alive while
            // `machine` is; its vCPUs are stopped, so nothing writes it meanwhile.
            let page = unsafe { std::slice::from_raw_parts(base.add(p * PAGE), PAGE) };
            data.extend_from_slice(page);
        }
        Ok(Snapshot { cpus, changeable, saved: keep, saved_pages, data })
    }

    /// The bytes the snapshot holds (memory kept per prepared program).
    pub(crate) fn saved_bytes(&self) -> usize {
        self.data.len()
    }

    /// Puts `machine` back in the snapshot's state (its vCPUs must be out of the guest, and its
    /// resident map read since they stopped: [`read_resident`]).
    pub(crate) fn restore(&self, machine: &mut Machine) -> Result<()> {
        if machine.vcpus.len() != self.cpus.len() {
            return Err(Error::setup("restore a snapshot", std::io::Error::other("the VM has another vCPU count")));
        }
        let (base, len) = machine.ram();
        if len / PAGE != self.saved.len() || machine.resident.len() != self.saved.len() {
            return Err(Error::setup("restore a snapshot", std::io::Error::other("the VM has another memory size")));
        }
        let resident = &machine.resident;
        for (i, p) in self.saved_pages.iter().enumerate() {
            // SAFETY: page `p` lies inside guest RAM (checked when the snapshot was taken, and
            // the memory has the same size); the vCPUs are out of the guest and the host holds
            // no reference into it.
            unsafe {
                std::ptr::copy_nonoverlapping(self.data.as_ptr().add(i * PAGE), base.add(*p as usize * PAGE), PAGE)
            };
        }
        let flush = |(start, end): (usize, usize)| -> Result<()> {
            // SAFETY: the pages lie inside the machine's guest RAM, an anonymous mapping (they
            // are not saved, so not the image's private contents), and nothing of the host
            // refers to their contents; the vCPUs are out of the guest.
            if unsafe { sys::discard(base.add(start * PAGE), (end - start) * PAGE) } {
                Ok(())
            } else {
                Err(Error::setup("reset guest memory", std::io::Error::last_os_error()))
            }
        };
        // Pages made resident since the snapshot are discarded. Most of guest RAM is untouched:
        // the scan skips eight absent pages at a time.
        let mut discard: Option<(usize, usize)> = None;
        for &(s, e) in &self.changeable {
            let mut p = s;
            while p < e {
                if p % 8 == 0 && p + 8 <= e {
                    let chunk = u64::from_ne_bytes(resident[p..p + 8].try_into().unwrap_or([1; 8]));
                    if chunk & 0x0101_0101_0101_0101 == 0 {
                        p += 8;
                        continue;
                    }
                }
                if resident[p] & 1 != 0 && !self.saved[p] {
                    discard = match discard {
                        Some((ds, de)) if de == p => Some((ds, p + 1)),
                        Some(range) => {
                            flush(range)?;
                            Some((p, p + 1))
                        }
                        None => Some((p, p + 1)),
                    };
                }
                p += 1;
            }
        }
        if let Some(range) = discard {
            flush(range)?;
        }
        // Each vCPU ioctl costs ≈ 10 µs on PVM: the general and special registers and the
        // pending events go in the `kvm_run` page (`KVM_CAP_SYNC_REGS`), which KVM applies at
        // the next entry, before anything else it does there; only x87/SSE needs an ioctl. The
        // debug registers are not restored: only kernel mode can write DR0-3/DR7 or read any
        // of them, and the VM's only kernel-mode code (its exception stubs) does neither.
        let sync = sync_regs_supported();
        for (vcpu, state) in machine.vcpus.iter_mut().zip(&self.cpus) {
            if sync {
                let regs = vcpu.sync_regs_mut();
                regs.regs = state.regs;
                regs.sregs = state.sregs;
                regs.events = state.events;
                vcpu.set_sync_dirty_reg(SyncReg::Register);
                vcpu.set_sync_dirty_reg(SyncReg::SystemRegister);
                vcpu.set_sync_dirty_reg(SyncReg::VcpuEvents);
            } else {
                vcpu.set_sregs(&state.sregs).map_err(kvm_err("restore vCPU state"))?;
                vcpu.set_regs(&state.regs).map_err(kvm_err("restore vCPU registers"))?;
                vcpu.set_vcpu_events(&state.events).map_err(kvm_err("restore vCPU events"))?;
            }
            vcpu.set_fpu(&state.fpu).map_err(kvm_err("restore vCPU FPU state"))?;
        }
        Ok(())
    }
}

/// Whether KVM takes registers through the `kvm_run` page (checked once).
fn sync_regs_supported() -> bool {
    static SYNC: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *SYNC.get_or_init(|| super::vm::kvm().is_ok_and(|kvm| kvm.check_extension(Cap::SyncRegs)))
}

/// How a prepared program keeps VMs (see [`crate::PrepareOptions`]).
#[derive(Clone, Copy, Debug)]
pub(crate) struct PoolConfig {
    pub(crate) size: usize,
    pub(crate) idle_timeout: Duration,
}

/// A prepared program's snapshot and its idle VMs.
pub(crate) struct Pool {
    pub(crate) snapshot: Snapshot,
    image: Arc<GuestImage>,
    config: PoolConfig,
    idle: Mutex<Idle>,
    /// Signalled when a VM back from a run has been restored (or given up).
    restored: parking_lot::Condvar,
    pub(crate) stats: Arc<crate::pool::Counters>,
}

/// The pool's VMs: idle ones with when they became idle, and how many are being restored.
#[derive(Default)]
struct Idle {
    machines: Vec<(Machine, Instant)>,
    restoring: usize,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool").field("snapshot", &self.snapshot).field("config", &self.config).finish()
    }
}

impl Pool {
    /// A pool for `snapshot`, taken from `first` (which becomes its first idle VM).
    pub(crate) fn new(image: Arc<GuestImage>, snapshot: Snapshot, first: Machine, config: PoolConfig) -> Arc<Pool> {
        let pool = Arc::new(Pool {
            snapshot,
            image,
            config,
            idle: Mutex::new(Idle::default()),
            restored: parking_lot::Condvar::new(),
            stats: Arc::new(crate::pool::Counters::default()),
        });
        pool.stats.snapshot_bytes.store(pool.snapshot.saved_bytes() as u64, Ordering::Relaxed);
        if config.size == 0 {
            first.destroy();
        } else {
            pool.put(first);
        }
        // The pool starts with two VMs (or its size if smaller), so that runs do not wait for a
        // VM to be made: back to back, a run takes one while the one the previous run used is
        // being restored. More are made as concurrent runs need them (each VM holds its own
        // copy of the snapshot's pages, which a guest prepared until ready sizes).
        for _ in 1..config.size.min(2) {
            let mut machine = match Machine::create(&pool.image, Code::Shared) {
                Ok(m) => m,
                Err(e) => {
                    tracing::debug!("the pool starts with fewer VMs: {e}");
                    break;
                }
            };
            match read_resident(&mut machine).and_then(|_| pool.snapshot.restore(&mut machine)) {
                Ok(()) => pool.put(machine),
                Err(e) => {
                    tracing::debug!("the pool starts with fewer VMs: {e}");
                    machine.destroy();
                    break;
                }
            }
        }
        janitor::watch(&pool);
        pool
    }

    /// An idle VM in the snapshot's state — waiting for one being restored if there is one —,
    /// or a new one restored from the snapshot.
    pub(crate) fn take(&self) -> Result<Machine> {
        let (found, expired) = {
            let mut idle = self.idle.lock();
            let expired = self.expired(&mut idle.machines);
            let found = loop {
                if let Some((m, _)) = idle.machines.pop() {
                    break Some(m);
                }
                // A restore takes well under a millisecond; the bound only guards against a
                // restorer that cannot run.
                if idle.restoring == 0 || self.restored.wait_for(&mut idle, Duration::from_millis(100)).timed_out() {
                    break idle.machines.pop().map(|(m, _)| m);
                }
            };
            self.stats.idle.store((idle.machines.len() + idle.restoring) as u64, Ordering::Relaxed);
            (found, expired)
        };
        self.evict(expired);
        if let Some(machine) = found {
            self.stats.hits.fetch_add(1, Ordering::Relaxed);
            return Ok(machine);
        }
        self.stats.misses.fetch_add(1, Ordering::Relaxed);
        let machine = tracing::debug_span!("vm.create").in_scope(|| Machine::create(&self.image, Code::Shared))?;
        let mut machine = machine;
        // (A new machine has no pending exit: nothing to complete.)
        let restored = read_resident(&mut machine).and_then(|_| self.snapshot.restore(&mut machine));
        if let Err(e) = restored {
            machine.destroy();
            return Err(e);
        }
        Ok(machine)
    }

    /// Takes back `machine` from a run: if the pool has room, the snapshot is restored into it
    /// on the restorer thread (off the run's path; a run that needs it meanwhile waits for it)
    /// and it becomes idle; otherwise it is destroyed.
    pub(crate) fn give_back(pool: &Arc<Pool>, machine: Machine) {
        {
            let mut idle = pool.idle.lock();
            if idle.machines.len() + idle.restoring >= pool.config.size {
                drop(idle);
                pool.stats.evictions.fetch_add(1, Ordering::Relaxed);
                machine.destroy();
                return;
            }
            idle.restoring += 1;
            pool.stats.idle.store((idle.machines.len() + idle.restoring) as u64, Ordering::Relaxed);
        }
        // One restorer serves every pool: while it is busy, the run restores its own VM (a
        // guest whose runs are costly to reset cannot delay other programs' runs).
        if let Err(job) = restorer::send(pool.clone(), machine) {
            let (pool, machine) = *job;
            pool.restore_and_keep(machine);
        }
    }

    /// Completes the machine's pending exit, restores the snapshot into it and keeps it (the
    /// restorer's job; `restoring` was counted for it).
    fn restore_and_keep(&self, mut machine: Machine) {
        let ok = tracing::debug_span!("vm.restore").in_scope(|| {
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                complete_pending(&mut machine)
                    && read_resident(&mut machine).and_then(|_| self.snapshot.restore(&mut machine)).is_ok()
            }))
            .unwrap_or(false)
        });
        // Counted down and made idle in one step: a run looking meanwhile either waits or
        // finds it.
        let refused = {
            let mut idle = self.idle.lock();
            idle.restoring -= 1;
            if ok {
                self.keep(&mut idle, machine)
            } else {
                self.stats.idle.store((idle.machines.len() + idle.restoring) as u64, Ordering::Relaxed);
                Some(machine)
            }
        };
        self.restored.notify_all();
        if let Some(machine) = refused {
            if ok {
                self.stats.evictions.fetch_add(1, Ordering::Relaxed);
            } else {
                tracing::debug!("a VM could not be restored, destroyed");
            }
            machine.destroy();
        }
    }

    /// Makes `machine` idle if there is room, under the pool's lock; gives it back otherwise.
    fn keep(&self, idle: &mut Idle, machine: Machine) -> Option<Machine> {
        let refused = if idle.machines.len() < self.config.size {
            idle.machines.push((machine, Instant::now()));
            None
        } else {
            Some(machine)
        };
        self.stats.idle.store((idle.machines.len() + idle.restoring) as u64, Ordering::Relaxed);
        refused
    }

    /// Makes `machine` idle if there is room (else destroys it, an eviction).
    fn put(&self, machine: Machine) {
        let refused = self.keep(&mut self.idle.lock(), machine);
        if let Some(machine) = refused {
            self.stats.evictions.fetch_add(1, Ordering::Relaxed);
            machine.destroy();
        }
    }

    /// Takes the VMs idle for longer than the idle timeout out of `idle`.
    fn expired(&self, idle: &mut Vec<(Machine, Instant)>) -> Vec<Machine> {
        let now = Instant::now();
        let mut out = Vec::new();
        let mut i = 0;
        while i < idle.len() {
            if now.duration_since(idle[i].1) >= self.config.idle_timeout {
                out.push(idle.swap_remove(i).0);
            } else {
                i += 1;
            }
        }
        out
    }

    fn evict(&self, machines: Vec<Machine>) {
        for m in machines {
            self.stats.evictions.fetch_add(1, Ordering::Relaxed);
            m.destroy();
        }
    }

    /// Destroys the VMs idle past the timeout (called by the janitor).
    fn trim(&self) {
        let expired = {
            let mut idle = self.idle.lock();
            let expired = self.expired(&mut idle.machines);
            self.stats.idle.store((idle.machines.len() + idle.restoring) as u64, Ordering::Relaxed);
            expired
        };
        self.evict(expired);
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        for (m, _) in self.idle.get_mut().machines.drain(..) {
            m.destroy();
        }
    }
}

/// The thread that restores VMs back from runs (one per process, started with the first):
/// a run returns its outcome without waiting for its VM's restore.
mod restorer {
    use super::*;
    use std::sync::mpsc::{channel, Sender};
    use std::sync::OnceLock;

    type Job = (Arc<Pool>, Machine);

    /// Jobs handed to the restorer and not finished.
    static QUEUED: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

    /// Hands `machine` to the restorer; gives the job back if the restorer is busy or cannot be
    /// started.
    pub(super) fn send(pool: Arc<Pool>, machine: Machine) -> std::result::Result<(), Box<Job>> {
        if QUEUED.load(Ordering::SeqCst) > 0 {
            return Err(Box::new((pool, machine)));
        }
        static TX: OnceLock<Option<parking_lot::Mutex<Sender<Job>>>> = OnceLock::new();
        let tx = TX.get_or_init(|| {
            let (tx, rx) = channel::<Job>();
            std::thread::Builder::new()
                .name("sandcell-vm-restore".into())
                .spawn(move || {
                    for (pool, machine) in rx {
                        pool.restore_and_keep(machine);
                        QUEUED.fetch_sub(1, Ordering::SeqCst);
                    }
                })
                .ok()
                .map(|_| parking_lot::Mutex::new(tx))
        });
        match tx {
            Some(tx) => {
                QUEUED.fetch_add(1, Ordering::SeqCst);
                tx.lock().send((pool, machine)).map_err(|e| {
                    QUEUED.fetch_sub(1, Ordering::SeqCst);
                    Box::new(e.0)
                })
            }
            None => Err(Box::new((pool, machine))),
        }
    }
}

/// Destroys pooled VMs that stay idle past their timeout even when no run comes to notice: one
/// thread per process, started with the first pool, waking every half second.
mod janitor {
    use super::*;
    use std::sync::OnceLock;

    static POOLS: Mutex<Vec<Weak<Pool>>> = Mutex::new(Vec::new());

    pub(super) fn watch(pool: &Arc<Pool>) {
        POOLS.lock().push(Arc::downgrade(pool));
        static STARTED: OnceLock<bool> = OnceLock::new();
        STARTED.get_or_init(|| {
            std::thread::Builder::new()
                .name("sandcell-vm-pool".into())
                .spawn(|| loop {
                    std::thread::sleep(Duration::from_millis(500));
                    let live: Vec<Arc<Pool>> = {
                        let mut pools = POOLS.lock();
                        pools.retain(|w| w.strong_count() > 0);
                        pools.iter().filter_map(Weak::upgrade).collect()
                    };
                    for pool in live {
                        pool.trim();
                    }
                })
                .is_ok()
        });
    }
}

/// Snapshot files: a [`Snapshot`] saved by one process and loaded by another.
///
/// ```text
/// "SCSNAP01"  magic and format version
/// mac[32]     HMAC-SHA256 of the rest, keyed with the sandbox's artifact cache key
/// u32 n, n bytes of JSON: sandcell version, CPU, policy, program (image key), ready, RAM, vCPUs
/// u32 vCPUs, then per vCPU its registers (kvm_regs, kvm_sregs, kvm_fpu, kvm_vcpu_events)
/// u32 n, n changeable page ranges (u64 start, u64 end)
/// u32 n, n saved pages (u32, ascending), then their contents (n × 4096 bytes)
/// ```
///
/// Loading refuses, with the reason, anything that is not exactly such a file made with the
/// same key (corrupt, truncated, altered, another cache's), and a file made by another sandcell
/// version, on a CPU with other features, under another policy or for another program, RAM
/// size or vCPU count. The MAC is what makes the restored state trustworthy: without the key
/// nobody can make a file that loads. The registers are checked as well (user mode, the VM's
/// own page tables and descriptor tables), so a file that verified can still only hold a state
/// a guest could have reached.
pub(crate) mod file {
    use super::*;

    const MAGIC: &[u8; 8] = b"SCSNAP01";
    const MAC_NAME: &str = "snapshot";

    /// What a snapshot file must match to be loaded.
    #[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
    pub(crate) struct Header {
        pub(crate) sandcell: String,
        pub(crate) cpu: String,
        pub(crate) policy: String,
        pub(crate) program: String,
        pub(crate) ready: bool,
        pub(crate) ram: u64,
        pub(crate) vcpus: u32,
    }

    /// The host CPU's identity and features (CPUID leaves 0, 1 and 7), as a digest: a
    /// snapshot's FPU/SSE state and what its guest detected belong to them.
    pub(crate) fn cpu() -> String {
        use sha2::Digest;
        let mut h = sha2::Sha256::new();
        for (leaf, sub) in [(0u32, 0u32), (1, 0), (7, 0)] {
            // SAFETY: CPUID is available on every x86-64 CPU (the call is safe in newer Rust).
            #[allow(unused_unsafe)]
            let r = unsafe { core::arch::x86_64::__cpuid_count(leaf, sub) };
            // Leaf 1's EBX holds the current CPU's APIC id, which differs from CPU to CPU.
            let ebx = if leaf == 1 { r.ebx & 0x0000_ffff } else { r.ebx };
            for v in [r.eax, ebx, r.ecx, r.edx] {
                h.update(v.to_le_bytes());
            }
        }
        crate::cache::hex(&h.finalize())
    }

    fn bytes_of<T: Copy>(v: &T) -> &[u8] {
        // SAFETY: `T` is one of the KVM register structs: plain integers and arrays, no
        // pointers; its bytes (padding included, which KVM zeroes) are read only.
        unsafe { std::slice::from_raw_parts((v as *const T).cast::<u8>(), std::mem::size_of::<T>()) }
    }

    /// A reader over the file's bytes that reports truncation.
    struct Cursor<'a>(&'a [u8]);

    fn truncated() -> String {
        "the file is truncated or malformed".into()
    }

    impl<'a> Cursor<'a> {
        fn take(&mut self, n: usize) -> std::result::Result<&'a [u8], String> {
            let (a, b) = self.0.split_at_checked(n).ok_or_else(truncated)?;
            self.0 = b;
            Ok(a)
        }
        fn u32(&mut self) -> std::result::Result<u32, String> {
            Ok(u32::from_le_bytes(self.take(4)?.try_into().map_err(|_| truncated())?))
        }
        fn u64(&mut self) -> std::result::Result<u64, String> {
            Ok(u64::from_le_bytes(self.take(8)?.try_into().map_err(|_| truncated())?))
        }
        fn pod<T: Copy + Default>(&mut self) -> std::result::Result<T, String> {
            let b = self.take(std::mem::size_of::<T>())?;
            let mut v = T::default();
            // SAFETY: `T` is a KVM register struct (any bytes are a valid value) and `b` has
            // exactly its size.
            unsafe { std::ptr::copy_nonoverlapping(b.as_ptr(), (&mut v as *mut T).cast::<u8>(), b.len()) };
            Ok(v)
        }
    }

    /// The file's bytes for `snapshot` with `header`, sealed with `cache`'s key.
    pub(crate) fn encode(snapshot: &Snapshot, header: &Header, cache: &crate::cache::ArtifactCache) -> Vec<u8> {
        let mut p = Vec::with_capacity(snapshot.data.len() + 4096);
        let json = serde_json::to_vec(header).unwrap_or_default();
        p.extend_from_slice(&(json.len() as u32).to_le_bytes());
        p.extend_from_slice(&json);
        p.extend_from_slice(&(snapshot.cpus.len() as u32).to_le_bytes());
        for c in &snapshot.cpus {
            p.extend_from_slice(bytes_of(&c.regs));
            p.extend_from_slice(bytes_of(&c.sregs));
            p.extend_from_slice(bytes_of(&c.fpu));
            p.extend_from_slice(bytes_of(&c.events));
        }
        p.extend_from_slice(&(snapshot.changeable.len() as u32).to_le_bytes());
        for (s, e) in &snapshot.changeable {
            p.extend_from_slice(&(*s as u64).to_le_bytes());
            p.extend_from_slice(&(*e as u64).to_le_bytes());
        }
        p.extend_from_slice(&(snapshot.saved_pages.len() as u32).to_le_bytes());
        for page in &snapshot.saved_pages {
            p.extend_from_slice(&page.to_le_bytes());
        }
        p.extend_from_slice(&snapshot.data);
        let mut out = Vec::with_capacity(p.len() + 40);
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&cache.seal(MAC_NAME, &p));
        out.extend_from_slice(&p);
        out
    }

    /// The snapshot in `bytes` and whether it was taken where the guest said it was ready, if
    /// it is one `cache`'s key sealed and it matches `expected` (but for `ready`); otherwise why
    /// not. `image` is the program's image, whose changeable pages a snapshot of it has.
    pub(crate) fn decode(
        bytes: &[u8],
        expected: &Header,
        cache: &crate::cache::ArtifactCache,
        image: &GuestImage,
    ) -> std::result::Result<(Snapshot, bool), String> {
        let rest = bytes
            .strip_prefix(MAGIC.as_slice())
            .ok_or("it is not a sandcell snapshot file (or of another format version)")?;
        let (mac, payload) = rest.split_at_checked(32).ok_or_else(truncated)?;
        if !cache.verify(MAC_NAME, payload, mac) {
            return Err("it does not verify: altered, truncated, or not made with this artifact cache's key".into());
        }
        let mut c = Cursor(payload);
        let n = c.u32()? as usize;
        let header: Header = serde_json::from_slice(c.take(n)?).map_err(|e| format!("its header is malformed: {e}"))?;
        if header.sandcell != expected.sandcell {
            return Err(format!("it was made by sandcell {}; this is sandcell {}", header.sandcell, expected.sandcell));
        }
        if header.cpu != expected.cpu {
            return Err("it was made on a CPU of another model or with other features".into());
        }
        if header.policy != expected.policy {
            return Err("it was made under another policy".into());
        }
        if header.program != expected.program || header.ram != expected.ram || header.vcpus != expected.vcpus {
            return Err("it was made for another program (or guest RAM size or vCPU count)".into());
        }
        let ncpu = c.u32()? as usize;
        if ncpu != image.vcpus as usize {
            return Err(truncated());
        }
        let mut cpus = Vec::with_capacity(ncpu);
        for _ in 0..ncpu {
            let state = CpuState { regs: c.pod()?, sregs: c.pod()?, fpu: c.pod()?, events: c.pod()? };
            check_registers(&state)?;
            cpus.push(state);
        }
        let pages = (image.ram as usize) / PAGE;
        let expected_ranges: Vec<(usize, usize)> = image
            .changeable()
            .into_iter()
            .map(|(s, e)| (s as usize / PAGE, (e as usize / PAGE).min(pages)))
            .filter(|(s, e)| s < e)
            .collect();
        let nranges = c.u32()? as usize;
        let mut changeable = Vec::with_capacity(nranges.min(4096));
        for _ in 0..nranges {
            changeable.push((c.u64()? as usize, c.u64()? as usize));
        }
        if changeable != expected_ranges {
            return Err("its page ranges are not those of this program's image".into());
        }
        let npages = c.u32()? as usize;
        if npages > pages {
            return Err(truncated());
        }
        let mut saved = vec![false; pages];
        let mut saved_pages = Vec::with_capacity(npages);
        let mut last: Option<u32> = None;
        for _ in 0..npages {
            let p = c.u32()?;
            let inside = changeable.iter().any(|(s, e)| (*s..*e).contains(&(p as usize)));
            if !inside || last.is_some_and(|l| p <= l) {
                return Err("its saved pages are not changeable pages of the image, in order".into());
            }
            saved[p as usize] = true;
            saved_pages.push(p);
            last = Some(p);
        }
        let data = c.take(npages * PAGE)?.to_vec();
        if !c.0.is_empty() {
            return Err("the file has bytes after its end".into());
        }
        Ok((Snapshot { cpus, changeable, saved, saved_pages, data }, header.ready))
    }

    /// A restored vCPU must be in the state the VM gives its guests and user mode can reach:
    /// user mode, long mode with paging, the control registers, descriptor tables and TSS this
    /// backend sets (`vm::configure_sregs`), I/O privilege 0, and no pending event.
    fn check_registers(state: &CpuState) -> std::result::Result<(), String> {
        use sandcell_abi::layout;
        let (s, r, e) = (&state.sregs, &state.regs, &state.events);
        let sregs = s.cs.dpl == 3
            && s.cs.l == 1
            && s.ss.dpl == 3
            && s.cr3 == layout::PAGE_TABLES
            && s.cr0 == super::super::vm::GUEST_CR0
            && s.cr4 == super::super::vm::GUEST_CR4
            && s.efer == super::super::vm::GUEST_EFER
            && (s.gdt.base, s.gdt.limit) == (layout::GDT, 7 * 8 - 1)
            && (s.idt.base, s.idt.limit) == (layout::IDT, 32 * 16 - 1)
            && s.tr.base == layout::TSS;
        // IOPL (bits 12-13) and virtual-8086 mode (bit 17) are out of user mode's reach.
        let flags = r.rflags & 0x2_3000 == 0;
        let events = e.exception.injected == 0
            && e.exception.pending == 0
            && e.nmi.injected == 0
            && e.nmi.pending == 0
            && e.smi.smm == 0
            && e.smi.pending == 0
            && e.triple_fault.pending == 0;
        if sregs && flags && events {
            Ok(())
        } else {
            Err("its vCPU state is not a user-mode state of this VM".into())
        }
    }
}
