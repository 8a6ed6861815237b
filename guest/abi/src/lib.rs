//! The contract between a sandcell micro-VM guest and the host (version 1).
//!
//! **Memory.** Guest-physical and guest-virtual addresses are equal (identity-mapped page
//! tables). The first 4 MiB hold the VM's own structures, the guest image and the stacks; the
//! heap runs from [`HEAP`] to the end of guest RAM.
//!
//! **Hypercalls.** The guest fills its vCPU's [`Mailbox`] (at `MAILBOX + cpu * MAILBOX_STRIDE`)
//! and executes `out` on [`HYPERCALL_PORT`] with `eax = MAGIC`. The host validates every field
//! ([`decode`]), serves the call, writes `ret` (and `ret2`) and resumes the guest. One exit per
//! call: the protocol is designed for few, batched calls, because a VM exit from user mode costs
//! tens of microseconds on nested (PVM) hosts.
//!
//! **Exceptions.** The VM's interrupt descriptor table sends every CPU exception to a stub that
//! pushes the vector and executes `out` on [`EXCEPTION_PORT`]; the host reads the exception frame
//! from the kernel stack and ends the run.
#![no_std]
#![forbid(unsafe_code)]
#![deny(missing_docs)]

/// Port of the hypercall doorbell.
pub const HYPERCALL_PORT: u16 = 0x5c0;
/// Port the exception stubs write to (outside the four ports a user-mode `out` may reach).
pub const EXCEPTION_PORT: u16 = 0x5c8;
/// Value of `eax` (and of [`Mailbox::magic`]) in a hypercall: "SCV1".
pub const MAGIC: u32 = 0x3156_4353;
/// Version of this contract. 2: `EXIT` carries the last output; the boot information carries
/// stdin and the names of the host functions, so that a guest asks the host only for what it
/// cannot find in its own memory; the mailboxes share one page, next to the boot information.
/// 3: the boot information is a typed header ([`BootInfo`]) that also carries the cap on a wasm
/// guest's linear memory.
/// 4: [`op::READY`], and [`BootInfo::snapshot`] (the wasm runtime says ready after instantiating
/// its module when the host prepares a snapshot).
/// 5: the image area starts at 2 MiB and holds 6 MiB (the wasm runtime's code gets a 2 MiB
/// region, mapped with one large page), the stacks move up by 4 MiB and there are at most 12
/// vCPUs (the heap still starts at 20 MiB);
/// [`op::RAM`] and [`BootInfo::ram_ready`] (guest RAM made usable as the heap grows).
pub const VERSION: u16 = 5;

/// The guest-physical layout.
pub mod layout {
    /// Global descriptor table (supervisor only).
    pub const GDT: u64 = 0x1000;
    /// Interrupt descriptor table (supervisor only).
    pub const IDT: u64 = 0x2000;
    /// Task state segment, followed by its I/O permission bitmap (supervisor only).
    pub const TSS: u64 = 0x3000;
    /// Exception stubs (supervisor, executable, read-only).
    pub const STUBS: u64 = 0x6000;
    /// Kernel stack top, for exceptions (supervisor).
    pub const KERNEL_STACK_TOP: u64 = 0x8000;
    /// Page tables (not mapped at all: only the CPU's page walker reads them).
    pub const PAGE_TABLES: u64 = 0x3_0000;
    /// End of the page-table area.
    pub const PAGE_TABLES_END: u64 = 0x10_0000;
    /// The vCPUs' mailboxes, all in one page (user, read-write, not executable). It sits next
    /// to the first page of the boot information, so that a VMM that shadows page tables maps
    /// both on the guest's first touch of either (KVM prefetches neighbouring entries).
    pub const MAILBOX: u64 = 0x2_0000;
    /// Distance between two vCPUs' mailboxes.
    pub const MAILBOX_STRIDE: u64 = 0x100;
    /// At most this many vCPUs (their stacks fill the area between the image and the heap).
    pub const MAX_VCPUS: u32 = 12;
    /// Boot information (user, read-only), 60 KiB.
    pub const BOOT_INFO: u64 = 0x2_1000;
    /// Size of the boot information area (arguments and environment included).
    pub const BOOT_INFO_SIZE: u64 = 0xf000;
    /// Where the guest image is loaded (2 MiB-aligned: a 2 MiB region of the image that holds
    /// only code is mapped with one large page).
    pub const IMAGE: u64 = 0x20_0000;
    /// End of the image area (6 MiB for the image).
    pub const IMAGE_END: u64 = 0x80_0000;
    /// vCPU stacks: `STACK_STRIDE` each, the lowest page of each a guard page (unmapped).
    pub const STACKS: u64 = 0x80_0000;
    /// Distance between two vCPUs' stacks (1 MiB).
    pub const STACK_STRIDE: u64 = 0x10_0000;
    /// Start of the heap (the rest of guest RAM).
    pub const HEAP: u64 = STACKS + MAX_VCPUS as u64 * STACK_STRIDE;
    /// The smallest guest RAM: the fixed area plus 12 MiB of heap.
    pub const MIN_RAM: u64 = 0x200_0000;
    /// The largest guest RAM (one page directory per GiB; the page tables area holds two).
    pub const MAX_RAM: u64 = 0x8000_0000;

