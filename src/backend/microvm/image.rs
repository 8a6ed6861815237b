//! The guest image: a program loaded at [`layout::IMAGE`], with the VM's own structures around it
//! (GDT, IDT, TSS with its I/O bitmap, exception stubs, page tables), as the initial contents of
//! guest RAM. Built once per (program, RAM size, vCPU count) into a memfd; every VM maps it
//! copy-on-write, so a VM starts without copying or building anything.
//!
//! Page permissions: the program's segments keep their ELF flags (code read-only and executable,
//! data not executable; a page both writable and executable is refused); the VM's structures are
//! supervisor-only; page tables are not mapped at all; page zero, the gaps, and one guard page
//! under each vCPU stack are unmapped, so touching them faults.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::sync::Arc;

use sandcell_abi::layout;

use super::sys;
use crate::{Error, Result};

const PAGE: u64 = 0x1000;
const LARGE: u64 = 0x20_0000;
const _: () = assert!(layout::IMAGE % LARGE == 0 && layout::IMAGE_END % LARGE == 0);

// Page-table entry bits.
const P: u64 = 1;
const W: u64 = 1 << 1;
const U: u64 = 1 << 2;
const A: u64 = 1 << 5;
const D: u64 = 1 << 6;
const PS: u64 = 1 << 7;
const NX: u64 = 1 << 63;

/// Page permissions of a loaded segment.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
struct Perm {
    write: bool,
    exec: bool,
}

/// A program loaded into the image area.
#[derive(Clone, Debug)]
pub(crate) struct Loaded {
    /// Bytes from `IMAGE` to the end of the last segment, segments in place, relocations
    /// applied.
    bytes: Vec<u8>,
    /// The page-aligned ranges of `bytes` that hold anything but zeros (segments' file data and
    /// relocated words): only those are written into the image, the rest of a memfd reads as
    /// zeros anyway.
    written: Vec<(usize, usize)>,
    /// Permissions of each page from `IMAGE` on (`None`: not mapped).
    pages: Vec<Option<Perm>>,
    pub(crate) entry: u64,
}

fn bad(reason: impl Into<String>) -> Error {
    Error::invalid_program(format!("not a usable micro-VM guest: {}", reason.into()))
}

fn u16_at(b: &[u8], o: usize) -> Result<u16> {
    b.get(o..o + 2).map(|s| u16::from_le_bytes([s[0], s[1]])).ok_or_else(|| bad("truncated ELF"))
}
fn u32_at(b: &[u8], o: usize) -> Result<u32> {
    b.get(o..o + 4).map(|s| u32::from_le_bytes(s.try_into().expect("4 bytes"))).ok_or_else(|| bad("truncated ELF"))
}
fn u64_at(b: &[u8], o: usize) -> Result<u64> {
    b.get(o..o + 8).map(|s| u64::from_le_bytes(s.try_into().expect("8 bytes"))).ok_or_else(|| bad("truncated ELF"))
}

/// Whether `bytes` look like an ELF file.
pub(crate) fn is_elf(bytes: &[u8]) -> bool {
    bytes.starts_with(b"\x7fELF")
}

