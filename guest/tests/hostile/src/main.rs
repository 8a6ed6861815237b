//! A hostile micro-VM guest: `vm-hostile MODE [ARG]`. Each mode tries one thing the threat model
//! says a guest cannot do (or exercises a host service), and the tests check the outcome.
#![no_std]
#![no_main]

extern crate alloc;

use core::arch::asm;
use core::sync::atomic::{AtomicU32, Ordering};

use sandcell_guest::abi::{layout, op};
use sandcell_guest::{args, cpu_id, flush, host_call, hypercall, println, read_stdin, vcpu_count, write_stdout};

sandcell_guest::entry!(main);

static DATA: [u8; 16] = [0xc3; 16]; // `ret` instructions, in a non-executable data page
static ARRIVED: AtomicU32 = AtomicU32::new(0);
static READING: AtomicU32 = AtomicU32::new(0);
static READ_DONE: AtomicU32 = AtomicU32::new(0);
/// Runs this VM's memory has seen (`residue`, `ready`): every run restored from a snapshot must
/// find the snapshot's value.
static RUNS: AtomicU32 = AtomicU32::new(0);
/// Set before `ready` (`ready` mode): every run after it must see it.
static INITIALISED: AtomicU32 = AtomicU32::new(0);
/// Randomness drawn before `ready` (`ready` mode): shared by every run from the snapshot.
static TOKEN: core::sync::atomic::AtomicU64 = core::sync::atomic::AtomicU64::new(0);
const SECRET: u64 = 0x5ec2_e7ed_ba5e_ba11;

#[inline(never)]
#[allow(unconditional_recursion)]
fn recurse(n: u64) -> u64 {
    let buf = [n; 64];
    core::hint::black_box(&buf);
    recurse(n + 1) + buf[3]
}

#[inline(never)]
fn plant_secret() {
    let (_, end) = sandcell_guest::heap();
    let sp: u64;
    // SAFETY: reads the stack pointer.
    unsafe { asm!("mov {}, rsp", out(reg) sp) };
    let heap = (end - (16 << 20)..end).step_by(4096);
    let stack = ((sp & !4095) - (256 << 10)..(sp & !4095) - 4096).step_by(4096);
    for page in heap.chain(stack) {
        // SAFETY: the top of the heap and pages well below this frame, all mapped read-write.
        unsafe { core::ptr::write_volatile(page as *mut u64, SECRET) };
    }
}

/// What a previous run could have left behind: markers in the heap and the stack, the static
/// run counter, and the SSE registers (xmm14, xmm15) that `leave_residue` sets before the run
/// ends (general registers are restored the same way, but the program's own code uses them).
#[inline(never)]
fn count_residue() -> (u32, u32, u64, u64) {
    let (start, end) = sandcell_guest::heap();
    let sp: u64;
    let (x15, x14): (u64, u64);
    // SAFETY: reads registers.
    unsafe {
        asm!("mov {}, rsp", out(reg) sp);
        asm!("movq {}, xmm15", out(reg) x15);
        asm!("movq {}, xmm14", out(reg) x14);
    }
    let bottom = layout::stack_top(0) - layout::STACK_STRIDE + 4096;
    let mut found = 0;
    for range in [start..end, bottom..(sp & !4095) - 4096] {
        for page in range.step_by(4096) {
            // SAFETY: heap and stack pages, mapped for the guest.
            if unsafe { core::ptr::read_volatile(page as *const u64) } == SECRET {
                found += 1;
            }
        }
    }
    (found, RUNS.load(Ordering::SeqCst), x15, x14)
}

/// Leaves markers in memory, the run counter and registers for the next run to find.
#[inline(never)]
fn leave_residue() {
    plant_secret();
    RUNS.fetch_add(1, Ordering::SeqCst);
    // SAFETY: sets two registers the program does not use afterwards (the values stay in them
    // until the exit, which is what the next run must not see).
    unsafe {
        asm!("movq xmm15, {}", in(reg) SECRET, out("xmm15") _);
        asm!("movq xmm14, {}", in(reg) SECRET, out("xmm14") _);
    }
}

