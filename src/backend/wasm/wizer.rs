//! Snapshots after initialisation on the wasm backend: the Wizer convention.
//!
//! A running wasm call stack cannot be captured, so a module says what its expensive start-up is
//! by exporting a function `wizer.initialize` (the convention of the Wizer tool). Preparing it
//! with `until_ready` instantiates the module (its start function runs), calls that function
//! under the sandbox's policy, and then writes a new module whose memories and globals start as
//! the initialisation left them: the memories' contents become active data segments (runs of
//! non-zero bytes), their sizes the memories' minimum sizes, the globals' values their initial
//! values; the start function and the `wizer.initialize` export are dropped. Every run of the
//! prepared program instantiates that module and calls `_start`.
//!
//! As with Wizer: tables are not captured (an initialisation that changes a table is not
//! reproduced), passive data segments stay as they are (one dropped during the initialisation is
//! back), reference-typed globals keep their initial values, and what the initialisation read
//! (arguments, environment, files, random bytes) is baked into the snapshot. A module that
//! imports a memory or uses 64-bit memories or custom page sizes is refused.
//!
//! Passive element segments dropped during the initialisation are back too, and so are
//! passive data segments.
//!
//! Everything here is byte surgery on a module that passed validation: sections that do not
//! change are copied as they are, the others re-encoded with the helpers below. The snapshot is
//! held to the module-size budget while it is written, has at most [`MAX_SEGMENTS`] data
//! segments of its own, and is validated again (and compiled within the compile budgets)
//! before anything runs it.

use std::ops::Range;

use wasm_encoder::Encode;
use wasmer::wasmparser::{DataKind, Parser, Payload, ValType};

/// The export that does a module's initialisation.
pub(crate) const INIT_EXPORT: &str = "wizer.initialize";
/// Exports the instrumented module adds so that the initialised state can be read.
pub(crate) const GLOBAL_PREFIX: &str = "sandcell:wizer:global:";
pub(crate) const MEMORY_PREFIX: &str = "sandcell:wizer:memory:";

/// Zero bytes shorter than this between non-zero ones stay in one data segment (the gap doubles
/// until the memories fit [`MAX_SEGMENTS`]).
const GAP: usize = 32;
/// At most this many data segments for the memories' contents (validators refuse more than
/// 100,000 segments in a module).
pub(crate) const MAX_SEGMENTS: usize = 10_000;

/// The value of one defined global after initialisation (`None`: not captured, keep the
/// module's own initial value).
#[derive(Clone, Copy, Debug)]
pub(crate) enum GlobalValue {
    I32(i32),
    I64(i64),
    F32(u32),
    F64(u64),
    V128(u128),
}

/// What the initialisation left: each defined memory's bytes, each defined global's value.
#[derive(Debug, Default)]
pub(crate) struct Captured {
    pub(crate) memories: Vec<Vec<u8>>,
    pub(crate) globals: Vec<Option<GlobalValue>>,
}

/// The module's shape, as far as a snapshot is concerned.
#[derive(Debug, Default)]
pub(crate) struct Shape {
    imported_globals: u32,
    imported_memories: u32,
    /// The defined globals' value types.
    pub(crate) globals: Vec<ValType>,
    pub(crate) memories: u32,
    has_init: bool,
}

fn bad(e: impl std::fmt::Display) -> String {
    format!("not a module sandcell can snapshot: {e}")
}

fn range(r: Range<u64>) -> Range<usize> {
    r.start as usize..r.end as usize
}