    /// Top of vCPU `cpu`'s stack.
    pub const fn stack_top(cpu: u32) -> u64 {
        STACKS + (cpu as u64 + 1) * STACK_STRIDE
    }

    /// vCPU `cpu`'s mailbox.
    pub const fn mailbox(cpu: u32) -> u64 {
        MAILBOX + cpu as u64 * MAILBOX_STRIDE
    }
}

/// Hypercall numbers ([`Mailbox::op`]).
pub mod op {
    /// Exit the VM: `args[0]` = exit code (i32), `args[1]` = fuel used (`u64::MAX`: none),
    /// `args[2..4]` = the last stdout bytes (written before the VM ends; may be empty), so that
    /// a program whose output fits its buffer leaves the VM once.
    pub const EXIT: u16 = 1;
    /// Write output: `args[0]` = 1 (stdout) or 2 (stderr), `args[1..3]` = buffer. `ret` = bytes.
    pub const WRITE: u16 = 2;
    /// Read stdin: `args[0..2]` = buffer. `ret` = bytes (0 at end of input).
    pub const READ: u16 = 3;
    /// Call a host function: `args[0..2]` = name, `args[2..4]` = input, `args[4..6]` = output
    /// buffer. `ret` = output length, or a negative [`host_call_error`](super::host_call_error).
    pub const HOST_CALL: u16 = 4;
    /// A WASI preview 1 call: `args[0]` = index in [`WASI_FUNCTIONS`](super::WASI_FUNCTIONS),
    /// `args[1..3]` = the module's linear memory, `args[3]` = argument count, `args[4..13]` = the
    /// arguments. `ret` = the WASI errno.
    pub const WASI: u16 = 5;
    /// The guest trapped: `args[0]` = [`trap`](super::trap) kind, `args[1..3]` = message,
    /// `args[3]` = fuel used (`u64::MAX`: none).
    pub const TRAP: u16 = 6;
    /// The guest has finished its start-up: a host preparing the program snapshots the VM here
    /// and starts every run from this point (after this call returns, with `ret` = 0); in a
    /// plain run the call does nothing.
    pub const READY: u16 = 7;
    /// The guest's heap needs guest RAM up to `args[0]` (an address): the host makes RAM usable
    /// up to at least there if it can, never past the end of guest RAM, and answers in `ret`
    /// where usable RAM now ends (see [`BootInfo::ram_ready`]).
    pub const RAM: u16 = 8;
}

/// Errors a host call returns (negated in `ret`).
pub mod host_call_error {
    /// No host function of that name is registered.
    pub const NOT_FOUND: i64 = 1;
    /// The output buffer is too small; `ret2` holds the needed length.
    pub const TOO_SMALL: i64 = 2;
    /// The host function failed; its message is in the output buffer, `ret2` = its length.
    pub const FAILED: i64 = 3;
}

