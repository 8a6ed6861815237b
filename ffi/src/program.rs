//! Programs: what to run, with its arguments, environment and stdin.

use std::ffi::c_char;
use std::panic::{catch_unwind, AssertUnwindSafe};

use crate::error::{guard, invalid, Error, Result};
use crate::handle::{get_mut, register, release};
use crate::util::{bytes, out, string};

/// A program to run: its artifact, arguments, environment, stdin.
pub struct Program(pub(crate) sandcell::Program);

/// A program read from a file (for the process backend: a path inside the sandbox).
#[no_mangle]
pub unsafe extern "C" fn sandcell_program_from_path(path: *const c_char, program: *mut *mut Program) -> *mut Error {
    guard(|| {
        // SAFETY: checked string and out-parameter.
        unsafe {
            let path = string(path, "path")?;
            if program.is_null() {
                return Err(invalid("the out-parameter `program` is NULL"));
            }
            out(program, register(Program(sandcell::Program::path(path)), "program"), "program")
        }
    })
}

/// A program given as bytes (a wasm module, WAT text, or a micro-VM guest ELF).
#[no_mangle]
pub unsafe extern "C" fn sandcell_program_from_bytes(
    data: *const u8,
    len: usize,
    program: *mut *mut Program,
) -> *mut Error {
    guard(|| {
        // SAFETY: checked buffer and out-parameter.
        unsafe {
            let data = bytes(data, len, "data")?;
            if program.is_null() {
                return Err(invalid("the out-parameter `program` is NULL"));
            }
            out(program, register(Program(sandcell::Program::bytes(data.to_vec())), "program"), "program")
        }
    })
}

/// Replaces the program by `f(program)`; `f` has already checked its own arguments.
unsafe fn edit_program(program: *mut Program, f: impl FnOnce(sandcell::Program) -> sandcell::Program) -> Result<()> {
    // SAFETY: checked handle.
    let p = unsafe { get_mut(program, "program", "program")? };
    let taken = std::mem::replace(&mut p.0, sandcell::Program::bytes(Vec::new()));
    p.0 = f(taken);
    Ok(())
}

/// Appends an argument.
#[no_mangle]
pub unsafe extern "C" fn sandcell_program_add_arg(program: *mut Program, arg: *const c_char) -> *mut Error {
    guard(|| {
        // SAFETY: checked string and handle.
        unsafe {
            let arg = string(arg, "arg")?;
            edit_program(program, |p| p.arg(arg))
        }
    })
}

/// Sets an environment variable of the program (it wins over the policy's). Names with `=` or
/// NUL are refused when the program runs.
#[no_mangle]
pub unsafe extern "C" fn sandcell_program_set_env(
    program: *mut Program,
    key: *const c_char,
    value: *const c_char,
) -> *mut Error {
    guard(|| {
        // SAFETY: checked strings and handle.
        unsafe {
            let key = string(key, "key")?;
            let value = string(value, "value")?;
            edit_program(program, |p| p.env(key, value))
        }
    })
}

/// Sets the bytes the program reads from stdin (copied).
#[no_mangle]
pub unsafe extern "C" fn sandcell_program_set_stdin(program: *mut Program, data: *const u8, len: usize) -> *mut Error {
    guard(|| {
        // SAFETY: checked buffer and handle.
        unsafe {
            let data = bytes(data, len, "data")?;
            edit_program(program, |p| p.stdin(data.to_vec()))
        }
    })
}

/// Sets the working directory inside the sandbox (process backend).
#[no_mangle]
pub unsafe extern "C" fn sandcell_program_set_cwd(program: *mut Program, dir: *const c_char) -> *mut Error {
    guard(|| {
        // SAFETY: checked string and handle.
        unsafe {
            let dir = string(dir, "dir")?;
            edit_program(program, |p| p.cwd(dir))
        }
    })
}

/// Sets the program's name as it sees it (argv[0]); by default the file name, or `main` for bytes.
#[no_mangle]
pub unsafe extern "C" fn sandcell_program_set_name(program: *mut Program, name: *const c_char) -> *mut Error {
    guard(|| {
        // SAFETY: checked string and handle.
        unsafe {
            let name = string(name, "name")?;
            edit_program(program, |p| p.name(name))
        }
    })
}

/// Calls this wasm export instead of `_start`; the program's arguments become its parameters.
#[no_mangle]
pub unsafe extern "C" fn sandcell_program_set_entry(program: *mut Program, export_name: *const c_char) -> *mut Error {
    guard(|| {
        // SAFETY: checked string and handle.
        unsafe {
            let name = string(export_name, "export_name")?;
            edit_program(program, |p| p.entry(name))
        }
    })
}

/// Frees a program (NULL is fine).
#[no_mangle]
pub unsafe extern "C" fn sandcell_program_free(program: *mut Program) {
    // SAFETY: `release` checks the registry.
    let _ = catch_unwind(AssertUnwindSafe(|| unsafe { release(program, "program") }));
}
