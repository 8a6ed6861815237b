//! The guest SDK: write a program that runs inside a sandcell micro-VM.
//!
//! A guest is a freestanding x86-64 program (`#![no_std]`, `#![no_main]`, target
//! `x86_64-unknown-none`). It runs in 64-bit user mode inside its own KVM virtual machine, with
//! no operating system: everything it asks of the outside world goes through the few calls here.
//! Leaving the VM is the expensive part of a call (tens of microseconds on some hosts), so the
//! SDK leaves it only when it must: arguments, environment, stdin (as much as fits) and the names
//! of the host functions are in guest memory when the guest starts; stdout is buffered and its
//! last part goes out with the exit. A hello-world guest leaves its VM once.
//!
//! ```ignore
//! #![no_std]
//! #![no_main]
//! sandcell_guest::entry!(main);
//!
//! fn main() -> i32 {
//!     sandcell_guest::println!("Hello from a micro-VM, {} arguments", sandcell_guest::args().count());
//!     0
//! }
//! ```
//!
//! Build with `cargo build --release --target x86_64-unknown-none` and run the ELF with
//! `sandcell run --backend microvm target/x86_64-unknown-none/release/<name>`.
#![no_std]

#[cfg(feature = "alloc")]
extern crate alloc;

use core::fmt;

pub use sandcell_abi as abi;
use sandcell_abi::{layout, op, Mailbox, HYPERCALL_PORT, MAGIC, MAILBOX_BYTES, VERSION};

/// The vCPU this code runs on (0 for single-vCPU guests). Derived from the stack pointer: each
/// vCPU has its own stack region.
#[inline]
pub fn cpu_id() -> u32 {
    let sp: u64;
    // SAFETY: reads the stack pointer; no memory access.
    unsafe { core::arch::asm!("mov {}, rsp", out(reg) sp, options(nomem, nostack, preserves_flags)) };
    (sp.saturating_sub(layout::STACKS + 1) / layout::STACK_STRIDE) as u32
}

/// Makes a hypercall from this vCPU: fills its mailbox, rings the doorbell, reads the answer.
///
/// # Safety
/// The arguments must describe the call as the ABI says; buffers must be valid guest memory.
pub unsafe fn hypercall(op: u16, args: &[u64]) -> (i64, u64) {
    let mut m = Mailbox { magic: MAGIC, version: VERSION, op, ..Mailbox::default() };
    let n = args.len().min(m.args.len());
    m.args[..n].copy_from_slice(&args[..n]);
    let bytes = m.to_bytes();
    let mailbox = layout::mailbox(cpu_id()) as *mut u8;
    // SAFETY: the mailbox page is mapped read-write for the guest; this vCPU's slot is its own.
    unsafe {
        for (i, b) in bytes.iter().enumerate() {
            core::ptr::write_volatile(mailbox.add(i), *b);
        }
        core::arch::asm!("out dx, eax", in("dx") HYPERCALL_PORT, in("eax") MAGIC, options(nostack, preserves_flags));
        let mut back = [0u8; MAILBOX_BYTES];
        for (i, b) in back.iter_mut().enumerate() {
            *b = core::ptr::read_volatile(mailbox.add(i));
        }
        let m = Mailbox::from_bytes(&back);
        (m.ret, m.ret2)
    }
}

const STREAM_BUF: usize = 4096;

/// Bytes at the top of each vCPU's stack region that hold its stdout buffer and its length,
/// set aside by [`entry!`] before the program's code runs. Keeping the buffer there rather than
/// in a static keeps the program's own data small, and puts the buffer next to the top of the
/// stack, in pages every run touches anyway: on a host that shadows guest page tables each
/// distinct group of pages a guest touches costs a VM exit (≈ 25 µs on PVM).
pub const STREAM_RESERVE: usize = STREAM_BUF + 64;

/// This vCPU's buffer and its length: `[top - STREAM_RESERVE, top - 64)` and `top - 64`.
fn slot() -> (&'static mut [u8; STREAM_BUF], &'static mut usize) {
    let top = layout::stack_top(cpu_id() % layout::MAX_VCPUS) as usize;
    let buf = (top - STREAM_RESERVE) as *mut [u8; STREAM_BUF];
    let len = (top - 64) as *mut usize;
    // SAFETY: `entry!` moved this vCPU's stack below `top - STREAM_RESERVE` before any other
    // code ran, so these bytes (mapped read-write in every stack region) belong to the buffer
    // alone; only the current vCPU uses its own, and it holds these references only within one
    // call of `flush` or `write_stdout` (no reentrancy: they call nothing that writes).
    unsafe { (&mut *buf, &mut *len) }
}

