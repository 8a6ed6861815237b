//! One micro-VM: KVM objects, guest memory, and the vCPU threads.
//!
//! Each vCPU runs `KVM_RUN` on a thread of its own, under its own seccomp filter (as
//! Firecracker's vCPU threads do): it may only run the vCPU, read its registers, and wait for the
//! run's supervisor thread, which serves every exit. A stop (timeout, interrupt, end of run) sets
//! the stop flag, then `immediate_exit` in each vCPU's `kvm_run`, then sends the thread a signal;
//! a thread resets `immediate_exit` before each entry only if no stop was asked, so a stop that
//! races the entry into the guest is never lost.

use std::os::unix::thread::JoinHandleExt;
use std::sync::atomic::{AtomicBool, AtomicPtr, Ordering};
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::{Arc, OnceLock};
use std::thread::JoinHandle;
use std::time::Duration;

use kvm_bindings::{kvm_regs, kvm_segment, kvm_sregs, kvm_userspace_memory_region};
use kvm_ioctls::{Kvm, VcpuExit, VcpuFd, VmFd};
use sandcell_abi::{layout, EXCEPTION_PORT, HYPERCALL_PORT, MAGIC};
use vm_memory::{Bytes, FileOffset, GuestAddress, GuestMemoryMmap, GuestRegionMmap, MmapRegion};

use super::image::GuestImage;
use crate::{BackendKind, Error, Result};

/// The process's handle on `/dev/kvm`, opened once.
pub(crate) fn kvm() -> Result<&'static Kvm> {
    static KVM: OnceLock<std::result::Result<Kvm, String>> = OnceLock::new();
    KVM.get_or_init(|| Kvm::new().map_err(|e| format!("cannot open /dev/kvm: {e}")))
        .as_ref()
        .map_err(|reason| Error::BackendUnavailable { backend: BackendKind::MicroVm, reason: reason.clone() })
}

/// The signal that kicks a vCPU thread out of `KVM_RUN`.
fn kick_signal() -> i32 {
    libc::SIGRTMIN() + 2
}

extern "C" fn on_kick(_: libc::c_int) {}

/// Installs the (empty) kick handler once per process. Without `SA_RESTART`, the signal makes
/// `KVM_RUN` return `EINTR`.
fn install_kick_handler() {
    static ONCE: OnceLock<()> = OnceLock::new();
    ONCE.get_or_init(|| {
        // SAFETY: a sigaction with an async-signal-safe empty handler.
        unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = on_kick as *const () as usize;
            libc::sigemptyset(&mut sa.sa_mask);
            libc::sigaction(kick_signal(), &sa, std::ptr::null_mut());
        }
    });
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
    Fault { cpu: u32, reason: String },
    /// `KVM_RUN` was interrupted (a kick).
    Interrupted { cpu: u32 },
}

/// The supervisor's answer to an event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Reply {
    Resume,
    Quit,
}

/// A running VM.
pub(crate) struct Vm {
    pub(crate) memory: GuestMemoryMmap,
    _vm: VmFd,
    /// Each thread returns its vCPU, so that the `kvm_run` mapping a `Stopper` writes to stays
    /// mapped until the thread is joined, and the CPU time it used (its clock cannot be read
    /// from outside once it has exited).
    threads: Vec<(JoinHandle<VcpuExitState>, Sender<Reply>)>,
    immediate_exit: Arc<Vec<AtomicPtr<u8>>>,
    pthreads: Vec<libc::pthread_t>,
    stop: Arc<AtomicBool>,
    pub(crate) events: Receiver<Event>,
}

/// What a vCPU thread hands back when it ends: its vCPU and the CPU time it used.
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