/// Reads what [`instrument`] and [`snapshot`] need to know, refusing what they cannot handle.
pub(crate) fn shape(bytes: &[u8]) -> Result<Shape, String> {
    let mut shape = Shape::default();
    for payload in Parser::new(0).parse_all(bytes) {
        match payload.map_err(bad)? {
            Payload::ImportSection(reader) => {
                for import in reader.into_imports() {
                    match import.map_err(bad)?.ty {
                        wasmer::wasmparser::TypeRef::Global(_) => shape.imported_globals += 1,
                        wasmer::wasmparser::TypeRef::Memory(_) => shape.imported_memories += 1,
                        _ => {}
                    }
                }
            }
            Payload::MemorySection(reader) => {
                for memory in reader {
                    let memory = memory.map_err(bad)?;
                    if memory.memory64 || memory.page_size_log2.is_some() {
                        return Err("a 64-bit memory or a custom page size cannot be snapshotted".into());
                    }
                    shape.memories += 1;
                }
            }
            Payload::GlobalSection(reader) => {
                for global in reader {
                    shape.globals.push(global.map_err(bad)?.ty.content_type);
                }
            }
            Payload::ExportSection(reader) => {
                for export in reader {
                    let export = export.map_err(bad)?;
                    if export.name == INIT_EXPORT {
                        shape.has_init = matches!(export.kind, wasmer::wasmparser::ExternalKind::Func);
                    }
                    if export.name.starts_with(GLOBAL_PREFIX) || export.name.starts_with(MEMORY_PREFIX) {
                        return Err(format!("the module exports `{}`, a name sandcell keeps for itself", export.name));
                    }
                }
            }
            _ => {}
        }
    }
    if !shape.has_init {
        return Err(format!(
            "a snapshot after initialisation on the wasm backend takes a module that exports a function \
             `{INIT_EXPORT}` (the Wizer convention)"
        ));
    }
    if shape.imported_memories > 0 {
        return Err("a module that imports its memory cannot be snapshotted".into());
    }
    Ok(shape)
}

fn section(out: &mut Vec<u8>, id: u8, content: &[u8]) {
    // Callers keep every section under the module-size budget, far below 4 GiB.
    out.push(id);
    content.encode(out);
}

/// A constant expression for `value`.
fn const_expr(value: GlobalValue) -> Vec<u8> {
    let mut e = Vec::new();
    match value {
        GlobalValue::I32(v) => {
            e.push(0x41);
            v.encode(&mut e);
        }
        GlobalValue::I64(v) => {
            e.push(0x42);
            v.encode(&mut e);
        }
        GlobalValue::F32(bits) => {
            e.push(0x43);
            e.extend_from_slice(&bits.to_le_bytes());
        }
        GlobalValue::F64(bits) => {
            e.push(0x44);
            e.extend_from_slice(&bits.to_le_bytes());
        }
        GlobalValue::V128(bits) => {
            e.extend_from_slice(&[0xfd, 0x0c]);
            e.extend_from_slice(&bits.to_le_bytes());
        }
    }
    e.push(0x0b);
    e
}

/// The module with an export for each defined global and memory (under sandcell's own names),
/// for the initialisation run to read them.
pub(crate) fn instrument(bytes: &[u8], shape: &Shape) -> Result<Vec<u8>, String> {
    let mut out = bytes[..8].to_vec();
    for payload in Parser::new(0).parse_all(bytes) {
        let payload = payload.map_err(bad)?;
        let Some((id, r)) = payload.as_section() else { continue };
        let r = range(r);
        if let Payload::ExportSection(reader) = &payload {
            let mut content = Vec::new();
            let added = shape.globals.len() as u32 + shape.memories;
            (reader.count() + added).encode(&mut content);
            // The existing entries as they are.
            let first = reader.clone().into_iter_with_offsets().next().map(|e| e.map(|(o, _)| o as usize)).transpose();
            let first = first.map_err(bad)?.unwrap_or(r.end);
            content.extend_from_slice(&bytes[first..r.end]);
            for i in 0..shape.globals.len() as u32 {
                format!("{GLOBAL_PREFIX}{i}").as_str().encode(&mut content);
                content.push(0x03);
                (shape.imported_globals + i).encode(&mut content);
            }
            for i in 0..shape.memories {
                format!("{MEMORY_PREFIX}{i}").as_str().encode(&mut content);
                content.push(0x02);
                (shape.imported_memories + i).encode(&mut content);
            }
            section(&mut out, id, &content);
        } else {
            section(&mut out, id, &bytes[r]);
        }
    }
    Ok(out)
}

/// The non-zero runs of `memories`, zero gaps shorter than `gap` included, as (memory index,
/// offset, bytes); `None` once there would be more than `max` of them.
fn runs(memories: &[Vec<u8>], first_index: u32, gap: usize, max: usize) -> Option<Vec<(u32, usize, &[u8])>> {
    let mut segments = Vec::new();
    for (m, memory) in memories.iter().enumerate() {
        let mut at = 0;
        while let Some(start) = memory[at..].iter().position(|&b| b != 0).map(|p| p + at) {
            let mut end = start;
            let mut zeros = 0;
            let mut i = start;
            while i < memory.len() && zeros < gap {
                if memory[i] == 0 {
                    zeros += 1;
                } else {
                    zeros = 0;
                    end = i + 1;
                }
                i += 1;
            }
            if segments.len() == max {
                return None;
            }
            segments.push((first_index + m as u32, start, &memory[start..end]));
            at = end;
        }
    }
    Some(segments)
}