fn write_raw(fd: u64, bytes: &[u8]) {
    if bytes.is_empty() {
        return;
    }
    // SAFETY: `bytes` is readable guest memory.
    unsafe { hypercall(op::WRITE, &[fd, bytes.as_ptr() as u64, bytes.len() as u64]) };
}

/// Sends buffered stdout to the host.
pub fn flush() {
    let (buf, len) = slot();
    if *len > 0 {
        write_raw(1, &buf[..*len]);
        *len = 0;
    }
}

/// Writes to stdout (buffered: up to 4 KiB per exit to the host; flushed at exit).
pub fn write_stdout(mut bytes: &[u8]) {
    while !bytes.is_empty() {
        let (buf, len) = slot();
        if *len == 0 && bytes.len() >= STREAM_BUF {
            write_raw(1, bytes);
            return;
        }
        let n = (STREAM_BUF - *len).min(bytes.len());
        buf[*len..*len + n].copy_from_slice(&bytes[..n]);
        *len += n;
        bytes = &bytes[n..];
        if *len == STREAM_BUF {
            flush();
        }
    }
}

/// Writes to stderr (unbuffered).
pub fn write_stderr(bytes: &[u8]) {
    flush();
    write_raw(2, bytes);
}

/// How much of the stdin the host placed in the boot area has been read (shared by all vCPUs).
static STDIN_READ: core::sync::atomic::AtomicUsize = core::sync::atomic::AtomicUsize::new(0);

/// Reads stdin into `buf`; returns the number of bytes, 0 at end of input. Stdin the host placed
/// in the boot area is read from there, without leaving the VM.
pub fn read_stdin(buf: &mut [u8]) -> usize {
    use core::sync::atomic::Ordering;
    let inline = boot_stdin();
    let mut at = STDIN_READ.load(Ordering::Acquire);
    while at < inline.len() {
        let n = buf.len().min(inline.len() - at);
        match STDIN_READ.compare_exchange(at, at + n, Ordering::AcqRel, Ordering::Acquire) {
            Ok(_) => {
                buf[..n].copy_from_slice(&inline[at..at + n]);
                return n;
            }
            Err(now) => at = now,
        }
    }
    if boot().stdin_more == 0 || buf.is_empty() {
        return 0;
    }
    flush();
    // SAFETY: `buf` is writable guest memory.
    let (n, _) = unsafe { hypercall(op::READ, &[buf.as_mut_ptr() as u64, buf.len() as u64]) };
    n.max(0) as usize
}

/// Whether the host is preparing a snapshot of this guest (see [`ready`]): a program may skip
/// work it only does for a snapshot otherwise.
pub fn preparing() -> bool {
    boot().snapshot != 0
}

/// Says the program's start-up is done. When the host prepares the program with a snapshot
/// after ready (`PrepareOptions::until_ready`), it stops the VM here once, and every run of the
/// prepared program continues from this call's return with its own stdin (read it after this
/// call; arguments and environment are those of the preparing run). Output buffered so far is
/// flushed first (a preparing run's output is discarded). In a plain run this does nothing.
/// Call it from one vCPU while no other runs (the host refuses snapshots of several vCPUs).
pub fn ready() {
    flush();
    // SAFETY: READY takes no arguments.
    unsafe { hypercall(op::READY, &[]) };
}

/// Ends the VM with this exit code. This vCPU's buffered output goes with the exit, in the same
/// hypercall; other vCPUs' buffered output is lost unless they [`flush`] first.
pub fn exit(code: i32) -> ! {
    let (buf, len) = slot();
    let (at, n) = (buf.as_ptr() as u64, *len as u64);
    *len = 0;
    // SAFETY: EXIT takes two integers and a readable buffer.
    unsafe { hypercall(op::EXIT, &[code as u32 as u64, u64::MAX, at, n]) };
    // The host does not resume a VM after EXIT.
    loop {
        core::hint::spin_loop();
    }
}

/// Why a host call failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HostCallError {
    /// The embedder registered no function of that name.
    NotFound,
    /// The output buffer is too small; this many bytes are needed.
    TooSmall(usize),
    /// The host function failed; its message is this many bytes at the start of `output`.
    Failed(usize),
}