/// Trap kinds reported by [`op::TRAP`].
#[allow(missing_docs)] // named after the wasm trap each reports
pub mod trap {
    pub const UNREACHABLE: u64 = 1;
    pub const DIVISION_BY_ZERO: u64 = 2;
    pub const INTEGER_OVERFLOW: u64 = 3;
    pub const MEMORY_OUT_OF_BOUNDS: u64 = 4;
    pub const TABLE_OUT_OF_BOUNDS: u64 = 5;
    pub const INDIRECT_CALL_TO_NULL: u64 = 6;
    pub const BAD_SIGNATURE: u64 = 7;
    pub const BAD_CONVERSION: u64 = 8;
    pub const STACK_OVERFLOW: u64 = 9;
    pub const OUT_OF_FUEL: u64 = 10;
    pub const OUT_OF_MEMORY: u64 = 11;
    pub const OTHER: u64 = 12;
}

/// Number of argument slots in a mailbox.
pub const MAILBOX_ARGS: usize = 13;
/// Size of a mailbox in bytes.
pub const MAILBOX_BYTES: usize = 8 + 8 * MAILBOX_ARGS + 16;
const _: () = assert!(MAILBOX_BYTES as u64 <= layout::MAILBOX_STRIDE);
const _: () = assert!(layout::MAILBOX + layout::MAX_VCPUS as u64 * layout::MAILBOX_STRIDE <= layout::BOOT_INFO);

/// A vCPU's mailbox, as laid out in guest memory (little endian):
/// `magic: u32, version: u16, op: u16, args: [u64; 13], ret: i64, ret2: u64`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Mailbox {
    /// [`MAGIC`].
    pub magic: u32,
    /// [`VERSION`].
    pub version: u16,
    /// The operation ([`op`]).
    pub op: u16,
    /// The operation's arguments (see [`decode`] for each operation's).
    pub args: [u64; MAILBOX_ARGS],
    /// The host's answer.
    pub ret: i64,
    /// A second answer, where an operation has one.
    pub ret2: u64,
}

impl Mailbox {
    /// Serializes the mailbox.
    pub fn to_bytes(&self) -> [u8; MAILBOX_BYTES] {
        let mut b = [0u8; MAILBOX_BYTES];
        b[0..4].copy_from_slice(&self.magic.to_le_bytes());
        b[4..6].copy_from_slice(&self.version.to_le_bytes());
        b[6..8].copy_from_slice(&self.op.to_le_bytes());
        for (i, a) in self.args.iter().enumerate() {
            b[8 + 8 * i..16 + 8 * i].copy_from_slice(&a.to_le_bytes());
        }
        let r = 8 + 8 * MAILBOX_ARGS;
        b[r..r + 8].copy_from_slice(&self.ret.to_le_bytes());
        b[r + 8..r + 16].copy_from_slice(&self.ret2.to_le_bytes());
        b
    }

    /// Deserializes a mailbox (any bytes are a mailbox; [`decode`] judges them).
    pub fn from_bytes(b: &[u8; MAILBOX_BYTES]) -> Mailbox {
        let u64_at = |o: usize| {
            let mut x = [0u8; 8];
            x.copy_from_slice(&b[o..o + 8]);
            u64::from_le_bytes(x)
        };
        let mut args = [0u64; MAILBOX_ARGS];
        for (i, a) in args.iter_mut().enumerate() {
            *a = u64_at(8 + 8 * i);
        }
        let r = 8 + 8 * MAILBOX_ARGS;
        Mailbox {
            magic: u32::from_le_bytes([b[0], b[1], b[2], b[3]]),
            version: u16::from_le_bytes([b[4], b[5]]),
            op: u16::from_le_bytes([b[6], b[7]]),
            args,
            ret: u64_at(r) as i64,
            ret2: u64_at(r + 8),
        }
    }
}

/// A span of guest memory named by a hypercall. Decoding guarantees `addr + len` does not
/// overflow; the host still checks that the span lies in memory the guest may use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Span {
    /// Guest address of the first byte.
    pub addr: u64,
    /// Length in bytes.
    pub len: u64,
}

impl Span {
    /// The first address after the span.
    pub fn end(&self) -> u64 {
        self.addr + self.len
    }
}

/// Largest buffer one hypercall may name (64 MiB).
pub const MAX_SPAN: u64 = 64 << 20;
/// Largest host-function name.
pub const MAX_NAME: u64 = 256;