impl Vm {
    /// Creates the VM from `image`, writes the run's boot information, and starts its vCPUs
    /// (they enter the guest at once).
    pub(crate) fn start(image: &GuestImage, boot: &[u8], seccomp: Arc<Vec<seccompiler::sock_filter>>) -> Result<Vm> {
        let kvm = kvm()?;
        let vm = kvm.create_vm().map_err(kvm_err("create a KVM virtual machine"))?;
        vm.set_tss_address(0xfffb_d000).map_err(kvm_err("set the VM's TSS address"))?;

        // Guest RAM: the image, mapped copy-on-write.
        let file = image.memfd.try_clone().map_err(|e| Error::setup("duplicate the guest image", e))?;
        let region = MmapRegion::<()>::build(
            Some(FileOffset::new(file, 0)),
            image.ram as usize,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_NORESERVE,
        )
        .map_err(|e| Error::setup("map guest memory", std::io::Error::other(e.to_string())))?;
        let host_addr = region.as_ptr() as u64;
        let region = GuestRegionMmap::new(region, GuestAddress(0))
            .ok_or_else(|| Error::setup("map guest memory", std::io::Error::other("bad region")))?;
        let memory = GuestMemoryMmap::from_regions(vec![region])
            .map_err(|e| Error::setup("map guest memory", std::io::Error::other(e.to_string())))?;
        let slot = kvm_userspace_memory_region {
            slot: 0,
            flags: 0,
            guest_phys_addr: 0,
            memory_size: image.ram,
            userspace_addr: host_addr,
        };
        // SAFETY: the region is a live mapping of exactly `memory_size` bytes owned by `memory`,
        // which this `Vm` keeps until the VM file descriptor is closed.
        unsafe { vm.set_user_memory_region(slot) }.map_err(kvm_err("give the VM its memory"))?;
        memory
            .write_slice(boot, GuestAddress(layout::BOOT_INFO))
            .map_err(|_| Error::invalid_program("arguments and environment do not fit the boot area"))?;

        install_kick_handler();
        let stop = Arc::new(AtomicBool::new(false));
        let (events_tx, events) = channel();
        let mut vcpus = Vec::new();
        let mut exits = Vec::new();
        for cpu in 0..image.vcpus {
            let mut vcpu = vm.create_vcpu(cpu as u64).map_err(kvm_err("create a vCPU"))?;
            let mut sregs = vcpu.get_sregs().map_err(kvm_err("read vCPU state"))?;
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
            exits.push(AtomicPtr::new(&mut vcpu.get_kvm_run().immediate_exit as *mut u8));
            vcpus.push(vcpu);
        }
        let immediate_exit = Arc::new(exits);
        let mut threads = Vec::new();
        let mut pthreads = Vec::new();
        for (cpu, vcpu) in vcpus.into_iter().enumerate() {
            let (reply_tx, reply_rx) = channel();
            let events = events_tx.clone();
            let stop = stop.clone();
            let exits = immediate_exit.clone();
            let seccomp = seccomp.clone();
            let memory = memory.clone();
            let handle = std::thread::Builder::new()
                .name(format!("sandcell-vcpu{cpu}"))
                .spawn(move || {
                    let vcpu = vcpu_thread(cpu as u32, vcpu, &memory, &events, &reply_rx, &stop, &exits[cpu], &seccomp);
                    (vcpu, crate::sys::thread_cpu_time())
                })
                .map_err(|e| Error::setup("start a vCPU thread", e))?;
            pthreads.push(handle.as_pthread_t());
            threads.push((handle, reply_tx));
        }
        Ok(Vm { memory, _vm: vm, threads, immediate_exit, pthreads, stop, events })
    }

    /// A handle that stops this VM's vCPUs from any thread (valid until `finish`).
    pub(crate) fn stopper(&self) -> Stopper {
        Stopper { stop: self.stop.clone(), exits: self.immediate_exit.clone(), threads: self.pthreads.clone() }
    }

    /// The CPU-time clocks of the vCPU threads (valid until `finish`).
    pub(crate) fn cpu_clocks(&self) -> Vec<libc::clockid_t> {
        self.pthreads
            .iter()
            .filter_map(|t| {
                let mut clock: libc::clockid_t = 0;
                // SAFETY: the thread has not been joined; `clock` is a valid out-pointer.
                (unsafe { libc::pthread_getcpuclockid(*t, &mut clock) } == 0).then_some(clock)
            })
            .collect()
    }

