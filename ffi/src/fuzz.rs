//! The C ABI fuzz target's body (`fuzz/fuzz_targets/c_abi.rs`; a unit test below replays its
//! corpus). The input is a program of calls: each byte picks an entry point, the bytes after it
//! its arguments — handles that are live, freed, NULL or made up, strings with any bytes,
//! numbers of any size. Whatever the sequence, the library must answer every call with a result
//! or an error object and never crash, leak a handle into another's type, or hang (runs are
//! interrupted by a watchdog).

use std::ffi::{c_char, CString};
use std::ptr::{null, null_mut};
use std::time::Duration;

use crate::consts::*;
use crate::error::{sandcell_error_free, sandcell_error_kind, sandcell_error_message, Error};
use crate::interrupt::{sandcell_interrupt_free, sandcell_interrupt_new, sandcell_interrupt_trigger, Interrupt};
use crate::library::{sandcell_abi_version, sandcell_version};
use crate::outcome::*;
use crate::policy::*;
use crate::program::*;
use crate::sandbox::*;
use crate::util::sandcell_string_free;

/// Reads the fuzzer's bytes.
struct Input<'a>(&'a [u8]);

impl Input<'_> {
    fn byte(&mut self) -> Option<u8> {
        let (b, rest) = self.0.split_first()?;
        self.0 = rest;
        Some(*b)
    }
    fn u64(&mut self) -> u64 {
        let mut v = [0u8; 8];
        for b in &mut v {
            *b = self.byte().unwrap_or(0);
        }
        // Small numbers, the limits' edges and anything else, about equally often.
        match v[0] % 4 {
            0 => u64::from(v[1]),
            1 => [0, 1, u64::MAX, u64::MAX - 1, 1 << 32, u64::from(u32::MAX)][usize::from(v[1] % 6)],
            _ => u64::from_le_bytes(v),
        }
    }
    /// A length-prefixed run of bytes.
    fn bytes(&mut self) -> &[u8] {
        let n = usize::from(self.byte().unwrap_or(0)).min(self.0.len());
        let (b, rest) = self.0.split_at(n);
        self.0 = rest;
        b
    }
    /// A string (NUL bytes inside end it, as they would in C).
    fn string(&mut self) -> CString {
        let b = self.bytes();
        let end = b.iter().position(|&c| c == 0).unwrap_or(b.len());
        CString::new(&b[..end]).expect("no NUL inside")
    }
}

/// Handles made so far, freed ones included (a freed handle must be refused, not used).
struct Handles<T> {
    all: Vec<*mut T>,
}

impl<T> Handles<T> {
    fn pick(&self, input: &mut Input<'_>) -> *mut T {
        let b = input.byte().unwrap_or(0);
        match b {
            0 => null_mut(),
            // An address nothing was ever registered at (never dereferenced unless registered).
            1 => 0x1000 as *mut T,
            _ if self.all.is_empty() => null_mut(),
            _ => self.all[usize::from(b) % self.all.len()],
        }
    }
}

/// Frees an error object, after reading it as a caller would.
unsafe fn check(error: *mut Error) {
    if !error.is_null() {
        // SAFETY: a non-NULL result is a live error object.
        unsafe {
            let kind = sandcell_error_kind(error);
            let message = sandcell_error_message(error);
            assert!(!message.is_null());
            // SANDCELL_ERROR_INTERNAL is a panic the library caught: a bug.
            assert!(
                (SANDCELL_ERROR_INVALID_POLICY..=SANDCELL_ERROR_INVALID_ARGUMENT).contains(&kind),
                "error kind {kind}: {}",
                std::ffi::CStr::from_ptr(message).to_string_lossy()
            );
            sandcell_error_free(error);
        }
    }
}

