//! WebAssembly modules as untrusted input, for the backends that run them (wasm and micro-VM):
//! the static compilation budgets of [`CompileLimits`], checked in one pass over the module's
//! sections before anything is compiled or validated.
//!
//! A module is compiled (or validated) before its run starts, outside the run's timeout and
//! memory cap, so what that costs the host is bounded here instead: the module's size, the
//! number and size of its functions, and the compiler memory its contents imply. The wall-clock
//! budget of a compilation is enforced while compiling (see `backend::wasm::guard`).

use std::borrow::Cow;

use wasmer::wasmparser::{self, Parser, Payload};

use crate::{CompileLimit, CompileLimits, Error, Result};

/// Compiler memory per defined function, measured with wasmer 7.4 + Cranelift (a module of
/// empty functions: about 1.5 KiB each), rounded up.
const MEMORY_PER_FUNCTION: u64 = 2 << 10;
/// Compiler memory per byte of function bodies (CPython for WASI: about 40 bytes per byte of
/// code at the peak of its compilation), rounded up.
const MEMORY_PER_CODE_BYTE: u64 = 48;
/// Memory per other entity (type, import, export, global, element and data segment).
const MEMORY_PER_ENTITY: u64 = 256;

/// What the budgets look at in a module.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Shape {
    pub(crate) functions: u64,
    pub(crate) code_bytes: u64,
    pub(crate) largest_function: u64,
    pub(crate) entities: u64,
}

impl Shape {
    /// The compiler memory this module needs, estimated (see the constants above).
    pub(crate) fn compile_memory(&self) -> u64 {
        self.functions
            .saturating_mul(MEMORY_PER_FUNCTION)
            .saturating_add(self.code_bytes.saturating_mul(MEMORY_PER_CODE_BYTE))
            .saturating_add(self.entities.saturating_mul(MEMORY_PER_ENTITY))
    }
}

fn over(limit: CompileLimit, reason: String) -> Error {
    Error::CompileBudget { limit, reason }
}

/// Checks a program's bytes (a binary module or WAT text) against the static budgets and
/// returns the binary module. Malformed sections, and imports of anything but WASI preview 1
/// functions (no host memory, no wasix extensions, no sockets), are an invalid program; full
/// validation is left to the engine (or [`validate`]).
pub(crate) fn check<'a>(program: &'a [u8], limits: &CompileLimits) -> Result<(Cow<'a, [u8]>, Shape)> {
    if program.len() as u64 > limits.max_module_size {
        return Err(over(
            CompileLimit::ModuleSize,
            format!("the module has {} bytes, the budget is {}", program.len(), limits.max_module_size),
        ));
    }
    let binary = to_binary(program)?;
    let shape = shape(&binary, limits)?;
    let memory = shape.compile_memory();
    if memory > limits.memory {
        return Err(over(
            CompileLimit::Memory,
            format!(
                "compiling its {} functions and {} bytes of code needs about {} MiB, the budget is {} MiB",
                shape.functions,
                shape.code_bytes,
                memory >> 20,
                limits.memory >> 20
            ),
        ));
    }
    Ok((binary, shape))
}

/// Counts what the budgets look at, refusing as soon as a count is over its budget (so a
/// module of a million functions is refused after reading its function section).
fn shape(binary: &[u8], limits: &CompileLimits) -> Result<Shape> {
    let malformed =
        |e: wasmparser::BinaryReaderError| Error::invalid_program(format!("not a valid WebAssembly module: {e}"));
    let mut s = Shape::default();
    for payload in Parser::new(0).parse_all(binary) {
        match payload.map_err(malformed)? {
            Payload::FunctionSection(r) => {
                s.functions = u64::from(r.count());
                if s.functions > u64::from(limits.max_functions) {
                    return Err(over(
                        CompileLimit::Functions,
                        format!("the module defines {} functions, the budget is {}", s.functions, limits.max_functions),
                    ));
                }
            }
            Payload::CodeSectionEntry(body) => {
                let size = body.range().end - body.range().start;
                if size > limits.max_function_size {
                    return Err(over(
                        CompileLimit::FunctionSize,
                        format!("a function body has {size} bytes, the budget is {}", limits.max_function_size),
                    ));
                }
                s.code_bytes += size;
                s.largest_function = s.largest_function.max(size);
            }
            Payload::TypeSection(r) => s.entities += u64::from(r.count()),
            Payload::ImportSection(r) => {
                s.entities += u64::from(r.count());
                for import in r.into_imports() {
                    let import = import.map_err(malformed)?;
                    if import.module != WASI_MODULE || !matches!(import.ty, wasmparser::TypeRef::Func(_)) {
                        return Err(Error::invalid_program(format!(
                            "the module imports `{}::{}`, which sandcell does not provide: a sandbox offers only WASI \
                             preview 1 functions (`{WASI_MODULE}`)",
                            import.module, import.name
                        )));
                    }
                }
            }
            Payload::ExportSection(r) => s.entities += u64::from(r.count()),
            Payload::GlobalSection(r) => s.entities += u64::from(r.count()),
            Payload::ElementSection(r) => s.entities += u64::from(r.count()),
            Payload::DataSection(r) => s.entities += u64::from(r.count()),
            _ => {}
        }
    }
    Ok(s)
}

