//! One micro-VM: KVM objects, guest memory, and the vCPU threads.
//!
//! Each vCPU runs `KVM_RUN` on a thread of its own, under its own seccomp filter (as
//! Firecracker's vCPU threads do): it may only run the vCPU, read its registers, and wait for the
//! run's supervisor thread, which serves every exit. A stop (timeout, interrupt, end of run) sets
//! the stop flag, then `immediate_exit` in each vCPU's `kvm_run`, then sends the thread a signal;
//! a thread resets `immediate_exit` before each entry only if no stop was asked, so a stop that
//! races the entry into the guest is never lost.

use std::os::fd::{AsFd, AsRawFd};
use std::sync::atomic::{AtomicBool, AtomicPtr, Ordering};
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use kvm_bindings::{kvm_regs, kvm_segment, kvm_sregs, kvm_userspace_memory_region};
use kvm_ioctls::{Kvm, VcpuExit, VcpuFd, VmFd};
use sandcell_abi::{layout, EXCEPTION_PORT, HYPERCALL_PORT, MAGIC};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestRegionMmap, MmapRegion};

use super::arena::Arena;
use super::image::{GuestImage, Sharing};
use super::{reaper, sys};
use crate::{BackendKind, Error, Result};

/// The process's handle on `/dev/kvm`, opened once, with its keeper VM.
pub(crate) fn kvm() -> Result<&'static Kvm> {
    static KVM: OnceLock<std::result::Result<Kvm, String>> = OnceLock::new();
    KVM.get_or_init(|| Kvm::new().map_err(|e| format!("cannot open /dev/kvm: {e}")))
        .as_ref()
        .map_err(|reason| Error::BackendUnavailable { backend: BackendKind::MicroVm, reason: reason.clone() })
}

/// An idle VM with one vCPU that lives as long as the process and never runs again: the first
/// single-vCPU machine this process destroys, without its memory.
///
/// Why: KVM switches some of its code paths with static keys that count VMs and vCPUs (for
/// example, vCPUs without an in-kernel local APIC). When the first VM or vCPU on the host
/// appears, or the last one goes, the kernel rewrites its own code and synchronises every CPU
/// with inter-processor interrupts. Without a keeper, every run on an otherwise idle host pays
/// that twice (creating and destroying its VM): measured here, 0.9 ms of a 2.5 ms run, and
/// 0.6 ms of the raw create-run-destroy floor. The keeper holds the counts above zero. It costs
/// two file descriptors and the kernel's memory for one vCPU; it runs no guest code and keeps
/// no guest memory (its memory slot is deleted first, so nothing of its run stays reachable
/// through it). It is adopted rather than created up front: a process that runs one VM (the
/// CLI) then creates one VM, not two (≈ 0.25 ms of the command).
struct Keeper {
    _vcpu: VcpuFd,
    _vm: VmFd,
}

static KEEPER: parking_lot::Mutex<Option<Keeper>> = parking_lot::Mutex::new(None);

impl Keeper {
    /// Keeps `vm` as the keeper if there is none yet and it has one vCPU; otherwise gives
    /// them back. The caller must not run the VM again.
    fn adopt(vm: VmFd, mut vcpus: Vec<VcpuFd>, slots: u32, complete: bool) -> Option<(VmFd, Vec<VcpuFd>)> {
        let mut keeper = KEEPER.lock();
        if keeper.is_some() || vcpus.len() != 1 || !complete {
            return Some((vm, vcpus));
        }
        for slot in 0..slots {
            let none = kvm_userspace_memory_region { slot, ..Default::default() };
            // SAFETY: a zero-sized region deletes the slot; KVM drops its mappings of the memory.
            if unsafe { vm.set_user_memory_region(none) }.is_err() {
                return Some((vm, vcpus));
            }
        }
        let vcpu = vcpus.pop()?;
        *keeper = Some(Keeper { _vcpu: vcpu, _vm: vm });
        None
    }
}

/// The signal that kicks a vCPU thread out of `KVM_RUN`.
fn kick_signal() -> i32 {
    sys::sigrtmin() + 2
}

/// Installs the (empty) kick handler once per process. Without `SA_RESTART`, the signal makes
/// `KVM_RUN` return `EINTR`.
fn install_kick_handler() {
    static ONCE: OnceLock<()> = OnceLock::new();
    ONCE.get_or_init(|| sys::set_empty_handler(kick_signal()));
}

/// A CPU exception inside the guest, as its stub reported it.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Exception {
    pub(crate) vector: u64,
    pub(crate) error_code: u64,
    pub(crate) rip: u64,
    pub(crate) cr2: u64,
}

/// What a vCPU thread tells the supervisor.
pub(crate) enum Event {
    /// A hypercall: the mailbox of `cpu` holds the request.
    Hypercall { cpu: u32 },
    /// A CPU exception in the guest.
    Exception { cpu: u32, exception: Exception },
    /// An exit that ends the run: I/O to an unknown port, triple fault, unexpected exit.
    Fault { cpu: u32, kind: FaultKind, reason: String },
    /// `KVM_RUN` was interrupted (a kick).
    Interrupted { cpu: u32 },
}

/// How a machine backs the image's large code regions (see [`Machine::create`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Code {
    /// Mapped from the image, shared with every machine of the image.
    Shared,
    /// Copied into memory of the machine's own, in a huge page where the host offers one.
    Private,
}