/// Runs the calls `data` describes (see the module's documentation).
pub fn c_abi(data: &[u8]) {
    let mut input = Input(data);
    let mut policies = Handles::<Policy> { all: Vec::new() };
    let mut programs = Handles::<Program> { all: Vec::new() };
    let mut sandboxes = Handles::<Sandbox> { all: Vec::new() };
    let mut outcomes = Handles::<Outcome> { all: Vec::new() };
    let mut interrupts = Handles::<Interrupt> { all: Vec::new() };
    let mut calls = 0;
    while let Some(op) = input.byte() {
        calls += 1;
        if calls > 64 {
            break;
        }
        // SAFETY: every call below is one a C caller may make: handles live, freed, NULL or
        // never made (the library checks each), strings NUL-terminated, buffers of their length.
        unsafe {
            match op % 24 {
                0 => {
                    let mut p = null_mut();
                    check(sandcell_policy_new(&mut p));
                    policies.all.push(p);
                }
                1 => {
                    let json = input.string();
                    let mut p = null_mut();
                    check(sandcell_policy_from_json(json.as_ptr(), &mut p));
                    if !p.is_null() {
                        policies.all.push(p);
                    }
                }
                2 => {
                    let p = policies.pick(&mut input);
                    let v = input.u64();
                    let e = match input.byte().unwrap_or(0) % 10 {
                        0 => sandcell_policy_set_memory(p, v),
                        1 => sandcell_policy_set_timeout_ms(p, v),
                        2 => sandcell_policy_set_cpu_time_ms(p, v),
                        3 => sandcell_policy_set_fuel(p, v),
                        4 => sandcell_policy_set_cpus(p, v as u32),
                        5 => sandcell_policy_set_max_processes(p, v as u32),
                        6 => sandcell_policy_set_max_open_files(p, v),
                        7 => sandcell_policy_set_max_file_size(p, v),
                        8 => sandcell_policy_set_max_output(p, v),
                        _ => sandcell_policy_set_network(p, v as u32),
                    };
                    check(e);
                }
                3 => {
                    let p = policies.pick(&mut input);
                    let (host, guest) = (input.string(), input.string());
                    let writable = input.byte().unwrap_or(0) & 1 == 1;
                    check(sandcell_policy_add_mount(p, host.as_ptr(), guest.as_ptr(), writable));
                }
                4 => {
                    let p = policies.pick(&mut input);
                    let (k, v) = (input.string(), input.string());
                    check(sandcell_policy_set_env(p, k.as_ptr(), v.as_ptr()));
                    check(sandcell_policy_deny_syscall(p, v.as_ptr()));
                }
                5 => {
                    let p = policies.pick(&mut input);
                    let dirs: Vec<CString> = (0..input.byte().unwrap_or(0) % 4).map(|_| input.string()).collect();
                    let ptrs: Vec<*const c_char> = dirs.iter().map(|d| d.as_ptr()).collect();
                    let list = if input.byte().unwrap_or(1) == 0 { null() } else { ptrs.as_ptr() };
                    check(sandcell_policy_set_system_dirs(p, list, ptrs.len()));
                }
                6 => {
                    let p = policies.pick(&mut input);
                    check(sandcell_policy_validate(p));
                    let mut json = null_mut();
                    check(sandcell_policy_to_json(p, &mut json));
                    if !json.is_null() {
                        sandcell_string_free(json);
                    }
                    check(sandcell_policy_set_best_effort(p, input.byte().unwrap_or(0) & 1 == 1));
                    check(sandcell_policy_set_max_output_zero(p));
                    check(sandcell_policy_set_max_file_size_zero(p));
                }
                7 => {
                    let p = policies.pick(&mut input);
                    sandcell_policy_free(p);
                }
                8 => {
                    let bytes = input.bytes().to_vec();
                    let mut prog = null_mut();
                    let (ptr, len) = if bytes.is_empty() && input.byte().unwrap_or(0) & 1 == 1 {
                        (null(), 5) // a NULL buffer with a length: refused
                    } else {
                        (bytes.as_ptr(), bytes.len())
                    };
                    check(sandcell_program_from_bytes(ptr, len, &mut prog));
                    if !prog.is_null() {
                        programs.all.push(prog);
                    }
                }
                9 => {
                    // A small valid module, so that runs happen.
                    let wat: &[u8] = match input.byte().unwrap_or(0) % 4 {
                        0 => b"(module (func (export \"_start\")))",
                        1 => b"(module (func (export \"_start\") (loop (br 0))))",
                        2 => b"(module (func (export \"_start\") unreachable))",
                        _ => b"(module (memory 1) (func (export \"_start\") (drop (memory.grow (i32.const 100000)))))",
                    };
                    let mut prog = null_mut();
                    check(sandcell_program_from_bytes(wat.as_ptr(), wat.len(), &mut prog));
                    programs.all.push(prog);
                }
                10 => {
                    let prog = programs.pick(&mut input);
                    let s = input.string();
                    let e = match input.byte().unwrap_or(0) % 5 {
                        0 => sandcell_program_add_arg(prog, s.as_ptr()),
                        1 => sandcell_program_set_env(prog, s.as_ptr(), s.as_ptr()),
                        2 => sandcell_program_set_cwd(prog, s.as_ptr()),
                        3 => sandcell_program_set_name(prog, s.as_ptr()),
                        _ => sandcell_program_set_entry(prog, s.as_ptr()),
                    };
                    check(e);
                    let stdin = input.bytes();
                    check(sandcell_program_set_stdin(prog, stdin.as_ptr(), stdin.len()));
                }
                11 => {
                    let prog = programs.pick(&mut input);
                    sandcell_program_free(prog);
                }
                12 => {
                    // The wasm backend, or a name that is none (the others would run the
                    // fuzzer's bytes natively, too slowly to fuzz).
                    let name = match input.byte().unwrap_or(0) % 4 {
                        0 => input.string(),
                        _ => c"wasm".to_owned(),
                    };
                    let name =
                        if matches!(name.as_bytes(), b"process" | b"microvm") { c"wasm".to_owned() } else { name };
                    let p = policies.pick(&mut input);
                    let mut sb = null_mut();
                    check(sandcell_sandbox_new(name.as_ptr(), p, null(), &mut sb));
                    if !sb.is_null() {
                        sandboxes.all.push(sb);
                    }
                }
                13 => {
                    let sb = sandboxes.pick(&mut input);
                    let prog = programs.pick(&mut input);
                    run(sb, prog, &mut outcomes, &mut input);
                }
                14 => {
                    let sb = sandboxes.pick(&mut input);
                    check(sandcell_sandbox_interrupt(sb));
                }
                15 => {
                    let sb = sandboxes.pick(&mut input);
                    sandcell_sandbox_free(sb);
                }
                16 => {
                    let o = outcomes.pick(&mut input);
                    read_outcome(o, &mut input);
                }
                17 => {
                    let o = outcomes.pick(&mut input);
                    sandcell_outcome_free(o);
                }
                18 => {
                    let mut i = null_mut();
                    check(sandcell_interrupt_new(&mut i));
                    interrupts.all.push(i);
                }
                19 => {
                    let i = interrupts.pick(&mut input);
                    check(sandcell_interrupt_trigger(i));
                }
                20 => {
                    let i = interrupts.pick(&mut input);
                    sandcell_interrupt_free(i);
                }
                21 => {
                    // NULL out-parameters everywhere.
                    check(sandcell_policy_new(null_mut()));
                    check(sandcell_interrupt_new(null_mut()));
                    check(sandcell_program_from_bytes(b"x".as_ptr(), 1, null_mut()));
                    check(sandcell_sandbox_new(c"wasm".as_ptr(), null(), null(), null_mut()));
                    check(sandcell_sandbox_run(null(), null(), null(), null_mut()));
                }
                22 => {
                    assert!(!sandcell_version().is_null());
                    assert_eq!(sandcell_abi_version(), SANDCELL_ABI_VERSION);
                    let e = input.u64() as usize;
                    sandcell_error_free(if e % 3 == 0 { null_mut() } else { (e & !7 | 0x1000) as *mut Error });
                    sandcell_string_free(null_mut());
                }
                _ => {
                    // Frees of whatever exists, in an order the input picks.
                    let p = policies.pick(&mut input);
                    sandcell_policy_free(p);
                    let s = sandboxes.pick(&mut input);
                    sandcell_sandbox_free(s);
                }
            }
        }
    }
    // SAFETY: as above; each handle freed (again, for some: refused).
    unsafe {
        policies.all.iter().for_each(|&p| sandcell_policy_free(p));
        programs.all.iter().for_each(|&p| sandcell_program_free(p));
        sandboxes.all.iter().for_each(|&s| sandcell_sandbox_free(s));
        outcomes.all.iter().for_each(|&o| sandcell_outcome_free(o));
        interrupts.all.iter().for_each(|&i| sandcell_interrupt_free(i));
    }
}