/// Validates a binary module completely (types, instructions), without compiling it.
pub(crate) fn validate(binary: &[u8]) -> Result<()> {
    wasmparser::Validator::new()
        .validate_all(binary)
        .map(drop)
        .map_err(|e| Error::invalid_program(format!("not a valid WebAssembly module: {e}")))
}

use crate::wasi::WASI_MODULE;

/// Parses WAT text into a binary module, or returns the bytes unchanged if already binary.
pub(crate) fn to_binary(bytes: &[u8]) -> Result<Cow<'_, [u8]>> {
    if bytes.starts_with(b"\0asm") {
        return Ok(Cow::Borrowed(bytes));
    }
    let text = std::str::from_utf8(bytes).map_err(|_| {
        Error::invalid_program("neither a WebAssembly binary (no `\\0asm` header) nor WAT text (not UTF-8)")
    })?;
    wasmer::wat2wasm(text.as_bytes())
        .map(|b| Cow::Owned(b.into_owned()))
        .map_err(|e| Error::invalid_program(format!("not a valid WAT module: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn functions(n: usize, body: &str) -> Vec<u8> {
        let mut wat = String::from("(module\n");
        for _ in 0..n {
            wat.push_str(&format!("(func {body})\n"));
        }
        wat.push(')');
        to_binary(wat.as_bytes()).unwrap().into_owned()
    }

    #[test]
    fn counts_and_sizes_are_checked_before_compiling() {
        let limits = CompileLimits { max_functions: 10, max_function_size: 64, ..CompileLimits::default() };
        let (_, shape) = check(&functions(10, "nop"), &limits).unwrap();
        assert_eq!(shape.functions, 10);
        let e = check(&functions(11, "nop"), &limits).unwrap_err();
        assert!(matches!(e, Error::CompileBudget { limit: CompileLimit::Functions, .. }), "{e}");
        let big = "i32.const 1 drop ".repeat(40);
        let e = check(&functions(1, &big), &limits).unwrap_err();
        assert!(matches!(e, Error::CompileBudget { limit: CompileLimit::FunctionSize, .. }), "{e}");
        let e = check(&functions(1, "nop"), &CompileLimits { max_module_size: 8, ..limits }).unwrap_err();
        assert!(matches!(e, Error::CompileBudget { limit: CompileLimit::ModuleSize, .. }), "{e}");
        let e = check(&functions(10, "nop"), &CompileLimits { memory: 1024, ..limits }).unwrap_err();
        assert!(matches!(e, Error::CompileBudget { limit: CompileLimit::Memory, .. }), "{e}");
    }

    #[test]
    fn a_million_empty_functions_are_refused_by_default() {
        // The module of the attack: 1,000,000 empty functions of one type, about 4 MB.
        let mut m = b"\0asm\x01\0\0\0".to_vec();
        let section = |m: &mut Vec<u8>, id: u8, body: &[u8]| {
            m.push(id);
            leb(m, body.len() as u64);
            m.extend_from_slice(body);
        };
        section(&mut m, 1, &[1, 0x60, 0, 0]);
        let n = 1_000_000u64;
        let mut funcs = Vec::new();
        leb(&mut funcs, n);
        funcs.extend(std::iter::repeat_n(0u8, n as usize));
        section(&mut m, 3, &funcs);
        let mut code = Vec::new();
        leb(&mut code, n);
        for _ in 0..n {
            code.extend_from_slice(&[2, 0, 0x0b]);
        }
        section(&mut m, 10, &code);
        let started = std::time::Instant::now();
        let e = check(&m, &CompileLimits::default()).unwrap_err();
        assert!(matches!(e, Error::CompileBudget { limit: CompileLimit::Functions, .. }), "{e}");
        assert!(started.elapsed() < std::time::Duration::from_secs(1));
    }

    fn leb(out: &mut Vec<u8>, mut v: u64) {
        loop {
            let byte = (v & 0x7f) as u8;
            v >>= 7;
            if v == 0 {
                out.push(byte);
                return;
            }
            out.push(byte | 0x80);
        }
    }

    #[test]
    fn garbage_is_an_invalid_program() {
        assert!(matches!(
            check(b"\0asm\x01\0\0\0\x01\xff", &CompileLimits::default()),
            Err(Error::InvalidProgram { .. })
        ));
        assert!(matches!(check(&[0xff, 0xfe], &CompileLimits::default()), Err(Error::InvalidProgram { .. })));
    }
}