/// A large page of the guest's page tables.
const LARGE_PAGE: u64 = 0x20_0000;

/// What kind of fault ended a vCPU (a VM exit no guest may cause).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum FaultKind {
    /// Port I/O other than a hypercall: a bad host call.
    Port,
    /// An access outside guest memory.
    Memory,
    /// The CPU stopped (triple fault, `hlt` reaching the host) or KVM failed.
    Cpu,
}

/// The supervisor's answer to an event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Reply {
    Resume,
    Quit,
}

/// A VM that is not running: its memory and its vCPUs (see `warm.rs` for machines kept between
/// runs).
pub(crate) struct Machine {
    pub(crate) memory: GuestMemoryMmap,
    /// The mapping behind `memory`.
    arena: Arena,
    /// Where the image's file mappings in the arena end.
    content_end: usize,
    vm: VmFd,
    pub(crate) vcpus: Vec<VcpuFd>,
    /// Whether it has all its vCPUs (a thread that failed keeps its vCPU; such a machine is
    /// only destroyed).
    pub(crate) complete: bool,
    /// Which pages of its memory were resident when last read (see `warm::read_resident`).
    pub(crate) resident: Vec<u8>,
    /// Guest RAM registered with KVM so far (see [`Vm::grow_ram`]).
    ram: RamSlots,
}

/// Guest RAM registered with KVM: `[0, ready)`, in `slots` memory slots (0 to `slots - 1`).
#[derive(Clone, Copy, Debug)]
struct RamSlots {
    ready: u64,
    slots: u32,
    /// The end of guest RAM.
    size: u64,
    /// Where guest RAM is mapped in this process.
    host: u64,
}

/// At most this many memory slots per VM: the last one registers all the RAM left.
const MAX_SLOTS: u32 = 16;

impl RamSlots {
    /// Registers guest RAM up to at least `end` (rounded up, at least doubling what is
    /// registered, never past the end of RAM). Returns where registered RAM now ends.
    fn grow(&mut self, vm: &VmFd, memory: &GuestMemoryMmap, end: u64) -> u64 {
        let end = end.min(self.size);
        if end <= self.ready {
            return self.ready;
        }
        // `size` is at most 2 GiB (`layout::MAX_RAM`): nothing here can overflow.
        let mut to = end.max(self.ready * 2).next_multiple_of(LARGE_PAGE).min(self.size);
        if self.slots + 1 >= MAX_SLOTS {
            to = self.size;
        }
        let slot = kvm_userspace_memory_region {
            slot: self.slots,
            flags: 0,
            guest_phys_addr: self.ready,
            memory_size: to - self.ready,
            userspace_addr: self.host + self.ready,
        };
        // SAFETY: the range is part of the machine's guest memory mapping, which the machine
        // keeps until the VM file descriptor is closed, and overlaps no registered slot.
        if unsafe { vm.set_user_memory_region(slot) }.is_ok() {
            // Then the guest's page tables map it (they did not, so that an access there was a
            // page fault in the guest, not an access to memory KVM would have to emulate).
            if set_heap_entries(memory, self.ready, to, true) {
                self.ready = to;
                self.slots += 1;
            }
        }
        self.ready
    }
}

/// Makes the guest's page-directory entries for the heap's 2 MiB pages in `[from, to)` present
/// (as the image built them) or not present. Returns false if guest memory could not be written.
fn set_heap_entries(memory: &GuestMemoryMmap, from: u64, to: u64, present: bool) -> bool {
    (from..to).step_by(LARGE_PAGE as usize).all(|addr| {
        let (at, entry) = super::image::heap_entry(addr);
        memory.write_obj(if present { entry } else { 0 }, GuestAddress(at)).is_ok()
    })
}

/// A running VM.
pub(crate) struct Vm {
    pub(crate) memory: GuestMemoryMmap,
    /// The mapping behind `memory`.
    arena: Arena,
    /// Where the image's file mappings in the arena end.
    content_end: usize,
    vm: VmFd,
    /// Per vCPU: where its pooled thread hands the vCPU back when the run ends (so that the
    /// `kvm_run` mapping a `Stopper` writes to stays mapped until then), and the channel of
    /// answers to it.
    vcpus: Vec<(Receiver<VcpuExitState>, Sender<Reply>)>,
    immediate_exit: Arc<Vec<AtomicPtr<u8>>>,
    pthreads: Vec<libc::pthread_t>,
    /// Each vCPU thread's CPU clock and its reading when the run began (pooled threads have run
    /// other VMs before).
    clocks: Vec<(libc::clockid_t, Duration)>,
    /// Whether each vCPU has been answered `Quit` (its thread is then out of the guest).
    quit_sent: Vec<AtomicBool>,
    stop: Arc<AtomicBool>,
    pub(crate) events: Receiver<Event>,
    /// The machine's resident map, kept for when it comes back.
    resident: Vec<u8>,
    ram: parking_lot::Mutex<RamSlots>,
}

/// What a vCPU thread hands back when its part of a run ends: the vCPU and the CPU time used.
type VcpuExitState = (VcpuFd, Duration);

fn segment(selector: u16, code: bool, dpl: u8) -> kvm_segment {
    kvm_segment {
        base: 0,
        limit: 0xffff_ffff,
        selector,
        type_: if code { 0xb } else { 0x3 },
        present: 1,
        dpl,
        db: u8::from(!code),
        s: 1,
        l: u8::from(code),
        g: 1,
        avl: 0,
        unusable: 0,
        padding: 0,
    }
}