    /// Answers vCPU `cpu`.
    pub(crate) fn reply(&self, cpu: u32, reply: Reply) {
        if let Some((_, tx)) = self.threads.get(cpu as usize) {
            let _ = tx.send(reply);
        }
    }

    /// Stops every vCPU and waits for the threads. The caller must have disarmed any external
    /// `Stopper` first. A thread in the guest is kicked out; a thread waiting for an answer
    /// finds `Quit` queued; either way it ends.
    /// Returns the CPU time the vCPU threads used.
    pub(crate) fn finish(self) -> Duration {
        self.stopper().stop();
        for (_, tx) in &self.threads {
            let _ = tx.send(Reply::Quit);
        }
        let mut cpu = Duration::ZERO;
        for (handle, _) in self.threads {
            // The vCPU (and its `kvm_run` mapping) is dropped here, after every kick.
            if let Ok((vcpu, used)) = handle.join() {
                cpu += used;
                drop(vcpu);
            }
        }
        cpu
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
        for (exit, thread) in self.exits.iter().zip(&self.threads) {
            let p = exit.load(Ordering::SeqCst);
            // SAFETY: see the `Send` impl: the `kvm_run` mapping is alive; the byte is only
            // read by the kernel at the next KVM_RUN.
            unsafe { std::ptr::write_volatile(p, 1) };
            // SAFETY: the thread has not been joined yet (same argument).
            unsafe { libc::pthread_kill(*thread, kick_signal()) };
        }
    }
}

fn configure_sregs(s: &mut kvm_sregs) {
    // Long mode, paging, write protection in supervisor mode, NX; the VM starts in user mode.
    s.cr0 = 0x8005_0033; // PG | AM | WP | NE | ET | MP | PE
    s.cr4 = 0x620; // PAE | OSFXSR | OSXMMEXCPT
    s.efer = 0xd00; // NXE | LMA | LME
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

#[allow(clippy::too_many_arguments)]
fn vcpu_thread(
    cpu: u32,
    mut vcpu: VcpuFd,
    memory: &GuestMemoryMmap,
    events: &Sender<Event>,
    replies: &Receiver<Reply>,
    stop: &AtomicBool,
    immediate_exit: &AtomicPtr<u8>,
    seccomp: &[seccompiler::sock_filter],
) -> VcpuFd {
    // From here this thread may only run the vCPU and talk to the supervisor.
    if super::seccomp_vcpu::apply(seccomp).is_err() {
        let _ = events.send(Event::Fault { cpu, reason: "cannot apply the vCPU thread's seccomp filter".into() });
        let _ = replies.recv();
        return vcpu;
    }
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
                None => Event::Fault { cpu, reason: format!("user-mode I/O to port {EXCEPTION_PORT:#x}") },
            },
            Ok(VcpuExit::IoOut(port, data)) => {
                Event::Fault { cpu, reason: format!("I/O write to port {port:#x} ({} bytes)", data.len()) }
            }
            Ok(VcpuExit::IoIn(port, data)) => {
                Event::Fault { cpu, reason: format!("I/O read from port {port:#x} ({} bytes)", data.len()) }
            }
            Ok(VcpuExit::MmioRead(addr, _)) | Ok(VcpuExit::MmioWrite(addr, _)) => {
                Event::Fault { cpu, reason: format!("access to {addr:#x}, outside guest memory") }
            }
            Ok(VcpuExit::Shutdown) => Event::Fault { cpu, reason: "triple fault".into() },
            Ok(VcpuExit::Hlt) => Event::Fault { cpu, reason: "halted".into() },
            Ok(VcpuExit::Intr) => Event::Interrupted { cpu },
            Ok(VcpuExit::FailEntry(reason, _)) => {
                Event::Fault { cpu, reason: format!("the VM could not be entered (reason {reason:#x})") }
            }
            Ok(other) => Event::Fault { cpu, reason: format!("unexpected VM exit {other:?}") },
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => Event::Interrupted { cpu },
            Err(e) => Event::Fault { cpu, reason: format!("KVM_RUN failed: {e}") },
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