/// The module as the initialisation left it (see the module's documentation), at most
/// `max_size` bytes.
pub(crate) fn snapshot(bytes: &[u8], shape: &Shape, captured: &Captured, max_size: u64) -> Result<Vec<u8>, String> {
    if captured.memories.len() != shape.memories as usize || captured.globals.len() != shape.globals.len() {
        return Err("the initialised instance does not match the module".into());
    }
    if captured.memories.iter().any(|m| m.len() as u64 > u64::from(u32::MAX)) {
        return Err("a memory of 4 GiB cannot be snapshotted".into());
    }
    let mut gap = GAP;
    let segments = loop {
        if let Some(s) = runs(&captured.memories, shape.imported_memories, gap, MAX_SEGMENTS) {
            break s;
        }
        gap = gap.saturating_mul(2);
    };
    let too_big = || {
        format!("the initialised memories do not fit a module of {max_size} bytes (the compile budget's module size)")
    };
    let contents: u64 = segments.iter().map(|(_, _, d)| d.len() as u64 + 16).sum();
    if contents.saturating_add(bytes.len() as u64) > max_size {
        return Err(too_big());
    }
    let mut out = bytes[..8].to_vec();
    let mut wrote_data = false;
    for payload in Parser::new(0).parse_all(bytes) {
        let payload = payload.map_err(bad)?;
        let Some((id, r)) = payload.as_section() else { continue };
        let r = range(r);
        let mut content = Vec::new();
        match payload {
            // The start function ran before the initialisation.
            Payload::StartSection { .. } => continue,
            Payload::MemorySection(reader) => {
                reader.count().encode(&mut content);
                for (i, memory) in reader.into_iter().enumerate() {
                    let memory = memory.map_err(bad)?;
                    let pages = (captured.memories[i].len() / 65536) as u64;
                    let flags = u8::from(memory.maximum.is_some()) | (u8::from(memory.shared) << 1);
                    content.push(flags);
                    (pages.max(memory.initial) as u32).encode(&mut content);
                    if let Some(max) = memory.maximum {
                        (max as u32).encode(&mut content);
                    }
                }
            }
            Payload::GlobalSection(reader) => {
                reader.count().encode(&mut content);
                for (i, entry) in reader.into_iter_with_offsets().enumerate() {
                    let (offset, global) = entry.map_err(bad)?;
                    let offset = offset as usize;
                    let expr = global.init_expr.get_binary_reader();
                    let expr_start = expr.original_position() as usize;
                    let expr_end = expr_start + expr.bytes_remaining();
                    content.extend_from_slice(&bytes[offset..expr_start]);
                    match captured.globals[i] {
                        Some(value) => content.extend_from_slice(&const_expr(value)),
                        None => content.extend_from_slice(&bytes[expr_start..expr_end]),
                    }
                }
            }
            Payload::ExportSection(reader) => {
                let entries: Vec<_> = reader.into_iter_with_offsets().collect::<Result<_, _>>().map_err(bad)?;
                let kept: Vec<usize> = (0..entries.len()).filter(|&i| entries[i].1.name != INIT_EXPORT).collect();
                (kept.len() as u32).encode(&mut content);
                for i in kept {
                    let end = entries.get(i + 1).map_or(r.end, |(o, _)| *o as usize);
                    content.extend_from_slice(&bytes[entries[i].0 as usize..end]);
                }
            }
            Payload::DataCountSection { count, .. } => {
                (count + segments.len() as u32).encode(&mut content);
            }
            Payload::DataSection(reader) => {
                wrote_data = true;
                (reader.count() + segments.len() as u32).encode(&mut content);
                let entries: Vec<_> = reader.into_iter_with_offsets().collect::<Result<_, _>>().map_err(bad)?;
                for (i, (offset, data)) in entries.iter().enumerate() {
                    let end = entries.get(i + 1).map_or(r.end, |(o, _)| *o as usize);
                    match data.kind {
                        // Kept, so that `memory.init` and `data.drop` keep their indices.
                        DataKind::Passive => content.extend_from_slice(&bytes[*offset as usize..end]),
                        // Its bytes are in the memory's snapshot: an empty segment in its place.
                        DataKind::Active { memory_index, .. } => active(&mut content, memory_index, 0, &[]),
                    }
                }
                for (memory, at, data) in &segments {
                    active(&mut content, *memory, *at, data);
                }
            }
            _ => {
                section(&mut out, id, &bytes[r]);
                continue;
            }
        }
        section(&mut out, id, &content);
    }
    if !wrote_data && !segments.is_empty() {
        // No data section: one at the end, after the code, where it belongs (a data count
        // section, if any, was counted above with the new segments).
        let mut content = Vec::new();
        (segments.len() as u32).encode(&mut content);
        for (memory, at, data) in &segments {
            active(&mut content, *memory, *at, data);
        }
        let custom_tail = trailing_custom(bytes)?;
        let tail = out.split_off(out.len() - custom_tail);
        section(&mut out, 11, &content);
        out.extend_from_slice(&tail);
    }
    if out.len() as u64 > max_size {
        return Err(too_big());
    }
    Ok(out)
}

