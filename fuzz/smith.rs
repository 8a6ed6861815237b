// The `wasm_module` fuzz target's module generator, shared with its corpus replay test
// (tests/all/fuzz_replay.rs includes this file), so both turn the same bytes into the same module.

/// The module `data` describes, and whether it runs metered (fuel) or under a wall-clock timeout.
/// Modules import nothing, export `_start` (the entry), and may have a start function, shared
/// memories and atomics (wait and notify), multiple memories, SIMD, bulk memory, reference types,
/// exceptions and tail calls: everything the wasm backend accepts, so that its compile budgets,
/// guard middleware, stop checks and traps all meet generated code.
pub fn smith_module(data: &[u8]) -> Option<(Vec<u8>, bool)> {
    // (module (func (export "_start")))
    const EXPORTS: &[u8] = &[
        0x00, 0x61, 0x73, 0x6d, 0x01, 0x00, 0x00, 0x00, // magic, version
        0x01, 0x04, 0x01, 0x60, 0x00, 0x00, // type section: () -> ()
        0x03, 0x02, 0x01, 0x00, // function section
        0x07, 0x0a, 0x01, 0x06, b'_', b's', b't', b'a', b'r', b't', 0x00, 0x00, // export "_start"
        0x0a, 0x04, 0x01, 0x02, 0x00, 0x0b, // code section
    ];
    let mut u = arbitrary::Unstructured::new(data);
    let metered: bool = u.arbitrary().ok()?;
    let mut config = wasm_smith::Config {
        exports: Some(EXPORTS.to_vec()),
        max_imports: 0,
        max_funcs: 40,
        max_instructions: 400,
        max_memories: 2,
        max_memory32_bytes: 1 << 24,
        max_tables: 2,
        max_table_elements: 1_000,
        max_data_segments: 20,
        max_element_segments: 20,
        allow_start_export: true,
        threads_enabled: true,
        ..wasm_smith::Config::default()
    };
    config.multi_value_enabled = u.arbitrary().ok()?;
    let module = wasm_smith::Module::new(config, &mut u).ok()?;
    Some((module.to_bytes(), metered))
}