/// Calls the host function `name` that the embedder registered, with `input`; the result is
/// written to `output` and its length returned.
pub fn host_call(name: &str, input: &[u8], output: &mut [u8]) -> Result<usize, HostCallError> {
    // The host lists the functions it has: a name not in the list is answered here.
    if !host_functions().any(|f| f == name) {
        return Err(HostCallError::NotFound);
    }
    flush();
    let args = [
        name.as_ptr() as u64,
        name.len() as u64,
        input.as_ptr() as u64,
        input.len() as u64,
        output.as_mut_ptr() as u64,
        output.len() as u64,
    ];
    // SAFETY: the buffers are valid guest memory.
    let (ret, ret2) = unsafe { hypercall(op::HOST_CALL, &args) };
    match ret {
        n if n >= 0 => Ok(n as usize),
        n if -n == abi::host_call_error::NOT_FOUND => Err(HostCallError::NotFound),
        n if -n == abi::host_call_error::TOO_SMALL => Err(HostCallError::TooSmall(ret2 as usize)),
        _ => Err(HostCallError::Failed(ret2 as usize)),
    }
}

/// The boot information the host wrote (read-only for the guest; it never changes during a run).
fn boot() -> abi::BootInfo {
    let mut fields = [0u64; abi::BootInfo::FIELDS];
    for (i, f) in fields.iter_mut().enumerate() {
        // SAFETY: the boot information page is mapped readable for the guest.
        *f = unsafe { core::ptr::read_volatile((layout::BOOT_INFO as *const u64).add(i)) };
    }
    abi::BootInfo::from_fields(fields)
}

fn boot_strings() -> &'static [u8] {
    let len = boot().strings_len as usize;
    // SAFETY: the host wrote `len` bytes of strings after the header, inside the boot area.
    unsafe { core::slice::from_raw_parts((layout::BOOT_INFO + abi::BootInfo::SIZE) as *const u8, len) }
}

/// Iterates NUL-terminated strings.
pub struct Strings {
    rest: &'static [u8],
    left: u64,
}

impl Iterator for Strings {
    type Item = &'static str;
    fn next(&mut self) -> Option<&'static str> {
        if self.left == 0 {
            return None;
        }
        self.left -= 1;
        let end = self.rest.iter().position(|b| *b == 0).unwrap_or(self.rest.len());
        let s = core::str::from_utf8(&self.rest[..end]).unwrap_or("");
        self.rest = &self.rest[(end + 1).min(self.rest.len())..];
        Some(s)
    }
}

/// The program's arguments; the first is the program's name.
pub fn args() -> Strings {
    Strings { rest: boot_strings(), left: boot().argc }
}

/// The environment, as `KEY=VALUE` strings.
pub fn env() -> Strings {
    let mut s = args();
    for _ in s.by_ref() {}
    Strings { rest: s.rest, left: boot().envc }
}

/// The names of the host functions the embedder registered (see [`host_call`]).
pub fn host_functions() -> Strings {
    let mut s = env();
    for _ in s.by_ref() {}
    Strings { rest: s.rest, left: boot().hostc }
}

/// The stdin bytes the host placed after the strings.
fn boot_stdin() -> &'static [u8] {
    let len = boot().stdin_len as usize;
    if len == 0 {
        return &[];
    }
    let at = layout::BOOT_INFO + abi::BootInfo::SIZE + boot().strings_len;
    // SAFETY: the host wrote `len` bytes of stdin right after the strings, inside the boot area.
    unsafe { core::slice::from_raw_parts(at as *const u8, len) }
}

/// One environment variable.
pub fn env_var(name: &str) -> Option<&'static str> {
    env().find_map(|kv| kv.strip_prefix(name).and_then(|rest| rest.strip_prefix('=')))
}

/// Number of vCPUs of this VM.
pub fn vcpu_count() -> u32 {
    boot().vcpus as u32
}

/// The heap: `[start, end)` of free guest memory (used by the global allocator when the `alloc`
/// feature is on).
pub fn heap() -> (u64, u64) {
    (boot().heap_start, boot().heap_end)
}

/// A program given to the guest runtime as data (`[address, length)`), e.g. a wasm module.
pub fn program() -> &'static [u8] {
    let (addr, len) = (boot().program, boot().program_len);
    if len == 0 {
        return &[];
    }
    // SAFETY: the host placed `len` bytes at `addr`, in mapped guest memory.
    unsafe { core::slice::from_raw_parts(addr as *const u8, len as usize) }
}