/// Loads a freestanding x86-64 ELF (static, `ET_EXEC` linked inside the image area, or static-pie
/// `ET_DYN` with only `R_X86_64_RELATIVE` relocations, as `x86_64-unknown-none` produces).
/// Every offset and size is checked; nothing in the file can make the loader write outside the
/// image area.
pub(crate) fn load_elf(elf: &[u8]) -> Result<Loaded> {
    if !is_elf(elf) || elf.get(4) != Some(&2) || elf.get(5) != Some(&1) {
        return Err(bad("not a 64-bit little-endian ELF file"));
    }
    if u16_at(elf, 18)? != 62 {
        return Err(bad("not an x86-64 program"));
    }
    let kind = u16_at(elf, 16)?;
    let base = match kind {
        2 => 0,             // ET_EXEC: addresses are absolute
        3 => layout::IMAGE, // ET_DYN (static-pie): load at the image base
        _ => return Err(bad("neither an executable nor a position-independent executable")),
    };
    let phoff = u64_at(elf, 32)? as usize;
    let phentsize = u16_at(elf, 54)? as usize;
    let phnum = u16_at(elf, 56)? as usize;
    if phentsize < 56 || phnum > 64 {
        return Err(bad("bad program header table"));
    }
    let size = (layout::IMAGE_END - layout::IMAGE) as usize;
    // Only as many bytes as the segments reach (checked again below, segment by segment).
    let mut used = 0usize;
    for i in 0..phnum {
        let ph = phoff.saturating_add(i.saturating_mul(phentsize));
        if u32_at(elf, ph)? == 1 {
            let end = base.saturating_add(u64_at(elf, ph + 16)?).saturating_add(u64_at(elf, ph + 40)?);
            used = used.max(end.saturating_sub(layout::IMAGE).min(size as u64) as usize);
        }
    }
    let used = used.next_multiple_of(PAGE as usize);
    // Zeroed and not yet touched (a large allocation is fresh anonymous memory): only the
    // segments' pages are populated, below, and a runtime whose segments sit in 2 MiB regions of
    // their own does not pay for the gaps between them.
    let mut bytes = vec![0u8; used];
    let mut dirty = vec![false; used / PAGE as usize];
    let mut pages: Vec<Option<Perm>> = vec![None; size / PAGE as usize];
    let mut dynamic = None;
    for i in 0..phnum {
        let ph = phoff
            .checked_add(i.checked_mul(phentsize).ok_or_else(|| bad("bad program header table"))?)
            .ok_or_else(|| bad("bad program header table"))?;
        let p_type = u32_at(elf, ph)?;
        let flags = u32_at(elf, ph + 4)?;
        let offset = u64_at(elf, ph + 8)?;
        let vaddr = u64_at(elf, ph + 16)?;
        let filesz = u64_at(elf, ph + 32)?;
        let memsz = u64_at(elf, ph + 40)?;
        match p_type {
            1 => {
                // PT_LOAD
                let start = base.checked_add(vaddr).ok_or_else(|| bad("segment address overflows"))?;
                let end = start.checked_add(memsz).ok_or_else(|| bad("segment size overflows"))?;
                if start < layout::IMAGE || end > layout::IMAGE_END || filesz > memsz {
                    return Err(bad(format!(
                        "segment {start:#x}..{end:#x} does not fit the image area {:#x}..{:#x} ({} MiB)",
                        layout::IMAGE,
                        layout::IMAGE_END,
                        (layout::IMAGE_END - layout::IMAGE) >> 20
                    )));
                }
                let src_end = offset
                    .checked_add(filesz)
                    .filter(|e| *e <= elf.len() as u64)
                    .ok_or_else(|| bad("segment data beyond the end of the file"))?;
                let at = (start - layout::IMAGE) as usize;
                if filesz > 0 {
                    populate(&bytes[at..at + filesz as usize], 23 /* MADV_POPULATE_WRITE */);
                }
                bytes[at..at + filesz as usize].copy_from_slice(&elf[offset as usize..src_end as usize]);
                dirty[at / PAGE as usize..(at + filesz as usize).div_ceil(PAGE as usize)].fill(true);
                let perm = Perm { write: flags & 2 != 0, exec: flags & 1 != 0 };
                for page in ((start - layout::IMAGE) / PAGE)..(end - layout::IMAGE).div_ceil(PAGE) {
                    let slot = &mut pages[page as usize];
                    let merged = match slot {
                        Some(p) => Perm { write: p.write || perm.write, exec: p.exec || perm.exec },
                        None => perm,
                    };
                    if merged.write && merged.exec {
                        return Err(bad(format!(
                            "page {:#x} would be both writable and executable",
                            layout::IMAGE + page * PAGE
                        )));
                    }
                    *slot = Some(merged);
                }
            }
            2 => dynamic = Some((base.checked_add(vaddr).ok_or_else(|| bad("bad dynamic section"))?, memsz)),
            _ => {}
        }
    }
    let entry = base.checked_add(u64_at(elf, 24)?).ok_or_else(|| bad("bad entry point"))?;
    let entry_page = entry.checked_sub(layout::IMAGE).map(|o| (o / PAGE) as usize);
    if !entry_page.and_then(|p| pages.get(p).copied().flatten()).is_some_and(|p| p.exec) {
        return Err(bad(format!("entry point {entry:#x} is not in executable code")));
    }
    if let Some((addr, len)) = dynamic {
        relocate(&mut bytes, &mut dirty, base, addr, len)?;
    }
    let mut written: Vec<(usize, usize)> = Vec::new();
    for (page, _) in dirty.iter().enumerate().filter(|(_, d)| **d) {
        let (start, end) = (page * PAGE as usize, (page + 1) * PAGE as usize);
        match written.last_mut() {
            Some((_, e)) if *e == start => *e = end,
            _ => written.push((start, end)),
        }
    }
    Ok(Loaded { bytes, written, pages, entry })
}

/// Asks the kernel to map the pages of `range` now (`advice`: MADV_POPULATE_READ, 22, or
/// MADV_POPULATE_WRITE, 23; Linux 5.14). A hint: on failure the pages fault in as usual.
pub(crate) fn populate(range: &[u8], advice: libc::c_int) {
    let page = PAGE as usize;
    let start = range.as_ptr() as usize / page * page;
    let end = (range.as_ptr() as usize + range.len()).next_multiple_of(page);
    // SAFETY: madvise with a populate advice only maps pages of this process's own mappings
    // (the range lies in one allocation or one static); it changes no contents.
    unsafe { libc::madvise(start as *mut libc::c_void, end - start, advice) };
}