fn kvm_err(action: &'static str) -> impl Fn(kvm_ioctls::Error) -> Error {
    move |e| Error::setup(action, std::io::Error::from_raw_os_error(e.errno()))
}

impl Machine {
    /// Creates a VM from `image`: guest memory with the image's contents, its vCPUs with their
    /// registers at the program's entry. Nothing runs yet.
    ///
    /// `code` says how the image's large code regions ([`GuestImage::large_code`]) are backed:
    /// [`Code::Shared`] maps them from the image like the rest of its read-only pages (no copy:
    /// what pooled machines use, see `warm.rs`), [`Code::Private`] copies them into a 2 MiB
    /// transparent huge page of the machine's own where the host offers those, so that a VMM
    /// shadowing the guest's page tables maps the whole region on its first fault (a one-shot
    /// run: ≈ 30 fewer faults for the wasm runtime, at ≈ 40 µs each on PVM). Without huge pages
    /// the copy is only a copy.
    pub(crate) fn create(image: &GuestImage, code: Code) -> Result<Machine> {
        let kvm = kvm()?;
        let vm = kvm.create_vm().map_err(kvm_err("create a KVM virtual machine"))?;
        vm.set_tss_address(0xfffb_d000).map_err(kvm_err("set the VM's TSS address"))?;

        // Guest RAM: a clean arena of anonymous memory (see `arena.rs`), with the image's
        // contents mapped over it. Only the ranges with contents come from the image's file:
        // where the rest is anonymous, reading the run's memory use (`mincore`) does not have
        // to look up every page of a 64 MiB file, which cost ≈ 0.15 ms per run.
        let _span = tracing::debug_span!("machine").entered();
        let arena = Arena::take(image.ram as usize)?;
        // SAFETY: the arena is a live anonymous mapping of `ram` bytes with these protections
        // and flags; the machine keeps the arena (which unmaps it) until after the VM is
        // closed, and the region does not unmap it.
        let region = unsafe { MmapRegion::<()>::build_raw(arena.base(), arena.len(), sys::ANON_PROT, sys::ANON_FLAGS) }
            .map_err(|e| Error::setup("map guest memory", std::io::Error::other(e.to_string())))?;
        // The program's read-only pages are mapped shared, straight from the image: KVM maps a
        // guest page (and prefetches its neighbours) only where the host mapping is present and
        // writable, which for a private mapping means a copy of every page; shared, the image's
        // pages serve every run without a copy. Neither the guest (its page tables) nor the host
        // (`GuestImage::writable`, checked on every write the host makes for the guest) writes
        // them.
        for (start, end, sharing) in &image.content {
            let shared = *sharing == Sharing::Shared;
            // SAFETY: the range lies inside the arena, which only this machine uses, which is
            // unmapped or reset as a whole, and whose fresh contents nothing refers to yet; the
            // file is the image, at least `ram` bytes long; shared ranges are never written (see
            // above).
            unsafe { sys::map_file_over(region.as_ptr(), *start, *end, image.memfd.as_fd(), shared) }
                .map_err(|e| Error::setup("map the guest image", e))?;
        }
        let host_addr = region.as_ptr() as u64;
        let code_span = tracing::debug_span!("code").entered();
        if code == Code::Shared {
            image.share_code()?;
        } else {
            for large in &image.large_code {
                let start = large.region;
                // The arena is 2 MiB-aligned where the host gave it so; otherwise the copy still
                // serves, in small pages.
                let at = (host_addr + start) as *mut u8;
                let len = LARGE_PAGE as usize;
                // SAFETY: the region lies inside the arena (below `content_end`, which
                // `Arena::reset_front` replaces after the run), which only this machine uses,
                // and nothing refers to its contents yet.
                if !unsafe { sys::remap_anonymous(at, len) } {
                    return Err(Error::setup("map the guest's code", std::io::Error::last_os_error()));
                }
                sys::advise_huge(at, len);
                // SAFETY: `[at, at+len)` is the fresh read-write anonymous mapping just made, and
                // the code's bytes lie inside it (the image builder cut them from the region).
                let bytes = image.code_bytes(large);
                unsafe {
                    std::ptr::copy_nonoverlapping(bytes.as_ptr(), at.add((large.at - start) as usize), bytes.len())
                };
            }
        }
        drop(code_span);
        let region = GuestRegionMmap::new(region, GuestAddress(0))
            .ok_or_else(|| Error::setup("map guest memory", std::io::Error::other("bad region")))?;
        let memory = GuestMemoryMmap::from_regions(vec![region])
            .map_err(|e| Error::setup("map guest memory", std::io::Error::other(e.to_string())))?;
        // A one-shot run registers the RAM its start needs, the rest as its heap grows (KVM
        // allocates its bookkeeping for a memory slot in proportion to the slot's size: for the
        // default 512 MiB cap on linear memory, ≈ 0.5 ms of every run). A pooled machine has
        // everything registered: a snapshot restored into it may use any of it.
        let ready = if code == Code::Private { image.initial_ram() } else { image.ram };
        let slot = kvm_userspace_memory_region {
            slot: 0,
            flags: 0,
            guest_phys_addr: 0,
            memory_size: ready,
            userspace_addr: host_addr,
        };
        tracing::debug_span!("slot")
            // SAFETY: the region is a live mapping of at least `memory_size` bytes owned by
            // `memory`, which the machine keeps until the VM file descriptor is closed.
            .in_scope(|| unsafe { vm.set_user_memory_region(slot) })
            .map_err(kvm_err("give the VM its memory"))?;
        let ram = RamSlots { ready, slots: 1, size: image.ram, host: host_addr };
        if ready < image.ram && !set_heap_entries(&memory, ready, image.ram / LARGE_PAGE * LARGE_PAGE, false) {
            return Err(Error::setup("map guest memory", std::io::Error::other("cannot write the page tables")));
        }
        // A private code region is a mapping of its own until the arena's front is reset.
        let content_end = match code {
            Code::Private => image.large_code.iter().map(|c| c.region + LARGE_PAGE).fold(image.content_end, u64::max),
            Code::Shared => image.content_end,
        };
        tracing::debug_span!("populate").in_scope(|| {
            for (start, end) in &image.hot {
                // The range lies inside the mapping (the image builder keeps it below `ram`).
                sys::populate_write((host_addr + start) as *mut u8, (end - start) as usize);
            }
        });
        let _vcpu_span = tracing::debug_span!("vcpus").entered();
        let mut vcpus = Vec::new();
        for cpu in 0..image.vcpus {
            let vcpu = vm.create_vcpu(cpu as u64).map_err(kvm_err("create a vCPU"))?;
            let mut sregs = initial_sregs(&vcpu, cpu)?;
            configure_sregs(&mut sregs);
            vcpu.set_sregs(&sregs).map_err(kvm_err("enter 64-bit user mode"))?;
            let regs = kvm_regs {
                rip: image.entry,
                rsp: layout::stack_top(cpu) - 8,
                rflags: 0x2,
                rdi: layout::BOOT_INFO,
                rsi: cpu as u64,
                rdx: image.vcpus as u64,
                ..Default::default()
            };
            vcpu.set_regs(&regs).map_err(kvm_err("set vCPU registers"))?;
            vcpus.push(vcpu);
        }
        Ok(Machine {
            memory,
            arena,
            content_end: content_end as usize,
            vm,
            vcpus,
            complete: true,
            resident: Vec::new(),
            ram,
        })
    }

