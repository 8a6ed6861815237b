//! The WebAssembly core spec tests (`../shared/testdata/wasm-spec-testsuite/*.wast`) on the wasm
//! backend's engine: every module is compiled with sandcell's middleware (a stop check at each
//! function entry and loop header, the start function moved to [`START_EXPORT`]), with linear
//! memories capped, and a few files also run on the metered engine.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use sandcell::__private::{compile, wasm_engine, FUEL_EXPORT, START_EXPORT, STOP_EXPORT};
use wasmer::{
    Engine, Extern, ExternRef, Function, FunctionEnv, FunctionEnvMut, Global, Imports, Instance, InstantiationError,
    LinkError, Memory, MemoryType, Module, RuntimeError, Store, Table, TableType, Type, Value,
};
use wasmer_types::TrapCode;
use wast::core::{AbstractHeapType, HeapType, NanPattern, V128Pattern, WastArgCore, WastRetCore};
use wast::lexer::Lexer;
use wast::parser::{self, ParseBuffer};
use wast::token::Id;
use wast::{QuoteWat, Wast, WastArg, WastDirective, WastExecute, WastInvoke, WastRet, Wat};

use crate::common::shared_testdata;

/// Files that cannot pass on sandcell's engine (wasmer 7.4 with its default features), each with
/// the reason. They still run: the test fails when one of them passes, so that it leaves this list.
const SKIPPED: &[(&str, &str)] = &[
    ("address64.wast", MEMORY64),
    ("align64.wast", MEMORY64),
    ("array.wast", GC),
    ("array_copy.wast", GC),
    ("array_fill.wast", GC),
    ("array_init_data.wast", GC),
    ("array_init_elem.wast", GC),
    ("array_new_data.wast", GC),
    ("array_new_elem.wast", GC),
    ("binary_leb128_64.wast", MEMORY64),
    ("br_on_cast.wast", GC),
    ("br_on_cast_fail.wast", GC),
    ("br_on_non_null.wast", FUNCTION_REFERENCES),
    ("br_on_null.wast", FUNCTION_REFERENCES),
    ("br_table.wast", "its one module also branches with typed function references (wasm 3.0)"),
    ("bulk64.wast", MEMORY64),
    ("call_indirect64.wast", MEMORY64),
    ("call_ref.wast", FUNCTION_REFERENCES),
    ("endianness64.wast", MEMORY64),
    ("extern.wast", GC),
    ("float_memory64.wast", MEMORY64),
    ("i31.wast", GC),
    ("instance.wast", "its modules have tables with initializer expressions (typed function references, wasm 3.0)"),
    ("load64.wast", MEMORY64),
    ("local_init.wast", FUNCTION_REFERENCES),
    ("memory64-imports.wast", MEMORY64),
    ("memory64.wast", MEMORY64),
    ("memory_copy64.wast", MEMORY64),
    ("memory_fill64.wast", MEMORY64),
    ("memory_grow64.wast", MEMORY64),
    ("memory_init64.wast", MEMORY64),
    ("memory_redundancy64.wast", MEMORY64),
    ("memory_trap64.wast", MEMORY64),
    ("ref.wast", FUNCTION_REFERENCES),
    ("ref_as_non_null.wast", FUNCTION_REFERENCES),
    ("ref_cast.wast", GC),
    ("ref_eq.wast", GC),
    ("ref_is_null.wast", FUNCTION_REFERENCES),
    ("ref_null.wast", GC),
    ("ref_test.wast", GC),
    ("return_call.wast", TAIL_CALLS),
    ("return_call_indirect.wast", TAIL_CALLS),
    ("return_call_ref.wast", TAIL_CALLS),
    ("struct.wast", GC),
    ("table-sub.wast", FUNCTION_REFERENCES),
    ("table64.wast", MEMORY64),
    ("table_copy64.wast", MEMORY64),
    ("table_copy_mixed.wast", MEMORY64),
    ("table_fill64.wast", MEMORY64),
    ("table_get64.wast", MEMORY64),
    ("table_grow64.wast", MEMORY64),
    ("table_init64.wast", MEMORY64),
    ("table_set64.wast", MEMORY64),
    ("table_size64.wast", MEMORY64),
    ("try_table.wast", "its main module also uses tail calls (`return_call`), off in wasmer 7.4's default features"),
    ("type-canon.wast", GC),
    ("type-equivalence.wast", GC),
    ("type-rec.wast", GC),
    ("type-subtyping.wast", GC),
    ("unreached-valid.wast", FUNCTION_REFERENCES),
];