fn rdrand() -> u64 {
    let v: u64;
    // SAFETY: RDRAND writes one register and the carry flag (the host CPU has it).
    unsafe { asm!("2: rdrand {0}", "jnc 2b", out(reg) v) };
    v
}

fn main() -> i32 {
    let mode = args().nth(1).unwrap_or("");
    let arg = args().nth(2).unwrap_or("");
    if cpu_id() != 0 && mode == "stdin_wait" {
        // Secondary vCPUs wait for stdin (forever, if none comes) while vCPU 0 exits.
        READING.fetch_add(1, Ordering::SeqCst);
        let mut buf = [0u8; 16];
        let n = read_stdin(&mut buf);
        println!("cpu {} read {n}", cpu_id());
        flush();
        READ_DONE.fetch_add(1, Ordering::SeqCst);
        return 0;
    }
    if cpu_id() != 0 {
        // Secondary vCPUs: announce themselves and stop.
        println!("cpu {} of {}", cpu_id(), vcpu_count());
        // Out before arriving: vCPU 0 ends the VM once all have arrived, and its exit carries
        // only its own buffered output.
        flush();
        ARRIVED.fetch_add(1, Ordering::SeqCst);
        return 0;
    }
    // SAFETY (all blocks below): each deliberately does something the VM must stop.
    unsafe {
        match mode {
            "exit" => return arg.parse().unwrap_or(0),
            "spin" => loop {
                core::hint::spin_loop();
            },
            "outside" => core::ptr::write_volatile(0x1_0000_0000 as *mut u64, 1),
            "kernel_read" => {
                core::ptr::read_volatile(layout::GDT as *const u64);
            }
            "page_tables" => {
                core::ptr::read_volatile(layout::PAGE_TABLES as *const u64);
            }
            "null" => {
                core::ptr::read_volatile(core::ptr::null::<u64>());
            }
            "exec_data" => {
                let f: extern "C" fn() = core::mem::transmute(DATA.as_ptr());
                f();
            }
            "write_code" => core::ptr::write_volatile(main as *const () as *mut u8, 0x90),
            "gap" => {
                // The last word of the 2 MiB region that holds this program's code: no segment
                // covers it (in `vm-hostile-large`, mapped by the code's large page).
                let region = (main as *const () as u64) & !0x1f_ffff;
                let word = core::ptr::read_volatile((region + 0x20_0000 - 8) as *const u64);
                println!("gap {word:#x}");
            }
            "stack_overflow" => {
                recurse(0);
            }
            "hlt" => asm!("hlt"),
            "cli" => asm!("cli"),
            "int3" => asm!("int3"),
            "ud2" => asm!("ud2"),
            "syscall" => asm!("syscall", out("rcx") _, out("r11") _),
            "div0" => {
                asm!("xor edx, edx", "xor eax, eax", "xor ecx, ecx", "div ecx", out("eax") _, out("edx") _, out("ecx") _)
            }
            "in" => asm!("in al, 0x60", out("al") _),
            "out" => asm!("out 0x80, al", in("al") 1u8),
            "out_neighbour" => asm!("out dx, al", in("dx") 0x5c1u16, in("al") 1u8),
            "rdmsr" => asm!("rdmsr", in("ecx") 0x10u32, out("eax") _, out("edx") _),
            "wrmsr" => asm!("wrmsr", in("ecx") 0x10u32, in("eax") 0u32, in("edx") 0u32),
            "hc_overflow" => {
                hypercall(op::WRITE, &[1, u64::MAX - 8, 100]);
            }
            "hc_outside" => {
                hypercall(op::WRITE, &[1, 0xffff_0000_0000, 100]);
            }
            "hc_kernel" => {
                hypercall(op::READ, &[layout::GDT, 64]);
            }
            "hc_huge" => {
                hypercall(op::WRITE, &[1, layout::IMAGE, u64::MAX / 2]);
            }
            "hc_read_into_code" => {
                // Asks the host to write stdin over this program's own code: the host must not
                // write where the guest itself may not.
                hypercall(op::READ, &[main as *const () as u64, 16]);
            }
            "hc_read_into_guard" => {
                // Asks the host to write stdin into vCPU 0's stack guard page (unmapped for the
                // guest, so that an overflow faults): the host must refuse it too.
                let guard = layout::stack_top(0) - layout::STACK_STRIDE;
                hypercall(op::READ, &[guard + 8, 16]);
            }
            "hc_read_into_absent_stack" => {
                // The stack area of a vCPU this VM does not have is not mapped either.
                hypercall(op::READ, &[layout::stack_top(layout::MAX_VCPUS - 1) - 64, 16]);
            }
            "hc_read_across_guard" => {
                // A span that starts in vCPU 1's guard page and ends in vCPU 0's mapped stack.
                let guard1 = layout::stack_top(1) - layout::STACK_STRIDE;
                hypercall(op::READ, &[guard1 - 8, 16]);
            }
            "hc_write_from_code" => {
                // Reading its own code out through the host is allowed (the guest can read it).
                let (n, _) = hypercall(op::WRITE, &[1, main as *const () as u64, 4]);
                println!("wrote {n}");
            }
            "hc_exit_outside" => {
                // An exit whose last output lies outside guest memory.
                hypercall(op::EXIT, &[0, u64::MAX, 0xffff_0000_0000, 100]);
            }
            "hc_unknown" => {
                hypercall(999, &[]);
            }
            "hc_bad_version" => {
                let mailbox = layout::mailbox(0) as *mut u8;
                for i in 0..128 {
                    core::ptr::write_volatile(mailbox.add(i), 0xff);
                }
                asm!("out dx, eax", in("dx") sandcell_guest::abi::HYPERCALL_PORT, in("eax") sandcell_guest::abi::MAGIC);
            }
            "flood" => {
                let chunk = [b'x'; 4096];
                loop {
                    write_stdout(&chunk);
                }
            }
            "echo" => {
                let mut out = [0u8; 64];
                match host_call("echo", arg.as_bytes(), &mut out) {
                    Ok(n) => write_stdout(&out[..n]),
                    Err(e) => println!("host call failed: {e:?}"),
                }
                let mut small = [0u8; 2];
                println!();
                println!("{:?}", host_call("echo", b"too long for two bytes", &mut small));
                println!("{:?}", host_call("missing", b"", &mut small));
                let mut msg = [0u8; 64];
                match host_call("fail", b"", &mut msg) {
                    Err(sandcell_guest::HostCallError::Failed(n)) => {
                        println!("failed: {}", core::str::from_utf8(&msg[..n]).unwrap_or("?"))
                    }
                    other => println!("{other:?}"),
                }
            }
            "stdin" => {
                // Reads all of stdin in odd-sized pieces; prints its length and FNV-1a hash.
                let mut buf = [0u8; 1000];
                let (mut total, mut hash) = (0usize, 0xcbf2_9ce4_8422_2325u64);
                loop {
                    let n = read_stdin(&mut buf);
                    if n == 0 {
                        break;
                    }
                    for b in &buf[..n] {
                        hash = (hash ^ *b as u64).wrapping_mul(0x100_0000_01b3);
                    }
                    total += n;
                }
                println!("stdin {total} bytes, fnv {hash:016x}");
            }
            "stdin_wait" => {
                while READING.load(Ordering::SeqCst) < vcpu_count() - 1 {
                    core::hint::spin_loop();
                }
                // Wait for the readers' input, at most ≈ 1e9 TSC ticks (a few tenths of a
                // second), then exit whether or not it came.
                let start = core::arch::x86_64::_rdtsc();
                while READ_DONE.load(Ordering::SeqCst) < vcpu_count() - 1
                    && core::arch::x86_64::_rdtsc().wrapping_sub(start) < 1_000_000_000
                {
                    core::hint::spin_loop();
                }
                return 7;
            }
            "cpus" => {
                let want = vcpu_count() - 1;
                while ARRIVED.load(Ordering::SeqCst) < want {
                    core::hint::spin_loop();
                }
                println!("cpu 0 of {}: {} others arrived", vcpu_count(), want);
            }
            // Leaves a marker in every page of the top 16 MiB of the heap and of 256 KiB of
            // stack below the stack pointer; `find_secret` (a later run) looks for it.
            "secret" => plant_secret(),
            // Counts the markers a previous run left in this VM's heap and stack.
            // With `plant`, plants them first (the test that the search finds them).
            "find_secret" => {
                if arg == "plant" {
                    plant_secret();
                }
                let (start, end) = sandcell_guest::heap();
                let sp: u64;
                asm!("mov {}, rsp", out(reg) sp);
                let bottom = layout::stack_top(0) - layout::STACK_STRIDE + 4096;
                let mut found = 0;
                for range in [start..end, bottom..(sp & !4095)] {
                    for page in range.step_by(4096) {
                        if core::ptr::read_volatile(page as *const u64) == SECRET {
                            found += 1;
                        }
                    }
                }
                println!("found {found} secrets");
            }
            // Reports what an earlier run of the same VM left, then leaves the same behind.
            "residue" => {
                let (found, runs, x15, x14) = count_residue();
                println!("residue: {found} markers, {runs} runs, xmm15 {x15:#x}, xmm14 {x14:#x}");
                flush();
                leave_residue();
                sandcell_guest::exit(0);
            }
            // `ready N [check]`: start-up (N rounds of a loop, a static set), ready, then per
            // run: stdin echoed with what the run sees (the residue, fresh randomness).
            "ready" => {
                println!("before ready: discarded");
                let mut acc = 0u64;
                for i in 0..(arg.parse::<u64>().unwrap_or(1_000_000)) {
                    acc = acc.wrapping_mul(6364136223846793005).wrapping_add(i);
                }
                core::hint::black_box(acc);
                INITIALISED.store(42, Ordering::SeqCst);
                // Drawn once, before ready: every run restored from the snapshot sees this one.
                TOKEN.store(rdrand(), Ordering::SeqCst);
                sandcell_guest::ready();
                // The residue check reads the whole heap (slow on PVM); `ready N` alone only
                // echoes, for benchmarks.
                let check = args().nth(3) == Some("check");
                let (found, runs, x15, x14) =
                    if check { count_residue() } else { (0, RUNS.load(Ordering::SeqCst), 0, 0) };
                let mut buf = [0u8; 256];
                let n = read_stdin(&mut buf);
                let input = core::str::from_utf8(&buf[..n]).unwrap_or("?");
                println!(
                    "input {input:?}, initialised {}, residue {found} markers {runs} runs xmm15 {x15:#x} xmm14 {x14:#x}, token {:016x}, rdrand {:016x}, preparing {}",
                    INITIALISED.load(Ordering::SeqCst),
                    TOKEN.load(Ordering::SeqCst),
                    rdrand(),
                    sandcell_guest::preparing()
                );
                flush();
                if check {
                    leave_residue();
                } else {
                    RUNS.fetch_add(1, Ordering::SeqCst);
                }
                sandcell_guest::exit(0);
            }
            "alloc" => {
                let mib: usize = arg.parse().unwrap_or(1);
                let mut v = alloc::vec::Vec::new();
                for _ in 0..mib {
                    v.push(alloc::vec![1u8; 1 << 20]);
                }
                println!("allocated {mib} MiB");
            }
            _ => {
                println!("unknown mode {mode}");
                return 2;
            }
        }
    }
    println!("{mode}: survived");
    0
}