    /// Writes a run's boot information.
    /// The header's `ram_ready` is this machine's: how much RAM it registered (see `Code`).
    pub(crate) fn write_boot(&self, boot: &[u8]) -> Result<()> {
        self.memory
            .write_slice(boot, GuestAddress(layout::BOOT_INFO))
            .map_err(|_| Error::invalid_program("arguments and environment do not fit the boot area"))?;
        self.memory
            .write_obj(self.ram.ready, GuestAddress(layout::BOOT_INFO + sandcell_abi::BootInfo::RAM_READY_AT))
            .map_err(|_| Error::setup("write the boot information", std::io::Error::other("outside guest memory")))
    }

    /// The host address of guest RAM and its length.
    pub(crate) fn ram(&self) -> (*mut u8, usize) {
        (self.arena.base(), self.arena.len())
    }

    /// Destroys the VM (on the reaper thread when it can) and cleans its memory for reuse.
    pub(crate) fn destroy(self) {
        let Machine { memory, arena, content_end, vm, vcpus, ram, complete, .. } = self;
        drop(memory);
        // Before returning, the arena becomes one plain anonymous mapping again (no image file
        // mapped into it, nothing new in this process's memory map).
        let clean = arena.reset_front(content_end);
        // Only a machine whose vCPU is back (no thread can be running it) may be kept.
        let Some((vm, vcpus)) = Keeper::adopt(vm, vcpus, ram.slots, complete) else {
            // Kept, without its memory: the arena is the run's no more.
            if clean {
                arena.recycle();
            }
            return;
        };
        let fds: Vec<_> = std::iter::once(vm.as_raw_fd()).chain(vcpus.iter().map(|v| v.as_raw_fd())).collect();
        match if clean { reaper::hand_over(&fds, arena) } else { Err(arena) } {
            Ok(handed) => {
                // The reaper destroys the VM and recycles the arena once these copies are
                // closed; closing them is cheap.
                drop(vcpus);
                drop(vm);
                drop(handed);
            }
            Err(arena) => {
                // The VM goes before its memory: unmapping or discarding memory a live VM maps
                // makes KVM zap the guest's mappings first (an MMU-notifier invalidation).
                drop(vcpus);
                drop(vm);
                if clean {
                    arena.recycle();
                }
            }
        }
    }
}

impl Vm {
    /// Creates the VM from `image`, writes the run's boot information, and starts its vCPUs
    /// (they enter the guest at once).
    pub(crate) fn start(image: &GuestImage, boot: &[u8], seccomp: Arc<Vec<seccompiler::sock_filter>>) -> Result<Vm> {
        let machine = Machine::create(image, Code::Private)?;
        if let Err(e) = machine.write_boot(boot) {
            machine.destroy();
            return Err(e);
        }
        Vm::launch(machine, seccomp)
    }