/// An active data segment of `data` at `at` in memory `memory`.
fn active(out: &mut Vec<u8>, memory: u32, at: usize, data: &[u8]) {
    if memory == 0 {
        out.push(0x00);
    } else {
        out.push(0x02);
        memory.encode(out);
    }
    out.push(0x41);
    (at as u32 as i32).encode(out);
    out.push(0x0b);
    (data.len() as u32).encode(out);
    out.extend_from_slice(data);
}

/// How many bytes of custom sections end the module (copied after everything else; a data
/// section added at the end goes before them).
fn trailing_custom(bytes: &[u8]) -> Result<usize, String> {
    let mut tail = 0;
    for payload in Parser::new(0).parse_all(bytes) {
        let payload = payload.map_err(bad)?;
        let Some((id, r)) = payload.as_section() else { continue };
        // The section as copied: its id, its size's encoding, its content.
        let size = (r.end - r.start) as usize;
        let mut leb = Vec::new();
        (size as u32).encode(&mut leb);
        let len = 1 + leb.len() + size;
        tail = if id == 0 { tail + len } else { 0 };
    }
    Ok(tail)
}

#[cfg(test)]
mod tests {
    use super::*;
    use wasmer::{imports, Instance, Module, Store, Value};

    fn validate(bytes: &[u8]) {
        wasmer::wasmparser::Validator::new().validate_all(bytes).unwrap();
    }

    #[test]
    fn the_snapshot_holds_the_initialised_memory_and_globals_and_drops_the_initialiser() {
        let wat = r#"(module
            (memory (export "memory") 1 4)
            (global $g (export "g") (mut i32) (i32.const 1))
            (global $h (export "h") (mut i64) (i64.const -5))
            (data (i32.const 16) "before")
            (data $p "passive")
            (func $init (export "wizer.initialize"))
            (func $start (i32.store8 (i32.const 200) (i32.const 1)))
            (start $start)
            (func (export "init_p") (memory.init $p (i32.const 300) (i32.const 0) (i32.const 7)))
            (func (export "_start")))"#;
        let bytes = wasmer::wat2wasm(wat.as_bytes()).unwrap().into_owned();
        let shape = shape(&bytes).unwrap();
        assert_eq!((shape.globals.len(), shape.memories), (2, 1));
        let instrumented = instrument(&bytes, &shape).unwrap();
        validate(&instrumented);
        let mut store = Store::default();
        let module = Module::new(&store, &instrumented).unwrap();
        let instance = Instance::new(&mut store, &module, &imports! {}).unwrap();
        assert!(instance.exports.get_global(&format!("{GLOBAL_PREFIX}1")).is_ok());
        assert!(instance.exports.get_memory(&format!("{MEMORY_PREFIX}0")).is_ok());