const MEMORY64: &str = "memory64 (64-bit memories and tables), off in wasmer 7.4's default features";
const GC: &str = "the GC proposal (wasm 3.0), which wasmer 7.4 does not implement";
const FUNCTION_REFERENCES: &str = "typed function references (wasm 3.0), which wasmer 7.4 does not implement";
const TAIL_CALLS: &str = "tail calls, off in wasmer 7.4's default features";

/// Directives that fail in files that otherwise pass: file, lines, reason. Each must fail: the
/// test fails when one of them passes.
const SKIPPED_DIRECTIVES: &[(&str, &[usize], &str)] = &[
    ("data.wast", &[89, 90], OWN_GLOBAL),
    ("elem.wast", &[178, 182], OWN_GLOBAL),
    ("global.wast", &[373, 374], OWN_GLOBAL),
    (
        "elem.wast",
        &[87, 315, 448, 453, 465, 470, 482, 487, 499, 504, 539, 544, 556, 561, 573, 578],
        "non-nullable reference types (typed function references, wasm 3.0)",
    ),
    (
        "elem.wast",
        &[1043, 1053],
        "wasmer 7.4 refuses `global.get` of an imported global as an element expression (valid since wasm 2.0): \
         \"unsupported init expr in element section\"; 1053 calls that module",
    ),
    (
        "global.wast",
        &[634, 659, 660, 661, 663, 664],
        "a table with an initializer expression (typed function references, wasm 3.0); 659-664 call that module",
    ),
    (
        "linking.wast",
        &[
            96, 110, 112, 137, 141, 145, 150, 154, 158, 163, 167, 171, 175, 198, 202, 206, 210, 215, 219, 223, 227,
            232, 236, 240, 244, 426, 432, 434, 450, 454,
        ],
        "globals and tables of typed function reference types (wasm 3.0); 110 and 432 register modules that failed",
    ),
    (
        "table.wast",
        &[14, 19, 20, 21, 86, 91, 93, 112, 113, 114, 115, 116],
        "tables of typed function references or with initializers (wasm 3.0); 91 registers 86, 112-116 call 93",
    ),
    ("table_init.wast", &[2272, 2286], "a GC array type (wasm 3.0); 2286 calls that module"),
    ("tag.wast", &[30, 38, 40, 48], "tags of types in rec groups (GC, wasm 3.0); 38 registers the module that failed"),
];

const OWN_GLOBAL: &str =
    "a constant expression reading a global of the module itself (wasm 3.0; wasm 2.0 allows only imported ones)";

/// Files also run on the metered engine, with fuel that cannot run out: metering changes no
/// result.
const METERED: &[&str] =
    &["call.wast", "call_indirect.wast", "f64.wast", "fac.wast", "loop.wast", "memory_grow.wast", "start.wast"];

/// Linear memories get at most 4 GiB, as under a policy that sets the largest cap.
const MEMORY_CAP: Option<u64> = Some(4 << 30);

/// Set, to anything, to also print the failures of the skipped files.
const VERBOSE: &str = "SANDCELL_SPEC_VERBOSE";