    /// Starts `machine`'s vCPUs from the registers they hold (they enter the guest at once).
    pub(crate) fn launch(machine: Machine, seccomp: Arc<Vec<seccompiler::sock_filter>>) -> Result<Vm> {
        install_kick_handler();
        // All threads first: once the first vCPU is given out, the guest runs.
        let workers = match pool::take(machine.vcpus.len(), &seccomp) {
            Ok(w) => w,
            Err(e) => {
                machine.destroy();
                return Err(e);
            }
        };
        let Machine { memory, arena, content_end, vm, mut vcpus, resident, ram, .. } = machine;
        let count = vcpus.len();
        let exits: Vec<_> =
            vcpus.iter_mut().map(|v| AtomicPtr::new(&mut v.get_kvm_run().immediate_exit as *mut u8)).collect();
        let immediate_exit = Arc::new(exits);
        let stop = Arc::new(AtomicBool::new(false));
        let (events_tx, events) = channel();
        let mut handles = Vec::new();
        let mut pthreads = Vec::new();
        let mut clocks = Vec::new();
        for ((cpu, vcpu), worker) in vcpus.into_iter().enumerate().zip(workers) {
            let (reply_tx, replies) = channel();
            let (done, done_rx) = channel();
            pthreads.push(worker.pthread);
            if count == 1 {
                // One vCPU and this thread take turns (one waits while the other runs), so they
                // share this CPU: handing over then needs no wake-up of another CPU, which costs
                // ≈ 25 µs each way on a virtualised host. Several vCPUs run in parallel and are
                // not pinned (a pin left from an earlier run is lifted).
                worker.pin_here();
            } else {
                worker.unpin();
            }
            if let Some(clock) = worker.clock {
                clocks.push((clock, crate::sys::clock_time(clock).unwrap_or_default()));
            }
            worker.give(pool::Job {
                cpu: cpu as u32,
                vcpu,
                memory: memory.clone(),
                events: events_tx.clone(),
                replies,
                stop: stop.clone(),
                exits: immediate_exit.clone(),
                done,
            });
            handles.push((done_rx, reply_tx));
        }
        let quit_sent = handles.iter().map(|_| AtomicBool::new(false)).collect();
        Ok(Vm {
            memory,
            arena,
            content_end,
            vm,
            vcpus: handles,
            immediate_exit,
            pthreads,
            clocks,
            quit_sent,
            stop,
            events,
            resident,
            ram: parking_lot::Mutex::new(ram),
        })
    }

    /// Makes guest RAM usable up to at least `end` if it is not yet (`op::RAM`), as far as the
    /// end of guest RAM. Returns where usable RAM now ends.
    pub(crate) fn grow_ram(&self, end: u64) -> u64 {
        self.ram.lock().grow(&self.vm, &self.memory, end)
    }

    /// Where the guest RAM registered so far ends (the guest can reach nothing past it).
    pub(crate) fn ram_ready(&self) -> u64 {
        self.ram.lock().ready
    }

    /// Makes every vCPU stop at its next entry into the guest, without running an instruction:
    /// one answered now completes its exit (a hypercall's `out`) and comes back, so that its
    /// registers can be read as the guest would continue (as KVM's API asks before reading
    /// state after an I/O exit).
    pub(crate) fn stop_after_reply(&self) {
        self.stop.store(true, Ordering::SeqCst);
    }

    /// A handle that stops this VM's vCPUs from any thread (valid until `finish`).
    pub(crate) fn stopper(&self) -> Stopper {
        Stopper { stop: self.stop.clone(), exits: self.immediate_exit.clone(), threads: self.pthreads.clone() }
    }

    /// The CPU-time clocks of the vCPU threads with their readings at the start of the run
    /// (valid until `finish`).
    pub(crate) fn cpu_clocks(&self) -> Vec<(libc::clockid_t, Duration)> {
        self.clocks.clone()
    }

    /// Answers vCPU `cpu`.
    pub(crate) fn reply(&self, cpu: u32, reply: Reply) {
        if let Some((_, tx)) = self.vcpus.get(cpu as usize) {
            if reply == Reply::Quit {
                self.quit_sent[cpu as usize].store(true, Ordering::SeqCst);
            }
            let _ = tx.send(reply);
        }
    }

    /// Stops every vCPU and waits until each thread has handed its vCPU back, then destroys
    /// the VM. The caller must have disarmed any external `Stopper` first. Returns the CPU time
    /// the vCPU threads used for this run and the guest memory it used.
    pub(crate) fn finish(self) -> (Duration, u64) {
        let (cpu, machine) = self.finish_keep();
        let peak = resident_bytes(&machine);
        machine.destroy();
        (cpu, peak)
    }

    /// As [`Vm::finish`], but keeps the VM: the machine comes back with the vCPUs its threads
    /// handed back, as the run left them (all of them unless a thread failed: see
    /// [`Machine::complete`]). A thread in the guest is kicked out; a thread waiting for an
    /// answer finds `Quit` queued; either way it ends its part of the run.
    pub(crate) fn finish_keep(self) -> (Duration, Machine) {
        self.stop.store(true, Ordering::SeqCst);
        for (cpu, (_, tx)) in self.vcpus.iter().enumerate() {
            // A vCPU already told to quit is out of the guest: it needs no kick.
            if !self.quit_sent[cpu].load(Ordering::SeqCst) {
                self.stopper().kick(cpu);
                let _ = tx.send(Reply::Quit);
            }
        }
        let mut cpu = Duration::ZERO;
        let mut vcpus = Vec::with_capacity(self.vcpus.len());
        for (done, _) in self.vcpus {
            // The kick cannot reach the thread's next run: the signal was pending before `Quit`
            // was sent, so it is delivered before the thread can see `Quit` and hand the vCPU
            // back.
            if let Ok((vcpu, used)) = done.recv() {
                cpu += used;
                vcpus.push(vcpu);
            }
        }
        let Vm { memory, arena, content_end, vm, pthreads, resident, ram, .. } = self;
        let ram = ram.into_inner();
        let complete = vcpus.len() == pthreads.len();
        (cpu, Machine { memory, arena, content_end, vm, vcpus, complete, resident, ram })
    }
}