/// Applies `R_X86_64_RELATIVE` relocations listed by the dynamic section (already loaded).
fn relocate(image: &mut [u8], dirty: &mut [bool], base: u64, dynamic: u64, len: u64) -> Result<()> {
    let read = |image: &[u8], addr: u64| -> Result<u64> {
        let o = addr.checked_sub(layout::IMAGE).ok_or_else(|| bad("address below the image"))? as usize;
        u64_at(image, o)
    };
    let (mut rela, mut relasz, mut relaent) = (0, 0, 24);
    let entries = len / 16;
    for i in 0..entries.min(256) {
        let tag = read(image, dynamic + i * 16)?;
        let val = read(image, dynamic + i * 16 + 8)?;
        match tag {
            0 => break,
            7 => rela = val,
            8 => relasz = val,
            9 => relaent = val,
            _ => {}
        }
    }
    if relasz == 0 {
        return Ok(());
    }
    if relaent != 24 {
        return Err(bad("unexpected relocation entry size"));
    }
    let start = base.checked_add(rela).ok_or_else(|| bad("bad relocation table"))?;
    for i in 0..relasz / 24 {
        let at = start + i * 24;
        let offset = read(image, at)?;
        let info = read(image, at + 8)?;
        let addend = read(image, at + 16)?;
        if info & 0xffff_ffff != 8 {
            return Err(bad(format!(
                "relocation type {} is not supported (only R_X86_64_RELATIVE)",
                info & 0xffff_ffff
            )));
        }
        let target = base
            .checked_add(offset)
            .and_then(|t| t.checked_sub(layout::IMAGE))
            .ok_or_else(|| bad("relocation outside the image"))? as usize;
        let value = base.wrapping_add(addend);
        image
            .get_mut(target..target + 8)
            .ok_or_else(|| bad("relocation outside the image"))?
            .copy_from_slice(&value.to_le_bytes());
        dirty[target / PAGE as usize] = true;
        dirty[(target + 7) / PAGE as usize] = true;
    }
    Ok(())
}

/// The initial contents of guest RAM for one program, in a memfd.
#[derive(Debug)]
pub(crate) struct GuestImage {
    pub(crate) memfd: File,
    pub(crate) ram: u64,
    pub(crate) entry: u64,
    pub(crate) vcpus: u32,
    /// Where a data program (a wasm module) lies, and where the heap starts after it.
    pub(crate) program: (u64, u64),
    pub(crate) heap_start: u64,
    /// Guest-physical ranges `[start, end)` with contents (the VM's structures, the program, a
    /// data program), and whether a run may map the range shared (see `Vm::start`); the rest
    /// of guest RAM starts zeroed and is mapped anonymous.
    pub(crate) content: Vec<(u64, u64, Sharing)>,
    /// Where the last of `content` ends.
    pub(crate) content_end: u64,
    /// For each page of the image area: whether the guest may write it. The host writes into
    /// guest memory for the guest only where the guest could write itself.
    image_writable: Vec<bool>,
    /// Guest-physical ranges `[start, end)` a run is expected to touch, populated writable in
    /// the run's memory before the guest starts (see [`super::vm::Vm::start`]).
    pub(crate) hot: Vec<(u64, u64)>,
    /// The 2 MiB regions of the image area that hold only code, or only read-only data, and
    /// that the guest's page tables map with one large page each (read and execute, or read). See `Machine::create` for how a run
    /// backs them. Their bytes are written into `memfd` only when a machine first maps them
    /// from it ([`GuestImage::share_code`]).
    pub(crate) large_code: Vec<LargeCode>,
    shared_code: std::sync::OnceLock<std::result::Result<(), String>>,
    /// The program as loaded into the image area (see [`Loaded`]), kept for the large code
    /// regions' bytes; pages the loader never touched take no memory.
    program_bytes: Vec<u8>,
}

/// One large read-only region of an image (code, or read-only data).
#[derive(Debug)]
pub(crate) struct LargeCode {
    /// Its guest-physical start (2 MiB-aligned).
    pub(crate) region: u64,
    /// Where its first loaded page starts (the rest of the region reads as zeros).
    pub(crate) at: u64,
    /// Its bytes from there: a range of [`GuestImage::program_bytes`].
    bytes: std::ops::Range<usize>,
}

impl GuestImage {
    /// A large code region's loaded bytes (they start at its `at`).
    pub(crate) fn code_bytes(&self, code: &LargeCode) -> &[u8] {
        &self.program_bytes[code.bytes.clone()]
    }
}

fn memfd(size: u64) -> io::Result<File> {
    let file = File::from(sys::memfd_create(c"sandcell-guest-image")?);
    file.set_len(size)?;
    Ok(file)
}

/// Writes the image at guest addresses. The VM's structures (below [`layout::PAGE_TABLES_END`],
/// written a few bytes at a time: a page-table entry is 8) are gathered in memory and written
/// with one system call ([`Writer::finish`]); larger pieces go to the file directly.
struct Writer<'a> {
    file: &'a File,
    low: std::cell::RefCell<Vec<u8>>,
}
impl Writer<'_> {
    fn put(&self, addr: u64, bytes: &[u8]) -> io::Result<()> {
        let end = addr + bytes.len() as u64;
        if end <= layout::PAGE_TABLES_END {
            let mut low = self.low.borrow_mut();
            if low.len() < end as usize {
                low.resize(end as usize, 0);
            }
            low[addr as usize..end as usize].copy_from_slice(bytes);
            Ok(())
        } else {
            self.file.write_all_at(bytes, addr)
        }
    }
    fn u64(&self, addr: u64, v: u64) -> io::Result<()> {
        self.put(addr, &v.to_le_bytes())
    }
    fn finish(self) -> io::Result<()> {
        self.file.write_all_at(&self.low.into_inner(), 0)
    }
}

/// How a run maps a range of the image.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Sharing {
    /// Copy-on-write: the run may change it (writable program pages, the VM's structures).
    Private,
    /// The image's own pages: the guest cannot write them (its page tables say so) and the host
    /// writes nowhere the guest cannot (`GuestImage::writable`).
    Shared,
}