#[test]
fn core_spec_tests_pass_on_the_wasm_backend() {
    let Some(testdata) = shared_testdata() else {
        crate::skip!("../shared/testdata (the WebAssembly spec tests) is not next to the repository")
    };
    let started = Instant::now();
    let dir = testdata.join("wasm-spec-testsuite");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "wast"))
        .collect();
    files.sort();
    assert!(files.len() > 100, "only {} .wast files in {}", files.len(), dir.display());
    let name = |p: &Path| p.file_name().unwrap().to_string_lossy().into_owned();

    let mut problems = Vec::new();
    for (file, _) in SKIPPED {
        if METERED.contains(file) {
            problems.push(format!("{file} is both skipped and in METERED"));
        }
    }
    for file in SKIPPED.iter().map(|s| s.0).chain(SKIPPED_DIRECTIVES.iter().map(|s| s.0)).chain(METERED.iter().copied())
    {
        if !dir.join(file).is_file() {
            problems.push(format!("{file} is listed in this module but not in {}", dir.display()));
        }
    }

    // Each job is one file on one engine; two workers (the machine has two cores).
    let jobs: Vec<(PathBuf, bool)> =
        files.iter().map(|f| (f.clone(), false)).chain(METERED.iter().map(|f| (dir.join(f), true))).collect();
    let next = AtomicUsize::new(0);
    let results = Mutex::new(Vec::new());
    std::thread::scope(|s| {
        for _ in 0..2 {
            std::thread::Builder::new()
                .stack_size(16 << 20)
                .spawn_scoped(s, || {
                    let engines = [wasm_engine(false, MEMORY_CAP), wasm_engine(true, MEMORY_CAP)];
                    while let Some((path, metered)) = jobs.get(next.fetch_add(1, Ordering::SeqCst)) {
                        let report = run_file(path, &engines[usize::from(*metered)], *metered);
                        results.lock().unwrap().push(report);
                    }
                })
                .unwrap();
        }
    });
    let mut results = results.into_inner().unwrap();
    results.sort_by(|a, b| (a.metered, &a.file).cmp(&(b.metered, &b.file)));

    let verbose = std::env::var_os(VERBOSE).is_some();
    let (mut passed, mut metered_passed, mut directives, mut skipped, mut directives_skipped, mut refused) =
        (0, 0, 0, 0, 0, 0);
    for r in &results {
        let file = name(&r.file);
        let flavour = if r.metered { " (metered)" } else { "" };
        directives += r.directives;
        directives_skipped += r.skipped.len();
        refused += r.refused;
        let skip = SKIPPED.iter().find(|s| s.0 == file && !r.metered);
        match (skip, r.failures.is_empty()) {
            (None, true) if r.metered => metered_passed += 1,
            (None, true) => passed += 1,
            (None, false) => {
                problems.push(format!("{file}{flavour}: {} of {} directives failed", r.failures.len(), r.directives));
                for (line, why) in r.failures.iter().take(8) {
                    problems.push(format!("    {file}:{line}: {why}"));
                }
            }
            (Some(_), true) => {
                problems.push(format!("{file} passes now: remove it from SKIPPED"));
            }
            (Some(_), false) => {
                skipped += 1;
                if verbose {
                    eprintln!("skipped {file}: {} of {} directives failed", r.failures.len(), r.directives);
                    for (line, why) in r.failures.iter().take(8) {
                        eprintln!("    {file}:{line}: {why}");
                    }
                }
            }
        }
        for line in &r.passing_skips {
            problems.push(format!("{file}:{line} passes now: remove it from SKIPPED_DIRECTIVES"));
        }
    }
    eprintln!(
        "spec: {passed} of {} files passed ({metered_passed} of them also on the metered engine), {skipped} skipped; \
         {directives} directives run, {directives_skipped} of them skipped; {refused} modules refused by wasmer; \
         {:.1?}",
        files.len(),
        started.elapsed()
    );
    assert!(problems.is_empty(), "the spec tests found problems:\n{}", problems.join("\n"));
}

#[test]
fn spec_code_stops_at_the_stop_flag() {
    let wat = r#"(module
      (import "host" "tick" (func $tick))
      (func (export "answer") (result i32) i32.const 42)
      (func (export "spin") (loop br 0))
      (func (export "spin_with_ticks") (loop call $tick br 0)))"#;
    let engine = wasm_engine(false, MEMORY_CAP);
    let mut store = Store::new(engine);
    let module = compile(false, MEMORY_CAP, &wasmer::wat2wasm(wat.as_bytes()).unwrap()).unwrap();

    // The host function sets the stop flag on its 1000th call; the loop header's check stops
    // the loop after it.
    struct Ticks {
        stop: Option<Global>,
        count: u32,
    }
    let env = FunctionEnv::new(&mut store, Ticks { stop: None, count: 0 });
    let tick = Function::new_typed_with_env(&mut store, &env, |mut env: FunctionEnvMut<Ticks>| {
        let (ticks, mut store) = env.data_and_store_mut();
        ticks.count += 1;
        if ticks.count == 1000 {
            ticks.stop.as_ref().unwrap().set(&mut store, Value::I32(1)).unwrap();
        }
    });
    let mut imports = Imports::new();
    imports.define("host", "tick", tick);
    let instance = Instance::new(&mut store, &module, &imports).unwrap();
    let stop = instance.exports.get_global(STOP_EXPORT).unwrap().clone();
    env.as_mut(&mut store).stop = Some(stop.clone());
    let call = |store: &mut Store, name: &str| {
        let started = Instant::now();
        let result = instance.exports.get_function(name).unwrap().call(store, &[]);
        (result, started.elapsed())
    };

    // The code is real (not a stub), and the flag is clear.
    let (answer, _) = call(&mut store, "answer");
    assert_eq!(answer.unwrap().to_vec(), vec![Value::I32(42)]);
    assert_eq!(stop.get(&mut store), Value::I32(0));

    // Set by the host: `(loop br 0)` does not start.
    stop.set(&mut store, Value::I32(1)).unwrap();
    let (spin, took) = call(&mut store, "spin");
    let trap = spin.expect_err("an infinite loop returned");
    assert_eq!(trap.clone().to_trap(), Some(TrapCode::UnreachableCodeReached), "{trap}");
    assert!(took < Duration::from_secs(1), "{took:?}");

    // Set while the loop runs: it stops at its next iteration.
    stop.set(&mut store, Value::I32(0)).unwrap();
    let (spin, took) = call(&mut store, "spin_with_ticks");
    let trap = spin.expect_err("an infinite loop returned");
    assert_eq!(trap.clone().to_trap(), Some(TrapCode::UnreachableCodeReached), "{trap}");
    assert_eq!(env.as_ref(&store).count, 1000);
    assert!(took < Duration::from_secs(1), "{took:?}");

    // A spec file with every instance's flag set: each call stops, everything else passes.
    let Some(testdata) = shared_testdata() else {
        crate::skip!("../shared/testdata (the WebAssembly spec tests) is not next to the repository")
    };
    let path = testdata.join("wasm-spec-testsuite/loop.wast");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let buf = ParseBuffer::new(&text).unwrap();
    let wast = parser::parse::<Wast>(&buf).unwrap();
    let mut runner = Runner::new(&wasm_engine(false, MEMORY_CAP), false);
    runner.stopped = true;
    let mut calls = 0;
    for directive in wast.directives {
        let line = directive.span().linecol_in(&text).0 + 1;
        let call = matches!(directive, WastDirective::AssertReturn { exec: WastExecute::Invoke(_), .. });
        match (runner.run(directive), call) {
            (Err(Failure::Trapped(e)), true) if e.clone().to_trap() == Some(TrapCode::UnreachableCodeReached) => {
                calls += 1
            }
            (Ok(()), false) => {}
            (Ok(()), true) => panic!("loop.wast:{line}: a call returned with the stop flag set"),
            (Err(e), _) => panic!("loop.wast:{line}: {e}"),
        }
    }
    assert!(calls > 50, "only {calls} calls in loop.wast");
}