/// The cap the host set on a wasm guest's linear memory, in bytes, if any.
pub fn memory_cap() -> Option<u64> {
    let m = boot().memory_cap;
    (m != u64::MAX).then_some(m)
}

/// The fuel budget the host set (wasm guests), if any.
pub fn fuel() -> Option<u64> {
    let f = boot().fuel;
    (f != u64::MAX).then_some(f)
}

/// `core::fmt` sink for stdout.
pub struct Stdout;
impl fmt::Write for Stdout {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        write_stdout(s.as_bytes());
        Ok(())
    }
}

/// `core::fmt` sink for stderr.
pub struct Stderr;
impl fmt::Write for Stderr {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        write_stderr(s.as_bytes());
        Ok(())
    }
}

/// `print!` to stdout.
#[macro_export]
macro_rules! print {
    ($($t:tt)*) => {{ let _ = core::fmt::Write::write_fmt(&mut $crate::Stdout, format_args!($($t)*)); }};
}

/// `println!` to stdout.
#[macro_export]
macro_rules! println {
    () => { $crate::print!("\n") };
    ($($t:tt)*) => {{ $crate::print!($($t)*); $crate::print!("\n"); }};
}

/// `eprintln!` to stderr.
#[macro_export]
macro_rules! eprintln {
    ($($t:tt)*) => {{ let _ = core::fmt::Write::write_fmt(&mut $crate::Stderr, format_args!($($t)*)); $crate::write_stderr(b"\n"); }};
}

/// Declares the program's entry point: `fn main() -> i32`, called on every vCPU (see
/// [`cpu_id`]); the VM ends when vCPU 0 returns (with the returned exit code) or any vCPU calls
/// [`exit`]. Other vCPUs that return just stop.
///
/// The entry point first sets aside the top [`STREAM_RESERVE`] bytes of each vCPU's stack region
/// for its stdout buffer; a program with an entry point of its own must do the same before it
/// uses [`write_stdout`], [`print!`] or [`println!`].
#[macro_export]
macro_rules! entry {
    ($main:path) => {
        /// The first instruction: moves the stack below this vCPU's stdout buffer (the top
        /// `STREAM_RESERVE` bytes of its stack region), keeping the System V alignment.
        #[no_mangle]
        #[unsafe(naked)]
        pub extern "C" fn _start() -> ! {
            core::arch::naked_asm!(
                "sub rsp, {reserve}",
                "call {start}",
                "ud2",
                reserve = const $crate::STREAM_RESERVE + 8,
                start = sym __sandcell_start,
            )
        }

        extern "C" fn __sandcell_start() -> ! {
            $crate::__init();
            let code: i32 = $main();
            if $crate::cpu_id() == 0 {
                $crate::exit(code)
            }
            $crate::flush();
            loop {
                core::hint::spin_loop();
            }
        }
    };
}

#[cfg(feature = "alloc")]
mod allocator {
    //! The guest's heap: small blocks in a free-list arena at its start, large blocks (4 MiB and
    //! up) bumped from the rest, where the topmost block grows and shrinks in place. A wasm
    //! module's linear memory — one block that keeps growing — is then never copied into a
    //! bigger block, which would need both at once. (A `Vec` still doubles its capacity, so a
    //! linear memory can use about half of the large arena.)
    use core::alloc::{GlobalAlloc, Layout};
    use core::sync::atomic::{AtomicBool, Ordering};

    const LARGE: usize = 4 << 20;

    pub struct VmAllocator {
        small: linked_list_allocator::LockedHeap,
        lock: AtomicBool,
        large: core::cell::UnsafeCell<Large>,
    }

    struct Large {
        start: usize,
        top: usize,
        end: usize,
        /// The topmost block, which may grow in place.
        last: usize,
    }

    // SAFETY: `large` is only touched under `lock`; `small` locks itself.
    unsafe impl Sync for VmAllocator {}

    impl VmAllocator {
        pub const fn new() -> Self {
            VmAllocator {
                small: linked_list_allocator::LockedHeap::empty(),
                lock: AtomicBool::new(false),
                large: core::cell::UnsafeCell::new(Large { start: 0, top: 0, end: 0, last: 0 }),
            }
        }

        /// # Safety
        /// `[start, end)` must be free memory used by nothing else, and this is called once.
        /// `split` is where small blocks end (see `BootInfo::heap_split`).
        pub unsafe fn init(&self, start: usize, end: usize, split: usize) {
            // SAFETY: the caller hands over `[start, end)`.
            unsafe { self.small.lock().init(start as *mut u8, split - start) };
            self.with_large(|l| *l = Large { start: split, top: split, end, last: 0 });
        }