/// A decoded, validated hypercall.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[allow(missing_docs)] // the fields are described with each variant
pub enum Request {
    /// [`op::EXIT`]: the guest ends with `code`, having used `fuel_used` (wasm guests), and
    /// hands over its last buffered stdout in `output`.
    Exit { code: i32, fuel_used: Option<u64>, output: Span },
    /// [`op::WRITE`]: `buf` to stdout (`fd` 1) or stderr (`fd` 2).
    Write { fd: u8, buf: Span },
    /// [`op::READ`]: stdin into `buf`.
    Read { buf: Span },
    /// [`op::HOST_CALL`]: the host function `name` with `input`, its answer into `output`.
    HostCall { name: Span, input: Span, output: Span },
    /// [`op::WASI`]: WASI function `function` (index into [`WASI_FUNCTIONS`]) with `nargs`
    /// of `args`, on the linear memory `memory`.
    Wasi { function: u16, memory: Span, args: [u64; 9], nargs: u8 },
    /// [`op::TRAP`]: the wasm guest trapped ([`trap`] kinds), with a `message`.
    Trap { kind: u64, message: Span, fuel_used: Option<u64> },
    /// [`op::READY`]: the guest's start-up is done.
    Ready,
    /// [`op::RAM`]: make guest RAM usable up to `end`.
    Ram { end: u64 },
}

/// Why a mailbox is not a valid request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DecodeError {
    /// The mailbox's magic is not [`MAGIC`].
    BadMagic(u32),
    /// The mailbox's version is not [`VERSION`].
    BadVersion(u16),
    /// No such operation.
    UnknownOp(u16),
    /// A buffer's address plus length overflows, or the length is over [`MAX_SPAN`].
    BadSpan {
        /// The span's address.
        addr: u64,
        /// Its length.
        len: u64,
    },
    /// An output stream other than 1 and 2.
    BadFd(u64),
    /// A WASI function index outside [`WASI_FUNCTIONS`].
    UnknownWasiFunction(u64),
    /// More arguments than a WASI call has.
    BadArgCount(u64),
}

impl core::fmt::Display for DecodeError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            DecodeError::BadMagic(m) => write!(f, "bad magic {m:#x}"),
            DecodeError::BadVersion(v) => write!(f, "unsupported version {v} (host speaks {VERSION})"),
            DecodeError::UnknownOp(o) => write!(f, "unknown hypercall {o}"),
            DecodeError::BadSpan { addr, len } => write!(f, "buffer {addr:#x}+{len:#x} overflows or is too long"),
            DecodeError::BadFd(fd) => write!(f, "bad output stream {fd}"),
            DecodeError::UnknownWasiFunction(i) => write!(f, "unknown WASI function {i}"),
            DecodeError::BadArgCount(n) => write!(f, "bad argument count {n}"),
        }
    }
}

fn span(addr: u64, len: u64, max: u64) -> Result<Span, DecodeError> {
    match addr.checked_add(len) {
        Some(_) if len <= max => Ok(Span { addr, len }),
        _ => Err(DecodeError::BadSpan { addr, len }),
    }
}

fn fuel(v: u64) -> Option<u64> {
    (v != u64::MAX).then_some(v)
}