/// What running one file found.
struct FileReport {
    file: PathBuf,
    metered: bool,
    directives: usize,
    /// Failed directives: line, why.
    failures: Vec<(usize, String)>,
    /// Lines in [`SKIPPED_DIRECTIVES`] that failed as expected.
    skipped: Vec<usize>,
    /// Lines in [`SKIPPED_DIRECTIVES`] that passed.
    passing_skips: Vec<usize>,
    /// Modules (of `module` and `module definition` directives) that wasmer refused to compile.
    refused: usize,
}

fn run_file(path: &Path, engine: &Engine, metered: bool) -> FileReport {
    let file = path.file_name().unwrap().to_string_lossy().into_owned();
    let mut report = FileReport {
        file: path.to_owned(),
        metered,
        directives: 0,
        failures: Vec::new(),
        skipped: Vec::new(),
        passing_skips: Vec::new(),
        refused: 0,
    };
    let text = match std::fs::read(path).map(String::from_utf8) {
        Ok(Ok(text)) => text,
        Ok(Err(e)) => {
            report.failures.push((0, format!("not UTF-8: {e}")));
            return report;
        }
        Err(e) => {
            report.failures.push((0, format!("cannot read: {e}")));
            return report;
        }
    };
    // names.wast has right-to-left overrides and the like in its names, on purpose.
    let mut lexer = Lexer::new(&text);
    lexer.allow_confusing_unicode(true);
    let buf = match ParseBuffer::new_with_lexer(lexer) {
        Ok(buf) => buf,
        Err(e) => {
            report.failures.push((0, format!("cannot lex: {e}")));
            return report;
        }
    };
    let wast = match parser::parse::<Wast>(&buf) {
        Ok(wast) => wast,
        Err(mut e) => {
            e.set_text(&text);
            report.failures.push((0, format!("cannot parse: {e}")));
            return report;
        }
    };
    let mut runner = Runner::new(engine, metered);
    for directive in wast.directives {
        let line = directive.span().linecol_in(&text).0 + 1;
        report.directives += 1;
        let is_module = matches!(directive, WastDirective::Module(_) | WastDirective::ModuleDefinition(_));
        let outcome =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| runner.run(directive))).unwrap_or_else(|p| {
                let msg = p
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_default();
                Err(Failure::Other(format!("panicked: {msg}")))
            });
        if is_module && matches!(outcome, Err(Failure::Refused(_))) {
            report.refused += 1;
        }
        let skipped = SKIPPED_DIRECTIVES.iter().any(|&(f, lines, _)| f == file && lines.contains(&line));
        match (outcome, skipped) {
            (Ok(()), false) => {}
            (Ok(()), true) => report.passing_skips.push(line),
            (Err(_), true) => report.skipped.push(line),
            (Err(failure), false) => report.failures.push((line, failure.to_string())),
        }
    }
    for &(_, lines, _) in SKIPPED_DIRECTIVES.iter().filter(|s| s.0 == file) {
        for line in lines {
            if !report.skipped.contains(line) && !report.passing_skips.contains(line) {
                report.failures.push((*line, "listed in SKIPPED_DIRECTIVES but no directive starts here".into()));
            }
        }
    }
    report
}