        let mut memory = vec![0u8; 2 * 65536];
        memory[100..105].copy_from_slice(b"hello");
        memory[70000] = 9;
        let captured = Captured { memories: vec![memory], globals: vec![Some(GlobalValue::I32(-7)), None] };
        let snap = snapshot(&bytes, &shape, &captured, 1 << 30).unwrap();
        validate(&snap);
        let module = Module::new(&store, &snap).unwrap();
        assert!(module.exports().all(|e| e.name() != INIT_EXPORT));
        let instance = Instance::new(&mut store, &module, &imports! {}).unwrap();
        let g = |store: &mut Store, n: &str| instance.exports.get_global(n).unwrap().get(store);
        assert_eq!(g(&mut store, "g"), Value::I32(-7));
        assert_eq!(g(&mut store, "h"), Value::I64(-5));
        instance.exports.get_function("init_p").unwrap().call(&mut store, &[]).unwrap();
        let mem = instance.exports.get_memory("memory").unwrap();
        let view = mem.view(&store);
        assert_eq!(view.size().0, 2);
        let read = |at: u64, len: usize| {
            let mut b = vec![0u8; len];
            view.read(at, &mut b).unwrap();
            b
        };
        assert_eq!(read(100, 5), b"hello");
        assert_eq!(read(70000, 1), [9]);
        // The active segment's bytes are the snapshot's (zeros there); the start function did
        // not run again; the passive segment is still there.
        assert_eq!(read(16, 6), [0; 6]);
        assert_eq!(read(200, 1), [0]);
        assert_eq!(read(300, 7), b"passive");
    }

    #[test]
    fn a_sparse_memory_makes_a_bounded_number_of_segments_and_a_large_one_is_refused() {
        let bytes = wasmer::wat2wasm(
            br#"(module (memory (export "memory") 32) (func (export "wizer.initialize")) (func (export "_start")))"#,
        )
        .unwrap()
        .into_owned();
        let shape = shape(&bytes).unwrap();
        // One non-zero byte every 64: 32,768 runs at the first gap.
        let mut memory = vec![0u8; 32 * 65536];
        for b in memory.iter_mut().step_by(64) {
            *b = 1;
        }
        let captured = Captured { memories: vec![memory], globals: vec![] };
        let snap = snapshot(&bytes, &shape, &captured, 1 << 30).unwrap();
        validate(&snap);
        let count = Parser::new(0)
            .parse_all(&snap)
            .find_map(|p| match p.unwrap() {
                Payload::DataSection(r) => Some(r.count()),
                _ => None,
            })
            .unwrap();
        assert!(count as usize <= MAX_SEGMENTS, "{count}");
        assert!(snapshot(&bytes, &shape, &captured, 64 << 10).unwrap_err().contains("module size"));
    }

    #[test]
    fn a_module_without_data_gets_a_data_section_before_its_custom_sections() {
        // Named functions: wat2wasm ends the module with a `name` custom section.
        let wat = r#"(module (memory (export "memory") 1)
            (func $init (export "wizer.initialize")) (func $run (export "_start")))"#;
        let bytes = wasmer::wat2wasm(wat.as_bytes()).unwrap().into_owned();
        assert!(trailing_custom(&bytes).unwrap() > 0);
        let shape = shape(&bytes).unwrap();
        let mut memory = vec![0u8; 65536];
        memory[8..11].copy_from_slice(b"abc");
        let snap = snapshot(&bytes, &shape, &Captured { memories: vec![memory], globals: vec![] }, 1 << 30).unwrap();
        validate(&snap);
        let mut store = Store::default();
        let module = Module::new(&store, &snap).unwrap();
        let instance = Instance::new(&mut store, &module, &imports! {}).unwrap();
        let mut b = [0u8; 3];
        instance.exports.get_memory("memory").unwrap().view(&store).read(8, &mut b).unwrap();
        assert_eq!(&b, b"abc");
        assert_eq!(trailing_custom(&snap).unwrap(), trailing_custom(&bytes).unwrap());
    }

    #[test]
    fn modules_without_an_initialiser_or_with_an_imported_memory_are_refused() {
        let parse = |wat: &str| wasmer::wat2wasm(wat.as_bytes()).unwrap().into_owned();
        let plain = parse(r#"(module (memory 1) (func (export "_start")))"#);
        assert!(shape(&plain).unwrap_err().contains("wizer.initialize"));
        let imported = parse(
            r#"(module (import "env" "m" (memory 1)) (func (export "wizer.initialize")) (func (export "_start")))"#,
        );
        assert!(shape(&imported).unwrap_err().contains("imports its memory"));
        let clash = parse(
            r#"(module (global (export "sandcell:wizer:global:0") i32 (i32.const 0)) (func (export "wizer.initialize")))"#,
        );
        assert!(shape(&clash).unwrap_err().contains("keeps for itself"));
    }
}