/// Stops a VM's vCPUs.
#[derive(Clone)]
pub(crate) struct Stopper {
    stop: Arc<AtomicBool>,
    exits: Arc<Vec<AtomicPtr<u8>>>,
    threads: Vec<libc::pthread_t>,
}

// SAFETY: pthread_t values are plain identifiers; the pointers are only written while the vCPU
// threads (which own the `kvm_run` mappings) are alive: `Vm::finish` joins them only after every
// stopper is disarmed (RunControl::disarm waits for a running one).
unsafe impl Send for Stopper {}
// SAFETY: as above; all writes are atomic.
unsafe impl Sync for Stopper {}

impl Stopper {
    pub(crate) fn stop(&self) {
        self.stop.store(true, Ordering::SeqCst);
        for cpu in 0..self.threads.len() {
            self.kick(cpu);
        }
    }

    /// Takes vCPU `cpu` out of the guest (the stop flag must be set already).
    fn kick(&self, cpu: usize) {
        let (Some(exit), Some(thread)) = (self.exits.get(cpu), self.threads.get(cpu)) else { return };
        let p = exit.load(Ordering::SeqCst);
        // SAFETY: see the `Send` impl: the `kvm_run` mapping is alive; the byte is only read by
        // the kernel at the next KVM_RUN.
        unsafe { std::ptr::write_volatile(p, 1) };
        // SAFETY: the thread has not handed its vCPU back yet (same argument), so it is alive.
        unsafe { sys::signal_thread(*thread, kick_signal()) };
    }
}

/// A new vCPU's special registers (its reset state). vCPU 0's are the same for every VM, so they
/// are read once (one ioctl fewer per run); other vCPUs differ (the APIC's bootstrap flag).
fn initial_sregs(vcpu: &VcpuFd, cpu: u32) -> Result<kvm_sregs> {
    static FIRST: OnceLock<kvm_sregs> = OnceLock::new();
    if cpu != 0 {
        return vcpu.get_sregs().map_err(kvm_err("read vCPU state"));
    }
    if let Some(s) = FIRST.get() {
        return Ok(*s);
    }
    let s = vcpu.get_sregs().map_err(kvm_err("read vCPU state"))?;
    Ok(*FIRST.get_or_init(|| s))
}

/// The guest's control registers (see `configure_sregs`).
pub(crate) const GUEST_CR0: u64 = 0x8005_0033; // PG | AM | WP | NE | ET | MP | PE
pub(crate) const GUEST_CR4: u64 = 0x620; // PAE | OSFXSR | OSXMMEXCPT
pub(crate) const GUEST_EFER: u64 = 0xd00; // NXE | LMA | LME

fn configure_sregs(s: &mut kvm_sregs) {
    // Long mode, paging, write protection in supervisor mode, NX; the VM starts in user mode.
    s.cr0 = GUEST_CR0;
    s.cr4 = GUEST_CR4;
    s.efer = GUEST_EFER;
    s.cr3 = layout::PAGE_TABLES;
    s.cs = segment(0x1b, true, 3);
    let data = segment(0x23, false, 3);
    s.ds = data;
    s.es = data;
    s.fs = data;
    s.gs = data;
    s.ss = data;
    s.gdt.base = layout::GDT;
    s.gdt.limit = 7 * 8 - 1;
    s.idt.base = layout::IDT;
    s.idt.limit = 32 * 16 - 1;
    s.tr = kvm_segment {
        base: layout::TSS,
        limit: 0x68 + 0x2000,
        selector: 0x28,
        type_: 0xb,
        present: 1,
        dpl: 0,
        db: 0,
        s: 0,
        l: 0,
        g: 0,
        avl: 0,
        unusable: 0,
        padding: 0,
    };
    s.ldt.unusable = 1;
}