/// Why a directive failed.
enum Failure {
    /// wasmer refused to compile a module that should compile.
    Refused(String),
    /// A call that should have returned trapped.
    Trapped(RuntimeError),
    Other(String),
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Refused(e) => write!(f, "module refused: {e}"),
            Failure::Trapped(e) => write!(f, "trapped: {e}"),
            Failure::Other(e) => f.write_str(e),
        }
    }
}

fn fail<T>(why: impl Into<String>) -> Result<T, Failure> {
    Err(Failure::Other(why.into()))
}

/// Why an instantiation failed.
enum InstantiateError {
    Link(String),
    Trap(RuntimeError),
}

/// The state of one `.wast` file: its store, its modules and instances.
struct Runner {
    store: Store,
    metered: bool,
    /// Set every instance's stop flag once it is instantiated.
    stopped: bool,
    /// `(module definition $id ...)`s.
    definitions: HashMap<String, Module>,
    /// Named instances.
    instances: HashMap<String, Instance>,
    /// The last instance created.
    current: Option<Instance>,
    /// Registered (importable) modules: name, then field.
    registered: HashMap<String, HashMap<String, Extern>>,
}

impl Runner {
    fn new(engine: &Engine, metered: bool) -> Runner {
        let mut store = Store::new(engine.clone());
        let mut spectest = HashMap::<String, Extern>::new();
        let mut add = |name: &str, ext: Extern| {
            spectest.insert(name.to_owned(), ext);
        };
        add("print", Function::new_typed(&mut store, || {}).into());
        add("print_i32", Function::new_typed(&mut store, |_: i32| {}).into());
        add("print_i64", Function::new_typed(&mut store, |_: i64| {}).into());
        add("print_f32", Function::new_typed(&mut store, |_: f32| {}).into());
        add("print_f64", Function::new_typed(&mut store, |_: f64| {}).into());
        add("print_i32_f32", Function::new_typed(&mut store, |_: i32, _: f32| {}).into());
        add("print_f64_f64", Function::new_typed(&mut store, |_: f64, _: f64| {}).into());
        add("global_i32", Global::new(&mut store, Value::I32(666)).into());
        add("global_i64", Global::new(&mut store, Value::I64(666)).into());
        add("global_f32", Global::new(&mut store, Value::F32(666.6)).into());
        add("global_f64", Global::new(&mut store, Value::F64(666.6)).into());
        let table = Table::new(&mut store, TableType::new(Type::FuncRef, 10, Some(20)), Value::FuncRef(None));
        add("table", table.expect("the spectest table").into());
        let memory = Memory::new(&mut store, MemoryType::new(1, Some(2), false));
        add("memory", memory.expect("the spectest memory").into());
        let registered = HashMap::from([("spectest".to_owned(), spectest)]);
        Runner {
            store,
            metered,
            stopped: false,
            definitions: HashMap::new(),
            instances: HashMap::new(),
            current: None,
            registered,
        }
    }