impl GuestImage {
    /// Whether the guest may write every byte of `[addr, addr + len)`: in its image, stacks or
    /// heap, and not a read-only or unmapped page of its program.
    ///
    /// This follows the guest's page tables exactly (see [`build`]): below [`layout::IMAGE`]
    /// nothing is the guest's to write; in the image area, the program's writable pages; in the
    /// stack area, each existing vCPU's stack but its lowest page (the guard page, unmapped) and
    /// nothing of the strides of vCPUs that do not exist; the heap up to the end of guest RAM.
    pub(crate) fn writable(&self, addr: u64, len: u64) -> bool {
        let Some(end) = addr.checked_add(len) else { return false };
        if len == 0 {
            return true;
        }
        if addr < layout::IMAGE || end > self.ram {
            return false;
        }
        let first = addr & !(PAGE - 1);
        (first..end).step_by(PAGE as usize).all(|page| self.page_writable(page))
    }

    /// The page-aligned ranges of guest RAM whose contents a run can change: every page the
    /// guest may write ([`GuestImage::writable`]), and those only the VM's exception stubs or
    /// the host write (the GDT and kernel stack pages, the mailboxes, the boot information).
    /// Everything else stays as the image has it for the VM's whole life. A snapshot restores
    /// exactly these (see `warm.rs`).
    pub(crate) fn changeable(&self) -> Vec<(u64, u64)> {
        let mut ranges = vec![
            (layout::GDT, layout::GDT + PAGE),
            (layout::KERNEL_STACK_TOP - PAGE, layout::KERNEL_STACK_TOP),
            (layout::MAILBOX, layout::BOOT_INFO + layout::BOOT_INFO_SIZE),
        ];
        let mut page = layout::IMAGE;
        while page < layout::HEAP.min(self.ram) {
            if self.page_writable(page) {
                match ranges.last_mut() {
                    Some((_, end)) if *end == page => *end += PAGE,
                    _ => ranges.push((page, page + PAGE)),
                }
            }
            page += PAGE;
        }
        let heap_end = self.ram / LARGE * LARGE;
        if self.heap_start < heap_end {
            ranges.push((self.heap_start, heap_end));
        }
        ranges
    }

    /// How much guest RAM a one-shot run of the wasm runtime registers with KVM up front (see
    /// `vm::Code`): the small-block heap whole (the runtime's allocator touches it anywhere) and
    /// 32 MiB of large blocks; the heap grows past it by `op::RAM`. A native guest gets all its
    /// RAM (it may touch any of its heap without asking).
    pub(crate) fn initial_ram(&self) -> u64 {
        if self.program.1 == 0 {
            return self.ram;
        }
        let boot = sandcell_abi::BootInfo {
            program_len: self.program.1,
            heap_start: self.heap_start,
            heap_end: self.ram,
            ..sandcell_abi::BootInfo::from_fields([0; sandcell_abi::BootInfo::FIELDS])
        };
        boot.heap_split().saturating_add(32 << 20).next_multiple_of(LARGE).min(self.ram)
    }

    /// Writes the large code regions into the image's file (once), for machines that map them
    /// from it.
    pub(crate) fn share_code(&self) -> Result<()> {
        self.shared_code
            .get_or_init(|| {
                use std::os::unix::fs::FileExt;
                self.large_code
                    .iter()
                    .try_for_each(|c| self.memfd.write_all_at(self.code_bytes(c), c.at))
                    .map_err(|e| e.to_string())
            })
            .clone()
            .map_err(|e| Error::setup("build the guest image (code)", io::Error::other(e)))
    }

    /// Whether the guest's page tables let it write the page at `page` (page-aligned).
    fn page_writable(&self, page: u64) -> bool {
        if page < layout::IMAGE {
            false
        } else if page < layout::IMAGE_END {
            self.image_writable.get(((page - layout::IMAGE) / PAGE) as usize).copied().unwrap_or(false)
        } else if page < layout::HEAP {
            let cpu = (page - layout::STACKS) / layout::STACK_STRIDE;
            let guard = layout::STACKS + cpu * layout::STACK_STRIDE;
            cpu < u64::from(self.vcpus) && page != guard
        } else {
            // The heap is mapped in 2 MiB pages up to the last whole one below the end of RAM;
            // a wasm module's bytes below `heap_start` are read-only.
            page >= self.heap_start && page < self.ram / LARGE * LARGE
        }
    }
}

/// What a run populates ahead of the guest (see [`GuestImage::hot`]) besides the whole program:
/// the top of each stack, and the start of the heap — more for the wasm runtime, which builds
/// its module and linear memory there.
///
/// A VMM that shadows the guest's page tables (KVM without EPT/NPT, e.g. on PVM) maps, on a
/// fault, the faulting page and its neighbours in the same aligned group of eight page-table
/// entries — but only up to the first neighbour whose host page is not present yet. The top of
/// a stack is therefore populated a whole group (32 KiB, stack tops are 1 MiB-aligned): with
/// half a group, the first stack access mapped one page and the next page cost a second exit.
const HOT_STACK: u64 = 8 * PAGE;
const HOT_HEAP: u64 = 4 * PAGE;
const HOT_HEAP_WASM: u64 = 64 * PAGE;

/// Exceptions for which the CPU pushes an error code.
const HAS_ERROR_CODE: [u8; 8] = [8, 10, 11, 12, 13, 14, 17, 21];