/// Runs one vCPU of one VM until the supervisor says `Quit` (on a pooled, filtered thread).
fn vcpu_thread(
    cpu: u32,
    mut vcpu: VcpuFd,
    memory: &GuestMemoryMmap,
    events: &Sender<Event>,
    replies: &Receiver<Reply>,
    stop: &AtomicBool,
    immediate_exit: &AtomicPtr<u8>,
) -> VcpuFd {
    let exit_flag = immediate_exit.load(Ordering::SeqCst);
    loop {
        // Enter the guest unless a stop was asked (see the module documentation).
        // SAFETY: `exit_flag` points into this thread's own `kvm_run` mapping.
        unsafe { std::ptr::write_volatile(exit_flag, 0) };
        std::sync::atomic::fence(Ordering::SeqCst);
        if stop.load(Ordering::SeqCst) {
            // SAFETY: as above.
            unsafe { std::ptr::write_volatile(exit_flag, 1) };
        }
        let event = match vcpu.run() {
            Ok(VcpuExit::IoOut(HYPERCALL_PORT, data))
                if data.len() == 4 && u32::from_le_bytes(data.try_into().unwrap_or_default()) == MAGIC =>
            {
                Event::Hypercall { cpu }
            }
            Ok(VcpuExit::IoOut(EXCEPTION_PORT, _)) => match read_exception(&vcpu, memory) {
                Some(exception) => Event::Exception { cpu, exception },
                None => Event::Fault {
                    cpu,
                    kind: FaultKind::Port,
                    reason: format!("user-mode I/O to port {EXCEPTION_PORT:#x}"),
                },
            },
            Ok(VcpuExit::IoOut(port, data)) => Event::Fault {
                cpu,
                kind: FaultKind::Port,
                reason: format!("I/O write to port {port:#x} ({} bytes)", data.len()),
            },
            Ok(VcpuExit::IoIn(port, data)) => Event::Fault {
                cpu,
                kind: FaultKind::Port,
                reason: format!("I/O read from port {port:#x} ({} bytes)", data.len()),
            },
            Ok(VcpuExit::MmioRead(addr, _)) | Ok(VcpuExit::MmioWrite(addr, _)) => Event::Fault {
                cpu,
                kind: FaultKind::Memory,
                reason: format!("access to {addr:#x}, outside guest memory"),
            },
            Ok(VcpuExit::Shutdown) => Event::Fault { cpu, kind: FaultKind::Cpu, reason: "triple fault".into() },
            Ok(VcpuExit::Hlt) => Event::Fault { cpu, kind: FaultKind::Cpu, reason: "halted".into() },
            Ok(VcpuExit::Intr) => Event::Interrupted { cpu },
            Ok(VcpuExit::FailEntry(reason, _)) => Event::Fault {
                cpu,
                kind: FaultKind::Cpu,
                reason: format!("the VM could not be entered (reason {reason:#x})"),
            },
            Ok(other) => Event::Fault { cpu, kind: FaultKind::Cpu, reason: format!("unexpected VM exit {other:?}") },
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => Event::Interrupted { cpu },
            Err(e) => Event::Fault { cpu, kind: FaultKind::Cpu, reason: format!("KVM_RUN failed: {e}") },
        };
        if events.send(event).is_err() {
            return vcpu;
        }
        match replies.recv() {
            Ok(Reply::Resume) => {}
            Ok(Reply::Quit) | Err(_) => return vcpu,
        }
    }
}

/// Reads the exception frame the stub left on the kernel stack: [vector, error code, rip, cs,
/// rflags, rsp, ss]. Only trusted when the vCPU is in kernel mode, i.e. in a stub.
fn read_exception(vcpu: &VcpuFd, memory: &GuestMemoryMmap) -> Option<Exception> {
    let sregs = vcpu.get_sregs().ok()?;
    if sregs.cs.dpl != 0 {
        return None;
    }
    let regs = vcpu.get_regs().ok()?;
    let at = regs.rsp;
    if !(layout::KERNEL_STACK_TOP - 0x1000..layout::KERNEL_STACK_TOP - 24).contains(&at) {
        return None;
    }
    let word = |i: u64| memory.read_obj::<u64>(GuestAddress(at + 8 * i)).ok();
    Some(Exception { vector: word(0)?, error_code: word(1)?, rip: word(2)?, cr2: sregs.cr2 })
}

/// The pool of vCPU threads.
///
/// A thread is started with the vCPU seccomp filter applied, runs one vCPU of one VM at a time,
/// and then waits for the next: starting a thread and installing its filter cost ≈ 0.2 ms, which
/// every run paid before. A thread keeps nothing of a run: the vCPU, the guest memory mapping
/// and the channels are handed back or dropped when its part of the run ends. Threads idle for
/// [`IDLE_LIFETIME`] end, so a burst of concurrent VMs does not leave threads behind for long.
pub(crate) mod pool {
    use super::*;
    use parking_lot::Mutex;
    use std::sync::mpsc::RecvTimeoutError;

    /// How long an idle vCPU thread waits for work before it ends.
    const IDLE_LIFETIME: Duration = Duration::from_secs(10);

    /// One vCPU of one run.
    pub(super) struct Job {
        pub(super) cpu: u32,
        pub(super) vcpu: VcpuFd,
        pub(super) memory: GuestMemoryMmap,
        pub(super) events: Sender<Event>,
        pub(super) replies: Receiver<Reply>,
        pub(super) stop: Arc<AtomicBool>,
        pub(super) exits: Arc<Vec<AtomicPtr<u8>>>,
        pub(super) done: Sender<VcpuExitState>,
    }

    /// An idle vCPU thread.
    #[derive(Clone)]
    pub(super) struct Worker {
        id: u64,
        jobs: Sender<Job>,
        pub(super) pthread: libc::pthread_t,
        pub(super) clock: Option<libc::clockid_t>,
        tid: libc::pid_t,
        /// The CPUs the thread may run on when not pinned.
        cpus: libc::cpu_set_t,
    }

    // SAFETY: `pthread_t` is a plain identifier of a live thread (a worker ends only after
    // removing itself from the idle list, so a `Worker` taken from it names a live thread).
    unsafe impl Send for Worker {}

    static IDLE: Mutex<Vec<Worker>> = Mutex::new(Vec::new());

    impl Worker {
        /// Pins the (waiting) worker to the CPU the calling thread is on, if that CPU is one it
        /// may use. The pin stays when the job ends (an idle thread uses no CPU); the next run
        /// pins the thread again or lifts the pin. Best effort: a failure only costs speed.
        pub(super) fn pin_here(&self) {
            crate::sys::pin_to_current_cpu(self.tid, &self.cpus);
        }