    fn run(&mut self, directive: WastDirective) -> Result<(), Failure> {
        match directive {
            WastDirective::Module(mut wat) => {
                let id = quote_id(&wat);
                // A module that fails leaves none current: what follows must not run on the one before.
                self.current = None;
                if let Some(id) = &id {
                    self.instances.remove(id);
                }
                let module = self.compile(&mut wat)?;
                let instance = self.instantiate_or_fail(&module)?;
                if let Some(id) = id {
                    self.instances.insert(id, instance.clone());
                }
                self.current = Some(instance);
                Ok(())
            }
            WastDirective::ModuleDefinition(mut wat) => {
                let id = quote_id(&wat);
                let module = self.compile(&mut wat)?;
                if let Some(id) = id {
                    self.definitions.insert(id, module);
                }
                Ok(())
            }
            WastDirective::ModuleInstance { instance: id, module, .. } => {
                self.current = None;
                if let Some(id) = id {
                    self.instances.remove(id.name());
                }
                let Some(module) = module.and_then(|m| self.definitions.get(m.name())).cloned() else {
                    return fail("no such module definition");
                };
                let instance = self.instantiate_or_fail(&module)?;
                if let Some(id) = id {
                    self.instances.insert(id.name().to_owned(), instance.clone());
                }
                self.current = Some(instance);
                Ok(())
            }
            WastDirective::Register { name, module, .. } => {
                let instance = self.instance(module)?;
                let exports = instance
                    .exports
                    .iter()
                    .filter(|(n, _)| ![START_EXPORT, STOP_EXPORT, FUEL_EXPORT].contains(&n.as_str()))
                    .map(|(n, e)| (n.clone(), e.clone()))
                    .collect();
                self.registered.insert(name.to_owned(), exports);
                Ok(())
            }
            WastDirective::Invoke(invoke) => self.invoke(&invoke)?.map(drop).map_err(Failure::Trapped),
            WastDirective::AssertReturn { exec, results, .. } => {
                let values = self.execute(exec)?.map_err(Failure::Trapped)?;
                if values.len() != results.len() {
                    return fail(format!("returned {values:?}, expected {} values", results.len()));
                }
                for (value, expected) in values.iter().zip(&results) {
                    let WastRet::Core(expected) = expected else { return fail("a component value") };
                    if !self.matches(value, expected) {
                        let expected: Vec<String> = results.iter().map(describe).collect();
                        return fail(format!("returned {values:?}, expected [{}]", expected.join(", ")));
                    }
                }
                Ok(())
            }
            WastDirective::AssertTrap { exec, message, .. } => match self.execute(exec)? {
                Ok(values) => fail(format!("returned {values:?}, expected a trap ({message})")),
                Err(e) if e.is_exception() => fail(format!("threw an exception, expected a trap ({message})")),
                Err(_) => Ok(()),
            },
            WastDirective::AssertExhaustion { call, message, .. } => match self.invoke(&call)? {
                Ok(values) => fail(format!("returned {values:?}, expected {message}")),
                Err(e) if e.clone().to_trap() == Some(TrapCode::StackOverflow) => Ok(()),
                Err(e) => fail(format!("trapped with {e}, expected {message}")),
            },
            WastDirective::AssertException { exec, .. } => match self.execute(exec)? {
                Ok(values) => fail(format!("returned {values:?}, expected an exception")),
                Err(e) if e.is_exception() => Ok(()),
                Err(e) => fail(format!("trapped with {e}, expected an exception")),
            },
            WastDirective::AssertInvalid { mut module, message, .. } => match self.compile(&mut module) {
                Ok(_) => fail(format!("compiled, expected invalid: {message}")),
                Err(_) => Ok(()),
            },
            WastDirective::AssertMalformed { mut module, message, .. } => {
                // A text module that does not parse is malformed; so is a binary wasmer refuses.
                let Ok(bytes) = module.encode() else { return Ok(()) };
                match compile(self.metered, MEMORY_CAP, &bytes) {
                    Ok(_) => fail(format!("compiled, expected malformed: {message}")),
                    Err(_) => Ok(()),
                }
            }
            WastDirective::AssertUnlinkable { module, message, .. } => {
                let module = self.compile(&mut QuoteWat::Wat(module))?;
                match self.instantiate(&module) {
                    Ok(_) => fail(format!("linked, expected unlinkable: {message}")),
                    Err(InstantiateError::Trap(e)) => fail(format!("trapped with {e}, expected unlinkable: {message}")),
                    Err(InstantiateError::Link(_)) => Ok(()),
                }
            }
            other => fail(format!("unsupported directive {other:?}")),
        }
    }

    /// Encodes and compiles a module: a failure to encode or compile is a `Refused` failure.
    fn compile(&mut self, wat: &mut QuoteWat) -> Result<Module, Failure> {
        let bytes = wat.encode().map_err(|e| Failure::Other(format!("cannot encode: {e}")))?;
        compile(self.metered, MEMORY_CAP, &bytes).map_err(Failure::Refused)
    }

    /// Instantiates `module` with the registered modules' exports, then runs its start
    /// function (which sandcell's compiler takes out of instantiation).
    fn instantiate(&mut self, module: &Module) -> Result<Instance, InstantiateError> {
        let mut imports = Imports::new();
        for import in module.imports() {
            if let Some(ext) = self.registered.get(import.module()).and_then(|m| m.get(import.name())) {
                imports.define(import.module(), import.name(), ext.clone());
            }
        }
        let instance = match Instance::new(&mut self.store, module, &imports) {
            Ok(instance) => instance,
            Err(InstantiationError::Start(e) | InstantiationError::Link(LinkError::Trap(e))) => {
                return Err(InstantiateError::Trap(e))
            }
            Err(e) => return Err(InstantiateError::Link(e.to_string())),
        };
        // Every module carries sandcell's checks, so runs the spec tests with them.
        assert!(instance.exports.get_global(STOP_EXPORT).is_ok(), "a module compiled without sandcell's stop flag");
        if self.metered {
            let fuel = instance.exports.get_global(FUEL_EXPORT).expect("a metered module exports its fuel");
            fuel.set(&mut self.store, Value::I64(i64::MAX)).expect("the fuel is mutable");
        }
        if let Ok(start) = instance.exports.get_function(START_EXPORT) {
            start.call(&mut self.store, &[]).map_err(InstantiateError::Trap)?;
        }
        if self.stopped {
            let stop = instance.exports.get_global(STOP_EXPORT).expect("checked above");
            stop.set(&mut self.store, Value::I32(1)).expect("the stop flag is mutable");
        }
        Ok(instance)
    }