/// Where the page-directory entry for the heap's 2 MiB page at `addr` lies in guest memory, and
/// the entry as [`build`] writes it.
pub(crate) fn heap_entry(addr: u64) -> (u64, u64) {
    (layout::PAGE_TABLES + 2 * PAGE + (addr / LARGE) * 8, addr | P | W | U | A | D | PS | NX)
}

/// Builds the image for `loaded` (and, for the wasm runtime, the module bytes `data`).
pub(crate) fn build(loaded: Loaded, data: &[u8], ram: u64, vcpus: u32) -> Result<Arc<GuestImage>> {
    let setup = |what: &'static str| move |e: io::Error| Error::setup(format!("build the guest image ({what})"), e);
    let file = tracing::debug_span!("memfd").in_scope(|| memfd(ram)).map_err(setup("memfd"))?;
    let w = Writer { file: &file, low: std::cell::RefCell::new(Vec::with_capacity(layout::PAGE_TABLES_END as usize)) };

    // GDT: null, kernel code 0x08, kernel data 0x10, user code 0x18, user data 0x20, TSS 0x28.
    // Accessed bits are preset so that the CPU never writes to the table.
    let tss_limit: u64 = 0x68 + 0x2000;
    let tss_lo = (tss_limit & 0xffff)
        | ((layout::TSS & 0xff_ffff) << 16)
        | (0x89 << 40) // present, available 64-bit TSS
        | (((tss_limit >> 16) & 0xf) << 48)
        | (((layout::TSS >> 24) & 0xff) << 56);
    let gdt = [
        0,
        0x0020_9B00_0000_0000u64,
        0x0000_9300_0000_0000,
        0x0020_FB00_0000_0000,
        0x0000_F300_0000_0000,
        tss_lo,
        layout::TSS >> 32,
    ];
    for (i, d) in gdt.iter().enumerate() {
        w.u64(layout::GDT + i as u64 * 8, *d).map_err(setup("GDT"))?;
    }

    // Exception stubs and the IDT. Each stub: [push 0 if no error code]; push vector;
    // mov dx, EXCEPTION_PORT; out dx, al; hlt; jmp hlt.
    let port = sandcell_abi::EXCEPTION_PORT.to_le_bytes();
    for v in 0u8..32 {
        let mut stub = Vec::with_capacity(16);
        if !HAS_ERROR_CODE.contains(&v) {
            stub.extend_from_slice(&[0x6a, 0x00]);
        }
        stub.extend_from_slice(&[0x6a, v, 0x66, 0xba, port[0], port[1], 0xee, 0xf4, 0xeb, 0xfd]);
        stub.resize(16, 0x90);
        let handler = layout::STUBS + v as u64 * 16;
        w.put(handler, &stub).map_err(setup("stubs"))?;
        // 64-bit interrupt gate, selector 0x08; int3 (#BP) may be raised from user mode.
        let dpl: u64 = if v == 3 { 3 } else { 0 };
        let lo = (handler & 0xffff) | (0x08 << 16) | ((0x8e | (dpl << 5)) << 40) | (((handler >> 16) & 0xffff) << 48);
        w.u64(layout::IDT + v as u64 * 16, lo).map_err(setup("IDT"))?;
        w.u64(layout::IDT + v as u64 * 16 + 8, handler >> 32).map_err(setup("IDT"))?;
    }

    // TSS: the kernel stack for exceptions, and an I/O bitmap that lets user mode reach only the
    // hypercall port (an `out` of up to 4 bytes checks 4 bits).
    w.u64(layout::TSS + 4, layout::KERNEL_STACK_TOP).map_err(setup("TSS"))?;
    w.put(layout::TSS + 0x66, &0x68u16.to_le_bytes()).map_err(setup("TSS"))?;
    let mut bitmap = vec![0xffu8; 0x2000 + 1];
    let hp = sandcell_abi::HYPERCALL_PORT as usize;
    for port in hp..hp + 4 {
        bitmap[port / 8] &= !(1 << (port % 8));
    }
    w.put(layout::TSS + 0x68, &bitmap).map_err(setup("TSS"))?;

    // A 2 MiB region of the image area whose mapped pages all have the same read-only
    // permissions (all code, or all read-only data) gets one large page: on a VMM that shadows
    // page tables, one fault maps it where 4 KiB pages cost one fault per 32 KiB the guest
    // touches. Its unmapped pages read as zeros (nothing is loaded there) and cannot be written
    // either: W^X holds.
    let per_region = (LARGE / PAGE) as usize;
    let regions: Vec<(u64, bool)> = loaded
        .pages
        .chunks(per_region)
        .enumerate()
        .filter_map(|(i, region)| {
            let first = region.iter().flatten().next()?;
            let uniform = region.len() == per_region && !first.write && region.iter().flatten().all(|p| p == first);
            uniform.then_some((layout::IMAGE + i as u64 * LARGE, first.exec))
        })
        .collect();
    // Their bytes are kept apart (see `LargeCode`); the rest of the program goes into the file.
    let large_code: Vec<LargeCode> = regions
        .iter()
        .map(|&(region, _)| {
            let lo = (region - layout::IMAGE) as usize;
            let hi = (lo + LARGE as usize).min(loaded.bytes.len());
            // The pages loaded there (the rest of the region reads as zeros).
            let clipped =
                loaded.written.iter().map(|&(a, b)| (a.clamp(lo, hi), b.clamp(lo, hi))).filter(|(a, b)| a < b);
            let first = clipped.clone().map(|(a, _)| a).min().unwrap_or(lo);
            let last = clipped.map(|(_, b)| b).max().unwrap_or(first);
            LargeCode { region, at: layout::IMAGE + first as u64, bytes: first..last }
        })
        .collect();
    let large_at = |gpa: u64| regions.iter().find(|(r, _)| *r == gpa).map(|(_, exec)| *exec);
    let in_large = |start: usize| large_at(layout::IMAGE + start as u64 / LARGE * LARGE).is_some();

    // The program.
    tracing::debug_span!("program")
        .in_scope(|| {
            loaded.written.iter().try_for_each(|&(start, end)| {
                // Written ranges are page runs; one that starts in a large code region may run
                // on past it.
                let mut at = start;
                while at < end {
                    let next = (at as u64 / LARGE * LARGE + LARGE).min(end as u64) as usize;
                    if !in_large(at) {
                        w.put(layout::IMAGE + at as u64, &loaded.bytes[at..next])?;
                    }
                    at = next;
                }
                Ok(())
            })
        })
        .map_err(setup("program"))?;
    let program_at = layout::HEAP;
    w.put(program_at, data).map_err(setup("program data"))?;
    // The module's bytes get 2 MiB pages of their own, read-only to the guest (the runtime
    // only reads them): they are mapped straight from the image, shared by every run, and a
    // snapshot never has to save or restore them.
    let heap_start = (program_at + data.len() as u64).next_multiple_of(LARGE);
    if heap_start + LARGE > ram {
        return Err(Error::invalid_program(format!(
            "the module ({} bytes) does not fit {} MiB of guest RAM",
            data.len(),
            ram >> 20
        )));
    }

    // Page tables: PML4, PDPT, one PD per GiB, 4 KiB page tables for the fixed area below HEAP,
    // 2 MiB pages for the heap.
    let pml4 = layout::PAGE_TABLES;
    let pdpt = pml4 + PAGE;
    let pd = pdpt + PAGE;
    let gibs = ram.div_ceil(1 << 30);
    let pt = pd + gibs * PAGE;
    let small_tables = layout::HEAP / LARGE;
    if pt + small_tables * PAGE > layout::PAGE_TABLES_END {
        return Err(Error::invalid_policy("memory", "the micro-VM backend supports at most 2 GiB of guest RAM"));
    }
    // Permissions are decided at the last level. Accessed (and, where writable, dirty) bits are
    // preset: the CPU would otherwise set them on first use, and a VMM that shadows page tables
    // (as KVM does without EPT, e.g. on PVM) takes a fault to do it for the CPU, and maps a page
    // whose entry is not yet accessed only when it is touched, one fault per page, instead of
    // prefetching its neighbours.
    let table = |addr: u64| addr | P | W | U | A;
    w.u64(pml4, table(pdpt)).map_err(setup("page tables"))?;
    for g in 0..gibs {
        w.u64(pdpt + g * 8, table(pd + g * PAGE)).map_err(setup("page tables"))?;
    }
    for i in 0..small_tables {
        let entry = match large_at(i * LARGE) {
            Some(exec) => i * LARGE | P | U | A | PS | if exec { 0 } else { NX },
            None => table(pt + i * PAGE),
        };
        w.u64(pd + i * 8, entry).map_err(setup("page tables"))?;
    }
    let mut addr = layout::HEAP;
    while addr + LARGE <= ram {
        let (at, entry) = heap_entry(addr);
        debug_assert_eq!(at, pd + (addr / LARGE) * 8);
        let entry = if addr < heap_start { addr | P | U | A | PS | NX } else { entry };
        w.u64(at, entry).map_err(setup("page tables"))?;
        addr += LARGE;
    }
    let pte =
        |addr: u64, flags: u64| w.u64(pt + (addr / PAGE) * 8, addr | flags | A | if flags & W != 0 { D } else { 0 });
    let kernel_rw = P | W | NX;
    pte(layout::GDT, kernel_rw).map_err(setup("page tables"))?;
    pte(layout::IDT, P | NX).map_err(setup("page tables"))?;
    for page in (layout::TSS..layout::STUBS).step_by(PAGE as usize) {
        pte(page, P | NX).map_err(setup("page tables"))?;
    }
    pte(layout::STUBS, P).map_err(setup("page tables"))?;
    pte(layout::KERNEL_STACK_TOP - PAGE, kernel_rw).map_err(setup("page tables"))?;
    pte(layout::MAILBOX, P | W | U | NX).map_err(setup("page tables"))?;
    for page in (layout::BOOT_INFO..layout::BOOT_INFO + layout::BOOT_INFO_SIZE).step_by(PAGE as usize) {
        pte(page, P | U | NX).map_err(setup("page tables"))?;
    }
    for (i, perm) in loaded.pages.iter().enumerate() {
        if let Some(perm) = perm {
            let flags = P | U | if perm.write { W } else { 0 } | if perm.exec { 0 } else { NX };
            pte(layout::IMAGE + i as u64 * PAGE, flags).map_err(setup("page tables"))?;
        }
    }
    for cpu in 0..vcpus {
        let bottom = layout::stack_top(cpu) - layout::STACK_STRIDE;
        // The lowest page stays unmapped: a stack overflow faults instead of running into the
        // stack below.
        for page in ((bottom + PAGE)..layout::stack_top(cpu)).step_by(PAGE as usize) {
            pte(page, P | W | U | NX).map_err(setup("page tables"))?;
        }
    }
    // What a run touches: its mailboxes, the boot information, the program's pages (the
    // read-only ones are shared, which costs no copy), the top of each stack, the start of the
    // heap.
    let mut hot = vec![(layout::MAILBOX, layout::BOOT_INFO + PAGE)];
    for (i, perm) in loaded.pages.iter().enumerate() {
        if perm.is_some() {
            let page = layout::IMAGE + i as u64 * PAGE;
            match hot.last_mut() {
                Some((_, end)) if *end == page => *end += PAGE,
                _ => hot.push((page, page + PAGE)),
            }
        }
    }
    for cpu in 0..vcpus {
        hot.push((layout::stack_top(cpu) - HOT_STACK, layout::stack_top(cpu)));
    }
    let hot_heap = if data.is_empty() { HOT_HEAP } else { HOT_HEAP_WASM };
    hot.push((heap_start, (heap_start + hot_heap).min(ram)));
    // The VM's structures end with its page tables; the program with its last mapped page.
    let tables_end = pt + small_tables * PAGE;
    let mut content = vec![(0, tables_end, Sharing::Private)];
    for (i, perm) in loaded.pages.iter().enumerate() {
        let Some(perm) = perm else { continue };
        let page = layout::IMAGE + i as u64 * PAGE;
        let sharing = if perm.write { Sharing::Private } else { Sharing::Shared };
        match content.last_mut() {
            Some((_, end, s)) if *end == page && *s == sharing => *end += PAGE,
            _ => content.push((page, page + PAGE, sharing)),
        }
    }
    if !data.is_empty() {
        content.push((program_at, (program_at + data.len() as u64).next_multiple_of(PAGE), Sharing::Shared));
    }
    tracing::debug_span!("structures").in_scope(|| w.finish()).map_err(setup("structures"))?;
    let image_writable = loaded.pages.iter().map(|p| p.is_some_and(|p| p.write)).collect();
    let content_end = content.iter().map(|(_, end, _)| *end).max().unwrap_or(0);
    Ok(Arc::new(GuestImage {
        content,
        content_end,
        image_writable,
        hot,
        large_code,
        shared_code: std::sync::OnceLock::new(),
        program_bytes: loaded.bytes,
        memfd: file,
        ram,
        entry: loaded.entry,
        vcpus,
        program: (program_at, data.len() as u64),
        heap_start,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A minimal static-pie ELF: one R+X segment with an entry point, one RW segment, a dynamic
    /// section with one RELATIVE relocation.
    fn tiny_elf() -> Vec<u8> {
        let mut e = vec![0u8; 0x3000];
        e[..4].copy_from_slice(b"\x7fELF");
        e[4] = 2;
        e[5] = 1;
        e[16..18].copy_from_slice(&3u16.to_le_bytes());
        e[18..20].copy_from_slice(&62u16.to_le_bytes());
        e[24..32].copy_from_slice(&0x1000u64.to_le_bytes()); // entry
        e[32..40].copy_from_slice(&64u64.to_le_bytes()); // phoff
        e[54..56].copy_from_slice(&56u16.to_le_bytes());
        e[56..58].copy_from_slice(&3u16.to_le_bytes());
        let ph = |e: &mut Vec<u8>, i: usize, ty: u32, flags: u32, off: u64, vaddr: u64, size: u64| {
            let o = 64 + i * 56;
            e[o..o + 4].copy_from_slice(&ty.to_le_bytes());
            e[o + 4..o + 8].copy_from_slice(&flags.to_le_bytes());
            e[o + 8..o + 16].copy_from_slice(&off.to_le_bytes());
            e[o + 16..o + 24].copy_from_slice(&vaddr.to_le_bytes());
            e[o + 32..o + 40].copy_from_slice(&size.to_le_bytes());
            e[o + 40..o + 48].copy_from_slice(&size.to_le_bytes());
        };
        ph(&mut e, 0, 1, 5, 0x1000, 0x1000, 0x1000);
        ph(&mut e, 1, 1, 6, 0x2000, 0x2000, 0x1000);
        ph(&mut e, 2, 2, 6, 0x2000, 0x2000, 0x40);
        // dynamic: RELA=0x2100, RELASZ=24, RELAENT=24, NULL
        let dynv = [(7u64, 0x2100u64), (8, 24), (9, 24), (0, 0)];
        for (i, (t, v)) in dynv.iter().enumerate() {
            e[0x2000 + i * 16..0x2008 + i * 16].copy_from_slice(&t.to_le_bytes());
            e[0x2008 + i * 16..0x2010 + i * 16].copy_from_slice(&v.to_le_bytes());
        }
        // one relocation: *(base + 0x2200) = base + 0x1234
        e[0x2100..0x2108].copy_from_slice(&0x2200u64.to_le_bytes());
        e[0x2108..0x2110].copy_from_slice(&8u64.to_le_bytes());
        e[0x2110..0x2118].copy_from_slice(&0x1234u64.to_le_bytes());
        e
    }

    #[test]
    fn loads_static_pie_with_relocations_and_permissions() {
        let l = load_elf(&tiny_elf()).unwrap();
        assert_eq!(l.entry, layout::IMAGE + 0x1000);
        assert_eq!(u64_at(&l.bytes, 0x2200).unwrap(), layout::IMAGE + 0x1234);
        assert_eq!(l.pages[1], Some(Perm { write: false, exec: true }));
        assert_eq!(l.pages[2], Some(Perm { write: true, exec: false }));
        assert_eq!(l.pages[0], None);
    }

    /// Walks the guest page tables in the image: whether user mode may write `addr`.
    fn user_writable_in_tables(img: &GuestImage, addr: u64) -> bool {
        use std::os::unix::fs::FileExt;
        let read = |at: u64| {
            let mut b = [0u8; 8];
            img.memfd.read_exact_at(&mut b, at).unwrap();
            u64::from_le_bytes(b)
        };
        let frame = |e: u64| e & 0x000f_ffff_ffff_f000;
        let mut entry = read(layout::PAGE_TABLES + ((addr >> 39) & 511) * 8);
        let mut allowed = entry & P != 0 && entry & W != 0 && entry & U != 0;
        for shift in [30u64, 21, 12] {
            if !allowed {
                return false;
            }
            entry = read(frame(entry) + ((addr >> shift) & 511) * 8);
            allowed = entry & P != 0 && entry & W != 0 && entry & U != 0;
            if entry & PS != 0 {
                break;
            }
        }
        allowed
    }

    #[test]
    fn the_host_writes_exactly_where_the_guest_page_tables_allow() {
        let loaded = load_elf(&tiny_elf()).unwrap();
        for vcpus in [1, 3] {
            let ram = 64 << 20;
            let img = build(loaded.clone(), b"", ram, vcpus).unwrap();
            let pages = (0..layout::HEAP).step_by(PAGE as usize).chain((layout::HEAP..ram).step_by(LARGE as usize));
            for page in pages {
                if page == layout::MAILBOX {
                    // The guest writes its mailboxes; the host writes them only to answer a
                    // hypercall, never as a buffer the guest names.
                    assert!(user_writable_in_tables(&img, page) && !img.writable(page, 8));
                    continue;
                }
                assert_eq!(
                    img.writable(page, 8),
                    user_writable_in_tables(&img, page),
                    "page {page:#x} with {vcpus} vCPUs"
                );
            }
            // Spans that cross from a writable page into one that is not.
            let guard1 = layout::stack_top(1) - layout::STACK_STRIDE;
            assert!(!img.writable(guard1 - 8, 16));
            assert!(img.writable(layout::stack_top(0) - 16, 16));
            assert!(!img.writable(ram - 8, 16));
            assert!(!img.writable(u64::MAX - 4, 8));
        }
    }

    /// The page-directory entry that maps `addr` (the image's tables, first GiB).
    fn pd_entry(img: &GuestImage, addr: u64) -> u64 {
        use std::os::unix::fs::FileExt;
        let mut b = [0u8; 8];
        img.memfd.read_exact_at(&mut b, layout::PAGE_TABLES + 2 * PAGE + (addr >> 21) * 8).unwrap();
        u64::from_le_bytes(b)
    }

    #[test]
    fn the_wasm_runtime_code_gets_one_read_execute_large_page() {
        let runtime = super::super::RUNTIME;
        if runtime.is_empty() {
            assert!(std::env::var_os("SANDCELL_REQUIRE_ALL").is_none(), "the guest runtime was not built");
            eprintln!("skipped: the guest runtime was not built");
            return;
        }
        let loaded = load_elf(runtime).unwrap();
        let entry = loaded.entry;
        let img = build(loaded, b"\0asm\x01\0\0\0", 64 << 20, 1).unwrap();
        let code =
            img.large_code.iter().find(|c| (c.region..c.region + LARGE).contains(&entry)).expect("no large page");
        let e = pd_entry(&img, code.region);
        assert_eq!(e & (P | U | PS | W | NX), P | U | PS, "{e:#x}");
        assert_eq!(e & !0xfff & !(1 << 63), code.region);
        // Not writable for the host either, on the guest's behalf; its bytes are the runtime's.
        assert!(!img.writable(entry, 8));
        assert!(img.code_bytes(code).iter().any(|&b| b != 0));
        // Mapped shared, the image's file holds the code once asked to.
        img.share_code().unwrap();
        let mut b = vec![0u8; 64];
        std::os::unix::fs::FileExt::read_exact_at(&img.memfd, &mut b, code.at).unwrap();
        assert_eq!(&b[..], &img.code_bytes(code)[..64]);
    }

    #[test]
    fn rejects_malformed_files_without_panicking() {
        let good = tiny_elf();
        assert!(load_elf(b"\x7fELF").is_err());
        assert!(load_elf(b"not an elf").is_err());
        for i in 0..good.len().min(400) {
            for v in [0u8, 0xff, 0x7f] {
                let mut m = good.clone();
                m[i] = v;
                let _ = load_elf(&m);
            }
        }
        let mut wx = good.clone();
        wx[64 + 56 + 4] = 7; // the RW segment becomes RWX
        assert!(load_elf(&wx).unwrap_err().to_string().contains("writable and executable"));
        let mut far = good;
        far[64 + 16..64 + 24].copy_from_slice(&0x1000_0000u64.to_le_bytes());
        assert!(load_elf(&far).is_err());
    }
}