        /// Largest block the large arena can hold.
        pub fn large_capacity(&self) -> usize {
            self.with_large(|l| l.end - l.start)
        }

        fn with_large<R>(&self, f: impl FnOnce(&mut Large) -> R) -> R {
            while self.lock.compare_exchange_weak(false, true, Ordering::Acquire, Ordering::Relaxed).is_err() {
                core::hint::spin_loop();
            }
            // SAFETY: the lock is held.
            let r = f(unsafe { &mut *self.large.get() });
            self.lock.store(false, Ordering::Release);
            r
        }

        fn is_large(&self, ptr: *mut u8) -> bool {
            self.with_large(|l| (l.start..l.end).contains(&(ptr as usize)))
        }
    }

    unsafe impl GlobalAlloc for VmAllocator {
        unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
            if layout.size() < LARGE {
                // SAFETY: forwarded.
                return unsafe { self.small.alloc(layout) };
            }
            self.with_large(|l| {
                let at = l.top.next_multiple_of(layout.align().max(4096));
                match at.checked_add(layout.size()) {
                    Some(end) if end <= l.end && super::ram_usable(end) => {
                        l.top = end;
                        l.last = at;
                        at as *mut u8
                    }
                    _ => core::ptr::null_mut(),
                }
            })
        }

        unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
            if self.is_large(ptr) {
                // Only the topmost block is given back; others stay until the VM ends.
                self.with_large(|l| {
                    if l.last == ptr as usize {
                        l.top = l.last;
                        l.last = 0;
                    }
                });
            } else {
                // SAFETY: forwarded.
                unsafe { self.small.dealloc(ptr, layout) }
            }
        }

        unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
            if self.is_large(ptr) {
                let grown = self.with_large(|l| {
                    if l.last == ptr as usize && l.last + new_size <= l.end && super::ram_usable(l.last + new_size) {
                        l.top = l.last + new_size;
                        true
                    } else {
                        false
                    }
                });
                if grown {
                    return ptr;
                }
            }
            // SAFETY: the default reallocation: allocate, copy, free.
            unsafe {
                let new_layout = Layout::from_size_align_unchecked(new_size, layout.align());
                let new = self.alloc(new_layout);
                if !new.is_null() {
                    core::ptr::copy_nonoverlapping(ptr, new, layout.size().min(new_size));
                    self.dealloc(ptr, layout);
                }
                new
            }
        }
    }
}

#[cfg(feature = "alloc")]
#[global_allocator]
static ALLOCATOR: allocator::VmAllocator = allocator::VmAllocator::new();

/// Whether guest RAM up to `end` is usable, asking the host for more where it is not yet (see
/// [`abi::BootInfo::ram_ready`]).
#[cfg(feature = "alloc")]
fn ram_usable(end: usize) -> bool {
    use core::sync::atomic::{AtomicU64, Ordering};
    // What the host answered last (it only grows during a run).
    static READY: AtomicU64 = AtomicU64::new(0);
    let end = end as u64;
    if end <= READY.load(Ordering::Relaxed).max(boot().ram_ready) {
        return true;
    }
    // SAFETY: RAM takes an address and changes no guest memory.
    let (ready, _) = unsafe { hypercall(abi::op::RAM, &[end]) };
    let ready = ready.max(0) as u64;
    READY.fetch_max(ready, Ordering::Relaxed);
    end <= ready
}

/// The largest single allocation the heap can serve (the large-block arena).
#[cfg(feature = "alloc")]
pub fn largest_allocation() -> usize {
    ALLOCATOR.large_capacity()
}

#[doc(hidden)]
pub fn __init() {
    #[cfg(feature = "alloc")]
    if cpu_id() == 0 {
        let (start, end) = heap();
        if end > start {
            // SAFETY: the host reserved `[start, end)` for the guest's heap and nothing else uses it.
            unsafe { ALLOCATOR.init(start as usize, end as usize, boot().heap_split() as usize) };
        }
    }
}

#[cfg(feature = "panic-handler")]
#[panic_handler]
fn panic(info: &core::panic::PanicInfo) -> ! {
    use core::fmt::Write;
    let _ = write!(Stderr, "guest panicked: {}", info.message());
    if let Some(loc) = info.location() {
        let _ = write!(Stderr, " at {}:{}", loc.file(), loc.line());
    }
    write_stderr(b"\n");
    exit(101)
}