    fn instantiate_or_fail(&mut self, module: &Module) -> Result<Instance, Failure> {
        match self.instantiate(module) {
            Ok(instance) => Ok(instance),
            Err(InstantiateError::Link(e)) => fail(format!("cannot link: {e}")),
            Err(InstantiateError::Trap(e)) => fail(format!("instantiation trapped: {e}")),
        }
    }

    fn instance(&self, id: Option<Id>) -> Result<Instance, Failure> {
        match id {
            Some(id) => self
                .instances
                .get(id.name())
                .cloned()
                .ok_or_else(|| Failure::Other(format!("no module ${}", id.name()))),
            None => self.current.clone().ok_or_else(|| Failure::Other("no current module".into())),
        }
    }

    /// Runs an `invoke`, a `get` or a module (whose instantiation must trap or succeed).
    fn execute(&mut self, exec: WastExecute) -> Result<Result<Vec<Value>, RuntimeError>, Failure> {
        match exec {
            WastExecute::Invoke(invoke) => self.invoke(&invoke),
            WastExecute::Get { module, global, .. } => {
                let instance = self.instance(module)?;
                let Ok(global) = instance.exports.get_global(global) else {
                    return fail(format!("no global {global:?}"));
                };
                Ok(Ok(vec![global.get(&mut self.store)]))
            }
            WastExecute::Wat(wat) => {
                let module = self.compile(&mut QuoteWat::Wat(wat))?;
                match self.instantiate(&module) {
                    Ok(_) => Ok(Ok(Vec::new())),
                    Err(InstantiateError::Trap(e)) => Ok(Err(e)),
                    Err(InstantiateError::Link(e)) => fail(format!("cannot link: {e}")),
                }
            }
        }
    }

    fn invoke(&mut self, invoke: &WastInvoke) -> Result<Result<Vec<Value>, RuntimeError>, Failure> {
        let instance = self.instance(invoke.module)?;
        let Ok(function) = instance.exports.get_function(invoke.name) else {
            return fail(format!("no function {:?}", invoke.name));
        };
        let mut args = Vec::new();
        for arg in &invoke.args {
            args.push(self.arg(arg)?);
        }
        Ok(function.call(&mut self.store, &args).map(Vec::from))
    }

    fn arg(&mut self, arg: &WastArg) -> Result<Value, Failure> {
        let WastArg::Core(arg) = arg else { return fail("a component argument") };
        Ok(match arg {
            WastArgCore::I32(v) => Value::I32(*v),
            WastArgCore::I64(v) => Value::I64(*v),
            WastArgCore::F32(v) => Value::F32(f32::from_bits(v.bits)),
            WastArgCore::F64(v) => Value::F64(f64::from_bits(v.bits)),
            WastArgCore::V128(v) => Value::V128(u128::from_le_bytes(v.to_le_bytes())),
            WastArgCore::RefNull(HeapType::Abstract {
                ty: AbstractHeapType::Func | AbstractHeapType::NoFunc, ..
            }) => Value::FuncRef(None),
            WastArgCore::RefNull(HeapType::Abstract {
                ty: AbstractHeapType::Extern | AbstractHeapType::NoExtern,
                ..
            }) => Value::ExternRef(None),
            WastArgCore::RefNull(HeapType::Abstract {
                ty: AbstractHeapType::Exn | AbstractHeapType::NoExn, ..
            }) => Value::ExceptionRef(None),
            WastArgCore::RefExtern(v) => Value::ExternRef(Some(ExternRef::new(&mut self.store, *v))),
            other => return fail(format!("unsupported argument {other:?}")),
        })
    }

