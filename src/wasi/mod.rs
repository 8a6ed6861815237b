//! Host-side WASI preview 1 semantics shared by the backends that run WebAssembly (the wasm
//! backend, and the micro-VM backend, which serves its guest's WASI calls on the host).

pub(crate) mod signals;