        /// Lets the (waiting) worker run on any CPU it may use.
        pub(super) fn unpin(&self) {
            sys::set_affinity(self.tid, &self.cpus);
        }

        /// Hands the worker its job (it has been taken from the idle list, so it is waiting).
        pub(super) fn give(self, job: Job) {
            // The worker only ends after removing itself from the idle list, which it is not in.
            let _ = self.jobs.send(job);
        }
    }

    /// Starts one vCPU thread in the background if none is idle, so that a process's first run
    /// finds one (starting it and applying its seccomp filter cost that run ≈ 0.2 ms otherwise).
    /// The main thread pays one thread creation; the rest runs on another CPU while it builds
    /// the guest image.
    pub(crate) fn prewarm(seccomp: Arc<Vec<seccompiler::sock_filter>>) {
        static STARTED: AtomicBool = AtomicBool::new(false);
        if !IDLE.lock().is_empty() || STARTED.swap(true, Ordering::SeqCst) {
            return;
        }
        let _ = std::thread::Builder::new().name("sandcell-prewarm".into()).spawn(move || {
            if let Ok(worker) = spawn(&seccomp) {
                IDLE.lock().push(worker);
            }
        });
    }

    /// `n` vCPU threads: idle ones, or new ones. On failure the ones taken go back.
    pub(super) fn take(n: usize, seccomp: &Arc<Vec<seccompiler::sock_filter>>) -> Result<Vec<Worker>> {
        let mut taken = {
            let mut idle = IDLE.lock();
            let keep = idle.len().saturating_sub(n);
            idle.split_off(keep)
        };
        while taken.len() < n {
            match spawn(seccomp) {
                Ok(worker) => taken.push(worker),
                Err(e) => {
                    IDLE.lock().extend(taken);
                    return Err(e);
                }
            }
        }
        Ok(taken)
    }

    fn spawn(seccomp: &Arc<Vec<seccompiler::sock_filter>>) -> Result<Worker> {
        static NEXT_ID: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
        let (jobs, inbox) = channel::<Job>();
        let (ready_tx, ready) = channel::<std::result::Result<Worker, std::io::Error>>();
        let seccomp = seccomp.clone();
        let own_jobs = jobs.clone();
        std::thread::Builder::new()
            .name("sandcell-vcpu".into())
            .spawn(move || {
                let pthread = sys::pthread_self();
                let me = Worker {
                    id,
                    jobs: own_jobs,
                    pthread,
                    clock: crate::sys::current_thread_cpu_clock(),
                    tid: sys::gettid(),
                    cpus: crate::sys::allowed_cpus(),
                };
                // From here this thread may only run vCPUs and talk to supervisors.
                if let Err(e) = super::super::seccomp_vcpu::apply(&seccomp) {
                    let _ = ready_tx.send(Err(e));
                    return;
                }
                let _ = ready_tx.send(Ok(me.clone()));
                drop(ready_tx);
                serve(me, inbox);
            })
            .map_err(|e| Error::setup("start a vCPU thread", e))?;
        match ready.recv() {
            Ok(Ok(worker)) => Ok(worker),
            Ok(Err(e)) => Err(Error::setup("apply the vCPU threads' seccomp filter", e)),
            Err(_) => Err(Error::setup("start a vCPU thread", std::io::Error::other("the thread ended at once"))),
        }
    }

    fn serve(me: Worker, inbox: Receiver<Job>) {
        loop {
            let job = match inbox.recv_timeout(IDLE_LIFETIME) {
                Ok(job) => job,
                Err(RecvTimeoutError::Timeout) => {
                    let mut idle = IDLE.lock();
                    match idle.iter().position(|w| w.id == me.id) {
                        Some(at) => {
                            idle.swap_remove(at);
                            return;
                        }
                        // Taken from the list just now: its job is on the way.
                        None => continue,
                    }
                }
                Err(RecvTimeoutError::Disconnected) => return,
            };
            let before = crate::sys::thread_cpu_time();
            let Job { cpu, vcpu, memory, events, replies, stop, exits, done } = job;
            let vcpu = vcpu_thread(cpu, vcpu, &memory, &events, &replies, &stop, &exits[cpu as usize]);
            let used = crate::sys::thread_cpu_time().saturating_sub(before);
            // Let go of everything of this run before taking the next.
            drop((memory, events, replies, stop, exits));
            IDLE.lock().push(me.clone());
            let _ = done.send((vcpu, used));
        }
    }
}

/// Pages of guest RAM the guest touched (resident in the private mapping).
pub(crate) fn resident_bytes(machine: &Machine) -> u64 {
    let memory = &machine.memory;
    let Ok(base) = memory.get_host_address(GuestAddress(0)) else { return 0 };
    // Only registered RAM: the guest cannot touch the rest, nor the host for it.
    let len = (memory.last_addr().0 as usize + 1).min(machine.ram.ready as usize);
    let pages = len.div_ceil(4096);
    let mut vec = vec![0u8; pages];
    // `base..base+len` is the guest RAM mapping, alive while `memory` is; `vec` has one byte per
    // page.
    if !sys::mincore(base, len, &mut vec) {
        return 0;
    }
    vec.iter().filter(|b| **b & 1 != 0).count() as u64 * 4096
}