    fn matches(&self, value: &Value, expected: &WastRetCore) -> bool {
        match (value, expected) {
            (Value::I32(v), WastRetCore::I32(e)) => v == e,
            (Value::I64(v), WastRetCore::I64(e)) => v == e,
            (Value::F32(v), WastRetCore::F32(e)) => f32_matches(v.to_bits(), e),
            (Value::F64(v), WastRetCore::F64(e)) => f64_matches(v.to_bits(), e),
            (Value::V128(v), WastRetCore::V128(e)) => v128_matches(*v, e),
            (Value::FuncRef(None), WastRetCore::RefNull(ty)) => ty.as_ref().is_none_or(|ty| {
                matches!(
                    ty,
                    HeapType::Abstract { ty: AbstractHeapType::Func | AbstractHeapType::NoFunc, .. }
                        | HeapType::Concrete(_)
                )
            }),
            (Value::ExternRef(None), WastRetCore::RefNull(ty)) => ty.as_ref().is_none_or(|ty| {
                matches!(ty, HeapType::Abstract { ty: AbstractHeapType::Extern | AbstractHeapType::NoExtern, .. })
            }),
            (Value::ExceptionRef(None), WastRetCore::RefNull(ty)) => ty.as_ref().is_none_or(|ty| {
                matches!(ty, HeapType::Abstract { ty: AbstractHeapType::Exn | AbstractHeapType::NoExn, .. })
            }),
            (Value::FuncRef(Some(_)), WastRetCore::RefFunc(_)) => true,
            (Value::ExternRef(Some(_)), WastRetCore::RefExtern(None)) => true,
            (Value::ExternRef(Some(r)), WastRetCore::RefExtern(Some(e))) => r.downcast::<u32>(&self.store) == Some(e),
            (value, WastRetCore::Either(cases)) => cases.iter().any(|e| self.matches(value, e)),
            _ => false,
        }
    }
}

/// The `$id` of a module in text.
fn quote_id(wat: &QuoteWat) -> Option<String> {
    match wat {
        QuoteWat::Wat(Wat::Module(m)) => m.id.map(|id| id.name().to_owned()),
        _ => None,
    }
}

/// An expected result, as the test file writes it.
fn describe(ret: &WastRet) -> String {
    fn core(ret: &WastRetCore) -> String {
        fn nan<T>(p: &NanPattern<T>, value: impl Fn(&T) -> String) -> String {
            match p {
                NanPattern::CanonicalNan => "nan:canonical".into(),
                NanPattern::ArithmeticNan => "nan:arithmetic".into(),
                NanPattern::Value(v) => value(v),
            }
        }
        match ret {
            WastRetCore::I32(v) => format!("i32 {v}"),
            WastRetCore::I64(v) => format!("i64 {v}"),
            WastRetCore::F32(p) => format!("f32 {}", nan(p, |v| format!("{:?}", f32::from_bits(v.bits)))),
            WastRetCore::F64(p) => format!("f64 {}", nan(p, |v| format!("{:?}", f64::from_bits(v.bits)))),
            WastRetCore::Either(cases) => {
                format!("either({})", cases.iter().map(core).collect::<Vec<_>>().join(" | "))
            }
            other => format!("{other:?}"),
        }
    }
    match ret {
        WastRet::Core(ret) => core(ret),
        other => format!("{other:?}"),
    }
}

fn f32_matches(bits: u32, expected: &NanPattern<wast::token::F32>) -> bool {
    let nan = f32::from_bits(bits).is_nan();
    match expected {
        NanPattern::CanonicalNan => bits & 0x7fff_ffff == 0x7fc0_0000,
        NanPattern::ArithmeticNan => nan && bits & 0x0040_0000 != 0,
        NanPattern::Value(e) => bits == e.bits,
    }
}

fn f64_matches(bits: u64, expected: &NanPattern<wast::token::F64>) -> bool {
    let nan = f64::from_bits(bits).is_nan();
    match expected {
        NanPattern::CanonicalNan => bits & 0x7fff_ffff_ffff_ffff == 0x7ff8_0000_0000_0000,
        NanPattern::ArithmeticNan => nan && bits & 0x0008_0000_0000_0000 != 0,
        NanPattern::Value(e) => bits == e.bits,
    }
}

fn v128_matches(value: u128, expected: &V128Pattern) -> bool {
    let b = value.to_le_bytes();
    let lane = |i: usize, n: usize| {
        let mut v = [0u8; 8];
        v[..n].copy_from_slice(&b[i * n..i * n + n]);
        u64::from_le_bytes(v)
    };
    match expected {
        V128Pattern::I8x16(e) => e.iter().enumerate().all(|(i, e)| lane(i, 1) == u64::from(*e as u8)),
        V128Pattern::I16x8(e) => e.iter().enumerate().all(|(i, e)| lane(i, 2) == u64::from(*e as u16)),
        V128Pattern::I32x4(e) => e.iter().enumerate().all(|(i, e)| lane(i, 4) == u64::from(*e as u32)),
        V128Pattern::I64x2(e) => e.iter().enumerate().all(|(i, e)| lane(i, 8) == *e as u64),
        V128Pattern::F32x4(e) => e.iter().enumerate().all(|(i, e)| f32_matches(lane(i, 4) as u32, e)),
        V128Pattern::F64x2(e) => e.iter().enumerate().all(|(i, e)| f64_matches(lane(i, 8), e)),
    }
}