/// Validates a mailbox. Pure function of its bytes: the fuzz target's entry point.
pub fn decode(bytes: &[u8; MAILBOX_BYTES]) -> Result<Request, DecodeError> {
    let m = Mailbox::from_bytes(bytes);
    if m.magic != MAGIC {
        return Err(DecodeError::BadMagic(m.magic));
    }
    if m.version != VERSION {
        return Err(DecodeError::BadVersion(m.version));
    }
    let a = m.args;
    Ok(match m.op {
        op::EXIT => {
            Request::Exit { code: a[0] as u32 as i32, fuel_used: fuel(a[1]), output: span(a[2], a[3], MAX_SPAN)? }
        }
        op::WRITE => {
            if a[0] != 1 && a[0] != 2 {
                return Err(DecodeError::BadFd(a[0]));
            }
            Request::Write { fd: a[0] as u8, buf: span(a[1], a[2], MAX_SPAN)? }
        }
        op::READ => Request::Read { buf: span(a[0], a[1], MAX_SPAN)? },
        op::HOST_CALL => Request::HostCall {
            name: span(a[0], a[1], MAX_NAME)?,
            input: span(a[2], a[3], MAX_SPAN)?,
            output: span(a[4], a[5], MAX_SPAN)?,
        },
        op::WASI => {
            if a[0] >= WASI_FUNCTIONS.len() as u64 {
                return Err(DecodeError::UnknownWasiFunction(a[0]));
            }
            if a[3] > 9 {
                return Err(DecodeError::BadArgCount(a[3]));
            }
            let mut args = [0u64; 9];
            args.copy_from_slice(&a[4..13]);
            // A wasm32 linear memory is at most 4 GiB.
            Request::Wasi { function: a[0] as u16, memory: span(a[1], a[2], 1 << 32)?, args, nargs: a[3] as u8 }
        }
        op::TRAP => Request::Trap { kind: a[0], message: span(a[1], a[2], 4096)?, fuel_used: fuel(a[3]) },
        op::READY => Request::Ready,
        op::RAM => Request::Ram { end: a[0] },
        other => return Err(DecodeError::UnknownOp(other)),
    })
}

/// WASI preview 1 functions, by the index a [`op::WASI`] hypercall names.
pub const WASI_FUNCTIONS: &[&str] = &[
    "args_get",
    "args_sizes_get",
    "environ_get",
    "environ_sizes_get",
    "clock_res_get",
    "clock_time_get",
    "fd_advise",
    "fd_allocate",
    "fd_close",
    "fd_datasync",
    "fd_fdstat_get",
    "fd_fdstat_set_flags",
    "fd_fdstat_set_rights",
    "fd_filestat_get",
    "fd_filestat_set_size",
    "fd_filestat_set_times",
    "fd_pread",
    "fd_prestat_get",
    "fd_prestat_dir_name",
    "fd_pwrite",
    "fd_read",
    "fd_readdir",
    "fd_renumber",
    "fd_seek",
    "fd_sync",
    "fd_tell",
    "fd_write",
    "path_create_directory",
    "path_filestat_get",
    "path_filestat_set_times",
    "path_link",
    "path_open",
    "path_readlink",
    "path_remove_directory",
    "path_rename",
    "path_symlink",
    "path_unlink_file",
    "poll_oneoff",
    "proc_exit",
    "proc_raise",
    "random_get",
    "sched_yield",
    "sock_accept",
    "sock_recv",
    "sock_send",
    "sock_shutdown",
];

/// The boot information: what the host tells a guest before it starts, at
/// [`layout::BOOT_INFO`]. This header, then the strings (arguments, environment, host function
/// names, each NUL-terminated), then as much of stdin as fits the boot area.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BootInfo {
    /// [`MAGIC`].
    pub magic: u64,
    /// [`VERSION`].
    pub version: u64,
    /// Number of vCPUs.
    pub vcpus: u64,
    /// The fuel budget (wasm guests), `u64::MAX` for none.
    pub fuel: u64,
    /// Where a data program (a wasm module) lies, and its length (0: none).
    pub program: u64,
    /// See [`BootInfo::program`].
    pub program_len: u64,
    /// The heap: `[heap_start, heap_end)`.
    pub heap_start: u64,
    /// See [`BootInfo::heap_start`].
    pub heap_end: u64,
    /// Number of arguments (the first is the program's name).
    pub argc: u64,
    /// Number of environment variables.
    pub envc: u64,
    /// Bytes of strings after this header.
    pub strings_len: u64,
    /// Number of host function names.
    pub hostc: u64,
    /// Bytes of stdin after the strings.
    pub stdin_len: u64,
    /// Non-zero when there is more stdin than the boot area holds (read with [`op::READ`]).
    pub stdin_more: u64,
    /// The cap on a wasm guest's linear memory in bytes, `u64::MAX` for none.
    pub memory_cap: u64,
    /// Non-zero while the host prepares a snapshot of the guest: the wasm runtime then says
    /// ready ([`op::READY`]) once its module is compiled and instantiated, right before `_start`,
    /// and every run of the prepared program starts from there.
    pub snapshot: u64,
    /// Guest RAM below this address is usable from the start; the heap above it (up to
    /// `heap_end`) only once [`op::RAM`] made it so. A host registers RAM with the hypervisor
    /// as the heap grows, because registering it all up front costs in proportion to its size.
    pub ram_ready: u64,
}