/// A run with options the input picks, stopped by a watchdog after 300 ms whatever the policy.
unsafe fn run(sb: *mut Sandbox, prog: *mut Program, outcomes: &mut Handles<Outcome>, input: &mut Input<'_>) {
    let mut watchdog = null_mut();
    // SAFETY: the calls of a C caller; the watchdog handle lives until after the run.
    unsafe {
        check(sandcell_interrupt_new(&mut watchdog));
        let size = match input.byte().unwrap_or(0) % 4 {
            0 => 0, // too small: refused
            1 => std::mem::size_of::<RunOptions>() + 16,
            _ => std::mem::size_of::<RunOptions>(),
        };
        // Room past the struct, zeroed, for a caller that says it is bigger (a newer header).
        let empty = RunOptions {
            size: 0,
            on_output: None,
            user_data: null_mut(),
            interrupt: null(),
            on_output2: None,
            stream_stdin: 0,
            stdin_fd: 0,
            stdin_data: std::ptr::null(),
            stdin_len: 0,
        };
        let options = [RunOptions { size, interrupt: watchdog, ..empty }, empty];
        let target = watchdog as usize;
        let timer = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(300));
            // SAFETY: the handle is freed only after this thread is joined.
            check(sandcell_interrupt_trigger(target as *const Interrupt));
        });
        let mut o = null_mut();
        check(sandcell_sandbox_run(sb, prog, options.as_ptr(), &mut o));
        let _ = timer.join();
        sandcell_interrupt_free(watchdog);
        if !o.is_null() {
            outcomes.all.push(o);
        }
    }
}