impl BootInfo {
    /// Number of 8-byte fields.
    pub const FIELDS: usize = 17;
    /// Size of the header in bytes: the strings start here.
    pub const SIZE: u64 = Self::FIELDS as u64 * 8;
    /// Where [`BootInfo::ram_ready`] lies in the header (the last field).
    pub const RAM_READY_AT: u64 = Self::SIZE - 8;

    fn fields(&self) -> [u64; Self::FIELDS] {
        [
            self.magic,
            self.version,
            self.vcpus,
            self.fuel,
            self.program,
            self.program_len,
            self.heap_start,
            self.heap_end,
            self.argc,
            self.envc,
            self.strings_len,
            self.hostc,
            self.stdin_len,
            self.stdin_more,
            self.memory_cap,
            self.snapshot,
            self.ram_ready,
        ]
    }

    /// The header as the host writes it (little-endian fields, in declaration order).
    pub fn to_bytes(&self) -> [u8; Self::SIZE as usize] {
        let mut out = [0u8; Self::SIZE as usize];
        for (i, f) in self.fields().iter().enumerate() {
            out[i * 8..i * 8 + 8].copy_from_slice(&f.to_le_bytes());
        }
        out
    }

    /// Reads a header written by [`BootInfo::to_bytes`].
    pub fn from_fields(f: [u64; Self::FIELDS]) -> Self {
        BootInfo {
            magic: f[0],
            version: f[1],
            vcpus: f[2],
            fuel: f[3],
            program: f[4],
            program_len: f[5],
            heap_start: f[6],
            heap_end: f[7],
            argc: f[8],
            envc: f[9],
            strings_len: f[10],
            hostc: f[11],
            stdin_len: f[12],
            stdin_more: f[13],
            memory_cap: f[14],
            snapshot: f[15],
            ram_ready: f[16],
        }
    }

    /// Where the guest SDK's heap splits: small blocks below, large blocks (a wasm module's
    /// linear memory among them) from here up. Small blocks get room for the guest's own data,
    /// scaled with the program it was given (a wasm module compiles to several times its size),
    /// at least 8 MiB and at most half the heap. The host uses it to size [`Self::ram_ready`].
    pub fn heap_split(&self) -> u64 {
        let small = self.program_len.saturating_mul(24).saturating_add(6 << 20).max(8 << 20);
        let half = self.heap_end.saturating_sub(self.heap_start) / 2;
        self.heap_start.saturating_add(small.min(half)).next_multiple_of(4096)
    }
}