/// Reads an outcome through every accessor.
unsafe fn read_outcome(o: *mut Outcome, input: &mut Input<'_>) {
    // SAFETY: the calls of a C caller.
    unsafe {
        let mut summary: Summary = std::mem::zeroed();
        summary.size = match input.byte().unwrap_or(0) % 3 {
            0 => 3,
            1 => std::mem::size_of::<Summary>(),
            _ => std::mem::size_of::<Summary>() / 2,
        };
        check(sandcell_outcome_summary(o, &mut summary));
        let (mut status, mut code) = (0u32, 0i32);
        check(sandcell_outcome_status(o, &mut status, &mut code));
        let mut s = null();
        check(sandcell_outcome_kind(o, &mut s));
        check(sandcell_outcome_trap_kind(o, &mut s));
        check(sandcell_outcome_detail(o, &mut s));
        let (mut data, mut len) = (null(), 0usize);
        check(sandcell_outcome_output(o, u32::from(input.byte().unwrap_or(1) % 4), &mut data, &mut len));
        let mut usage: Usage = std::mem::zeroed();
        usage.size = std::mem::size_of::<Usage>();
        check(sandcell_outcome_usage(o, &mut usage));
        let mut json = null_mut();
        check(sandcell_outcome_to_json(o, &mut json));
        if !json.is_null() {
            sandcell_string_free(json);
        }
    }
}

#[cfg(test)]
mod tests {
    /// Replays the fuzz target's corpus (checked-in seeds and every crash found so far), then a
    /// few thousand inputs from a fixed pseudo-random sequence.
    #[test]
    fn the_c_abi_fuzz_corpus_replays_cleanly() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus/c_abi");
        let mut n = 0;
        for entry in std::fs::read_dir(&dir).expect("fuzz/corpus/c_abi") {
            let path = entry.expect("corpus entry").path();
            super::c_abi(&std::fs::read(&path).expect("corpus file"));
            n += 1;
        }
        assert!(n > 0, "no corpus in {}", dir.display());
        let mut state = 0x2545_f491_4f6c_dd1d_u64;
        for _ in 0..300 {
            let len = (state % 200) as usize;
            let data: Vec<u8> = (0..len)
                .map(|_| {
                    state ^= state << 13;
                    state ^= state >> 7;
                    state ^= state << 17;
                    state as u8
                })
                .collect();
            super::c_abi(&data);
        }
    }
}