/// The body of the hypercall-decoder fuzz target (`fuzz/fuzz_targets/hypercall_decode.rs`),
/// shared with the randomized test below: decodes `data` as a mailbox, once as it is and once
/// with a valid header (so that random input reaches the per-operation checks), and panics if a
/// decoded request breaks a promise the host relies on.
#[doc(hidden)]
pub fn fuzz_decode(data: &[u8]) {
    let mut bytes = [0u8; MAILBOX_BYTES];
    let n = data.len().min(MAILBOX_BYTES);
    bytes[..n].copy_from_slice(&data[..n]);
    for with_header in [false, true] {
        if with_header {
            bytes[0..4].copy_from_slice(&MAGIC.to_le_bytes());
            bytes[4..6].copy_from_slice(&VERSION.to_le_bytes());
        }
        let Ok(request) = decode(&bytes) else { continue };
        let spans: &[(Span, u64)] = match &request {
            Request::Exit { output, .. } => &[(*output, MAX_SPAN)],
            Request::Write { fd, buf } => {
                assert!(*fd == 1 || *fd == 2, "fd {fd}");
                &[(*buf, MAX_SPAN)]
            }
            Request::Read { buf } => &[(*buf, MAX_SPAN)],
            Request::HostCall { name, input, output } => &[(*name, MAX_NAME), (*input, MAX_SPAN), (*output, MAX_SPAN)],
            Request::Wasi { function, memory, nargs, .. } => {
                assert!((*function as usize) < WASI_FUNCTIONS.len() && *nargs <= 9);
                &[(*memory, 1 << 32)]
            }
            Request::Trap { message, .. } => &[(*message, 4096)],
            Request::Ready | Request::Ram { .. } => &[],
        };
        for (span, max) in spans {
            assert!(span.addr.checked_add(span.len).is_some() && span.len <= *max, "{span:?}");
        }
        // Decoding is a pure function of the bytes.
        assert_eq!(decode(&bytes), Ok(request));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mailbox(op: u16, args: &[u64]) -> [u8; MAILBOX_BYTES] {
        let mut m = Mailbox { magic: MAGIC, version: VERSION, op, ..Mailbox::default() };
        m.args[..args.len()].copy_from_slice(args);
        m.to_bytes()
    }

    #[test]
    fn round_trip_and_validation() {
        assert_eq!(
            decode(&mailbox(op::EXIT, &[3, u64::MAX])),
            Ok(Request::Exit { code: 3, fuel_used: None, output: Span { addr: 0, len: 0 } })
        );
        assert_eq!(
            decode(&mailbox(op::EXIT, &[0, 7, 0x40_0000, 12])),
            Ok(Request::Exit { code: 0, fuel_used: Some(7), output: Span { addr: 0x40_0000, len: 12 } })
        );
        assert!(matches!(decode(&mailbox(op::EXIT, &[0, 0, u64::MAX, 2])), Err(DecodeError::BadSpan { .. })));
        assert_eq!(
            decode(&mailbox(op::WRITE, &[1, 0x40_0000, 5])),
            Ok(Request::Write { fd: 1, buf: Span { addr: 0x40_0000, len: 5 } })
        );
        assert!(matches!(decode(&mailbox(op::WRITE, &[3, 0, 0])), Err(DecodeError::BadFd(3))));
        assert!(matches!(decode(&mailbox(op::WRITE, &[1, u64::MAX - 1, 5])), Err(DecodeError::BadSpan { .. })));
        assert!(matches!(decode(&mailbox(op::READ, &[0, MAX_SPAN + 1])), Err(DecodeError::BadSpan { .. })));
        assert!(matches!(decode(&mailbox(op::WASI, &[999])), Err(DecodeError::UnknownWasiFunction(999))));
        assert!(matches!(decode(&mailbox(op::WASI, &[0, 0, 0, 10])), Err(DecodeError::BadArgCount(10))));
        assert!(matches!(decode(&mailbox(77, &[])), Err(DecodeError::UnknownOp(77))));
        let mut bad = mailbox(op::EXIT, &[0]);
        bad[0] ^= 1;
        assert!(matches!(decode(&bad), Err(DecodeError::BadMagic(_))));
        let m = Mailbox::from_bytes(&mailbox(op::TRAP, &[1, 2, 3, 4]));
        assert_eq!(Mailbox::from_bytes(&m.to_bytes()), m);
    }

    /// A stable-toolchain stand-in for the fuzz target: a million pseudo-random mailboxes,
    /// biased towards known operations and edge values.
    #[test]
    fn decoding_random_mailboxes_keeps_every_promise() {
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let edges = [0, 1, 2, 9, 10, MAX_NAME, MAX_SPAN, MAX_SPAN + 1, 1 << 32, u64::MAX, u64::MAX - 1];
        for _ in 0..1_000_000 {
            let mut m = Mailbox { magic: MAGIC, version: VERSION, op: (next() % 9) as u16, ..Mailbox::default() };
            for a in m.args.iter_mut() {
                let r = next();
                *a = if r % 3 == 0 { edges[(r >> 8) as usize % edges.len()] } else { next() >> (r % 64) };
            }
            fuzz_decode(&m.to_bytes());
        }
    }

    #[test]
    fn wasi_table_has_every_preview1_function_once() {
        assert_eq!(WASI_FUNCTIONS.len(), 46);
        for (i, a) in WASI_FUNCTIONS.iter().enumerate() {
            assert!(!WASI_FUNCTIONS[i + 1..].contains(a), "{a} twice");
        }
    }
}
